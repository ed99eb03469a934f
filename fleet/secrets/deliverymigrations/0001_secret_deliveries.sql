-- Secret delivery records (fleet/storage/kv: one row per key of the bbolt
-- file's buckets, one per secret name, keyed by device ID).
CREATE TABLE secret_deliveries_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE secret_deliveries_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
