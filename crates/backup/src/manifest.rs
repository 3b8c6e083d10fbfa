//! The manifest stored next to each backup: what it is, how big, how long it took, its
//! checksum, which key and schema version, and per-table row counts for restore checks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BackupError, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A logical dump (`pg_dump -Fc`).
    Dump,
    /// A physical base backup (`pg_basebackup`, tar) for point-in-time recovery.
    Base,
}

/// `dump` or `base`, as the manifest and the metrics' labels spell it.
impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Kind::Dump => "dump",
            Kind::Base => "base",
        })
    }
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Dump => "dumps",
            Kind::Base => "base",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub id: String,
    pub kind: Kind,
    /// The schedule tier (`6h`, `1d`, `7d`) or `manual`.
    pub tier: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Bytes produced by pg_dump / pg_basebackup.
    pub raw_bytes: u64,
    /// After zstd.
    pub compressed_bytes: u64,
    /// The stored (encrypted) object.
    pub stored_bytes: u64,
    pub sha256: String,
    pub object: String,
    pub key_id: String,
    pub key_version: u32,
    pub schema_version: Option<i64>,
    pub orgbase_version: String,
    pub postgres_version: String,
    pub database: String,
    /// Rows per table, counted in the same snapshot as the dump (dumps only).
    #[serde(default)]
    pub row_counts: BTreeMap<String, i64>,
    /// Base backups: the first WAL segment recovery needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_start: Option<String>,
}

impl Manifest {
    pub fn path(kind: Kind, id: &str) -> String {
        format!("{}/{id}/manifest.json", kind.prefix())
    }

    pub async fn save(&self, store: &Store) -> Result<(), BackupError> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| BackupError::Invalid(format!("manifest: {e}")))?;
        store
            .put_bytes(&Self::path(self.kind, &self.id), text)
            .await
    }

    pub async fn load(store: &Store, kind: Kind, id: &str) -> Result<Self, BackupError> {
        let path = Self::path(kind, id);
        let bytes = store.get_bytes(&path).await?.ok_or_else(|| {
            BackupError::NotFound(format!(
                "no backup `{id}` in {} (`orgbase backup list` shows them)",
                store.location()
            ))
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            BackupError::Invalid(format!(
                "{}/{path}: not a valid manifest: {e}",
                store.location()
            ))
        })
    }

    /// Every backup of `kind` with a manifest (completed), oldest first. Unreadable manifests
    /// are reported and skipped.
    pub async fn list(store: &Store, kind: Kind) -> Result<Vec<Self>, BackupError> {
        let mut out = Vec::new();
        for e in store.list(kind.prefix()).await? {
            if !e.name.ends_with("/manifest.json") {
                continue;
            }
            match store.get_bytes(&e.name).await? {
                Some(b) => match serde_json::from_slice::<Self>(&b) {
                    Ok(m) => out.push(m),
                    Err(err) => {
                        tracing::warn!(object = %e.name, error = %err, "unreadable backup manifest")
                    }
                },
                None => continue,
            }
        }
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}
