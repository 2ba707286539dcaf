//! Part 2 through BPF_PROG_TEST_RUN (repeat 1, exact output bytes): `nat` both ways for TCP
//! and UDP over IPv4 and IPv6 (expected frames built by etherparse, so every checksum of the
//! incremental updates is checked against a full computation), port allocation, release on
//! FIN/RST, a full port space refusing new flows without breaking old ones; fragments
//! (first/middle/last, IPv4 and IPv6) to one backend; ICMP "fragmentation needed" / "packet
//! too big" for `tunnel`. Needs root; skips with a message otherwise.
#![allow(clippy::pedantic)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder};
use fulcrum_core::config::TunnelKind;
use fulcrum_core::hash::flow_hash;
use fulcrum_core::model::{FlowTuple, HashKey, Proto};
use fulcrum_core::sched::maglev::Maglev;
use fulcrum_xdp::maps::{NAT_PORT_MAX, NAT_PORT_MIN};
use fulcrum_xdp::testrun::{self, XDP_DROP, XDP_PASS, XDP_TX};
use fulcrum_xdp::{LoadOptions, Mode, NatTimeouts, XdpPlane, XdpService};

#[derive(Clone, Copy)]
enum L4 {
    Tcp(u8),
    Udp,
}
const SYN: u8 = 2;
const ACK: u8 = 0x10;
const FIN: u8 = 1;
const RST: u8 = 4;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// An Ethernet frame with a TCP (flags) or UDP packet, checksums computed by etherparse.
fn pkt(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    l4: L4,
    data: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let mut out = Vec::new();
    macro_rules! l4 {
        ($b:expr) => {
            match l4 {
                L4::Udp => $b.udp(src.port(), dst.port()).write(&mut out, data),
                L4::Tcp(f) => {
                    let mut t = $b.tcp(src.port(), dst.port(), 1000, 65535);
                    if f & SYN != 0 {
                        t = t.syn();
                    }
                    if f & ACK != 0 {
                        t = t.ack(1);
                    }
                    if f & FIN != 0 {
                        t = t.fin();
                    }
                    if f & RST != 0 {
                        t = t.rst();
                    }
                    t.write(&mut out, data)
                }
            }
        };
    }
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => l4!(eth.ipv4(a.octets(), b.octets(), 64)),
        (IpAddr::V6(a), IpAddr::V6(b)) => l4!(eth.ipv6(a.octets(), b.octets(), 64)),
        _ => panic!("mixed families"),
    }
    .expect("write packet");
    out
}

fn with_plane<T: Send + 'static>(
    name: &str,
    opts: LoadOptions,
    services: Vec<XdpService>,
    f: impl FnOnce(&mut XdpPlane, u32) -> T + Send + 'static,
) -> T {
    let ns = fixture_netns(name);
    let r = fulcrum_xdp::testing::in_netns(&ns.0, move || {
        let mut plane = XdpPlane::load(opts).expect("load the XDP program");
        plane.update(&services).expect("update maps");
        let ifindex = fulcrum_xdp::testing::ifindex("v0").expect("v0");
        f(&mut plane, ifindex)
    })
    .expect("netns");
    drop(ns);
    r
}

fn run(plane: &XdpPlane, ifx: u32, frame: &[u8]) -> testrun::Outcome {
    testrun::run(plane.program("xdp_lb").expect("prog"), frame, 1, Some(ifx)).expect("test run")
}

fn nat(source: &str) -> Mode {
    Mode::Nat {
        source: Some(source.parse().expect("source")),
    }
}

/// The backend fulcrum-core picks for the flow, and the source port nat allocates first
/// (FX_NAT_PORT_MIN + five-tuple hash % range, when free).
fn expect_nat(s: &XdpService, client: SocketAddr, proto: Proto) -> (SocketAddr, u16) {
    let f = FlowTuple {
        src: client,
        dst: s.vip,
        proto,
    };
    let h = flow_hash(&s.hash_key, &f).expect("hash");
    let m = Maglev::new(&s.backends, s.table_size);
    let be = s.backends[m.table()[m.slot(h)] as usize].address;
    let h5 = flow_hash(&HashKey::FiveTuple, &f).expect("hash");
    let range = u32::from(NAT_PORT_MAX - NAT_PORT_MIN) + 1;
    (be, NAT_PORT_MIN + (h5 % range) as u16)
}

fn count(plane: &XdpPlane, svc: &str, action: &str) -> u64 {
    plane
        .packet_counts()
        .iter()
        .filter(|c| c.0 == svc && c.1 == action)
        .map(|c| c.2)
        .sum()
}

fn nat_services() -> Vec<XdpService> {
    vec![
        service(
            "n4",
            "198.19.0.10:80",
            Proto::Tcp,
            nat("198.18.0.2"),
            HashKey::FiveTuple,
            backends(&BACKENDS4, 8080),
        ),
        service(
            "n4u",
            "198.19.0.10:53",
            Proto::Udp,
            nat("198.18.0.2"),
            HashKey::SrcIp,
            backends(&BACKENDS4, 5353),
        ),
        service(
            "n6",
            "[2001:2:0:1::10]:80",
            Proto::Tcp,
            nat("2001:2::2"),
            HashKey::FiveTuple,
            backends(&BACKENDS6, 8080),
        ),
        service(
            "n6u",
            "[2001:2:0:1::10]:53",
            Proto::Udp,
            nat("2001:2::2"),
            HashKey::SrcIpPort,
            backends(&BACKENDS6, 5353),
        ),
    ]
}

#[test]
fn nat_both_ways_tcp_udp_ipv4_ipv6_exact_bytes() {
    if !is_root_or_skip("nat_both_ways_tcp_udp_ipv4_ipv6_exact_bytes") {
        return;
    }
    let svcs = nat_services();
    let list = svcs.clone();
    with_plane("fxnat", LoadOptions::default(), svcs, move |plane, ifx| {
        let mut seen = std::collections::HashSet::new();
        for (i, s) in list.iter().enumerate() {
            let v6 = s.vip.is_ipv6();
            let src_ip = if v6 {
                LB6.parse().expect("v6")
            } else {
                IpAddr::from(LB4)
            };
            for n in 0..40u16 {
                let client = if v6 {
                    sa(&format!("[2001:2:0:2::{:x}]:{}", n + 1, 40000 + n))
                } else {
                    sa(&format!("198.18.1.{}:{}", n + 1, 40000 + n))
                };
                let (first, next) = match s.proto {
                    Proto::Tcp => (L4::Tcp(SYN), L4::Tcp(ACK)),
                    Proto::Udp => (L4::Udp, L4::Udp),
                };
                let (be, nport) = expect_nat(s, client, s.proto);
                seen.insert(be);
                let snat = SocketAddr::new(src_ip, nport);
                for (l4, payload) in [(first, &b""[..]), (next, &b"some data"[..])] {
                    // client -> VIP becomes source:nport -> backend:port
                    let input = pkt(CLIENT_MAC, LB_MAC, client, s.vip, l4, payload);
                    let want = pkt(LB_MAC, mac_of(be.ip()), snat, be, l4, payload);
                    let out = run(plane, ifx, &input);
                    assert_eq!(out.verdict, XDP_TX, "{} {client}", s.name);
                    assert_eq!(out.data, want, "{} {client} -> {be} via :{nport}", s.name);
                    // the reply backend -> source:nport becomes VIP -> client
                    let reply = pkt(mac_of(be.ip()), LB_MAC, be, snat, l4, b"reply!");
                    let want = pkt(LB_MAC, CLIENT_MAC, s.vip, client, l4, b"reply!");
                    let out = run(plane, ifx, &reply);
                    assert_eq!(out.verdict, XDP_TX, "{} reply {be} -> {client}", s.name);
                    assert_eq!(out.data, want, "{} reply {be} -> {client}", s.name);
                }
            }
            assert_eq!(count(plane, &s.name, "ct_miss"), 40, "{}", s.name);
            assert_eq!(count(plane, &s.name, "tx"), 160, "{}", s.name);
            let _ = i;
        }
        assert_eq!(
            seen.len(),
            12,
            "flows spread over every backend (6 addresses x 2 ports)"
        );
        assert_eq!(plane.nat_flows().len(), 160);
        assert_eq!(plane.nat_ports_in_use(), 160);

        // UDP over IPv4 without a checksum keeps none
        let s = &list[1];
        let client = sa("198.18.9.9:999");
        let mut input = pkt(CLIENT_MAC, LB_MAC, client, s.vip, L4::Udp, b"x");
        input[14 + 20 + 6] = 0;
        input[14 + 20 + 7] = 0;
        for _ in 0..2 {
            // the first through the slow path, the second from the flow cache
            let out = run(plane, ifx, &input);
            assert_eq!(out.verdict, XDP_TX);
            assert_eq!(&out.data[40..42], &[0, 0], "no UDP checksum stays none");
        }

        // a TCP packet that is not a SYN starts no flow; a reply for no flow is not ours
        let stray = pkt(
            CLIENT_MAC,
            LB_MAC,
            sa("198.18.7.7:1234"),
            list[0].vip,
            L4::Tcp(ACK),
            b"",
        );
        assert_eq!(run(plane, ifx, &stray).verdict, XDP_DROP);
        let stray = pkt(
            mac_of(IpAddr::from([198, 18, 0, 11])),
            LB_MAC,
            sa("198.18.0.11:8080"),
            sa("198.18.0.2:20001"),
            L4::Tcp(ACK),
            b"",
        );
        let out = run(plane, ifx, &stray);
        assert_eq!(
            (out.verdict, &out.data),
            (XDP_PASS, &stray),
            "not a nat reply: untouched"
        );
    });
}

#[test]
fn nat_ports_released_on_fin_rst_and_idle_full_table_refuses_new_flows() {
    if !is_root_or_skip("nat_ports_released_on_fin_rst_and_idle_full_table_refuses_new_flows") {
        return;
    }
    let one = service(
        "one",
        "198.19.0.10:80",
        Proto::Tcp,
        nat("198.18.0.2"),
        HashKey::FiveTuple,
        backends(&BACKENDS4[..1], 8080),
    );
    let u = service(
        "u",
        "198.19.0.10:53",
        Proto::Udp,
        nat("198.18.0.2"),
        HashKey::FiveTuple,
        backends(&BACKENDS4[..1], 53),
    );
    let s = one.clone();
    let opts = LoadOptions {
        nat_timeouts: NatTimeouts {
            tcp: Duration::from_secs(3600),
            tcp_closing: Duration::ZERO,
            udp: Duration::from_millis(300),
        },
        ..LoadOptions::default()
    };
    with_plane("fxnatrel", opts, vec![one, u], move |plane, ifx| {
        let be = s.backends[0].address;
        let bmac = mac_of(be.ip());
        let open = |plane: &XdpPlane, client: SocketAddr| -> Option<u16> {
            let out = run(
                plane,
                ifx,
                &pkt(CLIENT_MAC, LB_MAC, client, s.vip, L4::Tcp(SYN), b""),
            );
            (out.verdict == XDP_TX).then(|| u16::from_be_bytes([out.data[34], out.data[35]]))
        };
        // FIN both ways releases the port; so does a RST
        let c1 = sa("198.18.1.1:1111");
        let p1 = open(plane, c1).expect("flow");
        let snat = sa(&format!("198.18.0.2:{p1}"));
        assert_eq!(
            run(
                plane,
                ifx,
                &pkt(CLIENT_MAC, LB_MAC, c1, s.vip, L4::Tcp(FIN | ACK), b"")
            )
            .verdict,
            XDP_TX
        );
        assert_eq!(
            plane.sweep_nat().expect("sweep").released,
            0,
            "half-closed: kept"
        );
        assert_eq!(
            run(
                plane,
                ifx,
                &pkt(bmac, LB_MAC, be, snat, L4::Tcp(FIN | ACK), b"")
            )
            .verdict,
            XDP_TX
        );
        let sw = plane.sweep_nat().expect("sweep");
        assert_eq!((sw.released, sw.live), (1, 0), "FIN both ways: released");
        let c2 = sa("198.18.1.2:2222");
        let p2 = open(plane, c2).expect("flow");
        let snat2 = sa(&format!("198.18.0.2:{p2}"));
        assert_eq!(
            run(plane, ifx, &pkt(bmac, LB_MAC, be, snat2, L4::Tcp(RST), b"")).verdict,
            XDP_TX
        );
        assert_eq!(
            plane.sweep_nat().expect("sweep").released,
            1,
            "RST: released"
        );
        assert_eq!(plane.nat_ports_in_use(), 0);
        // UDP: released when idle
        let uc = sa("198.18.1.3:3333");
        let out = run(
            plane,
            ifx,
            &pkt(CLIENT_MAC, LB_MAC, uc, sa("198.19.0.10:53"), L4::Udp, b"q"),
        );
        assert_eq!(out.verdict, XDP_TX);
        assert_eq!(plane.sweep_nat().expect("sweep").live, 1);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            plane.sweep_nat().expect("sweep").released,
            1,
            "idle UDP: released"
        );

        // fill the port space towards the one backend: new flows are refused (counted),
        // established ones keep working
        let old = sa("198.18.2.1:5000");
        let old_port = open(plane, old).expect("old flow");
        let mut opened = 1u32;
        let mut refused = 0u32;
        let mut n = 0u32;
        while refused < 50 {
            n += 1;
            assert!(n < 40_000, "never refused");
            let c = SocketAddr::new(
                IpAddr::from([198, 18, 3 + (n / 60000) as u8, (n % 250) as u8 + 1]),
                1024 + (n % 60000) as u16,
            );
            match open(plane, c) {
                Some(_) => opened += 1,
                None => refused += 1,
            }
        }
        let range = u32::from(NAT_PORT_MAX - NAT_PORT_MIN) + 1;
        eprintln!("nat: {opened} flows to one backend before 50 refusals (range {range})");
        assert!(opened <= range && opened > range / 2, "{opened}");
        assert_eq!(u64::from(refused), count(plane, "one", "nat_full"));
        let out = run(
            plane,
            ifx,
            &pkt(CLIENT_MAC, LB_MAC, old, s.vip, L4::Tcp(ACK), b"still"),
        );
        assert_eq!(
            out.verdict, XDP_TX,
            "an established flow survives a full table"
        );
        assert_eq!(u16::from_be_bytes([out.data[34], out.data[35]]), old_port);
    });
}

/// With idle timeouts of 2 s and more, established IPv4 nat flows are served from the
/// per-CPU flow cache (no hash-map lookup); a flow the sweep released must not live on
/// there: its next packet finds no state (dropped, not translated with a freed port).
#[test]
fn nat_flow_cache_serves_established_flows_and_forgets_released_ones() {
    if !is_root_or_skip("nat_flow_cache_serves_established_flows_and_forgets_released_ones") {
        return;
    }
    let s = service(
        "c",
        "198.19.0.10:80",
        Proto::Tcp,
        nat("198.18.0.2"),
        HashKey::FiveTuple,
        backends(&BACKENDS4[..1], 8080),
    );
    let opts = LoadOptions {
        nat_timeouts: NatTimeouts {
            tcp: Duration::from_secs(2),
            tcp_closing: Duration::ZERO,
            udp: Duration::from_secs(2),
        },
        ..LoadOptions::default()
    };
    let svc = s.clone();
    with_plane("fxnatfc", opts, vec![s], move |plane, ifx| {
        let be = svc.backends[0].address;
        let bmac = mac_of(be.ip());
        let c = sa("198.18.1.9:4242");
        let out = run(
            plane,
            ifx,
            &pkt(CLIENT_MAC, LB_MAC, c, svc.vip, L4::Tcp(SYN), b""),
        );
        assert_eq!(out.verdict, XDP_TX);
        let nport = u16::from_be_bytes([out.data[34], out.data[35]]);
        let snat = sa(&format!("198.18.0.2:{nport}"));
        // mid-flow packets (from the cache after the SYN filled it): the same exact bytes
        // as the slow path gives
        for i in 0..3u8 {
            let payload = [i; 7];
            let out = run(
                plane,
                ifx,
                &pkt(CLIENT_MAC, LB_MAC, c, svc.vip, L4::Tcp(ACK), &payload),
            );
            assert_eq!(out.verdict, XDP_TX);
            assert_eq!(
                out.data,
                pkt(LB_MAC, bmac, snat, be, L4::Tcp(ACK), &payload)
            );
        }
        // replies: the first through nat_rev, which caches the way back under the reply's
        // 5-tuple; the next from the cache: the same exact bytes
        for i in 0..3u8 {
            let payload = [0x40 + i; 5];
            let out = run(
                plane,
                ifx,
                &pkt(bmac, LB_MAC, be, snat, L4::Tcp(ACK), &payload),
            );
            assert_eq!(out.verdict, XDP_TX);
            assert_eq!(
                out.data,
                pkt(LB_MAC, CLIENT_MAC, svc.vip, c, L4::Tcp(ACK), &payload),
                "reply {i}"
            );
        }
        let cached = plane.fcache4_flows().expect("fcache4");
        let rev: Vec<_> = cached
            .iter()
            .filter(|(_, e)| e.sv.mode == fulcrum_xdp::maps::FCACHE_NAT_REV)
            .collect();
        assert_eq!(rev.len(), 1, "the reply's way back is cached: {rev:?}");
        let e = rev[0].1;
        let (IpAddr::V4(b4), IpAddr::V4(s4)) = (be.ip(), snat.ip()) else {
            unreachable!("IPv4")
        };
        assert_eq!((e.saddr, e.daddr), (b4.octets(), s4.octets()));
        assert_eq!(
            (e.nport, e.bport),
            (svc.vip.port().to_be(), c.port().to_be())
        );
        // a new nat flow (another client) voids cached replies (a reply 5-tuple may be
        // reused from then on): the reply takes nat_rev again, the same bytes
        let c2 = sa("198.18.1.10:4243");
        let syn2 = pkt(CLIENT_MAC, LB_MAC, c2, svc.vip, L4::Tcp(SYN), b"");
        assert_eq!(run(plane, ifx, &syn2).verdict, XDP_TX);
        let out = run(
            plane,
            ifx,
            &pkt(bmac, LB_MAC, be, snat, L4::Tcp(ACK), b"after"),
        );
        assert_eq!(
            out.data,
            pkt(LB_MAC, CLIENT_MAC, svc.vip, c, L4::Tcp(ACK), b"after")
        );
        // ... and was cached again under the new nat_gen (`pad1`): the old slot was void
        let again: Vec<_> = plane
            .fcache4_flows()
            .expect("fcache4")
            .into_iter()
            .filter(|(_, e)| e.sv.mode == fulcrum_xdp::maps::FCACHE_NAT_REV)
            .collect();
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].1.pad1,
            e.pad1 + 1,
            "nat_gen moved on with the new flow"
        );
        // a FIN each way (the client's through the slow path, which marks the flow), swept
        let fin = pkt(CLIENT_MAC, LB_MAC, c, svc.vip, L4::Tcp(FIN | ACK), b"");
        assert_eq!(run(plane, ifx, &fin).verdict, XDP_TX);
        let fin = pkt(bmac, LB_MAC, be, snat, L4::Tcp(FIN | ACK), b"");
        assert_eq!(run(plane, ifx, &fin).verdict, XDP_TX);
        let fin2 = pkt(CLIENT_MAC, LB_MAC, c2, svc.vip, L4::Tcp(RST), b"");
        assert_eq!(run(plane, ifx, &fin2).verdict, XDP_TX);
        assert_eq!(plane.sweep_nat().expect("sweep").released, 2);
        let late = pkt(CLIENT_MAC, LB_MAC, c, svc.vip, L4::Tcp(ACK), b"late");
        assert_eq!(
            run(plane, ifx, &late).verdict,
            XDP_DROP,
            "a released flow is gone from the cache too"
        );
        assert_eq!(plane.nat_ports_in_use(), 0);
    });
}

/// IPv4 fragments of one UDP datagram: (offset in 8-byte units, more fragments, payload).
fn fragments_v4(src: SocketAddr, dst: SocketAddr, total: usize, chunk: usize) -> Vec<Vec<u8>> {
    let whole = pkt(CLIENT_MAC, LB_MAC, src, dst, L4::Udp, &vec![0xab; total]);
    let l4 = &whole[34..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < l4.len() {
        let end = (off + chunk).min(l4.len());
        let mut h = etherparse::Ipv4Header::from_slice(&whole[14..34])
            .expect("ip")
            .0;
        h.fragment_offset = etherparse::IpFragOffset::try_new((off / 8) as u16).expect("offset");
        h.more_fragments = end < l4.len();
        h.dont_fragment = false;
        h.identification = 0x1234;
        h.total_len = (20 + end - off) as u16;
        h.header_checksum = h.calc_header_checksum();
        let mut f = whole[..14].to_vec();
        f.extend_from_slice(&h.to_bytes());
        f.extend_from_slice(&l4[off..end]);
        out.push(f);
        off = end;
    }
    out
}

/// IPv6 fragments (a fragment header) of one UDP datagram.
fn fragments_v6(src: SocketAddr, dst: SocketAddr, total: usize, chunk: usize) -> Vec<Vec<u8>> {
    let whole = pkt(CLIENT_MAC, LB_MAC, src, dst, L4::Udp, &vec![0xcd; total]);
    let l4 = &whole[54..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < l4.len() {
        let end = (off + chunk).min(l4.len());
        let mut f = whole[..54].to_vec();
        f[14 + 6] = 44; // next header: fragment
        let plen = (8 + end - off) as u16;
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        let fo = ((off / 8) as u16) << 3 | u16::from(end < l4.len());
        f.extend_from_slice(&[17, 0]);
        f.extend_from_slice(&fo.to_be_bytes());
        f.extend_from_slice(&0x5678_u32.to_be_bytes());
        f.extend_from_slice(&l4[off..end]);
        out.push(f);
        off = end;
    }
    out
}

#[test]
fn fragments_first_middle_last_reach_one_backend() {
    if !is_root_or_skip("fragments_first_middle_last_reach_one_backend") {
        return;
    }
    let d4 = service(
        "d4",
        "198.19.0.10:53",
        Proto::Udp,
        Mode::Dsr,
        HashKey::FiveTuple,
        backends(&BACKENDS4, 53),
    );
    let d4b = service(
        "d4b",
        "198.19.0.10:5353",
        Proto::Udp,
        Mode::Dsr,
        HashKey::FiveTuple,
        backends(&BACKENDS4[1..], 5353),
    );
    let d6 = service(
        "d6",
        "[2001:2:0:1::10]:53",
        Proto::Udp,
        Mode::Dsr,
        HashKey::SrcIpPort,
        backends(&BACKENDS6, 53),
    );
    let t4 = service(
        "t4",
        "198.19.0.20:53",
        Proto::Udp,
        Mode::Tunnel {
            kind: TunnelKind::Gue,
            source: Some("198.18.0.2".parse().expect("ip")),
            second_chance: false,
        },
        HashKey::FiveTuple,
        backends(&BACKENDS4, 53),
    );
    let (a, c, t) = (d4.clone(), d6.clone(), t4.clone());
    with_plane(
        "fxfrag",
        LoadOptions::default(),
        vec![d4, d4b, d6, t4],
        move |plane, ifx| {
            // the backend: fulcrum-core's Maglev on the address-only hash (ports 0)
            let pick = |s: &XdpService, src: IpAddr| -> IpAddr {
                let f = FlowTuple {
                    src: SocketAddr::new(src, 0),
                    dst: SocketAddr::new(s.vip.ip(), 0),
                    proto: Proto::Udp,
                };
                let key = if s.hash_key == HashKey::SrcIp {
                    HashKey::SrcIp
                } else {
                    HashKey::FiveTuple
                };
                let h = flow_hash(&key, &f).expect("hash");
                let m = Maglev::new(&s.backends, s.table_size);
                s.backends[m.table()[m.slot(h)] as usize].address.ip()
            };
            let mut seen = std::collections::HashSet::new();
            for i in 0..30u16 {
                // a 4000-byte datagram in fragments of 1480: first, middle, last
                let src = sa(&format!("198.18.1.{}:{}", i + 1, 3000 + i));
                let frags = fragments_v4(src, a.vip, 4000, 1480);
                assert_eq!(frags.len(), 3);
                let be = pick(&a, src.ip());
                seen.insert(be);
                for f in &frags {
                    let out = run(plane, ifx, f);
                    assert_eq!(out.verdict, XDP_TX, "v4 fragment");
                    let mut want = f.clone();
                    want[0..6].copy_from_slice(&mac_of(be));
                    want[6..12].copy_from_slice(&LB_MAC);
                    assert_eq!(out.data, want, "v4 fragment of {src} to {be}");
                }
                let src6 = sa(&format!("[2001:2:0:2::{:x}]:{}", i + 1, 3000 + i));
                let frags = fragments_v6(src6, c.vip, 4000, 1448);
                assert_eq!(frags.len(), 3);
                let be = pick(&c, src6.ip());
                for f in &frags {
                    let out = run(plane, ifx, f);
                    assert_eq!(out.verdict, XDP_TX, "v6 fragment");
                    assert_eq!(
                        &out.data[0..6],
                        &mac_of(be),
                        "v6 fragment of {src6} to {be}"
                    );
                    assert_eq!(&out.data[12..], &f[12..]);
                }
                // tunnel: each fragment encapsulated to the same backend (GUE, zero checksum)
                let frags = fragments_v4(src, t.vip, 4000, 1400);
                let be = pick(&t, src.ip());
                for f in &frags {
                    let out = run(plane, ifx, f);
                    assert_eq!(out.verdict, XDP_TX);
                    assert_eq!(&out.data[0..6], &mac_of(be));
                    assert_eq!(
                        &out.data[14 + 16..14 + 20],
                        &match be {
                            IpAddr::V4(v) => v.octets(),
                            _ => panic!(),
                        }
                    );
                    assert_eq!(
                        &out.data[14 + 26..14 + 28],
                        &[0, 0],
                        "GUE checksum of a fragment: none"
                    );
                    assert_eq!(&out.data[14 + 28..], &f[14..], "inner fragment unchanged");
                }
            }
            assert!(seen.len() >= 2, "fragmented datagrams spread: {seen:?}");
            // the VIP's fragments belong to its lowest-port service (53, not 5353)
            assert_eq!(count(plane, "d4", "frag"), 90);
            assert_eq!(count(plane, "d4b", "frag"), 0);
        },
    );
}

fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[test]
fn tunnel_too_big_with_df_answers_icmp() {
    if !is_root_or_skip("tunnel_too_big_with_df_answers_icmp") {
        return;
    }
    let t4 = service(
        "t4",
        "198.19.0.10:80",
        Proto::Tcp,
        Mode::Tunnel {
            kind: TunnelKind::Ipip,
            source: Some("198.18.0.2".parse().expect("ip")),
            second_chance: false,
        },
        HashKey::FiveTuple,
        backends(&BACKENDS4, 80),
    );
    let t6 = service(
        "t6",
        "[2001:2:0:1::10]:80",
        Proto::Tcp,
        Mode::Tunnel {
            kind: TunnelKind::Gue,
            source: Some("2001:2::2".parse().expect("ip")),
            second_chance: false,
        },
        HashKey::FiveTuple,
        backends(&BACKENDS6, 80),
    );
    let (a, b) = (t4.clone(), t6.clone());
    with_plane(
        "fxmtu",
        LoadOptions::default(),
        vec![t4, t6],
        move |plane, ifx| {
            // IPv4, DF (etherparse sets it), 1500 bytes: 1520 after IPIP > the veth's 1500
            let client = sa("198.18.1.1:40000");
            let big = pkt(
                CLIENT_MAC,
                LB_MAC,
                client,
                a.vip,
                L4::Tcp(ACK),
                &[7u8; 1460],
            );
            assert_eq!(big.len(), 14 + 1500);
            let out = run(plane, ifx, &big);
            assert_eq!(out.verdict, XDP_TX, "ICMP back to the client");
            let mut want = Vec::new();
            want.extend_from_slice(&CLIENT_MAC);
            want.extend_from_slice(&LB_MAC);
            want.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0];
            ip.extend_from_slice(&[198, 19, 0, 10]);
            ip.extend_from_slice(&[198, 18, 1, 1]);
            let c = csum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            want.extend_from_slice(&ip);
            let quote = &big[14..14 + 28];
            let icmp = etherparse::Icmpv4Header::with_checksum(
                Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: 1480,
                    },
                ),
                quote,
            );
            want.extend_from_slice(&icmp.to_bytes());
            want.extend_from_slice(quote);
            assert_eq!(
                out.data, want,
                "ICMP fragmentation needed, MTU 1480, quoting the packet"
            );
            assert_eq!(count(plane, "t4", "too_big"), 1);
            // a smaller packet is encapsulated
            let ok = pkt(
                CLIENT_MAC,
                LB_MAC,
                client,
                a.vip,
                L4::Tcp(ACK),
                &[7u8; 1440],
            );
            let out = run(plane, ifx, &ok);
            assert_eq!((out.verdict, out.data.len()), (XDP_TX, ok.len() + 20));
            // without DF: encapsulated (the kernel may fragment the outer packet on its way)
            let mut nodf = big.clone();
            nodf[20] = 0;
            let h = etherparse::Ipv4Header::from_slice(&nodf[14..34])
                .expect("ip")
                .0;
            nodf[24..26].copy_from_slice(&h.calc_header_checksum().to_be_bytes());
            assert_eq!(run(plane, ifx, &nodf).verdict, XDP_TX);

            // IPv6 (always "DF"): 1500 bytes + 48 (IPv6 + UDP) > 1500 -> too big, MTU 1452
            let client6 = sa("[2001:2:0:2::1]:40000");
            let big6 = pkt(
                CLIENT_MAC,
                LB_MAC,
                client6,
                b.vip,
                L4::Tcp(ACK),
                &[9u8; 1440],
            );
            let out = run(plane, ifx, &big6);
            assert_eq!(out.verdict, XDP_TX);
            let quote = &big6[14..14 + 48];
            let (src, dst) = match (b.vip.ip(), client6.ip()) {
                (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets(), d.octets()),
                _ => panic!(),
            };
            let icmp = etherparse::Icmpv6Header::with_checksum(
                Icmpv6Type::PacketTooBig { mtu: 1452 },
                src,
                dst,
                quote,
            )
            .expect("icmpv6");
            let mut want = Vec::new();
            want.extend_from_slice(&CLIENT_MAC);
            want.extend_from_slice(&LB_MAC);
            want.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 56, 58, 64]);
            want.extend_from_slice(&src);
            want.extend_from_slice(&dst);
            want.extend_from_slice(&icmp.to_bytes());
            want.extend_from_slice(quote);
            assert_eq!(out.data, want, "ICMPv6 packet too big, MTU 1452");
        },
    );
}

/// An ICMPv4 error frame from `from` to `to` quoting the first 28 bytes (IPv4 header + 8)
/// of the IP packet in `quoted` (an Ethernet frame): checksums by etherparse.
fn icmp4_error(
    smac: [u8; 6],
    dmac: [u8; 6],
    from: [u8; 4],
    to: [u8; 4],
    t: Icmpv4Type,
    quoted: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(from, to, 64)
        .icmpv4(t)
        .write(&mut out, &quoted[14..14 + 28])
        .expect("icmp");
    out
}

/// The same for ICMPv6, quoting 48 bytes (IPv6 header + 8).
fn icmp6_error(
    smac: [u8; 6],
    dmac: [u8; 6],
    from: [u8; 16],
    to: [u8; 16],
    t: Icmpv6Type,
    quoted: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv6(from, to, 64)
        .icmpv6(t)
        .write(&mut out, &quoted[14..14 + 48])
        .expect("icmpv6");
    out
}

fn v6(a: SocketAddr) -> [u8; 16] {
    match a.ip() {
        IpAddr::V6(v) => v.octets(),
        IpAddr::V4(_) => panic!("ipv6"),
    }
}

fn v4(a: SocketAddr) -> [u8; 4] {
    match a.ip() {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(_) => panic!("ipv4"),
    }
}

/// Issue 8 item 4: ICMP errors about a flow reach the right side through conntrack, as in
/// IPVS. nat: a port unreachable from the backend (quoting source:nport -> backend) goes to
/// the client translated (VIP -> client, quoting client -> VIP, every checksum right); a
/// fragmentation needed from the client's side (quoting VIP -> client) goes to the backend
/// translated (source -> backend, quoting backend -> source:nport). dsr: a too-big for a
/// reply a backend sent from the VIP goes, unchanged, to that flow's backend. Errors about
/// no flow of ours are passed untouched. Exact bytes, repeat 1.
#[test]
fn icmp_errors_follow_their_flow() {
    if !is_root_or_skip("icmp_errors_follow_their_flow") {
        return;
    }
    let mut svcs = nat_services();
    svcs.push(service(
        "d4",
        "198.19.0.20:80",
        Proto::Tcp,
        Mode::Dsr,
        HashKey::FiveTuple,
        backends(&BACKENDS4, 80),
    ));
    let list = svcs.clone();
    with_plane("fxicmp", LoadOptions::default(), svcs, move |plane, ifx| {
        let lb = sa("198.18.0.2:0");
        let unreach_port =
            Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
        let frag_needed = Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        );
        for (s, l4, proto) in [
            (&list[1], L4::Udp, Proto::Udp),
            (&list[0], L4::Tcp(SYN), Proto::Tcp),
        ] {
            let client = sa("198.18.40.7:40000");
            let (be, nport) = expect_nat(s, client, proto);
            let snat = SocketAddr::new(lb.ip(), nport);
            // the flow: client -> VIP, translated to source:nport -> backend
            let first = pkt(CLIENT_MAC, LB_MAC, client, s.vip, l4, b"hello, backend");
            let out = run(plane, ifx, &first);
            assert_eq!(out.verdict, XDP_TX);
            let sent = pkt(LB_MAC, mac_of(be.ip()), snat, be, l4, b"hello, backend");
            assert_eq!(out.data, sent, "{}: forward translation", s.name);

            // the backend answers "port unreachable" about what it received
            let err = icmp4_error(
                mac_of(be.ip()),
                LB_MAC,
                v4(be),
                v4(lb),
                unreach_port.clone(),
                &sent,
            );
            let out = run(plane, ifx, &err);
            assert_eq!(out.verdict, XDP_TX, "{}: error from the backend", s.name);
            let orig = pkt(CLIENT_MAC, LB_MAC, client, s.vip, l4, b"hello, backend");
            let want = icmp4_error(
                LB_MAC,
                CLIENT_MAC,
                v4(s.vip),
                v4(client),
                unreach_port.clone(),
                &orig,
            );
            assert_eq!(
                out.data, want,
                "{}: error translated back to the client",
                s.name
            );

            // the client's side answers "fragmentation needed" about a reply (VIP -> client)
            let reply = pkt(CLIENT_MAC, LB_MAC, s.vip, client, l4, b"a reply");
            let err = icmp4_error(
                CLIENT_MAC,
                LB_MAC,
                [198, 18, 40, 1],
                v4(s.vip),
                frag_needed.clone(),
                &reply,
            );
            let out = run(plane, ifx, &err);
            assert_eq!(
                out.verdict, XDP_TX,
                "{}: error from the client side",
                s.name
            );
            // as the backend sent the reply: backend -> source:nport
            let breply = pkt(CLIENT_MAC, LB_MAC, be, snat, l4, b"a reply");
            let want = icmp4_error(
                LB_MAC,
                mac_of(be.ip()),
                v4(lb),
                v4(be),
                frag_needed.clone(),
                &breply,
            );
            assert_eq!(
                out.data, want,
                "{}: error translated to the backend",
                s.name
            );
        }
        assert_eq!(count(plane, "n4u", "icmp") + count(plane, "n4", "icmp"), 4);

        // the same over IPv6: port unreachable from the backend, packet too big from the
        // client's side (the ICMPv6 checksum covers the translated outer addresses too)
        let lb6 = sa("[2001:2::2]:0");
        let unreach6 =
            Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port);
        let big6 = Icmpv6Type::PacketTooBig { mtu: 1280 };
        for (s, l4, proto) in [
            (&list[3], L4::Udp, Proto::Udp),
            (&list[2], L4::Tcp(SYN), Proto::Tcp),
        ] {
            let client = sa("[2001:2:0:40::7]:40000");
            let (be, nport) = expect_nat(s, client, proto);
            let snat = SocketAddr::new(lb6.ip(), nport);
            let first = pkt(CLIENT_MAC, LB_MAC, client, s.vip, l4, b"hello, backend");
            let out = run(plane, ifx, &first);
            assert_eq!(out.verdict, XDP_TX);
            let sent = pkt(LB_MAC, mac_of(be.ip()), snat, be, l4, b"hello, backend");
            assert_eq!(out.data, sent, "{}: forward translation", s.name);

            let err = icmp6_error(mac_of(be.ip()), LB_MAC, v6(be), v6(lb6), unreach6, &sent);
            let out = run(plane, ifx, &err);
            assert_eq!(out.verdict, XDP_TX, "{}: error from the backend", s.name);
            let orig = pkt(CLIENT_MAC, LB_MAC, client, s.vip, l4, b"hello, backend");
            let want = icmp6_error(LB_MAC, CLIENT_MAC, v6(s.vip), v6(client), unreach6, &orig);
            assert_eq!(
                out.data, want,
                "{}: error translated back to the client",
                s.name
            );

            let reply = pkt(CLIENT_MAC, LB_MAC, s.vip, client, l4, b"a reply");
            let router = v6(sa("[2001:2:0:40::1]:0"));
            let err = icmp6_error(CLIENT_MAC, LB_MAC, router, v6(s.vip), big6, &reply);
            let out = run(plane, ifx, &err);
            assert_eq!(
                out.verdict, XDP_TX,
                "{}: error from the client side",
                s.name
            );
            let breply = pkt(CLIENT_MAC, LB_MAC, be, snat, l4, b"a reply");
            let want = icmp6_error(LB_MAC, mac_of(be.ip()), v6(lb6), v6(be), big6, &breply);
            assert_eq!(
                out.data, want,
                "{}: error translated to the backend",
                s.name
            );
        }
        assert_eq!(count(plane, "n6u", "icmp") + count(plane, "n6", "icmp"), 4);

        // dsr: a too-big for a reply the backend sent from the VIP goes to that backend
        let d4 = &list[4];
        let client = sa("198.18.41.9:41000");
        let syn = pkt(CLIENT_MAC, LB_MAC, client, d4.vip, L4::Tcp(SYN), b"");
        let out = run(plane, ifx, &syn);
        assert_eq!(out.verdict, XDP_TX);
        let be_mac: [u8; 6] = out.data[0..6].try_into().expect("mac");
        let reply = pkt(
            CLIENT_MAC,
            LB_MAC,
            d4.vip,
            client,
            L4::Tcp(ACK),
            b"reply data",
        );
        let err = icmp4_error(
            CLIENT_MAC,
            LB_MAC,
            [198, 18, 40, 1],
            v4(d4.vip),
            frag_needed.clone(),
            &reply,
        );
        let out = run(plane, ifx, &err);
        assert_eq!(out.verdict, XDP_TX);
        let mut want = err.clone();
        want[0..6].copy_from_slice(&be_mac);
        want[6..12].copy_from_slice(&LB_MAC);
        assert_eq!(
            out.data, want,
            "dsr: the error to the flow's backend, unchanged"
        );
        assert_eq!(count(plane, "d4", "icmp"), 1);

        // about no flow of ours: passed untouched
        let stray = pkt(
            CLIENT_MAC,
            LB_MAC,
            sa("198.19.0.99:80"),
            client,
            L4::Tcp(ACK),
            b"x",
        );
        let err = icmp4_error(
            CLIENT_MAC,
            LB_MAC,
            [198, 18, 40, 1],
            [198, 19, 0, 99],
            frag_needed,
            &stray,
        );
        let out = run(plane, ifx, &err);
        assert_eq!((out.verdict, out.data), (XDP_PASS, err));
    });
}

/// nat applies the SYN rule of dsr/tunnel (docs/xdp.md, "Conntrack"): a plain SYN on the
/// 5-tuple of an existing flow whose backend is draining starts a new flow to the current
/// table's choice (the old translation is released); the mid-flow packets of another flow to
/// the draining backend keep going there.
#[test]
fn nat_syn_reusing_a_tuple_takes_the_table_choice() {
    if !is_root_or_skip("nat_syn_reusing_a_tuple_takes_the_table_choice") {
        return;
    }
    let s = nat_services().swap_remove(0);
    let list = vec![s.clone()];
    with_plane(
        "synfixnat",
        LoadOptions::default(),
        list,
        move |plane, ifx| {
            let drained_ip = IpAddr::from([198, 18, 0, 12]);
            // two flows to .12: one whose tuple is reused, one kept
            let clients: Vec<SocketAddr> = (0..5000u16)
                .map(|n| sa(&format!("198.18.8.1:{}", 20000 + n)))
                .filter(|c| expect_nat(&s, *c, Proto::Tcp).0.ip() == drained_ip)
                .take(2)
                .collect();
            assert_eq!(clients.len(), 2);
            let src = IpAddr::from(LB4);
            let send = |plane: &XdpPlane, c: SocketAddr, l4: L4, be: SocketAddr, nport: u16| {
                let input = pkt(CLIENT_MAC, LB_MAC, c, s.vip, l4, b"");
                let want = pkt(
                    LB_MAC,
                    mac_of(be.ip()),
                    SocketAddr::new(src, nport),
                    be,
                    l4,
                    b"",
                );
                let out = run(plane, ifx, &input);
                assert_eq!((out.verdict, &out.data), (XDP_TX, &want), "{c} -> {be}");
            };
            for c in &clients {
                let (be, nport) = expect_nat(&s, *c, Proto::Tcp);
                send(plane, *c, L4::Tcp(SYN), be, nport);
                send(plane, *c, L4::Tcp(ACK), be, nport);
            }
            let mut ds = s.clone();
            ds.backends[1].state = fulcrum_core::model::BackendState::Draining;
            plane.update(&[ds.clone()]).expect("drain .12");
            let (reused, kept) = (clients[0], clients[1]);
            let (old_be, old_nport) = expect_nat(&s, reused, Proto::Tcp);
            send(plane, reused, L4::Tcp(ACK), old_be, old_nport);
            let (new_be, new_nport) = expect_nat(&ds, reused, Proto::Tcp);
            assert_ne!(new_be.ip(), drained_ip);
            send(plane, reused, L4::Tcp(SYN), new_be, new_nport);
            send(plane, reused, L4::Tcp(ACK), new_be, new_nport);
            send(plane, reused, L4::Tcp(SYN), new_be, new_nport); // retransmitted: same flow
            let (kb, kp) = expect_nat(&s, kept, Proto::Tcp);
            send(plane, kept, L4::Tcp(ACK), kb, kp);
            assert_eq!(
                plane.nat_flows().len(),
                2,
                "the old translation was replaced"
            );
        },
    );
}
