-- Lockdown (src/vault/lockdown.rs, PCI DSS 12.10.1 incident response): while this one row
-- exists, detokenize and new captures are refused, in every process that shares the vault.
CREATE TABLE lockdown (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    since  INTEGER NOT NULL,
    by_actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
