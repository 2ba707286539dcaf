//! `protocol = "dns"` services through real clients: dig (bind9-dnsutils), kdig
//! (knot-dnsutils) and unbound as a recursive resolver in front, against the real `fulcrum`
//! binary on 127.0.0.0/8. Raw packets from this test only for what no client sends (bad
//! input, a flood).
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::peers::{need, Peer as Killed};
use common::{admin_toml, free_addr, free_port, temp_dir, Fulcrum};

/// Runs a client (dig, kdig) with a time limit; its stdout.
fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dig(server: SocketAddr, args: &[&str]) -> String {
    let at = format!("@{}", server.ip());
    let port = server.port().to_string();
    let mut all = vec![at.as_str(), "-p", port.as_str(), "+time=2", "+tries=1"];
    all.extend_from_slice(args);
    run("dig", &all)
}

/// The addresses of the answer section (`dig +short` style lines that parse as IPs).
fn answer_ips(text: &str) -> Vec<IpAddr> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn status(text: &str) -> String {
    text.split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("")
        .to_owned()
}

fn flags(text: &str) -> String {
    text.split(";; flags: ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or("")
        .to_owned()
}

/// (name, type, ttl, data) of each record line of a dig answer.
fn records(text: &str, section: &str) -> Vec<(String, String, u32, String)> {
    let Some(start) = text.find(&format!(";; {section} SECTION:")) else {
        return Vec::new();
    };
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(3)?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(4..)?.join(" "),
            ))
        })
        .collect()
}

/// A dns service on a fresh address answering `www.example.test` from pool `web`.
struct Setup {
    f: Fulcrum,
    dns: SocketAddr,
}

fn backends(ips: &[(String, u32)]) -> String {
    let mut s = String::new();
    for (ip, w) in ips {
        let _ = write!(
            s,
            "[[pool.backend]]\naddress = \"{ip}:80\"\nweight = {w}\n\n"
        );
    }
    s
}

/// A `[[pool]]` named `name` with `scheduler` over `ips` (port 80), without health checks
/// (the addresses need not answer: only the dns answers are tested).
fn unchecked_pool(name: &str, scheduler: &str, ips: &[(String, u32)]) -> String {
    format!(
        "[[pool]]\nname = \"{name}\"\nscheduler = \"{scheduler}\"\n[pool.health]\ncheck = \"none\"\n{}",
        backends(ips)
    )
}

async fn setup(name: &str, names: &str, extra: &str, pools: &str) -> Setup {
    let admin = free_addr();
    let dns = free_addr();
    let cfg = format!(
        "{}[[service]]\nname = \"dns\"\nlisten = \"{dns}\"\nprotocol = \"dns\"\npool = \"web\"\n{names}\n\
         [service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\", \"ns2.example.test\"]\n{extra}\n{pools}",
        admin_toml(admin)
    );
    let f = Fulcrum::start(name, admin, &cfg, &[]).await;
    Setup { f, dns }
}

fn www(max: u32, ttl: &str) -> String {
    format!("[[service.dns_name]]\nname = \"www.example.test\"\npool = \"web\"\nttl = \"{ttl}\"\nmax_answers = {max}\n")
}

const NO_RRL: &str = "[service.dns_rrl]\nresponses_per_second = 1000000\n";

fn ips(prefix: &str, n: usize) -> Vec<(String, u32)> {
    (1..=n).map(|i| (format!("{prefix}{i}"), 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_soa_ns_nxdomain_nodata_refused_over_udp_and_tcp() {
    if !need("dns answers", "dig", "bind9-dnsutils")
        || !need("dns answers", "kdig", "knot-dnsutils")
    {
        return;
    }
    let mut pool = ips("127.0.1.", 4);
    pool.push(("[::1]".into(), 1));
    let names = format!(
        "{}[[service.dns_name]]\nname = \"a.deep.example.test\"\nttl = \"10s\"\n",
        www(2, "30s")
    );
    let s = setup(
        "dns-answers",
        &names,
        NO_RRL,
        &unchecked_pool("web", "rr", &pool),
    )
    .await;

    // A: 2 of the 4 IPv4 backends, authoritative, TTL as configured; rr rotates.
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let out = dig(s.dns, &["www.example.test", "A"]);
        assert_eq!(status(&out), "NOERROR", "{out}");
        assert!(flags(&out).contains("aa"), "{out}");
        assert!(!flags(&out).contains("ra"), "not a resolver: {out}");
        let a = records(&out, "ANSWER");
        assert_eq!(a.len(), 2, "{out}");
        assert!(a.iter().all(|r| r.1 == "A" && r.2 == 30), "{out}");
        seen.extend(a.into_iter().map(|r| r.3));
    }
    assert_eq!(
        seen.len(),
        4,
        "rr shows every backend over 4 answers: {seen:?}"
    );

    // AAAA: the IPv6 backend only.
    let out = dig(s.dns, &["www.example.test", "AAAA", "+short"]);
    assert_eq!(
        answer_ips(&out),
        vec!["::1".parse::<IpAddr>().unwrap()],
        "{out}"
    );

    // The same answer over TCP, and through kdig.
    let out = dig(s.dns, &["+tcp", "www.example.test", "A"]);
    assert_eq!(records(&out, "ANSWER").len(), 2, "{out}");
    let port = s.dns.port().to_string();
    let out = run(
        "kdig",
        &[
            "@127.0.0.1",
            "-p",
            &port,
            "+time=2",
            "+retry=0",
            "www.example.test",
            "A",
        ],
    );
    assert!(out.contains("status: NOERROR"), "{out}");
    assert_eq!(records(&out, "ANSWER").len(), 2, "kdig: {out}");
    let out = run(
        "kdig",
        &[
            "@127.0.0.1",
            "-p",
            &port,
            "+tcp",
            "+time=2",
            "+retry=0",
            "www.example.test",
            "A",
        ],
    );
    assert_eq!(records(&out, "ANSWER").len(), 2, "kdig +tcp: {out}");

    // SOA and NS at the apex.
    let out = dig(s.dns, &["example.test", "SOA"]);
    let soa = records(&out, "ANSWER");
    assert_eq!(soa.len(), 1, "{out}");
    assert!(
        soa[0]
            .3
            .starts_with("ns1.example.test. hostmaster.example.test."),
        "{out}"
    );
    let out = dig(s.dns, &["example.test", "NS", "+short"]);
    let ns: BTreeSet<&str> = out.lines().collect();
    assert_eq!(
        ns,
        BTreeSet::from(["ns1.example.test.", "ns2.example.test."]),
        "{out}"
    );

    // NXDOMAIN with the SOA (negative TTL: the shortest name TTL, 10s).
    let out = dig(s.dns, &["nope.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(flags(&out).contains("aa"), "{out}");
    let auth = records(&out, "AUTHORITY");
    assert_eq!(
        (auth.len(), auth[0].1.as_str(), auth[0].2),
        (1, "SOA", 10),
        "{out}"
    );
    // Below an answered name: NXDOMAIN too.
    assert_eq!(
        status(&dig(s.dns, &["x.www.example.test", "A"])),
        "NXDOMAIN"
    );

    // NODATA: the name exists, the type does not; an empty non-terminal exists.
    for (q, t) in [
        ("www.example.test", "TXT"),
        ("www.example.test", "MX"),
        ("deep.example.test", "A"),
        ("example.test", "A"),
    ] {
        let out = dig(s.dns, &[q, t]);
        assert_eq!(status(&out), "NOERROR", "{q} {t}: {out}");
        assert!(records(&out, "ANSWER").is_empty(), "{q} {t}: {out}");
        assert_eq!(
            records(&out, "AUTHORITY").first().map(|r| r.1.clone()),
            Some("SOA".into()),
            "{out}"
        );
    }
    // The name whose pool is the service's default.
    assert_eq!(
        answer_ips(&dig(s.dns, &["a.deep.example.test", "+short"])).len(),
        4
    );

    // Not an open resolver: other zones are refused, without AA.
    for q in ["example.com", "test", "xexample.test", "."] {
        let out = dig(s.dns, &[q, "A"]);
        assert_eq!(status(&out), "REFUSED", "{q}: {out}");
        assert!(!flags(&out).contains("aa"), "{out}");
    }
    // Class CH (version.bind and friends): refused.
    assert_eq!(
        status(&dig(s.dns, &["-c", "CH", "version.bind", "TXT"])),
        "REFUSED"
    );

    // ANY: a small answer (RFC 8482), never the whole zone.
    let out = dig(s.dns, &["www.example.test", "ANY"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    let any = records(&out, "ANSWER");
    assert!(!any.is_empty() && any.len() <= 2, "{out}");
    // Opcode other than QUERY: NOTIMP. EDNS version 1: BADVERS.
    let out = dig(s.dns, &["+opcode=notify", "www.example.test"]);
    assert_eq!(status(&out), "NOTIMP", "{out}");
    let out = dig(s.dns, &["+edns=1", "+noednsneg", "www.example.test"]);
    assert_eq!(status(&out), "BADVERS", "{out}");
    s.f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_set_tc_and_dig_retries_over_tcp() {
    if !need("dns tc", "dig", "bind9-dnsutils") {
        return;
    }
    let s = setup(
        "dns-tc",
        &www(64, "30s"),
        NO_RRL,
        &unchecked_pool("web", "random", &ips("127.0.2.", 60)),
    )
    .await;
    // No EDNS: 512 bytes at most, 60 A records do not fit: TC, no records.
    let out = dig(s.dns, &["+noedns", "+ignore", "www.example.test"]);
    assert!(flags(&out).contains("tc"), "{out}");
    assert!(records(&out, "ANSWER").is_empty(), "{out}");
    // dig retries a truncated answer over TCP: all 60.
    let out = dig(s.dns, &["+noedns", "www.example.test"]);
    assert!(!flags(&out).contains("tc"), "{out}");
    assert_eq!(records(&out, "ANSWER").len(), 60, "{out}");
    // EDNS with 1232 bytes: they fit over UDP.
    let out = dig(s.dns, &["+bufsize=1232", "+ignore", "www.example.test"]);
    assert!(!flags(&out).contains("tc"), "{out}");
    assert_eq!(records(&out, "ANSWER").len(), 60, "{out}");
    assert!(
        out.contains("udp: 1232"),
        "advertises its payload size: {out}"
    );
    // A client asking for 4096 gets at most 1232 (and a 600-byte client gets TC).
    let out = dig(s.dns, &["+bufsize=600", "+ignore", "www.example.test"]);
    assert!(flags(&out).contains("tc"), "{out}");
    s.f.assert_no_panic();
}

/// `dig -f`: one process, many queries; the first address of each answer.
fn batch(server: SocketAddr, lines: &[String]) -> Vec<Vec<IpAddr>> {
    let dir = temp_dir("dns-batch");
    let file = dir.join("queries");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = dig(
        server,
        &[
            "-f",
            file.to_str().unwrap(),
            "+noall",
            "+answer",
            "+nottlid",
            "+noclass",
        ],
    );
    // Answers of one query are consecutive; dig prints no separator with +noall, so group
    // by the query name each line starts with.
    let mut groups: Vec<Vec<IpAddr>> = Vec::new();
    let mut last = String::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(name), Some(ip)) = (f.first(), f.last().and_then(|x| x.parse().ok())) else {
            continue;
        };
        if *name != last || groups.is_empty() {
            groups.push(Vec::new());
        }
        (*name).clone_into(&mut last);
        groups.last_mut().unwrap().push(ip);
    }
    groups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_over_1000_queries_follow_weights() {
    if !need("dns weights", "dig", "bind9-dnsutils") {
        return;
    }
    let weights = [1u32, 2, 3, 4];
    for sched in ["wrr", "random"] {
        let pool: Vec<(String, u32)> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("127.0.3.{}", i + 1), *w))
            .collect();
        let s = setup(
            &format!("dns-w-{sched}"),
            // Distinct names so each query's answer is its own group in dig's output.
            "[[service.dns_name]]\nname = \"n0.example.test\"\nmax_answers = 1\n\
             [[service.dns_name]]\nname = \"n1.example.test\"\nmax_answers = 1\n",
            NO_RRL,
            &unchecked_pool("web", sched, &pool),
        )
        .await;
        let lines: Vec<String> = (0..1000)
            .map(|i| format!("n{}.example.test A", i % 2))
            .collect();
        let got = batch(s.dns, &lines);
        assert_eq!(got.len(), 1000, "{sched}: every query answered");
        let mut count: HashMap<IpAddr, usize> = HashMap::new();
        for g in &got {
            assert_eq!(g.len(), 1, "{sched}: max_answers = 1");
            *count.entry(g[0]).or_default() += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let ip: IpAddr = format!("127.0.3.{}", i + 1).parse().unwrap();
            let share = *count.get(&ip).unwrap_or(&0) as f64 / 1000.0;
            let want = f64::from(*w) / f64::from(total);
            assert!(
                (share - want).abs() <= 0.05,
                "{sched}: {ip} share {share:.3}, weight share {want:.3}: {count:?}"
            );
        }
        s.f.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_subnets_get_stable_different_subsets_under_maglev() {
    if !need("dns ecs", "kdig", "knot-dnsutils") {
        return;
    }
    let s = setup(
        "dns-ecs",
        &www(3, "30s"),
        NO_RRL,
        &unchecked_pool("web", "maglev", &ips("127.0.4.", 10)),
    )
    .await;
    let port = s.dns.port().to_string();
    let ask = |subnet: &str| -> (Vec<IpAddr>, String) {
        let sub = format!("+subnet={subnet}");
        let out = run(
            "kdig",
            &[
                "@127.0.0.1",
                "-p",
                &port,
                "+time=2",
                "+retry=0",
                &sub,
                "www.example.test",
                "A",
            ],
        );
        let a: Vec<IpAddr> = records(&out, "ANSWER")
            .iter()
            .filter_map(|r| r.3.parse().ok())
            .collect();
        (a, out)
    };
    let (first, out) = ask("198.18.10.0/24");
    assert_eq!(first.len(), 3, "{out}");
    // Echoed with the scope the answer depends on (/24).
    assert!(out.contains("CLIENT-SUBNET: 198.18.10.0/24/24"), "{out}");
    for _ in 0..5 {
        assert_eq!(ask("198.18.10.0/24").0, first, "stable for one subnet");
    }
    // Other addresses of the same /24 (a longer source prefix is cut to /24): the same.
    assert_eq!(ask("198.18.10.77/32").0, first);
    // Another subnet: stable too, and a different subset for some of a few subnets.
    let mut differ = 0;
    for n in 0..4 {
        let sub = format!("198.18.{}.0/24", 100 + n);
        let (a, out) = ask(&sub);
        assert_eq!(a.len(), 3, "{out}");
        assert_eq!(ask(&sub).0, a, "stable for {sub}");
        if a != first {
            differ += 1;
        }
    }
    assert!(differ >= 1, "other subnets map elsewhere");
    // Without ECS, the source address is the key: stable for this client.
    let plain = run(
        "kdig",
        &[
            "@127.0.0.1",
            "-p",
            &port,
            "+time=2",
            "+retry=0",
            "+short",
            "www.example.test",
        ],
    );
    assert_eq!(
        plain,
        run(
            "kdig",
            &[
                "@127.0.0.1",
                "-p",
                &port,
                "+time=2",
                "+retry=0",
                "+short",
                "www.example.test"
            ]
        )
    );
    s.f.assert_no_panic();
}

/// A TCP listener on `ip` (a health check target), closed when the task is aborted.
async fn listener(ip: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let addr: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let h = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        }
    });
    (addr, h)
}

fn pool_with_checks(addrs: &[SocketAddr]) -> String {
    let mut s = "[[pool]]\nname = \"web\"\nscheduler = \"rr\"\n[pool.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n".to_owned();
    for a in addrs {
        let _ = write!(s, "[[pool.backend]]\naddress = \"{a}\"\n\n");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_drained_backend_leaves_the_answers_and_all_down_fails_open() {
    if !need("dns health", "dig", "bind9-dnsutils") {
        return;
    }
    let mut ls = Vec::new();
    for i in 1..=3 {
        ls.push(listener(&format!("127.0.5.{i}")).await);
    }
    let addrs: Vec<SocketAddr> = ls.iter().map(|l| l.0).collect();
    let s = setup(
        "dns-health",
        &www(4, "1s"),
        NO_RRL,
        &pool_with_checks(&addrs),
    )
    .await;
    let answer = || -> BTreeSet<IpAddr> {
        answer_ips(&dig(s.dns, &["www.example.test", "+short"]))
            .into_iter()
            .collect()
    };
    let all: BTreeSet<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    // Up after the first checks.
    let t0 = Instant::now();
    while answer() != all {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "all three up: {:?}",
            answer()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A failing health check: gone within one interval (plus the check's timeout).
    ls[0].1.abort();
    let t0 = Instant::now();
    while answer().contains(&addrs[0].ip()) {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "failed backend still answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    // One interval (200 ms) plus the check's timeout, with room for a loaded machine.
    assert!(
        took <= Duration::from_millis(200 + 100 + 300),
        "gone after {took:?}"
    );
    // Drained through the admin API: gone at once.
    let path = format!("/api/v1/pools/web/backends/{}/drain", addrs[1]);
    let (code, body) = common::http(s.f.admin, "POST", &path).await.unwrap();
    assert!(code == 200 || code == 204, "{code} {body}");
    let want: BTreeSet<IpAddr> = BTreeSet::from([addrs[2].ip()]);
    assert_eq!(answer(), want);
    // Every backend down: fail open (every backend, a short TTL).
    ls[2].1.abort();
    let t0 = Instant::now();
    loop {
        let out = dig(s.dns, &["www.example.test"]);
        let a = records(&out, "ANSWER");
        if a.len() == 3 {
            assert!(a.iter().all(|r| r.2 <= 1), "{out}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "fail open: {out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.f.assert_no_panic();
}

/// unbound on `port`, forwarding example.test to `to`.
fn unbound(dir: &std::path::Path, port: u16, to: SocketAddr) -> Child {
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  \
             directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  \
             do-not-query-localhost: no\n  access-control: 127.0.0.0/8 allow\n  domain-insecure: \"example.test\"\n  \
             module-config: \"iterator\"\n  num-threads: 1\n  so-reuseport: no\n  \
             local-zone: \"test.\" nodefault\n  do-ip6: no\n\
             stub-zone:\n  name: \"example.test\"\n  stub-addr: {ip}@{p}\n  stub-first: no\n",
            d = dir.display(),
            ip = to.ip(),
            p = to.port()
        ),
    )
    .unwrap();
    Command::new("unbound")
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("unbound.log")).unwrap(),
        ))
        .spawn()
        .expect("spawn unbound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_in_front_answers_with_ttls_and_drops_a_down_backend_within_ttl_plus_interval() {
    if !need("dns unbound", "dig", "bind9-dnsutils") || !need("dns unbound", "unbound", "unbound") {
        return;
    }
    let mut ls = Vec::new();
    for i in 1..=3 {
        ls.push(listener(&format!("127.0.6.{i}")).await);
    }
    let addrs: Vec<SocketAddr> = ls.iter().map(|l| l.0).collect();
    let s = setup(
        "dns-unbound",
        &www(4, "2s"),
        NO_RRL,
        &pool_with_checks(&addrs),
    )
    .await;
    let dir = temp_dir("dns-unbound");
    let port = free_port();
    let _u = Killed(unbound(&dir, port, s.dns));
    let resolver: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let all: BTreeSet<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    let t0 = Instant::now();
    let out = loop {
        let out = dig(resolver, &["www.example.test"]);
        let got: BTreeSet<IpAddr> = records(&out, "ANSWER")
            .iter()
            .filter_map(|r| r.3.parse().ok())
            .collect();
        if got == all {
            break out;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "through unbound: {out}\n{}",
            std::fs::read_to_string(dir.join("unbound.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A resolver's answer: RA set, TTL at most ours.
    assert!(flags(&out).contains("ra"), "{out}");
    assert!(records(&out, "ANSWER").iter().all(|r| r.2 <= 2), "{out}");
    // NXDOMAIN passes through too.
    assert_eq!(status(&dig(resolver, &["nope.example.test"])), "NXDOMAIN");
    // A backend down: once Fulcrum has marked it down (it leaves Fulcrum's own answers,
    // asked directly), it is gone from the resolver's answers within the TTL (2 s) plus one
    // check interval (200 ms), with 500 ms for dig itself on a busy machine. Plus 1 s:
    // unbound keeps time in whole seconds and serves a record while `now <= fetched + TTL`
    // (both truncated), so a record fetched at x.0 s lives up to TTL + 1 s (a CI run saw
    // 2.77 s).
    ls[1].1.abort();
    let t0 = Instant::now();
    loop {
        let direct: BTreeSet<IpAddr> = answer_ips(&dig(s.dns, &["www.example.test", "+short"]))
            .into_iter()
            .collect();
        if !direct.contains(&addrs[1].ip()) && direct.len() == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "Fulcrum still answers {direct:?} {:?} after the backend died",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let marked = Instant::now();
    loop {
        let got: BTreeSet<IpAddr> = answer_ips(&dig(resolver, &["www.example.test", "+short"]))
            .into_iter()
            .collect();
        if !got.contains(&addrs[1].ip()) && got.len() == 2 {
            break;
        }
        assert!(
            marked.elapsed() < Duration::from_millis(2000 + 1000 + 200 + 500),
            "still {got:?} {:?} after Fulcrum marked it down ({:?} after it died)",
            marked.elapsed(),
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.f.assert_no_panic();
}

/// Sends one raw datagram; the reply, if one comes within 300 ms.
async fn raw(server: SocketAddr, from: &str, packet: &[u8]) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind(format!("{from}:0"))
        .await
        .unwrap();
    sock.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// A query header (id, flags, counts) followed by `body`.
fn packet(id: u16, flags: u16, qd: u16, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    for v in [id, flags, qd, 0, 0, 0] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p.extend_from_slice(body);
    p
}

fn qname(labels: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    for l in labels {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.push(0);
    b
}

fn rcode(reply: &[u8]) -> u8 {
    reply[3] & 0x0f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_formerr_or_dropped_and_the_server_keeps_answering() {
    if !need("dns bad input", "dig", "bind9-dnsutils") {
        return;
    }
    let s = setup(
        "dns-bad",
        &www(2, "30s"),
        NO_RRL,
        &unchecked_pool("web", "rr", &ips("127.0.7.", 3)),
    )
    .await;
    let a_in = [0u8, 1, 0, 1];
    let good = {
        let mut b = qname(&["www", "example", "test"]);
        b.extend_from_slice(&a_in);
        b
    };
    // Shorter than a header: dropped.
    assert_eq!(raw(s.dns, "127.0.0.1", &[0x12, 0x34, 0x01]).await, None);
    assert_eq!(raw(s.dns, "127.0.0.1", &[]).await, None);
    // A response (QR set): dropped (no reflection loops).
    assert_eq!(
        raw(s.dns, "127.0.0.1", &packet(7, 0x8000, 1, &good)).await,
        None
    );
    // A header claiming a question that is not there: FORMERR with the query's id.
    let r = raw(s.dns, "127.0.0.1", &packet(0xabcd, 0x0100, 1, &[]))
        .await
        .expect("formerr");
    assert_eq!(
        (&r[..2], r[2] & 0x80, rcode(&r)),
        (&[0xab, 0xcd][..], 0x80, 1)
    );
    // The question truncated mid-label.
    let r = raw(s.dns, "127.0.0.1", &packet(2, 0x0100, 1, &good[..7]))
        .await
        .expect("formerr");
    assert_eq!(rcode(&r), 1);
    // A compression pointer to itself, and two pointing at each other.
    let r = raw(
        s.dns,
        "127.0.0.1",
        &packet(3, 0x0100, 1, &[0xc0, 12, 0, 1, 0, 1]),
    )
    .await
    .expect("formerr");
    assert_eq!(rcode(&r), 1);
    let r = raw(
        s.dns,
        "127.0.0.1",
        &packet(4, 0x0100, 1, &[1, b'a', 0xc0, 16, 0xc0, 12, 0, 1, 0, 1]),
    )
    .await
    .expect("formerr");
    assert_eq!(rcode(&r), 1);
    // A pointer forward past the end.
    let r = raw(
        s.dns,
        "127.0.0.1",
        &packet(5, 0x0100, 1, &[0xc0, 0xff, 0, 1, 0, 1]),
    )
    .await
    .expect("formerr");
    assert_eq!(rcode(&r), 1);
    // 200 one-character labels (a 401-byte name, past the 255 limit).
    let labels: Vec<&str> = std::iter::repeat_n("a", 200).collect();
    let mut body = qname(&labels);
    body.extend_from_slice(&a_in);
    let r = raw(s.dns, "127.0.0.1", &packet(6, 0x0100, 1, &body))
        .await
        .expect("formerr");
    assert_eq!(rcode(&r), 1);
    // 127 labels in a legal 255-byte name: answered (REFUSED: not in the zone).
    let labels: Vec<&str> = std::iter::repeat_n("a", 127).collect();
    let mut body = qname(&labels);
    body.extend_from_slice(&a_in);
    if let Some(r) = raw(s.dns, "127.0.0.1", &packet(8, 0x0100, 1, &body)).await {
        assert!(rcode(&r) == 5 || rcode(&r) == 1, "rcode {}", rcode(&r));
    }
    // Two questions: FORMERR.
    let mut two = good.clone();
    two.extend_from_slice(&good);
    let r = raw(s.dns, "127.0.0.1", &packet(9, 0x0100, 2, &two))
        .await
        .expect("formerr");
    assert_eq!(rcode(&r), 1);
    // A thousand random packets: each answered or dropped, never a crash.
    let mut x = 0x1234_5678_9abc_def0u64;
    for i in 0..1000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 80) as usize;
        let mut p: Vec<u8> = (0..len).map(|k| (x >> (k % 56)) as u8 ^ k as u8).collect();
        if i % 2 == 0 && p.len() > 12 {
            p[2] &= 0x7f; // a query, so the decoder gets to the question
        }
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.send_to(&p, s.dns).unwrap();
    }
    // Still answering, and alive.
    let out = dig(s.dns, &["www.example.test", "+short"]);
    assert_eq!(answer_ips(&out).len(), 2, "{out}");
    s.f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rrl_limits_a_flood_to_one_prefix_and_others_are_still_served() {
    if !need("dns rrl", "dig", "bind9-dnsutils") {
        return;
    }
    let s = setup(
        "dns-rrl",
        &www(2, "30s"),
        "[service.dns_rrl]\nresponses_per_second = 20\nslip = 2\n",
        &unchecked_pool("web", "rr", &ips("127.0.8.", 3)),
    )
    .await;
    // The "victim": queries with its source address (127.0.0.55), as a spoofed flood in
    // its name would arrive.
    let victim = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.55:0").await.unwrap());
    let mut q = qname(&["www", "example", "test"]);
    q.extend_from_slice(&[0, 1, 0, 1]);
    let q = packet(1, 0x0100, 1, &q);
    let t0 = Instant::now();
    let rx = std::sync::Arc::clone(&victim);
    let counter = tokio::spawn(async move {
        let (mut full, mut tc) = (0usize, 0usize);
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv(&mut buf)).await
        {
            if buf[2] & 0x02 != 0 {
                tc += 1;
            } else if n > 12 {
                full += 1;
            }
        }
        (full, tc)
    });
    for i in 0..2000 {
        let _ = victim.send_to(&q, s.dns).await;
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Meanwhile another client (another /24) is served normally.
    let dns = s.dns;
    let out = tokio::task::spawn_blocking(move || {
        dig(dns, &["-b", "127.0.9.1", "www.example.test", "+short"])
    })
    .await
    .unwrap();
    assert_eq!(answer_ips(&out).len(), 2, "another prefix: {out}");
    let (full, tc) = counter.await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    // Full answers: the bucket (20) plus 20 per second of the flood, per worker (2).
    let cap = (2.0 * (20.0 + 20.0 * secs)).ceil() as usize;
    assert!(full <= cap, "full answers {full} > {cap} in {secs:.2}s");
    assert!(full >= 20, "the first 20 answered: {full}");
    // Slip 2: about every second limited response goes out truncated, the rest dropped.
    eprintln!("rrl: {full} full, {tc} truncated of 2000 in {secs:.2}s");
    let limited = 2000 - full;
    assert!(
        tc >= limited / 4 && tc <= limited / 2 + 2,
        "tc {tc} of {limited} limited"
    );
    s.f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_ctl_and_adm_show_dns_services() {
    if !need("dns metrics", "dig", "bind9-dnsutils") {
        return;
    }
    let s = setup(
        "dns-metrics",
        &www(1, "30s"),
        NO_RRL,
        &unchecked_pool("web", "rr", &ips("127.0.10.", 2)),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(
            answer_ips(&dig(s.dns, &["www.example.test", "+short"])).len(),
            1
        );
    }
    assert_eq!(status(&dig(s.dns, &["nope.example.test"])), "NXDOMAIN");
    assert_eq!(status(&dig(s.dns, &["example.com"])), "REFUSED");
    let m = s.f.metrics().await;
    let q = |qtype: &str, rcode: &str| {
        common::metric_value(
            &m,
            "fulcrum_dns_queries_total",
            &[("service", "dns"), ("qtype", qtype), ("rcode", rcode)],
        )
    };
    assert_eq!(q("A", "NOERROR"), Some(4.0), "{m}");
    assert_eq!(q("A", "NXDOMAIN"), Some(1.0), "{m}");
    assert_eq!(q("A", "REFUSED"), Some(1.0), "{m}");
    for b in ["127.0.10.1:80", "127.0.10.2:80"] {
        let n = common::metric_value(
            &m,
            "fulcrum_dns_answers_total",
            &[("pool", "web"), ("backend", b)],
        );
        assert_eq!(n, Some(2.0), "rr: 2 answers each for {b}: {m}");
    }
    let admin = format!("http://{}", s.f.admin);
    let (a2, admin2) = (admin.clone(), admin);
    let ctl = tokio::task::spawn_blocking(move || {
        run(
            env!("CARGO_BIN_EXE_fulcrum"),
            &["ctl", "--admin", &a2, "status"],
        )
    })
    .await
    .unwrap();
    assert!(ctl.contains("DNS SERVICE"), "{ctl}");
    assert!(
        ctl.lines().any(|l| l.contains("www.example.test")
            && l.contains("example.test")
            && l.contains("30s")),
        "{ctl}"
    );
    let adm = tokio::task::spawn_blocking(move || {
        run(
            env!("CARGO_BIN_EXE_fulcrum"),
            &["adm", "--admin", &admin2, "-L", "-n"],
        )
    })
    .await
    .unwrap();
    let svc = s.dns.to_string();
    assert!(
        adm.lines()
            .any(|l| l.starts_with("UDP") && l.contains(&svc)),
        "{adm}"
    );
    assert!(
        adm.lines()
            .any(|l| l.starts_with("TCP") && l.contains(&svc)),
        "{adm}"
    );
    s.f.assert_no_panic();
}

fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .unwrap();
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_dns_json_and_rfc8484_give_the_udp_answers() {
    if !need("dns http", "dig", "bind9-dnsutils") || !need("dns http", "curl", "curl") {
        return;
    }
    let s = setup(
        "dns-doh",
        &www(3, "30s"),
        NO_RRL,
        &unchecked_pool("web", "maglev", &ips("127.0.11.", 8)),
    )
    .await;
    let admin = s.f.admin;
    // JSON (Google/Cloudflare shape): the same addresses as dig gets over UDP (maglev keys
    // on the client address, 127.0.0.1 both ways).
    let udp: BTreeSet<IpAddr> = answer_ips(&dig(s.dns, &["www.example.test", "+short"]))
        .into_iter()
        .collect();
    assert_eq!(udp.len(), 3);
    let url = format!("http://{admin}/dns-query?name=www.example.test&type=A");
    let v: serde_json::Value =
        serde_json::from_slice(&curl(&["-H", "accept: application/dns-json", &url])).unwrap();
    assert_eq!(v["Status"], 0, "{v}");
    let json: BTreeSet<IpAddr> = v["Answer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["data"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(json, udp, "{v}");
    assert!(v["Answer"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["TTL"] == 30 && a["type"] == 1));
    let v: serde_json::Value = serde_json::from_slice(&curl(&[&format!(
        "http://{admin}/dns-query?name=nope.example.test&type=AAAA"
    )]))
    .unwrap();
    assert_eq!(v["Status"], 3, "NXDOMAIN: {v}");
    assert_eq!(v["Authority"][0]["type"], 6, "{v}");
    let v: serde_json::Value = serde_json::from_slice(&curl(&[&format!(
        "http://{admin}/dns-query?name=example.com"
    )]))
    .unwrap();
    assert_eq!(v["Status"], 5, "REFUSED: {v}");
    // A bad type: 400 with the error body.
    let v: serde_json::Value = serde_json::from_slice(&curl(&[&format!(
        "http://{admin}/dns-query?name=www.example.test&type=BOGUS"
    )]))
    .unwrap();
    assert!(v["error"].as_str().unwrap().contains("BOGUS"), "{v}");

    // RFC 8484 GET and POST: byte for byte the UDP reply to the same query.
    let mut q = qname(&["www", "example", "test"]);
    q.extend_from_slice(&[0, 1, 0, 1]);
    let q = packet(0, 0x0100, 1, &q);
    let over_udp = raw(s.dns, "127.0.0.1", &q).await.expect("udp reply");
    let get = curl(&[&format!("http://{admin}/dns-query?dns={}", base64url(&q))]);
    assert_eq!(get, over_udp, "GET");
    let dir = temp_dir("dns-doh");
    let f = dir.join("q");
    std::fs::write(&f, &q).unwrap();
    let post = curl(&[
        "-H",
        "content-type: application/dns-message",
        "--data-binary",
        &format!("@{}", f.display()),
        &format!("http://{admin}/dns-query"),
    ]);
    assert_eq!(post, over_udp, "POST");
    // The freshness lifetime is the answer's TTL (RFC 8484 5.1).
    let head = String::from_utf8_lossy(&curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("http://{admin}/dns-query?dns={}", base64url(&q)),
    ]))
    .to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/dns-message")
            && head.contains("cache-control: max-age=30"),
        "{head}"
    );
    // POST of something else: 415.
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        "x",
        &format!("http://{admin}/dns-query"),
    ]);
    assert_eq!(code, b"415");
    let m = s.f.metrics().await;
    assert!(
        common::metric_value(
            &m,
            "fulcrum_dns_queries_total",
            &[("service", "dns"), ("qtype", "A"), ("rcode", "NOERROR")]
        )
        .unwrap()
            >= 5.0
    );
    s.f.assert_no_panic();
}

/// A CA and a certificate for `name` it signs (openssl), in `dir`: (ca.pem, cert, key).
fn tls_files(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |f: &str| dir.join(f);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=doh test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        &format!("/CN={name}"),
    ]);
    std::fs::write(
        p("ext.cnf"),
        format!(
            "subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (p("ca.pem"), p("srv.pem"), p("srv.key"))
}

/// An HTTP backend answering every request `200 ok` (one request per connection).
async fn http_ok() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, h)
}

/// The answer section's addresses of a kdig or dig reply, in order.
fn answer_addrs(text: &str) -> Vec<IpAddr> {
    records(text, "ANSWER")
        .into_iter()
        .filter_map(|(_, _, _, d)| d.parse().ok())
        .collect()
}

/// Issue 18 item 2: `dns_service` on an http service with TLS is the DNS over HTTPS apps use: kdig
/// `+https` (POST and GET, HTTP/2 over TLS) and curl (JSON, RFC 8484) get what the dns
/// service answers over UDP, byte for byte for the same query; other paths still go to the
/// pool; `fulcrum check` lists the names and refuses a `dns_service` that names no dns
/// service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_on_an_http_service_with_tls_answers_as_udp_for_kdig_and_curl() {
    if !need("doh", "kdig", "knot-dnsutils")
        || !need("doh", "curl", "curl")
        || !need("doh", "openssl", "openssl")
        || !need("doh", "dig", "bind9-dnsutils")
    {
        return;
    }
    let dir = temp_dir("dns-doh-tls");
    let (ca, cert, key) = tls_files(&dir, "doh.example.test");
    let (web, web_task) = http_ok().await;
    let doh = free_addr();
    let http_svc = format!(
        "[[service]]\nname = \"doh\"\nlisten = \"{doh}\"\nprotocol = \"http\"\npool = \"site\"\n\
         dns_service = \"dns\"\n[service.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\" }} ]\n",
        cert.display(),
        key.display()
    );
    let s = setup(
        "dns-doh-tls",
        &www(3, "30s"),
        &format!("{NO_RRL}\n{http_svc}"),
        &format!(
            "{}\n[[pool]]\nname = \"site\"\n[pool.health]\ncheck = \"none\"\n[[pool.backend]]\naddress = \"{web}\"\n",
            unchecked_pool("web", "maglev", &ips("127.0.12.", 8)),
        ),
    )
    .await;

    // UDP (dig, from 127.0.0.1: maglev keys on the client, the same for every transport).
    let udp = dig(s.dns, &["www.example.test", "A"]);
    let udp_ips = answer_addrs(&udp);
    assert_eq!(udp_ips.len(), 3, "{udp}");
    let port = doh.port().to_string();
    let ca_arg = format!("+tls-ca={}", ca.display());
    for (method, session) in [("+https", "HTTP/2-POST"), ("+https-get", "HTTP/2-GET")] {
        let out = run(
            "kdig",
            &[
                "@127.0.0.1",
                "-p",
                &port,
                method,
                &ca_arg,
                "+tls-hostname=doh.example.test",
                "+time=3",
                "+retry=0",
                "www.example.test",
                "A",
            ],
        );
        assert!(out.contains("status: NOERROR"), "kdig {method}: {out}");
        assert!(
            out.contains(&format!(
                ";; HTTP session ({session})-(doh.example.test/dns-query)-(status: 200)"
            )),
            "kdig {method} went over DoH: {out}"
        );
        assert_eq!(
            answer_addrs(&out),
            udp_ips,
            "kdig {method}: {out}\nudp: {udp}"
        );
        assert!(records(&out, "ANSWER").iter().all(|r| r.2 == 30), "{out}");
    }
    // NXDOMAIN and REFUSED through DoH as over UDP.
    let out = run(
        "kdig",
        &[
            "@127.0.0.1",
            "-p",
            &port,
            "+https",
            &ca_arg,
            "+tls-hostname=doh.example.test",
            "+time=3",
            "+retry=0",
            "nope.example.test",
            "AAAA",
        ],
    );
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    // A wrong CA: kdig refuses the server (the certificate is checked, not ignored).
    let other = temp_dir("dns-doh-tls-other");
    let (other_ca, _, _) = tls_files(&other, "doh.example.test");
    let out = run(
        "kdig",
        &[
            "@127.0.0.1",
            "-p",
            &port,
            "+https",
            &format!("+tls-ca={}", other_ca.display()),
            "+tls-hostname=doh.example.test",
            "+time=3",
            "+retry=0",
            "www.example.test",
            "A",
        ],
    );
    assert!(!out.contains("status: NOERROR"), "wrong CA accepted: {out}");

    // curl: the JSON API over TLS.
    let cacert = ca.display().to_string();
    let resolve = format!("doh.example.test:{}:127.0.0.1", doh.port());
    let base = format!("https://doh.example.test:{}", doh.port());
    let https = |extra: &[&str], path: &str| {
        let mut a = vec!["--cacert", &cacert, "--resolve", &resolve];
        a.extend_from_slice(extra);
        let url = format!("{base}{path}");
        let mut all: Vec<String> = a.iter().map(|s| (*s).to_owned()).collect();
        all.push(url);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        curl(&refs)
    };
    let v: serde_json::Value = serde_json::from_slice(&https(
        &["-H", "accept: application/dns-json"],
        "/dns-query?name=www.example.test&type=A",
    ))
    .unwrap();
    assert_eq!(v["Status"], 0, "{v}");
    let json: Vec<IpAddr> = v["Answer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["data"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(json, udp_ips, "{v}");
    let v: serde_json::Value =
        serde_json::from_slice(&https(&[], "/dns-query?name=example.com")).unwrap();
    assert_eq!(v["Status"], 5, "REFUSED: {v}");
    let v: serde_json::Value =
        serde_json::from_slice(&https(&[], "/dns-query?name=www.example.test&type=BOGUS")).unwrap();
    assert!(v["error"].as_str().unwrap().contains("BOGUS"), "{v}");

    // RFC 8484 GET and POST over TLS (HTTP/2 and HTTP/1.1): byte for byte the UDP reply.
    let mut q = qname(&["www", "example", "test"]);
    q.extend_from_slice(&[0, 1, 0, 1]);
    let q = packet(0, 0x0100, 1, &q);
    let over_udp = raw(s.dns, "127.0.0.1", &q).await.expect("udp reply");
    let admin_get = curl(&[&format!(
        "http://{}/dns-query?dns={}",
        s.f.admin,
        base64url(&q)
    )]);
    assert_eq!(admin_get, over_udp, "admin GET");
    for v in ["--http2", "--http1.1"] {
        let get = https(&[v], &format!("/dns-query?dns={}", base64url(&q)));
        assert_eq!(get, over_udp, "GET {v}");
    }
    let f = dir.join("q");
    std::fs::write(&f, &q).unwrap();
    let data = format!("@{}", f.display());
    for v in ["--http2", "--http1.1"] {
        let post = https(
            &[
                v,
                "-H",
                "content-type: application/dns-message",
                "--data-binary",
                &data,
            ],
            "/dns-query",
        );
        assert_eq!(post, over_udp, "POST {v}");
    }
    let head = String::from_utf8_lossy(&https(
        &["-D", "-", "-o", "/dev/null"],
        &format!("/dns-query?dns={}", base64url(&q)),
    ))
    .to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/dns-message")
            && head.contains("cache-control: max-age=30"),
        "{head}"
    );
    let code = https(
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "x",
        ],
        "/dns-query",
    );
    assert_eq!(code, b"415");
    let code = https(
        &["-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"],
        "/dns-query",
    );
    assert_eq!(code, b"405");
    // Other paths: the http service's pool as before.
    let code = https(&["-o", "/dev/null", "-w", "%{http_code}"], "/index.html");
    assert_eq!(code, b"200", "other paths reach the pool");
    web_task.abort();

    // `fulcrum check`: the summary lists the dns names and the DoH service.
    let check = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["check", "-c"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = check(&s.f.config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("dns www.example.test -> web")
                && l.contains("ttl 30s")
                && l.contains("max 3")),
        "{text}"
    );
    assert!(
        text.contains("zone example.test (ns ns1.example.test, ns2.example.test)"),
        "{text}"
    );
    assert!(
        text.contains("doh: /dns-query -> dns service dns"),
        "{text}"
    );
    // A dns_service naming no dns service: FILE:LINE:COL, and the valid names.
    let cfg = std::fs::read_to_string(&s.f.config).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        cfg.replace("dns_service = \"dns\"", "dns_service = \"site\""),
    )
    .unwrap();
    let out = check(&bad);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let line = cfg
        .lines()
        .position(|l| l.starts_with("dns_service"))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!("{}:{line}:15", bad.display())),
        "FILE:LINE:COL: {text}"
    );
    assert!(
        text.contains("`site`") && text.contains("dns services: dns"),
        "{text}"
    );
    s.f.assert_no_panic();
}

/// Issue 18 item 4: `explain` of a dns service: maglev names the client's subset (the same
/// backends, in the same order, as dig gets over UDP, per client and per ECS subnet); rr
/// lists the candidates; names outside the zone are refused; `ctl explain-dns` prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_which_backends_a_dns_query_gets_and_why() {
    if !need("dns explain", "dig", "bind9-dnsutils") {
        return;
    }
    let names = format!(
        "{}[[service.dns_name]]\nname = \"rr.example.test\"\npool = \"rot\"\nmax_answers = 2\n",
        www(3, "30s")
    );
    let s = setup(
        "dns-explain",
        &names,
        NO_RRL,
        &format!(
            "{}\n{}",
            unchecked_pool("web", "maglev", &ips("127.0.13.", 8)),
            unchecked_pool("rot", "rr", &ips("127.0.14.", 4))
        ),
    )
    .await;
    let explain = |q: String| {
        let f = &s.f;
        async move {
            let (code, body) = f.get(&format!("/api/v1/services/dns/explain?{q}")).await;
            (
                code,
                serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };
    let addrs = |v: &serde_json::Value| -> Vec<IpAddr> {
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["address"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    // The client's own address (dig from 127.0.0.1).
    let udp = answer_addrs(&dig(s.dns, &["www.example.test", "A"]));
    let (code, v) = explain("name=www.example.test&client=127.0.0.1".into()).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["decision"], "hash", "{v}");
    assert_eq!(v["scheduler"], "maglev");
    assert_eq!(
        (v["ttl"].as_u64(), v["max_answers"].as_u64()),
        (Some(30), Some(3))
    );
    assert_eq!(addrs(&v), udp, "explain agrees with the UDP answer: {v}");
    // Per ECS subnet: each subnet's answer as dig +subnet gets it, and the scope.
    let mut seen = BTreeSet::new();
    for net in [
        "198.18.1.0/24",
        "198.18.2.0/24",
        "198.18.3.0/24",
        "198.18.4.0/24",
    ] {
        let out = dig(s.dns, &[&format!("+subnet={net}"), "www.example.test", "A"]);
        let got = answer_addrs(&out);
        let (_, v) = explain(format!("name=www.example.test&subnet={net}")).await;
        assert_eq!(v["decision"], "hash");
        assert_eq!(v["key"], net.split('/').next().unwrap(), "{v}");
        assert_eq!(
            (v["key_prefix"].as_u64(), v["scope"].as_u64()),
            (Some(24), Some(24))
        );
        assert_eq!(addrs(&v), got, "subnet {net}: {v}\n{out}");
        seen.insert(got);
    }
    assert!(
        seen.len() > 1,
        "different subnets, different subsets: {seen:?}"
    );
    // rr: the answer depends on the moment: every eligible backend is a candidate.
    let (_, v) = explain("name=rr.example.test&client=127.0.0.1".into()).await;
    assert_eq!(v["decision"], "candidates", "{v}");
    assert_eq!(addrs(&v).len(), 4, "{v}");
    // Outside the zone, and a zone name without backends.
    let (_, v) = explain("name=www.example.com".into()).await;
    assert_eq!(v["decision"], "refused", "{v}");
    let (_, v) = explain("name=example.test".into()).await;
    assert_eq!(v["decision"], "zone", "{v}");
    // Bad input: 400 naming what is valid; an unknown service 404.
    let (code, v) = explain("name=www.example.test&type=MX".into()).await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("A, AAAA"), "{v}");
    let (code, _) =
        s.f.get("/api/v1/services/nope/explain?name=www.example.test")
            .await;
    assert_eq!(code, 404);
    // A drained backend leaves the hashed subset, as it leaves the answers.
    let first = udp[0];
    let (code, _) = common::http(
        s.f.admin,
        "POST",
        &format!("/api/v1/pools/web/backends/{first}:80/drain"),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    let (_, v) = explain("name=www.example.test&client=127.0.0.1".into()).await;
    let after = answer_addrs(&dig(s.dns, &["www.example.test", "A"]));
    assert!(!addrs(&v).contains(&first), "{v}");
    assert_eq!(addrs(&v), after, "{v}");
    // ctl prints it.
    let admin = format!("http://{}", s.f.admin);
    let out = tokio::task::spawn_blocking(move || {
        run(
            env!("CARGO_BIN_EXE_fulcrum"),
            &[
                "ctl",
                "--admin",
                &admin,
                "explain-dns",
                "dns",
                "www.example.test",
                "--subnet",
                "198.18.1.0/24",
            ],
        )
    })
    .await
    .unwrap();
    assert!(out.contains("decision   hash"), "{out}");
    assert!(out.contains("pool       web (scheduler maglev"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("backend ")).count(),
        3,
        "{out}"
    );
    s.f.assert_no_panic();
}

/// Issue 18: a reload that turns a udp service into a dns service on the same address
/// (and back) changes what serves the address: the UDP socket is served anew (it used to
/// keep proxying), TCP is bound for dns and let go again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_one_address_between_udp_and_dns() {
    if !need("dns reload", "dig", "bind9-dnsutils") {
        return;
    }
    let echo = common::UdpBackend::start("echo").await;
    let admin = free_addr();
    let addr = free_addr();
    let pools = format!(
        "[[pool]]\nname = \"web\"\n[pool.health]\ncheck = \"none\"\n[[pool.backend]]\naddress = \"{}\"\n",
        echo.addr
    );
    let udp_cfg = format!(
        "{}[[service]]\nname = \"s\"\nlisten = \"{addr}\"\nprotocol = \"udp\"\npool = \"web\"\n\n{pools}",
        admin_toml(admin)
    );
    let dns_cfg = format!(
        "{}[[service]]\nname = \"s\"\nlisten = \"{addr}\"\nprotocol = \"dns\"\npool = \"web\"\n{}\
         [service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n{NO_RRL}\n{pools}",
        admin_toml(admin),
        www(4, "30s")
    );
    let f = Fulcrum::start("dns-reload", admin, &udp_cfg, &["--workers", "2"]).await;
    let mut q = qname(&["www", "example", "test"]);
    q.extend_from_slice(&[0, 1, 0, 1]);
    let q = packet(7, 0x0100, 1, &q);
    let proxied = |r: &Option<Vec<u8>>| r.as_deref().is_some_and(|b| b.starts_with(b"echo|"));
    // udp: proxied to the echo backend.
    let r = raw(addr, "127.0.0.1", &q).await;
    assert!(proxied(&r), "{r:?}");
    let reload = |cfg: &str| {
        f.write_config(cfg);
        let admin = f.admin;
        async move {
            let (code, body) = common::http(admin, "POST", "/api/v1/reload").await.unwrap();
            assert_eq!(code, 200, "{body}");
        }
    };
    // The old sockets close once the workers serve the new ones: a datagram the kernel put
    // on an old socket just then is lost (docs/dns.md), so wait for the first answer.
    let qref: &[u8] = &q;
    let served_as = move |dns: bool| async move {
        common::eventually(Duration::from_secs(2), move || async move {
            let r = raw(addr, "127.0.0.1", qref).await;
            r.is_some() && proxied(&r) != dns
        })
        .await
    };
    for round in 0..2 {
        reload(&dns_cfg).await;
        assert!(served_as(true).await, "round {round}: not served as dns");
        // Every datagram (from many source ports, so every worker's socket) is answered as
        // DNS; none reaches the backend.
        let before = echo.received.load(std::sync::atomic::Ordering::SeqCst);
        for i in 0..20 {
            let r = raw(addr, "127.0.0.1", &q).await;
            let r = r.unwrap_or_else(|| panic!("round {round}, query {i}: no reply"));
            assert!(!proxied(&Some(r.clone())), "round {round}: still proxied");
            assert_eq!(rcode(&r), 0);
            assert_eq!(&r[..2], &[0, 7]);
        }
        assert_eq!(
            echo.received.load(std::sync::atomic::Ordering::SeqCst),
            before
        );
        let out = dig(addr, &["+tcp", "www.example.test", "A"]);
        assert!(out.contains("status: NOERROR"), "dns over tcp: {out}");
        // Back to udp: proxied again, and TCP is let go.
        reload(&udp_cfg).await;
        assert!(served_as(false).await, "round {round}: not proxied again");
        for i in 0..20 {
            let r = raw(addr, "127.0.0.1", &q).await;
            assert!(proxied(&r), "round {round}, datagram {i}: {r:?}");
        }
        assert!(
            common::wait_refused(addr, Duration::from_secs(2)).await,
            "tcp still listening after dns -> udp"
        );
    }
    f.assert_no_panic();
}

/// The names of the dns UDP threads of process `pid` (`fulcrum-dns-udp`, one per socket).
fn dns_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |rd| {
        rd.flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "fulcrum-dns-udp")
            })
            .count()
    })
}

/// Issue 18: each dns UDP socket is served by a thread blocked in `recvmmsg`. Removing the
/// service lets go of the socket (the address can be bound again without `SO_REUSEPORT`)
/// and ends the threads; adding it back serves it again; a graceful shutdown (SIGTERM)
/// still ends the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_udp_threads_let_go_on_removal_and_end_on_shutdown() {
    let admin = free_addr();
    let addr = free_addr();
    let pools = "[[pool]]\nname = \"web\"\n[pool.health]\ncheck = \"none\"\n\
                 [[pool.backend]]\naddress = \"127.0.0.9:80\"\n";
    let dns_cfg = format!(
        "{}[[service]]\nname = \"dns\"\nlisten = \"{addr}\"\nprotocol = \"dns\"\npool = \"web\"\n{}\
         [service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n{NO_RRL}\n{pools}",
        admin_toml(admin),
        www(4, "30s")
    );
    let none_cfg = format!("{}{pools}", admin_toml(admin));
    let mut f = Fulcrum::start("dns-udp-thread", admin, &dns_cfg, &["--workers", "2"]).await;
    let mut q = qname(&["www", "example", "test"]);
    q.extend_from_slice(&[0, 1, 0, 1]);
    let q = packet(9, 0x0100, 1, &q);
    let qref: &[u8] = &q;
    let answered = move || async move {
        raw(addr, "127.0.0.1", qref)
            .await
            .is_some_and(|r| r.get(..2) == Some(&[0, 9][..]) && rcode(&r) == 0)
    };
    let pid = f.pid;
    // Each worker starts its socket's thread when it takes the socket: wait for both.
    let two_threads = move || async move { dns_threads(pid) == 2 };
    assert!(answered().await, "no answer at start");
    assert!(
        common::eventually(Duration::from_secs(2), two_threads).await,
        "one thread per worker's socket: {}",
        dns_threads(pid)
    );
    let reload = |cfg: &str| {
        f.write_config(cfg);
        async move {
            let (code, body) = common::http(admin, "POST", "/api/v1/reload").await.unwrap();
            assert_eq!(code, 200, "{body}");
        }
    };
    for round in 0..2 {
        reload(&none_cfg).await;
        assert!(
            common::eventually(Duration::from_secs(2), move || async move {
                dns_threads(pid) == 0 && std::net::UdpSocket::bind(addr).is_ok()
            })
            .await,
            "round {round}: the dns threads ({}) or their sockets stayed",
            dns_threads(pid)
        );
        assert!(!answered().await, "round {round}: answered after removal");
        reload(&dns_cfg).await;
        assert!(
            common::eventually(Duration::from_secs(2), answered).await,
            "round {round}: not answered after adding it back"
        );
        assert!(
            common::eventually(Duration::from_secs(2), two_threads).await,
            "round {round}: {} dns threads",
            dns_threads(pid)
        );
    }
    f.signal("TERM");
    let st = f.wait_exit(Duration::from_secs(10)).await;
    assert!(st.is_some_and(|s| s.success()), "no clean exit: {st:?}");
    f.assert_no_panic();
}
