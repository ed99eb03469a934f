-- Users, sessions, API tokens and the login throttle's counters
-- (fleet/storage/kv: one row per key of the bbolt file's buckets, the
-- same versioned JSON records; keys ordered bytewise as in bbolt).
CREATE TABLE auth_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE auth_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
