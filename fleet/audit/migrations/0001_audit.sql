-- The audit log (fleet/storage/kv: one row per key of the bbolt file's
-- buckets "entries", "checkpoints", "by_actor" and "by_target"; entries
-- and checkpoints are the JSON the file holds, so that the hash chain and
-- the signatures verify alike on both backends).
CREATE TABLE audit_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE audit_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
