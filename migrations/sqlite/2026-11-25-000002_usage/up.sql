-- One row per admitted chat, written by the DB flusher. `rolled_up` says whether the row is
-- already counted in usage_rollup (the flusher counts rows as it writes them; the collector
-- folds any that are not).
CREATE TABLE request_log (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    session_id TEXT,
    model TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    estimated BOOLEAN NOT NULL,
    outcome TEXT NOT NULL,
    rolled_up BOOLEAN NOT NULL
);
CREATE INDEX request_log_started ON request_log (started_at);
CREATE INDEX request_log_model_started ON request_log (model, started_at);
CREATE INDEX request_log_user_started ON request_log (user_id, started_at);

-- Per-minute, per-model sums: averages are SUM(latency_sum_ms) / SUM(latency_count).
CREATE TABLE usage_rollup (
    bucket_start BIGINT NOT NULL,
    model TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    latency_sum_ms BIGINT NOT NULL,
    latency_count BIGINT NOT NULL,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    PRIMARY KEY (bucket_start, model)
);
CREATE INDEX usage_rollup_model_bucket ON usage_rollup (model, bucket_start);

-- Flush batches already applied: a batch retried after an unacknowledged commit is skipped,
-- so its rollup increments land once.
CREATE TABLE flush_batches (
    id TEXT PRIMARY KEY NOT NULL,
    written_at BIGINT NOT NULL
);
CREATE INDEX flush_batches_written ON flush_batches (written_at);
