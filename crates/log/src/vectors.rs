//! The shared verification vectors: one valid receipt and the ways a
//! verdict must go wrong (a flipped byte, another key, another index, a
//! truncated proof, a rewritten history, a checkpoint that does not cover
//! the receipt yet, with a history that holds or one that does not, …),
//! each with the [`Step`] that must fail and whether that leaves it NOT
//! CHECKED rather than INVALID. `residency-proxy verify` (through
//! [`crate::verdict`]) and the log's web page must both give each vector
//! its expected verdict.
//!
//! The vectors are generated here from fixed seeds (Ed25519 signatures are
//! deterministic), so the committed file `crates/log/vectors/verify.json`
//! can be checked byte for byte against this code; regenerate it with
//! `REGENERATE_VECTORS=1 cargo test -p residency-log vectors`.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::merkle::{self, Hash, Tree};
use crate::note::{Checkpoint, Signer};
use crate::receipt::{self, Receipt};
use crate::record::{BodyDigest, Client, Database, Outcome, Record};
use crate::verdict::{FileDigest, Inputs, Step};
use crate::witness::Cosigner;

/// The vectors' log name.
pub const ORIGIN: &str = "vectors.example/residency-log";

/// The file: what the vectors are and how they are used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vectors {
    pub about: String,
    pub vectors: Vec<Vector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    pub name: String,
    pub description: String,
    pub inputs: Inputs,
    pub expect: Expect,
}

/// The verdict: valid with its sentence, or the first step that fails —
/// INVALID, or NOT CHECKED when `not_checked` (the check could not be made
/// yet, nothing was found wrong: [`Step::not_checked`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub valid: bool,
    pub step: Option<Step>,
    /// Not valid, and not INVALID either: NOT CHECKED (`verify` exits 3,
    /// the page says "Could not check").
    pub not_checked: bool,
    pub sentence: Option<String>,
}

/// The body of upload `i`.
fn body(i: u64) -> Vec<u8> {
    format!("cpu=0.{i}3\nmem=0.71\n").repeat(8).into_bytes()
}

fn sha256_hex(data: &[u8]) -> String {
    residency_core::hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn record(i: u64, outcome: Outcome, history: &str) -> Vec<u8> {
    let (dc, j, country) = match i % 3 {
        0 => ("zurich", "ch", "CH"),
        1 => ("frankfurt", "eu", "DE"),
        _ => ("geneva", "ch", "CH"),
    };
    let stored = outcome == Outcome::Stored;
    let data = body(i);
    let request_id = format!("{history}{:031x}", i + 1);
    let time = format!("2026-12-02T10:{:02}:07.123Z", 41 + i);
    let digest = sha256_hex(&data);
    Record {
        v: crate::record::VERSION,
        request_id: Cow::Borrowed(&request_id),
        time: Cow::Borrowed(&time),
        outcome,
        reason: (!stored).then_some(Cow::Borrowed("no_healthy_datacenter")),
        client: Client {
            source: Some(Cow::Borrowed("peer")),
            address: Some(Cow::Borrowed("192.0.2.0/24")),
        },
        country: Some(Cow::Borrowed(country)),
        jurisdiction: Some(Cow::Borrowed(j)),
        datacenter: stored.then_some(Cow::Borrowed(dc)),
        // Leaf 6 was replayed: an earlier attempt sent it to geneva.
        also_sent_to: if i == 6 {
            vec![Cow::Borrowed("geneva")]
        } else {
            Vec::new()
        },
        upstream_status: stored.then_some(201),
        body: Some(BodyDigest {
            sha256: Cow::Borrowed(&digest),
            bytes: data.len() as u64,
        }),
        policy_sha256: Cow::Borrowed(
            "5f2b0c3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
        ),
        geoip: Database {
            build_epoch: 1_750_000_000,
            sha256: Cow::Borrowed(
                "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
            ),
        },
        tenant: None,
        summary: None,
    }
    .to_bytes()
}

/// A log of `size` records; `history` is the request ids' first hex digit
/// (another digit is another history), and leaf 5 is a refusal.
fn log(size: u64, history: &str) -> (Vec<Vec<u8>>, Tree) {
    let mut tree = Tree::new();
    let mut records = Vec::new();
    for i in 0..size {
        let outcome = if i == 5 {
            Outcome::Refused
        } else {
            Outcome::Stored
        };
        let r = record(i, outcome, history);
        tree.push(merkle::leaf_hash(&r));
        records.push(r);
    }
    (records, tree)
}

fn hexes(path: &[Hash]) -> Vec<String> {
    path.iter()
        .map(|h| residency_core::hex::encode(h))
        .collect()
}

fn checkpoint(signer: &Signer, tree: &Tree, size: u64) -> String {
    checkpoint_with_root(
        signer,
        size,
        tree.root_at(size).expect("size within the tree"),
    )
}

/// A checkpoint of `size` with `root`, whatever the tree.
fn checkpoint_with_root(signer: &Signer, size: u64, root: Hash) -> String {
    Checkpoint {
        origin: signer.name().to_string(),
        size,
        root,
        extensions: vec![],
    }
    .sign(signer)
    .expect("a valid checkpoint")
}

fn receipt(signer: Option<&Signer>, index: u64, record: &[u8]) -> String {
    let leaf = merkle::leaf_hash(record);
    Receipt {
        log: ORIGIN.to_string(),
        index,
        record: record.to_vec(),
        signature: signer.map(|s| s.sign(&receipt::signed_message(ORIGIN, index, &leaf))),
    }
    .encode()
}

/// Adds a cosignature line to a signed note.
fn cosigned(note: &str, witness: &Cosigner, timestamp: u64) -> String {
    let (body, _) = crate::witness::split_note(note).expect("a note");
    format!("{note}{}\n", witness.cosign(body, timestamp))
}

/// A cosignature line made to look like `other`'s: its name and key ID, the
/// same timestamp and signature. It verifies under `other` exactly when
/// `other` has the same public key (a cosignature does not sign the name).
pub(crate) fn relabel(line: &str, other: &Cosigner) -> String {
    let payload = line.rsplit(' ').next().expect("a signature line");
    let mut raw = STANDARD.decode(payload).expect("base64");
    raw[..4].copy_from_slice(&other.key_id());
    format!("— {} {}", other.name(), STANDARD.encode(raw))
}

/// Builds every vector.
pub fn generate() -> Vectors {
    let log_key = Signer::from_seed(ORIGIN, &[7; 32]).expect("a key");
    let other_key = Signer::from_seed(ORIGIN, &[8; 32]).expect("a key");
    let other_log = Signer::from_seed("other.example/residency-log", &[9; 32]).expect("a key");
    let witness = Cosigner::from_seed("witness.example/w1", &[10; 32]).expect("a key");
    let key = log_key.verifier_key();

    let (records, tree) = log(7, "a");
    let (_, rewritten) = log(7, "b");
    let index = 4;
    let leaf = &records[index as usize];
    let signed = receipt(Some(&log_key), index, leaf);
    let unsigned = receipt(None, index, leaf);
    let current = checkpoint(&log_key, &tree, 7);
    let inclusion = hexes(&tree.inclusion_proof(index, 7).expect("a proof"));
    let previous = checkpoint(&log_key, &tree, 3);
    let consistency = hexes(&tree.consistency_proof(3, 7).expect("a proof"));
    let stored = Inputs {
        key: key.clone(),
        receipt: Some(signed.clone()),
        checkpoint: Some(current.clone()),
        inclusion: Some(inclusion.clone()),
        previous: Some(previous.clone()),
        consistency: Some(consistency.clone()),
        ..Inputs::default()
    };
    let sentence = crate::verdict::sentence(&Record::from_bytes(leaf).expect("a record"));
    let id_of = |r: &[u8]| {
        Record::from_bytes(r)
            .expect("a record")
            .request_id
            .into_owned()
    };
    let file = FileDigest {
        sha256: sha256_hex(&body(index)),
        bytes: body(index).len() as u64,
    };

    let mut flipped = leaf.clone();
    let at = flipped
        .windows(9)
        .position(|w| w == b"frankfurt")
        .expect("leaf 4 went to frankfurt");
    flipped[at] ^= 0x01; // "frankfurt" → "grankfurt": still a record, not ours
    let flipped_signed = {
        // The signature over the original leaf, on the altered record.
        let original = Receipt::parse(&signed).expect("a receipt");
        Receipt {
            record: flipped.clone(),
            ..original
        }
        .encode()
    };
    let wrong_index = Receipt::parse(&unsigned)
        .map(|r| Receipt { index: 3, ..r })
        .expect("a receipt")
        .encode();
    let wrong_index_signed = Receipt::parse(&signed)
        .map(|r| Receipt { index: 3, ..r })
        .expect("a receipt")
        .encode();
    // A validly signed receipt of leaf 4 with `from` replaced by `to` in
    // its record.
    let altered =
        |from: &[u8], to: &[u8]| receipt(Some(&log_key), index, &replace_once(leaf, from, to));
    let (refusal_index, refusal) = (5, &records[5]);
    let refused = receipt(Some(&log_key), refusal_index, refusal);
    let altered_checkpoint = current.replacen("\n7\n", "\n8\n", 1);
    let short_tree = checkpoint(&log_key, &tree, 4);
    let shrunk = checkpoint(&log_key, &tree, 5);
    // The stored receipt, not covered by the 4-record checkpoint, with a
    // checkpoint seen before (`previous`) and the consistency proof from 3.
    let uncovered_since = |previous: String| Inputs {
        checkpoint: Some(short_tree.clone()),
        inclusion: Some(vec![]),
        previous: Some(previous),
        consistency: Some(hexes(&tree.consistency_proof(3, 4).expect("a proof"))),
        ..stored.clone()
    };

    let v = |name: &str, description: &str, inputs: Inputs, step: Option<Step>| Vector {
        name: name.to_string(),
        description: description.to_string(),
        inputs,
        expect: Expect {
            valid: step.is_none(),
            step,
            not_checked: false,
            sentence: step.is_none().then(|| sentence.clone()),
        },
    };
    // Nothing found wrong, and not valid: the check cannot be made yet.
    let not_checked = |name: &str, description: &str, inputs: Inputs| Vector {
        name: name.to_string(),
        description: description.to_string(),
        inputs,
        expect: Expect {
            valid: false,
            step: Some(Step::Coverage),
            not_checked: true,
            sentence: None,
        },
    };
    let vectors = vec![
        v(
            "valid",
            "A signed receipt, included in the signed checkpoint, which extends the checkpoint seen before.",
            stored.clone(),
            None,
        ),
        v(
            "valid_by_request_id",
            "The record fetched by request id (an unsigned receipt): proven by inclusion alone.",
            Inputs {
                receipt: Some(unsigned.clone()),
                request_id: Some(id_of(leaf)),
                previous: None,
                consistency: None,
                ..stored.clone()
            },
            None,
        ),
        Vector {
            name: "valid_replayed".to_string(),
            description: "A signed receipt of an upload replayed after a failed attempt: its record names the data centre the earlier attempt sent the body to, and so does the verdict.".to_string(),
            inputs: Inputs {
                receipt: Some(receipt(Some(&log_key), 6, &records[6])),
                inclusion: Some(hexes(&tree.inclusion_proof(6, 7).expect("a proof"))),
                ..stored.clone()
            },
            expect: Expect {
                valid: true,
                step: None,
                not_checked: false,
                sentence: Some(crate::verdict::sentence(
                    &Record::from_bytes(&records[6]).expect("a record"),
                )),
            },
        },
        v(
            "receipt_index_with_a_sign",
            "A receipt whose index is written `+4`: not the decimal digits a receipt's index is.",
            Inputs {
                receipt: Some(unsigned.replacen("index=4,", "index=+4,", 1)),
                previous: None,
                consistency: None,
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "request_id_answered_with_another_record",
            "Looked up by one request id, the log answered with another request's record (genuine, included): not this upload's.",
            Inputs {
                receipt: Some(unsigned.clone()),
                request_id: Some(id_of(&records[3])),
                previous: None,
                consistency: None,
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "valid_with_file",
            "The customer's copy of the upload has the record's SHA-256 and length.",
            Inputs {
                file: Some(file.clone()),
                ..stored.clone()
            },
            None,
        ),
        v(
            "valid_cosigned",
            "The checkpoint carries the required witness's cosignature.",
            Inputs {
                checkpoint: Some(cosigned(&current, &witness, 1_796_208_000)),
                witnesses: vec![witness.verifier_key()],
                ..stored.clone()
            },
            None,
        ),
        v(
            "flipped_record_byte",
            "One byte of the record flipped after signing: the receipt's signature fails.",
            Inputs {
                receipt: Some(flipped_signed),
                ..stored.clone()
            },
            Some(Step::ReceiptSignature),
        ),
        v(
            "flipped_record_byte_unsigned",
            "One byte of an unsigned record flipped: it is not the leaf in the tree.",
            Inputs {
                receipt: Some(receipt(None, index, &flipped)),
                ..stored.clone()
            },
            Some(Step::Inclusion),
        ),
        v(
            "wrong_key",
            "Another key under the same log name: the receipt's signature fails.",
            Inputs {
                key: other_key.verifier_key(),
                ..stored.clone()
            },
            Some(Step::ReceiptSignature),
        ),
        v(
            "wrong_key_unsigned",
            "Another key under the same log name, unsigned receipt: the checkpoint's signature fails.",
            Inputs {
                key: other_key.verifier_key(),
                receipt: Some(unsigned.clone()),
                ..stored.clone()
            },
            Some(Step::Checkpoint),
        ),
        v(
            "wrong_log",
            "The key of another log: the receipt names a log the key is not for.",
            Inputs {
                key: other_log.verifier_key(),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "wrong_index",
            "An unsigned receipt claiming index 3 for leaf 4, with index 3's proof: the inclusion fails.",
            Inputs {
                receipt: Some(wrong_index),
                inclusion: Some(hexes(&tree.inclusion_proof(3, 7).expect("a proof"))),
                ..stored.clone()
            },
            Some(Step::Inclusion),
        ),
        v(
            "wrong_index_signed",
            "A signed receipt whose index was changed: the signature covers the index.",
            Inputs {
                receipt: Some(wrong_index_signed),
                ..stored.clone()
            },
            Some(Step::ReceiptSignature),
        ),
        v(
            "truncated_proof",
            "The inclusion proof without its last hash.",
            Inputs {
                inclusion: Some(inclusion[..inclusion.len() - 1].to_vec()),
                ..stored.clone()
            },
            Some(Step::Inclusion),
        ),
        v(
            "altered_checkpoint",
            "The checkpoint's tree size changed after signing.",
            Inputs {
                checkpoint: Some(altered_checkpoint),
                ..stored.clone()
            },
            Some(Step::Checkpoint),
        ),
        v(
            "checkpoint_of_another_key",
            "A checkpoint signed by another key under the log's name.",
            Inputs {
                checkpoint: Some(checkpoint(&other_key, &tree, 7)),
                ..stored.clone()
            },
            Some(Step::Checkpoint),
        ),
        v(
            "cosignature_malformed_by_known_key",
            "A valid cosignature, and a second line under the witness's name and key id that is too short to be one: a known key's malformed line fails.",
            Inputs {
                checkpoint: Some({
                    let good = cosigned(&current, &witness, 1_796_208_000);
                    let junk = [&witness.key_id()[..], &[0u8; 64]].concat();
                    format!("{good}— witness.example/w1 {}\n", STANDARD.encode(junk))
                }),
                witnesses: vec![witness.verifier_key()],
                ..stored.clone()
            },
            Some(Step::Witnesses),
        ),
        v(
            "witness_key_under_two_names",
            "The same witness public key given under two names, with its line copied under the second name: one witness cannot make a quorum of two.",
            Inputs {
                checkpoint: Some({
                    let twin = Cosigner::from_seed("witness.example/w2", &[10; 32]).expect("a key");
                    let good = cosigned(&current, &witness, 1_796_208_000);
                    let line = good.lines().last().expect("a line");
                    format!("{good}{}\n", relabel(line, &twin))
                }),
                witnesses: vec![
                    witness.verifier_key(),
                    Cosigner::from_seed("witness.example/w2", &[10; 32])
                        .expect("a key")
                        .verifier_key(),
                ],
                quorum: Some(2),
                ..stored.clone()
            },
            Some(Step::Witnesses),
        ),
        v(
            "unknown_signature_in_loose_base64",
            "A signature line from an unknown key whose base64 has unused bits set in its last character (Go's decoder takes it): ignored, as signed-note has verifiers ignore unknown keys' signatures.",
            Inputs {
                checkpoint: Some(format!("{current}— other.example/k {}B=\n", "A".repeat(90))),
                ..stored.clone()
            },
            None,
        ),
        v(
            "quorum_zero",
            "A quorum of 0: no set of witness keys meets it.",
            Inputs {
                witnesses: vec![witness.verifier_key()],
                quorum: Some(0),
                ..stored.clone()
            },
            Some(Step::Witnesses),
        ),
        v(
            "key_name_with_next_line",
            "A signature line whose key name holds U+0085 (NEXT LINE, Unicode whitespace): the note is malformed.",
            Inputs {
                checkpoint: Some(format!("{current}— a\u{85}b AAAAAAA=\n")),
                ..stored.clone()
            },
            Some(Step::Checkpoint),
        ),
        v(
            "missing_cosignature",
            "A witness is required and the checkpoint carries no cosignature from it.",
            Inputs {
                witnesses: vec![witness.verifier_key()],
                ..stored.clone()
            },
            Some(Step::Witnesses),
        ),
        not_checked(
            "not_yet_covered",
            "The checkpoint (4 records) does not cover index 4 yet: NOT CHECKED, not INVALID (an honest log that could not sign a checkpoint for a while has such receipts; nothing was found wrong).",
            Inputs {
                checkpoint: Some(short_tree.clone()),
                inclusion: Some(vec![]),
                previous: None,
                consistency: None,
                ..stored.clone()
            },
        ),
        not_checked(
            "not_yet_covered_by_request_id",
            "The record fetched by request id (the log serves it as soon as it is durable) that the checkpoint (4 records) does not cover yet: NOT CHECKED.",
            Inputs {
                receipt: Some(unsigned.clone()),
                request_id: Some(id_of(leaf)),
                checkpoint: Some(short_tree.clone()),
                inclusion: None,
                previous: None,
                consistency: None,
                ..stored.clone()
            },
        ),
        // A signed receipt's record is the log's word without the tree: a
        // file that is not the one it describes is INVALID whether or not a
        // checkpoint covers it (verification, stop 70: NOT CHECKED while
        // the log kept its checkpoint stale, INVALID when it could not be
        // read).
        v(
            "not_yet_covered_signed_receipt_of_another_file",
            "With another file than the upload, a signed receipt whose index 4 the checkpoint does not cover yet: INVALID at the file (the receipt's signed record describes another file), not NOT CHECKED.",
            Inputs {
                checkpoint: Some(short_tree.clone()),
                inclusion: Some(vec![]),
                previous: None,
                consistency: None,
                file: Some(FileDigest {
                    sha256: sha256_hex(b"another file"),
                    bytes: 12,
                }),
                ..stored.clone()
            },
            Some(Step::File),
        ),
        not_checked(
            "not_yet_covered_stops_the_checks",
            "Coverage still stops the checks of a record looked up by request id (the log's word only through inclusion): with another file than the upload, a checkpoint that does not cover index 4 is NOT CHECKED; the file is judged once one covers it.",
            Inputs {
                receipt: Some(unsigned.clone()),
                request_id: Some(id_of(leaf)),
                checkpoint: Some(short_tree.clone()),
                inclusion: None,
                previous: None,
                consistency: None,
                file: Some(FileDigest {
                    sha256: sha256_hex(b"another file"),
                    bytes: 12,
                }),
                ..stored.clone()
            },
        ),
        // Coverage does not stop the history: what needs no inclusion is
        // still judged, and a log proven wrong by it is INVALID, not NOT
        // CHECKED (which must mean nothing was found wrong).
        not_checked(
            "not_yet_covered_history_proven",
            "The checkpoint (4 records) does not cover index 4 yet, and the log proves it grew from the checkpoint seen before (3 records): nothing was found wrong, NOT CHECKED.",
            uncovered_since(previous.clone()),
        ),
        v(
            "not_yet_covered_previous_of_another_key",
            "The checkpoint (4 records) does not cover index 4 yet, and the checkpoint seen before is not signed by the key: INVALID at the previous checkpoint, not NOT CHECKED.",
            uncovered_since(checkpoint(&other_key, &tree, 3)),
            Some(Step::PreviousCheckpoint),
        ),
        v(
            "not_yet_covered_rewritten_history",
            "The checkpoint (4 records) does not cover index 4 yet, and the checkpoint seen before (3 records) is of another history: INVALID at consistency, not NOT CHECKED.",
            uncovered_since(checkpoint(&log_key, &rewritten, 3)),
            Some(Step::Consistency),
        ),
        v(
            "not_yet_covered_forked_history",
            "The checkpoint (4 records) does not cover index 4 yet, and the checkpoint seen before has the same size and another root: the log forked, INVALID at consistency.",
            Inputs {
                checkpoint: Some(short_tree.clone()),
                inclusion: Some(vec![]),
                previous: Some(checkpoint(&log_key, &rewritten, 4)),
                consistency: Some(vec![]),
                ..stored.clone()
            },
            Some(Step::Consistency),
        ),
        v(
            "rolled_back_below_the_receipt",
            "The checkpoint seen before (7 records) covered index 4; the current one (4 records) does not: the log shrank below a receipt it had covered, INVALID at consistency, not NOT CHECKED.",
            Inputs {
                checkpoint: Some(short_tree.clone()),
                inclusion: Some(vec![]),
                previous: Some(current.clone()),
                consistency: Some(vec![]),
                ..stored.clone()
            },
            Some(Step::Consistency),
        ),
        v(
            "refused_upload",
            "A signed receipt for a refusal: the record says it was not stored.",
            Inputs {
                receipt: Some(refused),
                inclusion: Some(hexes(
                    &tree.inclusion_proof(refusal_index, 7).expect("a proof"),
                )),
                ..stored.clone()
            },
            Some(Step::Outcome),
        ),
        v(
            "previous_of_another_key",
            "The checkpoint seen before is not signed by the key.",
            Inputs {
                previous: Some(checkpoint(&other_key, &tree, 3)),
                ..stored.clone()
            },
            Some(Step::PreviousCheckpoint),
        ),
        v(
            "rewritten_history",
            "The checkpoint seen before (3 records) is of another history than the current one (7).",
            Inputs {
                previous: Some(checkpoint(&log_key, &rewritten, 3)),
                ..stored.clone()
            },
            Some(Step::Consistency),
        ),
        v(
            "forked_history",
            "The checkpoint seen before has the same size and another root.",
            Inputs {
                previous: Some(checkpoint(&log_key, &rewritten, 7)),
                consistency: Some(vec![]),
                ..stored.clone()
            },
            Some(Step::Consistency),
        ),
        v(
            "previous_empty_with_another_root",
            "The checkpoint seen before has 0 records but not the empty tree's root.",
            Inputs {
                previous: Some(checkpoint_with_root(&log_key, 0, tree.root_at(1).expect("a root"))),
                consistency: Some(vec![]),
                ..stored.clone()
            },
            Some(Step::Consistency),
        ),
        v(
            "shrunk_log",
            "The checkpoint seen before (7 records) is larger than the current one (5).",
            Inputs {
                checkpoint: Some(shrunk),
                inclusion: Some(hexes(&tree.inclusion_proof(index, 5).expect("a proof"))),
                previous: Some(current.clone()),
                consistency: Some(vec![]),
                ..stored.clone()
            },
            Some(Step::Consistency),
        ),
        v(
            "file_mismatch",
            "The customer's file is not the upload the record describes (one byte more).",
            Inputs {
                file: Some(FileDigest {
                    sha256: sha256_hex(&[&body(index)[..], b"\n"].concat()),
                    bytes: file.bytes + 1,
                }),
                ..stored.clone()
            },
            Some(Step::File),
        ),
        v(
            "malformed_receipt",
            "A receipt cut short in copy and paste.",
            Inputs {
                receipt: Some(signed[..signed.len() / 2].to_string()),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        // Records a JSON reader could read but the record's own reader
        // (serde) refuses, each in a validly signed receipt: the page
        // must read records as `verify` does, never show one `verify`
        // calls invalid.
        v(
            "record_with_a_repeated_field",
            "A record naming its data centre twice (a reader keeping the last would say frankfurt, one keeping the first zurich).",
            Inputs {
                receipt: Some(altered(
                    b"\"datacenter\":\"frankfurt\"",
                    b"\"datacenter\":\"zurich\",\"datacenter\":\"frankfurt\"",
                )),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "record_version_as_a_fraction",
            "A record whose version is written 1.0, not the integer 1.",
            Inputs {
                receipt: Some(altered(b"{\"v\":1,", b"{\"v\":1.0,")),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "record_epoch_as_negative_zero",
            "A record whose GeoIP build epoch is written -0, which JSON readers such as serde's take as a float.",
            Inputs {
                receipt: Some(altered(b"\"build_epoch\":1750000000", b"\"build_epoch\":-0")),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "record_status_as_text",
            "A record whose data centre's status is text.",
            Inputs {
                receipt: Some(altered(
                    b"\"upstream_status\":201",
                    b"\"upstream_status\":\"201\"",
                )),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "record_earlier_data_centre_as_text",
            "A record naming the data centre an earlier attempt sent the body to as text, not a list.",
            Inputs {
                receipt: Some(altered(
                    b"\"upstream_status\":",
                    b"\"also_sent_to\":\"geneva\",\"upstream_status\":",
                )),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "record_earlier_data_centres_as_null",
            "A record whose list of data centres earlier attempts sent the body to is null: absent is how a record says there were none.",
            Inputs {
                receipt: Some(altered(
                    b"\"upstream_status\":",
                    b"\"also_sent_to\":null,\"upstream_status\":",
                )),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "record_earlier_data_centres_as_numbers",
            "A record whose list of data centres earlier attempts sent the body to holds a number.",
            Inputs {
                receipt: Some(altered(
                    b"\"upstream_status\":",
                    b"\"also_sent_to\":[1],\"upstream_status\":",
                )),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "record_earlier_data_centres_repeated",
            "A record giving its list of data centres earlier attempts sent the body to twice (a reader keeping the first would name none).",
            Inputs {
                receipt: Some(altered(
                    b"\"upstream_status\":",
                    b"\"also_sent_to\":[],\"also_sent_to\":[\"zurich\"],\"upstream_status\":",
                )),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "record_earlier_data_centres_empty",
            "A validly signed record with an empty list of earlier data centres (no writer of this log writes one) reads as a record; it is not in the log, so its inclusion fails.",
            Inputs {
                receipt: Some(altered(
                    b"\"upstream_status\":",
                    b"\"also_sent_to\":[],\"upstream_status\":",
                )),
                ..stored.clone()
            },
            Some(Step::Inclusion),
        ),
        v(
            "record_tenant_without_a_name",
            "A record with a tenant that has no name.",
            Inputs {
                receipt: Some(altered(
                    b"\"geoip\":",
                    b"\"tenant\":{\"source\":\"sni\",\"origin_jurisdiction\":null},\"geoip\":",
                )),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "malformed_key",
            "A key mangled in copy and paste (its key id no longer matches).",
            Inputs {
                key: mangle_key_id(&key),
                ..stored.clone()
            },
            Some(Step::Key),
        ),
        v(
            "receipt_members_after_unicode_spaces",
            "The signed receipt with members after U+0085 and U+FEFF, which neither verifier trims (only ASCII whitespace is): they are unknown members, ignored, and the receipt's own index holds.",
            Inputs {
                receipt: Some(format!("{signed},\u{85}index=5,\u{feff}index=6")),
                ..stored.clone()
            },
            None,
        ),
        v(
            "record_outcome_as_a_map",
            "A record whose outcome is {\"stored\": null}, a form serde's enums would take as stored: not a decision record, for both verifiers.",
            Inputs {
                receipt: Some(altered(b"\"outcome\":\"stored\"", b"\"outcome\":{\"stored\":null}")),
                ..stored.clone()
            },
            Some(Step::Receipt),
        ),
        v(
            "witness_key_is_the_log_key",
            "A witness key that is the log's own public key (as a cosigner key): its cosignature would be the log vouching for itself.",
            Inputs {
                witnesses: vec![Cosigner::from_seed("witness.example/self", &[7; 32])
                    .expect("a key")
                    .verifier_key()],
                ..stored.clone()
            },
            Some(Step::Witnesses),
        ),
        v(
            "small_order_key",
            "A key that is the identity point, its key id right: with it the signature R = identity, S = 0 verifies any message, so this receipt's forged signature would; the key is refused.",
            Inputs {
                key: identity_key(),
                receipt: Some(forged_by_identity(index, leaf)),
                ..stored.clone()
            },
            Some(Step::Key),
        ),
    ];
    Vectors {
        about: "Shared verification vectors of residency-proxy: `verify` and the log's web page must give each its expected verdict: valid, or the first step that fails and whether that is INVALID or, with not_checked, NOT CHECKED (nothing was found wrong; the check cannot be made yet). Generated by crates/log/src/vectors.rs.".into(),
        vectors,
    }
}

/// `bytes` with the first `from` replaced by `to` (which must be there).
fn replace_once(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{} not in the record", String::from_utf8_lossy(from)));
    [&bytes[..at], to, &bytes[at + from.len()..]].concat()
}

/// The log's name with the identity point (`y` = 1) as its public key, the
/// key id computed from them: a small-order key.
fn identity_key() -> String {
    let mut point = [0u8; 32];
    point[0] = 1;
    format!(
        "{ORIGIN}+{}+{}",
        residency_core::hex::encode(&crate::note::key_id(ORIGIN, 0x01, &point)),
        STANDARD.encode([&[0x01][..], &point[..]].concat())
    )
}

/// A receipt for `record` at `index` whose signature is R = identity,
/// S = 0: valid for any message under [`identity_key`].
fn forged_by_identity(index: u64, record: &[u8]) -> String {
    let mut signature = [0u8; 64];
    signature[0] = 1;
    Receipt {
        log: ORIGIN.to_string(),
        index,
        record: record.to_vec(),
        signature: Some(signature),
    }
    .encode()
}

/// The key with the first digit of its key id changed.
fn mangle_key_id(vkey: &str) -> String {
    let at = vkey.find('+').expect("a vkey") + 1;
    let digit = if vkey.as_bytes()[at] == b'0' {
        "1"
    } else {
        "0"
    };
    format!("{}{digit}{}", &vkey[..at], &vkey[at + 1..])
}

/// The vectors as the committed file holds them.
pub fn to_json(vectors: &Vectors) -> String {
    let mut text = serde_json::to_string_pretty(vectors).expect("vectors serialise");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::check;

    const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/verify.json");

    #[test]
    fn vectors_file_is_what_this_code_generates() {
        let text = to_json(&generate());
        if std::env::var_os("REGENERATE_VECTORS").is_some() {
            std::fs::write(FILE, &text).unwrap();
        }
        let committed = std::fs::read_to_string(FILE).unwrap_or_default();
        assert!(
            committed == text,
            "{FILE} is stale: regenerate it with REGENERATE_VECTORS=1 cargo test -p residency-log vectors"
        );
    }

    #[test]
    fn vectors_get_their_verdicts() {
        let vectors: Vectors =
            serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
        assert!(vectors.vectors.len() >= 20);
        for v in &vectors.vectors {
            let got = check(&v.inputs);
            match (&got, &v.expect) {
                (Ok(ok), e) if e.valid => {
                    assert_eq!(ok.sentence, e.sentence, "{}", v.name);
                    assert!(!e.not_checked, "{}: valid and not checked", v.name);
                }
                (Err(f), e) if !e.valid => {
                    assert_eq!(Some(f.step), e.step, "{}: {}", v.name, f.message);
                    assert_eq!(
                        f.not_checked(),
                        e.not_checked,
                        "{}: NOT CHECKED (true) or INVALID (false): {}",
                        v.name,
                        f.message
                    );
                    // NOT CHECKED says what to do: retry, and when the
                    // log is at fault.
                    if f.step == Step::Coverage {
                        assert!(
                            f.message.contains("retry after the log's next checkpoint")
                                && f.message.contains("the log has not included the record"),
                            "{}",
                            f.message
                        );
                    }
                    // A log that shrank below a receipt it had covered is
                    // caught by consistency, though coverage failed first.
                    if v.name == "rolled_back_below_the_receipt" {
                        assert!(f.message.starts_with("the log shrank: "), "{}", f.message);
                    }
                    // A refusal is named with its reason.
                    if v.name == "refused_upload" {
                        assert!(
                            f.message
                                .starts_with("the record says the upload was refused ("),
                            "{}",
                            f.message
                        );
                    }
                }
                _ => panic!(
                    "{}: expected {:?}, got {:?}",
                    v.name,
                    v.expect,
                    got.map(|o| o.summary)
                ),
            }
        }
    }
}
