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

use super::scored::{ByLatency, Choice, LatencyModel};
use super::signals::Signals;
use crate::model::{Backend, Now, SchedulerKind};

/// Forecast response time times load.
pub type Predictive = ByLatency<Forecast>;

/// `predictive`'s model: the forecast of response time `horizon` ahead.
#[derive(Debug)]
pub struct Forecast {
    half_life: Duration,
    horizon: Duration,
}

impl Predictive {
    /// Builds over the eligible backends of `backends`.
    pub fn new(backends: &[Backend], half_life: Duration, horizon: Duration) -> Self {
        Self::with_model(backends, Forecast { half_life, horizon })
    }
}

impl LatencyModel for Forecast {
    const KIND: SchedulerKind = SchedulerKind::Predictive;
    const CHOICE: Choice = Choice::FullScan;

    fn latency(&self, s: &Signals, now: Now) -> Option<f64> {
        s.forecast_ns(now, self.half_life, self.horizon)
    }

    fn observe(&self, signals: &Signals, sample: Duration, now: Now) {
        signals.observe_smooth(sample, now, self.half_life);
    }
}
