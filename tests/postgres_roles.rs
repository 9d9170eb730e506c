//! Two PostgreSQL roles (PCI DSS 10.3.2, 7.2): the owner runs `tonewall db migrate
//! --runtime-role`, `tonewall serve` runs as the runtime role with `storage.migrate = false`.
//! It tokenizes, detokenizes and appends audit records, and every way the runtime role's
//! credentials could rewrite or empty the trail is refused by PostgreSQL: UPDATE, DELETE,
//! TRUNCATE (which skips row triggers), dropping or disabling the triggers, dropping the
//! table, faking the migrations. Production mode refuses to run as the owner.

mod common;

use common::{ServeProcess, http, tonewall, write_config};
use sqlx::Connection;
use tonewall::vault::kek::KekSource;
use tonewall::vault::secret::SecretSource;
use tonewall::vault::testing::TestDatabase;

/// `url` with another user and password.
fn as_role(url: &str, role: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (_, host) = rest.split_once('@').unwrap();
    format!("{scheme}://{role}:{password}@{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_role_appends_to_the_audit_trail_and_cannot_rewrite_it() {
    let db = TestDatabase::postgres().await;
    let role = format!("tw_runtime_{}", uuid::Uuid::new_v4().simple());
    let mut owner = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // Our own name (a UUID), not input: safe to splice.
    let create = format!("CREATE ROLE {role} LOGIN PASSWORD 'runtime-pw'");
    sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&mut owner).await.unwrap();
    let runtime_url = as_role(&db.url, &role, "runtime-pw");

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (url_line, d) = (format!("database_url = \"{runtime_url}\""), data.to_str().unwrap());
    let config = write_config(dir.path(), &[("database_url = \"\"", &url_line), ("migrate = true", "migrate = false")]);
    let c = config.to_str().unwrap();

    // Before the owner has migrated, the runtime role cannot start.
    let (ok, _, err) = tonewall(&["api-key", "create", "--role", "processor", "--config", c, "--data-dir", d], &[]);
    assert!(!ok && err.contains("tonewall db migrate"), "{err}");
    let owner_env = [("TONEWALL_OWNER_DATABASE_URL", db.url.as_str())];
    let (ok, out, err) =
        tonewall(&["db", "migrate", "--runtime-role", &role, "--config", c, "--data-dir", d], &owner_env);
    assert!(ok, "{out}{err}");

    // The runtime role does the product's work.
    let (ok, key, err) = tonewall(&["api-key", "create", "--role", "processor", "--config", c, "--data-dir", d], &[]);
    assert!(ok, "{err}");
    let key = key.trim();
    let serve = ServeProcess::start(&config, &data, &dir.path().join("serve.log"), &[]);
    let body = r#"{"pan":"4111111111111111","expiry":"1230"}"#;
    let (s, v) = http("POST", &format!("{}/v1/tokenize", serve.base), Some(key), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let token = format!(r#"{{"token":"{}"}}"#, v["token"].as_str().unwrap());
    let (s, v) = http("POST", &format!("{}/v1/detokenize", serve.base), Some(key), Some(&token)).await;
    assert_eq!((s, v["pan"].as_str()), (200, Some("4111111111111111")));
    serve.kill();

    // Everything an attacker holding the runtime role's credentials would try first.
    let mut runtime = sqlx::PgConnection::connect(&runtime_url).await.unwrap();
    let attacks = [
        "UPDATE audit_log SET outcome = 'denied' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq > 1",
        "TRUNCATE audit_log",
        "DROP TRIGGER audit_log_no_update ON audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "DROP TABLE audit_log",
        "CREATE TABLE audit_log_copy AS SELECT * FROM audit_log",
        "DELETE FROM _sqlx_migrations",
        "DELETE FROM audit_head",
        "TRUNCATE cards",
    ];
    let mut table = String::from("| as the runtime role | PostgreSQL says |\n|---|---|\n");
    for sql in attacks {
        let refused = sqlx::raw_sql(sql).execute(&mut runtime).await.expect_err(sql).to_string();
        assert!(refused.contains("permission denied") || refused.contains("must be owner"), "{sql}: {refused}");
        table.push_str(&format!("| `{sql}` | {refused} |\n"));
    }
    println!("{table}");
    let (ok, out, err) = tonewall(&["audit", "verify", "--config", c, "--data-dir", d], &[]);
    assert!(ok && out.contains("audit trail intact"), "{out}{err}");

    // Production mode: the runtime role passes, the owner (here a superuser) is refused.
    std::fs::write(dir.path().join("kek.hex"), std::fs::read_to_string(data.join("kek.dev.hex")).unwrap()).unwrap();
    let mut perms = std::fs::metadata(dir.path().join("kek.hex")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(dir.path().join("kek.hex"), perms).unwrap();
    for (name, url, refused) in [("runtime", &runtime_url, false), ("owner", &db.url, true)] {
        let mut options = db.options(&data);
        options.url = url.clone();
        options.migrate = false;
        options.production = true;
        options.kek = KekSource::Secret(SecretSource::File(dir.path().join("kek.hex")));
        let opened = tonewall::vault::Vault::open(options).await;
        let why = opened.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        let hit = why.contains("refuses a database role that can rewrite the audit trail");
        assert_eq!((opened.is_ok(), hit), (!refused, refused), "{name}: {why}");
        println!("production as the {name}: {}", if refused { why.as_str() } else { "opens" });
    }

    drop(runtime);
    let drop_role = format!("DROP OWNED BY {role}; DROP ROLE {role}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop_role)).execute(&mut owner).await.unwrap();
}
