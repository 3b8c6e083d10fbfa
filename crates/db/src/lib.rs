//! The PostgreSQL side of orgbase: the embedded cluster manager, connections and the request
//! pool, and the migration runner with its embedded SQL files.

pub mod cluster;
pub mod database;
pub mod migrate;
pub mod secrets;

pub use cluster::{BinSearch, Cluster, ClusterError, RunningCluster};
pub use database::{DbError, Target};
pub use deadpool_postgres::Pool;
pub use migrate::{Drift, Migrator};
