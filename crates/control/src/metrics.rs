//! Prometheus / OpenMetrics exposition. A [`Collector`] reads the data path's atomics and the
//! current snapshot at scrape time: the data path never touches a lock or a registry, so a
//! scrape cannot slow it down.
//!
//! Counter descriptors are registered without `_total`; the OpenMetrics encoder appends it,
//! so the samples carry the contract's names (`fulcrum_backend_connections_total`, ...).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fulcrum_core::model::{Backend, BackendState};
use fulcrum_state::snapshot::{PoolRt, Shared, Snapshot};
use fulcrum_state::stats::BackendStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

mod announce;
mod cluster;
pub mod process;

/// Reads everything at scrape time.
#[derive(Debug)]
pub struct FulcrumCollector {
    shared: Arc<Shared>,
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for FulcrumCollector {
    /// One family after another, in the contract's order.
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.shared.snapshot.load();
        // Per backend: one row per (pool, backend).
        let rows: Vec<Row<'_>> = snap
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().zip(&p.stats).map(move |(b, s)| (p, b, s)))
            .collect();
        let addrs: Vec<String> = rows.iter().map(|(_, b, _)| b.address.to_string()).collect();
        encode_backends(&rows, &addrs, &mut enc)?;
        encode_backend_views(&self.shared, &snap, &rows, &addrs, &mut enc)?;
        encode_backend_health(&rows, &addrs, &mut enc)?;
        encode_services(&snap, &mut enc)?;
        encode_dns(&snap, &rows, &addrs, &mut enc)?;
        encode_pools(&self.shared, &snap, &mut enc)?;
        if let Some(l7) = &self.shared.l7 {
            encode_l7(l7.as_ref(), &snap, &mut enc)?;
        }
        encode_discovery(&self.shared, &mut enc)
    }
}

/// A backend of a pool, with its counters.
type Row<'a> = (&'a Arc<PoolRt>, &'a Backend, &'a Arc<BackendStats>);

/// The per-backend families (`addrs`: each row's address, as its label).
fn encode_backends(
    rows: &[Row<'_>],
    addrs: &[String],
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        "fulcrum_backend_up",
        "1 if the backend takes new flows by health (up), else 0",
        None,
        MetricType::Gauge,
    )?;
    for ((p, b, _), a) in rows.iter().zip(addrs) {
        let up = u64::from(b.state == BackendState::Up);
        gauge(up)
            .encode(m.encode_family(&[("pool", p.name.as_str()), ("backend", a.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_backend_connections_active",
        "Open connections (or UDP flows) to the backend",
        None,
        MetricType::Gauge,
    )?;
    for ((p, _, s), a) in rows.iter().zip(addrs) {
        gauge(load(&s.active))
            .encode(m.encode_family(&[("pool", p.name.as_str()), ("backend", a.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_backend_connections",
        "Connections (or UDP flows) opened to the backend",
        None,
        MetricType::Counter,
    )?;
    for ((p, _, s), a) in rows.iter().zip(addrs) {
        ConstCounter::new(load(&s.total))
            .encode(m.encode_family(&[("pool", p.name.as_str()), ("backend", a.as_str())])?)?;
    }
    Ok(())
}

/// What the schedulers believe of each backend.
fn encode_backend_views(
    shared: &Shared,
    snap: &Snapshot,
    rows: &[Row<'_>],
    addrs: &[String],
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let now = shared.now();
    let views: Vec<_> = snap
        .pools
        .iter()
        .flat_map(|p| (0..p.backends.len()).map(move |i| p.view(i, now)))
        .collect();
    let mut m = enc.encode_descriptor(
        "fulcrum_backend_latency_seconds",
        "The response time the scheduler believes (peak_ewma: peak EWMA, on L4 plus the connection term; predictive: forecast)",
        None,
        MetricType::Gauge,
    )?;
    for (((p, _, _), a), v) in rows.iter().zip(addrs).zip(&views) {
        if let Some(l) = v.latency {
            ConstGauge::new(l)
                .encode(m.encode_family(&[("pool", p.name.as_str()), ("backend", a.as_str())])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_backend_scheduler_score",
        "The scheduler's score of the backend, lower wins (least_request, peak_ewma, predictive)",
        None,
        MetricType::Gauge,
    )?;
    for (((p, _, _), a), v) in rows.iter().zip(addrs).zip(&views) {
        if let Some(s) = v.score {
            ConstGauge::new(s)
                .encode(m.encode_family(&[("pool", p.name.as_str()), ("backend", a.as_str())])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_backend_effective_weight",
        "The weight with slow start applied (0: takes no new flows)",
        None,
        MetricType::Gauge,
    )?;
    for (((p, _, _), a), v) in rows.iter().zip(addrs).zip(&views) {
        ConstGauge::new(v.effective_weight)
            .encode(m.encode_family(&[("pool", p.name.as_str()), ("backend", a.as_str())])?)?;
    }
    Ok(())
}

/// Failures on real traffic and active check durations, per backend.
fn encode_backend_health(
    rows: &[Row<'_>],
    addrs: &[String],
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        "fulcrum_backend_failures",
        "Failures seen on real traffic, by kind",
        None,
        MetricType::Counter,
    )?;
    for ((p, _, s), a) in rows.iter().zip(addrs) {
        for (kind, v) in [
            ("connect_error", &s.connect_failures),
            ("connect_timeout", &s.connect_timeouts),
            ("http_5xx", &s.http_5xx),
        ] {
            ConstCounter::new(load(v)).encode(m.encode_family(&[
                ("pool", p.name.as_str()),
                ("backend", a.as_str()),
                ("kind", kind),
            ])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_health_check_duration_seconds",
        "How long each active health check took (a failed one: until it failed or timed out)",
        None,
        MetricType::Histogram,
    )?;
    for ((p, _, s), a) in rows.iter().zip(addrs) {
        let h = s.health_duration.sample();
        if h.count > 0 {
            Hist(h.sum, h.count, &h.buckets)
                .encode(m.encode_family(&[("pool", p.name.as_str()), ("backend", a.as_str())])?)?;
        }
    }
    Ok(())
}

/// The per-service families.
fn encode_services(
    snap: &Snapshot,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        "fulcrum_service_bytes",
        "Bytes relayed, in = from clients, out = to clients",
        None,
        MetricType::Counter,
    )?;
    for s in &snap.services {
        for (dir, v) in [("in", &s.stats.bytes_in), ("out", &s.stats.bytes_out)] {
            ConstCounter::new(load(v))
                .encode(m.encode_family(&[("service", s.name.as_str()), ("direction", dir)])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_service_connections_active",
        "Open client connections (or UDP flows)",
        None,
        MetricType::Gauge,
    )?;
    for s in &snap.services {
        gauge(load(&s.stats.active)).encode(m.encode_family(&[("service", s.name.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_service_connections",
        "Client connections (or UDP flows) accepted",
        None,
        MetricType::Counter,
    )?;
    for s in &snap.services {
        ConstCounter::new(load(&s.stats.total))
            .encode(m.encode_family(&[("service", s.name.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_service_refused",
        "Clients refused, by reason: max_connections reached, no backend available, rate limited (http 429), bad request (http 400/431), or (TLS passthrough) no valid ClientHello",
        None,
        MetricType::Counter,
    )?;
    for s in &snap.services {
        for (reason, v) in [
            ("max_connections", &s.stats.refused_limit),
            ("no_backend", &s.stats.refused_no_backend),
            ("bad_client_hello", &s.stats.refused_bad_hello),
            ("rate_limited", &s.stats.refused_rate_limited),
            ("bad_request", &s.stats.refused_bad_request),
        ] {
            ConstCounter::new(load(v))
                .encode(m.encode_family(&[("service", s.name.as_str()), ("reason", reason)])?)?;
        }
    }
    Ok(())
}

/// The dns services' families.
fn encode_dns(
    snap: &Snapshot,
    rows: &[Row<'_>],
    addrs: &[String],
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        "fulcrum_dns_queries",
        "dns services: queries by question type and response code (rcode \"dropped\": no reply)",
        None,
        MetricType::Counter,
    )?;
    for s in snap.services.iter().filter(|s| s.dns.is_some()) {
        for (qtype, rcode, n) in s.stats.dns.nonzero() {
            ConstCounter::new(n).encode(m.encode_family(&[
                ("service", s.name.as_str()),
                ("qtype", qtype),
                ("rcode", rcode),
            ])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_dns_answers",
        "dns services: answers that carried the backend's address",
        None,
        MetricType::Counter,
    )?;
    for ((p, _, s), a) in rows.iter().zip(addrs) {
        let n = load(&s.dns_answers);
        if n > 0 {
            ConstCounter::new(n)
                .encode(m.encode_family(&[("pool", p.name.as_str()), ("backend", a.as_str())])?)?;
        }
    }
    Ok(())
}

/// Reloads and the pools' changes.
fn encode_pools(
    shared: &Shared,
    snap: &Snapshot,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let g = &shared.global;
    let mut m = enc.encode_descriptor(
        "fulcrum_config_reloads",
        "Configuration reloads by result",
        None,
        MetricType::Counter,
    )?;
    for (result, v) in [("ok", &g.reloads_ok), ("error", &g.reloads_error)] {
        ConstCounter::new(load(v)).encode(m.encode_family(&[("result", result)])?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_pool_changes",
        "Changes of a pool's backend set or states",
        None,
        MetricType::Counter,
    )?;
    for p in &snap.pools {
        ConstCounter::new(load(&p.changes))
            .encode(m.encode_family(&[("pool", p.name.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_pool_table_moved_ratio",
        "maglev/ring_hash: share of hash-table slots that changed owner at the pool's last change",
        None,
        MetricType::Gauge,
    )?;
    for p in snap.pools.iter().filter(|p| {
        matches!(
            p.kind,
            fulcrum_core::model::SchedulerKind::Maglev
                | fulcrum_core::model::SchedulerKind::RingHash
        )
    }) {
        ConstGauge::new(p.moved_ratio()).encode(m.encode_family(&[("pool", p.name.as_str())])?)?;
    }
    Ok(())
}

/// Discovery's failed lookups and refused registrations.
fn encode_discovery(
    shared: &Shared,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        "fulcrum_discovery_errors",
        "Failed discovery lookups or backends-file reads (the last good set is kept)",
        None,
        MetricType::Counter,
    )?;
    for (pool, kind, n) in shared.discovery_errors.counts() {
        ConstCounter::new(n)
            .encode(m.encode_family(&[("pool", pool.as_str()), ("kind", kind)])?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_registry_refused",
        "Keys under a pool's [pool.discovery] etcd prefix refused as registrations, by reason",
        None,
        MetricType::Counter,
    )?;
    for (pool, reason, n) in shared.discovery_errors.refusals() {
        ConstCounter::new(n)
            .encode(m.encode_family(&[("pool", pool.as_str()), ("reason", reason)])?)?;
    }
    Ok(())
}

/// The L7 (HTTP) handler's request counters and latency histograms.
fn encode_l7(
    l7: &dyn fulcrum_state::l7::L7Handler,
    snap: &fulcrum_state::snapshot::Snapshot,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut out = fulcrum_state::l7::L7Metrics::default();
    for s in snap.services.iter().filter(|s| s.ext.is_some()) {
        l7.metrics(s, &mut out);
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_http_requests",
        "HTTP requests answered, by backend (none: answered by Fulcrum) and status class",
        None,
        MetricType::Counter,
    )?;
    for r in &out.requests {
        ConstCounter::new(r.value).encode(m.encode_family(&[
            ("service", r.service.as_str()),
            ("pool", r.pool.as_str()),
            ("backend", r.backend.as_str()),
            ("code_class", r.code_class),
        ])?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_http_request_duration_seconds",
        "Time from a request's head to its response's head",
        None,
        MetricType::Histogram,
    )?;
    for d in &out.durations {
        Hist(d.sum, d.count, &d.buckets).encode(
            m.encode_family(&[("service", d.service.as_str()), ("pool", d.pool.as_str())])?,
        )?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_http_backend_response_seconds",
        "Time from a request sent to a backend to its response's head, per backend",
        None,
        MetricType::Histogram,
    )?;
    for d in &out.backend_durations {
        Hist(d.histogram.sum, d.histogram.count, &d.histogram.buckets).encode(m.encode_family(
            &[
                ("service", d.service.as_str()),
                ("pool", d.pool.as_str()),
                ("backend", d.backend.as_str()),
            ],
        )?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_http_parked_connections",
        "Idle HTTP/1.1 keep-alive client connections parked out of their tasks",
        None,
        MetricType::Gauge,
    )?;
    for (service, n) in &out.parked {
        ConstGauge::new(*n).encode(m.encode_family(&[("service", service.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "fulcrum_http_refused",
        "Requests refused by a service's rules (reason: access = allow/deny, 403; auth = basic auth, 401)",
        None,
        MetricType::Counter,
    )?;
    for (service, reason, n) in &out.refused {
        ConstCounter::new(*n)
            .encode(m.encode_family(&[("service", service.as_str()), ("reason", *reason)])?)?;
    }
    Ok(())
}

/// A histogram read at scrape time: the sum (seconds), the count, and the buckets (upper
/// bound, count in this bucket only).
#[derive(Debug)]
struct Hist<'a>(f64, u64, &'a [(f64, u64)]);

impl EncodeMetric for Hist<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0, self.1, self.2, None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The registry with Fulcrum's collector.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(FulcrumCollector {
        shared: Arc::clone(&shared),
    }));
    r.register_collector(Box::new(announce::AnnounceCollector {
        shared: Arc::clone(&shared),
    }));
    r.register_collector(Box::new(cluster::ClusterCollector { shared }));
    r.register_collector(Box::new(process::ProcessCollector::default()));
    r.register_collector(Box::new(process::BuildInfo::default()));
    r
}

/// Encodes the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    if out.is_empty() {
        let _ = writeln!(out, "# EOF");
    }
    Ok(out)
}
