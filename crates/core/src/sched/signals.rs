//! What the latency-aware schedulers know about one backend: response-time samples folded
//! into lock-free state, and when the backend last came up (for slow start).
//!
//! The IO layer owns one [`Signals`] per backend (it lives across snapshots, next to the
//! backend's counters), feeds it samples through [`super::Scheduler::observe`] with the time
//! it read, and hands it to the schedulers through [`super::Loads::signals`]. The core never
//! reads a clock: every method takes `now`.
//!
//! Every value is one atomic word, updated by compare-and-swap (no lock on the data path).
//! A time that goes backwards (a `now` older than the last sample) counts as no time passing:
//! nothing panics and no score becomes NaN.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::Now;

/// `up_since` of a backend that is not up (down, draining, ejected, weight 0).
const NOT_UP: u64 = u64::MAX;
/// `up_since` of a backend that has not been seen by the IO layer yet.
const UNSET: u64 = u64::MAX - 1;
/// `at` before the first sample.
const NEVER: u64 = u64::MAX;

/// Lock-free per-backend scheduler state.
#[derive(Debug)]
pub struct Signals {
    /// `peak_ewma`: the moving average of response time, in nanoseconds (`f64` bits).
    peak: AtomicU64,
    /// `predictive`: Brown's double smoothing, `S1` and `S2` in microseconds (two `f32`
    /// halves of one word, so they change together).
    smooth: AtomicU64,
    /// When the last sample came in (nanoseconds of [`Now`]); [`NEVER`] before the first.
    at: AtomicU64,
    /// The latest sample in nanoseconds (for metrics and `explain`).
    last: AtomicU64,
    /// When the backend last came up (nanoseconds of [`Now`]), [`NOT_UP`] or [`UNSET`].
    up_since: AtomicU64,
    /// `peak_ewma` on L4: the moving average of completed connections' durations, in
    /// nanoseconds (`f64` bits).
    duration: AtomicU64,
    /// When the last duration sample came in (nanoseconds of [`Now`]); [`NEVER`] before.
    duration_at: AtomicU64,
    /// L4: the connections open now and the sum of their opening times, one word so a
    /// reader sees both of one moment: the count in the top [`OPEN_COUNT_BITS`] bits, the
    /// sum of the opening times in milliseconds modulo `2^OPEN_SUM_BITS` below (wrapping
    /// is exact for the ages: `count x now - sum` only needs the true sum of the open
    /// connections' ages to stay below `2^44` ms, 557 years).
    open: AtomicU64,
}

const OPEN_SUM_BITS: u32 = 44;
const OPEN_COUNT_BITS: u32 = 64 - OPEN_SUM_BITS;
const OPEN_SUM_MASK: u64 = (1 << OPEN_SUM_BITS) - 1;
const OPEN_COUNT_MAX: u64 = (1 << OPEN_COUNT_BITS) - 1;

impl Default for Signals {
    fn default() -> Self {
        Self {
            peak: AtomicU64::new(0f64.to_bits()),
            smooth: AtomicU64::new(0),
            at: AtomicU64::new(NEVER),
            last: AtomicU64::new(0),
            up_since: AtomicU64::new(UNSET),
            duration: AtomicU64::new(0f64.to_bits()),
            duration_at: AtomicU64::new(NEVER),
            open: AtomicU64::new(0),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 2)
}

/// `2^(-dt / half_life)`: how much of an old value is left after `dt` (1 for no time, 0
/// for an infinite one; never NaN: `half_life` is at least 1 ns by construction).
pub(crate) fn decay(dt_ns: u64, half_life: Duration) -> f64 {
    let h = nanos(half_life).max(1) as f64;
    (-(dt_ns as f64) / h).exp2()
}

fn pack(a: f32, b: f32) -> u64 {
    (u64::from(a.to_bits()) << 32) | u64::from(b.to_bits())
}

fn unpack(w: u64) -> (f32, f32) {
    (f32::from_bits((w >> 32) as u32), f32::from_bits(w as u32))
}

/// Applies `f` to an atomic word until the compare-and-swap holds.
fn update(word: &AtomicU64, mut f: impl FnMut(u64) -> u64) {
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        match word.compare_exchange_weak(cur, f(cur), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

impl Signals {
    /// Nanoseconds since the last sample (0 when time went backwards), or `None` before the
    /// first sample.
    fn since_sample(&self, now: Now) -> Option<u64> {
        let at = self.at.load(Ordering::Relaxed);
        (at != NEVER).then(|| nanos(now).saturating_sub(at))
    }

    /// Marks a sample at `now`: returns the nanoseconds since the previous one (`None`: the
    /// first sample).
    fn stamp(&self, now: Now, sample: Duration) -> Option<u64> {
        self.last.store(nanos(sample), Ordering::Relaxed);
        let now = nanos(now);
        let prev = self.at.swap(now, Ordering::Relaxed);
        (prev != NEVER).then(|| now.saturating_sub(prev))
    }

    /// `peak_ewma`'s update: a sample above the average replaces it at once (the peak); one
    /// below pulls it down by `1 - 2^(-dt / half_life)`, `dt` being the time since the last
    /// sample.
    pub fn observe_peak(&self, sample: Duration, now: Now, half_life: Duration) {
        let x = sample.as_nanos() as f64;
        let dt = self.stamp(now, sample);
        update(&self.peak, |bits| {
            let old = f64::from_bits(bits);
            let new = match dt {
                None => x,
                Some(_) if x >= old => x,
                Some(dt) => {
                    let keep = decay(dt, half_life);
                    old * keep + x * (1.0 - keep)
                }
            };
            new.to_bits()
        });
    }

    /// `predictive`'s update: `S1 = EWMA(sample)`, `S2 = EWMA(S1)`, both with the weight
    /// `1 - 2^(-dt / half_life)` (the first sample sets both).
    pub fn observe_smooth(&self, sample: Duration, now: Now, half_life: Duration) {
        let x = (sample.as_nanos() as f64 / 1e3) as f32;
        let dt = self.stamp(now, sample);
        update(&self.smooth, |w| {
            let (s1, s2) = unpack(w);
            match dt {
                None => pack(x, x),
                Some(dt) => {
                    let a = (1.0 - decay(dt, half_life)) as f32;
                    let n1 = s1 + a * (x - s1);
                    let n2 = s2 + a * (n1 - s2);
                    pack(n1, n2)
                }
            }
        });
    }

    /// The peak EWMA in nanoseconds as of `now`: the stored value decayed towards 0 by the
    /// time since the last sample (so a backend that is left alone is tried again, as in
    /// Finagle). `None` before the first sample.
    pub fn peak_ns(&self, now: Now, half_life: Duration) -> Option<f64> {
        let dt = self.since_sample(now)?;
        Some(f64::from_bits(self.peak.load(Ordering::Relaxed)) * decay(dt, half_life))
    }

    /// Brown's linear forecast of the response time `horizon` after `now`, in nanoseconds:
    /// `level = 2 S1 - S2`, `trend = ln 2 / half_life * (S1 - S2)` per second, forecast =
    /// `level + trend * horizon`, at least `S1 / 2` (a falling trend never forecasts a
    /// backend as free). Like the peak, it decays towards 0 while no sample comes in.
    /// `None` before the first sample.
    pub fn forecast_ns(&self, now: Now, half_life: Duration, horizon: Duration) -> Option<f64> {
        let dt = self.since_sample(now)?;
        let (s1, s2) = unpack(self.smooth.load(Ordering::Relaxed));
        let (s1, s2) = (f64::from(s1) * 1e3, f64::from(s2) * 1e3);
        let level = 2.0 * s1 - s2;
        let rate = std::f64::consts::LN_2 / half_life.as_secs_f64().max(1e-9);
        let f = (level + rate * (s1 - s2) * horizon.as_secs_f64()).max(s1 / 2.0);
        let f = f * decay(dt, half_life);
        Some(if f.is_finite() { f.max(0.0) } else { 0.0 })
    }

    /// L4: a connection to the backend was established at `now`; its age counts in
    /// [`Self::connection_ns`] until [`Self::connection_closed`] with the same `opened`.
    /// `false` (and nothing counted) past 2^20 - 1 open connections on one backend: then
    /// do not call `connection_closed` for it.
    pub fn connection_opened(&self, opened: Now) -> bool {
        let ms = millis(opened);
        let mut counted = false;
        update(&self.open, |w| {
            let count = w >> OPEN_SUM_BITS;
            counted = count < OPEN_COUNT_MAX;
            if counted {
                ((count + 1) << OPEN_SUM_BITS)
                    | ((w & OPEN_SUM_MASK).wrapping_add(ms) & OPEN_SUM_MASK)
            } else {
                w
            }
        });
        counted
    }

    /// L4: a connection counted by [`Self::connection_opened`] at `opened` has ended.
    pub fn connection_closed(&self, opened: Now) {
        let ms = millis(opened);
        update(&self.open, |w| {
            let count = w >> OPEN_SUM_BITS;
            if count == 0 {
                return w;
            }
            ((count - 1) << OPEN_SUM_BITS) | ((w & OPEN_SUM_MASK).wrapping_sub(ms) & OPEN_SUM_MASK)
        });
    }

    /// The connections open now and their mean age at `now` in nanoseconds (0 when the
    /// clock went backwards past their opening).
    pub fn open_connections(&self, now: Now) -> (u64, f64) {
        let w = self.open.load(Ordering::Relaxed);
        let count = w >> OPEN_SUM_BITS;
        if count == 0 {
            return (0, 0.0);
        }
        let ages = count
            .wrapping_mul(millis(now))
            .wrapping_sub(w & OPEN_SUM_MASK)
            & OPEN_SUM_MASK;
        // Above half the range: the sum is "negative", a clock that went backwards.
        let ages = if ages >= 1 << (OPEN_SUM_BITS - 1) {
            0
        } else {
            ages
        };
        (count, ages as f64 / count as f64 * 1e6)
    }

    /// `peak_ewma` on L4: folds a completed connection's `duration` into the moving
    /// average of durations, with the weight `1 - 2^(-dt / half_life)` (`dt`: the time
    /// since the previous duration; the first sets it). A plain average, not a peak: one
    /// long-lived connection among short ones is a client's choice, not the backend
    /// slowing down.
    pub fn observe_duration(&self, duration: Duration, now: Now, half_life: Duration) {
        let x = duration.as_nanos() as f64;
        let now = nanos(now);
        let prev = self.duration_at.swap(now, Ordering::Relaxed);
        let dt = (prev != NEVER).then(|| now.saturating_sub(prev));
        update(&self.duration, |bits| {
            let new = match dt {
                None => x,
                Some(dt) => {
                    let keep = decay(dt, half_life);
                    f64::from_bits(bits) * keep + x * (1.0 - keep)
                }
            };
            new.to_bits()
        });
    }

    /// `peak_ewma`'s connection term on L4, in nanoseconds at `now`: the larger of the
    /// moving average of completed connections' durations (decayed towards 0 while none
    /// completes, like the peak) and the mean age of the connections open now (so a
    /// backend that holds its connections longer is seen before they end). `None` when
    /// no connection was ever counted (HTTP pools, or none yet).
    pub fn connection_ns(&self, now: Now, half_life: Duration) -> Option<f64> {
        let at = self.duration_at.load(Ordering::Relaxed);
        let avg = (at != NEVER).then(|| {
            f64::from_bits(self.duration.load(Ordering::Relaxed))
                * decay(nanos(now).saturating_sub(at), half_life)
        });
        let (open, age) = self.open_connections(now);
        match (avg, open) {
            (None, 0) => None,
            (avg, _) => {
                let v = avg.unwrap_or(0.0).max(age);
                Some(if v.is_finite() { v.max(0.0) } else { 0.0 })
            }
        }
    }

    /// The latest sample, in nanoseconds (0 before the first).
    pub fn last_ns(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// The IO layer's view of the backend at a snapshot build: `up` whether it takes new
    /// flows now; `fresh` whether a backend first seen now counts as just added (a pool
    /// that already ran) rather than there from the start (no slow start at startup).
    pub fn set_up(&self, up: bool, now: Now, fresh: bool) {
        let cur = self.up_since.load(Ordering::Relaxed);
        let next = match (up, cur) {
            (false, _) => NOT_UP,
            (true, UNSET) if !fresh => 0,
            (true, UNSET | NOT_UP) => nanos(now),
            (true, t) => t,
        };
        self.up_since.store(next, Ordering::Relaxed);
    }

    /// How long the backend has been up at `now` (`None`: not up, or never set up, which
    /// counts as up for ever).
    pub fn up_for(&self, now: Now) -> Option<Duration> {
        match self.up_since.load(Ordering::Relaxed) {
            NOT_UP | UNSET => None,
            t => Some(Duration::from_nanos(nanos(now).saturating_sub(t))),
        }
    }
}

/// Slow start's share of the weight after being up for `up_for` of a `window`: linear from
/// [`SLOW_START_MIN`] to 1 (Envoy's `min_weight_percent` 10 with aggression 1; HAProxy's
/// `slowstart` ramps linearly too).
pub fn slow_start_factor(up_for: Option<Duration>, window: Duration) -> f64 {
    match up_for {
        Some(t) if t < window && !window.is_zero() => {
            (t.as_secs_f64() / window.as_secs_f64()).clamp(SLOW_START_MIN, 1.0)
        }
        _ => 1.0,
    }
}

/// The share of its weight a backend gets at the start of its slow start.
pub const SLOW_START_MIN: f64 = 0.1;
