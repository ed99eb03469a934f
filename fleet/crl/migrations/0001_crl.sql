-- The number of the fleet's last signed CRL (fleet/crl Numbers): one row,
-- so that replicas sign CRLs with increasing numbers whatever their
-- clocks say.
CREATE TABLE crl_number (
	id boolean PRIMARY KEY DEFAULT true CHECK (id),
	n  bigint NOT NULL
);
INSERT INTO crl_number (id, n) VALUES (true, 0);
