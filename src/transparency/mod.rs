//! Proof of residency: decision records in an append-only, verifiable log.
//!
//! Each upload and each refusal becomes a [`record::Record`], a leaf of an
//! RFC 6962 Merkle tree ([`merkle`]) persisted by [`log::Log`] and committed
//! to by periodic checkpoints in the C2SP signed-note format ([`note`]). A
//! stored upload's response carries a [`receipt`]; customers fetch
//! checkpoints and proofs from the endpoints in [`http`] and check them with
//! `residency-proxy verify` ([`verify`]) — or any RFC 6962 and Ed25519
//! implementation.

pub mod http;
pub mod log;
pub mod merkle;
pub mod note;
pub mod receipt;
pub mod record;
pub mod settings;
pub mod verify;
