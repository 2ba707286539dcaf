//! nat sync (docs/fleet.md, "nat flows in sync"): the connection-state sync of IPVS's sync
//! daemon and conntrackd for the XDP `nat` data plane. Every instance of a fleet translates
//! to the same (fleet-shared) source address and allocates source ports from its own slice
//! of the nat range ([`PortSlice`]), so no two instances ever allocate the same
//! translation. The data path reports each new flow through the `nat_events` ring buffer;
//! [`run`] sends it to the peers over UDP ([`encode`]), and inserts the flows its peers send
//! ([`decode`], [`XdpPlane::insert_synced`]) in both directions, so that whichever instance
//! the router picks for a client's packet or a backend's reply translates it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::maps::{CtKey, NatEvent, AF_INET, AF_INET6, NAT_PORT_MAX, NAT_PORT_MIN};
use crate::plane::XdpPlane;

/// A flow as the peers exchange it: the data path's [`NatEvent`].
pub type FlowRecord = NatEvent;

/// The first bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"FXNS";
/// The version of the encoding.
pub const VERSION: u8 = 1;
/// Message kind: new (or refreshed) flows.
pub const KIND_FLOWS: u8 = 1;
/// Header: magic (4), version (1), kind (1), record count (2, big endian; 0: a heartbeat,
/// sent every refresh: the peers learn who owns the sender's port slice), sender's member
/// index (2), reserved (2, zero).
pub const HEADER_LEN: usize = 12;
/// One record: family (1), protocol (1), client address (16), VIP (16), client port (2),
/// VIP port (2), backend address (16), backend port (2), source address (16), source port
/// (2). Addresses as 16 bytes (IPv4 in the first 4, the rest zero), ports big endian.
pub const RECORD_LEN: usize = 74;
/// Records per datagram: the datagram stays below 1400 bytes (no fragments on any path).
pub const MAX_RECORDS: usize = (1400 - HEADER_LEN) / RECORD_LEN;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The source ports one instance allocates: the nat range (`FX_NAT_PORT_MIN` to
/// `FX_NAT_PORT_MAX`) cut into `members` equal slices, slice `member`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSlice {
    first: u16,
    count: u16,
}

impl PortSlice {
    /// Slice `member` of `members`; `None` unless `member < members` and each slice holds
    /// at least [`crate::maps::NAT_PROBES`] ports.
    pub fn for_member(member: u16, members: u16) -> Option<Self> {
        if member >= members {
            return None;
        }
        let total = u32::from(NAT_PORT_MAX - NAT_PORT_MIN) + 1;
        let each = total / u32::from(members);
        if each < crate::maps::NAT_PROBES {
            return None;
        }
        let first = u32::from(NAT_PORT_MIN) + each * u32::from(member);
        Some(Self {
            first: u16::try_from(first).ok()?,
            count: u16::try_from(each).ok()?,
        })
    }

    /// The first port.
    pub fn first(self) -> u16 {
        self.first
    }

    /// The number of ports.
    pub fn count(self) -> u16 {
        self.count
    }

    /// Whether `port` (host order) is in the slice.
    pub fn contains(self, port: u16) -> bool {
        port >= self.first && u32::from(port) < u32::from(self.first) + u32::from(self.count)
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes: shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("not a nat sync datagram (magic {0:02x?}, want \"FXNS\")")]
    Magic([u8; 4]),
    #[error("version {0}: this instance speaks version {VERSION}")]
    Version(u8),
    #[error("message kind {0}: only {KIND_FLOWS} (flows) is known")]
    Kind(u8),
    #[error("{len} bytes for {count} records: want {HEADER_LEN} + {count} x {RECORD_LEN}")]
    Length { len: usize, count: usize },
    #[error("the reserved header bytes are not zero")]
    Reserved,
    #[error("record {0}: {1}")]
    Record(usize, &'static str),
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's member index.
    pub member: u16,
    pub flows: Vec<FlowRecord>,
}

/// Encodes up to [`MAX_RECORDS`] flows (the rest are ignored: callers chunk).
pub fn encode(member: u16, flows: &[FlowRecord]) -> Vec<u8> {
    let flows = &flows[..flows.len().min(MAX_RECORDS)];
    let mut b = Vec::with_capacity(HEADER_LEN + flows.len() * RECORD_LEN);
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    b.push(KIND_FLOWS);
    // at most MAX_RECORDS (18)
    b.extend_from_slice(&u16::try_from(flows.len()).unwrap_or(0).to_be_bytes());
    b.extend_from_slice(&member.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    for f in flows {
        b.push(f.ck.family);
        b.push(f.ck.proto);
        b.extend_from_slice(&f.ck.src);
        b.extend_from_slice(&f.ck.dst);
        // the ports are in network order in memory: their bytes as they are
        b.extend_from_slice(&f.ck.sport.to_ne_bytes());
        b.extend_from_slice(&f.ck.dport.to_ne_bytes());
        b.extend_from_slice(&f.baddr);
        b.extend_from_slice(&f.bport.to_ne_bytes());
        b.extend_from_slice(&f.saddr);
        b.extend_from_slice(&f.nport.to_ne_bytes());
    }
    b
}

fn addr16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

fn port(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

/// Decodes a datagram, checking every length and field; never panics.
pub fn decode(b: &[u8]) -> Result<Message, DecodeError> {
    if b.len() < HEADER_LEN {
        return Err(DecodeError::Short(b.len()));
    }
    let magic = [b[0], b[1], b[2], b[3]];
    if magic != MAGIC {
        return Err(DecodeError::Magic(magic));
    }
    if b[4] != VERSION {
        return Err(DecodeError::Version(b[4]));
    }
    if b[5] != KIND_FLOWS {
        return Err(DecodeError::Kind(b[5]));
    }
    let count = usize::from(u16::from_be_bytes([b[6], b[7]]));
    let member = u16::from_be_bytes([b[8], b[9]]);
    if b[10] != 0 || b[11] != 0 {
        return Err(DecodeError::Reserved);
    }
    if count > MAX_RECORDS || b.len() != HEADER_LEN + count * RECORD_LEN {
        return Err(DecodeError::Length {
            len: b.len(),
            count,
        });
    }
    let mut flows = Vec::with_capacity(count);
    for (i, r) in b[HEADER_LEN..].chunks_exact(RECORD_LEN).enumerate() {
        let (family, proto) = (r[0], r[1]);
        if family != AF_INET && family != AF_INET6 {
            return Err(DecodeError::Record(i, "unknown address family"));
        }
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return Err(DecodeError::Record(i, "protocol neither TCP nor UDP"));
        }
        let (src, dst) = (addr16(&r[2..]), addr16(&r[18..]));
        let (sport, dport) = (port(&r[34..]), port(&r[36..]));
        let baddr = addr16(&r[38..]);
        let bport = port(&r[54..]);
        let saddr = addr16(&r[56..]);
        let nport = port(&r[72..]);
        if family == AF_INET
            && [&src, &dst, &baddr, &saddr]
                .iter()
                .any(|a| a[4..].iter().any(|x| *x != 0))
        {
            return Err(DecodeError::Record(
                i,
                "IPv4 address with bytes after the 4th",
            ));
        }
        if sport == 0 || dport == 0 || bport == 0 {
            return Err(DecodeError::Record(i, "port 0"));
        }
        let n = u16::from_be(nport);
        if !(NAT_PORT_MIN..=NAT_PORT_MAX).contains(&n) {
            return Err(DecodeError::Record(i, "source port outside the nat range"));
        }
        flows.push(FlowRecord {
            ck: CtKey {
                src,
                dst,
                sport,
                dport,
                proto,
                family,
                pad: 0,
            },
            baddr,
            saddr,
            bport,
            nport,
            pad: 0,
        });
    }
    Ok(Message { member, flows })
}

/// A `nat_events` ring buffer item as the event it holds (`None`: too short).
pub fn event_of(item: &[u8]) -> Option<NatEvent> {
    if item.len() < size_of::<NatEvent>() {
        return None;
    }
    // SAFETY: NatEvent is #[repr(C)] plain data (aya::Pod: every bit pattern valid) and the
    // item holds at least its size; read_unaligned needs no alignment.
    #[allow(unsafe_code)]
    let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<NatEvent>()) };
    Some(ev)
}

/// The address in a map's 16 bytes.
pub fn ip_of(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// What [`XdpPlane::insert_synced`] did with a peer's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// Known already: its `seen` is now.
    Refreshed,
    /// Its source port is in this instance's own slice (two members with one index?).
    OwnPort,
    /// Its VIP is not a nat service here.
    NoService,
    /// Its backend is not in the service's pool here.
    NoBackend,
}

/// Counters of the sync daemon (`fulcrum_nat_sync_*`).
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Flows sent (to each peer: counted once per flow).
    pub flows_sent: AtomicU64,
    /// Of those, refreshes of long-lived flows.
    pub flows_refreshed: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Flows received and inserted (new).
    pub flows_inserted: AtomicU64,
    /// Flows received that were known (refreshed).
    pub flows_known: AtomicU64,
    /// Flows received and refused ([`Inserted::OwnPort`], `NoService`, `NoBackend`) or
    /// not inserted (map full).
    pub flows_refused: AtomicU64,
    /// Datagrams dropped: malformed.
    pub malformed: AtomicU64,
    /// Datagrams dropped: not from a configured peer.
    pub unknown_peer: AtomicU64,
    /// Datagrams dropped: the sender claims this instance's member index, or one out of
    /// range.
    pub bad_member: AtomicU64,
}

/// What [`run`] needs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub member: u16,
    /// How often each live flow this instance owns is sent again, so that the peers' copies
    /// (which see no traffic) do not age out: a third of the shortest nat idle timeout.
    pub refresh: Duration,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

async fn send_all(
    sock: &tokio::net::UdpSocket,
    opts: &SyncOptions,
    stats: &SyncStats,
    flows: &[FlowRecord],
) {
    // no flows: one datagram without records all the same (peers learn who owns this
    // instance's slice)
    let empty: [&[FlowRecord]; 1] = [&[]];
    let chunks: Vec<&[FlowRecord]> = if flows.is_empty() {
        empty.to_vec()
    } else {
        flows.chunks(MAX_RECORDS).collect()
    };
    for chunk in chunks {
        let d = encode(opts.member, chunk);
        for p in &opts.peers {
            match sock.send_to(&d, p).await {
                Ok(n) => {
                    add(&stats.datagrams_sent, 1);
                    add(&stats.bytes_sent, n as u64);
                }
                Err(e) => {
                    add(&stats.send_errors, 1);
                    tracing::debug!(peer = %p, error = %e, "nat sync: cannot send");
                }
            }
        }
        add(&stats.flows_sent, chunk.len() as u64);
    }
}

/// The flows this instance owns (their port is in its slice), for a refresh.
fn owned_flows(plane: &Arc<Mutex<XdpPlane>>) -> Vec<FlowRecord> {
    let Ok(p) = plane.lock() else {
        return Vec::new();
    };
    let Some(slice) = p.nat_port_slice() else {
        return Vec::new();
    };
    p.nat_flows()
        .into_iter()
        .filter(|(_, f)| slice.contains(u16::from_be(f.nport)))
        .map(|(ck, f)| FlowRecord {
            ck,
            baddr: f.baddr,
            saddr: f.saddr,
            bport: f.bport,
            nport: f.nport,
            pad: 0,
        })
        .collect()
}

/// Binds `listen` (an error here is the caller's: a clear message at start).
pub fn bind(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(listen)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The sync daemon: sends the new flows the data path reports (and, every
/// `opts.refresh`, every live flow this instance owns) to every peer, and inserts the
/// flows the peers send. Runs until the task is dropped.
pub async fn run(
    plane: Arc<Mutex<XdpPlane>>,
    socket: std::net::UdpSocket,
    opts: SyncOptions,
    stats: Arc<SyncStats>,
) {
    let sock = match tokio::net::UdpSocket::from_std(socket) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "nat sync: cannot use the socket; flows are not shared");
            return;
        }
    };
    let events = plane.lock().ok().and_then(|mut p| p.take_nat_events());
    let Some(events) = events else {
        tracing::error!("nat sync: the data plane has no ring buffer of new flows");
        return;
    };
    // SAFETY: the ring buffer owns its fd (MapData) and AsyncFd owns the ring buffer: the
    // fd stays open while it is registered.
    #[allow(unsafe_code)]
    let registered = unsafe { tokio::io::unix::AsyncFd::register(events) };
    let mut events = match registered {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "nat sync: cannot poll the ring buffer");
            return;
        }
    };
    let recv = tokio::spawn(receive(
        Arc::clone(&plane),
        Arc::clone(&sock),
        opts.clone(),
        Arc::clone(&stats),
    ));
    let _abort = AbortOnDrop(recv);
    let mut refresh = tokio::time::interval(opts.refresh);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // a heartbeat every second: a peer that starts (or restarts) learns this instance's
    // slice at once, not at the next refresh
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // the data path wakes this task only when a backlog builds up (types.h,
    // FX_NAT_EVENTS_WAKE): below, it reads the ring buffer this often
    let mut poll = tokio::time::interval(Duration::from_millis(crate::maps::NAT_EVENTS_POLL_MS));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(MAX_RECORDS);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => send_all(&sock, &opts, &stats, &[]).await,
            g = events.readable_mut() => {
                let Ok(mut g) = g else {
                    tracing::error!("nat sync: the ring buffer cannot be polled; flows are not shared");
                    return;
                };
                g.clear_ready();
                drain(g.get_inner_mut(), &mut batch, &sock, &opts, &stats).await;
            }
            _ = poll.tick() => {
                drain(events.get_mut(), &mut batch, &sock, &opts, &stats).await;
            }
            _ = refresh.tick() => {
                let flows = owned_flows(&plane);
                add(&stats.flows_refreshed, flows.len() as u64);
                send_all(&sock, &opts, &stats, &flows).await;
            }
        }
    }
}

/// Sends every event in the ring buffer, `MAX_RECORDS` a datagram.
async fn drain(
    rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
    batch: &mut Vec<FlowRecord>,
    sock: &tokio::net::UdpSocket,
    opts: &SyncOptions,
    stats: &SyncStats,
) {
    loop {
        while batch.len() < MAX_RECORDS {
            let Some(item) = rb.next() else {
                break;
            };
            if let Some(ev) = event_of(&item) {
                batch.push(ev);
            }
        }
        if batch.is_empty() {
            return;
        }
        let full = batch.len() == MAX_RECORDS;
        send_all(sock, opts, stats, batch).await;
        batch.clear();
        if !full {
            return;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn receive(
    plane: Arc<Mutex<XdpPlane>>,
    sock: Arc<tokio::net::UdpSocket>,
    opts: SyncOptions,
    stats: Arc<SyncStats>,
) {
    let mut buf = vec![0u8; 2048];
    let mut last_log: Option<std::time::Instant> = None;
    let mut owners: std::collections::HashMap<u16, IpAddr> = std::collections::HashMap::new();
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "nat sync: receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        add(&stats.datagrams_received, 1);
        add(&stats.bytes_received, n as u64);
        if !opts.peers.iter().any(|p| p.ip() == from.ip()) {
            add(&stats.unknown_peer, 1);
            continue;
        }
        let msg = match decode(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                add(&stats.malformed, 1);
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_log = Some(std::time::Instant::now());
                    tracing::warn!(peer = %from, error = %e, "nat sync: malformed datagram dropped");
                }
                continue;
            }
        };
        if msg.member == opts.member || u32::from(msg.member) >= crate::maps::NAT_SYNC_MAX_MEMBERS {
            add(&stats.bad_member, 1);
            continue;
        }
        let Ok(mut p) = plane.lock() else {
            return;
        };
        // the sender owns its slice: replies to its ports that arrive here first go there
        if owners.get(&msg.member) != Some(&from.ip()) {
            match p.set_nat_owner(msg.member, from.ip()) {
                Ok(()) => {
                    owners.insert(msg.member, from.ip());
                    tracing::info!(member = msg.member, peer = %from, "nat sync: peer's slice owner");
                }
                Err(e) => tracing::warn!(error = %e, "nat sync: cannot record the peer's slice"),
            }
        }
        for f in &msg.flows {
            match p.insert_synced(f) {
                Ok(Inserted::New) => add(&stats.flows_inserted, 1),
                Ok(Inserted::Refreshed) => add(&stats.flows_known, 1),
                Ok(other) => {
                    add(&stats.flows_refused, 1);
                    tracing::debug!(peer = %from, reason = ?other, "nat sync: flow refused");
                }
                Err(e) => {
                    add(&stats.flows_refused, 1);
                    tracing::debug!(peer = %from, error = %e, "nat sync: flow not inserted");
                }
            }
        }
    }
}

/// `fulcrum_xdp_nat_sync_total{event}`: the daemon's counters and the data path's
/// (`maps::NSS_*`), read at scrape time.
#[derive(Debug)]
pub struct NatSyncCollector {
    pub plane: Arc<Mutex<XdpPlane>>,
    pub stats: Arc<SyncStats>,
}

impl prometheus_client::collector::Collector for NatSyncCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let s = &self.stats;
        let dp = self
            .plane
            .lock()
            .map_or([0; crate::maps::NSS_COUNTERS as usize], |p| {
                p.nat_sync_counters()
            });
        let rows: [(&str, u64); 18] = [
            ("flows_sent", s.flows_sent.load(Ordering::Relaxed)),
            ("flows_refreshed", s.flows_refreshed.load(Ordering::Relaxed)),
            ("datagrams_sent", s.datagrams_sent.load(Ordering::Relaxed)),
            ("bytes_sent", s.bytes_sent.load(Ordering::Relaxed)),
            ("send_errors", s.send_errors.load(Ordering::Relaxed)),
            (
                "datagrams_received",
                s.datagrams_received.load(Ordering::Relaxed),
            ),
            ("bytes_received", s.bytes_received.load(Ordering::Relaxed)),
            ("flows_inserted", s.flows_inserted.load(Ordering::Relaxed)),
            ("flows_known", s.flows_known.load(Ordering::Relaxed)),
            ("flows_refused", s.flows_refused.load(Ordering::Relaxed)),
            ("malformed", s.malformed.load(Ordering::Relaxed)),
            ("unknown_peer", s.unknown_peer.load(Ordering::Relaxed)),
            ("bad_member", s.bad_member.load(Ordering::Relaxed)),
            ("reply_to_owner", dp[crate::maps::NSS_TO_OWNER as usize]),
            ("events_lost", dp[crate::maps::NSS_EVENTS_LOST as usize]),
            ("reply_miss", dp[crate::maps::NSS_REPLY_MISS as usize]),
            ("way_back_found", dp[crate::maps::NSS_REV_FILLED as usize]),
            (
                "way_back_missing",
                dp[crate::maps::NSS_REV_NO_ROUTE as usize],
            ),
        ];
        let mut m = enc.encode_descriptor(
            "fulcrum_xdp_nat_sync",
            "nat sync between instances ([xdp.sync]), by event",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (event, n) in rows {
            prometheus_client::metrics::counter::ConstCounter::new(n)
                .encode(m.encode_family(&[("event", event)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(i: u16) -> FlowRecord {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[198, 18, 1, 10]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[198, 19, 0, 10]);
        let mut baddr = [0u8; 16];
        baddr[..4].copy_from_slice(&[198, 18, 0, 11]);
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[198, 18, 2, 1]);
        FlowRecord {
            ck: CtKey {
                src,
                dst,
                sport: (40_000 + i).to_be(),
                dport: 80u16.to_be(),
                proto: IPPROTO_TCP,
                family: AF_INET,
                pad: 0,
            },
            baddr,
            saddr,
            bport: 80u16.to_be(),
            nport: (20_000 + i).to_be(),
            pad: 0,
        }
    }

    #[test]
    fn round_trip() {
        let flows: Vec<_> = (0..5).map(flow).collect();
        let d = encode(2, &flows);
        assert_eq!(d.len(), HEADER_LEN + 5 * RECORD_LEN);
        let m = decode(&d).expect("decodes");
        assert_eq!(m.member, 2);
        assert_eq!(m.flows, flows);
    }

    #[test]
    fn a_heartbeat_has_no_records() {
        let d = encode(5, &[]);
        assert_eq!(d.len(), HEADER_LEN);
        assert_eq!(
            decode(&d),
            Ok(Message {
                member: 5,
                flows: vec![]
            })
        );
    }

    #[test]
    fn at_most_max_records_per_datagram() {
        let flows: Vec<_> = (0..40).map(flow).collect();
        let d = encode(0, &flows);
        assert!(d.len() <= 1400);
        assert_eq!(decode(&d).expect("decodes").flows.len(), MAX_RECORDS);
    }

    #[test]
    fn malformed_datagrams_are_errors_never_panics() {
        let good = encode(1, &[flow(1), flow(2)]);
        // every truncation
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "truncated to {n}");
        }
        // a byte too many
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(decode(&long), Err(DecodeError::Length { .. })));
        let set = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            decode(&b)
        };
        assert!(matches!(set(0, b'X'), Err(DecodeError::Magic(_))));
        assert!(matches!(set(4, 2), Err(DecodeError::Version(2))));
        assert!(matches!(set(5, 9), Err(DecodeError::Kind(9))));
        assert!(matches!(set(7, 3), Err(DecodeError::Length { .. })));
        assert!(matches!(set(11, 1), Err(DecodeError::Reserved)));
        assert!(matches!(set(7, 0), Err(DecodeError::Length { .. })));
        let r1 = HEADER_LEN + RECORD_LEN; // the second record
        assert!(matches!(set(r1, 7), Err(DecodeError::Record(1, _))));
        assert!(matches!(set(r1 + 1, 1), Err(DecodeError::Record(1, _))));
        // an IPv4 client address with a 5th byte
        assert!(matches!(set(r1 + 2 + 4, 1), Err(DecodeError::Record(1, _))));
        // source port 1000: below the nat range
        let mut b = good.clone();
        b[r1 + 72..r1 + 74].copy_from_slice(&1000u16.to_be_bytes());
        assert!(matches!(decode(&b), Err(DecodeError::Record(1, _))));
        // every single-byte corruption of the header and the first record: no panic
        for i in 0..HEADER_LEN + RECORD_LEN {
            for v in [0u8, 1, 0x7f, 0xff] {
                let _ = set(i, v);
            }
        }
    }

    #[test]
    fn port_slices_are_disjoint_and_cover_the_range() {
        for members in 1..=64u16 {
            let slices: Vec<_> = (0..members)
                .map(|m| PortSlice::for_member(m, members).expect("slice"))
                .collect();
            for w in slices.windows(2) {
                assert_eq!(
                    u32::from(w[0].first()) + u32::from(w[0].count()),
                    u32::from(w[1].first())
                );
            }
            let last = slices[slices.len() - 1];
            assert!(
                u32::from(last.first()) + u32::from(last.count()) <= u32::from(NAT_PORT_MAX) + 1
            );
            assert_eq!(slices[0].first(), NAT_PORT_MIN);
            assert!(slices[0].contains(NAT_PORT_MIN));
            assert!(!slices[0].contains(slices[0].first() + slices[0].count()));
        }
        assert_eq!(PortSlice::for_member(3, 3), None);
        assert_eq!(PortSlice::for_member(0, 0), None);
    }
}
