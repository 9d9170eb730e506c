-- The calls in progress on every node sharing the vault (src/calls/store.rs), so that
-- `GET /v1/calls` on any node lists them all and `POST /v1/calls/{id}/capture` finds the
-- node that holds the call. Written by that node alone; a lost node's rows are deleted by
-- whichever node finds its lease run out. `caller` is the caller's number (never card data).
CREATE TABLE calls (
    id          TEXT PRIMARY KEY,
    node        TEXT NOT NULL,
    mode        TEXT NOT NULL,
    route       TEXT,
    sip_call_id TEXT NOT NULL,
    caller      TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    answered    INTEGER NOT NULL,
    session_id  TEXT,
    owner_kind  TEXT NOT NULL,
    owner_id    TEXT,
    owner_team  TEXT
);
CREATE INDEX calls_by_node ON calls (node);
