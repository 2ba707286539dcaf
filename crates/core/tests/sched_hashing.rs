//! Hashing schedulers: Maglev weighted shares and disruption, order independence.

use fulcrum_core::hash::jhash2;
use fulcrum_core::model::{canonical_addr, Backend, PrimeTableSize, SchedulerKind};
use fulcrum_core::sched::{build, moved_ratio, Maglev, NoLoads, PickRequest, SchedOptions};
use proptest::prelude::*;

fn addr(i: usize) -> std::net::SocketAddr {
    match i % 3 {
        0 => format!("198.18.{}.{}:80", i / 250, i % 250 + 1),
        1 => format!("127.0.{}.{}:8080", i / 250, i % 250 + 1),
        _ => format!("[2001:db8::{:x}]:443", i + 1),
    }
    .parse()
    .expect("addr")
}

fn pool(weights: &[u16]) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Backend::new(addr(i), w))
        .collect()
}

fn size(m: u32) -> PrimeTableSize {
    PrimeTableSize::new(m).expect("prime")
}

fn counts(mg: &Maglev, n: usize) -> Vec<u64> {
    let mut c = vec![0u64; n];
    for &i in mg.table() {
        c[i as usize] += 1;
    }
    c
}

fn assert_shares(weights: &[u16], m: u32) {
    let b = pool(weights);
    let mg = Maglev::new(&b, size(m));
    assert_eq!(mg.table().len(), m as usize);
    let c = counts(&mg, b.len());
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    for (i, &w) in weights.iter().enumerate() {
        let exact = u64::from(m) * u64::from(w);
        let (lo, hi) = (exact / total, exact.div_ceil(total));
        assert!(
            c[i] == lo || c[i] == hi,
            "backend {i} w={w}: {} not in {lo}..={hi}",
            c[i]
        );
    }
}

#[test]
fn maglev_shares_examples() {
    assert_shares(&[1, 1, 1], 65537);
    assert_shares(&[1, 2, 3, 4], 65537);
    assert_shares(&[65535, 1], 65537);
    assert_shares(&[100; 100], 65537);
    assert_shares(&[7, 0, 3], 1009);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn maglev_every_backend_gets_floor_or_ceil(weights in proptest::collection::vec(1u16..=1000, 1..60), big in any::<bool>()) {
        assert_shares(&weights, if big { 65537 } else { 1009 });
    }

    #[test]
    fn hashing_choice_is_independent_of_listing_order(
        weights in proptest::collection::vec(0u16..=20, 1..30),
        seed in any::<u64>(),
        hashes in proptest::collection::vec(any::<u32>(), 50),
    ) {
        let b = pool(&weights);
        let mut shuffled: Vec<usize> = (0..b.len()).collect();
        // Fisher-Yates with a seeded LCG.
        let mut x = seed | 1;
        for k in (1..shuffled.len()).rev() {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            shuffled.swap(k, (x >> 33) as usize % (k + 1));
        }
        let b2: Vec<Backend> = shuffled.iter().map(|&i| b[i].clone()).collect();
        let opts = SchedOptions { maglev_table_size: size(1009), ..SchedOptions::default() };
        for kind in [SchedulerKind::Maglev, SchedulerKind::RingHash, SchedulerKind::SourceHash] {
            let (s1, s2) = (build(kind, &b, &opts), build(kind, &b2, &opts));
            for &h in &hashes {
                let r = |ex: &'static [usize]| PickRequest { hash: h, random: 0, loads: &NoLoads, exclude: ex, now: std::time::Duration::ZERO };
                let p1 = s1.pick(&r(&[])).map(|i| b[i].address);
                let p2 = s2.pick(&r(&[])).map(|i| b2[i].address);
                prop_assert_eq!(p1, p2, "{}", kind);
            }
        }
        let (m1, m2) = (Maglev::new(&b, size(1009)), Maglev::new(&b2, size(1009)));
        prop_assert_eq!(m1.table_checksum(), m2.table_checksum());
    }
}

/// Flows as hashes (a fixed, well spread sample).
fn flows(n: u32) -> impl Iterator<Item = u32> {
    (0..n).map(|k| jhash2(&[k], 0x5eed))
}

/// Fraction of flows not on `removed` (in the old pool) whose backend changed.
fn disruption(old_b: &[Backend], new_b: &[Backend], removed: Option<usize>) -> (f64, f64) {
    let m = size(65537);
    let (old, new) = (Maglev::new(old_b, m), Maglev::new(new_b, m));
    let owner = |mg: &Maglev, b: &[Backend], h: u32| {
        canonical_addr(&b[mg.table()[mg.slot(h)] as usize].address)
    };
    let (mut kept_total, mut moved) = (0u32, 0u32);
    for h in flows(200_000) {
        let before = owner(&old, old_b, h);
        if removed.is_some_and(|r| before == canonical_addr(&old_b[r].address)) {
            continue;
        }
        kept_total += 1;
        if before != owner(&new, new_b, h) {
            moved += 1;
        }
    }
    (
        f64::from(moved) / f64::from(kept_total),
        moved_ratio(&old, old_b, &new, new_b),
    )
}

#[test]
fn maglev_removing_one_backend_moves_few_other_flows() {
    for n in [5usize, 10, 100] {
        let b = pool(&vec![1; n]);
        let mut smaller = b.clone();
        smaller.remove(n / 2);
        let (frac, table_ratio) = disruption(&b, &smaller, Some(n / 2));
        println!("maglev remove 1 of {n}: {frac:.4} of other flows moved; table moved ratio {table_ratio:.4}");
        // The paper's figure 10: a few percent at most for M much larger than N.
        assert!(frac < 0.03, "n={n}: {frac}");
        // The removed backend's own share (1/n) must move.
        assert!(table_ratio >= 1.0 / n as f64 - 0.001);
    }
}

#[test]
fn maglev_adding_one_backend_moves_about_its_share() {
    for n in [5usize, 10, 100] {
        let b = pool(&vec![1; n]);
        let bigger = pool(&vec![1; n + 1]);
        let (frac, table_ratio) = disruption(&b, &bigger, None);
        let ideal = 1.0 / (n + 1) as f64;
        println!("maglev add 1 to {n}: {frac:.4} of flows moved (ideal {ideal:.4}); table moved ratio {table_ratio:.4}");
        assert!(
            frac >= ideal * 0.95 && frac < ideal + 0.03,
            "n={n}: {frac} vs {ideal}"
        );
        assert!((table_ratio - frac).abs() < 0.01);
    }
}

#[test]
fn maglev_weight_change_moves_little() {
    let b = pool(&[1; 10]);
    let mut heavier = b.clone();
    heavier[3].weight = fulcrum_core::model::Weight::new(2);
    let (frac, _) = disruption(&b, &heavier, None);
    println!(
        "maglev weight 1 -> 2 on one of 10: {frac:.4} of flows moved (ideal {:.4})",
        1.0 / 11.0
    );
    assert!(frac < 0.15, "{frac}");
}

#[test]
fn maglev_exclusion_probes_forward_deterministically() {
    let b = pool(&[1, 1, 1, 1]);
    let mg = Maglev::new(&b, size(1009));
    let t = mg.table();
    for h in 0..2000u32 {
        let slot = mg.slot(h);
        let first = t[slot] as usize;
        let expect = (1..t.len())
            .map(|k| t[(slot + k) % t.len()] as usize)
            .find(|&i| i != first)
            .expect("another backend");
        let req = PickRequest {
            hash: h,
            random: 0,
            loads: &NoLoads,
            exclude: &[first],
            now: std::time::Duration::ZERO,
        };
        assert_eq!(fulcrum_core::sched::Scheduler::pick(&mg, &req), Ok(expect));
    }
}

#[test]
fn moved_ratio_edge_cases() {
    let b = pool(&[1, 1, 1]);
    let mg = Maglev::new(&b, size(1009));
    assert!(moved_ratio(&mg, &b, &mg, &b).abs() < f64::EPSILON);
    let mut reordered = b.clone();
    reordered.reverse();
    let mg2 = Maglev::new(&reordered, size(1009));
    assert!(moved_ratio(&mg, &b, &mg2, &reordered).abs() < f64::EPSILON);
    let other = Maglev::new(&b, size(1013));
    assert!((moved_ratio(&mg, &b, &other, &b) - 1.0).abs() < f64::EPSILON);
    let none = Maglev::new(&[], size(1009));
    assert!((moved_ratio(&mg, &b, &none, &[]) - 1.0).abs() < f64::EPSILON);
}

#[test]
fn ring_hash_points_follow_weights() {
    let b = pool(&[1, 2, 4]);
    let s = build(SchedulerKind::RingHash, &b, &SchedOptions::default());
    let mut c = [0u32; 3];
    for h in flows(100_000) {
        c[s.pick(&PickRequest {
            hash: h,
            random: 0,
            loads: &NoLoads,
            exclude: &[],
            now: std::time::Duration::ZERO,
        })
        .expect("pick")] += 1;
    }
    let share = |i: usize| f64::from(c[i]) / 100_000.0;
    println!(
        "ring_hash shares for weights 1,2,4: {:.3} {:.3} {:.3}",
        share(0),
        share(1),
        share(2)
    );
    assert!((share(0) - 1.0 / 7.0).abs() < 0.04, "{c:?}");
    assert!((share(2) - 4.0 / 7.0).abs() < 0.06, "{c:?}");
}

/// The next prime at or above `n` (3..=1,000,003) that `PrimeTableSize` accepts.
fn prime_at_or_above(n: u32) -> PrimeTableSize {
    (n.max(3)..=PrimeTableSize::MAX)
        .find_map(PrimeTableSize::new)
        .expect("a prime up to PrimeTableSize::MAX")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The fast build (`Maglev::new`: probing four entries at a time, then the free-slot list
    /// of the tail) gives exactly the table of the plain probing (`populate_reference`) and of
    /// one probe at a time, over random pools (IPv4, IPv6, IPv4-mapped IPv6; weights 0-40 and
    /// some far heavier; some backends down or drained; any listing order) and table sizes.
    /// Every instance and the XDP plane must compute the same table.
    #[test]
    fn maglev_fast_build_is_the_reference_table(
        backends in proptest::collection::vec((0u8..3, any::<u16>(), 1u16..4, 0u16..=40, 0u8..10), 1..400),
        heavy in proptest::collection::vec(any::<u16>(), 0..3),
        m in prop_oneof![3u32..300, 300u32..20_000, Just(65_537u32), 65_538u32..140_000],
    ) {
        use fulcrum_core::model::BackendState;
        use fulcrum_core::sched::maglev::{populate_one_at_a_time, populate_reference};
        let mut b: Vec<Backend> = backends
            .iter()
            .enumerate()
            .map(|(i, &(kind, x, port, w, state))| {
                let a = match kind {
                    0 => format!("198.18.{}.{}:{port}", i / 250, i % 250),
                    1 => format!("[2001:db8::{x:x}:{i:x}]:{port}"),
                    _ => format!("[::ffff:198.19.{}.{}]:{port}", i / 250, i % 250),
                };
                let mut be = Backend::new(a.parse().expect("addr"), w);
                be.state = match state {
                    0 => BackendState::Down,
                    1 => BackendState::Draining,
                    _ => BackendState::Up,
                };
                be
            })
            .collect();
        for (i, &w) in heavy.iter().enumerate() {
            if let Some(be) = b.get_mut(i * 7) {
                be.weight = fulcrum_core::model::Weight::new(w);
            }
        }
        let size = prime_at_or_above(m);
        let reference = populate_reference(&b, size);
        let fast = Maglev::new(&b, size);
        prop_assert_eq!(fast.table(), reference.as_slice());
        prop_assert_eq!(populate_one_at_a_time(&b, size), reference);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// `moved_ratio` is the share of slots whose owner's canonical address differs, for a
    /// pool changed at random (backends removed, added, reweighted, listed in another order,
    /// IPv4 written as IPv4-mapped IPv6, an address listed twice).
    #[test]
    fn maglev_moved_ratio_counts_owner_addresses(
        old in proptest::collection::vec((0u16..600, 0u16..5), 1..120),
        new in proptest::collection::vec((0u16..600, 0u16..5, any::<bool>()), 1..120),
        m in prop_oneof![Just(251u32), Just(1009u32), Just(65_537u32)],
    ) {
        let addr_of = |x: u16, mapped: bool| -> std::net::SocketAddr {
            let (hi, lo) = (x / 250, x % 250 + 1);
            if mapped {
                format!("[::ffff:198.18.{hi}.{lo}]:80")
            } else {
                format!("198.18.{hi}.{lo}:80")
            }
            .parse()
            .expect("addr")
        };
        let ob: Vec<Backend> = old.iter().map(|&(x, w)| Backend::new(addr_of(x, false), w)).collect();
        let nb: Vec<Backend> = new.iter().map(|&(x, w, mp)| Backend::new(addr_of(x, mp), w)).collect();
        let (om, nm) = (Maglev::new(&ob, size(m)), Maglev::new(&nb, size(m)));
        let expected = match (om.table().is_empty(), nm.table().is_empty()) {
            (true, true) => 0.0,
            (false, false) => {
                let moved = om
                    .table()
                    .iter()
                    .zip(nm.table())
                    .filter(|(&o, &n)| {
                        canonical_addr(&ob[o as usize].address) != canonical_addr(&nb[n as usize].address)
                    })
                    .count();
                moved as f64 / f64::from(m)
            }
            _ => 1.0,
        };
        prop_assert!((moved_ratio(&om, &ob, &nm, &nb) - expected).abs() < 1e-12);
    }
}

/// Every exclusion set of a 4-backend pool, for Maglev and sh: the pick is the first slot
/// from the flow's, forward, whose owner is not excluded (first slot's owner allowed or not),
/// and `AllTried` once every backend is excluded.
#[test]
fn hashing_pick_is_the_first_owner_not_excluded_for_every_exclusion_set() {
    use fulcrum_core::sched::sh::SourceHash;
    use fulcrum_core::sched::{PickError, Scheduler};
    let b = pool(&[1, 2, 3, 1]);
    let mg = Maglev::new(&b, size(1009));
    let sh = SourceHash::new(&b);
    let walk = |t: &[u32], slot: usize, ex: &[usize]| {
        (0..t.len())
            .map(|k| t[(slot + k) % t.len()] as usize)
            .find(|i| !ex.contains(i))
            .ok_or(PickError::AllTried { tried: 4 })
    };
    for set in 0u32..16 {
        let ex: Vec<usize> = (0..4).filter(|i| set & (1 << i) != 0).collect();
        for h in flows(300) {
            let req = PickRequest {
                hash: h,
                random: 0,
                loads: &NoLoads,
                exclude: &ex,
                now: std::time::Duration::ZERO,
            };
            assert_eq!(
                mg.pick(&req),
                walk(mg.table(), mg.slot(h), &ex),
                "maglev {ex:?}"
            );
            let slot = sh.slot(h).expect("a table");
            assert_eq!(sh.pick(&req), walk(sh.table(), slot, &ex), "sh {ex:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// `Maglev::new_after` (the per-backend work carried over from the previous table) gives
    /// exactly `Maglev::new`'s table and checksum, over random changes of a random pool
    /// (backends inserted anywhere, removed, reweighted to 0 and back, taken down or up,
    /// two swapped; addresses listed twice, IPv4 also written as IPv4-mapped IPv6), and over
    /// two changes in a row (the second from the first's carried-over table).
    #[test]
    fn maglev_carried_over_build_is_the_fresh_build(
        base in proptest::collection::vec((0u16..300, 0u16..5, any::<bool>(), 0u8..8), 0..150),
        changes in proptest::collection::vec(
            proptest::collection::vec((0u8..6, any::<u16>(), 0u16..300, 0u16..5, any::<bool>()), 1..6),
            2,
        ),
        m in prop_oneof![Just(251u32), Just(1009u32), Just(65_537u32)],
    ) {
        use fulcrum_core::model::{BackendState, Weight};
        let backend = |x: u16, w: u16, mapped: bool, down: bool| {
            let (hi, lo) = (x / 250, x % 250 + 1);
            let a = if mapped {
                format!("[::ffff:198.18.{hi}.{lo}]:80")
            } else {
                format!("198.18.{hi}.{lo}:80")
            };
            let mut b = Backend::new(a.parse().expect("addr"), w);
            if down {
                b.state = BackendState::Down;
            }
            b
        };
        let mut pool: Vec<Backend> = base
            .iter()
            .map(|&(x, w, mp, s)| backend(x, w, mp && s < 2, s == 7))
            .collect();
        let mut prev = Maglev::new(&pool, size(m));
        for ops in &changes {
            let old = pool.clone();
            for &(op, at, x, w, flag) in ops {
                let at = usize::from(at) % (pool.len() + 1);
                match op {
                    0 | 1 => pool.insert(at, backend(x, w, flag && x % 3 == 0, !flag && x % 5 == 0)),
                    2 if at < pool.len() => { pool.remove(at); }
                    3 if at < pool.len() => pool[at].weight = Weight::new(w),
                    4 if at < pool.len() => {
                        pool[at].state = if flag { BackendState::Up } else { BackendState::Draining };
                    }
                    5 if at + 1 < pool.len() => pool.swap(at, at + 1),
                    _ => {}
                }
            }
            let fresh = Maglev::new(&pool, size(m));
            let after = Maglev::new_after(&prev, &old, &pool, size(m));
            prop_assert_eq!(after.table(), fresh.table());
            prop_assert_eq!(after.table_checksum(), fresh.table_checksum());
            prop_assert!(moved_ratio(&fresh, &pool, &after, &pool) < 1e-12);
            prev = after;
        }
        // Another table size: built afresh.
        let m2 = size(if m == 251 { 1009 } else { 251 });
        let (other, fresh) = (Maglev::new_after(&prev, &pool, &pool, m2), Maglev::new(&pool, m2));
        prop_assert_eq!(other.table(), fresh.table());
    }
}
