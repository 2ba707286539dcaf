//! The rules of http services and routes (docs/rules.md), end to end through the real
//! binary: curl as the client, nginx as the backend (static files, an echo of what it
//! received), `fulcrum check` for the load-time refusals, a reload with a keep-alive
//! connection open, and a compression bomb in a request body.

#![allow(clippy::too_many_lines, clippy::many_single_char_names)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::peers::need;
use common::{free_port, temp_dir, Fulcrum};

/// nginx on loopback serving `dir/www`, with `/echo` answering what it got (request target,
/// some headers) and `/pre/` serving files already gzip-encoded.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    /// The same site over h2c (prior knowledge).
    h2c: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path) -> Nginx {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let h2c: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let d = dir.display();
        let conf = format!(
            r#"daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 256; }}
http {{
  include /etc/nginx/mime.types; access_log off;
  client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;
  uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;
  server {{ listen {addr}; listen {h2c} http2; root {d}/www;
    location /echo {{ default_type text/plain;
      return 200 "uri=$request_uri xc=$http_x_client rid=$http_x_request_id route=$http_x_route gone=$http_x_gone\n"; }}
    location /pre/ {{ default_type text/plain; add_header Content-Encoding gzip; alias {d}/www/static/; }}
  }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, addr, h2c }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // nginx's master: SIGQUIT ends it and its worker.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A deterministic text of about 1.2 MB (compressible) and 100 kB of noise (not).
fn write_site(dir: &Path) {
    let www = dir.join("www/static");
    std::fs::create_dir_all(&www).expect("mkdir");
    let words = [
        "alpha", "beta", "gamma", "delta", "fulcrum", "proxy", "<div>", "</div>",
    ];
    let mut x: u64 = 7;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let text: Vec<&str> = (0..200_000).map(|_| words[(next() % 8) as usize]).collect();
    std::fs::write(www.join("big.html"), text.join(" ")).expect("write");
    std::fs::write(www.join("small.html"), "tiny").expect("write");
    let noise: Vec<u8> = (0..100_000).map(|_| next() as u8).collect();
    std::fs::write(www.join("data.bin"), noise).expect("write");
    std::fs::create_dir_all(dir.join("pages")).expect("mkdir");
    std::fs::write(dir.join("pages/403.html"), "<h1>custom forbidden</h1>\n").expect("write");
    std::fs::write(dir.join("pages/5xx.html"), "<h1>custom server error</h1>\n").expect("write");
    let hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
    std::fs::write(dir.join("htpasswd"), format!("# staff\nalice:{hash}\n")).expect("write");
}

/// curl's answer: status, head (lower-cased field names) and body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn curl(dir: &Path, args: &[&str]) -> Answer {
    let head = dir.join("curl.head");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-D"])
        .arg(&head)
        .args(args)
        .output()
        .expect("run curl");
    let head = std::fs::read_to_string(&head).unwrap_or_default();
    // The last head (after interim answers).
    let last = head
        .split("\r\n\r\n")
        .filter(|h| !h.trim().is_empty())
        .last()
        .unwrap_or("")
        .to_owned();
    let status = last
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: last,
        body: out.stdout,
    }
}

fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    backend: SocketAddr,
    dir: &Path,
    tag: &str,
) -> String {
    config_h2c(admin, listen, backend, backend, dir, tag)
}

fn config_h2c(
    admin: SocketAddr,
    listen: SocketAddr,
    backend: SocketAddr,
    h2c: SocketAddr,
    dir: &Path,
    tag: &str,
) -> String {
    let d = dir.display();
    format!(
        r#"[admin]
listen = "{admin}"

[[service]]
name = "web"
listen = "{listen}"
protocol = "http"
pool = "web"
deny = ["127.0.0.9"]
allow = ["127.0.0.0/8", "::1"]
error_pages = {{ "403" = "{d}/pages/403.html", "5xx" = "{d}/pages/5xx.html" }}

[service.request_headers]
set = {{ X-Client = "${{client_addr}}", X-Route = "${{route}}" }}
remove = ["X-Gone"]

[service.response_headers]
set = {{ X-Served-By = "fulcrum ${{pool}} {tag}" }}
add = {{ X-Req = "${{request_id}}" }}
remove = ["Server"]

[service.compression]
min_size = 100

[[service.route]]
path_prefix = "/old/"
pool = "web"
redirect = {{ status = 308, scheme = "https", host = "new.test", path = "/new" }}

[[service.route]]
path_prefix = "/api/"
pool = "web"
rewrite = {{ strip_prefix = "/api" }}

[[service.route]]
path_prefix = "/private/"
pool = "web"
rewrite = {{ replace_prefix = "/private/", with = "/static/" }}
basic_auth = {{ realm = "staff", htpasswd = "{d}/htpasswd" }}

[[service.route]]
path_prefix = "/down"
pool = "down"

[[service.route]]
path_prefix = "/h2c/"
pool = "h2c"
rewrite = {{ strip_prefix = "/h2c" }}

[[service.route]]
path_prefix = "/empty"
pool = "empty"

[[pool]]
name = "web"
[pool.health]
check = "none"
[[pool.backend]]
address = "{backend}"

[[pool]]
name = "h2c"
backend_protocol = "h2c"
[pool.health]
check = "none"
[[pool.backend]]
address = "{h2c}"

[[pool]]
name = "down"
[pool.health]
check = "none"
[[pool.backend]]
address = "127.0.0.1:1"

[[pool]]
name = "empty"
[pool.health]
check = "none"
[[pool.backend]]
address = "127.0.0.1:2"
weight = 0
"#
    )
}

fn setup(name: &str) -> Option<(PathBuf, Nginx, SocketAddr, SocketAddr)> {
    if !need(name, "nginx", "nginx") || !need(name, "curl", "curl") {
        return None;
    }
    let dir = temp_dir(name);
    write_site(&dir);
    let nginx = Nginx::start(&dir);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().ok()?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().ok()?;
    Some((dir, nginx, admin, listen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_end_to_end() {
    let Some((dir, nginx, admin, listen)) = setup("rules_every_rule") else {
        return;
    };
    let f = Fulcrum::start(
        "rules_every_rule_f",
        admin,
        &config_h2c(admin, listen, nginx.addr, nginx.h2c, &dir, "v1"),
        &["--workers", "1"],
    )
    .await;
    let base = format!("http://{listen}");
    let url = |p: &str| format!("{base}{p}");
    let d = dir.clone();
    let c = move |args: Vec<String>| {
        let d = d.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                curl(&d, &a)
            })
            .await
            .expect("curl task")
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();

    // Request headers: set (with variables), remove; the client's own X-Client is replaced.
    let a = c(s(&[
        "-H",
        "X-Gone: 1",
        "-H",
        "X-Client: spoofed",
        &url("/echo"),
    ]))
    .await;
    assert_eq!(a.status, 200, "{}", a.head);
    let echo = a.text();
    assert!(echo.contains("xc=127.0.0.1 "), "{echo}");
    assert!(echo.contains("route=default "), "{echo}");
    assert!(echo.contains("gone=\n"), "{echo}");
    let rid = echo
        .split("rid=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("rid");
    // Response headers: set with a variable, add with the request id, remove.
    assert_eq!(a.field("x-served-by").as_deref(), Some("fulcrum web v1"));
    assert_eq!(a.field("x-req").as_deref(), Some(rid));
    assert_eq!(a.field("server"), None, "{}", a.head);

    // Rewrite: strip a prefix (query kept); the matched route's variable.
    let a = c(s(&[&url("/api/echo?x=1")])).await;
    assert!(a.text().starts_with("uri=/echo?x=1 "), "{}", a.text());
    assert!(a.text().contains("route=/api/ "), "{}", a.text());

    // Redirect: scheme, host, path, status; the query is kept; nothing proxied.
    let a = c(s(&[&url("/old/page?q=1")])).await;
    assert_eq!(a.status, 308);
    assert_eq!(
        a.field("location").as_deref(),
        Some("https://new.test/new?q=1")
    );
    assert!(a.field("date").is_some());

    // Allow / deny: 127.0.0.9 is denied (403 with the custom page), counted.
    let a = c(s(&["--interface", "127.0.0.9", &url("/echo")])).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.text(), "<h1>custom forbidden</h1>\n");
    assert_eq!(
        a.field("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(a.field("date").is_some());
    let refused = f
        .metric(
            "fulcrum_http_refused_total",
            &[("service", "web"), ("reason", "access")],
        )
        .await;
    assert_eq!(refused, Some(1.0));

    // Basic auth: none, wrong, right (and the prefix replaced on the way).
    let a = c(s(&[&url("/private/small.html")])).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.field("www-authenticate").as_deref(),
        Some("Basic realm=\"staff\", charset=\"UTF-8\"")
    );
    let a = c(s(&["-u", "alice:wrong", &url("/private/small.html")])).await;
    assert_eq!(a.status, 401);
    let a = c(s(&["-u", "bob:s3cret", &url("/private/small.html")])).await;
    assert_eq!(a.status, 401);
    let a = c(s(&["-u", "alice:s3cret", &url("/private/small.html")])).await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.text(), "tiny");
    let refused = f
        .metric(
            "fulcrum_http_refused_total",
            &[("service", "web"), ("reason", "auth")],
        )
        .await;
    assert_eq!(refused, Some(3.0));

    // Fulcrum's own 502 and 503: the 5xx page, and a Date.
    for (p, st) in [("/down", 502), ("/empty", 503)] {
        let a = c(s(&[&url(p)])).await;
        assert_eq!(a.status, st, "{p}: {}", a.head);
        assert_eq!(a.text(), "<h1>custom server error</h1>\n");
        let date = a.field("date").expect("Date");
        assert!(date.ends_with(" GMT"), "{date}");
    }

    // Compression: each coding, decompressed by curl, byte for byte the backend's body.
    let original = std::fs::read(dir.join("www/static/big.html")).expect("read");
    for coding in ["gzip", "br", "zstd"] {
        let a = c(s(&[
            "--compressed",
            "-H",
            &format!("Accept-Encoding: {coding}"),
            &url("/static/big.html"),
        ]))
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.field("content-encoding").as_deref(),
            Some(coding),
            "{}",
            a.head
        );
        assert_eq!(a.field("vary").as_deref(), Some("Accept-Encoding"));
        assert_eq!(a.field("content-length"), None);
        assert!(
            a.body == original,
            "{coding}: the decompressed body differs"
        );
        // Compressed on the wire for real.
        let raw = c(s(&[
            "-H",
            &format!("Accept-Encoding: {coding}"),
            &url("/static/big.html"),
        ]))
        .await;
        assert!(
            raw.body.len() < original.len() / 3,
            "{coding}: {} bytes",
            raw.body.len()
        );
    }
    // HTTP/2 clients, and an HTTP/2 (h2c) backend, likewise.
    for (client, path) in [
        ("--http2-prior-knowledge", "/static/big.html"),
        ("--http1.1", "/h2c/static/big.html"),
        ("--http2-prior-knowledge", "/h2c/static/big.html"),
    ] {
        for coding in ["gzip", "br", "zstd"] {
            let a = c(s(&[
                client,
                "--compressed",
                "-H",
                &format!("Accept-Encoding: {coding}"),
                &url(path),
            ]))
            .await;
            assert_eq!(a.status, 200, "{client} {path}: {}", a.head);
            assert_eq!(
                a.field("content-encoding").as_deref(),
                Some(coding),
                "{client} {path}: {}",
                a.head
            );
            assert!(
                a.body == original,
                "{client} {path} {coding}: the decompressed body differs"
            );
        }
    }
    // q-values: zstd refused, br preferred over gzip by weight.
    let a = c(s(&[
        "-H",
        "Accept-Encoding: gzip;q=0.5, br;q=0.9, zstd;q=0",
        &url("/static/big.html"),
    ]))
    .await;
    assert_eq!(a.field("content-encoding").as_deref(), Some("br"));
    // No Accept-Encoding: as it is, but Vary still says it could differ.
    let a = c(s(&[&url("/static/big.html")])).await;
    assert_eq!(a.field("content-encoding"), None);
    assert_eq!(a.body, original);
    assert_eq!(a.field("vary").as_deref(), Some("Accept-Encoding"));
    // Not compressed: a type not listed, below min_size, a range, already encoded.
    let a = c(s(&[
        "-H",
        "Accept-Encoding: gzip",
        &url("/static/data.bin"),
    ]))
    .await;
    assert_eq!(a.field("content-encoding"), None);
    assert_eq!(a.body.len(), 100_000);
    let a = c(s(&[
        "-H",
        "Accept-Encoding: gzip",
        &url("/static/small.html"),
    ]))
    .await;
    assert_eq!(a.field("content-encoding"), None);
    assert_eq!(a.text(), "tiny");
    let a = c(s(&[
        "-H",
        "Accept-Encoding: gzip",
        "-r",
        "0-99",
        &url("/static/big.html"),
    ]))
    .await;
    assert_eq!(a.status, 206);
    assert_eq!(a.field("content-encoding"), None);
    assert_eq!(a.body, original[..100]);
    let a = c(s(&["-H", "Accept-Encoding: br", &url("/pre/small.html")])).await;
    assert_eq!(a.field("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(a.text(), "tiny");
    // HTTP/1.0: compressed, delimited by the connection's close.
    let a = c(s(&[
        "--http1.0",
        "--compressed",
        "-H",
        "Accept-Encoding: gzip",
        &url("/static/big.html"),
    ]))
    .await;
    assert_eq!(a.field("content-encoding").as_deref(), Some("gzip"));
    assert!(
        a.body == original,
        "HTTP/1.0: the decompressed body differs"
    );
    // HEAD: no body, nothing compressed.
    let a = c(s(&[
        "-I",
        "-H",
        "Accept-Encoding: gzip",
        &url("/static/big.html"),
    ]))
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.field("content-encoding"), None);
    f.assert_no_panic();
}

/// A request body that is a compression bomb (10 MB of zeros gzip-compressed) is passed
/// to the backend as it came: Fulcrum never decompresses request bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_bomb_request_body_passes_through() {
    let Some((dir, nginx, admin, listen)) = setup("rules_bomb") else {
        return;
    };
    drop(nginx);
    // A backend that answers with the length and a checksum of the body it received.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let baddr = backend.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in backend.incoming().take(4) {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 65536];
            let (head_end, len) = loop {
                let Ok(n) = s.read(&mut chunk) else {
                    break (0, 0);
                };
                if n == 0 {
                    break (0, 0);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (i + 4, len);
                }
            };
            while buf.len() < head_end + len {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = &buf[head_end.min(buf.len())..];
            let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
            let answer = format!("{} {sum}", body.len());
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    let cfg = config(admin, listen, baddr, &dir, "bomb");
    let f = Fulcrum::start("rules_bomb_f", admin, &cfg, &["--workers", "1"]).await;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![0u8; 10 << 20]).expect("gzip");
    let bomb = enc.finish().expect("gzip");
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let path = dir.join("bomb.gz");
    std::fs::write(&path, &bomb).expect("write");
    let sum: u64 = bomb.iter().map(|b| u64::from(*b)).sum();
    let d = dir.clone();
    let url = format!("http://{listen}/upload");
    let a = tokio::task::spawn_blocking(move || {
        let data = format!("@{}", path.display());
        curl(
            &d,
            &[
                "-H",
                "Content-Encoding: gzip",
                "-H",
                "Content-Type: application/octet-stream",
                "-H",
                "Accept-Encoding: gzip",
                "--data-binary",
                &data,
                &url,
            ],
        )
    })
    .await
    .expect("curl");
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.text(), format!("{} {sum}", bomb.len()));
    f.assert_no_panic();
}

/// A reload changes the rules; a keep-alive connection open across it stays up and its next
/// request gets the new rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_rules_keeping_connections() {
    let Some((dir, nginx, admin, listen)) = setup("rules_reload") else {
        return;
    };
    let f = Fulcrum::start(
        "rules_reload_f",
        admin,
        &config(admin, listen, nginx.addr, &dir, "v1"),
        &["--workers", "1"],
    )
    .await;
    let get = |s: &mut std::net::TcpStream| -> String {
        write!(s, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s
                .read(&mut chunk)
                .expect("read: the connection must stay up");
            assert!(n > 0, "the connection was closed");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(i) = text.find("\r\n\r\n") {
                let len: usize = text[..i]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .expect("content-length");
                if buf.len() >= i + 4 + len {
                    return text;
                }
            }
        }
    };
    let mut s = std::net::TcpStream::connect(listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let first = get(&mut s);
    assert!(first.contains("x-served-by: fulcrum web v1"), "{first}");
    // v2: another header value, and the password file gains a user.
    let hash = bcrypt::hash("pw2", 4).expect("bcrypt");
    let old = std::fs::read_to_string(dir.join("htpasswd")).expect("read");
    std::fs::write(dir.join("htpasswd"), format!("{old}carol:{hash}\n")).expect("write");
    f.write_config(&config(admin, listen, nginx.addr, &dir, "v2"));
    f.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if f.metric("fulcrum_config_reloads_total", &[("result", "ok")])
            .await
            .unwrap_or(0.0)
            >= 1.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reload: {}",
            f.stderr_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = get(&mut s);
    assert!(second.contains("x-served-by: fulcrum web v2"), "{second}");
    // The htpasswd file was re-read.
    let d = dir.clone();
    let url = format!("http://{listen}/private/small.html");
    let a = tokio::task::spawn_blocking(move || curl(&d, &["-u", "carol:pw2", &url]))
        .await
        .expect("curl");
    assert_eq!(a.status, 200, "{}", a.head);
    f.assert_no_panic();
}

/// `fulcrum check` refuses bad rules at load, each at `FILE:LINE:COL` with the valid forms.
#[test]
fn check_refuses_bad_rules() {
    let dir = temp_dir("rules_check");
    let file = dir.join("bad.toml");
    let text = r#"[[service]]
name = "web"
listen = "127.0.0.1:18080"
protocol = "http"
pool = "web"
allow = ["10.0.0.0/33", "10.1.2.3/8"]
basic_auth = { htpasswd = "/nonexistent/htpasswd" }
error_pages = { "200" = "/tmp/x.html" }

[service.request_headers]
set = { X-A = "${client_ip}", X-B = "a\r\nInjected: 1" }

[service.redirect]
status = 303

[service.compression]
algorithms = ["deflate"]

[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:18081"
"#;
    std::fs::write(&file, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run check");
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let name = file.display().to_string();
    for (line_col, what, help) in [
        ("6:10", "invalid address or network \"10.0.0.0/33\"", "CIDR"),
        ("6:25", "host bits set", "\"10.0.0.0/8\""),
        ("8:17", "invalid error page status \"200\"", "\"4xx\""),
        ("11:15", "unknown variable `${client_ip}`", "${client_addr}"),
        ("11:37", "control character", "CR, LF"),
        (
            "14:10",
            "redirect status 303 is not a redirect",
            "301, 302, 307 or 308",
        ),
        (
            "17:15",
            "unknown compression algorithm \"deflate\"",
            "\"zstd\", \"br\" or \"gzip\"",
        ),
    ] {
        let at = format!("{name}:{line_col}: ");
        let line = err
            .lines()
            .position(|l| l.starts_with(&at) && l.contains(what))
            .unwrap_or_else(|| panic!("no `{at}...{what}` in:\n{err}"));
        let next = err.lines().nth(line + 1).unwrap_or("");
        assert!(
            next.trim_start().starts_with("help:") && next.contains(help),
            "{what}: {next}\n{err}"
        );
    }
    // With the keys fixed, the unreadable htpasswd file is refused at its key.
    let fixed = text
        .replace("\"10.0.0.0/33\", \"10.1.2.3/8\"", "\"10.0.0.0/8\"")
        .replace("\"200\"", "\"404\"")
        .replace("${client_ip}", "${client_addr}")
        .replace("a\\r\\nInjected: 1", "b")
        .replace("303", "302")
        .replace("\"deflate\"", "\"gzip\"");
    std::fs::write(&file, &fixed).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run check");
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{name}:7:27: cannot read htpasswd file /nonexistent/htpasswd"
        )),
        "{err}"
    );
    assert!(err.contains("htpasswd -B"), "{err}");
    assert!(
        err.contains(&format!("{name}:8:25: cannot read error page /tmp/x.html"))
            || std::path::Path::new("/tmp/x.html").exists(),
        "{err}"
    );
}
