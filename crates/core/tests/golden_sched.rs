//! Golden vectors of the hashing schedulers: a fixed pool gives a fixed Maglev table and fixed
//! flows map to fixed backends. These are promises (several instances behind ECMP must agree
//! across versions): if one changes, the change is breaking.

use fulcrum_core::hash::flow_hash;
use fulcrum_core::model::{
    canonical_addr, Backend, FlowTuple, HashKey, PrimeTableSize, Proto, SchedulerKind,
};
use fulcrum_core::sched::{build, Maglev, NoLoads, PickRequest, SchedOptions};

fn golden_pool() -> Vec<Backend> {
    [
        ("198.18.0.1:80", 1),
        ("198.18.0.2:80", 2),
        ("198.18.0.3:80", 1),
        ("127.0.0.5:8080", 3),
        ("[2001:db8::7]:80", 1),
        ("[::ffff:198.18.0.9]:80", 2),
    ]
    .into_iter()
    .map(|(a, w)| Backend::new(a.parse().expect("addr"), w))
    .collect()
}

fn golden_flows() -> Vec<FlowTuple> {
    let f = |s: &str| FlowTuple {
        src: s.parse().expect("addr"),
        dst: "198.18.1.1:443".parse().expect("addr"),
        proto: Proto::Tcp,
    };
    [
        "192.0.2.1:1000",
        "192.0.2.2:1000",
        "192.0.2.3:2000",
        "198.51.100.7:40000",
        "203.0.113.9:5555",
        "[2001:db8:1::1]:1234",
        "[2001:db8:1::2]:1234",
        "[::ffff:192.0.2.1]:1000",
    ]
    .into_iter()
    .map(f)
    .collect()
}

/// The backend address chosen for every golden flow (five-tuple hash).
fn choices(kind: SchedulerKind) -> Vec<String> {
    let got = raw_choices(kind);
    // The last flow is the first one written as IPv4-mapped IPv6: same backend.
    assert_eq!(got[0], got[7], "{kind}");
    got
}

fn raw_choices(kind: SchedulerKind) -> Vec<String> {
    let b = golden_pool();
    let s = build(kind, &b, &SchedOptions::default());
    golden_flows()
        .iter()
        .map(|f| {
            let hash = flow_hash(&HashKey::FiveTuple, f).expect("l4 key");
            let req = PickRequest {
                hash,
                random: 0,
                loads: &NoLoads,
                exclude: &[],
                now: std::time::Duration::ZERO,
            };
            canonical_addr(&b[s.pick(&req).expect("pick")].address)
        })
        .collect::<Vec<_>>()
}

#[test]
fn maglev_golden_checksum() {
    let b = golden_pool();
    let mg = Maglev::new(&b, PrimeTableSize::DEFAULT);
    println!("maglev 65537 checksum {:#010x}", mg.table_checksum());
    let small = Maglev::new(&b, PrimeTableSize::new(1009).expect("prime"));
    println!("maglev 1009 checksum {:#010x}", small.table_checksum());
    assert_eq!(mg.table_checksum(), MAGLEV_65537);
    assert_eq!(small.table_checksum(), MAGLEV_1009);
}

#[test]
fn maglev_golden_flows() {
    let got = choices(SchedulerKind::Maglev);
    println!("maglev {got:?}");
    assert_eq!(got, MAGLEV_FLOWS);
}

#[test]
fn ring_hash_golden_flows() {
    let got = choices(SchedulerKind::RingHash);
    println!("ring_hash {got:?}");
    assert_eq!(got, RING_FLOWS);
}

#[test]
fn sh_golden_flows() {
    let got = choices(SchedulerKind::SourceHash);
    println!("sh {got:?}");
    assert_eq!(got, SH_FLOWS);
}

const MAGLEV_65537: u32 = 0xa2f0_b19e;
const MAGLEV_1009: u32 = 0xd9d4_5a33;
const MAGLEV_FLOWS: [&str; 8] = [
    "198.18.0.1:80",
    "198.18.0.9:80",
    "198.18.0.9:80",
    "127.0.0.5:8080",
    "127.0.0.5:8080",
    "198.18.0.3:80",
    "127.0.0.5:8080",
    "198.18.0.1:80",
];
const RING_FLOWS: [&str; 8] = [
    "198.18.0.2:80",
    "198.18.0.2:80",
    "198.18.0.9:80",
    "127.0.0.5:8080",
    "198.18.0.1:80",
    "198.18.0.2:80",
    "[2001:db8::7]:80",
    "198.18.0.2:80",
];
const SH_FLOWS: [&str; 8] = [
    "127.0.0.5:8080",
    "198.18.0.2:80",
    "198.18.0.2:80",
    "198.18.0.2:80",
    "127.0.0.5:8080",
    "198.18.0.9:80",
    "198.18.0.2:80",
    "127.0.0.5:8080",
];
