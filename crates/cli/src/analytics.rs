//! `orgbase analytics …` and the server's refresh of the dataset (docs/analytics.md).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use orgbase_analytics::{MICRO, epsilon_micro, epsilon_of};
use orgbase_core::Config;
use orgbase_db::Target;
use orgbase_db::analytics::{self as store, AnalyticsError, PERIODS, TableReport};
use orgbase_db::catalog::Catalog;
use orgbase_http::analytics::{AnalyticsQuery, Epsilon};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum AnalyticsCommand {
    /// Rebuild the k-anonymous dataset (schema `analytics`, readable by the read-only role):
    /// one table per tenant table, without encrypted or identifying columns, dates to months,
    /// numbers to ranges, rows of people whose erasure was asked for left out, and rows whose
    /// quasi-identifiers fewer than k rows share suppressed. Prints what each table achieved.
    Refresh(RefreshArgs),
    /// Show an organization's privacy budget (ε budget, spent, left in this period), or set its
    /// own budget with --set (and --period).
    Budget(BudgetArgs),
    /// Answer a differentially private count, sum or mean as an operator, charged to the
    /// organization's budget like an API query.
    Query(QueryArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Only this tenant table (its name in URLs).
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
    /// Smallest equivalence class kept [default: analytics.k, 5].
    #[arg(long)]
    pub k: Option<u32>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct BudgetArgs {
    /// The organization: id or slug.
    #[arg(long, value_name = "ORG")]
    pub org: String,
    /// Give the organization its own budget per period, in ε (e.g. 2.0).
    #[arg(long, value_name = "EPSILON")]
    pub set: Option<f64>,
    /// With --set: none (one budget for ever), day, month or year [default: analytics.budget_period].
    #[arg(long, value_name = "PERIOD", requires = "set")]
    pub period: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The organization: id or slug.
    #[arg(long, value_name = "ORG")]
    pub org: String,
    /// A tenant table (its name in URLs).
    #[arg(long)]
    pub table: String,
    /// count, sum or mean.
    #[arg(long, default_value = "count")]
    pub aggregate: String,
    /// The numeric column of a sum or mean.
    #[arg(long)]
    pub column: Option<String>,
    /// Clamping bounds of a sum or mean: --lower and --upper.
    #[arg(long, allow_hyphen_values = true)]
    pub lower: Option<f64>,
    #[arg(long, allow_hyphen_values = true)]
    pub upper: Option<f64>,
    /// The most rows of one person that count.
    #[arg(long, default_value_t = 1)]
    pub contributions: u32,
    /// Group by this column, over --keys.
    #[arg(long)]
    pub group_by: Option<String>,
    /// The public key set of --group-by, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub keys: Option<Vec<String>>,
    /// column=value; repeat for more.
    #[arg(long = "filter", value_name = "COLUMN=VALUE")]
    pub filters: Vec<String>,
    /// The ε to spend.
    #[arg(long)]
    pub epsilon: f64,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub async fn run(
    target: &Target,
    config: &Config,
    cmd: AnalyticsCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        AnalyticsCommand::Refresh(args) => refresh(target, config, args).await,
        AnalyticsCommand::Budget(args) => budget(target, config, args).await,
        AnalyticsCommand::Query(args) => query(target, args).await,
    }
}

fn report_line(r: &TableReport) -> String {
    format!(
        "{} → {}: {} rows, {} kept, {} suppressed; k = {} (smallest class {}); quasi-identifiers: {}",
        r.table,
        r.dataset,
        r.source_rows,
        r.kept_rows,
        r.suppressed_rows,
        r.k_required,
        r.k_achieved.map_or("-".to_string(), |k| k.to_string()),
        r.quasi_identifiers.join(", ")
    )
}

async fn refresh(target: &Target, config: &Config, args: RefreshArgs) -> anyhow::Result<ExitCode> {
    let k = args.k.unwrap_or(config.analytics.k);
    let mut client = target.admin().await?;
    let tables = Catalog::load(&client).await?.tables.len();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) && args.table.is_none() {
        let bar = indicatif::ProgressBar::new(tables as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("refreshing {bar:30} {pos}/{len} tables {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = std::time::Instant::now();
    let reports = store::refresh(
        &mut client,
        i32::try_from(k).unwrap_or(i32::MAX),
        args.table.as_deref(),
        |r| {
            bar.inc(1);
            bar.set_message(r.table.clone());
        },
    )
    .await;
    bar.finish_and_clear();
    let reports = match reports {
        Err(AnalyticsError::NoSuchTable(t)) => {
            anyhow::bail!("--table: no tenant table is called {t:?}")
        }
        r => r?,
    };
    match args.format {
        Format::Text => {
            for r in &reports {
                println!("{}", report_line(r));
            }
            println!(
                "refreshed {} table(s) in {:.1} s",
                reports.len(),
                started.elapsed().as_secs_f64()
            );
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
    }
    Ok(ExitCode::SUCCESS)
}

async fn org(client: &tokio_postgres::Client, org_ref: &str) -> anyhow::Result<uuid::Uuid> {
    store::org_of(client, org_ref)
        .await?
        .ok_or_else(|| anyhow::anyhow!("--org: no organization {org_ref:?}"))
}

async fn budget(target: &Target, config: &Config, args: BudgetArgs) -> anyhow::Result<ExitCode> {
    let client = target.admin().await?;
    let org = org(&client, &args.org).await?;
    if let Some(eps) = args.set {
        let micro = if eps == 0.0 {
            0
        } else {
            epsilon_micro(eps).map_err(|e| anyhow::anyhow!("--set: {}", e.message))?
        };
        let period = args
            .period
            .unwrap_or_else(|| config.analytics.budget_period.clone());
        if !PERIODS.contains(&period.as_str()) {
            anyhow::bail!("--period: one of {}", PERIODS.join(", "));
        }
        store::set_budget(&client, org, micro, &period).await?;
    }
    let b = store::budget_as_operator(&client, org).await?;
    match args.format {
        Format::Text => println!(
            "budget ε {} per period ({}; this one began {}): spent {}, left {}, in {} queries; at most {} per query",
            b.epsilon, b.period, b.period_start, b.spent, b.left, b.charges, b.max_query_epsilon
        ),
        Format::Json => println!("{}", serde_json::to_string_pretty(&b)?),
    }
    Ok(ExitCode::SUCCESS)
}

async fn query(target: &Target, args: QueryArgs) -> anyhow::Result<ExitCode> {
    if !orgbase_analytics::ENABLED {
        anyhow::bail!(
            "this orgbase was built without differential privacy: build it with the `dp` feature (on by default)"
        );
    }
    let mut filters = BTreeMap::new();
    for f in &args.filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--filter {f:?}: use COLUMN=VALUE"))?;
        filters.insert(k.to_string(), json!(v));
    }
    let bounds = match (args.lower, args.upper) {
        (None, None) => None,
        (Some(l), Some(u)) => Some((l, u)),
        _ => anyhow::bail!("--lower and --upper go together"),
    };
    let q = AnalyticsQuery {
        table: args.table.clone(),
        aggregate: args.aggregate.clone(),
        column: args.column.clone(),
        bounds,
        contributions: Some(args.contributions),
        group_by: args.group_by.clone(),
        keys: args.keys.clone(),
        filters: (!filters.is_empty()).then_some(filters),
        epsilon: Epsilon::Number(args.epsilon),
    };
    let mut client = target.admin().await?;
    let org = org(&client, &args.org).await?;
    let catalog = Catalog::load(&client).await?;
    let table = catalog
        .get(&args.table)
        .ok_or_else(|| anyhow::anyhow!("--table: no tenant table is called {:?}", args.table))?;
    let checked = orgbase_http::analytics::check(&q, &table).map_err(|e| {
        let p = e.to_problem(None);
        anyhow::anyhow!("{}", p.detail.unwrap_or(p.title))
    })?;
    let tx = client.transaction().await?;
    let charge = store::charge_as_operator(&tx, org, checked.plan.micro, &checked.record)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let exact = store::figures(&tx, org, &checked.figures).await?;
    let mut noise = orgbase_analytics::noise()?;
    let released = orgbase_analytics::release(&checked.plan, &exact, noise.as_mut())?;
    tx.commit().await.context("committing the charge")?;
    let values: Vec<serde_json::Value> = if checked.figures.group_by.is_some() {
        checked
            .figures
            .keys
            .iter()
            .zip(&released.values)
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect()
    } else {
        vec![json!({"value": released.values.first()})]
    };
    let left = epsilon_of((charge.budget_micro - charge.spent_micro).max(0));
    match args.format {
        Format::Text => {
            for v in &values {
                match v.get("key") {
                    Some(k) => println!("{}\t{}", k.as_str().unwrap_or(""), v["value"]),
                    None => println!("{}", v["value"]),
                }
            }
            eprintln!(
                "spent ε {} (charge {}); left {} of {}",
                checked.plan.epsilon(),
                charge.id,
                left,
                charge.budget_micro as f64 / MICRO as f64
            );
        }
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "charge_id": charge.id,
                "results": values,
                "epsilon_spent": checked.plan.epsilon(),
                "epsilon_left": left,
                "mechanism": released.parts,
            }))?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the `[analytics]` budget defaults into the database (the ledger reads them there).
pub async fn apply_defaults(target: &Target, config: &Config) -> anyhow::Result<()> {
    let a = &config.analytics;
    let client = target.admin().await?;
    store::set_defaults(
        &client,
        (a.budget_epsilon * MICRO as f64).round() as i64,
        &a.budget_period,
        (a.max_query_epsilon * MICRO as f64).round() as i64,
    )
    .await
    .context("writing the [analytics] budget defaults")?;
    Ok(())
}

/// The server's refresh of the dataset every `analytics.refresh_interval_secs` (the first a
/// minute after start); `None` when the interval is 0.
pub fn spawn_refresher(target: Target, config: &Config) -> Option<tokio::task::JoinHandle<()>> {
    let every = config.analytics.refresh_interval_secs;
    if every == 0 {
        return None;
    }
    let k = i32::try_from(config.analytics.k).unwrap_or(i32::MAX);
    Some(tokio::spawn(async move {
        let start = tokio::time::Instant::now() + Duration::from_secs(60.min(every));
        let mut tick = tokio::time::interval_at(start, Duration::from_secs(every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut client = match target.admin().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "analytics refresh: no database connection");
                    continue;
                }
            };
            let started = std::time::Instant::now();
            match store::refresh(&mut client, k, None, |_| {}).await {
                Ok(reports) => tracing::info!(
                    tables = reports.len(),
                    rows = reports.iter().map(|r| r.kept_rows).sum::<i64>(),
                    suppressed = reports.iter().map(|r| r.suppressed_rows).sum::<i64>(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "analytics dataset refreshed"
                ),
                Err(AnalyticsError::Busy) => {}
                Err(e) => tracing::warn!(error = %e, "analytics refresh failed"),
            }
        }
    }))
}
