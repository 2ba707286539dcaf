//! Locality: which zone a new flow or request goes to, before the pool's scheduler picks a
//! backend inside it (Envoy's locality-weighted load balancing, zone-aware routing and
//! priority levels), and the global controller's policy that moves locality weights away
//! from a zone that slows down or fails (docs/cluster.md, "Locality").
//!
//! A pool's `[pool.locality]` ([`Locality`]) is either
//! - explicit zone weights (`weights = { c = 90, a = 5, b = 5 }`): a zone's effective weight
//!   is its weight times its availability, `min(1, 1.4 × healthy share)` (Envoy's
//!   overprovisioning factor of 140 %), so a zone that loses backends sheds its traffic to
//!   the others in proportion, and a zone with no eligible backend gets none. Zones that the
//!   weights do not name (and backends without a zone) get no new flows while a named zone
//!   has an eligible backend; or
//! - `prefer = "local"`: the instance's own zone (`[cluster] zone`) takes every new flow
//!   while its healthy share is at least `spill_below` (default 70 %); below that it keeps
//!   `healthy share / spill_below` of them and the rest spills to the other zones in
//!   proportion to their eligible backends' weights (Envoy's priority levels, with the
//!   overprovisioning factor `1 / spill_below`).
//!
//! The healthy share of a zone is the number of its eligible backends (up, weight above 0)
//! over the number of its backends. When no zone can take a flow (or the instance's zone is
//! unknown for `prefer = "local"`), the pool's scheduler picks from every backend, as without
//! locality.
//!
//! The plan ([`ZonePlan`]) is built with each snapshot (whenever a backend's state changes),
//! with one scheduler per zone built over the whole backend list with the other zones'
//! backends ineligible, so indices, loads and tried backends mean the same as for the pool's
//! scheduler. [`crate::choice::choose`] asks it for a zone: hashing schedulers by a mix of
//! the flow's hash (a flow keeps its zone while the weights stay), the others by the
//! caller's random number.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{Backend, BackendState, SchedulerKind, Zone};
use crate::sched::{self, SchedOptions, Scheduler};

/// Envoy's overprovisioning factor for explicit weights, in percent.
pub const OVERPROVISIONING: u64 = 140;

/// The default `spill_below` of `prefer = "local"`, in percent.
pub const DEFAULT_SPILL_BELOW: u8 = 70;

/// Locality weights never exceed this (the controller's ceiling, and the config's maximum).
pub const MAX_WEIGHT: u32 = 10_000;

/// `[pool.locality]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locality {
    /// `weights = { ZONE = WEIGHT, ... }` (zones sorted by name; at least one weight above
    /// 0). `controlled`: the global controller (`fulcrum controller`) may rewrite them.
    Weights {
        weights: BTreeMap<Zone, u32>,
        controlled: bool,
    },
    /// `prefer = "local"`, spilling when the local zone's healthy share is below
    /// `spill_below` percent (1..=100).
    PreferLocal { spill_below: u8 },
}

/// A zone's share of new flows, as the plan computed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneShare {
    pub zone: Zone,
    /// Relative weight (parts of the plan's total).
    pub weight: u64,
}

/// The effective weights of each zone of `backends` under `locality` (sorted by zone, only
/// zones with a weight above 0); empty when no zone can take a flow this way.
pub fn shares(locality: &Locality, local: Option<&Zone>, backends: &[Backend]) -> Vec<ZoneShare> {
    // Per zone: (backends, eligible backends, eligible weight).
    let mut zones: BTreeMap<&Zone, (u64, u64, u64)> = BTreeMap::new();
    for b in backends {
        if let Some(z) = &b.zone {
            let e = zones.entry(z).or_default();
            e.0 += 1;
            if b.is_eligible() {
                e.1 += 1;
                e.2 += u64::from(b.weight.get());
            }
        }
    }
    let out: Vec<ZoneShare> = match locality {
        Locality::Weights { weights, .. } => weights
            .iter()
            .filter_map(|(zone, &w)| {
                let &(n, healthy, _) = zones.get(zone)?;
                // w × min(1, 1.4 × healthy / n), in parts of 100 × n.
                let avail = (OVERPROVISIONING * healthy).min(100 * n);
                Some(ZoneShare {
                    zone: zone.clone(),
                    weight: u64::from(w) * avail * 1000 / (100 * n),
                })
            })
            .collect(),
        Locality::PreferLocal { spill_below } => {
            let Some(&(n, healthy, _)) = local.and_then(|l| zones.get(l)) else {
                return Vec::new();
            };
            let Some(local) = local else {
                return Vec::new();
            };
            // The local zone keeps min(1, healthy / n / spill_below) of 1_000_000 parts.
            let spill = u64::from((*spill_below).max(1));
            let keep = (healthy * 100 * 1_000_000 / (n * spill)).min(1_000_000);
            let others: u64 = zones
                .iter()
                .filter(|(z, _)| **z != local)
                .map(|(_, e)| e.2)
                .sum();
            let keep = if others == 0 { 1_000_000 } else { keep };
            let rest = 1_000_000 - keep;
            zones
                .iter()
                .map(|(z, e)| ZoneShare {
                    zone: (*z).clone(),
                    weight: if *z == local {
                        keep
                    } else {
                        rest * e.2 / others.max(1)
                    },
                })
                .collect()
        }
    };
    out.into_iter().filter(|s| s.weight > 0).collect()
}

/// One zone of a plan.
#[derive(Debug)]
pub struct PlanZone {
    pub share: ZoneShare,
    /// The pool's scheduler over the pool's backends, only this zone's eligible.
    pub scheduler: Arc<dyn Scheduler>,
}

/// A pool's locality for one snapshot: the zones that take new flows, with their weights
/// and schedulers.
#[derive(Debug)]
pub struct ZonePlan {
    pub zones: Vec<PlanZone>,
    total: u64,
}

impl ZonePlan {
    /// The plan for `backends` (`None`: no zone can take a flow; the pool's scheduler picks
    /// from all).
    pub fn build(
        locality: &Locality,
        local: Option<&Zone>,
        kind: SchedulerKind,
        backends: &[Backend],
        opts: &SchedOptions,
    ) -> Option<Self> {
        let shares = shares(locality, local, backends);
        if shares.is_empty() {
            return None;
        }
        let zones: Vec<PlanZone> = shares
            .into_iter()
            .map(|share| {
                let only: Vec<Backend> = backends
                    .iter()
                    .map(|b| {
                        let mut b = b.clone();
                        if b.zone.as_ref() != Some(&share.zone) {
                            b.state = BackendState::Draining;
                        }
                        b
                    })
                    .collect();
                PlanZone {
                    scheduler: sched::build(kind, &only, opts),
                    share,
                }
            })
            .collect();
        let total = zones.iter().map(|z| z.share.weight).sum();
        Some(Self { zones, total })
    }

    /// The zone for a uniform 32-bit number `r`.
    pub fn pick(&self, r: u32) -> Option<&PlanZone> {
        let point = (u128::from(r) * u128::from(self.total)) >> 32;
        let mut acc = 0u128;
        self.zones.iter().find(|z| {
            acc += u128::from(z.share.weight);
            point < acc
        })
    }

    /// Each zone's share of new flows, in percent (for the admin API and tests).
    pub fn percentages(&self) -> Vec<(Zone, f64)> {
        self.zones
            .iter()
            .map(|z| {
                #[allow(clippy::cast_precision_loss)]
                let p = z.share.weight as f64 * 100.0 / self.total.max(1) as f64;
                (z.share.zone.clone(), p)
            })
            .collect()
    }
}

/// Mixes a hash or random number into the number that picks a zone (murmur3's finalizer),
/// so that the zone and the backend inside it do not follow the same bits.
pub const fn zone_key(x: u32) -> u32 {
    let mut h = x ^ 0x9e37_79b9;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

pub mod control;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BackendState;

    fn b(port: u16, zone: &str, state: BackendState) -> Backend {
        let mut b = Backend::new(([127, 0, 0, 1], port).into(), 1).in_zone(Some(Zone::new(zone)));
        b.state = state;
        b
    }

    fn weights(w: &[(&str, u32)]) -> Locality {
        Locality::Weights {
            weights: w.iter().map(|(z, w)| (Zone::new(z), *w)).collect(),
            controlled: false,
        }
    }

    fn pct(l: &Locality, local: Option<&str>, bs: &[Backend]) -> Vec<(String, u64)> {
        let s = shares(l, local.map(Zone::new).as_ref(), bs);
        let total: u64 = s.iter().map(|s| s.weight).sum();
        s.into_iter()
            .map(|s| (s.zone.to_string(), (s.weight * 100 + total / 2) / total))
            .collect()
    }

    use BackendState::{Down, Up};

    #[test]
    fn explicit_weights_follow_the_config_and_availability() {
        let bs = [b(1, "a", Up), b(2, "b", Up), b(3, "c", Up), b(4, "c", Up)];
        let l = weights(&[("c", 90), ("a", 5), ("b", 5)]);
        assert_eq!(
            pct(&l, None, &bs),
            [("a".into(), 5), ("b".into(), 5), ("c".into(), 90)]
        );
        // Half of c down: 1.4 × 50 % = 70 % available, so c's weight is 63.
        let bs = [b(1, "a", Up), b(2, "b", Up), b(3, "c", Up), b(4, "c", Down)];
        assert_eq!(
            pct(&l, None, &bs),
            [("a".into(), 7), ("b".into(), 7), ("c".into(), 86)]
        );
        // A zone that is not named gets nothing; a named zone with nothing up neither.
        let bs = [b(1, "a", Down), b(2, "d", Up), b(3, "c", Up)];
        assert_eq!(pct(&l, None, &bs), [("c".into(), 100)]);
        // Nothing named can take a flow: no plan.
        assert!(pct(&l, None, &[b(2, "d", Up)]).is_empty());
    }

    #[test]
    fn prefer_local_spills_below_the_threshold() {
        let l = Locality::PreferLocal { spill_below: 70 };
        let mut bs = vec![b(1, "a", Up), b(2, "a", Up), b(3, "a", Up), b(4, "a", Up)];
        bs.extend([b(5, "b", Up), b(6, "c", Up)]);
        assert_eq!(pct(&l, Some("a"), &bs), [("a".into(), 100)]);
        // 3 of 4 up = 75 % >= 70 %: still all local.
        bs[0].state = Down;
        assert_eq!(pct(&l, Some("a"), &bs), [("a".into(), 100)]);
        // 2 of 4 = 50 %: keeps 50/70 = 71 %, the rest split between b and c.
        bs[1].state = Down;
        assert_eq!(
            pct(&l, Some("a"), &bs),
            [("a".into(), 71), ("b".into(), 14), ("c".into(), 14)]
        );
        // None local up: all spills.
        bs[2].state = Down;
        bs[3].state = Down;
        assert_eq!(
            pct(&l, Some("a"), &bs),
            [("b".into(), 50), ("c".into(), 50)]
        );
        // Unknown local zone, or one without backends: no plan.
        assert!(pct(&l, None, &bs).is_empty());
        assert!(pct(&l, Some("z"), &bs).is_empty());
    }

    #[test]
    fn a_plan_picks_zones_in_proportion_and_schedules_inside_the_zone() {
        let bs = [b(1, "a", Up), b(2, "b", Up), b(3, "b", Up)];
        let plan = ZonePlan::build(
            &weights(&[("a", 1), ("b", 3)]),
            None,
            SchedulerKind::Maglev,
            &bs,
            &SchedOptions::default(),
        )
        .expect("a plan");
        let mut count = [0u32; 2];
        for i in 0..4000u32 {
            let z = plan.pick(zone_key(i)).expect("a zone");
            let pick = z
                .scheduler
                .pick(&sched::PickRequest {
                    hash: i,
                    random: 0,
                    loads: &sched::NoLoads,
                    exclude: &[],
                    now: crate::model::Now::ZERO,
                })
                .expect("a backend");
            let zone = bs[pick].zone.clone().expect("zoned");
            assert_eq!(zone, z.share.zone, "the backend is in the picked zone");
            count[usize::from(zone.as_str() == "b")] += 1;
        }
        assert!((800..1200).contains(&count[0]), "{count:?}");
    }
}
