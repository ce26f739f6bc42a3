//! The transparency log: decision records as leaves of an append-only
//! RFC 6962 Merkle tree, stored as C2SP tlog-tiles
//! (<https://c2sp.org/tlog-tiles>) and checkpointed with signed notes.
//!
//! [`Log`] is what the proxy uses; it keeps its records in one of two
//! places (`transparency.storage`):
//!
//! * [`crate::directory`]: tiles on local disk, for one process;
//! * [`crate::postgres`]: one log for a fleet of replicas, sequenced by
//!   PostgreSQL; one replica at a time integrates it into tiles and signs
//!   its checkpoints.
//!
//! Both acknowledge a record only once it is durable, and both refuse to
//! sign a history that contradicts what they signed before. Refusals are
//! admitted here (one record each within a budget, summaries beyond it),
//! and here a failed append marks the log failing, so that uploads are
//! refused before they are forwarded until an append succeeds again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use crate::directory::Directory;
use crate::merkle::{self, Hash};
use crate::note::{NoteError, Signer, Verifier};
use crate::postgres::Fleet;
use crate::record::Record;
use crate::refusals::RefusalGate;
use crate::settings::Transparency;
use crate::tiles::{self, Tile};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("signing key {path}: {source}")]
    Key { path: String, source: NoteError },
    #[error("{path}: {message}")]
    Corrupt { path: String, message: String },
    #[error("the log holds {0} records, the configured maximum (transparency.max_records); start a new log")]
    Full(u64),
    #[error("an earlier write failed and could not be undone; restart to recover the log")]
    Poisoned,
    #[error("a record of {0} bytes is over the 65535 an entry bundle can hold")]
    EntryTooLarge(usize),
    #[error("log database: {0}")]
    Database(String),
    #[error("{0} records wait for the log database already (transparency.postgres.max_pending)")]
    Busy(usize),
}

/// Metrics the log maintains.
#[derive(Clone)]
pub struct LogMetrics {
    pub appended: IntCounter,
    /// Refusals folded into summary records (over the refusal budget).
    pub refusals_summarized: IntCounter,
    /// Summary records written.
    pub summary_records: IntCounter,
    /// Seconds each group commit took to write and fsync its batch.
    pub fsync_seconds: Histogram,
    pub write_errors: IntCounter,
    /// Hash tiles and entry bundles written (full ones).
    pub tiles_written: IntCounter,
    pub size: IntGauge,
    /// Records per commit batch (group commit; both backends).
    pub batch_records: Histogram,
    /// Seconds each batch took to commit in PostgreSQL.
    pub commit_seconds: Histogram,
    /// 1 while this process integrates the log and signs its checkpoints
    /// (always, with a directory; the advisory-lock holder in a fleet).
    pub integrator: IntGauge,
    /// Records sequenced but not yet covered by a signed checkpoint.
    pub integration_lag: IntGauge,
    pub checkpoint_size: IntGauge,
    pub checkpoint_timestamp: IntGauge,
    pub checkpoint_age: IntGauge,
}

impl LogMetrics {
    /// Registers the log's metrics into `registry` (the proxy's own, so they
    /// appear on its `/metrics`).
    pub fn register(registry: &Registry) -> Result<LogMetrics, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "residency_log_fsync_seconds",
                "Time to write and fsync one group commit of records (every receipt waits for its batch's).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        registry.register(Box::new(fsync_seconds.clone()))?;
        let batch_records = Histogram::with_opts(
            HistogramOpts::new(
                "residency_log_batch_records",
                "Records written per group commit (one fsync, or one PostgreSQL transaction).",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
            ]),
        )?;
        registry.register(Box::new(batch_records.clone()))?;
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "residency_log_commit_seconds",
                "Time for one batch of records to be sequenced and committed in PostgreSQL (storage = \"postgres\"; every receipt waits for its batch's).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(commit_seconds.clone()))?;
        Ok(LogMetrics {
                fsync_seconds,
                batch_records,
                commit_seconds,
                integrator: gauge(
                    "residency_log_integrator",
                    "1 while this process integrates the log and signs its checkpoints (a fleet has one at a time).",
                )?,
                integration_lag: gauge(
                    "residency_log_integration_lag_records",
                    "Records sequenced but not yet covered by a signed checkpoint.",
                )?,
                refusals_summarized: counter(
                    "residency_log_refusals_summarized_total",
                    "Refusals over transparency.refusal_records_per_second, folded into summary records instead of one record each.",
                )?,
                summary_records: counter(
                    "residency_log_summary_records_total",
                    "Summary records written (one per refusal reason and checkpoint interval with refusals folded).",
                )?,
                appended: counter(
                    "residency_log_records_appended_total",
                    "Decision records appended to the transparency log.",
                )?,
                tiles_written: counter(
                    "residency_log_tiles_written_total",
                    "Full hash tiles and entry bundles written (C2SP tlog-tiles).",
                )?,
                write_errors: counter(
                    "residency_log_write_errors_total",
                    "Decision records that could not be written (the request was refused, or acknowledged without a receipt under on_write_error = \"continue\").",
                )?,
                size: gauge(
                    "residency_log_size",
                    "Records in the transparency log (checkpointed or not).",
                )?,
                checkpoint_size: gauge(
                    "residency_log_checkpoint_size",
                    "Tree size of the latest signed checkpoint.",
                )?,
                checkpoint_timestamp: gauge(
                    "residency_log_checkpoint_timestamp_seconds",
                    "When the latest checkpoint was confirmed to cover every record (Unix seconds).",
                )?,
                checkpoint_age: gauge(
                    "residency_log_checkpoint_age_seconds",
                    "Seconds since a checkpoint last covered every record; grows when checkpointing fails.",
                )?,
            })
    }
}

/// A signed checkpoint as served to customers.
#[derive(Debug, Clone)]
pub struct Published {
    pub note: String,
    pub size: u64,
    pub root: Hash,
}

/// Where an appended record landed.
#[derive(Debug, Clone)]
pub struct Appended {
    pub index: u64,
    pub bytes: Vec<u8>,
    /// The leaf hash of `bytes`.
    pub leaf: Hash,
}

enum Backend {
    Directory(Directory),
    Postgres(Fleet),
}

/// The transparency log (see the module documentation).
pub struct Log {
    backend: Backend,
    settings: Transparency,
    refusals: RefusalGate,
    failing: AtomicBool,
    metrics: LogMetrics,
}

impl Log {
    /// Opens a log kept in a directory (`storage = "directory"`). Blocking.
    /// A fleet's log needs [`Log::start`].
    pub fn open(settings: &Transparency, metrics: LogMetrics) -> Result<Arc<Log>, LogError> {
        if settings.postgres.is_some() {
            return Err(LogError::Database(
                "storage = \"postgres\" is opened with Log::start".into(),
            ));
        }
        let directory = Directory::open(settings, metrics.clone())?;
        Ok(Arc::new(Log::new(
            Backend::Directory(directory),
            settings,
            metrics,
        )))
    }

    /// Opens the log where `settings` keep it: a directory (as
    /// [`Log::open`], on the blocking pool), or a fleet's database
    /// (connecting, migrating its schema and reading its checkpoint).
    pub async fn start(settings: &Transparency, metrics: LogMetrics) -> Result<Arc<Log>, LogError> {
        match &settings.postgres {
            None => {
                let (s, m) = (settings.clone(), metrics);
                tokio::task::spawn_blocking(move || Log::open(&s, m))
                    .await
                    .map_err(|e| LogError::Database(e.to_string()))?
            }
            Some(pg) => {
                let fleet = Fleet::start(settings, pg, metrics.clone()).await?;
                Ok(Arc::new(Log::new(
                    Backend::Postgres(fleet),
                    settings,
                    metrics,
                )))
            }
        }
    }

    fn new(backend: Backend, settings: &Transparency, metrics: LogMetrics) -> Log {
        Log {
            backend,
            settings: settings.clone(),
            refusals: RefusalGate::new(
                settings.refusal_records_per_second,
                settings.refusal_records_burst,
            ),
            failing: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn settings(&self) -> &Transparency {
        &self.settings
    }

    pub fn signer(&self) -> &Signer {
        match &self.backend {
            Backend::Directory(d) => d.signer(),
            Backend::Postgres(f) => f.signer(),
        }
    }

    pub fn verifier(&self) -> &Verifier {
        match &self.backend {
            Backend::Directory(d) => d.verifier(),
            Backend::Postgres(f) => f.verifier(),
        }
    }

    /// True while appends fail (or the log is full): new uploads should not
    /// be accepted under `on_write_error = "refuse"`. Cleared by the next
    /// append that succeeds (a refusal's record, or a fleet's periodic
    /// check that its database answers).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed) || self.backend_failing()
    }

    fn backend_failing(&self) -> bool {
        match &self.backend {
            Backend::Directory(_) => false,
            Backend::Postgres(f) => f.unreachable(),
        }
    }

    /// Appends `record` as the next leaf and returns once it is durable
    /// (fsynced in its bundle, or committed in the fleet's database): no
    /// crash can give its index to another record after its receipt went
    /// out. Concurrent requests share one commit (group commit). A request
    /// dropped while it waits still has its record written.
    pub async fn append(&self, record: &Record<'_>) -> Result<Appended, LogError> {
        let bytes = record.to_bytes();
        if bytes.len() > tiles::MAX_ENTRY {
            return Err(self.failed(LogError::EntryTooLarge(bytes.len()), &record.request_id));
        }
        let leaf = merkle::leaf_hash(&bytes);
        let id = id_key(&record.request_id);
        let appended = match &self.backend {
            Backend::Directory(d) => d.append(&bytes, leaf, id).await,
            Backend::Postgres(f) => f.append(bytes.clone(), id).await,
        };
        match appended {
            Ok(index) => {
                self.failing.store(false, Ordering::Relaxed);
                self.metrics.appended.inc();
                Ok(Appended { index, bytes, leaf })
            }
            Err(e) => Err(self.failed(e, &record.request_id)),
        }
    }

    /// Appends a refusal's record if the refusal budget allows (`Some`);
    /// otherwise folds it into its reason's summary (`None`), written by
    /// [`Log::write_summaries`] before the next checkpoint.
    /// While a fleet's database is unreachable, refusals are folded
    /// without waiting for it (the refused client gets its 503 at once) and
    /// their summaries are written once it answers again.
    pub async fn append_refusal(&self, record: &Record<'_>) -> Option<Result<Appended, LogError>> {
        if self.backend_failing() {
            self.refusals.fold(record);
        } else if self.refusals.admit(record) {
            return Some(self.append(record).await);
        }
        self.metrics.refusals_summarized.inc();
        None
    }

    /// Appends one summary record per reason for the refusals folded since
    /// the last call (the checkpoint task calls it before each checkpoint).
    pub async fn write_summaries(&self) {
        if self.backend_failing() {
            return; // kept until the database answers again
        }
        for summary in self.refusals.drain() {
            if self.append(&summary).await.is_ok() {
                self.metrics.summary_records.inc();
            }
        }
    }

    fn failed(&self, e: LogError, request_id: &str) -> LogError {
        self.failing.store(true, Ordering::Relaxed);
        self.metrics.write_errors.inc();
        tracing::error!(error = %e, request_id, "transparency log write failed");
        e
    }

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Arc<Published> {
        match &self.backend {
            Backend::Directory(d) => d.latest(),
            Backend::Postgres(f) => f.latest(),
        }
    }

    /// Records written (checkpointed or not; a fleet's as last seen).
    pub fn size(&self) -> u64 {
        match &self.backend {
            Backend::Directory(d) => d.size(),
            Backend::Postgres(f) => f.size(),
        }
    }

    /// Signs a checkpoint for the records so far, if this process is the
    /// integrator (a directory's always is; in a fleet, whichever replica
    /// holds the integrator lock, taken here when free), or else reads the
    /// latest checkpoint the integrator signed. A no-op when nothing
    /// changed. Blocking: call from a blocking thread.
    pub fn checkpoint(&self) -> Result<Arc<Published>, LogError> {
        let result = match &self.backend {
            Backend::Directory(d) => d.checkpoint(),
            Backend::Postgres(f) => f.checkpoint(),
        };
        if result.is_ok() && self.backend_recovered() {
            // The database answers again: let uploads be tried.
            self.failing.store(false, Ordering::Relaxed);
        }
        result
    }

    fn backend_recovered(&self) -> bool {
        matches!(&self.backend, Backend::Postgres(f) if !f.unreachable())
    }

    /// Whether this process signs the checkpoints (and so runs the
    /// witness exchange).
    pub fn is_integrator(&self) -> bool {
        match &self.backend {
            Backend::Directory(_) => true,
            Backend::Postgres(f) => f.is_integrator(),
        }
    }

    /// Updates the checkpoint-age gauge (called on every checkpoint tick).
    pub fn refresh_age(&self) {
        let at = self.metrics.checkpoint_timestamp.get();
        self.metrics.checkpoint_age.set((unix_now() - at).max(0));
    }

    /// An inclusion proof for leaf `index` in the tree of `size` leaves,
    /// computed from the tiles (blocking: it may read a few tiles).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<(Hash, Vec<Hash>)> {
        let leaf = self.prove(size, |p| p.leaf(index))?;
        let path = self.prove(size, |p| p.inclusion_proof(index))?;
        Some((leaf, path))
    }

    /// A consistency proof from the tree of `old` leaves to that of `new`
    /// (blocking).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if old > new {
            return None;
        }
        self.prove(new, |p| p.consistency_proof(old))
    }

    fn prove<T>(
        &self,
        size: u64,
        f: impl FnMut(&tiles::Proofs) -> Result<T, tiles::Need>,
    ) -> Option<T> {
        if size > self.size() {
            return None;
        }
        match &self.backend {
            Backend::Directory(d) => tiles::prove(size, |t| d.any_tile(t), f),
            Backend::Postgres(fleet) => tiles::prove(size, |t| fleet.any_tile(t), f),
        }
    }

    /// The stored bytes of leaf `index` (blocking: one read).
    pub fn record(&self, index: u64) -> Option<Vec<u8>> {
        match &self.backend {
            Backend::Directory(d) => d.record(index),
            Backend::Postgres(f) => f.record(index),
        }
    }

    /// A C2SP tlog-tiles resource: the hash tile or entry bundle `tile`,
    /// if the latest signed checkpoint covers all of it (only what a
    /// checkpoint commits to is served). Blocking.
    pub fn tile(&self, tile: Tile) -> Option<Vec<u8>> {
        if tile.needs_size()? > self.latest().size {
            return None;
        }
        match &self.backend {
            Backend::Directory(d) => d.any_tile(tile),
            Backend::Postgres(f) => f.any_tile(tile),
        }
    }

    /// The leaf index of the record for `request_id` (blocking: it reads
    /// the index and the record).
    pub fn index_of(&self, request_id: &str) -> Option<u64> {
        let key = id_key(request_id);
        let candidates = match &self.backend {
            Backend::Directory(d) => d.indexes_of(key),
            Backend::Postgres(f) => f.indexes_of(key),
        };
        // Ids that are not 32 hex digits are hashed: confirm the match.
        candidates.into_iter().find(|&index| {
            self.record(index)
                .and_then(|bytes| {
                    Record::from_bytes(&bytes)
                        .ok()
                        .map(|r| r.request_id == request_id)
                })
                .unwrap_or(false)
        })
    }

    /// Approximate memory held for the tree (its right edge) and ids or
    /// tiles kept in memory.
    pub fn memory_bytes(&self) -> usize {
        match &self.backend {
            Backend::Directory(d) => d.memory_bytes(),
            Backend::Postgres(f) => f.memory_bytes(),
        }
    }

    /// Appends witness cosignature lines (`— name base64`, no newline) to
    /// the served checkpoint if it is still the one of `size`; `false` if
    /// a newer checkpoint replaced it. The cosigned note is stored too, so
    /// it is served after a restart (and, in a fleet, by every replica).
    /// Blocking: call from a blocking thread.
    pub fn add_cosignatures(&self, size: u64, lines: &[String]) -> bool {
        match &self.backend {
            Backend::Directory(d) => d.add_cosignatures(size, lines),
            Backend::Postgres(f) => f.add_cosignatures(size, lines),
        }
    }

    #[cfg(test)]
    pub(crate) fn directory(&self) -> &Directory {
        match &self.backend {
            Backend::Directory(d) => d,
            Backend::Postgres(_) => panic!("not a directory log"),
        }
    }
}

/// The map key for a request id: its value when it is 32 hex digits (ours
/// always are), otherwise 128 bits of its SHA-256.
pub(crate) fn id_key(id: &str) -> u128 {
    if id.len() == 32 {
        if let Ok(v) = u128::from_str_radix(id, 16) {
            return v;
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
