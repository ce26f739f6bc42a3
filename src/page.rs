//! The page where a customer checks, in their own browser, where an upload
//! was stored: `GET /` on `transparency.address`.
//!
//! HTML, CSS and JavaScript are embedded in the binary (`src/page/`), with
//! no build step and no request to any other origin: the Content Security
//! Policy allows scripts, styles, images and fetches from the log's own
//! origin only, and nothing inline. The verdict is computed in the browser
//! (`verify.js`, WebCrypto Ed25519 and SHA-256) by the same steps as
//! `residency_log::verdict`, and both are held to the shared vectors
//! (`crates/log/vectors/verify.json`).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The page's files: path, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("page/index.html"),
    ),
    (
        "/page.css",
        "text/css; charset=utf-8",
        include_str!("page/page.css"),
    ),
    (
        "/page.js",
        "text/javascript; charset=utf-8",
        include_str!("page/page.js"),
    ),
    (
        "/verify.js",
        "text/javascript; charset=utf-8",
        include_str!("page/verify.js"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_str!("page/favicon.svg"),
    ),
];

/// Same origin only, nothing inline, no framing, no forms posted anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One of the page's files, or `None` for any other path.
pub fn answer(path: &str) -> Option<Response<Full<Bytes>>> {
    let path = if path == "/index.html" { "/" } else { path };
    let (_, content_type, body) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary; they are small.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}

/// The log's page with its key pinned in the fragment (`#key=…`,
/// percent-encoded: a key's `+` would read as a space).
pub fn pinned_url(base: &str, vkey: &str) -> String {
    let mut url = format!("{base}#key=");
    for b in vkey.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                url.push(b as char)
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    url
}
