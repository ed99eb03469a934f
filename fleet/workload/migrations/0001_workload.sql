-- Workload registrations and JWT-SVID signing keys (fleet/storage/kv: one
-- row per key of the bbolt file's buckets "registrations" (name -> JSON
-- registration) and "jwt_keys" (key ID -> JSON signing key)).
CREATE TABLE workload_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE workload_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
