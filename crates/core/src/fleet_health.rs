//! One health view for a fleet (`[cluster] health_quorum`, docs/cluster.md), without IO.
//!
//! Each member publishes its active checks' verdicts ([`HealthView`], under
//! `P/health/NAME`, attached to its lease). Every instance reads the same views from etcd
//! and decides each backend's fleet-wide state with [`decide`], a function of those views
//! and the quorum only, so every instance builds the same table even when one of them sees
//! a backend differently (a partition between it and the backend). Passive ejection is not
//! in the views: it stays local ([`effective_state`]).
//!
//! A member's vote on a backend counts only once its checks have settled (a definite
//! up or down); members that have not (a backend just added) or that do not run that backend
//! (another revision) do not vote. The quorum is taken over the members that vote:
//! - `majority`: more members say up than half of those voting (a tie is down);
//! - `any`: at least one says up;
//! - `all`: none says down;
//! - `N`: at least N say up, or all of them when fewer than N vote (so a fleet that shrinks
//!   below N does not take every backend down).
//!
//! With no vote at all a backend is up, as a new backend is up on a single instance until
//! its checks say otherwise.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::HealthQuorum;
use crate::health::BackendHealth;
use crate::model::BackendState;

/// The prefix of every member's health view under `prefix` (ends with `/`).
pub fn health_prefix(prefix: &str) -> String {
    format!("{prefix}/health/")
}

/// The key of member `name`'s health view under `prefix`.
pub fn health_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/health/{name}")
}

/// The member whose health view `key` (bytes from etcd) is, if it is one under `prefix`.
pub fn health_member<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a str> {
    let name = std::str::from_utf8(key)
        .ok()?
        .strip_prefix(prefix)?
        .strip_prefix("/health/")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// A member's verdict on one backend, from its active checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its checks pass (`rise` in a row, or the first check agreed with the initial up).
    Up,
    /// Its checks fail (`fall` in a row).
    Down,
    /// No definite answer yet (a backend just added): no vote.
    Unknown,
}

impl Verdict {
    /// The verdict of a backend's active checks (`None`: the pool has no active checks,
    /// nothing to publish).
    pub fn of(health: &BackendHealth, checked: bool) -> Option<Self> {
        if !checked {
            return None;
        }
        let a = health.active();
        Some(if !a.is_settled() {
            Self::Unknown
        } else if a.is_up() {
            Self::Up
        } else {
            Self::Down
        })
    }
}

/// A backend of a pool.
pub type BackendKey = (String, SocketAddr);

/// One member's verdicts: pool -> backend -> verdict (only backends of pools with active
/// checks).
pub type Verdicts = BTreeMap<String, BTreeMap<SocketAddr, Verdict>>;

/// What a member publishes under `P/health/NAME` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthView {
    /// The member.
    pub member: String,
    /// Its `health_quorum`, as written in the config (every member should have the same).
    pub health_quorum: String,
    /// Its verdicts.
    pub pools: Verdicts,
}

/// `health_quorum` as written in the config: `majority`, `any`, `all` or the number.
pub fn quorum_label(q: HealthQuorum) -> String {
    match q {
        HealthQuorum::Majority => "majority".into(),
        HealthQuorum::Any => "any".into(),
        HealthQuorum::All => "all".into(),
        HealthQuorum::AtLeast(n) => n.to_string(),
    }
}

/// The votes on one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Members whose checks say up.
    pub up: u32,
    /// Members whose checks say down.
    pub down: u32,
}

/// Whether the fleet counts a backend up, given the votes on it (see the module docs).
pub fn quorum_up(quorum: HealthQuorum, t: Tally) -> bool {
    let voters = t.up.saturating_add(t.down);
    if voters == 0 {
        return true;
    }
    match quorum {
        HealthQuorum::Majority => u64::from(t.up) * 2 > u64::from(voters),
        HealthQuorum::Any => t.up >= 1,
        HealthQuorum::All => t.down == 0,
        HealthQuorum::AtLeast(n) => t.up >= u32::from(n).min(voters),
    }
}

/// The fleet's decision on one backend, with every member's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetBackend {
    /// The pool.
    pub pool: String,
    /// The backend.
    pub backend: SocketAddr,
    /// The fleet's state: `up` or `down`.
    pub fleet: Verdict,
    /// The votes.
    pub votes: Tally,
    /// Each member's verdict, by member name (`unknown`: no vote).
    pub members: BTreeMap<String, Verdict>,
}

/// Every backend's fleet-wide state, as decided from the members' views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetTable {
    /// By pool and backend.
    pub backends: BTreeMap<BackendKey, FleetBackend>,
}

impl FleetTable {
    /// Whether the fleet counts `backend` of `pool` up; `None` when no member publishes a
    /// verdict on it (a pool without active checks): its local state holds.
    pub fn is_up(&self, pool: &str, backend: SocketAddr) -> Option<bool> {
        // BTreeMap lookup by a borrowed (pool, addr) needs an owned key; pools are few.
        self.backends
            .get(&(pool.to_owned(), backend))
            .map(|b| b.fleet == Verdict::Up)
    }

    /// Only the decisions (pool, backend) -> up, which is what a data path table is built
    /// from: two tables with the same decisions build the same data path.
    pub fn decisions(&self) -> BTreeMap<BackendKey, bool> {
        self.backends
            .iter()
            .map(|(k, b)| (k.clone(), b.fleet == Verdict::Up))
            .collect()
    }
}

/// Decides every backend's fleet-wide state from the members' `views` under `quorum`.
/// Depends only on the set of views (not their order, nor which instance decides).
pub fn decide<'a>(
    quorum: HealthQuorum,
    views: impl IntoIterator<Item = &'a HealthView>,
) -> FleetTable {
    let mut backends: BTreeMap<BackendKey, FleetBackend> = BTreeMap::new();
    for view in views {
        for (pool, verdicts) in &view.pools {
            for (addr, v) in verdicts {
                let b = backends
                    .entry((pool.clone(), *addr))
                    .or_insert_with(|| FleetBackend {
                        pool: pool.clone(),
                        backend: *addr,
                        fleet: Verdict::Up,
                        votes: Tally::default(),
                        members: BTreeMap::new(),
                    });
                // A member appears once (views are keyed by member); should a name repeat,
                // its later verdict replaces the earlier one rather than voting twice.
                if let Some(old) = b.members.insert(view.member.clone(), *v) {
                    unvote(&mut b.votes, old);
                }
                match v {
                    Verdict::Up => b.votes.up += 1,
                    Verdict::Down => b.votes.down += 1,
                    Verdict::Unknown => {}
                }
            }
        }
    }
    for b in backends.values_mut() {
        b.fleet = if quorum_up(quorum, b.votes) {
            Verdict::Up
        } else {
            Verdict::Down
        };
    }
    FleetTable { backends }
}

fn unvote(t: &mut Tally, v: Verdict) {
    match v {
        Verdict::Up => t.up = t.up.saturating_sub(1),
        Verdict::Down => t.down = t.down.saturating_sub(1),
        Verdict::Unknown => {}
    }
}

/// A backend's effective state on this instance in a fleet: the operator's drain first,
/// then the fleet's verdict in place of the local active checks (`fleet`: `None` when the
/// fleet has none for it, or the instance has no fleet view: the local checks decide), then
/// the local passive ejection, which is never shared.
pub fn effective_state(health: &BackendHealth, fleet: Option<bool>) -> BackendState {
    match fleet {
        None => health.state(),
        Some(_) if health.is_draining() => BackendState::Draining,
        Some(false) => BackendState::Down,
        Some(true) if health.outlier().is_ejected() => BackendState::Ejected,
        Some(true) => BackendState::Up,
    }
}

/// The fleet's health as an instance sees it (`GET /api/v1/cluster`'s `health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetHealthStatus {
    /// This instance's `health_quorum`.
    pub health_quorum: String,
    /// `fleet`: the table is decided from the members' views; `local`: this instance has no
    /// current fleet view (etcd unreachable for longer than the hold time) and decides by
    /// its own checks, as without `[cluster]`.
    pub source: String,
    /// The members whose views count, by name.
    pub members: Vec<String>,
    /// Members whose `health_quorum` differs from this instance's (they may build another
    /// table): member -> their setting.
    pub quorum_disagreement: BTreeMap<String, String>,
    /// Every backend with a verdict: the fleet's state, the votes and each member's view.
    pub backends: Vec<FleetBackend>,
    /// This instance's own active checks' verdicts, as it publishes them.
    pub local: Verdicts,
    /// Backends this instance ejects after failures on its own traffic (passive health,
    /// never shared with the fleet): (pool, backend).
    pub ejected_locally: Vec<BackendKey>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::health::{ActiveHealth, Outlier};

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8000 + i))
    }

    fn view(member: &str, verdicts: &[(u16, Verdict)]) -> HealthView {
        let mut pools = Verdicts::new();
        pools.insert(
            "web".into(),
            verdicts.iter().map(|(i, v)| (addr(*i), *v)).collect(),
        );
        HealthView {
            member: member.into(),
            health_quorum: "majority".into(),
            pools,
        }
    }

    #[test]
    fn keys() {
        assert_eq!(health_key("/p", "lb1"), "/p/health/lb1");
        assert_eq!(health_member("/p", b"/p/health/lb1"), Some("lb1"));
        assert_eq!(health_member("/p", b"/p/health/"), None);
        assert_eq!(health_member("/p", b"/p/health/a/b"), None);
        assert_eq!(health_member("/p", b"/p/members/lb1"), None);
        assert_eq!(health_member("/p", b"/q/health/lb1"), None);
        assert_eq!(health_member("/p", &[0xff]), None);
        assert!(health_prefix("/p").ends_with('/'));
    }

    #[test]
    fn quorums() {
        use HealthQuorum::{All, Any, AtLeast, Majority};
        let t = |up, down| Tally { up, down };
        // One member partitioned from the backend: 2 up, 1 down.
        assert!(quorum_up(Majority, t(2, 1)));
        assert!(quorum_up(Any, t(2, 1)));
        assert!(!quorum_up(All, t(2, 1)));
        assert!(quorum_up(AtLeast(2), t(2, 1)));
        assert!(!quorum_up(AtLeast(3), t(2, 1)));
        // Only one member sees it up.
        assert!(!quorum_up(Majority, t(1, 2)));
        assert!(quorum_up(Any, t(1, 2)));
        // A tie is down under majority.
        assert!(!quorum_up(Majority, t(2, 2)));
        // N above the number of voters: all of them.
        assert!(quorum_up(AtLeast(5), t(2, 0)));
        assert!(!quorum_up(AtLeast(5), t(2, 1)));
        // No vote: up.
        for q in [Majority, Any, All, AtLeast(3)] {
            assert!(quorum_up(q, t(0, 0)));
        }
        assert!(!quorum_up(Any, t(0, 1)));
    }

    #[test]
    fn one_member_partitioned_does_not_change_the_table_under_majority() {
        let healthy = [
            view("lb0", &[(1, Verdict::Up), (2, Verdict::Up)]),
            view("lb1", &[(1, Verdict::Up), (2, Verdict::Up)]),
            view("lb2", &[(1, Verdict::Up), (2, Verdict::Up)]),
        ];
        let mut partitioned = healthy.clone();
        partitioned[0] = view("lb0", &[(1, Verdict::Down), (2, Verdict::Up)]);
        let before = decide(HealthQuorum::Majority, &healthy);
        let after = decide(HealthQuorum::Majority, &partitioned);
        assert_eq!(before.decisions(), after.decisions());
        let b = &after.backends[&("web".to_owned(), addr(1))];
        assert_eq!(b.votes, Tally { up: 2, down: 1 });
        assert_eq!(b.members["lb0"], Verdict::Down);
        // Under `all` the one member takes it out everywhere; `any` keeps it.
        assert_eq!(
            decide(HealthQuorum::All, &partitioned).is_up("web", addr(1)),
            Some(false)
        );
        assert_eq!(
            decide(HealthQuorum::Any, &partitioned).is_up("web", addr(1)),
            Some(true)
        );
        assert_eq!(after.is_up("web", addr(9)), None);
        assert_eq!(after.is_up("other", addr(1)), None);
    }

    #[test]
    fn unknown_verdicts_do_not_vote() {
        let views = [
            view("lb0", &[(1, Verdict::Unknown)]),
            view("lb1", &[(1, Verdict::Unknown)]),
            view("lb2", &[(1, Verdict::Down)]),
        ];
        let t = decide(HealthQuorum::Majority, &views);
        assert_eq!(t.is_up("web", addr(1)), Some(false));
        let views = [
            view("lb0", &[(1, Verdict::Unknown)]),
            view("lb1", &[(1, Verdict::Unknown)]),
        ];
        assert_eq!(
            decide(HealthQuorum::All, &views).is_up("web", addr(1)),
            Some(true)
        );
    }

    #[test]
    fn a_repeated_member_votes_once() {
        let views = [
            view("lb0", &[(1, Verdict::Down)]),
            view("lb0", &[(1, Verdict::Up)]),
        ];
        let t = decide(HealthQuorum::All, &views);
        let b = &t.backends[&("web".to_owned(), addr(1))];
        assert_eq!(b.votes, Tally { up: 1, down: 0 });
        assert_eq!(b.fleet, Verdict::Up);
    }

    #[test]
    fn passive_ejection_stays_local_and_drain_wins() {
        let checked = || {
            BackendHealth::new(
                ActiveHealth::new(1, 1),
                Outlier::new(1, Duration::from_secs(5)),
            )
        };
        let mut h = checked();
        h.record_check(false);
        assert_eq!(h.state(), BackendState::Down);
        // The fleet says up: this instance's failed checks do not take it out...
        assert_eq!(effective_state(&h, Some(true)), BackendState::Up);
        assert_eq!(effective_state(&h, None), BackendState::Down);
        // ...but its own passive ejection does.
        let mut h = checked();
        h.record_failure(Duration::from_secs(1));
        assert_eq!(effective_state(&h, Some(true)), BackendState::Ejected);
        assert_eq!(effective_state(&h, Some(false)), BackendState::Down);
        h.set_draining(true);
        assert_eq!(effective_state(&h, Some(false)), BackendState::Draining);
        assert_eq!(effective_state(&h, Some(true)), BackendState::Draining);
    }

    #[test]
    fn verdict_of_a_backend() {
        let mut h = BackendHealth::new(ActiveHealth::new(2, 2), Outlier::new(0, Duration::ZERO));
        assert_eq!(Verdict::of(&h, false), None);
        assert_eq!(Verdict::of(&h, true), Some(Verdict::Unknown));
        h.record_check(true);
        assert_eq!(Verdict::of(&h, true), Some(Verdict::Up));
        h.record_check(false);
        assert_eq!(Verdict::of(&h, true), Some(Verdict::Up));
        h.record_check(false);
        assert_eq!(Verdict::of(&h, true), Some(Verdict::Down));
    }

    #[test]
    fn views_round_trip_as_json_keys() {
        let v = view("lb0", &[(1, Verdict::Up), (2, Verdict::Unknown)]);
        assert_eq!(quorum_label(HealthQuorum::AtLeast(2)), "2");
        assert_eq!(quorum_label(HealthQuorum::Majority), "majority");
        // toml stands in for JSON here (core has no JSON crate): map keys are strings.
        let text = toml::to_string(&v).expect("serialize");
        assert!(text.contains("\"127.0.0.1:8001\" = \"up\""), "{text}");
        let back: HealthView = toml::from_str(&text).expect("parse");
        assert_eq!(back, v);
    }

    fn verdict() -> impl Strategy<Value = Verdict> {
        prop_oneof![
            Just(Verdict::Up),
            Just(Verdict::Down),
            Just(Verdict::Unknown)
        ]
    }

    fn quorum() -> impl Strategy<Value = HealthQuorum> {
        prop_oneof![
            Just(HealthQuorum::Majority),
            Just(HealthQuorum::Any),
            Just(HealthQuorum::All),
            (1u16..8).prop_map(HealthQuorum::AtLeast),
        ]
    }

    /// Up to 7 members' verdicts on up to 6 backends.
    fn views() -> impl Strategy<Value = Vec<HealthView>> {
        prop::collection::vec(prop::collection::vec((0u16..6, verdict()), 0..6), 1..7).prop_map(
            |members| {
                members
                    .iter()
                    .enumerate()
                    .map(|(i, vs)| view(&format!("lb{i}"), vs))
                    .collect()
            },
        )
    }

    proptest! {
        /// Every instance reads the same views, in whatever order etcd or its maps give them:
        /// the same table.
        #[test]
        fn the_table_does_not_depend_on_the_order(q in quorum(), vs in views(), seed in any::<u64>()) {
            let mut shuffled = vs.clone();
            let mut rng = fastrand_like(seed);
            for i in (1..shuffled.len()).rev() {
                let j = usize::try_from(rng() % (i as u64 + 1)).unwrap_or(0);
                shuffled.swap(i, j);
            }
            prop_assert_eq!(decide(q, &vs), decide(q, &shuffled));
        }

        /// `all` up implies `majority` up implies `any` up, for every backend.
        #[test]
        fn quorums_are_ordered(vs in views()) {
            let all = decide(HealthQuorum::All, &vs).decisions();
            let maj = decide(HealthQuorum::Majority, &vs).decisions();
            let any = decide(HealthQuorum::Any, &vs).decisions();
            for (k, up) in &all {
                prop_assert!(!up || maj[k]);
                prop_assert!(!maj[k] || any[k]);
            }
        }

        /// One more member saying up never takes a backend down; one more saying down never
        /// brings it up.
        #[test]
        fn votes_are_monotonic(q in quorum(), up in 0u32..10, down in 0u32..10) {
            let t = Tally { up, down };
            if quorum_up(q, t) && up + down > 0 {
                let more = Tally { up: up + 1, down };
                prop_assert!(quorum_up(q, more));
            }
            if !quorum_up(q, t) {
                let more = Tally { up, down: down + 1 };
                prop_assert!(!quorum_up(q, more));
            }
        }

        /// Under `majority`, a minority of members that see a backend differently from the
        /// rest never decide it.
        #[test]
        fn a_minority_does_not_decide_under_majority(n in 1u32..9, dissent in 0u32..9, up in any::<bool>()) {
            let dissent = dissent.min((n - 1) / 2);
            let rest = n - dissent;
            let t = if up { Tally { up: rest, down: dissent } } else { Tally { up: dissent, down: rest } };
            prop_assert_eq!(quorum_up(HealthQuorum::Majority, t), up);
        }
    }

    /// A small xorshift for the shuffle (core has no random crate).
    fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }
}
