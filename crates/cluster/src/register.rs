//! `fulcrum register`: a backend's heartbeat in etcd (docs/cluster.md, "Registered
//! backends"). While it runs, the key `P/POOL/IP:PORT` exists under a lease of the given
//! TTL, kept alive every third of it; pools with `[pool.discovery] etcd = "P/POOL/"` serve
//! the backend. When it stops heartbeating (killed, hung, cut off from etcd) the lease
//! expires after the TTL and the key goes; a clean stop (SIGTERM) revokes the lease, so the
//! key goes at once. A lost connection or an expired lease (the process was paused) is
//! followed by a new registration, after the fleet's reconnection backoff.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use fulcrum_core::cluster::Backoff;

use crate::{connect, Error};

/// One registration: the key, its value and the lease TTL.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// `fulcrum_core::registry::key`.
    pub key: String,
    /// `fulcrum_core::registry::value`.
    pub value: String,
    /// The lease TTL (whole seconds; a fraction is rounded up).
    pub ttl: Duration,
}

impl Heartbeat {
    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs() + u64::from(self.ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

/// How one heartbeat session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `stop` fired; the lease was revoked (or the revoke failed, logged: it expires then).
    Stopped,
}

/// Registers `hb` and keeps it alive until `stop` completes; reconnects and registers
/// again after any failure. Returns once stopped (the lease revoked).
pub async fn run(endpoints: &[String], hb: &Heartbeat, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut backoff = Backoff::default();
    loop {
        // Connecting may take seconds when etcd is away: a stop ends it.
        let connected = tokio::select! {
            () = stop.as_mut() => return,
            c = connect(endpoints) => c,
        };
        let res = match connected {
            Ok(mut c) => session(&mut c, hb, stop.as_mut(), &mut backoff).await,
            Err(e) => Err(e),
        };
        let wait = backoff.next(fastrand::f64());
        match res {
            Ok(Ended::Stopped) => return,
            Err(e) => {
                tracing::warn!(key = hb.key, error = %e, "register: not registered; trying again in {wait:?}");
            }
        }
        tokio::select! {
            () = stop.as_mut() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One registration on `c`: grant a lease, put the key under it, keep it alive until
/// `stop` (then revoke) or a failure.
///
/// # Errors
/// etcd failed, a keep-alive went unanswered for the TTL, or the lease expired.
pub async fn session<F: Future<Output = ()> + ?Sized>(
    c: &mut Client,
    hb: &Heartbeat,
    mut stop: Pin<&mut F>,
    backoff: &mut Backoff,
) -> Result<Ended, Error> {
    let ttl = hb.ttl_secs();
    let lease = c.lease_grant(ttl, None).await?.id();
    c.put(
        hb.key.as_str(),
        hb.value.as_str(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await?;
    backoff.reset();
    tracing::info!(
        key = hb.key,
        ttl,
        lease = format!("{lease:x}"),
        "registered"
    );
    let (mut keeper, mut acks) = c.lease_keep_alive(lease).await?;
    let every = (hb.ttl / 3).max(Duration::from_millis(300));
    let mut tick = tokio::time::interval(every);
    let mut last_ack = Instant::now();
    loop {
        tokio::select! {
            () = stop.as_mut() => {
                match tokio::time::timeout(Duration::from_secs(2), c.lease_revoke(lease)).await {
                    Ok(Ok(_)) => tracing::info!(key = hb.key, "deregistered (lease revoked)"),
                    Ok(Err(e)) => tracing::warn!(key = hb.key, error = %e, "cannot revoke the lease; the key goes when it expires"),
                    Err(_) => tracing::warn!(key = hb.key, "no answer to the lease revoke; the key goes when it expires"),
                }
                return Ok(Ended::Stopped);
            }
            _ = tick.tick() => {
                if last_ack.elapsed() > hb.ttl {
                    return Err(Error::Protocol(format!(
                        "no keep-alive answer for {:?}", last_ack.elapsed()
                    )));
                }
                keeper.keep_alive().await?;
            }
            ack = acks.message() => match ack? {
                Some(a) if a.ttl() > 0 => last_ack = Instant::now(),
                Some(_) => return Err(Error::Protocol("the lease expired".into())),
                None => return Err(Error::Protocol("the keep-alive stream ended".into())),
            },
        }
    }
}
