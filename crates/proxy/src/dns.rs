//! `protocol = "dns"` services: the sockets. Every decision is `fulcrum_core::dns::answer`'s;
//! here queries come in over UDP (one datagram each, a rate-limit table per worker socket)
//! and TCP (two-byte length prefix, several queries per connection, RFC 7766), and the
//! running snapshot is loaded per query, so a health change shows in the next answer.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::dns::{Incoming, Rrl, Transport};
use fulcrum_core::model::Proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::accept::Acceptor;
use fulcrum_state::snapshot::Shared;

/// The largest UDP query read (larger ones are cut and then FORMERR).
const MAX_QUERY: usize = 4096;
/// A TCP client that sends nothing for this long is closed (RFC 7766 advises seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections of one service at once, per worker.
const TCP_MAX: usize = 1024;

/// Answers one query for the dns service at `listen` (`None`: no such service now, or the
/// packet is dropped).
fn answer(
    shared: &Shared,
    listen: SocketAddr,
    packet: &[u8],
    peer: SocketAddr,
    transport: Transport,
    rrl: Option<&mut Rrl>,
) -> Option<Vec<u8>> {
    let snap = shared.snapshot.load();
    let svc = snap.service_at(Proto::Udp, listen)?;
    let dns = svc.dns.as_ref()?;
    svc.stats.total.fetch_add(1, Ordering::Relaxed);
    let q = Incoming {
        packet,
        client: peer.ip(),
        transport,
        random: fastrand::u64(..),
        now: shared.now(),
    };
    dns.answer(&svc.stats, &q, rrl).reply
}

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

/// Serves one dns service's UDP socket until the task is aborted.
pub async fn serve_udp(shared: Arc<Shared>, sock: UdpSocket, listen: SocketAddr) {
    let mut rrl = Rrl::default();
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%listen, error = %e, "dns recv failed");
                continue;
            }
        };
        let Some(packet) = buf.get(..n) else {
            continue;
        };
        if let Some(reply) = answer(
            &shared,
            listen,
            packet,
            peer,
            Transport::Udp,
            Some(&mut rrl),
        ) {
            // UDP: a reply that cannot be sent now is dropped, the client asks again.
            let _ = sock.try_send_to(&reply, peer);
        }
    }
}

/// Serves one dns service's TCP listener until the task is aborted.
pub async fn serve_tcp(shared: Arc<Shared>, mut listener: Acceptor, listen: SocketAddr) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%listen, error = %e, "dns accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= TCP_MAX {
            continue; // dropped: closes the connection
        }
        conns.spawn_local(connection(Arc::clone(&shared), stream, peer, listen));
    }
}

async fn connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        let Some(packet) = buf.get_mut(..n) else {
            return;
        };
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = answer(&shared, listen, packet, peer, Transport::Tcp, None) else {
            // Dropped (malformed): RFC 7766 lets a server close the connection.
            return;
        };
        let Ok(rlen) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&rlen.to_be_bytes());
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
