//! Shared helpers for the end-to-end tests (each test binary uses a subset).
#![allow(dead_code)]
pub mod backend;
pub mod cli;
pub mod golden;
pub mod recorder;
pub mod reference;
pub mod var_greedy;
pub mod var_variants;
