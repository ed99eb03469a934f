-- Firmware release records (fleet/storage/kv: one row per key of the
-- bbolt file's buckets "releases" and "byimage", the same versioned JSON
-- records; the images stay files).
CREATE TABLE firmware_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE firmware_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
