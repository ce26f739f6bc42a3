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

use std::collections::VecDeque;
use std::path::PathBuf;
#[cfg(test)]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use arc_swap::ArcSwap;

use crate::backend::{id_key, unix_now};
pub use crate::backend::{LogError, LogMetrics, Published};
use crate::directory::{self, lock, Directory};
use crate::merkle::{self, Hash};
use crate::note::{Signer, Verifier};
use crate::postgres::Fleet;
use crate::record::Record;
use crate::refusals::RefusalGate;
use crate::settings::Transparency;
use crate::tiles::{self, Tile};

enum Backend {
    /// The current generation of a directory log (and, for whoever still
    /// holds it, the one that just rolled).
    Directory(Arc<Opened>),
    /// A sealed generation of a directory log, its directory opened when
    /// it is read.
    Sealed(Sealed),
    Postgres(Fleet),
}

/// Sealed generations whose directories stay open after a read, at most
/// (the least recently read is closed first; one a reader still holds
/// closes when it is done). An open directory holds two file descriptors
/// (its `lock` and its index) and its index's cache (up to 4 MiB, as it is
/// read), so a log that rolled thousands of times held thousands of each,
/// all opened at start. Reopening one reads its checkpoint, the tiles of
/// its right edge and its index's header.
const OPEN_SEALED: usize = 8;

/// A directory log, open: the current generation's, or a sealed one's
/// while it is read or kept on the [`Shelf`].
struct Opened {
    directory: Directory,
    /// Dropped after `directory` (fields drop in order), so its generation
    /// is opened again only once its lock and index are closed.
    closing: Closing,
}

impl std::ops::Deref for Opened {
    type Target = Directory;

    fn deref(&self) -> &Directory {
        &self.directory
    }
}

impl Opened {
    /// `directory`, as the one open directory of its generation's `slot`
    /// (whose lock the caller holds as `state`).
    fn install(slot: &Arc<Slot>, state: &mut SlotState, directory: Directory) -> Arc<Opened> {
        let opened = Arc::new(Opened {
            directory,
            closing: Closing(slot.clone()),
        });
        state.directory = Arc::downgrade(&opened);
        state.open = true;
        opened
    }

    /// The current generation's directory (a new slot: it becomes a sealed
    /// generation's at a roll).
    fn new(directory: Directory) -> Arc<Opened> {
        let slot = Arc::new(Slot::default());
        let mut state = lock(&slot.state);
        Opened::install(&slot, &mut state, directory)
    }
}

/// Where a directory generation's one open [`Directory`] is found: its
/// readers share it, and it is opened again only once closed — a second
/// open in this process would fail on the lock the first holds (and on
/// its index's). Never drop an `Arc<Opened>` holding `state`: the last
/// one's [`Closing`] takes it.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Notified when the directory is closed.
    closed: Condvar,
}

#[derive(Default)]
struct SlotState {
    directory: Weak<Opened>,
    /// `directory` is open, or being closed: its last holder let go but
    /// its files are not closed yet.
    open: bool,
}

struct Closing(Arc<Slot>);

impl Drop for Closing {
    fn drop(&mut self) {
        lock(&self.0.state).open = false;
        self.0.closed.notify_all();
    }
}

/// The sealed generations' directories kept open (most recently read
/// last, [`OPEN_SEALED`] at most), and what opening one takes.
struct Shelf {
    open: Mutex<VecDeque<(u32, Arc<Opened>)>>,
    settings: Transparency,
    metrics: LogMetrics,
    /// Tests: sealed directories opened.
    #[cfg(test)]
    opened: AtomicUsize,
}

impl Shelf {
    fn new(settings: &Transparency, metrics: &LogMetrics) -> Shelf {
        Shelf {
            open: Mutex::new(VecDeque::with_capacity(OPEN_SEALED + 1)),
            settings: settings.clone(),
            metrics: metrics.clone(),
            #[cfg(test)]
            opened: AtomicUsize::new(0),
        }
    }

    /// Keeps generation `number`'s directory open as the most recently
    /// read, closing the least recently read beyond [`OPEN_SEALED`] (once
    /// no reader holds it).
    fn keep(&self, number: u32, opened: &Arc<Opened>) {
        let closed = {
            let mut open = lock(&self.open);
            match open.iter().position(|(n, _)| *n == number) {
                Some(at) => {
                    let kept = open.remove(at);
                    open.extend(kept);
                    None
                }
                None => {
                    open.push_back((number, opened.clone()));
                    if open.len() > OPEN_SEALED {
                        open.pop_front()
                    } else {
                        None
                    }
                }
            }
        };
        // Outside the lock: closing takes the generation's slot.
        drop(closed);
    }
}

/// What a sealed generation keeps while its directory is closed.
struct Sealed {
    signer: Arc<Signer>,
    verifier: Verifier,
    /// Its last checkpoint, with the cosignatures added since: the one its
    /// directory serves and cosigns while open.
    latest: Arc<ArcSwap<Published>>,
    slot: Arc<Slot>,
    shelf: Arc<Shelf>,
}

impl Sealed {
    /// Generation `number`'s directory (origin `origin`): the one open, or
    /// opened now (blocking) — once, however many read it at once.
    fn directory(&self, number: u32, origin: &str) -> Result<Arc<Opened>, LogError> {
        let opened = {
            let mut state = lock(&self.slot.state);
            loop {
                if let Some(opened) = state.directory.upgrade() {
                    break opened;
                }
                if !state.open {
                    // Under the slot's lock: other readers of this
                    // generation wait for this open.
                    let shelf = &self.shelf;
                    let mut settings = shelf.settings.clone();
                    settings.directory = generation_dir(&shelf.settings, number);
                    settings.origin = origin.to_string();
                    let directory = Directory::open_sealed(
                        &settings,
                        self.signer.clone(),
                        self.verifier.clone(),
                        self.latest.clone(),
                        shelf.metrics.clone(),
                    )
                    .inspect_err(|e| {
                        tracing::error!(error = %e, generation = number, "cannot open a sealed generation of the transparency log to read it");
                    })?;
                    #[cfg(test)]
                    shelf.opened.fetch_add(1, Ordering::Relaxed);
                    break Opened::install(&self.slot, &mut state, directory);
                }
                // Its last holder let go and its files are being closed.
                state = self
                    .slot
                    .closed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        self.shelf.keep(number, &opened);
        Ok(opened)
    }

    /// The directory, if it is open now (not opened for this).
    fn if_open(&self) -> Option<Arc<Opened>> {
        let state = lock(&self.slot.state);
        state.directory.upgrade()
    }
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

/// What `check-config` says of a directory log, without opening it (no
/// lock taken, nothing written): each generation's checkpoint read and
/// verified with the configured key and origin, as the start reads it —
/// a log signed by another key, or of another origin, stops `serve`, and
/// `check-config` said "configuration OK" (README audit, stop 64). What
/// follows the checkpoint (the records written since) is read at start.
pub fn check_directory(settings: &Transparency) -> Result<String, LogError> {
    let numbers = generation_numbers(settings)?;
    let pkcs8 = directory::read_key(settings)?;
    let mut last = None;
    for &n in &numbers {
        let origin = generation_origin(&settings.origin, n);
        let (_, verifier) = directory::keys(settings, &pkcs8, &origin)?;
        last = directory::stored_checkpoint(&generation_dir(settings, n), &verifier, &origin)?
            .map(|p| (n, p.size));
    }
    Ok(match last {
        Some((1, size)) => format!("checkpoint at size {size} verified with the key"),
        Some((n, size)) => format!(
            "{n} generations; generation {n}'s checkpoint at size {size} verified with the key"
        ),
        None if numbers.len() == 1 => "no checkpoint yet (a new log)".to_string(),
        None => format!(
            "{} generations; the last has no checkpoint yet",
            numbers.len()
        ),
    })
}

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
            backend: Backend::Directory(Opened::new(directory)),
        })
    }

    /// Sealed generation `number` of a directory log (the log's key:
    /// `pkcs8`), without opening its directory: its last checkpoint is
    /// read from its `checkpoint` file and verified. One without that file
    /// (or still in the format before tiles) is recovered as any log once,
    /// and closed. Blocking.
    fn sealed(
        settings: &Transparency,
        number: u32,
        pkcs8: &[u8],
        shelf: &Arc<Shelf>,
    ) -> Result<Generation, LogError> {
        let dir = generation_dir(settings, number);
        let origin = generation_origin(&settings.origin, number);
        let (signer, verifier) = directory::keys(settings, pkcs8, &origin)?;
        let latest = match directory::sealed_checkpoint(&dir, &verifier, &origin)? {
            Some(latest) => Arc::new(latest),
            None => {
                let recovered = Generation::open(settings, number, shelf.metrics.clone())?;
                recovered.seal();
                if let Backend::Directory(d) = &recovered.backend {
                    d.repair_sealed();
                }
                recovered.latest()
            }
        };
        Ok(Generation {
            number,
            origin,
            backend: Backend::Sealed(Sealed {
                signer: Arc::new(signer),
                verifier,
                latest: Arc::new(ArcSwap::new(latest)),
                slot: Arc::new(Slot::default()),
                shelf: shelf.clone(),
            }),
        })
    }

    /// This generation, just rolled (its directory sealed), as a sealed
    /// one: its directory stays open as the most recently read.
    fn to_sealed(&self, opened: &Arc<Opened>, shelf: &Arc<Shelf>) -> Generation {
        let (signer, latest) = opened.shared();
        shelf.keep(self.number, opened);
        Generation {
            number: self.number,
            origin: self.origin.clone(),
            backend: Backend::Sealed(Sealed {
                signer,
                verifier: opened.verifier().clone(),
                latest,
                slot: opened.closing.0.clone(),
                shelf: shelf.clone(),
            }),
        }
    }

    /// The directory to read (a sealed generation's opened if closed), or
    /// `None` for a fleet's log. Blocking.
    fn directory(&self) -> Result<Option<Arc<Opened>>, LogError> {
        match &self.backend {
            Backend::Directory(d) => Ok(Some(d.clone())),
            Backend::Sealed(s) => s.directory(self.number, &self.origin).map(Some),
            Backend::Postgres(_) => Ok(None),
        }
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
            Backend::Sealed(s) => &s.signer,
            Backend::Postgres(f) => f.signer(),
        }
    }

    pub fn verifier(&self) -> &Verifier {
        match &self.backend {
            Backend::Directory(d) => d.verifier(),
            Backend::Sealed(s) => &s.verifier,
            Backend::Postgres(f) => f.verifier(),
        }
    }

    /// Whether [`Generation::latest`] is the log's checkpoint: always, but
    /// for a fleet replica that has not yet confirmed a stored checkpoint
    /// replicated since it started (it serves the empty tree's until then).
    pub fn confirmed(&self) -> bool {
        match &self.backend {
            Backend::Postgres(f) => f.confirmed(),
            Backend::Directory(_) | Backend::Sealed(_) => true,
        }
    }

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Arc<Published> {
        match &self.backend {
            Backend::Directory(d) => d.latest(),
            Backend::Sealed(s) => s.latest.load_full(),
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
            Backend::Directory(_) | Backend::Sealed(_) => Ok(self.latest()),
            Backend::Postgres(f) => f.catch_up(size),
        }
    }

    /// Records written (checkpointed or not; a fleet's as last seen; a
    /// sealed generation's last checkpoint covers all of them).
    pub fn size(&self) -> u64 {
        match &self.backend {
            Backend::Directory(d) => d.size(),
            Backend::Sealed(s) => s.latest.load().size,
            Backend::Postgres(f) => f.size(),
        }
    }

    fn checkpoint(&self) -> Result<Arc<Published>, LogError> {
        match &self.backend {
            Backend::Directory(d) => d.checkpoint(),
            Backend::Sealed(s) => Ok(s.latest.load_full()),
            Backend::Postgres(f) => f.checkpoint(),
        }
    }

    /// The log's own threads still running (writer, helper).
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        match &self.backend {
            Backend::Directory(d) => d.threads(),
            Backend::Sealed(s) => s.if_open().map_or(0, |d| d.threads()),
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
        // A tile that cannot be read fails the proof (a 503), not "no
        // proof".
        let mut failed = None;
        let mut kept = |read: Result<Option<Vec<u8>>, LogError>| {
            read.unwrap_or_else(|e| {
                failed = Some(e);
                None
            })
        };
        let proved = match (self.directory()?, &self.backend) {
            (Some(d), _) => tiles::prove(size, |t| kept(d.any_tile(t)), f),
            (None, Backend::Postgres(fleet)) => tiles::prove(size, |t| kept(fleet.any_tile(t)), f),
            (None, _) => None,
        };
        failed.map_or(Ok(proved), Err)
    }

    /// The stored bytes of leaf `index` (blocking: one read).
    pub fn record(&self, index: u64) -> Result<Option<Vec<u8>>, LogError> {
        match &self.backend {
            Backend::Postgres(f) => f.record(index),
            _ => self.directory()?.map_or(Ok(None), |d| d.record(index)),
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
            Backend::Postgres(f) => f.any_tile(tile),
            _ => self.directory()?.map_or(Ok(None), |d| d.any_tile(tile)),
        }
    }

    /// The leaf index of the record for `request_id` (blocking: it reads
    /// the index and the record).
    pub fn index_of(&self, request_id: &str) -> Result<Option<u64>, LogError> {
        let key = id_key(request_id);
        let candidates = match &self.backend {
            Backend::Postgres(f) => f.indexes_of(key)?,
            _ => self
                .directory()?
                .map_or_else(|| Ok(Vec::new()), |d| d.indexes_of(key))?,
        };
        // Ids that are not 32 hex digits are hashed: confirm the match.
        let mut unreadable = None;
        for index in candidates {
            let Some(bytes) = self.record(index)? else {
                continue;
            };
            match Record::from_bytes(&bytes) {
                Ok(r) if r.request_id == request_id => return Ok(Some(index)),
                Ok(_) => {}
                Err(e) => unreadable = Some((index, e)),
            }
        }
        // A candidate this version cannot read (a newer version's record,
        // in a fleet rolling out or after a rollback) may be the one: not
        // "no such record", which a verifier takes for INVALID (upgrade
        // audit, stop 68).
        match unreadable {
            Some((index, e)) => Err(LogError::Corrupt {
                path: format!("{} entry {index}", self.origin),
                message: format!(
                    "a record this version cannot read ({e}): written by a newer version of the proxy? Upgrade this one"
                ),
            }),
            None => Ok(None),
        }
    }

    fn memory_bytes(&self) -> usize {
        match &self.backend {
            Backend::Directory(d) => d.memory_bytes(),
            Backend::Sealed(s) => {
                let open = s.if_open();
                std::mem::size_of::<Generation>()
                    + self.origin.len()
                    + s.latest.load().note.len()
                    + open.map_or(0, |d| d.memory_bytes())
            }
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
            // Its directory shares `latest`: the generation serves the
            // cosigned note once it is closed again.
            Backend::Sealed(s) => match s.directory(self.number, &self.origin) {
                Ok(d) => d.add_cosignatures(size, lines),
                // Served all the same (its checkpoint file keeps the note
                // without it; the open's error is logged): dropped, the
                // witness task took it for a newer checkpoint's doing.
                Err(_) => crate::backend::cosign(&s.latest, size, lines).is_some(),
            },
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

/// How often a refusal tries a log whose last append failed (in tests, a
/// minute: a loaded machine must not make a test's refusals probe).
const PROBE_EVERY: std::time::Duration = if cfg!(test) {
    std::time::Duration::from_secs(60)
} else {
    std::time::Duration::from_millis(100)
};

/// Clears its mark when dropped.
struct Cleared<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Cleared<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// The transparency log (see the module documentation).
pub struct Log {
    /// The generation that takes appends.
    current: ArcSwap<Generation>,
    /// Older generations of a directory log, oldest first: sealed, served.
    sealed: Mutex<Vec<Arc<Generation>>>,
    /// Their directories kept open.
    shelf: Arc<Shelf>,
    /// Held while rolling to a new generation.
    rolling: tokio::sync::Mutex<()>,
    /// When the roll running now began (ms after `epoch`, plus one; 0:
    /// none): one running past `transparency.write_timeout` (a disk that
    /// does not answer) makes the log failing until it ends — as a batch's
    /// `writing_since` does; marked by the roll itself, so nothing can
    /// leave it set (a waiter that marked it on its own timeout, after the
    /// roll had ended, left the log failing for good: review, stop 63).
    rolling_since: std::sync::atomic::AtomicU64,
    /// Records appending through a roll, each in a task of its own
    /// ([`Log::roll_and_append`]): waited for by [`Log::settle`].
    rolls_in_flight: tokio::sync::watch::Sender<usize>,
    /// Sealed generations' repairs after their rolls, running or waiting
    /// for `repairing`: waited for by [`Log::settle_repairs`].
    repairs_in_flight: tokio::sync::watch::Sender<usize>,
    /// One repair at a time.
    repairing: Arc<tokio::sync::Semaphore>,
    /// When a refusal last tried the log while it was failing (ms after
    /// `epoch`, plus one; 0: never; see [`Log::append_refusal`]).
    last_probe: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
    /// Tests: rolls wait while it says so (a disk that does not answer).
    #[cfg(test)]
    rolls_held: tokio::sync::watch::Sender<bool>,
    /// Tests: a sealed generation's repair waits while it says so.
    #[cfg(test)]
    repairs_held: tokio::sync::watch::Sender<bool>,
    settings: Transparency,
    refusals: RefusalGate,
    failing: AtomicBool,
    metrics: LogMetrics,
}

/// Counts a task out of its count however it ends.
struct Out<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for Out<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
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
        let shelf = Arc::new(Shelf::new(settings, &metrics));
        // The sealed ones first, so the current generation's numbers are
        // the metrics' last word (a sealed one recovered as a log sets
        // them). Only their checkpoints are read: start-up does not grow
        // with the log by more than a file per generation.
        let (&last, sealed) = numbers.split_last().unwrap_or((&1, &[]));
        let sealed = match sealed {
            [] => Vec::new(),
            sealed => {
                // The current generation's lock first, held while the
                // sealed ones are read: a second process on the same
                // directory stops here, before it recovers (writes) a
                // sealed generation the first may be reading. (Released
                // for the current generation's own open, just below.)
                let _current = directory::take_lock(&generation_dir(settings, last))?;
                let pkcs8 = directory::read_key(settings)?;
                sealed
                    .iter()
                    .map(|&n| Generation::sealed(settings, n, &pkcs8, &shelf).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        // Sealed by a roll whose repair a stop cut short: repaired once
        // the log serves, as after a roll (at start, one after another,
        // they held the listeners back ~3 s each on a slow disk:
        // verification, stop 67).
        let marked: Vec<_> = sealed
            .iter()
            .filter(|g| directory::unrepaired(&generation_dir(settings, g.number)))
            .cloned()
            .collect();
        let current = Arc::new(Generation::open(settings, last, metrics.clone())?);
        let log = Arc::new(Log::new(current, sealed, shelf, settings, metrics));
        for generation in marked {
            log.repair_later(generation);
        }
        Ok(log)
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
                let shelf = Arc::new(Shelf::new(settings, &metrics));
                Ok(Arc::new(Log::new(
                    current,
                    Vec::new(),
                    shelf,
                    settings,
                    metrics,
                )))
            }
        }
    }

    fn new(
        current: Arc<Generation>,
        sealed: Vec<Arc<Generation>>,
        shelf: Arc<Shelf>,
        settings: &Transparency,
        metrics: LogMetrics,
    ) -> Log {
        metrics.generation.set(i64::from(current.number));
        Log {
            current: ArcSwap::new(current),
            sealed: Mutex::new(sealed),
            shelf,
            rolling: tokio::sync::Mutex::new(()),
            rolling_since: std::sync::atomic::AtomicU64::new(0),
            rolls_in_flight: tokio::sync::watch::Sender::new(0),
            repairs_in_flight: tokio::sync::watch::Sender::new(0),
            repairing: Arc::new(tokio::sync::Semaphore::new(1)),
            last_probe: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            #[cfg(test)]
            rolls_held: tokio::sync::watch::Sender::new(false),
            #[cfg(test)]
            repairs_held: tokio::sync::watch::Sender::new(false),
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
        // The current one read under the list's lock, as a roll changes
        // both (see `Log::roll`).
        let sealed = lock(&self.sealed);
        let mut all = sealed.clone();
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

    /// Tests: holds a sealed generation's repair after its roll, or lets
    /// it go.
    #[cfg(test)]
    pub(crate) fn hold_repairs(&self, hold: bool) {
        self.repairs_held.send_replace(hold);
    }

    /// Tests: holds rolls before they start to seal, or lets them go.
    #[cfg(test)]
    pub(crate) fn hold_rolls(&self, hold: bool) {
        self.rolls_held.send_replace(hold);
    }

    /// True while appends fail: new uploads should not be accepted under
    /// `on_write_error = "refuse"`. Cleared by the next append that
    /// succeeds (a refusal's record), or a fleet's checkpoint tick once
    /// its database takes writes again.
    /// Why the log takes no write until the process restarts, if so (a
    /// directory log poisoned: `Directory::poisoned`): the replica is not
    /// ready.
    pub fn needs_restart(&self) -> Option<&'static str> {
        match &self.current.load().backend {
            Backend::Directory(d) if d.poisoned() => Some(
                "the transparency log takes no write until a restart (a failed write could not be undone, or its directory was replaced; its log says which)",
            ),
            _ => None,
        }
    }

    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed) || self.backend_failing()
    }

    pub(crate) fn backend_failing(&self) -> bool {
        let since = self.rolling_since.load(Ordering::Relaxed);
        if since != 0
            && self.millis().saturating_sub(since) > self.settings.write_timeout.as_millis() as u64
        {
            return true;
        }
        match &self.current.load().backend {
            // Poisoned: refused before forwarding, not after (verification,
            // stop 69: the first upload after it was stored, then 503).
            Backend::Directory(d) => d.stalled() || d.poisoned(),
            Backend::Sealed(_) => false,
            Backend::Postgres(f) => f.refusing_writes(),
        }
    }

    /// Appends `record` as the next leaf and returns once it is durable
    /// (fsynced in its bundle, or committed in the fleet's database): no
    /// crash can give its index to another record after its receipt went
    /// out. Concurrent requests share one commit (group commit). A request
    /// dropped while it waits still has its record written. A directory
    /// log that holds `max_records` rolls to its next generation first.
    pub async fn append(self: &Arc<Self>, record: &Record<'_>) -> Result<Appended, LogError> {
        self.try_append(record)
            .await
            .map_err(|e| self.failed(e, &record.request_id))
    }

    /// [`Log::append`] without what a failure does (counted, said, the log
    /// marked failing): the caller's.
    async fn try_append(self: &Arc<Self>, record: &Record<'_>) -> Result<Appended, LogError> {
        let bytes = record.to_bytes();
        if bytes.len() > tiles::MAX_ENTRY {
            return Err(LogError::EntryTooLarge(bytes.len()));
        }
        let leaf = merkle::leaf_hash(&bytes);
        let id = id_key(&record.request_id);
        let generation = self.current();
        let appended = match &generation.backend {
            Backend::Directory(d) => match d.append(&bytes, leaf, id).await {
                Err(LogError::Full(_)) => {
                    self.roll_and_append(&generation, d, bytes, leaf, id).await
                }
                r => r.map(|i| (generation, i, bytes)),
            },
            // Never the current generation.
            Backend::Sealed(s) => Err(LogError::Full(s.latest.load().size)),
            Backend::Postgres(f) => f.append(bytes, id).await.map(|(i, b)| (generation, i, b)),
        };
        match appended {
            Ok((generation, index, bytes)) => {
                self.failing.store(false, Ordering::Relaxed);
                self.metrics.appended.inc();
                Ok(Appended {
                    index,
                    bytes,
                    leaf,
                    generation,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The append of a record that found `full` (its directory `opened`)
    /// full: the roll to the next generation and the append there run in a
    /// task of their own, so that a request dropped meanwhile (its client
    /// gone, the shutdown's cut) still has its record written, as one
    /// dropped while its batch is written does. The request waits for
    /// them `transparency.write_timeout` at most, as for any write: a roll
    /// held by the disk past it is an error (503 `log_unavailable`), and
    /// the log counts as failing until the roll ends (uploads are refused
    /// before they are forwarded; refusals are folded into summaries).
    async fn roll_and_append(
        self: &Arc<Self>,
        full: &Arc<Generation>,
        opened: &Arc<Opened>,
        bytes: Vec<u8>,
        leaf: Hash,
        id: u128,
    ) -> Result<(Arc<Generation>, u64, Vec<u8>), LogError> {
        let (log, mut full, mut opened) = (Arc::clone(self), Arc::clone(full), Arc::clone(opened));
        self.rolls_in_flight.send_modify(|n| *n += 1);
        let task = tokio::spawn(async move {
            let _out = Out(&log.rolls_in_flight);
            loop {
                log.roll(&full, &opened).await?;
                let next = log.current();
                let Backend::Directory(d) = &next.backend else {
                    // A roll makes a directory generation.
                    return Err(LogError::Full(full.size()));
                };
                match d.append(&bytes, leaf, id).await {
                    // Filled by others meanwhile (a small max_records).
                    Err(LogError::Full(_)) => opened = Arc::clone(d),
                    r => return r.map(|index| (next, index, bytes)),
                }
                full = next;
            }
        });
        let timeout = self.settings.write_timeout;
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(appended)) => appended,
            Ok(Err(e)) => Err(LogError::Io {
                path: self.settings.directory.display().to_string(),
                error: std::io::Error::other(e.to_string()),
            }),
            Err(_) => Err(LogError::Timeout(timeout)),
        }
    }

    /// Seals `full` (its directory `opened`) and starts the next
    /// generation, unless another request did already: signs `full`'s last
    /// checkpoint (covering each of its records), then opens the next
    /// generation's directory under its new origin. `full` is served on as
    /// a sealed generation, its directory kept open until other sealed
    /// ones are read.
    async fn roll(&self, full: &Arc<Generation>, opened: &Arc<Opened>) -> Result<(), LogError> {
        let _one = self.rolling.lock().await;
        if !Arc::ptr_eq(&self.current.load(), full) {
            return Ok(()); // rolled while this request waited
        }
        self.rolling_since.store(self.millis(), Ordering::Relaxed);
        // However it ends, it is no longer running.
        let _ends = Cleared(&self.rolling_since);
        #[cfg(test)]
        let _ = self.rolls_held.subscribe().wait_for(|held| !held).await;
        let (old, settings, metrics) = (full.clone(), self.settings.clone(), self.metrics.clone());
        let (opened, shelf) = (opened.clone(), self.shelf.clone());
        let (next, sealed) = tokio::task::spawn_blocking(move || {
            old.checkpoint()?;
            old.seal();
            let next = Generation::open(&settings, old.number + 1, metrics)?;
            // On the shelf (which may close another sealed directory).
            Ok::<_, LogError>((next, old.to_sealed(&opened, &shelf)))
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
        let sealed = Arc::new(sealed);
        {
            // Together for `generations` (concurrency audit, stop 67: a
            // list read in between had the full generation twice and not
            // the next).
            let mut list = lock(&self.sealed);
            list.push(sealed.clone());
            self.current.store(Arc::new(next));
        }
        // The sealed generation's partial tiles, repaired once uploads go
        // to the next (see `Directory::seal`).
        self.repair_later(sealed);
        Ok(())
    }

    /// Repairs `sealed`'s partial tiles (see `Directory::seal`) in a task
    /// of its own, one generation at a time (rolls in quick succession
    /// left a directory open and a blocking thread per repair: concurrency
    /// audit, stop 67), its directory opened as a reader's would be.
    /// Outside a Tokio runtime, now.
    fn repair_later(&self, sealed: Arc<Generation>) {
        let repair = move || {
            // (One that cannot be opened is said so; its mark stays.)
            if let Ok(Some(d)) = sealed.directory() {
                d.repair_sealed();
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            repair();
            return;
        };
        #[cfg(test)]
        let mut held = self.repairs_held.subscribe();
        let (repairs, one) = (self.repairs_in_flight.clone(), self.repairing.clone());
        repairs.send_modify(|n| *n += 1);
        runtime.spawn(async move {
            let _out = Out(&repairs);
            #[cfg(test)]
            let _ = held.wait_for(|held| !held).await;
            let Ok(_one) = one.acquire_owned().await else {
                return;
            };
            let _ = tokio::task::spawn_blocking(repair).await;
        });
    }

    /// Appends a refusal's record if the refusal budget allows (`Some`);
    /// otherwise folds it into its reason's summary (`None`), written by
    /// [`Log::write_summaries`] before the next checkpoint.
    /// While a fleet's database does not take writes, refusals are folded
    /// without waiting for it (the refused client gets its 503 at once) and
    /// their summaries are written once it does again.
    pub async fn append_refusal(
        self: &Arc<Self>,
        record: &Record<'_>,
    ) -> Option<Result<Appended, LogError>> {
        // While the last append failed too (a full disk: not a stalled
        // one), folded, not tried one by one — each failing, logging an
        // error, and lost (lifecycle audit, stop 63: 672 of 673
        // `log_unavailable` refusals left no trace) — but for one every
        // `PROBE_EVERY`, which finds the log writable again (as do the
        // summaries at each checkpoint) without a checkpoint interval's
        // uploads refused after a passing failure.
        if self.backend_failing() || (self.failing() && !self.probe_due()) {
            self.fold_refusal(record);
        } else if self.failing() || self.refusals.admit(record) {
            let appended = self.append(record).await;
            if appended.is_err() {
                // Kept in its summary.
                self.fold_refusal(record);
            }
            return Some(appended);
        } else {
            self.metrics.refusals_summarized.inc();
        }
        None
    }

    /// Milliseconds since the log was opened, plus one (0 means "never").
    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether a refusal may try the failing log now: the first one after
    /// [`PROBE_EVERY`] since the last try.
    fn probe_due(&self) -> bool {
        let now = self.millis();
        let last = self.last_probe.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= PROBE_EVERY.as_millis() as u64)
            && self
                .last_probe
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
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
    pub async fn write_summaries(self: &Arc<Self>) {
        if self.backend_failing() {
            return; // kept until the database answers again
        }
        // While the last append failed, the summaries not written are
        // tried first, alone; the refusals folded since wait, folded,
        // until they are written (a failing log adds no summary per
        // checkpoint), and then go too — at shutdown as at any tick.
        if self.failing.load(Ordering::Relaxed) {
            let kept = self.refusals.drain_kept();
            if !self.write_each(kept, true).await {
                return;
            }
        }
        self.write_each(self.refusals.drain(), false).await;
    }

    /// Waits, `transparency.write_timeout` at most, for the records still
    /// appending through a roll (their requests may be gone): before the
    /// final checkpoint, which then covers them (review, stop 63: a
    /// shutdown during a roll could end the process before they were
    /// written).
    pub async fn settle(&self) {
        let mut rolls = self.rolls_in_flight.subscribe();
        let _ =
            tokio::time::timeout(self.settings.write_timeout, rolls.wait_for(|n| *n == 0)).await;
    }

    /// Waits, `transparency.write_timeout` at most, for the repairs of the
    /// generations rolls sealed (see `Directory::seal`), so a stop leaves
    /// none to the next start (one it cuts short stays marked for it).
    pub async fn settle_repairs(&self) {
        let mut repairs = self.repairs_in_flight.subscribe();
        let _ =
            tokio::time::timeout(self.settings.write_timeout, repairs.wait_for(|n| *n == 0)).await;
    }

    /// The summaries not written (kept from a failed attempt, and those
    /// folded since), taken: at exit, to be said as lost.
    pub fn take_unwritten_summaries(&self) -> Vec<Record<'static>> {
        self.refusals.drain()
    }

    /// Appends each summary; the first that fails is kept, with the rest,
    /// for the next attempt. Whether all were written.
    /// `again`: they failed before, were counted and said then: a failure
    /// now is neither (observability audit, stop 67: a summary the log
    /// could not take was counted in `write_errors` and logged as an
    /// error at every checkpoint tick, ~3,600 an hour with no upload).
    async fn write_each(self: &Arc<Self>, summaries: Vec<Record<'static>>, again: bool) -> bool {
        let mut summaries = summaries.into_iter();
        while let Some(summary) = summaries.next() {
            let written = match again {
                false => self.append(&summary).await,
                true => self.try_append(&summary).await.inspect_err(|e| {
                    self.failing.store(true, Ordering::Relaxed);
                    tracing::debug!(error = %e, "a summary of refusals still cannot be written");
                }),
            };
            if written.is_ok() {
                self.metrics.summary_records.inc();
            } else {
                self.refusals.keep(summary);
                summaries.for_each(|rest| self.refusals.keep(rest));
                return false;
            }
        }
        true
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
            Backend::Directory(_) | Backend::Sealed(_) => true,
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
            _ => panic!("not a writable directory log"),
        }
    }
}

#[cfg(test)]
impl Log {
    /// Sealed generations whose directory is open now.
    fn open_sealed_directories(&self) -> usize {
        lock(&self.sealed)
            .iter()
            .filter(|g| match &g.backend {
                Backend::Sealed(s) => lock(&s.slot.state).open,
                _ => false,
            })
            .count()
    }

    /// Sealed directories opened since the log was.
    fn sealed_opens(&self) -> usize {
        self.shelf.opened.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
impl Generation {
    /// Whether its directory is open.
    fn is_open(&self) -> bool {
        match &self.backend {
            Backend::Sealed(s) => lock(&s.slot.state).open,
            _ => true,
        }
    }

    /// A reader's hold on a sealed generation's directory.
    fn hold(&self) -> Arc<Opened> {
        match &self.backend {
            Backend::Sealed(s) => s.directory(self.number, &self.origin).unwrap(),
            _ => panic!("not a sealed generation"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::tests::{metrics, record, setup};
    use crate::note::Checkpoint;
    use std::time::Duration;

    /// Open file descriptors of this process (nextest runs each test in a
    /// process of its own).
    /// This process's file descriptors open on files under `dir`: other
    /// tests of the same process (`cargo test` runs them on threads) open
    /// and close their own meanwhile, so a count of all of them is not
    /// this log's.
    fn fds(dir: &std::path::Path) -> usize {
        let dir = dir.canonicalize().unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.starts_with(&dir))
            .count()
    }

    /// What a test appended: per generation, the bytes of each leaf.
    type Written = Vec<Vec<Vec<u8>>>;

    /// Appends `records` to a log that rolls every 2.
    async fn roll_through(log: &Arc<Log>, records: u64) -> Written {
        let mut written: Written = Vec::new();
        for i in 0..records {
            let a = log.append(&record(i)).await.unwrap();
            let number = a.generation.number() as usize;
            written.resize(written.len().max(number), Vec::new());
            assert_eq!(a.index, written[number - 1].len() as u64);
            written[number - 1].push(a.bytes);
        }
        // The sealed generations' repairs ended, as at a shutdown: a test
        // that opens the log again finds their directories closed.
        log.settle_repairs().await;
        written
    }

    /// Generation `g` serves all of `leaves` (its records, in order):
    /// its checkpoint, tiles, records, index lookups and proofs.
    fn serves(g: &Generation, leaves: &[Vec<u8>]) {
        let n = leaves.len() as u64;
        let latest = g.latest();
        let cp = Checkpoint::open(&latest.note, g.verifier()).unwrap();
        assert_eq!((cp.origin.as_str(), cp.size), (g.origin(), n));
        assert_eq!(g.size(), n);
        let mut bundle = Vec::new();
        let mut hashes = Vec::new();
        for (i, bytes) in (0..).zip(leaves) {
            tiles::push_entry(&mut bundle, bytes);
            hashes.extend(merkle::leaf_hash(bytes));
            assert_eq!(g.record(i).unwrap().as_ref(), Some(bytes));
            let id = Record::from_bytes(bytes).unwrap().request_id.to_string();
            assert_eq!(g.index_of(&id).unwrap(), Some(i), "{id}");
            let (leaf, path) = g.inclusion_proof(i, n).unwrap().unwrap();
            merkle::verify_inclusion(&leaf, i, n, &path, &cp.root).unwrap();
        }
        assert_eq!(g.record(n).unwrap(), None);
        assert_eq!(g.index_of(&format!("{:032x}", u64::MAX)).unwrap(), None);
        let width = n as u16;
        let entries = Tile {
            level: None,
            index: 0,
            width,
        };
        assert_eq!(g.tile(entries).unwrap(), Some(bundle));
        let level0 = Tile {
            level: Some(0),
            index: 0,
            width,
        };
        assert_eq!(g.tile(level0).unwrap(), Some(hashes));
        let proof = g.consistency_proof(1, n).unwrap().unwrap();
        let first = merkle::leaf_hash(&leaves[0]);
        merkle::verify_consistency(1, n, &first, &cp.root, &proof).unwrap();
    }

    /// A roll the disk holds past `transparency.write_timeout` fails the
    /// append that waits for it (`Timeout`: its upload is answered 503) —
    /// it waited for as long as the disk held before — and the log counts
    /// as failing while it runs; a request dropped meanwhile still has its
    /// record written once the roll ends, as do the timed-out ones (static
    /// audit, stop 63).
    #[tokio::test]
    async fn a_roll_the_disk_holds_is_bounded_and_loses_no_record() {
        let (_dir, mut settings) = setup("held-roll");
        settings.max_records = 2;
        settings.write_timeout = Duration::from_millis(300);
        let log = Log::open(&settings, metrics()).unwrap();
        log.append(&record(0)).await.unwrap();
        log.append(&record(1)).await.unwrap();
        log.hold_rolls(true);
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), log.append(&record(2)))
            .await
            .expect("answered within write_timeout")
            .unwrap_err();
        assert!(matches!(err, LogError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(log.failing(), "a late roll is a failing log");
        // (Past write_timeout by whole milliseconds.)
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            log.backend_failing(),
            "while it runs, marked by the roll itself"
        );
        // A request dropped while it waits for the roll.
        let dropped = {
            let log = Arc::clone(&log);
            tokio::spawn(async move { log.append(&record(3)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        dropped.abort();
        assert_eq!(log.current().number(), 1, "still held");
        log.hold_rolls(false);
        // What shutdown waits for before its final checkpoint: the records
        // still appending through the roll (write_timeout at a time; a
        // loaded machine may need more than one).
        for _ in 0..20 {
            log.settle().await;
            if *log.rolls_in_flight.borrow() == 0 {
                break;
            }
        }
        assert_eq!(log.current().number(), 2);
        assert_eq!(log.current().size(), 2, "settled: both written");
        assert!(!log.backend_failing(), "the roll ended");
        let g = log.current();
        let mut ids: Vec<String> = (0..2)
            .map(|i| {
                let bytes = g.record(i).unwrap().unwrap();
                Record::from_bytes(&bytes).unwrap().request_id.to_string()
            })
            .collect();
        ids.sort();
        let mut want = vec![
            record(2).request_id.to_string(),
            record(3).request_id.to_string(),
        ];
        want.sort();
        assert_eq!(ids, want, "both records written in the next generation");
        // And it takes appends at once again.
        assert_eq!(log.append(&record(4)).await.unwrap().index, 0);
        assert!(!log.failing());
    }

    /// A roll does not wait for the sealed generation's partial tiles
    /// (every width of its unfinished tiles: hundreds of files, each
    /// synced): they are written after it, while the next generation takes
    /// appends and the sealed one is served (log API audit, stop 66:
    /// written in the roll, they held each of its uploads ~2 s). A stop
    /// before that repair ends leaves it marked, and the next start does
    /// it.
    #[tokio::test]
    async fn a_roll_leaves_the_sealed_partial_tiles_to_a_repair_after_it() {
        let (_dir, mut settings) = setup("repair");
        settings.max_records = 300;
        let log = Log::open(&settings, metrics()).unwrap();
        for i in 0..300 {
            log.append(&record(i)).await.unwrap();
        }
        log.hold_repairs(true);
        let appended = tokio::time::timeout(Duration::from_secs(10), log.append(&record(300)))
            .await
            .expect("the roll waits for no repair")
            .unwrap();
        assert_eq!((appended.generation.number(), appended.index), (2, 0));
        // Generation 1 is the log's directory itself; 300 records leave
        // tile 1 (of level 0, and its bundle) 44 wide.
        let sealed = settings.directory.clone();
        let partial = |level: Option<u8>, width: u16| {
            sealed.join(
                Tile {
                    level,
                    index: 1,
                    width,
                }
                .path(),
            )
        };
        let repaired = || {
            (1..=44).all(|width| {
                std::fs::read(partial(Some(0), width)).is_ok_and(|b| b.len() == 32 * width as usize)
                    && partial(None, width).is_file()
            })
        };
        assert!(directory::unrepaired(&sealed), "marked");
        // Its last checkpoint's partials are there (the roll's checkpoint
        // wrote them), not yet those of widths no checkpoint had.
        assert!(partial(Some(0), 44).is_file() && partial(None, 44).is_file());
        assert!(!partial(Some(0), 1).exists() && !partial(None, 1).exists());
        assert!(log.generations()[0]
            .inclusion_proof(299, 300)
            .unwrap()
            .is_some());
        // Files that held what they must are synced too: the last
        // checkpoint wrote this one without a sync (concurrency audit, stop
        // 67: skipped, it was never synced, and the mark went). One whose
        // sync fails keeps the mark.
        crate::disk::failing::once(&partial(Some(0), 44));
        log.hold_repairs(false);
        log.settle_repairs().await;
        assert!(repaired());
        assert!(
            directory::unrepaired(&sealed),
            "a sync failed: still marked"
        );

        // A stop cut the repair short (and the files it had not synced
        // went with a power cut): the next start does it.
        drop((log, appended));
        for level in [Some(0), None] {
            std::fs::remove_dir_all(partial(level, 1).parent().unwrap()).unwrap();
        }
        std::fs::write(sealed.join("partials.unrepaired"), b"").unwrap();
        let log = Log::open(&settings, metrics()).unwrap();
        // Once it serves, as after a roll.
        log.settle_repairs().await;
        assert!(!directory::unrepaired(&sealed), "repaired at start");
        assert!(repaired());
        assert_eq!(log.current().number(), 2);
        // The directories up to the log's own are synced too (checkpoints
        // made them without a sync): one whose sync fails keeps the mark.
        drop(log);
        std::fs::write(sealed.join("partials.unrepaired"), b"").unwrap();
        crate::disk::failing::once(&sealed.join("tile"));
        let log = Log::open(&settings, metrics()).unwrap();
        log.settle_repairs().await;
        assert!(directory::unrepaired(&sealed), "a directory's sync failed");
    }

    /// Refusals while appends fail (not stalled: a full disk) are folded
    /// into their summary, none lost, and the summary written at the next
    /// checkpoint tick is what finds the log writable again (lifecycle
    /// audit, stop 63: each was tried alone, failed, and was lost).
    #[tokio::test]
    async fn refusals_while_appends_fail_are_kept_in_their_summary() {
        let (_dir, settings) = setup("refusals-failing");
        let log = Log::open(&settings, metrics()).unwrap();
        let refusal = |i: u64| Record {
            outcome: crate::record::Outcome::Refused,
            reason: Some("log_unavailable".into()),
            upstream_status: None,
            ..record(i)
        };
        // An append that fails (here: a record too large) makes the log
        // failing.
        let mut huge = record(0);
        huge.reason = Some("x".repeat(tiles::MAX_ENTRY).into());
        assert!(log.append(&huge).await.is_err());
        assert!(log.failing());
        // One tries now (not failing after all: it is written, and the
        // log is writable again)...
        assert!(log.append_refusal(&refusal(9)).await.unwrap().is_ok());
        assert!(!log.failing());
        assert!(log.append(&huge).await.is_err());
        // ...the next ones within PROBE_EVERY are folded.
        for i in 1..=5 {
            assert!(log.append_refusal(&refusal(i)).await.is_none(), "folded");
        }
        assert_eq!(log.size(), 1);
        log.write_summaries().await;
        assert!(!log.failing(), "the summary was written");
        assert_eq!(log.size(), 2);
        let g = log.current();
        let bytes = g.record(1).unwrap().unwrap();
        let summary = Record::from_bytes(&bytes).unwrap().summary.unwrap();
        assert_eq!(summary.count, 5);
        // Writable again: a refusal is a record of its own.
        assert!(log.append_refusal(&refusal(6)).await.unwrap().is_ok());
    }

    /// A summary the log cannot take is counted and said once, when it
    /// first fails, not again at each checkpoint tick that tries it again
    /// (observability audit, stop 67: ~3,600 write errors and ERROR lines
    /// an hour with no upload).
    #[tokio::test]
    async fn a_summary_tried_again_while_the_log_fails_is_counted_once() {
        let (_dir, settings) = setup("summary-once");
        let m = metrics();
        let log = Log::open(&settings, m.clone()).unwrap();
        // One the log cannot take: here, too large for an entry.
        log.fold_refusal(&Record {
            outcome: crate::record::Outcome::Refused,
            reason: Some("x".repeat(tiles::MAX_ENTRY).into()),
            upstream_status: None,
            ..record(1)
        });
        log.write_summaries().await;
        assert!(log.failing());
        assert_eq!(m.write_errors.get(), 1, "counted when it first fails");
        for _ in 0..3 {
            log.write_summaries().await;
        }
        assert_eq!(m.write_errors.get(), 1, "tried again, not failed anew");
        assert!(log.failing());
        assert_eq!(log.take_unwritten_summaries().len(), 1, "still kept");
    }

    /// With the last append failed, one call writes the summaries kept from
    /// an earlier failed attempt and then the refusals folded since: it
    /// wrote the kept ones alone, and at shutdown the rest were lost with
    /// the process (review, stop 63).
    #[tokio::test]
    async fn kept_summaries_and_those_folded_since_are_written_together() {
        let (_dir, settings) = setup("summaries-together");
        let log = Log::open(&settings, metrics()).unwrap();
        let refusal = |i: u64, reason: &'static str| Record {
            outcome: crate::record::Outcome::Refused,
            reason: Some(reason.into()),
            upstream_status: None,
            ..record(i)
        };
        log.fold_refusal(&refusal(1, "log_unavailable"));
        for summary in log.refusals.drain() {
            log.refusals.keep(summary); // as a failed attempt leaves it
        }
        log.fold_refusal(&refusal(2, "shutdown"));
        let mut huge = record(0);
        huge.reason = Some("x".repeat(tiles::MAX_ENTRY).into());
        assert!(log.append(&huge).await.is_err());
        assert!(log.failing());
        log.write_summaries().await;
        assert_eq!(log.size(), 2, "the kept one and the one folded since");
        assert!(!log.failing());
        assert!(log.take_unwritten_summaries().is_empty(), "all written");
        // What exit finds unwritten is taken, to be said (kept and folded).
        log.fold_refusal(&refusal(3, "log_unavailable"));
        for summary in log.refusals.drain() {
            log.refusals.keep(summary);
        }
        log.fold_refusal(&refusal(4, "shutdown"));
        let lost = log.take_unwritten_summaries();
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(log.take_unwritten_summaries().is_empty());
    }

    /// A log that rolled 39 times (max_records = 2) kept every sealed
    /// generation's directory open — its `lock` and its index, two file
    /// descriptors and ~126 KiB each — and opened them all at start. Now
    /// at most `OPEN_SEALED` are open, each opened when read and closed
    /// when others are read, and a restart opens none; every generation
    /// still serves all it holds, also once closed and opened again.
    #[tokio::test]
    async fn sealed_generations_keep_a_bounded_number_of_directories_open() {
        let (_dir, mut settings) = setup("bounded");
        settings.max_records = 2;
        let fds = || fds(&settings.directory);
        let log = Log::open(&settings, metrics()).unwrap();
        let written = roll_through(&log, 79).await;
        log.checkpoint().unwrap();
        let gens = log.generations();
        assert_eq!((gens.len(), log.current().number()), (40, 40));
        assert!(log.open_sealed_directories() <= OPEN_SEALED);
        // The current generation's lock, index and staging bundles (and a
        // directory being synced), and the sealed ones' that are open: 82
        // before, two per sealed generation.
        let open = fds();
        assert!(open <= 2 * OPEN_SEALED + 12, "{open} descriptors open");
        for pass in 0..2 {
            let opened = log.sealed_opens();
            for (g, leaves) in gens.iter().zip(&written) {
                serves(g, leaves);
                assert!(log.open_sealed_directories() <= OPEN_SEALED);
            }
            if pass == 1 {
                // Each was closed since the first pass, and opened again.
                assert_eq!(log.sealed_opens() - opened, 39);
            }
        }
        let open = fds();
        assert!(open <= 2 * OPEN_SEALED + 12, "{open} descriptors open");

        let notes: Vec<String> = gens.iter().map(|g| g.latest().note.clone()).collect();
        drop((gens, log));
        let log = Log::open(&settings, metrics()).unwrap();
        // Start-up read each sealed generation's checkpoint, no directory.
        assert_eq!((log.open_sealed_directories(), log.sealed_opens()), (0, 0));
        let open = fds();
        assert!(open <= 12, "{open} descriptors open");
        let gens = log.generations();
        assert_eq!(gens.len(), 40);
        for ((g, leaves), note) in gens.iter().zip(&written).zip(&notes) {
            assert_eq!(&g.latest().note, note);
            serves(g, leaves);
        }
        assert!(log.open_sealed_directories() <= OPEN_SEALED);
        assert_eq!(log.append(&record(79)).await.unwrap().index, 1);
    }

    /// Readers of a closed sealed generation open it once between them;
    /// one closed while a reader holds it stays valid for that reader, and
    /// is not opened a second time meanwhile (its lock would refuse it);
    /// readers closing and opening generations all at once never trip
    /// over one being closed.
    #[tokio::test]
    async fn sealed_directories_are_opened_once_and_closed_only_when_unused() {
        let (_dir, mut settings) = setup("shared");
        settings.max_records = 2;
        let log = Log::open(&settings, metrics()).unwrap();
        let written = Arc::new(roll_through(&log, 23).await);
        let gens = log.generations();
        let first = gens[0].clone();
        assert!(first.threads() == 0 && log.open_sealed_directories() == OPEN_SEALED);

        let opened = log.sealed_opens();
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (g, barrier, written) = (first.clone(), barrier.clone(), written.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    serves(&g, &written[0]);
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(log.sealed_opens() - opened, 1);

        let held = first.hold();
        for (g, leaves) in gens[1..=OPEN_SEALED].iter().zip(&written[1..]) {
            serves(g, leaves);
        }
        // Off the shelf, still open for its reader; read again meanwhile
        // without a second open.
        assert_eq!(log.open_sealed_directories(), OPEN_SEALED + 1);
        assert!(first.is_open());
        assert_eq!(held.record(1).unwrap(), Some(written[0][1].clone()));
        let opened = log.sealed_opens();
        serves(&first, &written[0]);
        assert_eq!(log.sealed_opens(), opened);
        drop(held);
        assert_eq!(log.open_sealed_directories(), OPEN_SEALED);
        assert!(first.is_open(), "back on the shelf, read last");

        // 4 readers over 11 sealed generations, 8 kept open.
        let readers: Vec<_> = (0..4u64)
            .map(|t| {
                let (gens, written) = (gens.clone(), written.clone());
                std::thread::spawn(move || {
                    for i in 0..300u64 {
                        let n = ((i * 7 + t * 3) % 11) as usize;
                        let leaves = &written[n];
                        let g = &gens[n];
                        assert_eq!(g.record(1).unwrap().as_ref(), Some(&leaves[1]));
                        let id = Record::from_bytes(&leaves[0])
                            .unwrap()
                            .request_id
                            .to_string();
                        assert_eq!(g.index_of(&id).unwrap(), Some(0));
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        assert!(log.open_sealed_directories() <= OPEN_SEALED);
    }

    /// A witness's cosignature of a sealed generation whose directory is
    /// closed is stored (its directory opened for it) and served once the
    /// directory is closed again, and after a restart.
    #[tokio::test]
    async fn a_closed_sealed_generation_takes_cosignatures() {
        use base64::Engine as _;
        let (_dir, mut settings) = setup("sealed-cosig");
        settings.max_records = 2;
        let log = Log::open(&settings, metrics()).unwrap();
        let written = roll_through(&log, 2 * (OPEN_SEALED as u64 + 2) + 1).await;
        let gens = log.generations();
        let first = &gens[0];
        assert!(!first.is_open());
        let line = format!(
            "— witness.example/w1 {}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 4 + 8 + 64])
        );
        let opened = log.sealed_opens();
        assert!(!first.add_cosignatures(3, std::slice::from_ref(&line)));
        assert!(first.add_cosignatures(2, std::slice::from_ref(&line)));
        assert_eq!(log.sealed_opens(), opened + 1);
        for (g, leaves) in gens[1..=OPEN_SEALED].iter().zip(&written[1..]) {
            serves(g, leaves);
        }
        assert!(!first.is_open());
        assert!(first.latest().note.ends_with(&format!("{line}\n")));
        serves(first, &written[0]);
        drop((gens, log));
        let log = Log::open(&settings, metrics()).unwrap();
        let first = log.generation(1).unwrap();
        assert!(first.latest().note.ends_with(&format!("{line}\n")));
        serves(&first, &written[0]);
    }

    /// Start-up reads a sealed generation's checkpoint, not its tiles: one
    /// that does not verify still stops the start, naming the file, and
    /// tiles altered under a verified checkpoint fail the generation's
    /// first read (its directory's open checks them against the
    /// checkpoint, as a start used to), naming the directory. One whose
    /// checkpoint is missing is recovered at start, as before.
    #[tokio::test]
    async fn a_sealed_generation_s_checkpoint_is_checked_at_start_its_tiles_when_opened() {
        let (_dir, mut settings) = setup("sealed-corrupt");
        settings.max_records = 2;
        let log = Log::open(&settings, metrics()).unwrap();
        roll_through(&log, 7).await;
        drop(log);
        let second = settings.directory.join("generations/2");

        let checkpoint = second.join("checkpoint");
        let good = std::fs::read_to_string(&checkpoint).unwrap();
        std::fs::write(&checkpoint, good.replacen('\n', "\n\n", 1)).unwrap();
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains(&checkpoint.display().to_string()), "{e}");
        std::fs::write(&checkpoint, &good).unwrap();

        let bundle = second.join("staging.0");
        let mut bytes = std::fs::read(&bundle).unwrap();
        let at = bytes.iter().position(|b| *b == b'{').unwrap() + 2;
        bytes[at] ^= 1;
        std::fs::write(&bundle, &bytes).unwrap();
        let log = Log::open(&settings, metrics()).unwrap();
        let g = log.generation(2).unwrap();
        assert_eq!(g.latest().size, 2, "its checkpoint is served");
        let e = g.record(0).err().unwrap().to_string();
        assert!(e.contains(&second.display().to_string()), "{e}");
        assert!(e.contains("altered"), "{e}");
        // A witness's cosignature of it is served all the same (it was
        // dropped, and the witness task told a newer checkpoint took it).
        let note = g.latest().note.clone();
        let (body, _) = crate::witness::split_note(&note).unwrap();
        let w = crate::witness::Cosigner::from_seed("w.example", &[2; 32]).unwrap();
        assert!(g.add_cosignatures(2, &[w.cosign(body, 100)]));
        assert_eq!(w.verifier().verify_note(&g.latest().note), Ok(100));
        let first = [record(0), record(1)].map(|r| r.to_bytes());
        serves(&log.generation(1).unwrap(), &first);

        // One without a checkpoint is recovered as a log at start, as
        // before, and signed again.
        drop((g, log));
        std::fs::remove_file(settings.directory.join("checkpoint")).unwrap();
        let log = Log::open(&settings, metrics()).unwrap();
        serves(&log.generation(1).unwrap(), &first);
        assert_eq!(log.open_sealed_directories(), 1);
    }

    /// `check-config`'s reading of a directory log: every generation's
    /// checkpoint verified with the key, without a lock (the log is open
    /// here) or a write; one altered, or a key that is not the log's, is
    /// an error naming the file; a new directory has none yet.
    #[tokio::test]
    async fn check_directory_reads_every_generation_s_checkpoint() {
        let (_dir, mut settings) = setup("check-directory");
        assert_eq!(
            check_directory(&settings).unwrap(),
            "no checkpoint yet (a new log)"
        );
        settings.max_records = 2;
        let log = Log::open(&settings, metrics()).unwrap();
        roll_through(&log, 7).await;
        log.checkpoint().unwrap();
        let size = log.size();
        let said = check_directory(&settings).unwrap();
        assert_eq!(
            said,
            format!(
                "4 generations; generation 4's checkpoint at size {size} verified with the key"
            )
        );
        drop(log);
        let checkpoint = settings.directory.join("generations/2/checkpoint");
        let good = std::fs::read_to_string(&checkpoint).unwrap();
        std::fs::write(&checkpoint, good.replacen('\n', "\n\n", 1)).unwrap();
        let e = check_directory(&settings).unwrap_err().to_string();
        assert!(e.contains(&checkpoint.display().to_string()), "{e}");
        std::fs::write(&checkpoint, &good).unwrap();
        let other = settings.directory.join("other.key");
        std::fs::write(&other, crate::note::Signer::generate_pkcs8().unwrap()).unwrap();
        settings.signing_key = other;
        let e = check_directory(&settings).unwrap_err().to_string();
        assert!(e.contains("no signature by key"), "{e}");
    }

    /// A second process on a rolled log's directory stops at the current
    /// generation's lock before it reads the sealed ones: it used to
    /// recover (write and sign) a sealed generation whose checkpoint was
    /// missing, which the first may be reading, and only then stop.
    #[tokio::test]
    async fn a_second_open_writes_no_sealed_generation() {
        let (_dir, mut settings) = setup("second-open");
        settings.max_records = 2;
        let log = Log::open(&settings, metrics()).unwrap();
        // Generation 2 closed again: 8 sealed after it were opened since.
        roll_through(&log, 25).await;
        assert_eq!(log.open_sealed_directories(), OPEN_SEALED);
        let checkpoint = settings.directory.join("generations/2/checkpoint");
        std::fs::remove_file(&checkpoint).unwrap();
        let e = Log::open(&settings, metrics()).err().unwrap();
        assert!(matches!(e, LogError::InUse(_)), "{e}");
        assert!(!checkpoint.exists(), "the second process wrote it");
        drop(log);
    }
}
