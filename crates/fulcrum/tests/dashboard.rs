//! The dashboard at `GET /` of the admin listener, in a real browser: Debian's chromium,
//! headless, driven through the Chrome `DevTools` protocol (a websocket) from this test.
//!
//! - the page loads (its own script and style under the strict Content-Security-Policy)
//!   and shows the 3 backends, with their share of the maglev table;
//! - a drain click without the token gets 401 and changes nothing; with the token (typed
//!   into the page) drain, undrain and weight clicks change the backend in the API;
//! - a killed backend's row turns red within 2 s;
//! - no console error, exception or CSP violation but the one expected 401.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    free_addr, pool_toml, service_toml, temp_dir, weighted, Behaviour, Fulcrum, TcpBackend,
};
use fulcrum_xdp::testing::{have_program, require};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "dash-s3cret";

/// One plain HTTP/1.1 request (std, blocking, bounded): (status, head, body).
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    // Read to the end of the body: Content-Length when given (chromium's DevTools server
    // keeps the connection open), else to EOF.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            if let Some(n) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
                if buf.len() >= end + 4 + n {
                    buf.truncate(end + 4 + n);
                    break;
                }
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("{method} {path} on {addr}: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A headless chromium started by this test; killed by PID and reaped on drop.
struct Chromium {
    child: Child,
    dir: PathBuf,
}

impl Chromium {
    fn start(dir: &Path) -> (Self, u16) {
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                "--disable-crash-reporter",
                "--disable-breakpad",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn chromium");
        let mut c = Self {
            child,
            dir: dir.to_owned(),
        };
        // chromium writes its DevTools port to the profile once it listens.
        let file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u16>().ok()))
            {
                break p;
            }
            if let Ok(Some(st)) = c.child.try_wait() {
                panic!("chromium exited at start: {st}\n{}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort in 30 s\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        (c, port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default()
    }
}

impl Chromium {
    /// PIDs of the processes started with this test's profile (the browser and its
    /// helpers: zygote, renderer, GPU, network).
    fn processes(&self) -> Vec<u32> {
        let profile = self.dir.join("profile");
        let needle = format!("--user-data-dir={}", profile.display());
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then_some(pid)
        })
        .collect()
    }

    /// Ends the browser: SIGTERM to its PID (it closes its helpers), SIGKILL after 5 s.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `DevTools` protocol connection to one page target.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next: u64,
    /// Every event received so far (method, params).
    events: Vec<(String, Value)>,
}

impl Cdp {
    /// Connects to the first page target of the browser on `port`.
    fn connect(port: u16) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = loop {
            let (st, _, body) = http(addr, "GET", "/json/list", None);
            let list: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let page = list.as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            if let Some(u) = page {
                break u;
            }
            assert!(
                Instant::now() < deadline,
                "no page target in 10 s: {st} {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), sock).expect("websocket handshake");
        // From here on, reads wake up often so that every wait can check its deadline.
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            ws,
            next: 0,
            events: Vec::new(),
        }
    }

    /// Reads one message, or `None` after the read timeout.
    fn read(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(Message::Text(t)) => Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("DevTools websocket: {e}"),
        }
    }

    /// Sends a command and waits (10 s at most) for its answer, keeping events.
    fn call(&mut self, method: &str, params: &Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params});
        tokio::task::block_in_place(|| {
            self.ws.send(Message::text(msg.to_string())).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                assert!(Instant::now() < deadline, "{method}: no answer in 10 s");
                let Some(v) = self.read() else { continue };
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
                if let Some(m) = v["method"].as_str() {
                    self.events.push((m.to_owned(), v["params"].clone()));
                }
            }
        })
    }

    /// Evaluates a JavaScript expression in the page; its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            &json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: threw {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is `true`; the time it took. Panics after `limit`.
    fn wait_true(&mut self, expr: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        // False, not an exception, while the page is still loading.
        let guarded =
            format!("(() => {{ try {{ return ({expr}); }} catch (_) {{ return false; }} }})()");
        loop {
            if self.eval(&guarded) == Value::Bool(true) {
                return start.elapsed();
            }
            let body = self.eval("document.body ? document.body.innerText : ''");
            assert!(
                start.elapsed() < limit,
                "not true within {limit:?}: {expr}\npage:\n{}",
                body.as_str().unwrap_or("")
            );
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(25)));
        }
    }

    /// Console errors, exceptions and error log entries (CSP violations, failed loads).
    fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|(m, p)| match m.as_str() {
                "Runtime.exceptionThrown" => Some(format!("exception: {}", p["exceptionDetails"])),
                "Runtime.consoleAPICalled"
                    if matches!(p["type"].as_str(), Some("error" | "assert")) =>
                {
                    Some(format!("console.{}: {}", p["type"], p["args"]))
                }
                "Log.entryAdded" if p["entry"]["level"] == "error" => Some(format!(
                    "log ({}): {} {}",
                    p["entry"]["source"], p["entry"]["text"], p["entry"]["url"]
                )),
                _ => None,
            })
            .collect()
    }
}

/// An HTTP/1.1 backend: answers every request head with `200 ok` (keep-alive).
async fn http_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, task)
}

fn row(addr: SocketAddr) -> String {
    format!("document.querySelector('tr[data-backend=\"{addr}\"]')")
}

fn click(cdp: &mut Cdp, addr: SocketAddr, action: &str) {
    let ok = cdp.eval(&format!(
        "(() => {{ const b = {}.querySelector('button[data-action=\"{action}\"]'); b.click(); return true; }})()",
        row(addr)
    ));
    assert_eq!(ok, Value::Bool(true));
}

async fn api_backend(f: &Fulcrum, addr: SocketAddr) -> Value {
    f.backend("web", addr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_headless_chromium() {
    if !require(
        "dashboard_in_a_headless_chromium",
        have_program(CHROMIUM),
        "chromium (Debian package chromium)",
    ) {
        return;
    }
    let t0 = Instant::now();
    let b: Vec<TcpBackend> = vec![
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
        TcpBackend::start(Behaviour::Echo).await,
    ];
    let addrs: Vec<SocketAddr> = b.iter().map(|x| x.addr).collect();
    let (admin, vip) = (free_addr(), free_addr());
    let dir = temp_dir("dashboard");
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let health = "[pool.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nrise = 1\nfall = 1\n";
    let config = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\n{}{}",
        token_file.display(),
        service_toml("front", vip, "tcp", "web", ""),
        pool_toml("web", "maglev", health, &weighted(&addrs)),
    );
    let f = Fulcrum::start("dashboard", admin, &config, &[]).await;

    // The page and its files, with the strict policy.
    let (st, head, html) = tokio::task::block_in_place(|| http(admin, "GET", "/", None));
    assert_eq!(st, 200, "{head}");
    let csp = header(&head, "content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "CSP: {csp:?}"
    );
    assert!(!csp.contains("unsafe"), "CSP: {csp:?}");
    assert!(html.contains("/dashboard.js"), "{html}");
    let mut page_bytes = html.len();
    for (path, kind) in [
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let (st, head, body) = tokio::task::block_in_place(|| http(admin, "GET", path, None));
        assert_eq!(st, 200, "{path}: {head}");
        assert!(
            header(&head, "content-type").is_some_and(|v| v.starts_with(kind)),
            "{path}: {head}"
        );
        page_bytes += body.len();
    }

    // An action without the token, straight to the API: 401, nothing changes.
    let drain_path = format!("/api/v1/pools/web/backends/{}/drain", addrs[0]);
    let (st, _, body) = tokio::task::block_in_place(|| http(admin, "POST", &drain_path, None));
    assert_eq!(st, 401, "{body}");
    assert_eq!(api_backend(&f, addrs[0]).await["state"], "up");

    let (chrome, port) = tokio::task::block_in_place(|| Chromium::start(&dir));
    let chrome_pid = chrome.child.id();
    let mut cdp = tokio::task::block_in_place(|| Cdp::connect(port));
    cdp.call("Runtime.enable", &json!({}));
    cdp.call("Log.enable", &json!({}));
    cdp.call("Page.enable", &json!({}));
    let load_start = Instant::now();
    cdp.call("Page.navigate", &json!({"url": format!("http://{admin}/")}));

    // It shows the three backends, up, each with a third of the maglev table.
    let all_up = format!(
        "document.querySelectorAll('tr[data-backend]').length === 3 && [{}].every(r => r && r.dataset.state === 'up' && r.querySelector('td.share').textContent.endsWith('%'))",
        addrs.iter().map(|a| row(*a)).collect::<Vec<_>>().join(", ")
    );
    cdp.wait_true(&all_up, Duration::from_secs(10));
    let load_time = load_start.elapsed();
    let shares: f64 = addrs
        .iter()
        .map(|a| {
            let t = cdp.eval(&format!(
                "{}.querySelector('td.share').textContent",
                row(*a)
            ));
            let pct: f64 = t.as_str().unwrap().trim_end_matches('%').parse().unwrap();
            assert!((pct - 100.0 / 3.0).abs() < 5.0, "{a}: share {t}");
            pct
        })
        .sum();
    assert!((shares - 100.0).abs() < 0.5, "shares sum to {shares}");
    // Traffic shows as rates: 12 connections through the service, a few per second.
    for i in 0..12u8 {
        common::echo_once(vip, &[i; 64]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rates = format!(
        "[{}].map(r => parseFloat(r.querySelector('td.req').textContent) || 0).reduce((a, b) => a + b, 0) > 0 && parseFloat(document.querySelector('tr[data-service=\"front\"] td:nth-child(7)').textContent) > 0",
        addrs.iter().map(|a| row(*a)).collect::<Vec<_>>().join(", ")
    );
    cdp.wait_true(&rates, Duration::from_secs(3));
    // The stylesheet applied (the policy lets the page's own files in).
    let font = cdp.eval("getComputedStyle(document.querySelector('th')).fontWeight");
    assert_eq!(font, json!("600"), "dashboard.css not applied");

    // A drain click without a token: the page says 401, the backend stays up.
    click(&mut cdp, addrs[0], "drain");
    cdp.wait_true(
        "document.getElementById('message').textContent.includes('401')",
        Duration::from_secs(5),
    );
    assert_eq!(api_backend(&f, addrs[0]).await["state"], "up");
    let expected_401 = cdp.errors();
    // chromium logs the failed load; the page itself logs nothing.
    assert!(
        expected_401.len() == 1
            && expected_401[0].contains("401")
            && expected_401[0].contains("/drain"),
        "{expected_401:?}"
    );

    // The token, typed into the page's form.
    cdp.eval(&format!(
        "(() => {{ document.getElementById('token').value = '{TOKEN}'; document.getElementById('token-save').click(); return true; }})()"
    ));
    assert_eq!(
        cdp.eval("sessionStorage.getItem('fulcrum-admin-token')"),
        json!(TOKEN)
    );
    assert_eq!(cdp.eval("document.cookie"), json!(""));

    // Drain: the API says draining, and so does the page.
    click(&mut cdp, addrs[0], "drain");
    f.wait_state("web", addrs[0], "draining", Duration::from_secs(5))
        .await;
    cdp.wait_true(
        &format!("{}.dataset.state === 'draining'", row(addrs[0])),
        Duration::from_secs(3),
    );
    // The drained backend left the table: the pool's last change moved its slots.
    cdp.wait_true(
        "document.querySelector('div.pool .meta').textContent.includes('moved 3')",
        Duration::from_secs(3),
    );
    // Undrain, then a new weight.
    click(&mut cdp, addrs[0], "undrain");
    f.wait_state("web", addrs[0], "up", Duration::from_secs(5))
        .await;
    cdp.eval(&format!(
        "(() => {{ {}.querySelector('input').value = '7'; return true; }})()",
        row(addrs[1])
    ));
    click(&mut cdp, addrs[1], "weight");
    let deadline = Instant::now() + Duration::from_secs(5);
    while api_backend(&f, addrs[1]).await["weight"] != 7 {
        assert!(Instant::now() < deadline, "weight 7 not applied in 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cdp.wait_true(
        &format!(
            "{}.querySelector('td.weight').textContent === '7'",
            row(addrs[1])
        ),
        Duration::from_secs(3),
    );

    // A killed backend turns red within 2 s.
    let mut b = b;
    b[2].kill();
    let killed = Instant::now();
    let red = format!(
        "{r}.classList.contains('state-down') && getComputedStyle({r}.querySelector('td.state')).backgroundColor === 'rgb(221, 0, 0)'",
        r = row(addrs[2])
    );
    cdp.wait_true(&red, Duration::from_secs(2));
    let red_after = killed.elapsed();
    assert!(
        red_after <= Duration::from_secs(2),
        "red after {red_after:?}"
    );
    assert_eq!(api_backend(&f, addrs[2]).await["state"], "down");

    // No console errors but the expected 401 of the tokenless click.
    tokio::task::block_in_place(|| {
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            if let Some(v) = cdp.read() {
                if let Some(m) = v["method"].as_str() {
                    cdp.events.push((m.to_owned(), v["params"].clone()));
                }
            }
        }
    });
    let errors = cdp.errors();
    assert_eq!(errors, expected_401, "console errors");

    // With `protect_reads`, the page (no data) still loads, asks for the token, and shows
    // the backends once it has it. This instance also has an http service: its backend's
    // `requests` are HTTP requests.
    let admin2 = free_addr();
    let (web, api_vip) = (http_backend().await, free_addr());
    let config2 = format!(
        "{}{}{}",
        config
            .replace(&admin.to_string(), &admin2.to_string())
            .replace("token_file =", "protect_reads = true\ntoken_file =")
            .replace(&vip.to_string(), &free_addr().to_string()),
        service_toml("api", api_vip, "http", "api", ""),
        pool_toml("api", "rr", "", &[(web.0, 1)]),
    );
    let f2 = Fulcrum::start("dashboard-protected", admin2, &config2, &[]).await;
    for _ in 0..5 {
        let (st, body) = common::http(api_vip, "GET", "/").await.unwrap();
        assert_eq!(st, 200, "{body}");
    }
    let (st, _, body) =
        tokio::task::block_in_place(|| http(admin2, "GET", "/api/v1/dashboard", Some(TOKEN)));
    assert_eq!(st, 200, "{body}");
    let d: Value = serde_json::from_str(&body).unwrap();
    let api_pool = d["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "api")
        .unwrap();
    assert_eq!(api_pool["backends"][0]["requests"], 5, "{d}");
    assert_eq!(api_pool["backends"][0]["table_share"], Value::Null, "{d}");
    assert_eq!(api_pool["moved_ratio"], Value::Null, "{d}");
    assert_eq!(d["xdp"], json!([]), "{d}");
    web.1.abort();
    let (st, _, _) = tokio::task::block_in_place(|| http(admin2, "GET", "/", None));
    assert_eq!(st, 200);
    let (st, _, _) = tokio::task::block_in_place(|| http(admin2, "GET", "/api/v1/dashboard", None));
    assert_eq!(st, 401);
    cdp.events.clear();
    cdp.call(
        "Page.navigate",
        &json!({"url": format!("http://{admin2}/")}),
    );
    cdp.wait_true(
        "document.getElementById('status').textContent.includes('enter the admin token') && document.querySelectorAll('tr[data-backend]').length === 0",
        Duration::from_secs(5),
    );
    cdp.eval(&format!(
        "(() => {{ document.getElementById('token').value = '{TOKEN}'; document.getElementById('token-save').click(); return true; }})()"
    ));
    cdp.wait_true(
        "document.querySelectorAll('tr[data-backend]').length === 4",
        Duration::from_secs(5),
    );
    // Its only errors: the 401s of the reads before the token.
    let errors2 = cdp.errors();
    assert!(
        !errors2.is_empty()
            && errors2
                .iter()
                .all(|e| e.contains("401") && e.contains("/api/v1/dashboard")),
        "{errors2:?}"
    );
    f2.assert_no_panic();
    // The instance goes away: the page says so and greys out what it showed.
    drop(f2);
    cdp.wait_true(
        "document.body.classList.contains('stale') && document.getElementById('status').textContent.includes('cannot be reached')",
        Duration::from_secs(4),
    );

    drop(cdp);
    let mut chrome = chrome;
    tokio::task::block_in_place(|| chrome.stop());
    // Its helpers go with it (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = loop {
        let left = chrome.processes();
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        left.is_empty(),
        "chromium {chrome_pid}'s processes left: {left:?}"
    );
    drop(chrome);
    f.assert_no_panic();
    eprintln!(
        "dashboard: page {page_bytes} bytes (html+js+css), 3 backends shown {load_time:?} after navigate, red {red_after:?} after the kill, test {:?}",
        t0.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
