//! A pool as the proxy's `PoolRt` holds one (backends, their scheduler, the hash key,
//! active connections, backend ids), for the tests and benchmarks that drive
//! `choice::choose` and the dns answerer without the proxy. Included by `#[path]`.
#![allow(dead_code)]

use std::sync::Arc;

use fulcrum_core::choice::Pool;
use fulcrum_core::model::{Backend, HashKey, SchedulerKind};
use fulcrum_core::sched::{build, Loads, SchedOptions, Scheduler};

pub struct TestPool {
    pub backends: Vec<Backend>,
    pub scheduler: Arc<dyn Scheduler>,
    pub key: HashKey,
    /// Active connections per backend index (0 past the end).
    pub loads: Vec<u64>,
    /// The id of backend 0; backend `i` is `first_id + i`.
    pub first_id: u32,
}

impl TestPool {
    /// `backends` under a `kind` scheduler (default options); no load; ids from 0.
    pub fn new(kind: SchedulerKind, key: HashKey, backends: Vec<Backend>) -> Self {
        Self {
            scheduler: build(kind, &backends, &SchedOptions::default()),
            backends,
            key,
            loads: Vec::new(),
            first_id: 0,
        }
    }

    #[must_use]
    pub fn with_loads(mut self, loads: Vec<u64>) -> Self {
        self.loads = loads;
        self
    }

    #[must_use]
    pub fn with_first_id(mut self, first_id: u32) -> Self {
        self.first_id = first_id;
        self
    }
}

impl Loads for TestPool {
    fn active(&self, idx: usize) -> u64 {
        self.loads.active(idx)
    }
}

impl Pool for TestPool {
    fn backends(&self) -> &[Backend] {
        &self.backends
    }
    fn scheduler(&self) -> &dyn Scheduler {
        &*self.scheduler
    }
    fn hash_key(&self) -> &HashKey {
        &self.key
    }
    fn backend_id(&self, idx: usize) -> Option<u32> {
        u32::try_from(idx).ok()?.checked_add(self.first_id)
    }
    fn index_of(&self, id: u32) -> Option<usize> {
        let i = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        (i < self.backends.len()).then_some(i)
    }
}
