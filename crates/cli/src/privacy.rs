//! `orgbase erase …` and the server's privacy worker: GDPR exports and erasures
//! (docs/erasure.md), certificates of deletion, and the daily rotation of due data keys.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use orgbase_core::Config;
use orgbase_db::Target;
use orgbase_db::fields::Fields;
use orgbase_db::gdpr::{self, Worker};
use orgbase_keys::Keys;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum EraseCommand {
    /// Carry out the GDPR requests that are due: exports, the soft delete of new erasure
    /// requests, and the hard delete + crypto-shred of erasures whose grace period ended (the
    /// server does the same continuously). Prints one line per request; exits 1 if any failed.
    Run(RunArgs),
    /// Check a certificate of deletion offline: its fields, its Ed25519 signature and (with
    /// --public-key, or this data directory's key) who signed it. Exits 1 when it does not verify.
    VerifyCertificate(VerifyArgs),
    /// Print the public key that verifies this server's certificates of deletion (base64), for
    /// publishing where those who check certificates can find it. It is another key than the one
    /// of the audit checkpoints (`orgbase audit public-key`).
    PublicKey,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Hard-delete and shred now, without waiting for the grace period.
    #[arg(long)]
    pub now: bool,
    /// Only this request.
    #[arg(long, value_name = "ID")]
    pub request: Option<Uuid>,
    /// Print the outcomes as JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The certificate (JSON file).
    pub file: PathBuf,
    /// The signer's public key (base64 or hex) to trust [default: this data directory's
    /// signing key, when there is one].
    #[arg(long, value_name = "KEY")]
    pub public_key: Option<String>,
}

pub async fn erase(config: Config, cmd: EraseCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EraseCommand::VerifyCertificate(args) => verify_certificate(&config, &args),
        EraseCommand::PublicKey => {
            let path = crate::keys::keys_config(&config)
                .paths(&config.data_dir)
                .signing_key;
            let signer = orgbase_keys::ServerSigner::open_or_create(&path)
                .with_context(|| format!("the certificate signing key {}", path.display()))?;
            println!("{}", signer.public_key_base64());
            Ok(ExitCode::SUCCESS)
        }
        EraseCommand::Run(args) => {
            let opened = crate::commands::open(&config, true).await?;
            let keys = crate::keys::open(&config)?;
            let code = run(&opened.target, &config, &keys, &args).await;
            opened.close().await?;
            code
        }
    }
}

fn verify_certificate(config: &Config, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let trusted = match &args.public_key {
        Some(k) => Some(orgbase_keys::parse_public_key(k).context("--public-key")?),
        None => {
            let path = crate::keys::keys_config(config)
                .paths(&config.data_dir)
                .signing_key;
            if path.exists() {
                Some(orgbase_keys::ServerSigner::open_or_create(&path)?.public_key())
            } else {
                None
            }
        }
    };
    match orgbase_keys::verify_certificate(&text, trusted.as_ref().map(|k| &k[..])) {
        Ok(cert) => {
            println!(
                "{}: valid certificate of deletion {} for subject {}, {} key(s) destroyed, issued {}{}",
                args.file.display(),
                cert.certificate_id,
                cert.subject,
                cert.keys_destroyed.len(),
                cert.issued_at,
                if trusted.is_some() {
                    ", signed by the trusted key"
                } else {
                    " (signature checked against the key it carries only: pass --public-key to check who signed it)"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: NOT valid: {e}", args.file.display());
            Ok(ExitCode::from(1))
        }
    }
}

async fn run(
    target: &Target,
    config: &Config,
    keys: &Arc<Keys>,
    args: &RunArgs,
) -> anyhow::Result<ExitCode> {
    let fields = Fields::new(keys.clone(), config.keys.field_encryption);
    let dir = config.privacy.dir(&config.data_dir);
    let worker = Worker {
        keys,
        fields: &fields,
        dir: &dir,
    };
    let mut client = target.admin().await?;
    if let Some(id) = args.request {
        let known = client
            .query_opt("SELECT 1 FROM orgbase.gdpr_requests WHERE id = $1", &[&id])
            .await?
            .is_some();
        if !known {
            anyhow::bail!("no GDPR request has the id {id} (`--request`)");
        }
    }
    let outcomes = gdpr::run(&mut client, &worker, args.now, args.request).await?;
    let mut failed = false;
    for o in &outcomes {
        if args.json {
            println!("{}", serde_json::to_string(o)?);
        } else {
            let scope = o.org_id.map_or("all organizations".to_string(), |org| {
                format!("organization {org}")
            });
            match &o.error {
                Some(e) => {
                    failed = true;
                    println!(
                        "{} {} of {} ({scope}): NOT done: {e}",
                        o.kind, o.id, o.subject
                    );
                }
                None => {
                    let extra = o
                        .detail
                        .get("certificate_file")
                        .or_else(|| o.detail.get("file"))
                        .and_then(|v| v.as_str())
                        .map(|f| format!(" → {f}"))
                        .unwrap_or_default();
                    println!(
                        "{} {} of {} ({scope}): {}{extra}",
                        o.kind, o.id, o.subject, o.status
                    );
                }
            }
        }
    }
    if outcomes.is_empty() && !args.json {
        println!("no GDPR request is due");
    }
    let pruned = gdpr::prune_exports(
        &dir,
        Duration::from_secs(u64::from(config.privacy.export_keep_days) * 86_400),
    )?;
    if pruned > 0 && !args.json {
        println!("removed {pruned} expired export archives");
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The server's privacy worker: GDPR requests every few seconds, export expiry and due key
/// rotations daily.
pub fn spawn_worker(
    target: Target,
    config: &Config,
    keys: Arc<Keys>,
) -> tokio::task::JoinHandle<()> {
    let fields = Fields::new(keys.clone(), config.keys.field_encryption);
    let dir = config.privacy.dir(&config.data_dir);
    let keep = Duration::from_secs(u64::from(config.privacy.export_keep_days) * 86_400);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_daily: Option<std::time::Instant> = None;
        loop {
            tick.tick().await;
            let mut client = match target.admin().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "privacy worker: no database connection");
                    continue;
                }
            };
            let worker = Worker {
                keys: &keys,
                fields: &fields,
                dir: &dir,
            };
            match gdpr::run(&mut client, &worker, false, None).await {
                Ok(done) => {
                    for o in done.iter().filter(|o| o.error.is_none()) {
                        tracing::info!(request = %o.id, kind = %o.kind, status = %o.status, "GDPR request processed");
                    }
                }
                Err(gdpr::GdprError::Busy) => {}
                Err(e) => tracing::warn!(error = %e, "privacy worker failed"),
            }
            if last_daily.is_none_or(|t| t.elapsed() >= Duration::from_secs(86_400)) {
                last_daily = Some(std::time::Instant::now());
                match gdpr::prune_exports(&dir, keep) {
                    Ok(n) if n > 0 => {
                        tracing::info!(removed = n, "expired export archives removed")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "export expiry failed"),
                }
                match crate::keys::rotate(&keys, &client, None, false).await {
                    Ok(r) if !r.is_empty() => {
                        tracing::info!(rotated = r.len(), "data keys rotated")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "key rotation failed"),
                }
            }
        }
    })
}
