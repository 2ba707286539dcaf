//! `docs/openapi.json` against the router: the same routes both ways, well-formed
//! references, the auth scheme, and the statuses each handler can answer (audited by
//! reading the handlers, then checked by calling a live router).
#![allow(clippy::unwrap_used, clippy::too_many_lines, clippy::type_complexity)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use fulcrum_state::controller::Control;
use fulcrum_state::snapshot::Shared;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{endpoint, router, AdminState, OPENAPI_JSON, ROUTES};

const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "PATCH"];

fn doc() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("docs/openapi.json is not valid JSON")
}

/// (METHOD, path) -> operation object, for every operation of the document.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (k, op) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&k.as_str()) {
                out.insert((k.to_ascii_uppercase(), path.clone()), op.clone());
            }
        }
    }
    out
}

fn codes(op: &Value) -> BTreeSet<u16> {
    op["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| {
            k.parse()
                .unwrap_or_else(|_| panic!("status {k:?} is not a number"))
        })
        .collect()
}

/// The statuses each handler can answer, audited by reading `admin.rs`, `edit.rs` and the
/// controller (`ChangeError` kinds: Invalid 400, `NotFound` 404, Conflict 409; a closed
/// controller channel 503; `protect_reads` 401 on every GET but the probes; a path segment
/// that is not UTF-8 400; a body over `MAX_BODY` 413 where the body is read).
const STATUSES: &[(&str, &str, &[u16])] = &[
    ("GET", "/healthz", &[200]),
    ("GET", "/readyz", &[200, 503]),
    // 404 without [cluster] (the stand-in here has none).
    ("GET", "/api/v1/cluster", &[200, 401, 404]),
    // The XDP counters are read from the metrics text: its encoding failure 500.
    ("GET", "/api/v1/dashboard", &[200, 401, 500]),
    // metrics: encoding failure 500.
    ("GET", "/metrics", &[200, 401, 500]),
    ("GET", "/api/v1/openapi.json", &[200, 401]),
    ("GET", "/api/v1/services", &[200, 401]),
    ("GET", "/api/v1/pools", &[200, 401]),
    ("GET", "/api/v1/pools/{pool}", &[200, 400, 401, 404]),
    // set_pool creates a missing pool (no 404); 409 while shutting down; 500 if the pool
    // is missing from the snapshot after the change.
    (
        "PUT",
        "/api/v1/pools/{pool}",
        &[200, 400, 401, 409, 413, 500, 503],
    ),
    (
        "DELETE",
        "/api/v1/pools/{pool}",
        &[200, 400, 401, 404, 409, 503],
    ),
    ("GET", "/api/v1/pools/{pool}/explain", &[200, 400, 401, 404]),
    (
        "PUT",
        "/api/v1/pools/{pool}/backends/{address}",
        &[200, 400, 401, 404, 409, 413, 503],
    ),
    (
        "DELETE",
        "/api/v1/pools/{pool}/backends/{address}",
        &[200, 400, 401, 404, 409, 503],
    ),
    // The controller's drain answers only NotFound (it does not refuse while draining).
    (
        "POST",
        "/api/v1/pools/{pool}/backends/{address}/drain",
        &[200, 400, 401, 404, 503],
    ),
    // put_service: Invalid (unknown pool is a validation error) or Conflict; no 404.
    (
        "PUT",
        "/api/v1/services/{name}",
        &[200, 400, 401, 409, 413, 503],
    ),
    (
        "DELETE",
        "/api/v1/services/{name}",
        &[200, 400, 401, 404, 409, 503],
    ),
    ("GET", "/api/v1/config", &[200, 401, 503]),
    ("POST", "/api/v1/reload", &[200, 400, 401, 503]),
    ("GET", "/api/v1/announce", &[200, 401]),
    // A closed controller channel: 503; undrain while shutting down (SIGTERM): 409.
    ("POST", "/api/v1/instance/drain", &[200, 401, 503]),
    ("POST", "/api/v1/instance/undrain", &[200, 401, 409, 503]),
];

#[test]
fn every_route_has_a_handler_and_appears_once() {
    let mut seen = BTreeSet::new();
    for &(m, p) in ROUTES {
        assert!(METHODS.contains(&m), "{m} {p}: unexpected method");
        assert!(endpoint(m, p).is_some(), "{m} {p}: no handler");
        assert!(seen.insert((m, p)), "{m} {p}: listed twice in ROUTES");
    }
}

#[test]
fn document_and_router_list_the_same_operations() {
    let doc = doc();
    let documented: BTreeSet<(String, String)> = operations(&doc).into_keys().collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in docs/openapi.json: {undocumented:?}; documented but not served: {unserved:?}"
    );
}

/// Resolves every `$ref` in `v` (they must point into the document).
fn check_refs(doc: &Value, v: &Value, at: &str) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                let ptr = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("{at}: external $ref {r}"));
                assert!(doc.pointer(ptr).is_some(), "{at}: dangling $ref {r}");
            }
            for (k, x) in m {
                check_refs(doc, x, &format!("{at}/{k}"));
            }
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x, at)),
        _ => {}
    }
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(&r[1..]).unwrap(),
        None => v,
    }
}

#[test]
fn document_is_well_formed() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    check_refs(&doc, &doc, "#");
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    let err = &doc["components"]["schemas"]["Error"];
    assert_eq!(err["required"], serde_json::json!(["error"]));
    assert_eq!(err["properties"]["error"]["type"], "string");

    let mut ids = BTreeSet::new();
    for ((m, p), op) in operations(&doc) {
        let ctx = format!("{m} {p}");
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{ctx}: no operationId"));
        assert!(ids.insert(id.to_owned()), "{ctx}: operationId {id} twice");
        assert!(op["summary"].is_string(), "{ctx}: no summary");
        // Path parameters: every {x} of the template is declared (on the path or the
        // operation), and nothing else is.
        let mut declared = BTreeSet::new();
        for prm in doc["paths"][&p]["parameters"]
            .as_array()
            .into_iter()
            .chain(op["parameters"].as_array())
            .flatten()
        {
            let prm = resolve(&doc, prm);
            if prm["in"] == "path" {
                assert_eq!(prm["required"], true, "{ctx}: path parameter not required");
                declared.insert(prm["name"].as_str().unwrap().to_owned());
            }
        }
        let in_template: BTreeSet<String> = p
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        assert_eq!(declared, in_template, "{ctx}: path parameters");
        // Responses: a 2xx; every error status has the {"error": "..."} body (but the
        // probe's plain-text 503).
        let cs = codes(&op);
        assert!(cs.iter().any(|c| (200..300).contains(c)), "{ctx}: no 2xx");
        for c in cs.iter().filter(|c| **c >= 400) {
            let r = resolve(&doc, &op["responses"][c.to_string()]);
            assert!(r["description"].is_string(), "{ctx} {c}: no description");
            if p == "/readyz" {
                continue;
            }
            let schema = &r["content"]["application/json"]["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/Error",
                "{ctx} {c}: the error body must be the Error schema"
            );
        }
        // Auth: mutating calls need the token (and list 401); GETs take it optionally
        // (protect_reads) and list 401; the probes never need it.
        let sec = op.get("security").unwrap_or(&doc["security"]);
        let probe = p == "/healthz" || p == "/readyz";
        if probe {
            assert_eq!(sec, &serde_json::json!([]), "{ctx}: probes need no token");
            assert!(!cs.contains(&401), "{ctx}: probes never answer 401");
        } else if m == "GET" {
            assert_eq!(sec, &serde_json::json!([{}, {"bearerAuth": []}]), "{ctx}");
            assert!(cs.contains(&401), "{ctx}: protect_reads may answer 401");
        } else {
            assert_eq!(sec, &serde_json::json!([{"bearerAuth": []}]), "{ctx}");
            assert!(cs.contains(&401), "{ctx}: a mutating call may answer 401");
        }
        // A body is read: 400 (bad JSON) and 413 (too large) are possible, and the other
        // way round.
        let has_body = op.get("requestBody").is_some();
        assert_eq!(has_body, cs.contains(&413), "{ctx}: requestBody vs 413");
        if has_body {
            assert!(cs.contains(&400), "{ctx}: a body may be bad JSON");
            assert!(
                op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                "{ctx}: body schema"
            );
        }
        // A path parameter may be undecodable (400) and a pool/service/backend unknown.
        if !in_template.is_empty() {
            assert!(cs.contains(&400), "{ctx}: a path parameter may be bad");
        }
    }
}

#[test]
fn documented_statuses_are_the_handlers_statuses() {
    let doc = doc();
    let ops = operations(&doc);
    assert_eq!(STATUSES.len(), ROUTES.len(), "STATUSES must cover ROUTES");
    for &(m, p, want) in STATUSES {
        let op = ops
            .get(&(m.to_owned(), p.to_owned()))
            .unwrap_or_else(|| panic!("{m} {p} not documented"));
        let want: BTreeSet<u16> = want.iter().copied().collect();
        assert_eq!(
            codes(op),
            want,
            "{m} {p}: documented statuses vs the handler's"
        );
    }
}

// ---------------------------------------------------------------------------------------
// a live router with a stand-in controller that runs the real edits on a real config
// ---------------------------------------------------------------------------------------

const TOKEN: &str = "t0ken";
const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:9090"

[[service]]
name = "web"
listen = "127.0.0.1:18080"
protocol = "tcp"
pool = "web"

[[pool]]
name = "web"
scheduler = "rr"

[[pool.backend]]
address = "127.0.0.1:19001"

[[pool]]
name = "spare"
scheduler = "rr"
"#;

/// Serves the router; the controller answers edits by running them on `CONFIG` (not
/// applying them), drains of known backends with Ok, reloads with an error. With
/// `controller: false` the control channel is closed (a shutting-down instance).
async fn serve(token: Option<&str>, controller: bool, protect_reads: bool) -> SocketAddr {
    let (ev_tx, ev_rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(ev_rx);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Control>();
    if controller {
        let cfg = fulcrum_core::config::parse(CONFIG).unwrap();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    Control::Edit { edit, reply, .. } => {
                        let _ = reply.send(edit(&cfg).map(|_| ()));
                    }
                    Control::Drain {
                        pool,
                        backend,
                        reply,
                    } => {
                        let known = cfg
                            .pool(&pool)
                            .is_some_and(|p| p.backends.iter().any(|b| b.address == backend));
                        let _ = reply.send(if known {
                            Ok(())
                        } else {
                            Err(fulcrum_state::controller::ChangeError::NotFound(
                                "no such backend".into(),
                            ))
                        });
                    }
                    Control::Config(reply) => {
                        let _ = reply.send(cfg.clone());
                    }
                    Control::Reload(reply) => {
                        let _ = reply.send(Err("fulcrum.toml:1:1: stand-in error".into()));
                    }
                    Control::StopAccepting(reply) => {
                        let _ = reply.send(());
                    }
                    Control::Apply { reply, .. } => {
                        let _ = reply.send(Err("no fleet here".into()));
                    }
                    Control::FleetHealth(_) => {}
                    Control::Sockets(reply) => {
                        let _ = reply.send(Vec::new());
                    }
                }
            }
        });
    } else {
        drop(rx);
    }
    let state = AdminState {
        shared: Arc::new(Shared::new(
            ev_tx,
            fulcrum_state::snapshot::RelayMode::default(),
            None,
        )),
        control: tx,
        registry: Arc::new(prometheus_client::registry::Registry::default()),
        auth: Arc::new(arc_swap::ArcSwap::from_pointee(super::Auth {
            token: token.map(Arc::from),
            protect_reads,
        })),
        fleet: None,
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router(state)).await });
    addr
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

async fn call(addr: SocketAddr, m: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{m} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn assert_json_error(a: &Answer, ctx: &str) {
    let v: Value = serde_json::from_str(&a.body)
        .unwrap_or_else(|e| panic!("{ctx}: {} body is not JSON ({e}): {:?}", a.status, a.body));
    assert!(
        v["error"].as_str().is_some_and(|s| !s.is_empty()) && v.as_object().unwrap().len() == 1,
        "{ctx}: not {{\"error\": \"...\"}}: {}",
        a.body
    );
}

/// A concrete path for a template.
fn concrete(p: &str, pool: &str, addr: &str, name: &str) -> String {
    p.replace("{pool}", pool)
        .replace("{address}", addr)
        .replace("{name}", name)
}

#[tokio::test]
async fn the_live_router_answers_exactly_the_documented_routes_and_statuses() {
    let doc = doc();
    let ops = operations(&doc);
    let live = serve(Some(TOKEN), true, false).await;
    let closed = serve(Some(TOKEN), false, false).await;
    let protected = serve(Some(TOKEN), true, true).await;
    let mut seen: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    let big = format!(
        "{{\"weight\": 1, \"x\": \"{}\"}}",
        "a".repeat(super::MAX_BODY)
    );

    // (server, method, template, concrete path, token, body, expected status)
    let mut cases: Vec<(SocketAddr, &str, &str, String, Option<&str>, String, u16)> = Vec::new();
    let tok = Some(TOKEN);
    for &(m, p) in ROUTES {
        let ok_path = concrete(p, "web", "127.0.0.1:19001", "web");
        let mutating = m != "GET";
        // With protect_reads, every GET but the probes needs the token.
        if !mutating && p != "/healthz" && p != "/readyz" {
            cases.push((protected, m, p, ok_path.clone(), None, String::new(), 401));
        }
        // Every route is served (not the 404/405 fallbacks) and, if mutating, refuses a
        // missing or wrong token with 401.
        if mutating {
            cases.push((live, m, p, ok_path.clone(), None, String::new(), 401));
            cases.push((
                live,
                m,
                p,
                ok_path.clone(),
                Some("nope"),
                String::new(),
                401,
            ));
        }
        // A path parameter that is not UTF-8: 400.
        if p.contains('{') {
            let bad = concrete(p, "%FF", "127.0.0.1:19001", "%FF");
            cases.push((live, m, p, bad, tok, String::new(), 400));
        }
        // Routes that need the controller: 503 once it is gone.
        if mutating || p == "/api/v1/config" {
            let body = if m == "PUT" && p.contains("services") {
                r#"{"listen": "127.0.0.1:18443", "protocol": "tcp", "pool": "web"}"#
            } else {
                ""
            };
            cases.push((closed, m, p, ok_path.clone(), tok, body.into(), 503));
        }
        // Bodies: bad JSON 400, too large 413.
        if m == "PUT" {
            cases.push((live, m, p, ok_path.clone(), tok, "{not json".into(), 400));
            cases.push((live, m, p, ok_path.clone(), tok, big.clone(), 413));
        }
    }
    let s = |x: &str| x.to_owned();
    let more: Vec<(&str, &str, String, Option<&str>, String, u16)> = vec![
        ("GET", "/healthz", s("/healthz"), None, s(""), 200),
        ("GET", "/readyz", s("/readyz"), None, s(""), 503),
        ("GET", "/metrics", s("/metrics"), None, s(""), 200),
        (
            "GET",
            "/api/v1/openapi.json",
            s("/api/v1/openapi.json"),
            None,
            s(""),
            200,
        ),
        (
            "GET",
            "/api/v1/services",
            s("/api/v1/services"),
            None,
            s(""),
            200,
        ),
        ("GET", "/api/v1/pools", s("/api/v1/pools"), None, s(""), 200),
        (
            "GET",
            "/api/v1/dashboard",
            s("/api/v1/dashboard"),
            None,
            s(""),
            200,
        ),
        (
            "GET",
            "/api/v1/pools/{pool}",
            s("/api/v1/pools/nope"),
            None,
            s(""),
            404,
        ),
        (
            "GET",
            "/api/v1/pools/{pool}/explain",
            s("/api/v1/pools/web/explain"),
            None,
            s(""),
            400,
        ),
        (
            "GET",
            "/api/v1/pools/{pool}/explain",
            s("/api/v1/pools/web/explain?client=x"),
            None,
            s(""),
            400,
        ),
        (
            "GET",
            "/api/v1/pools/{pool}/explain",
            s("/api/v1/pools/nope/explain?client=198.18.0.1:1"),
            None,
            s(""),
            404,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}",
            s("/api/v1/pools/web"),
            tok,
            s(r#"{"scheduler": "nope"}"#),
            400,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}",
            s("/api/v1/pools/web"),
            tok,
            s(r#"{"colour": "red"}"#),
            400,
        ),
        // The stand-in does not apply the change, so the pool is missing afterwards: 500.
        (
            "PUT",
            "/api/v1/pools/{pool}",
            s("/api/v1/pools/new"),
            tok,
            s(r#"{"scheduler": "wrr"}"#),
            500,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}",
            s("/api/v1/pools/spare"),
            tok,
            s(""),
            200,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}",
            s("/api/v1/pools/web"),
            tok,
            s(""),
            409,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}",
            s("/api/v1/pools/nope"),
            tok,
            s(""),
            404,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/127.0.0.1:19002"),
            tok,
            s(r#"{"weight": 2}"#),
            200,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/127.0.0.1:19002"),
            tok,
            s(""),
            200,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/nope"),
            tok,
            s(""),
            400,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/127.0.0.1:0"),
            tok,
            s(""),
            400,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/127.0.0.1:19002"),
            tok,
            s(r#"{"weight": 70000}"#),
            400,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/127.0.0.1:19002"),
            tok,
            s(r#"{"wait": 1}"#),
            400,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/127.0.0.1:19002"),
            tok,
            s("[1]"),
            400,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/nope/backends/127.0.0.1:19002"),
            tok,
            s(""),
            404,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/127.0.0.1:19001"),
            tok,
            s(""),
            200,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/127.0.0.1:19009"),
            tok,
            s(""),
            404,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}/backends/{address}",
            s("/api/v1/pools/web/backends/[::1"),
            tok,
            s(""),
            400,
        ),
        (
            "POST",
            "/api/v1/pools/{pool}/backends/{address}/drain",
            s("/api/v1/pools/web/backends/127.0.0.1:19001/drain"),
            tok,
            s(""),
            200,
        ),
        (
            "POST",
            "/api/v1/pools/{pool}/backends/{address}/drain",
            s("/api/v1/pools/web/backends/127.0.0.1:19009/drain"),
            tok,
            s(""),
            404,
        ),
        (
            "POST",
            "/api/v1/pools/{pool}/backends/{address}/drain",
            s("/api/v1/pools/web/backends/x/drain"),
            tok,
            s(""),
            400,
        ),
        (
            "PUT",
            "/api/v1/services/{name}",
            s("/api/v1/services/web2"),
            tok,
            s(r#"{"listen": "127.0.0.1:18081", "protocol": "tcp", "pool": "web"}"#),
            200,
        ),
        (
            "PUT",
            "/api/v1/services/{name}",
            s("/api/v1/services/web2"),
            tok,
            s(r#"{"listen": "127.0.0.1:18080", "protocol": "tcp", "pool": "web"}"#),
            409,
        ),
        (
            "PUT",
            "/api/v1/services/{name}",
            s("/api/v1/services/web2"),
            tok,
            s(r#"{"listen": "127.0.0.1:18081", "protocol": "tcp", "pool": "nope"}"#),
            400,
        ),
        (
            "PUT",
            "/api/v1/services/{name}",
            s("/api/v1/services/web2"),
            tok,
            s(r#"{"listen": "127.0.0.1:18081", "protocol": "tcp", "pool": "web", "colour": 1}"#),
            400,
        ),
        (
            "DELETE",
            "/api/v1/services/{name}",
            s("/api/v1/services/web"),
            tok,
            s(""),
            200,
        ),
        (
            "DELETE",
            "/api/v1/services/{name}",
            s("/api/v1/services/nope"),
            tok,
            s(""),
            404,
        ),
        (
            "GET",
            "/api/v1/config",
            s("/api/v1/config"),
            None,
            s(""),
            200,
        ),
        (
            "POST",
            "/api/v1/reload",
            s("/api/v1/reload"),
            tok,
            s(""),
            400,
        ),
        (
            "GET",
            "/api/v1/announce",
            s("/api/v1/announce"),
            None,
            s(""),
            200,
        ),
        (
            "GET",
            "/api/v1/cluster",
            s("/api/v1/cluster"),
            None,
            s(""),
            404,
        ),
        (
            "POST",
            "/api/v1/instance/drain",
            s("/api/v1/instance/drain"),
            tok,
            s(""),
            200,
        ),
        (
            "POST",
            "/api/v1/instance/undrain",
            s("/api/v1/instance/undrain"),
            tok,
            s(""),
            200,
        ),
    ];
    for (m, p, path, t, body, want) in more {
        cases.push((live, m, p, path, t, body, want));
    }

    for (srv, m, p, path, t, body, want) in cases {
        let ctx = format!("{m} {path} (route {p})");
        let a = call(srv, m, &path, t, &body).await;
        assert_eq!(a.status, want, "{ctx}: body {}", a.body);
        let documented = codes(&ops[&(m.to_owned(), p.to_owned())]);
        assert!(
            documented.contains(&a.status),
            "{ctx}: {} is not documented",
            a.status
        );
        if a.status >= 400 && p != "/readyz" {
            assert_json_error(&a, &ctx);
        }
        seen.entry((m.to_owned(), p.to_owned()))
            .or_default()
            .insert(a.status);
    }
    // Every documented status was seen live, but those that need a running data path
    // (a real snapshot: 200 of a pool read or explain, of PUT pool; 409 while shutting
    // down) or a failing encoder (500 of /metrics), which the end-to-end tests cover.
    let needs_data_path: &[(&str, &str, u16)] = &[
        ("GET", "/readyz", 200),
        ("GET", "/metrics", 500),
        ("GET", "/api/v1/dashboard", 500),
        ("GET", "/api/v1/pools/{pool}", 200),
        ("GET", "/api/v1/pools/{pool}/explain", 200),
        ("PUT", "/api/v1/pools/{pool}", 200),
        ("PUT", "/api/v1/pools/{pool}", 409),
        ("PUT", "/api/v1/pools/{pool}/backends/{address}", 409),
        ("DELETE", "/api/v1/pools/{pool}/backends/{address}", 409),
        ("DELETE", "/api/v1/services/{name}", 409),
        ("POST", "/api/v1/reload", 200),
        ("POST", "/api/v1/instance/undrain", 409),
        // A fleet view needs [cluster] and etcd: crates/fulcrum/tests/cluster.rs.
        ("GET", "/api/v1/cluster", 200),
    ];
    for (key, op) in &ops {
        for c in codes(op) {
            let exempt = needs_data_path
                .iter()
                .any(|(m, p, s)| *m == key.0 && *p == key.1 && *s == c);
            let got = seen.get(key).is_some_and(|s| s.contains(&c));
            assert!(
                exempt || got,
                "{} {}: documented {c} never seen live",
                key.0,
                key.1
            );
        }
    }

    // The 404 and 405 fallbacks answer the error shape too; 405 names the allowed methods.
    let a = call(live, "GET", "/api/v1/nope", None, "").await;
    assert_eq!(a.status, 404);
    assert_json_error(&a, "unknown endpoint");
    for &(_, p) in ROUTES {
        let path = concrete(p, "web", "127.0.0.1:19001", "web");
        for m in METHODS {
            if ROUTES.iter().any(|&(rm, rp)| rm == m && rp == p) {
                continue;
            }
            let a = call(live, m, &path, Some(TOKEN), "").await;
            assert_eq!(a.status, 405, "{m} {path}: {}", a.body);
            assert_json_error(&a, &format!("{m} {path}"));
            assert!(
                a.head.contains("\r\nallow: "),
                "{m} {path}: no Allow header"
            );
        }
    }

    // The served document is the file, byte for byte.
    let a = call(live, "GET", "/api/v1/openapi.json", None, "").await;
    assert!(
        a.head.contains("content-type: application/json"),
        "{}",
        a.head
    );
    assert_eq!(a.body, OPENAPI_JSON);
}
