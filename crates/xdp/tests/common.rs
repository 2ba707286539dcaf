//! Shared fixtures: a network namespace with a veth, addresses and permanent neighbours, so
//! `bpf_fib_lookup` in `BPF_PROG_TEST_RUN` answers deterministically.
#![allow(dead_code, clippy::pedantic)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use fulcrum_core::model::{Backend, HashKey, PrimeTableSize, Proto};
use fulcrum_xdp::{Mode, XdpService};

pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB4: [u8; 4] = [198, 18, 0, 2];
pub const LB6: &str = "2001:2::2";
pub const BACKENDS4: [&str; 3] = ["198.18.0.11", "198.18.0.12", "198.18.0.13"];
pub const BACKENDS6: [&str; 3] = ["2001:2::11", "2001:2::12", "2001:2::13"];

/// The MAC a backend's neighbour entry has: 02:00:00:00:00:<last byte of the address>.
pub fn mac_of(ip: IpAddr) -> [u8; 6] {
    let last = match ip {
        IpAddr::V4(v) => v.octets()[3],
        IpAddr::V6(v) => v.octets()[15],
    };
    [0x02, 0, 0, 0, 0, last]
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace deleted on drop (also when a test panics).
pub struct Netns(pub String);

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        Self(name)
    }
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", self.0.as_str()];
        v.extend_from_slice(args);
        sh(&v);
    }
    pub fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", self.0.as_str()];
        v.extend_from_slice(args);
        sh(&v);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The fixture namespace: veth v0 (the "LB", 198.18.0.2/24, 2001:2::2/64, MAC LB_MAC) with
/// permanent neighbours for the backends, forwarding on (bpf_fib_lookup needs it).
pub fn fixture_netns(prefix: &str) -> Netns {
    let ns = Netns::new(prefix);
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v0", "address", "02:00:00:00:00:02"]);
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["link", "set", "v1", "up"]);
    ns.ip(&["addr", "add", "198.18.0.2/24", "dev", "v0"]);
    ns.ip(&["-6", "addr", "add", "2001:2::2/64", "dev", "v0", "nodad"]);
    ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
    ns.exec(&["sysctl", "-qw", "net.ipv4.conf.v0.forwarding=1"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    for b in BACKENDS4.iter().chain(BACKENDS6.iter()) {
        let ip: IpAddr = b.parse().expect("ip");
        let m = mac_of(ip);
        let mac = format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
        ns.ip(&[
            "neigh",
            "add",
            b,
            "lladdr",
            &mac,
            "dev",
            "v0",
            "nud",
            "permanent",
        ]);
    }
    ns
}

pub fn backends(addrs: &[&str], port: u16) -> Vec<Backend> {
    addrs
        .iter()
        .map(|a| Backend::new(SocketAddr::new(a.parse().expect("ip"), port), 1))
        .collect()
}

pub fn service(
    name: &str,
    vip: &str,
    proto: Proto,
    mode: Mode,
    key: HashKey,
    b: Vec<Backend>,
) -> XdpService {
    XdpService {
        name: name.into(),
        vip: vip.parse().expect("vip"),
        proto,
        mode,
        hash_key: key,
        pool: format!("pool-{name}"),
        backends: b,
        table_size: PrimeTableSize::new(65537).expect("prime"),
    }
}

pub fn is_root_or_skip(test: &str) -> bool {
    fulcrum_xdp::testing::require_root(test)
}
