//! Prometheus metrics in an explicit registry held by the app state.

use std::sync::atomic::AtomicU64;

use orgbase_db::Pool;
use orgbase_db::observe::QueryMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route template (`/v1/orgs/{org}/{table}`), never the raw path.
    pub route: String,
    pub status: u16,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_duration: Family<HttpLabels, Histogram>,
    /// The request pool's statement figures (also timed here: the server's own background
    /// statements, sealing and access-log batches).
    pub queries: QueryMetrics,
    pub access_log_dropped: Counter,
    pub access_log_written: Counter,
    pub access_log_queue: Gauge,
    pub audit_sealed: Counter,
    pub audit_seal_lag: Gauge<f64, AtomicU64>,
    pub audit_last_seal: Gauge<f64, AtomicU64>,
    pub audit_seal_failures: Counter,
    pub audit_checkpoints: Counter,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    /// The registry, with the request `pool`'s figures read at each scrape.
    pub fn new(pool: &Pool) -> Self {
        let mut registry = Registry::with_prefix("orgbase");
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            latency_buckets as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method, matched route and status",
            http_duration.clone(),
        );
        registry.register_collector(Box::new(PoolCollector(pool.clone())));
        let queries = pool.metrics().clone();
        queries.register(&mut registry);
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines not written (queue full or database error)",
            access_log_dropped.clone(),
        );
        let access_log_written = Counter::default();
        registry.register(
            "access_log_written",
            "Access log lines written to orgbase.access_log",
            access_log_written.clone(),
        );
        let access_log_queue = Gauge::default();
        registry.register(
            "access_log_queue_lines",
            "Access log lines waiting to be written (the queue holds 65536; beyond, lines are \
             dropped)",
            access_log_queue.clone(),
        );
        let audit_sealed = Counter::default();
        registry.register(
            "audit_sealed_entries",
            "Audit entries sealed into the hash chains",
            audit_sealed.clone(),
        );
        let audit_seal_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "audit_seal_lag_seconds",
            "Age of the oldest entry sealed by the last sealing round, from write to seal (0 when \
             the round found nothing to seal)",
            audit_seal_lag.clone(),
        );
        let audit_last_seal = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "audit_last_seal_timestamp_seconds",
            "When the last sealing round succeeded (Unix time; 0 before the first)",
            audit_last_seal.clone(),
        );
        let audit_seal_failures = Counter::default();
        registry.register(
            "audit_seal_failures",
            "Sealing rounds that failed",
            audit_seal_failures.clone(),
        );
        let audit_checkpoints = Counter::default();
        registry.register(
            "audit_checkpoints_written",
            "Signed audit checkpoints written",
            audit_checkpoints.clone(),
        );
        Self {
            registry,
            http_duration,
            queries,
            access_log_dropped,
            access_log_written,
            access_log_queue,
            audit_sealed,
            audit_seal_lag,
            audit_last_seal,
            audit_seal_failures,
            audit_checkpoints,
        }
    }

    /// For metrics kept elsewhere (e.g. backups) to register themselves before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The request pool, read at each scrape: connections, waiters, refusals and the
/// circuit breaker.
#[derive(Debug)]
struct PoolCollector(Pool);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.status();
        let gauges = [
            (
                "db_pool_connections",
                "Connections open in the request pool",
                status.size,
            ),
            (
                "db_pool_idle_connections",
                "Idle connections in the request pool",
                status.available,
            ),
            (
                "db_pool_waiting_requests",
                "Requests waiting for a pool connection",
                status.waiting,
            ),
            (
                "db_circuit_open",
                "1 while the circuit breaker refuses requests because PostgreSQL failed to give \
                 connections",
                usize::from(self.0.circuit_open()),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let refused = self.0.refusals();
        let mut family = encoder.encode_descriptor(
            "db_pool_refused_requests",
            "Requests refused before they started (503): reason queue_full (every connection \
             busy and the wait queue full) or circuit_open",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (reason, n) in [
            ("queue_full", refused.queue_full),
            ("circuit_open", refused.circuit_open),
        ] {
            let labels = [("reason", reason)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
