//! The authoritative DNS answerer of `protocol = "dns"` services, sans IO: a query's bytes
//! in, the reply's bytes (or nothing: dropped) out. UDP, TCP and HTTP-DNS (RFC 8484 and the
//! JSON API) all call [`answer`], so they give the same answers (docs/dns.md).
//!
//! The wire format is hickory-proto's (decoding has no IO and bounds names, labels and
//! compression pointers); the decisions are here:
//! - which backends answer: the pool's, through [`crate::choice::choose`] (the one backend
//!   choice), `max_answers` times with the backends already chosen (and those of the other
//!   address family) as "tried". So rr rotates, wrr and random weigh, and the hashing
//!   schedulers (sh, maglev, `ring_hash`) hash the client: the EDNS Client Subnet (RFC 7871)
//!   when the query has one, else the source address;
//! - no backend up: fail open, every backend of the family (see [`FAIL_OPEN_TTL`]);
//! - SOA and NS at the apex, NXDOMAIN, NODATA (also for empty non-terminals), REFUSED for
//!   names outside the zone, NOTIMP for other opcodes, FORMERR for what does not decode,
//!   BADVERS for EDNS versions past 0, nothing at all for responses and for packets shorter
//!   than a header;
//! - the reply's size: 512 bytes without EDNS, the client's EDNS payload size (at most
//!   [`EDNS_PAYLOAD`]) with it, 65535 over TCP; a larger answer goes out with TC set and no
//!   records, so the client asks again over TCP;
//! - response rate limiting of UDP ([`Rrl`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
pub use hickory_proto::rr::RecordType;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::choice::{self, Flow, Mode, Pool as _};

pub mod explain;
mod fast;
use crate::config::{DnsConfig, DnsRrl};
use crate::model::{FlowTuple, Now, Proto};

/// The UDP payload Fulcrum advertises and answers with at most (the DNS flag day 2020
/// value: no IP fragmentation on common paths).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Without EDNS (RFC 1035).
pub const CLASSIC_PAYLOAD: usize = 512;
/// The TTL of fail-open answers (every backend down): short, so that answers recover
/// soon after the backends do.
pub const FAIL_OPEN_TTL: u32 = 5;
/// TTL of the SOA and NS records.
pub const ZONE_TTL: u32 = 3600;
/// The client prefix an ECS address is cut to before it is hashed (RFC 7871 section 11.1
/// advises resolvers to send at most /24 and /56; a longer one is cut here too).
pub const ECS_V4_PREFIX: u8 = 24;
/// See [`ECS_V4_PREFIX`].
pub const ECS_V6_PREFIX: u8 = 56;
/// Slots of the [`Rrl`] table.
pub const RRL_SLOTS: usize = 1 << 14;

/// A configuration the answerer cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("`{name}` is no DNS name: {why}")]
    BadName { name: String, why: String },
}

/// One answered name.
#[derive(Debug, Clone)]
struct Entry {
    name: Name,
    /// Index into [`Zone::pools`].
    pool: usize,
    ttl: u32,
    max_answers: usize,
}

/// A name as the fast path looks it up (see `fast`).
#[derive(Debug)]
struct FastEntry {
    /// The owner name as configured, wire form (what the hickory path writes).
    owner: Box<[u8]>,
    pool: usize,
    ttl: u32,
    max_answers: usize,
}

/// A dns service's zone, ready to answer from.
#[derive(Debug)]
pub struct Zone {
    origin: LowerName,
    /// The names by their lower-cased wire form (the fast path's lookup).
    fast: HashMap<Box<[u8]>, FastEntry>,
    soa: Record,
    ns: Vec<Record>,
    names: HashMap<LowerName, Entry>,
    /// Names with names below them but no records of their own (NODATA, not NXDOMAIN).
    empty_non_terminals: HashSet<LowerName>,
    /// Pool names in the order entries index them.
    pools: Vec<String>,
    negative_ttl: u32,
    rrl: DnsRrl,
    /// The fast path's subsets of `rr`/`wrr` pools ([`Zone::prepare`]).
    rotations: fast::Rotations,
}

fn name(text: &str) -> Result<Name, ZoneError> {
    let mut n = Name::from_ascii(text).map_err(|e| ZoneError::BadName {
        name: text.into(),
        why: e.to_string(),
    })?;
    n.set_fqdn(true);
    Ok(n)
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl Zone {
    /// The zone of a dns service's config; `serial` is the SOA serial (the caller's
    /// snapshot generation: it grows with every change).
    ///
    /// # Errors
    /// A name hickory does not take (the config parser checks names first, so only a
    /// config built by hand gets here).
    pub fn new(cfg: &DnsConfig, serial: u32) -> Result<Self, ZoneError> {
        let origin = name(&cfg.origin)?;
        let mut pools: Vec<String> = Vec::new();
        let mut names = HashMap::with_capacity(cfg.names.len());
        let mut ents = HashSet::new();
        let lower_origin = LowerName::new(&origin);
        for n in &cfg.names {
            let owner = name(&n.name)?;
            let pool = pools.iter().position(|p| *p == n.pool).unwrap_or_else(|| {
                pools.push(n.pool.clone());
                pools.len() - 1
            });
            let mut up = owner.base_name();
            while up.num_labels() > origin.num_labels() {
                ents.insert(LowerName::new(&up));
                up = up.base_name();
            }
            names.insert(
                LowerName::new(&owner),
                Entry {
                    name: owner,
                    pool,
                    ttl: secs(n.ttl),
                    max_answers: usize::from(n.max_answers.get()),
                },
            );
        }
        ents.retain(|e| !names.contains_key(e));
        let fast = names
            .values()
            .filter(|e| lower_origin.zone_of(&LowerName::new(&e.name)))
            .filter_map(|e| {
                let owner: Box<[u8]> =
                    hickory_proto::serialize::binary::BinEncodable::to_bytes(&e.name)
                        .ok()?
                        .into();
                let key = owner.iter().map(u8::to_ascii_lowercase).collect();
                Some((
                    key,
                    FastEntry {
                        owner,
                        pool: e.pool,
                        ttl: e.ttl,
                        max_answers: e.max_answers,
                    },
                ))
            })
            .collect();
        // Negative answers are cached for min(SOA TTL, MINIMUM) (RFC 2308): as long as
        // the shortest answer, so a name added later shows as soon as an answer changes.
        let negative_ttl = cfg
            .names
            .iter()
            .map(|n| secs(n.ttl))
            .min()
            .unwrap_or(30)
            .min(ZONE_TTL);
        let ns_names = cfg
            .ns
            .iter()
            .map(|n| name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mname = ns_names.first().cloned().unwrap_or_else(|| origin.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(&origin))
            .unwrap_or_else(|_| origin.clone());
        let soa = Record::from_rdata(
            origin.clone(),
            negative_ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                serial,
                3600,
                600,
                604_800,
                negative_ttl,
            )),
        );
        let ns = ns_names
            .into_iter()
            .map(|n| Record::from_rdata(origin.clone(), ZONE_TTL, RData::NS(NS(n))))
            .collect();
        Ok(Self {
            origin: lower_origin,
            fast,
            soa,
            ns,
            names,
            empty_non_terminals: ents,
            pools,
            negative_ttl,
            rrl: cfg.rrl,
            rotations: fast::Rotations::default(),
        })
    }

    /// Precomputes, for the `rr` and `wrr` pools of `pools`, the subset a query gets at
    /// each position of the scheduler's rotation (see `fast::Rotations`), so that the fast
    /// path answers such a query with one counter step and a copy. `pools` must be the
    /// pools this zone answers from (a table is used only while its pool's scheduler is
    /// the one it was computed from; answers are the same with or without it).
    pub fn prepare<S: Pools + ?Sized>(&mut self, pools: &S) {
        self.rotations = fast::Rotations::new(pools, self.pools.len());
    }

    /// The pools the names use; [`Pools::pool`] is asked for these indices.
    pub fn pools(&self) -> &[String] {
        &self.pools
    }

    /// The rate limit of UDP answers.
    pub fn rrl(&self) -> DnsRrl {
        self.rrl
    }

    /// The zone's apex.
    pub fn origin(&self) -> String {
        self.origin.to_string()
    }

    /// The answered names with their pool, TTL and answer size (admin API, `explain`).
    pub fn names(&self) -> impl Iterator<Item = (String, &str, u32, usize)> + '_ {
        self.names.values().map(|e| {
            (
                e.name.to_string(),
                self.pools.get(e.pool).map_or("", String::as_str),
                e.ttl,
                e.max_answers,
            )
        })
    }
}

/// The pools a zone's names use, by index ([`Zone::pools`]).
pub trait Pools {
    type Pool: choice::Pool;
    fn pool(&self, idx: usize) -> Option<&Self::Pool>;
}

impl<P: choice::Pool> Pools for [Arc<P>] {
    type Pool = P;
    fn pool(&self, idx: usize) -> Option<&P> {
        self.get(idx).map(|p| &**p)
    }
}

impl<P: choice::Pool> Pools for [P] {
    type Pool = P;
    fn pool(&self, idx: usize) -> Option<&P> {
        self.get(idx)
    }
}

/// How a query came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    /// RFC 8484 or the JSON API: no size limit, no rate limit.
    Https,
}

/// One query.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub packet: &'a [u8],
    /// The source address (the key of the hashing schedulers without ECS, and of RRL).
    pub client: IpAddr,
    pub transport: Transport,
    /// A fresh random number (random scheduler, fail-open rotation).
    pub random: u64,
    pub now: Now,
}

/// Why a packet got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a header, or a response.
    Malformed,
    /// Over the rate limit and not slipped.
    RateLimited,
}

/// What [`answer`] decided.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The reply's bytes; `None`: dropped (see `dropped`).
    pub reply: Option<Vec<u8>>,
    pub dropped: Option<Dropped>,
    /// The question's type, if the packet had one question.
    pub qtype: Option<RecordType>,
    /// The reply's response code (`NoError` when dropped).
    pub rcode: ResponseCode,
    /// The reply went out truncated (TC): too large, or slipped by RRL.
    pub truncated: bool,
    /// The backends in the answer: (index into [`Zone::pools`], backend index).
    pub answered: Vec<(usize, usize)>,
}

/// What the RRL says of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RrlVerdict {
    Send,
    /// Send a truncated reply (TC, no records): a real client retries over TCP.
    Slip,
    Drop,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    prefix: u128,
    tokens: f64,
    last: Now,
    over: u32,
}

/// Response rate limiting, as BIND's RRL but per client prefix for every response: each
/// IPv4 /24 and IPv6 /56 has a token bucket of `responses_per_second` (refilled at that
/// rate, holding one second's worth); past it, every `slip`-th response is sent truncated
/// and the others are dropped. A spoofed flood in a victim's name thus reaches the victim at
/// the limit and at a fraction of the size; other prefixes are not touched. The table has
/// [`RRL_SLOTS`] slots indexed by a hash of the prefix; a prefix taking a slot another one
/// held starts with a full bucket. One table per worker socket: with W workers a prefix
/// whose queries the kernel spreads over several gets up to W times the rate.
#[derive(Debug)]
pub struct Rrl {
    slots: Vec<Slot>,
}

impl Default for Rrl {
    fn default() -> Self {
        Self {
            slots: vec![Slot::default(); RRL_SLOTS],
        }
    }
}

fn prefix_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4) & 0xffff_ff00) | (1 << 127),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 72) - 1),
    }
}

impl Rrl {
    /// The verdict on one more response to `client` at `now`.
    pub fn check(&mut self, client: IpAddr, now: Now, limit: DnsRrl) -> RrlVerdict {
        let prefix = prefix_of(client);
        let h = crate::sched::p2c::splitmix64((prefix >> 64) as u64 ^ (prefix as u64));
        let len = self.slots.len().max(1);
        let Some(slot) = self.slots.get_mut((h as usize) % len) else {
            return RrlVerdict::Send;
        };
        let rate = f64::from(limit.responses_per_second.get());
        if slot.prefix != prefix || slot.last.is_zero() {
            *slot = Slot {
                prefix,
                tokens: rate,
                last: now,
                over: 0,
            };
        } else {
            let dt = now.saturating_sub(slot.last).as_secs_f64();
            slot.tokens = (slot.tokens + dt * rate).min(rate);
            slot.last = now;
        }
        if slot.tokens >= 1.0 {
            slot.tokens -= 1.0;
            slot.over = 0;
            return RrlVerdict::Send;
        }
        slot.over = slot.over.wrapping_add(1);
        if limit.slip > 0 && slot.over % u32::from(limit.slip) == 0 {
            RrlVerdict::Slip
        } else {
            RrlVerdict::Drop
        }
    }
}

/// The client subnet of a query's ECS option: (address cut to its source prefix, source
/// prefix). `Err`: malformed (RFC 7871 7.1: FORMERR).
fn ecs(msg: &Message) -> Result<Option<ClientSubnet>, ()> {
    let Some(EdnsOption::Subnet(cs)) = msg
        .extensions()
        .as_ref()
        .and_then(|e| e.option(EdnsCode::Subnet))
    else {
        return Ok(None);
    };
    let max = if cs.addr().is_ipv4() { 32 } else { 128 };
    if cs.source_prefix() > max {
        return Err(());
    }
    Ok(Some(*cs))
}

fn mask(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(bits.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(bits.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

/// The fixed service side of the tuple the hashing schedulers hash, so that every
/// transport (and the HTTP listener) hashes a client alike.
const DNS_SIDE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53);

/// Pools of at most this many backends keep a query's "tried" list on the stack.
const STACK_TRIED: usize = 64;

/// Up to `max` backends of `pool` (index `pool_idx`) with addresses of the family (`v4`),
/// chosen by the pool's scheduler (see the module doc), distinct by IP, appended to `out`;
/// `true`: fail open (none was up). No allocation for pools of up to [`STACK_TRIED`]
/// backends.
#[allow(clippy::too_many_arguments)]
fn subset<P: choice::Pool>(
    pool: &P,
    pool_idx: usize,
    v4: bool,
    max: usize,
    key: IpAddr,
    random: u64,
    now: Now,
    out: &mut Vec<(usize, usize)>,
) -> bool {
    let backends = pool.backends();
    let base = out.len();
    let mut stack = [0usize; STACK_TRIED];
    let mut heap = Vec::new();
    let tried: &mut [usize] = if backends.len() <= STACK_TRIED {
        stack.get_mut(..backends.len()).unwrap_or_default()
    } else {
        heap.resize(backends.len(), 0);
        &mut heap
    };
    // The other family's backends start as tried.
    let mut n = 0;
    for (i, b) in backends.iter().enumerate() {
        if b.address.is_ipv4() != v4 {
            if let Some(t) = tried.get_mut(n) {
                *t = i;
                n += 1;
            }
        }
    }
    let family = backends.len() - n;
    let tuple = FlowTuple {
        src: SocketAddr::new(key, 0),
        dst: DNS_SIDE,
        proto: Proto::Udp,
    };
    let mut r = random;
    let mut picked = 0;
    while picked < max && n < backends.len() {
        r = crate::sched::p2c::splitmix64(r);
        let flow = Flow::l4(tuple, tried.get(..n).unwrap_or_default(), r, now);
        let Ok(choice::Choice {
            backend: Some(i), ..
        }) = choice::choose(pool, &flow, Mode::Pick(None))
        else {
            break;
        };
        out.push((pool_idx, i));
        picked += 1;
        let ip = backends.get(i).map(|b| b.address.ip());
        for (j, b) in backends.iter().enumerate() {
            if Some(b.address.ip()) == ip && !tried.get(..n).unwrap_or_default().contains(&j) {
                if let Some(t) = tried.get_mut(n) {
                    *t = j;
                    n += 1;
                }
            }
        }
    }
    if picked > 0 || family == 0 {
        return false;
    }
    // Fail open: every backend of the family (distinct by IP), from a random one on.
    let start = (random % family as u64) as usize;
    for from_start in [true, false] {
        let mut rank = 0;
        for (i, b) in backends.iter().enumerate() {
            if b.address.is_ipv4() != v4 {
                continue;
            }
            let take = (rank >= start) == from_start;
            rank += 1;
            if !take || picked >= max {
                continue;
            }
            let ip = b.address.ip();
            let seen = out
                .get(base..)
                .unwrap_or_default()
                .iter()
                .any(|&(_, o)| backends.get(o).map(|x| x.address.ip()) == Some(ip));
            if !seen {
                out.push((pool_idx, i));
                picked += 1;
            }
        }
    }
    true
}

/// What [`answer_into`] decided; the reply's bytes are in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// `Some`: no reply (the buffer is empty).
    pub dropped: Option<Dropped>,
    /// The question's type, if the packet had one question.
    pub qtype: Option<RecordType>,
    /// The reply's response code (`NoError` when dropped).
    pub rcode: ResponseCode,
    /// The reply went out truncated (TC): too large, or slipped by RRL.
    pub truncated: bool,
    /// The fast path (`fast`) wrote the reply, not hickory-proto.
    pub fast: bool,
}

impl Summary {
    fn dropped(why: Dropped, qtype: Option<RecordType>) -> Self {
        Self {
            dropped: Some(why),
            qtype,
            rcode: ResponseCode::NoError,
            truncated: false,
            fast: false,
        }
    }
}

/// Answers one query (see the module doc). `rrl`: the caller's table for UDP; `None` over
/// TCP and HTTPS. [`answer_into`] without the caller's buffers.
pub fn answer<S: Pools + ?Sized>(
    zone: &Zone,
    pools: &S,
    q: &Incoming<'_>,
    rrl: Option<&mut Rrl>,
) -> Outcome {
    let mut reply = Vec::new();
    let mut answered = Vec::new();
    let s = answer_into(zone, pools, q, rrl, &mut reply, &mut answered);
    outcome(s, reply, answered)
}

fn outcome(s: Summary, reply: Vec<u8>, answered: Vec<(usize, usize)>) -> Outcome {
    Outcome {
        reply: s.dropped.is_none().then_some(reply),
        dropped: s.dropped,
        qtype: s.qtype,
        rcode: s.rcode,
        truncated: s.truncated,
        answered,
    }
}

/// Answers one query (see the module doc) into the caller's buffers, which it clears
/// first: `reply` gets the reply's bytes (none when dropped), `answered` the backends in
/// the answer (index into [`Zone::pools`], backend index). With buffers kept across
/// queries, the common query (`fast`) allocates nothing.
pub fn answer_into<S: Pools + ?Sized>(
    zone: &Zone,
    pools: &S,
    q: &Incoming<'_>,
    rrl: Option<&mut Rrl>,
    reply: &mut Vec<u8>,
    answered: &mut Vec<(usize, usize)>,
) -> Summary {
    reply.clear();
    answered.clear();
    // Shorter than a header, or a response: dropped.
    let Some(&flags) = q.packet.get(2).filter(|_| q.packet.len() >= 12) else {
        return Summary::dropped(Dropped::Malformed, None);
    };
    if flags & 0x80 != 0 {
        return Summary::dropped(Dropped::Malformed, None);
    }
    let quick = fast::parse(q.packet);
    let parsed = if quick.is_some() {
        None
    } else {
        Some(Message::from_vec(q.packet))
    };
    let qtype = match (&quick, &parsed) {
        (Some(f), _) => Some(RecordType::from(f.qtype)),
        (None, Some(p)) => p.as_ref().ok().and_then(qtype_of),
        (None, None) => None,
    };
    let verdict = rrl_verdict(zone, q, rrl);
    if verdict == RrlVerdict::Drop {
        return Summary::dropped(Dropped::RateLimited, qtype);
    }
    if let (Some(f), RrlVerdict::Send) = (&quick, verdict) {
        if fast_answer(zone, pools, q, f, reply, answered) {
            return Summary {
                dropped: None,
                qtype,
                rcode: ResponseCode::NoError,
                truncated: false,
                fast: true,
            };
        }
    }
    let parsed = parsed.unwrap_or_else(|| Message::from_vec(q.packet));
    slow(zone, pools, q, verdict, parsed, qtype, reply, answered)
}

/// The type of a query's question, when it has exactly one.
#[inline]
fn qtype_of(m: &Message) -> Option<RecordType> {
    (m.queries().len() == 1)
        .then(|| m.queries().first().map(Query::query_type))
        .flatten()
}

/// Response rate limiting's verdict: over UDP with the caller's table, else send.
#[inline]
fn rrl_verdict(zone: &Zone, q: &Incoming<'_>, rrl: Option<&mut Rrl>) -> RrlVerdict {
    match (rrl, q.transport) {
        (Some(rrl), Transport::Udp) => rrl.check(q.client, q.now, zone.rrl),
        _ => RrlVerdict::Send,
    }
}

/// [`answer`] by hickory-proto alone, without the fast path: the reference the fast path is
/// tested against (`crates/core/tests/dns_fast.rs`, the `dns` fuzz target).
#[doc(hidden)]
pub fn answer_reference<S>(
    zone: &Zone,
    pools: &S,
    q: &Incoming<'_>,
    rrl: Option<&mut Rrl>,
) -> Outcome
where
    S: Pools + ?Sized,
{
    let (mut reply, mut answered) = (Vec::new(), Vec::new());
    let s = match Header::read(&mut BinDecoder::new(q.packet)) {
        Ok(h) if h.message_type() != MessageType::Response => {
            let parsed = Message::from_vec(q.packet);
            let qtype = parsed.as_ref().ok().and_then(qtype_of);
            match rrl_verdict(zone, q, rrl) {
                RrlVerdict::Drop => Summary::dropped(Dropped::RateLimited, qtype),
                verdict => slow(
                    zone,
                    pools,
                    q,
                    verdict,
                    parsed,
                    qtype,
                    &mut reply,
                    &mut answered,
                ),
            }
        }
        _ => Summary::dropped(Dropped::Malformed, None),
    };
    outcome(s, reply, answered)
}

/// The address the hashing schedulers key on, and its prefix length: the query's client
/// subnet (EDNS ECS: address, source prefix length, IPv4) masked to at most
/// [`ECS_V4_PREFIX`] or [`ECS_V6_PREFIX`] bits, else the client's address.
#[inline]
fn ecs_key(client: IpAddr, subnet: Option<(IpAddr, u8, bool)>) -> (IpAddr, u8) {
    match subnet {
        Some((addr, bits, v4)) if bits > 0 => {
            let bits = bits.min(if v4 { ECS_V4_PREFIX } else { ECS_V6_PREFIX });
            (mask(addr, bits), bits)
        }
        _ => (client, 0),
    }
}

impl Incoming<'_> {
    /// [`subset`] with this query's random draw and time.
    #[inline]
    fn subset<P: choice::Pool>(
        &self,
        pool: &P,
        pool_idx: usize,
        max: usize,
        v4: bool,
        key: IpAddr,
        out: &mut Vec<(usize, usize)>,
    ) -> bool {
        subset(pool, pool_idx, v4, max, key, self.random, self.now, out)
    }
}

/// The TTL of an answer of `answered` backends (capped when the pool failed `open`) and its
/// ECS scope: `scope_of` (the client prefix) when a hashing scheduler chose by it, else 0.
#[inline]
fn ttl_and_scope<P: choice::Pool>(
    pool: &P,
    ttl: u32,
    open: bool,
    answered: bool,
    scope_of: u8,
) -> (u32, u8) {
    let scope = if answered && !open && pool.scheduler().kind().is_hashing() {
        scope_of
    } else {
        0
    };
    (if open { ttl.min(FAIL_OPEN_TTL) } else { ttl }, scope)
}

/// The fast path (see `fast`): `true` when it wrote the reply. It declines, before any
/// scheduler is asked, whatever it does not answer exactly as [`slow`] would.
#[allow(clippy::too_many_lines)]
fn fast_answer<S: Pools + ?Sized>(
    zone: &Zone,
    pools: &S,
    q: &Incoming<'_>,
    f: &fast::Query<'_>,
    reply: &mut Vec<u8>,
    answered: &mut Vec<(usize, usize)>,
) -> bool {
    let v4 = match RecordType::from(f.qtype) {
        RecordType::A => true,
        RecordType::AAAA => false,
        _ => return false,
    };
    if f.qclass != u16::from(DNSClass::IN) {
        return false;
    }
    let Some(e) = f.lower.get(..f.lower_len).and_then(|k| zone.fast.get(k)) else {
        return false;
    };
    let Some(pool) = pools.pool(e.pool) else {
        return false;
    };
    let family = pool
        .backends()
        .iter()
        .filter(|b| b.address.is_ipv4() == v4)
        .count();
    if family == 0 {
        return false; // NODATA, with the SOA: the hickory path's
    }
    let limit = match (q.transport, f.edns) {
        (Transport::Tcp | Transport::Https, _) => usize::from(u16::MAX),
        (Transport::Udp, Some((payload, _))) => usize::from(payload.clamp(512, EDNS_PAYLOAD)),
        (Transport::Udp, None) => CLASSIC_PAYLOAD,
    };
    let mut owner = fast::Owner::new(&e.owner, f.qname);
    let rdlen = if v4 { 4 } else { 16 };
    let opt_len = f.edns.map_or(0, |(_, ecs)| {
        11 + ecs.map_or(0, |c| 8 + usize::from(c.source).div_ceil(8))
    });
    let most = 12
        + f.qname.len()
        + 4
        + e.max_answers.min(family) * (owner.max_len() + 10 + rdlen)
        + opt_len;
    if most > limit {
        return false; // might be truncated: the hickory path's
    }
    let subnet = f.edns.and_then(|(_, ecs)| ecs);
    let (key, scope_of) = ecs_key(q.client, subnet.map(|cs| (cs.addr, cs.source, cs.v4)));
    // rr/wrr: the answer precomputed for this rotation position (`Zone::prepare`), else the
    // scheduler's subset now.
    let open = !zone
        .rotations
        .answer(pool, e.pool, v4, e.max_answers, answered)
        && q.subset(pool, e.pool, e.max_answers, v4, key, answered);
    let (ttl, scope) = ttl_and_scope(pool, e.ttl, open, !answered.is_empty(), scope_of);
    // Header: the id, QR, QUERY, AA, RD as asked; CD as asked, NOERROR.
    reply.extend_from_slice(&f.id);
    reply.push(0x80 | 0x04 | u8::from(f.rd));
    reply.push(if f.cd { 0x10 } else { 0 });
    reply.extend_from_slice(&1u16.to_be_bytes());
    let count_at = reply.len();
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&u16::from(f.edns.is_some()).to_be_bytes());
    reply.extend_from_slice(f.qname);
    reply.extend_from_slice(&f.qtype.to_be_bytes());
    reply.extend_from_slice(&f.qclass.to_be_bytes());
    let mut count: u16 = 0;
    for &(_, i) in answered.iter() {
        let Some(b) = pool.backends().get(i) else {
            continue;
        };
        owner.write(reply);
        reply.extend_from_slice(&f.qtype.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes());
        reply.extend_from_slice(&ttl.to_be_bytes());
        match b.address.ip() {
            IpAddr::V4(ip) => {
                reply.extend_from_slice(&4u16.to_be_bytes());
                reply.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                reply.extend_from_slice(&16u16.to_be_bytes());
                reply.extend_from_slice(&ip.octets());
            }
        }
        count += 1;
    }
    if let Some(c) = reply.get_mut(count_at..count_at + 2) {
        c.copy_from_slice(&count.to_be_bytes());
    }
    if let Some((_, ecs)) = f.edns {
        // OPT: root, type 41, our payload size, rcode/version/flags 0, ECS echoed.
        reply.push(0);
        reply.extend_from_slice(&41u16.to_be_bytes());
        reply.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0]);
        match ecs {
            None => reply.extend_from_slice(&[0, 0]),
            Some(cs) => {
                let n = usize::from(cs.source).div_ceil(8);
                let octets = match cs.addr {
                    IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                    IpAddr::V6(ip) => ip.octets(),
                };
                let bytes = if cs.v4 {
                    octets.get(12..12 + n)
                } else {
                    octets.get(..n)
                }
                .unwrap_or_default();
                let len = 4 + bytes.len() as u16;
                reply.extend_from_slice(&(len + 4).to_be_bytes());
                reply.extend_from_slice(&8u16.to_be_bytes());
                reply.extend_from_slice(&len.to_be_bytes());
                reply.extend_from_slice(&(if cs.v4 { 1u16 } else { 2u16 }).to_be_bytes());
                reply.push(cs.source);
                reply.push(scope);
                reply.extend_from_slice(bytes);
            }
        }
    }
    true
}

/// The hickory path: every query the fast path declines.
#[allow(clippy::too_many_arguments)]
fn slow<S: Pools + ?Sized>(
    zone: &Zone,
    pools: &S,
    q: &Incoming<'_>,
    verdict: RrlVerdict,
    parsed: Result<Message, hickory_proto::ProtoError>,
    qtype: Option<RecordType>,
    bytes: &mut Vec<u8>,
    answered: &mut Vec<(usize, usize)>,
) -> Summary {
    let Ok(msg) = parsed else {
        let (id, op) = Header::read(&mut BinDecoder::new(q.packet))
            .map_or((0, OpCode::Query), |h| (h.id(), h.op_code()));
        let reply = Message::error_msg(id, op, ResponseCode::FormErr);
        return finish(
            &reply,
            ResponseCode::FormErr,
            qtype,
            CLASSIC_PAYLOAD,
            bytes,
            answered,
        );
    };
    let limit = match (q.transport, msg.extensions()) {
        (Transport::Tcp | Transport::Https, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
        (Transport::Udp, None) => CLASSIC_PAYLOAD,
    };
    let mut reply = Message::new();
    reply
        .set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(msg.op_code())
        .set_recursion_desired(msg.recursion_desired())
        .set_checking_disabled(msg.checking_disabled());
    reply.add_queries(msg.queries().iter().cloned());
    let query_ecs = ecs(&msg);
    let mut edns = msg.extensions().as_ref().map(|_| {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        e
    });
    let mut scope = 0;
    let rcode = match question(zone, &msg, &query_ecs) {
        Err(rcode) => rcode,
        Ok((question, subnet)) => {
            reply.set_authoritative(true);
            if verdict == RrlVerdict::Slip {
                ResponseCode::NoError
            } else {
                let (rcode, s) = records(zone, pools, q, &question, subnet, &mut reply, answered);
                scope = s;
                rcode
            }
        }
    };
    if let (Some(e), Ok(Some(cs))) = (edns.as_mut(), &query_ecs) {
        e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
            cs.addr(),
            cs.source_prefix(),
            scope,
        )));
    }
    if let Some(e) = edns {
        reply.set_edns(e);
    }
    reply.set_response_code(rcode);
    if verdict == RrlVerdict::Slip {
        answered.clear();
        let mut out = finish(&reply.truncate(), rcode, qtype, limit, bytes, answered);
        out.truncated = true;
        return out;
    }
    finish(&reply, rcode, qtype, limit, bytes, answered)
}

/// The one question of a query this zone answers (name lower-cased, type), with its client
/// subnet (EDNS ECS), or the error code when it does not answer it.
fn question<'m>(
    zone: &Zone,
    msg: &'m Message,
    query_ecs: &'m Result<Option<ClientSubnet>, ()>,
) -> Result<((LowerName, RecordType), Option<&'m ClientSubnet>), ResponseCode> {
    if msg.op_code() != OpCode::Query {
        return Err(ResponseCode::NotImp);
    }
    if msg.extensions().as_ref().is_some_and(|e| e.version() > 0) {
        return Err(ResponseCode::BADVERS);
    }
    let (Some(question), 1, Ok(subnet)) = (msg.query(), msg.queries().len(), query_ecs) else {
        return Err(ResponseCode::FormErr);
    };
    let qname = LowerName::new(question.name());
    if question.query_class() != DNSClass::IN || !zone.origin.zone_of(&qname) {
        return Err(ResponseCode::Refused);
    }
    Ok(((qname, question.query_type()), subnet.as_ref()))
}

/// Adds the records answering `question` to `reply` (the backends in it to `answered`):
/// the addresses of a name, the SOA or NS of the apex, else the SOA of a negative answer.
/// Returns the code and the ECS scope.
fn records<S: Pools + ?Sized>(
    zone: &Zone,
    pools: &S,
    q: &Incoming<'_>,
    (qname, qt): &(LowerName, RecordType),
    subnet: Option<&ClientSubnet>,
    reply: &mut Message,
    answered: &mut Vec<(usize, usize)>,
) -> (ResponseCode, u8) {
    let qt = *qt;
    let entry = zone.names.get(qname);
    let apex = *qname == zone.origin;
    let (mut found, scope) = match entry {
        Some(e) => addresses(pools, q, e, qt, subnet, reply, answered),
        None => (false, 0),
    };
    if apex && !found {
        match qt {
            RecordType::SOA | RecordType::ANY => {
                reply.add_answer(zone.soa.clone());
                found = true;
            }
            RecordType::NS => {
                reply.add_answers(zone.ns.iter().cloned());
                found = true;
            }
            _ => {}
        }
    }
    if !found {
        let mut soa = zone.soa.clone();
        soa.set_ttl(zone.negative_ttl);
        reply.add_name_server(soa);
        if entry.is_none() && !apex && !zone.empty_non_terminals.contains(qname) {
            return (ResponseCode::NXDomain, scope);
        }
    }
    (ResponseCode::NoError, scope)
}

/// The A or AAAA records (for ANY: A, else AAAA) of the backends the scheduler picks for
/// the name `e`. Returns whether it added any, and the ECS scope.
fn addresses<S: Pools + ?Sized>(
    pools: &S,
    q: &Incoming<'_>,
    e: &Entry,
    qt: RecordType,
    subnet: Option<&ClientSubnet>,
    reply: &mut Message,
    answered: &mut Vec<(usize, usize)>,
) -> (bool, u8) {
    let v4 = match qt {
        RecordType::A | RecordType::ANY => true,
        RecordType::AAAA => false,
        _ => return (false, 0),
    };
    let Some(pool) = pools.pool(e.pool) else {
        return (false, 0);
    };
    let subnet = subnet.map(|cs| (cs.addr(), cs.source_prefix(), cs.addr().is_ipv4()));
    let (key, scope_of) = ecs_key(q.client, subnet);
    let mut open = q.subset(pool, e.pool, e.max_answers, v4, key, answered);
    if answered.is_empty() && qt == RecordType::ANY {
        open = q.subset(pool, e.pool, e.max_answers, false, key, answered);
    }
    let (ttl, scope) = ttl_and_scope(pool, e.ttl, open, !answered.is_empty(), scope_of);
    let mut found = false;
    for &(_, i) in answered.iter() {
        let Some(b) = pool.backends().get(i) else {
            continue;
        };
        let rdata = match b.address.ip() {
            IpAddr::V4(ip) => RData::A(A(ip)),
            IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
        };
        reply.add_answer(Record::from_rdata(e.name.clone(), ttl, rdata));
        found = true;
    }
    (found, scope)
}

/// Encodes `reply` into `bytes`, truncated (TC, no records) when it exceeds `limit` bytes.
fn finish(
    reply: &Message,
    rcode: ResponseCode,
    qtype: Option<RecordType>,
    limit: usize,
    bytes: &mut Vec<u8>,
    answered: &mut Vec<(usize, usize)>,
) -> Summary {
    let mut out = Summary {
        dropped: None,
        qtype,
        rcode,
        truncated: false,
        fast: false,
    };
    let encoded = match reply.to_vec() {
        Ok(b) if b.len() <= limit => b,
        Ok(_) => {
            out.truncated = true;
            answered.clear();
            match reply.truncate().to_vec() {
                Ok(b) if b.len() <= limit => b,
                // Even the question and OPT alone do not fit: only a malformed query gets
                // here (the `dns` fuzz target found a 1,743-byte "truncated" UDP reply), so
                // it is answered FORMERR with the header alone.
                Ok(_) => return error_reply(reply, ResponseCode::FormErr, out, bytes, answered),
                Err(_) => return error_reply(reply, ResponseCode::ServFail, out, bytes, answered),
            }
        }
        Err(_) => return error_reply(reply, ResponseCode::ServFail, out, bytes, answered),
    };
    bytes.extend_from_slice(&encoded);
    out
}

/// FORMERR (the reply would not fit) or SERVFAIL (it would not encode), header alone.
fn error_reply(
    reply: &Message,
    rcode: ResponseCode,
    mut out: Summary,
    bytes: &mut Vec<u8>,
    answered: &mut Vec<(usize, usize)>,
) -> Summary {
    out.rcode = rcode;
    if rcode == ResponseCode::FormErr {
        out.truncated = false;
    }
    answered.clear();
    bytes.clear();
    match Message::error_msg(reply.id(), reply.op_code(), rcode).to_vec() {
        Ok(b) => bytes.extend_from_slice(&b),
        // Nothing to send: counted as dropped.
        Err(_) => out.dropped = Some(Dropped::Malformed),
    }
    out
}

/// HTTP-DNS helpers: the JSON API's query and answer (Google's and Cloudflare's shape) and
/// RFC 8484's base64url, on the same [`answer`].
pub mod http {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use serde_json::{json, Value};

    /// The query message of `GET /dns-query?name=&type=` (`kind`: a type name such as
    /// `AAAA` or its number; default A).
    ///
    /// # Errors
    /// What is wrong with the name or type, for a 400 answer.
    pub fn query(name: &str, kind: Option<&str>) -> Result<Vec<u8>, String> {
        let n =
            Name::from_ascii(name).map_err(|e| format!("name \"{name}\" is no DNS name: {e}"))?;
        let t = match kind {
            None | Some("") => RecordType::A,
            Some(k) => match k.parse::<u16>() {
                Ok(num) => RecordType::from(num),
                Err(_) => k.to_ascii_uppercase().parse::<RecordType>().map_err(|_| {
                    format!("type \"{k}\" is no record type; e.g. A, AAAA, SOA, NS or a number")
                })?,
            },
        };
        let mut m = Message::new();
        m.set_id(0)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(n, t));
        m.to_vec()
            .map_err(|e| format!("cannot encode the query: {e}"))
    }

    /// A reply as JSON: `Status`, `TC`, `RD`, `RA`, `AD`, `CD`, `Question`, `Answer`,
    /// `Authority` (each record `name`, `type`, `TTL`, `data`), as the Google and Cloudflare
    /// JSON APIs answer. `None`: not a DNS message.
    pub fn json(reply: &[u8]) -> Option<Value> {
        let m = Message::from_vec(reply).ok()?;
        let records = |rs: &[hickory_proto::rr::Record]| -> Vec<Value> {
            rs.iter()
                .map(|r| {
                    json!({
                        "name": r.name().to_string(),
                        "type": u16::from(r.record_type()),
                        "TTL": r.ttl(),
                        "data": r.data().to_string(),
                    })
                })
                .collect()
        };
        let mut v = json!({
            "Status": u16::from(m.response_code()),
            "TC": m.truncated(),
            "RD": m.recursion_desired(),
            "RA": m.recursion_available(),
            "AD": m.authentic_data(),
            "CD": m.checking_disabled(),
            "Question": m.queries().iter().map(|q| json!({
                "name": q.name().to_string(),
                "type": u16::from(q.query_type()),
            })).collect::<Vec<_>>(),
        });
        if !m.answers().is_empty() {
            v["Answer"] = Value::Array(records(m.answers()));
        }
        if !m.name_servers().is_empty() {
            v["Authority"] = Value::Array(records(m.name_servers()));
        }
        Some(v)
    }

    /// The smallest TTL of a reply's records (RFC 8484 5.1: the HTTP freshness lifetime).
    pub fn min_ttl(reply: &[u8]) -> Option<u32> {
        let m = Message::from_vec(reply).ok()?;
        m.answers()
            .iter()
            .chain(m.name_servers())
            .map(hickory_proto::rr::Record::ttl)
            .min()
    }

    /// RFC 4648 base64url without padding (RFC 8484's `dns` parameter); `None`: not that.
    pub fn base64url(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in text.bytes().filter(|&c| c != b'=') {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => return None,
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }
}
