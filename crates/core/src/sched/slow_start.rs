//! `slow_start`: a backend that has just come up (back from down, draining or ejected, or
//! added to a running pool) ramps its share of new flows over a window, as HAProxy's
//! `slowstart` and Envoy's slow start do. Backends there from the start do not ramp.
//!
//! Its effective weight is `weight x f`, `f` rising linearly from
//! [`SLOW_START_MIN`](super::signals::SLOW_START_MIN) (10 %) to 1 over the window
//! ([`slow_start_factor`]). It wraps any non-hashing scheduler by thinning: the inner
//! scheduler picks; a ramping backend is kept with probability `f` (drawn from the caller's
//! random number), else it is set aside and the inner scheduler picks again among the
//! others (at most [`TRIES`] times; when nothing else is left the ramping backend is taken).
//! Under `wrr` (and `rr`) a ramping backend of weight `w` then gets HAProxy's share
//! `w f / (others + w f)`; under the random choices (`random`, `p2c`, `peak_ewma`) and the
//! least-loaded ones its usual share times `f`, the others taking up the rest.

use std::time::Duration;

use super::p2c::splitmix64;
use super::signals::slow_start_factor;
use super::{Loads, PickError, PickRequest, Scheduler};
use crate::model::{Now, SchedulerKind};

/// Picks set aside at most, per pick.
pub const TRIES: usize = 4;
/// The longest `exclude` list thinning is applied to (longer ones: no slow start).
const MAX_EXCLUDE: usize = 8;

/// Slow start around another scheduler.
#[derive(Debug)]
pub struct SlowStart {
    inner: std::sync::Arc<dyn Scheduler>,
    window: Duration,
}

impl SlowStart {
    pub fn new(inner: std::sync::Arc<dyn Scheduler>, window: Duration) -> Self {
        Self { inner, window }
    }

    /// The effective-weight factor of backend `idx` at `now` (1 when not ramping).
    pub fn factor(&self, loads: &dyn Loads, idx: usize, now: Now) -> f64 {
        slow_start_factor(loads.signals(idx).and_then(|s| s.up_for(now)), self.window)
    }
}

impl Scheduler for SlowStart {
    fn kind(&self) -> SchedulerKind {
        self.inner.kind()
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        if req.exclude.len() > MAX_EXCLUDE {
            return self.inner.pick(req);
        }
        let mut ex = [0usize; MAX_EXCLUDE + TRIES];
        let base = req.exclude.len();
        ex[..base].copy_from_slice(req.exclude);
        let mut random = req.random;
        let mut set_aside = None;
        for len in base..base + TRIES {
            let attempt = PickRequest {
                random,
                exclude: &ex[..len],
                ..*req
            };
            let idx = match self.inner.pick(&attempt) {
                Ok(idx) => idx,
                Err(e) => return set_aside.ok_or(e),
            };
            let factor = self.factor(req.loads, idx, req.now);
            random = splitmix64(random);
            // The top 53 bits as a uniform number in [0, 1).
            let draw = (random >> 11) as f64 / (1u64 << 53) as f64;
            if factor >= 1.0 || draw < factor {
                return Ok(idx);
            }
            ex[len] = idx;
            set_aside = Some(idx);
        }
        // Set aside `TRIES` times: the last one set aside is taken.
        match set_aside {
            Some(i) => Ok(i),
            None => self.inner.pick(req),
        }
    }

    fn observe(&self, signals: &super::Signals, sample: Duration, now: Now) {
        self.inner.observe(signals, sample, now);
    }

    fn observe_connection(&self, signals: &super::Signals, duration: Duration, now: Now) {
        self.inner.observe_connection(signals, duration, now);
    }

    fn observes_connections(&self) -> bool {
        self.inner.observes_connections()
    }

    fn score(&self, loads: &dyn Loads, idx: usize, now: Now) -> Option<f64> {
        self.inner.score(loads, idx, now)
    }

    fn latency_ns(&self, loads: &dyn Loads, idx: usize, now: Now) -> Option<f64> {
        self.inner.latency_ns(loads, idx, now)
    }

    fn slow_start(&self) -> Option<Duration> {
        Some(self.window)
    }
}
