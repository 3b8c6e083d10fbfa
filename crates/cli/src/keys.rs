//! `orgbase keys …`: the data keys of field encryption (docs/keys.md) — list, rotate, and the
//! re-encryption of values still under old key versions. Every rotation is audited.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use orgbase_core::Config;
use orgbase_db::Target;
use orgbase_keys::{KeyId, Keys, KeysConfig};
use serde_json::json;
use tokio_postgres::Client;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the data keys: id, current version, age, whether rotation is due, destroyed ones.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a new version to data keys (those due, one, or all). New values use it at once; old
    /// versions keep decrypting; `keys reencrypt` moves stored values to it. The server rotates
    /// due keys daily.
    Rotate {
        /// One key (`org:<uuid>` or `subject:<uuid>`).
        #[arg(value_name = "KEY", conflicts_with = "all")]
        key: Option<String>,
        /// Every live key, not only those older than keys.rotation_max_age_days.
        #[arg(long)]
        all: bool,
    },
    /// Re-encrypt values stored under old key versions with the current ones. Resumable: run it
    /// again after an interruption. Old versions stay in the key store: audit entries and
    /// backups still hold values under them; they go when the key is destroyed.
    Reencrypt {
        /// Rows per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
}

/// The `[keys]` settings as the key library takes them.
pub fn keys_config(config: &Config) -> KeysConfig {
    KeysConfig {
        dir: config.keys.dir.clone(),
        master_key_file: config.keys.master_key_file.clone(),
        rotation_max_age_days: config.keys.rotation_max_age_days,
        cache_revalidate_ms: config.keys.cache_revalidate_ms,
        cache_capacity: config.keys.cache_capacity,
        ..KeysConfig::default()
    }
}

/// Opens the key store of this data directory (creating the master key on first use), after
/// checking that no key material would sit inside PGDATA.
pub fn open(config: &Config) -> anyhow::Result<Arc<Keys>> {
    let kc = keys_config(config);
    let pgdata = config.embedded().then(|| config.data_dir.join("pg"));
    kc.validate(&config.data_dir, pgdata.as_deref())?;
    let keys = Keys::open(&config.data_dir, &kc).context("opening the key store")?;
    Ok(Arc::new(keys))
}

/// Field encryption as configured, over this data directory's key store.
pub fn fields(config: &Config) -> anyhow::Result<orgbase_db::fields::Fields> {
    Ok(orgbase_db::fields::Fields::new(
        open(config)?,
        config.keys.field_encryption,
    ))
}

/// An account-chain audit entry written by the administrator (key events have no organization).
pub async fn audit_event(
    client: &Client,
    action: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO orgbase.audit_log (org_id, actor_kind, action, table_name, new)
             VALUES ('00000000-0000-0000-0000-000000000000', 'system', $1, 'orgbase.keys', $2)",
            &[&action, &detail],
        )
        .await?;
    Ok(())
}

pub async fn run(target: &Target, config: &Config, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let keys = open(config)?;
    match cmd {
        KeysCommand::List { json } => {
            let now = chrono::Utc::now();
            let max = keys.config().rotation_max_age();
            if !json {
                println!(
                    "{:<46} {:>7} {:>8} {:<8} destroyed",
                    "key", "current", "age_days", "due"
                );
            }
            for k in keys.store().list()? {
                let age = k.age(now).map(|a| a.num_days());
                let due = k.rotation_due(max, now);
                let destroyed = k.destroyed.as_ref().map(|t| t.destroyed_at.to_rfc3339());
                if json {
                    println!(
                        "{}",
                        json!({"key": k.key.to_string(), "current": k.current.map(|v| v.0),
                               "versions": k.versions.len(), "age_days": age,
                               "rotation_due": due, "destroyed_at": destroyed})
                    );
                } else {
                    println!(
                        "{:<46} {:>7} {:>8} {:<8} {}",
                        k.key.to_string(),
                        k.current.map_or("-".into(), |v| v.to_string()),
                        age.map_or("-".into(), |a| a.to_string()),
                        due,
                        destroyed.unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate { key, all } => {
            let client = target.admin().await?;
            let rotated = rotate(&keys, &client, key.as_deref(), all).await?;
            for (k, v) in &rotated {
                println!("rotated {k} to {v}");
            }
            if rotated.is_empty() {
                println!(
                    "no key is due for rotation (keys.rotation_max_age_days = {})",
                    keys.config().rotation_max_age_days
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Reencrypt { batch } => {
            if !(1..=10_000).contains(&batch) {
                anyhow::bail!("--batch must be between 1 and 10000");
            }
            let mut client = target.admin().await?;
            let moved = reencrypt(&keys, &mut client, batch).await?;
            println!("re-encrypted {moved} values");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Rotates one key, every key (`all`), or those due; audits each rotation.
pub async fn rotate(
    keys: &Keys,
    client: &Client,
    key: Option<&str>,
    all: bool,
) -> anyhow::Result<Vec<(KeyId, orgbase_keys::KeyVersion)>> {
    let rotated = if let Some(k) = key {
        let id: KeyId = k.parse().map_err(|e| anyhow::anyhow!("KEY: {e}"))?;
        vec![(id, keys.store().rotate(id)?)]
    } else if all {
        let mut out = Vec::new();
        for info in keys.store().list()? {
            if info.destroyed.is_none() {
                out.push((info.key, keys.store().rotate(info.key)?));
            }
        }
        out
    } else {
        keys.rotate_due(chrono::Utc::now())?
    };
    for (k, v) in &rotated {
        audit_event(
            client,
            "keys.rotate",
            json!({"key": k.to_string(), "version": v.0}),
        )
        .await?;
    }
    Ok(rotated)
}

/// [`orgbase_db::fields::reencrypt`] with a progress spinner, audited as one event.
pub async fn reencrypt(keys: &Keys, client: &mut Client, batch: i64) -> anyhow::Result<u64> {
    let bar = progress("re-encrypting");
    let moved = orgbase_db::fields::reencrypt(keys, client, batch, || bar.inc(1)).await?;
    bar.finish_and_clear();
    audit_event(client, "keys.reencrypt", json!({"values": moved})).await?;
    Ok(moved)
}

/// A spinner with a count and rate on a terminal; nothing otherwise.
fn progress(label: &str) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{label} {{spinner}} {{pos}} values {{per_sec}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar
}
