//! What the request pool's statements cost, by kind: latency histograms labelled by statement
//! kind and registered table (bounded label sets: a table label is only ever a name from the
//! catalog), the time requests wait for a connection, and the slow-query log.
//!
//! The figures live with the [`crate::Pool`] so that every statement sent through
//! [`crate::request`] is timed without its callers doing anything; the HTTP server registers
//! them on `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The HTTP request statements run for: the slow-query log names it.
#[derive(Debug, Clone, Default)]
pub struct RequestTag {
    /// The matched route template.
    pub route: String,
    pub request_id: String,
}

tokio::task_local! {
    static REQUEST: RequestTag;
}

/// Run `f` (a request's handler) with `tag` as the request its statements run for.
pub async fn tagged<F: Future>(tag: RequestTag, f: F) -> F::Output {
    REQUEST.scope(tag, f).await
}

/// What a statement (or the transaction of one request step) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A page of a tenant table.
    List,
    /// One record of a tenant table.
    Get,
    Create,
    Update,
    Delete,
    Restore,
    /// Authenticating the caller and setting the tenant context (the first step of a
    /// multi-statement request).
    ContextOpen,
    /// Any other statement in an organization (members, invitations, consent, …).
    Org,
    /// A statement outside any organization (sign-up, login, sessions).
    Account,
    /// One round of the audit sealer.
    AuditSeal,
    /// One batch of the access-log writer.
    AccessLogWrite,
    /// A differentially private query: the charge, the figures and the commit.
    Analytics,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::List,
        Kind::Get,
        Kind::Create,
        Kind::Update,
        Kind::Delete,
        Kind::Restore,
        Kind::ContextOpen,
        Kind::Org,
        Kind::Account,
        Kind::AuditSeal,
        Kind::AccessLogWrite,
        Kind::Analytics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::List => "list",
            Kind::Get => "get",
            Kind::Create => "create",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Restore => "restore",
            Kind::ContextOpen => "context_open",
            Kind::Org => "org",
            Kind::Account => "account",
            Kind::AuditSeal => "audit_seal",
            Kind::AccessLogWrite => "access_log_write",
            Kind::Analytics => "analytics",
        }
    }
}

/// A statement's labels: its kind and, for statements on a registered tenant table, the
/// table's name in URLs (empty otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label<'a> {
    pub kind: Kind,
    pub table: &'a str,
}

impl Label<'static> {
    pub const ORG: Label<'static> = Label::of(Kind::Org);
    pub const ACCOUNT: Label<'static> = Label::of(Kind::Account);

    pub const fn of(kind: Kind) -> Self {
        Label { kind, table: "" }
    }
}

impl<'a> Label<'a> {
    pub const fn on(kind: Kind, table: &'a str) -> Self {
        Label { kind, table }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    kind: &'static str,
    table: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The pool's statement figures. Cheap to clone; clones share them.
#[derive(Debug, Clone)]
pub struct QueryMetrics {
    duration: Family<QueryLabels, Histogram>,
    pool_wait: Histogram,
    slow: Family<KindLabel, Counter>,
    /// Statements at least this long (nanoseconds) are logged; 0: none.
    slow_nanos: Arc<AtomicU64>,
}

fn query_buckets() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ])
}

/// The default slow-query threshold.
pub const SLOW_DEFAULT: Duration = Duration::from_millis(100);

impl Default for QueryMetrics {
    fn default() -> Self {
        let slow = Family::<KindLabel, Counter>::default();
        // Every kind from the start, so that a rate over the counter starts at zero.
        for kind in Kind::ALL {
            let _ = slow.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        Self {
            duration: Family::new_with_constructor(query_buckets as fn() -> Histogram),
            pool_wait: query_buckets(),
            slow,
            slow_nanos: Arc::new(AtomicU64::new(SLOW_DEFAULT.as_nanos() as u64)),
        }
    }
}

impl QueryMetrics {
    /// Statements that take at least `threshold` are logged as slow; `None` logs none.
    pub fn set_slow_threshold(&self, threshold: Option<Duration>) {
        let nanos = threshold.map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
        self.slow_nanos
            .store(nanos.max(u64::from(threshold.is_some())), Ordering::Relaxed);
    }

    /// Add the figures to `registry` (prefixed as the registry is).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "db_query_duration_seconds",
            "Time PostgreSQL took for a request's statements (from holding a connection to the \
             answer), by statement kind and registered tenant table",
            self.duration.clone(),
        );
        registry.register(
            "db_pool_wait_seconds",
            "Time requests waited for a connection of the request pool",
            self.pool_wait.clone(),
        );
        registry.register(
            "db_slow_queries",
            "Statements slower than the slow-query threshold (log.slow_query_ms), by kind",
            self.slow.clone(),
        );
    }

    /// Record `elapsed` for the server's own background work of `label` (never logged as
    /// slow: it holds no request up).
    pub fn observe(&self, label: Label<'_>, elapsed: Duration) {
        self.histogram(label).observe(elapsed.as_secs_f64());
    }

    fn histogram(&self, label: Label<'_>) -> impl std::ops::Deref<Target = Histogram> + '_ {
        self.duration.get_or_create(&QueryLabels {
            kind: label.kind.as_str(),
            table: label.table.to_string(),
        })
    }

    pub(crate) fn waited(&self, d: Duration) {
        self.pool_wait.observe(d.as_secs_f64());
    }

    /// Record one statement of `label` that started at `started`; a slow one is also logged,
    /// with the route and request id of the request it ran for ([`tagged`]) and `org`.
    pub fn record(&self, label: Label<'_>, started: Instant, org: Option<&dyn std::fmt::Display>) {
        let elapsed = started.elapsed();
        self.histogram(label).observe(elapsed.as_secs_f64());
        let slow = self.slow_nanos.load(Ordering::Relaxed);
        if slow > 0 && elapsed.as_nanos() >= u128::from(slow) {
            self.slow
                .get_or_create(&KindLabel {
                    kind: label.kind.as_str(),
                })
                .inc();
            let org = org.map(ToString::to_string).unwrap_or_default();
            let tag = REQUEST.try_with(RequestTag::clone).unwrap_or_default();
            tracing::warn!(
                route = %tag.route,
                request_id = %tag.request_id,
                kind = label.kind.as_str(),
                table = label.table,
                org_id = %org,
                elapsed_ms = %format_args!("{:.1}", elapsed.as_secs_f64() * 1000.0),
                "slow query"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_distinct_labels() {
        let mut names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Kind::ALL.len());
    }

    #[test]
    fn families_carry_kind_and_table() {
        let m = QueryMetrics::default();
        m.set_slow_threshold(Some(Duration::from_nanos(1)));
        m.record(Label::on(Kind::List, "notes"), Instant::now(), None);
        m.record(Label::ACCOUNT, Instant::now(), None);
        let mut r = Registry::with_prefix("orgbase");
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains(r#"orgbase_db_query_duration_seconds_count{kind="list",table="notes"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"orgbase_db_query_duration_seconds_count{kind="account",table=""} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"orgbase_db_slow_queries_total{kind="list"} 1"#),
            "{out}"
        );
    }
}
