//! Schedulers: every algorithm of the contract behind one small trait.
//!
//! A scheduler is built from one pool's backend list (a slice of [`Backend`]) and answers
//! with an index into that slice. It is rebuilt whenever the list or a backend's state
//! changes (the IO layer swaps in a new snapshot); hashing schedulers build their tables from
//! the *eligible* backends only, so their choice is a pure function of that set.

use std::sync::Arc;

use crate::model::{Backend, PrimeTableSize, SchedulerKind};

mod common;
pub mod lc;
pub mod maglev;
pub mod p2c;
pub mod random;
pub mod ring_hash;
pub mod rr;
pub mod sh;
pub mod wrr;

pub use maglev::{moved_ratio, Maglev};
pub use ring_hash::RingHash;

/// Active connection counts, as the IO layer keeps them (per index of the backend slice).
pub trait Loads {
    fn active(&self, idx: usize) -> u64;
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
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedOptions {
    pub maglev_table_size: PrimeTableSize,
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
}

/// Builds the scheduler `kind` over `backends` (only eligible backends are ever picked).
pub fn build(kind: SchedulerKind, backends: &[Backend], opts: &SchedOptions) -> Arc<dyn Scheduler> {
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
    }
}
