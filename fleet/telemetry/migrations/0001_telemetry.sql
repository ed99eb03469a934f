-- Telemetry cursors and flags (fleet/storage/kv: one row per key of the
-- bbolt file's buckets "cursors" (device ID -> JSON cursor) and "meta"
-- (flag name -> 1)).
CREATE TABLE telemetry_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE telemetry_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
