//! One request on a data-centre port: `GET /healthz`, or an upload whose
//! body is streamed through SHA-256 (never held whole), recorded, and only
//! then answered 201 — unless the data centre's mode says otherwise.
//!
//! Order per request: `hang` (checked first: nothing is read), read the body
//! (413 over the size limit, 400/408 when it fails or stalls — not stored),
//! then the mode again: `error` draws and may answer 503 without storing;
//! otherwise store, and in `slow` hold the answer for `delay_ms`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use ring::digest::{Context, SHA256};
use tokio::sync::watch;

use super::datacenter::{hang, Datacenter};
use super::model::{Counters, Mode, Record};
use super::{stopped, Shared};

/// The most of a header value a record keeps.
const RECORDED_FIELD: usize = 256;

pub(crate) type Reply = Response<Full<Bytes>>;

/// The request is dropped unanswered and its connection closed: the data
/// centre hangs (and stopped hanging), refuses, or the sink is stopping.
#[derive(Debug, thiserror::Error)]
#[error("request abandoned: {0}")]
pub(crate) struct Abandoned(&'static str);

/// What was read of an upload.
struct Upload {
    sha256: String,
    bytes: u64,
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    dc: Arc<Datacenter>,
    mut stop: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Reply, Abandoned> {
    let mut modes = dc.subscribe();
    if *modes.borrow_and_update() == Mode::Hang {
        hang(&mut modes, &mut stop).await;
        return Err(Abandoned("hang ended"));
    }
    let health_check = req.method() == Method::GET && req.uri().path() == "/healthz";
    let headers = req.headers().clone();
    let upload = if health_check {
        None
    } else {
        match read_body(&shared, req).await {
            Ok(upload) => Some(upload),
            Err(reply) => {
                Counters::add(&dc.counters.rejected, 1);
                return Ok(reply);
            }
        }
    };
    let mode = *modes.borrow_and_update();
    match mode {
        Mode::Hang => {
            hang(&mut modes, &mut stop).await;
            return Err(Abandoned("hang ended"));
        }
        Mode::Refuse => return Err(Abandoned("refusing")),
        Mode::Error { error_rate } if dc.draw(health_check) < error_rate => {
            if !health_check {
                Counters::add(&dc.counters.errors, 1);
            }
            let body = serde_json::json!({"error": "injected_failure", "datacenter": dc.name});
            return Ok(json(StatusCode::SERVICE_UNAVAILABLE, &body));
        }
        _ => {}
    }
    let reply = match upload {
        None => text(StatusCode::OK, "ok\n"),
        Some(upload) => store(&shared, &dc, &headers, upload),
    };
    if let Mode::Slow { delay_ms } = mode {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
            () = stopped(&mut stop) => {}
        }
    }
    Ok(reply)
}

/// Reads the whole body, hashing as it streams.
async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Upload, Reply> {
    let max = shared.options.max_body_bytes;
    let too_large = || {
        json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({"error": "body_too_large", "max_body_bytes": max}),
        )
    };
    let mut body = req.into_body();
    if body.size_hint().lower() > max {
        return Err(too_large());
    }
    let mut digest = Context::new(&SHA256);
    let mut bytes = 0u64;
    loop {
        let frame = match tokio::time::timeout(shared.options.body_idle_timeout, body.frame()).await
        {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                let error = serde_json::json!({"error": "body_failed", "detail": e.to_string()});
                return Err(json(StatusCode::BAD_REQUEST, &error));
            }
            Err(_) => {
                let error = serde_json::json!({"error": "request_body_timeout"});
                return Err(json(StatusCode::REQUEST_TIMEOUT, &error));
            }
        };
        if let Ok(data) = frame.into_data() {
            bytes = bytes.saturating_add(data.len() as u64);
            if bytes > max {
                return Err(too_large());
            }
            digest.update(&data);
        }
    }
    let sha256 = digest
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Upload { sha256, bytes })
}

/// Records a fully read upload and builds its 201.
fn store(shared: &Shared, dc: &Datacenter, headers: &HeaderMap, upload: Upload) -> Reply {
    // At most 256 bytes of each: a client chooses their length (an
    // `Idempotency-Key` of 16 KiB, say), and the sink keeps up to
    // `max_records` of them and logs each.
    let header = |name: &str| {
        headers.get(name).map(|v| {
            let bytes = v.as_bytes();
            String::from_utf8_lossy(&bytes[..bytes.len().min(RECORDED_FIELD)]).into_owned()
        })
    };
    let record = Record {
        datacenter: dc.name.clone(),
        upload_id: header("x-upload-id").or_else(|| header("idempotency-key")),
        request_id: header("x-request-id"),
        sha256: upload.sha256,
        bytes: upload.bytes,
        origin_country: header("residency-origin-country"),
        jurisdiction: header("residency-jurisdiction"),
        received_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    };
    let body = serde_json::json!({
        "stored_in": record.datacenter,
        "sha256": record.sha256,
        "bytes": record.bytes,
        "request_id": record.request_id,
        "upload_id": record.upload_id,
    });
    tracing::info!(
        datacenter = %record.datacenter,
        upload_id = record.upload_id.as_deref().unwrap_or("-"),
        request_id = record.request_id.as_deref().unwrap_or("-"),
        country = record.origin_country.as_deref().unwrap_or("-"),
        jurisdiction = record.jurisdiction.as_deref().unwrap_or("-"),
        bytes = record.bytes,
        sha256 = %record.sha256,
        "upload stored"
    );
    Counters::add(&dc.counters.uploads, 1);
    Counters::add(&dc.counters.bytes, record.bytes);
    shared.store(record);
    json(StatusCode::CREATED, &body)
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    reply
}
