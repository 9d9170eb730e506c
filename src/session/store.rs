//! The `sessions` and `nodes` tables (migration 0011): what every node sharing the vault
//! reads. Only masked views are stored: a view holds dots and at most the last four digits.
//!
//! Who may write what: the API inserts a session (`state = waiting`, `node` NULL); exactly one
//! node claims it, by the conditional UPDATE in `claim`; from then on only that node writes
//! its view (`write_views` matches `node`), except that a lost node's captures are failed by
//! whichever living node sees its lease run out (`fail_lost`, which clears `node`).

use sqlx::AnyPool;

use super::SessionError;

/// One `sessions` row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub state: String,
    pub node: Option<String>,
    pub merchant: String,
    pub owner_kind: String,
    pub owner_id: Option<String>,
    pub owner_team: Option<String>,
    pub agent_uri: Option<String>,
    pub after_capture: String,
    pub transfer_target: Option<String>,
    pub view: String,
    pub created_ms: i64,
}

const COLUMNS: &str = "id, state, node, merchant, owner_kind, owner_id, owner_team, agent_uri, after_capture, transfer_target, view, created_ms";

impl From<sqlx::Error> for SessionError {
    fn from(e: sqlx::Error) -> Self {
        SessionError::Store(e.to_string())
    }
}

pub async fn insert(pool: &AnyPool, row: &Row, now_ms: i64) -> Result<(), SessionError> {
    sqlx::query(
        "INSERT INTO sessions (id, state, node, merchant, owner_kind, owner_id, owner_team, agent_uri, after_capture, transfer_target, view, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&row.id)
    .bind(&row.state)
    .bind(&row.node)
    .bind(&row.merchant)
    .bind(&row.owner_kind)
    .bind(&row.owner_id)
    .bind(&row.owner_team)
    .bind(&row.agent_uri)
    .bind(&row.after_capture)
    .bind(&row.transfer_target)
    .bind(&row.view)
    .bind(row.created_ms)
    .bind(now_ms)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn load(pool: &AnyPool, id: &str) -> Result<Option<Row>, SessionError> {
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE id = $1");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?)
}

/// Makes `node` the session's one holder, if it is still waiting for a call and unclaimed.
pub async fn claim(pool: &AnyPool, id: &str, node: &str, view: &str, now_ms: i64) -> Result<bool, SessionError> {
    let done = sqlx::query(
        "UPDATE sessions SET state = 'capturing', node = $1, view = $2, updated_ms = $3 \
         WHERE id = $4 AND state = 'waiting' AND node IS NULL",
    )
    .bind(node)
    .bind(view)
    .bind(now_ms)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Cancels a session nobody has claimed; false when a call got there first.
pub async fn cancel_waiting(pool: &AnyPool, id: &str, view: &str, now_ms: i64) -> Result<bool, SessionError> {
    let done = sqlx::query(
        "UPDATE sessions SET state = 'cancelled', view = $1, updated_ms = $2 \
         WHERE id = $3 AND state = 'waiting' AND node IS NULL",
    )
    .bind(view)
    .bind(now_ms)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One holder's latest view of one of its sessions.
#[derive(Debug, Clone)]
pub struct ViewWrite {
    pub id: String,
    pub state: &'static str,
    pub view: String,
}

/// Stores the holder's views in one transaction (one sync), then sends `notices` in it, so
/// that they are delivered after the views can be read. Returns the ids no longer held by
/// `node` (a lease ran out meanwhile).
pub async fn write_views(
    pool: &AnyPool,
    node: &str,
    writes: &[ViewWrite],
    notices: &[String],
    now_ms: i64,
) -> Result<Vec<String>, SessionError> {
    let mut tx = pool.begin().await?;
    let mut lost = Vec::new();
    for w in writes {
        let done =
            sqlx::query("UPDATE sessions SET state = $1, view = $2, updated_ms = $3 WHERE id = $4 AND node = $5")
                .bind(w.state)
                .bind(&w.view)
                .bind(now_ms)
                .bind(&w.id)
                .bind(node)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            lost.push(w.id.clone());
        }
    }
    for n in notices {
        notify(&mut tx, SESSION_CHANNEL, n).await?;
    }
    tx.commit().await?;
    Ok(lost)
}

/// PostgreSQL channels every node listens on (`src/runtime/cluster.rs`).
pub const SESSION_CHANNEL: &str = "tonewall_sessions";
pub const COMMAND_CHANNEL: &str = "tonewall_commands";

/// `pg_notify` inside `conn`'s transaction; delivered at its commit. The `::text` keeps the
/// result a type the `Any` driver decodes.
pub async fn notify(conn: &mut sqlx::AnyConnection, channel: &str, payload: &str) -> Result<(), SessionError> {
    sqlx::query("SELECT pg_notify($1, $2)::text").bind(channel).bind(payload).execute(conn).await?;
    Ok(())
}

pub async fn set_embed(pool: &AnyPool, id: &str, hash: &str, until_ms: i64) -> Result<bool, SessionError> {
    let done = sqlx::query("UPDATE sessions SET embed_hash = $1, embed_until_ms = $2 WHERE id = $3")
        .bind(hash)
        .bind(until_ms)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn embedded(pool: &AnyPool, hash: &str, now_ms: i64) -> Result<Option<String>, SessionError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM sessions WHERE embed_hash = $1 AND embed_until_ms > $2")
            .bind(hash)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0))
}

pub async fn count_by_state(pool: &AnyPool) -> Result<Vec<(String, i64)>, SessionError> {
    Ok(sqlx::query_as("SELECT state, COUNT(*) FROM sessions GROUP BY state").fetch_all(pool).await?)
}

/// Deletes sessions created before `cutoff_ms` that no call holds now.
pub async fn forget_before(pool: &AnyPool, cutoff_ms: i64) -> Result<u64, SessionError> {
    let done = sqlx::query("DELETE FROM sessions WHERE created_ms < $1 AND state <> 'capturing'")
        .bind(cutoff_ms)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// The sessions `node` holds mid-capture.
pub async fn capturing_on(pool: &AnyPool, node: &str) -> Result<Vec<Row>, SessionError> {
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE node = $1 AND state = 'capturing'");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(node).fetch_all(pool).await?)
}

/// Fails one of a lost node's captures, unless another node did first.
pub async fn fail_lost(pool: &AnyPool, id: &str, node: &str, view: &str, now_ms: i64) -> Result<bool, SessionError> {
    let done = sqlx::query(
        "UPDATE sessions SET state = 'failed', node = NULL, view = $1, updated_ms = $2 \
         WHERE id = $3 AND node = $4 AND state = 'capturing'",
    )
    .bind(view)
    .bind(now_ms)
    .bind(id)
    .bind(node)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// `api`: where the other nodes reach this node's API (`http.advertise`), if anywhere.
pub async fn register_node(
    pool: &AnyPool,
    node: &str,
    sip: &str,
    api: Option<&str>,
    now_ms: i64,
) -> Result<(), SessionError> {
    sqlx::query("INSERT INTO nodes (id, sip, api, started_ms, heartbeat_ms) VALUES ($1, $2, $3, $4, $4)")
        .bind(node)
        .bind(sip)
        .bind(api)
        .bind(now_ms)
        .execute(pool)
        .await?;
    Ok(())
}

/// Renews `node`'s lease; false when its row is gone (another node declared it lost).
pub async fn heartbeat(pool: &AnyPool, node: &str, now_ms: i64) -> Result<bool, SessionError> {
    let done =
        sqlx::query("UPDATE nodes SET heartbeat_ms = $1 WHERE id = $2").bind(now_ms).bind(node).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

/// Nodes whose last heartbeat is older than `cutoff_ms`.
pub async fn lapsed_nodes(pool: &AnyPool, cutoff_ms: i64) -> Result<Vec<(String, String)>, SessionError> {
    Ok(sqlx::query_as("SELECT id, sip FROM nodes WHERE heartbeat_ms < $1").bind(cutoff_ms).fetch_all(pool).await?)
}

pub async fn remove_node(pool: &AnyPool, node: &str) -> Result<(), SessionError> {
    sqlx::query("DELETE FROM nodes WHERE id = $1").bind(node).execute(pool).await?;
    Ok(())
}
