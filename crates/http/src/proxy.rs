//! One request, whatever the client's protocol (HTTP/1.1 from [`crate::server`], HTTP/2 from
//! [`crate::h2`]): rate limit, route, choose a backend (sticky cookie, header/cookie hash, or
//! the pool's scheduler), write the backend's request head (headers rewritten), send it and
//! the body on a pooled connection driven by this task, read the response head, retry what
//! is safe to retry, count and log. The caller writes the answer in its own protocol.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use fulcrum_core::choice::{Flow, RequestKey, Why};
use fulcrum_core::model::{FlowTuple, HashKey, Proto};
use fulcrum_core::retry::{Attempts, Failure, Next, Replay};
use fulcrum_core::sched::PickError;
use fulcrum_state::stats::BackendStats;
use http::{StatusCode, Version};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;

use crate::accesslog::{AccessLogger, Entry};
use crate::h1::{self, Enc, Framing, Msg};
use crate::headers::{
    cookie, host_problem, is_dropped, request_id, request_trailers, strip_port, write_chunked_te,
    write_forwarding, H2Head, HeadOut, Tokens,
};
use crate::request::ReqView;
use crate::rules::{Encoder, Fields, RespEdit, RuleSet, Ruled, Vars};
use crate::upstream::{self, ConnectError};
use crate::{ConnCtx, RoutePool};

/// The client's request body, as the shared logic forwards it.
pub(crate) trait ReqBody {
    /// How the client delimits it (an error: refused with 400, e.g. smuggling attempts).
    fn framing(&self) -> Result<Framing, &'static str>;
    fn is_done(&self) -> bool;
    /// Appends the body bytes at hand (encoded with `enc`) to `out`; returns data bytes.
    fn take_buffered(&mut self, out: &mut Vec<u8>, enc: Enc) -> Result<u64, BodyError>;
    /// Waits for more body bytes.
    async fn wait_more(&mut self) -> Result<(), BodyError>;
    /// The trailer fields that ended the body (once it is done), if any.
    fn take_trailers(&mut self) -> Option<http::HeaderMap>;
}

/// A client body that is malformed, cut short or failed.
#[derive(Debug)]
pub(crate) struct BodyError;

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// The request's host as sent: URI authority, else `Host`.
fn raw_host(r: &impl ReqView) -> Option<&[u8]> {
    r.authority().or_else(|| r.header("host"))
}

/// The request's host without port.
pub(crate) fn host(r: &impl ReqView) -> &str {
    strip_port(
        raw_host(r)
            .and_then(|h| std::str::from_utf8(h).ok())
            .unwrap_or(""),
    )
}

fn path(target: &[u8]) -> &str {
    let p = target.split(|b| *b == b'?').next().unwrap_or(b"");
    std::str::from_utf8(p).unwrap_or("")
}

fn values<'a>(r: &'a impl ReqView, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    r.headers()
        .filter(move |(n, _)| eq(n, name))
        .map(|(_, v)| v)
}

/// Holds one in-flight request on a backend (`active`, for lc/wlc/p2c).
pub(crate) struct Active(Arc<BackendStats>);

impl Active {
    fn new(s: &Arc<BackendStats>) -> Self {
        s.active.fetch_add(1, Ordering::Relaxed);
        s.total.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(s))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What is left to do when the answer's body is done: byte counters, the access log.
pub(crate) struct Done {
    start: Instant,
    log: Option<(Arc<AccessLogger>, Box<Entry>)>,
    _active: Option<Active>,
}

impl Done {
    pub fn finish(self, c: &ConnCtx, bytes: u64) {
        c.svc.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        if let Some((l, mut e)) = self.log {
            e.bytes = bytes;
            e.duration = self.start.elapsed();
            l.write(&e);
        }
    }
}

/// An answer from Fulcrum itself, with a short body saying why (or the service's error
/// page for its status), and always a `Date`.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub status: StatusCode,
    pub why: &'static str,
    /// `Retry-After` seconds (429).
    pub retry_after: Option<u64>,
    /// One more field: `Location` (redirects), `WWW-Authenticate` (401).
    pub field: Option<(&'static str, String)>,
    /// An error page in place of `why`: the body and its content type.
    pub page: Option<(bytes::Bytes, &'static str)>,
    /// When it was decided (its `Date`); `None`: when it is written.
    pub at: Option<Instant>,
}

thread_local! {
    /// The `Date` value of the current second and the instant until which it holds,
    /// formatted once per second per worker (as nginx keeps its cached time strings).
    static DATE: std::cell::RefCell<(Option<Instant>, String)> =
        const { std::cell::RefCell::new((None, String::new())) };
}

/// Calls `f` with the HTTP date (RFC 9110 5.6.7) of `at` (default: now), borrowed from the
/// per-worker cache: no allocation per answer, and no clock read when the caller has just
/// read the clock.
fn with_http_date<R>(at: Option<Instant>, f: impl FnOnce(&[u8]) -> R) -> R {
    let at = at.unwrap_or_else(Instant::now);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0.is_none_or(|until| at >= until) {
            let now = SystemTime::now();
            let into = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let left = std::time::Duration::from_nanos(u64::from(1_000_000_000 - into));
            *d = (Some(at + left), httpdate::fmt_http_date(now));
        }
        f(d.1.as_bytes())
    })
}

/// The `Date` field of an answer made now (from the per-worker cache).
pub(crate) fn http_date() -> http::HeaderValue {
    with_http_date(None, |d| {
        http::HeaderValue::from_bytes(d).unwrap_or(http::HeaderValue::from_static(""))
    })
}

impl Local {
    pub fn new(status: StatusCode, why: &'static str) -> Self {
        Self {
            status,
            why,
            retry_after: None,
            field: None,
            page: None,
            at: None,
        }
    }

    /// With the error page `rules` give for its status (4xx and 5xx only).
    #[must_use]
    pub fn with_page(mut self, rules: Option<&RuleSet>) -> Self {
        if self.page.is_none() && self.status.as_u16() >= 400 {
            self.page = rules.and_then(|r| r.page(self.status.as_u16()));
        }
        self
    }

    pub fn body(&self) -> bytes::Bytes {
        match &self.page {
            Some((b, _)) => b.clone(),
            None => bytes::Bytes::from(format!("{}\n", self.why)),
        }
    }

    /// The length of [`Self::body`].
    pub fn body_len(&self) -> usize {
        self.page
            .as_ref()
            .map_or(self.why.len() + 1, |(b, _)| b.len())
    }

    /// The header fields of the answer, into an HTTP/1.1 head or an HTTP/2 header map; an
    /// HTTP/1.1 head also gets its `Content-Length`. Written in place: the redirect rule's
    /// cost (bench/rules.py) was in building them as owned strings first.
    pub fn write_fields<O: HeadOut>(&self, out: &mut O) {
        let ct = self
            .page
            .as_ref()
            .map_or("text/plain; charset=utf-8", |(_, t)| *t);
        with_http_date(self.at, |d| out.field(b"date", d));
        out.field(b"content-type", ct.as_bytes());
        if let Some(s) = self.retry_after {
            out.field(b"retry-after", itoa_buf(s).get());
        }
        if let Some((n, v)) = &self.field {
            out.field(n.as_bytes(), v.as_bytes());
        }
        if !O::H2 {
            out.field(b"content-length", itoa_buf(self.body_len() as u64).get());
        }
    }

    /// As an HTTP/1.1 message; the body bytes written. The answer to a `HEAD` request
    /// carries the head a `GET` would (its `content-length` too) and no body (RFC 9110
    /// 9.3.2): bytes after it would be read as the start of the next answer.
    pub fn write_h1(&self, out: &mut Vec<u8>, close: bool, head: bool) -> u64 {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        self.write_fields(out);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if head {
            return 0;
        }
        if let Some((b, _)) = &self.page {
            out.extend_from_slice(b);
        } else {
            out.extend_from_slice(self.why.as_bytes());
            out.push(b'\n');
        }
        self.body_len() as u64
    }
}

/// A backend's answer, as its protocol delivers it.
pub(crate) enum Answer {
    /// HTTP/1.1: the connection, the parsed head and the body bytes read so far.
    H1 {
        conn: upstream::Conn,
        resp: Box<Msg>,
        /// The connection can carry another request once this body is read.
        keep_alive: bool,
        /// `101 Switching Protocols` to an upgrade request: relay bytes from now on.
        upgraded: bool,
    },
    /// HTTP/2. Boxed: inline it made `Answer` (and `Got`, `Exchange`, `Outcome`, moved
    /// from function to function by value) three times the HTTP/1.1 variant's size, and
    /// each of their moves a memcpy call (callgrind, `bench/h2_callgrind.py`).
    H2(Box<H2Answer>),
}

/// An HTTP/2 backend's answer: the head and the stream's body (data, then perhaps
/// trailers).
pub(crate) struct H2Answer {
    pub head: http::response::Parts,
    pub body: Incoming,
    /// The rest of the client's body, still to be sent when the backend answered before
    /// it was all sent (full duplex, as gRPC streaming calls need): the front end keeps
    /// pumping it ([`upload_rest`]) or drops it, which resets the backend's stream.
    pub upload: Option<upstream::BodyTx>,
}

impl Answer {
    /// The first field of this name in the answer's head.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        match self {
            Answer::H1 { resp, .. } => resp
                .headers()
                .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v),
            Answer::H2(a) => a.head.headers.get(name).map(http::HeaderValue::as_bytes),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Answer::H1 { resp, .. } => resp.status,
            Answer::H2(a) => a.head.status.as_u16(),
        }
    }
}

/// A backend's answer and what is left to do when its body is done.
pub(crate) struct Exchange {
    pub addr: SocketAddr,
    pub answer: Answer,
    /// How the body is delimited for an HTTP/1.1 client: an HTTP/1.1 backend's own framing;
    /// for an HTTP/2 backend `Length` when it sent `Content-Length`, else `Chunked`.
    pub framing: Framing,
    pub done: Done,
    /// What the response rules change (headers, compression); `None`: nothing.
    pub edit: Option<Box<RespEdit>>,
}

impl Exchange {
    /// The sender of the rest of the client's body, when an HTTP/2 backend answered before
    /// the body was all sent (see [`Answer::H2`]).
    pub fn take_upload(&mut self) -> Option<upstream::BodyTx> {
        match &mut self.answer {
            Answer::H2(a) => a.upload.take(),
            Answer::H1 { .. } => None,
        }
    }

    /// The response headers to pass on: without hop-by-hop ones (unless upgraded), and
    /// without `Content-Length` when the body is re-framed.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let (h1, h2) = match &self.answer {
            Answer::H1 { resp, upgraded, .. } => {
                let named = Tokens::of(resp.headers());
                let up = *upgraded;
                let reframed = matches!(self.framing, Framing::Chunked | Framing::Close);
                let kept = resp.headers().filter(move |(n, _)| {
                    up || !(is_dropped(n, &named, false) || (reframed && eq(n, "content-length")))
                });
                (Some(kept), None)
            }
            Answer::H2(a) => (
                None,
                Some(
                    a.head
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
                ),
            ),
        };
        let edit = self.edit.as_deref();
        h1.into_iter()
            .flatten()
            .chain(h2.into_iter().flatten())
            .filter(move |(n, _)| edit.is_none_or(|e| !e.drops(n)))
            .chain(edit.into_iter().flat_map(|e| e.extra.iter()))
    }

    /// The compressor of the body, when the rules compress it (taken once).
    pub fn take_encoder(&mut self) -> Option<Encoder> {
        self.edit.as_mut().and_then(|e| e.encoder.take())
    }

    pub fn status(&self) -> u16 {
        self.answer.status()
    }

    /// The reason phrase the backend sent (HTTP/2 has none: empty).
    pub fn reason(&self) -> &[u8] {
        match &self.answer {
            Answer::H1 { resp, .. } => resp.get(resp.reason),
            Answer::H2(_) => b"",
        }
    }

    /// Writes `Transfer-Encoding` for the chunked body an HTTP/1.1 client gets: an HTTP/1.1
    /// backend's transfer codings besides chunked are kept, in order.
    pub fn write_chunked_te(&self, out: &mut Vec<u8>) {
        let codings = match &self.answer {
            Answer::H1 { resp, .. } => h1::codings(resp.headers()),
            Answer::H2(_) => Vec::new(),
        };
        write_chunked_te(out, &codings);
    }

    pub fn upgraded(&self) -> bool {
        matches!(self.answer, Answer::H1 { upgraded: true, .. })
    }

    /// The body is done (`complete`) or abandoned: an HTTP/1.1 connection goes back to the
    /// pool if it can carry another request; counters and the access log.
    pub fn finish(self, c: &ConnCtx, bytes: u64, complete: bool) {
        if let Answer::H1 {
            conn,
            resp,
            keep_alive,
            upgraded,
        } = self.answer
        {
            if complete && keep_alive && !upgraded {
                upstream::put_idle(self.addr, conn);
            } else if complete && !upgraded {
                // The backend said `Connection: close`: the exchange is over, in order.
                conn.close();
            }
            resp.give();
        }
        self.done.finish(c, bytes);
    }
}

/// What [`forward`] ends with.
pub(crate) enum Outcome<'c> {
    Local(Local, Done),
    /// With the sticky cookie to set (name, value).
    Backend(Exchange, Option<(&'c str, &'c str)>),
}

/// Per-request facts for the answer and the log.
struct Req<'a> {
    rp: &'a RoutePool,
    rules: Option<&'a RuleSet>,
    start: Instant,
    log: Option<(Arc<AccessLogger>, Box<Entry>)>,
}

/// Counts a request Fulcrum answered itself for `fulcrum_service_refused_total`.
pub(crate) fn count_refusal(c: &ConnCtx, status: StatusCode) {
    let s = &c.svc.stats;
    let counter = match status {
        StatusCode::TOO_MANY_REQUESTS => &s.refused_rate_limited,
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            &s.refused_bad_request
        }
        _ => return,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

impl<'a> Req<'a> {
    /// The request's facts; its head counts as bytes in
    /// (`fulcrum_service_bytes_total{direction="in"}`, the body's bytes are added as they
    /// are forwarded).
    fn new(
        c: &ConnCtx,
        req: &impl ReqView,
        host: &str,
        rp: &'a RoutePool,
        rules: Option<&'a RuleSet>,
        start: Instant,
    ) -> Self {
        let head = req.head_len();
        c.svc.stats.bytes_in.fetch_add(head, Ordering::Relaxed);
        let log = c.ext.access_log.as_ref().map(|l| {
            let mut e = Box::new(entry(c, req, host));
            e.bytes_in = head;
            (Arc::clone(l), e)
        });
        Self {
            rp,
            rules,
            start,
            log,
        }
    }

    /// The answer `got` of backend `idx` (at `addr`), to pass on with the response edit
    /// `edit` makes.
    #[inline]
    fn exchange(
        &mut self,
        idx: usize,
        addr: SocketAddr,
        got: Got,
        edit: impl FnOnce(&Answer, Framing) -> Option<Box<RespEdit>>,
    ) -> Exchange {
        let status = got.answer.status();
        self.rp.backend_metrics[idx].codes.count(status);
        self.rp.metrics.duration.observe(self.start.elapsed());
        let done = self.done(status, Some(addr), Some(got.active));
        let edit = edit(&got.answer, got.framing);
        Exchange {
            addr,
            answer: got.answer,
            framing: got.framing,
            done,
            edit,
        }
    }

    fn done(&mut self, status: u16, backend: Option<SocketAddr>, active: Option<Active>) -> Done {
        let log = self.log.take().map(|(l, mut e)| {
            e.status = status;
            e.backend = backend;
            (l, e)
        });
        Done {
            start: self.start,
            log,
            _active: active,
        }
    }

    fn local(&mut self, l: Local) -> Outcome<'a> {
        let now = Instant::now();
        let l = Local {
            at: Some(now),
            ..l.with_page(self.rules)
        };
        self.rp.metrics.local.count(l.status.as_u16());
        self.rp
            .metrics
            .duration
            .observe(now.saturating_duration_since(self.start));
        let done = self.done(l.status.as_u16(), None, None);
        Outcome::Local(l, done)
    }
}

/// The backend for this request ([`fulcrum_state::snapshot::PoolRt::choose`]: the sticky
/// cookie, persistence or the scheduler) and whether the sticky cookie named it.
fn pick(
    c: &ConnCtx,
    rp: &RoutePool,
    req: &impl ReqView,
    tried: &[usize],
    now: Duration,
) -> Result<(usize, bool), PickError> {
    let pool = &rp.pool;
    let sticky = pool.sticky_cookie.as_ref().and_then(|name| {
        let v = cookie(values(req, "cookie"), name)?;
        rp.cookie_values.iter().position(|x| x.as_bytes() == v)
    });
    let request = match &pool.hash_key {
        HashKey::Header(n) => RequestKey::Value(req.header(n.as_str())),
        HashKey::Cookie(n) => RequestKey::Value(cookie(values(req, "cookie"), n)),
        _ => RequestKey::NoRequest,
    };
    let flow = Flow {
        tuple: FlowTuple {
            src: c.peer,
            dst: c.local,
            proto: Proto::Tcp,
        },
        request,
        sticky,
        tried,
        random: fastrand::u64(..),
        now,
    };
    let (idx, why) = pool.choose(&flow)?;
    Ok((idx, why == Why::Sticky))
}

fn entry(c: &ConnCtx, req: &impl ReqView, host: &str) -> Entry {
    let s = |n: &str| String::from_utf8_lossy(req.header(n).unwrap_or(b"")).into_owned();
    let t = req.target();
    Entry {
        service: c.svc.name.clone(),
        client: c.peer,
        method: http::Method::from_bytes(req.method()).unwrap_or_default(),
        path: String::from_utf8_lossy(if t.is_empty() { b"/" } else { t }).into_owned(),
        version: req.version(),
        host: host.to_owned(),
        status: 0,
        backend: None,
        bytes: 0,
        bytes_in: 0,
        duration: std::time::Duration::ZERO,
        request_id: String::new(),
        user_agent: s("user-agent"),
        referer: s("referer"),
        time: SystemTime::now(),
    }
}

/// The client of a request as header rewriting sees it: its address, whether it came
/// over TLS, and (with `[service.tls] client_ca`) its verified certificate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client<'a> {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The client certificate headers' names (these are dropped from what the client sent)
    /// and the verified certificate, if the client sent one.
    pub cert: Option<(&'a crate::ClientHeaders, Option<&'a crate::PeerCert>)>,
}

impl<'a> From<&'a ConnCtx> for Client<'a> {
    fn from(c: &'a ConnCtx) -> Self {
        Client {
            peer: c.peer,
            tls: c.tls,
            cert: c
                .ext
                .tls
                .as_ref()
                .and_then(|t| t.client_headers.as_ref())
                .map(|h| (h, c.peer_cert.get().map(Box::as_ref))),
        }
    }
}

/// Writes the header fields of the backend's request: those passed on except hop-by-hop
/// ones, forwarding headers appended, the request id, and the framing of the body as
/// forwarded. For HTTP/2 (`O::H2`) the host goes in the URI instead, and `TE: trailers` is
/// passed on (gRPC needs it).
pub(crate) fn write_fields<O: HeadOut>(
    out: &mut O,
    c: Client<'_>,
    req: &impl ReqView,
    rid: &[u8],
    upgrade: bool,
    framing: Framing,
) {
    let cert_names = c.cert.map(|(h, _)| h);
    let is_cert_header = |n: &[u8]| {
        cert_names.is_some_and(|h| {
            n.eq_ignore_ascii_case(h.subject.as_bytes())
                || n.eq_ignore_ascii_case(h.fingerprint.as_bytes())
        })
    };
    // An HTTP/2 request has no `Connection` field to name others (h2 refuses one as
    // malformed, RFC 9113 8.2.2): no pass over its fields for one.
    let named = if req.version() == Version::HTTP_2 {
        Tokens::default()
    } else {
        Tokens::of(req.headers())
    };
    let mut xff: Vec<&[u8]> = Vec::new();
    let mut fwd: Vec<&[u8]> = Vec::new();
    let mut cookies: Vec<&[u8]> = Vec::new();
    let mut had_len = false;
    let mut te_trailers = false;
    for (n, v) in req.headers() {
        if eq(n, "te") {
            te_trailers |= h1::has_token(v, "trailers");
        }
        if is_dropped(n, &named, upgrade) || is_cert_header(n) {
            continue;
        }
        if eq(n, "x-forwarded-for") {
            xff.push(v);
        } else if eq(n, "forwarded") {
            fwd.push(v);
        } else if eq(n, "cookie") {
            cookies.push(v);
        } else if eq(n, "content-length") {
            had_len = true;
        } else if !(eq(n, "host")
            || eq(n, "x-request-id")
            || eq(n, "x-forwarded-proto")
            || eq(n, "x-forwarded-host")
            || eq(n, "expect"))
        {
            out.field(n, v);
        }
    }
    let host = raw_host(req);
    if let (Some(h), false) = (host, O::H2) {
        out.field(b"Host", h);
    }
    if let Some((first, rest)) = cookies.split_first() {
        out.start(b"Cookie");
        out.put(first);
        for v in rest {
            out.put(b"; ");
            out.put(v);
        }
        out.end();
    }
    write_forwarding(out, &xff, &fwd, c.peer, host, c.tls);
    out.field(b"X-Request-Id", rid);
    if let Some((h, Some(pc))) = c.cert {
        out.field(h.subject.as_bytes(), pc.subject.as_bytes());
        out.field(h.fingerprint.as_bytes(), pc.fingerprint.as_bytes());
    }
    if upgrade {
        out.field(b"Connection", b"upgrade");
    }
    if O::H2 && te_trailers {
        out.field(b"TE", b"trailers");
    }
    match framing {
        Framing::Length(n) => {
            out.field(b"Content-Length", itoa_buf(n).get());
        }
        Framing::Chunked if !O::H2 => write_chunked_te(out, &h1::codings(req.headers())),
        Framing::Empty if had_len => out.field(b"Content-Length", b"0"),
        Framing::Empty | Framing::Chunked | Framing::Close => {}
    }
}

/// A number as decimal text, without allocating.
struct Digits {
    buf: [u8; 20],
    at: usize,
}

impl Digits {
    fn get(&self) -> &[u8] {
        &self.buf[self.at..]
    }
}

fn itoa_buf(mut n: u64) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        at: 20,
    };
    loop {
        d.at -= 1;
        d.buf[d.at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

/// Writes the backend's HTTP/1.1 request head.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    c: Client<'_>,
    req: &impl ReqView,
    rid: &[u8],
    upgrade: bool,
    framing: Framing,
) {
    let t = req.target();
    out.extend_from_slice(req.method());
    out.push(b' ');
    out.extend_from_slice(if t.is_empty() { b"/" } else { t });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(out, c, req, rid, upgrade, framing);
    out.extend_from_slice(b"\r\n");
}

/// How one attempt on a backend failed.
enum AttemptError {
    /// The client's body is bad or was cut: not the backend's fault.
    Client,
    /// The backend failed; `sent`: the whole request went out; `answered`: some bytes came.
    Backend { sent: bool, answered: bool },
}

/// How sending a request to one backend failed (the caller decides about retries).
enum Fail {
    /// No connection: nothing was sent.
    Connect(ConnectError),
    /// No response head within the response timeout.
    Timeout,
    /// The client's request (body) is bad or was cut.
    Client,
    /// The backend failed; `reused`: on a connection that had carried requests before.
    Backend {
        sent: bool,
        answered: bool,
        reused: bool,
    },
    /// The backend's answer is malformed (why).
    Malformed(&'static str),
    /// The backend's answer uses a transfer coding this client cannot be sent (HTTP/1.0,
    /// HTTP/2): not the backend's failure.
    Uncarried,
}

impl Fail {
    /// The failure as the retry and ejection policy sees it.
    fn kind(&self) -> Failure {
        match *self {
            Fail::Connect(_) => Failure::Connect,
            Fail::Timeout => Failure::ResponseTimeout,
            Fail::Client => Failure::Client,
            Fail::Backend {
                sent,
                answered,
                reused,
            } => Failure::Backend {
                sent,
                answered,
                reused,
            },
            Fail::Malformed(_) => Failure::Malformed,
            Fail::Uncarried => Failure::Uncarried,
        }
    }

    /// Fulcrum's answer when this is the last failure of a request.
    fn answer(&self) -> Local {
        let (status, why) = match self {
            Fail::Connect(ConnectError::Refused(_)) => (
                StatusCode::BAD_GATEWAY,
                "bad gateway: cannot connect to a backend",
            ),
            Fail::Connect(ConnectError::Timeout) => (
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: connecting to a backend timed out",
            ),
            Fail::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: the backend did not answer in time",
            ),
            Fail::Client => (
                StatusCode::BAD_REQUEST,
                "bad request: invalid or incomplete request",
            ),
            Fail::Backend { .. } => (
                StatusCode::BAD_GATEWAY,
                "bad gateway: the backend closed the connection without an answer",
            ),
            Fail::Malformed(why) => (StatusCode::BAD_GATEWAY, *why),
            Fail::Uncarried => (
                StatusCode::BAD_GATEWAY,
                "bad gateway: the backend's answer has a transfer coding besides chunked, \
                 which only an HTTP/1.1 client can receive",
            ),
        };
        Local::new(status, why)
    }
}

impl From<AttemptError> for Fail {
    fn from(e: AttemptError) -> Self {
        match e {
            AttemptError::Client => Fail::Client,
            AttemptError::Backend { sent, answered } => Fail::Backend {
                sent,
                answered,
                reused: false,
            },
        }
    }
}

/// A response head from a backend.
struct Got {
    answer: Answer,
    framing: Framing,
    active: Active,
}

/// What every attempt of one request shares.
struct Fwd<'a, R> {
    c: &'a ConnCtx,
    /// The pool's `[pool.tls]`, when its backends speak TLS.
    tls: Option<&'a crate::BackendTlsState>,
    req: &'a R,
    rid: &'a [u8],
    upgrade: bool,
    framing: Framing,
    is_head: bool,
    tuning: crate::Tuning,
}

/// Sends the request (head written by `head`, then the body) and reads the final response
/// head into a buffer taken (into `slot`) only once the backend has something to say.
async fn attempt(
    conn: &mut upstream::Conn,
    head: impl FnOnce(&mut Vec<u8>),
    body: &mut impl ReqBody,
    enc: Enc,
    slot: &mut Option<Box<Msg>>,
    bytes_in: &mut u64,
) -> Result<(), AttemptError> {
    let err = |sent| AttemptError::Backend {
        sent,
        answered: false,
    };
    let mut out = h1::take_vec();
    head(&mut out);
    loop {
        *bytes_in += body
            .take_buffered(&mut out, enc)
            .map_err(|BodyError| AttemptError::Client)?;
        let done = body.is_done();
        if done {
            enc.finish(&mut out, request_trailers(body.take_trailers()).as_ref());
        }
        if !out.is_empty() {
            conn.write_all(&out).await.map_err(|_| err(false))?;
        }
        out.clear();
        if done {
            break;
        }
        body.wait_more()
            .await
            .map_err(|BodyError| AttemptError::Client)?;
    }
    h1::give_vec(out);
    // No buffer while the backend works on it.
    conn.readable().await.map_err(|_| err(true))?;
    let resp = slot.get_or_insert_with(Msg::take);
    resp.clear();
    let mut acked = false;
    loop {
        match resp.parse_response() {
            Ok(true) if resp.status >= 100 && resp.status < 200 && resp.status != 101 => {
                resp.reset_to_rest(); // an interim answer (100 Continue, 103): not passed on
                continue;
            }
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(_) => {
                return Err(AttemptError::Backend {
                    sent: true,
                    answered: true,
                })
            }
        }
        if !acked && !resp.buf.is_empty() {
            // The answer has begun: its next piece may wait for this ACK.
            upstream::quickack(conn.tcp());
            acked = true;
        }
        match resp.read_body_from(conn).await {
            Ok(n) if n > 0 => {}
            _ => {
                return Err(AttemptError::Backend {
                    sent: true,
                    answered: !resp.buf.is_empty(),
                })
            }
        }
    }
}

/// `fut`'s output, or `None` once `limit` has passed first: `tokio::time::timeout` on a
/// future already pinned where it was built. `timeout` takes the future by value, and the
/// attempt's state was copied into its `Timeout` and that into the caller's state: four
/// memcpy calls, about 230 instructions per request (callgrind, `bench/h2_callgrind.py`).
/// As `Timeout`, the future is polled before the timer, and the timer is looked at even
/// when the future used up the task's cooperative budget (here it always is: a deadline
/// already passed is reported rather than deferred to the next poll).
async fn bounded<F: Future>(limit: Duration, mut fut: Pin<&mut F>) -> Option<F::Output> {
    let mut sleep = std::pin::pin!(tokio::task::coop::unconstrained(tokio::time::sleep(limit)));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}

const MALFORMED: &str = "bad gateway: the backend's answer is malformed";

/// How an HTTP/1.1 backend's answer head frames its body, or why it cannot be passed on:
/// malformed framing, a `101 Switching Protocols` to a request that asked for no upgrade,
/// or transfer codings (besides chunked) for a client that cannot receive them.
fn answer_framing<R: ReqView>(f: &Fwd<'_, R>, resp: &Msg) -> Result<Framing, Fail> {
    if resp.status == 101 && !f.upgrade {
        return Err(Fail::Malformed(
            "bad gateway: the backend switched protocols for a request that asked for no upgrade",
        ));
    }
    let framing = h1::response_framing(resp, f.is_head).map_err(|()| Fail::Malformed(MALFORMED))?;
    // Only a `Transfer-Encoding` answer (framed chunked or by close) has codings to look for.
    if matches!(framing, Framing::Chunked | Framing::Close)
        && f.req.version() != Version::HTTP_11
        && !h1::codings(resp.headers()).is_empty()
    {
        return Err(Fail::Uncarried);
    }
    Ok(framing)
}

/// One attempt on an HTTP/1.1 backend: a pooled keep-alive connection (or a new one) driven
/// by this task; the response head is read into `slot`'s buffer.
async fn h1_exchange<R: ReqView>(
    f: &Fwd<'_, R>,
    body: &mut impl ReqBody,
    addr: SocketAddr,
    stats: &Arc<BackendStats>,
    slot: &mut Option<Box<Msg>>,
    bytes_in: &mut u64,
) -> Result<Got, Fail> {
    let pooled = if f.upgrade {
        None
    } else {
        upstream::take_idle(addr, f.tls.map_or(0, |t| t.id))
    };
    let reused = pooled.is_some();
    let mut conn = match pooled {
        Some(s) => s,
        // Boxed: a connect's state is most of this future's size, and every request's
        // future is copied whole when the HTTP/2 front end boxes it (`h2::serve`).
        None => Box::pin(upstream::connect_conn(
            addr,
            f.tuning.connect_timeout,
            f.tls,
        ))
        .await
        .map_err(Fail::Connect)?,
    };
    let active = Active::new(stats);
    let enc = if f.framing == Framing::Chunked {
        Enc::Chunked
    } else {
        Enc::Identity
    };
    let res = {
        let sent = std::pin::pin!(attempt(
            &mut conn,
            |out: &mut Vec<u8>| write_head(out, f.c.into(), f.req, f.rid, f.upgrade, f.framing),
            body,
            enc,
            slot,
            bytes_in,
        ));
        bounded(f.tuning.response_timeout, sent).await
    };
    match res {
        None => return Err(Fail::Timeout),
        Some(Err(e)) => {
            return Err(match Fail::from(e) {
                Fail::Backend { sent, answered, .. } => Fail::Backend {
                    sent,
                    answered,
                    reused,
                },
                other => other,
            })
        }
        Some(Ok(())) => {}
    }
    let Some(resp) = slot.take() else {
        return Err(Fail::Malformed(MALFORMED));
    };
    let framing = match answer_framing(f, &resp) {
        Ok(framing) => framing,
        Err(e) => {
            *slot = Some(resp);
            return Err(e);
        }
    };
    if !h1::complete_in(framing, resp.rest()) {
        upstream::quickack(conn.tcp());
    }
    let keep_alive = resp.minor >= 1
        && framing != Framing::Close
        && !f.upgrade
        && !resp
            .headers()
            .any(|(n, v)| eq(n, "connection") && h1::has_token(v, "close"));
    let upgraded = f.upgrade && resp.status == 101;
    Ok(Got {
        answer: Answer::H1 {
            conn,
            resp,
            keep_alive,
            upgraded,
        },
        framing,
        active,
    })
}

/// The backend's HTTP/2 request (without body): method, URI with the client's host as
/// authority (else the backend's address), header fields as for HTTP/1.1.
fn h2_request<R: ReqView>(f: &Fwd<'_, R>, addr: SocketAddr) -> Option<http::request::Parts> {
    let authority = raw_host(f.req)
        .and_then(|h| http::uri::Authority::try_from(h).ok())
        .or_else(|| http::uri::Authority::try_from(addr.to_string()).ok())?;
    let t = f.req.target();
    let uri = http::Uri::builder()
        .scheme(if f.tls.is_some() { "https" } else { "http" })
        .authority(authority)
        .path_and_query(if t.is_empty() { b"/" } else { t })
        .build()
        .ok()?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = http::Method::from_bytes(f.req.method()).ok()?;
    parts.uri = uri;
    parts.version = Version::HTTP_2;
    let mut head = H2Head::default();
    write_fields(&mut head, f.c.into(), f.req, f.rid, false, f.framing);
    parts.headers = head.map;
    Some(parts)
}

/// Forwards the client's body to an HTTP/2 backend stream: one step (the bytes at hand, or
/// the end with its trailers, or a wait for more).
async fn pump(
    body: &mut impl ReqBody,
    tx: &mut Option<upstream::BodyTx>,
    bytes_in: &mut u64,
) -> Result<(), BodyError> {
    let Some(sender) = tx.as_ref() else {
        return Ok(());
    };
    let mut out = Vec::new();
    *bytes_in += body.take_buffered(&mut out, Enc::Identity)?;
    if !out.is_empty() && !sender.data(out).await {
        // The stream is gone: the backend's answer (or its error) tells the rest.
        *tx = None;
        return Ok(());
    }
    if body.is_done() {
        if let Some(s) = tx.take() {
            s.end(request_trailers(body.take_trailers())).await;
        }
        return Ok(());
    }
    body.wait_more().await
}

/// Sends the rest of a client's body on an HTTP/2 backend stream whose answer has already
/// begun, until the body ends (then the stream's request side is ended, trailers included),
/// the client's body fails (the stream is reset) or the backend's stream is gone.
pub(crate) async fn upload_rest(c: &ConnCtx, mut body: impl ReqBody, tx: upstream::BodyTx) {
    let mut tx = Some(tx);
    let mut bytes_in = 0;
    while tx.is_some() {
        if pump(&mut body, &mut tx, &mut bytes_in).await.is_err() {
            break;
        }
    }
    c.svc.stats.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
}

/// How an HTTP/2 exchange ended.
enum End {
    Resp(http::Response<Incoming>),
    Failed(hyper::Error),
    Client,
}

/// One attempt on an HTTP/2 backend (h2c, or h2 over TLS): a stream on this worker's multiplexed connection
/// to it; the client's body is forwarded while the response head is awaited, and what is left
/// of it then goes with the answer (`Answer::H2::upload`).
async fn h2_exchange<R: ReqView>(
    f: &Fwd<'_, R>,
    body: &mut impl ReqBody,
    addr: SocketAddr,
    stats: &Arc<BackendStats>,
    bytes_in: &mut u64,
) -> Result<Got, Fail> {
    let (mut sender, reused) = upstream::h2_sender(addr, f.tuning.connect_timeout, f.tls)
        .await
        .map_err(Fail::Connect)?;
    let active = Active::new(stats);
    let Some(parts) = h2_request(f, addr) else {
        return Err(Fail::Client);
    };
    let (mut tx, up) = if f.framing == Framing::Empty {
        (None, upstream::UpBody::empty())
    } else {
        let (tx, b) = upstream::UpBody::channel();
        (Some(tx), b)
    };
    let req = http::Request::from_parts(parts, up);
    let resp = {
        let exchange = std::pin::pin!(async {
            let send = async {
                sender.ready().await?;
                sender.send_request(req).await
            };
            tokio::pin!(send);
            loop {
                tokio::select! {
                    biased;
                    r = &mut send => return r.map_or_else(End::Failed, End::Resp),
                    p = pump(body, &mut tx, bytes_in), if tx.is_some() => {
                        if p.is_err() {
                            return End::Client;
                        }
                    }
                }
            }
        });
        bounded(f.tuning.response_timeout, exchange).await
    };
    let resp = match resp {
        None => return Err(Fail::Timeout),
        Some(End::Client) => return Err(Fail::Client),
        Some(End::Failed(e)) => {
            tracing::debug!(backend = %addr, error = %e, "http/2 request failed");
            return Err(Fail::Backend {
                sent: !e.is_canceled(),
                answered: false,
                reused,
            });
        }
        Some(End::Resp(r)) => r,
    };
    let (head, body) = resp.into_parts();
    let status = head.status.as_u16();
    let framing = if f.is_head || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .map(|v| h1::parse_len(v.as_bytes()))
        {
            Some(Some(n)) => Framing::Length(n),
            Some(None) => return Err(Fail::Malformed(MALFORMED)),
            None => Framing::Chunked,
        }
    };
    Ok(Got {
        answer: Answer::H2(Box::new(H2Answer {
            head,
            body,
            upload: tx,
        })),
        framing,
        active,
    })
}

/// Whether a request may go on to a backend: its framing, its `Host`, the rules' access
/// phases, the rate limit. `Ok`: how its body is framed; `Err`: the local answer.
async fn admit(
    c: &ConnCtx,
    req: &impl ReqView,
    body: &impl ReqBody,
    rules: Option<&RuleSet>,
) -> Result<Framing, Local> {
    // Request smuggling: never guess which framing the backend would believe.
    let framing = match body.framing() {
        Ok(f) => f,
        Err(why) => {
            count_refusal(c, StatusCode::BAD_REQUEST);
            return Err(Local::new(StatusCode::BAD_REQUEST, why));
        }
    };
    if req.version() <= Version::HTTP_11 {
        if let Some(why) = host_problem(req.version() == Version::HTTP_11, req.headers()) {
            count_refusal(c, StatusCode::BAD_REQUEST);
            return Err(Local::new(StatusCode::BAD_REQUEST, why));
        }
    }
    // The rules' access phases (docs/rules.md): allow/deny, basic auth, redirect.
    if let Some(rs) = rules {
        if let Some(l) = request_phases(c, rs, req).await {
            return Err(l);
        }
    }
    if let Some((_, l)) = &c.ext.limiter {
        if let Err(wait) = l.check(c.peer.ip(), c.shared.now()) {
            count_refusal(c, StatusCode::TOO_MANY_REQUESTS);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(Local {
                retry_after: Some(secs.max(1)),
                ..Local::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests from your address: slow down",
                )
            });
        }
    }
    Ok(framing)
}

/// The request as the backend gets it: the route's rewrite and request header rules applied.
fn ruled<'a, R: ReqView>(req: &'a R, rules: Option<&'a RuleSet>, vars: &Vars<'_>) -> Ruled<'a, R> {
    match rules {
        None => Ruled {
            inner: req,
            target: None,
            drop: None,
            extra: Fields::default(),
        },
        Some(rs) => {
            let hr = &rs.rules.request_headers;
            Ruled {
                inner: req,
                target: rs
                    .rules
                    .rewrite
                    .as_ref()
                    .and_then(|rw| rw.apply(&String::from_utf8_lossy(req.target())))
                    .map(String::into_bytes),
                drop: (!hr.is_empty()).then_some(hr),
                extra: vars.fields(hr),
            }
        }
    }
}

/// Counts a failed connect on the backend's counters.
fn count_connect_failure(e: &Fail, addr: SocketAddr, stats: &BackendStats) {
    match e {
        Fail::Connect(ConnectError::Refused(err)) => {
            tracing::debug!(backend = %addr, error = %err, "connect failed");
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        }
        Fail::Connect(ConnectError::Timeout) => {
            stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// An error answer about to be retried on another backend: its HTTP/1.1 connection goes
/// back to the pool if the (small) error body is all here, its buffer to `slot`.
fn keep_for_retry(got: Got, addr: SocketAddr, slot: &mut Option<Box<Msg>>) {
    if let Answer::H1 {
        conn,
        resp,
        keep_alive,
        ..
    } = got.answer
    {
        let rest = resp.rest().len() as u64;
        let whole = match got.framing {
            Framing::Empty => rest == 0,
            Framing::Length(n) => rest == n,
            _ => false,
        };
        if keep_alive && whole {
            upstream::put_idle(addr, conn);
        } else if whole {
            conn.close();
        }
        *slot = Some(resp);
    }
}

/// Forwards one request to a backend of its route; see the module docs.
pub(crate) async fn forward<'c>(
    c: &'c ConnCtx,
    req: &impl ReqView,
    body: &mut impl ReqBody,
) -> Outcome<'c> {
    let start = Instant::now();
    let ext = &*c.ext;
    ext.budget.earn();
    let host = host(req);
    let (route_i, rp) = ext.route_index(host, path(req.target()));
    let rs = ext.rules.get(route_i);
    let mut r = Req::new(c, req, host, rp, rs.map(|a| &**a), start);

    let framing = match admit(c, req, &*body, r.rules).await {
        Ok(f) => f,
        Err(l) => return r.local(l),
    };

    // HTTP-DNS of the service's `dns_service` (docs/dns.md): answered here, after the
    // access rules and the rate limit.
    if let Some(dns) = ext.cfg.dns_service() {
        if path(req.target()) == fulcrum_core::doh::PATH {
            let l = dns_query(c, dns, req, body, framing).await;
            return r.local(l);
        }
    }

    let pool = &rp.pool;
    let h2 = pool.backend_protocol.is_h2();
    if h2 && framing == Framing::Chunked && !h1::codings(req.headers()).is_empty() {
        return r.local(codings_to_h2());
    }
    // An HTTP/2 backend cannot take an HTTP/1.1 upgrade: `Upgrade` is dropped (the backend
    // answers the plain request).
    let upgrade = !h2 && is_upgrade(req);
    let generated;
    let rid = if let Some(v) = req.header("x-request-id") {
        v
    } else {
        generated = request_id();
        &generated[..]
    };
    if let Some((_, e)) = &mut r.log {
        e.request_id = String::from_utf8_lossy(rid).into_owned();
    }
    let orig = req;
    let vars = Vars {
        client: c.peer,
        request_id: rid,
        route: rs.map_or("default", |r| r.route_name.as_str()),
        pool: &rp.pool.name,
        host,
        tls: c.tls,
    };
    // Rewrite and request headers: the backend gets this view of the request.
    let ruled = ruled(req, r.rules, &vars);
    let req = &ruled;
    let is_head = req.method() == b"HEAD";
    let replay = Replay::of(req.method(), framing == Framing::Empty, upgrade);

    let tuning = ext.tuning;
    let f = Fwd {
        c,
        tls: rp.tls.as_deref(),
        req,
        rid,
        upgrade,
        framing,
        is_head,
        tuning,
    };
    let mut tries = Tries::new(tuning.retries);
    let out = loop {
        // One clock read for the choice and the latency's start.
        let sent_at = c.shared.now();
        let Some((idx, sticky_hit)) = tries.next(c, rp, req, sent_at) else {
            break None;
        };
        let addr = pool.backends[idx].address;
        let stats = &pool.stats[idx];
        let sent = if h2 {
            // Boxed: the largest state of `forward`, which every request's future would
            // carry (and copy, see `h2::serve`) for this backend protocol only.
            Box::pin(h2_exchange(&f, body, addr, stats, &mut tries.bytes_in)).await
        } else {
            h1_exchange(&f, body, addr, stats, &mut tries.slot, &mut tries.bytes_in).await
        };
        let got = match sent {
            Ok(g) => g,
            Err(e) => match tries.failed(c, &e, replay, addr, stats) {
                Next::Resend | Next::Retry => continue,
                Next::Stop => break None,
            },
        };
        observe(c, rp, idx, sent_at);
        let status = got.answer.status();
        if tries.retry_answer(c, rp, stats, status, replay) {
            keep_for_retry(got, addr, &mut tries.slot);
            continue;
        }

        let ex = r.exchange(idx, addr, got, |answer, framing| {
            rs.and_then(|rs| resp_edit(rs, answer, framing, &vars, orig, is_head))
        });
        break Some((ex, cookie_to_set(rp, idx, sticky_hit, status)));
    };
    let (none_tried, last_err) = tries.end(c, &mut r);
    if let Some((ex, cookie)) = out {
        return Outcome::Backend(ex, cookie);
    }
    r.local(no_answer(c, none_tried, last_err))
}

/// HTTP/2 has no transfer codings: a body with one besides chunked cannot be passed on as
/// it is.
#[cold]
fn codings_to_h2() -> Local {
    Local::new(
        StatusCode::NOT_IMPLEMENTED,
        "not implemented: a transfer coding besides chunked cannot be passed to this route's \
         HTTP/2 backends",
    )
}

/// Whether the request asks for an HTTP/1.1 upgrade (`Upgrade`, and `upgrade` in
/// `Connection`).
fn is_upgrade(req: &impl ReqView) -> bool {
    req.version() <= Version::HTTP_11
        && req.header("upgrade").is_some()
        && values(req, "connection").any(|v| h1::has_token(v, "upgrade"))
}

/// Records an answer's latency (sent at `sent_at`) for the scheduler, the backend's
/// stats and its histogram.
#[inline]
fn observe(c: &ConnCtx, rp: &RoutePool, idx: usize, sent_at: std::time::Duration) {
    let now = c.shared.now();
    let took = now.saturating_sub(sent_at);
    rp.pool.observe(idx, took, now);
    rp.pool.stats[idx].record_latency(took);
    rp.backend_metrics[idx].duration.observe(took);
}

/// The sticky cookie to set on an answer of backend `idx`: when the pool has one and the
/// request's cookie did not already name this backend (and not on a 101).
#[inline]
fn cookie_to_set(
    rp: &RoutePool,
    idx: usize,
    sticky_hit: bool,
    status: u16,
) -> Option<(&str, &str)> {
    match &rp.pool.sticky_cookie {
        Some(name) if !sticky_hit && status != 101 => {
            Some((name.as_str(), rp.cookie_values[idx].as_str()))
        }
        _ => None,
    }
}

/// One request's attempts: the backends tried, the retry policy's count, the last
/// failure's answer, and what the attempts share (the response buffer, the body bytes
/// sent).
struct Tries {
    attempts: Attempts,
    tried: Vec<usize>,
    last_err: Option<Local>,
    slot: Option<Box<Msg>>,
    bytes_in: u64,
}

impl Tries {
    fn new(retries: u32) -> Self {
        Self {
            attempts: Attempts::new(retries),
            tried: Vec::new(),
            last_err: None,
            slot: None,
            bytes_in: 0,
        }
    }

    /// The backend of the next attempt (and whether the sticky cookie named it), if the
    /// policy allows one and the pool has one.
    #[inline]
    fn next(
        &mut self,
        c: &ConnCtx,
        rp: &RoutePool,
        req: &impl ReqView,
        now: Duration,
    ) -> Option<(usize, bool)> {
        if !self.attempts.may_start(self.tried.len()) {
            return None;
        }
        let (idx, sticky_hit) = pick(c, rp, req, &self.tried, now).ok()?;
        self.tried.push(idx);
        Some((idx, sticky_hit))
    }

    /// An attempt on `addr` failed with `e`: counts it and keeps its answer. On a stale
    /// pooled connection (`Next::Resend`) the same backend is tried again.
    fn failed(
        &mut self,
        c: &ConnCtx,
        e: &Fail,
        replay: Replay,
        addr: SocketAddr,
        stats: &BackendStats,
    ) -> Next {
        let failure = e.kind();
        let next = self
            .attempts
            .after(failure, replay, self.tried.len(), || true, &c.ext.budget);
        if next == Next::Resend {
            // A pooled connection the backend had closed: try a fresh one.
            self.tried.pop();
            return next;
        }
        count_connect_failure(e, addr, stats);
        if failure.counts_against_backend() {
            c.shared.report_passive(stats, false);
        }
        self.last_err = Some(e.answer());
        next
    }

    /// A backend answered with `status`: reports it to passive health, and says whether
    /// to retry on another backend (a 5xx the policy retries, while one is left).
    #[inline]
    fn retry_answer(
        &mut self,
        c: &ConnCtx,
        rp: &RoutePool,
        stats: &BackendStats,
        status: u16,
        replay: Replay,
    ) -> bool {
        let Some(failure) = Failure::of_status(status) else {
            c.shared.report_passive(stats, true);
            return false;
        };
        stats.http_5xx.fetch_add(1, Ordering::Relaxed);
        if failure.counts_against_backend() {
            c.shared.report_passive(stats, false);
        }
        let tried = &self.tried;
        let others_left = || {
            rp.pool
                .backends
                .iter()
                .enumerate()
                .any(|(i, b)| b.is_eligible() && !tried.contains(&i))
        };
        let next = self
            .attempts
            .after(failure, replay, tried.len(), others_left, &c.ext.budget);
        next == Next::Retry
    }

    /// The attempts are over: the buffer goes back, the body's bytes are counted (service
    /// and log). Returns whether none was tried and the last failure's answer.
    fn end(self, c: &ConnCtx, r: &mut Req<'_>) -> (bool, Option<Local>) {
        if let Some(m) = self.slot {
            m.give();
        }
        c.svc
            .stats
            .bytes_in
            .fetch_add(self.bytes_in, Ordering::Relaxed);
        if let Some((_, e)) = &mut r.log {
            e.bytes_in += self.bytes_in;
        }
        (self.tried.is_empty(), self.last_err)
    }
}

/// The local answer when no backend answered: the last attempt's error, else 503 when none
/// could be tried (counted as refused), else 502.
fn no_answer(c: &ConnCtx, none_tried: bool, last_err: Option<Local>) -> Local {
    if none_tried {
        c.svc
            .stats
            .refused_no_backend
            .fetch_add(1, Ordering::Relaxed);
    }
    match last_err {
        Some(l) => l,
        None if none_tried => Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable: no backend is available",
        ),
        None => Local::new(
            StatusCode::BAD_GATEWAY,
            "bad gateway: no backend could answer",
        ),
    }
}

/// `/dns-query` on an http service with `dns_service`: the body read (at most one DNS
/// message, within the header timeout), then `fulcrum_core::doh::serve` with the dns
/// service's answerer, as the admin listener does.
async fn dns_query(
    c: &ConnCtx,
    service: &str,
    req: &impl ReqView,
    body: &mut impl ReqBody,
    framing: Framing,
) -> Local {
    use fulcrum_core::doh;
    let mut data = Vec::new();
    if framing != Framing::Empty {
        loop {
            if body.take_buffered(&mut data, Enc::Identity).is_err() {
                count_refusal(c, StatusCode::BAD_REQUEST);
                return Local::new(StatusCode::BAD_REQUEST, "bad request: malformed body");
            }
            if data.len() > doh::MAX_MESSAGE {
                return Local::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload too large: a DNS message is at most 65535 bytes",
                );
            }
            if body.is_done() {
                break;
            }
            match crate::within(c.ext.tuning.header_timeout, body.wait_more()).await {
                Some(Ok(())) => {}
                _ => {
                    return Local::new(
                        StatusCode::BAD_REQUEST,
                        "bad request: the body was cut short or too slow",
                    )
                }
            }
        }
    }
    let target = std::str::from_utf8(req.target()).unwrap_or("");
    let a = doh::serve(
        &doh::Request {
            method: req.method(),
            query: target.split_once('?').map(|(_, q)| q),
            content_type: req.header("content-type"),
            accept: req.header("accept"),
            body: &data,
        },
        |packet| fulcrum_state::dns::answer_https(&c.shared, service, packet, c.peer),
    );
    let field = a
        .max_age
        .map(|t| ("cache-control", format!("max-age={t}")))
        .or(a.allow.map(|m| ("allow", m.to_owned())));
    Local {
        field,
        page: Some((bytes::Bytes::from(a.body), a.content_type)),
        ..Local::new(
            StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "dns",
        )
    }
}

/// The `Set-Cookie` value pinning a client to a backend.
pub(crate) fn set_cookie(name: &str, value: &str) -> String {
    format!("{name}={value}; Path=/; HttpOnly")
}

/// The access phases of the rules: allow/deny (403), basic auth (401), redirect. `Some`:
/// Fulcrum answers the request itself.
async fn request_phases(c: &ConnCtx, rs: &RuleSet, req: &impl ReqView) -> Option<Local> {
    if let Some(a) = &rs.rules.access {
        if !a.permits(c.peer.ip()) {
            c.ext.metrics.refused.access.fetch_add(1, Ordering::Relaxed);
            return Some(Local::new(
                StatusCode::FORBIDDEN,
                "forbidden: your address may not use this service",
            ));
        }
    }
    if rs.rules.basic_auth.is_some() && !rs.authorized(req.header("authorization")).await {
        c.ext.metrics.refused.auth.fetch_add(1, Ordering::Relaxed);
        return Some(Local {
            field: Some(("www-authenticate", rs.challenge.clone())),
            ..Local::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized: this service needs a user name and password",
            )
        });
    }
    if let Some(rd) = &rs.rules.redirect {
        let scheme = if c.tls { "https" } else { "http" };
        let host = raw_host(req)
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let target = String::from_utf8_lossy(req.target());
        let location = rd.location(scheme, &host, &target);
        // The client's host and target are already checked (no CR, LF or spaces).
        return Some(Local {
            field: Some(("location", location)),
            ..Local::new(
                StatusCode::from_u16(rd.status.code()).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                "moved: see Location",
            )
        });
    }
    None
}

/// What the response rules do to this answer (`None`: nothing): `response_headers`, and
/// compression when the answer qualifies (docs/rules.md) and the client accepts a coding.
fn resp_edit(
    rs: &Arc<RuleSet>,
    answer: &Answer,
    framing: Framing,
    vars: &Vars<'_>,
    req: &impl ReqView,
    is_head: bool,
) -> Option<Box<RespEdit>> {
    let rh = &rs.rules.response_headers;
    let mut extra = vars.fields(rh);
    let mut coding = None;
    let mut encoder = None;
    if let Some(comp) = &rs.rules.compression {
        let length = match framing {
            Framing::Length(n) => Some(n),
            Framing::Empty | Framing::Chunked | Framing::Close => None,
        };
        let eligible = !is_head
            && framing != Framing::Empty
            && matches!(
                answer,
                Answer::H1 {
                    upgraded: false,
                    ..
                } | Answer::H2(_)
            )
            && comp.compresses(
                answer.status(),
                answer.header("content-type"),
                answer.header("content-encoding").is_some(),
                answer.header("content-range").is_some(),
                length,
            );
        if eligible {
            extra.push(b"Vary", b"Accept-Encoding");
            coding = comp.negotiate(values(req, "accept-encoding"));
            encoder = coding.and_then(|cd| Encoder::new(cd, comp));
            match (coding, &encoder) {
                (Some(cd), Some(_)) => {
                    extra.push(b"Content-Encoding", cd.as_str().as_bytes());
                }
                _ => coding = None,
            }
        }
    }
    if extra.is_empty() && rh.is_empty() {
        return None;
    }
    Some(Box::new(RespEdit {
        rules: Arc::clone(rs),
        extra,
        coding,
        encoder,
    }))
}
