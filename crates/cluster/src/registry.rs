//! `[pool.discovery] etcd = "P/POOL/"`: the registered backends of a pool, watched in etcd
//! (docs/cluster.md, "Registered backends"). What a key means is decided by
//! `fulcrum_core::registry`; this module reads, watches and reports.
//!
//! Per connection: read every key under the prefix at one revision, report the set, then
//! watch from the next revision. Watch events are coalesced for [`COALESCE`] after the
//! first one of a burst, so a churn of registrations costs one table rebuild per window,
//! not one per key. A lost connection keeps the last set (a lease cannot expire while
//! etcd is unreachable either) and reconnects with the fleet's backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use fulcrum_core::cluster::Backoff;
use fulcrum_core::config::RegistryPrefix;
use fulcrum_core::model::Backend;
use fulcrum_core::registry;
use fulcrum_state::discovery::{Registry, SetSender};
use tokio::task::JoinHandle;

use crate::{connect, Error};

/// How long watch events are gathered after the first of a burst before the new set is
/// reported (and the pool's tables rebuilt).
pub const COALESCE: Duration = Duration::from_millis(100);

/// The etcd [`Registry`] of an instance with `[cluster]`: watches through its endpoints.
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    endpoints: Vec<String>,
}

impl EtcdRegistry {
    /// Watches through `endpoints` (`[cluster] etcd`).
    pub fn new(endpoints: Vec<String>) -> Self {
        Self { endpoints }
    }
}

impl Registry for EtcdRegistry {
    fn watch(&self, pool: String, prefix: RegistryPrefix, out: SetSender) -> JoinHandle<()> {
        tokio::spawn(run(self.endpoints.clone(), pool, prefix.0, out))
    }
}

/// The registered backends of one pool, by address.
struct Set {
    pool: String,
    prefix: String,
    backends: BTreeMap<SocketAddr, Backend>,
}

impl Set {
    fn put(&mut self, kv: &KeyValue, out: &SetSender) {
        match registry::parse(&self.prefix, kv.key(), kv.value()) {
            Ok(b) => {
                out.cleared(kv.key());
                self.backends.insert(b.address, b);
            }
            Err(e) => {
                out.refused(kv.key(), &e, kv.mod_revision());
                tracing::warn!(
                    pool = self.pool,
                    key = %String::from_utf8_lossy(kv.key()),
                    reason = e.reason(),
                    "discovery: refused a registration: {e}"
                );
                // A key that named a backend and now holds garbage no longer registers it.
                if let Ok(a) = registry::parse_key(&self.prefix, kv.key()) {
                    self.backends.remove(&a);
                }
            }
        }
    }

    fn delete(&mut self, kv: &KeyValue, out: &SetSender) {
        out.cleared(kv.key());
        if let Ok(a) = registry::parse_key(&self.prefix, kv.key()) {
            self.backends.remove(&a);
        }
    }

    fn list(&self) -> Vec<Backend> {
        self.backends.values().cloned().collect()
    }
}

async fn run(endpoints: Vec<String>, pool: String, prefix: String, out: SetSender) {
    let mut backoff = Backoff::default();
    let mut last: Option<Vec<Backend>> = None;
    loop {
        if let Err(e) = session(&endpoints, &pool, &prefix, &out, &mut backoff, &mut last).await {
            out.failed();
            tracing::warn!(pool, prefix, error = %e, "discovery: lost etcd; keeping the last set of registered backends, reconnecting");
        }
        if out.is_closed() {
            out.reset_refused();
            return;
        }
        tokio::time::sleep(backoff.next(fastrand::f64())).await;
    }
}

/// Sends the set if it changed; `false` once nobody listens.
fn report(set: &Set, out: &SetSender, last: &mut Option<Vec<Backend>>) -> bool {
    let now = set.list();
    if last.as_ref() == Some(&now) {
        return true;
    }
    *last = Some(now.clone());
    out.send(now)
}

async fn session(
    endpoints: &[String],
    pool: &str,
    prefix: &str,
    out: &SetSender,
    backoff: &mut Backoff,
    last: &mut Option<Vec<Backend>>,
) -> Result<(), Error> {
    let mut c: Client = connect(endpoints).await?;
    let all = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let rev = all
        .header()
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| Error::Protocol("a get answered without a header".into()))?;
    let mut set = Set {
        pool: pool.to_owned(),
        prefix: prefix.to_owned(),
        backends: BTreeMap::new(),
    };
    out.reset_refused();
    for kv in all.kvs() {
        set.put(kv, out);
    }
    backoff.reset();
    tracing::info!(
        pool,
        prefix,
        revision = rev,
        backends = set.backends.len(),
        "discovery: watching registered backends in etcd"
    );
    if !report(&set, out, last) {
        return Ok(());
    }
    let mut watch = c
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await?;
    loop {
        let Some(resp) = watch.message().await? else {
            return Err(Error::Protocol("the watch ended".into()));
        };
        apply(&mut set, &resp, out)?;
        // Gather the rest of the burst.
        let until = tokio::time::Instant::now() + COALESCE;
        while let Ok(msg) = tokio::time::timeout_at(until, watch.message()).await {
            let Some(resp) = msg? else {
                return Err(Error::Protocol("the watch ended".into()));
            };
            apply(&mut set, &resp, out)?;
        }
        if !report(&set, out, last) {
            return Ok(());
        }
    }
}

fn apply(set: &mut Set, resp: &etcd_client::WatchResponse, out: &SetSender) -> Result<(), Error> {
    if resp.canceled() {
        return Err(Error::Protocol(format!(
            "the watch was cancelled (compacted at {}): {}",
            resp.compact_revision(),
            resp.cancel_reason()
        )));
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        match ev.event_type() {
            EventType::Put => set.put(kv, out),
            EventType::Delete => set.delete(kv, out),
        }
    }
    Ok(())
}
