//! The HTTP/1.1 server: a lean loop per client connection (clear or TLS). An idle keep-alive
//! connection holds no buffer: it waits for readability first, then takes a buffer from the
//! per-worker pool for the request; the request is handled in a boxed future, so the idle
//! task stays small. Requests are answered in order (pipelining), their backend connection
//! driven inline by [`proxy::forward`]. A connection opening with the HTTP/2 preface (prior
//! knowledge) goes to [`crate::h2`].

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::h1::{self, Decoder, Enc, Framing, HeadError, Msg};
use crate::idle::{idle_limit, DRAIN_IDLE_GRACE};
use crate::proxy::{self, Answer, BodyError, Local, Outcome, ReqBody};
use crate::request::ReqView;
use crate::rules::Encoder;
use crate::{within, ConnCtx};

/// A client connection.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether [`ClientIo::ready`] really waits.
    const WAITS_READY: bool;
    /// Whether an orderly close says so first (TLS: a `close_notify` alert; without it a
    /// client cannot tell the close from a cut, and `openssl s_client` reports "unexpected
    /// eof"). Clear TCP has its FIN when the socket is dropped.
    const CLOSE_NOTIFY: bool = false;
    /// Ready once bytes may be read, without a buffer (at once if unsupported). A poll
    /// method, not a future: an idle connection's task stores no readiness future (152
    /// bytes for `TcpStream::readable`), only the registration's own reader slot is used.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn set_nodelay(&self);
    /// Acknowledges at once what came (see [`crate::upstream::quickack`]).
    fn quickack(&self);
}

impl ClientIo for TcpStream {
    const WAITS_READY: bool = true;
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
    fn set_nodelay(&self) {
        let _ = TcpStream::set_nodelay(self, true);
    }
    fn quickack(&self) {
        crate::upstream::quickack(self);
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<crate::tls::ClientSock> {
    const WAITS_READY: bool = true;
    const CLOSE_NOTIFY: bool = true;
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (crate::tls::ClientSock(sock), tls) = self.get_ref();
        // rustls may hold decrypted bytes (or the peer's close_notify): then there is
        // something to read at once. Otherwise what comes next comes through the socket
        // (a record rustls holds in part is completed by bytes the socket gets).
        if tls.wants_read() {
            sock.poll_read_ready(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
    fn set_nodelay(&self) {
        let _ = self.get_ref().0 .0.set_nodelay(true);
    }
    fn quickack(&self) {
        crate::upstream::quickack(&self.get_ref().0 .0);
    }
}

/// The start of the HTTP/2 connection preface (httparse stops at the version).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2";

/// The longest an orderly close of a TLS connection waits to write its `close_notify` (the
/// client may have stopped reading).
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// Ends a connection in order when `orderly` (see [`ClientIo::CLOSE_NOTIFY`]): TLS sends
/// `close_notify`, then the FIN. Not after a failed answer (`orderly` false), whose end
/// must not look like a complete one.
async fn close_orderly<S: ClientIo>(io: &mut S, orderly: bool) {
    if S::CLOSE_NOTIFY && orderly {
        let _ = within(CLOSE_NOTIFY_WAIT, io.shutdown()).await;
    }
}

/// What follows a request on the connection.
enum Next {
    /// The connection ends in order (its answers are complete).
    Close,
    /// The connection is cut: an answer could not be completed.
    Abort,
    Idle,
    /// Pipelined bytes already read: the next request starts there.
    Carry(Box<Msg>),
    /// HTTP/2 prior knowledge: the bytes read so far.
    H2(Box<Msg>),
}

/// Where a connection's HTTP/1.1 loop starts.
#[derive(Clone, Copy)]
pub(crate) enum Start {
    /// A new connection; it is parked when it idles if `may_park`.
    New { may_park: bool },
    /// Back from the parking lot because it turned readable: read a request at once.
    /// `first`: it had not sent a request yet (`since` is then when it was accepted).
    Unparked { since: Instant, first: bool },
    /// Could not be parked (draining, or the lot failed): it idles in its task.
    Kept { since: Instant, first: bool },
}

/// Serves a plain TCP client connection, parking it when it idles (see [`crate::park`]).
pub(crate) async fn serve_tcp(ctx: Rc<ConnCtx>, sock: TcpStream) {
    serve_tcp_from(ctx, sock, Start::New { may_park: true }).await;
}

/// Serves a connection unparked because it became readable, in a new task (the lot's
/// [`crate::park::Resume`]).
fn resume_h1(ctx: Rc<ConnCtx>, sock: TcpStream, since: Instant, first: bool) {
    tokio::task::spawn_local(serve_tcp_from(ctx, sock, Start::Unparked { since, first }));
}

async fn serve_tcp_from(mut ctx: Rc<ConnCtx>, mut sock: TcpStream, mut start: Start) {
    loop {
        let Some((c, s, since, first)) = serve_h1(ctx, sock, start).await else {
            return;
        };
        match crate::park::park(c, s, since, first, resume_h1) {
            Ok(()) => return,
            Err((c, s)) => {
                (ctx, sock) = (c, s);
                start = Start::Kept { since, first };
            }
        }
    }
}

/// An idle connection's timer fired at `now`: when it should fire next, or how the wait
/// ends (closed: `idle_timeout` since the last request, or the drain's grace over; parked).
fn idle_deadline(
    now: Instant,
    last_request: Instant,
    idle_timeout: Duration,
    park_after: Option<Duration>,
    drain_until: Option<Instant>,
) -> Result<Instant, Wake> {
    if now >= last_request + idle_timeout {
        return Err(Wake::Close);
    }
    if drain_until.is_some_and(|d| now >= d) {
        tracing::debug!("draining: closed a keep-alive connection idle through the grace");
        return Err(Wake::Close);
    }
    Ok(match (park_after, drain_until) {
        // draining: no parking (the lot gives what it holds the same grace)
        (_, Some(d)) => d.min(last_request + idle_timeout),
        (Some(p), None) if now >= last_request + p => return Err(Wake::Park),
        (Some(p), None) => last_request + p,
        (None, None) => last_request + idle_timeout,
    })
}

/// How an idle wait ended.
enum Wake {
    Readable,
    Close,
    Park,
}

/// The HTTP/1.1 loop of one connection. Returns the connection when it has idled for
/// [`crate::idle::PARK_AFTER`] and may be parked (its [`idle_limit`] not yet reached), for
/// the caller to park it, with the time its idling counts from and whether it has not sent
/// a request yet.
#[allow(clippy::too_many_lines)] // one loop: idle wait, request, what follows
pub(crate) async fn serve_h1<S: ClientIo>(
    mut ctx: Rc<ConnCtx>,
    mut io: S,
    start: Start,
) -> Option<(Rc<ConnCtx>, S, Instant, bool)> {
    // A new connection that can wait for readability without a buffer (clear TCP) idles
    // until its first bytes as a keep-alive connection does between requests: no buffer,
    // parked after `PARK_AFTER` (a preconnected or silent client costs what an idle
    // keep-alive one does). `last_request` is its accept until the first request.
    let (mut first, read_at_once, may_park, mut last_request) = match start {
        Start::New { may_park } => (true, !S::WAITS_READY, may_park, Instant::now()),
        Start::Unparked { since, first } => (first, true, true, since),
        Start::Kept { since, first } => (first, false, false, since),
    };
    // The first request head must be complete within `request_header` of the accept.
    let head_by = last_request + ctx.ext.tuning.header_timeout;
    // A connection back from the lot already had Nagle turned off.
    let mut nodelay = !first;
    // The first request is read at once (it is usually there already), within the header
    // timeout like any request head; so is the request that unparked a connection.
    let mut carry: Option<Box<Msg>> = read_at_once.then(Msg::take);
    // The service's `idle_timeout` between requests (HAProxy's `timeout http-keep-alive`,
    // nginx's `keepalive_timeout`), and the time to park. One timer for the connection's
    // life, re-armed only when it fires early (a request came since it was set): no timer
    // insert and removal per request.
    let mut idle_timeout = idle_limit(&ctx, first);
    let parks_after = |idle_timeout| {
        (may_park && crate::idle::PARK_AFTER < idle_timeout).then_some(crate::idle::PARK_AFTER)
    };
    let mut park_after = parks_after(idle_timeout);
    let mut idle = std::pin::pin!(tokio::time::sleep_until(
        last_request + park_after.unwrap_or(idle_timeout)
    ));
    // Draining: until when an idle connection waits for its next request (answered with
    // `Connection: close`) before it is closed (see [`DRAIN_IDLE_GRACE`]).
    let mut drain_until: Option<Instant> = None;
    let orderly = loop {
        if carry.is_none() {
            // Idle keep-alive: no buffer until the next request shows up.
            let notified = ctx.drain.notified();
            if drain_until.is_none() && ctx.shared.is_draining() {
                drain_until = Some(Instant::now() + DRAIN_IDLE_GRACE);
                idle.as_mut().reset(Instant::now());
            }
            let wake = {
                let mut notified = std::pin::pin!(notified);
                std::future::poll_fn(|cx| {
                    // A request already there is served, whatever timer fired meanwhile (a
                    // busy worker may see both at once): above all once draining, where
                    // closing it would fail the request the grace is there for.
                    if S::WAITS_READY {
                        if let Poll::Ready(r) = io.poll_ready(cx) {
                            return Poll::Ready(r.map_or(Wake::Close, |()| Wake::Readable));
                        }
                    }
                    if drain_until.is_none() && notified.as_mut().poll(cx).is_ready() {
                        drain_until = Some(Instant::now() + DRAIN_IDLE_GRACE);
                        idle.as_mut().reset(Instant::now());
                    }
                    // the timer fired: idle long enough since the last request, the drain
                    // grace is over, or re-armed
                    while idle.as_mut().poll(cx).is_ready() {
                        let next = idle_deadline(
                            Instant::now(),
                            last_request,
                            idle_timeout,
                            park_after,
                            drain_until,
                        );
                        match next {
                            Ok(deadline) => idle.as_mut().reset(deadline),
                            Err(wake) => return Poll::Ready(wake),
                        }
                    }
                    io.poll_ready(cx).map(|r| match r {
                        Ok(()) => Wake::Readable,
                        Err(_) => Wake::Close,
                    })
                })
                .await
            };
            match wake {
                Wake::Readable => {}
                Wake::Close => break true,
                Wake::Park => return Some((ctx, io, last_request, first)),
            }
        }
        // Each request chooses among the backends as they are now (drained, removed, down).
        if let Some(current) = ctx.refresh() {
            ctx = current;
            // A reload may have changed the service's `idle_timeout`.
            idle_timeout = idle_limit(&ctx, first);
            park_after = parks_after(idle_timeout);
            idle.as_mut()
                .reset(last_request + park_after.unwrap_or(idle_timeout));
        }
        let msg = carry.take().unwrap_or_else(Msg::take);
        let idle_until = last_request + idle_timeout;
        let next = Box::pin(one_request(
            &ctx,
            &mut io,
            msg,
            first.then_some(head_by),
            idle_until,
            &mut nodelay,
        ))
        .await;
        last_request = Instant::now();
        if !nodelay && !matches!(next, Next::Close | Next::Abort | Next::H2(_)) {
            // As nginx does: Nagle off once the connection is kept alive (a first answer
            // written in one piece is not delayed by it).
            io.set_nodelay();
            nodelay = true;
        }
        match next {
            Next::Close => break true,
            Next::Abort => break false,
            Next::Idle => {}
            Next::Carry(m) => carry = Some(m),
            Next::H2(m) => return prior_knowledge_h2(ctx, io, m).await,
        }
        if std::mem::take(&mut first) {
            idle_timeout = ctx.svc.idle_timeout;
            park_after = parks_after(idle_timeout);
        }
    };
    close_orderly(&mut io, orderly).await;
    None
}

/// Serves as HTTP/2 a connection that opened with the preface (prior knowledge), given the
/// bytes read so far.
async fn prior_knowledge_h2<S: ClientIo>(
    ctx: Rc<ConnCtx>,
    io: S,
    mut m: Box<Msg>,
) -> Option<(Rc<ConnCtx>, S, Instant, bool)> {
    io.set_nodelay();
    let prefix = std::mem::take(&mut m.buf);
    m.give();
    Box::pin(crate::h2::serve(ctx, io, prefix)).await;
    None
}

/// An HTTP/1.1 request head.
pub(crate) struct H1Req<'a> {
    m: &'a Msg,
    target: &'a [u8],
    authority: Option<&'a [u8]>,
}

impl<'a> H1Req<'a> {
    pub(crate) fn new(m: &'a Msg) -> Self {
        let t = m.get(m.target);
        // Absolute form (RFC 9112 3.2.2): the authority is the host.
        let abs = [&b"http://"[..], b"https://"].into_iter().find_map(|p| {
            (t.len() > p.len() && t[..p.len()].eq_ignore_ascii_case(p)).then(|| &t[p.len()..])
        });
        match abs {
            None => Self {
                m,
                target: t,
                authority: None,
            },
            Some(rest) => {
                let i = rest
                    .iter()
                    .position(|b| *b == b'/' || *b == b'?')
                    .unwrap_or(rest.len());
                Self {
                    m,
                    target: &rest[i..],
                    authority: Some(&rest[..i]),
                }
            }
        }
    }
}

impl ReqView for H1Req<'_> {
    fn method(&self) -> &[u8] {
        self.m.get(self.m.method)
    }
    fn target(&self) -> &[u8] {
        self.target
    }
    fn authority(&self) -> Option<&[u8]> {
        self.authority
    }
    fn version(&self) -> http::Version {
        if self.m.minor == 0 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        }
    }
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.m.headers()
    }
    fn head_len(&self) -> u64 {
        self.m.head_len as u64
    }
}

/// An HTTP/1.1 request body: first the bytes read with the head, then more reads.
struct H1Body<'a, S> {
    io: &'a mut S,
    m: &'a Msg,
    /// Start of the unused bytes in `m`.
    off: usize,
    /// Bytes read after those in `m`.
    extra: Option<Box<Msg>>,
    framing: Result<Framing, &'static str>,
    dec: Decoder,
    /// `Expect: 100-continue` not answered yet.
    expect: bool,
}

impl<S: ClientIo> ReqBody for H1Body<'_, S> {
    fn framing(&self) -> Result<Framing, &'static str> {
        self.framing
    }
    fn is_done(&self) -> bool {
        self.dec.is_done()
    }
    fn take_buffered(&mut self, out: &mut Vec<u8>, enc: Enc) -> Result<u64, BodyError> {
        let (used, mut n) = h1::transcode(&mut self.dec, &self.m.buf[self.off..], enc, out)
            .map_err(|_| BodyError)?;
        self.off += used;
        if let Some(e) = &mut self.extra {
            let (used, m) =
                h1::transcode(&mut self.dec, e.rest(), enc, out).map_err(|_| BodyError)?;
            e.consume(used);
            n += m;
        }
        Ok(n)
    }
    fn take_trailers(&mut self) -> Option<http::HeaderMap> {
        self.dec.take_trailers()
    }
    async fn wait_more(&mut self) -> Result<(), BodyError> {
        if self.expect {
            self.expect = false;
            self.io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| BodyError)?;
        }
        // A client writing head and body apart with Nagle on waits for this ACK.
        self.io.quickack();
        let e = self.extra.get_or_insert_with(Msg::take);
        match e.read_body_from(self.io).await {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(BodyError),
        }
    }
}

#[allow(clippy::single_match_else)]
/// Reads one request head into `msg` (within the header timeout once started). A keep-alive
/// connection that had to wait for it here (TLS) is closed at `idle_until`.
async fn read_head<S: ClientIo>(
    c: &ConnCtx,
    io: &mut S,
    msg: &mut Msg,
    head_by: Option<Instant>,
    idle_until: Instant,
) -> Result<(), Option<Local>> {
    let first = head_by.is_some();
    let mut deadline: Option<Instant> = None;
    if !first && !S::WAITS_READY && msg.buf.is_empty() {
        // An idle keep-alive connection that cannot wait without a buffer: it
        // idles here until the next request starts, its `idle_timeout` since the last
        // request is over, or the process drains.
        let notified = c.drain.notified();
        if c.shared.is_draining() {
            return Err(None);
        }
        tokio::select! {
            r = msg.read_from(io) => match r {
                Ok(n) if n > 0 => {}
                _ => return Err(None),
            },
            () = notified => return Err(None),
            () = tokio::time::sleep_until(idle_until) => return Err(None),
        }
    }
    loop {
        match msg.parse_request() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(HeadError::TooLarge) => {
                return Err(Some(Local::new(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request header fields too large",
                )))
            }
            Err(HeadError::Bad) => {
                return Err(Some(Local::new(
                    http::StatusCode::BAD_REQUEST,
                    "bad request: malformed request head",
                )))
            }
        }
        // The first read goes through `poll_read` (a short read clears the readiness, so the
        // idle wait that follows is not woken for nothing); the header timeout is armed only
        // if the head is not complete at once.
        let mut read = std::pin::pin!(msg.read_from(io));
        let r = match deadline {
            None => match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            },
            Some(_) => None,
        };
        let r = match r {
            Some(r) => r,
            None => {
                // The first head: within `request_header` of the accept (or of the handshake).
                let d = *deadline.get_or_insert_with(|| {
                    head_by.unwrap_or_else(|| Instant::now() + c.ext.tuning.header_timeout)
                });
                match tokio::time::timeout_at(d, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(Some(Local::new(
                            http::StatusCode::REQUEST_TIMEOUT,
                            "request timeout: the request head did not arrive in time",
                        )))
                    }
                }
            }
        };
        match r {
            Ok(n) if n > 0 => {}
            _ => return Err(None),
        }
    }
}

async fn one_request<S: ClientIo>(
    c: &ConnCtx,
    io: &mut S,
    mut msg: Box<Msg>,
    head_by: Option<Instant>,
    idle_until: Instant,
    nodelay: &mut bool,
) -> Next {
    let first = head_by.is_some();
    if let Err(answer) = read_head(c, io, &mut msg, head_by, idle_until).await {
        if first && msg.buf.starts_with(H2_PREFACE) {
            return Next::H2(msg);
        }
        if let Some(l) = answer {
            proxy::count_refusal(c, l.status);
            let l = l.with_page(c.ext.rules.default.as_deref());
            let mut out = h1::take_vec();
            // The request line may not have been read: the connection closes after this
            // answer, so a body a HEAD request should not get cannot be misread.
            l.write_h1(&mut out, true, false);
            let _ = within(c.svc.idle_timeout, io.write_all(&out)).await;
            h1::give_vec(out);
        }
        msg.give();
        return Next::Close;
    }
    let req = H1Req::new(&msg);
    let conn_has = |t: &str| {
        msg.headers()
            .any(|(n, v)| n.eq_ignore_ascii_case(b"connection") && h1::has_token(v, t))
    };
    let mut close = if msg.minor == 0 {
        !conn_has("keep-alive")
    } else {
        conn_has("close")
    };
    let framing = h1::request_framing(msg.minor, msg.headers());
    let expect = msg.headers().any(|(n, v)| {
        n.eq_ignore_ascii_case(b"expect") && v.trim_ascii().eq_ignore_ascii_case(b"100-continue")
    });
    let is_head = req.method() == b"HEAD";
    let mut body = H1Body {
        io,
        m: &msg,
        off: msg.pos,
        extra: None,
        dec: Decoder::new(*framing.as_ref().unwrap_or(&Framing::Empty)),
        framing,
        expect: expect && !matches!(framing, Ok(Framing::Empty)),
    };
    let outcome = proxy::forward(c, &req, &mut body).await;
    let complete = body.dec.is_done() && body.framing.is_ok();
    let (off, extra) = (body.off, body.extra.take());
    close |= !complete || c.shared.is_draining() || c.gone.get();
    let ok = match outcome {
        Outcome::Local(l, done) => {
            let mut out = h1::take_vec();
            let n = l.write_h1(&mut out, close, is_head);
            let ok = matches!(
                within(c.svc.idle_timeout, io.write_all(&out)).await,
                Some(Ok(()))
            );
            h1::give_vec(out);
            done.finish(c, n);
            ok
        }
        Outcome::Backend(ex, _) if ex.upgraded() => {
            let mut pending = msg.buf[off..].to_vec();
            if let Some(e) = &extra {
                pending.extend_from_slice(e.rest());
            }
            relay_upgrade(c, io, ex, &pending).await;
            close = true;
            true
        }
        Outcome::Backend(mut ex, cookie) => {
            // An HTTP/1.1 client's body comes on the connection the answer goes to: what is
            // left of it once an HTTP/2 backend answered is not sent (its stream is reset),
            // and the connection closes since that body was not read to its end.
            drop(ex.take_upload());
            respond(c, io, ex, cookie, msg.minor, is_head, &mut close, nodelay).await
        }
    };
    if !ok || close {
        if let Some(e) = extra {
            e.give();
        }
        msg.give();
        return if ok { Next::Close } else { Next::Abort };
    }
    if let Some(mut e) = extra {
        if !e.rest().is_empty() {
            msg.give();
            e.reset_to_rest();
            return Next::Carry(e);
        }
        e.give();
    }
    if off < msg.buf.len() {
        msg.pos = off;
        msg.reset_to_rest();
        return Next::Carry(msg);
    }
    msg.give();
    Next::Idle
}

/// Writes a backend's answer to an HTTP/1.1 client; whether it was all written. `close` is
/// set when the answer ends the connection (an HTTP/1.0 client's body delimited by it).
#[allow(clippy::too_many_arguments)]
async fn respond<S: ClientIo>(
    c: &ConnCtx,
    io: &mut S,
    mut ex: proxy::Exchange,
    cookie: Option<(&str, &str)>,
    minor: u8,
    is_head: bool,
    close: &mut bool,
    nodelay: &mut bool,
) -> bool {
    // A compressed body's length is known only at its end: chunked (HTTP/1.0: close).
    let zip = ex.take_encoder();
    let client_framing = if zip.is_some() {
        Framing::Chunked
    } else {
        ex.framing
    };
    let enc = match client_framing {
        Framing::Empty | Framing::Length(_) => Enc::Identity,
        Framing::Chunked | Framing::Close if minor >= 1 => Enc::Chunked,
        Framing::Chunked | Framing::Close => {
            *close = true;
            Enc::Identity
        }
    };
    let mut out = h1::take_vec();
    put_head(&mut out, &ex);
    if let Some((name, value)) = cookie {
        out.extend_from_slice(b"Set-Cookie: ");
        out.extend_from_slice(proxy::set_cookie(name, value).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if enc == Enc::Chunked && !is_head {
        ex.write_chunked_te(&mut out);
    }
    if *close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if minor == 0 {
        // An HTTP/1.0 client that asked for keep-alive must be told it got it.
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut bytes = 0;
    let framing = ex.framing;
    let mut body = Body {
        io,
        out: &mut out,
        enc,
        bytes: &mut bytes,
        nodelay,
        idle: c.svc.idle_timeout,
        zip,
    };
    let ok = match &mut ex.answer {
        Answer::H1 { conn, resp, .. } => {
            resp.reset_to_rest();
            body.copy_h1(conn, resp, framing).await
        }
        Answer::H2(a) => body.copy_h2(&mut a.body, framing).await,
    };
    h1::give_vec(out);
    ex.finish(c, bytes, ok);
    ok
}

/// A backend's response body on its way to an HTTP/1.1 client (after the head, which is in
/// `out`, written with the first piece of the body).
struct Body<'a, S> {
    io: &'a mut S,
    out: &'a mut Vec<u8>,
    enc: Enc,
    bytes: &'a mut u64,
    nodelay: &'a mut bool,
    /// The service's `idle_timeout`: the longest the client may take to accept a write, or
    /// the backend to send the next bytes of its body; over it the exchange is abandoned
    /// (both connections close).
    idle: Duration,
    /// The compressor when the rules compress this body (docs/rules.md).
    zip: Option<Encoder>,
}

impl<S: ClientIo> Body<'_, S> {
    /// Writes what is in `out`; `false` if the client is gone or stopped reading.
    async fn flush(&mut self) -> bool {
        if !self.out.is_empty()
            && !matches!(
                within(self.idle, self.io.write_all(self.out)).await,
                Some(Ok(()))
            )
        {
            return false;
        }
        self.out.clear();
        true
    }

    /// More writes follow: Nagle would hold the next one back.
    fn more(&mut self) {
        if !*self.nodelay {
            self.io.set_nodelay();
            *self.nodelay = true;
        }
    }

    /// From an HTTP/1.1 backend: decoded by its framing from the bytes read after the head,
    /// then from the connection; a chunked body's trailers are passed on.
    async fn copy_h1(
        &mut self,
        conn: &mut crate::upstream::Conn,
        resp: &mut Msg,
        framing: Framing,
    ) -> bool {
        let mut dec = Decoder::new(framing);
        let mut plain = Vec::new();
        loop {
            let into = if self.zip.is_some() {
                plain.clear();
                (&mut plain, Enc::Identity)
            } else {
                (&mut *self.out, self.enc)
            };
            match h1::transcode(&mut dec, resp.rest(), into.1, into.0) {
                Ok((used, n)) => {
                    resp.consume(used);
                    *self.bytes += n;
                }
                Err(_) => return false,
            }
            if !self.compress(&plain, dec.is_done()) {
                return false;
            }
            if dec.is_done() {
                self.enc.finish(self.out, dec.take_trailers().as_ref());
            }
            if !self.flush().await {
                return false;
            }
            if dec.is_done() {
                return true;
            }
            self.more();
            match within(self.idle, resp.read_body_from(conn)).await {
                Some(Ok(n)) if n > 0 => {}
                Some(Ok(_)) => {
                    if dec.eof().is_err() {
                        return false;
                    }
                }
                Some(Err(_)) | None => return false,
            }
        }
    }

    /// From an HTTP/2 backend: its stream's data frames, then its trailers (passed on when
    /// the client's body is chunked).
    async fn copy_h2(&mut self, from: &mut Incoming, framing: Framing) -> bool {
        if framing == Framing::Empty {
            return self.flush().await;
        }
        let mut trailers = None;
        loop {
            if !self.flush().await {
                return false;
            }
            let Some(frame) = within(self.idle, from.frame()).await else {
                return false;
            };
            match frame {
                None => break,
                Some(Err(_)) => return false,
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => {
                        if self.zip.is_some() {
                            if !self.compress(&d, false) {
                                return false;
                            }
                        } else {
                            self.enc.put(self.out, &d);
                        }
                        *self.bytes += d.len() as u64;
                        self.more();
                    }
                    Err(f) => trailers = f.into_trailers().ok(),
                },
            }
        }
        if !self.compress(&[], true) {
            return false;
        }
        self.enc.finish(self.out, trailers.as_ref());
        self.flush().await
    }

    /// With a compressor: `plain` compressed into `out` (and the compressed stream ended
    /// when `last`). Without: nothing to do.
    fn compress(&mut self, plain: &[u8], last: bool) -> bool {
        let Some(z) = self.zip.as_mut() else {
            return true;
        };
        let mut packed = Vec::new();
        if z.push(plain, &mut packed).is_err() {
            return false;
        }
        if last {
            if let Some(z) = self.zip.take() {
                if z.finish(&mut packed).is_err() {
                    return false;
                }
            }
        }
        self.enc.put(self.out, &packed);
        true
    }
}

/// The status line and the headers passed on of a backend's answer.
fn put_head(out: &mut Vec<u8>, ex: &proxy::Exchange) {
    let status = ex.status();
    let reason = ex.reason();
    let d = |n: u16| b'0' + (n % 10) as u8;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[d(status / 100), d(status / 10), d(status), b' ']);
    if reason.is_empty() {
        let r = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.extend_from_slice(r.as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
    for (n, v) in ex.headers() {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
}

/// A `101 Switching Protocols`: passes it on, then relays bytes both ways.
async fn relay_upgrade<S: ClientIo>(c: &ConnCtx, io: &mut S, ex: proxy::Exchange, pending: &[u8]) {
    let mut out = h1::take_vec();
    put_head(&mut out, &ex);
    out.extend_from_slice(b"\r\n");
    let proxy::Exchange {
        answer: Answer::H1 { mut conn, resp, .. },
        done,
        ..
    } = ex
    else {
        return;
    };
    out.extend_from_slice(resp.rest());
    resp.give();
    done.finish(c, 0);
    io.set_nodelay();
    let idle = c.svc.idle_timeout;
    let ok = matches!(within(idle, io.write_all(&out)).await, Some(Ok(())))
        && matches!(within(idle, conn.write_all(pending)).await, Some(Ok(())));
    h1::give_vec(out);
    if ok {
        tunnel(io, &mut conn, idle).await;
    }
}

/// Relays bytes both ways until either side closes, or no byte has moved either way for
/// `idle` (the service's `idle_timeout`).
async fn tunnel<S: ClientIo>(client: &mut S, backend: &mut crate::upstream::Conn, idle: Duration) {
    let last = Cell::new(Instant::now());
    let mut a = Moved {
        io: client,
        last: &last,
    };
    let mut b = Moved {
        io: backend,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let quiet = async {
        loop {
            let until = last.get() + idle;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    };
    tokio::select! {
        _ = copy => {}
        () = quiet => {}
    }
}

/// A connection that notes when bytes last moved on it.
struct Moved<'a, S> {
    io: &'a mut S,
    last: &'a Cell<Instant>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Moved<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.set(Instant::now());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Moved<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.set(Instant::now());
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
