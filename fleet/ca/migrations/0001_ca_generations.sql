-- The fleet CA's generations shared by the replicas (fleet/ca Share): one
-- row, a JSON document of every generation (state, root and cross
-- certificates, and each key sealed with a key every replica derives from
-- its copy of ca.key), a version that each change increases, and the
-- document's MAC under another key derived from ca.key (empty with an
-- external CA key).
CREATE TABLE ca_generations (
	id      boolean PRIMARY KEY DEFAULT true CHECK (id),
	version bigint NOT NULL,
	doc     bytea NOT NULL,
	mac     bytea NOT NULL
);
