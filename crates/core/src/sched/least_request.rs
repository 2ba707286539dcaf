//! `least_request`: the fewest outstanding requests per unit of weight (Envoy's
//! `LEAST_REQUEST`). HTTP counts in-flight requests per backend (a pooled connection carries
//! many), L4 open connections.
//!
//! - Every eligible weight equal: the lowest `outstanding` wins, by a full scan when at most
//!   [`FULL_SCAN_MAX`] backends are eligible, else by power of two choices (as Envoy).
//! - Weights differ: smooth weighted round robin (nginx's) over the *dynamic* weights
//!   `weight / (outstanding + 1) ^ active_request_bias` (Envoy's unequal-weight behaviour,
//!   with its `active_request_bias`, default 1). With no load this is exactly `wrr`; a backend
//!   holding more requests gets proportionally fewer new ones. The running "current weights"
//!   are atomics: concurrent picks may interleave, never lock.

use std::sync::atomic::{AtomicI64, Ordering};

use super::common::WeightedPicker;
use super::scored::{full_scan, two_choices};
use super::{PickError, PickRequest, Scheduler};
use crate::model::{Backend, SchedulerKind};

/// Pools with at most this many eligible backends are scanned in full.
pub const FULL_SCAN_MAX: usize = 8;

/// Fixed-point scale of the dynamic weights in the smooth round robin.
const SCALE: f64 = 1024.0;

/// Least outstanding requests.
#[derive(Debug)]
pub struct LeastRequest {
    picker: WeightedPicker,
    bias: f64,
    /// Weights differ: the smooth round robin's current weight per eligible position.
    current: Option<Vec<AtomicI64>>,
}

impl LeastRequest {
    /// Builds over the eligible backends of `backends`; `bias` is `active_request_bias`.
    pub fn new(backends: &[Backend], bias: f64) -> Self {
        let picker = WeightedPicker::new(backends);
        let uneven = picker.weights.windows(2).any(|w| w[0] != w[1]);
        let current = uneven.then(|| picker.weights.iter().map(|_| AtomicI64::new(0)).collect());
        Self {
            picker,
            bias,
            current,
        }
    }

    /// The dynamic weight of a backend of weight `w` holding `active` requests.
    pub fn dynamic_weight(&self, w: u32, active: u64) -> f64 {
        let load = (active as f64 + 1.0).powf(self.bias);
        f64::from(w) / load
    }
}

impl Scheduler for LeastRequest {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::LeastRequest
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        let p = &self.picker;
        let Some(current) = &self.current else {
            let score = |i: usize, _w: u32| req.loads.active(i) as f64;
            return if p.eligible.idx.len() <= FULL_SCAN_MAX {
                full_scan(p, req, score)
            } else {
                two_choices(p, req, score)
            };
        };
        // Smooth weighted round robin over the dynamic weights.
        let mut best: Option<(usize, i64)> = None;
        let mut total = 0i64;
        for (k, &i) in p.eligible.idx.iter().enumerate() {
            if req.exclude.contains(&i) {
                continue;
            }
            let dw = self.dynamic_weight(p.weights[k], req.loads.active(i));
            // At least 1, so a loaded backend still moves up in turn.
            let dw = ((dw * SCALE) as i64).max(1);
            total += dw;
            let c = current[k].fetch_add(dw, Ordering::Relaxed) + dw;
            if best.is_none_or(|(_, b)| c > b) {
                best = Some((k, c));
            }
        }
        let (k, _) = best.ok_or_else(|| p.eligible.error())?;
        current[k].fetch_sub(total, Ordering::Relaxed);
        Ok(p.eligible.idx[k])
    }

    /// `(outstanding + 1) ^ bias / weight`: the inverse of the dynamic weight.
    fn score(&self, loads: &dyn super::Loads, idx: usize, _now: crate::model::Now) -> Option<f64> {
        let w = self.picker.eligible_weight(idx)?;
        Some(1.0 / self.dynamic_weight(w, loads.active(idx)))
    }
}
