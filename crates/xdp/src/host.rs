//! What the data plane needs from the host's settings (docs/xdp.md, "Load balancer host").
//!
//! `bpf_fib_lookup` answers only when forwarding is enabled on the interface the packet
//! came in on (`BPF_FIB_LKUP_RET_FWD_DISABLED` otherwise), for the family of the route it
//! looks up: the backends' family. Without it every packet for a VIP would be counted as
//! `no_route` and dropped. `fulcrum run` checks these sysctls at start and refuses to start
//! with an error naming each one that is off; it never changes them (forwarding makes the
//! host a router, and IPv6 forwarding stops it from accepting router advertisements).

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::plane::{XdpError, XdpService};

/// One forwarding sysctl the data plane needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForwardingSysctl {
    /// `net.ipv4.conf.IF.forwarding` (a `.` in the interface name is written `/`).
    pub name: String,
    /// Its file under `/proc/sys`.
    pub path: String,
    /// The services whose backends need it (for the error message).
    pub services: Vec<String>,
}

/// The forwarding sysctls `services` need on `interface`: one per address family of their
/// backends.
pub fn forwarding_sysctls(interface: &str, services: &[XdpService]) -> Vec<ForwardingSysctl> {
    let mut out: Vec<ForwardingSysctl> = Vec::new();
    for s in services {
        let families: BTreeSet<u8> = s
            .backends
            .iter()
            .map(|b| match b.address.ip() {
                IpAddr::V4(_) => 4,
                IpAddr::V6(_) => 6,
            })
            .collect();
        for f in families {
            let name = format!("net.ipv{f}.conf.{}.forwarding", interface.replace('.', "/"));
            if let Some(e) = out.iter_mut().find(|e| e.name == name) {
                e.services.push(s.name.clone());
            } else {
                out.push(ForwardingSysctl {
                    name,
                    path: format!("/proc/sys/net/ipv{f}/conf/{interface}/forwarding"),
                    services: vec![s.name.clone()],
                });
            }
        }
    }
    out.sort();
    out
}

/// Reads the sysctls `services` need on `interface` (in the calling thread's network
/// namespace); an error names every one that is not `1`, or that cannot be read, and how
/// to set it.
pub fn check_forwarding(interface: &str, services: &[XdpService]) -> Result<(), XdpError> {
    let mut problems = Vec::new();
    for s in forwarding_sysctls(interface, services) {
        match std::fs::read_to_string(&s.path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(v) => problems.push(format!(
                "{} is {} but must be 1 (services {}): enable it with `sysctl -w {}=1` (or {}=1 for every interface)",
                s.name,
                v.trim(),
                s.services.join(", "),
                s.name,
                s.name.replacen(&format!(".{}.", interface.replace('.', "/")), ".all.", 1),
            )),
            Err(e) => problems.push(format!(
                "cannot read {} ({}): {e} (is there an interface `{interface}` in this network namespace?)",
                s.name, s.path
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(XdpError::Config(format!(
            "the XDP data plane needs forwarding enabled on `{interface}` (bpf_fib_lookup finds no next hop otherwise, and every packet for a VIP would be dropped): {}; fulcrum does not change these settings itself",
            problems.join("; ")
        )))
    }
}

/// `fulcrum decap`'s second chance sends packets on to another backend with
/// `bpf_fib_lookup`, which needs forwarding on the interface they came in on: the
/// forwarding sysctls of `interface` (IPv4, IPv6) that are not `1` (or cannot be read).
/// Without them the packets are delivered locally as without second chance.
pub fn decap_forwarding_off(interface: &str) -> Vec<String> {
    [4, 6]
        .into_iter()
        .filter(|f| {
            let path = format!("/proc/sys/net/ipv{f}/conf/{interface}/forwarding");
            std::fs::read_to_string(path).map_or(true, |v| v.trim() != "1")
        })
        .map(|f| format!("net.ipv{f}.conf.{}.forwarding", interface.replace('.', "/")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_core::model::{Backend, HashKey, PrimeTableSize, Proto};

    fn svc(name: &str, backends: &[&str]) -> XdpService {
        XdpService {
            name: name.into(),
            vip: "198.19.0.10:80".parse().expect("vip"),
            proto: Proto::Tcp,
            mode: crate::Mode::Dsr,
            hash_key: HashKey::FiveTuple,
            pool: name.into(),
            backends: backends
                .iter()
                .map(|a| Backend::new(a.parse().expect("addr"), 1))
                .collect(),
            table_size: PrimeTableSize::DEFAULT,
        }
    }

    #[test]
    fn one_sysctl_per_family_of_the_backends() {
        let v4 = svc("web", &["198.18.0.11:80", "198.18.0.12:80"]);
        let mixed = svc("mixed", &["198.18.0.13:80", "[2001:2::11]:80"]);
        let got = forwarding_sysctls("eth0.100", &[v4.clone(), mixed]);
        let names: Vec<_> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "net.ipv4.conf.eth0/100.forwarding",
                "net.ipv6.conf.eth0/100.forwarding"
            ]
        );
        assert_eq!(got[0].path, "/proc/sys/net/ipv4/conf/eth0.100/forwarding");
        assert_eq!(got[0].services, ["web", "mixed"]);
        assert_eq!(got[1].services, ["mixed"]);
        assert_eq!(forwarding_sysctls("eth0", &[svc("empty", &[])]), []);
        assert_eq!(forwarding_sysctls("eth0", &[v4]).len(), 1);
    }

    #[test]
    fn a_missing_interface_is_named() {
        let e = check_forwarding("fx-no-such-if0", &[svc("web", &["198.18.0.11:80"])])
            .expect_err("no such interface");
        let msg = e.to_string();
        assert!(
            msg.contains("net.ipv4.conf.fx-no-such-if0.forwarding"),
            "{msg}"
        );
        assert!(msg.contains("fx-no-such-if0"), "{msg}");
    }
}
