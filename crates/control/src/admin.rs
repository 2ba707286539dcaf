//! The admin API (HTTP/JSON on `admin.listen`): health, readiness, metrics, the read side
//! of services and pools, `explain`, the running config, reload and run-time changes of
//! backends and services, VIP announcement and instance drain. Errors answer `{"error": "..."}`: 400 bad body or address, 401
//! missing or wrong token, 404 unknown pool/service/backend, 409 conflicts, 413 body too
//! large. See `docs/admin-api.md`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use fulcrum_core::config::Config;
use fulcrum_state::controller::{ChangeError, Control, ControlSender};
use fulcrum_state::snapshot::Shared;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use answers::{
    BackendAnswer, BackendRemoved, BackendView, PoolView, Pools, Reloaded, Removed, ServiceAnswer,
    Services,
};

/// Who may use the API, from `[admin]`: read at start and replaced at every reload (a
/// rewritten `token_file` takes effect with the reload that reads it).
#[derive(Debug, Default)]
pub struct Auth {
    /// When set, mutating calls need `Authorization: Bearer <token>`.
    pub token: Option<Arc<str>>,
    /// `[admin] protect_reads`: with a token, read-only endpoints need it too (not
    /// `/healthz` and `/readyz`).
    pub protect_reads: bool,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub control: ControlSender,
    pub registry: Arc<Registry>,
    /// The running [`Auth`]; the binary swaps in a new one after each reload.
    pub auth: Arc<ArcSwap<Auth>>,
    /// `[cluster]`: changes go to the fleet's configuration in etcd (see
    /// [`fulcrum_state::controller::FleetEdit`]); `None`: to this instance.
    pub fleet: Option<Arc<dyn fulcrum_state::controller::FleetEdit>>,
}

/// Every endpoint of the admin API as (method, path), in axum's path syntax. The router is
/// built from this table (see [`endpoint`]) and `docs/openapi.json` must describe exactly
/// these (a unit test compares the two both ways).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/services"),
    ("GET", "/api/v1/pools"),
    ("GET", "/api/v1/pools/{pool}"),
    ("PUT", "/api/v1/pools/{pool}"),
    ("DELETE", "/api/v1/pools/{pool}"),
    ("GET", "/api/v1/pools/{pool}/explain"),
    ("PUT", "/api/v1/pools/{pool}/backends/{address}"),
    ("DELETE", "/api/v1/pools/{pool}/backends/{address}"),
    ("POST", "/api/v1/pools/{pool}/backends/{address}/drain"),
    ("PUT", "/api/v1/services/{name}"),
    ("DELETE", "/api/v1/services/{name}"),
    ("GET", "/api/v1/services/{name}/explain"),
    ("GET", "/api/v1/config"),
    ("POST", "/api/v1/reload"),
    ("GET", "/api/v1/announce"),
    ("POST", "/api/v1/instance/drain"),
    ("POST", "/api/v1/instance/undrain"),
    ("GET", "/api/v1/cluster"),
    ("GET", "/api/v1/dashboard"),
];

/// The `OpenAPI` 3.1 document of this API (`docs/openapi.json`), served at
/// `GET /api/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// The handler of one entry of [`ROUTES`]; `None` for a pair that is not in it.
fn endpoint(method: &str, path: &str) -> Option<MethodRouter<AdminState>> {
    Some(match (method, path) {
        ("GET", "/healthz") => get(healthz),
        ("GET", "/readyz") => get(readyz),
        ("GET", "/metrics") => get(metrics),
        ("GET", "/api/v1/openapi.json") => get(openapi),
        ("GET", "/api/v1/services") => get(services),
        ("GET", "/api/v1/pools") => get(pools),
        ("GET", "/api/v1/pools/{pool}") => get(pool),
        ("PUT", "/api/v1/pools/{pool}") => put(put_pool),
        ("DELETE", "/api/v1/pools/{pool}") => delete_named(crate::edit::delete_pool),
        ("GET", "/api/v1/pools/{pool}/explain") => get(explain),
        ("PUT", "/api/v1/pools/{pool}/backends/{address}") => put(put_backend),
        ("DELETE", "/api/v1/pools/{pool}/backends/{address}") => delete(delete_backend),
        ("POST", "/api/v1/pools/{pool}/backends/{address}/drain") => post(drain_backend),
        ("PUT", "/api/v1/services/{name}") => put(put_service),
        ("DELETE", "/api/v1/services/{name}") => delete_named(crate::edit::delete_service),
        ("GET", "/api/v1/services/{name}/explain") => get(explain_dns),
        ("GET", "/api/v1/config") => get(get_config),
        ("POST", "/api/v1/reload") => post(reload),
        ("GET", "/api/v1/announce") => get(announce::get_announce),
        ("POST", "/api/v1/instance/drain") => post(announce::drain_instance),
        ("POST", "/api/v1/instance/undrain") => post(announce::undrain_instance),
        ("GET", "/api/v1/cluster") => get(cluster),
        ("GET", "/api/v1/dashboard") => get(dashboard::get_dashboard),
        _ => return None,
    })
}

/// The router: one route per entry of [`ROUTES`] (methods of one path merged).
pub fn router(state: AdminState) -> Router {
    let mut paths: Vec<(&str, MethodRouter<AdminState>)> = Vec::new();
    for &(method, path) in ROUTES {
        let Some(h) = endpoint(method, path) else {
            // Cannot happen: a unit test checks every entry has a handler.
            tracing::error!(method, path, "admin route without a handler; not served");
            continue;
        };
        match paths.iter_mut().find(|(p, _)| *p == path) {
            Some((_, mr)) => *mr = std::mem::take(mr).merge(h),
            None => paths.push((path, h)),
        }
    }
    let mut r = Router::new();
    for (path, mr) in paths {
        r = r.route(path, mr);
    }
    r.layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            protect_reads,
        ))
        // The dashboard's static files: after the `protect_reads` layer (they hold no data).
        .merge(dashboard::assets())
        // HTTP-DNS: public like the DNS it answers (no token), outside the OpenAPI
        // document (docs/dns.md).
        .route(
            "/dns-query",
            get(crate::doh::handle)
                .post(crate::doh::handle)
                .layer(DefaultBodyLimit::max(usize::from(u16::MAX))),
        )
        .fallback(|| async {
            ApiError::NotFound(
                "no such endpoint; see /api/v1/openapi.json for the endpoints".into(),
            )
        })
        .method_not_allowed_fallback(|req: axum::extract::Request| async move {
            let path = req.uri().path();
            let allowed: Vec<&str> = ROUTES
                .iter()
                .filter(|(_, p)| path_matches(p, path))
                .map(|(m, _)| *m)
                .collect();
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method {} is not allowed on {path}; allowed: {}",
                    req.method(),
                    allowed.join(", ")
                ),
            );
            if let Ok(v) = header::HeaderValue::from_str(&allowed.join(", ")) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            r
        })
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// Whether a request path matches a route pattern of [`ROUTES`] (`{x}` is one segment).
fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut a, mut b) = (pattern.split('/'), path.split('/'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if p == s || (p.starts_with('{') && !s.is_empty()) => {}
            _ => return false,
        }
    }
}

/// Errors that axum answers itself (a path parameter that is not valid UTF-8 after
/// percent-decoding, ...) come as plain text; this turns them into `{"error": "..."}` like
/// every other error. `/readyz` keeps its plain-text 503 (a probe).
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let probe = req.uri().path() == "/readyz";
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if probe || is_json || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let text = match axum::body::to_bytes(res.into_body(), MAX_BODY).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let msg = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    error(status, msg)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// The largest request body the API reads (a service definition is well below it).
pub const MAX_BODY: usize = 64 * 1024;

async fn readyz(State(st): State<AdminState>) -> Response {
    if st.shared.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if st.shared.is_draining() || st.shared.announce.is_drained() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(st): State<AdminState>) -> Result<Response, ApiError> {
    let body = crate::metrics::render(&st.registry)
        .map_err(|_| ApiError::Internal("metrics encoding failed".into()))?;
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
}

async fn services(State(st): State<AdminState>) -> Json<Services> {
    let snap = st.shared.snapshot.load();
    Json(Services {
        services: snap.services.iter().map(|s| s.as_ref().into()).collect(),
    })
}

async fn pools(State(st): State<AdminState>) -> Json<Pools> {
    let snap = st.shared.snapshot.load();
    Json(Pools {
        pools: snap.pools.iter().map(|p| p.as_ref().into()).collect(),
    })
}

async fn pool(
    State(st): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    let snap = st.shared.snapshot.load();
    let p = snap
        .pool(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no pool named {name:?}")))?;
    Ok(Json(p.as_ref().into()))
}

/// Constant-time comparison of the presented bearer token.
fn authorized(st: &AdminState, headers: &HeaderMap) -> bool {
    let auth = st.auth.load();
    let Some(want) = &auth.token else { return true };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (want.as_bytes(), got.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The bearer token was checked: an extractor for every mutating call (401 otherwise,
/// before the body is read).
pub(crate) struct Authorized;

impl FromRequestParts<AdminState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AdminState) -> Result<Self, ApiError> {
        if authorized(st, &parts.headers) {
            Ok(Self)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

async fn reload(State(st): State<AdminState>, _: Authorized) -> Result<Json<Reloaded>, ApiError> {
    let (tx, rx) = oneshot::channel();
    ask(&st, Control::Reload(tx), rx)
        .await?
        .map_err(ApiError::BadRequest)?;
    Ok(Json(Reloaded { status: "reloaded" }))
}

/// With `protect_reads`, every GET but the probes needs the token (mutating calls check
/// it in their handlers).
async fn protect_reads(
    State(st): State<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if st.auth.load().protect_reads
        && req.method() == axum::http::Method::GET
        && path != "/healthz"
        && path != "/readyz"
        && !authorized(&st, req.headers())
    {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Parses a JSON body; an empty body is `{}`.
fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Sends `msg` to the controller and waits for its answer.
async fn ask<T>(st: &AdminState, msg: Control, rx: oneshot::Receiver<T>) -> Result<T, ApiError> {
    if st.control.send(msg).is_err() {
        return Err(ApiError::shutting_down());
    }
    rx.await.map_err(|_| ApiError::shutting_down())
}

/// Sends a config edit to the controller (or, in a fleet, to etcd); `Ok` once it runs here.
async fn apply_edit(
    st: &AdminState,
    edit: fulcrum_state::controller::ConfigEdit,
    undrain: Option<(String, std::net::SocketAddr)>,
) -> Result<(), ApiError> {
    let edit = match &st.fleet {
        None => edit,
        Some(fleet) => {
            fleet_edit(st, fleet.as_ref(), edit).await?;
            // Applied from etcd; what is left is this instance's own part of the change
            // (ending an operator drain): the running config, unchanged, with it.
            if undrain.is_none() {
                return Ok(());
            }
            Arc::new(|cfg: &Config| Ok(cfg.clone()))
        }
    };
    let (tx, rx) = oneshot::channel();
    let msg = Control::Edit {
        edit,
        undrain,
        reply: tx,
    };
    Ok(ask(st, msg, rx).await??)
}

/// How long a fleet change waits for this instance to apply the revision it wrote.
const FLEET_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A change on an instance in a fleet: written to etcd as a transaction, then awaited until
/// this instance runs that revision (so the answer shows the change, as without a fleet).
async fn fleet_edit(
    st: &AdminState,
    fleet: &dyn fulcrum_state::controller::FleetEdit,
    edit: fulcrum_state::controller::ConfigEdit,
) -> Result<(), ApiError> {
    let rev = fleet.edit(edit).await?;
    let deadline = tokio::time::Instant::now() + FLEET_APPLY_WAIT;
    loop {
        if let Some(c) = st.shared.cluster.load_full() {
            if c.applied_revision >= rev {
                return Ok(());
            }
            if let Some(r) = c.refused.as_ref().filter(|r| r.revision >= rev) {
                return Err(ApiError::Conflict(format!(
                    "the fleet's configuration was changed (revision {rev}) but this instance refused revision {}: {}",
                    r.revision, r.error
                )));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Unavailable(format!(
                "the fleet's configuration was changed (revision {rev}) but this instance has not applied it within {FLEET_APPLY_WAIT:?}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn backend_answer(st: &AdminState, pool: &str, addr: std::net::SocketAddr) -> Json<BackendAnswer> {
    let snap = st.shared.snapshot.load();
    // Only this backend's object (a pool may have thousands).
    let backend = snap.pool(pool).and_then(|p| {
        let i = p.backends.iter().position(|b| b.address == addr)?;
        Some(BackendView::new(&p.backends[i], p.stats.get(i)?))
    });
    Json(BackendAnswer {
        backend,
        pool: pool.to_owned(),
    })
}

/// The body of `PUT /api/v1/pools/{pool}/backends/{address}`: `{"weight": N}`, the weight
/// optional.
fn backend_weight(v: &Value) -> Result<Option<u16>, ApiError> {
    let Some(obj) = v.as_object() else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object: {\"weight\": N}".into(),
        ));
    };
    if let Some(k) = obj.keys().find(|k| k.as_str() != "weight") {
        return Err(ApiError::BadRequest(format!(
            "unknown field {k:?} in the body; valid: weight"
        )));
    }
    obj.get("weight")
        .map(|w| {
            w.as_u64()
                .and_then(|w| u16::try_from(w).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "weight {w} is invalid: weights are integers 0..=65535 (0 = no new flows)"
                    ))
                })
        })
        .transpose()
}

/// `PUT /api/v1/pools/{pool}/backends/{address}` with `{"weight": N}` (optional: a new
/// backend gets 1, an existing one keeps its weight). Ends an operator drain.
async fn put_backend(
    State(st): State<AdminState>,
    Path((pool, address)): Path<(String, String)>,
    _: Authorized,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BackendAnswer>, ApiError> {
    let body = body?;
    let addr = crate::edit::parse_addr(&address)?;
    let weight = backend_weight(&json_body(&body)?)?;
    let p = pool.clone();
    let edit = Arc::new(move |cfg: &Config| {
        let w = weight.unwrap_or_else(|| {
            cfg.pool(&p)
                .and_then(|pc| pc.backends.iter().find(|b| b.address == addr))
                .map_or(1, |b| b.weight.get() as u16)
        });
        crate::edit::set_backend(cfg, &p, addr, w)
    });
    apply_edit(&st, edit, Some((pool.clone(), addr))).await?;
    Ok(backend_answer(&st, &pool, addr))
}

/// `DELETE /api/v1/pools/{pool}/backends/{address}`: existing flows finish.
async fn delete_backend(
    State(st): State<AdminState>,
    Path((pool, address)): Path<(String, String)>,
    _: Authorized,
) -> Result<Json<BackendRemoved>, ApiError> {
    let addr = crate::edit::parse_addr(&address)?;
    let p = pool.clone();
    let edit = Arc::new(move |cfg: &Config| crate::edit::remove_backend(cfg, &p, addr));
    apply_edit(&st, edit, None).await?;
    Ok(Json(BackendRemoved {
        pool,
        removed: addr.to_string(),
    }))
}

/// `POST /api/v1/pools/{pool}/backends/{address}/drain`.
async fn drain_backend(
    State(st): State<AdminState>,
    Path((pool, address)): Path<(String, String)>,
    _: Authorized,
) -> Result<Json<BackendAnswer>, ApiError> {
    let addr = crate::edit::parse_addr(&address)?;
    let (tx, rx) = oneshot::channel();
    let msg = Control::Drain {
        pool: pool.clone(),
        backend: addr,
        reply: tx,
    };
    ask(&st, msg, rx).await??;
    Ok(backend_answer(&st, &pool, addr))
}

/// The change of a named pool or service: `change(running config, name, body)`.
async fn edit_named(
    st: &AdminState,
    name: &str,
    body: Value,
    change: fn(&Config, &str, Value) -> Result<Config, ChangeError>,
) -> Result<(), ApiError> {
    let n = name.to_owned();
    let edit = Arc::new(move |cfg: &Config| change(cfg, &n, body.clone()));
    apply_edit(st, edit, None).await
}

/// `PUT /api/v1/services/{name}`: the body has the keys of a `[[service]]` table.
async fn put_service(
    State(st): State<AdminState>,
    Path(name): Path<String>,
    _: Authorized,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ServiceAnswer>, ApiError> {
    edit_named(&st, &name, json_body(&body?)?, crate::edit::put_service).await?;
    let snap = st.shared.snapshot.load();
    let service = snap.services.iter().find(|s| s.name == name);
    Ok(Json(ServiceAnswer {
        service: service.map(|s| s.as_ref().into()),
    }))
}

/// `PUT /api/v1/pools/{pool}`: creates a pool (empty) or changes its settings.
async fn put_pool(
    State(st): State<AdminState>,
    Path(name): Path<String>,
    _: Authorized,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PoolView>, ApiError> {
    edit_named(&st, &name, json_body(&body?)?, crate::edit::set_pool).await?;
    let snap = st.shared.snapshot.load();
    let p = snap
        .pool(&name)
        .ok_or_else(|| ApiError::Internal("pool missing after the change".into()))?;
    Ok(Json(p.as_ref().into()))
}

/// `DELETE /api/v1/pools/{pool}` (`edit::delete_pool`: 409 while a service or route uses
/// it) and `DELETE /api/v1/services/{name}` (`edit::delete_service`: stops listening; open
/// connections finish): the removal `remove(running config, name)`; the answer names what
/// was removed.
fn delete_named(
    remove: fn(&Config, &str) -> Result<Config, ChangeError>,
) -> MethodRouter<AdminState> {
    delete(
        move |State(st): State<AdminState>, Path(name): Path<String>, _: Authorized| async move {
            let n = name.clone();
            let edit = Arc::new(move |cfg: &Config| remove(cfg, &n));
            apply_edit(&st, edit, None).await?;
            Ok::<_, ApiError>(Json(Removed { removed: name }))
        },
    )
}

/// `GET /api/v1/cluster`: the fleet as this instance sees it (`[cluster]`, docs/cluster.md).
async fn cluster(State(st): State<AdminState>) -> Result<Response, ApiError> {
    match st.shared.cluster.load_full() {
        Some(status) => {
            let mut v = serde_json::to_value(status.as_ref()).unwrap_or_default();
            if let (Some(obj), Some(h)) = (v.as_object_mut(), st.shared.fleet_health.load_full()) {
                let mut h = h.as_ref().clone();
                // Passive ejection is this instance's own, never the fleet's: read from the
                // running snapshot now.
                h.local = st.shared.local_health.borrow().as_ref().clone();
                let snap = st.shared.snapshot.load();
                h.ejected_locally = snap
                    .pools
                    .iter()
                    .flat_map(|p| {
                        p.backends
                            .iter()
                            .filter(|b| b.state == fulcrum_core::model::BackendState::Ejected)
                            .map(|b| (p.name.clone(), b.address))
                    })
                    .collect();
                obj.insert("health".into(), serde_json::to_value(h).unwrap_or_default());
            }
            Ok(Json(v).into_response())
        }
        None => Err(ApiError::NotFound(
            "this instance has no [cluster] section: it is not part of a fleet".into(),
        )),
    }
}

/// `GET /api/v1/config`: the running configuration (file plus run-time changes) as TOML.
async fn get_config(State(st): State<AdminState>) -> Result<Response, ApiError> {
    let (tx, rx) = oneshot::channel();
    let cfg = ask(&st, Control::Config(tx), rx).await?;
    let kind = "application/toml; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, kind)], cfg.to_toml()).into_response())
}

/// The query of `explain`: `client=IP:PORT[&dst=IP:PORT][&proto=tcp|udp]`.
fn explain_query(query: Option<&str>) -> Result<crate::explain::Query, ApiError> {
    let mut client = None;
    let mut dst = None;
    let mut proto = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        let addr = |what: &str| {
            v.parse::<std::net::SocketAddr>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid {what} address {v:?}: write IP:PORT, e.g. 198.18.1.3:40000"
                ))
            })
        };
        match k {
            "client" => client = Some(addr("client")?),
            "dst" => dst = Some(addr("dst")?),
            "proto" => {
                proto = Some(crate::explain::parse_proto(&v).ok_or_else(|| {
                    ApiError::BadRequest(format!("invalid proto {v:?}: valid: tcp, udp"))
                })?);
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?}; valid: client, dst, proto"
                )))
            }
        }
    }
    let client = client.ok_or_else(|| {
        ApiError::BadRequest("missing client=IP:PORT (the flow's source address)".into())
    })?;
    Ok(crate::explain::Query { client, dst, proto })
}

/// `GET /api/v1/pools/{pool}/explain?client=IP:PORT[&dst=IP:PORT][&proto=tcp|udp]`.
async fn explain(
    State(st): State<AdminState>,
    Path(pool): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = explain_query(query.as_deref())?;
    let snap = st.shared.snapshot.load();
    let p = snap
        .pool(&pool)
        .ok_or_else(|| ApiError::NotFound(format!("no pool named {pool:?}")))?;
    Ok(Json(crate::explain::explain(&st.shared, &snap, p, q)))
}

/// `GET /api/v1/services/{name}/explain?name=NAME[&type=A|AAAA][&client=IP][&subnet=IP/LEN]`
/// (dns services).
async fn explain_dns(
    State(st): State<AdminState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = crate::explain_dns::query(query.as_deref())?;
    let snap = st.shared.snapshot.load();
    let svc = snap
        .services
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no service named {name:?}")))?;
    crate::explain_dns::explain_dns(&st.shared, svc, &q).map(Json)
}

/// Decodes `%XX` escapes (and `+` as space) of a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(x) => {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

mod announce;
pub(crate) mod answers;
mod dashboard;

pub use answers::{error, ApiError};

#[cfg(test)]
mod openapi_tests;
