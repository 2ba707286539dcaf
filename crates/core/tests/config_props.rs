//! A config parses whole or not at all: `Ok` always holds every service and pool of the
//! text with every invariant true; anything wrong anywhere gives `Err` with a location
//! inside the text. There is no partial `Config`.

use std::collections::HashSet;
use std::fmt::Write as _;

use fulcrum_core::config::{self, Config};
use fulcrum_core::model::is_prime;
use proptest::prelude::*;

const FULL: &str = include_str!("fixtures/full.toml");

#[derive(Debug, Clone)]
struct GenPool {
    name: u8,
    scheduler: &'static str,
    table_size: Option<u32>,
    backends: u8,
}

#[derive(Debug, Clone)]
struct GenService {
    name: u8,
    port: u16,
    udp: bool,
    pool: u8,
}

fn gen_pool() -> impl Strategy<Value = GenPool> {
    (
        0u8..4,
        prop::sample::select(vec!["rr", "wrr", "maglev", "ring_hash"]),
        prop::option::of(prop::sample::select(vec![2u32, 3, 5, 7, 8, 251, 256])),
        0u8..4,
    )
        .prop_map(|(name, scheduler, table_size, backends)| GenPool {
            name,
            scheduler,
            table_size,
            backends,
        })
}

fn gen_service() -> impl Strategy<Value = GenService> {
    (0u8..4, 8000u16..8003, any::<bool>(), 0u8..5).prop_map(|(name, port, udp, pool)| GenService {
        name,
        port,
        udp,
        pool,
    })
}

fn render(pools: &[GenPool], services: &[GenService]) -> String {
    let mut t = String::new();
    for s in services {
        let proto = if s.udp { "udp" } else { "tcp" };
        let _ = write!(
            t,
            "[[service]]\nname = \"s{}\"\nlisten = \"127.0.0.1:{}\"\nprotocol = \"{proto}\"\npool = \"p{}\"\n\n",
            s.name, s.port, s.pool
        );
    }
    for p in pools {
        let _ = write!(
            t,
            "[[pool]]\nname = \"p{}\"\nscheduler = \"{}\"\n",
            p.name, p.scheduler
        );
        if let Some(n) = p.table_size {
            let _ = writeln!(t, "maglev_table_size = {n}");
        }
        for b in 0..p.backends {
            let _ = write!(
                t,
                "[[pool.backend]]\naddress = \"127.0.0.1:{}\"\n",
                9000 + u16::from(b)
            );
        }
        t.push('\n');
    }
    t
}

/// The rules, restated independently for the generated subset.
fn oracle(pools: &[GenPool], services: &[GenService]) -> bool {
    let pool_names: HashSet<u8> = pools.iter().map(|p| p.name).collect();
    let svc_names: HashSet<u8> = services.iter().map(|s| s.name).collect();
    let listens: HashSet<(u16, bool)> = services.iter().map(|s| (s.port, s.udp)).collect();
    pool_names.len() == pools.len()
        && svc_names.len() == services.len()
        && listens.len() == services.len()
        && services.iter().all(|s| pool_names.contains(&s.pool))
        && pools.iter().all(|p| {
            // An empty pool is valid (its services refuse clients until a backend is added).
            p.table_size.is_none_or(|n| {
                p.scheduler == "maglev" && n >= 3 && is_prime(n) && n >= u32::from(p.backends)
            })
        })
}

fn check_invariants(cfg: &Config, pools: usize, services: usize) {
    assert_eq!(cfg.pools.len(), pools, "every pool of the text is there");
    assert_eq!(
        cfg.services.len(),
        services,
        "every service of the text is there"
    );
    let names: HashSet<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), cfg.pools.len());
    for s in &cfg.services {
        assert!(cfg.pool(&s.pool).is_some(), "service pool resolves");
        for r in s.routes() {
            assert!(cfg.pool(&r.pool).is_some(), "route pool resolves");
        }
    }
    for p in &cfg.pools {
        assert_eq!(
            p.scheduler.hash_key().is_some(),
            p.scheduler.kind().is_hashing()
        );
        assert_eq!(
            p.scheduler.maglev_table_size().is_some(),
            p.scheduler.kind() == fulcrum_core::model::SchedulerKind::Maglev
        );
    }
}

proptest! {
    #[test]
    fn whole_or_nothing(
        pools in prop::collection::vec(gen_pool(), 0..4),
        services in prop::collection::vec(gen_service(), 0..4),
    ) {
        let text = render(&pools, &services);
        let expected_ok = oracle(&pools, &services);
        match config::parse_all(&text) {
            Ok(cfg) => {
                prop_assert!(expected_ok, "accepted an invalid config:\n{}", text);
                check_invariants(&cfg, pools.len(), services.len());
            }
            Err(errs) => {
                prop_assert!(!expected_ok, "rejected a valid config:\n{}\n{:?}", text, errs);
                prop_assert!(!errs.is_empty());
                for e in &errs {
                    let span = e.span.clone().expect("semantic errors have spans");
                    prop_assert!(span.start <= span.end && span.end <= text.len());
                }
                let first = config::parse(&text).expect_err("same verdict");
                prop_assert_eq!(&first, &errs[0]);
            }
        }
    }

    /// Any prefix of a valid file (cut anywhere, even mid-token) is either an error with a
    /// location in the text, or a whole config of exactly the tables in that prefix.
    #[test]
    fn every_prefix_is_whole_or_error(cut in 0usize..FULL.len()) {
        let mut cut = cut;
        while !FULL.is_char_boundary(cut) {
            cut -= 1;
        }
        let text = &FULL[..cut];
        match config::parse(text) {
            Ok(cfg) => {
                let count = |h: &str| text.lines().filter(|l| l.trim() == h).count();
                check_invariants(&cfg, count("[[pool]]"), count("[[service]]"));
            }
            Err(e) => {
                if let Some(s) = &e.span {
                    prop_assert!(s.end <= text.len());
                }
                let rendered = e.render("f", text);
                prop_assert!(rendered.starts_with("f:"));
            }
        }
    }
}
