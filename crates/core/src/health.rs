//! Sans-IO health state machines: active checks (rise/fall), passive outlier detection
//! (consecutive failures -> ejection for a while), and their combination with an operator's
//! drain into the [`BackendState`] of the contract.
//!
//! Nothing here runs a check, sleeps or reads a clock: the IO layer runs the checks, feeds
//! their results (and [`Now`]) in, and acts on the returned [`Transition`]s. Each machine
//! returns a transition exactly when its state changes, so the IO layer can log, count
//! (`fulcrum_backend_up`) and rebuild the pool's scheduler only then.

use std::time::Duration;

use crate::model::{BackendState, Now};

/// A change of state, returned by the machines of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The state before.
    pub from: BackendState,
    /// The state after (never equal to `from`).
    pub to: BackendState,
}

impl Transition {
    fn between(from: BackendState, to: BackendState) -> Option<Self> {
        (from != to).then_some(Self { from, to })
    }
}

/// Active health checking, in the style of `HAProxy`: `fall` consecutive failed checks take an up backend
/// down, `rise` consecutive successful checks bring a down backend up.
///
/// A backend starts **up** ([`ActiveHealth::new`]), as in `HAProxy`: a fresh instance serves at
/// once, and the IO layer runs the first check immediately, so a dead backend is taken down
/// after `fall` checks. [`ActiveHealth::starting_down`] starts it down instead (it then needs
/// `rise` successes first).
///
/// Precisely: the state is down iff the latest point at which the last `fall` results were all
/// failures comes after the latest point at which the last `rise` results were all successes
/// (and, when neither has happened yet, it is the initial state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveHealth {
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive results against the current state (failures when up, successes when down).
    streak: u32,
    /// The checks have given a definite state: one result that agrees with the state, or
    /// a change of state. False for a new backend until then (it is taken as up meanwhile).
    settled: bool,
}

impl ActiveHealth {
    /// An up backend, going down after `fall` consecutive failures and up again after `rise`
    /// consecutive successes. A `rise` or `fall` of 0 is taken as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            streak: 0,
            settled: false,
        }
    }

    /// A backend without active checks: up, and settled (nothing will check it).
    pub fn unchecked() -> Self {
        Self {
            settled: true,
            ..Self::new(1, 1)
        }
    }

    /// As [`ActiveHealth::new`], but starting down.
    pub fn starting_down(rise: u32, fall: u32) -> Self {
        Self {
            up: false,
            ..Self::new(rise, fall)
        }
    }

    /// Records one check result; returns the transition (between `Up` and `Down`) if the state
    /// changed.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            self.settled = true;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        let from = self.state();
        self.up = !self.up;
        self.streak = 0;
        self.settled = true;
        Transition::between(from, self.state())
    }

    /// Whether the backend passes its active checks.
    pub const fn is_up(&self) -> bool {
        self.up
    }

    /// `Up` or `Down`.
    pub const fn state(&self) -> BackendState {
        if self.up {
            BackendState::Up
        } else {
            BackendState::Down
        }
    }

    /// Whether the checks have given a definite state yet (see the field): false for a
    /// new backend until a check agrees with its state or `fall`/`rise` results change it.
    pub const fn is_settled(&self) -> bool {
        self.settled
    }

    /// Consecutive results so far against the current state (failures while up, successes
    /// while down).
    pub const fn streak(&self) -> u32 {
        self.streak
    }

    /// The configured `rise`.
    pub const fn rise(&self) -> u32 {
        self.rise
    }

    /// The configured `fall`.
    pub const fn fall(&self) -> u32 {
        self.fall
    }
}

/// Passive health checking (outlier detection) from real traffic: after `consecutive_failures`
/// failures in a row (connect errors, or 5xx answers for HTTP), the backend is ejected for
/// `ejection`; a success resets the count.
///
/// Transitions are between `Up` and `Ejected`. The ejection ends at the first call given a
/// `now` at or after [`Outlier::ejected_until`] ([`Outlier::poll`] or
/// [`Outlier::record_failure`]); the IO layer sleeps until then and polls. Failures reported
/// while ejected (from flows that were already open) do not count. A `consecutive_failures` of
/// 0 disables ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    threshold: u32,
    ejection: Duration,
    failures: u32,
    ejected_until: Option<Now>,
}

impl Outlier {
    /// Ejects for `ejection` after `consecutive_failures` failures in a row (0: never).
    pub const fn new(consecutive_failures: u32, ejection: Duration) -> Self {
        Self {
            threshold: consecutive_failures,
            ejection,
            failures: 0,
            ejected_until: None,
        }
    }

    /// Records a failure at `now`; returns the transition if the state changed (`Up` ->
    /// `Ejected`, or `Ejected` -> `Up` when the ejection had ended by `now` and this failure
    /// alone does not eject again).
    pub fn record_failure(&mut self, now: Now) -> Option<Transition> {
        let from = self.state();
        self.end_ejection(now);
        if self.ejected_until.is_none() && self.threshold > 0 {
            self.failures += 1;
            if self.failures >= self.threshold {
                self.failures = 0;
                self.ejected_until = Some(now.saturating_add(self.ejection));
            }
        }
        Transition::between(from, self.state())
    }

    /// Records a success: resets the count of consecutive failures. (It does not end an
    /// ejection early: that is time's business.)
    pub fn record_success(&mut self) {
        self.failures = 0;
    }

    /// Ends the ejection if its time has come by `now`, returning `Ejected` -> `Up`.
    pub fn poll(&mut self, now: Now) -> Option<Transition> {
        let from = self.state();
        self.end_ejection(now);
        Transition::between(from, self.state())
    }

    /// When the current ejection ends, if ejected: the time to poll at.
    pub const fn ejected_until(&self) -> Option<Now> {
        self.ejected_until
    }

    /// Whether the backend is ejected (until the next poll at or after
    /// [`Outlier::ejected_until`]).
    pub const fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// `Up` or `Ejected`.
    pub const fn state(&self) -> BackendState {
        if self.is_ejected() {
            BackendState::Ejected
        } else {
            BackendState::Up
        }
    }

    /// Consecutive failures counted so far (0 while ejected).
    pub const fn failures(&self) -> u32 {
        self.failures
    }

    fn end_ejection(&mut self, now: Now) {
        if self.ejected_until.is_some_and(|until| now >= until) {
            self.ejected_until = None;
            self.failures = 0;
        }
    }
}

/// A backend's whole health: active checks, outlier detection and the operator's drain flag,
/// combined into the effective [`BackendState`] of the contract.
///
/// Precedence: **draining > down > ejected > up**. An operator's drain wins over everything
/// (it is a decision, and undoing it should restore whatever health says); a failed active
/// check is a stronger and longer-lived signal than a passive ejection, which ends by itself;
/// up only when nothing objects. The parts keep running underneath: e.g. a drained backend's
/// checks still count, so undraining it shows its true health at once.
///
/// Every method that can change the effective state returns a [`Transition`] exactly when it
/// does. Weight 0 is not handled here (the scheduler treats it like draining).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendHealth {
    active: ActiveHealth,
    outlier: Outlier,
    draining: bool,
    state: BackendState,
}

impl BackendHealth {
    /// Combines an active checker and an outlier detector, not draining.
    pub fn new(active: ActiveHealth, outlier: Outlier) -> Self {
        let mut health = Self {
            active,
            outlier,
            draining: false,
            state: BackendState::Up,
        };
        health.state = health.compute();
        health
    }

    /// The effective state.
    pub const fn state(&self) -> BackendState {
        self.state
    }

    /// The active checker.
    pub const fn active(&self) -> &ActiveHealth {
        &self.active
    }

    /// The outlier detector.
    pub const fn outlier(&self) -> &Outlier {
        &self.outlier
    }

    /// Whether an operator drains the backend.
    pub const fn is_draining(&self) -> bool {
        self.draining
    }

    /// Records an active check result.
    pub fn record_check(&mut self, ok: bool) -> Option<Transition> {
        self.active.record(ok);
        self.update()
    }

    /// Records a failure seen on real traffic at `now`.
    pub fn record_failure(&mut self, now: Now) -> Option<Transition> {
        self.outlier.record_failure(now);
        self.update()
    }

    /// Records a success seen on real traffic.
    pub fn record_success(&mut self) {
        self.outlier.record_success();
    }

    /// Ends an outlier ejection whose time has come by `now`.
    pub fn poll(&mut self, now: Now) -> Option<Transition> {
        self.outlier.poll(now);
        self.update()
    }

    /// When to [`BackendHealth::poll`] next, if an ejection is running.
    pub const fn ejected_until(&self) -> Option<Now> {
        self.outlier.ejected_until()
    }

    /// Sets or clears the operator's drain.
    pub fn set_draining(&mut self, draining: bool) -> Option<Transition> {
        self.draining = draining;
        self.update()
    }

    fn compute(&self) -> BackendState {
        if self.draining {
            BackendState::Draining
        } else if !self.active.is_up() {
            BackendState::Down
        } else if self.outlier.is_ejected() {
            BackendState::Ejected
        } else {
            BackendState::Up
        }
    }

    fn update(&mut self) -> Option<Transition> {
        let from = self.state;
        self.state = self.compute();
        Transition::between(from, self.state)
    }
}
