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
use crate::tenant::Tenant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub addr: IpAddr,
    pub country: Option<Country>,
    pub lookup: LookupResult,
    /// The jurisdiction whose `store_in` bounds the upload: GeoIP's, or a
    /// recognised tenant's pin.
    pub jurisdiction: Option<(JurisdictionId, Assignment)>,
    /// For a pinned tenant: GeoIP's jurisdiction for the client (`None`
    /// when GeoIP places it in none: `[unknown_origin]`'s jurisdiction is
    /// not a place), recorded next to the pin.
    pub origin_jurisdiction: Option<JurisdictionId>,
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
    /// A pinned tenant's client is, by GeoIP, outside the pinned
    /// jurisdiction, and the tenant's `mismatch` policy refuses that.
    TenantOriginMismatch,
    /// The GeoIP database's record for the address does not decode (a
    /// damaged file): where the client is cannot be told, and it is not
    /// taken for a client of no country.
    GeoipError,
}

impl Refusal {
    /// The fixed reason: the refusal body's `error` and the metrics' `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::OriginUnknown => "origin_unknown",
            Refusal::OriginNotPermitted => "origin_not_permitted",
            Refusal::NoHealthyDatacenter { .. } => "no_healthy_datacenter",
            Refusal::TenantOriginMismatch => "tenant_origin_mismatch",
            Refusal::GeoipError => "geoip_error",
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
        origin_jurisdiction: None,
        outcome: Outcome::Refuse(Refusal::OriginUnknown),
    };
    if lookup == LookupResult::Error {
        decision.outcome = Outcome::Refuse(Refusal::GeoipError);
        return decision;
    }
    let (j, assignment) = match policy.jurisdiction_for(country) {
        Ok(found) => found,
        Err(OriginRefusal::OriginUnknown) => return decision,
        Err(OriginRefusal::OriginNotPermitted) => {
            decision.outcome = Outcome::Refuse(Refusal::OriginNotPermitted);
            return decision;
        }
    };
    decision.jurisdiction = Some((j, assignment));
    decision.origin_jurisdiction = Some(j);
    decision.outcome = pick(policy, j, turn, is_up, retry_after);
    decision
}

/// Decides for a recognised tenant: its pin, not GeoIP, bounds where the
/// upload may go. GeoIP still runs: its jurisdiction is recorded, and when
/// it places the client outside the pin, or nowhere, the tenant's
/// `mismatch` policy may refuse ([`Refusal::TenantOriginMismatch`]).
/// `[unknown_origin]`'s jurisdiction places no one: a client of a country
/// no jurisdiction lists, or of none, is outside every pin.
pub fn decide_pinned(
    geo: &Geo,
    policy: &Policy,
    addr: IpAddr,
    tenant: &Tenant,
    turn: usize,
    is_up: impl Fn(UpstreamId) -> bool,
    retry_after: impl FnOnce(JurisdictionId) -> Duration,
) -> Decision {
    let addr = addr.to_canonical();
    let (country, lookup) = geo.lookup(addr);
    let placed = policy
        .jurisdiction_for(country)
        .ok()
        .and_then(|(j, a)| (a == Assignment::Listed).then_some(j));
    let pin = tenant.jurisdiction;
    let mut decision = Decision {
        addr,
        country,
        lookup,
        jurisdiction: Some((pin, Assignment::Pinned)),
        origin_jurisdiction: placed,
        outcome: Outcome::Refuse(Refusal::TenantOriginMismatch),
    };
    if placed != Some(pin) && !tenant.mismatch.allows(country) {
        // Unless the mismatch policy would take any origin, one GeoIP
        // could not tell is the database's fault, not the client's.
        if lookup == LookupResult::Error {
            decision.outcome = Outcome::Refuse(Refusal::GeoipError);
        }
        return decision;
    }
    decision.outcome = pick(policy, pin, turn, is_up, retry_after);
    decision
}

/// Step 5 within `j`'s permitted data centres, or 503 with when one may be
/// back.
fn pick(
    policy: &Policy,
    j: JurisdictionId,
    turn: usize,
    is_up: impl Fn(UpstreamId) -> bool,
    retry_after: impl FnOnce(JurisdictionId) -> Duration,
) -> Outcome {
    match policy.pick(j, turn, is_up) {
        Some(u) => Outcome::Forward(u),
        None => Outcome::Refuse(Refusal::NoHealthyDatacenter {
            retry_after: retry_after(j),
        }),
    }
}
