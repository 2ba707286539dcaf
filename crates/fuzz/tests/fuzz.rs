//! Every fuzz target under the stable-Rust runner: the seed corpus replayed, then mutated
//! inputs for `FULCRUM_FUZZ_SECONDS` per target (default 1; `.ci/run` gives each 15), from
//! the seed `FULCRUM_FUZZ_SEED` (default: from the clock, printed). A failing input is
//! saved under target/fuzz-crashes/ and printed.

use std::time::Duration;

use fulcrum_fuzz::runner;

fn seconds() -> f64 {
    std::env::var("FULCRUM_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn seed() -> u64 {
    std::env::var("FULCRUM_FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn fuzz(name: &str) {
    let f = fulcrum_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .expect("a target of that name");
    let seed = seed();
    let s = runner::run(name, f, Duration::from_secs_f64(seconds()), u64::MAX, seed);
    println!(
        "fuzz {name}: {} execs in {:.1} s ({:.0}/s), seed {seed:#x}",
        s.execs,
        s.elapsed.as_secs_f64(),
        s.per_second()
    );
}

#[test]
fn nat_sync() {
    fuzz("nat_sync");
}

#[test]
fn config() {
    fuzz("config");
}

#[test]
fn h1_request() {
    fuzz("h1_request");
}

#[test]
fn h1_response() {
    fuzz("h1_response");
}

#[test]
fn h1_chunked() {
    fuzz("h1_chunked");
}

#[test]
fn h1_differential() {
    fuzz("h1_differential");
}

#[test]
fn header_rewrite() {
    fuzz("header_rewrite");
}

#[test]
fn proxy_protocol() {
    fuzz("proxy_protocol");
}

#[test]
fn tls_hello() {
    fuzz("tls_hello");
}

#[test]
fn admin_json() {
    fuzz("admin_json");
}

#[test]
fn xdp() {
    use fulcrum_xdp::testing::{have_program, require, require_root};
    if !(require_root("xdp") && require("xdp", have_program("ip"), "ip (apt-get install iproute2)"))
    {
        return;
    }
    fuzz("xdp");
}

#[test]
fn every_target_has_a_test_and_a_corpus() {
    let src = include_str!("fuzz.rs");
    for (name, _) in fulcrum_fuzz::TARGETS {
        assert!(
            src.contains(&format!("fuzz(\"{name}\")")),
            "no test runs {name}"
        );
        assert!(!runner::corpus(name).is_empty(), "no corpus for {name}");
    }
}

#[test]
fn dns() {
    fuzz("dns");
}
