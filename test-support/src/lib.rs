//! Dev-only helpers shared by every test crate of the workspace. Nothing here is built into a
//! shipped binary.
//!
//! - [`paths`]: where the golden fixtures (`tests/golden`, copies of `shared/golden`, produced
//!   by the official code) and the small test inputs (`tests/fixtures`) are, on a checkout or in
//!   a carried GPU kit.

pub mod paths;

pub use paths::{fixture, golden_dir, test_data_root};
