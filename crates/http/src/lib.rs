//! Fulcrum's L7 HTTP proxy (`protocol = "http"` services), plugged into the L4 data path
//! through [`fulcrum_state::l7::L7Handler`].
//!
//! - [`HttpHandler::build`] turns a service's config and the snapshot's pools into an
//!   [`HttpService`] (routes resolved to pools, TLS acceptor, rate limiter, access log,
//!   counters), reusing what is unchanged from the previous snapshot.
//! - [`HttpHandler::serve`] serves one accepted connection: HTTP/1.1 (clear or TLS) with the
//!   lean codec of [`server`] and [`h1`], HTTP/2 (ALPN `h2` under TLS, prior knowledge in
//!   clear) with hyper in [`h2`]; every request goes through [`proxy::forward`], which
//!   drives its backend connection (pooled per worker, [`upstream`]) in the request's task.

mod accesslog;
mod exec;
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod h2;
mod h2guard;
mod headers;
mod idle;
mod metrics;
mod park;
pub use h1::drop_buffer_pools;
pub use park::set_release_free_memory;
mod proxy;
mod ratelimit;
mod request;
pub mod rules;
mod server;
mod tls;
mod upstream;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::config::{
    BackendProtocol, HttpTimeouts, RateLimit, RetryPolicy, Route, ServiceConfig,
};
use fulcrum_core::model::ServiceProtocol;
use fulcrum_core::retry::RetryBudget;
use fulcrum_state::l7::{L7Handler, L7Metrics, ServiceExt};
use fulcrum_state::snapshot::{PoolRt, ServiceRt, Shared, Snapshot};
use tokio::net::TcpStream;

pub use accesslog::AccessLogger;
pub use metrics::{BackendMetrics, CodeCounters, PoolMetrics, ServiceMetrics};
pub use ratelimit::RateLimiter;
pub use tls::{
    check_ca, check_client_pair, check_ocsp, check_pair, BackendTlsState, ClientHeaders, PairError,
    PairFile, PeerCert, TlsState, PROVIDER as TLS_PROVIDER,
};

/// A service's timeouts and retry policy (`[service.timeouts]`, `[service.retry]`; see
/// docs/http.md), as the data path uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Connecting to a backend.
    pub connect_timeout: Duration,
    /// From the request sent to the backend's response head.
    pub response_timeout: Duration,
    /// A client's request head must arrive within this (slowloris).
    pub header_timeout: Duration,
    /// TLS handshake.
    pub handshake_timeout: Duration,
    /// Extra attempts on other backends (connect failure, 502, 503).
    pub retries: u32,
    /// Retries allowed per 100 requests on average (the retry budget), in addition to
    /// `fulcrum_core::retry::RETRY_BUDGET_MIN` in reserve.
    pub retry_budget_percent: u8,
}

impl Tuning {
    /// The tuning of a service with these (validated) settings.
    pub fn new(t: &HttpTimeouts, r: &RetryPolicy) -> Self {
        Self {
            connect_timeout: t.connect,
            response_timeout: t.response,
            header_timeout: t.request_header,
            handshake_timeout: t.tls_handshake,
            retries: u32::from(r.attempts()),
            retry_budget_percent: r.budget_percent(),
        }
    }

    /// A service's tuning: its `[service.timeouts]` and `[service.retry]`, or the defaults.
    pub fn of(svc: &ServiceConfig) -> Self {
        Self::new(
            &svc.http().and_then(|h| h.timeouts).unwrap_or_default(),
            &svc.http().and_then(|h| h.retry).unwrap_or_default(),
        )
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self::new(&HttpTimeouts::default(), &RetryPolicy::default())
    }
}

/// One pool as one service uses it in one snapshot.
#[derive(Debug)]
pub struct RoutePool {
    pub pool: Arc<PoolRt>,
    pub metrics: Arc<PoolMetrics>,
    /// Parallel to `pool.backends`.
    pub backend_metrics: Vec<Arc<BackendMetrics>>,
    /// Parallel to `pool.backends`: the sticky cookie value naming each backend.
    pub cookie_values: Vec<String>,
    /// `[pool.tls]`: the client config its backends are spoken to with.
    pub tls: Option<Arc<BackendTlsState>>,
}

/// A service's L7 state in one snapshot (the `ext` of its `ServiceRt`).
#[derive(Debug)]
pub struct HttpService {
    pub name: String,
    pub cfg: ServiceConfig,
    /// (route, index into `pools`).
    pub routes: Vec<(Route, usize)>,
    pub default_pool: usize,
    pub pools: Vec<RoutePool>,
    pub tls: Option<Arc<TlsState>>,
    pub limiter: Option<(RateLimit, Arc<RateLimiter>)>,
    pub access_log: Option<Arc<AccessLogger>>,
    pub metrics: Arc<ServiceMetrics>,
    pub budget: Arc<RetryBudget>,
    pub tuning: Tuning,
    /// The rules of the service and of each route (docs/rules.md).
    pub rules: rules::ServiceRules,
}

impl HttpService {
    /// The pool for a request: the first matching route, else the default.
    pub fn route(&self, host: &str, path: &str) -> &RoutePool {
        self.route_index(host, path).1
    }

    /// The matched route's index (`None`: no route matched) and its pool.
    pub fn route_index(&self, host: &str, path: &str) -> (Option<usize>, &RoutePool) {
        match self.routes.iter().position(|(r, _)| r.matches(host, path)) {
            Some(i) => (Some(i), &self.pools[self.routes[i].1]),
            None => (None, &self.pools[self.default_pool]),
        }
    }
}

/// The cookie value that names a backend: stable across processes and restarts.
pub fn cookie_value(addr: SocketAddr) -> String {
    format!(
        "{:08x}",
        fulcrum_core::hash::hash_bytes(addr.to_string().as_bytes())
    )
}

/// `fut`'s output, or `None` if it is not done within `limit`. The timer is armed only if
/// the future is not done at once (most writes and reads are), so the hot path pays no
/// timer insert and removal.
pub(crate) async fn within<F: std::future::Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(v) = first {
        return Some(v);
    }
    tokio::time::timeout(limit, fut).await.ok()
}

/// The HTTP handler. Create one per process and pass it to `Shared::new`.
#[derive(Debug, Default)]
pub struct HttpHandler;

/// The handler as `Shared::new` takes it.
pub fn handler() -> Arc<dyn L7Handler> {
    Arc::new(HttpHandler)
}

/// A pool as a service's routes use it: its metrics handles, cookie values and backend TLS
/// (kept from `prev` while its files are unchanged).
fn route_pool(
    pool: &Arc<PoolRt>,
    pm: Arc<metrics::PoolMetrics>,
    prev: Option<&HttpService>,
) -> Result<RoutePool, String> {
    let h2 = pool.backend_protocol == BackendProtocol::H2;
    let tls = match &pool.tls {
        None => None,
        Some(t) => match prev
            .and_then(|p| p.pools.iter().find(|rp| rp.pool.name == pool.name))
            .and_then(|rp| rp.tls.as_ref())
            .filter(|s| s.is_current(t, h2))
        {
            Some(s) => Some(Arc::clone(s)),
            None => Some(Arc::new(BackendTlsState::load(t, h2)?)),
        },
    };
    Ok(RoutePool {
        tls,
        backend_metrics: pool
            .backends
            .iter()
            .map(|b| pm.backend(b.address))
            .collect(),
        cookie_values: pool
            .backends
            .iter()
            .map(|b| cookie_value(b.address))
            .collect(),
        pool: Arc::clone(pool),
        metrics: pm,
    })
}

impl L7Handler for HttpHandler {
    fn handles(&self, svc: &ServiceConfig) -> bool {
        svc.protocol() == ServiceProtocol::Http
    }

    fn build(
        &self,
        svc: &ServiceConfig,
        pools: &[Arc<PoolRt>],
        prev: Option<&ServiceExt>,
    ) -> Result<ServiceExt, String> {
        let prev = prev.and_then(|p| Arc::clone(p).downcast::<HttpService>().ok());
        let prev = prev.as_deref();
        let metrics = prev.map_or_else(Arc::default, |p| Arc::clone(&p.metrics));
        let mut used: Vec<RoutePool> = Vec::new();
        let mut index = |name: &str| -> Result<usize, String> {
            if let Some(i) = used.iter().position(|p| p.pool.name == name) {
                return Ok(i);
            }
            let pool = pools
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| format!("pool {name:?} does not exist"))?;
            used.push(route_pool(pool, metrics.pool(name), prev)?);
            Ok(used.len() - 1)
        };
        let default_pool = index(&svc.pool)?;
        let mut routes = Vec::with_capacity(svc.routes().len());
        for r in svc.routes() {
            routes.push((r.clone(), index(&r.pool)?));
        }
        let tls = match svc.tls() {
            None => None,
            Some(t) => match prev
                .and_then(|p| p.tls.as_ref())
                .filter(|s| s.is_current(t))
            {
                Some(s) => Some(Arc::clone(s)),
                None => Some(Arc::new(TlsState::load(t)?)),
            },
        };
        let limiter = svc.http().and_then(|h| h.rate_limit).map(|rl| {
            match prev
                .and_then(|p| p.limiter.as_ref())
                .filter(|(c, _)| *c == rl)
            {
                Some((_, l)) => (rl, Arc::clone(l)),
                None => (
                    rl,
                    Arc::new(RateLimiter::new(
                        rl.requests_per_second.get(),
                        rl.burst.get(),
                    )),
                ),
            }
        });
        let access_log = match svc.access_log() {
            None => None,
            Some(a) => match prev
                .and_then(|p| p.access_log.as_ref())
                .filter(|l| l.cfg == *a)
            {
                Some(l) => Some(Arc::clone(l)),
                None => Some(Arc::new(AccessLogger::open(a)?)),
            },
        };
        // Timeouts and retries come from the service's config, so a reload changes them; the
        // retry budget's balance is kept while its ratio stays the same.
        let tuning = Tuning::of(svc);
        let budget =
            match prev.filter(|p| p.tuning.retry_budget_percent == tuning.retry_budget_percent) {
                Some(p) => Arc::clone(&p.budget),
                None => Arc::new(RetryBudget::new(tuning.retry_budget_percent)),
            };
        // The files the rules name are read again when they (or the rules) changed.
        let rules = rules::ServiceRules::load(svc, prev.map(|p| &p.rules)).map_err(|p| {
            p.iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(Arc::new(HttpService {
            name: svc.name.clone(),
            cfg: svc.clone(),
            routes,
            default_pool,
            pools: used,
            tls,
            limiter,
            access_log,
            metrics,
            budget,
            tuning,
            rules,
        }))
    }

    fn spawn(&self, shared: Arc<Shared>, svc: Arc<ServiceRt>, sock: TcpStream, peer: SocketAddr) {
        spawn_conn(shared, svc, sock, peer);
    }

    fn check_tls(
        &self,
        cfg: &fulcrum_core::config::BackendTls,
    ) -> Result<Arc<dyn fulcrum_state::l7::CheckTls>, String> {
        // ALPN http/1.1: the check is an HTTP/1.1 GET whatever the pool's backend_protocol.
        Ok(Arc::new(CheckTlsState(BackendTlsState::load(cfg, false)?)))
    }

    fn metrics(&self, svc: &ServiceRt, out: &mut L7Metrics) {
        if let Some(ext) = svc
            .ext
            .as_ref()
            .and_then(|e| e.downcast_ref::<HttpService>())
        {
            ext.metrics.collect(&svc.name, out);
        }
    }
}

thread_local! {
    /// Per worker: notified once the process starts draining.
    static DRAIN: (Rc<tokio::sync::Notify>, Cell<bool>) = (Rc::new(tokio::sync::Notify::new()), Cell::new(false));
}

/// Starts (once per worker thread) the task that turns `Shared::is_draining` into a wake-up
/// of every open HTTP connection, so idle keep-alive connections close at once on shutdown.
fn drain_notify(shared: &Arc<Shared>) -> Rc<tokio::sync::Notify> {
    DRAIN.with(|(n, started)| {
        if !started.get() {
            started.set(true);
            let n = Rc::clone(n);
            let shared = Arc::clone(shared);
            tokio::task::spawn_local(async move {
                while !shared.is_draining() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                n.notify_waiters();
                DRAIN.with(|(_, s)| s.set(false));
            });
        }
        Rc::clone(n)
    })
}

/// The per-connection facts every request needs. Counts an open connection until dropped.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub svc: Arc<ServiceRt>,
    pub ext: Arc<HttpService>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// The client's verified certificate (`[service.tls] client_ca`), set after the
    /// handshake. Boxed: every connection's context carries the cell, few a certificate
    /// (inline, its two strings grew the context from mimalloc's 128-byte size class to
    /// the 192-byte one: memory per idle connection, docs/benchmarks.md).
    pub peer_cert: std::cell::OnceCell<Box<PeerCert>>,
    /// Notified when the process starts draining.
    pub drain: Rc<tokio::sync::Notify>,
    /// Whether this value counts the connection as open (a renewed context takes the count
    /// over, see [`ConnCtx::refresh`]).
    counted: Cell<bool>,
    /// The service is gone from the running snapshot: the connection closes after the
    /// request at hand (HTTP/1.1) or is shut down gracefully (HTTP/2).
    pub gone: Cell<bool>,
}

impl ConnCtx {
    /// Called before each request: the connection's context in the running snapshot, when
    /// it is not `self`'s (a reload, an admin API change, a backend's health or drain state
    /// changed since), so that every request chooses among the backends as they are now.
    /// `None` while `self` is current, or when its service is gone (then `gone` is set: the
    /// request at hand is served as the service was, and the connection ends). Cheap while
    /// nothing changes: one `ArcSwap` load and a compare.
    pub(crate) fn refresh(&self) -> Option<Rc<ConnCtx>> {
        let snap = self.shared.snapshot.load();
        upstream::forget_gone(&snap);
        if snap.generation == self.svc.generation {
            return None;
        }
        self.renew(&snap)
    }

    #[cold]
    #[inline(never)]
    fn renew(&self, snap: &Snapshot) -> Option<Rc<ConnCtx>> {
        let found = snap
            .services
            .iter()
            .find(|s| s.name == self.svc.name && s.protocol == self.svc.protocol)
            .and_then(|s| {
                let ext = s.ext.clone()?.downcast::<HttpService>().ok()?;
                Some((s, ext))
            });
        let Some((svc, ext)) = found else {
            self.gone.set(true);
            return None;
        };
        if self.counted.get() && Arc::ptr_eq(&svc.stats, &self.svc.stats) {
            // The same service: the new context counts the connection from now on.
            self.counted.set(false);
        } else {
            svc.stats.active.fetch_add(1, Ordering::Relaxed);
            self.shared
                .global
                .open_connections
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(Rc::new(ConnCtx {
            shared: Arc::clone(&self.shared),
            svc: Arc::clone(svc),
            ext,
            peer: self.peer,
            local: self.local,
            tls: self.tls,
            peer_cert: self.peer_cert.clone(),
            drain: Rc::clone(&self.drain),
            counted: Cell::new(true),
            gone: Cell::new(false),
        }))
    }
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        if !self.counted.get() {
            return;
        }
        self.svc.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.shared
            .global
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sets a connection up (no await: the task that serves it holds only what it needs while
/// the connection idles) and spawns that task on this worker.
fn spawn_conn(shared: Arc<Shared>, svc: Arc<ServiceRt>, sock: TcpStream, peer: SocketAddr) {
    let Some(ext) = svc
        .ext
        .clone()
        .and_then(|e| e.downcast::<HttpService>().ok())
    else {
        return;
    };
    svc.stats.active.fetch_add(1, Ordering::Relaxed);
    svc.stats.total.fetch_add(1, Ordering::Relaxed);
    shared
        .global
        .open_connections
        .fetch_add(1, Ordering::Relaxed);
    // The listen address is the local one unless it is a wildcard (saves a syscall).
    let local = if svc.listen.ip().is_unspecified() {
        sock.local_addr().unwrap_or(svc.listen)
    } else {
        svc.listen
    };
    let drain = drain_notify(&shared);
    let ctx = Rc::new(ConnCtx {
        shared,
        svc,
        tls: ext.tls.is_some(),
        peer_cert: std::cell::OnceCell::new(),
        ext,
        peer,
        local,
        drain,
        counted: Cell::new(true),
        gone: Cell::new(false),
    });
    // Once it ends (or parks), its memory may be given back: `fulcrum_state::memory`.
    if ctx.tls {
        tokio::task::spawn_local(async move {
            serve_tls(ctx, sock).await;
            fulcrum_state::memory::connection_ended();
        });
    } else {
        tokio::task::spawn_local(async move {
            server::serve_tcp(ctx, sock).await;
            fulcrum_state::memory::connection_ended();
        });
    }
}

async fn serve_tls(ctx: Rc<ConnCtx>, sock: TcpStream) {
    let Some(tls) = &ctx.ext.tls else {
        return;
    };
    let _ = sock.set_nodelay(true);
    let acc = tls.acceptor.clone();
    let Ok(Ok(stream)) = tokio::time::timeout(
        ctx.ext.tuning.handshake_timeout,
        acc.accept(tls::ClientSock(sock)),
    )
    .await
    else {
        return;
    };
    if tls.client_headers.is_some() {
        if let Some(leaf) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
        {
            let _ = ctx.peer_cert.set(Box::new(PeerCert::of(leaf)));
        }
    }
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        h2::serve(ctx, stream, Vec::new()).await;
    } else {
        server::serve_h1(ctx, stream, server::Start::New { may_park: false }).await;
    }
}

/// A pool's `[pool.tls]` as its health checks use it.
#[derive(Debug)]
struct CheckTlsState(BackendTlsState);

impl fulcrum_state::l7::CheckTls for CheckTlsState {
    fn is_current(&self, cfg: &fulcrum_core::config::BackendTls) -> bool {
        self.0.is_current(cfg, false)
    }

    fn connect(&self, tcp: TcpStream, addr: SocketAddr) -> fulcrum_state::l7::CheckConnect {
        let name = self
            .0
            .sni
            .clone()
            .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
        let connect = self.0.connector.connect(name, tcp);
        Box::pin(async move {
            let s = connect.await?;
            Ok(Box::new(s) as Box<dyn fulcrum_state::l7::CheckIo>)
        })
    }

    fn sni(&self) -> Option<&str> {
        match &self.0.sni {
            Some(rustls::pki_types::ServerName::DnsName(n)) => Some(n.as_ref()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every connection holds one `Rc<ConnCtx>`, parked or not: it must stay in mimalloc's
    /// 128-byte size class (with the `Rc`'s two counts), as it was before the client
    /// certificate's cell was added (an idle connection then cost 64 bytes more).
    #[test]
    fn connection_context_fits_128_bytes() {
        let rc_box = std::mem::size_of::<super::ConnCtx>() + 2 * std::mem::size_of::<usize>();
        assert!(rc_box <= 128, "Rc<ConnCtx> takes {rc_box} bytes");
    }
}
