//! TLS termination: SNI picks the certificate (the first is the default for
//! clients that send no SNI), ALPN picks the HTTP version, TLS 1.2 and 1.3
//! work and nothing older or plain does, and `client_ca` requires client
//! certificates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::*;

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

fn roots(pems: &[String]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for pem in pems {
        store
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    store
}

/// A client limited to `versions`, trusting `pems`, offering HTTP/1.1.
fn client_config(
    versions: &[&'static SupportedProtocolVersion],
    pems: &[String],
    client_cert: Option<(&str, &str)>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(residency_tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(pems));
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// An HTTP/1.1 upload from CH over an established TLS stream.
async fn upload_over(tls: TlsStream<TcpStream>) -> Result<(StatusCode, Bytes), BoxError> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = Request::post("/v1/telemetry")
        .header("host", "localhost")
        .header("x-forwarded-for", CH)
        .body(Full::new(Bytes::from_static(b"cpu=0.93")))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Polls the admin metrics until `name_and_labels` reaches `at_least` (2 s).
async fn metric_reaches(proxy: &Proxy, name_and_labels: &str, at_least: f64) -> f64 {
    let mut value = 0.0;
    for _ in 0..40 {
        let (_, text) = proxy.admin_get("/metrics").await;
        value = metric(&text, name_and_labels).unwrap_or(0.0);
        if value >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    value
}

#[tokio::test]
async fn sni_selects_the_certificate_and_no_sni_gets_the_default() {
    let proxy = Proxy::start(Setup {
        second_cert: Some(vec!["eu.ingest.test"]),
        ..Setup::default()
    })
    .await;
    let (first, second) = (der(&proxy.certs[0]), der(&proxy.certs[1]));
    assert_ne!(first, second);
    for (sni, want, label) in [
        (Some("eu.ingest.test"), &second, "second"),
        (Some("localhost"), &first, "first"),
        // By IP (127.0.0.1, a SAN of the first certificate): no SNI at all.
        (None, &first, "first (default)"),
    ] {
        let before = proxy.upstream("zurich").count();
        let reply = proxy.client().sni(sni).upload_from(CH, "cpu=0.93").await;
        assert_eq!(reply.status, 201, "SNI {sni:?}: {:?}", reply.body);
        assert!(
            reply.peer_cert == *want,
            "SNI {sni:?}: expected the {label} certificate"
        );
        assert_eq!(proxy.upstream("zurich").count(), before + 1);
    }
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "residency_tls_handshakes_total{result=\"success\"}"
        ),
        Some(3.0)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn alpn_and_protocol_versions() {
    let proxy = Proxy::start(Setup::default()).await;

    // ALPN: h2 when offered, http/1.1 otherwise; both upload.
    let reply = proxy.client().h2().upload_from(CH, "over h2").await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(reply.alpn.as_deref(), Some(&b"h2"[..]));
    let reply = proxy.client().upload_from(CH, "over http/1.1").await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(reply.alpn.as_deref(), Some(&b"http/1.1"[..]));
    // Without ALPN the first bytes tell: the h2 preface, or HTTP/1.1.
    for version in [Http::Two, Http::One] {
        let reply = proxy
            .client()
            .version(version)
            .no_alpn()
            .upload_from(CH, "no ALPN")
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        assert_eq!(reply.alpn, None);
    }
    // Having negotiated http/1.1, the h2 preface is not HTTP/2 (RFC 9113
    // §3.2: over TLS, h2 is chosen by ALPN) but a request HTTP/1.1 refuses.
    {
        use tokio::io::AsyncWriteExt;
        let mut tls = proxy.client().connect().await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut tls))
            .await
            .expect("closed");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
        assert!(text.to_ascii_lowercase().contains("\r\ndate: "), "{text:?}");
    }

    // A client speaking only TLS 1.2, and one speaking only TLS 1.3.
    for (version, want) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let config = client_config(&[version], &proxy.certs, None);
        let tls = tls_connect(proxy.addr, config)
            .await
            .unwrap_or_else(|e| panic!("{want:?} handshake: {e}"));
        assert_eq!(tls.get_ref().1.protocol_version(), Some(want));
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (status, body) = upload_over(tls).await.unwrap();
        assert_eq!(status, 201, "{want:?}: {body:?}");
    }
    assert_eq!(proxy.upstream("zurich").count(), 6);

    // Plain HTTP on the TLS port: no HTTP response, the connection closes.
    let answer = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !answer.windows(5).any(|w| w == b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // A TLS 1.1 ClientHello: refused (at most an alert, never a ServerHello).
    let answer = raw_exchange(proxy.addr, &tls11_client_hello()).await;
    assert!(
        answer.first().is_none_or(|b| *b == 0x15),
        "TLS 1.1 got something other than an alert: {answer:02x?}"
    );

    let failures = metric_reaches(
        &proxy,
        "residency_tls_handshakes_total{result=\"failure\"}",
        2.0,
    )
    .await;
    assert!(failures >= 2.0, "handshake failures counted: {failures}");
    assert_eq!(proxy.upstream("zurich").count(), 6, "nothing else arrived");
    proxy.stop().await;
}

/// Writes `bytes` on a fresh TCP connection and reads until the server
/// closes it (which must happen within 5 s); returns what it sent back.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    answer
}

/// A minimal TLS 1.1 ClientHello (no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record, TLS 1.0 framing
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// One small upload from CH over a new connection of `client`; a failed
/// handshake or connection is an `Err`, not a panic.
async fn try_upload(client: &Client) -> Result<Reply, BoxError> {
    let body = Full::new(Bytes::from_static(b"x"))
        .map_err(|e| match e {})
        .boxed();
    client
        .send_body("POST", "/v1/telemetry", &[("x-forwarded-for", CH)], body)
        .await
}

/// Where client certificates are required every handshake is a full one:
/// rustls does not verify a resumed session's client certificate again, so
/// one that expired, or whose CRL passed its `nextUpdate`, since the
/// session began would still be taken. Other listeners still resume.
#[tokio::test]
async fn client_certificate_listeners_do_not_resume_sessions() {
    use rustls::HandshakeKind;
    let (proxy, cert, key, _files) = mtls_proxy("mtls-resume").await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        for (addr, resumes) in [(proxy.addrs[0], true), (proxy.addrs[1], false)] {
            // One client, so its session cache carries over.
            let config = client_config(&[version], &proxy.certs, Some((&cert, &key)));
            let mut kinds = Vec::new();
            for _ in 0..2 {
                let tls = tls_connect(addr, config.clone()).await.unwrap();
                kinds.push(tls.get_ref().1.handshake_kind());
                let (status, body) = upload_over(tls).await.unwrap();
                assert_eq!(status, 201, "{body:?}");
            }
            let second = if resumes {
                HandshakeKind::Resumed
            } else {
                HandshakeKind::Full
            };
            assert_eq!(
                kinds,
                [Some(HandshakeKind::Full), Some(second)],
                "{version:?} at {addr}"
            );
        }
    }
    proxy.stop().await;
}

/// A proxy whose second listener (`proxy.addrs[1]`) requires client
/// certificates of a fresh CA, with one such certificate and its key (PEM)
/// and the directory holding the CA file. (`Setup` has no knob for
/// `[listeners.tls] client_ca`, so the mTLS listener is a second
/// `[[listeners]]` entry, at port 0.)
async fn mtls_proxy(tag: &str) -> (Proxy, String, String, TempDir) {
    let (ca, cert, key) = client_ca_and_cert();
    let files = TempDir::new(tag);
    let ca_path = files.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let proxy = Proxy::start(Setup {
        extra: mtls_listener(0, &ca_path),
        ..Setup::default()
    })
    .await;
    (proxy, cert, key, files)
}

/// A CA and a client certificate (PEM cert, PEM key) signed by it.
fn client_ca_and_cert() -> (String, String, String) {
    let (ca, mut leaves) = client_ca_and_certs(&[None]);
    let (cert, key) = leaves.remove(0);
    (ca, cert, key)
}

#[tokio::test]
async fn client_ca_requires_a_client_certificate() {
    let (proxy, cert, key, _files) = mtls_proxy("mtls").await;
    let mtls: SocketAddr = proxy.addrs[1];

    // Without a client certificate: the TLS 1.2 handshake fails outright; in
    // TLS 1.3 the client may finish first, but the server's alert ends the
    // connection before any request.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = client_config(&[version], &proxy.certs, None);
        let result = match tls_connect(mtls, config).await {
            Ok(tls) => upload_over(tls).await.map(|(s, _)| s),
            Err(e) => Err(e.into()),
        };
        assert!(
            result.is_err(),
            "{version:?} without client cert: {result:?}"
        );
    }
    let reply = try_upload(&Client::new(mtls, &proxy.certs)).await;
    assert!(reply.is_err(), "no client certificate: {reply:?}");
    assert_eq!(proxy.upstream("zurich").count(), 0, "nothing was forwarded");
    let failures = metric_reaches(
        &proxy,
        "residency_tls_handshakes_total{result=\"failure\"}",
        3.0,
    )
    .await;
    assert!(failures >= 3.0, "handshake failures counted: {failures}");

    // A certificate from a CA the listener does not trust: refused too.
    let (_, stranger_cert, stranger_key) = client_ca_and_cert();
    let config = client_config(
        &[&rustls::version::TLS13],
        &proxy.certs,
        Some((&stranger_cert, &stranger_key)),
    );
    let result = match tls_connect(mtls, config).await {
        Ok(tls) => upload_over(tls).await.map(|(s, _)| s),
        Err(e) => Err(e.into()),
    };
    assert!(result.is_err(), "untrusted client cert: {result:?}");

    // With the client certificate, over TLS 1.2 and 1.3: stored.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = client_config(&[version], &proxy.certs, Some((&cert, &key)));
        let tls = tls_connect(mtls, config)
            .await
            .unwrap_or_else(|e| panic!("{version:?} with client cert: {e}"));
        let (status, body) = upload_over(tls).await.unwrap();
        assert_eq!(status, 201, "{version:?}: {body:?}");
    }
    assert_eq!(proxy.upstream("zurich").count(), 2);

    // The first listener still needs no client certificate.
    let reply = proxy.client().upload_from(CH, "no mTLS here").await;
    assert_eq!(reply.status, 201);
    proxy.stop().await;
}

/// `client_crl`: a client certificate its CA's CRL revokes is refused at
/// the handshake, and nothing of its upload is forwarded; a new CRL
/// written over the file applies from the next handshakes, without a
/// restart, while a certificate no CRL lists keeps uploading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_and_a_new_crl_is_reloaded() {
    let pki = ClientPki::new(&[None, None, None]);
    let files = TempDir::new("crl");
    let ca_path = files.path().join("ca.pem");
    let crl_path = files.path().join("crl.pem");
    std::fs::write(&ca_path, &pki.ca).unwrap();
    std::fs::write(&crl_path, pki.crl(1, &[2])).unwrap();
    let proxy = Proxy::start(Setup {
        extra: format!(
            "{}client_crl = \"{}\"\n[timeouts]\nreload_poll = \"100ms\"\n",
            mtls_listener(0, &ca_path),
            crl_path.display()
        ),
        ..Setup::default()
    })
    .await;
    let mtls: SocketAddr = proxy.addrs[1];
    let upload = async |leaf: usize| {
        let (cert, key) = &pki.leaves[leaf];
        let client = Client::new(mtls, &proxy.certs).client_cert(cert, key);
        try_upload(&client).await.map(|reply| reply.status)
    };
    // Serial 1 uploads; serial 2, revoked, does not get a request through.
    assert_eq!(upload(0).await.unwrap(), StatusCode::CREATED);
    let revoked = upload(1).await;
    assert!(revoked.is_err(), "a revoked certificate: {revoked:?}");
    assert_eq!(proxy.upstream("zurich").count(), 1);

    // CRL 2 also revokes serial 1: the next handshakes refuse it, serial 3
    // still uploads.
    let crl = files.path().join("crl.pem.new");
    std::fs::write(&crl, pki.crl(2, &[1, 2])).unwrap();
    std::fs::rename(&crl, &crl_path).unwrap();
    eventually("the new CRL refuses serial 1", async || {
        upload(0).await.is_err()
    })
    .await;
    assert_eq!(upload(2).await.unwrap(), StatusCode::CREATED);
    proxy.stop().await;
}
