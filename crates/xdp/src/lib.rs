//! Fulcrum's XDP packet data plane (`forward = "dsr" | "tunnel" | "nat"`).
//!
//! - `bpf/`: the programs in C (`xdp_lb.c`: the load balancer, `decap.c`: the backend side),
//!   compiled by `build.rs` with clang when present, else the committed `bpf/obj/*.o`.
//! - [`maps`]: the map keys and values as `#[repr(C)]` types (checked against the C header).
//! - [`XdpPlane`]: loads and attaches the load balancer and keeps its maps equal to a list
//!   of [`XdpService`]s (the controller's view): Maglev tables from `fulcrum-core`, written
//!   into an inactive slot and then switched to by one map update.
//! - [`Decap`]: `fulcrum decap`.
//! - [`testrun`]: `BPF_PROG_TEST_RUN`, for tests and benchmarks.
//!
//! See `docs/xdp.md` for the design, the backend setup and the limits.

pub mod host;
mod link;
pub mod maps;
pub mod metrics;
pub mod natsync;
pub mod neigh;
pub mod plane;
pub mod sockmap;
#[doc(hidden)]
pub mod testing;
pub mod testrun;

pub use plane::{
    resolve_neighbour, Decap, Handover, LoadOptions, Mode, NatSweep, NatTimeouts, PassProgram,
    XdpError, XdpPlane, XdpService, DEFAULT_GUE_PORT,
};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns` and
/// `bpf_ktime_get_coarse_ns`, so times the programs store compare with it.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The load balancer object (`bpf/xdp_lb.c`).
pub static XDP_LB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_lb.o"));
/// The load balancer object with its flow-state maps pinned by name (`-DFX_PIN_STATE`):
/// loaded by a new process that takes the running one's maps over (binary upgrade).
pub static XDP_LB_STATE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_lb_state.o"));
/// The decap object (`bpf/decap.c`).
pub static DECAP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap.o"));
/// The in-kernel TCP relay (`bpf/sockmap.c`).
pub static SOCKMAP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockmap.o"));
