//! The results of verifying backups, kept in the store next to them (`checks/<backup id>/…`):
//! each `orgbase backup verify` (checksum, decryption, `pg_restore --list`) and each restore
//! drill (`--restore`: restored into a scratch cluster and checked) leaves one record, passed or
//! failed, so that the last verification and the last drill can be shown with their results.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BackupError, Store};

/// One verification of one backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    pub backup_id: String,
    /// `verify` or `restore` (the restore drill).
    pub kind: String,
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// What was checked, or what failed.
    pub detail: String,
    pub duration_ms: u64,
}

/// Where the checks of `backup_id` are.
pub fn prefix(backup_id: &str) -> String {
    format!("checks/{backup_id}")
}

impl Check {
    fn path(&self) -> String {
        format!(
            "{}/{}-{}.json",
            prefix(&self.backup_id),
            self.at.format("%Y%m%dT%H%M%S%.3fZ"),
            self.kind
        )
    }

    pub async fn save(&self, store: &Store) -> Result<(), BackupError> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| BackupError::Invalid(format!("check record: {e}")))?;
        store.put_bytes(&self.path(), text).await
    }

    /// Every check in the store, oldest first. Unreadable records are reported and skipped.
    pub async fn list(store: &Store) -> Result<Vec<Check>, BackupError> {
        let mut out = Vec::new();
        for e in store.list("checks").await? {
            if !e.name.ends_with(".json") {
                continue;
            }
            if let Some(b) = store.get_bytes(&e.name).await? {
                match serde_json::from_slice::<Check>(&b) {
                    Ok(c) => out.push(c),
                    Err(err) => {
                        tracing::warn!(object = %e.name, error = %err, "unreadable backup check record")
                    }
                }
            }
        }
        out.sort_by_key(|c| c.at);
        Ok(out)
    }

    /// The newest check of `kind` among `checks` (as [`Check::list`] gives them).
    pub fn last<'a>(checks: &'a [Check], kind: &str) -> Option<&'a Check> {
        checks.iter().rev().find(|c| c.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn checks_are_kept_and_listed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let newer = Check {
            backup_id: "b1".into(),
            kind: "restore".into(),
            at: at("2026-12-02T10:00:00Z"),
            ok: false,
            detail: "row counts differ".into(),
            duration_ms: 900,
        };
        let older = Check {
            kind: "verify".into(),
            at: at("2026-12-01T10:00:00Z"),
            ok: true,
            ..newer.clone()
        };
        newer.save(&store).await.unwrap();
        older.save(&store).await.unwrap();
        let all = Check::list(&store).await.unwrap();
        assert_eq!(all, vec![older.clone(), newer.clone()]);
        assert_eq!(Check::last(&all, "restore"), Some(&newer));
        assert_eq!(Check::last(&all, "verify"), Some(&older));
        assert_eq!(Check::last(&all, "other"), None);
    }
}
