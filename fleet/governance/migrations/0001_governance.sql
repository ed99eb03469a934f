-- Identity governance (fleet/storage/kv: one row per key of the bbolt
-- file's buckets "meta" (counters), "owners", "assign", "status",
-- "triage", "triagelr", "blocks", "clones", "risk" and "riskidx", the same
-- versioned JSON records and index keys).
CREATE TABLE governance_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE governance_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
