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
//!   on`) before any record of the batch is acknowledged. A batch slower
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

use crate::backend::{cosign, unix_now, LogError, LogMetrics, Published};
use crate::edge::Edge;
use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, Signer, Verifier};
use crate::settings::{Postgres, Transparency};
use crate::tiles::{self, Tile, WIDTH};

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
/// Steps per checkpoint tick at most (each stores a checkpoint), so a long
/// backlog does not hold the tick forever: the rest waits for the next.
const INTEGRATE_STEPS: usize = 16;
/// Memory for full tiles and entry bundles served from cache.
const CACHE_BYTES: u64 = 32 << 20;

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

/// Assigns `$1` contiguous indexes (unless that would pass `$4` records)
/// and inserts the batch's request keys `$2` and entries `$3` at them, in
/// one statement (one transaction, one round trip). Returns the first
/// index and the rows inserted; no row when the log is full.
const SEQUENCE: &str = "
WITH seq AS (
    UPDATE residency_log_sequence SET next = next + $1
    WHERE next + $1 <= $4
    RETURNING next - $1 AS first
), ins AS (
    INSERT INTO residency_log_entries (idx, request_key, data)
    SELECT seq.first + e.n - 1, e.k, e.d
    FROM seq, unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS e(k, d, n)
    RETURNING 1
)
SELECT first, (SELECT count(*) FROM ins) FROM seq";

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
    held: Option<Integrated>,
}

struct Integrated {
    edge: Edge,
    /// The stored checkpoint's size, or `None` before the first.
    stored: Option<u64>,
}

struct Shared {
    settings: Transparency,
    pg: Postgres,
    signer: Signer,
    verifier: Verifier,
    pool: Pool,
    tls: MakeRustlsConnect,
    latest: ArcSwap<Published>,
    /// The sequence as last seen (records appended by the whole fleet).
    sequenced: AtomicU64,
    /// The last database operation failed for want of a connection.
    unreachable: AtomicBool,
    session: tokio::sync::Mutex<Session>,
    is_integrator: AtomicBool,
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
            source,
        })?;
        let key_error = |source| LogError::Key {
            path: key_path.display().to_string(),
            source,
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
            let version = migrate(&mut client).await?;
            bind(&client, &settings.origin, &signer.verifier_key()).await?;
            tracing::debug!(version, "log database schema ready");
        }
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            pg: pg.clone(),
            signer,
            verifier,
            pool,
            tls,
            latest: ArcSwap::from_pointee(Published {
                note: String::new(),
                size: 0,
                root: merkle::empty_root(),
            }),
            sequenced: AtomicU64::new(0),
            unreachable: AtomicBool::new(false),
            session: tokio::sync::Mutex::new(Session::default()),
            is_integrator: AtomicBool::new(false),
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

    /// The last database operation failed for want of a connection.
    pub fn unreachable(&self) -> bool {
        self.shared.unreachable.load(Ordering::Relaxed)
    }

    pub fn is_integrator(&self) -> bool {
        self.shared.is_integrator.load(Ordering::Relaxed)
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

    /// Any tile of the integrated tree (blocking: a database read unless
    /// cached).
    pub fn any_tile(&self, tile: Tile) -> Option<Vec<u8>> {
        self.handle.block_on(self.shared.tile(tile))
    }

    /// The stored bytes of leaf `index` (blocking).
    pub fn record(&self, index: u64) -> Option<Vec<u8>> {
        let index = i64::try_from(index).ok()?;
        self.handle.block_on(async {
            let client = self.shared.client().await.ok()?;
            let row = timed(
                self.shared.pg.timeout,
                client.query_opt(
                    "SELECT data FROM residency_log_entries WHERE idx = $1",
                    &[&index],
                ),
            )
            .await
            .ok()??;
            Some(row.get::<_, Vec<u8>>(0))
        })
    }

    /// The indexes recorded for request-id key `key` (blocking).
    pub fn indexes_of(&self, key: u128) -> Vec<u64> {
        let key = key.to_be_bytes().to_vec();
        self.handle.block_on(async {
            let Ok(client) = self.shared.client().await else {
                return Vec::new();
            };
            let rows = timed(
                self.shared.pg.timeout,
                client.query(
                    "SELECT idx FROM residency_log_entries WHERE request_key = $1 ORDER BY idx",
                    &[&key],
                ),
            )
            .await
            .unwrap_or_default();
            rows.iter()
                .filter_map(|r| u64::try_from(r.get::<_, i64>(0)).ok())
                .collect()
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
    async fn client(&self) -> Result<Object, LogError> {
        let client = timed(self.pg.timeout, self.pool.get()).await;
        self.unreachable.store(client.is_err(), Ordering::Relaxed);
        client
    }

    /// Commits one batch; returns its first index.
    async fn commit(&self, batch: &[Pending]) -> Result<u64, LogError> {
        let deadline = tokio::time::Instant::now() + self.pg.timeout;
        let client = tokio::time::timeout_at(deadline, self.pool.get())
            .await
            .map_err(|_| timeout_error(self.pg.timeout))?
            .map_err(|e| {
                self.unreachable.store(true, Ordering::Relaxed);
                LogError::Database(describe(&e))
            })?;
        let keys: Vec<&[u8]> = batch.iter().map(|p| &p.key[..]).collect();
        let data: Vec<&[u8]> = batch.iter().map(|p| &p.data[..]).collect();
        let n = batch.len() as i64;
        let max = i64::try_from(self.settings.max_records).unwrap_or(i64::MAX);
        let run = async {
            let statement = client.prepare_cached(SEQUENCE).await?;
            client
                .query_opt(&statement, &[&n, &keys, &data, &max])
                .await
        };
        let row = match tokio::time::timeout_at(deadline, run).await {
            Ok(row) => row.map_err(database_error)?,
            Err(_) => {
                // The statement may still be running on it: do not reuse.
                drop(Object::take(client));
                return Err(timeout_error(self.pg.timeout));
            }
        };
        self.unreachable.store(false, Ordering::Relaxed);
        let Some(row) = row else {
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
        Ok(first)
    }

    /// One checkpoint tick: take the integrator lock if free; integrate if
    /// held; otherwise follow the stored checkpoint.
    async fn tick(&self) -> Result<Arc<Published>, LogError> {
        let mut session = self.session.lock().await;
        let session = &mut *session;
        if session.held.is_none() {
            if let Err(e) = self.try_integrate(session).await {
                // Closing the connection frees the lock if it was taken.
                session.client = None;
                self.unreachable
                    .store(matches!(e, LogError::Database(_)), Ordering::Relaxed);
                self.set_role(false);
                return Err(e);
            }
        }
        let result = match (&mut session.held, &mut session.client) {
            (Some(held), Some(client)) => self.integrate(client, held).await,
            _ => self.follow().await,
        };
        match &result {
            Ok(_) => self.unreachable.store(false, Ordering::Relaxed),
            Err(e) => {
                if session.held.take().is_some() {
                    tracing::warn!(error = %e, "integrating the log failed: giving up the integrator lock");
                    session.client = None;
                }
                if matches!(e, LogError::Database(_)) {
                    self.unreachable.store(true, Ordering::Relaxed);
                }
            }
        }
        self.set_role(session.held.is_some());
        result
    }

    fn set_role(&self, held: bool) {
        if held != self.is_integrator.swap(held, Ordering::Relaxed) {
            tracing::info!(integrator = held, "integrator role changed");
        }
        self.metrics.integrator.set(i64::from(held));
    }

    /// Takes the integrator lock on the session's connection, if free, and
    /// rebuilds the right edge at the stored checkpoint (which it must
    /// hash to).
    async fn try_integrate(&self, session: &mut Session) -> Result<(), LogError> {
        if session.client.as_ref().is_none_or(Client::is_closed) {
            let config = lock_session_config(&self.pg, self.settings.checkpoint_interval);
            let (client, connection) =
                timed(self.pg.timeout, config.connect(self.tls.clone())).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "integrator-lock connection ended");
                }
            });
            session.client = Some(client);
        }
        let Some(client) = &session.client else {
            return Ok(());
        };
        let taken: bool = timed(
            self.pg.timeout,
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&INTEGRATOR_LOCK]),
        )
        .await?
        .get(0);
        if !taken {
            return Ok(());
        }
        let stored = self.stored_checkpoint(client).await?;
        let (size, root) = stored
            .as_ref()
            .map_or((0, merkle::empty_root()), |c| (c.size, c.root));
        let edge = timed(self.pg.timeout * 4, edge_at(client, size)).await?;
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
        if let Some(cp) = &stored {
            self.publish(cp.clone());
        }
        tracing::info!(checkpoint = size, "took the integrator lock");
        session.held = Some(Integrated {
            edge,
            stored: stored.map(|c| c.size),
        });
        Ok(())
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
        integrator: &mut Integrated,
    ) -> Result<Arc<Published>, LogError> {
        // Up to the sequence as of now: records appended meanwhile wait
        // for the next tick, so a busy log still gets a checkpoint per tick.
        let sequenced: i64 = timed(
            self.pg.timeout,
            client.query_one("SELECT next FROM residency_log_sequence", &[]),
        )
        .await?
        .get(0);
        let sequenced = u64::try_from(sequenced).unwrap_or(0);
        self.sequenced.fetch_max(sequenced, Ordering::Relaxed);
        for _ in 0..INTEGRATE_STEPS {
            let from = integrator.edge.size();
            if from == sequenced && integrator.stored.is_some() {
                break;
            }
            let to = sequenced.min(from + INTEGRATE_CHUNK);
            let rows = timed(
                self.pg.timeout * 4,
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
            for row in &rows {
                let data: &[u8] = row.get(1);
                for full in edge.push(merkle::leaf_hash(data)) {
                    let tile = full.tile();
                    tiles.push((tile_level(tile), tile.index as i64, full.bytes()));
                }
            }
            for (tile, hashes) in edge.partials() {
                tiles.push((tile_level(tile), tile.index as i64, hashes.concat()));
            }
            let written = tiles.len();
            let root = edge.root();
            let note = Checkpoint {
                origin: self.settings.origin.clone(),
                size: to,
                root,
                extensions: Vec::new(),
            }
            .sign(&self.signer)
            .map_err(|source| LogError::Key {
                path: self.settings.signing_key.display().to_string(),
                source,
            })?;
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
            if !timed(self.pg.timeout * 4, transaction).await? {
                return Err(LogError::Database(format!(
                    "the stored checkpoint is no longer the one of size {expected}: another replica integrated"
                )));
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
    /// not integrate).
    async fn follow(&self) -> Result<Arc<Published>, LogError> {
        let client = self.client().await?;
        let sequenced: i64 = timed(
            self.pg.timeout,
            client.query_one("SELECT next FROM residency_log_sequence", &[]),
        )
        .await?
        .get(0);
        self.sequenced
            .fetch_max(u64::try_from(sequenced).unwrap_or(0), Ordering::Relaxed);
        if let Some(cp) = self.stored_checkpoint(&client).await? {
            let latest = self.latest.load();
            // Never back: a stale read or a restored backup is not served.
            if cp.size > latest.size || (cp.size == latest.size && cp.note != latest.note) {
                self.publish(cp);
            }
        }
        Ok(self.confirm())
    }

    fn publish(&self, published: Published) {
        self.metrics.checkpoint_size.set(published.size as i64);
        self.latest.store(Arc::new(published));
    }

    /// Updates the size, lag and age gauges after a tick.
    fn confirm(&self) -> Arc<Published> {
        let latest = self.latest.load_full();
        let sequenced = self.sequenced.load(Ordering::Relaxed);
        let lag = sequenced.saturating_sub(latest.size);
        self.metrics.size.set(sequenced as i64);
        self.metrics.integration_lag.set(lag as i64);
        if lag == 0 {
            self.metrics.checkpoint_timestamp.set(unix_now());
            self.metrics.checkpoint_age.set(0);
        }
        latest
    }

    async fn add_cosignatures(&self, size: u64, lines: &[String]) -> bool {
        let Some(note) = cosign(&self.latest, size, lines) else {
            return false;
        };
        let stored = async {
            let client = self.client().await?;
            timed(
                self.pg.timeout,
                client.execute(
                    "UPDATE residency_log_checkpoint SET note = $1 WHERE size = $2",
                    &[&note, &(size as i64)],
                ),
            )
            .await
        };
        if let Err(e) = stored.await {
            tracing::warn!(error = %e, "cannot store the cosigned checkpoint; this replica serves it from memory");
        }
        true
    }

    /// A tile of the integrated tree: a hash tile from its row (a longer
    /// row holds it as a prefix), an entry bundle from its entries.
    async fn tile(&self, tile: Tile) -> Option<Vec<u8>> {
        let key = (tile_level(tile), tile.index);
        let full = u64::from(tile.width) == WIDTH;
        if full {
            if let Some(bytes) = self.cache.get(&key) {
                return Some(bytes.as_ref().clone());
            }
        }
        let client = self.client().await.ok()?;
        let bytes = match tile.level {
            Some(_) => {
                let row = timed(
                    self.pg.timeout,
                    client.query_opt(
                        "SELECT data FROM residency_log_tiles WHERE level = $1 AND idx = $2",
                        &[&key.0, &i64::try_from(tile.index).ok()?],
                    ),
                )
                .await
                .ok()??;
                let data: Vec<u8> = row.get(0);
                let want = 32 * usize::from(tile.width);
                if data.len() < want {
                    return None;
                }
                data[..want].to_vec()
            }
            None => {
                let first = tile.index.checked_mul(WIDTH)?;
                let end = first + u64::from(tile.width);
                let rows = timed(
                    self.pg.timeout,
                    client.query(
                        "SELECT data FROM residency_log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                        &[&i64::try_from(first).ok()?, &i64::try_from(end).ok()?],
                    ),
                )
                .await
                .ok()?;
                if rows.len() != usize::from(tile.width) {
                    return None;
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
        Some(bytes)
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
    let (stored_origin, stored_key): (String, String) = (row.get(0), row.get(1));
    if stored_origin != origin || stored_key != vkey {
        return Err(LogError::Database(format!(
            "the database holds the log `{stored_origin}` (key {stored_key}), not `{origin}` (key {vkey}): every replica needs the same transparency.origin and signing_key; a new log needs a new database"
        )));
    }
    Ok(())
}

/// What `check-config` reports about a fleet's database: reachable, and
/// its schema version against this binary's.
pub async fn check(pg: &Postgres) -> Result<String, LogError> {
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
/// each level's partial tile is a prefix of its stored row.
async fn edge_at(client: &Client, size: u64) -> Result<Edge, LogError> {
    let mut partials = Vec::new();
    let mut level = 0u8;
    while size.checked_shr(8 * u32::from(level)).unwrap_or(0) > 0 {
        let width = Edge::width_at(size, level) as usize;
        let mut hashes = Vec::with_capacity(width);
        if width > 0 {
            let index = Edge::index_at(size, level) as i64;
            let row = client
                .query_opt(
                    "SELECT data FROM residency_log_tiles WHERE level = $1 AND idx = $2",
                    &[&i16::from(level), &index],
                )
                .await
                .map_err(database_error)?;
            let data: Vec<u8> = row.map(|r| r.get(0)).unwrap_or_default();
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
        level += 1;
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
/// acknowledged only once durable, a connect timeout, an application name.
fn session_config(pg: &Postgres) -> tokio_postgres::Config {
    let mut config = pg.config.0.clone();
    let options = config.get_options().unwrap_or_default().to_string();
    config.options(format!("{options} -c synchronous_commit=on").trim());
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
/// tick) or its peer stops answering TCP keepalives (about 11 s). So a
/// replica cut off from the database, not only a dead one, loses the lock
/// and another takes over; whatever the cut-off one still tries to store
/// is fenced by the checkpoint's expected size.
fn lock_session_config(pg: &Postgres, interval: Duration) -> tokio_postgres::Config {
    let mut config = session_config(pg);
    let idle = (interval * 4).max(Duration::from_secs(2));
    let options = config.get_options().unwrap_or_default().to_string();
    config.options(format!(
        "{options} -c idle_session_timeout={} -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3",
        idle.as_millis()
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

fn timeout_error(limit: Duration) -> LogError {
    LogError::Database(format!(
        "no answer within {} (transparency.postgres.timeout)",
        humantime::format_duration(limit)
    ))
}

fn database_error(e: tokio_postgres::Error) -> LogError {
    LogError::Database(describe(&e))
}
