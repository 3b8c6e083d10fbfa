//! Prometheus metrics in an explicit registry held by the app state.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route template (`/v1/orgs/{org}/notes`), never the raw path.
    pub route: String,
    pub status: u16,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub pool_size: Gauge,
    pub pool_available: Gauge,
    pub pool_waiting: Gauge,
    pub access_log_dropped: Counter,
    pub audit_sealed: Counter,
    pub audit_seal_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub audit_seal_failures: Counter,
    pub audit_checkpoints: Counter,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orgbase");
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            latency_buckets as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method, matched route and status",
            http_duration.clone(),
        );
        let pool_size = Gauge::default();
        registry.register(
            "db_pool_connections",
            "Connections open in the request pool",
            pool_size.clone(),
        );
        let pool_available = Gauge::default();
        registry.register(
            "db_pool_idle_connections",
            "Idle connections in the request pool",
            pool_available.clone(),
        );
        let pool_waiting = Gauge::default();
        registry.register(
            "db_pool_waiting_requests",
            "Requests waiting for a pool connection",
            pool_waiting.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines not written (queue full or database error)",
            access_log_dropped.clone(),
        );
        let audit_sealed = Counter::default();
        registry.register(
            "audit_sealed_entries",
            "Audit entries sealed into the hash chains",
            audit_sealed.clone(),
        );
        let audit_seal_lag = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "audit_seal_lag_seconds",
            "Age of the oldest entry in the last sealing round (write to seal)",
            audit_seal_lag.clone(),
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
            pool_size,
            pool_available,
            pool_waiting,
            access_log_dropped,
            audit_sealed,
            audit_seal_lag,
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
