//! Residency proven from the transparency log, not only from the sinks:
//! with [`LogTarget`] set, the run reads the log's checkpoint before the
//! load and, after it, checks every acknowledged upload's receipt the way a
//! customer's `verify` would — signed by the log's key, its record at its
//! index in the final checkpoint's tree (an inclusion path computed from
//! hash tiles fetched from the log, C2SP tlog-tiles), the record naming the
//! request the answer named (`X-Request-Id`), the data centre the sink
//! stored the body in (and, for an upload stored in two, the earlier one
//! among the record's `also_sent_to`) and the body's SHA-256 — and
//! that the final checkpoint is consistent with the first (the log only
//! grew).

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use residency_log::merkle;
use residency_log::note::{Checkpoint, Verifier};
use residency_log::receipt::{signed_message, Receipt};
use residency_log::record::Record;
use residency_log::tiles::{Need, Proofs};

use super::generator::{Outcome, Sent};
use super::plan::LogTarget;
use crate::fetch::Fetcher;

/// What the log proved about the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogReport {
    pub log: String,
    pub checkpoint_before: Option<u64>,
    pub checkpoint_after: Option<u64>,
    /// The final checkpoint extends the first (a consistency proof).
    pub consistent: Option<bool>,
    /// Receipts whose signature, inclusion, request, data centre and body
    /// all check.
    pub receipts_verified: u64,
    /// 2xx answers without a `Residency-Receipt`.
    pub acknowledged_without_receipt: u64,
    /// Receipts that failed a check (signature, inclusion, request, data
    /// centre, body): must be 0.
    pub receipts_failed: u64,
    pub failure_samples: Vec<String>,
    /// Set when the log could not be read: nothing was verified.
    pub error: Option<String>,
}

impl LogReport {
    /// One sentence: what was proven.
    pub fn summary(&self) -> String {
        let size = |s: Option<u64>| s.map_or_else(|| "?".to_string(), |s| s.to_string());
        format!(
            "{} receipt(s) proven against {} (signature, inclusion in the checkpoint of {} records, request id, data centre, body SHA-256); {} failed; {} acknowledged without a receipt; the checkpoint grew from {} to {}{}",
            self.receipts_verified,
            self.log,
            size(self.checkpoint_after),
            self.receipts_failed,
            self.acknowledged_without_receipt,
            size(self.checkpoint_before),
            size(self.checkpoint_after),
            match self.consistent {
                Some(true) => ", consistently",
                Some(false) => ", INCONSISTENTLY",
                None => "",
            }
        )
    }

    /// Why the log does not back the run (empty: it does).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(e) = &self.error {
            p.push(format!("the transparency log could not be checked: {e}"));
        }
        if self.receipts_failed > 0 {
            p.push(format!(
                "{} receipt(s) not proven by the transparency log",
                self.receipts_failed
            ));
        }
        if self.acknowledged_without_receipt > 0 {
            p.push(format!(
                "{} acknowledged upload(s) without a receipt",
                self.acknowledged_without_receipt
            ));
        }
        if self.consistent == Some(false) {
            p.push("the log's final checkpoint does not extend the first".into());
        }
        p
    }
}

/// The log's latest checkpoint, verified.
pub async fn checkpoint(
    fetcher: &Fetcher,
    verifier: &Verifier,
) -> anyhow::Result<(Checkpoint, String)> {
    let note = fetcher.text("/checkpoint").await?;
    let cp = Checkpoint::open(&note, verifier)?;
    Ok((cp, note))
}

/// Checks the run's receipts against the log (see the module
/// documentation). `before` is the checkpoint read before the load;
/// `stored_in` where the sinks stored each upload (by index).
pub async fn check(
    target: &LogTarget,
    before: Option<Checkpoint>,
    outcomes: &[Outcome],
    stored_in: &HashMap<u64, Vec<String>>,
) -> LogReport {
    let mut report = LogReport {
        log: target.url.clone(),
        checkpoint_before: before.as_ref().map(|c| c.size),
        ..LogReport::default()
    };
    if let Err(e) = prove(target, before, outcomes, stored_in, &mut report).await {
        report.error = Some(format!("{e:#}"));
    }
    report
}

async fn prove(
    target: &LogTarget,
    before: Option<Checkpoint>,
    outcomes: &[Outcome],
    stored_in: &HashMap<u64, Vec<String>>,
    report: &mut LogReport,
) -> anyhow::Result<()> {
    let verifier = Verifier::parse(&target.key)?;
    let fetcher = Fetcher::new(&target.url, None)?;
    let mut receipts = Vec::new();
    for o in outcomes.iter().filter(|o| o.acknowledged()) {
        let Sent::Done { answer, sha256, .. } = &o.result else {
            continue;
        };
        match &answer.receipt {
            Some(r) => receipts.push((o, answer, Receipt::parse(r), *sha256)),
            None => report.acknowledged_without_receipt += 1,
        }
    }
    // Wait (bounded) for a checkpoint that covers every receipt.
    let needed = receipts
        .iter()
        .filter_map(|(_, _, r, _)| r.as_ref().ok().map(|r| r.index + 1))
        .max()
        .unwrap_or(0);
    let mut last = checkpoint(&fetcher, &verifier).await?.0;
    for _ in 0..100 {
        if last.size >= needed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = checkpoint(&fetcher, &verifier).await?.0;
    }
    report.checkpoint_after = Some(last.size);
    let mut proofs = Proofs::new(last.size);
    let fail = |report: &mut LogReport, why: String| {
        report.receipts_failed += 1;
        if report.failure_samples.len() < 10 {
            report.failure_samples.push(why);
        }
    };
    for (o, answer, receipt, sha256) in receipts {
        let receipt = match receipt {
            Ok(r) => r,
            Err(e) => {
                fail(report, format!("upload {}: {e}", o.index));
                continue;
            }
        };
        let leaf = receipt.leaf_hash();
        let signed = receipt.signature.is_some_and(|sig| {
            verifier.verify(&signed_message(&receipt.log, receipt.index, &leaf), &sig)
        });
        if !signed || receipt.log != verifier.name() {
            fail(
                report,
                format!(
                    "upload {}: the receipt is not signed by the log's key",
                    o.index
                ),
            );
            continue;
        }
        let path = with_tiles(&mut proofs, &fetcher, |p| p.inclusion_proof(receipt.index)).await?;
        let included = path.is_some_and(|path| {
            merkle::verify_inclusion(&leaf, receipt.index, last.size, &path, &last.root).is_ok()
        });
        if !included {
            fail(
                report,
                format!(
                    "upload {}: record {} is not in the checkpoint of {} records",
                    o.index, receipt.index, last.size
                ),
            );
            continue;
        }
        let record = match Record::from_bytes(&receipt.record) {
            Ok(r) => r,
            Err(e) => {
                fail(report, format!("upload {}: record: {e}", o.index));
                continue;
            }
        };
        // As `verify` checks a receipt: the record must say stored.
        if record.outcome != residency_log::record::Outcome::Stored {
            fail(
                report,
                format!(
                    "upload {}: acknowledged, but its record says {:?}",
                    o.index, record.outcome
                ),
            );
            continue;
        }
        // The record is this request's: a receipt of another upload of the
        // same body to the same data centre passes every other check.
        let Some(id) = answer.request_id.as_deref() else {
            fail(
                report,
                format!(
                    "upload {}: the answer has no X-Request-Id to tie its receipt to (a front that drops it?)",
                    o.index
                ),
            );
            continue;
        };
        if id != record.request_id {
            fail(
                report,
                format!(
                    "upload {}: the answer names request {id:?}, its receipt's record {:?}",
                    o.index, record.request_id
                ),
            );
            continue;
        }
        // An upload replayed after a failed attempt may be stored in two
        // data centres: its record names the one that answered (the
        // response said which, when it did) and every one an earlier
        // attempt sent it to. No sink may hold it where the log does not
        // say it went.
        let stored: &[String] = stored_in.get(&o.index).map_or(&[], Vec::as_slice);
        let answered = o.datacenter();
        let named = |s: &String| {
            record.datacenter.as_deref() == Some(s.as_str())
                || record.also_sent_to.iter().any(|d| d == s.as_str())
        };
        if !record
            .datacenter
            .as_deref()
            .is_some_and(|dc| stored.iter().any(|s| s == dc) && answered.is_none_or(|a| a == dc))
            || !stored.iter().all(named)
        {
            fail(
                report,
                format!(
                    "upload {}: the log says data centre {:?} (earlier attempts: {:?}), the sinks stored it in {stored:?}",
                    o.index, record.datacenter, record.also_sent_to
                ),
            );
            continue;
        }
        let hex = residency_core::hex::encode(&sha256);
        if record.body.as_ref().map(|b| b.sha256.as_ref()) != Some(hex.as_str()) {
            fail(
                report,
                format!(
                    "upload {}: the log names another body than the one sent",
                    o.index
                ),
            );
            continue;
        }
        report.receipts_verified += 1;
    }
    if let Some(before) = before {
        let consistent = if before.size == 0 {
            true
        } else {
            let mut proofs = Proofs::new(last.size);
            let proof =
                with_tiles(&mut proofs, &fetcher, |p| p.consistency_proof(before.size)).await?;
            proof.is_some_and(|p| {
                merkle::verify_consistency(before.size, last.size, &before.root, &last.root, &p)
                    .is_ok()
            })
        };
        report.consistent = Some(consistent);
    }
    Ok(())
}

/// Runs `f`, fetching from the log the tiles it asks for; `None` when the
/// request is out of range.
async fn with_tiles<T>(
    proofs: &mut Proofs,
    fetcher: &Fetcher,
    f: impl Fn(&Proofs) -> Result<T, Need>,
) -> anyhow::Result<Option<T>> {
    // A proof needs O(log n) tiles; the bound stops a log that keeps
    // serving tiles that do not help.
    for _ in 0..256 {
        match f(proofs) {
            Ok(v) => return Ok(Some(v)),
            Err(Need::OutOfRange) => return Ok(None),
            Err(Need::Missing(tile)) => {
                let bytes = fetcher.get(&format!("/{}", tile.path())).await?;
                proofs.insert(tile, &bytes).map_err(anyhow::Error::msg)?;
            }
        }
    }
    anyhow::bail!("the log's tiles never completed a proof")
}
