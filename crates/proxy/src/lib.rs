//! Fulcrum's L4 data path on tokio: the workers, the TCP and UDP proxy, the relay, the PROXY
//! protocol and the DNS service's sockets. It reads the running snapshot of
//! `fulcrum_state`, which the controller there builds; it holds no control state.
//!
//! - [`worker`]: data-path threads, one `SO_REUSEPORT` socket each per service.
//! - [`accept`]: accepting exactly the connections the kernel reports queued.
//! - [`tcp`], [`udp`], [`relay`] (with [`splice`]), [`kernel_relay`] (`--relay sockmap`),
//!   [`proxy_protocol`]: the per-connection path.
//! - [`dns`]: the DNS service's UDP and TCP sockets (the answers are `fulcrum_core::dns`'s).

pub mod accept;
pub mod dns;
pub mod kernel_relay;
pub mod proxy_protocol;
pub mod relay;
pub mod splice;
pub mod tcp;
pub mod udp;
pub mod worker;
