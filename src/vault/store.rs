//! The vault's database: SQLite under the data directory by default (WAL, `synchronous=FULL`,
//! so an acknowledged write survives a power cut), or PostgreSQL when `storage.database_url`
//! is a `postgres://` URL. Both run the same queries (sqlx `Any`, `$n` placeholders) and twin
//! migrations embedded from `migrations/sqlite` and `migrations/postgres`.
//!
//! On PostgreSQL, production runs two roles: the owner, which runs the migrations
//! (`tonewall db migrate --runtime-role NAME`, with the owner's URL in
//! `TONEWALL_OWNER_DATABASE_URL`), owns the tables and the audit triggers; and the runtime role
//! in `storage.database_url` (with `storage.migrate = false`), which may only SELECT and INSERT
//! on `audit_log` — no UPDATE, DELETE or TRUNCATE (which skips row triggers), no DDL — so its
//! credentials cannot rewrite the trail or drop its guards. Production mode refuses a runtime
//! role that could.

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

fn backend(url: &str) -> Result<Backend, VaultError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(VaultError::Config("storage.database_url must start with postgres:// (or be empty for SQLite)".into()))
    }
}

fn migrator(backend: Backend) -> &'static Migrator {
    match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    }
}

/// Opens the pool; with `migrate` runs the migrations, else checks that they have been run.
pub async fn open(url: &str, migrate: bool) -> Result<(AnyPool, Backend), VaultError> {
    install_default_drivers();
    let backend = backend(url)?;
    let options = AnyPoolOptions::new()
        .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // Per connection: synchronous and foreign keys are not stored in the file.
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")
                        .await?;
                }
                Ok(())
            })
        });
    let pool = options.connect(url).await?;
    if migrate {
        migrator(backend).run(&pool).await.map_err(|e| VaultError::Migration(e.to_string()))?;
    } else {
        check_migrated(&pool, backend).await?;
    }
    Ok((pool, backend))
}

/// With `storage.migrate = false`: every migration this build carries must have been run.
async fn check_migrated(pool: &AnyPool, backend: Backend) -> Result<(), VaultError> {
    let ran: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await.map_err(|e| {
            VaultError::Migration(format!(
                "cannot read the migrations table ({e}): run `tonewall db migrate` as the owner role"
            ))
        })?;
    let ran: std::collections::HashSet<i64> = ran.into_iter().map(|r| r.0).collect();
    if let Some(m) = migrator(backend).iter().find(|m| !ran.contains(&m.version)) {
        return Err(VaultError::Migration(format!(
            "migration {} ({}) has not been run and storage.migrate is false: run `tonewall db migrate` as the owner role",
            m.version, m.description
        )));
    }
    Ok(())
}

/// Runs the migrations as the owner and, on PostgreSQL, gives `runtime_role` what serve needs
/// and no more: the audit table append-only, the migrations table read-only.
pub async fn migrate_as_owner(url: &str, runtime_role: Option<&str>) -> Result<(), VaultError> {
    let (pool, backend) = open(url, true).await?;
    let Some(role) = runtime_role else { return Ok(()) };
    if backend != Backend::Postgres {
        return Err(VaultError::Config("--runtime-role is for PostgreSQL: SQLite has no roles".into()));
    }
    let valid = role.len() <= 63
        && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(VaultError::Config(format!("runtime role {role:?}: lower-case letters, digits and _ only")));
    }
    // The name is checked above to be a plain identifier, so splicing it is safe.
    let grants = format!(
        "GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
         REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_log FROM {role};
         REVOKE DELETE, TRUNCATE ON audit_head, audit_keys, data_keys FROM {role};
         REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON _sqlx_migrations FROM {role};"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(grants)).execute(&pool).await?;
    Ok(())
}

/// Production mode on PostgreSQL: why this connection's role could rewrite or empty the audit
/// table, if it could.
pub async fn audit_rewritable_by_us(pool: &AnyPool) -> Result<Option<String>, VaultError> {
    let (user, superuser, owner, update, delete, truncate): (String, bool, bool, bool, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, \
                (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                pg_has_role(current_user, (SELECT tableowner FROM pg_tables WHERE tablename = 'audit_log' AND schemaname = 'public'), 'USAGE'), \
                has_table_privilege('audit_log', 'UPDATE'), \
                has_table_privilege('audit_log', 'DELETE'), \
                has_table_privilege('audit_log', 'TRUNCATE')",
    )
    .fetch_one(pool)
    .await?;
    let why = if superuser {
        "is a superuser"
    } else if owner {
        "owns the audit table (and so its triggers)"
    } else if update || delete || truncate {
        "may UPDATE, DELETE or TRUNCATE the audit table"
    } else {
        return Ok(None);
    };
    Ok(Some(format!(
        "production mode refuses a database role that can rewrite the audit trail: {user} {why}; run `tonewall db migrate --runtime-role NAME` as the owner and connect as NAME with storage.migrate = false"
    )))
}

#[cfg(test)]
mod tests {
    use crate::vault::testing::TestDatabase;

    /// An acknowledged write survives a power cut only if the database syncs it: SQLite's
    /// `synchronous = FULL` on every connection (it is not stored in the file), and a
    /// PostgreSQL server with `fsync` and `synchronous_commit` on.
    #[tokio::test]
    async fn every_connection_syncs_each_commit() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = crate::vault::Vault::open(db.options(dir.path())).await.unwrap();
            match vault.backend() {
                super::Backend::Sqlite => {
                    // Several connections: each must have it.
                    let mut conns = Vec::new();
                    for _ in 0..3 {
                        conns.push(vault.pool().acquire().await.unwrap());
                    }
                    for c in &mut conns {
                        let (mode,): (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(&mut **c).await.unwrap();
                        let (journal,): (String,) =
                            sqlx::query_as("PRAGMA journal_mode").fetch_one(&mut **c).await.unwrap();
                        assert_eq!((mode, journal.as_str()), (2, "wal"), "FULL is 2");
                    }
                }
                super::Backend::Postgres => {
                    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
                        let (value,): (String,) = sqlx::query_as("SELECT setting FROM pg_settings WHERE name = $1")
                            .bind(setting)
                            .fetch_one(vault.pool())
                            .await
                            .unwrap();
                        assert_eq!(value, "on", "{setting}");
                    }
                }
            }
        }
    }
}
