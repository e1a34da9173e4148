//! Image generations of the shared root: the store on disk, copies that keep
//! every attribute, and content manifests.

pub mod manifest;
pub mod store;
pub mod tree;
