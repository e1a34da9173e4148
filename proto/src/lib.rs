//! The gRPC contract between the dfleet coordinator, its agents and its CLI, and
//! the domain types the rest of the code speaks in.
//!
//! Generated protobuf types live in [`pb`] and are converted to and from the
//! domain types of [`domain`] in one place, [`convert`]. Nothing outside the
//! RPC edges should touch [`pb`].

pub mod codec;
pub mod convert;
pub mod domain;

/// Generated protobuf and tonic code for `dfleet.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("dfleet.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for the wire
/// compatibility test and for reflection.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/dfleet_descriptor.bin"));

/// The revision of the agent stream protocol this build speaks.
pub const PROTOCOL_REVISION: u32 = 1;
