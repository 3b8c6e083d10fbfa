//! `orgbase audit …` and the server's audit jobs: the sealer, signed checkpoints, and the daily
//! retention run that also keeps the monthly partitions of the access logs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use orgbase_core::Config;
use orgbase_db::Target;
use orgbase_db::audit::{self, Signer};
use orgbase_db::observe::{Kind, Label};
use orgbase_http::Metrics;
use tokio_postgres::Client;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every organization's hash chain and compare it with the signed checkpoints.
    ///
    /// Names the first entry that was altered, deleted, inserted or reordered in each broken
    /// chain and exits 1; exits 0 when every chain verifies. Entries not sealed yet (the server
    /// seals within about a second) are counted, not verified.
    Verify(VerifyArgs),
    /// Seal every entry written so far into the chains now (the server does this continuously).
    Seal,
    /// Seal, then write a signed checkpoint of every chain head that moved since the last one.
    Checkpoint,
    /// Print the Ed25519 public key that signs checkpoints (hex), for auditors to pin.
    PublicKey,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this organization (id or slug); `account` for the account-events chain.
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
    /// Directory of checkpoint files [default: audit.checkpoint_dir].
    #[arg(long, value_name = "DIR")]
    pub checkpoints: Option<PathBuf>,
    /// Trust only checkpoints signed by this Ed25519 public key (hex) [default: this data
    /// directory's key, when there is one].
    #[arg(long, value_name = "HEX")]
    pub public_key: Option<String>,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
}

fn secrets(config: &Config) -> PathBuf {
    orgbase_db::database::secrets_dir(&config.data_dir)
}

/// A connection that may seal: the administrator acting as the owner role.
async fn owner(target: &Target) -> anyhow::Result<Client> {
    let client = target.admin().await?;
    client
        .batch_execute("SET ROLE orgbase_owner")
        .await
        .context("switching to the owner role")?;
    Ok(client)
}

pub async fn run(target: &Target, config: &Config, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify(args) => verify(target, config, args).await,
        AuditCommand::Seal => {
            let mut client = owner(target).await?;
            let n = audit::seal_all(&mut client).await?;
            println!("sealed {n} entries");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint => {
            let mut client = owner(target).await?;
            let n = audit::seal_all(&mut client).await?;
            let signer = Signer::load_or_create(&secrets(config))?;
            let dir = config.audit.checkpoint_dir(&config.data_dir);
            match audit::write_checkpoint(&mut client, &signer, &dir).await? {
                Some(path) => println!("sealed {n} entries; wrote {}", path.display()),
                None => println!("sealed {n} entries; no chain moved since the last checkpoint"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::PublicKey => {
            println!(
                "{}",
                Signer::load_or_create(&secrets(config))?.public_key_hex()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn resolve_org(client: &Client, org: &str) -> anyhow::Result<Uuid> {
    if org == "account" {
        return Ok(audit::ACCOUNT_CHAIN);
    }
    if let Ok(id) = Uuid::parse_str(org) {
        return Ok(id);
    }
    client
        .query_opt(
            "SELECT id FROM orgbase.organizations WHERE slug = $1",
            &[&org],
        )
        .await?
        .map(|r| r.get(0))
        .with_context(|| format!("--org {org:?}: no organization with this id or slug"))
}

async fn verify(target: &Target, config: &Config, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let client = target.admin().await?;
    let org = match &args.org {
        Some(o) => Some(resolve_org(&client, o).await?),
        None => None,
    };
    let dir = args
        .checkpoints
        .clone()
        .unwrap_or_else(|| config.audit.checkpoint_dir(&config.data_dir));
    let trusted = match args.public_key.clone() {
        Some(k) => Some(k),
        None => orgbase_db::secrets::read(&secrets(config), audit::SIGNING_KEY)?
            .map(|_| Signer::load_or_create(&secrets(config)).map(|s| s.public_key_hex()))
            .transpose()?,
    };
    let checkpoints = match audit::load_checkpoints(&dir, trusted.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("audit verify: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let total: i64 = client
        .query_one(
            "SELECT count(*) FROM orgbase.audit_log
              WHERE seq IS NOT NULL AND ($1::uuid IS NULL OR org_id = $1)",
            &[&org],
        )
        .await?
        .get(0);
    let bar = progress_bar(total as u64);
    let reports = audit::verify(&client, org, &checkpoints, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    let broken = reports.iter().filter(|r| !r.ok()).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            if let Some(p) = &r.problem {
                println!("{}: {}", chain_name(r.org_id), p.message);
            }
        }
        let entries: u64 = reports.iter().map(|r| r.entries).sum();
        let unsealed: u64 = reports.iter().map(|r| r.unsealed).sum();
        let checked: u64 = reports.iter().map(|r| r.checkpoints_checked).sum();
        println!(
            "{} chains, {entries} entries, {unsealed} not sealed yet, {} checkpoint files \
             ({checked} heads matched){}: {}",
            reports.len(),
            checkpoints.len(),
            match &trusted {
                Some(k) => format!(", signed by {}", &k[..k.len().min(16)]),
                None => String::new(),
            },
            if broken == 0 {
                "all chains verify".to_string()
            } else {
                format!("{broken} broken")
            }
        );
    }
    Ok(if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn chain_name(org: Uuid) -> String {
    if org == audit::ACCOUNT_CHAIN {
        "account chain".into()
    } else {
        format!("org {org}")
    }
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) || len < 10_000 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "verifying {bar:30} {pos}/{len} entries {per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The server's audit jobs; dropped (or `stop`ped) with the server.
#[derive(Debug)]
pub struct Jobs {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Jobs {
    /// Start the sealer, the checkpoint writer and the log-partition maintenance.
    pub async fn start(
        target: &Target,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        for line in maintain_logs(target).await? {
            tracing::info!("access logs: {line}");
        }
        let mut client = owner(target).await?;
        audit::seal_all(&mut client).await?;
        let signer = Signer::load_or_create(&secrets(config))?;
        let dir = config.audit.checkpoint_dir(&config.data_dir);
        let mut tasks = vec![tokio::spawn(sealer(
            target.clone(),
            client,
            Duration::from_millis(config.audit.seal_interval_ms),
            metrics.clone(),
        ))];
        if config.audit.checkpoint_interval_secs > 0 {
            tasks.push(tokio::spawn(checkpointer(
                target.clone(),
                signer,
                dir,
                Duration::from_secs(config.audit.checkpoint_interval_secs),
                metrics,
            )));
        }
        tasks.push(tokio::spawn(maintainer(target.clone())));
        Ok(Self { tasks })
    }

    /// Stop the jobs, then seal what the last requests wrote.
    pub async fn stop(self, target: &Target) {
        for t in &self.tasks {
            t.abort();
        }
        match owner(target).await {
            Ok(mut c) => {
                if let Err(e) = audit::seal_all(&mut c).await {
                    tracing::warn!(error = %e, "final audit sealing failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "final audit sealing: no connection"),
        }
    }
}

/// The public key of the server's checkpoint signer, creating the key on first use.
pub fn public_key(config: &Config) -> anyhow::Result<(PathBuf, String)> {
    Ok((
        config.audit.checkpoint_dir(&config.data_dir),
        Signer::load_or_create(&secrets(config))?.public_key_hex(),
    ))
}

/// The access-log partitions, kept as long as the organizations' retention policies and legal
/// holds say (docs/retention.md), as the administrator.
async fn maintain_logs(target: &Target) -> anyhow::Result<Vec<String>> {
    let mut client = target.admin().await?;
    let (_, lines) = orgbase_db::retention::maintain_logs(&mut client, false)
        .await
        .context("maintaining the access-log partitions")?;
    Ok(lines)
}

async fn sealer(target: Target, client: Client, every: Duration, metrics: Arc<Metrics>) {
    let mut client = Some(client);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = match client.as_mut() {
            Some(c) if !c.is_closed() => c,
            _ => match owner(&target).await {
                Ok(c) => client.insert(c),
                Err(e) => {
                    metrics.audit_seal_failures.inc();
                    tracing::warn!(error = %e, "audit sealer: no connection");
                    continue;
                }
            },
        };
        // Keep sealing while full batches come back, so a burst does not build a backlog.
        loop {
            let started = std::time::Instant::now();
            match audit::seal(c, 5000).await {
                Ok(s) => {
                    metrics
                        .queries
                        .observe(Label::of(Kind::AuditSeal), started.elapsed());
                    metrics.audit_sealed.inc_by(s.entries);
                    metrics
                        .audit_seal_lag
                        .set(if s.entries > 0 { s.max_lag_secs } else { 0.0 });
                    metrics.audit_last_seal.set(unix_now());
                    if s.entries < 5000 {
                        break;
                    }
                }
                Err(e) => {
                    metrics.audit_seal_failures.inc();
                    tracing::warn!(error = %e, "audit sealing failed");
                    break;
                }
            }
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn checkpointer(
    target: Target,
    signer: Signer,
    dir: PathBuf,
    every: Duration,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match checkpoint_once(&target, &signer, &dir).await {
            Ok(Some(path)) => {
                metrics.audit_checkpoints.inc();
                tracing::info!(file = %path.display(), "audit checkpoint written");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
        }
    }
}

async fn checkpoint_once(
    target: &Target,
    signer: &Signer,
    dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let mut client = owner(target).await?;
    Ok(audit::write_checkpoint(&mut client, signer, dir).await?)
}

/// Daily: the retention run (which also maintains the access-log partitions).
async fn maintainer(target: Target) {
    let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = crate::retention::daily(&target).await {
            tracing::warn!(error = %e, "daily retention run failed");
        }
    }
}
