-- Attestation verdicts per device (fleet/storage/kv: a bucket per device
-- ID, records keyed by their 8-byte sequence number, the same JSON the
-- bbolt file holds; each device's sequence in attest_history_kv_seq).
CREATE TABLE attest_history_kv (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE attest_history_kv_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
