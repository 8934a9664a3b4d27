DROP TABLE sessions;
DROP TABLE quota_usage;
DROP TABLE users;
