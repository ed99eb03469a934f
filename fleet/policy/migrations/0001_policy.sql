-- Reference policies: every version of every policy, never rewritten (the
-- JSON record the bbolt file keeps under policies/<id>/<version>). IDs
-- sort bytewise (COLLATE "C"), as bbolt's bucket names do.
CREATE TABLE policy_versions (
	id      text COLLATE "C" NOT NULL,
	version integer NOT NULL,
	record  bytea NOT NULL,
	PRIMARY KEY (id, version)
);
