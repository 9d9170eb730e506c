-- Vault: key ring counters, token options, the audit chain and the webhook outbox.
-- Every statement has a twin in migrations/postgres/0002_vault.sql.

-- Encryptions made under each data key, so a key is retired well before 2^32 (GCM nonces).
ALTER TABLE data_keys ADD COLUMN encryptions INTEGER NOT NULL DEFAULT 0;

-- Token options: the merchant a convergent token belongs to, and an optional expiry.
ALTER TABLE cards ADD COLUMN merchant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE cards ADD COLUMN convergent BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE cards ADD COLUMN expires_at INTEGER;
CREATE UNIQUE INDEX cards_convergent ON cards (merchant, fingerprint) WHERE convergent;
CREATE INDEX cards_key ON cards (key_id);

-- The audit chain's MAC key, wrapped under the KEK like the data keys.
CREATE TABLE audit_keys (
    id          INTEGER  PRIMARY KEY,
    wrapped     BLOB  NOT NULL,
    created_at  INTEGER  NOT NULL
);
-- Audit trail (PCI DSS 10.2): append-only, each record's MAC covers its content and the
-- previous record's MAC. `audit_head` is the newest record's seq and MAC: appending locks it.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
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
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    mac  TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '');
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- Webhooks to the processor, queued in the transaction that stores the card, so a restart
-- loses none.
CREATE TABLE webhooks (
    id               TEXT    PRIMARY KEY,
    url              TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER,
    given_up_at      INTEGER,
    last_error       TEXT
);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE delivered_at IS NULL AND given_up_at IS NULL;
