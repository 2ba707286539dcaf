//! The rule keys of `[[service]]` and `[[service.route]]` (docs/rules.md): their raw form and
//! their checks, building [`crate::rules::Rules`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::ConfigError;
use crate::rules::{
    Access, BasicAuth, Coding, Compression, ErrorPage, HeaderRules, IpNet, Redirect,
    RedirectStatus, Rewrite, Rules, StatusMatch, Template, TemplateError, Var, DEFAULT_MIN_SIZE,
    DEFAULT_TYPES,
};

type SpannedMap = Spanned<BTreeMap<Spanned<String>, Spanned<String>>>;

/// `[service.basic_auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub realm: Option<Spanned<String>>,
    pub htpasswd: Spanned<String>,
}

/// `[service.redirect]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub status: Option<Spanned<i64>>,
    pub scheme: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
}

/// `[service.rewrite]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub strip_prefix: Option<Spanned<String>>,
    pub replace_prefix: Option<Spanned<String>>,
    pub with: Option<Spanned<String>>,
}

/// `[service.request_headers]`, `[service.response_headers]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub set: Option<SpannedMap>,
    pub add: Option<SpannedMap>,
    pub remove: Option<Vec<Spanned<String>>>,
}

/// `[service.compression]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub min_size: Option<Spanned<i64>>,
    pub types: Option<Spanned<Vec<Spanned<String>>>>,
    pub gzip_level: Option<Spanned<i64>>,
    pub br_level: Option<Spanned<i64>>,
    pub zstd_level: Option<Spanned<i64>>,
}

/// The rule keys of one `[[service]]` or `[[service.route]]` table.
pub struct RawRules<'a> {
    pub allow: Option<&'a Spanned<Vec<Spanned<String>>>>,
    pub deny: Option<&'a Spanned<Vec<Spanned<String>>>>,
    pub basic_auth: Option<&'a Spanned<RawBasicAuth>>,
    pub redirect: Option<&'a Spanned<RawRedirect>>,
    pub rewrite: Option<&'a Spanned<RawRewrite>>,
    pub request_headers: Option<&'a Spanned<RawHeaders>>,
    pub response_headers: Option<&'a Spanned<RawHeaders>>,
    pub compression: Option<&'a Spanned<RawCompression>>,
    pub error_pages: Option<&'a SpannedMap>,
}

impl RawRules<'_> {
    /// The span of the first rule key set, for "applies only to http" errors.
    pub fn first_span(&self) -> Option<std::ops::Range<usize>> {
        [
            self.allow.map(Spanned::span),
            self.deny.map(Spanned::span),
            self.basic_auth.map(Spanned::span),
            self.redirect.map(Spanned::span),
            self.rewrite.map(Spanned::span),
            self.request_headers.map(Spanned::span),
            self.response_headers.map(Spanned::span),
            self.compression.map(Spanned::span),
            self.error_pages.map(Spanned::span),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|s| s.start)
    }
}

fn err(errs: &mut Vec<ConfigError>, span: std::ops::Range<usize>, msg: String, help: &str) {
    errs.push(ConfigError::new(msg, span).with_help(help));
}

const CIDR_HELP: &str =
    "an IPv4 or IPv6 address or network in CIDR form: \"192.0.2.7\", \"10.0.0.0/8\", \"::1\", \"2001:db8::/32\"";

fn nets(list: Option<&Spanned<Vec<Spanned<String>>>>, errs: &mut Vec<ConfigError>) -> Vec<IpNet> {
    let Some(list) = list else {
        return Vec::new();
    };
    list.get_ref()
        .iter()
        .filter_map(|s| {
            let t = s.get_ref().trim();
            let parsed = t
                .parse::<IpNet>()
                .ok()
                .or_else(|| t.parse::<std::net::IpAddr>().ok().map(IpNet::from));
            match parsed {
                // Host bits set (10.1.2.3/8) would read as a typo: refuse rather than guess.
                Some(n) if n.trunc() == n => Some(n),
                Some(n) => {
                    err(
                        errs,
                        s.span(),
                        format!("\"{t}\" has host bits set past its prefix length"),
                        &format!("the network is written \"{}\"", n.trunc()),
                    );
                    None
                }
                None => {
                    err(
                        errs,
                        s.span(),
                        format!("invalid address or network \"{t}\""),
                        CIDR_HELP,
                    );
                    None
                }
            }
        })
        .collect()
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Header fields no rule may touch: framing and connection management are Fulcrum's.
const RESERVED: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "host",
];

fn header_name(s: &Spanned<String>, errs: &mut Vec<ConfigError>) -> Option<String> {
    let n = s.get_ref();
    if !is_token(n) {
        err(
            errs,
            s.span(),
            format!("invalid header name \"{}\"", n.escape_debug()),
            "a header name is letters, digits and !#$%&'*+-.^_`|~ (e.g. \"X-Client-IP\")",
        );
        return None;
    }
    let lower = n.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) {
        err(
            errs,
            s.span(),
            format!("header `{n}` cannot be changed by a rule"),
            &format!(
                "Fulcrum sets the framing and connection fields itself ({})",
                RESERVED.join(", ")
            ),
        );
        return None;
    }
    Some(lower)
}

fn template(s: &Spanned<String>, errs: &mut Vec<ConfigError>) -> Option<Template> {
    match Template::parse(s.get_ref()) {
        Ok(t) => Some(t),
        Err(e) => {
            let help = match e {
                TemplateError::Control => {
                    "a header value cannot hold CR, LF or other control characters (tab is allowed)"
                        .to_owned()
                }
                _ => format!("variables: {}; `$$` is a literal `$`", Var::help()),
            };
            err(errs, s.span(), e.to_string(), &help);
            None
        }
    }
}

fn headers(h: Option<&Spanned<RawHeaders>>, errs: &mut Vec<ConfigError>) -> HeaderRules {
    let Some(h) = h else {
        return HeaderRules::default();
    };
    let h = h.get_ref();
    let pairs = |m: Option<&SpannedMap>, errs: &mut Vec<ConfigError>| {
        let mut v: Vec<(String, Template)> = m
            .map(|m| {
                m.get_ref()
                    .iter()
                    .filter_map(|(k, v)| Some((header_name(k, errs)?, template(v, errs)?)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    HeaderRules {
        set: pairs(h.set.as_ref(), errs),
        add: pairs(h.add.as_ref(), errs),
        remove: h
            .remove
            .iter()
            .flatten()
            .filter_map(|n| header_name(n, errs))
            .collect(),
    }
}

fn bad_text(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == 0x7f)
}

fn redirect(r: &Spanned<RawRedirect>, errs: &mut Vec<ConfigError>) -> Redirect {
    let raw = r.get_ref();
    let status = match &raw.status {
        None => RedirectStatus::Moved,
        Some(s) => RedirectStatus::ALL
            .into_iter()
            .find(|x| i64::from(x.code()) == *s.get_ref())
            .unwrap_or_else(|| {
                err(
                    errs,
                    s.span(),
                    format!("redirect status {} is not a redirect", s.get_ref()),
                    "301, 302, 307 or 308",
                );
                RedirectStatus::Moved
            }),
    };
    let scheme = raw.scheme.as_ref().map(|s| {
        let v = s.get_ref();
        if v != "http" && v != "https" {
            err(
                errs,
                s.span(),
                format!("invalid redirect scheme \"{}\"", v.escape_debug()),
                "\"http\" or \"https\"",
            );
        }
        v.clone()
    });
    let host = raw.host.as_ref().map(|s| {
        let v = s.get_ref();
        let ok = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
        if !ok {
            err(
                errs,
                s.span(),
                format!("invalid redirect host \"{}\"", v.escape_debug()),
                "a host name or address, with \":PORT\" when needed (\"example.com\", \"example.com:8443\", \"[2001:db8::1]\")",
            );
        }
        v.clone()
    });
    let path = raw.path.as_ref().map(|s| {
        let v = s.get_ref();
        if !v.starts_with('/') || bad_text(v) || v.contains(' ') || v.contains('?') {
            err(
                errs,
                s.span(),
                format!("invalid redirect path \"{}\"", v.escape_debug()),
                "a path starting with '/', without spaces, control characters or '?' (the request's query is kept)",
            );
        }
        v.clone()
    });
    Redirect {
        status,
        scheme,
        host,
        path,
    }
}

fn prefix(s: &Spanned<String>, what: &str, errs: &mut Vec<ConfigError>) -> String {
    let v = s.get_ref();
    if !v.starts_with('/') || bad_text(v) || v.contains(' ') || v.contains('?') {
        err(
            errs,
            s.span(),
            format!("invalid {what} \"{}\"", v.escape_debug()),
            "a path prefix starting with '/', without spaces, control characters or '?' (e.g. \"/api\")",
        );
    }
    v.clone()
}

fn rewrite(r: &Spanned<RawRewrite>, errs: &mut Vec<ConfigError>) -> Option<Rewrite> {
    const HELP: &str =
        "either strip_prefix = \"/api\", or replace_prefix = \"/old/\" with with = \"/new/\"";
    let raw = r.get_ref();
    match (&raw.strip_prefix, &raw.replace_prefix, &raw.with) {
        (Some(p), None, None) => Some(Rewrite::StripPrefix(prefix(p, "strip_prefix", errs))),
        (None, Some(from), Some(to)) => Some(Rewrite::ReplacePrefix {
            from: prefix(from, "replace_prefix", errs),
            to: prefix(to, "with", errs),
        }),
        _ => {
            err(
                errs,
                r.span(),
                "[rewrite] needs one way to rewrite the path".into(),
                HELP,
            );
            None
        }
    }
}

fn level(
    v: Option<&Spanned<i64>>,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
    default: u32,
    errs: &mut Vec<ConfigError>,
) -> u32 {
    let Some(v) = v else {
        return default;
    };
    if range.contains(v.get_ref()) {
        u32::try_from(*v.get_ref()).unwrap_or(default)
    } else {
        err(
            errs,
            v.span(),
            format!("{name} {} is out of range", v.get_ref()),
            &format!("{}..={}", range.start(), range.end()),
        );
        default
    }
}

fn compression(c: &Spanned<RawCompression>, errs: &mut Vec<ConfigError>) -> Compression {
    let raw = c.get_ref();
    let algorithms = match &raw.algorithms {
        None => Coding::ALL.to_vec(),
        Some(list) => {
            if list.get_ref().is_empty() {
                err(
                    errs,
                    list.span(),
                    "algorithms is empty".into(),
                    "some of \"zstd\", \"br\", \"gzip\" (the preferred first)",
                );
            }
            list.get_ref()
                .iter()
                .filter_map(|a| {
                    Coding::named(a.get_ref()).or_else(|| {
                        err(
                            errs,
                            a.span(),
                            format!(
                                "unknown compression algorithm \"{}\"",
                                a.get_ref().escape_debug()
                            ),
                            "\"zstd\", \"br\" or \"gzip\"",
                        );
                        None
                    })
                })
                .collect()
        }
    };
    let min_size = match &raw.min_size {
        None => DEFAULT_MIN_SIZE,
        Some(v) => u64::try_from(*v.get_ref()).unwrap_or_else(|_| {
            err(
                errs,
                v.span(),
                format!("min_size {} is negative", v.get_ref()),
                "0..=9223372036854775807 (bytes)",
            );
            DEFAULT_MIN_SIZE
        }),
    };
    let types = match &raw.types {
        None => DEFAULT_TYPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|t| {
                let v = t.get_ref().to_ascii_lowercase();
                let ok = v.split_once('/').is_some_and(|(a, b)| {
                    is_token(a) && (b == "*" || is_token(b))
                });
                if ok {
                    Some(v)
                } else {
                    err(
                        errs,
                        t.span(),
                        format!("invalid media type \"{}\"", t.get_ref().escape_debug()),
                        "a media type without parameters (\"text/html\") or a whole type (\"text/*\")",
                    );
                    None
                }
            })
            .collect(),
    };
    Compression {
        algorithms,
        min_size,
        types,
        gzip_level: level(raw.gzip_level.as_ref(), "gzip_level", 0..=9, 1, errs),
        br_level: level(raw.br_level.as_ref(), "br_level", 0..=11, 1, errs),
        zstd_level: level(raw.zstd_level.as_ref(), "zstd_level", 1..=22, 1, errs),
    }
}

fn error_pages(m: Option<&SpannedMap>, errs: &mut Vec<ConfigError>) -> Vec<ErrorPage> {
    let Some(m) = m else {
        return Vec::new();
    };
    let mut pages: Vec<ErrorPage> = m
        .get_ref()
        .iter()
        .filter_map(|(k, v)| {
            let key = k.get_ref();
            let status = if let Some(c) = key.strip_suffix("xx").filter(|c| *c == "4" || *c == "5")
            {
                c.parse().ok().map(StatusMatch::Class)
            } else {
                key.parse::<u16>()
                    .ok()
                    .filter(|s| (400..600).contains(s))
                    .map(StatusMatch::One)
            };
            let Some(status) = status else {
                err(
                    errs,
                    k.span(),
                    format!("invalid error page status \"{}\"", key.escape_debug()),
                    "a status in 400..=599 (\"404\") or a class (\"4xx\", \"5xx\")",
                );
                return None;
            };
            if v.get_ref().is_empty() {
                err(
                    errs,
                    v.span(),
                    "error page file is empty".into(),
                    "a path to an HTML or text file",
                );
                return None;
            }
            Some(ErrorPage {
                status,
                file: v.get_ref().into(),
            })
        })
        .collect();
    // Exact statuses before classes, whatever the order in the file.
    pages.sort_by_key(|p| matches!(p.status, StatusMatch::Class(_)));
    pages
}

/// Checks one table's rule keys and builds its [`Rules`].
pub fn rules(raw: &RawRules<'_>, errs: &mut Vec<ConfigError>) -> Rules {
    let access = (raw.allow.is_some() || raw.deny.is_some()).then(|| Access {
        allow: nets(raw.allow, errs),
        deny: nets(raw.deny, errs),
    });
    let basic_auth = raw.basic_auth.map(|b| {
        let b = b.get_ref();
        let realm = b.realm.as_ref().map_or_else(
            || "restricted".to_owned(),
            |r| {
                let v = r.get_ref();
                if v.contains(['"', '\\']) || bad_text(v) {
                    err(
                        errs,
                        r.span(),
                        format!("invalid realm \"{}\"", v.escape_debug()),
                        "text without '\"', '\\' or control characters",
                    );
                }
                v.clone()
            },
        );
        if b.htpasswd.get_ref().is_empty() {
            err(
                errs,
                b.htpasswd.span(),
                "htpasswd is empty".into(),
                "the path of an htpasswd file of user:bcrypt-hash lines (htpasswd -B)",
            );
        }
        BasicAuth {
            realm,
            htpasswd: b.htpasswd.get_ref().into(),
        }
    });
    Rules {
        access,
        basic_auth,
        redirect: raw.redirect.map(|r| redirect(r, errs)),
        rewrite: raw.rewrite.and_then(|r| rewrite(r, errs)),
        request_headers: headers(raw.request_headers, errs),
        response_headers: headers(raw.response_headers, errs),
        compression: raw.compression.map(|c| compression(c, errs)),
        error_pages: error_pages(raw.error_pages, errs),
    }
}

/// Writes `r`'s keys into a `[[service]]` or `[[service.route]]` table (the inverse of
/// [`rules`]).
pub(super) fn emit(rules: &Rules, out: &mut toml::Table) {
    use toml::Value;
    let text = |v: &str| Value::String(v.to_owned());
    let list = |v: &[IpNet]| Value::Array(v.iter().map(|n| Value::String(n.to_string())).collect());
    if let Some(a) = &rules.access {
        if !a.allow.is_empty() || a.deny.is_empty() {
            out.insert("allow".into(), list(&a.allow));
        }
        if !a.deny.is_empty() {
            out.insert("deny".into(), list(&a.deny));
        }
    }
    if let Some(b) = &rules.basic_auth {
        let mut x = toml::Table::new();
        x.insert("realm".into(), text(&b.realm));
        x.insert("htpasswd".into(), text(&b.htpasswd.to_string_lossy()));
        out.insert("basic_auth".into(), Value::Table(x));
    }
    if let Some(rd) = &rules.redirect {
        let mut x = toml::Table::new();
        x.insert("status".into(), Value::Integer(i64::from(rd.status.code())));
        for (k, v) in [
            ("scheme", &rd.scheme),
            ("host", &rd.host),
            ("path", &rd.path),
        ] {
            if let Some(v) = v {
                x.insert(k.into(), text(v));
            }
        }
        out.insert("redirect".into(), Value::Table(x));
    }
    if let Some(rw) = &rules.rewrite {
        let mut x = toml::Table::new();
        match rw {
            Rewrite::StripPrefix(p) => {
                x.insert("strip_prefix".into(), text(p));
            }
            Rewrite::ReplacePrefix { from, to } => {
                x.insert("replace_prefix".into(), text(from));
                x.insert("with".into(), text(to));
            }
        }
        out.insert("rewrite".into(), Value::Table(x));
    }
    for (key, h) in [
        ("request_headers", &rules.request_headers),
        ("response_headers", &rules.response_headers),
    ] {
        if h.is_empty() {
            continue;
        }
        let mut x = toml::Table::new();
        let pairs = |v: &[(String, Template)]| {
            Value::Table(
                v.iter()
                    .map(|(n, t)| (n.clone(), text(&t.source)))
                    .collect(),
            )
        };
        if !h.set.is_empty() {
            x.insert("set".into(), pairs(&h.set));
        }
        if !h.add.is_empty() {
            x.insert("add".into(), pairs(&h.add));
        }
        if !h.remove.is_empty() {
            x.insert(
                "remove".into(),
                Value::Array(h.remove.iter().map(|n| text(n)).collect()),
            );
        }
        out.insert(key.into(), Value::Table(x));
    }
    if let Some(c) = &rules.compression {
        let mut x = toml::Table::new();
        x.insert(
            "algorithms".into(),
            Value::Array(c.algorithms.iter().map(|a| text(a.as_str())).collect()),
        );
        x.insert(
            "min_size".into(),
            Value::Integer(i64::try_from(c.min_size).unwrap_or(i64::MAX)),
        );
        x.insert(
            "types".into(),
            Value::Array(c.types.iter().map(|v| text(v)).collect()),
        );
        x.insert("gzip_level".into(), Value::Integer(i64::from(c.gzip_level)));
        x.insert("br_level".into(), Value::Integer(i64::from(c.br_level)));
        x.insert("zstd_level".into(), Value::Integer(i64::from(c.zstd_level)));
        out.insert("compression".into(), Value::Table(x));
    }
    if !rules.error_pages.is_empty() {
        let x = rules
            .error_pages
            .iter()
            .map(|p| (p.status.key(), text(&p.file.to_string_lossy())))
            .collect();
        out.insert("error_pages".into(), Value::Table(x));
    }
}

/// Writes a table's rule maps (`error_pages`, the header rules' `set` and `add`) inline, as
/// docs/rules.md shows them (their keys read back only in that form).
pub(super) fn inline_maps(t: &mut toml_edit::Table) {
    let inline = |item: &mut toml_edit::Item| {
        if let Some(tab) = item.as_table() {
            *item = toml_edit::value(tab.clone().into_inline_table());
        }
    };
    if let Some(item) = t.get_mut("error_pages") {
        inline(item);
    }
    for key in ["request_headers", "response_headers"] {
        if let Some(h) = t.get_mut(key).and_then(toml_edit::Item::as_table_mut) {
            for k in ["set", "add"] {
                if let Some(item) = h.get_mut(k) {
                    inline(item);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const FILE: &str = r#"
[[service]]
name = "web"
listen = "127.0.0.1:8080"
protocol = "http"
pool = "web"
allow = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
deny = ["10.1.0.0/16"]
error_pages = { "404" = "/srv/404.html", "5xx" = "/srv/5xx.html" }
basic_auth = { realm = "staff", htpasswd = "/etc/fulcrum/htpasswd" }
[service.request_headers]
set = { X-Real-IP = "${client_addr}", b = "$$1" }
add = { X-Route = "${route} ${pool}" }
remove = ["X-Debug"]
[service.response_headers]
set = { Strict-Transport-Security = "max-age=63072000" }
[service.compression]
algorithms = ["gzip", "br"]
min_size = 10
types = ["text/*"]
gzip_level = 6
[[service.route]]
path_prefix = "/old/"
pool = "web"
redirect = { status = 302, scheme = "https", host = "example.com:8443", path = "/new" }
rewrite = { replace_prefix = "/old/", with = "/v2/" }
[[service.route]]
path_prefix = "/api/"
pool = "web"
rewrite = { strip_prefix = "/api" }
[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:9001"
"#;

    #[test]
    fn every_rule_survives_a_round_trip() {
        let cfg = parse(FILE).expect("valid");
        let s = cfg.services[0].http().expect("an http service");
        assert_eq!(s.rules.access.as_ref().map(|a| a.allow.len()), Some(3));
        assert_eq!(s.rules.request_headers.set.len(), 2);
        assert!(s.routes[0].rules.redirect.is_some());
        assert_eq!(parse(&cfg.to_toml()).expect("emitted text parses"), cfg);
    }

    #[test]
    fn rules_on_a_tcp_service_are_refused() {
        let text = FILE.replace("protocol = \"http\"", "protocol = \"tcp\"");
        let err = crate::config::parse_all(&text).expect_err("refused");
        assert!(
            err.iter().any(|e| e
                .message
                .contains("a rule (docs/rules.md) applies only to http")),
            "{err:?}"
        );
    }
}
