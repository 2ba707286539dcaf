//! `fulcrum controller`: the global controller (docs/cluster.md "The global controller").
//!
//! Several may run against one fleet; they campaign in an etcd election named
//! `P/controller` (etcd's election API, under a lease of [`LEASE_TTL`]), and only the leader
//! acts. Every interval the leader:
//! 1. reads the members' records (`P/members/`) and turns their reports into the samples
//!    of the interval per pool and zone ([`control::Counters`]), gathered over intervals
//!    until each has enough requests ([`control::Window`]);
//! 2. reads the shared document (`P/config`) and, for each pool with `[pool.locality]
//!    controlled = true`, computes the next weights ([`control::next`]);
//! 3. if any changed, writes the document with the new weights as a new revision, in a
//!    transaction that only succeeds if the document is still at the revision read and this
//!    controller still holds the leadership key.
//!
//! A leader that dies stops renewing its lease: the key goes when the lease expires, and
//! the next controller in line leads (takeover within about [`LEASE_TTL`]). One that is
//! stopped (SIGTERM) resigns at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaderKey, ResignOptions, Txn, TxnOp,
};
use fulcrum_core::cluster::{self as core, Backoff, MemberRecord};
use fulcrum_core::locality::control::{self, Counters, Move, Policy, Window};
use fulcrum_core::model::Zone;
use tokio::sync::watch;

use crate::Error;

/// The controller's lease: how long a dead leader holds the leadership.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// The election's name under a prefix.
pub fn election_key(prefix: &str) -> String {
    format!("{prefix}/controller")
}

/// What the controller needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// The fleet's prefix.
    pub prefix: String,
    /// This controller's name (the election value).
    pub name: String,
    /// Time between rounds.
    pub interval: Duration,
    /// The policy.
    pub policy: Policy,
}

/// Runs until `stop` says true: campaigns, leads, and connects again after any error.
pub async fn run(opts: Options, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            r = session(&opts, &mut backoff, stop.clone()) => match r {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "controller: lost etcd or the leadership; campaigning again"),
            },
            () = flag(&mut stop) => return,
        }
        tokio::time::sleep(backoff.next(fastrand::f64())).await;
    }
}

/// One connection: campaign, then lead until an error or `stop`.
async fn session(
    opts: &Options,
    backoff: &mut Backoff,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut c = crate::connect(&opts.endpoints).await?;
    // The campaign waits as long as another leads: a client without a request timeout.
    let mut ec = Client::connect(
        &opts.endpoints,
        Some(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
                .with_keep_alive_while_idle(true),
        ),
    )
    .await?;
    let ttl = i64::try_from(LEASE_TTL.as_secs()).unwrap_or(3);
    let lease = c.lease_grant(ttl, None).await?.id();
    let (lost_tx, mut lost) = watch::channel(false);
    let keeper = tokio::spawn(keep_alive(c.clone(), lease, lost_tx));
    let result = async {
        backoff.reset();
        tracing::info!(name = %opts.name, "controller: campaigning");
        let leader = tokio::select! {
            r = ec.campaign(election_key(&opts.prefix), opts.name.clone(), lease) => r?,
            () = flag(&mut lost) => return Err(Error::Protocol("the controller lease was lost".into())),
            () = flag(&mut stop) => return Ok(()),
        };
        let key = leader
            .leader()
            .cloned()
            .ok_or_else(|| Error::Protocol("a campaign answered without a leader key".into()))?;
        tracing::info!(name = %opts.name, "controller: leading");
        let led = lead(opts, &mut c, &key, &mut lost, &mut stop).await;
        // Stopped or failed: hand over now rather than when the lease expires.
        let _ = ec
            .resign(Some(ResignOptions::new().with_leader(key)))
            .await;
        led
    }
    .await;
    keeper.abort();
    let _ = c.lease_revoke(lease).await;
    result
}

/// Keeps the lease alive; says `true` on `lost` when it cannot.
async fn keep_alive(mut c: Client, lease: i64, lost: watch::Sender<bool>) {
    let Ok((mut keeper, mut acks)) = c.lease_keep_alive(lease).await else {
        let _ = lost.send(true);
        return;
    };
    loop {
        let ok = keeper.keep_alive().await.is_ok()
            && matches!(
                tokio::time::timeout(LEASE_TTL / 2, acks.message()).await,
                Ok(Ok(Some(a))) if a.ttl() > 0
            );
        if !ok {
            let _ = lost.send(true);
            return;
        }
        tokio::time::sleep(LEASE_TTL / 3).await;
    }
}

async fn lead(
    opts: &Options,
    c: &mut Client,
    key: &LeaderKey,
    lost: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut counters = (Counters::default(), Window::default());
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => round(opts, c, key, &mut counters).await?,
            () = flag(lost) => return Err(Error::Protocol("the controller lease was lost".into())),
            () = flag(stop) => return Ok(()),
        }
    }
}

/// One round: read the reports and the document, write new weights if they move.
async fn round(
    opts: &Options,
    c: &mut Client,
    key: &LeaderKey,
    counters: &mut (Counters, Window),
) -> Result<(), Error> {
    let started = Instant::now();
    let r = c
        .get(
            core::members_prefix(&opts.prefix),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let members: Vec<MemberRecord> = r
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    let samples = counters
        .1
        .take(counters.0.advance(&members), opts.policy.min_requests);
    let config_key = core::config_key(&opts.prefix);
    let r = c.get(config_key.clone(), None).await?;
    let Some(kv) = r.kvs().first() else {
        return Ok(());
    };
    let rev = kv.mod_revision();
    let Ok(doc) = std::str::from_utf8(kv.value()).map(str::to_owned) else {
        tracing::warn!(
            revision = rev,
            "controller: the shared document is not UTF-8"
        );
        return Ok(());
    };
    let pools = match control::controlled(&doc) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                revision = rev,
                "controller: the shared document does not check:\n{e}"
            );
            return Ok(());
        }
    };
    let Some(doc) = reweigh(doc, pools, &samples, &opts.policy) else {
        return Ok(());
    };
    let txn = Txn::new()
        .when(vec![
            Compare::mod_revision(config_key.clone(), CompareOp::Equal, rev),
            Compare::create_revision(key.key().to_vec(), CompareOp::Greater, 0),
        ])
        .and_then(vec![TxnOp::put(config_key, doc, None)]);
    let r = c.txn(txn).await?;
    if r.succeeded() {
        let new = r.header().map_or(0, etcd_client::ResponseHeader::revision);
        tracing::info!(
            revision = new,
            took = ?started.elapsed(),
            "controller: wrote new locality weights"
        );
    } else {
        tracing::info!(
            "controller: the document changed or the leadership moved meanwhile; next round"
        );
    }
    Ok(())
}

/// The document with each controlled pool's next weights, if any moved (and logs each move).
fn reweigh(
    mut doc: String,
    pools: Vec<(String, control::ZoneWeights)>,
    samples: &BTreeMap<(String, Zone), control::Sample>,
    policy: &Policy,
) -> Option<String> {
    let mut changed = false;
    for (pool, weights) in pools {
        let zone_samples: BTreeMap<Zone, control::Sample> = samples
            .iter()
            .filter(|((p, _), _)| *p == pool)
            .map(|((_, z), s)| (z.clone(), *s))
            .collect();
        let decisions = control::next(&weights, &zone_samples, policy);
        let next: BTreeMap<Zone, u32> = decisions.iter().map(|d| (d.zone.clone(), d.to)).collect();
        for d in decisions
            .iter()
            .filter(|d| d.from != d.to || d.why == Move::Down)
        {
            let s = zone_samples.get(&d.zone).copied().unwrap_or_default();
            tracing::info!(
                pool = %pool,
                zone = %d.zone,
                from = d.from,
                to = d.to,
                why = ?d.why,
                requests = s.requests,
                failures = s.failures,
                mean_latency = ?s.mean(),
                "controller: zone weight"
            );
        }
        if next != weights {
            match control::set_weights(&doc, &pool, &next) {
                Ok(d) => {
                    doc = d;
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(pool = %pool, error = %e, "controller: cannot set weights");
                }
            }
        }
    }
    changed.then_some(doc)
}

/// Until the flag says true (or its sender is gone).
async fn flag(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
