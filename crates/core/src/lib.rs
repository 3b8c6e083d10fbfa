//! orgbase domain types and services: configuration, secrets, and (later) tenancy, identity,
//! audit, keys and privacy. No HTTP and no SQL strings live here.

pub mod config;
pub mod retention;
pub mod secret;

pub use config::{Config, ConfigError};
pub use secret::Secret;

/// The orgbase version, as compiled into the binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
