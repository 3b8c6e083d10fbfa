//! `orgbase retention run` and the server's daily retention job (docs/retention.md).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use orgbase_db::Target;
use orgbase_db::retention::{self, Line, Options};

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Delete what every organization's retention policies make due, except what a legal hold
    /// covers; print per organization and data type what went (or, with --dry-run, would go).
    ///
    /// Sessions, soft-deleted rows of every tenant table, consent histories of former members
    /// (accounts) and the monthly access-log partitions. The audit log is kept (chain anchoring
    /// is not built), backups follow `orgbase backup prune`. The server runs this daily.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Only report what would be deleted: the same statements run and are rolled back.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this organization (id or slug); account-level sessions and the shared access-log
    /// partitions are then left alone.
    #[arg(long, value_name = "ID|SLUG")]
    pub org: Option<String>,
}

pub async fn run(target: &Target, cmd: RetentionCommand) -> anyhow::Result<ExitCode> {
    let RetentionCommand::Run(args) = cmd;
    let mut client = target.admin().await?;
    let org = match &args.org {
        Some(o) => Some(
            retention::resolve_org(&client, o)
                .await?
                .with_context(|| format!("--org {o:?}: no organization with this id or slug"))?,
        ),
        None => None,
    };
    let bar = progress_bar(retention::steps(&client).await?);
    let opts = Options {
        org,
        dry_run: args.dry_run,
    };
    let lines = retention::run(&mut client, &opts, |step| {
        bar.set_message(step.to_string());
        bar.inc(1);
    })
    .await?;
    bar.finish_and_clear();
    for l in &lines {
        println!("{}", render(l, args.dry_run));
    }
    let deleted: u64 = lines.iter().map(|l| l.deleted).sum();
    let held: u64 = lines.iter().map(|l| l.held).sum();
    println!(
        "{deleted} item(s) {}; {held} due but kept under legal hold{}",
        if args.dry_run {
            "would be deleted"
        } else {
            "deleted"
        },
        if args.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `acme  soft_deleted  keep 90d: 3 deleted, 1 kept under legal hold`.
fn render(l: &Line, dry_run: bool) -> String {
    let who = l.slug.as_deref().unwrap_or("-");
    let keep = l
        .keep
        .as_deref()
        .map(|k| format!(" keep {k}"))
        .unwrap_or_default();
    let mut s = format!(
        "{who:<20} {:<13}{keep}: {} {}",
        l.data_type,
        l.deleted,
        if dry_run {
            "would be deleted"
        } else {
            "deleted"
        }
    );
    if l.held > 0 {
        s.push_str(&format!(", {} kept under legal hold", l.held));
    }
    if let Some(n) = &l.note {
        s.push_str(&format!(" — {n}"));
    }
    s
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("retention {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The server's daily run (and its access-log maintenance at start): logs what it did.
pub async fn daily(target: &Target) -> anyhow::Result<()> {
    let mut client = target.admin().await?;
    let lines = retention::run(&mut client, &Options::default(), |_| {}).await?;
    for l in lines.iter().filter(|l| l.deleted > 0 || l.held > 0) {
        tracing::info!("retention: {}", render(l, false));
    }
    Ok(())
}
