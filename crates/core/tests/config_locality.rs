//! `[pool.locality]`, `[[pool.backend]] zone` and `[cluster] zone`: parsed, refused with the
//! reason, and written back by `to_toml` unchanged.

use fulcrum_core::config::{parse, parse_all};
use fulcrum_core::locality::Locality;
use fulcrum_core::model::Zone;

fn doc(locality: &str) -> String {
    format!(
        r#"
[[service]]
name = "web"
listen = "127.0.0.1:8080"
protocol = "http"
pool = "web"

[[pool]]
name = "web"
backend = [
  {{ address = "127.0.0.1:9001", zone = "a" }},
  {{ address = "127.0.0.1:9002", zone = "b" }},
  {{ address = "127.0.0.1:9003" }},
]
{locality}

[cluster]
etcd = ["http://127.0.0.1:2379"]
prefix = "/fulcrum/prod"
zone = "a"
"#
    )
}

#[test]
fn weights_and_prefer_parse_and_round_trip() {
    let c = parse(&doc(
        "[pool.locality]\nweights = { c = 90, a = 5, b = 5 }\ncontrolled = true",
    ))
    .expect("valid");
    let p = &c.pools[0];
    assert_eq!(p.backends[0].zone, Some(Zone::new("a")));
    assert_eq!(p.backends[2].zone, None);
    assert_eq!(
        c.cluster.as_ref().and_then(|c| c.zone.clone()),
        Some(Zone::new("a"))
    );
    let Some(Locality::Weights {
        weights,
        controlled: true,
    }) = &p.locality
    else {
        panic!("weights: {:?}", p.locality)
    };
    assert_eq!(
        weights
            .iter()
            .map(|(z, w)| (z.as_str(), *w))
            .collect::<Vec<_>>(),
        [("a", 5), ("b", 5), ("c", 90)]
    );
    assert_eq!(parse(&c.to_toml()).expect("round trip"), c);

    let c = parse(&doc("[pool.locality]\nprefer = \"local\"")).expect("valid");
    assert_eq!(
        c.pools[0].locality,
        Some(Locality::PreferLocal { spill_below: 70 })
    );
    assert_eq!(parse(&c.to_toml()).expect("round trip"), c);
    let c = parse(&doc(
        "[pool.locality]\nprefer = \"local\"\nspill_below = 50",
    ))
    .expect("valid");
    assert_eq!(
        c.pools[0].locality,
        Some(Locality::PreferLocal { spill_below: 50 })
    );
}

#[test]
fn bad_locality_says_what_would_be_valid() {
    for (bad, want) in [
        ("[pool.locality]\n", "neither weights nor prefer"),
        (
            "[pool.locality]\nweights = { a = 1 }\nprefer = \"local\"",
            "both weights and prefer",
        ),
        ("[pool.locality]\nprefer = \"nearest\"", "local"),
        (
            "[pool.locality]\nweights = { a = 0 }",
            "no zone a weight above 0",
        ),
        ("[pool.locality]\nweights = { a = 10001 }", "0..=10000"),
        (
            "[pool.locality]\nweights = { \"a b\" = 1 }",
            "invalid zone name",
        ),
        (
            "[pool.locality]\nweights = { a = 1 }\nspill_below = 50",
            "spill_below applies only",
        ),
        (
            "[pool.locality]\nprefer = \"local\"\ncontrolled = true",
            "controlled applies only",
        ),
        (
            "[pool.locality]\nprefer = \"local\"\nspill_below = 0",
            "never spill",
        ),
        ("[pool.locality]\nprefer = \"local\"\nnear = 1", "near"),
    ] {
        let errs = parse_all(&doc(bad)).expect_err(bad);
        let text = errs
            .iter()
            .map(|e| [e.message.clone(), e.help.clone().unwrap_or_default()].join(" "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains(want), "{bad}: {text}");
    }
}
