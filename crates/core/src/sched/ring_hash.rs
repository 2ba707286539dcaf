//! `ring_hash`: a weighted, ketama-style consistent hash ring.
//!
//! Each eligible backend gets `points = min(ceil(POINTS_PER_WEIGHT * w / w_min),
//! MAX_POINTS_PER_BACKEND)` points (`w_min` the smallest eligible weight: weights are
//! normalised to it, so equal weights give 160 points each); if the ring would hold more than
//! [`MAX_RING_POINTS`], every count is scaled down proportionally (at least 1). Point `i` of
//! a backend is `jhash("<canonical_addr>-<i>", RING_SEED)` ([`crate::hash::jhash`]); points
//! are sorted (ties by canonical address). A flow goes to the first point at or after its hash
//! (wrapping to the first point); if that backend is excluded, clockwise to the next point of
//! a backend that is not. The ring depends only on the backend set and weights, never on
//! listing order.

use std::fmt::Write as _;

use super::common::{first_candidate, sorted_eligible, weights_at, Eligible};
use super::{PickError, PickRequest, Scheduler};
use crate::hash::jhash;
use crate::model::{Backend, SchedulerKind};

/// Points for the smallest weight.
pub const POINTS_PER_WEIGHT: u64 = 160;
/// Cap on one backend's points (64 times the base).
pub const MAX_POINTS_PER_BACKEND: u64 = 160 * 64;
/// Cap on the whole ring.
pub const MAX_RING_POINTS: u64 = 1 << 20;
/// Seed of the point hashes ("Ring").
pub const RING_SEED: u32 = 0x5269_6e67;

/// A consistent hash ring.
#[derive(Debug, Clone)]
pub struct RingHash {
    eligible: Eligible,
    /// Sorted point hashes.
    points: Vec<u32>,
    /// Owner of each point: index into the backend slice.
    owners: Vec<u32>,
}

impl RingHash {
    /// Builds the ring over the eligible backends of `backends`.
    pub fn new(backends: &[Backend]) -> Self {
        let sorted = sorted_eligible(backends);
        let counts = point_counts(&weights_at(backends, sorted.iter().map(|(_, i)| *i)));
        let mut ring: Vec<(u32, u32, u32)> = Vec::new();
        let mut label = String::new();
        for (rank, ((addr, idx), count)) in sorted.iter().zip(counts).enumerate() {
            for i in 0..count {
                label.clear();
                let _ = write!(label, "{addr}-{i}");
                ring.push((jhash(label.as_bytes(), RING_SEED), rank as u32, *idx as u32));
            }
        }
        ring.sort_unstable();
        Self {
            eligible: Eligible::new(backends),
            points: ring.iter().map(|p| p.0).collect(),
            owners: ring.iter().map(|p| p.2).collect(),
        }
    }

    /// The sorted point hashes.
    pub fn points(&self) -> &[u32] {
        &self.points
    }

    /// The owner of each point (index into the backend slice), parallel to [`Self::points`].
    pub fn owners(&self) -> &[u32] {
        &self.owners
    }
}

/// Points per backend (see the module documentation).
fn point_counts(weights: &[u32]) -> Vec<u64> {
    let Some(w_min) = weights.iter().min().map(|&w| u64::from(w)) else {
        return Vec::new();
    };
    let counts: Vec<u64> = weights
        .iter()
        .map(|&w| {
            let w = u64::from(w);
            (POINTS_PER_WEIGHT * w)
                .div_ceil(w_min)
                .min(MAX_POINTS_PER_BACKEND)
        })
        .collect();
    let sum: u64 = counts.iter().sum();
    if sum <= MAX_RING_POINTS {
        return counts;
    }
    counts
        .into_iter()
        .map(|c| (c * MAX_RING_POINTS / sum).max(1))
        .collect()
}

impl Scheduler for RingHash {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::RingHash
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        let start = self.position(req.hash);
        first_candidate(&self.eligible, &self.owners, start, req.exclude)
    }

    fn as_ring_hash(&self) -> Option<&RingHash> {
        Some(self)
    }
}

/// The share (0..=1) of the 32-bit hash space whose owner *address* differs between `old`
/// (built from `old_backends`) and `new` (built from `new_backends`): the ring's live
/// disruption of a change (the ring counterpart of [`super::maglev::moved_ratio`]). Two
/// empty rings give 0.0, one empty ring 1.0.
pub fn moved_ratio(
    old: &RingHash,
    old_backends: &[Backend],
    new: &RingHash,
    new_backends: &[Backend],
) -> f64 {
    match (old.points.is_empty(), new.points.is_empty()) {
        (true, true) => return 0.0,
        (true, false) | (false, true) => return 1.0,
        (false, false) => {}
    }
    // Every hash h in (p_prev, p] belongs to the owner of the first point >= h. Walk the
    // union of both rings' points; between consecutive boundaries both owners are fixed.
    let mut bounds: Vec<u32> = old.points.iter().chain(&new.points).copied().collect();
    bounds.sort_unstable();
    bounds.dedup();
    let owner = |ring: &RingHash, backends: &[Backend], h: u32| {
        let mut pos = ring.points.partition_point(|&p| p < h);
        if pos == ring.points.len() {
            pos = 0;
        }
        backends[ring.owners[pos] as usize].address
    };
    let mut moved: u64 = 0;
    let mut prev: Option<u32> = None;
    for &b in &bounds {
        // The arc (prev, b]: its hashes all map like b.
        let len = match prev {
            None => {
                u64::from(b) + 1 + (u64::from(u32::MAX) - u64::from(*bounds.last().unwrap_or(&b)))
            }
            Some(p) => u64::from(b - p),
        };
        if owner(old, old_backends, b) != owner(new, new_backends, b) {
            moved += len;
        }
        prev = Some(b);
    }
    moved as f64 / (1u64 << 32) as f64
}

impl RingHash {
    /// The ring position a flow hash lands on: the index of the first point at or after
    /// `hash` (wrapping to 0); `None` for an empty ring.
    pub fn position(&self, hash: u32) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let pos = self.points.partition_point(|&p| p < hash);
        Some(if pos == self.points.len() { 0 } else { pos })
    }
}
