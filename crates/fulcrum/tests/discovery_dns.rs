//! DNS and SRV discovery against a real DNS server: dnsmasq (Debian package `dnsmasq`),
//! started by each test on a free 127.0.0.1 port and killed by PID. Without dnsmasq the tests
//! print why and pass without checking anything.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{admin_toml, eventually, free_addr, free_port, service_toml, temp_dir, Fulcrum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

fn dnsmasq_path() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

macro_rules! require_dnsmasq {
    () => {
        match dnsmasq_path() {
            Some(p) => p,
            None => {
                fulcrum_xdp::testing::require(
                    "discovery_dns",
                    false,
                    "dnsmasq (apt-get install -y dnsmasq)",
                );
                return;
            }
        }
    };
}

/// A dnsmasq answering only from `hosts` (re-read on SIGHUP) and `extra` arguments.
struct Dnsmasq {
    child: Option<Child>,
    port: u16,
    hosts: PathBuf,
}

impl Dnsmasq {
    fn start(bin: &Path, dir: &Path, hosts: &str, extra: &[String]) -> Self {
        let port = free_port();
        let hosts_path = dir.join("hosts");
        std::fs::write(&hosts_path, hosts).unwrap();
        let child = Command::new(bin)
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--user=root",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--local-ttl=1",
                "--log-queries",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts_path.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("dnsmasq.log")).unwrap(),
            ))
            .spawn()
            .expect("spawn dnsmasq");
        let d = Self {
            child: Some(child),
            port,
            hosts: hosts_path,
        };
        // Wait until it answers on UDP (bound) — a TCP connect shows the same socket set.
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("dnsmasq did not start on port {port}");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Replaces the hosts file and tells dnsmasq to re-read it.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "SIGHUP dnsmasq");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A backend on `addr` that writes its own IP and closes.
fn id_backend(l: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let me = s.local_addr().unwrap().ip().to_string();
            tokio::spawn(async move {
                let _ = s.write_all(me.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

/// Binds id backends on 127.0.0.N:port for each N; retries with another port if one is taken.
async fn id_backends(last_octets: &[u8]) -> (u16, Vec<JoinHandle<()>>) {
    'port: for _ in 0..50 {
        let port = free_port();
        let mut ls = Vec::new();
        for n in last_octets {
            match TcpListener::bind(SocketAddr::from(([127, 0, 0, *n], port))).await {
                Ok(l) => ls.push(l),
                Err(_) => continue 'port,
            }
        }
        return (port, ls.into_iter().map(id_backend).collect());
    }
    panic!("no port free on all backend addresses");
}

/// Which backend IPs `n` connections through `vip` reach.
async fn reached(vip: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(vip)).await
        else {
            continue;
        };
        let mut buf = String::new();
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut buf)).await
        {
            if !buf.is_empty() {
                seen.insert(buf);
            }
        }
    }
    seen
}

/// The pool's backends as `address -> weight`.
async fn pool_backends(f: &Fulcrum, pool: &str) -> Vec<(String, u64)> {
    let p = f.pool(pool).await;
    let mut v: Vec<(String, u64)> = p["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn set_of(ips: &[&str]) -> BTreeSet<String> {
    ips.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_pool_follows_records_and_keeps_last_good_set() {
    let bin = require_dnsmasq!();
    let dir = temp_dir("disc-dns");
    let (port, _backends) = id_backends(&[2, 3, 4]).await;
    let mut dns = Dnsmasq::start(
        &bin,
        &dir,
        "127.0.0.2 backends.test\n127.0.0.3 backends.test\n",
        &[],
    );
    let (admin, vip) = (free_addr(), free_addr());
    let cfg = format!(
        "{}{}[[pool]]\nname = \"web\"\nscheduler = \"rr\"\n[pool.discovery]\ndns = \"backends.test:{port}\"\nnameserver = \"{}\"\n",
        admin_toml(admin),
        service_toml("svc", vip, "tcp", "web", ""),
        dns.addr()
    );
    let f = Fulcrum::start("disc-dns", admin, &cfg, &[]).await;
    let want = |ips: &[u8]| -> Vec<(String, u64)> {
        ips.iter()
            .map(|n| (format!("127.0.0.{n}:{port}"), 1))
            .collect()
    };

    // The first answer fills the pool, and traffic reaches both addresses.
    assert!(
        eventually(Duration::from_secs(5), || async {
            pool_backends(&f, "web").await == want(&[2, 3])
        })
        .await,
        "pool never got the A records: {}\n{}",
        f.pool("web").await,
        f.stderr_tail(20)
    );
    assert_eq!(reached(vip, 8).await, set_of(&["127.0.0.2", "127.0.0.3"]));

    // Records change in the DNS server: the pool follows after the TTL (1 s).
    dns.set_hosts("127.0.0.3 backends.test\n127.0.0.4 backends.test\n");
    let t = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(6), || async {
            pool_backends(&f, "web").await == want(&[3, 4])
        })
        .await,
        "pool did not follow the new records: {}",
        f.pool("web").await
    );
    eprintln!("pool followed the DNS change in {:?}", t.elapsed());
    assert_eq!(reached(vip, 8).await, set_of(&["127.0.0.3", "127.0.0.4"]));

    // The DNS server goes away: lookups fail, are counted, and the last good set stays.
    dns.kill();
    assert!(
        eventually(Duration::from_secs(10), || async {
            f.metric(
                "fulcrum_discovery_errors_total",
                &[("pool", "web"), ("kind", "dns")],
            )
            .await
            .is_some_and(|v| v >= 2.0)
        })
        .await,
        "failed lookups not counted:\n{}",
        f.metrics().await
    );
    assert_eq!(pool_backends(&f, "web").await, want(&[3, 4]));
    assert_eq!(reached(vip, 8).await, set_of(&["127.0.0.3", "127.0.0.4"]));
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_ports_and_weights_merge_with_static_backends() {
    let bin = require_dnsmasq!();
    let dir = temp_dir("disc-srv");
    let (p1, _b1) = id_backends(&[2]).await;
    let (p2, _b2) = id_backends(&[3]).await;
    let (p3, _b3) = id_backends(&[5]).await;
    let (p4, _b4) = id_backends(&[4]).await;
    let name = "_app._tcp.backends.test";
    let dns = Dnsmasq::start(
        &bin,
        &dir,
        "127.0.0.2 a.test\n127.0.0.3 b.test\n127.0.0.4 c.test\n127.0.0.5 backup.test\n",
        &[
            format!("--srv-host={name},a.test,{p1},0,5"),
            format!("--srv-host={name},b.test,{p2},0,3"),
            format!("--srv-host={name},c.test,{p4},0,0"),
            // A higher priority value: a backup, not used while priority 0 exists.
            format!("--srv-host={name},backup.test,{p3},10,7"),
        ],
    );
    let (admin, vip) = (free_addr(), free_addr());
    // A static backend at the address of a discovered one: the static one (weight 9) wins.
    let cfg = format!(
        "{}{}[[pool]]\nname = \"web\"\nscheduler = \"wrr\"\n[[pool.backend]]\naddress = \"127.0.0.2:{p1}\"\nweight = 9\n[pool.discovery]\nsrv = \"{name}\"\nnameserver = \"{}\"\n",
        admin_toml(admin),
        service_toml("svc", vip, "tcp", "web", ""),
        dns.addr()
    );
    let f = Fulcrum::start("disc-srv", admin, &cfg, &[]).await;
    let mut want = vec![
        (format!("127.0.0.2:{p1}"), 9),
        (format!("127.0.0.3:{p2}"), 3),
        (format!("127.0.0.4:{p4}"), 1), // SRV weight 0 -> 1
    ];
    want.sort();
    assert!(
        eventually(Duration::from_secs(5), || async {
            pool_backends(&f, "web").await == want
        })
        .await,
        "pool: {}\n{}",
        f.pool("web").await,
        f.stderr_tail(20)
    );
    assert_eq!(
        reached(vip, 20).await,
        set_of(&["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    );
    f.assert_no_panic();
}
