//! The transparency log: decision records as leaves of an append-only
//! RFC 6962 Merkle tree, kept on disk and checkpointed with signed notes.
//!
//! On disk, a directory holds two files:
//!
//! * `records.log` — one record (JSON, no newlines inside) per line, only
//!   ever appended. Leaf `i` is line `i` without its newline. Appends are
//!   group-committed: the first request to append starts a batch, yields
//!   once so the records of other ready requests join it, and writes the
//!   whole batch with one `write(2)` and one `fdatasync(2)` on a blocking
//!   thread (requests arriving meanwhile form the next batch); every
//!   request in the batch waits for both before it is answered. Neither a
//!   killed process nor a power loss can therefore lose a record whose
//!   receipt went out, or give its index to another record; a power loss
//!   can leave a torn last line of a batch nobody was told about.
//! * `checkpoint` — the latest signed checkpoint, replaced atomically
//!   (write, fsync, rename, fsync the directory). `records.log` is fsynced
//!   before a checkpoint covering it is written, so every checkpoint ever
//!   issued covers records that are on disk.
//!
//! Opening the log replays `records.log`: it rebuilds the tree, cuts off a
//! torn or unreadable tail — but only beyond the last checkpoint — and checks
//! that the tree at the checkpoint's size has the checkpoint's root. If it
//! does not (records lost or altered), the log refuses to open: the proxy
//! does not start on a history that contradicts what it signed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use crate::merkle::{self, Hash, Tree};
use crate::note::{Checkpoint, NoteError, Signer, Verifier};
use crate::record::Record;
use crate::refusals::RefusalGate;
use crate::settings::Transparency;
use crate::tiles::{self, Tile};

const RECORDS: &str = "records.log";
const CHECKPOINT: &str = "checkpoint";

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
    pub size: IntGauge,
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
        Ok(LogMetrics {
                fsync_seconds,
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

struct Inner {
    /// Bytes of every record appended, written or pending.
    len: u64,
    /// Records and bytes in `records.log` (the rest is the pending batch).
    written_size: u64,
    written_len: u64,
    /// The batch being formed: records appended but not yet written.
    pending: Option<(Arc<Batch>, Vec<u8>)>,
    /// Batches written (each one `write(2)`).
    batches: u64,
    tree: Tree,
    /// Start offset of each record in `records.log`.
    offsets: Vec<u64>,
    /// Request id → leaf index (ids are hex; others are hashed).
    by_id: ById,
    poisoned: bool,
}

/// Writes the batch its leader started if the leader is dropped while it
/// yields, so a cancelled request cannot stall the log (the leader that is
/// not dropped disarms it and writes on a blocking thread instead).
struct FlushOnDrop<'a> {
    log: &'a Log,
    batch: Option<&'a Arc<Batch>>,
}

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch {
            self.log.flush(batch);
        }
    }
}

/// One group commit: its outcome, shared by every request in it.
struct Batch {
    start_size: u64,
    start_len: u64,
    result: std::sync::OnceLock<Result<(), String>>,
    done: tokio::sync::Notify,
}

impl Batch {
    fn finish(&self, result: Result<(), String>) {
        let _ = self.result.set(result);
        self.done.notify_waiters();
    }
}

pub struct Log {
    settings: Transparency,
    signer: Signer,
    verifier: Verifier,
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// The append handle; holding its lock orders batch writes.
    writer: Mutex<File>,
    /// A handle for fsync and reads that need no lock.
    reader: File,
    latest: ArcSwap<Published>,
    /// Refusals beyond their budget, folded until the next checkpoint.
    refusals: RefusalGate,
    /// The last append failed: uploads are refused up front (by default).
    failing: AtomicBool,
    /// Serialises checkpoint writers.
    checkpointing: Mutex<()>,
    metrics: LogMetrics,
}

impl Log {
    /// Opens (or creates) the log in `settings.directory`, recovering it.
    pub fn open(settings: &Transparency, metrics: LogMetrics) -> Result<Arc<Log>, LogError> {
        let dir = settings.directory.clone();
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| LogError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let key_path = &settings.signing_key;
        let pkcs8 = std::fs::read(key_path).map_err(io(key_path))?;
        let signer =
            Signer::from_pkcs8(&settings.origin, &pkcs8).map_err(|source| LogError::Key {
                path: key_path.display().to_string(),
                source,
            })?;
        let verifier = Verifier::parse(&signer.verifier_key()).map_err(|source| LogError::Key {
            path: key_path.display().to_string(),
            source,
        })?;

        let records = dir.join(RECORDS);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&records)
            .map_err(io(&records))?;
        let committed = read_checkpoint(&dir, &verifier, &settings.origin)?;
        let replayed = replay(&mut file, &records)?;
        let path = records.display().to_string();
        if let Some(cp) = &committed {
            if cp.size > replayed.tree.size() {
                return Err(LogError::Corrupt {
                    path,
                    message: format!(
                        "holds {} readable records but the last checkpoint covers {}: committed records are missing or damaged",
                        replayed.tree.size(),
                        cp.size
                    ),
                });
            }
            let root = replayed.tree.root_at(cp.size).unwrap_or_default();
            if root != cp.root {
                return Err(LogError::Corrupt {
                    path,
                    message: format!(
                        "the first {} records hash to {} but the last checkpoint says {}: committed records were altered",
                        cp.size,
                        residency_core::hex::encode(&root),
                        residency_core::hex::encode(&cp.root)
                    ),
                });
            }
        }
        if replayed.len < replayed.file_len {
            tracing::warn!(
                path = %records.display(),
                kept = replayed.tree.size(),
                dropped_bytes = replayed.file_len - replayed.len,
                "cutting a torn or unreadable tail off the record log (beyond the last checkpoint)"
            );
            file.set_len(replayed.len).map_err(io(&records))?;
            file.sync_all().map_err(io(&records))?;
        }
        let reader = file.try_clone().map_err(io(&records))?;
        let size = replayed.tree.size();
        metrics.size.set(size as i64);
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
        let log = Arc::new(Log {
            settings: settings.clone(),
            signer,
            verifier,
            dir,
            inner: Mutex::new(Inner {
                len: replayed.len,
                written_size: size,
                written_len: replayed.len,
                pending: None,
                batches: 0,
                tree: replayed.tree,
                offsets: replayed.offsets,
                by_id: replayed.by_id,
                poisoned: false,
            }),
            reader,
            writer: Mutex::new(file),
            latest: ArcSwap::from_pointee(latest),
            refusals: RefusalGate::new(
                settings.refusal_records_per_second,
                settings.refusal_records_burst,
            ),
            failing: AtomicBool::new(false),
            checkpointing: Mutex::new(()),
            metrics,
        });
        // A checkpoint for what was recovered, before anything new is added.
        log.checkpoint()?;
        tracing::info!(
            directory = %log.dir.display(),
            records = size,
            key = %log.signer.verifier_key(),
            "transparency log open"
        );
        Ok(log)
    }

    pub fn settings(&self) -> &Transparency {
        &self.settings
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// True while appends fail (or the log is full): new uploads should not
    /// be accepted under `on_write_error = "refuse"`.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the file half-written
        // in a way we track: `len` is only advanced after a full write.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `record` as the next leaf and returns once it is durable:
    /// written and fsynced, so no crash can give its index to another
    /// record after its receipt went out. Records of concurrent requests
    /// share one `write(2)` and one `fdatasync(2)` (group commit), done on
    /// a blocking thread; requests arriving meanwhile form the next batch.
    pub async fn append(self: &Arc<Self>, record: &Record<'_>) -> Result<Appended, LogError> {
        let bytes = record.to_bytes();
        if bytes.len() > tiles::MAX_ENTRY {
            return Err(self.failed(LogError::EntryTooLarge(bytes.len()), &record.request_id));
        }
        let leaf = merkle::leaf_hash(&bytes);
        let id = id_key(&record.request_id);
        let joined = {
            let mut inner = self.lock();
            self.join(&mut inner, &bytes, leaf, id)
        };
        let (batch, leader, index) = match joined {
            Ok(j) => j,
            Err(e) => return Err(self.failed(e, &record.request_id)),
        };
        if leader {
            // The batch must be written even if this request is dropped
            // while it yields (client gone, shutdown): every later record
            // joins it and waits for it.
            let mut flush = FlushOnDrop {
                log: self,
                batch: Some(&batch),
            };
            // Let the other requests that are ready now add their records.
            tokio::task::yield_now().await;
            flush.batch = None;
            let (log, b) = (self.clone(), batch.clone());
            // Runs to its end even if this request is dropped meanwhile.
            let written = tokio::task::spawn_blocking(move || log.flush(&b)).await;
            if written.is_err() {
                // No blocking thread (the runtime is shutting down).
                self.flush(&batch);
            }
        } else {
            let done = batch.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if batch.result.get().is_none() {
                done.await;
            }
        }
        match batch.result.get() {
            Some(Ok(())) => {
                self.failing.store(false, Ordering::Relaxed);
                self.metrics.appended.inc();
                Ok(Appended { index, bytes, leaf })
            }
            Some(Err(message)) => Err(self.failed(
                LogError::Io {
                    path: self.dir.join(RECORDS).display().to_string(),
                    source: std::io::Error::other(message.clone()),
                },
                &record.request_id,
            )),
            None => Err(self.failed(LogError::Poisoned, &record.request_id)),
        }
    }

    /// Appends a refusal's record if the refusal budget allows (`Some`);
    /// otherwise folds it into its reason's summary (`None`), written by
    /// [`Log::write_summaries`] before the next checkpoint.
    pub async fn append_refusal(
        self: &Arc<Self>,
        record: &Record<'_>,
    ) -> Option<Result<Appended, LogError>> {
        if self.refusals.admit(record) {
            return Some(self.append(record).await);
        }
        self.metrics.refusals_summarized.inc();
        None
    }

    /// Appends one summary record per reason for the refusals folded since
    /// the last call (the checkpoint task calls it before each checkpoint).
    pub async fn write_summaries(self: &Arc<Self>) {
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

    /// Adds a record to the pending batch (starting one if there is none:
    /// then this request leads it). Returns the batch, leadership and index.
    fn join(
        &self,
        inner: &mut Inner,
        bytes: &[u8],
        leaf: Hash,
        id: u128,
    ) -> Result<(Arc<Batch>, bool, u64), LogError> {
        if inner.poisoned {
            return Err(LogError::Poisoned);
        }
        if inner.tree.size() >= self.settings.max_records {
            return Err(LogError::Full(inner.tree.size()));
        }
        let leader = inner.pending.is_none();
        let (start_size, start_len) = (inner.tree.size(), inner.len);
        let (batch, buf) = inner.pending.get_or_insert_with(|| {
            let batch = Batch {
                start_size,
                start_len,
                result: std::sync::OnceLock::new(),
                done: tokio::sync::Notify::new(),
            };
            (Arc::new(batch), Vec::with_capacity(4096))
        });
        buf.extend_from_slice(bytes);
        buf.push(b'\n');
        let batch = batch.clone();
        let offset = inner.len;
        inner.len += bytes.len() as u64 + 1;
        inner.offsets.push(offset);
        let index = inner.tree.push(leaf);
        inner.by_id.insert(id, index);
        self.metrics.size.set(index as i64 + 1);
        Ok((batch, leader, index))
    }

    /// Writes `batch` (if it is still pending) with one `write(2)` and
    /// makes it durable with one `fdatasync(2)` (blocking). On failure the
    /// file is cut back and every record from the batch's start
    /// on — including a batch formed meanwhile — is taken out of the tree.
    fn flush(&self, batch: &Arc<Batch>) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let (buf, end_size, end_len) = {
            let mut inner = self.lock();
            match inner.pending.take() {
                Some((b, buf)) if Arc::ptr_eq(&b, batch) => {
                    inner.batches += 1;
                    (buf, inner.tree.size(), inner.len)
                }
                other => {
                    // Already finished (failed with an earlier batch).
                    inner.pending = other;
                    return;
                }
            }
        };
        let started = Instant::now();
        let written = writer.write_all(&buf).and_then(|()| writer.sync_data());
        self.metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        match written {
            Ok(()) => {
                let mut inner = self.lock();
                inner.written_size = end_size;
                inner.written_len = end_len;
                drop(inner);
                batch.finish(Ok(()));
            }
            Err(e) => {
                let cut = writer.set_len(batch.start_len);
                let mut inner = self.lock();
                if cut.is_err() {
                    inner.poisoned = true;
                }
                let keep = batch.start_size;
                inner.tree.truncate(keep);
                inner.offsets.truncate(keep as usize);
                inner.by_id.retain(|_, i| *i < keep);
                inner.len = batch.start_len;
                self.metrics.size.set(keep as i64);
                let later = inner.pending.take();
                drop(inner);
                let message = e.to_string();
                if let Some((later, _)) = later {
                    later.finish(Err(message.clone()));
                }
                batch.finish(Err(message));
            }
        }
    }

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Arc<Published> {
        self.latest.load_full()
    }

    /// Records written (checkpointed or not).
    pub fn size(&self) -> u64 {
        self.lock().written_size
    }

    /// Makes the records so far durable and signs a checkpoint for them
    /// (blocking: call from a blocking thread). A no-op when nothing changed.
    pub fn checkpoint(&self) -> Result<Arc<Published>, LogError> {
        let _one = self.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
        let size = self.lock().written_size;
        let latest = self.latest();
        if latest.size == size {
            self.confirmed();
            return Ok(latest);
        }
        let records = self.dir.join(RECORDS);
        self.reader.sync_data().map_err(|source| LogError::Io {
            path: records.display().to_string(),
            source,
        })?;
        let root = self.lock().tree.root_at(size).unwrap_or_default();
        let checkpoint = Checkpoint {
            origin: self.settings.origin.clone(),
            size,
            root,
            extensions: Vec::new(),
        };
        let note = checkpoint
            .sign(&self.signer)
            .map_err(|source| LogError::Key {
                path: self.settings.signing_key.display().to_string(),
                source,
            })?;
        write_atomically(&self.dir, CHECKPOINT, note.as_bytes())?;
        let published = Arc::new(Published { note, size, root });
        self.latest.store(published.clone());
        self.metrics.checkpoint_size.set(size as i64);
        self.confirmed();
        Ok(published)
    }

    /// The latest checkpoint covers every record as of now.
    fn confirmed(&self) {
        self.metrics.checkpoint_timestamp.set(unix_now());
        self.metrics.checkpoint_age.set(0);
    }

    /// Updates the checkpoint-age gauge (called on every checkpoint tick).
    pub fn refresh_age(&self) {
        let at = self.metrics.checkpoint_timestamp.get();
        self.metrics.checkpoint_age.set((unix_now() - at).max(0));
    }

    /// An inclusion proof for leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<(Hash, Vec<Hash>)> {
        let inner = self.lock();
        let leaf = inner.tree.leaf(index)?;
        Some((leaf, inner.tree.inclusion_proof(index, size)?))
    }

    /// A consistency proof from the tree of `old` leaves to that of `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        self.lock().tree.consistency_proof(old, new)
    }

    /// The stored bytes of leaf `index`.
    pub fn record(&self, index: u64) -> Option<Vec<u8>> {
        let mut line = self.lines(index, 1)?;
        line.pop(); // its newline
        Some(line)
    }

    /// The `count` written lines (records with their newlines) from leaf
    /// `first` on, with one read.
    fn lines(&self, first: u64, count: u64) -> Option<Vec<u8>> {
        let (start, end) = {
            let inner = self.lock();
            let last = first.checked_add(count)?;
            if count == 0 || last > inner.written_size {
                return None;
            }
            let offset = |i: u64| inner.offsets.get(usize::try_from(i).ok()?).copied();
            let end = if last == inner.written_size {
                inner.written_len
            } else {
                offset(last)?
            };
            (offset(first)?, end)
        };
        let mut buf = vec![0u8; usize::try_from(end - start).ok()?];
        self.reader.read_exact_at(&mut buf, start).ok()?;
        Some(buf)
    }

    /// A C2SP tlog-tiles resource: the hash tile or entry bundle `tile`,
    /// if the latest signed checkpoint covers all of it (only what a
    /// checkpoint commits to is served).
    pub fn tile(&self, tile: Tile) -> Option<Vec<u8>> {
        if tile.needs_size()? > self.latest().size {
            return None;
        }
        let first = tile.index * tiles::WIDTH;
        let width = u64::from(tile.width);
        match tile.level {
            Some(level) => {
                let inner = self.lock();
                let mut out = Vec::with_capacity(tile.width as usize * 32);
                for node in first..first + width {
                    out.extend_from_slice(&inner.tree.node(8 * u32::from(level), node)?);
                }
                Some(out)
            }
            None => {
                // One read for the bundle's records (lines, no newline inside).
                let lines = self.lines(first, width)?;
                let mut out = Vec::with_capacity(lines.len() + 2 * tile.width as usize);
                for record in lines.split_inclusive(|&b| b == b'\n') {
                    let record = record.strip_suffix(b"\n")?;
                    if !tiles::push_entry(&mut out, record) {
                        return None;
                    }
                }
                Some(out)
            }
        }
    }

    /// The leaf index of the record for `request_id`.
    pub fn index_of(&self, request_id: &str) -> Option<u64> {
        let index = *self.lock().by_id.get(&id_key(request_id))?;
        // Ids that are not 32 hex digits are hashed: confirm the match.
        let bytes = self.record(index)?;
        let record = Record::from_bytes(&bytes).ok()?;
        (record.request_id == request_id).then_some(index)
    }

    /// Approximate memory held for the tree and indexes.
    pub fn memory_bytes(&self) -> usize {
        let inner = self.lock();
        inner.tree.memory_bytes() + inner.offsets.capacity() * 8 + inner.by_id.capacity() * 32
    }

    /// TEMPORARY stub for the witness branch (main provides the real one):
    /// appends signature lines (`— name base64`, no newline) to the latest
    /// note if it is still of `size`; false if a newer checkpoint replaced it.
    pub fn add_cosignatures(&self, size: u64, lines: &[String]) -> bool {
        let mut added = false;
        self.latest.rcu(|current| {
            added = current.size == size;
            if !added {
                return current.clone();
            }
            let mut note = current.note.clone();
            for line in lines {
                note.push_str(line);
                note.push('\n');
            }
            Arc::new(Published {
                note,
                size: current.size,
                root: current.root,
            })
        });
        added
    }
}

/// The map key for a request id: its value when it is 32 hex digits (ours
/// always are), otherwise 128 bits of its SHA-256.
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

fn id_key(id: &str) -> u128 {
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Replayed {
    tree: Tree,
    offsets: Vec<u64>,
    by_id: ById,
    /// Bytes holding complete, readable records.
    len: u64,
    file_len: u64,
}

/// Reads `records.log` from the start, stopping at the first line that is
/// torn (no newline) or not a record.
fn replay(file: &mut File, path: &Path) -> Result<Replayed, LogError> {
    let io = |source| LogError::Io {
        path: path.display().to_string(),
        source,
    };
    let started = Instant::now();
    let file_len = file.seek(SeekFrom::End(0)).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 20, Read::by_ref(file));
    let mut out = Replayed {
        tree: Tree::new(),
        offsets: Vec::new(),
        by_id: ById::default(),
        len: 0,
        file_len,
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let bytes = &line[..n - 1];
        let Ok(record) = Record::from_bytes(bytes) else {
            break;
        };
        let index = out.tree.push(merkle::leaf_hash(bytes));
        out.by_id.insert(id_key(&record.request_id), index);
        out.offsets.push(out.len);
        out.len += n as u64;
    }
    if out.tree.size() > 0 {
        tracing::info!(
            records = out.tree.size(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "replayed the record log"
        );
    }
    Ok(out)
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
                source,
            })
        }
    };
    let corrupt = |message: String| LogError::Corrupt {
        path: path.display().to_string(),
        message,
    };
    let cp = Checkpoint::open(&note, verifier).map_err(|e| {
        corrupt(format!(
            "{e} (a log is tied to its key: keep the key, or start a new log in a new directory)"
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

/// Replaces `dir/name` with `bytes` so that a crash leaves the old or the
/// new content, never a mix.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| LogError::Io { path, source }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::{Client, Database, Outcome};
    use crate::settings::{ClientAddress, OnWriteError, ReceiptMode};

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Dir, Transparency) {
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
            origin: "test.example/log".into(),
            signing_key: key,
            receipts: ReceiptMode::Signed,
            checkpoint_interval: Duration::from_secs(1),
            client_address: ClientAddress::Prefix { v4: 24, v6: 48 },
            on_write_error: OnWriteError::Refuse,
            address: None,
            max_records: 1000,
            max_connections: 256,
            refusal_records_per_second: 100,
            refusal_records_burst: 1000,
            tls: Vec::new(),
        };
        (Dir(dir), settings)
    }

    fn metrics() -> LogMetrics {
        LogMetrics::register(&Registry::new()).unwrap()
    }

    fn record(i: u64) -> Record<'static> {
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
            upstream_status: Some(201),
            body: None,
            policy_sha256: "00".repeat(32).into(),
            geoip: Database {
                build_epoch: 1,
                sha256: "11".repeat(32).into(),
            },
            summary: None,
        }
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
        let verifier = Verifier::parse(&log.signer().verifier_key()).unwrap();
        let opened = Checkpoint::open(&cp.note, &verifier).unwrap();
        assert_eq!((opened.size, opened.root), (5, cp.root));
        assert_eq!(log.record(3).unwrap(), record(3).to_bytes());
        assert_eq!(log.index_of(&format!("{:032x}", 4)), Some(4));
        assert_eq!(log.index_of("nope"), None);
        let (leaf, path) = log.inclusion_proof(2, 5).unwrap();
        assert_eq!(leaf, merkle::leaf_hash(&record(2).to_bytes()));
        merkle::verify_inclusion(&leaf, 2, 5, &path, &cp.root).unwrap();
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
            let bytes = log.record(i).unwrap();
            let (leaf, path) = log.inclusion_proof(i, 50).unwrap();
            assert_eq!(leaf, merkle::leaf_hash(&bytes));
            merkle::verify_inclusion(&leaf, i, 50, &path, &cp.root).unwrap();
        }
        let text = std::fs::read_to_string(settings.directory.join(RECORDS)).unwrap();
        assert_eq!(text.lines().count(), 50);
        let batches = log.lock().batches;
        assert!(batches <= 2, "50 concurrent records took {batches} writes");
    }

    #[tokio::test]
    async fn a_leader_dropped_mid_batch_still_writes_it() {
        let (_dir, settings) = setup("cancel");
        let log = Log::open(&settings, metrics()).unwrap();
        // The first append leads a batch and yields; drop it right there,
        // as hyper does when the client goes away.
        let first = record(0);
        tokio::select! {
            biased;
            _ = log.append(&first) => panic!("the leader should yield once"),
            _ = std::future::ready(()) => {}
        }
        let next = tokio::time::timeout(Duration::from_secs(5), log.append(&record(1)))
            .await
            .expect("a dropped leader must not stall later appends")
            .unwrap();
        assert_eq!(next.index, 1);
        assert_eq!(log.size(), 2, "the dropped request's record is written too");
        assert_eq!(log.record(0).unwrap(), record(0).to_bytes());
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
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.size(), 7);
        for i in 7..12 {
            assert_eq!(log.append(&record(i)).await.unwrap().index, i);
        }
        let second = log.checkpoint().unwrap();
        let proof = log.consistency_proof(7, 12).unwrap();
        merkle::verify_consistency(7, 12, &first.root, &second.root, &proof).unwrap();
        assert_eq!(log.index_of(&format!("{:032x}", 3)), Some(3));
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
        let path = settings.directory.join(RECORDS);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"v\":1,\"request_id\":\"to").unwrap();
        drop(f);
        let log = Log::open(&settings, metrics()).unwrap();
        assert_eq!(log.size(), 2);
        assert_eq!(log.append(&record(2)).await.unwrap().index, 2);
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with('\n'));
    }

    #[tokio::test]
    async fn altered_or_missing_committed_records_refuse_to_open() {
        let (_dir, settings) = setup("tamper");
        {
            let log = Log::open(&settings, metrics()).unwrap();
            for i in 0..3 {
                log.append(&record(i)).await.unwrap();
            }
            log.checkpoint().unwrap();
        }
        let path = settings.directory.join(RECORDS);
        let original = std::fs::read_to_string(&path).unwrap();
        // One changed byte in a committed record.
        std::fs::write(&path, original.replacen("zurich", "zurick", 1)).unwrap();
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("altered"), "{e}");
        // A committed record missing.
        let two: String = original.lines().take(2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, two).unwrap();
        let e = Log::open(&settings, metrics()).err().unwrap().to_string();
        assert!(e.contains("missing"), "{e}");
        // Back to the original: opens again.
        std::fs::write(&path, &original).unwrap();
        assert_eq!(Log::open(&settings, metrics()).unwrap().size(), 3);
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
    async fn a_full_log_refuses_and_says_so() {
        let (_dir, mut settings) = setup("full");
        settings.max_records = 2;
        let m = metrics();
        let log = Log::open(&settings, m.clone()).unwrap();
        log.append(&record(0)).await.unwrap();
        log.append(&record(1)).await.unwrap();
        assert!(!log.failing());
        let e = log.append(&record(2)).await.unwrap_err();
        assert!(matches!(e, LogError::Full(2)), "{e}");
        assert!(log.failing());
        assert_eq!(m.write_errors.get(), 1);
        assert_eq!(m.appended.get(), 2);
    }
}
