//! `fulcrum --version` / `fulcrum version`: what was built, from what, with what (as
//! `haproxy -vv` does). The facts come from `build.rs`.

/// The package version and the short commit: `-V` and the first line of `--version`.
pub const SHORT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FULCRUM_COMMIT"),
    ")"
);

/// Everything `--version` prints after `fulcrum `, with the crypto provider under rustls.
macro_rules! long {
    ($provider:literal) => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            "\ncommit: ",
            env!("FULCRUM_COMMIT"),
            "\nbuilt with: ",
            env!("FULCRUM_RUSTC"),
            "\ntarget: ",
            env!("FULCRUM_TARGET"),
            "\nprofile: ",
            env!("FULCRUM_PROFILE"),
            " (opt-level ",
            env!("FULCRUM_OPT_LEVEL"),
            ")",
            "\ncargo features: ",
            env!("FULCRUM_CARGO_FEATURES"),
            "\nbuilt in: ",
            "+tcp +udp +http/1.1 +http/2 +h2c +tls(rustls/",
            $provider,
            ") +proxy-protocol ",
            "+xdp(dsr,tunnel,nat; BPF objects embedded) +splice +dns-discovery +file-discovery ",
            "+etcd(cluster,registry) +announce(bird,exabgp) +mimalloc",
            "\nlibraries: ",
            env!("FULCRUM_LIBRARIES"),
        )
    };
}

/// Everything `--version` prints after `fulcrum `.
#[cfg(feature = "aws-lc-rs")]
pub const LONG: &str = long!("aws-lc-rs");
/// Everything `--version` prints after `fulcrum `.
#[cfg(all(not(feature = "aws-lc-rs"), not(feature = "rsa-aws-lc")))]
pub const LONG: &str = long!("ring");
/// Everything `--version` prints after `fulcrum `: ring, RSA keys on aws-lc-rs.
#[cfg(all(not(feature = "aws-lc-rs"), feature = "rsa-aws-lc"))]
pub const LONG: &str = long!("ring,rsa=aws-lc-rs");

/// Arguments of `fulcrum version` (none).
#[derive(Debug, clap::Args)]
pub struct VersionArgs {}

/// Prints what `fulcrum --version` prints.
pub fn run(_args: &VersionArgs) -> u8 {
    println!("fulcrum {LONG}");
    0
}
