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
    match &args.command {
        CtlCommand::Status => status(&api, args.json),
        CtlCommand::Pools => {
            let v = api.json("GET", "/api/v1/pools", None)?;
            Ok(if args.json {
                pretty(&v)
            } else {
                pools_table(&v)
            })
        }
        CtlCommand::Backend(cmd) => backend(&api, cmd, args.json),
        CtlCommand::Reload => {
            let v = api.json("POST", "/api/v1/reload", None)?;
            Ok(if args.json {
                pretty(&v)
            } else {
                "reloaded: the config file is running (run-time changes ended)\n".into()
            })
        }
        CtlCommand::Explain {
            pool,
            client,
            dst,
            proto,
        } => {
            let mut q = format!("client={}", enc(client));
            if let Some(d) = dst {
                let _ = write!(q, "&dst={}", enc(d));
            }
            if let Some(p) = proto {
                let _ = write!(q, "&proto={}", enc(p));
            }
            let v = api.json(
                "GET",
                &format!("/api/v1/pools/{}/explain?{q}", enc(pool)),
                None,
            )?;
            Ok(if args.json {
                pretty(&v)
            } else {
                explain_text(&v)
            })
        }
        CtlCommand::ExplainDns {
            service,
            name,
            client,
            subnet,
            qtype,
        } => {
            let mut q = format!("name={}", enc(name));
            for (k, v) in [("client", client), ("subnet", subnet), ("type", qtype)] {
                if let Some(v) = v {
                    let _ = write!(q, "&{k}={}", enc(v));
                }
            }
            let v = api.json(
                "GET",
                &format!("/api/v1/services/{}/explain?{q}", enc(service)),
                None,
            )?;
            Ok(if args.json {
                pretty(&v)
            } else {
                explain_dns_text(&v)
            })
        }
        CtlCommand::Cluster => {
            let v = api.json("GET", "/api/v1/cluster", None)?;
            Ok(if args.json {
                pretty(&v)
            } else {
                cluster_text(&v)
            })
        }
        CtlCommand::Config => {
            let (_, body) = api.call("GET", "/api/v1/config", None)?;
            Ok(body)
        }
        CtlCommand::Instance(cmd) => {
            let (path, what) = match cmd {
                InstanceCommand::Drain => (
                    "/api/v1/instance/drain",
                    "instance drained: VIPs withdrawn, /readyz answers 503, established connections keep running",
                ),
                InstanceCommand::Undrain => (
                    "/api/v1/instance/undrain",
                    "instance undrained: VIPs that can be served are announced again",
                ),
            };
            let v = api.json("POST", path, None)?;
            Ok(if args.json {
                pretty(&v)
            } else {
                format!("{what}\n")
            })
        }
    }
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

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `ctl cluster`: a header, one row per member, then the disagreement.
fn cluster_text(v: &Value) -> String {
    let mut out = format!(
        "member {} prefix {} etcd {} newest revision {} running {}\n",
        cell(&v["member"]),
        cell(&v["prefix"]),
        if v["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "DISCONNECTED"
        },
        cell(&v["latest_revision"]),
        cell(&v["applied_revision"]),
    );
    if let Some(r) = v["refused"].as_object() {
        let _ = writeln!(
            out,
            "refused revision {}: {}",
            cell(&r["revision"]),
            r["error"].as_str().unwrap_or_default()
        );
    }
    let rows: Vec<Vec<String>> = v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let vips: Vec<&str> = m["announced"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            vec![
                cell(&m["member"]),
                cell(&m["address"]),
                cell(&m["version"]),
                cell(&m["applied_revision"]),
                if m["current"].as_bool() == Some(true) {
                    "yes".into()
                } else {
                    "NO".into()
                },
                if vips.is_empty() {
                    "-".into()
                } else {
                    vips.join(",")
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "MEMBER",
            "ADDRESS",
            "VERSION",
            "APPLIED",
            "CURRENT",
            "ANNOUNCED",
        ],
        &rows,
    ));
    let dis = v["disagreement"].as_array().map_or(&[][..], Vec::as_slice);
    if dis.is_empty() {
        out.push_str("every member runs the newest revision\n");
    } else {
        for d in dis {
            let _ = write!(
                out,
                "disagreement: {} runs revision {}",
                cell(&d["member"]),
                cell(&d["applied_revision"])
            );
            match d["refused"].as_str() {
                Some(why) => {
                    let _ = writeln!(out, ", refused the newest: {why}");
                }
                None => out.push('\n'),
            }
        }
    }
    for m in v["members"].as_array().into_iter().flatten() {
        for r in m["registry_refused"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "registration refused by {}: pool {} key {} ({}, revision {}): {}",
                cell(&m["member"]),
                cell(&r["pool"]),
                cell(&r["key"]),
                cell(&r["reason"]),
                cell(&r["revision"]),
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
    let members: Vec<&str> = h["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
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
    let rows: Vec<Vec<String>> = h["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let mut row = vec![
                cell(&b["pool"]),
                cell(&b["backend"]),
                cell(&b["fleet"]).to_uppercase(),
                format!("{}/{}", cell(&b["votes"]["up"]), cell(&b["votes"]["down"])),
            ];
            row.extend(members.iter().map(|m| cell(&b["members"][*m])));
            row
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
    let ejected: Vec<String> = h["ejected_locally"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{} {}", cell(&e[0]), cell(&e[1])))
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
    let mut rows = Vec::new();
    for p in v["pools"].as_array().into_iter().flatten() {
        for b in p["backends"].as_array().into_iter().flatten() {
            rows.push(vec![
                cell(&p["name"]),
                cell(&p["scheduler"]),
                cell(&b["address"]),
                cell(&b["weight"]),
                cell(&b["state"]),
                cell(&b["active_connections"]),
                cell(&b["total_connections"]),
            ]);
        }
    }
    table(
        &[
            "POOL",
            "SCHEDULER",
            "BACKEND",
            "WEIGHT",
            "STATE",
            "ACTIVE",
            "TOTAL",
        ],
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
    let announced = |name: &Value| -> String {
        let Some(a) = announce else {
            return "-".into();
        };
        if a["speaker"].is_null() {
            return "-".into();
        }
        a["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| &s["service"] == name)
            .map_or_else(
                || "-".into(),
                |s| {
                    if s["announced"] == true {
                        "yes".into()
                    } else {
                        "no".into()
                    }
                },
            )
    };
    let mut out = format!("{url}: {}\n\n", ready.trim());
    let rows: Vec<Vec<String>> = services["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                cell(&s["name"]),
                cell(&s["listen"]),
                cell(&s["protocol"]),
                cell(&s["forward"]),
                cell(&s["pool"]),
                cell(&s["active_connections"]),
                cell(&s["total_connections"]),
                announced(&s["name"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SERVICE",
            "LISTEN",
            "PROTOCOL",
            "FORWARD",
            "POOL",
            "ACTIVE",
            "TOTAL",
            "ANNOUNCED",
        ],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<Vec<String>> = pools["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let bs = p["backends"].as_array().cloned().unwrap_or_default();
            let count = |st: &str| bs.iter().filter(|b| b["state"] == st).count().to_string();
            vec![
                cell(&p["name"]),
                cell(&p["scheduler"]),
                bs.len().to_string(),
                count("up"),
                count("down"),
                count("draining"),
                count("ejected"),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "POOL",
            "SCHEDULER",
            "BACKENDS",
            "UP",
            "DOWN",
            "DRAINING",
            "EJECTED",
        ],
        &rows,
    ));
    out + &dns_names_table(services)
}

/// The names of the dns services in `GET /api/v1/services` (empty: none).
fn dns_names_table(services: &Value) -> String {
    let rows: Vec<Vec<String>> = services["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            let origin = cell(&s["dns"]["origin"]);
            s["dns"]["names"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |n| {
                    vec![
                        cell(&s["name"]),
                        origin.clone(),
                        cell(&n["name"]),
                        cell(&n["pool"]),
                        format!("{}s", cell(&n["ttl"])),
                        cell(&n["max_answers"]),
                    ]
                })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n{}",
        table(
            &["DNS SERVICE", "ZONE", "NAME", "POOL", "TTL", "MAX ANSWERS"],
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
    let b = &v["backend"];
    match cmd {
        BackendCommand::Add { pool, .. } => format!(
            "backend {} in pool {pool}: weight {}, state {}\n",
            cell(&b["address"]),
            cell(&b["weight"]),
            cell(&b["state"])
        ),
        BackendCommand::Drain { pool, .. } => format!(
            "backend {} in pool {pool}: state {} (no new flows; {} open connections finish)\n",
            cell(&b["address"]),
            cell(&b["state"]),
            cell(&b["active_connections"])
        ),
        BackendCommand::Remove { pool, .. } => format!(
            "backend {} removed from pool {pool} (open connections finish)\n",
            cell(&v["removed"])
        ),
    }
}

#[allow(clippy::many_single_char_names)] // v and the sections of it: flow, persistence, hash, table, backend
fn explain_dns_text(v: &Value) -> String {
    let mut out = String::new();
    let who = match (v["client"].as_str(), v["subnet"].as_str()) {
        (Some(c), Some(s)) => format!(" from {c} (ECS {s})"),
        (Some(c), None) => format!(" from {c}"),
        (None, Some(s)) => format!(" (ECS {s})"),
        (None, None) => String::new(),
    };
    let _ = writeln!(
        out,
        "query      {} {}{who} (service {}, zone {})",
        cell(&v["name"]),
        cell(&v["type"]),
        cell(&v["service"]),
        cell(&v["zone"])
    );
    if v["pool"].is_string() {
        let _ = writeln!(
            out,
            "pool       {} (scheduler {}, {} of {} backends up), ttl {} s, max {} answers",
            cell(&v["pool"]),
            cell(&v["scheduler"]),
            cell(&v["eligible_backends"]),
            cell(&v["total_backends"]),
            cell(&v["ttl"]),
            cell(&v["max_answers"])
        );
    }
    let _ = writeln!(out, "decision   {}", cell(&v["decision"]));
    for b in v["backends"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "backend    {} (weight {}, {})",
            cell(&b["address"]),
            cell(&b["weight"]),
            cell(&b["state"])
        );
    }
    let _ = writeln!(out, "reason     {}", cell(&v["reason"]));
    out
}

#[allow(clippy::many_single_char_names)] // v, f, p...: the JSON sections it prints
fn explain_text(v: &Value) -> String {
    let mut out = String::new();
    let f = &v["flow"];
    let _ = writeln!(
        out,
        "flow       {} -> {} ({}{})",
        cell(&f["client"]),
        cell(&f["dst"]),
        cell(&f["proto"]),
        f["service"]
            .as_str()
            .map(|s| format!(", service {s}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "pool       {} (scheduler {}, {} of {} backends take new flows)",
        cell(&v["pool"]),
        cell(&v["scheduler"]),
        cell(&v["eligible_backends"]),
        cell(&v["total_backends"])
    );
    let p = &v["persistence"];
    if p["configured"] == true {
        let hit = if p["hit"] == true {
            format!("hit: {}", cell(&p["backend"]))
        } else {
            "miss".into()
        };
        let _ = writeln!(out, "persistence {hit}");
    } else {
        let _ = writeln!(out, "persistence not configured");
    }
    let h = &v["hash"];
    if h.is_object() {
        let words = h["words"]
            .as_array()
            .map(|w| w.iter().map(cell).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "hash       {} = {} ({}) over [{words}]",
            cell(&h["key"]),
            cell(&h["hex"]),
            cell(&h["value"])
        );
    }
    let t = &v["table"];
    match t["kind"].as_str() {
        Some("maglev" | "sh") => {
            let _ = writeln!(
                out,
                "table      slot {} of {} -> {}",
                cell(&t["slot"]),
                cell(&t["size"]),
                cell(&t["owner"])
            );
        }
        Some("ring_hash") => {
            let _ = writeln!(
                out,
                "ring       position {} of {} points (point {}) -> {}",
                cell(&t["position"]),
                cell(&t["points"]),
                cell(&t["point"]),
                cell(&t["owner"])
            );
        }
        _ => {}
    }
    let b = &v["backend"];
    if b.is_object() {
        let _ = writeln!(
            out,
            "backend    {} (state {}, weight {}, {} active)",
            cell(&b["address"]),
            cell(&b["state"]),
            cell(&b["weight"]),
            cell(&b["active_connections"])
        );
    } else {
        let _ = writeln!(out, "backend    -");
    }
    let _ = writeln!(out, "why        {}", cell(&v["reason"]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every text rendering of `ctl` over answers that take each branch: the output is
    /// user-facing, so it is compared byte for byte with `ctl_golden.txt`
    /// (`FULCRUM_BLESS=1` rewrites that file from the current code).
    fn rendered() -> String {
        let mut out = String::new();
        let mut put = |name: &str, text: String| {
            let _ = write!(out, "==== {name}\n{text}");
        };
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
            "cluster full",
            cluster_text(&json!({
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
                source,
                cluster_text(&json!({
                    "member": "a", "prefix": "/f", "connected": false, "latest_revision": 0,
                    "applied_revision": 0, "refused": null, "members": [], "disagreement": [],
                    "health": {"members": [], "source": source, "health_quorum": 1,
                               "backends": [], "ejected_locally": []},
                })),
            );
        }
        put("cluster bare", cluster_text(&json!({"member": "a"})));
        let pools = json!({"pools": [
            {"name": "web", "scheduler": "maglev", "backends": [
                {"address": "198.18.0.2:80", "weight": 1, "state": "up",
                 "active_connections": 3, "total_connections": 10},
                {"address": "198.18.0.3:80", "weight": 20, "state": "draining",
                 "active_connections": 0, "total_connections": 1234567},
                {"address": "198.18.0.4:80", "weight": 0, "state": "down"},
                {"address": "198.18.0.5:80", "weight": 1, "state": "ejected"}]},
            {"name": "empty", "scheduler": "rr", "backends": []},
            {"name": "x", "scheduler": null, "backends": [{"address": "198.18.0.9:53"}]}]});
        put("pools", pools_table(&pools));
        put("pools none", pools_table(&json!({"pools": []})));
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
                &format!("status {name}"),
                status_text("http://127.0.0.1:9090", "ready\n", &services, &pools, a),
            );
        }
        put(
            "status empty",
            status_text("u", "not ready", &json!({}), &json!({}), None),
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
            put("backend", backend_text(&cmd, &answer));
        }
        for (client, subnet) in [
            (Some("198.18.0.7"), Some("198.18.0.0/24")),
            (Some("198.18.0.7"), None),
            (None, Some("198.18.0.0/24")),
            (None, None),
        ] {
            put(
                "explain dns",
                explain_dns_text(&json!({
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
        put("explain dns bare", explain_dns_text(&json!({})));
        let flows = [
            json!({"flow": {"client": "198.18.0.7:1234", "dst": "198.18.0.1:80",
                            "proto": "tcp", "service": "web"},
                   "pool": "web", "scheduler": "maglev", "eligible_backends": 2,
                   "total_backends": 3,
                   "persistence": {"configured": true, "hit": true, "backend": "198.18.0.2:80"},
                   "hash": {"key": "five_tuple", "hex": "0xdeadbeef", "value": 3735928559_u64,
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
            put("explain", explain_text(f));
        }
        out
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
