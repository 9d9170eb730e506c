-- The twin of migrations/sqlite/0010_audit_key_ids.sql.
ALTER TABLE audit_log ADD COLUMN key_id BIGINT NOT NULL DEFAULT 1;
