//! The `calls` table (migration 0012): the calls in progress on every node sharing the vault.
//! Each node writes only its own rows, behind its calls (`write_behind`, in order, one
//! transaction per batch); any node reads them all. A lost node's rows are deleted by the
//! node that finds its lease run out (`src/runtime/cluster.rs`).

use sqlx::AnyPool;
use tokio::sync::mpsc;

use super::CallsError;

/// One `calls` row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub node: String,
    pub mode: String,
    pub route: Option<String>,
    pub sip_call_id: String,
    pub caller: String,
    pub started_ms: i64,
    pub answered: i64,
    pub session_id: Option<String>,
    pub merchant: String,
    pub owner_kind: String,
    pub owner_id: Option<String>,
    pub owner_team: Option<String>,
}

const COLUMNS: &str = "id, node, mode, route, sip_call_id, caller, started_ms, answered, session_id, merchant, owner_kind, owner_id, owner_team";

impl From<sqlx::Error> for CallsError {
    fn from(e: sqlx::Error) -> Self {
        CallsError::Store(e.to_string())
    }
}

/// A change to this node's rows, in the order the calls made them.
#[derive(Debug)]
pub enum Write {
    Insert(Box<Row>),
    Answered(String),
    Session(String, Option<String>),
    Remove(String),
}

pub async fn all(pool: &AnyPool) -> Result<Vec<Row>, CallsError> {
    let sql = format!("SELECT {COLUMNS} FROM calls ORDER BY started_ms");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?)
}

pub async fn load(pool: &AnyPool, id: &str) -> Result<Option<Row>, CallsError> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE id = $1");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?)
}

/// Deletes the rows of a node that is gone (its lease ran out, or it stopped).
pub async fn remove_node(pool: &AnyPool, node: &str) -> Result<u64, CallsError> {
    Ok(sqlx::query("DELETE FROM calls WHERE node = $1").bind(node).execute(pool).await?.rows_affected())
}

async fn apply(pool: &AnyPool, node: &str, batch: &[Write]) -> Result<(), CallsError> {
    let mut tx = pool.begin().await?;
    for w in batch {
        match w {
            Write::Insert(r) => {
                sqlx::query(
                    "INSERT INTO calls (id, node, mode, route, sip_call_id, caller, started_ms, answered, session_id, merchant, owner_kind, owner_id, owner_team) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(&r.id)
                .bind(node)
                .bind(&r.mode)
                .bind(&r.route)
                .bind(&r.sip_call_id)
                .bind(&r.caller)
                .bind(r.started_ms)
                .bind(r.answered)
                .bind(&r.session_id)
                .bind(&r.merchant)
                .bind(&r.owner_kind)
                .bind(&r.owner_id)
                .bind(&r.owner_team)
                .execute(&mut *tx)
                .await?;
            }
            Write::Answered(id) => {
                sqlx::query("UPDATE calls SET answered = 1 WHERE id = $1 AND node = $2")
                    .bind(id)
                    .bind(node)
                    .execute(&mut *tx)
                    .await?;
            }
            Write::Session(id, session) => {
                sqlx::query("UPDATE calls SET session_id = $1 WHERE id = $2 AND node = $3")
                    .bind(session)
                    .bind(id)
                    .bind(node)
                    .execute(&mut *tx)
                    .await?;
            }
            Write::Remove(id) => {
                sqlx::query("DELETE FROM calls WHERE id = $1 AND node = $2")
                    .bind(id)
                    .bind(node)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Writes this node's call changes behind its calls, in order. A batch the database refuses
/// is retried for a while, then given up with an error in the log: the listing lags, the
/// calls themselves go on.
pub async fn write_behind(pool: AnyPool, node: String, mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(batch) = crate::write_behind::next_batch(&mut rx).await {
        if let Err(e) = crate::write_behind::with_retries(|| apply(&pool, &node, &batch)).await {
            tracing::error!(error = %e, changes = batch.len(), "call listing not updated");
        }
    }
}
