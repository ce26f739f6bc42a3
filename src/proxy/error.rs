//! Everything that can end a request without an upstream's answer.
//!
//! Each [`Failure`] knows its status, its fixed `reason` (the JSON body's
//! `error` and the `reason` label of `residency_rejections_total`) and who
//! caused it. The client gets a short fixed body; details go to the log.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use residency_core::decision::Refusal;

/// Who is responsible for a failure (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    Client,
    Upstream,
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Ambiguous request framing (smuggling attempt) or an unusable request.
    BadRequest,
    /// A method outside `limits.methods` (the 405 carries `Allow`).
    MethodNotAllowed,
    BadForwardedHeader,
    OriginUnknown,
    OriginNotPermitted,
    NoHealthyDatacenter {
        retry_after: Duration,
    },
    BodyTooLarge,
    BodyTimeout,
    ClientAborted,
    UpstreamUnavailable,
    UpstreamError,
    UpstreamTimeout,
    /// Every connection `upstream.max_connections_per_upstream` allows was
    /// busy for `timeouts.upstream_connect`.
    UpstreamSaturated,
    /// The decision record could not be written to the transparency log.
    LogUnavailable,
    /// A tenant token is present and does not name a tenant (bad signature,
    /// expired, another issuer or audience, unknown tenant): never a
    /// fall-back to GeoIP.
    InvalidTenantToken,
    /// A pinned tenant's client is, by GeoIP, outside the pin, and the
    /// tenant's `mismatch` policy refuses that.
    TenantOriginMismatch,
    /// The token, the client certificate or the server name recognise
    /// different tenants.
    TenantConflict,
    /// The client already has `limits.max_requests_per_client` requests in
    /// flight.
    TooManyRequests,
    /// The connection's server name names one tenant, the request's host
    /// another.
    Misdirected,
    /// A `Transfer-Encoding` with codings before its final `chunked`
    /// (`gzip, chunked`), which the proxy does not decode.
    UnsupportedTransferCoding,
    /// An HTTP/2 request with more header fields than an HTTP/1.1 head may
    /// have (100; hyper refuses more itself, with a bare 431).
    HeadTooLarge,
    /// A method neither in `limits.methods` nor one RFC 9110 or RFC 5789
    /// defines: the proxy does not recognize it (RFC 9110 §15.6.2: 501).
    MethodNotImplemented,
    /// The GeoIP database's record for the client's address does not
    /// decode (a damaged file): the client is not taken for one of no
    /// country.
    GeoipError,
    /// The data centre answered 2xx before the proxy had handed it the
    /// whole upload: an answer about a body it did not have.
    UpstreamAnsweredEarly,
    /// The proxy stopped (`timeouts.shutdown_grace` ran out) while the
    /// upload was with a data centre: its connection is dropped, so no
    /// client sees this; its record does (the data centre may have stored
    /// it).
    Shutdown,
    /// A reload took the data centre the upload was decided for out of its
    /// jurisdiction's permitted set before the upload was sent there (a
    /// first attempt after a long buffering, or a retry): refused, for its
    /// client to retry under the policy now in force.
    PolicyChanged,
}

impl Failure {
    /// Every failure, once (`NoHealthyDatacenter` with no delay); their
    /// reasons are `metrics::REJECTION_REASONS`.
    #[cfg(test)]
    pub const ALL: [Failure; 26] = [
        Failure::BadRequest,
        Failure::MethodNotAllowed,
        Failure::BadForwardedHeader,
        Failure::OriginUnknown,
        Failure::OriginNotPermitted,
        Failure::NoHealthyDatacenter {
            retry_after: Duration::ZERO,
        },
        Failure::BodyTooLarge,
        Failure::BodyTimeout,
        Failure::ClientAborted,
        Failure::UpstreamUnavailable,
        Failure::UpstreamError,
        Failure::UpstreamTimeout,
        Failure::UpstreamSaturated,
        Failure::LogUnavailable,
        Failure::InvalidTenantToken,
        Failure::TenantOriginMismatch,
        Failure::TenantConflict,
        Failure::TooManyRequests,
        Failure::Misdirected,
        Failure::UnsupportedTransferCoding,
        Failure::HeadTooLarge,
        Failure::MethodNotImplemented,
        Failure::GeoipError,
        Failure::UpstreamAnsweredEarly,
        Failure::Shutdown,
        Failure::PolicyChanged,
    ];
}

/// Why the client's body stopped, as the client is told.
impl From<crate::upstream::body::BodyError> for Failure {
    fn from(e: crate::upstream::body::BodyError) -> Failure {
        use crate::upstream::body::BodyError;
        match e {
            BodyError::TooLarge => Failure::BodyTooLarge,
            BodyError::IdleTimeout | BodyError::TooSlow => Failure::BodyTimeout,
            BodyError::Client | BodyError::Gone => Failure::ClientAborted,
            BodyError::Withdrawn => Failure::UpstreamError,
            BodyError::Malformed => Failure::BadRequest,
        }
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Failure {
        match refusal {
            Refusal::OriginUnknown => Failure::OriginUnknown,
            Refusal::OriginNotPermitted => Failure::OriginNotPermitted,
            Refusal::NoHealthyDatacenter { retry_after } => {
                Failure::NoHealthyDatacenter { retry_after }
            }
            Refusal::TenantOriginMismatch => Failure::TenantOriginMismatch,
            Refusal::GeoipError => Failure::GeoipError,
        }
    }
}

impl Failure {
    pub fn status(self) -> StatusCode {
        match self {
            Failure::BadRequest | Failure::BadForwardedHeader | Failure::ClientAborted => {
                StatusCode::BAD_REQUEST
            }
            Failure::OriginUnknown
            | Failure::OriginNotPermitted
            | Failure::TenantOriginMismatch => StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
            Failure::InvalidTenantToken => StatusCode::UNAUTHORIZED,
            Failure::TenantConflict => StatusCode::FORBIDDEN,
            Failure::NoHealthyDatacenter { .. }
            | Failure::LogUnavailable
            | Failure::UpstreamSaturated
            | Failure::GeoipError
            | Failure::Shutdown
            | Failure::PolicyChanged => StatusCode::SERVICE_UNAVAILABLE,
            Failure::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Failure::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Failure::UpstreamUnavailable
            | Failure::UpstreamError
            | Failure::UpstreamAnsweredEarly => StatusCode::BAD_GATEWAY,
            Failure::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Failure::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Failure::UnsupportedTransferCoding | Failure::MethodNotImplemented => {
                StatusCode::NOT_IMPLEMENTED
            }
            Failure::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Failure::BadRequest => "bad_request",
            Failure::MethodNotAllowed => "method_not_allowed",
            Failure::BadForwardedHeader => "bad_forwarded_header",
            Failure::OriginUnknown => "origin_unknown",
            Failure::OriginNotPermitted => "origin_not_permitted",
            Failure::NoHealthyDatacenter { .. } => "no_healthy_datacenter",
            Failure::BodyTooLarge => "body_too_large",
            Failure::BodyTimeout => "request_body_timeout",
            Failure::ClientAborted => "client_aborted",
            Failure::UpstreamUnavailable => "upstream_unavailable",
            Failure::UpstreamError => "upstream_error",
            Failure::UpstreamTimeout => "upstream_timeout",
            Failure::UpstreamSaturated => "upstream_saturated",
            Failure::LogUnavailable => "log_unavailable",
            Failure::InvalidTenantToken => "invalid_tenant_token",
            Failure::TenantOriginMismatch => "tenant_origin_mismatch",
            Failure::TenantConflict => "tenant_conflict",
            Failure::TooManyRequests => "too_many_requests",
            Failure::Misdirected => "misdirected_request",
            Failure::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Failure::HeadTooLarge => "request_head_too_large",
            Failure::MethodNotImplemented => "method_not_implemented",
            Failure::GeoipError => "geoip_error",
            Failure::UpstreamAnsweredEarly => "upstream_answered_early",
            Failure::Shutdown => "shutdown",
            Failure::PolicyChanged => "policy_changed",
        }
    }

    pub fn culprit(self) -> Culprit {
        match self {
            Failure::BadRequest
            | Failure::MethodNotAllowed
            | Failure::BadForwardedHeader
            | Failure::BodyTooLarge
            | Failure::BodyTimeout
            | Failure::ClientAborted
            | Failure::OriginUnknown
            | Failure::OriginNotPermitted
            | Failure::InvalidTenantToken
            | Failure::TenantOriginMismatch
            | Failure::TenantConflict
            | Failure::TooManyRequests
            | Failure::Misdirected
            | Failure::UnsupportedTransferCoding
            | Failure::HeadTooLarge
            | Failure::MethodNotImplemented => Culprit::Client,
            Failure::NoHealthyDatacenter { .. }
            | Failure::UpstreamUnavailable
            | Failure::UpstreamError
            | Failure::UpstreamAnsweredEarly
            | Failure::UpstreamTimeout => Culprit::Upstream,
            Failure::LogUnavailable
            | Failure::UpstreamSaturated
            | Failure::GeoipError
            | Failure::Shutdown
            | Failure::PolicyChanged => Culprit::Proxy,
        }
    }

    /// The client-facing response: status, `{"error", "request_id"}` body and,
    /// for 503 and 429, `Retry-After` in whole seconds (at least 1).
    pub fn response(self, request_id: &HeaderValue) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": self.reason(),
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let retry_after = match self {
            Failure::NoHealthyDatacenter { retry_after } => Some(retry_after),
            Failure::LogUnavailable
            | Failure::UpstreamSaturated
            | Failure::TooManyRequests
            | Failure::Shutdown
            | Failure::PolicyChanged => Some(Duration::from_secs(1)),
            _ => None,
        };
        if self == Failure::InvalidTenantToken {
            // RFC 6750 §3.
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if let Some(retry_after) = retry_after {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists every variant: the match has no wildcard, so a new
    /// variant does not compile until it has a place here and in `ALL`.
    #[test]
    fn all_lists_every_failure() {
        let place = |f: Failure| match f {
            Failure::BadRequest => 0,
            Failure::MethodNotAllowed => 1,
            Failure::BadForwardedHeader => 2,
            Failure::OriginUnknown => 3,
            Failure::OriginNotPermitted => 4,
            Failure::NoHealthyDatacenter { .. } => 5,
            Failure::BodyTooLarge => 6,
            Failure::BodyTimeout => 7,
            Failure::ClientAborted => 8,
            Failure::UpstreamUnavailable => 9,
            Failure::UpstreamError => 10,
            Failure::UpstreamTimeout => 11,
            Failure::UpstreamSaturated => 12,
            Failure::LogUnavailable => 13,
            Failure::InvalidTenantToken => 14,
            Failure::TenantOriginMismatch => 15,
            Failure::TenantConflict => 16,
            Failure::TooManyRequests => 17,
            Failure::Misdirected => 18,
            Failure::UnsupportedTransferCoding => 19,
            Failure::HeadTooLarge => 20,
            Failure::MethodNotImplemented => 21,
            Failure::GeoipError => 22,
            Failure::UpstreamAnsweredEarly => 23,
            Failure::Shutdown => 24,
            Failure::PolicyChanged => 25,
        };
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(place(*f), i, "{f:?}");
        }
        // And the metrics export each reason from start.
        let reasons: Vec<&str> = Failure::ALL.iter().map(|f| f.reason()).collect();
        assert_eq!(reasons, crate::metrics::REJECTION_REASONS);
    }

    #[test]
    fn refusal_bodies() {
        let id = HeaderValue::from_static("r1");
        let r = Failure::OriginUnknown.response(&id);
        assert_eq!(r.status(), 451);
        let r = Failure::NoHealthyDatacenter {
            retry_after: Duration::from_millis(2500),
        }
        .response(&id);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "3");
        let r = Failure::NoHealthyDatacenter {
            retry_after: Duration::ZERO,
        }
        .response(&id);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(Failure::UpstreamTimeout.status(), 504);
        assert_eq!(Failure::BodyTooLarge.status(), 413);
    }
}
