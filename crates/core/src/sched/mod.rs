//! Schedulers: every algorithm of the contract behind one small trait.
//!
//! A scheduler is built from one pool's backend list (a slice of [`Backend`]) and answers
//! with an index into that slice. It is rebuilt whenever the list or a backend's state
//! changes (the IO layer swaps in a new snapshot); hashing schedulers build their tables from
//! the *eligible* backends only, so their choice is a pure function of that set.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Backend, Now, PrimeTableSize, SchedulerKind};

mod common;
pub mod lc;
pub mod least_request;
pub mod maglev;
pub mod p2c;
pub mod peak_ewma;
pub mod predictive;
pub mod random;
pub mod ring_hash;
pub mod rr;
mod scored;
pub mod sh;
pub mod signals;
pub mod slow_start;
pub mod wrr;

pub use maglev::{moved_ratio, Maglev};
pub use ring_hash::RingHash;
pub use signals::Signals;

/// Active connection counts (HTTP: in-flight requests), as the IO layer keeps them (per
/// index of the backend slice), and the latency-aware schedulers' per-backend state.
pub trait Loads {
    fn active(&self, idx: usize) -> u64;
    /// The backend's [`Signals`] (response-time samples, when it came up), if the caller
    /// keeps them; `None` counts as no sample and up for ever.
    fn signals(&self, _idx: usize) -> Option<&Signals> {
        None
    }
}

impl Loads for [u64] {
    fn active(&self, idx: usize) -> u64 {
        self.get(idx).copied().unwrap_or(0)
    }
}

impl Loads for Vec<u64> {
    fn active(&self, idx: usize) -> u64 {
        self.as_slice().active(idx)
    }
}

impl<const N: usize> Loads for [u64; N] {
    fn active(&self, idx: usize) -> u64 {
        self.as_slice().active(idx)
    }
}

/// No load information (for schedulers and tests that do not need it).
pub struct NoLoads;
impl Loads for NoLoads {
    fn active(&self, _idx: usize) -> u64 {
        0
    }
}

/// Everything one pick may use. The core has no RNG and no clock: the caller passes them.
pub struct PickRequest<'a> {
    /// The flow hash of the pool's hash key ([`crate::hash`]); used by `sh`/`maglev`/`ring_hash`.
    pub hash: u32,
    /// A fresh random number from the caller; used by random/p2c.
    pub random: u64,
    /// Active connections per backend index; used by lc/wlc/p2c.
    pub loads: &'a dyn Loads,
    /// Backend indices already tried for this flow (failed connects): never chosen again.
    pub exclude: &'a [usize],
    /// The caller's clock (`peak_ewma` and `predictive` decay their averages by it; slow start
    /// ramps by it).
    pub now: Now,
}

/// Why no backend could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("no backend available: all {total} backends are down, draining, ejected or weight 0")]
    NoneEligible { total: usize },
    #[error("no backend left to try: all {tried} eligible backends were already tried")]
    AllTried { tried: usize },
}

/// Scheduler options from the pool's config.
#[derive(Debug, Clone, Copy)]
pub struct SchedOptions {
    pub maglev_table_size: PrimeTableSize,
    /// `peak_ewma`/`predictive`: the half-life of the response-time averages.
    pub half_life: Duration,
    /// `predictive`: how far ahead the forecast looks.
    pub horizon: Duration,
    /// `least_request`: `active_request_bias` (Envoy's; 0 ignores load).
    pub active_request_bias: f64,
    /// The slow-start window of a backend that comes up (`None`: off).
    pub slow_start: Option<Duration>,
}

/// Defaults of the scheduler options (`[pool.scheduler_options]`).
pub mod option_defaults {
    use std::time::Duration;
    pub const HALF_LIFE: Duration = Duration::from_secs(5);
    pub const HORIZON: Duration = Duration::from_secs(1);
    pub const ACTIVE_REQUEST_BIAS: f64 = 1.0;
}

impl Default for SchedOptions {
    fn default() -> Self {
        Self {
            maglev_table_size: PrimeTableSize::DEFAULT,
            half_life: option_defaults::HALF_LIFE,
            horizon: option_defaults::HORIZON,
            active_request_bias: option_defaults::ACTIVE_REQUEST_BIAS,
            slow_start: None,
        }
    }
}

/// One scheduler instance for one backend list.
pub trait Scheduler: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> SchedulerKind;
    /// Picks an index into the backend slice the scheduler was built from.
    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError>;
    /// The Maglev table behind this scheduler, if it is `maglev` (for the data plane's map
    /// and for [`moved_ratio`]).
    fn as_maglev(&self) -> Option<&Maglev> {
        None
    }
    /// The ring behind this scheduler, if it is `ring_hash` (for `explain` and
    /// [`ring_hash::moved_ratio`]).
    fn as_ring_hash(&self) -> Option<&RingHash> {
        None
    }
    /// The table behind this scheduler, if it is `sh` (for `explain`).
    fn as_source_hash(&self) -> Option<&sh::SourceHash> {
        None
    }
    /// Folds a response-time sample of a backend into its `signals` (the latency-aware
    /// schedulers; the others ignore samples).
    fn observe(&self, _signals: &Signals, _sample: Duration, _now: Now) {}
    /// Folds the duration of a completed L4 connection to a backend into its `signals`
    /// (`peak_ewma`; the others ignore it).
    fn observe_connection(&self, _signals: &Signals, _duration: Duration, _now: Now) {}
    /// Whether [`Self::observe_connection`] does anything, and whether the open connections'
    /// ages ([`Signals::connection_opened`]) are read: only then does the L4 proxy read the
    /// clock when a connection ends and count its connections open (two clock reads and two
    /// atomic updates per connection saved for every other scheduler).
    fn observes_connections(&self) -> bool {
        false
    }
    /// The score this scheduler gives backend `idx` at `now` (lower wins), for schedulers
    /// that score (`least_request`, `peak_ewma`, `predictive`), for `explain` and metrics.
    fn score(&self, _loads: &dyn Loads, _idx: usize, _now: Now) -> Option<f64> {
        None
    }
    /// The response time (ns) this scheduler believes of backend `idx` at `now`: the peak
    /// EWMA (`peak_ewma`) or the forecast (`predictive`); for metrics and `explain`.
    fn latency_ns(&self, _loads: &dyn Loads, _idx: usize, _now: Now) -> Option<f64> {
        None
    }
    /// The slow-start window, if this scheduler ramps backends that come up.
    fn slow_start(&self) -> Option<Duration> {
        None
    }
    /// `rr` and `wrr` (not wrapped in slow start): the order they walk and the counter they
    /// walk it with ([`Rotation`]). `None` for every other scheduler.
    fn rotation(&self) -> Option<Rotation<'_>> {
        None
    }
}

/// How `rr` and `wrr` pick: each pick takes the counter's next value (modulo the order's
/// length) as a position in a fixed order of backend indices (`rr`: the eligible backends;
/// `wrr`: one smooth weighted cycle, which holds every eligible backend) and answers the
/// first entry from there on (wrapping) that is not excluded; when every entry is excluded
/// the pick fails, the counter advanced all the same. The picks are thus a pure function of
/// the counter's value and the exclusions, which lets the dns answerer precompute a
/// query's subset per position (`crate::dns`), and [`Rotation::pick_at`] is that function.
#[derive(Debug, Clone, Copy)]
pub struct Rotation<'a> {
    order: Order<'a>,
    next: &'a AtomicUsize,
    id: RotationId,
}

#[derive(Debug, Clone, Copy)]
enum Order<'a> {
    Indices(&'a [usize]),
    Cycle(&'a [u32]),
}

impl<'a> Rotation<'a> {
    pub(crate) fn indices(order: &'a [usize], next: &'a AtomicUsize, id: RotationId) -> Self {
        Self {
            order: Order::Indices(order),
            next,
            id,
        }
    }

    pub(crate) fn cycle(order: &'a [u32], next: &'a AtomicUsize, id: RotationId) -> Self {
        Self {
            order: Order::Cycle(order),
            next,
            id,
        }
    }

    /// The number of positions.
    pub fn len(&self) -> usize {
        match self.order {
            Order::Indices(o) => o.len(),
            Order::Cycle(o) => o.len(),
        }
    }

    /// No positions: every pick fails.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn at(&self, pos: usize) -> Option<usize> {
        match self.order {
            Order::Indices(o) => o.get(pos).copied(),
            Order::Cycle(o) => o.get(pos).map(|&i| i as usize),
        }
    }

    /// The pick at position `pos` (see the type's doc); `None`: every entry is excluded.
    pub fn pick_at(&self, pos: usize, exclude: &[usize]) -> Option<usize> {
        let len = self.len();
        (0..len)
            .filter_map(|k| self.at((pos + k) % len))
            .find(|i| !exclude.contains(i))
    }

    /// Takes `picks` values of the counter at once (the counter moves as after that many
    /// picks); returns the position of the first (`None`: no positions).
    pub fn advance(&self, picks: usize) -> Option<usize> {
        let len = self.len();
        (len > 0).then(|| self.next.fetch_add(picks, Ordering::Relaxed) % len)
    }

    /// Which scheduler this is: unique among every scheduler this process built, so a value
    /// computed from one rotation can tell it is asked of that one (and not of a later
    /// scheduler, even one at the same address).
    pub fn id(&self) -> RotationId {
        self.id
    }
}

/// See [`Rotation::id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationId(u64);

impl RotationId {
    /// A fresh id, for a scheduler being built.
    pub(crate) fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Builds the scheduler `kind` over `backends` (only eligible backends are ever picked).
/// With `opts.slow_start`, a non-hashing scheduler is wrapped in [`slow_start::SlowStart`].
pub fn build(kind: SchedulerKind, backends: &[Backend], opts: &SchedOptions) -> Arc<dyn Scheduler> {
    let s = build_plain(kind, backends, opts);
    match opts.slow_start {
        Some(window) if !kind.is_hashing() && !window.is_zero() => {
            Arc::new(slow_start::SlowStart::new(s, window))
        }
        _ => s,
    }
}

/// [`build`], with `prev` (the running scheduler of the same pool, built from
/// `prev_backends`) to carry per-backend work over from where that gives the same
/// scheduler: a Maglev table ([`Maglev::new_after`]).
pub fn build_after(
    prev: &dyn Scheduler,
    prev_backends: &[Backend],
    kind: SchedulerKind,
    backends: &[Backend],
    opts: &SchedOptions,
) -> Arc<dyn Scheduler> {
    match (kind, prev.as_maglev()) {
        (SchedulerKind::Maglev, Some(m)) => Arc::new(Maglev::new_after(
            m,
            prev_backends,
            backends,
            opts.maglev_table_size,
        )),
        _ => build(kind, backends, opts),
    }
}

fn build_plain(
    kind: SchedulerKind,
    backends: &[Backend],
    opts: &SchedOptions,
) -> Arc<dyn Scheduler> {
    match kind {
        SchedulerKind::RoundRobin => Arc::new(rr::RoundRobin::new(backends)),
        SchedulerKind::WeightedRoundRobin => Arc::new(wrr::WeightedRoundRobin::new(backends)),
        SchedulerKind::LeastConn => Arc::new(lc::LeastLoaded::least_conn(backends)),
        SchedulerKind::WeightedLeastConn => Arc::new(lc::LeastLoaded::weighted(backends)),
        SchedulerKind::SourceHash => Arc::new(sh::SourceHash::new(backends)),
        SchedulerKind::Random => Arc::new(random::Random::new(backends)),
        SchedulerKind::PowerOfTwo => Arc::new(p2c::PowerOfTwo::new(backends)),
        SchedulerKind::Maglev => Arc::new(Maglev::new(backends, opts.maglev_table_size)),
        SchedulerKind::RingHash => Arc::new(RingHash::new(backends)),
        SchedulerKind::LeastRequest => Arc::new(least_request::LeastRequest::new(
            backends,
            opts.active_request_bias,
        )),
        SchedulerKind::PeakEwma => Arc::new(peak_ewma::PeakEwma::new(backends, opts.half_life)),
        SchedulerKind::Predictive => Arc::new(predictive::Predictive::new(
            backends,
            opts.half_life,
            opts.horizon,
        )),
    }
}
