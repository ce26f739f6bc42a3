//! Hot reload: configuration, certificates and GeoIP database, without
//! dropping a request.
//!
//! A reload is triggered by SIGHUP or by a change in any file the proxy
//! reads (config, certificates and keys, client CA, upstream CA, GeoIP
//! database). Files are polled every `timeouts.reload_poll` by *path*, with
//! symlinks resolved on every poll, so the directory swaps Kubernetes does
//! for ConfigMaps and Secrets (`..data` → new directory) are seen as changes
//! of every file in them.
//!
//! [`reload`] builds the new [`State`] aside and validates it completely —
//! every config check, certificates parse and match their keys, the database
//! loads, and every `[[geoip.canaries]]` address maps to its expected
//! country (all in `State::build`) — before one atomic swap. A failed reload keeps the old state
//! serving, logs every reason and counts `residency_reloads_total{result="failure"}`.
//! Listeners stay bound: a changed address is logged as needing a restart;
//! adding or removing listeners is refused. The transparency log keeps the
//! `[transparency]` settings it was opened with (a change is logged as
//! needing a restart).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::config::Config;
use crate::server::stopped;
use crate::state::{Shared, State};
use residency_core::report::ConfigReport;

/// Loads `path` and, if everything validates, makes it the current state.
pub fn reload(shared: &Shared, path: &Path) -> Result<(), ConfigReport> {
    let result = build(shared, path);
    match &result {
        Ok(state) => {
            shared.metrics.reloads.with_label_values(&["success"]).inc();
            tracing::info!(policy = %state.policy_hash, geoip_build_epoch = state.geo.build_epoch(), "reloaded");
        }
        Err(report) => {
            shared.metrics.reloads.with_label_values(&["failure"]).inc();
            tracing::error!(problems = %report, "reload failed; the previous state keeps serving");
        }
    }
    result.map(|state| shared.replace(state))
}

fn build(shared: &Shared, path: &Path) -> Result<State, ConfigReport> {
    let config = Config::load(path)?;
    let old = shared.state();
    let mut report = ConfigReport::new(path.display().to_string());
    if config.listeners.len() != old.config.listeners.len() {
        report.push(
            "listeners",
            format!(
                "{} listeners configured, {} bound: adding or removing listeners needs a restart",
                config.listeners.len(),
                old.config.listeners.len()
            ),
        );
        return Err(report);
    }
    for (i, (new, bound)) in config
        .listeners
        .iter()
        .zip(&old.config.listeners)
        .enumerate()
    {
        if new.address != bound.address && !bound.address.port().eq(&0) {
            tracing::warn!(listener = i, configured = %new.address, bound = %bound.address, "listener address changed: needs a restart, still serving on the bound address");
        }
    }
    if config.admin.address != old.config.admin.address && old.config.admin.address.port() != 0 {
        tracing::warn!(configured = %config.admin.address, bound = %old.config.admin.address, "admin address changed: needs a restart");
    }
    let mut state = State::build(config).map_err(|mut r| {
        r.file = path.display().to_string();
        r
    })?;
    // Listeners stay where they were bound (port 0 in tests included).
    for (new, bound) in state.config.listeners.iter_mut().zip(&old.config.listeners) {
        new.address = bound.address;
    }
    state.config.admin.address = old.config.admin.address;
    if state.config.transparency != old.config.transparency {
        tracing::warn!("[transparency] changed: needs a restart; the log keeps running with the settings it was opened with");
        state.config.transparency = old.config.transparency.clone();
    }
    report.finish(Some(state))
}

/// Watches for SIGHUP and file changes until `stop` is set.
pub async fn run(shared: Arc<Shared>, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let poll = shared.state().config.timeouts.reload_poll;
    let mut hup = hangup();
    // What the running state was built from: a change made while it was
    // being built or before this task first ran is still seen.
    let mut seen = shared.state().files.clone();
    let mut tick = tokio::time::interval(if poll.is_zero() {
        std::time::Duration::from_secs(3600)
    } else {
        poll
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let by_signal = tokio::select! {
            () = stopped(&mut stop) => return,
            _ = recv(&mut hup) => true,
            _ = tick.tick() => false,
        };
        if !by_signal {
            if poll.is_zero() {
                continue;
            }
            let now = watched(&shared, &path);
            if now == seen {
                continue;
            }
            tracing::info!(trigger = "files", "reloading");
        } else {
            tracing::info!(trigger = "SIGHUP", "reloading");
        }
        let _ = reload(&shared, &path);
        // A broken file is retried only when something changes again.
        seen = watched(&shared, &path);
    }
}

/// The fingerprint of the files the config at `path` names, or, while it
/// does not load, of the config file and the current state's files.
fn watched(shared: &Shared, path: &Path) -> Fingerprint {
    match Config::load(path) {
        Ok(config) => fingerprint(&config),
        Err(_) => {
            let mut config = shared.state().config.clone();
            config.source = Some(path.to_path_buf());
            fingerprint(&config)
        }
    }
}

/// What identifies the current content of every file the state was built
/// from: resolved path, modification time, length, inode.
pub type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

/// Fingerprints the config's source file and every file it names.
pub fn fingerprint(config: &Config) -> Fingerprint {
    let mut files: Vec<PathBuf> = config.source.iter().cloned().collect();
    files.push(config.geoip.database.clone());
    for l in &config.listeners {
        for c in &l.certificates {
            files.push(c.cert.clone());
            files.push(c.key.clone());
        }
        files.extend(l.client_ca.iter().cloned());
    }
    files.extend(config.upstream.ca.iter().cloned());
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok().map(|m| {
                #[cfg(unix)]
                let ino = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let ino = 0;
                (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), ino)
            });
            (std::fs::canonicalize(&f).unwrap_or(f), meta)
        })
        .collect()
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn hangup() -> Hangup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

async fn recv(hup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hup {
        if signal.recv().await.is_some() {
            return;
        }
    }
    let _ = hup;
    std::future::pending::<()>().await
}
