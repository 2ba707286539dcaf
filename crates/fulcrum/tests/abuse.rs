//! Resources under abuse (issue 15, item 5), against the real `fulcrum run --workers 1`:
//! many idle connections, a flood past `max_connections`, a UDP flood from random source
//! ports, a backend that never reads an upload, a client that never reads an answer; each
//! for L4 TCP and L7 HTTP where it applies.
//!
//! Memory is read from `/proc/PID/status` (`VmRSS`; the peak as `VmHWM`, reset through
//! `/proc/PID/clear_refs` at the start of the abuse) and descriptors from `/proc/PID/fd`.
//! Every bound is computed from the buffers Fulcrum is configured or built with (stated in
//! docs/reliability.md, "Resources under abuse"), with the margin named where it is used.
//! After the abusers go away, the descriptors must come back to the baseline (exactly, up
//! to [`FD_SLACK`]) and RSS to within [`RSS_AFTER_SLACK_KIB`] of it.
//!
//! The sizes are scaled for CI; the environment gives the full ones (bench/abuse.py runs
//! them side by side with HAProxy and nginx):
//! - `FULCRUM_ABUSE_IDLE` idle connections (default 10,000; the full run: 50,000);
//! - `FULCRUM_ABUSE_FLOOD` connections of the `max_connections` flood (default 4,000
//!   against a limit of 1,000);
//! - `FULCRUM_ABUSE_UDP_SOURCES` source ports of the UDP flood (default 20,000 against
//!   `max_flows = 1000`);
//! - `FULCRUM_ABUSE_BYTES` the upload/answer size offered (default 1 GiB: a peer that
//!   never reads stops it after a few MiB of socket buffers either way).
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::many_single_char_names
)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The relay's per-thread scratch buffer and the most one direction of a connection may
/// hold pending (`crates/proxy/src/relay.rs` `SCRATCH`: bytes read that the other side
/// could not take yet are copied out of the scratch buffer, at most one read's worth).
const RELAY_SCRATCH_KIB: u64 = 64;
/// The HTTP/1.1 codec's largest head (`crates/http/src/h1.rs` `MAX_HEAD`); a message buffer
/// holds at most a head plus one read, and the outgoing buffer one read's transcoding.
const H1_MAX_HEAD_KIB: u64 = 64;
/// Allocator and runtime slack on any RSS bound: mimalloc keeps freed pages of a segment
/// until its purge delay, and tokio's timer wheel and task slabs grow in steps.
const SLACK_KIB: u64 = 4 * 1024;
/// Descriptors allowed above the baseline once the abusers are gone: none is kept by a
/// closed connection; this only covers a log file reopened or a health check in flight.
const FD_SLACK: usize = 4;
/// RSS allowed above the baseline once the abusers are gone (mimalloc returns freed pages
/// to the kernel, but keeps a few segments cached per thread).
const RSS_AFTER_SLACK_KIB: u64 = 4 * 1024;
/// Rounds of the idle-connection abuse against one process.
const ROUNDS: usize = 2;

/// The tests of this file run one at a time: each measures a Fulcrum process while it is
/// the only abuse running, and the larger ones need most of this process's descriptors.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux >= 4.0).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn peak_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Raises this process's open-file limit (soft, and hard when allowed: root) to `want`, so
/// the test holds its clients and backends; `fulcrum run` inherits the hard limit and raises
/// its soft limit to it. Returns the soft limit now.
#[allow(unsafe_code)]
fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: r.rlim_max.max(want),
        };
        // SAFETY: setrlimit reads one rlimit from a struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } != 0 {
            let soft = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            // SAFETY: as above.
            let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const soft) };
        }
        // SAFETY: as above.
        let _ = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) };
    }
    r.rlim_cur
}

/// Makes `bind` leave the port to `connect`, which then only needs the 4-tuple to be unique
/// (`IP_BIND_ADDRESS_NO_PORT`): tens of thousands of clients from a few source addresses
/// without taking the ports Fulcrum's own connects to the backends need.
#[allow(unsafe_code)]
fn bind_no_port(s: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the length given.
    let _ = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// The source address of client `i`: 127.0.0.2 .. 127.0.0.9.
fn source_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8)
}

async fn connect_from(i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    bind_no_port(&s);
    s.bind(SocketAddr::from((source_ip(i), 0)))?;
    match tokio::time::timeout(Duration::from_secs(5), s.connect(to)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Opens `n` connections to `to`, at most 256 connecting at once, each then prepared by
/// `setup`; returns those that succeeded. Bounded: every connect and setup has a timeout.
async fn open_many<F, Fut>(n: usize, to: SocketAddr, setup: F) -> Vec<TcpStream>
where
    F: Fn(TcpStream) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = std::io::Result<TcpStream>> + Send,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let sem = Arc::clone(&sem);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.ok()?;
            let s = connect_from(i, to).await.ok()?;
            tokio::time::timeout(Duration::from_secs(10), setup(s))
                .await
                .ok()?
                .ok()
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            out.push(s);
        }
    }
    out
}

/// Opens `n` connections to `to` as [`open_many`] does; returns those that connected and
/// how many were reset by the far end before the connect returned (a refusal too).
async fn flood_connect(n: usize, to: SocketAddr) -> (Vec<TcpStream>, usize) {
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let sem = Arc::clone(&sem);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.ok();
            connect_from(i, to).await
        }));
    }
    let (mut out, mut reset) = (Vec::with_capacity(n), 0);
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => out.push(s),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => reset += 1,
            _ => {}
        }
    }
    (out, reset)
}

/// Active connections (tcp/http) or flows (udp) of a service, from the admin API.
async fn active_of(f: &Fulcrum, service: &str) -> u64 {
    let (st, body) = f.get("/api/v1/services").await;
    assert_eq!(st, 200, "GET /api/v1/services: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .and_then(|s| s["active_connections"].as_u64())
        .unwrap_or_else(|| panic!("no service {service} in {body}"))
}

/// What the process holds before the abuse (after a warm-up, so per-thread buffers and
/// pools that exist for the life of a worker are counted in).
struct Baseline {
    fds: usize,
    rss: u64,
}

impl Baseline {
    fn take(f: &Fulcrum) -> Self {
        let b = Self {
            fds: f.fd_count(),
            rss: rss_kib(f.pid),
        };
        reset_peak(f.pid);
        b
    }

    /// Waits (up to `limit`) for the service to have no connection left and the descriptors
    /// to be back at the baseline, then checks them and RSS.
    async fn expect_back(&self, f: &Fulcrum, service: &str, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (mut active, mut fds) = (u64::MAX, usize::MAX);
        while Instant::now() < deadline {
            active = active_of(f, service).await;
            fds = f.fd_count();
            if active == 0 && fds <= self.fds + FD_SLACK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the allocator's delayed purge run (it needs a little activity: the admin API
        // requests above and below are some). On a loaded machine (a CI running other test
        // binaries) the worker's release can come later than half a second: RSS is read
        // again, with a request between reads, for up to 5 s before it counts.
        let rss_deadline = Instant::now() + Duration::from_secs(5);
        let mut rss;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = active_of(f, service).await;
            rss = rss_kib(f.pid);
            if rss <= self.rss + RSS_AFTER_SLACK_KIB || Instant::now() > rss_deadline {
                break;
            }
        }
        eprintln!(
            "{what}: after: {active} active, {fds} fds (baseline {}), RSS {rss} KiB (baseline {} KiB, peak {} KiB)",
            self.fds,
            self.rss,
            peak_kib(f.pid)
        );
        assert_eq!(
            active, 0,
            "{what}: connections left after the abusers went away"
        );
        assert!(
            fds <= self.fds + FD_SLACK,
            "{what}: {fds} descriptors after the abuse, {} before (slack {FD_SLACK}):\n{}",
            self.fds,
            f.fd_listing()
        );
        assert!(
            rss <= self.rss + RSS_AFTER_SLACK_KIB,
            "{what}: RSS {rss} KiB after the abuse, {} KiB before (slack {RSS_AFTER_SLACK_KIB} KiB)",
            self.rss
        );
    }
}

fn tcp_config(
    admin: SocketAddr,
    listen: SocketAddr,
    extra: &str,
    backends: &[SocketAddr],
) -> String {
    format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("t", listen, "tcp", "p", extra),
        pool_toml("p", "rr", "", &weighted(backends))
    )
}

fn http_config(
    admin: SocketAddr,
    listen: SocketAddr,
    extra: &str,
    backends: &[SocketAddr],
) -> String {
    format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("h", listen, "http", "p", extra),
        pool_toml("p", "rr", "", &weighted(backends))
    )
}

// ---------------------------------------------------------------------------------------
// a small HTTP/1.1 backend
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum HttpMode {
    /// Answers every request with `ok` and closes (no pooled backend connection stays).
    OkClose,
    /// Answers with a `Content-Length` of `bytes` and writes them as fast as it may.
    Big(u64),
}

/// An HTTP/1.1 backend on 127.0.0.1; `written` counts body bytes the kernel took.
struct HttpBackend {
    addr: SocketAddr,
    written: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpBackend {
    async fn start(mode: HttpMode) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&written);
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let w = Arc::clone(&w);
                tokio::spawn(async move {
                    let _ = serve_http(s, mode, &w).await;
                });
            }
        });
        Self {
            addr,
            written,
            task,
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&b[..n]);
    }
    Ok(head)
}

async fn serve_http(
    mut s: TcpStream,
    mode: HttpMode,
    written: &AtomicUsize,
) -> std::io::Result<()> {
    read_head(&mut s).await?;
    match mode {
        HttpMode::OkClose => {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await?;
            s.shutdown().await
        }
        HttpMode::Big(total) => {
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes())
                .await?;
            let chunk = vec![b'x'; 256 * 1024];
            let mut left = total;
            // Bounded: a peer that stops reading blocks this write until Fulcrum cuts the
            // exchange (idle_timeout) and the write fails; the test aborts it at the end.
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                s.write_all(&chunk[..n]).await?;
                written.fetch_add(n, Ordering::SeqCst);
                left -= n as u64;
            }
            Ok(())
        }
    }
}

/// One GET on a fresh client connection, its `ok` answer read; the connection stays open.
async fn get_ok(mut s: TcpStream) -> std::io::Result<TcpStream> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: abuse\r\n\r\n")
        .await?;
    let head = read_head(&mut s).await?;
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// idle connections
// ---------------------------------------------------------------------------------------

/// `FULCRUM_ABUSE_IDLE` (default 10,000), or fewer if one process may not open enough
/// descriptors for `per_conn` each (the open-file limit cannot be raised past the hard limit
/// without `CAP_SYS_RESOURCE`; in a container it may be as low as 20,000).
fn idle_size(per_conn: u64) -> usize {
    let want = env_usize("FULCRUM_ABUSE_IDLE", 10_000);
    let limit = raise_nofile(per_conn * want as u64 + 4096);
    let fits = (limit.saturating_sub(1024) / per_conn) as usize;
    if fits < want {
        eprintln!(
            "{want} idle connections need {} descriptors in one process; the open file limit is {limit}: {fits} instead",
            per_conn * want as u64
        );
    }
    want.min(fits)
}

/// Per idle connection, what it may cost Fulcrum's RSS. An idle connection holds no buffer
/// (the relay and the HTTP/1.1 server take theirs only while bytes move); what is left is
/// its state: L4, a task with the relay future and two socket registrations (measured 1.41
/// KB, docs/l4.md); HTTP, a parked keep-alive connection (measured 0.23 KB, park.rs). The
/// budget is twice the measured cost rounded up to a KiB, far below any buffer (the relay's
/// 64 KiB, the codec's 1 KiB initial buffer would already exceed the HTTP budget).
const IDLE_L4_BUDGET_BYTES: u64 = 3 * 1024;
const IDLE_HTTP_BUDGET_BYTES: u64 = 1024;
/// An HTTP connection that has not sent its first request head yet is read at once (the
/// request is usually there): it holds a message buffer (1 KiB, `BUF_CAP` in h1.rs) and the
/// request's boxed future (measured about 4 KB with both), for at most the `request_header`
/// timeout (10 s by default). The budget is twice that.
const FIRST_REQUEST_BUDGET_BYTES: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_cost_no_buffers_and_leave_nothing() {
    let _serial = SERIAL.lock().await;
    // This process holds a client and a backend socket per connection, Fulcrum two.
    let n = idle_size(2);
    // Fulcrum connects to the backends from 127.0.0.1: four backend addresses give it four
    // times the ephemeral ports.
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(TcpBackend::start(Behaviour::Echo).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = tcp_config(admin, listen, "idle_timeout = \"5m\"", &addrs);
    let f = Fulcrum::start("abuse-idle-tcp", admin, &cfg, &["--workers", "1"]).await;
    for i in 0..4 {
        echo_once(listen, format!("warm-up {i}").as_bytes())
            .await
            .unwrap();
    }
    let base = Baseline::take(&f);
    // Twice: memory a first round leaves in the allocator's caches is reused by the
    // second, so a leak shows as growth from round to round.
    for round in 1..=ROUNDS {
        let started = Instant::now();
        let clients = open_many(n, listen, |mut s| async move {
            round_trip(&mut s, b"hello").await?;
            Ok(s)
        })
        .await;
        let opened = clients.len();
        let active = active_of(&f, "t").await;
        let rss = rss_kib(f.pid);
        let fds = f.fd_count();
        let grown = rss.saturating_sub(base.rss);
        let per_conn = grown * 1024 / opened.max(1) as u64;
        eprintln!(
            "idle tcp, round {round}: {opened}/{n} open in {:?}, {active} active, {fds} fds, RSS +{grown} KiB ({per_conn} B per connection)",
            started.elapsed()
        );
        assert!(
            opened * 100 >= n * 99,
            "only {opened} of {n} idle connections opened"
        );
        assert_eq!(active, opened as u64, "every idle connection is held");
        assert!(
            fds >= base.fds + 2 * opened && fds <= base.fds + 2 * opened + FD_SLACK,
            "two descriptors per proxied connection: {fds} with {opened} connections, {} before",
            base.fds
        );
        let bound = opened as u64 * IDLE_L4_BUDGET_BYTES / 1024 + SLACK_KIB;
        assert!(
            grown <= bound,
            "{opened} idle connections grew RSS by {grown} KiB; bound {bound} KiB ({IDLE_L4_BUDGET_BYTES} B each + {SLACK_KIB} KiB)"
        );
        drop(clients);
        base.expect_back(
            &f,
            "t",
            &format!("idle tcp, round {round}"),
            Duration::from_secs(20),
        )
        .await;
    }
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_cost_no_buffers_and_leave_nothing() {
    let _serial = SERIAL.lock().await;
    // This process and Fulcrum each hold one socket per idle connection.
    let n = idle_size(1);
    let b = HttpBackend::start(HttpMode::OkClose).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = http_config(admin, listen, "idle_timeout = \"5m\"", &[b.addr]);
    let f = Fulcrum::start("abuse-idle-http", admin, &cfg, &["--workers", "1"]).await;
    for _ in 0..4 {
        let s = connect(listen).await.unwrap();
        get_ok(s).await.unwrap();
    }
    let base = Baseline::take(&f);
    for round in 1..=ROUNDS {
        let started = Instant::now();
        let clients = open_many(n, listen, get_ok).await;
        let opened = clients.len();
        // Idle keep-alive connections park after a second (park.rs PARK_AFTER).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let _ = active_of(&f, "h").await;
        let rss = rss_kib(f.pid);
        let fds = f.fd_count();
        let grown = rss.saturating_sub(base.rss);
        let peak = peak_kib(f.pid).saturating_sub(base.rss);
        let per_conn = grown * 1024 / opened.max(1) as u64;
        eprintln!(
            "idle http, round {round}: {opened}/{n} open in {:?}, {fds} fds, RSS +{grown} KiB ({per_conn} B per connection), peak +{peak} KiB",
            started.elapsed()
        );
        assert!(
            opened * 100 >= n * 99,
            "only {opened} of {n} idle connections opened"
        );
        assert!(
            fds >= base.fds + opened && fds <= base.fds + opened + FD_SLACK,
            "one descriptor per idle client connection: {fds} with {opened}, {} before",
            base.fds
        );
        let bound = opened as u64 * IDLE_HTTP_BUDGET_BYTES / 1024 + SLACK_KIB;
        assert!(
            grown <= bound,
            "{opened} idle keep-alive connections grew RSS by {grown} KiB; bound {bound} KiB ({IDLE_HTTP_BUDGET_BYTES} B each + {SLACK_KIB} KiB)"
        );
        drop(clients);
        base.expect_back(
            &f,
            "h",
            &format!("idle http, round {round}"),
            Duration::from_secs(20),
        )
        .await;
    }
    f.assert_no_panic();
}

// ---------------------------------------------------------------------------------------
// a flood past max_connections
// ---------------------------------------------------------------------------------------

/// `FLOOD` clients connect at once and stay, against `max_connections = 1000`: Fulcrum
/// serves at most the limit (the backend holds what it gets), resets the rest at once, and
/// its descriptors and memory stay those of the limit, not of the flood.
async fn flood_past_max_connections(protocol: &str) {
    const LIMIT: usize = 1000;
    let flood = env_usize("FULCRUM_ABUSE_FLOOD", 4 * LIMIT);
    raise_nofile(4 * flood as u64 + 4096);
    // L4: the backend holds every connection it gets (what it accepted is what is served at
    // once). HTTP: the flood's connections send no request; the backend answers warm-ups.
    let b = TcpBackend::start(Behaviour::NeverRead).await;
    let hb = HttpBackend::start(HttpMode::OkClose).await;
    let (admin, listen) = (free_addr(), free_addr());
    let extra = format!("max_connections = {LIMIT}\nidle_timeout = \"5m\"");
    let (cfg, svc) = if protocol == "tcp" {
        (tcp_config(admin, listen, &extra, &[b.addr]), "t")
    } else {
        (http_config(admin, listen, &extra, &[hb.addr]), "h")
    };
    let f = Fulcrum::start("abuse-flood", admin, &cfg, &["--workers", "1"]).await;
    for _ in 0..4 {
        let s = connect(listen).await.unwrap();
        if protocol == "http" {
            get_ok(s).await.unwrap();
        }
    }
    let base = Baseline::take(&f);
    // Descriptors per served connection: the client's, and for L4 the backend's.
    let per_conn = if protocol == "tcp" { 2 } else { 1 };
    let (clients, reset) = flood_connect(flood, listen).await;
    let opened = clients.len() + reset;
    let (mut peak_active, mut peak_fds) = (0, 0);
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        peak_active = peak_active.max(active_of(&f, svc).await);
        peak_fds = peak_fds.max(f.fd_count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = f
        .metric(
            "fulcrum_service_refused_total",
            &[("reason", "max_connections")],
        )
        .await
        .unwrap_or(0.0);
    let grown = peak_kib(f.pid).saturating_sub(base.rss);
    eprintln!(
        "{protocol} flood: {opened} connected ({reset} reset before the connect returned), peak {peak_active} served, backend accepted {}, {refused} refused, peak {peak_fds} fds (baseline {}), peak RSS +{grown} KiB",
        b.accepted.load(Ordering::SeqCst),
        base.fds
    );
    assert!(
        opened * 100 >= flood * 99,
        "only {opened} of {flood} connected"
    );
    assert!(
        peak_active <= LIMIT as u64,
        "{peak_active} served at once with max_connections = {LIMIT}"
    );
    assert!(
        b.accepted.load(Ordering::SeqCst) <= LIMIT,
        "the backend got more than {LIMIT} connections"
    );
    assert!(
        refused >= (opened - LIMIT) as f64,
        "{refused} refused of {opened} with {LIMIT} allowed"
    );
    assert!(
        peak_fds <= base.fds + per_conn * LIMIT + FD_SLACK,
        "{peak_fds} descriptors with max_connections = {LIMIT} ({} before)",
        base.fds
    );
    let budget = if protocol == "tcp" {
        IDLE_L4_BUDGET_BYTES
    } else {
        FIRST_REQUEST_BUDGET_BYTES
    };
    let bound = LIMIT as u64 * budget / 1024 + SLACK_KIB;
    assert!(
        grown <= bound,
        "peak RSS +{grown} KiB under a flood of {opened}; bound {bound} KiB ({LIMIT} held connections x {budget} B + {SLACK_KIB} KiB)"
    );
    drop(clients);
    drop(b);
    base.expect_back(
        &f,
        svc,
        &format!("{protocol} flood"),
        Duration::from_secs(20),
    )
    .await;
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_flood_past_max_connections_is_bounded() {
    let _serial = SERIAL.lock().await;
    flood_past_max_connections("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_flood_past_max_connections_is_bounded() {
    let _serial = SERIAL.lock().await;
    flood_past_max_connections("http").await;
}

// ---------------------------------------------------------------------------------------
// a UDP flood from random source ports
// ---------------------------------------------------------------------------------------

/// Per UDP flow: one socket and its state, no buffer (the receive and reply buffers are
/// per worker thread, `MAX_DATAGRAM` each). Measured 1.35 KB of user space per flow
/// (docs/l4.md, `bench/udp_flow_cost.py`); the budget is twice that, rounded up.
const FLOW_BUDGET_BYTES: u64 = 3 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flood_from_random_ports_keeps_the_flow_table_and_memory_bounded() {
    const MAX_FLOWS: u64 = 1000;
    let _serial = SERIAL.lock().await;
    let sources = env_usize("FULCRUM_ABUSE_UDP_SOURCES", 20_000);
    let b = UdpBackend::start("b0").await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml(
            "u",
            listen,
            "udp",
            "p",
            &format!("idle_timeout = \"2s\"\nmax_flows = {MAX_FLOWS}")
        ),
        pool_toml("p", "rr", "", &weighted(&[b.addr]))
    );
    let f = Fulcrum::start("abuse-udp", admin, &cfg, &["--workers", "1"]).await;
    // Warm-up: one flow, expired.
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"warm-up", listen).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.received.load(Ordering::SeqCst) > 0 && active_of(&f, "u").await == 0
        })
        .await,
        "the warm-up flow did not expire"
    );
    let base = Baseline::take(&f);
    // Random source ports on 127.0.0.2..9, a datagram each, in the background.
    let flood = tokio::task::spawn_blocking(move || {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ u64::from(std::process::id());
        let mut sent = 0usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..sources {
            if Instant::now() > deadline {
                break;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = 1024 + (x % 64_000) as u16;
            let Ok(s) = std::net::UdpSocket::bind((source_ip(i), port)) else {
                continue;
            };
            if s.send_to(b"flood", listen).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let (mut peak_flows, mut peak_fds) = (0, 0);
    while !flood.is_finished() {
        peak_flows = peak_flows.max(active_of(&f, "u").await);
        peak_fds = peak_fds.max(f.fd_count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = flood.await.unwrap();
    peak_flows = peak_flows.max(active_of(&f, "u").await);
    peak_fds = peak_fds.max(f.fd_count());
    let grown = peak_kib(f.pid).saturating_sub(base.rss);
    eprintln!(
        "udp flood: {sent} sources, peak {peak_flows} flows, peak {peak_fds} fds (baseline {}), peak RSS +{grown} KiB, backend got {}",
        base.fds,
        b.received.load(Ordering::SeqCst)
    );
    assert!(
        sent * 10 >= sources * 9,
        "only {sent} of {sources} sources sent"
    );
    assert!(
        peak_flows <= MAX_FLOWS,
        "{peak_flows} flows with max_flows = {MAX_FLOWS}"
    );
    assert!(
        peak_fds <= base.fds + MAX_FLOWS as usize + FD_SLACK,
        "{peak_fds} descriptors with max_flows = {MAX_FLOWS} ({} before)",
        base.fds
    );
    let bound = MAX_FLOWS * FLOW_BUDGET_BYTES / 1024 + SLACK_KIB;
    assert!(
        grown <= bound,
        "peak RSS +{grown} KiB under a flood of {sent} sources; bound {bound} KiB ({MAX_FLOWS} flows x {FLOW_BUDGET_BYTES} B + {SLACK_KIB} KiB)"
    );
    // The flows expire after idle_timeout (2 s).
    base.expect_back(&f, "u", "udp flood", Duration::from_secs(20))
        .await;
    f.assert_no_panic();
}

// ---------------------------------------------------------------------------------------
// peers that never read
// ---------------------------------------------------------------------------------------

/// Concurrent abusers in the never-read cases.
const NEVER_READ_CONNS: usize = 4;
/// The exchange is abandoned after this long without progress (`idle_timeout`, and for
/// HTTP uploads the response timeout).
const STALL_CUT: Duration = Duration::from_secs(2);

/// The most Fulcrum may buffer per connection (KiB): L4, one pending read per direction
/// (two scratch-sized buffers); HTTP/1.1, the request and the response message buffers (a
/// head and one read each) and the outgoing buffer (one read transcoded): four heads.
fn per_conn_bound_kib(protocol: &str) -> u64 {
    if protocol == "tcp" {
        2 * RELAY_SCRATCH_KIB
    } else {
        4 * H1_MAX_HEAD_KIB
    }
}

/// The bound on RSS growth with `conns` stalled connections: their buffers, the worker's
/// scratch buffer (touched in full only by bulk reads), and the slack.
fn stalled_bound_kib(protocol: &str, conns: usize) -> u64 {
    conns as u64 * per_conn_bound_kib(protocol) + RELAY_SCRATCH_KIB + SLACK_KIB
}

/// Writes up to `total` bytes to `s` in 1 MiB pieces until a piece makes no progress for
/// a second (the far end stopped taking them), or the write fails. Returns bytes written.
async fn write_until_stalled(s: &mut TcpStream, total: u64) -> u64 {
    let piece = vec![b'u'; 1 << 20];
    let mut done = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while done < total && Instant::now() < deadline {
        let n = (total - done).min(piece.len() as u64) as usize;
        match tokio::time::timeout(Duration::from_secs(1), s.write(&piece[..n])).await {
            Ok(Ok(m)) if m > 0 => done += m as u64,
            _ => break,
        }
    }
    done
}

/// Whether `s` is ended by the far end (EOF, reset, or an answer then EOF) within `limit`.
async fn ends_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Clients upload `FULCRUM_ABUSE_BYTES` to a backend that never reads: the uploads stall
/// once the socket buffers on the way are full, Fulcrum holds no more than its per-
/// connection buffers, and it ends each exchange `STALL_CUT` after it stalled.
async fn backend_never_reads(protocol: &str) {
    let total = env_usize("FULCRUM_ABUSE_BYTES", 1 << 30) as u64;
    let b = TcpBackend::start(Behaviour::NeverRead).await;
    let (admin, listen) = (free_addr(), free_addr());
    let (cfg, svc) = if protocol == "tcp" {
        (
            tcp_config(admin, listen, "idle_timeout = \"2s\"", &[b.addr]),
            "t",
        )
    } else {
        let extra = "idle_timeout = \"2s\"\n[service.timeouts]\nresponse = \"2s\"\n[service.retry]\nattempts = 0";
        (http_config(admin, listen, extra, &[b.addr]), "h")
    };
    let f = Fulcrum::start("abuse-upload", admin, &cfg, &["--workers", "1"]).await;
    let base = Baseline::take(&f);
    let mut tasks = Vec::new();
    for i in 0..NEVER_READ_CONNS {
        let http = protocol == "http";
        tasks.push(tokio::spawn(async move {
            let mut s = connect_from(i, listen).await.unwrap();
            if http {
                let head = format!(
                    "POST /upload HTTP/1.1\r\nHost: abuse\r\nContent-Length: {total}\r\n\r\n"
                );
                s.write_all(head.as_bytes()).await.unwrap();
            }
            let sent = write_until_stalled(&mut s, total).await;
            let stalled = Instant::now();
            let ended = ends_within(&mut s, STALL_CUT + Duration::from_secs(4)).await;
            (sent, ended, stalled.elapsed())
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let grown = peak_kib(f.pid).saturating_sub(base.rss);
    eprintln!("{protocol} upload to a backend that never reads: (sent, ended, after) {results:?}, peak RSS +{grown} KiB");
    for (sent, ended, after) in &results {
        assert!(
            *sent < total,
            "{sent} of {total} bytes taken although the backend never reads"
        );
        assert!(
            *ended,
            "the stalled upload was not ended ({after:?} after it stalled)"
        );
    }
    let bound = stalled_bound_kib(protocol, NEVER_READ_CONNS);
    assert!(
        grown <= bound,
        "peak RSS +{grown} KiB with {NEVER_READ_CONNS} stalled uploads; bound {bound} KiB"
    );
    drop(b);
    base.expect_back(
        &f,
        svc,
        &format!("{protocol} upload"),
        Duration::from_secs(20),
    )
    .await;
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_backend_that_never_reads_an_upload() {
    let _serial = SERIAL.lock().await;
    backend_never_reads("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backend_that_never_reads_an_upload() {
    let _serial = SERIAL.lock().await;
    backend_never_reads("http").await;
}

/// Backends answer `FULCRUM_ABUSE_BYTES` to clients that never read: the backends' writes
/// stall once the socket buffers on the way are full, Fulcrum holds no more than its
/// per-connection buffers, and it ends each exchange `STALL_CUT` after it stalled.
async fn client_never_reads(protocol: &str) {
    let total = env_usize("FULCRUM_ABUSE_BYTES", 1 << 30) as u64;
    let b = HttpBackend::start(HttpMode::Big(total)).await;
    let (admin, listen) = (free_addr(), free_addr());
    let (cfg, svc) = if protocol == "tcp" {
        (
            tcp_config(admin, listen, "idle_timeout = \"2s\"", &[b.addr]),
            "t",
        )
    } else {
        (
            http_config(admin, listen, "idle_timeout = \"2s\"", &[b.addr]),
            "h",
        )
    };
    let f = Fulcrum::start("abuse-download", admin, &cfg, &["--workers", "1"]).await;
    let base = Baseline::take(&f);
    let mut clients = Vec::new();
    for i in 0..NEVER_READ_CONNS {
        let mut s = connect_from(i, listen).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: abuse\r\n\r\n")
            .await
            .unwrap();
        clients.push(s);
    }
    // Wait until the backends' writes stall (no progress for a second), bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = usize::MAX;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = b.written.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let stalled = Instant::now();
    let written = b.written.load(Ordering::SeqCst) as u64;
    let grown = peak_kib(f.pid).saturating_sub(base.rss);
    // The clients still do not read; Fulcrum must end the exchanges on its own.
    tokio::time::sleep(STALL_CUT + Duration::from_secs(1)).await;
    let active = active_of(&f, svc).await;
    eprintln!(
        "{protocol} answer to clients that never read: backends wrote {written} of {} bytes, {active} active {:?} after the stall, peak RSS +{grown} KiB",
        total * NEVER_READ_CONNS as u64,
        stalled.elapsed()
    );
    assert!(
        written < total * NEVER_READ_CONNS as u64,
        "the backends wrote everything although no client reads"
    );
    let bound = stalled_bound_kib(protocol, NEVER_READ_CONNS);
    assert!(
        grown <= bound,
        "peak RSS +{grown} KiB with {NEVER_READ_CONNS} clients that never read; bound {bound} KiB"
    );
    assert_eq!(
        active, 0,
        "the stalled answers were not ended after {STALL_CUT:?}"
    );
    drop(clients);
    base.expect_back(
        &f,
        svc,
        &format!("{protocol} answer"),
        Duration::from_secs(20),
    )
    .await;
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_client_that_never_reads_an_answer() {
    let _serial = SERIAL.lock().await;
    client_never_reads("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_client_that_never_reads_an_answer() {
    let _serial = SERIAL.lock().await;
    client_never_reads("http").await;
}

/// hyper's server receive window per HTTP/2 connection (and per stream), which Fulcrum keeps
/// (`DEFAULT_CONN_WINDOW` in hyper's `proto/h2/server.rs`): the most of a client's request
/// bodies it can hold unread.
const H2_CONN_WINDOW_KIB: u64 = 1024;

/// An HTTP/2 client (h2c, prior knowledge) uploads `FULCRUM_ABUSE_BYTES` to a backend that
/// never reads: Fulcrum takes the client's DATA only as the backend connection takes it, so
/// the upload stalls with at most a receive window held, and the exchange ends at the
/// response timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_backend_that_never_reads_an_upload() {
    let _serial = SERIAL.lock().await;
    let total = env_usize("FULCRUM_ABUSE_BYTES", 1 << 30) as u64;
    let b = TcpBackend::start(Behaviour::NeverRead).await;
    let (admin, listen) = (free_addr(), free_addr());
    let extra = "idle_timeout = \"2s\"\n[service.timeouts]\nresponse = \"2s\"\n[service.retry]\nattempts = 0";
    let cfg = http_config(admin, listen, extra, &[b.addr]);
    let f = Fulcrum::start("abuse-h2-upload", admin, &cfg, &["--workers", "1"]).await;
    let base = Baseline::take(&f);
    let tcp = connect(listen).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes>::new(1);
    let req = hyper::Request::post("http://abuse/upload")
        .header("content-length", total)
        .body(body)
        .unwrap();
    let answer =
        tokio::spawn(async move { h2.send_request(req).await.map(|r| r.status().as_u16()) });
    let piece = bytes::Bytes::from(vec![b'u'; 1 << 20]);
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent < total && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), tx.send_data(piece.clone())).await {
            Ok(Ok(())) => sent += piece.len() as u64,
            _ => break,
        }
    }
    let stalled = Instant::now();
    let answered = tokio::time::timeout(STALL_CUT + Duration::from_secs(4), answer).await;
    let grown = peak_kib(f.pid).saturating_sub(base.rss);
    eprintln!(
        "h2 upload to a backend that never reads: {sent} bytes handed to the client, answer {answered:?} {:?} after the stall, peak RSS +{grown} KiB",
        stalled.elapsed()
    );
    assert!(
        sent < total,
        "{sent} of {total} bytes taken although the backend never reads"
    );
    assert!(
        answered.is_ok(),
        "the stalled upload was not ended within {STALL_CUT:?} and 4 s"
    );
    let bound = H2_CONN_WINDOW_KIB + stalled_bound_kib("http", 1);
    assert!(
        grown <= bound,
        "peak RSS +{grown} KiB with a stalled HTTP/2 upload; bound {bound} KiB (a receive window, one HTTP/1.1 exchange, the slack)"
    );
    drop(tx);
    drop(b);
    base.expect_back(&f, "h", "h2 upload", Duration::from_secs(20))
        .await;
    f.assert_no_panic();
}
