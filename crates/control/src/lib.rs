//! Fulcrum's control plane: the admin API and the metrics.
pub mod admin;
pub mod doh;
pub mod edit;
pub mod explain;
pub mod explain_dns;
pub mod metrics;
pub mod serve;
