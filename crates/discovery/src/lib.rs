//! The `discovery` command line and the all-in-one launcher.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod rules;
pub mod up;
pub mod variables;

#[cfg(test)]
mod layout;
