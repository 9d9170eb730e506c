//! The pages in a real browser (headless Chromium, 360 px wide): an agent signs in to
//! `/desktop`, starts a payment, watches a real call on loopback fill it in — dots, never
//! digits, the brand and ✓ per field — and gets the token; a QA reviewer opens the call's
//! recording in `/qa` and sees its masked spans. Screenshots are kept under
//! `target/test-artifacts/`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::browser::Browser;
use common::{TestCard, TestServer};
use tonewall::api::auth::Role;
use tonewall_testkit::agent::Agent;
use tonewall_testkit::caller::{self, CallerOptions};

const PAN: &str = "4111111111111111";

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts").join(name)
}

/// Sets an input's value the way typing does (the page reads it on submit).
fn fill(id: &str, value: &str) -> String {
    format!("document.getElementById({id:?}).value = {value:?}; true")
}

fn click(selector: &str) -> String {
    format!("document.querySelector({selector:?}).click(); true")
}

fn text(selector: &str) -> String {
    format!("((document.querySelector({selector:?}) || {{}}).textContent || '')")
}

fn visible(id: &str) -> String {
    format!("!document.getElementById({id:?}).hidden")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_takes_a_payment_in_the_desktop_and_qa_replays_it() {
    let t = TestServer::start().await;
    let agent_key = t.key(Role::Agent).await;
    let vault = t.server.shared.vault.clone();
    let password = "a long qa password";
    let totp =
        tonewall::accounts::add(&vault, "qa-dana", password, Role::Qa, None, true, false).await.unwrap().unwrap();
    let agent = Agent::start().await.unwrap();
    let mut b = Browser::open(&format!("{}/desktop", t.base)).await;
    let long = Duration::from_secs(20);

    // Sign in: a wrong key is refused with a message, the right one opens the form.
    b.wait_for(&visible("signin"), long).await;
    b.eval(&fill("key", "twk_wrong")).await;
    b.eval(&click("#signin-button")).await;
    let refused = b.wait_for(&text("#message"), long).await;
    assert!(refused.as_str().unwrap().contains("Sign-in failed"), "{refused}");
    b.eval(&fill("key", &agent_key)).await;
    b.eval(&click("#signin-button")).await;
    b.wait_for(&visible("start"), long).await;
    let widths = b.eval("[window.innerWidth, document.documentElement.scrollWidth]").await;
    b.screenshot(&artifact("desktop-start.png")).await;
    assert!(widths[1].as_u64() <= Some(360) && widths[0].as_u64() <= Some(360), "fits a 360 px iframe: {widths}");
    let unlabelled = b
        .eval("[...document.querySelectorAll('input:not([type=checkbox])')].filter(i => !document.querySelector(`label[for=${i.id}]`)).length")
        .await;
    assert_eq!(unlabelled, 0, "every input has a label");

    // Start a payment with the agent on the call.
    b.eval(&fill("reference", "order-desk-1")).await;
    b.eval(&fill("agent-uri", &agent.uri)).await;
    b.eval(&click("#start-button")).await;
    let uri = b.wait_for(&text("#transfer-uri"), long).await.as_str().unwrap().to_string();
    assert!(uri.starts_with("sip:pay-"), "{uri}");
    let id = uri.trim_start_matches("sip:pay-").split('@').next().unwrap_or_default().to_string();
    b.wait_for("document.querySelectorAll('#fields li').length === 3", long).await;
    b.screenshot(&artifact("desktop-waiting.png")).await;

    // The caller keys the card with pauses, so each step can be seen.
    let sip = t.server.sip_addr;
    let call = tokio::spawn(async move {
        let keys = format!("{PAN}#,,1230,,737");
        let opts = CallerOptions { linger: Duration::from_secs(3), ..CallerOptions::new(sip, &uri, &keys) };
        caller::place_call(opts).await.unwrap()
    });
    let dots = b.wait_for(&format!("{} .includes('•')", text("li[data-field=pan] .dots")), long).await;
    assert_eq!(dots, true);
    let pan_done =
        b.wait_for(&format!("(t => t.includes('✓') && t)({})", text("li[data-field=pan] .dots")), long).await;
    assert_eq!(pan_done, "•••• •••• •••• 1111 ✓", "dots and the last four only");
    b.wait_for(&format!("{} .includes('✓')", text("li[data-field=expiry] .dots")), long).await;
    let seen = b.eval("document.body.innerText").await;
    assert!(!seen.as_str().unwrap().contains(PAN), "the page never shows the card number");
    b.wait_for(&visible("result"), long).await;
    let token = b.eval(&text("#token")).await;
    assert!(token.as_str().unwrap().starts_with("tok_"), "{token}");
    assert_eq!(b.eval(&text("#result-brand")).await, "visa");
    assert_eq!(b.eval(&text("#result-last4")).await, "1111");
    // The token the page shows is the session's, and it holds the whole card as keyed.
    let session = common::wait_final(&t.base, &agent_key, &id, long).await;
    assert_eq!(session["result"]["token"], token, "the page shows the session's token");
    let card = TestCard { pan: PAN, month: 12, year: 2030, code: "737" };
    common::assert_card_whole(&t, &session, &card, "keyed with the desktop open").await;
    let page = b.eval("document.body.innerText").await;
    assert!(!page.as_str().unwrap().contains(PAN) && !page.as_str().unwrap().contains("737"), "{page}");
    b.screenshot(&artifact("desktop-completed.png")).await;
    call.await.unwrap();
    agent.finish().await.unwrap();
    no_key_in_any_url(&b.requested, &[&agent_key]);
    assert!(
        b.requested.iter().any(|u| u.contains("/events")),
        "the live view's socket is in the log: {:?}",
        b.requested
    );
    drop(b);

    // QA: a reviewer signs in with her account and one-time code, and sees who she is and
    // when the session ends; then the call's recording with its masked spans, labelled by
    // field, on a waveform.
    let mut q = Browser::open(&format!("{}/qa", t.base)).await;
    q.wait_for(&visible("signin"), long).await;
    q.eval(&fill("username", "qa-dana")).await;
    q.eval(&fill("password", password)).await;
    q.eval(&click("#account-button")).await;
    let refused = q.wait_for(&text("#message"), long).await;
    assert!(refused.as_str().unwrap().contains("Sign-in failed"), "qa without a code: {refused}");
    q.eval(&fill("password", password)).await;
    q.eval(&fill("code", &tonewall::accounts::current_code(&totp).unwrap())).await;
    q.eval(&click("#account-button")).await;
    q.wait_for(&visible("search"), long).await;
    assert_eq!(q.eval(&text("#who")).await, "qa-dana (qa)");
    assert!(q.eval(&text("#ends")).await.as_str().unwrap().starts_with("Signs out at "));
    let cookie_hidden = q.eval("document.cookie").await;
    assert_eq!(cookie_hidden, "", "the session cookie is HttpOnly: no script reads it");
    q.eval(&fill("reference", "order-desk-1")).await;
    // Stored when the call ends: at worst after Timer F, if the agent left before the BYE.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        q.eval(&click("#search-form button")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if q.eval("document.querySelectorAll('#rows tr').length").await == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the recording never appeared");
    }
    q.eval(&click("#rows tr button")).await;
    q.wait_for("document.getElementById('player').dataset.loaded", long).await;
    let fields = q
        .eval("[...new Set([...document.querySelectorAll('#spans li')].map(li => li.dataset.field))].sort().join(',')")
        .await;
    assert_eq!(fields, "cvv,expiry,pan", "masked spans for every field, the last key's tail included");
    let drawn = q
        .eval(
            "(() => { const c = document.getElementById('wave'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
             let shaded = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) shaded++; return shaded; })()",
        )
        .await;
    assert!(drawn.as_u64().unwrap() > 1000, "the waveform and spans are drawn: {drawn}");
    let audio = q.eval("document.getElementById('audio').src").await;
    assert!(audio.as_str().unwrap().contains("/audio?by=") && audio.as_str().unwrap().contains("&sig="), "{audio}");
    q.screenshot(&artifact("qa-recording.png")).await;
    // In a 360 px iframe the list and the player are one column, nothing scrolls sideways;
    // at full width they stand side by side.
    let layout = "(() => { const a = document.getElementById('search').getBoundingClientRect(), \
                  b = document.getElementById('player').getBoundingClientRect(); \
                  return { beside: b.left >= a.right && Math.abs(b.top - a.top) < 2, below: b.top >= a.bottom, \
                  wide: document.documentElement.scrollWidth > window.innerWidth, list: a.width, player: b.width }; })()";
    let narrow = q.eval(layout).await;
    assert_eq!((narrow["below"].as_bool(), narrow["wide"].as_bool()), (Some(true), Some(false)), "360 px: {narrow}");
    q.resize(1440, 900).await;
    let full = q.eval(layout).await;
    assert_eq!((full["beside"].as_bool(), full["wide"].as_bool()), (Some(true), Some(false)), "1440 px: {full}");
    assert!(full["list"].as_f64().unwrap() > 700.0 && full["player"].as_f64().unwrap() > 450.0, "{full}");
    q.screenshot(&artifact("qa-recording-full-width.png")).await;
    no_key_in_any_url(&q.requested, &[password]);
    t.stop().await;
}

/// No request the page made carries a key or token in its URL (PCI DSS 8.3.2: proxies and
/// histories keep URLs).
fn no_key_in_any_url(requested: &[String], keys: &[&str]) {
    assert!(!requested.is_empty(), "the network log is empty");
    for url in requested {
        assert!(
            !url.contains("access_token")
                && !url.contains("twk_")
                && !url.contains("twe_")
                && keys.iter().all(|k| !url.contains(k)),
            "a key in a URL: {url}"
        );
    }
}

/// A platform embeds the desktop with `desktop_url` (POST /v1/sessions, "embed": true): the
/// page opens that session without a sign-in, follows the real call to its token, and no
/// URL it requests carries the token; the token opens no other route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_desktop_opens_its_one_session_without_a_key() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let body = r#"{"fields":["pan","expiry"],"reference":"embedded","embed":true}"#;
    let (s, created) = common::http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(body)).await;
    assert_eq!(s, 201, "{created}");
    let desktop_url = created["desktop_url"].as_str().unwrap().to_string();
    let token = desktop_url.split("token=").nth(1).unwrap().to_string();
    let long = Duration::from_secs(20);
    let mut b = Browser::open(&format!("{}{desktop_url}", t.base)).await;
    let uri = b.wait_for(&text("#transfer-uri"), long).await.as_str().unwrap().to_string();
    assert_eq!(uri, created["transfer_uri"], "the page shows the embedded session");
    assert_eq!(b.eval(&visible("signin")).await, false, "no sign-in inside the embed");
    assert_eq!(b.eval("location.hash").await, "", "the token is dropped from the address bar");
    let sip = t.server.sip_addr;
    let call = tokio::spawn(async move {
        let opts =
            CallerOptions { linger: Duration::from_secs(1), ..CallerOptions::new(sip, &uri, &format!("{PAN}#,1230")) };
        caller::place_call(opts).await.unwrap()
    });
    b.wait_for(&visible("result"), long).await;
    assert_eq!(b.eval(&text("#result-last4")).await, "1111");
    b.screenshot(&artifact("desktop-embedded.png")).await;
    call.await.unwrap();
    no_key_in_any_url(&b.requested, &[&token]);
    // The token is for this session only.
    let (s, _) = common::http("POST", &format!("{}/v1/sessions", t.base), Some(&token), Some(body)).await;
    assert_eq!(s, 403, "an embed token creates no session");
    let (s, _) = common::http("GET", &format!("{}/v1/calls", t.base), Some(&token), None).await;
    assert_eq!(s, 403, "an embed token lists no calls");
    t.stop().await;
}

/// A bank-account payment from the desktop form: ACH keyed twice, an amount read back in
/// Spanish. The page shows each field as dots with the last four, marks the second entry,
/// names the amount and its confirmation, and never an account number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_takes_a_bank_account_with_an_amount_confirmed_in_spanish() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let long = Duration::from_secs(30);
    let mut b = Browser::open(&format!("{}/desktop", t.base)).await;
    b.wait_for(&visible("signin"), long).await;
    b.eval(&fill("key", &key)).await;
    b.eval(&click("#signin-button")).await;
    b.wait_for(&visible("start"), long).await;
    b.eval("const m = document.getElementById('method'); m.value = 'ach'; m.dispatchEvent(new Event('change')); true")
        .await;
    assert_eq!(b.eval(&visible("ach-fields")).await, true);
    assert_eq!(b.eval(&visible("card-fields")).await, false);
    b.eval("document.getElementById('twice').checked = true; true").await;
    b.eval(&fill("amount", "12.50")).await;
    b.eval(&fill("currency", "EUR")).await;
    b.eval(&fill("language", "es")).await;
    b.eval(&fill("reference", "order-ach-1")).await;
    let widths = b.eval("[window.innerWidth, document.documentElement.scrollWidth]").await;
    assert!(widths[1].as_u64() <= Some(360), "the longer form still fits 360 px: {widths}");
    b.eval(&click("#start-button")).await;
    let uri = b.wait_for(&text("#transfer-uri"), long).await.as_str().unwrap().to_string();
    b.wait_for("document.querySelectorAll('#fields li').length === 4", long).await;
    assert_eq!(b.eval(&text("#amount-shown")).await, "12.50 EUR");
    let sip = t.server.sip_addr;
    let (routing, account) = ("021000021", "12345678");
    let call = tokio::spawn(async move {
        let keys = format!(",{routing},,{routing},{account}#,,{account}#,2,,1");
        let opts = CallerOptions { linger: Duration::from_secs(4), ..CallerOptions::new(sip, &uri, &keys) };
        caller::place_call(opts).await.unwrap()
    });
    let second =
        b.wait_for(&format!("{} .includes('(again)')", text("li[data-field=routing_number] .dots")), long).await;
    assert_eq!(second, true, "the desktop shows the first entry is in and the second awaited");
    b.screenshot(&artifact("desktop-ach-second-entry.png")).await;
    b.wait_for(&visible("result"), long).await;
    assert_eq!(b.eval(&text("#result-title")).await, "Bank account stored");
    assert_eq!(b.eval(&text("#result-brand")).await, "savings");
    assert_eq!(b.eval(&text("#result-last4")).await, "5678");
    assert_eq!(b.eval(&text("#result-amount-value")).await, "12.50 EUR");
    let page = b.eval("document.body.innerText").await;
    let page = page.as_str().unwrap();
    assert!(!page.contains(account) && !page.contains(routing), "{page}");
    b.screenshot(&artifact("desktop-ach-completed.png")).await;
    call.await.unwrap();
    t.stop().await;
}
