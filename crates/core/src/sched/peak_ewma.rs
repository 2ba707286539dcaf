//! `peak_ewma`: Finagle's and linkerd's peak EWMA. Each backend's response time is averaged
//! with a weight that depends on the time between samples (half-life `half_life`), except
//! that a sample above the average replaces it at once (the peak): one slow answer is
//! believed immediately, recovery is believed gradually. While no sample comes in, the
//! average decays towards 0 at the same half-life, so a backend left alone is tried again.
//!
//! Score = `ewma x (outstanding + 1) / weight`; power of two choices (two weighted-random
//! candidates, the lower score wins, ties to the first). A backend with no sample yet scores
//! 0 while it holds no request and [`PENALTY`] while it holds one, so it is probed one request
//! at a time. HTTP samples the time to the answer's head; L4 the connect time, and its
//! `ewma` is the connect time's peak EWMA plus the connection term
//! ([`Signals::connection_ns`]: the larger of the moving average of completed connections'
//! durations and the mean age of the open ones), so a backend that holds its connections
//! longer scores higher.

use std::time::Duration;

use super::common::WeightedPicker;
use super::scored::{by_latency, two_choices};
use super::signals::Signals;
use super::{PickError, PickRequest, Scheduler};
use crate::model::{Backend, Now, SchedulerKind};

/// The score of a backend with no sample that already holds a request (Finagle's penalty).
pub const PENALTY: f64 = 1e300;

/// Peak EWMA of response time times load.
#[derive(Debug)]
pub struct PeakEwma {
    picker: WeightedPicker,
    half_life: Duration,
}

impl PeakEwma {
    /// Builds over the eligible backends of `backends`.
    pub fn new(backends: &[Backend], half_life: Duration) -> Self {
        Self {
            picker: WeightedPicker::new(backends),
            half_life,
        }
    }

    /// The score of one backend (lower wins): see the module doc.
    pub fn score(&self, signals: Option<&Signals>, active: u64, weight: u32, now: Now) -> f64 {
        by_latency(signals.and_then(|s| self.latency(s, now)), active, weight)
    }

    /// The peak EWMA plus the connection term; `None` without a sample.
    fn latency(&self, s: &Signals, now: Now) -> Option<f64> {
        let peak = s.peak_ns(now, self.half_life)?;
        Some(peak + s.connection_ns(now, self.half_life).unwrap_or(0.0))
    }
}

impl Scheduler for PeakEwma {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::PeakEwma
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        two_choices(&self.picker, req, |i, w| {
            self.score(req.loads.signals(i), req.loads.active(i), w, req.now)
        })
    }

    fn observe(&self, signals: &Signals, sample: Duration, now: Now) {
        signals.observe_peak(sample, now, self.half_life);
    }

    fn observe_connection(&self, signals: &Signals, duration: Duration, now: Now) {
        signals.observe_duration(duration, now, self.half_life);
    }

    fn latency_ns(&self, loads: &dyn super::Loads, idx: usize, now: Now) -> Option<f64> {
        self.latency(loads.signals(idx)?, now)
    }

    fn score(&self, loads: &dyn super::Loads, idx: usize, now: Now) -> Option<f64> {
        let w = self.picker.eligible_weight(idx)?;
        Some(self.score(loads.signals(idx), loads.active(idx), w, now))
    }
}
