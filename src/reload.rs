//! Hot reload: configuration, certificates and GeoIP database, without
//! dropping a request.
//!
//! A reload is triggered by SIGHUP or by a change in any file the proxy
//! reads (config, certificates and keys, the log listener's included,
//! client CA and CRL, upstream CA, GeoIP database, tenant files). Files are
//! polled every `timeouts.reload_poll` by *path*, with symlinks resolved
//! on every poll, so the directory swaps Kubernetes does
//! for ConfigMaps and Secrets (`..data` → new directory) are seen as changes
//! of every file in them. A poll only stats the files ([`crate::files`]);
//! nothing is parsed until one changed. The new state is built on Tokio's
//! blocking pool, never on the workers that serve connections.
//!
//! [`reload`] builds the new [`Snapshot`] aside and validates it completely —
//! every config check, certificates parse and match their keys, the database
//! loads, and every `[[geoip.canaries]]` address maps to its expected
//! country (all in `Snapshot::build`) — before one atomic swap. A failed reload keeps the old state
//! serving, logs every reason and counts `residency_reloads_total{result="failure"}`.
//! Listeners stay bound: a changed address is logged as needing a restart;
//! adding or removing listeners is refused; each socket takes the settings
//! of the listener configured at its address ([`bound_order`]). The transparency log keeps the
//! `[transparency]` settings it was opened with (a change is logged as
//! needing a restart).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, Listener};
use crate::shutdown::stopped;
use crate::state::{Instance, Snapshot};
use residency_core::report::ConfigReport;

/// Loads `path` and, if everything validates, makes it the current state.
pub fn reload(instance: &Instance, path: &Path) -> Result<(), ConfigReport> {
    let metrics = &instance.metrics;
    let (state, restart_pending) = match build(instance, path) {
        Ok(built) => built,
        Err(report) => {
            metrics.config_last_reload_successful.set(0);
            metrics.reloads.with_label_values(&["failure"]).inc();
            // A line per problem, each on one line: a log shipper that
            // splits at newlines keeps each whole (a TOML parse error
            // spans several).
            for p in &report.problems {
                let problem = p.message.split_whitespace().collect::<Vec<_>>().join(" ");
                tracing::error!(file = %report.file, key = %p.key, %problem, "reload failed; the previous state keeps serving");
            }
            for note in &report.notes {
                tracing::error!(file = %report.file, %note, "reload failed; the previous state keeps serving");
            }
            return Err(report);
        }
    };
    // In force first, then said: the counter, the gauge and the
    // `reloaded` line came before the swap, and automation waiting on them
    // sent uploads decided under the old policy for some milliseconds
    // (verification, stop 69).
    instance.replace(state);
    let state = instance.snapshot();
    metrics.config_last_reload_successful.set(1);
    metrics.reloads.with_label_values(&["success"]).inc();
    metrics
        .config_restart_pending
        .set(i64::from(restart_pending));
    tracing::info!(policy = %state.policy_hash, geoip_build_epoch = state.geo.build_epoch(), "reloaded");
    state.config.tenancy.log_warnings();
    // What the reload made live that may not be meant, as at start: a
    // certificate swapped for one that expired (every handshake then
    // fails: TLS audit, stop 64), tenant names the log now publishes
    // (privacy audit, stop 68), ….
    for warning in crate::config::live_warnings(&state.config, instance.log.is_some()) {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// The new state, and whether the file holds settings read at start only
/// that differ from the running ones (each warned of here).
fn build(instance: &Instance, path: &Path) -> Result<(Snapshot, bool), ConfigReport> {
    let config = Config::load(path)?;
    let old = instance.snapshot();
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
    let mut restart_pending = false;
    let order = bound_order(&config.listeners, &old.config.listeners);
    for (i, bound) in old.config.listeners.iter().enumerate() {
        let new = &config.listeners[order[i]];
        if new.address != bound.address && !bound.address.port().eq(&0) {
            restart_pending = true;
            tracing::warn!(listener = order[i], configured = %new.address, bound = %bound.address, "listener address changed: needs a restart, still serving on the bound address");
        }
    }
    if config.admin.address != old.config.admin.address && old.config.admin.address.port() != 0 {
        restart_pending = true;
        tracing::warn!(configured = %config.admin.address, bound = %old.config.admin.address, "admin address changed: needs a restart");
    }
    let named = crate::files::named(&config);
    let mut state = Snapshot::build_after(config, Some(&old.geo)).map_err(|mut r| {
        r.file = path.display().to_string();
        r.named = named;
        r
    })?;
    // Listeners stay where they were bound (port 0 in tests included), each
    // socket with the settings configured for its address.
    state.config.listeners = order
        .iter()
        .map(|&i| state.config.listeners[i].clone())
        .collect();
    state.tls = order.iter().map(|&i| state.tls[i].clone()).collect();
    for (new, bound) in state.config.listeners.iter_mut().zip(&old.config.listeners) {
        new.address = bound.address;
    }
    state.config.admin.address = old.config.admin.address;
    if state.config.transparency != old.config.transparency {
        restart_pending = true;
        tracing::warn!("[transparency] changed: needs a restart; the log keeps running with the settings it was opened with");
        // The listener's certificate files, when they are the same, are
        // still reloaded: renewed ones are served from the next handshake.
        let files = |c: &Config| c.transparency.as_ref().map(|t| t.tls.clone());
        if files(&state.config) != files(&old.config) {
            state.log_tls = old.log_tls.clone();
        }
        state.config.transparency = old.config.transparency.clone();
    }
    // Checked against the budget in effect, not the one configured (it
    // needs a restart): a limit above it would keep no body for a replay.
    let (limit, budget) = (
        state.config.upstream.replay_limit_bytes,
        instance.replay_budget_bytes,
    );
    if budget != 0 && limit > budget {
        report.push(
            "upstream.replay_limit_bytes",
            format!(
                "{limit} is above the replay budget in effect ({budget}; a new \
                 upstream.replay_budget_bytes needs a restart): no body could ever be kept for a replay"
            ),
        );
        return Err(report);
    }
    let restart_only = restart_only_changes(&old.config, &mut state.config);
    if !restart_only.is_empty() {
        restart_pending = true;
        tracing::warn!(
            keys = %restart_only.join(", "),
            "changed settings that are read at start only: they need a restart; the rest of the reload applies"
        );
    }
    report
        .finish(Some(state))
        .map(|state| (state, restart_pending))
}

/// For each bound listener, in order, the index of the configured one whose
/// settings its socket takes: the one configured at the address it is bound
/// to, so a reordered list keeps each socket's TLS, trust and PROXY
/// settings; sockets whose address is configured no more (a change that
/// needs a restart) take the other configured listeners in their order.
/// `configured` and `bound` are as long.
fn bound_order(configured: &[Listener], bound: &[Listener]) -> Vec<usize> {
    let mut taken = vec![false; configured.len()];
    let same: Vec<Option<usize>> = bound
        .iter()
        .map(|b| {
            let i =
                (0..configured.len()).find(|&i| !taken[i] && configured[i].address == b.address)?;
            taken[i] = true;
            Some(i)
        })
        .collect();
    let mut rest = (0..configured.len()).filter(|&i| !taken[i]);
    same.into_iter()
        .map(|i| i.or_else(|| rest.next()).unwrap_or_default())
        .collect()
}

/// The settings, besides listeners, admin and `[transparency]`, that the
/// running process read once at start and a reload does not change: those
/// `new` changes, each set back to the value in force (`old`'s), so the
/// running state says what is in force and the next reload compares with
/// that (it warned again of a change already reverted in the file).
fn restart_only_changes(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($key:literal, $($field:tt)+) => {
            if old.$($field)+ != new.$($field)+ {
                changed.push($key);
                new.$($field)+ = old.$($field)+.clone();
            }
        };
    }
    keep!("transparency.witnesses", witnesses);
    // The log lines' format is set when logging starts.
    keep!("log.format", log_format);
    keep!("timeouts.shutdown_grace", timeouts.shutdown_grace);
    keep!("timeouts.reload_poll", timeouts.reload_poll);
    keep!("limits.max_connections", limits.max_connections);
    keep!("runtime.worker_threads", worker_threads);
    keep!("upstream.replay_budget_bytes", upstream.replay_budget_bytes);
    keep!("health.recovery_interval", health.recovery_interval);
    changed
}

/// A SIGHUP since [`catch_hangup_early`], before [`run`] listened.
#[cfg(unix)]
static EARLY_HANGUP: std::sync::OnceLock<Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

/// Called first thing by `serve`: from then on a SIGHUP is recorded, and
/// [`run`] reloads once it starts. Until it listens, SIGHUP's default
/// action would end the process — a `systemctl reload` (a certificate
/// renewal's hook) while the GeoIP database loads or the log opens — and
/// systemd does not restart a service a SIGHUP ended.
pub fn catch_hangup_early() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let flag = EARLY_HANGUP.get_or_init(Default::default);
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(flag))?;
    }
    Ok(())
}

/// Whether a SIGHUP came before [`run`] listened (and forgets it).
fn hangup_came_early() -> bool {
    #[cfg(unix)]
    {
        EARLY_HANGUP
            .get()
            .is_some_and(|flag| flag.swap(false, std::sync::atomic::Ordering::AcqRel))
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Watches for SIGHUP and file changes until `stop` is set.
pub async fn run(instance: Arc<Instance>, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let poll = instance.snapshot().config.timeouts.reload_poll;
    let mut hup = hangup();
    let mut early = hangup_came_early();
    // What the running state was built from: a change made while it was
    // being built or before this task first ran is still seen.
    let mut seen = instance.snapshot().files.clone();
    let mut tick = tokio::time::interval(if poll.is_zero() {
        std::time::Duration::from_secs(3600)
    } else {
        poll
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Files seen changed at the last poll, waiting to be seen the same at
    // this one.
    let mut changing = None;
    loop {
        let by_signal = std::mem::take(&mut early)
            || tokio::select! {
                () = stopped(&mut stop) => return,
                _ = recv(&mut hup) => true,
                _ = tick.tick() => false,
            };
        let mut now = None;
        if !by_signal {
            if poll.is_zero() {
                continue;
            }
            let files = seen.again();
            if files == seen {
                changing = None;
                continue;
            }
            // A change is taken once it has stood for a poll: a file
            // written in place in several steps is not read half-written
            // (reload audit, stop 68: a tenants file written in two steps
            // was taken without its tenant's `mismatch = "refuse"` between
            // them, and a Swiss client's uploads were stored in the US).
            if changing.as_ref() != Some(&files) {
                changing = Some(files);
                continue;
            }
            changing = None;
            now = Some(files);
            tracing::info!(trigger = "files", "reloading");
        } else {
            tracing::info!(trigger = "SIGHUP", "reloading");
        }
        // The watched files as the reload begins, before it reads any.
        let before = now.unwrap_or_else(|| seen.again());
        // Off the async workers: building reads and hashes the GeoIP
        // database and parses certificates (with one worker thread, every
        // connection would wait for it).
        // Not waited for at shutdown: a reload of a large configuration
        // takes tens of seconds, and the process outlived shutdown_grace
        // for it (scale audit, stop 65); the runtime does not wait for
        // it either (`cli::block_on_with`).
        let (inst, p) = (instance.clone(), path.clone());
        let reloaded = tokio::select! {
            reloaded = tokio::task::spawn_blocking(move || reload(&inst, &p)) => reloaded,
            () = stopped(&mut stop) => {
                tracing::info!("shutting down: the reload under way is abandoned");
                return;
            }
        };
        seen = match reloaded {
            // The files the new state was built from, each no newer than
            // it was before the reload read it: one changed while the
            // state was built (the config and tenant files are read before
            // the new state's fingerprint is taken) is seen at the next
            // poll.
            Ok(Ok(())) => instance.snapshot().files.clone().no_newer_than(&before),
            // A broken file is retried only when something changes again —
            // also while the failed build ran — among the files of the
            // running state and those the failed config names (a new
            // certificate or database not written yet, say).
            Ok(Err(report)) => before.and(report.named),
            Err(_) => before,
        };
    }
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

#[cfg(test)]
mod tests {
    use crate::config::tests::{Files, MINIMAL};
    use crate::config::Config;

    /// Every setting a reload cannot apply is named when it changes, so the
    /// operator is told that the change waits for a restart.
    #[test]
    fn a_change_read_at_start_only_is_named() {
        let files = Files::new("restart-only");
        let config =
            |extra: &str| Config::from_toml(&format!("{MINIMAL}{extra}"), &files.0).unwrap();
        let old = config("");
        for (extra, key) in [
            ("[log]\nformat = \"json\"\n", "log.format"),
            ("[runtime]\nworker_threads = 2\n", "runtime.worker_threads"),
            (
                "[timeouts]\nshutdown_grace = \"7s\"\n",
                "timeouts.shutdown_grace",
            ),
            ("[limits]\nmax_connections = 77\n", "limits.max_connections"),
        ] {
            let mut new = config(extra);
            assert_eq!(
                super::restart_only_changes(&old, &mut new),
                [key],
                "{extra}"
            );
            // Set back to the value in force: a reload of the file as it
            // was at start changes nothing (it warned again).
            assert!(
                super::restart_only_changes(&new, &mut config("")).is_empty(),
                "{extra}"
            );
        }
        assert!(super::restart_only_changes(&old, &mut config("")).is_empty());
    }
}
