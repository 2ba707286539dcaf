//! DNS answers for queries that come over HTTPS (the admin listener's `/dns-query`, and http
//! services with `dns_service`): the same decision as the UDP and TCP sockets of
//! `fulcrum_proxy::dns`, from the running snapshot.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use fulcrum_core::dns::{Incoming, Transport};

use crate::snapshot::Shared;

/// Answers a query that came over HTTPS (RFC 8484, the JSON API) for the dns service named
/// `service`: the same function as UDP and TCP, without size or rate limit.
pub fn answer_https(
    shared: &Shared,
    service: &str,
    packet: &[u8],
    peer: SocketAddr,
) -> Option<Vec<u8>> {
    let snap = shared.snapshot.load();
    let svc = snap.services.iter().find(|s| s.name == service)?;
    let dns = svc.dns.as_ref()?;
    svc.stats.total.fetch_add(1, Ordering::Relaxed);
    let q = Incoming {
        packet,
        client: peer.ip(),
        transport: Transport::Https,
        random: fastrand::u64(..),
        now: shared.now(),
    };
    dns.answer(&svc.stats, &q, None).reply
}
