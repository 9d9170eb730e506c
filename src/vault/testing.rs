//! Databases for tests: a SQLite file in a temporary directory, or a fresh PostgreSQL database
//! on the server named by `TONEWALL_TEST_POSTGRES`, dropped again when the test ends. Without
//! that variable the tests run `scripts/test-postgres.sh`, which starts Debian's PostgreSQL
//! and prints the URL (`.ci/run` runs it once and exports the variable).

use std::path::Path;

use sqlx::Connection;

pub const POSTGRES_ENV: &str = "TONEWALL_TEST_POSTGRES";

pub struct TestDatabase {
    /// `storage.database_url`: empty for SQLite.
    pub url: String,
    pub label: &'static str,
    drop_with: Option<(String, String)>,
}

impl TestDatabase {
    pub fn sqlite() -> TestDatabase {
        TestDatabase { url: String::new(), label: "sqlite", drop_with: None }
    }

    /// A new, empty PostgreSQL database. Panics with the setup command when none is configured:
    /// a vault test never passes by skipping PostgreSQL.
    pub async fn postgres() -> TestDatabase {
        let admin = admin_url();
        let name = format!("tonewall_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {POSTGRES_ENV}: {e}"));
        // The name is ours (a UUID), not input: safe to splice.
        let create = format!("CREATE DATABASE {name}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&mut conn).await.expect("create test database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        TestDatabase { url: format!("{base}/{name}"), label: "postgres", drop_with: Some((admin.clone(), name)) }
    }

    /// Both backends, for tests that must hold on each.
    pub async fn both() -> [TestDatabase; 2] {
        [TestDatabase::sqlite(), TestDatabase::postgres().await]
    }

    /// The development vault options in `data_dir`, pointed at this database.
    pub fn options(&self, data_dir: &Path) -> super::VaultOptions {
        let mut o = super::VaultOptions::development(data_dir);
        if !self.url.is_empty() {
            o.url = self.url.clone();
        }
        o
    }
}

/// The server's URL: from the environment, or from starting it once per test binary.
fn admin_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var(POSTGRES_ENV) {
            return url;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-postgres.sh");
        let out = std::process::Command::new(script).output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            other => panic!(
                "PostgreSQL is needed for the vault tests and could not be started by {script} ({}): \
                 `apt-get install -y postgresql`, or set {POSTGRES_ENV} to a server URL",
                match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                }
            ),
        }
    })
    .clone()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin, name)) = self.drop_with.take() else { return };
        // Drop runs outside async: a thread with its own runtime does the DROP.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await.ok()
            })
        })
        .join();
    }
}
