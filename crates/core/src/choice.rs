//! The one backend choice for a new flow or request. The L4 data path and the HTTP proxy
//! (through `fulcrum_state::snapshot::PoolRt::choose`) and the admin API's `explain`
//! (through `PoolRt::explain`) all call [`choose`], so `explain` says what traffic does.
//!
//! In order:
//! 1. the HTTP sticky cookie, if it names a backend that takes new flows and was not tried;
//! 2. the persistence table (ipvsadm `-p`, keyed by the client IP): a live entry whose
//!    backend takes new flows and was not tried. Pools hashed by a `header:`/`cookie:` key
//!    place each request by its key, so they do not consult it;
//! 3. the pool's locality ([`crate::locality`]), if it has a plan: a zone by its weights
//!    (hashing schedulers: by a mix of the hash below, so a flow keeps its zone; the others:
//!    by the random number), then the pool's scheduler restricted to that zone. If that zone
//!    has nothing left for this flow, the pool's scheduler over every zone;
//! 4. the scheduler. Hashing schedulers (`sh`, `maglev`, `ring_hash`) get the hash of the pool's
//!    hash key: of the flow's addresses, or of the request's header or cookie; a request
//!    without that value (or a flow that is no request) is placed by a random number
//!    ([`Why::KeyMissing`]).
//!
//! [`Mode::Explain`] takes the same steps without changing anything: the persistence table is
//! only peeked at and no scheduler is asked whose answer moves its state or depends on the
//! moment (rr, wrr, lc, wlc, random, p2c), so those give no backend ([`Why::Scheduler`]).
//!
//! No allocation and no lock here: `tried` is the caller's slice, and the caller holds the
//! persistence table (locked, when shared) across the lookup, the pick and the insert, so two
//! flows of one client racing each other agree on its backend.

use crate::flow::{FlowKey, FlowTable};
use crate::hash::{flow_hash, hash_bytes};
use crate::locality::{zone_key, ZonePlan};
use crate::model::{Backend, FlowTuple, HashKey, Now};
use crate::sched::{Loads, PickError, PickRequest, Scheduler};

/// A pool as the choice sees it.
pub trait Pool: Loads {
    /// Backends with their effective state; the scheduler indexes into this.
    fn backends(&self) -> &[Backend];
    /// The scheduler built over [`Pool::backends`].
    fn scheduler(&self) -> &dyn Scheduler;
    /// What the hashing schedulers hash.
    fn hash_key(&self) -> &HashKey;
    /// The stable id of the backend at `idx` (what the persistence table stores).
    fn backend_id(&self, idx: usize) -> Option<u32>;
    /// The index of the backend with the stable id `id`, if it is still in the pool.
    fn index_of(&self, id: u32) -> Option<usize>;
    /// The pool's locality plan, if it has `[pool.locality]` and a zone can take a flow.
    fn locality(&self) -> Option<&ZonePlan> {
        None
    }
}

/// The value of a `header:NAME`/`cookie:NAME` hash key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKey<'a> {
    /// No request: an L4 flow, or `explain`, which has no request to read.
    NoRequest,
    /// The request's value of the key (`None`: the request has none).
    Value(Option<&'a [u8]>),
}

/// The flow or request being placed.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    /// Client and service address: the persistence key is the client IP, and the address
    /// hash keys (`src_ip`, `src_ip_port`, `five_tuple`) hash these.
    pub tuple: FlowTuple,
    /// The request's value of a `header:`/`cookie:` hash key.
    pub request: RequestKey<'a>,
    /// HTTP: the backend the sticky cookie names.
    pub sticky: Option<usize>,
    /// Backend indices already tried for this flow or request: never chosen again.
    pub tried: &'a [usize],
    /// A fresh random number from the caller (random, p2c, and a missing hash key).
    pub random: u64,
    pub now: Now,
}

impl<'a> Flow<'a> {
    /// An L4 flow (no request, no sticky cookie).
    pub fn l4(tuple: FlowTuple, tried: &'a [usize], random: u64, now: Now) -> Self {
        Self {
            tuple,
            request: RequestKey::NoRequest,
            sticky: None,
            tried,
            random,
            now,
        }
    }
}

/// Picking for traffic, or explaining without changing anything. Each carries the pool's
/// persistence table, if it has one (held by the caller for the whole choice).
#[derive(Debug)]
pub enum Mode<'t> {
    /// The data path: a persistence entry is refreshed or inserted, schedulers with a
    /// position (rr, wrr, lc, wlc) advance it.
    Pick(Option<&'t mut FlowTable>),
    /// `explain`: the table is only peeked at and no scheduler state moves. `kept` is set
    /// to the client's live persistence entry, if the choice looked at one (also when the
    /// choice then fails).
    Explain {
        table: Option<&'t FlowTable>,
        kept: &'t mut Option<Kept>,
    },
}

/// What decided the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The HTTP sticky cookie named it.
    Sticky,
    /// The client has a live persistence entry for it.
    Persistence,
    /// A hashing scheduler mapped this hash of the pool's hash key to it.
    Hash(u32),
    /// The pool hashes a `header:`/`cookie:` key and the request has no value for it (or
    /// the flow is no request): a random hash placed it.
    KeyMissing,
    /// `explain` only: the pool hashes a `header:`/`cookie:` key, which comes from each
    /// request; no backend is named.
    RequestKey,
    /// A scheduler that does not hash (rr, wrr, lc, wlc, random, p2c) picked it. `explain`:
    /// no backend is named, it depends on the scheduler's state at that moment.
    Scheduler,
}

/// The client's live persistence entry, whether or not it decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// Its backend (`None`: no longer in the pool).
    pub backend: Option<usize>,
    /// Whether that backend takes new flows and was not tried (then it decided).
    pub usable: bool,
}

/// The backend (an index into [`Pool::backends`]) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Always `Some` in [`Mode::Pick`]. `None` in [`Mode::Explain`] when the choice
    /// depends on what explain cannot see ([`Why::Scheduler`], [`Why::RequestKey`]).
    pub backend: Option<usize>,
    pub why: Why,
}

fn usable(pool: &impl Pool, i: usize, tried: &[usize]) -> bool {
    pool.backends().get(i).is_some_and(Backend::is_eligible) && !tried.contains(&i)
}

/// The hash of the pool's hash key for this flow: `Ok(hash)`, or `Err(why)` when the key
/// has no value here.
fn key_hash(key: &HashKey, flow: &Flow<'_>) -> Result<u32, Why> {
    match (flow_hash(key, &flow.tuple), flow.request) {
        (Some(hash), _) => Ok(hash),
        (None, RequestKey::Value(Some(v))) => Ok(hash_bytes(v)),
        (None, RequestKey::Value(None)) => Err(Why::KeyMissing),
        (None, RequestKey::NoRequest) => Err(Why::RequestKey),
    }
}

/// Chooses the backend of a new flow or request (see the module doc).
///
/// # Errors
/// [`PickError`] when no eligible backend is left (none eligible, or all tried).
pub fn choose(pool: &impl Pool, flow: &Flow<'_>, mode: Mode<'_>) -> Result<Choice, PickError> {
    let done = |i, why| {
        Ok(Choice {
            backend: Some(i),
            why,
        })
    };
    if let Some(i) = flow.sticky.filter(|&i| usable(pool, i, flow.tried)) {
        return done(i, Why::Sticky);
    }
    // Request-keyed pools place each request by its key, not by the client.
    let consult = !pool.hash_key().is_http_only();
    let key = || FlowKey::client_ip(flow.tuple.src.ip());
    let explain = matches!(mode, Mode::Explain { .. });
    let mut insert = None;
    let kept = match mode {
        Mode::Pick(Some(table)) if consult => {
            let hit = table.get(&key(), flow.now);
            insert = Some(table);
            hit.map(|id| keep(pool, id, flow.tried))
        }
        Mode::Explain {
            table: Some(table),
            kept,
        } if consult => {
            *kept = table
                .peek(&key(), flow.now)
                .map(|id| keep(pool, id, flow.tried));
            *kept
        }
        Mode::Pick(_) | Mode::Explain { .. } => None,
    };
    if let Some(Kept {
        backend: Some(i),
        usable: true,
    }) = kept
    {
        return done(i, Why::Persistence);
    }
    let sched = pool.scheduler();
    let hash = if sched.kind().is_hashing() {
        key_hash(pool.hash_key(), flow)
    } else {
        Err(Why::Scheduler)
    };
    let (hash, why) = match hash {
        Ok(h) => (h, Why::Hash(h)),
        Err(why) if explain => return Ok(Choice { backend: None, why }),
        // A missing key: the random number's high half stands in for the hash (schedulers
        // that do not hash ignore it).
        Err(why) => ((flow.random >> 32) as u32, why),
    };
    let req = PickRequest {
        hash,
        random: flow.random,
        loads: pool,
        exclude: flow.tried,
        now: flow.now,
    };
    let zone_r = if sched.kind().is_hashing() {
        hash
    } else {
        // The low half: the high half stood in for a hash above.
        flow.random as u32
    };
    let zoned = pool
        .locality()
        .and_then(|plan| plan.pick(zone_key(zone_r)))
        .and_then(|zone| zone.scheduler.pick(&req).ok());
    let i = match zoned {
        Some(i) => i,
        None => sched.pick(&req)?,
    };
    if let (Some(table), Some(id)) = (insert, pool.backend_id(i)) {
        table.insert(&key(), id, flow.now);
    }
    done(i, why)
}

fn keep(pool: &impl Pool, id: u32, tried: &[usize]) -> Kept {
    let backend = pool.index_of(id);
    Kept {
        backend,
        usable: backend.is_some_and(|i| usable(pool, i, tried)),
    }
}
