//! What the log's backends ([`crate::directory`], [`crate::postgres`])
//! share with the facade over them ([`crate::storage::Log`]): errors,
//! metrics, the published checkpoint, and the request-id key.

use std::time::SystemTime;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use crate::merkle::Hash;
use crate::note::{Checkpoint, NoteError, Signer};
use crate::settings::{Transparency, MAX_WITNESSES};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    // (`error`, not `source`: the message already says it, and as an
    // error's source it was printed twice.)
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("signing key {path}: {error}")]
    Key { path: String, error: NoteError },
    #[error("{path}: {message}")]
    Corrupt { path: String, message: String },
    #[error("{0}: the log directory is in use by another process (it holds the lock on this file); one process writes a directory log")]
    InUse(String),
    #[error("the log's generation holds {0} records, transparency.max_records")]
    Full(u64),
    #[error("an earlier write failed and could not be undone; restart to recover the log")]
    Poisoned,
    #[error("an fsync of the log's tiles failed ({0}): no checkpoint is signed over them; restart to rebuild them from the entry bundles")]
    Unsyncable(String),
    #[error("a record of {0} bytes is over the 65535 an entry bundle can hold")]
    EntryTooLarge(usize),
    #[error("log database: {0}")]
    Database(String),
    #[error("{0} records wait for the log database already (transparency.postgres.max_pending)")]
    Busy(usize),
    #[error("the log's disk made no record durable within {0:?} (transparency.write_timeout)")]
    Timeout(std::time::Duration),
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
    /// Hash tiles and entry bundles written (full ones).
    pub tiles_written: IntCounter,
    pub size: IntGauge,
    /// Records per commit batch (group commit; both backends).
    pub batch_records: Histogram,
    /// Seconds each batch took to commit in PostgreSQL.
    pub commit_seconds: Histogram,
    /// 1 while this process integrates the log and signs its checkpoints
    /// (always, with a directory; the advisory-lock holder in a fleet).
    pub integrator: IntGauge,
    /// Records sequenced but not yet covered by a signed checkpoint.
    pub integration_lag: IntGauge,
    pub checkpoint_size: IntGauge,
    pub checkpoint_timestamp: IntGauge,
    pub checkpoint_age: IntGauge,
    /// The current generation's number (1, then one more per roll at
    /// `max_records`).
    pub generation: IntGauge,
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
        let batch_records = Histogram::with_opts(
            HistogramOpts::new(
                "residency_log_batch_records",
                "Records written per group commit (one fsync, or one PostgreSQL transaction).",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
        )?;
        registry.register(Box::new(batch_records.clone()))?;
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "residency_log_commit_seconds",
                "Time for one batch of records to be sequenced and committed in PostgreSQL (storage = \"postgres\"; every receipt waits for its batch's).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(commit_seconds.clone()))?;
        Ok(LogMetrics {
                fsync_seconds,
                batch_records,
                commit_seconds,
                integrator: gauge(
                    "residency_log_integrator",
                    "1 while this process integrates the log and signs its checkpoints (a fleet has one at a time).",
                )?,
                integration_lag: gauge(
                    "residency_log_integration_lag_records",
                    "Records sequenced but not yet covered by a signed checkpoint.",
                )?,
                refusals_summarized: counter(
                    "residency_log_refusals_summarized_total",
                    "Refusals folded into summary records instead of one record each: those over transparency.refusal_records_per_second, every refusal while a fleet's database does not take writes, and every upload its data centre stored whose own record could not be written.",
                )?,
                summary_records: counter(
                    "residency_log_refusal_summaries_total",
                    "Summary records written (one per refusal reason and checkpoint interval with refusals folded).",
                )?,
                appended: counter(
                    "residency_log_records_appended_total",
                    "Decision records appended to the transparency log.",
                )?,
                tiles_written: counter(
                    "residency_log_tiles_written_total",
                    "Full hash tiles and entry bundles written (C2SP tlog-tiles).",
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
                generation: gauge(
                    "residency_log_generation",
                    "The log's current generation: 1, then one more each time it reaches transparency.max_records and rolls to a new origin.",
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

/// Adds witness cosignature lines (`— name base64`, no newline) to the
/// note in `latest` if it is still the checkpoint of `size`, in one step
/// (a late cosignature never brings an older checkpoint back); returns
/// the cosigned note, or `None` when a newer checkpoint replaced it. A
/// line replaces any earlier one by the same key (name and key ID), so a
/// witness asked again (after a restart, or by another proxy of a fleet)
/// does not make the note grow towards the signature limit verifiers
/// apply; the log's own signature, the first line, stays first.
pub(crate) fn cosign(
    latest: &arc_swap::ArcSwap<Published>,
    size: u64,
    lines: &[String],
) -> Option<String> {
    let mut added = None;
    latest.rcu(|current| {
        if current.size != size {
            added = None;
            return current.clone();
        }
        let note = with_lines(&current.note, lines);
        added = Some(note.clone());
        std::sync::Arc::new(Published {
            note,
            size: current.size,
            root: current.root,
        })
    });
    added
}

/// `stored` (a checkpoint's note as another replica may have cosigned it)
/// with the cosignature lines of `served` (this replica's note of the same
/// checkpoint) by keys `stored` lacks: neither replica's cosignatures are
/// dropped for the other's. A line by a key both have is `stored`'s. The
/// note keeps to the log's line and [`MAX_WITNESSES`] others (16 lines,
/// which every signed-note verifier accepts), the stored ones first:
/// replicas whose witness lists differ (a change rolling out, a witness's
/// new key) would otherwise add up past it.
pub(crate) fn keep_cosignatures(stored: &str, served: &str) -> String {
    let (Ok((_, held)), Ok((_, ours))) = (
        crate::witness::split_note(stored),
        crate::witness::split_note(served),
    ) else {
        return stored.to_owned();
    };
    let keys: Vec<_> = held.split_terminator('\n').filter_map(line_key).collect();
    let room = (1 + MAX_WITNESSES).saturating_sub(held.split_terminator('\n').count());
    let missing: Vec<String> = ours
        .split_terminator('\n')
        .skip(1)
        .filter(|line| line_key(line).is_some_and(|k| !keys.contains(&k)))
        .take(room)
        .map(str::to_owned)
        .collect();
    if missing.is_empty() {
        return stored.to_owned();
    }
    with_lines(stored, &missing)
}

/// A signature line's key: its name and key ID.
fn line_key(line: &str) -> Option<(String, [u8; 4])> {
    let (name, payload) = crate::note::parse_signature_line(line).ok()?;
    Some((name.to_owned(), payload.get(..4)?.try_into().ok()?))
}

/// `note` with `lines` added as its last signature lines, without the
/// earlier lines by the same keys.
fn with_lines(note: &str, lines: &[String]) -> String {
    let Ok((body, signatures)) = crate::witness::split_note(note) else {
        // Not a note we signed: nothing to keep apart.
        return lines.iter().fold(note.to_owned(), |n, l| n + l + "\n");
    };
    let replaced: Vec<_> = lines.iter().filter_map(|l| line_key(l)).collect();
    let mut out =
        String::with_capacity(note.len() + lines.iter().map(|l| l.len() + 1).sum::<usize>());
    out.push_str(body);
    out.push('\n');
    for (i, line) in signatures.split_terminator('\n').enumerate() {
        if i == 0 || line_key(line).is_none_or(|k| !replaced.contains(&k)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The map key for a request id: its value when it is 32 hex digits (ours
/// always are), otherwise 128 bits of its SHA-256.
pub(crate) fn id_key(id: &str) -> u128 {
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

/// The log's checkpoint of the tree of `size` entries with `root`, signed
/// with its key (a signing failure names the key's file).
pub(crate) fn sign_checkpoint(
    settings: &Transparency,
    signer: &Signer,
    size: u64,
    root: Hash,
) -> Result<String, LogError> {
    Checkpoint {
        origin: settings.origin.clone(),
        size,
        root,
        extensions: Vec::new(),
    }
    .sign(signer)
    .map_err(|source| LogError::Key {
        path: settings.signing_key.display().to_string(),
        error: source,
    })
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::{Checkpoint, Verifier};
    use crate::witness::Cosigner;

    #[test]
    fn a_witness_asked_again_replaces_its_line() {
        let (log, note) = crate::note::test_note();
        let (body, _) = crate::witness::split_note(&note).unwrap();
        let w = Cosigner::from_seed("w.example", &[2; 32]).unwrap();
        let v = Cosigner::from_seed("v.example", &[3; 32]).unwrap();
        // Same name, another key: a different signer.
        let w2 = Cosigner::from_seed("w.example", &[4; 32]).unwrap();
        let latest = arc_swap::ArcSwap::from_pointee(Published {
            note: note.clone(),
            size: 3,
            root: [9; 32],
        });
        let first = [
            w.cosign(body, 100),
            v.cosign(body, 100),
            w2.cosign(body, 100),
        ];
        cosign(&latest, 3, &first).unwrap();
        // Three restarts asking w again.
        for t in 101..104 {
            cosign(&latest, 3, &[w.cosign(body, t)]).unwrap();
        }
        let served = latest.load().note.clone();
        let lines: Vec<&str> = crate::witness::split_note(&served)
            .unwrap()
            .1
            .lines()
            .collect();
        assert_eq!(lines.len(), 4, "{served}");
        assert_eq!(
            lines[0],
            note.lines().last().unwrap(),
            "the log's line first"
        );
        assert_eq!(&lines[1..], [&first[1], &first[2], &w.cosign(body, 103)]);
        let verifier = Verifier::parse(&log.verifier_key()).unwrap();
        assert!(Checkpoint::open(&served, &verifier).is_ok());
        assert_eq!(w.verifier().verify_note(&served), Ok(103));
        // Another size's cosignature is not added.
        assert_eq!(cosign(&latest, 4, &[w.cosign(body, 200)]), None);
    }

    /// The stored note of a checkpoint (another replica's cosignatures)
    /// and this replica's of the same: the stored lines stay, a key both
    /// have keeps the stored line, and this replica's other lines follow.
    #[test]
    fn stored_cosignatures_are_kept_and_ours_added() {
        let (_, note) = crate::note::test_note();
        let (body, _) = crate::witness::split_note(&note).unwrap();
        let w = Cosigner::from_seed("w.example", &[2; 32]).unwrap();
        let v = Cosigner::from_seed("v.example", &[3; 32]).unwrap();
        let stored = format!("{note}{}\n", w.cosign(body, 100));
        let ours = format!("{note}{}\n{}\n", v.cosign(body, 101), w.cosign(body, 102));
        let kept = keep_cosignatures(&stored, &ours);
        assert_eq!(kept, format!("{stored}{}\n", v.cosign(body, 101)));
        assert_eq!(w.verifier().verify_note(&kept), Ok(100));
        // Nothing of ours missing: the stored note as it is.
        assert_eq!(keep_cosignatures(&kept, &ours), kept);
        assert_eq!(keep_cosignatures(&kept, &note), kept);
        // Ours has every stored line: nothing to add to it either.
        assert_eq!(keep_cosignatures(&note, &note), note);
        // Full: the log's line and 15 witnesses' stored; a 16th key of
        // ours is not added (17 lines pass what verifiers must accept).
        let witnesses: Vec<Cosigner> = (0..16u8)
            .map(|i| Cosigner::from_seed(&format!("w{i}.example"), &[10 + i; 32]).unwrap())
            .collect();
        let full = witnesses[..15]
            .iter()
            .fold(note.clone(), |n, w| format!("{n}{}\n", w.cosign(body, 100)));
        let more = format!("{note}{}\n", witnesses[15].cosign(body, 100));
        assert_eq!(keep_cosignatures(&full, &more), full);
        // With room for one, one of ours.
        let fourteen = witnesses[..14]
            .iter()
            .fold(note.clone(), |n, w| format!("{n}{}\n", w.cosign(body, 100)));
        let two = format!("{more}{}\n", v.cosign(body, 1));
        let kept = keep_cosignatures(&fourteen, &two);
        assert_eq!(kept.lines().filter(|l| l.starts_with('—')).count(), 16);
    }
}
