//! `fulcrum register`: a backend registers itself in etcd and keeps the registration alive
//! while this process lives (the sidecar heartbeat; docs/cluster.md, "Registered
//! backends"). SIGTERM or SIGINT revokes it, so the backend leaves its pools at once (its
//! flows drain); a process that dies or hangs leaves them when the lease's TTL runs out.
//!
//! Exit codes: 0 after SIGTERM/SIGINT; 2 bad usage. etcd that cannot be reached is not an
//! exit: it is logged and tried again (100 ms doubling to 5 s).

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_core::registry;

use crate::check::EXIT_BAD_CONFIG;
use crate::run::{init_logging, LogFormat};
use crate::stop;

/// Arguments of `fulcrum register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// etcd client URLs, comma-separated (`http://HOST:PORT[,http://HOST:PORT]`).
    #[arg(long, value_name = "URL[,URL]", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The key prefix, e.g. `/services`: the key is `P/POOL/IP:PORT`, and pools watch it
    /// with `[pool.discovery] etcd = "P/POOL/"`.
    #[arg(long, value_name = "P")]
    pub prefix: String,
    /// The pool's name in the key (1 to 64 of `A-Z a-z 0-9 _ - .`).
    #[arg(long, value_name = "NAME")]
    pub pool: String,
    /// The backend's address, `IP:PORT`.
    #[arg(long, value_name = "IP:PORT")]
    pub address: String,
    /// The backend's weight, 0..=65535 (0: no new flows).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub weight: u16,
    /// The backend's zone (1 to 64 of `A-Z a-z 0-9 _ - .`).
    #[arg(long, value_name = "Z")]
    pub zone: Option<String>,
    /// The lease TTL: the backend leaves its pools this long after its last heartbeat
    /// (2s..=1h; heartbeats every third of it).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub ttl: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The checked arguments: the endpoints and the heartbeat.
fn parse(a: &RegisterArgs) -> Result<(Vec<String>, fulcrum_cluster::register::Heartbeat), String> {
    let (endpoints, prefix) = crate::cluster::etcd_and_prefix(&a.etcd, &a.prefix)?;
    if !registry::valid_zone(&a.pool) {
        return Err(format!(
            "--pool: invalid name {:?}\n  help: 1 to 64 characters of A-Z, a-z, 0-9, '_', '-', '.'",
            a.pool
        ));
    }
    let address: SocketAddr = a
        .address
        .parse()
        .ok()
        .filter(|x: &SocketAddr| x.port() != 0)
        .ok_or_else(|| {
            format!(
                "--address: invalid address {:?}\n  help: IP:PORT with a port 1..=65535, e.g. 127.0.0.1:8080 or [::1]:8080",
                a.address
            )
        })?;
    if let Some(z) = &a.zone {
        if !registry::valid_zone(z) {
            return Err(format!(
                "--zone: invalid zone {z:?}\n  help: 1 to 64 characters of A-Z, a-z, 0-9, '_', '-', '.'"
            ));
        }
    }
    let ttl = humantime::parse_duration(&a.ttl)
        .ok()
        .filter(|t| registry::TTL.contains(t))
        .ok_or_else(|| {
            format!(
                "--ttl: invalid TTL {:?}\n  help: a duration from {:?} to {:?}, e.g. 10s",
                a.ttl,
                registry::TTL.start(),
                registry::TTL.end()
            )
        })?;
    Ok((
        endpoints,
        fulcrum_cluster::register::Heartbeat {
            key: registry::key(&prefix, &a.pool, address),
            value: registry::value(address, a.weight, a.zone.as_deref()),
            ttl,
        },
    ))
}

/// Runs `register` until SIGTERM/SIGINT; returns the exit code.
pub fn run(args: &RegisterArgs) -> anyhow::Result<u8> {
    init_logging(args.log_format);
    let Some((endpoints, hb)) = stop::reported("register", parse(args)) else {
        return Ok(EXIT_BAD_CONFIG);
    };
    let rt = stop::runtime()?;
    let code = rt.block_on(async {
        fulcrum_cluster::register::run(&endpoints, &hb, stop::signalled()?).await;
        anyhow::Ok(0)
    });
    // The client's background tasks (a connection attempt) need not finish.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}
