//! The configuration file's shape, exactly as the contract writes it: one struct per TOML
//! table, unknown keys rejected. Values are already typed (see [`super::value`]); cross-key
//! rules are checked when these are turned into a [`super::Config`].
//!
//! `Spanned` marks the values that a later check may need to point at.

use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::limits;
use super::value::{
    AccessLogFormatValue, Address, BackendProtocolValue, Check, ClientAuthValue, Count, Forward,
    HashKeyValue, HostPort, HumanDuration, Ip, LogFieldValue, Name, Percent, Prefer, Protocol,
    ProxyProtocolValue, RetryAttempts, Scheduler, SpeakerValue, StatusRange, SyslogFacilityValue,
    TableSize, Tunnel, WeightValue, XdpModeValue, ZoneWeight,
};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[admin]`.
    pub admin: Option<Spanned<RawAdmin>>,
    /// `[[service]]`.
    #[serde(default)]
    pub service: Vec<Spanned<RawService>>,
    /// `[[pool]]`.
    #[serde(default)]
    pub pool: Vec<Spanned<RawPool>>,
    /// `[xdp]`.
    pub xdp: Option<Spanned<RawXdp>>,
    /// `[announce]`.
    pub announce: Option<Spanned<RawAnnounce>>,
    /// `[cluster]`.
    pub cluster: Option<Spanned<super::cluster::RawCluster>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Where the admin API listens (default `127.0.0.1:9090`: loopback only).
    pub listen: Option<Spanned<Address>>,
    /// A file holding the bearer token for mutating calls.
    pub token_file: Option<PathBuf>,
    /// With `token_file`: read-only endpoints need the token too (default false).
    pub protect_reads: Option<bool>,
}

/// `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Unique name.
    pub name: Spanned<Name>,
    /// VIP and port.
    pub listen: Spanned<Address>,
    /// `tcp` | `udp` | `http`.
    pub protocol: Spanned<Protocol>,
    /// The default pool.
    pub pool: Spanned<Name>,
    /// `proxy` (default) | `dsr` | `tunnel` | `nat`.
    pub forward: Option<Spanned<Forward>>,
    /// tcp + proxy: PROXY protocol header to backends.
    pub proxy_protocol: Option<Spanned<ProxyProtocolValue>>,
    /// Concurrent connection limit.
    pub max_connections: Option<Count<{ limits::MAX_CONNECTIONS }>>,
    /// udp: concurrent flow limit (each flow holds one socket).
    pub max_flows: Option<Spanned<Count<{ limits::MAX_FLOWS }>>>,
    /// Idle connection timeout.
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    /// Graceful drain limit.
    pub drain_timeout: Option<Spanned<HumanDuration>>,
    /// `forward = "tunnel"`: `ipip` | `gue`.
    pub tunnel: Option<Spanned<Tunnel>>,
    /// `forward = "tunnel"` with `tunnel = "gue"`: GLB-style second chance (default true).
    pub second_chance: Option<Spanned<bool>>,
    /// tunnel/nat: the load balancer's own address.
    pub source: Option<Spanned<Ip>>,
    /// `[[service.route]]` (http only).
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    /// `[service.tls]` (http only).
    pub tls: Option<Spanned<RawTls>>,
    /// `[service.rate_limit]` (http only).
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// `[service.access_log]` (http: requests; tcp/udp: connections).
    pub access_log: Option<Spanned<RawAccessLog>>,
    /// `[service.timeouts]` (http only).
    pub timeouts: Option<Spanned<RawTimeouts>>,
    /// `[service.retry]` (http only).
    pub retry: Option<Spanned<RawRetry>>,
    /// `[service.http2]` (http only).
    pub http2: Option<Spanned<RawHttp2>>,
    /// `[[service.sni_route]]` (tcp only): TLS passthrough routed by the `ClientHello`'s SNI.
    #[serde(default)]
    pub sni_route: Vec<Spanned<RawSniRoute>>,
    /// http: rules (docs/rules.md): `allow` / `deny` networks.
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    /// http: clients refused (see `allow`).
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    /// http: `[basic_auth]`.
    pub basic_auth: Option<Spanned<super::rules::RawBasicAuth>>,
    /// http: `[redirect]`.
    pub redirect: Option<Spanned<super::rules::RawRedirect>>,
    /// http: `[rewrite]`.
    pub rewrite: Option<Spanned<super::rules::RawRewrite>>,
    /// http: `[request_headers]`.
    pub request_headers: Option<Spanned<super::rules::RawHeaders>>,
    /// http: `[response_headers]`.
    pub response_headers: Option<Spanned<super::rules::RawHeaders>>,
    /// http: `[compression]`.
    pub compression: Option<Spanned<super::rules::RawCompression>>,
    /// http: `[error_pages]`: status or class -> file.
    pub error_pages: Option<Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>>,
    /// `[[service.dns_name]]` (dns only): the names it answers with backends.
    #[serde(default)]
    pub dns_name: Vec<Spanned<RawDnsName>>,
    /// `[service.dns_zone]` (dns only, required there): SOA and NS of the zone.
    pub dns_zone: Option<Spanned<RawDnsZone>>,
    /// `[service.dns_rrl]` (dns only): response rate limiting.
    pub dns_rrl: Option<Spanned<RawDnsRrl>>,
    /// http only: the dns service this one serves at `/dns-query` (HTTP-DNS; with TLS, DNS over HTTPS).
    pub dns_service: Option<Spanned<Name>>,
}

/// `[[service.sni_route]]`: connections whose `ClientHello` names `sni` go to `pool`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniRoute {
    /// Exact name or `*.suffix`.
    pub sni: Spanned<String>,
    /// Target pool.
    pub pool: Spanned<Name>,
}

/// `[[service.dns_name]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsName {
    /// The owner name (in the zone).
    pub name: Spanned<String>,
    /// Its pool (default: the service's `pool`).
    pub pool: Option<Spanned<Name>>,
    /// TTL of its answers.
    pub ttl: Option<Spanned<HumanDuration>>,
    /// Addresses per answer at most.
    pub max_answers: Option<Spanned<Count<{ limits::DNS_MAX_ANSWERS }>>>,
}

/// `[service.dns_zone]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsZone {
    /// The zone's apex.
    pub origin: Spanned<String>,
    /// Its name servers (NS records; the first is the SOA's MNAME).
    pub ns: Spanned<Vec<Spanned<String>>>,
}

/// `[service.dns_rrl]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsRrl {
    /// UDP responses per second to one client prefix (/24, /56).
    pub responses_per_second: Option<Count<{ limits::RATE_LIMIT }>>,
    /// Past the limit, every `slip`-th response goes out truncated (0: none; 1: all).
    pub slip: Option<Spanned<u8>>,
}

/// `[service.http2]`: limits on each HTTP/2 client connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp2 {
    /// Streams open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: Option<Count<{ limits::H2_MAX_CONCURRENT_STREAMS }>>,
    /// Decoded request header list, bytes (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub max_header_list_size: Option<Count<{ limits::H2_MAX_HEADER_LIST_SIZE }>>,
    /// `RST_STREAM` frames a client may send per second.
    pub max_resets_per_second: Option<Count<{ limits::H2_FRAMES_PER_SECOND }>>,
    /// `SETTINGS`, `PING` and `PRIORITY` frames a client may send per second.
    pub max_control_frames_per_second: Option<Count<{ limits::H2_FRAMES_PER_SECOND }>>,
}

/// `[[service.route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Exact host or `*.suffix`.
    pub host: Option<Spanned<String>>,
    /// Path prefix, starting with `/`.
    pub path_prefix: Option<Spanned<String>>,
    /// Target pool.
    pub pool: Spanned<Name>,
    /// http: rules (docs/rules.md): `allow` / `deny` networks.
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    /// http: clients refused (see `allow`).
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    /// http: `[basic_auth]`.
    pub basic_auth: Option<Spanned<super::rules::RawBasicAuth>>,
    /// http: `[redirect]`.
    pub redirect: Option<Spanned<super::rules::RawRedirect>>,
    /// http: `[rewrite]`.
    pub rewrite: Option<Spanned<super::rules::RawRewrite>>,
    /// http: `[request_headers]`.
    pub request_headers: Option<Spanned<super::rules::RawHeaders>>,
    /// http: `[response_headers]`.
    pub response_headers: Option<Spanned<super::rules::RawHeaders>>,
    /// http: `[compression]`.
    pub compression: Option<Spanned<super::rules::RawCompression>>,
    /// http: `[error_pages]`: status or class -> file.
    pub error_pages: Option<Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>>,
}

/// `[service.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate/key pairs; the first is the default.
    pub certs: Spanned<Vec<RawCert>>,
    /// PEM CA certificates that client certificates must chain to (mTLS).
    pub client_ca: Option<Spanned<PathBuf>>,
    /// `required` | `optional` (default `required` when `client_ca` is set).
    pub client_auth: Option<Spanned<ClientAuthValue>>,
    /// The request header carrying the verified client certificate's subject.
    pub client_subject_header: Option<Spanned<String>>,
    /// The request header carrying the verified client certificate's SHA-256 fingerprint.
    pub client_fingerprint_header: Option<Spanned<String>>,
    /// Stateless TLS session tickets (rotating keys); default true.
    pub session_tickets: Option<bool>,
    /// How long one ticket key encrypts new tickets (default 6h).
    pub session_ticket_rotation: Option<Spanned<HumanDuration>>,
}

/// One `{ cert, key }` of `[service.tls] certs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    /// PEM certificate chain file.
    pub cert: PathBuf,
    /// PEM private key file.
    pub key: PathBuf,
    /// A DER OCSP response for `cert`, stapled; re-read when it changes.
    pub ocsp: Option<PathBuf>,
}

/// `[service.rate_limit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Token refill rate per client IP.
    pub requests_per_second: Count<{ limits::RATE_LIMIT }>,
    /// Bucket size (default: `requests_per_second`).
    pub burst: Option<Count<{ limits::RATE_LIMIT }>>,
}

/// `[service.access_log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `json` | `combined` (http) | `tcplog` (tcp/udp).
    pub format: Option<Spanned<AccessLogFormatValue>>,
    /// `-` = stderr, else a file.
    pub path: Option<Spanned<String>>,
    /// `format = "json"`: the keys of each line, in order.
    pub fields: Option<Spanned<Vec<Spanned<LogFieldValue>>>>,
    /// `unix:PATH` or `udp:IP:PORT`: RFC 5424 syslog instead of `path`.
    pub syslog: Option<Spanned<String>>,
    /// The syslog facility (default `local0`).
    pub facility: Option<Spanned<SyslogFacilityValue>>,
}

/// `[service.timeouts]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Connecting to a backend.
    pub connect: Option<Spanned<HumanDuration>>,
    /// From sending the request to the backend's response head.
    pub response: Option<Spanned<HumanDuration>>,
    /// A client's request head (slowloris guard).
    pub request_header: Option<Spanned<HumanDuration>>,
    /// A client's TLS handshake.
    pub tls_handshake: Option<Spanned<HumanDuration>>,
}

/// `[service.retry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Extra tries on other backends.
    pub attempts: Option<RetryAttempts>,
    /// Retries as a percentage of requests.
    pub budget: Option<Percent>,
}

/// `[[pool]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Unique name.
    pub name: Spanned<Name>,
    /// Scheduler name.
    pub scheduler: Option<Spanned<Scheduler>>,
    /// What hashing schedulers hash.
    pub hash_key: Option<Spanned<HashKeyValue>>,
    /// Client-IP persistence (ipvsadm `-p`).
    pub persistence: Option<Spanned<HumanDuration>>,
    /// Maglev table size (prime).
    pub maglev_table_size: Option<Spanned<TableSize>>,
    /// Slow-start window of a backend that comes up.
    pub slow_start: Option<Spanned<HumanDuration>>,
    /// `[pool.scheduler_options]`.
    pub scheduler_options: Option<Spanned<RawSchedulerOptions>>,
    /// http: affinity cookie name.
    pub sticky_cookie: Option<Spanned<String>>,
    /// http: `http1` | `h2c`.
    pub backend_protocol: Option<Spanned<BackendProtocolValue>>,
    /// `[pool.health]`.
    pub health: Option<Spanned<RawHealth>>,
    /// `[pool.outlier]`.
    pub outlier: Option<RawOutlier>,
    /// `[[pool.backend]]`.
    #[serde(default)]
    pub backend: Vec<Spanned<RawBackend>>,
    /// `[pool.discovery]`.
    pub discovery: Option<Spanned<RawDiscovery>>,
    /// `[pool.locality]`.
    pub locality: Option<Spanned<RawLocality>>,
    /// `[pool.tls]` (http): TLS to the backends.
    pub tls: Option<Spanned<RawPoolTls>>,
}

/// `[pool.tls]`: TLS towards the backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTls {
    /// PEM CA certificates the backends' certificates must chain to.
    pub ca: Spanned<PathBuf>,
    /// The server name sent (SNI) and verified; default: the backend's IP address.
    pub sni: Option<Spanned<String>>,
    /// PEM client certificate chain presented to the backends.
    pub cert: Option<Spanned<PathBuf>>,
    /// Its private key.
    pub key: Option<Spanned<PathBuf>>,
}

/// `[pool.locality]`: `weights`, or `prefer = "local"` (with `spill_below`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocality {
    /// `{ ZONE = WEIGHT, ... }`.
    pub weights: Option<Spanned<std::collections::BTreeMap<Spanned<String>, ZoneWeight>>>,
    /// With `weights`: the global controller may rewrite them (default false).
    pub controlled: Option<Spanned<bool>>,
    /// `local`.
    pub prefer: Option<Spanned<Prefer>>,
    /// With `prefer`: the local zone's healthy share below which traffic spills (percent).
    pub spill_below: Option<Spanned<Percent>>,
}

/// `[pool.scheduler_options]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedulerOptions {
    /// `peak_ewma`, `predictive`: half-life of the response-time averages.
    pub half_life: Option<Spanned<HumanDuration>>,
    /// `predictive`: how far ahead the forecast looks.
    pub horizon: Option<Spanned<HumanDuration>>,
    /// `least_request`: Envoy's `active_request_bias`.
    pub active_request_bias: Option<Spanned<f64>>,
}

/// `[pool.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `tcp` | `http` | `none`.
    pub check: Option<Spanned<Check>>,
    /// Time between checks.
    pub interval: Option<Spanned<HumanDuration>>,
    /// Per-check timeout.
    pub timeout: Option<Spanned<HumanDuration>>,
    /// Successes to come up.
    pub rise: Option<Count<{ limits::HEALTH_RISE_FALL }>>,
    /// Failures to go down.
    pub fall: Option<Count<{ limits::HEALTH_RISE_FALL }>>,
    /// http: the path to GET.
    pub path: Option<Spanned<String>>,
    /// http: accepted statuses.
    pub expect_status: Option<Spanned<StatusRange>>,
}

/// `[pool.outlier]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Failures in a row that eject a backend.
    pub consecutive_failures: Option<Count<{ limits::OUTLIER_FAILURES }>>,
    /// How long an ejection lasts.
    pub ejection: Option<Spanned<HumanDuration>>,
}

/// `[[pool.backend]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `IP:PORT`.
    pub address: Spanned<Address>,
    /// 0..=65535, default 1.
    pub weight: Option<WeightValue>,
    /// Its locality (availability zone).
    pub zone: Option<Name>,
}

/// `[pool.discovery]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// A/AAAA name and port.
    pub dns: Option<HostPort>,
    /// SRV name.
    pub srv: Option<Spanned<String>>,
    /// A backends file, re-read on change.
    pub file: Option<PathBuf>,
    /// etcd prefix of registered backends.
    pub etcd: Option<super::cluster::RegistryPrefix>,
    /// Resolver to ask instead of the system's.
    pub nameserver: Option<Address>,
}

/// `[xdp]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXdp {
    /// The interface to attach to.
    pub interface: Spanned<String>,
    /// `native` | `generic`.
    pub mode: Option<XdpModeValue>,
    /// `[xdp.sync]`: nat flows shared with the peers.
    pub sync: Option<Spanned<RawNatSync>>,
}

/// `[xdp.sync]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNatSync {
    /// Where this instance receives its peers' flows (UDP).
    pub listen: Address,
    /// The other instances' `listen` addresses.
    pub peers: Vec<Address>,
    /// This instance's index in the fleet, 0 to `members - 1`.
    pub member: Spanned<u16>,
    /// The number of instances (the nat port range is cut into this many slices).
    pub members: Spanned<u16>,
}

/// `[announce]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnounce {
    /// `bird` | `exabgp`.
    pub speaker: Spanned<SpeakerValue>,
    /// bird: its control socket.
    pub socket: Option<Spanned<PathBuf>>,
    /// bird: protocol name = prefix + service name.
    pub protocol_prefix: Option<Spanned<String>>,
    /// How long SIGTERM waits between withdrawing and draining.
    pub withdraw_grace: Option<Spanned<HumanDuration>>,
    /// How long a service's health must hold still before its VIP is (re-)announced.
    pub announce_delay: Option<Spanned<HumanDuration>>,
    /// A network interface that exists exactly while this process runs (a TUN device).
    pub liveness_interface: Option<Spanned<String>>,
}

macro_rules! raw_rules {
    ($t:ty) => {
        impl $t {
            /// Its rule keys (docs/rules.md).
            pub fn rules(&self) -> super::rules::RawRules<'_> {
                super::rules::RawRules {
                    allow: self.allow.as_ref(),
                    deny: self.deny.as_ref(),
                    basic_auth: self.basic_auth.as_ref(),
                    redirect: self.redirect.as_ref(),
                    rewrite: self.rewrite.as_ref(),
                    request_headers: self.request_headers.as_ref(),
                    response_headers: self.response_headers.as_ref(),
                    compression: self.compression.as_ref(),
                    error_pages: self.error_pages.as_ref(),
                }
            }
        }
    };
}
raw_rules!(RawService);
raw_rules!(RawRoute);
