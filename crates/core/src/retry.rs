//! HTTP retries and passive ejection as a policy: which failures of an attempt count against
//! the backend, which are tried again (on the same backend over a fresh connection, or on
//! another backend), how many attempts a request gets and the retry budget that bounds them
//! under an outage. No IO and no clock: the HTTP data path reports how each attempt ended and
//! carries out the answer.

use std::sync::atomic::{AtomicI64, Ordering};

/// How one attempt on a backend ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection was made (refused or timed out): nothing was sent.
    Connect,
    /// No response head within the response timeout.
    ResponseTimeout,
    /// The client's request (body) is bad or was cut: not the backend's fault.
    Client,
    /// The backend closed or broke the exchange. `sent`: the whole request went out;
    /// `answered`: some bytes of an answer came; `reused`: on a pooled connection that had
    /// carried requests before.
    Backend {
        sent: bool,
        answered: bool,
        reused: bool,
    },
    /// The backend's answer is malformed.
    Malformed,
    /// The backend's answer uses a transfer coding this client cannot be sent: not the
    /// backend's failure.
    Uncarried,
    /// A response head with a 5xx status.
    Status(u16),
}

impl Failure {
    /// The failure a response status is, if any (5xx).
    pub fn of_status(status: u16) -> Option<Self> {
        (status >= 500).then_some(Self::Status(status))
    }

    /// Whether this failure counts against the backend's passive health (outlier ejection);
    /// an answer below 500 counts for it.
    pub fn counts_against_backend(self) -> bool {
        !matches!(self, Self::Client | Self::Uncarried)
    }
}

/// Methods that RFC 9110 §9.2.2 calls idempotent: sending one twice has the effect of once.
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// What a request allows to be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// The request has no body (so nothing of it is consumed by sending it).
    pub body_empty: bool,
    /// Its method is idempotent.
    pub idempotent: bool,
    /// It asks for a protocol upgrade (whose bytes after the head cannot be replayed).
    pub upgrade: bool,
}

impl Replay {
    /// The replay rights of a request with this method, body and upgrade.
    pub fn of(method: &[u8], body_empty: bool, upgrade: bool) -> Self {
        Self {
            body_empty,
            idempotent: is_idempotent(method),
            upgrade,
        }
    }

    /// Whether the request may be sent again in full after a backend saw (part of) it.
    pub fn replayable(self) -> bool {
        self.body_empty && self.idempotent && !self.upgrade
    }
}

/// Fresh-connection resends allowed per request after pooled connections turn out stale.
pub const STALE_RESENDS: u8 = 2;

/// What the data path does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The pooled connection had been closed by the backend before it answered: send to the
    /// same backend again on a fresh connection. Not an attempt and not from the budget.
    Resend,
    /// Try another backend; a token of the retry budget was spent.
    Retry,
    /// Stop: answer with this failure (a 5xx answer is passed on as it is).
    Stop,
}

/// One request's attempts: how many it may make and the stale resends it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempts {
    max: usize,
    stale_resends: u8,
}

impl Attempts {
    /// A request that may make `1 + retries` attempts.
    pub fn new(retries: u32) -> Self {
        Self {
            max: 1 + retries as usize,
            stale_resends: 0,
        }
    }

    /// Whether another attempt may start after `tried` attempts.
    pub fn may_start(&self, tried: usize) -> bool {
        tried < self.max
    }

    /// The decision after the attempt number `tried` (counting it) failed. After a connect
    /// failure nothing was sent, so any request may go to another backend; after a backend
    /// failure or a 502/503, only one that can be sent again. A retry needs an attempt left
    /// and a budget token (taken last, only when everything else allows the retry); a retry
    /// after a 502/503 also needs another eligible backend (`others_left`, asked only then),
    /// since the answer in hand beats none.
    pub fn after(
        &mut self,
        failure: Failure,
        req: Replay,
        tried: usize,
        others_left: impl FnOnce() -> bool,
        budget: &RetryBudget,
    ) -> Next {
        if let Failure::Backend {
            sent,
            answered: false,
            reused: true,
        } = failure
        {
            // An unsent request without a body consumed nothing: it can be sent again.
            let resendable = req.replayable() || (!sent && req.body_empty);
            if resendable && self.stale_resends < STALE_RESENDS {
                self.stale_resends += 1;
                return Next::Resend;
            }
        }
        let retry = match failure {
            Failure::Connect => true,
            Failure::Backend { .. } | Failure::Status(502 | 503) => req.replayable(),
            Failure::Status(_)
            | Failure::ResponseTimeout
            | Failure::Client
            | Failure::Malformed
            | Failure::Uncarried => false,
        };
        let others = |f| !matches!(f, Failure::Status(_)) || others_left();
        if retry && self.may_start(tried) && others(failure) && budget.try_spend() {
            Next::Retry
        } else {
            Next::Stop
        }
    }
}

/// Retries allowed at once when the budget is empty of earned tokens.
pub const RETRY_BUDGET_MIN: i64 = 10;
const MILLI: i64 = 1000;

/// A retry budget: each request earns `percent`/100 of a retry, each retry spends one; the
/// balance is capped, so under an outage retries add at most `percent`% to the traffic.
/// Shared by a service's connections without a lock.
#[derive(Debug)]
pub struct RetryBudget {
    milli: AtomicI64,
    earn: i64,
    cap: i64,
}

impl RetryBudget {
    /// A budget earning `percent` retries per 100 requests, starting with the reserve.
    pub fn new(percent: u8) -> Self {
        Self {
            milli: AtomicI64::new(RETRY_BUDGET_MIN * MILLI),
            earn: i64::from(percent) * MILLI / 100,
            cap: (RETRY_BUDGET_MIN + 100) * MILLI,
        }
    }

    /// A request arrived: earn its share of a retry.
    pub fn earn(&self) {
        if self.milli.load(Ordering::Relaxed) < self.cap {
            self.milli.fetch_add(self.earn, Ordering::Relaxed);
        }
    }

    /// Spends one retry if the balance holds one.
    pub fn try_spend(&self) -> bool {
        if self.milli.fetch_sub(MILLI, Ordering::Relaxed) >= MILLI {
            true
        } else {
            self.milli.fetch_add(MILLI, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_budget() -> RetryBudget {
        let b = RetryBudget::new(0);
        while b.try_spend() {}
        b
    }

    /// Spends the whole balance; returns the retries it held.
    fn drain(b: &RetryBudget) -> i64 {
        let mut n = 0;
        while b.try_spend() {
            n += 1;
        }
        n
    }

    fn backend(sent: bool, answered: bool, reused: bool) -> Failure {
        Failure::Backend {
            sent,
            answered,
            reused,
        }
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(m.as_bytes()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get", ""] {
            assert!(!is_idempotent(m.as_bytes()), "{m}");
        }
        assert!(Replay::of(b"GET", true, false).replayable());
        assert!(!Replay::of(b"GET", false, false).replayable());
        assert!(!Replay::of(b"GET", true, true).replayable());
        assert!(!Replay::of(b"POST", true, false).replayable());
    }

    #[test]
    fn which_failures_count_against_the_backend() {
        let table = [
            (Failure::Connect, true),
            (Failure::ResponseTimeout, true),
            (Failure::Client, false),
            (backend(true, false, false), true),
            (Failure::Malformed, true),
            (Failure::Uncarried, false),
            (Failure::Status(500), true),
            (Failure::Status(503), true),
        ];
        for (f, against) in table {
            assert_eq!(f.counts_against_backend(), against, "{f:?}");
        }
        assert_eq!(Failure::of_status(499), None);
        assert_eq!(Failure::of_status(200), None);
        assert_eq!(Failure::of_status(500), Some(Failure::Status(500)));
    }

    /// Each failure kind x method (idempotent, bodyless) x attempts left x budget.
    #[test]
    fn retry_decision_table() {
        use Next::{Retry, Stop};
        let get = Replay::of(b"GET", true, false);
        let post = Replay::of(b"POST", true, false);
        let put_body = Replay::of(b"PUT", false, false);
        // (failure, request, Next with an attempt and a token left)
        let table = [
            (Failure::Connect, get, Retry),
            (Failure::Connect, post, Retry),
            (Failure::Connect, put_body, Retry),
            (Failure::ResponseTimeout, get, Stop),
            (Failure::ResponseTimeout, post, Stop),
            (Failure::Client, get, Stop),
            (Failure::Malformed, get, Stop),
            (Failure::Uncarried, get, Stop),
            (backend(true, false, false), get, Retry),
            (backend(true, true, false), get, Retry),
            (backend(false, false, false), post, Stop),
            (backend(true, true, false), post, Stop),
            (backend(true, true, false), put_body, Stop),
            (backend(true, true, true), post, Stop),
            (Failure::Status(502), get, Retry),
            (Failure::Status(503), get, Retry),
            (Failure::Status(500), get, Stop),
            (Failure::Status(504), get, Stop),
            (Failure::Status(502), post, Stop),
            (Failure::Status(503), put_body, Stop),
        ];
        for (failure, req, want) in table {
            for retries in [0_u32, 1, 2] {
                for tried in 1..=3_usize {
                    for funded in [true, false] {
                        let budget = if funded {
                            RetryBudget::new(20)
                        } else {
                            empty_budget()
                        };
                        let mut a = Attempts::new(retries);
                        let got = a.after(failure, req, tried, || true, &budget);
                        let left = tried < 1 + retries as usize;
                        let expect = if want == Retry && left && funded {
                            Retry
                        } else {
                            Stop
                        };
                        assert_eq!(
                            got, expect,
                            "{failure:?} {req:?} retries {retries} tried {tried} funded {funded}"
                        );
                        // A token is spent exactly when the decision is a retry.
                        let before = if funded { RETRY_BUDGET_MIN } else { 0 };
                        let spent = before - drain(&budget);
                        assert_eq!(spent, i64::from(got == Retry), "{failure:?} tokens");
                    }
                }
            }
        }
    }

    #[test]
    fn a_5xx_retry_needs_another_backend_and_is_not_asked_otherwise() {
        let get = Replay::of(b"GET", true, false);
        let budget = RetryBudget::new(20);
        let mut a = Attempts::new(2);
        assert_eq!(
            a.after(Failure::Status(503), get, 1, || false, &budget),
            Next::Stop
        );
        assert_eq!(
            a.after(Failure::Connect, get, 1, || panic!("not asked"), &budget),
            Next::Retry
        );
        assert_eq!(
            a.after(
                Failure::Status(500),
                get,
                1,
                || panic!("not asked"),
                &budget
            ),
            Next::Stop
        );
    }

    #[test]
    fn stale_pooled_connections_are_resent_twice_without_the_budget() {
        let budget = empty_budget();
        let stale_unsent = backend(false, false, true);
        let stale_sent = backend(true, false, true);
        // (failure, request, first two decisions, third decision)
        let get = Replay::of(b"GET", true, false);
        let post = Replay::of(b"POST", true, false);
        let post_body = Replay::of(b"POST", false, false);
        let table = [
            (stale_unsent, get, Next::Resend, Next::Stop),
            (stale_sent, get, Next::Resend, Next::Stop),
            (stale_unsent, post, Next::Resend, Next::Stop),
            (stale_sent, post, Next::Stop, Next::Stop),
            (stale_unsent, post_body, Next::Stop, Next::Stop),
            (backend(true, true, true), get, Next::Stop, Next::Stop),
        ];
        for (f, req, first, third) in table {
            let mut a = Attempts::new(2);
            assert_eq!(a.after(f, req, 1, || true, &budget), first, "{f:?} {req:?}");
            assert_eq!(a.after(f, req, 1, || true, &budget), first, "{f:?} {req:?}");
            assert_eq!(a.after(f, req, 1, || true, &budget), third, "{f:?} {req:?}");
        }
        // With a budget, the third stale failure of a replayable request is a retry.
        let funded = RetryBudget::new(20);
        let mut a = Attempts::new(2);
        for want in [Next::Resend, Next::Resend, Next::Retry] {
            assert_eq!(a.after(stale_sent, get, 1, || true, &funded), want);
        }
    }

    #[test]
    fn the_budget_earns_spends_and_is_capped() {
        let b = RetryBudget::new(50);
        for _ in 0..RETRY_BUDGET_MIN {
            assert!(b.try_spend());
        }
        assert!(!b.try_spend());
        b.earn();
        assert!(!b.try_spend(), "half a retry is not one");
        b.earn();
        assert!(b.try_spend());
        assert!(!b.try_spend());
        // Capped at the reserve plus 100 retries.
        for _ in 0..1000 {
            b.earn();
        }
        assert_eq!(drain(&b), RETRY_BUDGET_MIN + 100);
        let none = RetryBudget::new(0);
        for _ in 0..RETRY_BUDGET_MIN {
            assert!(none.try_spend());
        }
        none.earn();
        assert!(!none.try_spend());
    }
}
