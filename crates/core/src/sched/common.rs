//! Helpers shared by the schedulers: the eligible set, exclusion, weights and orderings.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::PickError;
use crate::model::{canonical_addr, Backend};

/// The eligible backends of one list (indices into it, in listing order).
#[derive(Debug, Clone)]
pub(crate) struct Eligible {
    /// Indices of eligible backends into the slice the scheduler was built from.
    pub idx: Vec<usize>,
    /// Length of that slice.
    pub total: usize,
}

impl Eligible {
    pub fn new(backends: &[Backend]) -> Self {
        let idx = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_eligible())
            .map(|(i, _)| i)
            .collect();
        Self {
            idx,
            total: backends.len(),
        }
    }

    /// The weight of each eligible backend of `backends` (the slice this was built from), in
    /// the order of [`Self::idx`].
    pub fn weights(&self, backends: &[Backend]) -> Vec<u32> {
        weights_at(backends, self.idx.iter().copied())
    }

    /// The error to return when nothing could be picked.
    pub fn error(&self) -> PickError {
        if self.idx.is_empty() {
            PickError::NoneEligible { total: self.total }
        } else {
            PickError::AllTried {
                tried: self.idx.len(),
            }
        }
    }

    /// `Ok` when at least one eligible backend is not excluded.
    pub fn ensure_some_left(&self, exclude: &[usize]) -> Result<(), PickError> {
        if self.idx.iter().any(|i| !exclude.contains(i)) {
            Ok(())
        } else {
            Err(self.error())
        }
    }
}

/// The candidates of a hashing table (`sh`'s slots, `maglev`'s slots, `ring_hash`'s points):
/// the owner at `start`, then every following entry (forward, wrapping), as indices into the
/// backend slice. The one walk of the three hashing schedulers.
#[inline]
pub(crate) fn candidates(table: &[u32], start: usize) -> impl Iterator<Item = usize> + '_ {
    table[start..]
        .iter()
        .chain(&table[..start])
        .map(|&i| i as usize)
}

/// The first candidate from `start` (see [`candidates`]) that is not in `exclude`; the
/// error of `eligible` when the table is empty (`start` is `None`) or every eligible backend
/// is excluded.
// Always: with `#[inline]` the call stayed out of line and a bare sh or maglev pick took
// 1.8x as long (criterion `pick/sh/10` 8.79 against 4.33 ns).
#[allow(clippy::inline_always)]
#[inline(always)]
pub(crate) fn first_candidate(
    eligible: &Eligible,
    table: &[u32],
    start: Option<usize>,
    exclude: &[usize],
) -> Result<usize, PickError> {
    let Some((start, &first)) = start.and_then(|s| Some((s, table.get(s)?))) else {
        return Err(eligible.error());
    };
    // The tables hold eligible backends only: an owner not excluded is what the walk in
    // `next_candidate` would return.
    if exclude.is_empty() || !exclude.contains(&(first as usize)) {
        return Ok(first as usize);
    }
    next_candidate(eligible, table, start, exclude)
}

/// [`first_candidate`] past an excluded first slot (a retry): out of line, so the common
/// pick (nothing excluded, or the first slot's owner not excluded) does not save the
/// walk's registers (one push instead of five in `Maglev::pick`).
#[cold]
#[inline(never)]
fn next_candidate(
    eligible: &Eligible,
    table: &[u32],
    start: usize,
    exclude: &[usize],
) -> Result<usize, PickError> {
    // Every eligible backend excluded: say so before walking a whole table for nothing.
    eligible.ensure_some_left(exclude)?;
    candidates(table, start)
        .find(|i| !exclude.contains(i))
        .ok_or_else(|| eligible.error())
}

/// Greatest common divisor.
pub(crate) fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The weights of `backends` at the indices `idx`.
pub(crate) fn weights_at(backends: &[Backend], idx: impl Iterator<Item = usize>) -> Vec<u32> {
    idx.map(|i| backends[i].weight.get()).collect()
}

/// Eligible backends sorted by canonical address (then weight), so a table built from this
/// order is independent of the listing order: `(canonical address, index into the slice)`.
pub(crate) fn sorted_eligible(backends: &[Backend]) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.is_eligible())
        .map(|(i, b)| (canonical_addr(&b.address), i))
        .collect();
    v.sort_by(|(a, ia), (b, ib)| {
        a.as_bytes()
            .cmp(b.as_bytes())
            .then_with(|| backends[*ia].weight.cmp(&backends[*ib].weight))
    });
    v
}

/// Weights divided by their gcd; if they sum to more than `max_total`, scaled down
/// proportionally (`max(1, w * max_total / sum)`) and divided by their gcd again.
pub(crate) fn normalise_weights(weights: &[u32], max_total: u64) -> Vec<u64> {
    let reduce = |w: Vec<u64>| {
        let g = w.iter().fold(0, |g, &x| gcd(g, x)).max(1);
        w.into_iter().map(|x| x / g).collect::<Vec<u64>>()
    };
    let w = reduce(weights.iter().map(|&w| u64::from(w)).collect());
    let sum: u64 = w.iter().sum();
    if sum <= max_total {
        return w;
    }
    reduce(w.iter().map(|&x| (x * max_total / sum).max(1)).collect())
}

/// nginx's smooth weighted round robin over one full cycle: positions into `weights`,
/// each position `i` appearing exactly `w_i` times (after [`normalise_weights`] with
/// `max_total`), interleaved. Ties go to the lower position.
pub(crate) fn smooth_sequence(weights: &[u32], max_total: u64) -> Vec<u32> {
    // Normalised weights sum to at most `max_total` plus one per weight: far below `i64::MAX`.
    let w: Vec<i64> = normalise_weights(weights, max_total)
        .into_iter()
        .map(|x| i64::try_from(x).unwrap_or(i64::MAX))
        .collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, wi) in current.iter_mut().zip(&w) {
            *c += wi;
        }
        let best = (1..current.len()).fold(0, |b, i| if current[i] > current[b] { i } else { b });
        current[best] -= total;
        seq.push(best as u32);
    }
    seq
}

/// A starting point in `0..n` that rotates with every call (ties between equal backends are
/// then shared instead of always going to the first).
pub(crate) fn rotate(counter: &AtomicUsize, n: usize) -> usize {
    counter.fetch_add(1, Ordering::Relaxed) % n
}

/// Maps a uniform `u64` to `0..bound` (multiply-shift: unbiased enough, no division).
pub(crate) fn scale(random: u64, bound: u64) -> u64 {
    ((u128::from(random) * u128::from(bound)) >> 64) as u64
}

/// `a_active / a_weight < b_active / b_weight`, by cross-multiplying (IPVS style).
pub(crate) fn less_loaded(a_active: u64, a_weight: u32, b_active: u64, b_weight: u32) -> bool {
    u128::from(a_active) * u128::from(b_weight) < u128::from(b_active) * u128::from(a_weight)
}

/// Weighted random choice among eligible backends.
#[derive(Debug, Clone)]
pub(crate) struct WeightedPicker {
    pub eligible: Eligible,
    /// Weight of each eligible backend (same positions as `eligible.idx`).
    pub weights: Vec<u32>,
    /// Cumulative weights: `prefix[k]` = sum of `weights[..=k]`.
    prefix: Vec<u64>,
}

impl WeightedPicker {
    pub fn new(backends: &[Backend]) -> Self {
        let eligible = Eligible::new(backends);
        let weights = eligible.weights(backends);
        let prefix = weights
            .iter()
            .scan(0u64, |acc, &w| {
                *acc += u64::from(w);
                Some(*acc)
            })
            .collect();
        Self {
            eligible,
            weights,
            prefix,
        }
    }

    /// The weight of backend `idx` (an index into the backend slice), if it is eligible.
    pub fn eligible_weight(&self, idx: usize) -> Option<u32> {
        let k = self.eligible.idx.binary_search(&idx).ok()?;
        self.weights.get(k).copied()
    }

    /// A weighted choice: a position into `eligible.idx`, or `None` if nothing is left.
    pub fn pick_pos(&self, random: u64, exclude: &[usize]) -> Option<usize> {
        let total = *self.prefix.last()?;
        if exclude.is_empty() {
            let r = scale(random, total);
            return Some(self.prefix.partition_point(|&c| c <= r));
        }
        let allowed = |k: &usize| !exclude.contains(&self.eligible.idx[*k]);
        let left: u64 = (0..self.weights.len())
            .filter(allowed)
            .map(|k| u64::from(self.weights[k]))
            .sum();
        let mut r = scale(random, left);
        (0..self.weights.len()).filter(allowed).find(|&k| {
            let w = u64::from(self.weights[k]);
            if r < w {
                true
            } else {
                r -= w;
                false
            }
        })
    }
}
