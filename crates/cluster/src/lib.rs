//! The fleet control plane's IO (docs/cluster.md): the shared configuration and the
//! membership in etcd, through the `etcd-client` crate. Every decision (keys, what is
//! shared, merging, which revision to apply, the view of the fleet) is in
//! `fulcrum_core::cluster`; this crate only talks to etcd and to the controller.
//!
//! An instance with `[cluster]` runs one task ([`spawn`]) that, per connection to etcd:
//! 1. grants a lease ([`fulcrum_core::cluster::MEMBER_TTL`]) and keeps it alive;
//! 2. reads everything under the prefix: the members and the newest shared document
//!    (applied if newer than what runs: a reconnection catches up to the latest state and
//!    never replays older ones);
//! 3. publishes its member record under the lease, with its report for the global
//!    controller (each backend's requests, failures and latency) refreshed every
//!    [`fulcrum_core::cluster::REPORT_INTERVAL`];
//! 4. watches the prefix from the revision it read, applying each new document revision
//!    through the controller (`Control::Apply`, the reload path) and following members;
//! 5. publishes its active checks' verdicts and decides the fleet's health table from every
//!    member's (`health`, `Control::FleetHealth`).
//!
//! Any error ends the connection: the instance keeps serving what it runs, says
//! `fulcrum_cluster_connected 0`, and connects again after a backoff.
//!
//! Registered backends: [`register`] is the heartbeat of `fulcrum register`, [`registry`]
//! the watch behind `[pool.discovery] etcd`.

pub mod register;
pub mod registry;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchResponse,
};
use fulcrum_core::cluster::{
    self as core, BackendReport, Backoff, ClusterStatus, Decision, KeyKind, MemberRecord, Refusal,
    Revisions,
};
use fulcrum_core::config::{ClusterConfig, Config};
use fulcrum_state::controller::{ChangeError, ConfigEdit, Control, ControlSender, FleetEdit};
use fulcrum_state::snapshot::Shared;
use tokio::sync::oneshot;

mod health;

/// The etcd client this crate uses (its tests write raw keys with it).
pub use etcd_client;

pub mod controller;

/// A failure to talk to etcd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client failed (connection refused, timeout, a gRPC error).
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd answered, but not as expected.
    #[error("etcd: {0}")]
    Protocol(String),
}

/// How long a request to etcd may take, and how long connecting may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
}

/// Connects to the etcd cluster at `endpoints` (`http://HOST:PORT` each): to one member
/// that answers, trying them in turn from a random one.
///
/// One member at a time rather than the client's balanced channel over all of them: with
/// one member killed, the balanced channel kept sending some requests (and the watch) to
/// it, so a session failed again on every reconnection (the `cluster` test's step "one
/// etcd member killed" failed 3 of 7 runs that way). A session on one member that fails
/// reconnects here, to another.
pub async fn connect(endpoints: &[String]) -> Result<Client, Error> {
    let n = endpoints.len();
    let first = if n > 1 { fastrand::usize(..n) } else { 0 };
    let mut last = None;
    for i in 0..n {
        let endpoint = &endpoints[(first + i) % n];
        match Client::connect([endpoint], Some(options())).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => return Ok(c),
                Err(e) => {
                    tracing::debug!(etcd = %endpoint, error = %e, "etcd member did not answer");
                    last = Some(e);
                }
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(
        || Error::Protocol("no etcd endpoint given".into()),
        Error::Etcd,
    ))
}

/// Writes `document` (the shared part of a checked configuration) as the new revision of
/// the fleet under `prefix`; returns the revision.
pub async fn push(endpoints: &[String], prefix: &str, document: &str) -> Result<i64, Error> {
    let mut c = connect(endpoints).await?;
    let r = c.put(core::config_key(prefix), document, None).await?;
    r.header()
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| Error::Protocol("a put answered without a header".into()))
}

/// The shared document under `prefix` and its revision, if there is one.
pub async fn pull(endpoints: &[String], prefix: &str) -> Result<Option<(i64, Vec<u8>)>, Error> {
    let mut c = connect(endpoints).await?;
    let r = c.get(core::config_key(prefix), None).await?;
    Ok(r.kvs()
        .first()
        .map(|kv| (kv.mod_revision(), kv.value().to_vec())))
}

/// The members under `prefix` (those with a live lease).
pub async fn members(endpoints: &[String], prefix: &str) -> Result<Vec<MemberRecord>, Error> {
    let mut c = connect(endpoints).await?;
    let r = c
        .get(
            core::members_prefix(prefix),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    Ok(r.kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

/// Checks a merged configuration text: the config, or its errors rendered as
/// `fulcrum check` prints them, with `name` as the file name (the binary passes its loader,
/// so a revision is checked exactly as `check` checks a file).
pub type Validate = fn(name: &str, text: &str) -> Result<Config, String>;

/// The shared document running now, if any; the binary's reload (SIGHUP) merges the local
/// file with it.
pub type Running = Arc<Mutex<Option<String>>>;

/// What the cluster task needs.
pub struct Options {
    /// `[cluster]`.
    pub cluster: ClusterConfig,
    /// The member name (`[cluster] member`, else the host name).
    pub member: String,
    /// The admin API address, published in the member record.
    pub address: Option<String>,
    /// The local configuration file.
    pub path: PathBuf,
    /// How a merged text is checked.
    pub validate: Validate,
    /// The shared document running now (written by the task).
    pub running: Running,
}

/// Starts the cluster task on the current runtime.
pub fn spawn(opts: Options, shared: Arc<Shared>, control: ControlSender) {
    tokio::spawn(run(opts, shared, control));
}

/// The task's state across connections.
struct Task {
    opts: Options,
    shared: Arc<Shared>,
    control: ControlSender,
    revisions: Revisions,
    refused: Option<Refusal>,
    latest: i64,
    members: BTreeMap<String, MemberRecord>,
    connected: bool,
    report: Vec<BackendReport>,
    /// The fleet's health view (`P/health/`).
    health: health::FleetHealth,
}

async fn run(opts: Options, shared: Arc<Shared>, control: ControlSender) {
    let health = health::FleetHealth::new(
        opts.cluster.health_quorum,
        opts.member.clone(),
        opts.cluster.prefix.0.clone(),
        Arc::clone(&shared),
        control.clone(),
    );
    let mut t = Task {
        health,
        opts,
        shared,
        control,
        revisions: Revisions::default(),
        refused: None,
        latest: 0,
        members: BTreeMap::new(),
        connected: false,
        report: Vec::new(),
    };
    t.publish();
    let mut backoff = Backoff::default();
    loop {
        if let Err(e) = t.session(&mut backoff).await {
            let was = t.connected;
            t.connected = false;
            t.publish();
            t.health.lost();
            let serving = if t.revisions.applied == 0 {
                "serving the local file's services and pools (no fleet revision applied yet)"
                    .to_owned()
            } else {
                format!(
                    "serving the last applied revision ({})",
                    t.revisions.applied
                )
            };
            let endpoints: Vec<&str> = t.opts.cluster.etcd.iter().map(|e| e.0.as_str()).collect();
            if was {
                tracing::warn!(error = %e, etcd = ?endpoints, "lost etcd; {serving}; reconnecting with backoff");
            } else {
                tracing::warn!(error = %e, etcd = ?endpoints, "cannot reach etcd; {serving}; retrying with backoff");
            }
        }
        if t.control.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next(fastrand::f64())).await;
        t.health.lost();
    }
}

impl Task {
    /// Publishes the view for the admin API and the metrics.
    fn publish(&self) {
        let status = ClusterStatus::build(
            self.opts.member.clone(),
            self.opts.cluster.prefix.0.clone(),
            self.connected,
            self.revisions,
            self.refused.clone(),
            self.latest,
            self.members.values().cloned(),
        );
        self.shared.cluster.store(Some(Arc::new(status)));
    }

    /// This member's record now.
    fn record(&self) -> MemberRecord {
        let snap = self.shared.snapshot.load();
        let announced = self
            .shared
            .announce
            .announced()
            .into_iter()
            .filter(|(_, on)| *on)
            .filter_map(|(name, _)| {
                snap.services
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.listen.ip().to_string())
            })
            .collect();
        MemberRecord {
            member: self.opts.member.clone(),
            address: self.opts.address.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            applied_revision: self.revisions.applied,
            announced,
            refused: self.refused.clone(),
            report: self.report.clone(),
            registry_refused: self.shared.discovery_errors.recent_refusals(),
        }
    }

    /// Each backend's counters now (for the record's report).
    fn report_now(&self) -> Vec<BackendReport> {
        let snap = self.shared.snapshot.load();
        let mut out = Vec::new();
        // Only pools with zones: the controller moves locality weights, nothing else.
        for p in snap
            .pools
            .iter()
            .filter(|p| p.backends.iter().any(|b| b.zone.is_some()))
        {
            for (b, s) in p.backends.iter().zip(&p.stats) {
                out.push(BackendReport {
                    pool: p.name.clone(),
                    address: b.address.to_string(),
                    zone: b.zone.as_ref().map(ToString::to_string),
                    requests: s.total.load(Ordering::Relaxed),
                    failures: s.failures(),
                    latency_us: s.latency_us.load(Ordering::Relaxed),
                    latency_samples: s.latency_samples.load(Ordering::Relaxed),
                });
            }
        }
        out
    }

    async fn put_record(&mut self, c: &mut Client, lease: i64) -> Result<MemberRecord, Error> {
        let rec = self.record();
        let value = serde_json::to_vec(&rec)
            .map_err(|e| Error::Protocol(format!("cannot encode the member record: {e}")))?;
        c.put(
            core::member_key(&self.opts.cluster.prefix.0, &self.opts.member),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
        Ok(rec)
    }

    /// One connection to etcd, until it fails.
    async fn session(&mut self, backoff: &mut Backoff) -> Result<(), Error> {
        let endpoints: Vec<String> = self.opts.cluster.etcd.iter().map(|e| e.0.clone()).collect();
        let prefix = self.opts.cluster.prefix.0.clone();
        let mut c = connect(&endpoints).await?;
        let ttl = i64::try_from(core::MEMBER_TTL.as_secs()).unwrap_or(i64::MAX);
        let lease = c.lease_grant(ttl, None).await?.id();
        let (mut keeper, mut kept) = c.lease_keep_alive(lease).await?;

        // Everything under the prefix, at one revision.
        let all = c
            .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
            .await?;
        let rev = all
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .ok_or_else(|| Error::Protocol("a get answered without a header".into()))?;
        self.members.clear();
        self.health.connected();
        let mut document = None;
        for kv in all.kvs() {
            match core::classify(&prefix, kv.key()) {
                KeyKind::Config => document = Some((kv.mod_revision(), kv.value().to_vec())),
                KeyKind::Member(name) => self.member_put(name, kv.value()),
                KeyKind::Other => {
                    self.health.on_key(kv.key(), Some(kv.value()));
                }
            }
        }
        self.connected = true;
        backoff.reset();
        tracing::info!(
            revision = rev,
            members = self.members.len(),
            "connected to etcd"
        );
        if let Some((r, value)) = document {
            self.latest = r;
            self.consider(r, &value).await;
        }
        let mut published = self.put_record(&mut c, lease).await?;
        self.members
            .insert(self.opts.member.clone(), published.clone());
        self.publish();
        // This member's verdicts, and the table from the views read (its own joins when
        // the watch brings it back, so every instance decides from what etcd holds).
        let mut local_health = self.shared.local_health.subscribe();
        self.health.publish(&mut c, lease).await?;
        self.health.decide();

        let mut watch = c
            .watch(
                format!("{prefix}/"),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1)
                        .with_progress_notify(),
                ),
            )
            .await?;
        let mut tick = tokio::time::interval(core::MEMBER_TTL / 5);
        let mut report_tick = tokio::time::interval(core::REPORT_INTERVAL);
        let mut last_ack = Instant::now();
        loop {
            tokio::select! {
                msg = watch.message() => {
                    let Some(resp) = msg? else {
                        return Err(Error::Protocol("the watch ended".into()));
                    };
                    self.on_watch(&resp).await?;
                }
                ack = kept.message() => {
                    match ack? {
                        Some(a) if a.ttl() > 0 => last_ack = Instant::now(),
                        Some(_) => return Err(Error::Protocol("the member lease expired".into())),
                        None => return Err(Error::Protocol("the lease keep-alive ended".into())),
                    }
                }
                _ = report_tick.tick() => self.report = self.report_now(),
                changed = local_health.changed() => {
                    if changed.is_ok() {
                        self.health.publish(&mut c, lease).await?;
                    }
                }
                _ = tick.tick() => {
                    if last_ack.elapsed() > core::MEMBER_TTL / 2 {
                        return Err(Error::Protocol(format!(
                            "no lease keep-alive answer for {:?}",
                            last_ack.elapsed()
                        )));
                    }
                    keeper.keep_alive().await?;
                }
            }
            // The record changes with an applied or refused revision, or the announced VIPs.
            let now = self.record();
            if now != published {
                published = self.put_record(&mut c, lease).await?;
                self.members
                    .insert(self.opts.member.clone(), published.clone());
                self.publish();
            }
        }
    }

    fn member_put(&mut self, name: &str, value: &[u8]) {
        match serde_json::from_slice::<MemberRecord>(value) {
            Ok(r) => {
                self.members.insert(name.to_owned(), r);
            }
            Err(e) => {
                tracing::warn!(member = name, error = %e, "ignoring a member record that is not valid");
            }
        }
    }

    async fn on_watch(&mut self, resp: &WatchResponse) -> Result<(), Error> {
        if resp.canceled() {
            return Err(Error::Protocol(format!(
                "the watch was cancelled (compacted at {}): {}",
                resp.compact_revision(),
                resp.cancel_reason()
            )));
        }
        let prefix = self.opts.cluster.prefix.0.clone();
        // Of several document revisions in one response only the newest is applied.
        let mut document: Option<(i64, Vec<u8>)> = None;
        let mut health = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            match (core::classify(&prefix, kv.key()), ev.event_type()) {
                (KeyKind::Config, EventType::Put) => {
                    document = Some((kv.mod_revision(), kv.value().to_vec()));
                }
                (KeyKind::Config, EventType::Delete) => {
                    tracing::warn!(
                        revision = kv.mod_revision(),
                        "the shared document was deleted; keeping the running configuration"
                    );
                }
                (KeyKind::Member(name), EventType::Put) => self.member_put(name, kv.value()),
                (KeyKind::Member(name), EventType::Delete) => {
                    self.members.remove(name);
                }
                (KeyKind::Other, t) => {
                    let value = (t == EventType::Put).then(|| kv.value());
                    if self.health.on_key(kv.key(), value) {
                        health = true;
                    } else {
                        tracing::debug!(key = %String::from_utf8_lossy(kv.key()), "ignoring a key under the prefix");
                    }
                }
            }
        }
        if health {
            self.health.decide();
        }
        if let Some((r, value)) = document {
            self.latest = self.latest.max(r);
            self.consider(r, &value).await;
        }
        self.publish();
        Ok(())
    }

    /// Checks and applies revision `rev` of the shared document if it is newer than what
    /// was handled; refuses it (on the member record) if it is not valid.
    async fn consider(&mut self, rev: i64, value: &[u8]) {
        if self.revisions.decide(rev) == Decision::Skip {
            return;
        }
        match self.check_and_apply(rev, value).await {
            Ok(text) => {
                self.revisions.applied = rev;
                self.refused = None;
                *self
                    .opts
                    .running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(text);
                tracing::info!(revision = rev, "applied the fleet's configuration revision");
            }
            Err(error) => {
                self.revisions.refused = rev;
                tracing::error!(
                    revision = rev,
                    "refused the fleet's configuration revision; the running one stays:\n{error}"
                );
                self.refused = Some(Refusal {
                    revision: rev,
                    error,
                });
            }
        }
    }

    async fn check_and_apply(&self, rev: i64, value: &[u8]) -> Result<String, String> {
        let text = core::check_document(value)
            .map_err(|e| e.to_string())?
            .to_owned();
        let path = self.opts.path.clone();
        let validate = self.opts.validate;
        let name = format!(
            "etcd:{}@{rev}",
            core::config_key(&self.opts.cluster.prefix.0)
        );
        let shared_text = text.clone();
        // Reading the local file and checking the merged text (it may name certificate
        // files) happen off this thread.
        let cfg = tokio::task::spawn_blocking(move || {
            let local = std::fs::read_to_string(&path)
                .map_err(|e| format!("{}: cannot read the config file: {e}", path.display()))?;
            let merged = core::merge(&shared_text, &local).map_err(|e| e.to_string())?;
            validate(&name, &merged)
        })
        .await
        .map_err(|e| format!("checking the revision failed: {e}"))??;
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Apply {
                config: Box::new(cfg),
                reply: tx,
            })
            .map_err(|_| "the controller has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the controller has stopped".to_owned())??;
        Ok(text)
    }
}

/// How many times a fleet edit is made again on a newer revision before giving up.
const EDIT_ATTEMPTS: u32 = 20;

/// The admin API's changes on an instance in a fleet ([`FleetEdit`]): read the newest
/// shared document and its revision, merge it with the local file, apply the edit, write
/// the shared part back in a transaction that only succeeds if the document is still at
/// the revision read; when another change came first, do it again on the newer one.
pub struct Editor {
    endpoints: Vec<String>,
    prefix: String,
    path: PathBuf,
    validate: Validate,
}

impl Editor {
    /// An editor for the fleet of `cluster`, with the local file at `path`.
    pub fn new(cluster: &ClusterConfig, path: PathBuf, validate: Validate) -> Self {
        Self {
            endpoints: cluster.etcd.iter().map(|e| e.0.clone()).collect(),
            prefix: cluster.prefix.0.clone(),
            path,
            validate,
        }
    }

    async fn edit_once(
        &self,
        c: &mut Client,
        edit: &ConfigEdit,
    ) -> Result<Option<i64>, ChangeError> {
        let key = core::config_key(&self.prefix);
        let got = c.get(key.clone(), None).await.map_err(unavailable)?;
        let (rev, value) = got.kvs().first().map_or((0, Vec::new()), |kv| {
            (kv.mod_revision(), kv.value().to_vec())
        });
        let path = self.path.clone();
        let validate = self.validate;
        let edit = Arc::clone(edit);
        let name = format!("etcd:{key}@{rev}");
        // Parse, edit and re-check off this thread (as the controller does with edits).
        let document = tokio::task::spawn_blocking(move || {
            let text = core::check_document(&value).map_err(|e| {
                ChangeError::Conflict(format!(
                    "the fleet's newest configuration (revision {rev}) is not valid, so it cannot be edited; push a good one: {e}"
                ))
            })?;
            let local = std::fs::read_to_string(&path).map_err(|e| {
                ChangeError::Conflict(format!("{}: cannot read the config file: {e}", path.display()))
            })?;
            let merged = core::merge(text, &local).map_err(|e| ChangeError::Conflict(e.to_string()))?;
            let running = validate(&name, &merged).map_err(|e| {
                ChangeError::Conflict(format!(
                    "the fleet's newest configuration (revision {rev}) is not valid here, so it cannot be edited; push a good one:\n{e}"
                ))
            })?;
            let new = edit(&running)?;
            let shared: toml::Table = new
                .to_toml_table()
                .into_iter()
                .filter(|(k, _)| core::SHARED_KEYS.contains(&k.as_str()))
                .collect();
            Ok::<_, ChangeError>(fulcrum_core::config::table_to_string(&shared))
        })
        .await
        .map_err(|e| ChangeError::Invalid(format!("the change failed: {e}")))??;
        // A key that does not exist has mod_revision 0, so this also covers the first write.
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, document, None)]);
        let r = c.txn(txn).await.map_err(unavailable)?;
        if !r.succeeded() {
            return Ok(None);
        }
        r.header().map(|h| Some(h.revision())).ok_or_else(|| {
            ChangeError::Unavailable("etcd answered a transaction without a header".into())
        })
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(unavailable)`
fn unavailable(e: etcd_client::Error) -> ChangeError {
    ChangeError::Unavailable(format!(
        "cannot reach etcd to change the fleet's configuration: {e}"
    ))
}

impl FleetEdit for Editor {
    fn edit(
        &self,
        edit: ConfigEdit,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<i64, ChangeError>> + Send + '_>>
    {
        Box::pin(async move {
            let mut c = connect(&self.endpoints).await.map_err(|e| {
                ChangeError::Unavailable(format!(
                    "cannot reach etcd to change the fleet's configuration: {e}"
                ))
            })?;
            for attempt in 1..=EDIT_ATTEMPTS {
                if let Some(rev) = self.edit_once(&mut c, &edit).await? {
                    return Ok(rev);
                }
                tracing::debug!(
                    attempt,
                    "the fleet's configuration changed meanwhile; editing the newer revision"
                );
            }
            Err(ChangeError::Conflict(format!(
                "the fleet's configuration changed under this edit {EDIT_ATTEMPTS} times in a row; try again"
            )))
        })
    }
}
