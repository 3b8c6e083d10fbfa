//! `orgbase slo report`: are reads and writes within their latency targets.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use orgbase_core::Config;
use orgbase_db::Target;
use orgbase_db::slo::{self, Since, Targets};

/// The exit status of a report with a target missed (1 is any error, 2 a usage error).
pub const MISSED: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum SloCommand {
    /// Latency percentiles (P50/P95/P99) of reads (GET, HEAD) and writes over a window of the
    /// access log, against the targets of the [slo] configuration, with the slowest routes.
    ///
    /// Exits 0 when every target is met (a window without requests meets them), 3 when one is
    /// missed, so that cron or CI can act on it.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Start of the window: a duration back from now (90s, 30m, 24h, 7d, 2w) or an RFC 3339
    /// time (2026-12-01T00:00:00Z). The window ends now.
    #[arg(long, default_value = "24h", value_name = "WHEN")]
    pub since: Since,
    /// text for people, json for programs.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub async fn run(target: &Target, config: &Config, cmd: SloCommand) -> anyhow::Result<ExitCode> {
    let SloCommand::Report(args) = cmd;
    let until = chrono::Utc::now();
    let since = args
        .since
        .start(until)
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let client = target.admin().await?;
    let report = slo::report(&client, since, until, &Targets::from(&config.slo)).await?;
    match args.format {
        Format::Text => print!("{}", report.render()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(MISSED)
    })
}
