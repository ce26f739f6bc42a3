//! Reconciliation: what the sinks stored against what the clients were told.
//!
//! `GET {sink}/records` returns every upload a sink stored. Only records with
//! this run's upload ids count. An upload is a **residency violation** when
//! a record puts it in a data centre outside its origin jurisdiction's
//! permitted set (an unknown data centre counts as outside); it is
//! **acknowledged but missing** when the client got a 2xx but no record has
//! its id and the SHA-256 of the body that was sent.

use std::collections::{BTreeMap, HashMap};

use http::{Method, Uri};
use serde::{Deserialize, Serialize};

use super::chaos::{join, Admin, RECORDS_TIMEOUT};
use super::generator::{Outcome, Sent};
use super::plan::Plan;
use super::upload::{body_for, hex, sha256, RunId};

/// Most samples of each problem kept in the report.
const SAMPLES: usize = 20;

/// One stored upload, as a sink reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub struct SinkRecord {
    pub datacenter: String,
    #[serde(default)]
    pub upload_id: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub origin_country: Option<String>,
    #[serde(default)]
    pub jurisdiction: Option<String>,
    #[serde(default)]
    pub received_at_ms: u64,
}

/// Reads the records of every sink; identical records (the same sink
/// listed twice) are counted once. Any sink that cannot be read is an
/// error: nothing could then be proven missing.
pub async fn fetch_records(
    admin: &Admin,
    sinks: &[Uri],
    since: &[Option<u64>],
) -> Result<Vec<SinkRecord>, String> {
    let mut all = Vec::new();
    for (i, sink) in sinks.iter().enumerate() {
        let url = join(sink, "/records")?;
        let shown = url.to_string();
        let (status, body) = get(admin, url).await.map_err(|e| format!("{shown}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{shown}: {status}"));
        }
        all.extend(parse_records(&body).map_err(|e| format!("{shown}: {e}"))?);
        let stats = stats(admin, sink).await;
        let dropped = stats.as_ref().map_or(0, |s| s.dropped);
        if dropped > 0 {
            return Err(format!(
                "{sink} dropped {dropped} record(s) (its record limit was reached): missing uploads cannot be ruled out"
            ));
        }
        // The records it held when the run began are gone: a restart or a
        // reset (it keeps them in memory only).
        if let Some(before) = since.get(i).copied().flatten() {
            match stats.and_then(|s| s.since_ms) {
                Some(now) if now == before => {}
                Some(now) => {
                    return Err(format!(
                        "{sink} restarted or was reset during the run (its records began at {before} ms since the Unix epoch, now at {now}): it keeps records in memory only, so missing uploads cannot be ruled out"
                    ))
                }
                None => {
                    return Err(format!(
                        "{sink}/stats could not be read to tell whether the sink restarted during the run (it keeps records in memory only): missing uploads cannot be ruled out"
                    ))
                }
            }
        }
    }
    all.sort();
    all.dedup();
    Ok(all)
}

/// A GET of a sink's admin API, tried once more on a failed exchange: a
/// kept-alive connection to a sink that was stopped past its idle timeout
/// is reset when it continues, though the sink answers a fresh one
/// (verification, stop 62: the run was left unreconciled).
async fn get(admin: &Admin, url: Uri) -> Result<(http::StatusCode, bytes::Bytes), String> {
    match admin
        .call(Method::GET, url.clone(), None, RECORDS_TIMEOUT)
        .await
    {
        Err(_) => admin.call(Method::GET, url, None, RECORDS_TIMEOUT).await,
        answered => answered,
    }
}

/// What a sink's `GET /stats` says of its records, where it has one.
pub struct SinkStats {
    /// `dropped_records` (0 when not given).
    pub dropped: u64,
    /// `records_since_ms`: when the records it holds began.
    pub since_ms: Option<u64>,
}

/// The sink's `GET /stats`, where it has one (`None` when it has no such
/// endpoint, or does not answer it).
async fn stats(admin: &Admin, sink: &Uri) -> Option<SinkStats> {
    let url = join(sink, "/stats").ok()?;
    match get(admin, url).await {
        Ok((status, body)) if status.is_success() => {
            let v = serde_json::from_slice::<serde_json::Value>(&body).ok()?;
            Some(SinkStats {
                dropped: v
                    .get("dropped_records")
                    .and_then(|d| d.as_u64())
                    .unwrap_or(0),
                since_ms: v.get("records_since_ms").and_then(|d| d.as_u64()),
            })
        }
        _ => None,
    }
}

/// When each sink's records began (`records_since_ms`), read before a
/// run: a sink that restarts meanwhile loses what it held.
pub async fn records_since(admin: &Admin, sinks: &[Uri]) -> Vec<Option<u64>> {
    let mut since = Vec::with_capacity(sinks.len());
    for sink in sinks {
        since.push(stats(admin, sink).await.and_then(|s| s.since_ms));
    }
    since
}

/// A JSON array of records (or `{"records": [...]}`).
pub fn parse_records(body: &[u8]) -> Result<Vec<SinkRecord>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        List(Vec<SinkRecord>),
        Wrapped { records: Vec<SinkRecord> },
    }
    match serde_json::from_slice::<Shape>(body) {
        Ok(Shape::List(r) | Shape::Wrapped { records: r }) => Ok(r),
        Err(e) => Err(format!("records are not a JSON array of records: {e}")),
    }
}

/// An upload stored where its origin's data may not be.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub upload_id: String,
    pub origin_jurisdiction: String,
    pub datacenter: String,
    /// `None`: the policy has no data centre of that name.
    pub datacenter_jurisdiction: Option<String>,
}

/// The reconciliation of one run.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Records of this run, by data centre.
    pub stored_by_datacenter: BTreeMap<String, u64>,
    /// Uploads with at least one record outside the permitted set.
    pub violations: u64,
    pub violation_samples: Vec<Violation>,
    /// 2xx to the client, but no record with the id and the right SHA-256.
    pub acknowledged_missing: u64,
    pub missing_samples: Vec<String>,
    /// Records whose SHA-256 is not that of the body sent.
    pub checksum_mismatches: u64,
    /// Uploads stored more than once.
    pub duplicates: u64,
    /// Uploads stored although the client saw no 2xx (timeouts, errors).
    pub stored_not_acknowledged: u64,
    /// Records whose `jurisdiction` differs from the one the upload was
    /// sent for (a GeoIP or `--origin` mismatch).
    pub jurisdiction_mismatches: u64,
    /// Records with this run's prefix but an id that was never scheduled.
    pub unknown_uploads: u64,
    /// The data centres each upload was stored in, by index, earliest
    /// first (an upload replayed after a failure can be stored twice).
    pub stored_in: HashMap<u64, Vec<String>>,
}

/// Matches `records` against the outcomes of the run.
pub fn reconcile(
    plan: &Plan,
    run: &RunId,
    outcomes: &[Outcome],
    records: &[SinkRecord],
) -> Reconciled {
    let mut r = Reconciled::default();
    let mut by_index: HashMap<u64, Vec<&SinkRecord>> = HashMap::new();
    for rec in records {
        if let Some(i) = rec.upload_id.as_deref().and_then(|id| run.index_of(id)) {
            by_index.entry(i).or_default().push(rec);
        }
    }
    let find = |i: u64| {
        outcomes
            .binary_search_by_key(&i, |o| o.index)
            .ok()
            .map(|p| &outcomes[p])
    };
    for (&index, recs) in &by_index {
        let Some(outcome) = find(index) else {
            r.unknown_uploads += recs.len() as u64;
            continue;
        };
        let origin = &plan.mix[outcome.jurisdiction].jurisdiction;
        let expected = match &outcome.result {
            Sent::Done { sha256, .. } => hex(sha256),
            _ => hex(&sha256(&body_for(run, index, plan.body_size))),
        };
        let mut violated = false;
        for rec in recs {
            *r.stored_by_datacenter
                .entry(rec.datacenter.clone())
                .or_default() += 1;
            if plan.permits(origin, &rec.datacenter) != Some(true) {
                if !violated && r.violation_samples.len() < SAMPLES {
                    r.violation_samples.push(Violation {
                        upload_id: run.upload_id(index),
                        origin_jurisdiction: origin.clone(),
                        datacenter: rec.datacenter.clone(),
                        datacenter_jurisdiction: datacenter_jurisdiction(plan, &rec.datacenter),
                    });
                }
                violated = true;
            }
            if !rec.sha256.eq_ignore_ascii_case(&expected) {
                r.checksum_mismatches += 1;
            }
            if rec.jurisdiction.as_deref().is_some_and(|j| j != origin) {
                r.jurisdiction_mismatches += 1;
            }
        }
        r.violations += u64::from(violated);
        r.duplicates += u64::from(recs.len() > 1);
        if !outcome.acknowledged() {
            r.stored_not_acknowledged += 1;
        }
        let mut by_time: Vec<_> = recs.iter().collect();
        by_time.sort_by_key(|rec| rec.received_at_ms);
        r.stored_in.insert(
            index,
            by_time
                .into_iter()
                .map(|rec| rec.datacenter.clone())
                .collect(),
        );
    }
    for o in outcomes.iter().filter(|o| o.acknowledged()) {
        let Sent::Done { sha256, .. } = &o.result else {
            continue;
        };
        let expected = hex(sha256);
        let found = by_index.get(&o.index).is_some_and(|recs| {
            recs.iter()
                .any(|rec| rec.sha256.eq_ignore_ascii_case(&expected))
        });
        if !found {
            r.acknowledged_missing += 1;
            if r.missing_samples.len() < SAMPLES {
                r.missing_samples.push(run.upload_id(o.index));
            }
        }
    }
    r.violation_samples
        .sort_by(|a, b| a.upload_id.cmp(&b.upload_id));
    r
}

fn datacenter_jurisdiction(plan: &Plan, name: &str) -> Option<String> {
    let dc = plan.policy.datacenters.iter().find(|d| d.name == name)?;
    Some(plan.policy.jurisdiction(dc.jurisdiction).name.clone())
}
