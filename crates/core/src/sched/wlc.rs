//! `wlc`: weighted least connections: the eligible backend with the lowest
//! `active / weight`, compared by cross-multiplying (`a1 * w2 < a2 * w1`, as IPVS).
//!
//! Ties are shared: the scan starts at a position that rotates with every pick.

use std::sync::atomic::AtomicUsize;

use super::common::{less_loaded, rotate, Eligible};
use super::{PickError, PickRequest, Scheduler};
use crate::model::{Backend, SchedulerKind};

/// Weighted least connections.
#[derive(Debug)]
pub struct WeightedLeastConn {
    eligible: Eligible,
    /// Weight per backend index (0 for ineligible ones).
    weights: Vec<u32>,
    rotor: AtomicUsize,
}

impl WeightedLeastConn {
    /// Builds over the eligible backends of `backends`.
    pub fn new(backends: &[Backend]) -> Self {
        Self {
            eligible: Eligible::new(backends),
            weights: backends.iter().map(|b| b.weight.get()).collect(),
            rotor: AtomicUsize::new(0),
        }
    }
}

impl Scheduler for WeightedLeastConn {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::WeightedLeastConn
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
            let better = best.is_none_or(|(b, b_active)| {
                less_loaded(active, self.weights[i], b_active, self.weights[b])
            });
            if better {
                best = Some((i, active));
            }
        }
        best.map(|(i, _)| i).ok_or_else(|| self.eligible.error())
    }
}
