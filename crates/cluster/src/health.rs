//! One health view for the fleet (docs/cluster.md, "One health view"): this instance's
//! active checks' verdicts are published under `P/health/NAME` (attached to the member's
//! lease, so they leave with it); every member's views are followed through the same watch
//! as the rest of the prefix, and each change decides the fleet's table with
//! [`fulcrum_core::fleet_health::decide`] and hands its decisions to the controller
//! (`Control::FleetHealth`). The decision is in core; this module only moves views.
//!
//! When etcd is lost, the last table is held for [`HOLD`] (a reconnection, as when one etcd
//! member dies, changes nothing), then the instance's own checks decide again until it is
//! back: with no view of the others, a backend that dies meanwhile must still leave.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use etcd_client::{Client, PutOptions};
use fulcrum_core::cluster::MEMBER_TTL;
use fulcrum_core::config::HealthQuorum;
use fulcrum_core::fleet_health::{self as core, FleetHealthStatus, HealthView, Verdicts};
use fulcrum_state::controller::{Control, ControlSender, FleetDecisions};
use fulcrum_state::snapshot::Shared;

use crate::Error;

/// How long the last fleet table is kept after etcd is lost.
pub const HOLD: std::time::Duration = MEMBER_TTL;

/// Where the table comes from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Decided from the members' views.
    Fleet,
    /// etcd lost: the last fleet table, kept for [`HOLD`].
    Held,
    /// No fleet view: this instance's own checks.
    Local,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fleet => "fleet",
            Self::Held => "held",
            Self::Local => "local",
        }
    }
}

/// The task's health state across connections.
pub(crate) struct FleetHealth {
    quorum: HealthQuorum,
    member: String,
    prefix: String,
    shared: Arc<Shared>,
    control: ControlSender,
    /// Every member's view as last read, by member name.
    views: BTreeMap<String, HealthView>,
    /// The decisions the controller has (`None`: it decides by its own checks).
    sent: Option<Arc<FleetDecisions>>,
    /// What this member last wrote under its key in this connection.
    published: Option<Vec<u8>>,
    /// Since when etcd is lost, while it is.
    lost: Option<Instant>,
    source: Source,
    /// The last decided table (for the status).
    table: core::FleetTable,
}

impl FleetHealth {
    pub(crate) fn new(
        quorum: HealthQuorum,
        member: String,
        prefix: String,
        shared: Arc<Shared>,
        control: ControlSender,
    ) -> Self {
        let h = Self {
            quorum,
            member,
            prefix,
            shared,
            control,
            views: BTreeMap::new(),
            sent: None,
            published: None,
            lost: None,
            source: Source::Local,
            table: core::FleetTable::default(),
        };
        h.status();
        h
    }

    /// A new connection: forget the views (they are read again) and what was published
    /// (the lease is new).
    pub(crate) fn connected(&mut self) {
        self.views.clear();
        self.published = None;
        self.lost = None;
    }

    /// A key under the prefix was put (`value: Some`) or deleted; true if it was a health
    /// view.
    pub(crate) fn on_key(&mut self, key: &[u8], value: Option<&[u8]>) -> bool {
        let Some(name) = core::health_member(&self.prefix, key) else {
            return false;
        };
        match value.map(serde_json::from_slice::<HealthView>) {
            None => {
                self.views.remove(name);
            }
            Some(Ok(mut view)) => {
                // The key names the member, whatever the record says.
                name.clone_into(&mut view.member);
                self.views.insert(name.to_owned(), view);
            }
            Some(Err(e)) => {
                tracing::warn!(member = name, error = %e, "ignoring a health view that is not valid; that member does not vote");
                self.views.remove(name);
            }
        }
        true
    }

    /// Writes this member's verdicts under its lease, if they changed since the last write.
    pub(crate) async fn publish(&mut self, c: &mut Client, lease: i64) -> Result<(), Error> {
        let pools: Verdicts = self.shared.local_health.borrow().as_ref().clone();
        let view = HealthView {
            member: self.member.clone(),
            health_quorum: core::quorum_label(self.quorum),
            pools,
        };
        let value = serde_json::to_vec(&view)
            .map_err(|e| Error::Protocol(format!("cannot encode the health view: {e}")))?;
        if self.published.as_ref() == Some(&value) {
            return Ok(());
        }
        c.put(
            core::health_key(&self.prefix, &self.member),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
        self.published = Some(value);
        Ok(())
    }

    /// Decides the table from the views read and hands it to the controller if its
    /// decisions changed.
    pub(crate) fn decide(&mut self) {
        self.table = core::decide(self.quorum, self.views.values());
        self.source = Source::Fleet;
        let decisions = self.table.decisions();
        if self.sent.as_deref() != Some(&decisions) {
            let d = Arc::new(decisions);
            self.sent = Some(Arc::clone(&d));
            let _ = self.control.send(Control::FleetHealth(Some(d)));
        }
        self.status();
    }

    /// etcd is lost (or still is): holds the table for [`HOLD`], then hands the decision
    /// back to the local checks.
    pub(crate) fn lost(&mut self) {
        let since = *self.lost.get_or_insert_with(Instant::now);
        if since.elapsed() < HOLD {
            if self.source == Source::Fleet {
                self.source = Source::Held;
                self.status();
            }
            return;
        }
        if self.source != Source::Local {
            tracing::warn!(
                held = ?HOLD,
                "etcd lost: backend health is decided by this instance's own checks until it is back"
            );
            self.source = Source::Local;
            self.sent = None;
            self.views.clear();
            self.table = core::FleetTable::default();
            let _ = self.control.send(Control::FleetHealth(None));
            self.status();
        }
    }

    /// Publishes the view for the admin API.
    fn status(&self) {
        let mine = core::quorum_label(self.quorum);
        let quorum_disagreement = self
            .views
            .values()
            .filter(|v| v.health_quorum != mine)
            .map(|v| (v.member.clone(), v.health_quorum.clone()))
            .collect();
        self.shared
            .fleet_health
            .store(Some(Arc::new(FleetHealthStatus {
                health_quorum: mine,
                source: self.source.as_str().to_owned(),
                members: self.views.keys().cloned().collect(),
                quorum_disagreement,
                backends: self.table.backends.values().cloned().collect(),
                // Filled by the admin API from the running state.
                local: Verdicts::new(),
                ejected_locally: Vec::new(),
            })));
    }
}
