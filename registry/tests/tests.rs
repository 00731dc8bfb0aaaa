//! Integration tests of `pod-registry`, built as one binary.

mod common;
mod crash;
mod file;
mod invalid;
mod memory;
mod model;
mod reference;
mod state;
