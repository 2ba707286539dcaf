//! A discrete-event simulator of one load balancer in front of uneven backends: the
//! schedulers' regression tests. Run with `--nocapture` to see the table.
//!
//! Each backend serves 4 requests at a time (FIFO queue behind them) with exponential
//! service times. Requests arrive as a Poisson stream at 70 % of the pool's total capacity,
//! for 60 simulated seconds. A request's response time (what the balancer samples and what
//! is reported) runs from its arrival to its completion. Scenarios:
//! - `identical`: three backends, 10 ms mean;
//! - `one_5x_slower`: 10, 10 and 50 ms;
//! - `gc_stalls`: three at 10 ms, the third stalls 200 ms every 2 s (work in progress and
//!   queued work wait it out);
//! - `slow_10x_for_5s`: three at 10 ms, the third at 100 ms from 20 s to 25 s, then back;
//! - `rising`: three at 10 ms, the third rising linearly to 100 ms from 10 s to 40 s, then
//!   back at once (where a trend should help).
//!
//! Reported per scheduler: p50, p99, p999 and the largest load imbalance (the largest
//! backend's share of requests over its share of capacity).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use fulcrum_core::model::{Backend, SchedulerKind};
use fulcrum_core::sched::{build, Loads, PickRequest, SchedOptions, Signals};

const WORKERS: usize = 4;
const SECONDS: f64 = 60.0;
const LOAD: f64 = 0.7;

#[derive(Clone, Copy)]
enum Scenario {
    Identical,
    OneSlower,
    GcStalls,
    SlowForAWhile,
    Rising,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Identical => "identical",
            Self::OneSlower => "one_5x_slower",
            Self::GcStalls => "gc_stalls",
            Self::SlowForAWhile => "slow_10x_for_5s",
            Self::Rising => "rising",
        }
    }
    /// Mean service time (seconds) of backend `b` at time `t`.
    fn mean(self, b: usize, t: f64) -> f64 {
        match (self, b) {
            (Self::OneSlower, 2) => 0.050,
            (Self::SlowForAWhile, 2) if (20.0..25.0).contains(&t) => 0.100,
            // 10 ms rising to 100 ms over 10..40 s, then back at once.
            (Self::Rising, 2) if (10.0..40.0).contains(&t) => 0.010 + 0.090 * (t - 10.0) / 30.0,
            _ => 0.010,
        }
    }
    /// The nominal capacity share of each backend (for the imbalance).
    fn capacity(self) -> [f64; 3] {
        match self {
            Self::OneSlower => [1.0 / 0.010, 1.0 / 0.010, 1.0 / 0.050],
            _ => [1.0; 3],
        }
    }
    /// When work started at `start` needing `work` seconds completes (GC stalls push it
    /// out).
    fn finish(self, backend: usize, start: f64, work: f64) -> f64 {
        let mut end = start + work;
        if let (Self::GcStalls, 2) = (self, backend) {
            // Stalls [2k + 1, 2k + 1.2): every stall the work overlaps adds its length.
            let mut k = ((start - 1.0) / 2.0).floor().max(0.0);
            loop {
                let (from, to) = (2.0 * k + 1.0, 2.0 * k + 1.2);
                if from >= end {
                    break;
                }
                if to > start {
                    end += to - from.max(start);
                }
                k += 1.0;
            }
        }
        end
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }
}

struct Lb {
    active: Vec<u64>,
    signals: Vec<Signals>,
}
impl Loads for Lb {
    fn active(&self, idx: usize) -> u64 {
        self.active[idx]
    }
    fn signals(&self, idx: usize) -> Option<&Signals> {
        self.signals.get(idx)
    }
}

#[derive(Debug, Clone, Copy)]
struct Report {
    p50: f64,
    p99: f64,
    p999: f64,
    imbalance: f64,
}

fn secs(t: f64) -> Duration {
    Duration::from_secs_f64(t.max(0.0))
}

/// Completion events: (time in ns, backend, arrival time in ns).
type Event = Reverse<(u64, usize, u64)>;

fn run(kind: SchedulerKind, sc: Scenario, seed: u64) -> Report {
    let n = 3;
    let backends: Vec<Backend> = (0..n)
        .map(|i| Backend::new(format!("198.18.0.{}:80", i + 1).parse().expect("addr"), 1))
        .collect();
    let sched = build(kind, &backends, &SchedOptions::default());
    let mut lb = Lb {
        active: vec![0; n],
        signals: (0..n).map(|_| Signals::default()).collect(),
    };
    let mut rng = Rng(seed);
    let capacity: f64 = (0..n)
        .map(|b| WORKERS as f64 / sc.mean(b, 0.0))
        .sum::<f64>();
    let rate = capacity * LOAD;
    let mut busy = vec![0usize; n];
    let mut queue: Vec<VecDeque<f64>> = vec![VecDeque::new(); n];
    let mut events: BinaryHeap<Event> = BinaryHeap::new();
    let mut latencies = Vec::new();
    let mut count = [0usize; 3];
    let ns = |t: f64| (t * 1e9) as u64;
    let start_work =
        |b: usize, arrival: f64, now: f64, rng: &mut Rng, ev: &mut BinaryHeap<Event>| {
            let s = rng.exp(sc.mean(b, now));
            ev.push(Reverse((ns(sc.finish(b, now, s)), b, ns(arrival))));
        };
    let mut t = 0.0;
    let mut next_arrival = rng.exp(1.0 / rate);
    while t < SECONDS || !events.is_empty() {
        let next_done = events.peek().map(|Reverse((d, ..))| *d as f64 / 1e9);
        match next_done {
            Some(d) if d <= next_arrival || next_arrival >= SECONDS => {
                let Some(Reverse((_, b, arr))) = events.pop() else {
                    break;
                };
                t = d;
                let arrival = arr as f64 / 1e9;
                lb.active[b] -= 1;
                let lat = t - arrival;
                sched.observe(&lb.signals[b], secs(lat), secs(t));
                latencies.push(lat);
                busy[b] -= 1;
                if let Some(a) = queue[b].pop_front() {
                    busy[b] += 1;
                    start_work(b, a, t, &mut rng, &mut events);
                }
            }
            _ if next_arrival < SECONDS => {
                t = next_arrival;
                next_arrival += rng.exp(1.0 / rate);
                let b = sched
                    .pick(&PickRequest {
                        hash: 0,
                        random: rng.next(),
                        loads: &lb,
                        exclude: &[],
                        now: secs(t),
                    })
                    .expect("pick");
                lb.active[b] += 1;
                count[b] += 1;
                if busy[b] < WORKERS {
                    busy[b] += 1;
                    start_work(b, t, t, &mut rng, &mut events);
                } else {
                    queue[b].push_back(t);
                }
            }
            _ => break,
        }
    }
    latencies.sort_by(f64::total_cmp);
    let q =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] * 1e3;
    let cap = sc.capacity();
    let cap_total: f64 = cap.iter().sum();
    let total: usize = count.iter().sum();
    let imbalance = (0..n)
        .map(|b| (count[b] as f64 / total as f64) / (cap[b] / cap_total))
        .fold(0.0, f64::max);
    Report {
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        imbalance,
    }
}

/// Medians of 3 seeds.
fn median_run(kind: SchedulerKind, sc: Scenario) -> Report {
    let mut rs: Vec<Report> = (1..=3).map(|s| run(kind, sc, s * 7919)).collect();
    let med = |f: fn(&Report) -> f64, rs: &mut Vec<Report>| {
        rs.sort_by(|a, b| f(a).total_cmp(&f(b)));
        f(&rs[1])
    };
    Report {
        p50: med(|r| r.p50, &mut rs),
        p99: med(|r| r.p99, &mut rs),
        p999: med(|r| r.p999, &mut rs),
        imbalance: med(|r| r.imbalance, &mut rs),
    }
}

const KINDS: [SchedulerKind; 9] = [
    SchedulerKind::RoundRobin,
    SchedulerKind::WeightedRoundRobin,
    SchedulerKind::LeastConn,
    SchedulerKind::Random,
    SchedulerKind::PowerOfTwo,
    SchedulerKind::LeastRequest,
    SchedulerKind::PeakEwma,
    SchedulerKind::Predictive,
    SchedulerKind::WeightedLeastConn,
];

fn table(sc: Scenario) -> Vec<(SchedulerKind, Report)> {
    let rows: Vec<_> = KINDS.iter().map(|&k| (k, median_run(k, sc))).collect();
    println!("\n{}: p50 / p99 / p999 ms, imbalance", sc.name());
    for (k, r) in &rows {
        println!(
            "  {:14} {:8.2} {:8.2} {:8.2}   {:.2}",
            k.as_str(),
            r.p50,
            r.p99,
            r.p999,
            r.imbalance
        );
    }
    rows
}

fn get(rows: &[(SchedulerKind, Report)], k: SchedulerKind) -> Report {
    rows.iter()
        .find(|(x, _)| *x == k)
        .map(|(_, r)| *r)
        .expect("row")
}

#[test]
fn identical_backends_every_load_aware_scheduler_stays_even() {
    let rows = table(Scenario::Identical);
    let rr = get(&rows, SchedulerKind::RoundRobin);
    for k in [
        SchedulerKind::LeastRequest,
        SchedulerKind::PeakEwma,
        SchedulerKind::Predictive,
    ] {
        let r = get(&rows, k);
        assert!(r.imbalance < 1.1, "{k}: imbalance {}", r.imbalance);
        assert!(r.p99 <= rr.p99 * 1.1, "{k}: p99 {} vs rr {}", r.p99, rr.p99);
    }
}

#[test]
fn one_slower_backend_load_aware_schedulers_cut_the_tail() {
    let rows = table(Scenario::OneSlower);
    let rr = get(&rows, SchedulerKind::RoundRobin);
    let lc = get(&rows, SchedulerKind::LeastConn);
    for k in [
        SchedulerKind::LeastRequest,
        SchedulerKind::PeakEwma,
        SchedulerKind::Predictive,
    ] {
        let r = get(&rows, k);
        assert!(r.p99 < rr.p99 * 0.5, "{k}: p99 {} vs rr {}", r.p99, rr.p99);
    }
    // Latency-aware beats load-aware: the slow backend's queue is not its only problem.
    for k in [SchedulerKind::PeakEwma, SchedulerKind::Predictive] {
        let r = get(&rows, k);
        assert!(r.p99 < lc.p99 * 0.8, "{k}: p99 {} vs lc {}", r.p99, lc.p99);
    }
}

#[test]
fn gc_stalls_latency_aware_schedulers_beat_least_connections() {
    let rows = table(Scenario::GcStalls);
    let rr = get(&rows, SchedulerKind::RoundRobin);
    let ewma = get(&rows, SchedulerKind::PeakEwma);
    assert!(
        ewma.p99 < rr.p99 * 0.5,
        "peak_ewma p99 {} vs rr {}",
        ewma.p99,
        rr.p99
    );
}

#[test]
fn slow_for_a_while_latency_aware_schedulers_cut_the_tail() {
    let rows = table(Scenario::SlowForAWhile);
    let rr = get(&rows, SchedulerKind::RoundRobin);
    let lc = get(&rows, SchedulerKind::LeastConn);
    for k in [SchedulerKind::PeakEwma, SchedulerKind::Predictive] {
        let r = get(&rows, k);
        assert!(
            r.p999 < rr.p999 * 0.5,
            "{k}: p999 {} vs rr {}",
            r.p999,
            rr.p999
        );
        assert!(
            r.p999 < lc.p999 * 0.5,
            "{k}: p999 {} vs lc {}",
            r.p999,
            lc.p999
        );
    }
}

#[test]
fn rising_latency_forecast_and_peak_both_follow_it() {
    let rows = table(Scenario::Rising);
    let lc = get(&rows, SchedulerKind::LeastConn);
    for k in [SchedulerKind::PeakEwma, SchedulerKind::Predictive] {
        let r = get(&rows, k);
        assert!(r.p99 < lc.p99, "{k}: p99 {} vs lc {}", r.p99, lc.p99);
    }
}
