//! One verdict for a receipt, whoever computes it.
//!
//! `residency-proxy verify` and the log's web page (`GET /` on
//! `transparency.address`, JavaScript in the browser) take the same
//! [`Inputs`] — the key, the receipt, the signed checkpoint, the inclusion
//! path, the checkpoint seen before with its consistency path, optionally
//! the digest of the customer's own copy of the file — and run the same
//! [`Step`]s in the same order. The first step that fails is the verdict,
//! INVALID: something was found wrong. [`Step::Coverage`] alone
//! ([`Step::not_checked`]) is NOT CHECKED instead — the checkpoint does not
//! cover the receipt's index yet, nothing was found wrong — and it does not
//! stop the steps that need no inclusion: the checkpoint seen before
//! ([`Step::PreviousCheckpoint`]) and the log's consistency with it
//! ([`Step::Consistency`]) still run, and one that fails is the verdict,
//! INVALID (a log that rolled its tree back below the receipt, or forked,
//! is proven wrong, not "not checked"). Only when they pass, or were not
//! given, is the verdict NOT CHECKED; inclusion and the file are not judged
//! then (they need a tree that holds the index). The shared vectors
//! (`crates/log/vectors/verify.json`, written by [`crate::vectors`]) hold
//! both to it.
//!
//! Nothing here does I/O: callers fetch, this decides.

use serde::{Deserialize, Serialize};

use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, Verifier};
use crate::receipt::{self, Receipt};
use crate::record::{Outcome, Record};
use crate::witness::CosignatureVerifier;

/// The checks, in the order they run; the first that fails names the
/// verdict, but a failed [`Step::Coverage`] names it only if the history
/// steps after it pass (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The log's verifier key does not parse.
    Key,
    /// The receipt (or its record) does not parse, or names another log.
    Receipt,
    /// The receipt's Ed25519 signature does not verify with the key.
    ReceiptSignature,
    /// The record says the upload was refused or rejected, not stored.
    Outcome,
    /// The checkpoint is not signed by the key, or is for another log.
    Checkpoint,
    /// The required witnesses did not cosign the checkpoint.
    Witnesses,
    /// The checkpoint does not cover the receipt's index yet: NOT CHECKED,
    /// not INVALID ([`Step::not_checked`]).
    Coverage,
    /// The record is not at its index in the checkpointed tree.
    Inclusion,
    /// The checkpoint seen before is not signed by the key.
    PreviousCheckpoint,
    /// The log's history changed since the checkpoint seen before.
    Consistency,
    /// The customer's file is not the one the record describes.
    File,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Key => "key",
            Step::Receipt => "receipt",
            Step::ReceiptSignature => "receipt_signature",
            Step::Outcome => "outcome",
            Step::Checkpoint => "checkpoint",
            Step::Witnesses => "witnesses",
            Step::Coverage => "coverage",
            Step::Inclusion => "inclusion",
            Step::PreviousCheckpoint => "previous_checkpoint",
            Step::Consistency => "consistency",
            Step::File => "file",
        }
    }

    /// Whether failing here leaves the receipt NOT CHECKED rather than
    /// INVALID: nothing was found wrong, the check cannot be made yet. Only
    /// [`Step::Coverage`] is such: an honest log that could not sign a
    /// checkpoint for a while (its disk was out) has receipts no checkpoint
    /// covers, and they were called INVALID. No inclusion (nor file) is
    /// checked against a tree without the index, but the history steps
    /// still are: NOT CHECKED must mean nothing was found wrong, so a
    /// history that fails is the verdict instead, INVALID. A log that never
    /// covers the index within its checkpoint interval broke the receipt's
    /// promise, which the message says.
    pub fn not_checked(self) -> bool {
        matches!(self, Step::Coverage)
    }
}

/// What a verdict is computed from; every field is text as a person or a
/// log hands it over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// The log's verifier key, `name+keyid+base64`.
    pub key: String,
    /// A `Residency-Receipt` header value (a record fetched by request id
    /// is given as an unsigned receipt).
    #[serde(default)]
    pub receipt: Option<String>,
    /// The request id the receipt's record was looked up by: the record
    /// must be that request's (a log could answer with another's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The signed checkpoint note.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// The receipt's inclusion path in the checkpoint's tree (hex hashes).
    #[serde(default)]
    pub inclusion: Option<Vec<String>>,
    /// A checkpoint seen earlier (signed note).
    #[serde(default)]
    pub previous: Option<String>,
    /// The consistency path from `previous` to `checkpoint` (hex hashes).
    #[serde(default)]
    pub consistency: Option<Vec<String>>,
    /// Witness cosigner keys (`name+keyid+base64`, type 0x04).
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// How many of `witnesses` must have cosigned (default: all).
    #[serde(default)]
    pub quorum: Option<usize>,
    /// The customer's copy of the upload, hashed where it lies.
    #[serde(default)]
    pub file: Option<FileDigest>,
}

/// SHA-256 (lowercase hex) and length of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub sha256: String,
    pub bytes: u64,
}

/// Everything passed.
#[derive(Debug, Clone)]
pub struct Verified {
    /// One line per check that passed, in order.
    pub checks: Vec<String>,
    /// The long form: what the record says, or what the checkpoint is.
    pub summary: String,
    /// For a stored upload, in plain words: "Stored in data centre zurich
    /// (jurisdiction ch) on 2 Dec 2026 10:41 UTC".
    pub sentence: Option<String>,
    /// The checkpoint verified against, if one was given.
    pub checkpoint: Option<Checkpoint>,
}

/// The first step that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub message: String,
}

impl Failure {
    /// NOT CHECKED rather than INVALID: see [`Step::not_checked`].
    pub fn not_checked(&self) -> bool {
        self.step.not_checked()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn fail<T>(step: Step, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        step,
        message: message.into(),
    })
}

/// Runs every step the inputs allow, in order.
pub fn check(inputs: &Inputs) -> Result<Verified, Failure> {
    let mut checks = Vec::new();
    let verifier = match Verifier::parse(inputs.key.trim()) {
        Ok(v) => v,
        Err(e) => return fail(Step::Key, format!("the key: {e}")),
    };

    let mut stored = None;
    if let Some(text) = &inputs.receipt {
        let receipt = match Receipt::parse(text) {
            Ok(r) => r,
            Err(e) => return fail(Step::Receipt, format!("the receipt: {e}")),
        };
        let asked = inputs.request_id.as_deref();
        let record = check_receipt(&receipt, &verifier, asked, &mut checks)?;
        stored = Some((receipt, record));
    }

    let Some(note) = &inputs.checkpoint else {
        return match &stored {
            Some((r, record)) if r.signature.is_some() => {
                check_file(inputs, record, &mut checks)?;
                Ok(finish(checks, stored.as_ref(), None))
            }
            Some(_) => fail(
                Step::Inclusion,
                "the receipt carries no signature (receipts = \"log\"): give --log, or --checkpoint and --proof, to prove its inclusion",
            ),
            None => fail(
                Step::Receipt,
                "nothing to verify: give --receipt, --log or --checkpoint",
            ),
        };
    };
    let checkpoint = open_checkpoint(note, &verifier).or_else(|e| fail(Step::Checkpoint, e))?;
    checks.push(format!(
        "checkpoint signed by {}: tree size {}, root {}",
        verifier.name(),
        checkpoint.size,
        short(&checkpoint.root)
    ));
    if let Some(line) = check_witnesses(inputs, note)? {
        checks.push(line);
    }

    // A checkpoint that does not cover the receipt's index cannot hold its
    // inclusion: NOT CHECKED, but only once the history below, which needs
    // no inclusion, found nothing wrong — a log that rolled its tree back
    // below the receipt, or forked, is INVALID, not "not checked".
    let mut uncovered = None;
    if let Some((receipt, _)) = &stored {
        if receipt.index < checkpoint.size {
            check_inclusion(inputs, receipt, &checkpoint, &mut checks)?;
        } else {
            uncovered = Some(Failure {
                step: Step::Coverage,
                message: format!(
                    "the checkpoint (tree size {}) does not cover the receipt's index {} yet: retry after the log's next checkpoint; if none covers it after the log's checkpoint interval, the log has not included the record",
                    checkpoint.size, receipt.index
                ),
            });
        }
    }

    if let Some(old_note) = &inputs.previous {
        let old = open_checkpoint(old_note, &verifier).or_else(|e| {
            fail(
                Step::PreviousCheckpoint,
                format!("the previous checkpoint: {e}"),
            )
        })?;
        check_consistency(&old, &checkpoint, inputs.consistency.as_deref())?;
        checks.push(format!(
            "the log grew from {} to {} without rewriting history (consistency proof)",
            old.size, checkpoint.size
        ));
    }
    // The history passed (or was not given). A signed receipt's record is
    // the log's word without the tree: a file that is not the one it
    // describes is found wrong now (verification, stop 70: it was NOT
    // CHECKED while a log kept its checkpoint stale, INVALID when the log
    // could not be read). A record looked up by request id is the log's
    // word only through inclusion: its file waits for a checkpoint that
    // covers it.
    if let Some(failure) = uncovered {
        if let Some((receipt, record)) = &stored {
            if receipt.signature.is_some() {
                check_file(inputs, record, &mut checks)?;
            }
        }
        return Err(failure);
    }
    if let Some((_, record)) = &stored {
        check_file(inputs, record, &mut checks)?;
    }
    Ok(finish(checks, stored.as_ref(), Some(checkpoint)))
}

fn finish(
    mut checks: Vec<String>,
    stored: Option<&(Receipt, Record<'static>)>,
    checkpoint: Option<Checkpoint>,
) -> Verified {
    let (summary, sentence) = match (stored, &checkpoint) {
        (Some((_, record)), _) => (summary(record), Some(sentence(record))),
        (None, Some(cp)) => (
            format!("checkpoint of {} at tree size {}", cp.origin, cp.size),
            None,
        ),
        (None, None) => (String::new(), None),
    };
    checks.shrink_to_fit();
    Verified {
        checks,
        summary,
        sentence,
        checkpoint,
    }
}

/// The receipt's record is leaf `receipt.index` of the checkpoint's tree,
/// which covers that index.
fn check_inclusion(
    inputs: &Inputs,
    receipt: &Receipt,
    checkpoint: &Checkpoint,
    checks: &mut Vec<String>,
) -> Result<(), Failure> {
    let Some(path) = &inputs.inclusion else {
        return fail(Step::Inclusion, "no inclusion proof: give --proof or --log");
    };
    let path = hashes(path).or_else(|e| fail(Step::Inclusion, e))?;
    let leaf = receipt.leaf_hash();
    if let Err(e) = merkle::verify_inclusion(
        &leaf,
        receipt.index,
        checkpoint.size,
        &path,
        &checkpoint.root,
    ) {
        return fail(
            Step::Inclusion,
            format!("the record is not in the log: {e}"),
        );
    }
    checks.push(format!(
        "record {} is leaf {} of the checkpointed tree (inclusion proof, {} hashes)",
        short(&leaf),
        receipt.index,
        path.len()
    ));
    Ok(())
}

/// The receipt's log name, record (the request's, when looked up by
/// `request_id`) and signature (when present), and the record's outcome.
fn check_receipt(
    receipt: &Receipt,
    verifier: &Verifier,
    request_id: Option<&str>,
    checks: &mut Vec<String>,
) -> Result<Record<'static>, Failure> {
    if receipt.log != verifier.name() {
        return fail(
            Step::Receipt,
            format!(
                "the receipt is from log `{}`, the key is for `{}`",
                receipt.log,
                verifier.name()
            ),
        );
    }
    let record =
        Record::from_bytes(&receipt.record).or_else(|e| fail(Step::Receipt, record_error(&e)))?;
    if let Some(id) = request_id.filter(|id| *id != record.request_id) {
        return fail(
            Step::Receipt,
            format!(
                "the log answered request id `{id}` with the record of request `{}`",
                record.request_id
            ),
        );
    }
    if let Some(sig) = &receipt.signature {
        let message = receipt::signed_message(&receipt.log, receipt.index, &receipt.leaf_hash());
        if !verifier.verify(&message, sig) {
            return fail(
                Step::ReceiptSignature,
                format!(
                    "the receipt's signature does not verify with key {} (altered receipt, or another log's key)",
                    verifier.name()
                ),
            );
        }
        checks.push(format!(
            "receipt signature by {} over leaf {}",
            verifier.name(),
            receipt.index
        ));
    }
    if let Some(why) = not_stored(&record) {
        return fail(Step::Outcome, why);
    }
    Ok(record)
}

/// Why a record is no proof of storage: it says the upload was refused or
/// rejected (`None`: it was stored). Every verifier stops there, a
/// tlog-proof's too.
pub fn not_stored(record: &Record) -> Option<String> {
    (record.outcome != Outcome::Stored).then(|| {
        format!(
            "the record says the upload was {}{}, not stored",
            record.outcome.as_str(),
            record
                .reason
                .as_deref()
                .map_or(String::new(), |r| format!(" ({r})"))
        )
    })
}

fn summary(record: &Record) -> String {
    let body = record
        .body
        .as_ref()
        .map(|b| format!("{} bytes, sha256 {}", b.bytes, b.sha256))
        .unwrap_or_else(|| "no body digest".into());
    let tenant = record
        .tenant
        .as_ref()
        .map(|t| format!(" for tenant {} (recognised by {})", t.name, t.source))
        .unwrap_or_default();
    format!(
        "upload {}{tenant} ({body}) from {} ({}) was stored in data centre {}, jurisdiction {}{}, at {} (HTTP {})",
        record.request_id,
        record.country.as_deref().unwrap_or("an unknown country"),
        record.client.address.as_deref().unwrap_or("address not recorded"),
        record.datacenter.as_deref().unwrap_or("?"),
        record.jurisdiction.as_deref().unwrap_or("?"),
        earlier(record, " (", ")"),
        record.time,
        record
            .upstream_status
            .map_or_else(|| "?".to_string(), |s| s.to_string()),
    )
}

/// "Stored in data centre zurich (jurisdiction ch) on 2 Dec 2026 10:41 UTC",
/// and for a replayed upload ", after an earlier attempt sent it to geneva".
pub fn sentence(record: &Record) -> String {
    format!(
        "Stored in data centre {} (jurisdiction {}) on {}{}",
        record.datacenter.as_deref().unwrap_or("?"),
        record.jurisdiction.as_deref().unwrap_or("?"),
        plain_time(&record.time),
        earlier(record, ", ", "")
    )
}

/// "an earlier attempt sent it to geneva" between `open` and `close`, or
/// nothing for an upload sent once.
fn earlier(record: &Record, open: &str, close: &str) -> String {
    if record.also_sent_to.is_empty() {
        return String::new();
    }
    format!(
        "{open}after an earlier attempt sent it to {}{close}",
        record.also_sent_to.join(" and ")
    )
}

/// `2026-12-02T10:41:07.123Z` as `2 Dec 2026 10:41 UTC`; anything else as
/// given.
fn plain_time(rfc3339: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = rfc3339.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = rfc3339.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    // As the page reads it: `YYYY-MM-DDTHH:MM` at the start, all digits
    // (sliced only where they are, so any other text is given back as is).
    let parsed = (|| {
        if b.len() < 16 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
            return None;
        }
        let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        let (hour, minute) = (digits(11..13)?, digits(14..16)?);
        let name = MONTHS.get(usize::try_from(month).ok()?.checked_sub(1)?)?;
        Some(format!("{day} {name} {year:04} {hour:02}:{minute:02} UTC"))
    })();
    parsed.unwrap_or_else(|| rfc3339.to_string())
}

fn check_witnesses(inputs: &Inputs, note: &str) -> Result<Option<String>, Failure> {
    if inputs.witnesses.is_empty() {
        return Ok(None);
    }
    let mut keys = Vec::new();
    for text in &inputs.witnesses {
        let key = CosignatureVerifier::parse(text.trim())
            .or_else(|e| fail(Step::Witnesses, format!("witness key {text}: {e}")))?;
        keys.push(key);
    }
    CosignatureVerifier::check_distinct(&keys).or_else(|e| fail(Step::Witnesses, e))?;
    if let Ok(log) = Verifier::parse(&inputs.key) {
        CosignatureVerifier::check_not_the_log(&keys, &log.public_key())
            .or_else(|e| fail(Step::Witnesses, e))?;
    }
    let quorum = inputs.quorum.unwrap_or(keys.len());
    if quorum == 0 || quorum > keys.len() {
        return fail(
            Step::Witnesses,
            format!(
                "a quorum of {quorum} cannot be met by {} witness keys: it must be 1 to {0}",
                keys.len()
            ),
        );
    }
    let mut valid = Vec::new();
    let mut others = Vec::new();
    for key in &keys {
        match key.verify_note(note) {
            Ok(ts) => valid.push(format!("{} (at {ts})", key.name())),
            Err(e) => others.push(e.to_string()),
        }
    }
    if valid.len() < quorum {
        let found = match valid.as_slice() {
            [] => String::new(),
            v => format!(": from {}", v.join(", ")),
        };
        return fail(
            Step::Witnesses,
            format!(
                "the checkpoint carries {} valid cosignature(s) of the {quorum} required from the {} given witnesses{found}; {}",
                valid.len(),
                keys.len(),
                others.join("; ")
            ),
        );
    }
    Ok(Some(format!(
        "cosigned by {} of {} witnesses (quorum {quorum}): {}",
        valid.len(),
        keys.len(),
        valid.join(", ")
    )))
}

/// Why a receipt's record is not a decision record, in words the page
/// (verify.js) gives too: not JSON, a field repeated (which JSON readers
/// settle differently: the first or the last), or anything else serde
/// refuses (a field no record has, one of another type, one missing).
fn record_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let why = match e.classify() {
        Category::Data => {
            let text = e.to_string();
            match text
                .strip_prefix("duplicate field `")
                .and_then(|rest| rest.split_once('`'))
            {
                Some((field, _)) => format!("the field `{field}` is repeated"),
                None => "not a decision record".to_string(),
            }
        }
        Category::Syntax | Category::Eof | Category::Io => "not JSON".to_string(),
    };
    format!("the receipt's record: {why}")
}

fn check_consistency(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: Option<&[String]>,
) -> Result<(), Failure> {
    if old.size > new.size {
        return fail(
            Step::Consistency,
            format!(
                "the log shrank: the previous checkpoint has {} records, the current one {}",
                old.size, new.size
            ),
        );
    }
    if old.size == 0 && old.root != merkle::empty_root() {
        return fail(
            Step::Consistency,
            format!(
                "the previous checkpoint has 0 records but the root {}, not the empty tree's",
                short(&old.root)
            ),
        );
    }
    if old.size == new.size {
        if old.root != new.root {
            return fail(
                Step::Consistency,
                format!(
                    "two checkpoints of size {} with different roots ({} and {}): the log forked",
                    old.size,
                    short(&old.root),
                    short(&new.root)
                ),
            );
        }
        return Ok(());
    }
    if old.size == 0 {
        return Ok(());
    }
    let Some(proof) = proof else {
        return fail(
            Step::Consistency,
            "no consistency proof: give --consistency-proof or --log",
        );
    };
    let proof = hashes(proof).or_else(|e| fail(Step::Consistency, e))?;
    merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof)
        .or_else(|e| fail(Step::Consistency, format!("the log rewrote history: {e}")))
}

/// `1 byte`, `2 bytes`.
fn bytes(n: u64) -> String {
    format!("{n} byte{}", if n == 1 { "" } else { "s" })
}

fn check_file(inputs: &Inputs, record: &Record, checks: &mut Vec<String>) -> Result<(), Failure> {
    let Some(file) = &inputs.file else {
        return Ok(());
    };
    let Some(body) = &record.body else {
        return fail(Step::File, "the record holds no digest of the upload");
    };
    if file.bytes != body.bytes {
        return fail(
            Step::File,
            format!(
                "your file is {}; the upload the record describes was {}",
                bytes(file.bytes),
                bytes(body.bytes)
            ),
        );
    }
    if !file.sha256.eq_ignore_ascii_case(&body.sha256) {
        return fail(
            Step::File,
            format!(
                "your file's SHA-256 is {}; the upload the record describes has {}",
                file.sha256, body.sha256
            ),
        );
    }
    checks.push(format!(
        "your file is the upload the record describes ({}, SHA-256 {})",
        bytes(file.bytes),
        // Ours: hex we computed (the record's equals it).
        file.sha256.get(..16).unwrap_or(&file.sha256)
    ));
    Ok(())
}

/// Verifies a signed checkpoint and checks it is the key's log.
pub fn open_checkpoint(note: &str, verifier: &Verifier) -> Result<Checkpoint, String> {
    let cp = Checkpoint::open(note, verifier).map_err(|e| format!("the checkpoint: {e}"))?;
    if cp.origin != verifier.name() {
        return Err(format!(
            "the checkpoint is for log `{}`, the key is for `{}`",
            cp.origin,
            verifier.name()
        ));
    }
    Ok(cp)
}

/// Hex hashes as read from a proof.
pub fn hashes(hex: &[String]) -> Result<Vec<Hash>, String> {
    hex.iter()
        .map(|h| {
            residency_core::hex::decode32(h).ok_or_else(|| format!("`{h}` is not a SHA-256 hash"))
        })
        .collect()
}

fn short(hash: &Hash) -> String {
    residency_core::hex::encode(&hash[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_time_reads_rfc3339() {
        assert_eq!(
            plain_time("2026-12-02T10:41:07.123Z"),
            "2 Dec 2026 10:41 UTC"
        );
        assert_eq!(plain_time("2027-01-31T00:05:00Z"), "31 Jan 2027 00:05 UTC");
        assert_eq!(plain_time("2026-13-02T10:41:07Z"), "2026-13-02T10:41:07Z");
        assert_eq!(plain_time("yesterday"), "yesterday");
        // As the page: minutes are enough, and what is not a time (a
        // multi-byte character where a digit should be) is given back.
        assert_eq!(plain_time("2026-12-02T10:41"), "2 Dec 2026 10:41 UTC");
        assert_eq!(plain_time("2026-12-02T10:4é"), "2026-12-02T10:4é");
        assert_eq!(plain_time("2026-12-02T1x:41:00Z"), "2026-12-02T1x:41:00Z");
    }

    #[test]
    fn one_witness_key_under_two_names_does_not_make_a_quorum_of_two() {
        use crate::witness::{split_note, Cosigner};
        let (_, note) = crate::note::test_note();
        let body = split_note(&note).unwrap().0.to_owned();
        let a = Cosigner::from_seed("a.example", &[2; 32]).unwrap();
        // b: a's public key under another name.
        let b = Cosigner::from_seed("b.example", &[2; 32]).unwrap();
        let line = a.cosign(&body, 100);
        // a's line relabelled as b's: name and key ID changed, same bytes.
        let relabelled = crate::vectors::relabel(&line, &b);
        let cosigned = format!("{note}{line}\n{relabelled}\n");
        assert!(
            b.verifier().verify_note(&cosigned).is_ok(),
            "the relabelled line verifies"
        );
        let inputs = Inputs {
            witnesses: vec![a.verifier_key(), b.verifier_key()],
            quorum: Some(2),
            ..Inputs::default()
        };
        let err = check_witnesses(&inputs, &cosigned).unwrap_err();
        assert_eq!(err.step, Step::Witnesses);
        assert!(err.message.contains("same public key"), "{}", err.message);
        // Quorums that no set of keys meets.
        for quorum in [0, 2] {
            let inputs = Inputs {
                witnesses: vec![a.verifier_key()],
                quorum: Some(quorum),
                ..Inputs::default()
            };
            let err = check_witnesses(&inputs, &cosigned).unwrap_err();
            assert!(err.message.contains("cannot be met"), "{}", err.message);
        }
        let inputs = Inputs {
            witnesses: vec![a.verifier_key()],
            ..Inputs::default()
        };
        assert!(check_witnesses(&inputs, &cosigned).unwrap().is_some());
    }
}
