//! `fulcrum controller`: the global controller (docs/cluster.md "The global controller").
//! Runs until SIGTERM/SIGINT; with several, one leads (an etcd election) and the others
//! wait.
//!
//! Exit codes: 0 stopped; 2 bad usage.

use std::time::Duration;

use fulcrum_core::locality::control::Policy;

use crate::check::EXIT_BAD_CONFIG;
use crate::cluster::Target;
use crate::stop;

/// Arguments of `fulcrum controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub target: Target,
    /// This controller's name in the election (default: the host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Time between rounds (read reports, move weights).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// A zone's weight never goes below this.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub min_weight: u32,
    /// Nor above this.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_weight: u32,
    /// Move a zone down at this multiple of the best zone's mean latency...
    #[arg(long, default_value_t = 2.0)]
    pub latency_high: f64,
    /// ...and up again only at or below this multiple.
    #[arg(long, default_value_t = 1.5)]
    pub latency_low: f64,
    /// Move a zone down at this failure rate, percent...
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub failures_high: u8,
    /// ...and up again only at or below this one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub failures_low: u8,
    /// The reference latency is never below this (small latencies do not move anything).
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub latency_floor: Duration,
    /// Zones with fewer requests than this in a round hold their weight.
    #[arg(long, default_value_t = 20)]
    pub min_requests: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = crate::run::LogFormat::Text)]
    pub log_format: crate::run::LogFormat,
}

/// Runs the controller; returns the exit code.
pub fn run(args: &ControllerArgs) -> anyhow::Result<u8> {
    crate::run::init_logging(args.log_format);
    let Some((endpoints, prefix)) =
        stop::reported("controller", crate::cluster::target(&args.target))
    else {
        return Ok(EXIT_BAD_CONFIG);
    };
    let bad = |m: &str| {
        eprintln!("fulcrum controller: {m}");
        Ok(EXIT_BAD_CONFIG)
    };
    if args.min_weight > args.max_weight {
        return bad("--min-weight is above --max-weight");
    }
    if !(args.latency_low >= 1.0 && args.latency_low < args.latency_high) {
        return bad("--latency-low must be at least 1 and below --latency-high");
    }
    if args.failures_low >= args.failures_high {
        return bad("--failures-low must be below --failures-high");
    }
    if args.interval < Duration::from_millis(100) {
        return bad("--interval must be at least 100ms");
    }
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "controller".into(), |h| h.trim().to_owned());
        format!("{host}-{}", std::process::id())
    });
    let opts = fulcrum_cluster::controller::Options {
        endpoints,
        prefix,
        name,
        interval: args.interval,
        policy: Policy {
            min_weight: args.min_weight,
            max_weight: args.max_weight,
            latency_high: args.latency_high,
            latency_low: args.latency_low,
            failures_high: f64::from(args.failures_high) / 100.0,
            failures_low: f64::from(args.failures_low) / 100.0,
            latency_floor: args.latency_floor,
            min_requests: args.min_requests,
        },
    };
    stop::runtime()?.block_on(async {
        let signalled = stop::signalled()?;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(fulcrum_cluster::controller::run(opts, stop));
        signalled.await;
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        anyhow::Ok(())
    })?;
    Ok(0)
}
