//! dfleet's management-host library: the cluster inventory (`cluster.toml`) and what is made
//! from it: the boot network's files (`boot`) and the image generations (`image`), with the
//! small parsers they need (node sets, durations).

#![forbid(unsafe_code)]

pub mod boot;
pub mod duration;
pub mod image;
pub mod inventory;
pub mod nodeset;
pub mod window;

pub use inventory::{
    BootSettings, CheckCommand, ClusterConfig, EnrollmentConfig, EnrollmentPolicy, HealthConfig,
    Inventory, InventoryError, NfsSettings, NodeBoot, NodeEntry, Problem, ResolvedBoot,
};
