//! [`Config::to_toml`]: the configuration written back as a file that [`super::parse`]
//! accepts and turns into the same `Config` (`parse(&c.to_toml()) == Ok(c)`).
//!
//! Values equal to their defaults are left out where the file may omit them, so the text
//! reads like one a user would write. Durations are written as humantime strings
//! (`"5m"`, `"1m 30s"`, `"250ms"`), which the parser reads back exactly.

use std::time::Duration;

use toml::{Table, Value};

use super::{
    defaults, AccessLog, AdminConfig, BackendProtocol, BalancingScheduler, Config, Discovery,
    Forwarding, HashingScheduler, HealthCheck, HealthConfig, HttpService, HttpTimeouts, LogTarget,
    OutlierConfig, PoolConfig, Route, SchedulerConfig, ServiceConfig, ServiceKind, TcpService,
    TunnelKind, XdpConfig,
};
use crate::model;

impl Config {
    /// The configuration as TOML text that [`super::parse`] turns back into `self`.
    pub fn to_toml(&self) -> String {
        let body = table_to_string(&self.to_toml_table());
        format!("# The running configuration of this Fulcrum instance.\n\n{body}")
    }

    /// The configuration as a TOML document (for editing before [`super::parse`]ing it
    /// again, as the admin API does).
    pub fn to_toml_table(&self) -> Table {
        let mut doc = Table::new();
        put_table(&mut doc, "admin", self.admin.as_ref(), admin);
        put_tables(&mut doc, "service", &self.services, service);
        put_tables(&mut doc, "pool", &self.pools, pool);
        put_table(&mut doc, "xdp", self.xdp.as_ref(), xdp);
        put_table(
            &mut doc,
            "announce",
            self.announce.as_ref(),
            super::announce::emit,
        );
        put_table(
            &mut doc,
            "cluster",
            self.cluster.as_ref(),
            super::cluster::emit,
        );
        doc
    }
}

/// Writes a configuration document (as [`Config::to_toml_table`] makes it, perhaps edited)
/// as TOML text. `[service.tls] certs` is written inline (`certs = [{ cert = ..., key = ...
/// }]`), the form the contract documents.
pub fn table_to_string(doc: &Table) -> String {
    let text = toml::to_string(doc).unwrap_or_default();
    let Ok(mut edit) = text.parse::<toml_edit::DocumentMut>() else {
        // `toml` wrote it, so `toml_edit` reads it; were it not so, the sections still parse.
        return text;
    };
    if let Some(services) = edit
        .get_mut("service")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    {
        for sv in services.iter_mut() {
            super::rules::inline_maps(sv);
            if let Some(routes) = sv
                .get_mut("route")
                .and_then(toml_edit::Item::as_array_of_tables_mut)
            {
                routes.iter_mut().for_each(super::rules::inline_maps);
            }
            let Some(tls) = sv.get_mut("tls").and_then(toml_edit::Item::as_table_mut) else {
                continue;
            };
            let Some(certs) = tls.get_mut("certs") else {
                continue;
            };
            if let Some(a) = certs.as_array_of_tables() {
                *certs = toml_edit::value(a.clone().into_array());
                // The key was written as part of `[[service.tls.certs]]`: format it as a key.
                if let Some(mut k) = tls.key_mut("certs") {
                    k.fmt();
                }
            }
            // Its header carries `certs` now.
            tls.set_implicit(false);
        }
    }
    if let Some(pools) = edit
        .get_mut("pool")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    {
        for p in pools.iter_mut() {
            // `weights = { a = 90, b = 10 }`, the form docs/interface.md shows.
            if let Some(l) = p
                .get_mut("locality")
                .and_then(toml_edit::Item::as_table_mut)
            {
                if let Some(w) = l.get_mut("weights") {
                    if let Some(tab) = w.as_table() {
                        *w = toml_edit::value(tab.clone().into_inline_table());
                        // Written as part of a header before: format it as a key.
                        if let Some(mut k) = l.key_mut("weights") {
                            k.fmt();
                        }
                    }
                }
            }
        }
    }
    explicit_headers(edit.as_table_mut());
    edit.to_string()
}

/// `t[key]`: the table `f` makes of `v`, if there is a `v`.
fn put_table<T: ?Sized>(t: &mut Table, key: &str, v: Option<&T>, f: impl FnOnce(&T) -> Table) {
    if let Some(v) = v {
        t.insert(key.into(), Value::Table(f(v)));
    }
}

/// `t[key]`: the array of the tables `f` makes of `vs`, unless `vs` is empty.
fn put_tables<T>(t: &mut Table, key: &str, vs: &[T], f: impl Fn(&T) -> Table) {
    if !vs.is_empty() {
        t.insert(key.into(), tables(vs, f));
    }
}

/// An array of the tables `f` makes of `vs`.
fn tables<T>(vs: &[T], f: impl Fn(&T) -> Table) -> Value {
    Value::Array(vs.iter().map(|v| Value::Table(f(v))).collect())
}

/// Writes a header for every table `toml` left implicit (one holding only sub-tables, as
/// `[pool.locality]` above `[pool.locality.weights]`). An implicit table has no span, and
/// a `Spanned` section without one does not read back ("expected a borrowed string").
fn explicit_headers(t: &mut toml_edit::Table) {
    for (_, item) in t.iter_mut() {
        match item {
            toml_edit::Item::Table(sub) => {
                sub.set_implicit(false);
                explicit_headers(sub);
            }
            toml_edit::Item::ArrayOfTables(a) => a.iter_mut().for_each(explicit_headers),
            _ => {}
        }
    }
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn int(v: impl Into<i64>) -> Value {
    Value::Integer(v.into())
}

/// A table of integer keys.
fn ints<T: Into<i64>, const N: usize>(keys: [(&str, T); N]) -> Table {
    keys.into_iter()
        .map(|(k, v)| (k.to_owned(), int(v)))
        .collect()
}

fn dur(d: Duration) -> Value {
    s(humantime::format_duration(d).to_string())
}

fn path(p: &std::path::Path) -> Value {
    s(p.to_string_lossy())
}

fn admin(a: &AdminConfig) -> Table {
    let mut t = Table::new();
    t.insert("listen".into(), s(a.listen.to_string()));
    if let Some(f) = &a.token_file {
        t.insert("token_file".into(), path(f));
    }
    if a.protect_reads {
        t.insert("protect_reads".into(), Value::Boolean(true));
    }
    t
}

/// One `[[service]]` table (the admin API's `PUT /api/v1/services/{name}` body has the
/// same keys).
pub fn service(sv: &ServiceConfig) -> Table {
    let mut t = Table::new();
    t.insert("name".into(), s(&sv.name));
    t.insert("listen".into(), s(sv.listen.to_string()));
    t.insert("protocol".into(), s(sv.protocol().as_str()));
    t.insert("pool".into(), s(&sv.pool));
    let forward = sv.forward();
    t.insert("forward".into(), s(forward.mode().as_str()));
    forwarding(&mut t, forward);
    if sv.max_connections != model::defaults::MAX_CONNECTIONS {
        t.insert("max_connections".into(), int(sv.max_connections.get()));
    }
    if sv.idle_timeout != model::defaults::IDLE_TIMEOUT {
        t.insert("idle_timeout".into(), dur(sv.idle_timeout));
    }
    if sv.drain_timeout != model::defaults::DRAIN_TIMEOUT {
        t.insert("drain_timeout".into(), dur(sv.drain_timeout));
    }
    put_table(&mut t, "access_log", sv.access_log(), access_log);
    match &sv.kind {
        ServiceKind::Tcp(TcpService::Proxy(p)) => {
            put_tables(&mut t, "sni_route", &p.sni_routes, |r| {
                let mut x = Table::new();
                x.insert("sni".into(), s(r.sni.to_string()));
                x.insert("pool".into(), s(&r.pool));
                x
            });
            if let Some(to) = &p.timeouts {
                let mut x = Table::new();
                x.insert("connect".into(), dur(to.connect));
                t.insert("timeouts".into(), Value::Table(x));
            }
        }
        ServiceKind::Tcp(TcpService::Packet(_)) => {}
        ServiceKind::Udp(u) => {
            if u.max_flows != model::defaults::MAX_FLOWS {
                t.insert("max_flows".into(), int(u.max_flows.get()));
            }
        }
        ServiceKind::Http(h) => http(&mut t, h),
        ServiceKind::Dns(d) => dns(&mut t, d),
    }
    t
}

/// An http service's own keys.
fn http(t: &mut Table, h: &HttpService) {
    put_tables(t, "route", &h.routes, route);
    put_table(t, "tls", h.tls.as_ref(), service_tls);
    put_table(t, "rate_limit", h.rate_limit.as_ref(), |rl| {
        ints([
            ("requests_per_second", rl.requests_per_second.get()),
            ("burst", rl.burst.get()),
        ])
    });
    put_table(t, "timeouts", h.timeouts.as_ref(), timeouts);
    put_table(t, "http2", h.http2.as_ref(), |h2| {
        ints([
            ("max_concurrent_streams", h2.max_concurrent_streams.get()),
            ("max_header_list_size", h2.max_header_list_size.get()),
            ("max_resets_per_second", h2.max_resets_per_second.get()),
            (
                "max_control_frames_per_second",
                h2.max_control_frames_per_second.get(),
            ),
        ])
    });
    put_table(t, "retry", h.retry.as_ref(), |r| {
        ints([("attempts", r.attempts()), ("budget", r.budget_percent())])
    });
    super::rules::emit(&h.rules, t);
    if let Some(d) = &h.dns_service {
        t.insert("dns_service".into(), s(d.clone()));
    }
}

/// `[service.tls]`.
fn service_tls(tls: &super::TlsConfig) -> Table {
    let mut x = Table::new();
    let certs = tables(&tls.certs, |c| {
        let mut p = Table::new();
        p.insert("cert".into(), path(&c.cert));
        p.insert("key".into(), path(&c.key));
        if let Some(o) = &c.ocsp {
            p.insert("ocsp".into(), path(o));
        }
        p
    });
    x.insert("certs".into(), certs);
    if let Some(ca) = &tls.client_auth {
        x.insert("client_ca".into(), path(&ca.ca));
        x.insert("client_auth".into(), s(ca.mode.as_str()));
        x.insert("client_subject_header".into(), s(&ca.subject_header));
        x.insert(
            "client_fingerprint_header".into(),
            s(&ca.fingerprint_header),
        );
    }
    if !tls.session_tickets {
        x.insert("session_tickets".into(), Value::Boolean(false));
    }
    if tls.session_ticket_rotation != super::defaults::SESSION_TICKET_ROTATION {
        x.insert(
            "session_ticket_rotation".into(),
            dur(tls.session_ticket_rotation),
        );
    }
    x
}

/// A dns service's `[service.dns_zone]`, `[[service.dns_name]]` and `[service.dns_rrl]`.
fn dns(t: &mut Table, d: &super::DnsConfig) {
    let mut z = Table::new();
    z.insert("origin".into(), s(&d.origin));
    z.insert("ns".into(), Value::Array(d.ns.iter().map(s).collect()));
    t.insert("dns_zone".into(), Value::Table(z));
    let names = tables(&d.names, |n| {
        let mut x = Table::new();
        x.insert("name".into(), s(&n.name));
        x.insert("pool".into(), s(&n.pool));
        x.insert("ttl".into(), dur(n.ttl));
        x.insert("max_answers".into(), int(n.max_answers.get()));
        x
    });
    t.insert("dns_name".into(), names);
    let rrl = ints([
        (
            "responses_per_second",
            i64::from(d.rrl.responses_per_second.get()),
        ),
        ("slip", i64::from(d.rrl.slip)),
    ]);
    t.insert("dns_rrl".into(), Value::Table(rrl));
}

/// The keys of a service's forwarding mode (`forward` itself is written by the caller).
fn forwarding(t: &mut Table, f: Forwarding) {
    match f {
        Forwarding::Proxy { proxy_protocol } => {
            if let Some(pp) = proxy_protocol {
                t.insert("proxy_protocol".into(), s(pp.as_str()));
            }
        }
        Forwarding::Dsr => {}
        Forwarding::Tunnel {
            encap,
            source,
            second_chance,
        } => {
            t.insert("tunnel".into(), s(encap.as_str()));
            if encap == TunnelKind::Gue && !second_chance {
                t.insert("second_chance".into(), Value::Boolean(false));
            }
            if let Some(ip) = source {
                t.insert("source".into(), s(ip.to_string()));
            }
        }
        Forwarding::Nat { source } => {
            if let Some(ip) = source {
                t.insert("source".into(), s(ip.to_string()));
            }
        }
    }
}

/// An http service's `[service.timeouts]`.
fn timeouts(to: &HttpTimeouts) -> Table {
    let mut x = Table::new();
    x.insert("connect".into(), dur(to.connect));
    x.insert("response".into(), dur(to.response));
    x.insert("request_header".into(), dur(to.request_header));
    x.insert("tls_handshake".into(), dur(to.tls_handshake));
    x
}

fn route(r: &Route) -> Table {
    let mut t = Table::new();
    if let Some(h) = &r.host {
        t.insert("host".into(), s(h.to_string()));
    }
    if let Some(p) = &r.path_prefix {
        t.insert("path_prefix".into(), s(p));
    }
    t.insert("pool".into(), s(&r.pool));
    super::rules::emit(&r.rules, &mut t);
    t
}

fn access_log(al: &AccessLog) -> Table {
    let mut t = Table::new();
    t.insert("format".into(), s(al.format.as_str()));
    match &al.target {
        LogTarget::Stderr => {
            t.insert("path".into(), s("-"));
        }
        LogTarget::File(f) => {
            t.insert("path".into(), path(f));
        }
        LogTarget::Syslog { dest, facility } => {
            t.insert("syslog".into(), s(dest.to_string()));
            t.insert("facility".into(), s(facility.as_str()));
        }
    }
    if let Some(fields) = &al.fields {
        t.insert(
            "fields".into(),
            Value::Array(fields.iter().map(|f| s(f.as_str())).collect()),
        );
    }
    t
}

/// `scheduler` and the options it owns, each written when not its default.
fn scheduler(t: &mut Table, sc: &SchedulerConfig) {
    use crate::sched::option_defaults as d;
    t.insert("scheduler".into(), s(sc.kind().as_str()));
    let mut so = Table::new();
    match sc {
        SchedulerConfig::Hashing { kind, hash_key } => {
            t.insert("hash_key".into(), s(hash_key.to_string()));
            if let HashingScheduler::Maglev { table_size } = kind {
                t.insert("maglev_table_size".into(), int(table_size.get()));
            }
        }
        SchedulerConfig::Balancing { kind, slow_start } => {
            if let Some(d) = slow_start {
                t.insert("slow_start".into(), dur(*d));
            }
            let (half_life, horizon, bias) = match *kind {
                BalancingScheduler::LeastRequest {
                    active_request_bias,
                } => (None, None, Some(active_request_bias)),
                BalancingScheduler::PeakEwma { half_life } => (Some(half_life), None, None),
                BalancingScheduler::Predictive { half_life, horizon } => {
                    (Some(half_life), Some(horizon), None)
                }
                _ => (None, None, None),
            };
            if let Some(hl) = half_life.filter(|v| *v != d::HALF_LIFE) {
                so.insert("half_life".into(), dur(hl));
            }
            if let Some(hz) = horizon.filter(|v| *v != d::HORIZON) {
                so.insert("horizon".into(), dur(hz));
            }
            if let Some(b) = bias.filter(|b| *b != super::ActiveRequestBias::DEFAULT) {
                so.insert("active_request_bias".into(), Value::Float(b.get()));
            }
        }
    }
    if !so.is_empty() {
        t.insert("scheduler_options".into(), Value::Table(so));
    }
}

fn pool(p: &PoolConfig) -> Table {
    let mut t = Table::new();
    t.insert("name".into(), s(&p.name));
    scheduler(&mut t, &p.scheduler);
    if let Some(d) = p.persistence {
        t.insert("persistence".into(), dur(d));
    }
    if let Some(c) = &p.sticky_cookie {
        t.insert("sticky_cookie".into(), s(c));
    }
    if p.backend_protocol != BackendProtocol::default() {
        t.insert("backend_protocol".into(), s(p.backend_protocol.as_str()));
    }
    put_table(&mut t, "health", p.health.as_ref(), health);
    if p.outlier != OutlierConfig::default() {
        let mut o = Table::new();
        o.insert(
            "consecutive_failures".into(),
            int(p.outlier.consecutive_failures.get()),
        );
        o.insert("ejection".into(), dur(p.outlier.ejection));
        t.insert("outlier".into(), Value::Table(o));
    }
    put_tables(&mut t, "backend", &p.backends, |b| {
        let mut x = Table::new();
        x.insert("address".into(), s(b.address.to_string()));
        x.insert("weight".into(), int(b.weight.get()));
        if let Some(z) = &b.zone {
            x.insert("zone".into(), s(z.as_str()));
        }
        x
    });
    put_table(&mut t, "discovery", p.discovery.as_ref(), discovery);
    if let Some(tls) = &p.tls {
        let mut x = Table::new();
        x.insert("ca".into(), path(&tls.ca));
        if let Some(n) = &tls.sni {
            x.insert("sni".into(), s(n));
        }
        if let Some((c, k)) = &tls.client_cert {
            x.insert("cert".into(), path(c));
            x.insert("key".into(), path(k));
        }
        t.insert("tls".into(), Value::Table(x));
    }
    put_table(&mut t, "locality", p.locality.as_ref(), locality);
    t
}

fn locality(l: &crate::locality::Locality) -> Table {
    let mut t = Table::new();
    match l {
        crate::locality::Locality::Weights {
            weights,
            controlled,
        } => {
            let w = weights
                .iter()
                .map(|(z, w)| (z.to_string(), int(*w)))
                .collect();
            t.insert("weights".into(), Value::Table(w));
            if *controlled {
                t.insert("controlled".into(), Value::Boolean(true));
            }
        }
        crate::locality::Locality::PreferLocal { spill_below } => {
            t.insert("prefer".into(), s("local"));
            t.insert("spill_below".into(), int(*spill_below));
        }
    }
    t
}

fn health(h: &HealthConfig) -> Table {
    let mut t = Table::new();
    match &h.check {
        HealthCheck::Tcp => {
            t.insert("check".into(), s("tcp"));
        }
        HealthCheck::Http {
            path,
            expect_status,
        } => {
            t.insert("check".into(), s("http"));
            t.insert("path".into(), s(path));
            t.insert("expect_status".into(), s(expect_status.to_string()));
        }
    }
    if h.interval != defaults::HEALTH_INTERVAL {
        t.insert("interval".into(), dur(h.interval));
    }
    if h.timeout != defaults::health_timeout(h.interval) {
        t.insert("timeout".into(), dur(h.timeout));
    }
    if h.rise != defaults::HEALTH_RISE {
        t.insert("rise".into(), int(h.rise.get()));
    }
    if h.fall != defaults::HEALTH_FALL {
        t.insert("fall".into(), int(h.fall.get()));
    }
    t
}

fn discovery(d: &Discovery) -> Table {
    [
        ("dns", d.dns.as_ref().map(|x| s(x.to_string()))),
        ("srv", d.srv.as_ref().map(s)),
        ("file", d.file.as_deref().map(path)),
        ("etcd", d.etcd.as_ref().map(|x| s(&x.0))),
        ("nameserver", d.nameserver.map(|x| s(x.to_string()))),
    ]
    .into_iter()
    .filter_map(|(key, v)| Some((key.to_owned(), v?)))
    .collect()
}

fn xdp(x: &XdpConfig) -> Table {
    let mut t = Table::new();
    t.insert("interface".into(), s(&x.interface));
    t.insert("mode".into(), s(x.mode.as_str()));
    if let Some(sy) = &x.sync {
        let mut st = Table::new();
        st.insert("listen".into(), s(sy.listen.to_string()));
        st.insert(
            "peers".into(),
            Value::Array(sy.peers.iter().map(|p| s(p.to_string())).collect()),
        );
        st.insert("member".into(), Value::Integer(i64::from(sy.member)));
        st.insert(
            "members".into(),
            Value::Integer(i64::from(sy.members.get())),
        );
        t.insert("sync".into(), Value::Table(st));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `certs` is written inline under its `[service.tls]`, and the rest of the document as
    /// `toml` writes it.
    #[test]
    fn tls_certs_are_written_inline() {
        let doc: Table = toml::from_str(
            r#"
            [[service]]
            name = "a"
            tls = { certs = [{ cert = "a.pem", key = "a.key" }, { cert = "b \"q\".pem", key = "b.key" }] }
            timeouts = { connect = "1s" }

            [[service]]
            name = "b"
            pool = "p"

            [[service]]
            name = "c"
            tls = { certs = [] }

            [[pool]]
            name = "p"
            backend = [{ address = "127.0.0.1:1" }]
            "#,
        )
        .expect("TOML");
        let text = table_to_string(&doc);
        assert_eq!(
            text,
            r#"[[pool]]
name = "p"

[[pool.backend]]
address = "127.0.0.1:1"

[[service]]
name = "a"

[service.timeouts]
connect = "1s"

[service.tls]
certs = [{ cert = "a.pem", key = "a.key" }, { cert = 'b "q".pem', key = "b.key" }]

[[service]]
name = "b"
pool = "p"

[[service]]
name = "c"

[service.tls]
certs = []
"#
        );
        assert_eq!(toml::from_str::<Table>(&text).expect("TOML"), doc);
    }
}
