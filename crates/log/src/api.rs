//! The JSON shapes of the log's convenience endpoints (`/proof/*`,
//! `/records/{id}`, `/entries/{i}`): what the proxy serves and what a
//! verifier parses. Hashes are lowercase hex; a record is the exact logged
//! text.

use serde::{Deserialize, Serialize};

/// An inclusion proof as served.
#[derive(Debug, Serialize, Deserialize)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    pub leaf_hash: String,
    pub hashes: Vec<String>,
}

/// A consistency proof as served.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub hashes: Vec<String>,
}

/// A record as served.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    /// The exact logged bytes (JSON text).
    pub record: String,
}

/// `GET /generations`: the log's generations, oldest first. A directory
/// log rolls to a new origin at `transparency.max_records`; each
/// generation is a C2SP tlog-tiles log of its own under `prefix` (the
/// current one also at the root).
#[derive(Debug, Serialize, Deserialize)]
pub struct Generations {
    pub generations: Vec<GenerationInfo>,
}

/// One generation in [`Generations`].
#[derive(Debug, Serialize, Deserialize)]
pub struct GenerationInfo {
    pub generation: u32,
    /// Its checkpoints' origin line and its key's name.
    pub origin: String,
    /// Its verifier key, `name+keyid+base64`.
    pub key: String,
    /// The size of its latest signed checkpoint.
    pub size: u64,
    /// `true` once the log rolled past it: it takes no more records.
    pub sealed: bool,
    /// The path its tiles, checkpoint and conveniences are served under,
    /// e.g. `/generations/1/` (then `/generations/1/checkpoint`).
    pub prefix: String,
}
