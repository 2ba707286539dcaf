//! End to end through `forward = "nat"` (and fragments through `dsr`), in network namespaces
//! this test creates (198.18.0.0/15 and 2001:2::/48 only; deleted at the end, also on
//! failure):
//!
//! ```text
//!   client (198.18.0.1) --+
//!   lb     (198.18.0.2) --+-- br0 (namespace "sw") -- b1, b2, b3 (198.18.0.11..13)
//! ```
//! The backends are unmodified: no VIP, no decap, a plain TCP server on port 8080 (the VIP
//! is port 80: nat rewrites it), their default route via the lb. 1,000 real TCP connections
//! over IPv4 (and some over IPv6) go through nat; the backends see the lb as the peer; the
//! allocated ports come back after the connections close. A 4,000-byte UDP datagram
//! (fragmented by the client's kernel) reaches a `dsr` backend whole. Needs root, `ip` and
//! `ethtool`: skips with a message otherwise, fails when `FULCRUM_REQUIRE_ALL=1`.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]
#![allow(clippy::pedantic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulcrum_xdp::testing::in_netns;
use netns::{line, Backends, Topology};

mod netns;

/// A TCP server answering "NAME PEER\n", then echoing until the client closes.
fn tcp_server(t: &Topology, b: &str) {
    let name = b.to_owned();
    let l = in_netns(&t.ns(b), || TcpListener::bind(("::", 8080)).expect("bind")).expect("netns");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let name = name.clone();
            std::thread::spawn(move || {
                let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                let _ = s.write_all(format!("{name} {peer}\n").as_bytes());
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A UDP server recording the sizes of the datagrams it receives.
fn udp_server(t: &Topology, b: &str, got: Arc<Mutex<Vec<(String, usize)>>>) {
    let name = b.to_owned();
    let s = in_netns(&t.ns(b), || {
        UdpSocket::bind("0.0.0.0:9000").expect("bind udp")
    })
    .expect("netns");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = s.recv(&mut buf) {
            got.lock().expect("lock").push((name.clone(), n));
        }
    });
}

fn metric(t: &Topology, name: &str) -> Option<u64> {
    let text = in_netns(&t.ns("lb"), || {
        let mut s = TcpStream::connect("127.0.0.1:9090").ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .ok()
    .flatten()?;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:9090"

[xdp]
interface = "eth0"
mode = "native"

[[service]]
name = "nat4"
listen = "198.19.0.10:80"
protocol = "tcp"
pool = "web"
forward = "nat"
source = "198.18.0.2"

[[service]]
name = "nat6"
listen = "[2001:2:0:1::10]:80"
protocol = "tcp"
pool = "web6"
forward = "nat"
source = "2001:2::2"

[[service]]
name = "frag"
listen = "198.19.0.20:9000"
protocol = "udp"
pool = "udp"
forward = "dsr"

[[pool]]
name = "web"
scheduler = "maglev"
hash_key = "five_tuple"
[pool.health]
check = "tcp"
interval = "300ms"
timeout = "200ms"
rise = 1
fall = 2
[[pool.backend]]
address = "198.18.0.11:8080"
[[pool.backend]]
address = "198.18.0.12:8080"
[[pool.backend]]
address = "198.18.0.13:8080"

[[pool]]
name = "web6"
scheduler = "maglev"
hash_key = "five_tuple"
[pool.health]
check = "tcp"
interval = "300ms"
timeout = "200ms"
rise = 1
fall = 2
[[pool.backend]]
address = "[2001:2::11]:8080"
[[pool.backend]]
address = "[2001:2::12]:8080"
[[pool.backend]]
address = "[2001:2::13]:8080"

[[pool]]
name = "udp"
scheduler = "maglev"
hash_key = "five_tuple"
[pool.health]
check = "none"
[[pool.backend]]
address = "198.18.0.11:9000"
[[pool.backend]]
address = "198.18.0.12:9000"
[[pool.backend]]
address = "198.18.0.13:9000"
"#;

#[test]
fn xdp_nat_and_fragments_end_to_end() {
    if !netns::prerequisites("xdp_nat_and_fragments_end_to_end") {
        return;
    }
    let started = Instant::now();
    let mut t = Topology::new("n", Backends::DefaultRouteViaLb);
    let dir = std::env::temp_dir().join(format!("fulcrum-{}", t.prefix));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let got = Arc::new(Mutex::new(Vec::new()));
    for b in ["b1", "b2", "b3"] {
        tcp_server(&t, b);
        udp_server(&t, b, Arc::clone(&got));
    }
    let cfg = dir.join("lb.toml");
    std::fs::write(&cfg, CONFIG).expect("config");
    let log = dir.join("lb.log");
    let logf = std::fs::File::create(&log).expect("log");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.ns("lb"),
            env!("CARGO_BIN_EXE_fulcrum"),
            "run",
            "-c",
        ])
        .arg(&cfg)
        .args(["--workers", "1"])
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("log"))
        .stderr(logf)
        .spawn()
        .expect("spawn fulcrum run");
    t.children.push(child);
    let lb_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // wait until nat answers (health checks up)
    let vip4: SocketAddr = "198.19.0.10:80".parse().expect("vip");
    let vip6: SocketAddr = "[2001:2:0:1::10]:80".parse().expect("vip6");
    let connect = move |t: &Topology, vip: SocketAddr, n: usize| -> Result<Vec<String>, String> {
        in_netns(&t.ns("c"), move || {
            let mut names = Vec::new();
            for _ in 0..n {
                let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .map_err(|e| e.to_string())?;
                names.push(line(&mut s)?);
                // closing: FIN both ways (the server ends on EOF)
            }
            Ok(names)
        })
        .map_err(|e| e.to_string())?
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while connect(&t, vip4, 1).is_err() || connect(&t, vip6, 1).is_err() {
        assert!(
            Instant::now() < deadline,
            "nat never answered; lb log:\n{}",
            lb_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 1,000 connections over IPv4 and 200 over IPv6, each a full open/answer/close
    let t0 = Instant::now();
    let names4 =
        connect(&t, vip4, 1000).unwrap_or_else(|e| panic!("nat v4: {e}; lb log:\n{}", lb_log()));
    let names6 =
        connect(&t, vip6, 200).unwrap_or_else(|e| panic!("nat v6: {e}; lb log:\n{}", lb_log()));
    eprintln!("nat: 1200 connections in {:?}", t0.elapsed());
    let mut per = std::collections::BTreeMap::new();
    for n in names4.iter().chain(names6.iter()) {
        let mut it = n.split(' ');
        let (b, peer) = (it.next().expect("name"), it.next().expect("peer"));
        *per.entry(b.to_owned()).or_insert(0) += 1;
        // the backend sees the load balancer (its source address and an allocated port)
        let peer: SocketAddr = peer.parse().expect("peer");
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v) => v
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v), std::net::IpAddr::V4),
            v => v,
        };
        assert!(
            ip == "198.18.0.2".parse::<std::net::IpAddr>().expect("ip")
                || ip == "2001:2::2".parse::<std::net::IpAddr>().expect("ip"),
            "backend saw {peer}"
        );
        assert!(
            (20000..=32767).contains(&peer.port()),
            "allocated port {peer}"
        );
    }
    eprintln!("nat: backends {per:?}");
    assert_eq!(per.len(), 3, "every backend served: {per:?}");

    // open connections hold ports; after they close, the ports come back
    let held: Vec<TcpStream> = in_netns(&t.ns("c"), move || {
        (0..100)
            .map(|_| {
                let mut s =
                    TcpStream::connect_timeout(&vip4, Duration::from_secs(2)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                line(&mut s).expect("answer");
                s
            })
            .collect()
    })
    .expect("netns");
    std::thread::sleep(Duration::from_millis(1300));
    let during = metric(&t, "fulcrum_xdp_nat_flows").expect("nat flows metric");
    assert!(during >= 100, "100 open connections hold ports: {during}");
    for (i, s) in held.iter().enumerate().take(5) {
        let mut s = s;
        s.write_all(format!("ping {i}\n").as_bytes())
            .expect("write");
        let mut st = s.try_clone().expect("clone");
        assert_eq!(line(&mut st).expect("echo"), format!("ping {i}"));
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let n = metric(&t, "fulcrum_xdp_nat_flows").unwrap_or(u64::MAX);
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nat ports not released after close: {n} flows left"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let full = metric(
        &t,
        "fulcrum_xdp_packets_total{service=\"nat4\",action=\"nat_full\"}",
    )
    .unwrap_or(0);
    assert_eq!(full, 0, "no flow refused");

    // a 4,000-byte UDP datagram, fragmented by the client's kernel, reaches one backend whole
    in_netns(&t.ns("c"), || {
        for i in 0..10u16 {
            let s = UdpSocket::bind(("0.0.0.0", 41000 + i)).expect("bind");
            s.send_to(&vec![i as u8; 4000], "198.19.0.20:9000")
                .expect("send");
        }
    })
    .expect("netns");
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.lock().expect("lock").len() < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = got.lock().expect("lock").clone();
    eprintln!("fragments: {got:?}");
    assert_eq!(got.len(), 10, "every datagram arrived");
    assert!(
        got.iter().all(|(_, n)| *n == 4000),
        "whole datagrams: {got:?}"
    );
    let frags = metric(
        &t,
        "fulcrum_xdp_packets_total{service=\"frag\",action=\"frag\"}",
    )
    .unwrap_or(0);
    assert_eq!(frags, 30, "3 fragments per datagram forwarded");
    eprintln!("xdp_nat_and_fragments_end_to_end: {:?}", started.elapsed());
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}
