//! `lc`: least connections: the eligible backend with the fewest active connections.
//!
//! Ties are shared: the scan starts at a position that rotates with every pick, and the first
//! backend with the minimum from there wins.

use std::sync::atomic::AtomicUsize;

use super::common::{rotate, Eligible};
use super::{PickError, PickRequest, Scheduler};
use crate::model::{Backend, SchedulerKind};

/// Least connections (weights only decide eligibility).
#[derive(Debug)]
pub struct LeastConn {
    eligible: Eligible,
    rotor: AtomicUsize,
}

impl LeastConn {
    /// Builds over the eligible backends of `backends`.
    pub fn new(backends: &[Backend]) -> Self {
        Self {
            eligible: Eligible::new(backends),
            rotor: AtomicUsize::new(0),
        }
    }
}

impl Scheduler for LeastConn {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::LeastConn
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        let idx = &self.eligible.idx;
        if idx.is_empty() {
            return Err(self.eligible.error());
        }
        let start = rotate(&self.rotor, idx.len());
        let mut best: Option<(usize, u64)> = None;
        for &i in idx[start..].iter().chain(&idx[..start]) {
            if req.exclude.contains(&i) {
                continue;
            }
            let active = req.loads.active(i);
            if best.is_none_or(|(_, b)| active < b) {
                best = Some((i, active));
            }
        }
        best.map(|(i, _)| i).ok_or_else(|| self.eligible.error())
    }
}
