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
    let announced = |name: &Value| -> String {
        let Some(a) = &announce else {
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
    let mut out = format!("{}: {}\n\n", api.url(), ready.trim());
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
    Ok(out + &dns_names_table(&services))
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
    let (v, what) = match cmd {
        BackendCommand::Add {
            pool,
            address,
            weight,
        } => {
            let body = weight.map_or_else(|| json!({}), |w| json!({ "weight": w }));
            let v = api.json("PUT", &path(pool, address), Some(&body))?;
            let b = &v["backend"];
            (
                v.clone(),
                format!(
                    "backend {} in pool {pool}: weight {}, state {}",
                    cell(&b["address"]),
                    cell(&b["weight"]),
                    cell(&b["state"])
                ),
            )
        }
        BackendCommand::Drain { pool, address } => {
            let v = api.json("POST", &(path(pool, address) + "/drain"), None)?;
            let b = &v["backend"];
            (
                v.clone(),
                format!(
                    "backend {} in pool {pool}: state {} (no new flows; {} open connections finish)",
                    cell(&b["address"]),
                    cell(&b["state"]),
                    cell(&b["active_connections"])
                ),
            )
        }
        BackendCommand::Remove { pool, address } => {
            let v = api.json("DELETE", &path(pool, address), None)?;
            (
                v.clone(),
                format!(
                    "backend {} removed from pool {pool} (open connections finish)",
                    cell(&v["removed"])
                ),
            )
        }
    };
    Ok(if as_json { pretty(&v) } else { what + "\n" })
}

#[allow(clippy::many_single_char_names)] // v and the sections of it: flow, persistence, hash, table, backend
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
