//! `fulcrum cluster push|pull`: the fleet's shared configuration in etcd (docs/cluster.md).
//!
//! Exit codes: 0 success; 1 etcd cannot be reached or refuses; 2 bad usage or a bad file
//! (`push` checks it exactly as `fulcrum check` does, and writes nothing then).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use fulcrum_core::cluster as core;
use fulcrum_core::config::{ClusterPrefix, EtcdEndpoint};

use crate::check::EXIT_BAD_CONFIG;

/// Arguments of `fulcrum cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Where the fleet lives in etcd.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// etcd client URLs, comma-separated (`http://HOST:PORT[,http://HOST:PORT]`).
    #[arg(long, value_name = "URL[,URL]", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The fleet's key prefix (`[cluster] prefix` of its instances), e.g. `/fulcrum/prod`.
    #[arg(long, value_name = "P")]
    pub prefix: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Check FILE exactly as `fulcrum check` does, then write its services and pools as
    /// the fleet's new configuration revision (its local sections stay out).
    Push {
        /// The configuration file (TOML).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Print the fleet's current shared configuration (its revision on stderr).
    Pull {
        #[command(flatten)]
        target: Target,
    },
}

/// The endpoints and the prefix, checked as `[cluster]` checks them.
pub fn target(t: &Target) -> Result<(Vec<String>, String), String> {
    etcd_and_prefix(&t.etcd, &t.prefix)
}

/// `--etcd` and `--prefix`, checked as `[cluster]` checks them.
pub fn etcd_and_prefix(etcd: &[String], prefix: &str) -> Result<(Vec<String>, String), String> {
    let mut endpoints = Vec::with_capacity(etcd.len());
    for e in etcd {
        let e =
            EtcdEndpoint::parse(e.trim()).map_err(|(m, h)| format!("--etcd: {m}\n  help: {h}"))?;
        endpoints.push(e.0);
    }
    let prefix =
        ClusterPrefix::parse(prefix).map_err(|(m, h)| format!("--prefix: {m}\n  help: {h}"))?;
    Ok((endpoints, prefix.0))
}

/// Runs `cluster`; returns the exit code.
pub fn run(args: &ClusterArgs) -> anyhow::Result<u8> {
    let t = match &args.command {
        ClusterCommand::Push { target, .. } | ClusterCommand::Pull { target } => target,
    };
    let Some((endpoints, prefix)) = crate::stop::reported("cluster", target(t)) else {
        return Ok(EXIT_BAD_CONFIG);
    };
    let rt = crate::stop::runtime()?;
    match &args.command {
        ClusterCommand::Push { config, .. } => {
            let file = config.display().to_string();
            let text = match std::fs::read_to_string(config) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{file}: cannot read the config file: {e}");
                    return Ok(EXIT_BAD_CONFIG);
                }
            };
            // The very checks of `fulcrum check`.
            if let Err(errors) = crate::files::parse(&text) {
                eprintln!("{}", crate::files::render(&file, &text, &errors));
                return Ok(EXIT_BAD_CONFIG);
            }
            let document = match core::shared_part(&text)
                .and_then(|d| core::check_document(d.as_bytes()).map(str::to_owned))
            {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{file}: {e}");
                    return Ok(EXIT_BAD_CONFIG);
                }
            };
            let rev = rt
                .block_on(fulcrum_cluster::push(&endpoints, &prefix, &document))
                .with_context(|| format!("cannot write {}", core::config_key(&prefix)))?;
            println!(
                "pushed {file} to {} at revision {rev}",
                core::config_key(&prefix)
            );
            Ok(0)
        }
        ClusterCommand::Pull { .. } => {
            let got = rt
                .block_on(fulcrum_cluster::pull(&endpoints, &prefix))
                .with_context(|| format!("cannot read {}", core::config_key(&prefix)))?;
            let Some((rev, value)) = got else {
                eprintln!(
                    "fulcrum cluster: {} holds no configuration yet (fulcrum cluster push writes one)",
                    core::config_key(&prefix)
                );
                return Ok(1);
            };
            eprintln!("# {} at revision {rev}", core::config_key(&prefix));
            let mut out = std::io::stdout().lock();
            out.write_all(&value)?;
            out.flush()?;
            Ok(0)
        }
    }
}
