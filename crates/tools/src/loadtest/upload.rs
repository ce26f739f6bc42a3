//! One upload: its id, its unique body and SHA-256, its origin, the request,
//! and how its outcome is classified.

use std::io;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};

use super::client::UploadClient;
use super::spec::{Convey, MixEntry};
use crate::fetch::describe;
use residency_tls::error_chain as chain;

/// Most response-body bytes read (the proxy's answers are tiny).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Identifies one run; upload ids are `lt-{run}-{index}`, so a sink's
/// records can be matched back to uploads and other traffic ignored.
#[derive(Debug, Clone)]
pub struct RunId {
    pub id: String,
    pub seed: u64,
}

impl RunId {
    /// A fresh id from the clock and the process id.
    pub fn new() -> RunId {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = splitmix64(nanos ^ (u64::from(std::process::id()) << 40));
        RunId {
            id: format!("{:012x}", seed >> 16),
            seed,
        }
    }

    pub fn upload_id(&self, index: u64) -> String {
        format!("lt-{}-{index}", self.id)
    }

    /// The index of one of this run's upload ids.
    pub fn index_of(&self, upload_id: &str) -> Option<u64> {
        upload_id
            .strip_prefix("lt-")?
            .strip_prefix(self.id.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

/// SplitMix64: a tiny, well-mixed deterministic generator step.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The body of upload `index`: its id and a newline, then pseudo-random
/// bytes; unique per upload because the id is.
pub fn body_for(run: &RunId, index: u64, size: usize) -> Bytes {
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(run.upload_id(index).as_bytes());
    body.push(b'\n');
    body.truncate(size);
    let mut state = run.seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    while body.len() < size {
        state = splitmix64(state);
        let want = (size - body.len()).min(8);
        body.extend_from_slice(&state.to_le_bytes()[..want]);
    }
    Bytes::from(body)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub use residency_core::hex::encode as hex;

/// Upload `index`'s jurisdiction (an index into `mix`) and origin address,
/// drawn by weight, deterministically from the run seed.
pub fn choose_origin(
    run: &RunId,
    index: u64,
    mix: &[MixEntry],
    addresses: &[Vec<IpAddr>],
) -> Option<(usize, IpAddr)> {
    let total: u64 = mix.iter().map(|m| u64::from(m.weight)).sum();
    if total == 0 {
        return None;
    }
    let r = splitmix64(run.seed.wrapping_add(index));
    let mut pick = r % total;
    let j = mix.iter().position(|m| {
        let w = u64::from(m.weight);
        if pick < w {
            true
        } else {
            pick -= w;
            false
        }
    })?;
    let list = addresses.get(j).filter(|l| !l.is_empty())?;
    let a = (splitmix64(r) % list.len() as u64) as usize;
    Some((j, list[a]))
}

/// What came back for one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status, if a response head arrived.
    pub status: Option<u16>,
    /// `None` when acknowledged (2xx, body read); otherwise a short reason
    /// such as `503 no_healthy_datacenter` or `connect_refused`.
    pub failure: Option<String>,
    /// The `Residency-Datacenter` response header.
    pub datacenter: Option<String>,
    /// The `Residency-Receipt` response header.
    pub receipt: Option<String>,
    /// The `X-Request-Id` response header: the request the receipt's
    /// record must name.
    pub request_id: Option<String>,
    /// For transport failures: the error chain, for the report's examples.
    pub detail: Option<String>,
}

impl Answer {
    pub fn failed(reason: &str) -> Answer {
        Answer {
            status: None,
            failure: Some(reason.to_string()),
            datacenter: None,
            receipt: None,
            request_id: None,
            detail: None,
        }
    }
}

/// The request an upload is sent as.
#[derive(Debug, Clone)]
pub struct Upload<'a> {
    pub target: &'a Uri,
    pub id: &'a str,
    pub origin: IpAddr,
    pub convey: Convey,
    pub idempotency_key: bool,
    pub body: Bytes,
}

/// Sends one upload and reads the whole (small) response.
pub async fn send(client: &UploadClient, upload: Upload<'_>) -> Answer {
    let mut req = Request::post(upload.target.clone())
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("x-upload-id", upload.id);
    if upload.idempotency_key {
        req = req.header("idempotency-key", upload.id);
    }
    if upload.convey == Convey::Xff {
        req = req.header("x-forwarded-for", upload.origin.to_string());
    }
    let Ok(req) = req.body(Full::new(upload.body)) else {
        return Answer::failed("bad_request_built");
    };
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) => {
            return Answer {
                detail: Some(describe(&e)),
                ..Answer::failed(classify(&e))
            }
        }
    };
    let status = resp.status();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (datacenter, receipt, request_id) = (
        header("residency-datacenter"),
        header("residency-receipt"),
        header("x-request-id"),
    );
    let body = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes());
    let failure = match (&body, status.is_success()) {
        (Ok(_), true) => None,
        (Err(_), _) => Some("response_body_error".to_string()),
        (Ok(b), false) => Some(match refusal_reason(b) {
            Some(reason) => format!("{} {reason}", status.as_u16()),
            None => status.as_u16().to_string(),
        }),
    };
    Answer {
        status: Some(status.as_u16()),
        failure,
        datacenter,
        receipt,
        request_id,
        detail: None,
    }
}

/// The `error` field of a JSON refusal, if it is a plain identifier.
fn refusal_reason(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let reason = value.get("error")?.as_str()?;
    let ok = !reason.is_empty()
        && reason.len() <= 48
        && reason
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| reason.to_string())
}

/// A short, fixed reason for a transport failure.
pub fn classify(e: &hyper_util::client::legacy::Error) -> &'static str {
    let mut io_kind = None;
    let mut tls = false;
    let mut incomplete = false;
    for err in chain(e) {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() != io::ErrorKind::Other {
                io_kind.get_or_insert(io.kind());
            }
        }
        tls |= err.downcast_ref::<rustls::Error>().is_some();
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            incomplete |= h.is_incomplete_message();
        }
    }
    if tls {
        return "tls_error";
    }
    if e.is_connect() {
        return match io_kind {
            Some(io::ErrorKind::ConnectionRefused) => "connect_refused",
            Some(io::ErrorKind::TimedOut) => "connect_timeout",
            _ => "connect_error",
        };
    }
    if incomplete {
        return "connection_closed";
    }
    match io_kind {
        Some(io::ErrorKind::ConnectionReset) => "connection_reset",
        _ => "request_error",
    }
}
