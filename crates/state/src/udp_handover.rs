//! The UDP flows across a binary upgrade: exported by the old process's serve loops
//! (`fulcrum_proxy::udp`), inherited by the new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One UDP flow as a binary upgrade hands it over: (service address, client, backend).
pub type FlowRecord = (SocketAddr, SocketAddr, SocketAddr);

/// The UDP flows across a binary upgrade (docs/operations.md): the old process exports
/// its flows' backends ([`Self::export`]); the new one sends new flows of those clients to
/// the same backends ([`Self::inherit`]) for a service's idle timeout, whatever the
/// scheduler (`rr` would otherwise start over). Touched by the data path only when a flow
/// opens (a read of a table written once, before the workers start) and, in the serve
/// loops, by a watch that changes only at a handover.
#[derive(Debug)]
pub struct UdpHandover {
    request: tokio::sync::watch::Sender<u64>,
    answers: Mutex<Vec<FlowRecord>>,
    answered: AtomicUsize,
    loops: AtomicUsize,
    inherited: OnceLock<(Instant, InheritedFlows)>,
}

/// (service address, client) -> backend, as handed over.
type InheritedFlows = HashMap<(SocketAddr, SocketAddr), SocketAddr>;

impl Default for UdpHandover {
    fn default() -> Self {
        Self {
            request: tokio::sync::watch::Sender::new(0),
            answers: Mutex::new(Vec::new()),
            answered: AtomicUsize::new(0),
            loops: AtomicUsize::new(0),
            inherited: OnceLock::new(),
        }
    }
}

impl UdpHandover {
    /// Every worker's UDP flows: asks each serve loop and waits (blocking: call it off the
    /// runtime, as the handover thread does) until all answered or `limit` passed.
    pub fn export(&self, limit: Duration) -> Vec<FlowRecord> {
        if let Ok(mut a) = self.answers.lock() {
            a.clear();
        }
        self.answered.store(0, Ordering::SeqCst);
        let want = self.loops.load(Ordering::SeqCst);
        self.request.send_modify(|g| *g += 1);
        let deadline = Instant::now() + limit;
        while self.answered.load(Ordering::SeqCst) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if self.answered.load(Ordering::SeqCst) < want {
            tracing::warn!(
                answered = self.answered.load(Ordering::SeqCst),
                loops = want,
                "handover: not every udp socket listed its flows in time; the others' flows may change backend"
            );
        }
        self.answers
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default()
    }

    /// The new process, before its workers start: the old one's flows.
    pub fn inherit(&self, flows: impl IntoIterator<Item = FlowRecord>) {
        let map = flows
            .into_iter()
            .map(|(listen, client, backend)| ((listen, client), backend))
            .collect();
        let _ = self.inherited.set((Instant::now(), map));
    }

    /// The backend an inherited flow of `client` to `listen` had, while its idle timeout
    /// since the handover has not passed.
    pub fn backend_of(
        &self,
        listen: SocketAddr,
        client: SocketAddr,
        idle: Duration,
    ) -> Option<SocketAddr> {
        let (at, map) = self.inherited.get()?;
        if at.elapsed() > idle {
            return None;
        }
        map.get(&(listen, client)).copied()
    }

    /// A serve loop's answer to an export request: its flows.
    pub fn answer(&self, flows: impl Iterator<Item = FlowRecord>) {
        if let Ok(mut a) = self.answers.lock() {
            a.extend(flows);
        }
        self.answered.fetch_add(1, Ordering::SeqCst);
    }

    /// For a serve loop: changes when a handover asks for the flows.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.request.subscribe()
    }

    /// Counts a serve loop among those [`Self::export`] waits for, while the guard lives.
    pub fn count_loop(&self) -> LoopGuard<'_> {
        self.loops.fetch_add(1, Ordering::SeqCst);
        LoopGuard(&self.loops)
    }
}

/// Counts a serve loop among those [`UdpHandover::export`] waits for.
pub struct LoopGuard<'a>(&'a AtomicUsize);

impl Drop for LoopGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
