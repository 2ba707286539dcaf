//! `fulcrum announce -c FILE`: the program exabgp runs as its API `process` (text
//! encoder). It polls the local instance's admin API (`GET /api/v1/announce`, at `[admin]
//! listen` of FILE) and prints `announce route VIP/32 next-hop self` / `withdraw route
//! VIP/32 next-hop self` as VIPs change state, one flushed line each.
//!
//! - The instance unreachable for [`UNREACHABLE_POLLS`] polls in a row (stopped, crashed):
//!   everything announced is withdrawn; announced again once it answers and can serve.
//! - stdin closed (exabgp stops or restarts its process), or stdout closed: exit 0.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use fulcrum_core::announce::{exabgp_changes, vip_routes};
use fulcrum_core::config::SpeakerKind;
use serde_json::Value;

use crate::api_client::{Client, Endpoint};

/// Arguments of `fulcrum announce`.
#[derive(Debug, clap::Args)]
pub struct AnnounceArgs {
    /// The instance's configuration file (its `[admin]` and `[announce]` are read).
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
}

/// How often the admin API is asked.
const POLL: Duration = Duration::from_millis(250);
/// Failed polls in a row after which the instance is taken as gone (about a second).
const UNREACHABLE_POLLS: u32 = 4;
/// Connect/read/write limit of one poll.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until stdin or stdout closes; returns the exit code.
pub fn run(args: &AnnounceArgs) -> anyhow::Result<u8> {
    let cfg = match crate::files::load(&args.config) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return Ok(2);
        }
    };
    let file = args.config.display();
    match cfg.announce.as_ref().map(|a| a.speaker.kind()) {
        Some(SpeakerKind::Exabgp) => {}
        Some(SpeakerKind::Bird) => {
            eprintln!("fulcrum announce: {file} has [announce] speaker = \"bird\"; `fulcrum announce` is exabgp's process (speaker = \"exabgp\"); with bird, `fulcrum run` talks to bird itself");
            return Ok(2);
        }
        None => {
            eprintln!("fulcrum announce: {file} has no [announce] table; add [announce] with speaker = \"exabgp\"");
            return Ok(2);
        }
    }
    let Some(admin) = cfg.admin else {
        eprintln!("fulcrum announce: {file} has no [admin] table; `fulcrum announce` reads the instance's admin API");
        return Ok(2);
    };
    let token = match (&admin.token_file, admin.protect_reads) {
        (Some(f), true) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                eprintln!(
                    "fulcrum announce: cannot read the admin token file {}: {e}",
                    f.display()
                );
                return Ok(2);
            }
        },
        _ => None,
    };
    let addr = reachable(admin.listen);
    let client = Client::new(Endpoint::at(addr), token, "fulcrum-announce")?
        .timeouts(IO_TIMEOUT, IO_TIMEOUT)
        .max_body(1 << 20);

    // stdin closes when exabgp stops (or restarts) this process: exit 0 then.
    std::thread::spawn(|| {
        let mut sink = [0u8; 512];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut sink) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });

    let mut held: BTreeMap<IpAddr, bool> = BTreeMap::new();
    let mut failures = 0u32;
    loop {
        let next = match poll(&client) {
            Ok(v) => {
                if failures >= UNREACHABLE_POLLS {
                    eprintln!("fulcrum announce: the instance at {addr} answers again");
                }
                failures = 0;
                Some(v)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == UNREACHABLE_POLLS {
                    eprintln!("fulcrum announce: the instance at {addr} does not answer ({e}); withdrawing its VIPs");
                    Some(BTreeMap::new())
                } else {
                    None
                }
            }
        };
        if let Some(next) = next {
            let mut out = std::io::stdout().lock();
            for line in exabgp_changes(&held, &next) {
                // exabgp closed our pipe: it is going away; so do we.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(0);
                }
            }
            held = next;
        }
        std::thread::sleep(POLL);
    }
}

/// Where to reach an admin API that listens on `listen` (an unspecified address: loopback).
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

/// One `GET /api/v1/announce`: the routes to hold per VIP.
fn poll(client: &Client) -> Result<BTreeMap<IpAddr, bool>, String> {
    let answer = client
        .call("GET", "/api/v1/announce", None)
        .map_err(|e| e.to_string())?;
    let body = answer.text();
    if answer.status != 200 {
        return Err(format!("status {}: {}", answer.status, body.trim()));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("bad JSON: {e}"))?;
    let services = v["services"]
        .as_array()
        .ok_or_else(|| "no services in the answer".to_owned())?;
    Ok(vip_routes(services.iter().filter_map(|s| {
        let ip: IpAddr = s["vip"].as_str()?.parse().ok()?;
        Some((ip, s["announce"] == true))
    })))
}
