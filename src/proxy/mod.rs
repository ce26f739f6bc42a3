//! The request path: from a parsed client request to a response.
//!
//! [`handle`] gathers the inputs (TCP peer, PROXY source, headers), resolves
//! the client address ([`residency_core::origin`]), takes the residency decision
//! ([`residency_core::decision`]), and then either refuses with a [`Failure`] or hands
//! the upload to [`forward`]. It adds the response headers every answer
//! carries, updates metrics and writes the one access-log line per request.

pub mod discard;
pub mod error;
pub mod forward;
pub mod headers;
pub mod recording;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderValue, Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::client_limit::Counted;
use crate::metrics::NONE;
use crate::state::{Instance, Snapshot};
use crate::tenancy::Unrecognized;
use crate::upstream::body::Hold;
use crate::upstream::gather::Gathered;
use crate::upstream::pool::Body as UpstreamBody;
use discard::RefusalBody;
pub use error::Failure;
use forward::Unforwarded;
use residency_core::country::Country;
use residency_core::decision::{decide, decide_pinned, Outcome, Refusal};
use residency_core::origin::{self, AddressSource, TrustedProxies};
use residency_core::policy::{DatacenterId, JurisdictionId};
use residency_core::tenant::{CertNames, Recognized};
use residency_log::settings::OnWriteError;

/// The response body: the upstream's, streamed (its small chunks
/// gathered), or our own small one.
pub type ProxyBody = Either<Gathered<UpstreamBody>, discard::RefusalBody>;

/// What the accept loop knows about a client connection.
#[derive(Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    /// What the PROXY header said of the client, on listeners that require one.
    pub proxied: Option<origin::Proxied>,
    /// The listener's `trusted_proxies` as the connection was accepted:
    /// who may name the client is decided with the PROXY header, at
    /// accept, and a reload does not change it for this connection (a
    /// connection accepted without a PROXY header on a listener later
    /// reloaded to require one must not have its own `X-Forwarded-For`
    /// trusted).
    pub trusted: TrustedProxies,
    /// Index into `config.listeners`.
    pub listener: usize,
    /// The TLS server name the client sent (lowercase), for tenants by SNI.
    pub sni: Option<Box<str>>,
    /// The names in the client's certificate (on `client_ca` listeners,
    /// when tenants are recognised by certificate).
    pub cert: Option<Box<CertNames>>,
    /// Counts work on the connection as in flight while the guard it
    /// makes lives: a request body still read or discarded after its
    /// answer went out.
    pub hold: Option<Hold>,
    /// The connection's place under `limits.max_connections`: shared with
    /// each request's future (through this `Conn`), so a request that
    /// outlives its connection (detached) still holds it, and draining at
    /// shutdown waits for it too.
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// Fields of the access-log line (and the decision record), filled in as
/// the request progresses.
pub struct Findings {
    source: Option<AddressSource>,
    client: Option<IpAddr>,
    country: Option<Country>,
    jurisdiction: Option<JurisdictionId>,
    datacenter: Option<DatacenterId>,
    /// The data centre an earlier attempt may have sent the body to (an
    /// idempotent replay), named by the record.
    also_sent_to: Option<DatacenterId>,
    reason: Option<&'static str>,
    /// The recognised tenant, and GeoIP's jurisdiction when it is not the
    /// one in `jurisdiction` (the pin).
    tenant: Option<Recognized>,
    origin_jurisdiction: Option<JurisdictionId>,
}

/// RFC 9110 §7.6.2: an `OPTIONS` (where `limits.methods` allows it) whose
/// `Max-Forwards` is 0 is not forwarded: the proxy answers it as the final
/// recipient, with the methods it forwards. No upload moves, so nothing is
/// decided or recorded.
fn options_here(
    state: &Snapshot,
    id: &HeaderValue,
    body: Incoming,
    hold: Option<&Hold>,
) -> Response<ProxyBody> {
    let refusal = RefusalBody::new(
        http_body_util::Full::new(bytes::Bytes::new()),
        Some(body),
        discard::bounds(&state.config),
        hold,
    );
    let mut resp = Response::new(Either::Right(refusal));
    let h = resp.headers_mut();
    h.insert(header::ALLOW, state.config.methods.allow_header().clone());
    h.insert(headers::X_REQUEST_ID, id.clone());
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// Serves one request. Never fails: every problem becomes a response.
/// (An `async` block, not an `async fn`, which would keep its arguments
/// twice: see `Pool::send_or_return`.)
#[allow(clippy::manual_async_fn)] // its arguments once, not twice
pub fn handle(
    instance: Arc<Instance>,
    state: Arc<Snapshot>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
    async move {
        let started = Instant::now();
        // The id's time, and the record's: one clock read.
        let received = SystemTime::now();
        let id = instance.ids.next(received);
        let method = req.method().clone();
        let version = req.version();
        // For the access line: copied only when that line is written.
        let path = tracing::enabled!(target: "residency_proxy::access", tracing::Level::INFO)
            .then(|| logged_path(req.uri().path()));
        let mut findings = Findings {
            source: None,
            client: None,
            country: None,
            jurisdiction: None,
            datacenter: None,
            also_sent_to: None,
            reason: None,
            tenant: None,
            origin_jurisdiction: None,
        };
        if method == http::Method::OPTIONS && state.config.methods.allows(&method) && here(&req) {
            let resp = options_here(&state, &id, req.into_body(), conn.hold.as_ref());
            // Answered by the proxy itself: counted with no jurisdiction,
            // and its access line the same as any request's (a pipeline
            // selecting `request` lines missed it: observability audit,
            // stop 67).
            let elapsed = started.elapsed();
            state.request_metrics.answered(
                &instance.metrics,
                &state.config.policy,
                None,
                None,
                resp.status(),
                elapsed.as_secs_f64(),
                0,
            );
            access_line(
                &id,
                &method,
                path.as_deref(),
                &findings,
                [None, None],
                resp.status(),
                0,
                elapsed,
            );
            return Ok(resp);
        }
        // Decided, then forwarded: written here rather than as a function
        // of its own, whose future (holding the request) was one more
        // level to copy when it was created (issue 23).
        let routed: Routed = 'routed: {
            // The client's count is held until the response head is here,
            // and after an early answer until the body has been sent.
            let (target, counted) =
                match admit(&instance, &state, &conn, &req, &id, started, &mut findings) {
                    Ok(admitted) => admitted,
                    Err(failure) => {
                        let awaiting_continue = req.version() == Version::HTTP_11
                            && req.headers().contains_key(http::header::EXPECT);
                        break 'routed Err(Unforwarded {
                            failure,
                            bytes: 0,
                            unread: Some(req.into_body()),
                            awaiting_continue,
                        });
                    }
                };
            let cut = recording::Cut {
                instance: &instance,
                state: &state,
                findings: &mut findings,
                request_id: &id,
                received,
            };
            let mut forwarded = forward::forward(
                &instance,
                &state,
                target,
                req,
                &mut cut.findings.datacenter,
                &mut cut.findings.also_sent_to,
            )
            .await;
            // Not dropped mid-forward: nothing to record here.
            std::mem::forget(cut);
            // The client's count stays while the data centre's connection
            // is the request's: until the answer has been taken from it to
            // the end and the body is done (answered early, the rest of
            // the body is still sent). (The result is passed on as it is:
            // the answer is not moved once more.)
            if let Ok((resp, slot)) = &mut forwarded {
                slot.finish_if_empty();
                let answer_pending = counted.is_some() && resp.body_mut().tell_when_taken(slot);
                slot.count_until_done(counted, answer_pending);
            }
            forwarded
        };
        let (mut resp, bytes, receipt, closing) = respond(
            &instance,
            &state,
            &mut findings,
            &id,
            received,
            routed,
            conn.hold.as_ref(),
        )
        .await;

        let policy = &state.config.policy;
        let jurisdiction = findings
            .jurisdiction
            .map(|j| policy.jurisdiction(j).name.as_str());
        let datacenter = findings
            .datacenter
            .map(|d| policy.datacenter(d).name.as_str());
        let values = &state.header_values;
        headers::to_client(
            resp.headers_mut(),
            &id,
            findings.jurisdiction.and_then(|j| values.jurisdiction(j)),
            findings.datacenter.and_then(|d| values.datacenter(d)),
        );
        if let Some(receipt) = receipt {
            resp.headers_mut()
                .insert(residency_log::receipt::HEADER, receipt);
        }
        // A refusal of `HEAD` goes without its JSON (a data centre's answer
        // to one has none already).
        if method == http::Method::HEAD {
            resp = resp.map(|body| match body {
                Either::Right(refusal) => Either::Right(refusal.without_content()),
                answer => answer,
            });
        }
        // HTTP/2 has no `Connection` (RFC 9113 §8.2.2): a stream ends on
        // its own.
        if closing && version < http::Version::HTTP_2 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp = resp.map(|body| match body {
                Either::Right(refusal) => Either::Right(refusal.closing()),
                answer => answer,
            });
        }

        let status = resp.status();
        let elapsed = started.elapsed();
        state.request_metrics.answered(
            &instance.metrics,
            policy,
            findings.jurisdiction,
            findings.datacenter,
            status,
            elapsed.as_secs_f64(),
            bytes,
        );
        access_line(
            &id,
            &method,
            path.as_deref(),
            &findings,
            [jurisdiction, datacenter],
            status,
            bytes,
            elapsed,
        );
        Ok(resp)
    }
}

/// A request's access line (`residency_proxy::access`, "request"), the
/// same fields for every request; `[jurisdiction, datacenter]` by name.
#[inline]
#[allow(clippy::too_many_arguments)]
fn access_line(
    id: &HeaderValue,
    method: &http::Method,
    path: Option<&str>,
    findings: &Findings,
    [jurisdiction, datacenter]: [Option<&str>; 2],
    status: http::StatusCode,
    bytes: u64,
    elapsed: std::time::Duration,
) {
    tracing::info!(
        target: "residency_proxy::access",
        request_id = id.to_str().unwrap_or_default(),
        method = %method,
        path = %path.unwrap_or_default(),
        client_source = findings.source.map(AddressSource::as_str).unwrap_or(NONE),
        country = findings.country.as_ref().map_or(NONE, Country::as_str),
        jurisdiction = jurisdiction.unwrap_or(NONE),
        datacenter = datacenter.unwrap_or(NONE),
        status = status.as_u16(),
        reason = findings.reason.unwrap_or(""),
        bytes,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
}

/// The client's response for what the decision and forwarding produced, after
/// the decision record is written (with the transparency log on): the
/// upstream's answer, or the refusal. Returns it with the body bytes read,
/// the receipt for a stored upload, and whether the refusal ends an
/// HTTP/1.1 connection (it is to say `Connection: close`, RFC 9112 §9.6).
/// A refusal's unread body is discarded holding a guard from `hold`.
async fn respond(
    instance: &Instance,
    state: &Snapshot,
    findings: &mut Findings,
    id: &HeaderValue,
    received: SystemTime,
    routed: Routed,
    hold: Option<&Hold>,
) -> (Response<ProxyBody>, u64, Option<HeaderValue>, bool) {
    let log = instance.log.as_ref();
    // The request body a refusal before forwarding left unread.
    let mut body_unread = None;
    let mut awaiting_continue = false;
    let mut closing = false;
    // (answer, body bytes, receipt, whether a record was written)
    let (answered, bytes, receipt, recorded) = match routed {
        Ok((resp, slot)) => {
            let receipt = match log {
                Some(log) => {
                    let context = recording::RecordContext::new(state, findings, id, received);
                    // Boxed: it would grow every request's future.
                    Box::pin(recording::answered(instance, log, &context, &resp, &slot)).await
                }
                None => Ok(None),
            };
            // Counted now, and what an upstream reads after it answered
            // when the body is done.
            let bytes = slot.bytes_counting_rest(|| {
                let (metrics, policy) = (&instance.metrics, &state.config.policy);
                let counter =
                    state
                        .request_metrics
                        .body_bytes(metrics, policy, findings.jurisdiction);
                counter.clone()
            });
            // A data centre that answered before the end of a body
            // declared larger than the proxy discards: the connection may
            // close when the rest is given up, so the answer says so.
            closing = slot.rest_over_discard();
            match receipt {
                Ok(receipt) => (Ok(resp), bytes, receipt, true),
                Err(failure) => (Err(failure), bytes, None, true),
            }
        }
        Err(Unforwarded {
            failure,
            bytes,
            unread,
            awaiting_continue: awaiting,
        }) => {
            body_unread = unread;
            awaiting_continue = awaiting;
            (Err(failure), bytes, None, false)
        }
    };
    let resp = match answered {
        Ok(resp) => resp.map(|body| Either::Left(Gathered::new(body))),
        Err(failure) => {
            findings.reason = Some(failure.reason());
            instance
                .metrics
                .rejections
                .with_label_values(&[failure.reason()])
                .inc();
            if let Some(log) = log.filter(|_| !recorded) {
                let context = recording::RecordContext::new(state, findings, id, received);
                Box::pin(recording::refused(log, &context)).await;
            }
            let mut resp = failure.response(id);
            if failure == Failure::MethodNotAllowed {
                let allow = state.config.methods.allow_header().clone();
                resp.headers_mut().insert(header::ALLOW, allow);
            }
            let bounds = discard::bounds(&state.config);
            // The connection is closed after this answer when its body
            // stalled (a 408: RFC 9110 §15.5.9 asks for `close`), or when
            // the unread rest of the body is declared larger than the
            // proxy discards (a body of unknown length may still be), or
            // when its client waits for a `100 Continue` that will not
            // come: it may then send its body or not (curl does not), and
            // a next request on the connection would be read as that
            // body (RFC 9110 §10.1.1: the server says whether it closes).
            if awaiting_continue {
                // Not discarded: nothing of it may ever come.
                closing = body_unread.take().is_some();
            }
            // And after a 400 (as nginx does): a request whose framing is
            // ambiguous (RFC 9112 §6.3: then close) or broke part-way
            // leaves no sure place where a next request would start.
            closing |= failure == Failure::BodyTimeout
                || failure == Failure::BadRequest
                || body_unread
                    .as_ref()
                    .is_some_and(|b| hyper::body::Body::size_hint(b).lower() > bounds.bytes);
            resp.map(|answer| Either::Right(RefusalBody::new(answer, body_unread, bounds, hold)))
        }
    };
    (resp, bytes, receipt, closing)
}

/// The data centre's answer, or why there is none.
type Routed = Result<(Response<UpstreamBody>, Arc<crate::upstream::body::BodySlot>), Unforwarded>;

/// Whether an allowed `OPTIONS` is the proxy's to answer: `Max-Forwards:
/// 0` (RFC 9110 §7.6.2), or asterisk-form (about the server, not a
/// resource: RFC 9112 §3.2.4) — unless its framing, target or `Host` is
/// refused (400) as any request's would be.
fn here(req: &Request<Incoming>) -> bool {
    let asterisk = req.uri().path() == "*";
    (asterisk || headers::max_forwards(req.headers()) == Some(0))
        && !headers::malformed(req, asterisk)
}

/// Checks the request and takes the residency decision: where it goes, or
/// why not; counts a request to forward against its client's
/// `limits.max_requests_per_client` while the returned guard lives. Reads
/// no body.
fn admit<'a>(
    instance: &'a Instance,
    state: &Snapshot,
    conn: &Conn,
    req: &Request<Incoming>,
    id: &'a HeaderValue,
    started: Instant,
    findings: &mut Findings,
) -> Result<(forward::Target<'a>, Option<Counted>), Failure> {
    let config = &state.config;
    if !config.methods.allows(req.method()) {
        return Err(if config.methods.recognizes(req.method()) {
            Failure::MethodNotAllowed
        } else {
            Failure::MethodNotImplemented
        });
    }
    // Read in one pass: each lookup by name would hash it.
    let fields = headers::Fields::of(req.headers());
    if headers::malformed_with(req, &fields, false) {
        return Err(Failure::BadRequest);
    }
    if headers::too_many_fields(req.version(), req.headers()) {
        return Err(Failure::HeadTooLarge);
    }
    if fields.unsupported_coding() {
        return Err(Failure::UnsupportedTransferCoding);
    }
    let content_length = fields.content_length();
    let declared = content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let padded = content_length.is_some_and(|v| v.len() > 1 && v.as_bytes()[0] == b'0');
    if declared.is_some_and(|n| n > config.limits.max_body_bytes) {
        return Err(Failure::BodyTooLarge);
    }

    let xff = fields
        .forwarded_for
        .then(|| req.headers().get_all(headers::X_FORWARDED_FOR));
    let origin = origin::resolve(
        conn.peer.ip(),
        conn.proxied,
        xff.iter().flat_map(|values| values.iter()),
        &conn.trusted,
    )
    .map_err(|_| Failure::BadForwardedHeader)?;
    findings.source = Some(origin.source);
    findings.client = Some(origin.addr);

    let policy = &config.policy;
    let health = &state.health;
    let tenancy = &config.tenancy;
    // Read only where a server name may recognise a tenant.
    let host = tenancy
        .tenants
        .by_server_name()
        .then(|| headers::request_host(req))
        .flatten();
    let recognized = tenancy
        .recognize(
            conn.sni.as_deref(),
            host,
            conn.cert.as_deref(),
            req.headers(),
        )
        .map_err(|why| {
            // The access line names the refusal. Why a token was refused
            // is said at most once a minute (any client can cause it; an
            // INFO line per refusal was one more line per request:
            // observability audit, stop 67), each one at debug.
            static SAID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let request_id = id.to_str().unwrap_or_default();
            match &why {
                Unrecognized::Token(e) if crate::throttle::minute_passed(&SAID) => tracing::info!(
                    request_id,
                    error = %e,
                    "a tenant token was refused (said at most once a minute; each at debug level)"
                ),
                _ => tracing::debug!(request_id, reason = ?why, "tenant not recognised"),
            }
            match why {
                Unrecognized::Token(_) => Failure::InvalidTenantToken,
                Unrecognized::Conflict => Failure::TenantConflict,
                Unrecognized::Misdirected => Failure::Misdirected,
                Unrecognized::NotTheTenantsHost => {
                    // Said at most once a minute: a client can cause it.
                    static SAID: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    if crate::throttle::minute_passed(&SAID) {
                        tracing::warn!(
                            sni = conn.sni.as_deref().unwrap_or_default(),
                            host = host.unwrap_or_default(),
                            "421: a request whose host is not the name its connection was made for, which recognised a tenant; if a front connects with the tenant's name and passes this public one, add it to the tenant's sni (said at most once a minute)"
                        );
                    }
                    Failure::Misdirected
                }
            }
        });
    let recognized = recognized?;
    state
        .request_metrics
        .tenant(&instance.metrics, tenancy, recognized);
    findings.tenant = recognized;
    let turn = state.next_turn();
    let retry_after = |j| health.retry_after(state.config.policy.permitted_upstreams(j));
    let decision = match recognized {
        Some(r) => decide_pinned(
            &state.geo,
            policy,
            origin.addr,
            tenancy.tenants.get(r.tenant),
            turn,
            |u| health.is_up(u),
            retry_after,
        ),
        None => decide(
            &state.geo,
            policy,
            origin.addr,
            turn,
            |u| health.is_up(u),
            retry_after,
        ),
    };
    findings.origin_jurisdiction = decision.origin_jurisdiction;
    if let (Some(_), Some((pin, _))) = (recognized, decision.jurisdiction) {
        // (A refusal because GeoIP could not tell is no mismatch either
        // way: review, stop 64.)
        if decision.origin_jurisdiction != Some(pin)
            && decision.outcome != Outcome::Refuse(Refusal::GeoipError)
        {
            let refused = decision.outcome == Outcome::Refuse(Refusal::TenantOriginMismatch);
            state
                .request_metrics
                .tenant_mismatch(&instance.metrics, refused);
        }
    }
    state
        .request_metrics
        .geoip_lookup(&instance.metrics, decision.lookup);
    findings.country = decision.country;
    findings.jurisdiction = decision.jurisdiction.map(|(j, _)| j);
    let upstream = match decision.outcome {
        Outcome::Forward(u) => u,
        Outcome::Refuse(r) => return Err(r.into()),
    };
    let Some((jurisdiction, _)) = decision.jurisdiction else {
        return Err(Failure::OriginUnknown);
    };
    if let Some(log) = &instance.log {
        // Nothing is forwarded that could not be acknowledged with a record.
        if log.failing() && log.settings().on_write_error == OnWriteError::Refuse {
            return Err(Failure::LogUnavailable);
        }
    }

    let held = instance
        .clients
        .enter(origin.addr, config.limits.max_requests_per_client)
        .ok_or(Failure::TooManyRequests)?;

    let hop = match conn.proxied {
        Some(origin::Proxied::Named(addr)) => addr,
        _ => conn.peer.ip(),
    }
    .to_canonical();
    let xff_trusted = conn.proxied.is_none() && conn.trusted.contains(conn.peer.ip());
    let target = forward::Target {
        jurisdiction,
        upstream,
        request_id: id,
        hop,
        xff_trusted,
        client: origin.addr,
        country: decision.country,
        declared,
        padded,
        idempotency_key: fields.idempotency_key,
        via: fields.via,
        foreign: fields.foreign,
        tenant: recognized.map(|r| r.tenant),
        expect: fields.expect,
        hold: conn.hold.clone(),
        started,
    };
    Ok((target, held))
}

/// The most of a request's path the access line carries. A path can be as
/// long as the request head allows (up to 1 MiB), and over HTTP/2 a client
/// names one already in its HPACK table with a byte: logged whole, a
/// 15-byte HEADERS frame made a 4 KiB line.
const LOGGED_PATH: usize = 1024;

/// `path` as the access line carries it: its first [`LOGGED_PATH`] bytes,
/// then `…`.
fn logged_path(path: &str) -> String {
    if path.len() <= LOGGED_PATH {
        return path.to_owned();
    }
    let mut end = LOGGED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

#[cfg(test)]
mod logged_path_tests {
    #[test]
    fn a_long_path_is_cut_for_the_access_line() {
        assert_eq!(super::logged_path("/v1/telemetry"), "/v1/telemetry");
        let long = format!("/{}", "a".repeat(5000));
        let cut = super::logged_path(&long);
        assert_eq!(cut.len(), 1024 + "…".len());
        assert!(cut.ends_with('…'));
    }
}
