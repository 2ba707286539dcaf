//! Schedulers: every algorithm of the contract behind one small trait.
//!
//! A scheduler is built from one pool's backend list (a slice of [`Backend`]) and answers
//! with an index into that slice. It is rebuilt whenever the list or a backend's state
//! changes (the IO layer swaps in a new snapshot); hashing schedulers build their tables from
//! the *eligible* backends only, so their choice is a pure function of that set.

use crate::model::{Backend, PrimeTableSize, SchedulerKind};

/// Active connection counts, as the IO layer keeps them (per index of the backend slice).
pub trait Loads {
    fn active(&self, idx: usize) -> u64;
}

impl Loads for [u64] {
    fn active(&self, idx: usize) -> u64 {
        self.get(idx).copied().unwrap_or(0)
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
    /// The flow hash of the pool's hash key ([`crate::hash`]); used by sh/maglev/ring_hash.
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
}
