-- Times are epoch milliseconds (BIGINT) on both backends, so bucketing is plain arithmetic.
CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    daily_limit BIGINT,
    disabled BOOLEAN NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);

CREATE TABLE quota_usage (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day TEXT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (user_id, day)
);
CREATE INDEX quota_usage_day ON quota_usage (day);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    messages BIGINT NOT NULL DEFAULT 0,
    avg_response_ms BIGINT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_started ON sessions (started_at, id);
