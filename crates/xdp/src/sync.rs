//! Keeps an [`XdpPlane`] in step with the controller's snapshot: the same pools, backend
//! states (health checks), reloads and API changes as the proxy.

use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::config::Forwarding;
use fulcrum_core::model::{PrimeTableSize, Proto, ServiceProtocol};
use fulcrum_proxy::snapshot::{Shared, Snapshot};

use crate::plane::{Mode, XdpPlane, XdpService};

/// The dsr/tunnel/nat services of `snap` as the data plane needs them. The Maglev table size is
/// the pool's (`maglev_table_size`) when its scheduler is `maglev`, else the default: the
/// data plane always uses Maglev, whatever the pool's scheduler for the proxy.
pub fn services_from_snapshot(snap: &Snapshot) -> Vec<XdpService> {
    snap.services
        .iter()
        .filter_map(|s| {
            let mode = match s.forwarding {
                Forwarding::Dsr => Mode::Dsr,
                Forwarding::Tunnel { encap, source } => Mode::Tunnel {
                    kind: encap,
                    source,
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

/// Applies the snapshot now, then again whenever its generation changes (checked every
/// `period`), until the task is dropped. Update errors are logged; the maps keep their
/// last good state.
pub async fn run(plane: Arc<std::sync::Mutex<XdpPlane>>, shared: Arc<Shared>, period: Duration) {
    let mut last = None;
    let mut refreshed = std::time::Instant::now();
    let ttl = Duration::from_nanos(crate::maps::NH_TTL_NS);
    loop {
        if refreshed.elapsed() >= ttl {
            refreshed = std::time::Instant::now();
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
            let services = services_from_snapshot(&snap);
            // writing a changed table is tens of thousands of map updates: off the runtime
            let p = Arc::clone(&plane);
            let n = services.len();
            let result =
                tokio::task::spawn_blocking(move || p.lock().ok().map(|mut p| p.update(&services)))
                    .await;
            match result {
                Ok(Some(Ok(()))) => {
                    tracing::debug!(
                        generation = snap.generation,
                        services = n,
                        "xdp maps updated"
                    );
                }
                Ok(Some(Err(e))) => {
                    tracing::error!(error = %e, "xdp maps update failed; keeping the previous tables");
                }
                Ok(None) | Err(_) => return,
            }
        }
        tokio::time::sleep(period).await;
    }
}
