-- Enrollment state shared by the fleet's replicas (enroll.SessionsPostgres).
-- Times are the database's clock.
--
-- Sessions open between a request and its proof, taken once (DELETE ...
-- RETURNING) by the client that opened them. What the proof completes is
-- sealed under a key derived from the activation proof (sealed), and only
-- a digest of that proof is kept (digest): reading the table gives neither
-- the proof nor the request's token.
CREATE TABLE enroll_session (
	id          bytea PRIMARY KEY,
	client_id   text NOT NULL,
	ek          text NOT NULL,
	existing_id text NOT NULL,
	created     timestamptz NOT NULL,
	expires     timestamptz NOT NULL,
	digest      bytea NOT NULL,
	sealed      bytea NOT NULL
);
CREATE INDEX enroll_session_client ON enroll_session (client_id, created);
CREATE INDEX enroll_session_expires ON enroll_session (expires);

-- Sessions taken, so that a replayed proof is told so.
CREATE TABLE enroll_used (
	id      bytea PRIMARY KEY,
	used_at timestamptz NOT NULL
);
CREATE INDEX enroll_used_at ON enroll_used (used_at);

-- The bootstrap client each pending device waits on (an approval tells
-- it to ask again).
CREATE TABLE enroll_waiting (
	device_id text PRIMARY KEY,
	client_id text NOT NULL
);
