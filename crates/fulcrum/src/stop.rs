//! What the subcommands that run until stopped (`cluster`, `controller`, `decap`,
//! `register`) share: a current-thread runtime, the wait for SIGTERM or SIGINT, and how they
//! report a bad argument.

use std::future::Future;

use anyhow::Context as _;
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, SignalKind};

/// A current-thread runtime with IO and timers.
pub fn runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

/// Resolves at the first SIGTERM or SIGINT (the handlers are installed at once, so call it
/// inside the runtime before starting the work it stops).
pub fn signalled() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// The value of `r`; or, after printing its error as `fulcrum COMMAND: MESSAGE` on stderr,
/// `None` (the caller exits with the code of a bad argument).
pub fn reported<T>(command: &str, r: Result<T, String>) -> Option<T> {
    r.map_err(|msg| eprintln!("fulcrum {command}: {msg}")).ok()
}
