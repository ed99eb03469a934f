-- Sealed secrets (fleet/storage/kv: one row per key of the bbolt file's
-- buckets "meta" (the key check), "versions" and "rotation", and of the
-- buckets nested in "secrets", one per name, under the path
-- "secrets" 0x00 name; values encrypted as in the file).
CREATE TABLE secrets_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE secrets_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
