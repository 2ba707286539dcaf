//! The network-namespace topology of the XDP end-to-end tests (198.18.0.0/15 and
//! 2001:2::/48 only; every namespace is deleted on drop, also on failure):
//!
//! ```text
//!   client (198.18.0.1) --+
//!   lb     (198.18.0.2) --+-- br0 (namespace "sw") -- b1, b2, b3 (198.18.0.11..13)
//! ```
//! The client routes the VIPs (198.19.0.0/24, 2001:2:0:1::/64) via the lb, which forwards.
//! How the backends are set up depends on the forwarding mode under test ([`Backends`]).
#![allow(dead_code, clippy::pedantic)]

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fulcrum_xdp::testing::in_netns;

/// How the backends (and the client's offloads) are set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backends {
    /// dsr/tunnel: the VIPs on loopback with ARP ignore/announce; the client's MTU leaves
    /// room for tunnel headers and its checksum offloads are off.
    VipsOnLoopback,
    /// nat: unmodified backends with only a default route via the lb (plus the VIP of the
    /// dsr UDP service of the fragment check); checksum offloads off everywhere, since nat
    /// updates checksums incrementally and they must be complete on the wire.
    DefaultRouteViaLb,
}

/// Whether the prerequisites of the XDP end-to-end tests are here: root (XDP, network
/// namespaces), `ip` (iproute2) and `ethtool`. When one is missing the test skips with a
/// message, or fails when `FULCRUM_REQUIRE_ALL=1` (CI), so that CI cannot pass by skipping.
pub fn prerequisites(test: &str) -> bool {
    fulcrum_xdp::testing::require_netns_lab(test)
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces deleted on drop.
pub struct Topology {
    pub prefix: String,
    names: Vec<String>,
    pub children: Vec<Child>,
    _pass: Option<fulcrum_xdp::PassProgram>,
}

impl Topology {
    pub fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }
    pub fn ip(&self, n: &str, args: &[&str]) {
        let ns = self.ns(n);
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend_from_slice(args);
        sh(&v);
    }
    pub fn exec(&self, n: &str, args: &[&str]) {
        let ns = self.ns(n);
        let mut v = vec!["ip", "netns", "exec", ns.as_str()];
        v.extend_from_slice(args);
        sh(&v);
    }
    pub fn spawn(&mut self, n: &str, args: &[&str], log: &str) {
        let ns = self.ns(n);
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn");
        self.children.push(child);
    }

    pub fn new(tag: &str, backends: Backends) -> Self {
        Self::with_prefix(format!("fx{tag}{}", std::process::id() % 100_000), backends)
    }

    /// As [`Self::new`], with namespaces named `PREFIX-sw`, `PREFIX-c`, ….
    pub fn with_prefix(prefix: String, backends: Backends) -> Self {
        let mut t = Self {
            prefix,
            names: Vec::new(),
            children: Vec::new(),
            _pass: None,
        };
        for n in ["sw", "c", "lb", "b1", "b2", "b3"] {
            let name = t.ns(n);
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            sh(&["ip", "netns", "add", &name]);
            t.names.push(name);
            t.ip(n, &["link", "set", "lo", "up"]);
        }
        t.ip("sw", &["link", "add", "br0", "type", "bridge"]);
        t.ip("sw", &["link", "set", "br0", "up"]);
        let hosts = [
            ("c", "1"),
            ("lb", "2"),
            ("b1", "11"),
            ("b2", "12"),
            ("b3", "13"),
        ];
        for (n, last) in hosts {
            let port = format!("p-{n}");
            let ns = t.ns(n);
            t.ip(
                "sw",
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            );
            t.ip("sw", &["link", "set", &port, "master", "br0"]);
            t.ip("sw", &["link", "set", &port, "up"]);
            t.ip(
                n,
                &[
                    "link",
                    "set",
                    "eth0",
                    "address",
                    &format!("02:00:00:00:01:{last:0>2}"),
                ],
            );
            t.ip(
                n,
                &["addr", "add", &format!("198.18.0.{last}/24"), "dev", "eth0"],
            );
            t.ip(
                n,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("2001:2::{last}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            t.ip(n, &["link", "set", "eth0", "up"]);
        }
        // checksums filled in and no TSO: on the client only (dsr/tunnel), or everywhere (nat)
        let no_offload: &[&str] = match backends {
            Backends::VipsOnLoopback => &["c"],
            Backends::DefaultRouteViaLb => &["c", "lb", "b1", "b2", "b3"],
        };
        // (a failure here would leave partial checksums on the wire: fail, never ignore)
        for n in no_offload {
            t.exec(
                n,
                &[
                    "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
                ],
            );
        }
        // the client: VIPs via the lb (MTU: tunnel headroom)
        t.ip("c", &["route", "add", "198.19.0.0/24", "via", "198.18.0.2"]);
        t.ip(
            "c",
            &["-6", "route", "add", "2001:2:0:1::/64", "via", "2001:2::2"],
        );
        if backends == Backends::VipsOnLoopback {
            t.ip("c", &["link", "set", "eth0", "mtu", "1400"]);
        }
        // the lb: bpf_fib_lookup needs forwarding on
        t.exec("lb", &["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
        t.exec("lb", &["sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1"]);
        t.exec("lb", &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        // backends: VIPs on loopback (no ARP for them), or only a default route via the lb
        for b in ["b1", "b2", "b3"] {
            match backends {
                Backends::VipsOnLoopback => {
                    t.ip(b, &["addr", "add", "198.19.0.10/32", "dev", "lo"]);
                    t.ip(b, &["-6", "addr", "add", "2001:2:0:1::10/128", "dev", "lo"]);
                }
                Backends::DefaultRouteViaLb => {
                    t.ip(b, &["route", "add", "default", "via", "198.18.0.2"]);
                    t.ip(b, &["-6", "route", "add", "default", "via", "2001:2::2"]);
                    t.ip(b, &["addr", "add", "198.19.0.20/32", "dev", "lo"]);
                }
            }
            for k in ["all", "eth0"] {
                t.exec(
                    b,
                    &["sysctl", "-qw", &format!("net.ipv4.conf.{k}.arp_ignore=1")],
                );
                t.exec(
                    b,
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv4.conf.{k}.arp_announce=2"),
                    ],
                );
            }
        }
        // XDP_TX out of the lb's veth needs an XDP program on its peer (docs/xdp.md)
        let pass = in_netns(&t.ns("sw"), || {
            fulcrum_xdp::PassProgram::attach("p-lb").expect("pass program")
        })
        .expect("sw netns");
        t._pass = Some(pass);
        t
    }
}

impl Topology {
    /// SIGTERM to every child, then waits (5 s at most each, then SIGKILL).
    pub fn stop_children(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// Whether `eth0` in namespace `n` has an XDP program attached.
    pub fn has_xdp(&self, n: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns(n), "-d", "link", "show", "dev", "eth0"])
            .output()
            .expect("ip link");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("prog/xdp") || text.contains(" xdp ")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop_children();
        self._pass = None;
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Reads one line.
pub fn line(s: &mut TcpStream) -> Result<String, String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            Ok(_) => return Err("closed".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}
