//! Pick time per flow for every scheduler (10 and 1,000 backends), the cost of the one choice
//! (`choice::choose`) over a bare pick, and Maglev table build time (M = 65537, 100 and 1,000
//! backends).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::net::SocketAddr;

use fulcrum_core::choice::{self, Flow, Mode};
use fulcrum_core::hash::{flow_hash, jhash2};
use fulcrum_core::model::{Backend, FlowTuple, HashKey, PrimeTableSize, Proto, SchedulerKind};
use fulcrum_core::sched::{build, Maglev, PickRequest, SchedOptions};

fn pool(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let a = format!("198.18.{}.{}:80", i / 250, i % 250 + 1);
            Backend::new(a.parse().expect("addr"), (i % 7 + 1) as u16)
        })
        .collect()
}

fn picks(crit: &mut Criterion) {
    let mut g = crit.benchmark_group("pick");
    for n in [10usize, 1000] {
        let backends = pool(n);
        let loads: Vec<u64> = (0..n as u64).map(|i| (i * 37) % 101).collect();
        for kind in SchedulerKind::ALL {
            let s = build(kind, &backends, &SchedOptions::default());
            let mut k = 0u32;
            g.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |bencher, _| {
                bencher.iter(|| {
                    k = k.wrapping_add(1);
                    let h = jhash2(&[k], 0);
                    let req = PickRequest {
                        hash: h,
                        random: u64::from(h) << 32 | u64::from(k.wrapping_mul(0x9e37_79b9)),
                        loads: &loads,
                        exclude: &[],
                        now: std::time::Duration::ZERO,
                    };
                    black_box(s.pick(black_box(&req)))
                });
            });
        }
    }
    g.finish();
}

fn maglev_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build");
    g.sample_size(20);
    for n in [100usize, 1000] {
        let backends = pool(n);
        g.bench_with_input(BenchmarkId::new("m65537", n), &n, |b, _| {
            b.iter(|| black_box(Maglev::new(black_box(&backends), PrimeTableSize::DEFAULT)));
        });
        let equal: Vec<Backend> = backends
            .iter()
            .map(|b| Backend::new(b.address, 1))
            .collect();
        g.bench_with_input(BenchmarkId::new("m65537_equal_weights", n), &n, |b, _| {
            b.iter(|| black_box(Maglev::new(black_box(&equal), PrimeTableSize::DEFAULT)));
        });
        // The plain probing population in the same run (the table is the same).
        g.bench_with_input(BenchmarkId::new("m65537_reference", n), &n, |b, _| {
            b.iter(|| {
                black_box(fulcrum_core::sched::maglev::populate_reference(
                    black_box(&backends),
                    PrimeTableSize::DEFAULT,
                ))
            });
        });
        g.bench_with_input(
            BenchmarkId::new("m65537_equal_weights_reference", n),
            &n,
            |b, _| {
                b.iter(|| {
                    black_box(fulcrum_core::sched::maglev::populate_reference(
                        black_box(&equal),
                        PrimeTableSize::DEFAULT,
                    ))
                });
            },
        );
    }
    g.finish();
}

#[path = "../tests/common/pool.rs"]
mod test_pool;

use test_pool::TestPool;

/// Per flow, 10 backends: `bare` is the flow hash and `Scheduler::pick` (the L4 path before
/// `choice` existed), `choose` is `choice::choose` in pick mode, both without persistence.
fn choose(crit: &mut Criterion) {
    let mut g = crit.benchmark_group("choose");
    let backends = pool(10);
    let loads: Vec<u64> = (0..10u64).map(|i| (i * 37) % 101).collect();
    for kind in SchedulerKind::ALL {
        let p = TestPool::new(kind, HashKey::SrcIpPort, backends.clone()).with_loads(loads.clone());
        let tuple = |k: u32| FlowTuple {
            src: SocketAddr::from(([198, 18, 1, (k >> 16) as u8], k as u16)),
            dst: SocketAddr::from(([198, 18, 0, 1], 80)),
            proto: Proto::Tcp,
        };
        let mut k = 0u32;
        g.bench_function(BenchmarkId::new("bare", kind.as_str()), |bencher| {
            bencher.iter(|| {
                k = k.wrapping_add(1);
                let t = tuple(k);
                let req = PickRequest {
                    hash: flow_hash(&p.key, black_box(&t)).unwrap_or(0),
                    random: u64::from(k.wrapping_mul(0x9e37_79b9)) << 13,
                    loads: &p,
                    exclude: &[],
                    now: std::time::Duration::ZERO,
                };
                black_box(p.scheduler.pick(&req))
            });
        });
        g.bench_function(BenchmarkId::new("choose", kind.as_str()), |bencher| {
            bencher.iter(|| {
                k = k.wrapping_add(1);
                let random = u64::from(k.wrapping_mul(0x9e37_79b9)) << 13;
                let flow = Flow::l4(black_box(tuple(k)), &[], random, std::time::Duration::ZERO);
                black_box(choice::choose(&p, &flow, Mode::Pick(None)))
            });
        });
    }
    g.finish();
}

criterion_group!(benches, picks, choose, maglev_build);
criterion_main!(benches);
