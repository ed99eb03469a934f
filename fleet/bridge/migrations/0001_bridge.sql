-- OT bridges (fleet/storage/kv: one row per key of the bbolt file's bucket
-- "bridges", a versioned JSON record per site).
CREATE TABLE bridge_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE bridge_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
