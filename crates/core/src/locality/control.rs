//! The global controller's policy (`fulcrum controller`, docs/cluster.md "The global
//! controller"): from the members' reports over one interval, the next locality weights of
//! a pool whose `[pool.locality]` is `controlled = true`.
//!
//! Per zone, over the interval and every member: requests, failures, and the mean latency
//! of the requests that had one. The reference is the lowest mean latency among the zones
//! with at least `min_requests` samples, but never below `latency_floor` (on loopback or in
//! one rack, latencies of a few hundred microseconds differ by factors that mean nothing).
//! Then for each zone with enough samples:
//! - **down**: mean latency at least `latency_high` × the reference, or a failure rate at
//!   least `failures_high`: its weight halves, but not below `min_weight`;
//! - **up**: mean latency at most `latency_low` × the reference and a failure rate at most
//!   `failures_low`: its weight doubles (from at least `min_weight`), up to `max_weight`;
//! - **hold** between the two (hysteresis: a zone that was moved away from comes back only
//!   once it is clearly well again, and a zone near the threshold does not flap).
//!
//! Zones without enough samples hold their weight. The rule reads nothing but the weights
//! in the document and the reports, so a new leader continues where the last one stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::Zone;

/// What one zone did over an interval, summed over members and backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Requests (HTTP) or connections (L4) sent to the zone's backends.
    pub requests: u64,
    /// Failed ones: connect failures and timeouts, HTTP 5xx.
    pub failures: u64,
    /// Sum of latencies, microseconds (HTTP: to the response head; L4: to connect).
    pub latency_us: u64,
    /// How many latencies `latency_us` sums.
    pub latency_samples: u64,
}

impl Sample {
    /// Adds another sample.
    pub fn add(&mut self, o: &Self) {
        self.requests += o.requests;
        self.failures += o.failures;
        self.latency_us += o.latency_us;
        self.latency_samples += o.latency_samples;
    }

    /// The mean latency, if there are samples.
    pub fn mean(&self) -> Option<Duration> {
        (self.latency_samples > 0)
            .then(|| Duration::from_micros(self.latency_us / self.latency_samples))
    }

    #[allow(clippy::cast_precision_loss)]
    fn failure_rate(&self) -> f64 {
        self.failures as f64 / self.requests.max(1) as f64
    }
}

/// The policy's bounds and thresholds (the controller's flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// A zone's weight never goes below this (it keeps a trickle of traffic, so its
    /// recovery is seen).
    pub min_weight: u32,
    /// Nor above this.
    pub max_weight: u32,
    /// Move down at this multiple of the reference latency...
    pub latency_high: f64,
    /// ...and up only at or below this one.
    pub latency_low: f64,
    /// Move down at this failure rate (0..=1)...
    pub failures_high: f64,
    /// ...and up only at or below this one.
    pub failures_low: f64,
    /// The reference latency is never below this.
    pub latency_floor: Duration,
    /// Fewer requests than this over an interval: the zone holds.
    pub min_requests: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_weight: 5,
            max_weight: 100,
            latency_high: 2.0,
            latency_low: 1.5,
            failures_high: 0.05,
            failures_low: 0.01,
            latency_floor: Duration::from_millis(5),
            min_requests: 20,
        }
    }
}

/// What happened to one zone, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Down,
    Up,
    Hold,
    /// Too few samples to say.
    NoData,
}

/// One zone's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub zone: Zone,
    pub from: u32,
    pub to: u32,
    pub why: Move,
}

/// The next weights of the zones in `weights`, from `samples` (see the module doc).
pub fn next(
    weights: &BTreeMap<Zone, u32>,
    samples: &BTreeMap<Zone, Sample>,
    policy: &Policy,
) -> Vec<Decision> {
    let enough = |s: &&Sample| s.requests >= policy.min_requests;
    let reference = samples
        .values()
        .filter(enough)
        .filter_map(Sample::mean)
        .min()
        .unwrap_or_default()
        .max(policy.latency_floor);
    let min = policy.min_weight.min(policy.max_weight);
    weights
        .iter()
        .map(|(zone, &from)| {
            let Some(s) = samples.get(zone).filter(enough) else {
                return Decision {
                    zone: zone.clone(),
                    from,
                    to: from,
                    why: Move::NoData,
                };
            };
            let ratio = s
                .mean()
                .map_or(1.0, |m| m.as_secs_f64() / reference.as_secs_f64());
            let fails = s.failure_rate();
            let (to, why) = if ratio >= policy.latency_high || fails >= policy.failures_high {
                ((from / 2).max(min), Move::Down)
            } else if ratio <= policy.latency_low && fails <= policy.failures_low {
                (
                    from.saturating_mul(2).max(min).min(policy.max_weight),
                    Move::Up,
                )
            } else {
                (from, Move::Hold)
            };
            Decision {
                zone: zone.clone(),
                from,
                to,
                why,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(requests: u64, failures: u64, ms: u64) -> Sample {
        Sample {
            requests,
            failures,
            latency_us: ms * 1000 * requests,
            latency_samples: requests,
        }
    }

    fn run(w: &[(&str, u32)], samples: &[(&str, Sample)]) -> Vec<(String, u32, Move)> {
        let w = w.iter().map(|(z, w)| (Zone::new(z), *w)).collect();
        let samples = samples.iter().map(|(z, s)| (Zone::new(z), *s)).collect();
        next(&w, &samples, &Policy::default())
            .into_iter()
            .map(|d| (d.zone.to_string(), d.to, d.why))
            .collect()
    }

    #[test]
    fn a_slow_zone_halves_down_to_the_floor() {
        let w = [("a", 100), ("b", 100), ("c", 100)];
        let samples = [
            ("a", s(100, 0, 1)),
            ("b", s(100, 0, 2)),
            ("c", s(100, 0, 50)),
        ];
        assert_eq!(
            run(&w, &samples),
            [
                ("a".into(), 100, Move::Up),
                ("b".into(), 100, Move::Up),
                ("c".into(), 50, Move::Down)
            ]
        );
        let w = [("a", 100), ("b", 100), ("c", 8)];
        assert_eq!(run(&w, &samples)[2], ("c".into(), 5, Move::Down));
        let w = [("a", 100), ("b", 100), ("c", 5)];
        assert_eq!(run(&w, &samples)[2], ("c".into(), 5, Move::Down));
    }

    #[test]
    fn failures_move_a_zone_down() {
        let w = [("a", 100), ("b", 100)];
        let samples = [("a", s(100, 0, 1)), ("b", s(100, 10, 1))];
        assert_eq!(run(&w, &samples)[1], ("b".into(), 50, Move::Down));
    }

    #[test]
    fn hysteresis_holds_between_the_thresholds_and_recovery_doubles() {
        // The reference is the floor (5 ms): 7 ms is 1.4x, at most 1.5: up; 9 ms is 1.8x,
        // between 1.5 and 2: hold.
        let w = [("a", 100), ("b", 20)];
        let samples = [("a", s(100, 0, 1)), ("b", s(100, 0, 7))];
        assert_eq!(run(&w, &samples)[1], ("b".into(), 40, Move::Up));
        let samples = [("a", s(100, 0, 1)), ("b", s(100, 0, 9))];
        assert_eq!(run(&w, &samples)[1], ("b".into(), 20, Move::Hold));
        // 2 % failures: between 1 % and 5 %: hold.
        let samples = [("a", s(100, 0, 1)), ("b", s(100, 2, 1))];
        assert_eq!(run(&w, &samples)[1], ("b".into(), 20, Move::Hold));
        // Well again: doubles, capped at the maximum.
        let samples = [("a", s(100, 0, 1)), ("b", s(100, 0, 1))];
        assert_eq!(run(&w, &samples)[1], ("b".into(), 40, Move::Up));
        let w = [("a", 100), ("b", 80)];
        assert_eq!(run(&w, &samples)[1], ("b".into(), 100, Move::Up));
    }

    #[test]
    fn small_latencies_and_few_samples_do_not_move_anything() {
        // 0.2 ms against 0.9 ms: both under the 5 ms floor.
        let w = [("a", 100), ("b", 100)];
        let fast = Sample {
            requests: 100,
            failures: 0,
            latency_us: 200 * 100,
            latency_samples: 100,
        };
        let slower = Sample {
            latency_us: 900 * 100,
            ..fast
        };
        assert_eq!(
            run(&w, &[("a", fast), ("b", slower)])[1],
            ("b".into(), 100, Move::Up)
        );
        // 10 requests (< 20): no data, holds, and does not set the reference (b is its own).
        let w = [("a", 100), ("b", 50)];
        assert_eq!(
            run(&w, &[("a", s(10, 0, 1)), ("b", s(100, 0, 50))]),
            [("a".into(), 100, Move::NoData), ("b".into(), 100, Move::Up)]
        );
    }
}
