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
    /// Every protocol, in the contract's order.
    pub const ALL: [Self; 4] = [Self::Tcp, Self::Udp, Self::Http, Self::Dns];

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
    /// Every mode, in the contract's order.
    pub const ALL: [Self; 4] = [Self::Proxy, Self::Dsr, Self::Tunnel, Self::Nat];

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

impl ProxyProtocol {
    /// Both versions.
    pub const ALL: [Self; 2] = [Self::V1, Self::V2];

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
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

/// [`canonical_addr`]'s text without an allocation (at most 47 bytes:
/// `[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535`), ordered bytewise like the text: what
/// the Maglev table build sorts and hashes for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CanonicalAddr {
    /// The text, zero-padded (the text has no zero byte, so comparing the whole buffers
    /// orders as comparing the texts).
    buf: [u8; CanonicalAddr::CAP],
    len: u8,
}

impl CanonicalAddr {
    const CAP: usize = 48;

    /// The canonical text of `addr`; the same bytes as [`canonical_addr`].
    pub fn new(addr: &SocketAddr) -> Self {
        let mut out = Self {
            buf: [0; Self::CAP],
            len: 0,
        };
        let v4 = match addr.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        if let Some(v4) = v4 {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.push_decimal(u32::from(octet));
            }
        } else {
            use std::fmt::Write as _;
            // Cannot fail: the longest IPv6 text is 39 bytes.
            let _ = write!(out, "[{}]", addr.ip());
        }
        out.push(b':');
        out.push_decimal(u32::from(addr.port()));
        out
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The text as big-endian words: comparing them orders as comparing the texts.
    pub fn sort_key(&self) -> [u64; 6] {
        std::array::from_fn(|i| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.buf[i * 8..i * 8 + 8]);
            u64::from_be_bytes(w)
        })
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(usize::from(self.len)) {
            *slot = b;
            self.len += 1;
        }
    }

    fn push_decimal(&mut self, mut v: u32) {
        let mut digits = [0u8; 10];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in digits[..n].iter().rev() {
            self.push(d);
        }
    }
}

impl std::fmt::Write for CanonicalAddr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = usize::from(self.len) + s.len();
        let dst = self
            .buf
            .get_mut(usize::from(self.len)..end)
            .ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

impl PartialOrd for CanonicalAddr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CanonicalAddr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
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
