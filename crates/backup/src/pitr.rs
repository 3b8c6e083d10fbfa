//! Point-in-time recovery for the embedded cluster: WAL segments archived by `archive_command`
//! (encrypted like backups, `wal/<name>.obk`), base backups (`pg_basebackup` tar), and
//! rebuilding PGDATA from a base backup plus `restore_command` up to a target time.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;

use crate::manifest::{Kind, Manifest};
use crate::pipe::{self, Sink, Source};
use crate::{BackupError, Backups, new_id};

/// Quote a value for postgresql.conf.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quote a word for the shell PostgreSQL runs archive/restore commands with.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn wal_object(name: &str) -> Result<String, BackupError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '.' || c.is_ascii_alphabetic());
    if !ok || name.contains("..") {
        return Err(BackupError::Invalid(format!(
            "`{name}` is not a WAL file name"
        )));
    }
    Ok(format!("wal/{name}.obk"))
}

impl Backups {
    /// `archive_command`: encrypt the WAL file at `path` into the store as `name`.
    pub async fn archive_wal(&self, path: &Path, name: &str) -> Result<(), BackupError> {
        let object = wal_object(name)?;
        if self.store.exists(&object).await? {
            // Archived before (PostgreSQL retries after a crash between archiving and noting it).
            tracing::info!(%name, "WAL file already archived");
            return Ok(());
        }
        let ring = self.encrypting_keys()?;
        let file = std::fs::File::open(path).map_err(BackupError::io(format!(
            "opening WAL file {}",
            path.display()
        )))?;
        let (upload, task) = self.store.writer(&object).await?;
        let (level, oid) = (self.zstd_level, name.to_string());
        let result = tokio::task::spawn_blocking(move || {
            let key = ring.current()?;
            let mut sink = Sink::new(upload, &oid, key, level, 1)
                .map_err(BackupError::io("encrypting WAL"))?;
            let mut file = file;
            let n =
                std::io::copy(&mut file, &mut sink).map_err(BackupError::io("encrypting WAL"))?;
            sink.finish(n).map_err(BackupError::io("encrypting WAL"))
        })
        .await
        .map_err(|e| BackupError::Invalid(format!("archive task: {e}")))?;
        if let Err(e) = result {
            task.abort();
            return Err(e);
        }
        task.await
            .map_err(|e| BackupError::Invalid(format!("upload task: {e}")))??;
        Ok(())
    }

    /// `restore_command`: write WAL file `name` to `dest`; `false` when the archive lacks it.
    pub async fn fetch_wal(&self, name: &str, dest: &Path) -> Result<bool, BackupError> {
        let object = wal_object(name)?;
        if !self.store.exists(&object).await? {
            return Ok(false);
        }
        let ring = self.decrypting_keys()?;
        let download = self.store.reader(&object).await?;
        let tmp = dest.with_extension("orgbase-tmp");
        let (dest, obj) = (
            dest.to_path_buf(),
            format!("{}/{object}", self.store.location()),
        );
        tokio::task::spawn_blocking(move || {
            let mut source =
                Source::new(download, &ring).map_err(|e| pipe::object_error(&obj, e))?;
            let mut out = std::fs::File::create(&tmp)
                .map_err(BackupError::io(format!("creating {}", tmp.display())))?;
            std::io::copy(&mut source, &mut out).map_err(|e| pipe::object_error(&obj, e))?;
            source.finish().map_err(|e| pipe::object_error(&obj, e))?;
            out.sync_all()
                .map_err(BackupError::io(format!("writing {}", tmp.display())))?;
            std::fs::rename(&tmp, &dest)
                .map_err(BackupError::io(format!("renaming to {}", dest.display())))
        })
        .await
        .map_err(|e| BackupError::Invalid(format!("fetch task: {e}")))??;
        Ok(true)
    }

    /// A base backup of the cluster `admin` reaches (a superuser with replication).
    pub async fn base_backup(
        &self,
        admin: &tokio_postgres::Config,
        tier: &str,
        pb: ProgressBar,
    ) -> Result<Manifest, BackupError> {
        let started_at = Utc::now();
        let t0 = Instant::now();
        let id = new_id(started_at);
        let ring = self.encrypting_keys()?;
        let (client, conn) = admin.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let wal_start: String = client
            .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
            .await?
            .get(0);
        let postgres_version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        let object = format!("base/{id}/base.tar.obk");
        let (upload, task) = self.store.writer(&object).await?;
        let mut cmd = Command::new(self.bin_dir.join("pg_basebackup"));
        cmd.envs(orgbase_db::database::libpq_env(admin))
            .env_remove("PGDATABASE")
            .args([
                "-D",
                "-",
                "-F",
                "t",
                "-X",
                "fetch",
                "--checkpoint=fast",
                "--no-password",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (key_id, key_version) = {
            let k = ring.current()?;
            (k.id.clone(), k.version)
        };
        let (level, threads, oid, obj) = (
            self.zstd_level,
            self.zstd_threads,
            id.clone(),
            object.clone(),
        );
        let stats = tokio::task::spawn_blocking(move || {
            pipe::command_to_object(
                "pg_basebackup",
                cmd,
                upload,
                &oid,
                &obj,
                ring.current()?,
                (level, threads),
                &pb,
            )
        })
        .await
        .map_err(|e| BackupError::Invalid(format!("base backup task: {e}")))?;
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                task.abort();
                let _ = self.store.delete(&object).await;
                return Err(e);
            }
        };
        task.await
            .map_err(|e| BackupError::Invalid(format!("upload task: {e}")))??;
        // Make the WAL up to the end of the backup archivable now rather than at archive_timeout.
        let _ = client.batch_execute("SELECT pg_switch_wal()").await;
        let manifest = Manifest {
            manifest_version: 1,
            id,
            kind: Kind::Base,
            tier: tier.to_string(),
            started_at,
            finished_at: Utc::now(),
            duration_ms: t0.elapsed().as_millis() as u64,
            raw_bytes: stats.raw_bytes,
            compressed_bytes: stats.compressed_bytes,
            stored_bytes: stats.stored_bytes,
            sha256: stats.sha256,
            object,
            key_id,
            key_version,
            schema_version: None,
            orgbase_version: orgbase_core::VERSION.to_string(),
            postgres_version,
            database: String::new(),
            row_counts: Default::default(),
            wal_start: Some(wal_start),
        };
        manifest.save(&self.store).await?;
        Ok(manifest)
    }

    /// The newest base backup finished before `to`.
    pub async fn base_before(&self, to: DateTime<Utc>) -> Result<Manifest, BackupError> {
        let all = Manifest::list(&self.store, Kind::Base).await?;
        all.into_iter()
            .rev()
            .find(|m| m.finished_at <= to)
            .ok_or_else(|| {
                BackupError::NotFound(format!(
                    "no base backup in {} finished before {to}: point-in-time recovery needs one \
                     (`orgbase pitr base-backup`, or `serve` with backup.pitr = true takes them)",
                    self.store.location()
                ))
            })
    }

    /// Unpack a base backup into the empty directory `pgdata` (with `tar`).
    pub async fn unpack_base(
        &self,
        manifest: &Manifest,
        pgdata: &Path,
        pb: ProgressBar,
    ) -> Result<(), BackupError> {
        let mut cmd = Command::new("tar");
        cmd.arg("-x")
            .arg("-C")
            .arg(pgdata)
            .arg("-f")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let obj = manifest.object.clone();
        self.read_object(manifest, pb, move |source, pb| {
            let mut child = cmd.spawn().map_err(BackupError::io("starting tar"))?;
            let stderr = pipe::collect_stderr(child.stderr.take());
            let copied = match child.stdin.take() {
                Some(mut stdin) => {
                    let r = pipe::copy(source, &mut stdin, pb).and_then(|_| stdin.flush());
                    drop(stdin);
                    r
                }
                None => Ok(()),
            };
            if let Err(e) = copied {
                pipe::kill(child);
                return Err(pipe::object_error(&obj, e));
            }
            pipe::wait("tar -x", child, stderr)
        })
        .await
    }
}
