//! One request: rate limit, route, choose a backend (sticky cookie, header/cookie hash, or
//! the pool's scheduler), rewrite headers, send on a pooled connection, retry what is safe
//! to retry, relay upgrades, count and log.

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fulcrum_core::hash::hash_bytes;
use fulcrum_core::model::{FlowTuple, HashKey, Proto};
use fulcrum_core::sched::{PickError, PickRequest};
use fulcrum_proxy::snapshot::ServiceRt;
use fulcrum_proxy::stats::BackendStats;
use http::header::{
    HeaderMap, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER,
    SET_COOKIE, TRANSFER_ENCODING, UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::accesslog::{AccessLogger, Entry};
use crate::headers::{add_forwarding, cookie, request_host, request_id, strip_hop_by_hop};
use crate::upstream::{self, ConnectError, OnDone, ProxyBody};
use crate::{ConnCtx, RoutePool};

pub(crate) async fn handle(
    c: Rc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(proxy(&c, req).await)
}

/// Holds one in-flight request on a backend (`active`, for lc/wlc/p2c).
struct Active(Arc<BackendStats>);

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

/// What happens when the response body is done.
struct Done {
    svc: Arc<ServiceRt>,
    log: Option<(Arc<AccessLogger>, Box<Entry>)>,
    start: Instant,
    _active: Option<Active>,
}

impl OnDone for Done {
    fn done(self: Box<Self>, bytes: u64, _complete: bool) {
        self.svc.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        if let Some((l, mut e)) = self.log {
            e.bytes = bytes;
            e.duration = self.start.elapsed();
            l.write(&e);
        }
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn has_token(h: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Per-request facts for the answer and the log.
struct Req<'a> {
    c: &'a ConnCtx,
    rp: &'a RoutePool,
    start: Instant,
    log: Option<(Arc<AccessLogger>, Box<Entry>)>,
}

impl Req<'_> {
    fn done(&mut self, status: StatusCode, backend: Option<std::net::SocketAddr>) -> Done {
        let log = self.log.take().map(|(l, mut e)| {
            e.status = status.as_u16();
            e.backend = backend;
            (l, e)
        });
        Done {
            svc: Arc::clone(&self.c.svc),
            log,
            start: self.start,
            _active: None,
        }
    }

    /// An answer from Fulcrum itself, with a short body saying why.
    fn local(&mut self, status: StatusCode, why: &str) -> Response<ProxyBody> {
        self.rp.metrics.local.count(status.as_u16());
        self.rp.metrics.duration.observe(self.start.elapsed());
        let done = self.done(status, None);
        let mut r = Response::new(ProxyBody::full(format!("{why}\n"), Some(Box::new(done))));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}

fn pick(
    c: &ConnCtx,
    rp: &RoutePool,
    headers: &HeaderMap,
    tried: &[usize],
) -> Result<(usize, bool), PickError> {
    let pool = &rp.pool;
    if let Some(name) = &pool.sticky_cookie {
        if let Some(v) = cookie(headers, name) {
            if let Some(i) = rp.cookie_values.iter().position(|x| x == v) {
                if pool.backends[i].is_eligible() && !tried.contains(&i) {
                    return Ok((i, true));
                }
            }
        }
    }
    let key = match &pool.hash_key {
        HashKey::Header(n) => Some(headers.get(n.as_str()).map(HeaderValue::as_bytes)),
        HashKey::Cookie(n) => Some(cookie(headers, n).map(str::as_bytes)),
        _ => None,
    };
    let idx = match key {
        None => {
            let flow = FlowTuple {
                src: c.peer,
                dst: c.local,
                proto: Proto::Tcp,
            };
            pool.choose(&flow, tried, c.shared.now())?
        }
        Some(v) => pool.scheduler.pick(&PickRequest {
            hash: v.map_or_else(|| fastrand::u32(..), hash_bytes),
            random: fastrand::u64(..),
            loads: &**pool,
            exclude: tried,
        })?,
    };
    Ok((idx, false))
}

#[allow(clippy::too_many_lines)]
async fn proxy(c: &ConnCtx, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let ext = &c.ext;
    ext.budget.earn();
    let rp = ext.route(request_host(&req), req.uri().path());
    let log = ext.access_log.as_ref().map(|l| {
        let h = req.headers();
        let s = |n: http::header::HeaderName| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        (
            Arc::clone(l),
            Box::new(Entry {
                service: c.svc.name.clone(),
                client: c.peer,
                method: req.method().clone(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str)
                    .to_owned(),
                version: req.version(),
                host: request_host(&req).to_owned(),
                status: 0,
                backend: None,
                bytes: 0,
                duration: std::time::Duration::ZERO,
                request_id: String::new(),
                user_agent: s(http::header::USER_AGENT),
                referer: s(http::header::REFERER),
                time: SystemTime::now(),
            }),
        )
    });
    let mut r = Req { c, rp, start, log };

    // Request smuggling: never guess which framing the backend would believe.
    if req.headers().contains_key(CONTENT_LENGTH) && req.headers().contains_key(TRANSFER_ENCODING) {
        return r.local(
            StatusCode::BAD_REQUEST,
            "bad request: both Content-Length and Transfer-Encoding",
        );
    }
    if let Some((_, l)) = &ext.limiter {
        if let Err(wait) = l.check(c.peer.ip(), c.shared.now()) {
            let mut resp = r.local(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from your address: slow down",
            );
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
            return resp;
        }
    }

    let upgrade = req.version() <= Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && has_token(req.headers(), CONNECTION, "upgrade");
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let rid = match headers.get("x-request-id") {
        Some(v) => v.clone(),
        None => {
            let v = request_id();
            headers.insert("x-request-id", v.clone());
            v
        }
    };
    if let Some((_, e)) = &mut r.log {
        rid.to_str().unwrap_or("").clone_into(&mut e.request_id);
    }
    let host = headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut headers, upgrade);
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Some(h) = &host {
        if !headers.contains_key(HOST) {
            headers.insert(HOST, h.clone());
        }
    }
    add_forwarding(&mut headers, c.peer, host.as_ref(), c.tls);
    if let Some(n) = body.size_hint().exact() {
        c.svc.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
    }
    let uri = parts
        .uri
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    let bodyless = body.is_end_stream();
    let replayable = bodyless && is_idempotent(&parts.method) && !upgrade;
    let mut body = Some(body);

    let pool = &rp.pool;
    let tuning = ext.tuning;
    let max_attempts = 1 + tuning.retries as usize;
    let mut tried: Vec<usize> = Vec::with_capacity(2);
    let mut stale_retries = 0;
    let mut last_err: Option<(StatusCode, &'static str)> = None;
    loop {
        if tried.len() >= max_attempts {
            break;
        }
        let (idx, sticky_hit) = match pick(c, rp, &headers, &tried) {
            Ok(x) => x,
            Err(_) => break,
        };
        tried.push(idx);
        let addr = pool.backends[idx].address;
        let stats = &pool.stats[idx];
        let pooled = if upgrade {
            None
        } else {
            upstream::take_idle(addr)
        };
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            None => match upstream::connect(addr, tuning.connect_timeout, upgrade).await {
                Ok(s) => s,
                Err(e) => {
                    match e {
                        ConnectError::Refused(err) => {
                            tracing::debug!(backend = %addr, error = %err, "connect failed");
                            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                            last_err = Some((
                                StatusCode::BAD_GATEWAY,
                                "bad gateway: cannot connect to a backend",
                            ));
                        }
                        ConnectError::Timeout => {
                            stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                            last_err = Some((
                                StatusCode::GATEWAY_TIMEOUT,
                                "gateway timeout: connecting to a backend timed out",
                            ));
                        }
                    }
                    c.shared.report_passive(stats, false);
                    // Nothing was sent: any request may go to another backend.
                    if tried.len() < max_attempts && ext.budget.try_spend() {
                        continue;
                    }
                    break;
                }
            },
        };
        let b = if bodyless {
            Either::Right(Empty::new())
        } else if let Some(b) = body.take() {
            Either::Left(b)
        } else {
            break;
        };
        let mut up = Request::new(b);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri.clone();
        *up.headers_mut() = headers.clone();
        let active = Active::new(stats);
        let res = tokio::time::timeout(tuning.response_timeout, sender.send_request(up)).await;
        let mut resp = match res {
            Err(_) => {
                c.shared.report_passive(stats, false);
                last_err = Some((
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout: the backend did not answer in time",
                ));
                break;
            }
            Ok(Err(e)) => {
                drop(active);
                if reused && (replayable || e.is_canceled()) && stale_retries < 2 {
                    // A pooled connection the backend had closed: try a fresh one.
                    stale_retries += 1;
                    tried.pop();
                    if e.is_canceled() && !bodyless {
                        break;
                    }
                    continue;
                }
                c.shared.report_passive(stats, false);
                last_err = Some((
                    StatusCode::BAD_GATEWAY,
                    "bad gateway: the backend closed the connection without an answer",
                ));
                if replayable && tried.len() < max_attempts && ext.budget.try_spend() {
                    continue;
                }
                break;
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status.is_server_error() {
            stats.http_5xx.fetch_add(1, Ordering::Relaxed);
            c.shared.report_passive(stats, false);
            if matches!(status.as_u16(), 502 | 503)
                && replayable
                && tried.len() < max_attempts
                && pool
                    .backends
                    .iter()
                    .enumerate()
                    .any(|(i, b)| b.is_eligible() && !tried.contains(&i))
                && ext.budget.try_spend()
            {
                if resp.body().is_end_stream() {
                    upstream::put_idle(addr, sender);
                }
                continue;
            }
        } else {
            c.shared.report_passive(stats, true);
        }

        rp.backend_metrics[idx].count(status.as_u16());
        rp.metrics.duration.observe(start.elapsed());
        let mut done = r.done(status, Some(addr));
        done._active = Some(active);

        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_up) = client_upgrade {
                let backend_up = hyper::upgrade::on(&mut resp);
                tokio::task::spawn_local(async move {
                    if let (Ok(a), Ok(b)) = tokio::join!(client_up, backend_up) {
                        let mut a = TokioIo::new(a);
                        let mut b = TokioIo::new(b);
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
            let (rparts, rbody) = resp.into_parts();
            return Response::from_parts(
                rparts,
                ProxyBody::upstream(rbody, None, Some(Box::new(done))),
            );
        }
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers, false);
        if let Some(name) = &pool.sticky_cookie {
            if !sticky_hit {
                let v = format!("{name}={}; Path=/; HttpOnly", rp.cookie_values[idx]);
                if let Ok(v) = HeaderValue::from_str(&v) {
                    rparts.headers.append(SET_COOKIE, v);
                }
            }
        }
        let conn = (!upgrade).then_some((addr, sender));
        return Response::from_parts(
            rparts,
            ProxyBody::upstream(rbody, conn, Some(Box::new(done))),
        );
    }
    match last_err {
        Some((s, why)) => r.local(s, why),
        None if tried.is_empty() => r.local(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable: no backend is available",
        ),
        None => r.local(
            StatusCode::BAD_GATEWAY,
            "bad gateway: no backend could answer",
        ),
    }
}
