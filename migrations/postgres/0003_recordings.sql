-- Call recordings: the metadata QA searches; the audio itself is sealed in files beside the
-- database (src/recording.rs). No card data: masked spans are times and field names.
CREATE TABLE recordings (
    id            TEXT    PRIMARY KEY,
    call_id       TEXT    NOT NULL,
    session_id    TEXT    NOT NULL,
    reference     TEXT    NOT NULL,
    started_at    BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    key_id        BIGINT NOT NULL REFERENCES data_keys (id),
    masked_spans  TEXT    NOT NULL,
    file          TEXT    NOT NULL
);
CREATE INDEX recordings_started ON recordings (started_at);
CREATE INDEX recordings_reference ON recordings (reference);
