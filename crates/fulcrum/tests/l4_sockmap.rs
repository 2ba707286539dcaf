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
    admin_toml, connect, echo_bulk, free_addr, pattern_byte, pool_toml, service_toml, weighted,
    Behaviour, Fulcrum, TcpBackend, TRICKLE_TOTAL,
};
use fulcrum_xdp::testing::require_root;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(admin: SocketAddr, listen: SocketAddr, extra: &str, backends: &[SocketAddr]) -> String {
    format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("svc", listen, "tcp", "p", extra),
        pool_toml("p", "rr", "", &weighted(backends))
    )
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
    let sem = Arc::new(tokio::sync::Semaphore::new(10));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
        let data = Arc::clone(&small);
        tasks.push(tokio::spawn(async move {
            let r = echo_bulk(listen, data).await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .unwrap_or_else(|e| panic!("256 KiB echo: {e}\n{}", f.stderr_tail(20)));
    }
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
    for size in [1usize, 10_240, 300_000, 4 << 20] {
        let mut s = connect(listen).await.unwrap();
        s.write_all(&vec![b'x'; size]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("size {size}: no answer+EOF\n{}", f.stderr_tail(20)))
            .unwrap_or_else(|e| panic!("size {size}: read after half-close: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&answer),
            format!("got {size} bytes")
        );
    }

    let sb = TcpBackend::start(Behaviour::ServerHalfClose).await;
    let (f2, listen2) = start("sockmap-srvhalf", "", &[sb.addr]).await;
    let mut s = connect(listen2).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got))
        .await
        .expect("EOF after the backend's FIN")
        .unwrap();
    assert_eq!(got, b"bye");
    let payload = vec![b'p'; 1 << 20];
    tokio::time::timeout(Duration::from_secs(5), s.write_all(&payload))
        .await
        .expect("write after the backend's FIN")
        .unwrap();
    s.shutdown().await.unwrap();
    let ok = common::eventually(Duration::from_secs(3), || async {
        sb.received.load(std::sync::atomic::Ordering::SeqCst) == payload.len()
    })
    .await;
    assert!(
        ok,
        "backend received {} of {} bytes after its half-close",
        sb.received.load(std::sync::atomic::Ordering::SeqCst),
        payload.len()
    );
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
    let mut s = connect(listen).await.unwrap();
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        s.local_addr().unwrap().port(),
        listen.port()
    );
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut got))
        .await
        .expect("header echo")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), want);
    common::round_trip(&mut s, b"payload after header")
        .await
        .unwrap();
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
    let mut got = Vec::with_capacity(TRICKLE_TOTAL);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < 64 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("first bytes")
            .unwrap();
        assert!(n > 0, "EOF after {} bytes before SIGTERM", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    f.signal("TERM");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Err(_) => panic!("stalled after {} bytes", got.len()),
            Ok(Err(e)) => panic!(
                "error after {} bytes: {e}\n{}",
                got.len(),
                f.stderr_tail(10)
            ),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(got.len(), TRICKLE_TOTAL);
    assert!(
        got.iter().enumerate().all(|(i, &v)| v == pattern_byte(i)),
        "trickled bytes corrupted"
    );
    drop(s);
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
