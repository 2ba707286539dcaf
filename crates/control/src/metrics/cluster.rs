//! `fulcrum_cluster_connected`, `fulcrum_cluster_revision`, `fulcrum_cluster_members`: the
//! fleet control plane (`[cluster]`, docs/cluster.md). Present only with `[cluster]`.

use std::sync::Arc;

use fulcrum_state::snapshot::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Reads the cluster task's view at scrape time.
#[derive(Debug)]
pub struct ClusterCollector {
    pub(super) shared: Arc<Shared>,
}

impl Collector for ClusterCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(status) = self.shared.cluster.load_full() else {
            return Ok(());
        };
        let rows: [(&str, &str, i64); 3] = [
            (
                "fulcrum_cluster_connected",
                "1 while the instance is connected to etcd, else 0 (it keeps serving its last applied revision)",
                i64::from(status.connected),
            ),
            (
                "fulcrum_cluster_revision",
                "The etcd revision of the shared configuration this instance runs (0: none yet)",
                status.applied_revision,
            ),
            (
                "fulcrum_cluster_members",
                "Members of the fleet with a live lease, as this instance last saw them",
                i64::try_from(status.members.len()).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, v) in rows {
            let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(m)?;
        }
        Ok(())
    }
}
