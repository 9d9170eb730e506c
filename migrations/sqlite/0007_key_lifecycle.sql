-- Key lifecycle (src/api/auth.rs, PCI DSS 8.2.2, 8.2.6, 8.3.9): who holds a key and what it
-- is for, when it stops working (keys people hold always expire; a rotated key at the end of
-- its overlap), when it was last used (unused for 90 days: disabled), and its revocation.
ALTER TABLE api_keys ADD COLUMN name TEXT;
ALTER TABLE api_keys ADD COLUMN owner TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
ALTER TABLE api_keys ADD COLUMN revoked_at INTEGER;
