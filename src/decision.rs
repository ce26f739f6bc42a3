//! The residency decision for one client address, steps 2–5 of PRODUCT.md.
//!
//! [`decide`] is synchronous and free of I/O: GeoIP lookup (in memory),
//! jurisdiction, permitted data centres, upstream pick. The proxy handler,
//! the admin `/decide` endpoint and the `decide` command all call it, so
//! what an operator asks about is exactly what a request gets.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::country::Country;
use crate::geo::{Geo, LookupResult};
use crate::policy::{Assignment, JurisdictionId, Policy, Refusal, UpstreamId};
use crate::proxy::error::Failure;

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
    Refuse(Failure),
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
        outcome: Outcome::Refuse(Failure::OriginUnknown),
    };
    let (j, assignment) = match policy.jurisdiction_for(country) {
        Ok(found) => found,
        Err(Refusal::OriginUnknown) => return decision,
        Err(Refusal::OriginNotPermitted) => {
            decision.outcome = Outcome::Refuse(Failure::OriginNotPermitted);
            return decision;
        }
    };
    decision.jurisdiction = Some((j, assignment));
    decision.outcome = match policy.pick(j, turn, is_up) {
        Some(u) => Outcome::Forward(u),
        None => Outcome::Refuse(Failure::NoHealthyDatacenter {
            retry_after: retry_after(j),
        }),
    };
    decision
}

impl Decision {
    /// The explanation served by `/decide` and printed by `decide`.
    pub fn explain(&self, policy: &Policy, is_up: impl Fn(UpstreamId) -> bool) -> Value {
        let jurisdiction = self.jurisdiction.map(|(j, _)| policy.jurisdiction(j));
        let permitted: Vec<Value> = match self.jurisdiction {
            None => Vec::new(),
            Some((j, _)) => policy
                .permitted(j)
                .iter()
                .flat_map(|g| g.datacenters.iter().map(move |d| (g.priority, *d)))
                .map(|(priority, d)| {
                    let dc = policy.datacenter(d);
                    json!({
                        "datacenter": dc.name,
                        "jurisdiction": policy.jurisdiction(dc.jurisdiction).name,
                        "priority": priority,
                        "up": dc.upstreams.iter().any(|u| is_up(*u)),
                    })
                })
                .collect(),
        };
        let (decision, datacenter, upstream, reason) = match self.outcome {
            Outcome::Forward(u) => {
                let dc = policy.datacenter_of(u);
                (
                    "forward",
                    Some(dc.name.clone()),
                    Some(policy.upstream(u).uri.to_string()),
                    None,
                )
            }
            Outcome::Refuse(f) => ("refuse", None, None, Some(f.reason())),
        };
        let status = match self.outcome {
            Outcome::Forward(_) => None,
            Outcome::Refuse(f) => Some(f.status().as_u16()),
        };
        json!({
            "ip": self.addr.to_string(),
            "country": self.country.map(|c| c.to_string()),
            "country_source": self.lookup.as_str(),
            "jurisdiction": jurisdiction.map(|j| j.name.clone()),
            "assigned_by": self.jurisdiction.map(|(_, a)| match a {
                Assignment::Listed => "country",
                Assignment::UnknownOrigin => "unknown_origin",
            }),
            "store_in": jurisdiction.map(|j| j.store_in.iter().map(|s| policy.jurisdiction(*s).name.clone()).collect::<Vec<_>>()),
            "permitted": permitted,
            "decision": decision,
            "datacenter": datacenter,
            "upstream": upstream,
            "status": status,
            "reason": reason,
        })
    }
}
