//! compare-floor: the least a TLS-terminating HTTP/1.1 reverse proxy built
//! on residency-proxy's stack costs per request, for `instructions.py
//! --proxies floor`.
//!
//! It does what every such proxy must: terminate TLS (tokio-rustls, ring),
//! parse the request (hyper's server), send it upstream on a kept-alive
//! connection (hyper's client, one upstream connection per client
//! connection, made when the client connects), stream the body both ways
//! and relay the answer. It does nothing else: no header rewriting, no
//! GeoIP, no policy, no timeouts, no metrics, no logs, no limits. So its
//! count is a floor for residency-proxy's: what residency-proxy spends
//! above it is its own work and the way it drives the libraries.
//!
//! Usage: `compare-floor LISTEN UPSTREAM CERT_PEM KEY_PEM`, e.g.
//! `compare-floor 127.0.0.1:18446 127.0.0.1:18080 cert.pem key.pem`.
//!
//! hyper's buffers are left at hyper's defaults unless `FLOOR_SERVER_MAX_BUF`
//! or `FLOOR_CLIENT_MAX_BUF` (bytes) set the server's or the client's
//! `max_buf_size`; `memory_slope.py` sets them to residency-proxy's (16 KiB
//! towards the client, 64 KiB towards the data centre) for its `floor-rp`.

use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Sender = Arc<Mutex<Option<client::SendRequest<Incoming>>>>;

async fn relay(
    upstream: Sender,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::Error> {
    // HTTP/1.1 serves one request at a time per connection: the sender is
    // always back before the next request comes.
    let mut tx = upstream
        .lock()
        .unwrap()
        .take()
        .expect("one request at a time");
    let answer = async {
        tx.ready().await?;
        tx.send_request(req).await
    }
    .await;
    *upstream.lock().unwrap() = Some(tx);
    answer
}

/// hyper's `max_buf_size` for the server and the client side; `None`:
/// hyper's default.
#[derive(Clone, Copy)]
struct Buffers {
    server: Option<usize>,
    client: Option<usize>,
}

async fn serve(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    upstream: std::net::SocketAddr,
    buffers: Buffers,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let mut client = client::Builder::new();
    if let Some(max) = buffers.client {
        client.max_buf_size(max);
    }
    let Ok((tx, conn)) = client.handshake(TokioIo::new(up)).await else {
        return;
    };
    tokio::spawn(conn);
    let sender: Sender = Arc::new(Mutex::new(Some(tx)));
    let service = service_fn(move |req| relay(sender.clone(), req));
    let mut server = server::Builder::new();
    if let Some(max) = buffers.server {
        server.max_buf_size(max);
    }
    let _ = server
        .keep_alive(true)
        .writev(false)
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// A `max_buf_size` from the environment (hyper's minimum is 8192).
fn max_buf(var: &str) -> Option<usize> {
    let value = std::env::var(var).ok()?;
    match value.parse::<usize>() {
        Ok(n) if n >= 8192 => Some(n),
        _ => {
            eprintln!("{var}: `{value}` is not a byte count of at least 8192");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, cert, key] = args.as_slice() else {
        eprintln!("usage: compare-floor LISTEN UPSTREAM CERT_PEM KEY_PEM");
        std::process::exit(2);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|c| c.collect())
        .unwrap_or_else(|e| panic!("{cert}: {e}"));
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.max_early_data_size = 0;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let upstream: std::net::SocketAddr = upstream.parse().expect("UPSTREAM: an address:port");
    let buffers = Buffers {
        server: max_buf("FLOOR_SERVER_MAX_BUF"),
        client: max_buf("FLOOR_CLIENT_MAX_BUF"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(listen.as_str()).await.expect("LISTEN");
        // SIGTERM ends the process normally, so valgrind writes its profile.
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        loop {
            tokio::select! {
                _ = term.recv() => return,
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else {
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(serve(acceptor.clone(), tcp, upstream, buffers));
                }
            }
        }
    });
}
