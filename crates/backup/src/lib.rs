//! Encrypted, verified backups and point-in-time recovery for the embedded cluster: logical
//! dumps and base backups stream through zstd and AES-256-GCM segments into a store, with a
//! JSON manifest per backup; WAL segments are archived the same way.

pub mod checks;
pub mod dump;
pub mod format;
pub mod keys;
pub mod manifest;
pub mod metrics;
pub mod pipe;
pub mod pitr;
pub mod prune;
pub mod scratch;
pub mod service;
pub mod store;

use std::path::PathBuf;
use std::time::Duration;

pub use keys::{KeyRing, KeySource};
pub use manifest::{Kind, Manifest};
pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("backup store {0}")]
    Store(String),
    #[error("backup key: {0}")]
    Key(String),
    #[error("cryptography: {0}")]
    Crypto(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error(transparent)]
    Db(#[from] orgbase_db::DbError),
    #[error(transparent)]
    Cluster(#[from] orgbase_db::ClusterError),
    #[error("PostgreSQL: {0}")]
    Pg(#[from] tokio_postgres::Error),
}

impl BackupError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// What every backup operation needs: the store, the keys, the PostgreSQL client binaries and
/// the compression settings.
#[derive(Debug, Clone)]
pub struct Backups {
    pub store: Store,
    pub keys: KeySource,
    /// Directory holding pg_dump, pg_restore, pg_basebackup (and initdb for scratch clusters).
    pub bin_dir: PathBuf,
    pub zstd_level: i32,
    pub zstd_threads: u32,
    pub key_max_age: Duration,
}

impl Backups {
    /// From the configuration: the store (default `<data_dir>/backups`) and keys.
    pub fn from_config(
        config: &orgbase_core::Config,
        bin_dir: PathBuf,
    ) -> Result<Self, BackupError> {
        let location = match &config.backup.store {
            Some(s) if !s.is_empty() => s.clone(),
            _ => config.data_dir.join("backups").display().to_string(),
        };
        Ok(Self {
            store: Store::open_with(&location, &config.backup.s3)?,
            keys: KeyRing::source(config)?,
            bin_dir,
            zstd_level: config.backup.zstd_level,
            zstd_threads: if config.backup.zstd_threads == 0 {
                std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1)
            } else {
                config.backup.zstd_threads
            },
            key_max_age: Duration::from_secs(u64::from(config.backup.key_max_age_days) * 86_400),
        })
    }

    /// The keys for encrypting: made on first use, rotated when the current one is too old.
    pub fn encrypting_keys(&self) -> Result<KeyRing, BackupError> {
        let mut ring = KeyRing::load(self.keys.clone(), true)?;
        ring.rotate_if_older(self.key_max_age)?;
        Ok(ring)
    }

    /// The keys for decrypting.
    pub fn decrypting_keys(&self) -> Result<KeyRing, BackupError> {
        KeyRing::load(self.keys.clone(), false)
    }
}

/// A sortable, readable backup id: `20261123T183000Z-1a2b3c`.
pub fn new_id(at: chrono::DateTime<chrono::Utc>) -> String {
    let mut r = [0u8; 3];
    let _ = aws_lc_rs::rand::fill(&mut r);
    format!("{}-{}", at.format("%Y%m%dT%H%M%SZ"), hex::encode(r))
}
