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
