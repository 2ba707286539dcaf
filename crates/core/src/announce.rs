//! VIP announcement decisions (`[announce]`): whether a service's VIP should be announced
//! to the routers, what an exabgp API process prints, and what a bird control-socket reply
//! means. No sockets here: the IO lives in the `fulcrum` binary (`run` for bird,
//! `announce` for exabgp).

use std::collections::BTreeMap;
use std::net::IpAddr;

use std::time::Duration;

use crate::model::Now;

/// What decides whether one service's VIP is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipInputs {
    /// The service's listener is bound (`forward = "proxy"`), or the XDP program that
    /// serves it is attached (`dsr`/`tunnel`/`nat`).
    pub serving: bool,
    /// The data plane runs the snapshot whose backends are counted here: always for
    /// `proxy`; for XDP services, once the maps were written from that snapshot.
    pub applied: bool,
    /// Backends of the service's default pool that can take new flows (up, weight > 0).
    pub backends_up: usize,
    /// Backends of that pool whose health checks have not given a definite state yet
    /// (a new backend is taken as up until its first checks say up or down).
    pub backends_unsettled: usize,
    /// The instance is draining: `fulcrum ctl instance drain`, or shutting down.
    pub instance_draining: bool,
}

/// The hold-down of one service's announcement: the previous decision, and since when the
/// service's health (backends up, their states, serving, draining) has been as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The previous decision: the VIP is announced.
    pub announced: bool,
    /// When the service's health last changed (at start: when it was first seen).
    pub since: Now,
    /// `[announce] announce_delay`: how long it must have held still.
    pub delay: Duration,
}

/// Whether a service's VIP should be announced at `now`.
///
/// Withdrawn at once when the instance cannot serve it: the listener is not bound (or the
/// XDP program not attached), no backend is up, or the instance is draining. An announced
/// VIP stays announced otherwise (the XDP maps lagging a health change by a moment is
/// served with the previous table, as on every other instance).
///
/// Announced (at start, or again after a withdrawal) only once health has settled, since
/// an instance that sees other backends up than its peers hashes the flows the routers
/// give it onto other backends (Maglev over another set), resetting them: no backend still
/// waiting for its first definite check result, the data plane running the current
/// snapshot, and the health unchanged for `hold.delay`.
pub fn should_announce(i: VipInputs, hold: Hold, now: Now) -> bool {
    if !i.serving || i.backends_up == 0 || i.instance_draining {
        return false;
    }
    if hold.announced {
        return true;
    }
    i.applied && i.backends_unsettled == 0 && now.saturating_sub(hold.since) >= hold.delay
}

/// The host route of a VIP: `IP/32` (IPv4) or `IP/128` (IPv6).
pub fn host_route(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// Per VIP address: announced when any service listening on it is (services may share an
/// address on different ports). Unspecified addresses (`0.0.0.0`, `::`) are not routes and
/// are left out.
pub fn vip_routes(services: impl IntoIterator<Item = (IpAddr, bool)>) -> BTreeMap<IpAddr, bool> {
    let mut out = BTreeMap::new();
    for (ip, announce) in services {
        if ip.is_unspecified() {
            continue;
        }
        let e = out.entry(ip).or_insert(false);
        *e |= announce;
    }
    out
}

/// The exabgp API lines (text encoder) that take the routes announced from `prev` to
/// `next`: `announce route VIP/32 next-hop self` for each VIP newly announced, `withdraw
/// route VIP/32 next-hop self` for each VIP announced before and not now (or gone).
pub fn exabgp_changes(prev: &BTreeMap<IpAddr, bool>, next: &BTreeMap<IpAddr, bool>) -> Vec<String> {
    let mut lines = Vec::new();
    for (ip, &was) in prev {
        if was && !next.get(ip).copied().unwrap_or(false) {
            lines.push(exabgp_line(false, *ip));
        }
    }
    for (ip, &now) in next {
        if now && !prev.get(ip).copied().unwrap_or(false) {
            lines.push(exabgp_line(true, *ip));
        }
    }
    lines
}

/// One exabgp API command for `ip`'s host route.
pub fn exabgp_line(announce: bool, ip: IpAddr) -> String {
    let verb = if announce { "announce" } else { "withdraw" };
    format!("{verb} route {} next-hop self", host_route(ip))
}

/// Whether `s` is a plain bird symbol that a protocol can be named: a letter, then letters,
/// digits and `_` (at most 64 characters).
pub fn is_bird_symbol(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The bird CLI command that sets protocol `name` enabled or disabled.
pub fn bird_command(enable: bool, name: &str) -> String {
    format!("{} {name}", if enable { "enable" } else { "disable" })
}

/// One line of bird's control-socket protocol: `CODE-text` (more follows), `CODE text` (the
/// last line of the reply), or ` text` (continues the previous code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BirdLine {
    /// A coded line; `last` when it ends the reply.
    Coded {
        /// The four-digit reply code.
        code: u16,
        /// Whether this line ends the reply.
        last: bool,
        /// The text after the code.
        text: String,
    },
    /// A continuation line (leading space).
    More(String),
}

/// Parses one line of a bird reply; `None` for a line that is neither form.
pub fn parse_bird_line(line: &str) -> Option<BirdLine> {
    if let Some(rest) = line.strip_prefix(' ') {
        return Some(BirdLine::More(rest.to_owned()));
    }
    let code = line.get(..4)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    let last = match line.as_bytes().get(4) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return None,
    };
    Some(BirdLine::Coded {
        code,
        last,
        text: line.get(5..).unwrap_or("").to_owned(),
    })
}

/// What an `enable`/`disable` reply from bird means for the protocol it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BirdOutcome {
    /// The protocol is now in the state asked for.
    Done,
    /// bird has no protocol of that name (it answers `9001 syntax error, unexpected
    /// CF_SYM_UNDEFINED` for an unknown symbol): the operator has not defined it.
    NoSuchProtocol,
    /// Any other answer: its last code and text.
    Refused(u16, String),
}

/// Reads an `enable`/`disable` reply (its coded lines, in order). bird 2 answers `0008`
/// already disabled, `0009` disabled, `0010` already enabled, `0011` enabled, then `0000`;
/// 8xxx are run-time errors and 9xxx parse errors.
pub fn bird_outcome(reply: &[(u16, String)]) -> BirdOutcome {
    let Some((last, text)) = reply.last() else {
        return BirdOutcome::Refused(0, "empty reply".into());
    };
    if *last >= 8000 {
        if text.contains("CF_SYM_UNDEFINED") {
            return BirdOutcome::NoSuchProtocol;
        }
        return BirdOutcome::Refused(*last, text.clone());
    }
    if reply.iter().any(|(c, _)| (8..=11).contains(c)) {
        BirdOutcome::Done
    } else {
        BirdOutcome::Refused(*last, text.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(serving: bool, backends_up: usize, instance_draining: bool) -> VipInputs {
        VipInputs {
            serving,
            applied: true,
            backends_up,
            backends_unsettled: 0,
            instance_draining,
        }
    }

    const S: Duration = Duration::from_secs(1);

    fn hold(announced: bool, since: u64) -> Hold {
        Hold {
            announced,
            since: S * u32::try_from(since).unwrap(),
            delay: 2 * S,
        }
    }

    #[test]
    fn announced_only_when_serving_with_a_backend_and_not_draining() {
        let settled = hold(false, 0);
        let now = 10 * S;
        assert!(should_announce(inputs(true, 1, false), settled, now));
        assert!(should_announce(inputs(true, 5, false), settled, now));
        for h in [settled, hold(true, 0)] {
            assert!(
                !should_announce(inputs(false, 5, false), h, now),
                "listener not bound"
            );
            assert!(
                !should_announce(inputs(true, 0, false), h, now),
                "no backend up"
            );
            assert!(!should_announce(inputs(true, 5, true), h, now), "draining");
            assert!(!should_announce(inputs(false, 0, true), h, now));
        }
    }

    #[test]
    fn announced_only_once_health_held_still_for_the_delay() {
        let i = inputs(true, 3, false);
        // Health changed at 5 s: not before 7 s.
        assert!(!should_announce(i, hold(false, 5), 5 * S));
        assert!(!should_announce(
            i,
            hold(false, 5),
            Duration::from_millis(6999)
        ));
        assert!(should_announce(i, hold(false, 5), 7 * S));
        // A delay of 0 announces at once.
        let h = Hold {
            delay: Duration::ZERO,
            ..hold(false, 5)
        };
        assert!(should_announce(i, h, 5 * S));
        // A clock before `since` (never in practice) holds off rather than panicking.
        assert!(!should_announce(i, hold(false, 5), S));
    }

    #[test]
    fn not_announced_while_a_backend_awaits_its_first_checks_or_the_maps_lag() {
        let now = 100 * S;
        let unsettled = VipInputs {
            backends_unsettled: 1,
            ..inputs(true, 3, false)
        };
        assert!(!should_announce(unsettled, hold(false, 0), now));
        let lagging = VipInputs {
            applied: false,
            ..inputs(true, 3, false)
        };
        assert!(!should_announce(lagging, hold(false, 0), now));
        // Once announced, neither withdraws: the instance serves with what it has.
        assert!(should_announce(unsettled, hold(true, 99), now));
        assert!(should_announce(lagging, hold(true, 99), now));
    }

    #[test]
    fn an_announced_vip_stays_through_health_changes_and_is_withdrawn_at_once() {
        // A backend went down at 99 s (since = 99): still announced at 99 s.
        assert!(should_announce(
            inputs(true, 2, false),
            hold(true, 99),
            99 * S
        ));
        // The last one down: withdrawn with no delay.
        assert!(!should_announce(
            inputs(true, 0, false),
            hold(true, 99),
            99 * S
        ));
    }

    #[test]
    fn host_routes() {
        assert_eq!(host_route("198.18.0.10".parse().unwrap()), "198.18.0.10/32");
        assert_eq!(
            host_route("2001:db8::1".parse().unwrap()),
            "2001:db8::1/128"
        );
    }

    #[test]
    fn a_shared_vip_is_announced_while_any_of_its_services_is() {
        let a: IpAddr = "198.18.0.10".parse().unwrap();
        let b: IpAddr = "198.18.0.11".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let m = vip_routes([(a, false), (a, true), (b, false), (any, true)]);
        assert_eq!(m.get(&a), Some(&true));
        assert_eq!(m.get(&b), Some(&false));
        assert_eq!(m.get(&any), None, "0.0.0.0 is not a route");
    }

    #[test]
    fn exabgp_lines_for_changes_only() {
        let a: IpAddr = "198.18.0.10".parse().unwrap();
        let b: IpAddr = "198.18.0.11".parse().unwrap();
        let none = BTreeMap::new();
        let both = BTreeMap::from([(a, true), (b, true)]);
        let only_b = BTreeMap::from([(a, false), (b, true)]);
        assert_eq!(
            exabgp_changes(&none, &both),
            [
                "announce route 198.18.0.10/32 next-hop self",
                "announce route 198.18.0.11/32 next-hop self"
            ]
        );
        assert!(exabgp_changes(&both, &both).is_empty());
        assert_eq!(
            exabgp_changes(&both, &only_b),
            ["withdraw route 198.18.0.10/32 next-hop self"]
        );
        // A VIP that disappears (service removed) is withdrawn.
        assert_eq!(
            exabgp_changes(&only_b, &none),
            ["withdraw route 198.18.0.11/32 next-hop self"]
        );
        assert!(exabgp_changes(&only_b, &BTreeMap::from([(a, false)]))
            .iter()
            .all(|l| l.starts_with("withdraw")));
    }

    #[test]
    fn bird_symbols() {
        assert!(is_bird_symbol("fulcrum_web"));
        assert!(is_bird_symbol("f1"));
        assert!(!is_bird_symbol(""));
        assert!(!is_bird_symbol("_x"));
        assert!(!is_bird_symbol("1x"));
        assert!(!is_bird_symbol("fulcrum_web-1"));
        assert!(!is_bird_symbol("fulcrum_a.b"));
        assert!(!is_bird_symbol(&"a".repeat(65)));
        assert_eq!(bird_command(true, "fulcrum_web"), "enable fulcrum_web");
        assert_eq!(bird_command(false, "fulcrum_web"), "disable fulcrum_web");
    }

    #[test]
    fn bird_reply_lines() {
        assert_eq!(
            parse_bird_line("0001 BIRD 2.0.12 ready."),
            Some(BirdLine::Coded {
                code: 1,
                last: true,
                text: "BIRD 2.0.12 ready.".into()
            })
        );
        assert_eq!(
            parse_bird_line("1002-fulcrum_web Static master4 up"),
            Some(BirdLine::Coded {
                code: 1002,
                last: false,
                text: "fulcrum_web Static master4 up".into()
            })
        );
        assert_eq!(
            parse_bird_line(" continued"),
            Some(BirdLine::More("continued".into()))
        );
        assert_eq!(
            parse_bird_line("0000"),
            Some(BirdLine::Coded {
                code: 0,
                last: true,
                text: String::new()
            })
        );
        assert_eq!(parse_bird_line("garbage"), None);
        assert_eq!(parse_bird_line("00x0 nope"), None);
        assert_eq!(parse_bird_line("0013+x"), None);
        assert_eq!(parse_bird_line(""), None);
        assert_eq!(parse_bird_line("é"), None);
    }

    #[test]
    fn bird_outcomes() {
        // Replies recorded from bird 2.0.12.
        let r = |v: &[(u16, &str)]| -> Vec<(u16, String)> {
            v.iter().map(|(c, t)| (*c, (*t).to_owned())).collect()
        };
        for code in [8, 9, 10, 11] {
            assert_eq!(
                bird_outcome(&r(&[(code, "fulcrum_web: enabled"), (0, "")])),
                BirdOutcome::Done
            );
        }
        assert_eq!(
            bird_outcome(&r(&[(
                9001,
                "syntax error, unexpected CF_SYM_UNDEFINED, expecting CF_SYM_KNOWN or TEXT or ALL"
            )])),
            BirdOutcome::NoSuchProtocol
        );
        assert_eq!(
            bird_outcome(&r(&[(8003, "No protocols match")])),
            BirdOutcome::Refused(8003, "No protocols match".into())
        );
        assert!(matches!(
            bird_outcome(&r(&[(0, "")])),
            BirdOutcome::Refused(0, _)
        ));
        assert!(matches!(bird_outcome(&[]), BirdOutcome::Refused(0, _)));
    }
}
