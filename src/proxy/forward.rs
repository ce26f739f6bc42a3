//! Delivering an upload to one permitted upstream, streaming.
//!
//! The request is rebuilt for the upstream (HTTP/1.1, the upstream's base
//! URL joined with the client's path and query, rewritten headers) and its
//! body streams through [`ForwardBody`]. The upstream-response deadline
//! starts when the body has been sent completely; the body itself is guarded
//! by its idle deadline and size limit.
//!
//! Retry is narrow on purpose: only when connecting failed *and* the body
//! slot is untouched (provably nothing reached the upstream), once, on
//! another upstream picked from the same permitted set. Every other failure
//! is a 502/504 after exactly one delivery attempt.

use std::net::IpAddr;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::body::{BodyError, BodySlot, ForwardBody};
use super::error::Failure;
use super::headers::{self, Forwarded};
use crate::policy::{JurisdictionId, UpstreamId};
use crate::state::{Shared, State};

/// Where an upload goes and what the upstream is told about it.
pub struct Target<'a> {
    pub jurisdiction: JurisdictionId,
    pub upstream: UpstreamId,
    pub request_id: &'a HeaderValue,
    pub hop: IpAddr,
    pub xff_trusted: bool,
    pub country: &'a str,
}

/// Forwards `req`; on success returns the upstream's response (body still
/// streaming) and the number of body bytes sent. `datacenter` is set to the
/// data centre that answered, for the response headers and the log.
pub async fn forward(
    shared: &Shared,
    state: &State,
    target: Target<'_>,
    req: Request<Incoming>,
    datacenter: &mut Option<String>,
) -> Result<(Response<Incoming>, u64), (Failure, u64)> {
    let policy = &state.config.policy;
    let timeouts = &state.config.timeouts;
    let (parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let mut upstream_headers = parts.headers;
    let j = target.jurisdiction;
    headers::to_upstream(
        &mut upstream_headers,
        &Forwarded {
            request_id: target.request_id,
            xff_trusted: target.xff_trusted,
            hop: target.hop,
            country: target.country,
            jurisdiction: &policy.jurisdiction(j).name,
            host,
        },
    );
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let slot = BodySlot::new(body);
    let mut upstream = target.upstream;
    let mut retried = false;

    loop {
        // Defence in depth: the pick already guarantees this.
        if !policy.is_permitted(j, upstream) {
            tracing::error!(
                upstream = upstream.0,
                "refusing to forward outside the permitted set"
            );
            return Err((Failure::UpstreamError, 0));
        }
        let dc = policy.datacenter_of(upstream);
        *datacenter = Some(dc.name.clone());
        let uri = upstream_uri(&policy.upstream(upstream).uri, path)
            .map_err(|_| (Failure::BadRequest, 0))?;
        let (body, sent) = ForwardBody::new(
            slot.clone(),
            state.config.limits.max_body_bytes,
            timeouts.request_body_idle,
        );
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = upstream_headers.clone();

        let started = Instant::now();
        let response_deadline = async {
            let _ = sent.await;
            tokio::time::sleep(timeouts.upstream_response).await;
        };
        let result = tokio::select! {
            r = state.client.request(request) => r,
            () = response_deadline => {
                tracing::warn!(request_id = target.request_id.to_str().unwrap_or_default(), datacenter = %dc.name, phase = "upstream_response", "timeout");
                return Err((Failure::UpstreamTimeout, slot.bytes()));
            }
        };
        let error = match result {
            Ok(resp) => {
                shared
                    .metrics
                    .upstream_duration
                    .with_label_values(&[dc.name.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                return Ok((resp, slot.bytes()));
            }
            Err(e) => e,
        };
        if let Some(body_error) = slot.failure() {
            let failure = match body_error {
                BodyError::TooLarge => Failure::BodyTooLarge,
                BodyError::IdleTimeout => Failure::BodyTimeout,
                BodyError::Client | BodyError::Gone => Failure::ClientAborted,
            };
            return Err((failure, slot.bytes()));
        }
        tracing::warn!(
            request_id = target.request_id.to_str().unwrap_or_default(),
            datacenter = %dc.name,
            upstream = %policy.upstream(upstream).uri,
            error = %error_chain(&error),
            connect = error.is_connect(),
            "upstream request failed"
        );
        if !error.is_connect() {
            return Err((Failure::UpstreamError, slot.bytes()));
        }
        state.health.mark_down(upstream);
        shared.refresh_gauges();
        if !slot.untouched() {
            return Err((Failure::UpstreamUnavailable, slot.bytes()));
        }
        let health = &state.health;
        match policy.pick(j, state.next_turn(), |u| u != upstream && health.is_up(u)) {
            Some(next) if !retried => {
                shared
                    .metrics
                    .upstream_retries
                    .with_label_values(&["connect_failed"])
                    .inc();
                retried = true;
                upstream = next;
            }
            Some(_) => return Err((Failure::UpstreamUnavailable, 0)),
            None => {
                *datacenter = None;
                let retry_after = health.retry_after(super::permitted_upstreams(state, j));
                return Err((Failure::NoHealthyDatacenter { retry_after }, 0));
            }
        }
    }
}

/// `https://host:port/prefix` + `/path?query`.
fn upstream_uri(base: &Uri, path_and_query: &str) -> Result<Uri, http::Error> {
    let prefix = base.path().trim_end_matches('/');
    let mut pq = String::with_capacity(prefix.len() + path_and_query.len());
    pq.push_str(prefix);
    pq.push_str(path_and_query);
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(pq.parse()?);
    Ok(Uri::from_parts(parts)?)
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
        let base: Uri = "https://ingest.example.com/v1/".parse().unwrap();
        assert_eq!(
            upstream_uri(&base, "/upload?x=1").unwrap().to_string(),
            "https://ingest.example.com/v1/upload?x=1"
        );
        let base: Uri = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            upstream_uri(&base, "/u").unwrap().to_string(),
            "http://127.0.0.1:8080/u"
        );
    }
}
