-- tonewall vault schema (SQLite). No column holds a PAN or security code in clear.

-- Data keys, each wrapped (AES-256-GCM) under the key-encrypting key, which lives outside
-- the database. purpose: 'encryption' (card records) or 'fingerprint' (HMAC lookups).
CREATE TABLE data_keys (
    id          INTEGER PRIMARY KEY,
    purpose     TEXT    NOT NULL CHECK (purpose IN ('encryption', 'fingerprint')),
    wrapped     BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

-- One tokenized card: PAN and expiry encrypted together; the token is random.
CREATE TABLE cards (
    id           TEXT    PRIMARY KEY,
    token        TEXT    NOT NULL UNIQUE,
    key_id       INTEGER NOT NULL REFERENCES data_keys (id),
    nonce        BLOB    NOT NULL,
    ciphertext   BLOB    NOT NULL,
    fingerprint  TEXT    NOT NULL,
    brand        TEXT    NOT NULL,
    last4        TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX cards_fingerprint ON cards (fingerprint);

-- API bearer keys: only the SHA-256 of each key is stored.
CREATE TABLE api_keys (
    id          TEXT    PRIMARY KEY,
    role        TEXT    NOT NULL CHECK (role IN ('agent', 'processor', 'qa', 'admin')),
    key_hash    TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
