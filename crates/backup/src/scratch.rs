//! `verify --restore`: restore a dump into a scratch embedded cluster in a temp directory, run
//! the isolation check and compare row counts with the manifest, then remove the cluster.

use std::os::unix::fs::PermissionsExt;

use indicatif::ProgressBar;
use orgbase_core::config::EmbeddedConfig;
use orgbase_db::{BinSearch, Cluster, Target};

use crate::dump::{DATABASE_PRIVILEGES, PREPARE_ROLES, RestoreTarget, compare_row_counts};
use crate::{BackupError, Backups, Manifest};

/// What a scratch restore found.
#[derive(Debug)]
pub struct ScratchReport {
    pub tables: usize,
    pub rows: i64,
    /// Findings of `orgbase check` on the restored database (empty when clean).
    pub findings: Vec<String>,
}

impl Backups {
    /// Restore `manifest` into a new scratch cluster and check it.
    pub async fn verify_restore(
        &self,
        manifest: &Manifest,
        embedded: &EmbeddedConfig,
        pb: ProgressBar,
    ) -> Result<ScratchReport, BackupError> {
        let dir = std::env::temp_dir().join(format!("orgbase-verify-{}", manifest.id));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
            .map_err(BackupError::io(format!("creating {}", dir.display())))?;
        let result = self.scratch_restore(manifest, embedded, &dir, pb).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn scratch_restore(
        &self,
        manifest: &Manifest,
        embedded: &EmbeddedConfig,
        dir: &std::path::Path,
        pb: ProgressBar,
    ) -> Result<ScratchReport, BackupError> {
        let config = orgbase_core::Config {
            data_dir: dir.to_path_buf(),
            embedded: EmbeddedConfig {
                tcp_address: None,
                ..embedded.clone()
            },
            ..Default::default()
        };
        let c = config.clone();
        let running = tokio::task::spawn_blocking(move || {
            let search = BinSearch::system(c.embedded.bin_dir.clone());
            let mut cluster = Cluster::open(&c.data_dir, &c.embedded, &search)?;
            cluster.set_ephemeral();
            cluster.start()
        })
        .await
        .map_err(|e| BackupError::Invalid(format!("scratch cluster task: {e}")))??;
        let result = async {
            let target = Target::embedded(&running, &config)?;
            target.ensure_database().await?;
            let admin = target.admin().await?;
            admin.batch_execute(PREPARE_ROLES).await?;
            self.restore_dump(
                manifest,
                &RestoreTarget::from_config(target.admin_config()),
                pb,
            )
            .await?;
            admin.batch_execute(DATABASE_PRIVILEGES).await?;
            let findings = orgbase_db::check(&admin)
                .await?
                .iter()
                .map(ToString::to_string)
                .collect();
            compare_row_counts(&admin, manifest).await?;
            Ok::<_, BackupError>(ScratchReport {
                tables: manifest.row_counts.len(),
                rows: manifest.row_counts.values().sum(),
                findings,
            })
        }
        .await;
        tokio::task::spawn_blocking(move || running.stop())
            .await
            .map_err(|e| BackupError::Invalid(format!("scratch cluster task: {e}")))??;
        result
    }
}
