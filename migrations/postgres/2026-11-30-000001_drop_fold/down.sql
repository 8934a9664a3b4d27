DROP INDEX sessions_ended;
-- Every remaining row is counted in usage_rollup already.
ALTER TABLE request_log ADD COLUMN rolled_up BOOLEAN NOT NULL DEFAULT true;
CREATE INDEX request_log_unrolled ON request_log (started_at) WHERE rolled_up = false;
