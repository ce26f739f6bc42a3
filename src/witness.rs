//! `residency-proxy witness`: a C2SP tlog-witness server (HTTP/1.1, over
//! TLS with `--tls-cert` and `--tls-key`).
//!
//! `POST /add-checkpoint` runs [`residency_log::witness::Witness`]: the
//! log's signature is checked with the key given for its origin (`--log`),
//! the consistency proof from the size recorded for it, and the new size
//! and root are written to the state file (JSON: temporary file, fsync,
//! rename, fsync of the directory) before the cosignature is answered. A
//! wrong `old` size is answered 409 with the recorded size
//! (`text/x.tlog.size`), as are rollbacks and forks; an unknown origin 404,
//! a bad signature 403, a bad proof 422, a malformed request 400.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use residency_core::report::ConfigReport;
use residency_log::note::Verifier;
use residency_log::witness::{
    encode_state, parse_state, Cosigner, State, Witness, MAX_REQUEST_BYTES, SIZE_CONTENT_TYPE,
};

/// `residency-proxy witness`.
#[derive(Debug, Clone, clap::Args)]
pub struct WitnessArgs {
    /// The witness's name (the cosignature key name), e.g. `witness.example.com/w1`.
    #[arg(long)]
    pub name: String,
    /// Its PKCS#8 Ed25519 key (`residency-proxy keygen --witness` writes one).
    #[arg(long)]
    pub key: PathBuf,
    /// A log to witness: `ORIGIN=VKEY`, or `VKEY` alone when the key's name
    /// is the origin; VKEY may also be a file holding the key. Repeatable;
    /// an origin given with two keys is taken signed by either (a log
    /// rotating its key).
    #[arg(long = "log", value_name = "ORIGIN=VKEY", required = true)]
    pub logs: Vec<String>,
    /// Where the latest cosigned size and root of each log are kept.
    #[arg(long, default_value = "witness-state.json")]
    pub state: PathBuf,
    /// The address to serve on, e.g. `127.0.0.1:7380`.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The submission prefix's path (tlog-witness: the endpoint is
    /// `<prefix>/add-checkpoint`), e.g. `/w1`; the root when unset.
    #[arg(long, value_name = "PATH", value_parser = parse_prefix)]
    pub prefix: Option<String>,
    /// Connections one client address (an IPv6 client's /64) may hold open
    /// at once, of the witness's 256; one more is closed as soon as it is
    /// accepted. 0: no limit (for a witness behind a proxy or balancer,
    /// whose connections all come from its address).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PER_CLIENT,
          value_parser = clap::value_parser!(u32).range(0..=MAX_CONNECTIONS as i64))]
    pub max_connections_per_client: u32,
}

/// `--max-connections-per-client`'s default: a witness's clients are the
/// logs it cosigns, each submitting a checkpoint at a time; one address
/// holding all 256 connections would keep every other log out.
const DEFAULT_PER_CLIENT: u32 = 16;

/// `--prefix`: a path of its own, without a trailing `/`, query or
/// fragment, in the bytes a request path may hold unencoded.
fn parse_prefix(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix('/')
        .ok_or_else(|| format!("`{value}` does not start with /"))?;
    let path_bytes = |b: u8| b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@%".contains(&b);
    if rest.is_empty()
        || rest.ends_with('/')
        || rest
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        || !rest.bytes().all(path_bytes)
    {
        return Err(format!(
            "`{value}` is not a path like /w1 (no trailing /, empty or dot segments, query or fragment)"
        ));
    }
    Ok(value.to_string())
}

/// The TLS of `--tls-cert` / `--tls-key`: HTTP/1.1 only, read at start.
fn acceptor(args: &WitnessArgs) -> anyhow::Result<Option<crate::plain_http::TlsSource>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let source = residency_tls::load_cert_source(cert, key)?;
    let config = crate::plain_http::http1_tls(&[source])?;
    Ok(Some(Arc::new(move || config.clone())))
}

/// Concurrent connections served; more are closed.
const MAX_CONNECTIONS: usize = 256;
/// Time for a request head, and separately for its body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `--log` values into origin → the log's keys. A value is
/// `ORIGIN=VKEY` (split at the first `=` after which a key, or a file
/// holding one, follows: an origin may hold `=`, `+` or spaces, as
/// tlog-checkpoint has clients assume nothing of its form), or a key alone
/// for the origin its name gives. An origin given again with another key
/// trusts both (a log rotating its key).
fn logs(args: &[String]) -> anyhow::Result<BTreeMap<String, Vec<Verifier>>> {
    let mut logs: BTreeMap<String, Vec<Verifier>> = BTreeMap::new();
    for raw in args {
        // As shown in errors: a control character escaped, not printed.
        let arg = raw.escape_debug();
        let key = |text: &str| {
            let text = std::fs::read_to_string(text).unwrap_or_else(|_| text.to_string());
            Verifier::parse(text.trim())
        };
        let split = raw
            .match_indices('=')
            .map(|(at, _)| (&raw[..at], &raw[at + 1..]))
            .filter(|(origin, _)| !origin.is_empty())
            .find_map(|(origin, text)| key(text).ok().map(|v| (origin.to_string(), v)));
        let (origin, verifier) = match split {
            Some(found) => found,
            None => match key(raw) {
                Ok(verifier) => (verifier.name().to_string(), verifier),
                // `ORIGIN=` followed by what is not a key: say so of the
                // key (a bare key has its `+` before any `=`).
                Err(e) => match raw.split_once('=') {
                    Some((origin, text)) if !origin.is_empty() && !origin.contains('+') => {
                        bail!("{arg}: {}", key(text).err().unwrap_or(e))
                    }
                    _ => bail!("{arg}: {e}"),
                },
            },
        };
        if origin.chars().any(char::is_control) {
            bail!(
                "{arg}: origin `{}` holds a control character",
                origin.escape_debug()
            );
        }
        // A checkpoint's origin line rarely starts or ends with a space;
        // one here is likely a typo that would leave the log unknown (404).
        if origin.trim() != origin {
            bail!("{arg}: origin `{origin}` starts or ends with whitespace");
        }
        let keys = logs.entry(origin.clone()).or_default();
        if keys.iter().any(|k| k.public_key() == verifier.public_key()) {
            bail!("origin {origin} is given twice with the same key");
        }
        keys.push(verifier);
    }
    Ok(logs)
}

/// Loads the key, the logs and the state: the witness, ready to serve.
/// What is wrong with them is a [`ConfigReport`] naming the flag (exit 2).
pub fn load(args: &WitnessArgs) -> anyhow::Result<Witness> {
    if !residency_log::settings::valid_origin(&args.name) {
        return Err(flag(
            "--name",
            format!(
                "{:?} must be non-empty, without spaces, control characters or '+'",
                args.name
            ),
        ));
    }
    let key = || {
        let pkcs8 = std::fs::read(&args.key).map_err(|e| anyhow!("{e}"))?;
        Cosigner::from_pkcs8(&args.name, &pkcs8).map_err(|e| anyhow!("{e}"))
    };
    let cosigner = key().map_err(|e| flag("--key", format!("{}: {e}", args.key.display())))?;
    let logs = logs(&args.logs).map_err(|e| flag("--log", e))?;
    let state = match std::fs::read_to_string(&args.state) {
        Ok(text) => parse_state(&text).map_err(|e| anyhow!("{e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::new()),
        Err(e) => Err(e.into()),
    }
    .map_err(|e| flag("--state", format!("{}: {e}", args.state.display())))?;
    Ok(Witness::new(cosigner, logs, state))
}

/// An argument that cannot be used, named by its flag.
fn flag(name: &str, e: impl std::fmt::Display) -> anyhow::Error {
    let mut report = ConfigReport::new("witness");
    report.push(name, e);
    report.into()
}

/// Writes `state` to `path` atomically and durably.
pub fn write_state(path: &Path, state: &State) -> std::io::Result<()> {
    residency_log::disk::replace_durably(path, encode_state(state).as_bytes())
}

/// Serves until `shutdown` resolves.
pub async fn run(args: WitnessArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let witness = Arc::new(load(&args)?);
    let tls = acceptor(&args).map_err(|e| flag("--tls-cert / --tls-key", format!("{e:#}")))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let endpoint: Arc<str> =
        format!("{}/add-checkpoint", args.prefix.as_deref().unwrap_or("")).into();
    tracing::info!(
        addr = %listener.local_addr()?,
        key = %witness.cosigner().verifier_key(),
        state = %args.state.display(),
        tls = tls.is_some(),
        "witness listening: POST {endpoint}"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(args.state.clone());
    let cap = crate::plain_http::Cap {
        max_connections: MAX_CONNECTIONS,
        // Not exported: the witness serves no metrics.
        rejected: prometheus::IntCounter::new("witness_connections_rejected", "unexported")?,
        // Its clients are the logs it cosigns, a handful of addresses: one
        // of them (or anyone else) cannot take every connection.
        per_client: (args.max_connections_per_client > 0)
            .then(|| {
                prometheus::IntCounter::new("witness_client_connection_limit", "unexported")
                    .map(|n| (args.max_connections_per_client, n))
            })
            .transpose()?,
        blocking: false,
        rate: None,
    };
    let answer = move |req| answer(req, endpoint.clone(), witness.clone(), state.clone());
    let server = tokio::spawn(crate::plain_http::serve_async(
        listener, stop_rx, cap, tls, answer,
    ));
    shutdown.await;
    tracing::info!("witness shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn plain(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    text(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

async fn answer(
    req: Request<Incoming>,
    endpoint: Arc<str>,
    witness: Arc<Witness>,
    state: Arc<PathBuf>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != &*endpoint {
        return plain(
            StatusCode::NOT_FOUND,
            &format!("not found: POST {endpoint}"),
        );
    }
    if req.method() != Method::POST {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "only POST");
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return resp;
    }
    let body = Limited::new(req.into_body(), MAX_REQUEST_BYTES);
    let body = match tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return plain(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
        Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "the body took too long"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let result = tokio::task::spawn_blocking(move || {
        witness.add_checkpoint(&body, now, |s| {
            write_state(&state, s).map_err(|e| format!("{}: {e}", state.display()))
        })
    })
    .await;
    match result {
        Ok(Ok(accepted)) => {
            tracing::info!(origin = %accepted.origin, size = accepted.size, "cosigned");
            text(StatusCode::OK, "text/plain; charset=utf-8", accepted.body)
        }
        Ok(Err(refusal)) => {
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_server_error() {
                tracing::error!(error = %refusal, "add-checkpoint failed");
            } else {
                tracing::warn!(status = status.as_u16(), refusal = %refusal, "add-checkpoint refused");
            }
            match refusal.recorded_size() {
                Some(size) => text(status, SIZE_CONTENT_TYPE, format!("{size}\n")),
                None => plain(status, &refusal.to_string()),
            }
        }
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{logs, parse_prefix};
    use residency_log::note::Signer;

    #[test]
    fn a_log_is_any_origin_with_one_or_more_keys() {
        let key =
            |name: &str, seed: u8| Signer::from_seed(name, &[seed; 32]).unwrap().verifier_key();
        let (a, b) = (key("log.example/a", 1), key("log.example/a", 2));
        let args = [
            a.clone(),
            format!("log.example/a={b}"),
            format!("with space={a}"),
            format!("a+b={a}"),
            format!("q?x=1={b}"),
        ];
        let parsed = logs(&args).unwrap();
        let names: Vec<(&str, usize)> = parsed.iter().map(|(o, k)| (o.as_str(), k.len())).collect();
        assert_eq!(
            names,
            [
                ("a+b", 1),
                ("log.example/a", 2),
                ("q?x=1", 1),
                ("with space", 1)
            ]
        );
        // The same key twice for one origin; a control character; not a key.
        let twice = logs(&[a.clone(), format!("log.example/a={a}")]).unwrap_err();
        assert!(twice.to_string().contains("given twice"), "{twice}");
        assert!(logs(&[format!("a\tb={a}")]).is_err());
        assert!(logs(&[format!("log.example/a ={a}")]).is_err());
        let bad = logs(&["log.example/a=AAAA".to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("expected <name>+<key id>+<base64 key>"),
            "{bad}"
        );
    }

    #[test]
    fn a_prefix_is_a_plain_path() {
        for ok in ["/w1", "/witness/w1", "/a-b_c.d~e"] {
            assert_eq!(parse_prefix(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "", "/", "w1", "/w1/", "//w1", "/a//b", "/a/../b", "/w1?x", "/w1#x", "/w 1",
        ] {
            assert!(parse_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
