//! Keeps an `XdpPlane` in step with the controller's snapshot: the same pools, backend
//! states (health checks), reloads and API changes as the proxy.

use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::config::Forwarding;
use fulcrum_core::model::{PrimeTableSize, Proto, ServiceProtocol};
use fulcrum_state::snapshot::{Shared, Snapshot};

use fulcrum_xdp::{Mode, XdpPlane, XdpService};

/// The dsr/tunnel/nat services of `snap` as the data plane needs them. The Maglev table size is
/// the pool's (`maglev_table_size`) when its scheduler is `maglev`, else the default: the
/// data plane always uses Maglev, whatever the pool's scheduler for the proxy.
pub fn services_from_snapshot(snap: &Snapshot) -> Vec<XdpService> {
    snap.services
        .iter()
        .filter_map(|s| {
            let mode = match s.forwarding {
                Forwarding::Dsr => Mode::Dsr,
                Forwarding::Tunnel {
                    encap,
                    source,
                    second_chance,
                } => Mode::Tunnel {
                    kind: encap,
                    source,
                    second_chance,
                },
                Forwarding::Nat { source } => Mode::Nat { source },
                Forwarding::Proxy { .. } => return None,
            };
            let proto = match s.protocol {
                ServiceProtocol::Udp => Proto::Udp,
                _ => Proto::Tcp,
            };
            let table_size = s
                .pool
                .scheduler
                .as_maglev()
                .and_then(|m| PrimeTableSize::new(m.size()))
                .unwrap_or(PrimeTableSize::DEFAULT);
            Some(XdpService {
                name: s.name.clone(),
                vip: s.listen,
                proto,
                mode,
                hash_key: s.pool.hash_key.clone(),
                pool: s.pool.name.clone(),
                backends: s.pool.backends.clone(),
                table_size,
            })
        })
        .collect()
}

/// `BPF_FIB_LKUP_RET_FWD_DISABLED` and `BPF_FIB_LKUP_RET_NO_NEIGH` as `nh_miss` bits.
const MISS_FWD_DISABLED: u32 = 1 << 5;
const MISS_NO_NEIGH: u32 = 1 << 7;

/// The reasons of failed next-hop lookups (`nh_miss` bits), for the log.
pub fn miss_reasons(bits: u32) -> Vec<&'static str> {
    [
        (1, "blackhole route"),
        (2, "unreachable route"),
        (3, "prohibited route"),
        (4, "not forwarded (local or no route)"),
        (5, "forwarding disabled on the interface"),
        (6, "route needs encapsulation"),
        (7, "no neighbour entry yet"),
        (9, "no source address"),
    ]
    .iter()
    .filter(|(b, _)| bits & (1 << b) != 0)
    .map(|(_, r)| *r)
    .collect()
}

/// Logs what a failed next-hop lookup means (at most every 10 s but for the first).
#[derive(Debug, Default)]
struct MissLog {
    last: Option<std::time::Instant>,
}

impl MissLog {
    fn report(&mut self, bits: u32, interface: Option<&str>, services: &[XdpService]) {
        if bits & !MISS_NO_NEIGH == 0 {
            // resolved right away by the managed entries (resolve_next_hops)
            tracing::debug!(
                "a backend's next hop had no neighbour entry: packets dropped while it resolves"
            );
            return;
        }
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        self.last = Some(std::time::Instant::now());
        if bits & MISS_FWD_DISABLED != 0 {
            if let Some(i) = interface {
                if let Err(e) = fulcrum_xdp::host::check_forwarding(i, services) {
                    tracing::error!(error = %e, "packets for VIPs are dropped (no_route)");
                    return;
                }
            }
        }
        tracing::warn!(reasons = ?miss_reasons(bits), "no next hop towards some backends: their packets are dropped (counted as no_route)");
    }
}

/// Resolves the backends' next hops off the runtime (route lookups and rtnetlink).
async fn resolve(plane: &Arc<std::sync::Mutex<XdpPlane>>, unroutable: &mut Vec<std::net::IpAddr>) {
    let p = Arc::clone(plane);
    let r =
        tokio::task::spawn_blocking(move || p.lock().ok().map(|mut p| p.resolve_next_hops())).await;
    match r {
        Ok(Some(Ok(Some(r)))) if r.unroutable != *unroutable => {
            if !r.unroutable.is_empty() {
                tracing::warn!(backends = ?r.unroutable, "no route to these backends: their packets are dropped (no_route)");
            }
            unroutable.clone_from(&r.unroutable);
        }
        Ok(Some(Err(e))) => tracing::warn!(error = %e, "cannot resolve the backends' next hops"),
        _ => {}
    }
}

/// Applies the snapshot now, then again whenever its generation changes (checked every
/// `period`), until the task is dropped. Update errors are logged; the maps keep their
/// last good state. Keeps the backends' next hops resolved (docs/xdp.md, "Next hops"):
/// after every update, every second, and at once when the data path reports a failed
/// lookup.
pub async fn run(plane: Arc<std::sync::Mutex<XdpPlane>>, shared: Arc<Shared>, period: Duration) {
    let mut last = None;
    let mut refreshed = std::time::Instant::now();
    let ttl = Duration::from_nanos(fulcrum_xdp::maps::NH_TTL_NS);
    let mut services = Vec::new();
    let mut miss_log = MissLog::default();
    let mut unroutable = Vec::new();
    loop {
        let mut resolve_now = false;
        let mut missed = 0;
        let mut interface = None;
        if let Ok(mut p) = plane.lock() {
            match p.take_nh_miss() {
                Ok(m) => missed = m,
                Err(e) => tracing::warn!(error = %e, "cannot read nh_miss"),
            }
            interface = p.interface().map(str::to_owned);
        }
        if missed != 0 {
            resolve_now = true;
            miss_log.report(missed, interface.as_deref(), &services);
        }
        if refreshed.elapsed() >= ttl {
            refreshed = std::time::Instant::now();
            resolve_now = true;
            if let Ok(mut p) = plane.lock() {
                // a sweep that released flows has bumped the generation already
                let bumped = match p.sweep_nat() {
                    Ok(s) if s.released > 0 => {
                        tracing::debug!(released = s.released, live = s.live, "nat flows swept");
                        true
                    }
                    Ok(_) => false,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot sweep the nat flows");
                        false
                    }
                };
                if !bumped {
                    if let Err(e) = p.refresh_nexthops() {
                        tracing::warn!(error = %e, "cannot refresh the XDP next hops");
                    }
                }
            }
        }
        let snap = shared.snapshot.load_full();
        if last != Some(snap.generation) {
            last = Some(snap.generation);
            services = services_from_snapshot(&snap);
            if let Some(i) = &interface {
                // a reload or the API may bring backends of another family
                if let Err(e) = fulcrum_xdp::host::check_forwarding(i, &services) {
                    tracing::error!(error = %e, "packets of some services will be dropped (no_route)");
                }
            }
            // writing a changed table is tens of thousands of map updates: off the runtime
            let p = Arc::clone(&plane);
            let n = services.len();
            let update = services.clone();
            let result =
                tokio::task::spawn_blocking(move || p.lock().ok().map(|mut p| p.update(&update)))
                    .await;
            match result {
                Ok(Some(Ok(()))) => {
                    // the announcement may now count this snapshot's backends as served
                    shared.announce.set_xdp_applied(snap.generation);
                    tracing::debug!(
                        generation = snap.generation,
                        services = n,
                        "xdp maps updated"
                    );
                    resolve_now = true;
                }
                Ok(Some(Err(e))) => {
                    tracing::error!(error = %e, "xdp maps update failed; keeping the previous tables");
                }
                Ok(None) | Err(_) => return,
            }
        }
        if resolve_now {
            resolve(&plane, &mut unroutable).await;
        }
        tokio::time::sleep(period).await;
    }
}
