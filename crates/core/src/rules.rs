//! Request and response rules of http services and routes (docs/rules.md): what each rule
//! decides, with no IO. The config parser builds [`Rules`] (`config::rules`); the HTTP proxy
//! asks them in this order, like nginx's phases:
//!
//! 1. access: `allow` / `deny` ([`Access::permits`]) -> 403;
//! 2. `basic_auth` (the proxy checks the password against the htpasswd file) -> 401;
//! 3. `redirect` ([`Redirect::location`]) -> 301/302/307/308, nothing proxied;
//! 4. `rewrite` of the path ([`Rewrite::apply`]);
//! 5. `request_headers` ([`HeaderRules`]) on the request sent to the backend;
//! 6. proxy;
//! 7. `response_headers` on the answer;
//! 8. `compression` ([`Compression::negotiate`], [`Compression::compresses`]);
//! 9. `error_pages` for Fulcrum's own 4xx/5xx answers ([`Rules::error_page`]).

use std::net::IpAddr;
use std::path::PathBuf;

pub use ipnet::IpNet;

/// The rules that apply to a request: a service's, with its matched route's merged over
/// them ([`Rules::merged`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `allow` / `deny`.
    pub access: Option<Access>,
    /// `[service.basic_auth]`.
    pub basic_auth: Option<BasicAuth>,
    /// `[service.redirect]`.
    pub redirect: Option<Redirect>,
    /// `[service.rewrite]`.
    pub rewrite: Option<Rewrite>,
    /// `[service.request_headers]`.
    pub request_headers: HeaderRules,
    /// `[service.response_headers]`.
    pub response_headers: HeaderRules,
    /// `[service.compression]`.
    pub compression: Option<Compression>,
    /// `[service.error_pages]`: the first match wins.
    pub error_pages: Vec<ErrorPage>,
}

impl Rules {
    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// A route's rules over its service's: each of access, basic auth, redirect, rewrite and
    /// compression is the route's when it sets it, else the service's; header rules are the
    /// service's, then the route's; error pages the route's first, then the service's.
    #[must_use]
    pub fn merged(service: &Rules, route: &Rules) -> Rules {
        fn pick<T: Clone>(r: Option<&T>, s: Option<&T>) -> Option<T> {
            r.or(s).cloned()
        }
        Rules {
            access: pick(route.access.as_ref(), service.access.as_ref()),
            basic_auth: pick(route.basic_auth.as_ref(), service.basic_auth.as_ref()),
            redirect: pick(route.redirect.as_ref(), service.redirect.as_ref()),
            rewrite: pick(route.rewrite.as_ref(), service.rewrite.as_ref()),
            request_headers: service.request_headers.then(&route.request_headers),
            response_headers: service.response_headers.then(&route.response_headers),
            compression: pick(route.compression.as_ref(), service.compression.as_ref()),
            error_pages: route
                .error_pages
                .iter()
                .chain(&service.error_pages)
                .cloned()
                .collect(),
        }
    }

    /// The error page file for one of Fulcrum's own answers with this status.
    pub fn error_page(&self, status: u16) -> Option<&ErrorPage> {
        self.error_pages.iter().find(|p| p.status.matches(status))
    }
}

/// `allow` and `deny` lists of networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl Access {
    /// A client is refused when a `deny` network holds it; else admitted when `allow` is
    /// empty or one of its networks holds it. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// `[service.basic_auth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// Sent in `WWW-Authenticate: Basic realm="..."` (no `"`, `\`, control characters).
    pub realm: String,
    /// An htpasswd file of `user:bcrypt-hash` lines, read at load and at each reload.
    pub htpasswd: PathBuf,
}

/// A redirect's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectStatus {
    Moved = 301,
    Found = 302,
    Temporary = 307,
    Permanent = 308,
}

impl RedirectStatus {
    /// Every status, as written in the config.
    pub const ALL: [RedirectStatus; 4] =
        [Self::Moved, Self::Found, Self::Temporary, Self::Permanent];

    pub const fn code(self) -> u16 {
        self as u16
    }
}

/// `[service.redirect]`: the answer's `Location` is the request's URL with the parts set
/// here replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub status: RedirectStatus,
    /// `http` or `https`; default: the request's.
    pub scheme: Option<String>,
    /// A host, with a port when needed; default: the request's `Host`.
    pub host: Option<String>,
    /// A path replacing the request's (its query is kept); default: the request's path.
    pub path: Option<String>,
}

impl Redirect {
    /// `Location` for a request with this scheme, host (as sent, port included) and
    /// target (path and query).
    pub fn location(&self, scheme: &str, host: &str, target: &str) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.host.as_deref().unwrap_or(host);
        let target = if target.is_empty() { "/" } else { target };
        let (path, query) = match &self.path {
            None => (target, None),
            Some(p) => (p.as_str(), target.split_once('?').map(|(_, q)| q)),
        };
        // Sized once: `format!` grew its string twice per answer (bench/rules.py, redirect).
        let len = scheme.len() + 3 + host.len() + path.len() + query.map_or(0, |q| q.len() + 1);
        let mut out = String::with_capacity(len);
        for part in [scheme, "://", host, path] {
            out.push_str(part);
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// `[service.rewrite]`: a path rewrite of the request sent to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// `strip_prefix = "/api"`: `/api/x` -> `/x`, `/api` -> `/`.
    StripPrefix(String),
    /// `replace_prefix = "/old/"`, `with = "/new/"`.
    ReplacePrefix { from: String, to: String },
}

impl Rewrite {
    /// The new target (path and query), or `None` when the path does not start with the
    /// prefix (the request goes unchanged).
    pub fn apply(&self, target: &str) -> Option<String> {
        let (from, to) = match self {
            Rewrite::StripPrefix(p) => (p.as_str(), ""),
            Rewrite::ReplacePrefix { from, to } => (from.as_str(), to.as_str()),
        };
        let rest = target.strip_prefix(from)?;
        let mut out = String::with_capacity(to.len() + rest.len() + 1);
        out.push_str(to);
        if !out.starts_with('/') && !rest.starts_with('/') {
            out.insert(0, '/');
        } else if out.is_empty() && rest.starts_with('?') {
            out.push('/');
        }
        out.push_str(rest);
        if out.is_empty() {
            out.push('/');
        }
        Some(out)
    }
}

/// A variable of a header value template (`${name}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `client_addr`: the client's IP address.
    ClientAddr,
    /// `client_port`.
    ClientPort,
    /// `request_id`: the request's `X-Request-Id` (the client's or Fulcrum's).
    RequestId,
    /// `route`: the matched route (`host` and `path_prefix`, e.g. `api.example.com/v1/`),
    /// or `default` when none matched.
    Route,
    /// `pool`: the pool the request goes to.
    Pool,
    /// `host`: the request's host (without port).
    Host,
    /// `scheme`: `http` or `https`.
    Scheme,
}

impl Var {
    /// Every variable with its name.
    pub const ALL: [(Var, &'static str); 7] = [
        (Var::ClientAddr, "client_addr"),
        (Var::ClientPort, "client_port"),
        (Var::RequestId, "request_id"),
        (Var::Route, "route"),
        (Var::Pool, "pool"),
        (Var::Host, "host"),
        (Var::Scheme, "scheme"),
    ];

    pub fn named(name: &str) -> Option<Var> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(v, _)| *v)
    }

    /// The names, for error messages: `${client_addr}, ${client_port}, ...`.
    pub fn help() -> String {
        Self::ALL
            .iter()
            .map(|(_, n)| format!("${{{n}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var(Var),
}

/// A header value with variables: `${name}` is replaced, `$$` is a `$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
    /// As written (for the saved configuration).
    pub source: String,
}

/// Why a template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown variable `${{{0}}}`")]
    Unknown(String),
    #[error("unterminated `${{` (a `$` that is not a variable is written `$$`)")]
    Unterminated,
    #[error("a lone `$` (write `$$` for a `$`, or `${{name}}` for a variable)")]
    Dollar,
    #[error("a control character (CR, LF, NUL, ...) in a header value")]
    Control,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        if s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(TemplateError::Control);
        }
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('$') {
            text.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(r) = after.strip_prefix('$') {
                text.push('$');
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                let end = r.find('}').ok_or(TemplateError::Unterminated)?;
                let name = &r[..end];
                let var = Var::named(name).ok_or_else(|| TemplateError::Unknown(name.into()))?;
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Var(var));
                rest = &r[end + 1..];
            } else {
                return Err(TemplateError::Dollar);
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template {
            parts,
            source: s.to_owned(),
        })
    }

    /// The value for one request; `var` gives each variable's value (no CR/LF: the
    /// caller's values are addresses, ids, names).
    pub fn expand(&self, out: &mut Vec<u8>, mut var: impl FnMut(Var, &mut Vec<u8>)) {
        for p in &self.parts {
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Var(v) => var(*v, out),
            }
        }
    }
}

/// `set`, `add` and `remove` of header fields (names lower-case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Replaces every field of the name with one.
    pub set: Vec<(String, Template)>,
    /// Appends a field.
    pub add: Vec<(String, Template)>,
    /// Drops every field of the name.
    pub remove: Vec<String>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// These rules, then `next`'s.
    #[must_use]
    pub fn then(&self, next: &HeaderRules) -> HeaderRules {
        let cat = |a: &[(String, Template)], b: &[(String, Template)]| {
            a.iter().chain(b).cloned().collect::<Vec<_>>()
        };
        HeaderRules {
            set: cat(&self.set, &next.set),
            add: cat(&self.add, &next.add),
            remove: self.remove.iter().chain(&next.remove).cloned().collect(),
        }
    }

    /// Whether a field of this name (any case) is dropped from what is passed on (removed,
    /// or replaced by `set`).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
            || self
                .set
                .iter()
                .any(|(r, _)| r.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// A content coding Fulcrum compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Br,
    Zstd,
}

impl Coding {
    pub const ALL: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    pub const fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    pub fn named(s: &str) -> Option<Coding> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// `[service.compression]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// Offered codings, the preferred first (breaks ties of the client's q-values).
    pub algorithms: Vec<Coding>,
    /// Answers whose `Content-Length` is below this are sent as they are (an answer
    /// without `Content-Length` is compressed).
    pub min_size: u64,
    /// Media types compressed: `text/html`, or `text/*`.
    pub types: Vec<String>,
    /// Compression level per coding (gzip 0..=9, br 0..=11, zstd 1..=22).
    pub gzip_level: u32,
    pub br_level: u32,
    pub zstd_level: u32,
}

/// `[service.compression] types` when absent.
pub const DEFAULT_TYPES: [&str; 8] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/wasm",
    "image/svg+xml",
    "application/manifest+json",
    "application/x-ndjson",
];

/// `[service.compression] min_size` when absent (bytes).
pub const DEFAULT_MIN_SIZE: u64 = 1024;

impl Compression {
    /// The coding for a request with this `Accept-Encoding` (all its fields): the highest
    /// q-value among the offered codings (`*` stands for those not named; q=0 refuses),
    /// ties going to the first in `algorithms`. `None`: send it as it is.
    pub fn negotiate<'a>(&self, accept: impl Iterator<Item = &'a [u8]>) -> Option<Coding> {
        let mut q = [None::<u16>; 3];
        let mut star = None;
        for field in accept {
            for item in field.split(|b| *b == b',') {
                let mut it = item.split(|b| *b == b';');
                let name = it.next().unwrap_or_default().trim_ascii();
                let mut weight = 1000u16;
                for p in it {
                    let p = p.trim_ascii();
                    if let Some(v) = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q=")) {
                        weight = qvalue(v).unwrap_or(0);
                    }
                }
                if name == b"*" {
                    star = Some(weight);
                } else if let Some(i) = Coding::ALL
                    .iter()
                    .position(|c| name.eq_ignore_ascii_case(c.as_str().as_bytes()))
                {
                    q[i] = Some(weight);
                } else if name.eq_ignore_ascii_case(b"x-gzip") {
                    q[2] = q[2].or(Some(weight));
                }
            }
        }
        let mut best: Option<(u16, Coding)> = None;
        for &c in &self.algorithms {
            let i = Coding::ALL.iter().position(|x| *x == c).unwrap_or(0);
            let w = q[i].or(star).unwrap_or(0);
            if w > 0 && best.is_none_or(|(bw, _)| w > bw) {
                best = Some((w, c));
            }
        }
        best.map(|(_, c)| c)
    }

    /// Whether an answer of this media type (its `Content-Type`, parameters ignored) is
    /// compressed.
    pub fn compresses_type(&self, content_type: &[u8]) -> bool {
        let mt = content_type
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(major) => mt
                .split(|b| *b == b'/')
                .next()
                .is_some_and(|m| m.eq_ignore_ascii_case(major.as_bytes())),
            None => mt.eq_ignore_ascii_case(t.as_bytes()),
        })
    }

    /// Whether an answer may be compressed at all (before the client's `Accept-Encoding`
    /// is asked): a status with a body, a type in `types`, no `Content-Encoding` already,
    /// no `Content-Range`, and `Content-Length` (when known) at least `min_size`.
    pub fn compresses(
        &self,
        status: u16,
        content_type: Option<&[u8]>,
        content_encoding: bool,
        content_range: bool,
        length: Option<u64>,
    ) -> bool {
        (200..300).contains(&status)
            && status != 204
            && status != 206
            && !content_encoding
            && !content_range
            && content_type.is_some_and(|t| self.compresses_type(t))
            && length.is_none_or(|n| n >= self.min_size)
    }
}

/// An RFC 9110 qvalue in thousandths.
fn qvalue(v: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(v.trim_ascii()).ok()?;
    let f: f64 = s.parse().ok()?;
    (0.0..=1.0)
        .contains(&f)
        .then(|| (f * 1000.0).round() as u16)
}

/// Which statuses an error page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// `"404"`.
    One(u16),
    /// `"4xx"` or `"5xx"`.
    Class(u16),
}

impl StatusMatch {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::One(s) => s == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }

    /// As written in the config.
    pub fn key(self) -> String {
        match self {
            StatusMatch::One(s) => s.to_string(),
            StatusMatch::Class(c) => format!("{c}xx"),
        }
    }
}

/// An `[service.error_pages]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPage {
    pub status: StatusMatch,
    /// The file sent as the body (read at load and at each reload).
    pub file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(algs: &[Coding]) -> Compression {
        Compression {
            algorithms: algs.to_vec(),
            min_size: 10,
            types: DEFAULT_TYPES.iter().map(|s| (*s).to_owned()).collect(),
            gzip_level: 1,
            br_level: 1,
            zstd_level: 1,
        }
    }

    #[test]
    fn negotiation_follows_q_values_then_preference() {
        let c = comp(&[Coding::Zstd, Coding::Br, Coding::Gzip]);
        let n = |s: &str| c.negotiate(std::iter::once(s.as_bytes()));
        assert_eq!(n("gzip, br"), Some(Coding::Br));
        assert_eq!(n("gzip;q=1, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(n("identity"), None);
        assert_eq!(n("*"), Some(Coding::Zstd));
        assert_eq!(n("*;q=0.1, zstd;q=0, br;q=0"), Some(Coding::Gzip));
        assert_eq!(n("gzip;q=0"), None);
        assert_eq!(n("GZIP ; q=0.3"), Some(Coding::Gzip));
        assert_eq!(n(""), None);
        let g = comp(&[Coding::Gzip]);
        assert_eq!(g.negotiate(std::iter::once(&b"br, zstd"[..])), None);
    }

    #[test]
    fn compressible_answers() {
        let c = comp(&[Coding::Gzip]);
        assert!(c.compresses(200, Some(b"text/html; charset=utf-8"), false, false, None));
        assert!(c.compresses(200, Some(b"application/json"), false, false, Some(10)));
        assert!(!c.compresses(200, Some(b"application/json"), false, false, Some(9)));
        assert!(!c.compresses(200, Some(b"image/png"), false, false, None));
        assert!(!c.compresses(200, Some(b"text/plain"), true, false, None));
        assert!(!c.compresses(200, Some(b"text/plain"), false, true, None));
        assert!(!c.compresses(206, Some(b"text/plain"), false, false, None));
        assert!(!c.compresses(304, Some(b"text/plain"), false, false, None));
        assert!(!c.compresses(200, None, false, false, None));
    }

    #[test]
    fn access_lists() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let a = Access {
            allow: vec![net("127.0.0.0/8"), net("::1/128")],
            deny: vec![net("127.0.0.2/32")],
        };
        assert!(a.permits("127.0.0.1".parse().unwrap()));
        assert!(!a.permits("127.0.0.2".parse().unwrap()));
        assert!(!a.permits("10.0.0.1".parse().unwrap()));
        assert!(a.permits("::1".parse().unwrap()));
        assert!(a.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!a.permits("::ffff:127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn rewrites() {
        let s = Rewrite::StripPrefix("/api".into());
        assert_eq!(s.apply("/api/x?q=1").as_deref(), Some("/x?q=1"));
        assert_eq!(s.apply("/api").as_deref(), Some("/"));
        assert_eq!(s.apply("/api?q").as_deref(), Some("/?q"));
        assert_eq!(s.apply("/other"), None);
        let r = Rewrite::ReplacePrefix {
            from: "/old/".into(),
            to: "/new/".into(),
        };
        assert_eq!(r.apply("/old/a/b").as_deref(), Some("/new/a/b"));
    }

    #[test]
    fn redirects() {
        let r = Redirect {
            status: RedirectStatus::Moved,
            scheme: Some("https".into()),
            host: None,
            path: None,
        };
        assert_eq!(
            r.location("http", "a.test:8080", "/x?y"),
            "https://a.test:8080/x?y"
        );
        let r = Redirect {
            status: RedirectStatus::Found,
            scheme: None,
            host: Some("b.test".into()),
            path: Some("/new".into()),
        };
        assert_eq!(
            r.location("http", "a.test", "/x?y=1"),
            "http://b.test/new?y=1"
        );
    }

    #[test]
    fn templates() {
        let t = Template::parse("ip=${client_addr} $$5 ${request_id}").unwrap();
        let mut out = Vec::new();
        t.expand(&mut out, |v, o| {
            o.extend_from_slice(match v {
                Var::ClientAddr => b"1.2.3.4",
                _ => b"id",
            });
        });
        assert_eq!(out, b"ip=1.2.3.4 $5 id");
        assert_eq!(
            Template::parse("${nope}"),
            Err(TemplateError::Unknown("nope".into()))
        );
        assert_eq!(Template::parse("a\r\nb"), Err(TemplateError::Control));
        assert_eq!(Template::parse("${x"), Err(TemplateError::Unterminated));
        assert_eq!(Template::parse("5$"), Err(TemplateError::Dollar));
    }
}
