-- Fingerprint-key rotation: which fingerprint key made each card's fingerprint, so cards can
-- be re-fingerprinted under a new one and the old one destroyed.
-- Every statement has a twin in migrations/postgres/0009_fingerprint_keys.sql.
ALTER TABLE cards ADD COLUMN fingerprint_key_id INTEGER;
UPDATE cards SET fingerprint_key_id = (SELECT MIN(id) FROM data_keys WHERE purpose = 'fingerprint');
CREATE INDEX cards_fingerprint_key ON cards (fingerprint_key_id);
