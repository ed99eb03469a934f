-- Just-in-time access grants (fleet/storage/kv: one row per key of the
-- bbolt file's buckets "grants", "serials" and "meta", the same JSON
-- records).
CREATE TABLE access_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE access_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
