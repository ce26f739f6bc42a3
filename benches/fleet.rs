//! The fleet log on PostgreSQL against the directory backend: uploads per
//! second, CPU per upload (the appending processes, and PostgreSQL's own),
//! append latency as each appender sees it, and commit latency per batch.
//!
//! ```text
//! cargo bench --bench fleet                                # 3 rounds × 3 scenarios, 10 s each
//! BENCH_SECONDS=5 BENCH_ROUNDS=1 cargo bench --bench fleet
//! BENCH_SCENARIOS=postgres-1,postgres-3 cargo bench --bench fleet
//! BENCH_RATE=2000 cargo bench --bench fleet                # 2,000 uploads/s per replica
//! ```
//!
//! Scenarios, each in fresh storage:
//!
//! * `directory`: one process, one [`Log`] over a temporary directory
//!   (tiles on local disk, a group commit per `fdatasync`);
//! * `postgres-1`: one process, one [`Log`] on a fresh database;
//! * `postgres-3`: three processes — three replicas — on one fresh
//!   database, appending concurrently (one of them integrates).
//!
//! One PostgreSQL cluster is started for the whole run
//! ([`TestServer`]: `initdb` in a temporary directory, loopback TCP,
//! `fsync = on`, `synchronous_commit = on`). Each replica is this bench
//! binary run again with `FLEET_BENCH_ROLE=replica`: it opens the log,
//! runs `BENCH_APPENDERS` tasks (256) that append records one after the
//! other, and a checkpoint every second on a blocking thread, as the proxy
//! does. By default the appenders go as fast as the log lets them (a
//! closed loop: throughput is the appenders over the append latency);
//! with `BENCH_RATE` they are paced to that many uploads per second per
//! replica (uploads issued over 10 ms late are counted and reported). The parent paces every replica through stdin (start, measure,
//! stop): `BENCH_WARMUP` seconds (3) of load, then `BENCH_SECONDS` (10)
//! measured. CPU is read from `/proc/<pid>/stat` (utime + stime) for the
//! replica processes and for the cluster's postmaster and its children
//! (with the children it reaped), at the window's two ends. Before each
//! measurement the parent waits (at most `BENCH_QUIET_WAIT` s, 30) for the
//! machine to be quiet, and reports what other processes used during it.
//!
//! Commit latency is what the log observes into its own histogram per
//! batch: `residency_log_commit_seconds` in PostgreSQL (the sequencing
//! statement and its commit, connection checkout included),
//! `residency_log_fsync_seconds` for the directory (write and `fdatasync`
//! of one group commit). The bench gives the log these histograms with
//! buckets 10 % apart (the exported ones are coarser); p50/p99 are
//! interpolated within a bucket (as Prometheus' `histogram_quantile`), the
//! mean is exact. Append latency is exact (HdrHistogram, µs).
//!
//! This measures the log layer alone: an "upload" here is one record
//! appended and durable, without the HTTP request, TLS or the receipt's
//! signature around it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram as Hdr;
use prometheus::core::Metric;
use prometheus::{Histogram, HistogramOpts};
use residency_log::note::Signer;
use residency_log::settings::{
    ClientAddress, OnWriteError, PgConfig, Postgres, ReceiptMode, Transparency,
};
use residency_log::storage::Log;
use residency_proxy::metrics::Metrics;
use residency_tools::postgres_server::TestServer;
use serde_json::{json, Value};

mod common;
use common::record;

/// The allocator the proxy runs with (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ORIGIN: &str = "fleet-bench.example/log";
/// How long a replica may take to open its log, or to hand in its results.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var_os("FLEET_BENCH_ROLE").is_some_and(|r| r == "replica") {
        replica();
    } else {
        parent();
    }
}

// ---------------------------------------------------------------------------
// The replica: one process appending to one `Log`.
// ---------------------------------------------------------------------------

/// Replica phases, set by the parent's lines on stdin.
const WAIT: u8 = 0;
const RUN: u8 = 1;
const MEASURE: u8 = 2;
const STOP: u8 = 3;

/// A histogram's buckets (cumulative counts), sum and count at one moment.
#[derive(Clone, Default)]
struct Buckets {
    bounds: Vec<f64>,
    cumulative: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Buckets {
    fn of(h: &Histogram) -> Buckets {
        let m = h.metric();
        let h = m.get_histogram();
        Buckets {
            bounds: h.get_bucket().iter().map(|b| b.upper_bound()).collect(),
            cumulative: h
                .get_bucket()
                .iter()
                .map(|b| b.cumulative_count())
                .collect(),
            sum: h.get_sample_sum(),
            count: h.get_sample_count(),
        }
    }

    fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets {
            bounds: self.bounds.clone(),
            cumulative: self
                .cumulative
                .iter()
                .zip(earlier.cumulative.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a - b)
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    fn to_json(&self) -> Value {
        json!({"bounds": self.bounds, "cumulative": self.cumulative, "sum": self.sum, "count": self.count})
    }

    fn from_json(v: &Value) -> Buckets {
        let f = |k: &str| -> Vec<Value> { v[k].as_array().cloned().unwrap_or_default() };
        Buckets {
            bounds: f("bounds").iter().filter_map(Value::as_f64).collect(),
            cumulative: f("cumulative").iter().filter_map(Value::as_u64).collect(),
            sum: v["sum"].as_f64().unwrap_or(0.0),
            count: v["count"].as_u64().unwrap_or(0),
        }
    }

    fn add(&mut self, other: &Buckets) {
        if self.bounds.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.cumulative.iter_mut().zip(&other.cumulative) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The `q` quantile, interpolated linearly within its bucket (as
    /// Prometheus' `histogram_quantile`); `None` without samples. Past the
    /// last bound: the last bound (a lower limit).
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut previous = (0.0, 0u64);
        for (&bound, &cumulative) in self.bounds.iter().zip(&self.cumulative) {
            if cumulative as f64 >= rank {
                let (lower, below) = previous;
                let inside = (cumulative - below) as f64;
                if inside == 0.0 {
                    return Some(bound);
                }
                return Some(lower + (bound - lower) * (rank - below as f64) / inside);
            }
            previous = (bound, cumulative);
        }
        self.bounds.last().copied()
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// What the stdin thread snapshots at the window's two ends.
#[derive(Clone, Default)]
struct Snapshot {
    commit: Buckets,
    batch: Buckets,
    at: Option<Instant>,
}

fn replica() {
    let appenders = env_u64("BENCH_APPENDERS", 256);
    let rate = env_u64("BENCH_RATE", 0) as f64;
    let index = env_u64("FLEET_BENCH_INDEX", 0);
    let replicas = env_u64("FLEET_BENCH_REPLICAS", 1).max(1);
    let key = PathBuf::from(std::env::var_os("FLEET_BENCH_KEY").expect("FLEET_BENCH_KEY"));
    let postgres = std::env::var("FLEET_BENCH_PG_URL").ok().map(|url| {
        let mut config = PgConfig(url.parse().expect("a PostgreSQL URL"));
        config
            .0
            .password(std::env::var("FLEET_BENCH_PG_PASSWORD").unwrap_or_default());
        Postgres {
            url,
            config,
            ca: None,
            // The defaults of `[transparency.postgres]`.
            timeout: Duration::from_secs(2),
            max_pending: 10_000,
            pool_size: 8,
        }
    });
    let directory = std::env::var_os("FLEET_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_default();
    let commit_window = if postgres.is_some() {
        residency_log::settings::DEFAULT_COMMIT_WINDOW_POSTGRES
    } else {
        residency_log::settings::DEFAULT_COMMIT_WINDOW_DIRECTORY
    };
    let settings = Transparency {
        directory,
        postgres,
        origin: ORIGIN.into(),
        signing_key: key,
        receipts: ReceiptMode::Signed,
        checkpoint_interval: Duration::from_secs(1),
        commit_window,
        write_timeout: residency_log::settings::DEFAULT_WRITE_TIMEOUT,
        client_address: ClientAddress::Prefix { v4: 24, v6: 48 },
        on_write_error: OnWriteError::Refuse,
        address: None,
        max_records: u64::MAX,
        max_connections: 256,
        max_connections_per_client: 32,
        refusal_records_per_second: 100,
        requests_per_second_per_client: 0,
        requests_burst_per_client: 1,
        refusal_records_burst: 1000,
        tls: Vec::new(),
        secret_files: Vec::new(),
    };
    let is_postgres = settings.postgres.is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The log's own metrics, with finer buckets (10 % apart) for the commit
    // histograms than the exported ones, so that p50/p99 are within ~5 %.
    let mut metrics = Metrics::new().unwrap().log;
    let fine = |name: &str| {
        let buckets = prometheus::exponential_buckets(0.000_05, 1.1, 130).unwrap();
        Histogram::with_opts(HistogramOpts::new(name, "seconds").buckets(buckets)).unwrap()
    };
    metrics.commit_seconds = fine("commit_seconds");
    metrics.fsync_seconds = fine("fsync_seconds");
    let log = match runtime.block_on(Log::start(&settings, metrics.clone())) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("replica {index}: cannot open the log: {e}");
            std::process::exit(2);
        }
    };
    let commit_histogram = if is_postgres {
        metrics.commit_seconds.clone()
    } else {
        metrics.fsync_seconds.clone()
    };
    println!("ready");
    std::io::stdout().flush().unwrap();

    // The parent's commands; EOF (the parent died) stops the replica.
    let phase = Arc::new(AtomicU8::new(WAIT));
    let snapshots: Arc<Mutex<(Snapshot, Snapshot)>> = Arc::default();
    let start: Arc<OnceLock<Instant>> = Arc::default();
    let stdin_thread = {
        let (phase, snapshots, start) = (phase.clone(), snapshots.clone(), start.clone());
        let (commit, batch) = (commit_histogram, metrics.batch_records.clone());
        std::thread::spawn(move || {
            let snap = || Snapshot {
                commit: Buckets::of(&commit),
                batch: Buckets::of(&batch),
                at: Some(Instant::now()),
            };
            for line in std::io::stdin().lock().lines() {
                match line.as_deref().unwrap_or("stop").trim() {
                    "start" => {
                        let _ = start.set(Instant::now());
                        phase.store(RUN, Ordering::SeqCst);
                    }
                    "measure" => {
                        phase.store(MEASURE, Ordering::SeqCst);
                        snapshots.lock().unwrap().0 = snap();
                    }
                    "stop" => break,
                    _ => {}
                }
            }
            phase.store(STOP, Ordering::SeqCst);
            snapshots.lock().unwrap().1 = snap();
        })
    };

    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let result = runtime.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let checkpoints = {
            let (log, phase, first_error) = (log.clone(), phase.clone(), first_error.clone());
            tokio::spawn(async move {
                let (mut count, mut errors, mut max) = (0u64, 0u64, Duration::ZERO);
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let p = phase.load(Ordering::SeqCst);
                    if p == STOP {
                        return (count, errors, max);
                    }
                    let started = Instant::now();
                    let l = log.clone();
                    let result = tokio::task::spawn_blocking(move || l.checkpoint()).await;
                    if p == MEASURE && phase.load(Ordering::SeqCst) == MEASURE {
                        count += 1;
                        max = max.max(started.elapsed());
                        let failed = match result {
                            Ok(Ok(_)) => None,
                            Ok(Err(e)) => Some(e.to_string()),
                            Err(e) => Some(e.to_string()),
                        };
                        if let Some(message) = failed {
                            errors += 1;
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert(format!("checkpoint: {message}"));
                        }
                    }
                }
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..appenders {
            let (log, next, phase, first_error, start) = (
                log.clone(),
                next.clone(),
                phase.clone(),
                first_error.clone(),
                start.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut latency = Hdr::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let (mut ok, mut errors, mut late) = (0u64, 0u64, 0u64);
                while phase.load(Ordering::Relaxed) == WAIT {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let t0 = start.get().copied().unwrap_or_else(Instant::now);
                loop {
                    if phase.load(Ordering::Relaxed) == STOP {
                        return (latency, ok, errors, late);
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    // Replicas draw interleaved ids, as a fleet's are.
                    let i = n * replicas + index;
                    // Paced: append `n` is due at t0 + n / rate. Its
                    // latency counts from when it is issued (the timer
                    // wakes up to a millisecond late); issued over 10 ms
                    // late, it counts as late: the appenders fell behind.
                    if rate > 0.0 {
                        let due = t0 + Duration::from_secs_f64(n as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        if phase.load(Ordering::Relaxed) == STOP {
                            return (latency, ok, errors, late);
                        }
                        if due.elapsed() > Duration::from_millis(10)
                            && phase.load(Ordering::Relaxed) == MEASURE
                        {
                            late += 1;
                        }
                    }
                    let started = Instant::now();
                    let appended = log.append(&record(i)).await;
                    let micros = started.elapsed().as_micros() as u64;
                    let measured = phase.load(Ordering::Relaxed) == MEASURE;
                    match appended {
                        Ok(_) if measured => {
                            ok += 1;
                            latency.saturating_record(micros.max(1));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if measured {
                                errors += 1;
                            }
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert(format!("append: {e}"));
                            // Do not spin on a failing log.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
        while phase.load(Ordering::SeqCst) != STOP {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lag = log.size().saturating_sub(log.latest().size);
        let mut latency = Hdr::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let (mut ok, mut errors, mut stalled, mut late) = (0u64, 0u64, 0u64, 0u64);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for task in tasks {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok((h, o, e, l))) => {
                    latency.add(&h).unwrap();
                    ok += o;
                    errors += e;
                    late += l;
                }
                _ => stalled += 1,
            }
        }
        let (checkpoints, checkpoint_errors, checkpoint_max) =
            match tokio::time::timeout(Duration::from_secs(30), checkpoints).await {
                Ok(Ok(c)) => c,
                _ => (0, 0, Duration::ZERO),
            };
        json!({
            "ok": ok,
            "errors": errors,
            "stalled_appenders": stalled,
            "late": late,
            "latency": latency
                .iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect::<Vec<_>>(),
            "checkpoints": checkpoints,
            "checkpoint_errors": checkpoint_errors,
            "checkpoint_max_ms": checkpoint_max.as_secs_f64() * 1e3,
            "integrator": log.is_integrator(),
            "lag_at_stop": lag,
            "size": log.size(),
        })
    });
    let _ = stdin_thread.join();
    let (start, end) = snapshots.lock().unwrap().clone();
    let window = match (start.at, end.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let mut result = result;
    result["window_s"] = json!(window);
    result["commit"] = end.commit.since(&start.commit).to_json();
    result["batch"] = end.batch.since(&start.batch).to_json();
    result["first_error"] = json!(first_error.lock().unwrap().clone());
    println!("{result}");
    std::io::stdout().flush().unwrap();
    // Not waiting for the runtime's tasks (the sequencer, the writer):
    // their storage is thrown away.
    std::process::exit(0);
}

// ---------------------------------------------------------------------------
// The parent: the PostgreSQL cluster, the scenarios, the report.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Directory,
    Postgres(u64),
}

impl Scenario {
    fn name(self) -> String {
        match self {
            Scenario::Directory => "directory".into(),
            Scenario::Postgres(n) => format!("postgres-{n}"),
        }
    }

    fn replicas(self) -> u64 {
        match self {
            Scenario::Directory => 1,
            Scenario::Postgres(n) => n,
        }
    }
}

/// A replica process; killed (by its pid) if still running when dropped.
struct Replica {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Replica {
    fn spawn(envs: &[(&str, String)]) -> Replica {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env("FLEET_BENCH_ROLE", "replica")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn a replica");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Replica {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, command: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{command}");
            let _ = stdin.flush();
        }
    }

    fn line(&self) -> Option<String> {
        self.lines.recv_timeout(CHILD_TIMEOUT).ok()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `/proc/<pid>/stat` fields after the command: (ppid, utime + stime,
/// cutime + cstime), in ticks.
fn proc_stat(pid: u32) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let n = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// CPU ticks of the cluster: the postmaster (with the children it reaped)
/// and its live children.
fn postgres_ticks(data: &Path) -> u64 {
    let Some(postmaster) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return 0;
    };
    let mut total = proc_stat(postmaster).map_or(0, |(_, own, reaped)| own + reaped);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((ppid, own, _)) = proc_stat(pid) {
            if ppid == postmaster {
                total += own;
            }
        }
    }
    total
}

/// Busy ticks of the whole machine (`/proc/stat`: all but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    v.iter().take(8).sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}

/// Waits (at most `limit`) until the machine used less than 10 % of one
/// core over a second; returns the last second's busy share in cores.
fn wait_quiet(limit: Duration, ticks: f64) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let before = machine_busy_ticks();
        std::thread::sleep(Duration::from_secs(1));
        let busy = (machine_busy_ticks() - before) as f64 / ticks;
        if busy < 0.10 || Instant::now() >= deadline {
            return busy;
        }
    }
}

/// One scenario's measurement.
struct Measured {
    uploads_per_s: f64,
    proxy_us: f64,
    postgres_us: f64,
    append_p50_ms: f64,
    append_p99_ms: f64,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
    commit_mean_ms: f64,
    commits_per_s: f64,
    batch_mean: f64,
    errors: u64,
    other_cores: f64,
    notes: Vec<String>,
}

struct Run {
    dir: PathBuf,
    key: PathBuf,
    server: TestServer,
    seconds: u64,
    warmup: u64,
    appenders: u64,
    quiet_wait: Duration,
    ticks: f64,
}

impl Run {
    fn measure(&self, scenario: Scenario, round: u64) -> Measured {
        let quiet = wait_quiet(self.quiet_wait, self.ticks);
        let mut notes = Vec::new();
        if quiet >= 0.10 {
            notes.push(format!(
                "machine not quiet before the measurement ({:.0} % of a core busy)",
                quiet * 100.0
            ));
        }
        let name = scenario.name();
        let database = format!("bench_{}_r{round}", name.replace('-', "_"));
        let storage = self.dir.join(format!("{name}-r{round}"));
        let mut envs: Vec<(&str, String)> = vec![
            ("FLEET_BENCH_KEY", self.key.display().to_string()),
            ("FLEET_BENCH_REPLICAS", scenario.replicas().to_string()),
            ("BENCH_APPENDERS", self.appenders.to_string()),
        ];
        match scenario {
            Scenario::Directory => {
                std::fs::create_dir_all(&storage).unwrap();
                envs.push(("FLEET_BENCH_DIR", storage.join("log").display().to_string()));
            }
            Scenario::Postgres(_) => {
                self.server.create_database(&database).unwrap();
                envs.push(("FLEET_BENCH_PG_URL", self.server.url(&database)));
                envs.push(("FLEET_BENCH_PG_PASSWORD", self.server.password().into()));
            }
        }
        // Every measurement starts from a flushed cluster.
        let _ = self.server.psql("postgres", "CHECKPOINT");
        let mut replicas: Vec<Replica> = Vec::new();
        for index in 0..scenario.replicas() {
            let mut envs = envs.clone();
            envs.push(("FLEET_BENCH_INDEX", index.to_string()));
            replicas.push(Replica::spawn(&envs));
            // One at a time: the first creates the schema.
            let ready = replicas.last().unwrap().line();
            assert_eq!(
                ready.as_deref(),
                Some("ready"),
                "{name}: replica {index} did not open its log"
            );
        }
        for r in &mut replicas {
            r.send("start");
        }
        std::thread::sleep(Duration::from_secs(self.warmup));
        let data = self.server.dir().join("data");
        let cpu = |replicas: &[Replica]| {
            let own: u64 = replicas
                .iter()
                .map(|r| proc_stat(r.pid()).map_or(0, |(_, t, _)| t))
                .sum();
            (own, postgres_ticks(&data), machine_busy_ticks())
        };
        for r in &mut replicas {
            r.send("measure");
        }
        let before = cpu(&replicas);
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(self.seconds));
        for r in &mut replicas {
            r.send("stop");
        }
        let after = cpu(&replicas);
        let wall = started.elapsed().as_secs_f64();

        let mut latency = Hdr::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let (mut commit, mut batch) = (Buckets::default(), Buckets::default());
        let (mut ok, mut errors, mut window) = (0u64, 0u64, 0.0f64);
        for (index, r) in replicas.iter().enumerate() {
            let line = r
                .line()
                .unwrap_or_else(|| panic!("{name}: replica {index} sent no results"));
            let v: Value = serde_json::from_str(&line).expect("the replica's results");
            ok += v["ok"].as_u64().unwrap_or(0);
            errors += v["errors"].as_u64().unwrap_or(0);
            window = window.max(v["window_s"].as_f64().unwrap_or(0.0));
            for pair in v["latency"].as_array().into_iter().flatten() {
                let (value, count) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap());
                latency.record_n(value, count).unwrap();
            }
            commit.add(&Buckets::from_json(&v["commit"]));
            batch.add(&Buckets::from_json(&v["batch"]));
            if let Some(e) = v["first_error"].as_str() {
                notes.push(format!("replica {index}: first error: {e}"));
            }
            let stalled = v["stalled_appenders"].as_u64().unwrap_or(0);
            if stalled > 0 {
                notes.push(format!(
                    "replica {index}: {stalled} appenders still waiting 30 s after stop"
                ));
            }
            let late = v["late"].as_u64().unwrap_or(0);
            if late > 0 {
                notes.push(format!(
                    "replica {index}: {late} uploads issued over 10 ms after they were due"
                ));
            }
            let checkpoint_errors = v["checkpoint_errors"].as_u64().unwrap_or(0);
            if checkpoint_errors > 0 {
                notes.push(format!(
                    "replica {index}: {checkpoint_errors} checkpoint errors"
                ));
            }
            if v["integrator"].as_bool() == Some(true) {
                notes.push(format!(
                    "replica {index} integrated: {} checkpoints, slowest {:.1} ms, {} records not yet checkpointed at stop",
                    v["checkpoints"],
                    v["checkpoint_max_ms"].as_f64().unwrap_or(0.0),
                    v["lag_at_stop"]
                ));
            }
        }
        drop(replicas);
        if let Scenario::Postgres(_) = scenario {
            // The database's view: contiguous indexes, none given twice.
            let check = self.server.psql(
                &database,
                "SELECT (SELECT next FROM residency_log_sequence) || ' ' || count(*) || ' ' || coalesce(max(idx) + 1, 0) FROM residency_log_entries",
            );
            let parts: Option<Vec<String>> =
                check.ok().map(|s| s.split(' ').map(String::from).collect());
            match parts.as_deref() {
                Some([next, count, end]) if next == count && count == end => {}
                other => notes.push(format!(
                    "database check: sequence, rows, max index + 1 = {other:?}"
                )),
            }
            let _ = self.server.psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            );
        }
        let _ = std::fs::remove_dir_all(&storage);

        let window = if window > 0.0 { window } else { wall };
        let uploads = ok.max(1) as f64;
        let ticks_us = 1e6 / self.ticks;
        let proxy_ticks = after.0.saturating_sub(before.0);
        let postgres_ticks = after.1.saturating_sub(before.1);
        let busy = after.2.saturating_sub(before.2);
        let other = busy.saturating_sub(proxy_ticks + postgres_ticks);
        let ms = |us: u64| us as f64 / 1e3;
        Measured {
            uploads_per_s: ok as f64 / window,
            proxy_us: proxy_ticks as f64 * ticks_us / uploads,
            postgres_us: postgres_ticks as f64 * ticks_us / uploads,
            append_p50_ms: ms(latency.value_at_quantile(0.50)),
            append_p99_ms: ms(latency.value_at_quantile(0.99)),
            commit_p50_ms: commit.quantile(0.50).unwrap_or(0.0) * 1e3,
            commit_p99_ms: commit.quantile(0.99).unwrap_or(0.0) * 1e3,
            commit_mean_ms: commit.mean().unwrap_or(0.0) * 1e3,
            commits_per_s: commit.count as f64 / window,
            batch_mean: batch.mean().unwrap_or(0.0),
            errors,
            other_cores: other as f64 / self.ticks / wall,
            notes,
        }
    }
}

/// Removes the parent's directory (keys, directory logs) when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn parent() {
    // `cargo bench` passes `--bench`; nothing else is read from argv.
    let seconds = env_u64("BENCH_SECONDS", 10).max(1);
    let warmup = env_u64("BENCH_WARMUP", 3);
    let rounds = env_u64("BENCH_ROUNDS", 3).max(1);
    let appenders = env_u64("BENCH_APPENDERS", 256).max(1);
    let rate = env_u64("BENCH_RATE", 0);
    let pacing = if rate > 0 {
        format!("paced to {rate} uploads/s per replica")
    } else {
        "unpaced".to_string()
    };
    let quiet_wait = Duration::from_secs(env_u64("BENCH_QUIET_WAIT", 30));
    let all = [
        Scenario::Directory,
        Scenario::Postgres(1),
        Scenario::Postgres(3),
    ];
    let scenarios: Vec<Scenario> = match std::env::var("BENCH_SCENARIOS") {
        Ok(list) => all
            .into_iter()
            .filter(|s| list.split(',').any(|n| n.trim() == s.name()))
            .collect(),
        Err(_) => all.to_vec(),
    };
    assert!(!scenarios.is_empty(), "BENCH_SCENARIOS selects nothing");

    let dir = TempDir(std::env::temp_dir().join(format!("rp-fleet-bench-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let key = dir.0.join("log.key");
    std::fs::write(&key, Signer::generate_pkcs8().unwrap()).unwrap();
    let server = TestServer::start("fleet-bench").expect("start PostgreSQL");
    let version = server
        .psql("postgres", "SHOW server_version")
        .unwrap_or_default();
    let run = Run {
        dir: dir.0.clone(),
        key,
        server,
        seconds,
        warmup,
        appenders,
        quiet_wait,
        ticks: clock_ticks(),
    };
    eprintln!(
        "PostgreSQL {version} in {}; {rounds} rounds × {} scenarios, {warmup} s warm-up + {seconds} s each, {appenders} appenders per replica, {pacing}",
        run.server.dir().display(),
        scenarios.len()
    );

    let mut results: Vec<Vec<Measured>> = scenarios.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (s, &scenario) in scenarios.iter().enumerate() {
            let m = run.measure(scenario, round);
            eprintln!(
                "round {round} {:<11} {:>8.0} uploads/s  proxy {:>6.1} µs  postgres {:>6.1} µs  append p50 {:.2} p99 {:.2} ms  commit p50 {:.2} p99 {:.2} mean {:.2} ms  {:.0} commits/s  batch {:.1}  errors {}  other {:.0} % of a core",
                scenario.name(),
                m.uploads_per_s,
                m.proxy_us,
                m.postgres_us,
                m.append_p50_ms,
                m.append_p99_ms,
                m.commit_p50_ms,
                m.commit_p99_ms,
                m.commit_mean_ms,
                m.commits_per_s,
                m.batch_mean,
                m.errors,
                m.other_cores * 100.0
            );
            for note in &m.notes {
                eprintln!("    {note}");
            }
            results[s].push(m);
        }
    }
    drop(run);

    let med = |s: usize, f: fn(&Measured) -> f64| median(results[s].iter().map(f).collect());
    println!();
    println!(
        "Medians of {rounds} rounds ({warmup} s warm-up, {seconds} s measured, {appenders} appenders per replica, {pacing}, a checkpoint per second per replica; PostgreSQL {version}):"
    );
    println!();
    println!("| scenario | replicas | uploads/s | CPU µs/upload, replicas | CPU µs/upload, PostgreSQL | CPU µs/upload, total | append p50 ms | append p99 ms | commit p50 ms | commit p99 ms | commit mean ms | commits/s | records/batch | errors | other load, % of a core |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (s, scenario) in scenarios.iter().enumerate() {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {} | {:.0} |",
            scenario.name(),
            scenario.replicas(),
            med(s, |m| m.uploads_per_s),
            med(s, |m| m.proxy_us),
            med(s, |m| m.postgres_us),
            med(s, |m| m.proxy_us + m.postgres_us),
            med(s, |m| m.append_p50_ms),
            med(s, |m| m.append_p99_ms),
            med(s, |m| m.commit_p50_ms),
            med(s, |m| m.commit_p99_ms),
            med(s, |m| m.commit_mean_ms),
            med(s, |m| m.commits_per_s),
            med(s, |m| m.batch_mean),
            results[s].iter().map(|m| m.errors).sum::<u64>(),
            med(s, |m| m.other_cores * 100.0),
        );
    }
    if let Some(d) = scenarios.iter().position(|&s| s == Scenario::Directory) {
        println!();
        println!("| scenario | uploads/s × directory | CPU/upload, replicas × directory | CPU/upload, total × directory |");
        println!("|---|---|---|---|");
        let base = (
            med(d, |m| m.uploads_per_s),
            med(d, |m| m.proxy_us),
            med(d, |m| m.proxy_us + m.postgres_us),
        );
        for (s, scenario) in scenarios.iter().enumerate() {
            println!(
                "| {} | {:.3} | {:.2} | {:.2} |",
                scenario.name(),
                med(s, |m| m.uploads_per_s) / base.0,
                med(s, |m| m.proxy_us) / base.1,
                med(s, |m| m.proxy_us + m.postgres_us) / base.2,
            );
        }
    }
}
