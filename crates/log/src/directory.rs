//! The transparency log: decision records as leaves of an append-only
//! RFC 6962 Merkle tree, stored as C2SP tlog-tiles
//! (<https://c2sp.org/tlog-tiles>) and checkpointed with signed notes.
//!
//! On disk, the log directory holds exactly the spec's files —
//! `tile/<L>/<N>` hash tiles, `tile/entries/<N>` entry bundles (each record
//! after its big-endian `u16` length), their `.p/<W>` partial forms for
//! every checkpoint's size, and `checkpoint` — plus `staging.<N>`, the entry
//! bundle being filled (and the next one, made ahead), and `index.redb`,
//! the request-id index.
//!
//! * **Durable before acknowledged.** A writer thread appends the records
//!   of concurrent requests to the staging bundle with one `pwrite(2)` and
//!   one `fdatasync(2)` (group commit); each request waits for its batch.
//!   The staging bundle is preallocated with zeros (so these fsyncs have no
//!   metadata to journal); at 256 entries the writer goes on in the next
//!   one, which a helper thread made ahead, and the helper cuts the full
//!   one to its records and renames it to its tile name — no directory
//!   fsync or preallocation stands between a batch and its answer. Neither a
//!   killed process nor a power loss can lose a record whose receipt went
//!   out, or give its index to another record.
//! * **Hash tiles** are written when the tree fills them and fsynced (with
//!   their directories and those of the renamed bundles, whose bytes the
//!   writer fsynced already) before a checkpoint that
//!   covers them is written, atomically (write, fsync, rename, fsync the
//!   directory).
//! * **Memory is the right edge**: the partial tile of each level
//!   ([`Edge`]), at most 255 hashes per level, plus the request ids of
//!   records not yet moved into the on-disk index (one checkpoint
//!   interval's worth, or about 65,536 under a burst). Proofs, records
//!   and tiles are read from disk.
//! * **Opening** reads the right edge at the last checkpoint's size (level
//!   0 from its entry bundle, each level above from the full tiles below
//!   it) and refuses to start unless it hashes to the checkpoint's root,
//!   then replays the records written after the checkpoint (cutting a torn
//!   tail of the staging bundle — only beyond the checkpoint). The proxy
//!   does not start on a history that contradicts what it signed. A tile
//!   or bundle deeper in the tree is not re-read at start: what the log
//!   signs next depends only on the right edge, and every client checks
//!   what it fetches against a signed root.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redb::{ReadableDatabase, TableDefinition};

use crate::backend::{cosign, id_key, sign_checkpoint, unix_now, LogError, LogMetrics, Published};
use crate::disk::{self, Disk};
use crate::edge::{self, Edge};
use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, Signer, Verifier};
use crate::record::Record;
use crate::settings::Transparency;
use crate::tiles::{self, Tile, WIDTH};

const CHECKPOINT: &str = "checkpoint";
/// A log whose last batch ended this recently is busy.
const BUSY: Duration = Duration::from_millis(5);
const INDEX: &str = "index.redb";
/// A new index while it is made ([`make_index`]).
const INDEX_NEW: &str = "index.redb.new";
/// The file of the log format before tiles.
const LEGACY_RECORDS: &str = "records.log";

/// Why an append was not made durable.
#[derive(Debug, Clone)]
enum Failure {
    Full(u64),
    Io(String),
    Poisoned,
}

/// One record waiting for the writer thread.
struct Item {
    leaf: Hash,
    id: u128,
    /// Where its entry ends in the queue's buffer.
    end: usize,
    reply: Reply,
}

/// What the writer answers one record: its index, or why it failed.
type Answer = Result<u64, Failure>;
type Reply = tokio::sync::oneshot::Sender<Delivery>;

/// A record's answer, and the answers the writer gave the rest of its
/// batch (see [`deliver`]).
struct Delivery {
    answer: Answer,
    others: Vec<(Reply, Answer)>,
}

impl Drop for Delivery {
    /// Passes the other answers on — also when the request that got them
    /// stopped waiting after they arrived (its future dropped by a
    /// deadline, say, with this still in the channel).
    fn drop(&mut self) {
        for (reply, answer) in self.others.drain(..) {
            let _ = reply.send(Delivery {
                answer,
                others: Vec::new(),
            });
        }
    }
}

/// Answers a batch of records with one wake-up from the writer thread:
/// the first waiting request gets all the answers and passes the others
/// on from its own task (a wake-up inside the runtime costs no system
/// call; one from another thread writes the runtime's eventfd, once per
/// record). A request that stopped waiting hands the batch to the next.
/// The batch's own `Vec` carries the others (no allocation here).
fn deliver(mut batch: Vec<(Reply, Answer)>) {
    // Leaders are taken from the end: the first in the batch leads.
    batch.reverse();
    while let Some((reply, answer)) = batch.pop() {
        match reply.send(Delivery {
            answer,
            others: batch,
        }) {
            Ok(()) => return,
            Err(mut refused) => batch = std::mem::take(&mut refused.others),
        }
    }
}

/// Records handed to the writer thread, already encoded as bundle entries.
#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    items: Vec<Item>,
    /// When the first of `items` was queued.
    first: Option<Instant>,
    closed: bool,
    /// The writer thread waits for a first record.
    idle: bool,
    /// Closed for good by [`Directory::seal`].
    sealed: bool,
}

/// What readers, the checkpointer and the writer share.
struct State {
    /// Records written and fsynced.
    size: u64,
    edge: Edge,
    /// The entry bundle being filled and its fsynced length.
    staging_index: u64,
    staging_len: u64,
    /// Request ids of records not yet in the on-disk index.
    recent: ById,
    /// Files and directories written since the last checkpoint, to fsync
    /// before a checkpoint covers them.
    unsynced: Vec<PathBuf>,
    /// Full hash tiles whose write failed, retried before the checkpoint.
    unwritten: Vec<(Tile, Vec<u8>)>,
    /// A failed write could not be undone: nothing more is written.
    poisoned: bool,
    /// An fsync of files a checkpoint would cover failed: after a failed
    /// fsync the kernel may have dropped the dirty pages and a later fsync
    /// succeeds over them, so no checkpoint is signed until a restart
    /// rebuilds those tiles from the (durable) bundles. Records are still
    /// appended and acknowledged.
    unsyncable: Option<String>,
    /// Group commits done (one `write(2)` + `fdatasync(2)` each, or two
    /// when a batch completes a bundle).
    batches: u64,
}

/// The bundle file the writer thread appends to.
struct Staging {
    file: File,
    index: u64,
    len: u64,
    count: u64,
}

struct Core {
    settings: Transparency,
    /// Shared with a sealed generation's [`crate::storage::Generation`],
    /// which keeps it while its directory is closed.
    signer: Arc<Signer>,
    verifier: Verifier,
    disk: Disk,
    queue: Mutex<Queue>,
    wake: Condvar,
    spare: Mutex<Spare>,
    spare_wake: Condvar,
    /// Held while full bundles are sealed (by the helper, or by a
    /// checkpoint that must not cover a seal still in progress).
    sealing: Mutex<()>,
    /// [`INDEX_BATCH`] ids wait in memory: the helper should index them.
    index_due: AtomicBool,
    /// `State::poisoned`, read without the state's lock: each upload asks
    /// ([`Directory::poisoned`]).
    poisoned: AtomicBool,
    indexing: Mutex<()>,
    state: Mutex<State>,
    /// Shared like `signer`: a sealed generation serves its checkpoint,
    /// and takes cosignatures, whether its directory is open or not.
    latest: Arc<ArcSwap<Published>>,
    index: IndexSlot,
    checkpointing: Mutex<()>,
    metrics: LogMetrics,
    /// When the writer began the batch it is writing, in milliseconds
    /// after `epoch`, plus one (0: it writes none): a batch that takes
    /// longer than `transparency.write_timeout` means a disk that does not
    /// answer ([`Directory::stalled`]).
    writing_since: AtomicU64,
    epoch: Instant,
    /// Tests: the writer waits here before each batch while it holds
    /// `true` (a disk that does not answer).
    #[cfg(test)]
    hold: (Mutex<bool>, Condvar),
}

/// The log in a directory (see the module documentation).
pub struct Directory {
    core: Arc<Core>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    spares: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held (an exclusive `flock`) for as long as the log is open, taken
    /// before anything in the directory is read or repaired, so that a
    /// second process opening it (a second `serve` on the same
    /// configuration) fails at once instead of cutting the staging bundle
    /// the first one is appending to. Dropped last.
    _lock: File,
}

/// What the writer and the helper thread share about staging bundles:
/// the helper prepares the next one and seals the full ones, so neither
/// a preallocation nor a directory fsync stands between a batch and its
/// answer.
#[derive(Default)]
struct Spare {
    /// The writer's staging bundle.
    current: u64,
    /// The next staging bundle, preallocated under its own name (durably),
    /// once the helper has made it.
    ready: Option<(u64, File)>,
    /// The helper is making staging bundle `preparing`.
    preparing: Option<u64>,
    /// Full staging bundles, in order, to cut and rename to their tile
    /// names.
    full: Vec<Staging>,
    /// Full bundles whose seal failed: tried again at the next checkpoint
    /// only (the helper retrying at once spun a core, logging an error
    /// per try, and could not be stopped).
    failed: Vec<Staging>,
    closed: bool,
}

/// The file name of the spare staging bundle of earlier versions (removed
/// at start).
const SPARE: &str = "staging.spare";
/// The file a process holds an exclusive lock on while the log is open.
const LOCK: &str = "lock";

/// In a sealed generation's directory from its seal until its partial
/// tiles are repaired ([`Directory::repair_sealed`], after the roll): a
/// stop between the two has the next start repair them.
const UNREPAIRED: &str = "partials.unrepaired";

/// Whether the sealed generation in `dir` still has its partial tiles to
/// repair (see [`UNREPAIRED`]).
pub fn unrepaired(dir: &Path) -> bool {
    dir.join(UNREPAIRED).exists()
}

impl Drop for Directory {
    fn drop(&mut self) {
        self.stop_threads(false);
    }
}

/// A mutex's guard, also after a panic elsewhere poisoned it (what it
/// guards stays usable: every holder leaves it whole).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the exclusive lock on the log directory's [`LOCK`] file (see
/// [`Directory`]): `InUse` while another process (or another open of the
/// same directory) holds it.
pub(crate) fn take_lock(dir: &Path) -> Result<File, LogError> {
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|error| LogError::Io {
            path: format!(
                "transparency.directory: cannot write {}",
                lock_path.display()
            ),
            error,
        })?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(LogError::InUse(lock_path.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(&lock_path)(e)),
    }
}

/// The log's signing key as stored (PKCS#8, `transparency.signing_key`).
pub(crate) fn read_key(settings: &Transparency) -> Result<Vec<u8>, LogError> {
    let key_path = &settings.signing_key;
    std::fs::read(key_path).map_err(io_error(key_path))
}

/// The signer and verifier of the log's key `pkcs8` under the name
/// `origin` (a generation's).
pub(crate) fn keys(
    settings: &Transparency,
    pkcs8: &[u8],
    origin: &str,
) -> Result<(Signer, Verifier), LogError> {
    let key_error = |source| LogError::Key {
        path: settings.signing_key.display().to_string(),
        error: source,
    };
    let signer = Signer::from_pkcs8(origin, pkcs8).map_err(key_error)?;
    let verifier = Verifier::parse(&signer.verifier_key()).map_err(key_error)?;
    Ok((signer, verifier))
}

/// The last checkpoint of the sealed generation in `dir`, read and
/// verified as [`Directory::open`] reads it, without opening the log (a
/// sealed generation is opened when it is read). `None` when there is
/// none to read so — no `checkpoint` file, or a log of the one-file format
/// still to convert — for [`Directory::open`] to recover as it does any
/// log.
pub(crate) fn sealed_checkpoint(
    dir: &Path,
    verifier: &Verifier,
    origin: &str,
) -> Result<Option<Published>, LogError> {
    if dir.join(LEGACY_RECORDS).exists() {
        return Ok(None);
    }
    Ok(read_checkpoint(dir, verifier, origin)?.map(|c| Published {
        note: c.note,
        size: c.size,
        root: c.root,
    }))
}

/// The checkpoint stored in `dir`, verified with `verifier` and `origin`
/// as a start verifies it — in either format, the one-file format still to
/// convert included — without opening the log: for `check-config`.
pub(crate) fn stored_checkpoint(
    dir: &Path,
    verifier: &Verifier,
    origin: &str,
) -> Result<Option<Published>, LogError> {
    // A `records.log` the start would convert, or refuse: checked as it
    // would (`check-config` said OK where `serve` then refused).
    let legacy = dir.join(LEGACY_RECORDS);
    if legacy.exists() {
        let text = std::fs::read(&legacy).map_err(io_error(&legacy))?;
        legacy_records(dir, &text, verifier, origin)?;
    }
    Ok(read_checkpoint(dir, verifier, origin)?.map(|c| Published {
        note: c.note,
        size: c.size,
        root: c.root,
    }))
}

/// Refuses a tree whose right edge, read from the tiles at the last
/// checkpoint's `size`, does not hash to that checkpoint's `root`.
fn check_edge(dir: &Path, edge: &Edge, size: u64, root: Hash) -> Result<(), LogError> {
    if edge.root() == root {
        return Ok(());
    }
    Err(LogError::Corrupt {
        path: dir.display().to_string(),
        message: format!(
            "the tiles at the last checkpoint's size {size} hash to {} but the checkpoint says {}: committed tiles or records were altered",
            residency_core::hex::encode(&edge.root()),
            residency_core::hex::encode(&root)
        ),
    })
}

/// The request-id index: written by the log that appends; a sealed
/// generation's, complete, is read-only.
enum Index {
    Writable(redb::Database),
    Sealed(redb::ReadOnlyDatabase),
}

impl Index {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Index::Writable(db) => db.begin_read(),
            Index::Sealed(db) => db.begin_read(),
        }
    }
}

/// The index, opened again after a failed write: redb refuses every
/// transaction after an I/O error ("Previous I/O error occurred. Please
/// close and re-open the database"), so one disk-full episode left the
/// index unwritable — and its ids in memory — until a restart (lifecycle
/// audit, stop 63).
struct IndexSlot {
    path: PathBuf,
    /// `None` while opening it again failed (tried again at the next
    /// update).
    db: std::sync::RwLock<Option<Index>>,
    /// When it was last opened again: at most once a second, however often
    /// updates fail (each opening syncs the file's header).
    reopened_at: Mutex<Option<Instant>>,
    /// Tests: the next update fails as redb's does after an I/O error.
    #[cfg(test)]
    fail_next: std::sync::atomic::AtomicBool,
    /// Tests: how often it was opened again.
    #[cfg(test)]
    reopened: AtomicU64,
}

impl IndexSlot {
    fn new(index: Index, path: PathBuf) -> IndexSlot {
        IndexSlot {
            path,
            db: std::sync::RwLock::new(Some(index)),
            reopened_at: Mutex::new(None),
            #[cfg(test)]
            fail_next: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            reopened: AtomicU64::new(0),
        }
    }

    /// `f` on the index; an error while it could not be opened again.
    fn read<T>(&self, f: impl FnOnce(&Index) -> Result<T, LogError>) -> Result<T, LogError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        match db.as_ref() {
            Some(index) => f(index),
            None => Err(LogError::Corrupt {
                path: self.path.display().to_string(),
                message: "the request-id index could not be opened again after a failed write (tried again at the next checkpoint)".into(),
            }),
        }
    }

    /// Closes a writable index and opens it again (a sealed one, read
    /// only, is left).
    fn reopen(&self) -> Result<(), LogError> {
        {
            let mut at = lock(&self.reopened_at);
            if at.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return Ok(());
            }
            *at = Some(Instant::now());
        }
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        if matches!(*db, Some(Index::Sealed(_))) {
            return Ok(());
        }
        // Closed first: redb takes a lock on its file.
        *db = None;
        *db = Some(Index::Writable(open_index(&self.path)?));
        #[cfg(test)]
        self.reopened.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A sealed generation's index, read-only: opening and closing a writable
/// redb database writes and syncs its header (some five `fdatasync`s),
/// each time a sealed generation is opened to be read. One that is
/// missing, does not hold the ids of all `size` records (a roll whose
/// index update failed left some out) or was not closed cleanly is made,
/// caught up or repaired, and stays writable while it is open this time.
fn sealed_index(disk: &Disk, size: u64) -> Result<Index, LogError> {
    let path = disk.dir().join(INDEX);
    if let Ok(db) = redb::Builder::new()
        .set_cache_size(INDEX_CACHE)
        .open_read_only(&path)
    {
        if indexed(&db, &path).is_ok_and(|n| n >= size) {
            return Ok(Index::Sealed(db));
        }
    }
    make_index(disk.dir())?;
    let index = open_index(&path)?;
    catch_up_index(disk, &index, &path, size)?;
    Ok(Index::Writable(index))
}

fn open_index(path: &Path) -> Result<redb::Database, LogError> {
    redb::Database::builder()
        .set_cache_size(INDEX_CACHE)
        .create(path)
        .map_err(|e| LogError::Corrupt {
            path: path.display().to_string(),
            message: format!("{e} (the index can be deleted: it is rebuilt from the tiles)"),
        })
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.display().to_string();
    move |source| LogError::Io {
        path,
        error: source,
    }
}

/// Removes a full tile's `.p/` directory; one already gone is no error, and
/// one that cannot be removed is logged and left (it costs only disk
/// space: the log serves every partial from the full tile).
fn remove_partials_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, path = %dir.display(), "cannot remove the partial tiles of a full tile");
        }
    }
}

const BY_ID: TableDefinition<u128, u64> = TableDefinition::new("by_id");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The META key: records `[0, indexed)` are in BY_ID.
const INDEXED: &str = "indexed";
/// Memory redb may use for its page cache (the index is read rarely).
const INDEX_CACHE: usize = 4 << 20;
/// Ids waiting in memory that make the helper thread index them before
/// the next checkpoint (about 2 MiB of map).
const INDEX_BATCH: usize = 65_536;

impl Directory {
    /// Opens (or creates) the log in `settings.directory`, recovering it:
    /// the tree's right edge is rebuilt from the tiles at the last
    /// checkpoint's size and must hash to its root, then the records
    /// written after it are replayed.
    pub fn open(settings: &Transparency, metrics: LogMetrics) -> Result<Directory, LogError> {
        let started = Instant::now();
        let dir = settings.directory.clone();
        // The directories this makes (the log's, a new generation's) are
        // made durable in their parents before anything in them is
        // acknowledged: a power cut that lost `generations/<n>` after its
        // receipts went out would have the next start hand its indexes out
        // again.
        let made: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|error| LogError::Io {
                path: format!("transparency.directory: cannot create {}", dir.display()),
                error,
            })?;
        for made in &made {
            if let Some(parent) = made.parent().filter(|p| !p.as_os_str().is_empty()) {
                disk::sync_path(parent).map_err(io_error(parent))?;
            }
        }
        // The log's own entry in its parent, even when the directory was
        // there already: an earlier open (or roll) that made it may have
        // failed, or stopped, before that fsync. One fsync per open.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            disk::sync_path(parent).map_err(io_error(parent))?;
        }
        let lock = take_lock(&dir)?;
        let pkcs8 = read_key(settings)?;
        let (signer, verifier) = keys(settings, &pkcs8, &settings.origin)?;
        let disk = Disk::new(dir.clone());
        if dir.join(LEGACY_RECORDS).exists() {
            migrate(&disk, &verifier, &settings.origin)?;
        }
        let committed = read_checkpoint(&dir, &verifier, &settings.origin)?;
        let (size, root) = committed
            .as_ref()
            .map_or((0, merkle::empty_root()), |c| (c.size, c.root));
        let edge = edge_at(&disk, size)?;
        check_edge(&dir, &edge, size, root)?;
        let checkpointed = edge.clone();
        let mut state = State {
            size,
            edge,
            staging_index: size / WIDTH,
            staging_len: 0,
            recent: ById::default(),
            unsynced: Vec::new(),
            unwritten: Vec::new(),
            poisoned: false,
            unsyncable: None,
            batches: 0,
        };
        seal_leftovers(&disk, state.size / WIDTH)?;
        let staging = replay(&disk, &mut state, &metrics)?;
        let index_path = dir.join(INDEX);
        make_index(&dir)?;
        let index = open_index(&index_path)?;
        catch_up_index(&disk, &index, &index_path, size)?;
        let index = Index::Writable(index);
        metrics.size.set(state.size as i64);
        metrics.integrator.set(1);
        if let Some(cp) = &committed {
            // Served from now on: the gauge says so before the next
            // checkpoint (none comes while nothing is appended).
            metrics.checkpoint_size.set(cp.size as i64);
        }
        let latest = match committed {
            Some(cp) => Published {
                note: cp.note,
                size: cp.size,
                root: cp.root,
            },
            None => Published {
                note: String::new(),
                size: u64::MAX,
                root: merkle::empty_root(),
            },
        };
        let records = state.size;
        let core = Arc::new(Core {
            settings: settings.clone(),
            signer: Arc::new(signer),
            verifier,
            disk,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            spare: Mutex::new(Spare {
                current: staging.index,
                ..Spare::default()
            }),
            spare_wake: Condvar::new(),
            sealing: Mutex::new(()),
            index_due: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            indexing: Mutex::new(()),
            state: Mutex::new(state),
            latest: Arc::new(ArcSwap::from_pointee(latest)),
            index: IndexSlot::new(index, dir.join(INDEX)),
            checkpointing: Mutex::new(()),
            metrics,
            writing_since: AtomicU64::new(0),
            epoch: Instant::now(),
            #[cfg(test)]
            hold: (Mutex::new(false), Condvar::new()),
        });
        // The partial tiles of every checkpoint since the unfinished tiles
        // began, checked and written again (and synced) where wrong:
        // written without an fsync at each checkpoint, they may have been
        // lost or zeroed with a power cut, and tlog-tiles has a log serve
        // the partials of every checkpoint it produced. The log serves
        // partials from memory; these are for static file servers.
        if size > 0 {
            core.repair(&checkpointed, unrepaired(&dir));
        }
        // And those of the tiles filled last, in case the process stopped
        // between a checkpoint and their removal.
        for level in 0..8u8 {
            if let Some(last_full) = Edge::index_at(size, level).checked_sub(1) {
                core.remove_partials(level, last_full);
            }
        }
        let thread_core = core.clone();
        let writer = std::thread::Builder::new()
            .name("residency-log-writer".into())
            .spawn(move || thread_core.run(staging))
            .map_err(io_error(&dir))?;
        let _ = std::fs::remove_file(dir.join(SPARE));
        let thread_core = core.clone();
        let spares = std::thread::Builder::new()
            .name("residency-log-helper".into())
            .spawn(move || thread_core.make_spares())
            .map_err(io_error(&dir))?;
        let log = Directory {
            core,
            writer: Mutex::new(Some(writer)),
            spares: Mutex::new(Some(spares)),
            _lock: lock,
        };
        // A checkpoint for what was recovered, before anything new is added.
        log.checkpoint()?;
        tracing::info!(
            directory = %dir.display(),
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            key = %log.core.signer.verifier_key(),
            "transparency log open"
        );
        Ok(log)
    }

    /// Opens a sealed generation's log (one that rolled: its last
    /// checkpoint covers every record it holds) to read it, without
    /// threads. `latest` is that checkpoint as the generation keeps it
    /// while its directory is closed (read from the same file at start or
    /// signed at the roll, cosigned since): the file must still hold it,
    /// and the tree's right edge must hash to its root, as
    /// [`Directory::open`] checks — so tiles altered since make this fail,
    /// naming the directory.
    /// Nothing is replayed or repaired, nor is a checkpoint signed, and the
    /// request-id index is opened read-only; only one that is missing,
    /// lags the checkpoint or was not closed cleanly is written first (see
    /// [`sealed_index`]). The directory's lock is held while it is open, as
    /// for any open log. Blocking.
    pub fn open_sealed(
        settings: &Transparency,
        signer: Arc<Signer>,
        verifier: Verifier,
        latest: Arc<ArcSwap<Published>>,
        metrics: LogMetrics,
    ) -> Result<Directory, LogError> {
        let dir = settings.directory.clone();
        let lock = take_lock(&dir)?;
        let disk = Disk::new(dir.clone());
        let path = dir.join(CHECKPOINT);
        let committed = read_checkpoint(&dir, &verifier, &settings.origin)?.ok_or_else(|| {
            LogError::Corrupt {
                path: path.display().to_string(),
                message: "is missing: the last checkpoint of a sealed generation was removed"
                    .into(),
            }
        })?;
        let served = latest.load_full();
        if (committed.size, committed.root) != (served.size, served.root) {
            return Err(LogError::Corrupt {
                path: path.display().to_string(),
                message: format!(
                    "is a checkpoint of {} records, not the one of {} this process serves: the last checkpoint of a sealed generation was replaced",
                    committed.size, served.size
                ),
            });
        }
        let size = committed.size;
        let edge = edge_at(&disk, size)?;
        check_edge(&dir, &edge, size, committed.root)?;
        // The bytes of the last bundle that the checkpoint covers (all
        // there: `edge_at` read them).
        let staging_len = match size % WIDTH {
            0 => 0,
            width => read_bundle(&disk, size / WIDTH)?
                .and_then(|b| disk::bundle_prefix(&b, width as usize).map(<[u8]>::len))
                .unwrap_or(0) as u64,
        };
        let index = sealed_index(&disk, size)?;
        let state = State {
            size,
            edge,
            staging_index: size / WIDTH,
            staging_len,
            recent: ById::default(),
            unsynced: Vec::new(),
            unwritten: Vec::new(),
            poisoned: false,
            unsyncable: None,
            batches: 0,
        };
        let core = Arc::new(Core {
            settings: settings.clone(),
            signer,
            verifier,
            disk,
            // Closed and sealed: an append is answered `Full`.
            queue: Mutex::new(Queue {
                closed: true,
                sealed: true,
                ..Queue::default()
            }),
            wake: Condvar::new(),
            spare: Mutex::new(Spare {
                current: size / WIDTH,
                closed: true,
                ..Spare::default()
            }),
            spare_wake: Condvar::new(),
            sealing: Mutex::new(()),
            index_due: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            indexing: Mutex::new(()),
            state: Mutex::new(state),
            latest,
            index: IndexSlot::new(index, dir.join(INDEX)),
            checkpointing: Mutex::new(()),
            metrics,
            writing_since: AtomicU64::new(0),
            epoch: Instant::now(),
            #[cfg(test)]
            hold: (Mutex::new(false), Condvar::new()),
        });
        Ok(Directory {
            core,
            writer: Mutex::new(None),
            spares: Mutex::new(None),
            _lock: lock,
        })
    }

    /// Seals the log: nothing more is appended (an append is answered
    /// `Full`), and its writer and helper threads end, so a sealed
    /// generation costs no threads; it is still read and served. Blocking:
    /// waits for the writer to answer what was queued.
    pub fn seal(&self) {
        self.stop_threads(true);
        if let Some((index, _)) = lock(&self.core.spare).ready.take() {
            let _ = std::fs::remove_file(self.core.disk.staging(index));
        }
        // What a start repairs of the current generation, done once for
        // good: a sealed one is not opened at start, and `open_sealed`
        // repairs nothing. Full bundles left as staging files are cut and
        // renamed now; the partial tiles of its checkpoints (written
        // without an fsync) are written again, synced, where wrong, by
        // `repair_sealed` — after the roll, for they are hundreds of files
        // and only static file servers serve them (log API audit, stop
        // 66: written here, they held every upload of a roll ~2 s). Marked
        // first, durably, so that a stop in between leaves it to the next
        // start.
        let edge = lock(&self.core.state).edge.clone();
        if let Err(e) = seal_leftovers(&self.core.disk, edge.size() / WIDTH) {
            tracing::warn!(error = %e, "cannot seal the full bundles of a sealed generation");
        }
        if edge.size() > 0 {
            let mark = self.core.disk.dir().join(UNREPAIRED);
            if let Err(e) = disk::replace_durably(&mark, b"") {
                // Unmarked, no start would see to it: done now.
                tracing::warn!(error = %e, path = %mark.display(), "cannot mark a sealed generation's partial tiles as to repair: repaired in the roll");
                self.core.restore_partials(&edge, true);
            }
        }
    }

    /// The repair [`Directory::seal`] leaves: the partial tiles (and
    /// bundles) of the sealed generation's unfinished tiles written again,
    /// synced, where missing or wrong, and the mark removed. Nothing
    /// without the mark. Blocking.
    pub fn repair_sealed(&self) {
        if unrepaired(self.core.disk.dir()) {
            let edge = lock(&self.core.state).edge.clone();
            self.core.repair(&edge, true);
        }
    }

    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        usize::from(lock(&self.writer).is_some()) + usize::from(lock(&self.spares).is_some())
    }

    fn stop_threads(&self, sealed: bool) {
        {
            let mut q = lock(&self.core.queue);
            q.closed = true;
            q.sealed |= sealed;
        }
        self.core.wake.notify_all();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
        lock(&self.core.spare).closed = true;
        self.core.spare_wake.notify_all();
        if let Some(spares) = lock(&self.spares).take() {
            let _ = spares.join();
        }
    }

    pub fn signer(&self) -> &Signer {
        &self.core.signer
    }

    pub fn verifier(&self) -> &Verifier {
        &self.core.verifier
    }

    /// The key and the served checkpoint, for the sealed generation this
    /// log becomes at a roll (see [`Directory::open_sealed`]).
    pub(crate) fn shared(&self) -> (Arc<Signer>, Arc<ArcSwap<Published>>) {
        (self.core.signer.clone(), self.core.latest.clone())
    }

    /// Appends `record` (already encoded: `bytes`, leaf hash `leaf`) as
    /// the next leaf and returns once it is durable: in its entry bundle
    /// on disk and fsynced, so no crash can give its index to another
    /// record after its receipt went out. The writer thread writes the
    /// records of concurrent requests with one `write(2)` and one
    /// `fdatasync(2)` (group commit); records arriving meanwhile form the
    /// next batch. A request dropped while it waits still has its record
    /// written.
    pub async fn append(&self, bytes: &[u8], leaf: Hash, id: u128) -> Result<u64, LogError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut q = lock(&self.core.queue);
            if q.closed {
                let sealed = q.sealed;
                drop(q);
                return Err(if sealed {
                    LogError::Full(self.size())
                } else {
                    LogError::Poisoned
                });
            }
            // Before anything is queued: a leaf without its bytes in the
            // bundle would not match the level-0 tile.
            if !tiles::push_entry(&mut q.buf, bytes) {
                return Err(LogError::EntryTooLarge(bytes.len()));
            }
            if q.items.is_empty() {
                q.first = Some(Instant::now());
            }
            let end = q.buf.len();
            q.items.push(Item {
                leaf,
                id,
                end,
                reply,
            });
            // Only an idle writer waits for the first record (a busy one
            // takes it with its next batch): no futex call otherwise.
            if q.idle && q.items.len() == 1 {
                self.core.wake.notify_one();
            }
        }
        // Dropping the delivery answers the rest of the batch. Bounded: a
        // disk that does not answer (a hung fsync, a hard-mounted network
        // volume) must not hold the upload's client for ever. The record
        // stays queued and is written if the disk comes back.
        let timeout = self.core.settings.write_timeout;
        let answer = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(delivery)) => delivery.answer.clone(),
            Ok(Err(_)) => Err(Failure::Poisoned),
            Err(_) => return Err(LogError::Timeout(timeout)),
        };
        match answer {
            Ok(index) => Ok(index),
            Err(Failure::Full(n)) => Err(LogError::Full(n)),
            Err(Failure::Io(message)) => Err(LogError::Io {
                path: self.core.disk.dir().display().to_string(),
                error: std::io::Error::other(message),
            }),
            Err(Failure::Poisoned) => Err(LogError::Poisoned),
        }
    }

    /// The log writes nothing more until a restart: a failed batch could
    /// not be cut off, or its directory was replaced (`Disk::replaced`).
    pub fn poisoned(&self) -> bool {
        self.core.poisoned.load(Ordering::Relaxed)
    }

    /// The writer has been on one batch for longer than
    /// `transparency.write_timeout`: the disk does not answer. Appends
    /// made meanwhile would only wait for their timeout; the log refuses
    /// uploads (and folds refusals) until the batch is done.
    pub fn stalled(&self) -> bool {
        let since = self.core.writing_since.load(Ordering::Relaxed);
        since != 0 && {
            let now = u64::try_from(self.core.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            let limit =
                u64::try_from(self.core.settings.write_timeout.as_millis()).unwrap_or(u64::MAX);
            now.saturating_sub(since - 1) > limit
        }
    }

    /// Tests: holds the writer before its next batch (`true`), or lets it go.
    #[cfg(test)]
    pub(crate) fn hold_writer(&self, hold: bool) {
        let (held, released) = &self.core.hold;
        *lock(held) = hold;
        released.notify_all();
    }

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Arc<Published> {
        self.core.latest.load_full()
    }

    /// Records written (checkpointed or not).
    pub fn size(&self) -> u64 {
        lock(&self.core.state).size
    }

    /// Makes the tiles so far durable and signs a checkpoint for them
    /// (blocking: call from a blocking thread). A no-op when nothing
    /// changed. Also moves the request ids of the records it covers into
    /// the on-disk index.
    pub fn checkpoint(&self) -> Result<Arc<Published>, LogError> {
        self.core.checkpoint()
    }

    /// The stored bytes of leaf `index` (blocking: one bundle read).
    pub fn record(&self, index: u64) -> Result<Option<Vec<u8>>, LogError> {
        // Read before the bundle: records only grow, so one below this
        // size is in what is read next (a size read after could count a
        // record appended meanwhile as missing).
        let size = self.size();
        let Some(bundle) = self.core.bundle(index / WIDTH)? else {
            return Ok(None);
        };
        // As far as its entries are complete (see `catch_up_index`): one
        // the records reach that is not there is gone (an error, not "no
        // such record").
        let (entries, _) = disk::complete_entries(&bundle);
        match usize::try_from(index % WIDTH)
            .ok()
            .and_then(|i| entries.get(i))
        {
            Some(entry) => Ok(Some(entry.to_vec())),
            None if index < size => Err(LogError::Corrupt {
                path: self.core.disk.dir().display().to_string(),
                message: format!(
                    "entry bundle {} holds {} records: record {index}, committed, is missing",
                    index / WIDTH,
                    entries.len()
                ),
            }),
            None => Ok(None),
        }
    }

    /// A tile of the durable tree, checkpointed or not (blocking: it
    /// reads a file).
    pub fn any_tile(&self, tile: Tile) -> Result<Option<Vec<u8>>, LogError> {
        self.core.tile(tile)
    }

    /// The leaf index recorded for request-id key `key` (blocking: it may
    /// read the index). An index that cannot be read is an error, not "no
    /// such record".
    pub fn indexes_of(&self, key: u128) -> Result<Vec<u64>, LogError> {
        if let Some(index) = lock(&self.core.state).recent.get(&key).copied() {
            return Ok(vec![index]);
        }
        let failed = index_failed(&self.core.index.path);
        let index = self.core.index.read(|index| {
            let txn = index.begin_read().map_err(|e| failed(e.into()))?;
            let table = match txn.open_table(BY_ID) {
                Ok(table) => table,
                // Nothing indexed yet.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(failed(e.into())),
            };
            Ok(table
                .get(key)
                .map_err(|e| failed(e.into()))?
                .map(|v| v.value()))
        })?;
        Ok(index.into_iter().collect())
    }

    /// Approximate memory held for the tree (its right edge) and the ids
    /// not yet in the on-disk index.
    pub fn memory_bytes(&self) -> usize {
        let state = lock(&self.core.state);
        state.edge.memory_bytes() + state.recent.capacity() * 32
    }

    /// Appends witness cosignature lines (`— name base64`, no newline) to
    /// the served checkpoint if it is still the one of `size`; `false` if
    /// a newer checkpoint replaced it (checked and stored in one step, so a
    /// late cosignature never brings an older checkpoint back). The cosigned
    /// note also replaces the `checkpoint` file (verifiers ignore signatures
    /// by keys they do not know), so a restarted log serves it at once.
    /// Blocking: call from a blocking thread.
    pub fn add_cosignatures(&self, size: u64, lines: &[String]) -> bool {
        // Ordered with checkpoints: a newer checkpoint file is never
        // replaced by an older cosigned one.
        let _one = lock(&self.core.checkpointing);
        let Some(note) = cosign(&self.core.latest, size, lines) else {
            return false;
        };
        let path = self.core.disk.dir().join(CHECKPOINT);
        if let Err(e) = self.core.disk.write(&path, note.as_bytes(), true) {
            tracing::warn!(error = %e, "cannot store the cosigned checkpoint; it is served from memory");
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn batches(&self) -> u64 {
        lock(&self.core.state).batches
    }
}

impl Core {
    /// Nothing more is written until a restart.
    fn poison(&self) {
        lock(&self.state).poisoned = true;
        self.poisoned.store(true, Ordering::Relaxed);
    }

    /// An error, and the log poisoned, when its directory's path names
    /// another directory now ([`Disk::replaced`]).
    fn in_place(&self) -> Result<(), LogError> {
        match self.disk.replaced() {
            None => Ok(()),
            Some(why) => {
                self.poison();
                Err(LogError::Corrupt {
                    path: "transparency.directory".into(),
                    message: why,
                })
            }
        }
    }

    /// The writer thread: takes the queued records and writes them, batch
    /// after batch, until the log is dropped.
    ///
    /// While the log is busy (the last batch ended less than
    /// [`BUSY`] ago), a batch waits for more records until `commit_window`
    /// (default 0.5 ms) after its first record was queued, so one
    /// `fdatasync(2)` covers more of them; an idle log writes a lone record
    /// at once.
    fn run(&self, mut staging: Staging) {
        let mut last_done: Option<Instant> = None;
        loop {
            let (buf, items) = {
                let mut q = lock(&self.queue);
                while q.items.is_empty() {
                    if q.closed {
                        return;
                    }
                    q.idle = true;
                    q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                    q.idle = false;
                }
                if last_done.is_some_and(|t| t.elapsed() < BUSY) {
                    // From the first waiting record: records that queued
                    // behind a slow fsync have waited already.
                    let deadline =
                        q.first.unwrap_or_else(Instant::now) + self.settings.commit_window;
                    while q.items.len() < WIDTH as usize && !q.closed {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        q = self
                            .wake
                            .wait_timeout(q, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
                q.first = None;
                (std::mem::take(&mut q.buf), std::mem::take(&mut q.items))
            };
            let since = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.writing_since.store(since + 1, Ordering::Relaxed);
            #[cfg(test)]
            {
                let (held, released) = &self.hold;
                let mut held = lock(held);
                while *held {
                    held = released.wait(held).unwrap_or_else(|e| e.into_inner());
                }
            }
            self.write(&mut staging, &buf, items);
            self.writing_since.store(0, Ordering::Relaxed);
            last_done = Some(Instant::now());
        }
    }

    /// Writes one batch: appends its entries to the staging bundle and
    /// fsyncs it; a bundle that reaches 256 entries is renamed to its tile
    /// name and the rest goes into the next one. Each record is answered
    /// once its bytes are durable, with its index or the failure.
    fn write(&self, staging: &mut Staging, buf: &[u8], items: Vec<Item>) {
        let mut items = items.into_iter().peekable();
        let mut from = 0usize;
        while items.peek().is_some() {
            let (poisoned, size) = {
                let st = lock(&self.state);
                (st.poisoned, st.size)
            };
            if poisoned {
                return answer_all(items, Failure::Poisoned);
            }
            if size >= self.settings.max_records {
                return answer_all(items, Failure::Full(size));
            }
            if staging.count == WIDTH {
                // Full, its next not started (it could not be: out of file
                // descriptors or space): tried again for each write, not
                // taken for a log that can never write again.
                if let Err(e) = self.start_next(staging) {
                    tracing::error!(error = %e, "cannot start the next entry bundle; tried again at the next write");
                    return answer_all(items, Failure::Io(e.to_string()));
                }
            }
            let room = (WIDTH - staging.count).min(self.settings.max_records - size);
            let chunk: Vec<Item> = items.by_ref().take(room as usize).collect();
            let to = chunk.last().map_or(from, |i| i.end);
            let bytes = &buf[from..to];
            let fills = staging.count + chunk.len() as u64 == WIDTH;
            let started = Instant::now();
            // Into the preallocated part: no size change, so the fsync
            // flushes data without a journal commit.
            let written = staging
                .file
                .write_all_at(bytes, staging.len)
                .and_then(|()| staging.file.sync_data());
            self.metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batch_records.observe(chunk.len() as f64);
            if let Err(e) = written {
                // Nothing of this chunk is acknowledged: cut it off.
                let cut = staging.file.set_len(staging.len);
                let message = e.to_string();
                if cut.is_err() {
                    self.poison();
                }
                answer_all(chunk.into_iter(), Failure::Io(message.clone()));
                return answer_all(items, Failure::Io(message));
            }
            // Durable in the file the log opened, but that is no longer
            // in the log's directory: not acknowledged, nothing more
            // written (see `Disk::replaced`).
            if let Err(e) = self.in_place() {
                let why = e.to_string();
                tracing::error!("{why}");
                answer_all(chunk.into_iter(), Failure::Io(why.clone()));
                return answer_all(items, Failure::Io(why));
            }
            staging.len += bytes.len() as u64;
            staging.count += chunk.len() as u64;
            from = to;
            let indexes = self.commit(&chunk, staging);
            deliver(
                chunk
                    .into_iter()
                    .zip(indexes)
                    .map(|(item, index)| (item.reply, Ok(index)))
                    .collect(),
            );
            if fills {
                if let Err(e) = self.start_next(staging) {
                    tracing::error!(error = %e, "cannot start the next entry bundle; tried again at the next write");
                    return answer_all(items, Failure::Io(e.to_string()));
                }
            }
        }
    }

    /// Starts the bundle after the full `staging`, which goes to the helper
    /// to be sealed. On failure nothing changes: `staging` stays the
    /// current, full bundle, and the next write tries again.
    fn start_next(&self, staging: &mut Staging) -> std::io::Result<()> {
        self.in_place()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let file = self.next_staging(staging.index + 1)?;
        let full = std::mem::replace(
            staging,
            Staging {
                file,
                index: staging.index + 1,
                len: 0,
                count: 0,
            },
        );
        {
            let mut st = lock(&self.state);
            st.staging_index = staging.index;
            st.staging_len = 0;
        }
        lock(&self.spare).full.push(full);
        self.spare_wake.notify_all();
        Ok(())
    }

    /// Seals the full staging bundles waiting for it: each is cut to its
    /// records (dropping what is left of the preallocation) and renamed to
    /// its tile name. The records are durable already; the cut is made
    /// durable before the rename, and the rename with the other new files
    /// before the next checkpoint — a crash before that leaves a full
    /// `staging.<N>`, which the next start finishes.
    fn seal_full(&self, retry_failed: bool) {
        let _one = lock(&self.sealing);
        // Renamed by path: not into another directory.
        if self.in_place().is_err() {
            return;
        }
        let (retried, full) = {
            let mut spare = lock(&self.spare);
            let retried = if retry_failed {
                std::mem::take(&mut spare.failed)
            } else {
                Vec::new()
            };
            (retried, std::mem::take(&mut spare.full))
        };
        let mut failed = Vec::new();
        let retries = retried.len();
        for (i, bundle) in retried.into_iter().chain(full).enumerate() {
            match self.seal(&bundle) {
                Ok(touched) => {
                    lock(&self.state).unsynced.extend(touched);
                    self.metrics.tiles_written.inc();
                    if i < retries {
                        // Its partial bundles were kept while its seal
                        // failed (see `remove_partials`): the full one is
                        // there now.
                        self.remove_partials_of(None, bundle.index);
                    }
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        path = %self.disk.staging(bundle.index).display(),
                        "cannot seal a full entry bundle: it is served from its staging file, and sealing is tried again at the next checkpoint (or start)"
                    );
                    failed.push(bundle);
                }
            }
        }
        if !failed.is_empty() {
            // For the next checkpoint, in order.
            let mut spare = lock(&self.spare);
            failed.append(&mut spare.failed);
            failed.sort_by_key(|b| b.index);
            spare.failed = failed;
        }
    }

    fn seal(&self, bundle: &Staging) -> std::io::Result<Vec<PathBuf>> {
        bundle.file.set_len(bundle.len)?;
        // The cut made durable before the name: `replay` repairs only the
        // bundle at the checkpoint's size, not a sealed one below it.
        bundle.file.sync_data()?;
        let target = self.disk.path(Tile {
            level: None,
            index: bundle.index,
            width: WIDTH as u16,
        });
        let mut touched = Vec::new();
        let parent = target.parent().unwrap_or(self.disk.dir());
        self.disk.create_dirs(parent, &mut touched)?;
        std::fs::rename(self.disk.staging(bundle.index), &target)?;
        touched.push(parent.to_path_buf());
        touched.push(self.disk.dir().to_path_buf());
        Ok(touched)
    }

    /// The staging bundle `index`, preallocated, its name durable before
    /// any record is acknowledged in it: the one the `residency-log-helper`
    /// thread made ahead (waiting for it if it is being made), or, when
    /// none is ready, one made here.
    fn next_staging(&self, index: u64) -> std::io::Result<File> {
        let ready = {
            let mut spare = lock(&self.spare);
            while spare.preparing == Some(index) {
                spare = self
                    .spare_wake
                    .wait(spare)
                    .unwrap_or_else(|e| e.into_inner());
            }
            spare.current = index;
            spare.ready.take()
        };
        // The helper makes the one after.
        self.spare_wake.notify_all();
        match ready {
            Some((made, file)) if made == index => Ok(file),
            _ => {
                let file = open_staging(&self.disk, index, true)?;
                preallocate(&file, 0)?;
                disk::sync_path(self.disk.dir())?;
                Ok(file)
            }
        }
    }

    /// The `residency-log-helper` thread: keeps the next staging bundle
    /// ready (preallocated under its name, the directory fsynced), so the
    /// writer neither writes 160 KiB of zeros nor fsyncs a directory
    /// between a batch and its answer; seals the full bundles; and moves
    /// request ids into the on-disk index when [`INDEX_BATCH`] of them wait
    /// in memory (at very high rates, before the next checkpoint would).
    fn make_spares(&self) {
        enum Job {
            Seal,
            Index,
            Prepare(u64),
        }
        // After a failure (out of space, of file descriptors, a file-size
        // limit) the writer makes its own bundles, and preparing them
        // ahead is tried again a second later, at the next bundle: it
        // stopped for the process's life (exhaustion audit, stop 65).
        let mut retry_at: Option<Instant> = None;
        // After a failed index update, the next is not tried for a second:
        // each batch asks again while the ids wait, and each try copies and
        // sorts them all (disk audit, stop 69: a full disk under
        // `index.redb` with 65,536 ids waiting took the helper to 85 % of a
        // core and ~100 warnings a second). The checkpoint tries too.
        let mut index_retry_at: Option<Instant> = None;
        loop {
            let job = {
                let mut spare = lock(&self.spare);
                loop {
                    let preallocating = retry_at.is_none_or(|at| Instant::now() >= at);
                    if !spare.full.is_empty() {
                        break Job::Seal;
                    }
                    if self.index_due.swap(false, Ordering::AcqRel)
                        && index_retry_at.is_none_or(|at| Instant::now() >= at)
                    {
                        break Job::Index;
                    }
                    if spare.closed {
                        return;
                    }
                    if preallocating && spare.ready.is_none() {
                        let next = spare.current + 1;
                        spare.preparing = Some(next);
                        break Job::Prepare(next);
                    }
                    spare = self
                        .spare_wake
                        .wait(spare)
                        .unwrap_or_else(|e| e.into_inner());
                }
            };
            match job {
                Job::Seal => self.seal_full(false),
                Job::Index => {
                    let size = lock(&self.state).size;
                    match self.index_up_to(size) {
                        Ok(()) => index_retry_at = None,
                        Err(e) => {
                            index_retry_at = Some(Instant::now() + Duration::from_secs(1));
                            tracing::warn!(error = %e, "cannot update the request-id index; tried again in a second at the earliest");
                        }
                    }
                }
                Job::Prepare(index) => {
                    // No record is in it: the writer takes it only after
                    // `preparing` is cleared.
                    let path = self.disk.staging(index);
                    let made = open_staging(&self.disk, index, true).and_then(|file| {
                        let done = preallocate(&file, 0)?;
                        disk::sync_path(self.disk.dir())?;
                        Ok(done.then_some(file))
                    });
                    let mut spare = lock(&self.spare);
                    spare.preparing = None;
                    match made {
                        Ok(Some(file)) => {
                            retry_at = None;
                            spare.ready = Some((index, file));
                        }
                        Ok(None) | Err(_) => {
                            if retry_at.is_none() {
                                tracing::warn!(path = %path.display(), "cannot preallocate staging bundles ahead (disk full, out of file descriptors, a file-size limit?); the writer makes its own until it can");
                            }
                            let _ = std::fs::remove_file(&path);
                            retry_at = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                    drop(spare);
                    self.spare_wake.notify_all();
                }
            }
        }
    }

    /// Adds the durable records of `chunk` to the tree: their leaves to
    /// the right edge (writing the hash tiles they fill), their ids to the
    /// recent index. Returns their indexes.
    fn commit(&self, chunk: &[Item], staging: &Staging) -> Vec<u64> {
        let mut st = lock(&self.state);
        st.batches += 1;
        let mut indexes = Vec::with_capacity(chunk.len());
        for item in chunk {
            let index = st.size;
            for full in st.edge.push(item.leaf) {
                self.write_full(&mut st, full);
            }
            st.recent.insert(item.id, index);
            st.size += 1;
            indexes.push(index);
        }
        if st.recent.len() >= INDEX_BATCH && !self.index_due.swap(true, Ordering::AcqRel) {
            // Taking the helper's lock orders this with its check.
            drop(lock(&self.spare));
            self.spare_wake.notify_all();
        }
        st.staging_len = staging.len;
        self.metrics.size.set(st.size as i64);
        indexes
    }

    /// Writes a hash tile the edge just filled (fsynced before the next
    /// checkpoint; retried then if this write fails).
    fn write_full(&self, st: &mut State, full: edge::Full) {
        let tile = full.tile();
        let bytes = full.bytes();
        match self.disk.write(&self.disk.path(tile), &bytes, false) {
            Ok(touched) => {
                st.unsynced.extend(touched);
                self.metrics.tiles_written.inc();
            }
            Err(e) => {
                tracing::error!(error = %e, tile = %tile.path(), "cannot write a hash tile; retried at the next checkpoint");
                st.unwritten.push((tile, bytes));
            }
        }
    }

    fn checkpoint(&self) -> Result<Arc<Published>, LogError> {
        let _one = lock(&self.checkpointing);
        self.in_place()?;
        // Full bundles still under their staging names are sealed first,
        // so a checkpoint finds the spec's files in place (and durable).
        self.seal_full(true);
        let (size, edge, unsynced, unwritten) = {
            let mut st = lock(&self.state);
            if let Some(why) = &st.unsyncable {
                // The lag keeps growing, as README says (disk audit, stop
                // 69: it stayed at the first failure's).
                let lag = st.size.saturating_sub(self.latest.load().size);
                self.metrics.integration_lag.set(lag as i64);
                return Err(LogError::Unsyncable(why.clone()));
            }
            (
                st.size,
                st.edge.clone(),
                std::mem::take(&mut st.unsynced),
                std::mem::take(&mut st.unwritten),
            )
        };
        let latest = self.latest.load_full();
        if latest.size == size && unsynced.is_empty() && unwritten.is_empty() {
            // An index that could not be opened again, or ids still
            // waiting for it, is tried again without a new record (disk
            // audit, stop 69: lookups by request id stayed 503 until the
            // next upload).
            let waiting = !lock(&self.state).recent.is_empty();
            let closed = self.index.db.read().map_or(true, |db| db.is_none());
            if waiting || closed {
                if let Err(e) = self.index_up_to(size) {
                    tracing::warn!(error = %e, "cannot update the request-id index; tried again at the next checkpoint");
                }
            }
            self.confirmed(size);
            return Ok(latest);
        }
        // First, so the ids held in memory stay one interval's worth even
        // when fsyncing the new tiles takes long (the records are durable
        // already; the index only has to lag, never lead, the bundles).
        if let Err(e) = self.index_up_to(size) {
            // Not fatal: the ids stay in memory and are retried next time.
            tracing::warn!(error = %e, "cannot update the request-id index");
        }
        if let Err((e, synced)) = self.make_durable(&unsynced, &unwritten) {
            let mut st = lock(&self.state);
            if synced {
                tracing::error!(error = %e, "an fsync of the log's tiles failed: no checkpoint is signed until a restart rebuilds them from the entry bundles (records are still appended)");
                st.unsyncable = Some(e.to_string());
            }
            st.unsynced.extend(unsynced);
            st.unwritten.extend(unwritten);
            let lag = st.size.saturating_sub(latest.size);
            self.metrics.integration_lag.set(lag as i64);
            return Err(e);
        }
        if latest.size == size {
            self.confirmed(size);
            return Ok(latest);
        }
        self.in_place()?;
        self.write_partials(&edge);
        let filled_from = if latest.size == u64::MAX {
            0
        } else {
            latest.size
        };
        let root = edge.root();
        let note = sign_checkpoint(&self.settings, &self.signer, size, root)?;
        let path = self.disk.dir().join(CHECKPOINT);
        // Again just before the checkpoint is written by path: the tiles'
        // fsyncs take time, and a volume mounted over the directory
        // meanwhile must not have its checkpoint overwritten
        // (verification, stop 69). A window remains between the two.
        self.in_place()?;
        if let Err(e) = self.disk.write(&path, note.as_bytes(), true) {
            let lag = lock(&self.state).size.saturating_sub(latest.size);
            self.metrics.integration_lag.set(lag as i64);
            return Err(io_error(&path)(e));
        }
        let published = Arc::new(Published { note, size, root });
        self.latest.store(published.clone());
        self.remove_filled_partials(filled_from, size);
        self.metrics.checkpoint_size.set(size as i64);
        self.confirmed(size);
        Ok(published)
    }

    /// Writes the hash tiles whose write failed and fsyncs what was written
    /// since the last checkpoint. The error says whether an fsync failed
    /// (`true`: not to be retried, see `State::unsyncable`) or a write
    /// (retried at the next checkpoint).
    fn make_durable(
        &self,
        unsynced: &[PathBuf],
        unwritten: &[(Tile, Vec<u8>)],
    ) -> Result<(), (LogError, bool)> {
        for (tile, bytes) in unwritten {
            let path = self.disk.path(*tile);
            self.disk
                .write(&path, bytes, true)
                .map_err(|e| (io_error(&path)(e), false))?;
            // The failed first write may have created directories whose
            // entries it never synced (its list of them went with the
            // error): every directory from the tile's up to the log's own
            // is synced. Only after a failed write; a few fsyncs.
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| d.starts_with(self.disk.dir())) {
                disk::sync_path_said(d).map_err(|(e, synced)| (io_error(d)(e), synced))?;
                dir = d.parent();
            }
        }
        disk::sync_each(unsynced).map_err(|(path, e, synced)| (io_error(path)(e), synced))
    }

    /// Removes the partial tiles (`<tile>.p/`) of every tile that is full
    /// at `to` and may have had partials written since the checkpoint of
    /// `from` records, the last one published: tlog-tiles lets a log delete
    /// them once the full tile exists (clients take a prefix of it). Those
    /// are the tiles in `[index_at(from), index_at(to))` at each level —
    /// the one `from` left unfinished, and any that a checkpoint which
    /// failed since (its partials written, its checkpoint file not: a full
    /// disk, say) left partials of (disk audit: only the first was removed,
    /// so the others stayed beside their full tiles for good). Without
    /// this every checkpoint would leave a file per level on disk; with it,
    /// at most the up-to-255 widths of each level's one unfinished tile
    /// stay. One `stat(2)` a tile in the range (usually one or none a
    /// level), and a removal only where a `.p/` directory is.
    fn remove_filled_partials(&self, from: u64, to: u64) {
        let mut level = 0u8;
        while Edge::index_at(to, level) > 0 {
            for index in Edge::index_at(from, level)..Edge::index_at(to, level) {
                self.remove_partials(level, index);
            }
            level += 1;
        }
    }

    /// Removes the `.p/` directory of tile `index` at hash level `level`
    /// (and, at level 0, of entry bundle `index`), where there is one.
    fn remove_partials(&self, level: u8, index: u64) {
        let levels = if level == 0 {
            [None, Some(0)].as_slice()
        } else {
            &[Some(level)]
        };
        for &level in levels {
            let Some(dir) = self.partials_dir(level, index).filter(|d| d.is_dir()) else {
                continue;
            };
            let full = Tile {
                level,
                index,
                width: WIDTH as u16,
            };
            // A bundle whose seal failed is not under its full name yet: a
            // static server of the directory would have neither.
            if level.is_none() && !self.disk.path(full).is_file() {
                continue;
            }
            remove_partials_dir(&dir);
        }
    }

    /// The `.p/` directory of tile `index` at `level` (entry bundles at
    /// `None`).
    fn partials_dir(&self, level: Option<u8>, index: u64) -> Option<PathBuf> {
        let tile = Tile {
            level,
            index,
            width: 1,
        };
        self.disk.path(tile).parent().map(Path::to_path_buf)
    }

    /// Removes the `.p/` directory of tile `index` at `level` (entry
    /// bundles at `None`), the caller knowing its full tile is there.
    fn remove_partials_of(&self, level: Option<u8>, index: u64) {
        if let Some(dir) = self.partials_dir(level, index) {
            remove_partials_dir(&dir);
        }
    }

    /// Writes the partial tiles of the checkpoint's size, as the spec has
    /// them exist for every checkpoint (a convenience for static serving:
    /// the log itself serves them from the right edge and the bundles).
    /// Every partial tile (and bundle) of the edge's unfinished tiles, at
    /// every width up to the edge's (a width no checkpoint had is
    /// harmless: tlog-tiles lets a log serve more partials than it must):
    /// each file that does not hold what it must is written, synced.
    /// Written first, then synced once each ([`disk::sync_each`]): one
    /// commit, not two fsyncs per file. With `sync_all`, those that held
    /// what they must are synced too (with their directories): a sealed
    /// generation's, never checked again, may hold it only in the page
    /// cache — written unsynced by a checkpoint, or by a repair a stop cut
    /// short before its syncs (concurrency audit, stop 67). True when all
    /// of it is durable.
    fn restore_partials(&self, edge: &Edge, sync_all: bool) -> bool {
        let (files, mut whole) = self.partial_files(edge, true);
        let (mut rewritten, mut touched) = (0, Vec::new());
        for (tile, bytes) in files {
            // An entry bundle sealed since (its content synced before its
            // name) serves every width of it: not written again (disk
            // audit, stop 69: a start wrote 10.8 MB of partials for a
            // bundle already full, on a disk they then filled).
            if tile.level.is_none()
                && self
                    .disk
                    .path(Tile {
                        width: WIDTH as u16,
                        ..tile
                    })
                    .is_file()
            {
                continue;
            }
            let path = self.disk.path(tile);
            if sync_all {
                // And every directory up to the log's own: made by
                // checkpoints without a sync, so a name in them may not be
                // durable (verification, stop 67).
                let mut dir = path.parent();
                while let Some(d) = dir.filter(|d| d.starts_with(self.disk.dir())) {
                    touched.push(d.to_path_buf());
                    dir = d.parent();
                }
            }
            if self.disk.read(&path).ok().flatten().as_deref() == Some(&bytes[..]) {
                if sync_all {
                    touched.push(path);
                }
                continue;
            }
            match self.disk.write(&path, &bytes, false) {
                Ok(t) => {
                    rewritten += 1;
                    touched.extend(t);
                }
                Err(e) => {
                    whole = false;
                    tracing::warn!(error = %e, tile = %tile.path(), "cannot write a partial tile");
                }
            }
        }
        if let Err((path, e, _)) = disk::sync_each(&touched) {
            whole = false;
            tracing::warn!(error = %e, path = %path.display(), "cannot sync the partial tiles written again");
        }
        if rewritten > 0 {
            tracing::info!(
                rewritten,
                "partial tiles that were missing or wrong written again"
            );
        }
        whole
    }

    /// [`Core::restore_partials`]; for a sealed generation whose repair it
    /// is (`marked`: [`UNREPAIRED`] is there), every file synced, and the
    /// mark removed once all of it is durable.
    fn repair(&self, edge: &Edge, marked: bool) {
        if !self.restore_partials(edge, marked) || !marked {
            return;
        }
        let mark = self.disk.dir().join(UNREPAIRED);
        if let Err(e) = std::fs::remove_file(&mark) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, path = %mark.display(), "cannot remove the mark of a repaired sealed generation");
            }
        }
    }

    /// The edge's partial tiles and bundle, written for static file servers
    /// without an fsync.
    fn write_partials(&self, edge: &Edge) {
        for (tile, bytes) in self.partial_files(edge, false).0 {
            let path = self.disk.path(tile);
            if let Err(e) = self.disk.write(&path, &bytes, false) {
                tracing::warn!(error = %e, tile = %tile.path(), "cannot write a partial tile");
            }
        }
    }

    /// The partial tiles (and entry bundle) of the edge's unfinished
    /// tiles, with their contents: at the edge's widths, or with
    /// `every_width` at each width from 1 up to them. And whether that is
    /// all of them (`false`: the bundle could not be read).
    fn partial_files(&self, edge: &Edge, every_width: bool) -> (Vec<(Tile, Vec<u8>)>, bool) {
        let widths = |width: u16| (if every_width { 1 } else { width })..=width;
        let mut files = Vec::new();
        for (tile, hashes) in edge.partials() {
            for width in widths(tile.width) {
                let tile = Tile { width, ..tile };
                files.push((tile, hashes[..usize::from(width)].concat()));
            }
        }
        let width = (edge.size() % WIDTH) as u16;
        let index = edge.size() / WIDTH;
        // (No bundle to read when the edge is at a tile's end.)
        let bundle = match (width > 0).then(|| self.bundle(index)) {
            None => None,
            Some(Ok(bundle)) => bundle,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the entry bundle of the partial tiles");
                return (files, false);
            }
        };
        if let Some(bundle) = bundle {
            for width in widths(width) {
                if let Some(prefix) = disk::bundle_prefix(&bundle, usize::from(width)) {
                    let tile = Tile {
                        level: None,
                        index,
                        width,
                    };
                    files.push((tile, prefix.to_vec()));
                }
            }
        }
        (files, true)
    }

    /// Moves the ids of records `[.., size)` from memory to the on-disk
    /// index, in one durable transaction. One that fails leaves them in
    /// memory, and the index is opened again for the next.
    fn index_up_to(&self, size: u64) -> Result<(), LogError> {
        // One writer at a time (the checkpoint and the helper), so the
        // INDEXED mark never goes back.
        let _one = lock(&self.indexing);
        let mut ids: Vec<(u128, u64)> = lock(&self.state)
            .recent
            .iter()
            .filter(|(_, i)| **i < size)
            .map(|(k, i)| (*k, *i))
            .collect();
        // In key order: the proxy's ids start with their time, so these
        // land at the B-tree's right edge, page after page.
        ids.sort_unstable();
        let failed = index_failed(&self.index.path);
        let written = self.index.read(|index| {
            let Index::Writable(index) = index else {
                return Ok(false); // sealed: every id is in it
            };
            let write = || -> Result<(), redb::Error> {
                #[cfg(test)]
                if self.index.fail_next.swap(false, Ordering::Relaxed) {
                    return Err(redb::Error::PreviousIo);
                }
                let mut txn = index.begin_write()?;
                txn.set_quick_repair(true);
                {
                    let mut table = txn.open_table(BY_ID)?;
                    for (key, index) in &ids {
                        table.insert(*key, *index)?;
                    }
                    let mut meta = txn.open_table(META)?;
                    meta.insert(INDEXED, size)?;
                }
                txn.commit()?;
                Ok(())
            };
            write().map(|()| true).map_err(&failed)
        });
        match written {
            Ok(false) => Ok(()),
            Ok(true) => {
                let mut st = lock(&self.state);
                for (key, _) in ids {
                    st.recent.remove(&key);
                }
                st.recent.shrink_to(4096);
                Ok(())
            }
            Err(e) => {
                if let Err(again) = self.index.reopen() {
                    tracing::warn!(error = %again, "cannot open the request-id index again");
                }
                Err(e)
            }
        }
    }

    /// The latest checkpoint, of `size`, covers every record as of now;
    /// what was appended since is its lag.
    fn confirmed(&self, size: u64) {
        self.metrics.checkpoint_timestamp.set(unix_now());
        self.metrics.checkpoint_age.set(0);
        let lag = lock(&self.state).size.saturating_sub(size);
        self.metrics.integration_lag.set(lag as i64);
    }

    /// The durable entries of bundle `index` (full, or the staging one);
    /// `None` past the records written. One the records written reach
    /// that cannot be read, or is gone, is an error: its records were
    /// committed, and a "no such record" would tell a verifier they do
    /// not exist (lifecycle audit, stop 63).
    fn bundle(&self, index: u64) -> Result<Option<Vec<u8>>, LogError> {
        let (size, staging_index, staging_len) = {
            let st = lock(&self.state);
            (st.size, st.staging_index, st.staging_len)
        };
        if index.checked_mul(WIDTH).is_none_or(|first| first >= size) {
            return Ok(None);
        }
        let full = self.disk.path(Tile {
            level: None,
            index,
            width: WIDTH as u16,
        });
        let read = |path: &Path| self.disk.read(path).map_err(io_error(path));
        let missing = || LogError::Corrupt {
            path: full.display().to_string(),
            message: format!("entry bundle {index} is missing, though it holds committed records"),
        };
        if index < staging_index {
            if let Some(bytes) = read(&full)? {
                return Ok(Some(bytes));
            }
            // Full, but not sealed yet (the helper cuts and renames it).
            let staging = self.disk.staging(index);
            return match read(&staging)? {
                Some(bytes) => disk::bundle_prefix(&bytes, WIDTH as usize)
                    .map(|b| Some(b.to_vec()))
                    .ok_or_else(missing),
                None => read(&full)?.map(Some).ok_or_else(missing),
            };
        }
        let staging = self.disk.staging(index);
        match File::open(&staging) {
            Ok(f) => {
                let mut buf = vec![0u8; usize::try_from(staging_len).unwrap_or(usize::MAX)];
                f.read_exact_at(&mut buf, 0).map_err(io_error(&staging))?;
                Ok(Some(buf))
            }
            // Sealed since we looked.
            Err(_) => read(&full)?.map(Some).ok_or_else(missing),
        }
    }

    /// A tile of the durable tree (any size up to the records written);
    /// an entry bundle that cannot be read is an error (see `bundle`).
    fn tile(&self, tile: Tile) -> Result<Option<Vec<u8>>, LogError> {
        if tile
            .needs_size()
            .is_none_or(|needs| needs > lock(&self.state).size)
        {
            return Ok(None);
        }
        Ok(match tile.level {
            None => match self.bundle(tile.index)? {
                // One the records reach, cut short: an error (a 404 told a
                // client to wait for a checkpoint that covered it already:
                // verification, stop 63).
                Some(bundle) => Some(
                    disk::prefix(tile, &bundle)
                        .ok_or_else(|| LogError::Corrupt {
                            path: self.disk.path(tile).display().to_string(),
                            message: format!(
                                "entry bundle {} holds fewer than the {} records the log wrote to it",
                                tile.index, tile.width
                            ),
                        })?
                        .to_vec(),
                ),
                None => None,
            },
            Some(level) => {
                // A full tile, or a prefix of one.
                if let Ok(Some(bytes)) = self.disk.read_tile(tile) {
                    return Ok(Some(bytes));
                }
                // The right edge's partial tile, from memory.
                {
                    let st = lock(&self.state);
                    let partial = st.edge.partial(level);
                    if Edge::index_at(st.size, level) == tile.index
                        && partial.len() >= usize::from(tile.width)
                    {
                        return Ok(Some(partial[..usize::from(tile.width)].concat()));
                    }
                    // A full tile whose write failed (retried at the next
                    // checkpoint).
                    let same = |t: &Tile| t.level == tile.level && t.index == tile.index;
                    if let Some((_, bytes)) = st.unwritten.iter().find(|(t, _)| same(t)) {
                        return Ok(disk::prefix(tile, bytes).map(<[u8]>::to_vec));
                    }
                }
                // Filled and written since the first look; else a tile the
                // records reach is gone: an error (the log's 503), not "no
                // such tile" — a proof built without it would be refused
                // as the log's word (review, stop 63).
                let path = self.disk.path(tile);
                match self.disk.read_tile(tile).map_err(io_error(&path))? {
                    Some(bytes) => Some(bytes),
                    None => {
                        return Err(LogError::Corrupt {
                            path: path.display().to_string(),
                            message: "is missing or short, though the records reach it".into(),
                        })
                    }
                }
            }
        })
    }
}

fn answer_all(items: impl Iterator<Item = Item>, failure: Failure) {
    deliver(
        items
            .map(|item| (item.reply, Err(failure.clone())))
            .collect(),
    );
}

/// Bytes of zeros a staging bundle starts with: appends overwrite them, so
/// the file's size and block map do not change and `fdatasync(2)` has no
/// metadata to journal (PostgreSQL preallocates its WAL segments for the
/// same reason). 256 records of the usual ~500 bytes fit; a bundle of
/// larger records grows past it, correctly but with costlier fsyncs.
const PREALLOCATE: u64 = 160 * 1024;

/// Fills `file` with zeros from `from` to [`PREALLOCATE`] and syncs it.
/// Best effort: where the zeros cannot be written (a full disk, a
/// file-size limit) the file is cut back to `from` and `false` returned —
/// appends then grow the file, correctly but with costlier fsyncs.
fn preallocate(file: &File, from: u64) -> std::io::Result<bool> {
    let mut done = true;
    if from < PREALLOCATE {
        let zeros = vec![0u8; (PREALLOCATE - from) as usize];
        if file.write_all_at(&zeros, from).is_err() {
            file.set_len(from)?;
            done = false;
        }
    }
    file.sync_all()?;
    Ok(done)
}

fn open_staging(disk: &Disk, index: u64, truncate: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o644)
        .open(disk.staging(index))
}

/// The right edge of the tree of `size` leaves, read from disk: level 0's
/// partial tile hashed from its bundle's entries, each higher level's from
/// the full tiles of the level below (at most 255 tiles per level).
fn edge_at(disk: &Disk, size: u64) -> Result<Edge, LogError> {
    let corrupt = |message: String| LogError::Corrupt {
        path: disk.dir().display().to_string(),
        message,
    };
    let mut partials = Vec::new();
    let mut level = 0u8;
    while size.checked_shr(8 * u32::from(level)).unwrap_or(0) > 0 {
        let width = Edge::width_at(size, level) as usize;
        let index = Edge::index_at(size, level);
        let mut hashes = Vec::with_capacity(width);
        if width > 0 && level == 0 {
            let bundle = read_bundle(disk, index)?.ok_or_else(|| {
                corrupt(format!(
                    "entry bundle {index} is missing: committed records are missing"
                ))
            })?;
            let prefix = disk::bundle_prefix(&bundle, width).ok_or_else(|| {
                corrupt(format!(
                    "entry bundle {index} holds fewer than the {width} records the last checkpoint covers: committed records are missing"
                ))
            })?;
            for entry in disk::entries(prefix).unwrap_or_default() {
                hashes.push(merkle::leaf_hash(entry));
            }
        } else if width > 0 {
            for node in index * WIDTH..index * WIDTH + width as u64 {
                let below = Tile {
                    level: Some(level - 1),
                    index: node,
                    width: WIDTH as u16,
                };
                let bytes = disk
                    .read(&disk.path(below))
                    .map_err(io_error(&disk.path(below)))?
                    .filter(|b| b.len() == 32 * WIDTH as usize)
                    .ok_or_else(|| {
                        corrupt(format!(
                            "{} is missing or short: committed tiles are missing",
                            below.path()
                        ))
                    })?;
                let below: Vec<Hash> = bytes
                    .chunks(32)
                    .map(|c| c.try_into().unwrap_or([0; 32]))
                    .collect();
                hashes.push(edge::perfect_root(&below));
            }
        }
        partials.push(hashes);
        level += 1;
    }
    Edge::from_partials(size, partials).map_err(corrupt)
}

/// The records of a log of the one-file format (`records.log`) and the
/// tree they make, checked against the directory's last checkpoint before
/// anything in the directory changes: the records it covers must hash to
/// its root, and all be there. Lines after it are kept up to a torn or
/// unreadable tail, as the old format's replay did. A `records.log` beside
/// `records.log.imported` is refused outright: the log was converted, and
/// an older version started on it since (a downgrade) left the file —
/// converting it again removed the tiles written after the conversion,
/// acknowledged records with them (upgrade audit, stop 68).
fn legacy_records<'a>(
    dir: &Path,
    text: &'a [u8],
    verifier: &Verifier,
    origin: &str,
) -> Result<Vec<&'a [u8]>, LogError> {
    let legacy = dir.join(LEGACY_RECORDS);
    let corrupt = |message: String| LogError::Corrupt {
        path: legacy.display().to_string(),
        message,
    };
    let imported = dir.join(format!("{LEGACY_RECORDS}.imported"));
    if imported.exists() {
        return Err(corrupt(format!(
            "the log was converted to tiles already ({} is the file it was converted from): this records.log was left since by a version of the one-file format started on the directory (a downgrade), and holds none of the records written after the conversion; move it aside to open the log from its tiles (nothing was changed)",
            imported.display()
        )));
    }
    // Tiles beside it that no conversion of it can have written: a log
    // that never had the one-file format.
    let tiles_too = dir.join("tile").exists() || dir.join("generations").exists();
    let hint = if tiles_too {
        " (the directory also holds tiles: if this log was written by a version that keeps tiles, this records.log was left by an older version started on it; move it aside to open the log from its tiles)"
    } else {
        ""
    };
    let committed = read_checkpoint(dir, verifier, origin)?;
    let (size, root) = committed
        .as_ref()
        .map_or((0, merkle::empty_root()), |c| (c.size, c.root));
    let mut records = Vec::new();
    let mut tree = Edge::new();
    for line in text.split_inclusive(|b| *b == b'\n') {
        let Some(record) = line.strip_suffix(b"\n") else {
            break;
        };
        // One an entry bundle cannot hold ends it as an unreadable line.
        if Record::from_bytes(record).is_err() || u16::try_from(record.len()).is_err() {
            break;
        }
        let _ = tree.push(merkle::leaf_hash(record));
        records.push(record);
        if tree.size() == size && tree.root() != root {
            return Err(corrupt(format!(
                "the first {size} records hash to {} but the last checkpoint says {}: committed records were altered; nothing was converted{hint}",
                residency_core::hex::encode(&tree.root()),
                residency_core::hex::encode(&root)
            )));
        }
    }
    if tree.size() < size {
        return Err(corrupt(format!(
            "holds {} readable records but the last checkpoint covers {size}: committed records are missing; nothing was converted{hint}",
            tree.size()
        )));
    }
    Ok(records)
}

/// Converts a log of the earlier format — `records.log`, one record per
/// line, leaf `i` being line `i` — into tiles. The tree is the same (the
/// leaves are the same bytes), so the existing checkpoint stays valid and
/// must match ([`legacy_records`], before anything is removed or written).
/// Tiles are written and fsynced first, then `records.log` is renamed to
/// `records.log.imported` (kept: it is the operator's to archive); a crash
/// in between converts again from scratch.
fn migrate(disk: &Disk, verifier: &Verifier, origin: &str) -> Result<(), LogError> {
    let started = Instant::now();
    let dir = disk.dir();
    let legacy = dir.join(LEGACY_RECORDS);
    let text = std::fs::read(&legacy).map_err(io_error(&legacy))?;
    let records = legacy_records(dir, &text, verifier, origin)?;
    // What an interrupted conversion left.
    let tiles_dir = dir.join("tile");
    if tiles_dir.exists() {
        std::fs::remove_dir_all(&tiles_dir).map_err(io_error(&tiles_dir))?;
    }
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("staging.") || name == INDEX {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let mut edge = Edge::new();
    let mut bundle = Vec::new();
    let mut touched = Vec::new();
    let write = |path: PathBuf, bytes: &[u8], touched: &mut Vec<PathBuf>| {
        disk.write(&path, bytes, false)
            .map(|t| touched.extend(t))
            .map_err(io_error(&path))
    };
    for record in records {
        // (Each fits: checked above.)
        tiles::push_entry(&mut bundle, record);
        for full in edge.push(merkle::leaf_hash(record)) {
            write(disk.path(full.tile()), &full.bytes(), &mut touched)?;
        }
        if edge.size().is_multiple_of(WIDTH) {
            let tile = Tile {
                level: None,
                index: edge.size() / WIDTH - 1,
                width: WIDTH as u16,
            };
            write(disk.path(tile), &bundle, &mut touched)?;
            bundle.clear();
        }
    }
    write(disk.staging(edge.size() / WIDTH), &bundle, &mut touched)?;
    disk::sync_each(&touched).map_err(|(path, e, _)| io_error(path)(e))?;
    let imported = dir.join(format!("{LEGACY_RECORDS}.imported"));
    std::fs::rename(&legacy, &imported).map_err(io_error(&imported))?;
    disk::sync_path(dir).map_err(io_error(dir))?;
    tracing::warn!(
        records = edge.size(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        kept = %imported.display(),
        "converted the log from the one-file format to C2SP tiles"
    );
    Ok(())
}

/// Bundle `index` from its tile file or its staging file.
fn read_bundle(disk: &Disk, index: u64) -> Result<Option<Vec<u8>>, LogError> {
    let full = disk.path(Tile {
        level: None,
        index,
        width: WIDTH as u16,
    });
    if let Some(b) = disk.read(&full).map_err(io_error(&full))? {
        return Ok(Some(b));
    }
    let staging = disk.staging(index);
    disk.read(&staging).map_err(io_error(&staging))
}

/// Adds the records written after the last checkpoint (durable, maybe
/// acknowledged) to the tree, rewriting the hash tiles they fill, cuts a
/// torn tail off the staging bundle and opens it for appending.
/// Seals the full entry bundles still under their staging names below
/// bundle `below` (the one the last checkpoint ends in): what a seal that
/// failed, or a stop between a checkpoint and the seal, leaves. `replay`
/// starts at `below`, so nothing else would give them their tile names,
/// and a static server of the directory would lack them. A leftover whose
/// tile exists already (the rename was made, its directory entry not
/// removed) is removed.
fn seal_leftovers(disk: &Disk, below: u64) -> Result<(), LogError> {
    let dir = disk.dir();
    let mut leftovers: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            name.to_str()?.strip_prefix("staging.")?.parse::<u64>().ok()
        })
        .filter(|index| *index < below)
        .collect();
    leftovers.sort_unstable();
    for index in leftovers {
        let staging = disk.staging(index);
        let target = disk.path(Tile {
            level: None,
            index,
            width: WIDTH as u16,
        });
        if target.exists() {
            std::fs::remove_file(&staging).map_err(io_error(&staging))?;
            continue;
        }
        let bytes = std::fs::read(&staging).map_err(io_error(&staging))?;
        let Some(entries) = disk::bundle_prefix(&bytes, WIDTH as usize) else {
            return Err(LogError::Corrupt {
                path: staging.display().to_string(),
                message: format!(
                    "entry bundle {index} is below the last checkpoint but holds fewer than {WIDTH} entries"
                ),
            });
        };
        let file = OpenOptions::new()
            .write(true)
            .open(&staging)
            .map_err(io_error(&staging))?;
        file.set_len(entries.len() as u64)
            .and_then(|()| file.sync_data())
            .map_err(io_error(&staging))?;
        let mut touched = Vec::new();
        let parent = target.parent().unwrap_or(dir);
        disk.create_dirs(parent, &mut touched)
            .map_err(io_error(parent))?;
        std::fs::rename(&staging, &target).map_err(io_error(&target))?;
        touched.push(parent.to_path_buf());
        touched.push(dir.to_path_buf());
        touched.sort();
        touched.dedup();
        for d in touched {
            disk::sync_path(&d).map_err(io_error(&d))?;
        }
        tracing::info!(path = %target.display(), "sealed a full entry bundle left under its staging name");
    }
    Ok(())
}

fn replay(disk: &Disk, st: &mut State, metrics: &LogMetrics) -> Result<Staging, LogError> {
    let checkpointed = st.size;
    let mut index = st.size / WIDTH;
    let mut skip = (st.size % WIDTH) as usize;
    let corrupt = |path: &Path, message: String| LogError::Corrupt {
        path: path.display().to_string(),
        message,
    };
    loop {
        let full = disk.path(Tile {
            level: None,
            index,
            width: WIDTH as u16,
        });
        let staging = disk.staging(index);
        let (bytes, sealed) = match disk.read(&full).map_err(io_error(&full))? {
            Some(b) => (b, true),
            None => match disk.read(&staging).map_err(io_error(&staging))? {
                Some(b) => (b, false),
                None => (Vec::new(), false),
            },
        };
        let (entries, valid) = disk::complete_entries(&bytes);
        let mut kept = 0usize;
        let mut kept_len = 0usize;
        for (i, entry) in entries.iter().enumerate() {
            let record = Record::from_bytes(entry);
            if i >= skip {
                let record = match record {
                    Ok(record) => record,
                    Err(e) => {
                        // A torn write leaves an entry that is not JSON (its
                        // unwritten sectors are zeros): cut below. One that is
                        // JSON was written whole, and was acknowledged if what
                        // follows it was: a record of another version (a
                        // rollback) must not be cut and its index reused, nor
                        // one altered on disk (README audit, stop 64: that was
                        // said to be a newer version's, without its byte).
                        let path = if sealed { &full } else { &staging };
                        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(entry) {
                            let v = json.get("v").and_then(serde_json::Value::as_u64);
                            return Err(corrupt(
                            path,
                            match v {
                                Some(v) if v > u64::from(crate::record::VERSION) => format!(
                                    "entry {i} (leaf {}, at byte {kept_len}) is a record of format version {v}, which this version (format {}) cannot read; nothing was cut: start the version that wrote it",
                                    st.size,
                                    crate::record::VERSION
                                ),
                                _ => format!(
                                    "entry {i} (leaf {}, at byte {kept_len}) is damaged: JSON, written whole, but not a record ({e}) — altered on disk? It and the {} entries after it were written after the last checkpoint and may have been acknowledged, so nothing was cut: restore the file from a backup",
                                    st.size,
                                    entries.len() - i - 1
                                ),
                            },
                        ));
                        }
                        // Nor is one without a zero byte (a record holds none):
                        // that is a record altered on disk — one flipped byte
                        // — and it and the records after it may have been
                        // acknowledged (lifecycle audit, stop 63: they were
                        // cut, and their indexes given to new records).
                        if !entry.contains(&0) {
                            return Err(corrupt(
                            path,
                            format!(
                                "entry {i} (leaf {}, at byte {kept_len}) is damaged: not a record, yet no torn write (whose unwritten bytes are zeros); it and the {} entries after it were written after the last checkpoint and may have been acknowledged, so nothing was cut: restore the file from a backup — or, accepting that their receipts stop verifying and their indexes go to new records, cut the file at byte {kept_len} yourself",
                                st.size,
                                entries.len() - i - 1
                            ),
                        ));
                        }
                        break;
                    }
                };
                let leaf = merkle::leaf_hash(entry);
                for full in st.edge.push(leaf) {
                    let path = disk.path(full.tile());
                    st.unsynced.extend(
                        disk.write(&path, &full.bytes(), false)
                            .map_err(io_error(&path))?,
                    );
                    metrics.tiles_written.inc();
                }
                st.recent.insert(id_key(&record.request_id), st.size);
                st.size += 1;
            }
            kept += 1;
            kept_len += 2 + entry.len();
        }
        if sealed {
            if kept == WIDTH as usize
                && valid < bytes.len()
                && bytes[valid..].iter().all(|b| *b == 0)
            {
                // Sealed, but its cut was not durable when the process stopped.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&full)
                    .map_err(io_error(&full))?;
                f.set_len(valid as u64).map_err(io_error(&full))?;
                f.sync_all().map_err(io_error(&full))?;
            } else if kept != WIDTH as usize || valid != bytes.len() {
                return Err(corrupt(
                    &full,
                    format!(
                        "holds {kept} readable records, not 256: a full entry bundle was altered"
                    ),
                ));
            }
            index += 1;
            skip = 0;
            continue;
        }
        if kept == WIDTH as usize {
            // Full but not yet cut and renamed when the process stopped.
            let f = OpenOptions::new()
                .write(true)
                .open(&staging)
                .map_err(io_error(&staging))?;
            f.set_len(kept_len as u64).map_err(io_error(&staging))?;
            f.sync_all().map_err(io_error(&staging))?;
            let mut touched = Vec::new();
            let parent = full.parent().unwrap_or(disk.dir());
            disk.create_dirs(parent, &mut touched)
                .map_err(io_error(parent))?;
            std::fs::rename(&staging, &full).map_err(io_error(&full))?;
            st.unsynced.extend(touched);
            st.unsynced.push(parent.to_path_buf());
            index += 1;
            skip = 0;
            continue;
        }
        if kept < skip {
            return Err(corrupt(
                &staging,
                format!("holds {kept} readable records but the last checkpoint covers {skip} of them: committed records are missing"),
            ));
        }
        let file = open_staging(disk, index, false).map_err(io_error(&staging))?;
        let torn = bytes[kept_len..].iter().any(|b| *b != 0);
        if torn {
            tracing::warn!(
                path = %staging.display(),
                kept,
                dropped_bytes = bytes.len() - kept_len,
                "cutting a torn or unreadable tail off the entry bundle (beyond the last checkpoint)"
            );
        }
        // Cut what is not a record (a torn tail, or the preallocated
        // zeros), then preallocate again.
        file.set_len(kept_len as u64).map_err(io_error(&staging))?;
        if !preallocate(&file, kept_len as u64).map_err(io_error(&staging))? {
            tracing::warn!(path = %staging.display(), "cannot preallocate the staging bundle (disk full or a file-size limit?): appends grow it instead");
        }
        disk::sync_path(disk.dir()).map_err(io_error(disk.dir()))?;
        st.staging_index = index;
        st.staging_len = kept_len as u64;
        if st.size > checkpointed {
            tracing::info!(
                records = st.size - checkpointed,
                "replayed records written after the last checkpoint"
            );
        }
        return Ok(Staging {
            file,
            index,
            len: kept_len as u64,
            count: kept as u64,
        });
    }
}

/// A new index is made under another name and renamed into place once
/// complete: a process killed while redb wrote its first pages (a roll
/// opens a new generation's index) left an `index.redb` that was no redb
/// database, and the log did not open until it was deleted by hand. What
/// such a kill leaves now is `index.redb.new`, removed here.
fn make_index(dir: &Path) -> Result<(), LogError> {
    let path = dir.join(INDEX);
    let new = dir.join(INDEX_NEW);
    match std::fs::remove_file(&new) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&new)(e)),
        _ => {}
    }
    // (An error reading it is not "not there": the rename would replace it.)
    if path.try_exists().map_err(io_error(&path))? {
        return Ok(());
    }
    let made = redb::Database::builder()
        .set_cache_size(INDEX_CACHE)
        .create(&new)
        .map_err(|e| LogError::Io {
            path: new.display().to_string(),
            error: std::io::Error::other(e),
        })?;
    drop(made);
    std::fs::File::open(&new)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&new, &path))
        .and_then(|()| disk::sync_path(dir))
        .map_err(io_error(&path))
}

fn index_failed(path: &Path) -> impl Fn(redb::Error) -> LogError + '_ {
    move |e| LogError::Corrupt {
        path: path.display().to_string(),
        message: format!("{e} (the index can be deleted: it is rebuilt from the tiles)"),
    }
}

/// How many records (the first) have their ids in `index`.
fn indexed(index: &impl ReadableDatabase, path: &Path) -> Result<u64, LogError> {
    let failed = index_failed(path);
    let txn = index.begin_read().map_err(|e| failed(e.into()))?;
    match txn.open_table(META) {
        Ok(meta) => Ok(meta
            .get(INDEXED)
            .map_err(|e| failed(e.into()))?
            .map_or(0, |v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(failed(e.into())),
    }
}

/// Brings the on-disk request-id index up to the checkpointed `size`
/// (records after it are in memory, from the replay): after a crash it
/// lags by at most the records of one checkpoint interval; without an
/// index (deleted, or a log copied without it) it is rebuilt from the
/// bundles.
fn catch_up_index(
    disk: &Disk,
    index: &redb::Database,
    path: &Path,
    size: u64,
) -> Result<(), LogError> {
    let failed = index_failed(path);
    let indexed = indexed(index, path)?;
    if indexed >= size {
        return Ok(());
    }
    let started = Instant::now();
    let mut txn = index.begin_write().map_err(|e| failed(e.into()))?;
    txn.set_quick_repair(true);
    {
        let mut table = txn.open_table(BY_ID).map_err(|e| failed(e.into()))?;
        // Bundle by bundle, each read as far as its entries are complete: a
        // staging bundle ends in zeros (of any length), and a sealed one
        // whose cut a crash lost does too. One with fewer than a bundle's
        // entries is the last that can be indexed from here.
        let mut n = indexed / WIDTH;
        while n * WIDTH < size {
            let bundle = read_bundle(disk, n)?.unwrap_or_default();
            let (entries, _) = disk::complete_entries(&bundle);
            for (i, entry) in (n * WIDTH..).zip(&entries) {
                if i >= indexed && i < size {
                    if let Ok(record) = Record::from_bytes(entry) {
                        table
                            .insert(id_key(&record.request_id), i)
                            .map_err(|e| failed(e.into()))?;
                    }
                }
            }
            if (entries.len() as u64) < WIDTH {
                break;
            }
            n += 1;
        }
        let mut meta = txn.open_table(META).map_err(|e| failed(e.into()))?;
        meta.insert(INDEXED, size).map_err(|e| failed(e.into()))?;
    }
    txn.commit().map_err(|e| failed(e.into()))?;
    if size - indexed > 10_000 {
        tracing::info!(
            records = size - indexed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt the request-id index"
        );
    }
    Ok(())
}

/// Request id → leaf index. The keys are already uniform — request ids
/// are 128 random bits the proxy draws (a client's `X-Request-Id` is
/// replaced, never used) and other ids go through SHA-256 in [`id_key`] —
/// so the map folds the key instead of running SipHash over it.
type ById = HashMap<u128, u64, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for u128 keys; FNV-1a keeps it correct for anything else.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }
}

struct Committed {
    note: String,
    size: u64,
    root: Hash,
}

/// The stored checkpoint, verified with our own key.
fn read_checkpoint(
    dir: &Path,
    verifier: &Verifier,
    origin: &str,
) -> Result<Option<Committed>, LogError> {
    let path = dir.join(CHECKPOINT);
    let note = match std::fs::read_to_string(&path) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LogError::Io {
                path: path.display().to_string(),
                error: source,
            })
        }
    };
    let corrupt = |message: String| LogError::Corrupt {
        path: path.display().to_string(),
        message,
    };
    let cp = Checkpoint::open(&note, verifier).map_err(|e| {
        corrupt(format!(
            "{e}: signed by another key, or damaged. A log is tied to its key: if the key changed, put the log's own back (a new key needs a new directory and origin); if the file is damaged, restore it from a backup, or remove it and the proxy signs the records it holds again at start"
        ))
    })?;
    if cp.origin != origin {
        return Err(corrupt(format!(
            "belongs to log `{}`, not `{origin}` (transparency.origin)",
            cp.origin
        )));
    }
    Ok(Some(Committed {
        note,
        size: cp.size,
        root: cp.root,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;
    use crate::record::{Client, Database, Outcome};
    use crate::settings::{ClientAddress, OnWriteError, ReceiptMode};
    use crate::storage::Log;

    /// A test's directory, removed when dropped.
    pub(crate) struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn setup(tag: &str) -> (Dir, Transparency) {
        let dir = std::env::temp_dir().join(format!(
            "rp-log-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("log.key");
        std::fs::write(&key, Signer::generate_pkcs8().unwrap()).unwrap();
        let settings = Transparency {
            directory: dir.join("log"),
            postgres: None,
            origin: "test.example/log".into(),
            signing_key: key,
            receipts: ReceiptMode::Signed,
            checkpoint_interval: Duration::from_secs(1),
            commit_window: crate::settings::DEFAULT_COMMIT_WINDOW_DIRECTORY,
            write_timeout: crate::settings::DEFAULT_WRITE_TIMEOUT,
            client_address: ClientAddress::Prefix { v4: 24, v6: 48 },
            on_write_error: OnWriteError::Refuse,
            address: None,
            max_records: 1000,
            max_connections: 256,
            max_connections_per_client: 32,
            refusal_records_per_second: 100,
            requests_per_second_per_client: 0,
            requests_burst_per_client: 1,
            refusal_records_burst: 1000,
            tls: Vec::new(),
            secret_files: Vec::new(),
        };
        (Dir(dir), settings)
    }

    pub(crate) fn metrics() -> LogMetrics {
        LogMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    pub(crate) fn record(i: u64) -> Record<'static> {
        Record {
            v: 1,
            request_id: format!("{i:032x}").into(),
            time: "2026-11-28T04:13:14.123Z".into(),
            outcome: Outcome::Stored,
            reason: None,
            client: Client {
                source: Some("peer".into()),
                address: Some("203.0.113.0/24".into()),
            },
            country: Some("CH".into()),
            jurisdiction: Some("ch".into()),
            datacenter: Some("zurich".into()),
            also_sent_to: Vec::new(),
            upstream_status: Some(201),
            body: None,
            policy_sha256: "00".repeat(32).into(),
            geoip: Database {
                build_epoch: 1,
                sha256: "11".repeat(32).into(),
            },
            tenant: None,
            summary: None,
        }
    }

    /// A disk that does not answer (a hung fsync, a hard-mounted network
    /// volume): an upload waited for its record for ever, holding its
    /// client, and the log never said it was failing, so uploads kept
    /// being forwarded. Each append now waits `write_timeout` at most, and
    /// the log fails (refusing uploads, folding refusals) while the batch
    /// hangs; the held records are written once the disk answers.
    #[tokio::test]
    async fn a_disk_that_does_not_answer_fails_appends_after_write_timeout() {
        let (_dir, mut settings) = setup("stalled");
        settings.write_timeout = Duration::from_millis(200);
        let log = Log::open(&settings, metrics()).unwrap();
        log.append(&record(0)).await.unwrap();
        assert!(!log.failing());
        // Let go of the writer however the test ends: a log dropped while
        // its writer is held waits for that thread for ever.
        struct Release<'a>(&'a Log);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.hold_writer(false);
            }
        }
        let release = Release(&log);
        log.hold_writer(true);
        let started = std::time::Instant::now();
        let Err(e) = log.append(&record(1)).await else {
            panic!("an append the disk never answered succeeded");
        };
        assert!(matches!(e, LogError::Timeout(_)), "{e}");
        assert!(e.to_string().contains("transparency.write_timeout"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(log.failing(), "a log whose disk does not answer is failing");
        // Once the writer's batch is older than the timeout (it began a
        // little after the append queued), a refusal is folded, not waited
        // for.
        for _ in 0..100 {
            if log.backend_failing() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut refusal = record(2);
        refusal.outcome = Outcome::Refused;
        let folded = tokio::time::timeout(Duration::from_secs(1), log.append_refusal(&refusal));
        assert!(matches!(folded.await, Ok(None)));
        drop(release);
        // The held record is written once the disk answers.
        for _ in 0..100 {
            if log.size() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(log.size(), 2);
        let a = log.append(&record(3)).await.unwrap();
        assert_eq!(a.index, 2);
        assert!(!log.failing());
    }

    #[tokio::test]
    async fn appends_checkpoints_and_serves_records() {
        let (_dir, settings) = setup("basic");
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.latest().size, 0, "an empty log is checkpointed at open");
        for i in 0..5 {
            let a = log.append(&record(i)).await.unwrap();
            assert_eq!(a.index, i);
            assert_eq!(a.bytes, record(i).to_bytes());
        }
        let cp = log.checkpoint().unwrap();
        assert_eq!(cp.size, 5);
        let verifier = Verifier::parse(&log.current().signer().verifier_key()).unwrap();
        let opened = Checkpoint::open(&cp.note, &verifier).unwrap();
        assert_eq!((opened.size, opened.root), (5, cp.root));
        assert_eq!(
            log.current().record(3).unwrap().unwrap(),
            record(3).to_bytes()
        );
        assert_eq!(
            log.current().index_of(&format!("{:032x}", 4)).unwrap(),
            Some(4)
        );
        assert_eq!(log.current().index_of("nope").unwrap(), None);
        let (leaf, path) = log.current().inclusion_proof(2, 5).unwrap().unwrap();
        assert_eq!(leaf, merkle::leaf_hash(&record(2).to_bytes()));
        merkle::verify_inclusion(&leaf, 2, 5, &path, &cp.root).unwrap();
    }

    /// A second process (here a second open) on a directory a log is
    /// open in fails at once, naming the lock, and touches nothing: it
    /// used to replay the staging bundle the first was appending to, cut
    /// it and zero it, before redb refused its index.
    #[tokio::test]
    async fn a_directory_in_use_is_not_opened_again() {
        let (_dir, settings) = setup("in-use");
        let log = Log::open(&settings, metrics()).unwrap();
        for i in 0..10 {
            log.append(&record(i)).await.unwrap();
        }
        let staging = settings.directory.join("staging.0");
        let before = std::fs::read(&staging).unwrap();
        let Err(e) = Log::open(&settings, metrics()) else {
            panic!("opened twice");
        };
        let text = e.to_string();
        assert!(text.contains("in use by another process"), "{text}");
        assert!(!text.contains("can be deleted"), "{text}");
        assert_eq!(std::fs::read(&staging).unwrap(), before, "untouched");
        for i in 10..12 {
            log.append(&record(i)).await.unwrap();
        }
        drop(log);
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.latest().size, 12, "reopened once the first closed");
        assert_eq!(
            log.current().record(11).unwrap().unwrap(),
            record(11).to_bytes()
        );
    }

    /// An fsync of a hash tile a checkpoint would cover fails: no
    /// checkpoint is signed over it later either (after a failed fsync the
    /// kernel may have dropped its pages, and a second fsync succeeds over
    /// them), records are still appended, and a restart rebuilds the tile
    /// from the bundles and checkpoints everything.
    #[tokio::test]
    async fn a_failed_tile_fsync_stops_checkpoints_until_a_restart() {
        let (_dir, settings) = setup("unsyncable");
        let m = metrics();
        let log = Log::open(&settings, m.clone()).unwrap();
        for i in 0..256 {
            log.append(&record(i)).await.unwrap();
        }
        let tile = settings.directory.join("tile/0/000");
        crate::disk::failing::once(&tile);
        assert!(log.checkpoint().is_err(), "the fsync failed");
        let again = log.checkpoint().unwrap_err().to_string();
        assert!(again.contains("restart"), "{again}");
        assert!(log.latest().size < 256, "nothing signed over the tile");
        log.append(&record(256)).await.unwrap();
        // The lag grows with what is appended (disk audit, stop 69: it
        // stayed at the first failure's).
        assert!(log.checkpoint().is_err());
        assert_eq!(m.integration_lag.get(), 257 - log.latest().size as i64);
        drop(log);
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.latest().size, 257);
    }

    /// A full entry bundle left under its staging name below the last
    /// checkpoint (a seal that failed, or a stop before it ran) is sealed
    /// at the next start: `replay` starts at the checkpoint's bundle, and a
    /// static server of the directory lacked it.
    #[tokio::test]
    async fn a_full_bundle_left_under_its_staging_name_is_sealed_at_start() {
        let (_dir, settings) = setup("leftover");
        let log = Log::open(&settings, metrics()).unwrap();
        for i in 0..300 {
            log.append(&record(i)).await.unwrap();
        }
        log.checkpoint().unwrap();
        drop(log);
        let sealed = settings.directory.join("tile/entries/000");
        let staging = settings.directory.join("staging.0");
        let bundle = std::fs::read(&sealed).unwrap();
        std::fs::rename(&sealed, &staging).unwrap();
        let log = Log::open(&settings, metrics()).unwrap();
        assert!(!staging.exists(), "sealed");
        assert_eq!(std::fs::read(&sealed).unwrap(), bundle);
        assert_eq!(log.latest().size, 300);
        assert_eq!(
            log.current().record(7).unwrap().unwrap(),
            record(7).to_bytes()
        );
    }

    /// A log directory that cannot be made is named by its key, and its
    /// error said once (it was printed twice: once in the message and
    /// again as its source).
    #[test]
    fn a_log_directory_that_cannot_be_made_is_named_by_its_key() {
        let (dir, mut settings) = setup("unmakeable");
        std::fs::write(dir.0.join("file"), b"").unwrap();
        settings.directory = dir.0.join("file/log");
        let Err(e) = Log::open(&settings, metrics()) else {
            panic!("a log under a file");
        };
        // As `serve` prints it: the error and its sources.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        assert!(
            text.starts_with("transparency.directory: cannot ")
                && text.matches("Not a directory").count() == 1,
            "{text}"
        );
    }

    /// The log directory's entry in its parent is fsynced at every open,
    /// not only when this open made it: one made by an open (or a roll)
    /// that failed or stopped before that fsync is made durable by the
    /// next.
    #[tokio::test]
    async fn an_existing_log_directory_is_made_durable_in_its_parent() {
        let (_dir, settings) = setup("parent-sync");
        std::fs::create_dir_all(&settings.directory).unwrap();
        crate::disk::failing::once(settings.directory.parent().unwrap());
        let Err(e) = Log::open(&settings, metrics()) else {
            panic!("the parent was not fsynced");
        };
        assert!(e.to_string().contains("injected fsync failure"), "{e}");
        let log = Log::open(&settings, metrics()).unwrap();
        log.append(&record(0)).await.unwrap();
    }

    #[test]
    fn a_batch_reaches_every_waiting_request_whoever_stops_waiting() {
        let channels: Vec<_> = (0..4).map(|_| tokio::sync::oneshot::channel()).collect();
        let (replies, mut waiting): (Vec<_>, Vec<_>) = channels.into_iter().unzip();
        // The first request stopped waiting before the batch was written:
        // the second leads.
        drop(waiting.remove(0));
        deliver(
            replies
                .into_iter()
                .enumerate()
                .map(|(i, r)| (r, Ok(i as u64)))
                .collect(),
        );
        let mut leader = waiting.remove(0);
        let delivery = leader.try_recv().unwrap();
        assert_eq!(delivery.others.len(), 2, "the leader carries the rest");
        assert!(matches!(delivery.answer, Ok(1)));
        assert!(waiting.iter_mut().all(|w| w.try_recv().is_err()));
        // It is dropped unread (its request gave up after it arrived):
        // the others still get their own answers.
        drop(delivery);
        for (i, mut w) in waiting.into_iter().enumerate() {
            let d = w.try_recv().unwrap();
            assert!(matches!(d.answer, Ok(n) if n == i as u64 + 2));
            assert!(d.others.is_empty());
        }
    }

    #[tokio::test]
    async fn concurrent_appends_share_writes_and_stay_dense() {
        let (_dir, settings) = setup("group");
        let log = Log::open(&settings, metrics()).unwrap();
        let appends: Vec<_> = (0..50)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(&record(i)).await.unwrap().index })
            })
            .collect();
        let mut indexes = Vec::new();
        for a in appends {
            indexes.push(a.await.unwrap());
        }
        indexes.sort_unstable();
        assert_eq!(indexes, (0..50).collect::<Vec<_>>());
        assert_eq!(log.size(), 50);
        let cp = log.checkpoint().unwrap();
        assert_eq!(cp.size, 50);
        for i in 0..50 {
            let bytes = log.current().record(i).unwrap().unwrap();
            let (leaf, path) = log.current().inclusion_proof(i, 50).unwrap().unwrap();
            assert_eq!(leaf, merkle::leaf_hash(&bytes));
            merkle::verify_inclusion(&leaf, i, 50, &path, &cp.root).unwrap();
        }
        let staging = std::fs::read(settings.directory.join("staging.0")).unwrap();
        assert_eq!(crate::disk::complete_entries(&staging).0.len(), 50);
        let batches = log.batches();
        assert!(batches <= 5, "50 concurrent records took {batches} writes");
    }

    #[tokio::test]
    async fn a_request_dropped_while_it_waits_still_has_its_record_written() {
        let (_dir, settings) = setup("cancel");
        let log = Log::open(&settings, metrics()).unwrap();
        // Dropped right after handing its record over, as hyper drops a
        // request whose client went away.
        let first = record(0);
        tokio::select! {
            biased;
            _ = log.append(&first) => {}
            _ = std::future::ready(()) => {}
        }
        let next = tokio::time::timeout(Duration::from_secs(5), log.append(&record(1)))
            .await
            .expect("a dropped request must not stall later appends")
            .unwrap();
        assert_eq!(next.index, 1);
        assert_eq!(log.size(), 2, "the dropped request's record is written too");
        assert_eq!(
            log.current().record(0).unwrap().unwrap(),
            record(0).to_bytes()
        );
    }

    #[tokio::test]
    async fn full_bundles_and_tiles_are_named_as_the_spec_says_and_memory_stays_flat() {
        let (_dir, mut settings) = setup("tiles");
        settings.max_records = u64::MAX;
        let log = Log::open(&settings, metrics()).unwrap();
        for chunk in 0..3u64 {
            let appends: Vec<_> = (chunk * 200..chunk * 200 + 200)
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move { log.append(&record(i)).await.unwrap() })
                })
                .collect();
            for a in appends {
                a.await.unwrap();
            }
            if chunk == 0 {
                assert_eq!(log.checkpoint().unwrap().size, 200);
            }
        }
        let dir = &settings.directory;
        for path in ["tile/0/000.p/200", "tile/entries/000.p/200"] {
            assert!(dir.join(path).is_file(), "{path} is missing");
        }
        let cp = log.checkpoint().unwrap();
        assert_eq!(cp.size, 600);
        // Tiles 0 and 1 are full now: the partials of tile 0 are gone
        // (tile 1 never had any), the full tiles serve their prefixes.
        for path in ["tile/0/000.p", "tile/entries/000.p"] {
            assert!(!dir.join(path).exists(), "{path} is left");
        }
        let old = Tile {
            level: Some(0),
            index: 0,
            width: 200,
        };
        assert_eq!(
            log.current().tile(old).unwrap().unwrap(),
            std::fs::read(dir.join("tile/0/000")).unwrap()[..200 * 32]
        );
        for path in [
            "tile/entries/000",
            "tile/entries/001",
            "tile/0/000",
            "tile/0/001",
            "tile/0/002.p/88",
            "tile/entries/002.p/88",
            "tile/1/000.p/2",
            "staging.2",
        ] {
            assert!(dir.join(path).is_file(), "{path} is missing");
        }
        let bundle = std::fs::read(dir.join("tile/entries/001")).unwrap();
        let entries = crate::tiles::entries(&bundle).unwrap();
        assert_eq!(entries.len(), 256);
        assert_eq!(entries[0], record(256).to_bytes().as_slice());
        let mut tree = merkle::Tree::new();
        for i in 0..600 {
            tree.push(merkle::leaf_hash(
                &log.current().record(i).unwrap().unwrap(),
            ));
        }
        assert_eq!(tree.root(), cp.root);
        let level0 = std::fs::read(dir.join("tile/0/001")).unwrap();
        assert_eq!(&level0[..32], &tree.leaf(256).unwrap()[..]);
        assert!(log.memory_bytes() < 64 * 1024, "{}", log.memory_bytes());
        // Every id is found, from memory before the checkpoint moved them
        // and from the on-disk index after.
        for i in [0u64, 255, 256, 599] {
            assert_eq!(
                log.current().index_of(&format!("{i:032x}")).unwrap(),
                Some(i)
            );
        }

        // Partial files are written without an fsync: one lost to a power
        // cut (cut short, or zeros) is not what the log serves, and the
        // next start writes it again.
        let partials = ["tile/0/002.p/88", "tile/1/000.p/2"];
        let good: Vec<Vec<u8>> = partials
            .iter()
            .map(|p| std::fs::read(dir.join(p)).unwrap())
            .collect();
        std::fs::write(dir.join(partials[0]), b"").unwrap();
        std::fs::write(dir.join(partials[1]), [0u8; 64]).unwrap();
        let tile = |level: u8, index: u64, width: u16| Tile {
            level: Some(level),
            index,
            width,
        };
        let served = [tile(0, 2, 88), tile(1, 0, 2)].map(|t| log.current().tile(t).unwrap());
        assert_eq!(served, [Some(good[0].clone()), Some(good[1].clone())]);
        // An older checkpoint's partial: a prefix of the full tile.
        assert_eq!(
            log.current().tile(tile(0, 1, 7)).unwrap(),
            Some(std::fs::read(dir.join("tile/0/001")).unwrap()[..7 * 32].to_vec())
        );
        drop(log);
        let log = Log::open(&settings, metrics()).unwrap();
        for (path, bytes) in partials.iter().zip(&good) {
            assert_eq!(&std::fs::read(dir.join(path)).unwrap(), bytes, "{path}");
        }

        // So are an earlier checkpoint's: tlog-tiles has a log serve the
        // partial tiles of every checkpoint it produced, and a static file
        // server has only the files.
        for i in 600..620 {
            log.append(&record(i)).await.unwrap();
        }
        assert_eq!(log.checkpoint().unwrap().size, 620);
        let earlier = ["tile/0/002.p/88", "tile/entries/002.p/88"];
        let good: Vec<Vec<u8>> = earlier
            .iter()
            .map(|p| std::fs::read(dir.join(p)).unwrap())
            .collect();
        assert_eq!(good[0].len(), 88 * 32);
        std::fs::write(dir.join(earlier[0]), [0u8; 88 * 32]).unwrap();
        std::fs::remove_file(dir.join(earlier[1])).unwrap();
        drop(log);
        let log = Log::open(&settings, metrics()).unwrap();
        for (path, bytes) in earlier.iter().zip(&good) {
            assert_eq!(&std::fs::read(dir.join(path)).unwrap(), bytes, "{path}");
        }
        let bundle = std::fs::read(dir.join(earlier[1])).unwrap();
        assert_eq!(crate::tiles::entries(&bundle).unwrap().len(), 88);
        drop(log);
    }

    #[tokio::test]
    async fn a_restart_continues_the_same_tree() {
        let (_dir, settings) = setup("restart");
        let first = {
            let log = Log::open(&settings, metrics()).unwrap();
            for i in 0..7 {
                log.append(&record(i)).await.unwrap();
            }
            log.checkpoint().unwrap()
        };
        let reopened = metrics();
        let log = Log::open(&settings, reopened.clone()).unwrap();
        assert_eq!(log.size(), 7);
        // The checkpoint it serves, in its gauge from the start (no new
        // checkpoint comes while nothing is appended).
        log.checkpoint().unwrap();
        assert_eq!(reopened.checkpoint_size.get(), 7);
        for i in 7..12 {
            assert_eq!(log.append(&record(i)).await.unwrap().index, i);
        }
        let second = log.checkpoint().unwrap();
        let proof = log.consistency_proof(7, 12).unwrap().unwrap();
        merkle::verify_consistency(7, 12, &first.root, &second.root, &proof).unwrap();
        assert_eq!(
            log.current().index_of(&format!("{:032x}", 3)).unwrap(),
            Some(3)
        );
    }

    #[tokio::test]
    async fn records_after_the_last_checkpoint_survive_a_crash() {
        let (_dir, settings) = setup("crash");
        {
            let log = Log::open(&settings, metrics()).unwrap();
            log.append(&record(0)).await.unwrap();
            log.checkpoint().unwrap();
            log.append(&record(1)).await.unwrap();
            // Dropped without a checkpoint: like kill -9 after write(2).
        }
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.size(), 2);
        assert_eq!(log.latest().size, 2, "recovered records are checkpointed");
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off() {
        let (_dir, settings) = setup("torn");
        {
            let log = Log::open(&settings, metrics()).unwrap();
            log.append(&record(0)).await.unwrap();
            log.append(&record(1)).await.unwrap();
            log.checkpoint().unwrap();
        }
        let path = settings.directory.join("staging.0");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"\x01\x00{\"v\":1,\"request_id\":\"to")
            .unwrap();
        drop(f);
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.size(), 2);
        assert_eq!(log.append(&record(2)).await.unwrap().index, 2);
        drop(log);
        let bytes = std::fs::read(&path).unwrap();
        let (entries, _) = crate::disk::complete_entries(&bytes);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2], record(2).to_bytes().as_slice());
    }

    /// A record after the checkpoint altered on disk (one byte flipped, no
    /// zero byte in it: not a torn write) stops the start: it and the
    /// records after it may have been acknowledged, and were cut, their
    /// indexes handed out again (lifecycle audit, stop 63). A torn one —
    /// its unwritten part zeros — is still cut.
    #[tokio::test]
    async fn a_damaged_record_after_the_checkpoint_stops_the_start() {
        use std::os::unix::fs::FileExt;
        let (_dir, settings) = setup("damaged");
        {
            let log = Log::open(&settings, metrics()).unwrap();
            log.append(&record(0)).await.unwrap();
            log.checkpoint().unwrap();
            log.append(&record(1)).await.unwrap();
            log.append(&record(2)).await.unwrap();
        }
        let path = settings.directory.join("staging.0");
        let bytes = std::fs::read(&path).unwrap();
        let (entries, _) = crate::disk::complete_entries(&bytes);
        assert_eq!(entries.len(), 3);
        // Record 1's opening brace, flipped.
        let at = 2 + entries[0].len() + 2;
        assert_eq!(bytes[at], b'{');
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"[", at as u64).unwrap();
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(
            e.contains("entry 1 (leaf 1, at byte")
                && e.contains("is damaged")
                && e.contains("1 entries after it"),
            "{e}"
        );
        let after = std::fs::read(&path).unwrap();
        let (entries, _) = crate::disk::complete_entries(&after);
        assert_eq!(entries.len(), 3, "nothing was cut");
        // Torn instead: its last bytes never written (zeros).
        let (len, n) = (entries[1].len(), entries[1].len() / 2);
        f.write_all_at(b"{", at as u64).unwrap();
        f.write_all_at(&vec![0; len - n], (at + n) as u64).unwrap();
        drop(f);
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.size(), 1, "the torn record and what follows it are cut");
    }

    /// A record looked up by request id that this version cannot read (a
    /// newer version's, in a fleet rolling out or after a rollback) is an
    /// error, not "no such record": a verifier told 404 calls a genuine
    /// receipt INVALID (upgrade audit, stop 68).
    /// A log whose directory's path comes to name another directory (a
    /// volume mounted over it, here the directory moved aside and a new
    /// one made in its place) writes nothing more: no record is
    /// acknowledged, no checkpoint signed, nothing lands in the new one
    /// (disk audit, stop 69: the running log's checkpoint overwrote the
    /// volume's, whose receipts all became INVALID).
    #[tokio::test]
    async fn a_log_whose_directory_is_replaced_writes_nothing_more() {
        let (_dir, settings) = setup("replaced");
        let log = Log::open(&settings, metrics()).unwrap();
        log.append(&record(0)).await.unwrap();
        log.checkpoint().unwrap();
        let aside = settings.directory.with_extension("aside");
        std::fs::rename(&settings.directory, &aside).unwrap();
        std::fs::create_dir(&settings.directory).unwrap();
        // Found by the checkpoint tick, with no upload: the next one is
        // refused before it is forwarded (verification, stop 69: it was
        // stored, then 503).
        assert!(log.checkpoint().is_err());
        assert!(log.failing(), "uploads refused before they are forwarded");
        let refused = log.append(&record(1)).await.unwrap_err().to_string();
        assert!(refused.contains("restart"), "{refused}");
        assert!(log.append(&record(2)).await.is_err(), "stays refused");
        assert!(log.needs_restart().is_some(), "the replica is not ready");
        assert_eq!(
            std::fs::read_dir(&settings.directory).unwrap().count(),
            0,
            "nothing written into the directory now at its path"
        );
        drop(log);
        let _ = std::fs::remove_dir_all(&aside);
    }

    #[tokio::test]
    async fn a_record_this_version_cannot_read_is_not_taken_for_none() {
        use std::os::unix::fs::FileExt;
        let (_dir, settings) = setup("unreadable");
        {
            let log = Log::open(&settings, metrics()).unwrap();
            let log = Arc::new(log);
            let mut appending = tokio::task::JoinSet::new();
            for i in 0..257 {
                let log = log.clone();
                appending.spawn(async move { log.append(&record(i)).await.map(|_| ()) });
            }
            while let Some(appended) = appending.join_next().await {
                appended.unwrap().unwrap();
            }
            log.checkpoint().unwrap();
        }
        // Record 1 with a field this version does not know, as a newer
        // version's (same length), in a
        // full bundle (whose tree a start does not hash again).
        let path = settings.directory.join("tile/entries/000");
        let bytes = std::fs::read(&path).unwrap();
        let written = record(1).to_bytes();
        let at = bytes
            .windows(written.len())
            .position(|w| w == written.as_slice())
            .unwrap();
        let newer =
            String::from_utf8(written.clone())
                .unwrap()
                .replacen("\"time\":", "\"tyme\":", 1);
        assert_eq!(newer.len(), written.len());
        assert!(Record::from_bytes(newer.as_bytes()).is_err());
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(newer.as_bytes(), at as u64).unwrap();
        drop(f);
        let log = Log::open(&settings, metrics()).unwrap();
        let gen = log.current();
        assert_eq!(gen.index_of(&format!("{:032x}", 0)).unwrap(), Some(0));
        let e = gen
            .index_of(&format!("{:032x}", 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a record this version cannot read"), "{e}");
        assert_eq!(gen.index_of(&format!("{:032x}", 999)).unwrap(), None);
    }

    /// A record after the checkpoint that is complete and valid JSON, but
    /// not a record this version reads (one written by a newer version,
    /// before a rollback), stops the start: cut as a torn tail, it and the
    /// acknowledged records after it would be lost and their indexes
    /// handed out again.
    /// So does one altered on disk that is still JSON (a value's letter
    /// changed), said as damage with its byte, not as a newer version's
    /// (README audit, stop 64).
    #[tokio::test]
    async fn a_record_this_version_cannot_read_stops_the_start() {
        use std::os::unix::fs::FileExt;
        let written = String::from_utf8(record(2).to_bytes()).unwrap();
        assert!(written.starts_with("{\"v\":1,"), "{written}");
        let newer = written.replacen("{\"v\":1,", "{\"v\":2,\"shiny\":true,", 1);
        let altered = written.replacen("\"stored\"", "\"stXred\"", 1);
        assert_ne!(altered, written);
        for (entry, says) in [
            (newer, "is a record of format version 2, which this version (format 1) cannot read; nothing was cut"),
            (altered, "is damaged: JSON, written whole, but not a record (unknown variant `stXred`"),
        ] {
            let (_dir, settings) = setup("newer");
            {
                let log = Log::open(&settings, metrics()).unwrap();
                log.append(&record(0)).await.unwrap();
                log.checkpoint().unwrap();
                log.append(&record(1)).await.unwrap();
            }
            let path = settings.directory.join("staging.0");
            let bytes = std::fs::read(&path).unwrap();
            let (_, end) = crate::disk::complete_entries(&bytes);
            let mut tail = Vec::new();
            for entry in [entry.as_bytes(), record(3).to_bytes().as_slice()] {
                tail.extend((entry.len() as u16).to_be_bytes());
                tail.extend_from_slice(entry);
            }
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&tail, end as u64).unwrap();
            drop(f);
            let e = Log::open(&settings, metrics()).err().unwrap().to_string();
            assert!(
                e.contains(&format!("entry 2 (leaf 2, at byte {end}) {says}")),
                "{e}"
            );
            // Nothing was cut.
            let bytes = std::fs::read(&path).unwrap();
            let (entries, _) = crate::disk::complete_entries(&bytes);
            assert_eq!(entries.len(), 4);
        }
    }

    #[tokio::test]
    async fn altered_or_missing_committed_records_or_tiles_refuse_to_open() {
        let (_dir, mut settings) = setup("tamper");
        settings.max_records = u64::MAX;
        {
            let log = Log::open(&settings, metrics()).unwrap();
            for i in 0..300 {
                log.append(&record(i)).await.unwrap();
            }
            log.checkpoint().unwrap();
        }
        let staging = settings.directory.join("staging.1");
        let original = std::fs::read(&staging).unwrap();
        let edit = |path: &Path, bytes: &[u8]| std::fs::write(path, bytes).unwrap();
        // One changed byte in a committed record of the right edge.
        let mut changed = original.clone();
        let at = changed.windows(6).position(|w| w == b"zurich").unwrap();
        changed[at + 5] = b'k';
        edit(&staging, &changed);
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("altered"), "{e}");
        // A committed record missing.
        let short = crate::disk::bundle_prefix(&original, 10).unwrap().to_vec();
        edit(&staging, &short);
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("missing"), "{e}");
        edit(&staging, &original);
        // A full level-0 tile under the right edge, edited.
        let tile = settings.directory.join("tile/0/000");
        let good = std::fs::read(&tile).unwrap();
        let mut bad = good.clone();
        bad[100] ^= 1;
        edit(&tile, &bad);
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("altered"), "{e}");
        edit(&tile, &good);
        // Back to the original: opens again.
        assert_eq!(Log::open(&settings, metrics()).unwrap().size(), 300);
    }

    /// A crash between filling a bundle and making its cut and rename
    /// durable: the next start finishes both.
    #[tokio::test]
    async fn a_full_bundle_caught_mid_seal_is_finished_at_start() {
        for renamed in [false, true] {
            let (_dir, mut settings) = setup(if renamed { "seal-r" } else { "seal" });
            settings.max_records = u64::MAX;
            {
                let log = Log::open(&settings, metrics()).unwrap();
                for i in 0..200 {
                    log.append(&record(i)).await.unwrap();
                }
                log.checkpoint().unwrap();
                for i in 200..256 {
                    log.append(&record(i)).await.unwrap();
                }
            }
            let dir = &settings.directory;
            let full = dir.join("tile/entries/000");
            let mut bytes = std::fs::read(&full).unwrap();
            bytes.extend_from_slice(&[0; 4096]);
            std::fs::remove_file(dir.join("staging.1")).unwrap();
            if renamed {
                std::fs::write(&full, &bytes).unwrap();
            } else {
                std::fs::remove_file(&full).unwrap();
                std::fs::write(dir.join("staging.0"), &bytes).unwrap();
            }
            let log = Log::open(&settings, metrics()).unwrap();
            assert_eq!(log.size(), 256);
            let sealed = std::fs::read(&full).unwrap();
            assert_eq!(crate::tiles::entries(&sealed).unwrap().len(), 256);
            assert_eq!(log.append(&record(256)).await.unwrap().index, 256);
            let cp = log.checkpoint().unwrap();
            let mut tree = merkle::Tree::new();
            for i in 0..257 {
                tree.push(merkle::leaf_hash(&record(i).to_bytes()));
            }
            assert_eq!(cp.root, tree.root());
        }
    }

    /// A failed index update leaves its ids in memory and opens the index
    /// again, and the next update takes them: redb refuses every
    /// transaction after an I/O error until it is reopened, so one
    /// disk-full episode left the index stuck until a restart (lifecycle
    /// audit, stop 63).
    #[tokio::test]
    async fn a_failed_index_update_opens_the_index_again() {
        let (_dir, settings) = setup("index-again");
        let log = Directory::open(&settings, metrics()).unwrap();
        let append = async |i: u64| {
            let bytes = record(i).to_bytes();
            let id = id_key(&record(i).request_id);
            log.append(&bytes, merkle::leaf_hash(&bytes), id)
                .await
                .unwrap()
        };
        append(0).await;
        log.checkpoint().unwrap();
        log.core.index.fail_next.store(true, Ordering::Relaxed);
        append(1).await;
        log.checkpoint().unwrap();
        assert_eq!(log.core.index.reopened.load(Ordering::Relaxed), 1);
        let id1 = id_key(&record(1).request_id);
        assert!(
            lock(&log.core.state).recent.contains_key(&id1),
            "kept in memory"
        );
        assert_eq!(log.indexes_of(id1).unwrap(), [1]);
        // Without a new record too (disk audit, stop 69: not until the
        // next upload).
        log.checkpoint().unwrap();
        assert!(
            lock(&log.core.state).recent.is_empty(),
            "indexed at the next checkpoint"
        );
        append(2).await;
        log.checkpoint().unwrap();
        assert!(lock(&log.core.state).recent.is_empty(), "all indexed");
        for i in 0..3 {
            assert_eq!(log.indexes_of(id_key(&record(i).request_id)).unwrap(), [i]);
        }
    }

    /// An entry bundle the records reach that is gone is an error (the
    /// log answers 503, `verify` NOT CHECKED), not "no such record":
    /// its records were committed (lifecycle audit, stop 63).
    #[tokio::test]
    async fn a_missing_committed_bundle_is_an_error_not_no_record() {
        let (_dir, mut settings) = setup("bundle-gone");
        settings.max_records = u64::MAX;
        let log = Directory::open(&settings, metrics()).unwrap();
        for i in 0..258 {
            let bytes = record(i).to_bytes();
            let id = id_key(&record(i).request_id);
            log.append(&bytes, merkle::leaf_hash(&bytes), id)
                .await
                .unwrap();
        }
        log.checkpoint().unwrap();
        let full = settings.directory.join("tile/entries/000");
        assert!(full.is_file());
        assert_eq!(log.record(3).unwrap().unwrap(), record(3).to_bytes());
        std::fs::remove_file(&full).unwrap();
        let e = log.record(3).unwrap_err().to_string();
        assert!(e.contains("entry bundle 0 is missing"), "{e}");
        let tile = Tile {
            level: None,
            index: 0,
            width: WIDTH as u16,
        };
        assert!(log.any_tile(tile).is_err());
        // Cut short: an error too, for the record and for the bundle.
        std::fs::write(&full, b"\x00\x05short").unwrap();
        assert!(log.record(3).is_err());
        let e = log.any_tile(tile).unwrap_err().to_string();
        assert!(e.contains("holds fewer than the 256 records"), "{e}");
        std::fs::remove_file(&full).unwrap();
        // Past the records written: none.
        assert_eq!(log.record(258).unwrap(), None);
        assert_eq!(log.record(257).unwrap().unwrap(), record(257).to_bytes());
        // A hash tile the records reach, gone: an error too (review, stop
        // 63: a proof without it was "not found").
        let hashes = Tile {
            level: Some(0),
            index: 0,
            width: WIDTH as u16,
        };
        assert!(log.any_tile(hashes).unwrap().is_some());
        std::fs::remove_file(settings.directory.join("tile/0/000")).unwrap();
        let e = log.any_tile(hashes).unwrap_err().to_string();
        assert!(
            e.contains("is missing or short, though the records reach it"),
            "{e}"
        );
    }

    /// The writer answers the batch that fills a bundle without sealing
    /// it: the helper cuts and renames it later (here: held back), and
    /// meanwhile it is served from its staging file; the next checkpoint
    /// finds it sealed.
    #[tokio::test]
    async fn a_full_bundle_is_served_while_its_seal_waits() {
        let (_dir, mut settings) = setup("unsealed");
        settings.max_records = u64::MAX;
        let log = Directory::open(&settings, metrics()).unwrap();
        // Another thread holds the seal back until told.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (holding, held) = std::sync::mpsc::channel::<()>();
        let core = log.core.clone();
        let holder = std::thread::spawn(move || {
            let _seal = lock(&core.sealing);
            holding.send(()).unwrap();
            let _ = released.recv();
        });
        held.recv().unwrap();
        for i in 0..260 {
            let bytes = record(i).to_bytes();
            let id = id_key(&record(i).request_id);
            let index = log
                .append(&bytes, merkle::leaf_hash(&bytes), id)
                .await
                .unwrap();
            assert_eq!(index, i);
        }
        let dir = &settings.directory;
        let full = dir.join("tile/entries/000");
        assert!(!full.exists() && dir.join("staging.0").is_file());
        assert!(dir.join("staging.1").is_file());
        assert_eq!(log.record(255).unwrap().unwrap(), record(255).to_bytes());
        let tile = Tile {
            level: None,
            index: 0,
            width: WIDTH as u16,
        };
        let served = log.any_tile(tile).unwrap().unwrap();
        let entries = crate::tiles::entries(&served).unwrap();
        assert_eq!(entries.len(), 256);
        assert_eq!(entries[17], record(17).to_bytes().as_slice());
        release.send(()).unwrap();
        holder.join().unwrap();
        let cp = log.checkpoint().unwrap();
        assert_eq!(cp.size, 260);
        assert!(!dir.join("staging.0").exists());
        assert_eq!(std::fs::read(&full).unwrap(), served);
        assert_eq!(log.record(256).unwrap().unwrap(), record(256).to_bytes());
    }

    /// A bundle whose seal fails keeps its partial bundles (a static server
    /// of the directory then still has the checkpoint's `.p/` file), and
    /// loses them once a later seal puts it under its full name.
    #[tokio::test]
    async fn partial_bundles_stay_until_their_full_bundle_is_sealed() {
        let (_dir, mut settings) = setup("seal-fails");
        settings.max_records = u64::MAX;
        let log = Directory::open(&settings, metrics()).unwrap();
        let append = async |range: std::ops::Range<u64>| {
            for i in range {
                let bytes = record(i).to_bytes();
                let id = id_key(&record(i).request_id);
                log.append(&bytes, merkle::leaf_hash(&bytes), id)
                    .await
                    .unwrap();
            }
        };
        append(0..200).await;
        assert_eq!(log.checkpoint().unwrap().size, 200);
        let dir = &settings.directory;
        let (full, partial) = (
            dir.join("tile/entries/000"),
            dir.join("tile/entries/000.p/200"),
        );
        assert!(partial.is_file());
        // A directory in the way: the rename of the full bundle fails.
        std::fs::create_dir_all(full.join("blocker")).unwrap();
        append(200..300).await;
        assert_eq!(log.checkpoint().unwrap().size, 300);
        assert!(dir.join("staging.0").is_file());
        assert!(partial.is_file(), "the only copy a static server has");
        std::fs::remove_dir_all(&full).unwrap();
        append(300..301).await;
        assert_eq!(log.checkpoint().unwrap().size, 301);
        assert!(full.is_file());
        assert!(!partial.exists());
        assert!(!dir.join("staging.0").exists());
    }

    /// A checkpoint that fails after writing its partial tiles (its
    /// checkpoint file not written: a full disk, say) leaves them for
    /// tiles the last published checkpoint never reached; the next
    /// checkpoint that is written deletes the partials of every tile full
    /// at its size since the last published one, not only of the tile that
    /// one left unfinished (disk audit: they stayed beside the full tiles).
    #[tokio::test]
    async fn partials_of_failed_checkpoints_go_once_their_tiles_are_full() {
        let (_dir, mut settings) = setup("failed-checkpoints");
        settings.max_records = u64::MAX;
        let log = Arc::new(Directory::open(&settings, metrics()).unwrap());
        // Concurrent appends, so they share fsyncs.
        let append = async |range: std::ops::Range<u64>| {
            let appends: Vec<_> = range
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let bytes = record(i).to_bytes();
                        let id = id_key(&record(i).request_id);
                        log.append(&bytes, merkle::leaf_hash(&bytes), id)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            for a in appends {
                a.await.unwrap();
            }
        };
        let dir = settings.directory.clone();
        // A directory in the way of the checkpoint's temporary file: its
        // write fails, as it would on a full disk, after the partials.
        let blocker = dir.join(".checkpoint.tmp");
        let fail_at = async |range: std::ops::Range<u64>| {
            std::fs::create_dir_all(blocker.join("blocker")).unwrap();
            let size = range.end;
            append(range).await;
            assert!(log.checkpoint().is_err(), "the checkpoint at {size}");
            std::fs::remove_dir_all(&blocker).unwrap();
        };
        let partials = |level: &str, index: u64| dir.join(format!("tile/{level}/{index:03}.p"));
        let left = |indexes: std::ops::Range<u64>| {
            let mut left = Vec::new();
            for index in indexes {
                for level in ["0", "entries"] {
                    if partials(level, index).exists() {
                        left.push(format!("tile/{level}/{index:03}.p"));
                    }
                }
            }
            left
        };

        append(0..100).await;
        assert_eq!(log.checkpoint().unwrap().size, 100);
        // Tiles 1 and 2 get partials no published checkpoint had.
        fail_at(100..300).await;
        fail_at(300..600).await;
        for path in [
            "tile/0/001.p/44",
            "tile/entries/001.p/44",
            "tile/0/002.p/88",
        ] {
            assert!(dir.join(path).is_file(), "{path} was not written");
        }
        append(600..1100).await;
        assert_eq!(log.checkpoint().unwrap().size, 1100);
        assert_eq!(left(0..4), Vec::<String>::new(), "beside full tiles");
        for path in ["tile/0/004.p/76", "tile/entries/004.p/76", "tile/1/000.p/4"] {
            assert!(dir.join(path).is_file(), "{path} is missing");
        }

        // From a checkpoint at a tile's end (no partial of its own there).
        append(1100..1280).await;
        assert_eq!(log.checkpoint().unwrap().size, 1280);
        fail_at(1280..1300).await;
        assert!(dir.join("tile/0/005.p/20").is_file());
        append(1300..1600).await;
        assert_eq!(log.checkpoint().unwrap().size, 1600);
        assert_eq!(left(0..6), Vec::<String>::new(), "beside full tiles");
        assert!(dir.join("tile/0/006.p/64").is_file());

        // The tree the partials came from is still whole.
        drop(log);
        let log = Directory::open(&settings, metrics()).unwrap();
        assert_eq!(log.checkpoint().unwrap().size, 1600);
    }

    /// A log of the one-file format (`records.log`) is converted to tiles
    /// at start, against its checkpoint; an altered one is refused.
    #[tokio::test]
    async fn a_log_of_the_one_file_format_is_converted_to_tiles() {
        let (_dir, mut settings) = setup("legacy");
        settings.max_records = u64::MAX;
        let dir = settings.directory.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let pkcs8 = std::fs::read(&settings.signing_key).unwrap();
        let signer = Signer::from_pkcs8(&settings.origin, &pkcs8).unwrap();
        let mut lines = Vec::new();
        let mut tree = merkle::Tree::new();
        for i in 0..300 {
            let bytes = record(i).to_bytes();
            tree.push(merkle::leaf_hash(&bytes));
            lines.extend_from_slice(&bytes);
            lines.push(b'\n');
        }
        let note = Checkpoint {
            origin: settings.origin.clone(),
            size: 280,
            root: tree.root_at(280).unwrap(),
            extensions: Vec::new(),
        }
        .sign(&signer)
        .unwrap();
        std::fs::write(dir.join(CHECKPOINT), &note).unwrap();
        // An altered committed record: refused, nothing converted.
        let text = String::from_utf8(lines.clone()).unwrap();
        std::fs::write(
            dir.join(LEGACY_RECORDS),
            text.replacen("zurich", "zurick", 1),
        )
        .unwrap();
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("altered"), "{e}");
        assert!(dir.join(LEGACY_RECORDS).exists());
        // The real one, with a torn last line after the checkpoint.
        let mut torn = lines.clone();
        torn.extend_from_slice(b"{\"v\":1,\"requ");
        std::fs::write(dir.join(LEGACY_RECORDS), &torn).unwrap();
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.size(), 300);
        assert!(!dir.join(LEGACY_RECORDS).exists());
        assert_eq!(
            std::fs::read(dir.join("records.log.imported")).unwrap(),
            torn
        );
        let cp = log.checkpoint().unwrap();
        assert_eq!(cp.root, tree.root());
        assert_eq!(
            log.consistency_proof(280, 300).unwrap().unwrap(),
            tree.consistency_proof(280, 300).unwrap()
        );
        assert_eq!(
            log.current().record(290).unwrap().unwrap(),
            record(290).to_bytes()
        );
        assert_eq!(
            log.current().index_of(&format!("{:032x}", 7)).unwrap(),
            Some(7)
        );
        assert_eq!(log.append(&record(300)).await.unwrap().index, 300);
        log.checkpoint().unwrap();
        drop(log);

        // An older version started on the converted log (a downgrade)
        // leaves an empty records.log: the next start refuses it and
        // changes nothing — converting it again removed the tiles, and
        // record 300 with them (upgrade audit, stop 68).
        let listing = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        std::fs::write(dir.join(LEGACY_RECORDS), b"").unwrap();
        let before = listing(&dir);
        let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
        for e in [
            Log::open(&settings, metrics()).err().unwrap().to_string(),
            stored_checkpoint(&dir, &verifier, &settings.origin)
                .unwrap_err()
                .to_string(),
        ] {
            assert!(e.contains("the log was converted to tiles already"), "{e}");
            assert!(e.contains("move it aside"), "{e}");
        }
        assert_eq!(listing(&dir), before);
        assert!(dir.join("tile").is_dir());
        std::fs::remove_file(dir.join(LEGACY_RECORDS)).unwrap();
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.size(), 301);
        assert_eq!(
            log.current().record(300).unwrap().unwrap(),
            record(300).to_bytes()
        );
        drop(log);

        // A log that never had the one-file format, with a stray empty
        // records.log: refused as missing records, with the hint, and
        // nothing removed.
        std::fs::remove_file(dir.join("records.log.imported")).unwrap();
        std::fs::write(dir.join(LEGACY_RECORDS), b"").unwrap();
        let before = listing(&dir);
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("committed records are missing"), "{e}");
        assert!(e.contains("the directory also holds tiles"), "{e}");
        assert_eq!(listing(&dir), before);
        std::fs::remove_file(dir.join(LEGACY_RECORDS)).unwrap();
        assert_eq!(Log::open(&settings, metrics()).unwrap().size(), 301);
    }

    #[tokio::test]
    async fn cosignatures_are_served_and_survive_a_restart_but_never_revive_an_old_checkpoint() {
        use base64::Engine as _;
        let (_dir, settings) = setup("cosig");
        let line = format!(
            "— witness.example/w1 {}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 4 + 8 + 64])
        );
        {
            let log = Log::open(&settings, metrics()).unwrap();
            log.append(&record(0)).await.unwrap();
            let cp = log.checkpoint().unwrap();
            assert!(log
                .current()
                .add_cosignatures(cp.size, std::slice::from_ref(&line)));
            assert!(log.latest().note.ends_with(&format!("{line}\n")));
            assert!(!log
                .current()
                .add_cosignatures(cp.size + 1, std::slice::from_ref(&line)));
        }
        let log = Log::open(&settings, metrics()).unwrap();
        assert!(log.latest().note.contains(&line), "{}", log.latest().note);
        // A newer checkpoint drops them, and a late one for the old size
        // does not bring the old checkpoint back.
        log.append(&record(1)).await.unwrap();
        let newer = log.checkpoint().unwrap();
        assert!(!newer.note.contains(&line));
        assert!(!log
            .current()
            .add_cosignatures(1, std::slice::from_ref(&line)));
        assert_eq!(log.latest().size, 2);
    }

    /// Opens the log of `settings`, appends `records` records and
    /// checkpoints them, and closes it.
    async fn checkpointed(settings: &Transparency, records: u64) {
        let log = Log::open(settings, metrics()).unwrap();
        for i in 0..records {
            log.append(&record(i)).await.unwrap();
        }
        log.checkpoint().unwrap();
    }

    #[tokio::test]
    async fn a_lost_index_is_rebuilt_from_the_bundles() {
        let (_dir, settings) = setup("index");
        checkpointed(&settings, 40).await;
        std::fs::remove_file(settings.directory.join(INDEX)).unwrap();
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(
            log.current().index_of(&format!("{:032x}", 33)).unwrap(),
            Some(33)
        );
    }

    /// A process killed while redb made a new index (a roll makes one for
    /// the new generation) leaves the half-made file under its temporary
    /// name: the next open removes it and makes the index. (Made in place,
    /// it was an `index.redb` with a zeroed header, "not a redb database",
    /// and the log did not open until it was deleted by hand.)
    #[tokio::test]
    async fn an_index_half_made_by_a_killed_process_is_made_again() {
        let (_dir, settings) = setup("index-half");
        checkpointed(&settings, 40).await;
        let dir = &settings.directory;
        std::fs::remove_file(dir.join(INDEX)).unwrap();
        std::fs::write(dir.join(INDEX_NEW), vec![0u8; 73_728]).unwrap();
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(
            log.current().index_of(&format!("{:032x}", 33)).unwrap(),
            Some(33)
        );
        assert!(!dir.join(INDEX_NEW).exists());
        assert!(dir.join(INDEX).is_file());
    }

    /// The same with records of odd length in the bundle being written:
    /// its staging file's zero tail is then odd too, which the strict
    /// bundle reader refuses, and the rebuild read no entries from it and
    /// looped for good, with the start waiting on it. Also with more than a
    /// bundle, and a size that is not a bundle's multiple.
    #[tokio::test]
    async fn a_lost_index_is_rebuilt_when_the_last_bundle_is_odd() {
        let (_dir, settings) = setup("index-odd");
        {
            let log = Log::open(&settings, metrics()).unwrap();
            for i in 0..300 {
                let mut r = record(i);
                if i == 299 {
                    r.datacenter = Some("zurich1".into());
                }
                log.append(&r).await.unwrap();
            }
            log.checkpoint().unwrap();
        }
        std::fs::remove_file(settings.directory.join(INDEX)).unwrap();
        let opened = std::thread::spawn(move || {
            let log = Log::open(&settings, metrics()).unwrap();
            [33, 256, 299].map(|i| log.current().index_of(&format!("{i:032x}")).unwrap())
        });
        let started = Instant::now();
        while !opened.is_finished() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the log did not open within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(opened.join().unwrap(), [Some(33), Some(256), Some(299)]);
    }

    #[tokio::test]
    async fn another_key_cannot_take_over_a_log() {
        let (_dir, settings) = setup("key");
        drop(Log::open(&settings, metrics()).unwrap());
        std::fs::write(&settings.signing_key, Signer::generate_pkcs8().unwrap()).unwrap();
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("checkpoint"), "{e}");
    }

    #[tokio::test]
    async fn a_stray_generation_directory_stops_the_start() {
        let (_dir, settings) = setup("strays");
        drop(Log::open(&settings, metrics()).unwrap());
        let rolled = settings.directory.join("generations");
        std::fs::create_dir_all(rolled.join("3")).unwrap();
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("generation 2 is missing"), "{e}");
        std::fs::create_dir_all(rolled.join("02")).unwrap();
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("02: not a generation"), "{e}");
    }

    #[tokio::test]
    async fn a_full_generation_rolls_to_a_new_origin_and_stays_served() {
        let (_dir, mut settings) = setup("roll");
        settings.max_records = 300;
        let m = metrics();
        let log = Log::open(&settings, m.clone()).unwrap();
        for i in 0..290 {
            log.append(&record(i)).await.unwrap();
        }
        // 20 at once across the boundary: the first 10 fill the first
        // generation, the others roll it (once) and go to the second.
        let tasks: Vec<_> = (290..310)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(&record(i)).await.unwrap() })
            })
            .collect();
        let mut appended = Vec::new();
        for t in tasks {
            appended.push(t.await.unwrap());
        }
        let mut second: Vec<u64> = Vec::new();
        for (i, a) in (290..310).zip(&appended) {
            match a.generation.number() {
                1 => assert_eq!(a.index, i),
                2 => second.push(a.index),
                n => panic!("generation {n}"),
            }
        }
        second.sort_unstable();
        assert_eq!(second, (0..10).collect::<Vec<_>>());
        assert_eq!(appended[19].generation.origin(), "test.example/log/2");
        assert!(!log.failing());
        assert_eq!(m.write_errors.get(), 0);
        assert_eq!(m.appended.get(), 310);
        assert_eq!(m.generation.get(), 2);

        let check = |log: &Log| {
            let gens = log.generations();
            assert_eq!(gens.len(), 2);
            let (first, current) = (&gens[0], &gens[1]);
            // The sealed generation's last checkpoint covers all of it.
            let cp = Checkpoint::open(&first.latest().note, first.verifier()).unwrap();
            assert_eq!((cp.origin.as_str(), cp.size), ("test.example/log", 300));
            assert_eq!(first.index_of(&format!("{:032x}", 299)).unwrap(), Some(299));
            assert!(first.inclusion_proof(299, 300).unwrap().is_some());
            assert_eq!(current.origin(), "test.example/log/2");
            assert!(current.verifier().name() == "test.example/log/2");
            assert_eq!(current.size(), 10);
            assert_eq!(log.current().number(), 2);
            // Sealed: served from disk, without threads of its own.
            assert_eq!((first.threads(), current.threads()), (0, 2));
            assert!(!first.latest().note.is_empty());
            assert!(log.generation(1).is_some() && log.generation(3).is_none());
            // Same key, another name.
            assert_ne!(
                first.signer().verifier_key(),
                current.signer().verifier_key()
            );
        };
        log.checkpoint().unwrap();
        check(&log);
        let id = format!("{:032x}", 305);
        let index = log.current().index_of(&id).unwrap().unwrap();
        // As a shutdown does: the sealed generation's repair ends first.
        log.settle_repairs().await;
        drop((log, appended));
        let log = Log::open(&settings, metrics()).unwrap();
        check(&log);
        assert_eq!(log.current().index_of(&id).unwrap(), Some(index));
        assert_eq!(log.append(&record(310)).await.unwrap().index, 10);
    }
}
