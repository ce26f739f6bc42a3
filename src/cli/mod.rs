//! The command line: `demo`, `serve`, `check-config`, `decide`, `geoip
//! build`, `sink`, `loadtest`, `drill`, `keygen`, `verify`, `witness`.
//!
//! Each command maps its outcome to an exit code: 0 success, 1 a runtime
//! failure, 2 an invalid configuration or input (`verify`: 1 INVALID, 3
//! NOT CHECKED).

pub mod demo;
pub mod drill;
mod log_text;
pub mod workdir;

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, LogFormat};
use crate::metrics::Metrics;
use crate::state::{Instance, Snapshot};

#[derive(Debug, Parser)]
#[command(
    name = "residency-proxy",
    version = residency_tools::VERSION,
    about = "TLS reverse proxy that stores each upload only in a jurisdiction its origin permits"
)]
pub struct Cli {
    /// Log format; defaults to the config's `[log] format`, else text.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Log filter (tracing-subscriber EnvFilter syntax; default `info`, for
    /// `drill` and `loadtest` `warn`); without it, `RUST_LOG` is used if set.
    #[arg(long, global = true, value_parser = log_filter)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a complete local setup in one process: self-signed TLS, a bundled
    /// GeoIP database, three data-centre sinks (zurich=ch, frankfurt=eu,
    /// virginia=us); prints curl commands to try.
    Demo {
        /// Port of the TLS ingest listener (127.0.0.1).
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Port of the admin listener (127.0.0.1).
        #[arg(long, default_value_t = 9900)]
        admin_port: u16,
        /// Port of the transparency log listener (127.0.0.1).
        #[arg(long, default_value_t = 9443)]
        log_port: u16,
        /// Keep the demo's files (config, keys, log) here; default: a
        /// private temporary directory removed when the demo stops.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the proxy.
    Serve {
        /// The configuration file (TOML; see config/example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration (including certificates, the GeoIP
    /// database and a log directory's checkpoints, read as `serve` reads
    /// them) and print the routing table; exits 2 listing every error.
    CheckConfig {
        /// The configuration file to check, as `serve --config` takes it.
        #[arg(long, short)]
        config: PathBuf,
        /// Skip the checks that need the network: with `transparency.storage
        /// = "postgres"`, connecting to the log's database and checking its
        /// schema.
        #[arg(long)]
        offline: bool,
    },
    /// Offline what-if: country, jurisdiction, permitted data centres and the
    /// decision for each address (all upstreams assumed up).
    Decide {
        /// The configuration file whose policy and GeoIP database decide.
        #[arg(long, short)]
        config: PathBuf,
        /// The TLS server name the client dials (tenants recognised by SNI).
        #[arg(long)]
        sni: Option<String>,
        /// Decide as for this tenant (as a valid token or client certificate
        /// would name it).
        #[arg(long)]
        tenant: Option<String>,
        /// Client addresses to decide for (IPv4 or IPv6).
        #[arg(required = true)]
        ips: Vec<IpAddr>,
    },
    /// A reference ingestion server for drills and local development: serves
    /// several named data centres on several ports, records every upload and
    /// can be told to fail.
    Sink(residency_tools::sink::SinkArgs),
    /// Open-loop HTTPS load with an origin mix and a chaos schedule; reconciles
    /// with the sinks and reports residency violations and lost uploads.
    Loadtest(residency_tools::loadtest::LoadtestArgs),
    /// A ready-made regional-failover drill in one process: sinks, the proxy
    /// and the load generator with a chaos schedule; prints the report.
    Drill(Box<crate::cli::drill::DrillArgs>),
    /// GeoIP database tools.
    Geoip {
        #[command(subcommand)]
        command: GeoipCommand,
    },
    /// Create the transparency log's Ed25519 signing key: writes OUT.key
    /// (PKCS#8, mode 0600; `transparency.signing_key`) and OUT.pub (the
    /// verifier key customers use with `verify --key`).
    Keygen {
        /// The log's name; must equal `transparency.origin`. With
        /// `--witness`, the witness's name.
        #[arg(long)]
        name: String,
        /// Path prefix of the two files: `PREFIX.key` and `PREFIX.pub` (a
        /// dot in the prefix is kept: `ingest.example.com` gives
        /// `ingest.example.com.key`).
        #[arg(long)]
        out: PathBuf,
        /// A witness key instead (for `residency-proxy witness --key`): the
        /// same kind of Ed25519 key, whose `.pub` is a C2SP cosignature/v1
        /// verifier key (type 0x04) for `[[transparency.witnesses]] key`
        /// and `verify --witness`.
        #[arg(long)]
        witness: bool,
    },
    /// Verify a receipt (its signature), its inclusion in the log against a
    /// signed checkpoint, and the log's consistency with a checkpoint seen
    /// before, or a C2SP tlog-proof offline. Prints VALID or INVALID and
    /// why, exit 0 or 1; NOT CHECKED and why, exit 3, when the log could
    /// not be read or its checkpoint does not cover the receipt yet and
    /// nothing else was found wrong (retry); usage errors exit 2.
    Verify(Box<residency_tools::verify::VerifyArgs>),
    /// Run a C2SP tlog-witness (HTTP/1.1, or HTTPS with --tls-cert): cosigns checkpoints of the
    /// given logs that are consistent with the last one it cosigned,
    /// recording each log's size and root in the state file first.
    Witness(Box<crate::witness::WitnessArgs>),
}

#[derive(Debug, Subcommand)]
pub enum GeoipCommand {
    /// Build a Country-type MaxMind DB from `network,country` CSV rows
    /// (IPv4 and IPv6; an optional header row; `#` comments).
    Build {
        /// The rows: `network,country` (e.g. `192.0.2.0/24,CH`).
        #[arg(long)]
        csv: PathBuf,
        /// The database to write (`.mmdb`).
        #[arg(long)]
        out: PathBuf,
        /// Build time stored in the metadata (Unix seconds); default now.
        #[arg(long)]
        build_epoch: Option<u64>,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let quiet = matches!(cli.command, Command::Drill(_) | Command::Loadtest(_));
    let level = LogLevel {
        explicit: cli.log_level.is_some(),
        filter: cli
            .log_level
            .clone()
            .unwrap_or_else(|| if quiet { "warn" } else { "info" }.to_string()),
    };
    let format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Command::Demo {
            port,
            admin_port,
            log_port,
            dir,
        } => {
            let _log = init_server_tracing(format.unwrap_or_default(), &level);
            // The demo reloads on SIGHUP as `serve` does.
            if let Err(e) = crate::reload::catch_hangup_early() {
                tracing::error!(error = %e, "cannot handle SIGHUP");
                return ExitCode::FAILURE;
            }
            block_on(crate::cli::demo::run(port, admin_port, log_port, dir))
        }
        Command::Serve { config: path } => {
            // Before anything that takes time: a SIGHUP from here on is a
            // reload once the proxy runs, never the end of it.
            if let Err(e) = crate::reload::catch_hangup_early() {
                eprintln!("error: cannot handle SIGHUP: {e}");
                return ExitCode::FAILURE;
            }
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(report) => return config_error(report),
            };
            let _log = init_server_tracing(format.unwrap_or(config.log_format), &level);
            let workers = config.worker_threads;
            // Under systemd's `Type=notify`: started once serving, and
            // stopping from the signal on.
            let shutdown = async {
                shutdown_signal().await;
                crate::notify::notify("STOPPING=1");
            };
            block_on_with(
                workers,
                serve_watching(config, path, shutdown, || crate::notify::notify("READY=1")),
            )
        }
        Command::Sink(args) => {
            let _log = init_server_tracing(format.unwrap_or_default(), &level);
            block_on(residency_tools::sink::run(args, shutdown_signal()))
        }
        Command::Loadtest(args) => {
            init_tracing(format.unwrap_or_default(), &level);
            let (policy, proxy) = match Config::load(&args.options.config) {
                Ok(c) => {
                    // The target's host name is the server name the load's
                    // TLS sends: a tenant by SNI recognises it.
                    let sni = args
                        .options
                        .target
                        .parse::<http::Uri>()
                        .ok()
                        .and_then(|u| {
                            u.host()
                                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                        })
                        .filter(|h| h.parse::<IpAddr>().is_err() && !h.starts_with('['));
                    if let Err(report) = placed_origins(&c, &args.options.origins, sni.as_deref()) {
                        return config_error(report);
                    }
                    let proxy = residency_tools::loadtest::FromConfig {
                        recovery: c.health.recovery(),
                        late_delivery: c.timeouts.late_delivery(args.options.body_size),
                        routing_hash: Some(crate::config::policy_hash(&c)),
                    };
                    (c.policy, proxy)
                }
                Err(report) => return config_error(report),
            };
            block_on(async {
                let interrupt = Some(interrupt_on_signal(None));
                residency_tools::loadtest::run(args, policy, proxy, interrupt).await
            })
        }
        Command::Drill(mut args) => {
            if let Err(report) = crate::cli::drill::check_load(&args) {
                return config_error(report);
            }
            // The run directory: --dir (kept), or a private temporary one
            // removed when the drill ends. The proxy's log goes to a file in
            // it; the report summarises its warnings.
            let work = match workdir::WorkDir::new(args.dir.as_deref(), "residency-proxy-drill") {
                Ok(w) => w,
                Err(e) => {
                    return runtime_error(anyhow::anyhow!("creating the drill's directory: {e}"))
                }
            };
            args.dir = Some(work.path().to_path_buf());
            args.dir_is_temporary = !work.kept();
            match std::fs::File::create(work.path().join(crate::cli::drill::PROXY_LOG)) {
                Ok(file) => init_tracing_to(format.unwrap_or_default(), &level, file),
                Err(_) => init_tracing(format.unwrap_or_default(), &level),
            }
            let code = block_on(crate::cli::drill::run(*args));
            drop(work);
            code
        }
        Command::CheckConfig { config, offline } => check_config(config, offline),
        Command::Keygen { name, out, witness } => keygen(&name, &out, witness),
        Command::Witness(args) => {
            let _log = init_server_tracing(format.unwrap_or_default(), &level);
            block_on(crate::witness::run(*args, shutdown_signal()))
        }
        Command::Verify(mut args) => {
            init_tracing(format.unwrap_or_default(), &level);
            residency_tools::verify::read_witness_files(&mut args);
            if let Err(e) = residency_tools::verify::usage(&args) {
                eprintln!("error: {e}\n\nFor more information, try '--help'.");
                return ExitCode::from(2);
            }
            let report = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(residency_tools::verify::verify(&args)),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print!("{report}");
            if report.valid() {
                ExitCode::SUCCESS
            } else if report.unchecked {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Decide {
            config,
            sni,
            tenant,
            ips,
        } => decide_offline(config, sni.as_deref(), tenant.as_deref(), &ips),
        Command::Geoip {
            command:
                GeoipCommand::Build {
                    csv,
                    out,
                    build_epoch,
                },
        } => {
            let epoch = build_epoch.unwrap_or_else(now_epoch);
            if epoch > now_epoch().saturating_add(86_400) {
                // `serve` refuses such a database: its age cannot be judged.
                eprintln!("error: --build-epoch {epoch} is more than a day in the future (Unix seconds, not milliseconds)");
                return ExitCode::from(2);
            }
            match residency_tools::geoip::build_file(&csv, &out, epoch) {
                Ok(s) => {
                    println!(
                        "wrote {}: {} networks, {} countries, {} bytes, build_epoch {epoch}",
                        out.display(),
                        s.networks,
                        s.countries,
                        s.bytes
                    );
                    ExitCode::SUCCESS
                }
                // The output not written is a runtime failure (as for
                // `keygen`); the rest is the input's.
                Err(e @ residency_tools::geoip::BuildError::Io { .. }) => {
                    eprintln!("error: {e}");
                    let output = matches!(&e, residency_tools::geoip::BuildError::Io { path, .. } if *path == out);
                    ExitCode::from(if output { 1 } else { 2 })
                }
                Err(e @ residency_tools::geoip::BuildError::NoRows { .. }) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", csv.display());
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Builds the state, binds every listener and serves until `shutdown`.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    serve_inner(config, None, shutdown, || {}).await
}

/// As [`serve`], reloading from `path` on SIGHUP and when watched files
/// change; `ready` runs once every listener is bound.
pub async fn serve_watching(
    config: Config,
    path: PathBuf,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    serve_inner(config, Some(path), shutdown, ready).await
}

async fn serve_inner(
    config: Config,
    path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    config.tenancy.log_warnings();
    for warning in start_warnings(&config) {
        tracing::warn!("{warning}");
    }
    open_files_limit(config.limits.max_connections);
    if let Some(warning) = config
        .transparency
        .as_ref()
        .and_then(|t| t.public_key_warning())
    {
        tracing::warn!("{warning}");
    }
    let state = Snapshot::build(config)?;
    let instance = Instance::start(state, Metrics::new()?).await?;
    let mut bound = crate::server::bind(instance).await?;
    if let Some(path) = path {
        bound = bound.watch(path);
    }
    for addr in bound.addresses() {
        tracing::info!(%addr, "ingest listener ready (TLS)");
    }
    if let Some(addr) = bound.admin_address() {
        tracing::info!(%addr, "admin listener ready: /metrics /healthz /readyz /decide?ip=");
    }
    if let Some(addr) = bound.transparency_address() {
        tracing::info!(%addr, "transparency log listener ready: /checkpoint /key /proof/inclusion /proof/consistency /records/{{id}}");
    }
    ready();
    bound.run(shutdown).await
}

/// Raises the open-files soft limit to the hard one (as Go's runtime does:
/// systemd gives services 1024 under a hard limit of 524288), logs it, and
/// warns when it is below what `limits.max_connections` may need: a
/// client's connection and its data centre's each, and some for the
/// log's files and the other listeners. Past it, accepts fail and new
/// clients wait in the kernel's queue (exhaustion audit, stop 65).
fn open_files_limit(max_connections: usize) {
    let wanted = 2 * max_connections as u64 + 256;
    let soft = match rlimit::increase_nofile_limit(wanted.max(1 << 20)) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            return;
        }
    };
    tracing::info!(soft, "open-files limit");
    if soft < wanted {
        tracing::warn!(
            limit = soft,
            needed = wanted,
            "limits.max_connections ({max_connections}) may need {wanted} open files (a client's connection and its data centre's each, and the log's files), above the open-files limit ({soft}): past it new connections wait unaccepted; raise the hard limit (systemd LimitNOFILE=, ulimit -Hn) or lower limits.max_connections"
        );
    }
}

/// With a file-size limit (`ulimit -f`), a write past it raises SIGXFSZ,
/// which by default kills the process mid-request. Handling it turns the
/// write into an `EFBIG` error, which the transparency log reports and
/// answers by its `on_write_error` policy.
fn ignore_file_size_signal() {
    #[cfg(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm"
        )
    ))]
    {
        const SIGXFSZ: i32 = 25;
        // Registration outlives the returned stream.
        if let Err(e) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ))
        {
            tracing::warn!(error = %e, "cannot handle SIGXFSZ");
        }
    }
}

fn keygen(name: &str, out: &std::path::Path, witness: bool) -> ExitCode {
    use residency_log::note::Signer;
    use residency_log::witness::Cosigner;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if !residency_log::settings::valid_origin(name) {
        eprintln!(
            "error: --name {name:?} must be non-empty, without spaces, control characters or '+'"
        );
        return ExitCode::from(2);
    }
    // Never overwrites either file: an input to change (exit 2), checked
    // before the key is made (and again as each is created).
    let (key, public) = key_paths(out);
    if let Some(there) = [&key, &public].into_iter().find(|p| p.exists()) {
        eprintln!(
            "error: --out {}: {} exists; keygen never overwrites a key (choose another --out, or move it away)",
            out.display(),
            there.display()
        );
        return ExitCode::from(2);
    }
    let written = (|| -> anyhow::Result<(PathBuf, PathBuf, String)> {
        let pkcs8 = Signer::generate_pkcs8()?;
        let vkey = if witness {
            Cosigner::from_pkcs8(name, &pkcs8)?.verifier_key()
        } else {
            Signer::from_pkcs8(name, &pkcs8)?.verifier_key()
        };
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .and_then(|mut f| f.write_all(&pkcs8))
            .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&public)
            .and_then(|mut f| f.write_all(format!("{vkey}\n").as_bytes()))
            .map_err(|e| anyhow::anyhow!("{}: {e}", public.display()))?;
        Ok((key.clone(), public.clone(), vkey))
    })();
    match written {
        Ok((key, public, vkey)) => {
            if witness {
                println!("wrote {} (secret: witness --key)", key.display());
                println!(
                    "wrote {} (public: [[transparency.witnesses]] key, verify --witness)",
                    public.display()
                );
            } else {
                println!("wrote {} (secret: transparency.signing_key)", key.display());
                println!("wrote {} (public: give it to customers)", public.display());
            }
            println!("{vkey}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `PREFIX.key` and `PREFIX.pub`: the suffixes are appended, never put in
/// place of a dotted part of the prefix.
fn key_paths(prefix: &std::path::Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    (with(".key"), with(".pub"))
}

/// What loads but may not be meant, as `check-config` prints it and
/// `serve` logs it at start: what a reload would also say
/// ([`crate::config::live_warnings`]), and of `[transparency]`, which a
/// restart applies: no log, an acknowledgement without a record, a
/// cleartext database connection, secret files every user can read.
fn start_warnings(config: &Config) -> Vec<String> {
    let mut warnings = crate::config::live_warnings(config, config.transparency.is_some());
    // The environment is the process's own: read once, at start.
    warnings.extend(crate::config_source::unread_variables());
    match &config.transparency {
        None => warnings.push(
            "transparency: not configured, so no upload or refusal is recorded and no receipt is given: where an upload went cannot be proven to anyone; configure [transparency] (origin, signing_key) to record them".to_string(),
        ),
        Some(t) if t.on_write_error == residency_log::settings::OnWriteError::Continue => warnings.push(
            "transparency.on_write_error: \"continue\", so an upload whose record cannot be written is still acknowledged (2xx) without a record or receipt; \"refuse\" (the default) answers 503 log_unavailable instead".to_string(),
        ),
        Some(_) => {}
    }
    if let Some(t) = &config.transparency {
        use residency_log::settings::ClientAddress;
        let whole = match t.client_address {
            ClientAddress::Full => Some("client_address = \"full\""),
            ClientAddress::Prefix { v4: 32, .. } => Some("client_prefix_v4 = 32"),
            ClientAddress::Prefix { v6: 128, .. } => Some("client_prefix_v6 = 128"),
            _ => None,
        };
        if let Some(setting) = whole {
            warnings.push(format!(
                "transparency.{setting}: records carry whole client addresses, and the transparency log is public: anyone who can read it learns where each upload came from, to the address; \"prefix\" (the default, /24 and /48) or \"hmac\" keep them out"
            ));
        }
        warnings.extend(t.cleartext_warning());
        let exposed = crate::config::exposed_file;
        warnings.extend(exposed("transparency.signing_key", &t.signing_key, false));
        for (i, c) in t.tls.iter().enumerate() {
            let key = format!("transparency.tls.certificates[{i}].key");
            warnings.extend(exposed(&key, &c.key, false));
        }
        for (key, path) in &t.secret_files {
            warnings.extend(exposed(key, path, false));
        }
        if t.postgres.is_none() {
            warnings.extend(exposed("transparency.directory", &t.directory, true));
        }
    }
    warnings
}

fn check_config(path: PathBuf, offline: bool) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(report) => return config_error(report),
    };
    let expiring = start_warnings(&config);
    let table = config.policy.routing_table() + &config.policy.upstream_table();
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .map(|l| {
            format!(
                "listener {} (proxy_protocol {}, {} certificate(s), mTLS {})",
                l.address,
                if l.proxy_protocol { "required" } else { "off" },
                l.certificates.len(),
                if l.client_ca.is_some() { "on" } else { "off" }
            )
        })
        .collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return runtime_error(e.into()),
    };
    // Certificates, keys and the GeoIP database are loaded exactly as `serve` would.
    let built = rt.block_on(async { Snapshot::build(config) });
    // The fleet log's database: reachable, and a schema this binary can use.
    let database = match built
        .as_ref()
        .ok()
        .and_then(|s| s.config.transparency.as_ref())
    {
        Some(t) => match (&t.postgres, offline) {
            (Some(pg), false) => Some(
                rt.block_on(residency_log::postgres::check(
                    pg,
                    &t.origin,
                    // Loaded by the build already.
                    &t.verifier_key().unwrap_or_default(),
                ))
                .map_err(|e| (pg.url.clone(), e)),
            ),
            (Some(_), true) => Some(Ok("not checked (--offline)".to_string())),
            // The directory's checkpoints, read as the start reads them.
            (None, _) => Some(
                residency_log::storage::check_directory(t)
                    .map_err(|e| (t.directory.display().to_string(), e)),
            ),
        },
        None => None,
    };
    let (built, database) = match (built, database) {
        (Ok(state), Some(Err((place, e)))) => {
            let key = match state.config.transparency.as_ref().map(|t| &t.postgres) {
                Some(Some(_)) => "transparency.postgres.url",
                _ => "transparency.directory",
            };
            let mut report = residency_core::report::ConfigReport::new(path.display().to_string());
            report.push(key, format!("{place}: {e}"));
            (Err(report), None)
        }
        (built, Some(Ok(line))) => (built, Some(line)),
        (built, _) => (built, None),
    };
    match built {
        Ok(state) => {
            for l in listeners {
                println!("{l}");
            }
            for warning in &expiring {
                println!("warning: {warning}");
            }
            println!("admin {}", state.config.admin.address);
            println!(
                "geoip {} ({}, built {})",
                state.config.geoip.database.display(),
                state.geo.database_type(),
                state.geo.build_epoch()
            );
            if let Some(why) = crate::state::geoip_too_old(&state) {
                println!("warning: {why}: serve would not be ready (/readyz 503)");
            }
            if let Some(t) = &state.config.transparency {
                let place = match &t.postgres {
                    Some(pg) => format!("PostgreSQL {}", pg.url),
                    None => t.directory.display().to_string(),
                };
                // As the configuration spells it: "signed", not `Signed`.
                let receipts = format!("{:?}", t.receipts).to_ascii_lowercase();
                println!(
                    "transparency log {} in {} (receipts {receipts}, endpoints {})",
                    t.origin,
                    place,
                    t.address
                        .map_or_else(|| "off".to_string(), |a| a.to_string())
                );
                if let Some(key) = t.verifier_key() {
                    println!("transparency verifier key {key}");
                }
                if let Some(warning) = t.public_key_warning() {
                    println!("warning: {warning}");
                }
                if t.postgres.is_none() && t.max_records != u64::MAX {
                    println!("{}", next_generation(t));
                }
            }
            let tenancy = &state.config.tenancy;
            if !tenancy.tenants.is_empty() || tenancy.token.is_some() {
                let mut pins: std::collections::BTreeMap<&str, usize> = Default::default();
                for t in tenancy.tenants.iter() {
                    let j = state
                        .config
                        .policy
                        .jurisdiction(t.jurisdiction)
                        .name
                        .as_str();
                    *pins.entry(j).or_default() += 1;
                }
                let pins: Vec<String> = pins.iter().map(|(j, n)| format!("{n} in {j}")).collect();
                println!(
                    "tenants {} ({}; tokens {})",
                    tenancy.tenants.len(),
                    pins.join(", "),
                    if tenancy.token.is_some() { "on" } else { "off" }
                );
                for warning in tenancy.claimable_warnings() {
                    println!("warning: {warning}");
                }
                for warning in tenancy.token.iter().flat_map(|t| &t.warnings) {
                    println!("warning: {warning}");
                }
            }
            if let Some(line) = database {
                let fleet = state
                    .config
                    .transparency
                    .as_ref()
                    .is_some_and(|t| t.postgres.is_some());
                let store = if fleet { "database" } else { "directory" };
                println!("log {store}: {line}");
            }
            print!("{table}");
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(mut report) => {
            report.file = path.display().to_string();
            config_error(report)
        }
    }
}

/// What a rolling log (`max_records`) turns into next: the origin and key
/// to register with the witnesses before the roll.
fn next_generation(t: &residency_log::settings::Transparency) -> String {
    use residency_log::storage::{generation_numbers, generation_origin};
    let current = match generation_numbers(t) {
        Ok(numbers) => numbers.last().copied().unwrap_or(1),
        Err(e) => return format!("transparency log generations: {e}"),
    };
    let next = generation_origin(&t.origin, current + 1);
    let key = std::fs::read(&t.signing_key)
        .ok()
        .and_then(|pkcs8| residency_log::note::Signer::from_pkcs8(&next, &pkcs8).ok())
        .map_or_else(|| "unreadable".to_string(), |s| s.verifier_key());
    format!(
        "  generation {current}: at {} records it rolls to {next}, key {key} (give it to your witnesses before then)",
        t.max_records
    )
}

fn decide_offline(
    path: PathBuf,
    sni: Option<&str>,
    tenant: Option<&str>,
    ips: &[IpAddr],
) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(report) => return config_error(report),
    };
    let geo = match crate::state::open_geo(&config.geoip) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for ip in ips {
        let question = crate::explain::Question {
            ip: Some(*ip),
            sni,
            tenant,
        };
        match offline_answer(&config, &geo, &question) {
            Ok(explained) => println!(
                "{}",
                serde_json::to_string_pretty(&explained).unwrap_or_default()
            ),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

/// What the proxy of `config` decides for `question`, offline: every
/// upstream taken as up, none drained (`decide`'s what-if).
fn offline_answer(
    config: &Config,
    geo: &residency_core::geo::Geo,
    question: &crate::explain::Question<'_>,
) -> Result<serde_json::Value, String> {
    crate::explain::answer(
        question,
        geo,
        &config.policy,
        &config.tenancy,
        0,
        |_| true,
        |_| false,
        |_| Default::default(),
    )
}

/// Each `--origin` address against where the proxy of `config` places it
/// (its GeoIP database, policy and tenant pins, as `decide`): an address
/// placed in another jurisdiction than it is given for would have every
/// upload from it counted a residency violation, though routed right.
/// Jurisdictions the policy does not have are left to the plan's checks,
/// and so is a GeoIP database that cannot be read (as the proxy's).
fn placed_origins(
    config: &Config,
    origins: &[residency_tools::loadtest::OriginSpec],
    sni: Option<&str>,
) -> Result<(), residency_core::report::ConfigReport> {
    let Ok(geo) = crate::state::open_geo(&config.geoip) else {
        return Ok(());
    };
    let mut report = residency_core::report::ConfigReport::new("loadtest");
    for o in origins {
        if !config
            .policy
            .jurisdictions
            .iter()
            .any(|j| j.name == o.jurisdiction)
        {
            continue;
        }
        let question = crate::explain::Question {
            ip: Some(o.address),
            sni,
            tenant: None,
        };
        let Ok(explained) = offline_answer(config, &geo, &question) else {
            continue;
        };
        let placed = explained["jurisdiction"].as_str();
        if placed != Some(o.jurisdiction.as_str()) {
            let country = explained["country"]
                .as_str()
                .unwrap_or("not in the database");
            let by = match explained["decided_by"].as_str() {
                Some("tenant") => format!(
                    "by the pin of tenant {} of --config, whose server name the target is",
                    explained["tenant"]["name"].as_str().unwrap_or("?")
                ),
                _ => "by the GeoIP database of --config".to_string(),
            };
            report.push(
                "--origin",
                format!(
                    "{}={}: the proxy places {} in {} (country {country}, {by}); give an address of {}",
                    o.jurisdiction,
                    o.address,
                    o.address,
                    placed.map_or("no jurisdiction".to_string(), |j| format!("jurisdiction {j}")),
                    o.jurisdiction
                ),
            );
        }
    }
    report.finish(Some(()))
}

fn config_error(report: residency_core::report::ConfigReport) -> ExitCode {
    eprintln!("error: {report}");
    ExitCode::from(2)
}

fn runtime_error(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(1)
}

fn block_on(fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    block_on_with(None, fut)
}

/// Which scheduler a process runs on, and why (logged at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeChoice {
    /// Tokio's current-thread scheduler: everything on the main thread.
    pub current_thread: bool,
    /// Worker threads of the multi-threaded scheduler (1 when current-thread).
    pub workers: usize,
    pub why: &'static str,
}

/// `runtime.worker_threads` if set; otherwise the current-thread scheduler
/// when the process may run on one CPU only (`available_parallelism`
/// honours CPU affinity and cgroup quotas), where the multi-threaded one
/// costs ~25 % more CPU per request for nothing; else one worker per CPU.
pub fn runtime_choice(configured: Option<usize>, parallelism: usize) -> RuntimeChoice {
    match configured {
        Some(1) => RuntimeChoice {
            current_thread: true,
            workers: 1,
            why: "runtime.worker_threads = 1",
        },
        Some(n) => RuntimeChoice {
            current_thread: false,
            workers: n,
            why: "runtime.worker_threads",
        },
        None if parallelism <= 1 => RuntimeChoice {
            current_thread: true,
            workers: 1,
            why: "one CPU available (affinity or CPU quota) and runtime.worker_threads not set",
        },
        None => RuntimeChoice {
            current_thread: false,
            workers: parallelism,
            why: "one worker per available CPU (runtime.worker_threads not set)",
        },
    }
}

/// Threads for blocking work at most: the log listener's answers (32 at
/// once), the log's own (checkpoints, cosignatures, reloads' loading) and
/// name lookups, with room to spare.
const MAX_BLOCKING_THREADS: usize = 64;

/// Runs `fut` on the runtime [`runtime_choice`] picks.
fn block_on_with(
    workers: Option<usize>,
    fut: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    let choice = runtime_choice(workers, parallelism);
    // Current-thread: tokio's single-threaded scheduler on this thread. The
    // multi-threaded one with one worker would still split the work between
    // this thread (the accept loops) and its worker, and pay cross-thread
    // wake-ups.
    let mut builder = if choice.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(choice.workers);
        b
    };
    tracing::info!(
        scheduler = if choice.current_thread {
            "current_thread"
        } else {
            "multi_thread"
        },
        workers = choice.workers,
        available_parallelism = parallelism,
        reason = choice.why,
        "runtime"
    );
    // Blocking threads bounded well below tokio's 512: the log listener's
    // answers (at most `BLOCKING_ANSWERS` at once) free their slot just
    // before their thread is idle again, so under a flood of reads each
    // next answer found none idle and started one more — 200 threads and
    // 0.9 GB (mimalloc keeps a heap per thread) from one anonymous client
    // (log API audit, stop 66). Beyond the cap, blocking work queues.
    builder.max_blocking_threads(MAX_BLOCKING_THREADS);
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return runtime_error(e.into()),
    };
    rt.block_on(async { ignore_file_size_signal() });
    let result = rt.block_on(fut);
    // Blocking work still running (a reload of a large configuration) is
    // not waited for: dropping the runtime would, past shutdown_grace.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast::<residency_core::report::ConfigReport>() {
            Ok(report) => config_error(report),
            Err(e) => runtime_error(e),
        },
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Ctrl-C (or SIGTERM) during a load test or drill: the first ends the
/// run — no upload or chaos event more, no wait for late stores (answers
/// still due are waited for only if the schedule was running); the chaos
/// undone, what was sent reconciled and reported, and the run fails — a
/// second exits at once (130), leaving all that undone but removing
/// `temporary` (the drill's directory, its keys with it).
pub fn interrupt_on_signal(temporary: Option<PathBuf>) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!(
            "interrupted: no upload or chaos event more; undoing the chaos, reconciling and reporting what was sent (Ctrl-C again to quit at once, leaving that undone)"
        );
        let _ = tx.send(true);
        shutdown_signal().await;
        if let Some(dir) = temporary {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
    rx
}

/// The log filter: `--log-level`'s, else `RUST_LOG`'s, else the default.
struct LogLevel {
    filter: String,
    /// Given with `--log-level`: it wins over `RUST_LOG`.
    explicit: bool,
}

/// As [`init_tracing`], into `file` (no colours).
fn init_tracing_to(format: LogFormat, level: &LogLevel, file: std::fs::File) {
    init_tracing_with(format, level, std::sync::Mutex::new(file), false);
}

/// The levels a log filter's bare word names.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `--log-level`: a filter tracing-subscriber takes, whose bare words are
/// levels (a bare word is a target for it: `debugg` silenced every line),
/// else a usage error (exit 2). One it did not take was ignored for
/// `info` (config audit, stop 63).
fn log_filter(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map_err(|e| format!("{e} (a level — trace, debug, info, warn, error, off —, or target=level, comma-separated)"))?;
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=')
            && !directive.contains('[')
            && !LEVELS.contains(&directive.to_ascii_lowercase().as_str())
        {
            return Err(format!(
                "`{directive}` is not a level (trace, debug, info, warn, error, off); to name a target, give its level: `{directive}=debug`"
            ));
        }
    }
    Ok(value.to_string())
}

/// `RUST_LOG`: as [`log_filter`], but a bare word may be a target (the
/// convention: `RUST_LOG=residency_proxy`), unless it reads as a misspelt
/// level (`debugg`, `warning`, `inf`: a target to the filter, which
/// silenced every line; verification, stop 63).
fn env_filter(value: &str) -> Result<&str, String> {
    for directive in value.split(',').map(str::trim) {
        let word = directive.to_ascii_lowercase();
        let misspelt = !word.contains(['=', '[', ':', '_'])
            && !LEVELS.contains(&word.as_str())
            && LEVELS
                .iter()
                .any(|l| word.len() >= 3 && (word.starts_with(l) || l.starts_with(word.as_str())));
        if misspelt {
            return Err(format!(
                "`{directive}` reads as a misspelt level (trace, debug, info, warn, error, off)"
            ));
        }
    }
    Ok(value)
}

/// The filter `--log-level` or `RUST_LOG` asks for, and which of rustls
/// and h2 it leaves unnamed (see [`rustls_cap`]).
fn filter(level: &LogLevel) -> (tracing_subscriber::EnvFilter, Quiet) {
    use tracing_subscriber::EnvFilter;
    // Held to `--log-level`'s rules (a misspelt level silenced every
    // line: verification, stop 63).
    let from_env = || match std::env::var("RUST_LOG") {
        Ok(value) => env_filter(&value)
            .and_then(|v| EnvFilter::builder().parse(v).map_err(|e| e.to_string()))
            .inspect_err(|e| eprintln!("warning: RUST_LOG: {e}: not used"))
            .ok()
            .map(|f| (f, value)),
        Err(_) => None,
    };
    let given = || {
        EnvFilter::try_new(&level.filter)
            .ok()
            .map(|f| (f, level.filter.clone()))
    };
    let chosen = if level.explicit {
        given().or_else(from_env)
    } else {
        from_env().or_else(given)
    };
    let (filter, text) = chosen.unwrap_or_else(|| (EnvFilter::new("info"), String::new()));
    let quiet = Quiet {
        rustls: !names(&text, "rustls"),
        h2: !names(&text, "h2"),
    };
    (filter, quiet)
}

/// Whether a filter's directives name `krate` or a module of it as their
/// target (`h2=debug`, `h2::proto[conn]=trace`; not `oauth2=debug`, which
/// merely holds the letters: verification, stop 66).
fn names(filter: &str, krate: &str) -> bool {
    filter.split(',').any(|directive| {
        let target = directive
            .split(['=', '['])
            .next()
            .unwrap_or_default()
            .trim();
        target
            .strip_prefix(krate)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Which libraries' lines below `error` [`rustls_cap`] leaves out: those
/// the filter does not name.
#[derive(Clone, Copy)]
struct Quiet {
    rustls: bool,
    h2: bool,
}

/// rustls warns of what any client can send (an IP address as SNI, a
/// renegotiation), a line per handshake, and h2 of a client's rapid
/// resets, a line per connection (soak audit, stop 66; the proxy counts
/// the GOAWAY it sends in `residency_connections_closed_total`): the lines
/// below `error` of each the filter does not name ([`Quiet`]) are left out
/// (TLS audit, stop 64). A cap on what the filter lets through, never a
/// line it would not (a directive `rustls=error` turned rustls's errors on
/// under `off`).
fn rustls_cap(
    quiet: Quiet,
) -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    let of = |target: &str, krate: &str| {
        target
            .strip_prefix(krate)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    };
    tracing_subscriber::filter::filter_fn(move |m| {
        let capped =
            (quiet.rustls && of(m.target(), "rustls")) || (quiet.h2 && of(m.target(), "h2"));
        !(capped && *m.level() > tracing::Level::ERROR)
    })
}

/// Log lines a server's writer holds for stderr while its reader is slow;
/// past them lines are dropped (a few MB at most).
const LOG_LINES_BUFFERED: usize = 8192;

/// Logs to stderr, written by the calling thread: the command-line tools.
fn init_tracing(format: LogFormat, level: &LogLevel) {
    init_tracing_with(format, level, || Stderr, stderr_is_terminal());
}

/// Colours only on a terminal: a log file or journald gets plain text.
fn stderr_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// The process's stderr, counting the lines it refuses (a full disk, a pipe
/// whose reader has gone) in `residency_log_lines_dropped_total`: they were
/// lost unsaid.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write(buf).inspect_err(|_| {
            crate::metrics::count_unwritten_log_line();
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Logs to stderr for a server (`serve`, the demo, the sink, a witness).
/// When stderr has a reader — a pipe, a socket, a terminal: journald, a
/// container runtime, a log shipper — a thread of its own writes it: a
/// reader that stops would otherwise stop every request at its log line,
/// each thread in turn. Lines it cannot take are dropped and counted
/// (`residency_log_lines_dropped_total`). The guard, held while the server
/// runs, writes what is left when dropped (waiting a second at most). To a
/// file (or `/dev/null`) lines are written directly: no reader can stop,
/// and a thread would make every system call of a single-threaded proxy
/// take glibc's multi-threaded path (~200 instructions a request in
/// `benches/compare`'s A).
fn init_server_tracing(
    format: LogFormat,
    level: &LogLevel,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    if !stderr_has_reader() {
        init_tracing(format, level);
        return None;
    }
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_BUFFERED)
        .thread_name("residency-log")
        .finish(Stderr);
    crate::metrics::count_dropped_log_lines(writer.error_counter());
    init_tracing_with(format, level, writer, stderr_is_terminal());
    Some(guard)
}

/// Whether stderr is a pipe, a socket or a terminal (whose reader can stop
/// taking lines), rather than a file; unknown counts as one.
#[cfg(unix)]
fn stderr_has_reader() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::FileTypeExt as _;
    let stderr = std::io::stderr();
    if std::io::IsTerminal::is_terminal(&stderr) {
        return true;
    }
    let kind = stderr
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .map(|m| m.file_type());
    match kind {
        Ok(kind) => kind.is_fifo() || kind.is_socket(),
        Err(_) => true,
    }
}

#[cfg(not(unix))]
fn stderr_has_reader() -> bool {
    true
}

/// Logs through `writer`, with colours when `ansi` (stderr a terminal).
fn init_tracing_with<W>(format: LogFormat, level: &LogLevel, writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (filter, quiet) = filter(level);
    // A log line that cannot be written (stderr on a full disk, a closed
    // pipe) is dropped: the default reports it with `eprintln!`, which
    // panics on the same broken stderr — inside a request.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(rustls_cap(quiet))
            .try_init(),
        // Escaped: a value a client chose cannot forge a line.
        LogFormat::Text => builder
            .fmt_fields(log_text::fields())
            .finish()
            .with(rustls_cap(quiet))
            .try_init(),
    };
}

fn now_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::runtime_choice;

    /// A misspelt level in `RUST_LOG` is not used (it silenced every line:
    /// verification, stop 63); a target, by the convention, is.
    #[test]
    fn rust_log_with_a_misspelt_level_is_not_used() {
        for bad in ["debugg", "warning", "inf", "info,Errorr"] {
            assert!(super::env_filter(bad).is_err(), "{bad}");
        }
        for good in [
            "debug",
            "residency_proxy",
            "residency_proxy=debug,warn",
            "hyper::proto=trace",
            "OFF",
        ] {
            assert!(super::env_filter(good).is_ok(), "{good}");
        }
        assert!(
            super::log_filter("residency_proxy").is_err(),
            "--log-level: levels alone as bare words"
        );
    }

    /// rustls's own lines below error — a line per handshake for what any
    /// client can send (an IP address as SNI: TLS audit, stop 64) — are
    /// left out unless the filter names rustls.
    #[test]
    fn rustls_warnings_are_left_out_unless_named() {
        use super::log_text::tests::Lines;
        let logged = |filter: &str| {
            let lines = Lines::default();
            let writer = lines.clone();
            let level = super::LogLevel {
                filter: filter.to_string(),
                explicit: true,
            };
            let (filter, quiet) = super::filter(&level);
            let subscriber = tracing_subscriber::layer::SubscriberExt::with(
                tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(move || writer.clone())
                    .finish(),
                super::rustls_cap(quiet),
            );
            tracing::subscriber::with_default(subscriber, || {
                tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension");
                tracing::error!(target: "rustls::conn", "a rustls error");
                tracing::warn!(target: "h2::proto::streams::recv", "recv_reset; limit");
                tracing::warn!(target: "h2x", "another crate");
                tracing::warn!(target: "residency_proxy::server", "ours");
            });
            let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
            text
        };
        for filter in ["info", "debug", "warn"] {
            let text = logged(filter);
            assert!(
                text.contains("ours") && text.contains("a rustls error"),
                "{filter}: {text}"
            );
            assert!(!text.contains("Illegal SNI"), "{filter}: {text}");
            assert!(!text.contains("recv_reset"), "{filter}: {text}");
            assert!(text.contains("another crate"), "{filter}: {text}");
        }
        let text = logged("info,rustls=warn");
        assert!(text.contains("Illegal SNI"), "{text}");
        assert!(!text.contains("recv_reset"), "{text}");
        let text = logged("info,h2=warn");
        assert!(
            text.contains("recv_reset") && !text.contains("Illegal SNI"),
            "{text}"
        );
        let text = logged("info,h2::proto[conn]=warn");
        assert!(text.contains("recv_reset"), "{text}");
        // Letters in another target's name are not the crate's.
        let text = logged("info,oauth2=debug,myrustls=debug");
        assert!(
            !text.contains("recv_reset") && !text.contains("Illegal SNI"),
            "{text}"
        );
        // A cap, not a directive: no rustls line where the filter lets
        // none through (review, stop 64: `off` showed rustls's errors).
        for filter in ["off", "residency_proxy=debug"] {
            let text = logged(filter);
            assert!(!text.contains("rustls"), "{filter}: {text}");
        }
        assert!(logged("residency_proxy=debug").contains("ours"));
    }

    #[test]
    fn one_cpu_means_the_current_thread_scheduler_unless_configured() {
        let c = runtime_choice(None, 1);
        assert!(c.current_thread && c.workers == 1, "{c:?}");
        let c = runtime_choice(None, 8);
        assert!(!c.current_thread && c.workers == 8, "{c:?}");
        let c = runtime_choice(Some(1), 8);
        assert!(c.current_thread, "{c:?}");
        let c = runtime_choice(Some(4), 1);
        assert!(
            !c.current_thread && c.workers == 4,
            "configured wins: {c:?}"
        );
    }

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// `drill --idempotency-key` is on by default; a bare flag (as
    /// `loadtest` takes it) is `true`, `false` turns it off.
    #[test]
    fn the_drill_s_idempotency_key_takes_a_bare_flag() {
        let key = |extra: &[&str]| {
            let argv = ["residency-proxy", "drill"].iter().chain(extra).copied();
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Drill(args)) => args.idempotency_key,
                other => panic!("{extra:?}: {other:?}"),
            }
        };
        assert!(key(&[]));
        assert!(key(&["--idempotency-key"]));
        assert!(key(&["--idempotency-key", "--duration", "20s"]));
        assert!(!key(&["--idempotency-key", "false"]));
        assert!(!key(&["--idempotency-key=false"]));
    }

    #[test]
    fn key_files_append_their_suffix() {
        let (key, public) = key_paths(std::path::Path::new("keys/ingest.example.com"));
        assert_eq!(key, PathBuf::from("keys/ingest.example.com.key"));
        assert_eq!(public, PathBuf::from("keys/ingest.example.com.pub"));
        let (key, _) = key_paths(std::path::Path::new("residency-log"));
        assert_eq!(key, PathBuf::from("residency-log.key"));
    }
}
