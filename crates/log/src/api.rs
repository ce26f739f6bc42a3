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
