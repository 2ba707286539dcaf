//! `fulcrum decap --interface IF [--gue-port PORT]`: the backend side of
//! `forward = "tunnel"`, and the hook that starts the XDP data plane in `fulcrum run`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use fulcrum_core::config::{XdpConfig, XdpMode};
use fulcrum_state::snapshot::Shared;
use fulcrum_xdp::{Decap, LoadOptions, XdpPlane, DEFAULT_GUE_PORT};

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
    let off = fulcrum_xdp::host::decap_forwarding_off(&args.interface);
    if !off.is_empty() {
        eprintln!(
            "fulcrum decap: warning: {} not 1: over that family, second chance (tunnel = \"gue\") cannot send a packet of a connection this host does not hold on to its previous backend (bpf_fib_lookup needs forwarding on {}); such packets are delivered here and reset. Set it with sysctl -w NAME=1 (docs/xdp.md, \"Second chance\")",
            off.join(", "),
            args.interface
        );
    }
    crate::stop::runtime()?.block_on(async {
        let signalled = crate::stop::signalled()?;
        tokio::pin!(signalled);
        // second chance: resolve the neighbour entries of secondaries the program met
        // without one (docs/xdp.md, "Second chance")
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                () = &mut signalled => break,
                _ = tick.tick() => {
                    for addr in decap.take_unresolved().unwrap_or_default() {
                        if let Err(e) = fulcrum_xdp::resolve_neighbour(addr) {
                            eprintln!("fulcrum decap: cannot resolve the neighbour of secondary {addr}: {e}");
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    // what it did, for the operator (and the tests' logs)
    if let Ok(c) = decap.counters() {
        eprintln!(
            "fulcrum decap: passed {}, IPIP stripped {}, GUE stripped {}, errors {}; second chance: forwarded {}, dropped awaiting the secondary's neighbour {}, no route to the secondary {}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        );
    }
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
    /// nat sync (`[xdp.sync]`): its task and counters.
    nat_sync: Option<(
        tokio::task::JoinHandle<()>,
        Arc<fulcrum_xdp::natsync::SyncStats>,
    )>,
}

impl XdpRuntime {
    /// Must run inside the tokio runtime that drives the controller.
    /// `inherited`: a binary upgrade's handed-over flow state and link.
    pub fn start(
        cfg: &XdpConfig,
        shared: &Arc<Shared>,
        inherited: Option<fulcrum_xdp::Handover>,
    ) -> anyhow::Result<Self> {
        let services = crate::xdp_sync::services_from_snapshot(&shared.snapshot.load());
        // without forwarding on the interface bpf_fib_lookup answers nothing: refuse to start
        fulcrum_xdp::host::check_forwarding(&cfg.interface, &services)?;
        // nat sync: this instance's source ports, and its socket bound before anything else
        // (a clear error at start)
        let sync = match &cfg.sync {
            Some(sc) => {
                let slice =
                    fulcrum_xdp::natsync::PortSlice::for_member(sc.member, sc.members.get())
                        .with_context(|| {
                            format!(
                                "[xdp.sync] member = {} of members = {}: no port slice",
                                sc.member, sc.members
                            )
                        })?;
                let sock = fulcrum_xdp::natsync::bind(sc.listen)
                    .with_context(|| format!("[xdp.sync] cannot bind listen = {}", sc.listen))?;
                Some((sc.clone(), slice, sock))
            }
            None => None,
        };
        let opts = LoadOptions {
            nat_sync: sync.as_ref().map(|(_, s, _)| *s),
            ..LoadOptions::default()
        };
        let mut plane = match inherited {
            Some(h) => XdpPlane::load_inherited(opts, h)
                .context("cannot load the XDP program against the running process's maps")?,
            None => XdpPlane::load(opts).context("cannot load the XDP program")?,
        };
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
        let task = tokio::spawn(crate::xdp_sync::run(
            Arc::clone(&plane),
            Arc::clone(shared),
            Duration::from_millis(100),
        ));
        let nat_sync = sync.map(|(sc, slice, sock)| {
            let t = fulcrum_xdp::NatTimeouts::default();
            let opts = fulcrum_xdp::natsync::SyncOptions {
                listen: sc.listen,
                peers: sc.peers.clone(),
                member: sc.member,
                refresh: t.tcp.min(t.udp) / 3,
            };
            tracing::info!(listen = %sc.listen, peers = ?sc.peers, member = sc.member, ports = %format!("{}-{}", slice.first(), u32::from(slice.first()) + u32::from(slice.count()) - 1), "nat sync on");
            let stats = Arc::new(fulcrum_xdp::natsync::SyncStats::default());
            let t = tokio::spawn(fulcrum_xdp::natsync::run(
                Arc::clone(&plane),
                sock,
                opts,
                Arc::clone(&stats),
            ));
            (t, stats)
        });
        Ok(Self {
            plane,
            task,
            nat_sync,
        })
    }

    /// For the handover: the plane (its maps, link and ids are handed over).
    pub fn plane(&self) -> Arc<Mutex<XdpPlane>> {
        Arc::clone(&self.plane)
    }

    /// After a binary upgrade: the new process owns the maps and the link; this one stops
    /// writing to them (table sync, nat sweeps, nat sync) and leaves them as they are when
    /// it exits.
    pub fn handed_over(&self) {
        self.task.abort();
        if let Some((t, _)) = &self.nat_sync {
            t.abort();
        }
        tracing::info!("XDP data plane handed over: this process no longer updates its maps");
    }

    /// The `fulcrum_xdp_nat_sync_total` collector (`[xdp.sync]` only).
    pub fn nat_sync_collector(&self) -> Option<fulcrum_xdp::natsync::NatSyncCollector> {
        self.nat_sync
            .as_ref()
            .map(|(_, stats)| fulcrum_xdp::natsync::NatSyncCollector {
                plane: Arc::clone(&self.plane),
                stats: Arc::clone(stats),
            })
    }

    /// The `fulcrum_xdp_packets_total` collector, for the metrics registry.
    pub fn collector(&self) -> Option<fulcrum_xdp::metrics::XdpCollector> {
        self.plane.lock().ok().map(|p| p.collector())
    }
}

impl Drop for XdpRuntime {
    fn drop(&mut self) {
        self.task.abort();
        if let Some((t, _)) = &self.nat_sync {
            t.abort();
        }
        tracing::info!("XDP data plane detaching");
    }
}
