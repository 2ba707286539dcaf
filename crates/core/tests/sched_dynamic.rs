//! `least_request`, `peak_ewma`, `predictive` and slow start: each pick is what its policy says
//! for the given loads and samples, picks are deterministic, weights are respected, slow
//! start ramps as documented, and a clock that goes backwards breaks nothing.

use std::collections::HashMap;
use std::time::Duration;

use fulcrum_core::model::{Backend, SchedulerKind};
use fulcrum_core::sched::signals::{slow_start_factor, SLOW_START_MIN};
use fulcrum_core::sched::{build, Loads, PickRequest, SchedOptions, Scheduler, Signals};
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn pool(weights: &[u16]) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Backend::new(format!("198.18.0.{}:80", i + 1).parse().expect("addr"), w))
        .collect()
}

/// Loads and signals as an IO layer keeps them.
struct State {
    active: Vec<u64>,
    signals: Vec<Signals>,
}

impl State {
    fn new(n: usize) -> Self {
        Self {
            active: vec![0; n],
            signals: (0..n).map(|_| Signals::default()).collect(),
        }
    }
}

impl Loads for State {
    fn active(&self, idx: usize) -> u64 {
        self.active.get(idx).copied().unwrap_or(0)
    }
    fn signals(&self, idx: usize) -> Option<&Signals> {
        self.signals.get(idx)
    }
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pick(s: &dyn Scheduler, st: &State, random: u64, now: Duration) -> usize {
    s.pick(&PickRequest {
        hash: 0,
        random,
        loads: st,
        exclude: &[],
        now,
    })
    .expect("pick")
}

const NEW: [SchedulerKind; 3] = [
    SchedulerKind::LeastRequest,
    SchedulerKind::PeakEwma,
    SchedulerKind::Predictive,
];

#[test]
fn every_new_scheduler_is_deterministic_under_a_fixed_seed() {
    for kind in NEW {
        let run = || {
            let s = build(
                kind,
                &pool(&[1, 2, 3, 1, 1, 4, 1, 1, 2, 5]),
                &SchedOptions::default(),
            );
            let mut st = State::new(10);
            let mut seed = 42;
            let mut out = Vec::new();
            for k in 0..2000u32 {
                let now = MS * k;
                let i = pick(&*s, &st, splitmix(&mut seed), now);
                st.active[i] += 1;
                s.observe(&st.signals[i], MS * (1 + (i as u32 % 3) * 5), now);
                if k % 3 == 0 {
                    let j = (splitmix(&mut seed) % 10) as usize;
                    st.active[j] = st.active[j].saturating_sub(1);
                }
                out.push(i);
            }
            out
        };
        assert_eq!(run(), run(), "{kind}");
    }
}

#[test]
fn weights_are_respected_over_100000_picks_within_1_percent() {
    let weights = [1u16, 2, 3, 4];
    let total: u32 = weights.iter().map(|&w| u32::from(w)).sum();
    for kind in NEW {
        let s = build(kind, &pool(&weights), &SchedOptions::default());
        let st = State::new(4);
        let mut seed = 7;
        let mut c = [0usize; 4];
        let n = 100_000;
        for _ in 0..n {
            c[pick(&*s, &st, splitmix(&mut seed), Duration::ZERO)] += 1;
        }
        for (k, &w) in weights.iter().enumerate() {
            let want = f64::from(w) / f64::from(total);
            let got = c[k] as f64 / n as f64;
            assert!(
                (got - want).abs() < 0.01 * want.max(0.1),
                "{kind}: backend {k} got {got:.4}, want {want:.4}"
            );
        }
    }
}

proptest! {
    /// Equal weights, a small pool: least_request takes a backend with the fewest
    /// outstanding requests.
    #[test]
    fn least_request_takes_the_fewest_outstanding(active in prop::collection::vec(0u64..50, 1..8), r: u64) {
        let n = active.len();
        let s = build(SchedulerKind::LeastRequest, &pool(&vec![3; n]), &SchedOptions::default());
        let mut st = State::new(n);
        st.active.clone_from(&active);
        let i = pick(&*s, &st, r, Duration::ZERO);
        prop_assert_eq!(active[i], *active.iter().min().expect("one"));
    }

    /// Two backends (so both are the candidates): peak_ewma takes the lower
    /// `ewma x (outstanding + 1) / weight`.
    #[test]
    fn peak_ewma_takes_the_lower_cost(
        lat in prop::collection::vec(1u64..500, 2..=2),
        active in prop::collection::vec(0u64..20, 2..=2),
        weights in prop::collection::vec(1u16..10, 2..=2),
        r: u64,
    ) {
        let s = build(SchedulerKind::PeakEwma, &pool(&weights), &SchedOptions::default());
        let mut st = State::new(2);
        st.active.clone_from(&active);
        let now = 10 * S;
        for (sig, &l) in st.signals.iter().zip(&lat) {
            s.observe(sig, MS * l as u32, now);
        }
        let cost = |k: usize| lat[k] as f64 * (active[k] as f64 + 1.0) / f64::from(weights[k]);
        let i = pick(&*s, &st, r, now);
        prop_assert!(cost(i) <= cost(1 - i), "picked {} cost {} other {}", i, cost(i), cost(1 - i));
    }

    /// predictive takes a backend with the lowest forecast x load / weight (full scan).
    #[test]
    fn predictive_takes_the_lowest_forecast(
        lat in prop::collection::vec(1u64..500, 1..8),
        active in prop::collection::vec(0u64..20, 8),
        r: u64,
    ) {
        let n = lat.len();
        let s = build(SchedulerKind::Predictive, &pool(&vec![1; n]), &SchedOptions::default());
        let mut st = State::new(n);
        st.active.clone_from(&active[..n].to_vec());
        let now = 10 * S;
        for (sig, &l) in st.signals.iter().zip(&lat) {
            s.observe(sig, MS * l as u32, now);
        }
        let i = pick(&*s, &st, r, now);
        let scores: Vec<f64> = (0..n).map(|k| s.score(&st, k, now).expect("score")).collect();
        // One sample each: the forecast is the sample.
        for k in 0..n {
            let want = lat[k] as f64 * 1e6 * (active[k] as f64 + 1.0);
            prop_assert!((scores[k] - want).abs() <= want * 1e-5, "{} vs {}", scores[k], want);
        }
        prop_assert!(scores.iter().all(|&x| x >= scores[i]));
    }

    /// Clocks that jump backwards never panic and never give NaN or negative scores.
    #[test]
    fn clock_jumps_never_give_nan(steps in prop::collection::vec((0u64..100_000, 0u64..2_000, 0usize..3), 1..60), r: u64) {
        for kind in NEW {
            let opts = SchedOptions { slow_start: Some(S), ..SchedOptions::default() };
            let s = build(kind, &pool(&[1, 2, 3]), &opts);
            let mut st = State::new(3);
            for &(t, lat, k) in &steps {
                let now = MS * t as u32;
                st.signals[k].set_up(true, now, true);
                s.observe(&st.signals[k], MS * lat as u32, now);
                st.active[k] += 1;
                let i = pick(&*s, &st, r ^ t, now);
                prop_assert!(i < 3);
                for b in 0..3 {
                    let x = s.score(&st, b, now).expect("score");
                    prop_assert!(!x.is_nan() && x >= 0.0, "{} score {}", kind, x);
                }
            }
        }
    }
}

#[test]
fn a_slow_answer_is_believed_at_once_and_forgotten_by_half_lives() {
    let sig = Signals::default();
    let h = 5 * S;
    sig.observe_peak(10 * MS, S, h);
    sig.observe_peak(200 * MS, S + MS, h);
    let at = |t| sig.peak_ns(t, h).expect("sampled") / 1e6;
    assert!((at(S + MS) - 200.0).abs() < 1e-6, "the peak at once");
    // No sample for one half-life: halved; two: quartered.
    assert!((at(S + MS + h) - 100.0).abs() < 1e-6);
    assert!((at(S + MS + 2 * h) - 50.0).abs() < 1e-6);
    // A fast sample one half-life later pulls it halfway down.
    sig.observe_peak(10 * MS, S + MS + h, h);
    assert!((at(S + MS + h) - 105.0).abs() < 1e-6, "{}", at(S + MS + h));
}

#[test]
fn a_rising_latency_is_forecast_above_its_average() {
    let sig = Signals::default();
    let h = S;
    // 10 ms rising by 10 ms every 100 ms.
    for k in 0..60u32 {
        sig.observe_smooth(MS * (10 + 10 * k), 100 * MS * k, h);
    }
    let now = 100 * MS * 59;
    let f = sig.forecast_ns(now, h, S).expect("sampled") / 1e6;
    let last = 10.0 + 10.0 * 59.0;
    assert!(
        f > last,
        "forecast {f} ms is above the last sample {last} ms: the trend"
    );
    // A flat series forecasts itself.
    let flat = Signals::default();
    for k in 0..20u32 {
        flat.observe_smooth(20 * MS, 100 * MS * k, h);
    }
    let f = flat.forecast_ns(100 * MS * 19, h, S).expect("sampled") / 1e6;
    assert!((f - 20.0).abs() < 0.01, "{f}");
    // Left alone, it decays towards 0 at the half-life (so the backend is tried again).
    let g = flat
        .forecast_ns(100 * MS * 19 + 2 * h, h, S)
        .expect("sampled")
        / 1e6;
    assert!((g - 5.0).abs() < 0.01, "{g}");
}

#[test]
fn slow_start_ramps_linearly_from_10_percent() {
    let w = 30 * S;
    assert!((slow_start_factor(Some(Duration::ZERO), w) - SLOW_START_MIN).abs() < 1e-12);
    assert!((slow_start_factor(Some(15 * S), w) - 0.5).abs() < 1e-12);
    assert!((slow_start_factor(Some(27 * S), w) - 0.9).abs() < 1e-12);
    assert!((slow_start_factor(Some(w), w) - 1.0).abs() < 1e-12);
    assert!((slow_start_factor(None, w) - 1.0).abs() < 1e-12);

    // The shares: three equal backends, the third came up 0 s, 15 s and 30 s ago. wrr gives
    // it HAProxy's effective-weight share `w f / (others + w f)`; random its usual share
    // times `f`.
    for kind in [SchedulerKind::WeightedRoundRobin, SchedulerKind::Random] {
        ramp(kind, w);
    }
}

fn ramp(kind: SchedulerKind, w: Duration) {
    let s = build(
        kind,
        &pool(&[1, 1, 1]),
        &SchedOptions {
            slow_start: Some(w),
            ..SchedOptions::default()
        },
    );
    let st = State::new(3);
    for k in 0..3 {
        st.signals[k].set_up(true, Duration::ZERO, false);
    }
    let t0 = 100 * S;
    st.signals[2].set_up(false, t0, true);
    st.signals[2].set_up(true, t0, true);
    let mut seed = 1;
    for (after, want) in [(Duration::ZERO, 0.1), (15 * S, 0.5), (30 * S, 1.0)] {
        let n = 60_000;
        let mut c: HashMap<usize, usize> = HashMap::new();
        for _ in 0..n {
            *c.entry(pick(&*s, &st, splitmix(&mut seed), t0 + after))
                .or_default() += 1;
        }
        let share = c.get(&2).copied().unwrap_or(0) as f64 / n as f64;
        let expect = if kind == SchedulerKind::Random {
            want / 3.0
        } else {
            want / (2.0 + want)
        };
        assert!(
            (share - expect).abs() < 0.01,
            "{kind} after {after:?}: share {share:.3}, want {expect:.3}"
        );
    }
}

#[test]
fn backends_there_from_the_start_do_not_ramp_and_added_ones_do() {
    let sig = Signals::default();
    sig.set_up(true, 50 * S, false);
    assert!((slow_start_factor(sig.up_for(50 * S), 30 * S) - 1.0).abs() < f64::EPSILON);
    let added = Signals::default();
    added.set_up(true, 50 * S, true);
    assert!((slow_start_factor(added.up_for(50 * S), 30 * S) - SLOW_START_MIN).abs() < 1e-12);
    // Down and back: ramps from its return.
    sig.set_up(false, 60 * S, true);
    assert_eq!(sig.up_for(61 * S), None);
    sig.set_up(true, 70 * S, true);
    assert_eq!(sig.up_for(85 * S), Some(15 * S));
    // Staying up keeps the time it came up.
    sig.set_up(true, 90 * S, true);
    assert_eq!(sig.up_for(90 * S), Some(20 * S));
}

#[test]
fn an_unsampled_backend_is_probed_one_request_at_a_time() {
    let s = build(
        SchedulerKind::PeakEwma,
        &pool(&[1, 1]),
        &SchedOptions::default(),
    );
    let mut st = State::new(2);
    s.observe(&st.signals[0], 50 * MS, S);
    // Backend 1 has no sample: idle, it wins; holding one request, it loses.
    assert_eq!(pick(&*s, &st, 3, S), 1);
    st.active[1] = 1;
    assert_eq!(pick(&*s, &st, 3, S), 0);
}

/// `peak_ewma` on L4 (connect time plus the connection term), simulated with explicit time:
/// connections arrive every 5 ms for 20 s, connect in 1 ms everywhere, and backend 1 holds
/// each 10 times longer (200 ms) than backend 0 (20 ms). Returns backend 1's share of the
/// last 10 s, and the pick of each arrival. `durations`: the IO layer reports opened and
/// closed connections and their durations (as `crates/proxy/src/tcp.rs` does); without,
/// only the connect time and the open count score (what L4 `peak_ewma` had before).
fn l4_share(durations: bool) -> f64 {
    let s = build(
        SchedulerKind::PeakEwma,
        &pool(&[1, 1]),
        &SchedOptions::default(),
    );
    let mut st = State::new(2);
    let hold = [20 * MS, 200 * MS];
    // (close time, backend, opened)
    let mut open: Vec<(Duration, usize, Duration)> = Vec::new();
    let mut seed = 7;
    let (mut picks, mut ones) = (0u32, 0u32);
    for n in 0..4000u32 {
        let now = S + 5 * MS * n;
        open.sort_by_key(|c| c.0);
        while open.first().is_some_and(|c| c.0 <= now) {
            let (at, i, opened) = open.remove(0);
            st.active[i] -= 1;
            if durations {
                st.signals[i].connection_closed(opened);
                s.observe_connection(&st.signals[i], at.saturating_sub(opened), at);
            }
        }
        let i = pick(&*s, &st, splitmix(&mut seed), now);
        s.observe(&st.signals[i], MS, now + MS);
        st.active[i] += 1;
        let opened = now + MS;
        if durations {
            assert!(st.signals[i].connection_opened(opened));
        }
        open.push((opened + hold[i], i, opened));
        if n >= 2000 {
            picks += 1;
            ones += u32::from(i == 1);
        }
    }
    f64::from(ones) / f64::from(picks)
}

#[test]
fn l4_peak_ewma_takes_less_of_a_backend_that_holds_connections_longer() {
    let with = l4_share(true);
    let without = l4_share(false);
    println!("backend 1 (holds 10x longer): share {with:.3} with the connection term, {without:.3} with connect time only");
    assert!(
        with < without * 0.8,
        "the connection term moves load away: {with:.3} vs {without:.3}"
    );
    assert!(with > 0.0, "the slower backend is still tried");
}

#[test]
fn l4_connection_term_is_the_larger_of_completed_durations_and_open_ages() {
    let h = Duration::from_secs(5);
    let sig = Signals::default();
    assert_eq!(
        sig.connection_ns(S, h),
        None,
        "no connection yet (HTTP pools)"
    );
    // Open connections: their mean age counts before any completes.
    assert!(sig.connection_opened(S));
    assert!(sig.connection_opened(2 * S));
    let (n, age) = sig.open_connections(3 * S);
    assert_eq!(n, 2);
    assert!((age / 1e9 - 1.5).abs() < 1e-6, "{age}");
    assert!((sig.connection_ns(3 * S, h).unwrap() / 1e9 - 1.5).abs() < 1e-6);
    // Completed durations: a plain EWMA (the first sets it).
    sig.connection_closed(S);
    sig.connection_closed(2 * S);
    assert_eq!(sig.open_connections(3 * S).0, 0);
    sig.observe_duration(100 * MS, 3 * S, h);
    assert!((sig.connection_ns(3 * S, h).unwrap() / 1e6 - 100.0).abs() < 1e-6);
    // One half-life later a 300 ms one moves it half way (not to the peak).
    sig.observe_duration(300 * MS, 3 * S + h, h);
    let v = sig.connection_ns(3 * S + h, h).unwrap() / 1e6;
    assert!((v - 200.0).abs() < 1e-6, "{v}");
    // It decays while none completes; an old open connection then dominates.
    assert!(sig.connection_opened(3 * S + h));
    let later = 3 * S + h + 4 * h;
    let v = sig.connection_ns(later, h).unwrap() / 1e9;
    assert!((v - 20.0).abs() < 1e-6, "the open connection's age: {v}");
    // The score adds the term to the connect EWMA.
    let s = build(
        SchedulerKind::PeakEwma,
        &pool(&[1]),
        &SchedOptions::default(),
    );
    let mut st = State::new(1);
    st.signals[0].observe_peak(MS, S, h);
    let base = s.score(&st, 0, S).unwrap();
    assert!(st.signals[0].connection_opened(S));
    st.active[0] = 1;
    let with = s.score(&st, 0, S + S).unwrap();
    // (connect ewma decayed + 1 s of age) x (1 + 1)
    assert!(with > 1e9 && with > base, "{base} {with}");
}

#[test]
fn l4_connection_term_survives_clock_jumps_and_saturation() {
    let h = Duration::from_secs(5);
    let sig = Signals::default();
    assert!(sig.connection_opened(10 * S));
    // The clock went back before the opening: age 0, never NaN or negative.
    let v = sig.connection_ns(5 * S, h).unwrap();
    assert!(v.is_finite() && (0.0..1.0).contains(&v), "{v}");
    sig.observe_duration(S, 20 * S, h);
    sig.observe_duration(2 * S, 3 * S, h);
    let v = sig.connection_ns(S, h).unwrap();
    assert!(v.is_finite() && v >= 0.0, "{v}");
    // Closing more than was opened never underflows the count.
    sig.connection_closed(10 * S);
    sig.connection_closed(10 * S);
    assert_eq!(sig.open_connections(30 * S).0, 0);
}

/// `observes_connections` says whether `observe_connection` does anything: the L4 proxy
/// reads the clock at a connection's end and counts its connections open only for such a
/// scheduler. For every scheduler, with and without slow start: a connection observed on
/// fresh signals changes them exactly when the scheduler says it observes connections.
#[test]
fn observes_connections_is_true_exactly_for_the_schedulers_that_use_connections() {
    for kind in SchedulerKind::ALL {
        for slow_start in [None, Some(Duration::from_secs(10))] {
            let opts = SchedOptions {
                slow_start,
                ..SchedOptions::default()
            };
            let s = build(kind, &pool(&[1, 2, 3]), &opts);
            let sig = Signals::default();
            let before = format!("{sig:?}");
            s.observe_connection(&sig, Duration::from_millis(100), Duration::from_secs(5));
            let changed = format!("{sig:?}") != before;
            assert_eq!(
                s.observes_connections(),
                changed,
                "{kind}, slow start {slow_start:?}"
            );
            assert_eq!(changed, kind == SchedulerKind::PeakEwma, "{kind}");
        }
    }
}
