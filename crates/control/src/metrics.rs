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
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
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

/// One family: its descriptor, then one sample per `(labels, value)` of `samples`.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    (name, help, kind): (&str, &str, MetricType),
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The labels of a per-backend sample.
fn backend<'a>(p: &'a PoolRt, address: &'a str) -> [(&'static str, &'a str); 2] {
    [("pool", p.name.as_str()), ("backend", address)]
}

/// The per-backend families (`addrs`: each row's address, as its label).
fn encode_backends(
    rows: &[Row<'_>],
    addrs: &[String],
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let rows = || rows.iter().zip(addrs);
    family(
        enc,
        (
            "fulcrum_backend_up",
            "1 if the backend takes new flows by health (up), else 0",
            MetricType::Gauge,
        ),
        rows().map(|((p, b, _), a)| (backend(p, a), gauge(u64::from(b.state == BackendState::Up)))),
    )?;
    family(
        enc,
        (
            "fulcrum_backend_connections_active",
            "Open connections (or UDP flows) to the backend",
            MetricType::Gauge,
        ),
        rows().map(|((p, _, s), a)| (backend(p, a), gauge(load(&s.active)))),
    )?;
    family(
        enc,
        (
            "fulcrum_backend_connections",
            "Connections (or UDP flows) opened to the backend",
            MetricType::Counter,
        ),
        rows().map(|((p, _, s), a)| (backend(p, a), ConstCounter::new(load(&s.total)))),
    )
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
    let rows = || rows.iter().zip(addrs).zip(&views);
    family(
        enc,
        (
            "fulcrum_backend_latency_seconds",
            "The response time the scheduler believes (peak_ewma: peak EWMA, on L4 plus the connection term; predictive: forecast)",
            MetricType::Gauge,
        ),
        rows().filter_map(|(((p, _, _), a), v)| Some((backend(p, a), ConstGauge::new(v.latency?)))),
    )?;
    family(
        enc,
        (
            "fulcrum_backend_scheduler_score",
            "The scheduler's score of the backend, lower wins (least_request, peak_ewma, predictive)",
            MetricType::Gauge,
        ),
        rows().filter_map(|(((p, _, _), a), v)| Some((backend(p, a), ConstGauge::new(v.score?)))),
    )?;
    family(
        enc,
        (
            "fulcrum_backend_effective_weight",
            "The weight with slow start applied (0: takes no new flows)",
            MetricType::Gauge,
        ),
        rows().map(|(((p, _, _), a), v)| (backend(p, a), ConstGauge::new(v.effective_weight))),
    )
}

/// Failures on real traffic and active check durations, per backend.
fn encode_backend_health(
    rows: &[Row<'_>],
    addrs: &[String],
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let durations: Vec<_> = rows
        .iter()
        .zip(addrs)
        .map(|((p, _, s), a)| (backend(p, a), s.health_duration.sample()))
        .filter(|(_, h)| h.count > 0)
        .collect();
    family(
        enc,
        (
            "fulcrum_backend_failures",
            "Failures seen on real traffic, by kind",
            MetricType::Counter,
        ),
        rows.iter().zip(addrs).flat_map(|((p, _, s), a)| {
            [
                ("connect_error", &s.connect_failures),
                ("connect_timeout", &s.connect_timeouts),
                ("http_5xx", &s.http_5xx),
            ]
            .map(|(kind, v)| {
                let [pool, addr] = backend(p, a);
                ([pool, addr, ("kind", kind)], ConstCounter::new(load(v)))
            })
        }),
    )?;
    family(
        enc,
        (
            "fulcrum_health_check_duration_seconds",
            "How long each active health check took (a failed one: until it failed or timed out)",
            MetricType::Histogram,
        ),
        durations
            .iter()
            .map(|(labels, h)| (*labels, Hist(h.sum, h.count, &h.buckets))),
    )
}

/// The per-service families.
fn encode_services(
    snap: &Snapshot,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let services = || snap.services.iter();
    family(
        enc,
        (
            "fulcrum_service_bytes",
            "Bytes relayed, in = from clients, out = to clients",
            MetricType::Counter,
        ),
        services().flat_map(|s| {
            [("in", &s.stats.bytes_in), ("out", &s.stats.bytes_out)].map(|(dir, v)| {
                (
                    [("service", s.name.as_str()), ("direction", dir)],
                    ConstCounter::new(load(v)),
                )
            })
        }),
    )?;
    family(
        enc,
        (
            "fulcrum_service_connections_active",
            "Open client connections (or UDP flows)",
            MetricType::Gauge,
        ),
        services().map(|s| ([("service", s.name.as_str())], gauge(load(&s.stats.active)))),
    )?;
    family(
        enc,
        (
            "fulcrum_service_connections",
            "Client connections (or UDP flows) accepted",
            MetricType::Counter,
        ),
        services().map(|s| {
            (
                [("service", s.name.as_str())],
                ConstCounter::new(load(&s.stats.total)),
            )
        }),
    )?;
    family(
        enc,
        (
            "fulcrum_service_refused",
            "Clients refused, by reason: max_connections reached, no backend available, rate limited (http 429), bad request (http 400/431), or (TLS passthrough) no valid ClientHello",
            MetricType::Counter,
        ),
        services().flat_map(|s| {
            [
                ("max_connections", &s.stats.refused_limit),
                ("no_backend", &s.stats.refused_no_backend),
                ("bad_client_hello", &s.stats.refused_bad_hello),
                ("rate_limited", &s.stats.refused_rate_limited),
                ("bad_request", &s.stats.refused_bad_request),
            ]
            .map(|(reason, v)| {
                (
                    [("service", s.name.as_str()), ("reason", reason)],
                    ConstCounter::new(load(v)),
                )
            })
        }),
    )
}

/// The dns services' families.
fn encode_dns(
    snap: &Snapshot,
    rows: &[Row<'_>],
    addrs: &[String],
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let dns = snap.services.iter().filter(|s| s.dns.is_some());
    family(
        enc,
        (
            "fulcrum_dns_queries",
            "dns services: queries by question type and response code (rcode \"dropped\": no reply)",
            MetricType::Counter,
        ),
        dns.flat_map(|s| {
            s.stats.dns.nonzero().map(|(qtype, rcode, n)| {
                (
                    [("service", s.name.as_str()), ("qtype", qtype), ("rcode", rcode)],
                    ConstCounter::new(n),
                )
            })
        }),
    )?;
    family(
        enc,
        (
            "fulcrum_dns_answers",
            "dns services: answers that carried the backend's address",
            MetricType::Counter,
        ),
        rows.iter()
            .zip(addrs)
            .map(|((p, _, s), a)| (backend(p, a), load(&s.dns_answers)))
            .filter(|(_, n)| *n > 0)
            .map(|(labels, n)| (labels, ConstCounter::new(n))),
    )
}

/// Reloads and the pools' changes.
fn encode_pools(
    shared: &Shared,
    snap: &Snapshot,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let g = &shared.global;
    family(
        enc,
        (
            "fulcrum_config_reloads",
            "Configuration reloads by result",
            MetricType::Counter,
        ),
        [("ok", &g.reloads_ok), ("error", &g.reloads_error)]
            .map(|(result, v)| ([("result", result)], ConstCounter::new(load(v)))),
    )?;
    family(
        enc,
        (
            "fulcrum_pool_changes",
            "Changes of a pool's backend set or states",
            MetricType::Counter,
        ),
        snap.pools.iter().map(|p| {
            (
                [("pool", p.name.as_str())],
                ConstCounter::new(load(&p.changes)),
            )
        }),
    )?;
    let hashing = snap.pools.iter().filter(|p| {
        matches!(
            p.kind,
            fulcrum_core::model::SchedulerKind::Maglev
                | fulcrum_core::model::SchedulerKind::RingHash
        )
    });
    family(
        enc,
        (
            "fulcrum_pool_table_moved_ratio",
            "maglev/ring_hash: share of hash-table slots that changed owner at the pool's last change",
            MetricType::Gauge,
        ),
        hashing.map(|p| ([("pool", p.name.as_str())], ConstGauge::new(p.moved_ratio()))),
    )
}

/// Discovery's failed lookups and refused registrations.
fn encode_discovery(
    shared: &Shared,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    family(
        enc,
        (
            "fulcrum_discovery_errors",
            "Failed discovery lookups or backends-file reads (the last good set is kept)",
            MetricType::Counter,
        ),
        per_pool("kind", &shared.discovery_errors.counts()),
    )?;
    family(
        enc,
        (
            "fulcrum_registry_refused",
            "Keys under a pool's [pool.discovery] etcd prefix refused as registrations, by reason",
            MetricType::Counter,
        ),
        per_pool("reason", &shared.discovery_errors.refusals()),
    )
}

/// Counters of `(pool, value of label, count)` rows.
fn per_pool<'a>(
    label: &'static str,
    rows: &'a [(String, &'static str, u64)],
) -> impl Iterator<Item = ([(&'static str, &'a str); 2], ConstCounter)> + 'a {
    rows.iter().map(move |(pool, v, n)| {
        (
            [("pool", pool.as_str()), (label, *v)],
            ConstCounter::new(*n),
        )
    })
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
    family(
        enc,
        (
            "fulcrum_http_requests",
            "HTTP requests answered, by backend (none: answered by Fulcrum) and status class",
            MetricType::Counter,
        ),
        out.requests.iter().map(|r| {
            (
                [
                    ("service", r.service.as_str()),
                    ("pool", r.pool.as_str()),
                    ("backend", r.backend.as_str()),
                    ("code_class", r.code_class),
                ],
                ConstCounter::new(r.value),
            )
        }),
    )?;
    family(
        enc,
        (
            "fulcrum_http_request_duration_seconds",
            "Time from a request's head to its response's head",
            MetricType::Histogram,
        ),
        out.durations.iter().map(|d| {
            (
                [("service", d.service.as_str()), ("pool", d.pool.as_str())],
                Hist(d.sum, d.count, &d.buckets),
            )
        }),
    )?;
    family(
        enc,
        (
            "fulcrum_http_backend_response_seconds",
            "Time from a request sent to a backend to its response's head, per backend",
            MetricType::Histogram,
        ),
        out.backend_durations.iter().map(|d| {
            let h = &d.histogram;
            (
                [
                    ("service", d.service.as_str()),
                    ("pool", d.pool.as_str()),
                    ("backend", d.backend.as_str()),
                ],
                Hist(h.sum, h.count, &h.buckets),
            )
        }),
    )?;
    family(
        enc,
        (
            "fulcrum_http_parked_connections",
            "Idle HTTP/1.1 keep-alive client connections parked out of their tasks",
            MetricType::Gauge,
        ),
        out.parked
            .iter()
            .map(|(service, n)| ([("service", service.as_str())], ConstGauge::new(*n))),
    )?;
    family(
        enc,
        (
            "fulcrum_http_refused",
            "Requests refused by a service's rules (reason: access = allow/deny, 403; auth = basic auth, 401)",
            MetricType::Counter,
        ),
        out.refused.iter().map(|(service, reason, n)| {
            (
                [("service", service.as_str()), ("reason", *reason)],
                ConstCounter::new(*n),
            )
        }),
    )
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
