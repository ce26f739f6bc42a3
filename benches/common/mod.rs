//! What the log benchmarks (`log_scale.rs`, `fleet.rs`) append: records
//! as the proxy writes them for stored uploads, with request ids drawn as
//! the proxy draws them.

use residency_log::record::{self, BodyDigest, Client, Database, Outcome, Record};

/// Request id `i` as the proxy draws them: the time in milliseconds (48
/// bits; here 100 uploads per millisecond from a fixed start), then 80
/// random-looking bits.
pub fn id(i: u64) -> u128 {
    let millis = 1_764_672_000_000u128 + u128::from(i / 100);
    let random =
        u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) & ((1 << 80) - 1);
    (millis << 80) | random
}

/// A stored upload's record (about 450 bytes).
pub fn record(i: u64) -> Record<'static> {
    Record {
        v: record::VERSION,
        request_id: format!("{:032x}", id(i)).into(),
        time: "2026-12-02T10:41:07.123Z".into(),
        outcome: Outcome::Stored,
        reason: None,
        client: Client {
            source: Some("x_forwarded_for".into()),
            address: Some("192.0.2.0/24".into()),
        },
        country: Some("CH".into()),
        jurisdiction: Some("ch".into()),
        datacenter: Some("zurich".into()),
        also_sent_to: Vec::new(),
        upstream_status: Some(201),
        body: Some(BodyDigest {
            sha256: "ab".repeat(32).into(),
            bytes: 1024,
        }),
        policy_sha256: "cd".repeat(32).into(),
        geoip: Database {
            build_epoch: 1_750_000_000,
            sha256: "ef".repeat(32).into(),
        },
        tenant: None,
        summary: None,
    }
}
