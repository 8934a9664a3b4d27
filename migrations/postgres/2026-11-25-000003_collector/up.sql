-- The usage collector's single-flight lease: one row per named job. Whoever holds an
-- unexpired row runs the job; a row past `expires_at` (its holder died) may be taken over.
-- Times are epoch milliseconds from the database's clock, so instances with skewed clocks
-- still agree on who holds it.
CREATE TABLE collector_lease (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    run_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- One row per collector run, written when the lease is taken and finished when it is released.
CREATE TABLE collector_runs (
    run_id TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    processed BIGINT NOT NULL DEFAULT 0,
    stored BIGINT NOT NULL DEFAULT 0,
    skipped BIGINT NOT NULL DEFAULT 0,
    duration_ms BIGINT,
    lock_wait_ms BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    error TEXT
);
-- Newest-first listing pages on (started_at, run_id).
CREATE INDEX collector_runs_started ON collector_runs (started_at, run_id);

-- Almost every raw row is rolled up as it is written, so the rows the collector must fold
-- are few: a partial index finds them without scanning days of raw rows.
CREATE INDEX request_log_unrolled ON request_log (started_at) WHERE rolled_up = false;
