//! C2SP tlog-proof (<https://c2sp.org/tlog-proof>): an offline-verifiable
//! proof that an entry is in the log — its index, the RFC 6962 inclusion
//! path and the signed checkpoint it leads to, as one text file
//! (`.tlog-proof`):
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! [extra <base64>]
//! index <decimal>
//! <base64 hash>            (zero or more: leaf's sibling up to the root's child)
//!
//! <checkpoint, verbatim>
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, Verifier};

const HEADER: &str = "c2sp.org/tlog-proof@v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    /// Opaque, unauthenticated extra data.
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub path: Vec<Hash>,
    /// The signed checkpoint note, verbatim (ends with a newline).
    pub checkpoint: String,
}

impl TlogProof {
    pub fn encode(&self) -> String {
        let mut out = format!("{HEADER}\n");
        if let Some(extra) = &self.extra {
            out.push_str(&format!("extra {}\n", STANDARD.encode(extra)));
        }
        out.push_str(&format!("index {}\n", self.index));
        for hash in &self.path {
            out.push_str(&STANDARD.encode(hash));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Parses a proof exactly as the spec writes it.
    pub fn parse(text: &str) -> Result<TlogProof, String> {
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or("no empty line before the checkpoint")?;
        let mut lines = head.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(format!("the first line must be {HEADER}"));
        }
        let mut line = lines.next().ok_or("no index line")?;
        let mut extra = None;
        if let Some(b64) = line.strip_prefix("extra ") {
            extra = Some(STANDARD.decode(b64).map_err(|e| format!("extra: {e}"))?);
            line = lines.next().ok_or("no index line")?;
        }
        let digits = line.strip_prefix("index ").ok_or("no index line")?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return Err(format!(
                "`index {digits}` is not a decimal without leading zeros"
            ));
        }
        let index = digits.parse().map_err(|e| format!("index: {e}"))?;
        let path = lines
            .map(|l| {
                let bytes = STANDARD.decode(l).map_err(|e| format!("proof hash: {e}"))?;
                Hash::try_from(bytes.as_slice())
                    .map_err(|_| format!("a proof hash of {} bytes, not 32", bytes.len()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if checkpoint.is_empty() {
            return Err("no checkpoint after the empty line".into());
        }
        Ok(TlogProof {
            extra,
            index,
            path,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// Checks the checkpoint's signature with `verifier`, that it is the
    /// checkpoint of the log the key is for (its origin is the key's name)
    /// and that `entry` is at `index` of its tree; returns the checkpoint.
    pub fn verify(&self, entry: &[u8], verifier: &Verifier) -> Result<Checkpoint, String> {
        let checkpoint = crate::verdict::open_checkpoint(&self.checkpoint, verifier)?;
        merkle::verify_inclusion(
            &merkle::leaf_hash(entry),
            self.index,
            checkpoint.size,
            &self.path,
            &checkpoint.root,
        )
        .map_err(|e| format!("the entry is not at index {} of the log: {e}", self.index))?;
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::Tree;
    use crate::note::Signer;

    /// A log `example.com/log` of 11 entries: its signer and verifier, the
    /// entries, the tree and its signed checkpoint.
    fn log_of_eleven() -> (Signer, Verifier, Vec<Vec<u8>>, Tree, String) {
        let signer =
            Signer::from_pkcs8("example.com/log", &Signer::generate_pkcs8().unwrap()).unwrap();
        let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
        let mut tree = Tree::new();
        let entries: Vec<Vec<u8>> = (0..11u8).map(|i| vec![i; 3]).collect();
        for e in &entries {
            tree.push(merkle::leaf_hash(e));
        }
        let note = Checkpoint {
            origin: "example.com/log".into(),
            size: 11,
            root: tree.root(),
            extensions: Vec::new(),
        }
        .sign(&signer)
        .unwrap();
        (signer, verifier, entries, tree, note)
    }

    #[test]
    fn a_proof_round_trips_and_verifies() {
        let (signer, verifier, entries, tree, note) = log_of_eleven();
        let proof = TlogProof {
            extra: Some(b"residency".to_vec()),
            index: 6,
            path: tree.inclusion_proof(6, 11).unwrap(),
            checkpoint: note.clone(),
        };
        let text = proof.encode();
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra cmVzaWRlbmN5\nindex 6\n"));
        assert!(text.ends_with(&format!("\n\n{note}")));
        let parsed = TlogProof::parse(&text).unwrap();
        assert_eq!(parsed, proof);
        assert_eq!(parsed.verify(&entries[6], &verifier).unwrap().size, 11);
        assert!(
            parsed.verify(&entries[5], &verifier).is_err(),
            "another entry"
        );
        let other = TlogProof {
            index: 5,
            ..parsed.clone()
        };
        assert!(
            other.verify(&entries[6], &verifier).is_err(),
            "another index"
        );
        let tampered = text.replace("index 6", "index 7");
        assert!(TlogProof::parse(&tampered)
            .unwrap()
            .verify(&entries[6], &verifier)
            .is_err());

        // No extra line, no path (a tree of one).
        let one = TlogProof {
            extra: None,
            index: 0,
            path: Vec::new(),
            checkpoint: note,
        };
        assert_eq!(TlogProof::parse(&one.encode()).unwrap(), one);

        // The same key signing another log's tree: not this log's proof.
        let elsewhere = Checkpoint {
            origin: "example.com/other-log".into(),
            size: 11,
            root: tree.root(),
            extensions: Vec::new(),
        }
        .sign(&signer)
        .unwrap();
        let err = TlogProof {
            checkpoint: elsewhere,
            ..parsed
        }
        .verify(&entries[6], &verifier)
        .unwrap_err();
        assert!(err.contains("example.com/other-log"), "{err}");
    }

    /// A valid proof changed in its form only — what an independent
    /// encoder might get wrong — is refused, in parsing or in verifying.
    #[test]
    fn a_proof_changed_in_form_is_refused() {
        let (_, verifier, entries, tree, note) = log_of_eleven();
        let path = tree.inclusion_proof(6, 11).unwrap();
        let proof = |index: u64, path: Vec<Hash>| {
            TlogProof {
                extra: None,
                index,
                path,
                checkpoint: note.clone(),
            }
            .encode()
        };
        let check = |text: &str| TlogProof::parse(text)?.verify(&entries[6], &verifier);
        let good = proof(6, path.clone());
        assert!(check(&good).is_ok());
        let first = STANDARD.encode(path[0]);
        assert!(first.ends_with('='));
        // The last character before the padding with a low bit set: the
        // same bytes, but not the canonical encoding.
        let mut noncanonical = first.clone().into_bytes();
        let at = first.len() - 2;
        noncanonical[at] = match noncanonical[at] {
            b'A'..=b'Y' | b'a'..=b'y' | b'0'..=b'8' => noncanonical[at] + 1,
            _ => b'B',
        };
        let noncanonical = String::from_utf8(noncanonical).unwrap();
        let mut longer = path.clone();
        longer.push([7; 32]);
        for (what, text) in [
            ("data after the checkpoint", format!("{good}trailing\n")),
            ("an empty line after the checkpoint", format!("{good}\n")),
            ("CRLF line ends", good.replace('\n', "\r\n")),
            (
                "a hash in non-canonical base64",
                good.replacen(&first, &noncanonical, 1),
            ),
            (
                "a hash without its padding",
                good.replacen(&first, first.trim_end_matches('='), 1),
            ),
            (
                "a hash in URL-safe base64",
                good.replace('+', "-").replace('/', "_"),
            ),
            ("the index at the tree's size", proof(11, path.clone())),
            ("one hash too many", proof(6, longer)),
            ("one hash too few", proof(6, path[1..].to_vec())),
            (
                "two extra lines",
                good.replacen("index", "extra AA==\nextra AA==\nindex", 1),
            ),
            (
                "an extra line after the index",
                good.replacen("index 6\n", "index 6\nextra AA==\n", 1),
            ),
        ] {
            // (A proof whose base64 has no `+` or `/` has no URL-safe form.)
            if text == good {
                continue;
            }
            assert!(check(&text).is_err(), "{what} was accepted: {text:?}");
        }
    }

    #[test]
    fn malformed_proofs_are_refused() {
        for bad in [
            "",
            "c2sp.org/tlog-proof@v2\nindex 0\n\ncp\n",
            "c2sp.org/tlog-proof@v1\nindex 01\n\ncp\n",
            "c2sp.org/tlog-proof@v1\nindex -1\n\ncp\n",
            "c2sp.org/tlog-proof@v1\nindex 1\nAAAA\n\ncp\n",
            "c2sp.org/tlog-proof@v1\nindex 1\n",
            "c2sp.org/tlog-proof@v1\nextra !!\nindex 1\n\ncp\n",
            "c2sp.org/tlog-proof@v1\nindex 1\n\n",
        ] {
            assert!(TlogProof::parse(bad).is_err(), "{bad:?}");
        }
    }
}
