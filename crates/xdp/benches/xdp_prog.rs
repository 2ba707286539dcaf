//! Nanoseconds per packet of the XDP programs through BPF_PROG_TEST_RUN (repeat 1e6), as a
//! ratio to a bare `XDP_PASS` measured in the same run. Needs root.
//!
//! `cargo bench -p fulcrum-xdp --bench xdp_prog` (or `bench/xdp.sh`). Writes its table into
//! `docs/benchmarks.md` between the `xdp-bench` markers (other sections are kept) unless
//! `FULCRUM_BENCH_NO_WRITE=1`. `FULCRUM_BENCH_REPEAT` changes the repeat count.
#![allow(clippy::pedantic)]

#[path = "../tests/common.rs"]
mod common;

use std::fmt::Write as _;

use common::*;
use etherparse::PacketBuilder;
use fulcrum_core::config::TunnelKind;
use fulcrum_core::model::{HashKey, Proto};
use fulcrum_xdp::testrun;
use fulcrum_xdp::{LoadOptions, Mode, XdpPlane, XdpService};

const FLOWS: u32 = 50_000;
const ROUNDS: usize = 5;

/// `FULCRUM_BENCH_FLOWS` (default 50,000) flows per VIP pre-filled; `FULCRUM_BENCH_ONLY`: a
/// comma-separated list of substrings, only rows whose name contains one are measured (the
/// floor always is): quick A/B runs while tuning.
fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A 60-byte TCP frame (14 + 20 + 20 + 6) from 198.18.(i/250).(i%250):(1024+i%60000).
fn tcp4(i: u32, dst: [u8; 4], dport: u16) -> Vec<u8> {
    tcp4_flags(i, dst, dport, false)
}

/// The same with SYN set (the first packet of a flow: the TCP packet that creates a tracked
/// conntrack entry).
fn tcp4_syn(i: u32, dst: [u8; 4], dport: u16) -> Vec<u8> {
    tcp4_flags(i, dst, dport, true)
}

fn tcp4_flags(i: u32, dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    let src = [198, 18, 10 + (i / 250 % 200) as u8, (i % 250) as u8];
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst, 64)
        .tcp(1024 + (i % 60000) as u16, dport, 1, 1024);
    let b = if syn { b.syn() } else { b };
    b.write(&mut out, b"abcdef").expect("packet");
    out
}

/// A 74-byte TCP/IPv6 frame (14 + 40 + 20) from 2001:2::a:(i/60000):(i%60000) port
/// 1024+i%60000 to `dst`.
fn tcp6_flags(i: u32, dst: &str, dport: u16, syn: bool) -> Vec<u8> {
    let mut src: [u8; 16] = "2001:2::a:0:0"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    src[12..16].copy_from_slice(&i.to_be_bytes());
    let dst = dst.parse::<std::net::Ipv6Addr>().expect("ip").octets();
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(src, dst, 64)
        .tcp(1024 + (i % 60000) as u16, dport, 1, 1024);
    let b = if syn { b.syn() } else { b };
    b.write(&mut out, b"").expect("packet");
    out
}

const VIP6: &str = "2001:2::100";

fn services() -> Vec<XdpService> {
    vec![
        service(
            "dsr6",
            "[2001:2::100]:80",
            Proto::Tcp,
            Mode::Dsr,
            HashKey::FiveTuple,
            backends(&BACKENDS6, 80),
        ),
        service(
            "dsr",
            "198.19.0.10:80",
            Proto::Tcp,
            Mode::Dsr,
            HashKey::FiveTuple,
            backends(&BACKENDS4, 80),
        ),
        service(
            "ipip",
            "198.19.0.11:80",
            Proto::Tcp,
            Mode::Tunnel {
                kind: TunnelKind::Ipip,
                source: Some("198.18.0.2".parse().expect("ip")),
                second_chance: false,
            },
            HashKey::FiveTuple,
            backends(&BACKENDS4, 80),
        ),
        service(
            "gue",
            "198.19.0.12:80",
            Proto::Tcp,
            Mode::Tunnel {
                kind: TunnelKind::Gue,
                source: Some("198.18.0.2".parse().expect("ip")),
                second_chance: false,
            },
            HashKey::FiveTuple,
            backends(&BACKENDS4, 80),
        ),
        gue_sc(3),
    ]
}

/// A plane with only a nat service (with one, every packet for no VIP pays the `nat_rev`
/// lookup: the other rows are measured without it).
fn nat_plane(opts: LoadOptions) -> XdpPlane {
    let mut p = XdpPlane::load(opts).expect("load");
    let nat = service(
        "nat",
        "198.19.0.14:80",
        Proto::Tcp,
        Mode::Nat {
            source: Some("198.18.0.2".parse().expect("ip")),
        },
        HashKey::FiveTuple,
        backends(&BACKENDS4, 8080),
    );
    p.update(&[nat]).expect("update");
    p
}

/// `tunnel gue` with second chance over the first `n` fixture backends.
fn gue_sc(n: usize) -> XdpService {
    service(
        "gue-sc",
        "198.19.0.13:80",
        Proto::Tcp,
        Mode::Tunnel {
            kind: TunnelKind::Gue,
            source: Some("198.18.0.2".parse().expect("ip")),
            second_chance: true,
        },
        HashKey::FiveTuple,
        backends(&BACKENDS4[..n], 80),
    )
}

/// The plane, after `gue-sc` went from 2 backends to 3 (its previous table is in place: a
/// flow's secondary is looked up on every packet).
fn plane(opts: LoadOptions) -> XdpPlane {
    let mut p = XdpPlane::load(opts).expect("load");
    let mut before = services();
    before.pop();
    before.push(gue_sc(2));
    p.update(&before).expect("update");
    p.update(&services()).expect("update");
    p
}

/// Median ns of `runs` single runs (repeat 1: for programs that change the frame for good,
/// as `fulcrum decap` does).
fn measure_once(prog: &aya::programs::Xdp, pkt: &[u8], ifx: u32, runs: usize, want: u32) -> f64 {
    let mut v: Vec<u32> = (0..runs)
        .map(|_| {
            let o = testrun::run(prog, pkt, 1, Some(ifx)).expect("test run");
            assert_eq!(o.verdict, want, "unexpected verdict");
            o.ns_per_run
        })
        .collect();
    v.sort_unstable();
    f64::from(v[runs / 2])
}

/// Median ns/packet over ROUNDS runs of `repeat`.
fn measure(p: &XdpPlane, prog: &str, pkt: &[u8], ifx: u32, repeat: u32, want: u32) -> f64 {
    let prog = p.program(prog).expect("prog");
    let mut v: Vec<u32> = (0..ROUNDS)
        .map(|_| {
            let o = testrun::run(prog, pkt, repeat, Some(ifx)).expect("test run");
            assert_eq!(o.verdict, want, "unexpected verdict");
            o.ns_per_run
        })
        .collect();
    v.sort_unstable();
    f64::from(v[ROUNDS / 2])
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !fulcrum_xdp::testing::is_root() {
        eprintln!("SKIPPED xdp_prog bench: needs root (BPF_PROG_TEST_RUN, network namespaces)");
        return;
    }
    let repeat: u32 = std::env::var("FULCRUM_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let flows = env_u32("FULCRUM_BENCH_FLOWS", FLOWS);
    let only: Vec<String> = std::env::var("FULCRUM_BENCH_ONLY")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let ns = fixture_netns("fxbench");
    let rows = fulcrum_xdp::testing::in_netns(&ns.0, move || {
        let ifx = fulcrum_xdp::testing::ifindex("v0").expect("v0");
        let normal = plane(LoadOptions::default());
        let miss = plane(LoadOptions {
            bench_ct_miss: true,
            ..LoadOptions::default()
        });
        let undo = plane(LoadOptions {
            bench_undo_encap: true,
            ..LoadOptions::default()
        });
        let nofc = plane(LoadOptions {
            bench_no_fcache: true,
            ..LoadOptions::default()
        });
        let undo_miss = plane(LoadOptions {
            bench_ct_miss: true,
            bench_undo_encap: true,
            ..LoadOptions::default()
        });
        // 50k flows in the per-CPU conntrack (this thread's CPU: `in_netns` pins it) for
        // each VIP of the hit paths
        for p in [&normal, &undo, &nofc] {
            let prog = p.program("xdp_lb").expect("prog");
            for i in 0..flows {
                for (vip, want) in [
                    ([198, 19, 0, 10], testrun::XDP_TX),
                    ([198, 19, 0, 11], testrun::XDP_TX),
                    ([198, 19, 0, 12], testrun::XDP_TX),
                    ([198, 19, 0, 13], testrun::XDP_TX),
                ] {
                    let o =
                        testrun::run(prog, &tcp4_syn(i, vip, 80), 1, Some(ifx)).expect("prefill");
                    assert_eq!(o.verdict, want);
                }
                let o = testrun::run(prog, &tcp6_flags(i, VIP6, 80, true), 1, Some(ifx))
                    .expect("prefill");
                assert_eq!(o.verdict, testrun::XDP_TX);
            }
        }
        let f = 12_345;
        let (tx, pass) = (testrun::XDP_TX, testrun::XDP_PASS);
        let cases: Vec<(&str, &XdpPlane, &str, Vec<u8>, u32)> = vec![
            (
                "`XDP_PASS` (floor)",
                &normal,
                "xdp_pass",
                tcp4(f, [198, 19, 0, 10], 80),
                pass,
            ),
            (
                "parse, not a VIP, pass",
                &normal,
                "xdp_lb",
                tcp4(f, [198, 19, 0, 99], 80),
                pass,
            ),
            (
                "dsr, conntrack hit, flow cache off (services + per-CPU conntrack)",
                &nofc,
                "xdp_lb",
                tcp4(f, [198, 19, 0, 10], 80),
                tx,
            ),
            (
                "dsr, conntrack hit (per-CPU flow cache)",
                &normal,
                "xdp_lb",
                tcp4(f, [198, 19, 0, 10], 80),
                tx,
            ),
            (
                "dsr, first packet, TCP SYN (probes miss, ct4 filter empty, hash + Maglev, per-CPU slot write)",
                &miss,
                "xdp_lb",
                tcp4_syn(f, [198, 19, 0, 10], 80),
                tx,
            ),
            (
                "dsr, conntrack miss, mid-flow TCP (as the SYN, the slot write may not evict a SYN's)",
                &miss,
                "xdp_lb",
                tcp4(flows + f, [198, 19, 0, 10], 80),
                tx,
            ),
            (
                "dsr IPv6, conntrack hit, flow cache off",
                &nofc,
                "xdp_lb",
                tcp6_flags(f, VIP6, 80, false),
                tx,
            ),
            (
                "dsr IPv6, conntrack hit (flow cache)",
                &normal,
                "xdp_lb",
                tcp6_flags(f, VIP6, 80, false),
                tx,
            ),
            (
                "dsr IPv6, first packet, TCP SYN",
                &miss,
                "xdp_lb",
                tcp6_flags(f, VIP6, 80, true),
                tx,
            ),
            (
                "dsr IPv6, conntrack miss, mid-flow TCP",
                &miss,
                "xdp_lb",
                tcp6_flags(flows + f, VIP6, 80, false),
                tx,
            ),
            (
                "tunnel ipip, conntrack hit, flow cache (+ encap undo)",
                &undo,
                "xdp_lb",
                tcp4(f, [198, 19, 0, 11], 80),
                tx,
            ),
            (
                "tunnel ipip, first packet, TCP SYN (+ encap undo)",
                &undo_miss,
                "xdp_lb",
                tcp4_syn(f, [198, 19, 0, 11], 80),
                tx,
            ),
            (
                "tunnel ipip, conntrack miss, mid-flow TCP (+ encap undo)",
                &undo_miss,
                "xdp_lb",
                tcp4(flows + f, [198, 19, 0, 11], 80),
                tx,
            ),
            (
                "tunnel gue, conntrack hit, flow cache (+ encap undo)",
                &undo,
                "xdp_lb",
                tcp4(f, [198, 19, 0, 12], 80),
                tx,
            ),
            (
                "tunnel gue, first packet, TCP SYN (+ encap undo)",
                &undo_miss,
                "xdp_lb",
                tcp4_syn(f, [198, 19, 0, 12], 80),
                tx,
            ),
            (
                "tunnel gue, conntrack miss, mid-flow TCP (+ encap undo)",
                &undo_miss,
                "xdp_lb",
                tcp4(flows + f, [198, 19, 0, 12], 80),
                tx,
            ),
            (
                "tunnel gue + second chance, conntrack hit, flow cache (+ encap undo)",
                &undo,
                "xdp_lb",
                tcp4(f, [198, 19, 0, 13], 80),
                tx,
            ),
            (
                "tunnel gue + second chance, conntrack miss, mid-flow TCP (+ encap undo)",
                &undo_miss,
                "xdp_lb",
                tcp4(flows + f, [198, 19, 0, 13], 80),
                tx,
            ),
        ];
        let floor = measure(&normal, "xdp_pass", &cases[0].3, ifx, repeat, pass);
        let mut rows = cases
            .iter()
            .filter(|c| {
                c.2 == "xdp_pass"
                    || only.is_empty()
                    || only.iter().any(|o| c.0.contains(o.as_str()))
            })
            .map(|(name, p, prog, pkt, want)| {
                let ns = if *prog == "xdp_pass" {
                    floor
                } else {
                    measure(p, prog, pkt, ifx, repeat, *want)
                };
                (name.to_string(), ns, ns / floor)
            })
            .collect::<Vec<_>>();
        // nat replies, repeat 1 (the rewrite changes the frame for good): a flow's reply
        // (backend -> source:nport) through `nat_rev` (flow cache off) and from the flow
        // cache, as ratios to `XDP_PASS` measured the same way
        if only.is_empty() || only.iter().any(|o| "nat reply".contains(o.as_str())) {
            let runs = (repeat / 100).clamp(101, 20_001) as usize;
            let pass_prog = normal.program("xdp_pass").expect("prog");
            let syn = tcp4_syn(f, [198, 19, 0, 14], 80);
            let floor1 = measure_once(pass_prog, &syn, ifx, runs, pass);
            rows.push((
                "nat reply: `XDP_PASS` (floor, single runs)".to_owned(),
                floor1,
                1.0,
            ));
            let nat_nofc = nat_plane(LoadOptions {
                bench_no_fcache: true,
                ..LoadOptions::default()
            });
            let nat = nat_plane(LoadOptions::default());
            for (name, p) in [
                ("nat reply, `nat_rev` lookup (flow cache off), single runs", &nat_nofc),
                ("nat reply, flow cache (no `nat_rev` lookup), single runs", &nat),
            ] {
                let lb = p.program("xdp_lb").expect("prog");
                let o = testrun::run(lb, &syn, 1, Some(ifx)).expect("nat syn");
                assert_eq!(o.verdict, tx, "nat SYN");
                // the translated SYN: source:nport -> backend:bport; the reply swaps them
                let (src, be) = (&o.data[26..30], &o.data[30..34]);
                let (nport, bport) = (&o.data[34..36], &o.data[36..38]);
                let be4: [u8; 4] = be.try_into().expect("addr");
                let mut reply = Vec::new();
                PacketBuilder::ethernet2(
                    [0x02, 0, 0, 0, 0, be4[3]],
                    LB_MAC,
                )
                .ipv4(be4, src.try_into().expect("addr"), 64)
                .tcp(
                    u16::from_be_bytes(bport.try_into().expect("port")),
                    u16::from_be_bytes(nport.try_into().expect("port")),
                    1,
                    1024,
                )
                .ack(1)
                .write(&mut reply, b"abcdef")
                .expect("reply");
                // the first reply fills the cache (in the plane that has it)
                let o = testrun::run(lb, &reply, 1, Some(ifx)).expect("reply");
                assert_eq!(o.verdict, tx, "nat reply");
                let ns = measure_once(lb, &reply, ifx, runs, tx);
                rows.push((name.to_owned(), ns, ns / floor1));
            }
        }
        // `fulcrum decap`, repeat 1 (it strips or forwards the frame for good): the median of
        // single runs, as ratios to `XDP_PASS` measured the same way
        if only.is_empty() || only.iter().any(|o| "decap".contains(o.as_str())) {
            let runs = (repeat / 100).clamp(101, 20_001) as usize;
            let lb = normal.program("xdp_lb").expect("prog");
            let enc = |pkt: &[u8]| testrun::run(lb, pkt, 1, Some(ifx)).expect("encap").data;
            // a flow the table change moved (a secondary in its header), one that stayed
            let moved = (0..flows)
                .map(|i| enc(&tcp4(i, [198, 19, 0, 13], 80)))
                .find(|o| o[50..54] != [0, 0, 0, 0])
                .expect("a moved flow");
            let decap = fulcrum_xdp::Decap::load(6080).expect("decap");
            let dprog = decap.program().expect("prog");
            let pass_prog = normal.program("xdp_pass").expect("prog");
            let dfloor = measure_once(pass_prog, &moved, ifx, runs, pass);
            let mut syn = moved.clone();
            syn[54 + 33] |= 0x02; // SYN: delivered here whatever the sockets
            // a connection this host holds, with a secondary in its header (a connection
            // opened on the new backend after the change): the socket lookup finds it
            let st = std::process::Command::new("ip")
                .args(["addr", "add", "198.19.0.13/32", "dev", "lo"])
                .status()
                .expect("ip");
            assert!(st.success(), "ip addr add 198.19.0.13/32 dev lo");
            let l = std::net::TcpListener::bind("198.19.0.13:80").expect("listen on the VIP");
            let c = std::net::TcpStream::connect("198.19.0.13:80").expect("connect");
            let _a = l.accept().expect("accept");
            let local = c.local_addr().expect("local");
            let std::net::IpAddr::V4(lip) = local.ip() else {
                unreachable!("an IPv4 connection")
            };
            let mut mine = moved.clone();
            mine[54 + 12..54 + 16].copy_from_slice(&lip.octets());
            mine[54 + 20..54 + 22].copy_from_slice(&local.port().to_be_bytes());
            for (name, pkt, want) in [
                (
                    "decap: `XDP_PASS` (floor, single runs)".to_owned(),
                    None,
                    pass,
                ),
                (
                    "decap: GUE variant 1 (no second chance), strip".to_owned(),
                    Some(enc(&tcp4(f, [198, 19, 0, 12], 80))),
                    pass,
                ),
                (
                    "decap: second chance header, SYN, strip".to_owned(),
                    Some(syn),
                    pass,
                ),
                (
                    "decap: second chance, a local connection (bpf_skc_lookup_tcp finds it), strip".to_owned(),
                    Some(mine),
                    pass,
                ),
                (
                    "decap: second chance, no local socket (bpf_skc_lookup_tcp), forwarded to the secondary".to_owned(),
                    Some(moved.clone()),
                    tx,
                ),
            ] {
                let ns = match pkt {
                    None => dfloor,
                    Some(p) => measure_once(dprog, &p, ifx, runs, want),
                };
                rows.push((name, ns, ns / dfloor));
            }
        }
        rows
    })
    .expect("netns");
    drop(ns);

    let kernel = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut table = String::new();
    let _ = writeln!(table, "## XDP programs (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        table,
        "`cargo bench -p fulcrum-xdp --bench xdp_prog` (root). Linux {kernel}, {cpus} CPUs. Repeat {repeat}, \
         median of {ROUNDS} runs, 60-byte TCP/IPv4 frame (IPv6 rows: 74-byte TCP/IPv6), {flows} flows \
         per VIP in the per-CPU conntrack (`flows4`, `flows6`). Ratios are to a bare `XDP_PASS` in the same run. \
         \"First packet\" and \"miss\" rows run with a load-time knob that makes every packet new \
         to its CPU: the flow cache and the per-CPU conntrack are probed and their answers \
         ignored, the `ct4_filter` entry is read (empty: nothing was promoted, so the shared \
         LRU `ct4` is not probed), then the flow hash, Maglev and the per-CPU slot write (a SYN's entry; a \
         mid-flow packet's entry, which may not evict a SYN's), the flow cache fill, the \
         forward: what a real first packet costs. No row inserts into an LRU: that happens \
         once per flow whose backend a table change moves (the promotion, ~140 ns). Tunnel rows include one extra \
         `bpf_xdp_adjust_head` that undoes the encapsulation so `repeat` sees the same frame.\n"
    );
    let _ = writeln!(
        table,
        "| path | ns/packet | x `XDP_PASS` |\n| --- | ---: | ---: |"
    );
    for (name, ns, ratio) in &rows {
        let _ = writeln!(table, "| {name} | {ns:.0} | {ratio:.2} |");
    }
    print!("{table}");
    if std::env::var_os("FULCRUM_BENCH_NO_WRITE").is_none() {
        write_section(&table);
    }
}

/// Replaces the text between the markers in docs/benchmarks.md (appends the section if
/// absent); the rest of the file is kept as it is.
fn write_section(table: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/benchmarks.md");
    let begin = "<!-- xdp-bench:begin (written by `cargo bench -p fulcrum-xdp --bench xdp_prog`; edits inside are overwritten) -->";
    let (prefix, end) = ("<!-- xdp-bench:begin", "<!-- xdp-bench:end -->");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let section = format!("{begin}\n{table}{end}");
    let new = match (old.find(prefix), old.find(end)) {
        (Some(a), Some(b)) if b > a => format!("{}{section}{}", &old[..a], &old[b + end.len()..]),
        _ => format!(
            "{}{}{section}\n",
            old,
            if old.ends_with("\n\n") {
                ""
            } else if old.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            }
        ),
    };
    if let Err(e) = std::fs::write(path, new) {
        eprintln!("cannot write {path}: {e}");
    } else {
        eprintln!("updated {path}");
    }
}
