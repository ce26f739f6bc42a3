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
//! Here too a directory log rolls to a new origin (a new [`Generation`])
//! when the current one holds `max_records`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::backend::{id_key, unix_now};
pub use crate::backend::{LogError, LogMetrics, Published};
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

/// Where generation `number` of a directory log lives: the first in
/// `transparency.directory` itself, later ones in its
/// `generations/<number>`.
fn generation_dir(settings: &Transparency, number: u32) -> PathBuf {
    match number {
        1 => settings.directory.clone(),
        n => settings.directory.join(GENERATIONS).join(n.to_string()),
    }
}

/// The origin of generation `number`: `transparency.origin` for the
/// first, `<origin>/<number>` after each roll.
pub fn generation_origin(origin: &str, number: u32) -> String {
    match number {
        1 => origin.to_string(),
        n => format!("{origin}/{n}"),
    }
}

const GENERATIONS: &str = "generations";

/// The generations of the directory log in `settings`, oldest first (`[1]`
/// for a log that never rolled, or does not exist yet). A gap or a stray
/// name under `generations/` is an error.
pub fn generation_numbers(settings: &Transparency) -> Result<Vec<u32>, LogError> {
    let mut numbers = vec![1u32];
    let rolled = settings.directory.join(GENERATIONS);
    match std::fs::read_dir(&rolled) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name();
                match name.to_str().and_then(|n| n.parse::<u32>().ok()) {
                    Some(n) if n >= 2 && name.to_str() == Some(n.to_string().as_str()) => {
                        numbers.push(n)
                    }
                    _ => {
                        return Err(LogError::Corrupt {
                            path: entry.path().display().to_string(),
                            message:
                                "not a generation of the log (generations are numbered from 2)"
                                    .into(),
                        })
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(LogError::Io {
                path: format!("transparency.directory: cannot read {}", rolled.display()),
                error: source,
            })
        }
    }
    numbers.sort_unstable();
    if let Some(gap) = numbers.iter().zip(1u32..).find(|(n, i)| *n != i) {
        return Err(LogError::Corrupt {
            path: rolled.display().to_string(),
            message: format!("generation {} is missing (found {})", gap.1, gap.0),
        });
    }
    Ok(numbers)
}

/// One origin's log: a Merkle tree with its own checkpoints and key name.
/// A directory log rolls to a new generation when the current one holds
/// `transparency.max_records` records; the older ones are sealed (their
/// last checkpoint covers every record) and stay readable.
pub struct Generation {
    number: u32,
    origin: String,
    backend: Backend,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("number", &self.number)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Generation {
    /// Opens (or creates) generation `number` of a directory log. Blocking.
    fn open(
        settings: &Transparency,
        number: u32,
        metrics: LogMetrics,
    ) -> Result<Generation, LogError> {
        let mut s = settings.clone();
        s.directory = generation_dir(settings, number);
        s.origin = generation_origin(&settings.origin, number);
        let directory = Directory::open(&s, metrics)?;
        Ok(Generation {
            number,
            origin: s.origin,
            backend: Backend::Directory(directory),
        })
    }

    /// 1 for the log as first started, one more after each roll.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The checkpoints' origin line and the key's name.
    pub fn origin(&self) -> &str {
        &self.origin
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

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Arc<Published> {
        match &self.backend {
            Backend::Directory(d) => d.latest(),
            Backend::Postgres(f) => f.latest(),
        }
    }

    /// The latest signed checkpoint, after making sure that one of at
    /// least `size` is not already stored (the fleet: another replica may
    /// have stored it since this one last followed) (blocking). `Err` when
    /// the database could not be read to make sure: a reader is then told
    /// to come back, not that the log never signed it.
    pub fn signed_for(&self, size: u64) -> Result<Arc<Published>, LogError> {
        match &self.backend {
            Backend::Directory(d) => Ok(d.latest()),
            Backend::Postgres(f) => f.catch_up(size),
        }
    }

    /// Records written (checkpointed or not; a fleet's as last seen).
    pub fn size(&self) -> u64 {
        match &self.backend {
            Backend::Directory(d) => d.size(),
            Backend::Postgres(f) => f.size(),
        }
    }

    fn checkpoint(&self) -> Result<Arc<Published>, LogError> {
        match &self.backend {
            Backend::Directory(d) => d.checkpoint(),
            Backend::Postgres(f) => f.checkpoint(),
        }
    }

    /// The log's own threads still running (writer, helper).
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        match &self.backend {
            Backend::Directory(d) => d.threads(),
            Backend::Postgres(_) => 0,
        }
    }

    /// A full generation is sealed: no more appends, no threads (a fleet's
    /// log never rolls).
    fn seal(&self) {
        if let Backend::Directory(d) = &self.backend {
            d.seal();
        }
    }

    /// An inclusion proof for leaf `index` in the tree of `size` leaves,
    /// computed from the tiles (blocking: it may read a few tiles).
    /// `Ok(None)`: no such proof; `Err`: a fleet's database did not answer
    /// (so is each read below).
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
    ) -> Result<Option<(Hash, Vec<Hash>)>, LogError> {
        let Some(leaf) = self.prove(size, |p| p.leaf(index))? else {
            return Ok(None);
        };
        let path = self.prove(size, |p| p.inclusion_proof(index))?;
        Ok(path.map(|path| (leaf, path)))
    }

    /// A consistency proof from the tree of `old` leaves to that of `new`
    /// (blocking).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Option<Vec<Hash>>, LogError> {
        if old > new {
            return Ok(None);
        }
        self.prove(new, |p| p.consistency_proof(old))
    }

    fn prove<T>(
        &self,
        size: u64,
        f: impl FnMut(&tiles::Proofs) -> Result<T, tiles::Need>,
    ) -> Result<Option<T>, LogError> {
        if size > self.size() {
            return Ok(None);
        }
        match &self.backend {
            Backend::Directory(d) => Ok(tiles::prove(size, |t| d.any_tile(t), f)),
            Backend::Postgres(fleet) => {
                let mut failed = None;
                let fetch = |t| {
                    fleet.any_tile(t).unwrap_or_else(|e| {
                        failed = Some(e);
                        None
                    })
                };
                let proved = tiles::prove(size, fetch, f);
                failed.map_or(Ok(proved), Err)
            }
        }
    }

    /// The stored bytes of leaf `index` (blocking: one read).
    pub fn record(&self, index: u64) -> Result<Option<Vec<u8>>, LogError> {
        match &self.backend {
            Backend::Directory(d) => Ok(d.record(index)),
            Backend::Postgres(f) => f.record(index),
        }
    }

    /// A C2SP tlog-tiles resource: the hash tile or entry bundle `tile`,
    /// if the latest signed checkpoint covers all of it (only what a
    /// checkpoint commits to is served). Blocking.
    pub fn tile(&self, tile: Tile) -> Result<Option<Vec<u8>>, LogError> {
        let Some(needs) = tile.needs_size() else {
            return Ok(None);
        };
        if needs > self.signed_for(needs)?.size {
            return Ok(None);
        }
        match &self.backend {
            Backend::Directory(d) => Ok(d.any_tile(tile)),
            Backend::Postgres(f) => f.any_tile(tile),
        }
    }

    /// The leaf index of the record for `request_id` (blocking: it reads
    /// the index and the record).
    pub fn index_of(&self, request_id: &str) -> Result<Option<u64>, LogError> {
        let key = id_key(request_id);
        let candidates = match &self.backend {
            Backend::Directory(d) => d.indexes_of(key),
            Backend::Postgres(f) => f.indexes_of(key)?,
        };
        // Ids that are not 32 hex digits are hashed: confirm the match.
        for index in candidates {
            let bytes = self.record(index)?;
            let matches = bytes.is_some_and(|bytes| {
                Record::from_bytes(&bytes).is_ok_and(|r| r.request_id == request_id)
            });
            if matches {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    fn memory_bytes(&self) -> usize {
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
}

/// Where an appended record landed.
#[derive(Debug, Clone)]
pub struct Appended {
    pub index: u64,
    pub bytes: Vec<u8>,
    /// The leaf hash of `bytes`.
    pub leaf: Hash,
    /// The generation (origin) whose leaf `index` it is.
    pub generation: Arc<Generation>,
}

/// The transparency log (see the module documentation).
pub struct Log {
    /// The generation that takes appends.
    current: ArcSwap<Generation>,
    /// Older generations of a directory log, oldest first: sealed, served.
    sealed: Mutex<Vec<Arc<Generation>>>,
    /// Held while rolling to a new generation.
    rolling: tokio::sync::Mutex<()>,
    settings: Transparency,
    refusals: RefusalGate,
    failing: AtomicBool,
    metrics: LogMetrics,
}

impl Log {
    /// Opens a log kept in a directory (`storage = "directory"`), every
    /// generation of it (see [`Generation`]). Blocking. A fleet's log
    /// needs [`Log::start`].
    pub fn open(settings: &Transparency, metrics: LogMetrics) -> Result<Arc<Log>, LogError> {
        if settings.postgres.is_some() {
            return Err(LogError::Database(
                "storage = \"postgres\" is opened with Log::start".into(),
            ));
        }
        let numbers = generation_numbers(settings)?;
        // Oldest first, so the current generation's numbers are the
        // metrics' last word.
        let mut generations = numbers
            .into_iter()
            .map(|n| Generation::open(settings, n, metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let current = generations.pop().expect("generation 1 is always opened");
        for sealed in &generations {
            sealed.seal();
        }
        Ok(Arc::new(Log::new(current, generations, settings, metrics)))
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
                let current = Arc::new(Generation {
                    number: 1,
                    origin: settings.origin.clone(),
                    backend: Backend::Postgres(fleet),
                });
                Ok(Arc::new(Log::new(current, Vec::new(), settings, metrics)))
            }
        }
    }

    fn new(
        current: Arc<Generation>,
        sealed: Vec<Arc<Generation>>,
        settings: &Transparency,
        metrics: LogMetrics,
    ) -> Log {
        metrics.generation.set(i64::from(current.number));
        Log {
            current: ArcSwap::new(current),
            sealed: Mutex::new(sealed),
            rolling: tokio::sync::Mutex::new(()),
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

    /// The generation that takes appends now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Every generation, oldest first (the current one last).
    pub fn generations(&self) -> Vec<Arc<Generation>> {
        let mut all = lock(&self.sealed).clone();
        all.push(self.current());
        all
    }

    /// Generation `number`, sealed or current.
    pub fn generation(&self, number: u32) -> Option<Arc<Generation>> {
        let current = self.current();
        if current.number == number {
            return Some(current);
        }
        lock(&self.sealed)
            .iter()
            .find(|g| g.number == number)
            .cloned()
    }

    /// Tests: holds the current directory log's writer before its next
    /// batch (a disk that does not answer), or lets it go.
    #[cfg(test)]
    pub(crate) fn hold_writer(&self, hold: bool) {
        if let Backend::Directory(d) = &self.current().backend {
            d.hold_writer(hold);
        }
    }

    /// True while appends fail: new uploads should not be accepted under
    /// `on_write_error = "refuse"`. Cleared by the next append that
    /// succeeds (a refusal's record), or a fleet's checkpoint tick once
    /// its database takes writes again.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed) || self.backend_failing()
    }

    pub(crate) fn backend_failing(&self) -> bool {
        match &self.current.load().backend {
            Backend::Directory(d) => d.stalled(),
            Backend::Postgres(f) => f.refusing_writes(),
        }
    }

    /// Appends `record` as the next leaf and returns once it is durable
    /// (fsynced in its bundle, or committed in the fleet's database): no
    /// crash can give its index to another record after its receipt went
    /// out. Concurrent requests share one commit (group commit). A request
    /// dropped while it waits still has its record written. A directory
    /// log that holds `max_records` rolls to its next generation first.
    pub async fn append(&self, record: &Record<'_>) -> Result<Appended, LogError> {
        let bytes = record.to_bytes();
        if bytes.len() > tiles::MAX_ENTRY {
            return Err(self.failed(LogError::EntryTooLarge(bytes.len()), &record.request_id));
        }
        let leaf = merkle::leaf_hash(&bytes);
        let id = id_key(&record.request_id);
        let (generation, appended) = loop {
            let generation = self.current();
            let appended = match &generation.backend {
                Backend::Directory(d) => match d.append(&bytes, leaf, id).await {
                    Err(LogError::Full(_)) => match self.roll(&generation).await {
                        Ok(()) => continue,
                        Err(e) => Err(e),
                    },
                    r => r.map(|i| (i, bytes)),
                },
                Backend::Postgres(f) => f.append(bytes, id).await,
            };
            break (generation, appended);
        };
        match appended {
            Ok((index, bytes)) => {
                self.failing.store(false, Ordering::Relaxed);
                self.metrics.appended.inc();
                Ok(Appended {
                    index,
                    bytes,
                    leaf,
                    generation,
                })
            }
            Err(e) => Err(self.failed(e, &record.request_id)),
        }
    }

    /// Seals `full` and starts the next generation, unless another
    /// request did already: signs `full`'s last checkpoint (covering each
    /// of its records), then opens the next generation's directory under
    /// its new origin.
    async fn roll(&self, full: &Arc<Generation>) -> Result<(), LogError> {
        let _one = self.rolling.lock().await;
        if !Arc::ptr_eq(&self.current.load(), full) {
            return Ok(()); // rolled while this request waited
        }
        let (old, settings, metrics) = (full.clone(), self.settings.clone(), self.metrics.clone());
        let next = tokio::task::spawn_blocking(move || {
            old.checkpoint()?;
            old.seal();
            Generation::open(&settings, old.number + 1, metrics)
        })
        .await
        .map_err(|e| LogError::Io {
            path: self.settings.directory.display().to_string(),
            error: std::io::Error::other(e.to_string()),
        })??;
        tracing::warn!(
            sealed = %full.origin,
            records = full.size(),
            origin = %next.origin,
            key = %next.signer().verifier_key(),
            "the transparency log reached transparency.max_records and rolled to a new origin; the sealed one stays served under /generations/{}/",
            full.number
        );
        self.metrics.generation.set(i64::from(next.number));
        lock(&self.sealed).push(full.clone());
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// Appends a refusal's record if the refusal budget allows (`Some`);
    /// otherwise folds it into its reason's summary (`None`), written by
    /// [`Log::write_summaries`] before the next checkpoint.
    /// While a fleet's database does not take writes, refusals are folded
    /// without waiting for it (the refused client gets its 503 at once) and
    /// their summaries are written once it does again.
    pub async fn append_refusal(&self, record: &Record<'_>) -> Option<Result<Appended, LogError>> {
        if self.backend_failing() {
            self.fold_refusal(record);
        } else if self.refusals.admit(record) {
            return Some(self.append(record).await);
        } else {
            self.metrics.refusals_summarized.inc();
        }
        None
    }

    /// Folds a refusal into its summary whatever the budget: one whose own
    /// record could not be written (the summary is, once the log takes
    /// writes again).
    pub fn fold_refusal(&self, record: &Record<'_>) {
        self.refusals.fold(record);
        self.metrics.refusals_summarized.inc();
    }

    /// Appends one summary record per reason for the refusals folded since
    /// the last call (the checkpoint task calls it before each checkpoint).
    pub async fn write_summaries(&self) {
        if self.backend_failing() {
            return; // kept until the database answers again
        }
        let mut summaries = self.refusals.drain().into_iter();
        while let Some(summary) = summaries.next() {
            if self.append(&summary).await.is_ok() {
                self.metrics.summary_records.inc();
            } else {
                // Kept, with the rest, for the next attempt: the log stops
                // trying while it fails, and tries again once it takes
                // writes.
                self.refusals.keep(summary);
                summaries.for_each(|rest| self.refusals.keep(rest));
                return;
            }
        }
    }

    fn failed(&self, e: LogError, request_id: &str) -> LogError {
        self.failing.store(true, Ordering::Relaxed);
        self.metrics.write_errors.inc();
        tracing::error!(error = %e, request_id, "transparency log write failed");
        e
    }

    /// The current generation's latest signed checkpoint.
    pub fn latest(&self) -> Arc<Published> {
        self.current.load().latest()
    }

    /// Records written to the current generation (checkpointed or not; a
    /// fleet's as last seen).
    pub fn size(&self) -> u64 {
        self.current.load().size()
    }

    /// Signs a checkpoint for the records so far, if this process is the
    /// integrator (a directory's always is; in a fleet, whichever replica
    /// holds the integrator lock, taken here when free), or else reads the
    /// latest checkpoint the integrator signed. A no-op when nothing
    /// changed. Blocking: call from a blocking thread.
    pub fn checkpoint(&self) -> Result<Arc<Published>, LogError> {
        let current = self.current();
        let result = current.checkpoint();
        if result.is_ok()
            && matches!(&current.backend, Backend::Postgres(f) if !f.refusing_writes())
        {
            // The database takes writes (again): let uploads be tried.
            self.failing.store(false, Ordering::Relaxed);
        }
        result
    }

    /// Whether this process signs the checkpoints (and so runs the
    /// witness exchange).
    pub fn is_integrator(&self) -> bool {
        match &self.current.load().backend {
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

    /// [`Generation::consistency_proof`] in the current generation.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Option<Vec<Hash>>, LogError> {
        self.current().consistency_proof(old, new)
    }

    /// Approximate memory held for the trees (their right edges) and ids
    /// or tiles kept in memory, over every generation.
    pub fn memory_bytes(&self) -> usize {
        self.generations().iter().map(|g| g.memory_bytes()).sum()
    }

    #[cfg(test)]
    pub(crate) fn batches(&self) -> u64 {
        match &self.current().backend {
            Backend::Directory(d) => d.batches(),
            Backend::Postgres(_) => panic!("not a directory log"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
