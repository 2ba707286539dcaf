//! `wrr`: smooth weighted round robin (nginx's algorithm), precomputed for one full cycle.
//!
//! The weights of the eligible backends are divided by their gcd, and the smooth sequence of
//! one cycle (each backend exactly `w / gcd` times, interleaved with no bursts) is computed
//! once at build time and walked with an atomic counter. If a cycle would exceed
//! [`MAX_CYCLE`] entries, the weights are first scaled down proportionally
//! (`max(1, w * MAX_CYCLE / sum)`), so the spread is then exact only up to that rounding.

use std::sync::atomic::AtomicUsize;

use super::common::{first_candidate, rotate, smooth_sequence, Eligible};
use super::{PickError, PickRequest, Rotation, RotationId, Scheduler};
use crate::model::{Backend, SchedulerKind};

/// The longest precomputed cycle, in picks.
pub const MAX_CYCLE: u64 = 65536;

/// Smooth weighted round robin.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    eligible: Eligible,
    /// One full cycle: indices into the backend slice.
    cycle: Vec<u32>,
    next: AtomicUsize,
    /// Tells this rotation from any other ([`Rotation::id`]).
    id: RotationId,
}

impl WeightedRoundRobin {
    /// Precomputes the cycle over the eligible backends of `backends` (listing order).
    pub fn new(backends: &[Backend]) -> Self {
        let eligible = Eligible::new(backends);
        let cycle = smooth_sequence(&eligible.weights(backends), MAX_CYCLE)
            .into_iter()
            .map(|pos| eligible.idx[pos as usize] as u32)
            .collect();
        Self {
            eligible,
            cycle,
            next: AtomicUsize::new(0),
            id: RotationId::fresh(),
        }
    }

    /// One full cycle of picks (indices into the backend slice).
    pub fn cycle(&self) -> &[u32] {
        &self.cycle
    }
}

impl Scheduler for WeightedRoundRobin {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::WeightedRoundRobin
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        // The cycle's next position; after an excluded backend, the next one in the cycle.
        let pos = (!self.cycle.is_empty()).then(|| rotate(&self.next, self.cycle.len()));
        first_candidate(&self.eligible, &self.cycle, pos, req.exclude)
    }

    fn rotation(&self) -> Option<Rotation<'_>> {
        Some(Rotation::cycle(&self.cycle, &self.next, self.id))
    }
}
