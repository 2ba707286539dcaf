//! The extension point for protocol handlers above L4 (the HTTP proxy lives in its own crate,
//! which depends on this one). The controller asks the handler to build per-service state
//! for each new snapshot (a failure fails the reload: nothing changes); the TCP accept loop
//! hands each accepted connection of such a service to the handler.

use std::any::Any;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

use fulcrum_core::config::{BackendTls, ServiceConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::snapshot::{PoolRt, ServiceRt, Shared};

/// Per-service state built by a handler (routes resolved to pools, TLS, rate limits...).
pub type ServiceExt = Arc<dyn Any + Send + Sync>;

/// A protocol handler (see the module docs).
pub trait L7Handler: Send + Sync + Debug {
    /// Whether this handler serves `svc` (e.g. `protocol = "http"`).
    fn handles(&self, svc: &ServiceConfig) -> bool;

    /// Builds the service's state for a new snapshot. `pools` are the new snapshot's pools;
    /// `prev` is the state in the running snapshot, to carry over what must survive a reload
    /// (rate-limit buckets, backend connection pools).
    fn build(
        &self,
        svc: &ServiceConfig,
        pools: &[Arc<PoolRt>],
        prev: Option<&ServiceExt>,
    ) -> Result<ServiceExt, String>;

    /// Serves one accepted connection: spawns its task on the worker's thread (called in a
    /// `spawn_local` context). The handler spawns its own concrete future rather than
    /// returning a boxed one: one allocation per connection fewer, and an idle connection's
    /// task holds the connection's state inline.
    fn spawn(&self, shared: Arc<Shared>, svc: Arc<ServiceRt>, sock: TcpStream, peer: SocketAddr);

    /// Appends `svc`'s metrics (read from the handler's atomics at scrape time).
    fn metrics(&self, _svc: &ServiceRt, _out: &mut L7Metrics) {}

    /// TLS for the active `http` checks of a pool with `[pool.tls]` (HAProxy's
    /// `check-ssl`): loads `cfg`'s files. Runs off the data path (the checker's task).
    fn check_tls(&self, _cfg: &BackendTls) -> Result<Arc<dyn CheckTls>, String> {
        Err("this binary has no TLS towards backends".into())
    }
}

/// A stream a health check speaks over (TLS from [`CheckTls`]).
pub trait CheckIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> CheckIo for T {}

/// What [`CheckTls::connect`] returns.
pub type CheckConnect = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn CheckIo>>> + Send>>;

/// A pool's `[pool.tls]` loaded for its health checks ([`L7Handler::check_tls`]).
pub trait CheckTls: Send + Sync + Debug {
    /// Whether this still matches `cfg` and the files on disk.
    fn is_current(&self, cfg: &BackendTls) -> bool;
    /// The TLS handshake over `tcp`, connected to backend `addr` (verified as the pool's
    /// `sni`, else as `addr`'s IP address).
    fn connect(&self, tcp: TcpStream, addr: SocketAddr) -> CheckConnect;
    /// The pool's `sni` when it is a DNS name: the check's `Host` (as the backend is named
    /// over TLS).
    fn sni(&self) -> Option<&str>;
}

/// One `fulcrum_http_requests_total` sample.
#[derive(Debug, Clone)]
pub struct HttpRequestsSample {
    pub service: String,
    pub pool: String,
    /// The backend's address, or `none` for answers Fulcrum made itself.
    pub backend: String,
    /// `1xx` .. `5xx`.
    pub code_class: &'static str,
    pub value: u64,
}

/// One `fulcrum_http_request_duration_seconds` histogram.
#[derive(Debug, Clone)]
pub struct HttpDurationSample {
    pub service: String,
    pub pool: String,
    pub sum: f64,
    pub count: u64,
    /// (upper bound, count in this bucket only); the last bound is `f64::MAX` (+Inf).
    pub buckets: Vec<(f64, u64)>,
}

/// One `fulcrum_http_backend_response_seconds` histogram.
#[derive(Debug, Clone)]
pub struct HttpBackendDurationSample {
    pub service: String,
    pub pool: String,
    pub backend: String,
    pub histogram: crate::stats::HistogramSample,
}

/// What [`L7Handler::metrics`] fills in.
#[derive(Debug, Default)]
pub struct L7Metrics {
    pub requests: Vec<HttpRequestsSample>,
    pub durations: Vec<HttpDurationSample>,
    pub backend_durations: Vec<HttpBackendDurationSample>,
    /// (service, idle keep-alive connections parked out of their tasks).
    pub parked: Vec<(String, u64)>,
    /// (service, reason, requests refused by the service's rules: `access` (allow/deny,
    /// 403), `auth` (basic auth, 401)).
    pub refused: Vec<(String, &'static str, u64)>,
}
