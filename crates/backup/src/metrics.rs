//! Backup metrics for `/metrics` (last success time, duration, size, failures, by kind) and the
//! warnings about a finished backup: size growth over 20 % and duration over 30 minutes.

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

    /// Give `kind` (`dump`, `base`) its series at once, so every family is on `/metrics` before
    /// the first backup: zeros, or the newest backup already in the store.
    pub fn start(&self, kind: &str, latest: Option<&Manifest>) {
        let l = KindLabel { kind: kind.into() };
        // Creating the series is the point; the guards are dropped at once.
        let _ = self.last_success.get_or_create(&l);
        let _ = self.duration.get_or_create(&l);
        let _ = self.size.get_or_create(&l);
        let _ = self.failures.get_or_create(&l);
        if let Some(m) = latest {
            self.record(m);
        }
    }

    fn record(&self, m: &Manifest) {
        let l = KindLabel {
            kind: m.kind.to_string(),
        };
        self.last_success
            .get_or_create(&l)
            .set(m.finished_at.timestamp());
        self.duration
            .get_or_create(&l)
            .set(m.duration_ms as f64 / 1000.0);
        self.size.get_or_create(&l).set(m.stored_bytes as i64);
    }

    /// Record a success; warn when it grew > 20 % over `previous` or took over 30 minutes.
    /// Returns the warnings logged.
    pub fn success(&self, m: &Manifest, previous: Option<&Manifest>) -> Vec<String> {
        self.record(m);
        warnings(m, previous)
    }

    pub fn failure(&self, kind: &str) {
        self.failures
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
}

/// The alerts for a finished backup (size growth, duration), logged at warn level.
pub fn warnings(m: &Manifest, previous: Option<&Manifest>) -> Vec<String> {
    let out = alerts(m, previous);
    for w in &out {
        tracing::warn!(backup = %m.id, "{w}");
    }
    out
}

/// The decision behind [`warnings`]: a backup more than 20 % bigger (uncompressed dump size)
/// than the previous one, or one that took more than 30 minutes.
pub fn alerts(m: &Manifest, previous: Option<&Manifest>) -> Vec<String> {
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
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Kind;
    use prometheus_client::encoding::text::encode;

    fn manifest(id: &str, raw_bytes: u64, duration_ms: u64) -> Manifest {
        let at = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        Manifest {
            manifest_version: 1,
            id: id.into(),
            kind: Kind::Dump,
            tier: "6h".into(),
            started_at: at,
            finished_at: at,
            duration_ms,
            raw_bytes,
            compressed_bytes: raw_bytes / 3,
            stored_bytes: raw_bytes / 3 + 100,
            sha256: String::new(),
            object: String::new(),
            key_id: String::new(),
            key_version: 1,
            schema_version: None,
            orgbase_version: String::new(),
            postgres_version: String::new(),
            database: String::new(),
            row_counts: Default::default(),
            wal_start: None,
        }
    }

    #[test]
    fn growth_over_20_percent_warns_and_20_percent_does_not() {
        let prev = manifest("p", 1_000_000, 1000);
        assert!(alerts(&manifest("a", 1_200_000, 1000), Some(&prev)).is_empty());
        assert!(alerts(&manifest("a", 900_000, 1000), Some(&prev)).is_empty());
        let w = alerts(&manifest("a", 1_200_001, 1000), Some(&prev));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("20 % more"), "{w:?}");
        let w = alerts(&manifest("a", 1_500_000, 1000), Some(&prev));
        assert!(
            w[0].contains("50 % more than the previous one (1000000 bytes)"),
            "{w:?}"
        );
        // No previous backup, or an empty one: nothing to compare with.
        assert!(alerts(&manifest("a", 9_000_000, 1000), None).is_empty());
        assert!(alerts(&manifest("a", 9_000_000, 1000), Some(&manifest("p", 0, 1))).is_empty());
    }

    #[test]
    fn over_30_minutes_warns_and_30_minutes_does_not() {
        assert!(alerts(&manifest("a", 1, DURATION_WARN_MS), None).is_empty());
        let w = alerts(&manifest("a", 1, DURATION_WARN_MS + 1), None);
        assert_eq!(w, ["backup a took 30 min, over the 30 min limit"]);
        let w = alerts(&manifest("a", 1, 95 * 60 * 1000), None);
        assert!(w[0].contains("took 95 min"), "{w:?}");
        // Both at once.
        let prev = manifest("p", 100, 1);
        assert_eq!(
            alerts(&manifest("a", 200, 31 * 60 * 1000), Some(&prev)).len(),
            2
        );
    }

    #[test]
    fn families_show_before_the_first_backup_and_after_one() {
        let metrics = BackupMetrics::default();
        let mut registry = Registry::with_prefix("orgbase");
        metrics.register(&mut registry);
        metrics.start("dump", None);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "orgbase_backup_last_success_timestamp_seconds{kind=\"dump\"} 0",
            "orgbase_backup_last_duration_seconds{kind=\"dump\"} 0.0",
            "orgbase_backup_last_size_bytes{kind=\"dump\"} 0",
            "orgbase_backup_failures_total{kind=\"dump\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("NaN"), "{text}");
        let m = manifest("b", 3_000_000, 2500);
        metrics.success(&m, None);
        metrics.failure("dump");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "orgbase_backup_last_success_timestamp_seconds{kind=\"dump\"} 1790000000",
            "orgbase_backup_last_duration_seconds{kind=\"dump\"} 2.5",
            "orgbase_backup_last_size_bytes{kind=\"dump\"} 1000100",
            "orgbase_backup_failures_total{kind=\"dump\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
