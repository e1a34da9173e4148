//! Image generations of the shared root: copies that keep every attribute,
//! content manifests, the sandbox that runs commands inside an open
//! generation.

pub mod chroot;
pub mod manifest;
pub mod store;
pub mod tree;
