//! The explanation of a decision served by the admin `/decide` endpoint and
//! printed by the `decide` command: the same [`decide`] a request runs,
//! spelled out with the HTTP status the proxy would answer.
//!
//! [`decide`]: residency_core::decision::decide

use serde_json::{json, Value};

use residency_core::decision::{Decision, Outcome};
use residency_core::policy::{Assignment, Policy, UpstreamId};

use crate::proxy::error::Failure;

/// The JSON explanation of `decision` under `policy`.
pub fn explain(d: &Decision, policy: &Policy, is_up: impl Fn(UpstreamId) -> bool) -> Value {
    let jurisdiction = d.jurisdiction.map(|(j, _)| policy.jurisdiction(j));
    let permitted: Vec<Value> = match d.jurisdiction {
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
    let (decision, datacenter, upstream, reason) = match d.outcome {
        Outcome::Forward(u) => {
            let dc = policy.datacenter_of(u);
            (
                "forward",
                Some(dc.name.clone()),
                Some(policy.upstream(u).uri.to_string()),
                None,
            )
        }
        Outcome::Refuse(r) => ("refuse", None, None, Some(r.reason())),
    };
    let status = match d.outcome {
        Outcome::Forward(_) => None,
        Outcome::Refuse(r) => Some(Failure::from(r).status().as_u16()),
    };
    json!({
        "ip": d.addr.to_string(),
        "country": d.country.map(|c| c.to_string()),
        "country_source": d.lookup.as_str(),
        "jurisdiction": jurisdiction.map(|j| j.name.clone()),
        "assigned_by": d.jurisdiction.map(|(_, a)| match a {
            Assignment::Listed => "country",
            Assignment::UnknownOrigin => "unknown_origin",
            Assignment::Pinned => "tenant",
        }),
        "origin_jurisdiction": d.origin_jurisdiction.map(|j| policy.jurisdiction(j).name.clone()),
        "store_in": jurisdiction.map(|j| j.store_in.iter().map(|s| policy.jurisdiction(*s).name.clone()).collect::<Vec<_>>()),
        "permitted": permitted,
        "decision": decision,
        "datacenter": datacenter,
        "upstream": upstream,
        "status": status,
        "reason": reason,
    })
}
