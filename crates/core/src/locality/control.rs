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
//! A zone's sample spans as many intervals as it takes to gather `min_requests` requests
//! ([`Window`]): a zone held at a small weight gets few requests, and its recovery must still
//! be seen. Until then it holds its weight. The rule reads nothing but the weights in the
//! document and the reports, so a new leader continues where the last one stopped.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::cluster::MemberRecord;
use crate::locality::Locality;
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

/// The members' counters at the last reading, to turn the next reading into the samples of
/// the interval between them.
#[derive(Debug, Default)]
pub struct Counters {
    last: HashMap<(String, String, String), Sample>,
}

impl Counters {
    /// The samples per pool and zone since the last call (the first call only remembers).
    /// A counter that went down (the member restarted) counts from 0.
    pub fn advance(&mut self, members: &[MemberRecord]) -> BTreeMap<(String, Zone), Sample> {
        let mut out: BTreeMap<(String, Zone), Sample> = BTreeMap::new();
        let mut next = HashMap::with_capacity(self.last.len());
        for m in members {
            for r in &m.report {
                let now = Sample {
                    requests: r.requests,
                    failures: r.failures,
                    latency_us: r.latency_us,
                    latency_samples: r.latency_samples,
                };
                let key = (m.member.clone(), r.pool.clone(), r.address.clone());
                if let (Some(prev), Some(zone)) = (self.last.get(&key), &r.zone) {
                    let d = |now: u64, prev: u64| now.checked_sub(prev).unwrap_or(now);
                    let delta = if now.requests < prev.requests {
                        now
                    } else {
                        Sample {
                            requests: d(now.requests, prev.requests),
                            failures: d(now.failures, prev.failures),
                            latency_us: d(now.latency_us, prev.latency_us),
                            latency_samples: d(now.latency_samples, prev.latency_samples),
                        }
                    };
                    out.entry((r.pool.clone(), Zone::new(zone)))
                        .or_default()
                        .add(&delta);
                }
                next.insert(key, now);
            }
        }
        self.last = next;
        out
    }
}

/// Samples per pool and zone gathered over intervals until each has `min_requests`.
#[derive(Debug, Default)]
pub struct Window {
    pending: BTreeMap<(String, Zone), Sample>,
}

impl Window {
    /// Adds one interval's samples; returns those that now have `min_requests` requests
    /// (and starts them again), keeping the others for the next intervals.
    pub fn take(
        &mut self,
        fresh: BTreeMap<(String, Zone), Sample>,
        min_requests: u64,
    ) -> BTreeMap<(String, Zone), Sample> {
        for (k, s) in fresh {
            self.pending.entry(k).or_default().add(&s);
        }
        let ready: Vec<(String, Zone)> = self
            .pending
            .iter()
            .filter(|(_, s)| s.requests >= min_requests)
            .map(|(k, _)| k.clone())
            .collect();
        ready
            .into_iter()
            .filter_map(|k| self.pending.remove_entry(&k))
            .collect()
    }
}

/// Zone weights, by zone.
pub type ZoneWeights = BTreeMap<Zone, u32>;

/// The pools of a shared document whose locality the controller moves
/// (`[pool.locality] weights` with `controlled = true`), with their weights now.
///
/// # Errors
/// The document does not parse as a configuration (the reason, as `fulcrum check` says).
pub fn controlled(document: &str) -> Result<Vec<(String, ZoneWeights)>, String> {
    let cfg = crate::config::parse(document).map_err(|e| e.render("document", document))?;
    Ok(cfg
        .pools
        .into_iter()
        .filter_map(|p| match p.locality {
            Some(Locality::Weights {
                weights,
                controlled: true,
            }) => Some((p.name, weights)),
            _ => None,
        })
        .collect())
}

/// The document with `pool`'s `[pool.locality] weights` set to `weights`, everything else
/// (comments, order, formatting) kept.
///
/// # Errors
/// The document is not TOML, or has no such pool with a `[pool.locality]` table.
pub fn set_weights(
    document: &str,
    pool: &str,
    weights: &BTreeMap<Zone, u32>,
) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = document
        .parse()
        .map_err(|e: toml_edit::TomlError| e.to_string())?;
    let pools = doc
        .get_mut("pool")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or("the document has no [[pool]]")?;
    let p = pools
        .iter_mut()
        .find(|t| t.get("name").and_then(toml_edit::Item::as_str) == Some(pool))
        .ok_or_else(|| format!("the document has no pool `{pool}`"))?;
    let loc = p
        .get_mut("locality")
        .and_then(toml_edit::Item::as_table_like_mut)
        .ok_or_else(|| format!("pool `{pool}` has no [pool.locality]"))?;
    let mut w = toml_edit::InlineTable::new();
    for (z, v) in weights {
        w.insert(z.as_str(), i64::from(*v).into());
    }
    loc.insert("weights", toml_edit::value(w));
    Ok(doc.to_string())
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
    fn the_document_is_rewritten_in_place() {
        let doc = "# the fleet\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:80\"\nprotocol = \"http\"\npool = \"web\"\n\n[[pool]]\nname = \"web\" # ours\nbackend = [{ address = \"127.0.0.1:1\", zone = \"a\" }]\n[pool.locality]\nweights = { a = 100, b = 100 }\ncontrolled = true\n";
        let before = controlled(doc).expect("valid");
        assert_eq!(before[0].0, "web");
        let w: BTreeMap<Zone, u32> = [(Zone::new("a"), 100), (Zone::new("b"), 50)].into();
        let out = set_weights(doc, "web", &w).expect("rewritten");
        assert!(out.starts_with("# the fleet\n"), "{out}");
        assert!(out.contains("name = \"web\" # ours"), "{out}");
        assert_eq!(controlled(&out).expect("valid"), [("web".to_owned(), w)]);
        assert!(set_weights(doc, "nope", &BTreeMap::new()).is_err());
    }

    #[test]
    fn counters_give_the_interval_and_survive_a_restart() {
        use crate::cluster::BackendReport;
        let rec = |requests: u64, us: u64| MemberRecord {
            member: "m".into(),
            address: None,
            version: "0".into(),
            applied_revision: 1,
            announced: vec![],
            refused: None,
            report: vec![BackendReport {
                pool: "web".into(),
                address: "127.0.0.1:1".into(),
                zone: Some("a".into()),
                requests,
                failures: 0,
                latency_us: us,
                latency_samples: requests,
            }],
            registry_refused: vec![],
        };
        let mut c = Counters::default();
        assert!(c.advance(&[rec(100, 1000)]).is_empty());
        let key = ("web".to_owned(), Zone::new("a"));
        let got = c.advance(&[rec(150, 6000)]);
        assert_eq!(got[&key].requests, 50);
        assert_eq!(got[&key].mean(), Some(Duration::from_micros(100)));
        // Restarted: counts from 0.
        let got = c.advance(&[rec(10, 500)]);
        assert_eq!(got[&key].requests, 10);
    }

    #[test]
    fn a_window_waits_for_enough_requests() {
        let mut w = Window::default();
        let k = |z: &str| ("web".to_owned(), Zone::new(z));
        let got = w.take([(k("a"), s(30, 0, 1)), (k("c"), s(8, 0, 1))].into(), 20);
        assert_eq!(got.keys().collect::<Vec<_>>(), [&k("a")]);
        let got = w.take([(k("a"), s(5, 0, 1)), (k("c"), s(8, 0, 1))].into(), 20);
        assert!(got.is_empty());
        let got = w.take([(k("c"), s(8, 0, 1))].into(), 20);
        assert_eq!(got[&k("c")].requests, 24);
        assert_eq!(got.len(), 1);
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
