//! Reload as a pure plan: from the running config, the new one and what the controller runs
//! now ([`Running`]), [`plan`] computes what a change does, per listener, backend, service
//! and persistence table, without any IO. The controller ([`crate::controller`]) only
//! carries the plan out: binds first (any failure changes nothing), then spawns and aborts
//! health checkers, swaps in the new snapshot and unbinds what is gone.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_core::config::{Config, HealthConfig, OutlierConfig, PoolConfig, ServiceConfig};
use fulcrum_core::model::{Backend, Proto, ServiceProtocol};

use crate::discovery;
use crate::worker::ListenKey;

/// The health settings a tracked backend runs with now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedHealth {
    /// The settings its health state machines were built with.
    pub settings: (Option<HealthConfig>, OutlierConfig),
    /// The settings of its running active checker; `None`: no checker runs.
    pub checker: Option<HealthConfig>,
}

/// What the controller runs now, as the planner sees it (plain data, no handles).
#[derive(Debug, Clone, Default)]
pub struct Running {
    /// The addresses the data path listens on.
    pub listening: HashSet<ListenKey>,
    /// Every tracked backend, by (pool, address).
    pub backends: HashMap<(String, SocketAddr), TrackedHealth>,
    /// The services that have counters.
    pub services: HashSet<String>,
    /// Pools with a persistence table, and its timeout.
    pub persistence: HashMap<String, Duration>,
    /// The last set each pool's discovery reported.
    pub discovered: HashMap<String, Vec<Backend>>,
}

/// What happens to one listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerStep {
    /// Bound before anything else changes (a failure changes nothing).
    Bind,
    /// Retired after the new snapshot is in.
    Unbind,
    /// Stays as it is.
    Keep,
    /// Bound anew like [`ListenerStep::Bind`] (the new sockets join the old ones'
    /// `SO_REUSEPORT` group, so the address stays served), then served with the new
    /// snapshot while the old sockets close: what serves the address changed (a udp or tcp
    /// service became a dns service, or back), and a socket's serving task is chosen when
    /// it starts.
    Rebind,
}

/// What happens to one backend's tracking (counters and health state machines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackStep {
    /// A new backend: new counters, health state machines built from its pool's settings.
    Track,
    /// Keeps its counters and health state.
    Keep,
    /// Keeps its counters; its pool's health settings changed, so its health starts afresh.
    ResetHealth,
    /// Gone from the config: forgotten (established connections keep running).
    Forget,
}

/// What happens to one backend's active health checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckerStep {
    /// Starts a checker with these settings.
    Spawn(HealthConfig),
    /// Stops the running checker.
    Abort,
    /// Stops the running checker and starts one with these settings.
    Respawn(HealthConfig),
    /// Nothing to do (the same checker runs on, or none runs and none is wanted).
    Keep,
}

/// One backend's part of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPlan {
    pub pool: String,
    pub address: SocketAddr,
    pub track: TrackStep,
    pub checker: CheckerStep,
}

/// What of a service changed between the running config and the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceChange {
    Protocol,
    Listen,
    Pool,
    Tls,
    /// Anything else (limits, timeouts, routes, forwarding, ...).
    Other,
}

/// What happens to one service's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceStep {
    /// New counters.
    Add,
    /// Its counters stay; `changes` says what of it changed (empty: nothing).
    Keep { changes: Vec<ServiceChange> },
    /// Its counters go.
    Remove,
}

/// What happens to one pool's persistence table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistenceStep {
    /// A new, empty table with this timeout.
    New(Duration),
    /// The table stays with its entries.
    Keep,
    /// The table goes.
    Drop,
}

/// Everything a change does. Lists are in a fixed order: new-config order first (services,
/// pools, backends as the file lists them), then what goes, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub listeners: Vec<(ListenKey, ListenerStep)>,
    pub backends: Vec<BackendPlan>,
    pub services: Vec<(String, ServiceStep)>,
    pub persistence: Vec<(String, PersistenceStep)>,
    /// The L7 services whose state is built once before anything changes, so that a bad
    /// certificate or route fails the change.
    pub l7_check: Vec<String>,
}

impl Plan {
    /// The listen addresses to bind, in order (new ones and rebound ones).
    pub fn binds(&self) -> impl Iterator<Item = ListenKey> + '_ {
        self.listeners
            .iter()
            .filter(|(_, s)| matches!(s, ListenerStep::Bind | ListenerStep::Rebind))
            .map(|(k, _)| *k)
    }

    /// Whether `key` is rebound (its old sockets are let go once the new ones serve).
    pub fn rebinds(&self, key: ListenKey) -> bool {
        self.listeners
            .iter()
            .any(|(k, s)| *k == key && *s == ListenerStep::Rebind)
    }

    /// The listen addresses to retire.
    pub fn unbinds(&self) -> impl Iterator<Item = ListenKey> + '_ {
        self.listeners_with(ListenerStep::Unbind)
    }

    fn listeners_with(&self, step: ListenerStep) -> impl Iterator<Item = ListenKey> + '_ {
        self.listeners
            .iter()
            .filter(move |(_, s)| *s == step)
            .map(|(k, _)| *k)
    }
}

/// The addresses and protocols a service listens on (dns: UDP and TCP).
pub fn listen_keys(s: &ServiceConfig) -> impl Iterator<Item = ListenKey> {
    let protos: &[Proto] = match s.protocol() {
        ServiceProtocol::Udp => &[Proto::Udp],
        ServiceProtocol::Tcp | ServiceProtocol::Http => &[Proto::Tcp],
        ServiceProtocol::Dns => &[Proto::Udp, Proto::Tcp],
    };
    let listen = s.listen;
    protos.iter().map(move |p| (*p, listen))
}

/// The backends a pool of the new config has once discovery is in step with it: its static
/// ones, merged with the last discovered set while the pool keeps a discovery table.
pub fn pool_backends(running: &Running, p: &PoolConfig) -> Vec<Backend> {
    match (&p.discovery, running.discovered.get(&p.name)) {
        (Some(_), Some(d)) => discovery::merge(&p.backends, d),
        _ => p.backends.clone(),
    }
}

/// Computes the plan that turns `running` (built from `old`) into what `new` asks for.
/// `served(s)`: whether the userspace data path listens for service `s`; `l7(s)`: whether
/// an L7 handler builds state for it. Pure: no IO, no clock.
pub fn plan(
    old: &Config,
    new: &Config,
    running: &Running,
    served: &dyn Fn(&ServiceConfig) -> bool,
    l7: &dyn Fn(&ServiceConfig) -> bool,
) -> Plan {
    Plan {
        listeners: plan_listeners(old, new, running, served),
        backends: plan_backends(new, running),
        services: plan_services(old, new, running),
        persistence: plan_persistence(new, running),
        l7_check: new
            .services
            .iter()
            .filter(|s| served(s) && l7(s))
            .map(|s| s.name.clone())
            .collect(),
    }
}

/// Whether the sockets of `key` serve a dns service in `cfg` (their task is the dns one,
/// else the udp or tcp proxy's); `None`: no service of `cfg` listens there.
fn serves_dns(cfg: &Config, key: ListenKey) -> Option<bool> {
    cfg.services
        .iter()
        .find(|s| listen_keys(s).any(|k| k == key))
        .map(|s| s.protocol() == ServiceProtocol::Dns)
}

fn plan_listeners(
    old: &Config,
    new: &Config,
    running: &Running,
    served: &dyn Fn(&ServiceConfig) -> bool,
) -> Vec<(ListenKey, ListenerStep)> {
    let mut out: Vec<(ListenKey, ListenerStep)> = Vec::new();
    let mut wanted = HashSet::new();
    for key in new
        .services
        .iter()
        .filter(|s| served(s))
        .flat_map(listen_keys)
    {
        if wanted.insert(key) {
            let step = if running.listening.contains(&key) {
                match serves_dns(old, key) {
                    Some(was) if Some(was) != serves_dns(new, key) => ListenerStep::Rebind,
                    _ => ListenerStep::Keep,
                }
            } else {
                ListenerStep::Bind
            };
            out.push((key, step));
        }
    }
    let mut gone: Vec<ListenKey> = running.listening.difference(&wanted).copied().collect();
    gone.sort_unstable_by_key(|(proto, addr)| (*proto as u8, *addr));
    out.extend(gone.into_iter().map(|k| (k, ListenerStep::Unbind)));
    out
}

/// The backend steps of a change that only adds, removes or re-weights static backends of
/// pools without discovery (an admin API backend call), from the two configs alone: one
/// step per backend that comes or goes, where [`plan`] lists every backend of every pool
/// (the others are kept as they are). `None` for any other change (also for none at all):
/// the whole [`plan`] then applies. Running state consistent with `old` (as the
/// controller's is after carrying out `old`'s plan) gives the same steps as [`plan`] minus
/// its keep-everything ones (the tests compare the two).
pub fn backends_only(old: &Config, new: &Config) -> Option<BackendsOnly> {
    // Every field named, so that a new one is not silently taken as unchanged.
    let Config {
        admin,
        services,
        pools,
        xdp,
        announce,
        cluster,
    } = new;
    if *admin != old.admin
        || *services != old.services
        || *xdp != old.xdp
        || *announce != old.announce
        || *cluster != old.cluster
        || pools.len() != old.pools.len()
    {
        return None;
    }
    let mut out = Vec::new();
    let mut changed = Vec::new();
    for (o, n) in old.pools.iter().zip(pools) {
        if o.backends == n.backends {
            if o != n {
                return None;
            }
            continue;
        }
        changed.push(n.name.clone());
        if o.discovery.is_some() || n.discovery.is_some() || !same_but_backends(o, n) {
            return None;
        }
        // The common head and tail (an append, a removal) are compared as they are; only
        // the part between is looked at address by address.
        let head = o
            .backends
            .iter()
            .zip(&n.backends)
            .take_while(|(a, b)| a.address == b.address)
            .count();
        let tail = o.backends[head..]
            .iter()
            .rev()
            .zip(n.backends[head..].iter().rev())
            .take_while(|(a, b)| a.address == b.address)
            .count();
        let was = &o.backends[head..o.backends.len() - tail];
        let is = &n.backends[head..n.backends.len() - tail];
        out.extend(added(was, is).map(|address| {
            BackendPlan {
                pool: n.name.clone(),
                address,
                track: TrackStep::Track,
                checker: n
                    .health
                    .clone()
                    .map_or(CheckerStep::Keep, CheckerStep::Spawn),
            }
        }));
        let checker = if o.health.is_some() {
            CheckerStep::Abort
        } else {
            CheckerStep::Keep
        };
        out.extend(added(is, was).map(|address| BackendPlan {
            pool: o.name.clone(),
            address,
            track: TrackStep::Forget,
            checker: checker.clone(),
        }));
    }
    (!changed.is_empty()).then_some(BackendsOnly {
        steps: out,
        pools: changed,
    })
}

/// A change of static backends only ([`backends_only`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendsOnly {
    /// A step per backend that comes or goes.
    pub steps: Vec<BackendPlan>,
    /// The pools whose backends changed (also by weight or order only), in the config's
    /// order: the only ones a new snapshot must build anew.
    pub pools: Vec<String>,
}

/// The addresses of `now` that `before` does not hold, in the order of `now`.
fn added<'a>(before: &[Backend], now: &'a [Backend]) -> impl Iterator<Item = SocketAddr> + 'a {
    let before: HashSet<SocketAddr> = before.iter().map(|b| b.address).collect();
    now.iter()
        .map(|b| b.address)
        .filter(move |a| !before.contains(a))
}

/// Whether two pools differ at most in their static backends (every field named, so that
/// a new one is not silently taken as unchanged; no copy of the backends).
fn same_but_backends(o: &PoolConfig, n: &PoolConfig) -> bool {
    let PoolConfig {
        name,
        scheduler,
        persistence,
        sticky_cookie,
        backend_protocol,
        health,
        outlier,
        backends: _,
        discovery,
        locality,
        tls,
    } = n;
    *name == o.name
        && *scheduler == o.scheduler
        && *persistence == o.persistence
        && *sticky_cookie == o.sticky_cookie
        && *backend_protocol == o.backend_protocol
        && *health == o.health
        && *outlier == o.outlier
        && *discovery == o.discovery
        && *locality == o.locality
        && *tls == o.tls
}

fn plan_backends(new: &Config, running: &Running) -> Vec<BackendPlan> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for pool in &new.pools {
        let settings = (pool.health.clone(), pool.outlier);
        for b in pool_backends(running, pool) {
            let key = (pool.name.clone(), b.address);
            if !seen.insert(key.clone()) {
                continue;
            }
            let (track, checker) = match running.backends.get(&key) {
                None => (TrackStep::Track, None),
                Some(t) if t.settings == settings => (TrackStep::Keep, t.checker.as_ref()),
                Some(t) => (TrackStep::ResetHealth, t.checker.as_ref()),
            };
            let checker = match (checker, &pool.health) {
                (Some(old), Some(h)) if old == h => CheckerStep::Keep,
                (None, None) => CheckerStep::Keep,
                (Some(_), Some(h)) => CheckerStep::Respawn(h.clone()),
                (None, Some(h)) => CheckerStep::Spawn(h.clone()),
                (Some(_), None) => CheckerStep::Abort,
            };
            out.push(BackendPlan {
                pool: key.0,
                address: key.1,
                track,
                checker,
            });
        }
    }
    let mut gone: Vec<(&(String, SocketAddr), &TrackedHealth)> = running
        .backends
        .iter()
        .filter(|(k, _)| !seen.contains(*k))
        .collect();
    gone.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.extend(gone.into_iter().map(|((pool, address), t)| BackendPlan {
        pool: pool.clone(),
        address: *address,
        track: TrackStep::Forget,
        checker: if t.checker.is_some() {
            CheckerStep::Abort
        } else {
            CheckerStep::Keep
        },
    }));
    out
}

fn plan_services(old: &Config, new: &Config, running: &Running) -> Vec<(String, ServiceStep)> {
    let mut out: Vec<(String, ServiceStep)> = new
        .services
        .iter()
        .map(|s| {
            let step = if running.services.contains(&s.name) {
                ServiceStep::Keep {
                    changes: old
                        .service(&s.name)
                        .map_or_else(Vec::new, |o| changes(o, s)),
                }
            } else {
                ServiceStep::Add
            };
            (s.name.clone(), step)
        })
        .collect();
    let mut gone: Vec<&String> = running
        .services
        .iter()
        .filter(|n| new.service(n).is_none())
        .collect();
    gone.sort_unstable();
    out.extend(gone.into_iter().map(|n| (n.clone(), ServiceStep::Remove)));
    out
}

/// What of a service differs between two versions of it.
fn changes(old: &ServiceConfig, new: &ServiceConfig) -> Vec<ServiceChange> {
    let mut out = Vec::new();
    if old.protocol() != new.protocol() {
        out.push(ServiceChange::Protocol);
    }
    if old.listen != new.listen {
        out.push(ServiceChange::Listen);
    }
    if old.pool != new.pool {
        out.push(ServiceChange::Pool);
    }
    if old.tls() != new.tls() {
        out.push(ServiceChange::Tls);
    }
    let rest = ServiceConfig {
        listen: new.listen,
        pool: new.pool.clone(),
        kind: new.kind.clone(),
        ..old.clone()
    };
    if rest != *new || kind_options_differ(old, new) {
        out.push(ServiceChange::Other);
    }
    out
}

/// Whether the options of a service's kind differ, besides its protocol and TLS: between
/// two protocols, the forwarding and any option that either kind sets.
fn kind_options_differ(old: &ServiceConfig, new: &ServiceConfig) -> bool {
    use fulcrum_core::config::{HttpService, ServiceKind as K, TcpService, UdpForward};
    let no_tls = |h: &HttpService| HttpService {
        tls: None,
        ..h.clone()
    };
    let plain = |k: &K| match k {
        K::Tcp(TcpService::Proxy(p)) => {
            p.sni_routes.is_empty() && p.timeouts.is_none() && p.access_log.is_none()
        }
        K::Tcp(TcpService::Packet(_)) => true,
        K::Udp(u) => {
            u.max_flows == fulcrum_core::model::defaults::MAX_FLOWS
                && matches!(
                    u.forward,
                    UdpForward::Packet(_) | UdpForward::Proxy { access_log: None }
                )
        }
        K::Http(h) => no_tls(h) == HttpService::default(),
        K::Dns(_) => false,
    };
    match (&old.kind, &new.kind) {
        (K::Http(o), K::Http(n)) => no_tls(o) != no_tls(n),
        (o, n) if old.protocol() == new.protocol() => o != n,
        (o, n) => old.forward() != new.forward() || !plain(o) || !plain(n),
    }
}

fn plan_persistence(new: &Config, running: &Running) -> Vec<(String, PersistenceStep)> {
    let mut out: Vec<(String, PersistenceStep)> = new
        .pools
        .iter()
        .filter_map(|p| {
            let timeout = p.persistence?;
            let step = if running.persistence.get(&p.name) == Some(&timeout) {
                PersistenceStep::Keep
            } else {
                PersistenceStep::New(timeout)
            };
            Some((p.name.clone(), step))
        })
        .collect();
    let mut gone: Vec<&String> = running
        .persistence
        .keys()
        .filter(|n| new.pool(n).is_none_or(|p| p.persistence.is_none()))
        .collect();
    gone.sort_unstable();
    out.extend(gone.into_iter().map(|n| (n.clone(), PersistenceStep::Drop)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_core::config::parse;

    const HEALTH: &str = "[pool.health]\ncheck = \"tcp\"\ninterval = \"1s\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n";
    const HEALTH2: &str = "[pool.health]\ncheck = \"tcp\"\ninterval = \"2s\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n";
    const TLS: &str = "[service.tls]\ncerts = [ { cert = \"a.pem\", key = \"a.key\" } ]\n";
    const ZONE: &str =
        "[service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n";
    const TLS2: &str = "[service.tls]\ncerts = [ { cert = \"b.pem\", key = \"b.key\" } ]\n";

    fn service(name: &str, listen: &str, protocol: &str, pool: &str, extra: &str) -> String {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nprotocol = \"{protocol}\"\npool = \"{pool}\"\n{extra}\n"
        )
    }

    fn pool(name: &str, extra: &str, backends: &[&str]) -> String {
        let mut s = format!("[[pool]]\nname = \"{name}\"\nscheduler = \"rr\"\n{extra}\n");
        for b in backends {
            s += "[[pool.backend]]\naddress = \"";
            s += b;
            s += "\"\n";
        }
        s
    }

    fn config(text: &str) -> Config {
        match parse(text) {
            Ok(c) => c,
            Err(e) => panic!("test config does not parse: {e:?}\n{text}"),
        }
    }

    /// As if an L7 handler serves http services (the binary's).
    fn served(s: &ServiceConfig) -> bool {
        matches!(s.forward(), fulcrum_core::config::Forwarding::Proxy { .. })
    }

    fn l7(s: &ServiceConfig) -> bool {
        s.protocol() == ServiceProtocol::Http
    }

    /// The running state after `plan` was carried out on `before` (what the controller's
    /// executor keeps).
    fn carried_out(before: &Running, plan: &Plan, new: &Config) -> Running {
        let mut r = before.clone();
        for (key, step) in &plan.listeners {
            match step {
                ListenerStep::Bind | ListenerStep::Rebind => r.listening.insert(*key),
                ListenerStep::Unbind => r.listening.remove(key),
                ListenerStep::Keep => true,
            };
        }
        for b in &plan.backends {
            let key = (b.pool.clone(), b.address);
            if b.track == TrackStep::Forget {
                r.backends.remove(&key);
                continue;
            }
            let p = new
                .pool(&b.pool)
                .expect("planned backends are in the new config");
            let t = r.backends.entry(key).or_insert(TrackedHealth {
                settings: (p.health.clone(), p.outlier),
                checker: None,
            });
            if b.track == TrackStep::ResetHealth {
                t.settings = (p.health.clone(), p.outlier);
            }
            match &b.checker {
                CheckerStep::Spawn(h) | CheckerStep::Respawn(h) => t.checker = Some(h.clone()),
                CheckerStep::Abort => t.checker = None,
                CheckerStep::Keep => {}
            }
        }
        for (name, step) in &plan.services {
            match step {
                ServiceStep::Add => r.services.insert(name.clone()),
                ServiceStep::Remove => r.services.remove(name),
                ServiceStep::Keep { .. } => true,
            };
        }
        for (name, step) in &plan.persistence {
            match step {
                PersistenceStep::New(t) => r.persistence.insert(name.clone(), *t),
                PersistenceStep::Drop => r.persistence.remove(name),
                PersistenceStep::Keep => None,
            };
        }
        r
    }

    /// The plan as short lines, one a step.
    fn render(plan: &Plan) -> Vec<String> {
        let mut out = Vec::new();
        for ((proto, addr), step) in &plan.listeners {
            out.push(format!("{step:?} {proto:?} {addr}").to_lowercase());
        }
        for b in &plan.backends {
            let checker = match &b.checker {
                CheckerStep::Spawn(h) => format!("spawn {:?}", h.interval),
                CheckerStep::Respawn(h) => format!("respawn {:?}", h.interval),
                CheckerStep::Abort => "abort".to_owned(),
                CheckerStep::Keep => "keep".to_owned(),
            };
            out.push(
                format!("{:?} {} {} checker {checker}", b.track, b.pool, b.address).to_lowercase(),
            );
        }
        for (name, step) in &plan.services {
            out.push(format!("service {name} {step:?}").to_lowercase());
        }
        for (name, step) in &plan.persistence {
            out.push(format!("persistence {name} {step:?}").to_lowercase());
        }
        if !plan.l7_check.is_empty() {
            out.push(format!("l7 check {}", plan.l7_check.join(",")));
        }
        out
    }

    /// Plans `old` from nothing, carries it out, then plans `new` on top.
    fn plan_change(old: &str, new: &str) -> Vec<String> {
        let (old, new) = (config(old), config(new));
        let first = plan(&old, &old, &Running::default(), &served, &l7);
        let running = carried_out(&Running::default(), &first, &old);
        render(&plan(&old, &new, &running, &served, &l7))
    }

    const A: &str = "127.0.0.1:8001";
    const B: &str = "127.0.0.1:8002";

    /// A table: one row a transition.
    #[test]
    #[allow(clippy::too_many_lines)]
    fn every_transition() {
        let p = pool("p", "", &["198.18.0.1:80"]);
        let q = pool("q", "", &["198.18.0.2:80"]);
        let tcp = service("s", A, "tcp", "p", "");
        #[rustfmt::skip]
        let cases: Vec<(&str, String, String, Vec<&str>)> = vec![
            ("nothing changes", tcp.clone() + &p, tcp.clone() + &p, vec![
                "keep tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [] }",
            ]),
            ("add a service", tcp.clone() + &p,
             tcp.clone() + &service("t", B, "udp", "p", "") + &p, vec![
                "keep tcp 127.0.0.1:8001",
                "bind udp 127.0.0.1:8002",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [] }",
                "service t add",
            ]),
            ("remove a service", tcp.clone() + &service("t", B, "udp", "p", "") + &p,
             tcp.clone() + &p, vec![
                "keep tcp 127.0.0.1:8001",
                "unbind udp 127.0.0.1:8002",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [] }",
                "service t remove",
            ]),
            ("change protocol tcp to udp", tcp.clone() + &p, service("s", A, "udp", "p", "") + &p, vec![
                "bind udp 127.0.0.1:8001",
                "unbind tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [protocol] }",
            ]),
            ("change protocol tcp to http: the same socket", tcp.clone() + &p,
             service("s", A, "http", "p", "") + &p, vec![
                "keep tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [protocol] }",
                "l7 check s",
            ]),
            ("change protocol udp to dns: the udp socket is served anew", service("s", A, "udp", "p", "") + &p,
             service("s", A, "dns", "p", ZONE) + &p, vec![
                "rebind udp 127.0.0.1:8001",
                "bind tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [protocol, other] }",
            ]),
            ("change protocol dns to tcp: the tcp socket is served anew", service("s", A, "dns", "p", ZONE) + &p,
             tcp.clone() + &p, vec![
                "rebind tcp 127.0.0.1:8001",
                "unbind udp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [protocol, other] }",
            ]),
            ("change a dns service's names only: the sockets stay", service("s", A, "dns", "p", ZONE) + &p,
             service("s", A, "dns", "p", &format!("{ZONE}[[service.dns_name]]\nname = \"www.example.test\"\n")) + &p, vec![
                "keep udp 127.0.0.1:8001",
                "keep tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [other] }",
            ]),
            ("change address", tcp.clone() + &p, service("s", B, "tcp", "p", "") + &p, vec![
                "bind tcp 127.0.0.1:8002",
                "unbind tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [listen] }",
            ]),
            ("change pool", tcp.clone() + &p, service("s", A, "tcp", "q", "") + &q, vec![
                "keep tcp 127.0.0.1:8001",
                "track q 198.18.0.2:80 checker keep",
                "forget p 198.18.0.1:80 checker keep",
                "service s keep { changes: [pool] }",
            ]),
            ("change TLS", service("s", A, "http", "p", TLS) + &p,
             service("s", A, "http", "p", TLS2) + &p, vec![
                "keep tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [tls] }",
                "l7 check s",
            ]),
            ("add TLS and a limit", service("s", A, "http", "p", "") + &p,
             service("s", A, "http", "p", &format!("max_connections = 7\n{TLS}")) + &p, vec![
                "keep tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [tls, other] }",
                "l7 check s",
            ]),
            ("not served by the userspace path: no listener",
             "[xdp]\ninterface = \"lo\"\n".to_owned() + &tcp + &p,
             "[xdp]\ninterface = \"lo\"\n".to_owned() + &service("s", A, "tcp", "p", "forward = \"nat\"") + &p, vec![
                "unbind tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "service s keep { changes: [other] }",
            ]),
            ("add a backend with health checks", tcp.clone() + &pool("p", HEALTH, &["198.18.0.1:80"]),
             tcp.clone() + &pool("p", HEALTH, &["198.18.0.1:80", "198.18.0.3:80"]), vec![
                "keep tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "track p 198.18.0.3:80 checker spawn 1s",
                "service s keep { changes: [] }",
            ]),
            ("remove a backend with health checks", tcp.clone() + &pool("p", HEALTH, &["198.18.0.1:80", "198.18.0.3:80"]),
             tcp.clone() + &pool("p", HEALTH, &["198.18.0.1:80"]), vec![
                "keep tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "forget p 198.18.0.3:80 checker abort",
                "service s keep { changes: [] }",
            ]),
            ("turn health checks on", tcp.clone() + &p, tcp.clone() + &pool("p", HEALTH, &["198.18.0.1:80"]), vec![
                "keep tcp 127.0.0.1:8001",
                "resethealth p 198.18.0.1:80 checker spawn 1s",
                "service s keep { changes: [] }",
            ]),
            ("change health checks", tcp.clone() + &pool("p", HEALTH, &["198.18.0.1:80"]),
             tcp.clone() + &pool("p", HEALTH2, &["198.18.0.1:80"]), vec![
                "keep tcp 127.0.0.1:8001",
                "resethealth p 198.18.0.1:80 checker respawn 2s",
                "service s keep { changes: [] }",
            ]),
            ("turn health checks off", tcp.clone() + &pool("p", HEALTH, &["198.18.0.1:80"]), tcp.clone() + &p, vec![
                "keep tcp 127.0.0.1:8001",
                "resethealth p 198.18.0.1:80 checker abort",
                "service s keep { changes: [] }",
            ]),
            ("change outlier detection only", tcp.clone() + &p,
             tcp.clone() + &pool("p", "[pool.outlier]\nconsecutive_failures = 9\n", &["198.18.0.1:80"]), vec![
                "keep tcp 127.0.0.1:8001",
                "resethealth p 198.18.0.1:80 checker keep",
                "service s keep { changes: [] }",
            ]),
            ("persistence on, changed, kept, off", tcp.clone() + &p + &pool("q", "persistence = \"10s\"", &["198.18.0.2:80"])
                + &pool("r", "persistence = \"10s\"", &["198.18.0.4:80"]),
             tcp.clone() + &pool("p", "persistence = \"5s\"", &["198.18.0.1:80"])
                + &pool("q", "persistence = \"20s\"", &["198.18.0.2:80"])
                + &pool("r", "persistence = \"10s\"", &["198.18.0.4:80"]), vec![
                "keep tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "keep q 198.18.0.2:80 checker keep",
                "keep r 198.18.0.4:80 checker keep",
                "service s keep { changes: [] }",
                "persistence p new(5s)",
                "persistence q new(20s)",
                "persistence r keep",
            ]),
            ("remove a pool with persistence", tcp.clone() + &p + &pool("q", "persistence = \"10s\"", &["198.18.0.2:80"]),
             tcp.clone() + &p, vec![
                "keep tcp 127.0.0.1:8001",
                "keep p 198.18.0.1:80 checker keep",
                "forget q 198.18.0.2:80 checker keep",
                "service s keep { changes: [] }",
                "persistence q drop",
            ]),
        ];
        for (name, old, new, want) in cases {
            assert_eq!(plan_change(&old, &new), want, "case {name:?}");
        }
    }

    /// Service `s` (tcp) and service `h` (`protocol`), one pool with persistence and checks.
    fn two_services(protocol: &str) -> Config {
        let p = pool(
            "p",
            &format!("persistence = \"3s\"\n{HEALTH}"),
            &["198.18.0.1:80"],
        );
        config(&(service("s", A, "tcp", "p", "") + &service("h", B, protocol, "p", "") + &p))
    }

    #[test]
    fn from_nothing_everything_is_bound_tracked_and_spawned() {
        let c = two_services("http");
        let got = render(&plan(&c, &c, &Running::default(), &served, &l7));
        assert_eq!(
            got,
            [
                "bind tcp 127.0.0.1:8001",
                "bind tcp 127.0.0.1:8002",
                "track p 198.18.0.1:80 checker spawn 1s",
                "service s add",
                "service h add",
                "persistence p new(3s)",
                "l7 check h",
            ]
        );
    }

    #[test]
    fn discovered_backends_are_tracked_while_the_pool_discovers() {
        let disc = "[pool.discovery]\nfile = \"/nonexistent/backends.toml\"\n";
        let with =
            config(&(service("s", A, "tcp", "p", "") + &pool("p", disc, &["198.18.0.1:80"])));
        let without =
            config(&(service("s", A, "tcp", "p", "") + &pool("p", "", &["198.18.0.1:80"])));
        let mut running = carried_out(
            &Running::default(),
            &plan(&with, &with, &Running::default(), &served, &l7),
            &with,
        );
        let found = Backend::new(
            "198.18.0.9:80".parse().unwrap_or_else(|_| unreachable!()),
            1,
        );
        running.discovered.insert("p".into(), vec![found]);
        let again = render(&plan(&with, &with, &running, &served, &l7));
        assert!(
            again.contains(&"track p 198.18.0.9:80 checker keep".to_owned()),
            "{again:?}"
        );
        let after = carried_out(&running, &plan(&with, &with, &running, &served, &l7), &with);
        // Discovery removed from the pool: the discovered backend goes.
        let off = render(&plan(&with, &without, &after, &served, &l7));
        assert!(
            off.contains(&"forget p 198.18.0.9:80 checker keep".to_owned()),
            "{off:?}"
        );
        assert!(
            off.contains(&"keep p 198.18.0.1:80 checker keep".to_owned()),
            "{off:?}"
        );
    }

    #[test]
    fn after_a_plan_is_carried_out_the_same_config_plans_nothing() {
        let c = two_services("udp");
        let r = carried_out(
            &Running::default(),
            &plan(&c, &c, &Running::default(), &served, &l7),
            &c,
        );
        let p = plan(&c, &c, &r, &served, &l7);
        assert!(
            p.listeners.iter().all(|(_, s)| *s == ListenerStep::Keep),
            "{p:?}"
        );
        assert!(
            p.backends
                .iter()
                .all(|b| b.track == TrackStep::Keep && b.checker == CheckerStep::Keep),
            "{p:?}"
        );
        assert!(
            p.persistence
                .iter()
                .all(|(_, s)| *s == PersistenceStep::Keep),
            "{p:?}"
        );
    }

    /// A change of static backends only: [`backends_only`] gives the steps of the whole
    /// plan that do something, and nothing for any other change.
    #[test]
    fn backend_only_changes_plan_the_same_steps_as_the_whole_plan() {
        let svc = service("s", "127.0.0.1:80", "tcp", "a", "")
            + &service("h", "127.0.0.1:81", "http", "b", "");
        let a = |bs: &[&str]| pool("a", HEALTH, bs);
        let b = |bs: &[&str]| pool("b", "", bs);
        let base = config(
            &(svc.clone()
                + &a(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
                + &b(&["10.0.1.1:80"])),
        );
        let weighted = svc.clone()
            + "[[pool]]\nname = \"a\"\nscheduler = \"rr\"\n"
            + HEALTH
            + "[[pool.backend]]\naddress = \"10.0.0.1:80\"\nweight = 5\n[[pool.backend]]\naddress = \"10.0.0.2:80\"\n[[pool.backend]]\naddress = \"10.0.0.3:80\"\n"
            + &b(&["10.0.1.1:80"]);
        let first = plan(&base, &base, &Running::default(), &served, &l7);
        let running = carried_out(&Running::default(), &first, &base);
        let changes = [
            // added at the end, in the middle, removed, reordered, re-weighted, both pools
            (
                svc.clone()
                    + &a(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"])
                    + &b(&["10.0.1.1:80"]),
                &["a"][..],
            ),
            (
                svc.clone()
                    + &a(&["10.0.0.1:80", "10.0.0.9:80", "10.0.0.2:80", "10.0.0.3:80"])
                    + &b(&["10.0.1.1:80"]),
                &["a"],
            ),
            (
                svc.clone() + &a(&["10.0.0.1:80", "10.0.0.3:80"]) + &b(&["10.0.1.1:80"]),
                &["a"],
            ),
            (
                svc.clone() + &a(&["10.0.0.3:80", "10.0.0.1:80"]) + &b(&["10.0.1.1:80"]),
                &["a"],
            ),
            (weighted, &["a"]),
            (
                svc.clone() + &a(&[]) + &b(&["10.0.1.1:80", "10.0.1.2:80"]),
                &["a", "b"],
            ),
            (
                svc.clone()
                    + &a(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
                    + &b(&["10.0.1.2:80"]),
                &["b"],
            ),
        ];
        for (text, pools) in &changes {
            let new = config(text);
            let whole = plan(&base, &new, &running, &served, &l7);
            let mut expected: Vec<BackendPlan> = whole
                .backends
                .into_iter()
                .filter(|s| !(s.track == TrackStep::Keep && s.checker == CheckerStep::Keep))
                .collect();
            let only = backends_only(&base, &new).expect("a backend-only change");
            assert_eq!(only.pools, *pools, "{text}");
            let mut got = only.steps;
            let order =
                |x: &BackendPlan, y: &BackendPlan| (&x.pool, x.address).cmp(&(&y.pool, y.address));
            expected.sort_by(order);
            got.sort_by(order);
            assert_eq!(got, expected, "{text}");
        }
        // Not backend-only: no change, a pool setting, a service, a new pool.
        assert_eq!(backends_only(&base, &base), None);
        let others = [
            svc.clone()
                + &a(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
                + &pool("b", HEALTH2, &["10.0.1.1:80"]),
            service("s", "127.0.0.1:82", "tcp", "a", "")
                + &service("h", "127.0.0.1:81", "http", "b", "")
                + &a(&["10.0.0.1:80"])
                + &b(&["10.0.1.1:80"]),
            svc.clone()
                + &a(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
                + &b(&["10.0.1.1:80"])
                + &pool("c", "", &["10.0.2.1:80"]),
            svc.clone() + &pool("a", HEALTH2, &["10.0.0.1:80"]) + &b(&["10.0.1.1:80"]),
        ];
        for text in &others {
            assert_eq!(backends_only(&base, &config(text)), None, "{text}");
        }
    }
}
