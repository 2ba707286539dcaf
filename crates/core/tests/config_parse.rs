//! The contract's example and a fixture using every key parse into the expected `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fulcrum_core::config::{
    self, AccessLogFormat, BackendProtocol, CheckKind, Forwarding, HealthCheck, HostMatch,
    HttpTimeouts, LogTarget, RetryPolicy, ServiceConfig, StatusRange, TunnelKind, XdpMode,
};
use fulcrum_core::model::{
    defaults, ForwardMode, HashKey, ProxyProtocol, SchedulerKind, ServiceProtocol,
};

const CONTRACT: &str = include_str!("fixtures/contract_example.toml");
const FULL: &str = include_str!("fixtures/full.toml");

/// The contract's example routes to a pool `api` it does not define; this completes it.
const API_POOL: &str = "
[[pool]]
name = \"api\"
scheduler = \"rr\"
[[pool.backend]]
address = \"127.0.0.1:9101\"
";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn contract_example_parses_once_its_api_pool_exists() {
    let text = format!("{CONTRACT}{API_POOL}");
    let cfg = match config::parse(&text) {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render("contract", &text)),
    };
    assert_eq!(
        cfg.admin.as_ref().map(|a| a.listen),
        Some(addr("127.0.0.1:9090"))
    );
    assert_eq!(cfg.services.len(), 1);
    let web = cfg.service("web").expect("service web");
    assert_eq!(web.listen, addr("127.0.0.1:8080"));
    assert_eq!(web.protocol(), ServiceProtocol::Http);
    assert_eq!(
        web.forward(),
        Forwarding::Proxy {
            proxy_protocol: None
        }
    );
    assert_eq!(web.max_connections, defaults::MAX_CONNECTIONS);
    assert_eq!(web.idle_timeout, Duration::from_secs(300));
    assert_eq!(web.drain_timeout, Duration::from_secs(30));
    assert_eq!(web.routes().len(), 1);
    assert_eq!(
        web.routes()[0].host,
        Some(HostMatch::Exact("api.example.com".into()))
    );
    assert_eq!(web.routes()[0].path_prefix.as_deref(), Some("/v1/"));
    assert_eq!(web.routes()[0].pool, "api");
    assert!(web.routes()[0].matches("API.example.com", "/v1/users"));
    assert!(!web.routes()[0].matches("api.example.com", "/v2/users"));

    let pool = cfg.pool("web").expect("pool web");
    assert_eq!(pool.scheduler.kind(), SchedulerKind::WeightedRoundRobin);
    assert_eq!(pool.scheduler.hash_key(), None);
    assert_eq!(pool.scheduler.maglev_table_size(), None);
    let health = pool.health.as_ref().expect("health");
    assert_eq!(
        health.check,
        HealthCheck::Http {
            path: "/healthz".into(),
            expect_status: StatusRange::DEFAULT
        }
    );
    assert_eq!(
        (health.interval, health.timeout),
        (Duration::from_secs(1), Duration::from_millis(500))
    );
    assert_eq!((health.rise.get(), health.fall.get()), (2, 3));
    assert_eq!(pool.outlier.consecutive_failures.get(), 3);
    assert_eq!(pool.outlier.ejection, Duration::from_secs(10));
    assert_eq!(pool.backends.len(), 1);
    assert_eq!(pool.backends[0].address, addr("127.0.0.1:9001"));
    assert_eq!(pool.backends[0].weight.get(), 1);
    assert!(cfg.xdp.is_none());
}

#[test]
fn contract_example_verbatim_only_misses_pool_api() {
    let err = config::parse(CONTRACT).expect_err("pool api is not defined");
    let rendered = err.render("f.toml", CONTRACT);
    assert!(
        rendered.contains("refers to pool `api`, which is not defined"),
        "{rendered}"
    );
    assert!(rendered.contains("help: defined pools: web"), "{rendered}");
    // The route's `pool = "api"` line.
    let line = CONTRACT
        .lines()
        .position(|l| l.starts_with("pool = \"api\""))
        .expect("line")
        + 1;
    assert_eq!(err.line_col(CONTRACT), Some((line, 8)));
}

#[test]
#[allow(clippy::too_many_lines)]
fn every_key_parses() {
    let cfg = match config::parse(FULL) {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render("full.toml", FULL)),
    };
    let admin = cfg.admin.as_ref().expect("admin");
    assert_eq!(
        admin.token_file,
        Some(PathBuf::from("/etc/fulcrum/admin.token"))
    );

    let web = cfg.service("web").expect("web");
    assert_eq!(
        (
            web.max_connections.get(),
            web.idle_timeout,
            web.drain_timeout
        ),
        (5000, Duration::from_secs(120), Duration::from_secs(15))
    );
    assert_eq!(
        web.routes()[1].host,
        Some(HostMatch::Suffix(".static.example.com".into()))
    );
    assert!(web.routes()[1].matches("a.static.example.com", "/"));
    assert!(!web.routes()[1].matches("static.example.com", "/"));
    let tls = web.tls().expect("tls");
    let http = web.http().expect("http");
    assert_eq!(tls.certs.len(), 2);
    assert_eq!(tls.certs[0].cert, PathBuf::from("site.pem"));
    assert_eq!(
        http.rate_limit
            .map(|r| (r.requests_per_second.get(), r.burst.get())),
        Some((100, 200))
    );
    assert_eq!(
        http.timeouts,
        Some(HttpTimeouts {
            connect: Duration::from_millis(500),
            response: Duration::from_secs(30),
            request_header: Duration::from_secs(5),
            tls_handshake: Duration::from_secs(3),
        })
    );
    assert_eq!(http.retry, Some(RetryPolicy::new(0, 50).expect("in range")));
    assert_eq!(
        http.http2.map(|h| [
            h.max_concurrent_streams.get(),
            h.max_header_list_size.get(),
            h.max_resets_per_second.get(),
            h.max_control_frames_per_second.get(),
        ]),
        Some([128, 65536, 200, 100])
    );
    let log = web.access_log().expect("access log");
    assert_eq!(
        (log.format, &log.target),
        (AccessLogFormat::Json, &LogTarget::Stderr)
    );

    let db = cfg.service("db").expect("db");
    assert_eq!(
        db.forward(),
        Forwarding::Proxy {
            proxy_protocol: Some(ProxyProtocol::V2)
        }
    );
    let dns = cfg.service("dns").expect("dns");
    assert_eq!(
        (dns.protocol(), dns.forward().mode()),
        (ServiceProtocol::Udp, ForwardMode::Dsr)
    );
    assert_eq!(dns.listen, db.listen, "tcp and udp may share an address");
    let tun = cfg.service("tunneled").expect("tunneled");
    assert_eq!(
        tun.forward(),
        Forwarding::Tunnel {
            encap: TunnelKind::Gue,
            source: Some("198.18.0.2".parse().expect("ip")),
            second_chance: true,
        }
    );
    assert_eq!(tun.listen, addr("[::1]:7000"));
    assert_eq!(
        cfg.service("natted").map(ServiceConfig::forward),
        Some(Forwarding::Nat { source: None })
    );

    let p = cfg.pool("web").expect("pool web");
    assert_eq!(p.scheduler.kind(), SchedulerKind::RingHash);
    assert_eq!(
        p.scheduler.hash_key(),
        Some(&HashKey::Cookie("session".into()))
    );
    assert_eq!(p.sticky_cookie.as_deref(), Some("FULCRUM_SRV"));
    let h = p.health.as_ref().expect("health");
    assert_eq!(
        h.check,
        HealthCheck::Http {
            path: "/status".into(),
            expect_status: StatusRange {
                low: 200,
                high: 299
            }
        }
    );
    assert_eq!(
        (h.interval, h.timeout, h.rise.get(), h.fall.get()),
        (Duration::from_secs(2), Duration::from_millis(250), 1, 5)
    );
    assert_eq!(
        (p.outlier.consecutive_failures.get(), p.outlier.ejection),
        (5, Duration::from_secs(30))
    );
    assert_eq!(p.backends[1].address, addr("[::1]:9002"));
    assert_eq!(
        (p.backends[0].weight.get(), p.backends[1].weight.get()),
        (3, 0)
    );

    let api = cfg.pool("api").expect("api");
    assert_eq!(api.scheduler.kind(), SchedulerKind::PowerOfTwo);
    assert_eq!(api.backend_protocol, BackendProtocol::H2c);
    assert_eq!(p.backend_protocol, BackendProtocol::Http1, "the default");
    assert!(api.health.is_none(), "no [pool.health]: no active checks");

    let st = cfg.pool("static").expect("static");
    assert!(st.backends.is_empty());
    let disc = st.discovery.as_ref().expect("discovery");
    assert_eq!(
        disc.dns.as_ref().map(ToString::to_string).as_deref(),
        Some("static.internal:8080")
    );
    assert_eq!(disc.nameserver, Some(addr("127.0.0.1:5353")));

    let dbp = cfg.pool("db").expect("db pool");
    assert_eq!(dbp.persistence, Some(Duration::from_secs(300)));
    assert_eq!(
        dbp.health.as_ref().map(|h| h.check.clone()),
        Some(HealthCheck::Tcp)
    );

    let mp = cfg.pool("dns").expect("dns pool");
    assert_eq!(mp.scheduler.kind(), SchedulerKind::Maglev);
    assert_eq!(mp.scheduler.hash_key(), Some(&HashKey::FiveTuple));
    assert_eq!(
        mp.scheduler
            .maglev_table_size()
            .map(fulcrum_core::model::PrimeTableSize::get),
        Some(251)
    );
    assert_eq!(mp.backends[1].weight.get(), 65535);

    let xdp = cfg.xdp.as_ref().expect("xdp");
    assert_eq!((xdp.interface.as_str(), xdp.mode), ("lo", XdpMode::Generic));
    let _ = CheckKind::None;
}

#[test]
fn xdp_sync_parses_and_is_written_back() {
    let text = "[xdp]\ninterface = \"eth0\"\n[xdp.sync]\nlisten = \"198.18.0.2:7070\"\npeers = [\"198.18.0.3:7070\", \"198.18.0.4:7070\"]\nmember = 0\nmembers = 3\n";
    let cfg = fulcrum_core::config::parse(text).expect("parses");
    let sync = cfg.xdp.as_ref().and_then(|x| x.sync.clone()).expect("sync");
    assert_eq!(sync.listen, "198.18.0.2:7070".parse().expect("addr"));
    assert_eq!(sync.peers.len(), 2);
    assert_eq!((sync.member, sync.members.get()), (0, 3));
    let again = fulcrum_core::config::parse(&cfg.to_toml()).expect("written back parses");
    assert_eq!(again.xdp, cfg.xdp);
}

#[test]
fn defaults_apply_when_keys_are_absent() {
    let text = "
[[service]]
name = \"s\"
listen = \"127.0.0.1:1\"
protocol = \"tcp\"
pool = \"p\"

[[pool]]
name = \"p\"
scheduler = \"maglev\"
[pool.health]
[[pool.backend]]
address = \"127.0.0.1:2\"
";
    let cfg = config::parse(text).expect("valid");
    assert!(cfg.admin.is_none());
    let p = &cfg.pools[0];
    assert_eq!(p.scheduler.hash_key(), Some(&HashKey::SrcIp));
    assert_eq!(
        p.scheduler
            .maglev_table_size()
            .map(fulcrum_core::model::PrimeTableSize::get),
        Some(defaults::MAGLEV_TABLE_SIZE)
    );
    assert_eq!(
        p.health.as_ref().map(|h| h.check.clone()),
        Some(HealthCheck::Tcp)
    );
    assert_eq!(p.persistence, None);

    let none = text.replace("[pool.health]", "[pool.health]\ncheck = \"none\"");
    assert!(config::parse(&none).expect("valid").pools[0]
        .health
        .is_none());
}

/// `second_chance` is on by default for `tunnel = "gue"`, off for ipip (no room in the
/// header), and `second_chance = false` turns it off.
#[test]
fn second_chance_defaults_on_for_gue_and_can_be_turned_off() {
    let cfg = |extra: &str| {
        let text = format!(
            "[[service]]\nname = \"t\"\nlisten = \"198.19.0.10:80\"\nprotocol = \"tcp\"\npool = \"p\"\nforward = \"tunnel\"\n{extra}\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"198.18.0.11:80\"\n[xdp]\ninterface = \"eth0\"\n"
        );
        config::parse(&text)
            .expect("config")
            .service("t")
            .expect("t")
            .forward()
    };
    let sc = |f: Forwarding| match f {
        Forwarding::Tunnel { second_chance, .. } => second_chance,
        other => panic!("{other:?}"),
    };
    assert!(sc(cfg("tunnel = \"gue\"")));
    assert!(sc(cfg("tunnel = \"gue\"\nsecond_chance = true")));
    assert!(!sc(cfg("tunnel = \"gue\"\nsecond_chance = false")));
    assert!(!sc(cfg("tunnel = \"ipip\"")));
    assert!(!sc(cfg("second_chance = false")));
}

#[test]
fn empty_file_is_an_empty_config() {
    let cfg = config::parse("").expect("valid");
    assert!(cfg.services.is_empty() && cfg.pools.is_empty());
}

#[test]
fn summary_lists_services_pools_and_backends() {
    let cfg = config::parse(FULL).expect("valid");
    let s = cfg.summary();
    for needle in [
        "5 services, 5 pools, 6 static backends",
        "admin: 127.0.0.1:9090",
        "xdp: lo (generic)",
        "web",
        "127.0.0.1:8443",
        "http+tls",
        "proxy+pp-v2",
        "tunnel/gue",
        "web: route host api.example.com path /v1/ -> api",
        "web: ring_hash by cookie:session",
        "dns: maglev by five_tuple, table 251",
        "api: p2c, backends speak h2c",
        "127.0.0.1:9001  weight 3",
        "[::1]:9002  weight 0 (drained)",
        "health http /status expect 200-299 every 2s",
        "discovery: dns static.internal:8080, via 127.0.0.1:5353",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in:\n{s}");
    }
    assert!(s.lines().count() < 40, "one screen:\n{s}");
}

#[test]
fn admin_listen_defaults_to_loopback() {
    let text = "[admin]\ntoken_file = \"/etc/fulcrum/admin.token\"\n";
    let cfg = config::parse(text).expect("admin without listen");
    let admin = cfg.admin.expect("admin table");
    assert_eq!(admin.listen, addr("127.0.0.1:9090"));
    assert!(admin.listen.ip().is_loopback());
    // A service on the default admin address is a clash, located at the [admin] table.
    let clash = format!(
        "{text}[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:9090\"\nprotocol = \"tcp\"\npool = \"p\"\n[[pool]]\nname = \"p\"\n"
    );
    let err = config::parse(&clash).expect_err("clash with the admin API");
    assert!(err.message.contains("admin API"), "{}", err.message);
}

#[test]
fn http_timeouts_and_retry_take_defaults_for_absent_keys() {
    let svc =
        "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"http\"\npool = \"p\"\n";
    let pool = "\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";
    // Absent tables: `None` (the proxy uses the defaults).
    let cfg = config::parse(&format!("{svc}{pool}")).expect("valid");
    assert_eq!(
        cfg.services[0].http().map(|h| (h.timeouts, h.retry)),
        Some((None, None))
    );
    assert_eq!(
        HttpTimeouts::default(),
        HttpTimeouts {
            connect: Duration::from_secs(3),
            response: Duration::from_secs(60),
            request_header: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(10),
        }
    );
    assert_eq!(
        RetryPolicy::default(),
        RetryPolicy::new(2, 20).expect("in range")
    );
    // Partial tables: the keys given, defaults for the rest; the bounds are accepted.
    let text = format!(
        "{svc}[service.timeouts]\nresponse = \"300ms\"\n[service.retry]\nattempts = 10\n{pool}"
    );
    let cfg = config::parse(&text).expect("valid");
    let s = cfg.services[0].http().expect("http");
    assert_eq!(
        s.timeouts,
        Some(HttpTimeouts {
            response: Duration::from_millis(300),
            ..HttpTimeouts::default()
        })
    );
    assert_eq!(
        s.retry,
        Some(RetryPolicy::new(10, RetryPolicy::default().budget_percent()).expect("in range"))
    );
    let text = format!("{svc}[service.retry]\nattempts = 0\nbudget = 0\n{pool}");
    let cfg = config::parse(&text).expect("valid");
    let s = cfg.services[0].http().expect("http");
    assert_eq!(s.retry, Some(RetryPolicy::new(0, 0).expect("in range")));
    let text = format!("{svc}[service.retry]\nbudget = 100\n[service.timeouts]\n{pool}");
    let cfg = config::parse(&text).expect("valid");
    let s = cfg.services[0].http().expect("http");
    assert_eq!(s.retry.map(RetryPolicy::budget_percent), Some(100));
    assert_eq!(s.timeouts, Some(HttpTimeouts::default()), "an empty table");
}

/// A tcp service takes `[service.timeouts] connect` (default 3s, as before the key) and
/// writes it back alone.
#[test]
fn tcp_connect_timeout() {
    let svc =
        "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\npool = \"p\"\n";
    let pool = "\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";
    let cfg = config::parse(&format!("{svc}{pool}")).expect("valid");
    assert_eq!(cfg.services[0].connect_timeout(), None);
    assert_eq!(
        fulcrum_core::model::defaults::CONNECT_TIMEOUT,
        Duration::from_secs(3)
    );
    let cfg = config::parse(&format!(
        "{svc}[service.timeouts]\nconnect = \"250ms\"\n{pool}"
    ))
    .expect("valid");
    assert_eq!(
        cfg.services[0].connect_timeout(),
        Some(Duration::from_millis(250))
    );
    let text = cfg.to_toml();
    assert!(
        text.contains("[service.timeouts]\nconnect = \"250ms\"\n"),
        "{text}"
    );
    assert!(!text.contains("response"), "{text}");
    assert_eq!(config::parse(&text).expect("round trip"), cfg);
    // Not for a tcp service of the packet data plane, which makes no connections.
    let xdp = format!(
        "[xdp]\ninterface = \"lo\"\n{svc}forward = \"dsr\"\n[service.timeouts]\nconnect = \"1s\"\n{pool}"
    );
    let err = config::parse(&xdp).expect_err("dsr with timeouts");
    assert!(
        err.message.contains("needs forward = \"proxy\""),
        "{}",
        err.message
    );
}

/// `[pool.discovery] etcd`: the prefix gets its trailing `/`; a bad one is refused with
/// what would be valid.
#[test]
fn discovery_etcd_prefix() {
    let base = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:80\"\nprotocol = \"tcp\"\npool = \"web\"\n[[pool]]\nname = \"web\"\n[pool.discovery]\n";
    for (given, want) in [
        ("/services/web/", "/services/web/"),
        ("/services/web", "/services/web/"),
    ] {
        let cfg = fulcrum_core::config::parse(&format!("{base}etcd = \"{given}\"\n")).unwrap();
        let d = cfg.pool("web").unwrap().discovery.clone().unwrap();
        assert_eq!(d.etcd.map(|p| p.0).as_deref(), Some(want));
    }
    for bad in ["services/web/", "/services//web/", "/", "/a b/"] {
        let errs = fulcrum_core::config::parse(&format!("{base}etcd = \"{bad}\"\n")).unwrap_err();
        let text = format!("{errs:?}");
        assert!(text.contains("invalid etcd prefix"), "{bad}: {text}");
    }
}
