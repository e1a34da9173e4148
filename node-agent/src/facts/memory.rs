//! Memory numbers from `/proc/meminfo`.

use dfleet_proto::domain::MemoryFacts;

use crate::os::HostRoot;
use crate::parse::meminfo;

pub const MEMINFO: &str = "/proc/meminfo";

/// MemTotal, MemAvailable and Shmem in bytes, or why they could not be read.
pub fn collect(root: &HostRoot) -> Result<MemoryFacts, String> {
    let text = root.read_to_string(MEMINFO).map_err(|e| e.to_string())?;
    meminfo::parse(&text).map_err(|e| e.to_string())
}
