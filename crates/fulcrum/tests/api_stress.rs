//! Bad input under load: 10,000 rapid admin API calls (reads, valid mutations and every kind
//! of invalid one) from 8 concurrent keep-alive clients, while TCP clients do echo round
//! trips through the proxy the whole time. Every call must get its expected status with a
//! JSON error or success (and a status that `docs/openapi.json` lists for that route), no
//! client round trip may fail, fulcrum must not panic, and it must still serve afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::too_many_lines,
    clippy::many_single_char_names,
    clippy::unnecessary_wraps
)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    admin_toml, connect, echo_once, free_addr, pool_toml, round_trip, service_toml, weighted,
    Behaviour, Fulcrum, TcpBackend,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "stress-t0ken";
const API_CLIENTS: usize = 8;
const CALLS: usize = 10_000;
const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// One request of the mix and the status it must get.
struct Call {
    method: &'static str,
    path: String,
    /// `None`: no Authorization header; `Some(v)`: the header's whole value.
    auth: Option<String>,
    body: Vec<u8>,
    want: u16,
    /// Send `Connection: close` (the server may not read the body).
    close: bool,
}

fn bearer() -> Option<String> {
    Some(format!("Bearer {TOKEN}"))
}

fn call(method: &'static str, path: impl Into<String>, body: &[u8], want: u16) -> Call {
    Call {
        method,
        path: path.into(),
        auth: bearer(),
        body: body.to_vec(),
        want,
        close: false,
    }
}

fn read(path: &str) -> Call {
    Call {
        auth: None,
        ..call("GET", path, b"", 200)
    }
}

/// Calls whose answer does not depend on what other clients do.
fn stateless(vip: SocketAddr, b1: SocketAddr) -> Vec<Call> {
    let web_b = |a: &str| format!("/api/v1/pools/web/backends/{a}");
    let b1p = web_b(&b1.to_string());
    let svc = |listen: &str, pool: &str| {
        format!(r#"{{"listen": "{listen}", "protocol": "tcp", "pool": "{pool}"}}"#).into_bytes()
    };
    let nested = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let big = {
        let mut b = br#"{"weight": 1, "pad": ""#.to_vec();
        b.extend(std::iter::repeat_n(b'x', 70 * 1024));
        b.extend(br#""}"#);
        b
    };
    let mut v = vec![
        // reads
        read("/healthz"),
        read("/readyz"),
        read("/metrics"),
        read("/api/v1/services"),
        read("/api/v1/pools"),
        read("/api/v1/pools/web"),
        read("/api/v1/config"),
        read("/api/v1/openapi.json"),
        read("/api/v1/pools/web/explain?client=198.18.1.3:40000"),
        read("/api/v1/pools/web/explain?client=%5B2001%3Adb8%3A%3A1%5D%3A5&proto=udp"),
        Call {
            want: 400,
            ..read("/api/v1/pools/web/explain?client=198.18.1.3")
        },
        Call {
            want: 400,
            ..read("/api/v1/pools/web/explain?client=1.2.3.4:5&proto=sctp")
        },
        Call {
            want: 400,
            ..read("/api/v1/pools/web/explain?colour=red")
        },
        Call {
            want: 400,
            ..read("/api/v1/pools/web/explain")
        },
        Call {
            want: 404,
            ..read("/api/v1/pools/nope/explain?client=198.18.1.3:4")
        },
        Call {
            want: 404,
            ..read("/api/v1/pools/nope")
        },
        Call {
            want: 400,
            ..read("/api/v1/pools/%FF%FE")
        },
        Call {
            want: 404,
            ..read("/api/v1/nothing/here")
        },
        // bad JSON and bad bodies
        call("PUT", &b1p, br#"{"weight": }"#, 400),
        call("PUT", &b1p, br#"{"weight": 1"#, 400),
        call("PUT", &b1p, b"\xff\xfe\x00", 400),
        call("PUT", &b1p, nested.as_bytes(), 400),
        call("PUT", &b1p, b"null", 400),
        call("PUT", &b1p, b"[1, 2]", 400),
        call("PUT", &b1p, br#""weight""#, 400),
        call("PUT", &b1p, br#"{"weight": "1"}"#, 400),
        call("PUT", &b1p, br#"{"weight": -1}"#, 400),
        call("PUT", &b1p, br#"{"weight": 1.5}"#, 400),
        call("PUT", &b1p, br#"{"weight": 65536}"#, 400),
        call("PUT", &b1p, br#"{"weight": 18446744073709551616}"#, 400),
        call("PUT", &b1p, br#"{"weight": 1, "colour": "red"}"#, 400),
        Call {
            close: true,
            ..call("PUT", &b1p, &big, 413)
        },
        Call {
            close: true,
            ..call("PUT", "/api/v1/services/huge", &big, 413)
        },
        // bad addresses
        call("PUT", web_b("localhost:80"), b"", 400),
        call("PUT", web_b("1.2.3.4"), b"", 400),
        call("PUT", web_b("1.2.3.4:99999"), b"", 400),
        call("PUT", web_b("1.2.3.4:0"), b"", 400),
        call("PUT", web_b("%5B::1%5D:x"), b"", 400),
        call("DELETE", web_b("::1:80"), b"", 400),
        call("POST", format!("{}/drain", web_b("300.1.1.1:80")), b"", 400),
        // unknown pools, backends, services
        call("PUT", "/api/v1/pools/nope/backends/127.0.0.1:1", b"{}", 404),
        call(
            "DELETE",
            "/api/v1/pools/nope/backends/127.0.0.1:1",
            b"",
            404,
        ),
        call(
            "POST",
            "/api/v1/pools/nope/backends/127.0.0.1:1/drain",
            b"",
            404,
        ),
        call("DELETE", web_b("127.0.0.1:1"), b"", 404),
        call("POST", format!("{}/drain", web_b("127.0.0.1:1")), b"", 404),
        call("DELETE", "/api/v1/services/nope", b"", 404),
        call("DELETE", "/api/v1/pools/nope", b"", 404),
        // invalid services and pools
        call(
            "PUT",
            "/api/v1/services/bad",
            &svc("127.0.0.1:1", "nope"),
            400,
        ),
        call("PUT", "/api/v1/services/bad", &svc("nowhere", "web"), 400),
        call(
            "PUT",
            "/api/v1/services/bad",
            br#"{"listen": "127.0.0.1:1", "protocol": "sctp", "pool": "web"}"#,
            400,
        ),
        call(
            "PUT",
            "/api/v1/services/bad",
            br#"{"listen": "127.0.0.1:1", "protocol": "tcp", "pool": "web", "colour": 1}"#,
            400,
        ),
        call(
            "PUT",
            "/api/v1/services/bad",
            br#"{"name": "other", "listen": "127.0.0.1:1", "protocol": "tcp", "pool": "web"}"#,
            400,
        ),
        call(
            "PUT",
            "/api/v1/services/bad",
            br#"{"listen": null, "protocol": "tcp", "pool": "web"}"#,
            400,
        ),
        call("PUT", "/api/v1/services/bad", b"{}", 400),
        call(
            "PUT",
            "/api/v1/services/clash",
            &svc(&vip.to_string(), "web"),
            409,
        ),
        call(
            "PUT",
            "/api/v1/pools/web",
            br#"{"scheduler": "fastest"}"#,
            400,
        ),
        call("PUT", "/api/v1/pools/web", br#"{"colour": 1}"#, 400),
        call(
            "PUT",
            "/api/v1/pools/web",
            br#"{"persistence": "soon"}"#,
            400,
        ),
        call(
            "PUT",
            "/api/v1/pools/web",
            br#"{"persistence": "99999999999999999999h"}"#,
            400,
        ),
        call(
            "PUT",
            "/api/v1/pools/web",
            br#"{"maglev_table_size": 4}"#,
            400,
        ),
        call("DELETE", "/api/v1/pools/web", b"", 409),
        // wrong tokens: nothing changes
        Call {
            auth: None,
            ..call("PUT", &b1p, br#"{"weight": 9}"#, 401)
        },
        Call {
            auth: Some("Bearer wrong".into()),
            ..call("DELETE", &b1p, b"", 401)
        },
        Call {
            auth: Some(format!("bearer {TOKEN}")),
            ..call("POST", format!("{b1p}/drain"), b"", 401)
        },
        Call {
            auth: Some(format!("Basic {TOKEN}")),
            ..call("DELETE", "/api/v1/services/web", b"", 401)
        },
        Call {
            auth: Some(format!("Bearer {TOKEN}x")),
            ..call("POST", "/api/v1/reload", b"", 401)
        },
        Call {
            auth: Some("Bearer ".into()),
            ..call("DELETE", "/api/v1/pools/web", b"", 401)
        },
        // methods that do not exist
        call("PATCH", &b1p, b"{}", 405),
        call("POST", "/api/v1/pools", b"{}", 405),
        call("DELETE", "/api/v1/config", b"", 405),
    ];
    // Idempotent valid writes on the traffic's pool: b1 keeps weight 1.
    v.push(call("PUT", &b1p, br#"{"weight": 1}"#, 200));
    v.push(call("PUT", &b1p, b"", 200));
    v
}

/// The calls of client `i`'s own cycle, each with its expected status: a backend of the
/// traffic's pool added, re-weighted, drained, un-drained and removed; a service added and
/// removed; a pool created, filled and removed.
fn cycle(i: usize, spare: SocketAddr, svc_listen: SocketAddr) -> Vec<Call> {
    let b = format!("/api/v1/pools/web/backends/{spare}");
    let pool = format!("/api/v1/pools/p{i}");
    let svc = format!("/api/v1/services/s{i}");
    vec![
        call("PUT", &b, b"", 200),
        call("PUT", &b, br#"{"weight": 3}"#, 200),
        call("POST", format!("{b}/drain"), b"", 200),
        call("PUT", &b, b"{}", 200),
        call("DELETE", &b, b"", 200),
        call("DELETE", &b, b"", 404),
        call("POST", format!("{b}/drain"), b"", 404),
        call(
            "PUT",
            &svc,
            format!(r#"{{"listen": "{svc_listen}", "protocol": "tcp", "pool": "web"}}"#).as_bytes(),
            200,
        ),
        call("DELETE", &svc, b"", 200),
        call("DELETE", &svc, b"", 404),
        call(
            "PUT",
            &pool,
            br#"{"scheduler": "maglev", "hash_key": "src_ip"}"#,
            200,
        ),
        call(
            "PUT",
            format!("{pool}/backends/{spare}"),
            br#"{"weight": 2}"#,
            200,
        ),
        call("PUT", &pool, br#"{"hash_key": null}"#, 200),
        call("DELETE", &pool, b"", 200),
        call("DELETE", &pool, b"", 404),
    ]
}

/// A keep-alive HTTP/1.1 connection to the admin API.
struct Conn {
    addr: SocketAddr,
    s: Option<TcpStream>,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Conn {
    async fn send(&mut self, c: &Call) -> std::io::Result<Answer> {
        if self.s.is_none() {
            self.s = Some(TcpStream::connect(self.addr).await?);
            self.buf.clear();
        }
        let s = self.s.as_mut().unwrap();
        let auth = c
            .auth
            .as_ref()
            .map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let conn = if c.close { "close" } else { "keep-alive" };
        let mut req = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: {conn}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            c.method,
            c.path,
            self.addr,
            c.body.len()
        )
        .into_bytes();
        req.extend_from_slice(&c.body);
        s.write_all(&req).await?;
        let mut chunk = vec![0u8; 16 * 1024];
        // Head.
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before an answer",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let len: usize = header("content-length:")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no content-length: {head}")))?;
        let close = header("connection:").is_some_and(|v| v == "close") || c.close;
        let content_type = header("content-type:").unwrap_or_default();
        self.buf.drain(..end + 4);
        while self.buf.len() < len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed inside the body",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = self.buf.drain(..len).collect();
        if close {
            self.s = None;
        }
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }
}

/// The statuses `docs/openapi.json` lists for the route that `path` matches, or `None`
/// for a path or method it does not describe (answered 404/405 by the fallbacks).
fn documented(doc: &Value, method: &str, path: &str) -> Option<BTreeSet<u16>> {
    let path = path.split('?').next().unwrap();
    let segs: Vec<&str> = path.split('/').collect();
    for (tpl, item) in doc["paths"].as_object().unwrap() {
        let t: Vec<&str> = tpl.split('/').collect();
        let matches = t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty()));
        if !matches {
            continue;
        }
        let op = item.get(method.to_ascii_lowercase())?;
        return Some(
            op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect(),
        );
    }
    None
}

/// Checks one answer; returns a description of what is wrong.
fn check(doc: &Value, c: &Call, a: &Answer) -> Result<(), String> {
    let body = String::from_utf8_lossy(&a.body);
    let ctx = || format!("{} {} -> {}: {body:.300}", c.method, c.path, a.status);
    if a.status != c.want {
        return Err(format!("expected {}: {}", c.want, ctx()));
    }
    match documented(doc, c.method, &c.path) {
        Some(codes) if !codes.contains(&a.status) => {
            return Err(format!("status not in docs/openapi.json: {}", ctx()))
        }
        None if a.status != 404 && a.status != 405 => {
            return Err(format!("undocumented route answered: {}", ctx()))
        }
        _ => {}
    }
    if a.status >= 400 {
        let v: Value = serde_json::from_slice(&a.body)
            .map_err(|e| format!("error not JSON ({e}): {}", ctx()))?;
        let ok = v.as_object().is_some_and(|o| o.len() == 1)
            && v["error"].as_str().is_some_and(|m| !m.trim().is_empty());
        if !ok {
            return Err(format!("not {{\"error\": \"...\"}}: {}", ctx()));
        }
    } else if a.content_type.starts_with("application/json") {
        serde_json::from_slice::<Value>(&a.body)
            .map_err(|e| format!("success not JSON ({e}): {}", ctx()))?;
    }
    Ok(())
}

/// splitmix64, seeded per client: a reproducible mix.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
}

#[derive(Default)]
struct Traffic {
    trips: AtomicUsize,
    failures: AtomicUsize,
    first_failure: Mutex<Option<String>>,
}

impl Traffic {
    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        self.first_failure.lock().unwrap().get_or_insert(what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rapid_api_calls_while_traffic_flows() {
    let started = Instant::now();
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let mut spares = Vec::new();
    for _ in 0..API_CLIENTS {
        spares.push(TcpBackend::start(Behaviour::Echo).await);
    }
    let (admin, vip) = (free_addr(), free_addr());
    let dir = common::temp_dir("api_stress_tok");
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let cfg = format!(
        "{}token_file = \"{}\"\n\n{}{}",
        admin_toml(admin),
        token_file.display(),
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml("web", "rr", "", &weighted(&[b1.addr, b2.addr]))
    );
    let f = Fulcrum::start("api_stress", admin, &cfg, &["--workers", "2"]).await;
    let doc: Arc<Value> = Arc::new(serde_json::from_str(OPENAPI).unwrap());

    // Traffic: 2 clients on long connections, 2 opening a connection per round trip.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Arc::new(Traffic::default());
    let mut clients = Vec::new();
    for k in 0..4 {
        let (stop, t) = (Arc::clone(&stop), Arc::clone(&traffic));
        clients.push(tokio::spawn(async move {
            let msg = format!("client {k} says hello through the proxy").into_bytes();
            // Paced (a round trip, then 1 ms) so traffic flows the whole time without taking
            // the CPU from the API on a small machine.
            let pause = || tokio::time::sleep(Duration::from_millis(1));
            while !stop.load(Ordering::Relaxed) {
                if k < 2 {
                    let mut s = match connect(vip).await {
                        Ok(s) => s,
                        Err(e) => {
                            t.fail(format!("long client {k}: connect: {e}"));
                            continue;
                        }
                    };
                    for _ in 0..200 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match round_trip(&mut s, &msg).await {
                            Ok(()) => t.trips.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                t.fail(format!("long client {k}: {e}"));
                                break;
                            }
                        };
                        pause().await;
                    }
                } else {
                    match echo_once(vip, &msg).await {
                        Ok(()) => t.trips.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            t.fail(format!("short client {k}: {e}"));
                            0
                        }
                    };
                    pause().await;
                }
            }
        }));
    }

    // The API clients.
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let counts = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, usize>::new()));
    let mut api = Vec::new();
    for (i, spare) in spares.iter().enumerate() {
        let (doc, problems, counts) =
            (Arc::clone(&doc), Arc::clone(&problems), Arc::clone(&counts));
        let fixed = stateless(vip, b1.addr);
        let own = cycle(i, spare.addr, free_addr());
        api.push(tokio::spawn(async move {
            let mut rng = Rng(0x5EED + i as u64);
            let mut conn = Conn {
                addr: admin,
                s: None,
                buf: Vec::new(),
            };
            let mut step = 0usize;
            let mut local = std::collections::BTreeMap::<u16, usize>::new();
            let n = CALLS / API_CLIENTS;
            // Finish on a whole number of cycles so every spare ends removed.
            for k in 0.. {
                if k >= n && step % own.len() == 0 {
                    break;
                }
                let c = if k % 3 == 0 || k >= n {
                    step += 1;
                    &own[(step - 1) % own.len()]
                } else {
                    &fixed[rng.next() as usize % fixed.len()]
                };
                let r = tokio::time::timeout(Duration::from_secs(10), conn.send(c)).await;
                let problem = match r {
                    Err(_) => Some(format!("{} {}: no answer in 10 s", c.method, c.path)),
                    Ok(Err(e)) => {
                        conn.s = None;
                        Some(format!("{} {}: {e}", c.method, c.path))
                    }
                    Ok(Ok(a)) => {
                        *local.entry(a.status).or_default() += 1;
                        check(&doc, c, &a).err()
                    }
                };
                if let Some(p) = problem {
                    problems.lock().unwrap().push(p);
                }
            }
            let mut all = counts.lock().unwrap();
            for (s, n) in local {
                *all.entry(s).or_default() += n;
            }
        }));
    }
    for h in api {
        h.await.unwrap();
    }
    let api_time = started.elapsed();
    // Let traffic run on the settled pool a moment, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .expect("a traffic client did not stop")
            .unwrap();
    }

    let counts = counts.lock().unwrap().clone();
    let total: usize = counts.values().sum();
    let problems = problems.lock().unwrap().clone();
    eprintln!(
        "api_stress: {total} API calls in {api_time:?}, statuses {counts:?}; {} echo round trips; {} problems",
        traffic.trips.load(Ordering::SeqCst),
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} of {total} API calls went wrong; first ones:\n{}\nstderr:\n{}",
        problems.len(),
        problems
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        f.stderr_tail(30)
    );
    assert!(total >= CALLS, "only {total} calls were made");
    for s in [200, 400, 401, 404, 405, 409, 413] {
        assert!(counts.contains_key(&s), "no call answered {s}: {counts:?}");
    }
    assert_eq!(
        traffic.failures.load(Ordering::SeqCst),
        0,
        "client round trips failed; first: {:?}",
        traffic.first_failure.lock().unwrap()
    );
    assert!(
        traffic.trips.load(Ordering::SeqCst) >= 200,
        "too little traffic flowed: {}",
        traffic.trips.load(Ordering::SeqCst)
    );
    // Added backends really got traffic.
    let spare_served: usize = spares.iter().map(TcpBackend::served).sum();
    assert!(
        spare_served > 0,
        "no flow reached a backend added by the API"
    );

    // Still serving, and back to where it started: no panic, the same pool and services.
    f.assert_no_panic();
    let pool = f.pool("web").await;
    let mut got: Vec<String> = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want = vec![b1.addr.to_string(), b2.addr.to_string()];
    want.sort();
    assert_eq!(got, want, "pool after the storm: {pool}");
    for b in pool["backends"].as_array().unwrap() {
        assert_eq!(b["weight"], 1, "{pool}");
        assert_eq!(b["state"], "up", "{pool}");
    }
    let (st, body) = f.get("/api/v1/services").await;
    assert_eq!(st, 200);
    let services: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        services["services"].as_array().unwrap().len(),
        1,
        "{services}"
    );
    let (st, body) = f.get("/api/v1/pools").await;
    assert_eq!(st, 200);
    let pools: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pools["pools"].as_array().unwrap().len(), 1, "{pools}");
    assert_eq!(f.get("/healthz").await.0, 200);
    assert_eq!(f.get("/readyz").await.0, 200);
    for _ in 0..20 {
        echo_once(vip, b"after the storm").await.unwrap();
    }
    let mut s = connect(vip).await.unwrap();
    round_trip(&mut s, b"still here").await.unwrap();
    f.assert_no_panic();
    // Speed is the benchmarks' business, not a timed test's: only reported here.
    eprintln!("api_stress: the whole check took {:?}", started.elapsed());
}

/// Adding backends one at a time to a large maglev pool must not stall the data path, even
/// with `--workers 1` (one thread for everything): table builds and config parsing run off
/// the control thread. A probe does TCP echo round trips through another service while the
/// backends are added; its median latency must stay far below the time one add takes (before
/// the builds moved off the thread, every probe waited for the add in progress, so its median
/// was about the add's own time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_adds_to_a_large_pool_do_not_stall_the_data_path() {
    const BACKENDS: usize = 2000;
    const ADDS: usize = 8;
    let echo = TcpBackend::start(Behaviour::Echo).await;
    let (admin, probe, big) = (free_addr(), free_addr(), free_addr());
    let fake: Vec<(SocketAddr, u32)> = (0..BACKENDS)
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8);
            (SocketAddr::from((ip, 80)), 1)
        })
        .collect();
    let cfg = format!(
        "{}{}{}{}{}",
        admin_toml(admin),
        service_toml("probe", probe, "tcp", "echo", ""),
        service_toml("big", big, "tcp", "big", ""),
        pool_toml("echo", "rr", "", &weighted(&[echo.addr])),
        pool_toml("big", "maglev", "", &fake)
    );
    let f = Fulcrum::start("adds-stall", admin, &cfg, &["--workers", "1"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::SeqCst) && lat.len() < 100_000 {
                let t = Instant::now();
                tokio::time::timeout(Duration::from_secs(10), echo_once(probe, b"probe"))
                    .await
                    .expect("probe round trip within 10 s")
                    .expect("probe round trip");
                lat.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lat
        })
    };
    let mut calls = Vec::new();
    for i in 0..ADDS {
        let addr = format!("198.19.0.{}:80", i + 1);
        let t = Instant::now();
        let (st, body) = common::http_body(
            admin,
            "PUT",
            &format!("/api/v1/pools/big/backends/{addr}"),
            r#"{"weight": 1}"#,
        )
        .await
        .unwrap();
        assert_eq!(st, 200, "add {addr}: {body}");
        calls.push(t.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    let mut lat = prober.await.unwrap();
    lat.sort();
    calls.sort();
    let (probe_median, call_median) = (lat[lat.len() / 2], calls[calls.len() / 2]);
    eprintln!(
        "{} probes: median {probe_median:?}, max {:?}; {ADDS} adds: median {call_median:?}",
        lat.len(),
        lat[lat.len() - 1]
    );
    assert!(
        probe_median * 4 < call_median,
        "the data path stalls while backends are added: probe median {probe_median:?}, one add takes {call_median:?}"
    );
    let pool = f.pool("big").await;
    assert_eq!(
        pool["backends"].as_array().unwrap().len(),
        BACKENDS + ADDS,
        "every add applied"
    );
    f.assert_no_panic();
}
