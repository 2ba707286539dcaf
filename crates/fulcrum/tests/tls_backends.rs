//! Issue 21: TLS closes and TLS towards backends, through real peers.
//! - `close_notify`: a TLS service ends every orderly close with the alert: `openssl
//!   s_client` after `Connection: close`, after the keep-alive `idle_timeout` and when the
//!   process drains (SIGTERM) reports no "unexpected eof"; curl reading an HTTP/1.0 answer
//!   delimited by the close gets all of it without a TLS error; an HTTP/2 client (hyper over
//!   rustls) sees an orderly close after `idle_timeout` and when the process drains; one that
//!   never acknowledges the GOAWAY is closed one `idle_timeout` later;
//! - `backend_protocol = "h2"`: requests reach nginx (`listen ... ssl http2`) over HTTP/2
//!   (`$server_protocol`, `$ssl_alpn_protocol`), and a TLS backend without h2 is a 502;
//! - `check = "http"` on a pool with `[pool.tls]` speaks TLS with the pool's CA, SNI and
//!   client certificate: a backend nginx that requires the client certificate stays up; a
//!   pool whose CA does not verify its backend goes down.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use common::certs::{ca, leaf, p, service_tls};
use common::peers::{self, need, nginx};
use common::{admin_toml, free_addr, Fulcrum};
use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};

fn material(dir: &Path) {
    let ca1 = ca(dir, "ca");
    ca(dir, "otherca");
    leaf(dir, &ca1, "a.test", 1, ServerAuth, false);
    leaf(dir, &ca1, "backend.test", 2, ServerAuth, false);
    leaf(dir, &ca1, "fulcrum-lb", 3, ClientAuth, false);
}

/// The admin API and an http service `web` on `vip` terminating TLS with `a.test`'s
/// certificate (`idle_timeout = IDLE`), over pool `ng` of the one backend `ng`.
fn web_over_tls(
    admin: SocketAddr,
    vip: SocketAddr,
    idle: &str,
    dir: &Path,
    ng: SocketAddr,
) -> String {
    format!(
        "{}[[service]]\nname = \"web\"\nlisten = \"{vip}\"\nprotocol = \"http\"\npool = \"ng\"\nidle_timeout = \"{idle}\"\n{}\n\
         [[pool]]\nname = \"ng\"\n[[pool.backend]]\naddress = \"{ng}\"\n",
        admin_toml(admin),
        service_tls(dir, "a.test"),
    )
}

/// Starts [`peers::s_client`] to `addr` as `a.test` (trusting `ca`), sending `input` and
/// keeping the connection open until the server closes it (or 10 s), off the runtime's
/// threads; the task gives (stdout and stderr, how long it took).
fn s_client(
    addr: SocketAddr,
    ca: &str,
    input: &'static str,
) -> tokio::task::JoinHandle<(String, Duration)> {
    let ca = ca.to_owned();
    tokio::task::spawn_blocking(move || {
        let args = [
            "-servername",
            "a.test",
            "-CAfile",
            &ca,
            "-verify_return_error",
        ];
        peers::s_client(addr, &args, input, Duration::from_secs(10))
    })
}

/// What `s_client` says when the server closed without `close_notify` (OpenSSL 3).
fn cut(out: &str) -> bool {
    out.contains("unexpected eof")
}

/// Orderly closes of a TLS service send `close_notify`: after `Connection: close`, after
/// the keep-alive `idle_timeout`, when the process drains; curl reading an answer delimited
/// by the close sees a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_on_orderly_closes() {
    let t = "close_notify_on_orderly_closes";
    if !need(t, "openssl", "openssl") || !need(t, "nginx", "nginx") || !need(t, "curl", "curl") {
        return;
    }
    let dir = common::temp_dir("tls-close-notify");
    material(&dir);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    // Compressible: nginx gzips it on the fly, so its answer has no length (chunked to
    // Fulcrum, delimited by the close to an HTTP/1.0 client).
    let page = "close notify ".repeat(2000);
    std::fs::write(dir.join("www/page.txt"), &page).unwrap();
    let ng = free_addr();
    let _nginx = nginx(
        &dir,
        &format!(
            "server {{ listen {ng}; root {www}; gzip on; gzip_min_length 1; gzip_types text/plain;\n\
             location = /hello {{ return 200 \"hello\\n\"; }} }}",
            www = p(&dir, "www"),
        ),
        &[ng],
    );
    let (admin, vip) = (free_addr(), free_addr());
    let config = web_over_tls(admin, vip, "1s", &dir, ng);
    let mut f = Fulcrum::start("tls-close-notify", admin, &config, &[]).await;
    let ca = p(&dir, "ca.pem");

    // `Connection: close`: the answer, then close_notify.
    let (out, _) = s_client(
        vip,
        &ca,
        "GET /hello HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(
        out.contains("HTTP/1.1 200") && out.contains("hello"),
        "{out}"
    );
    assert!(
        !cut(&out),
        "Connection: close ended without close_notify:\n{out}"
    );

    // Keep-alive: the connection idles through idle_timeout (1 s), then closes in order.
    let (out, took) = s_client(vip, &ca, "GET /hello HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert!(
        out.contains("HTTP/1.1 200") && out.contains("hello"),
        "{out}"
    );
    assert!(
        took < Duration::from_secs(8),
        "the idle connection was not closed by idle_timeout ({took:?}):\n{out}"
    );
    assert!(
        !cut(&out),
        "the idle close came without close_notify:\n{out}"
    );

    // curl, HTTP/1.0: the body is delimited by the close; a close without close_notify
    // is an error to curl ("unexpected eof while reading", exit 56).
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http1.0",
            "--max-time",
            "10",
            "-H",
            "Accept-Encoding: gzip",
        ])
        .args([
            "--cacert",
            &ca,
            "--resolve",
            &format!("a.test:{}:127.0.0.1", vip.port()),
        ])
        .arg(format!("https://a.test:{}/page.txt", vip.port()))
        .args(["-o", &p(&dir, "page.gz"), "-D", "-"])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed on the close-delimited answer ({}): {}\n{head}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        head.contains("200") && !head.to_ascii_lowercase().contains("content-length"),
        "the answer was not delimited by the close:\n{head}"
    );
    let mut plain = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dir.join("page.gz")).unwrap())
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, page, "the body came cut");

    // Draining: an idle keep-alive connection is closed in order too.
    let open = s_client(vip, &ca, "GET /hello HTTP/1.1\r\nHost: a.test\r\n\r\n");
    // Wait for its answer, then drain well within the 1 s idle_timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.signal("TERM");
    let (out, _) = open.await.unwrap();
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(!cut(&out), "the drain closed without close_notify:\n{out}");
    assert!(f.wait_exit(Duration::from_secs(10)).await.is_some());
    f.assert_no_panic();
}

/// The client's HTTP/2 connection preface and an empty SETTINGS frame (RFC 9113 3.4).
const H2_PREFACE: &str = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// A GET over HTTP/2 and TLS (ALPN h2, hyper's client: it acknowledges the server's PING and
/// GOAWAY as browsers do): (its status, the request sender, which keeps the client's side
/// open, and the connection's task, which gives how it ended and when). rustls reports a
/// close without `close_notify` as an "unexpected eof" error, so `Ok` is an orderly close.
async fn h2_get(
    vip: SocketAddr,
    roots: &rustls::RootCertStore,
) -> (
    u16,
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<(Result<(), String>, Duration)>,
) {
    let mut cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    cc.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(vip).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let start = Instant::now();
    let conn = tokio::spawn(async move {
        let r = conn.await.map_err(|e| format!("{e:?}"));
        (r, start.elapsed())
    });
    let req = hyper::Request::get("https://a.test/")
        .body(Empty::new())
        .unwrap();
    let status = send.send_request(req).await.unwrap().status().as_u16();
    (status, send, conn)
}

/// HTTP/2 over TLS ends in order too: after `idle_timeout` (GOAWAY, then `close_notify`) and
/// when the process drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_over_h2() {
    let t = "close_notify_over_h2";
    if !need(t, "nginx", "nginx") {
        return;
    }
    let dir = common::temp_dir("tls-close-notify-h2");
    let ca1 = ca(&dir, "ca");
    leaf(&dir, &ca1, "a.test", 1, ServerAuth, false);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca1.cert.der().clone()).unwrap();
    let ng = free_addr();
    let _nginx = nginx(
        &dir,
        &format!("server {{ listen {ng}; location / {{ return 200 \"hello\\n\"; }} }}"),
        &[ng],
    );
    let (admin, vip) = (free_addr(), free_addr());
    let config = web_over_tls(admin, vip, "3s", &dir, ng);
    let mut f = Fulcrum::start("tls-close-notify-h2", admin, &config, &[]).await;

    // Idle: after idle_timeout (3 s), GOAWAY, then close_notify.
    let (status, _send, conn) = h2_get(vip, &roots).await;
    assert_eq!(status, 200);
    let (r, took) = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle HTTP/2 connection was not closed by idle_timeout")
        .unwrap();
    assert!(r.is_ok(), "the idle HTTP/2 close was not orderly: {r:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "closed after {took:?}, idle_timeout is 3 s"
    );

    // A client that sends the preface and never answers the GOAWAY's PING (`s_client`
    // passes bytes through, it does not speak HTTP/2): closed anyway, one idle_timeout after
    // the GOAWAY, so it cannot hold its connection forever.
    if need(t, "openssl", "openssl") {
        let ca = p(&dir, "ca.pem");
        let (out, took) = tokio::task::spawn_blocking(move || {
            let args = ["-servername", "a.test", "-CAfile", &ca, "-alpn", "h2"];
            peers::s_client(vip, &args, H2_PREFACE, Duration::from_secs(15))
        })
        .await
        .unwrap();
        assert!(
            out.contains("ALPN protocol: h2"),
            "h2 was not negotiated:\n{out}"
        );
        assert!(
            took < Duration::from_secs(11),
            "a client that ignores GOAWAY kept its connection for {took:?} (idle_timeout 3 s):\n{out}"
        );
    }

    // Draining: an open HTTP/2 connection gets GOAWAY and close_notify at once.
    let (status, _send, conn) = h2_get(vip, &roots).await;
    assert_eq!(status, 200);
    f.signal("TERM");
    let (r, took) = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the drain did not close the HTTP/2 connection")
        .unwrap();
    assert!(
        r.is_ok(),
        "the drain closed HTTP/2 without close_notify: {r:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "closed after {took:?}: not by the drain"
    );
    assert!(f.wait_exit(Duration::from_secs(10)).await.is_some());
    f.assert_no_panic();
}

/// `backend_protocol = "h2"`: HTTP/2 over TLS (ALPN h2) to nginx; a TLS backend that does
/// not offer h2 is refused (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_to_nginx() {
    let t = "h2_over_tls_to_nginx";
    if !need(t, "nginx", "nginx") || !need(t, "curl", "curl") {
        return;
    }
    let dir = common::temp_dir("tls-h2-backend");
    material(&dir);
    let (h2, h1) = (free_addr(), free_addr());
    let _nginx = nginx(
        &dir,
        &format!(
            "server {{ listen {h2} ssl http2; listen {h1} ssl; ssl_certificate {c}; ssl_certificate_key {k};\n\
             location / {{ return 200 \"proto=$server_protocol alpn=$ssl_alpn_protocol sni=$ssl_server_name host=$host uri=$request_uri\\n\"; }} }}",
            c = p(&dir, "backend.test.pem"),
            k = p(&dir, "backend.test.key"),
        ),
        &[h2, h1],
    );
    let (admin, vip) = (free_addr(), free_addr());
    let pool = |name: &str, be: SocketAddr| {
        format!(
            "[[pool]]\nname = \"{name}\"\nbackend_protocol = \"h2\"\n[pool.tls]\nca = \"{}\"\nsni = \"backend.test\"\n\
             [[pool.backend]]\naddress = \"{be}\"\n\n",
            p(&dir, "ca.pem"),
        )
    };
    let config = format!(
        "{}[[service]]\nname = \"web\"\nlisten = \"{vip}\"\nprotocol = \"http\"\npool = \"h2\"\n\
         [[service.route]]\npath_prefix = \"/noh2\"\npool = \"h1only\"\n\n{}{}",
        admin_toml(admin),
        pool("h2", h2),
        pool("h1only", h1),
    );
    let f = Fulcrum::start("tls-h2-backend", admin, &config, &[]).await;
    for i in 0..3 {
        // An HTTP/1.1 client; the backend gets HTTP/2 on one multiplexed connection.
        let (status, body) = common::http(vip, "GET", &format!("/x?i={i}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("proto=HTTP/2.0 alpn=h2 sni=backend.test")
                && body.contains(&format!("uri=/x?i={i}")),
            "the request did not reach nginx over HTTP/2 with TLS: {body}"
        );
    }
    // curl over HTTP/2 (prior knowledge) to Fulcrum, HTTP/2 over TLS behind it.
    let out = Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "--max-time", "10"])
        .arg(format!("http://{vip}/y"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("proto=HTTP/2.0 alpn=h2"), "{body}");
    // A TLS backend that chooses no ALPN h2: not spoken to.
    let (status, body) = common::http(vip, "GET", "/noh2").await.unwrap();
    assert_eq!(status, 502, "a backend without h2 was used: {body}");
    f.assert_no_panic();
}

/// `check = "http"` over TLS: with the pool's CA, SNI and client certificate (nginx
/// requires it) the backend is up; with a CA that does not verify it, down. The check's
/// `Host` is the pool's `sni` (this nginx answers a check with another `Host` 421).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_speak_tls() {
    if !need("http_checks_speak_tls", "nginx", "nginx") {
        return;
    }
    let dir = common::temp_dir("tls-checks");
    material(&dir);
    let ng = free_addr();
    let _nginx = nginx(
        &dir,
        &format!(
            "server {{ listen {ng} ssl; ssl_certificate {c}; ssl_certificate_key {k};\n\
             ssl_client_certificate {ca}; ssl_verify_client on;\n\
             location = /healthz {{ set $c \"\"; if ($http_user_agent = fulcrum-health) {{ set $c A; }}\n\
             if ($host != backend.test) {{ set $c \"${{c}}B\"; }} if ($c = AB) {{ return 421; }}\n\
             return 200 \"ok\\n\"; }}\n\
             location / {{ return 404; }} }}",
            c = p(&dir, "backend.test.pem"),
            k = p(&dir, "backend.test.key"),
            ca = p(&dir, "ca.pem"),
        ),
        &[ng],
    );
    let (admin, vip) = (free_addr(), free_addr());
    let pool = |name: &str, ca: &str| {
        format!(
            "[[pool]]\nname = \"{name}\"\n[pool.tls]\nca = \"{}\"\nsni = \"backend.test\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [pool.health]\ncheck = \"http\"\npath = \"/healthz\"\ninterval = \"1s\"\ntimeout = \"800ms\"\nrise = 2\nfall = 3\n\
             [[pool.backend]]\naddress = \"{ng}\"\n\n",
            p(&dir, ca),
            p(&dir, "fulcrum-lb.pem"),
            p(&dir, "fulcrum-lb.key"),
        )
    };
    let config = format!(
        "{}[[service]]\nname = \"web\"\nlisten = \"{vip}\"\nprotocol = \"http\"\npool = \"good\"\n\
         [[service.route]]\npath_prefix = \"/bad\"\npool = \"bad\"\n\n{}{}",
        admin_toml(admin),
        pool("good", "ca.pem"),
        pool("bad", "otherca.pem"),
    );
    let f = Fulcrum::start("tls-checks", admin, &config, &[]).await;
    f.wait_state("good", ng, "up", Duration::from_secs(10))
        .await;
    f.wait_state("bad", ng, "down", Duration::from_secs(10))
        .await;
    // It stays so over several intervals (the checks of the good pool pass).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(f.backend_state("good", ng).await, "up");
    assert_eq!(f.backend_state("bad", ng).await, "down");
    let (status, body) = common::http(vip, "GET", "/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    f.assert_no_panic();
}
