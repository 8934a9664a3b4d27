-- Quota leasing: `reserved` counts units some instance holds for (user, day) and has not
-- yet settled into `used`; a reservation only succeeds while used + reserved stays within the
-- limit. Each lease row is one instance's share, with cumulative totals and the sequence
-- number of the last write applied, so a retried transaction changes nothing twice.
ALTER TABLE quota_usage ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0;

CREATE TABLE quota_leases (
    holder TEXT NOT NULL,
    user_id TEXT NOT NULL,
    day TEXT NOT NULL,
    seq BIGINT NOT NULL,
    granted BIGINT NOT NULL,
    used BIGINT NOT NULL,
    released BIGINT NOT NULL,
    renewed_at BIGINT NOT NULL,
    PRIMARY KEY (holder, user_id, day)
);
CREATE INDEX quota_leases_day ON quota_leases (day);
