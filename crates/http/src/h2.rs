//! HTTP/2 from clients (ALPN `h2` under TLS, prior knowledge in clear) on hyper's server;
//! each request goes through the same [`proxy::forward`] as HTTP/1.1 requests, and the
//! backend's answer is streamed back as the response body.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::exec::LocalExec;
use crate::h1::{self, Decoder, Enc, Framing};
use crate::h2guard::{FrameMeter, Guarded};
use crate::headers::H2Head;
use crate::proxy::{self, Answer, BodyError, Exchange, Outcome, ReqBody};
use crate::request::ReqView;
use crate::rules::Encoder;
use crate::ConnCtx;

/// Serves an HTTP/2 connection until it ends (or, on shutdown, finishes gracefully).
/// `prefix`: the bytes already read from `io` (prior knowledge: the preface and what came
/// with it; empty after a TLS handshake).
pub(crate) async fn serve<I>(ctx: Rc<ConnCtx>, io: I, prefix: Vec<u8>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let lim = ctx.ext.cfg.http().and_then(|h| h.http2).unwrap_or_default();
    let mut b = hyper::server::conn::http2::Builder::new(LocalExec);
    b.timer(TokioTimer::new())
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
    let svc = hyper::service::service_fn(move |req| {
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
        // Boxed: hyper moves each stream's future while spawning it (into the stream, the
        // task cell), and this one is large (the request's parts and body, `forward`'s
        // state). Boxed, it is written once: memcpy was 9% of the h2 profile with it inline,
        // and the task's bind and set_stage copies were ~1,100 instructions per request
        // (callgrind, h2load -c64 -m10) with only `forward` boxed. Boxing copies the whole
        // future once (its size, whatever its state): `forward` boxes its rare large parts
        // (an HTTP/2 backend's exchange, a new connection) to keep it small.
        // (`Box::write(Box::new_uninit(), ..)` builds it in place, no copy: Rust 1.87, past
        // this workspace's rust-version.)
        let fut = Box::pin(handle(c, req, Rc::clone(&act)));
        async move {
            let r = fut.await;
            drop(busy);
            r
        }
    });
    let conn = b.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Dropping the connection closes it, with the backend connections of its streams.
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

/// An HTTP/2 request body (hyper has checked its framing).
struct H2ReqBody {
    inner: Incoming,
    framing: Framing,
    pending: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    end: bool,
    /// The connection's: a body still being sent (full duplex) is progress too.
    act: Rc<Activity>,
}

impl H2ReqBody {
    fn new(inner: Incoming, h: &http::HeaderMap, act: Rc<Activity>) -> Self {
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
            d.len() as u64
        }))
    }
    async fn wait_more(&mut self) -> Result<(), BodyError> {
        match self.inner.frame().await {
            None => self.end = true,
            Some(Err(_)) => return Err(BodyError),
            Some(Ok(f)) => {
                self.act.moved.set(Instant::now());
                match f.into_data() {
                    Ok(d) => self.pending = Some(d),
                    Err(f) => self.trailers = f.into_trailers().ok(),
                }
                self.end = self.inner.is_end_stream();
            }
        }
        Ok(())
    }
    fn take_trailers(&mut self) -> Option<http::HeaderMap> {
        self.trailers.take()
    }
}

async fn handle(
    c: Rc<ConnCtx>,
    req: Request<Incoming>,
    act: Rc<Activity>,
) -> Result<Response<H2Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut body = H2ReqBody::new(body, &parts.headers, Rc::clone(&act));
    // Inside the boxed stream future (see `serve`): not moved.
    let outcome = proxy::forward(&c, &H2Req(&parts), &mut body).await;
    Ok(match outcome {
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
                return Ok(r);
            };
            let mut map = http::HeaderMap::with_capacity(16);
            for (n, v) in ex.headers() {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                    map.append(n, v);
                }
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
                    return Ok(r);
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
    })
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
