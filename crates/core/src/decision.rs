//! The residency decision for one client address, steps 2–5 of PRODUCT.md.
//!
//! [`decide`] is synchronous and free of I/O: GeoIP lookup (in memory),
//! jurisdiction, permitted data centres, upstream pick. The proxy handler,
//! the admin `/decide` endpoint and the `decide` command all call it, so
//! what an operator asks about is exactly what a request gets.

use std::net::IpAddr;
use std::time::Duration;

use crate::country::Country;
use crate::geo::{Geo, LookupResult};
use crate::policy::{Assignment, JurisdictionId, OriginRefusal, Policy, UpstreamId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub addr: IpAddr,
    pub country: Option<Country>,
    pub lookup: LookupResult,
    pub jurisdiction: Option<(JurisdictionId, Assignment)>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forward(UpstreamId),
    Refuse(Refusal),
}

/// Why an upload may not be forwarded. A domain outcome: the proxy maps it
/// to its HTTP status (451 for the origin, 503 for health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No country is known for the address (and `[unknown_origin]` rejects).
    OriginUnknown,
    /// The country belongs to no jurisdiction.
    OriginNotPermitted,
    /// Every permitted data centre is down; one may be back after `retry_after`.
    NoHealthyDatacenter { retry_after: Duration },
}

impl Refusal {
    /// The fixed reason: the refusal body's `error` and the metrics' `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::OriginUnknown => "origin_unknown",
            Refusal::OriginNotPermitted => "origin_not_permitted",
            Refusal::NoHealthyDatacenter { .. } => "no_healthy_datacenter",
        }
    }
}

/// Decides where an upload from `addr` may go. `turn` rotates load within a
/// priority group; `is_up` reports upstream health; `retry_after` estimates
/// when a permitted upstream comes back.
pub fn decide(
    geo: &Geo,
    policy: &Policy,
    addr: IpAddr,
    turn: usize,
    is_up: impl Fn(UpstreamId) -> bool,
    retry_after: impl FnOnce(JurisdictionId) -> Duration,
) -> Decision {
    let addr = addr.to_canonical();
    let (country, lookup) = geo.lookup(addr);
    let mut decision = Decision {
        addr,
        country,
        lookup,
        jurisdiction: None,
        outcome: Outcome::Refuse(Refusal::OriginUnknown),
    };
    let (j, assignment) = match policy.jurisdiction_for(country) {
        Ok(found) => found,
        Err(OriginRefusal::OriginUnknown) => return decision,
        Err(OriginRefusal::OriginNotPermitted) => {
            decision.outcome = Outcome::Refuse(Refusal::OriginNotPermitted);
            return decision;
        }
    };
    decision.jurisdiction = Some((j, assignment));
    decision.outcome = match policy.pick(j, turn, is_up) {
        Some(u) => Outcome::Forward(u),
        None => Outcome::Refuse(Refusal::NoHealthyDatacenter {
            retry_after: retry_after(j),
        }),
    };
    decision
}
