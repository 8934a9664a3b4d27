DROP INDEX request_log_unrolled;
DROP TABLE collector_runs;
DROP TABLE collector_lease;
