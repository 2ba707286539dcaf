//! The running state as one immutable value, swapped whole by the controller (`arc-swap`).
//! The data path loads it once per new connection or flow (and the HTTP proxy once per
//! request) and never locks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fulcrum_core::choice::{self, Choice, Flow, Kept, Mode, Why};
use fulcrum_core::config::BackendProtocol;
use fulcrum_core::flow::FlowTable;
use fulcrum_core::locality::ZonePlan;
use fulcrum_core::model::{
    Backend, ForwardMode, HashKey, Proto, ProxyProtocol, SchedulerKind, ServiceProtocol,
};
use fulcrum_core::sched::{Loads, PickError, Scheduler};
use tokio::sync::mpsc::UnboundedSender;

use crate::l7::{L7Handler, ServiceExt};
use crate::stats::{BackendStats, GlobalStats, ServiceStats};

/// ipvsadm-style persistence: client IP -> backend id, shared by every snapshot of a pool.
#[derive(Debug)]
pub struct Persistence {
    pub timeout: Duration,
    pub table: Mutex<FlowTable>,
}

/// The scheduler's view of one backend (see [`PoolRt::view`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedView {
    /// `peak_ewma`: the peak EWMA; `predictive`: the forecast; seconds.
    pub latency: Option<f64>,
    /// `least_request`, `peak_ewma`, `predictive`: the score (lower wins).
    pub score: Option<f64>,
    /// The weight with slow start applied (0 when the backend takes no new flows).
    pub effective_weight: f64,
}

/// One pool as the data path sees it.
#[derive(Debug)]
pub struct PoolRt {
    pub name: String,
    pub kind: SchedulerKind,
    pub hash_key: HashKey,
    /// Backends with their effective state; the scheduler indexes into this.
    pub backends: Vec<Backend>,
    /// Parallel to `backends`.
    pub stats: Vec<Arc<BackendStats>>,
    pub scheduler: Arc<dyn Scheduler>,
    pub persistence: Option<Arc<Persistence>>,
    /// Counts changes of this pool's backend set or states (shared across snapshots).
    pub changes: Arc<AtomicU64>,
    /// `maglev`/`ring_hash`: the share of table slots (hash space) that changed owner at the
    /// pool's last change, as `f64` bits (shared across snapshots; see
    /// [`PoolRt::moved_ratio`]).
    pub moved: Arc<AtomicU64>,
    /// http: the affinity cookie Fulcrum sets (`[[pool]] sticky_cookie`).
    pub sticky_cookie: Option<String>,
    /// http: how the backends are spoken to (`[[pool]] backend_protocol`).
    pub backend_protocol: BackendProtocol,
    /// http: `[pool.tls]`, TLS to the backends (loaded by the HTTP handler).
    pub tls: Option<fulcrum_core::config::BackendTls>,
    /// `[pool.locality]`'s plan for these backends (`None`: none, or no zone can take a
    /// flow; see [`fulcrum_core::locality`]).
    pub locality: Option<Arc<ZonePlan>>,
}

impl Loads for PoolRt {
    fn active(&self, idx: usize) -> u64 {
        self.stats
            .get(idx)
            .map_or(0, |s| s.active.load(Ordering::Relaxed))
    }
    fn signals(&self, idx: usize) -> Option<&fulcrum_core::sched::Signals> {
        self.stats.get(idx).map(|s| &s.signals)
    }
}

impl PoolRt {
    /// Tells the scheduler a response time of backend `idx` (HTTP: request sent to answer
    /// head; L4: the connect), measured by the caller's clock at `now`.
    pub fn observe(&self, idx: usize, sample: Duration, now: Duration) {
        if let Some(s) = self.stats.get(idx) {
            self.scheduler.observe(&s.signals, sample, now);
        }
    }

    /// Tells the scheduler the duration of a completed L4 connection to backend `idx`,
    /// ended at `now` (`peak_ewma`'s connection term).
    /// Whether the scheduler uses L4 connections' ages and durations
    /// ([`Self::observe_connection`]).
    pub fn observes_connections(&self) -> bool {
        self.scheduler.observes_connections()
    }

    pub fn observe_connection(&self, idx: usize, duration: Duration, now: Duration) {
        if let Some(s) = self.stats.get(idx) {
            self.scheduler.observe_connection(&s.signals, duration, now);
        }
    }

    /// The scheduler's view of backend `idx` at `now` (metrics, `explain`).
    pub fn view(&self, idx: usize, now: Duration) -> SchedView {
        let weight = self.backends.get(idx).map_or(0.0, |b| {
            if b.is_eligible() {
                let f = self.scheduler.slow_start().map_or(1.0, |w| {
                    fulcrum_core::sched::signals::slow_start_factor(
                        self.stats.get(idx).and_then(|s| s.signals.up_for(now)),
                        w,
                    )
                });
                f64::from(b.weight.get()) * f
            } else {
                0.0
            }
        });
        SchedView {
            latency: self.scheduler.latency_ns(self, idx, now).map(|ns| ns / 1e9),
            score: self.scheduler.score(self, idx, now),
            effective_weight: weight,
        }
    }

    /// `fulcrum_pool_table_moved_ratio`: the share of hash-table slots that changed owner at
    /// the last change of this pool (0 before any change).
    pub fn moved_ratio(&self) -> f64 {
        f64::from_bits(self.moved.load(Ordering::Relaxed))
    }

    /// The data path's choice of a backend for a new flow or request (L4 and HTTP):
    /// [`choice::choose`] with the persistence table locked across the lookup, the pick and
    /// the insert, so two connections of one client racing each other agree on its backend.
    pub fn choose(&self, flow: &Flow<'_>) -> Result<(usize, Why), PickError> {
        let mut guard = self.persistence.as_ref().and_then(|p| p.table.lock().ok());
        let c = choice::choose(self, flow, Mode::Pick(guard.as_deref_mut()))?;
        // `Mode::Pick` always names a backend.
        c.backend
            .map(|i| (i, c.why))
            .ok_or(PickError::NoneEligible {
                total: self.backends.len(),
            })
    }

    /// `explain`: the same choice, changing nothing (the persistence table is peeked at, no
    /// scheduler state moves), with the client's live persistence entry, if it was looked at.
    pub fn explain(&self, flow: &Flow<'_>) -> (Result<Choice, PickError>, Option<Kept>) {
        let guard = self.persistence.as_ref().and_then(|p| p.table.lock().ok());
        let mut kept = None;
        let mode = Mode::Explain {
            table: guard.as_deref(),
            kept: &mut kept,
        };
        (choice::choose(self, flow, mode), kept)
    }
}

impl choice::Pool for PoolRt {
    fn backends(&self) -> &[Backend] {
        &self.backends
    }
    fn scheduler(&self) -> &dyn Scheduler {
        &*self.scheduler
    }
    fn hash_key(&self) -> &HashKey {
        &self.hash_key
    }
    fn backend_id(&self, idx: usize) -> Option<u32> {
        self.stats.get(idx).map(|s| s.id)
    }
    fn index_of(&self, id: u32) -> Option<usize> {
        self.stats.iter().position(|s| s.id == id)
    }
    fn locality(&self) -> Option<&ZonePlan> {
        self.locality.as_deref()
    }
}

/// One service as the data path sees it.
#[derive(Debug)]
pub struct ServiceRt {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: ServiceProtocol,
    pub forward: ForwardMode,
    /// The forwarding mode with its options (tunnel kind and source: the XDP data plane).
    pub forwarding: fulcrum_core::config::Forwarding,
    pub pool: Arc<PoolRt>,
    /// tcp: TLS passthrough routes (`[[service.sni_route]]`), in order; `pool` is the
    /// default. Empty: no `ClientHello` is read.
    pub sni_routes: Vec<(fulcrum_core::config::HostMatch, Arc<PoolRt>)>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub max_connections: u64,
    /// udp: flows at most (the smaller of `max_flows` and `max_connections`).
    pub max_flows: u64,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    pub stats: Arc<ServiceStats>,
    /// State built by the L7 handler for services it serves (see [`crate::l7`]).
    pub ext: Option<ServiceExt>,
    /// tcp/udp: the connection log (`[service.access_log]`), kept across snapshots while
    /// its configuration stays the same.
    pub conn_log: Option<Arc<crate::connlog::ConnLogger>>,
    /// dns services: the zone and the pools its names use.
    pub dns: Option<Arc<DnsRt>>,
    /// The generation of the snapshot this value belongs to: a connection that outlives
    /// its snapshot (HTTP keep-alive) compares it with the running one's to know when to
    /// look its service up again.
    pub generation: u64,
}

/// A dns service's zone with the pools of its names ([`fulcrum_core::dns::Zone::pools`]'s
/// order).
#[derive(Debug)]
pub struct DnsRt {
    pub zone: fulcrum_core::dns::Zone,
    pub pools: Vec<Arc<PoolRt>>,
}

impl DnsRt {
    /// Answers one query ([`fulcrum_core::dns::answer`]) and counts it: the service's
    /// `fulcrum_dns_queries_total`, each answered backend's `dns_answers`.
    pub fn answer(
        &self,
        stats: &ServiceStats,
        q: &fulcrum_core::dns::Incoming<'_>,
        rrl: Option<&mut fulcrum_core::dns::Rrl>,
    ) -> fulcrum_core::dns::Outcome {
        let out = fulcrum_core::dns::answer(&self.zone, self.pools.as_slice(), q, rrl);
        stats.dns.count(&out);
        self.add_answers(out.answered.iter().map(|&at| (at, 1)));
        out
    }

    /// [`DnsRt::answer`] for one query of a batch, into the caller's buffers
    /// ([`fulcrum_core::dns::answer_into`]: the UDP loop keeps them across queries, so the
    /// common query allocates nothing). The answered backends are added up in `tally`, and
    /// [`DnsRt::flush`] adds the tally to their `dns_answers` once per batch. Why: counting them one by one took an atomic increment per backend in the
    /// answer (ten per query under `bench/dns.py`), a locked instruction each.
    pub fn answer_tallied(
        &self,
        stats: &ServiceStats,
        q: &fulcrum_core::dns::Incoming<'_>,
        rrl: Option<&mut fulcrum_core::dns::Rrl>,
        reply: &mut Vec<u8>,
        answered: &mut Vec<(usize, usize)>,
        tally: &mut AnswerTally,
    ) -> fulcrum_core::dns::Summary {
        let out = fulcrum_core::dns::answer_into(
            &self.zone,
            self.pools.as_slice(),
            q,
            rrl,
            reply,
            answered,
        );
        stats
            .dns
            .count_one(out.qtype, out.rcode, out.dropped.is_some());
        tally.add(answered);
        out
    }

    /// Adds `tally` (filled by [`DnsRt::answer_tallied`] with this same value) to the
    /// backends' `dns_answers` and empties it.
    pub fn flush(&self, tally: &mut AnswerTally) {
        self.add_answers(tally.drain());
    }

    /// Adds `n` to the `dns_answers` of each (pool index, backend index).
    fn add_answers(&self, counts: impl Iterator<Item = ((usize, usize), u64)>) {
        for ((p, b), n) in counts {
            if let Some(s) = self.pools.get(p).and_then(|p| p.stats.get(b)) {
                s.dns_answers.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Answers per backend of a batch of dns queries, by pool index and backend index, not
/// yet added to the backends' counters ([`DnsRt::answer_tallied`]).
#[derive(Debug, Default)]
pub struct AnswerTally {
    counts: Vec<Vec<u64>>,
}

impl AnswerTally {
    fn add(&mut self, answered: &[(usize, usize)]) {
        for &(p, b) in answered {
            if self.counts.len() <= p {
                self.counts.resize_with(p + 1, Vec::new);
            }
            let Some(pool) = self.counts.get_mut(p) else {
                continue;
            };
            if pool.len() <= b {
                pool.resize(b + 1, 0);
            }
            if let Some(n) = pool.get_mut(b) {
                *n += 1;
            }
        }
    }

    /// The non-zero counts, each set back to zero as it is taken.
    fn drain(&mut self) -> impl Iterator<Item = ((usize, usize), u64)> + '_ {
        self.counts.iter_mut().enumerate().flat_map(|(p, pool)| {
            pool.iter_mut()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(move |(b, n)| ((p, b), std::mem::take(n)))
        })
    }
}

/// Everything running, as one value.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub services: Vec<Arc<ServiceRt>>,
    pub pools: Vec<Arc<PoolRt>>,
}

impl Snapshot {
    /// The service listening on `addr` for `proto` (http services listen on TCP).
    pub fn service_at(&self, proto: Proto, addr: SocketAddr) -> Option<&Arc<ServiceRt>> {
        self.services.iter().find(|s| {
            s.listen == addr
                && match proto {
                    Proto::Tcp => s.protocol != ServiceProtocol::Udp,
                    Proto::Udp => matches!(s.protocol, ServiceProtocol::Udp | ServiceProtocol::Dns),
                }
        })
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<PoolRt>> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// What the data path and health checkers tell the controller.
#[derive(Debug)]
pub enum Event {
    /// An active health check result.
    Check {
        pool: String,
        backend: SocketAddr,
        ok: bool,
    },
    /// A passive result from real traffic: a failed connect (`ok: false`), or the first
    /// success after failures.
    Passive {
        pool: String,
        backend: SocketAddr,
        ok: bool,
    },
    /// The pool's discovery task (`task`: its id) has a new set of discovered backends
    /// (see [`crate::discovery`]).
    Discovered {
        pool: String,
        task: u64,
        backends: Vec<Backend>,
    },
}

/// State shared by the workers, the controller and the admin API.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// How TCP relays move bytes (`fulcrum run --relay`).
    pub relay_mode: RelayMode,
    /// The handler of L7 services (HTTP), if this binary has one.
    pub l7: Option<Arc<dyn L7Handler>>,
    pub events: UnboundedSender<Event>,
    pub global: GlobalStats,
    /// VIP announcement: the instance drain flag and what the BGP speaker holds.
    pub announce: crate::announce::AnnounceState,
    /// The controller's discovery failures, for the metrics endpoint.
    pub discovery_errors: Arc<crate::discovery::DiscoveryErrors>,
    /// The fleet as this instance sees it (`[cluster]`); `None` without `[cluster]`.
    /// Written whole by the cluster task, read by the admin API and the metrics.
    pub cluster: arc_swap::ArcSwapOption<fulcrum_core::cluster::ClusterStatus>,
    /// The source of `[pool.discovery] etcd` (registered backends); set by the binary on
    /// instances with `[cluster]` ([`Shared::with_registry`]).
    pub registry: Option<Arc<dyn crate::discovery::Registry>>,
    /// This instance's active checks' verdicts (backends of pools with active checks),
    /// written by the controller when one changes; the cluster task publishes them to the
    /// fleet (`[cluster]`, docs/cluster.md).
    pub local_health: tokio::sync::watch::Sender<Arc<fulcrum_core::fleet_health::Verdicts>>,
    /// The fleet's health as this instance sees it (`[cluster]`); `None` without
    /// `[cluster]`. Written whole by the cluster task, read by the admin API.
    pub fleet_health: arc_swap::ArcSwapOption<fulcrum_core::fleet_health::FleetHealthStatus>,
    /// UDP flows across a binary upgrade (exported by the old process, kept by the new).
    pub udp_handover: crate::udp_handover::UdpHandover,
    epoch: Instant,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Shared {
    pub fn new(
        events: UnboundedSender<Event>,
        relay_mode: RelayMode,
        l7: Option<Arc<dyn L7Handler>>,
    ) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            relay_mode,
            l7,
            events,
            global: GlobalStats::default(),
            announce: crate::announce::AnnounceState::default(),
            discovery_errors: Arc::default(),
            cluster: arc_swap::ArcSwapOption::empty(),
            registry: None,
            local_health: tokio::sync::watch::Sender::new(Arc::default()),
            fleet_health: arc_swap::ArcSwapOption::empty(),
            udp_handover: crate::udp_handover::UdpHandover::default(),
            epoch: Instant::now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// With `registry` as the source of `[pool.discovery] etcd`.
    #[must_use]
    pub fn with_registry(mut self, registry: Arc<dyn crate::discovery::Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Monotonic time for the core's state machines and tables.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
    /// `/readyz`: every service listening, not draining, and the instance not drained
    /// (`fulcrum ctl instance drain`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining() && !self.announce.is_drained()
    }

    /// Reports a passive result for `stats`' backend. Successes are only reported after a
    /// failure, so the channel carries nothing while a backend is healthy.
    pub fn report_passive(&self, stats: &BackendStats, ok: bool) {
        if ok {
            if stats.consecutive_failures.load(Ordering::Relaxed) == 0 {
                return;
            }
            stats.consecutive_failures.store(0, Ordering::Relaxed);
        } else {
            stats.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.events.send(Event::Passive {
            pool: stats.pool.clone(),
            backend: stats.address,
            ok,
        });
    }
}

/// How the L4 relay moves bytes (`fulcrum_proxy::relay`): a buffered copy, `splice(2)`, or
/// copy that switches to splice once a read fills the whole buffer, or the in-kernel relay
/// (`fulcrum_proxy::kernel_relay`, a sockmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayMode {
    Copy,
    Splice,
    #[default]
    Auto,
    Sockmap,
}
