//! `rr`: plain round robin over the eligible backends, ignoring weights (as IPVS `rr`).

use std::sync::atomic::AtomicUsize;

use super::common::{rotate, Eligible};
use super::{PickError, PickRequest, Rotation, RotationId, Scheduler};
use crate::model::{Backend, SchedulerKind};

/// Round robin: each eligible backend in listing order, one after the other.
#[derive(Debug)]
pub struct RoundRobin {
    eligible: Eligible,
    next: AtomicUsize,
    /// Tells this rotation from any other ([`Rotation::id`]).
    id: RotationId,
}

impl RoundRobin {
    /// Builds the rotation over the eligible backends of `backends`.
    pub fn new(backends: &[Backend]) -> Self {
        Self {
            eligible: Eligible::new(backends),
            next: AtomicUsize::new(0),
            id: RotationId::fresh(),
        }
    }
}

impl Scheduler for RoundRobin {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::RoundRobin
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        let idx = &self.eligible.idx;
        if idx.is_empty() {
            return Err(self.eligible.error());
        }
        let start = rotate(&self.next, idx.len());
        idx[start..]
            .iter()
            .chain(&idx[..start])
            .copied()
            .find(|i| !req.exclude.contains(i))
            .ok_or_else(|| self.eligible.error())
    }

    fn rotation(&self) -> Option<Rotation<'_>> {
        Some(Rotation::indices(&self.eligible.idx, &self.next, self.id))
    }
}
