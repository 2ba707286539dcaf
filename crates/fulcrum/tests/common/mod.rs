//! Shared helpers for the end-to-end L4 tests: start the real `fulcrum run` binary on a
//! generated config, talk to its admin API, and run small TCP/UDP backends and clients.
//!
//! Every wait here is bounded in time; every port is on 127.0.0.1 and chosen so that tests
//! running in parallel (and the clients' ephemeral ports) never collide.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

pub mod certs;
pub mod etcd;
pub mod peers;

// ---------------------------------------------------------------------------------------
// ports and temp files
// ---------------------------------------------------------------------------------------

static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static SEQ: AtomicU64 = AtomicU64::new(0);

fn pseudo_random() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ SEQ
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A port on 127.0.0.1 that is free for both TCP and UDP now, outside the kernel's ephemeral
/// range (so no client socket can take it before fulcrum binds it) and never handed out
/// twice by this test process.
pub fn free_port() -> u16 {
    for _ in 0..2000 {
        let port = 20_000 + (pseudo_random() % 12_000) as u16;
        {
            let mut used = USED_PORTS.lock().unwrap();
            let used = used.get_or_insert_with(HashSet::new);
            if used.contains(&port) {
                continue;
            }
            let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
            let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
            if tcp.is_ok() && udp.is_ok() {
                used.insert(port);
                return port;
            }
        }
    }
    panic!("no free port found");
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fulcrum-l4-{}-{}-{}",
        name,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

// ---------------------------------------------------------------------------------------
// config text
// ---------------------------------------------------------------------------------------

/// `[[pool.backend]]` blocks for (address, weight) pairs.
pub fn backends_toml(backends: &[(SocketAddr, u32)]) -> String {
    let mut s = String::new();
    for (a, w) in backends {
        let _ = write!(s, "[[pool.backend]]\naddress = \"{a}\"\nweight = {w}\n\n");
    }
    s
}

/// A whole `[[pool]]` with optional extra text (health/outlier sections) before the backends.
pub fn pool_toml(
    name: &str,
    scheduler: &str,
    extra: &str,
    backends: &[(SocketAddr, u32)],
) -> String {
    format!(
        "[[pool]]\nname = \"{name}\"\nscheduler = \"{scheduler}\"\n\n{extra}\n{}",
        backends_toml(backends)
    )
}

/// A `[[service]]` block; `extra` is raw lines (`proxy_protocol`, `max_connections`, ...).
pub fn service_toml(
    name: &str,
    listen: SocketAddr,
    protocol: &str,
    pool: &str,
    extra: &str,
) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nprotocol = \"{protocol}\"\npool = \"{pool}\"\n{extra}\n"
    )
}

pub fn admin_toml(admin: SocketAddr) -> String {
    format!("[admin]\nlisten = \"{admin}\"\n\n")
}

pub fn weighted(addrs: &[SocketAddr]) -> Vec<(SocketAddr, u32)> {
    addrs.iter().map(|a| (*a, 1)).collect()
}

/// The L4 tests' config: the admin API, tcp service `svc` on `listen` (with `svc_extra`)
/// over pool `p` (`scheduler`, every backend weight 1).
pub fn tcp_service(
    admin: SocketAddr,
    listen: SocketAddr,
    svc_extra: &str,
    scheduler: &str,
    backends: &[SocketAddr],
) -> String {
    format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("svc", listen, "tcp", "p", svc_extra),
        pool_toml("p", scheduler, "", &weighted(backends))
    )
}

// ---------------------------------------------------------------------------------------
// the fulcrum process
// ---------------------------------------------------------------------------------------

/// A running `fulcrum run`; killed (SIGKILL, by PID) and reaped on drop.
pub struct Fulcrum {
    pub child: Option<Child>,
    pub pid: u32,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub stderr_path: PathBuf,
    pub dir: PathBuf,
    exit: Option<ExitStatus>,
}

impl Fulcrum {
    /// Writes `config` and starts `fulcrum run -c FILE` plus `extra_args`, without waiting.
    pub fn spawn(name: &str, admin: SocketAddr, config: &str, extra_args: &[&str]) -> Self {
        Self::spawn_env(name, admin, config, extra_args, &[])
    }

    /// [`Fulcrum::spawn`] with extra environment variables.
    pub fn spawn_env(
        name: &str,
        admin: SocketAddr,
        config: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = temp_dir(name);
        let config_path = dir.join("fulcrum.toml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let child = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .args(extra_args)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn fulcrum");
        let pid = child.id();
        Self {
            child: Some(child),
            pid,
            admin,
            config: config_path,
            stderr_path,
            dir,
            exit: None,
        }
    }

    /// Starts fulcrum and waits (up to 10 s) until `/readyz` answers 200.
    pub async fn start(name: &str, admin: SocketAddr, config: &str, extra_args: &[&str]) -> Self {
        let mut f = Self::spawn(name, admin, config, extra_args);
        f.wait_ready(Duration::from_secs(10)).await;
        f
    }

    pub async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait() {
                panic!(
                    "fulcrum exited before ready: {st:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            if let Ok((200, _)) = http(self.admin, "GET", "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "fulcrum not ready within {limit:?}\nconfig:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&self.config).unwrap_or_default(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last `n` lines of stderr, for assertion messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let s = self.stderr();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn write_config(&self, config: &str) {
        // Write-then-rename so a reload never sees a half-written file.
        let tmp = self.dir.join("fulcrum.toml.tmp");
        std::fs::write(&tmp, config).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed", self.pid);
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = self.child.as_mut() {
                self.exit = c.try_wait().expect("try_wait");
            }
        }
        self.exit
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Open file descriptors of the process (Linux /proc).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, Iterator::count)
    }

    pub fn fd_listing(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) {
            for e in rd.flatten() {
                let target = std::fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let _ = writeln!(out, "{} -> {target}", e.file_name().to_string_lossy());
            }
        }
        out
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nstderr:\n{}", self.stderr_tail(30)))
    }

    pub async fn metrics(&self) -> String {
        let (st, body) = self.get("/metrics").await;
        assert_eq!(st, 200, "/metrics status; body: {body}");
        body
    }

    /// The value of the first sample whose name and labels contain all of `needles`
    /// (e.g. `["fulcrum_config_reloads_total{", "result=\"error\""]`); None if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// `GET /api/v1/pools/{pool}` as JSON.
    pub async fn pool(&self, pool: &str) -> serde_json::Value {
        let (st, body) = self.get(&format!("/api/v1/pools/{pool}")).await;
        assert_eq!(st, 200, "GET /api/v1/pools/{pool}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("pool JSON: {e}: {body}"))
    }

    /// One backend's JSON object from the pool API.
    pub async fn backend(&self, pool: &str, addr: SocketAddr) -> serde_json::Value {
        let p = self.pool(pool).await;
        find_backend(&p, addr).unwrap_or_else(|| panic!("backend {addr} not in pool {pool}: {p}"))
    }

    pub async fn backend_state(&self, pool: &str, addr: SocketAddr) -> String {
        self.backend(pool, addr).await["state"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }

    /// Polls until the backend's `state` equals `want`; returns the time it took, or panics
    /// after `limit` with the last state seen.
    pub async fn wait_state(
        &self,
        pool: &str,
        addr: SocketAddr,
        want: &str,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let st = self.backend_state(pool, addr).await;
            if st == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "backend {addr} of pool {pool} still {st:?}, not {want:?}, after {limit:?}; pool: {}",
                self.pool(pool).await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn assert_no_panic(&self) {
        let s = self.stderr();
        assert!(!s.contains("panicked"), "fulcrum panicked; stderr:\n{s}");
    }
}

impl Drop for Fulcrum {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.exit.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn find_backend(pool: &serde_json::Value, addr: SocketAddr) -> Option<serde_json::Value> {
    let want = addr.to_string();
    pool["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"].as_str() == Some(want.as_str()))
        .cloned()
}

pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (lbl, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.find('}') else { continue };
            (&r[..end], r[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue;
        };
        if labels
            .iter()
            .all(|(k, v)| lbl.split(',').any(|kv| kv.trim() == format!("{k}=\"{v}\"")))
        {
            let v = value.split_whitespace().next()?;
            return v.parse().ok();
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// a tiny HTTP/1.1 client for the admin API
// ---------------------------------------------------------------------------------------

pub async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_body(addr, method, path, "").await
}

pub async fn http_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        parse_http(&buf)
    };
    match tokio::time::timeout(Duration::from_secs(3), fut).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "admin HTTP timed out",
        )),
    }
}

fn parse_http(buf: &[u8]) -> std::io::Result<(u16, String)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut body = buf[end + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_str = String::from_utf8_lossy(&rest[..p]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[p + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = out;
    }
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

// ---------------------------------------------------------------------------------------
// backends
// ---------------------------------------------------------------------------------------

/// What a TCP backend does with one accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Echo everything back; close after the peer's EOF.
    Echo,
    /// Read to EOF, then answer `got N bytes` and close.
    HalfClose,
    /// Accept and never read (hold the socket open until the backend is stopped).
    NeverRead,
    /// Send 1 MiB of `pattern_byte(i)` in 32 KiB pieces over about one second, then close.
    Trickle,
    /// Send `bye`, shut down the write side, then read to EOF (counted in `received`).
    ServerHalfClose,
    /// Read a PROXY v1 header line, send it back verbatim, then echo.
    ProxyV1,
    /// Read a PROXY v2 header (16 + len bytes), send it back verbatim, then echo.
    ProxyV2,
}

pub const TRICKLE_TOTAL: usize = 1 << 20;
const TRICKLE_CHUNK: usize = 32 * 1024;

pub fn pattern_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// A TCP backend on 127.0.0.1 run by the test's tokio runtime. Counts accepted connections
/// and connections that carried at least one byte from the proxy ("served"; active health
/// checks connect and close without data, so they are not counted there).
pub struct TcpBackend {
    pub addr: SocketAddr,
    pub behaviour: Behaviour,
    pub accepted: Arc<AtomicUsize>,
    pub served: Arc<AtomicUsize>,
    /// Bytes read from the proxy by the `ServerHalfClose` behaviour (after its own FIN).
    pub received: Arc<AtomicUsize>,
    accept_task: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpBackend {
    pub async fn start(behaviour: Behaviour) -> Self {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = l.local_addr().expect("local addr");
        let mut b = Self {
            addr,
            behaviour,
            accepted: Arc::new(AtomicUsize::new(0)),
            served: Arc::new(AtomicUsize::new(0)),
            received: Arc::new(AtomicUsize::new(0)),
            accept_task: None,
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        b.run(l);
        b
    }

    fn run(&mut self, l: TcpListener) {
        let (accepted, served, received, conns, behaviour) = (
            Arc::clone(&self.accepted),
            Arc::clone(&self.served),
            Arc::clone(&self.received),
            Arc::clone(&self.conns),
            self.behaviour,
        );
        self.accept_task = Some(tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let served = Arc::clone(&served);
                let received = Arc::clone(&received);
                let h = tokio::spawn(async move {
                    let _ = serve_conn(s, behaviour, &served, &received).await;
                });
                let mut c = conns.lock().unwrap();
                c.retain(|h| !h.is_finished());
                c.push(h);
            }
        }));
    }

    /// Stops listening (the port then refuses connections); open connections go on.
    pub fn stop_listening(&mut self) {
        if let Some(t) = self.accept_task.take() {
            t.abort();
        }
    }

    /// Stops listening and ends every open connection.
    pub fn kill(&mut self) {
        self.stop_listening();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        self.stop_listening();
        let deadline = Instant::now() + Duration::from_secs(3);
        let l = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "rebind {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.run(l);
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve_conn(
    mut s: TcpStream,
    behaviour: Behaviour,
    served: &AtomicUsize,
    received: &AtomicUsize,
) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    match behaviour {
        Behaviour::Echo => {
            let mut first = true;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return s.shutdown().await;
                }
                if first {
                    served.fetch_add(1, Ordering::SeqCst);
                    first = false;
                }
                s.write_all(&buf[..n]).await?;
            }
        }
        Behaviour::HalfClose => {
            let mut total = 0usize;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                if total == 0 {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                total += n;
            }
            s.write_all(format!("got {total} bytes").as_bytes()).await?;
            s.shutdown().await
        }
        Behaviour::ServerHalfClose => {
            served.fetch_add(1, Ordering::SeqCst);
            s.write_all(b"bye").await?;
            s.shutdown().await?;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                received.fetch_add(n, Ordering::SeqCst);
            }
        }
        Behaviour::NeverRead => {
            served.fetch_add(1, Ordering::SeqCst);
            // Hold the socket until aborted (bounded: an hour is far beyond any test).
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(s);
            Ok(())
        }
        Behaviour::Trickle => {
            served.fetch_add(1, Ordering::SeqCst);
            let data: Vec<u8> = (0..TRICKLE_TOTAL).map(pattern_byte).collect();
            let pieces = TRICKLE_TOTAL / TRICKLE_CHUNK;
            let pause = Duration::from_millis(1000 / pieces as u64);
            for chunk in data.chunks(TRICKLE_CHUNK) {
                s.write_all(chunk).await?;
                tokio::time::sleep(pause).await;
            }
            s.shutdown().await
        }
        Behaviour::ProxyV1 | Behaviour::ProxyV2 => {
            let header = if behaviour == Behaviour::ProxyV1 {
                read_v1_header(&mut s).await?
            } else {
                read_v2_header(&mut s).await?
            };
            served.fetch_add(1, Ordering::SeqCst);
            s.write_all(&header).await?;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return s.shutdown().await;
                }
                s.write_all(&buf[..n]).await?;
            }
        }
    }
}

/// Reads byte by byte up to and including the first CRLF (at most 107 bytes, the v1 limit).
async fn read_v1_header(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut h = Vec::new();
    while h.len() < 107 {
        let b = s.read_u8().await?;
        h.push(b);
        if h.ends_with(b"\r\n") {
            return Ok(h);
        }
    }
    Ok(h)
}

async fn read_v2_header(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut h = vec![0u8; 16];
    s.read_exact(&mut h).await?;
    let len = u16::from_be_bytes([h[14], h[15]]) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).await?;
    h.extend_from_slice(&rest);
    Ok(h)
}

/// A UDP backend that answers each datagram with `NAME|` + payload.
pub struct UdpBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub received: Arc<AtomicUsize>,
    /// The datagrams received, with [`Self::start_delayed`] only.
    pub payloads: Arc<Mutex<HashSet<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl UdpBackend {
    pub async fn start(name: &str) -> Self {
        Self::start_delayed(name, Duration::ZERO).await
    }

    /// As [`Self::start`], each answer sent `delay` after its datagram came (answers overlap:
    /// a slow backend, so that answers are on their way when something changes); with a
    /// delay, every datagram received is kept in `payloads`.
    pub async fn start_delayed(name: &str, delay: Duration) -> Self {
        let sock = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind udp backend"),
        );
        let addr = sock.local_addr().expect("local addr");
        let received = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&received);
        let payloads = Arc::new(Mutex::new(HashSet::new()));
        let p = Arc::clone(&payloads);
        let prefix = format!("{name}|").into_bytes();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                r.fetch_add(1, Ordering::SeqCst);
                if !delay.is_zero() {
                    p.lock().expect("payloads").insert(buf[..n].to_vec());
                }
                let mut out = prefix.clone();
                out.extend_from_slice(&buf[..n]);
                if delay.is_zero() {
                    let _ = sock.send_to(&out, peer).await;
                } else {
                    let sock = Arc::clone(&sock);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = sock.send_to(&out, peer).await;
                    });
                }
            }
        });
        Self {
            addr,
            name: name.to_owned(),
            received,
            payloads,
            task,
        }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------------------

/// Connects with a timeout.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// One echo round trip on an open stream: sends `msg`, expects exactly `msg` back (3 s limit).
pub async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let fut = async {
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await?;
        if back != msg {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "echo mismatch",
            ));
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(3), fut).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "echo round trip timed out",
        )),
    }
}

/// Connect, one echo round trip, close (write side first, then expect EOF).
pub async fn echo_once(addr: SocketAddr, msg: &[u8]) -> std::io::Result<()> {
    let mut s = connect(addr).await?;
    round_trip(&mut s, msg).await?;
    s.shutdown().await?;
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await {
        Ok(Ok(_)) if rest.is_empty() => Ok(()),
        Ok(Ok(_)) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "extra bytes after echo",
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no EOF after shutdown",
        )),
    }
}

/// Sends `data` and reads the same number of bytes back concurrently; true if intact.
pub async fn echo_bulk(addr: SocketAddr, data: Arc<Vec<u8>>) -> std::io::Result<()> {
    let s = connect(addr).await?;
    let (mut r, mut w) = s.into_split();
    let d = Arc::clone(&data);
    let writer = tokio::spawn(async move {
        w.write_all(&d).await?;
        w.shutdown().await
    });
    let mut back = Vec::with_capacity(data.len());
    let read = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut back)).await;
    writer.await.map_err(std::io::Error::other)??;
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "bulk echo timed out",
            ))
        }
    }
    if back.len() != data.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("got {} of {} bytes", back.len(), data.len()),
        ));
    }
    if back != *data {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bulk echo corrupted",
        ));
    }
    Ok(())
}

/// Polls `f` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a TCP connect to `addr` is refused (listener gone), up to `limit`.
pub async fn wait_refused(addr: SocketAddr, limit: Duration) -> bool {
    eventually(
        limit,
        || async move { TcpStream::connect(addr).await.is_err() },
    )
    .await
}

/// What became of a connection that we expect the proxy to refuse.
#[derive(Debug)]
pub enum Refusal {
    /// `connect()` itself failed.
    ConnectFailed(std::io::Error),
    /// Connected, then closed (EOF) or reset within the limit.
    ClosedAfter(Duration),
    /// Still open (or delivered data) after the limit: not refused.
    NotRefused(String),
}

/// Connects and checks that the connection is refused: connect fails, or it is closed/reset
/// within `limit` without delivering any byte (we send a probe so a reset shows up).
pub async fn probe_refused(addr: SocketAddr, limit: Duration) -> Refusal {
    let start = Instant::now();
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Refusal::ConnectFailed(e),
    };
    let _ = s.write_all(b"probe").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => Refusal::ClosedAfter(start.elapsed()),
        Ok(Ok(n)) => Refusal::NotRefused(format!("received {n} bytes: {:?}", &buf[..n])),
        Err(_) => Refusal::NotRefused(format!("still open after {limit:?}")),
    }
}

/// The sum of every sample of `name` whose labels include all of `labels`; None if none.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(v) = metric_value(line, name, labels) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

// ---------------------------------------------------------------------------------------
// TCP scenarios shared by the L4 tests (each relay mode runs the same ones)
// ---------------------------------------------------------------------------------------

/// `n` bulk echoes of `data` to `addr`, `at_once` at a time: the errors of those that
/// failed.
pub async fn echo_bulk_many(
    addr: SocketAddr,
    data: &Arc<Vec<u8>>,
    n: usize,
    at_once: usize,
) -> Vec<std::io::Error> {
    let sem = Arc::new(tokio::sync::Semaphore::new(at_once));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
        let data = Arc::clone(data);
        tasks.push(tokio::spawn(async move {
            let r = echo_bulk(addr, data).await;
            drop(permit);
            r
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failures.push(e);
        }
    }
    failures
}

/// Against a [`Behaviour::HalfClose`] backend: for 1 B, 10 KiB, 300 KB and 4 MiB, one
/// connection sends that many bytes and half-closes; the proxy must pass the FIN on (not
/// close both ways), so the backend's `got N bytes` and then EOF come back.
pub async fn client_half_close(addr: SocketAddr) -> Result<(), String> {
    for size in [1usize, 10_240, 300_000, 4 << 20] {
        let mut s = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(&vec![b'x'; size]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
            .await
            .map_err(|_| {
                format!(
                    "size {size}: no answer+EOF within 5s after half-close; got {:?}",
                    String::from_utf8_lossy(&answer)
                )
            })?
            .map_err(|e| format!("size {size}: read after half-close: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        if answer != format!("got {size} bytes") {
            return Err(format!("size {size}: answer {answer:?}"));
        }
    }
    Ok(())
}

/// Against a [`Behaviour::ServerHalfClose`] backend `b`: the client gets `bye` and EOF,
/// and can still send; every byte of the 1 MiB it sends afterwards reaches the backend.
pub async fn server_half_close(addr: SocketAddr, b: &TcpBackend) -> Result<(), String> {
    let mut s = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got))
        .await
        .map_err(|_| "no EOF after the backend's FIN".to_owned())?
        .map_err(|e| format!("reading after the backend's FIN: {e}"))?;
    if got != b"bye" {
        return Err(format!(
            "got {:?}, want \"bye\"",
            String::from_utf8_lossy(&got)
        ));
    }
    // Our direction is still open: send 1 MiB after receiving EOF.
    let payload = vec![b'p'; 1 << 20];
    tokio::time::timeout(Duration::from_secs(5), s.write_all(&payload))
        .await
        .map_err(|_| "write after the backend's FIN blocked".to_owned())?
        .map_err(|e| format!("write after the backend's FIN failed: {e}"))?;
    s.shutdown().await.unwrap();
    let all = || b.received.load(Ordering::SeqCst) == payload.len();
    if eventually(Duration::from_secs(3), || async { all() }).await {
        Ok(())
    } else {
        Err(format!(
            "backend received {} of {} bytes sent after its half-close",
            b.received.load(Ordering::SeqCst),
            payload.len()
        ))
    }
}

/// Against a [`Behaviour::ProxyV1`] backend: one connection to `listen` gets back exactly
/// `PROXY TCP4 127.0.0.1 127.0.0.1 CPORT SPORT\r\n`, and then nothing but its own echo.
pub async fn proxy_v1_header_exact(listen: SocketAddr) -> Result<(), String> {
    let mut s = connect(listen).await.map_err(|e| format!("connect: {e}"))?;
    let cport = s.local_addr().unwrap().port();
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {}\r\n",
        listen.port()
    );
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut got))
        .await
        .map_err(|_| "header echo timed out".to_owned())?
        .map_err(|e| format!("header echo: {e}"))?;
    if got != want.as_bytes() {
        return Err(format!(
            "header {:?}, want {want:?}",
            String::from_utf8_lossy(&got)
        ));
    }
    round_trip(&mut s, b"payload after header")
        .await
        .map_err(|e| format!("payload after the header: {e}"))
}

/// From a [`Behaviour::Trickle`] backend: reads until at least 64 KiB have come (the
/// transfer is under way), 3 s at most per read.
pub async fn trickle_started(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::with_capacity(TRICKLE_TOTAL);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < 64 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("first bytes")
            .unwrap();
        assert!(n > 0, "EOF after {} bytes before SIGTERM", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// The rest of a trickle after [`trickle_started`]'s `got`, to EOF (5 s at most between
/// reads); an error unless all [`TRICKLE_TOTAL`] bytes came, intact.
pub async fn trickle_finished(mut s: TcpStream, mut got: Vec<u8>) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Err(_) => return Err(format!("stalled after {} bytes", got.len())),
            Ok(Err(e)) => return Err(format!("error after {} bytes: {e}", got.len())),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    if got.len() != TRICKLE_TOTAL {
        return Err(format!("{} of {TRICKLE_TOTAL} bytes", got.len()));
    }
    if !got.iter().enumerate().all(|(i, &x)| x == pattern_byte(i)) {
        return Err("trickled bytes corrupted".into());
    }
    Ok(())
}
