-- The flusher counts every raw row into usage_rollup in the transaction that writes it, so
-- nothing is left for a fold step. Fold any row an older build left uncounted (none is
-- expected), then drop the column and its index.
INSERT INTO usage_rollup
    (bucket_start, model, requests, errors, latency_sum_ms, latency_count, tokens_in, tokens_out)
SELECT started_at - ((started_at % 60000) + 60000) % 60000 AS bucket, model, COUNT(*),
    SUM(CASE WHEN outcome IN ('ok', 'cancelled') THEN 0 ELSE 1 END), SUM(latency_ms),
    COUNT(*), SUM(tokens_in), SUM(tokens_out)
FROM request_log WHERE rolled_up = false
GROUP BY bucket, model
ON CONFLICT (bucket_start, model) DO UPDATE SET
    requests = usage_rollup.requests + excluded.requests,
    errors = usage_rollup.errors + excluded.errors,
    latency_sum_ms = usage_rollup.latency_sum_ms + excluded.latency_sum_ms,
    latency_count = usage_rollup.latency_count + excluded.latency_count,
    tokens_in = usage_rollup.tokens_in + excluded.tokens_in,
    tokens_out = usage_rollup.tokens_out + excluded.tokens_out;
DROP INDEX request_log_unrolled;
ALTER TABLE request_log DROP COLUMN rolled_up;

-- Retention deletes ended sessions by their end time.
CREATE INDEX sessions_ended ON sessions (ended_at);
