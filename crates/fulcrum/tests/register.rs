//! Backends that register themselves (`fulcrum register`, `[pool.discovery] etcd`;
//! docs/cluster.md, "Registered backends") against a real 3-member etcd cluster on
//! loopback and real `fulcrum run` instances:
//! - a registered backend joins the pool of every instance; SIGTERM deregisters it at once;
//!   a killed one (no more heartbeats) leaves after its TTL, draining: an established
//!   connection to it keeps working, and it leaves the pool once that connection closed;
//! - keys with garbage, an oversized value, a wrong prefix or a mismatched address are
//!   refused (`fulcrum_registry_refused_total{reason}`), never a panic;
//! - bad `fulcrum register` arguments exit 2 with what would be valid;
//! - churn: 1,000 registered backends, some expiring and new ones registering every second
//!   (`FULCRUM_CHURN_SECS`, default 20; the 5-minute run of docs/cluster.md sets 300;
//!   `FULCRUM_CHURN_PER_SEC`, default 20, spread evenly over each second;
//!   `FULCRUM_CHURN_TOTAL`, default 1000; `FULCRUM_CHURN_TTL_SECS`, default 5):
//!   established connections to backends that stay keep working on their backend; CPU,
//!   table rebuilds per second and memory of each instance are printed.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    clippy::many_single_char_names
)]

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{
    admin_toml, connect, echo_once, eventually, find_backend, free_port, metric_value, round_trip,
    service_toml, Behaviour, Fulcrum, TcpBackend,
};
use fulcrum_cluster::etcd_client::PutOptions;
use fulcrum_xdp::testing::{have_program, require};

const CLUSTER_PREFIX: &str = "/fulcrum/regtest";
const REG_PREFIX: &str = "/services";

fn config(
    admin: SocketAddr,
    endpoints: &[String],
    member: &str,
    listen: SocketAddr,
    scheduler: &str,
) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "{}[cluster]\netcd = [{}]\nprefix = \"{CLUSTER_PREFIX}\"\nmember = \"{member}\"\n\n{}\n[[pool]]\nname = \"web\"\nscheduler = \"{scheduler}\"\n[pool.discovery]\netcd = \"{REG_PREFIX}/web/\"\n",
        admin_toml(admin),
        list.join(", "),
        service_toml("web", listen, "tcp", "web", ""),
    )
}

/// A `fulcrum register` process; killed (by PID) on drop.
struct Registered(Child);

impl Registered {
    fn start(endpoints: &[String], address: SocketAddr, extra: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args([
                "register",
                "--etcd",
                &endpoints.join(","),
                "--prefix",
                REG_PREFIX,
            ])
            .args(["--pool", "web", "--address", &address.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fulcrum register");
        Self(child)
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.0.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn in_pool(f: &Fulcrum, addr: SocketAddr) -> Option<serde_json::Value> {
    find_backend(&f.pool("web").await, addr)
}

async fn pool_len(f: &Fulcrum) -> usize {
    f.pool("web").await["backends"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_backends_join_leave_and_drain() {
    if !require(
        "registered_backends_join_leave_and_drain",
        have_program("etcd"),
        "etcd (apt-get install etcd-server)",
    ) {
        return;
    }
    // Bad arguments: exit 2, saying what would be valid; nothing is written.
    for (args, want) in [
        (vec!["--address", "nonsense"], "--address"),
        (vec!["--address", "127.0.0.1:80", "--ttl", "1ms"], "--ttl"),
        (vec!["--address", "127.0.0.1:80", "--zone", "a b"], "--zone"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args([
                "register",
                "--etcd",
                "http://127.0.0.1:1",
                "--prefix",
                REG_PREFIX,
                "--pool",
                "web",
            ])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(want) && err.contains("help:"),
            "{args:?}: {err}"
        );
    }

    let etcd = Etcd::start();
    let endpoints = etcd.endpoints();
    etcd.wait_healthy(Duration::from_secs(30)).await;

    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut fleet = Vec::new();
    for i in 0..2 {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = config(admin, &endpoints, &format!("lb{i}"), listen, "rr");
        fleet.push(
            Fulcrum::start(&format!("register-lb{i}"), admin, &cfg, &["--workers", "1"]).await,
        );
    }

    // Two backends register; both instances serve them.
    let mut r1 = Registered::start(&endpoints, b1.addr, &["--ttl", "3s", "--zone", "a"]);
    let mut r2 = Registered::start(&endpoints, b2.addr, &["--weight", "2"]);
    for f in &fleet {
        let ok = eventually(Duration::from_secs(15), || async {
            in_pool(f, b1.addr).await.is_some() && in_pool(f, b2.addr).await.is_some()
        })
        .await;
        assert!(
            ok,
            "{}: {}\n{}",
            f.admin,
            f.pool("web").await,
            f.stderr_tail(30)
        );
        assert_eq!(f.backend("web", b2.addr).await["weight"], 2);
        assert_eq!(f.backend_state("web", b1.addr).await, "up");
    }
    for _ in 0..4 {
        echo_once(listen, b"through a registered backend")
            .await
            .unwrap();
    }
    assert!(
        b1.served() > 0 && b2.served() > 0,
        "both registered backends serve"
    );

    // SIGTERM: the lease is revoked, the backend leaves at once (idle: nothing to drain).
    let t = Instant::now();
    r2.signal("TERM");
    let st = r2
        .wait_exit(Duration::from_secs(5))
        .expect("register exits on SIGTERM");
    assert!(st.success(), "register exit status {st:?}");
    for f in &fleet {
        let ok = eventually(Duration::from_secs(3), || async {
            in_pool(f, b2.addr).await.is_none()
        })
        .await;
        assert!(
            ok,
            "{}: b2 still in the pool after SIGTERM: {}",
            f.admin,
            f.pool("web").await
        );
    }
    let deregistered = t.elapsed();
    println!("SIGTERM -> gone from both instances: {deregistered:?}");
    assert!(deregistered < Duration::from_secs(3));

    // An established connection to b1, then b1's heartbeat stops (SIGKILL: no revoke).
    let mut held = connect(listen).await.unwrap();
    round_trip(&mut held, b"before").await.unwrap();
    // The instance the kernel gave the connection to holds it on b1.
    let mut holder = None;
    for f in &fleet {
        if f.backend("web", b1.addr).await["active_connections"] == 1 {
            holder = Some(f);
        }
    }
    let holder = holder.expect("one instance holds the connection");
    let _ = r1.0.kill();
    let _ = r1.0.wait();
    let killed = Instant::now();
    // After its TTL (3 s; etcd checks leases every 500 ms) it drains where the connection
    // is (state draining, the connection counted), and leaves at once elsewhere.
    let ok = eventually(Duration::from_secs(10), || async {
        in_pool(holder, b1.addr)
            .await
            .is_some_and(|b| b["state"] == "draining")
    })
    .await;
    assert!(
        ok,
        "{}: b1 not draining after its TTL: {}\n{}",
        holder.admin,
        holder.pool("web").await,
        holder.stderr_tail(20)
    );
    let expired = killed.elapsed();
    println!("heartbeat stopped -> draining: {expired:?} (TTL 3 s)");
    assert!(
        expired >= Duration::from_secs(2),
        "left before its TTL: {expired:?}"
    );
    assert_eq!(
        holder.backend("web", b1.addr).await["active_connections"],
        1
    );
    for i in 0..5 {
        round_trip(&mut held, format!("still {i}").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(holder.backend_state("web", b1.addr).await, "draining");
    let served = b1.served();
    assert!(
        echo_once(listen, b"no backend").await.is_err(),
        "a new connection was served"
    );
    assert_eq!(
        b1.served(),
        served,
        "a new connection reached the drained backend"
    );
    // The other instance had no connection to it: it is gone there.
    for f in fleet.iter().filter(|f| f.admin != holder.admin) {
        let ok = eventually(Duration::from_secs(3), || async {
            in_pool(f, b1.addr).await.is_none()
        })
        .await;
        assert!(
            ok,
            "{}: idle expired backend not removed: {}",
            f.admin,
            f.pool("web").await
        );
    }
    // The connection closes: b1 leaves the holder's pool too.
    drop(held);
    let ok = eventually(Duration::from_secs(5), || async {
        in_pool(holder, b1.addr).await.is_none()
    })
    .await;
    assert!(
        ok,
        "drained backend not removed after its last connection: {}",
        holder.pool("web").await
    );

    // Registering again: back in service.
    let _r1 = Registered::start(&endpoints, b1.addr, &["--ttl", "3s"]);
    for f in &fleet {
        let ok = eventually(Duration::from_secs(10), || async {
            in_pool(f, b1.addr)
                .await
                .is_some_and(|b| b["state"] == "up")
        })
        .await;
        assert!(ok, "{}: b1 not back: {}", f.admin, f.pool("web").await);
    }
    echo_once(listen, b"back").await.unwrap();

    // Keys that are not registrations: refused, counted, logged; the pool is unchanged.
    let mut c = fulcrum_cluster::connect(&endpoints).await.unwrap();
    let big = format!(
        r#"{{"address":"127.0.0.1:9","zone":"{}"}}"#,
        "z".repeat(4096)
    );
    let bad: [(&str, String, &str); 5] = [
        (
            "/services/web/garbage",
            r#"{"address":"127.0.0.1:9"}"#.into(),
            "bad_key",
        ),
        (
            "/services/web/127.0.0.1:9",
            "\u{1}garbage".into(),
            "bad_value",
        ),
        ("/services/web/127.0.0.1:10", big, "too_large"),
        (
            "/services/web/deeper/127.0.0.1:11",
            r#"{"address":"127.0.0.1:11"}"#.into(),
            "wrong_prefix",
        ),
        (
            "/services/web/127.0.0.1:12",
            r#"{"address":"127.0.0.2:12"}"#.into(),
            "address_mismatch",
        ),
    ];
    for (k, v, _) in &bad {
        c.put(*k, v.as_str(), None::<PutOptions>).await.unwrap();
    }
    for f in &fleet {
        for (k, _, reason) in &bad {
            let ok = eventually(Duration::from_secs(5), || async {
                metric_value(
                    &f.metrics().await,
                    "fulcrum_registry_refused_total",
                    &[("pool", "web"), ("reason", reason)],
                )
                .is_some_and(|n| n >= 1.0)
            })
            .await;
            assert!(
                ok,
                "{}: {k} not refused as {reason}:\n{}",
                f.admin,
                f.stderr_tail(20)
            );
        }
        assert_eq!(pool_len(f).await, 1, "{}", f.pool("web").await);
        assert!(
            f.stderr().contains("refused a registration"),
            "refusals are logged"
        );
        f.assert_no_panic();
    }
    // Each is reported with its key and reason on the member's status key
    // (`P/members/NAME`, `registry_refused`), in `GET /api/v1/cluster` and `ctl cluster`.
    let listed = |list: &[serde_json::Value], k: &str, reason: &str| {
        list.iter().any(|r| {
            r["pool"] == "web"
                && r["key"] == k
                && r["reason"] == reason
                && r["revision"].as_i64().is_some_and(|n| n > 0)
                && r["error"].as_str().is_some_and(|e| !e.is_empty())
        })
    };
    for (i, f) in fleet.iter().enumerate() {
        let member = format!("lb{i}");
        let ok = eventually(Duration::from_secs(10), || async {
            let list = refused_on_status_key(&c, &member).await;
            bad.iter().all(|(k, _, reason)| listed(&list, k, reason))
        })
        .await;
        let list = refused_on_status_key(&c, &member).await;
        assert!(ok, "{member}: status key lacks a refusal: {list:#?}");
        assert_eq!(list.len(), bad.len(), "{list:#?}");
        // The reasons say what was wrong (and what would be valid).
        let why = |k: &str| {
            list.iter()
                .find(|r| r["key"] == k)
                .and_then(|r| r["error"].as_str())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            why("/services/web/127.0.0.1:10").contains("at most 1024"),
            "{list:#?}"
        );
        assert!(
            why("/services/web/garbage").contains("canonical form"),
            "{list:#?}"
        );
        assert!(
            why("/services/web/deeper/127.0.0.1:11").contains("directly under the watched prefix"),
            "{list:#?}"
        );
        // Seen by the other instance's view of the fleet too.
        let other = &fleet[1 - i];
        let (st, body) = other.get("/api/v1/cluster").await;
        assert_eq!(st, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let view = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["member"] == member.as_str())
            .map(|m| {
                m["registry_refused"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        assert!(
            bad.iter().all(|(k, _, reason)| listed(&view, k, reason)),
            "{}'s view of {member}: {view:#?}",
            other.admin
        );
        let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["ctl", "--admin", &format!("http://{}", f.admin), "cluster"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!(
                "registration refused by {member}: pool web key /services/web/garbage (bad_key,"
            )),
            "{text}"
        );
    }
    for (k, _, _) in &bad {
        c.delete(*k, None).await.unwrap();
    }
    // Deleted: no longer reported.
    for i in 0..fleet.len() {
        let member = format!("lb{i}");
        let ok = eventually(Duration::from_secs(10), || async {
            refused_on_status_key(&c, &member).await.is_empty()
        })
        .await;
        assert!(
            ok,
            "{member}: deleted keys still reported: {:#?}",
            refused_on_status_key(&c, &member).await
        );
    }
}

/// The registration keys member `member` reports refused on its status key
/// (`P/members/NAME`, `registry_refused`).
async fn refused_on_status_key(
    c: &fulcrum_cluster::etcd_client::Client,
    member: &str,
) -> Vec<serde_json::Value> {
    let mut c = c.clone();
    let key = fulcrum_core::cluster::member_key(CLUSTER_PREFIX, member);
    let got = c.get(key, None).await.unwrap();
    let rec: serde_json::Value = got.kvs().first().map_or(serde_json::Value::Null, |kv| {
        serde_json::from_slice(kv.value()).unwrap()
    });
    rec["registry_refused"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `/proc/PID/stat` utime + stime, in clock ticks (100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A fake backend address (nothing listens; no traffic is sent to it).
fn fake(i: u32) -> SocketAddr {
    SocketAddr::from((
        [127, 1, (i / 250 % 250) as u8, (i % 250 + 1) as u8],
        9 + (i / 62_500) as u16,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_registered_backends_churn() {
    if !require(
        "thousand_registered_backends_churn",
        have_program("etcd"),
        "etcd (apt-get install etcd-server)",
    ) {
        return;
    }
    let secs: u64 = std::env::var("FULCRUM_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let per_sec: u32 = std::env::var("FULCRUM_CHURN_PER_SEC")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let total: u32 = std::env::var("FULCRUM_CHURN_TOTAL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let ttl = Duration::from_secs(
        std::env::var("FULCRUM_CHURN_TTL_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );

    let etcd = Etcd::start();
    let endpoints = etcd.endpoints();
    etcd.wait_healthy(Duration::from_secs(30)).await;

    let stable: Vec<TcpBackend> = backends(4).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut fleet = Vec::new();
    for i in 0..2 {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = config(admin, &endpoints, &format!("churn{i}"), listen, "maglev");
        fleet.push(
            Fulcrum::start(
                &format!("register-churn{i}"),
                admin,
                &cfg,
                &["--workers", "1"],
            )
            .await,
        );
    }
    let client = fulcrum_cluster::connect(&endpoints).await.unwrap();
    let hb = |addr: SocketAddr| fulcrum_cluster::register::Heartbeat {
        key: fulcrum_core::registry::key(REG_PREFIX, "web", addr),
        value: fulcrum_core::registry::value(addr, 1, Some("a")),
        ttl,
    };
    // One heartbeat task per registration on one shared client: aborting it stops the
    // heartbeat without a revoke, so the registration expires after its TTL.
    let spawn_hb = |addr: SocketAddr| {
        let mut c = client.clone();
        let h = hb(addr);
        tokio::spawn(async move {
            let mut backoff = fulcrum_core::cluster::Backoff::default();
            let stop = std::future::pending::<()>();
            let stop = std::pin::pin!(stop);
            let _ = fulcrum_cluster::register::session(&mut c, &h, stop, &mut backoff).await;
        })
    };
    let _stable_hb: Vec<_> = stable.iter().map(|b| spawn_hb(b.addr)).collect();
    for f in &fleet {
        let ok = eventually(Duration::from_secs(15), || async {
            pool_len(f).await == stable.len()
        })
        .await;
        assert!(ok, "{}: {}", f.admin, f.pool("web").await);
    }
    // Established connections (only the stable backends are registered now).
    let mut held = Vec::new();
    for i in 0..16 {
        let mut s = connect(listen).await.unwrap();
        round_trip(&mut s, format!("hello {i}").as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    let addrs: Vec<SocketAddr> = stable.iter().map(|b| b.addr).collect();
    let mut before = Vec::new();
    for f in &fleet {
        before.push(active(f, &addrs).await);
    }
    assert_eq!(before.iter().flatten().sum::<u64>(), 16, "{before:?}");

    // 996 more register.
    let mut next: u32 = 0;
    let mut live: VecDeque<(SocketAddr, tokio::task::JoinHandle<()>)> = VecDeque::new();
    while live.len() + stable.len() < total as usize {
        let a = fake(next);
        next += 1;
        live.push_back((a, spawn_hb(a)));
    }
    for f in &fleet {
        let ok = eventually(Duration::from_secs(60), || async {
            pool_len(f).await >= total as usize
        })
        .await;
        assert!(ok, "{}: {} backends", f.admin, pool_len(f).await);
    }
    println!("{total} registered; churning {per_sec}/s (expire + register) for {secs} s");

    // Churn: every second the `per_sec` oldest stop heartbeating (they expire after the
    // TTL) and as many new ones register.
    let mut start = Vec::new();
    for f in &fleet {
        start.push((cpu_ticks(f.pid), rss_kib(f.pid), changes(f).await));
    }
    let t0 = Instant::now();
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); fleet.len()];
    let mut failures = 0usize;
    // Spread over the second: one expires and one registers every 1/per_sec s.
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec.max(1));
    let mut n = 0u64;
    let mut registered = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        n += 1;
        if let Some((_, h)) = live.pop_front() {
            h.abort();
        }
        let a = fake(next);
        next += 1;
        live.push_back((a, spawn_hb(a)));
        registered += 1;
        if n % u64::from(per_sec.max(1)) != 0 {
            continue;
        }
        // Every second: the established connections keep working.
        for (i, s) in held.iter_mut().enumerate() {
            if round_trip(s, format!("tick {n} conn {i}").as_bytes())
                .await
                .is_err()
            {
                failures += 1;
            }
        }
        if n % (5 * u64::from(per_sec.max(1))) == 0 {
            for (i, f) in fleet.iter().enumerate() {
                rss[i].push(rss_kib(f.pid));
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut after = Vec::new();
    for f in &fleet {
        after.push(active(f, &addrs).await);
    }
    for (i, f) in fleet.iter().enumerate() {
        let (c0, r0, ch0) = start[i];
        let cpu = (cpu_ticks(f.pid) - c0) as f64 / 100.0 / wall * 100.0;
        let rebuilds = (changes(f).await - ch0) / wall;
        let r = &rss[i];
        let moved = metric_value(
            &f.metrics().await,
            "fulcrum_pool_table_moved_ratio",
            &[("pool", "web")],
        )
        .unwrap_or(-1.0);
        println!(
            "instance {i}: CPU {cpu:.1} % of a core, pool changes (table rebuilds) {rebuilds:.2}/s, last Maglev moved ratio {moved:.4}, RSS KiB start {r0} samples {r:?} end {}, pool size {}",
            rss_kib(f.pid),
            pool_len(f).await
        );
        f.assert_no_panic();
    }
    println!("registered {registered} in {wall:.0} s ({:.1}/s); held-connection round-trip failures: {failures}", registered as f64 / wall);
    assert_eq!(
        failures, 0,
        "an established connection to a backend that stays broke"
    );
    assert_eq!(
        before, after,
        "established connections moved between backends"
    );
    // Memory flat: the last sample within 25 % (+4 MiB) of the first.
    for r in &rss {
        if let (Some(first), Some(last)) = (r.first(), r.last()) {
            assert!(*last <= first + first / 4 + 4096, "RSS grew: {r:?}");
        }
    }
    for (_, h) in live {
        h.abort();
    }
}

/// Active connections of each of `addrs` on `f`.
async fn active(f: &Fulcrum, addrs: &[SocketAddr]) -> Vec<u64> {
    let p = f.pool("web").await;
    addrs
        .iter()
        .map(|a| find_backend(&p, *a).map_or(0, |b| b["active_connections"].as_u64().unwrap_or(0)))
        .collect()
}

/// `fulcrum_pool_changes_total{pool="web"}` of `f`.
async fn changes(f: &Fulcrum) -> f64 {
    metric_value(
        &f.metrics().await,
        "fulcrum_pool_changes_total",
        &[("pool", "web")],
    )
    .unwrap_or(0.0)
}

async fn backends(n: usize) -> Vec<TcpBackend> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(TcpBackend::start(Behaviour::Echo).await);
    }
    v
}
