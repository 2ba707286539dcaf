//! A binary upgrade of an XDP instance (docs/operations.md, "XDP"), in network namespaces
//! this test creates (`uho…`, 198.18.0.0/15 and 2001:2::/48 only; deleted at the end, also on
//! failure), with the topology of `xdp_e2e.rs`, in each forwarding mode: dsr, nat (the
//! backends unmodified, their default route via the lb, as `xdp_nat_e2e.rs`: the nat_fwd and
//! nat_rev maps go over) and tunnel, ipip and gue (the backends decapsulate with `fulcrum
//! decap`, as `xdp_e2e.rs`: the kernel needs no ipip or fou module). The new process takes
//! over the running one's conntrack maps and XDP link; its configuration adds a backend, so
//! its Maglev tables send about a third of the flows elsewhere: established connections keep
//! their backends only through the handed-over conntrack (a moved one would reach a backend
//! that has no such connection and be reset). Under continuous traffic, established and
//! new, every failure is counted and must be 0. Needs root, `ip` and `ethtool`. The
//! scenarios run one at a time (a lock): each keeps a 2-core machine busy.
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

/// A forwarding mode under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Dsr,
    Nat,
    Ipip,
    Gue,
}

impl Mode {
    /// The service's forwarding keys; `source`: nat's source address on the backends' side.
    fn forward(self, source: &str) -> String {
        match self {
            Mode::Dsr => "forward = \"dsr\"\n".into(),
            Mode::Nat => format!("forward = \"nat\"\nsource = \"{source}\"\n"),
            Mode::Ipip => "forward = \"tunnel\"\ntunnel = \"ipip\"\n".into(),
            Mode::Gue => "forward = \"tunnel\"\ntunnel = \"gue\"\n".into(),
        }
    }

    fn backends(self) -> Backends {
        if self == Mode::Nat {
            Backends::DefaultRouteViaLb
        } else {
            Backends::VipsOnLoopback
        }
    }
}

/// IPv4 and IPv6 services in `mode`, Maglev on the five-tuple; `with_b3`: the third backend
/// too.
fn config(mode: Mode, with_b3: bool) -> String {
    let mut c = String::from(
        "[admin]\nlisten = \"127.0.0.1:9090\"\n\n[xdp]\ninterface = \"eth0\"\nmode = \"native\"\n",
    );
    for (name, listen, source) in [
        ("web", "198.19.0.10:80", "198.18.0.2"),
        ("web6", "[2001:2:0:1::10]:80", "2001:2::2"),
    ] {
        c += &format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nprotocol = \"tcp\"\npool = \"{name}\"\n{}",
            mode.forward(source)
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

/// One scenario at a time: each keeps the machine busy for its timing.
static LAB: Mutex<()> = Mutex::new(());

#[test]
fn xdp_flows_keep_their_backends_across_a_binary_upgrade() {
    if !netns::prerequisites("xdp_flows_keep_their_backends_across_a_binary_upgrade") {
        return;
    }
    scenario("d", Mode::Dsr);
}

#[test]
fn xdp_nat_flows_keep_their_backends_across_a_binary_upgrade() {
    if !netns::prerequisites("xdp_nat_flows_keep_their_backends_across_a_binary_upgrade") {
        return;
    }
    scenario("n", Mode::Nat);
}

#[test]
fn xdp_tunnel_ipip_flows_keep_their_backends_across_a_binary_upgrade() {
    if !netns::prerequisites("xdp_tunnel_ipip_flows_keep_their_backends_across_a_binary_upgrade") {
        return;
    }
    scenario("i", Mode::Ipip);
}

#[test]
fn xdp_tunnel_gue_flows_keep_their_backends_across_a_binary_upgrade() {
    if !netns::prerequisites("xdp_tunnel_gue_flows_keep_their_backends_across_a_binary_upgrade") {
        return;
    }
    scenario("g", Mode::Gue);
}

/// The upgrade under load in `mode`; `tag`: the namespaces' (`uhoTAGPID-…`).
fn scenario(tag: &str, mode: Mode) {
    let _one_at_a_time = LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut t = Topology::with_prefix(
        format!("uho{tag}{}", std::process::id() % 100_000),
        mode.backends(),
    );
    let dir = std::env::temp_dir().join(format!("fulcrum-{}", t.prefix));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    for b in ["b1", "b2", "b3"] {
        server(&t, b, 80);
        if matches!(mode, Mode::Ipip | Mode::Gue) {
            let log = dir.join(format!("decap-{b}.log"));
            t.spawn(
                b,
                &[
                    env!("CARGO_BIN_EXE_fulcrum"),
                    "decap",
                    "--interface",
                    "eth0",
                ],
                log.to_str().expect("path"),
            );
        }
    }
    let cfg = dir.join("lb.toml");
    let hs = dir.join("handover.sock");
    std::fs::write(&cfg, config(mode, false)).expect("config");
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
    let old_lb = t.children.len();
    t.spawn("lb", &args, old_log.to_str().expect("path"));
    let log = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();

    let vip4: SocketAddr = "198.19.0.10:80".parse().expect("vip");
    let vip6: SocketAddr = "[2001:2:0:1::10]:80".parse().expect("vip6");
    // (60 s: on a loaded machine, loading the programs of the lb and three decaps takes a
    // while)
    let started = Instant::now();
    while !(open(&t, vip4).is_ok() && open(&t, vip6).is_ok()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{mode:?}: the VIPs never answered; lb log:\n{}",
            log(&old_log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{mode:?}: the VIPs answered after {:?}", started.elapsed());
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
    std::fs::write(&cfg, config(mode, true)).expect("config");
    let args: Vec<String> = run(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.spawn("lb", &args, new_log.to_str().expect("path"));
    let st = wait_exit(&mut t.children[old_lb], Duration::from_secs(30));
    assert!(
        st.is_some_and(|s| s.success()),
        "old process: {st:?}\nold:\n{}\nnew:\n{}",
        log(&old_log),
        log(&new_log)
    );
    assert!(
        t.children[old_lb + 1].try_wait().expect("wait").is_none(),
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
        "{mode:?}: established: {}\nnew: {} ({} on b3)",
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
