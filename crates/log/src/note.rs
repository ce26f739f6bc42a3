//! C2SP `signed-note` (Ed25519 only) and `tlog-checkpoint`.
//!
//! A signed note is UTF-8 text ending in a newline, a blank line, then one
//! or more lines `— <key name> base64(key id || signature)`. The format is
//! what Go's `golang.org/x/mod/sumdb/note` and the transparency-dev tools
//! read and write, so checkpoints signed here can be checked by any of them
//! (and witnessed) without custom code.
//!
//! Verification follows the spec: lines from other keys (a different name
//! or key id) are ignored, every line from our key must verify, and at least
//! one must be present.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::merkle::Hash;
use residency_core::hex;

/// Largest note accepted (and produced), so a hostile peer cannot make us
/// scan or buffer unbounded input.
pub const MAX_NOTE_BYTES: usize = 1 << 20;
/// More signature lines than this make a note malformed (the spec requires
/// accepting at least 16; Go's implementation also stops at 100).
pub const MAX_SIGNATURES: usize = 100;

const ALG_ED25519: u8 = 0x01;
pub(crate) const SIGNATURE_PREFIX: &str = "— ";

/// Why a key could not be loaded or a note could not be signed or opened.
#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    #[error("invalid key name {0:?}: it must be non-empty and contain no whitespace, control character or '+'")]
    InvalidKeyName(String),
    #[error("could not generate an Ed25519 key pair")]
    KeyGeneration,
    #[error("invalid Ed25519 PKCS#8 private key: {0}")]
    InvalidPrivateKey(String),
    #[error("malformed verifier key {key:?}: {reason}")]
    MalformedVerifierKey { key: String, reason: &'static str },
    #[error(
        "verifier key {key:?} claims key id {claimed}, but its name and public key give {computed}"
    )]
    KeyIdMismatch {
        key: String,
        claimed: String,
        computed: String,
    },
    #[error("note is {0} bytes, more than the limit of {MAX_NOTE_BYTES}")]
    TooLong(usize),
    #[error("note is not valid UTF-8")]
    NotUtf8,
    #[error("note contains control character U+{0:04X}; only newline is allowed")]
    ControlCharacter(u32),
    #[error("note text must end with a newline")]
    MissingFinalNewline,
    #[error("note has no blank line between its text and its signatures")]
    MissingBlankLine,
    #[error("note has no signature lines after the blank line")]
    NoSignatureLines,
    #[error("note has more than {MAX_SIGNATURES} signature lines")]
    TooManySignatures,
    #[error("signature line {line}: {reason}")]
    MalformedSignatureLine { line: usize, reason: &'static str },
    #[error("signature by key {0} does not verify: the note was altered or signed by another key")]
    InvalidSignature(String),
    #[error("no signature by key {0}")]
    NoSignature(String),
    #[error("checkpoint line {line}: {reason}")]
    MalformedCheckpoint { line: usize, reason: String },
}

/// `<name>+<key id hex>`: how errors name a key.
pub(crate) fn key_label(name: &str, key_id: [u8; 4]) -> String {
    format!("{name}+{}", hex::encode(&key_id))
}

/// Key names must be non-empty with no Unicode whitespace and no '+'
/// (the separator in key strings), and no control character: a signed
/// note "MUST NOT contain any ASCII control characters" but newline
/// (C2SP signed-note), and the name is written into every note signed
/// or cosigned under it (DEL and C1 controls refused too).
pub(crate) fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control() || c == '+') {
        return Err(NoteError::InvalidKeyName(name.to_owned()));
    }
    Ok(())
}

/// SHA-256(name || "\n" || 0x01 || public key)[..4], the spec's Ed25519 key id.
#[cfg(test)]
fn ed25519_key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    key_id(name, ALG_ED25519, public_key)
}

/// SHA-256(name || "\n" || type byte || public key)[..4]: the key id of
/// signed notes (type 0x01) and of cosignatures (type 0x04).
pub(crate) fn key_id(name: &str, alg: u8, public_key: &[u8; 32]) -> [u8; 4] {
    let input = [name.as_bytes(), b"\n", &[alg], public_key].concat();
    let mut id = [0; 4];
    id.copy_from_slice(&digest(&SHA256, &input).as_ref()[..4]);
    id
}

/// Checks what both signing and opening require of a note as a whole.
pub(crate) fn check_note(note: &str) -> Result<(), NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLong(note.len()));
    }
    match note.chars().find(|&c| c < ' ' && c != '\n') {
        Some(c) => Err(NoteError::ControlCharacter(c.into())),
        None => Ok(()),
    }
}

/// Turns received bytes into note text: enforces the size cap before UTF-8
/// validation, so oversized input is rejected without scanning it.
pub fn decode_note(bytes: &[u8]) -> Result<&str, NoteError> {
    if bytes.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLong(bytes.len()));
    }
    std::str::from_utf8(bytes).map_err(|_| NoteError::NotUtf8)
}

/// An Ed25519 key pair with the name it signs under and its key id for a
/// key type (0x01 for notes, 0x04 for cosignatures): what [`Signer`] and
/// the witness's `Cosigner` share.
#[derive(Debug)]
pub(crate) struct NamedKey {
    pub(crate) name: String,
    pub(crate) key_id: [u8; 4],
    pub(crate) public_key: [u8; 32],
    key_pair: Ed25519KeyPair,
    alg: u8,
}

impl NamedKey {
    /// A fresh key as PKCS#8 v2 bytes, ring's storage format.
    pub(crate) fn generate_pkcs8() -> Result<Vec<u8>, NoteError> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| NoteError::KeyGeneration)
    }

    /// An Ed25519 private key in PKCS#8: DER as `keygen` writes it (v2,
    /// with the public key, which must match), or as OpenSSL's `openssl
    /// genpkey -algorithm ed25519` writes it, PEM (`BEGIN PRIVATE KEY`) of
    /// a v1 document without the public key (`-outform DER` too).
    pub(crate) fn from_pkcs8(name: &str, pkcs8: &[u8], alg: u8) -> Result<NamedKey, NoteError> {
        use rustls_pki_types::pem::PemObject as _;
        let pem = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pkcs8).ok();
        let der = pem.as_ref().map_or(pkcs8, |k| k.secret_pkcs8_der());
        let key_pair = Ed25519KeyPair::from_pkcs8(der)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der))
            .map_err(|e| {
                NoteError::InvalidPrivateKey(format!(
                    "{e} (give PKCS#8, DER as `keygen` writes it or PEM as `openssl genpkey -algorithm ed25519` does)"
                ))
            })?;
        Self::new(name, key_pair, alg)
    }

    pub(crate) fn from_seed(name: &str, seed: &[u8; 32], alg: u8) -> Result<NamedKey, NoteError> {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| NoteError::InvalidPrivateKey(e.to_string()))?;
        Self::new(name, key_pair, alg)
    }

    fn new(name: &str, key_pair: Ed25519KeyPair, alg: u8) -> Result<NamedKey, NoteError> {
        check_name(name)?;
        let public_key: [u8; 32] = key_pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| NoteError::InvalidPrivateKey("public key is not 32 bytes".into()))?;
        Ok(NamedKey {
            name: name.to_owned(),
            key_id: key_id(name, alg, &public_key),
            public_key,
            key_pair,
            alg,
        })
    }

    /// `<name>+<key id hex>+<base64(type || public key)>`.
    pub(crate) fn verifier_key(&self) -> String {
        let key = [&[self.alg][..], &self.public_key].concat();
        format!(
            "{}+{}",
            key_label(&self.name, self.key_id),
            STANDARD.encode(key)
        )
    }

    /// A raw Ed25519 signature over `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0; 64];
        signature.copy_from_slice(self.key_pair.sign(message).as_ref());
        signature
    }
}

/// A note signing key: an Ed25519 key pair with the name it signs under.
#[derive(Debug)]
pub struct Signer {
    key: NamedKey,
}

impl Signer {
    /// A fresh key as PKCS#8 v2 bytes, ring's storage format, to be written
    /// to disk and loaded with [`Signer::from_pkcs8`].
    pub fn generate_pkcs8() -> Result<Vec<u8>, NoteError> {
        NamedKey::generate_pkcs8()
    }

    /// Loads a PKCS#8 Ed25519 key to sign as `name` (non-empty, no
    /// whitespace, no '+'; for a log, its origin such as `example.com/log`).
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Signer, NoteError> {
        NamedKey::from_pkcs8(name, pkcs8, ALG_ED25519).map(|key| Signer { key })
    }

    /// From a raw 32-byte seed, as in Go's `PRIVATE+KEY+…` strings; used to
    /// reproduce Go's published signatures and for reproducible fixtures
    /// (the shared verification vectors); never for a real log.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Signer, NoteError> {
        NamedKey::from_seed(name, seed, ALG_ED25519).map(|key| Signer { key })
    }

    /// The key name that appears in signature lines.
    pub fn name(&self) -> &str {
        &self.key.name
    }

    /// The 4-byte id that prefixes each signature.
    pub fn key_id(&self) -> [u8; 4] {
        self.key.key_id
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key
    }

    /// `<name>+<key id hex>+<base64(0x01 || public key)>`: the string clients
    /// configure to trust this key (accepted by [`Verifier::parse`] and Go).
    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }

    /// A raw Ed25519 signature over `message` (also used for receipts).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message)
    }

    /// Signs `text` (which must end in a newline) as a note: returns the
    /// text, a blank line and this key's signature line.
    pub fn sign_note(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') {
            return Err(NoteError::MissingFinalNewline);
        }
        let payload = [&self.key.key_id[..], &self.sign(text.as_bytes())].concat();
        let note = format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.key.name,
            STANDARD.encode(payload)
        );
        check_note(&note)?;
        Ok(note)
    }
}

/// A trusted note verification key: name, key id and Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: [u8; 4],
    public_key: [u8; 32],
}

impl Verifier {
    /// Parses `<name>+<key id hex>+<base64(0x01 || public key)>` (surrounding
    /// whitespace is ignored) and checks that the key id matches the name
    /// and key, which catches keys mangled in copy and paste.
    pub fn parse(vkey: &str) -> Result<Verifier, NoteError> {
        let (name, key_id, public_key) = parse_vkey(
            vkey,
            ALG_ED25519,
            "only Ed25519 keys (type byte 0x01) are supported",
        )?;
        Ok(Verifier {
            name,
            key_id,
            public_key,
        })
    }

    /// The key name signature lines must carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte id signature lines must start with.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Checks a raw Ed25519 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }

    /// Verifies a signed note and returns its text (ending in a newline,
    /// without the blank line). Signature lines from other keys are ignored;
    /// any line from this key that fails to verify rejects the note, as does
    /// the absence of one.
    pub fn open_note<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        check_note(note)?;
        let split = note.rfind("\n\n").ok_or(NoteError::MissingBlankLine)?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        if signatures.is_empty() {
            return Err(NoteError::NoSignatureLines);
        }
        if signatures.split_terminator('\n').count() > MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        if !signatures.ends_with('\n') {
            let line = signatures.split_terminator('\n').count();
            let reason = "does not end with a newline";
            return Err(NoteError::MalformedSignatureLine { line, reason });
        }
        let mut verified = false;
        for (i, line) in signatures.split_terminator('\n').enumerate() {
            let (name, payload) =
                parse_signature_line(line).map_err(|reason| NoteError::MalformedSignatureLine {
                    line: i + 1,
                    reason,
                })?;
            let (key_id, signature) = payload.split_at(4);
            if name != self.name || key_id != self.key_id {
                continue;
            }
            if !self.verify(text.as_bytes(), signature) {
                return Err(NoteError::InvalidSignature(self.label()));
            }
            verified = true;
        }
        verified
            .then_some(text)
            .ok_or_else(|| NoteError::NoSignature(self.label()))
    }

    fn label(&self) -> String {
        key_label(&self.name, self.key_id)
    }
}

/// Parses `<name>+<key id hex>+<base64(alg || 32-byte key)>` (surrounding
/// whitespace ignored) for the key type `alg`, checking the key id.
pub(crate) fn parse_vkey(
    vkey: &str,
    alg: u8,
    wrong_type: &'static str,
) -> Result<(String, [u8; 4], [u8; 32]), NoteError> {
    let vkey = vkey.trim();
    let malformed = |reason| NoteError::MalformedVerifierKey {
        key: vkey.to_owned(),
        reason,
    };
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected <name>+<key id>+<base64 key>"));
    };
    check_name(name)?;
    let claimed: [u8; 4] = hex::decode(id_hex)
        .and_then(|id| id.try_into().ok())
        .ok_or_else(|| malformed("key id must be 8 hex digits"))?;
    let key = STANDARD
        .decode(key_b64)
        .map_err(|_| malformed("key is not standard base64"))?;
    let public_key: [u8; 32] = match key.split_first() {
        Some((&t, raw)) if t == alg => raw
            .try_into()
            .map_err(|_| malformed("an Ed25519 key must be 32 bytes"))?,
        _ => return Err(malformed(wrong_type)),
    };
    if small_order(&public_key) {
        return Err(malformed(
            "a small-order Ed25519 point, for which signatures can be made without any private key: no key pair makes it",
        ));
    }
    let computed = key_id(name, alg, &public_key);
    if computed != claimed {
        return Err(NoteError::KeyIdMismatch {
            key: vkey.to_owned(),
            claimed: hex::encode(&claimed),
            computed: hex::encode(&computed),
        });
    }
    Ok((name.to_owned(), computed, public_key))
}

/// Whether an Ed25519 public key is a point of small order (1, 2, 4 or 8),
/// in any encoding: its `y` one of the eight torsion points', or `p` or
/// `p + 1` (non-canonical 0 and 1), whatever the sign bit. With such a key
/// `R` = the identity and `S` = 0 is a valid signature of every message
/// (crypto audit, stop 66: a receipt and a checkpoint forged that way
/// were VALID), and no key pair produces one: libsodium's list, each y
/// checked to have order dividing 8.
pub fn small_order(public_key: &[u8; 32]) -> bool {
    let mut y = *public_key;
    y[31] &= 0x7f; // the sign of x
    SMALL_ORDER_Y.contains(&hex::encode(&y).as_str())
}

/// The `y` of each small-order point (little-endian hex, as the page's
/// verifier lists them): 0 (order 4), 1 (the identity), two of order 8,
/// p - 1 (order 2), p and p + 1 (0 and 1, non-canonical).
pub(crate) const SMALL_ORDER_Y: [&str; 7] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

/// Standard, padded base64 that takes non-zero unused bits in the last
/// character, as Go's `base64.StdEncoding` does, with which
/// golang.org/x/mod/sumdb/note decodes signature lines: a line another
/// implementation reads, from a key this one does not know, is then
/// ignored, not taken for a malformed note (signed-note: "Verifiers MUST
/// ignore signatures from unknown keys").
const SIGNATURE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Splits `— <name> <base64>` into the name and the decoded payload, which
/// is at least a 4-byte key id plus one signature byte.
pub(crate) fn parse_signature_line(line: &str) -> Result<(&str, Vec<u8>), &'static str> {
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or("does not start with an em dash and a space")?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or("has no space between the key name and the signature")?;
    check_name(name).map_err(|_| "has an invalid key name")?;
    let payload = SIGNATURE_BASE64
        .decode(b64)
        .map_err(|_| "signature is not standard base64")?;
    if payload.len() < 5 {
        return Err("signature is too short to hold a key id and a signature");
    }
    Ok((name, payload))
}

/// A C2SP tlog-checkpoint: the signed statement of a log's size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `example.com/log`; by convention also the
    /// name of the log's signing key.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 6962 root of the first `size` leaves.
    pub root: Hash,
    /// Opaque extra lines (each non-empty, without newline); rarely used.
    pub extensions: Vec<String>,
}

fn checkpoint_error(line: usize, reason: impl Into<String>) -> NoteError {
    NoteError::MalformedCheckpoint {
        line,
        reason: reason.into(),
    }
}

fn parse_size(line: &str) -> Result<u64, String> {
    if line.is_empty() || !line.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("tree size {line:?} is not a decimal number"));
    }
    if line.len() > 1 && line.starts_with('0') {
        return Err(format!("tree size {line:?} has a leading zero"));
    }
    line.parse()
        .map_err(|_| format!("tree size {line:?} does not fit in 64 bits"))
}

fn parse_root(line: &str) -> Result<Hash, String> {
    let bytes = STANDARD
        .decode(line)
        .map_err(|e| format!("root hash {line:?} is not padded standard base64 ({e})"))?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| format!("root hash is {len} bytes, expected 32"))
}

impl Checkpoint {
    /// The note text: origin, size, base64 root and any extension lines,
    /// each ending in a newline.
    pub fn body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for extension in &self.extensions {
            body.push_str(extension);
            body.push('\n');
        }
        body
    }

    /// Parses a checkpoint body strictly: a non-empty origin, a decimal size
    /// without leading zeros, a canonical base64 32-byte root, then non-empty
    /// extension lines; the text must end in a newline.
    pub fn parse_body(text: &str) -> Result<Checkpoint, NoteError> {
        let lines: Vec<&str> = text
            .strip_suffix('\n')
            .ok_or_else(|| checkpoint_error(text.lines().count(), "does not end with a newline"))?
            .split('\n')
            .collect();
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            let reason = "missing: a checkpoint needs origin, tree size and root hash lines";
            return Err(checkpoint_error(lines.len() + 1, reason));
        };
        if origin.is_empty() {
            return Err(checkpoint_error(1, "origin is empty"));
        }
        if let Some(i) = extensions.iter().position(|e| e.is_empty()) {
            return Err(checkpoint_error(i + 4, "extension line is empty"));
        }
        Ok(Checkpoint {
            origin: (*origin).to_owned(),
            size: parse_size(size).map_err(|e| checkpoint_error(2, e))?,
            root: parse_root(root).map_err(|e| checkpoint_error(3, e))?,
            extensions: extensions.iter().map(|e| (*e).to_owned()).collect(),
        })
    }

    /// Signs the checkpoint as a note. Fails if the origin or an extension
    /// is empty or contains a newline, since the body would not parse back.
    pub fn sign(&self, signer: &Signer) -> Result<String, NoteError> {
        let lines = std::iter::once((1, &self.origin)).chain((4..).zip(&self.extensions));
        for (line, value) in lines {
            if value.is_empty() || value.contains('\n') {
                return Err(checkpoint_error(
                    line,
                    "must be non-empty and contain no newline",
                ));
            }
        }
        signer.sign_note(&self.body())
    }

    /// Verifies a signed checkpoint with `verifier` and parses it. The
    /// origin is not compared with anything: callers must check that it is
    /// the log they expect (usually `verifier.name()`), since one key may
    /// sign for several logs.
    pub fn open(note: &str, verifier: &Verifier) -> Result<Checkpoint, NoteError> {
        Self::parse_body(verifier.open_note(note)?)
    }
}

/// For tests: a checkpoint of 3 leaves signed by `example.com/log` with
/// a fixed key, and that key.
#[cfg(test)]
pub(crate) fn test_note() -> (Signer, String) {
    let log = Signer::from_seed("example.com/log", &[1; 32]).expect("a key");
    let note = Checkpoint {
        origin: log.name().to_owned(),
        size: 3,
        root: [9; 32],
        extensions: vec![],
    }
    .sign(&log)
    .expect("a note");
    (log, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, Tree};

    // Test vectors from golang.org/x/mod, sumdb/note/note_test.go
    // (TestNewVerifier, TestSign, TestOpen).
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    /// Go's signer key string: `PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)`.
    fn peter_signer() -> Signer {
        let key = STANDARD
            .decode(PETER_SKEY.splitn(5, '+').nth(4).unwrap())
            .unwrap();
        let (alg, seed) = key.split_first().unwrap();
        assert_eq!(*alg, ALG_ED25519);
        Signer::from_seed("PeterNeumann", seed.try_into().unwrap()).unwrap()
    }

    fn example_signer() -> Signer {
        Signer::from_pkcs8("example.com/log", &Signer::generate_pkcs8().unwrap()).unwrap()
    }

    fn example_checkpoint() -> Checkpoint {
        let mut tree = Tree::new();
        for i in 0..8u8 {
            tree.push(leaf_hash(&[i]));
        }
        Checkpoint {
            origin: "example.com/log".into(),
            size: tree.size(),
            root: tree.root(),
            extensions: vec![],
        }
    }

    /// A key `openssl genpkey -algorithm ed25519` wrote (PKCS#8 v1, PEM),
    /// and its public key (`openssl pkey -pubout`): taken as PEM and as
    /// the DER inside it, with the same public key; anything else is
    /// refused naming the forms taken.
    #[test]
    fn an_openssl_ed25519_key_is_taken_as_pem_or_der() {
        const PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEIM4dsoHNw67zW3KRLfxot6Nn6kgTwGxidXVeAhth40Gb\n\
            -----END PRIVATE KEY-----\n";
        const PUBLIC: &str = "76b618f5ad4e42def14e919b56949e5941887492f34ca51869c554624a2a8f0f";
        let pem = Signer::from_pkcs8("example.com/log", PEM.as_bytes()).unwrap();
        assert_eq!(residency_core::hex::encode(&pem.public_key()), PUBLIC);
        let der = STANDARD
            .decode("MC4CAQAwBQYDK2VwBCIEIM4dsoHNw67zW3KRLfxot6Nn6kgTwGxidXVeAhth40Gb")
            .unwrap();
        let der = Signer::from_pkcs8("example.com/log", &der).unwrap();
        assert_eq!(der.verifier_key(), pem.verifier_key());
        let ours = Signer::generate_pkcs8().unwrap();
        assert!(Signer::from_pkcs8("example.com/log", &ours).is_ok());
        let why = Signer::from_pkcs8("example.com/log", b"not a key")
            .unwrap_err()
            .to_string();
        assert!(why.contains("openssl genpkey -algorithm ed25519"), "{why}");
    }

    #[test]
    fn go_verifier_key_parses_and_key_id_matches() {
        let v = Verifier::parse(&format!("  {PETER_VKEY}\n")).unwrap();
        assert_eq!(v.name(), "PeterNeumann");
        assert_eq!(v.key_id(), [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(ed25519_key_id(v.name(), &v.public_key()), v.key_id());
        assert_eq!(
            Verifier::parse(ENOCH_VKEY).unwrap().key_id(),
            [0xaf, 0x0c, 0xfe, 0x78]
        );
    }

    /// A small-order public key verifies `R` = identity, `S` = 0 for every
    /// message (ring's verification takes it), so such a key is refused
    /// as a log's or a witness's, in each of its encodings (crypto audit,
    /// stop 66); a real key is not.
    #[test]
    fn small_order_keys_are_refused() {
        use base64::engine::general_purpose::STANDARD;
        let identity = {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        };
        let mut forged = [0u8; 64];
        forged[0] = 1; // R: the identity's encoding; S = 0
        assert!(
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, identity)
                .verify(b"any message at all", &forged)
                .is_ok(),
            "the weakness this guards against"
        );
        for hex_key in SMALL_ORDER_Y {
            for sign in [0u8, 0x80] {
                let mut key: [u8; 32] = hex::decode(hex_key).unwrap().try_into().unwrap();
                key[31] |= sign;
                let log = |v: &str| Verifier::parse(v).map(|_| ());
                let witness = |v: &str| crate::witness::CosignatureVerifier::parse(v).map(|_| ());
                type Parse<'a> = &'a dyn Fn(&str) -> Result<(), NoteError>;
                let parsers: [(u8, Parse); 2] = [
                    (ALG_ED25519, &log),
                    (crate::witness::ALG_COSIGNATURE_V1, &witness),
                ];
                for (alg, parse) in parsers {
                    let id = key_id("example.com/log", alg, &key);
                    let vkey = format!(
                        "example.com/log+{}+{}",
                        hex::encode(&id),
                        STANDARD.encode([&[alg][..], &key[..]].concat())
                    );
                    let err = parse(&vkey).unwrap_err().to_string();
                    assert!(err.contains("small-order"), "{vkey}: {err}");
                }
            }
        }
        assert!(Verifier::parse(PETER_VKEY).is_ok());
    }

    #[test]
    fn mangled_verifier_keys_are_rejected() {
        // As in Go's TestNewVerifier: every proper substring and every
        // single-byte increment must fail.
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    let part = std::str::from_utf8(&b[i..j]).unwrap();
                    assert!(Verifier::parse(part).is_err(), "{part:?}");
                }
            }
        }
        for i in 0..b.len() {
            let mut bad = b.to_vec();
            bad[i] += 1;
            if let Ok(bad) = std::str::from_utf8(&bad) {
                assert!(Verifier::parse(bad).is_err(), "{bad:?}");
            }
        }
        let err =
            Verifier::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW");
        assert!(err.unwrap_err().to_string().contains("only Ed25519"));
        let err =
            Verifier::parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW");
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("claims key id c74f20a4"));
    }

    #[test]
    fn go_signed_note_opens() {
        let peter = Verifier::parse(PETER_VKEY).unwrap();
        let enoch = Verifier::parse(ENOCH_VKEY).unwrap();
        let note = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        assert_eq!(peter.open_note(&note).unwrap(), TEXT);
        assert_eq!(enoch.open_note(&note).unwrap(), TEXT);
        let only_peter = format!("{TEXT}\n{PETER_SIG}");
        let err = enoch.open_note(&only_peter).unwrap_err();
        assert_eq!(err.to_string(), "no signature by key EnochRoot+af0cfe78");
    }

    #[test]
    fn signing_reproduces_go_signature_byte_for_byte() {
        let signer = peter_signer();
        assert_eq!(signer.verifier_key(), PETER_VKEY);
        assert_eq!(
            signer.sign_note(TEXT).unwrap(),
            format!("{TEXT}\n{PETER_SIG}")
        );
    }

    #[test]
    fn malformed_notes_are_rejected() {
        // Go's TestOpen "invalid encoded message syntax" cases, and more.
        let peter = Verifier::parse(PETER_VKEY).unwrap();
        let bad = [
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", PETER_SIG.trim_end()),
            format!("\x01{TEXT}\n{PETER_SIG}"),
            format!("{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
            format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES + 1)),
            format!("{TEXT}\n— PeterNeumann AAAA\n"),
            format!("{TEXT}\n— PeterNeumann not*base64\n"),
            format!("{}{TEXT}\n{PETER_SIG}", "x".repeat(MAX_NOTE_BYTES)),
        ];
        for note in &bad {
            assert!(peter.open_note(note).is_err(), "{note:?}");
        }
        assert!(matches!(decode_note(b"\xff\n\n"), Err(NoteError::NotUtf8)));
        let huge = vec![b'a'; MAX_NOTE_BYTES + 1];
        assert!(matches!(decode_note(&huge), Err(NoteError::TooLong(_))));
        // Same name, other key id (and vice versa): ignored, per the spec.
        let other_id = PETER_SIG.replace("x08go", "xxxxx");
        let err = peter.open_note(&format!("{TEXT}\n{other_id}")).unwrap_err();
        assert!(matches!(err, NoteError::NoSignature(_)), "{err}");
        let other_name = PETER_SIG.replace("PeterNeumann", "CarmenSandiego");
        let err = peter
            .open_note(&format!("{TEXT}\n{other_name}"))
            .unwrap_err();
        assert!(matches!(err, NoteError::NoSignature(_)), "{err}");
        // A corrupted signature from the trusted key rejects the whole note.
        let corrupt = format!("{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        let err = peter
            .open_note(&format!("{TEXT}\n{PETER_SIG}{corrupt}"))
            .unwrap_err();
        assert!(matches!(err, NoteError::InvalidSignature(_)), "{err}");
    }

    #[test]
    fn signer_validates_names_and_text() {
        let pkcs8 = Signer::generate_pkcs8().unwrap();
        for name in [
            "",
            "a b",
            "a+b",
            "a\u{2003}b",
            "a\u{1f}b",
            "a\u{1b}b",
            "a\u{7f}b",
            "a\u{85}b",
        ] {
            assert!(Signer::from_pkcs8(name, &pkcs8).is_err(), "{name:?}");
        }
        assert!(Signer::from_pkcs8("ok", b"not a key").is_err());
        let signer = example_signer();
        assert!(signer.sign_note("no newline").is_err());
        assert!(signer.sign_note("tab\there\n").is_err());
        let round_trip = Verifier::parse(&signer.verifier_key()).unwrap();
        assert_eq!(round_trip.public_key(), signer.public_key());
        let sig = signer.sign(b"receipt");
        assert!(round_trip.verify(b"receipt", &sig));
        assert!(!round_trip.verify(b"receipt!", &sig));
    }

    #[test]
    fn checkpoint_round_trips_with_exact_body() {
        let signer = example_signer();
        let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
        let checkpoint = example_checkpoint();
        let body = checkpoint.body();
        assert_eq!(
            body,
            format!("example.com/log\n8\n{}\n", STANDARD.encode(checkpoint.root))
        );
        let note = checkpoint.sign(&signer).unwrap();
        assert!(note.starts_with(&format!("{body}\n— example.com/log ")));
        assert_eq!(Checkpoint::open(&note, &verifier).unwrap(), checkpoint);

        // Any Ed25519 verifier accepts the signature over the body bytes.
        let line = note.lines().last().unwrap();
        let payload = STANDARD.decode(line.rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(payload[..4], signer.key_id());
        UnparsedPublicKey::new(&ED25519, signer.public_key())
            .verify(body.as_bytes(), &payload[4..])
            .unwrap();

        let with_ext = Checkpoint {
            extensions: vec!["ext one".into(), "— two".into()],
            ..checkpoint
        };
        let note = with_ext.sign(&signer).unwrap();
        assert_eq!(Checkpoint::open(&note, &verifier).unwrap(), with_ext);
    }

    #[test]
    fn tampered_checkpoints_fail_to_open() {
        let signer = example_signer();
        let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
        let note = example_checkpoint().sign(&signer).unwrap();
        let bytes = note.as_bytes();
        // The signature's base64, which may change in its last
        // character's unused bits and decode to the same signature.
        let b64 = note.rfind(' ').unwrap() + 1..note.len() - 1;
        let payload = SIGNATURE_BASE64.decode(&note[b64.clone()]).unwrap();
        for i in 0..bytes.len() {
            for delta in [1u8, 0x20] {
                let mut bad = bytes.to_vec();
                bad[i] ^= delta;
                if let Ok(bad) = std::str::from_utf8(&bad) {
                    let same = b64.contains(&i)
                        && SIGNATURE_BASE64.decode(&bad[b64.clone()]).ok() == Some(payload.clone());
                    assert_eq!(
                        Checkpoint::open(bad, &verifier).is_ok(),
                        same,
                        "byte {i} ^ {delta}"
                    );
                }
            }
        }
        let stranger = Verifier::parse(&example_signer().verifier_key()).unwrap();
        let err = Checkpoint::open(&note, &stranger).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("no signature by key example.com/log+"));
    }

    #[test]
    fn unknown_signatures_are_ignored() {
        let signer = example_signer();
        let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
        let note = example_checkpoint().sign(&signer).unwrap();
        let with_witnesses = format!("{note}{PETER_SIG}{ENOCH_SIG}");
        assert_eq!(
            Checkpoint::open(&with_witnesses, &verifier).unwrap(),
            example_checkpoint()
        );
        let witness_first = note.replacen("\n\n", &format!("\n\n{ENOCH_SIG}"), 1);
        assert_eq!(
            Checkpoint::open(&witness_first, &verifier).unwrap(),
            example_checkpoint()
        );
        // Base64 whose last character has unused bits set (Go's decoder
        // takes it): from an unknown key ignored, from the log's own key
        // the same signature.
        let unknown = format!("— other.example/k {}B=\n", "A".repeat(90));
        assert_eq!(
            Checkpoint::open(&format!("{note}{unknown}"), &verifier).unwrap(),
            example_checkpoint()
        );
        let line = note.lines().last().unwrap();
        let b64 = line.rsplit(' ').next().unwrap();
        // 68 bytes: one `=`, and the last character's low 2 bits unused.
        let (data, last) = (&b64[..b64.len() - 2], b64.as_bytes()[b64.len() - 2]);
        let abc = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let at = abc.iter().position(|c| *c == last).unwrap();
        let loose = note.replace(b64, &format!("{data}{}=", abc[at | 1] as char));
        assert_ne!(loose, note);
        assert_eq!(
            Checkpoint::open(&loose, &verifier).unwrap(),
            example_checkpoint()
        );
    }

    #[test]
    fn checkpoint_bodies_are_parsed_strictly() {
        let root = STANDARD.encode([7; 32]);
        let ok = Checkpoint::parse_body(&format!("o\n0\n{root}\n")).unwrap();
        assert_eq!((ok.size, ok.root), (0, [7; 32]));
        let cases = [
            (format!("o\n01\n{root}\n"), "checkpoint line 2: tree size \"01\" has a leading zero"),
            (format!("o\n+1\n{root}\n"), "checkpoint line 2: tree size \"+1\" is not a decimal number"),
            (format!("o\n\n{root}\n"), "checkpoint line 2: tree size \"\" is not a decimal number"),
            (format!("o\n18446744073709551616\n{root}\n"), "checkpoint line 2: tree size \"18446744073709551616\" does not fit in 64 bits"),
            (format!("\n1\n{root}\n"), "checkpoint line 1: origin is empty"),
            (format!("o\n1\n{root}"), "checkpoint line 3: does not end with a newline"),
            ("o\n1\n".to_owned(), "checkpoint line 3: missing: a checkpoint needs origin, tree size and root hash lines"),
            (format!("o\n1\n{root}\n\n"), "checkpoint line 4: extension line is empty"),
            ("o\n1\nAAAA\n".to_owned(), "checkpoint line 3: root hash is 3 bytes, expected 32"),
        ];
        for (body, want) in cases {
            assert_eq!(Checkpoint::parse_body(&body).unwrap_err().to_string(), want);
        }
        let unpadded = root.trim_end_matches('=');
        assert!(Checkpoint::parse_body(&format!("o\n1\n{unpadded}\n")).is_err());
        let mut bad = example_checkpoint();
        bad.origin = "a\nb".into();
        assert!(bad.sign(&example_signer()).is_err());
    }
}
