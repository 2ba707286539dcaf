//! Logs and metrics through the real binary (issue 19, items 6 and 7): access logs reopened
//! on SIGUSR1 and SIGHUP (logrotate's rename-then-signal), tcp/udp connection logs,
//! configurable access-log fields, syslog (RFC 5424 over UDP and a unix datagram socket),
//! `process_*`, `fulcrum_build_info`, refusals by reason, the request heads in
//! `fulcrum_service_bytes_total{direction="in"}`, and the per-backend response-time and
//! health-check histograms. Clients: curl and raw sockets; only 127.0.0.0/8.
#![allow(
    clippy::too_many_lines,
    clippy::unwrap_used,
    clippy::missing_panics_doc
)]
// Metric values are whole numbers read as f64; short names for the parts of a scenario.
#![allow(
    clippy::float_cmp,
    clippy::many_single_char_names,
    clippy::cast_precision_loss
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    admin_toml, backends_toml, echo_once, eventually, free_addr, metric_value, pool_toml,
    service_toml, temp_dir, weighted, Behaviour, Fulcrum, TcpBackend, UdpBackend,
};
use fulcrum_xdp::testing::{have_program, require};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// An HTTP/1.1 backend: answers every request `200 ok` (keep-alive); counts requests.
struct HttpBackend {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn http_backend() -> HttpBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        h.fetch_add(1, Ordering::Relaxed);
                        let out = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                        if s.write_all(out).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    HttpBackend { addr, hits, task }
}

/// `curl` is needed (the real client); under `FULCRUM_REQUIRE_ALL=1` its absence fails.
fn have_curl(test: &str) -> bool {
    require(test, have_program("curl"), "curl (apt-get install curl)")
}

/// `n` GETs of `http://addr/path` with one curl (keep-alive); the statuses.
fn curl_gets(addr: SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let url = format!("http://{addr}{path}");
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\\n",
        ])
        .args(std::iter::repeat_n(url.as_str(), n))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// logrotate's way: rename the file, signal, and new lines go to a new file of the
/// configured name; no line is lost, for SIGUSR1 (which no longer kills the process) and
/// SIGHUP (which also reloads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_reopens_on_usr1_and_hup() {
    if !have_curl("access_log_reopens_on_usr1_and_hup") {
        return;
    }
    let b = http_backend().await;
    let dir = temp_dir("logs-reopen");
    let log = dir.join("access.log");
    let (admin, vip) = (free_addr(), free_addr());
    let cfg = format!(
        "{}{}[service.access_log]\nformat = \"json\"\npath = \"{}\"\n\n{}",
        admin_toml(admin),
        service_toml("web", vip, "http", "web", ""),
        log.display(),
        pool_toml("web", "rr", "", &weighted(&[b.addr])),
    );
    let f = Fulcrum::start("logs-reopen", admin, &cfg, &["--workers", "2"]).await;
    let mut sent = 0usize;
    let mut old_files = Vec::new();
    for (round, sig) in ["USR1", "HUP"].into_iter().enumerate() {
        assert_eq!(curl_gets(vip, "/before", 10), vec![200; 10]);
        sent += 10;
        let total = |old: &[std::path::PathBuf]| {
            old.iter().map(|p| lines(p).len()).sum::<usize>() + lines(&log).len()
        };
        assert!(
            eventually(Duration::from_secs(5), || {
                let n = total(&old_files);
                async move { n == sent }
            })
            .await,
            "{} lines before the rotation, {sent} requests",
            total(&old_files)
        );
        let rotated = dir.join(format!("access.log.{}", round + 1));
        std::fs::rename(&log, &rotated).unwrap();
        old_files.push(rotated.clone());
        f.signal(sig);
        // The signal is handled asynchronously: requests go on until the new file appears.
        let mut tries = 0;
        while !log.exists() {
            assert!(tries < 250, "no new {} after SIG{sig}", log.display());
            assert_eq!(curl_gets(vip, "/during", 1), vec![200]);
            sent += 1;
            tries += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after_path = format!("/after-{sig}");
        assert_eq!(curl_gets(vip, &after_path, 10), vec![200; 10]);
        sent += 10;
        assert!(
            eventually(Duration::from_secs(5), || {
                let n = total(&old_files);
                async move { n == sent }
            })
            .await,
            "after SIG{sig}: {} lines in the files for {sent} requests (none may be lost)",
            total(&old_files)
        );
        let new = lines(&log);
        let tag = format!("\"{after_path}\"");
        let after = new.iter().filter(|l| l.contains(&tag)).count();
        assert_eq!(
            after, 10,
            "after SIG{sig} the new lines go to the new file: {new:?}"
        );
        assert!(
            !lines(&rotated).iter().any(|l| l.contains(&tag)),
            "nothing after the reopen goes to the renamed file (SIG{sig}): {:?}",
            lines(&rotated)
        );
        for l in &new {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            assert_eq!(v["status"], 200, "{l}");
        }
    }
    let mut f = f;
    assert!(f.try_wait().is_none(), "SIGUSR1 must not kill the process");
    assert!(
        f.stderr().contains("reopening log files"),
        "{}",
        f.stderr_tail(20)
    );
    f.assert_no_panic();
}

/// Waits for `n` lines in `p`.
async fn wait_lines(p: &Path, n: usize) -> Vec<String> {
    let ok = eventually(Duration::from_secs(10), || {
        let got = lines(p).len();
        async move { got >= n }
    })
    .await;
    assert!(ok, "{} holds {:?}, wanted {n} lines", p.display(), lines(p));
    lines(p)
}

/// One line per TCP connection and UDP flow: client, backend, bytes each way, duration and
/// how it ended (`closed`, `no_backend`, `connect_failed`, `idle_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_logs_for_tcp_and_udp() {
    let echo = TcpBackend::start(Behaviour::Echo).await;
    let udp_b = UdpBackend::start("u1").await;
    // A port nothing listens on: connects are refused.
    let dead = free_addr();
    let dir = temp_dir("logs-conn");
    let (tcp_log, udp_log, bad_log) = (
        dir.join("tcp.log"),
        dir.join("udp.log"),
        dir.join("bad.log"),
    );
    let (admin, tcp_vip, udp_vip, drained_vip, dead_vip) = (
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
    );
    let cfg = format!(
        "{}{}[service.access_log]\nformat = \"json\"\npath = \"{}\"\n\n\
         {}[service.access_log]\npath = \"{}\"\n\n\
         {}[service.access_log]\npath = \"{}\"\n\n\
         {}[service.access_log]\npath = \"{}\"\n\n{}{}{}{}",
        admin_toml(admin),
        service_toml("t", tcp_vip, "tcp", "echo", ""),
        tcp_log.display(),
        service_toml("u", udp_vip, "udp", "udp", "idle_timeout = \"300ms\""),
        udp_log.display(),
        service_toml("drained", drained_vip, "tcp", "none", ""),
        bad_log.display(),
        service_toml("dead", dead_vip, "tcp", "dead", ""),
        bad_log.display(),
        pool_toml("echo", "rr", "", &weighted(&[echo.addr])),
        pool_toml("udp", "rr", "", &weighted(&[udp_b.addr])),
        pool_toml("none", "rr", "", &[(echo.addr, 0)]),
        pool_toml("dead", "rr", "", &weighted(&[dead])),
    );
    let mut f = Fulcrum::start("logs-conn", admin, &cfg, &[]).await;

    // tcp: 11 bytes each way, both sides close.
    let mut s = TcpStream::connect(tcp_vip).await.unwrap();
    let client = s.local_addr().unwrap();
    s.write_all(b"hello world").await.unwrap();
    let mut got = [0u8; 11];
    s.read_exact(&mut got).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    drop(s);
    let l = wait_lines(&tcp_log, 1).await;
    let v: serde_json::Value = serde_json::from_str(&l[0]).expect("JSON");
    assert_eq!(v["service"], "t");
    assert_eq!(v["protocol"], "tcp");
    assert_eq!(v["client"], client.to_string());
    assert_eq!(v["backend"], echo.addr.to_string());
    assert_eq!(v["bytes_in"], 11);
    assert_eq!(v["bytes_out"], 11);
    assert_eq!(v["termination"], "closed");
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    echo_once(tcp_vip, b"again").await.unwrap();
    wait_lines(&tcp_log, 2).await;

    // udp (tcplog format): one flow, 2 datagrams in, 2 replies out, ended by idle_timeout.
    let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let uclient = u.local_addr().unwrap();
    u.connect(udp_vip).await.unwrap();
    let mut buf = [0u8; 64];
    for msg in [&b"ping"[..], b"pong!"] {
        u.send(msg).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), u.recv(&mut buf))
            .await
            .expect("udp reply")
            .unwrap();
        assert_eq!(&buf[..n], [&b"u1|"[..], msg].concat().as_slice());
    }
    let l = wait_lines(&udp_log, 1).await;
    // `CLIENT [START] SERVICE POOL/BACKEND DURATION_MS BYTES_IN BYTES_OUT TERMINATION`
    let w: Vec<&str> = l[0].split(' ').collect();
    assert_eq!(w.len(), 8, "{}", l[0]);
    assert_eq!(w[0], uclient.to_string());
    assert!(
        w[1].starts_with('[') && w[1].ends_with(']') && w[1].len() == 26,
        "{}",
        l[0]
    );
    assert_eq!(w[2], "u");
    assert_eq!(w[3], format!("udp/{}", udp_b.addr));
    let ms: f64 = w[4].parse().unwrap();
    assert!(
        ms >= 300.0,
        "the flow lived at least its idle timeout: {}",
        l[0]
    );
    assert_eq!(w[5], "9", "4 + 5 bytes from the client: {}", l[0]);
    assert_eq!(w[6], "15", "9 bytes + 2 x `u1|` to the client: {}", l[0]);
    assert_eq!(w[7], "idle_timeout");

    // No backend: the only one has weight 0; then a backend that refuses connects.
    // The reset may come before `connect` returns.
    if let Ok(mut s) = TcpStream::connect(drained_vip).await {
        let _ = s.write_all(b"x").await;
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    }
    let l = wait_lines(&bad_log, 1).await;
    assert!(
        l[0].contains(" drained none/- ") && l[0].ends_with(" 0 0 no_backend"),
        "{}",
        l[0]
    );
    // The reset may come before `connect` returns.
    if let Ok(mut s) = TcpStream::connect(dead_vip).await {
        let _ = s.write_all(b"x").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    }
    let l = wait_lines(&bad_log, 2).await;
    assert!(
        l[1].contains(" dead dead/- ") && l[1].ends_with(" connect_failed"),
        "{}",
        l[1]
    );
    f.assert_no_panic();
    assert!(f.try_wait().is_none());
}

/// Parses an RFC 5424 message: (PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID,
/// MSGID, STRUCTURED-DATA, MSG).
fn rfc5424(m: &str) -> (u32, Vec<String>, String) {
    let rest = m.strip_prefix('<').expect("<PRI>");
    let end = rest.find('>').expect("PRI ends with >");
    let pri: u32 = rest[..end].parse().expect("PRI is a number");
    assert!(pri <= 191, "PRI {pri}");
    let mut parts = rest[end + 1..].splitn(7, ' ');
    let header: Vec<String> = (0..6)
        .map(|_| parts.next().expect("header field").to_owned())
        .collect();
    let msg = parts.next().expect("SD and MSG");
    let (sd, msg) = msg.split_once(' ').expect("STRUCTURED-DATA then MSG");
    assert_eq!(sd, "-", "no structured data");
    assert_eq!(header[0], "1", "VERSION");
    // TIMESTAMP: 2026-12-05T04:51:02.123Z (RFC 3339, UTC).
    let t = &header[1];
    assert_eq!(t.len(), 24, "{t}");
    assert!(
        t.ends_with('Z') && &t[10..11] == "T" && &t[19..20] == ".",
        "{t}"
    );
    for field in &header[2..6] {
        assert!(
            !field.is_empty() && field.len() <= 255 && field.bytes().all(|b| b.is_ascii_graphic()),
            "header field {field:?}"
        );
    }
    (pri, header, msg.to_owned())
}

/// Access lines (with chosen fields) over UDP, connection lines over a unix datagram
/// socket, both RFC 5424, both read by sockets the test listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_udp_and_unix_socket() {
    if !have_curl("syslog_over_udp_and_unix_socket") {
        return;
    }
    let b = http_backend().await;
    let echo = TcpBackend::start(Behaviour::Echo).await;
    let dir = temp_dir("logs-syslog");
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let unix_path = dir.join("log.sock");
    let unix = tokio::net::UnixDatagram::bind(&unix_path).unwrap();
    let (admin, web, tcp) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "{}{}[service.access_log]\nformat = \"json\"\nsyslog = \"udp:{}\"\nfields = [\"status\", \"client_ip\", \"bytes_in\", \"path\"]\n\n\
         {}[service.access_log]\nsyslog = \"unix:{}\"\nfacility = \"local3\"\n\n{}{}",
        admin_toml(admin),
        service_toml("web", web, "http", "web", ""),
        udp.local_addr().unwrap(),
        service_toml("t", tcp, "tcp", "echo", ""),
        unix_path.display(),
        pool_toml("web", "rr", "", &weighted(&[b.addr])),
        pool_toml("echo", "rr", "", &weighted(&[echo.addr])),
    );
    let f = Fulcrum::start("logs-syslog", admin, &cfg, &[]).await;
    assert_eq!(curl_gets(web, "/a?b=c", 2), vec![200, 200]);
    let mut buf = vec![0u8; 8192];
    for _ in 0..2 {
        let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf))
            .await
            .expect("a syslog datagram")
            .unwrap();
        let m = std::str::from_utf8(&buf[..n]).expect("UTF-8");
        let (pri, h, msg) = rfc5424(m);
        assert_eq!(pri, 16 * 8 + 6, "local0.info by default: {m}");
        assert_eq!(h[3], "fulcrum", "APP-NAME: {m}");
        assert_eq!(h[4], f.pid.to_string(), "PROCID: {m}");
        assert_eq!(h[5], "access", "MSGID: {m}");
        assert!(!msg.ends_with('\n'), "{m:?}");
        let v: serde_json::Value = serde_json::from_str(&msg).expect("MSG is the JSON line");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec!["status", "client_ip", "bytes_in", "path"];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want, "{msg}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["path"], "/a?b=c");
        assert!(
            v["bytes_in"].as_u64().unwrap() > 40,
            "the head counts: {msg}"
        );
    }
    echo_once(tcp, b"syslog!").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), unix.recv(&mut buf))
        .await
        .expect("a syslog datagram on the unix socket")
        .unwrap();
    let m = std::str::from_utf8(&buf[..n]).expect("UTF-8");
    let (pri, h, msg) = rfc5424(m);
    assert_eq!(pri, 19 * 8 + 6, "local3.info: {m}");
    assert_eq!(h[5], "conn", "MSGID: {m}");
    assert!(msg.contains(&format!(" t echo/{} ", echo.addr)), "{m}");
    assert!(msg.ends_with(" 7 7 closed"), "{m}");
    f.assert_no_panic();
}

fn check(dir: &Path, cfg: &str) -> (i32, String) {
    let p = dir.join("check.toml");
    std::fs::write(&p, cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&p)
        .output()
        .expect("run fulcrum check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `fulcrum check` refuses bad fields, naming the valid ones, and formats or targets that
/// do not fit the service.
#[test]
fn check_refuses_bad_log_settings() {
    let dir = temp_dir("logs-check");
    let pool = format!(
        "[[pool]]\nname = \"p\"\n{}",
        backends_toml(&[(free_addr(), 1)])
    );
    let svc = |proto: &str, al: &str| {
        format!(
            "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:18080\"\nprotocol = \"{proto}\"\npool = \"p\"\n\n[service.access_log]\n{al}\n\n{pool}"
        )
    };
    let (code, out) = check(
        &dir,
        &svc(
            "http",
            "format = \"json\"\nfields = [\"status\", \"sttaus\"]",
        ),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("unknown access log field \"sttaus\""), "{out}");
    assert!(out.contains("did you mean \"status\"?"), "{out}");
    assert!(
        out.contains("valid: time, service, client, client_ip, method"),
        "{out}"
    );
    let (code, out) = check(
        &dir,
        &svc("http", "format = \"json\"\nfields = [\"termination\"]"),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("access log field \"termination\" does not apply to `s`, a http service"),
        "{out}"
    );
    assert!(out.contains("valid: time, service"), "{out}");
    let (code, out) = check(
        &dir,
        &svc("tcp", "format = \"json\"\nfields = [\"status\"]"),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("valid: time, service, client, client_ip, protocol, backend, bytes_in, bytes_out, duration_ms, termination"),
        "{out}"
    );
    let (code, out) = check(&dir, &svc("tcp", "format = \"combined\""));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("valid here: \"json\" or \"tcplog\""), "{out}");
    let (code, out) = check(&dir, &svc("http", "fields = [\"status\"]"));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("fields choose the keys of format = \"json\""),
        "{out}"
    );
    let (code, out) = check(&dir, &svc("http", "syslog = \"tcp:127.0.0.1:514\""));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not unix:PATH or udp:IP:PORT"), "{out}");
    let (code, out) = check(
        &dir,
        &svc("http", "syslog = \"udp:127.0.0.1:514\"\npath = \"-\""),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("both path and syslog"), "{out}");
    let missing = dir.join("no-such.sock");
    let (code, out) = check(
        &dir,
        &svc("udp", &format!("syslog = \"unix:{}\"", missing.display())),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot connect"), "{out}");
    // And what is valid passes.
    let (code, out) = check(
        &dir,
        &svc("udp", "format = \"json\"\nfields = [\"client\", \"termination\"]\nsyslog = \"udp:127.0.0.1:514\"\nfacility = \"daemon\""),
    );
    assert_eq!(code, 0, "{out}");
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(text, name, labels).unwrap_or_else(|| {
        panic!(
            "no {name} {labels:?} in:\n{}",
            text.lines()
                .filter(|l| l.contains(name.split('{').next().unwrap_or(name)))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// The metrics of item 7, each checked against what the test did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_build_refusals_bytes_and_histograms() {
    if !have_curl("process_build_refusals_bytes_and_histograms") {
        return;
    }
    let b = http_backend().await;
    let echo = TcpBackend::start(Behaviour::Echo).await;
    let (admin, web, limited, empty, tcp) = (
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
    );
    let cfg = format!(
        "{}{}{}[service.rate_limit]\nrequests_per_second = 1\nburst = 2\n\n{}{}{}{}{}",
        admin_toml(admin),
        service_toml("web", web, "http", "web", ""),
        service_toml("limited", limited, "http", "web", ""),
        service_toml("empty", empty, "http", "none", ""),
        service_toml("t", tcp, "tcp", "echo", "max_connections = 1"),
        pool_toml(
            "web",
            "rr",
            "[pool.health]\ncheck = \"http\"\ninterval = \"100ms\"\npath = \"/healthz\"\n",
            &weighted(&[b.addr])
        ),
        pool_toml("none", "rr", "", &[(b.addr, 0)]),
        pool_toml("echo", "rr", "", &weighted(&[echo.addr])),
    );
    let f = Fulcrum::start("logs-metrics", admin, &cfg, &[]).await;
    let before = f.metrics().await;
    let start = metric(&before, "process_start_time_seconds", &[]);

    // 9 GETs: the heads are bytes in (they were 0 before).
    let hits0 = b.hits.load(Ordering::Relaxed);
    assert_eq!(curl_gets(web, "/nine", 9), vec![200; 9]);
    let m = f.metrics().await;
    let bytes_in = metric(
        &m,
        "fulcrum_service_bytes_total",
        &[("service", "web"), ("direction", "in")],
    );
    // curl's head: `GET /nine HTTP/1.1`, Host, User-Agent, Accept: at least 60 bytes each.
    assert!(bytes_in >= 9.0 * 60.0, "bytes in after 9 GETs: {bytes_in}");
    assert!(bytes_in < 9.0 * 400.0, "bytes in after 9 GETs: {bytes_in}");
    let answered = (b.hits.load(Ordering::Relaxed) - hits0) as f64;
    assert!(answered >= 9.0);
    let backend = b.addr.to_string();
    let lbl = [
        ("service", "web"),
        ("pool", "web"),
        ("backend", backend.as_str()),
    ];
    assert_eq!(
        metric(&m, "fulcrum_http_backend_response_seconds_count", &lbl),
        9.0
    );
    assert_eq!(
        metric(
            &m,
            "fulcrum_http_backend_response_seconds_bucket",
            &[lbl[0], lbl[1], lbl[2], ("le", "+Inf")]
        ),
        9.0
    );
    let sum = metric(&m, "fulcrum_http_backend_response_seconds_sum", &lbl);
    assert!(sum > 0.0 && sum < 9.0, "{sum}");

    // Health checks every 100 ms have been timed.
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric_value(
                &f.metrics().await,
                "fulcrum_health_check_duration_seconds_count",
                &[("pool", "web"), ("backend", backend.as_str())],
            )
            .is_some_and(|n| n >= 3.0)
        })
        .await,
        "health check histogram"
    );

    // Refusals by reason.
    let statuses = curl_gets(limited, "/x", 8);
    let limited_n = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited_n >= 4 && statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(curl_gets(empty, "/x", 3), vec![503; 3]);
    let mut bad = TcpStream::connect(web).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), bad.read_to_end(&mut resp)).await;
    assert!(
        resp.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    let mut garbage = TcpStream::connect(web).await.unwrap();
    garbage.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), garbage.read_to_end(&mut resp)).await;
    assert!(
        resp.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    // `held` takes the one place: its echo proves the proxy accepted it and holds it
    // (with one listener per worker, a later connection may otherwise be accepted first).
    let mut held = TcpStream::connect(tcp).await.unwrap();
    held.write_all(b"h").await.unwrap();
    let mut echoed = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(3), held.read_exact(&mut echoed))
        .await
        .expect("the held connection's echo")
        .unwrap();
    // The reset may come before `connect` returns.
    if let Ok(mut refused) = TcpStream::connect(tcp).await {
        let _ = refused.write_all(b"x").await;
        let _ = tokio::time::timeout(Duration::from_secs(3), refused.read(&mut [0u8; 8])).await;
    }
    let m = f.metrics().await;
    let refused = |svc: &str, reason: &str| {
        metric(
            &m,
            "fulcrum_service_refused_total",
            &[("service", svc), ("reason", reason)],
        )
    };
    assert_eq!(refused("limited", "rate_limited"), limited_n as f64);
    assert_eq!(refused("empty", "no_backend"), 3.0);
    assert_eq!(refused("web", "bad_request"), 2.0);
    assert_eq!(refused("t", "max_connections"), 1.0);
    assert_eq!(refused("web", "rate_limited"), 0.0);
    drop(held);

    // process_*: this process, read from /proc.
    let pid = f.pid;
    let rss = metric(&m, "process_resident_memory_bytes", &[]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let vm_rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        (rss / 1024.0 - vm_rss_kb).abs() < vm_rss_kb * 0.2,
        "rss {rss} vs VmRSS {vm_rss_kb} kB"
    );
    let fds = metric(&m, "process_open_fds", &[]);
    let real_fds = f.fd_count() as f64;
    assert!(
        (fds - real_fds).abs() <= 8.0,
        "open fds {fds} vs {real_fds}"
    );
    assert!(metric(&m, "process_max_fds", &[]) >= fds);
    let cpu = metric(&m, "process_cpu_seconds_total", &[]);
    assert!(cpu > 0.0 && cpu < 600.0, "{cpu}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start <= now && start > now - 120.0,
        "start {start}, now {now}"
    );
    assert!(metric(&m, "process_threads", &[]) >= 1.0);

    // fulcrum_build_info: the version and the commit this test was built from.
    assert_eq!(
        metric(
            &m,
            "fulcrum_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(c) = commit {
        if std::env::var_os("FULCRUM_COMMIT").is_none() {
            assert_eq!(
                metric(&m, "fulcrum_build_info", &[("commit", c.as_str())]),
                1.0
            );
        }
    }
    f.assert_no_panic();
}
