//! `--relay sockmap`: the bytes of an established connection move in the kernel
//! (`fulcrum_xdp::sockmap`, a sockhash whose stream verdict program redirects each skb to
//! the paired socket); this task only watches for the ends.
//!
//! - The sockets leave tokio's epoll (`into_std`); an [`EofWatch`] reports a peer's FIN, a
//!   reset or an error, and nothing per message.
//! - Byte counters: the program counts per socket; the task adds the growth to the
//!   service's counters every [`FLUSH_EVERY`] and at the end.
//! - Idle timeout: the program stamps each socket's last skb; the task wakes at the
//!   deadline and closes (with RST, as the copy relay does) when nothing moved.
//! - Half-close: a FIN leaves the socket readable with 0 bytes. Once every byte the program
//!   counted from that side has reached the other socket (see [`sent_mark`]), the FIN is
//!   passed on with `shutdown(SHUT_WR)`; the other direction keeps flowing in the kernel.
//! - Both sockets leave the maps (the [`Pair`] is dropped) before they are closed.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use fulcrum_state::snapshot::RelayMode;
use fulcrum_state::stats::ServiceStats;
use fulcrum_xdp::monotonic_ns;
use fulcrum_xdp::sockmap::{sent_mark, EofWatch, Pair, SockRelay, SockmapError};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

use crate::relay::RelayEnd;

/// How often a relayed connection publishes its byte counts while open.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The first wait for bytes still on their way to a socket before its FIN is passed on
/// (doubling up to [`DRAIN_POLL_MAX`]).
const DRAIN_POLL_MIN: Duration = Duration::from_millis(1);
const DRAIN_POLL_MAX: Duration = Duration::from_millis(50);

static RELAY: OnceLock<SockRelay> = OnceLock::new();

/// Loads and attaches the relay program (once per process; later calls do nothing).
///
/// # Errors
/// Without BPF permission or on a kernel without sockhash stream verdicts.
pub fn install() -> Result<(), SockmapError> {
    if RELAY.get().is_none() {
        let r = SockRelay::load()?;
        let _ = RELAY.set(r);
    }
    Ok(())
}

/// Relays `client` and `backend` in the kernel until both halves close, a side fails, or
/// nothing moves for `idle`. Returns how it ended and the bytes (from the client, to it).
/// Without [`install`], or when the pair cannot be linked (a full map), it falls back to
/// the copy relay.
pub async fn relay(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    counters: &ServiceStats,
) -> (RelayEnd, u64, u64) {
    let Some(kernel) = RELAY.get() else {
        return crate::relay::relay(&client, &backend, idle, RelayMode::Copy, counters).await;
    };
    let (client, backend) = match (client.into_std(), backend.into_std()) {
        (Ok(c), Ok(b)) => (c, b),
        (Err(e), _) | (_, Err(e)) => return (RelayEnd::Error(e), 0, 0),
    };
    let socks = [&client, &backend];
    // What each side's peer had been sent before the pairing (the PROXY header, a TLS hello).
    let base = match (
        sent_mark(backend.as_raw_fd()),
        sent_mark(client.as_raw_fd()),
    ) {
        (Ok(b), Ok(c)) => [b, c],
        (Err(e), _) | (_, Err(e)) => return (RelayEnd::Error(e), 0, 0),
    };
    let pair = match kernel.pair(&client, &backend) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "sockmap: cannot link the pair; copying in userspace");
            return match (TcpStream::from_std(client), TcpStream::from_std(backend)) {
                (Ok(c), Ok(b)) => {
                    crate::relay::relay(&c, &b, idle, RelayMode::Copy, counters).await
                }
                (Err(e), _) | (_, Err(e)) => (RelayEnd::Error(e), 0, 0),
            };
        }
    };
    let watch =
        EofWatch::new(&[client.as_raw_fd(), backend.as_raw_fd()]).and_then(EofWatch::register);
    let mut state = Ends {
        base,
        eof: [false; 2],
        shut: [false; 2],
        flushed: [0; 2],
        last_event: monotonic_ns(),
    };
    let end = match watch {
        Ok(w) => state.run(&pair, &w, socks, idle, counters).await,
        Err(e) => RelayEnd::Error(e),
    };
    state.flush(&pair, counters);
    if matches!(end, RelayEnd::Error(_) | RelayEnd::IdleTimeout) {
        for s in socks {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
    // Out of the maps before the sockets close (they drop after this, declared earlier).
    drop(pair);
    (end, state.flushed[0], state.flushed[1])
}

/// The ends of one kernel relay: side 0 is the client (its bytes go to the backend), 1 the
/// backend.
struct Ends {
    /// `sent_mark` of each side's peer at the pairing.
    base: [u64; 2],
    eof: [bool; 2],
    shut: [bool; 2],
    /// Bytes of each side published to the counters.
    flushed: [u64; 2],
    /// `CLOCK_MONOTONIC` ns of the last FIN seen (activity for the idle timeout).
    last_event: u64,
}

impl Ends {
    async fn run(
        &mut self,
        pair: &Pair<'_>,
        watch: &AsyncFd<EofWatch>,
        socks: [&std::net::TcpStream; 2],
        idle: Duration,
        counters: &ServiceStats,
    ) -> RelayEnd {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let mut drain_poll = DRAIN_POLL_MIN;
        loop {
            // Pass each FIN on once its side's bytes have all reached the other socket.
            let mut waiting = false;
            for i in 0..2 {
                if self.eof[i] && !self.shut[i] {
                    match self.drained(pair, socks, i) {
                        Ok(true) => {
                            self.shut[i] = true;
                            match socks[1 - i].shutdown(Shutdown::Write) {
                                Ok(()) => {}
                                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                                Err(e) => return RelayEnd::Error(e),
                            }
                        }
                        Ok(false) => waiting = true,
                        Err(e) => return RelayEnd::Error(e),
                    }
                }
            }
            if self.shut == [true; 2] {
                return RelayEnd::Closed;
            }
            let sides = match (pair.side(0), pair.side(1)) {
                (Ok(a), Ok(b)) => [a, b],
                (Err(e), _) | (_, Err(e)) => return RelayEnd::Error(e),
            };
            let now = monotonic_ns();
            let last = sides[0].last_ns.max(sides[1].last_ns).max(self.last_event);
            let quiet = now.saturating_sub(last);
            if quiet >= idle_ns {
                return RelayEnd::IdleTimeout;
            }
            let mut wait = Duration::from_nanos(idle_ns - quiet).min(FLUSH_EVERY);
            if waiting {
                wait = wait.min(drain_poll);
                drain_poll = (drain_poll * 2).min(DRAIN_POLL_MAX);
            } else {
                drain_poll = DRAIN_POLL_MIN;
            }
            tokio::select! {
                guard = watch.readable() => {
                    let Ok(mut guard) = guard else {
                        return RelayEnd::Error(io::Error::other("sockmap: epoll watch failed"));
                    };
                    let bits = match guard.get_inner().take() {
                        Ok(b) => b,
                        Err(e) => return RelayEnd::Error(e),
                    };
                    if bits == 0 {
                        guard.clear_ready();
                    }
                    for (i, sock) in socks.iter().enumerate() {
                        if bits & (1 << i) != 0 && !self.eof[i] {
                            if let Err(e) = self.note_end(sock, i) {
                                return RelayEnd::Error(e);
                            }
                        }
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
            self.flush(pair, counters);
        }
    }

    /// A watched socket reported: a FIN (read gives 0 bytes: this side is at EOF), or an
    /// error (returned).
    fn note_end(&mut self, mut sock: &std::net::TcpStream, i: usize) -> io::Result<()> {
        let mut b = [0u8; 1];
        match sock.read(&mut b) {
            Ok(0) => {
                self.eof[i] = true;
                self.last_event = monotonic_ns();
                Ok(())
            }
            // A byte the program let through would be lost to the relay: not expected,
            // since every byte of a paired socket is redirected.
            Ok(_) => Err(io::Error::other("sockmap: a byte reached userspace")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            // This socket's write half was shut by us (the other side's FIN passed on): a
            // late write to it by the program is refused with EPIPE, reported once. Every
            // byte it counted had been written before the shutdown, so nothing is lost.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe && self.shut[1 - i] => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether every byte side `i` sent has been written to the other socket.
    fn drained(
        &self,
        pair: &Pair<'_>,
        socks: [&std::net::TcpStream; 2],
        i: usize,
    ) -> io::Result<bool> {
        let counted = pair.side(i)?.bytes;
        let written = sent_mark(socks[1 - i].as_raw_fd())?.wrapping_sub(self.base[i]);
        Ok(written >= counted)
    }

    /// Adds the bytes counted since the last flush to the service's counters.
    fn flush(&mut self, pair: &Pair<'_>, counters: &ServiceStats) {
        for (i, c) in [&counters.bytes_in, &counters.bytes_out]
            .into_iter()
            .enumerate()
        {
            if let Ok(s) = pair.side(i) {
                if s.bytes > self.flushed[i] {
                    c.fetch_add(s.bytes - self.flushed[i], Ordering::Relaxed);
                    self.flushed[i] = s.bytes;
                }
            }
        }
    }
}
