//! One log for a fleet (`transparency.storage = "postgres"`): every
//! replica appends to the same PostgreSQL database, one replica at a time
//! integrates what was appended into C2SP tiles and signs the checkpoint.
//!
//! * **Sequencing.** A replica's concurrent records go to the database in
//!   batches (group commit: one task per replica takes whatever is queued,
//!   up to [`MAX_BATCH`]). One statement per batch bumps the sequence row
//!   and inserts the batch's entries at the indexes it assigned: the row
//!   lock serialises batches of all replicas, so indexes are contiguous
//!   and never given twice. The statement commits (`synchronous_commit =
//!   on`) before any record of the batch is acknowledged, on a connection
//!   of the sequencer's own whose server warnings are watched ([`Writer`]):
//!   a commit the server warned about (a cancelled wait for a synchronous
//!   standby) is not acknowledged. A batch slower
//!   than `transparency.postgres.timeout`, or a queue holding
//!   `max_pending` records, fails its records: the uploads get 503
//!   `log_unavailable`.
//! * **Integration.** The replica holding the session-scoped advisory lock
//!   [`INTEGRATOR_LOCK`] reads entries past the checkpoint, extends the
//!   tree's right edge ([`Edge`]), and in one transaction stores the hash
//!   tiles it filled, the partial tiles of the new size and the signed
//!   checkpoint — the checkpoint only if the stored one is still the one
//!   it extended, so a replica that lost the lock without noticing can
//!   never move the log back. A dead integrator's connection ends and
//!   frees the lock; another replica takes it at its next checkpoint tick.
//!   Taking over, a replica rebuilds the right edge from the stored tiles
//!   and refuses to integrate unless it hashes to the signed root.
//! * **Serving.** Every replica serves the tiles API from the database:
//!   hash tiles from their rows, entry bundles from the entries, full
//!   (immutable) ones cached in memory up to [`CACHE_BYTES`]; every
//!   replica follows the signed checkpoint at each tick.
//!
//! The schema is versioned ([`MIGRATIONS`]) and migrated at start under a
//! transaction-scoped advisory lock, so replicas starting together apply
//! each version once. The database is bound to one log: its origin and
//! verifier key are stored at the first start and every later start must
//! match them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::backend::{
    cosign, keep_cosignatures, sign_checkpoint, unix_now, LogError, LogMetrics, Published,
};
use crate::directory::lock;
use crate::edge::Edge;
use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, Signer, Verifier};
use crate::settings::{Postgres, Transparency};
use crate::tiles::{self, Tile, WIDTH};

/// How often reads may make a replica follow out of turn
/// ([`Fleet::catch_up`]).
const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The advisory lock whose holder integrates the log.
pub const INTEGRATOR_LOCK: i64 = 0x7265_7369_6465_6e01;
/// Taken (transaction-scoped) while the schema is migrated.
const MIGRATION_LOCK: i64 = 0x7265_7369_6465_6e02;
/// Records per commit batch at most.
const MAX_BATCH: usize = 1024;
/// A log whose last batch ended this recently is busy.
const BUSY: Duration = Duration::from_millis(5);
/// Entries one integration step reads at most (bounds its memory).
const INTEGRATE_CHUNK: u64 = 16_384;
/// Steps per checkpoint tick at least (each stores a checkpoint); more
/// while the tick has not lasted `checkpoint_interval`, so a backlog is
/// integrated at full speed (the next tick then follows at once) whatever
/// the interval, and does not hold one tick forever.
const INTEGRATE_STEPS: usize = 16;
/// Memory for full tiles and entry bundles served from cache.
const CACHE_BYTES: u64 = 32 << 20;
/// Ticks' sequence readings kept until a checkpoint covers them.
const COVERAGE_KEPT: usize = 64;
/// The most records acknowledged above the served checkpoint whose leaf
/// hashes a replica keeps (~64 bytes each): a tick's worth normally.
const ACKNOWLEDGED_KEPT: usize = 65_536;

/// What a replica does while its database lost records it served.
const LOST: &str = "Nothing is sequenced or integrated until the database holds them again, so no index is given twice and no second tree is signed; restore the lost records, or start a new log (a new origin) in a new database";

/// Why the database is behind the `known` records a replica knew it
/// committed before it read `sequence` there (read after: its own batches
/// may land in between), if it is: it would give those indexes again, and
/// a receipt already signed for one would then contradict the tree.
/// The sequence's next index as stored, within `timeout`.
async fn sequence_at(client: &Client, timeout: Duration) -> Result<u64, LogError> {
    let next: i64 = timed(
        timeout,
        client.query_one("SELECT next FROM residency_log_sequence", &[]),
    )
    .await?
    .get(0);
    Ok(u64::try_from(next).unwrap_or(0))
}

fn behind_sequence(sequence: u64, known: u64) -> Option<String> {
    (sequence < known).then(|| {
        format!(
            "its sequence is at {sequence}, below the {known} records this replica knows committed"
        )
    })
}

/// The schema, version by version; never edit a released version, add one.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "
CREATE TABLE residency_log_identity (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    origin text NOT NULL,
    verifier_key text NOT NULL
);
CREATE TABLE residency_log_sequence (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next bigint NOT NULL CHECK (next >= 0)
);
INSERT INTO residency_log_sequence (next) VALUES (0);
CREATE TABLE residency_log_entries (
    idx bigint PRIMARY KEY CHECK (idx >= 0),
    request_key bytea NOT NULL,
    data bytea NOT NULL
);
CREATE INDEX residency_log_entries_request_key ON residency_log_entries (request_key);
CREATE TABLE residency_log_tiles (
    level smallint NOT NULL CHECK (level >= 0),
    idx bigint NOT NULL CHECK (idx >= 0),
    data bytea NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE residency_log_checkpoint (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    size bigint NOT NULL CHECK (size >= 0),
    note text NOT NULL
);
",
)];

/// Assigns `$1` contiguous indexes (unless that would pass `$4` records,
/// or the sequence is below `$5`, the records this replica knows were
/// committed: those indexes are taken) and inserts the batch's request keys
/// `$2` and entries `$3` at them, in one statement (one transaction, one
/// round trip). Returns the first index and the rows inserted; no row when
/// the log is full or the database lost records.
const SEQUENCE: &str = "
WITH seq AS (
    UPDATE residency_log_sequence SET next = next + $1
    WHERE next + $1 <= $4 AND next >= $5
    RETURNING next - $1 AS first
), ins AS (
    INSERT INTO residency_log_entries (idx, request_key, data)
    SELECT seq.first + e.n - 1, e.k, e.d
    FROM seq, unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS e(k, d, n)
    RETURNING 1
)
SELECT first, (SELECT count(*) FROM ins) FROM seq";

/// Whether a batch could be written, without writing one: a no-op update
/// of the sequence row and an insert of no row into the entries, which
/// takes the same lock on the table and needs the same privilege as a
/// batch's. (The sequence row alone passed while the entries could take
/// no insert — a `REINDEX`, an `ALTER TABLE`, a revoked privilege — and
/// every tick let uploads be forwarded, then refused: PostgreSQL chaos
/// audit, stop 68.)
const PROBE: &str = "
WITH ins AS (
    INSERT INTO residency_log_entries (idx, request_key, data)
    SELECT 0, ''::bytea, ''::bytea WHERE false
)
UPDATE residency_log_sequence SET next = next";

/// Stores tiles, keeping the longest (a partial tile only ever grows into
/// the full one: each is a prefix of the next).
const STORE_TILES: &str = "
INSERT INTO residency_log_tiles (level, idx, data)
SELECT * FROM unnest($1::int2[], $2::int8[], $3::bytea[])
ON CONFLICT (level, idx) DO UPDATE SET data = EXCLUDED.data
WHERE length(residency_log_tiles.data) < length(EXCLUDED.data)";

/// Replaces the checkpoint only if it is still the one of size `$3`
/// (`-1`: none yet).
const STORE_CHECKPOINT: &str = "
INSERT INTO residency_log_checkpoint (size, note) VALUES ($1, $2)
ON CONFLICT (singleton) DO UPDATE SET size = EXCLUDED.size, note = EXCLUDED.note
WHERE residency_log_checkpoint.size = $3";

/// One record waiting for its batch.
struct Pending {
    key: [u8; 16],
    data: Vec<u8>,
    /// The index and the record's bytes back (no copy is kept meanwhile).
    reply: oneshot::Sender<Result<(u64, Vec<u8>), LogError>>,
    /// When it was queued.
    queued: tokio::time::Instant,
}

/// This replica's session for the integrator lock: a connection of its
/// own, kept between ticks (a free lock is taken at the next tick without
/// connecting first), and, while it holds [`INTEGRATOR_LOCK`], the right
/// edge of the tree its last checkpoint signed.
#[derive(Default)]
struct Session {
    client: Option<Client>,
    /// `client`'s server warnings (see [`Warnings`]).
    warnings: Warnings,
    /// `client`'s session holds [`INTEGRATOR_LOCK`].
    locked: bool,
    held: Option<Integrated>,
}

impl Session {
    /// Closes the connection, which frees the lock.
    fn close(&mut self) {
        self.client = None;
        self.warnings = Warnings::default();
        self.locked = false;
        self.held = None;
    }
}

struct Integrated {
    edge: Edge,
    /// The stored checkpoint's size, or `None` before the first.
    stored: Option<u64>,
}

/// The last server warning (severity `WARNING`) a connection received,
/// until taken. A commit whose wait for a synchronous standby was
/// cancelled on the server (`pg_cancel_backend`, a `statement_timeout`
/// there) returns success with such a warning: committed locally, perhaps
/// not replicated. What such a commit wrote must not be acknowledged or
/// published.
#[derive(Clone, Default)]
struct Warnings(Arc<std::sync::Mutex<Option<String>>>);

impl Warnings {
    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn set(&self, warning: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(warning);
    }

    /// Runs `write`, and returns with its result the error for a warning
    /// the server sent while it ran (the connection hands a notice over
    /// before the statement's end, so it is seen by then).
    /// `consequence` says what is not done for it.
    async fn around<T>(
        &self,
        consequence: &str,
        write: impl std::future::Future<Output = T>,
    ) -> (T, Option<LogError>) {
        self.take();
        let result = write.await;
        let warned = self.take().map(|warning| {
            LogError::Database(format!(
                "the database warned while committing: {warning}; the write may not have reached a synchronous standby, so {consequence}"
            ))
        });
        (result, warned)
    }
}

/// The connection a replica commits its batches on, its server warnings
/// watched ([`Warnings`]): a batch whose commit was warned about is not
/// acknowledged.
struct Writer {
    client: Client,
    /// [`SEQUENCE`], prepared on this connection.
    sequence: tokio_postgres::Statement,
    warnings: Warnings,
}

/// Connects with `config`, and drives the connection on a task that keeps
/// the last server warning in the returned [`Warnings`] and logs it.
async fn connect_watched(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    what: &'static str,
) -> Result<(Client, Warnings), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls).await?;
    let warnings = Warnings::default();
    let slot = warnings.clone();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => {
                    if notice.parsed_severity() != Some(tokio_postgres::error::Severity::Warning) {
                        continue;
                    }
                    let text = match notice.detail() {
                        Some(detail) => format!("{} ({detail})", notice.message()),
                        None => notice.message().to_string(),
                    };
                    tracing::warn!(connection = what, warning = %text, "the log database warned");
                    slot.set(text);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(connection = what, error = %e, "log database connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, warnings))
}

/// Whether a tick may publish a stored checkpoint newer than the one
/// served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// Once a commit shows it replicated ([`Shared::publishable`]).
    IfReplicated,
    /// Not this tick: that commit was just tried, and warned or failed.
    NotYet,
}

struct Shared {
    settings: Transparency,
    pg: Postgres,
    signer: Signer,
    verifier: Verifier,
    pool: Pool,
    tls: MakeRustlsConnect,
    /// The sequencer's connection (and the write probe's): a connection of
    /// its own, whose server warnings are watched (see [`Writer`]).
    writer: tokio::sync::Mutex<Option<Writer>>,
    latest: ArcSwap<Published>,
    /// The records known committed, fleet-wide: the sequence as last read,
    /// this replica's own batches, a published checkpoint's size.
    sequenced: AtomicU64,
    /// The last write failed (a batch's commit, or the tick's write probe,
    /// made while failing or after the tick's reads failed): uploads are
    /// refused before they are forwarded until a write succeeds again.
    /// Reads never set or clear it.
    unreachable: AtomicBool,
    /// Batches committed: a write probe that fails while one succeeds
    /// (it waited behind slow batches) does not mark writes as failing.
    commits: AtomicU64,
    /// The served checkpoint has cosignatures the stored one may lack (its
    /// write failed, or lost a race with another replica's): stored at the
    /// next tick, so that every replica serves them.
    unstored: AtomicBool,
    /// One cosignature write at a time ([`Shared::store_cosignatures`]).
    storing: tokio::sync::Mutex<()>,
    /// The last such write failed (warned once until one succeeds).
    store_failing: AtomicBool,
    /// The database is behind what this replica served: it lost
    /// committed records. Nothing is sequenced or integrated meanwhile.
    lost: AtomicBool,
    /// The leaf hash of each record this replica acknowledged (a receipt
    /// signs its index and leaf) that its served checkpoint may not cover
    /// yet, by index; at most [`ACKNOWLEDGED_KEPT`], the oldest let go
    /// first. A stored checkpoint or entries that put another record at
    /// one of these indexes are a loss ([`Shared::forked`]): the index
    /// alone would take a history sequenced past them as whole.
    acknowledged: std::sync::Mutex<std::collections::BTreeMap<u64, Hash>>,
    /// Connections the log API's reads may hold at once: one fewer than
    /// the pool, so readers never take every connection the tick needs
    /// (the sequencer has its own, [`Shared::writer`]).
    reads: tokio::sync::Semaphore,
    /// `(when, sequence then)`, as read at recent ticks, until a
    /// checkpoint covers them: the newest covered one says as of when the
    /// checkpoint covers every record.
    coverage: std::sync::Mutex<std::collections::VecDeque<(i64, u64)>>,
    session: tokio::sync::Mutex<Session>,
    /// When a read last made this replica follow out of turn
    /// ([`Fleet::catch_up`]), in milliseconds since the Unix epoch.
    caught_up_at: AtomicU64,
    /// When the last follow that read the stored checkpoint and serves it
    /// began, on [`monotonic_us`]'s clock: a read asked before then knows
    /// the log's latest checkpoint from what is published.
    followed_from: AtomicU64,
    is_integrator: AtomicBool,
    /// The checkpoint served is the log's: a stored one was published, or
    /// none is stored. Until then this replica serves the empty tree's,
    /// which the log's readers may have seen it outgrow (a replica started
    /// while commits cannot be known to be replicated): the log API then
    /// answers 503 instead of signing that the log shrank.
    confirmed: AtomicBool,
    /// Full tiles and entry bundles: immutable once complete.
    cache: quick_cache::sync::Cache<(i16, u64), Arc<Vec<u8>>, Weight>,
    metrics: LogMetrics,
}

/// Cache weight: bytes.
#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<(i16, u64), Arc<Vec<u8>>> for Weight {
    fn weight(&self, _: &(i16, u64), value: &Arc<Vec<u8>>) -> u64 {
        value.len() as u64 + 64
    }
}

/// The fleet's log, as one replica sees it (see the module documentation).
pub struct Fleet {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Pending>,
    handle: tokio::runtime::Handle,
}

impl Fleet {
    /// Connects, migrates the schema, checks that the database holds this
    /// log (origin and key), reads the latest checkpoint and starts the
    /// replica's sequencer task.
    pub async fn start(
        settings: &Transparency,
        pg: &Postgres,
        metrics: LogMetrics,
    ) -> Result<Fleet, LogError> {
        let started = Instant::now();
        let key_path = &settings.signing_key;
        let pkcs8 = std::fs::read(key_path).map_err(|source| LogError::Io {
            path: key_path.display().to_string(),
            error: source,
        })?;
        let key_error = |source| LogError::Key {
            path: key_path.display().to_string(),
            error: source,
        };
        let signer = Signer::from_pkcs8(&settings.origin, &pkcs8).map_err(key_error)?;
        let verifier = Verifier::parse(&signer.verifier_key()).map_err(key_error)?;
        let tls = tls(pg)?;
        let config = session_config(pg);
        let manager = Manager::from_config(
            config,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(pg.timeout))
            .create_timeout(Some(pg.timeout))
            .recycle_timeout(Some(pg.timeout))
            .build()
            .map_err(|e| LogError::Database(e.to_string()))?;
        {
            let mut client = timed(pg.timeout, pool.get()).await?;
            // Bounded here too: a server that accepts the connection and
            // then goes silent must not hang the start.
            let ready = async {
                let version = migrate(&mut client).await?;
                bind(&client, &settings.origin, &signer.verifier_key()).await?;
                clock_against(&client).await;
                Ok::<_, LogError>(version)
            };
            let version = tokio::time::timeout(LONG * pg.timeout, ready)
                .await
                .map_err(|_| long_timeout_error(pg.timeout))??;
            tracing::debug!(version, "log database schema ready");
        }
        // Until a stored checkpoint may be published, the empty tree's,
        // signed: /checkpoint always answers a checkpoint, and one every
        // later checkpoint is consistent with.
        let empty = sign_checkpoint(settings, &signer, 0, merkle::empty_root())?;
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            pg: pg.clone(),
            signer,
            verifier,
            pool,
            tls,
            writer: tokio::sync::Mutex::new(None),
            latest: ArcSwap::from_pointee(Published {
                note: empty,
                size: 0,
                root: merkle::empty_root(),
            }),
            sequenced: AtomicU64::new(0),
            unreachable: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            unstored: AtomicBool::new(false),
            storing: tokio::sync::Mutex::new(()),
            store_failing: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            acknowledged: std::sync::Mutex::default(),
            reads: tokio::sync::Semaphore::new(pg.pool_size - 1),
            coverage: Default::default(),
            session: tokio::sync::Mutex::new(Session::default()),
            caught_up_at: AtomicU64::new(0),
            followed_from: AtomicU64::new(0),
            is_integrator: AtomicBool::new(false),
            confirmed: AtomicBool::new(false),
            cache: quick_cache::sync::Cache::with_weighter(4096, CACHE_BYTES, Weight),
            metrics,
        });
        // The checkpoint as stored (and, with the lock free, integrated).
        let latest = shared.tick().await?;
        let (queue, rx) = mpsc::channel(pg.max_pending);
        tokio::spawn(sequence(shared.clone(), rx));
        tracing::info!(
            database = %pg.url,
            records = shared.sequenced.load(Ordering::Relaxed),
            checkpoint = latest.size,
            integrator = shared.is_integrator.load(Ordering::Relaxed),
            elapsed_ms = started.elapsed().as_millis() as u64,
            key = %shared.signer.verifier_key(),
            "transparency log open (PostgreSQL)"
        );
        Ok(Fleet {
            shared,
            queue,
            handle: tokio::runtime::Handle::current(),
        })
    }

    pub fn signer(&self) -> &Signer {
        &self.shared.signer
    }

    pub fn verifier(&self) -> &Verifier {
        &self.shared.verifier
    }

    /// Writes fail, or must not be made (the database lost records this
    /// replica served): new uploads are refused before they are forwarded.
    pub fn refusing_writes(&self) -> bool {
        self.shared.unreachable.load(Ordering::Relaxed) || self.shared.lost.load(Ordering::Relaxed)
    }

    pub fn is_integrator(&self) -> bool {
        self.shared.is_integrator.load(Ordering::Relaxed)
    }

    /// Whether the checkpoint served is the log's (see `Shared::confirmed`).
    pub fn confirmed(&self) -> bool {
        self.shared.confirmed.load(Ordering::Relaxed)
    }

    /// Queues `data` for the next batch and returns its index (and `data`)
    /// once the batch committed. A full queue fails at once.
    pub async fn append(&self, data: Vec<u8>, id: u128) -> Result<(u64, Vec<u8>), LogError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            key: id.to_be_bytes(),
            data,
            reply,
            queued: tokio::time::Instant::now(),
        };
        match self.queue.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(LogError::Busy(self.shared.pg.max_pending))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(LogError::Poisoned),
        }
        answer.await.unwrap_or(Err(LogError::Poisoned))
    }

    pub fn latest(&self) -> Arc<Published> {
        self.shared.latest.load_full()
    }

    pub fn size(&self) -> u64 {
        self.shared.sequenced.load(Ordering::Relaxed)
    }

    /// One checkpoint tick (blocking): integrates and signs when this
    /// replica holds (or can take) the integrator lock, else follows the
    /// stored checkpoint.
    pub fn checkpoint(&self) -> Result<Arc<Published>, LogError> {
        self.handle.block_on(self.shared.tick())
    }

    /// The stored checkpoint, followed now if this replica's is smaller
    /// than `size` (blocking): a reader sent here for a tile or proof of
    /// the checkpoint another replica just stored gets it instead of a
    /// 404 (replicas follow once a tick). At most once per
    /// [`CATCH_UP_EVERY`] for all readers together (one that comes sooner
    /// waits for the window), never racing this replica's tick (it waits up
    /// to a window for the tick, which publishes anyway), and not on the
    /// integrator.
    pub fn catch_up(&self, size: u64) -> Result<Arc<Published>, LogError> {
        let latest = self.latest();
        if latest.size >= size {
            return Ok(latest);
        }
        self.handle.block_on(self.shared.catch_up(size))
    }

    /// Any tile of the integrated tree (blocking: a database read unless
    /// cached). `Ok(None)`: no such tile; `Err`: the database did not
    /// answer.
    pub fn any_tile(&self, tile: Tile) -> Result<Option<Vec<u8>>, LogError> {
        self.handle.block_on(self.shared.tile(tile))
    }

    /// The stored bytes of leaf `index` (blocking).
    pub fn record(&self, index: u64) -> Result<Option<Vec<u8>>, LogError> {
        let Ok(index) = i64::try_from(index) else {
            return Ok(None);
        };
        self.handle.block_on(async {
            let (_permit, client) = self.shared.read_client().await?;
            let row = timed(
                self.shared.pg.timeout,
                client.query_opt(
                    "SELECT data FROM residency_log_entries WHERE idx = $1",
                    &[&index],
                ),
            )
            .await?;
            Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
        })
    }

    /// The indexes recorded for request-id key `key` (blocking).
    pub fn indexes_of(&self, key: u128) -> Result<Vec<u64>, LogError> {
        let key = key.to_be_bytes().to_vec();
        self.handle.block_on(async {
            let (_permit, client) = self.shared.read_client().await?;
            let rows = timed(
                self.shared.pg.timeout,
                client.query(
                    "SELECT idx FROM residency_log_entries WHERE request_key = $1 ORDER BY idx",
                    &[&key],
                ),
            )
            .await?;
            Ok(rows
                .iter()
                .filter_map(|r| u64::try_from(r.get::<_, i64>(0)).ok())
                .collect())
        })
    }

    /// The tile cache and the integrator's right edge.
    pub fn memory_bytes(&self) -> usize {
        let edge = self
            .shared
            .session
            .try_lock()
            .ok()
            .and_then(|s| s.held.as_ref().map(|i| i.edge.memory_bytes()))
            .unwrap_or(0);
        self.shared.cache.weight() as usize + edge
    }

    /// As the directory's: cosignatures for the checkpoint of `size`, kept
    /// in the database so every replica serves them (blocking).
    pub fn add_cosignatures(&self, size: u64, lines: &[String]) -> bool {
        self.handle
            .block_on(self.shared.add_cosignatures(size, lines))
    }
}

impl Shared {
    /// A pooled connection (the tick's reads, cosignatures).
    async fn client(&self) -> Result<Object, LogError> {
        timed(self.pg.timeout, self.pool.get()).await
    }

    /// A pooled connection for one of the log API's reads, under
    /// [`Shared::reads`].
    async fn read_client(&self) -> Result<(tokio::sync::SemaphorePermit<'_>, Object), LogError> {
        let permit = tokio::time::timeout(self.pg.timeout, self.reads.acquire())
            .await
            .map_err(|_| timeout_error(self.pg.timeout))?
            .map_err(|_| LogError::Poisoned)?;
        Ok((permit, self.client().await?))
    }

    /// Commits one batch; returns its first index. Any failure but a full
    /// log marks writes as failing; a success clears it.
    async fn commit(&self, batch: &[Pending]) -> Result<u64, LogError> {
        let result = self.try_commit(batch).await;
        match &result {
            Ok(_) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.unreachable.store(false, Ordering::Relaxed);
            }
            Err(LogError::Full(_)) => {}
            Err(_) => self.unreachable.store(true, Ordering::Relaxed),
        }
        result
    }

    async fn try_commit(&self, batch: &[Pending]) -> Result<u64, LogError> {
        if self.lost.load(Ordering::Relaxed) {
            return Err(LogError::Database(LOST.into()));
        }
        let deadline = tokio::time::Instant::now() + self.pg.timeout;
        // Held by the write probe at most: bounded by the same deadline.
        let mut slot = tokio::time::timeout_at(deadline, self.writer.lock())
            .await
            .map_err(|_| timeout_error(self.pg.timeout))?;
        let writer = self.writer(&mut slot, deadline).await?;
        let keys: Vec<&[u8]> = batch.iter().map(|p| &p.key[..]).collect();
        let data: Vec<&[u8]> = batch.iter().map(|p| &p.data[..]).collect();
        let n = batch.len() as i64;
        let max = i64::try_from(self.settings.max_records).unwrap_or(i64::MAX);
        let known = self.known();
        let served = i64::try_from(known).unwrap_or(i64::MAX);
        let client = &writer.client;
        let run = async {
            let row = client
                .query_opt(&writer.sequence, &[&n, &keys, &data, &max, &served])
                .await?;
            if row.is_some() {
                return Ok((row, None));
            }
            let next: i64 = client
                .query_one("SELECT next FROM residency_log_sequence", &[])
                .await?
                .get(0);
            Ok((None, Some(u64::try_from(next).unwrap_or(0))))
        };
        let (result, warned) = writer
            .warnings
            .around(
                "its records are not acknowledged",
                tokio::time::timeout_at(deadline, run),
            )
            .await;
        let (row, next) = match result {
            Ok(row) => row.map_err(database_error)?,
            Err(_) => {
                // The statement may still be running on it: do not reuse
                // (the server ends it at `statement_timeout`).
                *slot = None;
                return Err(timeout_error(self.pg.timeout));
            }
        };
        if let Some(warned) = warned {
            return Err(warned);
        }
        let Some(row) = row else {
            // Indexes this replica knows were given would be given again:
            // their receipts would contradict the tree.
            self.judge(next.and_then(|next| behind_sequence(next, known)))?;
            return Err(LogError::Full(self.settings.max_records));
        };
        let (first, inserted): (i64, i64) = (row.get(0), row.get(1));
        if inserted != n {
            return Err(LogError::Database(format!(
                "inserted {inserted} of {n} records"
            )));
        }
        let first =
            u64::try_from(first).map_err(|_| LogError::Database("negative index".into()))?;
        self.sequenced
            .fetch_max(first + batch.len() as u64, Ordering::Relaxed);
        {
            let mut acknowledged = lock(&self.acknowledged);
            for (i, p) in batch.iter().enumerate() {
                acknowledged.insert(first + i as u64, merkle::leaf_hash(&p.data));
            }
            while acknowledged.len() > ACKNOWLEDGED_KEPT {
                acknowledged.pop_first();
            }
        }
        Ok(first)
    }

    /// [`Fleet::catch_up`]. A read that comes less than [`CATCH_UP_EVERY`]
    /// after another's catch-up, or while this replica's tick runs, waits
    /// for the window to pass (or the tick to end) rather than answer from
    /// a checkpoint that may predate one stored meanwhile: a reader is not
    /// told 404 for what the log signed. Bounded: after about three
    /// windows it gives up. A size nobody signed stays a 404 once the
    /// stored checkpoint was read after the read was asked (by this read,
    /// another, or a tick); when it was not — the tick held the session
    /// through a slow or stalled database — the reader is told to come
    /// back (`Err`: a 503), not that the log never signed it (PostgreSQL
    /// chaos audit, stop 68: 404s for tiles and proofs another replica had
    /// just signed).
    async fn catch_up(&self, size: u64) -> Result<Arc<Published>, LogError> {
        let every = CATCH_UP_EVERY.as_millis() as u64;
        let asked = monotonic_us();
        // The latest checkpoint, when it covers `size` or is known to be
        // the stored one as of the read's asking.
        let known = || {
            let latest = self.latest.load_full();
            (latest.size >= size || self.followed_from.load(Ordering::Relaxed) >= asked)
                .then_some(latest)
        };
        for _ in 0..3 {
            if let Some(latest) = known() {
                return Ok(latest);
            }
            // On the monotonic clock: on the wall clock, a step back held
            // every catch-up off for its length (time audit, stop 65).
            let now = monotonic_ms();
            let last = self.caught_up_at.load(Ordering::Relaxed);
            if last != 0 && now < last.saturating_add(every) {
                let rest = last.saturating_add(every) - now;
                tokio::time::sleep(Duration::from_millis(rest.min(every))).await;
                continue;
            }
            if self
                .caught_up_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue; // another read is catching up
            }
            // While the tick runs it publishes what it finds itself.
            let Ok(session) = tokio::time::timeout(CATCH_UP_EVERY, self.session.lock()).await
            else {
                continue;
            };
            if session.held.is_some() {
                // The integrator: what it published is the log's.
                return Ok(self.latest.load_full());
            }
            // Not knowing whether the log signed it, the reader is told
            // to come back (503), not that it did not (404).
            if let Err(e) = self.follow(Publish::IfReplicated).await {
                tracing::debug!(error = %e, "following the stored checkpoint for a read failed");
                return known().ok_or(e);
            }
            break;
        }
        known().ok_or_else(|| LogError::Database(format!(
            "no stored checkpoint read since the request came (within {}ms) says whether one covers size {size}: the database is slow, or a stored checkpoint is not yet known to be replicated",
            3 * every
        )))
    }

    /// One checkpoint tick: take the integrator lock if free; integrate if
    /// held; otherwise follow the stored checkpoint.
    async fn tick(&self) -> Result<Arc<Published>, LogError> {
        let result = self.tick_locked().await;
        // Outside the session lock: the write waits for the database.
        self.store_cosignatures().await;
        result
    }

    /// [`Shared::tick`] under the session lock.
    async fn tick_locked(&self) -> Result<Arc<Published>, LogError> {
        let mut session = self.session.lock().await;
        let session = &mut *session;
        let result = if session.held.is_none() {
            match self.try_integrate(session).await {
                Ok(publish) => self.integrate_or_follow(session, publish).await,
                // A corrupt log keeps the lock, so that no replica
                // integrates over it.
                Err(e @ LogError::Corrupt { .. }) => Err(e),
                Err(e) => {
                    // Closing the connection frees the lock if it was
                    // taken; this replica still follows this very tick (a
                    // lock session that cannot connect left its checkpoint
                    // and lost-record checks stale).
                    tracing::warn!(error = %e, "taking the integrator lock failed: following");
                    session.close();
                    self.follow(Publish::IfReplicated).await
                }
            }
        } else {
            self.integrate_or_follow(session, Publish::IfReplicated)
                .await
        };
        self.set_role(session.held.is_some());
        self.probe_writes(result.is_err()).await;
        result
    }

    async fn integrate_or_follow(
        &self,
        session: &mut Session,
        publish: Publish,
    ) -> Result<Arc<Published>, LogError> {
        let (Some(held), Some(client)) = (&mut session.held, &mut session.client) else {
            return self.follow(publish).await;
        };
        match self.integrate(client, &session.warnings, held).await {
            // Refusing to integrate over a corrupt log, still holding the
            // lock.
            Err(e @ LogError::Corrupt { .. }) => Err(e),
            Err(e) => {
                // Fenced by another integrator, the lock session ended, or
                // the database failed: this replica follows from now on,
                // this very tick (its uploads are not refused for it).
                tracing::warn!(error = %e, "integrating the log failed: giving up the integrator lock");
                session.close();
                self.follow(Publish::IfReplicated).await
            }
            ok => ok,
        }
    }

    /// While writes fail, or after a tick whose reads failed, one write
    /// per tick says whether writes work: [`PROBE`], committed as a batch
    /// is. So a database that went down while no upload was written is
    /// found by the next tick, and uploads are refused before they are
    /// forwarded, not each sent to a data centre first and then refused
    /// when its record fails.
    async fn probe_writes(&self, tick_failed: bool) {
        if !tick_failed && !self.unreachable.load(Ordering::Relaxed) {
            return;
        }
        let probe = PROBE;
        let commits = self.commits.load(Ordering::Relaxed);
        match self.replicated(probe, "writes still fail").await {
            Ok(()) => {
                if self.unreachable.swap(false, Ordering::Relaxed) {
                    tracing::info!("the log database takes writes again");
                }
            }
            // A batch committed meanwhile: writes work (the probe timed
            // out waiting behind it).
            Err(_) if self.commits.load(Ordering::Relaxed) != commits => {}
            Err(e) => {
                if !self.unreachable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "the log database takes no writes: uploads are refused until it does");
                }
            }
        }
    }

    /// Commits `statement` (a no-op update) on the writer's connection,
    /// within `pg.timeout`: `Ok` if the commit succeeded without a warning,
    /// so it — and everything committed before it — reached any
    /// synchronous standby. `consequence` says what is not done otherwise.
    async fn replicated(&self, statement: &str, consequence: &str) -> Result<(), LogError> {
        let deadline = tokio::time::Instant::now() + self.pg.timeout;
        let mut slot = tokio::time::timeout_at(deadline, self.writer.lock())
            .await
            .map_err(|_| timeout_error(self.pg.timeout))?;
        let writer = self.writer(&mut slot, deadline).await?;
        let write = writer.client.execute(statement, &[]);
        match writer
            .warnings
            .around(consequence, tokio::time::timeout_at(deadline, write))
            .await
        {
            (Ok(Ok(_)), None) => Ok(()),
            (Ok(Ok(_)), Some(warned)) => Err(warned),
            (Ok(Err(e)), _) => Err(database_error(e)),
            // Timed out: the statement may still run on this connection.
            (Err(_), _) => {
                *slot = None;
                Err(timeout_error(self.pg.timeout))
            }
        }
    }

    /// Whether a stored checkpoint newer than the one served may be
    /// published: only once a commit after reading it reached any
    /// synchronous standby (so it did too). The integrator's commit of it
    /// may have been warned about, and other sessions see a commit whose
    /// standby wait was cancelled: publishing it before then could sign
    /// to readers and witnesses a tree a failover to the standby loses.
    async fn publishable(&self, stored: &Published) -> bool {
        if stored.size <= self.latest.load().size {
            return true;
        }
        match self
            .replicated(
                "UPDATE residency_log_checkpoint SET size = size",
                "the stored checkpoint is not published yet",
            )
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(checkpoint = stored.size, error = %e, "the stored checkpoint is not known to be replicated: not publishing it yet");
                false
            }
        }
    }

    /// The writer's connection, connecting first if there is none (or it
    /// ended).
    async fn writer<'a>(
        &self,
        slot: &'a mut Option<Writer>,
        deadline: tokio::time::Instant,
    ) -> Result<&'a Writer, LogError> {
        if slot.as_ref().is_none_or(|w| w.client.is_closed()) {
            *slot = None;
            let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
            let config = session_config(&self.pg);
            let (client, warnings) = timed(
                limit,
                connect_watched(&config, self.tls.clone(), "sequencer"),
            )
            .await?;
            let sequence = timed(limit, client.prepare(SEQUENCE)).await?;
            *slot = Some(Writer {
                client,
                sequence,
                warnings,
            });
        }
        slot.as_ref().ok_or(LogError::Poisoned)
    }

    /// How many records this replica knows the database committed: its
    /// checkpoint's, and every index it was given or saw sequenced (it may
    /// have acknowledged those, with a signed receipt each, before any
    /// checkpoint covered them).
    fn known(&self) -> u64 {
        self.sequenced
            .load(Ordering::Relaxed)
            .max(self.latest.load().size)
    }

    /// Why the database is behind the checkpoint this replica served, if
    /// its stored checkpoint is: smaller, gone, or of another root.
    fn behind_checkpoint(&self, stored: Option<&Published>) -> Option<String> {
        let served = self.latest.load();
        match stored {
            Some(cp) if cp.size < served.size => {
                Some(format!("its checkpoint is of size {}", cp.size))
            }
            Some(cp) if cp.size == served.size && cp.root != served.root => Some(format!(
                "its checkpoint of size {} has another root",
                cp.size
            )),
            None if served.size > 0 => Some("it holds no checkpoint".into()),
            _ => None,
        }
    }

    /// Why the stored tree does not extend the checkpoint this replica
    /// served, if it does not: its tiles at the served size hash to another
    /// root. A database that lost records (restored from a backup) and
    /// was then integrated past the served size by a replica that never
    /// knew them holds a larger checkpoint of another history; size alone
    /// ([`Shared::behind_checkpoint`]) would take it as having caught up.
    /// One query, only when the stored checkpoint is larger.
    async fn forked(
        &self,
        client: &Client,
        stored: Option<&Published>,
    ) -> Result<Option<String>, LogError> {
        let served = self.latest.load_full();
        let Some(cp) = stored.filter(|cp| cp.size > served.size) else {
            return Ok(None);
        };
        if served.size > 0 {
            match edge_at(client, served.size, self.pg.timeout, false).await {
                Ok(edge) if edge.root() == served.root => {}
                Ok(_) => return Ok(Some(format!(
                    "its tree at size {} (the checkpoint this replica served) has another root: another history was integrated over records it lost",
                    served.size
                ))),
                Err(LogError::Corrupt { message, .. }) => return Ok(Some(format!(
                    "its tree at size {} (the checkpoint this replica served) cannot be read: {message}",
                    served.size
                ))),
                Err(e) => return Err(e),
            }
        }
        // The records it acknowledged that the stored checkpoint covers:
        // each its own leaf in the stored tiles.
        let mine: Vec<(u64, Hash)> = {
            let acknowledged = lock(&self.acknowledged);
            acknowledged
                .range(..cp.size)
                .map(|(i, h)| (*i, *h))
                .collect()
        };
        if mine.is_empty() {
            return Ok(None);
        }
        let mut tiles: Vec<i64> = mine.iter().map(|(i, _)| (*i / WIDTH) as i64).collect();
        tiles.dedup();
        let rows = timed(
            self.pg.timeout,
            client.query(
                "SELECT idx, data FROM residency_log_tiles WHERE level = 0 AND idx = ANY($1)",
                &[&tiles],
            ),
        )
        .await?;
        for (i, leaf) in mine {
            let tile = (i / WIDTH) as i64;
            let at = (i % WIDTH) as usize * 32;
            let stored = rows
                .iter()
                .find(|r| r.get::<_, i64>(0) == tile)
                .and_then(|r| r.get::<_, &[u8]>(1).get(at..at + 32).map(<[u8]>::to_vec));
            if stored.as_deref() != Some(&leaf[..]) {
                return Ok(Some(format!(
                    "its record at index {i}, under its checkpoint of size {}, is not the one this replica acknowledged with a receipt: another history was integrated over records it lost",
                    cp.size
                )));
            }
        }
        Ok(None)
    }

    /// The first of `leaves` (from index `from` on) that is not the record
    /// this replica acknowledged at its index, if any.
    fn contradicts(&self, from: u64, leaves: &[Hash]) -> Option<u64> {
        let acknowledged = lock(&self.acknowledged);
        let end = from + leaves.len() as u64;
        acknowledged
            .range(from..end)
            .find(|(i, h)| leaves[(**i - from) as usize] != **h)
            .map(|(i, _)| *i)
    }

    /// Why the database is behind or forked from what this replica
    /// served, if it is: its sequence, its checkpoint's size or root, or
    /// its tree at the served size.
    async fn diverged(
        &self,
        client: &Client,
        sequenced: u64,
        known: u64,
        stored: Option<&Published>,
    ) -> Result<Option<String>, LogError> {
        match behind_sequence(sequenced, known).or_else(|| self.behind_checkpoint(stored)) {
            Some(why) => Ok(Some(why)),
            None => self.forked(client, stored).await,
        }
    }

    /// Sets or clears [`Shared::lost`] by `behind`; `Err` while the
    /// database is behind.
    fn judge(&self, behind: Option<String>) -> Result<(), LogError> {
        let Some(why) = behind else {
            if self.lost.swap(false, Ordering::Relaxed) {
                tracing::warn!("the log database holds what this replica served again");
            }
            return Ok(());
        };
        let message = format!(
            "the database is behind what this replica served (its checkpoint: size {}): {why}. It lost committed records (a failover to a standby that lagged? a restored backup?). {LOST}",
            self.latest.load().size
        );
        if !self.lost.swap(true, Ordering::Relaxed) {
            tracing::error!("{message}");
        }
        Err(LogError::Corrupt {
            path: self.pg.url.clone(),
            message,
        })
    }

    fn set_role(&self, held: bool) {
        if held != self.is_integrator.swap(held, Ordering::Relaxed) {
            tracing::info!(integrator = held, "integrator role changed");
        }
        self.metrics.integrator.set(i64::from(held));
    }

    /// Takes the integrator lock on the session's connection, if free, and
    /// rebuilds the right edge at the stored checkpoint (which it must
    /// hash to, and which must not be behind what this replica served).
    /// Returns [`Publish::NotYet`] when it holds the lock but the stored
    /// checkpoint is not known to be replicated yet: the tick's follow then
    /// does not repeat the confirming write.
    async fn try_integrate(&self, session: &mut Session) -> Result<Publish, LogError> {
        if session.client.as_ref().is_none_or(Client::is_closed) {
            session.locked = false;
            let config = lock_session_config(&self.pg, self.settings.checkpoint_interval);
            let connect = connect_watched(&config, self.tls.clone(), "integrator lock");
            let (client, warnings) = timed(self.pg.timeout, connect).await?;
            session.client = Some(client);
            session.warnings = warnings;
        }
        let Some(client) = &session.client else {
            return Ok(Publish::IfReplicated);
        };
        if !session.locked {
            let taken: bool = timed(
                self.pg.timeout,
                client.query_one("SELECT pg_try_advisory_lock($1)", &[&INTEGRATOR_LOCK]),
            )
            .await?
            .get(0);
            if !taken {
                return Ok(Publish::IfReplicated);
            }
            session.locked = true;
        }
        // What this replica knows is read before the database's sequence
        // (as `integrate` and `follow` do): read after it, a batch of its
        // own committed in between made a healthy database look behind —
        // a false loss that refused uploads until the next tick.
        let known = self.known();
        let stored = self.stored_checkpoint(client).await?;
        // Judged as a follower judges (the sequence too): the checkpoint
        // alone would clear a loss found in the sequence, and the uploads
        // refused for it would be taken until the integration found it again.
        let sequenced = sequence_at(client, self.pg.timeout).await?;
        self.judge(
            self.diverged(client, sequenced, known, stored.as_ref())
                .await?,
        )?;
        if let Some(cp) = &stored {
            if !self.publishable(cp).await {
                // Holding the lock, the next tick tries again.
                return Ok(Publish::NotYet);
            }
        }
        let (size, root) = stored
            .as_ref()
            .map_or((0, merkle::empty_root()), |c| (c.size, c.root));
        // Tiles found missing keep the lock (`Corrupt`).
        let edge = edge_at(client, size, self.pg.timeout, true).await?;
        if edge.root() != root {
            return Err(LogError::Corrupt {
                path: self.pg.url.clone(),
                message: format!(
                    "the stored tiles at the checkpoint's size {size} hash to {} but the checkpoint says {}: committed tiles were altered; not integrating",
                    residency_core::hex::encode(&edge.root()),
                    residency_core::hex::encode(&root)
                ),
            });
        }
        match &stored {
            Some(cp) => {
                let mut cp = cp.clone();
                self.keep_ours(&mut cp);
                self.publish(cp);
            }
            // Nothing signed yet: the empty tree's is the log's.
            None => self.confirmed.store(true, Ordering::Relaxed),
        }
        tracing::info!(checkpoint = size, "took the integrator lock");
        session.held = Some(Integrated {
            edge,
            stored: stored.map(|c| c.size),
        });
        Ok(Publish::IfReplicated)
    }

    /// The stored checkpoint, verified with the log's key.
    async fn stored_checkpoint(&self, client: &Client) -> Result<Option<Published>, LogError> {
        let row = timed(
            self.pg.timeout,
            client.query_opt("SELECT size, note FROM residency_log_checkpoint", &[]),
        )
        .await?;
        let Some(row) = row else { return Ok(None) };
        let note: String = row.get(1);
        let cp = Checkpoint::open(&note, &self.verifier).map_err(|e| LogError::Corrupt {
            path: self.pg.url.clone(),
            message: format!("the stored checkpoint: {e}"),
        })?;
        if cp.origin != self.settings.origin || i64::try_from(cp.size).ok() != Some(row.get(0)) {
            return Err(LogError::Corrupt {
                path: self.pg.url.clone(),
                message: format!(
                    "the stored checkpoint is for `{}` at size {}, not this log's",
                    cp.origin, cp.size
                ),
            });
        }
        Ok(Some(Published {
            note,
            size: cp.size,
            root: cp.root,
        }))
    }

    /// Integrates the entries sequenced since the last checkpoint, a chunk
    /// at a time, each with its tiles and a signed checkpoint stored in one
    /// transaction.
    async fn integrate(
        &self,
        client: &mut Client,
        warnings: &Warnings,
        integrator: &mut Integrated,
    ) -> Result<Arc<Published>, LogError> {
        // Up to the sequence as of now: records appended meanwhile wait
        // for the next tick, so a busy log still gets a checkpoint per tick.
        let now = unix_now();
        let known = self.known();
        let sequenced = sequence_at(client, self.pg.timeout).await?;
        self.judge(behind_sequence(sequenced, known))?;
        self.sequenced.fetch_max(sequenced, Ordering::Relaxed);
        self.observe(now, sequenced);
        let started = std::time::Instant::now();
        for step in 0.. {
            if step >= INTEGRATE_STEPS && started.elapsed() >= self.settings.checkpoint_interval {
                break; // the rest at the next tick, at once
            }
            let from = integrator.edge.size();
            if from == sequenced && integrator.stored.is_some() {
                break;
            }
            let to = sequenced.min(from + INTEGRATE_CHUNK);
            let rows = timed_long(
                self.pg.timeout,
                client.query(
                    "SELECT idx, data FROM residency_log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                    &[&(from as i64), &(to as i64)],
                ),
            )
            .await?;
            if rows.len() as u64 != to - from {
                return Err(LogError::Corrupt {
                    path: self.pg.url.clone(),
                    message: format!(
                        "{} entries in [{from}, {to}) although the sequence is at {sequenced}",
                        rows.len()
                    ),
                });
            }
            let mut edge = integrator.edge.clone();
            let mut tiles: Vec<(i16, i64, Vec<u8>)> = Vec::new();
            let leaves: Vec<Hash> = rows
                .iter()
                .map(|row| merkle::leaf_hash(row.get::<_, &[u8]>(1)))
                .collect();
            if let Some(i) = self.contradicts(from, &leaves) {
                // Another record where this replica acknowledged one: the
                // database lost it, and is not integrated over.
                self.judge(Some(format!(
                    "its entry at index {i} is not the record this replica acknowledged with a receipt"
                )))?;
            }
            for leaf in leaves {
                for full in edge.push(leaf) {
                    let tile = full.tile();
                    tiles.push((tile_level(tile), tile.index as i64, full.bytes()));
                }
            }
            // Full tiles, as the directory counts them (partials are
            // stored at every checkpoint).
            let written = tiles.len();
            for (tile, hashes) in edge.partials() {
                tiles.push((tile_level(tile), tile.index as i64, hashes.concat()));
            }
            let root = edge.root();
            let note = sign_checkpoint(&self.settings, &self.signer, to, root)?;
            let expected = integrator.stored.map_or(-1, |s| s as i64);
            let transaction = async {
                let txn = client.transaction().await?;
                let (levels, indexes, data): (Vec<i16>, Vec<i64>, Vec<Vec<u8>>) =
                    tiles.into_iter().fold(
                        (Vec::new(), Vec::new(), Vec::new()),
                        |(mut l, mut i, mut d), (level, index, bytes)| {
                            l.push(level);
                            i.push(index);
                            d.push(bytes);
                            (l, i, d)
                        },
                    );
                txn.execute(STORE_TILES, &[&levels, &indexes, &data])
                    .await?;
                let stored = txn
                    .execute(STORE_CHECKPOINT, &[&(to as i64), &note, &expected])
                    .await?;
                if stored == 1 {
                    txn.commit().await?;
                }
                Ok::<_, tokio_postgres::Error>(stored == 1)
            };
            let (stored, warned) = warnings
                .around(
                    "the checkpoint is not published",
                    timed_long(self.pg.timeout, transaction),
                )
                .await;
            if !stored? {
                return Err(LogError::Database(format!(
                    "the stored checkpoint is no longer the one of size {expected}: another replica integrated"
                )));
            }
            // Stored, perhaps only on this server: a replica publishes it
            // once a later commit is replicated ([`Shared::publishable`]).
            if let Some(warned) = warned {
                return Err(warned);
            }
            integrator.edge = edge;
            integrator.stored = Some(to);
            self.metrics.tiles_written.inc_by(written as u64);
            self.publish(Published {
                note,
                size: to,
                root,
            });
        }
        Ok(self.confirm())
    }

    /// Reads the stored checkpoint and the sequence (a replica that does
    /// not integrate), and publishes a newer stored checkpoint if `publish`
    /// allows and it is known to be replicated.
    async fn follow(&self, publish: Publish) -> Result<Arc<Published>, LogError> {
        let began = monotonic_us();
        let client = self.client().await?;
        let now = unix_now();
        let known = self.known();
        let sequenced = sequence_at(&client, self.pg.timeout).await?;
        let stored = self.stored_checkpoint(&client).await?;
        // Never back, nor onto another history: what was served stays
        // served, and the database that lost it is not written to.
        self.judge(
            self.diverged(&client, sequenced, known, stored.as_ref())
                .await?,
        )?;
        self.sequenced.fetch_max(sequenced, Ordering::Relaxed);
        self.observe(now, sequenced);
        // Whether what is served now is the stored checkpoint (as of
        // `began`, for [`Shared::catch_up`]).
        let mut serves_stored = true;
        if stored.is_none() {
            // Nothing signed yet: the empty tree's is the log's.
            self.confirmed.store(true, Ordering::Relaxed);
        }
        if let Some(mut cp) = stored {
            self.keep_ours(&mut cp);
            let newer = {
                let latest = self.latest.load();
                cp.size > latest.size || cp.note != latest.note
            };
            if !newer {
                // Already the one served: this replica's is the log's.
                self.confirmed.store(true, Ordering::Relaxed);
            } else if publish == Publish::IfReplicated && self.publishable(&cp).await {
                self.publish(cp);
            } else {
                serves_stored = false;
            }
        }
        if serves_stored {
            self.followed_from.fetch_max(began, Ordering::Relaxed);
        }
        Ok(self.confirm())
    }

    fn publish(&self, published: Published) {
        // A checkpoint covers records sequenced already, whichever order
        // the follower read the two in: proofs up to its size are served.
        self.sequenced.fetch_max(published.size, Ordering::Relaxed);
        // Checked against it before it was published: held from now on
        // by its root.
        {
            let mut acknowledged = lock(&self.acknowledged);
            *acknowledged = acknowledged.split_off(&published.size);
        }
        self.metrics.checkpoint_size.set(published.size as i64);
        self.latest.store(Arc::new(published));
        self.confirmed.store(true, Ordering::Relaxed);
    }

    /// Notes that every record sequenced as of `at` is below `sequence`.
    fn observe(&self, at: i64, sequence: u64) {
        let mut seen = lock(&self.coverage);
        if seen.len() >= COVERAGE_KEPT {
            seen.pop_front();
        }
        seen.push_back((at, sequence));
    }

    /// Updates the size, lag and age gauges after a tick: the checkpoint
    /// covers every record as of the newest tick whose sequence it covers
    /// (so under steady load, a tick or two ago; not "now", which a busy
    /// fleet's checkpoint never is).
    fn confirm(&self) -> Arc<Published> {
        let latest = self.latest.load_full();
        let sequenced = self.sequenced.load(Ordering::Relaxed);
        let lag = sequenced.saturating_sub(latest.size);
        self.metrics.size.set(sequenced as i64);
        self.metrics.integration_lag.set(lag as i64);
        let mut covered = None;
        {
            let mut seen = lock(&self.coverage);
            while let Some(&(at, sequence)) = seen.front() {
                if sequence > latest.size {
                    break;
                }
                covered = Some(at);
                seen.pop_front();
            }
        }
        if let Some(at) = covered {
            // As observed, not the largest ever: after the clock ran
            // ahead, the largest stayed in the future and the age at 0,
            // so a stale checkpoint raised no alert (time audit, stop 65).
            self.metrics.checkpoint_timestamp.set(at);
            self.metrics.checkpoint_age.set((unix_now() - at).max(0));
        }
        latest
    }

    async fn add_cosignatures(&self, size: u64, lines: &[String]) -> bool {
        if cosign(&self.latest, size, lines).is_none() {
            return false;
        }
        self.unstored.store(true, Ordering::Release);
        self.store_cosignatures().await;
        true
    }

    /// `cp`, as read from the database, keeps the cosignatures this
    /// replica serves on the same checkpoint (their write may have failed,
    /// or lost a race), which are then stored again: a follow, or a lock
    /// taken, would otherwise swap them back for the stored note, and the
    /// witness is not asked again for that checkpoint.
    fn keep_ours(&self, cp: &mut Published) {
        let latest = self.latest.load();
        if cp.size != latest.size || cp.root != latest.root {
            return;
        }
        let kept = keep_cosignatures(&cp.note, &latest.note);
        if kept != cp.note {
            self.unstored.store(true, Ordering::Release);
            cp.note = kept;
        }
    }

    /// Stores the served checkpoint's cosignatures with those of the
    /// stored one (another replica may have added its own) if it is still
    /// the same checkpoint: only over the note as read, so that no
    /// replica's write drops another's lines. One that fails or loses the
    /// race is tried again at the next tick. The flag is taken before the
    /// served note is read, and given back unless the write succeeded: a
    /// cosignature added meanwhile (witnesses answer in tasks of their
    /// own) sets it again and is stored after, not lost with the flag.
    async fn store_cosignatures(&self) {
        // Every tick calls this: most find nothing to store.
        if !self.unstored.load(Ordering::Acquire) {
            return;
        }
        let _one = self.storing.lock().await;
        if !self.unstored.swap(false, Ordering::AcqRel) {
            return;
        }
        let served = self.latest.load_full();
        let stored = async {
            let client = self.client().await?;
            let row = timed(
                self.pg.timeout,
                client.query_opt(
                    "SELECT note FROM residency_log_checkpoint WHERE size = $1",
                    &[&(served.size as i64)],
                ),
            )
            .await?;
            // Another checkpoint now: its own are asked for.
            let Some(row) = row else { return Ok(true) };
            let note: String = row.get(0);
            let body = |n: &str| n.split_once("\n\n").map(|(body, _)| body.to_owned());
            if body(&note) != body(&served.note) {
                return Ok(true);
            }
            let merged = keep_cosignatures(&note, &served.note);
            if merged == note {
                return Ok(true);
            }
            let updated = timed(
                self.pg.timeout,
                client.execute(
                    "UPDATE residency_log_checkpoint SET note = $1 WHERE size = $2 AND note = $3",
                    &[&merged, &(served.size as i64), &note],
                ),
            )
            .await?;
            Ok::<_, LogError>(updated == 1)
        };
        match stored.await {
            Ok(true) => {
                if self.store_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the cosigned checkpoint is stored");
                }
            }
            Ok(false) => self.unstored.store(true, Ordering::Release),
            Err(e) => {
                self.unstored.store(true, Ordering::Release);
                if !self.store_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot store the cosigned checkpoint; this replica serves it and tries again at each tick");
                }
            }
        }
    }

    /// A tile of the integrated tree: a hash tile from its row (a longer
    /// row holds it as a prefix), an entry bundle from its entries.
    async fn tile(&self, tile: Tile) -> Result<Option<Vec<u8>>, LogError> {
        let key = (tile_level(tile), tile.index);
        let full = u64::from(tile.width) == WIDTH;
        if full {
            if let Some(bytes) = self.cache.get(&key) {
                return Ok(Some(bytes.as_ref().clone()));
            }
        }
        let (Ok(index), Some(first)) = (i64::try_from(tile.index), tile.index.checked_mul(WIDTH))
        else {
            return Ok(None);
        };
        let (_permit, client) = self.read_client().await?;
        let bytes = match tile.level {
            Some(_) => {
                let row = timed(
                    self.pg.timeout,
                    client.query_opt(
                        "SELECT data FROM residency_log_tiles WHERE level = $1 AND idx = $2",
                        &[&key.0, &index],
                    ),
                )
                .await?;
                let data: Vec<u8> = match row {
                    Some(row) => row.get(0),
                    None => return Ok(None),
                };
                let want = 32 * usize::from(tile.width);
                if data.len() < want {
                    return Ok(None);
                }
                data[..want].to_vec()
            }
            None => {
                let end = first + u64::from(tile.width);
                let (Ok(from), Ok(to)) = (i64::try_from(first), i64::try_from(end)) else {
                    return Ok(None);
                };
                let rows = timed(
                    self.pg.timeout,
                    client.query(
                        "SELECT data FROM residency_log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                        &[&from, &to],
                    ),
                )
                .await?;
                if rows.len() != usize::from(tile.width) {
                    return Ok(None);
                }
                let mut bundle = Vec::new();
                for row in &rows {
                    tiles::push_entry(&mut bundle, row.get::<_, &[u8]>(0));
                }
                bundle
            }
        };
        if full {
            self.cache.insert(key, Arc::new(bytes.clone()));
        }
        Ok(Some(bytes))
    }
}

/// The sequencer task: batch after batch until every sender is gone.
///
/// While the log is busy (the last batch ended less than [`BUSY`] ago), a
/// batch waits for more records until `commit_window` (default 1 ms) after
/// its first record was queued (records that queued behind a slow
/// transaction have waited already), so one transaction — whose cost in
/// PostgreSQL hardly depends on its size — covers more of them; an idle
/// log sends a lone record at once.
async fn sequence(shared: Arc<Shared>, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_done: Option<Instant> = None;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if last_done.is_some_and(|t| t.elapsed() < BUSY) {
            let deadline = batch[0].queued + shared.settings.commit_window;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                let more = rx.recv_many(&mut batch, room);
                match tokio::time::timeout_at(deadline, more).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        // Records that waited longer than `timeout` for a database that
        // did not answer (batches before them failed slowly) fail now:
        // each upload's wait stays bounded, not a timeout per batch ahead.
        if batch[0].queued.elapsed() > shared.pg.timeout {
            let limit = shared.pg.timeout;
            for p in batch.extract_if(.., |p| p.queued.elapsed() > limit) {
                let _ = p.reply.send(Err(timeout_error(limit)));
            }
            if batch.is_empty() {
                continue;
            }
        }
        let started = Instant::now();
        let result = shared.commit(&batch).await;
        shared
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        shared.metrics.batch_records.observe(batch.len() as f64);
        last_done = Some(Instant::now());
        match result {
            Ok(first) => {
                for (i, p) in batch.drain(..).enumerate() {
                    let _ = p.reply.send(Ok((first + i as u64, p.data)));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(match &e {
                        LogError::Full(n) => LogError::Full(*n),
                        _ => LogError::Database(message.clone()),
                    }));
                }
            }
        }
    }
}

/// Applies the migrations this binary knows and the database lacks, one
/// replica at a time; refuses a database migrated by a newer binary.
/// Returns the schema version.
async fn migrate(client: &mut Object) -> Result<i32, LogError> {
    let txn = client.transaction().await.map_err(database_error)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(database_error)?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS residency_log_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(database_error)?;
    let current: i32 = txn
        .query_one(
            "SELECT coalesce(max(version), 0) FROM residency_log_schema",
            &[],
        )
        .await
        .map_err(database_error)?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > known {
        return Err(LogError::Database(format!(
            "the database's log schema is version {current}, newer than this binary's {known}: upgrade the proxy"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        txn.batch_execute(sql).await.map_err(database_error)?;
        txn.execute(
            "INSERT INTO residency_log_schema (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(database_error)?;
        tracing::info!(version, "log database schema migrated");
    }
    txn.commit().await.map_err(database_error)?;
    Ok(known)
}

/// Ties the database to this log at its first start; later starts must be
/// for the same origin and key.
async fn bind(client: &Object, origin: &str, vkey: &str) -> Result<(), LogError> {
    client
        .execute(
            "INSERT INTO residency_log_identity (origin, verifier_key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&origin, &vkey],
        )
        .await
        .map_err(database_error)?;
    let row = client
        .query_one(
            "SELECT origin, verifier_key FROM residency_log_identity",
            &[],
        )
        .await
        .map_err(database_error)?;
    same_log(
        &row.get::<_, String>(0),
        &row.get::<_, String>(1),
        origin,
        vkey,
    )
}

/// The database's log (`stored_origin`, `stored_key`) is this one, or why
/// not.
fn same_log(
    stored_origin: &str,
    stored_key: &str,
    origin: &str,
    vkey: &str,
) -> Result<(), LogError> {
    if stored_origin != origin || stored_key != vkey {
        return Err(LogError::Database(format!(
            "the database holds the log `{stored_origin}` (key {stored_key}), not `{origin}` (key {vkey}): every replica needs the same transparency.origin and signing_key; a new log needs a new database"
        )));
    }
    Ok(())
}

/// What `check-config` reports about a fleet's database: reachable, its
/// schema version against this binary's, and the log it holds, which must
/// be this one (`origin`, verifier key `vkey`), as `serve` requires.
pub async fn check(pg: &Postgres, origin: &str, vkey: &str) -> Result<String, LogError> {
    let config = session_config(pg);
    let (client, connection) = timed(pg.timeout, config.connect(tls(pg)?)).await?;
    tokio::spawn(connection);
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    let exists: bool = timed(
        pg.timeout,
        client.query_one(
            "SELECT to_regclass('residency_log_schema') IS NOT NULL",
            &[],
        ),
    )
    .await?
    .get(0);
    if !exists {
        return Ok(format!(
            "connected; no log schema yet (version {known} is created at the first start)"
        ));
    }
    let current: i32 = timed(
        pg.timeout,
        client.query_one(
            "SELECT coalesce(max(version), 0) FROM residency_log_schema",
            &[],
        ),
    )
    .await?
    .get(0);
    // Created with the schema's first version.
    let identity = timed(
        pg.timeout,
        client.query_opt(
            "SELECT origin, verifier_key FROM residency_log_identity",
            &[],
        ),
    )
    .await?;
    if let Some(row) = identity {
        same_log(
            &row.get::<_, String>(0),
            &row.get::<_, String>(1),
            origin,
            vkey,
        )?;
    }
    match current.cmp(&known) {
        std::cmp::Ordering::Equal => Ok(format!("connected; log schema version {current}")),
        std::cmp::Ordering::Less => Ok(format!(
            "connected; log schema version {current} (migrated to {known} at the next start)"
        )),
        std::cmp::Ordering::Greater => Err(LogError::Database(format!(
            "the database's log schema is version {current}, newer than this binary's {known}: upgrade the proxy"
        ))),
    }
}

/// The right edge of the tree of `size` leaves from the stored tiles:
/// each level's partial tile is a prefix of its stored row (read in one
/// query, within `transparency.postgres.timeout`, or [`LONG`] times it
/// with `long`). Tiles found missing are [`LogError::Corrupt`], not a
/// database error: a loss, not a moment's failure.
async fn edge_at(
    client: &Client,
    size: u64,
    timeout: Duration,
    long: bool,
) -> Result<Edge, LogError> {
    let mut wanted: Vec<(u8, u64, usize)> = Vec::new();
    let mut level = 0u8;
    while size.checked_shr(8 * u32::from(level)).unwrap_or(0) > 0 {
        let width = Edge::width_at(size, level) as usize;
        wanted.push((level, Edge::index_at(size, level), width));
        level += 1;
    }
    let (levels, indexes): (Vec<i16>, Vec<i64>) = wanted
        .iter()
        .filter(|(_, _, width)| *width > 0)
        .map(|(level, index, _)| (i16::from(*level), *index as i64))
        .unzip();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&levels, &indexes];
    let query = client.query(
        "SELECT level, idx, data FROM residency_log_tiles \
         WHERE (level, idx) IN (SELECT * FROM unnest($1::int2[], $2::int8[]))",
        &params,
    );
    let rows = if long {
        timed_long(timeout, query).await?
    } else {
        timed(timeout, query).await?
    };
    let mut partials = Vec::with_capacity(wanted.len());
    for (level, index, width) in wanted {
        let mut hashes = Vec::with_capacity(width);
        if width > 0 {
            let data: &[u8] = rows
                .iter()
                .find(|r| {
                    r.get::<_, i16>(0) == i16::from(level) && r.get::<_, i64>(1) == index as i64
                })
                .map_or(&[], |r| r.get(2));
            if data.len() < 32 * width {
                return Err(LogError::Corrupt {
                    path: format!("residency_log_tiles ({level}, {index})"),
                    message: format!(
                        "holds {} hashes, the checkpoint's size {size} needs {width}: committed tiles are missing",
                        data.len() / 32
                    ),
                });
            }
            for chunk in data[..32 * width].chunks(32) {
                let mut h: Hash = [0; 32];
                h.copy_from_slice(chunk);
                hashes.push(h);
            }
        }
        partials.push(hashes);
    }
    Edge::from_partials(size, partials).map_err(|message| LogError::Corrupt {
        path: "residency_log_tiles".into(),
        message,
    })
}

/// The tiles table's level: -1 for entry bundles (cache keys only).
fn tile_level(tile: Tile) -> i16 {
    tile.level.map_or(-1, i16::from)
}

/// The configured connection, with what the log relies on: commits
/// acknowledged only once durable, Read Committed whatever the database's
/// default (a batch waiting on the sequence row re-reads it, where
/// Repeatable Read would fail to serialize), a connect timeout, an application name,
/// and server-side bounds for what the proxy stops waiting for: a batch
/// waiting on the sequence row's lock fails on the server just before the
/// proxy's own `timeout` would (so its connection stays usable), and a
/// statement or open transaction the proxy abandoned ends on the server
/// too, instead of holding a backend until it finishes. `client_min_messages`
/// is pinned at `warning`: a commit whose wait for a synchronous standby
/// was cancelled succeeds locally with a WARNING, and that warning is how
/// the log knows not to acknowledge it — a role, database or server set to
/// `error` would otherwise hide it.
fn session_config(pg: &Postgres) -> tokio_postgres::Config {
    let mut config = pg.config.0.clone();
    let options = config.get_options().unwrap_or_default().to_string();
    let abandoned = (LONG * pg.timeout + Duration::from_secs(1)).as_millis();
    config.options(
        format!(
            "{options} -c synchronous_commit=on -c client_min_messages=warning -c default_transaction_isolation=read\\ committed -c lock_timeout={} -c statement_timeout={abandoned} -c idle_in_transaction_session_timeout={abandoned}",
            (pg.timeout * 9 / 10).as_millis().max(1),
        )
        .trim(),
    );
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(pg.timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("residency-proxy");
    }
    config.keepalives_idle(Duration::from_secs(10));
    config
}

/// The integrator-lock session's connection: as [`session_config`], and the
/// server ends it — freeing the lock — when it stays idle for four
/// checkpoint intervals (at least 2 s; a live replica runs a query every
/// tick), in a transaction or not (a replica frozen mid-checkpoint), or its
/// peer stops answering TCP keepalives (about 11 s) or, while the server
/// is sending it a result, stops acknowledging it for 11 s
/// (`tcp_user_timeout`: keepalives do not run while data is unacknowledged,
/// nor does a statement timeout end a backend blocked writing). So a replica cut off
/// from the database, not only a dead one, loses the lock and another takes
/// over; whatever the cut-off one still tries to store is fenced by the
/// checkpoint's expected size.
fn lock_session_config(pg: &Postgres, interval: Duration) -> tokio_postgres::Config {
    let mut config = session_config(pg);
    let idle = (interval * 4).max(Duration::from_secs(2)).as_millis();
    let options = config.get_options().unwrap_or_default().to_string();
    config.options(format!(
        "{options} -c idle_session_timeout={idle} -c idle_in_transaction_session_timeout={idle} -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout=11000"
    ));
    config
}

/// rustls for `sslmode=require`/`prefer`: the server's certificate and
/// name are verified against `ca` (or the system's roots).
fn tls(pg: &Postgres) -> Result<MakeRustlsConnect, LogError> {
    let mut roots = rustls::RootCertStore::empty();
    let tls_error = |message: String| LogError::Database(format!("TLS: {message}"));
    match &pg.ca {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_error(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `future`, or a database error when it takes longer than `limit`.
async fn timed<T, E: std::error::Error>(
    limit: Duration,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, LogError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(|e| LogError::Database(describe(&e))),
        Err(_) => Err(timeout_error(limit)),
    }
}

/// An error and its sources ("db error" alone says nothing: the server's
/// message is its source).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// How many times `transparency.postgres.timeout` a long statement has:
/// the integrator's reads and transactions, a migration.
const LONG: u32 = 4;

/// [`timed`] for a long statement: [`LONG`] times `timeout`.
async fn timed_long<T, E: std::error::Error>(
    timeout: Duration,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, LogError> {
    match tokio::time::timeout(LONG * timeout, future).await {
        Ok(result) => result.map_err(|e| LogError::Database(describe(&e))),
        Err(_) => Err(long_timeout_error(timeout)),
    }
}

fn long_timeout_error(timeout: Duration) -> LogError {
    LogError::Database(format!(
        "no answer within {} ({LONG} times transparency.postgres.timeout, for a long statement)",
        humantime::format_duration(LONG * timeout)
    ))
}

fn timeout_error(limit: Duration) -> LogError {
    LogError::Database(format!(
        "no answer within {} (transparency.postgres.timeout)",
        humantime::format_duration(limit)
    ))
}

fn database_error(e: tokio_postgres::Error) -> LogError {
    LogError::Database(describe(&e))
}

/// Milliseconds on the process's monotonic clock, from 1 (0 is "never").
fn monotonic_ms() -> u64 {
    monotonic_us() / 1000 + 1
}

/// Microseconds on the monotonic clock, from the first call on (at least 1).
fn monotonic_us() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
        + 1
}

/// Warns when this replica's clock is more than [`CLOCK_SKEW`] from the
/// database's: records carry the replica's time, so a replica off by an
/// hour writes its records an hour out of order with the others', which
/// nothing else flags (time audit, stop 65). Said once, at start.
async fn clock_against(client: &Client) {
    let Ok(row) = client
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
    else {
        return;
    };
    let Ok(database) = row.try_get::<_, f64>(0) else {
        return;
    };
    let here = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let off = here - database;
    if off.abs() > CLOCK_SKEW.as_secs_f64() {
        tracing::warn!(
            seconds = format!("{off:+.1}"),
            "this replica's clock is off the log database's: records carry the replica's time, so they are out of order with other replicas'; check NTP on this host (or the database's)"
        );
    }
}

/// How far a replica's clock may be from the database's unsaid.
const CLOCK_SKEW: Duration = Duration::from_secs(5);
