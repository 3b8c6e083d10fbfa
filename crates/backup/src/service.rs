//! The backups of a running server, for its operators: the store's backups with their last
//! verification and restore drill, and a logical backup started on request (one at a time, in
//! the background).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::checks::Check;
use crate::metrics::BackupMetrics;
use crate::pipe::progress;
use crate::{BackupError, Backups, Kind, Manifest};

/// How a backup started on request connects as the backup role.
#[derive(Clone)]
pub enum Login {
    /// A configured connection (`backup.url`).
    Url(Box<tokio_postgres::Config>),
    /// The role's generated password under `secrets` ([`orgbase_db::Target::backup_login`]),
    /// read (or set) again for each backup, as the schedule does.
    Generated {
        target: Box<orgbase_db::Target>,
        secrets: std::path::PathBuf,
    },
}

impl std::fmt::Debug for Login {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Url(_) => f.write_str("Login::Url(..)"),
            Login::Generated { secrets, .. } => f
                .debug_struct("Login::Generated")
                .field("secrets", secrets)
                .finish_non_exhaustive(),
        }
    }
}

impl Login {
    async fn config(&self) -> Result<tokio_postgres::Config, BackupError> {
        match self {
            Login::Url(c) => Ok((**c).clone()),
            Login::Generated { target, secrets } => target
                .backup_login(secrets)
                .await
                .map_err(|e| BackupError::Invalid(format!("the backup role's login: {e}"))),
        }
    }
}

/// What `orgbase serve` hands its API for the operators' backup routes.
pub struct BackupService {
    backups: Backups,
    login: Login,
    metrics: BackupMetrics,
    /// Whether `serve` takes scheduled backups (`backup.schedule`), for the page to say.
    schedule: bool,
    /// A backup started on request is running.
    running: Arc<AtomicBool>,
}

impl std::fmt::Debug for BackupService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupService")
            .field("store", &self.backups.store.location())
            .field("running", &self.running.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl BackupService {
    pub fn new(backups: Backups, login: Login, metrics: BackupMetrics, schedule: bool) -> Self {
        Self {
            backups,
            login,
            metrics,
            schedule,
            running: Arc::default(),
        }
    }

    /// The backups in the store, newest first, each with its last verification and restore
    /// drill; the newest of each over all backups; the store and whether one is running.
    pub async fn list(&self) -> Result<Value, BackupError> {
        let store = &self.backups.store;
        let mut all = Manifest::list(store, Kind::Dump).await?;
        all.extend(Manifest::list(store, Kind::Base).await?);
        all.sort_by_key(|m| std::cmp::Reverse(m.started_at));
        let checks = Check::list(store).await?;
        let of = |id: &str, kind: &str| {
            checks
                .iter()
                .rev()
                .find(|c| c.backup_id == id && c.kind == kind)
                .cloned()
        };
        let items: Vec<Value> = all
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "kind": m.kind.to_string(),
                    "tier": m.tier,
                    "started_at": m.started_at,
                    "finished_at": m.finished_at,
                    "duration_ms": m.duration_ms,
                    "raw_bytes": m.raw_bytes,
                    "stored_bytes": m.stored_bytes,
                    "sha256": m.sha256,
                    "key": format!("{} v{}", m.key_id, m.key_version),
                    "schema_version": m.schema_version,
                    "last_verify": of(&m.id, "verify"),
                    "last_restore": of(&m.id, "restore"),
                })
            })
            .collect();
        Ok(json!({
            "items": items,
            "store": store.location(),
            "schedule": self.schedule,
            "running": self.running.load(Ordering::SeqCst),
            "last_verify": Check::last(&checks, "verify"),
            "last_restore": Check::last(&checks, "restore"),
        }))
    }

    /// Start a logical backup (tier `manual`) in the background: when it started, or why not
    /// (one started here is running).
    pub fn start(&self) -> Result<Value, String> {
        if self.running.swap(true, Ordering::SeqCst) {
            return Err("a backup started on request is running; wait for it to finish".into());
        }
        let (backups, login, metrics, running) = (
            self.backups.clone(),
            self.login.clone(),
            self.metrics.clone(),
            self.running.clone(),
        );
        let started_at = chrono::Utc::now();
        tokio::spawn(async move {
            let result = async {
                let previous = Manifest::list(&backups.store, Kind::Dump).await?.pop();
                let conn = login.config().await?;
                let m = backups
                    .create_dump(&conn, "manual", progress(None, "backup"))
                    .await?;
                metrics.success(&m, previous.as_ref());
                Ok::<_, BackupError>(m)
            }
            .await;
            match result {
                Ok(m) => {
                    tracing::info!(backup = %m.id, bytes = m.stored_bytes, "backup on request done")
                }
                Err(e) => {
                    metrics.failure("dump");
                    tracing::error!(error = %e, "backup on request failed");
                }
            }
            running.store(false, Ordering::SeqCst);
        });
        Ok(json!({ "tier": "manual", "started_at": started_at }))
    }
}
