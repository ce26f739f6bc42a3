//! Witnesses: C2SP tlog-cosignature (Ed25519, `cosignature/v1`) and the
//! protocol half of C2SP tlog-witness, independent of HTTP.
//!
//! A witness keeps, per log origin, the size and root of the latest
//! checkpoint it cosigned. The log submits each new checkpoint with a
//! consistency proof from that size (`add-checkpoint`); the witness checks
//! the log's signature and the proof, records the new size durably, and
//! answers with a timestamped cosignature: a note signature line by the
//! witness's key over
//!
//! ```text
//! cosignature/v1
//! time <POSIX seconds>
//! <the checkpoint's note text, with its final newline>
//! ```
//!
//! whose payload is `key id (4) || timestamp (u64 big-endian) || Ed25519
//! signature (64)`, the key id being SHA-256(name || "\n" || 0x04 || public
//! key)[:4]. Clients that trust a quorum of witnesses then know every
//! checkpoint they accept is one the witnesses saw the log grow into, so a
//! log cannot show different histories to different clients (a split view)
//! without the witnesses signing both.

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::{engine::general_purpose::STANDARD, Engine};
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::merkle::{self, Hash};
use crate::note::{
    check_note, key_id, key_label, parse_signature_line, parse_vkey, Checkpoint, NamedKey,
    NoteError, Verifier, MAX_NOTE_BYTES, MAX_SIGNATURES, SIGNATURE_PREFIX,
};

/// The vkey type byte and key-id algorithm byte of Ed25519 cosignatures.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
/// At most this many consistency proof lines in an add-checkpoint request.
pub const MAX_PROOF_LINES: usize = 63;
/// Content type of a 409 answer: the witness's recorded size.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";
/// Largest add-checkpoint request body: the old size line, 63 proof lines
/// and the largest note.
pub const MAX_REQUEST_BYTES: usize = 32 + MAX_PROOF_LINES * 45 + 1 + MAX_NOTE_BYTES;

const WRONG_TYPE: &str =
    "a witness key must be an Ed25519 cosignature/v1 key (type byte 0x04): create one with `residency-proxy keygen --witness`";

/// The message a `cosignature/v1` signature covers.
pub fn signed_message(body: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{body}").into_bytes()
}

/// SHA-256(name || "\n" || 0x04 || public key)[:4].
pub fn cosigner_key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    key_id(name, ALG_COSIGNATURE_V1, public_key)
}

fn cosigner_vkey(name: &str, key_id: [u8; 4], public_key: &[u8; 32]) -> String {
    let key = [&[ALG_COSIGNATURE_V1][..], public_key].concat();
    format!("{}+{}", key_label(name, key_id), STANDARD.encode(key))
}

/// A witness's signing key: an Ed25519 key pair and the name it cosigns as.
#[derive(Debug)]
pub struct Cosigner {
    key: NamedKey,
}

impl Cosigner {
    /// Loads a PKCS#8 Ed25519 key (as `keygen` writes) to cosign as `name`.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Cosigner, NoteError> {
        NamedKey::from_pkcs8(name, pkcs8, ALG_COSIGNATURE_V1).map(|key| Cosigner { key })
    }

    /// A fresh key as PKCS#8 bytes.
    pub fn generate_pkcs8() -> Result<Vec<u8>, NoteError> {
        NamedKey::generate_pkcs8()
    }

    /// From a raw 32-byte seed: for reproducible fixtures (the shared
    /// verification vectors), never for a real witness.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Cosigner, NoteError> {
        NamedKey::from_seed(name, seed, ALG_COSIGNATURE_V1).map(|key| Cosigner { key })
    }

    pub fn name(&self) -> &str {
        &self.key.name
    }

    pub fn key_id(&self) -> [u8; 4] {
        self.key.key_id
    }

    /// `<name>+<key id hex>+<base64(0x04 || public key)>`.
    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }

    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            name: self.key.name.clone(),
            key_id: self.key.key_id,
            public_key: self.key.public_key,
        }
    }

    /// The cosignature line (`— <name> <base64>`, no newline) over a
    /// checkpoint's note text `body` at `timestamp` (POSIX seconds).
    pub fn cosign(&self, body: &str, timestamp: u64) -> String {
        let signature = self.key.sign(&signed_message(body, timestamp));
        let payload = [
            &self.key.key_id[..],
            &timestamp.to_be_bytes(),
            &signature[..],
        ]
        .concat();
        format!(
            "{SIGNATURE_PREFIX}{} {}",
            self.key.name,
            STANDARD.encode(payload)
        )
    }
}

/// Why a cosignature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    #[error("malformed signature line: {0}")]
    Malformed(&'static str),
    #[error("cosignature by {0} does not verify")]
    Invalid(String),
    #[error("no cosignature by {0}")]
    Missing(String),
    #[error("{0}")]
    Note(String),
}

/// A trusted witness key: name, key id and Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    key_id: [u8; 4],
    public_key: [u8; 32],
}

impl CosignatureVerifier {
    /// Parses a `<name>+<key id hex>+<base64(0x04 || public key)>` vkey,
    /// checking its key id.
    pub fn parse(vkey: &str) -> Result<CosignatureVerifier, NoteError> {
        let (name, key_id, public_key) = parse_vkey(vkey, ALG_COSIGNATURE_V1, WRONG_TYPE)?;
        Ok(CosignatureVerifier {
            name,
            key_id,
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// `name+keyid`, how errors and metrics name the key.
    pub fn label(&self) -> String {
        key_label(&self.name, self.key_id)
    }

    pub fn verifier_key(&self) -> String {
        cosigner_vkey(&self.name, self.key_id, &self.public_key)
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Whether `other` has the same public key, whatever its name.
    pub fn same_public_key(&self, other: &CosignatureVerifier) -> bool {
        self.public_key == other.public_key
    }

    /// Refuses a set of trusted witness keys in which two share a public
    /// key (an exact duplicate included). A cosignature does not commit to
    /// the witness's name (tlog-cosignature: "the same public key can't be
    /// used across multiple cosigners"), so one witness's line, relabelled
    /// with the other name and key ID, would count twice towards a quorum.
    pub fn check_distinct(keys: &[CosignatureVerifier]) -> Result<(), String> {
        for (i, a) in keys.iter().enumerate() {
            if let Some(b) = keys[..i].iter().find(|b| b.public_key == a.public_key) {
                return Err(if a == b {
                    format!("witness key {} is given twice", a.label())
                } else {
                    format!(
                        "witness keys {} and {} have the same public key: one witness cannot count twice towards a quorum",
                        b.label(),
                        a.label()
                    )
                });
            }
            // Two keys whose lines cannot be told apart (a 4-byte key ID
            // collides with ~2^32 work): a line would be checked against
            // one and might be credited to both (crypto audit, stop 66).
            if let Some(b) = keys[..i]
                .iter()
                .find(|b| b.name == a.name && b.key_id == a.key_id)
            {
                return Err(format!(
                    "witness keys {} and {} share a name and key ID: their cosignatures cannot be told apart",
                    b.label(),
                    a.label()
                ));
            }
        }
        Ok(())
    }

    /// Refuses a witness key that is the log's own public key: its
    /// cosignature would be the log vouching for itself (crypto audit,
    /// stop 66: accepted).
    pub fn check_not_the_log(
        keys: &[CosignatureVerifier],
        log_public_key: &[u8; 32],
    ) -> Result<(), String> {
        match keys.iter().find(|k| &k.public_key == log_public_key) {
            Some(k) => Err(format!(
                "witness key {} is the log's own public key: its cosignature would be the log vouching for itself",
                k.label()
            )),
            None => Ok(()),
        }
    }

    /// Checks one signature line (without its newline) against the note
    /// text `body`: `Ok(None)` if it is another key's line (to be
    /// ignored), `Ok(Some(timestamp))` if it is a valid cosignature by
    /// this key, an error if it is this key's and does not verify.
    pub fn check_line(&self, body: &str, line: &str) -> Result<Option<u64>, CosignatureError> {
        let (name, payload) = parse_signature_line(line).map_err(CosignatureError::Malformed)?;
        if name != self.name || payload[..4] != self.key_id {
            return Ok(None);
        }
        let invalid = || CosignatureError::Invalid(self.label());
        if payload.len() != 4 + 8 + 64 {
            return Err(invalid());
        }
        let mut ts = [0; 8];
        ts.copy_from_slice(&payload[4..12]);
        let timestamp = u64::from_be_bytes(ts);
        if timestamp > i64::MAX as u64 {
            return Err(invalid());
        }
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&signed_message(body, timestamp), &payload[12..])
            .map_err(|_| invalid())?;
        Ok(Some(timestamp))
    }

    /// Verifies a whole signed note carrying this key's cosignature (among
    /// other signatures): returns the cosignature's timestamp. As for note
    /// signatures, lines of other keys are ignored and a line of this key
    /// that does not verify rejects the note.
    pub fn verify_note(&self, note: &str) -> Result<u64, CosignatureError> {
        let note_error = |e: NoteError| CosignatureError::Note(e.to_string());
        check_note(note).map_err(note_error)?;
        let (body, signatures) = split_note(note).map_err(note_error)?;
        if signatures.split_terminator('\n').count() > MAX_SIGNATURES {
            return Err(note_error(NoteError::TooManySignatures));
        }
        let mut found = None;
        for line in signatures.split_terminator('\n') {
            if let Some(ts) = self.check_line(body, line)? {
                found = Some(found.map_or(ts, |t: u64| t.max(ts)));
            }
        }
        found.ok_or_else(|| CosignatureError::Missing(self.label()))
    }
}

/// A note's text (with its final newline) and its signature lines, split
/// at the last blank line as [`Verifier::open_note`] does, so the text
/// cosigned is the text the log's signature covers.
pub fn split_note(note: &str) -> Result<(&str, &str), NoteError> {
    let split = note.rfind("\n\n").ok_or(NoteError::MissingBlankLine)?;
    let (body, signatures) = (&note[..=split], &note[split + 2..]);
    if signatures.is_empty() {
        return Err(NoteError::NoSignatureLines);
    }
    if !signatures.ends_with('\n') {
        let line = signatures.split_terminator('\n').count();
        let reason = "does not end with a newline";
        return Err(NoteError::MalformedSignatureLine { line, reason });
    }
    Ok((body, signatures))
}

/// An `add-checkpoint` request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the witness last cosigned, per the log.
    pub old: u64,
    /// A consistency proof from `old` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub note: String,
}

fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

impl AddCheckpoint {
    pub fn encode(&self) -> String {
        let mut out = format!("old {}\n", self.old);
        for hash in &self.proof {
            out.push_str(&STANDARD.encode(hash));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.note);
        out
    }

    /// Parses a request body strictly.
    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, String> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(format!("the body is over {MAX_REQUEST_BYTES} bytes"));
        }
        let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
        let (head, note) = text
            .split_once("\n\n")
            .ok_or("no empty line before the checkpoint")?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(parse_decimal)
            .ok_or("the first line must be `old <size>` (decimal, no leading zeros)")?;
        let mut proof = Vec::new();
        for line in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(format!(
                    "more than {MAX_PROOF_LINES} consistency proof lines"
                ));
            }
            let hash = STANDARD
                .decode(line)
                .ok()
                .and_then(|h| Hash::try_from(h).ok())
                .ok_or_else(|| format!("proof line {line:?} is not a base64 SHA-256 hash"))?;
            proof.push(hash);
        }
        if note.is_empty() {
            return Err("no checkpoint after the empty line".into());
        }
        Ok(AddCheckpoint {
            old,
            proof,
            note: note.to_owned(),
        })
    }
}

/// What a witness recorded of one log: the latest checkpoint it cosigned,
/// and the time it last cosigned it at (POSIX seconds; a checkpoint asked
/// again is cosigned anew; 0 in state files of earlier versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub size: u64,
    pub root: Hash,
    pub timestamp: u64,
}

/// Every log's recorded checkpoint, by origin.
pub type State = BTreeMap<String, Recorded>;

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    size: u64,
    root: String,
    #[serde(default)]
    timestamp: u64,
}

/// The state as JSON: `{"<origin>": {"size": N, "root": "<base64>",
/// "timestamp": T}}`.
pub fn encode_state(state: &State) -> String {
    let stored: BTreeMap<&str, StoredRecord> = state
        .iter()
        .map(|(origin, r)| {
            let root = STANDARD.encode(r.root);
            let stored = StoredRecord {
                size: r.size,
                root,
                timestamp: r.timestamp,
            };
            (origin.as_str(), stored)
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&stored).unwrap_or_default();
    text.push('\n');
    text
}

pub fn parse_state(text: &str) -> Result<State, String> {
    let stored: BTreeMap<String, StoredRecord> =
        serde_json::from_str(text).map_err(|e| e.to_string())?;
    stored
        .into_iter()
        .map(|(origin, s)| {
            let root = STANDARD
                .decode(&s.root)
                .ok()
                .and_then(|r| Hash::try_from(r).ok())
                .ok_or_else(|| format!("{origin}: root {:?} is not a base64 hash", s.root))?;
            // tlog-cosignature: a timestamp MUST NOT exceed 2^63 - 1, and
            // the next cosignature is dated no earlier than this one.
            if i64::try_from(s.timestamp).is_err() {
                return Err(format!(
                    "{origin}: timestamp {} is above 2^63 - 1",
                    s.timestamp
                ));
            }
            let recorded = Recorded {
                size: s.size,
                root,
                timestamp: s.timestamp,
            };
            Ok((origin, recorded))
        })
        .collect()
}

/// Why a witness refused a checkpoint; each maps to the status
/// tlog-witness prescribes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: the request does not parse, or `old` is above the checkpoint's size.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// 404: the origin is not a log this witness knows.
    #[error("unknown log {0:?}")]
    UnknownLog(String),
    /// 403: no signature verifies with the log's configured key.
    #[error("the checkpoint's signature does not verify: {0}")]
    Unverified(String),
    /// 409: `old` is not the size the witness recorded (answered with it).
    #[error("old size {old} is not the recorded size {recorded}")]
    Conflict { old: u64, recorded: u64 },
    /// 409: same size as recorded, different root (a fork); also answered
    /// with the recorded size.
    #[error("a checkpoint of size {size} with another root than the recorded one: the log forked")]
    Fork { size: u64 },
    /// 422: the consistency proof does not verify.
    #[error("the consistency proof does not verify: {0}")]
    InvalidProof(String),
    /// 500: the new state could not be stored; nothing was cosigned.
    #[error("could not record the checkpoint: {0}")]
    Storage(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::UnknownLog(_) => 404,
            Refusal::Unverified(_) => 403,
            Refusal::Conflict { .. } | Refusal::Fork { .. } => 409,
            Refusal::InvalidProof(_) => 422,
            Refusal::Storage(_) => 500,
        }
    }

    /// The size a 409 answers with.
    pub fn recorded_size(&self) -> Option<u64> {
        match self {
            Refusal::Conflict { recorded, .. } => Some(*recorded),
            Refusal::Fork { size } => Some(*size),
            _ => None,
        }
    }
}

/// A witness: its key, the logs it knows and what it recorded of each.
#[derive(Debug)]
pub struct Witness {
    cosigner: Cosigner,
    logs: BTreeMap<String, Vec<Verifier>>,
    state: Mutex<Guarded>,
}

/// How far behind the latest cosignature's time the clock may read and
/// still be taken for a request that waited for the lock (seconds).
const CLOCK_BEHIND: u64 = 60;

/// What the lock guards: the recorded state, and the timestamp of the
/// latest cosignature (so timestamps do not go back by the moments a
/// request waits for another's, across restarts too: it starts from the
/// latest one the state recorded).
#[derive(Debug)]
struct Guarded {
    state: State,
    last_timestamp: u64,
}

/// Cosignature lines answered for an accepted checkpoint, and the state
/// that was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub origin: String,
    pub size: u64,
    /// The response body: one cosignature line, with its newline.
    pub body: String,
}

impl Witness {
    /// `logs`: origin and the log's verifier keys (more than one while a
    /// log rotates its key: a checkpoint signed by any of them is taken).
    /// Recorded state of logs no longer configured is kept (and kept in the
    /// state file).
    pub fn new(cosigner: Cosigner, logs: BTreeMap<String, Vec<Verifier>>, state: State) -> Witness {
        let last_timestamp = state.values().map(|r| r.timestamp).max().unwrap_or(0);
        Witness {
            cosigner,
            logs,
            state: Mutex::new(Guarded {
                state,
                last_timestamp,
            }),
        }
    }

    pub fn cosigner(&self) -> &Cosigner {
        &self.cosigner
    }

    /// What is recorded for `origin`.
    pub fn recorded(&self, origin: &str) -> Option<Recorded> {
        self.lock().state.get(origin).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Guarded> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one add-checkpoint request body at time `now` (POSIX
    /// seconds). `persist` must store the new state durably; it runs under
    /// the state lock, so checking `old` and recording the new size are one
    /// step (no concurrent request can roll the state back in between), and
    /// nothing is cosigned unless it succeeded. The cosignature is made
    /// under the lock too, timestamped no earlier than the one before it
    /// when `now` is at most [`CLOCK_BEHIND`] earlier (a request that read
    /// the clock, then waited for the lock): a larger size is not cosigned
    /// as of an earlier time than a smaller one (tlog-cosignature's
    /// timestamp is the time as of which the cosigned size is the largest
    /// the witness has seen). A `now` further behind is a clock that ran
    /// ahead then, or was set back: the cosignature is dated `now`, as the
    /// spec's "the time at which the cosignature was generated" has it —
    /// else one excursion into the future dated every later cosignature
    /// there too, which verifiers may reject (time audit, stop 65).
    pub fn add_checkpoint(
        &self,
        body: &[u8],
        now: u64,
        persist: impl FnOnce(&State) -> Result<(), String>,
    ) -> Result<Accepted, Refusal> {
        let request = AddCheckpoint::parse(body).map_err(Refusal::Malformed)?;
        // The origin first (its first line): a log the witness does not
        // know gets 404 whatever the rest of its checkpoint is
        // (tlog-witness: "If the checkpoint origin is unknown, the witness
        // MUST respond with a 404").
        let origin = request.note.split('\n').next().unwrap_or_default();
        let keys = self
            .logs
            .get(origin)
            .ok_or_else(|| Refusal::UnknownLog(origin.to_string()))?;
        let checkpoint = open_with_any(&request.note, keys)?;
        // What is cosigned: the checkpoint's text, as it came.
        let text = split_note(&request.note)
            .map_err(|e| Refusal::Malformed(format!("the checkpoint: {e}")))?
            .0;
        if request.old > checkpoint.size {
            return Err(Refusal::Malformed(format!(
                "old size {} is above the checkpoint's size {}",
                request.old, checkpoint.size
            )));
        }
        let mut guarded = self.lock();
        let recorded = guarded
            .state
            .get(&checkpoint.origin)
            .copied()
            .unwrap_or(Recorded {
                size: 0,
                root: merkle::empty_root(),
                timestamp: 0,
            });
        if request.old != recorded.size {
            return Err(Refusal::Conflict {
                old: request.old,
                recorded: recorded.size,
            });
        }
        if request.old == checkpoint.size && checkpoint.root != recorded.root {
            return Err(Refusal::Fork {
                size: recorded.size,
            });
        }
        merkle::verify_consistency(
            request.old,
            checkpoint.size,
            &recorded.root,
            &checkpoint.root,
            &request.proof,
        )
        .map_err(|e| Refusal::InvalidProof(e.to_string()))?;
        // A cosignature says the checkpoint is the latest the witness has
        // seen as of its time (tlog-cosignature), so the checkpoint
        // recorded already, asked again, is cosigned anew as of now, and
        // that time recorded: a quiet log refreshes its cosignatures this
        // way. Timestamps are whole seconds and never go back, so a replay
        // writes at most once a second per log; within the same second
        // the record is unchanged and nothing is written.
        let timestamp = if guarded.last_timestamp > now.saturating_add(CLOCK_BEHIND) {
            tracing::warn!(
                now,
                latest = guarded.last_timestamp,
                "the clock is behind the latest cosignature's time (the clock ran ahead then, or was set back): cosigning as of now"
            );
            now
        } else {
            now.max(guarded.last_timestamp)
        };
        let record = Recorded {
            size: checkpoint.size,
            root: checkpoint.root,
            timestamp,
        };
        let unchanged = recorded == record;
        let mut next = guarded.state.clone();
        next.insert(checkpoint.origin.clone(), record);
        if !unchanged {
            persist(&next).map_err(Refusal::Storage)?;
        }
        guarded.state = next;
        guarded.last_timestamp = timestamp;
        let mut line = self.cosigner.cosign(text, timestamp);
        drop(guarded);
        line.push('\n');
        Ok(Accepted {
            origin: checkpoint.origin,
            size: checkpoint.size,
            body: line,
        })
    }
}

/// Opens a checkpoint with whichever of its log's keys signed it
/// (tlog-witness: "against the public key(s) it trusts for the checkpoint
/// origin"; a log rotating its key may sign with either, or both). A line
/// from any of them that does not verify refuses it, as one from the only
/// key would; lines from other keys are ignored.
fn open_with_any(note: &str, keys: &[Verifier]) -> Result<Checkpoint, Refusal> {
    let mut opened = None;
    for key in keys {
        match Checkpoint::open(note, key) {
            Ok(checkpoint) => opened = Some(checkpoint),
            Err(NoteError::NoSignature(_)) => {}
            Err(e @ NoteError::InvalidSignature(_)) => {
                return Err(Refusal::Unverified(e.to_string()))
            }
            Err(e) => return Err(Refusal::Malformed(format!("the checkpoint: {e}"))),
        }
    }
    opened.ok_or_else(|| {
        let labels: Vec<String> = keys
            .iter()
            .map(|k| crate::note::key_label(k.name(), k.key_id()))
            .collect();
        Refusal::Unverified(format!("no signature by key {}", labels.join(" or ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, Tree};
    use crate::note::Signer;

    const ORIGIN: &str = "example.com/log";

    fn witness_key() -> Cosigner {
        Cosigner::from_pkcs8("witness.example/w1", &Cosigner::generate_pkcs8().unwrap()).unwrap()
    }

    fn log_key() -> Signer {
        Signer::from_pkcs8(ORIGIN, &Signer::generate_pkcs8().unwrap()).unwrap()
    }

    /// Two witness keys with one name and key ID but different public keys
    /// (a 4-byte collision, ~2^32 work; made here by hand) are refused as a
    /// set: a line would be checked against one and credited to both.
    #[test]
    fn witness_keys_sharing_a_name_and_key_id_are_refused() {
        let a = CosignatureVerifier::parse(&witness_key().verifier_key()).unwrap();
        let b = CosignatureVerifier::parse(&witness_key().verifier_key()).unwrap();
        assert!(CosignatureVerifier::check_distinct(&[a.clone(), b.clone()]).is_ok());
        let twin = CosignatureVerifier {
            key_id: a.key_id,
            ..b
        };
        let err = CosignatureVerifier::check_distinct(&[a, twin]).unwrap_err();
        assert!(err.contains("share a name and key ID"), "{err}");
    }

    fn tree(size: u8) -> Tree {
        let mut tree = Tree::new();
        for i in 0..size {
            tree.push(leaf_hash(&[i]));
        }
        tree
    }

    fn checkpoint(tree: &Tree, signer: &Signer) -> String {
        Checkpoint {
            origin: signer.name().to_owned(),
            size: tree.size(),
            root: tree.root(),
            extensions: vec![],
        }
        .sign(signer)
        .unwrap()
    }

    fn request(old: u64, proof: Vec<Hash>, note: String) -> Vec<u8> {
        AddCheckpoint { old, proof, note }.encode().into_bytes()
    }

    fn witness(log: &Signer) -> Witness {
        let logs = BTreeMap::from([(
            log.name().to_owned(),
            vec![Verifier::parse(&log.verifier_key()).unwrap()],
        )]);
        Witness::new(witness_key(), logs, State::new())
    }

    fn ok(_: &State) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn cosignatures_round_trip_and_cover_the_whole_body() {
        let cosigner = witness_key();
        let verifier = CosignatureVerifier::parse(&cosigner.verifier_key()).unwrap();
        assert_eq!(verifier, cosigner.verifier());
        let log = log_key();
        let note = checkpoint(&tree(5), &log);
        let (body, _) = split_note(&note).unwrap();
        let line = cosigner.cosign(body, 1_679_315_147);
        assert_eq!(verifier.check_line(body, &line), Ok(Some(1_679_315_147)));
        let cosigned = format!("{note}{line}\n");
        assert_eq!(verifier.verify_note(&cosigned), Ok(1_679_315_147));
        // The log's own signature still verifies on the cosigned note.
        let log_verifier = Verifier::parse(&log.verifier_key()).unwrap();
        assert!(Checkpoint::open(&cosigned, &log_verifier).is_ok());

        // Payload: key id, big-endian timestamp, 64-byte signature.
        let payload = STANDARD.decode(line.rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(payload.len(), 76);
        assert_eq!(payload[..4], cosigner.key_id());
        assert_eq!(payload[4..12], 1_679_315_147u64.to_be_bytes());
        UnparsedPublicKey::new(&ED25519, &cosigner.key.public_key)
            .verify(
                format!("cosignature/v1\ntime 1679315147\n{body}").as_bytes(),
                &payload[12..],
            )
            .unwrap();

        // Another body, another time or another key: no.
        let other = body.replace('\n', "\nx\n");
        assert!(verifier.check_line(&other, &line).is_err());
        let mut bad = payload.clone();
        bad[11] ^= 1;
        let retimed = format!("— witness.example/w1 {}", STANDARD.encode(&bad));
        assert!(matches!(
            verifier.check_line(body, &retimed),
            Err(CosignatureError::Invalid(_))
        ));
        let stranger = witness_key().verifier();
        assert_eq!(
            stranger.check_line(body, &line),
            Ok(None),
            "same name, other key id"
        );
        assert!(matches!(
            stranger.verify_note(&cosigned),
            Err(CosignatureError::Missing(_))
        ));
        // A note signature by the log is not a cosignature.
        assert!(matches!(
            verifier.verify_note(&note),
            Err(CosignatureError::Missing(_))
        ));
        // A corrupted line of this key rejects the note.
        let corrupt = format!("{note}{retimed}\n{line}\n");
        assert!(matches!(
            verifier.verify_note(&corrupt),
            Err(CosignatureError::Invalid(_))
        ));
    }

    #[test]
    fn key_ids_and_vkeys() {
        // From transparency-dev/formats note/note_cosigv1_test.go
        // (TestCoSigV1NewVerifier, "native algEd25519CosignatureV1 verifier").
        let remora = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2";
        let v = CosignatureVerifier::parse(remora).unwrap();
        assert_eq!(v.name(), "remora.n621.de");
        assert_eq!(v.key_id(), [0xda, 0x77, 0xad, 0xe7]);
        assert_eq!(v.verifier_key(), remora);
        assert_eq!(cosigner_key_id(v.name(), &v.public_key), v.key_id());

        // The same Ed25519 key as a note key (0x01) has another id, and
        // neither parser takes the other's type.
        let seed = [7u8; 32];
        let cosigner = Cosigner::from_seed("w", &seed).unwrap();
        let note_id = key_id("w", 0x01, &cosigner.key.public_key);
        assert_ne!(note_id, cosigner.key_id());
        let err = CosignatureVerifier::parse(&log_key().verifier_key()).unwrap_err();
        assert!(err.to_string().contains("type byte 0x04"), "{err}");
        assert!(Verifier::parse(&cosigner.verifier_key()).is_err());
        assert!(CosignatureVerifier::parse(&cosigner.verifier_key()).is_ok());
        // A wrong key id is caught.
        let mut mangled = cosigner.verifier_key();
        mangled.replace_range(2..3, if &mangled[2..3] == "0" { "1" } else { "0" });
        assert!(CosignatureVerifier::parse(&mangled).is_err());
        for bad in ["", "w", "w+00000000", "w+zz+BA==", "a b+00000000+BA=="] {
            assert!(CosignatureVerifier::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fixed_seed_cosignature_matches_an_independent_computation() {
        // Computed separately with Python's `cryptography` package (seed
        // [7; 32]) over the tlog-cosignature example checkpoint: Ed25519 is
        // deterministic, so the line must match byte for byte.
        const VKEY: &str =
            "witness.example/w1+aa4a09d1+BOpKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs";
        const LINE: &str = "— witness.example/w1 qkoJ0QAAAABkGFDLWr4Jea05CAgwNVtwky0Jgz6WfX0QJgM//FkB/W9BoT9TX0DkTxG+2cT4p/ViKNhUM/SnUwFcYQzugGFQ15LwDw==";
        let body =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let cosigner = Cosigner::from_seed("witness.example/w1", &[7; 32]).unwrap();
        assert_eq!(cosigner.verifier_key(), VKEY);
        assert_eq!(cosigner.cosign(body, 1_679_315_147), LINE);
        let verifier = CosignatureVerifier::parse(VKEY).unwrap();
        assert_eq!(verifier.check_line(body, LINE), Ok(Some(1_679_315_147)));
    }

    #[test]
    fn published_timestamp_layouts_decode() {
        // The payload layout, from two published cosignatures whose keys
        // are not published: C2SP tlog-cosignature's example (time
        // 1679315147, as in its signed-message example) and
        // transparency-dev/formats TestCosignatureTimestamp (1727964367).
        for (b64, id, ts) in [
            (
                "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==",
                [0x8d, 0x66, 0xcf, 0x3f],
                1_679_315_147u64,
            ),
            (
                "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==",
                [0x64, 0x68, 0x46, 0xb9],
                1_727_964_367,
            ),
        ] {
            let payload = STANDARD.decode(b64).unwrap();
            assert_eq!(payload.len(), 76);
            assert_eq!(payload[..4], id);
            assert_eq!(u64::from_be_bytes(payload[4..12].try_into().unwrap()), ts);
        }
    }

    #[test]
    fn add_checkpoint_bodies_round_trip_and_are_strict() {
        let log = log_key();
        let note = checkpoint(&tree(7), &log);
        let proof = tree(7).consistency_proof(3, 7).unwrap();
        let req = AddCheckpoint {
            old: 3,
            proof: proof.clone(),
            note: note.clone(),
        };
        let text = req.encode();
        assert!(text.starts_with("old 3\n"));
        assert!(text.contains(&format!("\n\n{note}")));
        assert_eq!(AddCheckpoint::parse(text.as_bytes()), Ok(req));
        let empty = AddCheckpoint {
            old: 0,
            proof: vec![],
            note: note.clone(),
        };
        assert!(empty.encode().starts_with("old 0\n\n"));
        assert_eq!(AddCheckpoint::parse(empty.encode().as_bytes()), Ok(empty));

        let h = STANDARD.encode([1u8; 32]);
        for bad in [
            format!("old 01\n\n{note}"),
            format!("old -1\n\n{note}"),
            format!("old\n\n{note}"),
            format!("new 1\n\n{note}"),
            format!("old 1\nnot base64\n\n{note}"),
            format!("old 1\nAAAA\n\n{note}"),
            format!("old 1\n{}\n{note}", format!("{h}\n").repeat(64)),
            "old 1\n\n".to_string(),
            format!("old 1\n{h}\n"),
        ] {
            assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(AddCheckpoint::parse(b"old 0\n\n\xff").is_err());
        let ok63 = format!("old 1\n{}\n{note}", format!("{h}\n").repeat(63));
        assert_eq!(
            AddCheckpoint::parse(ok63.as_bytes()).unwrap().proof.len(),
            63
        );
    }

    #[test]
    fn the_witness_accepts_growth_and_refuses_the_rest() {
        let log = log_key();
        let w = witness(&log);
        let wv = w.cosigner().verifier();
        let t3 = tree(3);
        let t8 = tree(8);

        // First checkpoint: old 0, no proof.
        let a = w
            .add_checkpoint(&request(0, vec![], checkpoint(&t3, &log)), 100, ok)
            .unwrap();
        assert_eq!((a.origin.as_str(), a.size), (ORIGIN, 3));
        let cosigned = format!("{}{}", checkpoint(&t3, &log), a.body);
        assert_eq!(wv.verify_note(&cosigned), Ok(100));
        assert_eq!(
            w.recorded(ORIGIN),
            Some(Recorded {
                size: 3,
                root: t3.root(),
                timestamp: 100,
            })
        );

        // Wrong old: 409 with the recorded size.
        let err = w
            .add_checkpoint(&request(0, vec![], checkpoint(&t8, &log)), 101, ok)
            .unwrap_err();
        assert_eq!(
            err,
            Refusal::Conflict {
                old: 0,
                recorded: 3
            }
        );
        assert_eq!((err.status(), err.recorded_size()), (409, Some(3)));

        // Growth with a valid consistency proof.
        let proof = t8.consistency_proof(3, 8).unwrap();
        let b = w
            .add_checkpoint(&request(3, proof.clone(), checkpoint(&t8, &log)), 102, ok)
            .unwrap();
        assert_eq!(b.size, 8);
        assert_eq!(w.recorded(ORIGIN).unwrap().size, 8);

        // The same checkpoint again: cosigned again.
        assert!(w
            .add_checkpoint(&request(8, vec![], checkpoint(&t8, &log)), 103, ok)
            .is_ok());

        // Rollback: a smaller checkpoint. With the recorded old size it is
        // malformed (old above the size, 400); with its own or any other
        // old size, a conflict (409).
        let back = checkpoint(&t3, &log);
        let err = w
            .add_checkpoint(&request(8, vec![], back.clone()), 104, ok)
            .unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        for old in [0, 3] {
            let err = w
                .add_checkpoint(&request(old, vec![], back.clone()), 104, ok)
                .unwrap_err();
            assert_eq!(err, Refusal::Conflict { old, recorded: 8 });
        }

        // A fork: same size, another root.
        let mut forked = tree(7);
        forked.push(leaf_hash(b"other"));
        let err = w
            .add_checkpoint(&request(8, vec![], checkpoint(&forked, &log)), 105, ok)
            .unwrap_err();
        assert_eq!(err, Refusal::Fork { size: 8 });
        assert_eq!(err.status(), 409);

        // A fork further on: the proof does not verify (422).
        let mut grown_fork = forked.clone();
        for i in 0..4u8 {
            grown_fork.push(leaf_hash(&[i, i]));
        }
        let proof = grown_fork.consistency_proof(8, 12).unwrap();
        let err = w
            .add_checkpoint(&request(8, proof, checkpoint(&grown_fork, &log)), 106, ok)
            .unwrap_err();
        assert!(matches!(err, Refusal::InvalidProof(_)), "{err}");
        assert_eq!(err.status(), 422);
        // A proof for the right tree, tampered with.
        let t12 = tree(12);
        let mut proof = t12.consistency_proof(8, 12).unwrap();
        proof[0][0] ^= 1;
        let err = w
            .add_checkpoint(&request(8, proof, checkpoint(&t12, &log)), 107, ok)
            .unwrap_err();
        assert_eq!(err.status(), 422, "{err}");
        assert_eq!(w.recorded(ORIGIN).unwrap().size, 8, "nothing recorded");

        // Storage failure: nothing recorded, nothing cosigned.
        let proof = t12.consistency_proof(8, 12).unwrap();
        let err = w
            .add_checkpoint(
                &request(8, proof.clone(), checkpoint(&t12, &log)),
                108,
                |_| Err("disk full".into()),
            )
            .unwrap_err();
        assert_eq!(err.status(), 500);
        assert_eq!(w.recorded(ORIGIN).unwrap().size, 8);
        let mut persisted = None;
        w.add_checkpoint(&request(8, proof, checkpoint(&t12, &log)), 109, |s| {
            persisted = Some(s.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(persisted.unwrap()[ORIGIN].size, 12);

        // A request whose clock was read earlier (it waited for the lock)
        // cosigns a larger size: not as of an earlier time than the
        // smaller size's cosignature (109).
        let t15 = tree(15);
        let proof = t15.consistency_proof(12, 15).unwrap();
        let late = w
            .add_checkpoint(&request(12, proof, checkpoint(&t15, &log)), 100, ok)
            .unwrap();
        let cosigned = format!("{}{}", checkpoint(&t15, &log), late.body);
        assert_eq!(wv.verify_note(&cosigned), Ok(109));

        // The same checkpoint asked again (old = its own size): cosigned
        // anew as of now, and the new time recorded.
        let mut persisted = None;
        let again = w
            .add_checkpoint(&request(15, vec![], checkpoint(&t15, &log)), 500, |s| {
                persisted = Some(s.clone());
                Ok(())
            })
            .unwrap();
        let cosigned = format!("{}{}", checkpoint(&t15, &log), again.body);
        assert_eq!(wv.verify_note(&cosigned), Ok(500));

        let state = persisted.unwrap();
        assert_eq!((state[ORIGIN].size, state[ORIGIN].timestamp), (15, 500));
        // Again within the same second, or with the clock gone back by
        // less than CLOCK_BEHIND (a request that waited for the lock): as
        // of 500 still, and nothing written.
        for now in [500, 500 - CLOCK_BEHIND + 1] {
            let again = w
                .add_checkpoint(&request(15, vec![], checkpoint(&t15, &log)), now, |_| {
                    Err("no write expected".into())
                })
                .unwrap();
            let cosigned = format!("{}{}", checkpoint(&t15, &log), again.body);
            assert_eq!(wv.verify_note(&cosigned), Ok(500));
        }

        // Nor after a restart from the state it persisted, with a clock
        // that went back as far (the 500 is in the state, not only in
        // memory).
        let mut persisted = None;
        let t16 = tree(16);
        let proof = t16.consistency_proof(15, 16).unwrap();
        w.add_checkpoint(&request(15, proof, checkpoint(&t16, &log)), 450, |s| {
            persisted = Some(s.clone());
            Ok(())
        })
        .unwrap();
        let state = persisted.unwrap();
        assert_eq!(state[ORIGIN].timestamp, 500);
        let restarted = Witness::new(witness_key(), w.logs.clone(), state);
        let t17 = tree(17);
        let proof = t17.consistency_proof(16, 17).unwrap();
        let after = restarted
            .add_checkpoint(&request(16, proof, checkpoint(&t17, &log)), 460, ok)
            .unwrap();
        let cosigned = format!("{}{}", checkpoint(&t17, &log), after.body);
        let rv = restarted.cosigner().verifier();
        assert_eq!(rv.verify_note(&cosigned), Ok(500));

        // A clock that ran ahead (to 10^10), then came back: the
        // cosignatures after it are dated now, not 10^10 for good, in
        // memory and across a restart (time audit, stop 65).
        let far = 10_000_000_000;
        let ahead = restarted
            .add_checkpoint(&request(17, vec![], checkpoint(&t17, &log)), far, ok)
            .unwrap();
        let cosigned = format!("{}{}", checkpoint(&t17, &log), ahead.body);
        assert_eq!(rv.verify_note(&cosigned), Ok(far));
        let t18 = tree(18);
        let proof = t18.consistency_proof(17, 18).unwrap();
        let mut persisted = None;
        let back = restarted
            .add_checkpoint(&request(17, proof, checkpoint(&t18, &log)), 600, |s| {
                persisted = Some(s.clone());
                Ok(())
            })
            .unwrap();
        let cosigned = format!("{}{}", checkpoint(&t18, &log), back.body);
        assert_eq!(rv.verify_note(&cosigned), Ok(600));
        let mut state = persisted.unwrap();
        state.get_mut(ORIGIN).unwrap().timestamp = far;
        let third = Witness::new(witness_key(), w.logs.clone(), state);
        let again = third
            .add_checkpoint(&request(18, vec![], checkpoint(&t18, &log)), 700, ok)
            .unwrap();
        let cosigned = format!("{}{}", checkpoint(&t18, &log), again.body);
        assert_eq!(third.cosigner().verifier().verify_note(&cosigned), Ok(700));
    }

    #[test]
    fn the_witness_refuses_unknown_logs_and_bad_signatures() {
        let log = log_key();
        let w = witness(&log);
        let t = tree(4);

        // Unknown origin: 404.
        let stranger =
            Signer::from_pkcs8("other.example/log", &Signer::generate_pkcs8().unwrap()).unwrap();
        let err = w
            .add_checkpoint(&request(0, vec![], checkpoint(&t, &stranger)), 1, ok)
            .unwrap_err();
        assert_eq!(err, Refusal::UnknownLog("other.example/log".into()));
        assert_eq!(err.status(), 404);
        // Also when the rest of its checkpoint is malformed, or unsigned.
        for note in [
            "other.example/log\n4\nAAAA\n\n— other.example/log AAAA\n",
            "other.example/log\n4\n",
        ] {
            let err = w
                .add_checkpoint(&request(0, vec![], note.to_string()), 1, ok)
                .unwrap_err();
            assert_eq!(err.status(), 404, "{note:?}: {err}");
        }

        // The right origin signed by another key: 403.
        let impostor = log_key();
        let err = w
            .add_checkpoint(&request(0, vec![], checkpoint(&t, &impostor)), 1, ok)
            .unwrap_err();
        assert_eq!(err.status(), 403, "{err}");
        // A tampered checkpoint: 403.
        let note = checkpoint(&t, &log).replacen("\n4\n", "\n5\n", 1);
        let err = w
            .add_checkpoint(&request(0, vec![], note), 1, ok)
            .unwrap_err();
        assert_eq!(err.status(), 403, "{err}");
        // Garbage: 400; old above the size: 400.
        let err = w.add_checkpoint(b"hello", 1, ok).unwrap_err();
        assert_eq!(err.status(), 400);
        let err = w
            .add_checkpoint(&request(5, vec![], checkpoint(&t, &log)), 1, ok)
            .unwrap_err();
        assert_eq!(err.status(), 400);
        assert_eq!(w.recorded(ORIGIN), None);
        // A non-empty proof from 0: 422.
        let err = w
            .add_checkpoint(&request(0, vec![[0; 32]], checkpoint(&t, &log)), 1, ok)
            .unwrap_err();
        assert_eq!(err.status(), 422);
    }

    #[test]
    fn a_log_rotating_its_key_is_taken_with_either() {
        let (old_key, new_key) = (log_key(), log_key());
        let keys = [&old_key, &new_key].map(|k| Verifier::parse(&k.verifier_key()).unwrap());
        let w = Witness::new(
            witness_key(),
            BTreeMap::from([(ORIGIN.to_owned(), keys.to_vec())]),
            State::new(),
        );
        let (t4, t6) = (tree(4), tree(6));
        // Signed by the old key, then by both, then by the new key alone.
        let accepted = w
            .add_checkpoint(&request(0, vec![], checkpoint(&t4, &old_key)), 1, ok)
            .unwrap();
        assert_eq!(accepted.size, 4);
        let both = format!(
            "{}{}",
            checkpoint(&t4, &old_key),
            checkpoint(&t4, &new_key).split_once("\n\n").unwrap().1
        );
        assert_eq!(
            w.add_checkpoint(&request(4, vec![], both), 2, ok)
                .unwrap()
                .size,
            4
        );
        let proof = t6.consistency_proof(4, 6).unwrap();
        let accepted = w
            .add_checkpoint(&request(4, proof, checkpoint(&t6, &new_key)), 3, ok)
            .unwrap();
        assert_eq!(accepted.size, 6);
        // A bad line from either key refuses it, though the other's holds.
        let mut lines: Vec<String> = checkpoint(&t6, &new_key)
            .lines()
            .map(String::from)
            .collect();
        let old_line = checkpoint(&t6, &old_key)
            .lines()
            .last()
            .unwrap()
            .to_string();
        // The old key's line over another text: it names the old key and
        // does not verify.
        let t5 = tree(5);
        let stale = checkpoint(&t5, &old_key)
            .lines()
            .last()
            .unwrap()
            .to_string();
        assert_ne!(stale, old_line);
        lines.push(stale);
        let note = lines.join("\n") + "\n";
        let err = w
            .add_checkpoint(&request(6, vec![], note), 4, ok)
            .unwrap_err();
        assert_eq!(err.status(), 403, "{err}");
        // Neither key: 403 naming both.
        let forged = Signer::from_seed(ORIGIN, &[3; 32]).unwrap();
        let err = w
            .add_checkpoint(&request(6, vec![], checkpoint(&t6, &forged)), 5, ok)
            .unwrap_err();
        assert_eq!(err.status(), 403);
        for k in [&old_key, &new_key] {
            let label = crate::note::key_label(ORIGIN, k.key_id());
            assert!(err.to_string().contains(&label), "{err}");
        }
    }

    #[test]
    fn state_round_trips_through_json() {
        let state = State::from([
            (
                "a.example/log".to_string(),
                Recorded {
                    size: 5,
                    root: [3; 32],
                    timestamp: 1_700_000_000,
                },
            ),
            (
                "b.example/log".to_string(),
                Recorded {
                    size: 0,
                    root: merkle::empty_root(),
                    timestamp: 0,
                },
            ),
        ]);
        let text = encode_state(&state);
        assert_eq!(parse_state(&text), Ok(state));
        assert!(parse_state("{\"a\": {\"size\": 1, \"root\": \"AAAA\"}}").is_err());
        // A state file of an earlier version, without timestamps.
        let root = STANDARD.encode([3; 32]);
        let old = format!("{{\"a.example/log\": {{\"size\": 5, \"root\": \"{root}\"}}}}");
        let a = parse_state(&old).unwrap()["a.example/log"];
        assert_eq!((a.size, a.timestamp), (5, 0));
        assert!(parse_state("[]").is_err());
        // tlog-cosignature caps timestamps at 2^63 - 1.
        let zero = STANDARD.encode([0u8; 32]);
        let at = |t: u64| {
            format!(
                "{{\"a.example/log\": {{\"size\": 1, \"root\": \"{zero}\", \"timestamp\": {t}}}}}"
            )
        };
        assert!(parse_state(&at(i64::MAX as u64)).is_ok());
        let err = parse_state(&at(1 << 63)).unwrap_err();
        assert!(err.contains("above 2^63 - 1"), "{err}");
    }
}
