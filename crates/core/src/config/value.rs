//! Value types of the configuration file: each deserializes from its TOML form and cannot
//! hold a bad value. Their errors say what was wrong and what would be valid.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::error::HELP_SEP;
use super::limits;
use crate::model::{
    next_prime, ForwardMode, HashKey, PrimeTableSize, ProxyProtocol, SchedulerKind,
    ServiceProtocol, Weight,
};

/// A value error before it has a location: message and optional help.
struct Invalid {
    message: String,
    help: Option<String>,
}

impl Invalid {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            help: None,
        }
    }
    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    fn into_de<E: de::Error>(self) -> E {
        match self.help {
            Some(h) => E::custom(format!("{}{HELP_SEP}{h}", self.message)),
            None => E::custom(self.message),
        }
    }
}

/// Deserializes a string through `parse`.
fn from_str<'de, D, T, F>(d: D, expecting: &'static str, parse: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, Invalid>,
{
    struct V<F, T>(&'static str, F, PhantomData<T>);
    impl<F: FnOnce(&str) -> Result<T, Invalid>, T> Visitor<'_> for V<F, T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.1)(v).map_err(Invalid::into_de)
        }
    }
    d.deserialize_str(V(expecting, parse, PhantomData))
}

/// Deserializes an integer through `check`.
fn from_int<'de, D, T, F>(d: D, expecting: &'static str, check: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(i64) -> Result<T, Invalid>,
{
    struct V<F, T>(&'static str, F, PhantomData<T>);
    impl<F: FnOnce(i64) -> Result<T, Invalid>, T> Visitor<'_> for V<F, T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            (self.1)(v).map_err(Invalid::into_de)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            (self.1)(i64::try_from(v).unwrap_or(i64::MAX)).map_err(Invalid::into_de)
        }
    }
    d.deserialize_i64(V(expecting, check, PhantomData))
}

const ADDRESS_HELP: &str =
    "addresses are IP:PORT with a port of 1..=65535, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"";

/// A socket address `IP:PORT` (`[IPv6]:PORT`) with a non-zero port: listen addresses,
/// backends, the admin API, nameservers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(pub SocketAddr);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "an address string \"IP:PORT\"", |s| {
            let addr: SocketAddr = s
                .parse()
                .map_err(|_| Invalid::new(format!("invalid address \"{s}\"")).help(ADDRESS_HELP))?;
            if addr.port() == 0 {
                return Err(
                    Invalid::new(format!("port 0 is not allowed in \"{s}\"")).help(ADDRESS_HELP)
                );
            }
            Ok(Self(addr))
        })
    }
}

/// An IP address without a port (`source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ip(pub IpAddr);

impl<'de> Deserialize<'de> for Ip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "an IP address string", |s| {
            s.parse().map(Self).map_err(|_| {
                Invalid::new(format!("invalid IP address \"{s}\""))
                    .help("an IPv4 or IPv6 address without a port, e.g. \"198.18.0.2\"")
            })
        })
    }
}

/// A host name (or IP) and port, `NAME:PORT` (DNS discovery).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The name to resolve.
    pub host: String,
    /// The port of every resolved address.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a \"NAME:PORT\" string", |s| {
            let bad = || {
                Invalid::new(format!("invalid name and port \"{s}\"")).help(
                    "write NAME:PORT with a port of 1..=65535, e.g. \"backends.internal:8080\"",
                )
            };
            let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
            let port: u16 = port.parse().map_err(|_| bad())?;
            if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
                return Err(bad());
            }
            Ok(Self {
                host: host.to_owned(),
                port,
            })
        })
    }
}

/// A duration with a unit: `"250ms"`, `"10s"`, `"5m"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(
            d,
            "a duration string with a unit, like \"250ms\", \"10s\" or \"5m\"",
            |s| {
                let d = humantime::parse_duration(s).map_err(|e| {
                    Invalid::new(format!("invalid duration \"{s}\": {e}"))
                        .help("durations are strings with a unit, e.g. \"250ms\", \"10s\", \"5m\"")
                })?;
                if d > limits::DURATION_MAX {
                    return Err(Invalid::new(format!("duration \"{s}\" is too long")).help(
                        "no duration may exceed 365 days; each key's range is in docs/interface.md",
                    ));
                }
                Ok(Self(d))
            },
        )
    }
}

/// A name of a service or pool: 1..=64 of `A-Z a-z 0-9 _ - .` (it appears in URLs and
/// metric labels).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a name string", |s| {
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if ok {
                Ok(Self(s.to_owned()))
            } else {
                Err(Invalid::new(format!("invalid name \"{s}\""))
                    .help("names are 1 to 64 characters of A-Z, a-z, 0-9, '_', '-', '.'"))
            }
        })
    }
}

/// A backend weight, 0..=65535 (0 = drained).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightValue(pub Weight);

impl<'de> Deserialize<'de> for WeightValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let help = "weights are 0..=65535 (0 = drained: no new flows)";
        up_to(d, "an integer weight 0..=65535", u16::MAX, "weight", help)
            .map(|w| Self(Weight::new(w)))
    }
}

/// Deserializes an integer in `0..=max` as a `T`; else "WHAT N is out of range", with
/// `help` (`expecting`: serde's text for a value that is not an integer). Every value type
/// that is a bounded integer from 0 is one call of it.
fn up_to<'de, D, T>(
    d: D,
    expecting: &'static str,
    max: T,
    what: &str,
    help: &str,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + PartialOrd + Copy,
{
    from_int(d, expecting, |n| match T::try_from(n) {
        Ok(v) if v <= max => Ok(v),
        _ => Err(Invalid::new(format!("{what} {n} is out of range")).help(help)),
    })
}

/// A locality weight, 0..=10000 (`[pool.locality] weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ZoneWeight(pub u32);

impl<'de> Deserialize<'de> for ZoneWeight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let max = crate::locality::MAX_WEIGHT;
        let help = format!("zone weights are 0..={max} (0 = no new flows to the zone)");
        let expecting = "an integer zone weight 0..=10000";
        up_to(d, expecting, max, "zone weight", &help).map(Self)
    }
}

/// `[pool.locality] prefer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// The instance's own zone (`[cluster] zone`).
    Local,
}

/// A count in `1..=MAX` (`rise`, `fall`, `max_connections`, ...; the maxima are in
/// [`super::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Count<const MAX: u32>(NonZeroU32);

impl<const MAX: u32> Count<MAX> {
    /// `Some` when `n` is in `1..=MAX`.
    pub fn new(n: u32) -> Option<Self> {
        NonZeroU32::new(n).filter(|n| n.get() <= MAX).map(Self)
    }

    /// The count.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The count, as the non-zero number it is.
    pub const fn non_zero(self) -> NonZeroU32 {
        self.0
    }
}

impl<'de, const MAX: u32> Deserialize<'de> for Count<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_int(d, "an integer of at least 1", |n| {
            u32::try_from(n).ok().and_then(Self::new).ok_or_else(|| {
                Invalid::new(format!("{n} is out of range")).help(format!("valid: 1..={MAX}"))
            })
        })
    }
}

/// `[service.retry] attempts`: extra tries on other backends, 0..=10 (0: no retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetryAttempts(pub u8);

impl RetryAttempts {
    /// The largest value accepted.
    pub const MAX: u8 = 10;
}

impl<'de> Deserialize<'de> for RetryAttempts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let help = format!(
            "valid: 0..={} (extra tries on other backends; 0 = never retry)",
            Self::MAX
        );
        let expecting = "an integer number of retries 0..=10";
        up_to(d, expecting, Self::MAX, "retry attempts", &help).map(Self)
    }
}

/// A percentage, 0..=100 (`[service.retry] budget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Percent(pub u8);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let help = "valid: 0..=100 (a share of requests, in percent)";
        up_to(d, "an integer percentage 0..=100", 100, "percentage", help).map(Self)
    }
}

/// A Maglev table size: a prime in [`super::limits::MAGLEV_TABLE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableSize(pub PrimeTableSize);

impl<'de> Deserialize<'de> for TableSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_int(d, "a prime integer table size", |n| {
            let range = limits::MAGLEV_TABLE_SIZE;
            let Some(n32) = u32::try_from(n).ok().filter(|n| range.contains(n)) else {
                return Err(
                    Invalid::new(format!("maglev_table_size {n} is out of range")).help(format!(
                        "use a prime of {}..={}, e.g. 65537 (at least 100 x backends is advised)",
                        range.start(),
                        range.end()
                    )),
                );
            };
            PrimeTableSize::new(n32).map(Self).ok_or_else(|| {
                // n32 <= MAX, which is prime: the next prime exists and is in range.
                let next = next_prime(n32).unwrap_or(*range.end());
                Invalid::new(format!("maglev_table_size {n} is not a prime"))
                    .help(format!("the next prime is {next}"))
            })
        })
    }
}

/// An HTTP status range, `"200-399"` or a single `"200"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    /// Lowest accepted status.
    pub low: u16,
    /// Highest accepted status (inclusive).
    pub high: u16,
}

impl StatusRange {
    /// The contract's default, 200-399.
    pub const DEFAULT: Self = Self {
        low: 200,
        high: 399,
    };

    /// Whether `status` is in the range.
    pub const fn contains(self, status: u16) -> bool {
        self.low <= status && status <= self.high
    }
}

impl Default for StatusRange {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a status range string like \"200-399\"", |s| {
            let bad = || {
                Invalid::new(format!("invalid status range \"{s}\""))
                    .help("write LOW-HIGH or one status, within 100..=599, e.g. \"200-399\"")
            };
            let (lo, hi) = s.split_once('-').unwrap_or((s, s));
            let low: u16 = lo.trim().parse().map_err(|_| bad())?;
            let high: u16 = hi.trim().parse().map_err(|_| bad())?;
            if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
                return Err(bad());
            }
            Ok(Self { low, high })
        })
    }
}

/// Defines a wrapper that deserializes one of the target's values (its `ALL`) by its name
/// (its `as_str`, which the emitter writes back too): each name is written once.
macro_rules! named {
    ($(#[$meta:meta])* $wrapper:ident($target:ty), $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $wrapper(pub $target);

        impl<'de> Deserialize<'de> for $wrapper {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                from_str(d, concat!("a ", $what, " name string"), |s| {
                    one_of($what, s, &<$target>::ALL, <$target>::as_str).map(Self)
                })
            }
        }
    };
}

/// The value of `all` named `got`; else an error listing the names.
fn one_of<T: Copy>(
    what: &str,
    got: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, Invalid> {
    all.iter()
        .copied()
        .find(|v| name(*v) == got)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            unknown(what, got, &names)
        })
}

fn unknown(what: &str, got: &str, valid: &[&str]) -> Invalid {
    let list = valid.join(", ");
    Invalid::new(format!("unknown {what} \"{got}\"")).help(
        match super::recover::did_you_mean(got, valid) {
            Some(s) => format!("did you mean \"{s}\"? valid: {list}"),
            None => format!("valid: {list}"),
        },
    )
}

named!(
    /// `protocol = "tcp" | "udp" | "http" | "dns"`.
    Protocol(ServiceProtocol), "protocol"
);

named!(
    /// `forward = "proxy" | "dsr" | "tunnel" | "nat"`.
    Forward(ForwardMode), "forward mode"
);

named!(
    /// `proxy_protocol = "v1" | "v2"`.
    ProxyProtocolValue(ProxyProtocol), "PROXY protocol version"
);

named!(
    /// `tunnel = "ipip" | "gue"`.
    Tunnel(TunnelKind), "tunnel"
);

named!(
    /// `[pool.health] check = "tcp" | "http" | "none"`.
    Check(CheckKind), "health check"
);

named!(
    /// `[xdp] mode = "native" | "generic"`.
    XdpModeValue(XdpMode), "xdp mode"
);

named!(
    /// `[service.access_log] format = "json" | "combined" | "tcplog"`.
    AccessLogFormatValue(AccessLogFormat), "access log format"
);

named!(
    /// `[service.access_log] fields = [...]`: one key of a JSON log line.
    LogFieldValue(LogField), "access log field"
);

named!(
    /// `[service.access_log] facility = "local0"` (syslog).
    SyslogFacilityValue(SyslogFacility), "syslog facility"
);

named!(
    /// `[announce] speaker = "bird" | "exabgp"`.
    SpeakerValue(SpeakerKind), "announce speaker"
);

/// The BGP speaker that announces VIPs (`[announce] speaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpeakerKind {
    /// bird2, through its control socket.
    Bird,
    /// exabgp, running `fulcrum announce` as its API process.
    Exabgp,
}

impl SpeakerKind {
    /// Every speaker, in the contract's order.
    pub const ALL: [Self; 2] = [Self::Bird, Self::Exabgp];

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bird => "bird",
            Self::Exabgp => "exabgp",
        }
    }
}

named!(
    /// `[[pool]] backend_protocol = "http1" | "h2c" | "h2"`.
    BackendProtocolValue(BackendProtocol), "backend protocol"
);

/// `scheduler = "rr" | "wrr" | ...` (the names of [`SchedulerKind::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scheduler(pub SchedulerKind);

impl<'de> Deserialize<'de> for Scheduler {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a scheduler name string", |s| {
            one_of("scheduler", s, &SchedulerKind::ALL, SchedulerKind::as_str).map(Self)
        })
    }
}

/// `hash_key = "src_ip" | "src_ip_port" | "five_tuple" | "header:NAME" | "cookie:NAME"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HashKeyValue(pub HashKey);

impl<'de> Deserialize<'de> for HashKeyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a hash key string", |s| {
            HashKey::parse(s).map(Self).ok_or_else(|| {
                Invalid::new(format!("unknown hash_key \"{s}\""))
                    .help("valid: src_ip, src_ip_port, five_tuple, header:NAME, cookie:NAME")
            })
        })
    }
}

/// The encapsulation of `forward = "tunnel"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TunnelKind {
    /// IPv4/IPv6 in IP (the default).
    #[default]
    Ipip,
    /// Generic UDP Encapsulation.
    Gue,
}

impl TunnelKind {
    /// Every kind, in the contract's order.
    pub const ALL: [Self; 2] = [Self::Ipip, Self::Gue];

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ipip => "ipip",
            Self::Gue => "gue",
        }
    }
}

/// The kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP GET of `path`, expecting `expect_status`.
    Http,
    /// No active checks.
    None,
}

impl CheckKind {
    /// Every kind, in the contract's order.
    pub const ALL: [Self; 3] = [Self::Tcp, Self::Http, Self::None];

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::None => "none",
        }
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XdpMode {
    /// In the driver (the default).
    #[default]
    Native,
    /// In the generic (skb) path: slower, works on any interface.
    Generic,
}

impl XdpMode {
    /// Every mode, in the contract's order.
    pub const ALL: [Self; 2] = [Self::Native, Self::Generic];

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// The access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// The Apache/nginx combined log format (the default for http).
    #[default]
    Combined,
    /// tcp/udp connection logs in the manner of HAProxy's `option tcplog` (their default).
    Tcplog,
}

impl AccessLogFormat {
    /// Every format, in the contract's order.
    pub const ALL: [Self; 3] = [Self::Json, Self::Combined, Self::Tcplog];

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Combined => "combined",
            Self::Tcplog => "tcplog",
        }
    }
}

/// One key of a JSON access log line (`[service.access_log] fields`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogField {
    Time,
    Service,
    Client,
    ClientIp,
    Method,
    Host,
    Path,
    Protocol,
    Status,
    Backend,
    Bytes,
    BytesIn,
    BytesOut,
    DurationMs,
    RequestId,
    UserAgent,
    Referer,
    Termination,
}

impl LogField {
    /// Every field, in the contract's order.
    pub const ALL: [Self; 18] = [
        Self::Time,
        Self::Service,
        Self::Client,
        Self::ClientIp,
        Self::Method,
        Self::Host,
        Self::Path,
        Self::Protocol,
        Self::Status,
        Self::Backend,
        Self::Bytes,
        Self::BytesIn,
        Self::BytesOut,
        Self::DurationMs,
        Self::RequestId,
        Self::UserAgent,
        Self::Referer,
        Self::Termination,
    ];

    /// The JSON key (and config name).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Time => "time",
            Self::Service => "service",
            Self::Client => "client",
            Self::ClientIp => "client_ip",
            Self::Method => "method",
            Self::Host => "host",
            Self::Path => "path",
            Self::Protocol => "protocol",
            Self::Status => "status",
            Self::Backend => "backend",
            Self::Bytes => "bytes",
            Self::BytesIn => "bytes_in",
            Self::BytesOut => "bytes_out",
            Self::DurationMs => "duration_ms",
            Self::RequestId => "request_id",
            Self::UserAgent => "user_agent",
            Self::Referer => "referer",
            Self::Termination => "termination",
        }
    }

    /// Whether an http request log has it.
    pub const fn for_http(self) -> bool {
        !matches!(self, Self::Termination)
    }

    /// Whether a tcp/udp connection log has it.
    pub const fn for_l4(self) -> bool {
        matches!(
            self,
            Self::Time
                | Self::Service
                | Self::Client
                | Self::ClientIp
                | Self::Protocol
                | Self::Backend
                | Self::BytesIn
                | Self::BytesOut
                | Self::DurationMs
                | Self::Termination
        )
    }

    /// The default JSON line of an http service (what `format = "json"` always wrote).
    pub const HTTP_DEFAULT: [Self; 13] = [
        Self::Time,
        Self::Service,
        Self::Client,
        Self::Method,
        Self::Host,
        Self::Path,
        Self::Protocol,
        Self::Status,
        Self::Backend,
        Self::Bytes,
        Self::DurationMs,
        Self::RequestId,
        Self::UserAgent,
    ];

    /// The default JSON line of a tcp/udp service.
    pub const L4_DEFAULT: [Self; 9] = [
        Self::Time,
        Self::Service,
        Self::Protocol,
        Self::Client,
        Self::Backend,
        Self::BytesIn,
        Self::BytesOut,
        Self::DurationMs,
        Self::Termination,
    ];
}

/// A syslog facility's number (RFC 5424 6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyslogFacility(u8);

impl SyslogFacility {
    /// `local0`, the default.
    pub const LOCAL0: Self = Self(16);

    /// Every facility with a name, in the contract's order.
    pub const ALL: [Self; 10] = [
        Self(1),
        Self(3),
        Self(16),
        Self(17),
        Self(18),
        Self(19),
        Self(20),
        Self(21),
        Self(22),
        Self(23),
    ];

    /// The facility's number (one of the names [`Self::as_str`] gives).
    pub const fn code(self) -> u8 {
        self.0
    }

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self.0 {
            1 => "user",
            3 => "daemon",
            17 => "local1",
            18 => "local2",
            19 => "local3",
            20 => "local4",
            21 => "local5",
            22 => "local6",
            23 => "local7",
            _ => "local0", // 16, the only other value ALL holds
        }
    }
}

/// How an http pool's backends are spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendProtocol {
    /// HTTP/1.1 on pooled keep-alive connections (the default).
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge (gRPC backends): one multiplexed
    /// connection per backend and worker.
    H2c,
    /// HTTP/2 over TLS (`[pool.tls]`, ALPN `h2`; HAProxy's `alpn h2`, nginx's `grpc_pass
    /// grpcs://`): one multiplexed connection per backend and worker.
    H2,
}

impl BackendProtocol {
    /// Every protocol, in the contract's order.
    pub const ALL: [Self; 3] = [Self::Http1, Self::H2c, Self::H2];

    /// Whether backends are spoken to over HTTP/2 (`h2c` or `h2`).
    pub const fn is_h2(self) -> bool {
        matches!(self, Self::H2c | Self::H2)
    }

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
            Self::H2 => "h2",
        }
    }
}

named!(
    /// `[service.tls] client_auth = "required" | "optional"`.
    ClientAuthValue(ClientAuthMode), "client_auth mode"
);

/// Whether a TLS service asks its clients for a certificate (`[service.tls] client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAuthMode {
    /// A client without a certificate verified by `client_ca` is refused in the handshake
    /// (nginx `ssl_verify_client on`, HAProxy `verify required`).
    Required,
    /// A client may send none; one that sends a certificate must send a valid one (nginx
    /// `ssl_verify_client optional`, HAProxy `verify optional`).
    Optional,
}

impl ClientAuthMode {
    /// Both modes, in the contract's order.
    pub const ALL: [Self; 2] = [Self::Required, Self::Optional];

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Optional => "optional",
        }
    }
}
