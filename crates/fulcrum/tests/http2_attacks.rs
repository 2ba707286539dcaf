//! HTTP/2 and TLS attacks against the real `fulcrum` binary (one worker thread, so the
//! attacker and the other clients share it): rapid reset, CONTINUATION flood, HPACK bomb,
//! SETTINGS and PING floods, streams past the limit, a zero-window stall, slow and garbage
//! TLS handshakes. Each attack must be answered (the attacker's connection closed, its
//! streams refused, or its handshakes cut at the timeout) with bounded memory, while a
//! parallel client keeps getting 200s. The attacker speaks raw frames; only 127.0.0.0/8.
#![allow(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    clippy::unwrap_used,
    clippy::missing_panics_doc
)]

mod common;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{admin_toml, free_addr, Fulcrum};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------------------------ backend

/// Requests in progress at the backend, and the most seen at once.
#[derive(Default)]
struct Load {
    hits: AtomicU64,
    /// `/slow` requests in progress, and their most at once.
    now: AtomicU64,
    peak: AtomicU64,
}

/// An HTTP/1.1 backend: `/slow` answers after 3 s, `/big` with 256 KiB, else `ok`.
async fn backend() -> (SocketAddr, Arc<Load>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let load = Arc::new(Load::default());
    let ld = Arc::clone(&load);
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let ld = Arc::clone(&ld);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let ld = Arc::clone(&ld);
                    async move {
                        ld.hits.fetch_add(1, Ordering::Relaxed);
                        let body = match req.uri().path() {
                            "/slow" => {
                                let n = ld.now.fetch_add(1, Ordering::Relaxed) + 1;
                                ld.peak.fetch_max(n, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                ld.now.fetch_sub(1, Ordering::Relaxed);
                                Bytes::from_static(b"slow")
                            }
                            "/big" => Bytes::from(vec![b'x'; 256 * 1024]),
                            _ => Bytes::from_static(b"ok"),
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, load)
}

// ------------------------------------------------------------------------------ fulcrum

const MAX_STREAMS: u32 = 20;
const MAX_RESETS: u32 = 50;
const MAX_CONTROL: u32 = 50;
const MAX_HEADER_LIST: u32 = 16 * 1024;

async fn start(name: &str, extra: &str) -> (Fulcrum, SocketAddr, Arc<Load>) {
    let (b, load) = backend().await;
    let listen = free_addr();
    let admin = free_addr();
    let cfg = format!(
        "{}{}\n[service.http2]\nmax_concurrent_streams = {MAX_STREAMS}\n\
         max_header_list_size = {MAX_HEADER_LIST}\nmax_resets_per_second = {MAX_RESETS}\n\
         max_control_frames_per_second = {MAX_CONTROL}\n\n{}",
        admin_toml(admin),
        common::service_toml("web", listen, "http", "p", extra),
        common::pool_toml("p", "rr", "", &[(b, 1)]),
    );
    let f = Fulcrum::start(name, admin, &cfg, &["--workers", "1"]).await;
    (f, listen, load)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

// ------------------------------------------------------------------------------ the bystander

/// A client sending one HTTP/1.1 request after another (each on a new connection) while an
/// attack runs; the statuses and latencies it saw.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(u16, Duration)>>,
}

impl Bystander {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            // at least 10 requests; bounded: at most 2000, or 10 s
            let t0 = Instant::now();
            while (!st.load(Ordering::Relaxed) || seen.len() < 10)
                && seen.len() < 2000
                && t0.elapsed() < Duration::from_secs(10)
            {
                let t = Instant::now();
                let status = match common::http(addr, "GET", "/").await {
                    Ok((s, _)) => s,
                    Err(_) => 0,
                };
                seen.push((status, t.elapsed()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        Self { stop, task }
    }

    /// Stops it; asserts that every request got a 200 within 2 s.
    async fn check(self, attack: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.task.await.unwrap();
        assert!(
            seen.len() >= 5,
            "{attack}: the bystander sent {}",
            seen.len()
        );
        let bad: Vec<_> = seen
            .iter()
            .filter(|(s, d)| *s != 200 || *d > Duration::from_secs(2))
            .collect();
        assert!(
            bad.is_empty(),
            "{attack}: {} of {} bystander requests failed or were slow: {bad:?}",
            bad.len(),
            seen.len()
        );
    }
}

// ------------------------------------------------------------------------------ raw HTTP/2

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal without indexing, name from the static table (RFC 7541 6.2.2).
fn literal(name_index: u8, value: &str) -> Vec<u8> {
    assert!(name_index < 15 && value.len() < 127);
    let mut v = vec![name_index, u8::try_from(value.len()).unwrap()];
    v.extend_from_slice(value.as_bytes());
    v
}

/// A `GET path` header block: `:method GET`, `:scheme http`, `:path`, `:authority`.
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    b.extend(literal(4, path));
    b.extend(literal(1, "a.test"));
    b
}

/// A raw HTTP/2 client after the handshake (preface, both SETTINGS acknowledged).
async fn h2_connect(
    addr: SocketAddr,
    settings: &[u8],
) -> (OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, settings));
    s.write_all(&hello).await.unwrap();
    let (mut r, mut w) = s.into_split();
    // the server's SETTINGS, then ours is acknowledged after we acknowledge theirs
    loop {
        let (kind, flags, _, _) = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut r))
            .await
            .expect("server SETTINGS in time")
            .expect("server SETTINGS");
        if kind == SETTINGS && flags & ACK == 0 {
            w.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            break;
        }
    }
    (r, w)
}

type Frame = (u8, u8, u32, Vec<u8>);

/// The next frame, or `None` at the end of the connection (EOF or reset).
async fn read_frame(r: &mut OwnedReadHalf) -> Option<Frame> {
    let mut h = [0u8; 9];
    r.read_exact(&mut h).await.ok()?;
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let mut p = vec![0u8; len];
    r.read_exact(&mut p).await.ok()?;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    Some((h[3], h[4], stream, p))
}

/// What the server did while the attacker wrote.
#[derive(Debug, Default)]
struct Seen {
    /// The connection ended (EOF or reset) or the server sent GOAWAY.
    closed: bool,
    goaway: Option<u32>,
    /// From the handshake to the end or GOAWAY.
    after: Duration,
    /// Streams reset by the server, with their error codes.
    resets: Vec<(u32, u32)>,
    /// Streams answered with a HEADERS frame: their first header byte (`0x88` is `:status
    /// 200` from the static table).
    answered: Vec<(u32, u8)>,
}

/// Reads frames until the connection ends or `limit` passes.
fn watch(mut r: OwnedReadHalf, limit: Duration) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, read_frame(&mut r)).await {
                Err(_) => return seen,
                Ok(None) => {
                    if !seen.closed {
                        seen.after = t0.elapsed();
                    }
                    seen.closed = true;
                    return seen;
                }
                Ok(Some((kind, _, stream, p))) => match kind {
                    GOAWAY if p.len() >= 8 => {
                        if !seen.closed {
                            seen.after = t0.elapsed();
                        }
                        seen.closed = true;
                        seen.goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                    }
                    RST_STREAM if p.len() >= 4 => {
                        seen.resets
                            .push((stream, u32::from_be_bytes([p[0], p[1], p[2], p[3]])));
                    }
                    HEADERS if !p.is_empty() => seen.answered.push((stream, p[0])),
                    _ => {}
                },
            }
        }
    })
}

/// How the attacker goes on once the server closes its connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Again {
    /// One connection.
    Once,
    /// A new connection, for 3 s (at most 100 connections).
    Reconnect,
}

/// Runs `attack` (writing until the connection ends or 3 s pass; it takes the connection's
/// round number) against a fresh fulcrum while a bystander runs; checks the bystander and
/// the memory, returns what each attacking connection saw and the backend's load.
async fn run_attack<F>(
    name: &str,
    idle_timeout: &str,
    settings: &[u8],
    again: Again,
    watch_for: Duration,
    mut attack: F,
) -> (Vec<Seen>, Arc<Load>)
where
    F: FnMut(u32) -> Vec<u8>,
{
    let (f, listen, load) = start(name, &format!("idle_timeout = \"{idle_timeout}\"")).await;
    // warm up (first connections, buffers), then measure
    for _ in 0..3 {
        assert_eq!(common::http(listen, "GET", "/").await.unwrap().0, 200);
    }
    let rss0 = rss_kib(f.pid);
    let by = Bystander::start(listen);
    let t = Instant::now();
    let mut all = Vec::new();
    loop {
        let (r, mut w) = h2_connect(listen, settings).await;
        let watcher = watch(r, watch_for);
        let mut round = 0;
        while t.elapsed() < Duration::from_secs(3) && !watcher.is_finished() {
            if w.write_all(&attack(round)).await.is_err() {
                break;
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        all.push(watcher.await.unwrap());
        drop(w);
        if again == Again::Once || t.elapsed() >= Duration::from_secs(3) || all.len() >= 100 {
            break;
        }
    }
    by.check(name).await;
    let grown = rss_kib(f.pid).saturating_sub(rss0);
    assert!(
        grown < 64 * 1024,
        "{name}: RSS grew by {grown} KiB under the attack"
    );
    f.assert_no_panic();
    (all, load)
}

/// Asserts that the server closed every attacking connection within a second (long before
/// the tests' 10 s `idle_timeout`).
fn all_closed(name: &str, all: &[Seen]) {
    let open: Vec<_> = all
        .iter()
        .filter(|s| !s.closed || s.after > Duration::from_secs(1))
        .collect();
    assert!(
        open.is_empty(),
        "{name}: {} of {} attacking connections stayed open: {open:?}",
        open.len(),
        all.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_closes_the_connection() {
    // Each round: 10 requests, each reset at once (CVE-2023-44487).
    let (seen, load) = run_attack(
        "h2-rapid-reset",
        "10s",
        &[],
        Again::Reconnect,
        Duration::from_secs(5),
        |round| {
            let mut out = Vec::new();
            for i in 0..10 {
                let id = 1 + 2 * (round * 10 + i);
                out.extend(frame(
                    HEADERS,
                    END_STREAM | END_HEADERS,
                    id,
                    &get_block("/"),
                ));
                out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            }
            out
        },
    )
    .await;
    all_closed("rapid reset", &seen);
    let hits = load.hits.load(Ordering::Relaxed);
    assert!(hits < 2000, "the backend saw {hits} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_closes_the_connection() {
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
    // frames of 16 KiB forever (CVE-2024-27316).
    let (seen, _) = run_attack(
        "h2-continuation",
        "10s",
        &[],
        Again::Reconnect,
        Duration::from_secs(5),
        |round| {
            if round == 0 {
                frame(HEADERS, END_STREAM, 1, &get_block("/"))
            } else {
                let mut block = Vec::new();
                while block.len() < 16 * 1024 - 40 {
                    block.extend(literal(1, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
                }
                frame(CONTINUATION, 0, 1, &block)
            }
        },
    )
    .await;
    all_closed("continuation flood", &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bomb_is_refused() {
    // One 4 KiB header into the dynamic table, then header blocks of 16000 references to
    // it: 64 MiB of headers each once decoded.
    let (seen, load) = run_attack(
        "h2-hpack-bomb",
        "10s",
        &[],
        Again::Once,
        Duration::from_secs(4),
        |round| {
            let id = 1 + 2 * round;
            let mut block = get_block("/");
            if round == 0 {
                // literal with incremental indexing, new name
                block.extend([0x40, 0x01, b'x', 0x7f]);
                let len = 4000 - 127; // HPACK integer 7-bit prefix: 127 then 7-bit groups
                block.extend([
                    0x80 | u8::try_from(len % 128).unwrap(),
                    u8::try_from(len / 128).unwrap(),
                ]);
                block.extend(vec![b'y'; 4000]);
            } else {
                block.extend(vec![0xbe; 16_000]); // index 62: the newest dynamic entry
            }
            frame(HEADERS, END_STREAM | END_HEADERS, id, &block)
        },
    )
    .await;
    let seen = &seen[0];
    assert!(
        seen.answered.iter().all(|(id, b)| *id == 1 || *b != 0x88),
        "a bomb request was answered 200: {seen:?}"
    );
    assert!(
        seen.closed || !seen.resets.is_empty() || !seen.answered.is_empty(),
        "the bombs got no answer at all: {seen:?}"
    );
    assert!(
        load.hits.load(Ordering::Relaxed) < 100,
        "bombs reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_closes_the_connection() {
    let (seen, _) = run_attack(
        "h2-settings-flood",
        "10s",
        &[],
        Again::Reconnect,
        Duration::from_secs(5),
        |_| {
            let mut out = Vec::new();
            for _ in 0..20 {
                out.extend(frame(SETTINGS, 0, 0, &[]));
            }
            out
        },
    )
    .await;
    all_closed("settings flood", &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_closes_the_connection() {
    let (seen, _) = run_attack(
        "h2-ping-flood",
        "10s",
        &[],
        Again::Reconnect,
        Duration::from_secs(5),
        |_| {
            let mut out = Vec::new();
            for _ in 0..20 {
                out.extend(frame(PING, 0, 0, &[1; 8]));
            }
            out
        },
    )
    .await;
    all_closed("ping flood", &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused() {
    // 40 slow requests at once on one connection: MAX_STREAMS reach the backend, the rest
    // are refused.
    let (seen, load) = run_attack(
        "h2-streams",
        "10s",
        &[],
        Again::Once,
        Duration::from_secs(2),
        |round| {
            if round > 0 {
                return Vec::new();
            }
            let mut out = Vec::new();
            for i in 0..40 {
                out.extend(frame(
                    HEADERS,
                    END_STREAM | END_HEADERS,
                    1 + 2 * i,
                    &get_block("/slow"),
                ));
            }
            out
        },
    )
    .await;
    let seen = &seen[0];
    let refused = seen
        .resets
        .iter()
        .filter(|(_, c)| *c == REFUSED_STREAM)
        .count();
    assert!(
        refused >= 20 || seen.closed,
        "streams past {MAX_STREAMS} were not refused: {seen:?}"
    );
    let peak = load.peak.load(Ordering::Relaxed);
    assert!(
        peak <= u64::from(MAX_STREAMS),
        "{peak} requests at once reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_stall_is_cut() {
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no answer body can be sent; 20 streams of 256 KiB
    // answers wait. The connection is closed once its answers made no progress for the
    // service's idle_timeout (2 s).
    let mut settings = vec![0x00, 0x04];
    settings.extend(0u32.to_be_bytes());
    let t = Instant::now();
    let (seen, _) = run_attack(
        "h2-zero-window",
        "2s",
        &settings,
        Again::Once,
        Duration::from_secs(8),
        |round| {
            if round > 0 {
                return Vec::new();
            }
            let mut out = Vec::new();
            for i in 0..20 {
                out.extend(frame(
                    HEADERS,
                    END_STREAM | END_HEADERS,
                    1 + 2 * i,
                    &get_block("/big"),
                ));
            }
            out
        },
    )
    .await;
    let seen = &seen[0];
    assert!(
        seen.closed,
        "the stalled connection stays open after {:?}: {seen:?}",
        t.elapsed()
    );
}

// ------------------------------------------------------------------------------ TLS

fn tls_material(dir: &std::path::Path) -> (rustls::RootCertStore, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("a.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("a.key"), key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut certs = String::new();
    let _ = write!(
        certs,
        "{{ cert = \"{}\", key = \"{}\" }}",
        dir.join("a.pem").display(),
        dir.join("a.key").display()
    );
    (roots, certs)
}

async fn tls_get(addr: SocketAddr, conn: &tokio_rustls::TlsConnector) -> std::io::Result<u16> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = conn.connect(name, tcp).await?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let head = String::from_utf8_lossy(&buf);
    Ok(head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_garbage_tls_handshakes_do_not_block_others() {
    let dir = common::temp_dir("h2-tls-certs");
    let (roots, certs) = tls_material(&dir);
    let extra =
        format!("[service.tls]\ncerts = [ {certs} ]\n[service.timeouts]\ntls_handshake = \"1s\"\n");
    let (f, listen, _) = start("h2-tls", &extra).await;
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cc));
    assert_eq!(tls_get(listen, &conn).await.unwrap(), 200);
    let fds0 = f.fd_count();
    let rss0 = rss_kib(f.pid);

    // 200 slow handshakes (silent, or a record header announcing a ClientHello that never
    // comes) and 200 of garbage.
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        if i % 2 == 1 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
        }
        slow.push((Instant::now(), s));
    }
    let mut garbage = Vec::new();
    for i in 0..200u32 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        let junk: Vec<u8> = (0..512u32)
            .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)).to_le_bytes()[0])
            .collect();
        let _ = s.write_all(&junk).await;
        garbage.push(s);
    }
    // others are served meanwhile, at once
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(tls_get(listen, &conn).await.unwrap(), 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a TLS client waited {:?}",
            t.elapsed()
        );
    }
    // garbage is closed without waiting for the timeout
    for mut s in garbage {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_millis(900), async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "a garbage handshake was not closed");
    }
    // the slow ones at the handshake timeout (1 s), not before
    let mut b = [0u8; 64];
    for (i, (at, s)) in slow.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(4), s.read(&mut b)).await;
        let took = at.elapsed();
        assert!(
            matches!(r, Ok(Ok(0) | Err(_))),
            "slow handshake {i} still open after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "slow handshake {i} cut after {took:?}, want the 1 s timeout"
        );
    }
    drop(slow);
    assert!(
        common::eventually(Duration::from_secs(3), || async {
            f.fd_count() <= fds0 + 2
        })
        .await,
        "fds leaked: {} before, {} after",
        fds0,
        f.fd_count()
    );
    let grown = rss_kib(f.pid).saturating_sub(rss0);
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    assert_eq!(tls_get(listen, &conn).await.unwrap(), 200);
    f.assert_no_panic();
}
