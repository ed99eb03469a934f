-- Firmware campaigns (fleet/storage/kv: one row per key of the bbolt
-- file's buckets "campaigns" and "active"; a campaign's bucket nested in
-- "campaigns" and its own nested buckets ("devices", "order", "waves",
-- "deadlines", "retry") keep their rows under their paths, the names
-- joined by a 0 byte).
CREATE TABLE campaign_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE campaign_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
