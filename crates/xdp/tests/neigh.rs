//! `neigh::Neighbours` against the kernel, in two namespaces this test creates
//! (198.18.0.0/15 only; deleted on drop): managed entries for on-link backends and for the
//! gateway of routed ones, static entries left alone, unroutable backends reported, entries
//! this process created deleted when no backend needs them, and re-created after a flush.
//! Needs root and `ip`: skips with a message otherwise, fails when `FULCRUM_REQUIRE_ALL=1`.
#![allow(clippy::pedantic)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use fulcrum_xdp::neigh::{Neighbours, NUD_VALID};
use fulcrum_xdp::testing::{in_netns, is_root};

mod common;
use common::{sh, Netns};

fn prerequisites(test: &str) -> bool {
    let ip = std::process::Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if is_root() && ip {
        return true;
    }
    assert!(
        std::env::var("FULCRUM_REQUIRE_ALL").as_deref() != Ok("1"),
        "{test}: FULCRUM_REQUIRE_ALL=1 and this test needs root and `ip` (iproute2)"
    );
    eprintln!("SKIPPED {test}: needs root and `ip` (iproute2)");
    false
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn managed_entries_for_every_next_hop_and_static_ones_untouched() {
    if !prerequisites("managed_entries_for_every_next_hop_and_static_ones_untouched") {
        return;
    }
    let lb = Netns::new("fxnl");
    let peer = Netns::new("fxnp");
    lb.ip(&["link", "set", "lo", "up"]);
    lb.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &peer.0,
    ]);
    lb.ip(&["addr", "add", "198.18.7.2/24", "dev", "eth0"]);
    lb.ip(&["link", "set", "eth0", "up"]);
    for a in ["198.18.7.11/24", "198.18.7.1/24"] {
        peer.ip(&["addr", "add", a, "dev", "eth0"]);
    }
    peer.ip(&["link", "set", "eth0", "up"]);
    lb.ip(&["route", "add", "198.18.8.0/24", "via", "198.18.7.1"]);
    lb.ip(&[
        "neigh",
        "add",
        "198.18.7.12",
        "dev",
        "eth0",
        "lladdr",
        "02:00:00:00:07:12",
        "nud",
        "permanent",
    ]);

    let flush = {
        let name = lb.0.clone();
        move || sh(&["ip", "-n", &name, "neigh", "flush", "dev", "eth0"])
    };
    in_netns(&lb.0, move || {
        let eth0 = fulcrum_xdp::testing::ifindex("eth0").expect("eth0");
        let mut n = Neighbours::new().expect("rtnetlink");
        let backends = [
            ip("198.18.7.11"), // on-link
            ip("198.18.8.5"),  // via 198.18.7.1
            ip("198.18.8.6"),  // the same gateway
            ip("198.18.7.12"), // permanent entry: left alone
            ip("198.18.99.9"), // no route
        ];
        let r = n.reconcile(&backends).expect("reconcile");
        assert_eq!(r.unroutable, [ip("198.18.99.9")]);
        assert_eq!(r.next_hops, 3, "{r:?}");
        let mut created: Vec<IpAddr> = r.created.iter().map(|h| h.addr).collect();
        created.sort();
        assert_eq!(created, [ip("198.18.7.1"), ip("198.18.7.11")], "{r:?}");
        assert!(r.created.iter().all(|h| h.ifindex == eth0));
        assert!(r.failed.is_empty(), "{r:?}");

        // the kernel resolves them without any traffic
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let t = n.dump().expect("dump");
            let ok = |a: &str| {
                t.iter()
                    .any(|(h, e)| h.addr == ip(a) && e.managed && e.state & NUD_VALID != 0)
            };
            if ok("198.18.7.1") && ok("198.18.7.11") {
                let st = t
                    .iter()
                    .find(|(h, _)| h.addr == ip("198.18.7.12"))
                    .map(|(_, e)| *e)
                    .expect("static entry");
                assert_eq!(st.state, 0x80, "still permanent");
                assert!(!st.managed);
                break;
            }
            assert!(Instant::now() < deadline, "not resolved: {t:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // nothing to do the second time
        let again = n.reconcile(&backends).expect("reconcile");
        assert!(
            again.created.is_empty() && again.pending.is_empty(),
            "{again:?}"
        );

        // the routed backends leave: the gateway's entry (ours) is deleted
        let r = n.reconcile(&[ip("198.18.7.11")]).expect("reconcile");
        assert!(r.created.is_empty(), "{r:?}");
        let t = n.dump().expect("dump");
        assert!(
            !t.keys().any(|h| h.addr == ip("198.18.7.1")),
            "entry deleted: {t:?}"
        );
        assert!(t.keys().any(|h| h.addr == ip("198.18.7.11")));

        // flushed: created again
        flush();
        assert!(!n
            .dump()
            .expect("dump")
            .keys()
            .any(|h| h.addr == ip("198.18.7.11")));
        let r = n.reconcile(&[ip("198.18.7.11")]).expect("reconcile");
        assert_eq!(
            r.created.iter().map(|h| h.addr).collect::<Vec<_>>(),
            [ip("198.18.7.11")]
        );
    })
    .expect("netns");
}
