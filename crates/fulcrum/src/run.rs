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
use fulcrum_state::controller::{Control, Controller};
use fulcrum_state::snapshot::RelayMode;
use fulcrum_state::snapshot::Shared;
use fulcrum_state::worker::Workers;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::oneshot;

/// What `fulcrum run --help` says after the options: the signals and the environment.
const RUN_AFTER_HELP: &str = "\
Signals:
  SIGHUP           reload the config file (as `fulcrum ctl reload`); a bad file is refused
                   and the running config kept
  SIGTERM, SIGINT  stop accepting, drain open connections (up to each service's
                   drain_timeout), then exit 0
  SIGUSR1          reopen log files (after logrotate has renamed them)
  SIGUSR2          binary upgrade: start this program again with --upgrade; it takes the
                   listening sockets over --handover PATH, then this process drains and exits

Environment:
  FULCRUM_LOG      log level when --log-level is not given (e.g. debug, or
                   info,fulcrum_http=debug)
  RUST_LOG         read when neither --log-level nor FULCRUM_LOG is set; default info

Exit codes: 0 stopped on a signal, 1 runtime failure, 2 bad usage or bad config.";

/// Arguments of `fulcrum run`.
#[derive(Debug, clap::Args)]
#[command(after_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// The configuration file (TOML).
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    /// Data-path threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// How TCP relays move bytes: buffered copy, splice(2) through a pipe, auto (copy,
    /// switching a direction to splice once it carries bulk data), or sockmap (in the
    /// kernel, by a BPF program; docs/l4.md).
    #[arg(long, value_enum, default_value_t = Relay::Auto)]
    pub relay: Relay,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The handover socket (a unix socket, mode 0600) on which this process hands its
    /// listening sockets to a new one started with --upgrade; also refuses a second start
    /// with the same path. Off when absent. The unit file uses /run/fulcrum/handover.sock.
    #[arg(long, value_name = "PATH")]
    pub handover: Option<PathBuf>,
    /// Binary upgrade: take the listening sockets over from the fulcrum serving --handover
    /// PATH instead of binding them; once this process is ready, that one drains and exits.
    /// SIGUSR2 makes a running fulcrum start its own replacement this way.
    #[arg(long, requires = "handover")]
    pub upgrade: bool,
    /// Log level: error, warn, info, debug, trace or off, or per-module directives
    /// (`info,fulcrum_http=debug`). Default: $FULCRUM_LOG, else $RUST_LOG, else info.
    #[arg(long, value_name = "LEVEL", value_parser = parse_log_level)]
    #[allow(clippy::doc_markdown)] // the help text: the variables as a shell writes them
    pub log_level: Option<String>,
}

/// How `serve` starts: the handover socket, and whether it takes over from a running
/// process (docs/operations.md).
#[derive(Debug, Default)]
pub struct Lifecycle {
    pub handover: Option<PathBuf>,
    pub upgrade: bool,
    /// Sockets passed by systemd (socket activation), per address.
    pub activated: std::collections::HashMap<
        fulcrum_state::worker::ListenKey,
        Vec<fulcrum_state::worker::BoundSocket>,
    >,
}

/// Checks a `--log-level` value with the filter parser the logger uses.
fn parse_log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| {
        format!(
            "{e}; valid: error, warn, info, debug, trace, off, or directives such as \
             info,fulcrum_http=debug"
        )
    })?;
    Ok(s.to_owned())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Relay {
    Copy,
    Splice,
    Auto,
    /// In the kernel: both sockets in a sockmap whose BPF program redirects each skb to the
    /// other (needs root or `CAP_BPF`+`CAP_NET_ADMIN`; fails at start-up without).
    Sockmap,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub(crate) fn init_logging(format: LogFormat) {
    init_logging_at(format, None);
}

/// The log filter: `level` (`--log-level`), else `FULCRUM_LOG`, else `RUST_LOG`, else
/// `info`. A variable that does not parse is reported on stderr and skipped.
fn log_filter(level: Option<&str>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    if let Some(f) = level.and_then(|l| EnvFilter::try_new(l).ok()) {
        return f;
    }
    for var in ["FULCRUM_LOG", "RUST_LOG"] {
        let Ok(v) = std::env::var(var) else { continue };
        if v.trim().is_empty() {
            continue;
        }
        match EnvFilter::try_new(&v) {
            Ok(f) => return f,
            Err(e) => eprintln!(
                "fulcrum: {var}={v:?} is not a log level ({e}); valid: error, warn, info, \
                 debug, trace, off, or directives such as info,fulcrum_http=debug"
            ),
        }
    }
    EnvFilter::new("info")
}

/// Installs the stderr logger with `format`, at `level` or the environment's (see
/// [`log_filter`]).
pub(crate) fn init_logging_at(format: LogFormat, level: Option<&str>) {
    let filter = log_filter(level);
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
    init_logging_at(args.log_format, args.log_level.as_deref());
    let cfg = match crate::files::load(&args.config) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return Ok(2);
        }
    };
    raise_fd_limit();
    // Before any thread starts (it edits the environment).
    let activated = crate::activation::take();
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
        Relay::Sockmap => RelayMode::Sockmap,
    };
    if mode == RelayMode::Sockmap {
        fulcrum_proxy::kernel_relay::install()
            .context("--relay sockmap: the in-kernel relay is not available (use --relay auto)")?;
        tracing::info!("relay: sockmap (established TCP connections relayed in the kernel)");
    }
    // A LocalSet: with one worker, the worker runs on this thread (`fulcrum_proxy::worker::start_inline`).
    let life = Lifecycle {
        handover: args.handover.clone(),
        upgrade: args.upgrade,
        activated,
    };
    tokio::task::LocalSet::new().block_on(&rt, serve(args.config.clone(), cfg, workers, mode, life))
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
        fulcrum_proxy::worker::start_inline(shared)
    } else {
        fulcrum_proxy::worker::start(n, shared).context("cannot start worker threads")?
    })
}

#[allow(clippy::too_many_lines)] // start-up, signals and shutdown, in order
pub(crate) async fn serve(
    path: PathBuf,
    cfg: Config,
    n: usize,
    mode: RelayMode,
    mut life: Lifecycle,
) -> anyhow::Result<u8> {
    let mut activated = std::mem::take(&mut life.activated);
    let notify = crate::sdnotify::Notifier::from_env();
    // Before anything binds: take the sockets over from a running process (--upgrade), or
    // make sure this is not a second start on the same handover path or addresses.
    let Ok(mut inherited) = take_over(&life) else {
        return Ok(1);
    };
    if refuse_taken(cfg.admin.as_ref(), &activated, inherited.as_ref()) {
        return Ok(1);
    }
    let Ok(instance_lock) = instance_lock(&path, inherited.as_mut()) else {
        return Ok(1);
    };
    let (ev_tx, ev_rx) = unbounded_channel();
    let (ctl_tx, ctl_rx) = unbounded_channel();
    let shared = Arc::new(shared_state(&cfg, ev_tx, mode, inherited.as_mut()));
    let admin_cfg = cfg.admin.clone();
    let xdp_cfg = cfg.xdp.clone();
    let announce_cfg = cfg.announce.clone();
    let cluster_cfg = cfg.cluster.clone();
    let token = admin_token(admin_cfg.as_ref())?;
    // The admin listener first: it is the one address that cannot be shared, so a second
    // instance fails here before it takes any traffic.
    let Ok(admin_listener) = bind_admin(admin_cfg.as_ref(), &mut inherited, &mut activated).await?
    else {
        return Ok(1);
    };
    let workers = start_workers(n, &shared)?;
    let sockets = inherited
        .as_mut()
        .map(|i| std::mem::take(&mut i.sockets))
        .unwrap_or(activated);
    let Ok(mut controller) = start_controller(&shared, workers, &path, cfg, sockets).await else {
        return Ok(1);
    };
    let health_deadline = first_round_limit(controller.config());
    let running: fulcrum_cluster::Running = Arc::default();
    let auth = configure_reloads(
        &mut controller,
        cluster_cfg.is_some(),
        &running,
        token,
        admin_cfg.as_ref(),
    );
    tokio::spawn(controller.run(ev_rx, ctl_rx));
    let fleet = join_fleet(
        cluster_cfg,
        admin_cfg.as_ref(),
        path,
        running,
        &shared,
        &ctl_tx,
    );
    let Ok((xdp, _liveness)) = start_packet_side(
        xdp_cfg.as_ref(),
        announce_cfg.as_ref(),
        &shared,
        inherited.as_mut().and_then(|i| i.xdp.take()),
    ) else {
        return Ok(1);
    };
    // VIP announcement through the BGP speaker (`[announce]`), off the data path.
    let speaker = announce_cfg
        .as_ref()
        .map(|a| crate::speaker::start(a, Arc::clone(&shared)));

    let (admin_task, mut admin_dup) = match (admin_cfg, admin_listener) {
        (Some(a), Some(listener)) => {
            let (task, dup) =
                start_admin(&a, listener, &shared, &ctl_tx, xdp.as_ref(), &auth, fleet);
            (Some(task), dup)
        }
        _ => (None, None),
    };
    // Every listener is bound; READY waits for the first health round too.
    wait_first_round(&shared, health_deadline).await;
    let notify = Arc::new(notify);
    notify_ready(&notify, &shared, inherited.is_some());
    let (stop_tx, mut stop_rx) = unbounded_channel::<u32>();
    if let Some(p) = &life.handover {
        let plane = xdp
            .as_ref()
            .zip(xdp_cfg.as_ref())
            .map(|(r, c)| (r.plane(), c.mode));
        serve_handover(
            p,
            (inherited.take(), instance_lock.as_ref()),
            admin_dup.take(),
            &ctl_tx,
            &shared,
            plane,
            stop_tx,
        );
    }
    tracing::info!(workers = n, "fulcrum running");

    let mut signals = Signals::install()?;
    // A task of its own: this function is the future the `LocalSet` polls on every tick of
    // its tasks (`run_until`), so with one worker (the connections' tasks on this thread)
    // whatever it awaits is polled once per wake-up of any connection. The select over six
    // signals and a channel cost about 200 instructions per new L4 connection so
    // (callgrind, `bench/l4_callgrind.py --close`); a join handle costs a few.
    let stop_task = {
        let (ctl_tx, notify, shared) = (ctl_tx.clone(), Arc::clone(&notify), Arc::clone(&shared));
        let handover = life.handover.clone();
        tokio::task::spawn_local(async move {
            let handed_over = signals
                .until_stop(&ctl_tx, &notify, &shared, handover.as_deref(), &mut stop_rx)
                .await;
            (signals, handed_over)
        })
    };
    let (mut signals, handed_over) = stop_task.await.context("the signal handling task failed")?;
    stopped(
        handed_over,
        xdp.as_ref(),
        &notify,
        life.handover.as_deref(),
        admin_task,
    );
    if let (Some(sp), Some(a), None) = (&speaker, &announce_cfg, handed_over) {
        withdraw(sp, a, &shared, &mut signals.term, &mut signals.int).await;
    }
    drain(&shared, &ctl_tx, &notify, handed_over.is_some()).await;
    Ok(0)
}

/// The admin API's token, read from `[admin] token_file`.
fn admin_token(admin: Option<&config::AdminConfig>) -> anyhow::Result<Option<Arc<str>>> {
    Ok(admin
        .and_then(|a| a.token_file.as_ref())
        .map(|f| crate::files::read_token(f).map_err(|(msg, _)| anyhow::anyhow!(msg)))
        .transpose()?
        .map(Arc::<str>::from))
}

/// The signal to stop came: handed over to the process `handed_over` (which serves the
/// admin API on the same socket from now on), or stopping (it tells systemd, and removes
/// the handover path: a stopping process hands nothing over).
fn stopped(
    handed_over: Option<u32>,
    xdp: Option<&crate::decap::XdpRuntime>,
    notify: &crate::sdnotify::Notifier,
    handover: Option<&std::path::Path>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(pid) = handed_over {
        tracing::info!(new_pid = pid, "handed over to a new process");
        if let Some(x) = xdp {
            x.handed_over();
        }
        // No STOPPING=1: the unit goes on, served by the new main process.
        if let Some(t) = admin_task {
            t.abort();
        }
    } else {
        notify.send(&["STOPPING=1", "STATUS=stopping: draining connections"]);
        if let Some(p) = handover {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `--upgrade`: the sockets of the running process; else makes sure no process serves the
/// handover path. `Err` (logged): the start fails.
fn take_over(life: &Lifecycle) -> Result<Option<crate::handover::Inherited>, ()> {
    match (&life.handover, life.upgrade) {
        (Some(p), true) => match crate::handover::take_over(p) {
            Ok(i) => {
                tracing::info!(
                    old_pid = i.pid,
                    sockets = i.sockets.values().map(Vec::len).sum::<usize>(),
                    admin = i.admin.is_some(),
                    "took the listening sockets over"
                );
                Ok(Some(i))
            }
            Err(e) => {
                tracing::error!("{e:#}");
                Err(())
            }
        },
        (Some(p), false) => {
            if let Err(e) = crate::handover::refuse_if_running(p) {
                tracing::error!("{e:#}");
                return Err(());
            }
            Ok(None)
        }
        (None, _) => Ok(None),
    }
}

/// How the controller loads a file on reload (checking the files it names, as at start and
/// as `fulcrum check` does; in a fleet, merged with the shared revision running now) and
/// what it does after each: the admin API's token and `protect_reads`, returned, are
/// replaced by every reload (token rotation: rewrite `token_file`, then reload).
fn configure_reloads(
    controller: &mut Controller,
    in_fleet: bool,
    running: &fulcrum_cluster::Running,
    token: Option<Arc<str>>,
    admin_cfg: Option<&fulcrum_core::config::AdminConfig>,
) -> Arc<ArcSwap<admin::Auth>> {
    // Reloads check the files a config names, as at start and as `fulcrum check` does;
    // in a fleet, they merge the local file with the shared revision running now.
    controller.set_loader(if in_fleet {
        let running = Arc::clone(running);
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
        protect_reads: admin_cfg.is_some_and(|a| a.protect_reads),
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
    auth
}

/// Serves the admin API on its listener; returns its task and a descriptor of the
/// listener for the handover (the task owns the other).
fn start_admin(
    a: &fulcrum_core::config::AdminConfig,
    listener: tokio::net::TcpListener,
    shared: &Arc<Shared>,
    ctl_tx: &fulcrum_state::controller::ControlSender,
    xdp: Option<&crate::decap::XdpRuntime>,
    auth: &Arc<ArcSwap<admin::Auth>>,
    fleet: Option<Arc<dyn fulcrum_state::controller::FleetEdit>>,
) -> (
    tokio::task::JoinHandle<()>,
    Option<(std::net::SocketAddr, std::net::TcpListener)>,
) {
    // A descriptor of the admin listener for the handover (the task owns the other).
    let dup = listener.local_addr().ok().zip(listener_dup(&listener));
    if !a.listen.ip().is_loopback() && auth.load().token.is_none() {
        tracing::warn!(listen = %a.listen, "admin API bound beyond loopback without a token_file: anyone who reaches it can change this instance");
    }
    let state = AdminState {
        shared: Arc::clone(shared),
        control: ctl_tx.clone(),
        registry: Arc::new({
            let mut r = fulcrum_control::metrics::registry(Arc::clone(shared));
            if let Some(c) = xdp.and_then(crate::decap::XdpRuntime::collector) {
                r.register_collector(Box::new(c));
            }
            if let Some(c) = xdp.and_then(crate::decap::XdpRuntime::nat_sync_collector) {
                r.register_collector(Box::new(c));
            }
            r
        }),
        auth: Arc::clone(auth),
        fleet,
    };
    let task = tokio::spawn(fulcrum_control::serve::serve(
        listener,
        admin::router(state),
    ));
    (task, dup)
}

/// Stops accepting and waits for the open connections to end, at most the longest
/// `drain_timeout` of the configuration running now (reloads may have changed it).
async fn drain(
    shared: &Shared,
    ctl_tx: &fulcrum_state::controller::ControlSender,
    notify: &crate::sdnotify::Notifier,
    handed_over: bool,
) {
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
    let mut last_status = None::<Instant>;
    loop {
        // UDP flows too: once stopped they end when quiet, and meanwhile deliver the answers
        // to what they forwarded (fulcrum_proxy::udp, "Graceful shutdown").
        let open = shared.global.open_connections.load(Ordering::Relaxed)
            + fulcrum_proxy::udp::open_flows();
        if !handed_over && last_status.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            notify.status(&format!("stopping: draining {open} open connections"));
            last_status = Some(Instant::now());
        }
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
}

/// Tells systemd the service is ready (after an upgrade: that this is its main process now)
/// and starts the watchdog pings, from this runtime: a control thread that hangs stops them.
fn notify_ready(notify: &Arc<crate::sdnotify::Notifier>, shared: &Shared, upgraded: bool) {
    if notify.enabled() {
        let mut lines = vec!["READY=1".to_owned()];
        if upgraded {
            // The new main process of the unit (needs NotifyAccess=all).
            lines.insert(0, format!("MAINPID={}", std::process::id()));
        }
        lines.push(format!("STATUS={}", summary(shared)));
        notify.send(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if let Some(interval) = crate::sdnotify::watchdog_interval(upgraded) {
        // From this runtime: a control thread that hangs stops the pings.
        let notify = Arc::clone(notify);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(interval);
            loop {
                t.tick().await;
                notify.send(&["WATCHDOG=1"]);
            }
        });
    }
}

/// The signals `run` answers (installed once, before the first can come).
struct Signals {
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            hup: signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?,
            // SIGUSR1 (nginx's): reopen the access and connection logs (logrotate's rename, then
            // signal); SIGHUP reopens them too, before its reload.
            usr1: signal(SignalKind::user_defined1()).context("cannot install SIGUSR1 handler")?,
            term: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
            usr2: signal(SignalKind::user_defined2()).context("cannot install SIGUSR2 handler")?,
        })
    }

    /// Answers SIGHUP (reload), SIGUSR1 (reopen the logs) and SIGUSR2 (start a
    /// replacement) until SIGTERM or SIGINT (`None`) or a new process took over (its pid).
    async fn until_stop(
        &mut self,
        ctl_tx: &fulcrum_state::controller::ControlSender,
        notify: &Arc<crate::sdnotify::Notifier>,
        shared: &Arc<Shared>,
        handover: Option<&std::path::Path>,
        stop_rx: &mut tokio::sync::mpsc::UnboundedReceiver<u32>,
    ) -> Option<u32> {
        loop {
            tokio::select! {
                _ = self.usr1.recv() => {
                    tracing::info!("SIGUSR1: reopening log files");
                    fulcrum_state::logsink::reopen_all();
                }
                _ = self.hup.recv() => {
                    notify.reloading();
                    fulcrum_state::logsink::reopen_all();
                    let (tx, rx) = oneshot::channel();
                    let _ = ctl_tx.send(Control::Reload(tx));
                    let notify = Arc::clone(notify);
                    let shared = Arc::clone(shared);
                    tokio::spawn(async move {
                        let outcome = match rx.await {
                            Ok(Ok(())) => "reloaded".to_owned(),
                            Ok(Err(e)) => format!("reload refused, running the previous configuration: {}", e.lines().next().unwrap_or_default()),
                            Err(_) => "reload not answered".to_owned(),
                        };
                        let status = format!("STATUS={outcome}; {}", summary(&shared));
                        notify.send(&["READY=1", &status]);
                    });
                }
                _ = self.usr2.recv() => spawn_replacement(handover),
                Some(pid) = stop_rx.recv() => break Some(pid),
                _ = self.term.recv() => break None,
                _ = self.int.recv() => break None,
            }
        }
    }
}

/// The admin API's listener: inherited (binary upgrade), passed by systemd, or bound now.
/// `Ok(Err(()))`: it cannot be bound (logged), the start fails.
async fn bind_admin(
    admin_cfg: Option<&fulcrum_core::config::AdminConfig>,
    inherited: &mut Option<crate::handover::Inherited>,
    activated: &mut std::collections::HashMap<
        fulcrum_state::worker::ListenKey,
        Vec<fulcrum_state::worker::BoundSocket>,
    >,
) -> anyhow::Result<Result<Option<tokio::net::TcpListener>, ()>> {
    let inherited_admin = inherited.as_mut().and_then(|i| i.admin.take()).or_else(|| {
        // A socket passed by systemd for the admin address serves the admin API.
        let a = admin_cfg?.listen;
        let mut socks = activated.remove(&(fulcrum_core::model::Proto::Tcp, a))?;
        match socks.pop()? {
            fulcrum_state::worker::BoundSocket::Tcp(l) => Some((a, l)),
            fulcrum_state::worker::BoundSocket::Udp(_) => None,
        }
    });
    Ok(Ok(match admin_cfg {
        Some(a) => Some(match inherited_admin {
            Some((addr, l)) if addr == a.listen => {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)?
            }
            _ => match tokio::net::TcpListener::bind(a.listen).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(
                        "cannot listen on admin address {}: {e}; nothing else was bound",
                        a.listen
                    );
                    return Ok(Err(()));
                }
            },
        }),
        None => None,
    }))
}

/// With `[cluster]`: joins the fleet in etcd; returns how the admin API's changes become
/// transactions on the shared configuration.
fn join_fleet(
    cluster_cfg: Option<fulcrum_core::config::ClusterConfig>,
    admin_cfg: Option<&fulcrum_core::config::AdminConfig>,
    path: PathBuf,
    running: fulcrum_cluster::Running,
    shared: &Arc<Shared>,
    ctl_tx: &fulcrum_state::controller::ControlSender,
) -> Option<Arc<dyn fulcrum_state::controller::FleetEdit>> {
    // In a fleet, the admin API's changes are transactions on the shared configuration.
    let fleet = cluster_cfg.as_ref().map(|c| {
        Arc::new(fulcrum_cluster::Editor::new(
            c,
            path.clone(),
            crate::files::validate_named,
        )) as Arc<dyn fulcrum_state::controller::FleetEdit>
    });
    if let Some(c) = cluster_cfg {
        let member = c.member.clone().unwrap_or_else(hostname);
        tracing::info!(member, prefix = %c.prefix.0, "joining the fleet in etcd");
        fulcrum_cluster::spawn(
            fulcrum_cluster::Options {
                cluster: c,
                member,
                address: admin_cfg.map(|a| a.listen.to_string()),
                path,
                validate: crate::files::validate_named,
                running,
            },
            Arc::clone(shared),
            ctl_tx.clone(),
        );
    }
    fleet
}

/// Finishes taking over from the old process (`inherited`), then serves the handover path,
/// so that a binary upgrade can take over from this process (`stop_tx`: its pid, once it
/// has).
fn serve_handover(
    p: &std::path::Path,
    (inherited, lock): (
        Option<crate::handover::Inherited>,
        Option<&crate::handover::InstanceLock>,
    ),
    admin_dup: Option<(std::net::SocketAddr, std::net::TcpListener)>,
    ctl_tx: &fulcrum_state::controller::ControlSender,
    shared: &Arc<Shared>,
    plane: Option<crate::handover::XdpShare>,
    stop_tx: tokio::sync::mpsc::UnboundedSender<u32>,
) {
    if let Some(i) = inherited {
        if let Err(e) = i.finish(p) {
            tracing::error!("{e:#}");
        }
    }
    match crate::handover::Server::bind(p, lock) {
        Ok((server, sock)) => {
            let dup = admin_dup;
            if let Err(e) = server.spawn(
                sock,
                ctl_tx.clone(),
                Arc::clone(shared),
                dup,
                plane,
                stop_tx,
            ) {
                tracing::error!("{e:#}");
            }
        }
        Err(e) => tracing::error!("{e:#}; a binary upgrade cannot take over from this process"),
    }
}

/// The XDP data plane (dsr/tunnel/nat services), kept in step with the snapshots (detached
/// when dropped), and `[announce] liveness_interface`, which lives (and so the bird routes
/// via it) as long as what is returned. `Err` (logged): the start fails.
#[allow(clippy::type_complexity)]
fn start_packet_side(
    xdp_cfg: Option<&fulcrum_core::config::XdpConfig>,
    announce_cfg: Option<&fulcrum_core::config::AnnounceConfig>,
    shared: &Arc<Shared>,
    inherited: Option<fulcrum_xdp::Handover>,
) -> Result<
    (
        Option<crate::decap::XdpRuntime>,
        Option<crate::liveness::Liveness>,
    ),
    (),
> {
    let xdp = match xdp_cfg {
        Some(x) => match crate::decap::XdpRuntime::start(x, shared, inherited) {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::error!("{e:#}");
                return Err(());
            }
        },
        None => None,
    };
    shared.announce.set_xdp_attached(xdp.is_some());
    // `[announce] liveness_interface`: lives (and so the bird routes via it) as long as
    // this process.
    let liveness = match announce_cfg
        .and_then(|a| a.liveness_interface.as_deref())
        .map(crate::liveness::create)
        .transpose()
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e:#}");
            return Err(());
        }
    };
    Ok((xdp, liveness))
}

/// Whether another process serves this configuration (logged): its admin address is taken
/// by a socket neither inherited nor passed by systemd.
fn refuse_taken(
    admin_cfg: Option<&fulcrum_core::config::AdminConfig>,
    activated: &std::collections::HashMap<
        fulcrum_state::worker::ListenKey,
        Vec<fulcrum_state::worker::BoundSocket>,
    >,
    inherited: Option<&crate::handover::Inherited>,
) -> bool {
    // The admin address tells a second start on the same config; service addresses do
    // not (instances may share them through SO_REUSEPORT on purpose).
    let served_keys: Vec<_> = admin_cfg
        .iter()
        .map(|a| (fulcrum_core::model::Proto::Tcp, a.listen))
        .collect();
    let taken = |k: &fulcrum_state::worker::ListenKey| {
        activated.contains_key(k)
            || inherited.is_some_and(|i| {
                i.sockets.contains_key(k)
                    || (k.0 == fulcrum_core::model::Proto::Tcp
                        && i.admin.as_ref().is_some_and(|(a, _)| *a == k.1))
            })
    };
    if let Err(e) = crate::handover::refuse_taken(served_keys, &taken) {
        tracing::error!("{e:#}");
        return true;
    }
    false
}

/// One process per configuration file, with or without [admin] and --handover: its
/// instance lock, taken over from the old process in an upgrade. `Err` (logged): another
/// process holds it.
fn instance_lock(
    path: &std::path::Path,
    inherited: Option<&mut crate::handover::Inherited>,
) -> Result<Option<crate::handover::InstanceLock>, ()> {
    let upgrade = inherited.is_some();
    let lock = match inherited.and_then(|i| i.lock.take()) {
        Some(fd) => Some(crate::handover::InstanceLock::inherit(fd, path)),
        // `fulcrum demo` serves a configuration held in memory: no file, no lock.
        None if !path.is_file() => None,
        None => match crate::handover::InstanceLock::acquire(path) {
            Ok(l) => Some(l),
            Err(e) if upgrade => {
                // An old binary that hands no lock over, yet holds one.
                tracing::warn!("{e:#}; going on: this is an upgrade");
                None
            }
            Err(e) => {
                tracing::error!("{e:#}");
                return Err(());
            }
        },
    };
    if let Some(l) = &lock {
        tracing::debug!(lock = %l.path().display(), "instance lock held");
    }
    Ok(lock)
}

/// The running state the controller, the data paths and the admin API share.
fn shared_state(
    cfg: &Config,
    ev_tx: tokio::sync::mpsc::UnboundedSender<fulcrum_state::snapshot::Event>,
    mode: RelayMode,
    inherited: Option<&mut crate::handover::Inherited>,
) -> Shared {
    let mut shared = Shared::new(ev_tx, mode, Some(fulcrum_http::handler()));
    if let Some(c) = &cfg.cluster {
        // `[pool.discovery] etcd` watches through the fleet's etcd.
        shared = shared.with_registry(Arc::new(fulcrum_cluster::registry::EtcdRegistry::new(
            c.etcd.iter().map(|e| e.0.clone()).collect(),
        )));
    }
    // `--upgrade`: the running process's UDP flows.
    if let Some(i) = inherited {
        shared
            .udp_handover
            .inherit(std::mem::take(&mut i.udp_flows));
    }
    shared
}

/// The controller, started on the inherited (or socket-activated) sockets. `Err`
/// (logged): the start fails.
async fn start_controller(
    shared: &Arc<Shared>,
    workers: Workers,
    path: &std::path::Path,
    cfg: Config,
    sockets: std::collections::HashMap<
        fulcrum_state::worker::ListenKey,
        Vec<fulcrum_state::worker::BoundSocket>,
    >,
) -> Result<Controller, ()> {
    Controller::start_inherited(Arc::clone(shared), workers, path.to_owned(), cfg, sockets)
        .await
        .map_err(|msg| tracing::error!("{msg}"))
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

/// How long READY waits for the first health round: the longest a pool's checks take to
/// settle a backend that fails (`interval * fall + timeout`), at most a minute.
fn first_round_limit(cfg: &Config) -> Duration {
    cfg.pools
        .iter()
        .filter_map(|p| p.health.as_ref())
        .map(|h| h.interval * h.fall.get() + h.timeout)
        .max()
        .unwrap_or(Duration::ZERO)
        .min(Duration::from_secs(60))
}

/// Backends whose active checks have not given a definite state yet.
fn unsettled(shared: &Shared) -> usize {
    shared
        .snapshot
        .load()
        .pools
        .iter()
        .flat_map(|p| p.stats.iter())
        .filter(|s| !s.settled.load(Ordering::Acquire))
        .count()
}

/// Waits until every backend's active checks have given a first verdict, or `limit`.
async fn wait_first_round(shared: &Shared, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = unsettled(shared);
        if left == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                backends = left,
                "ready before every backend's first health check settled"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one-line `STATUS=` summary.
fn summary(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let total: usize = snap.pools.iter().map(|p| p.backends.len()).sum();
    let up: usize = snap
        .pools
        .iter()
        .map(|p| p.backends.iter().filter(|b| b.is_eligible()).count())
        .sum();
    format!(
        "{} services, {} pools, {up}/{total} backends up, {} open connections",
        snap.services.len(),
        snap.pools.len(),
        shared.global.open_connections.load(Ordering::Relaxed)
    )
}

/// A second descriptor of the admin listener (kept for the handover).
fn listener_dup(l: &tokio::net::TcpListener) -> Option<std::net::TcpListener> {
    use std::os::fd::AsFd as _;
    match l.as_fd().try_clone_to_owned() {
        Ok(fd) => Some(std::net::TcpListener::from(fd)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep the admin listener for a handover");
            None
        }
    }
}

/// SIGUSR2: starts this binary's replacement, as nginx does: the program at the path this
/// process was started with (the new binary once the package replaced it), with the same
/// arguments and `--upgrade`, in the same environment (and so the same service cgroup and
/// `NOTIFY_SOCKET`). The new process takes the sockets over; this one then drains and
/// exits. A replacement that fails is logged; this process keeps serving.
fn spawn_replacement(handover: Option<&std::path::Path>) {
    if handover.is_none() {
        tracing::warn!("SIGUSR2: a binary upgrade needs --handover PATH; ignored");
        return;
    }
    let mut args = std::env::args_os();
    let Some(program) = args.next() else {
        tracing::error!("SIGUSR2: cannot tell this process's program path");
        return;
    };
    let args: Vec<_> = args.filter(|a| a != "--upgrade").collect();
    tracing::info!(program = %program.to_string_lossy(), "SIGUSR2: starting the replacement process");
    match std::process::Command::new(&program)
        .args(&args)
        .arg("--upgrade")
        .spawn()
    {
        Ok(mut child) => {
            let pid = child.id();
            // Reaps it if it fails (it outlives this process if it succeeds).
            let _ = std::thread::Builder::new()
                .name("fulcrum-upgrade-child".to_owned())
                .spawn(move || match child.wait() {
                    Ok(st) if st.success() => {}
                    Ok(st) => tracing::error!(pid, status = %st, "the replacement process failed; still serving"),
                    Err(e) => tracing::error!(pid, error = %e, "cannot wait for the replacement process"),
                });
        }
        Err(e) => {
            tracing::error!(program = %program.to_string_lossy(), error = %e, "SIGUSR2: cannot start the replacement process; still serving");
        }
    }
}
