//! What the instance tells its BGP speaker (`[announce]`): the per-service inputs of the
//! core's [`should_announce`] read from the running snapshot, the instance drain flag, and
//! what the speaker holds now. The speaker IO itself (bird's control socket, the exabgp
//! API process) lives in the `fulcrum` binary; the admin API and the metrics read this.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use fulcrum_core::announce::{should_announce, Hold, VipInputs};
use fulcrum_core::config::announce::ANNOUNCE_DELAY;
use fulcrum_core::config::SpeakerKind;
use fulcrum_core::model::{BackendState, ForwardMode, Now};

use crate::snapshot::Shared;

/// Announcement state shared by the speaker task, the admin API and the metrics.
#[derive(Debug, Default)]
pub struct AnnounceState {
    /// The configured speaker (`[announce] speaker`), set once at start.
    speaker: OnceLock<SpeakerKind>,
    /// `[announce] announce_delay`, set once at start (the default without `[announce]`).
    delay: OnceLock<Duration>,
    /// The XDP program serving dsr/tunnel/nat services is attached.
    xdp_attached: AtomicBool,
    /// The snapshot generation whose services the XDP maps hold now, plus one (0: none
    /// yet). Set by the XDP sync task after it wrote the maps.
    xdp_applied: AtomicU64,
    /// Per service: the hold-down of its announcement (the core's [`Hold`]).
    holds: Mutex<BTreeMap<String, HoldState>>,
    /// The instance is drained (`fulcrum ctl instance drain`, or SIGTERM's withdraw phase):
    /// every VIP is withdrawn; established connections keep being served.
    drained: AtomicBool,
    /// SIGTERM came: drained for good (undrain is refused).
    stopping: AtomicBool,
    /// Per service: whether the speaker holds its VIP now (bird: confirmed by bird;
    /// exabgp: what `fulcrum announce` is told).
    announced: Mutex<BTreeMap<String, bool>>,
}

/// One backend as the hold-down compares it: address, state, weight, settled.
type BackendView = (SocketAddr, BackendState, u32, bool);

/// What the hold-down remembers of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HoldState {
    /// Its health as last seen: serving, draining, and every backend's state and weight.
    view: (bool, bool, Vec<BackendView>),
    /// When `view` last changed.
    since: Now,
    /// The last decision.
    announced: bool,
}

/// One service's announcement, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipStatus {
    /// The service name.
    pub service: String,
    /// The VIP (the listen address's IP).
    pub vip: IpAddr,
    /// Its listener is bound, or its XDP program is attached and its maps hold the
    /// running snapshot.
    pub serving: bool,
    /// Backends of its default pool that can take new flows.
    pub backends_up: usize,
    /// The decision: it should be announced now.
    pub announce: bool,
}

impl AnnounceState {
    /// Records the configured speaker (the first call wins).
    pub fn set_speaker(&self, kind: SpeakerKind) {
        let _ = self.speaker.set(kind);
    }

    /// The configured speaker, if any.
    pub fn speaker(&self) -> Option<SpeakerKind> {
        self.speaker.get().copied()
    }

    /// Records `[announce] announce_delay` (the first call wins).
    pub fn set_delay(&self, delay: Duration) {
        let _ = self.delay.set(delay);
    }

    /// `[announce] announce_delay` (its default until set).
    pub fn delay(&self) -> Duration {
        self.delay.get().copied().unwrap_or(ANNOUNCE_DELAY)
    }

    /// Records that the XDP maps now hold the services of snapshot `generation`.
    pub fn set_xdp_applied(&self, generation: u64) {
        self.xdp_applied
            .store(generation.saturating_add(1), Ordering::Release);
    }

    /// Whether the XDP maps hold the services of snapshot `generation`.
    pub fn xdp_applied(&self, generation: u64) -> bool {
        self.xdp_applied.load(Ordering::Acquire) == generation.saturating_add(1)
    }

    /// Records that the XDP program is attached (or detached).
    pub fn set_xdp_attached(&self, attached: bool) {
        self.xdp_attached.store(attached, Ordering::Release);
    }

    /// Drains (`true`) or undrains the instance.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Release);
    }

    /// SIGTERM's first step: drained, and undrain refused from now on.
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.set_drained(true);
    }

    /// Whether the instance is stopping (see [`AnnounceState::begin_stopping`]).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Whether the instance is drained (see [`AnnounceState::set_drained`]).
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    /// Records what the speaker holds now, per service (replacing the previous record).
    pub fn set_announced(&self, announced: BTreeMap<String, bool>) {
        if let Ok(mut a) = self.announced.lock() {
            *a = announced;
        }
    }

    /// What the speaker holds now, per service.
    pub fn announced(&self) -> BTreeMap<String, bool> {
        self.announced.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// Every service's announcement decision from the running snapshot, in snapshot order.
/// Also advances each service's hold-down (the speaker tasks call this every 100 ms).
pub fn desired(shared: &Shared) -> Vec<VipStatus> {
    let snap = shared.snapshot.load();
    let draining = shared.is_draining() || shared.announce.is_drained();
    let xdp = shared.announce.xdp_attached.load(Ordering::Acquire);
    let xdp_applied = shared.announce.xdp_applied(snap.generation);
    let delay = shared.announce.delay();
    let now = shared.now();
    // a panic elsewhere while holding it leaves a map that is still whole
    let mut holds = shared
        .announce
        .holds
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    holds.retain(|name, _| snap.services.iter().any(|s| &s.name == name));
    snap.services
        .iter()
        .map(|s| {
            // A service in the snapshot has its listener bound (the controller binds before
            // it swaps a snapshot in, and unbinds only at shutdown, which drains); the packet
            // data plane serves the others once its maps hold this snapshot.
            let (serving, applied) = match s.forward {
                ForwardMode::Proxy => (!shared.is_draining(), true),
                ForwardMode::Dsr | ForwardMode::Tunnel | ForwardMode::Nat => (xdp, xdp_applied),
            };
            let backends = &s.pool.backends;
            let backends_up = backends.iter().filter(|b| b.is_eligible()).count();
            let settled: Vec<bool> = (0..backends.len())
                .map(|i| {
                    s.pool
                        .stats
                        .get(i)
                        .is_none_or(|st| st.settled.load(Ordering::Acquire))
                })
                .collect();
            let backends_unsettled = settled.iter().filter(|&&ok| !ok).count();
            let view = (
                serving,
                draining,
                backends
                    .iter()
                    .zip(&settled)
                    .map(|(b, &ok)| (b.address, b.state, b.weight.get(), ok))
                    .collect(),
            );
            let h = holds.entry(s.name.clone()).or_insert_with(|| HoldState {
                view: view.clone(),
                since: now,
                announced: false,
            });
            if h.view != view {
                h.view = view;
                h.since = now;
            }
            let inputs = VipInputs {
                serving,
                applied,
                backends_up,
                backends_unsettled,
                instance_draining: draining,
            };
            let announce = should_announce(
                inputs,
                Hold {
                    announced: h.announced,
                    since: h.since,
                    delay,
                },
                now,
            );
            h.announced = announce;
            VipStatus {
                service: s.name.clone(),
                vip: s.listen.ip(),
                serving: serving && applied,
                backends_up,
                announce,
            }
        })
        .collect()
}
