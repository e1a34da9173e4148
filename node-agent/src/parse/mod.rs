//! Pure parsers for the text the kernel and the image give the agent.
//!
//! Each module has a `parse(&str)` function with no I/O, tested on fixture text captured from real
//! machines (`tests/fixtures/`), so the collectors that read the files stay thin.

pub mod cmdline;
pub mod fib_trie;
pub mod hostkey;
pub mod meminfo;
pub mod mountinfo;
pub mod stamp;
pub mod uptime;
