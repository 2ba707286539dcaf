//! The rules of a service and its routes as the data path uses them (docs/rules.md): the
//! decisions are `fulcrum_core::rules`'; here are the files they name (htpasswd, error
//! pages, read at a snapshot build when the rules or the files changed, so a reload after
//! an edit re-reads them and a health change reads nothing), the password check, the
//! request view with the path rewritten and the header rules applied, and the streaming
//! compressors.

use std::cell::RefCell;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use fulcrum_core::config::{Route, ServiceConfig};
use fulcrum_core::rules::{Coding, Compression, HeaderRules, Part, Rules, StatusMatch, Var};
use http::Version;
use smallvec::SmallVec;

use crate::headers::IpText;
use crate::request::ReqView;

/// One route's (or the default's) rules with the files they name, loaded.
#[derive(Debug)]
pub struct RuleSet {
    pub rules: Rules,
    /// `basic_auth`: the htpasswd file's users and bcrypt hashes.
    users: Option<Vec<(String, String)>>,
    /// `WWW-Authenticate` of a 401.
    pub challenge: String,
    /// `error_pages`, loaded: (statuses, body, content type).
    pages: Vec<(StatusMatch, Bytes, &'static str)>,
    /// `${route}`.
    pub route_name: String,
    /// Distinguishes this set's cached password checks from another's.
    id: u64,
    /// The files read (htpasswd, then the error pages) as they were when read.
    stamps: Vec<Stamp>,
}

/// A file's modification time and length (`None`: unreadable).
type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The files `rules` names, in the order [`RuleSet::load`] reads them.
fn stamps(rules: &Rules) -> Vec<Stamp> {
    rules
        .basic_auth
        .iter()
        .map(|b| b.htpasswd.as_path())
        .chain(rules.error_pages.iter().map(|p| p.file.as_path()))
        .map(stamp)
        .collect()
}

/// A service's rule sets: the default's (no route matched) and each route's, `None` where
/// no rule applies (the data path then does nothing more than before).
#[derive(Debug, Default)]
pub struct ServiceRules {
    pub default: Option<Arc<RuleSet>>,
    pub routes: Vec<Option<Arc<RuleSet>>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A file a rule names that cannot be used: which key names it and why.
#[derive(Debug, Clone)]
pub struct FileProblem {
    /// The route's index, or `None` for the service's own keys.
    pub route: Option<usize>,
    /// `basic_auth` or `error_pages`.
    pub table: &'static str,
    /// `htpasswd`, or the status key of an error page.
    pub key: String,
    pub message: String,
    pub help: String,
}

fn route_name(r: Option<&Route>) -> String {
    match r {
        None => "default".into(),
        Some(r) => format!(
            "{}{}",
            r.host.as_ref().map(ToString::to_string).unwrap_or_default(),
            r.path_prefix.as_deref().unwrap_or("")
        ),
    }
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// Reads an htpasswd file: `user:hash` lines of bcrypt hashes (`htpasswd -B`); blank lines
/// and `#` comments skipped.
pub fn read_htpasswd(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read htpasswd file {}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!(
                "{}:{}: not a `user:hash` line",
                path.display(),
                i + 1
            ));
        };
        if !["$2a$", "$2b$", "$2y$", "$2x$"]
            .iter()
            .any(|p| hash.starts_with(p))
        {
            return Err(format!(
                "{}:{}: the hash of user `{user}` is not bcrypt",
                path.display(),
                i + 1
            ));
        }
        users.push((user.to_owned(), hash.to_owned()));
    }
    if users.is_empty() {
        return Err(format!("htpasswd file {} has no users", path.display()));
    }
    Ok(users)
}

const HTPASSWD_HELP: &str =
    "a readable file of user:bcrypt-hash lines, as `htpasswd -B -c FILE USER` writes";

impl RuleSet {
    fn load(
        rules: Rules,
        route_name: String,
        route: Option<usize>,
    ) -> Result<Self, Vec<FileProblem>> {
        let mut problems = Vec::new();
        // Taken before reading: a file changed meanwhile is read again at the next build.
        let stamps = stamps(&rules);
        let users = rules.basic_auth.as_ref().and_then(|b| {
            read_htpasswd(&b.htpasswd)
                .map_err(|message| {
                    problems.push(FileProblem {
                        route,
                        table: "basic_auth",
                        key: "htpasswd".into(),
                        message,
                        help: HTPASSWD_HELP.into(),
                    });
                })
                .ok()
        });
        let mut pages = Vec::new();
        for p in &rules.error_pages {
            match std::fs::read(&p.file) {
                Ok(b) => pages.push((p.status, Bytes::from(b), content_type(&p.file))),
                Err(e) => problems.push(FileProblem {
                    route,
                    table: "error_pages",
                    key: p.status.key(),
                    message: format!("cannot read error page {}: {e}", p.file.display()),
                    help: "a readable file; .html and .htm are sent as text/html, .json as application/json, others as text/plain".into(),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let challenge = rules
            .basic_auth
            .as_ref()
            .map(|b| format!("Basic realm=\"{}\", charset=\"UTF-8\"", b.realm))
            .unwrap_or_default();
        Ok(RuleSet {
            rules,
            users,
            challenge,
            pages,
            route_name,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stamps,
        })
    }

    /// Whether this set was loaded from `rules` under `route_name`, from the files as they
    /// are now (same modification time and length).
    fn is_current(&self, rules: &Rules, route_name: &str) -> bool {
        self.rules == *rules && self.route_name == route_name && self.stamps == stamps(rules)
    }

    /// The error page for one of Fulcrum's own answers.
    pub fn page(&self, status: u16) -> Option<(Bytes, &'static str)> {
        self.pages
            .iter()
            .find(|(m, _, _)| m.matches(status))
            .map(|(_, b, t)| (b.clone(), *t))
    }

    /// Whether `authorization` (the request's header) names a user of the htpasswd file
    /// with the right password. bcrypt is slow by design: it runs on tokio's blocking pool,
    /// and a success is remembered per worker (up to 1024 credentials, per rule set).
    pub async fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let (Some(users), Some(h)) = (&self.users, authorization) else {
            return false;
        };
        let Some(b64) = h
            .trim_ascii()
            .strip_prefix(b"Basic ")
            .or_else(|| h.trim_ascii().strip_prefix(b"basic "))
        else {
            return false;
        };
        let b64 = b64.trim_ascii();
        if AUTH_OK.with(|c| c.borrow().iter().any(|(id, v)| *id == self.id && v == b64)) {
            return true;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        let Some((_, hash)) = users.iter().find(|(u, _)| u.as_bytes() == user) else {
            return false;
        };
        let (hash, pass) = (hash.clone(), pass.to_vec());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            AUTH_OK.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() >= 1024 {
                    c.clear();
                }
                c.push((self.id, b64.to_vec()));
            });
        }
        ok
    }
}

thread_local! {
    /// Per worker: credentials (rule set id, base64 text) that passed bcrypt.
    static AUTH_OK: RefCell<Vec<(u64, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

impl ServiceRules {
    /// Loads the rule sets of a service, reading the files they name; a set of `prev` (the
    /// running snapshot's) with the same rules and unchanged files is kept instead, so a
    /// snapshot rebuilt for a health change reads nothing (and keeps its checked passwords).
    pub fn load(
        svc: &ServiceConfig,
        prev: Option<&ServiceRules>,
    ) -> Result<Self, Vec<FileProblem>> {
        let mut problems = Vec::new();
        let kept = |rules: &Rules, name: &str| {
            let p = prev?;
            std::iter::once(&p.default)
                .chain(&p.routes)
                .flatten()
                .find(|s| s.is_current(rules, name))
                .cloned()
        };
        let mut one = |rules: Rules, name: String, route: Option<usize>| {
            if rules.is_empty() {
                return None;
            }
            if let Some(s) = kept(&rules, &name) {
                return Some(s);
            }
            match RuleSet::load(rules, name, route) {
                Ok(s) => Some(Arc::new(s)),
                Err(p) => {
                    problems.extend(p);
                    None
                }
            }
        };
        let no_rules = Rules::default();
        let service_rules = svc.http().map_or(&no_rules, |h| &h.rules);
        let default = one(service_rules.clone(), route_name(None), None);
        let routes = svc
            .routes()
            .iter()
            .enumerate()
            .map(|(i, r)| {
                one(
                    Rules::merged(service_rules, &r.rules),
                    route_name(Some(r)),
                    Some(i),
                )
            })
            .collect();
        if problems.is_empty() {
            Ok(ServiceRules { default, routes })
        } else {
            Err(problems)
        }
    }

    /// The rule set of the matched route (`None`: the default).
    pub fn get(&self, route: Option<usize>) -> Option<&Arc<RuleSet>> {
        match route {
            None => self.default.as_ref(),
            Some(i) => self.routes.get(i).and_then(Option::as_ref),
        }
    }
}

/// Every problem with the files a service's rules name (for `fulcrum check`).
pub fn check_files(svc: &ServiceConfig) -> Vec<FileProblem> {
    // A service's file is named by the service's key, though each route's set reads it too.
    let mut out: Vec<FileProblem> = Vec::new();
    for p in ServiceRules::load(svc, None).err().unwrap_or_default() {
        if !out
            .iter()
            .any(|q| q.table == p.table && q.key == p.key && q.message == p.message)
        {
            out.push(p);
        }
    }
    out
}

/// The values of a request's variables.
pub(crate) struct Vars<'a> {
    pub client: std::net::SocketAddr,
    pub request_id: &'a [u8],
    pub route: &'a str,
    pub pool: &'a str,
    pub host: &'a str,
    pub tls: bool,
}

impl Vars<'_> {
    pub fn put(&self, v: Var, out: &mut Vec<u8>) {
        match v {
            Var::ClientAddr => {
                out.extend_from_slice(IpText::new(self.client.ip().to_canonical()).get());
            }
            Var::ClientPort => {
                let _ = write!(out, "{}", self.client.port());
            }
            Var::RequestId => out.extend_from_slice(self.request_id),
            Var::Route => out.extend_from_slice(self.route.as_bytes()),
            Var::Pool => out.extend_from_slice(self.pool.as_bytes()),
            Var::Host => out.extend_from_slice(self.host.as_bytes()),
            Var::Scheme => out.extend_from_slice(if self.tls { b"https" } else { b"http" }),
        }
    }

    /// The fields `set` and `add` write, expanded.
    pub fn fields(&self, h: &HeaderRules) -> Fields {
        let mut f = Fields::default();
        let rules = || h.set.iter().chain(&h.add);
        // Room for the names, the text and about an address per variable: one allocation.
        f.buf.reserve(
            rules()
                .map(|(n, t)| {
                    n.len()
                        + t.parts
                            .iter()
                            .map(|p| match p {
                                Part::Text(s) => s.len(),
                                Part::Var(_) => 40,
                            })
                            .sum::<usize>()
                })
                .sum(),
        );
        for (n, t) in rules() {
            f.buf.extend_from_slice(n.as_bytes());
            let name_end = f.buf.len();
            t.expand(&mut f.buf, |var, o| self.put(var, o));
            f.ends.push((name_end, f.buf.len()));
        }
        f
    }
}

/// Header fields the rules add to one head, names and values side by side in one buffer:
/// one allocation per head rather than two per field (callgrind, `bench/rules.py`
/// `headers`: the per-field vectors and their regrowth were about 900 instructions per
/// request).
#[derive(Default)]
pub(crate) struct Fields {
    buf: Vec<u8>,
    /// Per field: where its name ends and where its value ends in `buf`.
    ends: SmallVec<[(usize, usize); 4]>,
}

impl Fields {
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        self.buf.extend_from_slice(name);
        let name_end = self.buf.len();
        self.buf.extend_from_slice(value);
        self.ends.push((name_end, self.buf.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The fields in order: (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(n, v)| {
            let f = (&self.buf[start..n], &self.buf[n..v]);
            start = v;
            f
        })
    }
}

/// A request as the backend gets it: its path rewritten, fields dropped by the header rules
/// and the rules' fields added.
pub(crate) struct Ruled<'a, R> {
    pub inner: &'a R,
    pub target: Option<Vec<u8>>,
    pub drop: Option<&'a HeaderRules>,
    pub extra: Fields,
}

impl<R: ReqView> ReqView for Ruled<'_, R> {
    fn method(&self) -> &[u8] {
        self.inner.method()
    }
    fn target(&self) -> &[u8] {
        self.target
            .as_deref()
            .unwrap_or_else(|| self.inner.target())
    }
    fn authority(&self) -> Option<&[u8]> {
        self.inner.authority()
    }
    fn version(&self) -> Version {
        self.inner.version()
    }
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.inner
            .headers()
            .filter(|(n, _)| self.drop.is_none_or(|h| !h.drops(n)))
            .chain(self.extra.iter())
    }
}

/// What the response rules do to one answer: fields dropped, fields added (the
/// `response_headers` rules, `Content-Encoding`, `Vary`) and the compressor.
pub(crate) struct RespEdit {
    pub rules: Arc<RuleSet>,
    pub extra: Fields,
    pub coding: Option<Coding>,
    /// The compressor, until the body writer takes it.
    pub encoder: Option<Encoder>,
}

impl RespEdit {
    /// Whether a backend's field is not passed on.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.rules.rules.response_headers.drops(name)
            || (self.coding.is_some() && name.eq_ignore_ascii_case(b"content-length"))
    }
}

/// A streaming compressor: each piece of the body in, the compressed bytes so far out
/// (flushed, so a slow stream reaches the client as it comes).
pub(crate) enum Encoder {
    Gzip(Box<Gzip>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

thread_local! {
    /// Deflate states kept per worker thread, by level, reset between answers.
    static DEFLATERS: RefCell<Vec<(u32, flate2::Compress)>> = const { RefCell::new(Vec::new()) };
}
/// Deflate states kept per worker thread at most.
const DEFLATERS_MAX: usize = 8;

/// A gzip stream (RFC 1952) over a deflate state taken from a per-worker pool.
///
/// Why not `flate2::write::GzEncoder`: it allocates and zeroes a new deflate state (several
/// hundred KiB) per answer. Measured with `bench/rules.py` (8 KiB text answers, level 1):
/// `memset` was 18% of Fulcrum's profile and gzip cost 1.35x HAProxy's CPU per request. A
/// state reset for the next answer keeps its buffers. The framing written here is the gzip
/// header (no name, no time) and the CRC-32 and length trailer; the tests decompress every
/// answer with curl and compare it byte for byte.
pub(crate) struct Gzip {
    z: Option<(u32, flate2::Compress)>,
    crc: crc32fast::Hasher,
    len: u32,
    out: Vec<u8>,
}

impl Gzip {
    fn new(level: u32) -> Gzip {
        let z = DEFLATERS
            .with(|p| {
                let mut p = p.borrow_mut();
                let i = p.iter().position(|(l, _)| *l == level)?;
                Some(p.swap_remove(i))
            })
            .unwrap_or_else(|| {
                (
                    level,
                    flate2::Compress::new(flate2::Compression::new(level), false),
                )
            });
        // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unknown
        let out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        Gzip {
            z: Some(z),
            crc: crc32fast::Hasher::new(),
            len: 0,
            out,
        }
    }

    fn deflate(&mut self, mut input: &[u8], flush: flate2::FlushCompress) -> std::io::Result<()> {
        let Some((_, z)) = self.z.as_mut() else {
            return Err(std::io::Error::other("gzip stream already finished"));
        };
        loop {
            self.out.reserve(input.len() / 2 + 256);
            let before = z.total_in();
            let st = z
                .compress_vec(input, &mut self.out, flush)
                .map_err(std::io::Error::other)?;
            let used = usize::try_from(z.total_in() - before).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            let room_left = self.out.len() < self.out.capacity();
            match st {
                flate2::Status::StreamEnd => return Ok(()),
                _ if input.is_empty()
                    && room_left
                    && !matches!(flush, flate2::FlushCompress::Finish) =>
                {
                    return Ok(())
                }
                flate2::Status::BufError if !room_left => {}
                flate2::Status::BufError => {
                    return Err(std::io::Error::other("deflate made no progress"))
                }
                flate2::Status::Ok => {}
            }
        }
    }

    fn push(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.crc.update(data);
        // RFC 1952 ISIZE: the input length modulo 2^32.
        self.len = self.len.wrapping_add(data.len() as u32);
        self.deflate(data, flate2::FlushCompress::Sync)
    }

    fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        self.deflate(&[], flate2::FlushCompress::Finish)?;
        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        self.out.extend_from_slice(&crc.to_le_bytes());
        self.out.extend_from_slice(&self.len.to_le_bytes());
        Ok(std::mem::take(&mut self.out))
    }
}

impl Drop for Gzip {
    fn drop(&mut self) {
        if let Some((level, mut z)) = self.z.take() {
            z.reset();
            DEFLATERS.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < DEFLATERS_MAX {
                    p.push((level, z));
                }
            });
        }
    }
}

impl Encoder {
    pub fn new(c: Coding, cfg: &Compression) -> Option<Encoder> {
        Some(match c {
            Coding::Gzip => Encoder::Gzip(Box::new(Gzip::new(cfg.gzip_level))),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                cfg.br_level,
                22,
            ))),
            Coding::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), i32::try_from(cfg.zstd_level).ok()?)
                    .ok()?,
            ),
        })
    }

    fn inner(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => &mut e.out,
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// Compresses `data` and moves what is ready into `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match self {
            Encoder::Gzip(e) => e.push(data)?,
            Encoder::Br(e) => {
                e.write_all(data)?;
                e.flush()?;
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.flush()?;
            }
        }
        let inner = self.inner();
        out.extend_from_slice(inner);
        inner.clear();
        Ok(())
    }

    /// Ends the stream: its last bytes into `out`.
    pub fn finish(self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let rest = match self {
            Encoder::Gzip(mut e) => e.finish()?,
            Encoder::Br(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        out.extend_from_slice(&rest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn service(dir: &Path) -> ServiceConfig {
        let d = dir.display();
        let text = format!(
            r#"
[[service]]
name = "web"
listen = "127.0.0.1:8080"
protocol = "http"
pool = "p"
error_pages = {{ "404" = "{d}/404.html" }}

[service.basic_auth]
htpasswd = "{d}/htpasswd"

[[service.route]]
path_prefix = "/api/"
pool = "p"
error_pages = {{ "5xx" = "{d}/5xx.html" }}

[[pool]]
name = "p"

[[pool.backend]]
address = "127.0.0.1:9000"
"#
        );
        fulcrum_core::config::parse(&text)
            .unwrap()
            .services
            .remove(0)
    }

    fn sets(r: &ServiceRules) -> Vec<Arc<RuleSet>> {
        std::iter::once(&r.default)
            .chain(&r.routes)
            .flatten()
            .cloned()
            .collect()
    }

    /// A rebuild with nothing changed (a health flap) keeps the loaded sets: nothing is
    /// read (`RuleSet::load` is the only reader); a changed file or rule is read again.
    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = std::env::temp_dir().join(format!("fulcrum-rules-reuse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hash = "$2b$04$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01";
        std::fs::write(dir.join("htpasswd"), format!("alice:{hash}\n")).unwrap();
        std::fs::write(dir.join("404.html"), "<h1>gone</h1>").unwrap();
        std::fs::write(dir.join("5xx.html"), "<h1>broken</h1>").unwrap();
        let svc = service(&dir);

        let first = ServiceRules::load(&svc, None).unwrap();
        assert_eq!(sets(&first).len(), 2);
        let again = ServiceRules::load(&svc, Some(&first)).unwrap();
        for (a, b) in sets(&first).iter().zip(sets(&again)) {
            assert!(Arc::ptr_eq(a, &b), "an unchanged rule set was loaded again");
        }

        // The htpasswd file changes: both sets (the route's inherits basic_auth) read it
        // again; the error page is read again with it.
        std::fs::write(dir.join("htpasswd"), format!("alice:{hash}\nbob:{hash}\n")).unwrap();
        let third = ServiceRules::load(&svc, Some(&again)).unwrap();
        for (a, b) in sets(&again).iter().zip(sets(&third)) {
            assert!(
                !Arc::ptr_eq(a, &b),
                "a changed htpasswd file was not read again"
            );
            assert_eq!(b.users.as_ref().unwrap().len(), 2);
        }

        // Only the route's error page changes: the default set is kept.
        std::fs::write(dir.join("5xx.html"), "<h1>still broken</h1>").unwrap();
        let fourth = ServiceRules::load(&svc, Some(&third)).unwrap();
        let (t, f) = (sets(&third), sets(&fourth));
        assert!(
            Arc::ptr_eq(&t[0], &f[0]),
            "the default set was loaded again"
        );
        assert!(
            !Arc::ptr_eq(&t[1], &f[1]),
            "a changed error page was not read again"
        );
        assert_eq!(&f[1].page(502).unwrap().0[..], b"<h1>still broken</h1>");

        let _ = std::fs::remove_dir_all(&dir);
    }
}
