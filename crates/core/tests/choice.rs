//! `choice::choose`: the order of the decision (sticky cookie, persistence, scheduler), what
//! explain mode leaves alone, and `header:`/`cookie:` hash keys.

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_core::choice::{choose, Choice, Flow, Kept, Mode, Pool, RequestKey, Why};
use fulcrum_core::flow::{FlowKey, FlowTable};
use fulcrum_core::model::{Backend, BackendState, FlowTuple, HashKey, Proto, SchedulerKind};
use fulcrum_core::sched::{build, PickError, PickRequest, SchedOptions};

#[path = "common/pool.rs"]
mod pool;

use pool::TestPool;

/// `n` backends 198.18.0.1..=n:80 under `kind`, ids 100 + index.
fn test_pool(kind: SchedulerKind, key: HashKey, n: usize) -> TestPool {
    let backends: Vec<Backend> = (1..=n)
        .map(|i| Backend::new(SocketAddr::from(([198, 18, 0, i as u8], 80)), 1))
        .collect();
    TestPool::new(kind, key, backends).with_first_id(100)
}

const NOW: Duration = Duration::from_secs(10);

fn tuple(port: u16) -> FlowTuple {
    FlowTuple {
        src: SocketAddr::from(([198, 18, 1, 7], port)),
        dst: SocketAddr::from(([198, 18, 0, 100], 80)),
        proto: Proto::Tcp,
    }
}

fn table() -> FlowTable {
    FlowTable::new(64, Duration::from_secs(60))
}

fn pick(p: &TestPool, flow: &Flow<'_>, t: Option<&mut FlowTable>) -> Result<Choice, PickError> {
    choose(p, flow, Mode::Pick(t))
}

fn explain(
    p: &TestPool,
    flow: &Flow<'_>,
    t: Option<&FlowTable>,
) -> (Result<Choice, PickError>, Option<Kept>) {
    let mut kept = None;
    let c = choose(
        p,
        flow,
        Mode::Explain {
            table: t,
            kept: &mut kept,
        },
    );
    (c, kept)
}

#[test]
fn sticky_cookie_first_unless_tried_or_not_eligible() {
    let mut p = test_pool(SchedulerKind::Maglev, HashKey::SrcIp, 4);
    let sticky = |i, tried| Flow {
        sticky: Some(i),
        ..Flow::l4(tuple(1000), tried, 7, NOW)
    };
    let c = pick(&p, &sticky(2, &[]), None).expect("pick");
    assert_eq!((c.backend, c.why), (Some(2), Why::Sticky));
    // Tried: the hash decides, and never the tried backend.
    let c = pick(&p, &sticky(2, &[2]), None).expect("pick");
    assert!(
        matches!(c.why, Why::Hash(_)) && c.backend != Some(2),
        "{c:?}"
    );
    // Not eligible, or no such backend: the hash decides.
    p.backends[2].state = BackendState::Draining;
    let c = pick(&p, &sticky(2, &[]), None).expect("pick");
    assert!(matches!(c.why, Why::Hash(_)), "{c:?}");
    let c = pick(&p, &sticky(9, &[]), None).expect("pick");
    assert!(matches!(c.why, Why::Hash(_)), "{c:?}");
}

#[test]
fn persistence_is_filled_by_pick_and_only_read_by_explain() {
    let p = test_pool(SchedulerKind::RoundRobin, HashKey::SrcIp, 5);
    let mut tbl = table();
    let key = FlowKey::client_ip(tuple(0).src.ip());
    // A new client: explain names no backend (rr depends on its position) and fills nothing.
    let (c, kept) = explain(&p, &Flow::l4(tuple(1), &[], 0, NOW), Some(&tbl));
    assert_eq!(
        c,
        Ok(Choice {
            backend: None,
            why: Why::Scheduler
        })
    );
    assert_eq!((kept, tbl.peek(&key, NOW)), (None, None));
    // The first pick is remembered; the client's next flows keep it.
    let first = pick(&p, &Flow::l4(tuple(2), &[], 0, NOW), Some(&mut tbl)).expect("pick");
    assert_eq!(first.why, Why::Scheduler);
    let i = first.backend.expect("a backend");
    assert_eq!(tbl.peek(&key, NOW), p.backend_id(i));
    let (c, kept) = explain(&p, &Flow::l4(tuple(3), &[], 0, NOW), Some(&tbl));
    assert_eq!(
        c,
        Ok(Choice {
            backend: Some(i),
            why: Why::Persistence
        })
    );
    assert_eq!(
        kept,
        Some(Kept {
            backend: Some(i),
            usable: true
        })
    );
    for port in 4..20 {
        let c = pick(&p, &Flow::l4(tuple(port), &[], 0, NOW), Some(&mut tbl)).expect("pick");
        assert_eq!((c.backend, c.why), (Some(i), Why::Persistence));
    }
    // Tried: explain shows the entry unusable; the pick replaces it.
    let (c, kept) = explain(&p, &Flow::l4(tuple(30), &[i], 0, NOW), Some(&tbl));
    assert_eq!(
        c,
        Ok(Choice {
            backend: None,
            why: Why::Scheduler
        })
    );
    assert_eq!(
        kept,
        Some(Kept {
            backend: Some(i),
            usable: false
        })
    );
    let c = pick(&p, &Flow::l4(tuple(31), &[i], 0, NOW), Some(&mut tbl)).expect("pick");
    let other = c.backend.expect("a backend");
    assert_ne!(i, other);
    assert_eq!(tbl.peek(&key, NOW), p.backend_id(other));
}

#[test]
fn explain_moves_no_scheduler_state() {
    let p = test_pool(SchedulerKind::RoundRobin, HashKey::SrcIp, 5);
    let q = test_pool(SchedulerKind::RoundRobin, HashKey::SrcIp, 5);
    for port in 0..50 {
        for _ in 0..3 {
            let (c, _) = explain(&p, &Flow::l4(tuple(port), &[], 0, NOW), None);
            assert_eq!(c.expect("explain").backend, None);
        }
        let a = pick(&p, &Flow::l4(tuple(port), &[], 0, NOW), None).expect("pick");
        let b = pick(&q, &Flow::l4(tuple(port), &[], 0, NOW), None).expect("pick");
        assert_eq!(a, b, "explain moved rr's position");
    }
}

#[test]
fn request_keys() {
    let p = test_pool(SchedulerKind::RingHash, HashKey::Header("x-user".into()), 5);
    let mut t = table();
    let with = |v| Flow {
        request: RequestKey::Value(v),
        ..Flow::l4(tuple(1), &[], 0xdead_beef_0000_0000, NOW)
    };
    // A value: its hash decides, the same in explain, and persistence is not consulted.
    let c = pick(&p, &with(Some(b"alice")), Some(&mut t)).expect("pick");
    assert_eq!(c.why, Why::Hash(fulcrum_core::hash::hash_bytes(b"alice")));
    assert_eq!(explain(&p, &with(Some(b"alice")), Some(&t)).0, Ok(c));
    assert_eq!(t.peek(&FlowKey::client_ip(tuple(1).src.ip()), NOW), None);
    // No value: the random number's high half stands in for the hash.
    let c = pick(&p, &with(None), None).expect("pick");
    assert_eq!(c.why, Why::KeyMissing);
    let by_hash = p.scheduler.pick(&PickRequest {
        hash: 0xdead_beef,
        random: 0,
        loads: &p,
        exclude: &[],
        now: std::time::Duration::ZERO,
    });
    assert_eq!(c.backend, by_hash.ok());
    // No request (explain): no backend, it depends on the request.
    let (c, kept) = explain(&p, &Flow::l4(tuple(1), &[], 0, NOW), Some(&t));
    assert_eq!(
        c,
        Ok(Choice {
            backend: None,
            why: Why::RequestKey
        })
    );
    assert_eq!(kept, None);
}

#[test]
fn errors_say_why() {
    let mut p = test_pool(SchedulerKind::Maglev, HashKey::SrcIp, 3);
    let all = [0, 1, 2];
    let e = pick(&p, &Flow::l4(tuple(1), &all, 0, NOW), None);
    assert_eq!(e, Err(PickError::AllTried { tried: 3 }));
    assert_eq!(explain(&p, &Flow::l4(tuple(1), &all, 0, NOW), None).0, e);
    for b in &mut p.backends {
        b.state = BackendState::Down;
    }
    p.scheduler = build(SchedulerKind::Maglev, &p.backends, &SchedOptions::default());
    let e = pick(&p, &Flow::l4(tuple(1), &[], 0, NOW), None);
    assert_eq!(e, Err(PickError::NoneEligible { total: 3 }));
}
