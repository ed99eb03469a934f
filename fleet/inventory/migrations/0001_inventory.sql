-- The inventory in PostgreSQL. Records are the versioned JSON the bbolt
-- file holds (fleet/internal/record), kept as bytes; the ix_ columns are
-- the encoded index values of inventory.Query (index.go: lower case,
-- bounded; times as 8 sortable bytes), so that both backends filter and
-- order alike. IDs sort bytewise (COLLATE "C"), as bbolt's keys do.

CREATE TABLE inventory_devices (
	id             text COLLATE "C" PRIMARY KEY,
	ek             text COLLATE "C" CONSTRAINT inventory_devices_ek_key UNIQUE,
	state          text NOT NULL,
	ix_state       bytea NOT NULL,
	ix_model       bytea NOT NULL,
	ix_firmware    bytea NOT NULL,
	ix_owner       bytea NOT NULL,
	ix_group       bytea NOT NULL,
	ix_serial      bytea NOT NULL,
	ix_last_seen   bytea NOT NULL,
	ix_cert_expiry bytea NOT NULL,
	record         bytea NOT NULL
);
CREATE INDEX inventory_devices_state ON inventory_devices (ix_state, id);
CREATE INDEX inventory_devices_model ON inventory_devices (ix_model, id);
CREATE INDEX inventory_devices_firmware ON inventory_devices (ix_firmware, id);
CREATE INDEX inventory_devices_owner ON inventory_devices (ix_owner, id);
CREATE INDEX inventory_devices_group ON inventory_devices (ix_group, id);
CREATE INDEX inventory_devices_serial ON inventory_devices (ix_serial, id);
CREATE INDEX inventory_devices_last_seen ON inventory_devices (ix_last_seen, id);
CREATE INDEX inventory_devices_cert_expiry ON inventory_devices (ix_cert_expiry, id);

CREATE TABLE inventory_device_tags (
	tag       bytea NOT NULL,
	device_id text COLLATE "C" NOT NULL REFERENCES inventory_devices (id) ON DELETE CASCADE,
	PRIMARY KEY (tag, device_id)
);
CREATE INDEX inventory_device_tags_device ON inventory_device_tags (device_id);

-- Every revoked serial, for the CRL: the first record of a serial stays.
CREATE TABLE inventory_revocations (
	serial    text COLLATE "C" PRIMARY KEY,
	device_id text COLLATE "C" NOT NULL,
	record    bytea NOT NULL
);

-- Enrollment tokens: the secret's SHA-256, never the secret.
CREATE TABLE inventory_tokens (
	id     text COLLATE "C" PRIMARY KEY,
	hash   bytea NOT NULL CONSTRAINT inventory_tokens_hash_key UNIQUE,
	record bytea NOT NULL
);

-- Lifecycle events, newest kept per device (anonymous ones apart).
CREATE TABLE inventory_events (
	seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	device_id text COLLATE "C" NOT NULL,
	anonymous boolean NOT NULL,
	record    bytea NOT NULL
);
CREATE INDEX inventory_events_device ON inventory_events (device_id, anonymous, seq);
