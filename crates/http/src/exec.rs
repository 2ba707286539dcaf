//! hyper's executor on the worker: the HTTP/2 client connections to backends
//! ([`crate::upstream`]) spawn their tasks through it. (The HTTP/2 server, [`crate::h2`], is
//! the `h2` crate's, its streams polled in the connection's task.)

use std::future::Future;

/// Spawns hyper's HTTP/2 client tasks (connections, their streams' bodies) on the worker's
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
