//! dfleet's management-host library: the cluster inventory and the pieces that read it.
//!
//! Boot-file rendering and image generations will live here too (see DESIGN.md); for now the crate
//! holds the inventory (`cluster.toml`) parser and validator, and the small parsers it needs.

#![forbid(unsafe_code)]

pub mod boot;
pub mod duration;
pub mod inventory;
pub mod nodeset;

pub use inventory::{
    BootSettings, CheckCommand, ClusterConfig, EnrollmentConfig, EnrollmentPolicy, HealthConfig,
    Inventory, InventoryError, NfsSettings, NodeBoot, NodeEntry, Problem, ResolvedBoot,
};
