//! The API keys' lifecycle against a running server (PCI DSS 8.2.2, 8.2.6, 8.3.9): keys made
//! by `tonewall api-key create` with a name and an owner; keys people hold expire (at most
//! 365 days); `list` shows them and never a key; `revoke` stops one at its next request;
//! `rotate` hands out a successor while the old key works for the overlap; an expired key
//! and one unused for 90 days get 401; each change is audited.

mod common;

use common::{TestServer, http, tonewall};
use tonewall::vault::audit;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn keys_are_named_owned_listed_revoked_rotated_and_expire() {
    let t = TestServer::start().await;
    let data = t.dir.path().to_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", &data]);
        tonewall(&all, &[])
    };
    let create = |role: &str, name: &str, owner: &str| {
        let (ok, key, err) = cli(&["api-key", "create", "--role", role, "--name", name, "--owner", owner]);
        assert!(ok, "{err}");
        key.trim().to_string()
    };
    let me = |key: String| {
        let url = format!("{}/v1/auth/me", t.base);
        async move {
            let (s, v) = http("GET", &url, Some(&key), None).await;
            (s, v["error"]["message"].as_str().unwrap_or("").to_string())
        }
    };
    let desk = create("agent", "alice's desk", "alice");
    let crm = create("processor", "crm integration", "payments team");
    let (ok, _, err) = cli(&["api-key", "create", "--role", "agent", "--expires-days", "400"]);
    assert!(!ok && err.contains("365"), "a person's key lasts a year at most: {err}");
    assert_eq!(me(desk.clone()).await.0, 200);
    assert_eq!(me(crm.clone()).await.0, 200);

    let (ok, list, err) = cli(&["api-key", "list"]);
    assert!(ok, "{err}");
    assert!(!list.contains("twk_") && !list.contains(&desk[4..]), "list shows no key:\n{list}");
    let line =
        |name: &str| list.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} in\n{list}")).to_string();
    let desk_line = line("alice's desk");
    let fields: Vec<&str> = desk_line.split('\t').collect();
    assert_eq!((fields[2], fields[3], fields[9]), ("alice", "agent", "active"), "{desk_line}");
    assert_ne!(fields[6], "-", "an agent's key expires: {desk_line}");
    assert_ne!(fields[7], "-", "last use is recorded: {desk_line}");
    let crm_line = line("crm integration");
    assert_eq!(crm_line.split('\t').nth(6), Some("-"), "a processor key need not: {crm_line}");
    let id_of = |l: &str| l.split('\t').next().unwrap().to_string();

    // Revoked: refused at its next request.
    let (ok, _, err) = cli(&["api-key", "revoke", "--id", &id_of(&desk_line)]);
    assert!(ok, "{err}");
    assert_eq!(me(desk.clone()).await, (401, "this key has been revoked".into()));

    // Rotated without overlap: the old key stops, its successor works.
    let (ok, crm2, err) = cli(&["api-key", "rotate", "--id", &id_of(&crm_line), "--overlap-hours", "0"]);
    assert!(ok, "{err}");
    let crm2 = crm2.trim().to_string();
    assert_eq!(me(crm.clone()).await, (401, "this key has expired".into()));
    assert_eq!(me(crm2.clone()).await.0, 200);
    // With an overlap both work, until the old one's end.
    let (_, list, _) = cli(&["api-key", "list"]);
    let crm2_line =
        list.lines().find(|l| l.contains("crm integration") && l.contains("\tactive\t")).unwrap().to_string();
    assert!(crm2_line.contains("payments team"), "the successor keeps name and owner: {crm2_line}");
    let (ok, crm3, err) = cli(&["api-key", "rotate", "--id", &id_of(&crm2_line), "--overlap-hours", "24"]);
    assert!(ok, "{err}");
    let crm3 = crm3.trim().to_string();
    assert_eq!((me(crm2.clone()).await.0, me(crm3.clone()).await.0), (200, 200), "overlap");
    let pool = t.server.shared.vault.pool();
    sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
        .bind(now() - 1)
        .bind(id_of(&crm2_line))
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(me(crm2).await, (401, "this key has expired".into()), "the overlap's end");
    assert_eq!(me(crm3).await.0, 200);

    // Unused for 90 days: disabled.
    let idle = create("processor", "forgotten batch job", "nobody");
    sqlx::query("UPDATE api_keys SET created_at = $1, last_used_at = NULL WHERE name = 'forgotten batch job'")
        .bind(now() - 91 * 86_400)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(me(idle).await, (401, "this key was disabled after 90 days unused".into()));
    let (_, list, _) = cli(&["api-key", "list"]);
    assert!(line_of(&list, "forgotten batch job").ends_with("disabled (unused 90 days)\tdefault"), "{list}");
    assert!(line_of(&list, "alice's desk").ends_with("revoked\tdefault"), "{list}");

    let trail = audit::records(pool, 0, 10_000).await.unwrap();
    for (action, outcome) in [
        ("api_key.create", "created"),
        ("api_key.revoke", "revoked"),
        ("api_key.rotate", "rotated"),
        // The first refusal of the minute from this source; the rest are counted together.
        ("auth", "revoked_key"),
    ] {
        assert!(trail.iter().any(|r| r.action == action && r.outcome == outcome), "{action} {outcome}");
    }
    let vault = &t.server.shared.vault;
    assert_eq!(audit::verify(pool, &vault.keys().audit).await.unwrap().1, vec![]);
    t.stop().await;
}

fn line_of<'a>(list: &'a str, name: &str) -> &'a str {
    list.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} in\n{list}"))
}

/// The same lifecycle under `/v1/admin/keys`, for an admin: the new key only in the
/// creating answer, a list without keys, rotate and revoke.
#[tokio::test]
async fn an_admin_manages_keys_over_the_api() {
    let t = TestServer::start().await;
    let admin = t.key(tonewall::api::auth::Role::Admin).await;
    let url = |p: &str| format!("{}{p}", t.base);
    let body = r#"{"role":"agent","team":"sales","name":"bob's desk","owner":"bob","expires_in_days":30}"#;
    let (s, made) = http("POST", &url("/v1/admin/keys"), Some(&admin), Some(body)).await;
    assert_eq!(s, 201, "{made}");
    let (id, key) = (made["id"].as_str().unwrap().to_string(), made["key"].as_str().unwrap().to_string());
    assert_eq!(http("GET", &url("/v1/auth/me"), Some(&key), None).await.0, 200);
    let too_long = r#"{"role":"qa","expires_in_days":400}"#;
    assert_eq!(http("POST", &url("/v1/admin/keys"), Some(&admin), Some(too_long)).await.0, 400);
    let (s, list) = http("GET", &url("/v1/admin/keys"), Some(&admin), None).await;
    assert_eq!(s, 200);
    assert!(!list.to_string().contains("twk_"), "no key in the list: {list}");
    let bob = list["keys"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).unwrap().clone();
    assert_eq!(
        (bob["owner"].as_str(), bob["team"].as_str(), bob["state"].as_str()),
        (Some("bob"), Some("sales"), Some("active"))
    );
    let in_30_days = now() + 30 * 86_400;
    assert!((bob["expires_at"].as_i64().unwrap() - in_30_days).abs() < 60, "{bob}");

    let (s, next) =
        http("POST", &url(&format!("/v1/admin/keys/{id}/rotate")), Some(&admin), Some(r#"{"overlap_hours":0}"#)).await;
    assert_eq!(s, 201, "{next}");
    let next_key = next["key"].as_str().unwrap().to_string();
    assert_eq!(http("GET", &url("/v1/auth/me"), Some(&key), None).await.0, 401, "no overlap");
    assert_eq!(http("GET", &url("/v1/auth/me"), Some(&next_key), None).await.0, 200);
    let next_id = next["id"].as_str().unwrap();
    assert_eq!(http("POST", &url(&format!("/v1/admin/keys/{next_id}/revoke")), Some(&admin), None).await.0, 200);
    assert_eq!(http("GET", &url("/v1/auth/me"), Some(&next_key), None).await.0, 401, "revoked");
    assert_eq!(http("POST", &url("/v1/admin/keys/nonesuch/revoke"), Some(&admin), None).await.0, 404);

    let trail = audit::records(t.server.shared.vault.pool(), 0, 10_000).await.unwrap();
    for action in ["api_key.create", "api_key.rotate", "api_key.revoke"] {
        assert!(trail.iter().any(|r| r.action == action && r.actor != "cli"), "{action} by the admin key");
    }
    t.stop().await;
}
