//! The `Residency-Receipt` response header.
//!
//! An RFC 8941 dictionary, so any structured-field parser can read it:
//!
//! ```text
//! Residency-Receipt: v=1, log="ingest.example.com/residency-log", index=42,
//!                    record=:eyJ2IjoxLC…:, sig=:k2Jx…:
//! ```
//!
//! `record` is the exact leaf bytes (standard base64), `index` the leaf's
//! position in the log. With `receipts = "signed"`, `sig` is an Ed25519
//! signature by the log's key over [`signed_message`]; with `"log"` it is
//! absent and the receipt is proven by an inclusion proof instead.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::merkle::{self, Hash};

/// The header's name.
pub const HEADER: &str = "residency-receipt";

/// A parsed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub log: String,
    pub index: u64,
    pub record: Vec<u8>,
    pub signature: Option<[u8; 64]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("not a receipt: {0}")]
    Malformed(String),
    #[error("receipt version {0} is not supported (this verifier reads v=1)")]
    Version(String),
}

/// What the log's key signs for a receipt: a domain-separated statement
/// binding the log, the leaf index and the leaf hash (which commits to the
/// record bytes).
pub fn signed_message(log: &str, index: u64, leaf: &Hash) -> Vec<u8> {
    format!(
        "residency-receipt/v1\n{log}\n{index}\n{}\n",
        residency_core::hex::encode(leaf)
    )
    .into_bytes()
}

impl Receipt {
    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&self.record)
    }

    /// The header value.
    pub fn encode(&self) -> String {
        let mut out =
            String::with_capacity(48 + self.log.len() + self.record.len().div_ceil(3) * 4 + 96);
        out.push_str("v=1, log=\"");
        out.push_str(&self.log);
        out.push_str("\", index=");
        out.push_str(itoa::Buffer::new().format(self.index));
        out.push_str(", record=:");
        STANDARD.encode_string(&self.record, &mut out);
        out.push(':');
        if let Some(sig) = &self.signature {
            out.push_str(", sig=:");
            STANDARD.encode_string(sig, &mut out);
            out.push(':');
        }
        out
    }

    /// Parses a header value. Also accepts a whole header line
    /// (`Residency-Receipt: …`), as people paste it from `curl -i`. Only
    /// ASCII whitespace is trimmed, as the page's verifier trims it
    /// (crypto audit, stop 66: `trim` and JavaScript's differ on U+0085
    /// and U+FEFF, and one receipt got two verdicts).
    pub fn parse(text: &str) -> Result<Receipt, ReceiptError> {
        let mut text = text.trim_ascii();
        if let Some((name, value)) = text.split_once(':') {
            if name.trim_ascii().eq_ignore_ascii_case(HEADER) {
                text = value.trim_ascii();
            }
        }
        let bad = |m: &str| ReceiptError::Malformed(m.to_string());
        let (mut version, mut log, mut index, mut record, mut signature) =
            (None, None, None, None, None);
        for member in text.split(',') {
            let (key, value) = member
                .trim_ascii()
                .split_once('=')
                .ok_or_else(|| bad("expected key=value members"))?;
            match key {
                "v" => version = Some(value.to_string()),
                "log" => {
                    let name = value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or_else(|| bad("log must be a quoted string"))?;
                    log = Some(name.to_string());
                }
                "index" => {
                    // Digits only (`parse` would take a leading `+`; the
                    // page's verifier does not).
                    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                    index = Some(
                        digits
                            .then(|| value.parse::<u64>().ok())
                            .flatten()
                            .ok_or_else(|| bad("index is not a non-negative integer"))?,
                    )
                }
                "record" => {
                    record = Some(bytes(value).ok_or_else(|| bad("record is not :base64:"))?)
                }
                "sig" => {
                    let sig = bytes(value).ok_or_else(|| bad("sig is not :base64:"))?;
                    signature = Some(
                        <[u8; 64]>::try_from(sig.as_slice())
                            .map_err(|_| bad("sig is not a 64-byte Ed25519 signature"))?,
                    );
                }
                _ => {} // unknown members are ignored, as RFC 8941 allows
            }
        }
        match version.as_deref() {
            Some("1") => {}
            Some(v) => return Err(ReceiptError::Version(v.to_string())),
            None => return Err(bad("missing v")),
        }
        Ok(Receipt {
            log: log.ok_or_else(|| bad("missing log"))?,
            index: index.ok_or_else(|| bad("missing index"))?,
            record: record.ok_or_else(|| bad("missing record"))?,
            signature,
        })
    }
}

/// An RFC 8941 byte sequence: `:base64:`.
fn bytes(value: &str) -> Option<Vec<u8>> {
    let inner = value.strip_prefix(':')?.strip_suffix(':')?;
    STANDARD.decode(inner).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(signature: Option<[u8; 64]>) -> Receipt {
        Receipt {
            log: "ingest.example.com/log".into(),
            index: 42,
            record: br#"{"v":1,"request_id":"ab"}"#.to_vec(),
            signature,
        }
    }

    #[test]
    fn round_trips() {
        for r in [sample(None), sample(Some([7; 64]))] {
            let text = r.encode();
            assert!(text.starts_with("v=1, log=\"ingest.example.com/log\", index=42, record=:"));
            assert_eq!(Receipt::parse(&text).unwrap(), r);
            assert_eq!(
                Receipt::parse(&format!("Residency-Receipt: {text}\r\n")).unwrap(),
                r
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(Receipt::parse("").is_err());
        assert!(Receipt::parse("v=2, log=\"a\", index=1, record=:AA==:").is_err());
        assert!(Receipt::parse("v=1, log=\"a\", index=-1, record=:AA==:").is_err());
        assert!(Receipt::parse("v=1, log=\"a\", index=1, record=:AA==:, sig=:AA==:").is_err());
        assert!(Receipt::parse("v=1, log=a, index=1, record=:AA==:").is_err());
    }

    #[test]
    fn message_binds_log_index_and_leaf() {
        let leaf = [1u8; 32];
        let m = signed_message("l", 3, &leaf);
        assert_ne!(m, signed_message("l", 4, &leaf));
        assert_ne!(m, signed_message("k", 3, &leaf));
        assert_ne!(m, signed_message("l", 3, &[2u8; 32]));
    }
}
