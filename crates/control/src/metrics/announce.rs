//! `fulcrum_vip_announced{service}`: 1 while the BGP speaker holds the service's VIP
//! (bird: confirmed by bird; exabgp: what `fulcrum announce` is told), else 0. Present
//! only with `[announce]`.

use std::sync::Arc;

use fulcrum_state::snapshot::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Reads the announcement state at scrape time.
#[derive(Debug)]
pub struct AnnounceCollector {
    pub(super) shared: Arc<Shared>,
}

impl Collector for AnnounceCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if self.shared.announce.speaker().is_none() {
            return Ok(());
        }
        let held = self.shared.announce.announced();
        let snap = self.shared.snapshot.load();
        let mut m = enc.encode_descriptor(
            "fulcrum_vip_announced",
            "1 while the BGP speaker announces the service's VIP, else 0",
            None,
            MetricType::Gauge,
        )?;
        for s in &snap.services {
            let v = i64::from(held.get(&s.name).copied().unwrap_or(false));
            ConstGauge::new(v).encode(m.encode_family(&[("service", s.name.as_str())])?)?;
        }
        Ok(())
    }
}
