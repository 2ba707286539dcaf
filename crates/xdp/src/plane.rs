//! Loading, attaching and map control.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};
use fulcrum_core::config::{TunnelKind, XdpMode};
use fulcrum_core::model::{Backend, BackendState, HashKey, PrimeTableSize, Proto};
use fulcrum_core::sched::maglev::Maglev;

use crate::maps::{
    addr_bytes, BackendEntry, Counter, Ct4Key, CtKey, CtValue, Flow, Flow4Set, Flow6Set, FlowSet,
    NatFwd, NatRev, ScAddr, SvcKey, SvcValue, AF_INET6, BACKEND_ALIVE, FLOW4_LRU, FLOW4_SETS,
    FLOW6_SETS, HASH_FIVE_TUPLE, HASH_SRC_IP, HASH_SRC_IP_PORT, MAGLEV_MAX, MAX_BACKENDS,
    MAX_SERVICES, MODE_DSR, MODE_NAT, MODE_TUNNEL, NAT_FIN_FWD, NAT_FIN_REV, NAT_RST, STATS_ROWS,
    SVC_PREV_TABLE, SVC_SECOND_CHANCE, TUNNEL_GUE, TUNNEL_IPIP,
};

/// The GUE destination port when none is configured (`fulcrum decap --gue-port`).
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("cannot load the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("BPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("{0}")]
    Config(String),
}

/// How a service's packets reach its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Direct server return: same IP packet, the backend's MAC.
    Dsr,
    /// Encapsulated to the backend; `source` is the outer source (default: the address the
    /// kernel would use towards the first backend of that family).
    Tunnel {
        kind: TunnelKind,
        source: Option<IpAddr>,
        /// GUE only: GLB-style second chance (docs/xdp.md, "Second chance").
        second_chance: bool,
    },
    /// Full NAT: destination -> the backend (address and port), source -> `source` (default:
    /// the address the kernel would use towards the first backend of that family) with a
    /// port allocated per flow; replies are translated back (docs/xdp.md).
    Nat { source: Option<IpAddr> },
}

/// How long idle nat flows keep their port (the sweeper releases them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatTimeouts {
    /// TCP without FIN/RST both ways (also half-closed).
    pub tcp: std::time::Duration,
    /// TCP after a FIN each way, or a RST: the last ACK and retransmissions get this long.
    pub tcp_closing: std::time::Duration,
    /// UDP.
    pub udp: std::time::Duration,
}

impl Default for NatTimeouts {
    fn default() -> Self {
        Self {
            tcp: std::time::Duration::from_secs(300),
            tcp_closing: std::time::Duration::from_secs(2),
            udp: std::time::Duration::from_secs(30),
        }
    }
}

/// What one [`XdpPlane::sweep_nat`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatSweep {
    /// Flows still tracked.
    pub live: usize,
    /// Flows released (their ports are free again).
    pub released: usize,
}

/// A service as the data plane needs it.
#[derive(Debug, Clone)]
pub struct XdpService {
    pub name: String,
    pub vip: SocketAddr,
    pub proto: Proto,
    pub mode: Mode,
    pub hash_key: HashKey,
    /// The pool's name (backend entries are per pool and address).
    pub pool: String,
    /// The pool's backends with their effective state.
    pub backends: Vec<Backend>,
    /// Maglev table size `M` (prime, at most [`MAGLEV_MAX`]).
    pub table_size: PrimeTableSize,
}

/// Options of [`XdpPlane::load`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Benchmarks: every packet is new to its CPU (the flow cache and the per-CPU conntrack
    /// are probed, their answers ignored; IPv6 skips the conntrack lookup): the miss path.
    pub bench_ct_miss: bool,
    /// Benchmarks: undo the encapsulation after it is built (for `repeat`).
    pub bench_undo_encap: bool,
    /// Benchmarks: bypass the per-CPU flow cache (the conntrack hit path without it).
    pub bench_no_fcache: bool,
    /// The GUE destination port of tunnel services.
    pub gue_port: Option<u16>,
    /// nat idle and closing timeouts.
    pub nat_timeouts: NatTimeouts,
    /// nat sync (docs/fleet.md, "nat flows in sync"): `Some` turns it on, with the source
    /// ports this instance allocates (a slice disjoint from its peers').
    pub nat_sync: Option<crate::natsync::PortSlice>,
}

/// The maps a binary upgrade hands over (pinned by name in [`crate::XDP_LB_STATE_OBJ`]):
/// the conntrack and nat flows, and the counters.
pub const STATE_MAPS: [&str; 8] = [
    "conntrack",
    "ct4",
    "ct4_filter",
    "flows4",
    "flows6",
    "nat_fwd",
    "nat_rev",
    "stats",
];

/// The layout of [`STATE_MAPS`] and of the ids their entries hold: a new process takes the
/// maps over only from a process with the same version (else it starts with empty ones).
pub const STATE_VERSION: u32 = 2;

/// What a binary upgrade hands from the running data plane to the new one: the state maps,
/// the XDP link, and the ids the maps' entries refer to (service rows, backend ids).
#[derive(Debug, Default)]
pub struct Handover {
    /// [`STATE_VERSION`] of the process that sent it.
    pub version: u32,
    /// The interface the link attaches to, and its mode (`native`/`generic`).
    pub interface: String,
    pub mode: String,
    /// The state maps by name.
    pub maps: Vec<(String, std::os::fd::OwnedFd)>,
    /// The XDP link (the new process swaps its program in).
    pub link: Option<std::os::fd::OwnedFd>,
    /// Service name -> row.
    pub svc_ids: Vec<(String, u32)>,
    /// (pool, backend address) -> backend id.
    pub backend_ids: Vec<(String, SocketAddr, u32)>,
}

/// What the metrics collector reads: the per-CPU counters and each row's service name.
pub(crate) struct StatsView {
    pub(crate) map: PerCpuArray<MapData, Counter>,
    pub(crate) names: Vec<Option<String>>,
    /// nat flows tracked at the last sweep.
    pub(crate) nat_flows: u64,
}

impl std::fmt::Debug for StatsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsView")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// What is installed for one service id.
#[derive(Debug, Clone)]
struct Installed {
    key: SvcKey,
    value: SvcValue,
    /// Slot (0/1) of the active table, and the table written there (backend ids).
    slot: u32,
    table: Vec<u32>,
}

/// The loaded load balancer and the state of its maps.
pub struct XdpPlane {
    ebpf: Ebpf,
    services: BpfHashMap<MapData, SvcKey, SvcValue>,
    backends: Array<MapData, BackendEntry>,
    maglev: Array<MapData, u32>,
    nh_gen: Array<MapData, u64>,
    nh_miss: Array<MapData, u32>,
    /// Managed neighbour entries for the backends' next hops (after [`Self::manage_neighbours`]).
    neighbours: Option<crate::neigh::Neighbours>,
    /// Next hops whose managed entry the kernel refused, as last logged.
    nh_failed: Vec<crate::neigh::NextHop>,
    flows4: PerCpuArray<MapData, Flow4Set>,
    flows6: PerCpuArray<MapData, Flow6Set>,
    ct4: BpfHashMap<MapData, Ct4Key, CtValue>,
    ct4_filter: Array<MapData, u32>,
    nat_fwd: BpfHashMap<MapData, CtKey, NatFwd>,
    nat_rev: BpfHashMap<MapData, CtKey, NatRev>,
    nat_on: Array<MapData, u32>,
    nat_timeouts: NatTimeouts,
    /// nat sync: on, and its maps (the ring buffer is taken by [`Self::take_nat_events`]).
    nat_sync: Option<crate::natsync::PortSlice>,
    nat_events: Option<aya::maps::RingBuf<MapData>>,
    nat_srcs: BpfHashMap<MapData, crate::maps::NatSrc, u32>,
    nat_srcs_installed: Vec<crate::maps::NatSrc>,
    nat_sync_stats: Array<MapData, u64>,
    nat_owners: Array<MapData, crate::maps::NatOwner>,
    /// nat services by VIP: (service row, pool), for flows peers send.
    nat_services: HashMap<SvcKey, (u32, String)>,
    /// Fragment entries (VIP, port 0, proto): a copy of the lowest-port service's value.
    frag_installed: HashMap<SvcKey, SvcValue>,
    gen: u64,
    stats: Arc<Mutex<StatsView>>,
    attached: Option<String>,
    /// The XDP link (detached when the last descriptor of it closes: this process's exit, or
    /// the new process's after a binary upgrade).
    link: Option<std::os::fd::OwnedFd>,
    /// Descriptors of the state maps ([`STATE_MAPS`]), for a binary upgrade.
    state_fds: Vec<(&'static str, std::os::fd::OwnedFd)>,
    /// From a binary upgrade: the running process's link, taken over at [`Self::attach`].
    inherited_link: Option<(String, String, std::os::fd::OwnedFd)>,
    /// From a binary upgrade: the first [`Self::update`] keeps the inherited flows on their
    /// backends whatever the new tables say.
    adopt_flows: bool,
    gue_port: u16,
    svc_ids: HashMap<String, u32>,
    installed: HashMap<u32, Installed>,
    backend_ids: HashMap<(String, SocketAddr), u32>,
    backend_entries: HashMap<u32, BackendEntry>,
}

/// An entry of a per-CPU conntrack (`flows4` or `flows6`), as [`XdpPlane::promote_before_switch`]
/// reads it.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    src: IpAddr,
    dst: IpAddr,
    /// `sport << 16 | dport`, as the two network-order `u16` lie in the packet
    ports: u32,
    proto: u8,
    row: u8,
    hash_key: u8,
    backend: u32,
    hash: u32,
}

impl<A: Copy + Into<IpAddr>> From<&Flow<A>> for Tracked {
    fn from(w: &Flow<A>) -> Self {
        Self {
            src: w.saddr.into(),
            dst: w.daddr.into(),
            ports: w.ports,
            proto: w.proto,
            row: w.row,
            hash_key: w.hash_key,
            backend: w.backend,
            hash: w.hash,
        }
    }
}

/// Appends to `out` the used, not yet promoted ways of the per-CPU conntrack `flows` (its
/// `sets` sets, on every CPU).
fn tracked_ways<A, const W: usize>(
    flows: &PerCpuArray<MapData, FlowSet<A, W>>,
    sets: u32,
    out: &mut Vec<Tracked>,
) -> Result<(), XdpError>
where
    A: Copy + Into<IpAddr>,
    FlowSet<A, W>: aya::Pod,
{
    for set in 0..sets {
        for s in flows.get(&set, 0)?.iter() {
            let ways = s
                .way
                .iter()
                .filter(|w| w.seen != 0 && w.flags & FLOW4_LRU == 0);
            out.extend(ways.map(Tracked::from));
        }
    }
    Ok(())
}

impl std::fmt::Debug for XdpPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpPlane")
            .field("attached", &self.attached)
            .field("svc_ids", &self.svc_ids)
            .finish_non_exhaustive()
    }
}

/// Descriptors of the state maps ([`STATE_MAPS`]) of a loaded object.
fn state_fds(ebpf: &Ebpf) -> Result<Vec<(&'static str, std::os::fd::OwnedFd)>, XdpError> {
    use aya::maps::Map;
    let mut out = Vec::new();
    for name in STATE_MAPS {
        let Some(
            Map::Array(data)
            | Map::HashMap(data)
            | Map::LruHashMap(data)
            | Map::PerCpuArray(data)
            | Map::PerCpuHashMap(data),
        ) = ebpf.map(name)
        else {
            return Err(XdpError::Config(format!(
                "the BPF object has no map `{name}` of the expected kind"
            )));
        };
        let fd = std::os::fd::AsFd::as_fd(data.fd())
            .try_clone_to_owned()
            .map_err(|e| XdpError::Config(format!("cannot duplicate map `{name}`: {e}")))?;
        out.push((name, fd));
    }
    Ok(out)
}

/// The keys of `map` that `keep` does not keep (to remove them, after).
fn keys_not<K: Clone, V>(map: &HashMap<K, V>, keep: impl Fn(&K) -> bool) -> Vec<K> {
    map.keys().filter(|k| !keep(k)).cloned().collect()
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| XdpError::Config(format!("the BPF object has no map `{name}`")))?;
    Ok(T::try_from(map)?)
}

impl XdpPlane {
    /// Loads the programs and maps into the kernel (nothing attached yet).
    pub fn load(opts: LoadOptions) -> Result<Self, XdpError> {
        Self::load_object(opts, crate::XDP_LB_OBJ, None)
    }

    /// Loads the programs against the state maps of the running process ([`Handover`]), so
    /// that conntrack and nat flows survive a binary upgrade; [`Self::attach`] then swaps
    /// this program into the running one's link. The maps are pinned for the load in a
    /// private bpffs directory, removed right after ([`crate::link::BpfDir`]). From another
    /// [`STATE_VERSION`]: a plain load (flows start over), logged.
    pub fn load_inherited(opts: LoadOptions, h: Handover) -> Result<Self, XdpError> {
        if h.version != STATE_VERSION {
            tracing::warn!(
                theirs = h.version,
                ours = STATE_VERSION,
                "the running process's XDP flow state has another layout: starting with empty conntrack and nat tables"
            );
            return Self::load(opts);
        }
        let dir = crate::link::BpfDir::new().map_err(|e| {
            XdpError::Config(format!(
                "cannot take the XDP maps over (they are pinned for the load in a bpffs directory): {e}"
            ))
        })?;
        let mut names = Vec::new();
        for (name, fd) in h.maps {
            if !STATE_MAPS.contains(&name.as_str()) {
                continue;
            }
            let m = MapData::from_fd(fd)?;
            m.pin(dir.path().join(&name)).map_err(|e| {
                XdpError::Config(format!("cannot pin the handed-over map `{name}`: {e}"))
            })?;
            names.push(name);
        }
        let mut plane = Self::load_object(opts, crate::XDP_LB_STATE_OBJ, Some(dir.path()))?;
        drop(dir);
        plane.svc_ids = h.svc_ids.into_iter().collect();
        plane.backend_ids = h
            .backend_ids
            .into_iter()
            .map(|(pool, addr, id)| ((pool, addr), id))
            .collect();
        plane.inherited_link = h.link.map(|l| (h.interface, h.mode, l));
        plane.adopt_flows = true;
        tracing::info!(maps = ?names, services = plane.svc_ids.len(), backends = plane.backend_ids.len(), "XDP: took the running process's flow state over");
        Ok(plane)
    }

    /// For a binary upgrade: the state maps, the link and the ids (descriptors duplicated;
    /// this plane keeps its own).
    pub fn handover(&self, mode: XdpMode) -> Result<Handover, XdpError> {
        let dup = |f: &std::os::fd::OwnedFd| {
            f.try_clone()
                .map_err(|e| XdpError::Config(format!("cannot duplicate a descriptor: {e}")))
        };
        Ok(Handover {
            version: STATE_VERSION,
            interface: self.attached.clone().unwrap_or_default(),
            mode: mode.as_str().to_owned(),
            maps: self
                .state_fds
                .iter()
                .map(|(n, f)| Ok(((*n).to_owned(), dup(f)?)))
                .collect::<Result<_, XdpError>>()?,
            link: self.link.as_ref().map(dup).transpose()?,
            svc_ids: self.svc_ids.iter().map(|(n, i)| (n.clone(), *i)).collect(),
            backend_ids: self
                .backend_ids
                .iter()
                .map(|((p, a), i)| (p.clone(), *a, *i))
                .collect(),
        })
    }

    fn load_object(
        opts: LoadOptions,
        object: &[u8],
        pin_dir: Option<&std::path::Path>,
    ) -> Result<Self, XdpError> {
        let miss = u8::from(opts.bench_ct_miss);
        let undo = u8::from(opts.bench_undo_encap);
        let nofc = u8::from(opts.bench_no_fcache);
        // nat flows from the flow cache: its hits do not refresh `seen` (types.h)
        let t = opts.nat_timeouts;
        let nat_fcache = u8::from(
            t.tcp.min(t.udp)
                >= std::time::Duration::from_nanos(crate::maps::NAT_FCACHE_MIN_TIMEOUT_NS),
        );
        let sync_on = u8::from(opts.nat_sync.is_some());
        let (port_lo, port_count) = opts.nat_sync.map_or(
            (
                crate::maps::NAT_PORT_MIN,
                crate::maps::NAT_PORT_MAX - crate::maps::NAT_PORT_MIN + 1,
            ),
            |p| (p.first(), p.count()),
        );
        let mut loader = EbpfLoader::new();
        if let Some(d) = pin_dir {
            loader.map_pin_path(d);
        }
        let mut ebpf = loader
            .set_global("fx_bench_ct_miss", &miss, true)
            .set_global("fx_bench_undo_encap", &undo, true)
            .set_global("fx_bench_no_fcache", &nofc, true)
            .set_global("fx_nat_fcache", &nat_fcache, true)
            .set_global("fx_nat_sync", &sync_on, true)
            .set_global("fx_nat_port_lo", &port_lo, true)
            .set_global("fx_nat_port_count", &port_count, true)
            .load(object)?;
        let state_fds = state_fds(&ebpf)?;
        for name in ["xdp_lb", "xdp_pass"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| XdpError::Config(format!("no program `{name}`")))?
                .try_into()?;
            prog.load()?;
        }
        let services = take(&mut ebpf, "services")?;
        let backends = take(&mut ebpf, "backends")?;
        let maglev = take(&mut ebpf, "maglev")?;
        let stats_map = take(&mut ebpf, "stats")?;
        let mut nh_gen: Array<MapData, u64> = take(&mut ebpf, "nh_gen")?;
        nh_gen.set(0, 1, 0)?;
        let nh_miss = take(&mut ebpf, "nh_miss")?;
        let (flows4, flows6) = (take(&mut ebpf, "flows4")?, take(&mut ebpf, "flows6")?);
        let ct4 = take(&mut ebpf, "ct4")?;
        let ct4_filter = take(&mut ebpf, "ct4_filter")?;
        let nat_fwd = take(&mut ebpf, "nat_fwd")?;
        let nat_rev = take(&mut ebpf, "nat_rev")?;
        let nat_on = take(&mut ebpf, "nat_on")?;
        let nat_events = if opts.nat_sync.is_some() {
            Some(take(&mut ebpf, "nat_events")?)
        } else {
            None
        };
        let nat_srcs = take(&mut ebpf, "nat_srcs")?;
        let nat_sync_stats = take(&mut ebpf, "nat_sync_stats")?;
        let nat_owners = take(&mut ebpf, "nat_owners")?;
        Ok(Self {
            ebpf,
            services,
            backends,
            maglev,
            nh_gen,
            nh_miss,
            neighbours: None,
            nh_failed: Vec::new(),
            flows4,
            flows6,
            ct4,
            ct4_filter,
            nat_fwd,
            nat_rev,
            nat_on,
            nat_timeouts: opts.nat_timeouts,
            nat_sync: opts.nat_sync,
            nat_events,
            nat_srcs,
            nat_srcs_installed: Vec::new(),
            nat_sync_stats,
            nat_owners,
            nat_services: HashMap::new(),
            frag_installed: HashMap::new(),
            gen: 1,
            stats: Arc::new(Mutex::new(StatsView {
                map: stats_map,
                names: vec![None; STATS_ROWS as usize],
                nat_flows: 0,
            })),
            attached: None,
            link: None,
            state_fds,
            inherited_link: None,
            adopt_flows: false,
            gue_port: opts.gue_port.unwrap_or(DEFAULT_GUE_PORT),
            svc_ids: HashMap::new(),
            installed: HashMap::new(),
            backend_ids: HashMap::new(),
            backend_entries: HashMap::new(),
        })
    }

    /// A loaded program (`xdp_lb` or `xdp_pass`), e.g. for [`crate::testrun`].
    pub fn program(&self, name: &str) -> Result<&Xdp, XdpError> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or_else(|| XdpError::Config(format!("no program `{name}`")))?
            .try_into()?)
    }

    /// The conntrack map (for tests and diagnostics).
    pub fn conntrack(
        &self,
    ) -> Result<aya::maps::HashMap<&MapData, crate::maps::CtKey, crate::maps::CtValue>, XdpError>
    {
        let map = self
            .ebpf
            .map("conntrack")
            .ok_or_else(|| XdpError::Config("no map `conntrack`".into()))?;
        Ok(aya::maps::HashMap::try_from(map)?)
    }

    /// The valid slots of the IPv4 flow cache `fcache4` on every CPU (for tests and
    /// diagnostics), with their index: those filled since the last generation bump.
    pub fn fcache4_flows(&self) -> Result<Vec<(u32, crate::maps::Fcache4)>, XdpError> {
        self.valid_cache_slots(
            "fcache4",
            crate::maps::FCACHE_SLOTS,
            |e: &crate::maps::Fcache4| e.gen,
        )
    }

    /// The valid slots of the IPv6 flow cache `fcache6` on every CPU (for tests and
    /// diagnostics), with their index: those filled since the last generation bump.
    pub fn fcache6_flows(&self) -> Result<Vec<(u32, crate::maps::Fcache6)>, XdpError> {
        self.valid_cache_slots(
            "fcache6",
            crate::maps::FCACHE6_SLOTS,
            |e: &crate::maps::Fcache6| e.gen,
        )
    }

    /// The slots of the per-CPU flow cache `name` (`slots` long) whose generation (`gen_of`)
    /// is the current one, on every CPU, with their index.
    fn valid_cache_slots<T: aya::Pod>(
        &self,
        name: &str,
        slots: u32,
        gen_of: fn(&T) -> u32,
    ) -> Result<Vec<(u32, T)>, XdpError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| XdpError::Config(format!("no map `{name}`")))?;
        let map: PerCpuArray<&MapData, T> = PerCpuArray::try_from(map)?;
        let gen = self.nh_gen.get(&0, 0)? as u32;
        let mut out = Vec::new();
        for slot in 0..slots {
            let per_cpu = map.get(&slot, 0)?;
            out.extend(
                per_cpu
                    .iter()
                    .filter(|e| gen != 0 && gen_of(e) == gen)
                    .map(|e| (slot, *e)),
            );
        }
        Ok(out)
    }

    /// The shared IPv4 conntrack `ct4` (for tests and diagnostics): only promoted flows, those
    /// the current Maglev tables would send to another backend (docs/xdp.md, "Conntrack").
    pub fn ct4(&self) -> Result<&BpfHashMap<MapData, Ct4Key, CtValue>, XdpError> {
        Ok(&self.ct4)
    }

    /// Every entry of the per-CPU conntracks `flows4` and `flows6`, on every CPU, not yet
    /// promoted into the shared LRUs (one map read per set: 65536 + 32768 syscalls, each
    /// copying the set of every CPU).
    fn flows_snapshot(&self) -> Result<Vec<Tracked>, XdpError> {
        let mut out = Vec::new();
        tracked_ways(&self.flows4, FLOW4_SETS, &mut out)?;
        tracked_ways(&self.flows6, FLOW6_SETS, &mut out)?;
        Ok(out)
    }

    /// Before a service's new Maglev table is switched in: copies into the shared LRU (`ct4`
    /// for IPv4, `conntrack` for IPv6) every flow of the service in the per-CPU conntrack
    /// (any CPU) that the new table would send to another backend, so that its packets on a
    /// CPU without its entry still reach its backend (RSS keeps a flow on one CPU on a NIC;
    /// veth and similar devices run XDP on the sender's CPU). The data path promotes the
    /// same flows at their next packet on their own CPU; this closes the gap before that.
    /// `snapshot`: read once per update.
    fn promote_before_switch(
        &mut self,
        id: u32,
        s: &XdpService,
        table: &[u32],
        snapshot: &mut Option<Vec<Tracked>>,
    ) -> Result<(), XdpError> {
        if snapshot.is_none() {
            *snapshot = Some(self.flows_snapshot()?);
        }
        let new_key = match s.hash_key {
            HashKey::SrcIp => HASH_SRC_IP,
            HashKey::SrcIpPort => HASH_SRC_IP_PORT,
            _ => HASH_FIVE_TUPLE,
        };
        let proto = match s.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        };
        let mut promoted = 0usize;
        for f in snapshot.as_deref().unwrap_or_default() {
            // a dead backend's flows move anyway (the data path re-decides them)
            let alive = self
                .backend_entries
                .get(&f.backend)
                .is_some_and(|b| b.flags & BACKEND_ALIVE != 0);
            if u32::from(f.row) != id || f.proto != proto || !alive {
                continue;
            }
            let hash = if f.hash_key == new_key {
                Some(f.hash)
            } else {
                let port = |p: u32| u16::from_be(p as u16);
                let flow = fulcrum_core::model::FlowTuple {
                    src: SocketAddr::new(f.src, port(f.ports >> 16)),
                    dst: SocketAddr::new(f.dst, port(f.ports & 0xffff)),
                    proto: s.proto,
                };
                fulcrum_core::hash::flow_hash(&s.hash_key, &flow)
            };
            let now = hash
                .filter(|_| !table.is_empty())
                .map(|h| table[(h % table.len() as u32) as usize]);
            if now == Some(f.backend) {
                continue;
            }
            let value = CtValue {
                backend: f.backend,
                svc: id,
                hash: f.hash,
                pad: 0,
            };
            let (sport, dport) = ((f.ports >> 16) as u16, (f.ports & 0xffff) as u16);
            match (f.src, f.dst) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                    let key = Ct4Key {
                        saddr: src.octets(),
                        daddr: dst.octets(),
                        sport,
                        dport,
                        proto: f.proto,
                        pad0: 0,
                        pad1: 0,
                    };
                    // the filter first: from then on the data path looks the flow up in `ct4`
                    let fh = crate::maps::tuple_hash4(key.saddr, key.daddr, f.ports, f.proto);
                    self.ct4_filter
                        .set(fh >> crate::maps::CT4_FILTER_SHIFT, 1, 0)?;
                    self.ct4.insert(key, value, 0)?;
                }
                (IpAddr::V6(src), IpAddr::V6(dst)) => {
                    let key = CtKey {
                        src: src.octets(),
                        dst: dst.octets(),
                        sport,
                        dport,
                        proto: f.proto,
                        family: AF_INET6,
                        pad: 0,
                    };
                    let map = self
                        .ebpf
                        .map_mut("conntrack")
                        .ok_or_else(|| XdpError::Config("no map `conntrack`".into()))?;
                    let mut ct: aya::maps::HashMap<&mut MapData, CtKey, CtValue> =
                        aya::maps::HashMap::try_from(map)?;
                    ct.insert(key, value, 0)?;
                }
                _ => continue,
            }
            promoted += 1;
        }
        if promoted > 0 {
            tracing::debug!(service = %s.name, promoted, "flows kept on their backends across a table change");
        }
        Ok(())
    }

    /// Attaches `xdp_lb` to `interface`: native (driver) mode, or generic (skb) mode with a
    /// warning. Detached when `self` is dropped (the link is an fd: also on a crash).
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), XdpError> {
        let flags = match mode {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Generic => {
                tracing::warn!(
                    interface,
                    "XDP in generic (skb) mode: correct, but much slower than native"
                );
                XdpFlags::SKB_MODE
            }
        };
        let prog: &Xdp = self
            .ebpf
            .program("xdp_lb")
            .ok_or_else(|| XdpError::Config("no program `xdp_lb`".into()))?
            .try_into()?;
        let prog_fd = std::os::fd::AsFd::as_fd(prog.fd()?);
        // A binary upgrade: the running process's link on the same interface and mode gets
        // this program, atomically (BPF_LINK_UPDATE): every packet meets one program or
        // the other. Another interface or mode: a link of our own (the old one goes with
        // the old process).
        if let Some((ifname, old_mode, link)) = self.inherited_link.take() {
            if ifname == interface && old_mode == mode.as_str() {
                crate::link::update(std::os::fd::AsFd::as_fd(&link), prog_fd).map_err(|e| {
                    XdpError::Config(format!(
                        "cannot swap this program into the running process's XDP link on `{interface}`: {e}"
                    ))
                })?;
                tracing::info!(interface, "XDP: program swapped into the running link");
                self.link = Some(link);
                self.attached = Some(interface.to_owned());
                return Ok(());
            }
            tracing::warn!(from = %ifname, to = interface, "XDP: the interface or mode changed: attaching anew");
        }
        let c = std::ffi::CString::new(interface)
            .map_err(|_| XdpError::Config(format!("bad interface name `{interface}`")))?;
        // SAFETY: if_nametoindex reads the NUL-terminated name we own.
        #[allow(unsafe_code)]
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        let res = if ifindex == 0 {
            Err(std::io::Error::other("no such interface"))
        } else {
            crate::link::create(prog_fd, ifindex, flags.bits())
        };
        let link = res.map_err(|e| {
            let hint = if mode == XdpMode::Native {
                " (if the driver has no native XDP, set [xdp] mode = \"generic\")"
            } else {
                ""
            };
            XdpError::Config(format!(
                "cannot attach XDP to `{interface}` in {} mode: {e}{hint}",
                mode.as_str()
            ))
        })?;
        self.link = Some(link);
        self.attached = Some(interface.to_owned());
        Ok(())
    }

    /// A Prometheus collector of `fulcrum_xdp_packets_total{service,action}`.
    pub fn collector(&self) -> crate::metrics::XdpCollector {
        crate::metrics::XdpCollector::new(Arc::clone(&self.stats))
    }

    /// Per service and action: packets summed over CPUs (rows with no service: `_other`).
    pub fn packet_counts(&self) -> Vec<(String, &'static str, u64)> {
        crate::metrics::read_counts(&self.stats)
    }

    /// Makes the maps describe exactly `services`. Each service's new Maglev table is
    /// written into its inactive slot, then the service entry (one map update, atomic for
    /// the data path) switches to it: a packet sees the old table or the new one, never a
    /// mix. Services not listed are removed; backend ids are stable per (pool, address), so
    /// conntrack entries of surviving backends stay valid.
    pub fn update(&mut self, services: &[XdpService]) -> Result<(), XdpError> {
        self.assign_service_ids(services)?;
        self.update_backends(services)?;
        // services
        let mut names = vec![None; STATS_ROWS as usize];
        let mut present = Vec::new();
        let mut snapshot = None;
        for s in services {
            let id = self.svc_ids[&s.name];
            names[id as usize] = Some(s.name.clone());
            present.push(id);
            self.install(id, s, &mut snapshot)?;
        }
        if std::mem::take(&mut self.adopt_flows) {
            // a binary upgrade: the handed-over flows whose backend these tables would not
            // choose go to the shared conntrack before this program sees a packet
            for s in services {
                let id = self.svc_ids[&s.name];
                let Some(inst) = self.installed.get(&id) else {
                    continue;
                };
                if inst.value.mode != MODE_NAT {
                    let table = inst.table.clone();
                    self.promote_before_switch(id, s, &table, &mut snapshot)?;
                }
            }
        }
        for id in keys_not(&self.installed, |id| present.contains(id)) {
            if let Some(old) = self.installed.remove(&id) {
                let _ = self.services.remove(&old.key);
            }
        }
        self.update_fragment_entries()?;
        let nat = services
            .iter()
            .filter(|s| matches!(s.mode, Mode::Nat { .. }))
            .count() as u32;
        self.nat_on.set(0, nat, 0)?;
        self.update_nat_sync(services)?;
        // the per-CPU flow caches (struct fcache4) hold copies of service values and
        // backend choices: a generation bump empties them all (and re-resolves next hops)
        self.refresh_nexthops()?;
        if let Ok(mut v) = self.stats.lock() {
            v.names = names;
        }
        Ok(())
    }

    /// Service ids: those of services still present are kept, new ones get the lowest free
    /// id.
    fn assign_service_ids(&mut self, services: &[XdpService]) -> Result<(), XdpError> {
        let wanted: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        self.svc_ids.retain(|n, _| wanted.contains(&n.as_str()));
        for s in services {
            if !self.svc_ids.contains_key(&s.name) {
                let id = (0..MAX_SERVICES)
                    .find(|i| !self.svc_ids.values().any(|v| v == i))
                    .ok_or_else(|| {
                        XdpError::Config(format!(
                            "more than {MAX_SERVICES} dsr/tunnel/nat services"
                        ))
                    })?;
                self.svc_ids.insert(s.name.clone(), id);
            }
        }
        Ok(())
    }

    /// The backends map: ids per (pool, address), stable while the backend stays; entries of
    /// backends gone are cleared, changed ones rewritten.
    fn update_backends(&mut self, services: &[XdpService]) -> Result<(), XdpError> {
        let mut live: HashMap<(String, SocketAddr), BackendEntry> = HashMap::new();
        for s in services {
            for b in &s.backends {
                let (family, addr) = addr_bytes(b.address.ip());
                let alive = !matches!(b.state, BackendState::Down | BackendState::Ejected);
                live.insert(
                    (s.pool.clone(), b.address),
                    BackendEntry {
                        addr,
                        family,
                        flags: if alive { BACKEND_ALIVE } else { 0 },
                        port: b.address.port().to_be(),
                    },
                );
            }
        }
        for k in keys_not(&self.backend_ids, |k| live.contains_key(k)) {
            if let Some(id) = self.backend_ids.remove(&k) {
                self.backends.set(id, BackendEntry::default(), 0)?;
                self.backend_entries.remove(&id);
                self.refresh_nexthops()?;
            }
        }
        let mut keys: Vec<_> = live.keys().cloned().collect();
        keys.sort();
        // ids held (also those a binary upgrade handed over, not written yet)
        let mut held: std::collections::HashSet<u32> = self.backend_ids.values().copied().collect();
        held.extend(self.backend_entries.keys().copied());
        for k in keys {
            let entry = live[&k];
            let id = if let Some(id) = self.backend_ids.get(&k) {
                *id
            } else {
                let id = (0..MAX_BACKENDS)
                    .find(|i| !held.contains(i))
                    .ok_or_else(|| {
                        XdpError::Config(format!("more than {MAX_BACKENDS} backends"))
                    })?;
                self.backend_ids.insert(k.clone(), id);
                held.insert(id);
                id
            };
            let prev = self.backend_entries.get(&id).copied();
            if prev != Some(entry) {
                self.backends.set(id, entry, 0)?;
                self.backend_entries.insert(id, entry);
                if prev.is_some_and(|p| {
                    p.addr != entry.addr || p.family != entry.family || p.port != entry.port
                }) {
                    self.refresh_nexthops()?;
                }
            }
        }
        Ok(())
    }

    /// Fragments carry no port: each (VIP, protocol) has an entry with port 0, a copy of its
    /// lowest-port service (docs/xdp.md).
    fn update_fragment_entries(&mut self) -> Result<(), XdpError> {
        let mut frags: HashMap<SvcKey, (u16, SvcValue)> = HashMap::new();
        for inst in self.installed.values() {
            let port = u16::from_be(inst.key.port);
            let key = SvcKey {
                port: 0,
                ..inst.key
            };
            if frags.get(&key).is_none_or(|(p, _)| port < *p) {
                frags.insert(key, (port, inst.value));
            }
        }
        for (key, (_, value)) in &frags {
            if self.frag_installed.get(key) != Some(value) {
                self.services.insert(*key, *value, 0)?;
                self.frag_installed.insert(*key, *value);
            }
        }
        for k in keys_not(&self.frag_installed, |k| frags.contains_key(k)) {
            let _ = self.services.remove(&k);
            self.frag_installed.remove(&k);
        }
        Ok(())
    }

    /// From now on, [`Self::resolve_next_hops`] keeps a managed neighbour entry for every
    /// backend's next hop (docs/xdp.md, "Next hops"). Opens an rtnetlink socket in the
    /// calling thread's network namespace.
    pub fn manage_neighbours(&mut self) -> Result<(), XdpError> {
        let n = crate::neigh::Neighbours::new()
            .map_err(|e| XdpError::Config(format!("cannot open an rtnetlink socket: {e}")))?;
        self.neighbours = Some(n);
        Ok(())
    }

    /// The distinct addresses of the backends in the maps.
    pub fn backend_addresses(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .backend_ids
            .keys()
            .map(|(_, a)| a.ip())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        out.sort();
        out
    }

    /// Makes sure every backend's next hop has a managed neighbour entry (the kernel resolves
    /// it and keeps it resolved), after [`Self::manage_neighbours`]; `None` before.
    pub fn resolve_next_hops(&mut self) -> Result<Option<crate::neigh::Reconciled>, XdpError> {
        let addrs = self.backend_addresses();
        let Some(n) = self.neighbours.as_mut() else {
            return Ok(None);
        };
        let r = n.reconcile(&addrs).map_err(|e| {
            XdpError::Config(format!(
                "cannot manage the backends' neighbour entries: {e}"
            ))
        })?;
        let failed: Vec<_> = r.failed.iter().map(|(nh, _)| *nh).collect();
        for (nh, e) in r
            .failed
            .iter()
            .filter(|(nh, _)| !self.nh_failed.contains(nh))
        {
            tracing::warn!(next_hop = %nh.addr, ifindex = nh.ifindex, error = %e, "cannot create a managed neighbour entry for a backend's next hop (needs Linux 5.16+)");
        }
        self.nh_failed = failed;
        for nh in &r.created {
            tracing::info!(next_hop = %nh.addr, ifindex = nh.ifindex, "managed neighbour entry for a backend's next hop");
        }
        if !r.created.is_empty() {
            // packets that failed their lookup retry it at once
            self.refresh_nexthops()?;
        }
        Ok(Some(r))
    }

    /// The reasons (`1 << BPF_FIB_LKUP_RET_*`) `bpf_fib_lookup` failed for the data path since
    /// the last call (those packets were dropped and counted as `no_route`); clears them.
    pub fn take_nh_miss(&mut self) -> Result<u32, XdpError> {
        let v = self.nh_miss.get(&0, 0)?;
        if v != 0 {
            self.nh_miss.set(0, 0, 0)?;
        }
        Ok(v)
    }

    /// Invalidates every cached next hop: the next packet to each backend, on each CPU,
    /// resolves it again with `bpf_fib_lookup`. Called on every backend change, and
    /// periodically ([`crate::maps::NH_TTL_NS`]) by the binary's `xdp_sync::run` so that neighbour
    /// changes (a backend's new MAC) are followed.
    pub fn refresh_nexthops(&mut self) -> Result<(), XdpError> {
        self.gen += 1;
        self.nh_gen.set(0, self.gen, 0)?;
        Ok(())
    }

    /// Writes `table` into the service's inactive slot unless it is the active one already:
    /// (slot, table base, whether the other slot holds a table of the same size the data
    /// path may read as secondaries, whether `table` was written). Second chance reads the
    /// inactive slot as the secondaries' table until the next change overwrites it: while
    /// it is written the data path must not read it, so the flag goes first (and the flow
    /// caches' copies of the value with it). Right after a change the other slot holds the
    /// previous table: its owners are valid secondaries (for a slot a new backend took, the
    /// very same as the stateless ones) until [`Self::secondary_table`]'s are written over
    /// them, entry by entry, with the flag on.
    fn write_table(
        &mut self,
        id: u32,
        prev: Option<&Installed>,
        key: &SvcKey,
        table: &[u32],
    ) -> Result<(u32, u32, bool, bool), XdpError> {
        if let Some(p) = prev.filter(|p| p.table == table && p.key == *key) {
            return Ok((
                p.slot,
                p.value.table_base,
                p.value.flags & SVC_PREV_TABLE != 0,
                false,
            ));
        }
        if let Some(p) = prev.filter(|p| p.value.flags & SVC_PREV_TABLE != 0) {
            let value = SvcValue {
                flags: p.value.flags & !SVC_PREV_TABLE,
                ..p.value
            };
            self.services.insert(p.key, value, 0)?;
            self.refresh_nexthops()?;
        }
        let slot = prev.map_or(0, |p| 1 - p.slot);
        let base = (id * 2 + slot) * MAGLEV_MAX;
        for (i, b) in table.iter().enumerate() {
            self.maglev.set(base + i as u32, *b, 0)?;
        }
        let prev_table = prev
            .is_some_and(|p| p.key == *key && !p.table.is_empty() && p.table.len() == table.len());
        Ok((slot, base, prev_table, true))
    }

    /// The other slot of service `id` (active slot `slot`) gets the secondaries of `table`
    /// (indices into `s.backends`), over the previous table, whose owners serve as
    /// secondaries meanwhile when the flag is on already; then the flag goes on.
    fn write_secondaries(
        &mut self,
        id: u32,
        slot: u32,
        s: &XdpService,
        table: &[u32],
        key: &SvcKey,
        value: &mut SvcValue,
    ) -> Result<(), XdpError> {
        let secondaries = self.secondary_table(s, table)?;
        let other = (id * 2 + (1 - slot)) * MAGLEV_MAX;
        for (i, b) in secondaries.iter().enumerate() {
            self.maglev.set(other + i as u32, *b, 0)?;
        }
        if value.flags & SVC_PREV_TABLE == 0 {
            value.flags |= SVC_PREV_TABLE;
            self.services.insert(*key, *value, 0)?;
            self.refresh_nexthops()?;
        }
        Ok(())
    }

    /// Second chance, GLB's idea with Maglev: the secondary of a table slot is its owner in
    /// the Maglev table of the same backends without the slot's owner (the core's Maglev
    /// depends only on the set, not on its order). It is stateless: when a backend has
    /// just been added, that is exactly the slot's owner before, and every instance,
    /// including one started after the change, computes the same. Backend ids, one per
    /// slot; a slot without another backend names its owner (no secondary). Costs one
    /// table build per backend owning slots, at each change.
    fn secondary_table(&self, s: &XdpService, table: &[u32]) -> Result<Vec<u32>, XdpError> {
        let id_of = |i: usize| -> Result<u32, XdpError> {
            self.backend_ids
                .get(&(s.pool.clone(), s.backends[i].address))
                .copied()
                .ok_or_else(|| {
                    XdpError::Config(format!(
                        "service `{}`: backend {} has no id",
                        s.name, s.backends[i].address
                    ))
                })
        };
        let mut without: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut out = Vec::with_capacity(table.len());
        for (slot, &owner) in table.iter().enumerate() {
            let t = without.entry(owner).or_insert_with(|| {
                let rest: Vec<Backend> = s
                    .backends
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != owner as usize)
                    .map(|(_, b)| b.clone())
                    .collect();
                // indices into `rest` -> indices into `s.backends`
                Maglev::new(&rest, s.table_size)
                    .table()
                    .iter()
                    .map(|&k| if k >= owner { k + 1 } else { k })
                    .collect()
            });
            let alt = t.get(slot).copied().unwrap_or(owner);
            out.push(id_of(alt as usize)?);
        }
        Ok(out)
    }

    fn install(
        &mut self,
        id: u32,
        s: &XdpService,
        snapshot: &mut Option<Vec<Tracked>>,
    ) -> Result<(), XdpError> {
        let m = s.table_size.get();
        if m > MAGLEV_MAX {
            return Err(XdpError::Config(format!(
                "service `{}`: maglev_table_size {m} is above the data plane's {MAGLEV_MAX}",
                s.name
            )));
        }
        let maglev = Maglev::new(&s.backends, s.table_size);
        let table: Vec<u32> = maglev
            .table()
            .iter()
            .map(|&i| self.backend_ids[&(s.pool.clone(), s.backends[i as usize].address)])
            .collect();
        let key = svc_key(s);
        let (mode, tunnel, src4, src6, sc) = mode_fields(s);
        let hash_key = match s.hash_key {
            HashKey::SrcIp => HASH_SRC_IP,
            HashKey::SrcIpPort => HASH_SRC_IP_PORT,
            _ => HASH_FIVE_TUPLE,
        };
        let prev = self.installed.get(&id).cloned();
        let (slot, table_base, other_usable, written) =
            self.write_table(id, prev.as_ref(), &key, &table)?;
        let flags = if sc {
            SVC_SECOND_CHANCE | if other_usable { SVC_PREV_TABLE } else { 0 }
        } else {
            0
        };
        // the secondaries are due after a change, at the first install, and when second
        // chance is turned on
        let secondaries_due = sc
            && !table.is_empty()
            && (written
                || prev
                    .as_ref()
                    .is_none_or(|p| p.value.flags & SVC_SECOND_CHANCE == 0));
        let mut value = SvcValue {
            id,
            table_base,
            table_size: if table.is_empty() { 0 } else { m },
            mode,
            tunnel,
            hash_key,
            flags,
            src4,
            src6,
            gue_dport: self.gue_port.to_be(),
            pad1: 0,
        };
        if prev.as_ref().map(|p| (p.key, p.value)) != Some((key, value)) {
            if let Some(p) = &prev {
                if mode != MODE_NAT && (p.table != table || p.value.hash_key != hash_key) {
                    self.promote_before_switch(id, s, &table, snapshot)?;
                }
            }
            self.services.insert(key, value, 0)?;
            if let Some(p) = &prev {
                if p.key != key {
                    let _ = self.services.remove(&p.key);
                }
            }
        }
        if secondaries_due {
            self.write_secondaries(id, slot, s, maglev.table(), &key, &mut value)?;
        }
        self.installed.insert(
            id,
            Installed {
                key,
                value,
                slot,
                table,
            },
        );
        Ok(())
    }

    /// The Maglev table the data path uses now for `service`, as backend addresses' indices
    /// into the service's `backends` (for tests: equal to the core's table).
    pub fn table_of(
        &self,
        service: &str,
        backends: &[Backend],
        pool: &str,
    ) -> Result<Vec<u32>, XdpError> {
        let id = *self
            .svc_ids
            .get(service)
            .ok_or_else(|| XdpError::Config(format!("no service `{service}`")))?;
        let inst = &self.installed[&id];
        let value = self.services.get(&inst.key, 0)?;
        let by_id: HashMap<u32, u32> = backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                self.backend_ids
                    .get(&(pool.to_owned(), b.address))
                    .map(|id| (*id, i as u32))
            })
            .collect();
        let mut out = Vec::with_capacity(value.table_size as usize);
        for i in 0..value.table_size {
            let bid = self.maglev.get(&(value.table_base + i), 0)?;
            out.push(by_id.get(&bid).copied().unwrap_or(u32::MAX));
        }
        Ok(out)
    }

    /// Releases the ports of nat flows that ended (a FIN each way or a RST, then
    /// `tcp_closing`) or went idle (`tcp`, `udp`), and counts those left. Called every
    /// second by the binary's `xdp_sync::run`.
    pub fn sweep_nat(&mut self) -> Result<NatSweep, XdpError> {
        let now = crate::monotonic_ns();
        let t = self.nat_timeouts;
        let keys: Vec<CtKey> = self.nat_fwd.keys().filter_map(Result::ok).collect();
        let mut out = NatSweep::default();
        for k in keys {
            let Ok(f) = self.nat_fwd.get(&k, 0) else {
                continue;
            };
            let rk = f.rev_key(k.proto, k.family);
            let r = self.nat_rev.get(&rk, 0).ok();
            let seen = f.seen.max(r.map_or(0, |r| r.seen));
            let flags = f.flags | r.map_or(0, |r| r.flags);
            let closed = flags & NAT_RST != 0
                || flags & (NAT_FIN_FWD | NAT_FIN_REV) == (NAT_FIN_FWD | NAT_FIN_REV);
            let timeout = if k.proto == Proto::Udp as u8 {
                t.udp
            } else if closed {
                t.tcp_closing
            } else {
                t.tcp
            };
            if now.saturating_sub(seen) >= timeout.as_nanos() as u64 {
                // the reverse entry first: a reply in between finds no flow rather than a
                // flow without its way back
                let _ = self.nat_rev.remove(&rk);
                let _ = self.nat_fwd.remove(&k);
                out.released += 1;
            } else {
                out.live += 1;
            }
        }
        if let Ok(mut v) = self.stats.lock() {
            v.nat_flows = out.live as u64;
        }
        if out.released > 0 {
            // flow caches may hold the released flows' translations (types.h, struct fcache4)
            self.refresh_nexthops()?;
        }
        Ok(out)
    }

    /// nat sync: the nat services by VIP (for flows from peers) and the nat source
    /// addresses (`nat_srcs`: replies to them with no flow are dropped, not passed).
    fn update_nat_sync(&mut self, services: &[XdpService]) -> Result<(), XdpError> {
        self.nat_services.clear();
        let mut srcs = Vec::new();
        for s in services {
            let Mode::Nat { source } = s.mode else {
                continue;
            };
            let key = svc_key(s);
            if let Some(id) = self.svc_ids.get(&s.name) {
                self.nat_services.insert(key, (*id, s.pool.clone()));
            }
            let (s4, s6) = sources(source, &s.backends);
            if s4 != [0; 4] {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&s4);
                srcs.push(crate::maps::NatSrc { addr: a });
            }
            if s6 != [0; 16] {
                srcs.push(crate::maps::NatSrc { addr: s6 });
            }
        }
        if self.nat_sync.is_none() {
            return Ok(());
        }
        srcs.sort_by_key(|s| s.addr);
        srcs.dedup();
        for old in &self.nat_srcs_installed {
            if !srcs.contains(old) {
                let _ = self.nat_srcs.remove(old);
            }
        }
        for s in &srcs {
            self.nat_srcs.insert(*s, 1, 0)?;
        }
        self.nat_srcs_installed = srcs;
        Ok(())
    }

    /// nat sync: the ring buffer of new flows (once; `None` when sync is off or taken).
    pub fn take_nat_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.nat_events.take()
    }

    /// nat sync: this instance's source ports (`None`: sync off).
    pub fn nat_port_slice(&self) -> Option<crate::natsync::PortSlice> {
        self.nat_sync
    }

    /// nat sync: `addr` is the instance that allocates slice `member` of the nat ports (a
    /// reply to one of them that arrives before the flow is sent on there).
    pub fn set_nat_owner(&mut self, member: u16, addr: IpAddr) -> Result<(), XdpError> {
        if u32::from(member) >= crate::maps::NAT_SYNC_MAX_MEMBERS {
            return Err(XdpError::Config(format!(
                "nat sync member {member}: at most {} members",
                crate::maps::NAT_SYNC_MAX_MEMBERS
            )));
        }
        let (family, a) = addr_bytes(addr);
        self.nat_owners.set(
            u32::from(member),
            crate::maps::NatOwner {
                addr: a,
                family: u32::from(family),
            },
            0,
        )?;
        Ok(())
    }

    /// nat sync: the data path's counters (`maps::NSS_*`).
    pub fn nat_sync_counters(&self) -> [u64; crate::maps::NSS_COUNTERS as usize] {
        let mut out = [0u64; crate::maps::NSS_COUNTERS as usize];
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.nat_sync_stats.get(&(i as u32), 0).unwrap_or(0);
        }
        out
    }

    /// nat sync: inserts a flow a peer created (both directions), unless this instance
    /// has it already. Its `seen` is now: it ages out like a local flow. A flow whose
    /// port is this instance's own, whose service is not a nat service here or whose
    /// backend is not in the pool here is refused.
    pub fn insert_synced(
        &mut self,
        f: &crate::natsync::FlowRecord,
    ) -> Result<crate::natsync::Inserted, XdpError> {
        use crate::natsync::Inserted;
        if self
            .nat_sync
            .is_some_and(|p| p.contains(u16::from_be(f.nport)))
        {
            return Ok(Inserted::OwnPort);
        }
        let key = SvcKey {
            addr: f.ck.dst,
            port: f.ck.dport,
            proto: f.ck.proto,
            family: f.ck.family,
        };
        let Some((row, pool)) = self.nat_services.get(&key) else {
            return Ok(Inserted::NoService);
        };
        let row = *row;
        let baddr = crate::natsync::ip_of(f.ck.family, &f.baddr);
        let Some(backend) = self
            .backend_ids
            .get(&(pool.clone(), SocketAddr::new(baddr, u16::from_be(f.bport))))
            .copied()
        else {
            return Ok(Inserted::NoBackend);
        };
        let now = crate::monotonic_ns();
        let fwd = NatFwd {
            baddr: f.baddr,
            saddr: f.saddr,
            bport: f.bport,
            nport: f.nport,
            backend,
            svc: row,
            flags: 0,
            pad: [0; 3],
            seen: now,
        };
        let rk = fwd.rev_key(f.ck.proto, f.ck.family);
        // a port the owner reuses: the flow that held it before is over
        if let Ok(old) = self.nat_rev.get(&rk, 0) {
            if old.caddr != f.ck.src
                || old.cport != f.ck.sport
                || old.vaddr != f.ck.dst
                || old.vport != f.ck.dport
            {
                let ok = CtKey {
                    src: old.caddr,
                    dst: old.vaddr,
                    sport: old.cport,
                    dport: old.vport,
                    proto: f.ck.proto,
                    family: f.ck.family,
                    pad: 0,
                };
                let _ = self.nat_fwd.remove(&ok);
            }
        }
        let rev = NatRev {
            caddr: f.ck.src,
            vaddr: f.ck.dst,
            cport: f.ck.sport,
            vport: f.ck.dport,
            cmac: [0; 6],
            lmac: [0; 6],
            ifindex: 0, // the data path finds the way back (fx_nat_rev_fill)
            svc: row,
            flags: 0,
            pad: [0; 7],
            seen: now,
        };
        let existed = self.nat_fwd.get(&f.ck, 0).is_ok();
        // the reverse entry first (a reply finds its way back before the client's next
        // packet uses the flow); a refresh keeps the way back already found
        match self.nat_rev.get(&rk, 0) {
            Ok(mut r) if r.caddr == rev.caddr && r.cport == rev.cport => {
                r.seen = now;
                self.nat_rev.insert(rk, r, 0)?;
            }
            _ => self.nat_rev.insert(rk, rev, 0)?,
        }
        match self.nat_fwd.get(&f.ck, 0) {
            Ok(mut old) if old.nport == fwd.nport && old.baddr == fwd.baddr => {
                old.seen = now;
                self.nat_fwd.insert(f.ck, old, 0)?;
            }
            _ => self.nat_fwd.insert(f.ck, fwd, 0)?,
        }
        Ok(if existed {
            Inserted::Refreshed
        } else {
            Inserted::New
        })
    }

    /// The nat flows (client 5-tuple, translation), for tests and diagnostics.
    pub fn nat_flows(&self) -> Vec<(CtKey, NatFwd)> {
        self.nat_fwd.iter().filter_map(Result::ok).collect()
    }

    /// The number of nat reverse entries (= allocated ports).
    pub fn nat_ports_in_use(&self) -> usize {
        self.nat_rev.keys().filter_map(Result::ok).count()
    }

    /// The interface the program is attached to, if any.
    pub fn interface(&self) -> Option<&str> {
        self.attached.as_deref()
    }
}

/// The outer source addresses of a tunnel: the configured one for its family, else the
/// address the kernel picks towards the first backend of each family.
fn sources(source: Option<IpAddr>, backends: &[Backend]) -> ([u8; 4], [u8; 16]) {
    let mut s4 = [0u8; 4];
    let mut s6 = [0u8; 16];
    let pick = |v6: bool| -> Option<IpAddr> {
        if let Some(s) = source {
            if s.is_ipv6() == v6 {
                return Some(s);
            }
        }
        let b = backends.iter().find(|b| b.address.ip().is_ipv6() == v6)?;
        let bind: SocketAddr = if v6 {
            "[::]:0".parse().ok()?
        } else {
            "0.0.0.0:0".parse().ok()?
        };
        let sock = UdpSocket::bind(bind).ok()?;
        sock.connect(SocketAddr::new(b.address.ip(), 9)).ok()?;
        sock.local_addr().ok().map(|a| a.ip())
    };
    if let Some(IpAddr::V4(a)) = pick(false) {
        s4 = a.octets();
    }
    if let Some(IpAddr::V6(a)) = pick(true) {
        s6 = a.octets();
    }
    (s4, s6)
}

/// The services map's key of `s`: its VIP, port and protocol.
fn svc_key(s: &XdpService) -> SvcKey {
    let (family, addr) = addr_bytes(s.vip.ip());
    SvcKey {
        addr,
        port: s.vip.port().to_be(),
        proto: s.proto as u8,
        family,
    }
}

/// A service's mode in the data plane's terms: (mode, tunnel kind, IPv4 and IPv6 source,
/// second chance on).
fn mode_fields(s: &XdpService) -> (u8, u8, [u8; 4], [u8; 16], bool) {
    match s.mode {
        Mode::Dsr => (MODE_DSR, 0, [0; 4], [0; 16], false),
        Mode::Tunnel {
            kind,
            source,
            second_chance,
        } => {
            let (s4, s6) = sources(source, &s.backends);
            let k = match kind {
                TunnelKind::Ipip => TUNNEL_IPIP,
                TunnelKind::Gue => TUNNEL_GUE,
            };
            (
                MODE_TUNNEL,
                k,
                s4,
                s6,
                second_chance && kind == TunnelKind::Gue,
            )
        }
        Mode::Nat { source } => {
            let (s4, s6) = sources(source, &s.backends);
            (MODE_NAT, 0, s4, s6, false)
        }
    }
}

/// Makes the kernel resolve the neighbour entry towards `addr` (an empty datagram to its
/// discard port: the kernel queues it and resolves the next hop), so that `fulcrum decap`'s
/// `bpf_fib_lookup` finds it for the next packet to that secondary.
pub fn resolve_neighbour(addr: IpAddr) -> std::io::Result<()> {
    let any: IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind((any, 0))?;
    s.send_to(&[], (addr, 9)).map(|_| ())
}

/// The number of `decap_stats` counters (decap.c).
pub const DECAP_COUNTERS: usize = 7;

/// `fulcrum decap`: the backend-side program, attached while this value lives.
#[derive(Debug)]
pub struct Decap {
    ebpf: Ebpf,
}

impl Decap {
    /// Loads the decap program with the GUE port (no attach).
    pub fn load(gue_port: u16) -> Result<Self, XdpError> {
        let port = gue_port.to_be();
        let mut ebpf = EbpfLoader::new()
            .set_global("fx_gue_port", &port, true)
            .load(crate::DECAP_OBJ)?;
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_decap")
            .ok_or_else(|| XdpError::Config("no program `xdp_decap`".into()))?
            .try_into()?;
        prog.load()?;
        Ok(Self { ebpf })
    }

    /// Attaches to `interface` (detached on drop).
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), XdpError> {
        let flags = match mode {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Generic => XdpFlags::SKB_MODE,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut("xdp_decap")
            .ok_or_else(|| XdpError::Config("no program `xdp_decap`".into()))?
            .try_into()?;
        prog.attach(interface, flags).map_err(|e| {
            XdpError::Config(format!(
                "cannot attach the decap program to `{interface}` ({} mode): {e}",
                mode.as_str()
            ))
        })?;
        Ok(())
    }

    /// Second chance: the secondaries the program found no neighbour entry for since the
    /// last call (it dropped those packets; their senders retransmit). The caller makes the
    /// kernel resolve them ([`resolve_neighbour`]).
    pub fn take_unresolved(&mut self) -> Result<Vec<IpAddr>, XdpError> {
        let mut map: BpfHashMap<&mut MapData, ScAddr, u32> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("sc_unresolved")
                .ok_or_else(|| XdpError::Config("no map `sc_unresolved`".into()))?,
        )?;
        let keys: Vec<ScAddr> = map.keys().filter_map(Result::ok).collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let _ = map.remove(&k);
            out.push(if k.family == 4 {
                IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])
            } else {
                IpAddr::from(k.addr)
            });
        }
        Ok(out)
    }

    /// The `decap_stats` counters summed over the CPUs: [0] passed untouched, [1] IPIP
    /// stripped, [2] GUE stripped, [3] errors, [4] forwarded to the secondary, [5] dropped
    /// while the secondary's neighbour entry was unresolved, [6] no route to the secondary.
    pub fn counters(&self) -> Result<[u64; DECAP_COUNTERS], XdpError> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("decap_stats")
                .ok_or_else(|| XdpError::Config("no map `decap_stats`".into()))?,
        )?;
        let mut out = [0u64; DECAP_COUNTERS];
        for (i, o) in out.iter_mut().enumerate() {
            *o = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// The loaded program (for [`crate::testrun`]).
    pub fn program(&self) -> Result<&Xdp, XdpError> {
        Ok(self
            .ebpf
            .program("xdp_decap")
            .ok_or_else(|| XdpError::Config("no program `xdp_decap`".into()))?
            .try_into()?)
    }
}

/// A bare `XDP_PASS` attached to an interface while this value lives: a veth whose peer
/// sends frames with `XDP_TX`/`XDP_REDIRECT` needs one to receive them (docs/xdp.md).
#[derive(Debug)]
pub struct PassProgram {
    _ebpf: Ebpf,
}

impl PassProgram {
    pub fn attach(interface: &str) -> Result<Self, XdpError> {
        let mut ebpf = EbpfLoader::new().load(crate::XDP_LB_OBJ)?;
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_pass")
            .ok_or_else(|| XdpError::Config("no program `xdp_pass`".into()))?
            .try_into()?;
        prog.load()?;
        prog.attach(interface, XdpFlags::DRV_MODE)?;
        Ok(Self { _ebpf: ebpf })
    }
}
