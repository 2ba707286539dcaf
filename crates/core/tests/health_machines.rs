//! Health state machines: active rise/fall, outlier ejection, and their combination.
#![allow(clippy::unnecessary_wraps)]

use std::time::Duration;

use fulcrum_core::health::{ActiveHealth, BackendHealth, Outlier, Transition};
use fulcrum_core::model::BackendState::{self, Down, Draining, Ejected, Up};
use proptest::prelude::*;

fn t(from: BackendState, to: BackendState) -> Option<Transition> {
    Some(Transition { from, to })
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn active_starts_up_and_falls_after_fall_failures() {
    let mut a = ActiveHealth::new(2, 3);
    assert!(a.is_up());
    assert_eq!(a.state(), Up);
    assert_eq!(a.record(false), None);
    assert_eq!(a.record(false), None);
    assert_eq!(a.record(false), t(Up, Down));
    assert_eq!(a.record(false), None, "already down");
    assert_eq!(a.record(true), None);
    assert_eq!(a.record(false), None, "a failure resets the rise count");
    assert_eq!(a.record(true), None);
    assert_eq!(a.streak(), 1);
    assert_eq!(a.record(true), t(Down, Up));
    assert_eq!(a.record(true), None);
}

#[test]
fn active_success_resets_the_fall_count() {
    let mut a = ActiveHealth::new(1, 2);
    assert_eq!(a.record(false), None);
    assert_eq!(a.record(true), None);
    assert_eq!(a.record(false), None);
    assert_eq!(a.record(false), t(Up, Down));
    assert_eq!(a.record(true), t(Down, Up), "rise 1: one success");
}

#[test]
fn active_starting_down_and_zero_thresholds() {
    let mut a = ActiveHealth::starting_down(2, 2);
    assert_eq!(a.state(), Down);
    assert_eq!(a.record(true), None);
    assert_eq!(a.record(true), t(Down, Up));
    let mut z = ActiveHealth::new(0, 0);
    assert_eq!((z.rise(), z.fall()), (1, 1));
    assert_eq!(z.record(false), t(Up, Down));
    assert_eq!(z.record(true), t(Down, Up));
}

#[test]
fn outlier_ejects_after_consecutive_failures_for_the_ejection_time() {
    let mut o = Outlier::new(3, secs(10));
    assert_eq!(o.record_failure(secs(1)), None);
    assert_eq!(o.record_failure(secs(2)), None);
    o.record_success();
    assert_eq!(o.failures(), 0);
    assert_eq!(o.record_failure(secs(3)), None);
    assert_eq!(o.record_failure(secs(4)), None);
    assert_eq!(o.record_failure(secs(5)), t(Up, Ejected));
    assert!(o.is_ejected());
    assert_eq!(o.ejected_until(), Some(secs(15)));
    // Failures of already-open flows while ejected do not count or extend it.
    assert_eq!(o.record_failure(secs(6)), None);
    assert_eq!(o.ejected_until(), Some(secs(15)));
    // A success does not end it early.
    o.record_success();
    assert_eq!(o.poll(secs(14)), None);
    assert!(o.is_ejected());
    assert_eq!(o.poll(secs(15)), t(Ejected, Up));
    assert_eq!(o.ejected_until(), None);
    assert_eq!(o.poll(secs(16)), None);
    assert_eq!(o.failures(), 0, "the count starts afresh");
}

#[test]
fn outlier_failure_after_the_ejection_time_ends_it() {
    let mut o = Outlier::new(2, secs(10));
    o.record_failure(secs(0));
    assert_eq!(o.record_failure(secs(0)), t(Up, Ejected));
    // No poll; the next failure comes after the ejection: it ends and this one counts.
    assert_eq!(o.record_failure(secs(20)), t(Ejected, Up));
    assert_eq!(o.failures(), 1);
    assert_eq!(o.record_failure(secs(21)), t(Up, Ejected));
    assert_eq!(o.ejected_until(), Some(secs(31)));
    // Threshold 1: ended and re-ejected by the same failure: no net change, a new deadline.
    let mut one = Outlier::new(1, secs(5));
    assert_eq!(one.record_failure(secs(0)), t(Up, Ejected));
    assert_eq!(one.record_failure(secs(6)), None);
    assert_eq!(one.ejected_until(), Some(secs(11)));
}

#[test]
fn outlier_zero_disables() {
    let mut o = Outlier::new(0, secs(10));
    for n in 0..100 {
        assert_eq!(o.record_failure(secs(n)), None);
    }
    assert!(!o.is_ejected());
}

#[test]
fn backend_precedence_draining_down_ejected_up() {
    let mut h = BackendHealth::new(ActiveHealth::new(1, 1), Outlier::new(1, secs(10)));
    assert_eq!(h.state(), Up);
    assert_eq!(h.record_failure(secs(0)), t(Up, Ejected));
    assert_eq!(
        h.record_check(false),
        t(Ejected, Down),
        "down beats ejected"
    );
    assert_eq!(
        h.set_draining(true),
        t(Down, Draining),
        "draining beats down"
    );
    assert_eq!(h.record_check(true), None, "still draining");
    assert_eq!(h.active().state(), Up, "checks still count while draining");
    assert_eq!(h.set_draining(false), t(Draining, Ejected));
    assert_eq!(h.ejected_until(), Some(secs(10)));
    assert_eq!(h.poll(secs(9)), None);
    assert_eq!(h.poll(secs(10)), t(Ejected, Up));
    assert_eq!(h.set_draining(false), None);
    h.record_success();
    assert_eq!(h.outlier().failures(), 0);
    assert!(!h.is_draining());
}

#[test]
fn backend_starting_down() {
    let h = BackendHealth::new(ActiveHealth::starting_down(2, 3), Outlier::new(3, secs(1)));
    assert_eq!(h.state(), Down);
}

/// The rise/fall state, by the specification: down iff the latest point where the last
/// `fall` results were all failures is after the latest point where the last `rise` results
/// were all successes; the initial state when neither has happened.
fn expected_up(results: &[bool], rise: usize, fall: usize, initial_up: bool) -> bool {
    let last_run = |n: usize, ok: bool| {
        (n..=results.len())
            .rev()
            .find(|&end| results[end - n..end].iter().all(|&r| r == ok))
    };
    match (last_run(fall, false), last_run(rise, true)) {
        (None, None) => initial_up,
        (Some(_), None) => false,
        (None, Some(_)) => true,
        (Some(f), Some(s)) => s > f,
    }
}

#[derive(Debug, Clone)]
enum Event {
    Check(bool),
    Failure,
    Success,
    Drain(bool),
    Wait(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => any::<bool>().prop_map(Event::Check),
        2 => Just(Event::Failure),
        1 => Just(Event::Success),
        1 => any::<bool>().prop_map(Event::Drain),
        2 => (0..8u64).prop_map(Event::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn active_matches_its_specification(
        rise in 1u32..5,
        fall in 1u32..5,
        initial_up in any::<bool>(),
        results in prop::collection::vec(any::<bool>(), 0..60),
    ) {
        let mut a = if initial_up {
            ActiveHealth::new(rise, fall)
        } else {
            ActiveHealth::starting_down(rise, fall)
        };
        for i in 0..results.len() {
            let before = a.state();
            let tr = a.record(results[i]);
            let up = expected_up(&results[..=i], rise as usize, fall as usize, initial_up);
            prop_assert_eq!(a.is_up(), up, "after {:?}", &results[..=i]);
            // A transition is reported exactly when the state changes.
            if before == a.state() {
                prop_assert_eq!(tr, None);
            } else {
                prop_assert_eq!(tr, Some(Transition { from: before, to: a.state() }));
            }
        }
    }

    #[test]
    fn outlier_ejects_on_the_nth_consecutive_failure(
        n in 1u32..5,
        events in prop::collection::vec(any::<bool>(), 0..60),
    ) {
        // Time stands still (ejection never ends): ejected iff some run of n failures occurred.
        let mut o = Outlier::new(n, secs(10));
        let mut run = 0;
        let mut ejected = false;
        for ok in events {
            if ok {
                o.record_success();
                run = 0;
            } else {
                let tr = o.record_failure(secs(1));
                run += 1;
                let now_ejected = ejected || run >= n;
                prop_assert_eq!(tr.is_some(), now_ejected != ejected);
                ejected = now_ejected;
            }
            prop_assert_eq!(o.is_ejected(), ejected);
            prop_assert_eq!(o.ejected_until().is_some(), ejected);
        }
    }

    #[test]
    fn backend_state_is_the_precedence_of_its_parts(
        events in prop::collection::vec(event(), 0..80),
    ) {
        let mut h = BackendHealth::new(ActiveHealth::new(2, 2), Outlier::new(2, secs(5)));
        let mut now = Duration::ZERO;
        for e in events {
            let before = h.state();
            let tr = match e {
                Event::Check(ok) => h.record_check(ok),
                Event::Failure => h.record_failure(now),
                Event::Success => {
                    h.record_success();
                    None
                }
                Event::Drain(d) => h.set_draining(d),
                Event::Wait(s) => {
                    now += secs(s);
                    h.poll(now)
                }
            };
            let expect = if h.is_draining() {
                Draining
            } else if !h.active().is_up() {
                Down
            } else if h.outlier().is_ejected() {
                Ejected
            } else {
                Up
            };
            prop_assert_eq!(h.state(), expect);
            if before == h.state() {
                prop_assert_eq!(tr, None);
            } else {
                prop_assert_eq!(tr, Some(Transition { from: before, to: h.state() }));
            }
            if let Some(until) = h.ejected_until() {
                prop_assert!(until > now || matches!(e, Event::Check(_) | Event::Drain(_) | Event::Success));
            }
        }
    }
}

#[test]
fn a_new_backend_is_settled_by_its_first_agreeing_check_or_a_change() {
    // Up at start, unsettled until a check agrees (one success).
    let mut a = ActiveHealth::new(2, 3);
    assert!(!a.is_settled());
    assert_eq!(a.record(true), None);
    assert!(a.is_settled());

    // A dead one: failures below `fall` leave it unsettled; the `fall`th takes it down.
    let mut a = ActiveHealth::new(2, 3);
    a.record(false);
    a.record(false);
    assert!(!a.is_settled() && a.is_up());
    assert!(a.record(false).is_some());
    assert!(a.is_settled() && !a.is_up());

    // Starting down: settled by a failure (agrees) or by `rise` successes.
    let mut a = ActiveHealth::starting_down(2, 3);
    assert!(!a.is_settled());
    a.record(true);
    assert!(!a.is_settled());
    assert!(a.record(true).is_some());
    assert!(a.is_settled());

    // Nothing checks it: settled from the start.
    assert!(ActiveHealth::unchecked().is_settled());
    assert!(ActiveHealth::unchecked().is_up());
}
