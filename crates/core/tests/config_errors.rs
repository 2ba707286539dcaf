//! Every error kind points at the right line and column and says what is wrong (and, where
//! it helps, what would be valid). Table-driven: fixture text, expected `LINE:COL`, message
//! fragment, help fragment.

use fulcrum_core::config;

/// A valid service on lines 1-5 (protocol on line 4 is substituted).
fn svc(protocol: &str) -> String {
    format!(
        "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"{protocol}\"\npool = \"p\"\n"
    )
}

/// A valid pool `p`, appended after a case's own lines.
const POOL: &str = "\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:9001\"\n";

struct Case {
    name: &'static str,
    text: String,
    at: &'static str,
    message: &'static str,
    help: Option<&'static str>,
}

fn case(
    name: &'static str,
    text: String,
    at: &'static str,
    message: &'static str,
    help: Option<&'static str>,
) -> Case {
    Case {
        name,
        text,
        at,
        message,
        help,
    }
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    let tcp = svc("tcp");
    let http = svc("http");
    let udp = svc("udp");
    let dns = svc("dns");
    vec![
        // --- syntax and shape (toml/serde errors) ---
        case("syntax: unterminated string", "[[service]]\nname = \"s\n".into(), "2:10", "invalid basic string", None),
        case("duplicate key", format!("{tcp}pool = \"q\"{POOL}"), "6:1", "duplicate key `pool`", None),
        case("unknown top-level key", "bogus = 1\n".into(), "1:1", "unknown key `bogus`", Some("valid keys here: admin, service, pool, xdp")),
        case("unknown service key", format!("{tcp}colour = \"red\"\n{POOL}"), "6:1", "unknown key `colour`", Some("max_connections")),
        case("max_flows on tcp", format!("{tcp}max_flows = 5\n{POOL}"), "6:13", "max_flows applies only to udp services; `s` is tcp", Some("use max_connections to bound tcp and http services")),
        case("max_flows zero", format!("{udp}max_flows = 0\n{POOL}"), "6:13", "0 is out of range", Some("valid: 1..=1000000")),
        case("unknown pool.health key", format!("{tcp}{POOL}[pool.health]\nintervall = \"1s\"\n"), "12:1", "unknown key `intervall`", Some("interval")),
        case("missing key", "[[service]]\nname = \"s\"\n".into(), "1:1", "missing key `listen`", None),
        case("wrong type", format!("{tcp}{POOL}weight = \"3\"\n"), "11:10", "wrong type: string \"3\", expected an integer weight 0..=65535", None),
        // --- values ---
        case("unknown protocol", svc("sctp") + POOL, "4:12", "unknown protocol \"sctp\"", Some("valid: tcp, udp, http")),
        case("unknown scheduler", "[[pool]]\nname = \"p\"\nscheduler = \"fastest\"\n".into(), "3:13", "unknown scheduler \"fastest\"", Some("valid: rr, wrr, lc, wlc, sh, random, p2c, maglev, ring_hash")),
        case("unknown forward", format!("{tcp}forward = \"bounce\"\n{POOL}"), "6:11", "unknown forward mode \"bounce\"", Some("valid: proxy, dsr, tunnel, nat")),
        case("unknown hash_key", "[[pool]]\nname = \"p\"\nscheduler = \"sh\"\nhash_key = \"dst_ip\"\n".into(), "4:12", "unknown hash_key \"dst_ip\"", Some("header:NAME")),
        case("unknown check", format!("{tcp}{POOL}[pool.health]\ncheck = \"icmp\"\n"), "12:9", "unknown health check \"icmp\"", Some("valid: tcp, http, none")),
        case("duration without unit", format!("{tcp}idle_timeout = \"10\"\n{POOL}"), "6:16", "invalid duration \"10\"", Some("\"250ms\", \"10s\", \"5m\"")),
        case("duration as integer", format!("{tcp}idle_timeout = 10\n{POOL}"), "6:16", "expected a duration string with a unit", None),
        case("listen port 0", "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n".into(), "3:10", "port 0 is not allowed", Some("IP:PORT")),
        case("listen host name", "[[service]]\nname = \"s\"\nlisten = \"localhost:80\"\n".into(), "3:10", "invalid address \"localhost:80\"", Some("[::1]:8080")),
        case("ipv6 without brackets", "[admin]\nlisten = \"::1:9090\"\n".into(), "2:10", "invalid address \"::1:9090\"", None),
        case("backend port 0", format!("{tcp}\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:0\"\n"), "10:11", "port 0 is not allowed", None),
        case("weight out of range", format!("{tcp}{POOL}weight = 70000\n"), "11:10", "weight 70000 is out of range", Some("0..=65535")),
        case("negative weight", format!("{tcp}{POOL}weight = -1\n"), "11:10", "weight -1 is out of range", None),
        case("maglev size not prime", format!("{tcp}\n[[pool]]\nname = \"p\"\nscheduler = \"maglev\"\nmaglev_table_size = 65536\n"), "10:21", "maglev_table_size 65536 is not a prime", Some("the next prime is 65537")),
        case("rise 0", format!("{tcp}{POOL}[pool.health]\nrise = 0\n"), "12:8", "0 is out of range", Some("valid: 1..=")),
        case("bad status range", format!("{tcp}{POOL}[pool.health]\ncheck = \"http\"\nexpect_status = \"399-200\"\n"), "13:17", "invalid status range \"399-200\"", Some("200-399")),
        case("bad name", "[[pool]]\nname = \"my pool\"\n".into(), "2:8", "invalid name \"my pool\"", Some("A-Z")),
        // --- semantic checks ---
        case("duplicate service name", format!("{tcp}\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8081\"\nprotocol = \"tcp\"\npool = \"p\"\n{POOL}"), "8:8", "duplicate service name `s` (first defined at line 2)", None),
        case("duplicate pool name", format!("{tcp}{POOL}\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:9002\"\n"), "13:8", "duplicate pool name `p` (first defined at line 8)", None),
        case("listen conflict tcp/http", format!("{tcp}\n[[service]]\nname = \"t\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"p\"\n{POOL}"), "9:10", "service `t` listens on 127.0.0.1:8080 (tcp), which service `s` already uses", Some("a tcp and a udp service may share one")),
        case("listen conflict wildcard", format!("{udp}\n[[service]]\nname = \"t\"\nlisten = \"0.0.0.0:8080\"\nprotocol = \"udp\"\npool = \"p\"\n{POOL}"), "9:10", "(udp), which service `s` already uses", None),
        case("listen conflict with admin", format!("[admin]\nlisten = \"127.0.0.1:8080\"\n{http}{POOL}"), "5:10", "which the admin API already uses", None),
        case("service pool undefined", format!("{tcp}\n[[pool]]\nname = \"q\"\n[[pool.backend]]\naddress = \"127.0.0.1:9001\"\n"), "5:8", "service `s` refers to pool `p`, which is not defined", Some("defined pools: q")),
        case("service pool, no pools", tcp.clone(), "5:8", "refers to pool `p`, which is not defined", Some("no pools are defined")),
        case("route pool undefined", format!("{http}[[service.route]]\npath_prefix = \"/v1/\"\npool = \"api\"\n{POOL}"), "8:8", "a route of service `s` refers to pool `api`", Some("defined pools: p")),
        case("route on tcp service", format!("{tcp}[[service.route]]\npath_prefix = \"/v1/\"\npool = \"p\"\n{POOL}"), "6:1", "[[service.route]] applies only to http services; `s` is tcp", None),
        case("route matching everything", format!("{http}[[service.route]]\npool = \"p\"\n{POOL}"), "6:1", "neither host nor path_prefix", None),
        case("route path without slash", format!("{http}[[service.route]]\npath_prefix = \"v1\"\npool = \"p\"\n{POOL}"), "7:15", "does not start with '/'", None),
        case("tls on udp", format!("{udp}[service.tls]\ncerts = [ {{ cert = \"a.pem\", key = \"a.key\" }} ]\n{POOL}"), "6:1", "[service.tls] applies only to http services; `s` is udp", None),
        case("tls without certs", format!("{http}[service.tls]\ncerts = []\n{POOL}"), "7:9", "certs is empty", None),
        case("maglev_table_size without maglev", format!("{tcp}\n[[pool]]\nname = \"p\"\nmaglev_table_size = 251\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n"), "9:21", "maglev_table_size applies only to scheduler = \"maglev\"; pool `p` uses \"wrr\"", None),
        case("maglev table smaller than backends", format!("{tcp}\n[[pool]]\nname = \"p\"\nscheduler = \"maglev\"\nmaglev_table_size = 3\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n[[pool.backend]]\naddress = \"127.0.0.1:3\"\n[[pool.backend]]\naddress = \"127.0.0.1:4\"\n"), "10:21", "smaller than the number of backends (4)", Some("401")),
        case("hash_key without hashing", format!("{tcp}\n[[pool]]\nname = \"p\"\nscheduler = \"rr\"\nhash_key = \"src_ip\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n"), "10:12", "hash_key applies only to the hashing schedulers", Some("\"maglev\"")),
        case("header hash_key on tcp", format!("{tcp}\n[[pool]]\nname = \"p\"\nscheduler = \"maglev\"\nhash_key = \"header:X-User\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n"), "10:12", "hash_key \"header:X-User\" needs HTTP, but tcp service `s` uses pool `p`", Some("src_ip")),
        case("sticky_cookie on tcp", format!("{tcp}\n[[pool]]\nname = \"p\"\nsticky_cookie = \"SRV\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n"), "9:17", "sticky_cookie needs HTTP", None),
        case("proxy_protocol on udp", format!("{udp}proxy_protocol = \"v1\"\n{POOL}"), "6:18", "proxy_protocol applies only to tcp services; `s` is udp", None),
        case("proxy_protocol with dsr", format!("{tcp}forward = \"dsr\"\nproxy_protocol = \"v2\"\n{POOL}[xdp]\ninterface = \"eth0\"\n"), "7:18", "proxy_protocol needs forward = \"proxy\"", None),
        case("dsr without xdp", format!("{tcp}forward = \"dsr\"\n{POOL}"), "6:11", "forward = \"dsr\" needs the packet data plane, but there is no [xdp] table", Some("[xdp]")),
        case("nat on http", format!("{http}forward = \"nat\"\n{POOL}[xdp]\ninterface = \"eth0\"\n"), "6:11", "forward = \"nat\" works only for tcp and udp services", Some("forward = \"proxy\"")),
        case("tunnel without forward tunnel", format!("{tcp}tunnel = \"ipip\"\n{POOL}"), "6:10", "tunnel applies only to forward = \"tunnel\"; `s` uses \"proxy\"", None),
        case("second_chance with ipip", format!("{tcp}forward = \"tunnel\"\nsecond_chance = true\n{POOL}[xdp]\ninterface = \"eth0\"\n"), "7:17", "second_chance needs tunnel = \"gue\"", Some("set tunnel = \"gue\"")),
        case("second_chance with dsr", format!("{tcp}forward = \"dsr\"\nsecond_chance = false\n{POOL}[xdp]\ninterface = \"eth0\"\n"), "7:17", "second_chance applies only to forward = \"tunnel\"", None),
        case("source without tunnel/nat", format!("{tcp}source = \"198.18.0.2\"\n{POOL}"), "6:10", "source applies only to forward", None),
        // --- keys of one service kind on another (the typed config has no place for them) ---
        case("access_log on dns", format!("{dns}[service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n[service.access_log]\n{POOL}"), "9:1", "[service.access_log] applies only to http, tcp and udp services; `s` is dns", Some("remove [service.access_log]")),
        case("access_log with udp dsr", format!("{udp}forward = \"dsr\"\n[service.access_log]\n{POOL}[xdp]\ninterface = \"eth0\"\n"), "7:1", "[service.access_log] needs forward = \"proxy\"", Some("use forward = \"proxy\"")),
        case("rate_limit on tcp", format!("{tcp}[service.rate_limit]\nrequests_per_second = 5\n{POOL}"), "6:1", "[service.rate_limit] applies only to http services; `s` is tcp", Some("protocol = \"http\"")),
        case("http2 on udp", format!("{udp}[service.http2]\nmax_concurrent_streams = 5\n{POOL}"), "6:1", "[service.http2] applies only to http services; `s` is udp", None),
        case("rule on tcp", format!("{tcp}allow = [\"10.0.0.0/8\"]\n{POOL}"), "6:9", "a rule (docs/rules.md) applies only to http services; `s` is tcp", None),
        case("sni_route on http", format!("{http}[[service.sni_route]]\nsni = \"a.example\"\npool = \"p\"\n{POOL}"), "6:1", "[[service.sni_route]] applies only to tcp services with forward = \"proxy\"; `s` is http", Some("TLS passthrough")),
        case("sni_route with tcp dsr", format!("{tcp}forward = \"dsr\"\n[[service.sni_route]]\nsni = \"a.example\"\npool = \"p\"\n{POOL}[xdp]\ninterface = \"eth0\"\n"), "7:1", "`s` is tcp with forward = \"dsr\"", None),
        case("dns_zone on http", format!("{http}[service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n{POOL}"), "6:1", "[service.dns_zone] applies only to dns services; `s` is http", Some("protocol = \"dns\"")),
        case("timeouts with tcp dsr", format!("{tcp}forward = \"dsr\"\n[service.timeouts]\nconnect = \"1s\"\n{POOL}[xdp]\ninterface = \"eth0\"\n"), "7:1", "[service.timeouts] needs forward = \"proxy\"", None),
        case("slow_start with maglev", format!("{tcp}\n[[pool]]\nname = \"p\"\nscheduler = \"maglev\"\nslow_start = \"10s\"\n"), "10:14", "slow_start does not apply to the hashing scheduler \"maglev\"", Some("non-hashing scheduler")),
        case("horizon with peak_ewma", format!("{tcp}\n[[pool]]\nname = \"p\"\nscheduler = \"peak_ewma\"\n[pool.scheduler_options]\nhorizon = \"1s\"\n"), "11:11", "scheduler_options.horizon applies only to scheduler = predictive; pool `p` uses \"peak_ewma\"", Some("remove horizon")),
        case("timeout not below interval", format!("{tcp}{POOL}[pool.health]\ninterval = \"1s\"\ntimeout = \"1s\"\n"), "13:11", "health check timeout 1s must be shorter than the interval 1s", None),
        case("zero interval", format!("{tcp}{POOL}[pool.health]\ninterval = \"0s\"\n"), "12:12", "interval must be longer than 0", None),
        case("path with tcp check", format!("{tcp}{POOL}[pool.health]\npath = \"/x\"\n"), "12:8", "path applies only to check = \"http\"", None),
        case("duplicate backend", format!("{tcp}{POOL}[[pool.backend]]\naddress = \"127.0.0.1:9001\"\n"), "12:11", "backend 127.0.0.1:9001 is listed twice in pool `p` (first at line 10)", Some("weight")),
        case("duplicate backend, v4-mapped", format!("{tcp}{POOL}[[pool.backend]]\naddress = \"[::ffff:127.0.0.1]:9001\"\n"), "12:11", "listed twice", None),
        case("discovery without source", format!("{tcp}\n[[pool]]\nname = \"p\"\n[pool.discovery]\nnameserver = \"127.0.0.1:53\"\n"), "9:1", "[pool.discovery] names no source", Some("dns")),
        // --- http timeouts, retries, backend protocol ---
        case("http timeouts on tcp", format!("{tcp}[service.timeouts]\nconnect = \"1s\"\nresponse = \"1s\"\n{POOL}"), "8:12", "[service.timeouts] response applies only to http services; `s` is tcp", Some("only `connect`")),
        case("timeouts on udp", format!("{udp}[service.timeouts]\nconnect = \"1s\"\n{POOL}"), "6:1", "[service.timeouts] applies only to http and tcp services; `s` is udp", Some("does not connect")),
        case("zero connect timeout on tcp", format!("{tcp}[service.timeouts]\nconnect = \"0s\"\n{POOL}"), "7:11", "connect must be longer than 0", Some("connect = \"3s\"")),
        case("retry on udp", format!("{udp}[service.retry]\nattempts = 1\n{POOL}"), "6:1", "[service.retry] applies only to http services; `s` is udp", None),
        case("zero connect timeout", format!("{http}[service.timeouts]\nconnect = \"0s\"\n{POOL}"), "7:11", "connect must be longer than 0", Some("connect = \"3s\"")),
        case("zero response timeout", format!("{http}[service.timeouts]\nconnect = \"1s\"\nresponse = \"0ms\"\n{POOL}"), "8:12", "response must be longer than 0", Some("response = \"1m\"")),
        case("request_header without unit", format!("{http}[service.timeouts]\nrequest_header = \"10\"\n{POOL}"), "7:18", "invalid duration \"10\"", Some("\"250ms\"")),
        case("tls_handshake as integer", format!("{http}[service.timeouts]\ntls_handshake = 10\n{POOL}"), "7:17", "expected a duration string with a unit", None),
        case("unknown timeouts key", format!("{http}[service.timeouts]\nread = \"1s\"\n{POOL}"), "7:1", "unknown key `read`", Some("valid keys here: connect, response, request_header, tls_handshake")),
        case("retry attempts too many", format!("{http}[service.retry]\nattempts = 11\n{POOL}"), "7:12", "retry attempts 11 is out of range", Some("valid: 0..=10")),
        case("retry attempts negative", format!("{http}[service.retry]\nattempts = -1\n{POOL}"), "7:12", "retry attempts -1 is out of range", None),
        case("retry budget over 100", format!("{http}[service.retry]\nbudget = 101\n{POOL}"), "7:10", "percentage 101 is out of range", Some("valid: 0..=100")),
        case("retry budget as string", format!("{http}[service.retry]\nbudget = \"20%\"\n{POOL}"), "7:10", "expected an integer percentage 0..=100", None),
        case("unknown backend_protocol", format!("{http}\n[[pool]]\nname = \"p\"\nbackend_protocol = \"h3\"\n"), "9:20", "unknown backend protocol \"h3\"", Some("valid: http1, h2c, h2")),
        case("h2 backends without [pool.tls]", format!("{http}\n[[pool]]\nname = \"p\"\nbackend_protocol = \"h2\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n"), "9:20", "backend_protocol = \"h2\" is HTTP/2 over TLS, but pool `p` has no [pool.tls]", Some("h2c")),
        case("h2c backends for a tcp service", format!("{tcp}\n[[pool]]\nname = \"p\"\nbackend_protocol = \"h2c\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n"), "9:20", "backend_protocol = \"h2c\" needs HTTP, but tcp service `s` uses pool `p`", Some("http1")),
        case("xdp interface empty", "[xdp]\ninterface = \"\"\n".into(), "2:13", "invalid interface name", None),
        case("xdp.sync member not below members", "[xdp]\ninterface = \"eth0\"\n[xdp.sync]\nlisten = \"198.18.0.2:7070\"\npeers = [\"198.18.0.3:7070\"]\nmember = 3\nmembers = 3\n".into(), "6:10", "member = 3 is not below members = 3", Some("0 to 2")),
        case("xdp.sync members 0", "[xdp]\ninterface = \"eth0\"\n[xdp.sync]\nlisten = \"198.18.0.2:7070\"\npeers = []\nmember = 0\nmembers = 0\n".into(), "7:11", "members = 0 is out of range", Some("1 to 64")),
        case("xdp.sync peers holds listen", "[xdp]\ninterface = \"eth0\"\n[xdp.sync]\nlisten = \"198.18.0.2:7070\"\npeers = [\"198.18.0.2:7070\"]\nmember = 0\nmembers = 2\n".into(), "3:1", "own listen address", None),
        case("xdp.sync unknown key", "[xdp]\ninterface = \"eth0\"\n[xdp.sync]\nlisten = \"198.18.0.2:7070\"\npeers = []\nmember = 0\nmembers = 1\nsyncid = 1\n".into(), "8:1", "unknown key `syncid`", None),
    ]
}

#[test]
fn each_error_has_its_line_column_message_and_help() {
    let mut failures = Vec::new();
    for c in cases() {
        let Err(err) = config::parse(&c.text) else {
            failures.push(format!("{}: parsed, expected an error at {}", c.name, c.at));
            continue;
        };
        let rendered = err.render("t.toml", &c.text);
        let at = err.line_col(&c.text).map(|(l, col)| format!("{l}:{col}"));
        let ok = at.as_deref() == Some(c.at)
            && rendered.starts_with(&format!("t.toml:{}: ", c.at))
            && err.message.contains(c.message)
            && c.help
                .is_none_or(|h| err.help.as_deref().is_some_and(|got| got.contains(h)));
        if !ok {
            failures.push(format!(
                "{}: expected {} {:?} (help {:?}), got:\n{rendered}",
                c.name, c.at, c.message, c.help
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn render_format_is_file_line_col_message_then_help() {
    let text = "[[pool]]\nname = \"p\"\nscheduler = \"fastest\"\n";
    let err = config::parse(text).expect_err("bad scheduler");
    assert_eq!(
        err.render("/etc/fulcrum.toml", text),
        "/etc/fulcrum.toml:3:13: unknown scheduler \"fastest\"\n  help: valid: rr, wrr, lc, wlc, sh, random, p2c, maglev, ring_hash, least_request, peak_ewma, predictive"
    );
}

#[test]
fn parse_returns_the_first_of_several_errors_and_parse_all_returns_all() {
    let text = format!("{}forward = \"dsr\"\n\n[[pool]]\nname = \"p\"\nscheduler = \"rr\"\nhash_key = \"src_ip\"\n", svc("tcp"));
    let all = config::parse_all(&text).expect_err("two errors");
    let at: Vec<_> = all.iter().filter_map(|e| e.line_col(&text)).collect();
    // dsr without xdp (6:11), hash_key with rr (11:12): sorted by position. (An empty pool
    // is allowed: its services refuse clients until a backend is added.)
    assert_eq!(at, vec![(6, 11), (11, 12)]);
    let first = config::parse(&text).expect_err("errors");
    assert_eq!(first.line_col(&text), Some((6, 11)));
}
