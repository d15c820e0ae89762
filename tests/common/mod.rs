//! What the integration tests and the benches share: the server in this process
//! (`server`), the real binary in a child process (`process`), clients
//! (`client`), records and generated datasets (`records`) and figures over
//! samples (`stats`).
//!
//! A test file includes it with `mod common;`, a bench with
//! `#[path = "../tests/common/mod.rs"] mod common;`; each uses a part of it.
#![allow(dead_code)]

pub mod client;
pub mod process;
pub mod records;
pub mod server;
pub mod stats;

/// The value of environment variable `name`, or `default` when it is unset or
/// does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
