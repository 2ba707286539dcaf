//! When an idle HTTP/1.1 connection is parked or closed: what its task
//! ([`crate::server`]) and the parking lot ([`crate::park`]) both follow.

use std::time::Duration;

use crate::ConnCtx;

/// How long a keep-alive connection idles in its task before it is parked.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// Once the process drains, how long an idle HTTP/1.1 keep-alive connection is kept open
/// for its next request, which is answered with `Connection: close`, before it is closed.
/// Closing it at once races with a request the client is sending on it: a request sent as
/// the connection closes fails (a reset, or the connection closed without an answer). A
/// client under load sends its next request well within this; one that idles through it is
/// closed as by `idle_timeout`. (HAProxy's `idle-close-on-response`.) Connections parked
/// (idle for [`PARK_AFTER`]) get the same grace in the lot.
pub(crate) const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long a connection may idle, counted from its last request, or from its accept
/// (`first`: no request yet) for the service's `idle_timeout` or `request_header`,
/// whichever is shorter: a client that opens a connection and sends nothing (a browser's
/// preconnect, a slow client) is closed, silently, when that time is over.
pub(crate) fn idle_limit(ctx: &ConnCtx, first: bool) -> Duration {
    if first {
        ctx.svc.idle_timeout.min(ctx.ext.tuning.header_timeout)
    } else {
        ctx.svc.idle_timeout
    }
}
