//! The vault's database: SQLite under the data directory by default (WAL, `synchronous=FULL`,
//! so an acknowledged write survives a power cut), or PostgreSQL when `storage.database_url`
//! is a `postgres://` URL. Both run the same queries (sqlx `Any`, `$n` placeholders) and twin
//! migrations embedded from `migrations/sqlite` and `migrations/postgres`.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

use super::VaultError;

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

pub const DB_FILE: &str = "vault.db";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the vault keeps its tables: `database_url`, or SQLite in `data_dir` when it is empty.
pub fn url(database_url: &str, data_dir: &Path) -> String {
    if database_url.is_empty() {
        format!("sqlite://{}?mode=rwc", data_dir.join(DB_FILE).display())
    } else {
        database_url.to_string()
    }
}

pub async fn open(url: &str) -> Result<(AnyPool, Backend), VaultError> {
    install_default_drivers();
    let backend = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else {
        return Err(VaultError::Config(
            "storage.database_url must start with postgres:// (or be empty for SQLite)".into(),
        ));
    };
    let options = AnyPoolOptions::new()
        .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // Per connection: synchronous and foreign keys are not stored in the file.
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")
                        .await?;
                }
                Ok(())
            })
        });
    let pool = options.connect(url).await?;
    let migrator = match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    };
    migrator.run(&pool).await.map_err(|e| VaultError::Migration(e.to_string()))?;
    Ok((pool, backend))
}
