//! The web UI's pages (the agent desktop and the QA player). Each is one self-contained file
//! (no external assets: it works offline inside a contact center), never cached, served with
//! a Content-Security-Policy that allows exactly its own inline script and style, by their
//! SHA-256 (CSP Level 3 §2.3.1 hash-source), so no injected script can run; connections and
//! media to this origin only; framing only by `http.frame_ancestors` (CSP3 §6.4.2), so a
//! platform can embed the desktop where it should and nowhere else.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::AppState;

struct Page {
    html: &'static str,
    /// `script-src …; style-src …` with the hashes of the page's inline blocks.
    inline: String,
}

impl Page {
    fn new(html: &'static str) -> Page {
        let inline = format!("script-src {}; style-src {}", hashes(html, "script"), hashes(html, "style"));
        Page { html, inline }
    }
}

/// The `'sha256-…'` source of every `<tag>…</tag>` block's text, as a browser hashes it.
fn hashes(html: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        out.push(format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest)));
        rest = &body[end + close.len()..];
    }
    if out.is_empty() { "'none'".to_string() } else { out.join(" ") }
}

static DESKTOP: LazyLock<Page> = LazyLock::new(|| Page::new(include_str!("../../web/desktop.html")));
static QA: LazyLock<Page> = LazyLock::new(|| Page::new(include_str!("../../web/qa.html")));

pub async fn desktop(State(state): State<AppState>) -> Response {
    serve(&DESKTOP, &state.frame_ancestors)
}

pub async fn qa(State(state): State<AppState>) -> Response {
    serve(&QA, &state.frame_ancestors)
}

fn serve(page: &Page, frame_ancestors: &str) -> Response {
    let csp = format!(
        "default-src 'none'; {}; connect-src 'self'; media-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors {frame_ancestors}",
        page.inline
    );
    let mut r = Html(page.html).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Built from the page's own hashes and checked configuration: always a valid value.
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_every_inline_block_as_a_browser_does() {
        let html = "<style>a{}</style><script>one()</script><p>x</p><script>two()</script>";
        let script = hashes(html, "script");
        assert_eq!(script.matches("'sha256-").count(), 2, "{script}");
        // printf 'one()' | openssl dgst -sha256 -binary | base64
        assert!(script.starts_with("'sha256-HR7iaask9daLMRRskMI++QeJtjWDOjyPA6lGzYGzKW4='"), "{script}");
        assert_eq!(hashes("<p>no script</p>", "script"), "'none'");
        for page in [&*DESKTOP, &*QA] {
            assert!(!page.inline.contains("'none'"), "each page has its script and style: {}", page.inline);
            assert!(!page.html.contains("style=\""), "an inline style attribute would be blocked");
        }
    }
}
