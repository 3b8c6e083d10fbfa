//! Configuration: defaults → `orgbase.toml` → `ORGBASE_*` environment → flags, with unknown keys
//! rejected and the result validated once into [`Config`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// The commented example configuration shipped as `orgbase.example.toml`.
pub const EXAMPLE: &str = include_str!("../../../orgbase.example.toml");

/// Environment variables that are read by command-line flags (clap), not by the layered loader.
pub const FLAG_ENV_VARS: &[&str] = &[
    "ORGBASE_CONFIG",
    "ORGBASE_DATA_DIR",
    "ORGBASE_DATABASE_URL",
    "ORGBASE_LISTEN",
    "ORGBASE_LOG",
    // The master key of field encryption (base64), read by the key provider, never by the
    // layered loader: it must not end up in `config check` output.
    "ORGBASE_MASTER_KEY",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration key `{key}`: {message}")]
    Field { key: &'static str, message: String },
}

/// The validated runtime configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub embedded: EmbeddedConfig,
    pub log: LogConfig,
    pub audit: AuditConfig,
    pub backup: BackupConfig,
    pub keys: KeysSettings,
    pub privacy: PrivacyConfig,
    pub slo: SloConfig,
    pub analytics: AnalyticsConfig,
}

/// Anonymized analytics (docs/analytics.md): the k-anonymous dataset and the privacy budget of
/// differentially private queries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// Rows whose quasi-identifiers fewer than `k` rows share are left out of the dataset.
    pub k: u32,
    /// How often `serve` rebuilds the dataset, in seconds; 0: only `orgbase analytics refresh`.
    pub refresh_interval_secs: u64,
    /// Each organization's privacy budget (ε) per period, unless set for it
    /// (`orgbase analytics budget --org … --set …`).
    pub budget_epsilon: f64,
    /// `none` (one budget for ever), `day`, `month` or `year`.
    pub budget_period: String,
    /// The most ε one query may spend.
    pub max_query_epsilon: f64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            k: 5,
            refresh_interval_secs: 3600,
            budget_epsilon: 1.0,
            budget_period: "none".into(),
            max_query_epsilon: 1.0,
        }
    }
}

/// Latency targets of `orgbase slo report` and `GET /v1/slo` (docs/operations.md,
/// "Monitoring"), in milliseconds, over the requests of the access log. Reads are GET and HEAD
/// requests, writes the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    pub read_p95_ms: u32,
    pub read_p99_ms: u32,
    pub write_p95_ms: u32,
    pub write_p99_ms: u32,
}

impl Default for SloConfig {
    fn default() -> Self {
        Self {
            read_p95_ms: 100,
            read_p99_ms: 250,
            write_p95_ms: 50,
            write_p99_ms: 250,
        }
    }
}

/// Field encryption and data keys (docs/keys.md). The master key comes from
/// `ORGBASE_MASTER_KEY` (base64 of 32 bytes) when set, else from `master_key_file`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeysSettings {
    /// Encrypt values of columns classified confidential, pii or phi before they reach
    /// PostgreSQL. Turning it off stores new values in clear; existing ciphertexts still decrypt.
    pub field_encryption: bool,
    /// Directory of all key material [default: <data_dir>/keys]. Never inside PGDATA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The master key file [default: <keys dir>/master.key].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    /// A data key is rotated when its current version is this old.
    pub rotation_max_age_days: u32,
    /// How often a cached key is re-read, to see rotations and destructions by other processes.
    pub cache_revalidate_ms: u64,
    /// Most data keys kept unwrapped in memory.
    pub cache_capacity: usize,
}

impl Default for KeysSettings {
    fn default() -> Self {
        Self {
            field_encryption: true,
            dir: None,
            master_key_file: None,
            rotation_max_age_days: 90,
            cache_revalidate_ms: 1000,
            cache_capacity: 10_000,
        }
    }
}

/// GDPR requests: export and erasure (docs/erasure.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Days between an erasure request (soft delete at once) and the hard delete and
    /// crypto-shred.
    pub erasure_grace_days: u32,
    /// Days an export archive stays downloadable.
    pub export_keep_days: u32,
    /// Where export archives and certificates of deletion are written [default:
    /// <data_dir>/privacy].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            erasure_grace_days: 90,
            export_keep_days: 7,
            dir: None,
        }
    }
}

impl PrivacyConfig {
    /// The directory of exports and certificates, relative to `data_dir` unless configured.
    pub fn dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("privacy"))
    }
}

/// The audit trail and access logs (docs/audit.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How often the server seals new audit entries into the hash chains.
    pub seal_interval_ms: u64,
    /// How often the server writes a signed checkpoint of the chain heads (0: never).
    pub checkpoint_interval_secs: u64,
    /// Where checkpoints go [default: <data_dir>/audit-checkpoints].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Record every HTTP request in orgbase.access_log.
    pub access_log: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            seal_interval_ms: 1000,
            checkpoint_interval_secs: 300,
            checkpoint_dir: None,
            access_log: true,
        }
    }
}

impl AuditConfig {
    /// The checkpoint directory, relative to `data_dir` unless configured.
    pub fn checkpoint_dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.checkpoint_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("audit-checkpoints"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub request_timeout_secs: u64,
    pub body_limit_bytes: usize,
    pub shutdown_grace_secs: u64,
    /// Reverse proxies (an address or a CIDR block each) whose `X-Forwarded-For` is believed.
    /// Empty (the default): the client is the peer of the TCP connection, and the header is
    /// ignored.
    pub trusted_proxies: Vec<String>,
    /// Origins (`https://app.example.com`) whose browser pages may call the API (CORS). Empty
    /// (the default): no cross-origin browser access; clients that are not browsers are not
    /// affected either way.
    pub cors_origins: Vec<String>,
    /// Who may create an account, through the API and the console alike.
    pub signup: SignupMode,
}

/// Who may create an account (`server.signup`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SignupMode {
    /// Anyone (the default).
    #[default]
    Open,
    /// Only someone with a pending invitation, for the email it was sent to.
    InviteOnly,
    /// No one: accounts come from `orgbase admin create` (and invitations to existing accounts).
    Closed,
}

impl SignupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SignupMode::Open => "open",
            SignupMode::InviteOnly => "invite-only",
            SignupMode::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_url: Option<Secret>,
    pub pool_max_size: usize,
    /// Requests that may wait for a connection when all are busy; beyond them a request is
    /// refused at once with 503 and `Retry-After`.
    pub pool_wait_queue: usize,
    pub connect_timeout_secs: u64,
    pub statement_timeout_ms: u64,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    pub os_user: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_address: Option<IpAddr>,
    pub shared_buffers: String,
    pub max_connections: u32,
    /// `serve` restarts a PostgreSQL that died at most this many times within
    /// `restart_window_secs`; one more and it exits non-zero for its supervisor to act.
    pub restart_limit: u32,
    pub restart_window_secs: u64,
}

/// Encrypted backups and point-in-time recovery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// A local directory or `s3://bucket/prefix`; `None` means `<data_dir>/backups`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The backup master key (64 hex digits) for when `<data_dir>/keys/backup` is not wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Secret>,
    /// A file of master keys, one hex key per line, the first encrypting new backups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Connection URL for the backup role; when unset orgbase gives it a generated password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    /// Endpoint, region and credentials of an `s3://` store.
    pub s3: S3Config,
    pub key_max_age_days: u32,
    pub schedule: bool,
    /// How often `serve` checks whether a tier's backup is due.
    pub schedule_check_secs: u64,
    pub tiers: String,
    pub zstd_level: i32,
    pub zstd_threads: u32,
    pub pitr: bool,
    pub archive_timeout_secs: u32,
    pub base_backup_every_hours: u32,
    pub pitr_keep_days: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            store: None,
            master_key: None,
            key_file: None,
            url: None,
            s3: S3Config::default(),
            key_max_age_days: 90,
            schedule: true,
            schedule_check_secs: 60,
            tiers: "6h:30d,1d:90d,7d:365d".into(),
            zstd_level: 3,
            zstd_threads: 0,
            pitr: false,
            archive_timeout_secs: 60,
            base_backup_every_hours: 24,
            pitr_keep_days: 7,
        }
    }
}

/// An S3-compatible backup store (`backup.store = "s3://bucket/prefix"`). Each field left unset
/// is taken from the usual `AWS_*` environment variable (`AWS_ENDPOINT`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`), then from the defaults of
/// AWS itself (region us-east-1, the instance's credentials).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `https://…` (or `http://…` with `allow_http`) of an S3-compatible service; unset: AWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// Allow a plain-HTTP endpoint (a local test server; never across a network).
    pub allow_http: bool,
}

/// One backup tier: a backup every `every`, kept for `keep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// The tier's name as written in `backup.tiers` (`6h`, `1d`, `7d`).
    pub name: String,
    pub every: Duration,
    pub keep: Duration,
}

fn parse_span(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (num, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = num.parse().ok().filter(|n| *n > 0)?;
    match unit {
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        "d" => Some(Duration::from_secs(n * 86_400)),
        _ => None,
    }
}

impl BackupConfig {
    /// The tiers of `backup.tiers` (`every:keep,…`, e.g. `6h:30d,1d:90d,7d:365d`).
    pub fn parse_tiers(&self) -> Result<Vec<Tier>, ConfigError> {
        let mut tiers = Vec::new();
        for item in self.tiers.split(',').filter(|s| !s.trim().is_empty()) {
            let parsed = item
                .split_once(':')
                .and_then(|(e, k)| Some((e.trim(), parse_span(e)?, parse_span(k)?)));
            let Some((name, every, keep)) = parsed else {
                return Err(ConfigError::Field {
                    key: "backup.tiers",
                    message: format!(
                        "`{}` is not EVERY:KEEP with a unit of d, h, m or s, e.g. \"6h:30d,1d:90d,7d:365d\"",
                        item.trim()
                    ),
                });
            };
            tiers.push(Tier {
                name: name.to_string(),
                every,
                keep,
            });
        }
        Ok(tiers)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    /// Statements of a request that take at least this long are logged with the request's
    /// route, id and organization (0: none).
    pub slow_query_ms: u64,
}

impl LogConfig {
    /// The slow-query threshold, `None` when off.
    pub fn slow_query(&self) -> Option<Duration> {
        (self.slow_query_ms > 0).then(|| Duration::from_millis(self.slow_query_ms))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./orgbase-data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            embedded: EmbeddedConfig::default(),
            log: LogConfig::default(),
            audit: AuditConfig::default(),
            backup: BackupConfig::default(),
            keys: KeysSettings::default(),
            privacy: PrivacyConfig::default(),
            slo: SloConfig::default(),
            analytics: AnalyticsConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout_secs: 30,
            body_limit_bytes: 1024 * 1024,
            shutdown_grace_secs: 30,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            signup: SignupMode::Open,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            runtime_url: None,
            pool_max_size: 16,
            pool_wait_queue: 100,
            connect_timeout_secs: 5,
            statement_timeout_ms: 30_000,
            migrate_on_start: true,
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            bin_dir: None,
            os_user: "postgres".into(),
            port: 5432,
            tcp_address: None,
            shared_buffers: "128MB".into(),
            max_connections: 100,
            restart_limit: 5,
            restart_window_secs: 600,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            slow_query_ms: 100,
        }
    }
}

impl ServerConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
    /// The trusted proxies as networks (entries that do not parse were refused by `validate`).
    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| parse_net(p))
            .collect()
    }
}

/// `https://host[:port]` or `http://host[:port]`: what a browser sends as `Origin`.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    matches!(scheme, "http" | "https")
        && !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

/// `10.0.0.0/8`, `fd00::/8`, or a single address (`127.0.0.1`, `::1`) as its /32 or /128.
fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

impl DatabaseConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

/// Where the layered loader reads from. Flags are passed as `(key, value)` overrides, e.g.
/// `("server.listen", "0.0.0.0:8080")`.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    /// An explicit `--config FILE` (must exist). When `None`, `./orgbase.toml` is read if present.
    pub file: Option<&'a Path>,
    /// The process environment (passed in so tests need not mutate the real one).
    pub env: HashMap<String, String>,
    pub overrides: Vec<(&'static str, String)>,
}

impl Config {
    /// Load defaults → file → environment → overrides, reject unknown keys, validate.
    pub fn load(sources: Sources<'_>) -> Result<Self, ConfigError> {
        let defaults = config::Config::try_from(&Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);

        let (path, required) = match sources.file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("orgbase.toml"), false),
        };
        if path.exists() || required {
            // Parse the file ourselves first: toml reports line and column, and unknown keys by name.
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
            toml::from_str::<Config>(&text).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string().trim_end().to_string(),
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }

        let env: HashMap<String, String> = sources
            .env
            .into_iter()
            .filter(|(k, _)| k.starts_with("ORGBASE_") && !FLAG_ENV_VARS.contains(&k.as_str()))
            .collect();
        for key in env.keys() {
            if !key["ORGBASE_".len()..].contains("__") && !is_top_level_env(key) {
                return Err(ConfigError::Invalid(format!(
                    "unknown environment variable `{key}`: keys inside a section are named \
                     ORGBASE_<SECTION>__<KEY>, e.g. ORGBASE_SERVER__LISTEN"
                )));
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix("ORGBASE")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                // ORGBASE_SERVER__TRUSTED_PROXIES="10.0.0.0/8,192.168.1.5"
                .list_separator(",")
                .with_list_parse_key("server.trusted_proxies")
                .with_list_parse_key("server.cors_origins")
                .source(Some(env)),
        );
        for (key, value) in sources.overrides {
            builder = builder
                .set_override(key, value)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        let merged = builder
            .build()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let config: Config = merged
            .try_deserialize()
            .map_err(|e| ConfigError::Invalid(env_hint(e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |key, message: &str| {
            Err(ConfigError::Field {
                key,
                message: message.to_string(),
            })
        };
        if self.data_dir.as_os_str().is_empty() {
            return field("data_dir", "must not be empty");
        }
        if self.server.request_timeout_secs == 0 {
            return field("server.request_timeout_secs", "must be at least 1");
        }
        if self.server.body_limit_bytes < 1024 {
            return field("server.body_limit_bytes", "must be at least 1024");
        }
        if let Some(bad) = self
            .server
            .trusted_proxies
            .iter()
            .find(|p| parse_net(p).is_none())
        {
            return Err(ConfigError::Field {
                key: "server.trusted_proxies",
                message: format!(
                    "`{bad}` is not an IP address or CIDR block (e.g. \"10.0.0.0/8\", \"127.0.0.1\")"
                ),
            });
        }
        if let Some(bad) = self.server.cors_origins.iter().find(|o| !is_origin(o)) {
            return Err(ConfigError::Field {
                key: "server.cors_origins",
                message: format!(
                    "`{bad}` is not an origin: scheme, host and optional port, no path \
                     (e.g. \"https://app.example.com\", \"http://localhost:3000\")"
                ),
            });
        }
        if self.database.pool_max_size == 0 {
            return field("database.pool_max_size", "must be at least 1");
        }
        if self.database.pool_wait_queue == 0 {
            return field("database.pool_wait_queue", "must be at least 1");
        }
        if self.database.connect_timeout_secs == 0 {
            return field("database.connect_timeout_secs", "must be at least 1");
        }
        if self.audit.seal_interval_ms < 10 {
            return field("audit.seal_interval_ms", "must be at least 10");
        }
        if self.embedded.max_connections < 10 {
            return field("embedded.max_connections", "must be at least 10");
        }
        if self.embedded.restart_window_secs == 0 {
            return field("embedded.restart_window_secs", "must be at least 1");
        }
        if self.embedded.port == 0 {
            return field("embedded.port", "must not be 0");
        }
        if self.embedded.os_user.is_empty() {
            return field("embedded.os_user", "must not be empty");
        }
        let sb = &self.embedded.shared_buffers;
        let digits = sb.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &sb[digits.len()..];
        if digits.parse::<u64>().is_err() || !["", "kB", "MB", "GB"].contains(&unit) {
            return field(
                "embedded.shared_buffers",
                "must be a number with an optional unit kB, MB or GB, e.g. \"128MB\"",
            );
        }
        if let Some(url) = &self.database.url
            && !(url.expose().starts_with("postgres://")
                || url.expose().starts_with("postgresql://"))
        {
            return field(
                "database.url",
                "must start with postgres:// or postgresql://",
            );
        }
        if let Some(url) = &self.database.runtime_url
            && !(url.expose().starts_with("postgres://")
                || url.expose().starts_with("postgresql://"))
        {
            return field(
                "database.runtime_url",
                "must start with postgres:// or postgresql://",
            );
        }
        self.backup.parse_tiers()?;
        if !(-7..=22).contains(&self.backup.zstd_level) {
            return field("backup.zstd_level", "must be between -7 and 22");
        }
        if self.backup.archive_timeout_secs == 0 || self.backup.archive_timeout_secs > 300 {
            return field(
                "backup.archive_timeout_secs",
                "must be between 1 and 300 (the recovery point objective is under 5 minutes)",
            );
        }
        if self.backup.base_backup_every_hours == 0 {
            return field("backup.base_backup_every_hours", "must be at least 1");
        }
        if self.backup.schedule_check_secs == 0 {
            return field("backup.schedule_check_secs", "must be at least 1");
        }
        let s3 = &self.backup.s3;
        if let Some(e) = &s3.endpoint {
            if e.starts_with("http://") {
                if !s3.allow_http {
                    return field(
                        "backup.s3.endpoint",
                        "is plain http://: set backup.s3.allow_http = true (only for a local test server) or use https://",
                    );
                }
            } else if !e.starts_with("https://") {
                return field("backup.s3.endpoint", "must start with https:// or http://");
            }
        }
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            let key = if s3.access_key_id.is_some() {
                "backup.s3.secret_access_key"
            } else {
                "backup.s3.access_key_id"
            };
            return field(
                key,
                "must be set together with the other one of access_key_id and secret_access_key",
            );
        }
        if let Some(url) = &self.backup.url
            && !(url.expose().starts_with("postgres://")
                || url.expose().starts_with("postgresql://"))
        {
            return field("backup.url", "must start with postgres:// or postgresql://");
        }
        if self.keys.rotation_max_age_days == 0 {
            return field("keys.rotation_max_age_days", "must be at least 1");
        }
        if self.keys.cache_capacity == 0 {
            return field("keys.cache_capacity", "must be at least 1");
        }
        if self.privacy.export_keep_days == 0 {
            return field("privacy.export_keep_days", "must be at least 1");
        }
        for (key, v) in [
            ("slo.read_p95_ms", self.slo.read_p95_ms),
            ("slo.read_p99_ms", self.slo.read_p99_ms),
            ("slo.write_p95_ms", self.slo.write_p95_ms),
            ("slo.write_p99_ms", self.slo.write_p99_ms),
        ] {
            if v == 0 {
                return field(key, "must be at least 1 (milliseconds)");
            }
        }
        let a = &self.analytics;
        if a.k < 2 {
            return field("analytics.k", "must be at least 2");
        }
        for (key, v) in [
            ("analytics.budget_epsilon", a.budget_epsilon),
            ("analytics.max_query_epsilon", a.max_query_epsilon),
        ] {
            let micro = v * 1e6;
            if !v.is_finite() || !(0.0..=1e6).contains(&v) || (micro - micro.round()).abs() > 1e-6 {
                return field(
                    key,
                    "must be a number from 0 to 1000000 in whole millionths",
                );
            }
        }
        if a.max_query_epsilon <= 0.0 {
            return field("analytics.max_query_epsilon", "must be greater than 0");
        }
        if !["none", "day", "month", "year"].contains(&a.budget_period.as_str()) {
            return field(
                "analytics.budget_period",
                "must be none, day, month or year",
            );
        }
        Ok(())
    }

    /// True when orgbase runs its own PostgreSQL cluster under `data_dir`.
    pub fn embedded(&self) -> bool {
        self.database.url.is_none()
    }
}

fn is_top_level_env(key: &str) -> bool {
    key == "ORGBASE_DATA_DIR"
}

/// The config crate lowercases environment keys; say which variable an unknown key came from.
fn env_hint(message: String) -> String {
    if message.contains("unknown field") {
        format!("{message} (check orgbase.toml and ORGBASE_* environment variables)")
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile_lite::NamedFile {
        tempfile_lite::NamedFile::new(text)
    }

    mod tempfile_lite {
        //! A tiny named temp file, to keep `tempfile` out of this crate's dependencies.
        use std::path::PathBuf;
        #[derive(Debug)]
        pub struct NamedFile(pub PathBuf);
        impl NamedFile {
            pub fn new(text: &str) -> Self {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!(
                    "orgbase-config-test-{}-{n}.toml",
                    std::process::id()
                ));
                std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
                Self(path)
            }
        }
        impl Drop for NamedFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_validate() {
        let c = Config::load(Sources::default()).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.embedded());
    }

    #[test]
    fn example_file_is_the_defaults() {
        let f = file(EXAMPLE);
        let c = Config::load(Sources {
            file: Some(&f.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn layers_apply_in_order() {
        let f = file("[server]\nlisten = \"127.0.0.1:9000\"\nrequest_timeout_secs = 7\n");
        let c = Config::load(Sources {
            file: Some(&f.0),
            env: env(&[
                ("ORGBASE_SERVER__REQUEST_TIMEOUT_SECS", "9"),
                ("ORGBASE_DATABASE__POOL_MAX_SIZE", "3"),
                ("HOME", "/root"),
            ]),
            overrides: vec![("server.listen", "127.0.0.1:9100".into())],
        })
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.server.request_timeout_secs, 9);
        assert_eq!(c.database.pool_max_size, 3);
    }

    #[test]
    fn unknown_file_key_is_named_with_its_line() {
        let f = file("data_dir = \"x\"\n[server]\nlisen = \"127.0.0.1:1\"\n");
        let err = Config::load(Sources {
            file: Some(&f.0),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains(&f.0.display().to_string()), "{err}");
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = Config::load(Sources {
            env: env(&[("ORGBASE_SERVER__LISEN", "127.0.0.1:1")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = Config::load(Sources {
            env: env(&[("ORGBASE_LISEN", "x")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("ORGBASE_LISEN"), "{err}");
    }

    #[test]
    fn cors_origins_are_origins() {
        for good in [
            "https://app.example.com",
            "http://localhost:3000",
            "http://[::1]:8080",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "ftp://x",
            "https://",
            "http://x:0",
            "https://a b",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
        let mut c = Config::default();
        c.server.cors_origins = vec!["https://app.example.com/path".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.cors_origins"), "{e}");
        let mut c = Config::default();
        c.embedded.restart_window_secs = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("embedded.restart_window_secs"), "{e}");
    }

    #[test]
    fn trusted_proxies_from_file_and_environment() {
        assert!(Config::default().server.trusted_proxies().is_empty());
        let f = file("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n");
        let c = Config::load(Sources {
            file: Some(&f.0),
            ..Default::default()
        })
        .unwrap();
        let nets: Vec<String> = c
            .server
            .trusted_proxies()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);
        let c = Config::load(Sources {
            env: env(&[(
                "ORGBASE_SERVER__TRUSTED_PROXIES",
                "127.0.0.1, 192.168.0.0/16",
            )]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.server.trusted_proxies().len(), 2);
        for bad in [
            "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "[server]\ntrusted_proxies = [\"proxy.internal\"]\n",
        ] {
            let f = file(bad);
            let err = Config::load(Sources {
                file: Some(&f.0),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("server.trusted_proxies"), "{err}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::load(Sources {
            overrides: vec![("database.pool_max_size", "0".into())],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("database.pool_max_size"), "{err}");
        let err = Config::load(Sources {
            overrides: vec![("database.pool_wait_queue", "0".into())],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("database.pool_wait_queue") && err.contains("at least 1"),
            "{err}"
        );
        let f = file("[server]\nlisten = \"not an address\"\n");
        let err = Config::load(Sources {
            file: Some(&f.0),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Config::load(Sources {
            overrides: vec![("database.url", "mysql://x".into())],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("database.url"), "{err}");
        let mut missing = std::env::temp_dir();
        missing.push("orgbase-no-such-config.toml");
        let err = Config::load(Sources {
            file: Some(&missing),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("orgbase-no-such-config.toml"), "{err}");
        let _ = std::io::stdout().flush();
    }

    #[test]
    fn backup_s3_settings_load_and_bad_ones_are_named() {
        let f = file(
            "[backup]\nstore = \"s3://b/p\"\n[backup.s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n",
        );
        let c = Config::load(Sources {
            file: Some(&f.0),
            env: env(&[
                ("ORGBASE_BACKUP__S3__ACCESS_KEY_ID", "AKID"),
                ("ORGBASE_BACKUP__S3__SECRET_ACCESS_KEY", "shh-secret"),
                ("ORGBASE_BACKUP__S3__REGION", "eu-central-1"),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.backup.s3.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(c.backup.s3.region.as_deref(), Some("eu-central-1"));
        assert_eq!(c.backup.s3.access_key_id.as_deref(), Some("AKID"));
        assert!(!format!("{c:?}").contains("shh-secret"));
        let cases = [
            (
                vec![("backup.s3.endpoint", "http://h:1")],
                "backup.s3.endpoint",
            ),
            (
                vec![("backup.s3.endpoint", "ftp://h")],
                "backup.s3.endpoint",
            ),
            (
                vec![("backup.s3.access_key_id", "A")],
                "backup.s3.secret_access_key",
            ),
            (
                vec![("backup.s3.secret_access_key", "S")],
                "backup.s3.access_key_id",
            ),
            (
                vec![("backup.schedule_check_secs", "0")],
                "backup.schedule_check_secs",
            ),
            (vec![("backup.tiers", "6x:30d")], "backup.tiers"),
        ];
        for (overrides, key) in cases {
            let overrides = overrides
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect();
            let err = Config::load(Sources {
                overrides,
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_zero_latency_target_is_refused_by_name() {
        for key in ["read_p95_ms", "read_p99_ms", "write_p95_ms", "write_p99_ms"] {
            let mut c = Config::default();
            match key {
                "read_p95_ms" => c.slo.read_p95_ms = 0,
                "read_p99_ms" => c.slo.read_p99_ms = 0,
                "write_p95_ms" => c.slo.write_p95_ms = 0,
                _ => c.slo.write_p99_ms = 0,
            }
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("slo.{key}")), "{key}: {e}");
        }
    }

    #[test]
    fn tiers_take_seconds_and_minutes() {
        let b = BackupConfig {
            tiers: "30s:2m,1h:1d".into(),
            ..Default::default()
        };
        let t = b.parse_tiers().unwrap();
        assert_eq!(t[0].every, Duration::from_secs(30));
        assert_eq!(t[0].keep, Duration::from_secs(120));
        assert_eq!(t[1].keep, Duration::from_secs(86_400));
    }
}
