-- Uploaded prompts per merchant (src/runtime/prompts.rs): `default`'s play on every
-- merchant's calls; another merchant's own play on its calls only, over `default`'s.
-- SQLite cannot change a primary key: the table is rebuilt, its rows kept as `default`'s.
CREATE TABLE prompts_by_merchant (
    merchant    TEXT NOT NULL,
    language    TEXT NOT NULL,
    name        TEXT NOT NULL,
    wav         BLOB NOT NULL,
    sha256      TEXT NOT NULL,
    uploaded_at INTEGER NOT NULL,
    uploaded_by TEXT NOT NULL,
    PRIMARY KEY (merchant, language, name)
);
INSERT INTO prompts_by_merchant (merchant, language, name, wav, sha256, uploaded_at, uploaded_by)
    SELECT 'default', language, name, wav, sha256, uploaded_at, uploaded_by FROM prompts;
DROP TABLE prompts;
ALTER TABLE prompts_by_merchant RENAME TO prompts;
