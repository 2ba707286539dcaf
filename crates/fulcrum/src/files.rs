//! Loading a configuration file as `run`, reloads and `check` all do: parse it (every error
//! at once), then check the files it names with the very functions `run` uses them with
//! (TLS certificates and keys, the admin token, access logs). So `check` refuses what
//! `run` would refuse, with the same `FILE:LINE:COL: message` errors.
//!
//! Not checked here (they depend on the moment, not the file): binding listen addresses
//! and attaching XDP. A `[pool.discovery] file` may be missing: discovery keeps the last
//! good set and retries, as it does when the file goes away later.

use std::path::Path;

use fulcrum_core::config::{self, Config, ConfigError, LogTarget, PathStep};

/// Reads `[admin] token_file`: the token, trimmed. An empty (or whitespace-only) file is an
/// error: it would switch authentication off without anyone noticing.
pub fn read_token(path: &Path) -> Result<String, (String, Option<String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            format!("cannot read token_file {}: {e}", path.display()),
            Some("the file must exist and be readable by fulcrum".to_owned()),
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err((
            format!("token_file {} is empty", path.display()),
            Some("put the admin token in it (e.g. `openssl rand -hex 32 > FILE`), or remove token_file to run without a token".to_owned()),
        ));
    }
    Ok(token.to_owned())
}

const PEM_HELP: &str = "PEM files: a certificate chain (cert) and its private key (key)";
const OCSP_HELP: &str =
    "a DER OCSP response for this certificate (`openssl ocsp ... -respout FILE`)";
const CA_HELP: &str = "a PEM file of one or more CA certificates (-----BEGIN CERTIFICATE-----)";

/// Every problem with the files `cfg` (parsed from `text`) names, each at the key that
/// names the file.
pub fn check(cfg: &Config, text: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut report = |path: &[PathStep<'_>], message: String, help: Option<String>| {
        errors.push(ConfigError {
            message,
            help,
            span: config::locate(text, path),
        });
    };
    if let Some(f) = cfg.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        if let Err((message, help)) = read_token(f) {
            report(
                &[PathStep::Key("admin"), PathStep::Key("token_file")],
                message,
                help,
            );
        }
    }
    for (i, s) in cfg.services.iter().enumerate() {
        let svc = [PathStep::Key("service"), PathStep::Index(i)];
        for p in fulcrum_http::rules::check_files(s) {
            let mut at = svc.to_vec();
            if let Some(r) = p.route {
                at.extend([PathStep::Key("route"), PathStep::Index(r)]);
            }
            at.extend([PathStep::Key(p.table), PathStep::Key(&p.key)]);
            report(&at, p.message, Some(p.help));
        }
        if let Some(tls) = s.tls() {
            for (j, pair) in tls.certs.iter().enumerate() {
                if let Err(e) = fulcrum_http::check_pair(pair) {
                    let (key, help) = match e.file {
                        fulcrum_http::PairFile::Cert => ("cert", PEM_HELP),
                        fulcrum_http::PairFile::Key => ("key", PEM_HELP),
                        fulcrum_http::PairFile::Ocsp => ("ocsp", OCSP_HELP),
                    };
                    let at = [
                        svc[0],
                        svc[1],
                        PathStep::Key("tls"),
                        PathStep::Key("certs"),
                        PathStep::Index(j),
                        PathStep::Key(key),
                    ];
                    report(&at, e.message, Some(help.into()));
                }
            }
            if let Some(ca) = &tls.client_auth {
                if let Err(e) = fulcrum_http::check_ca(&ca.ca) {
                    let at = [
                        svc[0],
                        svc[1],
                        PathStep::Key("tls"),
                        PathStep::Key("client_ca"),
                    ];
                    report(&at, e, Some(CA_HELP.into()));
                }
            }
        }
        if let Some(al) = s.access_log() {
            let (key, help) = match al.target {
                LogTarget::Stderr => ("", ""),
                LogTarget::File(_) => (
                    "path",
                    "a file fulcrum can create or append to, or \"-\" for stderr",
                ),
                LogTarget::Syslog { .. } => (
                    "syslog",
                    "a syslog daemon's unix datagram socket that exists, or a UDP address",
                ),
            };
            if !key.is_empty() {
                if let Err(e) = fulcrum_http::AccessLogger::open(al) {
                    let at = [
                        svc[0],
                        svc[1],
                        PathStep::Key("access_log"),
                        PathStep::Key(key),
                    ];
                    report(&at, e, Some(help.into()));
                }
            }
        }
    }
    check_pool_tls(cfg, &mut report);
    errors.sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
    errors
}

/// The CA and client certificate files of every pool's `[pool.tls]`, each reported at the
/// key that names it.
fn check_pool_tls(cfg: &Config, report: &mut impl FnMut(&[PathStep<'_>], String, Option<String>)) {
    for (i, p) in cfg.pools.iter().enumerate() {
        let Some(tls) = &p.tls else {
            continue;
        };
        let at = |key| {
            [
                PathStep::Key("pool"),
                PathStep::Index(i),
                PathStep::Key("tls"),
                PathStep::Key(key),
            ]
        };
        if let Err(e) = fulcrum_http::check_ca(&tls.ca) {
            report(&at("ca"), e, Some(CA_HELP.into()));
        }
        if let Some((cert, key)) = &tls.client_cert {
            if let Err(e) = fulcrum_http::check_client_pair(cert, key) {
                let k = if e.file == fulcrum_http::PairFile::Key {
                    "key"
                } else {
                    "cert"
                };
                report(&at(k), e.message, Some(PEM_HELP.into()));
            }
        }
    }
}

/// Parses `text` and checks the files it names: the config, or every error.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let cfg = config::parse_all(text)?;
    let errors = check(&cfg, text);
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}

/// Every error as `FILE:LINE:COL: message` lines (and `  help:` lines), with a count when
/// there are several.
pub fn render(file: &str, text: &str, errors: &[ConfigError]) -> String {
    let mut out: Vec<String> = errors.iter().map(|e| e.render(file, text)).collect();
    if errors.len() > 1 {
        out.push(format!("{file}: {} errors", errors.len()));
    }
    out.join("\n")
}

/// Reads and [`parse`]s the file at `path`, rendering errors as `fulcrum check` prints them
/// (`run` at start, and every reload, load through this).
pub fn load(path: &Path) -> Result<Config, String> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{file}: cannot read the config file: {e}"))?;
    parse(&text).map_err(|errors| render(&file, &text, &errors))
}

/// [`parse`]s `text` (a merged fleet configuration), rendering errors with `name` as the
/// file name (`etcd:PREFIX/config@REVISION`).
pub fn validate_named(name: &str, text: &str) -> Result<Config, String> {
    parse(text).map_err(|errors| render(name, text, &errors))
}

/// A reload in a fleet: the local file at `path` merged with the shared document running
/// now (`doc`), checked as [`load`] checks a file.
pub fn load_merged(path: &Path, doc: &str) -> Result<Config, String> {
    let file = path.display().to_string();
    let local = std::fs::read_to_string(path)
        .map_err(|e| format!("{file}: cannot read the config file: {e}"))?;
    let merged = fulcrum_core::cluster::merge(doc, &local).map_err(|e| format!("{file}: {e}"))?;
    validate_named(
        &format!("{file} (merged with the fleet's configuration)"),
        &merged,
    )
}
