//! dfleet's coordinator: the daemon that owns the fleet's state (enrollment
//! CA, agent streams, event log, metrics) and the admin CLI that talks to it.

pub mod argv;
pub mod audit;
pub mod backup;
pub mod boot;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod demo;
pub mod dhcp_log;
pub mod exec;
pub mod fleet;
pub mod guard;
pub mod image_gc;
pub mod images;
pub mod lab;
pub mod metrics;
pub mod neighbour;
pub mod nodesets;
pub mod pki;
pub mod power;
pub mod rollout;
pub mod server;
pub mod ssh;
pub mod store;
pub mod tls;
