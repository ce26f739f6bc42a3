//! `/metrics` right after start: every family the README names, with each
//! of its known label values as a series at 0, so that the first event is
//! an increase Prometheus can see.

use residency_log::witness::Cosigner;

use crate::support::*;

/// The README's metrics paragraph: each `residency_*` family, with the
/// label values it lists (`{label=a|b|c}`).
fn readme_families() -> Vec<(String, Vec<(String, String)>)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("**Metrics** (`GET /metrics`")
        .expect("the metrics paragraph");
    let paragraph = &readme[start..start + readme[start..].find("\n\n").unwrap()];
    let mut out = Vec::new();
    for piece in paragraph.split('`') {
        let Some(name) = piece.strip_prefix("residency_") else {
            continue;
        };
        let (name, labels) = name.split_once('{').unwrap_or((name, ""));
        let mut values = Vec::new();
        for label in labels.trim_end_matches('}').split(',') {
            if let Some((key, list)) = label.split_once('=') {
                for v in list.split('|') {
                    values.push((key.to_string(), v.to_string()));
                }
            }
        }
        out.push((format!("residency_{name}"), values));
    }
    out
}

#[tokio::test]
async fn every_family_in_the_readme_exists_at_start_with_its_zero_series() {
    let witness = Cosigner::from_pkcs8("witness.test/w1", &Cosigner::generate_pkcs8().unwrap())
        .unwrap()
        .verifier_key();
    let closed = closed_port().await;
    let proxy = Proxy::start(Setup {
        transparency: Some(format!(
            "[[transparency.witnesses]]\nurl = \"http://{closed}\"\nkey = \"{witness}\"\n"
        )),
        extra: "[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\nsni = [\"acme.test\"]\n\
                [tenancy]\nmetrics_by_tenant = true\n"
            .into(),
        ..Setup::default()
    })
    .await;
    let (_, text) = proxy.admin_get("/metrics").await;
    let families = readme_families();
    assert!(families.len() >= 35, "{families:?}");
    let series = |name: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']) || rest.starts_with("_bucket"))
            })
            .collect()
    };
    let mut missing = Vec::new();
    for (family, values) in &families {
        if series(family).is_empty() {
            missing.push(family.clone());
        }
        for (label, value) in values {
            let wanted = format!("{label}=\"{value}\"");
            if !series(family).iter().any(|l| l.contains(&wanted)) {
                missing.push(format!("{family}{{{wanted}}}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in /metrics at start: {missing:?}\n{text}"
    );
    // And the other way: every family served is documented.
    let undocumented: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|name| name.starts_with("residency_"))
        .filter(|name| !families.iter().any(|(f, _)| f == name))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the README's metrics paragraph: {undocumented:?}"
    );

    // Each served certificate's notAfter.
    let not_after = residency_tls::validity(proxy.certs[0].as_bytes())[0]
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        metric(
            &text,
            "residency_tls_certificate_expiry_timestamp_seconds{certificate=\"listeners[0].tls.certificates[0]\"}"
        ),
        Some(not_after as f64),
        "{text}"
    );
    // The ones alerts are written against start at 0.
    for zero in [
        "residency_reloads_total{result=\"failure\"}",
        "residency_reloads_total{result=\"success\"}",
        "residency_rejections_total{reason=\"no_healthy_datacenter\"}",
        "residency_rejections_total{reason=\"tenant_conflict\"}",
        "residency_rejections_total{reason=\"too_many_requests\"}",
        "residency_connections_rejected_total{reason=\"connection_limit\"}",
        "residency_upstream_retries_total{reason=\"connect_failed\"}",
        "residency_tls_handshakes_total{result=\"failure\"}",
        "residency_requests_total{datacenter=\"zurich\",jurisdiction=\"ch\",status_class=\"2xx\"}",
        "residency_requests_total{datacenter=\"zurich\",jurisdiction=\"ch\",status_class=\"3xx\"}",
        "residency_requests_total{datacenter=\"none\",jurisdiction=\"ch\",status_class=\"5xx\"}",
        "residency_requests_total{datacenter=\"frankfurt\",jurisdiction=\"uk\",status_class=\"2xx\"}",
        "residency_tenant_requests_by_tenant_total{tenant=\"acme\"}",
        "residency_log_write_errors_total",
        "residency_request_duration_seconds_count{jurisdiction=\"none\"}",
    ] {
        assert_eq!(metric(&text, zero), Some(0.0), "{zero}\n{text}");
    }
    proxy.stop().await;
}

/// With `OPTIONS` allowed, the series an `OPTIONS` the proxy answers itself
/// counts in (no jurisdiction, no data centre, 2xx) exists from start.
#[tokio::test]
async fn the_series_of_options_the_proxy_answers_exists_from_start() {
    let series =
        "residency_requests_total{datacenter=\"none\",jurisdiction=\"none\",status_class=\"2xx\"}";
    let proxy = Proxy::start(Setup {
        extra: "[limits]\nmethods = [\"POST\", \"OPTIONS\"]\n".into(),
        ..Setup::default()
    })
    .await;
    let (_, text) = proxy.admin_get("/metrics").await;
    assert_eq!(metric(&text, series), Some(0.0), "{text}");
    proxy.stop().await;
}

/// An HTTP/2 client that breaks the protocol gets a GOAWAY with the error
/// h2 found, and a client that never sends its request is closed at
/// `timeouts.request_head`: both are counted in
/// `residency_connections_closed_total` by their reason.
#[tokio::test]
async fn connections_the_proxy_ends_are_counted_by_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = Proxy::start(Setup {
        extra: "[timeouts]\nrequest_head = \"500ms\"\n".into(),
        ..Setup::default()
    })
    .await;
    let closed =
        |reason: &str| format!("residency_connections_closed_total{{reason=\"{reason}\"}}");

    // The preface, empty SETTINGS, then DATA on stream 0 (RFC 9113 §6.1:
    // a connection error of type PROTOCOL_ERROR).
    let mut tls = proxy.client().h2().connect().await.expect("TLS handshake");
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&[0, 0, 1, 0x0, 0, 0, 0, 0, 0, b'x']);
    tls.write_all(&frames).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), read_to_close(&mut tls))
        .await
        .expect("the proxy closes the connection");
    // The frames the proxy sent, up to its GOAWAY (type 7), whose error
    // code follows its last stream id: PROTOCOL_ERROR (1).
    let mut at = 0;
    let code = loop {
        let frame = got.get(at..at + 9).expect("a GOAWAY");
        let len = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
        if frame[3] == 0x7 {
            break got[at + 13..at + 17].to_vec();
        }
        at += 9 + len;
    };
    assert_eq!(code, [0, 0, 0, 1], "{got:?}");

    // A TLS connection that sends nothing.
    let mut idle = proxy.client().connect().await.expect("TLS handshake");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed at request_head");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    eventually("both closes counted", async || {
        metric_value(&proxy, &closed("http2_protocol_error")).await == 1.0
            && metric_value(&proxy, &closed("request_head")).await == 1.0
    })
    .await;
    assert_eq!(metric_value(&proxy, &closed("keepalive_idle")).await, 0.0);
    proxy.stop().await;
}
