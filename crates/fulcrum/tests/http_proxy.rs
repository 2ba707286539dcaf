//! End-to-end tests of the L7 HTTP proxy: the real `fulcrum` binary, real HTTP backends
//! (hyper, in this process), real clients (raw TCP, hyper h2, rustls). Only 127.0.0.0/8.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{admin_toml, free_addr, weighted, Fulcrum};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

// ------------------------------------------------------------------------------ backends

/// A test backend: answers `NAME\n` then the request's headers (`name: value` lines), with
/// a status that the test can change; echoes bytes after an `Upgrade`.
struct Backend {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend(name: &str) -> Backend {
    backend_after(name, Duration::ZERO).await
}

/// [`backend`], answering each request only after `delay`.
async fn backend_after(name: &str, delay: Duration) -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicU64::new(0));
    let (st, h, name) = (Arc::clone(&status), Arc::clone(&hits), name.to_owned());
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                continue;
            };
            let (st, h, name) = (Arc::clone(&st), Arc::clone(&h), name.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::Relaxed);
                        let (st, name) = (st.load(Ordering::Relaxed), name.clone());
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            if req.headers().contains_key("upgrade") {
                                let up = hyper::upgrade::on(&mut req);
                                tokio::spawn(async move {
                                    if let Ok(io) = up.await {
                                        let mut io = TokioIo::new(io);
                                        let mut buf = [0u8; 1024];
                                        while let Ok(n) = io.read(&mut buf).await {
                                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                                break;
                                            }
                                        }
                                    }
                                });
                                return Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(101)
                                        .header("connection", "upgrade")
                                        .header("upgrade", "websocket")
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                );
                            }
                            let mut body = format!("{name}\n");
                            for (k, v) in req.headers() {
                                let _ = writeln!(body, "{k}: {}", v.to_str().unwrap_or("?"));
                            }
                            Ok(Response::builder()
                                .status(st)
                                .header("keep-alive", "timeout=5")
                                .header("x-backend", name)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap())
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend {
        addr,
        status,
        hits,
        task,
    }
}

// ------------------------------------------------------------------------------ clients

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The backend's name (first body line).
    fn who(&self) -> &str {
        self.body.lines().next().unwrap_or("")
    }
}

fn parse(buf: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Sends a raw HTTP/1.1 request (must include `Connection: close`) and reads to EOF.
async fn raw_from(src: Option<std::net::IpAddr>, addr: SocketAddr, req: &str) -> Resp {
    let fut = async {
        let mut s = match src {
            None => TcpStream::connect(addr).await.unwrap(),
            Some(ip) => {
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind(SocketAddr::new(ip, 0)).unwrap();
                sock.connect(addr).await.unwrap()
            }
        };
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        parse(&buf)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("request timed out")
}

async fn get(addr: SocketAddr, host: &str, path: &str, extra: &str) -> Resp {
    raw_from(
        None,
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
    )
    .await
}

fn http_service(name: &str, listen: SocketAddr, pool: &str, extra: &str) -> String {
    common::service_toml(name, listen, "http", pool, extra)
}

async fn start(name: &str, body: &str) -> (Fulcrum, SocketAddr) {
    let admin = free_addr();
    let cfg = format!("{}{body}", admin_toml(admin));
    (
        Fulcrum::start(name, admin, &cfg, &["--workers", "1"]).await,
        admin,
    )
}

/// One http service `web` on `listen` (with `extra` keys) over an rr pool `p` of `backends`.
fn web_service(listen: SocketAddr, extra: &str, backends: &[SocketAddr]) -> String {
    format!(
        "{}{}",
        http_service("web", listen, "p", extra),
        common::pool_toml("p", "rr", "", &weighted(backends)),
    )
}

/// After SIGTERM at `t0`, the process exits 0 within 5 s (long before the tests'
/// `drain_timeout`).
async fn exits_promptly(f: &mut Fulcrum, t0: Instant) {
    let status = f
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits long before drain_timeout");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// Reads up to the end of a response head (bytes after it may follow), within 5 s.
async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// One keep-alive `GET /{i}` on `s`, answered 200.
async fn keep_alive_get(s: &mut TcpStream, i: u32) {
    s.write_all(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let got = read_head(s).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "request {i}: {}",
        String::from_utf8_lossy(&got)
    );
}

/// Fulcrum closes `s` (EOF or reset) within `within`.
async fn expect_closed(s: &mut TcpStream, within: Duration, what: &str) {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {within:?}"));
    assert!(matches!(r, Ok(0) | Err(_)), "{what}: {r:?}");
}

// ------------------------------------------------------------------------------ tests

#[tokio::test]
async fn routing_headers_h2c_and_bad_input() {
    let (a, b, c, d) = (
        backend("a").await,
        backend("b").await,
        backend("c").await,
        backend("d").await,
    );
    let listen = free_addr();
    let body = format!(
        "{}\n[[service.route]]\nhost = \"api.example.com\"\npool = \"a\"\n\n[[service.route]]\nhost = \"*.img.example.com\"\npool = \"b\"\n\n[[service.route]]\npath_prefix = \"/v2/\"\npool = \"c\"\n\n{}{}{}{}",
        http_service("web", listen, "d", ""),
        common::pool_toml("a", "rr", "", &weighted(&[a.addr])),
        common::pool_toml("b", "rr", "", &weighted(&[b.addr])),
        common::pool_toml("c", "rr", "", &weighted(&[c.addr])),
        common::pool_toml("d", "rr", "", &weighted(&[d.addr])),
    );
    let (f, _) = start("http-routing", &body).await;

    // Routing: exact host (case and port ignored), suffix, path prefix, default.
    assert_eq!(
        get(listen, "API.Example.com:8080", "/v2/x", "").await.who(),
        "a"
    );
    assert_eq!(get(listen, "x.y.img.example.com", "/", "").await.who(), "b");
    assert_eq!(get(listen, "img.example.com", "/v2/z", "").await.who(), "c");
    assert_eq!(get(listen, "other", "/v1/", "").await.who(), "d");

    // Headers: hop-by-hop removed (also those named by Connection), forwarding added.
    let r = get(
        listen,
        "other",
        "/",
        "X-Forwarded-For: 198.18.1.1\r\nKeep-Alive: 5\r\nX-Hop: secret\r\nConnection: X-Hop\r\nX-Request-Id: my-id\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let lines: HashMap<&str, &str> = r
        .body
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .collect();
    assert_eq!(
        lines.get("x-forwarded-for"),
        Some(&"198.18.1.1, 127.0.0.1"),
        "{}",
        r.body
    );
    assert_eq!(lines.get("x-forwarded-proto"), Some(&"http"));
    assert_eq!(lines.get("x-forwarded-host"), Some(&"other"));
    assert_eq!(
        lines.get("forwarded"),
        Some(&"for=127.0.0.1;proto=http;host=other")
    );
    assert_eq!(lines.get("x-request-id"), Some(&"my-id"));
    assert!(
        !lines.contains_key("x-hop") && !lines.contains_key("keep-alive"),
        "{}",
        r.body
    );
    assert!(
        r.header("keep-alive").is_none(),
        "response hop-by-hop removed"
    );
    let r = get(listen, "other", "/", "").await;
    let rid = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap();
    assert_eq!(rid.len(), 36, "generated request id: {rid}");

    // Keep-alive reuse: two requests on one client connection.
    let mut s = TcpStream::connect(listen).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: other\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }

    // HTTP/2 with prior knowledge (h2c).
    let tcp = TcpStream::connect(listen).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::builder()
            .uri("http://api.example.com/h2")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"a\n"), "{body:?}");
        assert!(String::from_utf8_lossy(&body).contains("host: api.example.com"));
    }

    // Request smuggling: Content-Length with Transfer-Encoding. hyper's parser lets
    // Transfer-Encoding win, drops Content-Length and closes the connection after the
    // answer (RFC 9112 6.1); the backend never sees the conflicting Content-Length.
    let r = raw_from(None, listen, "POST / HTTP/1.1\r\nHost: other\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n").await;
    assert!(
        r.status == 400 || (r.status == 200 && !r.body.contains("content-length: 5")),
        "smuggling got {r:?}"
    );
    let hits = d.hits.load(Ordering::Relaxed);
    // Malformed request line, invalid chunked body, huge headers.
    let r = raw_from(None, listen, "GARBAGE\r\n\r\n").await;
    assert!(r.status == 400 || r.status == 0);
    let r = raw_from(None, listen, "POST / HTTP/1.1\r\nHost: other\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZZ\r\nxx\r\n").await;
    assert!(
        r.status >= 400 || r.status == 0,
        "bad chunked got {}",
        r.status
    );
    let big = "a".repeat(100 * 1024);
    let r = raw_from(
        None,
        listen,
        &format!("GET / HTTP/1.1\r\nHost: other\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        r.status == 431 || r.status == 400 || r.status == 0,
        "huge header got {}",
        r.status
    );
    assert!(
        d.hits.load(Ordering::Relaxed) <= hits + 1,
        "bad requests must not reach backends"
    );
    assert_eq!(
        get(listen, "other", "/", "").await.status,
        200,
        "still serving"
    );
    f.assert_no_panic();
}

/// Waits (at most 5 s) until the admin API shows every one of `addrs` in `pool` as ejected:
/// passive ejections reach the running snapshot through the controller, asynchronously.
async fn wait_ejected(admin: SocketAddr, pool: &str, addrs: &[SocketAddr]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = common::http(admin, "GET", &format!("/api/v1/pools/{pool}"))
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let all = addrs
            .iter()
            .all(|&a| common::find_backend(&v, a).is_some_and(|b| b["state"] == "ejected"));
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "not ejected within 5 s: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn retries_ejection_and_budget() {
    let good1 = backend("good1").await;
    let good2 = backend("good2").await;
    let bad = backend("bad").await;
    bad.status.store(503, Ordering::Relaxed);
    let dead = free_addr(); // nothing listens here: connect refused
    let listen = free_addr();
    let listen2 = free_addr();
    let b1 = backend("all503-1").await;
    let b2 = backend("all503-2").await;
    b1.status.store(503, Ordering::Relaxed);
    b2.status.store(503, Ordering::Relaxed);
    let body = format!(
        "{}{}{}{}",
        http_service("web", listen, "p", ""),
        http_service("down", listen2, "q", ""),
        common::pool_toml(
            "p",
            "rr",
            "[pool.outlier]\nconsecutive_failures = 3\nejection = \"30s\"\n",
            &weighted(&[good1.addr, bad.addr, dead, good2.addr])
        ),
        common::pool_toml(
            "q",
            "rr",
            "[pool.outlier]\nconsecutive_failures = 100000\n",
            &weighted(&[b1.addr, b2.addr])
        ),
    );
    let (f, admin) = start("http-retries", &body).await;
    for i in 0..40 {
        let r = get(listen, "x", &format!("/{i}"), "").await;
        assert_eq!(r.status, 200, "request {i} failed: {r:?}");
    }
    // The 503 backend and the dead one are ejected.
    wait_ejected(admin, "p", &[bad.addr, dead]).await;
    // 3 failures eject it; without ejection round robin sends it about 10 of the 40. The
    // controller applies an ejection asynchronously, so on a loaded machine a request or
    // two more may reach it first.
    let bad_hits = bad.hits.load(Ordering::Relaxed);
    assert!(bad_hits <= 5, "bad backend hit {bad_hits} times");

    // Budget: when every backend answers 503, retries stay within the budget.
    let n = 100;
    for _ in 0..n {
        let r = get(listen2, "x", "/", "").await;
        assert_eq!(r.status, 503, "the backend's own 503 is passed on");
    }
    let total = b1.hits.load(Ordering::Relaxed) + b2.hits.load(Ordering::Relaxed);
    assert!(total >= n, "{total}");
    assert!(
        total <= n + 10 + n / 5 + 2,
        "retries beyond the budget: {total} backend hits for {n} requests"
    );
    let (_, m) = common::http(admin, "GET", "/metrics").await.unwrap();
    assert!(
        m.contains("fulcrum_http_requests_total{service=\"web\",pool=\"p\""),
        "{m}"
    );
    assert!(
        m.contains("fulcrum_http_request_duration_seconds_bucket{"),
        "{m}"
    );
    f.assert_no_panic();
}

#[tokio::test]
async fn sticky_cookie_and_header_hash() {
    let bs = [
        backend("s1").await,
        backend("s2").await,
        backend("s3").await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let listen = free_addr();
    let listen2 = free_addr();
    let body = format!(
        "{}{}{}{}",
        http_service("sticky", listen, "st", ""),
        http_service("hashed", listen2, "hh", ""),
        common::pool_toml("st", "rr", "sticky_cookie = \"SRV\"\n", &weighted(&addrs)),
        common::pool_toml(
            "hh",
            "maglev",
            "hash_key = \"header:X-User\"\n",
            &weighted(&addrs)
        ),
    );
    let (f, _) = start("http-sticky", &body).await;
    let r = get(listen, "x", "/", "").await;
    let cookie = r
        .header("set-cookie")
        .expect("sticky cookie set")
        .to_owned();
    let pair = cookie.split(';').next().unwrap().to_owned();
    let first = r.who().to_owned();
    for _ in 0..100 {
        let r = get(listen, "x", "/", &format!("Cookie: a=b; {pair}\r\n")).await;
        assert_eq!(r.who(), first);
        assert!(r.header("set-cookie").is_none());
    }
    // The pinned backend fails (503s, then ejected): clean fallback to another one, with a
    // new cookie, and no failure seen by the client.
    let idx = ["s1", "s2", "s3"].iter().position(|n| *n == first).unwrap();
    bs[idx].status.store(503, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(listen, "x", "/", &format!("Cookie: {pair}\r\n")).await;
        if r.who() != first {
            assert_eq!(r.status, 200);
            assert!(r.header("set-cookie").is_some_and(|c| c != cookie));
            break;
        }
        assert!(Instant::now() < deadline, "drained backend still chosen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The failing backend recovers, so pool `hh` (which shares it but saw none of its
    // 503s) keeps all three: a 503 there would be retried on another backend and then
    // eject it, which would move users.
    bs[idx].status.store(200, Ordering::Relaxed);
    // Header hashing keeps each user on one backend; users spread.
    let mut seen = HashSet::new();
    for u in 0..8 {
        let who = get(listen2, "x", "/", &format!("X-User: user{u}\r\n"))
            .await
            .who()
            .to_owned();
        for _ in 0..12 {
            assert_eq!(
                get(listen2, "x", "/", &format!("X-User: user{u}\r\n"))
                    .await
                    .who(),
                who
            );
        }
        seen.insert(who);
    }
    assert!(seen.len() >= 2, "{seen:?}");
    f.assert_no_panic();
}

fn tls_material(dir: &std::path::Path) -> (rustls::RootCertStore, Vec<Vec<u8>>, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut ders = Vec::new();
    let mut certs = String::new();
    for name in ["a.test", "b.test"] {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), leaf.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        ders.push(leaf.der().to_vec());
        let _ = write!(
            certs,
            "{{ cert = \"{}\", key = \"{}\" }}, ",
            dir.join(format!("{name}.pem")).display(),
            dir.join(format!("{name}.key")).display()
        );
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    (roots, ders, certs)
}

#[tokio::test]
async fn tls_sni_and_h2_alpn() {
    let b = backend("tlsb").await;
    let dir = common::temp_dir("http-tls-certs");
    let (roots, ders, certs) = tls_material(&dir);
    let listen = free_addr();
    let body = format!(
        "{}\n[service.tls]\ncerts = [ {certs} ]\n\n{}",
        http_service("tls", listen, "p", ""),
        common::pool_toml("p", "rr", "", &weighted(&[b.addr])),
    );
    let (f, _) = start("http-tls", &body).await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    for (i, name) in ["a.test", "b.test"].iter().enumerate() {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let mut cc = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            cc.alpn_protocols = vec![alpn.to_vec()];
            let conn = tokio_rustls::TlsConnector::from(Arc::new(cc));
            let tcp = TcpStream::connect(listen).await.unwrap();
            let sn = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
            let tls = conn
                .connect(sn, tcp)
                .await
                .expect("handshake with the test CA");
            let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            assert_eq!(served, ders[i], "SNI {name} chose the wrong certificate");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
            let req = Request::builder()
                .uri(format!("https://{name}/"))
                .header("host", *name)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = if alpn == b"h2" {
                let (mut s, c) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(c);
                let mut req = req;
                req.headers_mut().remove("host");
                s.send_request(req).await.unwrap()
            } else {
                let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .unwrap();
                tokio::spawn(c);
                let mut req = req;
                *req.uri_mut() = "/".parse().unwrap();
                s.send_request(req).await.unwrap()
            };
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("x-forwarded-proto: https"), "{body}");
        }
    }
    // A bad certificate path at reload changes nothing.
    let bad = std::fs::read_to_string(&f.config)
        .unwrap()
        .replace("a.test.pem", "missing.pem");
    f.write_config(&bad);
    let (st, _) = common::http(f.admin, "POST", "/api/v1/reload")
        .await
        .unwrap();
    assert_eq!(st, 400, "reload with a missing certificate must fail");
    let tcp = TcpStream::connect(listen).await.unwrap();
    let cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect(
            rustls::pki_types::ServerName::try_from("a.test").unwrap(),
            tcp,
        )
        .await;
    assert!(tls.is_ok(), "still serving TLS after a failed reload");
    f.assert_no_panic();
}

#[tokio::test]
async fn rate_limit_access_log_and_websocket() {
    let b = backend("rl").await;
    let listen = free_addr();
    let listen2 = free_addr();
    let dir = common::temp_dir("http-log");
    let log = dir.join("access.log");
    let clog = dir.join("combined.log");
    let body = format!(
        "{}\n[service.rate_limit]\nrequests_per_second = 1\nburst = 3\n\n[service.access_log]\nformat = \"json\"\npath = \"{}\"\n\n{}\n[service.access_log]\nformat = \"combined\"\npath = \"{}\"\n\n{}",
        http_service("limited", listen, "p", ""),
        log.display(),
        http_service("ws", listen2, "p", ""),
        clog.display(),
        common::pool_toml("p", "rr", "", &weighted(&[b.addr])),
    );
    let (f, _) = start("http-ratelimit", &body).await;
    let mut limited = None;
    for _ in 0..6 {
        let r = raw_from(
            Some([127, 0, 0, 1].into()),
            listen,
            "GET /rl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = limited.expect("a burst over the limit gets 429");
    let ra: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&ra));
    // Another client IP is unaffected.
    let r = raw_from(
        Some([127, 0, 0, 2].into()),
        listen,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);

    // JSON access log.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.lines().count() >= 4 || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/rl");
    assert_eq!(first["status"], 200);
    assert_eq!(first["backend"], b.addr.to_string());
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["bytes"].as_u64().unwrap() > 0);
    assert!(first["duration_ms"].as_f64().is_some());
    assert!(text.lines().any(|l| l.contains("\"status\":429")), "{text}");

    // WebSocket (Upgrade) relay, on the service with the combined log.
    let mut s = TcpStream::connect(listen2).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let got = read_head(&mut s).await;
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    for msg in [&b"hello"[..], b"websocket frames are just bytes here"] {
        s.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, msg);
    }
    drop(s);
    get(listen2, "x", "/combined?q=1", "User-Agent: tester/1\r\n").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let t = std::fs::read_to_string(&clog).unwrap_or_default();
        if let Some(l) = t.lines().find(|l| l.contains("/combined")) {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no combined line: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("\"GET /combined?q=1 HTTP/1.1\" 200 "),
        "{line}"
    );
    assert!(line.contains("\"tester/1\""), "{line}");
    f.assert_no_panic();
}

#[tokio::test]
async fn demo_answers_on_8080() {
    for port in [8080, 9090] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            fulcrum_xdp::testing::require(
                "demo_answers_on_8080",
                false,
                &format!("a free 127.0.0.1:{port} (the demo's fixed port)"),
            );
            return;
        }
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut who = HashSet::new();
    while who.len() < 2 {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        {
            let _ = s
                .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
            let r = parse(&buf);
            if r.status == 200 {
                who.insert(r.body.clone());
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("demo did not answer from two backends: {who:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        who.iter().all(|b| b.starts_with("hello from backend-")),
        "{who:?}"
    );
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("demo did not exit on SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("curl"), "the tour: {out}");
}

/// A raw HTTP/1.1 backend: reads one request (Content-Length or chunked body), answers with
/// a chunked body `got N: BODY` and closes. Counts requests.
async fn echo_backend() -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    // Bound to port 0 directly: no window in which a parallel test could take the port.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                h.fetch_add(1, Ordering::Relaxed);
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let chunked = head.contains("transfer-encoding: chunked");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let done = |b: &[u8]| {
                    if chunked {
                        b.ends_with(b"0\r\n\r\n")
                    } else {
                        b.len() >= len
                    }
                };
                while !done(&buf[head_end..]) {
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let raw = &buf[head_end..];
                let body: Vec<u8> = if chunked {
                    // Good enough for the test: drop the size lines.
                    let text = String::from_utf8_lossy(raw).into_owned();
                    text.split("\r\n")
                        .enumerate()
                        .filter(|(i, _)| i % 2 == 1)
                        .map(|(_, p)| p.to_owned())
                        .collect::<String>()
                        .into_bytes()
                } else {
                    raw.to_vec()
                };
                let msg = format!("got {}: {}", body.len(), String::from_utf8_lossy(&body));
                let (a, b) = msg.split_at(msg.len() / 2);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, hits, task)
}

/// Undoes chunked framing (the client side of the test).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

#[tokio::test]
async fn bodies_pipelining_and_smuggling() {
    let (echo, echo_hits, _task) = echo_backend().await;
    let plain = backend("plain").await;
    let listen = free_addr();
    let listen2 = free_addr();
    let body = format!(
        "{}{}{}{}",
        http_service("echo", listen, "e", ""),
        http_service("plain", listen2, "p", ""),
        common::pool_toml("e", "rr", "", &weighted(&[echo])),
        common::pool_toml("p", "rr", "", &weighted(&[plain.addr])),
    );
    let (f, _) = start("http-bodies", &body).await;

    // A Content-Length body, then a chunked one: forwarded whole; the backend's chunked
    // answer comes back chunked.
    let r = raw_from(
        None,
        listen,
        "POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    assert_eq!(dechunk(&r.body), "got 5: hello");
    let r = raw_from(
        None,
        listen,
        "POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(dechunk(&r.body), "got 11: hello world");
    // HTTP/1.0 client: no chunked answer; the body ends with the connection.
    let r = raw_from(
        None,
        listen,
        "POST /old HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert_eq!(r.body, "got 2: hi");

    // Smuggling: both Content-Length and Transfer-Encoding: 400, never forwarded.
    let hits = echo_hits.load(Ordering::Relaxed);
    let r = raw_from(
        None,
        listen,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = raw_from(
        None,
        listen,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        echo_hits.load(Ordering::Relaxed),
        hits,
        "refused requests reached the backend"
    );

    // Pipelining: three requests in one write, answered in order on one connection.
    let mut s = TcpStream::connect(listen2).await.unwrap();
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: x\r\nX-N: 1\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nX-N: 2\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\nX-N: 3\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    let order: Vec<usize> = ["x-n: 1", "x-n: 2", "x-n: 3"]
        .iter()
        .map(|n| text.find(n).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");

    // HTTP/1.0 without keep-alive: the connection is closed after the answer.
    let r = raw_from(None, listen2, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200);
    // HTTP/1.0 asking for keep-alive: told so, and the connection carries a second request.
    let mut s = TcpStream::connect(listen2).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(6).any(|w| w == b"plain\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_lowercase();
        assert!(text.contains("connection: keep-alive"), "{text}");
        // The rest of this answer (its headers echo) may still be on the way.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
    }
    f.assert_no_panic();
}

/// Tasks of a test backend (its listener, its connections) that can be aborted at once,
/// which closes their sockets under any request in flight.
#[derive(Clone, Default)]
struct Tasks(Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>);

impl Tasks {
    fn add<T>(&self, t: &tokio::task::JoinHandle<T>) {
        self.0.lock().unwrap().push(t.abort_handle());
    }

    fn abort_all(&self) {
        for t in self.0.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A raw keep-alive HTTP/1.1 backend that can be killed outright: its listener and every
/// open connection are aborted at once (the sockets close under in-flight requests).
/// Counts the connections the proxy closed (`ended`).
struct Killable {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
    tasks: Tasks,
}

impl Killable {
    async fn start(name: &'static str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicU64::new(0));
        let tasks = Tasks::default();
        let (h, e, t) = (Arc::clone(&hits), Arc::clone(&ended), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (h, e) = (Arc::clone(&h), Arc::clone(&e));
                let conn = tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    e.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        h.fetch_add(1, Ordering::Relaxed);
                        let body = format!("{name}\n");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
                t.add(&conn);
            }
        });
        tasks.add(&accept);
        Self {
            addr,
            hits,
            ended,
            tasks,
        }
    }

    fn kill(&self) {
        self.tasks.abort_all();
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn backend_killed_mid_load_costs_no_idempotent_request() {
    let (a, b, victim) = (
        Killable::start("k1").await,
        Killable::start("k2").await,
        Killable::start("k3").await,
    );
    let listen = free_addr();
    let body = web_service(listen, "", &[a.addr, b.addr, victim.addr]);
    let (f, _) = start("http-kill", &body).await;
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (failures, done) = (Arc::clone(&failures), Arc::clone(&done));
        clients.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let r = get(listen, "x", "/", "").await;
                if r.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed request: {} {}", r.status, r.body);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = victim.hits.load(Ordering::Relaxed);
    victim.kill();
    for c in clients {
        c.await.unwrap();
    }
    assert!(before > 0, "the victim served nothing before it was killed");
    let (failed, total) = (
        failures.load(Ordering::Relaxed),
        done.load(Ordering::Relaxed),
    );
    assert!(total > 50, "only {total} requests in 3 s");
    assert_eq!(failed, 0, "{failed} of {total} idempotent requests failed");
    assert!(a.hits.load(Ordering::Relaxed) > 0 && b.hits.load(Ordering::Relaxed) > 0);
    f.assert_no_panic();
}

// ------------------------------------------------- keep-alive clients and the running pool

/// One keep-alive `GET /` on `s`: the answer, its body read by its `Content-Length`.
async fn ka_get(s: &mut TcpStream) -> Resp {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = read_head(s).await;
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let len: usize = parse(&got[..end])
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("an answer with a Content-Length");
    let mut buf = vec![0u8; 4096];
    while got.len() < end + len {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the body")
            .unwrap();
        assert!(n > 0, "closed in the body");
        got.extend_from_slice(&buf[..n]);
    }
    parse(&got)
}

/// One `GET /` on an HTTP/2 connection: the status and the backend's name (its body's first
/// line).
async fn h2_get(s: &mut hyper::client::conn::http2::SendRequest<Frames>) -> (u16, String) {
    let (status, body, _) = h2_call(
        s,
        h2_req(
            "GET",
            "http://x/",
            Frames(std::collections::VecDeque::new()),
        ),
    )
    .await;
    let who = String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    (status, who)
}

/// Waits (up to 5 s) until the admin API shows `addr` of `pool` in `state`.
async fn wait_state(admin: SocketAddr, pool: &str, addr: SocketAddr, state: &str) {
    let path = format!("/api/v1/pools/{pool}");
    let ok = common::eventually(Duration::from_secs(5), || {
        let path = path.clone();
        async move {
            let Ok((200, text)) = common::http(admin, "GET", &path).await else {
                return false;
            };
            let pool: serde_json::Value = serde_json::from_str(&text).unwrap();
            common::find_backend(&pool, addr).is_some_and(|b| b["state"] == state)
        }
    })
    .await;
    assert!(ok, "{addr} of pool {pool} is not {state} within 5 s");
}

/// Keep-alive client connections (HTTP/1.1, parked or not, and HTTP/2) choose each request's
/// backend from the running pool: after a drain or a DELETE through the admin API, no new
/// request reaches that backend on connections opened before.
#[tokio::test]
async fn keep_alive_clients_follow_drain_and_delete() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let listen = free_addr();
    let body = web_service(listen, "", &[a.addr, b.addr, c.addr]);
    let (f, admin) = start("http-ka-drain", &body).await;
    let mut h1 = TcpStream::connect(listen).await.unwrap();
    let mut h2 = h2_client(listen).await;
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let r = ka_get(&mut h1).await;
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(r.who().to_owned());
        let (st, who) = h2_get(&mut h2).await;
        assert_eq!(st, 200);
        seen.insert(who);
    }
    assert_eq!(
        seen.len(),
        3,
        "both connections reach every backend: {seen:?}"
    );

    // The HTTP/1.1 connection idles until it is parked; b is drained meanwhile.
    let parked = common::eventually(Duration::from_secs(5), || async {
        let (_, m) = common::http(admin, "GET", "/metrics").await.unwrap();
        common::metric_value(&m, "fulcrum_http_parked_connections", &[("service", "web")])
            == Some(1.0)
    })
    .await;
    assert!(parked, "the idle HTTP/1.1 connection was not parked");
    let drain = format!("/api/v1/pools/p/backends/{}/drain", b.addr);
    let (st, text) = common::http(admin, "POST", &drain).await.unwrap();
    assert_eq!(st, 200, "{text}");
    let before = b.hits.load(Ordering::Relaxed);
    for _ in 0..10 {
        let r = ka_get(&mut h1).await;
        assert_eq!(r.status, 200, "{r:?}");
        let (st, _) = h2_get(&mut h2).await;
        assert_eq!(st, 200);
    }
    let after = b.hits.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "the drained backend got {} requests from keep-alive connections",
        after - before
    );

    // c is removed: only a is left for new requests.
    let del = format!("/api/v1/pools/p/backends/{}", c.addr);
    let (st, text) = common::http(admin, "DELETE", &del).await.unwrap();
    assert!(st == 200 || st == 204, "{st} {text}");
    let before = c.hits.load(Ordering::Relaxed);
    for _ in 0..10 {
        let r = ka_get(&mut h1).await;
        assert_eq!((r.status, r.who()), (200, "a"), "{r:?}");
        assert_eq!(h2_get(&mut h2).await, (200, "a".to_owned()));
    }
    assert_eq!(
        c.hits.load(Ordering::Relaxed),
        before,
        "the removed backend got requests"
    );

    // The service is removed: the request at hand is answered, then the connections end.
    let (st, text) = common::http(admin, "DELETE", "/api/v1/services/web")
        .await
        .unwrap();
    assert!(st == 200 || st == 204, "{st} {text}");
    let r = ka_get(&mut h1).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    expect_closed(&mut h1, Duration::from_secs(2), "HTTP/1.1, service removed").await;
    assert_eq!(h2_get(&mut h2).await.0, 200);
    let closed = common::eventually(Duration::from_secs(2), || {
        let closed = h2.is_closed();
        async move { closed }
    })
    .await;
    assert!(closed, "HTTP/2, service removed: still open");
    f.assert_no_panic();
}

/// Keep-alive client connections stop using a backend once it is marked down (killed: its
/// health check fails) or ejected (it answers 503): with retries off, no request fails
/// after that, on HTTP/1.1 and HTTP/2 connections opened before.
#[tokio::test]
async fn keep_alive_clients_stop_using_down_and_ejected_backends() {
    let (k1, k2) = (Killable::start("k1").await, Killable::start("k2").await);
    let (good, bad) = (backend("good").await, backend("bad").await);
    let (l1, l2) = (free_addr(), free_addr());
    let no_retry = "[service.retry]\nattempts = 0\n";
    let body = format!(
        "{}{}{}{}",
        http_service("down", l1, "p", no_retry),
        http_service("eject", l2, "q", no_retry),
        common::pool_toml(
            "p",
            "rr",
            "[pool.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 2\n",
            &weighted(&[k1.addr, k2.addr])
        ),
        common::pool_toml(
            "q",
            "rr",
            "[pool.outlier]\nconsecutive_failures = 3\nejection = \"30s\"\n",
            &weighted(&[good.addr, bad.addr])
        ),
    );
    let (f, admin) = start("http-ka-down", &body).await;

    // Down: k2 is killed and its health check marks it down.
    let down = async {
        let mut h1 = TcpStream::connect(l1).await.unwrap();
        let mut h2 = h2_client(l1).await;
        for _ in 0..4 {
            assert_eq!(ka_get(&mut h1).await.status, 200);
            assert_eq!(h2_get(&mut h2).await.0, 200);
        }
        assert!(k2.hits.load(Ordering::Relaxed) > 0);
        k2.kill();
        wait_state(admin, "p", k2.addr, "down").await;
        let mut failed = 0;
        for _ in 0..10 {
            failed += u32::from(ka_get(&mut h1).await.who() != "k1");
            failed += u32::from(h2_get(&mut h2).await != (200, "k1".to_owned()));
        }
        failed
    };

    // Ejected: bad answers 503 until the outlier detection ejects it.
    let ejected = async {
        bad.status.store(503, Ordering::Relaxed);
        let mut h1 = TcpStream::connect(l2).await.unwrap();
        let mut h2 = h2_client(l2).await;
        for _ in 0..4 {
            ka_get(&mut h1).await;
            h2_get(&mut h2).await;
        }
        wait_state(admin, "q", bad.addr, "ejected").await;
        let mut failed = 0;
        for _ in 0..10 {
            failed += u32::from(ka_get(&mut h1).await.who() != "good");
            failed += u32::from(h2_get(&mut h2).await != (200, "good".to_owned()));
        }
        failed
    };
    let (down, ejected) = tokio::join!(down, ejected);
    assert_eq!(
        (down, ejected),
        (0, 0),
        "of 20 requests after the backend was marked down, and of 20 after it was ejected, \
         these did not go to the other backend"
    );
    f.assert_no_panic();
}

/// A worker closes its idle pooled connections to a backend once it is drained (at the
/// next request it serves), so none is reused when the backend comes back.
#[tokio::test]
async fn pooled_connections_to_a_drained_backend_are_closed() {
    let (k1, k2) = (Killable::start("k1").await, Killable::start("k2").await);
    let listen = free_addr();
    let body = web_service(listen, "", &[k1.addr, k2.addr]);
    let (f, admin) = start("http-pool-drained", &body).await;
    let mut h1 = TcpStream::connect(listen).await.unwrap();
    for _ in 0..4 {
        assert_eq!(ka_get(&mut h1).await.status, 200);
    }
    assert!(k2.hits.load(Ordering::Relaxed) > 0);
    assert_eq!(k2.ended.load(Ordering::Relaxed), 0);
    let drain = format!("/api/v1/pools/p/backends/{}/drain", k2.addr);
    let (st, text) = common::http(admin, "POST", &drain).await.unwrap();
    assert_eq!(st, 200, "{text}");
    assert_eq!(ka_get(&mut h1).await.who(), "k1");
    let closed = common::eventually(Duration::from_secs(3), || async {
        k2.ended.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(
        closed,
        "the idle pooled connection to the drained backend is still open"
    );
    assert_eq!(
        k1.ended.load(Ordering::Relaxed),
        0,
        "a connection to k1 was closed"
    );
    f.assert_no_panic();
}

/// A TLS HTTP/1.1 keep-alive connection is closed after the service's `idle_timeout`.
#[tokio::test]
async fn tls_keep_alive_idle_timeout() {
    let b = backend("tlsidle").await;
    let dir = common::temp_dir("http-tls-idle-certs");
    let (roots, _, certs) = tls_material(&dir);
    let listen = free_addr();
    let body = format!(
        "{}\n[service.tls]\ncerts = [ {certs} ]\n\n{}",
        http_service("tls", listen, "p", "idle_timeout = \"1s\""),
        common::pool_toml("p", "rr", "", &weighted(&[b.addr])),
    );
    let (f, _) = start("http-tls-idle", &body).await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(listen).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect(
            rustls::pki_types::ServerName::try_from("a.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(4), tls.read_to_end(&mut rest)).await;
    assert!(
        r.is_ok(),
        "the idle TLS keep-alive connection is still open after 4 s"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    f.assert_no_panic();
}

/// A TLS connection that idles after its handshake, before its first request, waits
/// without a buffer: its request, when it comes, is answered (and the next one too); one
/// that sends nothing is closed, without an answer, once `idle_timeout` passed since the
/// handshake.
#[tokio::test]
async fn tls_connection_idle_before_its_first_request() {
    async fn get(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, i: u32) {
        tls.write_all(format!("GET /{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(n > 0, "closed before answering request {i}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    let b = backend("tlsfirst").await;
    let dir = common::temp_dir("http-tls-first-certs");
    let (roots, _, certs) = tls_material(&dir);
    let listen = free_addr();
    let body = format!(
        "{}\n[service.tls]\ncerts = [ {certs} ]\n\n{}",
        http_service("tls", listen, "p", "idle_timeout = \"2s\""),
        common::pool_toml("p", "rr", "", &weighted(&[b.addr])),
    );
    let (f, _) = start("http-tls-first", &body).await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cc));
    let mut conns = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(listen).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        conns.push(connector.connect(name, tcp).await.unwrap());
    }
    let handshaken = Instant::now();
    let (mut late, mut silent) = (conns.remove(0), conns.remove(0));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    get(&mut late, 1).await;
    get(&mut late, 2).await;
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    let took = handshaken.elapsed();
    assert!(
        r.is_ok(),
        "the silent TLS connection is still open after 6 s"
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
        "the silent TLS connection was closed {took:?} after its handshake (idle_timeout 2s)"
    );
    f.assert_no_panic();
}

/// A backend answering every request with an endless body (`Content-Length` of 1 GB): at
/// full speed, or (`trickle`) 100 bytes and then silence. Counts the connections that ended
/// (a write failed, or EOF). Each connection stops after 30 s.
async fn endless_backend(trickle: bool) -> (SocketAddr, Arc<AtomicU64>, Tasks) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let ended = Arc::new(AtomicU64::new(0));
    let tasks = Tasks::default();
    let (e, t) = (Arc::clone(&ended), tasks.clone());
    let accept = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let e = Arc::clone(&e);
            let conn = tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), async {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n";
                    if s.write_all(head).await.is_err() {
                        return;
                    }
                    if trickle {
                        if s.write_all(&[b'x'; 100]).await.is_err() {
                            return;
                        }
                        // silence until the proxy gives up
                        while let Ok(n) = s.read(&mut chunk).await {
                            if n == 0 {
                                return;
                            }
                        }
                    } else {
                        let data = vec![b'x'; 64 * 1024];
                        while s.write_all(&data).await.is_ok() {}
                    }
                })
                .await;
                e.fetch_add(1, Ordering::Relaxed);
            });
            t.add(&conn);
        }
    });
    tasks.add(&accept);
    (addr, ended, tasks)
}

/// With `idle_timeout = "1s"`: a client that stops reading an answer (HTTP/1.1, or HTTP/2
/// leaving its flow-control window shut), a backend that goes silent in the middle of a
/// body, and an upgraded connection where nothing moves each lose their connections after
/// about that long, freeing the backend connection.
#[tokio::test]
async fn stalled_answers_and_quiet_tunnels_time_out() {
    let (fast, fast_ended, fast_tasks) = endless_backend(false).await;
    let (fast2, fast2_ended, fast2_tasks) = endless_backend(false).await;
    let (slow, slow_ended, slow_tasks) = endless_backend(true).await;
    let ws = backend("ws").await;
    let (l1, l2, l3, l4) = (free_addr(), free_addr(), free_addr(), free_addr());
    let idle = "idle_timeout = \"1s\"";
    let body = format!(
        "{}{}{}{}{}{}{}{}",
        http_service("fast", l1, "f", idle),
        http_service("fast2", l4, "f2", idle),
        http_service("slow", l2, "s", idle),
        http_service("ws", l3, "w", idle),
        common::pool_toml("f", "rr", "", &weighted(&[fast])),
        common::pool_toml("f2", "rr", "", &weighted(&[fast2])),
        common::pool_toml("s", "rr", "", &weighted(&[slow])),
        common::pool_toml("w", "rr", "", &weighted(&[ws.addr])),
    );
    let (f, _) = start("http-stalled", &body).await;
    // Each case runs at once, and says what failed.
    let ended = |c: &Arc<AtomicU64>| {
        let c = Arc::clone(c);
        common::eventually(Duration::from_secs(6), move || {
            let c = Arc::clone(&c);
            async move { c.load(Ordering::Relaxed) >= 1 }
        })
    };

    // HTTP/1.1: the client sends its request and never reads.
    let h1_client = async {
        let mut h1 = TcpStream::connect(l1).await.unwrap();
        h1.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let ok = ended(&fast_ended).await;
        drop(h1);
        ok.then_some(()).ok_or(
            "the backend connection of an HTTP/1.1 client that stopped reading is still open",
        )
    };

    // HTTP/2: the client takes the head and never reads the body (its window stays shut).
    let h2_client = async {
        let mut s = h2_client_small_windows(l4).await;
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            s.send_request(h2_req(
                "GET",
                "http://x/",
                Frames(std::collections::VecDeque::new()),
            )),
        )
        .await
        .expect("a response head")
        .unwrap();
        assert_eq!(resp.status(), 200);
        let ok = ended(&fast2_ended).await;
        drop(resp);
        ok.then_some(())
            .ok_or("the backend connection of an HTTP/2 client with a shut window is still open")
    };

    // The backend goes silent after 100 bytes of its body: the client is told by a close.
    let silent_backend = async {
        let mut c = TcpStream::connect(l2).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_head(&mut c).await;
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = c.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        })
        .await;
        if closed.is_err() {
            return Err("the client connection is still open while the backend is silent");
        }
        assert!(
            t0.elapsed() >= Duration::from_millis(700),
            "{:?}",
            t0.elapsed()
        );
        ended(&slow_ended)
            .await
            .then_some(())
            .ok_or("the silent backend's connection is still open")
    };

    // An upgraded connection where nothing moves is closed.
    let quiet_tunnel = async {
        let mut s = TcpStream::connect(l3).await.unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .expect("the echo")
            .unwrap();
        assert_eq!(&echo, b"ping");
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                assert!(
                    t0.elapsed() >= Duration::from_millis(700),
                    "{:?}",
                    t0.elapsed()
                );
                Ok(())
            }
            Ok(Ok(_)) => Err("unexpected bytes in the quiet tunnel"),
            Err(_) => Err("the quiet tunnel is still open after 4 s"),
        }
    };

    let results = tokio::join!(h1_client, h2_client, silent_backend, quiet_tunnel);
    let failed: Vec<&str> = [results.0, results.1, results.2, results.3]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    for t in [fast_tasks, fast2_tasks, slow_tasks] {
        t.abort_all();
    }
    f.assert_no_panic();
}

#[tokio::test]
async fn slowloris_gets_408_while_others_are_served() {
    let b = backend("s1").await;
    let listen = free_addr();
    let body = web_service(listen, "", &[b.addr]);
    let (f, _) = start("http-slowloris", &body).await;
    let mut slow = TcpStream::connect(listen).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One header byte a second: the head never completes within the 10 s header timeout.
    let dripper = tokio::spawn(async move {
        let mut answer = Vec::new();
        for _ in 0..20 {
            if slow.write_all(b"X").await.is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        answer
    });
    // Meanwhile other clients are served as usual.
    for _ in 0..5 {
        assert_eq!(get(listen, "x", "/", "").await.status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let answer = dripper.await.unwrap();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "slowloris answer: {text:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed < Duration::from_secs(15),
        "cut after {elapsed:?}"
    );
    assert_eq!(get(listen, "x", "/", "").await.status, 200);
    f.assert_no_panic();
}

#[tokio::test]
async fn timeouts_and_retries_from_config_change_on_reload() {
    let slow = backend_after("slow", Duration::from_secs(1)).await;
    let good = backend("good").await;
    let dead = free_addr(); // nothing listens here: connect refused
    let (l_slow, l_noretry, l_retry) = (free_addr(), free_addr(), free_addr());
    let cfg = |response: &str, attempts: u32| {
        format!(
            "{}{}{}{}{}",
            http_service(
                "slow",
                l_slow,
                "s",
                &format!(
                    "[service.timeouts]\nresponse = \"{response}\"\nrequest_header = \"500ms\"\n"
                )
            ),
            http_service(
                "noretry",
                l_noretry,
                "r",
                &format!("[service.retry]\nattempts = {attempts}\nbudget = 100\n")
            ),
            http_service("retry", l_retry, "r", ""),
            common::pool_toml("s", "rr", "", &weighted(&[slow.addr])),
            // The dead backend is never ejected: every pick of it is a connect failure.
            common::pool_toml(
                "r",
                "rr",
                "[pool.outlier]\nconsecutive_failures = 100000\n",
                &weighted(&[dead, good.addr])
            ),
        )
    };
    let (f, admin) = start("http-timeouts", &cfg("300ms", 0)).await;

    // `response = "300ms"`: the 1 s backend gets a 504 in well under a second.
    let t = Instant::now();
    let r = get(l_slow, "x", "/", "").await;
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.contains("gateway timeout"), "{r:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(900),
        "504 after {took:?}"
    );

    // `request_header = "500ms"`: a head that stops half-way gets 408 after ~0.5 s (the
    // default would wait 10 s).
    let t = Instant::now();
    let mut s = TcpStream::connect(l_slow).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the half head was not cut")
        .unwrap();
    let took = t.elapsed();
    assert!(
        buf.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(took < Duration::from_secs(2), "408 after {took:?}");

    // `attempts = 0`: a request that picks the dead backend fails (502) instead of going on
    // to the good one; the same pool behind a service with the default retries never fails.
    let mut codes = HashMap::new();
    for i in 0..10 {
        *codes
            .entry(get(l_noretry, "x", &format!("/{i}"), "").await.status)
            .or_insert(0) += 1;
    }
    assert!(codes.get(&502).copied().unwrap_or(0) >= 3, "{codes:?}");
    assert!(codes.get(&200).copied().unwrap_or(0) >= 3, "{codes:?}");
    for i in 0..10 {
        assert_eq!(get(l_retry, "x", &format!("/{i}"), "").await.status, 200);
    }

    // A reload changes both: the slow backend now answers, and retries are back.
    f.write_config(&format!("{}{}", common::admin_toml(admin), cfg("5s", 1)));
    let (st, body) = common::http(admin, "POST", "/api/v1/reload").await.unwrap();
    assert_eq!(st, 200, "{body}");
    let (_, running) = common::http(admin, "GET", "/api/v1/config").await.unwrap();
    assert!(running.contains("response = \"5s\""), "{running}");
    let r = get(l_slow, "x", "/", "").await;
    assert_eq!((r.status, r.who()), (200, "slow"), "{r:?}");
    for i in 0..10 {
        let r = get(l_noretry, "x", &format!("/{i}"), "").await;
        assert_eq!((r.status, r.who()), (200, "good"), "request {i}: {r:?}");
    }
    f.assert_no_panic();
}

// ------------------------------------------------------------------ HTTP/2 (h2c) backends

/// A body of given frames (data, then perhaps trailers).
struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        // One data frame: an exact length (so hyper sends Content-Length).
        match (self.0.len(), self.0.front().and_then(|f| f.data_ref())) {
            (1, Some(d)) => hyper::body::SizeHint::with_exact(d.len() as u64),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

fn frames(data: &str, trailers: &[(&'static str, &str)]) -> Frames {
    let mut f = std::collections::VecDeque::new();
    f.push_back(hyper::body::Frame::data(Bytes::from(data.to_owned())));
    if !trailers.is_empty() {
        let mut t = hyper::HeaderMap::new();
        for (n, v) in trailers {
            t.insert(*n, v.parse().unwrap());
        }
        f.push_back(hyper::body::Frame::trailers(t));
    }
    Frames(f)
}

/// An HTTP/2-only backend (prior knowledge): answers `NAME\n`, `version: ...`, `uri: ...`
/// and the request's headers, with status `status`; `/slow` waits 200 ms first; `/trailers`
/// answers `hello` with trailers `grpc-status: 0`, `grpc-message: ok` and `x-echo-NAME` for
/// each request trailer. Counts accepted connections.
struct H2Backend {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    conns: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
    /// Its open connections.
    open: Tasks,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.open.abort_all();
        self.task.abort();
    }
}

async fn h2_backend(name: &'static str) -> H2Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let conns = Arc::new(AtomicU64::new(0));
    let hits = Arc::new(AtomicU64::new(0));
    let open = Tasks::default();
    let (st, cn, h, op) = (
        Arc::clone(&status),
        Arc::clone(&conns),
        Arc::clone(&hits),
        open.clone(),
    );
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            cn.fetch_add(1, Ordering::Relaxed);
            let (st, h) = (Arc::clone(&st), Arc::clone(&h));
            let conn = tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    h.fetch_add(1, Ordering::Relaxed);
                    let st = st.load(Ordering::Relaxed);
                    async move {
                        let (parts, body) = req.into_parts();
                        let got = body.collect().await.unwrap();
                        let req_trailers = got.trailers().cloned().unwrap_or_default();
                        let req_body = got.to_bytes();
                        if parts.uri.path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        if parts.uri.path() == "/trailers" {
                            let echo: Vec<(String, String)> = req_trailers
                                .iter()
                                .map(|(n, v)| {
                                    (format!("x-echo-{n}"), v.to_str().unwrap().to_owned())
                                })
                                .collect();
                            let mut f = frames(
                                &format!("hello {}", String::from_utf8_lossy(&req_body)),
                                &[("grpc-status", "0"), ("grpc-message", "ok")],
                            );
                            if let Some(t) = f.0.back_mut().and_then(|f| f.trailers_mut()) {
                                for (n, v) in echo {
                                    t.insert(
                                        hyper::header::HeaderName::from_bytes(n.as_bytes())
                                            .unwrap(),
                                        v.parse().unwrap(),
                                    );
                                }
                            }
                            return Ok::<_, Infallible>(Response::new(f));
                        }
                        let mut text =
                            format!("{name}\nversion: {:?}\nuri: {}\n", parts.version, parts.uri);
                        for (k, v) in &parts.headers {
                            let _ = writeln!(text, "{k}: {}", v.to_str().unwrap_or("?"));
                        }
                        let status = if parts.version == hyper::Version::HTTP_2 {
                            st
                        } else {
                            505
                        };
                        Ok(Response::builder()
                            .status(status)
                            .body(frames(&text, &[]))
                            .unwrap())
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
            op.add(&conn);
        }
    });
    H2Backend {
        addr,
        status,
        conns,
        hits,
        open,
        task,
    }
}

/// An HTTP/2 client connection with prior knowledge.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Frames> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

/// An HTTP/2 client connection with prior knowledge whose stream and connection windows
/// stay at the protocol's 65,535 bytes (no adaptive window): what it does not read holds
/// its peer back.
async fn h2_client_small_windows(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Frames> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (s, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .adaptive_window(false)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

/// Sends a request on an HTTP/2 client connection: the status, the body and the trailers.
async fn h2_call(
    s: &mut hyper::client::conn::http2::SendRequest<Frames>,
    req: Request<Frames>,
) -> (u16, Bytes, hyper::HeaderMap) {
    let fut = async {
        let resp = s.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let got = resp.into_body().collect().await.unwrap();
        let trailers = got.trailers().cloned().unwrap_or_default();
        (status, got.to_bytes(), trailers)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("HTTP/2 request timed out")
}

fn h2_req(method: &str, uri: &str, body: Frames) -> Request<Frames> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .unwrap()
}

/// A header (or trailer) field's value as text.
fn field<'a>(h: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn h2c_backends_share_one_connection_with_retries_and_ejection() {
    let one = h2_backend("h2a").await;
    let b1 = h2_backend("h2b").await;
    let b2 = h2_backend("h2c").await;
    let failing = h2_backend("h2fail").await;
    failing.status.store(503, Ordering::Relaxed);
    let dead = free_addr(); // nothing listens here: connect refused
    let (l_one, l_retry) = (free_addr(), free_addr());
    let body = format!(
        "{}{}{}{}",
        http_service("one", l_one, "one", ""),
        http_service("retry", l_retry, "r", ""),
        common::pool_toml(
            "one",
            "rr",
            "backend_protocol = \"h2c\"\n",
            &weighted(&[one.addr])
        ),
        common::pool_toml(
            "r",
            "rr",
            "backend_protocol = \"h2c\"\n[pool.outlier]\nconsecutive_failures = 2\nejection = \"30s\"\n",
            &weighted(&[b1.addr, dead, failing.addr, b2.addr])
        ),
    );
    let (fl, admin) = start("http-h2c", &body).await;

    // An HTTP/1.1 client's request reaches the backend over HTTP/2, headers rewritten as for
    // HTTP/1.1 backends.
    let r = get(
        l_one,
        "h2.example:8080",
        "/p?q=1",
        "X-Forwarded-For: 198.18.1.1\r\nKeep-Alive: 5\r\nX-Hop: secret\r\nConnection: X-Hop\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let lines: HashMap<&str, &str> = r.body.lines().filter_map(|l| l.split_once(": ")).collect();
    assert_eq!(lines.get("version"), Some(&"HTTP/2.0"), "{}", r.body);
    assert_eq!(
        lines.get("uri"),
        Some(&"http://h2.example:8080/p?q=1"),
        "{}",
        r.body
    );
    assert_eq!(lines.get("x-forwarded-for"), Some(&"198.18.1.1, 127.0.0.1"));
    assert_eq!(lines.get("x-forwarded-host"), Some(&"h2.example:8080"));
    assert_eq!(lines.get("x-forwarded-proto"), Some(&"http"));
    assert!(lines.contains_key("x-request-id"), "{}", r.body);
    assert!(
        !lines.contains_key("x-hop") && !lines.contains_key("keep-alive"),
        "{}",
        r.body
    );

    // And an HTTP/2 client's.
    let mut h2 = h2_client(l_one).await;
    let req = h2_req("GET", "http://h2.example/from-h2", frames("", &[]));
    let (status, text, _) = h2_call(&mut h2, req).await;
    let text = String::from_utf8_lossy(&text);
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("h2a\nversion: HTTP/2.0\n"), "{text}");

    // 100 concurrent requests (each from its own HTTP/1.1 client connection, each held
    // 200 ms by the backend) are multiplexed on one backend connection.
    let t = Instant::now();
    let clients: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move { get(l_one, "x", "/slow", &format!("X-N: {i}\r\n")).await })
        })
        .collect();
    for cl in clients {
        let r = cl.await.unwrap();
        assert_eq!((r.status, r.who()), (200, "h2a"), "{r:?}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "not concurrent: {:?}",
        t.elapsed()
    );
    assert_eq!(one.hits.load(Ordering::Relaxed), 102);
    assert_eq!(
        one.conns.load(Ordering::Relaxed),
        1,
        "one connection per backend (and worker)"
    );

    // Connect failures and 503s go to other backends (idempotent requests); the 503
    // backend and the dead one are ejected by passive checks.
    for i in 0..30 {
        let r = get(l_retry, "x", &format!("/{i}"), "").await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(["h2b", "h2c"].contains(&r.who()), "{r:?}");
    }
    wait_ejected(admin, "r", &[dead, failing.addr]).await;
    // 2 failures eject it (about 10 of the 30 without ejection); the controller applies the
    // ejection asynchronously, so a request or two more may reach it first.
    let hits = failing.hits.load(Ordering::Relaxed);
    assert!(hits <= 4, "retried into an ejected backend: {hits} hits");
    assert_eq!(b1.conns.load(Ordering::Relaxed), 1);
    assert_eq!(b2.conns.load(Ordering::Relaxed), 1);

    // The backend closes its connection: the next requests open a new one (and share it).
    one.open.abort_all();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let r = get(l_one, "x", "/", "").await;
        assert_eq!((r.status, r.who()), (200, "h2a"), "{r:?}");
    }
    assert_eq!(one.conns.load(Ordering::Relaxed), 2);
    fl.assert_no_panic();
}

/// A raw HTTP/1.1 backend that answers each request with a chunked body holding the request
/// exactly as it arrived, then the trailers `X-Checksum: abc` and `Connection: x` (which must
/// not pass), and closes.
async fn trailer_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                // The head, then (chunked) up to the blank line that ends the trailers.
                let complete = |b: &[u8]| {
                    let Some(i) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return false;
                    };
                    let head = String::from_utf8_lossy(&b[..i]).to_lowercase();
                    !head.contains("transfer-encoding: chunked")
                        || (b.len() > i + 4 && b.ends_with(b"\r\n\r\n"))
                };
                while !complete(&buf) {
                    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp)).await {
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&tmp[..n]),
                        _ => return,
                    }
                }
                let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nConnection: close\r\n\r\n".to_vec();
                resp.extend_from_slice(format!("{:x}\r\n", buf.len()).as_bytes());
                resp.extend_from_slice(&buf);
                resp.extend_from_slice(b"\r\n0\r\nX-Checksum: abc\r\nConnection: x\r\n\r\n");
                let _ = s.write_all(&resp).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn trailers_pass_both_ways_h1_and_h2() {
    let (h1b, _task) = trailer_backend().await;
    let h2b = h2_backend("h2t").await;
    let (l_h1, l_h2) = (free_addr(), free_addr());
    let body = format!(
        "{}{}{}{}",
        http_service("to-h1", l_h1, "h1", ""),
        http_service("to-h2", l_h2, "h2", ""),
        common::pool_toml("h1", "rr", "", &weighted(&[h1b])),
        common::pool_toml(
            "h2",
            "rr",
            "backend_protocol = \"h2c\"\n",
            &weighted(&[h2b.addr])
        ),
    );
    let (f, _) = start("http-trailers", &body).await;

    // HTTP/1.1 backend -> HTTP/1.1 client: the chunked response's trailers, less the
    // hop-by-hop one.
    let r = get(l_h1, "x", "/t", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.ends_with("\r\n0\r\nx-checksum: abc\r\n\r\n"),
        "{:?}",
        r.body
    );
    // A chunked request's trailers reach the HTTP/1.1 backend.
    let r = raw_from(
        None,
        l_h1,
        "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Req: 1\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("3\r\nabc\r\n0\r\nx-req: 1\r\n\r\n"),
        "{:?}",
        r.body
    );

    // HTTP/1.1 backend -> HTTP/2 client: the trailers come as an HTTP/2 trailers frame.
    let mut h2 = h2_client(l_h1).await;
    let (status, _, t) = h2_call(&mut h2, h2_req("GET", "http://x/t", frames("", &[]))).await;
    assert_eq!(status, 200);
    assert_eq!(field(&t, "x-checksum"), Some("abc"), "{t:?}");
    assert_eq!(field(&t, "connection"), None, "{t:?}");

    // HTTP/2 backend -> HTTP/2 client (gRPC style): data then grpc-status; and the client's
    // own request trailers reach the backend (echoed back as x-echo-*).
    let mut h2 = h2_client(l_h2).await;
    let mut req = h2_req(
        "POST",
        "http://x/trailers",
        frames("ping", &[("x-req", "7")]),
    );
    req.headers_mut()
        .insert("te", hyper::header::HeaderValue::from_static("trailers"));
    let (status, body, t) = h2_call(&mut h2, req).await;
    assert_eq!((status, &body[..]), (200, &b"hello ping"[..]));
    assert_eq!(field(&t, "grpc-status"), Some("0"), "{t:?}");
    assert_eq!(field(&t, "grpc-message"), Some("ok"), "{t:?}");
    assert_eq!(field(&t, "x-echo-x-req"), Some("7"), "{t:?}");

    // HTTP/2 backend -> HTTP/1.1 client: the trailers end the chunked body; a chunked
    // request's trailers reach the HTTP/2 backend.
    let r = raw_from(
        None,
        l_h2,
        "POST /trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\npong\r\n0\r\nX-Req: 8\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    assert_eq!(dechunk(&r.body), "hello pong");
    let tail = r
        .body
        .rsplit_once("\r\n0\r\n")
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default();
    for want in [
        "grpc-status: 0\r\n",
        "grpc-message: ok\r\n",
        "x-echo-x-req: 8\r\n",
    ] {
        assert!(tail.contains(want), "{want:?} not in the trailers {tail:?}");
    }
    assert!(tail.ends_with("\r\n\r\n"), "{tail:?}");
    f.assert_no_panic();
}

// ------------------------------------------------- framing, codings, Host, 101, Nagle

/// What [`scripted_backend`] writes for a request: the pieces of its answer by path, each
/// written on its own (`/split`: head, then body; `/split-head`: the status line, then the
/// rest); `/101` switches protocols unasked; the default is a small `200`.
fn scripted_answer(req: &str) -> Vec<&'static [u8]> {
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    match path {
        "/split" => vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
            b"hello",
        ],
        "/split-head" => vec![b"HTTP/1.1 200 OK\r\n", b"Content-Length: 5\r\n\r\nhello"],
        "/conn-cl" => vec![
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Hop\r\nContent-Length: 5\r\nX-Hop: 1\r\n\r\nhello",
        ],
        "/gz" => vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nGZ-GZ\r\n0\r\n\r\n"],
        "/gz-close" => vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nGZ-GZ"],
        "/101" => vec![b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n"],
        _ => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"],
    }
}

/// A raw keep-alive HTTP/1.1 backend with Nagle on (as its sockets are accepted): for each
/// request (head, then a Content-Length or chunked body up to the end of its trailers) it
/// records the request as it arrived and writes [`scripted_answer`]'s pieces one by one;
/// it closes after an answer saying `Connection: close`.
struct Scripted {
    addr: SocketAddr,
    got: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    fn requests(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

async fn scripted_backend() -> Scripted {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let g = Arc::clone(&g);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    // The head, then the body (Content-Length or chunked to its last CRLF).
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                            let rest = &buf[i + 4..];
                            if head.contains("transfer-encoding:") {
                                if rest.ends_with(b"\r\n\r\n") || rest == b"0\r\n\r\n".as_slice() {
                                    break buf.len();
                                }
                            } else {
                                let len: usize = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .map_or(0, |v| v.trim().parse().unwrap());
                                if rest.len() >= len {
                                    break i + 4 + len;
                                }
                            }
                        }
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let req = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let answer = scripted_answer(&req);
                    g.lock().unwrap().push(req);
                    for piece in &answer {
                        if s.write_all(piece).await.is_err() {
                            return;
                        }
                    }
                    if answer
                        .iter()
                        .any(|p| p.windows(17).any(|w| w == b"Connection: close"))
                    {
                        return;
                    }
                }
            });
        }
    });
    Scripted { addr, got, task }
}

/// Reads one `Content-Length` answer on a keep-alive connection: (head, body), within 5 s.
async fn read_sized(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = read_head(s).await;
    let i = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..i]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .unwrap_or_else(|| panic!("no Content-Length: {head}"))
        .trim()
        .parse()
        .unwrap();
    let mut buf = [0u8; 4096];
    while got.len() < i + len {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the rest of the body")
            .unwrap();
        assert!(n > 0, "closed in the body");
        got.extend_from_slice(&buf[..n]);
    }
    (head, got[i..].to_vec())
}

/// A backend that writes its answer's head and body in two writes with Nagle on holds the
/// body until the head is acknowledged. On a pooled backend connection the kernel delays
/// that ACK (40 ms) unless Fulcrum acknowledges at once: every request would take 40 ms.
/// The same for a keep-alive client writing a request's head and body apart.
#[tokio::test]
async fn split_writes_cost_no_delayed_ack_stall() {
    let b = scripted_backend().await;
    let listen = free_addr();
    let (f, _) = start("http-split-write", &web_service(listen, "", &[b.addr])).await;
    let mut s = TcpStream::connect(listen).await.unwrap();
    // The body apart from the head, then the head itself in two pieces.
    for path in ["/split", "/split-head"] {
        let mut took = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let (head, body) = read_sized(&mut s).await;
            took.push(t.elapsed());
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(body, b"hello");
        }
        took.sort();
        let median = took[took.len() / 2];
        assert!(
            median < Duration::from_millis(20),
            "{path}: median {median:?} per request (a delayed ACK costs 40 ms): {took:?}"
        );
    }
    assert_eq!(b.requests().len(), 40);
    // The client's request body apart from its head (this socket has Nagle on too).
    let mut took = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
            .await
            .unwrap();
        s.write_all(b"hello").await.unwrap();
        let (head, body) = read_sized(&mut s).await;
        took.push(t.elapsed());
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, b"ok\n");
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(20),
        "request body: median {median:?} per request: {took:?}"
    );
    let reqs = b.requests();
    assert!(
        reqs[40..].iter().all(|r| r.ends_with("\r\n\r\nhello")),
        "{reqs:?}"
    );
    f.assert_no_panic();
}

/// A backend listing `Content-Length` in its `Connection` header keeps its framing: the
/// client gets the length (else it could not tell where the body ends) and the connection
/// carries the next request; the other header it lists is dropped.
#[tokio::test]
async fn framing_headers_named_by_connection_are_kept() {
    let b = scripted_backend().await;
    let listen = free_addr();
    let (f, _) = start("http-conn-cl", &web_service(listen, "", &[b.addr])).await;
    let mut s = TcpStream::connect(listen).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /conn-cl HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_sized(&mut s).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert!(!head.contains("x-hop"), "{head}");
        assert_eq!(body, b"hello");
    }
    f.assert_no_panic();
}

/// Transfer codings besides chunked (`gzip, chunked`) pass both ways as they came; a
/// client or backend that cannot take them gets an error instead of a body it would
/// misread.
#[tokio::test]
async fn transfer_codings_besides_chunked_are_kept() {
    let b = scripted_backend().await;
    let h2b = h2_backend("h2").await;
    let (listen, l_h2) = (free_addr(), free_addr());
    let body = format!(
        "{}{}{}",
        web_service(listen, "", &[b.addr]),
        http_service("to-h2", l_h2, "h2", ""),
        common::pool_toml(
            "h2",
            "rr",
            "backend_protocol = \"h2c\"\n",
            &weighted(&[h2b.addr])
        ),
    );
    let (f, _) = start("http-codings", &body).await;

    // Answers: chunked with gzip under it, and close-delimited gzip (re-chunked).
    for path in ["/gz", "/gz-close"] {
        let r = get(listen, "x", path, "").await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(
            r.header("transfer-encoding"),
            Some("gzip, chunked"),
            "{path}: {r:?}"
        );
        assert_eq!(dechunk(&r.body), "GZ-GZ", "{path}");
    }
    // An HTTP/1.0 client (and an HTTP/2 one) cannot receive a transfer coding: 502.
    let r = raw_from(None, listen, "GET /gz HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 502, "{r:?}");
    let mut h2 = h2_client(listen).await;
    let (status, _, _) = h2_call(&mut h2, h2_req("GET", "http://x/gz", frames("", &[]))).await;
    assert_eq!(status, 502);

    // A request: the backend gets the codings, and the body as it was sent.
    let r = raw_from(
        None,
        listen,
        "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nGZ-GZ\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let reqs = b.requests();
    let up = reqs.iter().find(|r| r.starts_with("POST /up")).unwrap();
    assert!(up.contains("Transfer-Encoding: gzip, chunked\r\n"), "{up}");
    assert!(up.ends_with("\r\n\r\n5\r\nGZ-GZ\r\n0\r\n\r\n"), "{up}");
    // An HTTP/2 backend has no transfer codings: 501, nothing sent to it.
    let r = raw_from(
        None,
        l_h2,
        "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nGZ-GZ\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 501, "{r:?}");
    assert_eq!(h2b.hits.load(Ordering::Relaxed), 0);
    f.assert_no_panic();
}

/// An HTTP/1.1 request without `Host`, or any request with two, or with a Host that is not
/// a host and port: 400, never forwarded (RFC 9112 3.2). HTTP/1.0 may leave it out.
#[tokio::test]
async fn host_missing_repeated_or_invalid_is_refused() {
    let b = backend("b").await;
    let listen = free_addr();
    let (f, _) = start("http-host", &web_service(listen, "", &[b.addr])).await;
    for req in [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a/b@c\r\nConnection: close\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let r = raw_from(None, listen, req).await;
        assert_eq!(r.status, 400, "{req:?}: {r:?}");
        assert!(r.body.contains("Host"), "{req:?}: {r:?}");
    }
    assert_eq!(
        b.hits.load(Ordering::Relaxed),
        0,
        "a refused request was forwarded"
    );
    let r = raw_from(None, listen, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(listen, "a.example:8080", "/", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    f.assert_no_panic();
}

/// Fulcrum's own answers (a redirect, a 403) to `HEAD` carry the head of the `GET` answer,
/// its `content-length` too, and no body, so the keep-alive connection's next answer
/// parses: a body after the head would be read as the start of the next answer. Over HTTP/2
/// too (curl -I with prior knowledge).
#[tokio::test]
async fn own_answers_to_head_have_no_body_and_keep_alive_goes_on() {
    let b = backend("b").await;
    let (redirect, deny) = (free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}",
        http_service(
            "redirect",
            redirect,
            "p",
            "[service.redirect]\nstatus = 301\nhost = \"new.test\"\n"
        ),
        http_service("deny", deny, "p", "allow = [\"10.0.0.0/8\"]\n"),
        common::pool_toml("p", "rr", "", &weighted(&[b.addr])),
    );
    let (f, _) = start("http-head-local", &cfg).await;
    let length = |head: &str| -> usize {
        let r = parse(head.as_bytes());
        r.header("content-length")
            .unwrap_or_else(|| panic!("no content-length: {head}"))
            .parse()
            .unwrap()
    };
    for (listen, status) in [(redirect, 301), (deny, 403)] {
        let mut s = TcpStream::connect(listen).await.unwrap();
        let mut sizes = Vec::new();
        for round in 0..2 {
            s.write_all(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let got = String::from_utf8_lossy(&read_head(&mut s).await).into_owned();
            let (head, rest) = got.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status} ")),
                "HEAD {round} on {status}: {got:?}"
            );
            assert_eq!(
                rest, "",
                "HEAD {round} on {status}: a body followed the head"
            );
            sizes.push(length(head));
            s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let got = read_head(&mut s).await;
            let text = String::from_utf8_lossy(&got).into_owned();
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status} ")),
                "the GET after HEAD {round} on {status} did not parse: {text:?}"
            );
            let (head, rest) = text.split_once("\r\n\r\n").unwrap();
            let n = length(head);
            let mut body = rest.as_bytes().to_vec();
            while body.len() < n {
                let mut buf = [0u8; 1024];
                let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                    .await
                    .expect("the GET body")
                    .unwrap();
                assert!(k > 0, "closed within the GET body");
                body.extend_from_slice(&buf[..k]);
            }
            assert_eq!(body.len(), n, "{text:?}");
            assert_eq!(sizes[round], n, "HEAD and GET lengths differ on {status}");
        }
        // The curl view: `curl -I` reads the head and stops, on the same connection twice.
        if fulcrum_xdp::testing::require(
            "own_answers_to_head_have_no_body_and_keep_alive_goes_on",
            fulcrum_xdp::testing::have_program("curl"),
            "curl",
        ) {
            let out = std::process::Command::new("curl")
                .args(["-sS", "-I", "--max-time", "5"])
                .arg(format!("http://{listen}/x"))
                .arg(format!("http://{listen}/y"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "curl -I: {text} {out:?}");
            assert_eq!(
                text.matches(&format!("HTTP/1.1 {status} ")).count(),
                2,
                "{text}"
            );
            // HTTP/2 (prior knowledge): DATA on a HEAD answer is a stream error to curl
            // (exit 92, PROTOCOL_ERROR); the head carries the GET's content-length. One URL
            // per curl: Debian's curl 7.88 fails to reuse a prior-knowledge connection
            // (nginx's too: "Error in the HTTP2 framing layer").
            for path in ["/x", "/y"] {
                let out = std::process::Command::new("curl")
                    .args(["-sS", "-I", "--http2-prior-knowledge", "--max-time", "5"])
                    .arg(format!("http://{listen}{path}"))
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "curl -I over h2: {text} {out:?}");
                assert!(text.starts_with(&format!("HTTP/2 {status} ")), "{text}");
                assert!(
                    text.contains(&format!("content-length: {}\r\n", sizes[0])),
                    "{text}"
                );
            }
        }
    }
    assert_eq!(b.hits.load(Ordering::Relaxed), 0, "forwarded");
    f.assert_no_panic();
}

/// A `101 Switching Protocols` to a request that asked for no upgrade is not passed on:
/// the client gets 502 (and the backend connection is not used again).
#[tokio::test]
async fn unsolicited_101_becomes_502() {
    let b = scripted_backend().await;
    let listen = free_addr();
    let (f, _) = start("http-101", &web_service(listen, "", &[b.addr])).await;
    let r = get(listen, "x", "/101", "").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("switched protocols"), "{r:?}");
    // The same over HTTP/2.
    let mut h2 = h2_client(listen).await;
    let (status, _, _) = h2_call(&mut h2, h2_req("GET", "http://x/101", frames("", &[]))).await;
    assert_eq!(status, 502);
    // Other requests are still served.
    let r = get(listen, "x", "/", "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "{r:?}");
    f.assert_no_panic();
}

/// Request trailers named like forwarding headers (or hop-by-hop ones) never reach a
/// backend, whether the client speaks HTTP/1.1 or HTTP/2 and the backend HTTP/1.1 or
/// HTTP/2; other trailers do.
#[tokio::test]
async fn forwarding_trailers_never_reach_the_backend() {
    let b = scripted_backend().await;
    let h2b = h2_backend("h2").await;
    let (listen, l_h2) = (free_addr(), free_addr());
    let body = format!(
        "{}{}{}",
        web_service(listen, "", &[b.addr]),
        http_service("to-h2", l_h2, "h2", ""),
        common::pool_toml(
            "h2",
            "rr",
            "backend_protocol = \"h2c\"\n",
            &weighted(&[h2b.addr])
        ),
    );
    let (f, _) = start("http-trailer-filter", &body).await;
    let forged = "X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: h6\r\nX-Forwarded-Host: h6\r\nKeep-Alive: 6\r\nX-Ok: 1\r\n";

    // HTTP/1.1 client -> HTTP/1.1 backend.
    let r = raw_from(
        None,
        listen,
        &format!("POST /t1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n{forged}\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // HTTP/2 client -> HTTP/1.1 backend.
    let mut h2 = h2_client(listen).await;
    let trailers = [
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-proto", "h6"),
        ("x-ok", "1"),
    ];
    let (status, _, _) = h2_call(
        &mut h2,
        h2_req("POST", "http://x/t2", frames("abc", &trailers)),
    )
    .await;
    assert_eq!(status, 200);
    let reqs = b.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    for req in &reqs {
        let (_, tail) = req.split_once("\r\n\r\n").unwrap();
        assert!(tail.to_lowercase().contains("\r\nx-ok: 1\r\n"), "{req}");
        assert!(!req.contains("6.6.6.6") && !req.contains("h6"), "{req}");
        assert!(!tail.to_lowercase().contains("keep-alive"), "{req}");
    }

    // HTTP/1.1 client -> HTTP/2 backend (it echoes the trailers it got as x-echo-*).
    let r = raw_from(
        None,
        l_h2,
        &format!("POST /trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\npong\r\n0\r\n{forged}\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let tail = r
        .body
        .rsplit_once("\r\n0\r\n")
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default();
    assert!(tail.contains("x-echo-x-ok: 1\r\n"), "{tail:?}");
    assert!(
        !tail.contains("6.6.6.6") && !tail.contains("h6"),
        "{tail:?}"
    );
    f.assert_no_panic();
}

/// SIGTERM: idle keep-alive client connections are closed once the drain's grace (1 s) is
/// over (they hold no request), so the process exits 0 long before `drain_timeout`; a new
/// connection is refused.
#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections() {
    let b = backend("b").await;
    let listen = free_addr();
    let body = web_service(listen, "drain_timeout = \"20s\"", &[b.addr]);
    let (mut f, _admin) = start("http-sigterm", &body).await;
    // ten clients, each after one keep-alive request, idle
    let mut idle = Vec::new();
    for i in 0..10 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        keep_alive_get(&mut s, i).await;
        idle.push(s);
    }
    let t0 = Instant::now();
    f.signal("TERM");
    for mut s in idle {
        expect_closed(
            &mut s,
            Duration::from_secs(3),
            "an idle connection on SIGTERM",
        )
        .await;
    }
    exits_promptly(&mut f, t0).await;
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "the listener is gone"
    );
    f.assert_no_panic();
}

/// SIGTERM while a keep-alive connection idles: its next request, sent within the drain's
/// grace (1 s), is answered with `Connection: close` instead of failing on a connection
/// closed under it (docs/fleet.md, "The two-tier edge").
#[tokio::test]
async fn sigterm_answers_the_next_request_of_an_idle_keep_alive_connection() {
    let b = backend("b").await;
    let listen = free_addr();
    let body = web_service(listen, "drain_timeout = \"20s\"", &[b.addr]);
    let (mut f, _admin) = start("http-sigterm-grace", &body).await;
    let mut s = TcpStream::connect(listen).await.unwrap();
    keep_alive_get(&mut s, 0).await;
    let t0 = Instant::now();
    f.signal("TERM");
    // once the drain has begun (its wake-up looks every 100 ms), within the grace
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&read_head(&mut s).await).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // then closed (after the rest of the answer)
    let mut buf = [0u8; 1024];
    loop {
        let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("closed after its answer");
        if matches!(r, Ok(0) | Err(_)) {
            break;
        }
    }
    exits_promptly(&mut f, t0).await;
    f.assert_no_panic();
}

/// An idle keep-alive client connection is closed after the service's `idle_timeout`
/// (between requests only); one that keeps sending requests stays open.
#[tokio::test]
async fn keep_alive_idle_timeout() {
    let b = backend("b").await;
    let listen = free_addr();
    let body = web_service(listen, "idle_timeout = \"1s\"", &[b.addr]);
    let (f, _admin) = start("http-idle", &body).await;
    // busy: a request every 250 ms for 1.5 s (longer than the timeout in total; the gaps
    // leave a loaded machine room below the timeout)
    let mut busy = TcpStream::connect(listen).await.unwrap();
    let mut idle = TcpStream::connect(listen).await.unwrap();
    keep_alive_get(&mut idle, 0).await;
    let t0 = Instant::now();
    for i in 0..6 {
        keep_alive_get(&mut busy, i).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // the idle one was closed after ~1 s
    expect_closed(&mut idle, Duration::from_secs(2), "the idle connection").await;
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    keep_alive_get(&mut busy, 99).await;
    f.assert_no_panic();
}

/// HTTP/2 client connections get the same `idle_timeout` (a GOAWAY once no request came for
/// that long); a connection with requests every 300 ms stays open.
#[tokio::test]
async fn h2_client_connection_idle_timeout() {
    async fn h2(
        listen: SocketAddr,
    ) -> (
        hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<()>,
    ) {
        let tcp = TcpStream::connect(listen).await.unwrap();
        let (s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        (
            s,
            tokio::spawn(async move {
                let _ = conn.await;
            }),
        )
    }
    async fn get(s: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>) -> u16 {
        let req = Request::builder()
            .uri("http://x/h2idle")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let r = s.send_request(req).await.unwrap();
        let status = r.status().as_u16();
        let _ = r.into_body().collect().await;
        status
    }
    let b = backend("b").await;
    let listen = free_addr();
    let body = web_service(listen, "idle_timeout = \"600ms\"", &[b.addr]);
    let (f, _admin) = start("http-h2idle", &body).await;
    let (mut idle, idle_conn) = h2(listen).await;
    let (mut busy, busy_conn) = h2(listen).await;
    assert_eq!(get(&mut idle).await, 200);
    for _ in 0..6 {
        assert_eq!(get(&mut busy).await, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::timeout(Duration::from_secs(2), idle_conn)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap();
    assert!(!busy_conn.is_finished(), "the busy connection stays open");
    assert_eq!(get(&mut busy).await, 200);
    f.assert_no_panic();
}

/// An idle keep-alive connection is parked out of its task after a second
/// (`fulcrum_http_parked_connections`) and served again on its next request; the service's
/// `idle_timeout` still counts from the last request, whether parked or not; a client that
/// hangs up while parked is let go; SIGTERM closes parked connections at once.
#[tokio::test]
async fn idle_keep_alive_connections_are_parked_and_served_again() {
    async fn parked(admin: SocketAddr) -> Option<u64> {
        let (_, m) = common::http(admin, "GET", "/metrics").await.ok()?;
        m.lines()
            .find_map(|l| l.strip_prefix("fulcrum_http_parked_connections{service=\"web\"} "))
            .and_then(|v| v.trim().parse().ok())
    }
    async fn wait_parked(admin: SocketAddr, want: u64) {
        let t0 = Instant::now();
        while parked(admin).await != Some(want) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "parked connections: {:?}, want {want}",
                parked(admin).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let b = backend("b").await;
    let listen = free_addr();
    let body = web_service(
        listen,
        "idle_timeout = \"3s\"\ndrain_timeout = \"20s\"",
        &[b.addr],
    );
    let (mut f, admin) = start("http-park", &body).await;
    let mut conns = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        keep_alive_get(&mut s, i).await;
        conns.push(s);
    }
    let last_of_c = Instant::now();
    let (mut a, b_conn, mut c) = {
        let mut it = conns.into_iter();
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    };
    assert_eq!(
        parked(admin).await,
        Some(0),
        "busy connections are not parked"
    );
    wait_parked(admin, 3).await;
    // the next request unparks the connection and is answered on it
    keep_alive_get(&mut a, 10).await;
    wait_parked(admin, 2).await;
    // a client hanging up while parked is let go
    drop(b_conn);
    wait_parked(admin, 1).await;
    // `a` sends a request every 1.2 s (parked in between): it outlives `c`, which is closed
    // once 3 s passed since its last request, up to a sweep period late
    let mut closed_c = None;
    for i in 11..16 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        keep_alive_get(&mut a, i).await;
        if closed_c.is_none() {
            let mut buf = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await {
                Err(_) => {}
                Ok(r) => {
                    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
                    closed_c = Some(last_of_c.elapsed());
                }
            }
        }
    }
    let closed_c = closed_c.expect("the parked idle connection was closed by idle_timeout");
    assert!(
        closed_c >= Duration::from_millis(2900) && closed_c < Duration::from_millis(5500),
        "closed {closed_c:?} after its last request (idle_timeout 3s)"
    );
    wait_parked(admin, 1).await;
    // SIGTERM: the parked connection is closed after the drain's grace (1 s), long before
    // drain_timeout
    let t0 = Instant::now();
    f.signal("TERM");
    expect_closed(
        &mut a,
        Duration::from_secs(3),
        "a parked connection on SIGTERM",
    )
    .await;
    exits_promptly(&mut f, t0).await;
    f.assert_no_panic();
}

/// A connection opened without a request (a browser's preconnect, a slow client) idles as a
/// keep-alive one does: parked after a second, without a buffer. When its request finally
/// comes it is served, HTTP/1.1 or HTTP/2 with prior knowledge alike; one that sends nothing
/// is closed (silently: no 408 to a preconnect) once the shorter of `idle_timeout` and
/// `request_header` passed since it was accepted.
#[tokio::test]
async fn connections_idle_before_their_first_request_park_and_are_served() {
    async fn parked(admin: SocketAddr) -> Option<u64> {
        let (_, m) = common::http(admin, "GET", "/metrics").await.ok()?;
        m.lines()
            .find_map(|l| l.strip_prefix("fulcrum_http_parked_connections{service=\"web\"} "))
            .and_then(|v| v.trim().parse().ok())
    }
    let b = backend("b").await;
    let listen = free_addr();
    let body = web_service(listen, "idle_timeout = \"3s\"", &[b.addr]);
    let (f, admin) = start("http-park-first", &body).await;
    let opened = Instant::now();
    let mut h1 = TcpStream::connect(listen).await.unwrap();
    let h2 = TcpStream::connect(listen).await.unwrap();
    let mut silent = TcpStream::connect(listen).await.unwrap();
    let t0 = Instant::now();
    while parked(admin).await != Some(3) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "connections without a request parked: {:?}, want 3",
            parked(admin).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first request of a parked connection is served, and the next one too.
    keep_alive_get(&mut h1, 1).await;
    keep_alive_get(&mut h1, 2).await;
    // HTTP/2 prior knowledge is still recognised on a connection that was parked.
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://x/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The silent one is closed about 3 s (idle_timeout, shorter than request_header's 10 s)
    // after it was opened, with no answer.
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(8), silent.read(&mut buf))
        .await
        .expect("the silent connection is still open after 8 s");
    let took = opened.elapsed();
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "the silent connection got {r:?}"
    );
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(5500),
        "the silent connection was closed {took:?} after it was opened (idle_timeout 3s)"
    );
    f.assert_no_panic();
}

/// Full duplex through an h2c pool, as a gRPC bidirectional streaming call needs: the backend
/// answers at once and echoes each piece of the request body as it comes; the HTTP/2 client
/// sends its next piece only after it got the echo of the previous one.
#[tokio::test]
async fn h2c_backend_full_duplex_streaming() {
    /// A body fed through a channel, one data frame per message.
    struct Chan(tokio::sync::mpsc::Receiver<Bytes>);
    impl hyper::body::Body for Chan {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
    // the echo backend (HTTP/2 only)
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = l.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                    let (tx, rx) = tokio::sync::mpsc::channel(8);
                    let mut body = req.into_body();
                    tokio::spawn(async move {
                        while let Some(Ok(f)) = body.frame().await {
                            if let Ok(d) = f.into_data() {
                                if tx.send(d).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    Ok::<_, Infallible>(Response::new(Chan(rx)))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    let listen = free_addr();
    let body = format!(
        "{}{}",
        http_service("grpc", listen, "g", ""),
        common::pool_toml(
            "g",
            "rr",
            "backend_protocol = \"h2c\"\n",
            &weighted(&[backend_addr])
        ),
    );
    let (f, _) = start("http-duplex", &body).await;
    let tcp = TcpStream::connect(listen).await.unwrap();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let req = Request::builder()
        .method("POST")
        .uri("http://grpc.test/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Chan(rx))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.send_request(req))
        .await
        .expect("the answer's head comes before the request body ends")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut answer = resp.into_body();
    for i in 0..5 {
        let ping = Bytes::from(format!("ping {i}"));
        tx.send(ping.clone()).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), answer.frame())
            .await
            .unwrap_or_else(|_| panic!("no echo of piece {i} while the request is still open"))
            .expect("the answer goes on")
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), ping);
    }
    // the client ends its body: the backend ends its answer
    drop(tx);
    // (an empty DATA frame may carry the end of the stream)
    loop {
        let end = tokio::time::timeout(Duration::from_secs(5), answer.frame())
            .await
            .expect("the answer ends after the request body");
        match end {
            None => break,
            Some(Ok(f)) if f.data_ref().is_some_and(Bytes::is_empty) => {}
            other => panic!("more after the request body ended: {other:?}"),
        }
    }
    echo.abort();
    f.assert_no_panic();
}

/// An HTTP/1.1 backend that answers each request with its body, once all of it came.
async fn whole_echo_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                    let body = req.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// HTTP/2 flow control both ways: three 3 MiB uploads at once on one connection, each past
/// the 1 MiB window Fulcrum gives a stream and its connection (so Fulcrum must give window
/// back as the backend takes the bytes), each echoed back whole through the client's
/// 64 KiB windows (so Fulcrum must wait for window to send). One upload has a
/// `content-length`, the others are sent in 16 KiB frames without one.
#[tokio::test]
async fn h2_large_bodies_through_small_windows() {
    let (b, echo) = whole_echo_backend().await;
    let listen = free_addr();
    let (f, _) = start("http-h2-windows", &web_service(listen, "", &[b])).await;
    let s = h2_client_small_windows(listen).await;
    let calls: Vec<_> = (0..3u8)
        .map(|i| {
            let mut s = s.clone();
            tokio::spawn(async move {
                let body: Bytes = (0..3u32 << 20)
                    .map(|j| (j.wrapping_mul(31) >> 3) as u8 ^ i)
                    .collect::<Vec<u8>>()
                    .into();
                let frames = if i == 0 {
                    std::iter::once(hyper::body::Frame::data(body.clone())).collect()
                } else {
                    body.chunks(16 << 10)
                        .map(|c| hyper::body::Frame::data(Bytes::copy_from_slice(c)))
                        .collect()
                };
                let (st, got, _) =
                    h2_call(&mut s, h2_req("POST", "http://x/", Frames(frames))).await;
                assert_eq!(st, 200, "upload {i}");
                assert_eq!(got.len(), body.len(), "upload {i}: echoed length");
                assert!(got == body, "upload {i}: echoed bytes differ");
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    echo.abort();
    f.assert_no_panic();
}

/// SIGTERM with HTTP/2 streams in flight: they are answered whole (the GOAWAY lets the
/// streams begun finish), a new stream on that connection is not served, and the process
/// exits once they are done, long before `drain_timeout`.
#[tokio::test]
async fn h2_sigterm_finishes_streams_in_flight() {
    let b = backend_after("slow", Duration::from_millis(800)).await;
    let listen = free_addr();
    let body = web_service(listen, "drain_timeout = \"20s\"", &[b.addr]);
    let (mut f, _) = start("http-h2-sigterm", &body).await;
    let s = h2_client(listen).await;
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut s = s.clone();
            tokio::spawn(async move {
                let empty = Frames(std::collections::VecDeque::new());
                h2_call(&mut s, h2_req("GET", "http://x/", empty)).await
            })
        })
        .collect();
    let hits = Arc::clone(&b.hits);
    assert!(
        common::eventually(Duration::from_secs(5), move || {
            let hits = Arc::clone(&hits);
            async move { hits.load(Ordering::Relaxed) == 3 }
        })
        .await,
        "the three requests reached the backend"
    );
    let t0 = Instant::now();
    f.signal("TERM");
    for c in calls {
        let (st, body, _) = c.await.unwrap();
        assert_eq!(st, 200);
        assert!(body.starts_with(b"slow\n"), "{body:?}");
    }
    let mut late = s.clone();
    let empty = Frames(std::collections::VecDeque::new());
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        late.send_request(h2_req("GET", "http://x/", empty)),
    )
    .await
    .expect("a stream after the GOAWAY is refused, not left waiting");
    assert!(r.is_err(), "a stream after the GOAWAY was served: {r:?}");
    assert_eq!(b.hits.load(Ordering::Relaxed), 3);
    exits_promptly(&mut f, t0).await;
    f.assert_no_panic();
}
