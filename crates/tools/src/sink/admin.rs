//! The sink's admin port (plain HTTP/1.1): `GET /stats`, `GET /records`
//! (`?datacenter=NAME`), `POST /datacenters/{name}/mode`, `POST /reset`,
//! `GET /healthz`. Errors are JSON `{"error": "..."}` naming the problem.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::model::parse_mode_body;
use super::upload::{json, text, Reply};
use super::{stopped, Shared, SinkError};

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;
/// How long an admin request body may take to arrive.
const ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin port until shutdown.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "sink admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let (shared, mut stop, done) = (shared.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let service = {
                let shared = shared.clone();
                service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(&shared, req).await) }
                })
            };
            let mut conn = pin!(http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(shared.options.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service));
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
            drop(done);
        });
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({"error": message.into()}))
}

/// 405 with the `Allow` header RFC 9110 §15.5.6 requires.
fn not_allowed(want: &Method) -> Reply {
    let mut reply = error(StatusCode::METHOD_NOT_ALLOWED, format!("use {want}"));
    if let Ok(v) = http::HeaderValue::from_str(want.as_str()) {
        reply.headers_mut().insert(http::header::ALLOW, v);
    }
    reply
}

/// Answers one admin request.
pub(crate) async fn route(shared: &Shared, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Some(rest) = path.strip_prefix("/datacenters/") {
        let Some(name) = rest.strip_suffix("/mode").filter(|n| !n.contains('/')) else {
            return error(StatusCode::NOT_FOUND, "want /datacenters/{name}/mode");
        };
        if method != Method::POST {
            return not_allowed(&Method::POST);
        }
        return set_mode(shared, name, req).await;
    }
    let want = if path == "/reset" {
        Method::POST
    } else {
        Method::GET
    };
    if !matches!(path.as_str(), "/healthz" | "/stats" | "/records" | "/reset") {
        return error(
            StatusCode::NOT_FOUND,
            "not found: try GET /stats, GET /records[?datacenter=NAME], POST /datacenters/{name}/mode, POST /reset, GET /healthz",
        );
    }
    if method != want {
        return not_allowed(&want);
    }
    match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/stats" => json(StatusCode::OK, &shared.stats()),
        "/reset" => {
            shared.reset();
            tracing::info!("sink reset: records and counters cleared");
            json(StatusCode::OK, &shared.stats())
        }
        _ => records(shared, req.uri().query().unwrap_or("")),
    }
}

/// `GET /records[?datacenter=NAME]`.
fn records(shared: &Shared, query: &str) -> Reply {
    let mut datacenter = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("datacenter", name)) => datacenter = Some(name),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter `{pair}`: want datacenter=NAME"),
                )
            }
        }
    }
    match datacenter {
        None => json(StatusCode::OK, &shared.records(None)),
        Some(name) if shared.datacenter(name).is_none() => error(
            StatusCode::NOT_FOUND,
            format!("no data centre named `{name}`"),
        ),
        Some(name) => json(StatusCode::OK, &shared.records(Some(name))),
    }
}

/// `POST /datacenters/{name}/mode`: answers the data centre's new state.
async fn set_mode(shared: &Shared, name: &str, req: Request<Incoming>) -> Reply {
    let Some(dc) = shared.datacenter(name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no data centre named `{name}`"),
        );
    };
    let body = Limited::new(req.into_body(), MAX_ADMIN_BODY);
    let body = match tokio::time::timeout(ADMIN_BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("reading the body (at most {MAX_ADMIN_BODY} bytes): {e}"),
            )
        }
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "the body took too long"),
    };
    let mode = match parse_mode_body(&body) {
        Ok(mode) => mode,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    match dc.set_mode(mode) {
        Ok(()) => {
            let mut state = serde_json::json!({ "datacenter": name });
            if let (Some(out), serde_json::Value::Object(stats)) = (
                state.as_object_mut(),
                serde_json::to_value(dc.stats()).unwrap_or_default(),
            ) {
                out.extend(stats);
            }
            json(StatusCode::OK, &state)
        }
        Err(e @ SinkError::InvalidMode(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
