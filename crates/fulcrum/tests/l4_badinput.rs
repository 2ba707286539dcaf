//! Misbehaving clients and backends: silent clients, resets mid-stream, a backend that never
//! reads, a flood past `max_connections`. Fulcrum keeps serving, does not panic and does not
//! leak file descriptors.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::time::{Duration, Instant};

use common::{
    admin_toml, connect, echo_bulk, echo_once, free_addr, pool_toml, probe_refused, round_trip,
    service_toml, Behaviour, Fulcrum, Refusal, TcpBackend,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDLE_MS: u64 = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_and_backends_do_not_hurt_relay_auto() {
    bad_inputs("auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_and_backends_do_not_hurt_relay_copy() {
    bad_inputs("copy").await;
}

/// splice holds two pipes per connection: the descriptor-leak check matters most here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_and_backends_do_not_hurt_relay_splice() {
    bad_inputs("splice").await;
}

async fn bad_inputs(relay: &str) {
    let echo = TcpBackend::start(Behaviour::Echo).await;
    let flood_b = TcpBackend::start(Behaviour::Echo).await;
    let mut stall_b = TcpBackend::start(Behaviour::NeverRead).await;
    let (admin, l_echo, l_flood, l_stall) = (free_addr(), free_addr(), free_addr(), free_addr());
    let idle = format!("idle_timeout = \"{IDLE_MS}ms\"");
    let cfg = format!(
        "{}{}{}{}{}{}{}",
        admin_toml(admin),
        service_toml("echo", l_echo, "tcp", "pe", &idle),
        service_toml(
            "flood",
            l_flood,
            "tcp",
            "pf",
            &format!("{idle}\nmax_connections = 20")
        ),
        service_toml("stall", l_stall, "tcp", "ps", &idle),
        pool_toml("pe", "rr", "", &[(echo.addr, 1)]),
        pool_toml("pf", "rr", "", &[(flood_b.addr, 1)]),
        pool_toml("ps", "rr", "", &[(stall_b.addr, 1)]),
    );
    let f = Fulcrum::start(
        "badinput",
        admin,
        &cfg,
        &["--workers", "2", "--relay", relay],
    )
    .await;
    // Warm up every path once so lazily opened descriptors are counted in the baseline.
    echo_once(l_echo, b"warm").await.unwrap();
    echo_once(l_flood, b"warm").await.unwrap();
    let _ = f.metrics().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_before = f.fd_count();
    let listing_before = f.fd_listing();
    assert!(fds_before > 0, "cannot read /proc/{}/fd", f.pid);
    let serving = |what: &'static str| async move {
        echo_once(l_echo, what.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("fulcrum stopped serving after {what}: {e}"));
    };

    // 1. A client that connects and sends nothing: others are served meanwhile, and the
    //    silent one is closed by the idle timeout.
    let mut silent = connect(l_echo).await.unwrap();
    serving("a silent client connected").await;
    let t = Instant::now();
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_millis(IDLE_MS + 2000), silent.read(&mut b)).await;
    match r {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("silent client received {n} bytes"),
        Err(tokio::time::error::Elapsed { .. }) => panic!(
            "silent client not closed {:?} after connecting; idle_timeout is {IDLE_MS}ms",
            t.elapsed()
        ),
    }
    eprintln!("silent client closed after {:?}", t.elapsed());
    drop(silent);

    // 2. Clients that reset mid-stream (SO_LINGER 0, then drop) while data flows both ways.
    for i in 0..20 {
        let mut s = connect(l_echo).await.unwrap();
        round_trip(&mut s, format!("reset {i}").as_bytes())
            .await
            .unwrap();
        s.write_all(&vec![b'r'; 200_000]).await.unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    serving("20 clients reset mid-stream").await;

    // 3. A backend that accepts and never reads: the client writes until blocked, then closes.
    for _ in 0..3 {
        let mut s = connect(l_stall).await.unwrap();
        let chunk = vec![b's'; 64 * 1024];
        let mut sent = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_millis(300), s.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                Ok(Err(e)) => panic!("write to the stalled service failed after {sent} bytes: {e}"),
                Err(_) => break, // blocked: all buffers on the way are full
            }
            assert!(
                sent < 512 * 1024 * 1024,
                "never blocked after {sent} bytes: something buffers without bound"
            );
        }
        eprintln!("stalled path blocked after {sent} bytes");
        drop(s);
    }
    serving("clients of a never-reading backend gave up").await;

    // 4. A flood past max_connections = 20: 20 held connections work, the extra 15 are refused
    //    quickly, the 20 are unharmed.
    let mut held = Vec::new();
    for i in 0..20 {
        let mut s = connect(l_flood).await.unwrap();
        round_trip(&mut s, format!("held {i}").as_bytes())
            .await
            .unwrap_or_else(|e| {
                panic!("connection {i} of 20 (within max_connections) failed: {e}")
            });
        held.push(s);
    }
    let mut probes = Vec::new();
    for _ in 0..15 {
        probes.push(tokio::spawn(probe_refused(l_flood, Duration::from_secs(1))));
    }
    let mut not_refused = Vec::new();
    for p in probes {
        if let Refusal::NotRefused(what) = p.await.unwrap() {
            not_refused.push(what);
        }
    }
    assert!(
        not_refused.is_empty(),
        "{} of 15 connections past max_connections = 20 were not refused within 1s: {not_refused:?}",
        not_refused.len()
    );
    for (i, s) in held.iter_mut().enumerate() {
        round_trip(s, format!("still {i}").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("held connection {i} harmed by the flood: {e}"));
    }
    serving("a flood past max_connections").await;
    drop(held);
    // Once the held ones are gone there is room again.
    let ok = common::eventually(Duration::from_secs(2), || async {
        echo_once(l_flood, b"room again").await.is_ok()
    })
    .await;
    assert!(
        ok,
        "flood service does not accept again after its connections closed"
    );
    let data = std::sync::Arc::new(vec![7u8; 256 * 1024]);
    echo_bulk(l_echo, data).await.unwrap();

    // Everything is gone; after the idle timeout no descriptor may be left behind.
    stall_b.kill();
    let deadline = Instant::now() + Duration::from_millis(IDLE_MS * 2 + 3000);
    let mut fds_after;
    loop {
        fds_after = f.fd_count();
        if fds_after <= fds_before + 2 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("relay {relay}: fds: {fds_before} before, {fds_after} after");
    assert!(f.try_wait_alive(), "fulcrum died\n{}", f.stderr_tail(30));
    assert!(
        fds_after <= fds_before + 2,
        "file descriptors leaked: {fds_before} before, {fds_after} after\nbefore:\n{listing_before}\nafter:\n{}",
        f.fd_listing()
    );
    serving("everything").await;
    f.assert_no_panic();
}

trait Alive {
    fn try_wait_alive(&self) -> bool;
}

impl Alive for Fulcrum {
    fn try_wait_alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}/fd", self.pid)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .unwrap_or_default()
                .contains(") Z ")
    }
}
