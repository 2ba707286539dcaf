//! Service discovery (`[pool.discovery]`): backends from DNS A/AAAA records, DNS SRV records
//! and a TOML file, kept up to date and merged by the controller with the pool's static
//! backends.
//!
//! One task per pool with a `[pool.discovery]` table (spawned and aborted by the
//! controller on each apply). Each source keeps its last good set; whenever the union of
//! the sources' sets changes, the task sends [`Event::Discovered`] to the controller.
//!
//! - `dns = "NAME:PORT"`: A and AAAA records of NAME, each address with PORT and weight 1.
//!   Re-resolved when the answer's TTL runs out, the TTL clamped to [`TTL_FLOOR`] ..
//!   [`TTL_CEILING`].
//! - `srv = "_svc._proto.NAME"`: SRV records of the lowest priority value present (the
//!   others are backups in RFC 2782 terms and are not used), each target resolved to its
//!   A/AAAA addresses, with the SRV port and the SRV weight as backend weight (SRV weight 0
//!   becomes 1: 0 would mean "drained" here). Re-resolved at the smallest TTL seen.
//! - `file = "PATH"`: `[[backend]] address = "IP:PORT", weight = N` (weight optional,
//!   default 1); its modification time, size and inode are polled every [`FILE_POLL`] and
//!   the file is re-read when one of them changes.
//! - `nameserver = "IP:PORT"`: the resolver to ask (UDP, then TCP); default: the system's,
//!   from /etc/resolv.conf.
//! - `etcd = "/services/web/"`: backends that register themselves (`fulcrum register`),
//!   watched by the instance's [`Registry`] (the binary gives one to instances with
//!   `[cluster]`: `fulcrum_cluster::registry`). A backend that leaves such a pool's set (its
//!   lease expired, or it deregistered) is drained, not dropped: see [`Discoveries`].
//!
//! A failed lookup (timeout, refused, no such name, no records) or an unreadable or
//! invalid file keeps that source's last good set, is logged and is counted in
//! [`DiscoveryErrors`] (`fulcrum_discovery_errors_total{pool,kind}`); a failed DNS lookup is
//! retried after 1 s, doubling up to 30 s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulcrum_core::config::{Discovery, HostPort, PoolConfig, RegistryPrefix};
use fulcrum_core::model::Backend;
use fulcrum_core::registry::{KeyRefusal, RecentRefusals, Refused};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Resolver, TokioResolver};
use serde::Deserialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::task::JoinHandle;

use crate::snapshot::Event;

/// The shortest time between two resolutions of a name (a TTL of 0 or 1 s gives this).
pub const TTL_FLOOR: Duration = Duration::from_secs(1);
/// The longest time between two resolutions of a name, whatever its TTL.
pub const TTL_CEILING: Duration = Duration::from_secs(300);
/// How often a backends file's metadata is checked.
pub const FILE_POLL: Duration = Duration::from_secs(1);
/// First retry delay after a failed lookup (doubles up to [`RETRY_MAX`]).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Per-query timeout given to the resolver.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole lookup (A then AAAA, UDP then TCP) gives up after this.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(3);

/// Failed lookups or file reads per `(pool, kind)`, for `fulcrum_discovery_errors_total`:
/// counted by the discovery tasks of one [`Discoveries`], read by the metrics endpoint
/// (through [`crate::snapshot::Shared::discovery_errors`]).
#[derive(Debug, Default)]
pub struct DiscoveryErrors(PoolCounts, PoolCounts, Mutex<RecentRefusals>);

/// Counts per `(pool, reason)`.
#[derive(Debug, Default)]
struct PoolCounts(Mutex<BTreeMap<(String, &'static str), u64>>);

impl PoolCounts {
    fn add(&self, pool: &str, reason: &'static str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry((pool.to_owned(), reason)).or_insert(0) += 1;
        }
    }

    fn list(&self) -> Vec<(String, &'static str, u64)> {
        self.0
            .lock()
            .map(|m| m.iter().map(|((p, k), n)| (p.clone(), *k, *n)).collect())
            .unwrap_or_default()
    }
}

impl DiscoveryErrors {
    /// The registration keys refused now, with key and reason, for the member's status key
    /// (`registry_refused` in `P/members/NAME`).
    pub fn recent_refusals(&self) -> Vec<KeyRefusal> {
        self.2.lock().map(|r| r.list()).unwrap_or_default()
    }

    fn with_recent(&self, f: impl FnOnce(&mut RecentRefusals)) {
        if let Ok(mut r) = self.2.lock() {
            f(&mut r);
        }
    }

    /// Registration keys refused so far (etcd discovery), as `(pool, reason, count)`, for
    /// `fulcrum_registry_refused_total` (reasons: `fulcrum_core::registry::Refused::reason`).
    pub fn refusals(&self) -> Vec<(String, &'static str, u64)> {
        self.1.list()
    }

    fn refused(&self, pool: &str, reason: &'static str) {
        self.1.add(pool, reason);
    }

    /// Failed lookups/reads so far, as `(pool, kind, count)` with kind `dns`, `srv`, `file`
    /// or `etcd` (a lost or refused connection to etcd).
    pub fn counts(&self) -> Vec<(String, &'static str, u64)> {
        self.0.list()
    }

    fn count(&self, pool: &str, kind: &'static str) {
        self.0.add(pool, kind);
    }
}

/// Which source a set came from; also the order of precedence on duplicate addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Source {
    Dns,
    Srv,
    File,
    Etcd,
}

impl Source {
    const fn kind(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Srv => "srv",
            Self::File => "file",
            Self::Etcd => "etcd",
        }
    }
}

/// The source of `etcd = "PREFIX"` discovery: the binary gives one (through
/// [`crate::snapshot::Shared::with_registry`]) to instances with `[cluster]`.
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Watches `prefix` for pool `pool` and sends each new set of registered backends
    /// through `out`, until `out` is closed or the task is aborted. A lost connection keeps
    /// the last set (`out.failed()`); a key that is not a registration is left out
    /// (`out.refused(key, reason, revision)`).
    fn watch(&self, pool: String, prefix: RegistryPrefix, out: SetSender) -> JoinHandle<()>;
}

/// Where a [`Registry`] sends its sets, and counts its failures.
#[derive(Debug, Clone)]
pub struct SetSender {
    pool: String,
    tx: UnboundedSender<(Source, Vec<Backend>)>,
    errors: Arc<DiscoveryErrors>,
}

impl SetSender {
    /// Sends the current set; `false` once nobody listens any more.
    pub fn send(&self, set: Vec<Backend>) -> bool {
        self.tx.send((Source::Etcd, set)).is_ok()
    }

    /// Counts a failure to reach etcd (`fulcrum_discovery_errors_total{kind="etcd"}`).
    pub fn failed(&self) {
        self.errors.count(&self.pool, Source::Etcd.kind());
    }

    /// Counts a refused key (`fulcrum_registry_refused_total{reason}`) and lists it, with
    /// the reason, for the member's status key until it is [`Self::cleared`].
    pub fn refused(&self, key: &[u8], refused: &Refused, revision: i64) {
        self.errors.refused(&self.pool, refused.reason());
        let r = KeyRefusal::new(&self.pool, key, refused, revision);
        self.errors.with_recent(|l| l.refused(r));
    }

    /// The key `key` is gone, or is a registration now: no longer listed as refused.
    pub fn cleared(&self, key: &[u8]) {
        self.errors.with_recent(|l| l.cleared(&self.pool, key));
    }

    /// The watch reads every key again: the pool's listed refusals are forgotten first.
    pub fn reset_refused(&self) {
        self.errors.with_recent(|l| l.reset(&self.pool));
    }

    /// Whether nobody listens any more (the pool's discovery stopped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Merges discovered backends into a pool's static ones: static backends first, in file
/// order; a discovered backend whose address is already static is left out (static wins).
pub fn merge(statics: &[Backend], discovered: &[Backend]) -> Vec<Backend> {
    let mut seen: HashSet<SocketAddr> = statics.iter().map(|b| b.address).collect();
    let mut out = statics.to_vec();
    out.extend(
        discovered
            .iter()
            .filter(|b| seen.insert(b.address))
            .cloned(),
    );
    out
}

/// Starts discovery for `pool`. Every change of the discovered set is sent as
/// [`Event::Discovered`] tagged with `task`, so the controller can drop reports of a task it
/// has replaced.
pub fn spawn(
    pool: String,
    cfg: Discovery,
    task: u64,
    events: UnboundedSender<Event>,
    errors: Arc<DiscoveryErrors>,
    registry: Option<Arc<dyn Registry>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, mut rx) = unbounded_channel::<(Source, Vec<Backend>)>();
        let mut sources: Vec<JoinHandle<()>> = Vec::new();
        if cfg.dns.is_some() || cfg.srv.is_some() {
            match resolver(cfg.nameserver) {
                Ok(r) => {
                    if let Some(hp) = cfg.dns.clone() {
                        let (r, pool, tx) = (r.clone(), pool.clone(), tx.clone());
                        let errors = Arc::clone(&errors);
                        let q = Query::Addrs(hp);
                        sources.push(tokio::spawn(dns_loop(r, pool, q, tx, errors)));
                    }
                    if let Some(name) = cfg.srv.clone() {
                        let (pool, tx) = (pool.clone(), tx.clone());
                        let errors = Arc::clone(&errors);
                        let q = Query::Srv(name);
                        sources.push(tokio::spawn(dns_loop(r, pool, q, tx, errors)));
                    }
                }
                Err(e) => {
                    tracing::error!(pool, "discovery: no resolver: {e}");
                    errors.count(&pool, if cfg.dns.is_some() { "dns" } else { "srv" });
                }
            }
        }
        if let Some(path) = cfg.file.clone() {
            let errors = Arc::clone(&errors);
            sources.push(tokio::spawn(file_loop(
                pool.clone(),
                path,
                tx.clone(),
                errors,
            )));
        }
        if let Some(prefix) = cfg.etcd.clone() {
            let out = SetSender {
                pool: pool.clone(),
                tx: tx.clone(),
                errors: Arc::clone(&errors),
            };
            if let Some(r) = &registry {
                sources.push(r.watch(pool.clone(), prefix, out));
            } else {
                out.failed();
                tracing::error!(
                    pool,
                    prefix = %prefix.0,
                    "discovery: etcd needs the [cluster] section (its etcd endpoints); this pool gets no registered backends"
                );
            }
        }
        drop(tx);
        // Abort the source tasks when this task is aborted or ends.
        let _guard = AbortOnDrop(sources);

        let mut sets: BTreeMap<Source, Vec<Backend>> = BTreeMap::new();
        let mut last: Option<Vec<Backend>> = None;
        while let Some((src, set)) = rx.recv().await {
            sets.insert(src, set);
            while let Ok((src, set)) = rx.try_recv() {
                sets.insert(src, set);
            }
            let mut merged: Vec<Backend> = Vec::new();
            for set in sets.values() {
                merged = merge(&merged, set);
            }
            if last.as_ref() != Some(&merged) {
                tracing::info!(
                    pool,
                    count = merged.len(),
                    backends = %merged.iter().take(32).map(|b| format!("{}*{}", b.address, b.weight.get())).collect::<Vec<_>>().join(" "),
                    "discovery: backend set changed"
                );
                last = Some(merged.clone());
                let ev = Event::Discovered {
                    pool: pool.clone(),
                    task,
                    backends: merged,
                };
                if events.send(ev).is_err() {
                    return;
                }
            }
        }
    })
}

struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// A resolver asking `nameserver`, or the system's (from /etc/resolv.conf). Its cache is
/// off: every lookup asks the server, so a TTL is honoured by our own timer.
fn resolver(nameserver: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut builder = match nameserver {
        Some(ns) => Resolver::builder_with_config(
            ResolverConfig::from_parts(
                None,
                vec![],
                NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true),
            ),
            TokioConnectionProvider::default(),
        ),
        None => Resolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?,
    };
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 1;
    if nameserver.is_some() {
        // A configured nameserver is the only authority: no /etc/hosts answers.
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    }
    *builder.options_mut() = opts;
    Ok(builder.build())
}

/// The time to wait before resolving again, from a lookup's expiry instant.
fn refresh_after(valid_until: Instant) -> Duration {
    valid_until
        .saturating_duration_since(Instant::now())
        .clamp(TTL_FLOOR, TTL_CEILING)
}

fn next_retry(prev: Duration) -> Duration {
    (prev * 2).clamp(RETRY_MIN, RETRY_MAX)
}

async fn lookup_addrs(r: &TokioResolver, host: &str) -> Result<(Vec<IpAddr>, Instant), String> {
    let l = tokio::time::timeout(LOOKUP_DEADLINE, r.lookup_ip(host))
        .await
        .map_err(|_| format!("no answer within {LOOKUP_DEADLINE:?}"))?
        .map_err(|e| e.to_string())?;
    let mut ips: Vec<IpAddr> = l.iter().collect();
    ips.sort_unstable();
    ips.dedup();
    if ips.is_empty() {
        return Err(format!("no A/AAAA records for {host}"));
    }
    Ok((ips, l.valid_until()))
}

/// SRV records of the lowest priority, targets resolved: `(backends, expiry)`.
async fn lookup_srv(r: &TokioResolver, name: &str) -> Result<(Vec<Backend>, Instant), String> {
    let srv = tokio::time::timeout(LOOKUP_DEADLINE, r.srv_lookup(name))
        .await
        .map_err(|_| format!("no answer within {LOOKUP_DEADLINE:?}"))?
        .map_err(|e| e.to_string())?;
    let mut until = srv.as_lookup().valid_until();
    let Some(best) = srv
        .iter()
        .map(hickory_resolver::proto::rr::rdata::SRV::priority)
        .min()
    else {
        return Err(format!("no SRV records for {name}"));
    };
    let mut out: Vec<Backend> = Vec::new();
    for rec in srv.iter().filter(|s| s.priority() == best) {
        let target = rec.target().to_utf8();
        let (ips, t_until) = lookup_addrs(r, &target).await?;
        until = until.min(t_until);
        for ip in ips {
            let addr = SocketAddr::new(ip, rec.port());
            if !out.iter().any(|b| b.address == addr) {
                out.push(Backend::new(addr, rec.weight().max(1)));
            }
        }
    }
    out.sort_by_key(|b| b.address);
    Ok((out, until))
}

/// What a DNS source asks: the A/AAAA records of a host (its backends take the port given
/// with it), or SRV records.
enum Query {
    Addrs(HostPort),
    Srv(String),
}

impl Query {
    fn source(&self) -> Source {
        match self {
            Self::Addrs(_) => Source::Dns,
            Self::Srv(_) => Source::Srv,
        }
    }

    /// The backends of the answer and when it expires.
    async fn lookup(&self, r: &TokioResolver) -> Result<(Vec<Backend>, Instant), String> {
        match self {
            Self::Addrs(hp) => {
                let (ips, until) = lookup_addrs(r, &hp.host).await?;
                let set = ips
                    .into_iter()
                    .map(|ip| Backend::new(SocketAddr::new(ip, hp.port), 1))
                    .collect();
                Ok((set, until))
            }
            Self::Srv(name) => lookup_srv(r, name).await,
        }
    }
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addrs(hp) => hp.fmt(f),
            Self::Srv(name) => f.write_str(name),
        }
    }
}

/// Sends the backends `q` finds on `tx`, again whenever the answer expires, until `tx` is
/// closed; a failed lookup is counted and logged, the last good set kept, and the lookup
/// retried (1 s doubling to 30 s).
async fn dns_loop(
    r: TokioResolver,
    pool: String,
    q: Query,
    tx: UnboundedSender<(Source, Vec<Backend>)>,
    errors: Arc<DiscoveryErrors>,
) {
    let source = q.source();
    let mut retry = Duration::ZERO;
    loop {
        let wait = match q.lookup(&r).await {
            Ok((set, until)) => {
                retry = Duration::ZERO;
                if tx.send((source, set)).is_err() {
                    return;
                }
                refresh_after(until)
            }
            Err(e) => {
                retry = next_retry(retry);
                errors.count(&pool, source.kind());
                tracing::warn!(pool, name = %q, "discovery: {} lookup failed, keeping the last good set (retry in {retry:?}): {e}", source.kind());
                retry
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// A backends file: `[[backend]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendsFile {
    #[serde(default)]
    backend: Vec<FileBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    address: String,
    weight: Option<u16>,
}

/// Parses a backends file (see the module docs). Duplicate addresses are an error.
pub fn parse_backends_file(text: &str) -> Result<Vec<Backend>, String> {
    let f: BackendsFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out: Vec<Backend> = Vec::with_capacity(f.backend.len());
    for (i, b) in f.backend.iter().enumerate() {
        let addr: SocketAddr = b.address.parse().map_err(|_| {
            format!(
                "backend {}: invalid address {:?} (want IP:PORT, e.g. \"127.0.0.1:8080\")",
                i + 1,
                b.address
            )
        })?;
        if addr.port() == 0 {
            return Err(format!("backend {}: port 0 in {:?}", i + 1, b.address));
        }
        if out.iter().any(|x| x.address == addr) {
            return Err(format!("backend {}: duplicate address {addr}", i + 1));
        }
        out.push(Backend::new(addr, b.weight.unwrap_or(1)));
    }
    Ok(out)
}

/// What identifies a version of a file without reading it.
fn stamp(path: &Path) -> std::io::Result<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len(), m.ino()))
}

async fn file_loop(
    pool: String,
    path: PathBuf,
    tx: UnboundedSender<(Source, Vec<Backend>)>,
    errors: Arc<DiscoveryErrors>,
) {
    let mut seen = None;
    let mut failing = false;
    loop {
        let st = stamp(&path).map_err(|e| e.to_string());
        let changed = match &st {
            Ok(s) => seen.as_ref() != Some(s),
            Err(_) => !failing,
        };
        if changed {
            let res = st.clone().and_then(|_| {
                std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse_backends_file(&t))
            });
            match res {
                Ok(set) => {
                    failing = false;
                    if tx.send((Source::File, set)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    failing = true;
                    errors.count(&pool, Source::File.kind());
                    tracing::warn!(pool, file = %path.display(), "discovery: cannot use the backends file, keeping the last good set: {e}");
                }
            }
            seen = st.ok();
        }
        tokio::time::sleep(FILE_POLL).await;
    }
}

/// A backend that left an etcd-discovered set and drains until `until` (or sooner, see
/// [`Discoveries::leave`]).
#[derive(Debug, Clone)]
pub struct Leaving {
    pub backend: Backend,
    /// The controller's clock (`Shared::now`).
    pub until: Duration,
}

/// The controller's side: one running discovery task per pool, their last sets, and the
/// backends that left an etcd-discovered set and drain.
///
/// A backend that leaves the set of a pool with `etcd` discovery (its lease expired: it
/// stopped heartbeating, or it deregistered) is not dropped at once: the controller puts
/// it here ([`Discoveries::leave`]) and drains it exactly as an operator drain does (state
/// `draining`: no new flows, established ones go on), until its connections have closed
/// or the pool's longest `drain_timeout` has passed. Registering again ends the drain.
pub struct Discoveries {
    tasks: HashMap<String, (Discovery, u64, JoinHandle<()>)>,
    /// The last set each pool's current task reported.
    sets: HashMap<String, Vec<Backend>>,
    /// Per pool: backends that left its etcd-discovered set and drain.
    leaving: HashMap<String, Vec<Leaving>>,
    next: u64,
    errors: Arc<DiscoveryErrors>,
    registry: Option<Arc<dyn Registry>>,
}

impl Discoveries {
    /// No tasks yet; their failures are counted in `errors`; `registry` serves `etcd`
    /// discovery.
    pub fn new(errors: Arc<DiscoveryErrors>, registry: Option<Arc<dyn Registry>>) -> Self {
        Self {
            tasks: HashMap::new(),
            sets: HashMap::new(),
            leaving: HashMap::new(),
            next: 0,
            errors,
            registry,
        }
    }

    /// Starts, restarts (new settings) or stops tasks so that exactly the pools in `pools`
    /// with a discovery table have one. A pool whose settings changed keeps its last set
    /// until the new task reports.
    pub fn sync(&mut self, pools: &[PoolConfig], events: &UnboundedSender<Event>) {
        let mut keep: HashMap<String, (Discovery, u64, JoinHandle<()>)> = HashMap::new();
        for p in pools {
            let (name, Some(d)) = (p.name.as_str(), p.discovery.as_ref()) else {
                continue;
            };
            match self.tasks.remove(name) {
                Some(t) if t.0 == *d => {
                    keep.insert(name.to_owned(), t);
                }
                old => {
                    if let Some((_, _, h)) = old {
                        h.abort();
                    }
                    self.next += 1;
                    let errors = Arc::clone(&self.errors);
                    let h = spawn(
                        name.to_owned(),
                        d.clone(),
                        self.next,
                        events.clone(),
                        errors,
                        self.registry.clone(),
                    );
                    keep.insert(name.to_owned(), (d.clone(), self.next, h));
                }
            }
        }
        for (_, (_, _, h)) in self.tasks.drain() {
            h.abort();
        }
        self.tasks = keep;
        self.sets.retain(|p, _| self.tasks.contains_key(p));
        let etcd: HashSet<&str> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.0.etcd.is_some())
            .map(|(p, _)| p.as_str())
            .collect();
        self.leaving.retain(|p, _| etcd.contains(p.as_str()));
    }

    /// Records a report; `None` when it comes from a task that was replaced or stopped,
    /// else the backends of the previous set that are not in this one.
    pub fn report(
        &mut self,
        pool: &str,
        task: u64,
        backends: Vec<Backend>,
    ) -> Option<Vec<Backend>> {
        if self.tasks.get(pool).is_none_or(|t| t.1 != task) {
            return None;
        }
        if let Some(l) = self.leaving.get_mut(pool) {
            l.retain(|x| !backends.iter().any(|b| b.address == x.backend.address));
        }
        let old = self
            .sets
            .insert(pool.to_owned(), backends)
            .unwrap_or_default();
        let new = &self.sets[pool];
        Some(
            old.into_iter()
                .filter(|o| !new.iter().any(|b| b.address == o.address))
                .collect(),
        )
    }

    /// The last set each pool's current task reported.
    pub fn sets(&self) -> &HashMap<String, Vec<Backend>> {
        &self.sets
    }

    /// The last set each pool's current task reported, with the backends that left it
    /// and still drain: what the reload planner keeps tracking.
    pub fn sets_with_leaving(&self) -> HashMap<String, Vec<Backend>> {
        let mut out = self.sets.clone();
        for (pool, l) in &self.leaving {
            let gone: Vec<Backend> = l.iter().map(|x| x.backend.clone()).collect();
            let set = out.entry(pool.clone()).or_default();
            *set = merge(set, &gone);
        }
        out
    }

    /// Whether backends that leave `pool`'s discovered set drain (`etcd` discovery).
    pub fn drains_on_leave(&self, pool: &str) -> bool {
        self.tasks.get(pool).is_some_and(|t| t.0.etcd.is_some())
    }

    /// `backend` left `pool`'s set and drains until `until` at the latest.
    pub fn leave(&mut self, pool: &str, backend: Backend, until: Duration) {
        let l = self.leaving.entry(pool.to_owned()).or_default();
        l.retain(|x| x.backend.address != backend.address);
        l.push(Leaving { backend, until });
    }

    /// Whether `address` drains after leaving `pool`'s set.
    pub fn is_leaving(&self, pool: &str, address: SocketAddr) -> bool {
        self.leaving
            .get(pool)
            .is_some_and(|l| l.iter().any(|x| x.backend.address == address))
    }

    /// Every draining backend that left a set, as `(pool, leaving)`.
    pub fn leaving(&self) -> impl Iterator<Item = (&str, &Leaving)> {
        self.leaving
            .iter()
            .flat_map(|(p, l)| l.iter().map(move |x| (p.as_str(), x)))
    }

    /// Ends the drain of the backends for which `done(pool, leaving)` holds (they leave
    /// the pool with the next apply); whether any did.
    pub fn end_leaving(&mut self, mut done: impl FnMut(&str, &Leaving) -> bool) -> bool {
        let mut any = false;
        for (p, l) in &mut self.leaving {
            let n = l.len();
            l.retain(|x| !done(p, x));
            any |= l.len() != n;
        }
        self.leaving.retain(|_, l| !l.is_empty());
        any
    }

    /// Whether `pool` has discovered backends, current or leaving: when not, its
    /// [`Discoveries::backends`] are its static ones as listed.
    pub fn lists(&self, pool: &str) -> bool {
        self.sets.contains_key(pool) || self.leaving.contains_key(pool)
    }

    /// The pool's backends: static ones merged with the discovered ones, then the ones
    /// that left and drain.
    pub fn backends(&self, pool: &str, statics: &[Backend]) -> Vec<Backend> {
        let mut out = match self.sets.get(pool) {
            Some(d) => merge(statics, d),
            None => statics.to_vec(),
        };
        if let Some(l) = self.leaving.get(pool) {
            let gone: Vec<Backend> = l.iter().map(|x| x.backend.clone()).collect();
            out = merge(&out, &gone);
        }
        out
    }
}

impl Drop for Discoveries {
    fn drop(&mut self) {
        for (_, _, h) in self.tasks.values() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each discovery state counts its own failures, per pool and kind.
    #[test]
    fn error_counts_belong_to_their_state() {
        let (a, b) = (DiscoveryErrors::default(), DiscoveryErrors::default());
        a.count("web", "dns");
        a.count("web", "dns");
        a.count("api", "file");
        b.count("web", "srv");
        assert_eq!(
            a.counts(),
            vec![("api".to_owned(), "file", 1), ("web".to_owned(), "dns", 2)]
        );
        assert_eq!(b.counts(), vec![("web".to_owned(), "srv", 1)]);
    }

    /// A backend that leaves an etcd-discovered set stays (to drain) until its drain ends;
    /// registering again takes it off the leaving list.
    #[tokio::test]
    async fn leaving_backends_stay_until_their_drain_ends() {
        let (tx, _rx) = unbounded_channel();
        let mut d = Discoveries::new(Arc::default(), None);
        let pool: PoolConfig = fulcrum_core::config::parse(
            "[[pool]]\nname = \"web\"\n[pool.discovery]\netcd = \"/services/web/\"\n",
        )
        .unwrap()
        .pools
        .remove(0);
        d.sync(std::slice::from_ref(&pool), &tx);
        assert!(d.drains_on_leave("web"));
        let task = d.tasks["web"].1;
        let a = Backend::new("127.0.0.1:1".parse().unwrap(), 1);
        let b = Backend::new("127.0.0.1:2".parse().unwrap(), 1);
        assert_eq!(
            d.report("web", task, vec![a.clone(), b.clone()]),
            Some(vec![])
        );
        assert_eq!(d.report("web", task + 1, vec![]), None, "a stale task");
        let gone = d.report("web", task, vec![a.clone()]).unwrap();
        assert_eq!(gone, vec![b.clone()]);
        d.leave("web", b.clone(), Duration::from_secs(30));
        assert!(d.is_leaving("web", b.address));
        assert_eq!(d.backends("web", &[]).len(), 2, "still there, to drain");
        // Back: no longer leaving.
        d.report("web", task, vec![a.clone(), b.clone()]).unwrap();
        assert!(!d.is_leaving("web", b.address));
        // Gone again; its drain ends.
        d.report("web", task, vec![a.clone()]).unwrap();
        d.leave("web", b.clone(), Duration::from_secs(30));
        assert!(d.end_leaving(|_, x| x.backend.address == b.address));
        assert_eq!(d.backends("web", &[]), vec![a]);
    }

    #[test]
    fn static_wins_on_duplicates() {
        let s = vec![Backend::new("127.0.0.1:1".parse().unwrap(), 5)];
        let d = vec![
            Backend::new("127.0.0.1:1".parse().unwrap(), 1),
            Backend::new("127.0.0.2:1".parse().unwrap(), 1),
        ];
        let m = merge(&s, &d);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].weight.get(), 5);
    }

    #[test]
    fn backends_file() {
        let b = parse_backends_file(
            "[[backend]]\naddress = \"127.0.0.1:80\"\nweight = 3\n[[backend]]\naddress = \"[::1]:81\"\n",
        )
        .unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].weight.get(), 3);
        assert_eq!(b[1].weight.get(), 1);
        assert!(parse_backends_file("[[backend]]\naddress = \"x\"\n").is_err());
        assert!(parse_backends_file("[[backend]]\naddress = \"127.0.0.1:1\"\nfoo = 1\n").is_err());
        assert_eq!(parse_backends_file("").unwrap().len(), 0);
    }

    #[test]
    fn ttl_is_clamped() {
        let now = Instant::now();
        assert_eq!(refresh_after(now), TTL_FLOOR);
        assert_eq!(
            refresh_after(now + Duration::from_secs(100_000)),
            TTL_CEILING
        );
    }
}
