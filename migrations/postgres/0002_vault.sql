-- The twin of migrations/sqlite/0002_vault.sql.

ALTER TABLE data_keys ADD COLUMN encryptions BIGINT NOT NULL DEFAULT 0;

ALTER TABLE cards ADD COLUMN merchant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE cards ADD COLUMN convergent BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE cards ADD COLUMN expires_at BIGINT;
CREATE UNIQUE INDEX cards_convergent ON cards (merchant, fingerprint) WHERE convergent;
CREATE INDEX cards_key ON cards (key_id);

-- The audit chain's MAC key, wrapped under the KEK like the data keys.
CREATE TABLE audit_keys (
    id          BIGINT  PRIMARY KEY,
    wrapped     BYTEA  NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE TABLE audit_log (
    seq       BIGINT  PRIMARY KEY,
    at_ms     BIGINT  NOT NULL,
    actor     TEXT    NOT NULL,
    role      TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    origin    TEXT    NOT NULL,
    resource  TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    mac       TEXT    NOT NULL
);
CREATE TABLE audit_head (
    id   BIGINT  PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    mac  TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '');
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE webhooks (
    id               TEXT    PRIMARY KEY,
    url              TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    delivered_at     BIGINT,
    given_up_at      BIGINT,
    last_error       TEXT
);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE delivered_at IS NULL AND given_up_at IS NULL;
