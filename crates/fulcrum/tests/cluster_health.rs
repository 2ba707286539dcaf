//! One health view for a fleet (`[cluster] health_quorum`, docs/cluster.md) against a real
//! 3-member etcd cluster on loopback and three real `fulcrum run` instances:
//! - one member partitioned from one backend (an nftables rule dropping that instance's
//!   packets to the backend, matched by the instance's cgroup: every instance runs on
//!   loopback in this namespace, so the rule is on the instance's own sockets) does not
//!   change the fleet's table under `majority`; compared with `any` and `all`, and with two
//!   members partitioned; every instance builds the same table; the time from a member's
//!   changed verdict to every instance's table is measured and printed;
//! - passive ejection stays local and is shown as such;
//! - one etcd member killed: no change; every etcd member killed (15 s here,
//!   `FULCRUM_ETCD_OUTAGE_SECS` for longer): no failed request, and after etcd returns a push
//!   is applied everywhere, once (no replay), and the fleet view is back;
//! - etcd unreachable at start: the instance serves its local file, says why and retries,
//!   and joins the fleet when etcd comes up.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::many_single_char_names,
    clippy::float_cmp
)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{
    admin_toml, echo_once, eventually, free_port, http, pool_toml, service_toml, Behaviour,
    Fulcrum, TcpBackend,
};
use fulcrum_xdp::testing::{have_program, require, require_root};
use serde_json::Value;

// etcd: `common::etcd::Etcd` (as in tests/cluster.rs)

// ------------------------------------------------------------------------------------
// a partition between one instance and one backend
// ------------------------------------------------------------------------------------

/// The cgroup v2 mount, if it is under /sys/fs/cgroup (where nft resolves cgroup paths).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .find(|p| p.starts_with("/sys/fs/cgroup"))
}

/// Instances cut off from backends: each partitioned instance is moved into a cgroup of
/// its own, and an nftables rule (in a table of this test's own) drops what that cgroup's
/// sockets send to the backend: the health checks and the proxied connections alike. Rules
/// and cgroups go when dropped.
struct Partitions {
    mount: PathBuf,
    /// `quorum_PID_N`: tests of this file run at once in one process.
    table: String,
    groups: Vec<(String, u32)>,
}

static PARTITIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Partitions {
    fn new() -> Self {
        let mount = cgroup2_mount().expect("a cgroup2 mount under /sys/fs/cgroup");
        let table = format!(
            "quorum_{}_{}",
            std::process::id(),
            PARTITIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        nft(&format!("add table inet {table}"));
        nft(&format!(
            "add chain inet {table} out {{ type filter hook output priority 0 ; policy accept ; }}"
        ));
        Self {
            mount,
            table,
            groups: Vec::new(),
        }
    }

    /// Cuts the instance `pid` off from `backend` (TCP to its port on 127.0.0.1).
    fn cut(&mut self, name: &str, pid: u32, backend: SocketAddr) {
        let group = format!("{}-{name}", self.table.replace('_', "-"));
        let dir = self.mount.join(&group);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        let rel = dir
            .strip_prefix("/sys/fs/cgroup")
            .unwrap()
            .display()
            .to_string();
        nft(&format!(
            "add rule inet {} out socket cgroupv2 level 1 \"{rel}\" ip daddr {} tcp dport {} counter drop comment \"{group}\"",
            self.table,
            backend.ip(),
            backend.port()
        ));
        self.groups.push((group, pid));
    }

    /// Ends every cut: rules flushed, instances moved back to the root cgroup.
    fn heal(&mut self) {
        nft(&format!("flush chain inet {} out", self.table));
        self.release();
    }

    fn release(&mut self) {
        for (group, pid) in self.groups.drain(..) {
            let _ = std::fs::write(self.mount.join("cgroup.procs"), pid.to_string());
            let _ = std::fs::remove_dir(self.mount.join(&group));
        }
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        self.release();
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

fn nft(cmd: &str) {
    let out = Command::new("nft").arg(cmd).output().expect("run nft");
    assert!(
        out.status.success(),
        "nft {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------------------------
// the fleet
// ------------------------------------------------------------------------------------

fn cluster_toml(endpoints: &[String], prefix: &str, member: &str, quorum: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[cluster]\netcd = [{}]\nprefix = \"{prefix}\"\nmember = \"{member}\"\nhealth_quorum = {quorum}\n",
        list.join(", ")
    )
}

/// The shared part: one TCP service over a maglev pool (five-tuple hash, so connections
/// spread) with fast TCP checks and passive ejection after 2 failed connects.
fn shared_toml(listen: SocketAddr, backends: &[SocketAddr], weight: u32) -> String {
    let pool_extra = "hash_key = \"five_tuple\"\n\n[pool.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n\n[pool.outlier]\nconsecutive_failures = 2\nejection = \"60s\"\n";
    let b: Vec<(SocketAddr, u32)> = backends.iter().map(|a| (*a, weight)).collect();
    format!(
        "{}\n{}",
        service_toml(
            "web",
            listen,
            "tcp",
            "web",
            "\n[service.timeouts]\nconnect = \"200ms\"\n"
        ),
        pool_toml("web", "maglev", pool_extra, &b)
    )
}

async fn cluster(f: &Fulcrum) -> Value {
    let (code, body) = http(f.admin, "GET", "/api/v1/cluster").await.unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The fleet's entry for `backend` in `f`'s view, if any.
fn fleet_entry(c: &Value, backend: SocketAddr) -> Option<Value> {
    c["health"]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["backend"] == backend.to_string())
        .cloned()
}

/// The instance's own verdict on `backend`.
fn local_verdict(c: &Value, backend: SocketAddr) -> String {
    c["health"]["local"]["web"][backend.to_string()]
        .as_str()
        .unwrap_or("-")
        .to_owned()
}

/// The backend's state in `f`'s running table.
async fn state(f: &Fulcrum, backend: SocketAddr) -> String {
    f.backend_state("web", backend).await
}

async fn states(fleet: &[Fulcrum], backend: SocketAddr) -> Vec<String> {
    let mut v = Vec::new();
    for f in fleet {
        v.push(state(f, backend).await);
    }
    v
}

/// Waits until every instance's view shows `member` saying `verdict` about `backend`.
async fn wait_member_verdict(fleet: &[Fulcrum], member: &str, backend: SocketAddr, verdict: &str) {
    for f in fleet {
        let ok = eventually(Duration::from_secs(15), || async {
            fleet_entry(&cluster(f).await, backend).is_some_and(|e| e["members"][member] == verdict)
        })
        .await;
        assert!(
            ok,
            "{}: {member} does not say {verdict} about {backend}: {}\n{}",
            f.admin,
            cluster(f).await["health"],
            f.stderr_tail(20)
        );
    }
}

/// Waits until every instance runs `backend` in `want`, then checks that it stays so for
/// `hold` on every instance.
async fn settle(fleet: &[Fulcrum], backend: SocketAddr, want: &str, hold: Duration) {
    for f in fleet {
        f.wait_state("web", backend, want, Duration::from_secs(15))
            .await;
    }
    let end = Instant::now() + hold;
    while Instant::now() < end {
        let s = states(fleet, backend).await;
        assert!(
            s.iter().all(|x| x == want),
            "{backend}: {s:?}, wanted {want} on every instance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_fleet(
    endpoints: &[String],
    prefix: &str,
    quorum: &str,
    listen: SocketAddr,
    backends: &[SocketAddr],
) -> Vec<Fulcrum> {
    let mut fleet = Vec::new();
    for i in 0..3 {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = format!(
            "{}{}",
            admin_toml(admin),
            cluster_toml(endpoints, prefix, &format!("lb{i}"), quorum)
        );
        fleet
            .push(Fulcrum::start(&format!("quorum-lb{i}"), admin, &cfg, &["--workers", "1"]).await);
    }
    let rev = put_doc(endpoints, prefix, &shared_toml(listen, backends, 1)).await;
    for f in &fleet {
        let ok = eventually(Duration::from_secs(20), || async {
            let c = cluster(f).await;
            c["applied_revision"].as_i64() >= Some(rev)
                && c["health"]["source"] == "fleet"
                && c["health"]["members"].as_array().map(Vec::len) == Some(3)
                && backends
                    .iter()
                    .all(|b| fleet_entry(&c, *b).is_some_and(|e| e["votes"]["up"] == 3))
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
    fleet
}

/// Writes `doc` under `prefix`, retrying while the cluster elects a leader.
async fn put_doc(endpoints: &[String], prefix: &str, doc: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match fulcrum_cluster::push(endpoints, prefix, doc).await {
            Ok(r) => return r,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot write to etcd: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn prerequisites(test: &str) -> bool {
    require_root(test)
        && require(
            test,
            have_program("etcd"),
            "etcd (apt-get install etcd-server)",
        )
        && require(test, have_program("nft"), "nft (apt-get install nftables)")
        && require(
            test,
            cgroup2_mount().is_some(),
            "a cgroup v2 hierarchy mounted under /sys/fs/cgroup",
        )
}

/// Flips member `who`'s view of `backend` `n` times (cut, heal, ...) and measures, each
/// time, from the moment its own checks change their verdict (polled on its API) until
/// every instance's table shows the backend in the state `expect(cut)`.
async fn time_flips(
    fleet: &[Fulcrum],
    parts: &mut Partitions,
    keep_cut: &[usize],
    who: usize,
    backend: SocketAddr,
    n: usize,
) -> Vec<Duration> {
    let mut samples = Vec::new();
    for k in 0..n {
        let cut = k % 2 == 0;
        let (want_local, want_table) = if cut { ("down", "down") } else { ("up", "up") };
        if cut {
            parts.cut(&format!("lb{who}"), fleet[who].pid, backend);
        } else {
            parts.heal();
            for &i in keep_cut {
                parts.cut(&format!("lb{i}"), fleet[i].pid, backend);
            }
        }
        // The moment the member's own checks say so...
        let deadline = Instant::now() + Duration::from_secs(15);
        let seen = loop {
            if local_verdict(&cluster(&fleet[who]).await, backend) == want_local {
                break Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "lb{who} never saw {backend} {want_local}"
            );
        };
        // ...until the last instance's table shows it.
        let mut pending: Vec<usize> = (0..fleet.len()).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &i in &pending {
                if state(&fleet[i], backend).await != want_table {
                    still.push(i);
                }
            }
            pending = still;
            assert!(
                Instant::now() < deadline,
                "{backend} not {want_table} everywhere: {:?}",
                states(fleet, backend).await
            );
        }
        samples.push(seen.elapsed());
    }
    samples
}

// ------------------------------------------------------------------------------------
// the tests
// ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_partitioned_from_a_backend_under_each_quorum() {
    let test = "one_member_partitioned_from_a_backend_under_each_quorum";
    if !prerequisites(test) {
        return;
    }
    let etcd = Etcd::start();
    let endpoints = etcd.endpoints();
    etcd.wait_healthy(Duration::from_secs(30)).await;
    let a = TcpBackend::start(Behaviour::Echo).await;
    let b = TcpBackend::start(Behaviour::Echo).await;
    let backends = [a.addr, b.addr];
    let hold = Duration::from_secs(2);

    // Each quorum: (one member cut, two members cut) -> the state every instance runs.
    for (quorum, one_cut, two_cut) in [
        ("\"majority\"", "up", "down"),
        ("\"any\"", "up", "up"),
        ("\"all\"", "down", "down"),
        ("2", "up", "down"),
    ] {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let prefix = format!("/fulcrum/quorum-{}", quorum.trim_matches('"'));
        let fleet = start_fleet(&endpoints, &prefix, quorum, listen, &backends).await;
        let mut parts = Partitions::new();
        let changes_before: Vec<f64> = {
            let mut v = Vec::new();
            for f in &fleet {
                v.push(
                    f.metric("fulcrum_pool_changes_total", &[("pool", "web")])
                        .await
                        .expect("fulcrum_pool_changes_total"),
                );
            }
            v
        };

        // lb0 cut off from a: its own checks say down, the others up.
        parts.cut("lb0", fleet[0].pid, a.addr);
        wait_member_verdict(&fleet, "lb0", a.addr, "down").await;
        settle(&fleet, a.addr, one_cut, hold).await;
        settle(&fleet, b.addr, "up", Duration::ZERO).await;
        let c = cluster(&fleet[2]).await;
        let e = fleet_entry(&c, a.addr).unwrap();
        assert_eq!(e["votes"]["up"], 2, "{e}");
        assert_eq!(e["votes"]["down"], 1, "{e}");
        assert_eq!(local_verdict(&cluster(&fleet[0]).await, a.addr), "down");
        let mut changes_after = Vec::new();
        for f in &fleet {
            changes_after.push(
                f.metric("fulcrum_pool_changes_total", &[("pool", "web")])
                    .await
                    .expect("fulcrum_pool_changes_total"),
            );
        }
        if one_cut == "up" {
            // The table did not change at all on any instance.
            assert_eq!(changes_before, changes_after, "{quorum}: a table changed");
        } else {
            // It changed once on every instance, in step.
            for (b, a) in changes_before.iter().zip(&changes_after) {
                assert_eq!(
                    a - b,
                    1.0,
                    "{quorum}: {changes_before:?} -> {changes_after:?}"
                );
            }
        }
        println!(
            "health_quorum = {quorum}: lb0 cut from {}: votes up {} down {}; {} on every instance: {:?}; table changes {:?} -> {:?}",
            a.addr,
            e["votes"]["up"],
            e["votes"]["down"],
            one_cut,
            states(&fleet, a.addr).await,
            changes_before,
            changes_after
        );

        // lb1 cut off too: two of three say down.
        parts.cut("lb1", fleet[1].pid, a.addr);
        wait_member_verdict(&fleet, "lb1", a.addr, "down").await;
        settle(&fleet, a.addr, two_cut, hold).await;
        println!(
            "health_quorum = {quorum}: lb0 and lb1 cut from {}: {} on every instance",
            a.addr, two_cut
        );

        // Healed: up everywhere again.
        parts.heal();
        wait_member_verdict(&fleet, "lb0", a.addr, "up").await;
        wait_member_verdict(&fleet, "lb1", a.addr, "up").await;
        settle(&fleet, a.addr, "up", Duration::ZERO).await;

        if quorum == "\"majority\"" {
            // The time from a member's changed verdict to every instance's table: with lb0
            // cut for good, lb1's verdict decides (2 of 3 down, or 2 of 3 up).
            parts.cut("lb0", fleet[0].pid, a.addr);
            wait_member_verdict(&fleet, "lb0", a.addr, "down").await;
            let mut samples = time_flips(&fleet, &mut parts, &[0], 1, a.addr, 10).await;
            samples.sort();
            println!(
                "member verdict -> every instance's table, {} flips: p50 {:?} max {:?} (polled on the admin API, about 1-3 ms per poll)",
                samples.len(),
                percentile(&samples, 0.5),
                samples[samples.len() - 1]
            );

            // Passive ejection stays local: with lb0 still cut from a, traffic through the
            // fleet (the three instances share the VIP with SO_REUSEPORT) succeeds, lb0
            // ejects a after failed connects, and only lb0 does; the fleet still counts a up.
            let (mut sent, mut failed) = (0u32, 0u32);
            let t = Instant::now();
            while sent < 60 && t.elapsed() < Duration::from_secs(30) {
                sent += 1;
                if echo_once(listen, b"through the fleet").await.is_err() {
                    failed += 1;
                }
            }
            println!("lb0 cut from a: {sent} requests through the fleet, {failed} failed");
            assert_eq!(failed, 0);
            let c0 = cluster(&fleet[0]).await;
            let ejected = c0["health"]["ejected_locally"].to_string();
            assert!(ejected.contains(&a.addr.to_string()), "{}", c0["health"]);
            assert_eq!(state(&fleet[0], a.addr).await, "ejected");
            for f in &fleet[1..] {
                assert_eq!(state(f, a.addr).await, "up");
                assert_eq!(
                    cluster(f).await["health"]["ejected_locally"],
                    serde_json::json!([])
                );
            }
            assert_eq!(fleet_entry(&c0, a.addr).unwrap()["fleet"], "up");
            let admin0 = format!("http://{}", fleet[0].admin);
            let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
                .args(["ctl", "--admin", &admin0, "cluster"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            println!("{text}");
            assert!(out.status.success(), "{text}");
            assert!(
                text.contains("quorum majority, decided by the fleet"),
                "{text}"
            );
            assert!(
                text.contains("ejected here only (passive, local to this instance): web"),
                "{text}"
            );
        }
        parts.heal();
        drop(parts);
        for f in &fleet {
            f.assert_no_panic();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_health_survives_etcd_trouble() {
    let test = "fleet_health_survives_etcd_trouble";
    if !prerequisites(test) {
        return;
    }
    let outage = Duration::from_secs(
        std::env::var("FULCRUM_ETCD_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15),
    );
    let mut etcd = Etcd::start();
    let endpoints = etcd.endpoints();
    etcd.wait_healthy(Duration::from_secs(30)).await;
    let a = TcpBackend::start(Behaviour::Echo).await;
    let b = TcpBackend::start(Behaviour::Echo).await;
    let backends = [a.addr, b.addr];
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prefix = "/fulcrum/quorum-etcd";
    let fleet = start_fleet(&endpoints, prefix, "\"majority\"", listen, &backends).await;
    let mut parts = Partitions::new();
    let changes = |fleet: &'_ [Fulcrum]| {
        let fleet: Vec<SocketAddr> = fleet.iter().map(|f| f.admin).collect();
        async move {
            let mut v = Vec::new();
            for admin in fleet {
                let (_, text) = http(admin, "GET", "/metrics").await.unwrap();
                v.push(
                    common::metric_value(&text, "fulcrum_pool_changes_total", &[("pool", "web")])
                        .expect("fulcrum_pool_changes_total"),
                );
            }
            v
        }
    };

    // 1. One etcd member killed: no table changes, and a health change still reaches
    // every table.
    let before = changes(&fleet).await;
    etcd.kill(0);
    let t = Instant::now();
    let (mut sent, mut failed) = (0u32, 0u32);
    while t.elapsed() < Duration::from_secs(5) {
        sent += 1;
        if echo_once(listen, b"one etcd member down").await.is_err() {
            failed += 1;
        }
        assert_eq!(states(&fleet, a.addr).await, ["up", "up", "up"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        failed, 0,
        "{failed} of {sent} failed with one etcd member down"
    );
    assert_eq!(
        before,
        changes(&fleet).await,
        "a table changed when one etcd member died"
    );
    for f in &fleet {
        let ok = eventually(Duration::from_secs(15), || async {
            let c = cluster(f).await;
            c["connected"] == true && c["health"]["source"] == "fleet"
        })
        .await;
        assert!(ok, "{}: {}", f.admin, cluster(f).await);
    }
    parts.cut("lb0", fleet[0].pid, a.addr);
    parts.cut("lb1", fleet[1].pid, a.addr);
    settle(&fleet, a.addr, "down", Duration::ZERO).await;
    parts.heal();
    settle(&fleet, a.addr, "up", Duration::ZERO).await;
    // From here on lb0 is cut from a: the fleet keeps a up (lb0 may eject it locally
    // after failed connects of its own traffic).
    parts.cut("lb0", fleet[0].pid, a.addr);
    wait_member_verdict(&fleet, "lb0", a.addr, "down").await;
    println!("one etcd member down: {sent} requests, 0 failed, no table change; a health change still reached every table");

    // 2. Every etcd member killed: requests keep succeeding for the whole outage; the
    // fleet table is held, then each instance's own checks decide (lb0, still cut from a,
    // then drops a from its own table only).
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
    let applied_before = cluster(&fleet[0]).await["applied_revision"]
        .as_i64()
        .unwrap();
    etcd.kill(1);
    etcd.kill(2);
    let t = Instant::now();
    let (mut sent, mut failed) = (0u32, 0u32);
    let mut sources = std::collections::BTreeSet::new();
    while t.elapsed() < outage && sent < 100_000 {
        sent += 1;
        if echo_once(listen, b"etcd is down").await.is_err() {
            failed += 1;
        }
        if sent % 50 == 0 {
            for f in &fleet {
                sources.insert(
                    cluster(f).await["health"]["source"]
                        .as_str()
                        .unwrap_or("-")
                        .to_owned(),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for f in &fleet {
        let c = cluster(f).await;
        assert_eq!(c["connected"], false, "{c}");
        assert_eq!(c["applied_revision"].as_i64(), Some(applied_before));
        sources.insert(c["health"]["source"].as_str().unwrap_or("-").to_owned());
    }
    println!(
        "all etcd members down for {outage:?}: {sent} requests, {failed} failed; health sources seen: {sources:?}; a on lb0/lb1/lb2: {:?}",
        states(&fleet, a.addr).await
    );
    assert_eq!(failed, 0);
    if outage > Duration::from_secs(12) {
        assert!(sources.contains("local"), "{sources:?}");
        assert_eq!(
            state(&fleet[0], a.addr).await,
            "down",
            "lb0's own checks decide"
        );
    }

    // 3. etcd back: a push made now is applied everywhere, once; the fleet view returns
    // (lb0's a up again by the fleet's decision).
    etcd.spawn_all();
    etcd.wait_healthy(Duration::from_secs(30)).await;
    let back = Instant::now();
    let rev = put_doc(&endpoints, prefix, &shared_toml(listen, &backends, 7)).await;
    for f in &fleet {
        let ok = eventually(Duration::from_secs(30), || async {
            let c = cluster(f).await;
            c["applied_revision"].as_i64() == Some(rev)
                && c["connected"] == true
                && c["health"]["source"] == "fleet"
                && c["health"]["members"].as_array().map(Vec::len) == Some(3)
        })
        .await;
        assert!(
            ok,
            "{}: {}\n{}",
            f.admin,
            cluster(f).await,
            f.stderr_tail(20)
        );
    }
    println!("etcd back: revision {rev} applied and the fleet view back on every instance {:?} after the push", back.elapsed());
    for f in &fleet {
        let ok = eventually(Duration::from_secs(10), || async {
            fleet_entry(&cluster(f).await, a.addr).is_some_and(|e| e["fleet"] == "up")
        })
        .await;
        assert!(ok, "{}", cluster(f).await["health"]);
    }
    settle(&fleet[1..], a.addr, "up", Duration::from_millis(500)).await;
    let s0 = state(&fleet[0], a.addr).await;
    assert!(s0 == "up" || s0 == "ejected", "lb0: {s0}");
    for (f, before) in fleet.iter().zip(reloads_before) {
        let after = f
            .metric("fulcrum_config_reloads_total", &[("result", "ok")])
            .await
            .unwrap_or(0.0);
        assert_eq!(
            after - before,
            1.0,
            "{}: one revision pushed, {} applied",
            f.admin,
            after - before
        );
        let backend = f.backend("web", b.addr).await;
        assert_eq!(backend["weight"], 7, "{backend}");
    }
    echo_once(listen, b"caught up").await.unwrap();
    drop(parts);
    for f in &fleet {
        f.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_at_start() {
    let test = "etcd_unreachable_at_start";
    if !require(
        test,
        have_program("etcd"),
        "etcd (apt-get install etcd-server)",
    ) {
        return;
    }
    // Ports for an etcd cluster that is not running yet.
    let mut etcd = Etcd::new();
    let endpoints = etcd.endpoints();
    let backend = TcpBackend::start(Behaviour::Echo).await;
    let local = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prefix = "/fulcrum/quorum-start";
    let cfg = format!(
        "{}{}\n{}\n{}",
        admin_toml(admin),
        cluster_toml(&endpoints, prefix, "lb0", "\"majority\""),
        service_toml("local", local, "tcp", "local", ""),
        pool_toml("local", "rr", "", &[(backend.addr, 1)])
    );
    // It starts and serves its local file at once.
    let f = Fulcrum::start("quorum-start", admin, &cfg, &["--workers", "1"]).await;
    echo_once(local, b"from the local file").await.unwrap();
    let c = cluster(&f).await;
    assert_eq!(c["connected"], false, "{c}");
    assert_eq!(c["applied_revision"], 0, "{c}");
    assert_eq!(c["health"]["source"], "local", "{c}");
    // It says why, what it serves meanwhile, and that it retries (more than once).
    let ok = eventually(Duration::from_secs(10), || async {
        f.stderr().matches("cannot reach etcd").count() >= 2
    })
    .await;
    let log = f.stderr();
    assert!(ok, "{log}");
    assert!(
        log.contains("serving the local file's services and pools")
            && log.contains("retrying with backoff")
            && log.contains(&endpoints[0]),
        "{log}"
    );
    // etcd comes up: it joins, and runs the fleet's revision (the shared service replaces
    // the local file's).
    etcd.spawn_all();
    etcd.wait_healthy(Duration::from_secs(30)).await;
    let shared = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let rev = put_doc(&endpoints, prefix, &shared_toml(shared, &[backend.addr], 1)).await;
    let t = Instant::now();
    let ok = eventually(Duration::from_secs(20), || async {
        let c = cluster(&f).await;
        c["connected"] == true && c["applied_revision"].as_i64() == Some(rev)
    })
    .await;
    assert!(ok, "{}\n{}", cluster(&f).await, f.stderr_tail(20));
    println!(
        "etcd up after the start: joined and applied revision {rev} within {:?}",
        t.elapsed()
    );
    echo_once(shared, b"from the fleet").await.unwrap();
    f.assert_no_panic();
}
