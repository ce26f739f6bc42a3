//! Listeners and the connection lifecycle.
//!
//! [`bind`] opens every socket first (so tests and the demo can bind port 0
//! and read the addresses); [`Bound::run`] then serves until the shutdown
//! future resolves. Each accepted connection runs in its own task through
//! named, bounded phases:
//!
//! 1. admission — a connection-limit permit, or the connection is closed;
//! 2. `proxy_header` — on `proxy_protocol = "required"` listeners, only from
//!    `trusted_proxies`, within the handshake deadline;
//! 3. `tls_handshake` — rustls with the listener's SNI-aware config;
//! 4. HTTP — h2 by ALPN or by its preface, else HTTP/1.1, with bounded
//!    header sizes and streams, and a watchdog that closes connections that
//!    send no first request within `request_head`, do not complete a later
//!    HTTP/1 head within `request_head` of its first byte, or sit idle for
//!    `keepalive_idle`; one `connection_max_age` old takes no new request.
//!    An HTTP/1 connection quiet for `IDLE_RELEASE`
//!    drops hyper's buffers and waits with only its TLS state; the next
//!    request's first bytes start a fresh hyper connection on the stream.
//!
//! The phases of one connection are in [`connection`].
//!
//! On shutdown, accepting stops, every connection is asked to finish
//! gracefully, and `run` waits up to `timeouts.shutdown_grace` for them.

mod connection;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::plain_http::TlsSource;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::admin;
use crate::shutdown::{accept, stopped};

/// How long what is cut at the end of `shutdown_grace` has to end (each
/// task at its next poll) before the final checkpoint.
const CUT_WAIT: Duration = Duration::from_secs(2);
use crate::state::Instance;

/// Sockets bound and ready to serve.
pub struct Bound {
    instance: Arc<Instance>,
    listeners: Vec<TcpListener>,
    admin: TcpListener,
    /// The customer-facing transparency log listener, if configured, and
    /// its TLS (`[transparency.tls]`, the current state's at each handshake).
    transparency: Option<(TcpListener, Option<TlsSource>)>,
    /// The config file to watch for hot reload, if any.
    config_path: Option<std::path::PathBuf>,
}

/// Binds every ingest listener and the admin listener of the current state.
pub async fn bind(instance: Arc<Instance>) -> std::io::Result<Bound> {
    let state = instance.snapshot();
    let mut listeners = Vec::new();
    for (i, l) in state.config.listeners.iter().enumerate() {
        let socket = TcpListener::bind(l.address).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("listeners[{i}].address: binding {}: {e}", l.address),
            )
        })?;
        listeners.push(socket);
    }
    let admin = TcpListener::bind(state.config.admin.address)
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("admin.address: binding {}: {e}", state.config.admin.address),
            )
        })?;
    let log_address = instance.log.as_ref().and_then(|l| l.settings().address);
    let transparency = match log_address {
        Some(address) => {
            let acceptor = state.log_tls.clone().map(|started| {
                let instance = instance.clone();
                // Certificates renewed on disk are served from the reload
                // that read them (the settings themselves need a restart).
                Arc::new(move || {
                    instance
                        .snapshot()
                        .log_tls
                        .clone()
                        .unwrap_or(started.clone())
                }) as TlsSource
            });
            let listener = TcpListener::bind(address).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("transparency.address: binding {address}: {e}"),
                )
            })?;
            Some((listener, acceptor))
        }
        None => None,
    };
    Ok(Bound {
        instance,
        listeners,
        admin,
        transparency,
        config_path: None,
    })
}

impl Bound {
    /// The ingest listeners' local addresses, in config order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The transparency log listener's address, when there is one.
    pub fn transparency_address(&self) -> Option<SocketAddr> {
        self.transparency.as_ref()?.0.local_addr().ok()
    }

    /// Reload from `path` on SIGHUP and when watched files change.
    pub fn watch(mut self, path: std::path::PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Serves until `shutdown` resolves, then drains.
    /// Serves until `shutdown`, then drains and signs the final
    /// checkpoint; an error if that failed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Read, not held: the first snapshot is freed once reloads replace it.
        let (limits, grace) = {
            let state = self.instance.snapshot();
            (state.config.limits, state.config.timeouts.shutdown_grace)
        };
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let mut tasks = Vec::new();
        // Each listener's connections, to be cut at the end of the grace.
        let mut accepting = Vec::new();
        for (index, listener) in self.listeners.into_iter().enumerate() {
            let instance = self.instance.clone();
            let permits = permits.clone();
            let stop = stop_rx.clone();
            accepting.push(tokio::spawn(accept_loop(
                instance, index, listener, permits, stop,
            )));
        }
        // The admin listener stops last, after the drain: `/healthz` (a
        // liveness probe), `/readyz` (false by then) and `/metrics` (the
        // drain's last counts) answer while connections finish.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin = tokio::spawn(admin::serve(
            self.instance.clone(),
            self.admin,
            admin_stop_rx,
        ));
        tasks.push(tokio::spawn(refresh_gauges(
            self.instance.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::probes::run(
            self.instance.clone(),
            stop_rx.clone(),
        )));

        if let Some(log) = &self.instance.log {
            let witnesses = crate::witnesses::Witnesses::new(
                log.clone(),
                &self.instance.snapshot().config.witnesses,
                self.instance.metrics.registry(),
            );
            tasks.push(tokio::spawn(checkpoints(
                log.clone(),
                witnesses,
                stop_rx.clone(),
            )));
            if let Some((listener, tls)) = self.transparency {
                let log = log.clone();
                let cap = crate::plain_http::Cap {
                    max_connections: log.settings().max_connections,
                    rejected: (self.instance.metrics.connections_rejected)
                        .with_label_values(&["log_connection_limit"]),
                    per_client: match log.settings().max_connections_per_client {
                        0 => None,
                        max => Some((
                            max,
                            (self.instance.metrics.connections_rejected)
                                .with_label_values(&["log_client_connection_limit"]),
                        )),
                    },
                    // Tiles, records and proofs are read from disk.
                    blocking: true,
                    rate: match log.settings().requests_per_second_per_client {
                        0 => None,
                        per_second => Some((
                            Arc::new(crate::client_limit::Rate::new(
                                per_second,
                                log.settings().requests_burst_per_client,
                            )),
                            self.instance.metrics.log_requests_limited.clone(),
                        )),
                    },
                };
                tasks.push(tokio::spawn(crate::plain_http::serve(
                    listener,
                    stop_rx.clone(),
                    cap,
                    tls,
                    move |req| crate::log_api::answer(&log, req),
                )));
            }
        }

        if let Some(path) = self.config_path {
            tasks.push(tokio::spawn(crate::reload::run(
                self.instance.clone(),
                path,
                stop_rx.clone(),
            )));
        }

        shutdown.await;
        self.instance.set_ready(false);
        let delay = self.instance.snapshot().config.timeouts.shutdown_delay;
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "shutting down: readiness off; still accepting while load balancers notice"
            );
            tokio::time::sleep(delay).await;
        }
        tracing::info!("shutting down: accepting stopped, draining connections");
        let _ = stop_tx.send(true);
        let mut connections = Vec::new();
        for t in accepting {
            connections.extend(t.await);
        }
        for t in tasks {
            let _ = t.await;
        }
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(grace, permits.acquire_many(all)).await;
        match drained {
            Ok(_) => tracing::info!("all connections finished"),
            Err(_) => {
                tracing::warn!(
                    phase = "shutdown_grace",
                    "timeout: closing remaining connections"
                );
                // Dropped now, not when the runtime ends: a request cut
                // while its upload was with a data centre (which may have
                // stored it) is folded into a summary record, written
                // below before the final checkpoint. Each task ends at its
                // next poll.
                // Kept whoever listens: `send` keeps nothing when no one
                // does (HTTP/1.1 connections alone), and the requests
                // dropped below then waited for a cut that never came,
                // past the final checkpoint.
                let cut = &self.instance.cut;
                cut.send_replace(true);
                let ended = async {
                    for set in &mut connections {
                        set.abort_all();
                        while set.join_next().await.is_some() {}
                    }
                    // HTTP/2 streams and detached requests: under
                    // `until_cut`, each holding a receiver until it ends.
                    cut.closed().await;
                };
                if tokio::time::timeout(CUT_WAIT, ended).await.is_err() {
                    tracing::warn!("some tasks did not end after the cut");
                }
            }
        };
        if let Some(log) = self.instance.log.clone() {
            // Every record appended, summaries included, is covered by a
            // signed checkpoint.
            log.settle().await;
            log.write_summaries().await;
            // A summary may have started a roll: its record too.
            log.settle().await;
            // And the repairs of the generations rolls sealed (once: one
            // cut short is left to the next start).
            log.settle_repairs().await;
            // What the log could not take goes with the process: said, each
            // summary with where its bodies may be and the hash of its
            // request ids, for reconciling with the data centres
            // (verification, stop 63: lost without a word).
            for lost in log.take_unwritten_summaries() {
                let summary = lost.summary.as_ref();
                tracing::error!(
                    reason = lost.reason.as_deref().unwrap_or("refused"),
                    datacenter = lost.datacenter.as_deref().unwrap_or("none"),
                    also_sent_to = lost.also_sent_to.join(","),
                    count = summary.map_or(0, |s| s.count),
                    first = summary.map_or("", |s| &s.first),
                    last = summary.map_or("", |s| &s.last),
                    request_ids_sha256 = summary.map_or("", |s| &s.request_ids_sha256),
                    "a summary of refusals could not be written to the transparency log before exit: not recorded"
                );
            }
            let fleet = log.settings().postgres.is_some();
            let failed = match tokio::task::spawn_blocking(move || log.checkpoint()).await {
                Ok(Ok(cp)) => {
                    tracing::info!(size = cp.size, "final checkpoint signed");
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            // A fleet's replica reads or signs the database's checkpoint:
            // whichever replica signs next covers its records.
            if let (Some(e), true) = (&failed, fleet) {
                tracing::error!(error = %e, "final checkpoint failed; the next integrator covers the records");
            }
            if let Some(e) = failed.filter(|_| !fleet) {
                let _ = admin_stop_tx.send(true);
                let _ = admin.await;
                // Not a clean stop: the exit status says so (it was 0;
                // lifecycle audit, stop 63).
                anyhow::bail!(
                    "the final checkpoint failed: {e}; the records written since the last one are signed at the next start"
                );
            }
        }
        let _ = admin_stop_tx.send(true);
        let _ = admin.await;
        Ok(())
    }
}

/// Signs a checkpoint every `checkpoint_interval` (when records were added)
/// until `stop`, then has the witnesses cosign it (in the background); the
/// final one is signed after the connections have drained.
async fn checkpoints(
    log: Arc<residency_log::storage::Log>,
    witnesses: Option<Arc<crate::witnesses::Witnesses>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(log.settings().checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped(&mut stop) => return,
        }
        log.write_summaries().await;
        let l = log.clone();
        match tokio::task::spawn_blocking(move || l.checkpoint()).await {
            Ok(Ok(_)) => {
                // In a fleet, only the replica that signs asks witnesses.
                if let Some(w) = witnesses.as_ref().filter(|_| log.is_integrator()) {
                    w.after_checkpoint();
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "checkpoint failed"),
            Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
        }
        log.refresh_age();
    }
}

/// Accepts until the stop flag, and returns the connections' tasks still
/// running then: `run` cuts them (aborts them) if they outlast the grace.
/// (A task set rather than a cut signal each connection's task would look
/// at whenever it wakes: several times per request.)
async fn accept_loop(
    instance: Arc<Instance>,
    index: usize,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut connections = JoinSet::new();
    loop {
        let Some((stream, peer)) = accept(&listener, &mut stop).await else {
            return connections;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            instance
                .metrics
                .connections_rejected
                .with_label_values(&["connection_limit"])
                .inc();
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Reaped as connections are accepted: the set holds the live ones
        // (and those ended since the last accept).
        while connections.try_join_next().is_some() {}
        // An IPv4 client of a dual-stack `[::]` listener as itself
        // (`127.0.0.1`, not `[::ffff:127.0.0.1]`), in the log lines as in
        // the decision and records (IPv6 audit, stop 66).
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        connections.spawn(connection::serve(
            instance.clone(),
            index,
            stream,
            peer,
            permit,
            stop.clone(),
        ));
    }
}

/// Keeps `residency_datacenter_up` current as passive down-marks expire.
async fn refresh_gauges(instance: Arc<Instance>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => instance.refresh_gauges(),
            () = stopped(&mut stop) => return,
        }
    }
}
