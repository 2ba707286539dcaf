//! The running model: services, pools and backends, as plain immutable values.
//!
//! IO layers hold a [`Snapshot`] behind an `arc_swap::ArcSwap` and replace it whole; nothing
//! here is mutated in place once built.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A backend's administrative/health state as users see it (`state` in the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Healthy: takes new flows (if its weight is above 0).
    Up,
    /// Failed active health checks: no new flows.
    Down,
    /// Drained by an operator (or weight 0): no new flows, existing ones finish.
    Draining,
    /// Ejected by passive (outlier) detection until its ejection time passes.
    Ejected,
}

impl BackendState {
    /// The contract's name for this state.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Draining => "draining",
            Self::Ejected => "ejected",
        }
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend weight. 0 means "no new flows". The contract's range is 0..=65535 (as ipvsadm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Weight(u16);

impl Weight {
    pub const MAX: u16 = u16::MAX;
    pub const fn new(w: u16) -> Self {
        Self(w)
    }
    pub const fn get(self) -> u32 {
        self.0 as u32
    }
}

/// A locality (availability zone) name: `[[pool.backend]] zone`, `[cluster] zone`, the keys
/// of `[pool.locality] weights` (1..=64 of `A-Z a-z 0-9 _ - .`, checked when parsed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Zone(pub std::sync::Arc<str>);

impl Zone {
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One backend as the schedulers see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    pub address: SocketAddr,
    pub weight: Weight,
    pub state: BackendState,
    /// Its locality (`zone`), if it has one (see [`crate::locality`]).
    pub zone: Option<Zone>,
}

impl Backend {
    pub fn new(address: SocketAddr, weight: u16) -> Self {
        Self {
            address,
            weight: Weight::new(weight),
            state: BackendState::Up,
            zone: None,
        }
    }

    /// The same backend in `zone`.
    #[must_use]
    pub fn in_zone(mut self, zone: Option<Zone>) -> Self {
        self.zone = zone;
        self
    }

    /// Whether a scheduler may send a *new* flow here.
    pub fn is_eligible(&self) -> bool {
        self.state == BackendState::Up && self.weight.get() > 0
    }
}

/// Scheduler names of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    WeightedLeastConn,
    SourceHash,
    Random,
    PowerOfTwo,
    Maglev,
    RingHash,
    LeastRequest,
    PeakEwma,
    Predictive,
}

impl SchedulerKind {
    pub const ALL: [Self; 12] = [
        Self::RoundRobin,
        Self::WeightedRoundRobin,
        Self::LeastConn,
        Self::WeightedLeastConn,
        Self::SourceHash,
        Self::Random,
        Self::PowerOfTwo,
        Self::Maglev,
        Self::RingHash,
        Self::LeastRequest,
        Self::PeakEwma,
        Self::Predictive,
    ];

    /// The config name (`scheduler = "..."`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "rr",
            Self::WeightedRoundRobin => "wrr",
            Self::LeastConn => "lc",
            Self::WeightedLeastConn => "wlc",
            Self::SourceHash => "sh",
            Self::Random => "random",
            Self::PowerOfTwo => "p2c",
            Self::Maglev => "maglev",
            Self::RingHash => "ring_hash",
            Self::LeastRequest => "least_request",
            Self::PeakEwma => "peak_ewma",
            Self::Predictive => "predictive",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the choice is a pure function of the hash key (so `hash_key` applies).
    pub const fn is_hashing(self) -> bool {
        matches!(self, Self::SourceHash | Self::Maglev | Self::RingHash)
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a hashing scheduler hashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    SrcIp,
    SrcIpPort,
    FiveTuple,
    /// HTTP only.
    Header(String),
    /// HTTP only.
    Cookie(String),
}

impl HashKey {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "src_ip" => Some(Self::SrcIp),
            "src_ip_port" => Some(Self::SrcIpPort),
            "five_tuple" => Some(Self::FiveTuple),
            _ => {
                if let Some(n) = s.strip_prefix("header:").filter(|n| !n.is_empty()) {
                    Some(Self::Header(n.to_owned()))
                } else {
                    s.strip_prefix("cookie:")
                        .filter(|n| !n.is_empty())
                        .map(|n| Self::Cookie(n.to_owned()))
                }
            }
        }
    }
    pub fn is_http_only(&self) -> bool {
        matches!(self, Self::Header(_) | Self::Cookie(_))
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SrcIp => f.write_str("src_ip"),
            Self::SrcIpPort => f.write_str("src_ip_port"),
            Self::FiveTuple => f.write_str("five_tuple"),
            Self::Header(n) => write!(f, "header:{n}"),
            Self::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

/// Transport protocol of a flow (IANA numbers, as in the IP header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
}

/// A flow's addresses as seen by the load balancer: client -> service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: Proto,
}

/// Service protocol (`protocol = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceProtocol {
    Tcp,
    Udp,
    Http,
    /// An authoritative DNS server answering with the pool's healthy backends, on UDP and
    /// TCP at the same address (docs/dns.md).
    Dns,
}

impl ServiceProtocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Http => "http",
            Self::Dns => "dns",
        }
    }
}

/// How a service forwards (`forward = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardMode {
    Proxy,
    Dsr,
    Tunnel,
    Nat,
}

impl ForwardMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Dsr => "dsr",
            Self::Tunnel => "tunnel",
            Self::Nat => "nat",
        }
    }
}

/// PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// Helper: the canonical text of a backend address, used as its identity in hashes
/// (`1.2.3.4:80`, `[2001:db8::1]:80`). IPv4-mapped IPv6 addresses are written as IPv4.
pub fn canonical_addr(addr: &SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", addr.port()),
            None => format!("[{v6}]:{}", addr.port()),
        },
        IpAddr::V4(v4) => format!("{v4}:{}", addr.port()),
    }
}

/// Default durations shared by config and runtime.
pub mod defaults {
    use super::Duration;
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// `[service.timeouts] connect` of a tcp service when absent.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    pub const MAGLEV_TABLE_SIZE: u32 = 65537;
    pub const MAX_CONNECTIONS: std::num::NonZeroU32 =
        std::num::NonZeroU32::new(100_000).expect("> 0");
    /// udp services: flows (one socket, so one file descriptor, each) per service.
    pub const MAX_FLOWS: std::num::NonZeroU32 = std::num::NonZeroU32::new(10_000).expect("> 0");
}

/// A Maglev lookup-table size: always a prime (the Maglev permutation needs it) in
/// `3..=PrimeTableSize::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrimeTableSize(u32);

impl PrimeTableSize {
    pub const DEFAULT: Self = Self(defaults::MAGLEV_TABLE_SIZE);
    /// The largest table: 1,000,003 slots (a prime; 4 MB of table). Above it a single
    /// API call could make the process allocate gigabytes.
    pub const MAX: u32 = 1_000_003;

    /// `None` unless `n` is a prime in `3..=MAX`.
    pub fn new(n: u32) -> Option<Self> {
        ((3..=Self::MAX).contains(&n) && is_prime(n)).then_some(Self(n))
    }
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl Default for PrimeTableSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Trial division; table sizes are at most a few million, so this is microseconds.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// The next prime at or above `n` (for advice in error messages); `None` above the largest
/// `u32` prime.
pub fn next_prime(mut n: u32) -> Option<u32> {
    while !is_prime(n) {
        n = n.checked_add(1)?;
    }
    Some(n)
}

/// Monotonic time as the IO layer passes it in: the time since an epoch of the caller's
/// choosing. The core never reads a clock.
pub type Now = Duration;
