-- Attestation protocol state shared by the fleet's replicas
-- (attest.StatePostgres). Times are the database's clock.
--
-- The nonces issued and not yet answered: taken once (DELETE ...
-- RETURNING), on whichever replica the evidence reaches.
CREATE TABLE attest_nonce (
	nonce      bytea PRIMARY KEY,
	device_id  text NOT NULL,
	purpose    text NOT NULL,
	selections jsonb NOT NULL,
	issued     timestamptz NOT NULL,
	expires    timestamptz NOT NULL
);
CREATE INDEX attest_nonce_device ON attest_nonce (device_id, issued);
CREATE INDEX attest_nonce_expires ON attest_nonce (expires);

-- Per device: challenges unanswered since its last evidence (the stale
-- sweep), and its current broker session (session_start, null when
-- none) with the pass it holds (pass_issued: when that verdict's nonce
-- was issued; pass_at: when it was judged; null when none).
CREATE TABLE attest_device (
	device_id     text PRIMARY KEY,
	unanswered    integer NOT NULL DEFAULT 0,
	last_seen     timestamptz,
	session_start timestamptz,
	pass_issued   timestamptz,
	pass_at       timestamptz
);
