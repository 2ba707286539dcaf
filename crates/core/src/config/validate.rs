//! Cross-key checks: raw structs in, a [`Config`] or every error found out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use serde_spanned::Spanned;

use super::error::line_col;
use super::limits;
use super::raw::{
    RawConfig, RawDiscovery, RawHealth, RawHttp2, RawNatSync, RawOutlier, RawPool, RawRoute,
    RawService, RawXdp,
};
use super::value::{CheckKind, Count, HumanDuration, Name};
use super::{
    defaults, AccessLog, AdminConfig, BackendProtocol, BackendTls, BalancingScheduler, CertPair,
    ClientAuth, ClientAuthMode, Config, ConfigError, Discovery, Encap, HashingScheduler,
    HealthCheck, HealthConfig, HostMatch, Http2Limits, HttpService, HttpTimeouts, LogField,
    LogTarget, OutlierConfig, PacketForward, PoolConfig, RateLimit, RetryPolicy, Route,
    SchedulerConfig, ServiceConfig, ServiceKind, SniRoute, StatusRange, SyslogDest, SyslogFacility,
    TcpProxy, TcpService, TcpTimeouts, TlsConfig, TunnelKind, UdpForward, UdpService, XdpConfig,
};
use crate::model::{self, canonical_addr, Backend, ForwardMode, PrimeTableSize, ServiceProtocol};

/// Transport used by a listener, for address conflicts (http is tcp).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The transports a service of protocol `p` listens on (dns: both).
    const fn of(p: ServiceProtocol) -> &'static [Self] {
        match p {
            ServiceProtocol::Tcp | ServiceProtocol::Http => &[Self::Tcp],
            ServiceProtocol::Udp => &[Self::Udp],
            ServiceProtocol::Dns => &[Self::Udp, Self::Tcp],
        }
    }
    const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

struct Checker<'t> {
    text: &'t str,
    errs: Vec<ConfigError>,
}

impl Checker<'_> {
    fn err(&mut self, span: Range<usize>, message: String, help: Option<String>) {
        self.errs.push(ConfigError {
            message,
            help,
            span: Some(span),
        });
    }
    fn line(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }
}

/// Validates `raw` (parsed from `text`) into a [`Config`], or returns every error found,
/// sorted by position.
pub(super) fn validate(raw: RawConfig, text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker {
        text,
        errs: Vec::new(),
    };

    let pool_names = unique_names(&mut c, raw.pool.iter().map(|p| &p.get_ref().name), "pool");
    let mut defined: Vec<&str> = pool_names.keys().copied().collect();
    defined.sort_unstable();
    unique_names(
        &mut c,
        raw.service.iter().map(|s| &s.get_ref().name),
        "service",
    );

    check_listeners(&mut c, &raw);
    check_dns_service(&mut c, &raw);

    let users = pool_users(&raw.service);
    let xdp = raw.xdp.as_ref().map(|x| xdp(&mut c, x.get_ref()));

    let services: Vec<ServiceConfig> = raw
        .service
        .iter()
        .map(|s| service(&mut c, s.get_ref(), &defined, xdp.is_some()))
        .collect();
    let no_users = Vec::new();
    let pools: Vec<PoolConfig> = raw
        .pool
        .iter()
        .map(|p| {
            let name = p.get_ref().name.get_ref().0.as_str();
            pool(&mut c, p.get_ref(), users.get(name).unwrap_or(&no_users))
        })
        .collect();

    check_xdp_limits(&mut c, &raw, &services, &pools);

    let admin = raw.admin.map(|a| {
        let a = a.into_inner();
        AdminConfig {
            listen: a
                .listen
                .as_ref()
                .map_or(super::defaults::ADMIN_LISTEN, |l| l.get_ref().0),
            token_file: a.token_file,
            protect_reads: a.protect_reads.unwrap_or(false),
        }
    });

    let announce = raw
        .announce
        .as_ref()
        .map(|a| super::announce::validate(a.get_ref(), &raw.service, &mut c.errs));

    if c.errs.is_empty() {
        Ok(Config {
            admin,
            services,
            pools,
            xdp,
            announce,
            cluster: raw.cluster.map(|c| c.into_inner().into_config()),
        })
    } else {
        c.errs
            .sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
        Err(c.errs)
    }
}

/// The names of the pools (or services: `what`), each with the span of its first
/// definition; a name defined again is an error.
fn unique_names<'r>(
    c: &mut Checker<'_>,
    names: impl Iterator<Item = &'r Spanned<Name>>,
    what: &str,
) -> HashMap<&'r str, Range<usize>> {
    let mut first_at: HashMap<&str, Range<usize>> = HashMap::new();
    for n in names {
        let name = n.get_ref().0.as_str();
        let span = n.span();
        if let Some(first) = first_at.get(name) {
            let line = c.line(first);
            c.err(
                span,
                format!("duplicate {what} name `{name}` (first defined at line {line})"),
                Some(format!("{what} names must be unique")),
            );
        } else {
            first_at.insert(name, span);
        }
    }
    first_at
}

/// Which services use which pool (default pool, dns names and routes), by pool name.
fn pool_users(services: &[Spanned<RawService>]) -> HashMap<&str, Vec<(&str, ServiceProtocol)>> {
    let mut users: HashMap<&str, Vec<(&str, ServiceProtocol)>> = HashMap::new();
    for s in services {
        let s = s.get_ref();
        let user = (s.name.get_ref().0.as_str(), s.protocol.get_ref().0);
        let pools = std::iter::once(&s.pool)
            .chain(s.dns_name.iter().filter_map(|d| d.get_ref().pool.as_ref()))
            .chain(s.route.iter().map(|r| &r.get_ref().pool))
            .chain(s.sni_route.iter().map(|r| &r.get_ref().pool));
        for p in pools {
            users.entry(p.get_ref().0.as_str()).or_default().push(user);
        }
    }
    users
}

/// `[xdp]`: the interface name and the NAT state sync.
fn xdp(c: &mut Checker<'_>, x: &RawXdp) -> XdpConfig {
    let iface = x.interface.get_ref();
    let ok = !iface.is_empty()
        && iface.len() <= 15
        && !iface.contains(|ch: char| ch.is_whitespace() || ch == '/');
    if !ok {
        c.err(
            x.interface.span(),
            format!("invalid interface name \"{iface}\""),
            Some("a network interface name of 1 to 15 characters, e.g. \"eth0\"".into()),
        );
    }
    XdpConfig {
        interface: iface.clone(),
        mode: x.mode.as_ref().map(|m| m.0).unwrap_or_default(),
        sync: x.sync.as_ref().map(|sy| nat_sync(c, sy)),
    }
}

/// `[xdp.sync]`: this instance's place in the fleet and its peers.
fn nat_sync(c: &mut Checker<'_>, sy: &Spanned<RawNatSync>) -> super::NatSyncConfig {
    let r = sy.get_ref();
    let members = *r.members.get_ref();
    let member = *r.member.get_ref();
    if members == 0 || members > super::NAT_SYNC_MAX_MEMBERS {
        c.err(
            r.members.span(),
            format!("members = {members} is out of range"),
            Some(format!(
                "the number of instances in the fleet, 1 to {}",
                super::NAT_SYNC_MAX_MEMBERS
            )),
        );
    } else if member >= members {
        c.err(
            r.member.span(),
            format!("member = {member} is not below members = {members}"),
            Some(format!("this instance's index, 0 to {}", members - 1)),
        );
    }
    let peers: Vec<std::net::SocketAddr> = r.peers.iter().map(|a| a.0).collect();
    if peers.contains(&r.listen.0) {
        c.err(
            sy.span(),
            format!(
                "peers lists this instance's own listen address {}",
                r.listen.0
            ),
            Some("peers: the other instances' listen addresses only".into()),
        );
    }
    super::NatSyncConfig {
        listen: r.listen.0,
        peers,
        member,
        // Checked above (an error when 0).
        members: std::num::NonZeroU16::new(members).unwrap_or(std::num::NonZeroU16::MIN),
    }
}

/// The packet data plane's maps have fixed sizes ([`limits::XDP_MAX_SERVICES`] services,
/// [`limits::XDP_MAX_BACKENDS`] backends, Maglev tables of at most
/// [`limits::XDP_MAGLEV_TABLE_SIZE`] slots): a config beyond them would make `run` fail
/// where `check` passed.
fn check_xdp_limits(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    services: &[ServiceConfig],
    pools: &[PoolConfig],
) {
    let xdp: Vec<(usize, &ServiceConfig)> = services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.forward().mode() != ForwardMode::Proxy)
        .collect();
    if let Some((i, _)) = xdp.get(limits::XDP_MAX_SERVICES) {
        c.err(
            raw.service[*i].get_ref().name.span(),
            format!(
                "more than {} dsr/tunnel/nat services: the packet data plane holds at most {}",
                limits::XDP_MAX_SERVICES,
                limits::XDP_MAX_SERVICES
            ),
            Some("use forward = \"proxy\" for the others".into()),
        );
    }
    let mut xdp_pools: Vec<&str> = xdp.iter().map(|(_, s)| s.pool.as_str()).collect();
    xdp_pools.sort_unstable();
    xdp_pools.dedup();
    let backends: usize = pools
        .iter()
        .filter(|p| xdp_pools.contains(&p.name.as_str()))
        .map(|p| p.backends.len())
        .sum();
    if backends > limits::XDP_MAX_BACKENDS {
        if let Some((i, _)) = xdp.first() {
            c.err(
                raw.service[*i].get_ref().name.span(),
                format!(
                    "the pools of the dsr/tunnel/nat services have {backends} backends: the packet data plane holds at most {}",
                    limits::XDP_MAX_BACKENDS
                ),
                Some("use fewer backends in these pools, or forward = \"proxy\"".into()),
            );
        }
    }
    let max = limits::XDP_MAGLEV_TABLE_SIZE;
    for (p, rp) in pools.iter().zip(&raw.pool) {
        let Some(size) = p.scheduler.maglev_table_size().filter(|m| m.get() > max) else {
            continue;
        };
        let Some(s) = services
            .iter()
            .find(|s| s.pool == p.name && s.forward().mode() != ForwardMode::Proxy)
        else {
            continue;
        };
        let span = rp
            .get_ref()
            .maglev_table_size
            .as_ref()
            .map_or_else(|| rp.get_ref().name.span(), Spanned::span);
        c.err(
            span,
            format!(
                "maglev_table_size {} is above the packet data plane's {max}, and service `{}` uses pool `{}` with forward = \"{}\"",
                size.get(),
                s.name,
                p.name,
                s.forward().mode().as_str()
            ),
            Some(format!("use a prime of at most {max} (e.g. 65537), or forward = \"proxy\"")),
        );
    }
}

/// Whether two listeners would collide on bind.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let (ia, ib) = (a.ip(), b.ip());
    ia == ib
        || (ia.is_unspecified() && (ia.is_ipv6() || ib.is_ipv4()))
        || (ib.is_unspecified() && (ib.is_ipv6() || ia.is_ipv4()))
}

fn check_listeners(c: &mut Checker<'_>, raw: &RawConfig) {
    // (address, transport, who, span)
    let mut seen: Vec<(SocketAddr, Transport, String, Range<usize>)> = Vec::new();
    if let Some(a) = &raw.admin {
        let (addr, span) = a.get_ref().listen.as_ref().map_or_else(
            || (super::defaults::ADMIN_LISTEN, a.span()),
            |l| (l.get_ref().0, l.span()),
        );
        seen.push((addr, Transport::Tcp, "the admin API".into(), span));
    }
    for s in &raw.service {
        let s = s.get_ref();
        let addr = s.listen.get_ref().0;
        let name = s.name.get_ref().0.as_str();
        for &t in Transport::of(s.protocol.get_ref().0) {
            if let Some((first, _, who, span)) = seen
                .iter()
                .find(|(other, ot, _, _)| *ot == t && overlaps(addr, *other))
            {
                let line = c.line(span);
                let msg = format!(
                "service `{name}` listens on {addr} ({}), which {who} already uses ({first}, line {line})",
                t.as_str()
            );
                c.err(
                s.listen.span(),
                msg,
                Some("listen addresses must be unique per transport (a tcp and a udp service may share one); use another port".into()),
            );
            }
            seen.push((addr, t, format!("service `{name}`"), s.listen.span()));
        }
    }
}

fn pool_ref(c: &mut Checker<'_>, r: &Spanned<super::value::Name>, defined: &[&str], who: &str) {
    let name = r.get_ref().0.as_str();
    if defined.contains(&name) {
        return;
    }
    let help = if defined.is_empty() {
        format!("no pools are defined; add a [[pool]] with name = \"{name}\"")
    } else {
        format!("defined pools: {}", defined.join(", "))
    };
    c.err(
        r.span(),
        format!("{who} refers to pool `{name}`, which is not defined"),
        Some(help),
    );
}

fn service(c: &mut Checker<'_>, s: &RawService, defined: &[&str], has_xdp: bool) -> ServiceConfig {
    let name = s.name.get_ref().0.clone();
    let protocol = s.protocol.get_ref().0;
    let proto_name = protocol.as_str();
    pool_ref(c, &s.pool, defined, &format!("service `{name}`"));

    let (mode, packet, proxy_protocol) = forwarding(c, s, &name, has_xdp);
    if let Some(m) = &s.max_flows {
        if protocol != ServiceProtocol::Udp {
            c.err(
                m.span(),
                format!("max_flows applies only to udp services; `{name}` is {proto_name}"),
                Some("use max_connections to bound tcp and http services".into()),
            );
        }
    }
    let http = http_service(c, s, defined, &name);
    let sni_routes = sni_routes(c, s, defined, &name, mode);
    let access_log = s
        .access_log
        .as_ref()
        .map(|a| access_log(c, a, protocol, mode, &name));
    let timeouts = timeouts(c, s, &name, mode);
    let dns = dns(c, s, defined, &name);

    let kind = match protocol {
        ServiceProtocol::Tcp => ServiceKind::Tcp(match packet {
            Some(p) => TcpService::Packet(p),
            None => TcpService::Proxy(TcpProxy {
                proxy_protocol,
                sni_routes,
                timeouts: timeouts.map(|t| TcpTimeouts { connect: t.connect }),
                access_log,
            }),
        }),
        ServiceProtocol::Udp => ServiceKind::Udp(UdpService {
            forward: match packet {
                Some(p) => UdpForward::Packet(p),
                None => UdpForward::Proxy { access_log },
            },
            max_flows: s
                .max_flows
                .as_ref()
                .map_or(model::defaults::MAX_FLOWS, |m| m.get_ref().non_zero()),
        }),
        ServiceProtocol::Http => ServiceKind::Http(HttpService {
            timeouts,
            access_log,
            ..http
        }),
        // `None` only with an error reported (no `[service.dns_zone]`).
        ServiceProtocol::Dns => ServiceKind::Dns(dns.unwrap_or_else(|| super::DnsConfig {
            origin: String::new(),
            ns: Vec::new(),
            names: Vec::new(),
            rrl: super::DnsRrl::default(),
        })),
    };

    ServiceConfig {
        name,
        listen: s.listen.get_ref().0,
        pool: s.pool.get_ref().0.clone(),
        max_connections: s
            .max_connections
            .map_or(model::defaults::MAX_CONNECTIONS, Count::non_zero),
        idle_timeout: dur(
            c,
            s.idle_timeout.as_ref(),
            model::defaults::IDLE_TIMEOUT,
            "idle_timeout",
            &limits::IDLE_TIMEOUT,
        ),
        drain_timeout: dur(
            c,
            s.drain_timeout.as_ref(),
            model::defaults::DRAIN_TIMEOUT,
            "drain_timeout",
            &limits::DRAIN_TIMEOUT,
        ),
        kind,
    }
}

/// `forward` and the keys of its modes (`proxy_protocol`, `tunnel`, `second_chance`,
/// `source`): the mode, the packet data plane's mode with its options (`None`: proxy) and
/// the PROXY protocol header (tcp proxy only).
#[allow(clippy::too_many_lines)]
fn forwarding(
    c: &mut Checker<'_>,
    s: &RawService,
    name: &str,
    has_xdp: bool,
) -> (
    ForwardMode,
    Option<PacketForward>,
    Option<model::ProxyProtocol>,
) {
    let protocol = s.protocol.get_ref().0;
    let proto_name = protocol.as_str();
    let mode = s
        .forward
        .as_ref()
        .map_or(ForwardMode::Proxy, |f| f.get_ref().0);
    if let Some(f) = &s.forward {
        if mode != ForwardMode::Proxy {
            if matches!(protocol, ServiceProtocol::Http | ServiceProtocol::Dns) {
                c.err(
                    f.span(),
                    format!(
                        "forward = \"{}\" works only for tcp and udp services; `{name}` is {proto_name}",
                        mode.as_str()
                    ),
                    Some(format!("{proto_name} services use forward = \"proxy\"")),
                );
            } else if !has_xdp {
                c.err(
                    f.span(),
                    format!("forward = \"{}\" needs the packet data plane, but there is no [xdp] table", mode.as_str()),
                    Some("add [xdp] with interface = \"eth0\" (root, Linux), or use forward = \"proxy\"".into()),
                );
            }
        }
    }
    let proxy_protocol = s.proxy_protocol.as_ref().map(|pp| {
        if protocol != ServiceProtocol::Tcp {
            c.err(
                pp.span(),
                format!("proxy_protocol applies only to tcp services; `{name}` is {proto_name}"),
                Some("remove proxy_protocol, or use protocol = \"tcp\"".into()),
            );
        } else if mode != ForwardMode::Proxy {
            c.err(
                pp.span(),
                format!(
                    "proxy_protocol needs forward = \"proxy\"; `{name}` uses \"{}\"",
                    mode.as_str()
                ),
                Some(
                    "the packet data plane does not add PROXY headers; remove proxy_protocol"
                        .into(),
                ),
            );
        }
        pp.get_ref().0
    });
    let tunnel = &[ForwardMode::Tunnel];
    if let Some(t) = &s.tunnel {
        let help = "remove tunnel, or set forward = \"tunnel\"";
        mode_only(c, t.span(), "tunnel", tunnel, (mode, name), help);
    }
    let encap = s
        .tunnel
        .as_ref()
        .map_or(TunnelKind::Ipip, |t| t.get_ref().0);
    if let Some(sc) = &s.second_chance {
        let help = "remove second_chance";
        if mode_only(c, sc.span(), "second_chance", tunnel, (mode, name), help)
            && *sc.get_ref()
            && encap == TunnelKind::Ipip
        {
            c.err(
                sc.span(),
                format!(
                    "second_chance needs tunnel = \"gue\" (an IP-in-IP header has no room for the secondary backend); `{name}` uses \"ipip\""
                ),
                Some("set tunnel = \"gue\", or remove second_chance".into()),
            );
        }
    }
    if let Some(src) = &s.source {
        let modes = &[ForwardMode::Tunnel, ForwardMode::Nat];
        mode_only(
            c,
            src.span(),
            "source",
            modes,
            (mode, name),
            "remove source",
        );
    }
    let source = s.source.as_ref().map(|x| x.get_ref().0);
    let packet = match mode {
        ForwardMode::Proxy => None,
        ForwardMode::Dsr => Some(PacketForward::Dsr),
        ForwardMode::Tunnel => Some(PacketForward::Tunnel {
            encap: match encap {
                TunnelKind::Ipip => Encap::Ipip,
                TunnelKind::Gue => Encap::Gue {
                    second_chance: s.second_chance.as_ref().is_none_or(|v| *v.get_ref()),
                },
            },
            source,
        }),
        ForwardMode::Nat => Some(PacketForward::Nat { source }),
    };
    (mode, packet, proxy_protocol)
}

/// The keys only http services take (routes, `[service.tls]`, `[service.rate_limit]`,
/// `[service.retry]`, `[service.http2]`, the rules; `[service.timeouts]` is
/// [`timeouts`]'), each refused elsewhere; checked whatever the protocol, so every error
/// inside them is found too.
fn http_service(c: &mut Checker<'_>, s: &RawService, defined: &[&str], name: &str) -> HttpService {
    let protocol = s.protocol.get_ref().0;
    let proto_name = protocol.as_str();
    let is_http = protocol == ServiceProtocol::Http;
    let http_only = |c: &mut Checker<'_>, span: Range<usize>, what: &str| {
        if !is_http {
            c.err(
                span,
                format!("{what} applies only to http services; `{name}` is {proto_name}"),
                Some("remove it, or use protocol = \"http\"".into()),
            );
        }
    };
    let routes = s
        .route
        .iter()
        .map(|r| {
            http_only(c, r.span(), "[[service.route]]");
            route(c, r, defined, name)
        })
        .collect();
    let tls = s.tls.as_ref().map(|t| {
        http_only(c, t.span(), "[service.tls]");
        service_tls(c, t.get_ref())
    });
    let rate_limit = s.rate_limit.as_ref().map(|r| {
        http_only(c, r.span(), "[service.rate_limit]");
        let rl = r.get_ref();
        RateLimit {
            requests_per_second: rl.requests_per_second.non_zero(),
            burst: rl.burst.unwrap_or(rl.requests_per_second).non_zero(),
        }
    });
    let retry = s.retry.as_ref().map(|r| {
        http_only(c, r.span(), "[service.retry]");
        let r = r.get_ref();
        // Both in range: `RetryAttempts` and `Percent` are.
        RetryPolicy::new(
            r.attempts.map_or(defaults::HTTP_RETRY_ATTEMPTS, |a| a.0),
            r.budget.map_or(defaults::HTTP_RETRY_BUDGET, |b| b.0),
        )
        .unwrap_or_default()
    });
    let http2 = s.http2.as_ref().map(|h| {
        http_only(c, h.span(), "[service.http2]");
        http2_limits(h.get_ref())
    });
    let raw_rules = s.rules();
    if let Some(span) = raw_rules.first_span() {
        http_only(c, span, "a rule (docs/rules.md)");
    }
    let rules = super::rules::rules(&raw_rules, &mut c.errs);
    let dns_service = s.dns_service.as_ref().map(|d| {
        http_only(c, d.span(), "dns_service");
        d.get_ref().0.clone()
    });
    HttpService {
        routes,
        tls,
        rate_limit,
        timeouts: None,
        retry,
        http2,
        rules,
        access_log: None,
        dns_service,
    }
}

/// `dns_service` names a dns service of the same file.
fn check_dns_service(c: &mut Checker<'_>, raw: &RawConfig) {
    let mut dns: Vec<&str> = raw
        .service
        .iter()
        .map(Spanned::get_ref)
        .filter(|s| s.protocol.get_ref().0 == ServiceProtocol::Dns)
        .map(|s| s.name.get_ref().0.as_str())
        .collect();
    dns.sort_unstable();
    for s in raw.service.iter().map(Spanned::get_ref) {
        let Some(d) = &s.dns_service else {
            continue;
        };
        let want = d.get_ref().0.as_str();
        if dns.contains(&want) {
            continue;
        }
        let what = if raw
            .service
            .iter()
            .any(|o| o.get_ref().name.get_ref().0 == want)
        {
            "is not a dns service"
        } else {
            "does not exist"
        };
        let help = if dns.is_empty() {
            "no dns services are defined; add a [[service]] with protocol = \"dns\"".to_owned()
        } else {
            format!("dns services: {}", dns.join(", "))
        };
        c.err(
            d.span(),
            format!(
                "dns_service of service `{}` names `{want}`, which {what}",
                s.name.get_ref().0
            ),
            Some(help),
        );
    }
}

/// `[[service.sni_route]]`: tcp services with `forward = "proxy"` only.
fn sni_routes(
    c: &mut Checker<'_>,
    s: &RawService,
    defined: &[&str],
    name: &str,
    mode: ForwardMode,
) -> Vec<SniRoute> {
    let protocol = s.protocol.get_ref().0;
    let proto_name = protocol.as_str();
    s.sni_route
        .iter()
        .map(|r| {
            if protocol != ServiceProtocol::Tcp || mode != ForwardMode::Proxy {
                c.err(
                    r.span(),
                    format!("[[service.sni_route]] applies only to tcp services with forward = \"proxy\"; `{name}` is {proto_name} with forward = \"{}\"", mode.as_str()),
                    Some("TLS passthrough reads the ClientHello in the userspace proxy: use protocol = \"tcp\" (an http service terminates TLS with [service.tls])".into()),
                );
            }
            let raw = r.get_ref();
            pool_ref(c, &raw.pool, defined, &format!("an sni_route of service `{name}`"));
            SniRoute {
                sni: host_match(c, &raw.sni, "sni"),
                pool: raw.pool.get_ref().0.clone(),
            }
        })
        .collect()
}

/// `[service.timeouts]`: every key for http, `connect` alone for tcp with `forward =
/// "proxy"`, none for udp and dns.
fn timeouts(
    c: &mut Checker<'_>,
    s: &RawService,
    name: &str,
    mode: ForwardMode,
) -> Option<HttpTimeouts> {
    let protocol = s.protocol.get_ref().0;
    let proto_name = protocol.as_str();
    let t = s.timeouts.as_ref()?;
    let t_span = t.span();
    let t = t.get_ref();
    match protocol {
        ServiceProtocol::Http => {}
        // A tcp service connects to backends too: `connect` applies, the rest is HTTP's.
        ServiceProtocol::Tcp => {
            if mode != ForwardMode::Proxy {
                c.err(
                    t_span.clone(),
                    format!(
                        "[service.timeouts] needs forward = \"proxy\"; `{name}` uses \"{}\"",
                        mode.as_str()
                    ),
                    Some(
                        "the packet data plane makes no connections; remove [service.timeouts]"
                            .into(),
                    ),
                );
            }
            let http_keys = [
                ("response", &t.response),
                ("request_header", &t.request_header),
                ("tls_handshake", &t.tls_handshake),
            ];
            for (key, v) in http_keys {
                if let Some(v) = v {
                    c.err(
                        v.span(),
                        format!(
                            "[service.timeouts] {key} applies only to http services; \
                             `{name}` is tcp"
                        ),
                        Some("a tcp service takes only `connect` here".into()),
                    );
                }
            }
        }
        ServiceProtocol::Udp | ServiceProtocol::Dns => c.err(
            t_span,
            format!(
                "[service.timeouts] applies only to http and tcp services; `{name}` is \
                 {proto_name}"
            ),
            Some("remove it: a udp service does not connect to its backends".into()),
        ),
    }
    let mut get = |v: &Option<Spanned<HumanDuration>>, default, what| {
        dur(c, v.as_ref(), default, what, &limits::HTTP_TIMEOUT)
    };
    Some(HttpTimeouts {
        connect: get(&t.connect, defaults::HTTP_CONNECT_TIMEOUT, "connect"),
        response: get(&t.response, defaults::HTTP_RESPONSE_TIMEOUT, "response"),
        request_header: get(
            &t.request_header,
            defaults::HTTP_REQUEST_HEADER_TIMEOUT,
            "request_header",
        ),
        tls_handshake: get(
            &t.tls_handshake,
            defaults::HTTP_TLS_HANDSHAKE_TIMEOUT,
            "tls_handshake",
        ),
    })
}

/// A header name a TLS setting puts on requests: a non-empty HTTP token.
fn header_name(
    c: &mut Checker<'_>,
    v: Option<&Spanned<String>>,
    default: &str,
    key: &str,
) -> String {
    let Some(v) = v else {
        return default.to_owned();
    };
    let text = v.get_ref();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if text.is_empty() || !text.bytes().all(token) {
        c.err(
            v.span(),
            format!("{key} \"{text}\" is not a valid header name"),
            Some(format!(
                "letters, digits and !#$%&'*+-.^_`|~, e.g. {key} = \"{default}\""
            )),
        );
    }
    text.clone()
}

#[allow(clippy::single_match_else)]
fn service_tls(c: &mut Checker<'_>, t: &super::raw::RawTls) -> TlsConfig {
    let certs = &t.certs;
    if certs.get_ref().is_empty() {
        c.err(
            certs.span(),
            "[service.tls] certs is empty".into(),
            Some("list at least one { cert = \"site.pem\", key = \"site.key\" }".into()),
        );
    }
    let client_auth = match &t.client_ca {
        Some(ca) => Some(ClientAuth {
            ca: ca.get_ref().clone(),
            mode: t
                .client_auth
                .as_ref()
                .map_or(ClientAuthMode::Required, |m| m.get_ref().0),
            subject_header: header_name(
                c,
                t.client_subject_header.as_ref(),
                "X-Client-Subject",
                "client_subject_header",
            ),
            fingerprint_header: header_name(
                c,
                t.client_fingerprint_header.as_ref(),
                "X-Client-Fingerprint",
                "client_fingerprint_header",
            ),
        }),
        None => {
            let stray = [
                t.client_auth.as_ref().map(|v| (v.span(), "client_auth")),
                t.client_subject_header
                    .as_ref()
                    .map(|v| (v.span(), "client_subject_header")),
                t.client_fingerprint_header
                    .as_ref()
                    .map(|v| (v.span(), "client_fingerprint_header")),
            ];
            for (span, key) in stray.into_iter().flatten() {
                c.err(
                    span,
                    format!(
                        "{key} needs client_ca: the CA that client certificates are verified with"
                    ),
                    Some(
                        "add client_ca = \"clients-ca.pem\" to [service.tls], or remove it".into(),
                    ),
                );
            }
            None
        }
    };
    TlsConfig {
        certs: certs
            .get_ref()
            .iter()
            .map(|p| CertPair {
                cert: p.cert.clone(),
                key: p.key.clone(),
                ocsp: p.ocsp.clone(),
            })
            .collect(),
        client_auth,
        session_tickets: t.session_tickets.unwrap_or(true),
        session_ticket_rotation: dur(
            c,
            t.session_ticket_rotation.as_ref(),
            defaults::SESSION_TICKET_ROTATION,
            "session_ticket_rotation",
            &limits::SESSION_TICKET_ROTATION,
        ),
    }
}

/// An exact host name or `*.suffix` (routes' `host`, SNI routes' `sni`).
fn host_match(c: &mut Checker<'_>, h: &Spanned<String>, key: &str) -> HostMatch {
    let text = h.get_ref().to_ascii_lowercase();
    let (wild, rest) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    if !is_host_name(rest) {
        c.err(
            h.span(),
            format!("invalid {key} \"{}\"", h.get_ref()),
            Some("a host name without port, exact (\"api.example.com\") or a wildcard (\"*.example.com\")".into()),
        );
    }
    if wild {
        HostMatch::Suffix(format!(".{rest}"))
    } else {
        HostMatch::Exact(text.clone())
    }
}

/// A DNS name as the config writes it: lower-cased, without the final dot, or why it is
/// not one.
fn dns_name_text(text: &str) -> Result<String, String> {
    let t = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if t.is_empty() {
        return Err("is empty".into());
    }
    if t.len() > 253 {
        return Err(format!("is {} characters long; at most 253", t.len()));
    }
    for label in t.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "has a label of {} characters; each must be 1 to 63",
                label.len()
            ));
        }
        if let Some(ch) = label
            .chars()
            .find(|ch| !(ch.is_ascii_alphanumeric() || *ch == '-' || *ch == '_'))
        {
            return Err(format!(
                "holds {ch:?}; labels use letters, digits, '-' and '_'"
            ));
        }
    }
    Ok(t)
}

/// Whether `name` is `origin` or below it.
fn in_zone(name: &str, origin: &str) -> bool {
    name == origin
        || name
            .strip_suffix(origin)
            .is_some_and(|head| head.ends_with('.'))
}

/// The dns keys of a service: required and checked for dns, refused for the others.
#[allow(clippy::too_many_lines)]
fn dns(
    c: &mut Checker<'_>,
    s: &RawService,
    defined: &[&str],
    service: &str,
) -> Option<super::DnsConfig> {
    let protocol = s.protocol.get_ref().0;
    if protocol != ServiceProtocol::Dns {
        let keys = [
            (
                "[[service.dns_name]]",
                s.dns_name.first().map(Spanned::span),
            ),
            ("[service.dns_zone]", s.dns_zone.as_ref().map(Spanned::span)),
            ("[service.dns_rrl]", s.dns_rrl.as_ref().map(Spanned::span)),
        ];
        for (what, span) in keys {
            if let Some(span) = span {
                c.err(
                    span,
                    format!(
                        "{what} applies only to dns services; `{service}` is {}",
                        protocol.as_str()
                    ),
                    Some("remove it, or use protocol = \"dns\"".into()),
                );
            }
        }
        return None;
    }
    let name_of = |c: &mut Checker<'_>, v: &Spanned<String>, what: &str| {
        dns_name_text(v.get_ref()).unwrap_or_else(|why| {
            c.err(
                v.span(),
                format!("{what} \"{}\" {why}", v.get_ref()),
                Some("write a DNS name such as \"www.example.test\"".into()),
            );
            String::new()
        })
    };
    let Some(zone) = &s.dns_zone else {
        c.err(
            s.protocol.span(),
            format!("dns service `{service}` has no [service.dns_zone]"),
            Some("add [service.dns_zone] with origin = \"example.test\" and ns = [\"ns1.example.test\"]".into()),
        );
        return None;
    };
    let z = zone.get_ref();
    let origin = name_of(c, &z.origin, "origin");
    if z.ns.get_ref().is_empty() {
        c.err(
            z.ns.span(),
            "[service.dns_zone] ns is empty".into(),
            Some("list the zone's name servers, e.g. ns = [\"ns1.example.test\"]".into()),
        );
    }
    let ns = z.ns.get_ref().iter().map(|n| name_of(c, n, "ns")).collect();
    let mut names: Vec<super::DnsName> = Vec::new();
    for d in &s.dns_name {
        let d = d.get_ref();
        let name = name_of(c, &d.name, "dns_name");
        if !name.is_empty() && !origin.is_empty() && !in_zone(&name, &origin) {
            c.err(
                d.name.span(),
                format!("dns_name \"{name}\" is not in the zone \"{origin}\""),
                Some(format!(
                    "use a name ending in .{origin}, or change [service.dns_zone] origin"
                )),
            );
        }
        if names.iter().any(|n| n.name == name && !name.is_empty()) {
            c.err(
                d.name.span(),
                format!("dns_name \"{name}\" is listed twice in service `{service}`"),
                Some("list each name once".into()),
            );
        }
        if let Some(p) = &d.pool {
            pool_ref(
                c,
                p,
                defined,
                &format!("dns_name \"{name}\" of service `{service}`"),
            );
        }
        let max_answers = d
            .max_answers
            .as_ref()
            .map_or(defaults::DNS_MAX_ANSWERS, |m| {
                // `Count<DNS_MAX_ANSWERS>`: 1..=64.
                u8::try_from(m.get_ref().get())
                    .ok()
                    .and_then(std::num::NonZeroU8::new)
                    .unwrap_or(std::num::NonZeroU8::MAX)
            });
        names.push(super::DnsName {
            pool: d
                .pool
                .as_ref()
                .map_or_else(|| s.pool.get_ref().0.clone(), |p| p.get_ref().0.clone()),
            ttl: dur(
                c,
                d.ttl.as_ref(),
                defaults::DNS_TTL,
                "ttl",
                &limits::DNS_TTL,
            ),
            max_answers,
            name,
        });
    }
    let rrl = s.dns_rrl.as_ref().map_or(super::DnsRrl::default(), |r| {
        let r = r.get_ref();
        let slip = r.slip.as_ref().map_or(defaults::DNS_RRL_SLIP, |v| {
            let slip = *v.get_ref();
            if !limits::DNS_SLIP.contains(&slip) {
                c.err(
                    v.span(),
                    format!("slip {slip} is out of range"),
                    Some(format!(
                        "valid: {} to {}",
                        limits::DNS_SLIP.start(),
                        limits::DNS_SLIP.end()
                    )),
                );
            }
            slip
        });
        super::DnsRrl {
            responses_per_second: r
                .responses_per_second
                .map_or(defaults::DNS_RRL_RESPONSES_PER_SECOND, Count::non_zero),
            slip,
        }
    });
    Some(super::DnsConfig {
        origin,
        ns,
        names,
        rrl,
    })
}

fn route(c: &mut Checker<'_>, r: &Spanned<RawRoute>, defined: &[&str], service: &str) -> Route {
    let raw = r.get_ref();
    pool_ref(
        c,
        &raw.pool,
        defined,
        &format!("a route of service `{service}`"),
    );
    if raw.host.is_none() && raw.path_prefix.is_none() {
        c.err(
            r.span(),
            "this route has neither host nor path_prefix, so it would match every request".into(),
            Some(
                "set host and/or path_prefix; requests no route matches go to the service's `pool`"
                    .into(),
            ),
        );
    }
    let host = raw.host.as_ref().map(|h| host_match(c, h, "route host"));
    let path_prefix = raw
        .path_prefix
        .as_ref()
        .map(|p| url_path(c, p, "path_prefix", "path_prefix = \"/v1/\""));
    Route {
        host,
        path_prefix,
        pool: raw.pool.get_ref().0.clone(),
        rules: super::rules::rules(&raw.rules(), &mut c.errs),
    }
}

/// `[service.http2]`: each limit, or its default.
fn http2_limits(h: &RawHttp2) -> Http2Limits {
    use super::defaults as d;
    Http2Limits {
        max_concurrent_streams: count(h.max_concurrent_streams, d::H2_MAX_CONCURRENT_STREAMS),
        max_header_list_size: count(h.max_header_list_size, d::H2_MAX_HEADER_LIST_SIZE),
        max_resets_per_second: count(h.max_resets_per_second, d::H2_MAX_RESETS_PER_SECOND),
        max_control_frames_per_second: count(
            h.max_control_frames_per_second,
            d::H2_MAX_CONTROL_FRAMES_PER_SECOND,
        ),
    }
}

/// A count key's value, or `default` when absent.
fn count<const MAX: u32>(v: Option<Count<MAX>>, default: NonZeroU32) -> NonZeroU32 {
    v.map_or(default, Count::non_zero)
}

/// A key (`what`) that applies only to the forward modes `modes`: an error when service
/// `name`'s `mode` is another. Returns whether it applies.
fn mode_only(
    c: &mut Checker<'_>,
    span: Range<usize>,
    what: &str,
    modes: &[ForwardMode],
    (mode, name): (ForwardMode, &str),
    help: &str,
) -> bool {
    if modes.contains(&mode) {
        return true;
    }
    let modes: Vec<String> = modes
        .iter()
        .map(|m| format!("\"{}\"", m.as_str()))
        .collect();
    c.err(
        span,
        format!(
            "{what} applies only to forward = {}; `{name}` uses \"{}\"",
            modes.join(" or "),
            mode.as_str()
        ),
        Some(help.into()),
    );
    false
}

/// A URL path (`what`, e.g. `path_prefix`): it starts with '/'.
fn url_path(c: &mut Checker<'_>, p: &Spanned<String>, what: &str, example: &str) -> String {
    if !p.get_ref().starts_with('/') {
        c.err(
            p.span(),
            format!("{what} \"{}\" does not start with '/'", p.get_ref()),
            Some(format!("e.g. {example}")),
        );
    }
    p.get_ref().clone()
}

/// Letters, digits, '-', '.' and '_' (a host name, without port), not empty.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.' || ch == '_')
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch))
}

/// A service using a pool: its name and protocol.
type User<'a> = (&'a str, ServiceProtocol);

fn pool(c: &mut Checker<'_>, p: &RawPool, users: &[User<'_>]) -> PoolConfig {
    let name = p.name.get_ref().0.clone();
    let scheduler = p
        .scheduler
        .as_ref()
        .map_or(defaults::SCHEDULER, |s| s.get_ref().0);
    let non_http_user = users
        .iter()
        .find(|(_, proto)| *proto != ServiceProtocol::Http);

    let scheduler = self::scheduler(c, p, scheduler, &name, non_http_user);
    let user = PoolUse {
        name: &name,
        non_http_user,
    };
    let sticky_cookie = p.sticky_cookie.as_ref().map(|sc| user.sticky_cookie(c, sc));
    let backend_protocol = user.backend_protocol(c, p);
    let tls = user.tls(c, p, backend_protocol);
    let health = p.health.as_ref().and_then(|h| health(c, h.get_ref()));
    let outlier = p
        .outlier
        .as_ref()
        .map_or_else(OutlierConfig::default, |o| outlier(c, o));
    let backends = backends(c, p, &name);
    let discovery = p.discovery.as_ref().map(|d| discovery(c, d));
    let locality = p.locality.as_ref().and_then(|l| locality(c, l, &name));

    // A pool may be empty (as an ipvsadm service without real servers, or an HAProxy backend
    // without servers): its services refuse clients until a backend is added at run time.

    PoolConfig {
        name,
        scheduler,
        persistence: Some(dur(
            c,
            p.persistence.as_ref(),
            Duration::ZERO,
            "persistence",
            &limits::PERSISTENCE,
        ))
        .filter(|d| !d.is_zero()),
        sticky_cookie,
        backend_protocol,
        health,
        outlier,
        backends,
        discovery,
        locality,
        tls,
    }
}

/// A pool's name and a service using it that is not http, for the checks of its
/// HTTP-only keys.
struct PoolUse<'a> {
    name: &'a str,
    non_http_user: Option<&'a User<'a>>,
}

impl PoolUse<'_> {
    /// `sticky_cookie`: a cookie name, on a pool only http services use.
    fn sticky_cookie(&self, c: &mut Checker<'_>, sc: &Spanned<String>) -> String {
        let (pool, non_http_user) = (self.name, self.non_http_user);
        if !is_token(sc.get_ref()) {
            c.err(
                sc.span(),
                format!("invalid cookie name \"{}\"", sc.get_ref()),
                Some(
                    "a cookie name of letters, digits and !#$%&'*+-.^_`|~, e.g. \"FULCRUM_SRV\""
                        .into(),
                ),
            );
        } else if let Some((svc, proto)) = non_http_user {
            c.err(
                sc.span(),
                format!(
                    "sticky_cookie needs HTTP, but {} service `{svc}` uses pool `{pool}`",
                    proto.as_str()
                ),
                Some("remove sticky_cookie, or use this pool only from http services".into()),
            );
        }
        sc.get_ref().clone()
    }

    /// `backend_protocol`: HTTP/2 only for http services, and `h2` only with `[pool.tls]`.
    fn backend_protocol(&self, c: &mut Checker<'_>, p: &RawPool) -> BackendProtocol {
        let (pool, non_http_user) = (self.name, self.non_http_user);
        let Some(bp) = &p.backend_protocol else {
            return BackendProtocol::default();
        };
        let proto = bp.get_ref().0;
        if let (true, Some((svc, sp))) = (proto.is_h2(), non_http_user) {
            c.err(
            bp.span(),
            format!(
                "backend_protocol = \"{}\" needs HTTP, but {} service `{svc}` uses pool `{pool}`",
                proto.as_str(),
                sp.as_str()
            ),
            Some("use backend_protocol = \"http1\" (or remove it), or use this pool only from http services".into()),
        );
        }
        if proto == BackendProtocol::H2 && p.tls.is_none() {
            c.err(
            bp.span(),
            format!("backend_protocol = \"h2\" is HTTP/2 over TLS, but pool `{pool}` has no [pool.tls]"),
            Some("add [pool.tls] with the backends' ca, or use backend_protocol = \"h2c\" for cleartext HTTP/2".into()),
        );
        }
        proto
    }

    /// `[pool.tls]`: TLS to the backends, for http services and not with `h2c`.
    fn tls(&self, c: &mut Checker<'_>, p: &RawPool, proto: BackendProtocol) -> Option<BackendTls> {
        let (pool, non_http_user) = (self.name, self.non_http_user);
        let t = p.tls.as_ref()?;
        let raw = t.get_ref();
        if let Some((svc, sp)) = non_http_user {
            c.err(
                t.span(),
                format!(
                    "[pool.tls] needs HTTP, but {} service `{svc}` uses pool `{pool}`",
                    sp.as_str()
                ),
                Some(
                    "use this pool only from http services (a tcp service relays TLS as it is)"
                        .into(),
                ),
            );
        }
        if proto == BackendProtocol::H2c {
            c.err(
            t.span(),
            format!("[pool.tls] cannot be used with backend_protocol = \"h2c\" (cleartext HTTP/2) in pool `{pool}`"),
            Some("use backend_protocol = \"h2\" (HTTP/2 over TLS) or \"http1\" with [pool.tls]".into()),
        );
        }
        let client_cert = match (&raw.cert, &raw.key) {
            (Some(cert), Some(key)) => Some((cert.get_ref().clone(), key.get_ref().clone())),
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                c.err(
                v.span(),
                "[pool.tls] cert and key go together: the client certificate and its private key"
                    .into(),
                Some("set both cert = \"client.pem\" and key = \"client.key\", or neither".into()),
            );
                None
            }
        };
        let sni = raw.sni.as_ref().map(|v| {
        if !is_host_name(v.get_ref()) {
            c.err(
                v.span(),
                format!("invalid sni \"{}\"", v.get_ref()),
                Some("a DNS name the backends' certificates are for, e.g. sni = \"backend.internal\"".into()),
            );
        }
        v.get_ref().to_ascii_lowercase()
    });
        Some(BackendTls {
            ca: raw.ca.get_ref().clone(),
            sni,
            client_cert,
        })
    }
}

/// `[pool.outlier]`: passive ejection.
fn outlier(c: &mut Checker<'_>, o: &RawOutlier) -> OutlierConfig {
    let ejection = dur(
        c,
        o.ejection.as_ref(),
        defaults::OUTLIER_EJECTION,
        "ejection",
        &limits::OUTLIER_EJECTION,
    );
    OutlierConfig {
        consecutive_failures: o
            .consecutive_failures
            .map_or(defaults::OUTLIER_CONSECUTIVE_FAILURES, Count::non_zero),
        ejection,
    }
}

/// The pool's backends: unique addresses (canonical form, so `::ffff:1.2.3.4` equals
/// `1.2.3.4`).
fn backends(c: &mut Checker<'_>, p: &RawPool, pool: &str) -> Vec<Backend> {
    let mut seen: HashMap<String, Range<usize>> = HashMap::new();
    let mut backends = Vec::with_capacity(p.backend.len());
    for b in &p.backend {
        let b = b.get_ref();
        let addr = b.address.get_ref().0;
        let key = canonical_addr(&addr);
        if let Some(first) = seen.get(&key) {
            let line = c.line(first);
            c.err(
                b.address.span(),
                format!("backend {key} is listed twice in pool `{pool}` (first at line {line})"),
                Some("each address appears once per pool; use weight to send it more".into()),
            );
        } else {
            seen.insert(key, b.address.span());
        }
        let weight = b
            .weight
            .map_or(defaults::BACKEND_WEIGHT, |w| w.0.get() as u16);
        backends.push(
            Backend::new(addr, weight).in_zone(b.zone.as_ref().map(|z| model::Zone::new(&z.0))),
        );
    }
    backends
}

/// `[pool.discovery]`: at least one source.
fn discovery(c: &mut Checker<'_>, d: &Spanned<RawDiscovery>) -> Discovery {
    let raw = d.get_ref();
    if raw.dns.is_none() && raw.srv.is_none() && raw.file.is_none() && raw.etcd.is_none() {
        c.err(
            d.span(),
            "[pool.discovery] names no source".into(),
            Some(
                "set dns = \"NAME:PORT\", srv = \"_http._tcp.NAME\", file = \"PATH\" and/or etcd = \"/services/web/\""
                    .into(),
            ),
        );
    }
    if let Some(srv) = &raw.srv {
        if srv.get_ref().is_empty() {
            c.err(
                srv.span(),
                "srv name is empty".into(),
                Some("e.g. srv = \"_http._tcp.backends.internal\"".into()),
            );
        }
    }
    Discovery {
        dns: raw.dns.clone(),
        srv: raw.srv.as_ref().map(|s| s.get_ref().clone()),
        file: raw.file.clone(),
        etcd: raw.etcd.clone(),
        nameserver: raw.nameserver.map(|n| n.0),
    }
}

/// The scheduler with its options: `hash_key` and `maglev_table_size` (see
/// [`sched_options`] for the others).
fn scheduler(
    c: &mut Checker<'_>,
    p: &RawPool,
    scheduler: model::SchedulerKind,
    name: &str,
    non_http_user: Option<&(&str, ServiceProtocol)>,
) -> SchedulerConfig {
    let sched_name = scheduler.as_str();
    let hash_key = if let Some(hk) = &p.hash_key {
        let key = &hk.get_ref().0;
        if !scheduler.is_hashing() {
            c.err(
                hk.span(),
                format!("hash_key applies only to the hashing schedulers sh, maglev, ring_hash; pool `{name}` uses \"{sched_name}\""),
                Some("remove hash_key, or set scheduler = \"sh\", \"maglev\" or \"ring_hash\"".into()),
            );
        } else if let (true, Some((svc, proto))) = (key.is_http_only(), non_http_user) {
            c.err(
                hk.span(),
                format!("hash_key \"{key}\" needs HTTP, but {} service `{svc}` uses pool `{name}`", proto.as_str()),
                Some("use src_ip, src_ip_port or five_tuple, or use this pool only from http services".into()),
            );
        }
        scheduler.is_hashing().then(|| key.clone())
    } else {
        scheduler.is_hashing().then_some(model::HashKey::SrcIp)
    };

    if let (Some(ts), false) = (
        &p.maglev_table_size,
        scheduler == model::SchedulerKind::Maglev,
    ) {
        c.err(
            ts.span(),
            format!("maglev_table_size applies only to scheduler = \"maglev\"; pool `{name}` uses \"{sched_name}\""),
            Some("remove maglev_table_size, or set scheduler = \"maglev\"".into()),
        );
    }
    let maglev_table_size = (scheduler == model::SchedulerKind::Maglev).then(|| {
        let size = p
            .maglev_table_size
            .as_ref()
            .map_or(PrimeTableSize::DEFAULT, |ts| ts.get_ref().0);
        // Every backend needs a slot, whether the size was written or is the default (else
        // some backends would get no traffic, and the saved config would not load).
        let n = p.backend.len();
        if (size.get() as usize) < n {
            let (span, what) = match &p.maglev_table_size {
                Some(ts) => (ts.span(), format!("maglev_table_size {}", size.get())),
                None => (
                    p.name.span(),
                    format!("the default maglev_table_size {}", size.get()),
                ),
            };
            let max = *limits::MAGLEV_TABLE_SIZE.end();
            let help = if n > max as usize {
                format!("a maglev pool holds at most {max} backends (the largest table); split the pool or use scheduler = \"ring_hash\"")
            } else {
                let advised = u32::try_from(n.saturating_mul(100))
                    .ok()
                    .and_then(model::next_prime)
                    .filter(|a| *a <= max)
                    .unwrap_or(max);
                format!("set maglev_table_size to a prime of at least the number of backends, at most {max}; 100 x backends is advised, e.g. {advised}")
            };
            c.err(
                span,
                format!("{what} is smaller than the number of backends ({n}) of pool `{name}`"),
                Some(help),
            );
        }
        size
    });

    let (slow_start, balancing) = sched_options(c, p, scheduler, name);
    match (SchedulerConfig::of(scheduler), balancing) {
        (SchedulerConfig::Hashing { kind, .. }, _) => SchedulerConfig::Hashing {
            kind: match (kind, maglev_table_size) {
                (HashingScheduler::Maglev { .. }, Some(table_size)) => {
                    HashingScheduler::Maglev { table_size }
                }
                (other, _) => other,
            },
            hash_key: hash_key.unwrap_or(model::HashKey::SrcIp),
        },
        (SchedulerConfig::Balancing { kind, .. }, balancing) => SchedulerConfig::Balancing {
            kind: balancing.unwrap_or(kind),
            slow_start,
        },
    }
}

const LOCALITY_HELP: &str = "either weights = { a = 90, b = 5, c = 5 } (optionally controlled = true), or prefer = \"local\" (optionally spill_below = 70)";

fn locality(
    c: &mut Checker<'_>,
    l: &Spanned<super::raw::RawLocality>,
    pool: &str,
) -> Option<crate::locality::Locality> {
    use crate::locality::Locality;
    let raw = l.get_ref();
    match (&raw.weights, &raw.prefer) {
        (Some(w), None) => {
            if let Some(s) = &raw.spill_below {
                c.err(
                    s.span(),
                    format!("spill_below applies only to prefer = \"local\" (pool `{pool}` has weights)"),
                    Some(LOCALITY_HELP.into()),
                );
            }
            let mut weights = std::collections::BTreeMap::new();
            for (zone, weight) in w.get_ref() {
                let name = zone.get_ref();
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch));
                if ok {
                    weights.insert(model::Zone::new(name), weight.0);
                } else {
                    c.err(
                        zone.span(),
                        format!("invalid zone name \"{name}\" in pool `{pool}`"),
                        Some(
                            "zone names are 1 to 64 characters of A-Z, a-z, 0-9, '_', '-', '.'"
                                .into(),
                        ),
                    );
                }
            }
            if weights.values().all(|w| *w == 0) {
                c.err(
                    w.span(),
                    format!(
                        "[pool.locality] weights of pool `{pool}` give no zone a weight above 0"
                    ),
                    Some("name at least one zone with a weight of 1 or more".into()),
                );
                return None;
            }
            Some(Locality::Weights {
                weights,
                controlled: raw.controlled.as_ref().is_some_and(|b| *b.get_ref()),
            })
        }
        (None, Some(_)) => {
            if let Some(ctl) = &raw.controlled {
                c.err(
                    ctl.span(),
                    format!("controlled applies only to weights (pool `{pool}` has prefer)"),
                    Some(LOCALITY_HELP.into()),
                );
            }
            let spill_below = raw
                .spill_below
                .as_ref()
                .map_or(crate::locality::DEFAULT_SPILL_BELOW, |s| s.get_ref().0);
            if spill_below == 0 {
                c.err(
                    raw.spill_below.as_ref().map_or(l.span(), Spanned::span),
                    "spill_below = 0 would never spill".into(),
                    Some("use 1..=100 (percent; default 70)".into()),
                );
            }
            Some(Locality::PreferLocal { spill_below })
        }
        (Some(w), Some(_)) => {
            c.err(
                w.span(),
                format!("[pool.locality] of pool `{pool}` has both weights and prefer"),
                Some(LOCALITY_HELP.into()),
            );
            None
        }
        (None, None) => {
            c.err(
                l.span(),
                format!("[pool.locality] of pool `{pool}` has neither weights nor prefer"),
                Some(LOCALITY_HELP.into()),
            );
            None
        }
    }
}

/// `slow_start` and `[pool.scheduler_options]`: each option only with the schedulers it
/// applies to, every value in its range. Returns the slow-start window and, for a
/// non-hashing scheduler, the scheduler with its options.
fn sched_options(
    c: &mut Checker<'_>,
    p: &RawPool,
    scheduler: model::SchedulerKind,
    name: &str,
) -> (Option<Duration>, Option<BalancingScheduler>) {
    use crate::sched::option_defaults as d;
    use model::SchedulerKind as K;
    let sched_name = scheduler.as_str();
    let slow_start = p.slow_start.as_ref().map(|ss| {
        if scheduler.is_hashing() {
            c.err(
                ss.span(),
                format!("slow_start does not apply to the hashing scheduler \"{sched_name}\" of pool `{name}` (ramping a backend would move keys)"),
                Some("remove slow_start, or use a non-hashing scheduler such as \"wrr\", \"least_request\" or \"peak_ewma\"".into()),
            );
        }
        dur(c, Some(ss), Duration::from_secs(30), "slow_start", &limits::SLOW_START)
    });
    let (mut half_life, mut horizon) = (d::HALF_LIFE, d::HORIZON);
    let mut bias = super::ActiveRequestBias::DEFAULT;
    if let Some(raw) = &p.scheduler_options {
        let raw = raw.get_ref();
        let applies = |c: &mut Checker<'_>, span: Range<usize>, key: &str, to: &[K]| {
            if !to.contains(&scheduler) {
                let names: Vec<&str> = to.iter().map(|k| k.as_str()).collect();
                c.err(
                    span,
                    format!("scheduler_options.{key} applies only to scheduler = {}; pool `{name}` uses \"{sched_name}\"", names.join(" or ")),
                    Some(format!("remove {key}, or set scheduler = \"{}\"", names[0])),
                );
            }
        };
        if let Some(hl) = &raw.half_life {
            applies(c, hl.span(), "half_life", &[K::PeakEwma, K::Predictive]);
            half_life = dur(c, Some(hl), half_life, "half_life", &limits::HALF_LIFE);
        }
        if let Some(hz) = &raw.horizon {
            applies(c, hz.span(), "horizon", &[K::Predictive]);
            horizon = dur(c, Some(hz), horizon, "horizon", &limits::HORIZON);
        }
        if let Some(b) = &raw.active_request_bias {
            applies(c, b.span(), "active_request_bias", &[K::LeastRequest]);
            let value = *b.get_ref();
            if let Some(v) = super::ActiveRequestBias::new(value) {
                bias = v;
            } else {
                let range = limits::ACTIVE_REQUEST_BIAS;
                c.err(
                    b.span(),
                    format!("active_request_bias {value} is out of range"),
                    Some(format!("valid: {}..={} (0 ignores load, 1 is Envoy's default), e.g. active_request_bias = 1.0", range.start(), range.end())),
                );
            }
        }
    }
    let balancing = match SchedulerConfig::of(scheduler) {
        SchedulerConfig::Hashing { .. } => None,
        SchedulerConfig::Balancing { kind, .. } => Some(match kind {
            BalancingScheduler::LeastRequest { .. } => BalancingScheduler::LeastRequest {
                active_request_bias: bias,
            },
            BalancingScheduler::PeakEwma { .. } => BalancingScheduler::PeakEwma { half_life },
            BalancingScheduler::Predictive { .. } => {
                BalancingScheduler::Predictive { half_life, horizon }
            }
            other => other,
        }),
    };
    (slow_start, balancing)
}

fn health(c: &mut Checker<'_>, h: &RawHealth) -> Option<HealthConfig> {
    let kind = h.check.as_ref().map_or(CheckKind::Tcp, |k| k.get_ref().0);
    if kind != CheckKind::Http {
        if let Some(p) = &h.path {
            c.err(
                p.span(),
                format!(
                    "path applies only to check = \"http\"; this check is \"{}\"",
                    kind.as_str()
                ),
                Some("remove path, or set check = \"http\"".into()),
            );
        }
        if let Some(e) = &h.expect_status {
            c.err(
                e.span(),
                format!(
                    "expect_status applies only to check = \"http\"; this check is \"{}\"",
                    kind.as_str()
                ),
                Some("remove expect_status, or set check = \"http\"".into()),
            );
        }
    }
    let interval = dur(
        c,
        h.interval.as_ref(),
        defaults::HEALTH_INTERVAL,
        "interval",
        &limits::HEALTH_INTERVAL,
    );
    let timeout = dur(
        c,
        h.timeout.as_ref(),
        defaults::health_timeout(interval),
        "timeout",
        &limits::HEALTH_TIMEOUT,
    );
    // An absent timeout is derived from the interval (always shorter), so only a written
    // one can be too long.
    if let Some(t) = &h.timeout {
        if !interval.is_zero() && !timeout.is_zero() && timeout >= interval {
            c.err(
                t.span(),
                format!(
                    "health check timeout {} must be shorter than the interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
                Some("a check must finish before the next one starts; e.g. interval = \"1s\", timeout = \"500ms\"".into()),
            );
        }
    }
    let check = match kind {
        CheckKind::None => return None,
        CheckKind::Tcp => HealthCheck::Tcp,
        CheckKind::Http => {
            let path = h.path.as_ref().map_or_else(
                || defaults::HEALTH_PATH.to_owned(),
                |p| url_path(c, p, "health check path", "path = \"/healthz\""),
            );
            HealthCheck::Http {
                path,
                expect_status: h
                    .expect_status
                    .as_ref()
                    .map_or(StatusRange::DEFAULT, |e| *e.get_ref()),
            }
        }
    };
    Some(HealthConfig {
        check,
        interval,
        timeout,
        rise: h.rise.map_or(defaults::HEALTH_RISE, Count::non_zero),
        fall: h.fall.map_or(defaults::HEALTH_FALL, Count::non_zero),
    })
}

/// A duration key's value (or `default` when absent), checked against its `range`.
fn dur(
    c: &mut Checker<'_>,
    v: Option<&Spanned<super::value::HumanDuration>>,
    default: Duration,
    what: &str,
    range: &RangeInclusive<Duration>,
) -> Duration {
    let Some(d) = v else {
        return default;
    };
    let value = d.get_ref().0;
    let shown = humantime::format_duration(value);
    let valid = limits::show(range);
    let problem = if value.is_zero() && !range.contains(&value) {
        Some(format!("{what} must be longer than 0"))
    } else if value < *range.start() {
        Some(format!("{what} {shown} is too short"))
    } else if value > *range.end() {
        Some(format!("{what} {shown} is too long"))
    } else {
        None
    };
    if let Some(message) = problem {
        c.err(
            d.span(),
            message,
            Some(format!(
                "valid: {valid}, e.g. {what} = \"{}\"",
                humantime::format_duration(default)
            )),
        );
    }
    value
}

/// `[service.access_log]`: http services log requests, tcp/udp services (`forward =
/// "proxy"`) log connections and flows.
fn access_log(
    c: &mut Checker<'_>,
    a: &Spanned<super::raw::RawAccessLog>,
    protocol: ServiceProtocol,
    mode: ForwardMode,
    name: &str,
) -> AccessLog {
    use super::AccessLogFormat as F;
    let is_http = protocol == ServiceProtocol::Http;
    if protocol == ServiceProtocol::Dns {
        c.err(
            a.span(),
            format!(
                "[service.access_log] applies only to http, tcp and udp services; `{name}` is \
                 dns, whose answers are counted in the metrics, not logged"
            ),
            Some("remove [service.access_log]".into()),
        );
    } else if mode != ForwardMode::Proxy {
        c.err(
            a.span(),
            format!(
                "[service.access_log] needs forward = \"proxy\"; `{name}` forwards packets \
                 in the kernel, which logs no connection"
            ),
            Some("remove [service.access_log], or use forward = \"proxy\"".into()),
        );
    }
    let al = a.get_ref();
    let format = match &al.format {
        None if is_http => F::Combined,
        None => F::Tcplog,
        Some(f) => {
            let v = f.get_ref().0;
            let bad = match v {
                F::Combined if !is_http => Some("\"json\" or \"tcplog\""),
                F::Tcplog if is_http => Some("\"json\" or \"combined\""),
                _ => None,
            };
            if let Some(valid) = bad {
                c.err(
                    f.span(),
                    format!(
                        "access log format \"{}\" does not apply to `{name}`, a {} service",
                        v.as_str(),
                        protocol.as_str()
                    ),
                    Some(format!("valid here: {valid}")),
                );
            }
            v
        }
    };
    let fields = al
        .fields
        .as_ref()
        .map(|fs| log_fields(c, fs, format, protocol, name));
    let target = log_target(c, al);
    if let (Some(f), false) = (&al.facility, matches!(target, LogTarget::Syslog { .. })) {
        c.err(
            f.span(),
            "facility applies only with syslog".into(),
            Some("add syslog = \"unix:/dev/log\", or remove facility".into()),
        );
    }
    AccessLog {
        format,
        target,
        fields,
    }
}

/// `unix:PATH` or `udp:IP:PORT`.
fn syslog_dest(s: &str) -> Result<SyslogDest, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if !p.starts_with('/') {
            return Err("a unix socket path must be absolute".into());
        }
        return Ok(SyslogDest::Unix(p.into()));
    }
    if let Some(a) = s.strip_prefix("udp:") {
        let addr: SocketAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP:PORT address"))?;
        if addr.port() == 0 {
            return Err("port 0".into());
        }
        return Ok(SyslogDest::Udp(addr));
    }
    Err("not unix:PATH or udp:IP:PORT".into())
}

/// `[service.access_log] fields`: each one valid for the service's protocol, once.
fn log_fields(
    c: &mut Checker<'_>,
    fs: &Spanned<Vec<Spanned<super::value::LogFieldValue>>>,
    format: super::AccessLogFormat,
    protocol: ServiceProtocol,
    name: &str,
) -> Vec<LogField> {
    use super::AccessLogFormat as F;
    let is_http = protocol == ServiceProtocol::Http;
    if format != F::Json {
        c.err(
            fs.span(),
            format!(
                "fields choose the keys of format = \"json\"; \"{}\" is a fixed format",
                format.as_str()
            ),
            Some("use format = \"json\", or remove fields".into()),
        );
    }
    if fs.get_ref().is_empty() {
        c.err(
            fs.span(),
            "fields is empty".into(),
            Some("name at least one field, or remove fields for the default set".into()),
        );
    }
    let ok = |f: LogField| if is_http { f.for_http() } else { f.for_l4() };
    let valid: Vec<&str> = LogField::ALL
        .iter()
        .filter(|f| ok(**f))
        .map(|f| f.as_str())
        .collect();
    let mut out: Vec<LogField> = Vec::new();
    for f in fs.get_ref() {
        let v = f.get_ref().0;
        if !ok(v) {
            c.err(
                f.span(),
                format!(
                    "access log field \"{}\" does not apply to `{name}`, a {} service",
                    v.as_str(),
                    protocol.as_str()
                ),
                Some(format!("valid: {}", valid.join(", "))),
            );
        } else if out.contains(&v) {
            c.err(
                f.span(),
                format!("access log field \"{}\" is named twice", v.as_str()),
                None,
            );
        } else {
            out.push(v);
        }
    }
    out
}

/// `[service.access_log]` `path` or `syslog` (with `facility`).
fn log_target(c: &mut Checker<'_>, al: &super::raw::RawAccessLog) -> LogTarget {
    let facility = al
        .facility
        .as_ref()
        .map_or(SyslogFacility::LOCAL0, |f| f.get_ref().0);
    match (&al.syslog, &al.path) {
        (Some(_), Some(p)) => {
            c.err(
                p.span(),
                "access_log has both path and syslog".into(),
                Some("keep one: a file (or \"-\" for stderr), or syslog".into()),
            );
            LogTarget::Stderr
        }
        (Some(sl), None) => match syslog_dest(sl.get_ref()) {
            Ok(dest) => LogTarget::Syslog { dest, facility },
            Err(why) => {
                c.err(
                    sl.span(),
                    format!("syslog {:?}: {why}", sl.get_ref()),
                    Some(
                        "\"unix:/dev/log\" (a unix datagram socket) or \"udp:127.0.0.1:514\""
                            .into(),
                    ),
                );
                LogTarget::Stderr
            }
        },
        (None, None) => LogTarget::Stderr,
        (None, Some(p)) if p.get_ref() == "-" => LogTarget::Stderr,
        (None, Some(p)) if p.get_ref().is_empty() => {
            c.err(
                p.span(),
                "access_log path is empty".into(),
                Some("use \"-\" for stderr, or a file path".into()),
            );
            LogTarget::Stderr
        }
        (None, Some(p)) => LogTarget::File(p.get_ref().into()),
    }
}
