//! `predictive`: sends each request where its response time is forecast to be lowest.
//!
//! The model (per backend, from its response-time samples, see
//! [`Signals::forecast_ns`]): Brown's double exponential smoothing, the one-parameter form
//! of Holt's linear trend, in continuous time so that irregular samples are weighted by the
//! time between them. `S1` is the EWMA of the samples and `S2` the EWMA of `S1`, both with
//! half-life `half_life`; the level is `2 S1 - S2` and the trend `ln 2 / half_life x (S1 -
//! S2)` per second. The forecast `horizon` ahead is `level + trend x horizon`, never below
//! `S1 / 2`. A backend whose latency is rising is forecast slower than its average says
//! (where this beats `peak_ewma`, which only reacts to answers already slow); a single spike
//! moves it only by the smoothing weight (where `peak_ewma`, believing the peak at once,
//! does better).
//!
//! Score = `forecast x (outstanding + 1) / weight`, the lowest wins over a full scan (ties
//! broken by weight). No sample yet: 0 while idle, [`super::peak_ewma::PENALTY`] while
//! holding a request.

use std::time::Duration;

use super::common::WeightedPicker;
use super::scored::{by_latency, full_scan};
use super::signals::Signals;
use super::{PickError, PickRequest, Scheduler};
use crate::model::{Backend, Now, SchedulerKind};

/// Forecast response time times load.
#[derive(Debug)]
pub struct Predictive {
    picker: WeightedPicker,
    half_life: Duration,
    horizon: Duration,
}

impl Predictive {
    /// Builds over the eligible backends of `backends`.
    pub fn new(backends: &[Backend], half_life: Duration, horizon: Duration) -> Self {
        Self {
            picker: WeightedPicker::new(backends),
            half_life,
            horizon,
        }
    }

    /// The score of one backend (lower wins): see the module doc.
    pub fn score(&self, signals: Option<&Signals>, active: u64, weight: u32, now: Now) -> f64 {
        let forecast = signals.and_then(|s| s.forecast_ns(now, self.half_life, self.horizon));
        by_latency(forecast, active, weight)
    }
}

impl Scheduler for Predictive {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Predictive
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        full_scan(&self.picker, req, |i, w| {
            self.score(req.loads.signals(i), req.loads.active(i), w, req.now)
        })
    }

    fn observe(&self, signals: &Signals, sample: Duration, now: Now) {
        signals.observe_smooth(sample, now, self.half_life);
    }

    fn latency_ns(&self, loads: &dyn super::Loads, idx: usize, now: Now) -> Option<f64> {
        loads
            .signals(idx)?
            .forecast_ns(now, self.half_life, self.horizon)
    }

    fn score(&self, loads: &dyn super::Loads, idx: usize, now: Now) -> Option<f64> {
        let w = self.picker.eligible_weight(idx)?;
        Some(self.score(loads.signals(idx), loads.active(idx), w, now))
    }
}
