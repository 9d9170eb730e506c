-- The twin of migrations/sqlite/0009_fingerprint_keys.sql.
ALTER TABLE cards ADD COLUMN fingerprint_key_id BIGINT;
UPDATE cards SET fingerprint_key_id = (SELECT MIN(id) FROM data_keys WHERE purpose = 'fingerprint');
CREATE INDEX cards_fingerprint_key ON cards (fingerprint_key_id);
