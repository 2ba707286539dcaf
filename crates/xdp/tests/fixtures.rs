//! BPF_PROG_TEST_RUN on fixture packets (repeat 1): exact output bytes, checksums checked
//! with etherparse, the same backend as fulcrum-core for every flow, golden hash vectors.
//! Needs root (BPF, a network namespace for bpf_fib_lookup); skips with a message otherwise.
#![allow(clippy::pedantic)]

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use etherparse::{Ipv4Header, Ipv6Header, PacketBuilder, UdpHeader};
use fulcrum_core::config::TunnelKind;
use fulcrum_core::hash::flow_hash;
use fulcrum_core::model::{BackendState, FlowTuple, HashKey, Proto, Weight};
use fulcrum_core::sched::maglev::Maglev;
use fulcrum_xdp::testrun::{self, XDP_DROP, XDP_PASS, XDP_TX};
use fulcrum_xdp::{LoadOptions, Mode, XdpPlane, XdpService};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// An Ethernet frame (optional VLAN) with a TCP or UDP packet from `src` to `dst`. TCP
/// packets are SYNs: a flow's first packet, the only TCP packet that creates a conntrack
/// entry ([`frame_mid`] builds a mid-flow one).
fn frame(
    src: &str,
    dst: &str,
    proto: Proto,
    vlan: Option<u16>,
    tos: u8,
    payload: &[u8],
) -> Vec<u8> {
    frame_flags(src, dst, proto, vlan, tos, payload, true)
}

/// A mid-flow TCP packet (ACK, no SYN).
fn frame_mid(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    frame_flags(src, dst, Proto::Tcp, None, 0, payload, false)
}

fn frame_flags(
    src: &str,
    dst: &str,
    proto: Proto,
    vlan: Option<u16>,
    tos: u8,
    payload: &[u8],
    syn: bool,
) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().expect("src"), dst.parse().expect("dst"));
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    macro_rules! l4 {
        ($b:expr) => {
            match proto {
                Proto::Tcp if syn => $b
                    .tcp(s.port(), d.port(), 1000, 65535)
                    .syn()
                    .write(&mut out, payload),
                Proto::Tcp => $b
                    .tcp(s.port(), d.port(), 1000, 65535)
                    .ack(1)
                    .write(&mut out, payload),
                Proto::Udp => $b.udp(s.port(), d.port()).write(&mut out, payload),
            }
        };
    }
    macro_rules! l3 {
        ($b:expr) => {
            match (s.ip(), d.ip()) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    let mut h =
                        Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, a.octets(), b.octets())
                            .expect("hdr");
                    h.dscp = etherparse::Ipv4Dscp::try_new(tos >> 2).expect("dscp");
                    l4!($b.ip(etherparse::IpHeaders::Ipv4(h, Default::default())))
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    let h = Ipv6Header {
                        traffic_class: tos,
                        flow_label: Default::default(),
                        payload_length: 0,
                        next_header: etherparse::IpNumber::TCP,
                        hop_limit: 64,
                        source: a.octets(),
                        destination: b.octets(),
                    };
                    l4!($b.ip(etherparse::IpHeaders::Ipv6(h, Default::default())))
                }
                _ => panic!("mixed families"),
            }
        };
    }
    match vlan {
        Some(v) => l3!(eth.single_vlan(etherparse::VlanId::try_new(v).expect("vlan"))),
        None => l3!(eth),
    }
    .expect("write packet");
    out
}

fn flow(src: &str, dst: &str, proto: Proto) -> FlowTuple {
    FlowTuple {
        src: src.parse().expect("src"),
        dst: dst.parse().expect("dst"),
        proto,
    }
}

/// The backend fulcrum-core's Maglev picks for `f`, and the flow hash.
fn core_pick(s: &XdpService, f: &FlowTuple) -> (IpAddr, u32) {
    let h = flow_hash(&s.hash_key, f).expect("hash");
    let m = Maglev::new(&s.backends, s.table_size);
    let i = m.table()[m.slot(h)] as usize;
    (s.backends[i].address.ip(), h)
}

/// Loads the plane with `services` in the fixture namespace and runs `f` there with it and
/// the ifindex of v0.
fn with_plane<T: Send + 'static>(
    name: &str,
    services: Vec<XdpService>,
    f: impl FnOnce(&mut XdpPlane, u32) -> T + Send + 'static,
) -> T {
    let ns = fixture_netns(name);
    let r = fulcrum_xdp::testing::in_netns(&ns.0, move || {
        let mut plane = XdpPlane::load(LoadOptions::default()).expect("load the XDP program");
        plane.update(&services).expect("update maps");
        let ifindex = fulcrum_xdp::testing::ifindex("v0").expect("v0");
        f(&mut plane, ifindex)
    })
    .expect("netns");
    drop(ns);
    r
}

fn run(plane: &XdpPlane, ifindex: u32, pkt: &[u8]) -> testrun::Outcome {
    testrun::run(
        plane.program("xdp_lb").expect("prog"),
        pkt,
        1,
        Some(ifindex),
    )
    .expect("test run")
}

fn tunnel(kind: TunnelKind, source: &str) -> Mode {
    Mode::Tunnel {
        kind,
        source: Some(ip(source)),
        second_chance: false,
    }
}

#[test]
fn dsr_rewrites_macs_and_agrees_with_core() {
    if !is_root_or_skip("dsr_rewrites_macs_and_agrees_with_core") {
        return;
    }
    let s4 = service(
        "web",
        "198.19.0.10:80",
        Proto::Tcp,
        Mode::Dsr,
        HashKey::FiveTuple,
        backends(&BACKENDS4, 80),
    );
    let s6 = service(
        "web6",
        "[2001:2:0:1::10]:443",
        Proto::Udp,
        Mode::Dsr,
        HashKey::SrcIpPort,
        backends(&BACKENDS6, 443),
    );
    let (a, b) = (s4.clone(), s6.clone());
    with_plane("fxdsr", vec![s4, s6], move |plane, ifx| {
        let mut seen = std::collections::HashSet::new();
        for i in 0..300u16 {
            for (svc, src, dst, proto, vlan) in [
                (
                    &a,
                    format!("198.18.1.{}:{}", i % 250, 1024 + i),
                    "198.19.0.10:80".to_owned(),
                    Proto::Tcp,
                    None,
                ),
                (
                    &a,
                    format!("198.18.2.{}:{}", i % 250, 2000 + i),
                    "198.19.0.10:80".to_owned(),
                    Proto::Tcp,
                    Some(7),
                ),
                (
                    &b,
                    format!("[2001:2:0:2::{i:x}]:{}", 3000 + i),
                    "[2001:2:0:1::10]:443".to_owned(),
                    Proto::Udp,
                    None,
                ),
            ] {
                let pkt = frame(&src, &dst, proto, vlan, 0, b"hello");
                let (be, _) = core_pick(svc, &flow(&src, &dst, proto));
                seen.insert(be);
                let mut want = pkt.clone();
                want[0..6].copy_from_slice(&mac_of(be));
                want[6..12].copy_from_slice(&LB_MAC);
                for _ in 0..2 {
                    // miss, then conntrack hit: the same answer
                    let out = run(plane, ifx, &pkt);
                    assert_eq!(out.verdict, XDP_TX, "{src} -> {dst}");
                    assert_eq!(out.data, want, "{src} -> {dst}: backend {be}");
                }
            }
        }
        assert_eq!(seen.len(), 6, "flows spread over every backend");
        let counts = plane.packet_counts();
        let tx: u64 = counts
            .iter()
            .filter(|c| c.0 == "web" && c.1 == "tx")
            .map(|c| c.2)
            .sum();
        let miss: u64 = counts
            .iter()
            .filter(|c| c.0 == "web" && c.1 == "ct_miss")
            .map(|c| c.2)
            .sum();
        assert_eq!((tx, miss), (1200, 600));
    });
}

fn check_outer_v4(
    out: &[u8],
    l2: usize,
    proto: u8,
    src: [u8; 4],
    dst: IpAddr,
    inner: &[u8],
    tos: u8,
) -> Ipv4Header {
    let (h, rest) = Ipv4Header::from_slice(&out[l2..]).expect("outer ipv4");
    assert_eq!(
        h.calc_header_checksum(),
        h.header_checksum,
        "outer IPv4 checksum"
    );
    assert_eq!(h.protocol.0, proto);
    assert_eq!(h.source, src);
    assert_eq!(IpAddr::from(h.destination), dst);
    assert_eq!(h.time_to_live, 64);
    assert_eq!((h.dscp.value() << 2) | h.ecn.value(), tos);
    assert_eq!(usize::from(h.total_len), out.len() - l2);
    let payload = if proto == 17 { &rest[8..] } else { rest };
    assert_eq!(payload, inner, "inner packet unchanged");
    h
}

#[test]
fn ipip_v4_and_v6_encap_exact_bytes() {
    if !is_root_or_skip("ipip_v4_and_v6_encap_exact_bytes") {
        return;
    }
    let s4 = service(
        "t4",
        "198.19.0.10:80",
        Proto::Tcp,
        tunnel(TunnelKind::Ipip, "198.18.0.2"),
        HashKey::FiveTuple,
        backends(&BACKENDS4, 80),
    );
    let s6 = service(
        "t6",
        "[2001:db8::1]:443",
        Proto::Udp,
        tunnel(TunnelKind::Ipip, "2001:2::2"),
        HashKey::FiveTuple,
        backends(&BACKENDS6, 443),
    );
    // 4in6: an IPv4 VIP served by IPv6 backends
    let s46 = service(
        "t46",
        "198.19.0.11:80",
        Proto::Tcp,
        tunnel(TunnelKind::Ipip, "2001:2::2"),
        HashKey::SrcIp,
        backends(&BACKENDS6, 80),
    );
    let (a, b, c) = (s4.clone(), s6.clone(), s46.clone());
    with_plane("fxipip", vec![s4, s6, s46], move |plane, ifx| {
        // IPv4 in IPv4, with and without a VLAN tag
        for vlan in [None, Some(42)] {
            let l2 = if vlan.is_some() { 18 } else { 14 };
            for i in 0..50u16 {
                let src = format!("198.18.3.{}:{}", i, 5000 + i);
                let pkt = frame(&src, "198.19.0.10:80", Proto::Tcp, vlan, 0x28, b"payload!");
                let (be, _) = core_pick(&a, &flow(&src, "198.19.0.10:80", Proto::Tcp));
                let out = run(plane, ifx, &pkt);
                assert_eq!(out.verdict, XDP_TX);
                assert_eq!(&out.data[0..6], &mac_of(be));
                assert_eq!(&out.data[6..12], &LB_MAC);
                if vlan.is_some() {
                    assert_eq!(&out.data[12..16], &pkt[12..16], "VLAN tag kept");
                }
                assert_eq!(&out.data[l2 - 2..l2], &[0x08, 0x00]);
                check_outer_v4(&out.data, l2, 4, LB4, be, &pkt[l2..], 0x28);
                assert_eq!(out.data.len(), pkt.len() + 20);
                // the conntrack hit gives the same bytes as the miss
                let again = run(plane, ifx, &pkt);
                assert_eq!((again.verdict, &again.data), (XDP_TX, &out.data));
            }
        }
        // IPv6 in IPv6 -- the golden vector of crates/core/tests/golden_hash.rs:
        // five_tuple [2001:db8::7]:40000 -> [2001:db8::1]:443 udp hashes to 0x7c53_c228; the
        // outer flow label carries its low 20 bits.
        let pkt = frame(
            "[2001:db8::7]:40000",
            "[2001:db8::1]:443",
            Proto::Udp,
            None,
            0xb8,
            b"v6 data",
        );
        let (be, h) = core_pick(
            &b,
            &flow("[2001:db8::7]:40000", "[2001:db8::1]:443", Proto::Udp),
        );
        assert_eq!(h, 0x7c53_c228);
        let out = run(plane, ifx, &pkt);
        assert_eq!(out.verdict, XDP_TX);
        let mut want = Vec::new();
        want.extend_from_slice(&mac_of(be));
        want.extend_from_slice(&LB_MAC);
        want.extend_from_slice(&[0x86, 0xdd]);
        let label = h & 0xf_ffff;
        let inner = &pkt[14..];
        want.extend_from_slice(&[
            0x60 | (0xb8 >> 4),
            ((0xb8 & 0xf) << 4) | (label >> 16) as u8,
            (label >> 8) as u8,
            label as u8,
        ]);
        want.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        want.extend_from_slice(&[41, 64]);
        want.extend_from_slice(
            &ip(LB6)
                .to_string()
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets(),
        );
        match be {
            IpAddr::V6(v) => want.extend_from_slice(&v.octets()),
            IpAddr::V4(_) => panic!("v6 backend"),
        }
        want.extend_from_slice(inner);
        assert_eq!(out.data, want);
        // IPv4 in IPv6
        let pkt = frame(
            "198.18.4.4:999",
            "198.19.0.11:80",
            Proto::Tcp,
            None,
            0,
            b"x",
        );
        let (be, _) = core_pick(&c, &flow("198.18.4.4:999", "198.19.0.11:80", Proto::Tcp));
        let out = run(plane, ifx, &pkt);
        assert_eq!(out.verdict, XDP_TX);
        assert_eq!(&out.data[12..14], &[0x86, 0xdd]);
        let (h6, rest) = Ipv6Header::from_slice(&out.data[14..]).expect("outer v6");
        assert_eq!(h6.next_header.0, 4);
        assert_eq!(IpAddr::from(h6.destination), be);
        assert_eq!(rest, &pkt[14..]);
    });
}

#[test]
fn gue_encap_source_port_is_the_core_flow_hash() {
    if !is_root_or_skip("gue_encap_source_port_is_the_core_flow_hash") {
        return;
    }
    // golden vectors (crates/core/tests/golden_hash.rs):
    //   five_tuple 198.18.0.7:40000 -> 198.18.0.1:80 tcp = 0x06d8_052f
    //   src_ip 192.0.2.1 (:1234 -> 198.18.0.1:80 tcp)   = 0x67b5_4019
    let g5 = service(
        "g5",
        "198.18.0.1:80",
        Proto::Tcp,
        tunnel(TunnelKind::Gue, "198.18.0.2"),
        HashKey::FiveTuple,
        backends(&BACKENDS4, 80),
    );
    let gs = service(
        "gs",
        "198.18.0.1:81",
        Proto::Tcp,
        tunnel(TunnelKind::Gue, "198.18.0.2"),
        HashKey::SrcIp,
        backends(&BACKENDS4, 81),
    );
    let g6 = service(
        "g6",
        "[2001:2:0:1::10]:53",
        Proto::Udp,
        tunnel(TunnelKind::Gue, "2001:2::2"),
        HashKey::FiveTuple,
        backends(&BACKENDS6, 53),
    );
    let (a, b, c) = (g5.clone(), gs.clone(), g6.clone());
    with_plane("fxgue", vec![g5, gs, g6], move |plane, ifx| {
        for (svc, src, dst, golden) in [
            (
                &a,
                "198.18.0.7:40000",
                "198.18.0.1:80",
                Some(0x06d8_052f_u32),
            ),
            (&b, "192.0.2.1:1234", "198.18.0.1:81", Some(0x67b5_4019)),
            (&a, "198.18.9.9:1", "198.18.0.1:80", None),
        ] {
            let pkt = frame(src, dst, Proto::Tcp, None, 0, b"gue payload");
            let (be, h) = core_pick(svc, &flow(src, dst, Proto::Tcp));
            if let Some(g) = golden {
                assert_eq!(h, g, "core golden vector");
            }
            let out = run(plane, ifx, &pkt);
            assert_eq!(out.verdict, XDP_TX);
            let again = run(plane, ifx, &pkt);
            assert_eq!(again.data, out.data, "conntrack hit = miss");
            let oh = check_outer_v4(&out.data, 14, 17, LB4, be, &pkt[14..], 0);
            let (u, payload) = UdpHeader::from_slice(&out.data[34..]).expect("udp");
            assert_eq!(
                u.source_port,
                0x8000 | (h & 0x7fff) as u16,
                "outer source port from the flow hash"
            );
            assert_eq!(u.destination_port, 6080);
            assert_eq!(usize::from(u.length), 8 + pkt.len() - 14);
            assert_eq!(
                u.calc_checksum_ipv4(&oh, payload).expect("csum"),
                u.checksum,
                "outer UDP checksum"
            );
        }
        // GUE over IPv6 (the UDP checksum is mandatory there)
        for i in 0..20u16 {
            let src = format!("[2001:2:0:3::{i:x}]:{}", 7000 + i);
            let pkt = frame(&src, "[2001:2:0:1::10]:53", Proto::Udp, Some(5), 0, b"dns?");
            let (be, h) = core_pick(&c, &flow(&src, "[2001:2:0:1::10]:53", Proto::Udp));
            let out = run(plane, ifx, &pkt);
            assert_eq!(out.verdict, XDP_TX);
            assert_eq!(&out.data[16..18], &[0x86, 0xdd]);
            let (oh, rest) = Ipv6Header::from_slice(&out.data[18..]).expect("outer v6");
            assert_eq!(oh.next_header.0, 17);
            assert_eq!(IpAddr::from(oh.destination), be);
            let (u, payload) = UdpHeader::from_slice(rest).expect("udp");
            assert_eq!(payload, &pkt[18..]);
            assert_eq!(u.source_port, 0x8000 | (h & 0x7fff) as u16);
            assert_eq!(
                u.calc_checksum_ipv6(&oh, payload).expect("csum"),
                u.checksum,
                "outer UDP checksum (v6)"
            );
        }
    });
}

#[test]
fn non_vip_fragments_and_garbage_pass_untouched_or_are_dropped_safely() {
    if !is_root_or_skip("non_vip_fragments_and_garbage_pass_untouched_or_are_dropped_safely") {
        return;
    }
    let s = service(
        "web",
        "198.19.0.10:80",
        Proto::Tcp,
        tunnel(TunnelKind::Gue, "198.18.0.2"),
        HashKey::FiveTuple,
        backends(&BACKENDS4, 80),
    );
    with_plane("fxpass", vec![s], move |plane, ifx| {
        let untouched = |pkt: &[u8], what: &str| {
            let out = run(plane, ifx, pkt);
            assert_eq!(out.verdict, XDP_PASS, "{what}");
            assert_eq!(out.data, pkt, "{what}: untouched");
        };
        untouched(
            &frame(
                "198.18.0.5:1000",
                "198.19.0.10:81",
                Proto::Tcp,
                None,
                0,
                b"x",
            ),
            "other port",
        );
        untouched(
            &frame(
                "198.18.0.5:1000",
                "198.19.0.10:80",
                Proto::Udp,
                None,
                0,
                b"x",
            ),
            "other protocol",
        );
        untouched(
            &frame(
                "198.18.0.5:1000",
                "198.19.0.99:80",
                Proto::Tcp,
                None,
                0,
                b"x",
            ),
            "other address",
        );
        untouched(
            &frame(
                "[2001:2::5]:1000",
                "[2001:2::10]:80",
                Proto::Tcp,
                None,
                0,
                b"x",
            ),
            "ipv6 non-VIP",
        );
        let vip = frame(
            "198.18.0.5:1000",
            "198.19.0.10:80",
            Proto::Tcp,
            None,
            0,
            b"0123456789abcdef",
        );
        // fragments of the VIP (non-first, offset 8; first, MF) are forwarded on the
        // address-only hash (part 2: tests/nat.rs checks the bytes); a fragment whose ports
        // do not exist is not taken for another port's service
        for (hi, lo) in [(0x00, 0x01), (0x20, 0x00), (0x20, 0x10)] {
            let mut f = vip.clone();
            f[20] = hi;
            f[21] = lo;
            assert_eq!(run(plane, ifx, &f).verdict, XDP_TX, "VIP fragment");
        }
        // IPv4 options (ihl 6)
        let mut o = vip.clone();
        o[14] = 0x46;
        untouched(&o, "ipv4 options");
        // ARP
        let mut arp = vip.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        untouched(&arp, "arp");
        // every truncation of VIP packets: never an abort, never an unsafe encap
        let vip6 = frame(
            "[2001:2::5]:1000",
            "[2001:2:0:1::10]:80",
            Proto::Tcp,
            Some(3),
            0,
            b"abc",
        );
        for pkt in [&vip, &vip6] {
            for len in 14..pkt.len() {
                let out = run(plane, ifx, &pkt[..len]);
                assert_eq!(out.verdict, XDP_PASS, "truncated to {len}");
                assert_eq!(out.data, &pkt[..len]);
            }
        }
        // random garbage and random corruptions of a VIP packet
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..3000 {
            let mut pkt = if i % 2 == 0 {
                vip.clone()
            } else {
                (0..14 + rnd() % 200).map(|_| rnd() as u8).collect()
            };
            if i % 2 == 0 {
                for _ in 0..(1 + rnd() % 4) {
                    let at = (rnd() as usize) % pkt.len();
                    pkt[at] = rnd() as u8;
                }
            }
            let out = run(plane, ifx, &pkt);
            assert!(
                [XDP_PASS, XDP_TX, XDP_DROP].contains(&out.verdict),
                "verdict {}",
                out.verdict
            );
        }
    });
}

#[test]
fn maglev_tables_in_maps_equal_core_and_health_changes_apply() {
    if !is_root_or_skip("maglev_tables_in_maps_equal_core_and_health_changes_apply") {
        return;
    }
    let mut pool = backends(&["198.18.0.11", "198.18.0.12", "198.18.0.13"], 80);
    pool[1].weight = Weight::new(3);
    let s = service(
        "web",
        "198.19.0.10:80",
        Proto::Tcp,
        Mode::Dsr,
        HashKey::FiveTuple,
        pool.clone(),
    );
    with_plane("fxtable", vec![s.clone()], move |plane, ifx| {
        let core = Maglev::new(&s.backends, s.table_size).table().to_vec();
        assert_eq!(
            plane.table_of("web", &s.backends, &s.pool).expect("table"),
            core
        );

        // open 200 flows
        let flows: Vec<String> = (0..200)
            .map(|i| format!("198.18.5.{}:{}", i % 200, 10000 + i))
            .collect();
        let first: Vec<IpAddr> = flows
            .iter()
            .map(|src| {
                let out = run(
                    plane,
                    ifx,
                    &frame(src, "198.19.0.10:80", Proto::Tcp, None, 0, b""),
                );
                assert_eq!(out.verdict, XDP_TX);
                backend_of(&out.data)
            })
            .collect();

        // drain .12: existing flows stay (conntrack: their mid-flow packets), new flows avoid it
        let mut drained = s.clone();
        drained.backends[1].state = BackendState::Draining;
        plane.update(&[drained.clone()]).expect("update");
        let core = Maglev::new(&drained.backends, drained.table_size)
            .table()
            .to_vec();
        assert_eq!(
            plane
                .table_of("web", &drained.backends, &drained.pool)
                .expect("table"),
            core
        );
        for (src, be) in flows.iter().zip(&first) {
            let out = run(plane, ifx, &frame_mid(src, "198.19.0.10:80", b""));
            assert_eq!(
                backend_of(&out.data),
                *be,
                "established flow kept while draining"
            );
        }
        for i in 0..100 {
            let src = format!("198.18.6.{i}:2000");
            let out = run(
                plane,
                ifx,
                &frame(&src, "198.19.0.10:80", Proto::Tcp, None, 0, b""),
            );
            assert_ne!(
                backend_of(&out.data),
                ip("198.18.0.12"),
                "no new flow to a draining backend"
            );
            assert_eq!(
                backend_of(&out.data),
                core_pick(&drained, &flow(&src, "198.19.0.10:80", Proto::Tcp)).0
            );
        }

        // .12 down: its flows move to the backend the new table gives them
        let mut down = s.clone();
        down.backends[1].state = BackendState::Down;
        plane.update(&[down.clone()]).expect("update");
        for (src, be) in flows.iter().zip(&first) {
            let out = run(plane, ifx, &frame_mid(src, "198.19.0.10:80", b""));
            let now = backend_of(&out.data);
            if *be == ip("198.18.0.12") {
                assert_eq!(
                    now,
                    core_pick(&down, &flow(src, "198.19.0.10:80", Proto::Tcp)).0
                );
            } else {
                assert_eq!(now, *be, "flows of live backends stay");
            }
        }
        // every backend down: packets for the VIP are dropped, not passed
        let mut none = s.clone();
        for b in &mut none.backends {
            b.state = BackendState::Down;
        }
        plane.update(&[none]).expect("update");
        let out = run(
            plane,
            ifx,
            &frame("198.18.7.1:1", "198.19.0.10:80", Proto::Tcp, None, 0, b""),
        );
        assert_eq!(out.verdict, XDP_DROP);
        // service removed: passes again
        plane.update(&[]).expect("update");
        let pkt = frame("198.18.7.1:1", "198.19.0.10:80", Proto::Tcp, None, 0, b"");
        let out = run(plane, ifx, &pkt);
        assert_eq!((out.verdict, out.data), (XDP_PASS, pkt));
    });
}

/// The dsr output of `pkt` towards backend `to`: only the Ethernet addresses change.
fn dsr_to(pkt: &[u8], to: IpAddr) -> Vec<u8> {
    let mut want = pkt.to_vec();
    want[0..6].copy_from_slice(&mac_of(to));
    want[6..12].copy_from_slice(&LB_MAC);
    want
}

/// The `ct4` key of an IPv4 flow `src` -> `dst` (ports as they lie in the packet).
fn ct4_key(src: &str, dst: &str, proto: Proto) -> fulcrum_xdp::maps::Ct4Key {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().expect("src"), dst.parse().expect("dst"));
    let (IpAddr::V4(a), IpAddr::V4(b)) = (s.ip(), d.ip()) else {
        panic!("IPv4 only")
    };
    fulcrum_xdp::maps::Ct4Key {
        saddr: a.octets(),
        daddr: b.octets(),
        sport: u16::from_ne_bytes(s.port().to_be_bytes()),
        dport: u16::from_ne_bytes(d.port().to_be_bytes()),
        proto: if proto == Proto::Tcp { 6 } else { 17 },
        pad0: 0,
        pad1: 0,
    }
}

/// The `flows4` set of an IPv4 flow: `fx_tuple_hash` in xdp_lb.c, whose Rust twin is
/// `maps::tuple_hash4` (the eviction test below fails if the two disagree: its flows would
/// not share a set).
fn flow4_set(src: &str, dst: &str, proto: Proto) -> u32 {
    let k = ct4_key(src, dst, proto);
    let ports = (u32::from(k.sport) << 16) | u32::from(k.dport);
    fulcrum_xdp::maps::tuple_hash4(k.saddr, k.daddr, ports, k.proto)
        & (fulcrum_xdp::maps::FLOW4_SETS - 1)
}

/// IPv4 dsr/tunnel conntrack is per CPU (`flows4`, docs/xdp.md "Conntrack"): a flow's first
/// packet (TCP SYN, any UDP datagram) writes a way of its set on its CPU and nothing in the
/// shared LRU `ct4`; a mid-flow packet without an entry takes the stateless Maglev choice
/// and also remembers it on its CPU (a way that no first packet holds). After a table change
/// every flow known to the CPU keeps its backend, and exactly the flows the new table would
/// send elsewhere are promoted into `ct4`, where their packets on another CPU find them;
/// flows never seen before the change follow the new table. (Before the per-CPU table, the
/// first packet inserted into the LRU and mid-flow packets without an entry followed every
/// table change: this test asserted that; the mid-flow flows are now kept, deliberately.)
#[test]
fn per_cpu_conntrack_keeps_flows_and_promotes_on_table_change() {
    if !is_root_or_skip("per_cpu_conntrack_keeps_flows_and_promotes_on_table_change") {
        return;
    }
    let pool = backends(&["198.18.0.11", "198.18.0.12", "198.18.0.13"], 80);
    let s = service(
        "web",
        "198.19.0.10:80",
        Proto::Tcp,
        Mode::Dsr,
        HashKey::FiveTuple,
        pool.clone(),
    );
    let u = service(
        "dns",
        "198.19.0.10:53",
        Proto::Udp,
        Mode::Dsr,
        HashKey::FiveTuple,
        pool,
    );
    with_plane("fxfirst", vec![s.clone(), u.clone()], move |plane, ifx| {
        // flows whose Maglev choice is (or is not) .12, the backend drained below
        let pick = |dst: &str, proto: Proto, base: u32, on12: bool| -> Vec<String> {
            let svc = if proto == Proto::Tcp { &s } else { &u };
            (0..2000)
                .map(|i| format!("198.18.{}.{}:{}", 20 + i / 200, i % 200 + 1, base + i))
                .filter(|src| {
                    (core_pick(svc, &flow(src, dst, proto)).0 == ip("198.18.0.12")) == on12
                })
                .take(20)
                .collect()
        };
        let syn_flows = pick("198.19.0.10:80", Proto::Tcp, 10000, true);
        let mid_flows = pick("198.19.0.10:80", Proto::Tcp, 30000, true);
        let udp_flows = pick("198.19.0.10:53", Proto::Udp, 50000, true);
        let fresh_flows = pick("198.19.0.10:80", Proto::Tcp, 40000, true);
        let other_flows = pick("198.19.0.10:80", Proto::Tcp, 20000, false);
        for f in [
            &syn_flows,
            &mid_flows,
            &udp_flows,
            &fresh_flows,
            &other_flows,
        ] {
            assert_eq!(f.len(), 20);
        }
        let syn = |src: &str| frame(src, "198.19.0.10:80", Proto::Tcp, None, 0, b"");
        let dns = |src: &str| frame(src, "198.19.0.10:53", Proto::Udp, None, 0, b"q");
        let mid = |src: &str| frame_mid(src, "198.19.0.10:80", b"data");
        let twelve = ip("198.18.0.12");
        for src in &syn_flows {
            let pkt = syn(src);
            let out = run(plane, ifx, &pkt);
            assert_eq!((out.verdict, out.data), (XDP_TX, dsr_to(&pkt, twelve)));
        }
        for src in &other_flows {
            let pkt = syn(src);
            let want = core_pick(&s, &flow(src, "198.19.0.10:80", Proto::Tcp)).0;
            let out = run(plane, ifx, &pkt);
            assert_eq!((out.verdict, out.data), (XDP_TX, dsr_to(&pkt, want)));
        }
        for src in &udp_flows {
            let pkt = dns(src);
            let out = run(plane, ifx, &pkt);
            assert_eq!((out.verdict, out.data), (XDP_TX, dsr_to(&pkt, twelve)));
        }
        for src in &mid_flows {
            // a mid-flow packet without an entry: the stateless choice, exact bytes
            let pkt = mid(src);
            for _ in 0..2 {
                let out = run(plane, ifx, &pkt);
                assert_eq!((out.verdict, &out.data), (XDP_TX, &dsr_to(&pkt, twelve)));
            }
        }
        let misses: u64 = plane
            .packet_counts()
            .iter()
            .filter(|c| c.1 == "ct_miss")
            .map(|c| c.2)
            .sum();
        // the second packet of a flow is served by this CPU's flow cache
        assert_eq!(misses, 4 * 20, "one miss per flow");
        // a first packet costs no LRU insert
        assert_eq!(plane.ct4().expect("ct4").keys().count(), 0, "ct4 empty");

        // drain .12: every flow this CPU knows stays, flows never seen follow the new table
        let mut ds = s.clone();
        ds.backends[1].state = BackendState::Draining;
        let mut du = u.clone();
        du.backends[1].state = BackendState::Draining;
        let t0 = std::time::Instant::now();
        plane.update(&[ds.clone(), du]).expect("update");
        eprintln!(
            "update with a table change (reads flows4 of every CPU): {:?}",
            t0.elapsed()
        );
        for src in syn_flows.iter().chain(&mid_flows) {
            let pkt = frame_mid(src, "198.19.0.10:80", b"x");
            let out = run(plane, ifx, &pkt);
            assert_eq!(
                (out.verdict, out.data),
                (XDP_TX, dsr_to(&pkt, twelve)),
                "{src}: kept"
            );
        }
        for src in &udp_flows {
            let pkt = dns(src);
            let out = run(plane, ifx, &pkt);
            assert_eq!(
                (out.verdict, out.data),
                (XDP_TX, dsr_to(&pkt, twelve)),
                "{src}: UDP flow kept"
            );
        }
        for src in &other_flows {
            let pkt = frame_mid(src, "198.19.0.10:80", b"x");
            let want = core_pick(&s, &flow(src, "198.19.0.10:80", Proto::Tcp)).0;
            assert_eq!(
                core_pick(&ds, &flow(src, "198.19.0.10:80", Proto::Tcp)).0,
                want
            );
            let out = run(plane, ifx, &pkt);
            assert_eq!((out.verdict, out.data), (XDP_TX, dsr_to(&pkt, want)));
        }
        for src in &fresh_flows {
            let pkt = frame_mid(src, "198.19.0.10:80", b"x");
            let want = core_pick(&ds, &flow(src, "198.19.0.10:80", Proto::Tcp)).0;
            assert_ne!(want, twelve);
            let out = run(plane, ifx, &pkt);
            assert_eq!(
                (out.verdict, out.data),
                (XDP_TX, dsr_to(&pkt, want)),
                "{src}: never seen, follows the table"
            );
        }
        // exactly the flows the new table sends elsewhere were promoted, with their backend
        // and flow hash
        let ct4 = plane.ct4().expect("ct4");
        let mut got: Vec<_> = ct4
            .iter()
            .map(|r| r.expect("ct4 entry"))
            .map(|(k, v)| (k, v.backend, v.hash))
            .collect();
        let mut want: Vec<_> = syn_flows
            .iter()
            .chain(&mid_flows)
            .map(|src| (src, "198.19.0.10:80", Proto::Tcp, &s))
            .chain(
                udp_flows
                    .iter()
                    .map(|src| (src, "198.19.0.10:53", Proto::Udp, &u)),
            )
            .map(|(src, dst, proto, svc)| {
                (
                    ct4_key(src, dst, proto),
                    1u32,
                    core_pick(svc, &flow(src, dst, proto)).1,
                )
            })
            .collect();
        let key = |e: &(fulcrum_xdp::maps::Ct4Key, u32, u32)| {
            (e.0.saddr, e.0.daddr, e.0.sport, e.0.dport, e.0.proto)
        };
        got.sort_by_key(key);
        want.sort_by_key(key);
        // backend ids are per (pool, address): one id for .12 per service
        for proto in [6u8, 17] {
            let ids: std::collections::BTreeSet<u32> = got
                .iter()
                .filter(|e| e.0.proto == proto)
                .map(|e| e.1)
                .collect();
            assert_eq!(ids.len(), 1, "one backend (.12) per service: {ids:?}");
            let id12 = *ids.first().expect("id");
            for w in want.iter_mut().filter(|e| e.0.proto == proto) {
                w.1 = id12;
            }
        }
        assert_eq!(got, want, "ct4 holds exactly the promoted flows");

        // on another CPU (no flows4 entry there): promoted flows are found in ct4, the others
        // get the stateless choice, which is their backend
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        if cpus > 1 {
            let here = fulcrum_xdp::testing::current_cpu().expect("cpu");
            fulcrum_xdp::testing::pin_to_cpu((here + 1) % cpus).expect("pin");
            for src in syn_flows.iter().chain(&mid_flows) {
                let pkt = frame_mid(src, "198.19.0.10:80", b"y");
                let out = run(plane, ifx, &pkt);
                assert_eq!(
                    (out.verdict, out.data),
                    (XDP_TX, dsr_to(&pkt, twelve)),
                    "{src}: promoted flow on another CPU"
                );
            }
            for src in &other_flows {
                let pkt = frame_mid(src, "198.19.0.10:80", b"y");
                let want = core_pick(&ds, &flow(src, "198.19.0.10:80", Proto::Tcp)).0;
                let out = run(plane, ifx, &pkt);
                assert_eq!((out.verdict, out.data), (XDP_TX, dsr_to(&pkt, want)));
            }
            fulcrum_xdp::testing::pin_to_cpu(here).expect("pin back");
        } else {
            eprintln!("one CPU: the other-CPU part of this test is skipped");
        }
    });
}

/// The `conntrack` key of an IPv6 flow `src` -> `dst` (ports as they lie in the packet).
fn ct6_key(src: &str, dst: &str, proto: Proto) -> fulcrum_xdp::maps::CtKey {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().expect("src"), dst.parse().expect("dst"));
    let (IpAddr::V6(a), IpAddr::V6(b)) = (s.ip(), d.ip()) else {
        panic!("IPv6 only")
    };
    fulcrum_xdp::maps::CtKey {
        src: a.octets(),
        dst: b.octets(),
        sport: u16::from_ne_bytes(s.port().to_be_bytes()),
        dport: u16::from_ne_bytes(d.port().to_be_bytes()),
        proto: if proto == Proto::Tcp { 6 } else { 17 },
        family: fulcrum_xdp::maps::AF_INET6,
        pad: 0,
    }
}

/// IPv6 dsr flows take the same two per-CPU levels as IPv4 (docs/xdp.md, "IPv6 flows"): a
/// first packet (TCP SYN, UDP) writes this CPU's `flows6` and fills the flow cache
/// `fcache6`, and inserts nothing into the shared LRU `conntrack` (before, every first
/// packet did); the next packets are served from the cache, to the same backend, exact
/// bytes. After a table change the flows keep their backends, exactly the flows the new
/// table sends elsewhere are promoted into `conntrack` (by userspace before the switch), a
/// flow never seen follows the new table, and on another CPU the promoted flows are found
/// in `conntrack`.
#[test]
fn ipv6_flows_take_the_flow_cache_and_the_per_cpu_conntrack() {
    if !is_root_or_skip("ipv6_flows_take_the_flow_cache_and_the_per_cpu_conntrack") {
        return;
    }
    let pool = backends(&BACKENDS6, 80);
    let vip = "[2001:2::100]:80";
    let dvip = "[2001:2::100]:53";
    let s = service(
        "web6",
        vip,
        Proto::Tcp,
        Mode::Dsr,
        HashKey::FiveTuple,
        pool.clone(),
    );
    let u = service(
        "dns6",
        dvip,
        Proto::Udp,
        Mode::Dsr,
        HashKey::FiveTuple,
        pool,
    );
    with_plane("xdp6-fc", vec![s.clone(), u.clone()], move |plane, ifx| {
        let twelve = ip("2001:2::12");
        let pick = |dst: &str, proto: Proto, base: u32, on12: bool| -> Vec<String> {
            let svc = if proto == Proto::Tcp { &s } else { &u };
            (0..3000)
                .map(|i| format!("[2001:2::a:{:x}]:{}", i + 1, base + i))
                .filter(|src| (core_pick(svc, &flow(src, dst, proto)).0 == twelve) == on12)
                .take(20)
                .collect()
        };
        let syn_flows = pick(vip, Proto::Tcp, 10000, true);
        let udp_flows = pick(dvip, Proto::Udp, 50000, true);
        let other_flows = pick(vip, Proto::Tcp, 20000, false);
        let fresh_flows = pick(vip, Proto::Tcp, 40000, true);
        for f in [&syn_flows, &udp_flows, &other_flows, &fresh_flows] {
            assert_eq!(f.len(), 20);
        }
        let syn = |src: &str| frame(src, vip, Proto::Tcp, None, 0, b"");
        let dns = |src: &str| frame(src, dvip, Proto::Udp, None, 0, b"q");
        let mid = |src: &str| frame_mid(src, vip, b"data");
        let backend = |svc: &XdpService, src: &str, dst: &str, proto| {
            core_pick(svc, &flow(src, dst, proto)).0
        };
        // first packets, then two mid-flow packets each: exact bytes, the core's backend
        for src in syn_flows.iter().chain(&other_flows) {
            let want = backend(&s, src, vip, Proto::Tcp);
            for pkt in [syn(src), mid(src), mid(src)] {
                let out = run(plane, ifx, &pkt);
                assert_eq!(
                    (out.verdict, out.data),
                    (XDP_TX, dsr_to(&pkt, want)),
                    "{src}"
                );
            }
        }
        for src in &udp_flows {
            for _ in 0..3 {
                let pkt = dns(src);
                let out = run(plane, ifx, &pkt);
                assert_eq!(
                    (out.verdict, out.data),
                    (XDP_TX, dsr_to(&pkt, twelve)),
                    "{src}"
                );
            }
        }
        let misses: u64 = plane
            .packet_counts()
            .iter()
            .filter(|c| c.1 == "ct_miss")
            .map(|c| c.2)
            .sum();
        assert_eq!(misses, 3 * 20, "one miss per flow");
        assert_eq!(
            plane.conntrack().expect("conntrack").keys().count(),
            0,
            "a first packet costs no LRU insert"
        );
        // every flow is in this CPU's flow cache, in its slot (`fx_tuple_hash6`, whose Rust
        // twin is `maps::tuple_hash6`: this fails if the two disagree), with its flow hash;
        // of flows sharing a slot, the last one sent holds it
        let cached = plane.fcache6_flows().expect("fcache6");
        let mut last = std::collections::HashMap::new();
        for (src, dst, proto, svc) in syn_flows
            .iter()
            .chain(&other_flows)
            .map(|src| (src, vip, Proto::Tcp, &s))
            .chain(udp_flows.iter().map(|src| (src, dvip, Proto::Udp, &u)))
        {
            let k = ct6_key(src, dst, proto);
            let ports = (u32::from(k.sport) << 16) | u32::from(k.dport);
            let slot = fulcrum_xdp::maps::tuple_hash6(k.src, k.dst, ports, k.proto)
                & (fulcrum_xdp::maps::FCACHE6_SLOTS - 1);
            let hash = core_pick(svc, &flow(src, dst, proto)).1;
            last.insert(slot, (k.src, k.dst, ports, k.proto, hash));
        }
        let mut got: Vec<_> = cached
            .iter()
            .map(|(slot, e)| (*slot, (e.saddr, e.daddr, e.ports, e.proto, e.hash)))
            .collect();
        let mut want: Vec<_> = last.into_iter().collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "the flow cache holds every flow in its slot");

        // drain ::12: flows this CPU knows stay, flows never seen follow the new table
        let mut ds = s.clone();
        ds.backends[1].state = BackendState::Draining;
        let mut du = u.clone();
        du.backends[1].state = BackendState::Draining;
        plane.update(&[ds.clone(), du]).expect("update");
        assert!(
            plane.fcache6_flows().expect("fcache6").is_empty(),
            "a change empties the cache"
        );
        for src in &syn_flows {
            let pkt = frame_mid(src, vip, b"x");
            let out = run(plane, ifx, &pkt);
            assert_eq!(
                (out.verdict, out.data),
                (XDP_TX, dsr_to(&pkt, twelve)),
                "{src}: kept"
            );
        }
        for src in &udp_flows {
            let pkt = dns(src);
            let out = run(plane, ifx, &pkt);
            assert_eq!(
                (out.verdict, out.data),
                (XDP_TX, dsr_to(&pkt, twelve)),
                "{src}: kept"
            );
        }
        for src in &other_flows {
            let pkt = frame_mid(src, vip, b"x");
            let want = backend(&s, src, vip, Proto::Tcp);
            assert_eq!(backend(&ds, src, vip, Proto::Tcp), want);
            let out = run(plane, ifx, &pkt);
            assert_eq!((out.verdict, out.data), (XDP_TX, dsr_to(&pkt, want)));
        }
        for src in &fresh_flows {
            let pkt = frame_mid(src, vip, b"x");
            let want = backend(&ds, src, vip, Proto::Tcp);
            assert_ne!(want, twelve);
            let out = run(plane, ifx, &pkt);
            assert_eq!(
                (out.verdict, out.data),
                (XDP_TX, dsr_to(&pkt, want)),
                "{src}: new"
            );
        }
        // exactly the flows the new table sends elsewhere were promoted
        let ct = plane.conntrack().expect("conntrack");
        let mut got: Vec<_> = ct
            .iter()
            .map(|r| r.expect("conntrack entry"))
            .map(|(k, v)| (k.src, k.dst, k.sport, k.dport, k.proto, v.hash))
            .collect();
        let mut want: Vec<_> = syn_flows
            .iter()
            .map(|src| (src, vip, Proto::Tcp, &s))
            .chain(udp_flows.iter().map(|src| (src, dvip, Proto::Udp, &u)))
            .map(|(src, dst, proto, svc)| {
                let k = ct6_key(src, dst, proto);
                (
                    k.src,
                    k.dst,
                    k.sport,
                    k.dport,
                    k.proto,
                    core_pick(svc, &flow(src, dst, proto)).1,
                )
            })
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "conntrack holds exactly the promoted flows");

        // on another CPU (no flows6 entry there): the promoted flows are found in conntrack
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        if cpus > 1 {
            let here = fulcrum_xdp::testing::current_cpu().expect("cpu");
            fulcrum_xdp::testing::pin_to_cpu((here + 1) % cpus).expect("pin");
            for src in &syn_flows {
                let pkt = frame_mid(src, vip, b"y");
                let out = run(plane, ifx, &pkt);
                assert_eq!(
                    (out.verdict, out.data),
                    (XDP_TX, dsr_to(&pkt, twelve)),
                    "{src}: promoted flow on another CPU"
                );
            }
            fulcrum_xdp::testing::pin_to_cpu(here).expect("pin back");
        } else {
            eprintln!("one CPU: the other-CPU part of this test is skipped");
        }
    });
}

/// A `flows4` set holds FX_FLOW4_WAYS flows: a first packet evicts the least recently seen
/// way; a mid-flow packet without an entry takes no way held by a first packet (an ACK flood
/// cannot evict tracked flows) and then follows the table, as an evicted flow does.
#[test]
fn per_cpu_conntrack_set_eviction() {
    if !is_root_or_skip("per_cpu_conntrack_set_eviction") {
        return;
    }
    let pool = backends(&["198.18.0.11", "198.18.0.12", "198.18.0.13"], 80);
    let s = service(
        "web",
        "198.19.0.10:80",
        Proto::Tcp,
        Mode::Dsr,
        HashKey::FiveTuple,
        pool,
    );
    with_plane("fxevict", vec![s.clone()], move |plane, ifx| {
        let dst = "198.19.0.10:80";
        let m = Maglev::new(&s.backends, s.table_size);
        let on12 = |src: &str| {
            let h = flow_hash(&s.hash_key, &flow(src, dst, Proto::Tcp)).expect("hash");
            s.backends[m.table()[m.slot(h)] as usize].address.ip() == ip("198.18.0.12")
        };
        // six flows to .12 in one set: the first one's
        let mut same: Vec<String> = Vec::new();
        let mut set = None;
        'search: for a in 0..250u32 {
            for port in 1024..65535u32 {
                let src = format!("198.18.{}.{}:{port}", 100 + a / 250, a % 250 + 1);
                if !on12(&src) {
                    continue;
                }
                let k = flow4_set(&src, dst, Proto::Tcp);
                if *set.get_or_insert(k) == k {
                    same.push(src);
                    if same.len() == 6 {
                        break 'search;
                    }
                }
            }
        }
        assert_eq!(same.len(), 6, "six flows in one set");
        let (a, rest) = same.split_at(4);
        let (m_flow, b_flow) = (&rest[0], &rest[1]);
        let twelve = ip("198.18.0.12");
        let send = |plane: &XdpPlane, src: &str, syn: bool| {
            let pkt = if syn {
                frame(src, dst, Proto::Tcp, None, 0, b"")
            } else {
                frame_mid(src, dst, b"m")
            };
            let out = run(plane, ifx, &pkt);
            assert_eq!(
                (out.verdict, &out.data),
                (XDP_TX, &dsr_to(&pkt, twelve)),
                "{src}"
            );
        };
        for src in a {
            send(plane, src, true); // fills the four ways
        }
        send(plane, m_flow, false); // mid-flow, no way for it
        plane.refresh_nexthops().expect("gen"); // the clock of `seen` ticks
        for src in &a[1..] {
            send(plane, src, false); // a[1..] seen again: a[0] is the least recently seen
        }
        send(plane, b_flow, true); // evicts a[0]
        let mut ds = s.clone();
        ds.backends[1].state = BackendState::Draining;
        plane.update(&[ds.clone()]).expect("drain .12");
        for src in a[1..].iter().chain([b_flow]) {
            send(plane, src, false); // kept
        }
        for src in [&a[0], m_flow] {
            let pkt = frame_mid(src, dst, b"m");
            let want = core_pick(&ds, &flow(src, dst, Proto::Tcp)).0;
            assert_ne!(want, twelve);
            let out = run(plane, ifx, &pkt);
            assert_eq!(
                (out.verdict, out.data),
                (XDP_TX, dsr_to(&pkt, want)),
                "{src}: no entry, follows the table"
            );
        }
    });
}

/// A plain TCP SYN is a new connection (IPVS's conn_reuse_mode, docs/xdp.md "Conntrack"): it
/// takes the current table's choice even when conntrack holds an old flow with its 5-tuple
/// to a draining backend (a client reusing a source port), and that entry (this CPU's
/// `flows4` way, the shared `ct4` entry; IPv6: `conntrack`) then holds the new backend.
/// Mid-flow packets of existing flows keep their draining backend.
#[test]
fn syn_reusing_a_tuple_takes_the_table_choice_not_a_draining_backend() {
    if !is_root_or_skip("syn_reusing_a_tuple_takes_the_table_choice_not_a_draining_backend") {
        return;
    }
    let s4 = service(
        "web4",
        "198.19.0.10:80",
        Proto::Tcp,
        Mode::Dsr,
        HashKey::FiveTuple,
        backends(&BACKENDS4, 80),
    );
    let s6 = service(
        "web6",
        "[2001:3::10]:80",
        Proto::Tcp,
        Mode::Dsr,
        HashKey::FiveTuple,
        backends(&BACKENDS6, 80),
    );
    with_plane(
        "synfixreuse",
        vec![s4.clone(), s6.clone()],
        move |plane, ifx| {
            // per family: two flows to backend 1 (.12), one reused, one kept
            let on1 = |s: &XdpService, fmt: &dyn Fn(u32) -> String, dst: &str| -> Vec<String> {
                let a = s.backends[1].address.ip();
                (1024..20000)
                    .map(fmt)
                    .filter(|src| core_pick(s, &flow(src, dst, Proto::Tcp)).0 == a)
                    .take(2)
                    .collect()
            };
            let (d4, d6) = ("198.19.0.10:80", "[2001:3::10]:80");
            let f4 = on1(&s4, &|p| format!("198.18.7.1:{p}"), d4);
            let f6 = on1(&s6, &|p| format!("[2001:2::7]:{p}"), d6);
            assert_eq!((f4.len(), f6.len()), (2, 2));
            let cases = [(&s4, d4, &f4), (&s6, d6, &f6)];
            let send =
                |plane: &XdpPlane, src: &str, dst: &str, syn: bool, want: IpAddr, what: &str| {
                    let pkt = if syn {
                        frame(src, dst, Proto::Tcp, None, 0, b"")
                    } else {
                        frame_mid(src, dst, b"m")
                    };
                    let out = run(plane, ifx, &pkt);
                    assert_eq!(
                        (out.verdict, &out.data),
                        (XDP_TX, &dsr_to(&pkt, want)),
                        "{src}: {what}"
                    );
                };
            for (s, dst, f) in cases {
                let a = s.backends[1].address.ip();
                for src in f.iter() {
                    send(plane, src, dst, true, a, "first SYN");
                    send(plane, src, dst, false, a, "established");
                }
            }
            // drain backend 1 in both services: alive, out of the tables
            let (mut ds4, mut ds6) = (s4.clone(), s6.clone());
            ds4.backends[1].state = BackendState::Draining;
            ds6.backends[1].state = BackendState::Draining;
            plane.update(&[ds4.clone(), ds6.clone()]).expect("drain");
            for ((s, dst, f), ds) in cases.into_iter().zip([&ds4, &ds6]) {
                let a = s.backends[1].address.ip();
                let (reused, kept) = (&f[0], &f[1]);
                let b = core_pick(ds, &flow(reused, dst, Proto::Tcp)).0;
                assert_ne!(b, a);
                // mid-flow: still the draining backend (IPv4: now promoted into ct4)
                send(plane, reused, dst, false, a, "mid-flow after the drain");
                send(plane, kept, dst, false, a, "mid-flow after the drain");
                // the client reuses the tuple: a SYN goes to the table's choice, and the flow's
                // next packets follow it
                send(plane, reused, dst, true, b, "new SYN, reused tuple");
                send(plane, reused, dst, false, b, "the new connection's ACK");
                send(plane, reused, dst, true, b, "SYN retransmitted");
                // the other flow is not disturbed
                send(plane, kept, dst, false, a, "existing flow kept");
            }
            // IPv4: both flows were promoted into ct4 by the drain; the reused tuple's entry now
            // names the new backend, the kept flow's the draining one
            let ct4 = plane.ct4().expect("ct4");
            let id = |src: &str| {
                ct4.get(&ct4_key(src, d4, Proto::Tcp), 0)
                    .expect("flow in ct4")
                    .backend
            };
            assert_ne!(
                id(&f4[0]),
                id(&f4[1]),
                "ct4 entry of the reused tuple rewritten"
            );
            let b4 = core_pick(&ds4, &flow(&f4[0], d4, Proto::Tcp));
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            if cpus > 1 {
                // another CPU (no flows4 entry): ct4 sends the new connection's packets to the
                // new backend, the kept flow's to the draining one
                let here = fulcrum_xdp::testing::current_cpu().expect("cpu");
                fulcrum_xdp::testing::pin_to_cpu((here + 1) % cpus).expect("pin");
                send(
                    plane,
                    &f4[0],
                    d4,
                    false,
                    b4.0,
                    "new connection on another CPU",
                );
                send(
                    plane,
                    &f4[1],
                    d4,
                    false,
                    ip("198.18.0.12"),
                    "kept flow on another CPU",
                );
                fulcrum_xdp::testing::pin_to_cpu(here).expect("pin back");
            }
            // IPv6: the LRU entry of the reused tuple names the new backend
            let c6: Vec<_> = plane
                .conntrack()
                .expect("conntrack")
                .iter()
                .map(|r| r.expect("entry").1)
                .collect();
            let id6 = |src: &str| {
                let h = core_pick(&s6, &flow(src, d6, Proto::Tcp)).1;
                let m: Vec<u32> = c6
                    .iter()
                    .filter(|v| v.hash == h)
                    .map(|v| v.backend)
                    .collect();
                assert_eq!(m.len(), 1, "{src}: one conntrack entry");
                m[0]
            };
            assert_ne!(
                id6(&f6[0]),
                id6(&f6[1]),
                "conntrack entry of the reused tuple rewritten"
            );
        },
    );
}

fn backend_of(frame: &[u8]) -> IpAddr {
    let last = frame[5];
    ip(&format!("198.18.0.{last}"))
}

#[test]
fn decap_strips_what_the_lb_encapsulates() {
    if !is_root_or_skip("decap_strips_what_the_lb_encapsulates") {
        return;
    }
    let services = vec![
        service(
            "i4",
            "198.19.0.10:80",
            Proto::Tcp,
            tunnel(TunnelKind::Ipip, "198.18.0.2"),
            HashKey::FiveTuple,
            backends(&BACKENDS4, 80),
        ),
        service(
            "g4",
            "198.19.0.10:53",
            Proto::Udp,
            tunnel(TunnelKind::Gue, "198.18.0.2"),
            HashKey::FiveTuple,
            backends(&BACKENDS4, 53),
        ),
        service(
            "i6",
            "[2001:2:0:1::10]:80",
            Proto::Tcp,
            tunnel(TunnelKind::Ipip, "2001:2::2"),
            HashKey::FiveTuple,
            backends(&BACKENDS6, 80),
        ),
        service(
            "g6",
            "[2001:2:0:1::10]:53",
            Proto::Udp,
            tunnel(TunnelKind::Gue, "2001:2::2"),
            HashKey::SrcIp,
            backends(&BACKENDS6, 53),
        ),
    ];
    with_plane("fxdecap", services, move |plane, ifx| {
        let decap = fulcrum_xdp::Decap::load(6080).expect("load decap");
        let prog = decap.program().expect("prog");
        for (src, dst, proto) in [
            ("198.18.1.1:1000", "198.19.0.10:80", Proto::Tcp),
            ("198.18.1.1:1000", "198.19.0.10:53", Proto::Udp),
            ("[2001:2::77]:1000", "[2001:2:0:1::10]:80", Proto::Tcp),
            ("[2001:2::77]:1000", "[2001:2:0:1::10]:53", Proto::Udp),
        ] {
            for vlan in [None, Some(9)] {
                let pkt = frame(src, dst, proto, vlan, 0, b"inner data");
                let enc = run(plane, ifx, &pkt);
                assert_eq!(enc.verdict, XDP_TX);
                assert!(enc.data.len() > pkt.len());
                let dec = testrun::run(prog, &enc.data, 1, None).expect("decap run");
                assert_eq!(dec.verdict, XDP_PASS);
                let mut want = enc.data[0..12].to_vec();
                want.extend_from_slice(&pkt[12..]);
                assert_eq!(dec.data, want, "{src} -> {dst} vlan {vlan:?}");
            }
        }
        // not tunnelled: untouched
        for pkt in [
            frame(
                "198.18.1.1:1000",
                "198.19.0.10:6081",
                Proto::Udp,
                None,
                0,
                b"x",
            ),
            frame(
                "198.18.1.1:1000",
                "198.19.0.10:80",
                Proto::Tcp,
                None,
                0,
                b"x",
            ),
        ] {
            let dec = testrun::run(prog, &pkt, 1, None).expect("decap run");
            assert_eq!((dec.verdict, dec.data), (XDP_PASS, pkt));
        }
        // truncated tunnel packets never crash
        let enc = run(
            plane,
            ifx,
            &frame(
                "198.18.1.2:1000",
                "198.19.0.10:53",
                Proto::Udp,
                None,
                0,
                b"abc",
            ),
        )
        .data;
        for len in 14..enc.len() {
            let dec = testrun::run(prog, &enc[..len], 1, None).expect("decap run");
            assert!([XDP_PASS, XDP_DROP].contains(&dec.verdict));
        }
    });
}

/// The folded one's-complement sum of `b` (16-bit words, network order).
fn ones_sum(b: &[u8]) -> u32 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

/// The UDP checksum of an IPv4 outer header at `l3` is valid (or zero).
fn udp4_checksum_ok(frame: &[u8], l3: usize) -> bool {
    let udp = &frame[l3 + 20..];
    if udp[6..8] == [0, 0] {
        return true;
    }
    let mut pseudo = frame[l3 + 12..l3 + 20].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    let s = ones_sum(&pseudo) + ones_sum(udp);
    ones_sum(&s.to_be_bytes()) == 0xffff
}

/// Second chance (docs/xdp.md): the GUE header names the flow's owner in the Maglev table
/// of the pool without its primary, so after a backend is added, a flow that Maglev moved
/// names its previous owner; `fulcrum decap` on the new backend sends a mid-connection
/// packet it has no socket for on to that secondary (once), and keeps SYNs and packets of
/// its own connections.
#[test]
fn second_chance_names_the_previous_owner_and_decap_forwards_to_it() {
    if !is_root_or_skip("second_chance_names_the_previous_owner_and_decap_forwards_to_it") {
        return;
    }
    let mode = Mode::Tunnel {
        kind: TunnelKind::Gue,
        source: Some(ip("198.18.0.2")),
        second_chance: true,
    };
    let svc = |n: usize| {
        service(
            "g4",
            "198.19.0.10:80",
            Proto::Tcp,
            mode,
            HashKey::FiveTuple,
            backends(&BACKENDS4[..n], 80),
        )
    };
    let (two, three) = (svc(2), svc(3));
    // the secondary the core's Maglev gives: the owner over the pool without the primary
    let secondary = |pool: &XdpService, f: &FlowTuple| -> IpAddr {
        let (primary, _) = core_pick(pool, f);
        let mut rest = pool.clone();
        rest.backends.retain(|b| b.address.ip() != primary);
        core_pick(&rest, f).0
    };
    with_plane("fxsc", vec![two.clone()], move |plane, ifx| {
        // stateless: already before any change the header names a secondary (the other
        // of the two backends)
        let pkt = frame_mid("198.18.1.1:1000", "198.19.0.10:80", b"data");
        let out = run(plane, ifx, &pkt);
        assert_eq!(out.verdict, XDP_TX);
        let f0 = flow("198.18.1.1:1000", "198.19.0.10:80", Proto::Tcp);
        let IpAddr::V4(other) = secondary(&two, &f0) else {
            unreachable!()
        };
        assert_ne!(IpAddr::V4(other), core_pick(&two, &f0).0);
        let mut want = vec![2, 4, 0, 0, 0x5c, 0, 0, 0];
        want.extend_from_slice(&other.octets());
        assert_eq!(&out.data[42..54], &want[..]);

        plane
            .update(std::slice::from_ref(&three))
            .expect("add a backend");
        let new = ip(BACKENDS4[2]);
        let mut moved = None;
        let mut kept = None;
        for port in 1000..3000u16 {
            let src = format!("198.18.1.1:{port}");
            let f = flow(&src, "198.19.0.10:80", Proto::Tcp);
            let (now, hash) = core_pick(&three, &f);
            let (before, _) = core_pick(&two, &f);
            if now == new && moved.is_none() {
                moved = Some((src, hash, before));
            } else if now == before && kept.is_none() {
                kept = Some(src);
            }
        }
        let (src, hash, before) = moved.expect("a flow Maglev moved to the new backend");
        let IpAddr::V4(before4) = before else {
            unreachable!()
        };
        let pkt = frame_mid(&src, "198.19.0.10:80", b"data");
        let out = run(plane, ifx, &pkt);
        assert_eq!(out.verdict, XDP_TX);
        // exact bytes: Ethernet, outer IPv4, UDP, GUE variant 0 (hlen 2, proto 4) with
        // the private data (kind 0x5c, hops 0, pad, the secondary), the inner packet
        let o = &out.data;
        assert_eq!(o.len(), pkt.len() + 20 + 8 + 12);
        assert_eq!(&o[0..6], &mac_of(new));
        assert_eq!(&o[6..12], &LB_MAC);
        check_outer_v4(o, 14, 17, LB4, new, &o[42..], 0);
        assert_eq!(&o[54..], &pkt[14..], "inner packet unchanged");
        let udp = UdpHeader::from_slice(&o[34..]).expect("udp").0;
        assert_eq!(udp.source_port, 0x8000 | (hash & 0x7fff) as u16);
        assert_eq!(udp.destination_port, 6080);
        assert_eq!(usize::from(udp.length), o.len() - 34);
        assert!(udp4_checksum_ok(o, 14), "UDP checksum");
        let mut gue = vec![2, 4, 0, 0, 0x5c, 0, 0, 0];
        gue.extend_from_slice(&before4.octets());
        assert_eq!(&o[42..54], &gue[..]);
        // the moved flow's secondary is the stateless one too
        assert_eq!(
            secondary(&three, &flow(&src, "198.19.0.10:80", Proto::Tcp)),
            before
        );
        // a flow that stayed names its owner without its primary (another backend)
        let kept = kept.expect("a flow that stayed");
        let k = run(plane, ifx, &frame_mid(&kept, "198.19.0.10:80", b"data"));
        let IpAddr::V4(alt) = secondary(&three, &flow(&kept, "198.19.0.10:80", Proto::Tcp)) else {
            unreachable!()
        };
        let mut want = vec![0x5c, 0, 0, 0];
        want.extend_from_slice(&alt.octets());
        assert_eq!(&k.data[46..54], &want[..]);
        assert!(udp4_checksum_ok(&k.data, 14));

        // the new backend: no socket for the flow here -> on to the secondary, still
        // encapsulated, from this host's address, marked
        let decap = fulcrum_xdp::Decap::load(6080).expect("load decap");
        let prog = decap.program().expect("prog");
        let fwd = testrun::run(prog, o, 1, Some(ifx)).expect("decap run");
        assert_eq!(fwd.verdict, XDP_TX, "forwarded to the secondary");
        let f = &fwd.data;
        assert_eq!(f.len(), o.len());
        assert_eq!(&f[0..6], &mac_of(before));
        assert_eq!(&f[6..12], &LB_MAC);
        let (h, _) = Ipv4Header::from_slice(&f[14..]).expect("ipv4");
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        assert_eq!(h.source, [198, 18, 0, 13]);
        assert_eq!(h.destination, before4.octets());
        assert_eq!(h.time_to_live, 63);
        assert_eq!(&f[34..40], &o[34..40], "UDP ports, length");
        assert_eq!(&f[42..46], &o[42..46], "GUE fixed part");
        assert_eq!(&f[46..48], &[0x5c, 1], "the second chance is taken");
        assert_eq!(&f[50..], &o[50..]);
        assert!(udp4_checksum_ok(f, 14), "UDP checksum after the rewrite");
        // the secondary: marked, so delivered (stripped) whatever its sockets
        let dec = testrun::run(prog, f, 1, Some(ifx)).expect("decap run");
        assert_eq!(dec.verdict, XDP_PASS);
        let mut want = f[0..12].to_vec();
        want.extend_from_slice(&pkt[12..]);
        assert_eq!(dec.data, want);
        // a SYN is the new backend's own: delivered
        let syn = frame(&src, "198.19.0.10:80", Proto::Tcp, None, 0, b"");
        let enc = run(plane, ifx, &syn);
        assert_eq!(&enc.data[46..54], &gue[4..]);
        let dec = testrun::run(prog, &enc.data, 1, Some(ifx)).expect("decap run");
        assert_eq!(dec.verdict, XDP_PASS);
        assert_eq!(&dec.data[12..], &syn[12..]);

        // a connection this host holds: delivered here. The inner tuple of the moved
        // flow's frame becomes that of a real local connection to the VIP.
        let st = std::process::Command::new("ip")
            .args(["addr", "add", "198.19.0.10/32", "dev", "lo"])
            .status()
            .expect("ip");
        assert!(st.success());
        let l = std::net::TcpListener::bind("198.19.0.10:80").expect("listen on the VIP");
        let c = std::net::TcpStream::connect("198.19.0.10:80").expect("connect");
        let _a = l.accept().expect("accept");
        let local = c.local_addr().expect("local");
        let IpAddr::V4(lip) = local.ip() else {
            unreachable!()
        };
        let mut mine = o.clone();
        mine[54 + 12..54 + 16].copy_from_slice(&lip.octets());
        mine[54 + 20..54 + 22].copy_from_slice(&local.port().to_be_bytes());
        let dec = testrun::run(prog, &mine, 1, Some(ifx)).expect("decap run");
        assert_eq!(
            dec.verdict, XDP_PASS,
            "a local connection's packet stays here"
        );
        assert_eq!(&dec.data[12..14], &[0x08, 0x00]);
        assert_eq!(dec.data.len(), pkt.len());
        // ... and a listener alone is no connection: forwarded
        let mut other = mine.clone();
        other[54 + 20..54 + 22].copy_from_slice(&local.port().wrapping_add(1).to_be_bytes());
        let fwd = testrun::run(prog, &other, 1, Some(ifx)).expect("decap run");
        assert_eq!(fwd.verdict, XDP_TX);
    });
}
