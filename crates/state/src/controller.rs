//! The controller: the one owner of mutable control state. It turns a [`Config`] plus health
//! results into [`Snapshot`]s and swaps them in; binds and retires listeners; runs health
//! checkers; applies reloads whole or not at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_core::config::{self, Config, Forwarding, HealthConfig, OutlierConfig, PoolConfig};
use fulcrum_core::fleet_health::{self, BackendKey, Verdict};
use fulcrum_core::flow::FlowTable;
use fulcrum_core::health::{ActiveHealth, BackendHealth, Outlier, Transition};
use fulcrum_core::model::{defaults, BackendState, HashKey, ServiceProtocol};
use fulcrum_core::sched::{self, SchedOptions};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::builder::Builder;
pub use crate::builder::BUILD_TIMEOUT;
use crate::discovery::Discoveries;
use crate::health;
use crate::plan::{
    self, BackendPlan, BackendsOnly, CheckerStep, PersistenceStep, Plan, Running, ServiceStep,
    TrackStep, TrackedHealth,
};
use crate::snapshot::{Event, Persistence, PoolRt, ServiceRt, Shared, Snapshot};
use crate::stats::{BackendStats, ServiceStats};
use crate::worker::{self, BoundSocket, ListenKey, WorkerCmd, Workers};

/// Persistence tables hold at most this many client IPs per pool (least recently seen are
/// forgotten beyond it). Preallocated: 65,536 entries cost about 4 MiB.
const PERSISTENCE_CAPACITY: usize = 1 << 16;

/// Requests to the controller from signals and the admin API.
pub enum Control {
    /// Re-read the config file; answers with the rendered error if it is invalid.
    Reload(oneshot::Sender<Result<(), String>>),
    /// Graceful shutdown: stop accepting; the caller waits for connections to finish.
    StopAccepting(oneshot::Sender<()>),
    /// Another descriptor (`dup`) of every listening socket, for a new process taking
    /// this one's place (binary upgrade, docs/operations.md); empty once draining.
    Sockets(oneshot::Sender<Vec<(ListenKey, Vec<BoundSocket>)>>),
    /// A run-time change (admin API): `edit` turns the running config into the new one, or
    /// refuses; the controller then applies it exactly as a reload (listeners bound first,
    /// all or nothing). Edits run one at a time on the controller, so none is lost.
    /// `undrain`: a backend whose operator drain ends with this change.
    Edit {
        edit: ConfigEdit,
        undrain: Option<(String, SocketAddr)>,
        reply: oneshot::Sender<Result<(), ChangeError>>,
    },
    /// Operator drain of one backend (no new flows; existing ones finish).
    Drain {
        pool: String,
        backend: SocketAddr,
        reply: oneshot::Sender<Result<(), ChangeError>>,
    },
    /// The running configuration (with the run-time changes).
    Config(oneshot::Sender<Config>),
    /// A new revision of the fleet's shared configuration (`[cluster]`), already merged
    /// with the local sections and checked: applied exactly as a reload (all or nothing,
    /// counted in `fulcrum_config_reloads_total`), except that operator drains stay.
    Apply {
        config: Box<Config>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The fleet's health decisions (`[cluster]`, [`fulcrum_core::fleet_health`]): for each
    /// backend the members publish verdicts on, whether the fleet counts it up. They take
    /// the place of this instance's own active checks; its passive ejections and operator
    /// drains stay. `None`: no fleet view (etcd lost for longer than the hold time), the
    /// instance's own checks decide again.
    FleetHealth(Option<Arc<FleetDecisions>>),
}

/// The fleet's decisions: (pool, backend) -> up.
pub type FleetDecisions = BTreeMap<BackendKey, bool>;

/// See [`Control::Edit`]. `Fn`, not `FnOnce`: a fleet edit ([`FleetEdit`]) runs it again
/// on a newer revision when another edit came first.
pub type ConfigEdit = Arc<dyn Fn(&Config) -> Result<Config, ChangeError> + Send + Sync>;

/// Where the admin API's changes go on an instance in a fleet (`[cluster]`): not into the
/// running config, but into the fleet's shared configuration in etcd, as a transaction
/// conditioned on the revision the edit was made on (retried on a newer one when another
/// change came first, so concurrent changes on several instances all survive).
pub trait FleetEdit: Send + Sync {
    /// Applies `edit` to the fleet's newest configuration and writes the result as a new
    /// revision; returns that revision (which the instance then applies like any other).
    fn edit(
        &self,
        edit: ConfigEdit,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<i64, ChangeError>> + Send + '_>>;
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reload(_) => f.write_str("Reload"),
            Self::StopAccepting(_) => f.write_str("StopAccepting"),
            Self::Sockets(_) => f.write_str("Sockets"),
            Self::Edit { undrain, .. } => write!(f, "Edit {{ undrain: {undrain:?} }}"),
            Self::Drain { pool, backend, .. } => write!(f, "Drain({pool}, {backend})"),
            Self::Config(_) => f.write_str("Config"),
            Self::Apply { .. } => f.write_str("Apply"),
            Self::FleetHealth(d) => write!(f, "FleetHealth({})", d.as_ref().map_or(0, |d| d.len())),
        }
    }
}

/// Why a run-time change was refused (nothing changed); the admin API maps each kind to
/// its HTTP status (400, 404, 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The change itself is invalid (bad value, fails validation).
    #[error("{0}")]
    Invalid(String),
    /// It names a pool, service or backend that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It conflicts with the running state (a listen address in use, the last backend).
    #[error("{0}")]
    Conflict(String),
    /// It cannot be made now: the store of the fleet's configuration (etcd) cannot be
    /// reached. Nothing changed.
    #[error("{0}")]
    Unavailable(String),
}

struct Tracked {
    stats: Arc<BackendStats>,
    health: BackendHealth,
    /// The settings `health` was built with; other settings on reload start it afresh.
    settings: (Option<HealthConfig>, OutlierConfig),
    checker: Option<(HealthConfig, JoinHandle<()>)>,
    /// Drained because it left its pool's etcd-discovered set (not by an operator): the
    /// drain ends if it registers again, and a file reload does not end it.
    left: bool,
}

impl Tracked {
    fn abort_checker(&mut self) {
        if let Some((_, h)) = self.checker.take() {
            h.abort();
        }
    }
}

/// The tracked backends by pool, then by address: a pool's snapshot build looks up each of
/// its backends by address alone (at 10,000 backends, keys of (pool name, address) cost a
/// string compare through a pointer per lookup: most of the control thread's work in one
/// backend change).
#[derive(Default)]
struct TrackedSet(HashMap<String, HashMap<SocketAddr, Tracked>>);

impl TrackedSet {
    fn pool(&self, pool: &str) -> Option<&HashMap<SocketAddr, Tracked>> {
        self.0.get(pool)
    }

    fn get(&self, pool: &str, addr: SocketAddr) -> Option<&Tracked> {
        self.0.get(pool)?.get(&addr)
    }

    fn get_mut(&mut self, pool: &str, addr: SocketAddr) -> Option<&mut Tracked> {
        self.0.get_mut(pool)?.get_mut(&addr)
    }

    fn insert(&mut self, pool: &str, addr: SocketAddr, t: Tracked) {
        match self.0.get_mut(pool) {
            Some(m) => {
                m.insert(addr, t);
            }
            None => {
                self.0.insert(pool.to_owned(), HashMap::from([(addr, t)]));
            }
        }
    }

    fn remove(&mut self, pool: &str, addr: SocketAddr) -> Option<Tracked> {
        let m = self.0.get_mut(pool)?;
        let t = m.remove(&addr);
        if m.is_empty() {
            self.0.remove(pool);
        }
        t
    }

    fn all(&self) -> impl Iterator<Item = ((&str, SocketAddr), &Tracked)> {
        self.0
            .iter()
            .flat_map(|(p, m)| m.iter().map(move |(a, t)| ((p.as_str(), *a), t)))
    }

    fn all_mut(&mut self) -> impl Iterator<Item = ((&str, SocketAddr), &mut Tracked)> {
        self.0
            .iter_mut()
            .flat_map(|(p, m)| m.iter_mut().map(move |(a, t)| ((p.as_str(), *a), t)))
    }

    #[cfg(test)]
    fn values(&self) -> impl Iterator<Item = &Tracked> {
        self.0.values().flat_map(HashMap::values)
    }
}

/// Reads and validates a config file for a reload: the config, or the rendered errors.
pub type Loader = Arc<dyn Fn(&std::path::Path) -> Result<Config, String> + Send + Sync>;

/// Run after each successful reload with the new config, off the control thread (it may
/// read files: the binary re-reads `[admin] token_file` here). An error is logged; the
/// reload stands.
pub type AfterReload = Arc<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// The [`Loader`] of [`Controller::start`]: reads the file and parses it (every error),
/// without checking the files it names; the binary sets its own.
pub fn parse_file(path: &std::path::Path) -> Result<Config, String> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: cannot read: {e}"))?;
    config::parse_all(&text).map_err(|errs| {
        errs.iter()
            .map(|e| e.render(&file, &text))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// See the module docs.
pub struct Controller {
    shared: Arc<Shared>,
    workers: Workers,
    path: PathBuf,
    /// Shared with the edits that run off this thread (no copy of a large config here).
    config: Arc<Config>,
    backends: TrackedSet,
    services: HashMap<String, Arc<ServiceStats>>,
    persistence: HashMap<String, Arc<Persistence>>,
    changes: HashMap<String, Arc<AtomicU64>>,
    listening: HashSet<ListenKey>,
    /// A descriptor of each socket the workers serve, per address, to hand over
    /// ([`Control::Sockets`]).
    held: HashMap<ListenKey, Vec<BoundSocket>>,
    /// Sockets received from the process this one takes over from, taken by the first
    /// binds in place of new ones.
    inherited: HashMap<ListenKey, Vec<BoundSocket>>,
    next_id: u32,
    generation: u64,
    /// Per-pool discovery tasks and their last reported sets.
    discovery: Discoveries,
    /// A discovery task reported a new set since the last apply.
    rediscover: bool,
    /// How a reload reads the file.
    loader: Loader,
    /// What else a successful reload changes (see [`AfterReload`]).
    after_reload: Option<AfterReload>,
    /// The fleet's health decisions in place of the local active checks (`[cluster]`);
    /// `None`: the local checks decide.
    fleet: Option<Arc<FleetDecisions>>,
    /// The pools the next snapshot builds anew (the others are shared with the running one).
    stale: Stale,
    /// Where builds, parses and checks run, and replaced snapshots are freed.
    builder: Builder,
    /// Every running ejection's end, with its backend (and ended or replaced ones, dropped
    /// when met): [`Controller::next_ejection_end`] without a walk over every tracked backend
    /// at each wake-up of this thread.
    ejections: std::collections::BinaryHeap<std::cmp::Reverse<(Duration, String, SocketAddr)>>,
}

/// Which pools the next snapshot builds anew. The others are the running snapshot's
/// [`PoolRt`]s, shared as they are (backend list, scheduler and its table): a change of one
/// backend of one pool costs that pool's build, not every pool's, and no work per backend of
/// the pools it leaves alone.
#[derive(Debug)]
enum Stale {
    /// Every pool: the whole config may have changed (a reload, discovery, the start).
    All,
    /// Only these pools, each with the addresses of its backends that came, went or whose
    /// tracked state (health, drain, fleet verdict) changed since the running snapshot was
    /// built. Every such change marks its address here (the invariant
    /// [`Controller::pool_parts_patched`] relies on): the pool's other backends are then
    /// the running pool's, and its parts are made without looking them up.
    Pools(HashMap<String, HashSet<SocketAddr>>),
}

impl Stale {
    fn none() -> Self {
        Self::Pools(HashMap::new())
    }

    /// `pool`'s backend at `addr` came, went or changed state.
    fn mark(&mut self, pool: &str, addr: SocketAddr) {
        self.mark_pool(pool);
        if let Self::Pools(map) = self {
            if let Some(set) = map.get_mut(pool) {
                set.insert(addr);
            }
        }
    }

    /// `pool`'s backend list changed (e.g. a weight; what came or went is marked
    /// with [`Stale::mark`]).
    fn mark_pool(&mut self, pool: &str) {
        if let Self::Pools(map) = self {
            if !map.contains_key(pool) {
                map.insert(pool.to_owned(), HashSet::new());
            }
        }
    }

    /// How `pool` is built for the next snapshot.
    fn renew(&self, pool: &str) -> Renew<'_> {
        match self {
            Self::All => Renew::Whole,
            Self::Pools(map) => map.get(pool).map_or(Renew::Keep, Renew::Patch),
        }
    }
}

/// How a pool is built for the next snapshot ([`Stale::renew`]).
enum Renew<'a> {
    /// The running pool as it is.
    Keep,
    /// Every backend looked up ([`Controller::pool_parts`]).
    Whole,
    /// The running pool with these backends looked up again
    /// ([`Controller::pool_parts_patched`]).
    Patch(&'a HashSet<SocketAddr>),
}

/// Whether the userspace data path listens for this service (`forward = "proxy"`; http
/// services only when an L7 handler is present). The packet data plane serves the others.
fn served(shared: &Shared, s: &config::ServiceConfig) -> bool {
    matches!(s.forward(), Forwarding::Proxy { .. })
        && (s.protocol() != ServiceProtocol::Http
            || shared.l7.as_ref().is_some_and(|h| h.handles(s)))
}

impl Controller {
    /// Builds the first snapshot and binds every listener; fails if any cannot be bound.
    ///
    /// # Errors
    /// The rendered reason when the config cannot be applied.
    pub async fn start(
        shared: Arc<Shared>,
        workers: Workers,
        path: PathBuf,
        config: Config,
    ) -> Result<Self, String> {
        Self::start_inherited(shared, workers, path, config, HashMap::new()).await
    }

    /// [`Controller::start`], serving `inherited` sockets (received from the process this
    /// one replaces) instead of binding their addresses anew. Inherited sockets the
    /// config no longer names are closed.
    ///
    /// # Errors
    /// The rendered reason when the config cannot be applied.
    pub async fn start_inherited(
        shared: Arc<Shared>,
        workers: Workers,
        path: PathBuf,
        config: Config,
        inherited: HashMap<ListenKey, Vec<BoundSocket>>,
    ) -> Result<Self, String> {
        let discovery = Discoveries::new(
            Arc::clone(&shared.discovery_errors),
            shared.registry.clone(),
        );
        let mut c = Self {
            shared,
            workers,
            path,
            config: Arc::new(config.clone()),
            backends: TrackedSet::default(),
            services: HashMap::new(),
            persistence: HashMap::new(),
            changes: HashMap::new(),
            listening: HashSet::new(),
            held: HashMap::new(),
            inherited,
            next_id: 0,
            generation: 0,
            discovery,
            rediscover: false,
            loader: Arc::new(parse_file),
            after_reload: None,
            fleet: None,
            stale: Stale::All,
            builder: Builder::start()
                .map_err(|e| format!("cannot start the builder thread: {e}"))?,
            ejections: std::collections::BinaryHeap::new(),
        };
        c.apply(config).await?;
        // The config was read and parsed on this thread (its TOML tree, freed here): give
        // those pages back now, not on some later allocation. Measured with
        // `bench/dns.py`'s 1,000 names: 0.5 MiB less resident after the start.
        crate::memory::release_now();
        for (key, socks) in c.inherited.drain() {
            tracing::warn!(listen = %key.1, protocol = ?key.0, sockets = socks.len(), "closing a handed-over socket the configuration no longer names");
        }
        c.shared.set_ready(true);
        Ok(c)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets how reloads read the config file (the binary checks the files a config names
    /// too, as at start).
    pub fn set_loader(&mut self, loader: Loader) {
        self.loader = loader;
    }

    /// Sets what runs after each successful reload, before the reload is answered and
    /// counted (see [`AfterReload`]).
    pub fn set_after_reload(&mut self, f: AfterReload) {
        self.after_reload = Some(f);
    }

    /// Applies a new config: binds new listeners first (any failure changes nothing), then
    /// swaps in the new snapshot and retires listeners that are gone. Established
    /// connections keep running, even to backends that were removed.
    ///
    /// # Errors
    /// The rendered reason; nothing changed.
    pub async fn apply(&mut self, new: Config) -> Result<(), String> {
        self.apply_checked(new).await.map_err(|e| e.to_string())
    }

    /// [`Controller::apply`] with the kind of failure: a listener that cannot be bound is a
    /// [`ChangeError::Conflict`], an L7 service that cannot be built [`ChangeError::Invalid`].
    /// The change is planned first ([`plan::plan`], no IO), then carried out.
    ///
    /// # Errors
    /// See above; nothing changed.
    pub async fn apply_checked(&mut self, new: Config) -> Result<(), ChangeError> {
        let only = plan::backends_only(&self.config, &new);
        self.apply_planned(new, only).await
    }

    /// [`Controller::apply_checked`] with `only`, [`plan::backends_only`] of the running
    /// config and `new` (worked out off the control thread for an admin API change: the
    /// comparison walks every backend of the config).
    async fn apply_planned(
        &mut self,
        new: Config,
        only: Option<BackendsOnly>,
    ) -> Result<(), ChangeError> {
        if let Some(only) = only {
            return self.apply_backends(new, only).await;
        }
        let plan = self.plan(&new);
        let bound = self.bind(&plan)?;
        if let Some(check) = self.check_l7(&new, &plan.l7_check) {
            self.builder
                .run(check)
                .await
                .map_err(ChangeError::Invalid)?
                .map_err(ChangeError::Invalid)?;
        }
        self.discovery.sync(&new.pools, &self.shared.events);
        self.carry_out_backends(&new, &plan.backends);
        self.mark_left(&new);
        self.carry_out_counters(&plan);
        self.replace_config(new);
        self.stale = Stale::All;
        self.publish_local_health();
        self.rebuild().await;
        self.listen(bound, &plan);
        Ok(())
    }

    /// [`Controller::apply_checked`] for a change of static backends only
    /// ([`plan::backends_only`], e.g. one admin API backend call): the same result as the
    /// whole plan, with work on this thread (with `--workers 1` also the data path) only for
    /// the backends that come or go and the changed pools, not for every backend of every
    /// pool. The snapshot is still built off this thread, and only the changed pools anew
    /// ([`Stale`]): the other pools are the running snapshot's.
    async fn apply_backends(&mut self, new: Config, only: BackendsOnly) -> Result<(), ChangeError> {
        let steps = only.steps.as_slice();
        // As the whole plan: every served L7 service is built once before anything changes.
        let l7 = self.shared.l7.as_ref();
        let names: Vec<String> = new
            .services
            .iter()
            .filter(|s| served(&self.shared, s) && l7.is_some_and(|h| h.handles(s)))
            .map(|s| s.name.clone())
            .collect();
        if let Some(check) = self.check_l7(&new, &names) {
            self.builder
                .run(check)
                .await
                .map_err(ChangeError::Invalid)?
                .map_err(ChangeError::Invalid)?;
        }
        self.carry_out_backends(&new, steps);
        let checked = steps
            .iter()
            .any(|s| new.pool(&s.pool).is_some_and(|p| p.health.is_some()))
            || steps.iter().any(|s| s.checker != CheckerStep::Keep);
        self.replace_config(new);
        for pool in &only.pools {
            self.stale.mark_pool(pool);
        }
        for step in steps {
            self.stale.mark(&step.pool, step.address);
        }
        if checked {
            self.publish_local_health();
        }
        self.rebuild().await;
        Ok(())
    }

    /// Makes `new` the running config; the replaced one (10,000 backends are 10,000 list
    /// entries) is freed on the builder thread, not on this one.
    fn replace_config(&mut self, new: Config) {
        let old = std::mem::replace(&mut self.config, Arc::new(new));
        self.builder.free(old);
    }

    /// What the controller runs now, for the planner.
    fn running(&self) -> Running {
        Running {
            listening: self.listening.clone(),
            backends: self
                .backends
                .all()
                .map(|((pool, addr), t)| {
                    let health = TrackedHealth {
                        settings: t.settings.clone(),
                        checker: t.checker.as_ref().map(|(h, _)| h.clone()),
                    };
                    ((pool.to_owned(), addr), health)
                })
                .collect(),
            services: self.services.keys().cloned().collect(),
            persistence: self
                .persistence
                .iter()
                .map(|(k, p)| (k.clone(), p.timeout))
                .collect(),
            discovered: self.discovery.sets_with_leaving(),
        }
    }

    /// The plan that turns the running state into `new`'s.
    fn plan(&self, new: &Config) -> Plan {
        let l7 = self.shared.l7.as_ref();
        plan::plan(
            &self.config,
            new,
            &self.running(),
            &|s| served(&self.shared, s),
            &|s| l7.is_some_and(|h| h.handles(s)),
        )
    }

    /// Binds the plan's new listen addresses, one socket per worker, or takes the
    /// inherited sockets of an address (all of them, spread over the workers; workers
    /// beyond their count serve none of that address: a socket passed by systemd may not
    /// be in a `SO_REUSEPORT` group that new sockets could join). The first failure drops
    /// them all (nothing changed). Each entry: per worker, its sockets.
    #[allow(clippy::type_complexity)]
    fn bind(
        &mut self,
        plan: &Plan,
    ) -> Result<Vec<(ListenKey, Vec<Vec<BoundSocket>>)>, ChangeError> {
        let n = self.workers.count().max(1);
        let keys: Vec<ListenKey> = plan.binds().collect();
        keys.into_iter()
            .map(|key| {
                let mut per: Vec<Vec<BoundSocket>> = (0..n).map(|_| Vec::new()).collect();
                for (j, s) in self
                    .inherited
                    .remove(&key)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    per[j % n].push(s);
                }
                let inherited = per.iter().any(|p| !p.is_empty());
                for socks in &mut per {
                    if socks.is_empty() && !inherited {
                        socks.push(worker::bind(key).map_err(|e| {
                            ChangeError::Conflict(format!(
                                "cannot listen on {} ({:?}): {e}",
                                key.1, key.0
                            ))
                        })?);
                    }
                }
                Ok((key, per))
            })
            .collect()
    }

    /// Hands the bound sockets to the workers and retires the listeners that are gone.
    fn listen(&mut self, bound: Vec<(ListenKey, Vec<Vec<BoundSocket>>)>, plan: &Plan) {
        for (key, per) in bound {
            let held = self.held.entry(key).or_default();
            if plan.rebinds(key) {
                // The old sockets close once their workers serve the new ones.
                held.clear();
            }
            for (i, socks) in per.into_iter().enumerate() {
                for s in &socks {
                    match s.try_clone() {
                        Ok(d) => held.push(d),
                        Err(e) => {
                            tracing::warn!(listen = %key.1, error = %e, "cannot keep a descriptor to hand this listener over");
                        }
                    }
                }
                self.workers.send(i, WorkerCmd::Listen(key, socks));
            }
            self.listening.insert(key);
        }
        for key in plan.unbinds() {
            self.workers.broadcast(|| WorkerCmd::Unlisten(key));
            self.listening.remove(&key);
            self.held.remove(&key);
        }
    }

    /// Another descriptor of every listening socket ([`Control::Sockets`]).
    fn sockets(&self) -> Vec<(ListenKey, Vec<BoundSocket>)> {
        self.held
            .iter()
            .map(|(key, socks)| {
                let dups = socks
                    .iter()
                    .filter_map(|s| match s.try_clone() {
                        Ok(d) => Some(d),
                        Err(e) => {
                            tracing::warn!(listen = %key.1, error = %e, "cannot hand this socket over");
                            None
                        }
                    })
                    .collect();
                (*key, dups)
            })
            .collect()
    }

    /// Tracks, resets and forgets backends; spawns and aborts their health checkers.
    fn carry_out_backends(&mut self, new: &Config, steps: &[BackendPlan]) {
        for step in steps {
            let pool = new.pool(&step.pool);
            match (step.track, pool) {
                (TrackStep::Forget, _) => {
                    if let Some((_, h)) = self
                        .backends
                        .remove(&step.pool, step.address)
                        .and_then(|t| t.checker)
                    {
                        h.abort();
                    }
                    continue;
                }
                (TrackStep::Track, Some(pool)) => {
                    self.next_id += 1;
                    let t = Tracked {
                        stats: Arc::new(BackendStats::new(self.next_id, &pool.name, step.address)),
                        health: new_health(pool),
                        settings: (pool.health.clone(), pool.outlier),
                        checker: None,
                        left: false,
                    };
                    self.backends.insert(&step.pool, step.address, t);
                }
                (TrackStep::ResetHealth, Some(pool)) => {
                    if let Some(t) = self.backends.get_mut(&step.pool, step.address) {
                        t.health = new_health(pool);
                        t.settings = (pool.health.clone(), pool.outlier);
                    }
                }
                _ => {}
            }
            let Some(t) = self.backends.get_mut(&step.pool, step.address) else {
                continue;
            };
            t.stats
                .settled
                .store(t.health.active().is_settled(), Ordering::Release);
            let spawn = match &step.checker {
                CheckerStep::Keep => continue,
                CheckerStep::Spawn(h) => Some(h),
                CheckerStep::Respawn(h) => {
                    t.abort_checker();
                    Some(h)
                }
                CheckerStep::Abort => {
                    t.abort_checker();
                    None
                }
            };
            t.checker = spawn.map(|h| {
                let handle = health::spawn(
                    step.pool.clone(),
                    step.address,
                    h.clone(),
                    Arc::clone(&self.shared),
                    pool.and_then(|p| p.tls.clone()),
                    Arc::clone(&t.stats),
                );
                (h.clone(), handle)
            });
        }
    }

    /// Drains the registered backends that left their pool's etcd-discovered set, and
    /// undrains the ones that registered again.
    fn mark_left(&mut self, new: &Config) {
        for pool in &new.pools {
            for b in &self.discovery.backends(&pool.name, &pool.backends) {
                let Some(t) = self.backends.get_mut(&pool.name, b.address) else {
                    continue;
                };
                let leaving = self.discovery.is_leaving(&pool.name, b.address);
                if leaving && !t.left && !t.health.is_draining() {
                    t.left = true;
                    if let Some(tr) = t.health.set_draining(true) {
                        log_transition(&pool.name, b.address, tr);
                    }
                } else if !leaving && t.left {
                    t.left = false;
                    if let Some(tr) = t.health.set_draining(false) {
                        log_transition(&pool.name, b.address, tr);
                    }
                }
            }
        }
    }

    /// Adds and drops service counters and persistence tables.
    fn carry_out_counters(&mut self, plan: &Plan) {
        for (name, step) in &plan.services {
            match step {
                ServiceStep::Add => {
                    self.services.insert(name.clone(), Arc::default());
                }
                ServiceStep::Remove => {
                    self.services.remove(name);
                }
                ServiceStep::Keep { .. } => {}
            }
        }
        for (name, step) in &plan.persistence {
            match *step {
                PersistenceStep::New(timeout) => {
                    self.persistence.insert(
                        name.clone(),
                        Arc::new(Persistence {
                            timeout,
                            table: Mutex::new(FlowTable::new(PERSISTENCE_CAPACITY, timeout)),
                        }),
                    );
                }
                PersistenceStep::Drop => {
                    self.persistence.remove(name);
                }
                PersistenceStep::Keep => {}
            }
        }
    }

    /// Lets the L7 handler build every L7 service of `new` once, against throwaway pools, so
    /// that a bad certificate or route fails the change before anything changes. Returns the
    /// check, to run off the control thread (it reads certificate files); `None` when there
    /// is nothing to check.
    fn check_l7(
        &self,
        new: &Config,
        names: &[String],
    ) -> Option<impl FnOnce() -> Result<(), String> + Send + 'static> {
        let l7 = self.shared.l7.clone()?;
        let services: Vec<config::ServiceConfig> = names
            .iter()
            .filter_map(|n| new.service(n))
            .cloned()
            .collect();
        if services.is_empty() {
            return None;
        }
        // Only the pools these services use, with a cheap scheduler: the check needs their
        // names and backends, not their tables.
        let snap = self.shared.snapshot.load_full();
        let pools: Vec<PoolParts> = new
            .pools
            .iter()
            .filter(|p| services.iter().any(|s| s.uses_pool(&p.name)))
            .map(|p| self.pool_parts(p, snap.pool(&p.name)))
            .collect();
        Some(move || {
            let pools: Vec<Arc<PoolRt>> = pools
                .into_iter()
                .map(|p| Arc::new(p.build_unscheduled()))
                .collect();
            for s in &services {
                let prev = snap
                    .services
                    .iter()
                    .find(|x| x.name == s.name)
                    .and_then(|x| x.ext.as_ref());
                l7.build(s, &pools, prev)
                    .map_err(|e| format!("service {:?}: {e}", s.name))?;
            }
            Ok(())
        })
    }

    /// A pool's parts for a snapshot: everything but the scheduler, which
    /// [`PoolParts::build`] makes (off the control thread: a Maglev table of a large pool
    /// takes milliseconds). `running`: the pool in the running snapshot, if it is there.
    fn pool_parts(&self, p: &PoolConfig, running: Option<&Arc<PoolRt>>) -> PoolParts {
        let listed = self.discovery.backends(&p.name, &p.backends);
        let mut parts = self.pool_parts_of(p, running, listed);
        let mut stats = Vec::with_capacity(parts.backends.len());
        // Slow start: a backend first seen in a pool that already runs counts as just added;
        // one there from the pool's start does not ramp.
        let running = running.is_some();
        let now = self.shared.now();
        // The pool's tracked backends once, then each by its address.
        let tracked = self.backends.pool(&p.name);
        for b in &mut parts.backends {
            stats.push(self.backend_part(&p.name, tracked, b, now, running));
        }
        parts.stats = StatsParts::Own(stats);
        parts
    }

    /// Backend `b` of `pool` looked up among the pool's `tracked` backends: its state
    /// (written into `b`) and its stats, with slow start told whether it is up (`running`:
    /// the pool already runs, see [`Controller::pool_parts`]).
    fn backend_part(
        &self,
        pool: &str,
        tracked: Option<&HashMap<SocketAddr, Tracked>>,
        b: &mut fulcrum_core::model::Backend,
        now: Duration,
        running: bool,
    ) -> Arc<BackendStats> {
        match tracked.and_then(|m| m.get(&b.address)) {
            Some(t) => {
                b.state = self.effective(pool, b.address, t);
                t.stats.signals.set_up(b.is_eligible(), now, running);
                Arc::clone(&t.stats)
            }
            // Only for check_l7's throwaway pools: a backend not tracked yet.
            None => Arc::new(BackendStats::new(0, pool, b.address)),
        }
    }

    /// A pool's parts with its `listed` backends (as configured and discovered), their
    /// states and `stats` not yet filled in.
    fn pool_parts_of(
        &self,
        p: &PoolConfig,
        running: Option<&Arc<PoolRt>>,
        listed: Vec<fulcrum_core::model::Backend>,
    ) -> PoolParts {
        PoolParts {
            name: p.name.clone(),
            kind: p.scheduler.kind(),
            // A non-hashing scheduler hashes nothing; `src_ip` is what `explain` names.
            hash_key: p.scheduler.hash_key().cloned().unwrap_or(HashKey::SrcIp),
            opts: p.scheduler.sched_options(),
            backends: listed,
            stats: StatsParts::Own(Vec::new()),
            persistence: self.persistence.get(&p.name).cloned(),
            changes: self.changes.get(&p.name).cloned().unwrap_or_default(),
            moved: running.map(|o| Arc::clone(&o.moved)).unwrap_or_default(),
            sticky_cookie: p.sticky_cookie.clone(),
            backend_protocol: p.backend_protocol,
            tls: p.tls.clone(),
            locality: p.locality.clone(),
            local_zone: self.config.cluster.as_ref().and_then(|c| c.zone.clone()),
        }
    }

    /// [`Controller::pool_parts`] of a pool that runs, from the running pool `running`:
    /// only the backends at `marked` addresses (the pool's backends that came, went or
    /// changed state since `running` was built, [`Stale::Pools`]) are looked up here, the
    /// rest is done on the builder thread ([`Patch::apply`]): the copy of the pool's list
    /// (`p` is the config's pool `index`), and for every backend that is not marked the
    /// running pool's state and stats, which is what the lookup would give (the tracked
    /// backend and its state are the ones `running` was built from). The result is the same
    /// as [`Controller::pool_parts`] (a test compares the two). With `--workers 1` this
    /// thread is also the data path: at 10,000 backends the lookups of every backend were a
    /// millisecond of cache misses per admin API change, and the list's copy and walk still
    /// about a third of a millisecond (docs/benchmarks.md, "Admin API: one change at 10,000
    /// backends").
    fn pool_parts_patched(
        &self,
        index: usize,
        p: &PoolConfig,
        running: &Arc<PoolRt>,
        marked: &HashSet<SocketAddr>,
    ) -> PoolParts {
        // A pool with discovered backends: its list is put together here (from the
        // discovery state, which lives on this thread); a static pool's is the config's.
        let from_config = !self.discovery.lists(&p.name);
        let listed = if from_config {
            Vec::new()
        } else {
            self.discovery.backends(&p.name, &p.backends)
        };
        let mut parts = self.pool_parts_of(p, Some(running), listed);
        let tracked = self.backends.pool(&p.name);
        // A few addresses: a sorted list, not a hash of each of the pool's addresses.
        let mut looked_up: Vec<LookedUp> = marked
            .iter()
            .map(|&a| {
                let t = tracked.and_then(|m| m.get(&a));
                let found = t.map(|t| (self.effective(&p.name, a, t), Arc::clone(&t.stats)));
                (a, found)
            })
            .collect();
        looked_up.sort_unstable_by_key(|(a, _)| *a);
        parts.stats = StatsParts::Patched(Box::new(Patch {
            running: Arc::clone(running),
            listed: from_config.then(|| (Arc::clone(&self.config), index)),
            looked_up,
            now: self.shared.now(),
        }));
        parts
    }

    /// Builds a snapshot from the current config and health on the builder thread (Maglev
    /// tables, L7 state with its file reads) and swaps it in. The controller waits for it, so
    /// changes are applied in order; the control thread (with `--workers 1` also the data
    /// path) keeps running meanwhile.
    async fn rebuild(&mut self) {
        let build = self.prepare();
        let built = self.builder.run(move || build.run()).await;
        match built {
            Ok(snap) => {
                // The old snapshot (a large pool's table and backend lists) is freed where
                // it was built, once no connection holds it.
                let old = self.shared.snapshot.swap(Arc::new(snap));
                self.builder.free(old);
            }
            Err(e) => {
                // The pools this build was to renew are not renewed: the next one builds all.
                self.stale = Stale::All;
                tracing::error!("{e}; the running state stays as it was");
            }
        }
    }

    /// What the next snapshot is built from (cheap: copies of lists and `Arc`s): the parts of
    /// the [`Stale`] pools, and the running snapshot's other pools as they are.
    fn prepare(&mut self) -> Build {
        self.generation += 1;
        if matches!(self.stale, Stale::All) {
            for p in &self.config.pools {
                if !self.changes.contains_key(&p.name) {
                    self.changes.insert(p.name.clone(), Arc::default());
                }
            }
            let config = &self.config;
            self.changes.retain(|name, _| config.pool(name).is_some());
        }
        let stale = std::mem::replace(&mut self.stale, Stale::none());
        let old = self.shared.snapshot.load_full();
        Build {
            generation: self.generation,
            pools: self
                .config
                .pools
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    // The same place as in the running snapshot, unless pools came or went.
                    let prev = old
                        .pools
                        .get(i)
                        .filter(|o| o.name == p.name)
                        .or_else(|| old.pool(&p.name));
                    let parts = match (prev, stale.renew(&p.name)) {
                        (Some(o), Renew::Keep) => return PoolBuild::Keep(Arc::clone(o)),
                        (Some(o), Renew::Patch(marked)) => self.pool_parts_patched(i, p, o, marked),
                        (_, _) => self.pool_parts(p, prev),
                    };
                    PoolBuild::New(Box::new(parts), prev.cloned())
                })
                .collect(),
            services: self
                .config
                .services
                .iter()
                .filter_map(|s| Some((s.clone(), Arc::clone(self.services.get(&s.name)?))))
                .collect(),
            old,
            l7: self.shared.l7.clone(),
        }
    }

    /// Re-reads the config file. An invalid file changes nothing; the error is rendered
    /// exactly as `fulcrum check` prints it.
    ///
    /// # Errors
    /// The rendered reason; nothing changed.
    pub async fn reload(&mut self) -> Result<(), String> {
        // Read and parsed off the control thread (a large file takes a while to parse).
        let path = self.path.clone();
        let loader = Arc::clone(&self.loader);
        let parsed = self
            .builder
            .run(move || loader(&path))
            .await
            .and_then(|r| r);
        self.reload_with(parsed, true).await
    }

    /// Applies a reload's result (`parsed`): counts it, logs it; `end_drains`: operator
    /// drains end with it (a file reload), or stay (a cluster revision).
    async fn reload_with(
        &mut self,
        parsed: Result<Config, String>,
        end_drains: bool,
    ) -> Result<(), String> {
        let res = match parsed {
            Ok(cfg) => self.apply(cfg).await,
            Err(e) => Err(e),
        };
        if let (Ok(()), Some(f)) = (&res, &self.after_reload) {
            let (f, cfg) = (Arc::clone(f), Arc::clone(&self.config));
            if let Err(e) = self.builder.run(move || f(&cfg)).await.and_then(|r| r) {
                tracing::error!("after the reload: {e}");
            }
        }
        let counter = if res.is_ok() {
            &self.shared.global.reloads_ok
        } else {
            &self.shared.global.reloads_error
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if res.is_ok() && end_drains {
            // Run-time changes last until a reload: operator drains end too (the file says
            // weight = 0 for a lasting drain).
            let mut undrained = false;
            for ((pool, addr), t) in self.backends.all_mut() {
                if t.left {
                    continue; // a registered backend that left: drains until it is gone
                }
                if let Some(tr) = t.health.set_draining(false) {
                    if log_transition(pool, addr, tr) {
                        undrained = true;
                        self.stale.mark(pool, addr);
                    }
                }
            }
            if undrained {
                self.rebuild().await;
            }
        }
        match &res {
            Ok(()) => tracing::info!(generation = self.generation, "configuration reloaded"),
            Err(e) => tracing::error!("reload failed, nothing changed:\n{e}"),
        }
        res
    }

    /// Applies an admin API change (see [`Control::Edit`]).
    async fn edit(
        &mut self,
        edit: ConfigEdit,
        undrain: Option<(String, SocketAddr)>,
    ) -> Result<(), ChangeError> {
        if self.shared.is_draining() {
            return Err(ChangeError::Conflict("shutting down".into()));
        }
        // The edit writes, re-parses and validates the whole config, and the plan's
        // comparison of the two walks every backend: off the control thread. Nothing else
        // changes the config meanwhile (the controller awaits this before its next message).
        let running = Arc::clone(&self.config);
        let (new, only) = self
            .builder
            .run(move || {
                let new = edit(&running)?;
                let only = plan::backends_only(&running, &new);
                Ok::<_, ChangeError>((new, only))
            })
            .await
            .map_err(ChangeError::Invalid)??;
        self.apply_planned(new, only).await?;
        if let Some(k) = undrain {
            if let Some(t) = self.backends.get_mut(&k.0, k.1) {
                if let Some(tr) = t.health.set_draining(false) {
                    log_transition(&k.0, k.1, tr);
                    self.stale.mark(&k.0, k.1);
                    self.rebuild().await;
                }
            }
        }
        tracing::info!(generation = self.generation, "run-time change applied");
        Ok(())
    }

    /// Drains one backend: state `draining`, no new flows, existing ones finish.
    async fn drain(&mut self, pool: &str, backend: SocketAddr) -> Result<(), ChangeError> {
        if self.config.pool(pool).is_none() {
            return Err(ChangeError::NotFound(format!("no pool named {pool:?}")));
        }
        let Some(t) = self.backends.get_mut(pool, backend) else {
            return Err(ChangeError::NotFound(format!(
                "pool {pool:?} has no backend {backend}"
            )));
        };
        if let Some(tr) = t.health.set_draining(true) {
            log_transition(pool, backend, tr);
            self.stale.mark(pool, backend);
            self.rebuild().await;
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event) -> bool {
        // With a fleet view the effective state is not the local machines' own (the
        // fleet's verdict replaces the local checks), so a change of either counts.
        let key = match &ev {
            Event::Check { pool, backend, .. } | Event::Passive { pool, backend, .. } => {
                Some((pool.clone(), *backend))
            }
            Event::Discovered { .. } => None,
        };
        let before = key.as_ref().and_then(|k| {
            let t = self.backends.get(&k.0, k.1)?;
            Some(self.effective(&k.0, k.1, t))
        });
        let local = self.on_local_event(ev);
        let after = key.as_ref().and_then(|k| {
            let t = self.backends.get(&k.0, k.1)?;
            Some(self.effective(&k.0, k.1, t))
        });
        let changed = if self.fleet.is_some() && before != after {
            if let (Some((pool, backend)), Some(from), Some(to)) = (&key, before, after) {
                tracing::info!(pool, %backend, %from, %to, "backend state changed on this instance (fleet health in place of its own checks)");
            }
            true
        } else {
            local
        };
        if let (true, Some((pool, backend))) = (changed, &key) {
            self.stale.mark(pool, *backend);
        }
        changed
    }

    fn on_local_event(&mut self, ev: Event) -> bool {
        let now = self.shared.now();
        let (pool, backend, t) = match ev {
            Event::Discovered {
                pool,
                task,
                backends,
            } => {
                // Applied once for every report waiting (see `run`).
                if let Some(gone) = self.discovery.report(&pool, task, backends) {
                    self.rediscover = true;
                    if self.discovery.drains_on_leave(&pool) {
                        for b in gone {
                            self.start_leaving(&pool, b, now);
                        }
                    }
                }
                return false;
            }
            Event::Check { pool, backend, ok } => {
                let t = self.backends.get_mut(&pool, backend).and_then(|t| {
                    let tr = t.health.record_check(ok);
                    t.stats
                        .settled
                        .store(t.health.active().is_settled(), Ordering::Release);
                    tr
                });
                self.local_verdict_changed(&pool, backend);
                (pool, backend, t)
            }
            Event::Passive { pool, backend, ok } => {
                let ejections = &mut self.ejections;
                let t = self.backends.get_mut(&pool, backend).and_then(|t| {
                    if ok {
                        t.health.record_success();
                        None
                    } else {
                        let was = t.health.ejected_until();
                        let tr = t.health.record_failure(now);
                        // The only place an ejection starts (see `next_ejection_end`).
                        if let Some(until) = t.health.ejected_until().filter(|&u| Some(u) != was) {
                            ejections.push(std::cmp::Reverse((until, pool.clone(), backend)));
                        }
                        tr
                    }
                });
                (pool, backend, t)
            }
        };
        t.is_some_and(|t| log_transition(&pool, backend, t))
    }

    /// `backend` left `pool`'s etcd-discovered set: it drains (state `draining`, as an
    /// operator drain) while it may still carry flows: until its proxied connections have
    /// closed (checked every [`LEAVE_POLL`]; data-plane services have no such count, so
    /// there it waits the whole time), at most the longest `drain_timeout` of the services
    /// using the pool. Without a flow to wait for, it leaves at once.
    fn start_leaving(&mut self, pool: &str, backend: fulcrum_core::model::Backend, now: Duration) {
        if self
            .config
            .pool(pool)
            .is_some_and(|p| p.backends.iter().any(|b| b.address == backend.address))
        {
            return; // also static: it stays
        }
        let (linger, counted) = self.linger(pool);
        let active = self
            .backends
            .get(pool, backend.address)
            .map_or(0, |t| t.stats.active.load(Ordering::Relaxed));
        if linger.is_zero() || (counted && active == 0) {
            return;
        }
        tracing::info!(pool, backend = %backend.address, active, "registered backend left: draining");
        self.discovery.leave(pool, backend, now + linger);
    }

    /// The longest `drain_timeout` of the services using `pool`, and whether all of them
    /// are proxied (so that a backend's active connections are counted).
    fn linger(&self, pool: &str) -> (Duration, bool) {
        let mut longest = Duration::ZERO;
        let mut counted = true;
        for s in &self.config.services {
            if s.uses_pool(pool) {
                longest = longest.max(s.drain_timeout);
                counted &= matches!(s.forward(), Forwarding::Proxy { .. });
            }
        }
        (longest, counted)
    }

    /// Ends the drains of registered backends that left and have no flow left (or whose
    /// time is up); re-applies when one ended.
    async fn poll_leaving(&mut self) -> bool {
        let now = self.shared.now();
        let linger: HashMap<String, (Duration, bool)> = self
            .discovery
            .leaving()
            .map(|(p, _)| (p.to_owned(), self.linger(p)))
            .collect();
        let backends = &self.backends;
        let ended = self.discovery.end_leaving(|p, x| {
            let counted = linger.get(p).is_none_or(|l| l.1);
            let active = backends
                .get(p, x.backend.address)
                .map_or(0, |t| t.stats.active.load(Ordering::Relaxed));
            let done = now >= x.until || (counted && active == 0);
            if done {
                tracing::info!(pool = p, backend = %x.backend.address, active, "registered backend drained: removed");
            }
            done
        });
        if ended && !self.shared.is_draining() {
            if let Err(e) = self.apply((*self.config).clone()).await {
                tracing::error!("removing drained registered backends failed: {e}");
                return true;
            }
        }
        false
    }

    /// A backend's effective state here: with a fleet view, the fleet's verdict in place
    /// of the local active checks ([`fleet_health::effective_state`]).
    fn effective(&self, pool: &str, addr: SocketAddr, t: &Tracked) -> BackendState {
        let fleet = self
            .fleet
            .as_ref()
            .and_then(|f| f.get(&(pool.to_owned(), addr)).copied());
        fleet_health::effective_state(&t.health, fleet)
    }

    /// Takes the fleet's new decisions; true when a backend's effective state changed
    /// (each such change is logged).
    fn set_fleet(&mut self, decisions: Option<Arc<FleetDecisions>>) -> bool {
        let before: HashMap<(String, SocketAddr), BackendState> = self
            .backends
            .all()
            .map(|((p, a), t)| ((p.to_owned(), a), self.effective(p, a, t)))
            .collect();
        if decisions.is_none() && self.fleet.is_some() {
            tracing::warn!(
                "no fleet health view: this instance's own checks decide backend health"
            );
        }
        self.fleet = decisions;
        let mut changed = false;
        for ((pool, addr), t) in self.backends.all() {
            let now = self.effective(pool, addr, t);
            let was = before.get(&(pool.to_owned(), addr)).copied().unwrap_or(now);
            if now != was {
                changed = true;
                self.stale.mark(pool, addr);
                let votes = self.fleet.as_ref().map_or("local checks", |f| {
                    match f.get(&(pool.to_owned(), addr)) {
                        Some(true) => "the fleet counts it up",
                        Some(false) => "the fleet counts it down",
                        None => "no fleet verdict",
                    }
                });
                tracing::info!(pool, backend = %addr, from = %was, to = %now, by = votes, "backend state changed (fleet health)");
            }
        }
        changed
    }

    /// This instance's verdict on one backend changed, maybe: updates the published ones.
    fn local_verdict_changed(&self, pool: &str, addr: SocketAddr) {
        let Some(t) = self.backends.get(pool, addr) else {
            return;
        };
        let Some(v) = Verdict::of(&t.health, t.settings.0.is_some()) else {
            return;
        };
        self.shared.local_health.send_if_modified(|all| {
            if all.get(pool).and_then(|p| p.get(&addr)) == Some(&v) {
                return false;
            }
            Arc::make_mut(all)
                .entry(pool.to_owned())
                .or_default()
                .insert(addr, v);
            true
        });
    }

    /// Recomputes every published verdict (after a change of configuration: backends come
    /// and go).
    fn publish_local_health(&self) {
        let mut all = fleet_health::Verdicts::new();
        for ((pool, addr), t) in self.backends.all() {
            if let Some(v) = Verdict::of(&t.health, t.settings.0.is_some()) {
                all.entry(pool.to_owned()).or_default().insert(addr, v);
            }
        }
        self.shared.local_health.send_if_modified(|old| {
            if **old == all {
                return false;
            }
            *old = Arc::new(all);
            true
        });
    }

    fn poll_ejections(&mut self) -> bool {
        let now = self.shared.now();
        let mut changed = false;
        for ((pool, addr), t) in self.backends.all_mut() {
            if let Some(tr) = t.health.poll(now) {
                if log_transition(pool, addr, tr) {
                    changed = true;
                    self.stale.mark(pool, addr);
                }
            }
        }
        changed
    }

    /// The earliest end of a running ejection. An ejection starts only in a passive
    /// failure (`record_failure`), which pushes its end on [`Controller::ejections`]; an
    /// entry whose backend no longer has that end (the ejection ended, the backend went or
    /// came back with a new health) is dropped here. So the first entry that still matches
    /// is the least end over every tracked backend (a test compares the two).
    fn next_ejection_end(&mut self) -> Option<Duration> {
        while let Some(std::cmp::Reverse((until, pool, addr))) = self.ejections.peek() {
            let until = *until;
            if self
                .backends
                .get(pool, *addr)
                .is_some_and(|t| t.health.ejected_until() == Some(until))
            {
                return Some(until);
            }
            self.ejections.pop();
        }
        None
    }

    /// Runs until the control channel closes.
    pub async fn run(
        mut self,
        mut events: UnboundedReceiver<Event>,
        mut control: UnboundedReceiver<Control>,
    ) {
        // Kept across iterations, so that a stream of events does not put the check off.
        let mut leave_tick = tokio::time::interval(LEAVE_POLL);
        leave_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self
                .next_ejection_end()
                .map(|t| t.saturating_sub(self.shared.now()));
            let leaving = self.discovery.leaving().next().is_some();
            let changed = tokio::select! {
                Some(ev) = events.recv() => {
                    let mut changed = self.on_event(ev);
                    while let Ok(ev) = events.try_recv() {
                        changed |= self.on_event(ev);
                    }
                    // Discovery reports: one apply for all of them. Not while draining (it
                    // would listen again).
                    if std::mem::take(&mut self.rediscover) && !self.shared.is_draining() {
                        match self.apply((*self.config).clone()).await {
                            Ok(()) => changed = false,
                            Err(e) => tracing::error!("applying discovered backends failed: {e}"),
                        }
                    }
                    changed
                }
                () = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600))), if wake.is_some() => self.poll_ejections(),
                _ = leave_tick.tick(), if leaving => self.poll_leaving().await,
                msg = control.recv() => match msg {
                    Some(Control::Reload(reply)) => {
                        let _ = reply.send(self.reload().await);
                        false
                    }
                    Some(Control::Edit { edit, undrain, reply }) => {
                        let _ = reply.send(self.edit(edit, undrain).await);
                        false
                    }
                    Some(Control::Drain { pool, backend, reply }) => {
                        let _ = reply.send(self.drain(&pool, backend).await);
                        false
                    }
                    Some(Control::Config(reply)) => {
                        let _ = reply.send((*self.config).clone());
                        false
                    }
                    Some(Control::Apply { config, reply }) => {
                        let res = if self.shared.is_draining() {
                            Err("shutting down".to_owned())
                        } else {
                            self.reload_with(Ok(*config), false).await
                        };
                        let _ = reply.send(res);
                        false
                    }
                    Some(Control::FleetHealth(decisions)) => self.set_fleet(decisions),
                    Some(Control::Sockets(reply)) => {
                        let _ = reply.send(self.sockets());
                        false
                    }
                    Some(Control::StopAccepting(reply)) => {
                        self.shared.set_draining();
                        self.workers.broadcast(|| WorkerCmd::StopAccepting);
                        self.listening.clear();
                        self.held.clear();
                        let _ = reply.send(());
                        false
                    }
                    None => return,
                },
            };
            if changed {
                self.rebuild().await;
            }
        }
    }
}

/// How often the drains of registered backends that left are checked for their end.
pub const LEAVE_POLL: Duration = Duration::from_secs(1);

/// A pool for a snapshot, before its scheduler is built.
struct PoolParts {
    name: String,
    kind: fulcrum_core::model::SchedulerKind,
    hash_key: HashKey,
    opts: SchedOptions,
    backends: Vec<fulcrum_core::model::Backend>,
    stats: StatsParts,
    persistence: Option<Arc<Persistence>>,
    changes: Arc<AtomicU64>,
    moved: Arc<AtomicU64>,
    sticky_cookie: Option<String>,
    backend_protocol: config::BackendProtocol,
    tls: Option<config::BackendTls>,
    locality: Option<fulcrum_core::locality::Locality>,
    local_zone: Option<fulcrum_core::model::Zone>,
}

impl PoolParts {
    /// With the pool's own scheduler (Maglev tables and the like: the costly part), and
    /// its locality plan with one scheduler per zone.
    /// `prev`: the running pool, if any, whose scheduler's per-backend work is carried over
    /// where that gives the same scheduler ([`sched::build_after`]).
    fn build(mut self, prev: Option<&PoolRt>) -> PoolRt {
        let stats = self.settle();
        let scheduler = match prev {
            Some(o) => sched::build_after(
                o.scheduler.as_ref(),
                &o.backends,
                self.kind,
                &self.backends,
                &self.opts,
            ),
            None => sched::build(self.kind, &self.backends, &self.opts),
        };
        let plan = self.locality.as_ref().and_then(|l| {
            fulcrum_core::locality::ZonePlan::build(
                l,
                self.local_zone.as_ref(),
                self.kind,
                &self.backends,
                &self.opts,
            )
        });
        let mut p = self.with(scheduler, stats);
        p.locality = plan.map(Arc::new);
        p
    }

    /// The backends' stats, taken out of the parts: a patched pool's
    /// ([`StatsParts::Patched`]) with its backends' states filled in here (on the builder
    /// thread), any other's as they are.
    fn settle(&mut self) -> Vec<Arc<BackendStats>> {
        match std::mem::replace(&mut self.stats, StatsParts::Own(Vec::new())) {
            StatsParts::Patched(patch) => patch.apply(&self.name, &mut self.backends),
            StatsParts::Own(v) => v,
        }
    }

    /// With a round-robin scheduler, for checks that do not pick (cheap at any size).
    fn build_unscheduled(mut self) -> PoolRt {
        let stats = self.settle();
        let scheduler = sched::build(
            fulcrum_core::model::SchedulerKind::RoundRobin,
            &self.backends,
            &self.opts,
        );
        self.with(scheduler, stats)
    }

    /// The pool with `scheduler` and the backends' `stats` ([`PoolParts::settle`]).
    fn with(self, scheduler: Arc<dyn sched::Scheduler>, stats: Vec<Arc<BackendStats>>) -> PoolRt {
        PoolRt {
            name: self.name,
            kind: self.kind,
            hash_key: self.hash_key,
            backends: self.backends,
            stats,
            scheduler,
            persistence: self.persistence,
            changes: self.changes,
            moved: self.moved,
            sticky_cookie: self.sticky_cookie,
            locality: None,
            backend_protocol: self.backend_protocol,
            tls: self.tls,
        }
    }
}

/// A pool's backend stats for a snapshot ([`PoolParts`]), parallel to its backends.
enum StatsParts {
    Own(Vec<Arc<BackendStats>>),
    /// The running pool patched ([`Controller::pool_parts_patched`]): the backends' states
    /// and stats are filled in on the builder thread ([`Patch::apply`]).
    Patched(Box<Patch>),
}

/// A marked address with its tracked state and stats (`None`: not tracked).
type LookedUp = (SocketAddr, Option<(BackendState, Arc<BackendStats>)>);

/// What [`Controller::pool_parts_patched`] looked up on the control thread, for the builder
/// thread to patch the running pool with.
struct Patch {
    /// The pool in the running snapshot.
    running: Arc<PoolRt>,
    /// The config whose pool at this index lists the backends (copied on the builder
    /// thread); `None`: [`PoolParts`]'s own list is the pool's (discovered backends).
    listed: Option<(Arc<Config>, usize)>,
    /// The marked addresses, sorted, each looked up among the tracked backends.
    looked_up: Vec<LookedUp>,
    /// When the lookups were made (slow start counts from it).
    now: Duration,
}

impl Patch {
    /// Fills in `backends`' states (the pool's list, copied from the config first if it
    /// is the config's) and returns their stats, as [`Controller::pool_parts`] would: a
    /// marked backend takes its looked-up state and stats, with slow start told whether it
    /// is up; any other the running pool's, taken in order while the lists match (address,
    /// weight, zone), by address where they do not (a changed weight also tells slow start).
    fn apply(
        self,
        pool: &str,
        backends: &mut Vec<fulcrum_core::model::Backend>,
    ) -> Vec<Arc<BackendStats>> {
        let Self {
            running,
            listed,
            looked_up,
            now,
        } = self;
        if let Some((config, i)) = listed {
            if let Some(p) = config.pools.get(i) {
                backends.clone_from(&p.backends);
            }
        }
        let marked = |a: &SocketAddr| looked_up.binary_search_by_key(a, |(m, _)| *m).ok();
        let olds = &running.backends;
        let mut by_address: Option<HashMap<SocketAddr, usize>> = None;
        let mut stats = Vec::with_capacity(backends.len());
        let mut j = 0;
        for b in backends.iter_mut() {
            // The running pool's backends that went or changed are not carried over.
            while olds.get(j).is_some_and(|o| marked(&o.address).is_some()) {
                j += 1;
            }
            let at = marked(&b.address);
            let same = at.is_none()
                && olds.get(j).is_some_and(|o| {
                    o.address == b.address && o.weight == b.weight && o.zone == b.zone
                });
            if same {
                b.state = olds[j].state;
                stats.push(Arc::clone(&running.stats[j]));
                j += 1;
                continue;
            }
            let found = match at {
                Some(k) => looked_up[k].1.clone(),
                // Not marked, so its state did not change since the running pool was
                // built: only its listing did (weight, zone, place).
                None => by_address
                    .get_or_insert_with(|| {
                        olds.iter()
                            .enumerate()
                            .map(|(i, o)| (o.address, i))
                            .collect()
                    })
                    .get(&b.address)
                    .and_then(|&i| Some((olds[i].state, Arc::clone(running.stats.get(i)?)))),
            };
            stats.push(match found {
                Some((state, s)) => {
                    b.state = state;
                    s.signals.set_up(b.is_eligible(), now, true);
                    s
                }
                // Not tracked (only check_l7's throwaway pools have such backends).
                None => Arc::new(BackendStats::new(0, pool, b.address)),
            });
        }
        stats
    }
}

/// A pool of the next snapshot: the running one's, or built anew (with the running one, if
/// any, to count the change against).
enum PoolBuild {
    Keep(Arc<PoolRt>),
    New(Box<PoolParts>, Option<Arc<PoolRt>>),
}

/// Everything a snapshot is built from, owned, so that the build can run off the control
/// thread.
struct Build {
    generation: u64,
    pools: Vec<PoolBuild>,
    services: Vec<(config::ServiceConfig, Arc<ServiceStats>)>,
    old: Arc<Snapshot>,
    l7: Option<Arc<dyn crate::l7::L7Handler>>,
}

impl Build {
    fn run(self) -> Snapshot {
        let old = self.old;
        let pools: Vec<Arc<PoolRt>> = self
            .pools
            .into_iter()
            .map(|p| match p {
                PoolBuild::Keep(p) => p,
                PoolBuild::New(parts, prev) => {
                    let p = Arc::new(parts.build(prev.as_deref()));
                    count_change(prev.as_deref(), &p);
                    p
                }
            })
            .collect();
        let l7 = self.l7.as_ref();
        let services = self
            .services
            .into_iter()
            .filter_map(|(s, stats)| {
                let pool = pools.iter().find(|p| p.name == s.pool)?;
                let prev_svc = old.services.iter().find(|x| x.name == s.name);
                let prev = prev_svc.and_then(|x| x.ext.clone());
                let conn_log = conn_log(&s, prev_svc);
                let ext = match l7.filter(|h| h.handles(&s)) {
                    None => None,
                    Some(h) => match h.build(&s, &pools, prev.as_ref()) {
                        Ok(x) => Some(x),
                        Err(e) => {
                            // check_l7 passed for this config, so this is a passing fault
                            // (a file changed under us): keep serving with the old state.
                            tracing::error!(service = %s.name, "L7 state rebuild failed, keeping the previous one: {e}");
                            prev
                        }
                    },
                };
                let forwarding = s.forward();
                let proxy_protocol = match forwarding {
                    Forwarding::Proxy { proxy_protocol } => proxy_protocol,
                    _ => None,
                };
                let dns = s.dns().and_then(|d| {
                    let mut zone = fulcrum_core::dns::Zone::new(d, self.generation as u32)
                        .map_err(|e| tracing::error!(service = %s.name, "dns zone: {e}"))
                        .ok()?;
                    let dns_pools = zone
                        .pools()
                        .iter()
                        .filter_map(|n| pools.iter().find(|p| p.name == *n).cloned())
                        .collect::<Vec<_>>();
                    (dns_pools.len() == zone.pools().len()).then(|| {
                        zone.prepare(dns_pools.as_slice());
                        Arc::new(crate::snapshot::DnsRt {
                            zone,
                            pools: dns_pools,
                        })
                    })
                });
                Some(Arc::new(ServiceRt {
                    name: s.name.clone(),
                    listen: s.listen,
                    protocol: s.protocol(),
                    forward: forwarding.mode(),
                    forwarding,
                    pool: Arc::clone(pool),
                    sni_routes: s
                        .sni_routes()
                        .iter()
                        .filter_map(|r| {
                            let p = pools.iter().find(|p| p.name == r.pool)?;
                            Some((r.sni.clone(), Arc::clone(p)))
                        })
                        .collect(),
                    proxy_protocol,
                    max_connections: u64::from(s.max_connections.get()),
                    max_flows: u64::from(
                        s.max_flows()
                            .unwrap_or(fulcrum_core::model::defaults::MAX_FLOWS)
                            .min(s.max_connections)
                            .get(),
                    ),
                    idle_timeout: s.idle_timeout,
                    drain_timeout: s.drain_timeout,
                    connect_timeout: s.connect_timeout().unwrap_or(defaults::CONNECT_TIMEOUT),
                    stats,
                    ext,
                    conn_log,
                    dns,
                    generation: self.generation,
                }))
            })
            .collect();
        Snapshot {
            generation: self.generation,
            services,
            pools,
        }
    }
}

/// Counts a change of `new`'s backend set or states against `prev` (the running version of
/// the pool), and how much of its hash table moved.
fn count_change(prev: Option<&PoolRt>, new: &PoolRt) {
    if prev.is_none_or(|o| o.backends != new.backends) {
        new.changes.fetch_add(1, Ordering::Relaxed);
        if let Some(ratio) = prev.and_then(|o| table_moved(o, new)) {
            new.moved.store(ratio.to_bits(), Ordering::Relaxed);
            tracing::info!(pool = %new.name, scheduler = %new.kind, moved_ratio = ratio, "pool changed: share of hash table slots that changed owner");
        }
    }
}

/// A tcp/udp service's connection log: the running one while its configuration holds,
/// else opened anew (the loader checked it opens; if it no longer does, none is kept and
/// that is said).
fn conn_log(
    s: &config::ServiceConfig,
    prev: Option<&Arc<ServiceRt>>,
) -> Option<Arc<crate::connlog::ConnLogger>> {
    if s.protocol() == fulcrum_core::model::ServiceProtocol::Http {
        return None;
    }
    let cfg = s.access_log()?;
    if let Some(l) = prev
        .and_then(|p| p.conn_log.as_ref())
        .filter(|l| l.cfg == *cfg)
    {
        return Some(Arc::clone(l));
    }
    match crate::connlog::ConnLogger::open(cfg) {
        Ok(l) => Some(Arc::new(l)),
        Err(e) => {
            tracing::error!(service = %s.name, "{e}; no connection log");
            None
        }
    }
}

/// The share of hash-table slots (`maglev`) or hash space (`ring_hash`) whose owner differs
/// between two versions of a pool; `None` for other schedulers.
fn table_moved(old: &PoolRt, new: &PoolRt) -> Option<f64> {
    if let (Some(a), Some(b)) = (old.scheduler.as_maglev(), new.scheduler.as_maglev()) {
        return Some(sched::moved_ratio(a, &old.backends, b, &new.backends));
    }
    if let (Some(a), Some(b)) = (old.scheduler.as_ring_hash(), new.scheduler.as_ring_hash()) {
        return Some(sched::ring_hash::moved_ratio(
            a,
            &old.backends,
            b,
            &new.backends,
        ));
    }
    None
}

/// Health state machines for a new backend: up at start (as `HAProxy` does, so a fresh
/// instance serves at once; the first active check runs within a tenth of an interval).
fn new_health(pool: &PoolConfig) -> BackendHealth {
    let active = pool.health.as_ref().map_or(ActiveHealth::unchecked(), |h| {
        ActiveHealth::new(h.rise.get(), h.fall.get())
    });
    let o = pool.outlier;
    BackendHealth::new(
        active,
        Outlier::new(o.consecutive_failures.get(), o.ejection),
    )
}

fn log_transition(pool: &str, backend: SocketAddr, t: Transition) -> bool {
    if t.to == BackendState::Up {
        tracing::info!(pool, %backend, from = %t.from, to = %t.to, "backend state changed");
    } else {
        tracing::warn!(pool, %backend, from = %t.from, to = %t.to, "backend state changed");
    }
    t.from != t.to
}

/// A sender for [`Control`] messages.
pub type ControlSender = UnboundedSender<Control>;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(a: &[&str], b: &[&str]) -> Config {
        let mut text = String::new();
        for (name, backends) in [("a", a), ("b", b)] {
            text += "[[pool]]\nname = \"";
            text += name;
            text += "\"\nscheduler = \"maglev\"\n";
            for addr in backends {
                text += "[[pool.backend]]\naddress = \"";
                text += addr;
                text += "\"\n";
            }
        }
        match config::parse(&text) {
            Ok(c) => c,
            Err(e) => panic!("test config does not parse: {e:?}\n{text}"),
        }
    }

    async fn controller(cfg: Config) -> (Controller, UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(tx, crate::snapshot::RelayMode::default(), None));
        let workers = Workers::new(Vec::new(), Vec::new());
        let c = Controller::start(shared, workers, PathBuf::from("unused.toml"), cfg)
            .await
            .expect("the controller starts");
        (c, rx)
    }

    fn pool(c: &Controller, name: &str) -> Arc<PoolRt> {
        let snap = c.shared.snapshot.load();
        Arc::clone(snap.pool(name).expect("the pool runs"))
    }

    /// What a pool's snapshot value holds that a change could touch: its backends (address,
    /// weight, state) and which tracked backend each is.
    fn seen(p: &PoolRt) -> Vec<(Backend, u32)> {
        p.backends
            .iter()
            .cloned()
            .zip(p.stats.iter().map(|s| s.id))
            .collect()
    }

    use fulcrum_core::model::Backend;

    /// A change of one pool (a backend added, a backend drained) builds that pool anew and
    /// shares the other's value (its scheduler table too) with the running snapshot; the
    /// result is what building every pool gives.
    #[tokio::test]
    async fn a_change_of_one_pool_leaves_the_others_as_they_are() {
        let b_addrs = ["10.0.1.1:80", "10.0.1.2:80"];
        let (mut c, _events) = controller(config(&["10.0.0.1:80", "10.0.0.2:80"], &b_addrs)).await;
        let (a0, b0) = (pool(&c, "a"), pool(&c, "b"));

        // An admin API add: pool a only.
        let added = config(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], &b_addrs);
        c.apply_checked(added).await.expect("the add applies");
        let (a1, b1) = (pool(&c, "a"), pool(&c, "b"));
        assert!(Arc::ptr_eq(&b0, &b1), "pool b was built again");
        assert!(Arc::ptr_eq(&b0.scheduler, &b1.scheduler));
        assert!(!Arc::ptr_eq(&a0, &a1));
        assert_eq!(a1.backends.len(), 3);
        assert_eq!(
            a1.changes.load(Ordering::Relaxed),
            a0.changes.load(Ordering::Relaxed)
        );
        assert!(
            a1.changes.load(Ordering::Relaxed) >= 2,
            "the add is counted"
        );

        // An operator drain in pool b: b only.
        let drained: SocketAddr = "10.0.1.2:80".parse().expect("an address");
        c.drain("b", drained).await.expect("the drain applies");
        let (a2, b2) = (pool(&c, "a"), pool(&c, "b"));
        assert!(Arc::ptr_eq(&a1, &a2), "pool a was built again");
        assert!(!Arc::ptr_eq(&b1, &b2));
        assert_eq!(b2.backends[1].state, BackendState::Draining);

        // A passive failure that ejects nothing changes no pool.
        c.on_event(Event::Passive {
            pool: "a".into(),
            backend: "10.0.0.1:80".parse().expect("an address"),
            ok: false,
        });
        c.rebuild().await;
        assert!(Arc::ptr_eq(&a2, &pool(&c, "a")));
        assert!(Arc::ptr_eq(&b2, &pool(&c, "b")));

        // Building every pool gives the same values.
        c.stale = Stale::All;
        c.rebuild().await;
        let (a3, b3) = (pool(&c, "a"), pool(&c, "b"));
        assert!(!Arc::ptr_eq(&a2, &a3) && !Arc::ptr_eq(&b2, &b3));
        assert_eq!(seen(&a2), seen(&a3));
        assert_eq!(seen(&b2), seen(&b3));
    }

    /// Pool a with the `listed` backends (198.18.x.y, weights), and pool b.
    fn patch_config(listed: &[(u32, u16)]) -> Config {
        use std::fmt::Write as _;
        let mut t = String::from(
            "[[pool]]\nname = \"a\"\nscheduler = \"maglev\"\n\
             [pool.outlier]\nconsecutive_failures = 2\nejection = \"100ms\"\n",
        );
        for (i, w) in listed {
            let _ = write!(
                t,
                "[[pool.backend]]\naddress = \"198.18.{}.{}:80\"\nweight = {w}\n",
                i / 200,
                i % 200 + 1
            );
        }
        t += "[[pool]]\nname = \"b\"\n[[pool.backend]]\naddress = \"198.19.0.1:80\"\n";
        match config::parse(&t) {
            Ok(c) => c,
            Err(e) => panic!("test config does not parse: {e:?}\n{t}"),
        }
    }
    fn patch_addr(i: u32) -> SocketAddr {
        SocketAddr::from(([198, 18, (i / 200) as u8, (i % 200 + 1) as u8], 80))
    }
    /// The running pools against the whole computation from the controller's state.
    fn check_patched(c: &Controller, step: usize) {
        let now = c.shared.now();
        let up = |s: &[Arc<BackendStats>]| -> Vec<Option<Duration>> {
            s.iter().map(|s| s.signals.up_for(now)).collect()
        };
        for p in &c.config.pools {
            let running = pool(c, &p.name);
            let before = up(&running.stats);
            let mut full = c.pool_parts(p, Some(&running));
            assert_eq!(full.backends, running.backends, "step {step}");
            let stats = full.settle();
            assert_eq!(stats.len(), running.stats.len(), "step {step}");
            for (a, b) in stats.iter().zip(&running.stats) {
                assert!(Arc::ptr_eq(a, b), "step {step}: another tracked backend");
            }
            assert_eq!(
                up(&running.stats),
                before,
                "step {step}: a slow start moved"
            );
        }
    }

    /// The running pool with only its marked backends looked up
    /// ([`Controller::pool_parts_patched`], what a backend change builds) is what looking
    /// every backend up gives ([`Controller::pool_parts`]): the same backends, states and
    /// tracked stats, and no slow-start time the full computation would set differently.
    /// Over a seeded run of adds (anywhere in the list, addresses coming back), removals,
    /// re-weights (to 0 too), operator drains and ejections.
    #[tokio::test]
    async fn a_patched_pool_is_what_the_whole_computation_gives() {
        let mut listed: Vec<(u32, u16)> = (0..30).map(|i| (i, 1)).collect();
        let (mut c, _events) = controller(patch_config(&listed)).await;
        let mut x = 0x5eed_u64;
        let mut rand = |n: usize| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % n as u64) as usize
        };
        let (mut patched, mut ejected, mut ended, mut seen_ejected) = (0, 0, 0, false);
        for step in 0..300 {
            let at = rand(listed.len());
            let a = patch_addr(listed[at].0);
            match rand(6) {
                0 | 1 => {
                    // An address not listed, from a small range so that some come back.
                    let from = rand(60) as u32;
                    let i = (0..60)
                        .map(|k| (k + from) % 60)
                        .find(|i| listed.iter().all(|(j, _)| j != i));
                    if let Some(i) = i {
                        listed.insert(rand(listed.len() + 1), (i, (rand(3) + 1) as u16));
                    }
                    c.apply_checked(patch_config(&listed))
                        .await
                        .expect("an add applies");
                }
                2 if listed.len() > 1 => {
                    listed.remove(at);
                    c.apply_checked(patch_config(&listed))
                        .await
                        .expect("a removal applies");
                }
                3 => {
                    listed[at].1 = rand(3) as u16;
                    c.apply_checked(patch_config(&listed))
                        .await
                        .expect("a re-weight applies");
                }
                4 => c.drain("a", a).await.expect("a drain applies"),
                _ => {
                    // Passive failures (two eject); built here to see which way.
                    for _ in 0..2 {
                        c.on_event(Event::Passive {
                            pool: "a".into(),
                            backend: a,
                            ok: false,
                        });
                    }
                    let build = c.prepare();
                    for p in &build.pools {
                        if let PoolBuild::New(parts, _) = p {
                            ejected += 1;
                            patched += usize::from(matches!(parts.stats, StatsParts::Patched(..)));
                        }
                    }
                    let old = c.shared.snapshot.swap(Arc::new(build.run()));
                    drop(old);
                }
            }
            check_patched(&c, step);
            let walked = c
                .backends
                .values()
                .filter_map(|t| t.health.ejected_until())
                .min();
            assert_eq!(c.next_ejection_end(), walked, "step {step}");
            seen_ejected |= pool(&c, "a")
                .backends
                .iter()
                .any(|b| b.state == BackendState::Ejected);
            // Ejections last 100 ms: some end during the run.
            if c.poll_ejections() {
                ended += 1;
                c.rebuild().await;
                check_patched(&c, step);
            }
        }
        assert!(
            ejected > 10 && patched == ejected,
            "{patched} of {ejected} patched"
        );
        // What the run reached.
        let a = pool(&c, "a");
        let states: HashSet<BackendState> = a.backends.iter().map(|b| b.state).collect();
        assert!(states.contains(&BackendState::Draining), "{states:?}");
        assert!(
            seen_ejected && ended > 0,
            "ejections: seen {seen_ejected}, {ended} ended"
        );
    }

    /// A change of a pool's settings takes the whole plan: every pool is built anew.
    #[tokio::test]
    async fn a_reload_builds_every_pool() {
        let (mut c, _events) = controller(config(&["10.0.0.1:80"], &["10.0.1.1:80"])).await;
        let (a0, b0) = (pool(&c, "a"), pool(&c, "b"));
        // A pool setting changed: the whole plan, every pool anew.
        let mut cfg = config(&["10.0.0.1:80"], &["10.0.1.1:80"]);
        cfg.pools[1].sticky_cookie = Some("srv".into());
        c.apply_checked(cfg).await.expect("the reload applies");
        let (a1, b1) = (pool(&c, "a"), pool(&c, "b"));
        assert!(!Arc::ptr_eq(&a0, &a1) && !Arc::ptr_eq(&b0, &b1));
        assert_eq!(b1.sticky_cookie.as_deref(), Some("srv"));
        assert_eq!(seen(&a0), seen(&a1));
    }
}
