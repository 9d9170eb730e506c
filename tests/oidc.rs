//! Sign-in through a real identity provider (PCI DSS 8.4.2, 8.2.8): node runs the
//! OpenID-certified `oidc-provider` from npm (tests/oidc/provider.mjs) over HTTPS; tonewall
//! over HTTPS is its client. Chromium signs an agent and a QA reviewer in from the pages;
//! a person whose provider reports no second factor, and one with no role, are refused.
//! Then what an attacker sends: a forged state, somebody else's code and state in the
//! victim's browser (login CSRF), a replayed callback, an answer naming another issuer, a
//! stolen code without the PKCE verifier. Each refusal is in the audit trail, which verifies.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::browser::Browser;
use common::sipp::KillOnDrop;
use common::{TestServer, require_tool};
use serde_json::Value;
use tonewall::api::auth::Role;
use tonewall::config::ClientSecretSource;
use tonewall::runtime::tls::write_dev_pair;
use tonewall::vault::audit;

const SECRET: &str = "test-client-secret-7f3a9c";
const PROVIDER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");

struct Provider {
    _node: KillOnDrop,
    issuer: String,
    cert: PathBuf,
}

/// The provider, its client's redirect URI being `redirect`.
fn start_provider(dir: &Path, redirect: &str) -> Provider {
    require_tool("node", "apt-get install -y nodejs npm");
    assert!(
        Path::new(PROVIDER_DIR).join("node_modules/oidc-provider/package.json").exists(),
        "oidc-provider is not installed: run `npm ci --prefix tests/oidc` (scripts/test does)"
    );
    let (cert, key) = (dir.join("idp-cert.pem"), dir.join("idp-key.pem"));
    write_dev_pair(&cert, &key).unwrap();
    let mut child = std::process::Command::new("node")
        .current_dir(PROVIDER_DIR)
        .arg("provider.mjs")
        .args([&cert, &key])
        .args([redirect, SECRET])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run node");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(issuer) = line.strip_prefix("issuer ") {
                let _ = tx.send(issuer.to_string());
            }
        }
    });
    let issuer = rx.recv_timeout(Duration::from_secs(30)).expect("the provider starts");
    Provider { _node: KillOnDrop(Some(child)), issuer, cert }
}

/// tonewall over HTTPS on a port fixed in advance (the provider must know the redirect URI)
/// with the provider configured; its base URL.
async fn start_tonewall(
    dir: &Path,
    port: u16,
    provider: impl FnOnce(&str) -> Provider,
) -> (TestServer, Provider, String) {
    let base = format!("https://127.0.0.1:{port}");
    let p = provider(&format!("{base}/v1/auth/oidc/callback"));
    let secret = dir.join("client-secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let t = TestServer::start_with(|c| {
        let (cert, key) = (c.storage.data_dir.join("tls/cert.pem"), c.storage.data_dir.join("tls/key.pem"));
        write_dev_pair(&cert, &key).unwrap();
        c.http.tls = true;
        c.http.listen = format!("127.0.0.1:{port}").parse().unwrap();
        let o = &mut c.oidc;
        o.issuer = p.issuer.clone();
        o.name = "Test IdP".into();
        o.client_id = "tonewall".into();
        o.client_secret = ClientSecretSource::File(secret);
        o.redirect_url = format!("{base}/v1/auth/oidc/callback");
        o.ca = p.cert.clone();
        o.role_claim = "groups".into();
        o.roles = [("cc-agents".to_string(), Role::Agent), ("cc-qa".to_string(), Role::Qa)].into();
        o.team_claim = "team".into();
        o.require_amr = vec!["otp".into(), "hwk".into()];
    })
    .await;
    (t, p, base)
}

/// A script's HTTP client with a cookie jar, trusting tonewall's and the provider's
/// certificates, following no redirect by itself.
struct Client {
    agent: ureq::Agent,
    jar: BTreeMap<String, String>,
}

struct Reply {
    status: u16,
    location: String,
    body: String,
}

impl Client {
    fn new(certs: &[&Path]) -> Client {
        let roots: Vec<_> = certs
            .iter()
            .flat_map(|c| tonewall::runtime::tls::read_certs(c).unwrap())
            .map(|c| ureq::tls::Certificate::from_der(&c).to_owned())
            .collect();
        let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::from(roots)).build();
        let agent =
            ureq::Agent::config_builder().tls_config(tls).max_redirects(0).http_status_as_error(false).build().into();
        Client { agent, jar: BTreeMap::new() }
    }

    async fn go(&mut self, method: &'static str, url: &str, form: Option<String>) -> Reply {
        let agent = self.agent.clone();
        let url = url.to_string();
        let cookies = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let (status, location, set, body) = tokio::task::spawn_blocking(move || {
            let mut r = match form {
                Some(f) => agent
                    .post(&url)
                    .header("Cookie", &cookies)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .send(f),
                None if method == "GET" => agent.get(&url).header("Cookie", &cookies).call(),
                None => agent.post(&url).header("Cookie", &cookies).send_empty(),
            }
            .unwrap_or_else(|e| panic!("{url}: {e}"));
            let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let location = header("location");
            let set: Vec<String> =
                r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(String::from).collect();
            (r.status().as_u16(), location, set, r.body_mut().read_to_string().unwrap_or_default())
        })
        .await
        .unwrap();
        for c in set {
            let pair = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") || c.contains("expires=Thu, 01 Jan 1970") {
                    self.jar.remove(k.trim());
                } else {
                    self.jar.insert(k.trim().to_string(), v.to_string());
                }
            }
        }
        Reply { status, location, body }
    }

    /// What a person's browser does from tonewall's start to the provider's answer: signs in
    /// at the provider as `who` and returns the callback URL it is sent to, unvisited.
    async fn sign_in_at_provider(&mut self, base: &str, issuer: &str, who: &str, password: &str) -> String {
        let r = self.go("GET", &format!("{base}/v1/auth/oidc/start?then=desktop"), None).await;
        assert_eq!(r.status, 303, "start");
        assert!(self.jar.contains_key("tw_oidc"), "the binding cookie");
        let authorize = r.location;
        assert!(authorize.starts_with(&format!("{issuer}/auth?")), "{authorize}");
        for part in ["response_type=code", "code_challenge_method=S256", "code_challenge=", "nonce=", "state="] {
            assert!(authorize.contains(part), "{part} in {authorize}");
        }
        let mut url = authorize;
        for _ in 0..6 {
            let r = self.go("GET", &url, None).await;
            let next = if r.location.starts_with('/') { format!("{issuer}{}", r.location) } else { r.location };
            if next.starts_with(base) {
                return next;
            }
            if r.status == 200 && r.body.contains("id=username") {
                let action = r.body.split("action=\"").nth(1).and_then(|s| s.split('"').next()).expect("form action");
                let form = format!("username={who}&password={password}");
                let r = self.go("POST", &format!("{issuer}{action}"), Some(form)).await;
                assert_eq!(r.status, 303, "the provider's login: {}", r.body);
                url = if r.location.starts_with('/') { format!("{issuer}{}", r.location) } else { r.location };
                continue;
            }
            assert_eq!(r.status, 303, "{url}: {}", r.body);
            url = next;
        }
        panic!("the provider never sent the browser back");
    }
}

fn query(url: &str, name: &str) -> String {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).unwrap_or("").to_string()
}

async fn trail(t: &TestServer) -> Vec<(String, String, String)> {
    audit::records(t.server.shared.vault.pool(), 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "auth.sign_in")
        .map(|r| (r.outcome, r.resource, r.detail))
        .collect()
}

/// Signs `who` in from `page` through the provider's own login form, in Chromium.
async fn browser_sign_in(b: &mut Browser, issuer: &str, who: &str, password: &str) {
    b.wait_for("!document.getElementById('provider').hidden", Duration::from_secs(10)).await;
    assert_eq!(b.eval("document.getElementById('provider-name').textContent").await, "Test IdP");
    b.eval("document.getElementById('provider-link').click()").await;
    let at_provider = format!("location.origin === '{issuer}' && document.getElementById('username')");
    b.wait_for(&at_provider, Duration::from_secs(15)).await;
    b.eval(&format!(
        "document.getElementById('username').value = '{who}'; document.getElementById('password').value = '{password}'; document.getElementById('submit').click()"
    ))
    .await;
}

#[tokio::test]
async fn people_sign_in_through_the_identity_provider_in_chromium_and_need_its_second_factor() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::sipp::free_tcp_port();
    let (t, p, base) = start_tonewall(dir.path(), port, |r| start_provider(dir.path(), r)).await;
    let flags = ["--ignore-certificate-errors"];

    // An agent whose provider reports a second factor.
    let mut b = Browser::open_with(&format!("{base}/desktop"), &flags).await;
    browser_sign_in(&mut b, &p.issuer, "alice", "alice-password-1").await;
    let signed_in = "location.pathname === '/desktop' && !document.getElementById('whoami').hidden";
    b.wait_for(signed_in, Duration::from_secs(15)).await;
    assert_eq!(b.eval("document.getElementById('who').textContent").await, "alice (agent)");
    assert!(b.eval("document.getElementById('ends').textContent").await.as_str().unwrap().starts_with("Signs out at "));
    assert_eq!(b.eval("document.cookie").await, "", "the session cookie is HttpOnly");
    let me = b.eval("fetch('/v1/auth/me').then(r => r.json())").await;
    assert_eq!((me["signed_in_with"].as_str(), me["team"].as_str()), (Some("identity_provider"), Some("north")));
    // A state change needs the session's CSRF token, as for a built-in account.
    let create = |csrf: &str| {
        format!(
            "fetch('/v1/sessions', {{ method: 'POST', headers: {{ 'Content-Type': 'application/json'{csrf} }}, body: JSON.stringify({{ fields: ['pan', 'expiry', 'cvv'], reference: 'oidc-1', agent_uri: 'sip:agent@127.0.0.1:5070' }}) }}).then(r => r.status)"
        )
    };
    assert_eq!(b.eval(&create("")).await, 403, "no CSRF token");
    assert_eq!(b.eval(&create(", 'X-CSRF-Token': csrf")).await, 201);
    let secrets = ["alice-password-1", SECRET, "access_token", "id_token="];
    for url in &b.requested {
        for s in secrets {
            assert!(!url.contains(s), "{s} in a requested URL: {url}");
        }
    }
    drop(b);

    // A QA reviewer, from the QA page.
    let mut q = Browser::open_with(&format!("{base}/qa"), &flags).await;
    browser_sign_in(&mut q, &p.issuer, "quinn", "quinn-password-3").await;
    let on_qa = "location.pathname === '/qa' && !document.getElementById('whoami').hidden";
    q.wait_for(on_qa, Duration::from_secs(15)).await;
    assert_eq!(q.eval("document.getElementById('who').textContent").await, "quinn (qa)");
    drop(q);

    // The provider says bob signed in with a password only: refused, and not signed in.
    let mut b = Browser::open_with(&format!("{base}/desktop"), &flags).await;
    browser_sign_in(&mut b, &p.issuer, "bob", "bob-password-22").await;
    let refused = "location.pathname === '/v1/auth/oidc/callback' && document.getElementById('why')";
    b.wait_for(refused, Duration::from_secs(15)).await;
    let why = b.eval("document.getElementById('why').textContent").await;
    assert!(why.as_str().unwrap().contains("multi-factor"), "{why}");
    b.eval("location.href = '/desktop'").await;
    b.wait_for("!document.getElementById('provider').hidden", Duration::from_secs(10)).await;
    assert_eq!(b.eval("fetch('/v1/auth/me').then(r => r.status)").await, 401, "not signed in");
    assert!(b.eval("document.getElementById('whoami').hidden").await.as_bool().unwrap());
    drop(b);

    let trail = trail(&t).await;
    for (outcome, resource, detail) in [
        ("signed_in", "oidc:alice", ""),
        ("signed_in", "oidc:quinn", ""),
        ("mfa_missing", "identity_provider", "amr [pwd], acr \"urn:test:pwd\""),
    ] {
        let found = trail.iter().any(|(o, r, d)| (o.as_str(), r.as_str(), d.as_str()) == (outcome, resource, detail));
        assert!(found, "{outcome} {resource} {detail} in {trail:?}");
    }
    t.stop().await;
}

#[tokio::test]
async fn forged_stolen_replayed_and_mixed_up_answers_sign_nobody_in() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::sipp::free_tcp_port();
    let (t, p, base) = start_tonewall(dir.path(), port, |r| start_provider(dir.path(), r)).await;
    let tonewall_cert = t.dir.path().join("tls/cert.pem");
    let certs = [tonewall_cert.as_path(), p.cert.as_path()];
    let callback = |q: &str| format!("{base}/v1/auth/oidc/callback?{q}");

    // A state tonewall never issued.
    let mut victim = Client::new(&certs);
    let r = victim.go("GET", &callback("state=forged&code=whatever"), None).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Login CSRF: eve signs in at the provider and sends her callback link to a victim, whose
    // browser does not hold eve's binding cookie.
    let mut eve = Client::new(&certs);
    let link = eve.sign_in_at_provider(&base, &p.issuer, "eve", "eve-password-555").await;
    let r = victim.go("GET", &link, None).await;
    assert_eq!(r.status, 401, "eve's code in the victim's browser: {}", r.body);
    assert!(!victim.jar.contains_key("tw_session"));
    // And the state is spent: not even eve can use it now.
    assert_eq!(eve.go("GET", &link, None).await.status, 401);

    // Eve's own sign-in works once; the same answer again does not.
    let link = eve.sign_in_at_provider(&base, &p.issuer, "eve", "eve-password-555").await;
    let r = eve.go("GET", &link, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(eve.jar.contains_key("tw_session"), "signed in");
    let me = eve.go("GET", &format!("{base}/v1/auth/me"), None).await;
    let me: Value = serde_json::from_str(&me.body).unwrap();
    assert_eq!(
        (me["username"].as_str(), me["role"].as_str(), me["team"].as_str()),
        (Some("eve"), Some("agent"), Some("south"))
    );
    let mut replay = Client::new(&certs);
    replay.jar = eve.jar.clone();
    replay.jar.remove("tw_session");
    assert_eq!(replay.go("GET", &link, None).await.status, 401, "a replayed answer");

    // An answer that names another issuer (a mix-up attack, RFC 9207).
    let link = eve.sign_in_at_provider(&base, &p.issuer, "eve", "eve-password-555").await;
    let iss = query(&link, "iss");
    assert!(!iss.is_empty(), "the provider names itself: {link}");
    let mixed = link.replace(&format!("iss={iss}"), "iss=https%3A%2F%2Fidp.attacker.example");
    assert_eq!(eve.go("GET", &mixed, None).await.status, 401, "another issuer");

    // A stolen code is worth nothing without tonewall's PKCE verifier, even with the client
    // secret.
    let link = eve.sign_in_at_provider(&base, &p.issuer, "eve", "eve-password-555").await;
    let code = query(&link, "code");
    let redirect = format!("{base}/v1/auth/oidc/callback").replace(':', "%3A").replace('/', "%2F");
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={redirect}&client_id=tonewall&client_secret={SECRET}"
    );
    let mut thief = Client::new(&certs);
    let r = thief.go("POST", &format!("{}/token", p.issuer), Some(form)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("invalid_grant"), "{}", r.body);

    // The provider's own refusal, and people the configuration gives no role.
    let mut c = Client::new(&certs);
    let link = c.sign_in_at_provider(&base, &p.issuer, "mallory", "mallory-pass-44").await;
    assert_eq!(c.go("GET", &link, None).await.status, 401, "no role");
    let state = query(&link, "state");
    let link = c.sign_in_at_provider(&base, &p.issuer, "alice", "alice-password-1").await;
    let denied = callback(&format!("state={}&error=access_denied", query(&link, "state")));
    assert_eq!(c.go("GET", &denied, None).await.status, 401, "the provider said no");
    assert!(!c.jar.contains_key("tw_session"));
    assert_ne!(state, query(&link, "state"), "each sign-in has its own state");

    let trail = trail(&t).await;
    for outcome in ["unknown_state", "other_browser", "signed_in", "other_issuer", "no_role", "provider_refused"] {
        assert!(trail.iter().any(|(o, _, _)| o == outcome), "{outcome} in {trail:?}");
    }
    let vault = &t.server.shared.vault;
    assert_eq!(audit::verify(vault.pool(), &vault.keys().audit).await.unwrap().1, vec![]);
    t.stop().await;
}
