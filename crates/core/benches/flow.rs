//! Flow table at 1M entries: hit lookup, miss lookup, insert with eviction; bytes per entry.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fulcrum_core::flow::{FlowKey, FlowTable};
use fulcrum_core::model::{FlowTuple, Proto};

const N: u32 = 1_000_000;

/// Distinct, scattered 5-tuple keys.
fn key(n: u32) -> FlowKey {
    let x = n.wrapping_mul(0x9E37_79B9);
    FlowKey::from_tuple(&FlowTuple {
        src: SocketAddr::new(IpAddr::from(x.to_be_bytes()), (n % 60_000) as u16 + 1024),
        dst: SocketAddr::new(IpAddr::from([10, 0, 0, 1]), 443),
        proto: Proto::Tcp,
    })
}

fn flow(c: &mut Criterion) {
    let now = Duration::from_secs(1);
    let mut table = FlowTable::new(N as usize, Duration::from_secs(300));
    for n in 0..N {
        table.insert(&key(n), n % 64, now);
    }
    println!(
        "flow table: {} entries, {} bytes, {:.2} bytes/entry (slab entry {} B)",
        table.len(),
        table.memory_bytes(),
        table.bytes_per_entry(),
        FlowTable::<std::collections::hash_map::RandomState>::ENTRY_BYTES
    );
    // Keys visited in a scattered order, so lookups miss the CPU caches as real traffic does.
    let hits: Vec<FlowKey> = (0..N).map(|n| key(n.wrapping_mul(7919) % N)).collect();
    let misses: Vec<FlowKey> = (0..N).map(|n| key(N + n)).collect();

    let mut g = c.benchmark_group("flow_1M");
    let mut i = 0usize;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            black_box(table.get(&hits[i], now))
        });
    });
    let mut i = 0usize;
    g.bench_function("get_miss", |b| {
        b.iter(|| {
            i = (i + 1) % misses.len();
            black_box(table.get(&misses[i], now))
        });
    });
    let mut i = 0usize;
    g.bench_function("peek_hit", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            black_box(table.peek(&hits[i], now))
        });
    });
    // Every insert is a new key: the table is full, so each one evicts the LRU entry.
    let mut n = 2 * N;
    g.bench_function("insert_evict", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            table.insert(&key(n), n % 64, now);
        });
    });
    g.bench_function("key_build_only", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(key(n))
        });
    });
    // A cache-resident table: what hashing (SipHash-1-3) and probing cost without misses.
    let mut small = FlowTable::new(1024, Duration::from_secs(300));
    for n in 0..1024 {
        small.insert(&key(n), n, now);
    }
    let small_hits: Vec<FlowKey> = (0..1024).map(key).collect();
    let mut i = 0usize;
    g.bench_function("get_hit_1k_cached", |b| {
        b.iter(|| {
            i = (i + 1) % small_hits.len();
            black_box(small.get(&small_hits[i], now))
        });
    });
    let mut i = 0usize;
    g.bench_function("get_miss_1k_cached", |b| {
        b.iter(|| {
            i = (i + 1) % misses.len();
            black_box(small.get(&misses[i], now))
        });
    });
    g.finish();
    println!(
        "after the run: {} entries, {:.2} bytes/entry, {} index rebuilds",
        table.len(),
        table.bytes_per_entry(),
        table.index_rebuilds()
    );
}

criterion_group!(benches, flow);
criterion_main!(benches);
