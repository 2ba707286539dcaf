//! Fulcrum's userspace data path: the L4 TCP and UDP proxy on tokio, the health checkers'
//! IO, and the controller that turns config and health into the running snapshot.
//!
//! - [`snapshot`]: the immutable running state the data path reads (`arc-swap`).
//! - [`controller`]: the one owner of mutable control state; builds and swaps snapshots.
//! - [`plan`]: a reload as a pure plan (bind, unbind, spawn, abort, keep), no IO.
//! - [`worker`]: data-path threads, one `SO_REUSEPORT` socket each per service.
//! - [`tcp`], [`udp`], [`relay`], [`proxy_protocol`]: the per-connection path.
//! - [`health`]: active checks (tcp, http).
//! - [`discovery`]: backends from DNS (A/AAAA, SRV) and files, per pool.
//! - [`stats`]: the atomic counters behind the metrics.
//! - [`files`]: opening configured files without blocking (regular files only).
//! - [`ratelog`]: warnings written at most once a second.
//! - [`announce`]: VIP announcement state (what to announce, the instance drain flag).

pub mod accept;
pub mod announce;
pub mod connlog;
pub mod controller;
pub mod discovery;
pub mod dns;
pub mod files;
pub mod health;
pub mod l7;
pub mod logsink;
pub mod memory;
pub mod plan;
pub mod proxy_protocol;
pub mod ratelog;
pub mod relay;
pub mod snapshot;
pub mod splice;
pub mod stats;
pub mod tcp;
pub mod udp;
pub mod worker;
