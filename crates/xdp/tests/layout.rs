//! The Rust map types and constants match `bpf/include/types.h`.
#![allow(clippy::pedantic)]

use fulcrum_xdp::maps::*;

#[test]
fn sizes_and_constants_match_the_c_header() {
    let h = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/include/types.h"))
        .expect("types.h");
    let rust_sizes = [
        ("svc_key", size_of::<SvcKey>()),
        ("svc_value", size_of::<SvcValue>()),
        ("backend", size_of::<BackendEntry>()),
        ("ct_key", size_of::<CtKey>()),
        ("ct4_key", size_of::<Ct4Key>()),
        ("fcache4", size_of::<Fcache4>()),
        ("flow4", size_of::<Flow4>()),
        ("flow4_set", size_of::<Flow4Set>()),
        ("fcache6", size_of::<Fcache6>()),
        ("flow6", size_of::<Flow6>()),
        ("flow6_set", size_of::<Flow6Set>()),
        ("ct_value", size_of::<CtValue>()),
        ("counter", size_of::<Counter>()),
        ("nexthop", size_of::<NextHop>()),
        ("nat_fwd", size_of::<NatFwd>()),
        ("nat_rev", size_of::<NatRev>()),
        ("nat_event", size_of::<NatEvent>()),
        ("nat_owner", size_of::<NatOwner>()),
        ("gue_sc", size_of::<GueSc>()),
        ("sc_addr", size_of::<ScAddr>()),
        ("sock_relay", size_of::<SockRelayEntry>()),
    ];
    let mut found = 0;
    for line in h.lines() {
        let Some(rest) = line.trim().strip_prefix("_Static_assert(sizeof(struct ") else {
            continue;
        };
        let (name, rest) = rest.split_once(')').expect("struct name");
        let n: usize = rest
            .trim_start_matches(" ==")
            .trim()
            .split(',')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .expect("size");
        let (_, rust) = rust_sizes
            .iter()
            .find(|(r, _)| *r == name)
            .unwrap_or_else(|| panic!("struct {name} has no Rust twin"));
        assert_eq!(*rust, n, "size of struct {name}");
        found += 1;
    }
    assert_eq!(
        found,
        rust_sizes.len(),
        "every struct is asserted in the header"
    );

    let define = |name: &str| -> u64 {
        let line = h
            .lines()
            .find(|l| l.starts_with(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("#define {name}"));
        let v = line.split_whitespace().nth(2).expect("value");
        v.parse().unwrap_or_else(|_| panic!("{name} = {v}"))
    };
    assert_eq!(define("FX_MAX_SERVICES"), u64::from(MAX_SERVICES));
    assert_eq!(define("FX_SVC_SECOND_CHANCE"), u64::from(SVC_SECOND_CHANCE));
    assert_eq!(define("FX_SVC_PREV_TABLE"), u64::from(SVC_PREV_TABLE));
    assert_eq!(define("FX_GUE_SC_KIND"), u64::from(GUE_SC_KIND));
    assert_eq!(define("FX_GUE_SC_TAKEN"), u64::from(GUE_SC_TAKEN));
    assert_eq!(define("FX_GUE_SC4_LEN"), GUE_SC4_LEN as u64);
    assert_eq!(define("FX_GUE_SC6_LEN"), GUE_SC6_LEN as u64);
    assert_eq!(define("FX_MAX_BACKENDS"), u64::from(MAX_BACKENDS));
    assert_eq!(define("FX_SOCKMAP_ENTRIES"), u64::from(SOCKMAP_ENTRIES));
    assert_eq!(define("FX_MAGLEV_MAX"), u64::from(MAGLEV_MAX));
    assert_eq!(define("FX_CT_ENTRIES"), u64::from(CT_ENTRIES));
    assert_eq!(define("FX_FCACHE_SLOTS"), u64::from(FCACHE_SLOTS));
    assert_eq!(define("FX_FLOW4_SETS"), u64::from(FLOW4_SETS));
    assert_eq!(define("FX_FLOW4_WAYS"), u64::from(FLOW4_WAYS));
    assert_eq!(define("FX_FCACHE6_SLOTS"), u64::from(FCACHE6_SLOTS));
    assert_eq!(define("FX_FLOW6_SETS"), u64::from(FLOW6_SETS));
    assert_eq!(define("FX_FLOW6_WAYS"), u64::from(FLOW6_WAYS));
    assert_eq!(define("FX_ACTIONS"), u64::from(ACTIONS));
    assert_eq!(define("FX_NH_TTL_NS"), NH_TTL_NS);
    assert_eq!(define("FX_CT4_FILTER"), u64::from(CT4_FILTER));
    assert_eq!(define("FX_CT4_FILTER_SHIFT"), u64::from(CT4_FILTER_SHIFT));
    assert_eq!(define("FX_NAT_ENTRIES"), u64::from(NAT_ENTRIES));
    assert_eq!(define("FX_NAT_PORT_MIN"), u64::from(NAT_PORT_MIN));
    assert_eq!(define("FX_NAT_PORT_MAX"), u64::from(NAT_PORT_MAX));
    assert_eq!(define("FX_NSS_EVENTS_LOST"), u64::from(NSS_EVENTS_LOST));
    assert_eq!(define("FX_NSS_REPLY_MISS"), u64::from(NSS_REPLY_MISS));
    assert_eq!(define("FX_NSS_REV_FILLED"), u64::from(NSS_REV_FILLED));
    assert_eq!(define("FX_NSS_REV_NO_ROUTE"), u64::from(NSS_REV_NO_ROUTE));
    assert_eq!(define("FX_NSS_TO_OWNER"), u64::from(NSS_TO_OWNER));
    assert_eq!(define("FX_NAT_EVENTS_WAKE"), u64::from(NAT_EVENTS_WAKE));
    assert_eq!(define("FX_NAT_EVENTS_POLL_MS"), NAT_EVENTS_POLL_MS);
    assert_eq!(define("FX_NSS_COUNTERS"), u64::from(NSS_COUNTERS));
    assert_eq!(
        define("FX_NAT_SYNC_MAX_MEMBERS"),
        u64::from(NAT_SYNC_MAX_MEMBERS)
    );
    assert_eq!(
        u32::from(fulcrum_core::config::NAT_SYNC_MAX_MEMBERS),
        NAT_SYNC_MAX_MEMBERS
    );
    assert_eq!(define("FX_NAT_PROBES"), u64::from(NAT_PROBES));
    for (n, v) in [
        ("FX_AF_INET", AF_INET),
        ("FX_AF_INET6", AF_INET6),
        ("FX_MODE_DSR", MODE_DSR),
        ("FX_MODE_TUNNEL", MODE_TUNNEL),
        ("FX_MODE_NAT", MODE_NAT),
        ("FX_FCACHE_NAT_REV", FCACHE_NAT_REV),
        ("FX_NAT_FIN_FWD", NAT_FIN_FWD),
        ("FX_NAT_FIN_REV", NAT_FIN_REV),
        ("FX_NAT_RST", NAT_RST),
        ("FX_TUNNEL_IPIP", TUNNEL_IPIP),
        ("FX_TUNNEL_GUE", TUNNEL_GUE),
        ("FX_HASH_SRC_IP", HASH_SRC_IP),
        ("FX_HASH_SRC_IP_PORT", HASH_SRC_IP_PORT),
        ("FX_HASH_FIVE_TUPLE", HASH_FIVE_TUPLE),
        ("FX_BACKEND_ALIVE", BACKEND_ALIVE),
        ("FX_FLOW4_FIRST", FLOW4_FIRST),
        ("FX_FLOW4_LRU", FLOW4_LRU),
    ] {
        assert_eq!(define(n), u64::from(v), "{n}");
    }
    for (i, a) in ACTION_NAMES.iter().enumerate() {
        let name = format!("FX_ACT_{}", a.to_uppercase());
        assert_eq!(define(&name), i as u64, "{name}");
    }
}
