//! The two ways the load- and latency-aware schedulers turn per-backend scores into a pick:
//! power of two choices, and a full scan. Lower scores win; scores are finite and `>= 0`.

use std::time::Duration;

use super::common::WeightedPicker;
use super::p2c::two_positions;
use super::peak_ewma::PENALTY;
use super::signals::Signals;
use super::{Loads, PickError, PickRequest, Scheduler};
use crate::model::{Backend, Now, SchedulerKind};

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

/// What sets one latency-aware scheduler (`peak_ewma`, `predictive`) apart: the response
/// time it believes of a backend, how a sample folds in, and how scores become a pick. The
/// rest, the score and the [`Scheduler`] impl, is [`ByLatency`]'s.
pub trait LatencyModel: Send + Sync + std::fmt::Debug {
    /// The scheduler's name.
    const KIND: SchedulerKind;

    /// The response time (ns) believed of a backend at `now`; `None` without a sample.
    fn latency(&self, s: &Signals, now: Now) -> Option<f64>;

    /// Folds a response-time sample into a backend's `signals`.
    fn observe(&self, signals: &Signals, sample: Duration, now: Now);

    /// Folds a completed L4 connection's duration into a backend's `signals` (ignored
    /// unless the model uses it).
    fn observe_connection(&self, _signals: &Signals, _duration: Duration, _now: Now) {}

    /// Whether [`Self::observe_connection`] and the open connections' ages are used.
    const OBSERVES_CONNECTIONS: bool = false;

    /// How the scores become a pick.
    const CHOICE: Choice;
}

/// The two ways scores become a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// [`two_choices`].
    TwoChoices,
    /// [`full_scan`].
    FullScan,
}

/// A latency-aware scheduler: each backend scores [`by_latency`] of the response time its
/// model `M` believes, and `M` turns the scores into a pick.
#[derive(Debug)]
pub struct ByLatency<M> {
    picker: WeightedPicker,
    model: M,
}

impl<M: LatencyModel> ByLatency<M> {
    /// Builds over the eligible backends of `backends`.
    pub(crate) fn with_model(backends: &[Backend], model: M) -> Self {
        Self {
            picker: WeightedPicker::new(backends),
            model,
        }
    }

    /// The score of one backend (lower wins): [`by_latency`] of the model's latency.
    pub fn score(&self, signals: Option<&Signals>, active: u64, weight: u32, now: Now) -> f64 {
        by_latency(
            signals.and_then(|s| self.model.latency(s, now)),
            active,
            weight,
        )
    }
}

impl<M: LatencyModel> Scheduler for ByLatency<M> {
    fn kind(&self) -> SchedulerKind {
        M::KIND
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        let score = |i, w| self.score(req.loads.signals(i), req.loads.active(i), w, req.now);
        match M::CHOICE {
            Choice::TwoChoices => two_choices(&self.picker, req, score),
            Choice::FullScan => full_scan(&self.picker, req, score),
        }
    }

    fn observe(&self, signals: &Signals, sample: Duration, now: Now) {
        self.model.observe(signals, sample, now);
    }

    fn observe_connection(&self, signals: &Signals, duration: Duration, now: Now) {
        self.model.observe_connection(signals, duration, now);
    }

    fn observes_connections(&self) -> bool {
        M::OBSERVES_CONNECTIONS
    }

    fn latency_ns(&self, loads: &dyn Loads, idx: usize, now: Now) -> Option<f64> {
        self.model.latency(loads.signals(idx)?, now)
    }

    fn score(&self, loads: &dyn Loads, idx: usize, now: Now) -> Option<f64> {
        let w = self.picker.eligible_weight(idx)?;
        Some(self.score(loads.signals(idx), loads.active(idx), w, now))
    }
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
