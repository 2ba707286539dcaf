//! The `OpenAPI` document served by a real `fulcrum run`: it is `docs/openapi.json`, it lists
//! exactly the router's routes, and real answers of every operation match its statuses and
//! response schemas.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::collections::BTreeSet;

use common::{
    admin_toml, free_addr, http_body, pool_toml, service_toml, weighted, Behaviour, Fulcrum,
    TcpBackend,
};
use fulcrum_control::admin::ROUTES;
use serde_json::Value;

const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// A small JSON Schema check for the keywords the document uses.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = doc
            .pointer(&r[1..])
            .ok_or_else(|| format!("{at}: dangling {r}"))?;
        return validate(doc, target, v, at);
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        return if any.iter().any(|s| validate(doc, s, v, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: {v} matches no anyOf branch"))
        };
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not of type {t}"));
        }
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            return Err(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{at}: {v} not in {e:?}"));
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        if v.as_f64().is_some_and(|x| x < min) {
            return Err(format!("{at}: {v} < {min}"));
        }
    }
    if let Some(o) = v.as_object() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !o.contains_key(r) {
                return Err(format!("{at}: required key {r:?} missing in {v}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, x, &format!("{at}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: unexpected key {k:?}"))
                }
                None => {}
            }
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), schema.get("items")) {
        for (i, x) in a.iter().enumerate() {
            validate(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks a real answer against the operation's documented status and schema.
fn check_answer(doc: &Value, method: &str, tpl: &str, status: u16, body: &str) {
    let ctx = format!("{method} {tpl} -> {status}: {body:.300}");
    let op = &doc["paths"][tpl][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{ctx}: operation not documented");
    let resp = &op["responses"][status.to_string()];
    assert!(resp.is_object(), "{ctx}: status not documented");
    let resp = match resp.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(&r[1..]).unwrap(),
        None => resp,
    };
    if let Some(schema) = resp["content"]
        .get("application/json")
        .map(|c| &c["schema"])
    {
        let v: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{ctx}: not JSON: {e}"));
        if let Err(e) = validate(doc, schema, &v, "$") {
            panic!("{ctx}: does not match the documented schema: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_lists_every_endpoint_and_real_answers_match_it() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip, vip2) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml("web", "maglev", "", &weighted(&[b1.addr]))
    );
    let f = Fulcrum::start("api_openapi", admin, &cfg, &["--workers", "1"]).await;

    // The served document is the repository's file, and it parses.
    let (st, served) = f.get("/api/v1/openapi.json").await;
    assert_eq!(st, 200);
    assert_eq!(
        served, OPENAPI,
        "served document differs from docs/openapi.json"
    );
    let doc: Value = serde_json::from_str(&served).expect("the served document parses");
    assert_eq!(doc["openapi"], "3.1.0");

    // It lists every endpoint of the router, and nothing else.
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            if m != "parameters" {
                documented.insert((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let served_routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, served_routes);

    // Every operation, for real, with its answer checked against the document.
    let b2p = format!("/api/v1/pools/web/backends/{}", b2.addr);
    let svc2 = format!(r#"{{"listen": "{vip2}", "protocol": "tcp", "pool": "web"}}"#);
    let steps: Vec<(&str, &str, String, String, u16)> = vec![
        ("GET", "/healthz", "/healthz".into(), String::new(), 200),
        ("GET", "/readyz", "/readyz".into(), String::new(), 200),
        ("GET", "/metrics", "/metrics".into(), String::new(), 200),
        (
            "GET",
            "/api/v1/openapi.json",
            "/api/v1/openapi.json".into(),
            String::new(),
            200,
        ),
        (
            "GET",
            "/api/v1/services",
            "/api/v1/services".into(),
            String::new(),
            200,
        ),
        (
            "GET",
            "/api/v1/pools",
            "/api/v1/pools".into(),
            String::new(),
            200,
        ),
        (
            "GET",
            "/api/v1/dashboard",
            "/api/v1/dashboard".into(),
            String::new(),
            200,
        ),
        (
            "GET",
            "/api/v1/pools/{pool}",
            "/api/v1/pools/web".into(),
            String::new(),
            200,
        ),
        (
            "GET",
            "/api/v1/pools/{pool}",
            "/api/v1/pools/nope".into(),
            String::new(),
            404,
        ),
        (
            "GET",
            "/api/v1/pools/{pool}/explain",
            "/api/v1/pools/web/explain?client=198.18.1.3:40000".into(),
            String::new(),
            200,
        ),
        (
            "GET",
            "/api/v1/pools/{pool}/explain",
            "/api/v1/pools/web/explain".into(),
            String::new(),
            400,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            b2p.clone(),
            r#"{"weight": 2}"#.into(),
            200,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}/backends/{address}",
            b2p.clone(),
            r#"{"weight": 2"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/pools/{pool}/backends/{address}/drain",
            format!("{b2p}/drain"),
            String::new(),
            200,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}/backends/{address}",
            b2p.clone(),
            String::new(),
            200,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}/backends/{address}",
            b2p.clone(),
            String::new(),
            404,
        ),
        (
            "PUT",
            "/api/v1/pools/{pool}",
            "/api/v1/pools/p2".into(),
            r#"{"scheduler": "wlc"}"#.into(),
            200,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}",
            "/api/v1/pools/p2".into(),
            String::new(),
            200,
        ),
        (
            "DELETE",
            "/api/v1/pools/{pool}",
            "/api/v1/pools/web".into(),
            String::new(),
            409,
        ),
        (
            "PUT",
            "/api/v1/services/{name}",
            "/api/v1/services/web2".into(),
            svc2,
            200,
        ),
        (
            "DELETE",
            "/api/v1/services/{name}",
            "/api/v1/services/web2".into(),
            String::new(),
            200,
        ),
        (
            "DELETE",
            "/api/v1/services/{name}",
            "/api/v1/services/web2".into(),
            String::new(),
            404,
        ),
        (
            "GET",
            "/api/v1/config",
            "/api/v1/config".into(),
            String::new(),
            200,
        ),
        (
            "POST",
            "/api/v1/reload",
            "/api/v1/reload".into(),
            String::new(),
            200,
        ),
        (
            "GET",
            "/api/v1/announce",
            "/api/v1/announce".into(),
            String::new(),
            200,
        ),
        (
            "POST",
            "/api/v1/instance/drain",
            "/api/v1/instance/drain".into(),
            String::new(),
            200,
        ),
        (
            "POST",
            "/api/v1/instance/undrain",
            "/api/v1/instance/undrain".into(),
            String::new(),
            200,
        ),
        // Without [cluster] (tests/cluster.rs checks the 200 answer against a fleet).
        (
            "GET",
            "/api/v1/cluster",
            "/api/v1/cluster".into(),
            String::new(),
            404,
        ),
        // No dns service here (tests/dns.rs checks the 200 answers against dig).
        (
            "GET",
            "/api/v1/services/{name}/explain",
            "/api/v1/services/nosuch/explain?name=www.example.test".into(),
            String::new(),
            404,
        ),
    ];
    let mut exercised = BTreeSet::new();
    for (m, tpl, path, body, want) in steps {
        let (st, answer) = http_body(admin, m, &path, &body)
            .await
            .unwrap_or_else(|e| panic!("{m} {path}: {e}"));
        assert_eq!(st, want, "{m} {path}: {answer}");
        check_answer(&doc, m, tpl, st, &answer);
        exercised.insert((m.to_owned(), tpl.to_owned()));
    }
    assert_eq!(exercised, served_routes, "every route is exercised above");
    f.assert_no_panic();
}
