//! `fulcrum`: one binary, one subcommand per module.
//!
//! Exit codes (contract): 0 success, 1 runtime failure, 2 bad usage or bad config.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

/// mimalloc: no per-allocation header and cheap aligned allocations (tokio's per-socket
/// state is cache-line aligned), which cuts memory per idle proxied connection.
#[global_allocator]
static GLOBAL: alloc::Mimalloc = alloc::Mimalloc;

mod activation;
mod adm;
mod alloc;
mod announce;
mod api_client;
mod check;
mod cluster;
mod controller;
mod ctl;
mod decap;
mod demo;
mod fail;
mod files;
mod handover;
mod liveness;
mod manual;
mod register;
mod run;
mod sdnotify;
mod speaker;
mod stop;
mod version;
mod xdp_sync;

/// Fulcrum: a load balancer (L4/L7 proxy, XDP data plane, control plane).
#[derive(Debug, Parser)]
#[command(
    name = "fulcrum",
    version = version::SHORT,
    long_version = version::LONG,
    about,
    after_help = "Environment: FULCRUM_LOG (or RUST_LOG) sets the log level of run, demo, \
                  register, controller and decap; FULCRUM_ADMIN and FULCRUM_TOKEN_FILE are \
                  the defaults of --admin and --token-file for ctl and adm. `fulcrum run --help` \
                  lists the signals."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; each lives in its own module with an `Args` struct and a `run`
/// function returning the process exit code.
#[derive(Debug, Subcommand)]
enum Command {
    /// ipvsadm's vocabulary on the admin API: -A/-E/-D, -a/-e/-d, -L -n, -C (`adm -h`).
    #[command(after_long_help = adm::HELP)]
    Adm(adm::AdmArgs),
    /// Validate a config file and print a one-screen summary.
    Check(check::CheckArgs),
    /// Run the load balancer from a config file until SIGTERM/SIGINT.
    Run(run::RunArgs),
    /// The fleet's shared configuration in etcd: `push` a checked file, `pull` the current
    /// one.
    Cluster(cluster::ClusterArgs),
    /// The global controller: reads the members' reports and moves `[pool.locality]
    /// controlled = true` weights away from zones that slow down or fail (one leads).
    Controller(controller::ControllerArgs),
    /// Register a backend in etcd and keep it registered (a leased key, heartbeats) until
    /// SIGTERM/SIGINT, which deregisters it; pools with `[pool.discovery] etcd` serve it.
    Register(register::RegisterArgs),
    /// Talk to a running instance's admin API: status, pools, backends, reload, explain.
    Ctl(ctl::CtlArgs),
    /// A self-contained tour: demo backends, an HTTP service on 127.0.0.1:8080, the admin
    /// API on 127.0.0.1:9090.
    Demo(demo::DemoArgs),
    /// Backend side of `forward = "tunnel"`: strip IPIP/GUE on an interface (XDP) and
    /// deliver the inner packets to the VIP on loopback, until SIGINT/SIGTERM.
    Decap(decap::DecapArgs),
    /// exabgp's API process: print announce/withdraw lines for the local instance's VIPs
    /// (read from its admin API) until stdin closes.
    Announce(announce::AnnounceArgs),
    /// Print the version, the commit and what the binary was built with (as --version).
    Version(version::VersionArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(manual::CompletionsArgs),
    /// Write the man pages (fulcrum.1 and one per subcommand) into a directory.
    Man(manual::ManArgs),
}

/// Returns this thread's freed allocator pages to the kernel now rather than on some later
/// allocation: called by a worker after idle connections were parked (their tasks and socket
/// registrations freed), so RSS follows. Without it the pages stay resident until mimalloc's
/// delayed purge runs, which needs more allocator activity on that thread.
///
/// The HTTP message buffers kept for reuse go first: the few pooled after a burst of
/// requests are scattered over the allocator pages that held all of the burst's buffers,
/// and would keep those pages resident (see [`fulcrum_http::drop_buffer_pools`]).
#[allow(unsafe_code)]
fn release_free_memory() {
    fulcrum_http::drop_buffer_pools();
    // SAFETY: mi_collect takes no pointer of ours; it only frees or purges memory that
    // mimalloc itself holds unused.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Asks the kernel not to back this process with transparent huge pages. mimalloc
/// `madvise`s its arenas for them, which makes memory grow in 2 MiB steps: a few thousand
/// idle connections would then cost a whole huge page each step. Without it, RSS follows
/// what the connections really use (measured: 1.68 -> 1.41 KB per idle proxied TCP
/// connection, and a smaller baseline). Best effort: an error changes nothing.
#[allow(unsafe_code)]
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    fulcrum_http::set_release_free_memory(release_free_memory);
    // Clap exits with 2 on usage errors (and 0 for --help/--version).
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Adm(args) => Ok(adm::run(args)),
        Command::Check(args) => check::run(args),
        Command::Run(args) => run::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Controller(args) => controller::run(args),
        Command::Register(args) => register::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Decap(args) => decap::run(args),
        Command::Announce(args) => announce::run(args),
        Command::Version(args) => Ok(version::run(args)),
        Command::Completions(args) => Ok(manual::completions(args, Cli::command())),
        Command::Man(args) => manual::man(args, Cli::command()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("fulcrum: {err:#}");
            ExitCode::from(fail::EXIT_FAILURE)
        }
    }
}
