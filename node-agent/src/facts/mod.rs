//! Collectors: each reads one part of a report through [`crate::os::HostRoot`] and the pure
//! parsers in [`crate::parse`].
//!
//! Architecture invariant: only [`hostkeys`] and the generation stamp read through the shared
//! lower layer, and only the lower probe ([`crate::probe`]) calls them.

pub mod hostkeys;
pub mod identity;
pub mod memory;
pub mod overlay;
pub mod walk;
