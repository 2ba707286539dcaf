//! `GET /api/v1/services/{name}/explain?name=NAME[&type=A|AAAA][&client=IP][&subnet=IP/LEN]`:
//! which backends a dns service answers a query for NAME with now, and why (the scheduler's
//! decision; `fulcrum_core::dns::explain`, read-only). `fulcrum ctl explain-dns` prints it.

use std::net::IpAddr;

use fulcrum_core::dns::explain::{explain, Decision, ExplainError, Explained, Question};
use fulcrum_core::dns::{ECS_V4_PREFIX, ECS_V6_PREFIX};
use fulcrum_state::snapshot::{ServiceRt, Shared};
use serde_json::{json, Value};

use crate::admin::ApiError;

/// The query, parsed.
#[derive(Debug, Clone)]
pub struct Query {
    pub name: String,
    pub v4: bool,
    pub client: Option<IpAddr>,
    pub subnet: Option<(IpAddr, u8)>,
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

/// Parses the query string (see the module doc).
///
/// # Errors
/// A missing name, an unknown parameter, a bad type, address or subnet.
pub fn query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query {
        name: String::new(),
        v4: true,
        client: None,
        subnet: None,
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*k {
            "name" => q.name = v.into_owned(),
            "type" => {
                q.v4 = match v.to_ascii_uppercase().as_str() {
                    "A" => true,
                    "AAAA" => false,
                    _ => return Err(bad(format!("invalid type {v:?}: valid: A, AAAA"))),
                }
            }
            "client" => {
                q.client = Some(v.parse().map_err(|_| {
                    bad(format!(
                        "invalid client {v:?}: write the query's source IP, e.g. 198.18.1.3"
                    ))
                })?);
            }
            "subnet" => q.subnet = Some(subnet(&v)?),
            _ => {
                return Err(bad(format!(
                    "unknown query parameter {k:?}; valid: name, type, client, subnet"
                )))
            }
        }
    }
    if q.name.is_empty() {
        return Err(bad(
            "missing name= (a name of the dns service's zone, e.g. www.example.test)".into(),
        ));
    }
    Ok(q)
}

fn subnet(v: &str) -> Result<(IpAddr, u8), ApiError> {
    let err = || {
        bad(format!(
            "invalid subnet {v:?}: write IP/LEN (the EDNS Client Subnet), e.g. 198.18.7.0/24"
        ))
    };
    let (ip, len) = v.split_once('/').ok_or_else(err)?;
    let ip: IpAddr = ip.parse().map_err(|_| err())?;
    let len: u8 = len.parse().map_err(|_| err())?;
    if len > if ip.is_ipv4() { 32 } else { 128 } {
        return Err(err());
    }
    Ok((ip, len))
}

/// The explanation of `q` for the dns service `svc`.
///
/// # Errors
/// `svc` is not a dns service; the name is no DNS name.
pub fn explain_dns(shared: &Shared, svc: &ServiceRt, q: &Query) -> Result<Value, ApiError> {
    let dns = svc.dns.as_ref().ok_or_else(|| {
        ApiError::NotFound(format!(
            "service {:?} is {}, not a dns service; explain a pool with /api/v1/pools/POOL/explain",
            svc.name,
            svc.protocol.as_str()
        ))
    })?;
    let question = Question {
        name: &q.name,
        v4: q.v4,
        client: q.client,
        subnet: q.subnet,
        now: shared.now(),
    };
    let mut out = json!({
        "service": svc.name,
        "zone": dns.zone.origin(),
        "name": q.name,
        "type": if q.v4 { "A" } else { "AAAA" },
        "client": q.client.map(|c| c.to_string()),
        "subnet": q.subnet.map(|(a, l)| format!("{a}/{l}")),
    });
    let e = match explain(&dns.zone, dns.pools.as_slice(), &question) {
        Ok(e) => e,
        Err(ExplainError::BadName(..)) => {
            return Err(bad(format!(
                "name {:?} is no DNS name; e.g. www.example.test",
                q.name
            )))
        }
        Err(why @ ExplainError::OutsideZone { .. }) => {
            out["decision"] = json!("refused");
            out["reason"] = json!(why.to_string());
            return Ok(out);
        }
        Err(why @ ExplainError::NotAName { .. }) => {
            out["decision"] = json!("zone");
            out["reason"] = json!(why.to_string());
            return Ok(out);
        }
    };
    let Some(pool) = dns.pools.get(e.pool) else {
        return Err(ApiError::Internal("the name's pool is gone".into()));
    };
    let kind = pool.kind.as_str();
    let (decision, reason) = decision(&e, kind, pool.kind.is_hashing());
    out["pool"] = json!(pool.name);
    out["scheduler"] = json!(kind);
    out["ttl"] = json!(e.ttl);
    out["max_answers"] = json!(e.max_answers);
    out["key"] = json!(e.key.map(|k| k.to_string()));
    out["key_prefix"] = json!(e.key_prefix);
    out["scope"] = json!(e.scope);
    out["decision"] = json!(decision);
    out["reason"] = json!(reason);
    out["eligible_backends"] = json!(pool.backends.iter().filter(|b| b.is_eligible()).count());
    out["total_backends"] = json!(pool.backends.len());
    out["backends"] = e
        .backends
        .iter()
        .filter_map(|&i| pool.backends.get(i))
        .map(|b| {
            json!({
                "address": b.address.ip().to_string(),
                "weight": b.weight.get(),
                "state": b.state.as_str(),
            })
        })
        .collect();
    Ok(out)
}

/// The decision's name and the reason given for it.
fn decision(e: &Explained, kind: &str, hashing: bool) -> (&'static str, String) {
    let key_text = match (e.key, e.key_prefix) {
        (Some(k), 0) => format!("the client address {k}"),
        (Some(k), p) => format!("the ECS subnet {k}/{p}"),
        (None, _) => String::new(),
    };
    let n = e.backends.len();
    match e.decision {
        Decision::Hash => (
            "hash",
            format!(
                "{kind} hashes {key_text} (ECS cut to at most /{ECS_V4_PREFIX} or /{ECS_V6_PREFIX}): \
                 this client gets these {n} backends in this order, as long as the pool's \
                 eligible backends stay the same"
            ),
        ),
        Decision::Candidates if hashing => (
            "candidates",
            format!(
                "{kind} hashes the client: give client= or subnet= to see its subset; each \
                 answer holds up to {} of these {n} eligible backends",
                e.max_answers
            ),
        ),
        Decision::Candidates => (
            "candidates",
            format!(
                "{kind} decides by the moment (rotation, weights, load or chance): each answer \
                 holds up to {} of these {n} eligible backends",
                e.max_answers
            ),
        ),
        Decision::FailOpen => (
            "fail_open",
            format!(
                "no backend of the family is up: the answer fails open with every one of them \
                 (up to {}), from a random one on, TTL {} s",
                e.max_answers, e.ttl
            ),
        ),
        Decision::NoData => (
            "nodata",
            "the pool has no backend of this address family: NOERROR, no answer (NODATA)".into(),
        ),
    }
}
