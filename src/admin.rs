//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/decide?ip=`, and
//! `POST /datacenters/{name}/drain` / `/undrain`.
//!
//! Separate from the ingest listeners (plain HTTP/1.1, meant for loopback or
//! a private network) so scraping and probing never compete with uploads.
//! `/decide` runs the exact decision code the proxy runs, against the current
//! snapshot and live health, and explains it as JSON.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::Instance;
use residency_core::policy::DatacenterId;

/// Connections the admin listener holds at once (scrapers, probes and
/// operators need few; the rest of the process's file descriptors stay for
/// uploads).
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Of those, what one client address may hold: a local process that holds
/// connections open cannot take the listener from the probes and the
/// scraper, which come from other addresses (abuse audit, stop 62).
const ADMIN_MAX_PER_CLIENT: u32 = 16;

/// Serves the admin listener until `stop` turns true.
pub async fn serve(instance: Arc<Instance>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let cap = crate::plain_http::Cap {
        max_connections: ADMIN_MAX_CONNECTIONS,
        rejected: (instance.metrics.connections_rejected)
            .with_label_values(&["admin_connection_limit"]),
        per_client: Some((
            ADMIN_MAX_PER_CLIENT,
            (instance.metrics.connections_rejected)
                .with_label_values(&["admin_client_connection_limit"]),
        )),
        blocking: false,
        rate: None,
    };
    crate::plain_http::serve(listener, stop, cap, None, move |req| answer(&instance, req)).await;
}

/// Answers one admin request (request bodies are never read).
pub fn answer(instance: &Instance, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if !host_allowed(
        req.headers(),
        req.uri(),
        &instance.snapshot().config.admin.hosts,
    ) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "this admin listener answers for IP addresses, localhost and the names in admin.hosts only\n",
        );
    }
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/datacenters/") {
        // A path of another shape is not served, whatever the method.
        if !matches!(rest.rsplit_once('/'), Some((_, "drain" | "undrain"))) {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "want /datacenters/{name}/drain or /undrain"}),
            );
        }
        if req.method() != Method::POST {
            return not_allowed("use POST\n", "POST");
        }
        if from_a_web_page(req) {
            return json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "from_a_web_page", "detail": "a request a browser sent for a web page (it carries Origin or Sec-Fetch-Site): the admin API takes drains from operators' tools, such as curl"}),
            );
        }
        return drain(instance, rest);
    }
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/decide") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics /healthz /readyz /decide?ip=\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return not_allowed("only GET\n", "GET, HEAD");
    }
    match path {
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(instance.metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(instance),
        "/decide" => explain_decision(instance, req.uri().query().unwrap_or("")),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics /healthz /readyz /decide?ip=\n",
        ),
    }
}

/// Whether `req` names a host the admin listener answers for: an IP
/// literal, `localhost`, or one of `admin.hosts` (with any port; no `Host`
/// at all, as an HTTP/1.0 tool may send, too). A web page an operator
/// visits can rebind its own name to the admin address (DNS rebinding)
/// and read `/metrics` and `/decide` as same-origin: its requests still
/// name the page's host, which is refused.
fn host_allowed(headers: &http::HeaderMap, uri: &http::Uri, hosts: &[String]) -> bool {
    let named = match (headers.get(header::HOST), uri.authority()) {
        (Some(value), _) => value.to_str().unwrap_or_default(),
        (None, Some(authority)) => authority.as_str(),
        (None, None) => return true,
    };
    let Ok(authority) = named.parse::<http::uri::Authority>() else {
        return false;
    };
    let host = authority.host();
    // Nothing after the host but a port: `http` reads the host of
    // `[::1].evil` or `[::1]:abc` as `[::1]` (IPv6 audit, stop 66).
    let rest = &authority.as_str()[host.len()..];
    if !rest.is_empty()
        && !rest
            .strip_prefix(':')
            .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || hosts.iter().any(|h| host.eq_ignore_ascii_case(h))
}

/// Whether a browser sent `req` for a web page: it then carries `Origin`
/// (every cross-origin request, and a same-origin `POST`) or
/// `Sec-Fetch-Site`, which operators' tools do not send. A page an
/// operator visits can send a `POST` to the admin address without a
/// preflight (a form, or `fetch` without a body), so a drain from one
/// would let any web page take data centres out of rotation; through DNS
/// rebinding the request is even same-origin to the browser.
fn from_a_web_page(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    headers.contains_key(header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes() != b"none")
}

/// `ready` or `not ready: <why>`, then one line per data centre: up,
/// down, drained.
fn readyz(instance: &Instance) -> Response<Full<Bytes>> {
    let state = instance.snapshot();
    let policy = &state.config.policy;
    let readiness = instance.readiness();
    let ready = readiness.is_ok();
    let mut body = match readiness {
        Ok(()) => String::from("ready\n"),
        Err(why) => format!("not ready: {why}\n"),
    };
    for (i, dc) in policy.datacenters.iter().enumerate() {
        let healthy = dc.upstreams.iter().any(|u| state.health.is_healthy(*u));
        let drained = state.health.is_drained(DatacenterId(i));
        let status = match (healthy, drained) {
            (_, true) => "drained",
            (true, false) => "up",
            (false, false) => "down",
        };
        body.push_str(&format!("datacenter {}: {status}\n", dc.name));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `POST /datacenters/{name}/drain` and `/undrain`.
fn drain(instance: &Instance, rest: &str) -> Response<Full<Bytes>> {
    let (name, drained) = match rest.rsplit_once('/') {
        Some((name, "drain")) => (name, true),
        Some((name, "undrain")) => (name, false),
        _ => {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "want /datacenters/{name}/drain or /undrain"}),
            )
        }
    };
    if !instance.set_drained(name, drained) {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": format!("no data centre named `{name}`")}),
        );
    }
    instance.refresh_gauges();
    tracing::info!(
        datacenter = name,
        drained,
        "data centre {}",
        if drained { "drained" } else { "undrained" }
    );
    json(
        StatusCode::OK,
        &serde_json::json!({"datacenter": name, "drained": drained}),
    )
}

fn explain_decision(instance: &Instance, query: &str) -> Response<Full<Bytes>> {
    let usage = "/decide?ip=<address>[&sni=<server name>][&tenant=<name>]";
    let refuse = |e: String| {
        json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": e, "usage": usage}),
        )
    };
    let param = |name| crate::query::get(query, name);
    let (ip, sni, tenant) = match (param("ip"), param("sni"), param("tenant")) {
        (Ok(ip), Ok(sni), Ok(tenant)) => (ip, sni, tenant),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return refuse(e),
    };
    let ip = match ip.map(|s| s.parse::<IpAddr>().map_err(|_| s)) {
        Some(Err(s)) => return refuse(format!("ip: `{s}` is not an IPv4 or IPv6 address")),
        Some(Ok(ip)) => Some(ip),
        None => None,
    };
    let question = crate::explain::Question {
        ip,
        sni: sni.as_deref(),
        tenant: tenant.as_deref(),
    };
    let state = instance.snapshot();
    let health = &state.health;
    let answer = crate::explain::answer(
        &question,
        &state.geo,
        &state.config.policy,
        &state.config.tenancy,
        // The turn the next upload gets, not taken: asking must not move
        // live traffic's load sharing.
        state.current_turn(),
        |u| health.is_up(u),
        |d| health.is_drained(d),
        |j| health.retry_after(state.config.policy.permitted_upstreams(j)),
    );
    match answer {
        Ok(explained) => json(StatusCode::OK, &explained),
        Err(e) => refuse(e),
    }
}

/// 405 with the `Allow` header RFC 9110 §15.5.6 requires.
fn not_allowed(body: &'static str, allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, body);
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(host: Option<&str>, hosts: &[&str]) -> bool {
        let mut headers = http::HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        host_allowed(&headers, &http::Uri::from_static("/metrics"), &hosts)
    }

    /// DNS rebinding: a page's request names the page's host, which the
    /// admin listener does not answer for unless it is listed.
    #[test]
    fn the_admin_listener_answers_for_addresses_localhost_and_its_names() {
        for host in [
            "127.0.0.1:9900",
            "10.1.2.3",
            "[::1]:9900",
            "[fd00::1]",
            "localhost:9900",
            "LOCALHOST",
        ] {
            assert!(allowed(Some(host), &[]), "{host}");
        }
        assert!(allowed(None, &[]), "no Host (an HTTP/1.0 tool)");
        for host in [
            "attacker.example",
            "attacker.example:9900",
            "127.0.0.1.nip.io",
            "",
            "a b",
            // Read by `http` as `[::1]` and a port it does not check.
            "[::1].evil",
            "[::1]x.attacker.example",
            "[::1]:abc",
            "127.0.0.1:abc",
        ] {
            assert!(!allowed(Some(host), &[]), "{host}");
        }
        let listed = ["proxy-admin.internal"];
        assert!(allowed(Some("proxy-admin.internal:9900"), &listed));
        assert!(allowed(Some("Proxy-Admin.Internal"), &listed));
        assert!(!allowed(Some("other.internal"), &listed));
    }
}
