//! The one `orgbase` binary: clap subcommands over the core, db and http crates.

mod admin;
mod analytics;
mod audit;
mod backup;
mod commands;
mod keys;
mod privacy;
mod retention;
mod slo;
mod supervise;
mod tools;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the request path allocates and frees many small
/// buffers (rows, JSON, HTTP) on several threads, where glibc's malloc took a fifth of the
/// server's CPU (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};

/// orgbase — a multi-tenant, compliance-grade data layer on PostgreSQL, in one binary.
///
/// With no database URL, orgbase runs its own PostgreSQL cluster under the data directory
/// (created on first use from the PostgreSQL server binaries on this machine). With
/// --database-url it uses that server instead.
///
/// Configuration: defaults → orgbase.toml (or --config) → ORGBASE_* environment → flags.
/// `orgbase config example` prints every key.
#[derive(Debug, Parser)]
#[command(
    name = "orgbase",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (default: ./orgbase.toml when present).
    #[arg(long, global = true, env = "ORGBASE_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Data directory: embedded PostgreSQL, generated secrets, logs [default: ./orgbase-data].
    #[arg(long, global = true, env = "ORGBASE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Use this PostgreSQL (administrative URL) instead of the embedded cluster.
    #[arg(
        long,
        global = true,
        env = "ORGBASE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Log filter, e.g. `info` or `orgbase=debug,info` [default: log.level from the config].
    #[arg(long, global = true, env = "ORGBASE_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (and the embedded PostgreSQL unless --database-url is given).
    ///
    /// Applies pending migrations first (unless --no-migrate), prints the URL it listens on,
    /// and on Ctrl-C / SIGTERM drains in-flight requests and stops PostgreSQL cleanly.
    Serve(ServeArgs),
    /// Database migrations: status, up, down, verify.
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Database utilities.
    #[command(subcommand)]
    Db(DbCommand),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect the database for tenant tables that break the isolation rules.
    ///
    /// Reports, one line per finding, every tenant table (registered, or any table with an org_id
    /// column) without forced row-level security, without a policy for a command, with org_id
    /// nullable or missing from its primary key, or with a foreign key to another tenant table
    /// that is not composite over org_id; SECURITY DEFINER functions without a pinned
    /// search_path; views over tenant tables without security_invoker; a runtime role with
    /// BYPASSRLS or owning objects. Exits 1 on findings.
    Check,
    /// The tamper-evident audit trail: verify the hash chains, seal, checkpoint.
    #[command(subcommand)]
    Audit(crate::audit::AuditCommand),
    /// Hard-delete rows soft-deleted longer ago than the grace period, in every tenant table
    /// (rows under a legal hold are kept).
    Purge(PurgeArgs),
    /// Retention policies: run them now, or see what a run would delete
    /// (docs/retention.md).
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// Create a demo data set: two organizations with an admin, a manager and an employee each,
    /// notes, projects and tasks; print the credentials and curl commands to try.
    Demo,
    /// Benchmark helpers.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Encrypted, verified backups: create, list, verify, restore, prune, rotate-key
    /// (docs/backup.md).
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Data keys of field encryption: list, rotate, re-encrypt (docs/keys.md).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// GDPR requests: carry out due exports and erasures, check certificates of deletion
    /// (docs/erasure.md).
    #[command(subcommand)]
    Erase(privacy::EraseCommand),
    /// Point-in-time recovery of the embedded cluster: base backups and restore to a time.
    #[command(subcommand)]
    Pitr(backup::PitrCommand),
    /// WAL archiving, called by PostgreSQL's archive_command / restore_command.
    #[command(subcommand, hide = true)]
    Wal(backup::WalCommand),
    /// Service level objectives: latency of reads and writes against their targets.
    #[command(subcommand)]
    Slo(slo::SloCommand),
    /// Instance operators: the accounts that run this orgbase from the console (`/console`).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Anonymized analytics: the k-anonymous dataset, the privacy budget, and differentially
    /// private queries.
    #[command(subcommand)]
    Analytics(analytics::AnalyticsCommand),
    /// Print the orgbase version and the schema version it carries.
    Version,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Grace period in days: rows deleted longer ago than this are removed for good (the same
    /// 90 days as the retention policies' default for soft-deleted rows).
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    pub older_than_days: u32,
    /// Only report what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Create the "tenant notes" data set (../shared/bench) through orgbase's own tables and
    /// write the fixtures wrk needs: DIR/users.tsv (token, org, user) and DIR/notes.tsv (org,
    /// note id).
    Seed(SeedArgs),
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    #[arg(long, default_value_t = 100)]
    pub orgs: u32,
    /// Users per organization (members with the notes editor role).
    #[arg(long, default_value_t = 5)]
    pub users: u32,
    /// Notes per organization.
    #[arg(long, default_value_t = 1000)]
    pub notes: u32,
    /// Where to write users.tsv and notes.tsv.
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]. Port 0 picks a free port.
    #[arg(long, env = "ORGBASE_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Do not apply pending migrations on start (readiness stays 503 until migrated).
    #[arg(long)]
    pub no_migrate: bool,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// List every migration with its state, when and by whom it was applied, and how long it took.
    Status,
    /// Apply pending migrations (all, or up to --to).
    Up {
        /// Stop after this version.
        #[arg(long, value_name = "VERSION")]
        to: Option<i64>,
    },
    /// Revert migrations: the newest one, or every one newer than --to (0 reverts all).
    Down {
        /// Revert every migration newer than this version.
        #[arg(long, value_name = "VERSION")]
        to: Option<i64>,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Check applied migrations against this binary: checksum drift, unknown versions, and schema
    /// changes made outside migrations. Exits 1 on any finding.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Open psql on orgbase's database (the embedded cluster, or --database-url).
    ///
    /// Arguments after `--` go to psql, e.g. `orgbase db psql -- -c 'select 1'`.
    Psql {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "PSQL_ARGS"
        )]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a commented example configuration with every key and its default.
    Example,
    /// Load and validate the configuration (file, environment, flags); print the result without secrets.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
