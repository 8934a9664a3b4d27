DROP TABLE quota_leases;
ALTER TABLE quota_usage DROP COLUMN reserved;
