//! The log's side of C2SP tlog-witness: after each checkpoint, every
//! `[[transparency.witnesses]]` entry is asked to cosign it.
//!
//! For each witness the log remembers (in memory) the size it last
//! cosigned and POSTs `<url>/add-checkpoint` with `old <that size>` (0 at
//! first), the consistency proof from it and the signed checkpoint. A 409
//! answers with the witness's recorded size (after a restart of the proxy,
//! say): the request is made once more from that size. A cosignature is
//! published — appended to the served checkpoint — only if it verifies
//! with the witness's configured key over this checkpoint. Witnesses are
//! asked concurrently and independently — each has its own rounds, one at
//! a time, and its cosignature is published as soon as it verifies, so a
//! slow or silent witness holds back no other's — each request bounded
//! (10 s for the answer's head, 10 s for its body); a witness that failed is asked
//! again after a backoff (1 s, doubling up to 16 s), kept per origin, so
//! that one it refuses (a sealed generation the witness never knew or has
//! dropped) does not hold back the others. Every exchange ends in one
//! `residency_log_witness_cosignatures_total{witness,result}` count.
//!
//! A log that rolled to a new origin (`max_records`) starts over with the
//! new one; each round also asks every witness whose cosignature a sealed
//! generation's last checkpoint lacks (read from its signature lines, so
//! this survives restarts), from size 0 (the 409 gives the witness's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use residency_log::settings::WitnessSettings;
use residency_log::storage::{Generation, Log, Published};
use residency_log::witness::{
    AddCheckpoint, CosignatureError, CosignatureVerifier, SIZE_CONTENT_TYPE,
};
use residency_tools::fetch::Fetcher;

/// The `result` label values, in [`Outcome`] order.
pub const RESULTS: [&str; 5] = ["ok", "conflict", "refused", "error", "invalid_cosignature"];

/// How one exchange with a witness ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A valid cosignature.
    Ok,
    /// 409, still after a retry from the witness's size (or its size is
    /// above the log's: the witness saw a larger tree).
    Conflict,
    /// Another 4xx: the witness does not accept this log or checkpoint.
    Refused,
    /// Unreachable, timed out, 5xx, or no consistency proof to send.
    Error,
    /// 200, but no cosignature verifying with the configured key.
    InvalidCosignature,
}

/// Means "no checkpoint carries this witness's cosignature yet".
const NONE: u64 = u64::MAX;

/// Every configured witness of one log.
pub struct Witnesses {
    log: Arc<Log>,
    clients: Vec<Client>,
}

struct Client {
    settings: WitnessSettings,
    fetcher: Fetcher,
    /// A round of this witness is running: the next checkpoint does not
    /// start another for it.
    busy: AtomicBool,
    /// The log generation its sizes are about (a roll to a new origin
    /// starts them over).
    generation: AtomicU32,
    /// The size the witness last cosigned for us (0: none known).
    cosigned: AtomicU64,
    /// The checkpoint size whose served note carries its cosignature.
    published: AtomicU64,
    /// Per generation (by number) that failed last time: consecutive
    /// failures and when to try again. Kept apart so that a witness
    /// refusing a sealed origin (one it was never told of, or has
    /// dropped) is still asked about the current one.
    backoff: Mutex<HashMap<u32, (u32, Instant)>>,
    results: [IntCounter; 5],
}

impl Witnesses {
    /// `None` without witnesses. Registers the counter into `registry`
    /// (every witness and result at 0).
    pub fn new(
        log: Arc<Log>,
        settings: &[WitnessSettings],
        registry: &Registry,
    ) -> Option<Arc<Witnesses>> {
        if settings.is_empty() {
            return None;
        }
        let counter = IntCounterVec::new(
            Opts::new(
                "residency_log_witness_cosignatures_total",
                "Exchanges with each transparency.witnesses entry, by how they ended: ok (a valid cosignature), conflict, refused, error, invalid_cosignature.",
            ),
            &["witness", "result"],
        )
        .expect("valid metric");
        if let Err(e) = registry.register(Box::new(counter.clone())) {
            tracing::warn!(error = %e, "witness metrics not registered");
        }
        // Every witness's results exist from start, at 0.
        for s in settings {
            for result in RESULTS {
                counter.with_label_values(&[s.name.as_str(), result]);
            }
        }
        let mut clients = Vec::new();
        for s in settings {
            let fetcher = match Fetcher::new(&s.url, s.ca.as_ref()) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(witness = %s.name, error = %e, "witness client failed; it is not asked");
                    continue;
                }
            };
            let results = RESULTS.map(|r| counter.with_label_values(&[s.name.as_str(), r]));
            clients.push(Client {
                settings: s.clone(),
                fetcher,
                busy: AtomicBool::new(false),
                generation: AtomicU32::new(0),
                cosigned: AtomicU64::new(0),
                published: AtomicU64::new(NONE),
                backoff: Mutex::default(),
                results,
            });
        }
        Some(Arc::new(Witnesses { log, clients }))
    }

    /// Starts a round of each witness in the background, unless one of
    /// that witness is running.
    pub fn after_checkpoint(self: &Arc<Self>) {
        for (i, client) in self.clients.iter().enumerate() {
            if client.busy.swap(true, Ordering::AcqRel) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                let client = &me.clients[i];
                me.round_of(client).await;
                client.busy.store(false, Ordering::Release);
            });
        }
    }

    /// A round of every witness, concurrently; returns when all have ended.
    pub async fn round(&self) {
        futures_util::future::join_all(self.clients.iter().map(|c| self.round_of(c))).await;
    }

    /// Asks the witness, unless it is backing off, about the last
    /// checkpoint of each sealed generation (the log rolled past it at
    /// `max_records`) that lacks its cosignature, then about the latest
    /// checkpoint, and publishes each cosignature that verified.
    async fn round_of(&self, client: &Client) {
        let current = self.log.current();
        if client.generation.swap(current.number(), Ordering::AcqRel) != current.number() {
            // A new origin: the witness knows nothing of it yet.
            client.cosigned.store(0, Ordering::Release);
            client.published.store(NONE, Ordering::Release);
        }
        for sealed in self.log.generations() {
            if sealed.number() != current.number() {
                self.witness(&sealed, client, false).await;
            }
        }
        self.witness(&current, client, true).await;
    }

    /// One generation's exchange with one witness. It is not asked when the
    /// latest checkpoint already carries its cosignature. Otherwise, for the
    /// current generation, its progress is what this process remembers
    /// (`cosigned`, `published`); for a sealed one, it is asked from size
    /// 0 (a 409 gives the witness's size).
    async fn witness(&self, generation: &Arc<Generation>, client: &Client, current: bool) {
        let latest = generation.latest();
        if latest.size == 0 {
            return; // nothing to witness
        }
        let Ok((body, signatures)) = residency_log::witness::split_note(&latest.note) else {
            return;
        };
        if !client.due(generation.number(), Instant::now())
            || (current && client.published.load(Ordering::Acquire) == latest.size)
        {
            return;
        }
        // Already cosigned in the note: before a restart, or asked by
        // another proxy of a fleet. Asking again would only renew the line.
        if client.signed(body, signatures) {
            if current {
                client.cosigned.store(latest.size, Ordering::Release);
                client.published.store(latest.size, Ordering::Release);
            }
            return;
        }
        let old = if current {
            client.cosigned.load(Ordering::Acquire)
        } else {
            0
        };
        let Some(line) = client.exchange(generation, &latest, body, old).await else {
            return;
        };
        if current {
            client.cosigned.store(latest.size, Ordering::Release);
        }
        // Blocking: the cosigned checkpoint is also written to disk.
        let (g, size) = (generation.clone(), latest.size);
        let added = tokio::task::spawn_blocking(move || g.add_cosignatures(size, &[line]))
            .await
            .unwrap_or(false);
        if added {
            if current {
                client.published.store(latest.size, Ordering::Release);
            }
        } else {
            tracing::debug!(
                witness = %client.name(),
                size = latest.size,
                "a newer checkpoint replaced the cosigned one; it is witnessed next"
            );
        }
    }
}

impl Client {
    fn name(&self) -> &str {
        &self.settings.name
    }

    /// May the witness be asked about generation `number` now?
    fn due(&self, number: u32, now: Instant) -> bool {
        let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        backoff.get(&number).is_none_or(|(_, at)| now >= *at)
    }

    fn record(&self, number: u32, outcome: Outcome) {
        self.results[outcome as usize].inc();
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        if let Outcome::Ok = outcome {
            backoff.remove(&number);
            return;
        }
        let failures = backoff.get(&number).map_or(1, |(n, _)| n.saturating_add(1));
        let delay = Duration::from_secs(1 << (failures.min(5) - 1));
        backoff.insert(number, (failures, Instant::now() + delay));
    }

    /// Whether the signature lines of a checkpoint (`signatures`, over
    /// `body`) carry this witness's valid cosignature.
    fn signed(&self, body: &str, signatures: &str) -> bool {
        signatures
            .split_terminator('\n')
            .any(|line| matches!(self.settings.key.check_line(body, line), Ok(Some(_))))
    }

    /// One exchange from the witness's size `old` (as far as known): the
    /// cosignature line, if one verified.
    async fn exchange(
        &self,
        log: &Arc<Generation>,
        latest: &Published,
        body: &str,
        old: u64,
    ) -> Option<String> {
        let (outcome, line) = self.try_exchange(log, latest, body, old).await;
        self.record(log.number(), outcome);
        line
    }

    async fn try_exchange(
        &self,
        log: &Arc<Generation>,
        latest: &Published,
        body: &str,
        mut old: u64,
    ) -> (Outcome, Option<String>) {
        let size = latest.size;
        if old > size {
            old = 0;
        }
        for retry in [false, true] {
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                let l = log.clone();
                match tokio::task::spawn_blocking(move || l.consistency_proof(old, size)).await {
                    Ok(Ok(Some(proof))) => proof,
                    _ => {
                        tracing::warn!(witness = %self.name(), old, size, "no consistency proof for the witness");
                        return (Outcome::Error, None);
                    }
                }
            };
            let request = AddCheckpoint {
                old,
                proof,
                note: latest.note.clone(),
            }
            .encode();
            let answer = match self
                .fetcher
                .post(
                    "/add-checkpoint",
                    "text/plain; charset=utf-8",
                    Bytes::from(request),
                )
                .await
            {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::warn!(witness = %self.name(), error = %format!("{e:#}"), "witness not reached");
                    return (Outcome::Error, None);
                }
            };
            let text = String::from_utf8_lossy(&answer.body);
            match answer.status.as_u16() {
                200 => return self.accept(&text, body),
                409 => {
                    let theirs = recorded_size(answer.content_type.as_deref(), &text);
                    match theirs {
                        Some(n) if !retry && n != old && n <= size => {
                            tracing::info!(witness = %self.name(), old, recorded = n, "witness recorded another size; asking again from it");
                            old = n;
                            continue;
                        }
                        Some(n) if n > size => tracing::error!(
                            witness = %self.name(), recorded = n, size,
                            "the witness cosigned a larger tree of this log than it now has"
                        ),
                        _ => tracing::warn!(
                            witness = %self.name(), old, size, answer = %text.trim_end(),
                            "witness refused the checkpoint as conflicting"
                        ),
                    }
                    return (Outcome::Conflict, None);
                }
                status @ 400..=499 => {
                    tracing::warn!(witness = %self.name(), status, answer = %text.trim_end(), "witness refused the checkpoint");
                    return (Outcome::Refused, None);
                }
                status => {
                    tracing::warn!(witness = %self.name(), status, answer = %text.trim_end(), "witness failed");
                    return (Outcome::Error, None);
                }
            }
        }
        (Outcome::Conflict, None)
    }

    /// A 200 answer: signature lines, of which one must be a valid
    /// cosignature by the configured key (others' lines are ignored).
    fn accept(&self, text: &str, body: &str) -> (Outcome, Option<String>) {
        match cosignature_by(&self.settings.key, text, body) {
            // Dated far ahead of this clock, it would stay on every later
            // checkpoint as a claim of a time not yet come (crypto audit,
            // stop 66: a cosignature of the year 2200 was published).
            Ok(Some((_, timestamp))) if too_far_ahead(timestamp, unix_now()) => {
                tracing::warn!(witness = %self.name(), timestamp, "witness answered a cosignature dated more than a day ahead of this clock: not published (one of the clocks is wrong)");
                (Outcome::InvalidCosignature, None)
            }
            Ok(Some((line, _))) => (Outcome::Ok, Some(line.to_string())),
            Ok(None) => {
                tracing::warn!(witness = %self.name(), key = %self.settings.key.label(), "witness answered no cosignature by its configured key");
                (Outcome::InvalidCosignature, None)
            }
            Err(e) => {
                tracing::warn!(witness = %self.name(), error = %e, "witness answered an invalid cosignature");
                (Outcome::InvalidCosignature, None)
            }
        }
    }
}

/// How far ahead of this clock a cosignature may be dated and still be
/// published.
const AHEAD_AT_MOST: u64 = 24 * 3600;

/// Whether a cosignature dated `timestamp` is more than [`AHEAD_AT_MOST`]
/// ahead of `now` (Unix seconds).
fn too_far_ahead(timestamp: u64, now: u64) -> bool {
    timestamp > now.saturating_add(AHEAD_AT_MOST)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The most signature lines a witness's answer may hold (a signed note's
/// verifiers accept 100 signatures at most; the error says 100).
const MAX_ANSWER_LINES: usize = 100;

/// The first valid cosignature by `key` among a witness's answer lines,
/// with its timestamp.
/// Lines of other keys are ignored (tlog-witness: "The client MUST ignore
/// any cosignatures from unknown keys"), and so are lines that are no
/// signature line at all, which cannot be `key`'s; a line of `key` that
/// does not verify is an error, whatever else the answer holds.
fn cosignature_by<'a>(
    key: &CosignatureVerifier,
    text: &'a str,
    body: &str,
) -> Result<Option<(&'a str, u64)>, CosignatureError> {
    let mut ours = None;
    // Bounded: each line of `key` costs a signature check, on the runtime.
    if text.split_terminator('\n').nth(MAX_ANSWER_LINES).is_some() {
        return Err(CosignatureError::Malformed("more than 100 lines"));
    }
    for line in text.split_terminator('\n') {
        match key.check_line(body, line) {
            Ok(Some(timestamp)) => {
                ours.get_or_insert((line, timestamp));
            }
            Ok(None) | Err(CosignatureError::Malformed(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ours)
}

/// The witness's size in a 409 answer (tlog-witness): a `text/x.tlog.size`
/// body (the media type compared without case or parameters) holding a
/// decimal without sign or leading zeros, and a newline.
fn recorded_size(content_type: Option<&str>, body: &str) -> Option<u64> {
    let media = content_type?.split(';').next()?.trim();
    if !media.eq_ignore_ascii_case(SIZE_CONTENT_TYPE) {
        return None;
    }
    let digits = body.strip_suffix('\n')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_409_names_the_size_as_tlog_witness_has_it() {
        let ok = |t: &str, b: &str| recorded_size(Some(t), b);
        assert_eq!(ok("text/x.tlog.size", "42\n"), Some(42));
        assert_eq!(ok("Text/X.TLOG.Size; charset=utf-8", "0\n"), Some(0));
        for (t, b) in [
            ("text/x.tlog.sizes", "42\n"),
            ("text/plain", "42\n"),
            ("text/x.tlog.size", "42"),
            ("text/x.tlog.size", "+42\n"),
            ("text/x.tlog.size", "042\n"),
            ("text/x.tlog.size", "\n"),
            ("text/x.tlog.size", "4 2\n"),
            ("text/x.tlog.size", "18446744073709551616\n"),
        ] {
            assert_eq!(ok(t, b), None, "{t:?} {b:?}");
        }
        assert_eq!(recorded_size(None, "42\n"), None);
    }

    /// A cosignature dated more than a day ahead of the clock is not
    /// published; one a little ahead (a witness's clock a few seconds
    /// fast), or behind, is.
    #[test]
    fn a_cosignature_dated_far_ahead_is_not_published() {
        let now = 1_800_000_000;
        assert!(!too_far_ahead(now, now));
        assert!(!too_far_ahead(now + 30, now));
        assert!(!too_far_ahead(now + AHEAD_AT_MOST, now));
        assert!(too_far_ahead(now + AHEAD_AT_MOST + 1, now));
        assert!(too_far_ahead(7_258_118_400, now), "the year 2200");
        assert!(!too_far_ahead(0, now));
        assert!(!too_far_ahead(u64::MAX, u64::MAX));
    }

    #[test]
    fn an_answer_is_searched_for_the_configured_keys_cosignature() {
        use residency_log::witness::Cosigner;
        let body = "example.com/log\n4\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let ours = Cosigner::from_seed("witness.example/w1", &[7; 32]).unwrap();
        let other = Cosigner::from_seed("witness.example/w2", &[8; 32]).unwrap();
        let key = ours.verifier();
        let line = ours.cosign(body, 1_700_000_000);
        let elsewhere = other.cosign(body, 1_700_000_000);
        // Another key's line, and lines that are no signature line at all
        // (no name, bad base64, a payload too short for a key id), are
        // passed over.
        let text = format!("{elsewhere}\n— witness.example/w9\n— x !!!\n— y AAAA\n{line}\n");
        assert_eq!(
            cosignature_by(&key, &text, body),
            Ok(Some((line.as_str(), 1_700_000_000)))
        );
        // No line of ours: none.
        let text = format!("{elsewhere}\n— x !!!\n");
        assert_eq!(cosignature_by(&key, &text, body), Ok(None));
        // A line of ours that does not verify (over another body): an
        // error, even beside a valid one.
        let forged = ours.cosign(
            "example.com/log\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            1,
        );
        let text = format!("{forged}\n{line}\n");
        assert!(matches!(
            cosignature_by(&key, &text, body),
            Err(CosignatureError::Invalid(_))
        ));
        // Bounded: each line of ours costs a signature check, so an answer
        // of more lines than a note may carry signatures is refused unread.
        let text = format!("{line}\n").repeat(MAX_ANSWER_LINES);
        assert_eq!(
            cosignature_by(&key, &text, body),
            Ok(Some((line.as_str(), 1_700_000_000)))
        );
        let text = format!("{line}\n").repeat(MAX_ANSWER_LINES + 1);
        assert!(matches!(
            cosignature_by(&key, &text, body),
            Err(CosignatureError::Malformed(_))
        ));
    }
}
