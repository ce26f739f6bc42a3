//! Decision records for the transparency log, and the receipt a stored
//! upload's response carries.
//!
//! Every answer produces one record: uploads the data centre stored (2xx),
//! uploads it answered otherwise, and refusals. Only a 2xx gets a receipt,
//! and only once its record is in the log: if the record cannot be written,
//! the client gets 503 `log_unavailable` instead (unless the operator chose
//! `on_write_error = "continue"`), and that refusal goes into its summary
//! (a refusal beyond the budget goes there too: `Log::append_refusal`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Response};

use super::error::Failure;
use super::Findings;
use crate::state::Snapshot;
use crate::upstream::body::BodySlot;
use residency_core::country::Country;
use residency_log::receipt::{self, Receipt};
use residency_log::record::{self, BodyDigest, Client, Database, Outcome, Record, TenantRecord};
use residency_log::settings::{OnWriteError, ReceiptMode};
use residency_log::storage::Log;

/// What a request was, for its record.
pub struct RecordContext<'a> {
    pub state: &'a Snapshot,
    pub findings: &'a Findings,
    pub request_id: &'a HeaderValue,
    pub received: SystemTime,
}

impl<'a> RecordContext<'a> {
    pub fn new(
        state: &'a Snapshot,
        findings: &'a Findings,
        request_id: &'a HeaderValue,
        received: SystemTime,
    ) -> RecordContext<'a> {
        RecordContext {
            state,
            findings,
            request_id,
            received,
        }
    }

    fn record(&self, log: &Log, outcome: Outcome) -> Record<'a> {
        let state = self.state;
        let policy = &state.config.policy;
        let findings = self.findings;
        let address = findings
            .client
            .and_then(|a| record::minimise(a, &log.settings().client_address));
        Record {
            v: record::VERSION,
            request_id: Cow::Borrowed(self.request_id.to_str().unwrap_or_default()),
            time: Cow::Owned(record::rfc3339(self.received)),
            outcome,
            reason: findings.reason.map(Cow::Borrowed),
            client: Client {
                source: findings.source.map(|s| Cow::Borrowed(s.as_str())),
                address: address.map(Cow::Owned),
            },
            country: findings
                .country
                .as_ref()
                .map(|c| Cow::Borrowed(Country::as_str(c))),
            jurisdiction: findings
                .jurisdiction
                .map(|j| Cow::Borrowed(policy.jurisdiction(j).name.as_str())),
            datacenter: findings
                .datacenter
                .map(|d| Cow::Borrowed(policy.datacenter(d).name.as_str())),
            // Not when the replay went to another upstream of the same one.
            also_sent_to: findings
                .also_sent_to
                .filter(|d| Some(*d) != findings.datacenter)
                .map(|d| Cow::Borrowed(policy.datacenter(d).name.as_str()))
                .into_iter()
                .collect(),
            upstream_status: None,
            body: None,
            policy_sha256: Cow::Borrowed(&state.policy_hash),
            geoip: Database {
                build_epoch: state.geo.build_epoch(),
                sha256: Cow::Borrowed(state.geo.sha256_hex()),
            },
            tenant: findings.tenant.map(|t| TenantRecord {
                name: Cow::Borrowed(state.config.tenancy.record_name(t.tenant, t.source)),
                source: Cow::Borrowed(t.source.as_str()),
                origin_jurisdiction: findings
                    .origin_jurisdiction
                    .map(|j| Cow::Borrowed(policy.jurisdiction(j).name.as_str())),
            }),
            summary: None,
        }
    }
}

/// Records a refusal (on its own within `transparency.refusal_records_per_second`,
/// else in a summary record). A failed write is counted and logged by the
/// log; the client is being refused anyway.
pub async fn refused(log: &Arc<Log>, context: &RecordContext<'_>) {
    // Over the refusal budget it is folded into a summary record.
    let _ = log
        .append_refusal(&context.record(log, Outcome::Refused))
        .await;
}

/// Armed while an upload is with a data centre ([`super::handle`]'s
/// forward): a request dropped then — cut at the end of `shutdown_grace`
/// (`shutdown`), or whose client left when the detached-request budget was
/// full (`client_aborted`) — leaves a refusal in its reason's summary
/// record, naming the data centre, which may have stored it (it left no
/// record at all). Disarmed by `std::mem::forget` once the forward ends.
pub struct Cut<'a> {
    pub instance: &'a crate::state::Instance,
    pub state: &'a Snapshot,
    pub findings: &'a mut Findings,
    pub request_id: &'a HeaderValue,
    pub received: SystemTime,
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        let policy = &self.state.config.policy;
        let datacenter = self
            .findings
            .datacenter
            .map_or("none", |d| policy.datacenter(d).name.as_str());
        let request_id = self.request_id.to_str().unwrap_or_default();
        self.findings.reason = Some(dropped(self.instance, request_id, datacenter));
        if let Some(log) = &self.instance.log {
            let context =
                RecordContext::new(self.state, self.findings, self.request_id, self.received);
            // Synchronous: the summary is written with the others (at
            // shutdown, before the final checkpoint).
            log.fold_refusal(&context.record(log, Outcome::Refused));
        }
    }
}

/// The reason of a request dropped while a data centre had its upload —
/// `shutdown` when cut at the end of `shutdown_grace`, else
/// `client_aborted` — counted and logged.
fn dropped(instance: &crate::state::Instance, request_id: &str, datacenter: &str) -> &'static str {
    let failure = match *instance.cut.borrow() {
        true => Failure::Shutdown,
        false => Failure::ClientAborted,
    };
    let reason = failure.reason();
    instance
        .metrics
        .rejections
        .with_label_values(&[reason])
        .inc();
    tracing::warn!(
        request_id,
        reason,
        datacenter,
        "request dropped while its upload was with a data centre (which may have stored it): recorded as refused"
    );
    reason
}

/// Armed while a 2xx answered before the end of its body waits for that
/// end ([`answered`]): a request dropped then leaves its refusal in a
/// summary, as one dropped mid-forward does ([`Cut`]); its record was not
/// written yet.
struct Waiting<'r, 'a> {
    instance: &'r crate::state::Instance,
    log: &'r Log,
    record: &'r Record<'a>,
}

impl Drop for Waiting<'_, '_> {
    fn drop(&mut self) {
        let mut record = self.record.clone();
        let datacenter = record.datacenter.as_deref().unwrap_or("none");
        let reason = dropped(self.instance, &record.request_id, datacenter);
        record.outcome = Outcome::Refused;
        record.reason = Some(Cow::Borrowed(reason));
        self.log.fold_refusal(&record);
    }
}

/// Records an upstream answer and returns the `Residency-Receipt` value for
/// a 2xx (added after the upstream's own `Residency-*` headers are
/// stripped). A 2xx whose record cannot be written becomes 503
/// `log_unavailable` (by default).
pub async fn answered<B>(
    instance: &crate::state::Instance,
    log: &Arc<Log>,
    context: &RecordContext<'_>,
    resp: &Response<B>,
    slot: &BodySlot,
) -> Result<Option<HeaderValue>, Failure> {
    let stored = resp.status().is_success();
    let mut record = context.record(
        log,
        if stored {
            Outcome::Stored
        } else {
            Outcome::Rejected
        },
    );
    record.upstream_status = Some(resp.status().as_u16());
    // The data centre may answer before it has read the whole body; a
    // receipt names the body it got, so a 2xx waits for the end (while the
    // body makes progress). Another answer is recorded with the digest
    // only if the body has already ended: it is not held for it.
    let idle = context.state.config.timeouts.request_body_idle;
    let sha256 = if stored {
        let waiting = Waiting {
            instance,
            log,
            record: &record,
        };
        let sha256 = slot.wait_sha256(idle).await;
        std::mem::forget(waiting);
        sha256
    } else {
        slot.sha256()
    };
    match sha256 {
        Some(sha256) => {
            record.body = Some(BodyDigest {
                sha256: Cow::Owned(residency_core::hex::encode(&sha256)),
                bytes: slot.bytes(),
            })
        }
        None if stored => {
            // The body failed (too large, too slow, cut): the client is
            // told that, as without an early answer; else it stopped
            // coming while the data centre waited.
            let failure = slot.failure().map_or(Failure::UpstreamError, Failure::from);
            // What is left of the body is not delivered: the data centre
            // must not complete a request the client is told failed.
            slot.withdraw();
            tracing::warn!(
                request_id = context.request_id.to_str().unwrap_or_default(),
                reason = failure.reason(),
                "the data centre answered 2xx before receiving the whole body, which did not end: no receipt"
            );
            record.outcome = Outcome::Refused;
            record.reason = Some(Cow::Borrowed(failure.reason()));
            if log.append(&record).await.is_err() {
                log.fold_refusal(&record);
            }
            return Err(failure);
        }
        None => {}
    }
    let appended = match log.append(&record).await {
        Ok(a) => a,
        Err(_) if stored && log.settings().on_write_error == OnWriteError::Refuse => {
            // The data centre has the upload and the client is refused:
            // that refusal goes into its summary (reason and data centre),
            // written once the log takes writes again, so the log still
            // says where the body went. Not a record by request id: the
            // failed one may yet commit (a batch or fsync that timed out).
            record.outcome = Outcome::Refused;
            record.reason = Some(Cow::Borrowed(Failure::LogUnavailable.reason()));
            log.fold_refusal(&record);
            return Err(Failure::LogUnavailable);
        }
        Err(_) => return Ok(None),
    };
    if !stored {
        return Ok(None);
    }
    // The origin of the generation that holds the record (the log rolls
    // to a new one at `max_records`).
    let generation = &appended.generation;
    let signature = match log.settings().receipts {
        ReceiptMode::Off => return Ok(None),
        ReceiptMode::Log => None,
        ReceiptMode::Signed => {
            let message =
                receipt::signed_message(generation.origin(), appended.index, &appended.leaf);
            Some(generation.signer().sign(&message))
        }
    };
    let value = Receipt {
        log: generation.origin().to_string(),
        index: appended.index,
        record: appended.bytes,
        signature,
    }
    .encode();
    // Takes the string's buffer as is (after checking it), no copy.
    Ok(HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok())
}
