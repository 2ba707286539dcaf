//! Fulcrum's control plane: the admin API and the metrics.
pub mod admin;
pub mod metrics;
