//! The vault's database: SQLite under the data directory, in WAL mode with
//! `synchronous=FULL` so an acknowledged write survives a power cut. Migrations are embedded.

use std::path::Path;
use std::str::FromStr;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::VaultError;

pub async fn open(path: &Path) -> Result<SqlitePool, VaultError> {
    let url = format!("sqlite://{}", path.display());
    let opts = SqliteConnectOptions::from_str(&url)
        .map_err(VaultError::Database)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.map_err(VaultError::Database)?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await.map_err(|e| VaultError::Migration(e.to_string()))?;
    Ok(pool)
}
