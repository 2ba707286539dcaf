//! The two ways the load- and latency-aware schedulers turn per-backend scores into a pick:
//! power of two choices, and a full scan. Lower scores win; scores are finite and `>= 0`.

use super::common::WeightedPicker;
use super::p2c::two_positions;
use super::peak_ewma::PENALTY;
use super::{PickError, PickRequest};

/// Power of two choices: two weighted-random candidates (as `p2c` draws them; if the redraws
/// still give the first, the next backend not excluded after it), the one with the lower
/// score wins; on a tie, the first. With no load and no samples every score ties, so the
/// pick is a weighted random choice: weights are respected exactly.
pub(crate) fn two_choices(
    p: &WeightedPicker,
    req: &PickRequest<'_>,
    score: impl Fn(usize, u32) -> f64,
) -> Result<usize, PickError> {
    let (first, mut second) = two_positions(p, req.random, req.exclude)?;
    if second == first {
        let n = p.eligible.idx.len();
        second = (1..n)
            .map(|d| (first + d) % n)
            .find(|&k| !req.exclude.contains(&p.eligible.idx[k]))
            .unwrap_or(first);
    }
    let (a, b) = (p.eligible.idx[first], p.eligible.idx[second]);
    if score(b, p.weights[second]) < score(a, p.weights[first]) {
        Ok(b)
    } else {
        Ok(a)
    }
}

/// Full scan: the backend with the lowest score. The scan starts at a weighted-random
/// backend and only a strictly lower score replaces the best so far, so ties are broken by
/// weight (with no load and no samples, weights are respected exactly).
pub(crate) fn full_scan(
    p: &WeightedPicker,
    req: &PickRequest<'_>,
    score: impl Fn(usize, u32) -> f64,
) -> Result<usize, PickError> {
    let start = p
        .pick_pos(req.random, req.exclude)
        .ok_or_else(|| p.eligible.error())?;
    let n = p.eligible.idx.len();
    let mut best = (start, score(p.eligible.idx[start], p.weights[start]));
    for k in (start + 1..n).chain(0..start) {
        let i = p.eligible.idx[k];
        if req.exclude.contains(&i) {
            continue;
        }
        let s = score(i, p.weights[k]);
        if s < best.1 {
            best = (k, s);
        }
    }
    Ok(p.eligible.idx[best.0])
}

/// The score of the latency-aware schedulers (`peak_ewma`, `predictive`): `latency x
/// (outstanding + 1) / weight`. A backend with no sample yet (`latency` is `None`) scores 0
/// while it holds no request and [`PENALTY`] while it holds one, so it is probed one request
/// at a time.
pub(crate) fn by_latency(latency: Option<f64>, active: u64, weight: u32) -> f64 {
    match latency {
        Some(l) => clean(l * (active as f64 + 1.0) / f64::from(weight.max(1))),
        None if active == 0 => 0.0,
        None => PENALTY,
    }
}

/// A score that is never NaN or negative (NaN and negatives count as 0, infinities stay).
pub(crate) fn clean(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.max(0.0)
    }
}
