//! Rolling reboots onto a new image generation (issue 6). `plan` is the
//! pure planning step; the executor, the store and the commands build on it.

pub mod cli;
pub mod engine;
pub mod plan;
pub mod record;
