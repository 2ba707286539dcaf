//! A one-screen human summary of a [`Config`] (what `fulcrum check` prints).

use std::fmt::Write as _;

use super::{Config, Forwarding, HealthCheck, HealthConfig, PoolConfig, ServiceConfig};
use crate::model::canonical_addr;

impl Config {
    /// A one-screen summary: admin, services (name, listen, protocol, forward, pool,
    /// routes) and pools (scheduler, hash key, health, each backend with its weight).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let backends: usize = self.pools.iter().map(|p| p.backends.len()).sum();
        let _ = writeln!(
            out,
            "{} service{}, {} pool{}, {} static backend{}",
            self.services.len(),
            plural(self.services.len()),
            self.pools.len(),
            plural(self.pools.len()),
            backends,
            plural(backends)
        );
        match &self.admin {
            Some(a) => {
                let token = a
                    .token_file
                    .as_ref()
                    .map_or_else(String::new, |t| format!(" (token file {})", t.display()));
                let _ = writeln!(out, "admin: {}{token}", a.listen);
            }
            None => out.push_str("admin: off\n"),
        }
        if let Some(x) = &self.xdp {
            let _ = writeln!(out, "xdp: {} ({})", x.interface, x.mode.as_str());
        }
        if let Some(a) = &self.announce {
            let _ = writeln!(out, "{}", super::announce::summary_line(a));
        }
        if let Some(c) = &self.cluster {
            let etcd: Vec<&str> = c.etcd.iter().map(|e| e.0.as_str()).collect();
            let _ = writeln!(
                out,
                "cluster: {} on etcd {} (member {}): services and pools come from etcd",
                c.prefix.0,
                etcd.join(","),
                c.member.as_deref().unwrap_or("= host name")
            );
        }

        if !self.services.is_empty() {
            out.push_str("\nservices:\n");
            let rows: Vec<[String; 5]> = self.services.iter().map(service_row).collect();
            table(
                &mut out,
                &["NAME", "LISTEN", "PROTO", "FORWARD", "POOL"],
                &rows,
            );
            for s in &self.services {
                for r in s.routes() {
                    let mut m = String::new();
                    if let Some(h) = &r.host {
                        let _ = write!(m, " host {h}");
                    }
                    if let Some(p) = &r.path_prefix {
                        let _ = write!(m, " path {p}");
                    }
                    let _ = writeln!(out, "  {}: route{m} -> {}", s.name, r.pool);
                }
                for r in s.sni_routes() {
                    let _ = writeln!(out, "  {}: sni {} -> {}", s.name, r.sni, r.pool);
                }
                if let Some(d) = s.dns() {
                    let _ = writeln!(
                        out,
                        "  {}: zone {} (ns {})",
                        s.name,
                        d.origin,
                        d.ns.join(", ")
                    );
                    for n in &d.names {
                        let _ = writeln!(
                            out,
                            "  {}: dns {} -> {} (ttl {}, max {})",
                            s.name,
                            n.name,
                            n.pool,
                            humantime::format_duration(n.ttl),
                            n.max_answers
                        );
                    }
                }
                if let Some(d) = s.dns_service() {
                    let _ = writeln!(out, "  {}: /dns-query -> dns service {d}", s.name);
                }
            }
        }

        if !self.pools.is_empty() {
            out.push_str("\npools:\n");
            for p in &self.pools {
                pool(&mut out, p);
            }
        }
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn service_row(s: &ServiceConfig) -> [String; 5] {
    let forward = match s.forward() {
        Forwarding::Proxy {
            proxy_protocol: Some(pp),
        } => format!(
            "proxy+{}",
            match pp {
                crate::model::ProxyProtocol::V1 => "pp-v1",
                crate::model::ProxyProtocol::V2 => "pp-v2",
            }
        ),
        Forwarding::Tunnel { encap, .. } => format!("tunnel/{}", encap.as_str()),
        other => other.mode().as_str().to_owned(),
    };
    let mut proto = s.protocol().as_str().to_owned();
    if s.tls().is_some() {
        proto.push_str("+tls");
    }
    [
        s.name.clone(),
        s.listen.to_string(),
        proto,
        forward,
        s.pool.clone(),
    ]
}

fn table<const N: usize>(out: &mut String, head: &[&str; N], rows: &[[String; N]]) {
    let mut widths = head.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        out.push(' ');
        for (cell, w) in cells.zip(widths) {
            let _ = write!(out, " {cell:<w$}");
        }
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    };
    line(&mut head.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
}

fn health_text(h: Option<&HealthConfig>) -> String {
    match h {
        None => "health off".to_owned(),
        Some(h) => {
            let what = match &h.check {
                HealthCheck::Tcp => "tcp".to_owned(),
                HealthCheck::Http {
                    path,
                    expect_status,
                } => format!("http {path} expect {expect_status}"),
            };
            format!(
                "health {what} every {} (timeout {}, rise {}, fall {})",
                humantime::format_duration(h.interval),
                humantime::format_duration(h.timeout),
                h.rise,
                h.fall
            )
        }
    }
}

fn pool(out: &mut String, p: &PoolConfig) {
    let mut head = format!("  {}: {}", p.name, p.scheduler.kind().as_str());
    if let Some(k) = p.scheduler.hash_key() {
        let _ = write!(head, " by {k}");
    }
    if let Some(t) = p.scheduler.maglev_table_size() {
        let _ = write!(head, ", table {}", t.get());
    }
    if let Some(d) = p.persistence {
        let _ = write!(head, ", persistence {}", humantime::format_duration(d));
    }
    if let Some(d) = p.scheduler.slow_start() {
        let _ = write!(head, ", slow start {}", humantime::format_duration(d));
    }
    if let Some(c) = &p.sticky_cookie {
        let _ = write!(head, ", sticky cookie {c}");
    }
    if p.backend_protocol != super::BackendProtocol::default() {
        let _ = write!(head, ", backends speak {}", p.backend_protocol.as_str());
    }
    let _ = write!(
        head,
        ", {} backend{}, {}",
        p.backends.len(),
        plural(p.backends.len()),
        health_text(p.health.as_ref())
    );
    out.push_str(&head);
    out.push('\n');
    for b in &p.backends {
        let drained = if b.weight.get() == 0 {
            " (drained)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "    {}  weight {}{drained}",
            canonical_addr(&b.address),
            b.weight.get()
        );
    }
    if let Some(d) = &p.discovery {
        let mut parts = Vec::new();
        if let Some(x) = &d.dns {
            parts.push(format!("dns {x}"));
        }
        if let Some(x) = &d.srv {
            parts.push(format!("srv {x}"));
        }
        if let Some(x) = &d.file {
            parts.push(format!("file {}", x.display()));
        }
        if let Some(x) = &d.etcd {
            parts.push(format!("etcd {}", x.0));
        }
        if let Some(ns) = d.nameserver {
            parts.push(format!("via {ns}"));
        }
        let _ = writeln!(out, "    discovery: {}", parts.join(", "));
    }
}
