//! The explanation of a decision served by the admin `/decide` endpoint and
//! printed by the `decide` command: the same [`decide`] a request runs,
//! spelled out with the HTTP status the proxy would answer.
//!
//! [`decide`]: residency_core::decision::decide

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};

use residency_core::decision::{decide, decide_pinned, Decision, Outcome};
use residency_core::geo::Geo;
use residency_core::policy::{Assignment, DatacenterId, JurisdictionId, Policy, UpstreamId};
use residency_core::tenant;

use crate::proxy::error::Failure;
use crate::tenancy::Tenancy;

/// What `/decide` and `decide` are asked: an address, and optionally the
/// server name a client dials and a tenant a valid token or client
/// certificate would name.
#[derive(Debug, Clone, Default)]
pub struct Question<'a> {
    pub ip: Option<IpAddr>,
    pub sni: Option<&'a str>,
    pub tenant: Option<&'a str>,
}

/// Recognises and decides as a request would — a recognised tenant's pin
/// first, GeoIP otherwise — and explains it.
#[allow(clippy::too_many_arguments)]
pub fn answer(
    q: &Question<'_>,
    geo: &Geo,
    policy: &Policy,
    tenancy: &Tenancy,
    turn: usize,
    is_up: impl Fn(UpstreamId) -> bool + Copy,
    is_drained: impl Fn(DatacenterId) -> bool,
    retry_after: impl FnOnce(JurisdictionId) -> Duration,
) -> Result<Value, String> {
    let ip = q.ip.ok_or("want ip=<IPv4 or IPv6 address>")?;
    let named = match q.tenant {
        Some(name) => Some(
            tenancy
                .tenants
                .by_name(name)
                .ok_or_else(|| format!("no tenant named `{name}`"))?,
        ),
        None => None,
    };
    // As a request's host is compared (the TLS layer hands a server name
    // over lower case, without the trailing dot of a fully qualified name).
    let sni = q.sni.and_then(|s| tenancy.tenants.by_host(s));
    let recognized = tenant::combine(named, None, sni)
        .map_err(|_| "the tenant named and the server name's tenant differ: 403 tenant_conflict")?;
    let decision = match recognized {
        Some(r) => decide_pinned(
            geo,
            policy,
            ip,
            tenancy.tenants.get(r.tenant),
            turn,
            is_up,
            retry_after,
        ),
        None => decide(geo, policy, ip, turn, is_up, retry_after),
    };
    let mut out = explain(&decision, policy, is_up, is_drained);
    out["decided_by"] = json!(if recognized.is_some() {
        "tenant"
    } else {
        "geoip"
    });
    out["tenant"] = match recognized {
        None => Value::Null,
        Some(r) => {
            let t = tenancy.tenants.get(r.tenant);
            json!({
                "name": t.name,
                "recognized_by": r.source.as_str(),
                "pinned_to": policy.jurisdiction(t.jurisdiction).name,
                "mismatch": t.mismatch.as_str(),
            })
        }
    };
    Ok(out)
}

/// The JSON explanation of `decision` under `policy`: each permitted data
/// centre `up` (taking uploads) and `drained` (taken out by an operator,
/// so not up though its upstreams may be healthy).
pub fn explain(
    d: &Decision,
    policy: &Policy,
    is_up: impl Fn(UpstreamId) -> bool,
    is_drained: impl Fn(DatacenterId) -> bool,
) -> Value {
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
                    "drained": is_drained(d),
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
