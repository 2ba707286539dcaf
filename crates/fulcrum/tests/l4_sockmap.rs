//! `fulcrum run --relay sockmap` end to end (needs root for BPF): bytes intact both ways
//! under concurrency, the PROXY header before the pairing, half-close from either side, the
//! byte counters in /metrics, the idle timeout, a SIGHUP reload and a SIGTERM drain with
//! connections relayed in the kernel.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names,
    clippy::float_cmp,
    clippy::match_wild_err_arm
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    connect, echo_bulk, free_addr, pattern_byte, tcp_service, Behaviour, Fulcrum, TcpBackend,
};
use fulcrum_xdp::testing::require_root;
use tokio::io::AsyncReadExt;

fn config(admin: SocketAddr, listen: SocketAddr, extra: &str, backends: &[SocketAddr]) -> String {
    tcp_service(admin, listen, extra, "rr", backends)
}

async fn start(name: &str, extra: &str, backends: &[SocketAddr]) -> (Fulcrum, SocketAddr) {
    let (admin, listen) = (free_addr(), free_addr());
    let f = Fulcrum::start(
        name,
        admin,
        &config(admin, listen, extra, backends),
        &[
            "--relay",
            "sockmap",
            "--log-level",
            "info,fulcrum_proxy=debug",
        ],
    )
    .await;
    assert!(
        f.stderr().contains("relay: sockmap"),
        "sockmap not in use:\n{}",
        f.stderr_tail(20)
    );
    (f, listen)
}

async fn bytes_metric(f: &Fulcrum, direction: &str) -> f64 {
    f.metric(
        "fulcrum_service_bytes_total",
        &[("service", "svc"), ("direction", direction)],
    )
    .await
    .unwrap_or(0.0)
}

/// 40 echoes of 256 KiB (10 at a time) and one of 8 MiB, every byte compared; then the
/// service's byte counters in /metrics equal the bytes sent each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockmap_bulk_intact_and_counted() {
    if !require_root("sockmap_bulk_intact_and_counted") {
        return;
    }
    let b = TcpBackend::start(Behaviour::Echo).await;
    let (f, listen) = start("sockmap-bulk", "", &[b.addr]).await;
    let small: Arc<Vec<u8>> = Arc::new((0..256 * 1024).map(pattern_byte).collect());
    let failures = common::echo_bulk_many(listen, &small, 40, 10).await;
    assert!(
        failures.is_empty(),
        "{} of 40 256 KiB echoes failed, e.g. {}\n{}",
        failures.len(),
        failures[0],
        f.stderr_tail(20)
    );
    let big: Arc<Vec<u8>> = Arc::new((0..8usize << 20).map(|i| pattern_byte(i * 3)).collect());
    echo_bulk(listen, Arc::clone(&big))
        .await
        .unwrap_or_else(|e| panic!("8 MiB echo: {e}\n{}", f.stderr_tail(20)));
    let want = (40 * small.len() + big.len()) as f64;
    let ok = common::eventually(Duration::from_secs(5), || async {
        bytes_metric(&f, "in").await == want && bytes_metric(&f, "out").await == want
    })
    .await;
    assert!(
        ok,
        "bytes in {} / out {}, want {want} each way",
        bytes_metric(&f, "in").await,
        bytes_metric(&f, "out").await
    );
    f.assert_no_panic();
}

/// The client half-closes after up to 4 MiB: the backend sees every byte and EOF, and its
/// answer still reaches the client. The backend half-closes first: the client gets `bye`
/// and EOF, and every byte it sends afterwards reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockmap_half_close_both_sides() {
    if !require_root("sockmap_half_close_both_sides") {
        return;
    }
    let b = TcpBackend::start(Behaviour::HalfClose).await;
    let (f, listen) = start("sockmap-half", "", &[b.addr]).await;
    common::client_half_close(listen)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.stderr_tail(20)));

    let sb = TcpBackend::start(Behaviour::ServerHalfClose).await;
    let (f2, listen2) = start("sockmap-srvhalf", "", &[sb.addr]).await;
    common::server_half_close(listen2, &sb)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f2.stderr_tail(20)));
    f.assert_no_panic();
    f2.assert_no_panic();
}

/// The PROXY v1 header is written by userspace before the pairing; the bytes after it
/// follow in the kernel, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockmap_proxy_header_then_kernel_relay() {
    if !require_root("sockmap_proxy_header_then_kernel_relay") {
        return;
    }
    let b = TcpBackend::start(Behaviour::ProxyV1).await;
    let (f, listen) = start("sockmap-ppv1", "proxy_protocol = \"v1\"", &[b.addr]).await;
    common::proxy_v1_header_exact(listen)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.stderr_tail(20)));
    f.assert_no_panic();
}

/// `idle_timeout = "1s"`: a connection that exchanges a message every 300 ms for 2.5 s
/// stays open (the program's timestamps count as activity); an idle one is closed after
/// about 1 s. A SIGHUP reload in between leaves the open connection alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockmap_idle_timeout_and_reload() {
    if !require_root("sockmap_idle_timeout_and_reload") {
        return;
    }
    let b = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, listen) = (free_addr(), free_addr());
    let extra = "idle_timeout = \"1s\"";
    let f = Fulcrum::start(
        "sockmap-idle",
        admin,
        &config(admin, listen, extra, &[b.addr]),
        &["--relay", "sockmap"],
    )
    .await;
    let mut busy = connect(listen).await.unwrap();
    let t = Instant::now();
    let mut reloaded = false;
    let mut idle_start = Instant::now();
    while t.elapsed() < Duration::from_millis(2500) {
        common::round_trip(&mut busy, b"ping")
            .await
            .unwrap_or_else(|e| panic!("busy connection broken after {:?}: {e}", t.elapsed()));
        idle_start = Instant::now();
        if !reloaded && t.elapsed() > Duration::from_secs(1) {
            f.write_config(&config(admin, listen, extra, &[b.addr, b2.addr]));
            f.signal("HUP");
            reloaded = true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), busy.read(&mut buf)).await;
    let took = idle_start.elapsed();
    match r {
        Err(_) => panic!("idle connection not closed within 5 s"),
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("idle connection got {n} bytes"),
    }
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
        "closed after {took:?} idle; idle_timeout 1s"
    );
    f.assert_no_panic();
}

/// SIGTERM while the backend trickles 1 MiB: the transfer completes intact in the kernel
/// relay, then fulcrum exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockmap_sigterm_drains_open_connection() {
    if !require_root("sockmap_sigterm_drains_open_connection") {
        return;
    }
    let b = TcpBackend::start(Behaviour::Trickle).await;
    let (mut f, listen) = start("sockmap-drain", "drain_timeout = \"10s\"", &[b.addr]).await;
    let mut s = connect(listen).await.unwrap();
    let got = common::trickle_started(&mut s).await;
    f.signal("TERM");
    common::trickle_finished(s, got)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.stderr_tail(10)));
    let status = f.wait_exit(Duration::from_secs(5)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after the drain: {status:?}\n{}",
        f.stderr_tail(20)
    );
}

/// Without the capabilities BPF needs (`setpriv --bounding-set=-all`: root without any),
/// `--relay sockmap` refuses to start, exit 1, and says why and what would work.
#[test]
fn sockmap_without_bpf_permission_fails_at_start() {
    if !require_root("sockmap_without_bpf_permission_fails_at_start")
        || !fulcrum_xdp::testing::require(
            "sockmap_without_bpf_permission_fails_at_start",
            fulcrum_xdp::testing::have_program("setpriv"),
            "setpriv (apt-get install util-linux)",
        )
    {
        return;
    }
    let (admin, listen) = (free_addr(), free_addr());
    let dir = common::temp_dir("sockmap-noperm");
    let cfg = dir.join("fulcrum.toml");
    std::fs::write(&cfg, config(admin, listen, "", &[free_addr()])).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .arg(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["run", "-c"])
        .arg(&cfg)
        .args(["--relay", "sockmap"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("--relay sockmap: the in-kernel relay is not available")
            && stderr.contains("--relay auto"),
        "stderr:\n{stderr}"
    );
}
