//! Backup metrics for `/metrics` (last success time, duration, size, failures, by kind) and the
//! warnings R21 asks for: size growth over 20 % and duration over 30 minutes.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Manifest;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `dump` or `base`.
    pub kind: String,
}

#[derive(Clone, Debug, Default)]
pub struct BackupMetrics {
    pub last_success: Family<KindLabel, Gauge>,
    pub duration: Family<KindLabel, Gauge<f64, AtomicU64>>,
    pub size: Family<KindLabel, Gauge>,
    pub failures: Family<KindLabel, Counter>,
}

/// Limits past which a backup is logged as a warning.
pub const GROWTH_WARN: f64 = 1.2;
pub const DURATION_WARN_MS: u64 = 30 * 60 * 1000;

impl BackupMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the last successful backup finished (Unix time)",
            self.last_success.clone(),
        );
        registry.register(
            "backup_last_duration_seconds",
            "How long the last successful backup took",
            self.duration.clone(),
        );
        registry.register(
            "backup_last_size_bytes",
            "Stored (compressed, encrypted) size of the last successful backup",
            self.size.clone(),
        );
        registry.register(
            "backup_failures",
            "Backups that failed",
            self.failures.clone(),
        );
    }

    /// Record a success; warn when it grew > 20 % over `previous` or took over 30 minutes.
    /// Returns the warnings logged.
    pub fn success(&self, m: &Manifest, previous: Option<&Manifest>) -> Vec<String> {
        let l = KindLabel {
            kind: format!("{:?}", m.kind).to_lowercase(),
        };
        self.last_success
            .get_or_create(&l)
            .set(m.finished_at.timestamp());
        self.duration
            .get_or_create(&l)
            .set(m.duration_ms as f64 / 1000.0);
        self.size.get_or_create(&l).set(m.stored_bytes as i64);
        warnings(m, previous)
    }

    pub fn failure(&self, kind: &str) {
        self.failures
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
}

/// The R21 alerts for a finished backup, also logged at warn level.
pub fn warnings(m: &Manifest, previous: Option<&Manifest>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = previous
        && p.raw_bytes > 0
        && m.raw_bytes as f64 > p.raw_bytes as f64 * GROWTH_WARN
    {
        out.push(format!(
            "backup {} is {} bytes, {:.0} % more than the previous one ({} bytes)",
            m.id,
            m.raw_bytes,
            (m.raw_bytes as f64 / p.raw_bytes as f64 - 1.0) * 100.0,
            p.raw_bytes
        ));
    }
    if m.duration_ms > DURATION_WARN_MS {
        out.push(format!(
            "backup {} took {} min, over the 30 min limit",
            m.id,
            m.duration_ms / 60_000
        ));
    }
    for w in &out {
        tracing::warn!(backup = %m.id, "{w}");
    }
    out
}
