//! The HTTPS clients that send the uploads: hyper-util's pooled legacy client
//! (HTTP/1.1 keep-alive, ALPN `http/1.1`) over [`OriginConnector`], which
//! opens the TCP connection and, for `--convey proxy-v2`, writes a PROXY v2
//! header naming the origin address before TLS starts. With PROXY v2 every
//! origin address gets its own client, so a pooled connection is only ever
//! reused for the address its header named.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::plan::{Plan, Trust};
use super::spec::Convey;

/// TCP connect (and PROXY header write) deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pooled client for one origin address (or for all, with XFF).
pub type UploadClient = Client<HttpsConnector<OriginConnector>, Full<Bytes>>;

/// The clients of one run.
pub struct Clients {
    shared: Option<UploadClient>,
    per_origin: HashMap<IpAddr, UploadClient>,
}

impl Clients {
    /// One client for XFF, one per distinct origin address for PROXY v2.
    pub fn build(plan: &Plan) -> anyhow::Result<Clients> {
        let tls = Arc::new(tls_config(&plan.trust)?);
        let client = |proxy_source: Option<IpAddr>| -> UploadClient {
            let mut https =
                HttpsConnector::from((OriginConnector { proxy_source }, Arc::clone(&tls)));
            https.enforce_https();
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(usize::MAX)
                .build(https)
        };
        Ok(match plan.convey {
            Convey::Xff => Clients {
                shared: Some(client(None)),
                per_origin: HashMap::new(),
            },
            Convey::ProxyV2 => Clients {
                shared: None,
                per_origin: plan
                    .origins
                    .values()
                    .flatten()
                    .map(|addr| (*addr, client(Some(*addr))))
                    .collect(),
            },
        })
    }

    /// The client to send an upload from `origin` with.
    pub fn for_origin(&self, origin: IpAddr) -> Option<&UploadClient> {
        self.shared
            .as_ref()
            .or_else(|| self.per_origin.get(&origin))
    }
}

/// One TLS handshake with the target, as the uploads will make it (from
/// the first origin, through its PROXY header with `--convey proxy-v2`),
/// before the run: a certificate the client refuses would fail every
/// upload for the whole run. `Some(why, with what to do)` only for that;
/// a target that cannot be reached is the run's to measure.
pub async fn certificate_refused(plan: &Plan) -> anyhow::Result<Option<String>> {
    use tower_service::Service as _;
    let proxy_source = match plan.convey {
        Convey::Xff => None,
        Convey::ProxyV2 => plan.origins.values().flatten().next().copied(),
    };
    let tls = Arc::new(tls_config(&plan.trust)?);
    let mut https = HttpsConnector::from((OriginConnector { proxy_source }, tls));
    https.enforce_https();
    let attempt = tokio::time::timeout(plan.request_timeout, https.call(plan.target.clone()));
    let Ok(Err(e)) = attempt.await else {
        return Ok(None);
    };
    // Not reached (refused, timed out): the run measures that. A TLS
    // handshake that fails — a certificate refused, or a target that does
    // not speak TLS — would fail every upload alike.
    let tls = residency_tls::error_chain(&*e).find_map(|err| err.downcast_ref::<rustls::Error>());
    Ok(tls.map(|t| match residency_tls::refusal_hint(t) {
        Some(hint) => format!("{e}: {hint}"),
        None => format!(
            "{e}: check that --target is the proxy's TLS listener, and that --ca holds the CA that issued its certificate (--insecure accepts any, for test setups)"
        ),
    }))
}

/// The client TLS configuration: TLS 1.2/1.3, ring, ALPN `http/1.1`.
pub fn tls_config(trust: &Trust) -> anyhow::Result<ClientConfig> {
    let mut config = match trust {
        Trust::System => residency_tls::client_config(None)?,
        Trust::CaPem(pem) => residency_tls::client_config(Some(pem))?,
        Trust::InsecureAcceptAnyCertificate => {
            let provider = residency_tls::provider();
            ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(InsecureAcceptAnyCertificate {
                    provider,
                }))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `--insecure`: a certificate verifier that accepts ANY server certificate
/// for any name. Handshake signatures are still checked (so the peer holds
/// the key of the certificate it sent), but nothing ties that certificate to
/// the target. For load tests against self-signed test setups only.
#[derive(Debug)]
pub struct InsecureAcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for InsecureAcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects TCP to the URI's host and port; with `proxy_source`, first
/// writes a PROXY v2 header naming that address as the client. TLS is done
/// on top by `hyper_rustls::HttpsConnector`.
#[derive(Debug, Clone)]
pub struct OriginConnector {
    pub proxy_source: Option<IpAddr>,
}

impl tower_service::Service<Uri> for OriginConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let source = self.proxy_source;
        Box::pin(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, connect(uri, source))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
        })
    }
}

async fn connect(uri: Uri, proxy_source: Option<IpAddr>) -> io::Result<TokioIo<TcpStream>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL without a host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let mut stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    if let Some(source) = proxy_source {
        let local = stream.local_addr()?;
        let header = proxy_v2_header(SocketAddr::new(source, local.port()), stream.peer_addr()?)?;
        stream.write_all(&header).await?;
    }
    Ok(TokioIo::new(stream))
}

/// A PROXY v2 `PROXY`/`STREAM` header from `source` to `destination`. Mixed
/// address families are written as IPv6 (the IPv4 side IPv4-mapped), since
/// the header carries one family.
pub fn proxy_v2_header(source: SocketAddr, destination: SocketAddr) -> io::Result<Vec<u8>> {
    let (source, destination) = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (source, destination)
        }
        _ => (as_v6(source), as_v6(destination)),
    };
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()
}

fn as_v6(addr: SocketAddr) -> SocketAddr {
    let ip: Ipv6Addr = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SocketAddr::new(IpAddr::V6(ip), addr.port())
}
