//! `GET /api/v1/pools/{pool}/explain?client=IP:PORT[&dst=IP:PORT][&proto=tcp|udp]`: which
//! backend a new flow from `client` goes to now, and why. Read-only: the persistence table
//! is only peeked at (no refresh, no insert) and no scheduler state moves.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;

use fulcrum_core::choice::{Choice, Flow, Why};
use fulcrum_core::hash::{flow_hash, flow_words};
use fulcrum_core::model::{FlowTuple, Proto, ServiceProtocol};
use fulcrum_core::sched::PickError;
use fulcrum_state::snapshot::{PoolRt, Shared, Snapshot};
use serde_json::{json, Value};

/// The query, already parsed.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub client: SocketAddr,
    pub dst: Option<SocketAddr>,
    pub proto: Option<Proto>,
}

/// Parses `proto=tcp|udp`.
pub fn parse_proto(s: &str) -> Option<Proto> {
    match s {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        _ => None,
    }
}

fn backend_json(p: &PoolRt, i: usize) -> Value {
    let b = &p.backends[i];
    json!({
        "address": b.address.to_string(),
        "weight": b.weight.get(),
        "state": b.state.as_str(),
        "active_connections": p.stats[i].active.load(Ordering::Relaxed),
    })
}

/// The explanation as JSON (the pool exists in `snap`).
pub fn explain(shared: &Shared, snap: &Snapshot, p: &PoolRt, q: Query) -> Value {
    // The service address the flow is addressed to: given, else the first service of this
    // pool (of the given protocol).
    let svc = snap.services.iter().find(|s| {
        s.pool.name == p.name
            && q.proto
                .is_none_or(|pr| (pr == Proto::Udp) == (s.protocol == ServiceProtocol::Udp))
    });
    let proto = q.proto.unwrap_or(match svc.map(|s| s.protocol) {
        Some(ServiceProtocol::Udp) => Proto::Udp,
        _ => Proto::Tcp,
    });
    let dst = q
        .dst
        .or(svc.map(|s| s.listen))
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let flow = FlowTuple {
        src: q.client,
        dst,
        proto,
    };
    let proto_name = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let mut out = json!({
        "pool": p.name,
        "scheduler": p.kind.as_str(),
        "flow": {
            "client": q.client.to_string(),
            "dst": dst.to_string(),
            "proto": proto_name,
            "service": svc.map(|s| s.name.clone()),
        },
        "eligible_backends": p.backends.iter().filter(|b| b.is_eligible()).count(),
        "total_backends": p.backends.len(),
    });

    // The data path's own choice, in explain mode (`fulcrum_core::choice`).
    let (chosen, kept) = p.explain(&Flow::l4(flow, &[], 0, shared.now()));

    // 1. Persistence (ipvsadm -p): a client IP that has a live entry keeps its backend.
    let mut persistence = json!({ "configured": p.persistence.is_some(), "hit": false });
    if let Some(pers) = &p.persistence {
        persistence["timeout"] = json!(humantime_secs(pers.timeout));
    }
    if let Some(k) = kept {
        persistence["hit"] = json!(true);
        persistence["backend"] = json!(k.backend.map(|i| p.backends[i].address.to_string()));
        persistence["usable"] = json!(k.usable);
    }
    out["persistence"] = persistence;
    decide(&mut out, p, q, &flow, chosen);
    // What a scoring or slow-starting scheduler decides by, per eligible backend, now.
    let now = shared.now();
    let views: Vec<_> = (0..p.backends.len()).map(|i| (i, p.view(i, now))).collect();
    if p.scheduler.slow_start().is_some() || views.iter().any(|(_, v)| v.score.is_some()) {
        out["scores"] = views
            .iter()
            .filter(|(i, _)| p.backends[*i].is_eligible())
            .map(|(i, v)| {
                json!({
                    "address": p.backends[*i].address.to_string(),
                    "outstanding": p.stats[*i].active.load(Ordering::Relaxed),
                    "latency_seconds": v.latency,
                    "score": v.score,
                    "effective_weight": v.effective_weight,
                })
            })
            .collect();
    }
    out
}

/// The decision and its reason, from the choice `chosen` of the flow `flow` of `q`.
fn decide(
    out: &mut Value,
    p: &PoolRt,
    q: Query,
    flow: &FlowTuple,
    chosen: Result<Choice, PickError>,
) {
    let persisted_note = if p.persistence.is_some() {
        "; the choice will be remembered for the persistence timeout"
    } else {
        ""
    };
    // 2. The scheduler.
    let hash = match &chosen {
        Ok(Choice {
            backend: Some(i),
            why: Why::Persistence,
        }) => {
            out["decision"] = json!("persistence");
            out["backend"] = backend_json(p, *i);
            out["reason"] = json!(format!(
                "client {} has a live persistence entry for {}, which takes new flows",
                q.client.ip(),
                p.backends[*i].address
            ));
            return;
        }
        Ok(Choice {
            why: Why::RequestKey,
            ..
        }) => {
            out["hash"] = json!({ "key": p.hash_key.to_string() });
            out["decision"] = json!("http_hash_key");
            out["backend"] = Value::Null;
            out["reason"] = json!(format!(
                "hash_key {} is taken from each HTTP request, not from the connection",
                p.hash_key
            ));
            return;
        }
        Ok(Choice {
            why: Why::Hash(h), ..
        }) => *h,
        // Only a hashing scheduler fails in explain, and only over an address hash key.
        Err(_) => flow_hash(&p.hash_key, flow).unwrap_or_default(),
        Ok(Choice { .. }) => {
            out["decision"] = json!("scheduler_state");
            out["backend"] = Value::Null;
            out["reason"] = json!(format!(
                "{} does not hash the flow: the backend depends on the scheduler's position, \
                 random numbers or live connection counts at the moment the flow arrives{persisted_note}",
                p.kind.as_str()
            ));
            return;
        }
    };
    let words: Vec<String> = flow_words(&p.hash_key, flow)
        .unwrap_or_default()
        .iter()
        .map(|w| format!("{w:#010x}"))
        .collect();
    out["hash"] = json!({
        "key": p.hash_key.to_string(),
        "words": words,
        "value": hash,
        "hex": format!("{hash:#010x}"),
    });
    let table = table_json(p, hash);
    if !table.is_null() {
        out["table"] = table;
    }
    match chosen {
        Ok(Choice {
            backend: Some(i), ..
        }) => {
            out["decision"] = json!("hash");
            out["backend"] = backend_json(p, i);
            out["reason"] = json!(format!(
                "{} maps hash {hash:#010x} of the {} to {}{persisted_note}",
                p.kind.as_str(),
                p.hash_key,
                p.backends[i].address
            ));
        }
        Ok(Choice { backend: None, .. }) => {}
        Err(e) => {
            out["decision"] = json!("no_backend");
            out["backend"] = Value::Null;
            out["reason"] = json!(e.to_string());
        }
    }
}

/// Where `hash` falls in the pool's hashing table (the first owner, before any backend is
/// skipped).
fn table_json(p: &PoolRt, hash: u32) -> Value {
    if let Some(m) = p.scheduler.as_maglev() {
        let slot = m.slot(hash);
        json!({
            "kind": "maglev",
            "size": m.size(),
            "slot": slot,
            "owner": m.table().get(slot).map(|&i| p.backends[i as usize].address.to_string()),
        })
    } else if let Some(r) = p.scheduler.as_ring_hash() {
        let pos = r.position(hash);
        json!({
            "kind": "ring_hash",
            "points": r.points().len(),
            "position": pos,
            "point": pos.map(|i| r.points()[i]),
            "owner": pos.map(|i| p.backends[r.owners()[i] as usize].address.to_string()),
        })
    } else if let Some(sh) = p.scheduler.as_source_hash() {
        let t = sh.table();
        let slot = sh.slot(hash);
        json!({
            "kind": "sh",
            "size": t.len(),
            "slot": slot,
            "owner": slot.map(|s| p.backends[t[s] as usize].address.to_string()),
        })
    } else {
        Value::Null
    }
}

fn humantime_secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
