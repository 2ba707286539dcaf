//! `explain` of a dns service: which backends a query for a name gets now, and why,
//! changing nothing (`GET /api/v1/services/{name}/explain`, `fulcrum ctl explain-dns`).
//! The hashing schedulers (sh, maglev, `ring_hash`) answer from the key
//! alone, so their subset is [`super::subset`] itself (the function every query runs; it
//! moves no state for them). The others (rr, wrr, lc, wlc, random, p2c, ...) answer by the
//! moment: a subset would be a guess, so the eligible candidates are listed instead, as
//! `choice`'s explain mode names no backend for them. With no backend of the family up, the
//! answer fails open: every backend of the family, from a random one on.

use std::net::IpAddr;

use hickory_proto::rr::{LowerName, Name};

use super::{mask, subset, Pools, Zone, ECS_V4_PREFIX, ECS_V6_PREFIX, FAIL_OPEN_TTL};
use crate::choice::Pool as _;
use crate::model::Now;

/// What is asked: a name, the family, the client and perhaps its ECS subnet.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub name: &'a str,
    /// A (else AAAA).
    pub v4: bool,
    /// The source address of the query (`None`: not given; the hashing schedulers' subset
    /// then needs `subnet`).
    pub client: Option<IpAddr>,
    /// EDNS Client Subnet: address and source prefix (used as the key when above 0).
    pub subnet: Option<(IpAddr, u8)>,
    pub now: Now,
}

/// How the answer is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A hashing scheduler: `backends` is the answer, in order, for this key.
    Hash,
    /// `backends` are the candidates (the eligible backends of the family), each query
    /// takes up to `max_answers` of them: which ones depends on the moment (rr, wrr,
    /// random, ...), or for a hashing scheduler on the client, which was not given.
    Candidates,
    /// No backend of the family is up: every one of them, from a random one on, TTL at
    /// most [`FAIL_OPEN_TTL`].
    FailOpen,
    /// The pool has no backend of the family: NODATA.
    NoData,
}

/// The explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// Index into [`Zone::pools`].
    pub pool: usize,
    pub ttl: u32,
    pub max_answers: usize,
    /// The scheduler's key: the ECS subnet cut to at most /24 or /56, else the client.
    pub key: Option<IpAddr>,
    /// The prefix of `key` (0: the client's address) and the ECS scope the answer carries.
    pub key_prefix: u8,
    pub scope: u8,
    pub decision: Decision,
    /// Backend indices into the pool (see [`Decision`]).
    pub backends: Vec<usize>,
}

/// Why there is nothing to explain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("`{0}` is no DNS name: {1}")]
    BadName(String, String),
    #[error("`{name}` is outside the zone `{origin}`: the answer is REFUSED")]
    OutsideZone { name: String, origin: String },
    #[error("`{name}` is not a configured name of the zone `{origin}`: answered from the zone (SOA, NS, NXDOMAIN or NODATA), no backends")]
    NotAName { name: String, origin: String },
}

/// Explains the answer to `q` (see the module doc).
///
/// # Errors
/// The name does not parse, is outside the zone or is not one of its answered names.
pub fn explain<S: Pools + ?Sized>(
    zone: &Zone,
    pools: &S,
    q: &Question<'_>,
) -> Result<Explained, ExplainError> {
    let mut name = Name::from_ascii(q.name)
        .map_err(|e| ExplainError::BadName(q.name.to_owned(), e.to_string()))?;
    name.set_fqdn(true);
    let lower = LowerName::new(&name);
    if !zone.origin.zone_of(&lower) {
        return Err(ExplainError::OutsideZone {
            name: name.to_string(),
            origin: zone.origin(),
        });
    }
    let not_a_name = || ExplainError::NotAName {
        name: name.to_string(),
        origin: zone.origin(),
    };
    let entry = zone.names.get(&lower).ok_or_else(not_a_name)?;
    let pool = pools.pool(entry.pool).ok_or_else(not_a_name)?;
    let (key, key_prefix) = match q.subnet {
        Some((addr, bits)) if bits > 0 => {
            let cap = if addr.is_ipv4() {
                ECS_V4_PREFIX
            } else {
                ECS_V6_PREFIX
            };
            let bits = bits.min(cap);
            (Some(mask(addr, bits)), bits)
        }
        _ => (q.client, 0),
    };
    let backends = pool.backends();
    let family: Vec<usize> = (0..backends.len())
        .filter(|&i| backends.get(i).is_some_and(|b| b.address.is_ipv4() == q.v4))
        .collect();
    let eligible: Vec<usize> = family
        .iter()
        .copied()
        .filter(|&i| {
            backends
                .get(i)
                .is_some_and(crate::model::Backend::is_eligible)
        })
        .collect();
    let hashing = pool.scheduler().kind().is_hashing();
    let (decision, chosen) = if family.is_empty() {
        (Decision::NoData, Vec::new())
    } else if eligible.is_empty() {
        let any = key.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let all = picks(pool, q.v4, entry.max_answers, any, q.now);
        (Decision::FailOpen, all)
    } else if let (true, Some(key)) = (hashing, key) {
        let picked = picks(pool, q.v4, entry.max_answers, key, q.now);
        (Decision::Hash, picked)
    } else {
        (Decision::Candidates, eligible)
    };
    Ok(Explained {
        pool: entry.pool,
        ttl: if decision == Decision::FailOpen {
            entry.ttl.min(FAIL_OPEN_TTL)
        } else {
            entry.ttl
        },
        max_answers: entry.max_answers,
        key,
        key_prefix,
        scope: if decision == Decision::Hash {
            key_prefix
        } else {
            0
        },
        decision,
        backends: chosen,
    })
}

/// The backends (indices in `pool`) a query keyed by `key` is answered with: the same
/// subset function every query runs.
fn picks<P: crate::choice::Pool>(
    pool: &P,
    v4: bool,
    max: usize,
    key: IpAddr,
    now: crate::model::Now,
) -> Vec<usize> {
    let mut out = Vec::new();
    subset(pool, 0, v4, max, key, 0, now, &mut out);
    out.into_iter().map(|(_, i)| i).collect()
}
