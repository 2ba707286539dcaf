//! Pick time per flow for every scheduler (10 and 1,000 backends) and Maglev table build time
//! (M = 65537, 100 and 1,000 backends).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum_core::hash::jhash2;
use fulcrum_core::model::{Backend, PrimeTableSize, SchedulerKind};
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
    }
    g.finish();
}

criterion_group!(benches, picks, maglev_build);
criterion_main!(benches);
