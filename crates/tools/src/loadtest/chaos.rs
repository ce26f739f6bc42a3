//! The chaos schedule and the admin APIs it drives.
//!
//! Data-centre modes go to the sink admin API
//! (`POST {sink}/datacenters/{name}/mode`, JSON `{"mode": …}`), trying each
//! sink until one answers something other than 404; drain and undrain go to
//! the proxy admin API (`POST {proxy}/datacenters/{name}/drain|undrain`).
//! Every call is bounded; a failed call is reported, not fatal.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::time::Instant;

use super::spec::{ChaosAction, ChaosEvent, DatacenterMode};

/// Deadline of one admin call (records may take longer: see `RECORDS_TIMEOUT`).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of reading one sink's records.
pub const RECORDS_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of records read from one sink.
const MAX_RECORDS_BYTES: usize = 1 << 30;

/// A plain-HTTP client for the admin APIs.
#[derive(Clone)]
pub struct Admin {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin::new()
    }
}

impl Admin {
    pub fn new() -> Admin {
        Admin {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// One request; returns the status and body, or a message.
    pub async fn call(
        &self,
        method: Method,
        url: Uri,
        json: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut req = Request::builder().method(method).uri(url);
        let body = match json {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RECORDS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading response: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

/// `base` joined with `path` (`base` may carry a path prefix).
pub fn join(base: &Uri, path: &str) -> Result<Uri, String> {
    let text = format!("{}{path}", base.to_string().trim_end_matches('/'));
    text.parse().map_err(|_| format!("bad URL {text}"))
}

/// What happened to one chaos event.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The event as written, e.g. `20s:zurich=refuse`.
    pub event: String,
    pub at_s: f64,
    /// When the admin API confirmed it, from the start of the run.
    pub applied_at_s: Option<f64>,
    pub ok: bool,
    /// The admin URL that took it.
    pub via: Option<String>,
    /// Why it failed, or the status and body of a refusal.
    pub detail: Option<String>,
}

/// Applies every event at its time after `t0`, in order.
pub async fn run_schedule(
    events: Vec<ChaosEvent>,
    admin: Admin,
    sinks: Vec<Uri>,
    proxy: Option<Uri>,
    t0: Instant,
    mut interrupt: Interrupt,
) -> Vec<Applied> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        // Interrupted: no event more (what was applied is undone).
        if unless_interrupted(&mut interrupt, tokio::time::sleep_until(t0 + event.at))
            .await
            .is_none()
        {
            break;
        }
        let result = apply(&admin, &event.action, &sinks, proxy.as_ref()).await;
        let at = t0.elapsed().as_secs_f64();
        let applied = match result {
            Ok(via) => Applied {
                event: event.to_string(),
                at_s: event.at.as_secs_f64(),
                applied_at_s: Some(at),
                ok: true,
                via: Some(via),
                detail: None,
            },
            Err(detail) => {
                tracing::warn!(event = %event, %detail, "chaos event failed");
                Applied {
                    event: event.to_string(),
                    at_s: event.at.as_secs_f64(),
                    applied_at_s: None,
                    ok: false,
                    via: None,
                    detail: Some(detail),
                }
            }
        };
        out.push(applied);
    }
    out
}

/// Applies one action now; returns the URL that took it.
pub async fn apply(
    admin: &Admin,
    action: &ChaosAction,
    sinks: &[Uri],
    proxy: Option<&Uri>,
) -> Result<String, String> {
    match action {
        ChaosAction::Mode { datacenter, mode } => {
            let path = format!("/datacenters/{datacenter}/mode");
            let body = serde_json::json!({ "mode": mode.as_str() });
            let mut last = format!("no sink admin knows data centre `{datacenter}`");
            for sink in sinks {
                let url = join(sink, &path)?;
                let shown = url.to_string();
                match admin
                    .call(Method::POST, url, Some(body.clone()), ADMIN_TIMEOUT)
                    .await
                {
                    Ok((status, _)) if status == StatusCode::NOT_FOUND => {
                        last = format!("{shown}: 404");
                    }
                    Ok((status, _)) if status.is_success() => return Ok(shown),
                    Ok((status, body)) => return Err(refused(&shown, status, &body)),
                    Err(e) => last = format!("{shown}: {e}"),
                }
            }
            Err(last)
        }
        ChaosAction::Drain { datacenter } | ChaosAction::Undrain { datacenter } => {
            let verb = match action {
                ChaosAction::Drain { .. } => "drain",
                _ => "undrain",
            };
            let proxy = proxy.ok_or("drain/undrain needs a proxy admin URL")?;
            let url = join(proxy, &format!("/datacenters/{datacenter}/{verb}"))?;
            let shown = url.to_string();
            match admin.call(Method::POST, url, None, ADMIN_TIMEOUT).await {
                Ok((status, _)) if status.is_success() => Ok(shown),
                Ok((status, body)) => Err(refused(&shown, status, &body)),
                Err(e) => Err(format!("{shown}: {e}")),
            }
        }
    }
}

fn refused(url: &str, status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    format!("{url}: {status} {}", text.trim())
}

/// A run's interruption (Ctrl-C): `true` once it is asked to stop; a
/// sender dropped, or none, never interrupts.
pub type Interrupt = Option<tokio::sync::watch::Receiver<bool>>;

/// Resolves once `interrupt` says stop; never without one.
async fn interrupted(interrupt: &mut Interrupt) {
    match interrupt {
        Some(rx) => {
            if rx.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// `fut`'s output, or `None` once `interrupt` says stop; the interrupt is
/// looked at first, so one already given wins over a future already ready
/// (an upload or chaos event due).
pub async fn unless_interrupted<F: std::future::Future>(
    interrupt: &mut Interrupt,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = interrupted(interrupt) => None,
        out = fut => Some(out),
    }
}

/// The actions that undo what `events` left behind, as far as `applied`
/// (their results, in the same order; shorter when the run was
/// interrupted) tells: `normal` for every data centre whose last mode was
/// not normal, `undrain` for every one left drained — and for every one an
/// event failed on, whose state is then unknown (a repair that failed
/// leaves it broken). Events never attempted changed nothing.
pub fn restoring(events: &[ChaosEvent], applied: &[Applied]) -> Vec<ChaosAction> {
    // `None`: unknown (an event on it failed).
    let mut modes: Vec<(&str, Option<DatacenterMode>)> = Vec::new();
    let mut drained: Vec<(&str, Option<bool>)> = Vec::new();
    for (e, result) in events.iter().zip(applied) {
        let ok = result.ok;
        match &e.action {
            ChaosAction::Mode { datacenter, mode } => {
                set(&mut modes, datacenter, ok.then_some(*mode));
            }
            ChaosAction::Drain { datacenter } => set(&mut drained, datacenter, ok.then_some(true)),
            ChaosAction::Undrain { datacenter } => {
                set(&mut drained, datacenter, ok.then_some(false));
            }
        }
    }
    let modes = modes
        .into_iter()
        .filter(|(_, m)| *m != Some(DatacenterMode::Normal))
        .map(|(dc, _)| ChaosAction::Mode {
            datacenter: dc.to_string(),
            mode: DatacenterMode::Normal,
        });
    let undrains = drained
        .into_iter()
        .filter(|(_, d)| *d != Some(false))
        .map(|(dc, _)| ChaosAction::Undrain {
            datacenter: dc.to_string(),
        });
    modes.chain(undrains).collect()
}

fn set<'a, T>(list: &mut Vec<(&'a str, T)>, key: &'a str, value: T) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => list.push((key, value)),
    }
}
