-- Recordings an admin uploaded over the built-in prompts (src/runtime/prompts.rs): one per
-- language and clip name, checked on upload (8 kHz mono 16-bit PCM WAV, 0.1 to 30 s). Every
-- node plays them from its next call on; deleting one brings the built-in one back.
CREATE TABLE prompts (
    language    TEXT NOT NULL,
    name        TEXT NOT NULL,
    wav         BYTEA NOT NULL,
    sha256      TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    uploaded_by TEXT NOT NULL,
    PRIMARY KEY (language, name)
);
