//! Run-time changes as edits of the running configuration.
//!
//! Every change goes through the same validation as a file: the running [`Config`] is
//! written as a TOML document ([`Config::to_toml_table`]), the document is edited, written
//! back as text and [`config::parse`]d. So a change the API accepts is exactly a change a
//! user could have made in the file, and the result is a whole, valid `Config` that the
//! controller applies like a reload.

use std::net::SocketAddr;
use std::path::Path;

use fulcrum_core::config::{self, AccessLog, Config, ConfigError, LogTarget, ServiceConfig};
use fulcrum_state::controller::ChangeError;
use toml::{Table, Value};

/// Parses an address from a URL path: `IP:PORT` (`[IPv6]:PORT`), port not 0.
pub fn parse_addr(s: &str) -> Result<SocketAddr, ChangeError> {
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        Ok(_) => Err(ChangeError::Invalid(format!(
            "port 0 is not allowed in {s:?}"
        ))),
        Err(_) => Err(ChangeError::Invalid(format!(
            "invalid backend address {s:?}: write IP:PORT, e.g. 127.0.0.1:9001 or [::1]:9001"
        ))),
    }
}

fn invalid(e: &ConfigError) -> ChangeError {
    match &e.help {
        Some(h) => ChangeError::Invalid(format!("{} (help: {h})", e.message)),
        None => ChangeError::Invalid(e.message.clone()),
    }
}

/// Writes the edited document and validates it like a file.
fn reparse(doc: &Table) -> Result<Config, ChangeError> {
    let text = config::table_to_string(doc);
    config::parse(&text).map_err(|e| invalid(&e))
}

fn array_mut<'a>(t: &'a mut Table, key: &str) -> &'a mut Vec<Value> {
    let v = t
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !v.is_array() {
        *v = Value::Array(Vec::new());
    }
    match v {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

/// `cfg` without the entry of array `key` (`service` or `pool`) named `name` (and without
/// the array if that was its last entry).
fn without_named(cfg: &Config, key: &str, name: &str) -> Result<Config, ChangeError> {
    let mut doc = cfg.to_toml_table();
    let entries = array_mut(&mut doc, key);
    entries.retain(|e| name_of(e) != Some(name));
    if entries.is_empty() {
        doc.remove(key);
    }
    reparse(&doc)
}

fn name_of(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

fn same_addr(v: &Value, addr: SocketAddr) -> bool {
    v.get("address")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .is_some_and(|a| a == addr)
}

fn pool_table<'a>(doc: &'a mut Table, pool: &str) -> Result<&'a mut Table, ChangeError> {
    array_mut(doc, "pool")
        .iter_mut()
        .find(|p| name_of(p) == Some(pool))
        .and_then(Value::as_table_mut)
        .ok_or_else(|| ChangeError::NotFound(format!("no pool named {pool:?}")))
}

/// `PUT /api/v1/pools/{pool}/backends/{address}`: adds the backend or sets its weight.
pub fn set_backend(
    cfg: &Config,
    pool: &str,
    addr: SocketAddr,
    weight: u16,
) -> Result<Config, ChangeError> {
    if let Some(new) = set_backend_direct(cfg, pool, addr, weight) {
        return Ok(new);
    }
    set_backend_reparsed(cfg, pool, addr, weight)
}

/// Whether a backend change of `pool` can be made on the [`Config`] directly, with the same
/// result as editing and re-parsing the whole document ([`set_backend_reparsed`],
/// [`remove_backend_reparsed`]; the tests compare the two). A pool of a dsr/tunnel/nat
/// service is left to the full check (the packet data plane's limit on the backends of all
/// such pools together).
fn direct_edit_applies(cfg: &Config, pool: &str) -> bool {
    !cfg.services
        .iter()
        .any(|s| s.forward().mode() != fulcrum_core::model::ForwardMode::Proxy && s.uses_pool(pool))
}

/// What makes two addresses the same backend: equal canonical texts
/// ([`fulcrum_core::model::CanonicalAddr`]: an IPv4-mapped IPv6 address written as IPv4, no
/// scope or flow label), compared without writing the texts (at 10,000 backends the texts
/// were most of an add's time).
fn identity(a: &SocketAddr) -> (std::net::IpAddr, u16) {
    (a.ip().to_canonical(), a.port())
}

/// [`set_backend`] on the [`Config`] itself: at 10,000 backends, writing and re-parsing the
/// whole document takes tens of milliseconds per call. `None` when the change could be
/// refused (another spelling of an address already in the pool, a Maglev table too small
/// for one more backend, port 0, an IPv6 scope or flow label) or the pool is not a plain
/// one ([`direct_edit_applies`]): the full re-parse then decides, and says exactly why.
fn set_backend_direct(cfg: &Config, pool: &str, addr: SocketAddr, weight: u16) -> Option<Config> {
    let plain = match addr {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.scope_id() == 0 && v6.flowinfo() == 0,
    };
    if !plain || addr.port() == 0 || !direct_edit_applies(cfg, pool) {
        return None;
    }
    let i = cfg.pools.iter().position(|p| p.name == pool)?;
    let p = &cfg.pools[i];
    let same = p.backends.iter().position(|b| b.address == addr);
    if same.is_none() {
        let key = identity(&addr);
        if p.backends.iter().any(|b| identity(&b.address) == key) {
            return None;
        }
        if p.scheduler
            .maglev_table_size()
            .is_some_and(|size| size.get() as usize <= p.backends.len())
        {
            return None;
        }
    }
    let mut new = cfg.clone();
    let backends = &mut new.pools[i].backends;
    match same {
        Some(j) => backends[j].weight = fulcrum_core::model::Weight::new(weight),
        None => backends.push(fulcrum_core::model::Backend::new(addr, weight)),
    }
    Some(new)
}

/// [`set_backend`] by writing the whole config as a document, editing it and parsing it
/// again.
fn set_backend_reparsed(
    cfg: &Config,
    pool: &str,
    addr: SocketAddr,
    weight: u16,
) -> Result<Config, ChangeError> {
    let mut doc = cfg.to_toml_table();
    let p = pool_table(&mut doc, pool)?;
    let backends = array_mut(p, "backend");
    let w = Value::Integer(i64::from(weight));
    if let Some(b) = backends
        .iter_mut()
        .find(|b| same_addr(b, addr))
        .and_then(Value::as_table_mut)
    {
        b.insert("weight".into(), w);
    } else {
        let mut b = Table::new();
        b.insert("address".into(), Value::String(addr.to_string()));
        b.insert("weight".into(), w);
        backends.push(Value::Table(b));
    }
    reparse(&doc)
}

/// `DELETE /api/v1/pools/{pool}/backends/{address}`. A pool may become empty (as an
/// ipvsadm service without real servers): its services then refuse new clients.
pub fn remove_backend(cfg: &Config, pool: &str, addr: SocketAddr) -> Result<Config, ChangeError> {
    let Some(pc) = cfg.pool(pool) else {
        return Err(ChangeError::NotFound(format!("no pool named {pool:?}")));
    };
    if !pc.backends.iter().any(|b| b.address == addr) {
        return Err(ChangeError::NotFound(format!(
            "pool {pool:?} has no backend {addr}"
        )));
    }
    if direct_edit_applies(cfg, pool) {
        // Removing a backend cannot make a valid config invalid (a pool may be empty).
        let mut new = cfg.clone();
        if let Some(p) = new.pools.iter_mut().find(|p| p.name == pool) {
            p.backends.retain(|b| b.address != addr);
        }
        return Ok(new);
    }
    remove_backend_reparsed(cfg, pool, addr)
}

/// [`remove_backend`] by writing, editing and parsing the whole document (see
/// [`set_backend_reparsed`]).
fn remove_backend_reparsed(
    cfg: &Config,
    pool: &str,
    addr: SocketAddr,
) -> Result<Config, ChangeError> {
    let mut doc = cfg.to_toml_table();
    let p = pool_table(&mut doc, pool)?;
    array_mut(p, "backend").retain(|b| !same_addr(b, addr));
    if p.get("backend")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        p.remove("backend");
    }
    reparse(&doc)
}

/// `PUT /api/v1/services/{name}`: `body` has the keys of a `[[service]]` table (`name` may
/// be left out; if given it must match). Adds the service or replaces it whole.
pub fn put_service(
    cfg: &Config,
    name: &str,
    body: serde_json::Value,
) -> Result<Config, ChangeError> {
    let serde_json::Value::Object(mut obj) = body else {
        return Err(ChangeError::Invalid(
            "the body must be a JSON object with the keys of a [[service]] table".into(),
        ));
    };
    match obj.get("name") {
        None => {
            obj.insert("name".into(), serde_json::Value::String(name.to_owned()));
        }
        Some(serde_json::Value::String(n)) if n == name => {}
        Some(other) => {
            return Err(ChangeError::Invalid(format!(
                "the body's name {other} differs from the name in the path {name:?}"
            )))
        }
    }
    let table: Table = serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| {
        ChangeError::Invalid(format!(
            "the body cannot be a [[service]] table: {e} (null is not a TOML value)"
        ))
    })?;
    // Another service on the same listen address is a conflict, not a bad body.
    if let Some(listen) = table
        .get("listen")
        .and_then(Value::as_str)
        .and_then(|l| l.parse::<SocketAddr>().ok())
    {
        let udp = table.get("protocol").and_then(Value::as_str) == Some("udp");
        if let Some(other) = cfg.services.iter().find(|s| {
            s.name != name
                && s.listen == listen
                && (s.protocol() == fulcrum_core::model::ServiceProtocol::Udp) == udp
        }) {
            return Err(ChangeError::Conflict(format!(
                "service {:?} already listens on {listen}",
                other.name
            )));
        }
    }
    let mut doc = cfg.to_toml_table();
    let services = array_mut(&mut doc, "service");
    match services.iter_mut().find(|s| name_of(s) == Some(name)) {
        Some(s) => *s = Value::Table(table),
        None => services.push(Value::Table(table)),
    }
    let new = reparse(&doc)?;
    if let Some(svc) = new.service(name) {
        files_already_named(cfg, svc)?;
    }
    Ok(new)
}

/// The files a service names: its access log and its TLS certificates and keys.
pub fn service_files(s: &ServiceConfig) -> Vec<&Path> {
    let mut files = Vec::new();
    if let Some(AccessLog {
        target:
            LogTarget::File(p)
            | LogTarget::Syslog {
                dest: config::SyslogDest::Unix(p),
                ..
            },
        ..
    }) = s.access_log()
    {
        files.push(p.as_path());
    }
    if let Some(tls) = s.tls() {
        for pair in &tls.certs {
            files.push(pair.cert.as_path());
            files.push(pair.key.as_path());
            if let Some(o) = &pair.ocsp {
                files.push(o.as_path());
            }
        }
        if let Some(ca) = &tls.client_auth {
            files.push(ca.ca.as_path());
        }
    }
    files
}

/// The admin API may only point a service at files the running configuration already names
/// (so, files the operator put in the config file): an API user cannot create, append to,
/// read or probe any other file as Fulcrum's user.
fn files_already_named(cfg: &Config, svc: &ServiceConfig) -> Result<(), ChangeError> {
    let known: Vec<&Path> = cfg.services.iter().flat_map(service_files).collect();
    match service_files(svc).into_iter().find(|f| !known.contains(f)) {
        None => Ok(()),
        Some(f) => Err(ChangeError::Invalid(format!(
            "{} is not a file the configuration file names: the admin API may only use access \
             log, certificate and key paths that some service of the file already uses (put \
             the new path in the config file and reload)",
            f.display()
        ))),
    }
}

/// `DELETE /api/v1/services/{name}`.
pub fn delete_service(cfg: &Config, name: &str) -> Result<Config, ChangeError> {
    if cfg.service(name).is_none() {
        return Err(ChangeError::NotFound(format!("no service named {name:?}")));
    }
    without_named(cfg, "service", name)
}

/// `PUT /api/v1/pools/{pool}`: creates the pool (empty) or changes its settings, keeping its
/// backends. `body` may hold `scheduler`, `hash_key`, `persistence`, `maglev_table_size`,
/// `sticky_cookie`, `backend_protocol` (the keys of a `[[pool]]` table other than `name`,
/// `backend`, `health`, `outlier` and `discovery`); `null` removes a key.
pub fn set_pool(cfg: &Config, pool: &str, body: serde_json::Value) -> Result<Config, ChangeError> {
    const KEYS: [&str; 6] = [
        "scheduler",
        "hash_key",
        "persistence",
        "maglev_table_size",
        "sticky_cookie",
        "backend_protocol",
    ];
    let serde_json::Value::Object(obj) = body else {
        return Err(ChangeError::Invalid(format!(
            "the body must be a JSON object with some of: {}",
            KEYS.join(", ")
        )));
    };
    let mut doc = cfg.to_toml_table();
    let pools = array_mut(&mut doc, "pool");
    let idx = if let Some(i) = pools.iter().position(|p| name_of(p) == Some(pool)) {
        i
    } else {
        let mut t = Table::new();
        t.insert("name".into(), Value::String(pool.to_owned()));
        pools.push(Value::Table(t));
        pools.len() - 1
    };
    let Some(t) = pools.get_mut(idx).and_then(Value::as_table_mut) else {
        return Err(ChangeError::Invalid(format!(
            "pool {pool:?} is not a table"
        )));
    };
    for (k, v) in obj {
        if !KEYS.contains(&k.as_str()) {
            return Err(ChangeError::Invalid(format!(
                "unknown key {k:?} for a pool; valid keys: {}",
                KEYS.join(", ")
            )));
        }
        if v.is_null() {
            t.remove(&k);
            continue;
        }
        let v: Value = serde_json::from_value(v)
            .map_err(|e| ChangeError::Invalid(format!("bad value for {k:?}: {e}")))?;
        t.insert(k, v);
    }
    reparse(&doc)
}

/// `DELETE /api/v1/pools/{pool}`: only when no service or route uses it (else a conflict).
pub fn delete_pool(cfg: &Config, pool: &str) -> Result<Config, ChangeError> {
    if cfg.pool(pool).is_none() {
        return Err(ChangeError::NotFound(format!("no pool named {pool:?}")));
    }
    if let Some(s) = cfg.services.iter().find(|s| s.uses_pool(pool)) {
        return Err(ChangeError::Conflict(format!(
            "pool {pool:?} is used by service {:?}; remove or change that service first",
            s.name
        )));
    }
    without_named(cfg, "pool", pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nscheduler = \"maglev\"\nmaglev_table_size = 3\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";

    fn base() -> Config {
        config::parse(BASE).expect("base config")
    }

    fn invalid(r: Result<Config, ChangeError>) -> String {
        match r {
            Err(ChangeError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn identity_is_equality_of_the_canonical_texts() {
        let addrs: Vec<SocketAddr> = [
            "1.2.3.4:80",
            "1.2.3.4:81",
            "[::ffff:1.2.3.4]:80",
            "[::1.2.3.4]:80",
            "[::102:304]:80",
            "[2001:db8::1]:80",
            "[2001:db8:0:0:0:0:0:1]:80",
            "[fe80::1%7]:80",
            "[fe80::1%8]:80",
            "[fe80::1]:80",
            "0.0.0.0:80",
            "[::]:80",
            "[::ffff:0.0.0.0]:80",
        ]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
        for a in &addrs {
            for b in &addrs {
                let texts = fulcrum_core::model::CanonicalAddr::new(a)
                    == fulcrum_core::model::CanonicalAddr::new(b);
                assert_eq!(identity(a) == identity(b), texts, "{a} {b}");
            }
        }
    }

    #[test]
    fn out_of_range_numbers_are_refused_before_anything_is_built() {
        // This once made the process allocate 16 GiB for a Maglev table.
        let m = invalid(set_pool(
            &base(),
            "p",
            serde_json::json!({"maglev_table_size": 4_294_967_291_u64}),
        ));
        assert!(m.contains("out of range") && m.contains("1000003"), "{m}");
        // A duration that would overflow the clock on the first connection.
        let m = invalid(set_pool(
            &base(),
            "p",
            serde_json::json!({"persistence": "18446744073709551615s"}),
        ));
        assert!(
            m.contains("too long") || m.contains("invalid duration"),
            "{m}"
        );
    }

    #[test]
    fn a_backend_beyond_the_maglev_table_is_refused_so_the_saved_config_stays_valid() {
        let cfg = set_backend(&base(), "p", "127.0.0.1:3".parse().expect("addr"), 1)
            .expect("3 backends fit a table of 3");
        assert!(config::parse(&cfg.to_toml()).is_ok());
        let m = invalid(set_backend(
            &cfg,
            "p",
            "127.0.0.1:4".parse().expect("addr"),
            1,
        ));
        assert!(m.contains("smaller than the number of backends (4)"), "{m}");
    }

    /// The direct backend edits give exactly the config (or the refusal) that editing and
    /// re-parsing the whole document gives (also for a pool with `[pool.locality] weights`,
    /// whose re-parse once failed: "expected a borrowed string").
    #[test]
    fn direct_backend_edits_equal_the_reparsed_ones() {
        const RICH: &str = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"p\"\n\n[[service]]\nname = \"h\"\nlisten = \"127.0.0.1:8081\"\nprotocol = \"http\"\npool = \"z\"\n\n[[pool]]\nname = \"p\"\nscheduler = \"maglev\"\nmaglev_table_size = 5\n[pool.health]\ncheck = \"tcp\"\ninterval = \"2s\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\nweight = 3\n[[pool.backend]]\naddress = \"[::ffff:127.0.0.2]:2\"\n[[pool.backend]]\naddress = \"[2001:db8::1]:80\"\nweight = 0\n\n[[pool]]\nname = \"z\"\nscheduler = \"wrr\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\nzone = \"a\"\n[[pool.backend]]\naddress = \"127.0.0.1:10\"\nzone = \"b\"\n[pool.locality]\nweights = { a = 90, b = 10 }\n\n[[pool]]\nname = \"empty\"\nscheduler = \"rr\"\n";
        let base = config::parse(RICH).expect("rich config");
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let sets = [
            ("p", "127.0.0.1:3", 1u16),
            ("p", "127.0.0.1:1", 7),
            ("p", "127.0.0.1:1", 0),
            ("p", "127.0.0.2:2", 1),
            ("p", "[::ffff:127.0.0.1]:1", 1),
            ("p", "[2001:db8::1]:80", 65535),
            ("p", "[fe80::1%3]:80", 2),
            ("z", "127.0.0.1:9", 4),
            ("z", "127.0.0.1:11", 1),
            ("empty", "10.0.0.1:80", 1),
            ("nope", "10.0.0.1:80", 1),
        ];
        for (pool, a, w) in sets {
            let a = addr(a);
            assert_eq!(
                set_backend(&base, pool, a, w),
                set_backend_reparsed(&base, pool, a, w),
                "set {pool} {a} {w}"
            );
        }
        // A full table: the fifth backend fits, the sixth is refused (by the re-parse).
        let full = set_backend(&base, "p", addr("127.0.0.1:4"), 1).expect("fits");
        let full = set_backend(&full, "p", addr("127.0.0.1:5"), 1).expect("fits");
        assert_eq!(
            set_backend(&full, "p", addr("127.0.0.1:6"), 1),
            set_backend_reparsed(&full, "p", addr("127.0.0.1:6"), 1)
        );
        assert!(set_backend(&full, "p", addr("127.0.0.1:6"), 1).is_err());
        for (pool, a) in [
            ("p", "127.0.0.1:1"),
            ("p", "[::ffff:127.0.0.2]:2"),
            ("z", "127.0.0.1:10"),
            ("p", "127.0.0.1:99"),
            ("nope", "127.0.0.1:1"),
        ] {
            let a = addr(a);
            let direct = remove_backend(&base, pool, a);
            let reparsed = if base
                .pool(pool)
                .is_some_and(|p| p.backends.iter().any(|b| b.address == a))
            {
                remove_backend_reparsed(&base, pool, a)
            } else {
                direct.clone()
            };
            assert_eq!(direct, reparsed, "remove {pool} {a}");
        }
        // Both pool's backends gone: the pool stays, empty, as in the file.
        let one = remove_backend(&base, "z", addr("127.0.0.1:9")).expect("remove");
        let none = remove_backend(&one, "z", addr("127.0.0.1:10")).expect("remove");
        assert_eq!(
            Ok(none),
            remove_backend_reparsed(&one, "z", addr("127.0.0.1:10"))
        );
    }
}
