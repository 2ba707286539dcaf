//! Active health checks, passive ejection and weight 0, seen from outside: the admin API's
//! backend states and which backends real connections reach.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    admin_toml, echo_once, free_addr, pool_toml, service_toml, Behaviour, Fulcrum, TcpBackend,
};

const HEALTH: &str = "[pool.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n";
const INTERVAL_MS: u64 = 200;

async fn connections(listen: SocketAddr, n: usize, f: &Fulcrum) {
    for i in 0..n {
        echo_once(listen, format!("c{i}").as_bytes())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "client connection {i} failed: {e}\nstderr tail:\n{}",
                    f.stderr_tail(20)
                )
            });
    }
}

/// A backend whose listener stops is marked down within fall x interval + one interval
/// (+ slack) and receives nothing while down; once it listens again it comes back up after
/// `rise` successes and gets its share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_goes_down_then_up() {
    let mut bs = vec![
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
    ];
    let (admin, listen) = (free_addr(), free_addr());
    let addrs: Vec<_> = bs.iter().map(|b| (b.addr, 1)).collect();
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("svc", listen, "tcp", "p", ""),
        pool_toml("p", "rr", HEALTH, &addrs)
    );
    let f = Fulcrum::start("health-kill", admin, &cfg, &[]).await;
    for b in &bs {
        f.wait_state("p", b.addr, "up", Duration::from_secs(3))
            .await;
    }
    connections(listen, 6, &f).await;
    assert!(
        bs.iter().all(|b| b.served() == 2),
        "warm-up spread {:?}",
        bs.iter().map(TcpBackend::served).collect::<Vec<_>>()
    );

    // Kill backend 0's listener.
    let victim = bs[0].addr;
    bs[0].stop_listening();
    let t0 = Instant::now();
    let took = f
        .wait_state("p", victim, "down", Duration::from_secs(5))
        .await;
    let bound = Duration::from_millis(2 * INTERVAL_MS + INTERVAL_MS + 300);
    assert!(
        took <= bound,
        "marked down after {took:?}; expected within fall x interval + interval + slack = {bound:?}"
    );
    eprintln!("down after {:?}", t0.elapsed());

    // While it is down, clients still all succeed (via the other two).
    let others_before: usize = bs[1..].iter().map(TcpBackend::served).sum();
    connections(listen, 30, &f).await;
    let others_after: usize = bs[1..].iter().map(TcpBackend::served).sum();
    assert_eq!(others_after - others_before, 30);

    // Bring it back: the very first moments after it listens again, it is still down (rise
    // = 2 needs two successful checks), and no client connection may reach it.
    let served_before = bs[0].served();
    let total_before = f.backend("p", victim).await["total_connections"].as_u64();
    bs[0].restart().await;
    let t1 = Instant::now();
    let mut quick = Vec::new();
    for i in 0..10 {
        quick.push(tokio::spawn(echo_once(
            listen,
            format!("q{i}").into_bytes().leak(),
        )));
    }
    for q in quick {
        q.await.unwrap().expect("connection right after restart");
    }
    let quick_elapsed = t1.elapsed();
    if quick_elapsed < Duration::from_millis(INTERVAL_MS) {
        assert_eq!(
            bs[0].served(),
            served_before,
            "a down backend (not yet risen) received connections ({quick_elapsed:?} after restart)"
        );
    } else {
        eprintln!("skipping the still-down check: the 10 connections took {quick_elapsed:?}");
    }

    let took = f
        .wait_state("p", victim, "up", Duration::from_secs(5))
        .await;
    let since = t1.elapsed();
    let bound = Duration::from_millis(2 * INTERVAL_MS + INTERVAL_MS + 300);
    assert!(since <= bound, "back up {since:?} after restart (polled {took:?}); expected within rise x interval + interval + slack = {bound:?}");
    // It gets its share again.
    let before = bs[0].served();
    connections(listen, 30, &f).await;
    let got = bs[0].served() - before;
    assert!(
        (9..=11).contains(&got),
        "restored backend got {got} of 30 rr connections"
    );
    let total_after = f.backend("p", victim).await["total_connections"].as_u64();
    assert!(
        total_after > total_before,
        "total_connections did not grow: {total_before:?} -> {total_after:?}"
    );
    f.assert_no_panic();
}

/// Without active checks, a backend whose port refuses connections is ejected after 3
/// consecutive connect failures; every client still succeeds through the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_after_connect_failures() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let dead = free_addr(); // nothing listens here: connect is refused
    let (admin, listen) = (free_addr(), free_addr());
    let outlier = "[pool.outlier]\nconsecutive_failures = 3\nejection = \"30s\"\n";
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("svc", listen, "tcp", "p", ""),
        pool_toml("p", "rr", outlier, &[(b1.addr, 1), (dead, 1), (b2.addr, 1)])
    );
    let f = Fulcrum::start("health-eject", admin, &cfg, &[]).await;
    let st = f.backend_state("p", dead).await;
    assert_eq!(
        st, "up",
        "without active checks a backend starts up; got {st}"
    );

    // rr reaches the dead backend every third connection: after 9 it has failed 3 times.
    connections(listen, 12, &f).await;
    assert_eq!(
        b1.served() + b2.served(),
        12,
        "every client served by a live backend"
    );
    f.wait_state("p", dead, "ejected", Duration::from_secs(1))
        .await;

    // While ejected it is not even tried: its failure counter stays still.
    let m = f.metrics().await;
    let failures = common::metric_sum(
        &m,
        "fulcrum_backend_failures_total",
        &[("pool", "p"), ("backend", &dead.to_string())],
    );
    assert!(
        failures.unwrap_or(0.0) >= 3.0,
        "fulcrum_backend_failures_total for {dead}: {failures:?}\n{m}"
    );
    connections(listen, 12, &f).await;
    let m2 = f.metrics().await;
    let failures2 = common::metric_sum(
        &m2,
        "fulcrum_backend_failures_total",
        &[("pool", "p"), ("backend", &dead.to_string())],
    );
    assert_eq!(failures, failures2, "an ejected backend was still tried");
    assert_eq!(f.backend_state("p", dead).await, "ejected");
    f.assert_no_panic();
}

/// weight = 0: no new connections, for rr and wrr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_gets_nothing() {
    let rr = [
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
    ];
    let wrr = [
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
    ];
    let (admin, l_rr, l_wrr) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}{}{}",
        admin_toml(admin),
        service_toml("srr", l_rr, "tcp", "prr", ""),
        service_toml("swrr", l_wrr, "tcp", "pwrr", ""),
        pool_toml(
            "prr",
            "rr",
            "",
            &[(rr[0].addr, 1), (rr[1].addr, 0), (rr[2].addr, 1)]
        ),
        pool_toml(
            "pwrr",
            "wrr",
            "",
            &[(wrr[0].addr, 2), (wrr[1].addr, 0), (wrr[2].addr, 1)]
        ),
    );
    let f = Fulcrum::start("weight0", admin, &cfg, &[]).await;
    connections(l_rr, 30, &f).await;
    connections(l_wrr, 30, &f).await;
    let s_rr: Vec<_> = rr.iter().map(TcpBackend::served).collect();
    let s_wrr: Vec<_> = wrr.iter().map(TcpBackend::served).collect();
    assert_eq!(s_rr[1], 0, "rr: weight-0 backend got connections: {s_rr:?}");
    assert_eq!(
        s_wrr[1], 0,
        "wrr: weight-0 backend got connections: {s_wrr:?}"
    );
    assert_eq!(
        s_rr,
        vec![15, 0, 15],
        "rr spread over the two weighted backends"
    );
    assert_eq!(s_wrr, vec![20, 0, 10], "wrr 2:1 spread");
    let w = f.backend("prr", rr[1].addr).await;
    assert_eq!(w["weight"].as_u64(), Some(0), "API weight: {w}");
    f.assert_no_panic();
}
