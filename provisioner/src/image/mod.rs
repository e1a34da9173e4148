//! Image generations of the shared root: copies that keep every attribute,
//! content manifests, the sandbox that runs commands inside an open
//! generation, and dfleet's dracut module.

pub mod chroot;
pub mod distro;
pub mod dracut;
pub mod hygiene;
pub mod manifest;
pub mod store;
pub mod tree;
pub mod units;
