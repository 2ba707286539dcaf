//! `fulcrum adm …`: ipvsadm's vocabulary on top of the admin API, for people who know LVS.
//!
//! The command line is parsed by hand (ipvsadm's grammar — `-A -t VIP:PORT -s rr`, `-Ln`,
//! `-p` with an optional value — does not fit clap). Each command becomes admin API calls
//! over plain HTTP/1.1; `-L` output is laid out byte for byte as ipvsadm 1.31 prints it
//! (`print_title`, `print_service_entry`, `print_largenum`), so scripts that parse it keep
//! working. See docs/adm.md for the mapping and what is not supported.
//!
//! Exit codes follow the contract: 0 success, 1 a refused or failed operation (ipvsadm
//! itself exits 255 there), 2 bad usage (as ipvsadm).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api_client::{self, Client, Endpoint, UrlError};
use crate::fail::{Fail, EXIT_FAILURE, EXIT_USAGE};

/// Arguments of `fulcrum adm`: everything after `adm`, parsed by [`parse`].
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct AdmArgs {
    /// ipvsadm arguments, e.g. `-A -t 127.0.0.1:80 -s rr`, `-L -n`; `-h` for help.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";
/// ipvsadm's default persistence timeout (`-p` without a value).
const DEFAULT_PERSISTENCE: u32 = 300;
/// ipvsadm's default scheduler (`-A`/`-E` without `-s`).
const DEFAULT_SCHEDULER: &str = "wlc";

/// An ipvsadm-style usage error: the message and where to find help.
fn usage_err(msg: impl Into<String>) -> Fail {
    Fail(
        EXIT_USAGE,
        format!(
            "{}\nTry `fulcrum adm -h' or 'fulcrum adm --help' for more information.",
            msg.into()
        ),
    )
}

fn op_err(msg: impl Into<String>) -> Fail {
    Fail(EXIT_FAILURE, msg.into())
}

/// The command flag (`-A`, `-L`, …) as the parser meets it; ipvsadm's name for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    AddService,
    EditService,
    DelService,
    Clear,
    AddServer,
    EditServer,
    DelServer,
    List,
    Help,
}

impl Cmd {
    const fn name(self) -> &'static str {
        match self {
            Self::AddService => "add-service",
            Self::EditService => "edit-service",
            Self::DelService => "delete-service",
            Self::Clear => "clear",
            Self::AddServer => "add-server",
            Self::EditServer => "edit-server",
            Self::DelServer => "delete-server",
            Self::List => "list",
            Self::Help => "help",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    const fn api(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// `-g`, `-i`, `-m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    Gate,
    Ipip,
    Masq,
}

/// A virtual service: `-t|-u VIP:PORT`.
pub type Service = (Proto, SocketAddr);

/// What `-a`/`-e`/`-d` act on: `-t|-u service -r real [-g|-i|-m]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Destination {
    pub service: Service,
    pub real: SocketAddr,
    /// `None`: whatever the service's forward mode is.
    pub fwd: Option<Fwd>,
}

/// A parsed command line: the command, and where the admin API is.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub command: Command,
    /// `--admin`; `None`: `$FULCRUM_ADMIN`, else [`DEFAULT_ADMIN`].
    pub admin: Option<String>,
    /// `--token-file`; `None`: `$FULCRUM_TOKEN_FILE`, else no token.
    pub token_file: Option<PathBuf>,
}

/// One ipvsadm command with exactly the options it takes (`generic_opt_check` has run:
/// a required option is there, an illegal one cannot be).
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `-L [-t|u service] [-n] [--stats|--rate] [--exact]` (`-n`: output is always numeric).
    List {
        service: Option<Service>,
        format: Format,
        exact: bool,
    },
    /// `-A service [-s scheduler] [-p [timeout]]`.
    AddService {
        service: Service,
        scheduler: String,
        persistent: Option<u32>,
    },
    /// `-E service [-s scheduler] [-p [timeout]]` (no `-s`: ipvsadm's default again).
    EditService {
        service: Service,
        scheduler: String,
        persistent: Option<u32>,
    },
    /// `-D service`.
    DelService { service: Service },
    /// `-a service -r real [-g|i|m] [-w weight]` (weight 1 when not given).
    AddServer { dest: Destination, weight: u16 },
    /// `-e service -r real [-g|i|m] [-w weight]` (no `-w`: the weight stays).
    EditServer {
        dest: Destination,
        weight: Option<u16>,
    },
    /// `-d service -r real [-g|i|m]`.
    DelServer { dest: Destination },
    /// `-C`.
    Clear,
    /// `-h`.
    Help,
}

/// The options as they come, in any order (ipvsadm's flags are booleans); [`Opts::command`]
/// makes the [`Command`].
#[derive(Debug, Default)]
#[allow(clippy::struct_excessive_bools)]
struct Opts {
    cmd: Option<Cmd>,
    service: Option<Service>,
    scheduler: Option<String>,
    persistent: Option<u32>,
    real: Option<SocketAddr>,
    fwd: Option<Fwd>,
    weight: Option<u16>,
    numeric: bool,
    stats: bool,
    rate: bool,
    exact: bool,
    admin: Option<String>,
    token_file: Option<PathBuf>,
}

/// Splits `-Ln` into `-L -n` (short flags without values only).
fn expand(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        let flags = a.strip_prefix('-').filter(|r| {
            r.len() > 1 && !r.starts_with('-') && r.chars().all(|c| "AEDCaedLlnghimZ".contains(c))
        });
        match flags {
            Some(r) => out.extend(r.chars().map(|c| format!("-{c}"))),
            None => out.push(a.clone()),
        }
    }
    out
}

/// Parses `VIP:PORT` (`[IPv6]:PORT`) as ipvsadm does, numeric only.
fn parse_addr(s: &str, what: &str) -> Result<SocketAddr, Fail> {
    s.parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)
        .ok_or_else(|| usage_err(format!("illegal {what} address[:port] specified")))
}

/// Parses the command line (without the leading `adm`).
pub fn parse(args: &[String]) -> Result<Parsed, Fail> {
    let mut o = accumulate(args)?;
    let admin = o.admin.take();
    let token_file = o.token_file.take();
    Ok(Parsed {
        command: o.command()?,
        admin,
        token_file,
    })
}

/// Reads the options, in any order, into [`Opts`]; rejects what ipvsadm rejects on sight
/// (a bad value, a second command, an unsupported one).
fn accumulate(args: &[String]) -> Result<Opts, Fail> {
    let args = expand(args);
    let mut o = Opts::default();
    let mut it = args.iter().peekable();
    let set_cmd = |o: &mut Opts, c: Cmd| {
        if o.cmd.is_some() {
            return Err(usage_err("multiple commands specified"));
        }
        o.cmd = Some(c);
        Ok(())
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| usage_err(format!("option {name} requires an argument")))
        };
        match a.as_str() {
            "-A" | "--add-service" => set_cmd(&mut o, Cmd::AddService)?,
            "-E" | "--edit-service" => set_cmd(&mut o, Cmd::EditService)?,
            "-D" | "--delete-service" => set_cmd(&mut o, Cmd::DelService)?,
            "-C" | "--clear" => set_cmd(&mut o, Cmd::Clear)?,
            "-a" | "--add-server" => set_cmd(&mut o, Cmd::AddServer)?,
            "-e" | "--edit-server" => set_cmd(&mut o, Cmd::EditServer)?,
            "-d" | "--delete-server" => set_cmd(&mut o, Cmd::DelServer)?,
            "-L" | "-l" | "--list" => set_cmd(&mut o, Cmd::List)?,
            "-h" | "--help" => set_cmd(&mut o, Cmd::Help)?,
            "-t" | "--tcp-service" | "-u" | "--udp-service" => {
                if o.service.is_some() {
                    return Err(usage_err("multiple service type specified"));
                }
                let proto = if a.starts_with("-t") || a == "--tcp-service" {
                    Proto::Tcp
                } else {
                    Proto::Udp
                };
                let v = value(a)?;
                o.service = Some((proto, parse_addr(&v, "virtual server")?));
            }
            "-s" | "--scheduler" => o.scheduler = Some(value(a)?),
            "-p" | "--persistent" => {
                // The timeout is optional, as in ipvsadm.
                let t = match it.peek() {
                    Some(v) if !v.starts_with('-') => {
                        let v = it.next().cloned().unwrap_or_default();
                        v.parse::<u32>()
                            .ok()
                            .filter(|t| *t > 0)
                            .ok_or_else(|| usage_err("illegal timeout value specified"))?
                    }
                    _ => DEFAULT_PERSISTENCE,
                };
                o.persistent = Some(t);
            }
            "-r" | "--real-server" => {
                let v = value(a)?;
                o.real = Some(parse_addr(&v, "real server")?);
            }
            "-g" | "--gatewaying" | "-i" | "--ipip" | "-m" | "--masquerading" => {
                let f = match a.as_str() {
                    "-g" | "--gatewaying" => Fwd::Gate,
                    "-i" | "--ipip" => Fwd::Ipip,
                    _ => Fwd::Masq,
                };
                if o.fwd.is_some_and(|x| x != f) {
                    return Err(usage_err("multiple forwarding methods specified"));
                }
                o.fwd = Some(f);
            }
            "-w" | "--weight" => {
                let v = value(a)?;
                o.weight = Some(
                    v.parse::<u16>()
                        .map_err(|_| usage_err("illegal weight specified"))?,
                );
            }
            "-n" | "--numeric" => o.numeric = true,
            "--stats" => o.stats = true,
            "--rate" => o.rate = true,
            "--exact" | "-X" => o.exact = true,
            "--admin" => o.admin = Some(value(a)?),
            "--token-file" => o.token_file = Some(PathBuf::from(value(a)?)),
            "-f" | "--fwmark-service" => {
                return Err(usage_err(
                    "fwmark services are not supported by fulcrum adm (use -t or -u)",
                ))
            }
            "-Z" | "--zero" | "-R" | "--restore" | "-S" | "--save" | "--set" | "--start-daemon"
            | "--stop-daemon" | "-c" | "--connection" | "--timeout" | "--daemon" => {
                return Err(usage_err(format!(
                    "the {a} command is not supported by fulcrum adm"
                )))
            }
            other => return Err(usage_err(format!("invalid option -- {other}"))),
        }
    }
    Ok(o)
}

impl Opts {
    /// ipvsadm's `generic_opt_check` (required and illegal options per command, in its
    /// order), then the command with what it carries. No command is `-L`.
    fn command(self) -> Result<Command, Fail> {
        let cmd = self.cmd.unwrap_or(Cmd::List);
        let need = |opt: &str| {
            usage_err(format!(
                "You need to supply the '{opt}' option for the '{}' command",
                cmd.name()
            ))
        };
        let illegal = |bad: bool, opt: &str| {
            if bad {
                Err(usage_err(format!(
                    "Illegal '{opt}' option with the '{}' command",
                    cmd.name()
                )))
            } else {
                Ok(())
            }
        };
        let service_opts = self.scheduler.is_some() || self.persistent.is_some();
        let server_opts = self.real.is_some() || self.fwd.is_some() || self.weight.is_some();
        let list_opts = self.numeric || self.stats || self.rate || self.exact;
        Ok(match cmd {
            Cmd::AddService | Cmd::EditService => {
                let service = self.service.ok_or_else(|| need("service-address"))?;
                illegal(server_opts, "real-server")?;
                illegal(list_opts, "numeric")?;
                let scheduler = self
                    .scheduler
                    .unwrap_or_else(|| DEFAULT_SCHEDULER.to_owned());
                let persistent = self.persistent;
                if cmd == Cmd::AddService {
                    Command::AddService {
                        service,
                        scheduler,
                        persistent,
                    }
                } else {
                    Command::EditService {
                        service,
                        scheduler,
                        persistent,
                    }
                }
            }
            Cmd::DelService => {
                let service = self.service.ok_or_else(|| need("service-address"))?;
                illegal(service_opts, "scheduler")?;
                illegal(server_opts, "real-server")?;
                illegal(list_opts, "numeric")?;
                Command::DelService { service }
            }
            Cmd::AddServer | Cmd::EditServer | Cmd::DelServer => {
                let service = self.service.ok_or_else(|| need("service-address"))?;
                let real = self.real.ok_or_else(|| need("real-server"))?;
                illegal(service_opts, "scheduler")?;
                illegal(cmd == Cmd::DelServer && self.weight.is_some(), "weight")?;
                illegal(list_opts, "numeric")?;
                let dest = Destination {
                    service,
                    real,
                    fwd: self.fwd,
                };
                match cmd {
                    Cmd::AddServer => Command::AddServer {
                        dest,
                        weight: self.weight.unwrap_or(1),
                    },
                    Cmd::EditServer => Command::EditServer {
                        dest,
                        weight: self.weight,
                    },
                    _ => Command::DelServer { dest },
                }
            }
            Cmd::Clear | Cmd::Help => {
                illegal(self.service.is_some(), "service-address")?;
                illegal(service_opts || server_opts || list_opts, "numeric")?;
                if cmd == Cmd::Clear {
                    Command::Clear
                } else {
                    Command::Help
                }
            }
            Cmd::List => {
                illegal(service_opts || server_opts, "scheduler")?;
                illegal(self.stats && self.rate, "rate")?;
                let format = if self.stats {
                    Format::Stats
                } else if self.rate {
                    Format::Rate
                } else {
                    Format::Plain
                };
                Command::List {
                    service: self.service,
                    format,
                    exact: self.exact,
                }
            }
        })
    }
}

/// ipvsadm scheduler name -> Fulcrum's; `None`: a scheduler Fulcrum does not have.
pub fn scheduler_to_fulcrum(s: &str) -> Option<&'static str> {
    Some(match s {
        "rr" => "rr",
        "wrr" => "wrr",
        "lc" => "lc",
        "wlc" => "wlc",
        "sh" => "sh",
        "mh" | "maglev" => "maglev",
        // Fulcrum's own, beyond ipvsadm's list.
        "random" => "random",
        "p2c" | "twos" => "p2c",
        "ring_hash" => "ring_hash",
        "least_request" => "least_request",
        "peak_ewma" => "peak_ewma",
        "predictive" => "predictive",
        _ => return None,
    })
}

/// Fulcrum scheduler name -> what `-L` shows (ipvsadm's names where one exists).
pub fn scheduler_to_ipvs(s: &str) -> &str {
    match s {
        "maglev" => "mh",
        other => other,
    }
}

/// The `Forward` column for a service's `forward` mode.
pub fn forward_name(forward: &str) -> &'static str {
    match forward {
        "dsr" => "Route",
        "tunnel" => "Tunnel",
        // proxy and nat both rewrite the destination and see the replies: LVS's Masq.
        _ => "Masq",
    }
}

fn forward_matches(f: Fwd, forward: &str) -> bool {
    match f {
        Fwd::Gate => forward == "dsr",
        Fwd::Ipip => forward == "tunnel",
        Fwd::Masq => forward == "proxy" || forward == "nat",
    }
}

// ----------------------------------------------------------------------------------------
// the -L formatter (ipvsadm.c, byte for byte)
// ----------------------------------------------------------------------------------------

/// One real server as `-L` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub addr: SocketAddr,
    pub forward: &'static str,
    pub weight: u32,
    pub active: u64,
    pub inactive: u64,
    pub conns: u64,
    pub cps: u64,
}

/// One virtual service as `-L` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub scheduler: String,
    pub persistent: Option<u32>,
    pub dests: Vec<Dest>,
}

/// What `-L` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Stats,
    Rate,
}

/// `print_largenum`.
fn largenum(out: &mut String, i: u64, exact: bool) {
    if exact {
        let len = i.to_string().len();
        let w = if len <= 8 { 9 } else { len + 1 };
        let _ = write!(out, "{i:>w$}");
    } else if i < 100_000_000 {
        let _ = write!(out, "{i:>9}");
    } else if i < 1_000_000_000 {
        let _ = write!(out, "{:>8}K", i / 1000);
    } else if i < 100_000_000_000 {
        let _ = write!(out, "{:>8}M", i / 1_000_000);
    } else if i < 100_000_000_000_000 {
        let _ = write!(out, "{:>8}G", i / 1_000_000_000);
    } else {
        let _ = write!(out, "{:>8}T", i / 1_000_000_000_000);
    }
}

fn truncate(mut s: String, n: usize) -> String {
    s.truncate(n);
    s
}

/// `print_title`.
pub fn title(f: Format) -> String {
    match f {
        Format::Stats => format!(
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port\n",
            "Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
        ),
        Format::Rate => format!(
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port\n",
            "Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
        ),
        Format::Plain => "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n".to_owned(),
    }
}

/// `print_service_entry` (numeric, sorted destinations).
pub fn service_entry(s: &Svc, f: Format, exact: bool) -> String {
    let mut out = String::new();
    let proto = match s.proto {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    };
    let v6 = s.addr.is_ipv6();
    let mut name = format!("{proto}  {}", s.addr);
    if !v6 {
        name = truncate(name, 33);
    }
    let mut dests = s.dests.clone();
    dests.sort_by_key(|d| d.addr);
    match f {
        Format::Plain => {
            let _ = write!(out, "{name} {}", s.scheduler);
            if let Some(t) = s.persistent {
                let _ = write!(out, " persistent {t}");
            }
        }
        Format::Stats => {
            let _ = write!(out, "{name:<33}");
            let conns = dests.iter().map(|d| d.conns).sum();
            for v in [conns, 0, 0, 0, 0] {
                largenum(&mut out, v, exact);
            }
        }
        Format::Rate => {
            let _ = write!(out, "{name:<33}");
            let cps = dests.iter().map(|d| d.cps).sum();
            for v in [cps, 0, 0, 0, 0] {
                largenum(&mut out, v, exact);
            }
        }
    }
    out.push('\n');
    for d in &dests {
        let mut dname = d.addr.to_string();
        if !v6 {
            dname = truncate(dname, 28);
        }
        match f {
            Format::Plain => {
                let _ = writeln!(
                    out,
                    "  -> {dname:<28} {:<7} {:<6} {:<10} {:<10}",
                    d.forward, d.weight, d.active, d.inactive
                );
            }
            Format::Stats => {
                let _ = write!(out, "  -> {dname:<28}");
                for v in [d.conns, 0, 0, 0, 0] {
                    largenum(&mut out, v, exact);
                }
                out.push('\n');
            }
            Format::Rate => {
                let _ = write!(out, "  -> {dname:<28} {:>8} {:>8} {:>8}", d.cps, 0, 0);
                largenum(&mut out, 0, exact);
                largenum(&mut out, 0, exact);
                out.push('\n');
            }
        }
    }
    out
}

/// `list_all`: the version line, the title and every service (sorted as ipvsadm sorts:
/// protocol number, then address, then port).
pub fn list_all(svcs: &[Svc], f: Format, exact: bool) -> String {
    let mut out = String::from("IP Virtual Server version 1.2.1 (size=4096)\n");
    out.push_str(&title(f));
    let mut v: Vec<&Svc> = svcs.iter().collect();
    v.sort_by_key(|s| (s.proto == Proto::Udp, s.addr.is_ipv6(), s.addr));
    for s in v {
        out.push_str(&service_entry(s, f, exact));
    }
    out
}

// ----------------------------------------------------------------------------------------
// the admin API (through the command line's one client, crate::api_client)
// ----------------------------------------------------------------------------------------

/// The admin API, with ipvsadm's wording of its failures.
struct Api(Client);

/// An answer: status and parsed JSON body (`Value::Null` when not JSON).
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn error_text(&self) -> String {
        self.body["error"]
            .as_str()
            .map_or_else(|| self.body.to_string(), str::to_owned)
    }
}

fn cannot_reach(url: &str, e: &dyn std::fmt::Display) -> Fail {
    op_err(format!(
        "Can't initialize ipvs: cannot reach Fulcrum's admin API at {url}: {e}\n\
         Are you sure that `fulcrum run` is running with this [admin] listen address (see --admin)?"
    ))
}

impl Api {
    fn new(url: &str, token_file: Option<&PathBuf>) -> Result<Self, Fail> {
        let endpoint = Endpoint::parse(url).map_err(|e| match e {
            UrlError::NotHttp => usage_err(format!(
                "--admin {url}: only http://HOST:PORT URLs are supported"
            )),
            UrlError::Resolve(host, _) => {
                usage_err(format!("--admin {url}: cannot resolve {host}"))
            }
        })?;
        let token = match token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| op_err(format!("cannot read {}: {e}", p.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let client = Client::new(endpoint, token, "fulcrum-adm")
            .map_err(|e| cannot_reach(url, &e))?
            .timeouts(Duration::from_secs(5), Duration::from_secs(30));
        Ok(Self(client))
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, Fail> {
        let a = self.0.call(method, path, body).map_err(|e| match e {
            api_client::Error::Malformed(_) => {
                op_err(format!("{method} {path}: malformed HTTP answer"))
            }
            api_client::Error::Unreachable(e) => cannot_reach(&self.0.endpoint.url, &e),
        })?;
        if a.status == 401 {
            return Err(op_err(format!(
                "Permission denied (you must be root)\n\
                 (the admin API refused the token: give the right one with --token-file; {method} {path})"
            )));
        }
        Ok(Answer {
            status: a.status,
            body: serde_json::from_slice(&a.body).unwrap_or(Value::Null),
        })
    }

    fn get(&self, path: &str) -> Result<Value, Fail> {
        let a = self.call("GET", path, None)?;
        if a.status != 200 {
            return Err(op_err(format!(
                "GET {path}: {} {}",
                a.status,
                a.error_text()
            )));
        }
        Ok(a.body)
    }
}

/// Percent-encodes what may not stand in a path segment (IPv6 brackets, `%`, `/`).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '[' => out.push_str("%5B"),
            ']' => out.push_str("%5D"),
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

/// The name `-A` gives a service and its pool: `tcp-127.0.0.1-80`.
pub fn generated_name(proto: Proto, addr: SocketAddr) -> String {
    format!("{}-{}-{}", proto.api(), addr.ip(), addr.port())
}

/// A running service as the API lists it.
#[derive(Debug, Clone)]
struct RunningSvc {
    name: String,
    proto: Proto,
    listen: SocketAddr,
    forward: String,
    pool: String,
}

fn services(api: &Api) -> Result<Vec<RunningSvc>, Fail> {
    let v = api.get("/api/v1/services")?;
    let list = v["services"].as_array().cloned().unwrap_or_default();
    Ok(list
        .iter()
        .flat_map(|s| {
            // A dns service listens on UDP and TCP: two virtual services, as ipvsadm would
            // list them.
            let protos: &[Proto] = match s["protocol"].as_str() {
                Some("udp") => &[Proto::Udp],
                Some("dns") => &[Proto::Udp, Proto::Tcp],
                _ => &[Proto::Tcp],
            };
            protos.iter().filter_map(move |&proto| {
                Some(RunningSvc {
                    name: s["name"].as_str()?.to_owned(),
                    proto,
                    listen: s["listen"].as_str()?.parse().ok()?,
                    forward: s["forward"].as_str().unwrap_or("proxy").to_owned(),
                    pool: s["pool"].as_str()?.to_owned(),
                })
            })
        })
        .collect())
}

fn find_service(api: &Api, proto: Proto, addr: SocketAddr) -> Result<Option<RunningSvc>, Fail> {
    Ok(services(api)?
        .into_iter()
        .find(|s| s.proto == proto && s.listen == addr))
}

/// The pool's backends as `(address, weight)`.
fn pool_backends(api: &Api, pool: &str) -> Result<Vec<(SocketAddr, u64)>, Fail> {
    let v = api.get(&format!("/api/v1/pools/{}", seg(pool)))?;
    Ok(v["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|b| {
            Some((
                b["address"].as_str()?.parse().ok()?,
                b["weight"].as_u64().unwrap_or(1),
            ))
        })
        .collect())
}

/// Maps a failed mutation to ipvsadm's message for the command.
fn mutation(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<&Value>,
    not_found: &str,
) -> Result<(), Fail> {
    let a = api.call(method, path, body)?;
    match a.status {
        200..=299 => Ok(()),
        405 => Err(op_err(format!(
            "Invalid operation: this Fulcrum has no {method} {} endpoint (405)",
            path.split('/').take(4).collect::<Vec<_>>().join("/")
        ))),
        404 if a.error_text().contains("no such endpoint") => Err(op_err(format!(
            "Invalid operation: this Fulcrum has no {method} {} endpoint ({})",
            path.split('/').take(4).collect::<Vec<_>>().join("/"),
            a.error_text()
        ))),
        404 => Err(op_err(not_found.to_owned())),
        409 => Err(op_err(format!("Invalid operation: {}", a.error_text()))),
        s => Err(op_err(format!(
            "Invalid operation ({method} {path}: {s} {})",
            a.error_text()
        ))),
    }
}

fn pool_body(sched: &str, persistent: Option<u32>) -> Result<Value, Fail> {
    let Some(f) = scheduler_to_fulcrum(sched) else {
        return Err(op_err(format!(
            "Scheduler or persistence engine not found\n\
             (fulcrum has no `{sched}` scheduler; available: rr wrr lc wlc sh mh, and random p2c ring_hash least_request peak_ewma predictive)"
        )));
    };
    let mut b = json!({ "scheduler": f });
    if let Some(t) = persistent {
        b["persistence"] = json!(format!("{t}s"));
    }
    Ok(b)
}

/// A non-empty environment variable (`FULCRUM_ADMIN`, `FULCRUM_TOKEN_FILE`): the default
/// of the flag of the same meaning.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `DELETE /api/v1/services/{name}`.
fn delete_service(api: &Api, name: &str) -> Result<(), Fail> {
    mutation(
        api,
        "DELETE",
        &format!("/api/v1/services/{}", seg(name)),
        None,
        "No such service",
    )
}

/// `PUT` of a backend (`path`) with `weight`.
fn put_weight(
    api: &Api,
    path: &str,
    weight: impl Into<u64>,
    not_found: &str,
) -> Result<String, Fail> {
    let body = json!({ "weight": weight.into() });
    mutation(api, "PUT", path, Some(&body), not_found)?;
    Ok(String::new())
}

/// One match arm per ipvsadm command, each a few API calls.
fn run_command(p: &Parsed) -> Result<String, Fail> {
    if p.command == Command::Help {
        return Ok(HELP.to_owned());
    }
    let url = p
        .admin
        .clone()
        .or_else(|| env_value("FULCRUM_ADMIN"))
        .unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
    let token_file = p
        .token_file
        .clone()
        .or_else(|| env_value("FULCRUM_TOKEN_FILE").map(PathBuf::from));
    let api = Api::new(&url, token_file.as_ref())?;
    match &p.command {
        Command::Help => Ok(HELP.to_owned()),
        Command::List {
            service,
            format,
            exact,
        } => list(&api, *service, *format, *exact),
        Command::Clear => {
            for s in services(&api)? {
                delete_service(&api, &s.name)?;
            }
            Ok(String::new())
        }
        Command::AddService {
            service,
            scheduler,
            persistent,
        } => add_service(&api, *service, scheduler, *persistent),
        Command::EditService {
            service,
            scheduler,
            persistent,
        } => {
            let s = defined_service(&api, *service)?;
            let body = pool_body(scheduler, *persistent)?;
            mutation(
                &api,
                "PUT",
                &format!("/api/v1/pools/{}", seg(&s.pool)),
                Some(&body),
                "No such service",
            )?;
            Ok(String::new())
        }
        Command::DelService { service } => {
            let s = defined_service(&api, *service)?;
            delete_service(&api, &s.name)?;
            Ok(String::new())
        }
        Command::AddServer { dest, weight } => {
            let (path, existing) = locate(&api, dest)?;
            if existing.is_some() {
                return Err(op_err("Destination already exists"));
            }
            put_weight(&api, &path, *weight, "Service not defined")
        }
        Command::EditServer { dest, weight } => {
            let (path, existing) = locate(&api, dest)?;
            let w = existing.ok_or_else(|| op_err("No such destination"))?;
            put_weight(
                &api,
                &path,
                weight.map_or(w, u64::from),
                "No such destination",
            )
        }
        Command::DelServer { dest } => {
            let (path, existing) = locate(&api, dest)?;
            if existing.is_none() {
                return Err(op_err("No such destination"));
            }
            mutation(&api, "DELETE", &path, None, "No such destination")?;
            Ok(String::new())
        }
    }
}

/// `-A`: a pool and a service, both named after the service (`generated_name`).
fn add_service(
    api: &Api,
    (proto, addr): Service,
    scheduler: &str,
    persistent: Option<u32>,
) -> Result<String, Fail> {
    if find_service(api, proto, addr)?.is_some() {
        return Err(op_err("Service already exists"));
    }
    let body = pool_body(scheduler, persistent)?;
    let name = generated_name(proto, addr);
    mutation(
        api,
        "PUT",
        &format!("/api/v1/pools/{}", seg(&name)),
        Some(&body),
        "Service not defined",
    )?;
    let svc = json!({
        "listen": addr.to_string(),
        "protocol": proto.api(),
        "pool": name,
        "forward": "proxy",
    });
    mutation(
        api,
        "PUT",
        &format!("/api/v1/services/{}", seg(&name)),
        Some(&svc),
        "Service not defined",
    )?;
    Ok(String::new())
}

/// The running service of `-E`/`-D`; ipvsadm's "No such service" when there is none.
fn defined_service(api: &Api, (proto, addr): Service) -> Result<RunningSvc, Fail> {
    find_service(api, proto, addr)?.ok_or_else(|| op_err("No such service"))
}

/// A destination as the API has it: the backend's path in the service's pool and its
/// weight there (`None`: not a backend of it). The service must exist and `-g|-i|-m`,
/// when given, match its forward mode.
fn locate(api: &Api, dest: &Destination) -> Result<(String, Option<u64>), Fail> {
    let Destination { service, real, fwd } = *dest;
    let Some(s) = find_service(api, service.0, service.1)? else {
        return Err(op_err("Service not defined"));
    };
    if let Some(f) = fwd.filter(|f| !forward_matches(*f, &s.forward)) {
        let flag = match f {
            Fwd::Gate => "-g",
            Fwd::Ipip => "-i",
            Fwd::Masq => "-m",
        };
        return Err(op_err(format!(
            "Invalid operation: {flag} does not match the service's forward = \"{}\" \
             (Fulcrum sets the forwarding method per service: -m is proxy or nat, -g dsr, -i tunnel)",
            s.forward
        )));
    }
    let existing = pool_backends(api, &s.pool)?
        .into_iter()
        .find_map(|(a, w)| (a == real).then_some(w));
    let path = format!(
        "/api/v1/pools/{}/backends/{}",
        seg(&s.pool),
        seg(&real.to_string())
    );
    Ok((path, existing))
}

/// Reads services and pools into `-L` rows.
fn snapshot(api: &Api) -> Result<Vec<Svc>, Fail> {
    let pools = api.get("/api/v1/pools")?;
    let pools = pools["pools"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for s in services(api)? {
        let Some(p) = pools.iter().find(|p| p["name"] == s.pool.as_str()) else {
            continue;
        };
        let forward = forward_name(&s.forward);
        let dests = p["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|b| {
                Some(Dest {
                    addr: b["address"].as_str()?.parse().ok()?,
                    forward,
                    weight: b["weight"].as_u64().unwrap_or(0) as u32,
                    active: b["active_connections"].as_u64().unwrap_or(0),
                    inactive: 0,
                    conns: b["total_connections"].as_u64().unwrap_or(0),
                    cps: 0,
                })
            })
            .collect();
        let persistent = match &p["persistence"] {
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            Value::String(t) => t.strip_suffix('s').and_then(|n| n.parse().ok()),
            _ => None,
        }
        .filter(|t| *t > 0);
        out.push(Svc {
            proto: s.proto,
            addr: s.listen,
            scheduler: scheduler_to_ipvs(p["scheduler"].as_str().unwrap_or("?")).to_owned(),
            persistent,
            dests,
        });
    }
    Ok(out)
}

fn list(api: &Api, service: Option<Service>, f: Format, exact: bool) -> Result<String, Fail> {
    let mut svcs = snapshot(api)?;
    if f == Format::Rate {
        // Connections per second: two samples one second apart (the kernel averages too).
        std::thread::sleep(Duration::from_secs(1));
        let later = snapshot(api)?;
        for s in &mut svcs {
            for d in &mut s.dests {
                let now = later
                    .iter()
                    .filter(|x| x.proto == s.proto && x.addr == s.addr)
                    .flat_map(|x| x.dests.iter())
                    .find(|x| x.addr == d.addr)
                    .map_or(d.conns, |x| x.conns);
                d.cps = now.saturating_sub(d.conns);
            }
        }
    }
    match service {
        Some((proto, addr)) => {
            let s = svcs
                .iter()
                .find(|s| s.proto == proto && s.addr == addr)
                .ok_or_else(|| op_err("No such service"))?;
            Ok(format!("{}{}", title(f), service_entry(s, f, exact)))
        }
        None => Ok(list_all(&svcs, f, exact)),
    }
}

pub const HELP: &str = "\
fulcrum adm: the ipvsadm vocabulary on top of Fulcrum's admin API
Usage:
  fulcrum adm -A|E -t|u service-address [-s scheduler] [-p [timeout]]
  fulcrum adm -D -t|u service-address
  fulcrum adm -C
  fulcrum adm -a|e -t|u service-address -r server-address [-g|i|m] [-w weight]
  fulcrum adm -d -t|u service-address -r server-address
  fulcrum adm -L|l [-t|u service-address] [-n] [--stats|--rate] [--exact]
  fulcrum adm -h

Options:
  --admin URL          the admin API (default $FULCRUM_ADMIN, else http://127.0.0.1:9090)
  --token-file FILE    bearer token for mutating calls (default $FULCRUM_TOKEN_FILE)
  --tcp-service  -t    service-address is host:port
  --udp-service  -u    service-address is host:port
  --scheduler    -s    rr|wrr|lc|wlc|sh|mh (also random, p2c, ring_hash, least_request,
                       peak_ewma, predictive); default wlc
  --persistent   -p    persistent service with a timeout in seconds (default 300)
  --real-server  -r    server-address is host:port
  --gatewaying   -g    direct routing (Fulcrum forward = \"dsr\")
  --ipip         -i    ipip encapsulation (Fulcrum forward = \"tunnel\")
  --masquerading -m    masquerading (Fulcrum forward = \"proxy\" or \"nat\")
  --weight       -w    capacity of the real server (0..65535)
  --numeric      -n    numeric output (always numeric)
  --stats              output of statistics information
  --rate               output of rate information
  --exact              expand numbers (display exact values)
See docs/adm.md for the mapping to Fulcrum and what is not supported.
";

/// Runs `fulcrum adm`; returns the exit code.
pub fn run(args: &AdmArgs) -> u8 {
    match parse(&args.args).and_then(|p| run_command(&p)) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(Fail(code, msg)) => {
            eprintln!("{msg}");
            code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn dest(addr: &str, forward: &'static str, weight: u32) -> Dest {
        Dest {
            addr: a(addr),
            forward,
            weight,
            active: 0,
            inactive: 0,
            conns: 0,
            cps: 0,
        }
    }

    #[test]
    fn parses_ipvsadm_command_lines() {
        let command = |s: &str| parse(&args(s)).unwrap().command;
        assert_eq!(
            command("-A -t 127.0.0.1:80 -s rr -p"),
            Command::AddService {
                service: (Proto::Tcp, a("127.0.0.1:80")),
                scheduler: "rr".into(),
                persistent: Some(300),
            }
        );
        assert_eq!(
            command("-a -u 198.18.0.1:53 -r 198.18.0.2:53 -m -w 3"),
            Command::AddServer {
                dest: Destination {
                    service: (Proto::Udp, a("198.18.0.1:53")),
                    real: a("198.18.0.2:53"),
                    fwd: Some(Fwd::Masq),
                },
                weight: 3,
            }
        );
        assert_eq!(
            command("-Ln --stats"),
            Command::List {
                service: None,
                format: Format::Stats,
                exact: false,
            }
        );
        assert_eq!(
            command("-E -t [::1]:443 -s mh -p 60"),
            Command::EditService {
                service: (Proto::Tcp, a("[::1]:443")),
                scheduler: "mh".into(),
                persistent: Some(60),
            }
        );
        assert_eq!(
            command(""),
            Command::List {
                service: None,
                format: Format::Plain,
                exact: false,
            }
        );
        // What ipvsadm fills in: wlc, weight 1; -e without -w keeps the weight.
        assert_eq!(
            command("-A -u 198.18.0.1:53"),
            Command::AddService {
                service: (Proto::Udp, a("198.18.0.1:53")),
                scheduler: "wlc".into(),
                persistent: None,
            }
        );
        assert_eq!(
            command("-a -t 1.2.3.4:80 -r 1.2.3.5:80"),
            Command::AddServer {
                dest: Destination {
                    service: (Proto::Tcp, a("1.2.3.4:80")),
                    real: a("1.2.3.5:80"),
                    fwd: None,
                },
                weight: 1,
            }
        );
        assert_eq!(
            command("-e -t 1.2.3.4:80 -r 1.2.3.5:80 -g"),
            Command::EditServer {
                dest: Destination {
                    service: (Proto::Tcp, a("1.2.3.4:80")),
                    real: a("1.2.3.5:80"),
                    fwd: Some(Fwd::Gate),
                },
                weight: None,
            }
        );
        let p = parse(&args(
            "-L --rate --exact -t 1.2.3.4:80 --admin http://h:1 --token-file t",
        ))
        .unwrap();
        assert_eq!(
            p,
            Parsed {
                command: Command::List {
                    service: Some((Proto::Tcp, a("1.2.3.4:80"))),
                    format: Format::Rate,
                    exact: true,
                },
                admin: Some("http://h:1".into()),
                token_file: Some(PathBuf::from("t")),
            }
        );
    }

    #[test]
    fn usage_errors_as_ipvsadm() {
        let e = parse(&args("-A -s rr")).unwrap_err();
        assert_eq!(e.0, EXIT_USAGE);
        assert!(e.1.starts_with(
            "You need to supply the 'service-address' option for the 'add-service' command"
        ));
        assert!(parse(&args("-a -t 1.2.3.4:80")).unwrap_err().1.starts_with(
            "You need to supply the 'real-server' option for the 'add-server' command"
        ));
        assert!(parse(&args("-A -t nonsense"))
            .unwrap_err()
            .1
            .starts_with("illegal virtual server address[:port] specified"));
        assert!(parse(&args("-a -t 1.2.3.4:80 -r 1.2.3.5:80 -w 70000"))
            .unwrap_err()
            .1
            .starts_with("illegal weight specified"));
        assert!(parse(&args("-A -D -t 1.2.3.4:80"))
            .unwrap_err()
            .1
            .starts_with("multiple commands specified"));
        assert!(parse(&args("-D -t 1.2.3.4:80 -s rr"))
            .unwrap_err()
            .1
            .starts_with("Illegal 'scheduler' option with the 'delete-service' command"));
        for (line, want) in [
            (
                "-d -t 1.2.3.4:80 -r 1.2.3.5:80 -w 2",
                "Illegal 'weight' option with the 'delete-server' command",
            ),
            (
                "-L --stats --rate",
                "Illegal 'rate' option with the 'list' command",
            ),
            (
                "-L -s rr",
                "Illegal 'scheduler' option with the 'list' command",
            ),
            (
                "-C -t 1.2.3.4:80",
                "Illegal 'service-address' option with the 'clear' command",
            ),
            (
                "-A -t 1.2.3.4:80 -n",
                "Illegal 'numeric' option with the 'add-service' command",
            ),
            (
                "-e -t 1.2.3.4:80 -r 1.2.3.5:80 -p",
                "Illegal 'scheduler' option with the 'edit-server' command",
            ),
        ] {
            let e = parse(&args(line)).unwrap_err();
            assert_eq!(e.0, EXIT_USAGE, "{line}");
            assert!(e.1.starts_with(want), "{line}: {}", e.1);
        }
    }

    #[test]
    fn schedulers() {
        for s in ["rr", "wrr", "lc", "wlc", "sh"] {
            assert_eq!(scheduler_to_fulcrum(s), Some(s));
            assert_eq!(scheduler_to_ipvs(s), s);
        }
        assert_eq!(scheduler_to_fulcrum("mh"), Some("maglev"));
        assert_eq!(scheduler_to_fulcrum("peak_ewma"), Some("peak_ewma"));
        assert_eq!(scheduler_to_fulcrum("sed"), None);
        assert_eq!(scheduler_to_ipvs("maglev"), "mh");
        for s in ["dh", "lblc", "lblcr", "sed", "nq", "fo", "ovf"] {
            assert_eq!(scheduler_to_fulcrum(s), None);
        }
    }

    /// The layout of ipvsadm 1.31's `ipvsadm -L -n` (ipvsadm.c: the version line,
    /// `print_title`, then `"%s %s"` per service and `"  -> %-28s %-7s %-6d %-10u %-10u\n"`
    /// per destination; trailing blanks included).
    #[test]
    fn list_matches_ipvsadm_layout() {
        let svcs = vec![
            Svc {
                proto: Proto::Udp,
                addr: a("198.18.0.1:53"),
                scheduler: "rr".into(),
                persistent: None,
                dests: vec![],
            },
            Svc {
                proto: Proto::Tcp,
                addr: a("127.0.0.1:80"),
                scheduler: "wlc".into(),
                persistent: Some(300),
                dests: vec![
                    Dest {
                        active: 12,
                        ..dest("127.0.0.1:8002", "Masq", 2)
                    },
                    dest("127.0.0.1:8001", "Masq", 1),
                ],
            },
        ];
        let want = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  127.0.0.1:80 wlc persistent 300
  -> 127.0.0.1:8001               Masq    1      0          0         
  -> 127.0.0.1:8002               Masq    2      12         0         
UDP  198.18.0.1:53 rr
";
        assert_eq!(list_all(&svcs, Format::Plain, false), want);
        // Column starts, as awk-free scripts cut them.
        let line = "  -> 127.0.0.1:8001               Masq    1      0          0         ";
        assert_eq!(&line[34..41], "Masq   ");
        assert_eq!(&line[42..48], "1     ");
        assert_eq!(&line[49..59], "0         ");
    }

    #[test]
    fn stats_and_rate_layouts() {
        let s = Svc {
            proto: Proto::Tcp,
            addr: a("198.18.10.10:80"),
            scheduler: "rr".into(),
            persistent: None,
            dests: vec![Dest {
                conns: 123_456_789_012,
                cps: 7,
                ..dest("198.18.10.11:80", "Route", 1)
            }],
        };
        let want = "\
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  198.18.10.10:80                  123G        0        0        0        0
  -> 198.18.10.11:80                  123G        0        0        0        0
";
        assert_eq!(
            format!(
                "{}{}",
                title(Format::Stats),
                service_entry(&s, Format::Stats, false)
            ),
            want
        );
        let exact = service_entry(&s, Format::Stats, true);
        assert!(exact.starts_with("TCP  198.18.10.10:80              123456789012"));
        let want = "\
Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  198.18.10.10:80                     7        0        0        0        0
  -> 198.18.10.11:80                     7        0        0        0        0
";
        assert_eq!(
            format!(
                "{}{}",
                title(Format::Rate),
                service_entry(&s, Format::Rate, false)
            ),
            want
        );
    }

    #[test]
    fn largenum_units() {
        let f = |i| {
            let mut s = String::new();
            largenum(&mut s, i, false);
            s
        };
        assert_eq!(f(0), "        0");
        assert_eq!(f(99_999_999), " 99999999");
        assert_eq!(f(100_000_000), "  100000K");
        assert_eq!(f(1_000_000_000), "    1000M");
    }

    #[test]
    fn names_in_paths() {
        assert_eq!(seg("[::1]:80"), "%5B::1%5D:80");
        assert_eq!(
            generated_name(Proto::Tcp, a("127.0.0.1:80")),
            "tcp-127.0.0.1-80"
        );
    }
}
