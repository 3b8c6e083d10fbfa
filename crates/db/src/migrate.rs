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
//!
//! Versions 1–9 are the **baseline**: the schema as it stood after the seventeen migrations of
//! earlier releases, rewritten by concern. A database those releases migrated to their last
//! version is recognised (its recorded checksums) and, when its schema is still what they left
//! (the comparison `verify` makes), recorded as being at the baseline without running anything;
//! one at an earlier version is told to upgrade with the previous release first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tokio_postgres::Client;

/// The migrations of the releases before the baseline: version, name and SHA-256 of the up
/// script. Only a database at the last of them can be recognised as being at the baseline.
const LEGACY: &[(i64, &str, &str)] = &[
    (
        1,
        "roles_and_schema",
        "217c0e61a71a9972efab44ed8224441820ecbc2b5e54f8b41d3edfabb0bd97f1",
    ),
    (
        2,
        "identity_and_tenancy",
        "321f0c5e0457e5111154a32016c74c080fd15697bc4d4497504c2a14f5340225",
    ),
    (
        3,
        "identity_api",
        "06908cc8e93414a815de64b323b20b50a27aaaf30a4ff1f1a03d7a454ae32abd",
    ),
    (
        4,
        "apps",
        "04ad889cceb72b0b73ac10f5c3283db48b5b37c3753b63f03bb9768290d8b02a",
    ),
    (
        5,
        "audit",
        "1a3d5ddb86e3ddb66b67f867d6bfa78b8434e1059ab8b995962a5390f13be59f",
    ),
    (
        6,
        "keys_gdpr",
        "14f916a28bce48d4bc99ab984e97285f609ae5245564057d3df5510e1be8a9b5",
    ),
    (
        7,
        "consent_retention",
        "97b5a4128b0f2e974b5474df8bf22158401694aeec8a6ac64e5fba3d439a8f1b",
    ),
    (
        8,
        "user_pii",
        "d6eed3a1db33354f72bd3ba6e513b529046ec504e79a60b2b11500ba16d02a19",
    ),
    (
        9,
        "request_path",
        "518fde087502499af09391d6724ef4a413dd67bd69c44e16368a0efc9bd75b0d",
    ),
    (
        10,
        "session_key",
        "0a342eec49156828561b694ee65e37d6a105b35f9ffe31825a232d82f0a772f3",
    ),
    (
        11,
        "lighter_checks",
        "55e8478ceaec617151ae456cd2ae0453670d8f52af974d24a621f99eee774207",
    ),
    (
        12,
        "one_check_reads",
        "edf1ede8416ac911866c69f4ecb92368aefdeae7b6ce8968f6cd60ce6adfed11",
    ),
    (
        13,
        "plan_safe_reads",
        "81bb05aa3e97b1a579a94bfbf414a1fb6291713ab2af9262630e397849a472ee",
    ),
    (
        14,
        "rights_fail_closed",
        "f5a9bf04e1f3c9a865b39b13d460801ffb8848ca154c64a793de19fa6626d128",
    ),
    (
        15,
        "column_limits",
        "af5f3c0d583739a33e57154cb5bb67b232601c8dc416e7423ce0e2da37c72956",
    ),
    (
        16,
        "org_settings",
        "e3b7f5778086b114407cc75cb433b219108d58411735cebc593bb8f3107274d1",
    ),
    (
        17,
        "refresh_reuse",
        "0329544be1a0bee3d411c113f8f09f7828e359296ae775cdad4266e6fc5dd061",
    ),
];

/// The last baseline version: 1..=BASELINE stand for every legacy migration.
pub const BASELINE: i64 = 9;

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
    /// Migrated by a release from before the baseline, to version `at` of its migrations.
    Legacy {
        at: i64,
        name: String,
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
            Drift::Legacy { at, name } => write!(f, "{}", legacy_message(*at, name)),
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
    /// Recognise databases of the releases before the baseline (the embedded set only).
    legacy: bool,
}

/// What to do about a database migrated by a release from before the baseline.
fn legacy_message(at: i64, name: &str) -> String {
    let last = LEGACY.last().map(|l| l.0).unwrap_or(0);
    if at == last {
        format!(
            "the database was migrated by an earlier orgbase (its migration {at}, {}); \
             `orgbase migrate up` checks that its schema is unchanged and records it as being at \
             the baseline schema ({BASELINE} migrations) without running anything",
            name.replace('_', " ")
        )
    } else {
        format!(
            "the database is at migration {at} ({}) of an earlier orgbase, whose migrations \
             this one replaced by a baseline; upgrade it first with the previous orgbase release \
             (the last one whose `orgbase migrate status` lists {last} migrations, ending with \
             \"refresh reuse\"): run its `orgbase migrate up`, then this one",
            name.replace('_', " ")
        )
    }
}

/// The legacy version a database is at: its recorded migrations are all legacy ones, by
/// version and checksum (the baseline's scripts have other checksums).
fn legacy_at(applied: &[Applied]) -> Option<(i64, String)> {
    let all_legacy = !applied.is_empty()
        && applied.iter().all(|a| {
            LEGACY
                .iter()
                .any(|(v, _, sum)| *v == a.version && *sum == a.checksum)
        });
    let last = applied.iter().map(|a| a.version).max()?;
    let name = LEGACY.iter().find(|l| l.0 == last)?.1.to_string();
    all_legacy.then_some((last, name))
}

/// The lines of a schema snapshot that say what orgbase's schema is: those about objects in
/// the `orgbase` schema, without the monthly partitions of the access logs, which come and go
/// with the calendar (`maintain_logs`) rather than with migrations.
pub fn orgbase_lines(snapshot: &str) -> BTreeSet<&str> {
    comparable_lines(snapshot)
        .into_iter()
        .filter(|l| about_orgbase(l))
        .collect()
}

/// The lines of a schema snapshot that migrations account for: all but the access logs'
/// monthly partitions.
fn comparable_lines(snapshot: &str) -> BTreeSet<&str> {
    snapshot
        .lines()
        .filter(|l| !about_monthly_partition(l))
        .collect()
}

/// What changed between the snapshot recorded after `after_version` and the current one.
fn schema_drift(after_version: i64, old: &BTreeSet<&str>, new: &BTreeSet<&str>) -> Option<Drift> {
    (old != new).then(|| Drift::Schema {
        after_version,
        added: new.difference(old).map(|s| s.to_string()).collect(),
        removed: old.difference(new).map(|s| s.to_string()).collect(),
    })
}

fn about_orgbase(line: &str) -> bool {
    let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
    match kind {
        "schema" => rest.starts_with("orgbase "),
        "index" | "trigger" => rest.contains(" ON orgbase.") || rest.contains(" ON ONLY orgbase."),
        _ => rest.starts_with("orgbase."),
    }
}

/// The access logs' range-partitioned tables, whose monthly partitions are `<parent>_YYYYMM`.
const MONTHLY: &[&str] = &[
    "access_log_std",
    "access_log_hipaa",
    "read_access_log_std",
    "read_access_log_hipaa",
];

/// A monthly partition of an access log named in the line.
fn about_monthly_partition(line: &str) -> bool {
    line.match_indices("orgbase.").any(|(i, m)| {
        let name: String = line[i + m.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        name.rsplit_once('_').is_some_and(|(base, month)| {
            MONTHLY.contains(&base) && month.len() == 6 && month.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

impl Migrator {
    /// The migrations compiled into this binary.
    pub fn embedded(applied_by: impl Into<String>) -> Self {
        let mut m = Self::new(
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
        );
        m.legacy = true;
        m
    }

    pub fn new(mut migrations: Vec<Migration>, applied_by: impl Into<String>) -> Self {
        migrations.sort_by_key(|m| m.version);
        Self {
            migrations,
            applied_by: applied_by.into(),
            legacy: false,
        }
    }

    /// For the embedded set: the legacy version (and its name) a database is at, if it was
    /// migrated by a release from before the baseline and not recorded at the baseline yet.
    pub async fn legacy(&self, client: &Client) -> Result<Option<(i64, String)>, MigrateError> {
        if !self.legacy {
            return Ok(None);
        }
        Ok(legacy_at(&Self::applied(client).await?))
    }

    /// Why commands that work on orgbase's data cannot run on this database yet, if so: it is
    /// a database of the releases before the baseline, or not at this binary's newest migration.
    pub async fn not_current(&self, client: &Client) -> Result<Option<String>, MigrateError> {
        let applied = Self::applied(client).await?;
        if self.legacy
            && let Some((at, name)) = legacy_at(&applied)
        {
            return Ok(Some(legacy_message(at, &name)));
        }
        let at = applied.iter().map(|a| a.version).max().unwrap_or(0);
        Ok((at != self.latest()).then(|| {
            format!(
                "the database is at migration {at} and this orgbase needs {}: run `orgbase \
                 migrate up` first (or start `orgbase serve`, which migrates)",
                self.latest()
            )
        }))
    }

    /// Record a database at the last legacy version as being at the baseline, after checking
    /// that its schema is what the legacy migrations left (nothing runs). Called under the lock.
    async fn adopt(&self, client: &mut Client, at: i64, name: &str) -> Result<(), MigrateError> {
        let last = LEGACY.last().map(|l| l.0).unwrap_or(0);
        if at != last {
            return Err(MigrateError::Refused(legacy_message(at, name)));
        }
        let recorded: String = client
            .query_one(
                "SELECT schema_snapshot FROM orgbase.schema_migrations WHERE version = $1",
                &[&at],
            )
            .await?
            .get(0);
        let current = snapshot(&*client).await?;
        if let Some(drift) = schema_drift(at, &orgbase_lines(&recorded), &orgbase_lines(&current)) {
            return Err(MigrateError::Refused(format!(
                "the database was migrated by an earlier orgbase and its schema was changed \
                 since, outside migrations, so it cannot be recorded as being at the baseline \
                 schema: {drift}\nUndo those changes (or restore a backup), then run this again."
            )));
        }
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM orgbase.schema_migrations WHERE version <= $1",
            &[&last],
        )
        .await?;
        let by = format!(
            "{} (recognised: migrations 1-{last} of an earlier orgbase, nothing run)",
            self.applied_by
        );
        for m in self.migrations.iter().filter(|m| m.version <= BASELINE) {
            let snap = if m.version == BASELINE {
                &current[..]
            } else {
                ""
            };
            tx.execute(
                "INSERT INTO orgbase.schema_migrations
                     (version, description, checksum, applied_by, duration_ms, schema_snapshot)
                 VALUES ($1, $2, $3, $4, 0, $5)",
                &[&m.version, &m.description(), &m.checksum(), &by, &snap],
            )
            .await?;
        }
        tx.commit().await?;
        tracing::info!(
            legacy = at,
            baseline = BASELINE,
            "database of an earlier orgbase recorded as being at the baseline schema"
        );
        Ok(())
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
            if let Some((at, name)) = self.legacy(client).await? {
                self.adopt(client, at, &name).await?;
            }
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
            if let Some((at, name)) = self.legacy(client).await? {
                return Err(MigrateError::Refused(legacy_message(at, &name)));
            }
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
        if let Some((at, name)) = self.legacy(client).await? {
            return Ok(vec![Drift::Legacy { at, name }]);
        }
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
            drift.extend(schema_drift(
                version,
                &comparable_lines(&recorded),
                &comparable_lines(&current),
            ));
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
