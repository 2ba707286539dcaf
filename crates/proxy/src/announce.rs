//! What the instance tells its BGP speaker (`[announce]`): the per-service inputs of the
//! core's [`should_announce`] read from the running snapshot, the instance drain flag, and
//! what the speaker holds now. The speaker IO itself (bird's control socket, the exabgp
//! API process) lives in the `fulcrum` binary; the admin API and the metrics read this.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use fulcrum_core::announce::{should_announce, VipInputs};
use fulcrum_core::config::SpeakerKind;
use fulcrum_core::model::ForwardMode;

use crate::snapshot::Shared;

/// Announcement state shared by the speaker task, the admin API and the metrics.
#[derive(Debug, Default)]
pub struct AnnounceState {
    /// The configured speaker (`[announce] speaker`), set once at start.
    speaker: OnceLock<SpeakerKind>,
    /// The XDP program serving dsr/tunnel/nat services is attached.
    xdp_attached: AtomicBool,
    /// The instance is drained (`fulcrum ctl instance drain`, or SIGTERM's withdraw phase):
    /// every VIP is withdrawn; established connections keep being served.
    drained: AtomicBool,
    /// SIGTERM came: drained for good (undrain is refused).
    stopping: AtomicBool,
    /// Per service: whether the speaker holds its VIP now (bird: confirmed by bird;
    /// exabgp: what `fulcrum announce` is told).
    announced: Mutex<BTreeMap<String, bool>>,
}

/// One service's announcement, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipStatus {
    /// The service name.
    pub service: String,
    /// The VIP (the listen address's IP).
    pub vip: IpAddr,
    /// Its listener is bound or its XDP program attached.
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
pub fn desired(shared: &Shared) -> Vec<VipStatus> {
    let snap = shared.snapshot.load();
    let draining = shared.is_draining() || shared.announce.is_drained();
    let xdp = shared.announce.xdp_attached.load(Ordering::Acquire);
    snap.services
        .iter()
        .map(|s| {
            // A service in the snapshot has its listener bound (the controller binds before
            // it swaps a snapshot in, and unbinds only at shutdown, which drains); the packet
            // data plane serves the others.
            let serving = match s.forward {
                ForwardMode::Proxy => !shared.is_draining(),
                ForwardMode::Dsr | ForwardMode::Tunnel | ForwardMode::Nat => xdp,
            };
            let backends_up = s.pool.backends.iter().filter(|b| b.is_eligible()).count();
            VipStatus {
                service: s.name.clone(),
                vip: s.listen.ip(),
                serving,
                backends_up,
                announce: should_announce(VipInputs {
                    serving,
                    backends_up,
                    instance_draining: draining,
                }),
            }
        })
        .collect()
}
