//! Where route changes come from besides a reload request: the Docker
//! engine's containers (`docker`) and the files the config reads
//! (`files`). Both only notice and report; the reload task checks and
//! swaps, so every source goes through the same validation and the same
//! atomic snapshot swap.

pub mod docker;
pub mod files;
