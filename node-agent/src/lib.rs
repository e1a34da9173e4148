//! dfleet's node agent as a library: everything the agent reads from the machine, and the daemon
//! that reports it to the coordinator.
//!
//! Layers, from the bottom: [`os`] is the only seam to the operating system; [`parse`] holds pure
//! parsers for kernel and image files; [`facts`] collects each part of a report through the seam;
//! [`probe`] is the only code that touches the shared lower layer, so a hung NFS server cannot
//! freeze the report path; [`readiness`] turns facts into named checks; [`collect`] ties them
//! into one [`dfleet_proto::domain::Report`]. [`link`] dials and enrolls, [`daemon`] holds the
//! stream to the coordinator, [`config`] reads the agent's settings. [`sandbox`] lays out directories that look like
//! diskless nodes, for tests and the demo fleet.

pub mod collect;
pub mod config;
pub mod daemon;
pub mod exec;
pub mod facts;
pub mod link;
pub mod os;
pub mod parse;
pub mod probe;
pub mod readiness;
pub mod sandbox;
pub mod sshkeys;
