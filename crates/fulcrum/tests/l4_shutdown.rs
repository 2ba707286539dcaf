//! Graceful shutdown on SIGTERM: the transfer in flight completes, new connections are
//! refused, /readyz answers 503 while draining, and the exit code is 0.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::time::{Duration, Instant};

use common::{
    connect, free_addr, http, probe_refused, tcp_service, Behaviour, Fulcrum, Refusal, TcpBackend,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_transfer() {
    let b = TcpBackend::start(Behaviour::Trickle).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = tcp_service(admin, listen, "drain_timeout = \"10s\"", "rr", &[b.addr]);
    let mut f = Fulcrum::start("shutdown", admin, &cfg, &[]).await;

    // Start the slow download and wait for its first bytes.
    let mut s = connect(listen).await.unwrap();
    let got = common::trickle_started(&mut s).await;
    let reader = tokio::spawn(common::trickle_finished(s, got));

    let sigterm_at = Instant::now();
    f.signal("TERM");

    // /readyz goes 503 while the transfer drains (the admin API is still up then).
    let mut saw_503 = false;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
        match http(admin, "GET", "/readyz").await {
            Ok((503, _)) => {
                saw_503 = true;
                break;
            }
            Ok((st, body)) => last = format!("{st} {body}"),
            Err(e) => last = format!("error {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // New connections are refused (connect fails, or closed/reset within 1 s).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refusal = probe_refused(listen, Duration::from_secs(1)).await;
    let refused_in_drain = sigterm_at.elapsed();

    let transfer = tokio::time::timeout(Duration::from_secs(8), reader)
        .await
        .expect("reader hung")
        .unwrap();
    let status = f.wait_exit(Duration::from_secs(5)).await;

    assert!(
        saw_503,
        "/readyz never answered 503 during the drain; last: {last}\nstderr tail:\n{}",
        f.stderr_tail(20)
    );
    match refusal {
        Refusal::ConnectFailed(e) => eprintln!("after SIGTERM: connect failed: {e}"),
        Refusal::ClosedAfter(d) => eprintln!("after SIGTERM: connected, closed after {d:?}"),
        Refusal::NotRefused(what) => {
            panic!("a new connection {refused_in_drain:?} after SIGTERM was not refused: {what}")
        }
    }
    transfer.unwrap_or_else(|e| {
        panic!(
            "in-flight transfer broken by SIGTERM: {e}\nstderr tail:\n{}",
            f.stderr_tail(20)
        )
    });
    let status = status.unwrap_or_else(|| {
        panic!(
            "fulcrum did not exit within 5s after the transfer ended\n{}",
            f.stderr_tail(20)
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after graceful SIGTERM: {status:?}\n{}",
        f.stderr_tail(20)
    );
    f.assert_no_panic();
}

/// With nothing in flight, SIGTERM exits 0 promptly; SIGINT too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sigterm_and_sigint_exit_zero_promptly() {
    for sig in ["TERM", "INT"] {
        let b = TcpBackend::start(Behaviour::Echo).await;
        let (admin, listen) = (free_addr(), free_addr());
        let cfg = tcp_service(admin, listen, "drain_timeout = \"10s\"", "rr", &[b.addr]);
        let mut f = Fulcrum::start("shutdown-idle", admin, &cfg, &[]).await;
        common::echo_once(listen, b"x").await.unwrap();
        let t = Instant::now();
        f.signal(sig);
        let st = f.wait_exit(Duration::from_secs(3)).await;
        let st =
            st.unwrap_or_else(|| panic!("SIG{sig} with no open connection: not exited within 3s"));
        assert_eq!(
            st.code(),
            Some(0),
            "SIG{sig}: {st:?}\n{}",
            f.stderr_tail(20)
        );
        eprintln!("SIG{sig}: exited in {:?}", t.elapsed());
    }
}

/// `drain_timeout` bounds the wait: a connection that never ends does not keep fulcrum alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() {
    let b = TcpBackend::start(Behaviour::NeverRead).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = tcp_service(admin, listen, "drain_timeout = \"1s\"", "rr", &[b.addr]);
    let mut f = Fulcrum::start("shutdown-timeout", admin, &cfg, &[]).await;
    let _held = connect(listen).await.unwrap();
    assert!(common::eventually(Duration::from_secs(2), || async { b.served() == 1 }).await);
    let t = Instant::now();
    f.signal("TERM");
    let st = f.wait_exit(Duration::from_secs(5)).await;
    let took = t.elapsed();
    let st = st.unwrap_or_else(|| {
        panic!(
            "not exited 5s after SIGTERM with drain_timeout 1s\n{}",
            f.stderr_tail(20)
        )
    });
    assert!(
        took >= Duration::from_millis(800),
        "exited after {took:?}: did not wait for the open connection"
    );
    assert!(
        took <= Duration::from_millis(2500),
        "exited after {took:?}: drain_timeout 1s not honoured"
    );
    assert_eq!(st.code(), Some(0), "{st:?}");
}
