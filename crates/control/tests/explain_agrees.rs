//! `explain` names exactly the backend the data path picks: for every scheduler, 10,000
//! random flows, with and without backends already tried, with and without persistence,
//! with and without `[pool.locality]` weights, before and after a change of the pool. Through the real functions: `explain::explain`
//! (the admin API's handler body) and `PoolRt::explain` (what it calls, which also takes the
//! tried backends) against `PoolRt::choose` (what the TCP, UDP and HTTP data paths call).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_control::explain::{explain, Query};
use fulcrum_core::choice::{Flow, RequestKey, Why};
use fulcrum_core::config::BackendProtocol;
use fulcrum_core::flow::FlowTable;
use fulcrum_core::locality::{Locality, ZonePlan};
use fulcrum_core::model::{Backend, BackendState, FlowTuple, HashKey, Proto, SchedulerKind, Zone};
use fulcrum_core::sched::{self, SchedOptions};
use fulcrum_state::snapshot::RelayMode;
use fulcrum_state::snapshot::{Persistence, PoolRt, Shared, Snapshot};
use fulcrum_state::stats::BackendStats;

const FLOWS: usize = 10_000;
const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 80);

/// What explain said.
#[derive(Debug, PartialEq)]
enum Said {
    Backend(SocketAddr),
    /// No backend named: `scheduler_state` or `http_hash_key`.
    Depends,
    /// `no_backend`, with the reason.
    NoBackend(String),
}

fn hash_key(kind: SchedulerKind) -> HashKey {
    match kind {
        SchedulerKind::SourceHash => HashKey::SrcIp,
        SchedulerKind::RingHash => HashKey::SrcIpPort,
        _ => HashKey::FiveTuple,
    }
}

/// `(address, weight, state, stats id)` per backend.
type Spec = (u16, u16, BackendState, u32);

fn pool(
    kind: SchedulerKind,
    key: HashKey,
    specs: &[Spec],
    persistence: Option<Arc<Persistence>>,
    locality: Option<&Locality>,
) -> PoolRt {
    let backends: Vec<Backend> = specs
        .iter()
        .map(|&(port, weight, state, _)| Backend {
            state,
            ..Backend::new(SocketAddr::from(([127, 0, 0, 1], port)), weight)
                .in_zone(Some(zone_of(port)))
        })
        .collect();
    let plan = locality.and_then(|l| {
        ZonePlan::build(l, None, kind, &backends, &SchedOptions::default()).map(Arc::new)
    });
    let stats = specs
        .iter()
        .zip(&backends)
        .map(|(&(.., id), b)| Arc::new(BackendStats::new(id, "p", b.address)))
        .collect();
    PoolRt {
        name: "p".into(),
        kind,
        hash_key: key,
        scheduler: sched::build(kind, &backends, &SchedOptions::default()),
        backends,
        stats,
        persistence,
        changes: Arc::default(),
        moved: Arc::default(),
        sticky_cookie: None,
        backend_protocol: BackendProtocol::default(),
        tls: None,
        locality: plan,
    }
}

/// Backends 9001..=9008 in zones a, b, c by port.
fn zone_of(port: u16) -> Zone {
    Zone::new(["a", "b", "c"][usize::from(port % 3)])
}

/// `weights = { a = 90, b = 5, c = 5 }` (the example).
fn weights() -> Locality {
    Locality::Weights {
        weights: [("a", 90), ("b", 5), ("c", 5)]
            .into_iter()
            .map(|(z, w)| (Zone::new(z), w))
            .collect(),
        controlled: false,
    }
}

/// The pool before the change, and after it: backend 9001 removed, 9003 down, 9005
/// re-weighted, 9008 added (stats ids as the controller keeps them: stable per backend).
fn before_after(
    kind: SchedulerKind,
    p: Option<&Arc<Persistence>>,
    locality: Option<&Locality>,
) -> [PoolRt; 2] {
    use BackendState::{Down, Draining, Up};
    let before: [Spec; 7] = [
        (9001, 1, Up, 1),
        (9002, 2, Up, 2),
        (9003, 3, Up, 3),
        (9004, 1, Draining, 4),
        (9005, 4, Up, 5),
        (9006, 0, Up, 6),
        (9007, 1, Up, 7),
    ];
    let after: [Spec; 7] = [
        (9002, 2, Up, 2),
        (9003, 3, Down, 3),
        (9004, 1, Up, 4),
        (9005, 1, Up, 5),
        (9006, 0, Up, 6),
        (9007, 1, Up, 7),
        (9008, 2, Up, 8),
    ];
    [&before[..], &after[..]].map(|s| pool(kind, hash_key(kind), s, p.cloned(), locality))
}

fn said_by_api(shared: &Shared, snap: &Snapshot, client: SocketAddr) -> Said {
    let q = Query {
        client,
        dst: Some(LISTEN),
        proto: Some(Proto::Tcp),
    };
    let v = explain(shared, snap, &snap.pools[0], q);
    match v["decision"].as_str() {
        Some("scheduler_state" | "http_hash_key") => Said::Depends,
        Some("no_backend") => Said::NoBackend(v["reason"].as_str().unwrap_or("").to_owned()),
        _ => Said::Backend(
            v["backend"]["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("explain named no backend address: {v}")),
        ),
    }
}

fn said_by_pool(p: &PoolRt, flow: &Flow<'_>) -> Said {
    match p.explain(flow).0 {
        Ok(c) => c
            .backend
            .map_or(Said::Depends, |i| Said::Backend(p.backends[i].address)),
        Err(e) => Said::NoBackend(e.to_string()),
    }
}

/// Up to three distinct backend indices (none for half the flows).
fn tried(rng: &mut fastrand::Rng, n: usize) -> Vec<usize> {
    let mut t = Vec::new();
    if rng.bool() {
        for _ in 0..rng.usize(1..=3) {
            let i = rng.usize(..n);
            if !t.contains(&i) {
                t.push(i);
            }
        }
    }
    t
}

/// Runs `FLOWS` flows against `p` and returns how many explain named exactly.
fn run(shared: &Shared, p: PoolRt, rng: &mut fastrand::Rng) -> usize {
    let snap = Snapshot {
        generation: 1,
        services: Vec::new(),
        pools: vec![Arc::new(p)],
    };
    let p = &snap.pools[0];
    let mut exact = 0;
    for _ in 0..FLOWS {
        // Few client IPs, so persistence entries are hit again.
        let client = SocketAddr::from(([198, 18, 1, rng.u8(..64)], rng.u16(1024..)));
        let tuple = FlowTuple {
            src: client,
            dst: LISTEN,
            proto: Proto::Tcp,
        };
        let tried = tried(rng, p.backends.len());
        let now = shared.now();
        let said = if tried.is_empty() {
            let said = said_by_api(shared, &snap, client);
            // The API's answer is the pool's explain mode.
            assert_eq!(said, said_by_pool(p, &Flow::l4(tuple, &[], 0, now)));
            said
        } else {
            said_by_pool(p, &Flow::l4(tuple, &tried, 0, now))
        };
        let picked = p.choose(&Flow::l4(tuple, &tried, rng.u64(..), now));
        let ctx = || format!("{} client {client} tried {tried:?}", p.kind);
        match (said, picked) {
            (Said::Backend(a), Ok((i, _))) => {
                assert_eq!(a, p.backends[i].address, "{}", ctx());
                exact += 1;
            }
            (Said::NoBackend(reason), Err(e)) => {
                assert_eq!(reason, e.to_string(), "{}", ctx());
                exact += 1;
            }
            (Said::Depends, Ok((i, why))) => {
                assert!(!p.kind.is_hashing(), "{}", ctx());
                assert_eq!(why, Why::Scheduler, "{}", ctx());
                assert!(p.backends[i].is_eligible(), "{}", ctx());
                assert!(!tried.contains(&i), "{}", ctx());
            }
            (Said::Depends, Err(_)) => {
                let left = (0..p.backends.len())
                    .any(|i| p.backends[i].is_eligible() && !tried.contains(&i));
                assert!(!left, "{}: refused with backends left", ctx());
            }
            (said, picked) => panic!("{}: explain said {said:?}, the data path {picked:?}", ctx()),
        }
    }
    exact
}

#[test]
fn explain_names_what_the_data_path_picks() {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Shared::new(tx, RelayMode::default(), None);
    let mut rng = fastrand::Rng::with_seed(13);
    let zoned = weights();
    for kind in SchedulerKind::ALL {
        for (persist, locality) in [
            (false, None),
            (true, None),
            (false, Some(&zoned)),
            (true, Some(&zoned)),
        ] {
            let p = persist.then(|| {
                let timeout = Duration::from_secs(300);
                Arc::new(Persistence {
                    timeout,
                    table: Mutex::new(FlowTable::new(4096, timeout)),
                })
            });
            for (phase, pool) in before_after(kind, p.as_ref(), locality)
                .into_iter()
                .enumerate()
            {
                assert_eq!(pool.locality.is_some(), locality.is_some());
                let exact = run(&shared, pool, &mut rng);
                // Hashing schedulers: every flow. The others: the flows a persistence
                // entry decides (most, with 64 client IPs), none without persistence.
                let want = match (kind.is_hashing(), persist) {
                    (true, _) => FLOWS,
                    (false, true) => FLOWS / 4,
                    (false, false) => 0,
                };
                assert!(
                    exact >= want,
                    "{kind} persistence {persist} locality {} phase {phase}: explain named {exact} of {FLOWS} flows",
                    locality.is_some()
                );
            }
        }
    }
}

/// `header:`/`cookie:` keys: explain cannot see the request and names no backend; given the
/// request's value, the explain mode names exactly what the pick takes.
#[test]
fn request_keys_agree_given_the_request() {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Shared::new(tx, RelayMode::default(), None);
    let mut rng = fastrand::Rng::with_seed(1313);
    for kind in SchedulerKind::ALL.into_iter().filter(|k| k.is_hashing()) {
        let [p, _] = before_after(kind, None, None);
        let p = PoolRt {
            hash_key: HashKey::Header("x-user".into()),
            ..p
        };
        let snap = Snapshot {
            generation: 1,
            services: Vec::new(),
            pools: vec![Arc::new(p)],
        };
        let p = &snap.pools[0];
        let client = SocketAddr::from(([198, 18, 1, 1], 4000));
        assert_eq!(said_by_api(&shared, &snap, client), Said::Depends);
        for _ in 0..FLOWS {
            let value = rng.u64(..).to_string();
            let tried = tried(&mut rng, p.backends.len());
            let flow = Flow {
                request: RequestKey::Value(Some(value.as_bytes())),
                ..Flow::l4(
                    FlowTuple {
                        src: client,
                        dst: LISTEN,
                        proto: Proto::Tcp,
                    },
                    &tried,
                    rng.u64(..),
                    shared.now(),
                )
            };
            let said = said_by_pool(p, &flow);
            let picked = p.choose(&flow).map(|(i, _)| p.backends[i].address);
            match (said, picked) {
                (Said::Backend(a), Ok(b)) => assert_eq!(a, b, "{kind} {value} {tried:?}"),
                (Said::NoBackend(r), Err(e)) => assert_eq!(r, e.to_string()),
                (said, picked) => panic!("{kind}: explain {said:?}, data path {picked:?}"),
            }
        }
    }
}

/// With `weights = { a = 90, b = 5, c = 5 }`, every scheduler sends about 90 % of new flows to
/// zone a; when a's backends go down, its share spills to b and c.
#[test]
fn locality_weights_shape_every_scheduler() {
    use BackendState::{Down, Up};
    let mut rng = fastrand::Rng::with_seed(7);
    let zoned = weights();
    for kind in SchedulerKind::ALL {
        // Two backends per zone (9003, 9006: a; 9001, 9004: b; 9002, 9005: c).
        let up: Vec<Spec> = (9001..=9006).map(|p| (p, 1, Up, u32::from(p))).collect();
        let p = pool(kind, hash_key(kind), &up, None, Some(&zoned));
        let share = |p: &PoolRt, rng: &mut fastrand::Rng| {
            let mut a = 0;
            for _ in 0..FLOWS {
                let tuple = FlowTuple {
                    src: SocketAddr::from(([198, 18, 1, rng.u8(..)], rng.u16(1024..))),
                    dst: LISTEN,
                    proto: Proto::Tcp,
                };
                let (i, _) = p
                    .choose(&Flow::l4(tuple, &[], rng.u64(..), Duration::ZERO))
                    .expect("a backend");
                if p.backends[i].zone.as_ref().map(Zone::as_str) == Some("a") {
                    a += 1;
                }
            }
            a * 100 / FLOWS
        };
        let a = share(&p, &mut rng);
        assert!((86..=94).contains(&a), "{kind}: zone a took {a} %");
        // Both of a's backends down: a takes nothing.
        let down: Vec<Spec> = up
            .iter()
            .map(|&(port, w, s, id)| (port, w, if port % 3 == 0 { Down } else { s }, id))
            .collect();
        let p = pool(kind, hash_key(kind), &down, None, Some(&zoned));
        assert_eq!(share(&p, &mut rng), 0, "{kind}");
    }
}

/// The scoring schedulers: explain shows each eligible backend's score, and the backend the
/// scan takes (predictive: the lowest score) is the one with the lowest score shown.
#[test]
fn explain_shows_the_scores_that_decide() {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Shared::new(tx, RelayMode::default(), None);
    for kind in [
        SchedulerKind::LeastRequest,
        SchedulerKind::PeakEwma,
        SchedulerKind::Predictive,
    ] {
        let specs: Vec<Spec> = (0..4)
            .map(|k| (9001 + k, 1, BackendState::Up, u32::from(k)))
            .collect();
        let rt = pool(kind, HashKey::SrcIp, &specs, None, None);
        let now = shared.now();
        // Response times 40, 10, 30 and 20 ms; backend 9002 (10 ms) also holds 5 requests.
        for (i, ms) in [40u64, 10, 30, 20].into_iter().enumerate() {
            rt.observe(i, Duration::from_millis(ms), now);
        }
        rt.stats[1]
            .active
            .store(5, std::sync::atomic::Ordering::Relaxed);
        let snap = Snapshot {
            generation: 1,
            services: Vec::new(),
            pools: vec![Arc::new(rt)],
        };
        let q = Query {
            client: SocketAddr::from(([198, 18, 1, 1], 4000)),
            dst: Some(LISTEN),
            proto: Some(Proto::Tcp),
        };
        let said = explain(&shared, &snap, &snap.pools[0], q);
        let scores = said["scores"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind}: no scores: {said}"));
        assert_eq!(scores.len(), 4, "{kind}: {said}");
        let best = scores
            .iter()
            .min_by(|x, y| {
                x["score"]
                    .as_f64()
                    .unwrap_or(f64::MAX)
                    .total_cmp(&y["score"].as_f64().unwrap_or(f64::MAX))
            })
            .and_then(|row| row["address"].as_str())
            .unwrap_or_default()
            .to_owned();
        if kind == SchedulerKind::LeastRequest {
            // Fewest outstanding: any of the three idle ones, not 9002.
            assert_ne!(best, "127.0.0.1:9002", "{said}");
        } else {
            // 20 ms x 1 beats 10 ms x 6.
            assert_eq!(best, "127.0.0.1:9004", "{kind}: {said}");
            let lat = scores[3]["latency_seconds"].as_f64().unwrap_or_default();
            assert!((lat - 0.020).abs() < 1e-4, "{kind}: {said}");
        }
        if kind == SchedulerKind::Predictive {
            let running = &snap.pools[0];
            let tuple = FlowTuple {
                src: q.client,
                dst: LISTEN,
                proto: Proto::Tcp,
            };
            let (idx, _) = running
                .choose(&Flow::l4(tuple, &[], 7, shared.now()))
                .unwrap_or((99, Why::Scheduler));
            assert_eq!(running.backends[idx].address.to_string(), best);
        }
    }
}
