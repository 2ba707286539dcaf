//! Configuration: TOML text in, a validated [`Config`] out, or a [`ConfigError`] that says
//! where (`FILE:LINE:COL`), what is wrong and what would be valid.
//!
//! Parsing happens in two steps, both inside [`parse`]:
//! 1. [`raw`]: serde structs mirroring the file; unknown keys are errors and every value
//!    already has a type that cannot hold a bad value ([`value`]).
//! 2. cross-key checks (unique names and addresses, references, scheduler options, ...),
//!    each pointing at the offending key's value, build the [`Config`] the runtime uses.
//!
//! There is no partial result: a file yields a whole `Config` or errors.

pub mod announce;
pub mod cluster;
mod emit;
mod error;
pub mod limits;
pub mod raw;
mod recover;
pub mod rules;
mod summary;
mod validate;
pub mod value;

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU32, NonZeroU8};
use std::path::PathBuf;
use std::time::Duration;

pub use announce::{AnnounceConfig, Speaker};
pub use cluster::{ClusterConfig, ClusterPrefix, EtcdEndpoint, HealthQuorum, RegistryPrefix};
pub use emit::{service as service_table, table_to_string};
pub use error::{line_col, ConfigError};
pub use recover::{locate, PathStep};
pub use value::{
    AccessLogFormat, BackendProtocol, CheckKind, ClientAuthMode, HostPort, LogField, SpeakerKind,
    StatusRange, SyslogFacility, TunnelKind, XdpMode,
};

use crate::model::{
    Backend, ForwardMode, HashKey, PrimeTableSize, ProxyProtocol, SchedulerKind, ServiceProtocol,
};

/// Contract defaults that are not in [`crate::model::defaults`].
pub mod defaults {
    use std::num::{NonZeroU32, NonZeroU8};
    use std::time::Duration;

    /// A non-zero constant (a zero fails the build).
    const fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("a non-zero default")
    }

    /// `[admin] listen` when absent: loopback only.
    pub const ADMIN_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9090),
    );
    /// `[service.tls] session_ticket_rotation` (rustls' own ticketer's period).
    pub const SESSION_TICKET_ROTATION: Duration = Duration::from_secs(6 * 3600);
    /// `[pool.health] interval`.
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
    /// `[pool.health] timeout`, when the interval is at least twice as long (see
    /// [`health_timeout`]).
    pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

    /// `[pool.health] timeout` when absent: 500ms, or half the interval when that is
    /// shorter, so that the default is always valid (shorter than the interval).
    pub fn health_timeout(interval: Duration) -> Duration {
        HEALTH_TIMEOUT.min(interval / 2)
    }
    /// `[pool.health] rise`.
    pub const HEALTH_RISE: NonZeroU32 = nz(2);
    /// `[pool.health] fall`.
    pub const HEALTH_FALL: NonZeroU32 = nz(3);
    /// `[pool.health] path`.
    pub const HEALTH_PATH: &str = "/healthz";
    /// `[pool.outlier] consecutive_failures`.
    pub const OUTLIER_CONSECUTIVE_FAILURES: NonZeroU32 = nz(3);
    /// `[pool.outlier] ejection`.
    pub const OUTLIER_EJECTION: Duration = Duration::from_secs(10);
    /// `[[pool.backend]] weight`.
    pub const BACKEND_WEIGHT: u16 = 1;
    /// `[service.timeouts] connect`.
    pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    /// `[service.timeouts] response`.
    pub const HTTP_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `[service.timeouts] request_header`.
    pub const HTTP_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[service.timeouts] tls_handshake`.
    pub const HTTP_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[service.http2] max_concurrent_streams` (HAProxy's and the RFC's advice: 100).
    pub const H2_MAX_CONCURRENT_STREAMS: NonZeroU32 = nz(100);
    /// `[service.http2] max_header_list_size` (bytes).
    pub const H2_MAX_HEADER_LIST_SIZE: NonZeroU32 = nz(64 * 1024);
    /// `[service.http2] max_resets_per_second`.
    pub const H2_MAX_RESETS_PER_SECOND: NonZeroU32 = nz(100);
    /// `[service.http2] max_control_frames_per_second`.
    pub const H2_MAX_CONTROL_FRAMES_PER_SECOND: NonZeroU32 = nz(100);
    /// `[service.retry] attempts`.
    pub const HTTP_RETRY_ATTEMPTS: u8 = 2;
    /// `[service.retry] budget` (percent).
    pub const HTTP_RETRY_BUDGET: u8 = 20;
    /// `[[service.dns_name]] ttl`.
    pub const DNS_TTL: Duration = Duration::from_secs(30);
    /// `[[service.dns_name]] max_answers`.
    pub const DNS_MAX_ANSWERS: NonZeroU8 = NonZeroU8::new(4).expect("4 > 0");
    /// `[service.dns_rrl] responses_per_second`.
    pub const DNS_RRL_RESPONSES_PER_SECOND: NonZeroU32 = nz(100);
    /// `[service.dns_rrl] slip`.
    pub const DNS_RRL_SLIP: u8 = 2;
    /// `[[pool]] scheduler` when absent.
    pub const SCHEDULER: crate::model::SchedulerKind =
        crate::model::SchedulerKind::WeightedRoundRobin;
}

/// Parses and validates a whole configuration file.
///
/// On error, returns the first error in file order; [`parse_all`] returns all of them.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_all(text).map_err(|mut errs| errs.swap_remove(0))
}

/// Like [`parse`], but returns every error found (sorted by position; never empty on
/// `Err`). A TOML syntax error is alone; past a key or value error the rest of the file is
/// still checked (see `recover`), and cross-key checks run when what remains still means
/// what the file says.
pub fn parse_all(text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut rec = recover::deserialize(text).map_err(|e| vec![e])?;
    let mut errors = std::mem::take(&mut rec.errors);
    // Cross-key checks only on a text that still means what the file means (else they
    // would report what the patches caused).
    if let (Some(raw), true) = (rec.raw.take(), rec.faithful) {
        match validate::validate(raw, &rec.text) {
            Ok(cfg) if errors.is_empty() => return Ok(cfg),
            Ok(_) => {}
            Err(more) => errors.extend(more.into_iter().map(|mut e| {
                e.span = e.span.map(|s| rec.map_span(s));
                e
            })),
        }
    }
    errors.sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
    Err(errors)
}

/// A validated configuration: the type the runtime uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The admin API (`[admin]`); `None`: no admin API.
    pub admin: Option<AdminConfig>,
    /// Services in file order (names unique).
    pub services: Vec<ServiceConfig>,
    /// Pools in file order (names unique; every reference from a service resolves).
    pub pools: Vec<PoolConfig>,
    /// The packet data plane (`[xdp]`), required by dsr/tunnel/nat services.
    pub xdp: Option<XdpConfig>,
    /// VIP announcement through a BGP speaker (`[announce]`); `None`: none.
    pub announce: Option<AnnounceConfig>,
    /// The fleet control plane in etcd (`[cluster]`); `None`: this instance stands alone.
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin API, `/metrics`, `/healthz` and `/readyz` listen.
    pub listen: SocketAddr,
    /// When set, mutating calls need `Authorization: Bearer <token from this file>`.
    pub token_file: Option<PathBuf>,
    /// `protect_reads = true`: with a token, the read-only endpoints need it too
    /// (`/healthz` and `/readyz` stay open for probes).
    pub protect_reads: bool,
}

/// A virtual service (`[[service]]`).
///
/// What only one protocol has lives in its [`ServiceKind`] variant, so a tcp service cannot
/// hold routes, nor an http service a PROXY protocol header or a packet forwarding mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Unique name.
    pub name: String,
    /// VIP and port (port never 0).
    pub listen: SocketAddr,
    /// The default pool (exists in [`Config::pools`]).
    pub pool: String,
    /// Concurrent connection limit (default 100000).
    pub max_connections: NonZeroU32,
    /// Idle connection timeout (default 5m).
    pub idle_timeout: Duration,
    /// How long a graceful stop waits for open connections (default 30s).
    pub drain_timeout: Duration,
    /// The protocol, with the options that only it has.
    pub kind: ServiceKind,
}

/// A service's protocol with its own options (`protocol = "tcp" | "udp" | "http" | "dns"`).
// An http service's rules make its variant the largest; a config is built once per reload
// and its services sit in one `Vec`, so a box would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// `protocol = "tcp"`.
    Tcp(TcpService),
    /// `protocol = "udp"`.
    Udp(UdpService),
    /// `protocol = "http"` (always `forward = "proxy"`).
    Http(HttpService),
    /// `protocol = "dns"` (always `forward = "proxy"`): the zone, its names and the rate
    /// limit.
    Dns(DnsConfig),
}

/// A tcp service's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpService {
    /// `forward = "proxy"`: the userspace proxy, with the options only it has.
    Proxy(TcpProxy),
    /// `dsr`, `tunnel` or `nat`: the packet data plane.
    Packet(PacketForward),
}

/// A tcp service proxied in userspace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TcpProxy {
    /// A PROXY protocol header to backends.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TLS passthrough routes by the `ClientHello`'s SNI, in order; a connection whose name
    /// matches none (or that sends no SNI) goes to [`ServiceConfig::pool`]. Empty: no
    /// `ClientHello` is read.
    pub sni_routes: Vec<SniRoute>,
    /// `[service.timeouts]`: a tcp service has `connect` only (`None`: absent, the default
    /// applies).
    pub timeouts: Option<TcpTimeouts>,
    /// The connection log; off when `None`.
    pub access_log: Option<AccessLog>,
}

/// A tcp service's `[service.timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTimeouts {
    /// Connecting to a backend (default 3s, longer than 0): over it, the next backend.
    pub connect: Duration,
}

/// A udp service's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpService {
    /// How flows reach the backends.
    pub forward: UdpForward,
    /// Concurrent flows (default 10000), each holding one socket; when full, the least
    /// recently active flow gives way to the new one.
    pub max_flows: NonZeroU32,
}

/// A udp service's forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpForward {
    /// `forward = "proxy"`, with the flow log (`[service.access_log]`; off when `None`).
    Proxy {
        /// The flow log.
        access_log: Option<AccessLog>,
    },
    /// `dsr`, `tunnel` or `nat`: the packet data plane.
    Packet(PacketForward),
}

/// An http service's options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpService {
    /// Routes in order; the first match wins, else [`ServiceConfig::pool`].
    pub routes: Vec<Route>,
    /// TLS termination.
    pub tls: Option<TlsConfig>,
    /// Per-client-IP token bucket.
    pub rate_limit: Option<RateLimit>,
    /// `[service.timeouts]` (`None`: absent, the defaults apply).
    pub timeouts: Option<HttpTimeouts>,
    /// `[service.retry]` (`None`: absent, the defaults apply).
    pub retry: Option<RetryPolicy>,
    /// `[service.http2]` (`None`: absent, the defaults apply).
    pub http2: Option<Http2Limits>,
    /// The service's rules (docs/rules.md); a route's are merged over them.
    pub rules: crate::rules::Rules,
    /// The request log; off when `None`.
    pub access_log: Option<AccessLog>,
    /// The dns service (of this config) answered at `/dns-query` (`dns_service`).
    pub dns_service: Option<String>,
}

/// The packet data plane's forwarding modes (tcp and udp services; needs `[xdp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketForward {
    /// Direct server return.
    Dsr,
    /// Encapsulate to the backend.
    Tunnel {
        /// IP-in-IP or GUE, with GUE's option.
        encap: Encap,
        /// Outer source address.
        source: Option<IpAddr>,
    },
    /// Rewrite destination (and source, when given).
    Nat {
        /// New source address.
        source: Option<IpAddr>,
    },
}

/// `tunnel = "ipip" | "gue"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// IP-in-IP (the default).
    Ipip,
    /// GUE.
    Gue {
        /// The header names a secondary backend, to which a backend's `fulcrum decap` sends
        /// a mid-connection TCP packet it has no socket for (docs/xdp.md, "Second chance").
        /// Default on; IP-in-IP has no room for it.
        second_chance: bool,
    },
}

impl Encap {
    /// The contract's name of the encapsulation.
    pub const fn kind(self) -> TunnelKind {
        match self {
            Self::Ipip => TunnelKind::Ipip,
            Self::Gue { .. } => TunnelKind::Gue,
        }
    }
}

impl PacketForward {
    /// As a [`Forwarding`].
    pub const fn forwarding(self) -> Forwarding {
        match self {
            Self::Dsr => Forwarding::Dsr,
            Self::Tunnel { encap, source } => Forwarding::Tunnel {
                encap: encap.kind(),
                source,
                second_chance: matches!(
                    encap,
                    Encap::Gue {
                        second_chance: true
                    }
                ),
            },
            Self::Nat { source } => Forwarding::Nat { source },
        }
    }
}

impl ServiceConfig {
    /// The protocol.
    pub const fn protocol(&self) -> ServiceProtocol {
        match &self.kind {
            ServiceKind::Tcp(_) => ServiceProtocol::Tcp,
            ServiceKind::Udp(_) => ServiceProtocol::Udp,
            ServiceKind::Http(_) => ServiceProtocol::Http,
            ServiceKind::Dns(_) => ServiceProtocol::Dns,
        }
    }

    /// How flows reach backends, with that mode's options (a flat view of [`Self::kind`]).
    pub fn forward(&self) -> Forwarding {
        match &self.kind {
            ServiceKind::Tcp(TcpService::Proxy(p)) => Forwarding::Proxy {
                proxy_protocol: p.proxy_protocol,
            },
            ServiceKind::Tcp(TcpService::Packet(f))
            | ServiceKind::Udp(UdpService {
                forward: UdpForward::Packet(f),
                ..
            }) => f.forwarding(),
            ServiceKind::Udp(UdpService {
                forward: UdpForward::Proxy { .. },
                ..
            })
            | ServiceKind::Http(_)
            | ServiceKind::Dns(_) => Forwarding::Proxy {
                proxy_protocol: None,
            },
        }
    }

    /// The http options, for an http service.
    pub const fn http(&self) -> Option<&HttpService> {
        match &self.kind {
            ServiceKind::Http(h) => Some(h),
            _ => None,
        }
    }

    /// The zone and names, for a dns service.
    pub const fn dns(&self) -> Option<&DnsConfig> {
        match &self.kind {
            ServiceKind::Dns(d) => Some(d),
            _ => None,
        }
    }

    /// The access log (http: requests; tcp and udp with `forward = "proxy"`: connections
    /// and flows); `None`: off, or a service that has none.
    pub const fn access_log(&self) -> Option<&AccessLog> {
        match &self.kind {
            ServiceKind::Http(HttpService { access_log, .. })
            | ServiceKind::Tcp(TcpService::Proxy(TcpProxy { access_log, .. }))
            | ServiceKind::Udp(UdpService {
                forward: UdpForward::Proxy { access_log },
                ..
            }) => access_log.as_ref(),
            _ => None,
        }
    }

    /// http: the dns service answered at `/dns-query` (`dns_service`; `None` for other
    /// services).
    pub fn dns_service(&self) -> Option<&str> {
        self.http().and_then(|h| h.dns_service.as_deref())
    }

    /// http: the routes (empty for other services).
    pub fn routes(&self) -> &[Route] {
        self.http().map_or(&[], |h| h.routes.as_slice())
    }

    /// http: TLS termination (`None` for other services).
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.http().and_then(|h| h.tls.as_ref())
    }

    /// tcp with `forward = "proxy"`: the SNI routes (empty for other services).
    pub fn sni_routes(&self) -> &[SniRoute] {
        match &self.kind {
            ServiceKind::Tcp(TcpService::Proxy(p)) => &p.sni_routes,
            _ => &[],
        }
    }

    /// udp: the flow limit (`None` for other services).
    pub const fn max_flows(&self) -> Option<NonZeroU32> {
        match &self.kind {
            ServiceKind::Udp(u) => Some(u.max_flows),
            _ => None,
        }
    }

    /// The timeout of a connect to a backend: `[service.timeouts] connect` of an http or
    /// tcp service (`None`: absent or a service that does not connect).
    pub fn connect_timeout(&self) -> Option<Duration> {
        match &self.kind {
            ServiceKind::Http(h) => h.timeouts.map(|t| t.connect),
            ServiceKind::Tcp(TcpService::Proxy(p)) => p.timeouts.map(|t| t.connect),
            _ => None,
        }
    }

    /// Whether the service sends traffic to `pool` or answers with its backends (its
    /// default pool, a route's, an SNI route's or a dns name's): such a pool cannot be
    /// deleted, and its leaving backends drain by this service's `drain_timeout`.
    pub fn uses_pool(&self, pool: &str) -> bool {
        self.pool == pool
            || self.routes().iter().any(|r| r.pool == pool)
            || self.sni_routes().iter().any(|r| r.pool == pool)
            || self
                .dns()
                .is_some_and(|d| d.names.iter().any(|n| n.pool == pool))
    }
}

/// `[[service.sni_route]]`: connections whose `ClientHello` names a matching server go to
/// `pool`, their bytes relayed unchanged (HAProxy `req.ssl_sni`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// The server name: exact or `*.suffix` (case-insensitive).
    pub sni: HostMatch,
    /// Target pool (exists in [`Config::pools`]).
    pub pool: String,
}

/// A dns service's zone and names (`[service.dns_zone]`, `[[service.dns_name]]`,
/// `[service.dns_rrl]`; docs/dns.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The zone's apex, lower case, without the final dot.
    pub origin: String,
    /// Its name servers (at least one), lower case, without the final dot.
    pub ns: Vec<String>,
    /// The names answered with backends, each in the zone (names unique).
    pub names: Vec<DnsName>,
    /// Response rate limiting of UDP answers.
    pub rrl: DnsRrl,
}

/// One `[[service.dns_name]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsName {
    /// Lower case, without the final dot.
    pub name: String,
    /// Its pool (exists in [`Config::pools`]).
    pub pool: String,
    /// TTL of its answers.
    pub ttl: Duration,
    /// Addresses per answer at most.
    pub max_answers: NonZeroU8,
}

/// `[service.dns_rrl]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsRrl {
    /// UDP responses per second to one client prefix (IPv4 /24, IPv6 /56); a burst of one
    /// second's worth.
    pub responses_per_second: NonZeroU32,
    /// Past the limit, every `slip`-th response goes out truncated (TC, no records) so a
    /// real client retries over TCP; the others are dropped. 0: all dropped.
    pub slip: u8,
}

impl Default for DnsRrl {
    fn default() -> Self {
        Self {
            responses_per_second: defaults::DNS_RRL_RESPONSES_PER_SECOND,
            slip: defaults::DNS_RRL_SLIP,
        }
    }
}

/// The forwarding mode and its mode-specific options, as one flat view of a service's
/// [`ServiceKind`] ([`ServiceConfig::forward`]): what the data planes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// Terminate and proxy (any protocol).
    Proxy {
        /// tcp only: send a PROXY protocol header to backends.
        proxy_protocol: Option<ProxyProtocol>,
    },
    /// Direct server return (XDP; tcp/udp).
    Dsr,
    /// Encapsulate to the backend (XDP; tcp/udp).
    Tunnel {
        /// IP-in-IP (default) or GUE.
        encap: TunnelKind,
        /// Outer source address.
        source: Option<IpAddr>,
        /// GUE only: the header names a secondary backend, to which a backend's `fulcrum
        /// decap` sends a mid-connection TCP packet it has no socket for (docs/xdp.md,
        /// "Second chance"). Default: on for gue; ipip has no room for it.
        second_chance: bool,
    },
    /// Rewrite destination (and source, when given) (XDP; tcp/udp).
    Nat {
        /// New source address.
        source: Option<IpAddr>,
    },
}

impl Forwarding {
    /// The mode's contract name as a [`ForwardMode`].
    pub const fn mode(&self) -> ForwardMode {
        match self {
            Self::Proxy { .. } => ForwardMode::Proxy,
            Self::Dsr => ForwardMode::Dsr,
            Self::Tunnel { .. } => ForwardMode::Tunnel,
            Self::Nat { .. } => ForwardMode::Nat,
        }
    }
}

/// An http route (`[[service.route]]`); at least one of host and path prefix is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Host to match (case-insensitive), if any.
    pub host: Option<HostMatch>,
    /// Path prefix to match (starts with `/`), if any.
    pub path_prefix: Option<String>,
    /// Target pool (exists in [`Config::pools`]).
    pub pool: String,
    /// The route's own rules (docs/rules.md), merged over its service's.
    pub rules: crate::rules::Rules,
}

impl Route {
    /// Whether a request for `host` (without port) and `path` matches this route.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        self.host.as_ref().is_none_or(|h| h.matches(host))
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| path.starts_with(p.as_str()))
    }
}

/// A route's host: exact, or `*.suffix` (any name ending in `.suffix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com` (stored lowercase).
    Exact(String),
    /// `*.example.com`: stores `.example.com` (lowercase).
    Suffix(String),
}

impl HostMatch {
    /// Whether `host` (without port) matches, ignoring ASCII case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => {
                host.len() > s.len()
                    && host
                        .get(host.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
        }
    }
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// `[service.tls]`: non-empty; the first pair is the default certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate and key files (not read at parse time).
    pub certs: Vec<CertPair>,
    /// Client certificates (mTLS): `None` asks for none.
    pub client_auth: Option<ClientAuth>,
    /// Stateless session tickets with rotating keys (default true); off, TLS 1.3 clients
    /// still resume from the server's in-memory session cache.
    pub session_tickets: bool,
    /// How long one ticket key encrypts new tickets (default 6h); the previous key still
    /// decrypts, so a ticket resumes for at most twice this.
    pub session_ticket_rotation: Duration,
}

/// `[service.tls] client_ca` and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM CA certificates a client certificate must chain to.
    pub ca: PathBuf,
    /// `required` (default) or `optional`.
    pub mode: ClientAuthMode,
    /// The request header that carries the verified certificate's subject (RFC 4514 text)
    /// to backends (default `X-Client-Subject`); any such header from the client is dropped.
    pub subject_header: String,
    /// The request header that carries its SHA-256 fingerprint, lowercase hex (default
    /// `X-Client-Fingerprint`); any such header from the client is dropped.
    pub fingerprint_header: String,
}

/// One PEM certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
    /// A DER OCSP response to staple, re-read when the file changes.
    pub ocsp: Option<PathBuf>,
}

/// `[pool.tls]`: TLS towards a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// PEM CA certificates the backends' certificates are verified with.
    pub ca: PathBuf,
    /// The name sent in SNI and verified in the certificate; `None`: the backend's IP
    /// address (no SNI is sent for an address).
    pub sni: Option<String>,
    /// A client certificate chain and key presented to backends that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// `[service.rate_limit]`: a token bucket per client IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Refill rate.
    pub requests_per_second: NonZeroU32,
    /// Bucket size (default: `requests_per_second`).
    pub burst: NonZeroU32,
}

/// `[service.timeouts]`: every timeout is longer than 0. tcp services use `connect` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// Connecting to a backend (default 3s): over it, `504` and the next backend (tcp: the
    /// next backend).
    pub connect: Duration,
    /// From sending the request to the backend's response head (default 60s): over it, `504`.
    pub response: Duration,
    /// A client's request head, once started (default 10s): over it, `408` (slowloris).
    pub request_header: Duration,
    /// A client's TLS handshake (default 10s).
    pub tls_handshake: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            connect: defaults::HTTP_CONNECT_TIMEOUT,
            response: defaults::HTTP_RESPONSE_TIMEOUT,
            request_header: defaults::HTTP_REQUEST_HEADER_TIMEOUT,
            tls_handshake: defaults::HTTP_TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// `[service.http2]`: limits on each HTTP/2 client connection; every one is at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// Streams a client may have open at once (default 100); more are refused
    /// (`REFUSED_STREAM`).
    pub max_concurrent_streams: NonZeroU32,
    /// The largest decoded request header list, in bytes (default 64 KiB): larger gets
    /// `431`, a header block that never ends (CONTINUATION flood) ends the connection.
    pub max_header_list_size: NonZeroU32,
    /// `RST_STREAM` frames a client may send in a second (default 100); more close the
    /// connection (rapid reset, CVE-2023-44487).
    pub max_resets_per_second: NonZeroU32,
    /// `SETTINGS`, `PING` and `PRIORITY` frames a client may send in a second (default
    /// 100); more close the connection (floods).
    pub max_control_frames_per_second: NonZeroU32,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: defaults::H2_MAX_CONCURRENT_STREAMS,
            max_header_list_size: defaults::H2_MAX_HEADER_LIST_SIZE,
            max_resets_per_second: defaults::H2_MAX_RESETS_PER_SECOND,
            max_control_frames_per_second: defaults::H2_MAX_CONTROL_FRAMES_PER_SECOND,
        }
    }
}

/// `[service.retry]`: its two numbers are in range (see [`RetryPolicy::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u8,
    budget_percent: u8,
}

impl RetryPolicy {
    /// `attempts` extra tries on other backends per request, 0..=10 (0: never retry), and
    /// retries allowed as `budget_percent` of requests, 0..=100, on top of a small
    /// reserve; `None` when either is out of range.
    pub const fn new(attempts: u8, budget_percent: u8) -> Option<Self> {
        if attempts <= value::RetryAttempts::MAX && budget_percent <= 100 {
            Some(Self {
                attempts,
                budget_percent,
            })
        } else {
            None
        }
    }

    /// Extra tries on other backends per request (default 2).
    pub const fn attempts(self) -> u8 {
        self.attempts
    }

    /// Retries as a percentage of requests (default 20).
    pub const fn budget_percent(self) -> u8 {
        self.budget_percent
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: defaults::HTTP_RETRY_ATTEMPTS,
            budget_percent: defaults::HTTP_RETRY_BUDGET,
        }
    }
}

/// `[service.access_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// Line format.
    pub format: AccessLogFormat,
    /// Where lines go.
    pub target: LogTarget,
    /// `format = "json"`: the keys of each line, in order (`None`: the default set).
    pub fields: Option<Vec<LogField>>,
}

/// An access log destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// `path = "-"` (the default).
    Stderr,
    /// A file, appended to.
    File(PathBuf),
    /// `syslog = "..."`: RFC 5424 messages to a syslog daemon.
    Syslog {
        dest: SyslogDest,
        facility: SyslogFacility,
    },
}

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogDest {
    /// `unix:/dev/log`: a unix datagram socket.
    Unix(PathBuf),
    /// `udp:127.0.0.1:514`.
    Udp(SocketAddr),
}

impl std::fmt::Display for SyslogDest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Udp(a) => write!(f, "udp:{a}"),
        }
    }
}

/// A pool (`[[pool]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Unique name.
    pub name: String,
    /// The scheduler with its own options (default wrr).
    pub scheduler: SchedulerConfig,
    /// Client-IP persistence; `None` when absent or 0.
    pub persistence: Option<Duration>,
    /// http: the affinity cookie name.
    pub sticky_cookie: Option<String>,
    /// http: how backends are spoken to (default HTTP/1.1; h2c only when every user of the
    /// pool is http).
    pub backend_protocol: BackendProtocol,
    /// Active checks; `None` when `[pool.health]` is absent or `check = "none"`.
    pub health: Option<HealthConfig>,
    /// Passive (outlier) detection, always on.
    pub outlier: OutlierConfig,
    /// Static backends in file order (addresses unique, state `Up`; weight 0 = drained).
    pub backends: Vec<Backend>,
    /// Dynamic backends; with `backends`, at least one of the two is non-empty.
    pub discovery: Option<Discovery>,
    /// `[pool.locality]` (see [`crate::locality`]).
    pub locality: Option<crate::locality::Locality>,
    /// http: `[pool.tls]`, TLS to the backends.
    pub tls: Option<BackendTls>,
}

/// A pool's scheduler (`scheduler = "..."`) with the options only it takes: `hash_key`
/// only with a hashing scheduler, `maglev_table_size` only with maglev, `slow_start` never
/// with a hashing one, each `[pool.scheduler_options]` key only with its schedulers.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerConfig {
    /// `sh`, `maglev`, `ring_hash`: the choice is a function of the hash key.
    Hashing {
        /// Which one, with its options.
        kind: HashingScheduler,
        /// What is hashed (default `src_ip`); header/cookie keys only when every user of the
        /// pool is http.
        hash_key: HashKey,
    },
    /// The others.
    Balancing {
        /// Which one, with its options.
        kind: BalancingScheduler,
        /// Slow-start window of a backend that comes up (`None`: off).
        slow_start: Option<Duration>,
    },
}

/// The hashing schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashingScheduler {
    /// `sh`.
    SourceHash,
    /// `maglev`.
    Maglev {
        /// `maglev_table_size` (default 65537; at least the number of static backends).
        table_size: PrimeTableSize,
    },
    /// `ring_hash`.
    RingHash,
}

/// The schedulers that do not hash.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BalancingScheduler {
    /// `rr`.
    RoundRobin,
    /// `wrr`.
    WeightedRoundRobin,
    /// `lc`.
    LeastConn,
    /// `wlc`.
    WeightedLeastConn,
    /// `random`.
    Random,
    /// `p2c`.
    PowerOfTwo,
    /// `least_request`.
    LeastRequest {
        /// `[pool.scheduler_options] active_request_bias` (default 1.0).
        active_request_bias: ActiveRequestBias,
    },
    /// `peak_ewma`.
    PeakEwma {
        /// `[pool.scheduler_options] half_life` of the response-time averages (default 5s).
        half_life: Duration,
    },
    /// `predictive`.
    Predictive {
        /// `[pool.scheduler_options] half_life` (default 5s).
        half_life: Duration,
        /// `[pool.scheduler_options] horizon`: how far ahead the forecast looks (default 1s).
        horizon: Duration,
    },
}

/// `least_request`'s `active_request_bias`, in [`limits::ACTIVE_REQUEST_BIAS`] (0 ignores
/// load, 1 is Envoy's default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActiveRequestBias(f64);

impl ActiveRequestBias {
    /// The default, 1.0.
    pub const DEFAULT: Self = Self(crate::sched::option_defaults::ACTIVE_REQUEST_BIAS);

    /// `Some` when `v` is in range.
    pub fn new(v: f64) -> Option<Self> {
        limits::ACTIVE_REQUEST_BIAS.contains(&v).then_some(Self(v))
    }

    /// The bias.
    pub const fn get(self) -> f64 {
        self.0
    }
}

impl Default for SchedulerConfig {
    /// `wrr` without slow start.
    fn default() -> Self {
        Self::of(defaults::SCHEDULER)
    }
}

impl SchedulerConfig {
    /// `kind` with its defaults (`hash_key = "src_ip"`, the default table size and option
    /// values, no slow start).
    pub fn of(kind: SchedulerKind) -> Self {
        use crate::sched::option_defaults as d;
        use BalancingScheduler as B;
        let balancing = |kind| Self::Balancing {
            kind,
            slow_start: None,
        };
        let hashing = |kind| Self::Hashing {
            kind,
            hash_key: HashKey::SrcIp,
        };
        match kind {
            SchedulerKind::RoundRobin => balancing(B::RoundRobin),
            SchedulerKind::WeightedRoundRobin => balancing(B::WeightedRoundRobin),
            SchedulerKind::LeastConn => balancing(B::LeastConn),
            SchedulerKind::WeightedLeastConn => balancing(B::WeightedLeastConn),
            SchedulerKind::Random => balancing(B::Random),
            SchedulerKind::PowerOfTwo => balancing(B::PowerOfTwo),
            SchedulerKind::LeastRequest => balancing(B::LeastRequest {
                active_request_bias: ActiveRequestBias::DEFAULT,
            }),
            SchedulerKind::PeakEwma => balancing(B::PeakEwma {
                half_life: d::HALF_LIFE,
            }),
            SchedulerKind::Predictive => balancing(B::Predictive {
                half_life: d::HALF_LIFE,
                horizon: d::HORIZON,
            }),
            SchedulerKind::SourceHash => hashing(HashingScheduler::SourceHash),
            SchedulerKind::Maglev => hashing(HashingScheduler::Maglev {
                table_size: PrimeTableSize::DEFAULT,
            }),
            SchedulerKind::RingHash => hashing(HashingScheduler::RingHash),
        }
    }

    /// The scheduler's name.
    pub const fn kind(&self) -> SchedulerKind {
        use BalancingScheduler as B;
        match self {
            Self::Hashing { kind, .. } => match kind {
                HashingScheduler::SourceHash => SchedulerKind::SourceHash,
                HashingScheduler::Maglev { .. } => SchedulerKind::Maglev,
                HashingScheduler::RingHash => SchedulerKind::RingHash,
            },
            Self::Balancing { kind, .. } => match kind {
                B::RoundRobin => SchedulerKind::RoundRobin,
                B::WeightedRoundRobin => SchedulerKind::WeightedRoundRobin,
                B::LeastConn => SchedulerKind::LeastConn,
                B::WeightedLeastConn => SchedulerKind::WeightedLeastConn,
                B::Random => SchedulerKind::Random,
                B::PowerOfTwo => SchedulerKind::PowerOfTwo,
                B::LeastRequest { .. } => SchedulerKind::LeastRequest,
                B::PeakEwma { .. } => SchedulerKind::PeakEwma,
                B::Predictive { .. } => SchedulerKind::Predictive,
            },
        }
    }

    /// The hash key, for a hashing scheduler.
    pub const fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Self::Hashing { hash_key, .. } => Some(hash_key),
            Self::Balancing { .. } => None,
        }
    }

    /// The Maglev table size, for maglev.
    pub const fn maglev_table_size(&self) -> Option<PrimeTableSize> {
        match self {
            Self::Hashing {
                kind: HashingScheduler::Maglev { table_size },
                ..
            } => Some(*table_size),
            _ => None,
        }
    }

    /// The slow-start window, for a non-hashing scheduler that has one.
    pub const fn slow_start(&self) -> Option<Duration> {
        match self {
            Self::Balancing { slow_start, .. } => *slow_start,
            Self::Hashing { .. } => None,
        }
    }

    /// The options [`crate::sched::build`] takes (the defaults for what this scheduler
    /// does not use).
    pub fn sched_options(&self) -> crate::sched::SchedOptions {
        use BalancingScheduler as B;
        let mut o = crate::sched::SchedOptions {
            slow_start: self.slow_start(),
            ..crate::sched::SchedOptions::default()
        };
        if let Some(t) = self.maglev_table_size() {
            o.maglev_table_size = t;
        }
        if let Self::Balancing { kind, .. } = self {
            match *kind {
                B::LeastRequest {
                    active_request_bias,
                } => o.active_request_bias = active_request_bias.get(),
                B::PeakEwma { half_life } => o.half_life = half_life,
                B::Predictive { half_life, horizon } => {
                    o.half_life = half_life;
                    o.horizon = horizon;
                }
                _ => {}
            }
        }
        o
    }
}

/// Active health checking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// What a check does.
    pub check: HealthCheck,
    /// Time between checks (> 0, default 1s).
    pub interval: Duration,
    /// Per-check timeout (> 0 and < interval, default 500ms or half the interval).
    pub timeout: Duration,
    /// Consecutive successes to come up (default 2).
    pub rise: NonZeroU32,
    /// Consecutive failures to go down (default 3).
    pub fall: NonZeroU32,
}

/// One active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// TCP connect.
    Tcp,
    /// HTTP GET of `path` expecting a status in `expect_status`.
    Http {
        /// Starts with `/` (default `/healthz`).
        path: String,
        /// Default 200-399.
        expect_status: StatusRange,
    },
}

/// Passive (outlier) detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject a backend (default 3).
    pub consecutive_failures: NonZeroU32,
    /// Ejection time (> 0, default 10s).
    pub ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: defaults::OUTLIER_CONSECUTIVE_FAILURES,
            ejection: defaults::OUTLIER_EJECTION,
        }
    }
}

/// `[pool.discovery]`: at least one of `dns`, `srv`, `file`, `etcd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// A/AAAA name and port, re-resolved at the TTL.
    pub dns: Option<HostPort>,
    /// SRV name.
    pub srv: Option<String>,
    /// Backends file, re-read when it changes.
    pub file: Option<PathBuf>,
    /// etcd prefix of registered backends (`fulcrum register`), watched through the
    /// `[cluster] etcd` endpoints.
    pub etcd: Option<RegistryPrefix>,
    /// Resolver to use; `None`: the system's.
    pub nameserver: Option<SocketAddr>,
}

/// `[xdp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpConfig {
    /// Interface name.
    pub interface: String,
    /// native (default) or generic.
    pub mode: XdpMode,
    /// `[xdp.sync]`: nat flows shared with the peers (docs/fleet.md, "nat flows in sync").
    pub sync: Option<NatSyncConfig>,
}

/// The largest `[xdp.sync] members`.
pub const NAT_SYNC_MAX_MEMBERS: u16 = 64;

/// `[xdp.sync]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatSyncConfig {
    /// UDP address this instance receives its peers' flows on.
    pub listen: SocketAddr,
    /// The peers' `listen` addresses (flows are sent to each, and accepted only from them).
    pub peers: Vec<SocketAddr>,
    /// This instance's index, below `members`.
    pub member: u16,
    /// Instances in the fleet, 1 to [`NAT_SYNC_MAX_MEMBERS`].
    pub members: NonZeroU16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheduler_has_its_own_variant_with_its_options() {
        for kind in SchedulerKind::ALL {
            let sc = SchedulerConfig::of(kind);
            assert_eq!(sc.kind(), kind);
            assert_eq!(sc.hash_key().is_some(), kind.is_hashing(), "{kind}");
            assert_eq!(
                sc.maglev_table_size().is_some(),
                kind == SchedulerKind::Maglev,
                "{kind}"
            );
            assert_eq!(sc.slow_start(), None);
            let o = sc.sched_options();
            let d = crate::sched::SchedOptions::default();
            assert_eq!(
                (o.half_life, o.horizon, o.maglev_table_size),
                (d.half_life, d.horizon, d.maglev_table_size)
            );
        }
        assert_eq!(SchedulerConfig::default().kind(), defaults::SCHEDULER);
    }

    #[test]
    fn newtypes_refuse_what_is_out_of_range() {
        assert_eq!(ActiveRequestBias::new(-0.1), None);
        assert_eq!(ActiveRequestBias::new(10.5), None);
        assert_eq!(ActiveRequestBias::new(f64::NAN), None);
        assert_eq!(
            ActiveRequestBias::new(0.5).map(ActiveRequestBias::get),
            Some(0.5)
        );
        assert_eq!(value::Count::<10>::new(0), None);
        assert_eq!(value::Count::<10>::new(11), None);
        assert_eq!(value::Count::<10>::new(10).map(value::Count::get), Some(10));
        assert_eq!(RetryPolicy::new(11, 20), None);
        assert_eq!(RetryPolicy::new(2, 101), None);
        assert_eq!(RetryPolicy::new(2, 20), Some(RetryPolicy::default()));
    }

    /// The flat view of a service's forwarding follows its kind: http and dns always
    /// proxy, only a tcp proxy has a PROXY header, `second_chance` only inside GUE.
    #[test]
    fn the_forwarding_view_follows_the_kind() {
        let svc = |kind| ServiceConfig {
            name: "s".into(),
            listen: "127.0.0.1:1".parse().expect("addr"),
            pool: "p".into(),
            max_connections: crate::model::defaults::MAX_CONNECTIONS,
            idle_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            kind,
        };
        let http = svc(ServiceKind::Http(HttpService::default()));
        assert_eq!(http.protocol(), ServiceProtocol::Http);
        assert_eq!(
            http.forward(),
            Forwarding::Proxy {
                proxy_protocol: None
            }
        );
        let tcp = svc(ServiceKind::Tcp(TcpService::Proxy(TcpProxy {
            proxy_protocol: Some(ProxyProtocol::V2),
            ..TcpProxy::default()
        })));
        assert_eq!(
            tcp.forward(),
            Forwarding::Proxy {
                proxy_protocol: Some(ProxyProtocol::V2)
            }
        );
        assert_eq!((tcp.max_flows(), tcp.routes().len()), (None, 0));
        let gue = svc(ServiceKind::Udp(UdpService {
            forward: UdpForward::Packet(PacketForward::Tunnel {
                encap: Encap::Gue {
                    second_chance: true,
                },
                source: None,
            }),
            max_flows: crate::model::defaults::MAX_FLOWS,
        }));
        assert_eq!(
            gue.forward(),
            Forwarding::Tunnel {
                encap: TunnelKind::Gue,
                source: None,
                second_chance: true
            }
        );
        assert_eq!(gue.access_log(), None);
        assert_eq!(
            PacketForward::Tunnel {
                encap: Encap::Ipip,
                source: None
            }
            .forwarding(),
            Forwarding::Tunnel {
                encap: TunnelKind::Ipip,
                source: None,
                second_chance: false
            }
        );
    }
}
