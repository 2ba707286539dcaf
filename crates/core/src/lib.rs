//! Fulcrum's sans-IO core: the model and every decision, with no sockets, threads or clock.
//!
//! - [`model`]: services, pools, backends and their states.
//! - [`hash`]: the documented flow hash (Linux `jhash`), shared bit for bit with the BPF programs.
//! - [`sched`]: every scheduler of the contract behind one trait, Maglev and ring hash included.
//! - [`choice`]: the one backend choice of a new flow or request (sticky cookie, persistence,
//!   scheduler), for the L4 data path, the HTTP proxy and `explain` alike.
//! - [`flow`]: the bounded LRU flow table (flow affinity, persistence).
//! - [`health`]: active (rise/fall) and passive (outlier) health state machines.
//! - [`retry`]: HTTP retries and passive ejection: which failures retry, attempts, budget.
//! - [`config`]: TOML parsing into types that cannot hold a bad value, with located errors.
//! - [`announce`]: whether a VIP is announced to the routers, and the speakers' line formats.
//! - [`cluster`]: the fleet control plane in etcd: shared vs local, merging, revisions.
//! - [`registry`]: backends that register themselves in etcd: keys, values, refusals.
//! - [`rules`]: http request and response rules (redirects, headers, rewrites, access lists,
//!   basic auth, compression, error pages) and their order.
//! - [`dns`]: the authoritative answers of `protocol = "dns"` services (hickory-proto wire format).
//! - [`fleet_health`]: one health view for a fleet: members' verdicts and `health_quorum`.
//! - [`tls_hello`]: the server name of a TLS `ClientHello`, for passthrough routing.
//! - [`x509name`]: a certificate's subject as RFC 4514 text (client certificates).

pub mod announce;
pub mod choice;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod doh;
pub mod fleet_health;
pub mod flow;
pub mod hash;
pub mod health;
pub mod locality;
pub mod model;
pub mod registry;
pub mod retry;
pub mod rules;
pub mod sched;
pub mod tls_hello;
pub mod x509name;
