//! Config reloads (SIGHUP and the API) under load: no failed or reset connection, invalid
//! files change nothing, services come and go.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    admin_toml, connect, echo_once, eventually, free_addr, http, metric_value, pool_toml,
    round_trip, service_toml, wait_refused, Behaviour, Fulcrum, TcpBackend,
};

const HEALTH: &str = "[pool.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n";

async fn reloads(f: &Fulcrum, result: &str) -> f64 {
    metric_value(
        &f.metrics().await,
        "fulcrum_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

async fn wait_reloads(f: &Fulcrum, result: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = reloads(f, result).await;
        if (got - want).abs() < 0.5 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fulcrum_config_reloads_total{{result=\"{result}\"}} = {got}, want {want}\nstderr tail:\n{}",
            f.stderr_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 20 SIGHUP reloads that add and remove a 4th backend, under continuous load from 4 tasks
/// of short connections and 10 long-lived connections: zero failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_drop_nothing() {
    let bs = [
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
    ];
    let (admin, listen) = (free_addr(), free_addr());
    let config = |with_fourth: bool| {
        let n = if with_fourth { 4 } else { 3 };
        let backends: Vec<(SocketAddr, u32)> = bs[..n].iter().map(|b| (b.addr, 1)).collect();
        format!(
            "{}{}{}",
            admin_toml(admin),
            service_toml("svc", listen, "tcp", "p", ""),
            pool_toml("p", "rr", HEALTH, &backends)
        )
    };
    let f = Fulcrum::start("reload-load", admin, &config(true), &[]).await;
    // Start with all 4, so some long-lived connections sit on the backend that the reloads
    // remove and add back: they must survive its removal.
    for b in &bs {
        f.wait_state("p", b.addr, "up", Duration::from_secs(3))
            .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let short_ok = Arc::new(AtomicUsize::new(0));
    let long_ok = Arc::new(AtomicUsize::new(0));

    // 10 long-lived connections, a round trip every 50 ms.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut s = connect(listen).await.unwrap();
        round_trip(&mut s, b"hello").await.unwrap();
        let (stop, errors, long_ok) =
            (Arc::clone(&stop), Arc::clone(&errors), Arc::clone(&long_ok));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if let Err(e) = round_trip(&mut s, format!("long {i} msg {n}").as_bytes()).await {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("long-lived {i}, message {n}: {e}"));
                    return;
                }
                long_ok.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Err(e) = round_trip(&mut s, b"bye").await {
                errors
                    .lock()
                    .unwrap()
                    .push(format!("long-lived {i}, final message: {e}"));
            }
        }));
    }
    let on_fourth = bs[3].served();
    assert!(
        on_fourth >= 2,
        "rr put {on_fourth} of 10 long-lived connections on the 4th backend"
    );
    // 4 tasks of short connections.
    for i in 0..4 {
        let (stop, errors, short_ok) = (
            Arc::clone(&stop),
            Arc::clone(&errors),
            Arc::clone(&short_ok),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                match echo_once(listen, format!("short {i} #{n}").as_bytes()).await {
                    Ok(()) => {
                        short_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors
                        .lock()
                        .unwrap()
                        .push(format!("short task {i}, connection {n}: {e}")),
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..20 {
        f.write_config(&config(i % 2 == 1));
        f.signal("HUP");
        wait_reloads(&f, "ok", f64::from(i + 1)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("client task hung")
            .unwrap();
    }

    let errors = errors.lock().unwrap().clone();
    let (short, long) = (
        short_ok.load(Ordering::Relaxed),
        long_ok.load(Ordering::Relaxed),
    );
    eprintln!(
        "short connections ok: {short}, long-lived round trips ok: {long}; backends served {:?}",
        bs.iter().map(TcpBackend::served).collect::<Vec<_>>()
    );
    assert!(
        errors.is_empty(),
        "{} client failures during reloads, e.g. {:?}\nstderr tail:\n{}",
        errors.len(),
        &errors[..errors.len().min(10)],
        f.stderr_tail(30)
    );
    assert!(
        short > 100,
        "too little load got through: {short} short connections"
    );
    assert!(long > 100, "too few long-lived round trips: {long}");
    assert!(
        bs[3].served() > 0,
        "the 4th backend never served while it was in the pool"
    );
    let p = f.pool("p").await;
    assert_eq!(
        p["backends"].as_array().map(Vec::len),
        Some(4),
        "after 20 reloads (the last adds the 4th back): {p}"
    );
    assert_eq!(reloads(&f, "error").await as u64, 0);
    f.assert_no_panic();
}

/// An invalid file changes nothing: by SIGHUP (bad TOML) and by the API (bad reference).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_changes_nothing() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, listen) = (free_addr(), free_addr());
    let good = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("svc", listen, "tcp", "p", ""),
        pool_toml("p", "rr", "", &[(b1.addr, 1), (b2.addr, 1)])
    );
    let mut f = Fulcrum::start("reload-bad", admin, &good, &[]).await;
    echo_once(listen, b"before").await.unwrap();
    let pool_before = f.pool("p").await;

    // Bad TOML, and it would also drop b2 if it were applied.
    f.write_config(&format!(
        "{}[[service]\nname = \"svc\"\nlisten = \"{listen}\"\n{}",
        admin_toml(admin),
        pool_toml("p", "rr", "", &[(b1.addr, 1)])
    ));
    f.signal("HUP");
    wait_reloads(&f, "error", 1.0).await;
    assert_eq!(
        reloads(&f, "ok").await as u64,
        0,
        "a bad file counted as a good reload"
    );
    assert!(
        f.try_wait().is_none(),
        "fulcrum exited on a bad reload\n{}",
        f.stderr_tail(20)
    );
    for i in 0..10 {
        echo_once(listen, format!("after bad reload {i}").as_bytes())
            .await
            .unwrap();
    }
    assert!(
        b2.served() >= 5,
        "b2 should still be in the pool: served {}",
        b2.served()
    );
    let pool_after = f.pool("p").await;
    assert_eq!(
        pool_before["backends"].as_array().map(Vec::len),
        pool_after["backends"].as_array().map(Vec::len),
        "pool changed by an invalid reload: {pool_before} -> {pool_after}"
    );

    // Valid TOML that refers to a pool that does not exist: POST /api/v1/reload answers 400
    // with a JSON error and nothing changes.
    f.write_config(&format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("svc", listen, "tcp", "nope", ""),
        pool_toml("p", "rr", "", &[(b1.addr, 1)])
    ));
    let (st, body) = http(admin, "POST", "/api/v1/reload").await.unwrap();
    assert_eq!(st, 400, "POST /api/v1/reload of an invalid file: {body}");
    let j: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    assert!(
        j["error"].as_str().is_some_and(|s| !s.is_empty()),
        "no error message: {body}"
    );
    wait_reloads(&f, "error", 2.0).await;
    let before = b2.served();
    for i in 0..10 {
        echo_once(listen, format!("after bad API reload {i}").as_bytes())
            .await
            .unwrap();
    }
    assert!(
        b2.served() - before >= 4,
        "b2 dropped by an invalid API reload"
    );
    f.assert_no_panic();
}

/// A reload that adds a service makes it listen and serve; one that removes it stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_a_service() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, l1, l2) = (free_addr(), free_addr(), free_addr());
    let base = format!(
        "{}{}{}{}",
        admin_toml(admin),
        service_toml("one", l1, "tcp", "p1", ""),
        pool_toml("p1", "rr", "", &[(b1.addr, 1)]),
        pool_toml("p2", "rr", "", &[(b2.addr, 1)])
    );
    let with_two = format!("{base}{}", service_toml("two", l2, "tcp", "p2", ""));
    let f = Fulcrum::start("reload-svc", admin, &base, &[]).await;
    assert!(
        connect(l2).await.is_err(),
        "service two's port is open before it is configured"
    );

    f.write_config(&with_two);
    f.signal("HUP");
    let up = eventually(Duration::from_secs(3), || async {
        echo_once(l2, b"two?").await.is_ok()
    })
    .await;
    assert!(
        up,
        "service two not serving 3s after the reload that added it\n{}",
        f.stderr_tail(20)
    );
    echo_once(l2, b"two!").await.unwrap();
    assert!(b2.served() >= 2);
    let (st, body) = f.get("/api/v1/services").await;
    assert_eq!(st, 200);
    assert!(
        body.contains("\"two\""),
        "/api/v1/services does not list the new service: {body}"
    );
    echo_once(l1, b"one still").await.unwrap();

    f.write_config(&base);
    f.signal("HUP");
    assert!(
        wait_refused(l2, Duration::from_secs(3)).await,
        "service two still accepts connections 3s after the reload that removed it"
    );
    echo_once(l1, b"one still after removal").await.unwrap();
    wait_reloads(&f, "ok", 2.0).await;
    f.assert_no_panic();
}
