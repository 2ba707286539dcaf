//! The XDP program under `BPF_PROG_TEST_RUN` with arbitrary frames. A lab network namespace
//! (veth `v0` with the LB's addresses and permanent neighbours for the backends, as in
//! crates/xdp/tests) holds the loaded program and its services; one thread lives in it and
//! runs the frames sent to it. The namespace's name is removed as soon as that thread is
//! in, so it goes away with the process however it ends.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};

use fulcrum_core::config::TunnelKind;
use fulcrum_core::model::{Backend, HashKey, PrimeTableSize, Proto};
use fulcrum_xdp::testrun::{self, Outcome, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use fulcrum_xdp::{LoadOptions, Mode, XdpPlane, XdpService};

pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const BACKENDS4: [&str; 2] = ["198.18.0.11", "198.18.0.12"];
const BACKENDS6: [&str; 2] = ["2001:2::11", "2001:2::12"];

/// The services the lab's program serves: DSR, IPIP and GUE tunnels, IPv4 and IPv6.
fn services() -> Vec<XdpService> {
    let svc = |name: &str, vip: &str, proto, mode, addrs: &[&str]| XdpService {
        name: name.into(),
        vip: vip.parse().expect("vip"),
        proto,
        mode,
        hash_key: HashKey::FiveTuple,
        pool: format!("pool-{name}"),
        backends: addrs
            .iter()
            .map(|a| {
                let port = vip.parse::<SocketAddr>().expect("vip").port();
                Backend::new(SocketAddr::new(a.parse().expect("ip"), port), 1)
            })
            .collect(),
        table_size: PrimeTableSize::new(251).expect("prime"),
    };
    // Second chance as configured by default: on for GUE (ignored for IPIP).
    let tunnel = |kind, src: &str| Mode::Tunnel {
        kind,
        source: Some(src.parse().expect("ip")),
        second_chance: true,
    };
    vec![
        svc("dsr4", "198.19.0.10:80", Proto::Tcp, Mode::Dsr, &BACKENDS4),
        svc(
            "ipip4",
            "198.19.0.11:53",
            Proto::Udp,
            tunnel(TunnelKind::Ipip, "198.18.0.2"),
            &BACKENDS4,
        ),
        svc(
            "dsr6",
            "[2001:2:0:1::10]:443",
            Proto::Tcp,
            Mode::Dsr,
            &BACKENDS6,
        ),
        svc(
            "gue6",
            "[2001:2:0:1::11]:53",
            Proto::Udp,
            tunnel(TunnelKind::Gue, "2001:2::2"),
            &BACKENDS6,
        ),
        svc(
            "gue4",
            "198.19.0.12:443",
            Proto::Tcp,
            tunnel(TunnelKind::Gue, "198.18.0.2"),
            &BACKENDS4,
        ),
    ]
}

type Job = (Vec<u8>, SyncSender<std::io::Result<Outcome>>);

/// The lab: frames go to its thread.
pub struct Lab {
    tx: Mutex<Sender<Job>>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn setup(ns: &str) -> Result<(), String> {
    let _ = ip(&["netns", "del", ns]);
    ip(&["netns", "add", ns])?;
    let n = |args: &[&str]| {
        let mut v = vec!["-n", ns];
        v.extend_from_slice(args);
        ip(&v)
    };
    n(&["link", "set", "lo", "up"])?;
    n(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
    n(&["link", "set", "v0", "address", "02:00:00:00:00:02"])?;
    n(&["link", "set", "v0", "up"])?;
    n(&["link", "set", "v1", "up"])?;
    n(&["addr", "add", "198.18.0.2/24", "dev", "v0"])?;
    n(&["-6", "addr", "add", "2001:2::2/64", "dev", "v0", "nodad"])?;
    for sysctl in [
        "net.ipv4.conf.all.forwarding=1",
        "net.ipv4.conf.v0.forwarding=1",
        "net.ipv6.conf.all.forwarding=1",
    ] {
        ip(&["netns", "exec", ns, "sysctl", "-qw", sysctl])?;
    }
    for b in BACKENDS4.iter().chain(BACKENDS6.iter()) {
        let last = match b.parse::<IpAddr>().map_err(|e| e.to_string())? {
            IpAddr::V4(v) => v.octets()[3],
            IpAddr::V6(v) => v.octets()[15],
        };
        let mac = format!("02:00:00:00:00:{last:02x}");
        n(&[
            "neigh",
            "add",
            b,
            "lladdr",
            &mac,
            "dev",
            "v0",
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

impl Lab {
    /// Sets the lab up (root, `ip` from iproute2).
    pub fn new() -> Result<Self, String> {
        let ns = format!("fulcrum-fuzz-{}", std::process::id());
        setup(&ns)?;
        let (tx, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(1);
        let name = ns.clone();
        std::thread::spawn(move || {
            let r = fulcrum_xdp::testing::in_netns(&name, move || {
                let mut plane = match XdpPlane::load(LoadOptions::default()) {
                    Ok(p) => p,
                    Err(e) => return ready_tx.send(Err(format!("load the XDP program: {e}"))),
                };
                if let Err(e) = plane.update(&services()) {
                    return ready_tx.send(Err(format!("XDP maps: {e}")));
                }
                let ifindex = match fulcrum_xdp::testing::ifindex("v0") {
                    Ok(i) => i,
                    Err(e) => return ready_tx.send(Err(format!("v0: {e}"))),
                };
                let Ok(prog) = plane.program("xdp_lb") else {
                    return ready_tx.send(Err("no xdp_lb program".into()));
                };
                let _ = ready_tx.send(Ok(()));
                for (frame, reply) in rx {
                    let _ = reply.send(testrun::run(prog, &frame, 1, Some(ifindex)));
                }
                Ok(())
            });
            if let Err(e) = r {
                eprintln!("xdp lab thread: {e}");
            }
        });
        let ready = ready_rx
            .recv()
            .map_err(|_| "the lab thread ended".to_owned())
            .and_then(|r| r);
        // The thread is in the namespace (or gave up): its name is no longer needed.
        let _ = ip(&["netns", "del", &ns]);
        ready?;
        Ok(Lab { tx: Mutex::new(tx) })
    }

    /// Runs the program on `frame` once.
    pub fn run(&self, frame: &[u8]) -> std::io::Result<Outcome> {
        let (reply, answer) = sync_channel(1);
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send((frame.to_vec(), reply))
            .expect("lab thread");
        answer.recv().expect("lab thread answers")
    }
}

/// The process's lab, set up at first use.
pub fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| Lab::new().unwrap_or_else(|e| panic!("xdp lab: {e}")))
}

/// Runs the program on `frame` and checks its verdict and output frame: never aborted; a
/// frame passed or dropped is unchanged; a frame sent back out comes from the LB's MAC and
/// is either the same packet to a backend's MAC (DSR) or a well-formed packet whose IPv4
/// header checksums and whose IP lengths match the frame (tunnels, ICMP answers).
pub fn xdp(frame: &[u8]) {
    match lab().run(frame) {
        Ok(out) => check(frame, &out),
        // The kernel takes no frame shorter than an Ethernet header, nor one larger than a
        // page's room for packet data.
        Err(e) if frame.len() < 14 || frame.len() > 3000 => {
            assert_eq!(e.raw_os_error(), Some(22), "{e}");
        }
        Err(e) => panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", frame.len()),
    }
}

pub fn check(frame: &[u8], out: &Outcome) {
    let show = || format!("in {frame:02x?}\nout {:02x?}", out.data);
    match out.verdict {
        XDP_PASS | XDP_DROP => {
            assert_eq!(
                out.data,
                frame,
                "verdict {} changed the frame\n{}",
                out.verdict,
                show()
            );
        }
        XDP_TX | XDP_REDIRECT => {
            assert!(out.data.len() >= 14, "short frame sent\n{}", show());
            assert_eq!(out.data[6..12], LB_MAC, "source MAC\n{}", show());
            if out.data.len() == frame.len() && out.data[12..] == frame[12..] {
                assert_eq!(
                    &out.data[0..5],
                    &[2, 0, 0, 0, 0],
                    "DSR to a backend's MAC\n{}",
                    show()
                );
                // 198.18.0.11 and .12 (decimal), 2001:2::11 and ::12 (hex)
                assert!(
                    [11, 12, 0x11, 0x12].contains(&out.data[5]),
                    "DSR to a backend's MAC\n{}",
                    show()
                );
                return;
            }
            let p = etherparse::SlicedPacket::from_ethernet(&out.data)
                .unwrap_or_else(|e| panic!("frame sent does not parse: {e}\n{}", show()));
            match p.net {
                Some(etherparse::NetSlice::Ipv4(v4)) => {
                    let h = v4.header().to_header();
                    assert_eq!(
                        h.calc_header_checksum(),
                        h.header_checksum,
                        "IPv4 header checksum\n{}",
                        show()
                    );
                }
                Some(etherparse::NetSlice::Ipv6(_)) => {}
                n => panic!("frame sent is not IP: {n:?}\n{}", show()),
            }
        }
        v => panic!("verdict {v}\n{}", show()),
    }
}
