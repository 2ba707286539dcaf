//! VIP announcement through real BGP speakers (Debian's `bird2` and `exabgp`): the operator
//! snippets of docs/fleet.md (`examples/announce/`) run as written, with only addresses,
//! ports and paths changed to the test's loopback ones.
//!
//! - bird: the static protocol is enabled while a backend is up, disabled when none is, on
//!   `ctl instance drain`, and on SIGTERM before the drain; bird missing at start or
//!   restarted later is logged and repaired.
//! - exabgp: `fulcrum announce` as its process, peering with bird on loopback: the VIP's
//!   route appears in bird's table and goes away on withdraw.
//! - `fulcrum announce` alone: its lines on stdout, its exits.
//!
//! Without bird2/exabgp these skip, saying why; with `FULCRUM_REQUIRE_ALL=1` they fail.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::missing_panics_doc,
    clippy::many_single_char_names
)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    admin_toml, echo_once, eventually, free_addr, pool_toml, service_toml, temp_dir, Behaviour,
    Fulcrum, TcpBackend,
};

const BIRD_SNIPPET: &str = include_str!("../../../examples/announce/bird.conf");
const LIVENESS_SNIPPET: &str = include_str!("../../../examples/announce/bird-liveness.conf");
const EXABGP_SNIPPET: &str = include_str!("../../../examples/announce/exabgp.conf");
const FLEET_DOC: &str = include_str!("../../../docs/fleet.md");

/// Whether `tool` runs; else skips (false) or, with `FULCRUM_REQUIRE_ALL=1`, fails.
fn require(tool: &str, package: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    assert!(
        std::env::var("FULCRUM_REQUIRE_ALL").as_deref() != Ok("1"),
        "{tool} is required (FULCRUM_REQUIRE_ALL=1): apt-get install -y {package}"
    );
    eprintln!("SKIPPED: {tool} is not installed (apt-get install -y {package})");
    false
}

/// A bird daemon in the foreground on its own control socket; killed by PID on drop.
struct Bird {
    child: Child,
    socket: PathBuf,
}

impl Bird {
    fn start(dir: &Path, conf: &str) -> Self {
        let conf_path = dir.join("bird.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let socket = dir.join("bird.ctl");
        Self::start_at(&conf_path, &socket)
    }

    fn start_at(conf_path: &Path, socket: &Path) -> Self {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("bird")
            .arg("-f")
            .arg("-c")
            .arg(conf_path)
            .arg("-s")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bird");
        let b = Self {
            child,
            socket: socket.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !b.birdc("show status").contains("Daemon is up") {
            assert!(Instant::now() < deadline, "bird did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    fn birdc(&self, cmd: &str) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(cmd.split(' '))
            .stdin(Stdio::null())
            .output()
            .expect("run birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether `prefix` is in bird's table (from protocol `proto`).
    fn has_route(&self, prefix: &str, proto: &str) -> bool {
        self.birdc(&format!("show route {prefix} protocol {proto}"))
            .lines()
            .any(|l| l.contains(&format!("[{proto} ")))
    }

    async fn wait_route(&self, prefix: &str, proto: &str, present: bool, limit: Duration) -> bool {
        eventually(limit, || async { self.has_route(prefix, proto) == present }).await
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The docs' bird snippet with the test's socket-side changes: a router id, and the
/// router neighbour moved to loopback (nothing listens there; no packet leaves the host).
fn bird_conf() -> String {
    let snippet = BIRD_SNIPPET
        .replace("local 198.18.0.1 as", "local 127.0.0.1 as")
        .replace("neighbor 198.18.0.254 as", "neighbor 127.0.0.254 as");
    format!("router id 198.18.0.3;\n\n{snippet}")
}

const VIP: &str = "198.18.0.10/32";

#[test]
fn fleet_doc_holds_the_tested_snippets() {
    for (name, snippet) in [
        ("bird", BIRD_SNIPPET),
        ("bird-liveness", LIVENESS_SNIPPET),
        ("exabgp", EXABGP_SNIPPET),
    ] {
        assert!(
            FLEET_DOC.contains(snippet.trim_end()),
            "docs/fleet.md must hold examples/announce/{name}.conf verbatim"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_protocol_follows_backends_drain_and_sigterm() {
    if !require("bird", "bird2") {
        return;
    }
    let dir = temp_dir("announce-bird");
    let bird = Bird::start(&dir, &bird_conf());
    assert!(!bird.has_route(VIP, "fulcrum_web"), "disabled yes at start");

    let mut backend = TcpBackend::start(Behaviour::Echo).await;
    let (admin, listen) = (free_addr(), free_addr());
    let health = "[pool.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1\n";
    let cfg = format!(
        "{}{}{}\n[announce]\nspeaker = \"bird\"\nsocket = \"{}\"\nwithdraw_grace = \"2s\"\nannounce_delay = \"1500ms\"\n",
        admin_toml(admin),
        service_toml("web", listen, "tcp", "p", ""),
        pool_toml("p", "rr", health, &[(backend.addr, 1)]),
        bird.socket.display()
    );
    let started = Instant::now();
    let mut f = Fulcrum::start("announce-bird", admin, &cfg, &["--workers", "1"]).await;
    let limit = Duration::from_secs(5);
    let delay = Duration::from_millis(1500);

    // A backend up: announced (the protocol enabled, its route in bird's table), once
    // health has held still for announce_delay.
    assert!(
        bird.wait_route(VIP, "fulcrum_web", true, limit).await,
        "not announced; stderr:\n{}",
        f.stderr_tail(20)
    );
    assert!(
        started.elapsed() >= delay,
        "announced {:?} after start, before announce_delay",
        started.elapsed()
    );
    assert_eq!(
        f.metric("fulcrum_vip_announced", &[("service", "web")])
            .await,
        Some(1.0)
    );
    let (_, body) = f.get("/api/v1/announce").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["speaker"], "bird", "{body}");
    assert_eq!(v["services"][0]["announce"], true, "{body}");
    assert_eq!(v["services"][0]["announced"], true, "{body}");
    let status = ctl(admin, &["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("web ") && l.trim_end().ends_with("yes")),
        "ctl status shows ANNOUNCED yes:\n{status}"
    );

    // Every backend down: withdrawn.
    backend.kill();
    assert!(
        bird.wait_route(VIP, "fulcrum_web", false, limit).await,
        "still announced with no backend up"
    );
    assert!(
        eventually(limit, || async {
            f.metric("fulcrum_vip_announced", &[("service", "web")])
                .await
                == Some(0.0)
        })
        .await
    );
    // Back: announced again only after announce_delay (the health check sees it within
    // 100 ms); withdrawal above was immediate.
    let back = Instant::now();
    backend.restart().await;
    assert!(bird.wait_route(VIP, "fulcrum_web", true, limit).await);
    assert!(
        back.elapsed() >= delay,
        "announced again {:?} after the backend came back, before announce_delay",
        back.elapsed()
    );

    // Instance drain: withdrawn, /readyz 503, and the service still serves.
    let out = ctl(admin, &["instance", "drain"]);
    assert!(out.contains("drained"), "{out}");
    assert!(
        bird.wait_route(VIP, "fulcrum_web", false, limit).await,
        "drain did not withdraw"
    );
    assert_eq!(f.get("/readyz").await.0, 503);
    echo_once(listen, b"still serving while drained")
        .await
        .unwrap();
    ctl(admin, &["instance", "undrain"]);
    assert!(
        bird.wait_route(VIP, "fulcrum_web", true, limit).await,
        "undrain did not announce"
    );
    assert_eq!(f.get("/readyz").await.0, 200);

    // bird restarted (its protocols back to `disabled yes`): enabled again by the resync.
    let conf_path = dir.join("bird.conf");
    let socket = bird.socket.clone();
    drop(bird);
    let bird = Bird::start_at(&conf_path, &socket);
    assert!(
        bird.wait_route(VIP, "fulcrum_web", true, Duration::from_secs(8))
            .await,
        "not repaired after a bird restart"
    );

    // SIGTERM: withdrawn first, while the instance still serves during withdraw_grace;
    // then it drains and exits 0.
    let term = Instant::now();
    f.signal("TERM");
    assert!(
        bird.wait_route(VIP, "fulcrum_web", false, Duration::from_secs(1))
            .await,
        "SIGTERM did not withdraw at once"
    );
    assert!(f.try_wait().is_none(), "exited before withdraw_grace");
    echo_once(listen, b"served during the grace").await.unwrap();
    assert_eq!(
        undrain_status(admin).await,
        409,
        "undrain must be refused while shutting down"
    );
    let st = f.wait_exit(Duration::from_secs(10)).await.expect("exit");
    assert!(st.success(), "{st:?}");
    assert!(
        term.elapsed() >= Duration::from_secs(2),
        "exited {:?} after SIGTERM, before withdraw_grace",
        term.elapsed()
    );
    f.assert_no_panic();
    drop(bird);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[announce] liveness_interface`: the TUN device lives exactly as long as the process, so
/// a bird static route `via` it goes away when Fulcrum is killed (SIGKILL), with no Fulcrum code
/// running (and no ExecStopPost): the snippet of docs/fleet.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_route_via_the_liveness_interface_dies_with_fulcrum() {
    if !require("bird", "bird2") {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        assert!(
            std::env::var("FULCRUM_REQUIRE_ALL").as_deref() != Ok("1"),
            "root is required to create a TUN device (FULCRUM_REQUIRE_ALL=1)"
        );
        eprintln!("SKIPPED: not root (a TUN device needs CAP_NET_ADMIN)");
        return;
    }
    let ifname = format!("flv{}", std::process::id() % 100_000);
    let dir = temp_dir("announce-liveness");
    let conf = format!(
        "router id 198.18.0.3;\n\n{}",
        LIVENESS_SNIPPET.replace("\"fulcrum0\"", &format!("\"{ifname}\""))
    );
    let bird = Bird::start(&dir, &conf);
    let backend = TcpBackend::start(Behaviour::Echo).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}\n[announce]\nspeaker = \"bird\"\nsocket = \"{}\"\nannounce_delay = \"0s\"\nliveness_interface = \"{ifname}\"\n",
        admin_toml(admin),
        service_toml("web", listen, "tcp", "p", ""),
        pool_toml("p", "rr", "", &[(backend.addr, 1)]),
        bird.socket.display()
    );
    let mut f = Fulcrum::start("announce-liveness", admin, &cfg, &["--workers", "1"]).await;
    assert!(
        bird.wait_route(VIP, "fulcrum_web", true, Duration::from_secs(5))
            .await,
        "not announced via {ifname}; stderr:\n{}\nbird: {}",
        f.stderr_tail(20),
        bird.birdc("show route all")
    );
    // A second instance cannot take the device while the first holds it.
    let (admin2, listen2) = (free_addr(), free_addr());
    let cfg2 = cfg
        .replace(&admin.to_string(), &admin2.to_string())
        .replace(&listen.to_string(), &listen2.to_string());
    let cfg2_path = dir.join("second.toml");
    std::fs::write(&cfg2_path, cfg2).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["run", "-c"])
        .arg(&cfg2_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot create TUN device"), "{err}");

    // SIGKILL: nothing of Fulcrum runs, bird still has the protocol enabled, and the route
    // goes away because the kernel deleted the device.
    f.signal("KILL");
    assert!(
        bird.wait_route(VIP, "fulcrum_web", false, Duration::from_secs(2))
            .await,
        "still announced after SIGKILL"
    );
    assert!(
        bird.birdc("show protocols fulcrum_web").contains(" up "),
        "the protocol stays enabled: only the device went"
    );
    let link = Command::new("ip")
        .args(["link", "show", &ifname])
        .output()
        .unwrap();
    assert!(!link.status.success(), "{ifname} is gone with the process");
    let _ = f.wait_exit(Duration::from_secs(5)).await;
    drop(bird);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn undrain_status(admin: std::net::SocketAddr) -> u16 {
    let (st, _) = common::http(admin, "POST", "/api/v1/instance/undrain")
        .await
        .unwrap();
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_missing_at_start_then_restarted_is_retried() {
    if !require("bird", "bird2") {
        return;
    }
    let dir = temp_dir("announce-nobird");
    let socket = dir.join("bird.ctl");
    let backend = TcpBackend::start(Behaviour::Echo).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}\n[announce]\nspeaker = \"bird\"\nsocket = \"{}\"\n",
        admin_toml(admin),
        service_toml("web", listen, "tcp", "p", ""),
        pool_toml("p", "rr", "", &[(backend.addr, 1)]),
        socket.display()
    );
    let f = Fulcrum::start("announce-nobird", admin, &cfg, &["--workers", "1"]).await;
    // A clear error, and the service runs.
    assert!(
        eventually(Duration::from_secs(3), || async {
            f.stderr().contains("does not exist")
        })
        .await,
        "{}",
        f.stderr()
    );
    let err = f.stderr();
    assert!(
        err.contains(&format!(
            "bird control socket {} does not exist",
            socket.display()
        )),
        "{err}"
    );
    echo_once(listen, b"serving without bird").await.unwrap();
    assert_eq!(
        f.metric("fulcrum_vip_announced", &[("service", "web")])
            .await,
        Some(0.0)
    );

    // bird appears: retried, announced.
    let conf_path = dir.join("bird.conf");
    std::fs::write(&conf_path, bird_conf()).unwrap();
    let bird = Bird::start_at(&conf_path, &socket);
    assert!(
        bird.wait_route(VIP, "fulcrum_web", true, Duration::from_secs(5))
            .await,
        "not announced once bird came up; stderr:\n{}",
        f.stderr_tail(20)
    );
    // bird goes away later: logged, never a crash; announced again when it is back.
    drop(bird);
    assert!(
        eventually(Duration::from_secs(8), || async {
            f.stderr().contains("bird unreachable")
        })
        .await,
        "{}",
        f.stderr_tail(20)
    );
    echo_once(listen, b"still serving").await.unwrap();
    let bird = Bird::start_at(&conf_path, &socket);
    assert!(
        bird.wait_route(VIP, "fulcrum_web", true, Duration::from_secs(8))
            .await
    );
    f.assert_no_panic();
    drop(f);
    drop(bird);
    let _ = std::fs::remove_dir_all(&dir);
}

fn ctl(admin: std::net::SocketAddr, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("ctl")
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `fulcrum announce -c FILE` with piped stdin/stdout; lines arrive on a channel.
struct Announce {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Announce {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .arg("announce")
            .arg("-c")
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self { child, lines: rx }
    }

    fn next_line(&self, limit: Duration) -> String {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no line from fulcrum announce within {limit:?}: {e}"))
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Announce {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exabgp_instance_config(
    admin: std::net::SocketAddr,
    listen: std::net::SocketAddr,
    backend: std::net::SocketAddr,
) -> String {
    let health = "[pool.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1\n";
    format!(
        "{}{}{}\n[announce]\nspeaker = \"exabgp\"\nwithdraw_grace = \"2s\"\n",
        admin_toml(admin),
        service_toml("web", listen, "tcp", "p", ""),
        pool_toml("p", "rr", health, &[(backend, 1)]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_process_prints_lines_and_exits_with_its_pipes() {
    let mut backend = TcpBackend::start(Behaviour::Echo).await;
    let (admin, listen) = (free_addr(), free_addr());
    let mut f = Fulcrum::start(
        "announce-cli",
        admin,
        &exabgp_instance_config(admin, listen, backend.addr),
        &["--workers", "1"],
    )
    .await;
    let route = format!("{}/32", listen.ip());
    let limit = Duration::from_secs(5);
    let mut a = Announce::start(&f.config);
    assert_eq!(
        a.next_line(limit),
        format!("announce route {route} next-hop self")
    );
    assert!(
        eventually(limit, || async {
            f.metric("fulcrum_vip_announced", &[("service", "web")])
                .await
                == Some(1.0)
        })
        .await
    );
    backend.kill();
    assert_eq!(
        a.next_line(limit),
        format!("withdraw route {route} next-hop self")
    );
    backend.restart().await;
    assert_eq!(
        a.next_line(limit),
        format!("announce route {route} next-hop self")
    );
    // SIGTERM: withdrawn while the instance still runs (withdraw_grace).
    f.signal("TERM");
    assert_eq!(
        a.next_line(limit),
        format!("withdraw route {route} next-hop self")
    );
    assert!(
        f.try_wait().is_none(),
        "the instance exited before withdraw_grace"
    );
    assert!(f
        .wait_exit(Duration::from_secs(10))
        .await
        .is_some_and(|s| s.success()));
    // The instance gone: nothing more to say; stdin closed: exit 0.
    drop(a.child.stdin.take());
    let st = a
        .wait_exit(Duration::from_secs(3))
        .expect("announce did not exit on stdin EOF");
    assert_eq!(st.code(), Some(0));

    // Its stdout closed (exabgp gone) while it has a line to print: exit 0.
    let (admin2, listen2) = (free_addr(), free_addr());
    let f2 = Fulcrum::start(
        "announce-cli2",
        admin2,
        &exabgp_instance_config(admin2, listen2, backend.addr),
        &["--workers", "1"],
    )
    .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("announce")
        .arg("-c")
        .arg(&f2.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "announce did not exit on a closed stdout"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(0));
    drop(f2);

    // A file for bird, or without [announce]: a clear error, exit 2.
    let dir = temp_dir("announce-bad");
    for (text, want) in [
        (
            format!("{}[announce]\nspeaker = \"bird\"\n", admin_toml(admin)),
            "speaker = \"bird\"",
        ),
        (admin_toml(admin), "no [announce] table"),
    ] {
        let p = dir.join("f.toml");
        std::fs::write(&p, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["announce", "-c"])
            .arg(&p)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A network namespace with the fleet's addresses on its loopback; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(addrs: &[&str]) -> Self {
        let name = format!("fann{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Self(name);
        Self::ip(&["netns", "add", &ns.0]);
        Self::ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        for a in addrs {
            Self::ip(&["-n", &ns.0, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        ns
    }

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A command run inside the namespace (`ip netns exec` execs it: same PID).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    /// `fulcrum ctl --admin http://127.0.0.1:9090 ARGS` inside the namespace.
    fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.command(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["ctl", "--admin", "http://127.0.0.1:9090"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A child process stopped by its PID on drop: SIGTERM, then SIGKILL after 5 s.
struct Proc(Child);

impl Proc {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.0.try_wait() {
            return Some(st);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.0.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The whole chain in a namespace of its own, with the fleet addresses of the docs: the
/// instance serves VIP 198.18.0.10, exabgp (the docs' snippet as written, but for the
/// paths) runs `fulcrum announce` and peers from 198.18.0.1 with bird, the router, on
/// 198.18.0.254. The route appears in bird's table and goes away on every withdraw.
#[test]
fn exabgp_runs_fulcrum_announce_and_bird_learns_the_vip() {
    if !require("bird", "bird2") || !require("exabgp", "exabgp") {
        return;
    }
    if !fulcrum_xdp::testing::is_root() {
        assert!(
            std::env::var("FULCRUM_REQUIRE_ALL").as_deref() != Ok("1"),
            "root is required (FULCRUM_REQUIRE_ALL=1): the test makes a network namespace"
        );
        eprintln!("SKIPPED: needs root (a network namespace)");
        return;
    }
    let dir = temp_dir("announce-exabgp");
    let ns = Netns::new(&["198.18.0.10", "198.18.0.1", "198.18.0.254"]);

    // The instance: a backend that is never checked (no [pool.health]), so it is up until
    // drained through the API.
    let config = dir.join("fulcrum.toml");
    std::fs::write(
        &config,
        "[admin]\nlisten = \"127.0.0.1:9090\"\n\n\
         [[service]]\nname = \"web\"\nlisten = \"198.18.0.10:80\"\nprotocol = \"tcp\"\npool = \"web\"\n\n\
         [[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"198.18.0.20:80\"\n\n\
         [announce]\nspeaker = \"exabgp\"\nwithdraw_grace = \"2s\"\n",
    )
    .unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let mut fulcrum = Proc(
        ns.command(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["run", "--workers", "1", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("fulcrum.log"))
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.ctl(&["status"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "fulcrum not up:\n{}",
            read("fulcrum.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The router.
    let bird_conf = dir.join("bird.conf");
    std::fs::write(
        &bird_conf,
        "router id 198.18.0.254;\nprotocol device {}\nprotocol direct { ipv4; interface \"lo\"; }\n\
         protocol bgp exa {\n  local 198.18.0.254 as 65000;\n  neighbor 198.18.0.1 as 65001;\n  multihop;\n  passive on;\n  ipv4 { import all; export none; };\n}\n",
    )
    .unwrap();
    let socket = dir.join("bird.ctl");
    let router = Bird {
        child: ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&bird_conf)
            .arg("-s")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("bird.log"))
            .spawn()
            .unwrap(),
        socket,
    };

    // The docs' exabgp snippet with our binary and file.
    let conf = EXABGP_SNIPPET
        .replace("/usr/bin/fulcrum", env!("CARGO_BIN_EXE_fulcrum"))
        .replace("/etc/fulcrum/fulcrum.toml", &config.display().to_string());
    assert_ne!(conf, EXABGP_SNIPPET);
    let exa_conf = dir.join("exabgp.conf");
    std::fs::write(&exa_conf, conf).unwrap();
    let exa_log = log("exabgp.log");
    let mut exabgp = Proc(
        ns.command("exabgp")
            .arg(&exa_conf)
            .env("exabgp.daemon.drop", "false")
            .env("exabgp.api.cli", "false")
            .env("exabgp.log.destination", "stdout")
            .stdin(Stdio::null())
            .stdout(exa_log.try_clone().unwrap())
            .stderr(exa_log)
            .spawn()
            .unwrap(),
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limit = Duration::from_secs(10);
    let wait =
        |present: bool, limit: Duration| rt.block_on(router.wait_route(VIP, "exa", present, limit));
    assert!(
        wait(true, Duration::from_secs(20)),
        "bird did not learn {VIP}\nexabgp:\n{}\nbird:\n{}",
        read("exabgp.log"),
        router.birdc("show protocols all exa")
    );
    // Instance drain and undrain.
    assert!(ns.ctl(&["instance", "drain"]).status.success());
    assert!(wait(false, limit), "not withdrawn on instance drain");
    assert!(ns.ctl(&["instance", "undrain"]).status.success());
    assert!(wait(true, limit), "not announced again on undrain");
    // No backend up (drained: weight 0 ... state draining): withdrawn; back when it is.
    assert!(ns
        .ctl(&["backend", "drain", "web", "198.18.0.20:80"])
        .status
        .success());
    assert!(wait(false, limit), "not withdrawn without a backend up");
    assert!(ns
        .ctl(&["backend", "add", "web", "198.18.0.20:80", "--weight", "1"])
        .status
        .success());
    assert!(wait(true, limit), "not announced with the backend back");
    // SIGTERM: withdrawn within the grace, before the instance exits; then it exits 0.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(fulcrum.0.id().to_string())
        .status();
    assert!(
        wait(false, Duration::from_secs(2)),
        "not withdrawn on SIGTERM"
    );
    assert!(
        fulcrum.0.try_wait().unwrap().is_none(),
        "exited before withdraw_grace"
    );
    let st = fulcrum.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "{st:?}\n{}",
        read("fulcrum.log")
    );

    let st = exabgp.stop();
    assert!(st.is_some(), "exabgp did not stop on SIGTERM");
    drop(router);
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
}
