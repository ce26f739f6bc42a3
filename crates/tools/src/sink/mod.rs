//! `residency-proxy sink`: a reference ingestion server for failover drills
//! and local development. One process serves several named data centres,
//! each on its own port (plain HTTP/1.1), records every upload it stores
//! (SHA-256, length, the proxy's residency headers) and can be told, per
//! data centre and at run time, to refuse, hang, answer slowly or fail.
//!
//! [`Sink`] is the in-process API (tests, drills); [`run`] is the command.
//! Submodules: [`model`] (records, modes, stats JSON), `datacenter` (a data
//! port: listener, mode, connections), `upload` (one request on a data
//! port), `admin` (the admin port).

mod admin;
mod datacenter;
pub mod model;
mod serve;
mod upload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use datacenter::Datacenter;
use model::RecordStore;
pub use model::{parse_mode_body, DatacenterStats, Mode, Record, Stats};

/// Command-line arguments of `residency-proxy sink`.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// A data centre to serve, `NAME=IP:PORT` (repeatable; port 0 picks one).
    #[arg(long = "datacenter", value_name = "NAME=IP:PORT", required = true, value_parser = parse_datacenter)]
    pub datacenters: Vec<(String, SocketAddr)>,
    /// Admin listener: /stats, /records, /datacenters/{name}/mode, /reset.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9100")]
    pub admin: SocketAddr,
    /// Records kept at most; later stored uploads are counted as dropped.
    #[arg(long, default_value_t = SinkOptions::default().max_records)]
    pub max_records: usize,
    /// Larger upload bodies are answered 413.
    #[arg(long, default_value_t = SinkOptions::default().max_body_bytes)]
    pub max_body_bytes: u64,
}

/// Parses `NAME=IP:PORT`.
pub fn parse_datacenter(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: want NAME=IP:PORT"))?;
    check_name(name)?;
    let addr = addr
        .parse()
        .map_err(|e| format!("`{s}`: bad address `{addr}`: {e}"))?;
    Ok((name.to_owned(), addr))
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || !name.chars().all(ok) {
        return Err(format!(
            "data centre name `{name}`: use letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

/// Limits of a [`Sink`].
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Records kept at most (default 1,000,000); later ones are counted in
    /// `dropped_records` and not kept (the upload is still answered 201).
    pub max_records: usize,
    /// Upload bodies over this get 413 (default 256 MiB).
    pub max_body_bytes: u64,
    /// Reading a request head, on every port (default 10 s).
    pub header_read_timeout: Duration,
    /// Longest gap between upload body chunks before 408 (default 30 s).
    pub body_idle_timeout: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            max_records: 1_000_000,
            max_body_bytes: 256 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a mode change failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("no data centre named `{0}`")]
    UnknownDatacenter(String),
    #[error("{0}")]
    InvalidMode(String),
    #[error("data centre `{datacenter}`: listening on {address} again: {source}")]
    Rebind {
        datacenter: String,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// What every task of a sink shares.
#[derive(Debug)]
pub(crate) struct Shared {
    datacenters: Vec<Arc<Datacenter>>,
    records: Mutex<RecordStore>,
    options: SinkOptions,
}

impl Shared {
    fn datacenter(&self, name: &str) -> Option<&Arc<Datacenter>> {
        self.datacenters.iter().find(|d| d.name == name)
    }

    fn store_lock(&self) -> MutexGuard<'_, RecordStore> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn store(&self, record: Record) {
        self.store_lock().push(record);
    }

    fn records(&self, datacenter: Option<&str>) -> Vec<Record> {
        let store = self.store_lock();
        match datacenter {
            None => store.records.clone(),
            Some(name) => store
                .records
                .iter()
                .filter(|r| r.datacenter == name)
                .cloned()
                .collect(),
        }
    }

    fn stats(&self) -> Stats {
        let (records, dropped_records, records_since_ms) = {
            let store = self.store_lock();
            (store.records.len() as u64, store.dropped, store.since_ms)
        };
        Stats {
            datacenters: self
                .datacenters
                .iter()
                .map(|d| (d.name.clone(), d.stats()))
                .collect(),
            records,
            dropped_records,
            records_since_ms,
        }
    }

    fn reset(&self) {
        {
            let mut store = self.store_lock();
            store.records = Vec::new();
            store.dropped = 0;
            // Never the same value twice: a reader told apart a reset
            // within the same millisecond too.
            store.since_ms = model::unix_ms().max(store.since_ms + 1);
        }
        for dc in &self.datacenters {
            dc.reset();
        }
    }
}

/// A running sink. Dropping it stops it too (without waiting); prefer
/// [`Sink::stop`].
#[derive(Debug)]
pub struct Sink {
    shared: Arc<Shared>,
    admin: SocketAddr,
    stop: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
}

impl Sink {
    /// Binds every data centre and the admin port (port 0 picks one) with
    /// default [`SinkOptions`], and starts serving. All data centres start
    /// in [`Mode::Normal`].
    pub async fn start(
        datacenters: &[(String, SocketAddr)],
        admin: SocketAddr,
    ) -> anyhow::Result<Sink> {
        Sink::start_with(datacenters, admin, SinkOptions::default()).await
    }

    /// [`Sink::start`] with explicit limits.
    pub async fn start_with(
        datacenters: &[(String, SocketAddr)],
        admin: SocketAddr,
        options: SinkOptions,
    ) -> anyhow::Result<Sink> {
        anyhow::ensure!(
            !datacenters.is_empty(),
            "a sink needs at least one data centre"
        );
        let mut bound: Vec<Arc<Datacenter>> = Vec::new();
        for (name, addr) in datacenters {
            check_name(name).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                bound.iter().all(|d| &d.name != name),
                "data centre `{name}` named twice"
            );
            bound.push(Arc::new(Datacenter::bind(name, *addr).await?));
        }
        let admin_listener = TcpListener::bind(admin)
            .await
            .with_context(|| format!("binding the sink admin port on {admin}"))?;
        let admin = admin_listener.local_addr()?;
        let shared = Arc::new(Shared {
            datacenters: bound,
            records: Mutex::new(RecordStore {
                records: Vec::new(),
                dropped: 0,
                max: options.max_records,
                since_ms: model::unix_ms(),
            }),
            options,
        });
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = mpsc::channel(1);
        for dc in &shared.datacenters {
            let task =
                serve::accept_loop(shared.clone(), dc.clone(), stop_rx.clone(), done_tx.clone());
            tokio::spawn(task);
        }
        tokio::spawn(admin::serve(
            shared.clone(),
            admin_listener,
            stop_rx,
            done_tx,
        ));
        Ok(Sink {
            shared,
            admin,
            stop,
            done,
        })
    }

    /// The bound data port of `name`.
    pub fn datacenter_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.datacenter(name).map(|d| d.addr)
    }

    /// Every data centre with its bound port, in start order.
    pub fn datacenters(&self) -> Vec<(String, SocketAddr)> {
        self.shared
            .datacenters
            .iter()
            .map(|d| (d.name.clone(), d.addr))
            .collect()
    }

    /// The bound admin port.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Every record held, in the order stored.
    pub fn records(&self) -> Vec<Record> {
        self.shared.records(None)
    }

    /// The records stored by `datacenter`.
    pub fn records_for(&self, datacenter: &str) -> Vec<Record> {
        self.shared.records(Some(datacenter))
    }

    /// What `GET /stats` answers.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The current mode of `datacenter`.
    pub fn mode(&self, datacenter: &str) -> Option<Mode> {
        self.shared.datacenter(datacenter).map(|d| d.mode())
    }

    /// Switches `datacenter` to `mode`. When this returns the port is
    /// already closed (`refuse`) or listening again (leaving `refuse`); open
    /// connections follow at once (closed on `refuse`; blackholed ones closed
    /// when `hang` ends). Entering `error` restarts its PRNG.
    pub fn set_mode(&self, datacenter: &str, mode: Mode) -> Result<(), SinkError> {
        self.shared
            .datacenter(datacenter)
            .ok_or_else(|| SinkError::UnknownDatacenter(datacenter.to_owned()))?
            .set_mode(mode)
    }

    /// Clears records, `dropped_records` and every counter (modes stay).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting, closes every port, ends hanging connections, lets
    /// other responses finish (at most ~2 s) and returns when all tasks have.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for dc in &self.shared.datacenters {
            dc.close();
        }
        // Every task holds a sender; `None` once the last one has ended.
        let _ = self.done.recv().await;
    }
}

/// Runs `residency-proxy sink` until `shutdown` resolves.
pub async fn run(args: SinkArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let options = SinkOptions {
        max_records: args.max_records,
        max_body_bytes: args.max_body_bytes,
        ..SinkOptions::default()
    };
    let sink = Sink::start_with(&args.datacenters, args.admin, options).await?;
    for (name, addr) in sink.datacenters() {
        tracing::info!(datacenter = %name, %addr, "sink data centre listening (HTTP/1.1)");
    }
    tracing::info!(
        addr = %sink.admin_addr(),
        "sink admin ready: GET /stats /records[?datacenter=] /healthz, POST /datacenters/{{name}}/mode /reset"
    );
    shutdown.await;
    tracing::info!("sink shutting down");
    sink.stop().await;
    Ok(())
}

/// Resolves once `stop` is true (or its sender is gone: the sink was dropped).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
