//! nat sync through BPF_PROG_TEST_RUN (docs/fleet.md, "nat flows in sync"): the owner
//! allocates from its own port slice and reports the new flow in `nat_events`; a peer that
//! inserts that flow translates the client's next packet and the backend's reply exactly as
//! the owner would (the way back found by bpf_fib_lookup); a reply to the nat source and a
//! nat port with no flow is sent on to the port's owner, or dropped (never passed) when
//! the owner is not known. Needs root; skips with a message otherwise.
#![allow(clippy::pedantic)]

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use etherparse::PacketBuilder;
use fulcrum_core::model::{HashKey, Proto};
use fulcrum_xdp::maps::{NatEvent, NSS_REPLY_MISS, NSS_REV_FILLED, NSS_TO_OWNER};
use fulcrum_xdp::natsync::{Inserted, PortSlice};
use fulcrum_xdp::testrun::{self, XDP_PASS, XDP_TX};
use fulcrum_xdp::{LoadOptions, Mode, XdpPlane};

const SYN: u8 = 2;
const ACK: u8 = 0x10;
/// The router's MAC: the client side's next hop in this fixture.
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x09];
/// The owner instance's MAC (198.18.0.5).
const OWNER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn tcp(smac: [u8; 6], dmac: [u8; 6], src: SocketAddr, dst: SocketAddr, flags: u8) -> Vec<u8> {
    let (IpAddr::V4(a), IpAddr::V4(b)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only here");
    };
    let mut t = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(a.octets(), b.octets(), 64)
        .tcp(src.port(), dst.port(), 1000, 65535);
    if flags & SYN != 0 {
        t = t.syn();
    }
    if flags & ACK != 0 {
        t = t.ack(1);
    }
    let mut out = Vec::new();
    t.write(&mut out, b"data").expect("write");
    out
}

fn run(plane: &XdpPlane, ifx: u32, frame: &[u8]) -> testrun::Outcome {
    testrun::run(plane.program("xdp_lb").expect("prog"), frame, 1, Some(ifx)).expect("test run")
}

#[test]
fn nat_sync_owner_reports_peer_translates_both_ways() {
    if !is_root_or_skip("nat_sync_owner_reports_peer_translates_both_ways") {
        return;
    }
    let ns = fixture_netns("nsnatsync");
    // the clients are behind a router on v0
    ns.ip(&[
        "neigh",
        "add",
        "198.18.0.1",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "route",
        "add",
        "198.18.1.0/24",
        "via",
        "198.18.0.1",
        "dev",
        "v0",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "198.18.0.5",
        "lladdr",
        "02:00:00:00:00:05",
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    // the fleet-shared source: not an address of the interface
    let shared = "198.18.2.1";
    let svc = service(
        "tun",
        "198.19.0.10:80",
        Proto::Tcp,
        Mode::Nat {
            source: Some(shared.parse().expect("ip")),
        },
        HashKey::FiveTuple,
        backends(&BACKENDS4, 8080),
    );
    fulcrum_xdp::testing::in_netns(&ns.0, move || {
        let owner_slice = PortSlice::for_member(1, 3).expect("slice");
        let peer_slice = PortSlice::for_member(0, 3).expect("slice");
        let load = |s| {
            let mut p = XdpPlane::load(LoadOptions {
                nat_sync: Some(s),
                ..LoadOptions::default()
            })
            .expect("load");
            p.update(std::slice::from_ref(&svc)).expect("update");
            p
        };
        let mut owner = load(owner_slice);
        let mut peer = load(peer_slice);
        let ifx = fulcrum_xdp::testing::ifindex("v0").expect("v0");
        let mut events = owner.take_nat_events().expect("ring buffer");

        let mut flows = Vec::new();
        for n in 0..20u16 {
            let client = sa(&format!("198.18.1.{}:{}", 10 + n, 40000 + n));
            let out = run(&owner, ifx, &tcp(ROUTER_MAC, LB_MAC, client, svc.vip, SYN));
            assert_eq!(out.verdict, XDP_TX, "{client}");
            let item = events.next().expect("a new flow is reported");
            assert_eq!(item.len(), size_of::<NatEvent>());
            let ev = fulcrum_xdp::natsync::event_of(&item).expect("an event");
            drop(item);
            assert_eq!(&ev.ck.src[..4], &[198, 18, 1, 10 + n as u8]);
            assert_eq!(u16::from_be(ev.ck.sport), 40000 + n);
            assert_eq!(&ev.saddr[..4], &[198, 18, 2, 1], "the shared source");
            let nport = u16::from_be(ev.nport);
            assert!(
                owner_slice.contains(nport),
                "port {nport} in the owner's slice {owner_slice:?}"
            );
            flows.push((client, ev));
        }
        assert!(events.next().is_none(), "one event per new flow");
        // the next packets of a known flow report nothing
        let (c0, _) = flows[0];
        assert_eq!(
            run(&owner, ifx, &tcp(ROUTER_MAC, LB_MAC, c0, svc.vip, ACK)).verdict,
            XDP_TX
        );
        assert!(events.next().is_none());

        // the peer: replies for the flows are dropped until it knows them (not passed: its
        // kernel would reset the backend's connection) ...
        let (client, ev) = flows[3];
        let be = SocketAddr::new(
            fulcrum_xdp::natsync::ip_of(ev.ck.family, &ev.baddr),
            u16::from_be(ev.bport),
        );
        let snat = SocketAddr::new(shared.parse().expect("ip"), u16::from_be(ev.nport));
        let reply = tcp(mac_of(be.ip()), LB_MAC, be, snat, ACK);
        let out = run(&peer, ifx, &reply);
        assert_eq!(
            out.verdict,
            fulcrum_xdp::testrun::XDP_DROP,
            "unknown reply to the nat source"
        );
        assert_eq!(peer.nat_sync_counters()[NSS_REPLY_MISS as usize], 1);
        // ... and a packet to another port of that address is not nat's business
        let other = tcp(mac_of(be.ip()), LB_MAC, be, sa("198.18.2.1:40000"), ACK);
        assert_eq!(run(&peer, ifx, &other).verdict, XDP_PASS);

        // ... or, once it knows the slice's owner (from the owner's datagrams), sent there
        // as they are but for the MACs
        peer.set_nat_owner(1, "198.18.0.5".parse().expect("ip"))
            .expect("owner");
        let mut want = reply.clone();
        want[..6].copy_from_slice(&OWNER_MAC);
        want[6..12].copy_from_slice(&LB_MAC);
        let out = run(&peer, ifx, &reply);
        assert_eq!((out.verdict, &out.data), (XDP_TX, &want), "to the owner");
        assert_eq!(peer.nat_sync_counters()[NSS_TO_OWNER as usize], 1);

        // ... then it learns them (a flow in its own slice is refused)
        for (_, ev) in &flows {
            assert_eq!(peer.insert_synced(ev).expect("insert"), Inserted::New);
        }
        assert_eq!(
            peer.insert_synced(&flows[0].1).expect("insert"),
            Inserted::Refreshed
        );
        assert_eq!(
            owner.insert_synced(&flows[0].1).expect("insert"),
            Inserted::OwnPort
        );

        // a client packet (not a SYN) the router now sends to the peer: the same translation
        let input = tcp(ROUTER_MAC, LB_MAC, client, svc.vip, ACK);
        let want = tcp(LB_MAC, mac_of(be.ip()), snat, be, ACK);
        let out = run(&peer, ifx, &input);
        assert_eq!(
            (out.verdict, &out.data),
            (XDP_TX, &want),
            "client -> backend on the peer"
        );
        let want_owner = run(&owner, ifx, &input);
        assert_eq!(want_owner.data, want, "as the owner translates it");
        // the backend's reply on the peer: back to the client, through the router
        let want = tcp(LB_MAC, ROUTER_MAC, svc.vip, client, ACK);
        for _ in 0..2 {
            let out = run(&peer, ifx, &reply);
            assert_eq!(
                (out.verdict, &out.data),
                (XDP_TX, &want),
                "backend -> client on the peer"
            );
        }
        assert_eq!(
            peer.nat_sync_counters()[NSS_REV_FILLED as usize],
            1,
            "the way back is looked up once"
        );
        assert_eq!(peer.nat_flows().len(), 20);
    })
    .expect("netns");
    drop(ns);
}

/// Median of `v`.
fn median(mut v: Vec<u32>) -> u32 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The costs of nat sync (docs/fleet.md, "nat flows in sync"), by hand:
/// `cargo test --release -p fulcrum-xdp --test natsync -- --ignored --nocapture`.
/// BPF_PROG_TEST_RUN, repeat 1 (nat rewrites the frame for good), medians of `N` runs, sync
/// off and on in the same run: a new flow (SYN), an established flow's client packet and
/// its reply on the owner, and a reply on a peer (a synced flow). Then userspace: inserting
/// `N` peers' flows, and one scan of the flow table (the alternative to the ring buffer).
#[test]
#[ignore = "a measurement, run by hand"]
fn nat_sync_costs() {
    if !is_root_or_skip("nat_sync_costs") {
        return;
    }
    // 1,000 flows a backend: far from a full slice (4,256 ports a backend)
    const N: u16 = 3_000;
    let ns = fixture_netns("nsnatcost");
    ns.ip(&[
        "neigh",
        "add",
        "198.18.0.1",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "route",
        "add",
        "198.18.0.0/15",
        "via",
        "198.18.0.1",
        "dev",
        "v0",
    ]);
    let shared = "198.18.2.1";
    let svc = service(
        "tun",
        "198.19.0.10:80",
        Proto::Tcp,
        Mode::Nat {
            source: Some(shared.parse().expect("ip")),
        },
        HashKey::FiveTuple,
        backends(&BACKENDS4, 8080),
    );
    fulcrum_xdp::testing::in_netns(&ns.0, move || {
        let ifx = fulcrum_xdp::testing::ifindex("v0").expect("v0");
        let client = |i: u16| sa(&format!("198.19.{}.{}:{}", 100 + i / 250, i % 250 + 1, 1024 + i));
        let mut rows = Vec::new();
        let mut events_all = Vec::new();
        for sync in [false, true] {
            let mut p = XdpPlane::load(LoadOptions {
                nat_sync: sync.then(|| PortSlice::for_member(1, 3).expect("slice")),
                ..LoadOptions::default()
            })
            .expect("load");
            p.update(std::slice::from_ref(&svc)).expect("update");
            let mut rb = if sync { p.take_nat_events() } else { None };
            let mut syn = Vec::new();
            for i in 0..N {
                let o = run(&p, ifx, &tcp(ROUTER_MAC, LB_MAC, client(i), svc.vip, SYN));
                assert_eq!(o.verdict, XDP_TX);
                syn.push(o.ns_per_run);
                if let Some(rb) = rb.as_mut() {
                    while let Some(item) = rb.next() {
                        events_all.push(fulcrum_xdp::natsync::event_of(&item).expect("event"));
                    }
                }
            }
            let flows = p.nat_flows();
            let mut fwd = Vec::new();
            let mut rev = Vec::new();
            for (k, f) in flows.iter().take(usize::from(N)) {
                let c = SocketAddr::new(fulcrum_xdp::natsync::ip_of(k.family, &k.src), u16::from_be(k.sport));
                let o = run(&p, ifx, &tcp(ROUTER_MAC, LB_MAC, c, svc.vip, ACK));
                assert_eq!(o.verdict, XDP_TX);
                fwd.push(o.ns_per_run);
                let be = SocketAddr::new(fulcrum_xdp::natsync::ip_of(k.family, &f.baddr), u16::from_be(f.bport));
                let sn = SocketAddr::new(shared.parse().expect("ip"), u16::from_be(f.nport));
                let o = run(&p, ifx, &tcp(mac_of(be.ip()), LB_MAC, be, sn, ACK));
                assert_eq!(o.verdict, XDP_TX);
                rev.push(o.ns_per_run);
            }
            let t = std::time::Instant::now();
            let scanned = p.nat_flows().len();
            let scan = t.elapsed();
            rows.push((sync, median(syn), median(fwd), median(rev), scanned, scan));
        }
        for (sync, syn, fwd, rev, scanned, scan) in &rows {
            eprintln!(
                "nat sync {}: new flow (SYN) {syn} ns, client packet {fwd} ns, reply {rev} ns (medians of {N}); one scan of {scanned} flows: {:.1} ms",
                if *sync { "on " } else { "off" },
                scan.as_secs_f64() * 1e3
            );
        }
        assert_eq!(events_all.len(), usize::from(N), "one event per new flow");
        // a peer: inserting the flows, then their replies (the first finds the way back)
        let mut peer = XdpPlane::load(LoadOptions {
            nat_sync: Some(PortSlice::for_member(0, 3).expect("slice")),
            ..LoadOptions::default()
        })
        .expect("load");
        peer.update(std::slice::from_ref(&svc)).expect("update");
        let t = std::time::Instant::now();
        for ev in &events_all {
            assert_eq!(peer.insert_synced(ev).expect("insert"), Inserted::New);
        }
        let insert = t.elapsed();
        let mut first = Vec::new();
        let mut next = Vec::new();
        for ev in &events_all {
            let be = SocketAddr::new(fulcrum_xdp::natsync::ip_of(ev.ck.family, &ev.baddr), u16::from_be(ev.bport));
            let sn = SocketAddr::new(shared.parse().expect("ip"), u16::from_be(ev.nport));
            let f = tcp(mac_of(be.ip()), LB_MAC, be, sn, ACK);
            let o = run(&peer, ifx, &f);
            assert_eq!(o.verdict, XDP_TX);
            first.push(o.ns_per_run);
            next.push(run(&peer, ifx, &f).ns_per_run);
        }
        let bytes = fulcrum_xdp::natsync::encode(1, &events_all[..fulcrum_xdp::natsync::MAX_RECORDS]).len();
        eprintln!(
            "peer: {N} flows inserted in {:.1} ms ({:.1} us each); reply of a synced flow: first {} ns (bpf_fib_lookup), then {} ns; a full datagram: {} flows in {bytes} bytes ({:.1} bytes/flow + 42 of Ethernet/IP/UDP per datagram)",
            insert.as_secs_f64() * 1e3,
            insert.as_secs_f64() * 1e6 / f64::from(N),
            median(first),
            median(next),
            fulcrum_xdp::natsync::MAX_RECORDS,
            bytes as f64 / fulcrum_xdp::natsync::MAX_RECORDS as f64,
        );
    })
    .expect("netns");
    drop(ns);
}
