-- Alert rules, alerts and their indexes, sinks' dead letters and learned
-- per-device state (fleet/storage/kv: one row per key of the bbolt
-- file's buckets "rules", "alerts", "open", "bydev", "dead" and "state",
-- the same versioned JSON records; the alert and dead letter IDs'
-- sequences in alert_kv_seq).
CREATE TABLE alert_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE alert_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
