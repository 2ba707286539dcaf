//! Flow table: behaviour, a reference-model proptest, and the memory bound.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use fulcrum_core::flow::{FlowKey, FlowTable};
use fulcrum_core::model::{FlowTuple, Proto};
use proptest::prelude::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn tuple_key(n: u32) -> FlowKey {
    FlowKey::from_tuple(&FlowTuple {
        src: SocketAddr::new(IpAddr::from(n.to_be_bytes()), 40_000 + (n % 1000) as u16),
        dst: "198.18.0.1:80".parse().unwrap(),
        proto: Proto::Tcp,
    })
}

fn client_key(n: u32) -> FlowKey {
    FlowKey::client_ip(IpAddr::from(n.to_be_bytes()))
}

#[test]
fn hit_miss_and_replace() {
    let mut t = FlowTable::new(8, Duration::from_secs(10));
    let k = tuple_key(1);
    assert_eq!(t.get(&k, ms(0)), None);
    assert_eq!(t.insert(&k, 7, ms(0)), None);
    assert_eq!(t.get(&k, ms(5)), Some(7));
    assert_eq!(
        t.insert(&k, 9, ms(6)),
        Some(7),
        "replace returns the old backend"
    );
    assert_eq!(t.get(&k, ms(7)), Some(9));
    assert_eq!(t.len(), 1);
    assert_eq!(t.remove(&k), Some(9));
    assert_eq!(t.remove(&k), None);
    assert_eq!(t.get(&k, ms(8)), None);
    assert!(t.is_empty());
}

#[test]
fn idle_timeout_boundary_and_refresh() {
    let mut t = FlowTable::new(8, ms(1000));
    let k = client_key(1);
    t.insert(&k, 1, ms(0));
    assert_eq!(
        t.get(&k, ms(1000)),
        Some(1),
        "idle exactly the timeout: still a hit"
    );
    // The hit refreshed it: 1000 ms after that hit it is still alive.
    assert_eq!(t.get(&k, ms(2000)), Some(1));
    assert_eq!(
        t.get(&k, ms(3001)),
        None,
        "idle longer than the timeout: a miss"
    );
    assert_eq!(t.len(), 0, "the idle entry was removed");
}

#[test]
fn peek_does_not_refresh() {
    let mut t = FlowTable::new(8, ms(1000));
    let k = client_key(1);
    t.insert(&k, 1, ms(0));
    assert_eq!(t.peek(&k, ms(900)), Some(1));
    assert_eq!(t.peek(&k, ms(1001)), None);
    assert_eq!(t.get(&k, ms(1001)), None, "peek did not refresh the entry");
}

#[test]
fn idle_entry_is_replaced_without_returning_the_old_backend() {
    let mut t = FlowTable::new(8, ms(100));
    let k = client_key(1);
    t.insert(&k, 1, ms(0));
    t.insert(&client_key(2), 2, ms(50)); // keeps the table "in use"
    assert_eq!(t.insert(&k, 3, ms(101)), None);
    assert_eq!(t.get(&k, ms(102)), Some(3));
}

#[test]
fn eviction_is_least_recently_used() {
    let mut t = FlowTable::new(3, Duration::from_secs(60));
    for n in 0..3 {
        t.insert(&client_key(n), n, ms(u64::from(n)));
    }
    // Use 0: now 1 is the least recently used.
    assert_eq!(t.get(&client_key(0), ms(10)), Some(0));
    t.insert(&client_key(3), 3, ms(11));
    assert_eq!(t.len(), 3);
    assert_eq!(t.peek(&client_key(1), ms(12)), None, "1 was evicted");
    for n in [0, 2, 3] {
        assert_eq!(t.peek(&client_key(n), ms(12)), Some(n));
    }
    // Most recently used first.
    let order: Vec<u32> = t.iter().map(|(_, b)| b).collect();
    assert_eq!(order, vec![3, 0, 2]);
    // Replacing refreshes too: 2 goes to the front, 0 is evicted next.
    t.insert(&client_key(2), 22, ms(13));
    t.insert(&client_key(4), 4, ms(14));
    assert_eq!(t.peek(&client_key(0), ms(15)), None);
    let order: Vec<u32> = t.iter().map(|(_, b)| b).collect();
    assert_eq!(order, vec![4, 22, 3]);
}

#[test]
fn remove_backend_removes_exactly_its_entries() {
    let mut t = FlowTable::new(100, Duration::from_secs(60));
    for n in 0..100 {
        t.insert(&tuple_key(n), n % 3, ms(0));
    }
    assert_eq!(t.remove_backend(1), 33);
    assert_eq!(t.len(), 67);
    for n in 0..100 {
        let expect = (n % 3 != 1).then_some(n % 3);
        assert_eq!(t.peek(&tuple_key(n), ms(1)), expect, "key {n}");
    }
    assert_eq!(t.remove_backend(1), 0);
    assert!(t.iter().all(|(_, b)| b != 1));
    // Freed slots are reused: the table fills to capacity again without evicting.
    for n in 100..133 {
        t.insert(&tuple_key(n), 5, ms(2));
    }
    assert_eq!(t.len(), 100);
    assert_eq!(t.peek(&tuple_key(0), ms(3)), Some(0));
}

#[test]
fn expire_is_bounded_and_oldest_first() {
    let mut t = FlowTable::new(100, ms(1000));
    for n in 0..10 {
        t.insert(&client_key(n), n, ms(u64::from(n) * 10));
    }
    // At 1045 ms, entries 0..=4 (last seen 0..=40 ms) are idle.
    assert_eq!(t.expire(ms(1045), 2), 2);
    assert_eq!(t.len(), 8);
    assert_eq!(t.expire(ms(1045), 100), 3);
    assert_eq!(t.len(), 5);
    assert_eq!(t.expire(ms(1045), 100), 0);
    for n in 5..10 {
        assert_eq!(t.peek(&client_key(n), ms(1045)), Some(n));
    }
}

#[test]
fn a_long_gap_drops_everything() {
    let mut t = FlowTable::new(100, ms(1000));
    for n in 0..50 {
        t.insert(&client_key(n), n, ms(0));
    }
    assert_eq!(t.expire(ms(5000), 1), 50, "all idle: all dropped at once");
    assert!(t.is_empty());
}

#[test]
fn time_going_backwards_is_clamped() {
    let mut t = FlowTable::new(10, ms(1000));
    t.insert(&client_key(1), 1, ms(5000));
    // An earlier `now` counts as 5000: the entry is not idle, and stays ordered.
    assert_eq!(t.get(&client_key(1), ms(10)), Some(1));
    assert_eq!(t.get(&client_key(1), ms(6000)), Some(1));
    assert_eq!(t.get(&client_key(1), ms(7001)), None);
}

#[test]
fn key_kinds_and_address_forms() {
    let v4: IpAddr = Ipv4Addr::new(192, 0, 2, 7).into();
    let mapped: IpAddr = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().into();
    let v6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).into();
    assert_eq!(FlowKey::client_ip(v4), FlowKey::client_ip(mapped));
    assert_ne!(FlowKey::client_ip(v4), FlowKey::client_ip(v6));
    let tcp = FlowTuple {
        src: SocketAddr::new(v4, 1234),
        dst: "198.51.100.1:443".parse().unwrap(),
        proto: Proto::Tcp,
    };
    let udp = FlowTuple {
        proto: Proto::Udp,
        ..tcp
    };
    let k_tcp = FlowKey::from_tuple(&tcp);
    assert_ne!(k_tcp, FlowKey::from_tuple(&udp));
    assert_ne!(k_tcp, FlowKey::client_ip(v4));
    assert_eq!(k_tcp.tuple(), Some(tcp));
    assert_eq!(FlowKey::from(udp).tuple(), Some(udp));
    assert_eq!(FlowKey::client_ip(mapped).src_ip(), v4);
    assert!(FlowKey::client_ip(v6).is_client_ip());
    assert_eq!(FlowKey::client_ip(v6).tuple(), None);

    let mut t = FlowTable::new(10, Duration::from_secs(1));
    t.insert(&k_tcp, 1, ms(0));
    t.insert(&FlowKey::from_tuple(&udp), 2, ms(0));
    t.insert(&FlowKey::client_ip(v4), 3, ms(0));
    t.insert(&FlowKey::client_ip(v6), 4, ms(0));
    assert_eq!(t.len(), 4);
    assert_eq!(t.get(&k_tcp, ms(1)), Some(1));
    assert_eq!(t.get(&FlowKey::from_tuple(&udp), ms(1)), Some(2));
    assert_eq!(t.get(&FlowKey::client_ip(mapped), ms(1)), Some(3));
    assert_eq!(t.get(&FlowKey::client_ip(v6), ms(1)), Some(4));
    let keys: Vec<FlowKey> = t.iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&k_tcp) && keys.contains(&FlowKey::client_ip(v6)));
}

#[test]
fn capacity_zero_stores_nothing() {
    let mut t = FlowTable::new(0, Duration::from_secs(1));
    assert_eq!(t.insert(&client_key(1), 1, ms(0)), None);
    assert_eq!(t.get(&client_key(1), ms(0)), None);
    assert_eq!(t.len(), 0);
    assert_eq!(t.capacity(), 0);
}

#[test]
fn one_million_entries_cost_at_most_64_bytes_each() {
    const N: usize = 1_000_000;
    let mut t = FlowTable::new(N, Duration::from_secs(300));
    let before = t.memory_bytes();
    for n in 0..N as u32 {
        t.insert(&tuple_key(n), n, ms(0));
    }
    assert_eq!(t.len(), N);
    // Nothing grew while filling: the memory was all allocated up front.
    assert_eq!(t.memory_bytes(), before);
    // Slab (52 B/entry) + index (2^21 buckets x (4 B + 1 control byte) + a group).
    let per_entry = t.memory_bytes() as f64 / N as f64;
    assert!(per_entry <= 64.0, "{per_entry} bytes per entry");
    assert!((t.bytes_per_entry() - per_entry).abs() < 1e-9);
    assert_eq!(
        FlowTable::<std::collections::hash_map::RandomState>::ENTRY_BYTES,
        52
    );
    // Evicting keeps it bounded.
    for n in N as u32..N as u32 + 1000 {
        t.insert(&tuple_key(n), n, ms(1));
    }
    assert_eq!(t.len(), N);
    assert_eq!(t.memory_bytes(), before);
    assert_eq!(t.peek(&tuple_key(0), ms(1)), None);
    assert_eq!(t.peek(&tuple_key(1000), ms(1)), Some(1000));
}

/// The reference: a plain LRU list, most recent first, of (key, backend, last seen ms).
struct Model {
    cap: usize,
    timeout: u64,
    now: u64,
    entries: Vec<(u32, u32, u64)>,
}

impl Model {
    fn live(&self, k: u32) -> Option<u32> {
        self.entries
            .iter()
            .find(|e| e.0 == k && self.now - e.2 <= self.timeout)
            .map(|e| e.1)
    }
    fn live_order(&self) -> Vec<(u32, u32)> {
        self.entries
            .iter()
            .filter(|e| self.now - e.2 <= self.timeout)
            .map(|e| (e.0, e.1))
            .collect()
    }
    fn get(&mut self, k: u32) -> Option<u32> {
        let pos = self.entries.iter().position(|e| e.0 == k)?;
        let mut e = self.entries.remove(pos);
        if self.now - e.2 > self.timeout {
            return None;
        }
        e.2 = self.now;
        self.entries.insert(0, e);
        Some(e.1)
    }
    fn insert(&mut self, k: u32, b: u32) -> Option<u32> {
        let old = self.get(k);
        self.entries.retain(|e| e.0 != k);
        if self.entries.len() == self.cap {
            self.entries.pop();
        }
        self.entries.insert(0, (k, b, self.now));
        old
    }
}

#[derive(Debug, Clone)]
enum Op {
    Get(u32),
    Insert(u32, u32),
    Remove(u32),
    RemoveBackend(u32),
    Expire(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..24u32).prop_map(Op::Get),
        4 => (0..24u32, 0..4u32).prop_map(|(k, b)| Op::Insert(k, b)),
        1 => (0..24u32).prop_map(Op::Remove),
        1 => (0..4u32).prop_map(Op::RemoveBackend),
        1 => (0..4usize).prop_map(Op::Expire),
        3 => (0..700u64).prop_map(Op::Advance),
    ]
}

/// Even keys are client IPs, odd ones 5-tuples: both kinds in one table.
fn model_key(k: u32) -> FlowKey {
    if k % 2 == 0 {
        client_key(k)
    } else {
        tuple_key(k)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn behaves_as_a_reference_lru(cap in 1usize..10, ops in prop::collection::vec(op(), 1..200)) {
        let timeout = 1000;
        let mut t = FlowTable::new(cap, ms(timeout));
        let mut m = Model { cap, timeout, now: 0, entries: Vec::new() };
        for op in ops {
            let now = ms(m.now);
            match op {
                Op::Get(k) => prop_assert_eq!(t.get(&model_key(k), now), m.get(k)),
                Op::Insert(k, b) => prop_assert_eq!(t.insert(&model_key(k), b, now), m.insert(k, b)),
                Op::Remove(k) => {
                    let live = m.live(k);
                    let got = t.remove(&model_key(k));
                    m.entries.retain(|e| e.0 != k);
                    if live.is_some() {
                        prop_assert_eq!(got, live);
                    }
                }
                Op::RemoveBackend(b) => {
                    let live = m.live_order().iter().filter(|e| e.1 == b).count();
                    let stored = m.entries.iter().filter(|e| e.1 == b).count();
                    let got = t.remove_backend(b);
                    prop_assert!(live <= got && got <= stored);
                    m.entries.retain(|e| e.1 != b);
                }
                Op::Expire(max) => {
                    let before = t.len();
                    let got = t.expire(now, max);
                    prop_assert_eq!(before - t.len(), got);
                }
                Op::Advance(d) => m.now += d,
            }
            prop_assert!(t.len() <= cap);
            let now = ms(m.now);
            for k in 0..24 {
                prop_assert_eq!(t.peek(&model_key(k), now), m.live(k), "key {}", k);
            }
            // The live entries in LRU order, exactly.
            let order: Vec<(u32, u32)> = t
                .iter()
                .filter(|(k, _)| t.peek(k, now).is_some())
                .map(|(k, b)| {
                    let n = (0..24).find(|&n| model_key(n) == k).unwrap();
                    (n, b)
                })
                .collect();
            prop_assert_eq!(order, m.live_order());
        }
        // A full sweep leaves exactly the live entries.
        t.expire(ms(m.now), usize::MAX);
        prop_assert_eq!(t.len(), m.live_order().len());
    }

    #[test]
    fn never_exceeds_capacity(cap in 1usize..64, keys in prop::collection::vec(0..10_000u32, 1..500)) {
        let mut t = FlowTable::new(cap, Duration::from_secs(60));
        for (i, k) in keys.iter().enumerate() {
            t.insert(&tuple_key(*k), *k, ms(i as u64));
            prop_assert!(t.len() <= cap);
            prop_assert_eq!(t.peek(&tuple_key(*k), ms(i as u64)), Some(*k));
        }
        let mut distinct = keys.clone();
        distinct.sort_unstable();
        distinct.dedup();
        prop_assert_eq!(t.len(), distinct.len().min(cap));
    }
}
