//! HTTP/2 from clients (ALPN `h2` under TLS, prior knowledge in clear) on the `h2` crate's
//! server; each request goes through the same [`proxy::forward`] as HTTP/1.1 requests, and
//! the backend's answer is streamed back as the response body.
//!
//! The streams of a connection run inside the connection's task ([`Conn`]), not each in a
//! task of its own: no task cell and no scheduler wake-up per stream. Measured with
//! `bench/h2_callgrind.py` (h2load -c64 -m10, instructions per request, medians of 3):
//! hyper's server (used here before: a service call, `H2Stream`, a body pipe, its
//! `Incoming` wrapper and a spawned task per stream over `h2`) 38,769 (26-byte answers) and
//! 46,409 (8 KiB pages); `h2` directly with a task per stream 36,866 and 44,632; with the
//! streams in the connection's task 35,797 and 43,466.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, Stream as _};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::h1::{self, Decoder, Enc, Framing};
use crate::h2guard::{FrameMeter, Guarded};
use crate::headers::{self, H2Head};
use crate::proxy::{self, Answer, BodyError, Exchange, Outcome, ReqBody};
use crate::request::ReqView;
use crate::rules::Encoder;
use crate::ConnCtx;

/// The flow-control windows Fulcrum gives a client, for each stream and for the connection
/// (hyper's server defaults, kept when it was replaced: 1 MiB each).
const WINDOW: u32 = 1024 * 1024;
/// The largest frame a client may send (the protocol's default, 16 KiB).
const MAX_FRAME: u32 = 16 * 1024;
/// How many bytes of answers a stream may queue beyond what the client's window lets go
/// out (hyper's default, 400 KiB).
const MAX_SEND_BUF: usize = 400 * 1024;
/// Streams the client may make fail (malformed frames) before the connection is closed
/// (h2's and hyper's default).
const MAX_ERROR_RESETS: usize = 1024;

/// Serves an HTTP/2 connection until it ends (or, on shutdown, finishes gracefully).
/// `prefix`: the bytes already read from `io` (prior knowledge: the preface and what came
/// with it; empty after a TLS handshake).
pub(crate) async fn serve<I>(ctx: Rc<ConnCtx>, io: I, prefix: Vec<u8>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let lim = ctx.ext.cfg.http().and_then(|h| h.http2).unwrap_or_default();
    let mut b = h2::server::Builder::new();
    b.initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUF)
        .max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
        .max_header_list_size(lim.max_header_list_size.get())
        .max_concurrent_streams(lim.max_concurrent_streams.get());
    let io = Guarded::new(
        io,
        prefix,
        FrameMeter::new(
            lim.max_resets_per_second.get(),
            lim.max_control_frames_per_second.get(),
        ),
    );
    let drain = Rc::clone(&ctx.drain);
    let idle_timeout = ctx.svc.idle_timeout;
    let activity = Rc::new(Activity {
        active: Cell::new(0),
        last: Cell::new(Instant::now()),
        streaming: Cell::new(0),
        moved: Cell::new(Instant::now()),
    });
    let act = Rc::clone(&activity);
    let gone = Rc::new(tokio::sync::Notify::new());
    let gone_tx = Rc::clone(&gone);
    let ctx = RefCell::new(ctx);
    let make = move |req: Request<RecvStream>, tx: SendResponse<Bytes>| {
        let busy = Busy::new(&act);
        // Each request chooses among the backends as they are now (drained, removed, down).
        let c = {
            let mut c = ctx.borrow_mut();
            if let Some(current) = c.refresh() {
                *c = current;
            } else if c.gone.get() {
                // The service was removed: this request is served, then GOAWAY.
                gone_tx.notify_one();
            }
            Rc::clone(&c)
        };
        // Boxed: the stream's future is moved into the connection's set of streams, and
        // `handle`'s is large (the request's parts and body, `forward`'s state). Boxed, it
        // is written once: memcpy was 9% of the h2 profile with it inline (hyper's server,
        // which moved it into a task cell). Boxing copies the whole future once (its size,
        // whatever its state): `forward` boxes its rare large parts (an HTTP/2 backend's
        // exchange, a new connection) to keep it small.
        let fut = Box::pin(handle(c, req, Rc::clone(&act)));
        stream(fut, tx, busy)
    };
    let conn = Conn {
        state: State::Handshake(b.handshake(io)),
        close_pending: false,
        streams: FuturesUnordered::new(),
        make,
    };
    tokio::pin!(conn);
    // Dropping the connection closes it, with its streams and their backend connections.
    let stalled = stalled(&activity, idle_timeout);
    tokio::pin!(stalled);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::trace!(error = %e, "http/2 connection ended");
            }
        }
        () = async { tokio::select! { () = drain.notified() => {}, () = gone.notified() => {} } } => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = &mut stalled => {}
                () = unanswered(&activity, idle_timeout) => {}
            }
        }
        () = idle(&activity, idle_timeout) => {
            // GOAWAY: streams still sending their bodies finish, no new ones start
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = &mut stalled => {}
                () = unanswered(&activity, idle_timeout) => {}
            }
        }
        () = &mut stalled => {
            tracing::debug!("http/2 connection closed: its answers made no progress for idle_timeout");
        }
    }
}

enum State<I> {
    Handshake(h2::server::Handshake<I, Bytes>),
    Serving(h2::server::Connection<I, Bytes>),
}

/// An HTTP/2 connection and its streams, polled in one task: the connection's frames are
/// read and written when it is polled, and each stream that was woken is polled in turn
/// (`FuturesUnordered` keeps a waker per stream: a stream's backend waking it polls that
/// stream only). Ready once the connection ended (no stream left: `h2` ends a connection
/// only once no handle to its streams is alive).
struct Conn<I, M, F> {
    state: State<I>,
    /// A GOAWAY asked for before the handshake ended.
    close_pending: bool,
    streams: FuturesUnordered<F>,
    /// A stream's future for each request.
    make: M,
}

impl<I, M, F> Conn<I, M, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    M: Unpin,
{
    /// GOAWAY: the streams begun finish, no new ones are accepted; the connection ends once
    /// they are done (and the client acknowledged the GOAWAY's PING).
    fn graceful_shutdown(self: Pin<&mut Self>) {
        let me = self.get_mut();
        match &mut me.state {
            State::Handshake(_) => me.close_pending = true,
            State::Serving(c) => c.graceful_shutdown(),
        }
    }
}

impl<I, M, F> Future for Conn<I, M, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    M: FnMut(Request<RecvStream>, SendResponse<Bytes>) -> F + Unpin,
    F: Future<Output = ()>,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        if let State::Handshake(hs) = &mut me.state {
            let mut c = std::task::ready!(Pin::new(hs).poll(cx))?;
            if me.close_pending {
                c.graceful_shutdown();
            }
            me.state = State::Serving(c);
        }
        let State::Serving(conn) = &mut me.state else {
            return Poll::Pending;
        };
        loop {
            // The streams first: what they queue goes out as the connection is polled
            // below, in this same turn.
            while let Poll::Ready(Some(())) = Pin::new(&mut me.streams).poll_next(cx) {}
            let mut new = false;
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, tx)))) => {
                        me.streams.push((me.make)(req, tx));
                        new = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            if !new {
                return Poll::Pending;
            }
        }
    }
}

/// One stream: its answer (`fut`, cancelled if the client resets the stream first), sent
/// with its body.
async fn stream<F>(mut fut: Pin<Box<F>>, mut tx: SendResponse<Bytes>, busy: Busy)
where
    F: Future<Output = Response<H2Body>>,
{
    let res = poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        // Not answered yet: a RST_STREAM from the client cancels the request.
        match tx.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    drop(fut);
    drop(busy);
    let Some(res) = res else {
        return;
    };
    let (mut head, body) = res.into_parts();
    if body.is_end_stream() {
        if tx
            .send_response(Response::from_parts(head, ()), true)
            .is_err()
        {
            tx.send_reset(Reason::INTERNAL_ERROR);
        }
        return;
    }
    if let Some(len) = body.size_hint().exact() {
        head.headers
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    let Ok(mut send) = tx.send_response(Response::from_parts(head, ()), false) else {
        tx.send_reset(Reason::INTERNAL_ERROR);
        return;
    };
    match body {
        H2Body::Full(Some(d)) => {
            // All of it at hand (and bounded): queued at once, h2 sends it as the window
            // allows.
            if send.send_data(d, true).is_err() {
                send.send_reset(Reason::INTERNAL_ERROR);
            }
        }
        // Boxed: only a streamed body needs `pipe`'s state, and inline it made every
        // stream's future larger, so moving it into the connection's set of streams
        // (`FuturesUnordered::push`) a memcpy call.
        body => Box::pin(pipe(body, send)).await,
    }
}

/// Sends `body` on `send` as the client's flow-control window allows (as hyper's
/// `PipeToSendStream`): a frame of the body is read only once the one before had window
/// to go, so a client that does not read holds the backend's answer back; a reset from
/// the client ends it.
async fn pipe(mut body: H2Body, mut send: SendStream<Bytes>) {
    let mut held: Option<(Bytes, bool)> = None;
    poll_fn(|cx| loop {
        if send.poll_reset(cx).is_ready() {
            return Poll::Ready(());
        }
        if let Some((d, eos)) = held.take() {
            while send.capacity() == 0 {
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(0))) => {}
                    Poll::Ready(Some(Ok(_))) => break,
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => {
                        held = Some((d, eos));
                        return Poll::Pending;
                    }
                }
            }
            if send.send_data(d, eos).is_err() || eos {
                return Poll::Ready(());
            }
            continue;
        }
        match std::task::ready!(Pin::new(&mut body).poll_frame(cx)) {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    let eos = body.is_end_stream();
                    if d.is_empty() {
                        if send.send_data(d, eos).is_err() || eos {
                            return Poll::Ready(());
                        }
                    } else {
                        send.reserve_capacity(1);
                        held = Some((d, eos));
                    }
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        send.reserve_capacity(0);
                        if send.send_trailers(t).is_err() {
                            send.send_reset(Reason::INTERNAL_ERROR);
                        }
                        return Poll::Ready(());
                    }
                }
            },
            Some(Err(_)) => {
                send.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(());
            }
            None => {
                if send.send_data(Bytes::new(), true).is_err() {
                    send.send_reset(Reason::INTERNAL_ERROR);
                }
                return Poll::Ready(());
            }
        }
    })
    .await;
}

/// Requests in progress on an HTTP/2 connection and when the last one began or ended; the
/// backends' answer bodies being streamed and when one last moved.
struct Activity {
    active: Cell<u32>,
    last: Cell<Instant>,
    streaming: Cell<u32>,
    moved: Cell<Instant>,
}

/// Marks a request in progress (from its arrival until its answer's head is ready); its end
/// is the connection's last activity.
struct Busy(Rc<Activity>);

impl Busy {
    fn new(a: &Rc<Activity>) -> Self {
        // `last` only matters once nothing is active (see `idle`), and the drop sets it: no
        // clock read here.
        a.active.set(a.active.get() + 1);
        Self(Rc::clone(a))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
        self.0.last.set(Instant::now());
    }
}

/// Ready once the connection has had no request for `timeout` (the service's
/// `idle_timeout`, as for HTTP/1.1 keep-alive). One timer per `timeout`, not per request.
async fn idle(a: &Activity, timeout: Duration) {
    loop {
        let deadline = a.last.get() + timeout;
        if Instant::now() < deadline {
            tokio::time::sleep_until(deadline).await;
            continue;
        }
        if a.active.get() == 0 {
            return;
        }
        // requests still in progress: look again a timeout later
        tokio::time::sleep(timeout).await;
    }
}

/// Ready when, after a GOAWAY, nothing is in progress for `timeout`. hyper's graceful
/// shutdown sends GOAWAY with a PING and closes once the client acknowledges it; a client
/// that never does (a broken or hostile one) would keep the connection, and its file
/// descriptor, forever. Then it is closed without waiting further (nginx closes an idle
/// HTTP/2 connection right after its GOAWAY).
async fn unanswered(a: &Activity, timeout: Duration) {
    loop {
        tokio::time::sleep(timeout).await;
        if a.active.get() == 0 && a.streaming.get() == 0 {
            return;
        }
    }
}

/// Ready once answer bodies are being streamed and nothing has moved for `timeout` (the
/// service's `idle_timeout`; a frame of an answer's or of a request's body is progress): the
/// client does not read them (a zero flow-control window, or it stopped reading the
/// connection) or their backends stopped sending. The streams hold
/// backend connections, so the connection is closed (HAProxy's `timeout client`, nginx's
/// `send_timeout`). One timer per `timeout`, not per frame.
async fn stalled(a: &Activity, timeout: Duration) {
    loop {
        let deadline = a.moved.get() + timeout;
        if a.streaming.get() > 0 && Instant::now() >= deadline {
            return;
        }
        if a.streaming.get() == 0 {
            tokio::time::sleep(timeout).await;
        } else {
            tokio::time::sleep_until(deadline).await;
        }
    }
}

struct H2Req<'a>(&'a http::request::Parts);

impl ReqView for H2Req<'_> {
    fn method(&self) -> &[u8] {
        self.0.method.as_str().as_bytes()
    }
    fn target(&self) -> &[u8] {
        self.0
            .uri
            .path_and_query()
            .map_or(b"/", |p| p.as_str().as_bytes())
    }
    fn authority(&self) -> Option<&[u8]> {
        self.0.uri.authority().map(|a| a.as_str().as_bytes())
    }
    fn version(&self) -> http::Version {
        self.0.version
    }
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.0
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }
}

/// An HTTP/2 request body (h2 has checked its framing: a `content-length` matches the
/// DATA frames).
struct H2ReqBody {
    inner: RecvStream,
    framing: Framing,
    pending: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    end: bool,
    /// The connection's: a body still being sent (full duplex) is progress too.
    act: Rc<Activity>,
}

impl H2ReqBody {
    fn new(inner: RecvStream, h: &http::HeaderMap, act: Rc<Activity>) -> Self {
        let end = inner.is_end_stream();
        let len = h
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| h1::parse_len(v.as_bytes()));
        let framing = match (end, len) {
            (true, _) | (false, Some(0)) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Chunked,
        };
        Self {
            inner,
            framing,
            pending: None,
            trailers: None,
            end: framing == Framing::Empty,
            act,
        }
    }

    /// The trailers after the last DATA frame, if any.
    async fn trailers(&mut self) -> Result<(), BodyError> {
        self.end = true;
        match poll_fn(|cx| self.inner.poll_trailers(cx)).await {
            Ok(t) => self.trailers = t,
            // RST_STREAM(NO_ERROR): the client stops sending, without failing the request
            // (RFC 9113 8.1: the answer came early).
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => {}
            Err(_) => return Err(BodyError),
        }
        Ok(())
    }
}

impl ReqBody for H2ReqBody {
    fn framing(&self) -> Result<Framing, &'static str> {
        Ok(self.framing)
    }
    fn is_done(&self) -> bool {
        self.end && self.pending.is_none()
    }
    fn take_buffered(&mut self, out: &mut Vec<u8>, enc: Enc) -> Result<u64, BodyError> {
        Ok(self.pending.take().map_or(0, |d| {
            enc.put(out, &d);
            // Taken on to the backend: the client may send as much more.
            let _ = self.inner.flow_control().release_capacity(d.len());
            d.len() as u64
        }))
    }
    async fn wait_more(&mut self) -> Result<(), BodyError> {
        match poll_fn(|cx| self.inner.poll_data(cx)).await {
            None => self.trailers().await?,
            Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => self.end = true,
            Some(Err(_)) => return Err(BodyError),
            Some(Ok(d)) => {
                self.act.moved.set(Instant::now());
                self.pending = Some(d);
                self.end = self.inner.is_end_stream();
            }
        }
        Ok(())
    }
    fn take_trailers(&mut self) -> Option<http::HeaderMap> {
        self.trailers.take()
    }
}

async fn handle(c: Rc<ConnCtx>, req: Request<RecvStream>, act: Rc<Activity>) -> Response<H2Body> {
    let (parts, body) = req.into_parts();
    let mut body = H2ReqBody::new(body, &parts.headers, Rc::clone(&act));
    // Inside the boxed stream future (see `serve`): not moved.
    let outcome = proxy::forward(&c, &H2Req(&parts), &mut body).await;
    match outcome {
        Outcome::Local(l, done) => {
            // A HEAD answer has the head only (RFC 9110 9.3.2): DATA on it is a stream error
            // to the client (curl: PROTOCOL_ERROR).
            let head_only = parts.method == http::Method::HEAD;
            let text = (!head_only).then(|| l.body());
            done.finish(&c, text.as_ref().map_or(0, |t| t.len() as u64));
            let mut r = Response::new(H2Body::Full(text));
            *r.status_mut() = l.status;
            let mut head = H2Head::default();
            l.write_fields(&mut head);
            if head_only {
                // The length a GET would have had, as for HTTP/1.1.
                head.map.insert(
                    http::header::CONTENT_LENGTH,
                    HeaderValue::from(l.body_len()),
                );
            }
            *r.headers_mut() = head.map;
            r
        }
        Outcome::Backend(mut ex, cookie) => {
            // Full duplex: the client's stream keeps sending its body to the backend while the
            // answer streams back (gRPC client and bidirectional streaming calls).
            if let Some(tx) = ex.take_upload() {
                let c = Rc::clone(&c);
                tokio::task::spawn_local(async move { proxy::upload_rest(&c, body, tx).await });
            }
            // The head straight into a header map: `Response::builder` moves itself (and
            // copies) once per field.
            let status = http::StatusCode::from_u16(ex.status());
            let cookie =
                cookie.map(|(name, value)| HeaderValue::try_from(proxy::set_cookie(name, value)));
            let (Ok(status), None | Some(Ok(_))) = (status, &cookie) else {
                // A status or a cookie HTTP/2 cannot carry.
                ex.finish(&c, 0, false);
                let mut r = Response::new(H2Body::Full(None));
                *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                r.headers_mut()
                    .insert(http::header::DATE, proxy::http_date());
                return r;
            };
            let mut map = http::HeaderMap::with_capacity(16);
            // An upgraded answer's fields are passed whole (`Exchange::headers`): its
            // connection-specific ones cannot go in HTTP/2 (h2 would refuse the head).
            let upgraded = matches!(ex.answer, Answer::H1 { upgraded: true, .. });
            let mut dated = false;
            for (n, v) in ex.headers() {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                    if upgraded && connection_specific(&n) {
                        continue;
                    }
                    dated |= n == http::header::DATE;
                    map.append(n, v);
                }
            }
            if !dated {
                // A backend that sent none: the answer is dated as Fulcrum's own are.
                map.insert(http::header::DATE, proxy::http_date());
            }
            if let Some(Ok(v)) = cookie {
                map.append(http::header::SET_COOKIE, v);
            }
            let zip = ex.take_encoder();
            if zip.is_none() {
                if let Some(body) = whole_body(&mut ex) {
                    // The head's read brought the whole body (a small answer, the common
                    // case): it goes out with the head, without a stream to poll, and the
                    // backend connection goes back to the pool now.
                    ex.finish(&c, body.len() as u64, true);
                    let mut r = Response::new(H2Body::Full((!body.is_empty()).then_some(body)));
                    *r.status_mut() = status;
                    *r.headers_mut() = map;
                    return r;
                }
            }
            let dec = Decoder::new(ex.framing);
            if let Answer::H1 { resp, .. } = &mut ex.answer {
                resp.reset_to_rest();
            }
            act.streaming.set(act.streaming.get() + 1);
            act.moved.set(Instant::now());
            let mut r = Response::new(H2Body::Backend(Box::new(Stream {
                c: Rc::clone(&c),
                ex: Some(ex),
                dec,
                trailers: None,
                bytes: 0,
                act,
                zip,
                pending: None,
            })));
            *r.status_mut() = status;
            *r.headers_mut() = map;
            r
        }
    }
}

/// A field that only means something on one HTTP/1.1 connection (RFC 9113 8.2.2): the
/// hop-by-hop list every answer is filtered by, and `Upgrade`.
fn connection_specific(n: &HeaderName) -> bool {
    *n == http::header::UPGRADE || headers::is_hop_by_hop(n.as_str().as_bytes())
}

/// An HTTP/1.1 backend's length-delimited body when the bytes read with its head hold all of
/// it: taken out of the answer's buffer (the bytes after it, if any, are left as the
/// streamed body leaves them).
fn whole_body(ex: &mut Exchange) -> Option<Bytes> {
    let Answer::H1 {
        resp,
        upgraded: false,
        ..
    } = &mut ex.answer
    else {
        return None;
    };
    let n = match ex.framing {
        Framing::Empty => 0,
        Framing::Length(n) => usize::try_from(n).ok()?,
        Framing::Chunked | Framing::Close => return None,
    };
    let body = Bytes::copy_from_slice(resp.rest().get(..n)?);
    resp.consume(n);
    Some(body)
}

/// A response body: Fulcrum's own, or the backend's streamed.
pub(crate) enum H2Body {
    Full(Option<Bytes>),
    Backend(Box<Stream>),
}

pub(crate) struct Stream {
    c: Rc<ConnCtx>,
    ex: Option<Exchange>,
    /// For an HTTP/1.1 backend's body.
    dec: Decoder,
    /// An HTTP/1.1 backend's trailers, to send after the last data.
    trailers: Option<http::HeaderMap>,
    bytes: u64,
    /// The connection's; counts this body as streaming until it ends.
    act: Rc<Activity>,
    /// The compressor when the rules compress this body (docs/rules.md).
    zip: Option<Encoder>,
    /// A frame held back while the compressor's last bytes go first (an HTTP/2 backend's
    /// trailers, or the end), once those bytes went.
    pending: Option<Held>,
}

/// What a compressed HTTP/2 backend stream sends after the compressor's last bytes.
enum Held {
    Trailers(Frame<Bytes>),
    End,
}

impl Stream {
    fn end(&mut self, complete: bool) {
        if let Some(ex) = self.ex.take() {
            ex.finish(&self.c, self.bytes, complete);
        }
    }

    /// A frame goes to the client: the connection's answers are moving.
    fn moved(&self) {
        self.act.moved.set(Instant::now());
    }
}

impl Stream {
    /// `data` compressed when the rules compress this body (the compressed stream ended
    /// when `last`); else `data` as it is.
    fn pack(&mut self, data: Bytes, last: bool) -> io::Result<Bytes> {
        let Some(z) = self.zip.as_mut() else {
            return Ok(data);
        };
        let mut packed = Vec::new();
        z.push(&data, &mut packed)?;
        if last {
            if let Some(z) = self.zip.take() {
                z.finish(&mut packed)?;
            }
        }
        Ok(Bytes::from(packed))
    }

    /// An HTTP/2 backend's frames, passed on as they come (trailers included).
    fn poll_h2(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            let r = std::task::ready!(self.poll_h2_raw(cx));
            if self.zip.is_none() {
                return Poll::Ready(r);
            }
            match r {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => match self.pack(d, false) {
                        Ok(p) if p.is_empty() => {}
                        Ok(p) => return Poll::Ready(Some(Ok(Frame::data(p)))),
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    },
                    Err(trailers) => {
                        // The compressed stream ends before the trailers.
                        self.pending = Some(Held::Trailers(trailers));
                        return Poll::Ready(Some(self.pack(Bytes::new(), true).map(Frame::data)));
                    }
                },
                None => {
                    self.pending = Some(Held::End);
                    return Poll::Ready(Some(self.pack(Bytes::new(), true).map(Frame::data)));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn poll_h2_raw(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let Some(Exchange {
            answer: Answer::H2(a),
            ..
        }) = self.ex.as_mut()
        else {
            return Poll::Ready(None);
        };
        let r = std::task::ready!(Pin::new(&mut a.body).poll_frame(cx));
        match r {
            None => {
                self.end(true);
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                self.end(false);
                Poll::Ready(Some(Err(io::Error::other(e))))
            }
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
                self.moved();
                Poll::Ready(Some(Ok(f)))
            }
        }
    }

    /// An HTTP/1.1 backend's body, decoded by its framing from the connection; a chunked
    /// body's trailers are sent after the last data.
    fn poll_h1(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            let Some(Exchange {
                answer: Answer::H1 { resp, .. },
                ..
            }) = self.ex.as_mut()
            else {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let mut out = Vec::new();
            if let Ok((used, n)) =
                h1::transcode(&mut self.dec, resp.rest(), Enc::Identity, &mut out)
            {
                resp.consume(used);
                self.bytes += n;
            } else {
                self.end(false);
                return Poll::Ready(Some(Err(io::ErrorKind::InvalidData.into())));
            }
            let done = self.dec.is_done();
            if done {
                self.trailers = self.dec.take_trailers();
                self.end(true);
            }
            let out = match self.pack(Bytes::from(out), done) {
                Ok(b) => b,
                Err(e) => {
                    self.end(false);
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if !out.is_empty() {
                self.moved();
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            let Some(Exchange {
                answer: Answer::H1 { conn, resp, .. },
                ..
            }) = self.ex.as_mut()
            else {
                continue;
            };
            resp.reserve_body_read();
            match std::task::ready!(conn.poll_read_buf(cx, &mut resp.buf)) {
                Ok(0) => {
                    let ok = self.dec.eof().is_ok();
                    self.end(ok);
                    if !ok {
                        return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.end(false);
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.end(false);
        let a = &self.act;
        a.streaming.set(a.streaming.get().saturating_sub(1));
        a.moved.set(Instant::now());
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = io::Error;

    #[allow(clippy::single_match_else)]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let s = match &mut *self {
            H2Body::Full(d) => return Poll::Ready(d.take().map(|d| Ok(Frame::data(d)))),
            H2Body::Backend(s) => &mut **s,
        };
        match s.pending.take() {
            Some(Held::Trailers(t)) => return Poll::Ready(Some(Ok(t))),
            Some(Held::End) => return Poll::Ready(None),
            None => {}
        }
        if matches!(
            s.ex,
            Some(Exchange {
                answer: Answer::H2(_),
                ..
            })
        ) {
            return s.poll_h2(cx);
        }
        s.poll_h1(cx)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            H2Body::Full(d) => d.is_none(),
            H2Body::Backend(s) => {
                s.ex.is_none() && s.trailers.is_none() && s.pending.is_none() && s.zip.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            H2Body::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            H2Body::Backend(s) => match s.ex.as_ref() {
                Some(ex) if ex.framing == Framing::Empty => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}
