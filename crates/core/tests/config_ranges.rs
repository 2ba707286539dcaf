//! Defaults that fit every valid setting, a documented range for every number and duration
//! (and values at the ends of the ranges that are safe to use), every error of a file at
//! once, and saved configurations that load again.

use std::time::{Duration, Instant};

use fulcrum_core::config::{self, limits, Config};
use fulcrum_core::model::{next_prime, PrimeTableSize};
use proptest::prelude::*;

const POOL: &str = "[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:9001\"\n";

fn tcp(extra: &str) -> String {
    format!("[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"p\"\n{extra}\n{POOL}")
}

fn parse(text: &str) -> Config {
    config::parse(text).unwrap_or_else(|e| panic!("{}\n{text}", e.render("t.toml", text)))
}

fn err(text: &str) -> String {
    match config::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.render("t.toml", text),
    }
}

fn round_trip(c: &Config) {
    let text = c.to_toml();
    assert_eq!(&parse(&text), c, "{text}");
}

#[test]
fn health_interval_alone_gets_a_timeout_that_fits() {
    for (interval, timeout) in [
        ("500ms", 250),
        ("200ms", 100),
        ("10ms", 5),
        ("1s", 500),
        ("1h", 500),
    ] {
        let text = format!("{}[pool.health]\ninterval = \"{interval}\"\n", tcp(""));
        let c = parse(&text);
        let h = c.pools[0].health.as_ref().expect("health");
        assert_eq!(
            h.timeout,
            Duration::from_millis(timeout),
            "interval {interval}"
        );
        assert!(h.timeout < h.interval);
        round_trip(&c);
        assert!(
            !c.to_toml().contains("timeout"),
            "a derived default is not written out"
        );
    }
    // A written timeout is still checked against the interval.
    let text = format!(
        "{}[pool.health]\ninterval = \"500ms\"\ntimeout = \"500ms\"\n",
        tcp("")
    );
    assert!(err(&text).contains("must be shorter than the interval 500ms"));
}

#[test]
fn a_key_without_a_value_says_so() {
    for text in ["a =", "a = \n", "a =   # note\nb = 1\n"] {
        let all = config::parse_all(text).expect_err("no value");
        assert_eq!(all.len(), 1);
        let e = &all[0];
        assert_eq!(e.message, "missing value after `=`", "{text:?}");
        assert!(e.help.as_deref().is_some_and(|h| h.contains("\"text\"")));
        assert!(!e.render("t.toml", text).contains('\n') || e.help.is_some());
    }
    assert!(err("a =").starts_with("t.toml:1:4: missing value after `=`\n  help: "));
    // Other syntax errors: one line of message, the parser's detail in the help.
    let e = config::parse("x = [1,\n").expect_err("syntax");
    assert!(!e.message.is_empty() && !e.message.contains('\n'), "{e:?}");
}

#[test]
fn maglev_table_size_is_bounded() {
    let pool = |size: &str| {
        format!("[[pool]]\nname = \"p\"\nscheduler = \"maglev\"\nmaglev_table_size = {size}\n")
    };
    for size in ["4294967291", "4294967295", "1000033", "99999999999"] {
        let e = err(&pool(size));
        assert!(
            e.contains(&format!("maglev_table_size {size} is out of range")),
            "{e}"
        );
        assert!(e.contains("3..=1000003"), "{e}");
    }
    let e = err(&pool("1000002"));
    assert!(
        e.contains("is not a prime") && e.contains("the next prime is 1000003"),
        "{e}"
    );
    assert_eq!(
        parse(&pool("1000003")).pools[0]
            .scheduler
            .maglev_table_size()
            .map(PrimeTableSize::get),
        Some(1_000_003)
    );
    assert!(PrimeTableSize::new(4_294_967_291).is_none());
    // No wrap-around to a small "next prime".
    assert_eq!(next_prime(u32::MAX), None);
    assert_eq!(next_prime(4_294_967_292), None);
    assert_eq!(next_prime(4_294_967_290), Some(4_294_967_291));
}

#[test]
fn counts_are_bounded() {
    for (extra, after, ok) in [
        ("max_connections = 10000000", "", true),
        ("max_connections = 10000001", "", false),
        ("max_connections = 4294967295", "", false),
        ("", "[pool.health]\nrise = 1000\nfall = 1000\n", true),
        ("", "[pool.health]\nrise = 1001\n", false),
        (
            "",
            "[pool.outlier]\nconsecutive_failures = 1000001\n",
            false,
        ),
    ] {
        let text = format!("{}{after}", tcp(extra));
        assert_eq!(config::parse(&text).is_ok(), ok, "{extra}{after}");
        if !ok {
            assert!(err(&text).contains("is out of range\n  help: valid: 1..="));
        }
    }
    let http = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"p\"\n";
    let rl = format!("{http}[service.rate_limit]\nrequests_per_second = 10000001\n{POOL}");
    assert!(err(&rl).contains("valid: 1..=10000000"));
}

#[test]
fn http2_limits_are_bounded_and_saved() {
    let http = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"p\"\n";
    for (key, max) in [
        ("max_concurrent_streams", limits::H2_MAX_CONCURRENT_STREAMS),
        ("max_header_list_size", limits::H2_MAX_HEADER_LIST_SIZE),
        ("max_resets_per_second", limits::H2_FRAMES_PER_SECOND),
        (
            "max_control_frames_per_second",
            limits::H2_FRAMES_PER_SECOND,
        ),
    ] {
        for (v, ok) in [(0, false), (1, true), (max, true), (max + 1, false)] {
            let text = format!("{http}[service.http2]\n{key} = {v}\n{POOL}");
            if ok {
                let c = parse(&text);
                let h = c.services[0]
                    .http()
                    .and_then(|h| h.http2)
                    .expect("[service.http2]");
                let got = match key {
                    "max_concurrent_streams" => h.max_concurrent_streams,
                    "max_header_list_size" => h.max_header_list_size,
                    "max_resets_per_second" => h.max_resets_per_second,
                    _ => h.max_control_frames_per_second,
                };
                assert_eq!(got.get(), v, "{key}");
                round_trip(&c);
            } else {
                assert!(
                    err(&text).contains(&format!("valid: 1..={max}")),
                    "{key} = {v}: {}",
                    err(&text)
                );
            }
        }
    }
    let tcp_http2 = tcp("[service.http2]\nmax_concurrent_streams = 10\n");
    assert!(
        err(&tcp_http2).contains("[service.http2]"),
        "{}",
        err(&tcp_http2)
    );
}

/// Every duration key, as `(table text before, key, the key's range)`.
fn duration_keys() -> Vec<(String, &'static str, std::ops::RangeInclusive<Duration>)> {
    let svc = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"p\"\n";
    let pool = "[[pool]]\nname = \"p\"\nscheduler = \"rr\"\n";
    vec![
        (svc.into(), "idle_timeout", limits::IDLE_TIMEOUT),
        (svc.into(), "drain_timeout", limits::DRAIN_TIMEOUT),
        (
            format!("{svc}[service.timeouts]\n"),
            "connect",
            limits::HTTP_TIMEOUT,
        ),
        (
            format!("{svc}[service.timeouts]\n"),
            "response",
            limits::HTTP_TIMEOUT,
        ),
        (
            format!("{svc}[service.timeouts]\n"),
            "request_header",
            limits::HTTP_TIMEOUT,
        ),
        (
            format!("{svc}[service.timeouts]\n"),
            "tls_handshake",
            limits::HTTP_TIMEOUT,
        ),
        (format!("{svc}{pool}"), "persistence", limits::PERSISTENCE),
        (
            format!("{svc}{pool}[pool.health]\n"),
            "interval",
            limits::HEALTH_INTERVAL,
        ),
        (
            format!("{svc}{pool}[pool.outlier]\n"),
            "ejection",
            limits::OUTLIER_EJECTION,
        ),
    ]
}

fn with_duration(prefix: &str, key: &str, d: Duration) -> String {
    let text = format!("{prefix}{key} = \"{}\"\n", humantime::format_duration(d));
    if text.contains("[[pool]]") {
        text
    } else {
        format!("{text}[[pool]]\nname = \"p\"\n")
    }
}

/// What the runtime does with the durations: deadlines from now.
fn use_durations(c: &Config) {
    let now = Instant::now();
    for s in &c.services {
        let _ = now + s.idle_timeout + s.drain_timeout;
        if let Some(t) = s.http().and_then(|h| h.timeouts) {
            let _ = now + t.connect + t.response + t.request_header + t.tls_handshake;
        }
    }
    for p in &c.pools {
        let _ = now + p.persistence.unwrap_or_default() + p.outlier.ejection;
        if let Some(h) = &p.health {
            let _ = now + h.interval + h.timeout;
        }
    }
}

#[test]
fn durations_at_both_ends_of_their_range_load_and_work_and_beyond_are_refused() {
    for (prefix, key, range) in duration_keys() {
        for d in [*range.start(), *range.end()] {
            let c = parse(&with_duration(&prefix, key, d));
            use_durations(&c);
            round_trip(&c);
        }
        let over = with_duration(&prefix, key, *range.end() + Duration::from_millis(1));
        let e = err(&over);
        assert!(
            e.contains(&format!("{key} ")) && e.contains("is too long"),
            "{e}"
        );
        assert!(
            e.contains(&format!("valid: {}", limits::show(&range))),
            "{e}"
        );
        if !range.start().is_zero() {
            let e = err(&with_duration(&prefix, key, Duration::ZERO));
            assert!(e.contains("must be longer than 0"), "{e}");
        }
    }
    // The absurd: refused as too long by the duration itself, whatever the key.
    let e = err(&tcp("idle_timeout = \"18446744073709551615s\""));
    assert!(
        e.contains("is too long") || e.contains("invalid duration"),
        "{e}"
    );
    let e = err(&tcp("idle_timeout = \"400days\""));
    assert!(e.contains("duration \"400days\" is too long"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any accepted idle timeout and health interval can be added to the clock.
    #[test]
    fn accepted_durations_never_overflow(secs in any::<u64>(), ms in 0u64..1000, shift in 0u32..64) {
        let secs = secs >> shift;
        let d = format!("{secs}s {ms}ms");
        let text = format!("{}[pool.health]\ninterval = \"{d}\"\n", tcp(&format!("idle_timeout = \"{d}\"")));
        let total = Duration::from_secs(secs) + Duration::from_millis(ms);
        match config::parse(&text) {
            Ok(c) => {
                prop_assert!(limits::HEALTH_INTERVAL.contains(&total) && limits::IDLE_TIMEOUT.contains(&total));
                use_durations(&c);
            }
            Err(_) => prop_assert!(!limits::HEALTH_INTERVAL.contains(&total) || !limits::IDLE_TIMEOUT.contains(&total)),
        }
    }
}

#[test]
fn every_misspelled_key_is_reported_at_once_with_a_suggestion() {
    let text = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"p\"\nidle_timout = \"10s\"\n\n[[pool]]\nnmae = \"p\"\nschedular = \"rr\"\n[pool.health]\nintreval = \"2s\"\ncolour = 1\n";
    let all = config::parse_all(text).expect_err("four typos");
    let shown: Vec<String> = all.iter().map(|e| e.render("t.toml", text)).collect();
    let expect = [
        (
            "t.toml:6:1: unknown key `idle_timout`",
            "did you mean `idle_timeout`?",
        ),
        ("t.toml:9:1: unknown key `nmae`", "did you mean `name`?"),
        (
            "t.toml:10:1: unknown key `schedular`",
            "did you mean `scheduler`?",
        ),
        (
            "t.toml:12:1: unknown key `intreval`",
            "did you mean `interval`?",
        ),
        (
            "t.toml:13:1: unknown key `colour`",
            "valid keys here: check, interval",
        ),
    ];
    assert_eq!(shown.len(), expect.len(), "{shown:#?}");
    for (got, (at, help)) in shown.iter().zip(expect) {
        assert!(
            got.starts_with(at) && got.contains(help),
            "{got}\nexpected {at} ... {help}"
        );
    }
    assert!(
        !shown[4].contains("did you mean"),
        "no close key to `colour`"
    );
}

#[test]
fn bad_values_and_cross_key_errors_are_all_reported() {
    // Two bad values (one in a required key) and an unknown key: each once, no "missing key"
    // echo for the bad required value.
    let text = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\nweight = 70000\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\nweight = -1\n";
    let all = config::parse_all(text).expect_err("errors");
    let at: Vec<_> = all.iter().filter_map(|e| e.line_col(text)).collect();
    assert_eq!(at, vec![(3, 10), (11, 10), (14, 10)], "{all:#?}");
    // A typo read as its suggestion, then the cross-key checks on what was meant.
    let text = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"q\"\nforwrd = \"dsr\"\n[[pool]]\nname = \"p\"\n";
    let all = config::parse_all(text).expect_err("errors");
    let msgs: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(msgs[0].contains("refers to pool `q`"), "{msgs:?}");
    assert!(msgs[1].contains("unknown key `forwrd`"), "{msgs:?}");
    assert!(
        msgs[2].contains("forward = \"dsr\" needs the packet data plane"),
        "{msgs:?}"
    );
    assert_eq!(
        all[2].line_col(text),
        Some((6, 10)),
        "mapped back past the renamed key"
    );
    // A misspelled key inside an inline table.
    let text = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"p\"\n[service.tls]\ncerts = [ { cert = \"a.pem\", kye = \"a.key\" }, { cert = \"b.pem\", key = \"b.key\", x = 1 } ]\n[[pool]]\nname = \"p\"\n";
    let all = config::parse_all(text).expect_err("errors");
    let shown: Vec<String> = all.iter().map(|e| e.render("t.toml", text)).collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(
        shown[0].starts_with("t.toml:7:29: unknown key `kye`")
            && shown[0].contains("did you mean `key`?")
    );
    assert!(
        shown[1].starts_with("t.toml:7:79: unknown key `x`"),
        "{shown:#?}"
    );
}

/// A maglev pool with `n` static backends (an inline array: quicker to parse than tables)
/// and the table size `size` (default when `None`).
fn maglev_pool(n: usize, size: Option<u32>) -> String {
    use std::fmt::Write as _;
    let mut t = String::from("[[pool]]\nname = \"big\"\nscheduler = \"maglev\"\n");
    if let Some(m) = size {
        let _ = writeln!(t, "maglev_table_size = {m}");
    }
    t.push_str("backend = [\n");
    for i in 0..n {
        let _ = writeln!(
            t,
            "{{ address = \"127.{}.{}.{}:80\" }},",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    t.push_str("]\n");
    t
}

#[test]
fn a_maglev_pool_never_has_more_backends_than_table_slots() {
    // Up to the table size: accepted, and the saved text loads as the same config.
    let c = parse(&maglev_pool(7, Some(7)));
    round_trip(&c);
    assert!(err(&maglev_pool(8, Some(7)))
        .contains("maglev_table_size 7 is smaller than the number of backends (8)"));
    // With the default size too: one backend more than 65537 is refused up front (it used
    // to load, and then the saved text, which names the size, did not).
    let size = PrimeTableSize::DEFAULT.get() as usize;
    let text = maglev_pool(size + 1, None);
    let e = err(&text);
    assert!(
        e.starts_with("t.toml:2:8: the default maglev_table_size 65537 is smaller than the number of backends (65538) of pool `big`"),
        "{e}"
    );
    assert!(e.contains("e.g. 1000003"), "{e}");
}

#[test]
fn a_packet_data_plane_pool_keeps_to_the_data_plane_table() {
    let text = |forward: &str, size: u32| {
        format!("[[service]]\nname = \"s\"\nlisten = \"198.18.0.1:80\"\nprotocol = \"tcp\"\npool = \"p\"\nforward = \"{forward}\"\n[[pool]]\nname = \"p\"\nscheduler = \"maglev\"\nmaglev_table_size = {size}\n[xdp]\ninterface = \"eth0\"\n")
    };
    assert!(config::parse(&text("dsr", 65537)).is_ok());
    assert!(config::parse(&text("proxy", 65539)).is_ok());
    let e = err(&text("dsr", 65539));
    assert!(
        e.starts_with("t.toml:10:21: maglev_table_size 65539 is above the packet data plane's 65537, and service `s` uses pool `p` with forward = \"dsr\""),
        "{e}"
    );
}

const FULL: &str = include_str!("fixtures/full.toml");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Damaging a valid file anywhere never panics the error collection, and every error
    /// points inside the text.
    #[test]
    fn damaged_files_give_located_errors_never_a_panic(
        at in 0usize..FULL.len(),
        cut in 0usize..40,
        insert in prop::sample::select(vec!["", "x", "=", "\"", "[", "]", ",", "{", "}", "\n", "1", "nme", "é", "interval = 0\n", "bogus = 1\n", "weight = -5"]),
    ) {
        let mut text = FULL.to_owned();
        let mut start = at.min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (start + cut).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.replace_range(start..end, insert);
        if let Err(errors) = config::parse_all(&text) {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!(!e.message.is_empty(), "{e:?}");
                if let Some(s) = &e.span {
                    prop_assert!(s.start <= s.end && s.end <= text.len(), "{e:?} in {} bytes", text.len());
                }
                let _ = e.render("t.toml", &text);
            }
        }
    }
}

#[test]
fn a_misspelled_name_value_gets_a_suggestion_too() {
    let e = err("[[pool]]\nname = \"p\"\nscheduler = \"magelv\"\n");
    assert!(
        e.contains("help: did you mean \"maglev\"? valid: rr, wrr"),
        "{e}"
    );
    let e = err("[[pool]]\nname = \"p\"\nscheduler = \"fastest\"\n");
    assert!(
        e.contains("help: valid: rr, wrr") && !e.contains("did you mean"),
        "{e}"
    );
}

#[test]
fn the_packet_data_plane_limits_are_checked() {
    use std::fmt::Write as _;
    let mut t = String::new();
    for i in 0..33 {
        let _ = write!(t, "[[service]]\nname = \"s{i}\"\nlisten = \"198.18.0.1:{}\"\nprotocol = \"tcp\"\npool = \"p\"\nforward = \"dsr\"\n", 100 + i);
    }
    t.push_str("[[pool]]\nname = \"p\"\n[xdp]\ninterface = \"eth0\"\n");
    let e = err(&t);
    assert!(
        e.starts_with("t.toml:194:8: more than 32 dsr/tunnel/nat services"),
        "{e}"
    );
    let mut t = String::from("[[service]]\nname = \"s\"\nlisten = \"198.18.0.1:80\"\nprotocol = \"tcp\"\npool = \"p\"\nforward = \"dsr\"\n[[pool]]\nname = \"p\"\nbackend = [\n");
    for i in 0..4097 {
        let _ = writeln!(t, "{{ address = \"198.18.{}.{}:80\" }},", i / 256, i % 256);
    }
    t.push_str("]\n[xdp]\ninterface = \"eth0\"\n");
    let e = err(&t);
    assert!(
        e.contains("have 4097 backends: the packet data plane holds at most 4096"),
        "{e}"
    );
}

#[test]
fn scheduler_options_are_parsed_with_their_ranges() {
    let pool = |sched: &str, extra: &str| {
        format!(
            "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nscheduler = \"{sched}\"\n{extra}\n[[pool.backend]]\naddress = \"127.0.0.1:9001\"\n"
        )
    };
    let c = parse(&pool(
        "predictive",
        "slow_start = \"30s\"\n[pool.scheduler_options]\nhalf_life = \"2s\"\nhorizon = \"500ms\"\n",
    ));
    let p = &c.pools[0];
    assert_eq!(p.scheduler.slow_start(), Some(Duration::from_secs(30)));
    let o = p.scheduler.sched_options();
    assert_eq!(o.half_life, Duration::from_secs(2));
    assert_eq!(o.horizon, Duration::from_millis(500));
    round_trip(&c);
    let c = parse(&pool(
        "least_request",
        "[pool.scheduler_options]\nactive_request_bias = 0.5\n",
    ));
    assert!((c.pools[0].scheduler.sched_options().active_request_bias - 0.5).abs() < 1e-12);
    round_trip(&c);

    // Zero, negative and out-of-range values are refused with the valid range.
    for (sched, extra, want) in [
        (
            "peak_ewma",
            "[pool.scheduler_options]\nhalf_life = \"0s\"\n",
            "half_life must be longer than 0",
        ),
        (
            "predictive",
            "[pool.scheduler_options]\nhorizon = \"0s\"\n",
            "horizon must be longer than 0",
        ),
        (
            "peak_ewma",
            "[pool.scheduler_options]\nhalf_life = \"2h\"\n",
            "valid: 1ms..=1h",
        ),
        (
            "wrr",
            "slow_start = \"0s\"\n",
            "slow_start must be longer than 0",
        ),
        (
            "least_request",
            "[pool.scheduler_options]\nactive_request_bias = -1.0\n",
            "valid: 0..=10",
        ),
        (
            "least_request",
            "[pool.scheduler_options]\nactive_request_bias = 11.0\n",
            "out of range",
        ),
        (
            "maglev",
            "slow_start = \"30s\"\n",
            "does not apply to the hashing scheduler",
        ),
        (
            "wrr",
            "[pool.scheduler_options]\nhalf_life = \"5s\"\n",
            "applies only to scheduler = peak_ewma or predictive",
        ),
        (
            "peak_ewma",
            "[pool.scheduler_options]\nhorizon = \"5s\"\n",
            "applies only to scheduler = predictive",
        ),
        (
            "peak_ewma",
            "[pool.scheduler_options]\nhalflife = \"5s\"\n",
            "half_life",
        ),
    ] {
        let e = err(&pool(sched, extra));
        assert!(e.contains(want), "{sched} {extra}: {e}");
    }
}
