//! End-to-end UDP proxying: flow stickiness, replies from the service address, rr spread
//! of client flows.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{admin_toml, free_addr, pool_toml, service_toml, weighted, Fulcrum, UdpBackend};
use tokio::net::UdpSocket;

/// Sends `payload` and waits (1 s) for the reply; returns (backend name, reply source).
async fn ask(
    sock: &UdpSocket,
    to: SocketAddr,
    payload: &str,
) -> Result<(String, SocketAddr), String> {
    sock.send_to(payload.as_bytes(), to)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 65_536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf))
        .await
        .map_err(|_| format!("no reply to {payload:?} within 1s"))?
        .map_err(|e| format!("recv: {e}"))?;
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    let (name, echoed) = reply
        .split_once('|')
        .ok_or_else(|| format!("malformed reply {reply:?}"))?;
    if echoed != payload {
        return Err(format!("reply payload {echoed:?} != sent {payload:?}"));
    }
    Ok((name.to_owned(), from))
}

/// Asks with up to 3 tries (UDP may drop; a lost datagram is not what we test here).
async fn ask_retry(sock: &UdpSocket, to: SocketAddr, payload: &str) -> (String, SocketAddr) {
    let mut last = String::new();
    for _ in 0..3 {
        match ask(sock, to, payload).await {
            Ok(r) => return r,
            Err(e) => {
                eprintln!("udp retry: {e}");
                last = e;
            }
        }
    }
    panic!("udp request {payload:?} failed 3 times: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_sticky_replies_from_service_rr_spread() {
    let bs = [
        UdpBackend::start("b0").await,
        UdpBackend::start("b1").await,
        UdpBackend::start("b2").await,
    ];
    let (admin, listen) = (free_addr(), free_addr());
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("dns", listen, "udp", "p", "idle_timeout = \"30s\""),
        pool_toml("p", "rr", "", &weighted(&addrs))
    );
    let f = Fulcrum::start("udp", admin, &cfg, &[]).await;

    // 6 client sockets, one after the other: rr gives each backend exactly 2 flows.
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let mut owner: Vec<String> = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (name, from) = ask_retry(c, listen, &format!("client{i}-first")).await;
        assert_eq!(
            from, listen,
            "reply to client {i} came from {from}, not the service address {listen}"
        );
        owner.push(name);
    }
    // Stickiness: many more datagrams per client, interleaved across clients, each always
    // answered by that client's first backend, always from the service address.
    for round in 0..10 {
        for (i, c) in clients.iter().enumerate() {
            let (name, from) = ask_retry(c, listen, &format!("client{i}-round{round}")).await;
            assert_eq!(from, listen, "reply source");
            assert_eq!(
                name, owner[i],
                "client {i}'s datagram (round {round}) went to {name}, its flow is on {}",
                owner[i]
            );
        }
    }
    // Bigger payloads pass intact too.
    let big = "z".repeat(8000);
    let (name, _) = ask_retry(&clients[0], listen, &big).await;
    assert_eq!(name, owner[0]);

    let mut per_backend: HashMap<&str, usize> = HashMap::new();
    for o in &owner {
        *per_backend.entry(o.as_str()).or_default() += 1;
    }
    for b in &bs {
        assert_eq!(
            per_backend.get(b.name.as_str()).copied().unwrap_or(0),
            2,
            "rr over 6 sequential client flows should give each of 3 backends 2: {owner:?}"
        );
    }
    f.assert_no_panic();
}

/// The very first datagram of a new flow is forwarded and answered: on an idle loopback
/// proxy nothing should be lost, and a client that sends one request (DNS-like) and waits
/// must not depend on retransmission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_first_datagram_of_each_flow_is_answered() {
    let bs = [UdpBackend::start("b0").await, UdpBackend::start("b1").await];
    let (admin, listen) = (free_addr(), free_addr());
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("dns", listen, "udp", "p", ""),
        pool_toml("p", "rr", "", &weighted(&addrs))
    );
    let f = Fulcrum::start("udp-first", admin, &cfg, &[]).await;
    let mut lost = Vec::new();
    for i in 0..5 {
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Err(e) = ask(&c, listen, &format!("only-datagram-{i}")).await {
            lost.push(e);
        }
    }
    let received: usize = bs
        .iter()
        .map(|b| b.received.load(std::sync::atomic::Ordering::SeqCst))
        .sum();
    assert!(
        lost.is_empty(),
        "{} of 5 new flows got no answer to their first datagram ({received} datagrams reached the backends): {lost:?}",
        lost.len()
    );
    f.assert_no_panic();
}

/// The service's open flows (`active_connections` of `GET /api/v1/services`).
async fn flows_of(f: &Fulcrum, service: &str) -> u64 {
    let (st, body) = f.get("/api/v1/services").await;
    assert_eq!(st, 200, "GET /api/v1/services: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .and_then(|s| s["active_connections"].as_u64())
        .unwrap_or_else(|| panic!("no service {service} in {body}"))
}

/// A flood of datagrams from 1,500 source addresses (spoofable: each is a new flow and a
/// new socket in the proxy) against `max_flows = 100` on two workers: the flow count never
/// passes the bound and ends at it, the proxy's descriptors stay bounded, the admin API keeps
/// answering, a client that arrives after the flood is served (the least recently active
/// flow gives way), and the full-table warnings come at most once a second each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flood_of_sources_stays_within_max_flows() {
    const MAX_FLOWS: u64 = 100;
    const SOURCES: usize = 1500;
    let b = UdpBackend::start("b0").await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml(
            "dns",
            listen,
            "udp",
            "p",
            &format!("idle_timeout = \"60s\"\nmax_flows = {MAX_FLOWS}")
        ),
        pool_toml("p", "rr", "", &weighted(&[b.addr]))
    );
    let f = Fulcrum::start("udp-flood", admin, &cfg, &["--workers", "2"]).await;
    let fds_before = f.fd_count();
    let started = std::time::Instant::now();

    // Sources 127.1.x.y, a datagram each, sent in the background.
    let flood = tokio::task::spawn_blocking(move || {
        let mut sent = 0;
        for i in 0..SOURCES {
            let ip = std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
            let Ok(s) = std::net::UdpSocket::bind((ip, 0)) else {
                continue;
            };
            if s.send_to(format!("flood-{i}").as_bytes(), listen).is_ok() {
                sent += 1;
            }
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        sent
    });
    let mut peak = 0;
    while !flood.is_finished() {
        let (st, _) = f.get("/healthz").await;
        assert_eq!(st, 200, "/healthz during the flood");
        peak = peak.max(flows_of(&f, "dns").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = flood.await.unwrap();
    assert!(
        sent > SOURCES / 2,
        "only {sent} of {SOURCES} flood datagrams sent"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = flows_of(&f, "dns").await;
    peak = peak.max(after);
    eprintln!("flood: {sent} sources, peak {peak} flows, {after} after");
    assert!(
        peak <= MAX_FLOWS,
        "{peak} flows open with max_flows = {MAX_FLOWS}"
    );
    assert_eq!(
        after, MAX_FLOWS,
        "the flood should fill the table to its bound"
    );
    let fds = f.fd_count();
    assert!(
        fds <= fds_before + MAX_FLOWS as usize + 20,
        "fulcrum holds {fds} descriptors ({fds_before} before the flood, max_flows = {MAX_FLOWS})"
    );

    // A new client after the flood gets its answer: a flood flow gave way.
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (name, from) = ask_retry(&c, listen, "after-the-flood").await;
    assert_eq!((name.as_str(), from), ("b0", listen));
    assert!(flows_of(&f, "dns").await <= MAX_FLOWS);

    // Warnings: at most one line a second per kind, not one per flow.
    let secs = started.elapsed().as_secs() + 2;
    let lines = f
        .stderr()
        .lines()
        .filter(|l| l.contains("udp flows full"))
        .count();
    assert!(
        lines >= 1 && lines as u64 <= 2 * secs,
        "{lines} 'udp flows full' warning lines in {secs} s"
    );
    f.assert_no_panic();
}
