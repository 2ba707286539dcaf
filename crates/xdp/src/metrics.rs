//! `fulcrum_xdp_packets_total{service,action}`: the per-CPU counters summed at scrape time.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use crate::maps::{ACTIONS, ACTION_NAMES, MAX_SERVICES};
use crate::plane::StatsView;

/// The label of packets that matched no service.
pub const OTHER: &str = "_other";

/// Reads the counters map at scrape time. Register it beside the main collector:
/// `registry.register_collector(Box::new(plane.collector()))`.
#[derive(Debug)]
pub struct XdpCollector {
    stats: Arc<Mutex<StatsView>>,
}

impl XdpCollector {
    pub(crate) fn new(stats: Arc<Mutex<StatsView>>) -> Self {
        Self { stats }
    }
}

/// (service, action, packets) for every row in use, summed over CPUs.
pub(crate) fn read_counts(stats: &Mutex<StatsView>) -> Vec<(String, &'static str, u64)> {
    let Ok(v) = stats.lock() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for row in 0..=MAX_SERVICES {
        let name = if row == MAX_SERVICES {
            OTHER.to_owned()
        } else {
            match &v.names[row as usize] {
                Some(n) => n.clone(),
                None => continue,
            }
        };
        for (a, action) in ACTION_NAMES.iter().enumerate() {
            let key = row * ACTIONS + a as u32;
            let packets = v
                .map
                .get(&key, 0)
                .map_or(0, |per_cpu| per_cpu.iter().map(|c| c.packets).sum());
            out.push((name.clone(), *action, packets));
        }
    }
    out
}

impl Collector for XdpCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let rows = read_counts(&self.stats);
        let mut m = enc.encode_descriptor(
            "fulcrum_xdp_packets",
            "Packets seen by the XDP data plane, by service and action",
            None,
            MetricType::Counter,
        )?;
        for (service, action, n) in &rows {
            ConstCounter::new(*n)
                .encode(m.encode_family(&[("service", service.as_str()), ("action", *action)])?)?;
        }
        let nat = self.stats.lock().map_or(0, |v| v.nat_flows);
        let g = enc.encode_descriptor(
            "fulcrum_xdp_nat_flows",
            "nat flows tracked (each holds one allocated source port), at the last sweep",
            None,
            MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(i64::try_from(nat).unwrap_or(i64::MAX))
            .encode(g)?;
        Ok(())
    }
}
