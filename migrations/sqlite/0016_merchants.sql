-- Merchants (src/merchant.rs): many on one deployment. A merchant owns its API keys and
-- people, and every session, call, card, recording, webhook event and audit record made in
-- its name; its settings (webhook, language, token format, convergent tokens, field
-- defaults, retention, push) are one JSON document that names secrets by file or
-- environment variable, never holds them. What existed before belongs to `default`.
CREATE TABLE merchants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    settings   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO merchants (id, name, settings, created_at, updated_at) VALUES ('default', 'Default merchant', '{}', 0, 0);
-- Cards tokenized with a free-text merchant name before: that name becomes a merchant (its
-- tokens stay its own; create a processor key for it to detokenize them).
INSERT INTO merchants (id, name, settings, created_at, updated_at)
    SELECT DISTINCT merchant, merchant, '{}', 0, 0 FROM cards WHERE merchant <> 'default';
ALTER TABLE api_keys ADD COLUMN merchant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE users ADD COLUMN merchant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE sessions ADD COLUMN merchant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE calls ADD COLUMN merchant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE recordings ADD COLUMN merchant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE webhooks ADD COLUMN merchant TEXT NOT NULL DEFAULT 'default';
-- Records written before merchants have none (their MACs cover no merchant); `default`'s
-- admins see them.
ALTER TABLE audit_log ADD COLUMN merchant TEXT;
CREATE INDEX recordings_by_merchant ON recordings (merchant, started_at);
CREATE INDEX audit_by_merchant ON audit_log (merchant, seq);
