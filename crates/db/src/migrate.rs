//! Versioned SQL migrations, embedded in the binary from `migrations/`.
//!
//! A small runner of our own rather than refinery or sqlx: refinery has no down migrations,
//! sqlx's runner would bring a second PostgreSQL driver, and neither records who applied a
//! migration, how long it took, or a schema snapshot to detect drift against.
//!
//! Every run holds a session advisory lock, so two orgbase processes never migrate at once.
//! Each migration runs in its own transaction together with its bookkeeping row; it runs as
//! `orgbase_owner` (so the owner owns every object) unless its first lines say
//! `-- orgbase:run-as admin` (only 0001, which creates the roles).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tokio_postgres::Client;

/// The key of the advisory lock every migration run holds ("orgbase" in ASCII).
const LOCK_KEY: i64 = 0x006f_7267_6261_7365;

struct EmbeddedMigration {
    version: i64,
    name: &'static str,
    up: &'static str,
    down: &'static str,
}

static EMBEDDED: &[EmbeddedMigration] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    /// File stem without the version, e.g. `roles_and_schema`.
    pub name: String,
    pub up: String,
    pub down: String,
}

impl Migration {
    pub fn description(&self) -> String {
        self.name.replace('_', " ")
    }

    /// SHA-256 of the up script, hex.
    pub fn checksum(&self) -> String {
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            self.up.as_bytes(),
        ))
    }

    fn runs_as_admin(script: &str) -> bool {
        script
            .lines()
            .take_while(|l| l.starts_with("--"))
            .any(|l| l.trim() == "-- orgbase:run-as admin")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: i64,
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("migration bookkeeping: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// One applied row of `orgbase.schema_migrations`.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: i64,
    pub description: String,
    pub checksum: String,
    pub applied_at: chrono::DateTime<chrono::Utc>,
    pub applied_by: String,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Applied,
    Pending,
    /// Applied, but the script in this binary has a different checksum.
    ChecksumMismatch,
    /// Applied in the database, unknown to this binary (a newer orgbase ran here?).
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub version: i64,
    pub description: String,
    pub state: State,
    pub applied: Option<Applied>,
}

/// Something `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    Checksum {
        version: i64,
        recorded: String,
        expected: String,
    },
    UnknownVersion {
        version: i64,
        description: String,
    },
    /// The schema differs from the snapshot taken after the last migration.
    Schema {
        after_version: i64,
        added: Vec<String>,
        removed: Vec<String>,
    },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Checksum {
                version,
                recorded,
                expected,
            } => write!(
                f,
                "migration {version}: checksum drift: applied script had sha256 {recorded}, this binary's has {expected}"
            ),
            Drift::UnknownVersion {
                version,
                description,
            } => write!(
                f,
                "migration {version} ({description}) is applied but unknown to this orgbase binary"
            ),
            Drift::Schema {
                after_version,
                added,
                removed,
            } => {
                write!(
                    f,
                    "schema drift since migration {after_version}: {} object(s) added or changed, {} removed or changed outside migrations",
                    added.len(),
                    removed.len()
                )?;
                for line in added.iter().take(20) {
                    write!(f, "\n  + {line}")?;
                }
                for line in removed.iter().take(20) {
                    write!(f, "\n  - {line}")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Migrator {
    migrations: Vec<Migration>,
    applied_by: String,
}

impl Migrator {
    /// The migrations compiled into this binary.
    pub fn embedded(applied_by: impl Into<String>) -> Self {
        Self::new(
            EMBEDDED
                .iter()
                .map(|m| Migration {
                    version: m.version,
                    name: m.name.to_string(),
                    up: m.up.to_string(),
                    down: m.down.to_string(),
                })
                .collect(),
            applied_by,
        )
    }

    pub fn new(mut migrations: Vec<Migration>, applied_by: impl Into<String>) -> Self {
        migrations.sort_by_key(|m| m.version);
        Self {
            migrations,
            applied_by: applied_by.into(),
        }
    }

    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The newest version this binary knows.
    pub fn latest(&self) -> i64 {
        self.migrations.last().map(|m| m.version).unwrap_or(0)
    }

    async fn ensure_table(client: &Client) -> Result<(), MigrateError> {
        // Quietly: `IF NOT EXISTS` notices are noise on every start.
        client
            .batch_execute(
                "SET client_min_messages = warning;
                 CREATE SCHEMA IF NOT EXISTS orgbase;
                 CREATE TABLE IF NOT EXISTS orgbase.schema_migrations (
                     version bigint PRIMARY KEY,
                     description text NOT NULL,
                     checksum text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now(),
                     applied_by text NOT NULL,
                     duration_ms bigint NOT NULL,
                     schema_snapshot text NOT NULL
                 );
                 RESET client_min_messages;",
            )
            .await?;
        Ok(())
    }

    async fn table_exists(client: &Client) -> Result<bool, MigrateError> {
        Ok(client
            .query_one(
                "SELECT to_regclass('orgbase.schema_migrations') IS NOT NULL",
                &[],
            )
            .await?
            .get(0))
    }

    /// Applied rows, or none when the table does not exist yet (read-only: creates nothing).
    pub async fn applied(client: &Client) -> Result<Vec<Applied>, MigrateError> {
        if !Self::table_exists(client).await? {
            return Ok(Vec::new());
        }
        let rows = client
            .query(
                "SELECT version, description, checksum, applied_at, applied_by, duration_ms
                   FROM orgbase.schema_migrations ORDER BY version",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Applied {
                version: r.get(0),
                description: r.get(1),
                checksum: r.get(2),
                applied_at: r.get(3),
                applied_by: r.get(4),
                duration_ms: r.get(5),
            })
            .collect())
    }

    pub async fn status(&self, client: &Client) -> Result<Vec<Status>, MigrateError> {
        let applied: BTreeMap<i64, Applied> = Self::applied(client)
            .await?
            .into_iter()
            .map(|a| (a.version, a))
            .collect();
        let mut out: Vec<Status> = self
            .migrations
            .iter()
            .map(|m| {
                let a = applied.get(&m.version).cloned();
                let state = match &a {
                    None => State::Pending,
                    Some(a) if a.checksum != m.checksum() => State::ChecksumMismatch,
                    Some(_) => State::Applied,
                };
                Status {
                    version: m.version,
                    description: m.description(),
                    state,
                    applied: a,
                }
            })
            .collect();
        let known: BTreeSet<i64> = self.migrations.iter().map(|m| m.version).collect();
        for a in applied.values().filter(|a| !known.contains(&a.version)) {
            out.push(Status {
                version: a.version,
                description: a.description.clone(),
                state: State::Unknown,
                applied: Some(a.clone()),
            });
        }
        out.sort_by_key(|s| s.version);
        Ok(out)
    }

    /// Apply pending migrations up to `target` (all when `None`). Returns the versions applied.
    /// `on_applied` is called after each one (for progress output).
    pub async fn up(
        &self,
        client: &mut Client,
        target: Option<i64>,
        mut on_applied: impl FnMut(&Migration, u128),
    ) -> Result<Vec<i64>, MigrateError> {
        lock_and_prepare(client).await?;
        let result = async {
            let status = self.status(client).await?;
            if let Some(s) = status.iter().find(|s| s.state == State::Unknown) {
                return Err(MigrateError::Refused(format!(
                    "the database has migration {} ({}) that this orgbase does not know; \
                     refusing to migrate with an older binary",
                    s.version, s.description
                )));
            }
            let applied: BTreeSet<i64> = status
                .iter()
                .filter(|s| s.applied.is_some())
                .map(|s| s.version)
                .collect();
            let mut done = Vec::new();
            for m in self
                .migrations
                .iter()
                .filter(|m| !applied.contains(&m.version))
                .filter(|m| target.is_none_or(|t| m.version <= t))
            {
                let ms = self.apply(client, m).await?;
                on_applied(m, ms);
                done.push(m.version);
            }
            Ok(done)
        }
        .await;
        unlock(client).await?;
        result
    }

    async fn apply(&self, client: &mut Client, m: &Migration) -> Result<u128, MigrateError> {
        let failed = |source| MigrateError::Failed {
            version: m.version,
            name: m.name.clone(),
            source,
        };
        let started = Instant::now();
        let tx = client.transaction().await?;
        run_script(&tx, &m.up).await.map_err(failed)?;
        let snapshot = snapshot(&tx).await?;
        let ms = started.elapsed().as_millis();
        tx.execute(
            "INSERT INTO orgbase.schema_migrations
                 (version, description, checksum, applied_by, duration_ms, schema_snapshot)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &m.version,
                &m.description(),
                &m.checksum(),
                &self.applied_by,
                &(ms as i64),
                &snapshot,
            ],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = %m.name, duration_ms = ms as u64, "migration applied");
        Ok(ms)
    }

    /// Revert applied migrations newer than `target`, newest first. Returns the versions reverted.
    pub async fn down(
        &self,
        client: &mut Client,
        target: i64,
        mut on_reverted: impl FnMut(&Migration, u128),
    ) -> Result<Vec<i64>, MigrateError> {
        lock_and_prepare(client).await?;
        let result = async {
            let status = self.status(client).await?;
            if let Some(s) = status
                .iter()
                .find(|s| s.state == State::Unknown && s.version > target)
            {
                return Err(MigrateError::Refused(format!(
                    "migration {} ({}) is applied but unknown to this orgbase, so it cannot be \
                     reverted by it",
                    s.version, s.description
                )));
            }
            let applied: BTreeSet<i64> = status
                .iter()
                .filter(|s| s.applied.is_some())
                .map(|s| s.version)
                .collect();
            let mut done = Vec::new();
            for m in self
                .migrations
                .iter()
                .rev()
                .filter(|m| m.version > target && applied.contains(&m.version))
            {
                let started = Instant::now();
                let failed = |source| MigrateError::Failed {
                    version: m.version,
                    name: format!("{} (down)", m.name),
                    source,
                };
                let tx = client.transaction().await?;
                run_script(&tx, &m.down).await.map_err(failed)?;
                tx.execute(
                    "DELETE FROM orgbase.schema_migrations WHERE version = $1",
                    &[&m.version],
                )
                .await?;
                tx.commit().await?;
                let ms = started.elapsed().as_millis();
                tracing::info!(version = m.version, name = %m.name, duration_ms = ms as u64, "migration reverted");
                on_reverted(m, ms);
                done.push(m.version);
            }
            Ok(done)
        }
        .await;
        unlock(client).await?;
        result
    }

    /// Checksum drift, unknown applied versions and schema changes made outside migrations.
    pub async fn verify(&self, client: &Client) -> Result<Vec<Drift>, MigrateError> {
        let mut drift = Vec::new();
        for s in self.status(client).await? {
            match (&s.state, &s.applied) {
                (State::ChecksumMismatch, Some(a)) => drift.push(Drift::Checksum {
                    version: s.version,
                    recorded: a.checksum.clone(),
                    expected: self
                        .migrations
                        .iter()
                        .find(|m| m.version == s.version)
                        .map(Migration::checksum)
                        .unwrap_or_default(),
                }),
                (State::Unknown, _) => drift.push(Drift::UnknownVersion {
                    version: s.version,
                    description: s.description.clone(),
                }),
                _ => {}
            }
        }
        if !Self::table_exists(client).await? {
            return Ok(drift);
        }
        let last = client
            .query_opt(
                "SELECT version, schema_snapshot FROM orgbase.schema_migrations
                  ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await?;
        if let Some(row) = last {
            let version: i64 = row.get(0);
            let recorded: String = row.get(1);
            let current = snapshot(client).await?;
            if recorded != current {
                let old: BTreeSet<&str> = recorded.lines().collect();
                let new: BTreeSet<&str> = current.lines().collect();
                drift.push(Drift::Schema {
                    after_version: version,
                    added: new.difference(&old).map(|s| s.to_string()).collect(),
                    removed: old.difference(&new).map(|s| s.to_string()).collect(),
                });
            }
        }
        Ok(drift)
    }
}

/// Take the migration lock and make sure the bookkeeping table exists (under the lock, so two
/// first runs do not race to create it).
async fn lock_and_prepare(client: &Client) -> Result<(), MigrateError> {
    lock(client).await?;
    if let Err(e) = Migrator::ensure_table(client).await {
        unlock(client).await?;
        return Err(e);
    }
    Ok(())
}

/// Run one migration script in `tx`, as `orgbase_owner` unless it says `-- orgbase:run-as admin`.
async fn run_script(
    tx: &tokio_postgres::Transaction<'_>,
    script: &str,
) -> Result<(), tokio_postgres::Error> {
    // `IF EXISTS … skipping` and the like are notices, not news: a first start printed dozens.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    if !Migration::runs_as_admin(script) {
        tx.batch_execute("SET LOCAL ROLE orgbase_owner").await?;
    }
    tx.batch_execute(script).await
}

async fn lock(client: &Client) -> Result<(), MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    Ok(())
}

async fn unlock(client: &Client) -> Result<(), MigrateError> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    Ok(())
}

/// A canonical, line-per-object description of every user schema: tables with owner, RLS flags
/// and grants; columns; constraints; indexes; policies; functions; triggers; views.
pub async fn snapshot(client: &impl tokio_postgres::GenericClient) -> Result<String, MigrateError> {
    const SQL: &str = r#"
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
     WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
       AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%'
), rel AS (
    SELECT c.*, ns.nspname FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
)
SELECT coalesce(string_agg(line, E'\n' ORDER BY line), '') FROM (
    SELECT format('schema %I owner=%s acl=%s', nspname, pg_get_userbyid(n.nspowner), n.nspacl)
      FROM pg_namespace n JOIN ns USING (nspname)
    UNION ALL
    SELECT format('relation %I.%I kind=%s owner=%s rls=%s force_rls=%s acl=%s options=%s',
                  nspname, relname, relkind, pg_get_userbyid(relowner), relrowsecurity,
                  relforcerowsecurity, relacl, reloptions)
      FROM rel WHERE relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
    UNION ALL
    SELECT format('column %I.%I.%I %s%s%s', r.nspname, r.relname, a.attname,
                  format_type(a.atttypid, a.atttypmod),
                  CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                  coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''))
      FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT format('constraint %I.%I.%I %s', r.nspname, r.relname, con.conname,
                  pg_get_constraintdef(con.oid))
      FROM pg_constraint con JOIN rel r ON r.oid = con.conrelid
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(i.indexrelid))
      FROM pg_index i JOIN rel r ON r.oid = i.indrelid
    UNION ALL
    SELECT format('policy %I.%I.%I cmd=%s permissive=%s roles=%s using=%s check=%s',
                  r.nspname, r.relname, p.polname, p.polcmd, p.polpermissive,
                  (SELECT string_agg(CASE WHEN x = 0 THEN 'public' ELSE pg_get_userbyid(x) END, ',' ORDER BY 1)
                     FROM unnest(p.polroles) x),
                  pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
      FROM pg_policy p JOIN rel r ON r.oid = p.polrelid
    UNION ALL
    SELECT format('function %I.%I(%s) returns %s owner=%s security_definer=%s config=%s acl=%s body=%s',
                  ns.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
                  pg_get_function_result(p.oid), pg_get_userbyid(p.proowner), p.prosecdef,
                  p.proconfig, p.proacl, md5(p.prosrc))
      FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
    UNION ALL
    SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
      FROM pg_trigger t JOIN rel r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('view %I.%I %s', nspname, relname, md5(pg_get_viewdef(oid)))
      FROM rel WHERE relkind IN ('v', 'm')
) lines(line)
"#;
    Ok(client.query_one(SQL, &[]).await?.get(0))
}
