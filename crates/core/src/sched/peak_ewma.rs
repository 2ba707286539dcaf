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

use super::scored::{ByLatency, Choice, LatencyModel};
use super::signals::Signals;
use crate::model::{Backend, Now, SchedulerKind};

/// The score of a backend with no sample that already holds a request (Finagle's penalty).
pub const PENALTY: f64 = 1e300;

/// Peak EWMA of response time times load.
pub type PeakEwma = ByLatency<Peak>;

/// `peak_ewma`'s model: the peak EWMA of response time plus the connection term.
#[derive(Debug)]
pub struct Peak {
    half_life: Duration,
}

impl PeakEwma {
    /// Builds over the eligible backends of `backends`.
    pub fn new(backends: &[Backend], half_life: Duration) -> Self {
        Self::with_model(backends, Peak { half_life })
    }
}

impl LatencyModel for Peak {
    const KIND: SchedulerKind = SchedulerKind::PeakEwma;
    const CHOICE: Choice = Choice::TwoChoices;
    const OBSERVES_CONNECTIONS: bool = true;

    /// The peak EWMA plus the connection term; `None` without a sample.
    fn latency(&self, s: &Signals, now: Now) -> Option<f64> {
        let peak = s.peak_ns(now, self.half_life)?;
        Some(peak + s.connection_ns(now, self.half_life).unwrap_or(0.0))
    }

    fn observe(&self, signals: &Signals, sample: Duration, now: Now) {
        signals.observe_peak(sample, now, self.half_life);
    }

    fn observe_connection(&self, signals: &Signals, duration: Duration, now: Now) {
        signals.observe_duration(duration, now, self.half_life);
    }
}
