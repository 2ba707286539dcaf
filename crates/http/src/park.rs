//! The parking lot: idle HTTP/1.1 keep-alive connections held without a task.
//!
//! A keep-alive connection that has been idle for [`PARK_AFTER`] leaves tokio: its task ends
//! (freeing the task cell and the connection's future) and its socket leaves tokio's reactor
//! (freeing the registration). The worker's lot keeps the socket, the connection's
//! [`ConnCtx`] and the time of its last request (32 bytes in a slot), with the socket
//! registered in the lot's own epoll instance, which is itself one source in tokio's reactor.
//! This is what nginx does with a keep-alive connection at rest (it frees the request's pool
//! and buffers and keeps the bare connection). In the HTTP benchmark an idle connection costs
//! about 230 bytes of RSS this way, against 1,076 while it kept its task and registration.
//!
//! - When a parked socket becomes readable (the next request, or the peer closing), it goes
//!   back to tokio and a new task serves it from where the old one stopped.
//! - A new connection that has not sent a byte yet parks the same way (a browser's
//!   preconnect, a slow client); its limit is [`crate::idle::idle_limit`] from its accept.
//! - The service's `idle_timeout` still applies, counted from the last request: a sweep once
//!   per [`PARK_AFTER`] closes the parked connections whose time is up (so it fires up to that
//!   much late; `idle_timeout`s shorter than [`PARK_AFTER`] never park).
//! - When the process starts draining, the parked connections get the drain's grace
//!   ([`crate::idle::DRAIN_IDLE_GRACE`]): one that turns readable meanwhile is unparked
//!   and its request answered with `Connection: close`; the others are closed after it.
//!
//! Parking costs four `epoll_ctl` calls and a task spawn per park/unpark cycle, paid only by
//! connections that were idle for a second; a busy connection never parks.
//!
//! The `unsafe` here is the syscall edge: registering the lot's epoll fd with tokio.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_state::snapshot::Shared;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::idle::PARK_AFTER;
use crate::ConnCtx;

/// A parked connection.
struct Parked {
    sock: std::net::TcpStream,
    ctx: Rc<ConnCtx>,
    /// When its last request ended, or when it was accepted if `first`.
    since: Instant,
    /// It has not sent a request yet (see [`crate::idle::idle_limit`]).
    first: bool,
}

/// How the lot hands an unparked connection back (its HTTP/1.1 loop, in a new task): the
/// connection, when its last request ended (or its accept) and whether it has sent none.
pub(crate) type Resume = fn(Rc<ConnCtx>, TcpStream, Instant, bool);

/// One worker's lot.
struct Lot {
    /// What an unparked connection goes back to.
    resume: Resume,
    /// A handle on the lot's epoll instance, for (de)registering parked sockets.
    registry: Registry,
    slots: RefCell<Slots>,
}

#[derive(Default)]
struct Slots {
    parked: Vec<Option<Parked>>,
    /// Indices of the empty slots.
    free: Vec<usize>,
}

impl Slots {
    fn insert(&mut self, p: Parked) -> usize {
        p.ctx.ext.metrics.parked.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = self.free.pop() {
            self.parked[i] = Some(p);
            i
        } else {
            self.parked.push(Some(p));
            self.parked.len() - 1
        }
    }

    fn take(&mut self, i: usize) -> Option<Parked> {
        let p = self.parked.get_mut(i)?.take()?;
        p.ctx.ext.metrics.parked.fetch_sub(1, Ordering::Relaxed);
        self.free.push(i);
        Some(p)
    }

    /// Removes every connection for which `expired` holds (they close when dropped).
    fn sweep(&mut self, mut expired: impl FnMut(&Parked) -> bool) -> usize {
        let mut closed = 0;
        for i in 0..self.parked.len() {
            if self.parked[i].as_ref().is_some_and(&mut expired) {
                drop(self.take(i));
                closed += 1;
            }
        }
        if self.free.len() == self.parked.len() {
            // Give the memory back after a burst of idle connections has gone.
            self.parked = Vec::new();
            self.free = Vec::new();
        }
        closed
    }
}

/// The lot's epoll instance, owned by the lot's task.
struct LotPoll(Poll);

impl AsRawFd for LotPoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers the function the worker calls after parking or unparking connections (and
/// after connections end), so the memory they freed (tasks, socket registrations) leaves the
/// process's RSS: [`fulcrum_state::memory`]. Only the first call counts.
pub use fulcrum_state::memory::set_release_free_memory;

thread_local! {
    /// This worker's lot, created by the first connection parked on it.
    static LOT: RefCell<Option<Rc<Lot>>> = const { RefCell::new(None) };
}

/// Parks an idle connection whose last request ended at `since` (or, `first`, that was
/// accepted then and has not sent a request yet); once readable it goes to `resume`. On
/// failure the connection is handed back, still in tokio.
pub(crate) fn park(
    ctx: Rc<ConnCtx>,
    sock: TcpStream,
    since: Instant,
    first: bool,
    resume: Resume,
) -> Result<(), (Rc<ConnCtx>, TcpStream)> {
    if ctx.shared.is_draining() {
        return Err((ctx, sock));
    }
    let lot = match lot(&ctx, resume) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "cannot start the parking lot");
            return Err((ctx, sock));
        }
    };
    // Leaves tokio's reactor (its registration is freed); the socket stays non-blocking.
    let sock = match sock.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot park a connection: closing it");
            return Ok(());
        }
    };
    let fd = sock.as_raw_fd();
    // Give back what parking freed once this burst of parks is over (the task ends and the
    // registration goes when the reactor next turns).
    fulcrum_state::memory::release_soon();
    let mut slots = lot.slots.borrow_mut();
    let i = slots.insert(Parked {
        sock,
        ctx,
        since,
        first,
    });
    if let Err(e) = lot
        .registry
        .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
    {
        tracing::debug!(error = %e, "cannot park a connection: closing it");
        drop(slots.take(i));
    }
    Ok(())
}

/// This worker's lot, started on first use.
fn lot(ctx: &Rc<ConnCtx>, resume: Resume) -> io::Result<Rc<Lot>> {
    LOT.with(|cell| {
        if let Some(l) = cell.borrow().as_ref() {
            return Ok(Rc::clone(l));
        }
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        // SAFETY: `LotPoll` owns the epoll fd and the `AsyncFd` owns the `LotPoll`, so the fd
        // is neither closed nor replaced while it is registered.
        let poll = unsafe {
            AsyncFd::register_with_interest(LotPoll(poll), tokio::io::Interest::READABLE)?
        };
        let l = Rc::new(Lot {
            resume,
            registry,
            slots: RefCell::new(Slots::default()),
        });
        *cell.borrow_mut() = Some(Rc::clone(&l));
        tokio::task::spawn_local(run(
            Rc::clone(&l),
            poll,
            Arc::clone(&ctx.shared),
            Rc::clone(&ctx.drain),
        ));
        Ok(l)
    })
}

/// The lot's task: unparks readable connections, sweeps expired ones, closes all once the
/// drain's grace is over.
async fn run(lot: Rc<Lot>, mut poll: AsyncFd<LotPoll>, shared: Arc<Shared>, drain: Rc<Notify>) {
    let mut events = Events::with_capacity(256);
    let mut sweep = tokio::time::interval(PARK_AFTER);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drained = false;
    // Draining: when the parked connections still idle are closed (none is parked after
    // the drain starts: `park` refuses).
    let mut close_at: Option<Instant> = None;
    loop {
        let notified = drain.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if !drained && shared.is_draining() {
            drained = true;
            close_at = Some(Instant::now() + crate::idle::DRAIN_IDLE_GRACE);
        }
        let at = close_at;
        let grace_over = async move {
            match at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = grace_over => {
                close_at = None;
                let closed = lot.slots.borrow_mut().sweep(|_| true);
                tracing::debug!(closed, "draining: closed the parked connections idle through the grace");
            }
            ready = poll.readable_mut() => {
                let Ok(mut ready) = ready else { return };
                // Cleared first: an event that arrives while the lot is read raises a new one.
                ready.clear_ready();
                loop {
                    if let Err(e) = ready.get_inner_mut().0.poll(&mut events, Some(Duration::ZERO)) {
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        tracing::warn!(error = %e, "parking lot: epoll_wait failed");
                        break;
                    }
                    for ev in &events {
                        unpark(&lot, ev.token().0);
                    }
                    if events.iter().count() < events.capacity() {
                        break;
                    }
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                lot.slots
                    .borrow_mut()
                    .sweep(|p| now >= p.since + crate::idle::idle_limit(&p.ctx, p.first));
            }
            () = &mut notified => {}
        }
    }
}

/// Moves a parked connection back into tokio and into a new task.
fn unpark(lot: &Lot, i: usize) {
    let Some(p) = lot.slots.borrow_mut().take(i) else {
        return;
    };
    let _ = lot.registry.deregister(&mut SourceFd(&p.sock.as_raw_fd()));
    match TcpStream::from_std(p.sock) {
        Ok(sock) => {
            (lot.resume)(p.ctx, sock, p.since, p.first);
            // A burst of unparks (thousands of keep-alive clients leaving at once) frees
            // their new tasks right after: give that back too.
            fulcrum_state::memory::release_soon();
        }
        Err(e) => tracing::debug!(error = %e, "cannot unpark a connection: closing it"),
    }
}
