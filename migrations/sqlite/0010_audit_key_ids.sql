-- Audit-key rotation: each record names the audit key that made its MAC (the first key is 1).
-- Every statement has a twin in migrations/postgres/0010_audit_key_ids.sql.
ALTER TABLE audit_log ADD COLUMN key_id INTEGER NOT NULL DEFAULT 1;
