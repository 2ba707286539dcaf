//! The fleet control plane (`[cluster]`, docs/cluster.md) against a real 3-member etcd
//! cluster on loopback, started here, and three real `fulcrum run` instances:
//! - `fulcrum cluster push` reaches every instance (write -> applied latency measured over
//!   100 pushes and printed, not asserted); `pull` prints it; `ctl cluster` and the
//!   `fulcrum_cluster_*` metrics show the members and revisions;
//! - a file `check` refuses is not pushed; a bad revision written behind `push`'s back
//!   (invalid config, garbage, a local key, an oversized value) is refused by every
//!   instance with the reason on its member record, and the last good one keeps serving;
//! - one etcd member killed: pushes still arrive;
//! - every etcd member killed: requests keep succeeding, instances say they are
//!   disconnected, and after a restart they catch up to the newest revision;
//! - an instance that stops disappears from the members when its lease expires.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{
    admin_toml, echo_once, eventually, free_port, http, http_body, pool_toml, service_toml,
    temp_dir, Behaviour, Fulcrum, TcpBackend,
};
use fulcrum_xdp::testing::{have_program, require};
use serde_json::Value;

const PREFIX: &str = "/fulcrum/test";

fn cluster_toml(endpoints: &[String], member: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[cluster]\netcd = [{}]\nprefix = \"{PREFIX}\"\nmember = \"{member}\"\n",
        list.join(", ")
    )
}

/// The shared part: one TCP service over one pool of `backend` with `weight`.
fn shared_toml(listen: SocketAddr, backend: SocketAddr, weight: u32) -> String {
    format!(
        "{}\n{}",
        service_toml("web", listen, "tcp", "web", ""),
        pool_toml("web", "maglev", "", &[(backend, weight)])
    )
}

async fn cluster(f: &Fulcrum) -> Value {
    let (code, body) = http(f.admin, "GET", "/api/v1/cluster").await.unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until every instance runs revision `rev` (or a later one).
async fn wait_applied(fleet: &[Fulcrum], rev: i64, limit: Duration) {
    for f in fleet {
        let ok = eventually(limit, || async {
            cluster(f).await["applied_revision"].as_i64() >= Some(rev)
        })
        .await;
        assert!(
            ok,
            "{} did not apply revision {rev}: {}\n{}",
            f.admin,
            cluster(f).await,
            f.stderr_tail(30)
        );
    }
}

fn fulcrum_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(args)
        .output()
        .expect("run fulcrum")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Writes `doc` as a new revision, retrying while the cluster elects a leader.
async fn put_doc(endpoints: &[String], doc: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fulcrum_cluster::push(endpoints, PREFIX, doc).await {
            Ok(r) => return r,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot write to etcd: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_follows_etcd_and_survives_it() {
    if !require(
        "fleet_follows_etcd_and_survives_it",
        have_program("etcd"),
        "etcd (apt-get install etcd-server)",
    ) {
        return;
    }
    let mut etcd = Etcd::start();
    let endpoints = etcd.endpoints();
    etcd.wait_healthy(Duration::from_secs(30)).await;

    let backend = TcpBackend::start(Behaviour::Echo).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut fleet = Vec::new();
    for i in 0..3 {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = format!(
            "{}{}",
            admin_toml(admin),
            cluster_toml(&endpoints, &format!("lb{i}"))
        );
        fleet.push(
            Fulcrum::start(&format!("cluster-lb{i}"), admin, &cfg, &["--workers", "1"]).await,
        );
    }
    // Every instance connects and sees the three members.
    for f in &fleet {
        let ok = eventually(Duration::from_secs(15), || async {
            let c = cluster(f).await;
            c["connected"] == true && c["members"].as_array().map(Vec::len) == Some(3)
        })
        .await;
        assert!(
            ok,
            "{}: {}\n{}",
            f.admin,
            cluster(f).await,
            f.stderr_tail(30)
        );
    }

    // 1. `cluster push` checks the file as `check` does and writes the shared part.
    let dir = temp_dir("cluster-push");
    let file = dir.join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            "[admin]\nlisten = \"127.0.0.1:1\"\n\n{}",
            shared_toml(listen, backend.addr, 1)
        ),
    )
    .unwrap();
    let etcd_arg = endpoints.join(",");
    let out = fulcrum_cmd(&[
        "cluster",
        "push",
        "-c",
        file.to_str().unwrap(),
        "--etcd",
        &etcd_arg,
        "--prefix",
        PREFIX,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rev: i64 = stdout
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {stdout:?}"));
    wait_applied(&fleet, rev, Duration::from_secs(10)).await;
    echo_once(listen, b"hello fleet").await.unwrap();
    let out = fulcrum_cmd(&["cluster", "pull", "--etcd", &etcd_arg, "--prefix", PREFIX]);
    let pulled = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success());
    assert!(
        pulled.contains("name = \"web\"") && !pulled.contains("[admin]"),
        "{pulled}"
    );
    // The local [admin] of the pushed file did not travel: each instance keeps its own.
    for f in &fleet {
        assert_eq!(http(f.admin, "GET", "/healthz").await.unwrap().0, 200);
        assert_eq!(
            f.metric("fulcrum_cluster_revision", &[]).await,
            Some(rev as f64)
        );
        assert_eq!(f.metric("fulcrum_cluster_connected", &[]).await, Some(1.0));
        assert_eq!(f.metric("fulcrum_cluster_members", &[]).await, Some(3.0));
    }
    let admin0 = format!("http://{}", fleet[0].admin);
    let out = fulcrum_cmd(&["ctl", "--admin", &admin0, "cluster"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    for m in ["lb0", "lb1", "lb2"] {
        assert!(text.contains(m), "{text}");
    }
    assert!(
        text.contains("every member runs the newest revision"),
        "{text}"
    );

    // 2. A file `check` refuses is not pushed (exit 2, the revision stays).
    std::fs::write(
        &file,
        "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\npool = \"nope\"\n",
    )
    .unwrap();
    let out = fulcrum_cmd(&[
        "cluster",
        "push",
        "-c",
        file.to_str().unwrap(),
        "--etcd",
        &etcd_arg,
        "--prefix",
        PREFIX,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let (now, _) = fulcrum_cluster::pull(&endpoints, PREFIX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now, rev, "a refused file wrote nothing");

    // 3. Bad revisions written behind push's back: refused everywhere, reason on the
    // member record, the last good one keeps serving.
    let oversized = format!(
        "# {}\n",
        "x".repeat(fulcrum_core::cluster::MAX_DOCUMENT_BYTES)
    );
    let bad_docs: [(&str, &str); 4] = [
        (
            "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\npool = \"nope\"\n",
            "nope",
        ),
        ("this is = = not toml", "not TOML"),
        ("[admin]\nlisten = \"127.0.0.1:1\"\n", "stays local"),
        (&oversized, "at most"),
    ];
    for (doc, why) in bad_docs {
        let bad = put_doc(&endpoints, doc).await;
        for f in &fleet {
            let ok = eventually(Duration::from_secs(10), || async {
                cluster(f).await["refused"]["revision"].as_i64() == Some(bad)
            })
            .await;
            assert!(ok, "{}: {}", f.admin, cluster(f).await);
            let c = cluster(f).await;
            assert_eq!(c["applied_revision"].as_i64(), Some(rev));
            let reason = c["refused"]["error"].as_str().unwrap_or_default();
            assert!(reason.contains(why), "{why:?} not in {reason:?}");
        }
        // On etcd: every member's record carries the refusal.
        let ok = eventually(Duration::from_secs(10), || async {
            let ms = fulcrum_cluster::members(&endpoints, PREFIX).await.unwrap();
            ms.len() == 3
                && ms
                    .iter()
                    .all(|m| m.refused.as_ref().map(|r| r.revision) == Some(bad))
        })
        .await;
        assert!(ok, "member records do not show the refusal of {bad}");
        echo_once(listen, b"still serving").await.unwrap();
    }
    let out = fulcrum_cmd(&["ctl", "--admin", &admin0, "cluster"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("disagreement: lb1 runs revision"), "{text}");

    // 4. Write -> applied on every instance, over 100 pushes (measured, not asserted).
    let mut lat: Vec<Duration> = Vec::new();
    let mut puts: Vec<Duration> = Vec::new();
    let mut last = rev;
    for i in 0..100u32 {
        let doc = shared_toml(listen, backend.addr, 1 + i % 50);
        let t0 = Instant::now();
        let r = fulcrum_cluster::push(&endpoints, PREFIX, &doc)
            .await
            .unwrap();
        puts.push(t0.elapsed());
        let mut pending: Vec<usize> = (0..fleet.len()).collect();
        let deadline = t0 + Duration::from_secs(10);
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &k in &pending {
                if cluster(&fleet[k]).await["applied_revision"].as_i64() >= Some(r) {
                    lat.push(t0.elapsed());
                } else {
                    still.push(k);
                }
            }
            pending = still;
            assert!(
                Instant::now() < deadline,
                "push {i} (revision {r}) not applied everywhere"
            );
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        last = r;
    }
    lat.sort();
    println!(
        "cluster push write->applied over {} (push, instance) pairs: p50 {:?} p99 {:?} max {:?}",
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    puts.sort();
    println!(
        "  of which the write itself (connect + put, acknowledged by the etcd majority): p50 {:?} p99 {:?}",
        percentile(&puts, 0.50),
        percentile(&puts, 0.99)
    );
    echo_once(listen, b"after 100 pushes").await.unwrap();

    // 4b. Concurrent admin API changes on two instances: each becomes a transaction on the
    // shared configuration conditioned on the revision it read, so both survive, on every
    // instance.
    for round in 0..5u16 {
        let a = SocketAddr::from(([127, 0, 0, 2], 40_000 + round));
        let b = SocketAddr::from(([127, 0, 0, 3], 40_000 + round));
        let (pa, pb) = (
            format!("/api/v1/pools/web/backends/{a}"),
            format!("/api/v1/pools/web/backends/{b}"),
        );
        let (ra, rb) = tokio::join!(
            http_body(fleet[0].admin, "PUT", &pa, "{\"weight\": 2}"),
            http_body(fleet[1].admin, "PUT", &pb, "{\"weight\": 3}"),
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.0, 200, "{}", ra.1);
        assert_eq!(rb.0, 200, "{}", rb.1);
    }
    let (edited, doc) = fulcrum_cluster::pull(&endpoints, PREFIX)
        .await
        .unwrap()
        .unwrap();
    let doc = String::from_utf8(doc).unwrap();
    wait_applied(&fleet, edited, Duration::from_secs(10)).await;
    for round in 0..5u16 {
        for ip in [2u8, 3] {
            let addr = SocketAddr::from(([127, 0, 0, ip], 40_000 + round));
            assert!(
                doc.contains(&addr.to_string()),
                "{addr} lost from the fleet's configuration:\n{doc}"
            );
            for f in &fleet {
                assert!(
                    common::find_backend(&f.pool("web").await, addr).is_some(),
                    "{} lacks {addr}",
                    f.admin
                );
            }
        }
    }
    println!("10 concurrent admin API changes on two instances: all 10 in revision {edited} on every instance");

    // 5. One etcd member killed: pushes still reach everyone.
    etcd.kill(0);
    let doc = shared_toml(listen, backend.addr, 77);
    let r = put_doc(&endpoints, &doc).await;
    wait_applied(&fleet, r, Duration::from_secs(20)).await;
    echo_once(listen, b"one etcd member down").await.unwrap();
    last = last.max(r);

    // 6. Every etcd member killed: requests keep succeeding; instances say they are
    // disconnected and keep their revision.
    etcd.kill(1);
    etcd.kill(2);
    for f in &fleet {
        let ok = eventually(Duration::from_secs(20), || async {
            f.metric("fulcrum_cluster_connected", &[]).await == Some(0.0)
        })
        .await;
        assert!(ok, "{} still says connected", f.admin);
    }
    let outage = Instant::now();
    let (mut sent, mut failed) = (0u32, 0u32);
    while outage.elapsed() < Duration::from_secs(10) && sent < 2000 {
        sent += 1;
        if echo_once(listen, b"etcd is down").await.is_err() {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("all etcd members down for 10 s: {sent} requests, {failed} failed");
    assert_eq!(failed, 0);
    for f in &fleet {
        assert_eq!(
            cluster(f).await["applied_revision"].as_i64(),
            Some(last),
            "{}",
            f.admin
        );
    }

    // 7. etcd back: the fleet reconnects and catches up to the newest revision only.
    for i in 0..3 {
        etcd.spawn(i);
    }
    etcd.wait_healthy(Duration::from_secs(30)).await;
    let reloads_before: Vec<f64> = {
        let mut v = Vec::new();
        for f in &fleet {
            v.push(
                f.metric("fulcrum_config_reloads_total", &[("result", "ok")])
                    .await
                    .unwrap_or(0.0),
            );
        }
        v
    };
    let mut newest = 0;
    for w in [11, 12, 13] {
        newest = put_doc(&endpoints, &shared_toml(listen, backend.addr, w)).await;
    }
    let t_catch = Instant::now();
    wait_applied(&fleet, newest, Duration::from_secs(30)).await;
    println!(
        "caught up to revision {newest} after the restart in {:?}",
        t_catch.elapsed()
    );
    for (f, before) in fleet.iter().zip(reloads_before) {
        let c = cluster(f).await;
        assert_eq!(c["connected"], true, "{c}");
        assert_eq!(c["applied_revision"].as_i64(), Some(newest));
        let after = f
            .metric("fulcrum_config_reloads_total", &[("result", "ok")])
            .await
            .unwrap_or(0.0);
        println!(
            "{}: applied {} revision(s) to catch up with 3 writes",
            f.admin,
            after - before
        );
        assert!(after - before <= 3.0);
    }
    echo_once(listen, b"caught up").await.unwrap();

    // 8. A stopped instance's lease expires and it leaves the members.
    let gone = fleet.pop().unwrap();
    drop(gone);
    let ok = eventually(Duration::from_secs(30), || async {
        cluster(&fleet[0]).await["members"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert!(ok, "{}", cluster(&fleet[0]).await);
    assert_eq!(
        fleet[0].metric("fulcrum_cluster_members", &[]).await,
        Some(2.0)
    );
    for f in &fleet {
        f.assert_no_panic();
    }
}
