//! `fulcrum run -c FILE [--workers N]`: the load balancer.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use fulcrum_control::admin::{self, AdminState};
use fulcrum_core::config::{self, Config};
use fulcrum_core::model::defaults;
use fulcrum_proxy::controller::{Control, Controller};
use fulcrum_proxy::relay::RelayMode;
use fulcrum_proxy::snapshot::Shared;
use fulcrum_proxy::worker::Workers;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::oneshot;

/// Arguments of `fulcrum run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file (TOML).
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    /// Data-path threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// How TCP relays move bytes: buffered copy, splice(2) through a pipe, or auto (copy,
    /// switching a direction to splice once it carries bulk data).
    #[arg(long, value_enum, default_value_t = Relay::Auto)]
    pub relay: Relay,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Relay {
    Copy,
    Splice,
    Auto,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FULCRUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// Runs until SIGTERM/SIGINT and a graceful drain. Returns the process exit code.
pub fn run(args: &RunArgs) -> anyhow::Result<u8> {
    init_logging(args.log_format);
    let cfg = match crate::files::load(&args.config) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return Ok(2);
        }
    };
    raise_fd_limit();
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
        .max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("fulcrum-control")
        .build()
        .context("cannot start the control runtime")?;
    let mode = match args.relay {
        Relay::Copy => RelayMode::Copy,
        Relay::Splice => RelayMode::Splice,
        Relay::Auto => RelayMode::Auto,
    };
    // A LocalSet: with one worker, the worker runs on this thread (`Workers::start_inline`).
    tokio::task::LocalSet::new().block_on(&rt, serve(args.config.clone(), cfg, workers, mode))
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit, as nginx's
/// `worker_rlimit_nofile` or `HAProxy` do: every connection, UDP flow and backend connection
/// holds a descriptor, and the usual soft default (1024) runs out long before memory does.
/// Says in the log what the limit is.
#[allow(unsafe_code)]
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open file limit (RLIMIT_NOFILE)");
        return;
    }
    if r.rlim_cur >= r.rlim_max {
        tracing::info!(
            limit = r.rlim_cur,
            "open file limit (RLIMIT_NOFILE) is at its hard limit"
        );
        return;
    }
    let soft = r.rlim_cur;
    r.rlim_cur = r.rlim_max;
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const r) } == 0 {
        tracing::info!(
            from = soft,
            to = r.rlim_max,
            "raised the open file limit (RLIMIT_NOFILE) to its hard limit"
        );
    } else {
        tracing::warn!(limit = soft, hard = r.rlim_max, error = %std::io::Error::last_os_error(), "cannot raise the open file limit (RLIMIT_NOFILE)");
    }
}

/// One worker runs on this thread (the process has one thread); more get a thread each.
fn start_workers(n: usize, shared: &Arc<Shared>) -> anyhow::Result<Workers> {
    Ok(if n == 1 {
        Workers::start_inline(shared)
    } else {
        Workers::start(n, shared).context("cannot start worker threads")?
    })
}

#[allow(clippy::too_many_lines)] // start-up, signals and shutdown, in order
pub(crate) async fn serve(
    path: PathBuf,
    cfg: Config,
    n: usize,
    mode: RelayMode,
) -> anyhow::Result<u8> {
    let (ev_tx, ev_rx) = unbounded_channel();
    let (ctl_tx, ctl_rx) = unbounded_channel();
    let mut shared = Shared::new(ev_tx, mode, Some(fulcrum_http::handler()));
    if let Some(c) = &cfg.cluster {
        // `[pool.discovery] etcd` watches through the fleet's etcd.
        shared = shared.with_registry(Arc::new(fulcrum_cluster::registry::EtcdRegistry::new(
            c.etcd.iter().map(|e| e.0.clone()).collect(),
        )));
    }
    let shared = Arc::new(shared);
    let admin_cfg = cfg.admin.clone();
    let xdp_cfg = cfg.xdp.clone();
    let announce_cfg = cfg.announce.clone();
    let cluster_cfg = cfg.cluster.clone();
    let token = admin_cfg
        .as_ref()
        .and_then(|a| a.token_file.as_ref())
        .map(|f| crate::files::read_token(f).map_err(|(msg, _)| anyhow::anyhow!(msg)))
        .transpose()?
        .map(Arc::<str>::from);
    let workers = start_workers(n, &shared)?;
    let mut controller =
        match Controller::start(Arc::clone(&shared), workers, path.clone(), cfg).await {
            Ok(c) => c,
            Err(msg) => {
                tracing::error!("{msg}");
                return Ok(1);
            }
        };
    // Reloads check the files a config names, as at start and as `fulcrum check` does;
    // in a fleet, they merge the local file with the shared revision running now.
    let running: fulcrum_cluster::Running = Arc::default();
    controller.set_loader(if cluster_cfg.is_some() {
        let running = Arc::clone(&running);
        Arc::new(move |p: &std::path::Path| {
            let doc = running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            match doc {
                Some(doc) => crate::files::load_merged(p, &doc),
                None => crate::files::load(p),
            }
        })
    } else {
        Arc::new(crate::files::load)
    });
    // The admin API's token and protect_reads, replaced by every reload (token rotation:
    // rewrite token_file, then reload).
    let auth = Arc::new(ArcSwap::from_pointee(admin::Auth {
        token,
        protect_reads: admin_cfg.as_ref().is_some_and(|a| a.protect_reads),
    }));
    controller.set_after_reload({
        let auth = Arc::clone(&auth);
        Arc::new(move |cfg: &Config| {
            // The admin listener is bound once; a file without [admin] leaves it as it is.
            let Some(a) = cfg.admin.as_ref() else {
                return Ok(());
            };
            let token = match &a.token_file {
                Some(f) => Some(Arc::<str>::from(crate::files::read_token(f).map_err(
                    |(msg, _)| format!("{msg}; the admin API keeps the token it had"),
                )?)),
                None => None,
            };
            auth.store(Arc::new(admin::Auth {
                token,
                protect_reads: a.protect_reads,
            }));
            Ok(())
        })
    });
    tokio::spawn(controller.run(ev_rx, ctl_rx));
    // In a fleet, the admin API's changes are transactions on the shared configuration.
    let fleet = cluster_cfg.as_ref().map(|c| {
        Arc::new(fulcrum_cluster::Editor::new(
            c,
            path.clone(),
            crate::files::validate_named,
        )) as Arc<dyn fulcrum_proxy::controller::FleetEdit>
    });
    if let Some(c) = cluster_cfg {
        let member = c.member.clone().unwrap_or_else(hostname);
        tracing::info!(member, prefix = %c.prefix.0, "joining the fleet in etcd");
        fulcrum_cluster::spawn(
            fulcrum_cluster::Options {
                cluster: c,
                member,
                address: admin_cfg.as_ref().map(|a| a.listen.to_string()),
                path,
                validate: crate::files::validate_named,
                running,
            },
            Arc::clone(&shared),
            ctl_tx.clone(),
        );
    }
    // The XDP data plane (dsr/tunnel services), kept in step with the snapshots; detached
    // when dropped at the end of this function.
    let xdp = match &xdp_cfg {
        Some(x) => match crate::decap::XdpRuntime::start(x, &shared) {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::error!("{e:#}");
                return Ok(1);
            }
        },
        None => None,
    };
    shared.announce.set_xdp_attached(xdp.is_some());
    // `[announce] liveness_interface`: lives (and so the bird routes via it) as long as
    // this process.
    let _liveness = match announce_cfg
        .as_ref()
        .and_then(|a| a.liveness_interface.as_deref())
        .map(crate::liveness::create)
        .transpose()
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e:#}");
            return Ok(1);
        }
    };
    // VIP announcement through the BGP speaker (`[announce]`), off the data path.
    let speaker = announce_cfg
        .as_ref()
        .map(|a| crate::speaker::start(a, Arc::clone(&shared)));

    if let Some(a) = admin_cfg {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on admin address {}", a.listen))?;
        if !a.listen.ip().is_loopback() && auth.load().token.is_none() {
            tracing::warn!(listen = %a.listen, "admin API bound beyond loopback without a token_file: anyone who reaches it can change this instance");
        }
        let state = AdminState {
            shared: Arc::clone(&shared),
            control: ctl_tx.clone(),
            registry: Arc::new({
                let mut r = fulcrum_control::metrics::registry(Arc::clone(&shared));
                if let Some(c) = xdp.as_ref().and_then(crate::decap::XdpRuntime::collector) {
                    r.register_collector(Box::new(c));
                }
                if let Some(c) = xdp
                    .as_ref()
                    .and_then(crate::decap::XdpRuntime::nat_sync_collector)
                {
                    r.register_collector(Box::new(c));
                }
                r
            }),
            auth: Arc::clone(&auth),
            fleet,
        };
        tokio::spawn(fulcrum_control::serve::serve(
            listener,
            admin::router(state),
        ));
    }
    tracing::info!(workers = n, "fulcrum running");

    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    // SIGUSR1 (nginx's): reopen the access and connection logs (logrotate's rename, then
    // signal); SIGHUP reopens them too, before its reload.
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot install SIGUSR1 handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening log files");
                fulcrum_proxy::logsink::reopen_all();
            }
            _ = hup.recv() => {
                fulcrum_proxy::logsink::reopen_all();
                let (tx, _rx) = oneshot::channel();
                let _ = ctl_tx.send(Control::Reload(tx));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    if let (Some(sp), Some(a)) = (&speaker, &announce_cfg) {
        withdraw(sp, a, &shared, &mut term, &mut int).await;
    }
    // The drain timeout of the configuration running now (reloads may have changed it).
    let drain = shared
        .snapshot
        .load()
        .services
        .iter()
        .map(|s| s.drain_timeout)
        .max()
        .unwrap_or(defaults::DRAIN_TIMEOUT);
    tracing::info!(drain_timeout = ?drain, "stopping: no new connections, draining open ones");
    let (tx, rx) = oneshot::channel();
    let _ = ctl_tx.send(Control::StopAccepting(tx));
    let _ = rx.await;
    let deadline = Instant::now() + drain;
    loop {
        let open = shared.global.open_connections.load(Ordering::Relaxed);
        if open == 0 {
            tracing::info!("drained; exiting");
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(open, "drain timeout reached; closing remaining connections");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(0)
}

/// The host name (`[cluster] member` when absent).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "fulcrum".to_owned())
}

/// SIGTERM's first step with `[announce]`: withdraw the VIPs and give the routers
/// `withdraw_grace` to move new flows elsewhere (connections still arriving meanwhile are
/// served); a second signal skips the wait.
async fn withdraw(
    sp: &crate::speaker::SpeakerHandle,
    a: &config::AnnounceConfig,
    shared: &Shared,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    tracing::info!(withdraw_grace = ?a.withdraw_grace, "stopping: withdrawing VIPs");
    shared.announce.begin_stopping();
    sp.flush(Duration::from_secs(3)).await;
    tokio::select! {
        () = tokio::time::sleep(a.withdraw_grace) => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
