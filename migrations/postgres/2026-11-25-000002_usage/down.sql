DROP TABLE flush_batches;
DROP TABLE usage_rollup;
DROP TABLE request_log;
