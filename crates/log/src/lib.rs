//! Proof of residency: decision records in an append-only, verifiable log —
//! usable without the proxy, by a customer's or an auditor's own tooling.
//!
//! Each upload and each refusal becomes a [`record::Record`], a leaf of an
//! RFC 6962 Merkle tree ([`merkle`]) persisted by [`storage::Log`] and
//! committed to by periodic checkpoints in the C2SP signed-note format
//! ([`note`]). A stored upload's response carries a [`receipt`]; [`api`]
//! holds the JSON shapes of the proof endpoints. [`verdict`] decides whether
//! a receipt proves residency, for `verify` and the log's web page alike,
//! held to the shared [`vectors`]. [`settings`] is the
//! `[transparency]` configuration section.

pub mod api;
pub mod backend;
pub mod directory;
pub mod disk;
pub mod edge;
pub mod merkle;
pub mod note;
pub mod postgres;
pub mod receipt;
pub mod record;
pub mod refusals;
pub mod settings;
pub mod storage;
pub mod tiles;
pub mod tlog_proof;
pub mod vectors;
pub mod verdict;
pub mod witness;
