-- Rotation jobs (fleet/storage/kv: one row per key of the bbolt file's
-- buckets "jobs", "running", "devices" and "queue"; a job's devices and
-- queue are buckets nested in "devices" and "queue", their rows under the
-- bucket's path, "devices" 0x00 job ID).
CREATE TABLE rotation_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE rotation_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
