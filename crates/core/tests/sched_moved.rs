//! Live disruption: the share of hash space (`ring_hash`) or table slots (`maglev`) that change
//! owner when a pool changes.
#![allow(clippy::unwrap_used)]

use fulcrum_core::model::{Backend, PrimeTableSize};
use fulcrum_core::sched::{self, ring_hash, Maglev, RingHash};

fn backends(n: u8) -> Vec<Backend> {
    (1..=n)
        .map(|i| Backend::new(format!("10.0.0.{i}:80").parse().unwrap(), 1))
        .collect()
}

#[test]
fn ring_unchanged_set_moves_nothing_and_reorder_too() {
    let a = backends(4);
    let mut b = a.clone();
    b.reverse();
    let (ra, rb) = (RingHash::new(&a), RingHash::new(&b));
    assert!(ring_hash::moved_ratio(&ra, &a, &rb, &b).abs() < 1e-12);
}

#[test]
fn ring_adding_one_of_five_moves_about_a_fifth() {
    let a = backends(4);
    let b = backends(5);
    let r = ring_hash::moved_ratio(&RingHash::new(&a), &a, &RingHash::new(&b), &b);
    assert!((0.1..0.3).contains(&r), "moved {r}");
}

#[test]
fn ring_empty_cases() {
    let e: Vec<Backend> = Vec::new();
    let a = backends(2);
    assert!(ring_hash::moved_ratio(&RingHash::new(&e), &e, &RingHash::new(&e), &e).abs() < 1e-12);
    assert!(
        (ring_hash::moved_ratio(&RingHash::new(&e), &e, &RingHash::new(&a), &a) - 1.0).abs()
            < 1e-12
    );
}

#[test]
fn ring_position_agrees_with_pick() {
    let a = backends(3);
    let r = RingHash::new(&a);
    for h in [0u32, 1, 12345, u32::MAX / 2, u32::MAX] {
        let pos = r.position(h).unwrap();
        let req = sched::PickRequest {
            hash: h,
            random: 0,
            loads: &sched::NoLoads,
            exclude: &[],
            now: std::time::Duration::ZERO,
        };
        let picked = sched::Scheduler::pick(&r, &req).unwrap();
        assert_eq!(r.owners()[pos] as usize, picked);
    }
}

#[test]
fn maglev_adding_one_of_five_moves_about_a_fifth() {
    let size = PrimeTableSize::new(65537).unwrap();
    let a = backends(4);
    let b = backends(5);
    let r = sched::moved_ratio(&Maglev::new(&a, size), &a, &Maglev::new(&b, size), &b);
    assert!((0.15..0.35).contains(&r), "moved {r}");
}
