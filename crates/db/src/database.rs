//! Connecting to PostgreSQL: the administrative (migrator) connection and the runtime pool,
//! for the embedded cluster and for an external server alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orgbase_core::{Config, Secret};
use tokio_postgres::{Client, NoTls};

use crate::cluster::{ClusterError, Layout, RunningCluster, SUPERUSER};
use crate::migrate::{MigrateError, Migrator};
use crate::pool::{Limits, Pool};
use crate::secrets;

/// The database orgbase creates in its embedded cluster.
pub const EMBEDDED_DATABASE: &str = "orgbase";
/// The role requests run as.
pub const RUNTIME_ROLE: &str = "orgbase_runtime";
/// The role backups (pg_dump) run as: reads every table, BYPASSRLS.
pub const BACKUP_ROLE: &str = "orgbase_backup";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL: {0}")]
    Url(String),
    #[error("connecting to PostgreSQL ({target}): {source}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("connecting to PostgreSQL ({target}): timed out after {secs} s")]
    ConnectTimeout { target: String, secs: u64 },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("{0}")]
    NotMigrated(String),
    #[error("building the connection pool: {0}")]
    Pool(String),
    #[error("cryptography: {0}")]
    Crypto(String),
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// How to reach the database: as administrator (migrations, bootstrap) and as the runtime role.
#[derive(Clone)]
pub struct Target {
    admin: tokio_postgres::Config,
    runtime: tokio_postgres::Config,
    /// Where generated runtime credentials live; `None` when `database.runtime_url` is set.
    managed_secrets: Option<PathBuf>,
    /// For the embedded cluster: the database to create on first run.
    create_database: Option<String>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("admin", &describe(&self.admin))
            .field("runtime", &describe(&self.runtime))
            .finish_non_exhaustive()
    }
}

fn host_of(c: &tokio_postgres::Config) -> String {
    c.get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default()
}

/// The connection as libpq environment variables (`PGHOST`, …, `PGPASSWORD`), for psql and
/// pg_dump.
pub fn libpq_env(c: &tokio_postgres::Config) -> Vec<(&'static str, String)> {
    vec![
        ("PGHOST", host_of(c)),
        (
            "PGPORT",
            c.get_ports().first().copied().unwrap_or(5432).to_string(),
        ),
        ("PGUSER", c.get_user().unwrap_or_default().to_string()),
        (
            "PGPASSWORD",
            String::from_utf8_lossy(c.get_password().unwrap_or_default()).into_owned(),
        ),
        ("PGDATABASE", c.get_dbname().unwrap_or_default().to_string()),
    ]
}

/// `user@host/db` — never the password.
pub fn describe(c: &tokio_postgres::Config) -> String {
    let host = host_of(c);
    format!(
        "{}@{}/{}",
        c.get_user().unwrap_or("?"),
        host,
        c.get_dbname().unwrap_or("?")
    )
}

impl Target {
    /// The embedded cluster's database, over its Unix socket.
    pub fn embedded(cluster: &RunningCluster, config: &Config) -> Result<Self, DbError> {
        Self::embedded_at(cluster.layout(), cluster.cluster().port(), config)
    }

    /// The embedded cluster of a data directory, whoever started it (e.g. a running `serve`).
    pub fn embedded_at(layout: &Layout, port: u16, config: &Config) -> Result<Self, DbError> {
        let password = secrets::read(&layout.secrets, SUPERUSER)?.ok_or_else(|| {
            DbError::NotMigrated(format!(
                "{} holds no PostgreSQL password: the embedded cluster was never initialized",
                layout.secrets.display()
            ))
        })?;
        let mut admin = tokio_postgres::Config::new();
        admin
            .host_path(&layout.socket_dir)
            .port(port)
            .user(SUPERUSER)
            .password(password.expose())
            .dbname(EMBEDDED_DATABASE)
            .application_name("orgbase-admin");
        let mut runtime = admin.clone();
        runtime.user(RUNTIME_ROLE).application_name("orgbase");
        Self::finish(admin, runtime, config, Some(layout.secrets.clone()), true)
    }

    /// An external server: `database.url` (administrative) and optionally `database.runtime_url`.
    pub fn external(config: &Config) -> Result<Self, DbError> {
        let url = config
            .database
            .url
            .as_ref()
            .ok_or_else(|| DbError::Url("database.url is not set".into()))?;
        let admin: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|e| DbError::Url(format!("database.url: {e}")))?;
        let (runtime, managed) = match &config.database.runtime_url {
            Some(u) => (
                u.expose()
                    .parse()
                    .map_err(|e| DbError::Url(format!("database.runtime_url: {e}")))?,
                None,
            ),
            None => {
                let mut r = admin.clone();
                r.user(RUNTIME_ROLE);
                (r, Some(config.data_dir.join("secrets")))
            }
        };
        Self::finish(admin, runtime, config, managed, false)
    }

    fn finish(
        mut admin: tokio_postgres::Config,
        mut runtime: tokio_postgres::Config,
        config: &Config,
        managed_secrets: Option<PathBuf>,
        embedded: bool,
    ) -> Result<Self, DbError> {
        let timeout = config.database.connect_timeout();
        admin.connect_timeout(timeout);
        // Request connections run in UTC whatever the server's default, as the embedded
        // cluster does: the API's timestamps read the same on every server, and the server
        // renders rows' JSON itself on that assumption (`crate::json`).
        runtime.connect_timeout(timeout).options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout=60000 -c TimeZone=UTC",
            config.database.statement_timeout_ms
        ));
        let create_database =
            embedded.then(|| admin.get_dbname().unwrap_or(EMBEDDED_DATABASE).to_string());
        Ok(Self {
            admin,
            runtime,
            managed_secrets,
            create_database,
            connect_timeout: timeout,
        })
    }

    /// The same server, another database (tests use one database per test).
    pub fn with_database(&self, name: &str) -> Self {
        let mut t = self.clone();
        t.admin.dbname(name);
        t.runtime.dbname(name);
        t.create_database = None;
        t
    }

    pub fn admin_config(&self) -> &tokio_postgres::Config {
        &self.admin
    }

    pub fn runtime_config(&self) -> &tokio_postgres::Config {
        &self.runtime
    }

    pub fn database_name(&self) -> &str {
        self.admin.get_dbname().unwrap_or(EMBEDDED_DATABASE)
    }

    /// Connect as administrator to the target database.
    pub async fn admin(&self) -> Result<Client, DbError> {
        connect(&self.admin, self.connect_timeout).await
    }

    /// Connect as administrator to another database of the same server (e.g. `postgres`).
    pub async fn admin_to(&self, dbname: &str) -> Result<Client, DbError> {
        let mut c = self.admin.clone();
        c.dbname(dbname);
        connect(&c, self.connect_timeout).await
    }

    /// Create the embedded cluster's database on first run.
    pub async fn ensure_database(&self) -> Result<(), DbError> {
        let Some(name) = &self.create_database else {
            return Ok(());
        };
        let client = self.admin_to("postgres").await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[name])
            .await?
            .is_some();
        if !exists {
            let quoted: String = client
                .query_one("SELECT quote_ident($1)", &[name])
                .await?
                .get(0);
            client
                .batch_execute(&format!("CREATE DATABASE {quoted}"))
                .await?;
            tracing::info!(database = %name, "database created");
        }
        Ok(())
    }

    /// Apply pending migrations as administrator.
    pub async fn migrate_up(&self, migrator: &Migrator) -> Result<Vec<i64>, DbError> {
        let mut client = self.admin().await?;
        Ok(migrator.up(&mut client, None, |_, _| {}).await?)
    }

    /// Make sure the runtime role can log in: with `database.runtime_url` as configured; otherwise
    /// with a generated password kept under `secrets/`, (re)set when it does not work.
    pub async fn ensure_runtime_login(&mut self) -> Result<(), DbError> {
        let Some(dir) = self.managed_secrets.clone() else {
            return Ok(());
        };
        if let Some(pw) = secrets::read(&dir, RUNTIME_ROLE)? {
            self.runtime.password(pw.expose());
            if connect(&self.runtime, self.connect_timeout).await.is_ok() {
                return Ok(());
            }
        }
        let admin = self.admin().await?;
        let role_exists = admin
            .query_opt(
                "SELECT 1 FROM pg_roles WHERE rolname = $1",
                &[&RUNTIME_ROLE],
            )
            .await?
            .is_some();
        if !role_exists {
            return Err(DbError::NotMigrated(format!(
                "the role {RUNTIME_ROLE} does not exist: the database is not migrated; run \
                 `orgbase migrate up`"
            )));
        }
        let pw = secrets::generate()?;
        let sql: String = admin
            .query_one(
                "SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)",
                &[&RUNTIME_ROLE, &pw.expose()],
            )
            .await?
            .get(0);
        admin.batch_execute(&sql).await?;
        secrets::write(&dir, RUNTIME_ROLE, &pw)?;
        self.runtime.password(pw.expose());
        tracing::info!(role = RUNTIME_ROLE, "runtime role password set");
        Ok(())
    }

    /// A connection configuration for the backup role, with a generated password kept in
    /// `secrets_dir` ((re)set through the administrative connection when it does not work).
    pub async fn backup_login(
        &self,
        secrets_dir: &Path,
    ) -> Result<tokio_postgres::Config, DbError> {
        let mut backup = self.admin.clone();
        backup.user(BACKUP_ROLE).application_name("orgbase-backup");
        if let Some(pw) = secrets::read(secrets_dir, BACKUP_ROLE)? {
            backup.password(pw.expose());
            if connect(&backup, self.connect_timeout).await.is_ok() {
                return Ok(backup);
            }
        }
        let admin = self.admin().await?;
        let role_exists = admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&BACKUP_ROLE])
            .await?
            .is_some();
        if !role_exists {
            return Err(DbError::NotMigrated(format!(
                "the role {BACKUP_ROLE} does not exist: the database is not migrated; run \
                 `orgbase migrate up`"
            )));
        }
        let pw = secrets::generate()?;
        let sql: String = admin
            .query_one(
                "SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)",
                &[&BACKUP_ROLE, &pw.expose()],
            )
            .await?
            .get(0);
        admin.batch_execute(&sql).await?;
        secrets::write(secrets_dir, BACKUP_ROLE, &pw)?;
        backup.password(pw.expose());
        tracing::info!(role = BACKUP_ROLE, "backup role password set");
        Ok(backup)
    }

    /// The request pool, connected as the runtime role, behind its admission `limits`.
    pub fn runtime_pool(&self, max_size: usize, limits: Limits) -> Result<Pool, DbError> {
        Pool::build(self.runtime.clone(), max_size, self.connect_timeout, limits)
    }
}

async fn connect(config: &tokio_postgres::Config, timeout: Duration) -> Result<Client, DbError> {
    let target = describe(config);
    let fut = config.connect(NoTls);
    let (client, connection) =
        match tokio::time::timeout(timeout + Duration::from_secs(1), fut).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(source)) => return Err(DbError::Connect { target, source }),
            Err(_) => {
                return Err(DbError::ConnectTimeout {
                    target,
                    secs: timeout.as_secs(),
                });
            }
        };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "admin connection closed");
        }
    });
    Ok(client)
}

/// Readiness: can the runtime role run a query, and is the schema at this binary's version?
pub async fn readiness(pool: &Pool, latest: i64) -> Result<(), String> {
    let client = pool
        .get()
        .await
        .map_err(|e| format!("database unreachable: {e}"))?;
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM orgbase.schema_migrations",
            &[],
        )
        .await
        .map_err(|e| format!("database not migrated: {e}"))?;
    let applied: i64 = row.get(0);
    if applied < latest {
        return Err(format!(
            "database schema is at migration {applied}, this orgbase needs {latest}"
        ));
    }
    if applied > latest {
        return Err(format!(
            "database schema is at migration {applied}, which this orgbase (newest {latest}) does \
             not know: a newer orgbase migrated it, or one from before the baseline schema \
             (then `orgbase migrate up` records it at the baseline)"
        ));
    }
    Ok(())
}

/// A readable secret file path, for messages.
pub fn secrets_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

/// Redacted form of a URL for logs.
pub fn redact(url: &Secret) -> String {
    match url.expose().parse::<tokio_postgres::Config>() {
        Ok(c) => describe(&c),
        Err(_) => "[unparseable URL]".into(),
    }
}
