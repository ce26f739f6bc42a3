//! A small HTTP(S) client bound to one base URL: GETs from a log's
//! endpoints (`verify --log`) and POSTs to a witness (`add-checkpoint`).
//! Every exchange is bounded: 10 s for the answer's head, 10 s for its
//! body, at most [`MAX_RESPONSE_BYTES`] read.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The largest answer read.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What a request was answered.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    /// The error of a GET of `url` that got this answer, not a 2xx:
    /// [`Unavailable`] for a 5xx or 429 (the server could not say).
    pub fn failed(&self, url: &str) -> anyhow::Error {
        // The server's words, at most 512 bytes of them.
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(512)]);
        let cut = if self.body.len() > 512 { "…" } else { "" };
        let why = format!("GET {url}: {}: {}{cut}", self.status, body.trim_end());
        let busy = self.status.is_server_error()
            || self.status == http::StatusCode::TOO_MANY_REQUESTS
            || self.status == http::StatusCode::REQUEST_TIMEOUT;
        match busy {
            true => Unavailable(why).into(),
            false => anyhow!(why),
        }
    }
}

#[derive(Clone)]
pub struct Fetcher {
    base: String,
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("base", &self.base).finish()
    }
}

/// The whole error chain as one line (for a report's examples, or why a
/// fetch failed), with what to do about a refused certificate when
/// rustls's words do not say.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in residency_tls::error_chain(e) {
        let text = err.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
    }
    let mut text = parts.join(": ");
    if let Some(hint) = residency_tls::refusal_hint_in(e) {
        text = format!("{text} ({hint})");
    }
    text
}

/// A log, witness or admin API that did not answer (not reached, timed
/// out, its answer broke off), or answered that it could not (5xx, 408,
/// 429): nothing was learnt, so nothing is wrong yet. The
/// root cause of the errors [`Fetcher`] returns for those.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Whether `e` is a [`Fetcher`]'s [`Unavailable`] (with context around it).
pub fn unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.is::<Unavailable>())
}

impl Fetcher {
    /// For `base` (`http://` or `https://`, trailing `/` ignored); `ca`: a
    /// PEM bundle trusted for https instead of the system roots.
    pub fn new(base: &str, ca: Option<&PathBuf>) -> anyhow::Result<Fetcher> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("`{base}` is not an http:// or https:// URL (e.g. https://{base})");
        }
        let ca = ca.map(std::fs::read).transpose().context("reading --ca")?;
        let tls = residency_tls::client_config(ca.as_deref())?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Fetcher {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The same client for the URLs under `prefix` (a path below the base
    /// URL; a trailing `/` is ignored).
    pub fn at(&self, prefix: &str) -> Fetcher {
        Fetcher {
            base: format!("{}{}", self.base, prefix.trim_end_matches('/')),
            client: self.client.clone(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET `path`; a status other than 2xx is an error.
    pub async fn get(&self, path: &str) -> anyhow::Result<Bytes> {
        let url = format!("{}{path}", self.base);
        let answer = self.answer(path).await?;
        if !answer.status.is_success() {
            return Err(answer.failed(&url));
        }
        Ok(answer.body)
    }

    /// GET `path`; any status is answered.
    pub async fn answer(&self, path: &str) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        // tlog-tiles: "Clients SHOULD include gzip and identity in their
        // Accept-Encoding headers" (a log, or a CDN in front of it, may
        // compress what it serves).
        let req = http::Request::get(url.as_str())
            .header(http::header::ACCEPT_ENCODING, "gzip, identity")
            .body(Full::default())
            .with_context(|| format!("bad URL {url}"))?;
        self.send(req, "GET", &url).await
    }

    /// POST `body` (with `content_type`) to `path`; any status is answered.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let req = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .with_context(|| format!("bad URL {url}"))?;
        self.send(req, "POST", &url).await
    }

    async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        method: &str,
        url: &str,
    ) -> anyhow::Result<Answer> {
        let resp = match tokio::time::timeout(TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) => resp,
            Err(_) => return Err(Unavailable(format!("{method} {url}: timed out")).into()),
            // Not reached: as unavailable (the reason in full, with what to
            // do about a refused certificate).
            Ok(Err(e)) => {
                let why = describe(&e);
                return Err(Unavailable(format!("{method} {url}: {why}")).into());
            }
        };
        let status = resp.status();
        let encoding = resp
            .headers()
            .get(http::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Bounded: what a log or a witness answers is small.
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES);
        // A body that stalls or breaks off is the server not answering; one
        // over the limit is an answer no log gives.
        let body = match tokio::time::timeout(TIMEOUT, limited.collect()).await {
            Err(_) => return Err(Unavailable(format!("{method} {url}: timed out")).into()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                bail!("{method} {url}: {e} (at most {MAX_RESPONSE_BYTES} bytes are read)")
            }
            Ok(Err(e)) => {
                return Err(Unavailable(format!("{method} {url}: {}", describe(&*e))).into())
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let body = match encoding.as_deref() {
            None | Some("identity") => body,
            // RFC 9110 §8.4.1.3: `x-gzip` is gzip.
            Some("gzip" | "x-gzip") => gunzip(&body).with_context(|| format!("{method} {url}"))?,
            // Not the log's word on anything (a front that encodes what it
            // was not asked to): the answer could not be read.
            Some(other) => {
                return Err(Unavailable(format!(
                    "{method} {url}: the answer is in content coding `{other}`, not gzip or identity as asked"
                ))
                .into())
            }
        };
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }

    /// GET `path` as UTF-8 text.
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        let body = self.get(path).await?;
        String::from_utf8(body.to_vec()).context("the log answered non-UTF-8 text")
    }

    /// GET `path` as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.get(path).await?;
        serde_json::from_slice(&body).with_context(|| format!("{path}: unexpected answer"))
    }
}

/// A gzip-encoded answer decoded, bounded as an answer is: past
/// [`MAX_RESPONSE_BYTES`] decoded it is no answer a log gives. One that
/// does not decode is [`Unavailable`]: the answer could not be read (a
/// broken front, as for a coding not asked for), which is no word of the
/// log's — and what a browser makes of it too (the customer page).
fn gunzip(body: &[u8]) -> anyhow::Result<Bytes> {
    use std::io::Read as _;
    let mut out = Vec::new();
    // Every member (RFC 1952 allows several, one after the other).
    flate2::read::MultiGzDecoder::new(body)
        .take(MAX_RESPONSE_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Unavailable(format!("the answer's gzip encoding does not decode: {e}")))?;
    if out.len() > MAX_RESPONSE_BYTES {
        bail!("the answer decodes to more than {MAX_RESPONSE_BYTES} bytes");
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// Serves `body` with `Content-Encoding: gzip` to one request; returns
    /// the base URL and what the request's head said.
    async fn gzip_server(body: Vec<u8>) -> (String, tokio::sync::oneshot::Receiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase());
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = tcp.write_all(&body).await;
        });
        (format!("http://{addr}"), rx)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A log (or a CDN in front of it) may gzip its tiles: asked for
    /// (tlog-tiles: clients SHOULD accept gzip and identity) and decoded —
    /// it was read as the tile itself, the wrong size (log audit, stop 62).
    /// Decoded, it is bounded as any answer.
    #[tokio::test]
    async fn gzip_answers_are_asked_for_and_decoded_within_the_bound() {
        let tile: Vec<u8> = (0..544u32).map(|i| (i % 7) as u8).collect();
        let get = async |base: &str, path: &str| Fetcher::new(base, None).unwrap().get(path).await;
        let (base, head) = gzip_server(gzip(&tile)).await;
        let got = get(&base, "/tile/1/001.p/17").await.unwrap();
        assert_eq!(got.as_ref(), &tile[..]);
        assert!(
            head.await
                .unwrap()
                .contains("\r\naccept-encoding: gzip, identity\r\n"),
            "asked for gzip"
        );
        // Two members, one after the other: both (RFC 1952).
        let (a, b) = (&tile[..100], &tile[100..]);
        let (base, _) = gzip_server([gzip(a), gzip(b)].concat()).await;
        let got = get(&base, "/tile/1/001.p/17").await.unwrap();
        assert_eq!(got.as_ref(), &tile[..]);
        let bomb = vec![0u8; MAX_RESPONSE_BYTES + 1];
        let (base, _) = gzip_server(gzip(&bomb)).await;
        let err = get(&base, "/tile/0/000").await.unwrap_err();
        assert!(
            format!("{err:#}").contains("decodes to more than"),
            "{err:#}"
        );
        assert!(!unavailable(&err), "an answer no log gives: {err:#}");
    }

    /// An answer marked gzip that does not decode could not be read: not
    /// checked (as a browser's fetch fails on it), not the log's word
    /// (`verify` called it INVALID; log audit, stop 62).
    #[tokio::test]
    async fn a_gzip_answer_that_does_not_decode_is_unavailable() {
        let tile: Vec<u8> = (0..544u32).map(|i| (i % 7) as u8).collect();
        let mut broken = gzip(&tile);
        let last = broken.len() - 1;
        broken[last] ^= 0xff; // the length in the trailer
        for body in [b"not gzip at all".to_vec(), broken] {
            let (base, _) = gzip_server(body).await;
            let err = Fetcher::new(&base, None)
                .unwrap()
                .get("/tile/1/001.p/17")
                .await
                .unwrap_err();
            assert!(unavailable(&err), "{err:#}");
            assert!(format!("{err:#}").contains("does not decode"), "{err:#}");
        }
    }
}
