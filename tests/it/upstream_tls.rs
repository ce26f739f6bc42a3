//! `https` upstreams: verified against `[upstream] ca`, refused otherwise.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::*;

/// An HTTPS upstream answering 201 with the body length; returns its port.
async fn https_upstream(cert_pem: &str, key_pem: &str) -> u16 {
    let source = residency_tls::CertSource {
        cert_pem: cert_pem.as_bytes().to_vec(),
        key_pem: key_pem.as_bytes().to_vec(),
        label: "upstream".into(),
    };
    let config = residency_tls::server_config(&[source], None).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let n = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let mut resp = http::Response::new(Full::new(Bytes::from(format!(
                        "tls upstream got {n}"
                    ))));
                    *resp.status_mut() = http::StatusCode::CREATED;
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

async fn proxy_with_https_dc(port: u16, ca: Option<&str>, dir: &TempDir) -> Proxy {
    let mut extra = format!(
        "\n[datacenters.bern]\njurisdiction = \"ch\"\npriority = 1\nupstreams = [\"https://localhost:{port}\"]\n"
    );
    if let Some(ca) = ca {
        let path = dir.path().join("upstream-ca.pem");
        std::fs::write(&path, ca).unwrap();
        extra.push_str(&format!("\n[upstream]\nca = \"{}\"\n", path.display()));
    }
    Proxy::start(Setup {
        datacenters: vec![("frankfurt", "eu", 1, true), ("virginia", "us", 1, true)],
        extra,
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn https_upstream_verified_against_configured_ca() {
    let (cert, key) = residency_tls::self_signed(&["localhost"]).unwrap();
    let port = https_upstream(&cert, &key).await;
    let dir = TempDir::new("upstream-ca");
    let proxy = proxy_with_https_dc(port, Some(&cert), &dir).await;
    let reply = proxy.client().upload_from(CH, "over tls").await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(reply.header("residency-datacenter"), Some("bern"));
    assert_eq!(&reply.body[..], b"tls upstream got 8");
    proxy.stop().await;
}

#[tokio::test]
async fn https_upstream_with_unknown_certificate_is_not_used() {
    let (cert, key) = residency_tls::self_signed(&["localhost"]).unwrap();
    let (other_ca, _) = residency_tls::self_signed(&["localhost"]).unwrap();
    let port = https_upstream(&cert, &key).await;
    let dir = TempDir::new("upstream-ca");
    let proxy = proxy_with_https_dc(port, Some(&other_ca), &dir).await;
    let reply = proxy.client().upload_from(CH, "must not be sent").await;
    // The TLS failure happens while connecting: nothing was sent, the upstream
    // is marked down, and there is no other permitted data centre for CH.
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.json()["error"], "no_healthy_datacenter");
    assert!(reply.header("retry-after").is_some());
    assert_eq!(
        proxy.counts().values().sum::<usize>(),
        0,
        "no other jurisdiction got it"
    );
    proxy.stop().await;
}
