//! The admin API's run-time changes, end to end: the real `fulcrum run` binary, real TCP
//! backends and clients, real HTTP to the admin API.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    admin_toml, connect, echo_once, eventually, free_addr, pool_toml, round_trip, service_toml,
    wait_refused, weighted, Behaviour, Fulcrum, TcpBackend,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "s3cret-token";

/// One admin request with an optional bearer token; (status, body).
async fn req(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(admin).await?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let r = format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(r.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("admin request timed out")
        .expect("admin request failed");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("http answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Asserts the status and that the body is `{"error": "..."}`; returns the message.
fn assert_err(got: &(u16, String), status: u16, ctx: &str) -> String {
    assert_eq!(got.0, status, "{ctx}: body {}", got.1);
    json(&got.1)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: no error field: {}", got.1))
        .to_owned()
}

fn token_config(dir: &Path, admin: SocketAddr) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let f = dir.join("admin.token");
    std::fs::write(&f, format!("{TOKEN}\n")).unwrap();
    format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\n",
        f.display()
    )
}

fn addrs(pool: &Value) -> Vec<String> {
    let mut v: Vec<String> = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_add_change_drain_remove_with_auth_and_errors() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let b3 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip) = (free_addr(), free_addr());
    let dir = common::temp_dir("api_backends_tok");
    let cfg = format!(
        "{}{}{}",
        token_config(&dir, admin),
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml("web", "rr", "", &weighted(&[b1.addr, b2.addr]))
    );
    let f = Fulcrum::start("api_backends", admin, &cfg, &["--workers", "1"]).await;
    let path3 = format!("/api/v1/pools/web/backends/{}", b3.addr);
    let before = addrs(&f.pool("web").await);

    // Auth: no token, wrong token -> 401 and nothing changes.
    let r = req(admin, "PUT", &path3, None, r#"{"weight": 1}"#).await;
    assert_err(&r, 401, "PUT without token");
    let r = req(admin, "PUT", &path3, Some("wrong"), r#"{"weight": 1}"#).await;
    assert_err(&r, 401, "PUT with a wrong token");
    let r = req(
        admin,
        "DELETE",
        &format!("/api/v1/pools/web/backends/{}", b1.addr),
        Some("s3cret-tokeN"),
        "",
    )
    .await;
    assert_err(&r, 401, "DELETE with a wrong token");
    let r = req(
        admin,
        "POST",
        &format!("/api/v1/pools/web/backends/{}/drain", b1.addr),
        None,
        "",
    )
    .await;
    assert_err(&r, 401, "drain without token");
    let r = req(admin, "PUT", "/api/v1/services/x", None, "{}").await;
    assert_err(&r, 401, "PUT service without token");
    let r = req(admin, "DELETE", "/api/v1/services/web", None, "").await;
    assert_err(&r, 401, "DELETE service without token");
    let r = req(admin, "POST", "/api/v1/reload", Some(""), "").await;
    assert_err(&r, 401, "reload with an empty token");
    assert_eq!(
        addrs(&f.pool("web").await),
        before,
        "a refused call changed the pool"
    );
    assert_eq!(f.backend_state("web", b1.addr).await, "up");
    // Reads stay open.
    assert_eq!(req(admin, "GET", "/api/v1/pools", None, "").await.0, 200);
    assert_eq!(req(admin, "GET", "/api/v1/config", None, "").await.0, 200);

    // 400s: bad address, bad JSON, bad weight, unknown field, not an object.
    let tok = Some(TOKEN);
    for (p, body, why) in [
        (
            "/api/v1/pools/web/backends/not-an-address",
            r#"{"weight":1}"#,
            "bad address",
        ),
        (
            "/api/v1/pools/web/backends/127.0.0.1:0",
            r#"{"weight":1}"#,
            "port 0",
        ),
        (path3.as_str(), r#"{"weight": "#, "truncated JSON"),
        (
            path3.as_str(),
            r#"{"weight": 70000}"#,
            "weight out of range",
        ),
        (path3.as_str(), r#"{"weight": -1}"#, "negative weight"),
        (
            path3.as_str(),
            r#"{"weight": 1, "colour": "red"}"#,
            "unknown field",
        ),
        (path3.as_str(), r"[1, 2]", "not an object"),
    ] {
        let r = req(admin, "PUT", p, tok, body).await;
        assert_err(&r, 400, why);
    }
    // Oversized body: 413.
    let big = format!("{{\"weight\": 1, \"pad\": \"{}\"}}", "x".repeat(100_000));
    assert_eq!(req(admin, "PUT", &path3, tok, &big).await.0, 413);
    // 404s.
    let r = req(
        admin,
        "PUT",
        &format!("/api/v1/pools/nope/backends/{}", b3.addr),
        tok,
        "{}",
    )
    .await;
    assert!(assert_err(&r, 404, "unknown pool").contains("nope"));
    let r = req(
        admin,
        "POST",
        &format!("/api/v1/pools/web/backends/{}/drain", b3.addr),
        tok,
        "",
    )
    .await;
    assert_err(&r, 404, "drain of an unknown backend");
    let r = req(admin, "DELETE", &path3, tok, "").await;
    assert_err(&r, 404, "delete of an unknown backend");
    assert_eq!(
        addrs(&f.pool("web").await),
        before,
        "a refused call changed the pool"
    );

    // Add: the new backend takes traffic at once.
    let r = req(admin, "PUT", &path3, tok, r#"{"weight": 2}"#).await;
    assert_eq!(r.0, 200, "add: {}", r.1);
    let v = json(&r.1);
    assert_eq!(v["backend"]["weight"], 2);
    assert_eq!(v["backend"]["state"], "up");
    assert_eq!(f.backend("web", b3.addr).await["weight"], 2);
    for _ in 0..12 {
        echo_once(vip, b"hello").await.unwrap();
    }
    assert!(b3.served() > 0, "the added backend got no traffic");
    // Change the weight.
    let r = req(admin, "PUT", &path3, tok, r#"{"weight": 5}"#).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(f.backend("web", b3.addr).await["weight"], 5);
    // A weight-less PUT keeps the weight.
    let r = req(admin, "PUT", &path3, tok, "").await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(f.backend("web", b3.addr).await["weight"], 5);

    // Drain: state draining, no new flows.
    let r = req(admin, "POST", &format!("{path3}/drain"), tok, "").await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(json(&r.1)["backend"]["state"], "draining");
    let served = b3.served();
    for _ in 0..12 {
        echo_once(vip, b"x").await.unwrap();
    }
    assert_eq!(b3.served(), served, "a drained backend got new flows");
    // PUT ends the drain.
    let r = req(admin, "PUT", &path3, tok, r#"{"weight": 1}"#).await;
    assert_eq!(json(&r.1)["backend"]["state"], "up", "{}", r.1);

    // Remove.
    let r = req(admin, "DELETE", &path3, tok, "").await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(addrs(&f.pool("web").await), before);
    let r = req(
        admin,
        "DELETE",
        &format!("/api/v1/pools/web/backends/{}", b1.addr),
        tok,
        "",
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = req(
        admin,
        "DELETE",
        &format!("/api/v1/pools/web/backends/{}", b2.addr),
        tok,
        "",
    )
    .await;
    // The last backend may go (as ipvsadm allows): the service then refuses clients...
    assert_eq!(r.0, 200, "{}", r.1);
    assert!(f.pool("web").await["backends"]
        .as_array()
        .is_some_and(Vec::is_empty));
    assert!(
        echo_once(vip, b"nobody home").await.is_err(),
        "an empty pool served a client"
    );
    // ... until one is added again.
    let r = req(
        admin,
        "PUT",
        &format!("/api/v1/pools/web/backends/{}", b2.addr),
        tok,
        r#"{"weight": 1}"#,
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    echo_once(vip, b"still serving").await.unwrap();

    // Pools: created empty, changed, refused while in use, removed.
    let r = req(
        admin,
        "PUT",
        "/api/v1/pools/extra",
        tok,
        r#"{"scheduler": "maglev", "persistence": "30s"}"#,
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(json(&r.1)["scheduler"], "maglev", "{}", r.1);
    assert_eq!(json(&r.1)["persistence"], 30, "{}", r.1);
    let r = req(
        admin,
        "PUT",
        "/api/v1/pools/extra",
        tok,
        r#"{"colour": "blue"}"#,
    )
    .await;
    assert!(assert_err(&r, 400, "unknown pool key").contains("colour"));
    let r = req(
        admin,
        "PUT",
        "/api/v1/pools/extra",
        tok,
        r#"{"scheduler": "fastest"}"#,
    )
    .await;
    assert_eq!(r.0, 400, "{}", r.1);
    let r = req(admin, "DELETE", "/api/v1/pools/web", tok, "").await;
    assert!(assert_err(&r, 409, "pool in use").contains("used by service"));
    let r = req(admin, "DELETE", "/api/v1/pools/extra", tok, "").await;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = req(admin, "DELETE", "/api/v1/pools/extra", tok, "").await;
    assert_eq!(r.0, 404, "{}", r.1);

    // Metrics: changes are counted.
    let m = f.metrics().await;
    assert!(
        common::metric_value(&m, "fulcrum_pool_changes_total", &[("pool", "web")]).unwrap() >= 5.0
    );
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_established_connection_drops_while_backends_change() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let extra: Vec<TcpBackend> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(TcpBackend::start(Behaviour::Echo).await);
        }
        v
    };
    let (admin, vip) = (free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml(
            "web",
            "maglev",
            "maglev_table_size = 1021\nhash_key = \"src_ip_port\"\n",
            &weighted(&[b1.addr, b2.addr])
        )
    );
    let f = Fulcrum::start("api_nodrop", admin, &cfg, &["--workers", "2"]).await;

    // 24 long-lived connections, each doing round trips until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let trips = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (stop, trips) = (Arc::clone(&stop), Arc::clone(&trips));
        tasks.push(tokio::spawn(async move {
            let mut s = connect(vip)
                .await
                .map_err(|e| format!("conn {i}: connect: {e}"))?;
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("conn {i} trip {n}");
                round_trip(&mut s, msg.as_bytes())
                    .await
                    .map_err(|e| format!("conn {i} trip {n}: {e}"))?;
                trips.fetch_add(1, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<u32, String>(n)
        }));
    }
    // New connections keep working too, throughout.
    let new_conns = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                echo_once(vip, b"new")
                    .await
                    .map_err(|e| format!("new connection {ok}: {e}"))?;
                ok += 1;
            }
            Ok::<usize, String>(ok)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Churn: add, reweight, drain, remove, including the original backends.
    let all: Vec<SocketAddr> = extra.iter().map(|b| b.addr).collect();
    let p = |a: SocketAddr| format!("/api/v1/pools/web/backends/{a}");
    for round in 0..3 {
        for a in &all {
            let r = req(
                admin,
                "PUT",
                &p(*a),
                None,
                &format!("{{\"weight\": {}}}", round + 1),
            )
            .await;
            assert_eq!(r.0, 200, "{}", r.1);
        }
        let r = req(admin, "POST", &format!("{}/drain", p(b1.addr)), None, "").await;
        assert_eq!(r.0, 200, "{}", r.1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = req(admin, "DELETE", &p(b1.addr), None, "").await;
        assert_eq!(r.0, 200, "{}", r.1);
        let r = req(admin, "DELETE", &p(b2.addr), None, "").await;
        assert_eq!(r.0, 200, "{}", r.1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        for a in [b1.addr, b2.addr] {
            let r = req(admin, "PUT", &p(a), None, "{}").await;
            assert_eq!(r.0, 200, "{}", r.1);
        }
        for a in &all {
            let r = req(admin, "DELETE", &p(*a), None, "").await;
            assert_eq!(r.0, 200, "{}", r.1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = trips.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let n = t.await.unwrap().unwrap_or_else(|e| {
            panic!(
                "an established connection broke: {e}\nstderr:\n{}",
                f.stderr_tail(20)
            )
        });
        assert!(n > 0);
    }
    let ok = new_conns.await.unwrap().unwrap();
    assert!(ok > 10, "only {ok} new connections");
    assert!(trips.load(Ordering::Relaxed) > before);

    // The pool changed owner shares were measured and logged.
    let ratio = common::metric_value(
        &f.metrics().await,
        "fulcrum_pool_table_moved_ratio",
        &[("pool", "web")],
    )
    .unwrap();
    assert!(
        (0.0..=1.0).contains(&ratio) && ratio > 0.0,
        "moved ratio {ratio}"
    );
    assert!(f.stderr().contains("moved_ratio"), "moved ratio not logged");
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_added_and_removed_at_run_time() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip, vip2) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml("web", "rr", "", &weighted(&[b1.addr]))
    );
    let f = Fulcrum::start("api_services", admin, &cfg, &["--workers", "2"]).await;

    // Not listening yet.
    assert!(connect(vip2).await.is_err());
    let body = format!(
        r#"{{"listen": "{vip2}", "protocol": "tcp", "pool": "web", "max_connections": 50}}"#
    );
    let r = req(admin, "PUT", "/api/v1/services/extra", None, &body).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(json(&r.1)["service"]["listen"], vip2.to_string());
    echo_once(vip2, b"via the new service").await.unwrap();
    let (_, list) = f.get("/api/v1/services").await;
    assert!(list.contains("\"extra\""), "{list}");

    // An open connection survives its service's removal; the port stops listening.
    let mut open = connect(vip2).await.unwrap();
    round_trip(&mut open, b"before").await.unwrap();

    // Errors: 400 bad body, unknown pool, unknown key, name mismatch, bad JSON; 409 a
    // listen address of another service or held by another process; 404 unknown service.
    for (body, why) in [
        (
            r#"{"listen": "127.0.0.1:1", "protocol": "tcp", "pool": "nope"}"#.to_owned(),
            "unknown pool",
        ),
        (
            format!(
                r#"{{"listen": "{}", "protocol": "tcp", "pool": "web", "colour": 1}}"#,
                free_addr()
            ),
            "unknown key",
        ),
        (
            format!(
                r#"{{"listen": "{}", "protocol": "smtp", "pool": "web"}}"#,
                free_addr()
            ),
            "bad protocol",
        ),
        (
            format!(
                r#"{{"name": "other", "listen": "{}", "protocol": "tcp", "pool": "web"}}"#,
                free_addr()
            ),
            "name mismatch",
        ),
        (
            r#"{"listen": "not an address", "protocol": "tcp", "pool": "web"}"#.to_owned(),
            "bad address",
        ),
        (r#"{"listen": "#.to_owned(), "bad JSON"),
        (r#""a string""#.to_owned(), "not an object"),
        (
            r#"{"listen": null, "protocol": "tcp", "pool": "web"}"#.to_owned(),
            "null",
        ),
    ] {
        let r = req(admin, "PUT", "/api/v1/services/bad", None, &body).await;
        let msg = assert_err(&r, 400, why);
        assert!(!msg.is_empty());
    }
    let body = format!(r#"{{"listen": "{vip}", "protocol": "tcp", "pool": "web"}}"#);
    let r = req(admin, "PUT", "/api/v1/services/dup", None, &body).await;
    assert!(assert_err(&r, 409, "listen of another service").contains("web"));
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let body = format!(
        r#"{{"listen": "{}", "protocol": "tcp", "pool": "web"}}"#,
        held.local_addr().unwrap()
    );
    let r = req(admin, "PUT", "/api/v1/services/held", None, &body).await;
    assert!(assert_err(&r, 409, "address in use").contains("cannot listen"));
    let r = req(admin, "DELETE", "/api/v1/services/nope", None, "").await;
    assert_err(&r, 404, "unknown service");
    let (_, list) = f.get("/api/v1/services").await;
    assert!(
        !list.contains("\"dup\"") && !list.contains("\"held\"") && !list.contains("\"bad\""),
        "{list}"
    );

    // Change it (PUT again replaces it whole), then remove it.
    let body = format!(
        r#"{{"listen": "{vip2}", "protocol": "tcp", "pool": "web", "max_connections": 60}}"#
    );
    assert_eq!(
        req(admin, "PUT", "/api/v1/services/extra", None, &body)
            .await
            .0,
        200
    );
    let r = req(admin, "DELETE", "/api/v1/services/extra", None, "").await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert!(
        wait_refused(vip2, Duration::from_secs(3)).await,
        "removed service still listens"
    );
    round_trip(&mut open, b"after removal").await.unwrap();
    drop(open);
    echo_once(vip, b"the other service is untouched")
        .await
        .unwrap();
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_config_round_trips_through_check_and_reload_ends_changes() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip, vip2) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("web", vip, "tcp", "web", "idle_timeout = \"90s\""),
        pool_toml(
            "web",
            "maglev",
            "hash_key = \"five_tuple\"\npersistence = \"30s\"\n[pool.health]\ncheck = \"tcp\"\ninterval = \"2s\"\n",
            &weighted(&[b1.addr])
        )
    );
    let f = Fulcrum::start("api_config", admin, &cfg, &["--workers", "1"]).await;
    let r = req(
        admin,
        "PUT",
        &format!("/api/v1/pools/web/backends/{}", b2.addr),
        None,
        r#"{"weight": 7}"#,
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let body = format!(r#"{{"listen": "{vip2}", "protocol": "udp", "pool": "web"}}"#);
    assert_eq!(
        req(admin, "PUT", "/api/v1/services/dns", None, &body)
            .await
            .0,
        200
    );

    let (st, text) = req(admin, "GET", "/api/v1/config", None, "").await;
    assert_eq!(st, 200);
    assert!(
        text.contains(&b2.addr.to_string()) && text.contains("weight = 7"),
        "{text}"
    );
    assert!(text.contains("name = \"dns\""), "{text}");
    let saved = f.dir.join("saved.toml");
    std::fs::write(&saved, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&saved)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fulcrum check refused the running config:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("dns"), "{summary}");

    // A reload re-reads the file: the run-time changes end.
    let r = req(admin, "POST", "/api/v1/reload", None, "").await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(addrs(&f.pool("web").await), vec![b1.addr.to_string()]);
    let (_, list) = f.get("/api/v1/services").await;
    assert!(!list.contains("\"dns\""), "{list}");
    // Saving the served config as the file makes them last.
    std::fs::write(&f.config, &text).unwrap();
    let r = req(admin, "POST", "/api/v1/reload", None, "").await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(addrs(&f.pool("web").await).len(), 2);
    f.assert_no_panic();
}

/// A config with `[pool.locality] weights` takes admin API changes (each one is written as
/// TOML and parsed again; the weights table used to be written as an implicit
/// `[pool.locality]` that did not read back, "expected a borrowed string"), and the weights
/// survive every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_a_config_with_locality_weights_keep_the_weights() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let b3 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip, vip2) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "{}{}[[pool]]\nname = \"web\"\nscheduler = \"wrr\"\n\
         [[pool.backend]]\naddress = \"{}\"\nzone = \"a\"\n\
         [[pool.backend]]\naddress = \"{}\"\nzone = \"b\"\n\
         [pool.locality]\nweights = {{ a = 90, b = 10 }}\n",
        admin_toml(admin),
        service_toml("web", vip, "tcp", "web", ""),
        b1.addr,
        b2.addr,
    );
    let f = Fulcrum::start("api_locality", admin, &cfg, &["--workers", "1"]).await;
    let body = format!(r#"{{"listen": "{vip2}", "protocol": "tcp", "pool": "web"}}"#);
    let r = req(admin, "PUT", "/api/v1/services/extra", None, &body).await;
    assert_eq!(r.0, 200, "adding a service: {}", r.1);
    echo_once(vip2, b"via the new service").await.unwrap();
    let r = req(
        admin,
        "PUT",
        &format!("/api/v1/pools/web/backends/{}", b3.addr),
        None,
        r#"{"weight": 2}"#,
    )
    .await;
    assert_eq!(r.0, 200, "adding a backend: {}", r.1);
    let r = req(
        admin,
        "DELETE",
        &format!("/api/v1/pools/web/backends/{}", b2.addr),
        None,
        "",
    )
    .await;
    assert_eq!(r.0, 200, "removing a backend: {}", r.1);
    let r = req(admin, "DELETE", "/api/v1/services/extra", None, "").await;
    assert_eq!(r.0, 200, "removing the service: {}", r.1);

    let (st, text) = req(admin, "GET", "/api/v1/config", None, "").await;
    assert_eq!(st, 200);
    assert!(
        text.contains("weights = { a = 90, b = 10 }"),
        "the weights did not survive:\n{text}"
    );
    assert!(text.contains(&b3.addr.to_string()) && !text.contains(&b2.addr.to_string()));
    let saved = f.dir.join("saved.toml");
    std::fs::write(&saved, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&saved)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fulcrum check refused the running config:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    echo_once(vip, b"the first service still works")
        .await
        .unwrap();
    f.assert_no_panic();
}

/// A pool that only a dns name answers with is in use: deleting it is a conflict naming
/// the dns service (it was counted as unused, so the delete went on to a re-parse that
/// refused the dangling name with a 400), and it keeps answering; an unused pool goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_only_a_dns_name_uses_is_not_deleted() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, dns) = (free_addr(), free_addr());
    let cfg = format!(
        "{}{}[[service.dns_name]]\nname = \"www.example.test\"\npool = \"names\"\n\
         [service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n\n{}{}{}",
        admin_toml(admin),
        service_toml("dns", dns, "dns", "web", ""),
        pool_toml("web", "rr", "", &weighted(&[b1.addr])),
        pool_toml("names", "rr", "", &weighted(&[b2.addr])),
        pool_toml("spare", "rr", "", &weighted(&[b2.addr])),
    );
    let f = Fulcrum::start("api_dns_pool", admin, &cfg, &["--workers", "1"]).await;
    let r = req(admin, "DELETE", "/api/v1/pools/names", None, "").await;
    let msg = assert_err(&r, 409, "a pool a dns name answers with");
    assert!(msg.contains("used by service \"dns\""), "{msg}");
    assert_eq!(addrs(&f.pool("names").await), vec![b2.addr.to_string()]);
    let r = req(admin, "DELETE", "/api/v1/pools/spare", None, "").await;
    assert_eq!(r.0, 200, "an unused pool: {}", r.1);
    let (st, _) = f.get("/api/v1/pools/spare").await;
    assert_eq!(st, 404);
    f.assert_no_panic();
}

/// Connects from a chosen client port; sends one line; returns once echoed.
async fn connect_from(vip: SocketAddr, port: u16) -> std::io::Result<()> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    let mut s = tokio::time::timeout(Duration::from_secs(3), sock.connect(vip)).await??;
    round_trip(&mut s, b"explain me").await?;
    s.shutdown().await?;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_backend_real_connections_reach() {
    let backends = [
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
    ];
    let (admin, vip, vip_ring) = (free_addr(), free_addr(), free_addr());
    let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let cfg = format!(
        "{}{}{}{}{}",
        admin_toml(admin),
        service_toml("mag", vip, "tcp", "mag", ""),
        service_toml("ring", vip_ring, "tcp", "ring", ""),
        pool_toml(
            "mag",
            "maglev",
            "hash_key = \"src_ip_port\"\nmaglev_table_size = 251\n",
            &weighted(&all)
        ),
        pool_toml(
            "ring",
            "ring_hash",
            "hash_key = \"src_ip_port\"\n",
            &weighted(&all)
        ),
    );
    let f = Fulcrum::start("api_explain", admin, &cfg, &["--workers", "2"]).await;

    let mut hits = std::collections::HashSet::new();
    for (pool, target) in [("mag", vip), ("ring", vip_ring)] {
        for i in 0..12u16 {
            let port = common::free_port();
            let r = req(
                admin,
                "GET",
                &format!("/api/v1/pools/{pool}/explain?client=127.0.0.1:{port}"),
                None,
                "",
            )
            .await;
            assert_eq!(r.0, 200, "{}", r.1);
            let v = json(&r.1);
            assert_eq!(v["decision"], "hash", "{v}");
            assert_eq!(v["flow"]["dst"], target.to_string(), "{v}");
            let named = v["backend"]["address"].as_str().unwrap().to_owned();
            assert_eq!(v["table"]["owner"], named.as_str(), "{v}");
            if pool == "mag" {
                assert_eq!(v["table"]["kind"], "maglev");
                assert_eq!(v["table"]["size"], 251);
                assert!(v["table"]["slot"].as_u64().unwrap() < 251);
            } else {
                assert_eq!(v["table"]["kind"], "ring_hash");
            }
            let before: Vec<usize> = backends.iter().map(TcpBackend::served).collect();
            connect_from(target, port)
                .await
                .unwrap_or_else(|e| panic!("client port {port}: {e}"));
            let reached = eventually(Duration::from_secs(2), || {
                let before = before.clone();
                let backends = &backends;
                async move { backends.iter().zip(&before).any(|(b, n)| b.served() > *n) }
            })
            .await;
            assert!(reached, "connection {i} reached no backend");
            let got: Vec<String> = backends
                .iter()
                .zip(&before)
                .filter(|(b, n)| b.served() > **n)
                .map(|(b, _)| b.addr.to_string())
                .collect();
            assert_eq!(
                got,
                vec![named.clone()],
                "{pool}: explain said {named} for client port {port}: {v}"
            );
            hits.insert(named);
        }
    }
    assert!(
        hits.len() >= 2,
        "every flow went to one backend: not a meaningful check"
    );

    // Errors.
    let r = req(admin, "GET", "/api/v1/pools/mag/explain", None, "").await;
    assert_err(&r, 400, "missing client");
    let r = req(
        admin,
        "GET",
        "/api/v1/pools/mag/explain?client=nope",
        None,
        "",
    )
    .await;
    assert_err(&r, 400, "bad client");
    let r = req(
        admin,
        "GET",
        "/api/v1/pools/mag/explain?client=1.2.3.4:5&proto=sctp",
        None,
        "",
    )
    .await;
    assert_err(&r, 400, "bad proto");
    let r = req(
        admin,
        "GET",
        "/api/v1/pools/nope/explain?client=1.2.3.4:5",
        None,
        "",
    )
    .await;
    assert_err(&r, 404, "unknown pool");
    // IPv6 client, percent-encoded.
    let r = req(
        admin,
        "GET",
        "/api/v1/pools/mag/explain?client=%5B2001:db8::1%5D:4000&dst=198.18.0.1:80&proto=udp",
        None,
        "",
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(json(&r.1)["flow"]["proto"], "udp");
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_every_contract_name_and_reads_can_be_protected() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip) = (free_addr(), free_addr());
    let dir = common::temp_dir("api_protect_tok");
    let cfg = format!(
        "{}\nprotect_reads = true\n\n{}{}",
        token_config(&dir, admin).trim_end(),
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml("web", "ring_hash", "", &weighted(&[b1.addr]))
    );
    let f = Fulcrum::spawn("api_protect", admin, &cfg, &["--workers", "1"]);
    let start = Instant::now();
    while req_ok(admin, "/readyz").await != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not ready: {}",
            f.stderr_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Probes stay open; everything else needs the token.
    assert_eq!(req(admin, "GET", "/healthz", None, "").await.0, 200);
    for p in [
        "/metrics",
        "/api/v1/pools",
        "/api/v1/services",
        "/api/v1/config",
        "/api/v1/pools/web",
    ] {
        assert_err(&req(admin, "GET", p, None, "").await, 401, p);
        assert_eq!(req(admin, "GET", p, Some(TOKEN), "").await.0, 200, "{p}");
    }
    echo_once(vip, b"x").await.unwrap();
    let r = req(
        admin,
        "PUT",
        &format!("/api/v1/pools/web/backends/{}", b2.addr),
        Some(TOKEN),
        "{}",
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let (_, m) = req(admin, "GET", "/metrics", Some(TOKEN), "").await;
    for name in [
        "fulcrum_backend_up",
        "fulcrum_backend_connections_active",
        "fulcrum_backend_connections_total",
        "fulcrum_backend_failures_total",
        "fulcrum_service_bytes_total",
        "fulcrum_config_reloads_total",
        "fulcrum_pool_changes_total",
        "fulcrum_pool_table_moved_ratio",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{m}"
        );
    }
    let ratio =
        common::metric_value(&m, "fulcrum_pool_table_moved_ratio", &[("pool", "web")]).unwrap();
    // One backend added to one: about half of the hash space moves.
    assert!((0.2..0.8).contains(&ratio), "ring moved ratio {ratio}");
    f.assert_no_panic();
}

async fn req_ok(admin: SocketAddr, path: &str) -> Option<u16> {
    common::http(admin, "GET", path).await.ok().map(|r| r.0)
}

/// Reads until EOF or a reset; how long that took, or `None` if the connection was still
/// open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let res = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    res.ok().map(|()| start.elapsed())
}

/// Admin connections that make no progress are closed: a slowloris head (sent a byte at a
/// time, never finished), a connection that never sends anything, and an idle keep-alive
/// connection after a request. The API keeps answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_time_out() {
    let admin = free_addr();
    let b = TcpBackend::start(Behaviour::Echo).await;
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("svc", free_addr(), "tcp", "p", ""),
        pool_toml("p", "rr", "", &weighted(&[b.addr]))
    );
    let f = Fulcrum::start("admin-timeouts", admin, &cfg, &[]).await;
    let limit = Duration::from_secs(12);

    let slowloris = async {
        let mut s = TcpStream::connect(admin).await.unwrap();
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        // A byte every 200 ms, never the final CRLF: each byte is progress for a plain idle
        // timer, so only the header-read limit can end it.
        let start = Instant::now();
        for (i, byte) in head.iter().cycle().enumerate() {
            if start.elapsed() > limit || i > 200 {
                return None;
            }
            if s.write_all(&[*byte]).await.is_err() {
                return Some(start.elapsed());
            }
            let mut buf = [0u8; 512];
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
            {
                if matches!(r, Ok(0) | Err(_)) {
                    return Some(start.elapsed());
                }
            }
        }
        None
    };
    let silent = async {
        let mut s = TcpStream::connect(admin).await.unwrap();
        closed_within(&mut s, limit).await
    };
    let keep_alive = async {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        closed_within(&mut s, limit).await
    };
    let api = async {
        // The API answers while those connections hang on.
        for _ in 0..5 {
            let (st, body) = req(admin, "GET", "/api/v1/pools/p", None, "").await;
            assert_eq!(st, 200, "{body}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let (slow, silent, idle, ()) = tokio::join!(slowloris, silent, keep_alive, api);
    assert!(
        slow.is_some(),
        "a slowloris admin connection was still open after {limit:?}"
    );
    assert!(
        silent.is_some(),
        "a silent admin connection was still open after {limit:?}"
    );
    assert!(
        idle.is_some(),
        "an idle keep-alive admin connection was still open after {limit:?}"
    );
    eprintln!("closed after: slowloris {slow:?}, silent {silent:?}, idle keep-alive {idle:?}");
    f.assert_no_panic();
}

/// A reload whose token file became empty (or blank) is refused: authentication is never
/// switched off by an empty file, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_an_empty_token_file() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip) = (free_addr(), free_addr());
    let dir = common::temp_dir("api_empty_token");
    let cfg = format!(
        "{}{}{}",
        token_config(&dir, admin),
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml("web", "rr", "", &weighted(&[b1.addr]))
    );
    let f = Fulcrum::start("api_empty_token", admin, &cfg, &["--workers", "1"]).await;
    std::fs::write(dir.join("admin.token"), " \n\t\n").unwrap();
    let r = req(admin, "POST", "/api/v1/reload", Some(TOKEN), "").await;
    let msg = assert_err(&r, 400, "reload with an empty token file");
    assert!(msg.contains("admin.token is empty"), "{msg}");
    // Still protected, by the token read at start.
    let put = format!("/api/v1/pools/web/backends/{}", free_addr());
    let r = req(admin, "PUT", &put, None, r#"{"weight": 1}"#).await;
    assert_err(&r, 401, "mutating call without a token");
    let r = req(admin, "PUT", &put, Some(TOKEN), r#"{"weight": 1}"#).await;
    assert_eq!(r.0, 200, "{}", r.1);
    f.assert_no_panic();
}

/// The admin token rotates with a reload: `token_file` rewritten, then a reload (API or
/// SIGHUP) that reads it; from the reload's answer on, the old token is refused and the new
/// one accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_rotates_with_a_reload() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip) = (free_addr(), free_addr());
    let dir = common::temp_dir("api_token_rotate");
    let cfg = format!(
        "{}{}{}",
        token_config(&dir, admin),
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml("web", "rr", "", &weighted(&[b1.addr]))
    );
    let f = Fulcrum::start("api_token_rotate", admin, &cfg, &["--workers", "1"]).await;
    let put = format!("/api/v1/pools/web/backends/{}", free_addr());
    // Rewritten but not reloaded yet: the running token is still the old one.
    std::fs::write(dir.join("admin.token"), "second-token\n").unwrap();
    let r = req(admin, "PUT", &put, Some("second-token"), r#"{"weight": 1}"#).await;
    assert_err(&r, 401, "new token before the reload");
    let r = req(admin, "POST", "/api/v1/reload", Some(TOKEN), "").await;
    assert_eq!(r.0, 200, "reload with the old token: {}", r.1);
    let r = req(admin, "PUT", &put, Some(TOKEN), r#"{"weight": 1}"#).await;
    assert_err(&r, 401, "old token after the reload");
    let r = req(admin, "PUT", &put, Some("second-token"), r#"{"weight": 1}"#).await;
    assert_eq!(r.0, 200, "new token after the reload: {}", r.1);
    // Again through SIGHUP.
    std::fs::write(dir.join("admin.token"), "third-token\n").unwrap();
    f.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = req(admin, "PUT", &put, Some("third-token"), r#"{"weight": 2}"#).await;
        if r.0 == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token of the rewritten file was not taken after SIGHUP: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = req(admin, "PUT", &put, Some("second-token"), r#"{"weight": 1}"#).await;
    assert_err(&r, 401, "the previous token after SIGHUP");
    f.assert_no_panic();
}

/// One admin request that must be answered within 5 s (a blocked control thread is a
/// failure here, not a hang).
async fn answered(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    tokio::time::timeout(Duration::from_secs(5), req(admin, method, path, None, body))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} not answered within 5 s"))
}

/// Files named through the admin API: a service may only use access log, certificate and
/// key paths that the config file already names (else 400 and no file is created); a FIFO
/// named by the config file (with or without a reader on its other end) fails the reload
/// with a clear error instead of blocking the control thread, and the API, `/healthz` and
/// SIGTERM keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_file_paths_are_constrained_and_fifos_never_block() {
    let admin = free_addr();
    let b = TcpBackend::start(Behaviour::Echo).await;
    let dir = common::temp_dir("api-files");
    let log = dir.join("access.log");
    let outside = dir.join("outside.log");
    let cfg_with = |log: &Path| {
        format!(
            "{}{}[service.access_log]\nformat = \"json\"\npath = \"{}\"\n\n{}",
            admin_toml(admin),
            service_toml("web", free_addr(), "http", "p", ""),
            log.display(),
            pool_toml("p", "rr", "", &weighted(&[b.addr]))
        )
    };
    let mut f = Fulcrum::start("api-files", admin, &cfg_with(&log), &["--workers", "1"]).await;
    assert!(log.exists(), "the file's access log is opened");

    // The API may not name a new file: not as an access log, not as a certificate.
    let vip = free_addr();
    let body = format!(
        r#"{{"listen": "{vip}", "protocol": "http", "pool": "p", "access_log": {{"path": "{}"}}}}"#,
        outside.display()
    );
    let r = answered(admin, "PUT", "/api/v1/services/web2", &body).await;
    let msg = assert_err(&r, 400, "access log outside the file's paths");
    assert!(
        msg.contains("not a file the configuration file names"),
        "{msg}"
    );
    assert!(!outside.exists(), "the API created {}", outside.display());
    let body = format!(
        r#"{{"listen": "{vip}", "protocol": "http", "pool": "p", "tls": {{"certs": [{{"cert": "/etc/passwd", "key": "{}"}}]}}}}"#,
        outside.display()
    );
    let r = answered(admin, "PUT", "/api/v1/services/web2", &body).await;
    assert_err(&r, 400, "certificate outside the file's paths");
    assert!(!outside.exists());
    // The file's own path is fine for another service.
    let body = format!(
        r#"{{"listen": "{vip}", "protocol": "http", "pool": "p", "access_log": {{"path": "{}"}}}}"#,
        log.display()
    );
    let (st, body) = answered(admin, "PUT", "/api/v1/services/web2", &body).await;
    assert_eq!(st, 200, "{body}");

    // A FIFO in the config file: no reader, then a reader holding the other end open (so an
    // open for writing would succeed), then as a certificate.
    let fifo = dir.join("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(st.success(), "mkfifo failed");
    let reload_fails = |what: &'static str| async move {
        let r = answered(admin, "POST", "/api/v1/reload", "").await;
        let msg = assert_err(&r, 400, what);
        assert!(msg.contains("fifo"), "{what}: {msg}");
        let (st, _) = answered(admin, "GET", "/healthz", "").await;
        assert_eq!(st, 200, "{what}: /healthz");
        let (st, body) = answered(admin, "GET", "/api/v1/services", "").await;
        assert_eq!(st, 200, "{what}: {body}");
        assert!(body.contains("web2"), "{what}: nothing changed: {body}");
    };
    f.write_config(&cfg_with(&fifo));
    reload_fails("a FIFO access log without a reader").await;
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("open the FIFO's read end");
    reload_fails("a FIFO access log with a reader").await;
    drop(reader);
    f.write_config(&format!(
        "{}{}[service.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\" }} ]\n\n{}",
        admin_toml(admin),
        service_toml("web", free_addr(), "http", "p", ""),
        fifo.display(),
        fifo.display(),
        pool_toml("p", "rr", "", &weighted(&[b.addr]))
    ));
    reload_fails("a FIFO certificate").await;

    f.signal("TERM");
    let exit = f.wait_exit(Duration::from_secs(10)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM: {exit:?}\n{}",
        f.stderr_tail(20)
    );
    f.assert_no_panic();
}
