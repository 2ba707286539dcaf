//! `random`: a weighted random choice, from the caller's `req.random`.
//!
//! A backend of weight `w` is chosen with probability `w / sum(weights)` over the eligible,
//! not excluded backends (`req.random` mapped to the cumulative weights by multiply-shift).

use super::common::WeightedPicker;
use super::{PickError, PickRequest, Scheduler};
use crate::model::{Backend, SchedulerKind};

/// Weighted random.
#[derive(Debug)]
pub struct Random {
    picker: WeightedPicker,
}

impl Random {
    /// Builds over the eligible backends of `backends`.
    pub fn new(backends: &[Backend]) -> Self {
        Self {
            picker: WeightedPicker::new(backends),
        }
    }
}

impl Scheduler for Random {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Random
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        let eligible = &self.picker.eligible;
        self.picker
            .pick_pos(req.random, req.exclude)
            .map(|k| eligible.idx[k])
            .ok_or_else(|| eligible.error())
    }
}
