//! `residency-proxy verify`: checks a receipt, a checkpoint, an inclusion
//! proof and a consistency proof, from files or from a log. With `--log`,
//! proofs are computed here from the log's C2SP tlog-tiles hash tiles (as
//! any tlog client would), not taken from the log's convenience endpoints.
//!
//! Everything is checked against the log's public key alone; nothing the
//! log serves is trusted until a signature or a proof says so. The answer is
//! one `VALID: …`, `INVALID: …` or `NOT CHECKED: …` line after the
//! individual checks (NOT CHECKED: the log could not be read, or its
//! checkpoint does not cover the receipt yet and its history since
//! `--previous` holds; nothing was found wrong). This
//! module only gathers the inputs; the decision is
//! [`residency_log::verdict::check`], the same steps the log's web page
//! runs in the browser, held to the same shared vectors.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;

use crate::fetch::Fetcher;

use residency_log::api::{ConsistencyProof, Entry, GenerationInfo, Generations, InclusionProof};
use residency_log::merkle::{self, Hash};
use residency_log::note::Verifier;
use residency_log::receipt::Receipt;
use residency_log::record::Record;
use residency_log::tiles::{Need, Proofs, Tile, WIDTH};
use residency_log::tlog_proof::TlogProof;
use residency_log::verdict::{self, FileDigest, Inputs};
use residency_log::witness::CosignatureVerifier;

/// What to verify; see `residency-proxy verify --help`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VerifyArgs {
    /// The log's verifier key (`name+keyid+base64`), or a file holding it.
    #[arg(long, value_parser = key_arg)]
    pub key: String,
    /// A receipt: the `Residency-Receipt` header value (or the whole header
    /// line), `@FILE` to read it from a file, or `-` for stdin.
    #[arg(long, conflicts_with = "request_id")]
    pub receipt: Option<String>,
    /// Instead of a receipt: a request id (`X-Request-Id`); its record is
    /// fetched from `--log` (from the key's generation, else the log's
    /// others, newest first, at most 64) and proven by inclusion.
    #[arg(long, requires = "log")]
    pub request_id: Option<String>,
    /// The log's base URL (its `transparency.address`), to fetch the latest
    /// checkpoint and the proofs.
    #[arg(long, value_parser = http_url)]
    pub log: Option<String>,
    /// A saved checkpoint to verify against instead of fetching one.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// A saved inclusion proof (JSON from `/proof/inclusion`).
    #[arg(long)]
    pub proof: Option<PathBuf>,
    /// A checkpoint seen earlier: prove the log has only grown since.
    #[arg(long)]
    pub previous: Option<PathBuf>,
    /// A saved consistency proof (JSON from `/proof/consistency`).
    #[arg(long)]
    pub consistency_proof: Option<PathBuf>,
    /// Save the checkpoint used, to pass as `--previous` next time.
    #[arg(long)]
    pub save_checkpoint: Option<PathBuf>,
    /// PEM CA bundle for an `https://` log (default: system roots).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Once the receipt's inclusion is proven, write it as a C2SP
    /// tlog-proof (`.tlog-proof`) to this file, the record on its `extra`
    /// line.
    #[arg(long)]
    pub export_proof: Option<PathBuf>,
    /// Check a C2SP tlog-proof offline: the checkpoint's signature and the
    /// inclusion of the record on its `extra` line, or of `--entry`.
    #[arg(
        long,
        conflicts_with_all = ["receipt", "request_id", "log", "checkpoint", "previous", "file", "save_checkpoint", "export_proof"]
    )]
    pub proof_file: Option<PathBuf>,
    /// The entry (the exact record bytes) a `--proof-file` is for, when it
    /// carries none, or to check your own copy instead of the one it carries.
    #[arg(long, requires = "proof_file")]
    pub entry: Option<PathBuf>,
    /// A witness's cosigner key (`name+keyid+base64`, type 0x04), or a file
    /// holding one; repeatable. The checkpoint (fetched, `--checkpoint` or
    /// in `--proof-file`) must carry valid cosignatures from `--quorum` of
    /// them.
    #[arg(long = "witness", value_name = "VKEY")]
    pub witnesses: Vec<String>,
    /// Your copy of the upload: hashed here and compared with the record's
    /// SHA-256 and length.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How many of the `--witness` keys must have cosigned the checkpoint
    /// (default: all of them).
    #[arg(long, value_name = "N", requires = "witnesses")]
    pub quorum: Option<usize>,
}

/// What makes the command line one no check can run — nothing to verify,
/// a file it names that is not there, `--witness` keys or a `--quorum` that
/// cannot be used — said before anything is read or fetched: a usage error
/// (exit 2, as clap's own), not a proof that failed (INVALID, exit 1),
/// which a script may take for "the log lied" (README audit, stop 64: each
/// of these printed INVALID).
pub fn usage(args: &VerifyArgs) -> Result<(), String> {
    if args.receipt.is_none()
        && args.request_id.is_none()
        && args.log.is_none()
        && args.checkpoint.is_none()
        && args.proof_file.is_none()
    {
        return Err(
            "nothing to verify: give --receipt, --request-id with --log, --log, --checkpoint or --proof-file"
                .into(),
        );
    }
    let receipt = args
        .receipt
        .as_deref()
        .and_then(|r| r.strip_prefix('@'))
        .map(PathBuf::from);
    let files = [
        ("--receipt @", receipt.as_ref()),
        ("--checkpoint ", args.checkpoint.as_ref()),
        ("--proof ", args.proof.as_ref()),
        ("--previous ", args.previous.as_ref()),
        ("--consistency-proof ", args.consistency_proof.as_ref()),
        ("--proof-file ", args.proof_file.as_ref()),
        ("--entry ", args.entry.as_ref()),
        ("--file ", args.file.as_ref()),
        ("--ca ", args.ca.as_ref()),
    ];
    for (flag, path) in files {
        let Some(path) = path else { continue };
        // A pipe is fine (`--file <(curl …)`, `/dev/stdin`); a directory
        // is not.
        match std::fs::metadata(path) {
            Err(e) => return Err(format!("{flag}{}: {e}", path.display())),
            Ok(meta) if meta.is_dir() => {
                return Err(format!(
                    "{flag}{}: a directory: give a file",
                    path.display()
                ))
            }
            Ok(_) => {}
        }
    }
    let checkpoint_given =
        args.log.is_some() || args.checkpoint.is_some() || args.proof_file.is_some();
    if !args.witnesses.is_empty() && !checkpoint_given {
        return Err(
            "--witness needs a checkpoint: give --log, --checkpoint or --proof-file".into(),
        );
    }
    if args.previous.is_some() && args.log.is_none() && args.checkpoint.is_none() {
        return Err("--previous needs a newer checkpoint: give --log or --checkpoint".into());
    }
    if args.export_proof.is_some() && args.receipt.is_none() && args.request_id.is_none() {
        return Err("--export-proof needs a record: give --receipt or --request-id".into());
    }
    if args.receipt.is_some()
        && args.checkpoint.is_some()
        && args.proof.is_none()
        && args.log.is_none()
    {
        return Err(
            "--checkpoint with a --receipt needs its inclusion proof: give --proof (or --log)"
                .into(),
        );
    }
    if args.proof.is_some() && args.receipt.is_none() && args.request_id.is_none() {
        return Err(
            "--proof is the inclusion proof of a record: give --receipt or --request-id".into(),
        );
    }
    if args.consistency_proof.is_some() && args.previous.is_none() {
        return Err("--consistency-proof needs the --previous checkpoint it starts from".into());
    }
    // What is written after the checks: a place it can go.
    for (flag, path) in [
        ("--save-checkpoint", args.save_checkpoint.as_ref()),
        ("--export-proof", args.export_proof.as_ref()),
    ] {
        let Some(path) = path else { continue };
        if path.is_dir() {
            return Err(format!(
                "{flag} {}: a directory: give a file name",
                path.display()
            ));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if !parent.is_dir() {
            return Err(format!(
                "{flag} {}: {} is not a directory",
                path.display(),
                parent.display()
            ));
        }
    }
    if let (None, Some(id)) = (&args.receipt, &args.request_id) {
        request_id_arg(id)?;
    }
    let log = key_arg(&args.key)
        .ok()
        .and_then(|key| Verifier::parse(&key).ok());
    Witnesses::from_args(args, log.as_ref())
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

/// `--request-id`, as the page takes one: it goes into the URL as it is.
fn request_id_arg(id: &str) -> Result<(), String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"._~-".contains(&b);
    match !id.is_empty() && id.len() <= 128 && id.bytes().all(plain) {
        true => Ok(()),
        false => Err(format!(
            "--request-id {id:?}: a request id is 1 to 128 letters, digits, '.', '_', '~' or '-'"
        )),
    }
}

/// `--key` as given, once it reads as a verifier key (itself, or a file
/// holding one): a key that cannot be used is a usage error (exit 2), not
/// a proof that failed (INVALID, exit 1).
fn key_arg(text: &str) -> Result<String, String> {
    let key = match std::fs::read_to_string(text) {
        Ok(contents) => contents.trim().to_string(),
        Err(e) if !text.contains('+') => {
            return Err(format!(
                "{e} (give the log's verifier key, or a file holding it)"
            ))
        }
        Err(_) => text.to_string(),
    };
    Verifier::parse(&key).map_err(|e| format!("the key: {e}"))?;
    // The key itself, read once: a pipe (`--key <(…)`) has nothing left
    // for a second read (verification, stop 64).
    Ok(key)
}

/// `--witness` values given as files (or pipes) replaced by the keys they
/// hold, read once, before anything else reads them.
pub fn read_witness_files(args: &mut VerifyArgs) {
    for w in &mut args.witnesses {
        if let Ok(text) = std::fs::read_to_string(&*w) {
            *w = text.trim().to_string();
        }
    }
}

/// `--log`: an `http://` or `https://` URL (else a usage error, exit 2).
fn http_url(text: &str) -> Result<String, String> {
    match text.starts_with("http://") || text.starts_with("https://") {
        true => Ok(text.to_string()),
        false => Err(format!(
            "not an http:// or https:// URL (e.g. https://{text})"
        )),
    }
}

/// The outcome: the checks that passed, then VALID or INVALID and why —
/// or NOT CHECKED, when the log (or a witness) could not be read, or the
/// checkpoint does not cover the receipt yet (and nothing else was found
/// wrong).
#[derive(Debug)]
pub struct Report {
    pub checks: Vec<String>,
    pub verdict: Result<String, String>,
    /// The check could not be made: the log did not answer, or answered
    /// that it could not (5xx, 429), or its checkpoint does not cover the
    /// receipt's index yet ([`verdict::Step::not_checked`]), so nothing was
    /// found wrong either.
    pub unchecked: bool,
}

/// A verdict that is NOT CHECKED ([`verdict::Failure::not_checked`]), as
/// an error: [`verify`] tells it from INVALID by this type.
#[derive(Debug)]
struct NotChecked(String);

impl std::fmt::Display for NotChecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotChecked {}

/// Whether `e` is a verdict that could not be checked yet (with context
/// around it).
fn not_checked(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.is::<NotChecked>())
}

impl Report {
    pub fn valid(&self) -> bool {
        self.verdict.is_ok()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.checks {
            writeln!(f, "  ok  {}", printable(c))?;
        }
        match &self.verdict {
            Ok(summary) => writeln!(f, "VALID: {}", printable(summary)),
            Err(why) if self.unchecked => {
                writeln!(
                    f,
                    "NOT CHECKED: {} (nothing was found wrong)",
                    printable(why)
                )
            }
            Err(why) => writeln!(f, "INVALID: {}", printable(why)),
        }
    }
}

/// Text as printed: control characters escaped (`\u{1b}`, `\n`). Much of
/// a report is what the log sent (an error's body, a record's fields), and
/// a hostile log's escape sequences moved the cursor over the verdict,
/// erased it and printed a VALID of its own (fuzz audit, stop 64).
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c.is_control() {
            true => out.extend(c.escape_default()),
            false => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Runs every check the arguments ask for; a command line no check can
/// run ([`usage`]) is the verdict's error, nothing read or fetched.
pub async fn verify(args: &VerifyArgs) -> Report {
    if let Err(e) = usage(args) {
        return Report {
            checks: Vec::new(),
            verdict: Err(e),
            unchecked: false,
        };
    }
    // The receipt read once: stdin (`-`) cannot be read twice.
    let mut args = args.clone();
    if let Some(r) = &args.receipt {
        match read_receipt(r) {
            Ok(text) => args.receipt = Some(text),
            Err(e) => {
                return Report {
                    checks: Vec::new(),
                    verdict: Err(format!("{e:#}")),
                    unchecked: false,
                }
            }
        }
    }
    let args = &args;
    let mut checks = Vec::new();
    let result = run(args, &mut checks).await;
    let unavailable = result.as_ref().is_err_and(crate::fetch::unavailable);
    if unavailable && receipt_of_the_key(args) {
        // What needs no log is checked anyway: a receipt whose signature
        // (or whose file) fails is INVALID, whether or not the log can be
        // read — else blocking the log would turn a forgery into "not
        // checked". Only for a receipt of the key's own log: one of
        // another generation is checked through the log's list of them.
        let offline = VerifyArgs {
            key: args.key.clone(),
            receipt: args.receipt.clone(),
            file: args.file.clone(),
            ..VerifyArgs::default()
        };
        let mut offline_checks = Vec::new();
        if let Err(e) = run(&offline, &mut offline_checks).await {
            return Report {
                checks: offline_checks,
                verdict: Err(format!("{e:#}")),
                unchecked: false,
            };
        }
    }
    // A checkpoint that does not cover the receipt yet is the verdict's
    // NOT CHECKED: every step before it passed (the receipt's signature
    // and record, the checkpoint's signature and cosignatures), and so did
    // the history since `--previous` (one that fails is the verdict,
    // INVALID); inclusion and `--file` wait for a covering checkpoint, as
    // on the page (nothing is judged without the log here: it was read).
    let unchecked = unavailable || result.as_ref().is_err_and(not_checked);
    Report {
        checks,
        verdict: result.map_err(|e| format!("{e:#}")),
        unchecked,
    }
}

/// Whether `--receipt` (as read) can be judged without the log: it is
/// signed and names the log of `--key` (a key, or a file holding one), or
/// is no receipt at all. (An unsigned one, `receipts = "log"`, is proven
/// by the log alone.)
fn receipt_of_the_key(args: &VerifyArgs) -> bool {
    let Some(text) = args.receipt.as_deref() else {
        return false;
    };
    let Ok(receipt) = Receipt::parse(text) else {
        return true;
    };
    if receipt.signature.is_none() {
        return false;
    }
    key_arg(&args.key)
        .ok()
        .and_then(|key| Verifier::parse(&key).ok())
        .is_some_and(|v| v.name() == receipt.log)
}

async fn run(args: &VerifyArgs, checks: &mut Vec<String>) -> anyhow::Result<String> {
    let key = key_arg(&args.key).map_err(|e| anyhow!("--key {}: {e}", args.key))?;
    let verifier = Verifier::parse(&key).map_err(|e| anyhow!("the key: {e}"))?;
    let witnesses = Witnesses::from_args(args, Some(&verifier))?;
    if let Some(proof) = &args.proof_file {
        return check_tlog_proof(proof, args.entry.as_ref(), &verifier, &witnesses, checks);
    }
    let log = match &args.log {
        Some(url) => Some(Log::open(url, args.ca.as_ref(), &verifier).await?),
        None => None,
    };
    // A record of another generation of the log is checked against that
    // generation (`elsewhere`).
    let mut elsewhere = None;
    let receipt = match (&args.receipt, &args.request_id, &log) {
        (Some(r), _, _) => {
            let text = read_receipt(r)?;
            if let (Some(log), Ok(claimed)) = (&log, Receipt::parse(&text)) {
                if claimed.log != verifier.name() {
                    elsewhere = log.named(&claimed.log, &verifier).await?;
                }
            }
            Some(text)
        }
        (None, Some(id), Some(log)) => {
            // The record by request id, as an unsigned receipt.
            let (entry, found) = log.record(id, &verifier).await?;
            let name = found
                .as_ref()
                .map_or(verifier.name(), |g| g.verifier.name());
            let receipt = Receipt {
                log: name.to_string(),
                index: entry.index,
                record: entry.record.into_bytes(),
                signature: None,
            };
            elsewhere = found;
            Some(receipt.encode())
        }
        _ => None,
    };
    let (mut fetcher, mut key, mut verifier) = (log.map(|l| l.own), key, verifier);
    // Said once the verdict holds (as an `ok` line), else with the failure.
    let mut found = None;
    if let Some(g) = elsewhere {
        found = Some(g.found);
        fetcher = Some(g.fetcher);
        key = g.key;
        verifier = g.verifier;
    }
    let summary = check_with(args, checks, key, verifier, fetcher, receipt, &witnesses).await;
    match (summary, found) {
        (Ok(summary), Some(found)) => {
            checks.insert(0, found);
            Ok(summary)
        }
        (Err(e), Some(found)) => Err(e.context(found)),
        (summary, None) => summary,
    }
}

/// The checks of [`run`] once the log's generation, key and record are
/// known.
async fn check_with(
    args: &VerifyArgs,
    checks: &mut Vec<String>,
    key: String,
    verifier: Verifier,
    fetcher: Option<Fetcher>,
    receipt: Option<String>,
    witnesses: &Witnesses,
) -> anyhow::Result<String> {
    // What the receipt claims, to know which proof to fetch; the verdict
    // checks it.
    let claimed = receipt.as_deref().and_then(|r| Receipt::parse(r).ok());
    let mut inputs = Inputs {
        key,
        receipt,
        // Looked up by it: the log must have answered with its record.
        request_id: args
            .receipt
            .is_none()
            .then(|| args.request_id.clone())
            .flatten(),
        witnesses: args.witnesses.iter().map(|w| witness_key(w)).collect(),
        quorum: args.quorum,
        file: match &args.file {
            Some(path) => Some(file_digest(path)?),
            None => None,
        },
        ..Inputs::default()
    };

    // `--witness` and `--previous` come with a checkpoint ([`usage`]).
    if fetcher.is_none() && args.checkpoint.is_none() {
        return conclude(verdict::check(&inputs), checks);
    }

    // The checkpoint: saved, or the log's latest (waiting briefly for one
    // that covers a fresh receipt and carries the witnesses' cosignatures).
    let need = claimed.as_ref().map_or(0, |r| r.index.saturating_add(1));
    let note = match &args.checkpoint {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => {
            let fetcher = fetcher.as_ref().context("no log to fetch from")?;
            let mut waited = Duration::ZERO;
            loop {
                let note = fetcher.text("/checkpoint").await?;
                // One that does not verify is judged at once: a log that
                // served it has misbehaved, even if a good one came next
                // (fuzz audit, stop 64: it was skipped unsaid, VALID).
                let Ok(cp) = verdict::open_checkpoint(&note, &verifier) else {
                    break note;
                };
                let covers = cp.size >= need;
                let cosigned = witnesses.check(&note).is_ok();
                if (covers && cosigned) || waited >= Duration::from_secs(10) {
                    break note;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                waited += Duration::from_millis(250);
            }
        }
    };
    let checkpoint = verdict::open_checkpoint(&note, &verifier).ok();
    inputs.checkpoint = Some(note.clone());

    // The inclusion path: saved, or computed here from the log's tiles
    // (C2SP tlog-tiles).
    if let (Some(receipt), Some(cp)) = (&claimed, &checkpoint) {
        if let Some(path) = &args.proof {
            let proof: InclusionProof = read_json(path)?;
            if proof.index != receipt.index || proof.size != cp.size {
                bail!(
                    "the inclusion proof is for index {} in a tree of {}, not index {} in {}",
                    proof.index,
                    proof.size,
                    receipt.index,
                    cp.size
                );
            }
            inputs.inclusion = Some(proof.hashes);
        } else if let (Some(f), true) = (&fetcher, receipt.index < cp.size) {
            let mut tiles = Proofs::new(cp.size);
            let path = from_tiles(f, &mut tiles, |t| t.inclusion_proof(receipt.index)).await?;
            inputs.inclusion = Some(hexes(&path));
        }
    }

    // The checkpoint seen before, and the consistency path to this one.
    if let Some(path) = &args.previous {
        let old_note =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let old = verdict::open_checkpoint(&old_note, &verifier).ok();
        inputs.previous = Some(old_note);
        if let Some(path) = &args.consistency_proof {
            let proof: ConsistencyProof = read_json(path)?;
            if let (Some(old), Some(new)) = (&old, &checkpoint) {
                if proof.from != old.size || proof.to != new.size {
                    bail!(
                        "the consistency proof is from {} to {}, not {} to {}",
                        proof.from,
                        proof.to,
                        old.size,
                        new.size
                    );
                }
            }
            inputs.consistency = Some(proof.hashes);
        } else if let (Some(f), Some(old), Some(new)) = (&fetcher, &old, &checkpoint) {
            if 0 < old.size && old.size < new.size {
                let mut tiles = Proofs::new(new.size);
                let path = from_tiles(f, &mut tiles, |t| t.consistency_proof(old.size)).await?;
                inputs.consistency = Some(hexes(&path));
            }
        }
    }

    let summary = conclude(verdict::check(&inputs), checks)?;
    if let (Some(path), Some(receipt), Some(hashes)) =
        (&args.export_proof, &claimed, &inputs.inclusion)
    {
        let proof = TlogProof {
            extra: Some(receipt.record.clone()),
            index: receipt.index,
            path: verdict::hashes(hashes).map_err(anyhow::Error::msg)?,
            checkpoint: note.clone(),
        };
        std::fs::write(path, proof.encode())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.save_checkpoint {
        std::fs::write(path, &note).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

/// The verdict's checks, and its summary or the failure (a [`NotChecked`]
/// one when the verdict says nothing was found wrong).
fn conclude(
    verdict: Result<verdict::Verified, verdict::Failure>,
    checks: &mut Vec<String>,
) -> anyhow::Result<String> {
    match verdict {
        Ok(v) => {
            checks.extend(v.checks);
            Ok(v.summary)
        }
        Err(f) if f.not_checked() => Err(NotChecked(f.message).into()),
        Err(f) => Err(anyhow!(f.message)),
    }
}

/// SHA-256 and length of `--file`, read in 64 KiB pieces.
fn file_digest(path: &PathBuf) -> anyhow::Result<FileDigest> {
    use std::io::Read as _;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut buf, mut bytes) = (vec![0; 64 * 1024], 0u64);
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest {
        sha256: residency_core::hex::encode(ctx.finish().as_ref()),
        bytes,
    })
}

/// The most of a log's other generations one `--request-id` is looked for
/// in, newest first (one lookup each), as the log's page: a log may list
/// thousands.
const MAX_LOOKUPS: usize = 64;

/// The longest those lookups take together.
const SEARCH_TIME: Duration = Duration::from_secs(60);

/// The log at `--log`. A log that rolled to a new origin at its size limit
/// serves each generation under its own prefix (`/generations`); the root
/// serves the current one, and is used as is when the log has no such list.
struct Log {
    /// The generation whose origin is the key's name (the root when the
    /// log lists none).
    own: Fetcher,
    /// The root, and the log's list of generations (empty without one).
    root: Fetcher,
    list: Vec<GenerationInfo>,
}

/// A generation of the log other than the key's, as a check runs against
/// it: its prefix, its key (the given key's public key under its origin's
/// name) and where the record was found (a check line).
struct Generation {
    fetcher: Fetcher,
    verifier: Verifier,
    key: String,
    found: String,
}

impl Log {
    async fn open(url: &str, ca: Option<&PathBuf>, verifier: &Verifier) -> anyhow::Result<Log> {
        let root = Fetcher::new(url, ca)?;
        // A log without generations has no list (404): its root is the
        // key's. Any other failure is one: as the page, verify does not
        // check against the root when it cannot tell.
        let answer = root.answer("/generations").await?;
        let list = match answer.status {
            http::StatusCode::NOT_FOUND => Vec::new(),
            status if status.is_success() => {
                serde_json::from_slice::<Generations>(&answer.body)
                    .context("/generations: the log's list of generations is not one")?
                    .generations
            }
            _ => return Err(answer.failed(&format!("{}/generations", root.base()))),
        };
        let own = match list.iter().find(|g| g.origin == verifier.name()) {
            Some(g) => {
                // Only a prefix of the log's own form: anything else
                // (another host's name glued on, `..`) is not followed.
                if !prefix_is_numbered(&g.prefix) {
                    bail!(
                        "the log lists generation {} under the prefix {:?}, not /generations/<n>/",
                        g.generation,
                        g.prefix
                    );
                }
                root.at(&g.prefix)
            }
            None => root.at(""),
        };
        Ok(Log { own, root, list })
    }

    /// The log's generations but the key's, newest first, with the log's
    /// first origin; or why none is looked in: the list must name the key
    /// as a generation whose origin fits (`root`, or `<root>/<n>`).
    fn others(&self, verifier: &Verifier) -> Result<(String, Vec<&GenerationInfo>), String> {
        let mine = self
            .list
            .iter()
            .find(|g| Verifier::parse(&g.key).is_ok_and(|k| k == *verifier));
        let mut others: Vec<_> = self
            .list
            .iter()
            .filter(|g| !mine.is_some_and(|m| std::ptr::eq(*g, m)))
            .collect();
        others.sort_by_key(|g| std::cmp::Reverse(g.generation));
        let Some(mine) = mine else {
            return Err("it does not list the given key among its generations".into());
        };
        let name = verifier.name();
        if mine.generation == 1 {
            return Ok((name.to_string(), others));
        }
        let suffix = format!("/{}", mine.generation);
        match name.strip_suffix(&suffix) {
            Some(root) if !root.is_empty() => Ok((root.to_string(), others)),
            _ => Err(format!(
                "it lists the given key as its generation {}, whose origin would end in {suffix}",
                mine.generation
            )),
        }
    }

    /// Listed generation `g`, as verify takes it, or why not. The list is
    /// not signed: a generation is taken only if its origin is the name the
    /// log gives generation n (`root`, then `<root>/<n>`), it is served
    /// under `/generations/<n>/`, and its listed key is the given key's
    /// public key under that name (its key ID recomputed).
    fn judge(
        &self,
        g: &GenerationInfo,
        root: &str,
        verifier: &Verifier,
    ) -> Result<(Fetcher, Verifier), String> {
        let n = g.generation;
        let origin = match n {
            0 => return Err("it is numbered 0; generations count from 1".into()),
            1 => root.to_string(),
            n => format!("{root}/{n}"),
        };
        if g.origin != origin {
            return Err(format!(
                "its origin is not the name this log gives generation {n}, which is {origin}"
            ));
        }
        if g.prefix != format!("/generations/{n}/") {
            return Err(format!(
                "it is listed under the prefix {:?}, not /generations/{n}/",
                g.prefix
            ));
        }
        let theirs =
            Verifier::parse(&g.key).map_err(|e| format!("its listed key is not usable: {e}"))?;
        if theirs.name() != origin {
            return Err(format!(
                "its listed key is named {}, not {origin}",
                theirs.name()
            ));
        }
        if theirs.public_key() != verifier.public_key() {
            return Err("its listed key has another public key than the given key".into());
        }
        Ok((self.root.at(&g.prefix), theirs))
    }

    /// The generation a receipt names by its origin (`log`), when the log
    /// lists it and it is taken; an error says why a listed one is not.
    /// `None` when the log does not list it: the verdict says whose the
    /// key is.
    async fn named(&self, log: &str, verifier: &Verifier) -> anyhow::Result<Option<Generation>> {
        let listed = || self.list.iter().filter(|g| g.origin == log);
        let Some(first) = listed().next() else {
            return Ok(None);
        };
        let (root, _) = self
            .others(verifier)
            .map_err(|why| refused(log, first, &why))?;
        let mut why = None;
        // A log lists each origin once; a list that repeats one is judged
        // no further than the search's bound.
        for g in listed().take(MAX_LOOKUPS) {
            match self.judge(g, &root, verifier) {
                Ok((fetcher, theirs)) => return Ok(Some(found(g, fetcher, theirs, verifier))),
                Err(e) => {
                    why.get_or_insert(e);
                }
            }
        }
        Err(refused(log, first, &why.unwrap_or_default()))
    }

    /// The record of request id `id`: in the key's generation, else in the
    /// log's others, newest first, at most [`MAX_LOOKUPS`] of them (with
    /// the generation that holds it).
    async fn record(
        &self,
        id: &str,
        verifier: &Verifier,
    ) -> anyhow::Result<(Entry, Option<Generation>)> {
        if let Some(entry) = record_in(&self.own, id).await? {
            return Ok((entry, None));
        }
        let tail =
            "a record is written when the upload is answered; check the id, or try its receipt";
        if self.list.len() <= 1 {
            bail!("the log has no record for request id {id} (yet): {tail}");
        }
        let (root, others) = match self.others(verifier) {
            Ok(found) => found,
            Err(why) => bail!(
                "the log has no record for request id {id} (yet) in the given key's generation; it lists {} other generation(s), but {why}, so verify looks in none of them: {tail}",
                self.list.len() - 1
            ),
        };
        let (mut looked, mut refusals) = (0, Vec::new());
        // A log that answers each lookup slowly (up to the fetcher's
        // timeouts) is not waited for 64 times over.
        let deadline = tokio::time::Instant::now() + SEARCH_TIME;
        for g in others.iter().take(MAX_LOOKUPS) {
            match self.judge(g, &root, verifier) {
                Ok((fetcher, theirs)) => {
                    looked += 1;
                    let lookup = tokio::time::timeout_at(deadline, record_in(&fetcher, id));
                    let Ok(entry) = lookup.await else {
                        bail!(
                            "the log has no record for request id {id} in the given key's generation, and looking in its others took more than {}s ({looked} looked in); try the upload's receipt, which names its generation",
                            SEARCH_TIME.as_secs()
                        );
                    };
                    if let Some(entry) = entry? {
                        return Ok((entry, Some(found(g, fetcher, theirs, verifier))));
                    }
                }
                Err(why) => refusals.push(format!("generation {}: {why}", g.generation)),
            }
        }
        let mut why = format!(
            "the log has no record for request id {id} (yet): not in the given key's generation, nor in the {looked} other generation(s) verify looked in"
        );
        if !refusals.is_empty() {
            why += &format!(
                "; it does not look in {} listed generation(s) (the log's list is not signed; a generation is taken only if its key is the given key's public key under that generation's origin): {}",
                refusals.len(),
                refusals.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            );
        }
        if others.len() > MAX_LOOKUPS {
            why += &format!(
                "; verify looks in at most {MAX_LOOKUPS} other generations, newest first, and this log lists {} (a receipt names its generation, and is checked there)",
                others.len()
            );
        }
        bail!("{why}; {tail}")
    }
}

/// Whether `prefix` is of the log's own form, `/generations/<n>/`.
fn prefix_is_numbered(prefix: &str) -> bool {
    prefix
        .strip_prefix("/generations/")
        .and_then(|rest| rest.strip_suffix('/'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Why a receipt's generation `g` (origin `log`) is not checked.
fn refused(log: &str, g: &GenerationInfo, why: &str) -> anyhow::Error {
    anyhow!(
        "the receipt is of {log}, which the log lists as its generation {}, but {why}: the log's list of generations is not signed, so verify does not take that generation's key from it",
        g.generation
    )
}

/// Generation `g`, taken, with the check line saying where the record is.
fn found(g: &GenerationInfo, fetcher: Fetcher, theirs: Verifier, given: &Verifier) -> Generation {
    Generation {
        found: format!(
            "the record is in generation {} of the log (origin {}), not in the given key's ({}): checked against generation {}'s own checkpoint, which the same key signs under that origin's name as {} (a checkpoint saved or a proof exported is that generation's: check it with that key)",
            g.generation,
            theirs.name(),
            given.name(),
            g.generation,
            g.key.trim()
        ),
        key: g.key.trim().to_string(),
        fetcher,
        verifier: theirs,
    }
}

/// The record of request id `id` in the generation `f` serves, or `None`
/// when it answers 404.
async fn record_in(f: &Fetcher, id: &str) -> anyhow::Result<Option<Entry>> {
    let path = format!("/records/{id}");
    let answer = f.answer(&path).await?;
    if answer.status == http::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !answer.status.is_success() {
        return Err(answer.failed(&format!("{}{path}", f.base())));
    }
    serde_json::from_slice(&answer.body)
        .map(Some)
        .with_context(|| format!("{path}: unexpected answer"))
}

/// A `--witness` argument: the key, or the file holding it.
fn witness_key(arg: &str) -> String {
    std::fs::read_to_string(arg)
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|_| arg.to_string())
}

fn hexes(path: &[Hash]) -> Vec<String> {
    path.iter()
        .map(|h| residency_core::hex::encode(h))
        .collect()
}

/// The receipt's text: as given, `@FILE`, or `-` for stdin.
fn read_receipt(arg: &str) -> anyhow::Result<String> {
    if arg == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the receipt from stdin")
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
    } else {
        Ok(arg.to_string())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not a proof", path.display()))
}

fn short(hash: &Hash) -> String {
    residency_core::hex::encode(&hash[..8])
}

/// `--proof-file`: a C2SP tlog-proof checked offline, for the record on
/// its `extra` line or `--entry`.
fn check_tlog_proof(
    proof: &PathBuf,
    entry: Option<&PathBuf>,
    verifier: &Verifier,
    witnesses: &Witnesses,
    checks: &mut Vec<String>,
) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(proof).with_context(|| format!("reading {}", proof.display()))?;
    let parsed = TlogProof::parse(&text)
        .map_err(|e| anyhow!("{} is not a tlog-proof: {e}", proof.display()))?;
    // The proof's extra line is not trusted for anything but a candidate:
    // it counts only once it is proven to be the leaf.
    let (entry, from) = match (entry, &parsed.extra) {
        (Some(path), _) => (
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            "--entry",
        ),
        (None, Some(extra)) => (extra.clone(), "the proof's extra line"),
        (None, None) => bail!(
            "{} carries no record (no extra line): give the record's exact bytes with --entry",
            proof.display()
        ),
    };
    let checkpoint = parsed
        .verify(&entry, verifier)
        .map_err(anyhow::Error::msg)?;
    checks.push(format!(
        "checkpoint signed by {}: tree size {}, root {}",
        verifier.name(),
        checkpoint.size,
        short(&checkpoint.root)
    ));
    if let Some(check) = witnesses.check(&parsed.checkpoint)? {
        checks.push(check);
    }
    checks.push(format!(
        "record {} (from {from}) is leaf {} of the checkpointed tree (tlog-proof, {} hashes)",
        short(&merkle::leaf_hash(&entry)),
        parsed.index,
        parsed.path.len()
    ));
    if let Ok(record) = Record::from_bytes(&entry) {
        // Proven in the log, and still no proof of storage: a refusal's
        // record is INVALID here as its receipt is (crypto audit, stop 66:
        // a 503's record said "Stored in data centre zurich", VALID).
        if let Some(why) = verdict::not_stored(&record) {
            bail!(why);
        }
        checks.push(format!("the record: {}", verdict::sentence(&record)));
    }
    Ok(format!(
        "entry {} of {} at tree size {}",
        parsed.index, checkpoint.origin, checkpoint.size
    ))
}

/// Answers `query` from the log's hash tiles, fetching each tile it asks
/// for (O(log n) of them).
async fn from_tiles<T>(
    f: &Fetcher,
    tiles: &mut Proofs,
    query: impl Fn(&Proofs) -> Result<T, Need>,
) -> anyhow::Result<T> {
    // A proof needs at most two tiles per level (63 levels).
    for _ in 0..256 {
        match query(tiles) {
            Ok(answer) => return Ok(answer),
            Err(Need::Missing(tile)) => {
                let bytes = fetch_tile(f, tile).await?;
                tiles.insert(tile, &bytes).map_err(anyhow::Error::msg)?;
            }
            Err(Need::OutOfRange) => bail!("outside the checkpointed tree"),
        }
    }
    bail!("the log's tiles never complete the proof")
}

/// A hash tile. A partial one the log no longer has (tlog-tiles lets a log
/// delete partials once the full tile exists) is taken from the full
/// tile's prefix, as the spec suggests clients do.
async fn fetch_tile(f: &Fetcher, tile: Tile) -> anyhow::Result<Bytes> {
    let path = format!("/{}", tile.path());
    let answer = f.answer(&path).await?;
    if answer.status.is_success() {
        return Ok(answer.body);
    }
    if answer.status == http::StatusCode::NOT_FOUND && u64::from(tile.width) < WIDTH {
        let full = Tile {
            width: WIDTH as u16,
            ..tile
        };
        if let Ok(bytes) = f.get(&format!("/{}", full.path())).await {
            let want = usize::from(tile.width) * 32;
            if bytes.len() >= want {
                return Ok(bytes.slice(..want));
            }
        }
    }
    Err(answer.failed(&format!("{}{path}", f.base())))
}

/// `--witness` keys and `--quorum`: how many of them must have cosigned.
struct Witnesses {
    keys: Vec<CosignatureVerifier>,
    quorum: usize,
}

impl Witnesses {
    /// `log`: the log's key, which no witness key may be (when it parses).
    fn from_args(args: &VerifyArgs, log: Option<&Verifier>) -> anyhow::Result<Witnesses> {
        let mut keys: Vec<CosignatureVerifier> = Vec::new();
        for arg in &args.witnesses {
            let text = std::fs::read_to_string(arg).unwrap_or_else(|_| arg.clone());
            let key = CosignatureVerifier::parse(text.trim())
                .map_err(|e| anyhow!("--witness {arg}: {e}"))?;
            keys.push(key);
        }
        CosignatureVerifier::check_distinct(&keys).map_err(|e| anyhow!("--witness: {e}"))?;
        if let Some(log) = log {
            CosignatureVerifier::check_not_the_log(&keys, &log.public_key())
                .map_err(|e| anyhow!("--witness: {e}"))?;
        }
        let quorum = args.quorum.unwrap_or(keys.len());
        if quorum > keys.len() {
            bail!(
                "--quorum {quorum} is more than the {} --witness keys given",
                keys.len()
            );
        }
        if args.quorum == Some(0) {
            bail!("--quorum must be at least 1");
        }
        Ok(Witnesses { keys, quorum })
    }

    /// Checks that `note` carries valid cosignatures from `quorum` of the
    /// keys; `None` when no witness is required.
    fn check(&self, note: &str) -> anyhow::Result<Option<String>> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let mut valid = Vec::new();
        let mut others = Vec::new();
        for key in &self.keys {
            match key.verify_note(note) {
                Ok(ts) => valid.push(format!("{} (at {ts})", key.name())),
                Err(e) => others.push(e.to_string()),
            }
        }
        if valid.len() < self.quorum {
            let found = match valid.as_slice() {
                [] => String::new(),
                v => format!(": from {}", v.join(", ")),
            };
            bail!(
                "the checkpoint carries {} valid cosignature(s) of the {} required from the {} given witnesses{found}; {}",
                valid.len(),
                self.quorum,
                self.keys.len(),
                others.join("; ")
            );
        }
        Ok(Some(format!(
            "cosigned by {} of {} witnesses (quorum {}): {}",
            valid.len(),
            self.keys.len(),
            self.quorum,
            valid.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the log sent is printed with its control characters escaped:
    /// a hostile log's body moved the cursor over the verdict, erased it
    /// and printed a VALID of its own (fuzz audit, stop 64).
    #[test]
    fn a_report_prints_no_control_character() {
        let forged = "busy\n\u{1b}[1A\u{1b}[2K\rVALID: upload stored in zurich\u{1b}[8m";
        let report = Report {
            checks: vec![format!("checkpoint of \u{1b}]0;title\u{7}")],
            verdict: Err(format!(
                "GET http://log/generations: 503 Service Unavailable: {forged}"
            )),
            unchecked: true,
        };
        let text = report.to_string();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("NOT CHECKED: GET "),
            "{text}"
        );
        assert!(text.contains("\\u{1b}[1A"), "{text}");
    }
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: VerifyArgs,
    }

    fn key() -> String {
        residency_log::note::Signer::from_seed("verify.example/log", &[3; 32])
            .unwrap()
            .verifier_key()
    }

    /// A request id goes into the URL as it is: only the page's characters.
    #[tokio::test]
    async fn a_request_id_is_taken_with_the_pages_characters_only() {
        let args = VerifyArgs {
            key: key(),
            request_id: Some("a b/../x".into()),
            log: Some("http://127.0.0.1:1".into()),
            ..VerifyArgs::default()
        };
        let report = verify(&args).await;
        let why = report.verdict.unwrap_err();
        assert!(why.contains("--request-id"), "{why}");
    }

    /// A `--key` that is neither a file nor a verifier key is said to be
    /// a missing file, not a malformed key.
    #[tokio::test]
    async fn a_key_file_that_is_not_there_is_named() {
        let args = VerifyArgs {
            key: "/nonexistent/log.pub".into(),
            receipt: Some("a receipt".into()),
            ..VerifyArgs::default()
        };
        let why = verify(&args).await.verdict.unwrap_err();
        assert!(
            why.starts_with("--key /nonexistent/log.pub: No such file"),
            "{why}"
        );
    }

    /// A caller of [`verify`] that skips [`usage`] meets its rules all
    /// the same: they are stated once, there.
    #[tokio::test]
    async fn the_usage_rules_hold_for_callers_of_verify_too() {
        let args = VerifyArgs {
            key: "log+01020304+AAAA".into(),
            receipt: Some("a receipt".into()),
            witnesses: vec!["w+01020304+AAAA".into()],
            ..VerifyArgs::default()
        };
        let why = verify(&args).await.verdict.unwrap_err();
        assert!(why.starts_with("--witness needs a checkpoint"), "{why}");
        let args = VerifyArgs {
            export_proof: Some("out.tlog-proof".into()),
            checkpoint: Some("/nonexistent/checkpoint".into()),
            ..args
        };
        let why = verify(&args).await.verdict.unwrap_err();
        assert!(why.starts_with("--checkpoint /nonexistent"), "{why}");
    }

    /// A log on a socket answering `routes` (path → body, 200; a body
    /// `"500"` is that status, `"cut"` an answer that breaks off), else
    /// 404.
    async fn fake_log(routes: Vec<(String, String)>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split(' ').nth(1).unwrap_or("");
                let (status, body) = match routes.iter().find(|(p, _)| p == path) {
                    Some((_, body)) if body == "500" => ("500 Internal Server Error", "{}".into()),
                    Some((_, body)) => ("200 OK", body.clone()),
                    None => ("404 Not Found", "{}".to_string()),
                };
                // `"cut"`: an answer that breaks off after its head.
                let length = if body == "cut" { 1000 } else { body.len() };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    /// A checkpoint that does not verify with the key is judged at once,
    /// though a good one follows: a log that served it has misbehaved (fuzz
    /// audit, stop 64: it was skipped while waiting for a covering one,
    /// and the verdict was VALID).
    #[tokio::test]
    async fn a_forged_checkpoint_is_invalid_though_a_good_one_follows() {
        use residency_log::note::{Checkpoint, Signer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ours = Signer::from_seed("verify.example/log", &[3; 32]).unwrap();
        let theirs = Signer::from_seed("verify.example/log", &[4; 32]).unwrap();
        let empty = Checkpoint {
            origin: "verify.example/log".into(),
            size: 0,
            root: residency_log::merkle::empty_root(),
            extensions: Vec::new(),
        };
        let notes = [empty.sign(&theirs).unwrap(), empty.sign(&ours).unwrap()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut served = 0;
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (status, body) = if head.starts_with("GET /checkpoint ") {
                    served += 1;
                    ("200 OK", notes[usize::from(served > 1)].clone())
                } else {
                    ("404 Not Found", "{}".to_string())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        let args = VerifyArgs {
            key: key(),
            log: Some(format!("http://{addr}")),
            ..VerifyArgs::default()
        };
        let report = verify(&args).await;
        assert!(!report.valid() && !report.unchecked, "{report}");
        assert!(report.to_string().starts_with("INVALID: "), "{report}");
    }

    /// A `/generations` list of (number, origin, key, prefix).
    fn listing(gens: &[(u32, &str, &str, &str)]) -> String {
        let list: Vec<_> = gens
            .iter()
            .map(|(n, origin, key, prefix)| GenerationInfo {
                generation: *n,
                origin: origin.to_string(),
                key: key.to_string(),
                size: 1,
                sealed: *n == 1,
                prefix: prefix.to_string(),
            })
            .collect();
        serde_json::to_string(&Generations { generations: list }).unwrap()
    }

    /// A log listing its generation under a prefix of another form is not
    /// followed there.
    #[tokio::test]
    async fn a_generation_prefix_of_another_form_is_not_followed() {
        let key = key();
        let list = listing(&[(1, "verify.example/log", &key, ".evil.example/")]);
        let args = VerifyArgs {
            key,
            request_id: Some("abc".into()),
            log: Some(fake_log(vec![("/generations".into(), list)]).await),
            ..VerifyArgs::default()
        };
        let why = verify(&args).await.verdict.unwrap_err();
        assert!(why.contains("not /generations/<n>/"), "{why}");
    }

    /// The log's list of generations is not signed: another generation is
    /// looked in, or a receipt checked against it, only if its key is the
    /// given key's public key under the name the log gives it; else verify
    /// says why it is not.
    #[tokio::test]
    async fn another_generation_is_taken_only_with_the_given_public_key() {
        use residency_log::note::Signer;
        let ours = |name: &str| Signer::from_seed(name, &[3; 32]).unwrap().verifier_key();
        let theirs = Signer::from_seed("verify.example/log", &[4; 32])
            .unwrap()
            .verifier_key();
        let current = ours("verify.example/log/2");
        let root = "verify.example/log";
        let cases = [
            (theirs.clone(), root, "/generations/1/", "another public key"),
            (ours(root), "elsewhere.example", "/generations/1/", "its origin is not the name this log gives generation 1, which is verify.example/log"),
            (ours(root), root, "/generations/9/", "not /generations/1/"),
            (ours("verify.example/other"), root, "/generations/1/", "named verify.example/other"),
        ];
        for (key, origin, prefix, reason) in cases {
            let list = listing(&[
                (1, origin, &key, prefix),
                (2, "verify.example/log/2", &current, "/generations/2/"),
            ]);
            let log = fake_log(vec![("/generations".into(), list)]).await;
            let by_id = VerifyArgs {
                key: current.clone(),
                request_id: Some("abc".into()),
                log: Some(log.clone()),
                ..VerifyArgs::default()
            };
            let why = verify(&by_id).await.verdict.unwrap_err();
            assert!(why.contains("nor in the 0 other generation(s)"), "{why}");
            assert!(why.contains(reason), "{reason}: {why}");
            let receipt = Receipt {
                log: origin.to_string(),
                index: 0,
                record: b"{}".to_vec(),
                signature: None,
            };
            let by_receipt = VerifyArgs {
                key: current.clone(),
                receipt: Some(receipt.encode()),
                log: Some(log),
                ..VerifyArgs::default()
            };
            let why = verify(&by_receipt).await.verdict.unwrap_err();
            assert!(
                why.starts_with(&format!(
                    "the receipt is of {origin}, which the log lists as its generation 1, but"
                )),
                "{why}"
            );
            assert!(why.contains(reason), "{reason}: {why}");
        }
    }

    /// A log that fails to list its generations (not a 404: it has a
    /// list) is not checked against its root instead, as the page would
    /// not.
    #[tokio::test]
    async fn a_list_of_generations_that_fails_is_not_taken_as_none() {
        let log = fake_log(vec![("/generations".into(), "500".into())]).await;
        let args = VerifyArgs {
            key: key(),
            request_id: Some("abc".into()),
            log: Some(log),
            ..VerifyArgs::default()
        };
        let report = verify(&args).await;
        assert!(report.unchecked, "{report}");
        let why = report.verdict.as_ref().unwrap_err();
        assert!(why.contains("/generations: 500"), "{why}");
    }

    /// Saved files for a checkpoint that does not cover the receipt: the
    /// history since `--previous` still decides. A log that rolled its tree
    /// back below a receipt its earlier checkpoint covered is INVALID (exit
    /// 1), not NOT CHECKED (exit 3, "nothing was found wrong"); one that
    /// proves it only grew leaves it NOT CHECKED. The shared vectors' inputs,
    /// through `verify`'s own reading of the files.
    #[tokio::test]
    async fn a_log_rolled_back_below_the_receipt_is_invalid_not_unchecked() {
        let vectors = residency_log::vectors::generate();
        let vector = |name: &str| {
            vectors
                .vectors
                .iter()
                .find(|v| v.name == name)
                .unwrap_or_else(|| panic!("vector {name}"))
                .inputs
                .clone()
        };
        let dir = std::env::temp_dir().join(format!(
            "residency-verify-rolled-back-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let size_of = |note: &str| note.lines().nth(1).unwrap().parse::<u64>().unwrap();
        let files = |name: &str| {
            let inputs = vector(name);
            let receipt = inputs.receipt.clone().unwrap();
            let index = Receipt::parse(&receipt).unwrap().index;
            let note = inputs.checkpoint.clone().unwrap();
            let old = inputs.previous.clone().unwrap();
            let at = |file: &str| dir.join(format!("{name}.{file}"));
            std::fs::write(at("checkpoint"), &note).unwrap();
            std::fs::write(at("previous"), &old).unwrap();
            let proof = InclusionProof {
                index,
                size: size_of(&note),
                leaf_hash: String::new(),
                hashes: inputs.inclusion.clone().unwrap(),
            };
            std::fs::write(at("proof"), serde_json::to_string(&proof).unwrap()).unwrap();
            let consistency = ConsistencyProof {
                from: size_of(&old),
                to: size_of(&note),
                hashes: inputs.consistency.clone().unwrap(),
            };
            std::fs::write(
                at("consistency"),
                serde_json::to_string(&consistency).unwrap(),
            )
            .unwrap();
            VerifyArgs {
                key: inputs.key,
                receipt: Some(receipt),
                checkpoint: Some(at("checkpoint")),
                proof: Some(at("proof")),
                previous: Some(at("previous")),
                consistency_proof: Some(at("consistency")),
                ..VerifyArgs::default()
            }
        };

        let report = verify(&files("rolled_back_below_the_receipt")).await;
        assert!(!report.unchecked, "INVALID, not NOT CHECKED: {report}");
        let why = report.verdict.as_ref().unwrap_err();
        assert!(
            why.starts_with(
                "the log shrank: the previous checkpoint has 7 records, the current one 4"
            ),
            "{report}"
        );
        assert!(
            report.to_string().starts_with("INVALID: the log shrank"),
            "{report}"
        );

        let report = verify(&files("not_yet_covered_history_proven")).await;
        assert!(report.unchecked, "NOT CHECKED: {report}");
        assert!(
            report
                .to_string()
                .starts_with("NOT CHECKED: the checkpoint (tree size 4) does not cover the receipt's index 4 yet"),
            "{report}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A log that cannot be reached, or answers that it cannot (5xx),
    /// leaves the receipt NOT CHECKED (exit 3), not INVALID, which says a
    /// check found something wrong (a forged receipt): a script can tell
    /// a database blip from tampering. A 404 is the log's answer: INVALID.
    #[tokio::test]
    async fn a_log_that_does_not_answer_leaves_it_not_checked() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let failing = fake_log(vec![("/generations".into(), "500".into())]).await;
        let cut = fake_log(vec![("/generations".into(), "cut".into())]).await;
        for log in [closed.clone(), failing, cut] {
            let args = VerifyArgs {
                key: key(),
                request_id: Some("abc".into()),
                log: Some(log.clone()),
                ..VerifyArgs::default()
            };
            let report = verify(&args).await;
            assert!(report.unchecked, "{log}: {report}");
            assert!(
                report.to_string().starts_with("NOT CHECKED: GET "),
                "{log}: {report}"
            );
        }
        // What needs no log is checked all the same: a forged receipt is
        // INVALID though the log cannot be read.
        let forged = Receipt {
            log: "verify.example/log".into(),
            index: 0,
            record: b"{}".to_vec(),
            signature: Some([7; 64]),
        };
        let args = VerifyArgs {
            key: key(),
            receipt: Some(forged.encode()),
            log: Some(closed.clone()),
            ..VerifyArgs::default()
        };
        let report = verify(&args).await;
        assert!(!report.unchecked, "{report}");
        assert!(
            report.to_string().starts_with("INVALID: the receipt's "),
            "{report}"
        );
        // An unsigned receipt (`receipts = "log"`) has nothing to judge
        // without the log: not checked, not INVALID for want of a
        // signature.
        let unsigned = Receipt {
            signature: None,
            ..forged.clone()
        };
        let args = VerifyArgs {
            key: key(),
            receipt: Some(unsigned.encode()),
            log: Some(closed.clone()),
            ..VerifyArgs::default()
        };
        let report = verify(&args).await;
        assert!(report.unchecked, "{report}");
        // A receipt of another generation is checked through the log's
        // list of them: not judged without it.
        let other = Receipt {
            log: "verify.example/log/2".into(),
            ..forged
        };
        let args = VerifyArgs {
            key: key(),
            receipt: Some(other.encode()),
            log: Some(closed),
            ..VerifyArgs::default()
        };
        let report = verify(&args).await;
        assert!(report.unchecked, "{report}");
        // Generations listed, no such record: the log says so.
        let key = key();
        let list = listing(&[(1, "verify.example/log", &key, "/generations/1/")]);
        let log = fake_log(vec![("/generations".into(), list)]).await;
        let args = VerifyArgs {
            key,
            request_id: Some("abc".into()),
            log: Some(log),
            ..VerifyArgs::default()
        };
        let report = verify(&args).await;
        assert!(!report.unchecked, "{report}");
        assert!(report.to_string().starts_with("INVALID: "), "{report}");
    }

    /// `--log` that is not an http(s) URL is a usage error (exit 2), not
    /// an INVALID receipt.
    #[test]
    fn a_log_without_a_scheme_is_a_usage_error() {
        let key = key();
        let argv = [
            "verify",
            "--key",
            &key,
            "--request-id",
            "a",
            "--log",
            "127.0.0.1:1",
        ];
        let Err(e) = Cli::try_parse_from(argv) else {
            panic!("taken");
        };
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().contains("not an http:// or https:// URL"),
            "{e}"
        );
        // So is a key that cannot be used — no file, not a key — rather
        // than an INVALID proof (verification, stop 62).
        for bad in ["/nonexistent/log.pub", "a+b"] {
            let argv = ["verify", "--key", bad, "--request-id", "a"];
            let Err(e) = Cli::try_parse_from(argv) else {
                panic!("{bad} taken");
            };
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    /// `--proof-file` checks one offline proof: the options it would
    /// ignore are refused instead of skipped.
    #[test]
    fn a_proof_file_refuses_the_options_it_would_ignore() {
        let key = key();
        let base = ["verify", "--key", &key, "--proof-file", "p", "--entry", "e"];
        assert!(Cli::try_parse_from(base).is_ok());
        for extra in [
            &["--file", "f"][..],
            &["--previous", "c"],
            &["--checkpoint", "c"],
            &["--save-checkpoint", "c"],
            &["--export-proof", "x"],
            &["--log", "http://127.0.0.1:1"],
        ] {
            let argv = base.iter().chain(extra).copied();
            assert!(Cli::try_parse_from(argv).is_err(), "{extra:?}");
        }
    }
}
