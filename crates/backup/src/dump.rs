//! Logical backups: `pg_dump -Fc` run as the backup role in an exported snapshot (so the row
//! counts in the manifest match the dump exactly) → zstd → encryption → store; verification
//! (checksum, full decryption, `pg_restore --list`); restore into a database.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::Utc;
use indicatif::ProgressBar;
use tokio_postgres::{Client, NoTls};

use crate::manifest::{Kind, Manifest};
use crate::pipe::{self, Source};
use crate::{BackupError, Backups, new_id};

const TABLES: &str = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' \
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
    AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1";

/// Rows per table (every table the connection may read), in the current transaction.
pub async fn row_counts(client: &Client) -> Result<BTreeMap<String, i64>, BackupError> {
    let mut out = BTreeMap::new();
    for row in client.query(TABLES, &[]).await? {
        let name: String = row.get(0);
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {name}"), &[])
            .await?
            .get(0);
        out.insert(name, n);
    }
    Ok(out)
}

async fn schema_version(client: &Client) -> Result<Option<i64>, BackupError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('orgbase.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client
        .query_one("SELECT max(version) FROM orgbase.schema_migrations", &[])
        .await?
        .get(0))
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, BackupError> {
    let (client, conn) = config.connect(NoTls).await.map_err(|e| {
        BackupError::Invalid(format!(
            "connecting to PostgreSQL as {}: {e}",
            orgbase_db::database::describe(config)
        ))
    })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Where a restore goes: libpq environment plus a `--dbname` (a name or a URL).
#[derive(Clone)]
pub struct RestoreTarget {
    pub env: Vec<(&'static str, String)>,
    pub dbname: String,
}

impl std::fmt::Debug for RestoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreTarget").finish_non_exhaustive()
    }
}

impl RestoreTarget {
    pub fn from_config(c: &tokio_postgres::Config) -> Self {
        Self {
            env: orgbase_db::database::libpq_env(c),
            dbname: c.get_dbname().unwrap_or_default().to_string(),
        }
    }
}

impl Backups {
    /// Back up the database `conn` points at (connect as the backup role).
    pub async fn create_dump(
        &self,
        conn: &tokio_postgres::Config,
        tier: &str,
        pb: ProgressBar,
    ) -> Result<Manifest, BackupError> {
        let started_at = Utc::now();
        let t0 = Instant::now();
        let id = new_id(started_at);
        let ring = self.encrypting_keys()?;
        let client = connect(conn).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let snapshot: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await?
            .get(0);
        let row_counts = row_counts(&client).await?;
        let schema_version = schema_version(&client).await?;
        let postgres_version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        let database: String = client
            .query_one("SELECT current_database()", &[])
            .await?
            .get(0);

        let object = format!("dumps/{id}/data.obk");
        let (upload, task) = self.store.writer(&object).await?;
        let mut cmd = Command::new(self.bin_dir.join("pg_dump"));
        cmd.envs(orgbase_db::database::libpq_env(conn))
            .env("PGAPPNAME", "orgbase-backup")
            .args(["--format=custom", "--compress=0", "--no-password"])
            .arg(format!("--snapshot={snapshot}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (level, threads) = (self.zstd_level, self.zstd_threads);
        let key_id;
        let key_version;
        {
            let k = ring.current()?;
            key_id = k.id.clone();
            key_version = k.version;
        }
        let oid = id.clone();
        let obj = object.clone();
        let stats = tokio::task::spawn_blocking(move || -> Result<pipe::Stats, BackupError> {
            // pg_dump must have succeeded before the object is completed.
            pipe::command_to_object(
                "pg_dump",
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
        .map_err(|e| BackupError::Invalid(format!("backup task: {e}")))?;
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
        client.batch_execute("COMMIT").await?;
        let finished_at = Utc::now();
        let manifest = Manifest {
            manifest_version: 1,
            id,
            kind: Kind::Dump,
            tier: tier.to_string(),
            started_at,
            finished_at,
            duration_ms: t0.elapsed().as_millis() as u64,
            raw_bytes: stats.raw_bytes,
            compressed_bytes: stats.compressed_bytes,
            stored_bytes: stats.stored_bytes,
            sha256: stats.sha256,
            object,
            key_id,
            key_version,
            schema_version,
            orgbase_version: orgbase_core::VERSION.to_string(),
            postgres_version,
            database,
            row_counts,
            wal_start: None,
        };
        manifest.save(&self.store).await?;
        Ok(manifest)
    }

    /// Stream a stored object, decrypted and decompressed, into `consume` (run on a blocking
    /// thread), then check its size and SHA-256 against the manifest.
    pub async fn read_object<T: Send + 'static>(
        &self,
        manifest: &Manifest,
        pb: ProgressBar,
        consume: impl FnOnce(&mut dyn Read, &ProgressBar) -> Result<T, BackupError> + Send + 'static,
    ) -> Result<T, BackupError> {
        let ring = self.decrypting_keys()?;
        let download = self.store.reader(&manifest.object).await?;
        let obj = format!("{}/{}", self.store.location(), manifest.object);
        let (result, plain, stored, sha) = tokio::task::spawn_blocking(move || {
            let mut source =
                Source::new(download, &ring).map_err(|e| pipe::object_error(&obj, e))?;
            let result = consume(&mut source, &pb)?;
            // Read whatever the consumer left, so the whole object is authenticated (and the
            // progress bar reaches the end: `pg_restore --list` stops after the table of contents).
            pipe::copy(&mut source, &mut std::io::sink(), &pb)
                .map_err(|e| pipe::object_error(&obj, e))?;
            let (plain, stored, sha) = source.finish().map_err(|e| pipe::object_error(&obj, e))?;
            pb.finish_and_clear();
            Ok::<_, BackupError>((result, plain, stored, sha))
        })
        .await
        .map_err(|e| BackupError::Invalid(format!("restore task: {e}")))??;
        if stored != manifest.stored_bytes || sha != manifest.sha256 {
            return Err(BackupError::Verify(format!(
                "{}: checksum mismatch: manifest says {} bytes sha256 {}, the store holds {stored} \
                 bytes sha256 {sha}",
                manifest.object, manifest.stored_bytes, manifest.sha256
            )));
        }
        if plain != manifest.raw_bytes {
            return Err(BackupError::Verify(format!(
                "{}: decrypted to {plain} bytes, the manifest says {}",
                manifest.object, manifest.raw_bytes
            )));
        }
        Ok(result)
    }

    /// Checksum, full decryption and `pg_restore --list`; returns the number of archive entries.
    pub async fn verify_dump(
        &self,
        manifest: &Manifest,
        pb: ProgressBar,
    ) -> Result<usize, BackupError> {
        let bin = self.bin_dir.join("pg_restore");
        let obj = manifest.object.clone();
        self.read_object(manifest, pb, move |source, pb| {
            let mut child = Command::new(&bin)
                .arg("--list")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(BackupError::io("starting pg_restore --list"))?;
            let stderr = pipe::collect_stderr(child.stderr.take());
            let stdout = child.stdout.take();
            let listing = std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut o) = stdout {
                    let _ = o.read_to_string(&mut s);
                }
                s
            });
            let copied = match child.stdin.take() {
                Some(mut stdin) => {
                    let r = pipe::copy(source, &mut stdin, pb);
                    drop(stdin);
                    r
                }
                None => Ok(0),
            };
            match copied {
                // pg_restore --list stops reading after the table of contents; the caller
                // reads (and authenticates) the rest.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => {
                    pipe::kill(child);
                    return Err(pipe::object_error(&obj, e));
                }
            }
            pipe::wait("pg_restore --list", child, stderr)?;
            let listing = listing.join().unwrap_or_default();
            let entries = listing
                .lines()
                .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
                .count();
            if entries == 0 {
                return Err(BackupError::Verify(format!(
                    "{obj}: the dump lists no entries"
                )));
            }
            Ok(entries)
        })
        .await
    }

    /// Restore a dump into an existing, empty database (one transaction: all or nothing).
    pub async fn restore_dump(
        &self,
        manifest: &Manifest,
        target: &RestoreTarget,
        pb: ProgressBar,
    ) -> Result<(), BackupError> {
        let mut cmd = Command::new(self.bin_dir.join("pg_restore"));
        cmd.envs(target.env.iter().cloned())
            .arg(format!("--dbname={}", target.dbname))
            .args(["--exit-on-error", "--single-transaction", "--no-password"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let obj = manifest.object.clone();
        self.read_object(manifest, pb, move |source, pb| {
            let mut child = cmd
                .spawn()
                .map_err(BackupError::io("starting pg_restore"))?;
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
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    // pg_restore stopped early: its own message says why.
                    return pipe::wait("pg_restore", child, stderr);
                }
                pipe::kill(child);
                return Err(pipe::object_error(&obj, e));
            }
            pipe::wait("pg_restore", child, stderr)
        })
        .await
    }
}

/// Roles and database privileges a restored orgbase database needs, as migration 0001 sets
/// them: the roles are cluster-wide and not part of a dump.
pub const PREPARE_ROLES: &str = "DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgbase_owner') THEN
        CREATE ROLE orgbase_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgbase_runtime') THEN
        CREATE ROLE orgbase_runtime LOGIN NOBYPASSRLS NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgbase_readonly') THEN
        CREATE ROLE orgbase_readonly LOGIN NOBYPASSRLS NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgbase_backup') THEN
        CREATE ROLE orgbase_backup LOGIN BYPASSRLS NOINHERIT;
    END IF;
END
$$;
GRANT orgbase_owner TO CURRENT_USER;";

/// After a restore: the database-level privileges of migration 0001 (not part of a dump).
pub const DATABASE_PRIVILEGES: &str = "DO $$
BEGIN
    EXECUTE format('REVOKE CREATE, TEMPORARY, CONNECT ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO orgbase_runtime, orgbase_readonly, orgbase_backup',
                   current_database());
END
$$;";

/// Compare row counts of the restored database (as administrator) with the manifest.
pub async fn compare_row_counts(client: &Client, manifest: &Manifest) -> Result<(), BackupError> {
    let mut problems = Vec::new();
    for (table, expected) in &manifest.row_counts {
        let got: Result<i64, _> = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map(|r| r.get(0));
        match got {
            Ok(n) if n == *expected => {}
            Ok(n) => problems.push(format!("{table}: {n} rows, the manifest says {expected}")),
            Err(e) => problems.push(format!("{table}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BackupError::Verify(format!(
            "row counts differ from the manifest: {}",
            problems.join("; ")
        )))
    }
}
