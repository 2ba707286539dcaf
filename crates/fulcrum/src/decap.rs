//! `fulcrum decap --interface IF [--gue-port PORT]`: the backend side of
//! `forward = "tunnel"`, and the hook that starts the XDP data plane in `fulcrum run`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use fulcrum_core::config::{XdpConfig, XdpMode};
use fulcrum_proxy::snapshot::Shared;
use fulcrum_xdp::{Decap, LoadOptions, XdpPlane, DEFAULT_GUE_PORT};
use tokio::signal::unix::{signal, SignalKind};

/// Arguments of `fulcrum decap`.
#[derive(Debug, clap::Args)]
pub struct DecapArgs {
    /// The interface tunnelled packets arrive on.
    #[arg(long)]
    pub interface: String,
    /// The UDP destination port of GUE encapsulation.
    #[arg(long, default_value_t = DEFAULT_GUE_PORT)]
    pub gue_port: u16,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Native)]
    pub mode: AttachMode,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AttachMode {
    Native,
    Generic,
}

/// Attaches the decap program until SIGINT/SIGTERM, then detaches. Returns the exit code.
pub fn run(args: &DecapArgs) -> anyhow::Result<u8> {
    let mode = match args.mode {
        AttachMode::Native => XdpMode::Native,
        AttachMode::Generic => XdpMode::Generic,
    };
    let mut decap = Decap::load(args.gue_port).context("cannot load the decap program")?;
    decap
        .attach(&args.interface, mode)
        .context("cannot attach the decap program")?;
    eprintln!(
        "fulcrum decap: stripping IPIP and GUE (udp/{}) on {} ({} mode); Ctrl-C to stop",
        args.gue_port,
        args.interface,
        mode.as_str()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    })?;
    drop(decap); // detaches
    eprintln!("fulcrum decap: detached from {}", args.interface);
    Ok(0)
}

/// The XDP data plane of `fulcrum run` (when `[xdp]` is configured): loaded, filled from
/// the current snapshot, attached, then kept in step with every new snapshot (health,
/// reloads, API changes). Dropping it stops the sync task; the program detaches when the
/// plane is dropped (at the latest when the process exits: the link is an fd).
#[derive(Debug)]
pub struct XdpRuntime {
    plane: Arc<Mutex<XdpPlane>>,
    task: tokio::task::JoinHandle<()>,
}

impl XdpRuntime {
    /// Must run inside the tokio runtime that drives the controller.
    pub fn start(cfg: &XdpConfig, shared: &Arc<Shared>) -> anyhow::Result<Self> {
        let services = fulcrum_xdp::sync::services_from_snapshot(&shared.snapshot.load());
        // without forwarding on the interface bpf_fib_lookup answers nothing: refuse to start
        fulcrum_xdp::host::check_forwarding(&cfg.interface, &services)?;
        let mut plane =
            XdpPlane::load(LoadOptions::default()).context("cannot load the XDP program")?;
        for s in &services {
            if matches!(s.mode, fulcrum_xdp::Mode::Nat { .. }) {
                continue; // nat rewrites the port
            }
            if let Some(b) = s.backends.iter().find(|b| b.address.port() != s.vip.port()) {
                tracing::warn!(service = %s.name, backend = %b.address, "XDP forwarding does not rewrite ports: backends of a {} service receive the VIP's port {}", if matches!(s.mode, fulcrum_xdp::Mode::Dsr) { "dsr" } else { "tunnel" }, s.vip.port());
            }
        }
        plane
            .update(&services)
            .context("cannot fill the XDP maps")?;
        // the backends' next hops resolved before the first packet (docs/xdp.md, "Next hops")
        // (a failure is logged, not fatal: the data path then drops those packets and the
        // sync task retries every second)
        plane.manage_neighbours()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            let r = match plane.resolve_next_hops() {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resolve the backends' next hops yet");
                    break;
                }
            };
            if r.pending.is_empty() || std::time::Instant::now() >= deadline {
                if !r.pending.is_empty() {
                    tracing::warn!(next_hops = ?r.pending.iter().map(|n| n.addr).collect::<Vec<_>>(), "some backends' next hops are not resolved yet: their packets are dropped until they are");
                }
                if !r.unroutable.is_empty() {
                    tracing::warn!(backends = ?r.unroutable, "no route to these backends: their packets are dropped (no_route)");
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        plane
            .attach(&cfg.interface, cfg.mode)
            .context("cannot attach the XDP program")?;
        tracing::info!(interface = %cfg.interface, mode = cfg.mode.as_str(), services = services.len(), "XDP data plane attached");
        let plane = Arc::new(Mutex::new(plane));
        let task = tokio::spawn(fulcrum_xdp::sync::run(
            Arc::clone(&plane),
            Arc::clone(shared),
            Duration::from_millis(100),
        ));
        Ok(Self { plane, task })
    }

    /// The `fulcrum_xdp_packets_total` collector, for the metrics registry.
    pub fn collector(&self) -> Option<fulcrum_xdp::metrics::XdpCollector> {
        self.plane.lock().ok().map(|p| p.collector())
    }
}

impl Drop for XdpRuntime {
    fn drop(&mut self) {
        self.task.abort();
        tracing::info!("XDP data plane detaching");
    }
}
