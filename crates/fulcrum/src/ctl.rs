//! `fulcrum ctl …`: talks to a running instance's admin API.
//!
//! Requests go through the command line's one admin API client ([`crate::api_client`]);
//! `ctl` makes one or three requests per run.
//!
//! Exit codes: 0 success; 1 the instance cannot be reached, refuses the token, or refuses
//! the change (404, 409, 5xx); 2 bad usage (bad arguments, unreadable token file, or a
//! request the API calls bad: 400).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api_client::{self, Client, Endpoint, UrlError};
use crate::fail::{Fail, EXIT_FAILURE, EXIT_USAGE};

/// Arguments of `fulcrum ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The admin API of the instance.
    #[arg(
        long,
        global = true,
        env = "FULCRUM_ADMIN",
        default_value = "http://127.0.0.1:9090",
        value_name = "URL"
    )]
    pub admin: String,
    /// A file holding the bearer token (`[admin] token_file` of the instance).
    #[arg(long, global = true, env = "FULCRUM_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Readiness, services and a per-pool summary.
    Status,
    /// Every pool with its backends.
    Pools,
    /// Add, change, drain or remove a backend.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Re-read the instance's config file (run-time changes end).
    Reload,
    /// Which backend a flow from IP:PORT goes to now, and why.
    Explain {
        /// The pool.
        pool: String,
        /// The client's address, IP:PORT.
        client: String,
        /// The address the client connects to (default: the pool's first service).
        #[arg(long)]
        dst: Option<String>,
        /// tcp or udp.
        #[arg(long)]
        proto: Option<String>,
    },
    /// Which backends a dns service answers a query for NAME with now, and why.
    ExplainDns {
        /// The dns service.
        service: String,
        /// A name of its zone.
        name: String,
        /// The query's source IP (the key of the hashing schedulers without ECS).
        #[arg(long)]
        client: Option<String>,
        /// The query's EDNS Client Subnet, IP/LEN.
        #[arg(long)]
        subnet: Option<String>,
        /// A (default) or AAAA.
        #[arg(long = "type", value_name = "TYPE")]
        qtype: Option<String>,
    },
    /// Print the running configuration as TOML (file plus run-time changes).
    Config,
    /// Drain or undrain the whole instance (VIP announcement, `[announce]`).
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// The fleet as the instance sees it (`[cluster]`): members, the revision each runs,
    /// and who disagrees with the newest.
    Cluster,
}

#[derive(Debug, clap::Subcommand)]
pub enum InstanceCommand {
    /// Withdraw every VIP and answer 503 on /readyz; established connections keep being
    /// served (and so are flows that still arrive while routers converge).
    Drain,
    /// End a drain: VIPs that can be served are announced again.
    Undrain,
}

#[derive(Debug, clap::Subcommand)]
pub enum BackendCommand {
    /// Add a backend to a pool, or change its weight (ends a drain).
    Add {
        pool: String,
        /// IP:PORT.
        address: String,
        /// 0..=65535 (default: 1 for a new backend; unchanged for an existing one).
        #[arg(long)]
        weight: Option<u16>,
    },
    /// Stop sending new flows to a backend; existing ones finish.
    Drain { pool: String, address: String },
    /// Remove a backend from a pool; existing flows finish.
    Remove { pool: String, address: String },
}

/// Runs `ctl`; returns the exit code.
pub fn run(args: &CtlArgs) -> anyhow::Result<u8> {
    match run_inner(args) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes())?;
            if !out.is_empty() && !out.ends_with('\n') {
                stdout.write_all(b"\n")?;
            }
            Ok(0)
        }
        Err(Fail(code, msg)) => {
            eprintln!("fulcrum ctl: {msg}");
            Ok(code)
        }
    }
}

fn run_inner(args: &CtlArgs) -> Result<String, Fail> {
    let api = Api::new(args)?;
    // the commands of one request: its method and path, and the answer as text
    let (method, path, text): (&str, String, fn(&Value) -> String) = match &args.command {
        CtlCommand::Status => return status(&api, args.json),
        CtlCommand::Backend(cmd) => return backend(&api, cmd, args.json),
        CtlCommand::Config => return Ok(api.call("GET", "/api/v1/config", None)?.1),
        CtlCommand::Pools => ("GET", "/api/v1/pools".into(), pools_table),
        CtlCommand::Reload => ("POST", "/api/v1/reload".into(), |_| {
            "reloaded: the config file is running (run-time changes ended)\n".into()
        }),
        CtlCommand::Explain {
            pool,
            client,
            dst,
            proto,
        } => {
            let q = [
                ("client", Some(client)),
                ("dst", dst.as_ref()),
                ("proto", proto.as_ref()),
            ];
            ("GET", explain_path("pools", pool, &q), explain_text)
        }
        CtlCommand::ExplainDns {
            service,
            name,
            client,
            subnet,
            qtype,
        } => {
            let q = [
                ("name", Some(name)),
                ("client", client.as_ref()),
                ("subnet", subnet.as_ref()),
                ("type", qtype.as_ref()),
            ];
            (
                "GET",
                explain_path("services", service, &q),
                explain_dns_text,
            )
        }
        CtlCommand::Cluster => ("GET", "/api/v1/cluster".into(), cluster_text),
        CtlCommand::Instance(InstanceCommand::Drain) => {
            ("POST", "/api/v1/instance/drain".into(), |_| {
                "instance drained: VIPs withdrawn, /readyz answers 503, established connections keep running\n".into()
            })
        }
        CtlCommand::Instance(InstanceCommand::Undrain) => {
            ("POST", "/api/v1/instance/undrain".into(), |_| {
                "instance undrained: VIPs that can be served are announced again\n".into()
            })
        }
    };
    let v = api.json(method, &path, None)?;
    Ok(if args.json { pretty(&v) } else { text(&v) })
}

/// `/api/v1/{collection}/{name}/explain?{query}`: the query has `key=value` for each pair
/// with a value, percent-encoded.
fn explain_path(collection: &str, name: &str, pairs: &[(&str, Option<&String>)]) -> String {
    let mut q = format!("/api/v1/{collection}/{}/explain?", enc(name));
    for (k, v) in pairs {
        if let Some(v) = v {
            let sep = if q.ends_with('?') { "" } else { "&" };
            let _ = write!(q, "{sep}{k}={}", enc(v));
        }
    }
    q
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Percent-encodes everything but unreserved characters and `:` (addresses in paths).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The admin API, with `ctl`'s wording of its failures.
struct Api(Client);

impl Api {
    fn new(args: &CtlArgs) -> Result<Self, Fail> {
        let endpoint = Endpoint::parse(&args.admin).map_err(|e| match e {
            UrlError::NotHttp => Fail(
                EXIT_USAGE,
                format!(
                    "--admin {:?}: only http:// URLs are supported, e.g. http://127.0.0.1:9090",
                    args.admin.trim_end_matches('/')
                ),
            ),
            UrlError::Resolve(_, e) => Fail(
                EXIT_FAILURE,
                format!(
                    "cannot reach the admin API at {}: {e}",
                    args.admin.trim_end_matches('/')
                ),
            ),
        })?;
        let token = match &args.token_file {
            None => None,
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        Fail(
                            EXIT_USAGE,
                            format!("cannot read the token file {}: {e}", f.display()),
                        )
                    })?
                    .trim()
                    .to_owned(),
            ),
        };
        let client = Client::new(endpoint, token, "fulcrum-ctl")
            .map_err(|e| {
                Fail(
                    EXIT_FAILURE,
                    format!("cannot start the admin API client: {e}"),
                )
            })?
            .timeouts(Duration::from_secs(3), Duration::from_secs(60));
        Ok(Self(client))
    }

    /// The admin URL as given.
    fn url(&self) -> &str {
        &self.0.endpoint.url
    }

    /// One request; the status and body. Errors for transport failures only.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, String), Fail> {
        let url = self.url();
        match self.0.call(method, path, body) {
            Ok(a) => Ok((a.status, a.text())),
            Err(api_client::Error::Malformed(_)) => Err(Fail(
                EXIT_FAILURE,
                format!("the admin API at {url} sent a malformed HTTP answer"),
            )),
            Err(api_client::Error::Unreachable(e)) => {
                let why = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                        "timed out".to_owned()
                    }
                    _ => e.to_string(),
                };
                Err(Fail(
                    EXIT_FAILURE,
                    format!("cannot reach the admin API at {url}: {why} (is `fulcrum run` running with [admin] listen there?)"),
                ))
            }
        }
    }

    /// A request whose success answer is JSON; API errors become [`Fail`]s.
    fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Fail> {
        let (status, text) = self.call(method, path, body)?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let msg = v["error"]
            .as_str()
            .map_or_else(|| text.trim().to_owned(), str::to_owned);
        Err(match status {
            401 => Fail(
                EXIT_FAILURE,
                if self.0.has_token() {
                    format!("the admin API refused the token from --token-file (401): {msg}")
                } else {
                    format!("the admin API refused the request without a token (401): pass --token-file FILE ({msg})")
                },
            ),
            400 => Fail(EXIT_USAGE, format!("bad request (400): {msg}")),
            _ => Fail(EXIT_FAILURE, format!("{msg} ({status})")),
        })
    }
}

/// A table with columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<width$}  ", width = w[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(
        &mut out,
        &header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    );
    for r in rows {
        line(&mut out, r);
    }
    out
}

/// A table of JSON rows, described by two lines alike: `header` names the columns
/// (`NAME|NAME|…`) and `cells` gives each column's template over a row (`{key}|{key}…`,
/// see [`fill`]).
fn table_of<'v>(header: &str, cells: &str, rows: impl IntoIterator<Item = &'v Value>) -> String {
    let header: Vec<&str> = header.split('|').collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(|r| row(cells, r)).collect();
    table(&header, &rows)
}

/// One row of a table: each `|`-separated template of `cells` filled from `v`.
fn row(cells: &str, v: &Value) -> Vec<String> {
    cells.split('|').map(|t| fill(t, v)).collect()
}

/// `template` with each `{key}` replaced by the [`cell`] of `v[key]` (`{a.b}`: `v[a][b]`;
/// `{0}`: an array's first element).
fn fill(template: &str, v: &Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some((before, after)) = rest.split_once('{') {
        let Some((path, after)) = after.split_once('}') else {
            break;
        };
        out.push_str(before);
        out.push_str(&cell(path.split('.').fold(
            v,
            |v, key| match key.parse::<usize>() {
                Ok(i) if v.is_array() => &v[i],
                _ => &v[key],
            },
        )));
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Lines of a label padded to ten columns and its text: the layout of `ctl explain`.
fn labelled(lines: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (label, text) in lines {
        let _ = writeln!(out, "{label:<10} {text}");
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The elements of a JSON array (none when `v` is not an array).
fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// The strings of a JSON array.
fn strings(v: &Value) -> Vec<&str> {
    items(v).filter_map(Value::as_str).collect()
}

/// `ctl cluster`: a header, one row per member, then the disagreement.
fn cluster_text(v: &Value) -> String {
    let mut out = fill("member {member} prefix {prefix} etcd ", v);
    out.push_str(if v["connected"] == true {
        "connected"
    } else {
        "DISCONNECTED"
    });
    out.push_str(&fill(
        " newest revision {latest_revision} running {applied_revision}\n",
        v,
    ));
    if let Some(r) = v["refused"].as_object() {
        let _ = writeln!(
            out,
            "refused revision {}: {}",
            cell(&r["revision"]),
            r["error"].as_str().unwrap_or_default()
        );
    }
    let members: Vec<Value> = items(&v["members"])
        .map(|m| {
            let vips = strings(&m["announced"]);
            let mut m = m.clone();
            m["current"] = (if m["current"] == true { "yes" } else { "NO" }).into();
            m["announced"] = (if vips.is_empty() {
                "-".to_owned()
            } else {
                vips.join(",")
            })
            .into();
            m
        })
        .collect();
    out.push_str(&table_of(
        "MEMBER|ADDRESS|VERSION|APPLIED|CURRENT|ANNOUNCED",
        "{member}|{address}|{version}|{applied_revision}|{current}|{announced}",
        &members,
    ));
    let dis = v["disagreement"].as_array().map_or(&[][..], Vec::as_slice);
    if dis.is_empty() {
        out.push_str("every member runs the newest revision\n");
    }
    for d in dis {
        out.push_str(&fill(
            "disagreement: {member} runs revision {applied_revision}",
            d,
        ));
        match d["refused"].as_str() {
            Some(why) => {
                let _ = writeln!(out, ", refused the newest: {why}");
            }
            None => out.push('\n'),
        }
    }
    for m in items(&v["members"]) {
        for r in items(&m["registry_refused"]) {
            let _ = writeln!(
                out,
                "registration refused by {}: {}: {}",
                cell(&m["member"]),
                fill("pool {pool} key {key} ({reason}, revision {revision})", r),
                r["error"].as_str().unwrap_or_default()
            );
        }
    }
    if v["health"].is_object() {
        out.push_str(&cluster_health_text(&v["health"]));
    }
    out
}

/// `ctl cluster`'s health part: the fleet's table with each member's verdict, then what
/// this instance ejects on its own (passive, never shared).
fn cluster_health_text(h: &Value) -> String {
    let members = strings(&h["members"]);
    let source = match h["source"].as_str() {
        Some("fleet") => "decided by the fleet".to_owned(),
        Some("held") => "etcd lost: the last fleet table is held".to_owned(),
        Some("local") => "no fleet view: this instance's own checks decide".to_owned(),
        other => other.unwrap_or("-").to_owned(),
    };
    let mut out = format!(
        "\nhealth: quorum {}, {source}, views of {} member(s)\n",
        cell(&h["health_quorum"]),
        members.len()
    );
    let mut header = vec!["POOL", "BACKEND", "FLEET", "UP/DOWN"];
    header.extend(members.iter().copied());
    let rows: Vec<Vec<String>> = items(&h["backends"])
        .map(|b| {
            let mut r = row("{pool}|{backend}|{fleet}|{votes.up}/{votes.down}", b);
            r[2] = r[2].to_uppercase();
            r.extend(members.iter().map(|m| cell(&b["members"][*m])));
            r
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no member publishes active check verdicts (no pool has [pool.health])\n");
    } else {
        out.push_str(&table(&header, &rows));
    }
    for (m, q) in h["quorum_disagreement"].as_object().into_iter().flatten() {
        let _ = writeln!(
            out,
            "quorum disagreement: {m} has health_quorum {} (it may build another table)",
            cell(q)
        );
    }
    let ejected: Vec<String> = items(&h["ejected_locally"])
        .map(|e| fill("{0} {1}", e))
        .collect();
    if !ejected.is_empty() {
        let _ = writeln!(
            out,
            "ejected here only (passive, local to this instance): {}",
            ejected.join(", ")
        );
    }
    out
}

fn pools_table(v: &Value) -> String {
    let rows: Vec<Value> = items(&v["pools"])
        .flat_map(|p| items(&p["backends"]).map(move |b| json!({ "pool": p, "backend": b })))
        .collect();
    table_of(
        "POOL|SCHEDULER|BACKEND|WEIGHT|STATE|ACTIVE|TOTAL",
        "{pool.name}|{pool.scheduler}|{backend.address}|{backend.weight}|{backend.state}|{backend.active_connections}|{backend.total_connections}",
        &rows,
    )
}

fn status(api: &Api, as_json: bool) -> Result<String, Fail> {
    let (code, ready) = api.call("GET", "/readyz", None)?;
    let services = api.json("GET", "/api/v1/services", None)?;
    let pools = api.json("GET", "/api/v1/pools", None)?;
    // An instance from before `/api/v1/announce` answers 404: no column then.
    let announce = api.json("GET", "/api/v1/announce", None).ok();
    if as_json {
        return Ok(pretty(&json!({
            "url": api.url(),
            "ready": code == 200,
            "readiness": ready.trim(),
            "services": services["services"],
            "pools": pools["pools"],
            "announce": announce,
        })));
    }
    Ok(status_text(
        api.url(),
        &ready,
        &services,
        &pools,
        announce.as_ref(),
    ))
}

/// `ctl status` as text: the readiness line, the services, the pools' counts, the dns names.
fn status_text(
    url: &str,
    ready: &str,
    services: &Value,
    pools: &Value,
    announce: Option<&Value>,
) -> String {
    let announced = |name: &Value| -> &str {
        let Some(a) = announce.filter(|a| !a["speaker"].is_null()) else {
            return "-";
        };
        match items(&a["services"]).find(|s| &s["service"] == name) {
            None => "-",
            Some(s) if s["announced"] == true => "yes",
            Some(_) => "no",
        }
    };
    let services_rows: Vec<Value> = items(&services["services"])
        .map(|s| {
            let mut s = s.clone();
            s["announced"] = announced(&s["name"]).into();
            s
        })
        .collect();
    let pool_rows: Vec<Value> = items(&pools["pools"])
        .map(|p| {
            let bs = p["backends"].as_array().map_or(&[][..], Vec::as_slice);
            let count = |st: &str| bs.iter().filter(|b| b["state"] == st).count();
            json!({
                "name": p["name"], "scheduler": p["scheduler"], "backends": bs.len(),
                "up": count("up"), "down": count("down"), "draining": count("draining"),
                "ejected": count("ejected"),
            })
        })
        .collect();
    format!(
        "{url}: {}\n\n{}\n{}{}",
        ready.trim(),
        table_of(
            "SERVICE|LISTEN|PROTOCOL|FORWARD|POOL|ACTIVE|TOTAL|ANNOUNCED",
            "{name}|{listen}|{protocol}|{forward}|{pool}|{active_connections}|{total_connections}|{announced}",
            &services_rows,
        ),
        table_of(
            "POOL|SCHEDULER|BACKENDS|UP|DOWN|DRAINING|EJECTED",
            "{name}|{scheduler}|{backends}|{up}|{down}|{draining}|{ejected}",
            &pool_rows,
        ),
        dns_names_table(services),
    )
}

/// The names of the dns services in `GET /api/v1/services` (empty: none).
fn dns_names_table(services: &Value) -> String {
    let rows: Vec<Value> = items(&services["services"])
        .flat_map(|s| items(&s["dns"]["names"]).map(move |n| json!({ "service": s, "name": n })))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n{}",
        table_of(
            "DNS SERVICE|ZONE|NAME|POOL|TTL|MAX ANSWERS",
            "{service.name}|{service.dns.origin}|{name.name}|{name.pool}|{name.ttl}s|{name.max_answers}",
            &rows,
        )
    )
}

fn backend(api: &Api, cmd: &BackendCommand, as_json: bool) -> Result<String, Fail> {
    let path =
        |pool: &str, addr: &str| format!("/api/v1/pools/{}/backends/{}", enc(pool), enc(addr));
    let v = match cmd {
        BackendCommand::Add {
            pool,
            address,
            weight,
        } => {
            let body = weight.map_or_else(|| json!({}), |w| json!({ "weight": w }));
            api.json("PUT", &path(pool, address), Some(&body))?
        }
        BackendCommand::Drain { pool, address } => {
            api.json("POST", &(path(pool, address) + "/drain"), None)?
        }
        BackendCommand::Remove { pool, address } => {
            api.json("DELETE", &path(pool, address), None)?
        }
    };
    Ok(if as_json {
        pretty(&v)
    } else {
        backend_text(cmd, &v)
    })
}

/// What `ctl backend …` did, from the API's answer `v`.
fn backend_text(cmd: &BackendCommand, v: &Value) -> String {
    let (pool, what) = match cmd {
        BackendCommand::Add { pool, .. } => {
            (pool, fill(": weight {backend.weight}, state {backend.state}", v))
        }
        BackendCommand::Drain { pool, .. } => (
            pool,
            fill(
                ": state {backend.state} (no new flows; {backend.active_connections} open connections finish)",
                v,
            ),
        ),
        BackendCommand::Remove { pool, .. } => {
            return fill("backend {removed} removed from pool ", v)
                + pool
                + " (open connections finish)\n";
        }
    };
    fill("backend {backend.address} in pool ", v) + pool + &what + "\n"
}

/// `ctl explain-dns`: the query, the pool, the decision, the backends answered, why.
fn explain_dns_text(v: &Value) -> String {
    let who = match (v["client"].as_str(), v["subnet"].as_str()) {
        (Some(c), Some(s)) => format!(" from {c} (ECS {s})"),
        (Some(c), None) => format!(" from {c}"),
        (None, Some(s)) => format!(" (ECS {s})"),
        (None, None) => String::new(),
    };
    let mut lines = vec![(
        "query",
        fill("{name} {type}", v) + &who + &fill(" (service {service}, zone {zone})", v),
    )];
    if v["pool"].is_string() {
        lines.push((
            "pool",
            fill(
                "{pool} (scheduler {scheduler}, {eligible_backends} of {total_backends} backends up), ttl {ttl} s, max {max_answers} answers",
                v,
            ),
        ));
    }
    lines.push(("decision", fill("{decision}", v)));
    for b in items(&v["backends"]) {
        lines.push(("backend", fill("{address} (weight {weight}, {state})", b)));
    }
    lines.push(("reason", fill("{reason}", v)));
    labelled(&lines)
}

/// `ctl explain`: the flow, the pool, persistence, the hash and table slot, the backend, why.
fn explain_text(v: &Value) -> String {
    let service = v["flow"]["service"]
        .as_str()
        .map(|s| format!(", service {s}"))
        .unwrap_or_default();
    let mut lines = vec![
        (
            "flow",
            fill("{flow.client} -> {flow.dst} ({flow.proto}", v) + &service + ")",
        ),
        (
            "pool",
            fill(
                "{pool} (scheduler {scheduler}, {eligible_backends} of {total_backends} backends take new flows)",
                v,
            ),
        ),
    ];
    let p = &v["persistence"];
    lines.push((
        "persistence",
        match (p["configured"] == true, p["hit"] == true) {
            (false, _) => "not configured".to_owned(),
            (true, true) => fill("hit: {backend}", p),
            (true, false) => "miss".to_owned(),
        },
    ));
    if v["hash"].is_object() {
        let words: Vec<String> = items(&v["hash"]["words"]).map(cell).collect();
        lines.push((
            "hash",
            fill("{hash.key} = {hash.hex} ({hash.value}) over [", v) + &words.join(" ") + "]",
        ));
    }
    match v["table"]["kind"].as_str() {
        Some("maglev" | "sh") => {
            lines.push((
                "table",
                fill("slot {slot} of {size} -> {owner}", &v["table"]),
            ));
        }
        Some("ring_hash") => lines.push((
            "ring",
            fill(
                "position {position} of {points} points (point {point}) -> {owner}",
                &v["table"],
            ),
        )),
        _ => {}
    }
    lines.push((
        "backend",
        if v["backend"].is_object() {
            fill(
                "{address} (state {state}, weight {weight}, {active_connections} active)",
                &v["backend"],
            )
        } else {
            "-".to_owned()
        },
    ));
    lines.push(("why", fill("{reason}", v)));
    labelled(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every text rendering of `ctl` over answers that take each branch: the output is
    /// user-facing, so it is compared byte for byte with `ctl_golden.txt`
    /// (`FULCRUM_BLESS=1` rewrites that file from the current code).
    fn put(out: &mut String, name: &str, text: &str) {
        let _ = write!(out, "==== {name}\n{text}");
    }

    fn rendered() -> String {
        let mut out = String::new();
        cluster_cases(&mut out);
        list_cases(&mut out);
        explain_cases(&mut out);
        out
    }

    fn cluster_cases(out: &mut String) {
        let member = |name: &str, current: bool, vips: &[&str]| {
            json!({"member": name, "address": "198.18.0.1:9090", "version": "0.1.0",
                   "applied_revision": 7, "current": current, "announced": vips})
        };
        let mut m2 = member("b", false, &[]);
        m2["registry_refused"] = json!([{"pool": "web", "key": "/k/1", "reason": "bad",
                                         "revision": 9, "error": "no such pool"}]);
        let health = json!({
            "members": ["a", "b"], "source": "fleet", "health_quorum": 2,
            "backends": [{"pool": "web", "backend": "198.18.0.2:80", "fleet": "up",
                          "votes": {"up": 2, "down": 0}, "members": {"a": "up", "b": "up"}},
                         {"pool": "web", "backend": "198.18.0.3:80", "fleet": "down",
                          "votes": {"up": 0, "down": 1}, "members": {"a": "down"}}],
            "quorum_disagreement": {"b": 1},
            "ejected_locally": [["web", "198.18.0.3:80"], ["api", "198.18.0.4:80"]],
        });
        put(
            out,
            "cluster full",
            &cluster_text(&json!({
                "member": "a", "prefix": "/f", "connected": true, "latest_revision": 9,
                "applied_revision": 7, "refused": {"revision": 9, "error": "bad pool"},
                "members": [member("a", true, &["198.18.0.10", "198.18.0.11"]), m2],
                "disagreement": [{"member": "b", "applied_revision": 7, "refused": "bad"},
                                 {"member": "c", "applied_revision": 6}],
                "health": health,
            })),
        );
        for source in ["held", "local", "other"] {
            put(
                out,
                source,
                &cluster_text(&json!({
                    "member": "a", "prefix": "/f", "connected": false, "latest_revision": 0,
                    "applied_revision": 0, "refused": null, "members": [], "disagreement": [],
                    "health": {"members": [], "source": source, "health_quorum": 1,
                               "backends": [], "ejected_locally": []},
                })),
            );
        }
        put(out, "cluster bare", &cluster_text(&json!({"member": "a"})));
    }

    fn list_cases(out: &mut String) {
        let pools = json!({"pools": [
            {"name": "web", "scheduler": "maglev", "backends": [
                {"address": "198.18.0.2:80", "weight": 1, "state": "up",
                 "active_connections": 3, "total_connections": 10},
                {"address": "198.18.0.3:80", "weight": 20, "state": "draining",
                 "active_connections": 0, "total_connections": 1_234_567},
                {"address": "198.18.0.4:80", "weight": 0, "state": "down"},
                {"address": "198.18.0.5:80", "weight": 1, "state": "ejected"}]},
            {"name": "empty", "scheduler": "rr", "backends": []},
            {"name": "x", "scheduler": null, "backends": [{"address": "198.18.0.9:53"}]}]});
        put(out, "pools", &pools_table(&pools));
        put(out, "pools none", &pools_table(&json!({"pools": []})));
        let services = json!({"services": [
            {"name": "web", "listen": "198.18.0.1:80", "protocol": "tcp", "forward": "proxy",
             "pool": "web", "active_connections": 1, "total_connections": 2},
            {"name": "dns", "listen": "198.18.0.1:53", "protocol": "dns", "forward": "proxy",
             "pool": null, "active_connections": 0, "total_connections": 0,
             "dns": {"origin": "example.org.", "names": [
                 {"name": "www", "pool": "web", "ttl": 30, "max_answers": 2},
                 {"name": "api", "pool": "x", "ttl": 5, "max_answers": 1}]}}]});
        let announce = json!({"speaker": "exabgp", "services": [
            {"service": "web", "announced": true}, {"service": "x", "announced": false}]});
        let quiet = json!({"speaker": null, "services": []});
        for (name, a) in [
            ("a", Some(&announce)),
            ("quiet", Some(&quiet)),
            ("none", None),
        ] {
            put(
                out,
                &format!("status {name}"),
                &status_text("http://127.0.0.1:9090", "ready\n", &services, &pools, a),
            );
        }
        put(
            out,
            "status empty",
            &status_text("u", "not ready", &json!({}), &json!({}), None),
        );
        let answer = json!({"backend": {"address": "198.18.0.2:80", "weight": 3, "state": "up",
                                        "active_connections": 4}, "removed": "198.18.0.2:80"});
        let (pool, address) = ("web".to_owned(), "198.18.0.2:80".to_owned());
        for cmd in [
            BackendCommand::Add {
                pool: pool.clone(),
                address: address.clone(),
                weight: None,
            },
            BackendCommand::Drain {
                pool: pool.clone(),
                address: address.clone(),
            },
            BackendCommand::Remove { pool, address },
        ] {
            put(out, "backend", &backend_text(&cmd, &answer));
        }
    }

    fn explain_cases(out: &mut String) {
        for (client, subnet) in [
            (Some("198.18.0.7"), Some("198.18.0.0/24")),
            (Some("198.18.0.7"), None),
            (None, Some("198.18.0.0/24")),
            (None, None),
        ] {
            put(
                out,
                "explain dns",
                &explain_dns_text(&json!({
                    "name": "www.example.org.", "type": "A", "service": "dns",
                    "zone": "example.org.", "client": client, "subnet": subnet,
                    "pool": if client.is_some() { json!("web") } else { json!(null) },
                    "scheduler": "wrr", "eligible_backends": 2, "total_backends": 3,
                    "ttl": 30, "max_answers": 2, "decision": "answer",
                    "backends": [{"address": "198.18.0.2", "weight": 1, "state": "up"},
                                 {"address": "198.18.0.3", "weight": 2, "state": "down"}],
                    "reason": "weighted rotation",
                })),
            );
        }
        put(out, "explain dns bare", &explain_dns_text(&json!({})));
        let flows = [
            json!({"flow": {"client": "198.18.0.7:1234", "dst": "198.18.0.1:80",
                            "proto": "tcp", "service": "web"},
                   "pool": "web", "scheduler": "maglev", "eligible_backends": 2,
                   "total_backends": 3,
                   "persistence": {"configured": true, "hit": true, "backend": "198.18.0.2:80"},
                   "hash": {"key": "five_tuple", "hex": "0xdeadbeef", "value": 3_735_928_559_u64,
                            "words": [1, "x", 3]},
                   "table": {"kind": "maglev", "slot": 5, "size": 65537, "owner": "198.18.0.2:80"},
                   "backend": {"address": "198.18.0.2:80", "state": "up", "weight": 1,
                               "active_connections": 0},
                   "reason": "table"}),
            json!({"flow": {"client": "c", "dst": "d", "proto": "udp"},
                   "persistence": {"configured": true, "hit": false},
                   "table": {"kind": "ring_hash", "position": 1, "points": 10, "point": 77,
                             "owner": "o"}, "hash": {"key": "k"},
                   "reason": "ring"}),
            json!({"persistence": {"configured": false}, "table": {"kind": "sh", "slot": 1},
                   "backend": null}),
            json!({"table": {"kind": "rr"}}),
        ];
        for f in &flows {
            put(out, "explain", &explain_text(f));
        }
    }

    #[test]
    fn renderings_are_unchanged() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ctl_golden.txt");
        let got = rendered();
        if std::env::var_os("FULCRUM_BLESS").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).unwrap_or_default();
        assert!(got == want, "ctl's text differs from {path}:\n{got}");
    }
}
