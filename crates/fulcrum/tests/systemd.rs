//! systemd integration through the real binary: the `sd_notify` messages read from a
//! `NOTIFY_SOCKET` the test creates (a path and an abstract name), the watchdog pings, and
//! `systemd-analyze verify` on the shipped unit file (dist/fulcrum.service).
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::many_single_char_names
)]

mod common;

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{admin_toml, free_addr, pool_toml, service_toml, temp_dir, weighted, Fulcrum};

/// The next notification (one datagram), or None after `limit`.
fn next(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

/// Notifications until one has a line `want` (skipping watchdog pings), within `limit`;
/// returns that message.
fn until(sock: &UnixDatagram, want: &str, limit: Duration, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {want:?} within {limit:?}; seen: {seen:#?}"
        );
        if let Some(m) = next(sock, left) {
            seen.push(m.clone());
            if m.lines().any(|l| l == want) {
                return m;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_reload_watchdog_stopping() {
    let backend = common::TcpBackend::start(common::Behaviour::Echo).await;
    let admin = free_addr();
    let listen = free_addr();
    // An active check every 300 ms: READY waits for its first verdict.
    let config = format!(
        "{}{}{}",
        admin_toml(admin),
        pool_toml(
            "p",
            "rr",
            "[pool.health]\ncheck = \"tcp\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\n",
            &weighted(&[backend.addr])
        ),
        service_toml("s", listen, "tcp", "p", "")
    );
    let dir = temp_dir("sd-notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let start = Instant::now();
    let mut f = Fulcrum::spawn_env(
        "sd-notify",
        admin,
        &config,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut seen = Vec::new();
    let ready = until(&sock, "READY=1", Duration::from_secs(10), &mut seen);
    let ready_after = start.elapsed();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=1 services, 1 pools, 1/1 backends up")),
        "READY carries the summary: {ready:?}"
    );
    // Ready means serving: the service and the admin API answer right away.
    common::echo_once(listen, b"hello").await.unwrap();
    assert_eq!(
        common::http(admin, "GET", "/readyz").await.unwrap().0,
        200,
        "{}",
        f.stderr_tail(20)
    );
    // And the backend's first check has settled (READY waited for it).
    assert_eq!(f.backend_state("p", backend.addr).await, "up");

    // Watchdog: every 100 ms (half of 200 ms); at least 5 in a second.
    let t = Instant::now();
    let mut pings = 0;
    while t.elapsed() < Duration::from_secs(1) {
        if let Some(m) = next(&sock, Duration::from_millis(300)) {
            if m == "WATCHDOG=1" {
                pings += 1;
            }
        }
    }
    assert!((5..=15).contains(&pings), "watchdog pings in 1 s: {pings}");

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 with the outcome.
    f.signal("HUP");
    let reloading = until(&sock, "RELOADING=1", Duration::from_secs(5), &mut seen);
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    let again = until(&sock, "READY=1", Duration::from_secs(5), &mut seen);
    assert!(again.contains("STATUS=reloaded; 1 services"), "{again:?}");
    // A reload that fails: READY=1 still (the old config runs), and the status says so.
    f.write_config("this is not toml");
    f.signal("HUP");
    until(&sock, "RELOADING=1", Duration::from_secs(5), &mut seen);
    let refused = until(&sock, "READY=1", Duration::from_secs(5), &mut seen);
    assert!(refused.contains("STATUS=reload refused"), "{refused:?}");

    // SIGTERM: STOPPING=1, then the process exits 0.
    f.signal("TERM");
    until(&sock, "STOPPING=1", Duration::from_secs(5), &mut seen);
    let st = f.wait_exit(Duration::from_secs(10)).await.expect("exit");
    assert!(st.success(), "{st:?}\n{}", f.stderr_tail(20));
    eprintln!("READY after {ready_after:?}; {} notifications", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_on_an_abstract_socket_without_watchdog() {
    let backend = common::TcpBackend::start(common::Behaviour::Echo).await;
    let admin = free_addr();
    let listen = free_addr();
    let config = format!(
        "{}{}{}",
        admin_toml(admin),
        pool_toml("p", "rr", "", &weighted(&[backend.addr])),
        service_toml("s", listen, "tcp", "p", "")
    );
    let name = format!("fulcrum-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let mut f = Fulcrum::spawn_env(
        "sd-abstract",
        admin,
        &config,
        &[],
        &[("NOTIFY_SOCKET", &format!("@{name}"))],
    );
    let mut seen = Vec::new();
    until(&sock, "READY=1", Duration::from_secs(10), &mut seen);
    // No WATCHDOG_USEC: no pings.
    let quiet = next(&sock, Duration::from_millis(500));
    assert_eq!(quiet, None, "unexpected notification");
    f.signal("TERM");
    until(&sock, "STOPPING=1", Duration::from_secs(5), &mut seen);
    assert!(f
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap()
        .success());
}

/// `systemd-analyze verify` on the unit file, with `ExecStart=` pointing at the binary
/// under test (verify checks that the command exists). Any warning fails the test.
#[test]
fn unit_file_verifies() {
    if !fulcrum_xdp::testing::require(
        "unit_file_verifies",
        fulcrum_xdp::testing::have_program("systemd-analyze"),
        "systemd-analyze (apt-get install systemd)",
    ) {
        return;
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/fulcrum.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for key in [
        "Type=notify",
        "User=fulcrum",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "--handover /run/fulcrum/handover.sock",
    ] {
        assert!(text.contains(key), "the unit lacks {key}");
    }
    let dir = temp_dir("unit");
    let path = dir.join("fulcrum.service");
    std::fs::write(
        &path,
        text.replace("/usr/bin/fulcrum", env!("CARGO_BIN_EXE_fulcrum")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{said}",
        out.status
    );
}

/// Socket activation: `systemd-socket-activate` (systemd's own tool) binds the service and
/// admin addresses, starts fulcrum on the first connection with `LISTEN_FDS`, and fulcrum
/// serves those sockets, the connection that started it included, binding neither address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_the_passed_sockets() {
    if !fulcrum_xdp::testing::require(
        "socket_activation_serves_the_passed_sockets",
        fulcrum_xdp::testing::have_program("systemd-socket-activate"),
        "systemd-socket-activate (apt-get install systemd)",
    ) {
        return;
    }
    let backend = common::TcpBackend::start(common::Behaviour::Echo).await;
    let admin = free_addr();
    let listen = free_addr();
    let config = format!(
        "{}{}{}",
        admin_toml(admin),
        pool_toml("p", "rr", "", &weighted(&[backend.addr])),
        service_toml("s", listen, "tcp", "p", "")
    );
    let dir = temp_dir("sd-activate");
    let cfg = dir.join("fulcrum.toml");
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join("stderr.log");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(listen.to_string())
        .arg("-l")
        .arg(admin.to_string())
        .arg("--fdname=web:admin")
        .arg(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["run", "--workers", "2", "-c"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The tool execs fulcrum in its own process: same pid.
    let pid = child.id();
    let kill = |sig: &str| {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status();
    };
    // The first connection starts fulcrum; it waits in the passed socket's queue.
    let mut first = None;
    for _ in 0..100 {
        match common::echo_once(listen, b"first").await {
            Ok(()) => {
                first = Some(());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    if first.is_none() {
        kill("KILL");
        panic!("the first connection was not served\n{}", stderr());
    }
    let ready = common::eventually(Duration::from_secs(10), || async {
        matches!(common::http(admin, "GET", "/readyz").await, Ok((200, _)))
    })
    .await;
    let text = stderr();
    let used = text
        .matches("socket activation: using a socket passed by systemd")
        .count();
    kill("TERM");
    let st = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(ready, "admin API not ready\n{text}");
    assert_eq!(used, 2, "{text}");
    assert!(
        text.contains("name=\"web\"") && text.contains("name=\"admin\""),
        "{text}"
    );
    assert!(st.success(), "{st:?}\n{}", stderr());
}
