//! `sh`: source hashing over a weighted table, independent of listing order.
//!
//! The eligible backends are sorted by canonical address (`canonical_addr`, bytewise); their
//! weights are divided by their gcd (and scaled down proportionally if they sum to more than
//! [`MAX_TABLE`]); the table is their smooth weighted round-robin sequence over one cycle
//! (each backend exactly `w / gcd` slots, interleaved). A flow goes to
//! `table[hash % table.len()]`; if that backend is excluded, to the next slot (forward,
//! wrapping) holding a backend that is not.

use super::common::{first_candidate, smooth_sequence, sorted_eligible, weights_at, Eligible};
use super::{PickError, PickRequest, Scheduler};
use crate::model::{Backend, SchedulerKind};

/// The largest table, in slots.
pub const MAX_TABLE: u64 = 65536;

/// Source hashing.
#[derive(Debug)]
pub struct SourceHash {
    eligible: Eligible,
    /// Indices into the backend slice.
    table: Vec<u32>,
}

impl SourceHash {
    /// Builds the table over the eligible backends of `backends`.
    pub fn new(backends: &[Backend]) -> Self {
        let sorted = sorted_eligible(backends);
        let weights = weights_at(backends, sorted.iter().map(|(_, i)| *i));
        let table = smooth_sequence(&weights, MAX_TABLE)
            .into_iter()
            .map(|pos| sorted[pos as usize].1 as u32)
            .collect();
        Self {
            eligible: Eligible::new(backends),
            table,
        }
    }

    /// The table: indices into the backend slice.
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// The slot a flow hash lands on (`hash % table length`); `None` for an empty table.
    pub fn slot(&self, hash: u32) -> Option<usize> {
        (!self.table.is_empty()).then(|| hash as usize % self.table.len())
    }
}

impl Scheduler for SourceHash {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::SourceHash
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        first_candidate(
            &self.eligible,
            &self.table,
            self.slot(req.hash),
            req.exclude,
        )
    }

    fn as_source_hash(&self) -> Option<&SourceHash> {
        Some(self)
    }
}
