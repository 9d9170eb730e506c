-- Payment sessions on the database (src/session/store.rs), so that every node sharing the
-- vault answers for every session. `view` is the masked view the API shows (dots and at
-- most the last four digits, never a digit more); `node` is the node whose call holds the
-- session, set by the one conditional UPDATE that claims it.
CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    node            TEXT,
    owner_kind      TEXT NOT NULL,
    owner_id        TEXT,
    owner_team      TEXT,
    agent_uri       TEXT,
    after_capture   TEXT NOT NULL,
    transfer_target TEXT,
    view            TEXT NOT NULL,
    embed_hash      TEXT,
    embed_until_ms  INTEGER,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
);
CREATE INDEX sessions_by_node ON sessions (node, state);
CREATE INDEX sessions_by_embed ON sessions (embed_hash);
CREATE INDEX sessions_by_age ON sessions (created_ms);

-- The nodes serving from this vault and their heartbeats (src/runtime/cluster.rs): a node
-- whose heartbeat is older than the lease is lost, and its captures fail as node_lost.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    sip          TEXT NOT NULL,
    started_ms   INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
