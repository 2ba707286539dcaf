//! The bounded LRU flow table: flow affinity (5-tuple -> backend) and ipvsadm-style
//! persistence (client IP -> backend), with an idle timeout.
//!
//! The table is sans-IO: time is the caller's [`Now`], and nothing here reads a clock. It maps
//! a [`FlowKey`] to an opaque `u32` backend id that the IO layer assigns and keeps stable.
//!
//! # Memory
//!
//! Memory is the point of this design. Entries live in a slab (`Vec`) of fixed-size
//! [`FlowTable::ENTRY_BYTES`]-byte records (two 16-byte addresses, two ports, the backend id,
//! a coarse last-seen time in milliseconds, and `u32` prev/next links of an intrusive LRU list
//! whose top bits also carry the key's protocol and kind). The index is a
//! `hashbrown::HashTable<u32>` of slab indices (4 bytes plus 1 control byte per bucket). Both
//! are allocated once, for the full capacity, when the table is built; they never grow. At
//! 1M entries the whole table costs about 62.5 bytes per entry ([`FlowTable::bytes_per_entry`]).
//!
//! # Time
//!
//! Last-seen times are kept in milliseconds, truncated to `u32` and compared with wrapping
//! arithmetic (so the idle timeout is capped at `u32::MAX` ms, about 49 days). `now` is
//! expected to be monotonic: a `now` earlier than one already seen is treated as the latest
//! one seen. Because the LRU list is then also ordered by last-seen time, expired entries
//! gather at its tail, and sweeping them is incremental and cheap: [`FlowTable::expire`]
//! removes at most `max` of them per call. The IO layer should call it periodically (say every
//! second, with a budget of a few thousand). On top of that, every [`FlowTable::get`] sweeps at
//! most one and every [`FlowTable::insert`] at most two expired entries from the tail, and a
//! call whose `now` is more than the idle timeout past the previous call drops everything at
//! once (every entry is then idle), so a table in use cleans itself.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::mem::size_of;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hashbrown::HashTable;

use crate::model::{FlowTuple, Now, Proto};

/// Tag bit: the flow is UDP (else TCP).
const TAG_UDP: u8 = 1;
/// Tag bit: the key is a client IP only (persistence), not a 5-tuple.
const TAG_CLIENT_IP: u8 = 2;

/// The key of a [`FlowTable`] entry: a flow's 5-tuple (flow affinity) or a client IP alone
/// (persistence, as `ipvsadm -p`).
///
/// Addresses are kept as 16 bytes, IPv4 as IPv4-mapped IPv6, so a client seen as `1.2.3.4`
/// and as `::ffff:1.2.3.4` (a dual-stack socket) is the same client, as in
/// [`crate::model::canonical_addr`]. A 5-tuple key never equals a client-IP key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
    tag: u8,
}

fn ip_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn octets_ip(octets: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(octets).to_canonical()
}

impl FlowKey {
    /// The key of one flow (flow affinity): source, destination and protocol.
    pub fn from_tuple(tuple: &FlowTuple) -> Self {
        Self {
            src: ip_octets(tuple.src.ip()),
            dst: ip_octets(tuple.dst.ip()),
            src_port: tuple.src.port(),
            dst_port: tuple.dst.port(),
            tag: match tuple.proto {
                Proto::Tcp => 0,
                Proto::Udp => TAG_UDP,
            },
        }
    }

    /// The key of a client (persistence): its IP address only. Use one table per service
    /// (or pool), as ipvsadm keys its persistence templates by virtual service.
    pub fn client_ip(ip: IpAddr) -> Self {
        Self {
            src: ip_octets(ip),
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            tag: TAG_CLIENT_IP,
        }
    }

    /// Whether this is a client-IP (persistence) key rather than a 5-tuple.
    pub const fn is_client_ip(&self) -> bool {
        self.tag & TAG_CLIENT_IP != 0
    }

    /// The client (source) IP, IPv4-mapped addresses shown as IPv4.
    pub fn src_ip(&self) -> IpAddr {
        octets_ip(self.src)
    }

    /// The 5-tuple back, for a 5-tuple key (IPv4-mapped addresses come back as IPv4).
    pub fn tuple(&self) -> Option<FlowTuple> {
        (!self.is_client_ip()).then(|| FlowTuple {
            src: SocketAddr::new(octets_ip(self.src), self.src_port),
            dst: SocketAddr::new(octets_ip(self.dst), self.dst_port),
            proto: if self.tag & TAG_UDP == 0 {
                Proto::Tcp
            } else {
                Proto::Udp
            },
        })
    }
}

impl From<&FlowTuple> for FlowKey {
    fn from(tuple: &FlowTuple) -> Self {
        Self::from_tuple(tuple)
    }
}

impl From<FlowTuple> for FlowKey {
    fn from(tuple: FlowTuple) -> Self {
        Self::from_tuple(&tuple)
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tuple() {
            Some(t) => write!(f, "FlowKey({:?} {} -> {})", t.proto, t.src, t.dst),
            None => write!(f, "FlowKey(client {})", self.src_ip()),
        }
    }
}

/// Top bit of a link word: carries one tag bit.
const HI: u32 = 1 << 31;
/// Low 31 bits of a link word: a slab index.
const IDX: u32 = HI - 1;
/// "No entry" in a link.
const NIL: u32 = IDX;
/// In `prev` of a slot on the free list.
const FREE: u32 = IDX - 1;

/// One slab slot: 52 bytes, 4-aligned, no padding.
#[derive(Clone, Copy)]
struct Entry {
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
    backend: u32,
    /// Last use, in milliseconds since the caller's epoch, truncated to `u32`.
    seen: u32,
    /// Previous (more recently used) entry; top bit: `TAG_UDP`.
    prev: u32,
    /// Next (less recently used) entry, or the next free slot; top bit: `TAG_CLIENT_IP`.
    next: u32,
}

const _: () = assert!(size_of::<Entry>() == 52);

impl Entry {
    fn new(key: &FlowKey, backend: u32, seen: u32) -> Self {
        Self {
            src: key.src,
            dst: key.dst,
            src_port: key.src_port,
            dst_port: key.dst_port,
            backend,
            seen,
            prev: NIL | (u32::from(key.tag & TAG_UDP) << 31),
            next: NIL | (u32::from((key.tag & TAG_CLIENT_IP) >> 1) << 31),
        }
    }

    const fn free(next: u32) -> Self {
        Self {
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            backend: 0,
            seen: 0,
            prev: FREE,
            next,
        }
    }

    #[inline]
    const fn prev(&self) -> u32 {
        self.prev & IDX
    }
    #[inline]
    const fn next(&self) -> u32 {
        self.next & IDX
    }
    #[inline]
    fn set_prev(&mut self, i: u32) {
        self.prev = (self.prev & HI) | i;
    }
    #[inline]
    fn set_next(&mut self, i: u32) {
        self.next = (self.next & HI) | i;
    }
    #[inline]
    const fn tag(&self) -> u8 {
        ((self.prev >> 31) as u8) | (((self.next >> 31) as u8) << 1)
    }
    #[inline]
    const fn is_free(&self) -> bool {
        self.prev == FREE
    }
    #[inline]
    fn matches(&self, key: &FlowKey) -> bool {
        self.src_port == key.src_port
            && self.dst_port == key.dst_port
            && self.src == key.src
            && self.dst == key.dst
            && self.tag() == key.tag
    }
    fn key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            tag: self.tag(),
        }
    }
}

#[inline]
fn hash_parts<S: BuildHasher>(
    s: &S,
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: u16,
    dport: u16,
    tag: u8,
) -> u64 {
    let mut h = s.build_hasher();
    h.write_u128(u128::from_ne_bytes(*src));
    h.write_u128(u128::from_ne_bytes(*dst));
    h.write_u64((u64::from(sport) << 24) | (u64::from(dport) << 8) | u64::from(tag));
    h.finish()
}

#[inline]
fn hash_key<S: BuildHasher>(s: &S, k: &FlowKey) -> u64 {
    hash_parts(s, &k.src, &k.dst, k.src_port, k.dst_port, k.tag)
}

#[inline]
fn hash_entry<S: BuildHasher>(s: &S, e: &Entry) -> u64 {
    hash_parts(s, &e.src, &e.dst, e.src_port, e.dst_port, e.tag())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A bounded LRU flow table with an idle timeout: [`FlowKey`] -> backend id (`u32`).
///
/// `S` hashes keys; the default, [`RandomState`] (SipHash-1-3 with a random key per table),
/// keeps a remote client from choosing keys that collide. Any other [`BuildHasher`] can be
/// given with [`FlowTable::with_hasher`].
///
/// See the [module documentation](self) for the memory layout and the handling of time.
pub struct FlowTable<S = RandomState> {
    slab: Vec<Entry>,
    index: HashTable<u32>,
    hasher: S,
    capacity: u32,
    len: u32,
    timeout_ms: u32,
    /// Most recently used entry.
    head: u32,
    /// Least recently used entry.
    tail: u32,
    /// First free slot in `slab[..slab.len()]`.
    free: u32,
    /// The latest `now` seen, in milliseconds.
    last_ms: u64,
    rebuilds: u64,
}

impl FlowTable<RandomState> {
    /// A table of at most `capacity` entries (at most [`FlowTable::MAX_CAPACITY`]; a capacity
    /// of 0 stores nothing), whose entries expire after `idle_timeout` without use (with a
    /// millisecond granularity, capped at `u32::MAX` ms). All memory is allocated here.
    pub fn new(capacity: usize, idle_timeout: Duration) -> Self {
        Self::with_hasher(capacity, idle_timeout, RandomState::new())
    }
}

impl<S: BuildHasher> FlowTable<S> {
    /// The bytes of one slab entry.
    pub const ENTRY_BYTES: usize = size_of::<Entry>();

    /// The largest capacity a table can have (slab indices are 31 bits).
    pub const MAX_CAPACITY: usize = FREE as usize;

    /// As [`FlowTable::new`], with the given key hasher.
    pub fn with_hasher(capacity: usize, idle_timeout: Duration, hasher: S) -> Self {
        let capacity = capacity.min(Self::MAX_CAPACITY);
        // Headroom of 1/8 so that tombstones left by removals cannot exhaust the index's
        // growth budget quickly (see `rebuild_index`).
        let index_capacity = if capacity == 0 {
            0
        } else {
            capacity.saturating_add(capacity / 8)
        };
        Self {
            slab: Vec::with_capacity(capacity),
            index: HashTable::with_capacity(index_capacity),
            hasher,
            capacity: capacity as u32,
            len: 0,
            timeout_ms: u32::try_from(idle_timeout.as_millis()).unwrap_or(u32::MAX),
            head: NIL,
            tail: NIL,
            free: NIL,
            last_ms: 0,
            rebuilds: 0,
        }
    }

    /// The number of entries stored (some may be idle and not yet swept).
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no entry is stored.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The maximum number of entries.
    pub const fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// The idle timeout, at the millisecond granularity the table uses.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.timeout_ms))
    }

    /// Bytes allocated by the table: the slab plus the hash index (buckets and control bytes).
    pub fn memory_bytes(&self) -> usize {
        self.slab.capacity() * Self::ENTRY_BYTES + self.index.allocation_size()
    }

    /// [`FlowTable::memory_bytes`] divided by the capacity: the real cost of one entry when
    /// the table is full.
    pub fn bytes_per_entry(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        self.memory_bytes() as f64 / f64::from(self.capacity)
    }

    /// How many times the index was rebuilt in place because removals had used up its
    /// growth budget with tombstones (diagnostic; see the cost in the module docs).
    pub const fn index_rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// The backend of `key`, refreshing its age and making it the most recently used.
    ///
    /// An entry idle for longer than the idle timeout is a miss, and is removed.
    pub fn get(&mut self, key: &FlowKey, now: Now) -> Option<u32> {
        let now = self.advance(now);
        self.sweep(now, 1);
        let hash = hash_key(&self.hasher, key);
        let slab = &self.slab;
        let Ok(occupied) = self
            .index
            .find_entry(hash, |&i| slab[i as usize].matches(key))
        else {
            return None;
        };
        let i = *occupied.get();
        let entry = &mut self.slab[i as usize];
        if now.wrapping_sub(entry.seen) > self.timeout_ms {
            occupied.remove();
            self.unlink(i);
            self.release(i);
            return None;
        }
        entry.seen = now;
        let backend = entry.backend;
        self.move_to_front(i);
        Some(backend)
    }

    /// The backend of `key` if it is stored and not idle, without refreshing it (for
    /// inspection, e.g. the admin API's `explain`).
    pub fn peek(&self, key: &FlowKey, now: Now) -> Option<u32> {
        let ms = millis(now);
        if ms > self.last_ms && ms - self.last_ms > u64::from(self.timeout_ms) {
            return None;
        }
        let now = ms.max(self.last_ms) as u32;
        let hash = hash_key(&self.hasher, key);
        let i = *self
            .index
            .find(hash, |&i| self.slab[i as usize].matches(key))?;
        let entry = &self.slab[i as usize];
        (now.wrapping_sub(entry.seen) <= self.timeout_ms).then_some(entry.backend)
    }

    /// Maps `key` to `backend` as of `now`, as the most recently used entry.
    ///
    /// Replaces an existing entry, returning its backend if it was not idle. When the table is
    /// full, the least recently used entry is evicted. A table of capacity 0 stores nothing.
    pub fn insert(&mut self, key: &FlowKey, backend: u32, now: Now) -> Option<u32> {
        if self.capacity == 0 {
            return None;
        }
        let now = self.advance(now);
        self.sweep(now, 2);
        let hash = hash_key(&self.hasher, key);
        let slab = &self.slab;
        if let Some(&i) = self.index.find(hash, |&i| slab[i as usize].matches(key)) {
            let entry = &mut self.slab[i as usize];
            let idle = now.wrapping_sub(entry.seen) > self.timeout_ms;
            let old = entry.backend;
            entry.backend = backend;
            entry.seen = now;
            self.move_to_front(i);
            return (!idle).then_some(old);
        }
        if self.index.len() == self.index.capacity() {
            self.rebuild_index();
        }
        let i = self.alloc_slot();
        self.slab[i as usize] = Entry::new(key, backend, now);
        self.push_front(i);
        let slab = &self.slab;
        let hasher = &self.hasher;
        self.index
            .insert_unique(hash, i, |&j| hash_entry(hasher, &slab[j as usize]));
        self.len += 1;
        None
    }

    /// Removes `key`, returning its backend if it was stored (idle or not).
    pub fn remove(&mut self, key: &FlowKey) -> Option<u32> {
        let hash = hash_key(&self.hasher, key);
        let slab = &self.slab;
        let occupied = self
            .index
            .find_entry(hash, |&i| slab[i as usize].matches(key))
            .ok()?;
        let (i, _) = occupied.remove();
        let backend = self.slab[i as usize].backend;
        self.unlink(i);
        self.release(i);
        Some(backend)
    }

    /// Removes every entry of `backend` (e.g. when it leaves the pool), returning how many.
    ///
    /// This scans the slab: O(capacity), sequential memory access.
    pub fn remove_backend(&mut self, backend: u32) -> usize {
        let mut removed = 0;
        for i in 0..self.slab.len() {
            let entry = &self.slab[i];
            if !entry.is_free() && entry.backend == backend {
                self.remove_slot(i as u32);
                removed += 1;
            }
        }
        removed
    }

    /// Removes up to `max` idle entries, least recently used first, returning how many were
    /// removed. Cost: O(removed + 1). Call it periodically.
    pub fn expire(&mut self, now: Now, max: usize) -> usize {
        let before = self.len;
        let now = self.advance(now);
        let cleared = (before - self.len) as usize;
        if cleared > 0 {
            return cleared;
        }
        self.sweep(now, max)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.index.clear();
        self.slab.clear();
        self.head = NIL;
        self.tail = NIL;
        self.free = NIL;
        self.len = 0;
    }

    /// The entries, most recently used first: `(key, backend)`, idle ones included.
    pub fn iter(&self) -> impl Iterator<Item = (FlowKey, u32)> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let entry = &self.slab[cur as usize];
            cur = entry.next();
            Some((entry.key(), entry.backend))
        })
    }

    /// Records `now` (kept monotonic) and returns it as truncated milliseconds. If it is more
    /// than the idle timeout past the previous `now`, every entry is idle: drop them all.
    fn advance(&mut self, now: Now) -> u32 {
        let ms = millis(now);
        if ms > self.last_ms {
            if self.len > 0 && ms - self.last_ms > u64::from(self.timeout_ms) {
                self.clear();
            }
            self.last_ms = ms;
        }
        self.last_ms as u32
    }

    /// Removes up to `max` idle entries from the LRU tail.
    fn sweep(&mut self, now: u32, max: usize) -> usize {
        let mut removed = 0;
        while removed < max && self.tail != NIL {
            let t = self.tail;
            if now.wrapping_sub(self.slab[t as usize].seen) <= self.timeout_ms {
                break;
            }
            self.remove_slot(t);
            removed += 1;
        }
        removed
    }

    /// Removes live slot `i` from the index and the list, and frees it.
    fn remove_slot(&mut self, i: u32) {
        self.unindex(i);
        self.unlink(i);
        self.release(i);
    }

    fn unindex(&mut self, i: u32) {
        let hash = hash_entry(&self.hasher, &self.slab[i as usize]);
        if let Ok(occupied) = self.index.find_entry(hash, |&j| j == i) {
            occupied.remove();
        }
    }

    /// A slot for a new entry: a free one, a new one, or the evicted least recently used one.
    fn alloc_slot(&mut self) -> u32 {
        if self.free != NIL {
            let i = self.free;
            self.free = self.slab[i as usize].next();
            return i;
        }
        if self.slab.len() < self.capacity as usize {
            self.slab.push(Entry::free(NIL));
            return (self.slab.len() - 1) as u32;
        }
        let t = self.tail;
        self.unindex(t);
        self.unlink(t);
        self.len -= 1;
        t
    }

    /// Puts unlinked slot `i` on the free list.
    fn release(&mut self, i: u32) {
        self.slab[i as usize] = Entry::free(self.free);
        self.free = i;
        self.len -= 1;
    }

    fn unlink(&mut self, i: u32) {
        let (p, n) = {
            let e = &self.slab[i as usize];
            (e.prev(), e.next())
        };
        if p == NIL {
            self.head = n;
        } else {
            self.slab[p as usize].set_next(n);
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.slab[n as usize].set_prev(p);
        }
    }

    fn push_front(&mut self, i: u32) {
        let h = self.head;
        let e = &mut self.slab[i as usize];
        e.set_prev(NIL);
        e.set_next(h);
        if h == NIL {
            self.tail = i;
        } else {
            self.slab[h as usize].set_prev(i);
        }
        self.head = i;
    }

    #[inline]
    fn move_to_front(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// Rebuilds the index at the same size. hashbrown leaves a tombstone for some removals,
    /// and once tombstones have used up its growth budget it would *double* its buckets
    /// (the table being more than half full): a bounded table must not grow, so it rebuilds.
    /// Cost: O(len), no allocation. Measured frequency under pure eviction churn: about once
    /// per 11 x capacity inserts at the load of a 1M table (0.48), once per capacity inserts
    /// at the worst load (0.78, a capacity just under a bucket boundary).
    #[cold]
    fn rebuild_index(&mut self) {
        // Clearing keeps the allocation: no second index in memory, no allocation at all.
        self.index.clear();
        let slab = &self.slab;
        let hasher = &self.hasher;
        for (i, entry) in slab.iter().enumerate() {
            if !entry.is_free() {
                self.index
                    .insert_unique(hash_entry(hasher, entry), i as u32, |&j| {
                        hash_entry(hasher, &slab[j as usize])
                    });
            }
        }
        self.rebuilds += 1;
    }
}

impl<S> fmt::Debug for FlowTable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTable")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("idle_timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks every structural invariant: list and index agree with the slab.
    fn check<S: BuildHasher>(t: &FlowTable<S>) {
        let mut count = 0u32;
        let mut prev = NIL;
        let mut cur = t.head;
        let mut last_seen: Option<u32> = None;
        while cur != NIL {
            let e = &t.slab[cur as usize];
            assert!(!e.is_free());
            assert_eq!(e.prev(), prev, "prev link of {cur}");
            if let Some(s) = last_seen {
                // Ordered by last use, most recent first (monotonic now).
                assert!(s.wrapping_sub(e.seen) < u32::MAX / 2);
            }
            last_seen = Some(e.seen);
            let hash = hash_entry(&t.hasher, e);
            assert_eq!(t.index.find(hash, |&j| j == cur), Some(&cur));
            let key = e.key();
            assert_eq!(
                t.index
                    .find(hash_key(&t.hasher, &key), |&j| t.slab[j as usize]
                        .matches(&key)),
                Some(&cur)
            );
            prev = cur;
            cur = e.next();
            count += 1;
            assert!(count <= t.capacity);
        }
        assert_eq!(t.tail, prev);
        assert_eq!(count, t.len);
        assert_eq!(t.index.len(), t.len as usize);
        let free = t.slab.iter().filter(|e| e.is_free()).count();
        assert_eq!(free + t.len as usize, t.slab.len());
        let mut f = t.free;
        let mut nfree = 0;
        while f != NIL {
            assert!(t.slab[f as usize].is_free());
            f = t.slab[f as usize].next();
            nfree += 1;
        }
        assert_eq!(nfree, free);
        assert!(t.slab.capacity() <= t.capacity as usize || t.capacity == 0);
    }

    fn key(n: u32) -> FlowKey {
        FlowKey::client_ip(IpAddr::from(n.to_be_bytes()))
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn entry_is_52_bytes_and_tags_round_trip() {
        assert_eq!(FlowTable::<RandomState>::ENTRY_BYTES, 52);
        for tag in 0..4u8 {
            let k = FlowKey {
                src: [1; 16],
                dst: [2; 16],
                src_port: 3,
                dst_port: 4,
                tag,
            };
            let mut e = Entry::new(&k, 9, 10);
            assert_eq!(e.tag(), tag);
            e.set_prev(5);
            e.set_next(FREE - 1);
            assert_eq!((e.prev(), e.next(), e.tag()), (5, FREE - 1, tag));
            assert!(e.matches(&k));
            assert_eq!(e.key(), k);
            assert!(!e.is_free());
        }
    }

    #[test]
    fn structure_survives_churn() {
        let mut t = FlowTable::new(64, MS(1000));
        let mut x = 12345u32;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let k = key(x % 200);
            let now = MS(step / 4);
            match x % 7 {
                0 => {
                    t.remove(&k);
                }
                1 => {
                    t.remove_backend(x % 5);
                }
                2 => {
                    t.expire(now, (x % 4) as usize);
                }
                3 | 4 => {
                    t.get(&k, now);
                }
                _ => {
                    t.insert(&k, x % 5, now);
                }
            }
            if step % 97 == 0 {
                check(&t);
            }
        }
        check(&t);
    }

    #[test]
    fn rebuild_keeps_everything() {
        let mut t = FlowTable::new(1000, MS(1_000_000));
        for n in 0..1000 {
            t.insert(&key(n), n, MS(u64::from(n)));
        }
        t.rebuild_index();
        check(&t);
        for n in 0..1000 {
            assert_eq!(t.peek(&key(n), MS(1000)), Some(n));
        }
        assert_eq!(t.index_rebuilds(), 1);
    }

    #[test]
    fn churn_at_high_load_does_not_grow_the_index() {
        // A capacity just under a bucket boundary: the index is as full as it gets.
        for cap in [977usize, 1592] {
            let mut t = FlowTable::new(cap, MS(1_000_000));
            let size = t.memory_bytes();
            for n in 0..200_000u32 {
                t.insert(&key(n), n, MS(0));
            }
            assert_eq!(t.len(), cap);
            assert_eq!(t.memory_bytes(), size);
            assert!(t.index_rebuilds() > 0, "the tombstone path was exercised");
            check(&t);
        }
    }
}
