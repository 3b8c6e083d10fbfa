//! What each subcommand does.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use orgbase_core::config::{self, Config, LogFormat, Sources};
use orgbase_db::cluster::{ClusterError, Layout};
use orgbase_db::migrate::State;
use orgbase_db::{BinSearch, Cluster, Migrator, RunningCluster, Target};

use crate::{BenchCommand, Cli, Command, ConfigCommand, DbCommand, MigrateCommand, ServeArgs};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::EXAMPLE);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Version => {
            println!(
                "orgbase {} (schema migration {})",
                orgbase_core::VERSION,
                Migrator::embedded("").latest()
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    crate::backup::remember_config_file(cli.global.config.clone());
    let config = load_config(&cli)?;
    init_tracing(&config, cli.global.log.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(config, args).await,
            Command::Migrate(cmd) => migrate(config, cmd).await,
            Command::Db(DbCommand::Psql { args }) => psql(config, args).await,
            Command::Config(ConfigCommand::Check) => {
                let mut shown = config.clone();
                for url in [
                    &mut shown.database.url,
                    &mut shown.database.runtime_url,
                    &mut shown.backup.url,
                ]
                .into_iter()
                .flatten()
                {
                    *url = orgbase_core::Secret::new(orgbase_db::database::redact(url));
                }
                // Keys and credentials are never printed, only whether they are set.
                for secret in [
                    &mut shown.backup.master_key,
                    &mut shown.backup.s3.secret_access_key,
                ]
                .into_iter()
                .flatten()
                {
                    *secret = orgbase_core::Secret::new("[redacted]");
                }
                print!(
                    "{}",
                    toml::to_string_pretty(&shown).context("rendering the configuration")?
                );
                eprintln!("configuration ok");
                Ok(ExitCode::SUCCESS)
            }
            Command::Check => {
                let opened = open(&config, true).await?;
                let code = crate::tools::check(opened.target.clone()).await;
                opened.close().await?;
                code
            }
            Command::Audit(cmd) => {
                let opened = open_migrated(&config).await?;
                let code = crate::audit::run(&opened.target, &config, cmd).await;
                opened.close().await?;
                code
            }
            Command::Purge(args) => {
                let opened = open_migrated(&config).await?;
                let code = crate::tools::purge(&opened.target, &args).await;
                opened.close().await?;
                code
            }
            Command::Slo(cmd) => {
                let opened = open_migrated(&config).await?;
                let code = crate::slo::run(&opened.target, &config, cmd).await;
                opened.close().await?;
                code
            }
            Command::Admin(cmd) => {
                let opened = open_migrated(&config).await?;
                let code =
                    crate::admin::run(&opened.target, &crate::keys::fields(&config)?, cmd).await;
                opened.close().await?;
                code
            }
            Command::Analytics(cmd) => {
                let opened = open_migrated(&config).await?;
                let code = crate::analytics::run(&opened.target, &config, cmd).await;
                opened.close().await?;
                code
            }
            Command::Retention(cmd) => {
                let opened = open_migrated(&config).await?;
                let code = crate::retention::run(&opened.target, cmd).await;
                opened.close().await?;
                code
            }
            Command::Demo => {
                let opened = open_migrated(&config).await?;
                let code =
                    crate::tools::demo(&opened.target, &config, &crate::keys::fields(&config)?)
                        .await;
                opened.close().await?;
                code
            }
            Command::Bench(BenchCommand::Seed(args)) => {
                let opened = open_migrated(&config).await?;
                let code =
                    crate::tools::bench_seed(&opened.target, &args, &crate::keys::fields(&config)?)
                        .await;
                opened.close().await?;
                code
            }
            Command::Backup(cmd) => crate::backup::backup(config, cmd).await,
            Command::Keys(cmd) => {
                let opened = open(&config, true).await?;
                let code = crate::keys::run(&opened.target, &config, cmd).await;
                opened.close().await?;
                code
            }
            Command::Erase(cmd) => crate::privacy::erase(config, cmd).await,
            Command::Pitr(cmd) => crate::backup::pitr(config, cmd).await,
            Command::Wal(cmd) => crate::backup::wal(config, cmd).await,
            Command::Config(ConfigCommand::Example) | Command::Version => Ok(ExitCode::SUCCESS),
        }
    })
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut overrides = Vec::new();
    if let Some(d) = &cli.global.data_dir {
        overrides.push(("data_dir", d.display().to_string()));
    }
    if let Some(u) = &cli.global.database_url {
        overrides.push(("database.url", u.clone()));
    }
    if let Command::Serve(args) = &cli.command {
        if let Some(l) = &args.listen {
            overrides.push(("server.listen", l.clone()));
        }
        if args.no_migrate {
            overrides.push(("database.migrate_on_start", "false".into()));
        }
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    Ok(Config::load(Sources {
        file: cli.global.config.as_deref(),
        env,
        overrides,
    })?)
}

fn init_tracing(config: &Config, flag: Option<&str>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(flag.unwrap_or(&config.log.level))
        .with_context(|| format!("log filter `{}`", flag.unwrap_or(&config.log.level)))?;
    // Colours only for a person at a terminal, never into a file or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("initializing logging: {e}"))
}

fn applied_by() -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::geteuid().to_string());
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}

/// The database this command works on, and the embedded cluster if this process started it.
pub(crate) struct Opened {
    pub(crate) target: Target,
    cluster: Option<RunningCluster>,
}

impl Opened {
    /// The embedded cluster, for `serve` to supervise (and stop) itself.
    pub(crate) fn take_cluster(&mut self) -> Option<RunningCluster> {
        self.cluster.take()
    }

    pub(crate) async fn close(self) -> anyhow::Result<()> {
        if let Some(c) = self.cluster {
            tokio::task::spawn_blocking(move || c.stop())
                .await
                .context("stopping PostgreSQL")??;
        }
        Ok(())
    }
}

/// Start the embedded cluster (or, with `attach`, use the one a running `serve` holds), or use
/// the external server; create the database on first run.
pub(crate) async fn open(config: &Config, attach: bool) -> anyhow::Result<Opened> {
    if !config.embedded() {
        tracing::info!(database = %orgbase_db::database::redact(config.database.url.as_ref().context("database.url")?), "using an external PostgreSQL");
        return Ok(Opened {
            target: Target::external(config)?,
            cluster: None,
        });
    }
    let c = config.clone();
    let started = tokio::task::spawn_blocking(move || {
        let search = BinSearch::system(c.embedded.bin_dir.clone());
        match Cluster::open(&c.data_dir, &c.embedded, &search) {
            Ok(mut cluster) => {
                crate::backup::prepare_cluster(&c, &mut cluster)?;
                Ok(cluster.start().map(Some)?)
            }
            Err(ClusterError::Locked { .. }) if attach => Ok(None),
            Err(e) => Err(anyhow::Error::from(e)),
        }
    })
    .await
    .context("starting PostgreSQL")??;
    let opened = match started {
        Some(running) => Opened {
            target: Target::embedded(&running, config)?,
            cluster: Some(running),
        },
        None => {
            eprintln!(
                "note: a running orgbase holds {}; using its PostgreSQL",
                config.data_dir.display()
            );
            let layout = Layout::new(&config.data_dir)?;
            Opened {
                target: Target::embedded_at(&layout, config.embedded.port, config)?,
                cluster: None,
            }
        }
    };
    opened.target.ensure_database().await?;
    Ok(opened)
}

/// `open`, for the commands that work on orgbase's data: the schema must be at this binary's
/// newest migration, or the command stops before touching anything and says what to run.
pub(crate) async fn open_migrated(config: &Config) -> anyhow::Result<Opened> {
    let opened = open(config, true).await?;
    let problem = Migrator::embedded("")
        .not_current(&opened.target.admin().await?)
        .await?;
    if let Some(problem) = problem {
        opened.close().await?;
        bail!("{problem}");
    }
    Ok(opened)
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: `serve` calls it before it announces its address, so a signal
/// sent as soon as the address is printed stops the server cleanly (embedded PostgreSQL
/// included) instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        match handlers {
            #[cfg(unix)]
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
    }
}

/// Rows per transaction of the account backfill (orgbase_db::account::backfill).
const BACKFILL_BATCH: i64 = 500;

async fn serve(config: Config, _args: ServeArgs) -> anyhow::Result<ExitCode> {
    // The address first: a port in use is said before any PostgreSQL work starts.
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    if config.embedded() {
        // So that a postmaster that dies is reaped here, with its exit status.
        orgbase_db::cluster::adopt_postmasters();
    }
    let mut opened = open(&config, false).await?;
    let migrator = Migrator::embedded(applied_by());
    let mut target = opened.target.clone();
    if config.database.migrate_on_start {
        let applied = target.migrate_up(&migrator).await?;
        if !applied.is_empty() {
            tracing::info!(count = applied.len(), "migrations applied");
        }
    }
    target.ensure_runtime_login().await?;
    let pool = target.runtime_pool(
        config.database.pool_max_size,
        orgbase_db::pool::Limits {
            wait_queue: config.database.pool_wait_queue,
            ..Default::default()
        },
    )?;
    pool.metrics().set_slow_threshold(config.log.slow_query());
    let mut services = {
        let admin = target.admin().await?;
        orgbase_http::Services::load(pool.clone(), &admin).await?
    };
    let keys = crate::keys::open(&config)?;
    services.fields = orgbase_db::fields::Fields::new(keys.clone(), config.keys.field_encryption);
    if services.key.is_some() {
        // Accounts written before accounts were encrypted (or while field encryption was off).
        let mut admin = target.admin().await?;
        orgbase_db::account::backfill(&mut admin, &services.fields, BACKFILL_BATCH)
            .await
            .context("indexing and encrypting account emails")?;
    }
    services.privacy = orgbase_http::Privacy {
        dir: config.privacy.dir(&config.data_dir),
        erasure_grace: std::time::Duration::from_secs(
            u64::from(config.privacy.erasure_grace_days) * 86_400,
        ),
    };
    let backup_metrics = orgbase_backup::metrics::BackupMetrics::default();
    match std::sync::Arc::get_mut(&mut services.metrics) {
        Some(m) => backup_metrics.register(m.registry_mut()),
        None => tracing::warn!("backup metrics not registered: the metrics registry is shared"),
    }
    let supervision = crate::supervise::SupervisionMetrics::default();
    match std::sync::Arc::get_mut(&mut services.metrics) {
        Some(m) => supervision.register(m.registry_mut()),
        None => tracing::warn!(
            "PostgreSQL restart metrics not registered: the metrics registry is shared"
        ),
    }
    let mut supervisor = opened.take_cluster().map(|cluster| {
        crate::supervise::Supervisor::start(
            cluster,
            pool.clone(),
            supervision,
            crate::supervise::RestartLimit {
                limit: config.embedded.restart_limit,
                window: std::time::Duration::from_secs(config.embedded.restart_window_secs),
            },
        )
    });
    crate::backup::start_metrics(&config, &backup_metrics).await;
    services.backups = crate::backup::service(&config, &target, backup_metrics.clone())
        .await
        .map(std::sync::Arc::new);
    let backup_schedule = crate::backup::spawn_scheduler(&config, &target, backup_metrics);
    let privacy_worker = services
        .key
        .is_some()
        .then(|| crate::privacy::spawn_worker(target.clone(), &config, keys.clone()));
    let analytics_refresher = if services.key.is_some() {
        crate::analytics::apply_defaults(&target, &config).await?;
        crate::analytics::spawn_refresher(target.clone(), &config)
    } else {
        None
    };
    let jobs = if services.key.is_some() {
        services.checkpoints = Some(crate::audit::public_key(&config)?);
        Some(crate::audit::Jobs::start(&target, &config, services.metrics.clone()).await?)
    } else {
        None
    };
    let operators = match services.key {
        Some(_) => Some(crate::admin::count(&target).await?),
        None => None,
    };
    let access_drain = services.access_drain.clone();
    let app = orgbase_http::app(
        services,
        migrator.latest(),
        &orgbase_http::HttpSettings::from(&config),
    );
    let addr = listener.local_addr()?;
    let stop = shutdown_signal();
    let data = std::fs::canonicalize(&config.data_dir).unwrap_or(config.data_dir.clone());
    // Output is best effort: a closed stdout must not stop the server.
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    say(format!(
        "orgbase {} listening on http://{addr}",
        orgbase_core::VERSION
    ));
    if config.embedded() {
        say(format!(
            "  data:      {} (embedded PostgreSQL; psql: orgbase db psql)",
            data.display()
        ));
    } else {
        say(format!(
            "  database:  {}",
            orgbase_db::database::describe(target.admin_config())
        ));
    }
    say(format!("  ready:     http://{addr}/readyz"));
    say(format!("  api:       http://{addr}/v1/openapi.json"));
    say(format!("  metrics:   http://{addr}/metrics"));
    say(format!("  console:   http://{addr}/console"));
    if operators == Some(0) {
        say("  No instance operator yet: make one with `orgbase admin create --email you@example.com`.".into());
    }
    say("Press Ctrl-C to stop.".into());
    let gave_up = tokio::select! {
        served = orgbase_http::serve(listener, app, stop, config.server.shutdown_grace()) => {
            served.context("serving HTTP")?;
            None
        }
        e = async {
            match supervisor.as_mut() {
                Some(s) => s.failed().await,
                None => std::future::pending().await,
            }
        } => Some(e),
    };
    if let Some(e) = gave_up {
        // PostgreSQL is down for good: stop at once, non-zero, for the service manager to act.
        for task in [backup_schedule, privacy_worker, analytics_refresher]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        return Err(e);
    }
    // The last requests' access-log lines are written before the pool closes.
    if !access_drain.wait(std::time::Duration::from_secs(10)).await {
        tracing::warn!("access log: lines still queued after 10 s were not written");
    }
    if let Some(task) = backup_schedule {
        task.abort();
    }
    if let Some(task) = privacy_worker {
        task.abort();
    }
    if let Some(task) = analytics_refresher {
        task.abort();
    }
    if let Some(jobs) = jobs {
        jobs.stop(&target).await;
    }
    pool.close();
    if let Some(s) = supervisor {
        s.stop().await.context("stopping PostgreSQL")?;
    }
    opened.close().await?;
    say("orgbase stopped".into());
    Ok(ExitCode::SUCCESS)
}

async fn migrate(config: Config, cmd: MigrateCommand) -> anyhow::Result<ExitCode> {
    let opened = open(&config, true).await?;
    let migrator = Migrator::embedded(applied_by());
    let mut client = opened.target.admin().await?;
    let code = match cmd {
        MigrateCommand::Status => {
            if let Some((at, name)) = migrator.legacy(&client).await? {
                println!("{}", orgbase_db::migrate::Drift::Legacy { at, name });
                opened.close().await?;
                return Ok(ExitCode::SUCCESS);
            }
            let status = migrator.status(&client).await?;
            println!(
                "{:>7}  {:<9}  {:<32}  {:<20}  {:<24}  {:>8}",
                "version", "state", "description", "applied at (UTC)", "applied by", "ms"
            );
            for s in status {
                let (at, by, ms) = match &s.applied {
                    Some(a) => (
                        a.applied_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        a.applied_by.clone(),
                        a.duration_ms.to_string(),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                let state = match s.state {
                    State::Applied => "applied",
                    State::Pending => "pending",
                    State::ChecksumMismatch => "CHANGED",
                    State::Unknown => "UNKNOWN",
                };
                println!(
                    "{:>7}  {:<9}  {:<32}  {:<20}  {:<24}  {:>8}",
                    s.version, state, s.description, at, by, ms
                );
            }
            ExitCode::SUCCESS
        }
        MigrateCommand::Up { to } => {
            let applied = migrator
                .up(&mut client, to, |m, ms| {
                    println!("applied {:04} {} ({ms} ms)", m.version, m.description());
                })
                .await?;
            if applied.is_empty() {
                println!("nothing to apply: the database is at the newest migration");
            }
            let fields = crate::keys::fields(&config)?;
            let n = orgbase_db::account::backfill(&mut client, &fields, BACKFILL_BATCH)
                .await
                .context("indexing and encrypting account emails")?;
            if n > 0 {
                println!("indexed and encrypted the emails of {n} accounts and invitations");
            }
            ExitCode::SUCCESS
        }
        MigrateCommand::Down { to, yes } => {
            let applied: Vec<i64> = orgbase_db::migrate::Migrator::applied(&client)
                .await?
                .into_iter()
                .map(|a| a.version)
                .collect();
            let target = match to {
                Some(t) => t,
                None => applied.iter().rev().nth(1).copied().unwrap_or(0),
            };
            let affected: Vec<i64> = applied.iter().copied().filter(|v| *v > target).collect();
            if affected.is_empty() {
                println!("nothing to revert");
                opened.close().await?;
                return Ok(ExitCode::SUCCESS);
            }
            if !yes {
                confirm(&format!(
                    "Revert migration(s) {affected:?} on {}? Data in the affected tables is lost.",
                    orgbase_db::database::describe(opened.target.admin_config())
                ))?;
            }
            migrator
                .down(&mut client, target, |m, ms| {
                    println!("reverted {:04} {} ({ms} ms)", m.version, m.description());
                })
                .await?;
            ExitCode::SUCCESS
        }
        MigrateCommand::Verify => {
            let drift = migrator.verify(&client).await?;
            let pending = migrator
                .status(&client)
                .await?
                .into_iter()
                .filter(|s| s.state == State::Pending)
                .count();
            for d in &drift {
                println!("{d}");
            }
            if pending > 0 {
                println!(
                    "{pending} migration(s) pending (not drift; `orgbase migrate up` applies them)"
                );
            }
            if drift.is_empty() {
                println!("ok: applied migrations match this binary and the schema has not drifted");
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    };
    drop(client);
    opened.close().await?;
    Ok(code)
}

pub(crate) fn confirm(question: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("{question}\nstdin is not a terminal: pass --yes to confirm");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("cancelled")
    }
}

async fn psql(config: Config, args: Vec<String>) -> anyhow::Result<ExitCode> {
    let opened = open(&config, true).await?;
    let bin = config
        .embedded
        .bin_dir
        .clone()
        .or_else(|| BinSearch::system(None).find().ok())
        .map(|d| d.join("psql"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into());
    let mut cmd = tokio::process::Command::new(&bin);
    match (&config.database.url, config.embedded()) {
        (Some(url), false) => {
            cmd.arg(url.expose());
        }
        _ => {
            cmd.envs(orgbase_db::database::libpq_env(
                opened.target.admin_config(),
            ));
        }
    }
    let status = cmd
        .args(&args)
        .status()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    opened.close().await?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    })
}
