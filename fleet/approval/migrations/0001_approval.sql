-- Two-person rule requests (fleet/storage/kv: one row per key of the
-- bbolt file's buckets "requests" and "pending", the same versioned JSON
-- records; the request IDs' sequence in approval_kv_seq).
CREATE TABLE approval_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE approval_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
