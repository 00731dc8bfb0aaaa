//! Integration tests of `pod-registry`, built as one binary.

mod caps;
mod common;
mod crash;
mod file;
mod invalid;
mod memory;
mod model;
mod owner;
mod reference;
mod security;
mod state;
