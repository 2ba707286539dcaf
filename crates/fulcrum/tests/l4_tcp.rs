//! End-to-end TCP proxying through the real `fulcrum run`: bulk echo under concurrency,
//! round-robin spread, half-close, PROXY protocol v1 and v2.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    admin_toml, connect, echo_bulk, echo_once, free_addr, pool_toml, service_toml, tcp_service,
    weighted, Behaviour, Fulcrum, TcpBackend,
};
use tokio::io::AsyncReadExt;

/// 300 connections, 50 at a time, each echoing 64 KiB intact through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_echo_300_connections_intact() {
    for relay in RELAYS {
        bulk_echo(relay).await;
    }
}

/// `fulcrum run --relay` modes; every data-path test that moves bytes runs under each.
const RELAYS: [&str; 3] = ["auto", "copy", "splice"];

async fn bulk_echo(relay: &str) {
    let bs = [
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
    ];
    let (admin, listen) = (free_addr(), free_addr());
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let f = Fulcrum::start(
        "bulk",
        admin,
        &tcp_service(admin, listen, "", "rr", &addrs),
        &["--relay", relay],
    )
    .await;

    let data: Arc<Vec<u8>> = Arc::new(
        (0..64 * 1024)
            .map(|i: usize| (i * 7 + i / 251) as u8)
            .collect(),
    );
    let started = Instant::now();
    let failures = common::echo_bulk_many(listen, &data, 300, 50).await;
    assert!(
        failures.is_empty(),
        "{} of 300 bulk echoes failed, e.g. {:?}\nstderr tail:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        f.stderr_tail(20)
    );
    let served: Vec<usize> = bs.iter().map(TcpBackend::served).collect();
    assert_eq!(
        served.iter().sum::<usize>(),
        300,
        "backend-side connection counts {served:?}"
    );
    eprintln!(
        "relay {relay}: 300 x 64 KiB echoes in {:?}",
        started.elapsed()
    );

    // The admin API accounts for every connection, and none is left active.
    let mut total = 0;
    let mut ok = false;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let p = f.pool("p").await;
        total = 0;
        let mut active = 0;
        for a in &addrs {
            let b = common::find_backend(&p, *a).unwrap();
            total += b["total_connections"].as_u64().unwrap_or(0);
            active += b["active_connections"].as_u64().unwrap_or(1_000_000);
        }
        if total == 300 && active == 0 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ok,
        "admin API: total_connections sum {total} (want 300) / active not 0: {}",
        f.pool("p").await
    );
    f.assert_no_panic();
}

/// rr over 300 sequential connections: each of the 3 backends gets 100 (±1), with the
/// default worker count and with `--workers 1` and `--workers 2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rr_spreads_evenly() {
    rr_spread(&[]).await;
    rr_spread(&["--workers", "1"]).await;
    rr_spread(&["--workers", "2"]).await;
}

async fn rr_spread(args: &[&str]) {
    let bs = [
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
    ];
    let (admin, listen) = (free_addr(), free_addr());
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let f = Fulcrum::start(
        "rr",
        admin,
        &tcp_service(admin, listen, "", "rr", &addrs),
        args,
    )
    .await;
    for i in 0..300 {
        echo_once(listen, format!("hello {i}").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}\nstderr tail:\n{}", f.stderr_tail(20)));
    }
    let served: Vec<usize> = bs.iter().map(TcpBackend::served).collect();
    assert_eq!(served.iter().sum::<usize>(), 300, "{served:?}");
    for s in &served {
        assert!(
            (99..=101).contains(s),
            "rr over 300 sequential connections is uneven ({args:?}): {served:?}"
        );
    }
    f.assert_no_panic();
}

/// The client half-closes; the backend reads to EOF, answers, closes; the client gets the
/// answer and then EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_relayed() {
    for relay in RELAYS {
        half_close(relay).await;
    }
}

async fn half_close(relay: &str) {
    let b = TcpBackend::start(Behaviour::HalfClose).await;
    let (admin, listen) = (free_addr(), free_addr());
    let f = Fulcrum::start(
        "halfclose",
        admin,
        &tcp_service(admin, listen, "", "rr", &[b.addr]),
        &["--relay", relay],
    )
    .await;
    common::client_half_close(listen)
        .await
        .unwrap_or_else(|e| panic!("relay {relay}: {e}\n{}", f.stderr_tail(20)));
    f.assert_no_panic();
}

/// PROXY v1: the backend receives exactly `PROXY TCP4 127.0.0.1 127.0.0.1 CPORT SPORT\r\n`
/// and then the client's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_header_exact() {
    let b = TcpBackend::start(Behaviour::ProxyV1).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = tcp_service(admin, listen, "proxy_protocol = \"v1\"", "rr", &[b.addr]);
    let f = Fulcrum::start("ppv1", admin, &cfg, &[]).await;
    for _ in 0..3 {
        common::proxy_v1_header_exact(listen).await.unwrap();
    }
    f.assert_no_panic();
}

/// PROXY v2: signature, 0x21 (v2, PROXY), 0x11 (TCP over IPv4), length 12, addresses, ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_header_exact() {
    let b = TcpBackend::start(Behaviour::ProxyV2).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = tcp_service(admin, listen, "proxy_protocol = \"v2\"", "rr", &[b.addr]);
    let f = Fulcrum::start("ppv2", admin, &cfg, &[]).await;
    for _ in 0..3 {
        let mut s = connect(listen).await.unwrap();
        let cport = s.local_addr().unwrap().port();
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        want.extend_from_slice(&cport.to_be_bytes());
        want.extend_from_slice(&listen.port().to_be_bytes());
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut got))
            .await
            .expect("header echo timed out")
            .expect("header echo");
        assert_eq!(got, want, "v2 header bytes");
        common::round_trip(&mut s, b"payload after v2 header")
            .await
            .unwrap();
    }
    f.assert_no_panic();
}

/// One 16 MiB transfer each way on a single connection, per relay mode (auto switches to
/// splice mid-stream here): every byte intact and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_transfer_intact_each_relay_mode() {
    let b = TcpBackend::start(Behaviour::Echo).await;
    let data: Arc<Vec<u8>> = Arc::new((0..16usize << 20).map(common::pattern_byte).collect());
    for relay in RELAYS {
        let (admin, listen) = (free_addr(), free_addr());
        let cfg = tcp_service(admin, listen, "", "rr", &[b.addr]);
        let f = Fulcrum::start("big", admin, &cfg, &["--relay", relay]).await;
        let t = Instant::now();
        echo_bulk(listen, Arc::clone(&data))
            .await
            .unwrap_or_else(|e| panic!("relay {relay}: 16 MiB echo: {e}\n{}", f.stderr_tail(20)));
        eprintln!("relay {relay}: 16 MiB echo in {:?}", t.elapsed());
        f.assert_no_panic();
    }
}

/// The backend half-closes first (sends `bye`, FIN) and keeps reading: the client sees
/// `bye` + EOF and can still send; every byte it sends after that reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_close_keeps_client_direction_open() {
    for relay in RELAYS {
        let b = TcpBackend::start(Behaviour::ServerHalfClose).await;
        let (admin, listen) = (free_addr(), free_addr());
        let cfg = tcp_service(admin, listen, "", "rr", &[b.addr]);
        let f = Fulcrum::start("srvhalf", admin, &cfg, &["--relay", relay]).await;
        common::server_half_close(listen, &b)
            .await
            .unwrap_or_else(|e| panic!("relay {relay}: {e}"));
        f.assert_no_panic();
    }
}

/// ipvsadm-style persistence: with `persistence`, every connection of one client IP goes to
/// one backend even under rr, and that survives a reload that adds a backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_keeps_a_client_on_one_backend_across_reloads() {
    let bs = [
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
    ];
    let (admin, listen) = (free_addr(), free_addr());
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let config = |backends: &[SocketAddr]| {
        format!(
            "{}{}{}",
            admin_toml(admin),
            service_toml("svc", listen, "tcp", "p", ""),
            pool_toml("p", "rr", "persistence = \"30s\"", &weighted(backends))
        )
    };
    let f = Fulcrum::start("persist", admin, &config(&addrs[..2]), &["--workers", "2"]).await;
    for i in 0..20 {
        echo_once(listen, format!("hello {i}").as_bytes())
            .await
            .unwrap();
    }
    let served: Vec<usize> = bs.iter().map(TcpBackend::served).collect();
    assert!(
        served[..2].contains(&20),
        "one client IP spread over backends under persistence: {served:?}"
    );
    // Reload with a third backend: the client keeps its backend.
    f.write_config(&config(&addrs));
    f.signal("HUP");
    let reloaded = common::eventually(Duration::from_secs(5), || async {
        f.pool("p").await["backends"]
            .as_array()
            .is_some_and(|b| b.len() == 3)
    })
    .await;
    assert!(reloaded, "the reload did not add the third backend");
    for i in 0..20 {
        echo_once(listen, format!("again {i}").as_bytes())
            .await
            .unwrap();
    }
    let after: Vec<usize> = bs.iter().map(TcpBackend::served).collect();
    assert!(
        after[..2].contains(&40) && after[2] == 0,
        "persistence did not survive the reload: {after:?}"
    );
    f.assert_no_panic();
}

/// A burst of 200 concurrent connects against `max_connections = 50`: at most 50 are ever
/// served at once (the backend holds every connection it gets, so what it accepted is what
/// is served at the same time), and the limit is filled, not undershot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_under_a_burst() {
    for workers in ["1", "2"] {
        max_connections_burst(workers).await;
    }
}

async fn max_connections_burst(workers: &str) {
    const LIMIT: usize = 50;
    const BURST: usize = 200;
    let b = TcpBackend::start(Behaviour::NeverRead).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = tcp_service(
        admin,
        listen,
        &format!("max_connections = {LIMIT}"),
        "rr",
        &[b.addr],
    );
    let f = Fulcrum::start("maxconn-burst", admin, &cfg, &["--workers", workers]).await;
    let gate = Arc::new(tokio::sync::Barrier::new(BURST));
    let mut tasks = Vec::new();
    for _ in 0..BURST {
        let gate = Arc::clone(&gate);
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let s = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(listen),
            )
            .await;
            // Held until the counts are read.
            tokio::time::sleep(Duration::from_secs(2)).await;
            s
        }));
    }
    // Let the proxy connect whatever it let through.
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(b.accepted.load(std::sync::atomic::Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        peak <= LIMIT,
        "--workers {workers}: {peak} connections served at once with max_connections = {LIMIT}"
    );
    assert_eq!(
        peak, LIMIT,
        "--workers {workers}: a burst of {BURST} should fill all {LIMIT} places"
    );
    for t in tasks {
        let _ = t.await;
    }
    f.assert_no_panic();
}

/// `[service.timeouts] connect` bounds a tcp service's connect to a backend: one whose
/// accept queue is full (its SYNs go unanswered) is given up after 300 ms rather than the
/// default 3 s, counted, and the client is served by the next backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_the_services_key() {
    // A listener that never accepts, its queue filled: further connects hang.
    let hang = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hang.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    hang.listen(0).unwrap();
    let hang_addr = hang.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..64 {
        match std::net::TcpStream::connect_timeout(&hang_addr, Duration::from_millis(200)) {
            Ok(s) => queued.push(s),
            Err(_) => break,
        }
    }
    assert!(
        std::net::TcpStream::connect_timeout(&hang_addr, Duration::from_millis(200)).is_err(),
        "the listener's queue did not fill up ({} connections)",
        queued.len()
    );
    let good = TcpBackend::start(Behaviour::Echo).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = tcp_service(
        admin,
        listen,
        "[service.timeouts]\nconnect = \"300ms\"\n",
        "rr",
        &[hang_addr, good.addr],
    );
    let f = Fulcrum::start("connect-timeout", admin, &cfg, &[]).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..4 {
        let t = Instant::now();
        echo_once(listen, b"ping").await.unwrap();
        slowest = slowest.max(t.elapsed());
    }
    let timeouts = f
        .metric(
            "fulcrum_backend_failures_total",
            &[
                ("backend", hang_addr.to_string().as_str()),
                ("kind", "connect_timeout"),
            ],
        )
        .await;
    assert!(
        timeouts.is_some_and(|n| n >= 1.0),
        "connect timeouts of {hang_addr}: {timeouts:?}"
    );
    assert!(
        slowest >= Duration::from_millis(250) && slowest < Duration::from_secs(2),
        "the slowest connection took {slowest:?}: the 300ms connect timeout was not used"
    );
    f.assert_no_panic();
    drop(queued);
}
