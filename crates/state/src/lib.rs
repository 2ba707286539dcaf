//! Fulcrum's control state: the running snapshot the data paths read, and the controller
//! that turns config, health and discovery into it. The L4 data path (`fulcrum_proxy`) and
//! the L7 one (`fulcrum_http`) read this crate's snapshot; neither is a dependency of it.
//!
//! - [`snapshot`]: the immutable running state the data path reads (`arc-swap`).
//! - [`controller`]: the one owner of mutable control state; builds and swaps snapshots.
//! - [`builder`]: the controller's builder thread (builds, parses, checks, frees).
//! - [`sched`]: the builder thread's CPU priority (idle, raised when a build waits).
//! - [`plan`]: a reload as a pure plan (bind, unbind, spawn, abort, keep), no IO.
//! - [`worker`]: the data-path workers as the controller sees them (sockets it binds, the
//!   commands it sends); the workers themselves are `fulcrum_proxy::worker`.
//! - [`health`]: active checks (tcp, http).
//! - [`discovery`]: backends from DNS (A/AAAA, SRV), files and etcd, per pool.
//! - [`announce`]: VIP announcement state (what to announce, the instance drain flag).
//! - [`l7`]: the extension point an L7 proxy plugs into ([`l7::L7Handler`]) and the HTTP
//!   metric types it reports through it.
//! - [`stats`]: the atomic counters behind the metrics.
//!
//! What both data paths share: [`connlog`], [`jsonlog`] and [`logsink`] (connection and access
//! logs),
//! [`files`] (opening configured files without blocking), [`ratelog`] (warnings at most once
//! a second), [`memory`] (giving freed memory back after bursts).

pub mod announce;
pub mod builder;
pub mod connlog;
pub mod controller;
pub mod discovery;
pub mod dns;
pub mod files;
pub mod health;
pub mod jsonlog;
pub mod l7;
pub mod logsink;
pub mod memory;
pub mod plan;
pub mod ratelog;
pub mod sched;
pub mod snapshot;
pub mod stats;
pub mod udp_handover;
pub mod worker;
