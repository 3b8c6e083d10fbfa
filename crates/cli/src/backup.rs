//! `orgbase backup …`, `orgbase pitr …` and the hidden `orgbase wal …` that PostgreSQL's
//! archive/restore commands call; the backup schedule of `serve`; the embedded cluster's WAL
//! archiving settings. The work itself is in the orgbase-backup crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use orgbase_backup::dump::{DATABASE_PRIVILEGES, PREPARE_ROLES, RestoreTarget};
use orgbase_backup::metrics::BackupMetrics;
use orgbase_backup::pipe::progress;
use orgbase_backup::pitr::{conf_quote, sh_quote};
use orgbase_backup::{Backups, KeyRing, Kind, Manifest};
use orgbase_core::Config;
use orgbase_db::{BinSearch, Cluster, Target};

use crate::commands::{confirm, open};

#[derive(Debug, Args)]
pub struct StoreArg {
    /// Backup store: a directory or s3://bucket/prefix [default: backup.store, else
    /// <data_dir>/backups].
    #[arg(long, visible_alias = "to", value_name = "DIR|s3://…")]
    pub store: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up the database: pg_dump (as the orgbase_backup role) → zstd → AES-256-GCM → store,
    /// with a JSON manifest (sizes, checksum, duration, schema version, key id, row counts).
    Create {
        #[command(flatten)]
        store: StoreArg,
        /// Tier label; tiers of backup.tiers are pruned by their retention, `manual` never.
        #[arg(long, default_value = "manual")]
        tier: String,
    },
    /// List the backups in the store (logical dumps and base backups), oldest first.
    List {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Check a backup: checksum, full decryption and `pg_restore --list`. With --restore, also
    /// restore it into a scratch embedded cluster, run `orgbase check` and compare row counts
    /// with the manifest; the scratch cluster is removed afterwards. Exits 1 on any failure.
    Verify {
        /// The backup id (from `orgbase backup list`).
        id: String,
        /// Also restore it into a scratch embedded cluster, run `orgbase check` there and
        /// compare row counts with the manifest (takes as long as a restore).
        #[arg(long)]
        restore: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Restore a logical backup. Without --into it replaces orgbase's database (the old one is
    /// kept, renamed, until you drop it); stop `orgbase serve` first. With --into URL it restores
    /// into that existing, empty database.
    Restore {
        id: String,
        /// An existing, empty database (administrative URL) to restore into.
        #[arg(long, value_name = "URL")]
        into: Option<String>,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete backups past their tier's retention (backup.tiers), base backups older than
    /// backup.pitr_keep_days and the WAL only they needed. The newest backup always stays.
    Prune {
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Make a new backup master key version (<data_dir>/keys/backup). Older versions stay, to
    /// decrypt older backups. Happens by itself when the key is older than backup.key_max_age_days.
    RotateKey,
}

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// archive_command: encrypt WAL file PATH into the store as NAME.
    Archive { path: PathBuf, name: String },
    /// restore_command: fetch WAL file NAME from the store to PATH (exit 1 when absent).
    Fetch { name: String, path: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum PitrCommand {
    /// Take a base backup of the embedded cluster (pg_basebackup → zstd → AES-256-GCM → store).
    BaseBackup {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Rebuild the embedded cluster as it was at a point in time: the newest base backup before
    /// it, then archived WAL replayed up to it. The current cluster directory is kept as
    /// pg.before-pitr-<time>. Stop `orgbase serve` first.
    Restore {
        /// Target time, RFC 3339 (e.g. 2026-11-23T18:30:00Z).
        #[arg(long, value_name = "TIME")]
        to_time: chrono::DateTime<chrono::Utc>,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

static CONFIG_FILE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The `--config` file of this run, passed on to archive_command.
pub fn remember_config_file(path: Option<PathBuf>) {
    let _ = CONFIG_FILE.set(path.and_then(|p| std::fs::canonicalize(p).ok()));
}

fn bin_dir(config: &Config) -> anyhow::Result<PathBuf> {
    Ok(BinSearch::system(config.embedded.bin_dir.clone()).find()?)
}

fn backups(config: &Config, store: &StoreArg) -> anyhow::Result<Backups> {
    let mut c = config.clone();
    if let Some(s) = &store.store {
        c.backup.store = Some(s.clone());
    }
    Ok(Backups::from_config(&c, bin_dir(config)?)?)
}

/// The backup role's connection: backup.url, or a generated password under <data_dir>/secrets.
async fn backup_conn(config: &Config, target: &Target) -> anyhow::Result<tokio_postgres::Config> {
    if let Some(url) = &config.backup.url {
        return url.expose().parse().context("backup.url");
    }
    Ok(target
        .backup_login(&config.data_dir.join("secrets"))
        .await?)
}

fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

fn print_manifest(m: &Manifest) {
    println!(
        "backup {} ({}, tier {}): {} raw, {} compressed, {} stored in {:.1} s; sha256 {}; key {} v{}",
        m.id,
        m.kind,
        m.tier,
        mb(m.raw_bytes),
        mb(m.compressed_bytes),
        mb(m.stored_bytes),
        m.duration_ms as f64 / 1000.0,
        m.sha256,
        m.key_id,
        m.key_version
    );
}

/// Keep what a verification found next to the backup (the console's backups page shows the last
/// of each kind). A record that cannot be written is reported; the verification's own result
/// stands.
async fn record_check(
    b: &Backups,
    m: &Manifest,
    kind: &str,
    started: std::time::Instant,
    outcome: &anyhow::Result<String>,
) {
    let check = orgbase_backup::checks::Check {
        backup_id: m.id.clone(),
        kind: kind.into(),
        at: chrono::Utc::now(),
        ok: outcome.is_ok(),
        detail: match outcome {
            Ok(d) => d.clone(),
            Err(e) => format!("{e:#}"),
        },
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if let Err(e) = check.save(&b.store).await {
        eprintln!("warning: the result of this check was not recorded in the store: {e}");
    }
}

async fn find(b: &Backups, id: &str) -> anyhow::Result<Manifest> {
    match Manifest::load(&b.store, Kind::Dump, id).await {
        Ok(m) => Ok(m),
        Err(orgbase_backup::BackupError::NotFound(msg)) => {
            match Manifest::load(&b.store, Kind::Base, id).await {
                Ok(m) => Ok(m),
                Err(_) => bail!(msg),
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn backup(config: Config, cmd: BackupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BackupCommand::Create { store, tier } => {
            let b = backups(&config, &store)?;
            let opened = open(&config, true).await?;
            let result = async {
                let conn = backup_conn(&config, &opened.target).await?;
                let previous = Manifest::list(&b.store, Kind::Dump).await?.pop();
                let m = b
                    .create_dump(&conn, &tier, progress(None, "backup"))
                    .await?;
                orgbase_backup::metrics::warnings(&m, previous.as_ref());
                anyhow::Ok(m)
            }
            .await;
            opened.close().await?;
            let m = result?;
            print_manifest(&m);
            println!("stored in {}", b.store.location());
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::List { store } => {
            let b = backups(&config, &store)?;
            println!(
                "{:<24}  {:<4}  {:<7}  {:<20}  {:>10}  {:>10}  {:>8}  {:<6}  key",
                "id", "kind", "tier", "finished (UTC)", "raw MB", "stored MB", "secs", "schema"
            );
            let mut all = Manifest::list(&b.store, Kind::Dump).await?;
            all.extend(Manifest::list(&b.store, Kind::Base).await?);
            all.sort_by_key(|m| m.started_at);
            for m in &all {
                println!(
                    "{:<24}  {:<4}  {:<7}  {:<20}  {:>10.1}  {:>10.1}  {:>8.1}  {:<6}  {} v{}",
                    m.id,
                    m.kind,
                    m.tier,
                    m.finished_at.format("%Y-%m-%d %H:%M:%S"),
                    m.raw_bytes as f64 / 1e6,
                    m.stored_bytes as f64 / 1e6,
                    m.duration_ms as f64 / 1000.0,
                    m.schema_version
                        .map(|v| v.to_string())
                        .unwrap_or("-".into()),
                    m.key_id,
                    m.key_version
                );
            }
            eprintln!("{} backup(s) in {}", all.len(), b.store.location());
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify { id, restore, store } => {
            let b = backups(&config, &store)?;
            let m = find(&b, &id).await?;
            let started = std::time::Instant::now();
            let verified = async {
                match m.kind {
                    Kind::Dump => {
                        let n = b
                            .verify_dump(&m, progress(Some(m.raw_bytes), "verify"))
                            .await?;
                        anyhow::Ok(format!(
                            "checksum matches, every segment decrypts and authenticates, \
                             pg_restore lists {n} entries"
                        ))
                    }
                    Kind::Base => {
                        b.read_object(&m, progress(Some(m.raw_bytes), "verify"), |src, pb| {
                            orgbase_backup::pipe::copy(src, &mut std::io::sink(), pb)
                                .map_err(|e| orgbase_backup::pipe::object_error("base backup", e))
                                .map(|_| ())
                        })
                        .await?;
                        Ok("checksum matches, every segment decrypts and authenticates".into())
                    }
                }
            }
            .await;
            record_check(&b, &m, "verify", started, &verified).await;
            let detail = match verified {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("backup {id} FAILED verification: {e:#}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            println!("ok: {} — {detail}", m.id);
            if !restore {
                return Ok(ExitCode::SUCCESS);
            }
            if m.kind == Kind::Base {
                eprintln!(
                    "note: --restore applies to logical dumps; `orgbase pitr restore` restores base backups"
                );
                return Ok(ExitCode::SUCCESS);
            }
            let started = std::time::Instant::now();
            let drilled = async {
                let r = b
                    .verify_restore(&m, &config.embedded, progress(Some(m.raw_bytes), "restore"))
                    .await?;
                if !r.findings.is_empty() {
                    for f in &r.findings {
                        println!("{f}");
                    }
                    bail!(
                        "the restored database has {} check finding(s)",
                        r.findings.len()
                    );
                }
                anyhow::Ok(format!(
                    "restored into a scratch cluster: `orgbase check` clean, {} tables and {} rows \
                     match the manifest",
                    r.tables, r.rows
                ))
            }
            .await;
            record_check(&b, &m, "restore", started, &drilled).await;
            match drilled {
                Ok(detail) => {
                    println!("ok: {detail}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("backup {id} FAILED the restore drill: {e:#}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        BackupCommand::Restore {
            id,
            into,
            yes,
            store,
        } => {
            let b = backups(&config, &store)?;
            let m = Manifest::load(&b.store, Kind::Dump, &id).await?;
            restore(&config, &b, &m, into, yes).await
        }
        BackupCommand::Prune { dry_run, store } => {
            let b = backups(&config, &store)?;
            let n = prune(&config, &b, dry_run).await?;
            println!(
                "{} {n} object(s)",
                if dry_run { "would delete" } else { "deleted" }
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::RotateKey => {
            let mut ring = KeyRing::load(KeyRing::source(&config)?, true)?;
            let (id, version) = {
                let k = ring.rotate()?;
                (k.id.clone(), k.version)
            };
            println!(
                "new backup master key {} (version {}); {} version(s) kept in {}",
                id,
                version,
                ring.all().len(),
                ring.dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn restore(
    config: &Config,
    b: &Backups,
    m: &Manifest,
    into: Option<String>,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(url) = into {
        let c: tokio_postgres::Config = url.parse().context("--into: not a PostgreSQL URL")?;
        let what = orgbase_db::database::describe(&c);
        if !yes {
            confirm(&format!("Restore backup {} into {what}?", m.id))?;
        }
        let (client, conn) = c
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {what}"))?;
        tokio::spawn(conn);
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r','p','v','m') AND n.nspname NOT IN ('pg_catalog','information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_%'",
                &[],
            )
            .await?
            .get(0);
        if tables > 0 {
            bail!(
                "--into {what}: the database is not empty ({tables} tables or views); restore into a new, empty database"
            );
        }
        client.batch_execute(PREPARE_ROLES).await?;
        b.restore_dump(
            m,
            &RestoreTarget {
                env: Vec::new(),
                dbname: url,
            },
            progress(Some(m.raw_bytes), "restore"),
        )
        .await?;
        client.batch_execute(DATABASE_PRIVILEGES).await?;
        orgbase_backup::dump::compare_row_counts(&client, m).await?;
        println!(
            "restored {} into {what}; row counts match the manifest",
            m.id
        );
        return Ok(ExitCode::SUCCESS);
    }
    let opened = open(config, false).await.context(
        "restoring replaces orgbase's database: stop `orgbase serve` first (or use --into URL)",
    )?;
    let result = async {
        let target = &opened.target;
        let name = target.database_name().to_string();
        if !yes {
            confirm(&format!(
                "Replace database {} with backup {} (from {})? The current database is kept, renamed.",
                orgbase_db::database::describe(target.admin_config()),
                m.id,
                m.finished_at
            ))?;
        }
        let admin = target.admin_to("postgres").await?;
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let restoring = format!("{name}_restoring");
        let kept = format!("{name}_before_restore_{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote(&restoring)))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {} TEMPLATE template0", quote(&restoring)))
            .await?;
        let new_target = target.with_database(&restoring);
        let client = new_target.admin().await?;
        client.batch_execute(PREPARE_ROLES).await?;
        b.restore_dump(
            m,
            &RestoreTarget::from_config(new_target.admin_config()),
            progress(Some(m.raw_bytes), "restore"),
        )
        .await?;
        client.batch_execute(DATABASE_PRIVILEGES).await?;
        orgbase_backup::dump::compare_row_counts(&client, m).await?;
        drop(client);
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}",
                quote(&name),
                quote(&kept),
                quote(&restoring),
                quote(&name)
            ))
            .await
            .context("swapping the restored database in (are other sessions connected?)")?;
        println!(
            "restored {} into {name}; row counts match the manifest. The previous database is \
             kept as {kept} (DROP DATABASE it when satisfied).",
            m.id
        );
        anyhow::Ok(())
    }
    .await;
    opened.close().await?;
    result.map(|()| ExitCode::SUCCESS)
}

async fn prune(config: &Config, b: &Backups, dry_run: bool) -> anyhow::Result<usize> {
    let tiers = config.backup.parse_tiers()?;
    let dumps = Manifest::list(&b.store, Kind::Dump).await?;
    let bases = Manifest::list(&b.store, Kind::Base).await?;
    let wal: Vec<String> = b
        .store
        .list("wal")
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    let plan = orgbase_backup::prune::plan(
        &tiers,
        &dumps,
        &bases,
        Duration::from_secs(u64::from(config.backup.pitr_keep_days) * 86_400),
        &wal,
        chrono::Utc::now(),
    );
    let mut n = 0;
    for m in &plan.backups {
        println!(
            "{} {} backup {} (tier {}, {})",
            if dry_run { "would delete" } else { "deleting" },
            m.kind,
            m.id,
            m.tier,
            m.finished_at
        );
        if !dry_run {
            // The manifest first: a backup without one is not listed, whatever is left of it.
            b.store.delete(&Manifest::path(m.kind, &m.id)).await?;
            b.store.delete(&m.object).await?;
            for c in b.store.list(&orgbase_backup::checks::prefix(&m.id)).await? {
                b.store.delete(&c.name).await?;
            }
        }
        n += 1;
    }
    for w in &plan.wal {
        if !dry_run {
            b.store.delete(w).await?;
        }
        n += 1;
    }
    if !plan.wal.is_empty() {
        println!(
            "{} {} WAL file(s) older than every kept base backup",
            if dry_run { "would delete" } else { "deleted" },
            plan.wal.len()
        );
    }
    Ok(n)
}

/// `orgbase wal archive|fetch`: called by PostgreSQL; never starts a cluster.
pub async fn wal(config: Config, cmd: WalCommand) -> anyhow::Result<ExitCode> {
    let b = backups(&config, &StoreArg { store: None })?;
    match cmd {
        WalCommand::Archive { path, name } => {
            b.archive_wal(&path, &name).await?;
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Fetch { name, path } => {
            if b.fetch_wal(&name, &path).await? {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// The postgresql.conf lines for WAL archiving into the store, when backup.pitr is on. Called
/// with every start of the embedded cluster; makes the key and the store's wal/ usable by
/// PostgreSQL's OS user.
pub fn prepare_cluster(config: &Config, cluster: &mut Cluster) -> anyhow::Result<()> {
    if !config.backup.pitr {
        return Ok(());
    }
    let b = Backups::from_config(config, cluster.bin_dir().to_path_buf())?;
    let ring = b.encrypting_keys()?;
    let data = &cluster.layout.root;
    if let Some((uid, gid)) = cluster.os_user_ids() {
        let mut paths: Vec<PathBuf> = Vec::new();
        if let Some(dir) = ring.dir() {
            paths.extend(dir.parent().map(Path::to_path_buf));
            paths.push(dir.to_path_buf());
            for e in std::fs::read_dir(dir)?.flatten() {
                paths.push(e.path());
            }
        }
        if let Some(root) = b.store.local_root() {
            std::fs::create_dir_all(root.join("wal"))?;
            paths.push(root.to_path_buf());
            paths.push(root.join("wal"));
        }
        for p in paths {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                .with_context(|| format!("handing {} to PostgreSQL's OS user", p.display()))?;
        }
    }
    cluster.set_extra_settings(archive_settings(config, data)?);
    Ok(())
}

fn self_command(config: &Config, data: &Path) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("locating the orgbase binary")?;
    let mut cmd = format!(
        "{} --data-dir {}",
        sh_quote(&exe.display().to_string()),
        sh_quote(&data.display().to_string())
    );
    if let Some(Some(file)) = CONFIG_FILE.get() {
        cmd.push_str(&format!(
            " --config {}",
            sh_quote(&file.display().to_string())
        ));
    }
    if let Some(store) = &config.backup.store {
        // A relative store path must mean the same to PostgreSQL, whose working directory differs.
        if !store.contains("://") {
            let abs = std::fs::canonicalize(store).unwrap_or_else(|_| PathBuf::from(store));
            cmd = format!(
                "ORGBASE_BACKUP__STORE={} {cmd}",
                sh_quote(&abs.display().to_string())
            );
        }
    }
    Ok(format!("ORGBASE_LOG=warn {cmd}"))
}

fn archive_settings(config: &Config, data: &Path) -> anyhow::Result<String> {
    let cmd = self_command(config, data)?;
    Ok(format!(
        "# WAL archiving for point-in-time recovery (backup.pitr)\n\
         archive_mode = on\n\
         archive_command = {}\n\
         archive_timeout = {}\n",
        conf_quote(&format!("{cmd} wal archive %p %f")),
        config.backup.archive_timeout_secs
    ))
}

pub async fn pitr(config: Config, cmd: PitrCommand) -> anyhow::Result<ExitCode> {
    if !config.embedded() {
        bail!(
            "point-in-time recovery is for the embedded cluster; with --database-url use your server's own"
        );
    }
    match cmd {
        PitrCommand::BaseBackup { store } => {
            if !config.backup.pitr {
                eprintln!(
                    "note: backup.pitr is off: without WAL archiving a base backup restores only to its own end"
                );
            }
            let b = backups(&config, &store)?;
            let opened = open(&config, true).await?;
            let r = b
                .base_backup(
                    opened.target.admin_config(),
                    "base",
                    progress(None, "base backup"),
                )
                .await;
            opened.close().await?;
            let m = r?;
            print_manifest(&m);
            Ok(ExitCode::SUCCESS)
        }
        PitrCommand::Restore { to_time, yes } => pitr_restore(&config, to_time, yes).await,
    }
}

async fn pitr_restore(
    config: &Config,
    to: chrono::DateTime<chrono::Utc>,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let b = backups(config, &StoreArg { store: None })?;
    let base = b.base_before(to).await?;
    let search = BinSearch::system(config.embedded.bin_dir.clone());
    let mut cluster = Cluster::open(&config.data_dir, &config.embedded, &search)
        .context("point-in-time recovery rebuilds the cluster: stop `orgbase serve` first")?;
    let pgdata = cluster.layout.pgdata.clone();
    if !yes {
        confirm(&format!(
            "Rebuild the embedded cluster at {to} from base backup {} ({}) and archived WAL? The \
             current cluster directory is kept aside.",
            base.id, base.finished_at
        ))?;
    }
    let kept = pgdata.with_file_name(format!(
        "pg.before-pitr-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    ));
    if pgdata.exists() {
        std::fs::rename(&pgdata, &kept)
            .with_context(|| format!("moving {} aside", pgdata.display()))?;
        println!("the current cluster is kept in {}", kept.display());
    }
    std::fs::create_dir_all(&pgdata)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))?;
    }
    b.unpack_base(
        &base,
        &pgdata,
        progress(Some(base.raw_bytes), "base backup"),
    )
    .await?;
    std::fs::write(pgdata.join("recovery.signal"), b"")?;
    if let Some((uid, gid)) = cluster.os_user_ids() {
        let status = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(&pgdata)
            .status()?;
        if !status.success() {
            bail!("chown -R {} failed", pgdata.display());
        }
    }
    let data = cluster.layout.root.clone();
    let mut settings = if config.backup.pitr {
        prepare_cluster(config, &mut cluster)?;
        archive_settings(config, &data)?
    } else {
        String::new()
    };
    settings.push_str(&format!(
        "# Point-in-time recovery to {to} (orgbase pitr restore)\n\
         restore_command = {}\n\
         recovery_target_time = {}\n\
         recovery_target_action = 'promote'\n",
        conf_quote(&format!("{} wal fetch %f %p", self_command(config, &data)?)),
        conf_quote(&to.to_rfc3339()),
    ));
    cluster.set_extra_settings(settings);
    let started = std::time::Instant::now();
    let running = tokio::task::spawn_blocking(move || cluster.start())
        .await
        .context("starting PostgreSQL")?
        .context("starting PostgreSQL in recovery (see its log)")?;
    let target = Target::embedded(&running, config)?;
    let admin = target.admin_to("postgres").await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let in_recovery: bool = admin
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get(0);
        if !in_recovery {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "recovery did not finish within an hour; see {}",
                running.layout().log_file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(admin);
    tokio::task::spawn_blocking(move || running.stop()).await??;
    println!(
        "recovered to {to} from base backup {} in {:.1} s; the cluster is ready (`orgbase serve`)",
        base.id,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The backup series of `/metrics` from the start of `serve`: the newest backup of each kind in
/// the store, or zeros (a store that cannot be read now is logged; the series still appear).
pub async fn start_metrics(config: &Config, metrics: &BackupMetrics) {
    let mut kinds = vec![Kind::Dump];
    if config.backup.pitr && config.embedded() {
        kinds.push(Kind::Base);
    }
    let store = backups(config, &StoreArg { store: None }).map(|b| b.store);
    for kind in kinds {
        let latest = match &store {
            Ok(store) => match Manifest::list(store, kind).await {
                Ok(mut all) => all.pop(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the backup store for /metrics");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "opening the backup store for /metrics");
                None
            }
        };
        metrics.start(&format!("{kind:?}").to_lowercase(), latest.as_ref());
    }
}

/// The backup schedule of `serve`: every `backup.schedule_check_secs` (60), take the due tier's
/// backup (and a base backup when PITR is on and one is due), then prune. Failures are counted,
/// logged and retried after 10 minutes.
pub fn spawn_scheduler(
    config: &Config,
    target: &Target,
    metrics: BackupMetrics,
) -> Option<tokio::task::JoinHandle<()>> {
    if !config.backup.schedule {
        return None;
    }
    let config = config.clone();
    let target = target.clone();
    Some(tokio::spawn(async move {
        let mut retry_after = tokio::time::Instant::now();
        let every = Duration::from_secs(config.backup.schedule_check_secs);
        loop {
            tokio::time::sleep(every).await;
            if tokio::time::Instant::now() < retry_after {
                continue;
            }
            if let Err(e) = scheduled_round(&config, &target, &metrics).await {
                tracing::error!(error = %format!("{e:#}"), "scheduled backup failed; retrying in 10 minutes");
                retry_after = tokio::time::Instant::now() + Duration::from_secs(600);
            }
        }
    }))
}

async fn scheduled_round(
    config: &Config,
    target: &Target,
    metrics: &BackupMetrics,
) -> anyhow::Result<()> {
    // Any error before a backup exists (a store that cannot be opened or listed, no connection)
    // counts as a failed backup: the failure metric is what alerts.
    let b = backups(config, &StoreArg { store: None }).inspect_err(|_| metrics.failure("dump"))?;
    let now = chrono::Utc::now();
    scheduled_dump(config, target, metrics, &b, now)
        .await
        .inspect_err(|_| metrics.failure("dump"))?;
    if config.backup.pitr && config.embedded() {
        scheduled_base(config, target, metrics, &b, now)
            .await
            .inspect_err(|_| metrics.failure("base"))?;
    }
    prune(config, &b, false).await?;
    Ok(())
}

/// The due tier's logical backup, if one is due.
async fn scheduled_dump(
    config: &Config,
    target: &Target,
    metrics: &BackupMetrics,
    b: &Backups,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let tiers = config.backup.parse_tiers()?;
    let dumps = Manifest::list(&b.store, Kind::Dump).await?;
    if let Some(tier) = orgbase_backup::prune::due_tier(&tiers, &dumps, now) {
        let conn = backup_conn(config, target).await?;
        let m = b
            .create_dump(&conn, &tier.name, progress(None, "backup"))
            .await?;
        metrics.success(&m, dumps.last());
        tracing::info!(backup = %m.id, tier = %m.tier, bytes = m.stored_bytes, "scheduled backup done");
    }
    Ok(())
}

/// A base backup for PITR, if `backup.base_backup_every_hours` have passed since the last one.
async fn scheduled_base(
    config: &Config,
    target: &Target,
    metrics: &BackupMetrics,
    b: &Backups,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let bases = Manifest::list(&b.store, Kind::Base).await?;
    let due = bases.last().is_none_or(|m| {
        (now - m.started_at).to_std().unwrap_or_default()
            >= Duration::from_secs(u64::from(config.backup.base_backup_every_hours) * 3600)
    });
    if due {
        let m = b
            .base_backup(target.admin_config(), "base", progress(None, "base backup"))
            .await?;
        metrics.success(&m, bases.last());
    }
    Ok(())
}

/// The backups of `serve` for the operators' API and console page, or `None` (those routes
/// then answer 503) when the store or the backup role cannot be reached now.
pub async fn service(
    config: &Config,
    target: &Target,
    metrics: BackupMetrics,
) -> Option<orgbase_backup::service::BackupService> {
    use orgbase_backup::service::{BackupService, Login};
    let made = async {
        let b = backups(config, &StoreArg { store: None })?;
        // As `backup_conn`: the configured URL, else the generated password (checked now).
        let login = match &config.backup.url {
            Some(url) => Login::Url(Box::new(url.expose().parse().context("backup.url")?)),
            None => Login::Generated {
                target: Box::new(target.clone()),
                secrets: config.data_dir.join("secrets"),
            },
        };
        if let Login::Generated { target, secrets } = &login {
            target.backup_login(secrets).await?;
        }
        anyhow::Ok(BackupService::new(
            b,
            login,
            metrics,
            config.backup.schedule,
        ))
    }
    .await;
    made.inspect_err(|e| {
        tracing::warn!(error = %format!("{e:#}"), "the operators' backup page is off: the backup store or role cannot be reached")
    })
    .ok()
}
