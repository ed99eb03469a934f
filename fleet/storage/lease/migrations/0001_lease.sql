-- Leases on work that one replica of the fleet does at a time
-- (fleet/storage/lease): the holder, until when (the database's clock),
-- and an epoch that grows with each new holder (a fencing token).
CREATE TABLE lease (
	name    text PRIMARY KEY,
	holder  text NOT NULL,
	expires timestamptz NOT NULL,
	epoch   bigint NOT NULL
);
