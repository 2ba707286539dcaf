//! hyper's executor on the worker: the HTTP/2 server ([`crate::h2`]) and the HTTP/2
//! client connections to backends ([`crate::upstream`]) both spawn their tasks through it.

use std::future::Future;

/// Spawns hyper's HTTP/2 tasks (server streams, client connections) on the worker's
/// `LocalSet`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
