//! The small layer every integration test stands on: real files in a temp
//! directory (rcgen certificate, mmdb built by the project), real recording
//! upstream servers on 127.0.0.1:0, the real proxy in-process, and a real
//! TLS client speaking HTTP/1.1 or h2 from a chosen loopback address.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use residency_proxy::config::Config;
use residency_proxy::metrics::Metrics;
use residency_proxy::state::{Instance, Snapshot};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot, Notify};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// GeoIP rows for the tests (documentation ranges plus loopback peers).
pub const GEOIP_CSV: &str = "network,country
192.0.2.0/24,CH
198.51.100.0/24,DE
203.0.113.0/25,US
203.0.113.128/26,JP
203.0.113.192/26,GB
2001:db8:c0::/48,CH
2a02:d000::/32,CH
127.0.0.3/32,US
";

pub const CH: &str = "192.0.2.10";
pub const DE: &str = "198.51.100.20";
pub const US: &str = "203.0.113.30";
pub const JP: &str = "203.0.113.140";
pub const GB: &str = "203.0.113.200";
pub const UNKNOWN: &str = "100.64.0.1";

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rp-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: http::Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A TCP connection to `addr` from `ip`, a loopback address
/// (127.0.0.0/8): another client, to a limit per client address.
pub async fn connect_from(ip: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ip}:0").parse().expect("an IPv4 address"))?;
    socket.connect(addr).await
}

/// Whether a plain HTTP/1.1 server serves `tcp`: `ask` written, an answer
/// beginning with `answer` read to its end within 5 s.
pub async fn served(mut tcp: tokio::net::TcpStream, ask: &[u8], answer: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if tcp.write_all(ask).await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got));
    matches!(read.await, Ok(Ok(_))) && got.starts_with(answer)
}

/// A plain HTTP/1.1 listener at `addr` that lets one client address hold
/// `max` connections: with `max` held from 127.0.0.1, one more from it is
/// not served (`ask` answered by a reply beginning `answer`) while one
/// from 127.0.0.2 is; `then` runs (a check of the listener's count, say);
/// a held connection is served, and 127.0.0.1 gets a place again.
pub async fn assert_one_address_is_capped(
    addr: SocketAddr,
    max: usize,
    ask: &[u8],
    answer: &[u8],
    then: impl AsyncFnOnce(),
) {
    let from = |ip: &'static str| connect_from(ip, addr);
    let served = |tcp| served(tcp, ask, answer);
    let mut held = Vec::new();
    for _ in 0..max {
        held.push(from("127.0.0.1").await.unwrap());
    }
    // Give the accept loop time to take them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !served(from("127.0.0.1").await.unwrap()).await,
        "connection {} from 127.0.0.1 was served",
        max + 1
    );
    assert!(
        served(from("127.0.0.2").await.unwrap()).await,
        "another client was not served"
    );
    then().await;
    assert!(
        served(held.pop().unwrap()).await,
        "a held connection is served"
    );
    eventually("a place for 127.0.0.1 again", async || {
        served(from("127.0.0.1").await.unwrap()).await
    })
    .await;
}

/// Polls `check` every 50 ms for up to 10 s.
pub async fn eventually<F: AsyncFn() -> bool>(what: &str, check: F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

/// A real HTTP/1.1 upstream that records every complete request and answers
/// 201 after reading the whole body (with `x-test-answer-early: <status>`,
/// at its first body bytes with that status — `1`: 201 —, reading and
/// recording the rest after answering; with
/// `x-test-refuse-early: <status>`, at once with that status, closing
/// without reading the body; with `x-test-answer-chunked: <n>`, its
/// answer of unknown length, sent chunked, `n` bytes of `x` after its text).
#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Notified when a request's first body bytes arrive.
    pub first_bytes: Arc<Notify>,
    /// Requests whose body broke off (not recorded).
    pub broken: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// As [`Upstream::start`], on `addr` (a data centre that comes back
    /// where the proxy expects it).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let up = Upstream {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            first_bytes: Arc::new(Notify::new()),
            broken: Arc::default(),
        };
        let server = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| server.clone().record(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }

    async fn record(self, req: Request<Incoming>) -> Result<Response<Answer>, Infallible> {
        if req.method() == http::Method::GET && req.uri().path() == "/healthz" {
            // The proxy's active health checks: answered, not recorded.
            return Ok(status(StatusCode::OK, "ok"));
        }
        // A data centre that refuses at once and closes without reading
        // the body (hyper closes a connection whose body was not read).
        let refuse = req
            .headers()
            .get("x-test-refuse-early")
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
        if let Some(code) = refuse {
            let code = StatusCode::from_u16(code).unwrap();
            let mut r = status(code, r#"{"error":"datacenter_refused"}"#);
            r.headers_mut()
                .insert(http::header::CONNECTION, "close".parse().unwrap());
            return Ok(r);
        }
        if let Some(early) = req.headers().get("x-test-answer-early") {
            let code = match early.to_str().ok().and_then(|v| v.parse::<u16>().ok()) {
                Some(code) if code >= 100 => StatusCode::from_u16(code).unwrap(),
                _ => StatusCode::CREATED,
            };
            let req_chunked = req.headers().contains_key("x-test-answer-chunked");
            let (tx, rx) = oneshot::channel();
            tokio::spawn(self.clone().read_and_record(req, Some(tx)));
            let _ = rx.await;
            let mut answer = status(code, "answered early");
            answer.body_mut().chunked = req_chunked;
            return Ok(answer);
        }
        let chunked = req
            .headers()
            .get("x-test-answer-chunked")
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let mut answer = self.read_and_record(req, None).await;
        if let Some(padding) = chunked {
            let body = answer.body_mut();
            let mut text = body.data.take().unwrap_or_default().to_vec();
            text.resize(text.len() + padding, b'x');
            body.data = Some(Bytes::from(text));
            body.chunked = true;
        }
        Ok(answer)
    }

    /// Reads the body (telling `first` when its first bytes arrive), then
    /// records the request.
    async fn read_and_record(
        self,
        req: Request<Incoming>,
        mut first: Option<oneshot::Sender<()>>,
    ) -> Response<Answer> {
        let (parts, mut body) = req.into_parts();
        let mut data = Vec::new();
        let mut notified = false;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                self.broken
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return status(StatusCode::BAD_REQUEST, "body failed");
            };
            if let Some(d) = frame.data_ref() {
                if !notified && !d.is_empty() {
                    self.first_bytes.notify_one();
                    notified = true;
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                }
                data.extend_from_slice(d);
            }
        }
        let n = data.len();
        // A test can make the data centre slow to answer.
        let delay = parts
            .headers
            .get("x-test-answer-delay-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        self.received.lock().unwrap().push(Received {
            method: parts.method,
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers,
            body: Bytes::from(data),
        });
        status(
            StatusCode::CREATED,
            &format!("stored {n} bytes in {}", self.name),
        )
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn last(&self) -> Received {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream received a request")
    }
}

fn status(code: StatusCode, text: &str) -> Response<Answer> {
    let mut r = Response::new(Answer {
        data: Some(Bytes::from(text.to_string())),
        chunked: false,
    });
    *r.status_mut() = code;
    r
}

/// [`Upstream`]'s answer body: one frame, its length announced
/// (`Content-Length`) unless `chunked`, when it goes chunked and its end
/// comes after its data.
pub struct Answer {
    data: Option<Bytes>,
    chunked: bool,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        !self.chunked && self.data.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match (&self.data, self.chunked) {
            (_, true) => hyper::body::SizeHint::default(),
            (Some(d), false) => hyper::body::SizeHint::with_exact(d.len() as u64),
            (None, false) => hyper::body::SizeHint::with_exact(0),
        }
    }
}

/// A running proxy with its upstreams.
pub struct Proxy {
    pub dir: TempDir,
    pub addr: SocketAddr,
    /// Every ingest listener's bound address, in config order (`addr` is
    /// the first): a listener configured at port 0 in `extra` is found here.
    pub addrs: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub upstreams: BTreeMap<String, Upstream>,
    /// PEM of the default certificate (and of the second one, if any).
    pub certs: Vec<String>,
    pub config_path: PathBuf,
    pub instance: Arc<Instance>,
    /// The transparency log listener, when `Setup::transparency` is set.
    pub log_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// What a test proxy looks like. Data centres: (name, jurisdiction, priority, live).
pub struct Setup {
    pub datacenters: Vec<(&'static str, &'static str, u32, bool)>,
    pub listener_extra: String,
    pub extra: String,
    pub trusted: Vec<&'static str>,
    pub second_cert: Option<Vec<&'static str>>,
    /// Enables the transparency log (key `log.key`, origin [`LOG_ORIGIN`],
    /// listener on a free port); these lines are added to `[transparency]`.
    pub transparency: Option<String>,
    /// The log's origin (and key name) when `transparency` is set.
    pub log_origin: &'static str,
    /// The log's signing key (PKCS#8) instead of a fresh one.
    pub log_pkcs8: Option<Vec<u8>>,
    /// The log listener's port instead of a free one.
    pub log_port: Option<u16>,
}

/// The transparency log's name in test setups.
pub const LOG_ORIGIN: &str = "test.example/residency-log";

/// Writes a fresh Ed25519 key to `dir/log.key`; returns the verifier key.
pub fn log_key(dir: &Path) -> String {
    use residency_log::note::Signer;
    let pkcs8 = Signer::generate_pkcs8().unwrap();
    std::fs::write(dir.join("log.key"), &pkcs8).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.join("log.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    Signer::from_pkcs8(LOG_ORIGIN, &pkcs8)
        .unwrap()
        .verifier_key()
}

impl Setup {
    /// These data centres, with `name`'s upstream a port nothing listens on.
    pub fn with_down(mut self, name: &str) -> Setup {
        for dc in &mut self.datacenters {
            if dc.0 == name {
                dc.3 = false;
            }
        }
        self
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            datacenters: vec![
                ("zurich", "ch", 1, true),
                ("frankfurt", "eu", 1, true),
                ("london", "uk", 2, true),
                ("virginia", "us", 1, true),
            ],
            listener_extra: String::new(),
            extra: String::new(),
            trusted: vec!["127.0.0.1"],
            second_cert: None,
            transparency: None,
            log_origin: LOG_ORIGIN,
            log_pkcs8: None,
            log_port: None,
        }
    }
}

pub const POLICY: &str = r#"
[jurisdictions.ch]
countries = ["CH", "LI"]
[jurisdictions.eu]
countries = ["AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"]
[jurisdictions.uk]
countries = ["GB"]
store_in = ["uk", "eu"]
[jurisdictions.us]
countries = ["US"]
"#;

impl Proxy {
    pub async fn start(setup: Setup) -> Proxy {
        let dir = TempDir::new("proxy");
        let (cert, key) = residency_tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        std::fs::write(dir.path().join("a.pem"), &cert).unwrap();
        std::fs::write(dir.path().join("a.key"), &key).unwrap();
        let mut certs = vec![cert];
        let mut cert_list = r#"{ cert = "a.pem", key = "a.key" }"#.to_string();
        if let Some(names) = &setup.second_cert {
            let (cert, key) = residency_tls::self_signed(names).unwrap();
            std::fs::write(dir.path().join("b.pem"), &cert).unwrap();
            std::fs::write(dir.path().join("b.key"), &key).unwrap();
            certs.push(cert);
            cert_list.push_str(r#", { cert = "b.pem", key = "b.key" }"#);
        }
        let rows = residency_tools::geoip::parse_csv(GEOIP_CSV).unwrap();
        let db = residency_tools::geoip::build_country_db(&rows, 1_750_000_000).unwrap();
        std::fs::write(dir.path().join("geo.mmdb"), db).unwrap();

        let mut upstreams = BTreeMap::new();
        let mut dcs = String::new();
        for (name, jurisdiction, priority, live) in &setup.datacenters {
            let addr = if *live {
                let up = Upstream::start(name).await;
                let addr = up.addr;
                upstreams.insert(name.to_string(), up);
                addr
            } else {
                closed_port().await
            };
            dcs.push_str(&format!(
                "\n[datacenters.{name}]\njurisdiction = \"{jurisdiction}\"\npriority = {priority}\nupstreams = [\"http://{addr}\"]\n"
            ));
        }
        let trusted: Vec<String> = setup.trusted.iter().map(|t| format!("\"{t}\"")).collect();
        let mut extra = setup.extra.clone();
        if let Some(lines) = &setup.transparency {
            match &setup.log_pkcs8 {
                Some(pkcs8) => std::fs::write(dir.path().join("log.key"), pkcs8).unwrap(),
                None => {
                    log_key(dir.path());
                }
            }
            let interval = if lines.contains("checkpoint_interval") {
                ""
            } else {
                "checkpoint_interval = \"50ms\""
            };
            extra.push_str(&format!(
                "\n[transparency]\ndirectory = \"log\"\norigin = \"{origin}\"\nsigning_key = \"log.key\"\naddress = \"127.0.0.1:{port}\"\n{interval}\n{lines}\n",
                origin = setup.log_origin,
                port = setup.log_port.unwrap_or(0),
            ));
        }
        let toml = format!(
            r#"
[[listeners]]
address = "127.0.0.1:0"
trusted_proxies = [{trusted}]
{listener_extra}
[listeners.tls]
certificates = [{cert_list}]

[admin]
address = "127.0.0.1:0"

[geoip]
database = "geo.mmdb"
{POLICY}
{dcs}
{extra}
"#,
            trusted = trusted.join(", "),
            listener_extra = setup.listener_extra,
        );
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, toml).unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let state = Snapshot::build(config).unwrap_or_else(|e| panic!("{e}"));
        let instance =
            Instance::new(state, Metrics::new().unwrap()).unwrap_or_else(|e| panic!("{e}"));
        let bound = residency_proxy::server::bind(instance.clone())
            .await
            .unwrap()
            .watch(config_path.clone());
        let addrs = bound.addresses();
        let addr = addrs[0];
        let admin = bound.admin_address().unwrap();
        let log_addr = bound.transparency_address();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async move {
            let _ = stopped.await;
        }));
        Proxy {
            dir,
            addr,
            addrs,
            admin,
            upstreams,
            certs,
            config_path,
            instance,
            log_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn upstream(&self, name: &str) -> &Upstream {
        &self.upstreams[name]
    }

    /// Requests each upstream received, by name.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.upstreams
            .iter()
            .map(|(k, u)| (k.clone(), u.count()))
            .collect()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr, &self.certs)
    }

    /// GET on the admin listener; returns status and body text.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        self.admin_request("GET", path).await
    }

    /// Any method on the admin listener; returns status and body text.
    pub async fn admin_request(&self, method: &str, path: &str) -> (StatusCode, String) {
        plain_request(self.admin, method, path).await
    }

    /// GET on the transparency log listener.
    pub async fn log_get(&self, path: &str) -> (StatusCode, String) {
        plain_request(self.log_addr.expect("transparency configured"), "GET", path).await
    }

    /// The transparency log's verifier key.
    pub fn log_key(&self) -> String {
        let log = self.instance.log.as_ref().expect("log configured");
        log.current().signer().verifier_key()
    }

    /// Waits (at most 10 s) until the published checkpoint covers `size`
    /// records: checkpoints are written every `checkpoint_interval`, later
    /// than that on a loaded machine.
    pub async fn checkpoint_covers(&self, key: &str, size: u64) {
        use residency_log::note::{Checkpoint, Verifier};
        let verifier = Verifier::parse(key).unwrap();
        eventually(&format!("a checkpoint of {size} records"), async || {
            let (_, note) = self.log_get("/checkpoint").await;
            Checkpoint::open(&note, &verifier).is_ok_and(|c| c.size >= size)
        })
        .await;
    }

    /// The log's base URL for `verify --log`.
    pub fn log_url(&self) -> String {
        format!("http://{}", self.log_addr.expect("transparency configured"))
    }

    /// Stops the proxy and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Every test's proxy stops at once (its requests are answered):
            // one that does not waits on something that outlived its
            // request, such as an upstream connection held after it failed.
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the proxy stops within 10 s of its stop signal")
                .expect("the proxy's task ends without a panic")
                .expect("the proxy stops cleanly");
        }
    }
}

/// One plain HTTP/1.1 request; returns status and body text.
pub async fn plain_request(addr: SocketAddr, method: &str, path: &str) -> (StatusCode, String) {
    let (status, _, body) = plain_exchange(addr, method, path).await;
    (status, body)
}

/// As [`plain_request`], with the response's header fields.
pub async fn plain_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    plain_exchange_with(addr, method, path, &[]).await
}

/// As [`plain_exchange`], with these request header fields too.
pub async fn plain_exchange_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange_on(stream, addr, method, path, fields).await
}

/// As [`plain_exchange`], from the loopback address `source` (another
/// client address than 127.0.0.1).
pub async fn plain_exchange_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    exchange_on(stream, addr, method, path, &[]).await
}

async fn exchange_on(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    // The listener's address, unless the fields name another host.
    if !fields
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        req = req.header("host", addr.to_string());
    }
    for (name, value) in fields {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A loopback port with nothing listening (connections are refused).
pub async fn closed_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    One,
    Two,
}

/// A TLS client with knobs for what the proxy should see.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub roots: Vec<String>,
    pub version: Http,
    /// Source address to connect from (e.g. 127.0.0.2 for an untrusted peer).
    pub from: IpAddr,
    /// `None`: connect by IP, which sends no SNI.
    pub sni: Option<String>,
    /// Bytes written before the TLS handshake (a PROXY header).
    pub preamble: Vec<u8>,
    /// Offer the version by ALPN (off: the server must tell by the bytes).
    pub alpn: bool,
    /// A client certificate and its key (PEM), for mTLS listeners.
    pub client_cert: Option<(String, String)>,
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer_cert: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub fn new(addr: SocketAddr, roots: &[String]) -> Client {
        Client {
            addr,
            roots: roots.to_vec(),
            version: Http::One,
            from: "127.0.0.1".parse().unwrap(),
            sni: Some("localhost".into()),
            preamble: Vec::new(),
            alpn: true,
            client_cert: None,
        }
    }

    pub fn client_cert(mut self, cert: &str, key: &str) -> Client {
        self.client_cert = Some((cert.to_string(), key.to_string()));
        self
    }

    pub fn no_alpn(mut self) -> Client {
        self.alpn = false;
        self
    }

    pub fn h2(mut self) -> Client {
        self.version = Http::Two;
        self
    }

    pub fn version(mut self, v: Http) -> Client {
        self.version = v;
        self
    }

    pub fn from(mut self, ip: &str) -> Client {
        self.from = ip.parse().unwrap();
        self
    }

    pub fn sni(mut self, name: Option<&str>) -> Client {
        self.sni = name.map(str::to_string);
        self
    }

    pub fn preamble(mut self, bytes: Vec<u8>) -> Client {
        self.preamble = bytes;
        self
    }

    fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for pem in &self.roots {
            use rustls::pki_types::pem::PemObject;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(residency_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match &self.client_cert {
            None => config.with_no_client_auth(),
            Some((cert, key)) => {
                use rustls::pki_types::pem::PemObject;
                config
                    .with_client_auth_cert(
                        vec![
                            rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes())
                                .unwrap(),
                        ],
                        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                    )
                    .unwrap()
            }
        };
        config.alpn_protocols = match self.version {
            _ if !self.alpn => Vec::new(),
            Http::One => vec![b"http/1.1".to_vec()],
            Http::Two => vec![b"h2".to_vec()],
        };
        Arc::new(config)
    }

    /// Opens a TLS connection, or returns the error that stopped it.
    pub async fn connect(
        &self,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        use tokio::io::AsyncWriteExt;
        let socket = match self.from {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(self.from, 0))?;
        let mut tcp = socket.connect(self.addr).await?;
        if !self.preamble.is_empty() {
            tcp.write_all(&self.preamble).await?;
        }
        self.handshake(tcp).await
    }

    /// The TLS handshake on a TCP connection the caller opened.
    pub async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = match &self.sni {
            Some(n) => ServerName::try_from(n.clone()).unwrap(),
            None => ServerName::IpAddress(self.addr.ip().into()),
        };
        tokio_rustls::TlsConnector::from(self.tls_config())
            .connect(name, tcp)
            .await
    }

    /// Sends one request with a complete body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let body: Body = Full::new(body.into()).map_err(|e| match e {}).boxed();
        self.send_body(method, path, headers, body)
            .await
            .expect("request completes")
    }

    /// POSTs `body` as if from client `origin` (via X-Forwarded-For).
    pub async fn upload_from(&self, origin: &str, body: &str) -> Reply {
        self.send(
            "POST",
            "/v1/telemetry",
            &[("x-forwarded-for", origin)],
            body.to_string(),
        )
        .await
    }

    /// Sends one request with any body; errors are returned, not panicked on.
    pub async fn send_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Reply, BoxError> {
        let (resp, peer_cert, alpn) = self.response(method, path, headers, body).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
            peer_cert,
            alpn,
        })
    }

    /// Sends one request and returns the response as its head arrives,
    /// its body unread.
    pub async fn response(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<(Response<Incoming>, Vec<u8>, Option<Vec<u8>>), BoxError> {
        let tls = self.connect().await?;
        let peer_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        // `https://host/path`: for that host (`Host`, or `:authority`);
        // else, as a client does, for the name it connected to.
        let (host, path) = match path.strip_prefix("https://") {
            Some(rest) => rest.split_at(rest.find('/').unwrap_or(rest.len())),
            None => (self.sni.as_deref().unwrap_or("localhost"), path),
        };
        let mut req = Request::builder().method(method);
        req = match self.version {
            Http::One => req.uri(path).header("host", host),
            Http::Two => req.uri(format!("https://{host}{path}")),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body)?;
        let io = TokioIo::new(tls);
        let resp = match self.version {
            Http::One => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                send.send_request(req).await?
            }
            Http::Two => {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                let resp = send.send_request(req).await?;
                // Kept open a while after the answer, as a pooled client
                // keeps it: hyper drops an HTTP/2 connection as soon as its
                // last handle and request body are gone, discarding request
                // DATA still queued in it (an early answer can come before
                // the body is flushed), and the proxy then rightly sees an
                // upload that broke off.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    drop(send);
                });
                resp
            }
        };
        Ok((resp, peer_cert, alpn))
    }
}

/// A request body fed chunk by chunk from a channel.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// A streaming body and the sender that feeds it.
pub fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody(rx).boxed())
}

/// `residency_*` metric lines of an exposition, for assertions.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------
// The real binary as a subprocess
// ---------------------------------------------------------------------------

/// Kills and reaps the child when dropped (also when the test panics).
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first 12 bytes read (`HTTP/1.1 NNN`), within 10 s (`what` names
/// what did not come).
pub async fn status_line(read: &mut (impl tokio::io::AsyncRead + Unpin), what: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), read.read_exact(&mut answer))
        .await
        .expect(what)
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A free loopback port, below the ephemeral range so that no client
/// connection takes it before the server it is meant for binds it
/// ([`residency_tools::ports`]).
pub fn free_port() -> u16 {
    residency_tools::ports::free_port().unwrap()
}

/// GET `/readyz` on the admin listener; true on 200.
pub fn ready(admin: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// The real `residency-proxy serve` in a child process, with fixed free
/// ports, its own files and its log captured.
pub struct Binary {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub certs: Vec<String>,
    pub log_path: PathBuf,
    pub child: Killed,
}

/// Where a [`Binary`]'s stderr goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StderrTo {
    /// A file, read by [`Binary::log`].
    File,
    /// A pipe nobody reads (kept open).
    Unread,
    /// A pipe whose reader has gone: every write fails (`EPIPE`).
    Closed,
    /// `/dev/full`: every write fails (`ENOSPC`), as to a log file on a
    /// full disk.
    Full,
}

impl Binary {
    /// Starts the binary with `datacenters` (name, jurisdiction, upstream)
    /// and `extra` TOML, and waits until `/readyz` answers 200.
    pub async fn start(tag: &str, datacenters: &[(&str, &str, SocketAddr)], extra: &str) -> Binary {
        Self::start_wrapped(tag, datacenters, extra, &[]).await
    }

    /// As [`Binary::start`], run under `wrapper` (e.g. `prlimit --fsize=N --`).
    pub async fn start_wrapped(
        tag: &str,
        datacenters: &[(&str, &str, SocketAddr)],
        extra: &str,
        wrapper: &[&str],
    ) -> Binary {
        let mut binary = Self::spawn_wrapped(tag, datacenters, extra, wrapper);
        binary.wait_until_ready().await;
        binary
    }

    /// As [`Binary::start`], its stderr `to` rather than a file.
    pub async fn start_with_stderr(
        tag: &str,
        datacenters: &[(&str, &str, SocketAddr)],
        extra: &str,
        to: StderrTo,
    ) -> Binary {
        let mut binary = Self::spawn_with(tag, datacenters, extra, &[], to);
        binary.wait_until_ready().await;
        binary
    }

    async fn wait_until_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !ready(self.admin) {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                panic!("proxy exited with {status}: {}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not ready within 20 s: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// As [`Binary::start_wrapped`], without waiting for it to be ready.
    pub fn spawn_wrapped(
        tag: &str,
        datacenters: &[(&str, &str, SocketAddr)],
        extra: &str,
        wrapper: &[&str],
    ) -> Binary {
        Self::spawn_with(tag, datacenters, extra, wrapper, StderrTo::File)
    }

    fn spawn_with(
        tag: &str,
        datacenters: &[(&str, &str, SocketAddr)],
        extra: &str,
        wrapper: &[&str],
        stderr: StderrTo,
    ) -> Binary {
        let dir = TempDir::new(tag);
        let (cert, key) = residency_tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        std::fs::write(dir.path().join("a.pem"), &cert).unwrap();
        std::fs::write(dir.path().join("a.key"), &key).unwrap();
        let rows = residency_tools::geoip::parse_csv(GEOIP_CSV).unwrap();
        let db = residency_tools::geoip::build_country_db(&rows, 1_750_000_000).unwrap();
        std::fs::write(dir.path().join("geo.mmdb"), db).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = format!(
            "[[listeners]]\naddress = \"{addr}\"\ntrusted_proxies = [\"127.0.0.1\"]\n[listeners.tls]\n\
             certificates = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n[admin]\naddress = \"{admin}\"\n\
             [geoip]\ndatabase = \"geo.mmdb\"\n{extra}\n{POLICY}\n"
        );
        let mut used = std::collections::HashSet::new();
        for (name, jurisdiction, upstream) in datacenters {
            // The proxy refuses one server named as two data centres: a
            // test's shared upstream is reached through a relay of its own
            // by each data centre after the first.
            let upstream = match used.insert(*upstream) {
                true => *upstream,
                false => relay(*upstream),
            };
            config.push_str(&format!(
                "[datacenters.{name}]\njurisdiction = \"{jurisdiction}\"\nupstreams = [\"http://{upstream}\"]\n"
            ));
        }
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("proxy.log");
        let binary = env!("CARGO_BIN_EXE_residency-proxy");
        let mut command = match wrapper {
            [] => std::process::Command::new(binary),
            [program, args @ ..] => {
                let mut c = std::process::Command::new(program);
                c.args(args).arg(binary);
                c
            }
        };
        let mut child = command
            .args(["--log-level", "info", "serve", "--config"])
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(match stderr {
                StderrTo::File => std::fs::File::create(&log_path).unwrap().into(),
                StderrTo::Unread | StderrTo::Closed => std::process::Stdio::piped(),
                StderrTo::Full => std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap()
                    .into(),
            })
            .spawn()
            .expect("start residency-proxy serve");
        if stderr == StderrTo::Closed {
            drop(child.stderr.take());
        }
        Binary {
            dir,
            addr,
            admin,
            certs: vec![cert],
            log_path,
            child: Killed(child),
        }
    }

    /// Its log so far, once no line has come for 30 ms (a thread of the
    /// proxy's own writes it, a moment after the line was logged).
    pub fn log(&self) -> String {
        let read = || std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let mut last = read();
        for _ in 0..60 {
            std::thread::sleep(Duration::from_millis(30));
            let now = read();
            if now.len() == last.len() {
                break;
            }
            last = now;
        }
        last
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit;
    /// panics, with `what` and the log, if it does not.
    pub async fn terminate(&mut self, within: Duration, what: &str) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr, &self.certs)
    }
}

/// The value of one metric series, 0 when it has not been exported yet.
/// [`POLICY`]'s three data centres (zurich `ch`, frankfurt `eu`, virginia
/// `us`) all at `addr`, for a [`Binary`] whose every upload goes to one
/// upstream.
pub fn datacenters_at(addr: SocketAddr) -> [(&'static str, &'static str, SocketAddr); 3] {
    [
        ("zurich", "ch", addr),
        ("frankfurt", "eu", addr),
        ("virginia", "us", addr),
    ]
}

pub async fn metric_value(proxy: &Proxy, series: &str) -> f64 {
    let (status, text) = proxy.admin_get("/metrics").await;
    assert_eq!(status, 200);
    metric(&text, series).unwrap_or(0.0)
}

/// A client CA, and for each entry a client certificate it signs (PEM cert,
/// PEM key) for `device-7.clients.test`, CN `device-7`, carrying the given
/// URI as a SAN too.
pub fn client_ca_and_certs(uris: &[Option<&str>]) -> (String, Vec<(String, String)>) {
    let pki = ClientPki::new(uris);
    (pki.ca, pki.leaves)
}

/// A client CA (PEM), its client certificates and keys (PEM; serial
/// numbers 1, 2, …), and what it takes to sign CRLs.
pub struct ClientPki {
    pub ca: String,
    pub leaves: Vec<(String, String)>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl ClientPki {
    /// One client certificate per entry of `uris`, with that SAN URI if any.
    pub fn new(uris: &[Option<&str>]) -> ClientPki {
        let leaves: Vec<_> = uris
            .iter()
            .map(|uri| ("device-7.clients.test", *uri))
            .collect();
        ClientPki::issuing(&leaves)
    }

    /// One client certificate per entry of `dns`, whose only SAN is that DNS
    /// name, written as given (case, trailing dot).
    pub fn with_dns_names(dns: &[&str]) -> ClientPki {
        let leaves: Vec<_> = dns.iter().map(|name| (*name, None)).collect();
        ClientPki::issuing(&leaves)
    }

    /// A client certificate per `(SAN DNS name, SAN URI)`, CN `device-7`.
    fn issuing(leaves: &[(&str, Option<&str>)]) -> ClientPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "residency test client CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaves = leaves
            .iter()
            .zip(1u64..)
            .map(|((dns, uri), serial)| {
                let mut leaf = CertificateParams::new(vec![dns.to_string()]).unwrap();
                if let Some(uri) = uri {
                    leaf.subject_alt_names
                        .push(SanType::URI((*uri).try_into().unwrap()));
                }
                leaf.serial_number = Some(serial.into());
                leaf.distinguished_name.push(DnType::CommonName, "device-7");
                leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let key = KeyPair::generate().unwrap();
                let cert = leaf.signed_by(&key, &issuer).unwrap();
                (cert.pem(), key.serialize_pem())
            })
            .collect();
        ClientPki {
            ca: ca_cert.pem(),
            leaves,
            issuer,
        }
    }

    /// The CA's CRL number `number` (PEM), revoking the certificates of
    /// these serial numbers.
    pub fn crl(&self, number: u64, revoked: &[u64]) -> String {
        let day = rcgen::date_time_ymd(2026, 1, 1);
        rcgen::CertificateRevocationListParams {
            this_update: day,
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: number.into(),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&serial| rcgen::RevokedCertParams {
                    serial_number: serial.into(),
                    revocation_time: day,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// One raw HTTP/1.1 GET; returns the head (lowercased) and the body.
pub fn raw_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_string())
}

/// `[[listeners]]` on `port` requiring client certificates from `ca` (the
/// default certificate `a.pem`), as extra configuration for [`Setup`]. At
/// port 0 (no race for a free port), `Proxy::addrs[1]` is where it is.
pub fn mtls_listener(port: u16, ca: &Path) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:{port}"
trusted_proxies = ["127.0.0.1"]
[listeners.tls]
certificates = [{{ cert = "a.pem", key = "a.key" }}]
client_ca = "{}"
"#,
        ca.display()
    )
}

/// What is read until `n` HTTP/1.1 status lines have come (or the
/// connection ends), within `limit` (panics naming `what` past it).
pub async fn read_answers(
    read: &mut (impl tokio::io::AsyncRead + Unpin),
    n: usize,
    limit: Duration,
    what: &str,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        while String::from_utf8_lossy(&got).matches("HTTP/1.1 ").count() < n {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.expect(what);
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads until the peer closes (EOF or error) and returns what arrived and
/// how long it took; panics if the connection is still open after `limit`.
pub async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    limit: Duration,
) -> (Vec<u8>, Duration) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .unwrap_or_else(|_| panic!("connection still open after {limit:?}"));
    (got, started.elapsed())
}

/// The status code of a raw HTTP/1.1 response, if one arrived.
pub fn raw_status(raw: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(raw.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

/// Everything read until the connection ends (closed, reset or cut).
pub async fn read_to_close(read: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A slowloris attack on a proxy: connections that finish TLS and send
/// part of a request head, then stay silent until [`Slowloris::trickle`],
/// after which each sends one more byte every 10 s (the original tool sends
/// a header line every 15 s), spread evenly, six times at most.
pub struct Slowloris {
    go: tokio::sync::watch::Sender<bool>,
    stop: tokio::sync::watch::Sender<bool>,
    attackers: tokio::task::JoinSet<bool>,
}

impl Slowloris {
    /// Opens `n` attacking connections, 32 handshakes at a time, and returns
    /// once all of them have sent their partial head.
    pub async fn open(proxy: &Proxy, n: usize) -> Slowloris {
        use tokio::io::AsyncWriteExt;
        let (go, going) = tokio::sync::watch::channel(false);
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut attackers = tokio::task::JoinSet::new();
        let (opened_tx, mut opened) = mpsc::channel::<()>(n.max(1));
        let gate = Arc::new(tokio::sync::Semaphore::new(32));
        for i in 0..n {
            let client = proxy.client();
            let (mut going, mut stopping) = (going.clone(), stopping.clone());
            let (opened_tx, gate) = (opened_tx.clone(), gate.clone());
            attackers.spawn(async move {
                let mut tls = {
                    let _handshaking = gate.acquire().await.unwrap();
                    let mut tls = client.connect().await.expect("attacker connects");
                    tls.write_all(b"POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-")
                        .await
                        .unwrap();
                    tls.flush().await.unwrap();
                    tls
                };
                let _ = opened_tx.send(()).await;
                if going.wait_for(|go| *go).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis((i * 5 % 10_000) as u64)).await;
                for _ in 0..6 {
                    tokio::select! {
                        _ = stopping.wait_for(|stop| *stop) => return true,
                        () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                    if tls.write_all(b"a").await.is_err() || tls.flush().await.is_err() {
                        return false;
                    }
                }
                true
            });
        }
        for _ in 0..n {
            opened.recv().await.expect("every attacker opens");
        }
        Slowloris {
            go,
            stop,
            attackers,
        }
    }

    /// From now on each connection sends a byte every 10 s.
    pub fn trickle(&self) {
        self.go.send_replace(true);
    }

    /// Ends the attack; returns how many connections were still accepted by
    /// the proxy (no write failed) when it ended.
    pub async fn end(mut self) -> usize {
        self.stop.send_replace(true);
        self.go.send_replace(true);
        let mut alive = 0;
        while let Some(still_open) = self.attackers.join_next().await {
            alive += usize::from(still_open.unwrap());
        }
        alive
    }
}

/// Upload latencies (fresh TLS connection, 1 KiB body, 201 each), sorted.
pub async fn upload_latencies(proxy: &Proxy, n: usize) -> Vec<Duration> {
    let body = "x".repeat(1024);
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let reply = proxy.client().upload_from(CH, &body).await;
        took.push(started.elapsed());
        assert_eq!(reply.status, 201);
    }
    took.sort();
    took
}

/// The 99th percentile of sorted samples (nearest rank).
pub fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

/// An upload from [`CH`] that zurich answers `delay_ms` after its body,
/// sent in a task of its own; returned once zurich has its first bytes
/// (so it holds its connection to zurich).
pub async fn slow_upload(proxy: &Proxy, delay_ms: u64) -> tokio::task::JoinHandle<Reply> {
    let client = proxy.client();
    let delay = delay_ms.to_string();
    let slow = tokio::spawn(async move {
        client
            .send(
                "POST",
                "/v1/telemetry",
                &[("x-forwarded-for", CH), ("x-test-answer-delay-ms", &delay)],
                "slow",
            )
            .await
    });
    proxy.upstream("zurich").first_bytes.notified().await;
    slow
}

/// A data centre written by hand, at a new loopback port: on each
/// connection it reads a request — its head (to its blank line) and its
/// body (by `Content-Length`, or chunked to its last chunk) — then hands
/// the connection to `answer`. (A 2xx before the whole body is refused as
/// `upstream_answered_early`.) Returns its address.
pub async fn raw_upstream<F, A>(answer: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> A + Send + Sync + 'static,
    A: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = |got: &[u8]| {
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return false;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let body = &got[end + 4..];
                    if head.contains("transfer-encoding: chunked") {
                        return body.ends_with(b"0\r\n\r\n");
                    }
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    body.len() >= length
                };
                while !complete(&got) {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                answer(tcp).await;
            });
        }
    });
    addr
}

/// The load generator's outcome of upload `index`, as the drill's log
/// check reads it: a 201 from `datacenter` for the body of digest
/// `sha256`, naming `request`'s request id and carrying `receipt`'s
/// receipt (the same reply, unless a test swaps them).
pub fn drill_outcome(
    index: u64,
    request: &Reply,
    receipt: &Reply,
    datacenter: &str,
    sha256: [u8; 32],
) -> residency_tools::loadtest::generator::Outcome {
    use residency_tools::loadtest::generator::{Outcome, Sent};
    use residency_tools::loadtest::upload::Answer;
    Outcome {
        index,
        jurisdiction: 0,
        origin: CH.parse().unwrap(),
        scheduled: Duration::ZERO,
        result: Sent::Done {
            answer: Answer {
                status: Some(201),
                failure: None,
                datacenter: Some(datacenter.into()),
                receipt: receipt.header("residency-receipt").map(str::to_string),
                request_id: request.header("x-request-id").map(str::to_string),
                detail: None,
            },
            finished: Duration::ZERO,
            sha256,
        },
    }
}

// ---------------------------------------------------------------------------

/// The Go checksum database's own tlog client, `tests/clients/tlogcheck.go`
/// (golang.org/x/mod/sumdb/note and sumdb/tlog, from Debian's
/// golang-golang-x-mod-dev), built once per test run in GOPATH mode.
fn tlogcheck() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tlogcheck");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("tlogcheck");
        let built = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/tlogcheck.go"
            ))
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", dir.join("cache"))
            .env("GOTOOLCHAIN", "local")
            .output()
            .expect("go (Debian's golang-go, with golang-golang-x-mod-dev: see .ci/run)");
        assert!(
            built.status.success(),
            "go build tests/clients/tlogcheck.go: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// Checks the log at `prefix` with Go's tlog client (see
/// `tests/clients/tlogcheck.go`): the checkpoint opens with `vkey` and names
/// `origin`, the tiles recompute its root, every entry hashes into its
/// tile, inclusion proofs hold, and, given `older` (size, root), the log
/// grew from that tree. Returns its `ok …` line; panics with what it said
/// otherwise. At most 120 s.
pub async fn go_tlog_check(
    prefix: &str,
    vkey: &str,
    origin: &str,
    older: Option<(u64, [u8; 32])>,
) -> String {
    let (ok, stdout, stderr) = go_tlog_run(prefix, vkey, origin, older).await;
    assert!(
        ok,
        "Go's tlog client refused the log at {prefix}: {stderr}{stdout}"
    );
    stdout
}

/// [`go_tlog_check`]'s run: whether Go's client took the log, and what it
/// printed (`ok …`) and said on stderr (what it refused).
pub async fn go_tlog_run(
    prefix: &str,
    vkey: &str,
    origin: &str,
    older: Option<(u64, [u8; 32])>,
) -> (bool, String, String) {
    use base64::Engine as _;
    let mut args = vec![prefix.to_string(), vkey.to_string(), origin.to_string()];
    if let Some((size, root)) = older {
        args.push(size.to_string());
        args.push(base64::engine::general_purpose::STANDARD.encode(root));
    }
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(tlogcheck())
            .args(&args)
            .output()
            .expect("run tlogcheck")
    });
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("tlogcheck within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.success() && stdout.starts_with("ok "),
        stdout,
        stderr,
    )
}

/// A TCP relay on a port of its own to `to`, for as long as the test
/// process lives: each connection is piped both ways (a half close passed
/// on as one), on threads of its own.
fn relay(to: SocketAddr) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(to) else {
                continue; // the client sees its connection closed
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || pipe(client, server2));
            std::thread::spawn(move || pipe(server, client2));
        }
    });
    addr
}

/// Copies `from` into `to` until `from` ends, then ends `to`'s writing.
fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    let result = std::io::copy(&mut from, &mut to);
    let how = match result {
        Ok(_) => std::net::Shutdown::Write,
        Err(_) => std::net::Shutdown::Both,
    };
    let _ = to.shutdown(how);
}

/// Sets the open-files soft limit of the running process `pid` (`prlimit`,
/// util-linux): `"3"` leaves it no descriptor to open (the kernel gives
/// the lowest free one, and nothing below stdin, stdout and stderr is ever
/// free).
pub fn open_files_limit(pid: u32, soft: &str) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit --nofile={soft}: on {pid}");
}
