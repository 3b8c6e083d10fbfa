//! The PostgreSQL side of orgbase: the embedded cluster manager, connections and the request
//! pool, and the migration runner with its embedded SQL files.

pub mod account;
pub mod analytics;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod check;
pub mod cluster;
pub mod database;
pub mod fields;
pub mod gdpr;
pub mod json;
pub mod migrate;
pub mod observe;
pub mod pool;
pub mod records;
pub mod request;
pub mod retention;
pub mod secrets;
pub mod slo;

pub use check::{Finding, check};
pub use cluster::{BinSearch, Cluster, ClusterError, RunningCluster};
pub use database::{DbError, Target};
pub use migrate::{Drift, Migrator};
pub use pool::Pool;
pub use request::{Caller, Context, ReqError};
