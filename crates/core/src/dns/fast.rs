//! The fast path of [`super::answer`]: the one common query, a single `IN A` or `IN AAAA`
//! question for a configured name (with or without EDNS, with or without Client Subnet),
//! read and answered by hand.
//!
//! Why by hand: `perf record -g` of the release binary (`main` at b126eaa) under
//! `bench/dns.py`'s dnsperf load (wrr, 10 answers per reply) put half of the UDP worker's
//! samples in user space (41% in the binary, 9% in libc, `memmove` alone 5.7%) and half in
//! the kernel (`sendto` 41%, most of it delivering the reply into dnsperf's socket over
//! loopback; `recvfrom` 9%). Outside the two system calls the worker only runs
//! [`super::answer`], which decoded a whole hickory `Message` (a `Vec` per section, a
//! `TinyVec` per label, the OPT options) and encoded one (a `Record` with a cloned `Name`
//! per answer, name compression keeping a `Vec` copy of every suffix). This path reads
//! the header and the question in place, looks the name up by its lower-cased wire bytes
//! and writes the reply into the caller's buffer: no allocation. docs/dns.md
//! ("Performance") has the figures before and after.
//!
//! It answers only what it can answer exactly as the hickory path does, byte for byte (the
//! differential tests in `crates/core/tests/dns_fast.rs` and the `dns` fuzz target compare
//! the two): anything else (another type or class, a name without records, other
//! sections, an unusual OPT record, an RRL slip, a reply that might not fit) goes to the
//! hickory path, which stays the reference. The decision of *which* backends answer is the
//! same function for both ([`super::subset`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{subset, Pools};
use crate::choice::Pool;
use crate::model::{Backend, HashKey, Now, SchedulerKind};
use crate::sched::{Loads, PickError, PickRequest, Rotation, Scheduler};

/// The longest name on the wire (RFC 1035 3.1).
const MAX_NAME: usize = 255;
/// EDNS option codes hickory-proto parses into something other than opaque bytes (DAU, DHU,
/// N3U when its DNSSEC feature is on; Client Subnet is read here).
const PARSED_OPTIONS: [u16; 3] = [5, 6, 7];
const OPT_ECS: u16 = 8;

/// The Client Subnet option of a query, as read (RFC 7871 6).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ecs {
    pub v4: bool,
    pub source: u8,
    /// The address as hickory reads it: the sent bytes, zeros after them.
    pub addr: IpAddr,
}

impl Ecs {
    fn addr_len(source: u8) -> usize {
        usize::from(source).div_ceil(8)
    }
}

/// A query the fast path can take, read in place.
#[derive(Debug)]
pub(super) struct Query<'a> {
    pub id: [u8; 2],
    pub rd: bool,
    pub cd: bool,
    /// The question's name as sent (wire form with its root label).
    pub qname: &'a [u8],
    /// The same, lower-cased (the lookup key).
    pub lower: [u8; MAX_NAME],
    pub lower_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    /// EDNS: the requestor's payload size (raw), and its Client Subnet.
    pub edns: Option<(u16, Option<Ecs>)>,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads `packet` if it is a query the fast path may answer; `None`: the hickory path
/// decides (which includes every malformed packet).
pub(super) fn parse(packet: &[u8]) -> Option<Query<'_>> {
    let head = packet.get(..12)?;
    // QR clear, opcode QUERY; one question and at most one additional record (the OPT).
    if head[2] & 0xf8 != 0 || u16_at(head, 4)? != 1 || u16_at(head, 6)? != 0 {
        return None;
    }
    if u16_at(head, 8)? != 0 || u16_at(head, 10)? > 1 {
        return None;
    }
    let mut lower = [0u8; MAX_NAME];
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            break;
        }
        // No compression pointer can appear in the first name; other label types are
        // left to hickory.
        if len > 63 || at - 12 + len + 2 > MAX_NAME {
            return None;
        }
        let label = packet.get(at..=at + len)?;
        for (d, s) in lower
            .get_mut(at - 12..=at - 12 + len)?
            .iter_mut()
            .zip(label)
        {
            *d = s.to_ascii_lowercase();
        }
        // The length byte is below 64: lower-casing left it alone.
        at += len + 1;
    }
    let qname = packet.get(12..=at)?;
    let lower_len = qname.len();
    let qtype = u16_at(packet, at + 1)?;
    let qclass = u16_at(packet, at + 3)?;
    at += 5;
    let edns = if u16_at(head, 10)? == 1 {
        Some(opt(packet, at)?)
    } else {
        None
    };
    Some(Query {
        id: [head[0], head[1]],
        rd: head[2] & 0x01 != 0,
        cd: head[3] & 0x10 != 0,
        qname,
        lower,
        lower_len,
        qtype,
        qclass,
        edns,
    })
}

/// The OPT record at `at`: (payload size, Client Subnet). `None` when it is anything but a
/// plain EDNS version 0 record whose options tile its data exactly.
fn opt(packet: &[u8], at: usize) -> Option<(u16, Option<Ecs>)> {
    if *packet.get(at)? != 0 || u16_at(packet, at + 1)? != 41 {
        return None;
    }
    let payload = u16_at(packet, at + 3)?;
    // TTL: extended rcode, version, flags; version 0 only (BADVERS is the hickory path's).
    if *packet.get(at + 6)? != 0 {
        return None;
    }
    let rdlen = usize::from(u16_at(packet, at + 9)?);
    let data = packet.get(at + 11..at + 11 + rdlen)?;
    let mut ecs = None;
    let mut i = 0;
    while i < data.len() {
        let code = u16_at(data, i)?;
        let len = usize::from(u16_at(data, i + 2)?);
        let value = data.get(i + 4..i + 4 + len)?;
        if PARSED_OPTIONS.contains(&code) {
            return None;
        }
        if code == OPT_ECS {
            if ecs.is_some() {
                return None;
            }
            ecs = Some(client_subnet(value)?);
        }
        i += 4 + len;
    }
    Some((payload, ecs))
}

/// A Client Subnet option's value, if well formed: family 1 or 2, a source prefix the
/// family holds, exactly the address bytes that prefix needs.
fn client_subnet(v: &[u8]) -> Option<Ecs> {
    let family = u16_at(v, 0)?;
    let source = *v.get(2)?;
    let bytes = v.get(4..)?;
    if bytes.len() != Ecs::addr_len(source) {
        return None;
    }
    let addr = match family {
        1 if source <= 32 => {
            let mut o = [0u8; 4];
            o.get_mut(..bytes.len())?.copy_from_slice(bytes);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        2 if source <= 128 => {
            let mut o = [0u8; 16];
            o.get_mut(..bytes.len())?.copy_from_slice(bytes);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(Ecs {
        v4: family == 1,
        source,
        addr,
    })
}

/// Where the answers' owner name goes, compressed as hickory-proto's encoder compresses it
/// (so the replies are equal byte for byte): the longest suffix of `owner` (the name as
/// configured, wire form) that equals a suffix of the question's name byte for byte becomes
/// a pointer to it, the labels before it are written out. Returns (bytes of `owner` written
/// before the pointer, the pointer's offset); `None`: nothing matched, `owner` whole.
fn compression(owner: &[u8], qname: &[u8]) -> Option<(usize, usize)> {
    // Suffixes without the root label, as hickory compares them.
    let owner_body = owner.get(..owner.len().checked_sub(1)?)?;
    let q_body = qname.get(..qname.len().checked_sub(1)?)?;
    let mut i = 0;
    while i < owner_body.len() {
        let suffix = owner_body.get(i..)?;
        let mut j = 0;
        while j < q_body.len() {
            if q_body.get(j..)? == suffix {
                return Some((i, 12 + j));
            }
            j += 1 + usize::from(*q_body.get(j)?);
        }
        i += 1 + usize::from(*owner_body.get(i)?);
    }
    None
}

/// Writes the answers' owner names as hickory does: the first as [`compression`] says,
/// each later one as a pointer to the first full occurrence.
pub(super) struct Owner<'a> {
    name: &'a [u8],
    /// After the first record: the pointer every later owner is.
    pointer: Option<[u8; 2]>,
    first: Option<(usize, usize)>,
}

impl<'a> Owner<'a> {
    pub fn new(owner: &'a [u8], qname: &[u8]) -> Self {
        Self {
            name: owner,
            pointer: None,
            first: compression(owner, qname),
        }
    }

    pub fn write(&mut self, out: &mut Vec<u8>) {
        if let Some(p) = self.pointer {
            out.extend_from_slice(&p);
            return;
        }
        let here = out.len();
        let target = match self.first {
            Some((0, to)) => to,
            Some((cut, _)) => {
                out.extend_from_slice(self.name.get(..cut).unwrap_or_default());
                here
            }
            None => {
                out.extend_from_slice(self.name);
                here
            }
        };
        if let Some((_, to)) = self.first {
            out.extend_from_slice(&pointer(to));
        }
        self.pointer = Some(pointer(target));
    }

    /// The most bytes one owner name takes.
    pub fn max_len(&self) -> usize {
        self.name.len() + 2
    }
}

fn pointer(to: usize) -> [u8; 2] {
    // Offsets here are within one query's question (below 12 + 255) or the first answer
    // (below 65535 only if it fits: the caller bounds the reply first).
    (0xc000 | (to as u16 & 0x3fff)).to_be_bytes()
}

/// Positions x backends of the family a [`Table`] is built for at most (a longer rotation,
/// or a larger pool, is answered by [`super::subset`] per query). It bounds the table's
/// memory (2 bytes per entry) and the work of building it with each snapshot (one replayed
/// pick per entry, each a walk over the pool: well under a millisecond per pool).
const MAX_TABLE: usize = 1024;

/// The subsets `rr` and `wrr` answer, precomputed per counter position for each pool and
/// address family of a zone ([`super::Zone::prepare`]).
///
/// Why: `perf record` of the UDP worker under `bench/dns.py`'s load (wrr, 10 answers) put
/// most of the answerer's own time in [`super::subset`]: ten calls of
/// [`choice::choose`](crate::choice::choose) per query, each walking the tried list, and
/// ten atomic increments of the scheduler's counter. For these two schedulers a query's
/// picks are a pure function of the counter's value at its start
/// ([`Rotation`](crate::sched::Rotation)), and the number of picks it takes is the same for
/// every value (below: `calls`). So the table holds, for each position, the backends
/// [`super::subset`] answers from there, computed by running [`super::subset`] itself
/// against a replay of the rotation; a query then moves the counter once, by that number,
/// and copies its row. The answers and the counter's course are those of
/// [`super::subset`], byte for byte (`crates/core/tests/dns_fast.rs`).
///
/// Never stale: a table belongs to the zone of one snapshot and is used only while the
/// pool's scheduler is the one it was computed from ([`Rotation::id`]); a health change or
/// a reload builds new schedulers, a new zone and new tables.
#[derive(Debug, Default)]
pub(super) struct Rotations {
    /// By pool index ([`super::Zone::pools`]): IPv4, IPv6.
    tables: Vec<[Option<Table>; 2]>,
}

#[derive(Debug)]
struct Table {
    rotation: crate::sched::RotationId,
    /// The backends (distinct IPs) a query with no `max_answers` limit gets: the row length.
    groups: usize,
    /// The picks (counter steps) such a query takes: `groups`, or one more when the walk
    /// ends with a failed pick (backends left that are not eligible). A query for at most
    /// `groups` takes exactly as many picks as backends.
    calls_all: usize,
    /// One row of `groups` backend indices per position (pools of up to 65,535 backends).
    rows: Box<[u16]>,
}

impl Rotations {
    /// The tables of the `count` pools of `pools` that use `rr` or `wrr` (without slow
    /// start and locality) with at least one backend up.
    pub fn new<S: Pools + ?Sized>(pools: &S, count: usize) -> Self {
        Self {
            tables: (0..count)
                .map(|i| {
                    let table = |v4| pools.pool(i).and_then(|p| Table::new(p, i, v4));
                    [table(true), table(false)]
                })
                .collect(),
        }
    }

    /// Appends the answer of a query for up to `max` backends of the family (`v4`) of pool
    /// `pool_idx` to `out`, moving the scheduler's counter as [`super::subset`] would;
    /// `false` (nothing done): no table for it, the caller runs [`super::subset`].
    pub fn answer<P: Pool>(
        &self,
        pool: &P,
        pool_idx: usize,
        v4: bool,
        max: usize,
        out: &mut Vec<(usize, usize)>,
    ) -> bool {
        let Some(t) = self
            .tables
            .get(pool_idx)
            .and_then(|t| t.get(usize::from(!v4)))
            .and_then(Option::as_ref)
        else {
            return false;
        };
        let Some(rotation) = pool.scheduler().rotation() else {
            return false;
        };
        if max == 0 || rotation.id() != t.rotation || pool.locality().is_some() {
            return false;
        }
        // A query that may take every group stops with a failed pick only if it asks for
        // more than there are.
        let (take, calls) = if max <= t.groups {
            (max, max)
        } else {
            (t.groups, t.calls_all)
        };
        let Some(row) = rotation
            .advance(calls)
            .and_then(|pos| t.rows.get(pos * t.groups..pos * t.groups + take))
        else {
            return false;
        };
        out.extend(row.iter().map(|&b| (pool_idx, usize::from(b))));
        true
    }
}

impl Table {
    fn new<P: Pool>(pool: &P, pool_idx: usize, v4: bool) -> Option<Self> {
        let rotation = pool.scheduler().rotation()?;
        let family = pool
            .backends()
            .iter()
            .filter(|b| b.address.is_ipv4() == v4)
            .count();
        if pool.locality().is_some()
            || rotation.is_empty()
            || rotation.len().saturating_mul(family) > MAX_TABLE
            || u16::try_from(pool.backends().len()).is_err()
        {
            return None;
        }
        let mut rows = Vec::new();
        let mut out = Vec::new();
        let mut shape = None;
        for pos in 0..rotation.len() {
            let replay = Replay {
                pool,
                scheduler: Replayed {
                    kind: pool.scheduler().kind(),
                    order: rotation,
                    counter: AtomicUsize::new(pos),
                },
            };
            out.clear();
            let open = subset(
                &replay,
                pool_idx,
                v4,
                usize::MAX,
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                0,
                Now::ZERO,
                &mut out,
            );
            let calls = replay
                .scheduler
                .counter
                .load(Ordering::Relaxed)
                .wrapping_sub(pos);
            // Fail open (nothing up) is random; a shape that depends on the position is
            // not what this table assumes: no table.
            if open
                || out.is_empty()
                || *shape.get_or_insert((out.len(), calls)) != (out.len(), calls)
            {
                return None;
            }
            for &(_, b) in &out {
                rows.push(u16::try_from(b).ok()?);
            }
        }
        let (groups, calls_all) = shape?;
        Some(Self {
            rotation: rotation.id(),
            groups,
            calls_all,
            rows: rows.into(),
        })
    }
}

/// A pool whose `rr`/`wrr` scheduler is replayed from a chosen counter value, on its own
/// counter: [`super::subset`] run against it answers what the real pool answers from that
/// value, without moving the real counter.
struct Replay<'a, P> {
    pool: &'a P,
    scheduler: Replayed<'a>,
}

/// The replayed scheduler: [`Rotation::pick_at`] at its own counter's positions.
#[derive(Debug)]
struct Replayed<'a> {
    kind: SchedulerKind,
    order: Rotation<'a>,
    counter: AtomicUsize,
}

impl Scheduler for Replayed<'_> {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        let pos = self.counter.fetch_add(1, Ordering::Relaxed) % self.order.len().max(1);
        self.order
            .pick_at(pos, req.exclude)
            .ok_or(PickError::AllTried {
                tried: req.exclude.len(),
            })
    }
}

impl<P: Pool> Loads for Replay<'_, P> {
    fn active(&self, idx: usize) -> u64 {
        self.pool.active(idx)
    }
}

impl<P: Pool> Pool for Replay<'_, P> {
    fn backends(&self) -> &[Backend] {
        self.pool.backends()
    }
    fn scheduler(&self) -> &dyn Scheduler {
        &self.scheduler
    }
    fn hash_key(&self) -> &HashKey {
        self.pool.hash_key()
    }
    fn backend_id(&self, idx: usize) -> Option<u32> {
        self.pool.backend_id(idx)
    }
    fn index_of(&self, id: u32) -> Option<usize> {
        self.pool.index_of(id)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::model::BackendState;
    use crate::sched::{build, SchedOptions};

    struct TestPool {
        backends: Vec<Backend>,
        scheduler: Arc<dyn Scheduler>,
        key: HashKey,
    }

    impl Loads for TestPool {
        fn active(&self, _idx: usize) -> u64 {
            0
        }
    }

    impl Pool for TestPool {
        fn backends(&self) -> &[Backend] {
            &self.backends
        }
        fn scheduler(&self) -> &dyn Scheduler {
            &*self.scheduler
        }
        fn hash_key(&self) -> &HashKey {
            &self.key
        }
        fn backend_id(&self, idx: usize) -> Option<u32> {
            u32::try_from(idx).ok()
        }
        fn index_of(&self, id: u32) -> Option<usize> {
            usize::try_from(id).ok()
        }
    }

    /// Four IPv4 backends of weights 1..=4 (one a second port of the first's IP), two
    /// IPv6, `down` of them down.
    fn pool(kind: SchedulerKind, down: &[usize]) -> TestPool {
        let mut backends: Vec<Backend> = [
            SocketAddr::from(([198, 18, 0, 1], 80)),
            SocketAddr::from(([198, 18, 0, 2], 80)),
            SocketAddr::from(([198, 18, 0, 1], 81)),
            SocketAddr::from(([198, 18, 0, 3], 80)),
            SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 80)),
            SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), 80)),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, a)| Backend::new(a, (i % 4) as u16 + 1))
        .collect();
        for &d in down {
            backends[d].state = BackendState::Down;
        }
        TestPool {
            scheduler: build(kind, &backends, &SchedOptions::default()),
            backends,
            key: HashKey::SrcIp,
        }
    }

    #[test]
    fn tables_answer_what_subset_answers_and_move_the_counter_alike() {
        let client = IpAddr::V4(Ipv4Addr::new(198, 18, 9, 9));
        for kind in [SchedulerKind::RoundRobin, SchedulerKind::WeightedRoundRobin] {
            for down in [&[][..], &[1], &[0, 4], &[1, 3, 5]] {
                let (a, b) = (&[pool(kind, down)][..], pool(kind, down));
                // Tables belong to the scheduler they were computed from.
                let other = [pool(kind, down)];
                let mut out = Vec::new();
                assert!(!Rotations::new(other.as_slice(), 1).answer(&a[0], 0, true, 2, &mut out));
                drop(other);
                let stale = Rotations::new([pool(kind, down)].as_slice(), 1);
                let c = pool(kind, down);
                assert!(!stale.answer(&c, 0, true, 2, &mut out), "{kind:?}");
                assert!(out.is_empty());
                let tables = Rotations::new(a, 1);
                for n in 0..200u64 {
                    let v4 = n % 3 != 0;
                    let max = [1, 2, 3, 8][(n % 4) as usize];
                    let (mut got, mut want) = (Vec::new(), Vec::new());
                    assert!(
                        tables.answer(&a[0], 0, v4, max, &mut got),
                        "{kind:?} down {down:?}: a table for v4 {v4}"
                    );
                    let open = subset(&b, 0, v4, max, client, n, Now::ZERO, &mut want);
                    assert!(!open);
                    assert_eq!(got, want, "{kind:?} down {down:?} query {n}");
                }
            }
        }
    }

    #[test]
    fn no_table_for_other_schedulers_or_a_family_all_down() {
        let mut out = Vec::new();
        for kind in [
            SchedulerKind::Maglev,
            SchedulerKind::Random,
            SchedulerKind::LeastConn,
        ] {
            let p = [pool(kind, &[])];
            assert!(!Rotations::new(p.as_slice(), 1).answer(&p[0], 0, true, 2, &mut out));
        }
        let p = [pool(SchedulerKind::RoundRobin, &[4, 5])];
        let tables = Rotations::new(p.as_slice(), 1);
        assert!(!tables.answer(&p[0], 0, false, 2, &mut out), "fail open");
        assert!(tables.answer(&p[0], 0, true, 2, &mut out));
        assert_eq!(out.len(), 2);
    }
}
