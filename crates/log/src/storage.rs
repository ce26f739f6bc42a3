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

use crate::backend::{id_key, unix_now};
pub use crate::backend::{Appended, LogError, LogMetrics, Published};
use crate::directory::Directory;
use crate::merkle::{self, Hash};
use crate::note::{Signer, Verifier};
use crate::postgres::Fleet;
use crate::record::Record;
use crate::refusals::RefusalGate;
use crate::settings::Transparency;
use crate::tiles::{self, Tile};

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
            Backend::Directory(d) => d.append(&bytes, leaf, id).await.map(|i| (i, bytes)),
            Backend::Postgres(f) => f.append(bytes, id).await,
        };
        match appended {
            Ok((index, bytes)) => {
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

    /// When (Unix seconds) the latest checkpoint was last confirmed to
    /// cover every record; 0 before the first.
    pub fn covered_at(&self) -> i64 {
        self.metrics.checkpoint_timestamp.get()
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
