-- tonewall vault schema (PostgreSQL): the twin of migrations/sqlite/0001_init.sql.
-- No column holds a PAN or security code in clear.

CREATE TABLE data_keys (
    id          BIGINT  PRIMARY KEY,
    purpose     TEXT    NOT NULL CHECK (purpose IN ('encryption', 'fingerprint')),
    wrapped     BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE cards (
    id           TEXT    PRIMARY KEY,
    token        TEXT    NOT NULL UNIQUE,
    key_id       BIGINT  NOT NULL REFERENCES data_keys (id),
    nonce        BYTEA   NOT NULL,
    ciphertext   BYTEA   NOT NULL,
    fingerprint  TEXT    NOT NULL,
    brand        TEXT    NOT NULL,
    last4        TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL
);
CREATE INDEX cards_fingerprint ON cards (fingerprint);

CREATE TABLE api_keys (
    id          TEXT    PRIMARY KEY,
    role        TEXT    NOT NULL CHECK (role IN ('agent', 'processor', 'qa', 'admin')),
    key_hash    TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);
