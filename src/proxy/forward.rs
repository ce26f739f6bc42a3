//! Delivering an upload to one permitted upstream, streaming.
//!
//! The request is rebuilt for the upstream (HTTP/1.1, the upstream's base
//! URL joined with the client's path and query, rewritten headers) and its
//! body goes through [`ForwardBody`]. The upstream-response deadline starts
//! when the body has been sent completely; the body itself is guarded by its
//! idle deadline and size limit.
//!
//! Retries are narrow on purpose. A request is offered to another upstream
//! from the same permitted set, once, only when
//!
//! * provably nothing reached the first one: connecting (TCP or TLS) failed
//!   and the body slot is untouched — `connect_failed` / `tls_failed`; a
//!   pooled connection found closed before the request was written is
//!   retried on the next connection by the pool itself; or every one of
//!   `upstream.max_connections_per_upstream` connections stayed busy for
//!   `timeouts.upstream_connect` — `upstream_saturated` (503 when no other
//!   upstream takes it; the upstream is not ejected); or
//! * the request carries an `Idempotency-Key` and its body fits
//!   `upstream.replay_limit_bytes`, so a copy can be sent — after any
//!   failure, a timeout or a 5xx (`idempotent_replay`).
//!
//! Every other failure is answered 502/504 (a 5xx is passed through) after
//! exactly one delivery attempt.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Poll;

use tokio::sync::OwnedSemaphorePermit;

use crate::upstream::pool::Body as UpstreamBody;

use super::error::Failure;
use super::headers::{self, Forwarded};
use crate::config::Timeouts;
use crate::state::{Instance, Snapshot};
use crate::tenancy::TokenVerifier;
use crate::upstream::body::{BodySlot, ForwardBody};
use crate::upstream::pool::Error as PoolError;
use crate::upstream::progress::{Wanted, Watch, WriteProgress};
use crate::upstream::Health;
use residency_core::country::Country;
use residency_core::policy::{DatacenterId, JurisdictionId, UpstreamId};

/// An answer of unknown length is taken in up to this many bytes before it
/// is passed on, so that a small one gives its data centre's connection
/// back at once ([`crate::upstream::pool::Body::take_in`]).
const ANSWER_TAKEN_IN: usize = 16 * 1024;
/// At most this many delivery attempts per request.
const MAX_ATTEMPTS: u32 = 2;

/// Where an upload goes and what the upstream is told about it.
pub struct Target<'a> {
    pub jurisdiction: JurisdictionId,
    pub upstream: UpstreamId,
    pub request_id: &'a HeaderValue,
    pub hop: IpAddr,
    pub xff_trusted: bool,
    /// The client's address, as the decision resolved it.
    pub client: IpAddr,
    pub country: Option<Country>,
    /// The request's `Content-Length`, as `admit` read it.
    pub declared: Option<u64>,
    /// That `Content-Length` has leading zeros (it is sent canonical).
    pub padded: bool,
    /// The request has an `Idempotency-Key`, and may have a `Via`
    /// (`headers::Fields`, as `admit` read them).
    pub idempotency_key: bool,
    pub via: bool,
    /// The request may have a field that does not go upstream
    /// (`headers::Fields::foreign`).
    pub foreign: bool,
    /// The recognised tenant (`Residency-Tenant`).
    pub tenant: Option<residency_core::tenant::TenantId>,
    /// The request has an `Expect` field (`headers::Fields::expect`).
    pub expect: bool,
    /// The client connection's guard maker (`Conn::hold`), for the body.
    pub hold: Option<crate::upstream::body::Hold>,
    /// When the request's handling began: its body's rate is averaged
    /// from then.
    pub started: tokio::time::Instant,
}

/// How one attempt ended, when it did not produce a usable response.
enum Attempt {
    Answered(Response<UpstreamBody>),
    /// A response the client will get unless a replay is possible (5xx).
    ServerError(Response<UpstreamBody>),
    Failed {
        failure: Failure,
        unsent: Option<&'static str>,
        /// The request's headers, when the pool handed the unsent request back.
        headers: Option<HeaderMap>,
    },
    /// No connection could be made for the proxy's own want of resources
    /// (its socket: out of file descriptors): nothing was sent, and the
    /// upstream is not blamed (it was ejected for the proxy's shortage:
    /// exhaustion audit, stop 65).
    Unmade {
        headers: Option<HeaderMap>,
    },
    /// Handed back unsent after waiting for its connection
    /// (`Pool::send_or_return`), to be looked at again: not an attempt.
    Waited {
        headers: Option<HeaderMap>,
    },
}

/// What every delivery attempt of one upload shares.
struct Upload {
    method: Method,
    /// The client's request target's path and query, which go upstream
    /// (not the whole `Uri`: 88 bytes against 40, and the upload is moved
    /// whole, issue 23).
    path: Option<PathAndQuery>,
    /// Rewritten for the upstream. Moved into the first attempt; cloned for
    /// each attempt only when a replay may need them after a sent request
    /// failed. An unsent request comes back from the pool with them.
    headers: Option<HeaderMap>,
    /// The upstream whose `Host` they carry.
    host_of: UpstreamId,
    /// An HTTP/1.1 client's `Expect` field (`100-continue`). (Only such a client
    /// may wait for `100 Continue` before its body. RFC 9110 §10.1.1: an
    /// HTTP/1.0 client's expectation is ignored, hyper sends it none and
    /// it sends its body anyway; an HTTP/2 client gets none from hyper and
    /// sends its body after its own wait.)
    expect: bool,
    slot: Arc<BodySlot>,
    /// The whole body, read first for an idempotent replay.
    replay: Option<Bytes>,
    /// Its share of `upstream.replay_budget_bytes`, held while it lives.
    _budget: Option<OwnedSemaphorePermit>,
}

impl Upload {
    /// The request for one attempt on `upstream` (its base URL from the
    /// policy, its `Host` from the pool), with the signal that its body has
    /// been sent. `None` when no headers are left for a retry (every retry
    /// path keeps or gets them back, so this is a bug, refused).
    fn attempt(
        &mut self,
        upstream: UpstreamId,
        state: &Snapshot,
    ) -> Result<(Request<ForwardBody>, Arc<Watch>), Failure> {
        let base = &state.config.policy.upstream(upstream).uri;
        let uri = upstream_path(base, self.path.as_ref()).map_err(|_| Failure::BadRequest)?;
        let (body, watch) = match &self.replay {
            Some(bytes) => ForwardBody::replay(bytes.clone()),
            None => ForwardBody::stream(self.slot.clone()),
        };
        let other_host = self.host_of != upstream;
        let headers = if self.replay.is_some() {
            self.headers.clone()
        } else {
            // An unsent request's come back with this attempt's `Host`.
            self.host_of = upstream;
            self.headers.take()
        };
        let Some(mut headers) = headers else {
            tracing::error!("no request headers left for a retry");
            return Err(Failure::UpstreamError);
        };
        if other_host {
            headers.insert(header::HOST, state.pool.host(upstream).clone());
        }
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        // `Request::new`'s map is empty and, as `HeaderMap::new` documents,
        // holds no allocation: forgotten, not dropped (its drop glue ran
        // ~60 instructions a request for nothing, issue 23).
        debug_assert_eq!(request.headers().capacity(), 0);
        std::mem::forget(std::mem::replace(request.headers_mut(), headers));
        Ok((request, watch))
    }
}

/// Rewrites the client's request for the upstream and sets up its body: a
/// slot to stream from. With the share of the replay budget it returns
/// (idempotent and small enough), the body is to be read whole first
/// ([`Upload::buffer_for_replay`]).
fn prepare(
    instance: &Instance,
    state: &Snapshot,
    target: &Target<'_>,
    req: Request<Incoming>,
) -> (Upload, Option<OwnedSemaphorePermit>) {
    let config = &state.config;
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    // The data centre's `Host` replaces the client's in one operation
    // (to_upstream leaves `Host` alone; another attempt's upstream sets
    // its own). The client's, or the target's authority (RFC 9112 §3.2.2:
    // an absolute-form target's host over `Host`; in HTTP/2, `:authority`,
    // which `Host` must match anyway), goes as `X-Forwarded-Host`.
    let sent_host = headers.insert(header::HOST, state.pool.host(target.upstream).clone());
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or(sent_host);
    let idempotent = target.idempotency_key;
    let declared = target.declared;
    headers::to_upstream(
        &mut headers,
        &Forwarded {
            request_id: target.request_id,
            xff_trusted: target.xff_trusted,
            client: target.client,
            hop: target.hop,
            country: target.country.as_ref().map_or("unknown", Country::as_str),
            jurisdiction: state
                .header_values
                .jurisdiction(target.jurisdiction)
                .cloned(),
            tenant: target
                .tenant
                .and_then(|t| state.header_values.tenant(t))
                .cloned(),
            host,
            version: parts.version,
            via: target.via,
            foreign: target.foreign,
            expect: target.expect,
            token_header: state
                .config
                .tenancy
                .token
                .as_deref()
                .map(TokenVerifier::header),
        },
    );
    // RFC 9110 §7.6.2: a forwarded OPTIONS counts one hop down (one with 0
    // was answered by the proxy).
    if parts.method == Method::OPTIONS {
        if let Some(n) = headers::max_forwards(&headers) {
            let n = headers::forwarded_max_forwards(n);
            headers.insert(header::MAX_FORWARDS, HeaderValue::from(n));
        }
    }
    // Sent in canonical form: leading zeros are legal (RFC 9112 §6.2) but
    // another parser may read them differently.
    if let Some(n) = declared.filter(|_| target.padded) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    // hyper's client sends a GET or HEAD of unknown length without a body
    // (it assumes there is none): one the client did send (chunked, or
    // HTTP/2 DATA without `content-length`) goes chunked, as any other
    // method's body, rather than dropped.
    if matches!(parts.method, Method::GET | Method::HEAD)
        && declared.is_none()
        && !hyper::body::Body::is_end_stream(&body)
    {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let slot = BodySlot::new(
        body,
        config.limits.max_body_bytes,
        config.timeouts.request_body_idle,
        config.limits.min_request_body_rate,
        super::discard::bounds(config),
        instance.log.is_some(),
        parts.version == Version::HTTP_2,
        target.hold.clone(),
        target.started,
    );
    let replay_limit = config.upstream.replay_limit_bytes;
    let replayable = idempotent && declared.is_none_or(|n| n <= replay_limit as u64);
    // Room for the largest body it may hold; with the budget spent, the
    // upload streams like any other (it can then only be retried unsent).
    let budget = replayable
        .then(|| replay_budget(instance, replay_limit))
        .flatten();
    let upload = Upload {
        method: parts.method,
        path: parts.uri.into_parts().path_and_query,
        headers: Some(headers),
        host_of: target.upstream,
        expect: target.expect && parts.version == Version::HTTP_11,
        slot,
        _budget: None,
        replay: None,
    };
    (upload, budget)
}

impl Upload {
    /// Reads the whole body (at most `limit` bytes) for an idempotent
    /// replay, holding `budget` while the copy lives; a body found larger
    /// streams like any other (it can then only be retried unsent).
    async fn buffer_for_replay(
        &mut self,
        limit: usize,
        budget: OwnedSemaphorePermit,
    ) -> Result<(), Unforwarded> {
        let replay = self
            .slot
            .buffer_for_replay(limit)
            .await
            .map_err(|e| Unforwarded {
                failure: Failure::from(e),
                bytes: self.slot.bytes(),
                unread: None,
                awaiting_continue: false,
            })?;
        if replay.is_some() {
            self._budget = Some(budget);
        }
        self.replay = replay;
        Ok(())
    }
}

/// `bytes` of the replay budget, or `None` (counted) when it is spent.
fn replay_budget(instance: &Instance, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(bytes).unwrap_or(u32::MAX);
    let permit = instance
        .replay_budget
        .clone()
        .try_acquire_many_owned(n)
        .ok();
    if permit.is_none() {
        instance.metrics.replay_budget_exhausted.inc();
    }
    permit
}

/// Why an upload got no upstream answer, refused before it was forwarded
/// (`proxy::admit`) or while (here): the answer, the body bytes read, and
/// the client's body when nothing of it was read (the refusal discards it
/// once its head is out).
pub struct Unforwarded {
    pub failure: Failure,
    pub bytes: u64,
    pub unread: Option<Incoming>,
    /// The request said `Expect` (`100-continue`) and none of its body was
    /// read: no `100 Continue` went out, so its client need not send the
    /// body, and may not.
    pub awaiting_continue: bool,
}

impl Upload {
    fn refuse(&self, failure: Failure) -> Unforwarded {
        let (bytes, unread) = (self.slot.bytes(), self.slot.take_untouched());
        Unforwarded {
            failure,
            awaiting_continue: self.expect && bytes == 0 && unread.is_some(),
            bytes,
            unread,
        }
    }
}

/// Forwards `req`; on success returns the upstream's response (body still
/// streaming) and the client's body slot (bytes read, SHA-256 when the
/// transparency log wants it).
/// `datacenter` is set to the data centre that answered, for the response
/// headers and the log; `earlier` to the one an earlier attempt may have
/// sent the body to (an idempotent replay after it failed), for the log.
/// (An `async` block, not an `async fn`: see `Pool::send_or_return`.)
#[allow(clippy::manual_async_fn)] // its arguments once, not twice
pub fn forward<'a>(
    instance: &'a Instance,
    state: &'a Snapshot,
    target: Target<'a>,
    req: Request<Incoming>,
    datacenter: &'a mut Option<DatacenterId>,
    earlier: &'a mut Option<DatacenterId>,
) -> impl Future<Output = Result<(Response<UpstreamBody>, Arc<BodySlot>), Unforwarded>> + 'a {
    async move {
        let policy = &state.config.policy;
        let health = &state.health;
        let j = target.jurisdiction;
        let (mut upload, budget) = prepare(instance, state, &target, req);
        // Sent in the decision's poll, an upload is in flight on the state
        // it started with; one that waits (for its body, for a connection,
        // or to be retried) may see a reload first.
        let waited = budget.is_some();
        if let Some(budget) = budget {
            // Boxed, as every rarely taken await here: the request's future is
            // moved whole when hyper boxes it, so it is kept small.
            let limit = state.config.upstream.replay_limit_bytes;
            Box::pin(upload.buffer_for_replay(limit, budget)).await?;
        }
        let mut upstream = target.upstream;
        let mut attempts = 0;
        // Handed back by the pool after waiting for a connection: looked
        // at again before it is sent again.
        let mut looked_again = false;
        // When its waiting for a connection to this upstream ends, once it
        // has waited (kept across the pool's hand-backs).
        let mut waited_until = None;
        loop {
            attempts += 1;
            // Defence in depth: the pick already guarantees this.
            if !policy.is_permitted(j, upstream) {
                tracing::error!(
                    upstream = upstream.0,
                    "refusing to forward outside the permitted set"
                );
                return Err(upload.refuse(Failure::UpstreamError));
            }
            let dc_id = policy.upstream(upstream).datacenter;
            let dc = &policy.datacenter(dc_id).name;
            // Decided before a reload that no longer lets this data centre
            // store the jurisdiction's uploads: not sent there (reload
            // audit, stop 68: a first attempt after seconds or hours of
            // buffering for replay, or a retry, went to a data centre the
            // policy in force had removed). One load when nothing changed.
            if (waited || attempts > 1 || looked_again)
                && instance.installed() != state.installed
                && !still_permitted(instance, state, &target, upstream)
            {
                tracing::warn!(
                    request_id = target.request_id.to_str().unwrap_or_default(),
                    datacenter = dc.as_str(),
                    "a reload made where this upload was decided to go (its data centre, or the upstream's address) one the configuration in force does not permit for it before it was sent there: refused, for the client to retry under the new policy"
                );
                return Err(upload.refuse(Failure::PolicyChanged));
            }
            *datacenter = Some(dc_id);
            let (request, watch) = match upload.attempt(upstream, state) {
                Ok(attempt) => attempt,
                Err(failure) => return Err(upload.refuse(failure)),
            };

            // Health's clock (Tokio's: paused in its tests), read once.
            let started = tokio::time::Instant::now();
            let sent_ms = health.ms_at(started);
            // One delivery attempt. While the body is being sent, the
            // connection must take bytes: `upstream_send_idle` without
            // progress on a blocked write aborts it (504). Once the body is
            // sent, the upstream-response deadline runs. (Here, not in a
            // function of its own: its future, holding the request, was one
            // more level to copy when it was created, issue 23.)
            let id = target.request_id.to_str().unwrap_or_default();
            let hung = Hung {
                state,
                metrics: &instance.metrics,
                upstream,
                request_id: id,
                dc,
            };
            // The exchange first, then its deadlines; both dropped once one
            // ends. Polled by hand: `select!` would move both futures into a
            // tuple, a copy of ~1 KiB per request (issue 23).
            let result = {
                // Any upload, streamed or read whole, that waits for a
                // connection (up to `upstream_connect` in all: room under
                // the cap, or a new one made) is handed back each time it
                // has, to be looked at again (above) before it is sent; one
                // at hand goes at once (reload audit, stop 70: a streamed
                // upload went where the reload took its data centre from;
                // verification: so did one whose connection was taken by
                // another request before its resend, which waited again).
                let mut sending =
                    pin!(state
                        .pool
                        .send_or_return(upstream, request, &watch, &mut waited_until));
                // Gated: polled only when the body is sent, the connection's
                // progress or its timer wakes it, not each time the response
                // side does.
                let deadlines = pin!(deadlines(&state.config.timeouts, &watch, hung));
                let mut deadlines = crate::lazy::Gated::new(deadlines);
                // Declared after `sending`, so dropped before it: the
                // connection is told before hyper sees the answer is not
                // awaited any more (a deadline fired, or this future is
                // dropped: its client left and no detached-request budget
                // was free, or the process stops).
                let wanted = Wanted::new(&watch);
                let result = std::future::poll_fn(|cx| {
                    // As `select!` does: with the task's budget spent, yield.
                    if !tokio::task::coop::has_budget_remaining() {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    match sending.as_mut().poll(cx) {
                        Poll::Ready(r) => Poll::Ready(Ok(r)),
                        Poll::Pending => Pin::new(&mut deadlines).poll(cx).map(Err),
                    }
                })
                .await;
                if result.is_ok() {
                    wanted.answered();
                }
                result
            };
            // A 2xx that came before the data centre was handed the whole
            // body (the flag is set before hyper writes its last bytes, so
            // before any answer to them can be read) is about an upload it
            // did not have: refused, and its request cut off mid-body, so
            // that it does not complete behind the client's back (upstream
            // audit, stop 65: a data centre answering 201 at the head and
            // then resetting had its receipt VALID for a body it never
            // read).
            if let Ok(Ok(resp)) = &result {
                if resp.status().is_success() && watch.came_before_its_body() {
                    upload.slot.withdraw();
                    tracing::warn!(
                        request_id = id,
                        datacenter = dc.as_str(),
                        status = resp.status().as_u16(),
                        "the data centre answered 2xx before it was sent the whole upload: refused, and its request cut off mid-body"
                    );
                    return Err(upload.refuse(Failure::UpstreamAnsweredEarly));
                }
            }
            let attempt = judge(state, upstream, result, &upload.slot, id, dc);
            if let Attempt::Waited { headers } = attempt {
                // Looked at again by the loop's own check (it waited, so
                // that check runs), then sent on the connection it waited
                // for.
                upload.headers = headers;
                upload.host_of = upstream;
                looked_again = true;
                attempts -= 1;
                continue;
            }
            state.request_metrics.upstream_duration(
                &instance.metrics,
                policy,
                dc_id,
                started.elapsed().as_secs_f64(),
            );
            if let Some(e) = upload.slot.failure() {
                return Err(upload.refuse(Failure::from(e)));
            }
            if let Attempt::Failed {
                failure: Failure::UpstreamSaturated,
                ..
            } = &attempt
            {
                let uri = policy.upstream(upstream).uri.to_string();
                instance
                    .metrics
                    .upstream_saturated
                    .with_label_values(&[dc.as_str(), uri.as_str()])
                    .inc();
            }
            let (fallback, unsent) =
                match settle(instance, health, upstream, sent_ms, attempt, &mut upload) {
                    Settled::Answered(mut resp) => {
                        // Boxed: rare (chunked answers), see `take_in`.
                        if resp.body().length_unknown() {
                            Box::pin(resp.body_mut().take_in(ANSWER_TAKEN_IN)).await;
                        }
                        return Ok((resp, upload.slot));
                    }
                    Settled::Unanswered { fallback, unsent } => (fallback, unsent),
                };
            // Retried only when nothing was sent, or the body can be replayed.
            let reason = match (unsent, &upload.replay) {
                (Some(reason), _) => Some(reason),
                (None, Some(_)) => Some("idempotent_replay"),
                (None, None) => None,
            };
            let next = reason.and_then(|_| {
                policy.pick(j, state.next_turn(), |u| u != upstream && health.is_up(u))
            });
            if unsent.is_some() {
                // This attempt sent nothing: its data centre holds none of
                // the body, and is not named as where it went (a next
                // attempt names its own).
                *datacenter = None;
            }
            match (next, reason) {
                (Some(next), Some(reason)) if attempts < MAX_ATTEMPTS => {
                    if unsent.is_none() {
                        // Replayed: some or all of the body may be there.
                        const _: () = assert!(MAX_ATTEMPTS <= 2, "`earlier` holds one data centre");
                        *earlier = Some(dc_id);
                    }
                    count_retry(instance, target.request_id, dc, reason);
                    upstream = next;
                    waited_until = None;
                }
                (None, _) if matches!(fallback, Err(Failure::UpstreamSaturated)) => {
                    return Err(upload.refuse(Failure::UpstreamSaturated));
                }
                (None, _) if unsent.is_some() => {
                    // Nothing was sent and nothing permitted is up any more.
                    let retry_after =
                        health.retry_after(state.config.policy.permitted_upstreams(j));
                    let failure = Failure::NoHealthyDatacenter { retry_after };
                    return Err(upload.refuse(failure));
                }
                _ => {
                    return match fallback {
                        Ok(resp) => Ok((resp, upload.slot)),
                        Err(failure) => Err(upload.refuse(failure)),
                    };
                }
            }
        }
    }
}

/// Whether the configuration now in force still lets `upstream` of the
/// request's snapshot (by data centre name and URL: a reload renumbers
/// them) store this upload: a reload may have removed it or moved it, or
/// its data centre, or moved
/// the client to another jurisdiction (its override, the GeoIP database's
/// answer, its country's jurisdiction, its tenant's pin: stop 68's
/// verification found those sent where the old decision said).
#[cold]
fn still_permitted(
    instance: &Instance,
    state: &Snapshot,
    target: &Target,
    upstream: UpstreamId,
) -> bool {
    use residency_core::decision::{decide, decide_pinned, Outcome};
    let now = instance.snapshot();
    let policy = &now.config.policy;
    // The same upstream: its data centre's name and its URL (verification,
    // stop 69: by the name alone, an address a reload gave to another
    // jurisdiction's data centre still took the upload).
    let Some(upstream) = state.config.policy.same_upstream_in(upstream, policy) else {
        return false;
    };
    let dc = policy.upstream(upstream).datacenter;
    // The decision again, under the policy, overrides, GeoIP database and
    // tenants in force, every upstream taken as up: only the jurisdiction
    // is wanted. A tenant is the same by name; one the reload removed is
    // not recognised now.
    let (up, soon) = (|_| true, |_| std::time::Duration::ZERO);
    let decision = match target.tenant {
        Some(t) => {
            let tenants = &now.config.tenancy.tenants;
            let Some(t) = tenants.by_name(&state.config.tenancy.tenants.get(t).name) else {
                return false;
            };
            decide_pinned(&now.geo, policy, target.client, tenants.get(t), 0, up, soon)
        }
        None => decide(&now.geo, policy, target.client, 0, up, soon),
    };
    matches!(decision.outcome, Outcome::Forward(_))
        && decision
            .jurisdiction
            .is_some_and(|(j, _)| policy.permits(j, dc))
}

fn count_retry(instance: &Instance, request_id: &HeaderValue, from: &str, reason: &'static str) {
    let request_id = request_id.to_str().unwrap_or_default();
    tracing::info!(
        request_id,
        from,
        reason,
        "retrying on another permitted upstream"
    );
    instance
        .metrics
        .upstream_retries
        .with_label_values(&[reason])
        .inc();
}

/// An attempt's outcome once health has been told.
enum Settled {
    /// A usable answer: it goes to the client.
    Answered(Response<UpstreamBody>),
    Unanswered {
        /// What the client gets if no retry is made.
        fallback: Result<Response<UpstreamBody>, Failure>,
        /// `Some(why)`: the request never reached the upstream.
        unsent: Option<&'static str>,
    },
}

/// Feeds an attempt's outcome to health (a failed connection ejects the
/// upstream; an unsent request's headers go back to the upload).
fn settle(
    instance: &Instance,
    health: &Health,
    upstream: UpstreamId,
    sent_ms: u64,
    attempt: Attempt,
    upload: &mut Upload,
) -> Settled {
    let (fallback, unsent, ejected) = match attempt {
        Attempt::Answered(resp) => {
            health.record_success(upstream);
            return Settled::Answered(resp);
        }
        Attempt::ServerError(resp) => {
            let ejected = health.record_server_error(upstream, sent_ms);
            (Ok(resp), None, ejected)
        }
        // Our own shortage, not the upstream's health. (`Waited` is
        // looked at before.)
        Attempt::Unmade { headers } | Attempt::Waited { headers } => {
            if headers.is_some() {
                upload.headers = headers;
                upload.host_of = upstream;
            }
            (
                Err(Failure::UpstreamUnavailable),
                Some("connect_failed"),
                false,
            )
        }
        // Our own connection cap, not the upstream's health.
        Attempt::Failed {
            failure: failure @ Failure::UpstreamSaturated,
            unsent,
            headers,
        } => {
            if headers.is_some() {
                // Handed back with this attempt's `Host`.
                upload.headers = headers;
                upload.host_of = upstream;
            }
            (Err(failure), unsent, false)
        }
        Attempt::Failed {
            failure,
            unsent,
            headers,
        } if unsent.is_some() => {
            health.eject(upstream);
            if headers.is_some() {
                // Handed back with this attempt's `Host`.
                upload.headers = headers;
                upload.host_of = upstream;
            }
            (Err(failure), unsent, true)
        }
        Attempt::Failed {
            failure, unsent, ..
        } => (
            Err(failure),
            unsent,
            health.record_failure(upstream, sent_ms),
        ),
    };
    if ejected {
        // Only an ejection changes what the gauges show.
        instance.refresh_gauges();
    }
    Settled::Unanswered { fallback, unsent }
}

/// What one delivery attempt came to: the pool's result, or the phase
/// whose deadline passed first.
fn judge(
    state: &Snapshot,
    upstream: UpstreamId,
    exchanged: Result<crate::upstream::pool::Sent, &'static str>,
    slot: &BodySlot,
    id: &str,
    dc: &str,
) -> Attempt {
    let result = match exchanged {
        Ok(result) => result,
        Err(phase) => {
            tracing::warn!(request_id = id, datacenter = dc, phase, "timeout");
            return Attempt::Failed {
                failure: Failure::UpstreamTimeout,
                unsent: None,
                headers: None,
            };
        }
    };
    if result.is_ok() {
        state.health.record_answer(upstream);
    }
    match result {
        Ok(mut resp) => {
            // RFC 9110 §6.2: an intermediary sends its own version, not an
            // HTTP/1.0 data centre's (an HTTP/1.1 client would take that
            // answer as closing the connection, which the proxy keeps;
            // hyper answers an HTTP/1.0 client as one all the same).
            *resp.version_mut() = http::Version::HTTP_11;
            let status = resp.status();
            // An answer the client cannot be given as it is.
            let unusable = if status.is_informational() {
                // hyper passes 101 on as if final (1xx else are skipped):
                // no answer to an upload, and forbidden in HTTP/2.
                Some("an interim status as its final answer")
            } else if status.as_u16() > 599 {
                // Outside RFC 9110 §15's classes (hyper parses up to 999):
                // meaningless to a client, to be taken as a server error.
                Some("a status code outside 100-599")
            } else {
                headers::from_upstream(status, resp.headers_mut()).err()
            };
            match unusable {
                Some(answer) => {
                    let coding = resp.headers().get(header::TRANSFER_ENCODING);
                    tracing::warn!(request_id = id, datacenter = dc, %status, ?coding, "the data centre answered with {answer}; not forwarded");
                    Attempt::Failed {
                        failure: Failure::UpstreamError,
                        unsent: None,
                        headers: None,
                    }
                }
                None if status.is_server_error() => Attempt::ServerError(resp),
                None => Attempt::Answered(resp),
            }
        }
        Err((PoolError::Waited, returned)) => Attempt::Waited {
            headers: returned.map(|r| r.into_parts().0.headers),
        },
        Err((PoolError::Saturated, returned)) => {
            tracing::warn!(
                request_id = id,
                datacenter = dc,
                "upstream.max_connections_per_upstream reached"
            );
            Attempt::Failed {
                failure: Failure::UpstreamSaturated,
                unsent: Some("upstream_saturated"),
                headers: returned.map(|r| r.into_parts().0.headers),
            }
        }
        Err((e, returned)) if e.is_local_exhaustion() && slot.untouched() => {
            static SAID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            if crate::throttle::minute_passed(&SAID) {
                tracing::warn!(request_id = id, datacenter = dc, error = %error_chain(&e), "no connection to the data centre could be made: the proxy is out of file descriptors (or buffers); the data centre is not marked down for it");
            }
            Attempt::Unmade {
                headers: returned.map(|r| r.into_parts().0.headers),
            }
        }
        Err((e, returned)) => {
            let tls = e.is_tls();
            if slot.failure().is_some() {
                // The client's body broke off (the caller refuses it as
                // `client_aborted`): no fault of the data centre's, and
                // one any client can cause at will, so not a warning each
                // time (soak audit, stop 66).
                tracing::debug!(request_id = id, datacenter = dc, error = %error_chain(&e), "upstream request ended: the client's body broke off");
            } else {
                tracing::warn!(request_id = id, datacenter = dc, error = %error_chain(&e), connect = e.is_connect(), "upstream request failed");
            }
            let unsent = (e.is_connect() && slot.untouched()).then_some(if tls {
                "tls_failed"
            } else {
                "connect_failed"
            });
            let failure = if e.is_connect() {
                Failure::UpstreamUnavailable
            } else if kernel_timed_out(&e) {
                // The kernel gave up on the connection (TCP_USER_TIMEOUT:
                // the data centre took none of what was sent for twice
                // `upstream_send_idle`): a timeout, as the proxy's own.
                Failure::UpstreamTimeout
            } else {
                Failure::UpstreamError
            };
            let headers = returned.map(|r| r.into_parts().0.headers);
            Attempt::Failed {
                failure,
                unsent,
                headers,
            }
        }
    }
}

/// Whether an error was caused by the kernel's timing out the connection
/// (`ETIMEDOUT`), anywhere in its chain.
fn kernel_timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    residency_tls::error_chain(e).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// Resolves with the name of the phase whose deadline passed: the send
/// phase (writes to the upstream blocked for `upstream_send_idle` while the
/// body is being sent) or the response phase. No timer runs in the send
/// phase until writes block (the connection wakes this when they do).
async fn deadlines(timeouts: &Timeouts, watch: &Watch, hung: Hung<'_>) -> &'static str {
    let idle = timeouts.upstream_send_idle;
    let sent = || std::future::poll_fn(|cx| watch.poll_sent(cx));
    loop {
        let blocked = std::future::poll_fn(|cx| {
            if watch.poll_sent(cx).is_ready() {
                return Poll::Ready(None);
            }
            // The pool sets the connection before it sends anything.
            let progress = std::task::ready!(watch.poll_progress(cx));
            progress.poll_blocked(cx).map(|b| Some((progress, b)))
        });
        let Some((progress, blocked)) = blocked.await else {
            break;
        };
        // Blocked: wait out the rest of `idle`, unless the body gets sent.
        let rest = idle.saturating_sub(blocked);
        tokio::select! {
            biased;
            () = sent() => break,
            () = crate::lazy::sleep(rest) => {
                if progress.blocked_for().is_some_and(|b| b >= idle) {
                    return "upstream_send_idle";
                }
                // Bytes moved meanwhile: watch again.
            }
        }
    }
    // The response phase; a hang is detected (for the next requests) while
    // this one keeps waiting for its own answer. Timed by the connection
    // the body went out on (one timer per connection, not one per request);
    // by a timer of its own should there be none.
    let wait = timeouts.upstream_response;
    let hung_after = hung
        .state
        .health
        .settings()
        .hung_after
        .filter(|after| *after < wait);
    let progress = watch.progress();
    let progress = progress.as_deref();
    match hung_after {
        Some(after) => {
            let mark = hung.state.health.answers(hung.upstream);
            elapse(progress, after).await;
            hung.check(mark, after);
            elapse(progress, wait - after).await;
        }
        None => elapse(progress, wait).await,
    }
    "upstream_response"
}

/// `after` from now, timed by the request's connection
/// ([`WriteProgress::due_in`]) or, without one, by a timer of its own.
async fn elapse(progress: Option<&WriteProgress>, after: std::time::Duration) {
    match progress {
        Some(progress) => progress.due_in(after).await,
        None => crate::lazy::sleep(after).await,
    }
}

/// What a waiting request needs to call its upstream hung.
struct Hung<'a> {
    state: &'a Snapshot,
    metrics: &'a crate::metrics::Metrics,
    upstream: UpstreamId,
    request_id: &'a str,
    dc: &'a str,
}

impl Hung<'_> {
    /// The request's body was sent when the upstream's answers counted
    /// `mark` ([`Health::answers`]) and nothing has come back for `after`:
    /// if no other request to the upstream was answered meanwhile either,
    /// it is hung — ejected, so new uploads fail over now instead of each
    /// waiting `upstream_response`.
    fn check(&self, mark: u64, after: std::time::Duration) {
        let health = &self.state.health;
        if health.answered_since(self.upstream, mark) || !health.eject_hung(self.upstream) {
            return;
        }
        let uri = &self.state.config.policy.upstream(self.upstream).uri;
        tracing::warn!(
            request_id = self.request_id,
            datacenter = self.dc,
            upstream = %uri,
            waited_ms = after.as_millis() as u64,
            "upstream hung: no answer to any request since this one was sent; ejected"
        );
        self.metrics
            .upstream_hung
            .with_label_values(&[self.dc, &uri.to_string()])
            .inc();
    }
}

/// The upstream's path prefix + the client's `/path?query`, origin-form.
fn upstream_path(base: &Uri, client: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
    let prefix = base.path().trim_end_matches('/');
    match client {
        // No prefix (the usual upstream): the client's, already parsed;
        // cloning it shares its bytes.
        Some(pq) if prefix.is_empty() => Ok(Uri::from(pq.clone())),
        _ => {
            let path_and_query = client.map_or("/", PathAndQuery::as_str);
            let mut pq = String::with_capacity(prefix.len() + path_and_query.len());
            pq.push_str(prefix);
            pq.push_str(path_and_query);
            Ok(Uri::try_from(pq)?)
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_base_and_path() {
        let pq = |s: &str| PathAndQuery::try_from(s).unwrap();
        let join = |base: &str, client: Option<&PathAndQuery>| {
            upstream_path(&base.parse().unwrap(), client)
                .unwrap()
                .to_string()
        };
        let upload = pq("/upload?x=1");
        assert_eq!(
            join("https://ingest.example.com/v1/", Some(&upload)),
            "/v1/upload?x=1"
        );
        assert_eq!(join("https://ingest.example.com/v1", None), "/v1/");
        assert_eq!(join("http://127.0.0.1:8080", Some(&pq("/u"))), "/u");
        assert_eq!(join("http://127.0.0.1:8080/", Some(&upload)), "/upload?x=1");
        assert_eq!(join("http://127.0.0.1:8080", None), "/");
    }
}
