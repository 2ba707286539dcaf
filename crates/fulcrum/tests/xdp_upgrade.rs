//! A binary upgrade of an XDP instance (docs/operations.md, "XDP"), in network namespaces
//! this test creates (`xho…`, 198.18.0.0/15 and 2001:2::/48 only; deleted at the end, also on
//! failure), with the topology of `xdp_e2e.rs` in dsr mode. The new process takes over the
//! running one's conntrack maps and XDP link; its configuration adds a backend, so its
//! Maglev tables send about a third of the flows elsewhere: established connections keep
//! their backends only through the handed-over conntrack (a moved one would reach a backend
//! that has no such connection and be reset). Under continuous traffic, established and
//! new, every failure is counted and must be 0. Needs root, `ip` and `ethtool`.
#![allow(clippy::pedantic, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulcrum_xdp::testing::in_netns;
use netns::{line, Backends, Topology};

mod netns;

/// A TCP server in a backend namespace: its name, then echo.
fn server(t: &Topology, b: &str, port: u16) {
    let name = b.to_owned();
    let l = in_netns(&t.ns(b), move || {
        TcpListener::bind(("::", port)).expect("bind")
    })
    .expect("netns");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let name = name.clone();
            std::thread::spawn(move || {
                let _ = s.write_all(format!("{name}\n").as_bytes());
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn open(t: &Topology, vip: SocketAddr) -> Result<(String, TcpStream), String> {
    in_netns(&t.ns("c"), move || {
        let mut s =
            TcpStream::connect_timeout(&vip, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let name = line(&mut s)?;
        Ok((name, s))
    })
    .map_err(|e| e.to_string())?
}

/// dsr, IPv4 and IPv6, Maglev on the five-tuple; `with_b3`: the third backend too.
fn config(with_b3: bool) -> String {
    let mut c = String::from(
        "[admin]\nlisten = \"127.0.0.1:9090\"\n\n[xdp]\ninterface = \"eth0\"\nmode = \"native\"\n",
    );
    for (name, listen) in [("web", "198.19.0.10:80"), ("web6", "[2001:2:0:1::10]:80")] {
        c += &format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nprotocol = \"tcp\"\npool = \"{name}\"\nforward = \"dsr\"\n"
        );
    }
    for (pool, addrs) in [
        (
            "web",
            ["198.18.0.11:80", "198.18.0.12:80", "198.18.0.13:80"],
        ),
        (
            "web6",
            ["[2001:2::11]:80", "[2001:2::12]:80", "[2001:2::13]:80"],
        ),
    ] {
        c += &format!(
            "\n[[pool]]\nname = \"{pool}\"\nscheduler = \"maglev\"\nhash_key = \"five_tuple\"\n"
        );
        for a in &addrs[..if with_b3 { 3 } else { 2 }] {
            c += &format!("[[pool.backend]]\naddress = \"{a}\"\n");
        }
    }
    c
}

#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, e: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut v = self.errors.lock().unwrap();
        if v.len() < 10 {
            v.push(e);
        }
    }
    fn summary(&self) -> String {
        format!(
            "ok {} failed {} {:?}",
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.errors.lock().unwrap()
        )
    }
}

fn wait_exit(c: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn xdp_flows_keep_their_backends_across_a_binary_upgrade() {
    if !netns::prerequisites("xdp_flows_keep_their_backends_across_a_binary_upgrade") {
        return;
    }
    let mut t = Topology::with_prefix(
        format!("xho{}", std::process::id() % 100_000),
        Backends::VipsOnLoopback,
    );
    let dir = std::env::temp_dir().join(format!("fulcrum-{}", t.prefix));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    for b in ["b1", "b2", "b3"] {
        server(&t, b, 80);
    }
    let cfg = dir.join("lb.toml");
    let hs = dir.join("handover.sock");
    std::fs::write(&cfg, config(false)).expect("config");
    let (old_log, new_log) = (dir.join("old.log"), dir.join("new.log"));
    let run = |upgrade: bool| {
        let mut v = vec![
            env!("CARGO_BIN_EXE_fulcrum").to_owned(),
            "run".into(),
            "-c".into(),
            cfg.to_str().expect("path").into(),
            "--workers".into(),
            "1".into(),
            "--handover".into(),
            hs.to_str().expect("path").into(),
        ];
        if upgrade {
            v.push("--upgrade".into());
        }
        v
    };
    let args: Vec<String> = run(false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.spawn("lb", &args, old_log.to_str().expect("path"));
    let log = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();

    let vip4: SocketAddr = "198.19.0.10:80".parse().expect("vip");
    let vip6: SocketAddr = "[2001:2:0:1::10]:80".parse().expect("vip6");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(open(&t, vip4).is_ok() && open(&t, vip6).is_ok()) {
        assert!(
            Instant::now() < deadline,
            "the VIPs never answered; lb log:\n{}",
            log(&old_log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // established connections: 24 IPv4, 12 IPv6, on b1 and b2
    let mut conns = Vec::new();
    for (vip, n) in [(vip4, 24), (vip6, 12)] {
        for _ in 0..n {
            conns.push(open(&t, vip).unwrap_or_else(|e| panic!("{vip}: {e}")));
        }
    }
    assert!(conns.iter().all(|(n, _)| n == "b1" || n == "b2"));
    let stop = Arc::new(AtomicBool::new(false));
    let established = Arc::new(Counts::default());
    let fresh = Arc::new(Counts::default());
    let fresh_b3 = Arc::new(AtomicUsize::new(0));
    // each established connection echoes a line every 50 ms (bounded: 400 rounds)
    let echo = {
        let (stop, c) = (Arc::clone(&stop), Arc::clone(&established));
        let mut conns = conns;
        std::thread::spawn(move || {
            for round in 0..400 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                for (i, (name, s)) in conns.iter_mut().enumerate() {
                    let msg = format!("r{round} c{i}");
                    let r = s
                        .write_all(format!("{msg}\n").as_bytes())
                        .map_err(|e| e.to_string())
                        .and_then(|()| line(s));
                    match r {
                        Ok(back) if back == msg => {
                            c.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        other => c.fail(format!("connection {i} to {name}: {other:?}")),
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            conns
        })
    };
    // new connections back to back, alternating families (bounded: 5000)
    let newconns = {
        let (stop, c, b3) = (Arc::clone(&stop), Arc::clone(&fresh), Arc::clone(&fresh_b3));
        let ns = t.ns("c");
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                for i in 0..5000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let vip = if i % 2 == 0 { vip4 } else { vip6 };
                    let r = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                        .map_err(|e| e.to_string())
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(2)))
                                .map_err(|e| e.to_string())?;
                            line(&mut s)
                        });
                    match r {
                        Ok(name) => {
                            c.ok.fetch_add(1, Ordering::SeqCst);
                            if name == "b3" {
                                b3.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) => c.fail(format!("new connection to {vip}: {e}")),
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .expect("netns");
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    // the new binary's configuration adds b3: other Maglev tables
    std::fs::write(&cfg, config(true)).expect("config");
    let args: Vec<String> = run(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.spawn("lb", &args, new_log.to_str().expect("path"));
    let st = wait_exit(&mut t.children[0], Duration::from_secs(30));
    assert!(
        st.is_some_and(|s| s.success()),
        "old process: {st:?}\nold:\n{}\nnew:\n{}",
        log(&old_log),
        log(&new_log)
    );
    assert!(
        t.children[1].try_wait().expect("wait").is_none(),
        "new process exited:\n{}",
        log(&new_log)
    );
    // the old one is gone; the program and the flows live on
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let conns = echo.join().expect("echo thread");
    newconns.join().expect("new connections thread");
    let new_text = log(&new_log);
    eprintln!(
        "established: {}\nnew: {} ({} on b3)",
        established.summary(),
        fresh.summary(),
        fresh_b3.load(Ordering::SeqCst)
    );
    assert!(
        new_text.contains("took the running process's flow state over")
            && new_text.contains("program swapped into the running link"),
        "{new_text}"
    );
    assert!(
        log(&old_log).contains("XDP data plane handed over"),
        "{}",
        log(&old_log)
    );
    assert_eq!(
        established.failed.load(Ordering::SeqCst),
        0,
        "{}",
        established.summary()
    );
    assert!(
        established.ok.load(Ordering::SeqCst) >= 36 * 20,
        "{}",
        established.summary()
    );
    assert_eq!(
        fresh.failed.load(Ordering::SeqCst),
        0,
        "{}",
        fresh.summary()
    );
    // the new tables are in use: new flows reach b3
    assert!(fresh_b3.load(Ordering::SeqCst) > 0, "{}", fresh.summary());
    assert!(t.has_xdp("lb"));
    drop(conns);
    t.stop_children();
    assert!(!t.has_xdp("lb"), "XDP program still attached after exit");
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}
