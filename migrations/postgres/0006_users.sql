-- Built-in accounts for people (src/accounts): argon2id password hashes, the TOTP secret
-- sealed under a data key (AAD: the user id), failed sign-ins and lockout, disabled flag.
CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    role          TEXT    NOT NULL,
    team          TEXT,
    password_hash TEXT    NOT NULL,
    totp_key_id   INTEGER,
    totp_nonce    TEXT,
    totp_sealed   TEXT,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    failures      INTEGER NOT NULL DEFAULT 0,
    locked_until  BIGINT  NOT NULL DEFAULT 0,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL
);
