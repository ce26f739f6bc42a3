//! `residency-proxy verify`: checks a receipt, a checkpoint, an inclusion
//! proof and a consistency proof, from files or from a log. With `--log`,
//! proofs are computed here from the log's C2SP tlog-tiles hash tiles (as
//! any tlog client would), not taken from the log's convenience endpoints.
//!
//! Everything is checked against the log's public key alone; nothing the
//! log serves is trusted until a signature or a proof says so. The answer is
//! one `VALID: …` or `INVALID: …` line after the individual checks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use crate::fetch::Fetcher;

use residency_log::api::{ConsistencyProof, Entry, InclusionProof};
use residency_log::merkle::{self, Hash};
use residency_log::note::{Checkpoint, Verifier};
use residency_log::receipt::{self, Receipt};
use residency_log::record::{Outcome, Record};
use residency_log::tiles::{Need, Proofs};
use residency_log::tlog_proof::TlogProof;
use residency_log::witness::CosignatureVerifier;

/// What to verify; see `residency-proxy verify --help`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VerifyArgs {
    /// The log's verifier key (`name+keyid+base64`), or a file holding it.
    #[arg(long)]
    pub key: String,
    /// A receipt: the `Residency-Receipt` header value (or the whole header
    /// line), `@FILE` to read it from a file, or `-` for stdin.
    #[arg(long, conflicts_with = "request_id")]
    pub receipt: Option<String>,
    /// Instead of a receipt: a request id (`X-Request-Id`); its record is
    /// fetched from `--log` and proven by inclusion.
    #[arg(long, requires = "log")]
    pub request_id: Option<String>,
    /// The log's base URL (its `transparency.address`), to fetch the latest
    /// checkpoint and the proofs.
    #[arg(long)]
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
    /// tlog-proof (`.tlog-proof`) to this file.
    #[arg(long)]
    pub export_proof: Option<PathBuf>,
    /// Check a C2SP tlog-proof offline (with `--entry`): the checkpoint's
    /// signature and the entry's inclusion.
    #[arg(long, requires = "entry", conflicts_with_all = ["receipt", "request_id", "log"])]
    pub proof_file: Option<PathBuf>,
    /// The entry (the exact record bytes) a `--proof-file` is for.
    #[arg(long, requires = "proof_file")]
    pub entry: Option<PathBuf>,
    /// A witness's cosigner key (`name+keyid+base64`, type 0x04), or a file
    /// holding one; repeatable. The checkpoint (fetched, `--checkpoint` or
    /// in `--proof-file`) must carry valid cosignatures from `--quorum` of
    /// them.
    #[arg(long = "witness", value_name = "VKEY")]
    pub witnesses: Vec<String>,
    /// How many of the `--witness` keys must have cosigned the checkpoint
    /// (default: all of them).
    #[arg(long, value_name = "N", requires = "witnesses")]
    pub quorum: Option<usize>,
}

/// The outcome: the checks that passed, then VALID or INVALID and why.
#[derive(Debug)]
pub struct Report {
    pub checks: Vec<String>,
    pub verdict: Result<String, String>,
}

impl Report {
    pub fn valid(&self) -> bool {
        self.verdict.is_ok()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.checks {
            writeln!(f, "  ok  {c}")?;
        }
        match &self.verdict {
            Ok(summary) => writeln!(f, "VALID: {summary}"),
            Err(why) => writeln!(f, "INVALID: {why}"),
        }
    }
}

/// Runs every check the arguments ask for.
pub async fn verify(args: &VerifyArgs) -> Report {
    let mut checks = Vec::new();
    let verdict = run(args, &mut checks).await.map_err(|e| format!("{e:#}"));
    Report { checks, verdict }
}

async fn run(args: &VerifyArgs, checks: &mut Vec<String>) -> anyhow::Result<String> {
    let key_text = match std::fs::read_to_string(&args.key) {
        Ok(text) => text,
        Err(_) => args.key.clone(),
    };
    let verifier = Verifier::parse(key_text.trim()).map_err(|e| anyhow!("the key: {e}"))?;
    let witnesses = Witnesses::from_args(args)?;
    let fetcher = match &args.log {
        Some(url) => Some(Fetcher::new(url, args.ca.as_ref())?),
        None => None,
    };

    let receipt = match (&args.receipt, &args.request_id, &fetcher) {
        (Some(r), _, _) => Some(read_receipt(r)?),
        (None, Some(id), Some(f)) => {
            let entry: Entry = f.json(&format!("/records/{id}")).await?;
            Some(Receipt {
                log: verifier.name().to_string(),
                index: entry.index,
                record: entry.record.into_bytes(),
                signature: None,
            })
        }
        _ => None,
    };
    if let (Some(proof), Some(entry)) = (&args.proof_file, &args.entry) {
        return check_tlog_proof(proof, entry, &verifier, &witnesses, checks);
    }
    let mut summary = None;
    if let Some(receipt) = &receipt {
        summary = Some(check_receipt(receipt, &verifier, checks)?);
    }
    let wants_checkpoint = fetcher.is_some() || args.checkpoint.is_some();
    if !wants_checkpoint {
        if !witnesses.keys.is_empty() {
            bail!("--witness needs a checkpoint: give --log, --checkpoint or --proof-file");
        }
        if args.previous.is_some() {
            bail!("--previous needs a newer checkpoint: give --log or --checkpoint");
        }
        return match (receipt, summary) {
            (Some(r), Some(s)) if r.signature.is_some() => Ok(s),
            (Some(_), _) => bail!(
                "the receipt carries no signature (receipts = \"log\"): give --log, or --checkpoint and --proof, to prove its inclusion"
            ),
            _ => bail!("nothing to verify: give --receipt, --log or --checkpoint"),
        };
    }

    // The checkpoint: saved, or the log's latest (waiting briefly for one
    // that covers a fresh receipt and carries the witnesses' cosignatures).
    let need = receipt.as_ref().map_or(0, |r| r.index + 1);
    let (note, checkpoint) = match &args.checkpoint {
        Some(path) => {
            let note = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cp = open_checkpoint(&note, &verifier)?;
            (note, cp)
        }
        None => {
            let fetcher = fetcher.as_ref().context("no log to fetch from")?;
            let mut waited = Duration::ZERO;
            loop {
                let note = fetcher.text("/checkpoint").await?;
                let cp = open_checkpoint(&note, &verifier)?;
                let cosigned = witnesses.check(&note).is_ok();
                if (cp.size >= need && cosigned) || waited >= Duration::from_secs(10) {
                    break (note, cp);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                waited += Duration::from_millis(250);
            }
        }
    };
    checks.push(format!(
        "checkpoint signed by {}: tree size {}, root {}",
        verifier.name(),
        checkpoint.size,
        short(&checkpoint.root)
    ));
    if let Some(check) = witnesses.check(&note)? {
        checks.push(check);
    }

    if let Some(receipt) = &receipt {
        if receipt.index >= checkpoint.size {
            bail!(
                "the checkpoint (tree size {}) does not cover the receipt's index {} yet; retry after the next checkpoint",
                checkpoint.size,
                receipt.index
            );
        }
        let proof: InclusionProof = match (&args.proof, &fetcher) {
            (Some(path), _) => read_json(path)?,
            (None, Some(f)) => {
                // Computed here from the log's tiles (C2SP tlog-tiles).
                let mut tiles = Proofs::new(checkpoint.size);
                let path = from_tiles(f, &mut tiles, |t| t.inclusion_proof(receipt.index)).await?;
                InclusionProof {
                    index: receipt.index,
                    size: checkpoint.size,
                    leaf_hash: residency_core::hex::encode(&receipt.leaf_hash()),
                    hashes: path
                        .iter()
                        .map(|h| residency_core::hex::encode(h))
                        .collect(),
                }
            }
            (None, None) => bail!("no inclusion proof: give --proof or --log"),
        };
        if proof.index != receipt.index || proof.size != checkpoint.size {
            bail!(
                "the inclusion proof is for index {} in a tree of {}, not index {} in {}",
                proof.index,
                proof.size,
                receipt.index,
                checkpoint.size
            );
        }
        let leaf = receipt.leaf_hash();
        merkle::verify_inclusion(
            &leaf,
            receipt.index,
            checkpoint.size,
            &hashes(&proof.hashes)?,
            &checkpoint.root,
        )
        .map_err(|e| anyhow!("the record is not in the log: {e}"))?;
        checks.push(format!(
            "record {} is leaf {} of the checkpointed tree (inclusion proof, {} hashes)",
            short(&leaf),
            receipt.index,
            proof.hashes.len()
        ));
        if let Some(path) = &args.export_proof {
            let proof = TlogProof {
                extra: None,
                index: receipt.index,
                path: hashes(&proof.hashes)?,
                checkpoint: note.clone(),
            };
            std::fs::write(path, proof.encode())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    } else if args.export_proof.is_some() {
        bail!("--export-proof needs a record: give --receipt or --request-id");
    }

    if let Some(path) = &args.previous {
        let old_note =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let old = open_checkpoint(&old_note, &verifier)
            .with_context(|| format!("the previous checkpoint {}", path.display()))?;
        check_consistency(&old, &checkpoint, args, fetcher.as_ref()).await?;
        checks.push(format!(
            "the log grew from {} to {} without rewriting history (consistency proof)",
            old.size, checkpoint.size
        ));
    }
    if let Some(path) = &args.save_checkpoint {
        std::fs::write(path, &note).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary.unwrap_or_else(|| {
        format!(
            "checkpoint of {} at tree size {}",
            checkpoint.origin, checkpoint.size
        )
    }))
}

/// Signature (when present) and content of a receipt; returns the summary.
fn check_receipt(
    receipt: &Receipt,
    verifier: &Verifier,
    checks: &mut Vec<String>,
) -> anyhow::Result<String> {
    if receipt.log != verifier.name() {
        bail!(
            "the receipt is from log `{}`, the key is for `{}`",
            receipt.log,
            verifier.name()
        );
    }
    let record =
        Record::from_bytes(&receipt.record).map_err(|e| anyhow!("the receipt's record: {e}"))?;
    if let Some(sig) = &receipt.signature {
        let message = receipt::signed_message(&receipt.log, receipt.index, &receipt.leaf_hash());
        if !verifier.verify(&message, sig) {
            bail!(
                "the receipt's signature does not verify with key {} (altered receipt, or another log's key)",
                verifier.name()
            );
        }
        checks.push(format!(
            "receipt signature by {} over leaf {}",
            verifier.name(),
            receipt.index
        ));
    }
    if record.outcome != Outcome::Stored {
        bail!(
            "the record says the upload was {}, not stored",
            record.outcome.as_str()
        );
    }
    let body = record
        .body
        .as_ref()
        .map(|b| format!("{} bytes, sha256 {}", b.bytes, b.sha256))
        .unwrap_or_else(|| "no body digest".into());
    Ok(format!(
        "upload {} ({body}) from {} ({}) was stored in data centre {}, jurisdiction {}, at {} (HTTP {})",
        record.request_id,
        record.country.as_deref().unwrap_or("an unknown country"),
        record.client.address.as_deref().unwrap_or("address not recorded"),
        record.datacenter.as_deref().unwrap_or("?"),
        record.jurisdiction.as_deref().unwrap_or("?"),
        record.time,
        record
            .upstream_status
            .map_or_else(|| "?".to_string(), |s| s.to_string()),
    ))
}

async fn check_consistency(
    old: &Checkpoint,
    new: &Checkpoint,
    args: &VerifyArgs,
    fetcher: Option<&Fetcher>,
) -> anyhow::Result<()> {
    if old.size > new.size {
        bail!(
            "the log shrank: the previous checkpoint has {} records, the current one {}",
            old.size,
            new.size
        );
    }
    if old.size == 0 {
        return Ok(());
    }
    if old.size == new.size {
        if old.root != new.root {
            bail!(
                "two checkpoints of size {} with different roots ({} and {}): the log forked",
                old.size,
                short(&old.root),
                short(&new.root)
            );
        }
        return Ok(());
    }
    let proof: ConsistencyProof = match (&args.consistency_proof, fetcher) {
        (Some(path), _) => read_json(path)?,
        (None, Some(f)) => {
            let mut tiles = Proofs::new(new.size);
            let path = from_tiles(f, &mut tiles, |t| t.consistency_proof(old.size)).await?;
            ConsistencyProof {
                from: old.size,
                to: new.size,
                hashes: path
                    .iter()
                    .map(|h| residency_core::hex::encode(h))
                    .collect(),
            }
        }
        (None, None) => bail!("no consistency proof: give --consistency-proof or --log"),
    };
    if proof.from != old.size || proof.to != new.size {
        bail!(
            "the consistency proof is from {} to {}, not {} to {}",
            proof.from,
            proof.to,
            old.size,
            new.size
        );
    }
    merkle::verify_consistency(
        old.size,
        new.size,
        &old.root,
        &new.root,
        &hashes(&proof.hashes)?,
    )
    .map_err(|e| anyhow!("the log rewrote history: {e}"))
}

fn open_checkpoint(note: &str, verifier: &Verifier) -> anyhow::Result<Checkpoint> {
    let cp = Checkpoint::open(note, verifier).map_err(|e| anyhow!("the checkpoint: {e}"))?;
    if cp.origin != verifier.name() {
        bail!(
            "the checkpoint is for log `{}`, the key is for `{}`",
            cp.origin,
            verifier.name()
        );
    }
    Ok(cp)
}

fn read_receipt(arg: &str) -> anyhow::Result<Receipt> {
    let text = if arg == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the receipt from stdin")?
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    } else {
        arg.to_string()
    };
    Receipt::parse(&text).map_err(|e| anyhow!("the receipt: {e}"))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not a proof", path.display()))
}

fn hashes(hex: &[String]) -> anyhow::Result<Vec<Hash>> {
    hex.iter()
        .map(|h| {
            residency_core::hex::decode32(h).ok_or_else(|| anyhow!("`{h}` is not a SHA-256 hash"))
        })
        .collect()
}

fn short(hash: &Hash) -> String {
    residency_core::hex::encode(&hash[..8])
}

/// `--proof-file` with `--entry`: a C2SP tlog-proof checked offline.
fn check_tlog_proof(
    proof: &PathBuf,
    entry: &PathBuf,
    verifier: &Verifier,
    witnesses: &Witnesses,
    checks: &mut Vec<String>,
) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(proof).with_context(|| format!("reading {}", proof.display()))?;
    let entry = std::fs::read(entry).with_context(|| format!("reading {}", entry.display()))?;
    let parsed = TlogProof::parse(&text)
        .map_err(|e| anyhow!("{} is not a tlog-proof: {e}", proof.display()))?;
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
        "record {} is leaf {} of the checkpointed tree (tlog-proof, {} hashes)",
        short(&merkle::leaf_hash(&entry)),
        parsed.index,
        parsed.path.len()
    ));
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
                let bytes = f.get(&format!("/{}", tile.path())).await?;
                tiles.insert(tile, &bytes).map_err(anyhow::Error::msg)?;
            }
            Err(Need::OutOfRange) => bail!("outside the checkpointed tree"),
        }
    }
    bail!("the log's tiles never complete the proof")
}

/// `--witness` keys and `--quorum`: how many of them must have cosigned.
struct Witnesses {
    keys: Vec<CosignatureVerifier>,
    quorum: usize,
}

impl Witnesses {
    fn from_args(args: &VerifyArgs) -> anyhow::Result<Witnesses> {
        let mut keys: Vec<CosignatureVerifier> = Vec::new();
        for arg in &args.witnesses {
            let text = std::fs::read_to_string(arg).unwrap_or_else(|_| arg.clone());
            let key = CosignatureVerifier::parse(text.trim())
                .map_err(|e| anyhow!("--witness {arg}: {e}"))?;
            if keys.contains(&key) {
                bail!("--witness {} is given twice", key.label());
            }
            keys.push(key);
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
