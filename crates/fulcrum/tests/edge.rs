//! The two-tier edge end to end (issue 14, 4; docs/fleet.md, "The two-tier edge"): the L4
//! tier is 3 Fulcrum instances with XDP `tunnel` (GUE, second chance on) behind a router
//! doing ECMP over the routes their bird announces; it fronts an L7 tier of 3 `fulcrum run`
//! HTTP instances, one on each backend host (`fulcrum decap`, the VIP on loopback), which
//! front the application servers (threads of this test, on port 8080 of every backend
//! host). Built by `lab/fleet.sh` with `FLEET_SERVE=edge` in network namespaces this test
//! creates and deletes (198.18.0.0/15 only).
//!
//! Under continuous HTTP load (keep-alive connections sending a request every 200 ms, and a
//! new connection per request every 20 ms), it counts failed requests (a connect error, a
//! reset, a connection closed without an answer, a timeout, a status other than 200):
//! - a rolling restart of every L7 instance: drained in the pool of every L4 instance
//!   (admin API), stopped with SIGTERM (it answers each keep-alive connection's next request
//!   with `Connection: close` and exits once none is left), started, undrained: 0 failed;
//! - a rolling restart of every L4 instance: SIGTERM (withdraw, `withdraw_grace`, drain),
//!   started again (announced once health has settled): 0 failed.
//!
//! Needs root, iproute2, ethtool, bird2 and curl. Every daemon is started by `lab/fleet.sh`
//! and stopped by it by pid (`down`, also on failure).
#![allow(clippy::pedantic)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulcrum_xdp::testing::{have_program, in_netns, require, require_netns_lab};

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../lab/fleet.sh");
/// Service `tun` of the lab: the L4 tier's XDP tunnel.
const VIP: &str = "198.19.0.10:80";
/// Keep-alive connections of the load.
const KEEP_ALIVE: usize = 24;
/// The pause between two requests of a keep-alive connection: longer than the time the L7
/// tier takes from SIGTERM to noticing its idle connections (its drain wake-up: 100 ms), so
/// that most keep-alive connections are idle then; shorter than the drain's idle grace (1 s).
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(200);
/// Threads opening a new connection per request.
const OPENERS: usize = 2;

fn prerequisites(test: &str) -> bool {
    require_netns_lab(test)
        && require(test, have_program("bird"), "bird (apt-get install bird2)")
        && require(test, have_program("birdc"), "birdc (apt-get install bird2)")
        && require(test, have_program("curl"), "curl (apt-get install curl)")
}

/// The lab, torn down (`lab/fleet.sh down`: every daemon by its pid, the namespaces) on drop.
struct Lab {
    prefix: String,
    dir: String,
    /// `FLEET_TUNNEL`: the L4 tier's tunnel (`gue`: second chance on).
    tunnel: &'static str,
    /// Keep the logs (`FLEET_KEEP`) when the lab goes: a request failed.
    keep: bool,
    stop: Arc<AtomicBool>,
}

impl Lab {
    fn up(tag: &str, tunnel: &'static str) -> Self {
        let prefix = format!("tt{tag}{}", std::process::id() % 10_000);
        let dir = std::env::temp_dir()
            .join(format!("fulcrum-fleet-{prefix}"))
            .to_string_lossy()
            .into_owned();
        let lab = Self {
            prefix,
            dir,
            tunnel,
            keep: false,
            stop: Arc::new(AtomicBool::new(false)),
        };
        // the topology, the router, decap and the L7 tier on the backends; then the app
        // servers; the L4 instances are started by the test
        lab.run(&["up"]);
        for b in 1..=3u8 {
            app_server(&lab.ns(&format!("b{b}")), b, Arc::clone(&lab.stop));
        }
        lab
    }

    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn command(&self, args: &[&str], keep: bool) -> Command {
        let mut c = Command::new("bash");
        c.arg(LAB)
            .args(args)
            .env("FLEET_PREFIX", &self.prefix)
            .env("FLEET_DIR", &self.dir)
            .env("FLEET_ROUTER", "ecmp")
            .env("FLEET_SERVE", "edge")
            .env("FLEET_APP", "none")
            .env("FLEET_TUNNEL", self.tunnel)
            .env("FLEET_INSTANCES", "")
            .env("FULCRUM", env!("CARGO_BIN_EXE_fulcrum"))
            // the L7 instances say when draining closes a keep-alive connection
            .env("FULCRUM_LOG", "info,fulcrum_http=debug");
        if keep {
            c.env("FLEET_KEEP", "1");
        }
        c
    }

    fn run(&self, args: &[&str]) {
        let out = self.command(args, false).output().expect("lab/fleet.sh");
        assert!(
            out.status.success(),
            "lab/fleet.sh {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The router's next hops (last address bytes) for the VIP.
    fn next_hops(&self) -> Vec<u8> {
        let out = Command::new("ip")
            .args(["-n", &self.ns("r"), "route", "show", "198.19.0.10/32"])
            .output()
            .expect("ip route");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut hops: Vec<u8> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].strip_prefix("198.18.0.")?.parse().ok())
            .collect();
        hops.sort_unstable();
        hops
    }

    /// Waits until the VIP's route has exactly the L4 instances `want` (1..3 = .2...4).
    fn wait_next_hops(&self, want: &[u8], within: Duration) {
        let start = Instant::now();
        let want: Vec<u8> = want.iter().map(|i| i + 1).collect();
        loop {
            let now = self.next_hops();
            if now == want {
                return;
            }
            assert!(
                start.elapsed() < within,
                "router next hops {now:?}, want {want:?} within {within:?}; lab log in {}",
                self.dir
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A namespace's `curl -s URL` (empty when it does not answer).
    fn curl(&self, n: &str, url: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(["curl", "-s", "-m", "2", url])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether L4 instance `i` sees L7 instance `b` up (`fulcrum_backend_up` 1).
    fn l4_sees_up(&self, i: u8, b: u8) -> bool {
        let addr = format!("198.18.0.{}:80", 10 + b);
        self.curl(&format!("i{i}"), "http://127.0.0.1:9090/metrics")
            .lines()
            .any(|l| l.starts_with("fulcrum_backend_up{") && l.contains(&addr) && l.ends_with(" 1"))
    }

    /// Requests L7 instance `b` answered since it started (its own metrics).
    fn l7_requests(&self, b: u8) -> u64 {
        self.curl(&format!("b{b}"), "http://127.0.0.1:9090/metrics")
            .lines()
            .filter(|l| l.starts_with("fulcrum_http_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // on failure the logs stay (the daemons are stopped and the namespaces deleted)
        let _ = self.command(&["down"], std::thread::panicking()).output();
    }
}

/// An HTTP/1.1 application server on 198.18.0.1B:8080 in backend namespace `ns`: keep-alive,
/// a thread per connection, every request answered `200` with `app bB`. The listener closes
/// when `stop` is set.
fn app_server(ns: &str, b: u8, stop: Arc<AtomicBool>) {
    let addr = format!("198.18.0.{}:8080", 10 + b);
    let l = in_netns(ns, move || TcpListener::bind(addr).expect("bind")).expect("backend netns");
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                        let body = format!("app b{b}\n");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        loop {
                            // every complete request head in the buffer (no bodies: GETs)
                            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                buf.drain(..end + 4);
                                if s.write_all(answer.as_bytes()).is_err() {
                                    return;
                                }
                            }
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
}

/// Counters of the load (cumulative; phases compare snapshots).
struct Stats {
    /// When the load started (errors say when they happened).
    t0: Instant,
    served: AtomicU64,
    failed: AtomicU64,
    /// Connections opened (keep-alive reconnections and one per request).
    connections: AtomicU64,
    /// Keep-alive connections the L7 tier closed with `Connection: close`.
    closed_by_server: AtomicU64,
    errors: Mutex<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    served: u64,
    failed: u64,
    connections: u64,
    closed_by_server: u64,
}

impl Stats {
    fn counts(&self) -> Counts {
        Counts {
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            closed_by_server: self.closed_by_server.load(Ordering::Relaxed),
        }
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().expect("lock");
        if e.len() < 50 {
            e.push(format!("at {:.2?}: {what}", self.t0.elapsed()));
        }
    }
}

fn connect_from(src: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&src.into())?;
    // the port bind chose, for the error (a refused connection: which tuple)
    let local = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or_else(String::new, |a| a.to_string());
    sock.connect_timeout(&to.into(), Duration::from_secs(3))
        .map_err(|e| std::io::Error::new(e.kind(), format!("{local}: {e}")))?;
    let s: TcpStream = sock.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// One request on `s`; the answer's status and whether the server closes the connection.
fn request(s: &mut TcpStream, close: bool) -> std::io::Result<(u16, bool)> {
    let req = if close {
        "GET / HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n"
    } else {
        "GET / HTTP/1.1\r\nhost: edge\r\n\r\n"
    };
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            let what = if buf.is_empty() {
                "closed without an answer"
            } else {
                "closed in the answer's head"
            };
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, what));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "no status line"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "no content-length"))?;
    let server_closes = head
        .lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"));
    let mut have = buf.len() - head_end;
    while have < length {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed in the answer's body",
            ));
        }
        have += n;
    }
    Ok((status, server_closes))
}

/// A keep-alive client: a request every [`KEEP_ALIVE_EVERY`] on one connection, a new connection when the
/// server closed it (`Connection: close`) or it failed.
fn keep_alive_loop(src: SocketAddr, st: &Stats, stop: &AtomicBool) {
    let vip: SocketAddr = VIP.parse().expect("vip");
    let mut conn: Option<(TcpStream, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match connect_from(src, vip) {
                Ok(s) => {
                    st.connections.fetch_add(1, Ordering::Relaxed);
                    conn = Some((s, 0));
                }
                Err(e) => {
                    st.fail(format!("keep-alive connect from {src}: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        let Some((s, n)) = conn.as_mut() else {
            continue;
        };
        *n += 1;
        match request(s, false) {
            Ok((200, closes)) => {
                st.served.fetch_add(1, Ordering::Relaxed);
                if closes {
                    st.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
            Ok((code, _)) => {
                st.fail(format!("keep-alive from {src}: status {code}"));
                conn = None;
            }
            Err(e) => {
                let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                st.fail(format!(
                    "keep-alive {local}, request {n} on the connection: {e}"
                ));
                conn = None;
            }
        }
        std::thread::sleep(KEEP_ALIVE_EVERY);
    }
}

/// A client opening a new connection per request, every 20 ms, from the 64 addresses.
fn opener_loop(first: usize, st: &Stats, stop: &AtomicBool) {
    let vip: SocketAddr = VIP.parse().expect("vip");
    let mut i = first;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let src: SocketAddr = format!("198.18.1.{}:0", 10 + i % 64)
            .parse()
            .expect("address");
        match connect_from(src, vip).and_then(|mut s| {
            st.connections.fetch_add(1, Ordering::Relaxed);
            let local = s.local_addr()?;
            request(&mut s, true)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{local}: {e}")))
        }) {
            Ok((200, _)) => {
                st.served.fetch_add(1, Ordering::Relaxed);
            }
            Ok((code, _)) => st.fail(format!("new connection from {src}: status {code}")),
            Err(e) => st.fail(format!("new connection from {src}: {e}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The load: [`KEEP_ALIVE`] keep-alive clients and [`OPENERS`] openers in the client
/// namespace, until the lab's stop flag (or drop).
struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(lab: &Lab) -> Self {
        let stats = Arc::new(Stats {
            t0: Instant::now(),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            closed_by_server: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        for k in 0..KEEP_ALIVE + OPENERS {
            let (st, stop, ns) = (Arc::clone(&stats), Arc::clone(&lab.stop), lab.ns("c"));
            threads.push(std::thread::spawn(move || {
                let _ = in_netns(&ns, move || {
                    if k < KEEP_ALIVE {
                        let src: SocketAddr = format!("198.18.1.{}:0", 10 + k % 64)
                            .parse()
                            .expect("address");
                        keep_alive_loop(src, &st, &stop);
                    } else {
                        opener_loop(k * 1000, &st, &stop);
                    }
                });
            }));
        }
        Self {
            stop: Arc::clone(&lab.stop),
            stats,
            threads,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn delta(a: Counts, b: Counts) -> Counts {
    Counts {
        served: b.served - a.served,
        failed: b.failed - a.failed,
        connections: b.connections - a.connections,
        closed_by_server: b.closed_by_server - a.closed_by_server,
    }
}

/// The rolling restarts of both tiers under load: what the load saw during each.
struct Restarts {
    l7: Counts,
    l4: Counts,
    l7_errors: Vec<String>,
    l4_errors: Vec<String>,
}

/// Issue 14, 4: the lab with the L4 tier's `tunnel`, the load, a rolling restart of the L7
/// tier, then of the L4 tier.
fn rolling_restarts(tag: &str, tunnel: &'static str) -> Restarts {
    let mut lab = Lab::up(tag, tunnel);
    for i in ["1", "2", "3"] {
        lab.run(&["start", i]);
    }
    lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(15));
    let load = Load::start(&lab);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let steady = load.stats.counts();
    eprintln!("edge steady ({:?}): {steady:?}", t.elapsed());
    assert!(steady.served > 200, "the load runs: {steady:?}");
    let per_l7: Vec<u64> = (1..=3).map(|b| lab.l7_requests(b)).collect();
    assert!(
        per_l7.iter().all(|&n| n > 0),
        "every L7 instance serves: {per_l7:?}"
    );

    // (a) a rolling restart of the L7 tier
    let before = load.stats.counts();
    let mut l7_times = Vec::new();
    for b in 1..=3u8 {
        let n = b.to_string();
        let t0 = Instant::now();
        eprintln!(
            "edge: at {:.2?}: L7 instance {b} drained {:?}",
            load.stats.t0.elapsed(),
            load.stats.counts()
        );
        // drained in the pool of every L4 instance: new connections go to the others,
        // established ones keep their L7 instance
        lab.run(&["backend", "drain", &n]);
        std::thread::sleep(Duration::from_millis(500));
        // its connections end: SIGTERM makes it answer each keep-alive connection's next
        // request with `Connection: close` and exit once none is left
        let t1 = Instant::now();
        eprintln!(
            "edge: at {:.2?}: SIGTERM {:?}",
            load.stats.t0.elapsed(),
            load.stats.counts()
        );
        lab.run(&["l7", "stop", &n]);
        let drained = t1.elapsed();
        eprintln!(
            "edge: at {:.2?}: exited {:?}",
            load.stats.t0.elapsed(),
            load.stats.counts()
        );
        lab.run(&["l7", "start", &n]);
        eprintln!(
            "edge: at {:.2?}: started {:?}",
            load.stats.t0.elapsed(),
            load.stats.counts()
        );
        lab.run(&["backend", "undrain", &n]);
        eprintln!(
            "edge: at {:.2?}: undrained {:?}",
            load.stats.t0.elapsed(),
            load.stats.counts()
        );
        let t2 = Instant::now();
        while !(1..=3).all(|i| lab.l4_sees_up(i, b)) {
            assert!(
                t2.elapsed() < Duration::from_secs(10),
                "every L4 instance sees L7 instance {b} up again; lab log in {}",
                lab.dir
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = t0.elapsed();
        eprintln!(
            "edge ({tunnel}): L7 instance {b} restarted in {took:?} (its connections ended and it exited {drained:?} after SIGTERM)"
        );
        l7_times.push(took);
        std::thread::sleep(Duration::from_secs(1));
    }
    let l7 = delta(before, load.stats.counts());
    let l7_errors = std::mem::take(&mut *load.stats.errors.lock().expect("lock"));
    eprintln!("edge ({tunnel}): rolling restart of the L7 tier: {l7:?}, restarts {l7_times:?}");
    assert!(
        l7.closed_by_server > 0,
        "the restarted L7 instances closed keep-alive connections ({l7:?})"
    );
    let restarted: Vec<u64> = (1..=3).map(|b| lab.l7_requests(b)).collect();
    assert!(
        restarted.iter().all(|&n| n > 0),
        "every restarted L7 instance serves again: {restarted:?}"
    );

    // (b) a rolling restart of the L4 tier
    let before = load.stats.counts();
    let mut l4_times = Vec::new();
    for i in 1..=3u8 {
        let n = i.to_string();
        let others: Vec<u8> = (1..=3).filter(|&j| j != i).collect();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let stop = s.spawn(|| lab.run(&["stop", &n]));
            lab.wait_next_hops(&others, Duration::from_secs(5));
            stop.join().expect("stop");
        });
        let stopped = t0.elapsed();
        lab.run(&["start", &n]);
        lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(15));
        let took = t0.elapsed();
        eprintln!(
            "edge ({tunnel}): L4 instance {i} restarted in {took:?} (withdrawn, drained and exited after {stopped:?})"
        );
        l4_times.push(took);
        std::thread::sleep(Duration::from_secs(1));
    }
    let l4 = delta(before, load.stats.counts());
    let l4_errors = std::mem::take(&mut *load.stats.errors.lock().expect("lock"));
    eprintln!("edge ({tunnel}): rolling restart of the L4 tier: {l4:?}, restarts {l4_times:?}");
    assert!(l4.served > 1000, "the load ran through it: {l4:?}");
    drop(load);
    if l7.failed + l4.failed > 0 {
        eprintln!(
            "edge ({tunnel}): requests failed: the lab's logs stay in {}",
            lab.dir
        );
        lab.keep = true;
    }
    drop(lab);
    Restarts {
        l7,
        l4,
        l7_errors,
        l4_errors,
    }
}

/// Issue 14, 4: rolling restarts of the L7 tier and of the L4 tier (`tunnel = "gue"`,
/// second chance on) under HTTP load: 0 failed requests.
#[test]
fn edge_two_tier_rolling_restarts_fail_no_request() {
    if !prerequisites("edge_two_tier_rolling_restarts_fail_no_request") {
        return;
    }
    let r = rolling_restarts("e", "gue");
    assert_eq!(
        r.l7.failed, 0,
        "a rolling restart of the L7 tier fails no request ({:?}); errors: {:?}",
        r.l7, r.l7_errors
    );
    assert_eq!(
        r.l4.failed, 0,
        "a rolling restart of the L4 tier fails no request ({:?}); errors: {:?}",
        r.l4, r.l4_errors
    );
}

/// The same with `tunnel = "ipip"` (no second chance; a measurement, by hand: `cargo test
/// -p fulcrum --test edge -- --ignored --nocapture`). The L7 restarts move no flow between
/// L4 instances: 0 failed. The L4 restarts do: the connections opened while an L7 instance
/// was drained, whose Maglev slot is that instance's again, reach it through an L4
/// instance without their conntrack entry and are reset there; it reports how many.
#[test]
#[ignore = "a measurement, run by hand"]
fn edge_two_tier_ipip_without_second_chance() {
    if !prerequisites("edge_two_tier_ipip_without_second_chance") {
        return;
    }
    let r = rolling_restarts("i", "ipip");
    eprintln!(
        "edge (ipip, no second chance): L7 rolling restart: {} failed of {} ({:?})",
        r.l7.failed,
        r.l7.served + r.l7.failed,
        r.l7_errors
    );
    eprintln!(
        "edge (ipip, no second chance): L4 rolling restart: {} failed of {} ({:?})",
        r.l4.failed,
        r.l4.served + r.l4.failed,
        r.l4_errors
    );
    assert_eq!(
        r.l7.failed, 0,
        "a rolling restart of the L7 tier fails no request ({:?}); errors: {:?}",
        r.l7, r.l7_errors
    );
}
