//! The request pool with its admission rules: a bounded wait queue, beyond which a request is
//! refused at once instead of waiting, and a circuit breaker that stops asking PostgreSQL for
//! connections after consecutive failures and refuses requests until its backoff has passed.
//!
//! The breaker opens after [`Limits::breaker_failures`] consecutive connection failures (a
//! connect that fails or times out; a request that merely waits too long for a busy pool is not
//! one). While open, every `get` is refused with the time left. When the backoff has passed, one
//! `get` is let through as a trial: success closes the breaker, failure opens it again for twice
//! as long, up to [`Limits::backoff_max`].

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime, Status, TimeoutType,
};
use tokio_postgres::NoTls;

use crate::DbError;
use crate::observe::QueryMetrics;

pub use deadpool_postgres::Object;

/// Admission limits of a [`Pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests that may wait for a connection when all are busy; the next one is refused.
    pub wait_queue: usize,
    /// Consecutive connection failures that open the breaker.
    pub breaker_failures: u32,
    /// The first open period; each failed trial doubles it.
    pub backoff_min: Duration,
    /// The longest open period.
    pub backoff_max: Duration,
}

impl Default for Limits {
    /// The defaults: a queue of 100, open after 10 failures, backoff 1 s → 16 s.
    fn default() -> Self {
        Self {
            wait_queue: 100,
            breaker_failures: 10,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(16),
        }
    }
}

/// Why [`Pool::get`] gave no connection.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The breaker is open: PostgreSQL failed to give connections; try again after the time.
    #[error(
        "database unreachable after repeated connection failures; retrying in {}s",
        retry_after_secs(*.retry_after)
    )]
    CircuitOpen { retry_after: Duration },
    /// The wait queue is full: the server is at capacity.
    #[error("all database connections are busy and {queue} requests are already waiting")]
    QueueFull { queue: usize },
    /// The server is known to be down (the embedded PostgreSQL exited and is being restarted):
    /// refused without trying to connect.
    #[error("{cause}")]
    Down { cause: String },
    /// The pool itself failed: a connect error or timeout, a wait timeout, or a closed pool.
    #[error("{}", describe(.0))]
    Pool(#[from] PoolError),
}

impl GetError {
    /// How long a client should wait before trying again, when the answer is "not now".
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GetError::CircuitOpen { retry_after } => Some(*retry_after),
            GetError::QueueFull { .. } | GetError::Down { .. } => Some(Duration::from_secs(1)),
            GetError::Pool(_) => None,
        }
    }
}

/// deadpool's own text hides PostgreSQL's message behind "db error"; this names it.
fn describe(e: &PoolError) -> String {
    match e {
        PoolError::Backend(pg) => {
            let mut out = format!("could not connect to the database: {pg}");
            let mut cause = std::error::Error::source(pg);
            while let Some(c) = cause {
                out.push_str(": ");
                out.push_str(&c.to_string());
                cause = c.source();
            }
            out
        }
        other => other.to_string(),
    }
}

/// Whole seconds, rounded up, at least 1: what a `Retry-After` header can say.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// Refusals so far, by reason (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    pub circuit_open: u64,
    pub queue_full: u64,
}

/// A deadpool-postgres pool behind the admission rules. Cheap to clone; clones share the pool
/// and its breaker.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: deadpool_postgres::Pool,
    gate: Arc<Gate>,
    metrics: QueryMetrics,
}

impl Pool {
    /// Up to `max_size` connections of `config`, each given `connect_timeout` to connect; a
    /// request waits at most 10 s for one (then 503 `unavailable`).
    pub fn build(
        config: tokio_postgres::Config,
        max_size: usize,
        connect_timeout: Duration,
        limits: Limits,
    ) -> Result<Self, DbError> {
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let inner = deadpool_postgres::Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(connect_timeout))
            .wait_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))?;
        Ok(Self::new(inner, limits))
    }

    pub fn new(inner: deadpool_postgres::Pool, limits: Limits) -> Self {
        Self {
            inner,
            gate: Arc::new(Gate::new(limits)),
            metrics: QueryMetrics::default(),
        }
    }

    /// What the statements sent through this pool cost (see [`crate::observe`]).
    pub fn metrics(&self) -> &QueryMetrics {
        &self.metrics
    }

    /// A connection, or at once a refusal when the breaker is open or the wait queue is full.
    pub async fn get(&self) -> Result<Object, GetError> {
        self.get_with(true).await
    }

    /// A connection for the server's own background work (the access-log writer), which must
    /// not lose its turn to a burst of requests: it waits however long the queue is. The
    /// breaker refuses it like any request.
    pub async fn get_background(&self) -> Result<Object, GetError> {
        self.get_with(false).await
    }

    async fn get_with(&self, bounded: bool) -> Result<Object, GetError> {
        if self.gate.down.load(Ordering::Acquire) {
            return Err(GetError::Down {
                cause: self.down_cause().unwrap_or_default(),
            });
        }
        // Dropped unsettled (refused by the queue, cancelled, or no answer about the database),
        // the trial lets the next request try instead.
        let trial = self.gate.admit()?;
        let waiting = if bounded {
            Some(Waiting::enter(&self.gate)?)
        } else {
            None
        };
        let asked = Instant::now();
        let got = self.inner.get().await;
        drop(waiting);
        self.metrics.waited(asked.elapsed());
        match got {
            Ok(obj) => {
                Trial::settle(trial);
                self.gate.succeeded();
                Ok(obj)
            }
            Err(e) => {
                if is_connection_failure(&e) {
                    self.gate.failed(Trial::settle(trial));
                }
                Err(e.into())
            }
        }
    }

    /// Connections open, idle and waited for (deadpool's own count).
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Whether the breaker is refusing requests now.
    pub fn circuit_open(&self) -> bool {
        self.gate.is_open()
    }

    pub fn refusals(&self) -> Refusals {
        Refusals {
            circuit_open: self.gate.refused_open.load(Ordering::Relaxed),
            queue_full: self.gate.refused_queue.load(Ordering::Relaxed),
        }
    }

    /// Close the pool: idle connections now, the rest when returned.
    pub fn close(&self) {
        self.inner.close();
    }

    /// The server went away (`cause` says how): refuse every `get` at once with
    /// [`GetError::Down`] until [`Pool::set_up`], and drop the idle connections, which belong to
    /// the dead server. Connections in use fail on their own and are not returned.
    pub fn set_down(&self, cause: impl Into<String>) {
        *self.gate.cause() = Some(cause.into());
        self.gate.down.store(true, Ordering::Release);
        self.inner.retain(|_, _| false);
    }

    /// The server is back: admit requests again, with the breaker closed and its count reset
    /// (the failures it counted were the outage's). Idle connections made before are dropped.
    pub fn set_up(&self) {
        self.inner.retain(|_, _| false);
        self.gate.succeeded();
        *self.gate.cause() = None;
        self.gate.down.store(false, Ordering::Release);
    }

    /// Why the pool refuses requests now, when [`Pool::set_down`] said so.
    pub fn down_cause(&self) -> Option<String> {
        if self.gate.down.load(Ordering::Acquire) {
            self.gate.cause().clone()
        } else {
            None
        }
    }
}

/// A connect error or timeout: PostgreSQL did not give a connection. Waiting for a busy pool,
/// or a closed pool, says nothing about the database.
fn is_connection_failure(e: &PoolError) -> bool {
    matches!(
        e,
        PoolError::Backend(_)
            | PoolError::Timeout(TimeoutType::Create)
            | PoolError::PostCreateHook(_)
    )
}

#[derive(Debug)]
struct Gate {
    limits: Limits,
    /// Requests in `inner.get()` right now.
    waiting: AtomicUsize,
    /// Consecutive connection failures.
    failures: AtomicU32,
    /// Set while the breaker is open or half-open; the fast path only reads this.
    tripped: AtomicBool,
    breaker: Mutex<Breaker>,
    /// Set by [`Pool::set_down`]; the fast path only reads this.
    down: AtomicBool,
    down_cause: Mutex<Option<String>>,
    refused_open: AtomicU64,
    refused_queue: AtomicU64,
}

#[derive(Debug, Default)]
struct Breaker {
    /// Refuse until then.
    open_until: Option<Instant>,
    /// The current open period (doubles per failed trial).
    backoff: Duration,
    /// A trial `get` is under way; others are refused until it answers.
    trial: bool,
}

impl Gate {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            waiting: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            tripped: AtomicBool::new(false),
            breaker: Mutex::new(Breaker::default()),
            down: AtomicBool::new(false),
            down_cause: Mutex::new(None),
            refused_open: AtomicU64::new(0),
            refused_queue: AtomicU64::new(0),
        }
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        // The state stays consistent at every await-free step, so a poisoned lock is usable.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cause(&self) -> MutexGuard<'_, Option<String>> {
        self.down_cause.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ok(Some): this caller is the half-open trial.
    fn admit(&self) -> Result<Option<Trial<'_>>, GetError> {
        if !self.tripped.load(Ordering::Acquire) {
            return Ok(None);
        }
        let mut b = self.breaker();
        let now = Instant::now();
        match b.open_until {
            Some(until) if until > now => {
                drop(b);
                self.refused_open.fetch_add(1, Ordering::Relaxed);
                Err(GetError::CircuitOpen {
                    retry_after: until - now,
                })
            }
            _ if b.trial => {
                drop(b);
                self.refused_open.fetch_add(1, Ordering::Relaxed);
                Err(GetError::CircuitOpen {
                    retry_after: Duration::from_secs(1),
                })
            }
            Some(_) => {
                b.trial = true;
                Ok(Some(Trial(self)))
            }
            // Tripped but not opened: `succeeded` is closing it; let it through.
            None => Ok(None),
        }
    }

    /// Refusing now: open, or half-open with its trial under way.
    fn is_open(&self) -> bool {
        if !self.tripped.load(Ordering::Acquire) {
            return false;
        }
        let b = self.breaker();
        b.trial || b.open_until.is_some_and(|until| until > Instant::now())
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) == 0 && !self.tripped.load(Ordering::Acquire) {
            return;
        }
        let mut b = self.breaker();
        self.failures.store(0, Ordering::Relaxed);
        if b.open_until.is_some() {
            tracing::info!("database connections work again; circuit breaker closed");
        }
        *b = Breaker::default();
        self.tripped.store(false, Ordering::Release);
    }

    fn failed(&self, trial: bool) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.limits.breaker_failures && !trial {
            return;
        }
        let mut b = self.breaker();
        let now = Instant::now();
        if !trial && b.open_until.is_some_and(|until| until > now) {
            // Already open: a request admitted before it opened failed too.
            return;
        }
        b.backoff = if b.backoff.is_zero() {
            self.limits.backoff_min
        } else {
            (b.backoff * 2).min(self.limits.backoff_max)
        };
        b.open_until = Some(now + b.backoff);
        b.trial = false;
        self.tripped.store(true, Ordering::Release);
        tracing::warn!(
            failures,
            backoff_secs = b.backoff.as_secs_f64(),
            "database connections keep failing; circuit breaker open"
        );
    }
}

/// The one request let through a half-open breaker. Settled by its outcome; dropped unsettled,
/// it frees the place for the next request.
struct Trial<'a>(&'a Gate);

impl Trial<'_> {
    /// The outcome is in: keep the trial's place from being freed on drop. Whether there was one.
    fn settle(trial: Option<Self>) -> bool {
        trial.map(std::mem::forget).is_some()
    }
}

impl Drop for Trial<'_> {
    fn drop(&mut self) {
        self.0.breaker().trial = false;
    }
}

/// A place in the wait queue, left on drop (also when the request is cancelled).
struct Waiting<'a>(&'a Gate);

impl<'a> Waiting<'a> {
    fn enter(gate: &'a Gate) -> Result<Self, GetError> {
        // Only requests that find no idle connection really wait; the count includes the
        // others for the moment it takes them to get one.
        let before = gate.waiting.fetch_add(1, Ordering::AcqRel);
        let guard = Waiting(gate);
        if before >= gate.limits.wait_queue {
            drop(guard);
            gate.refused_queue.fetch_add(1, Ordering::Relaxed);
            return Err(GetError::QueueFull {
                queue: gate.limits.wait_queue,
            });
        }
        Ok(guard)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(16)), 16);
    }

    #[test]
    fn the_breaker_opens_after_the_limit_and_doubles_its_backoff_to_the_cap() {
        let gate = Gate::new(Limits {
            breaker_failures: 3,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            ..Limits::default()
        });
        for _ in 0..2 {
            assert!(gate.admit().unwrap().is_none());
            gate.failed(false);
        }
        assert!(!gate.is_open(), "two failures: still closed");
        gate.failed(false);
        assert!(gate.is_open());
        let open = gate.breaker().open_until.unwrap() - Instant::now();
        assert!(open > Duration::from_millis(900) && open <= Duration::from_secs(1));
        assert!(matches!(gate.admit(), Err(GetError::CircuitOpen { .. })));
        // Failed trials: 2 s, 4 s, then capped at 4 s.
        for want in [2, 4, 4] {
            gate.breaker().open_until = Some(Instant::now());
            let trial = gate
                .admit()
                .unwrap()
                .expect("the backoff passed: one trial");
            assert!(
                matches!(gate.admit(), Err(GetError::CircuitOpen { .. })),
                "one trial at a time"
            );
            assert!(Trial::settle(Some(trial)));
            gate.failed(true);
            assert_eq!(gate.breaker().backoff, Duration::from_secs(want));
        }
        // A trial dropped without an answer (cancelled) lets the next request try.
        gate.breaker().open_until = Some(Instant::now());
        drop(gate.admit().unwrap().expect("trial"));
        assert!(Trial::settle(gate.admit().unwrap()), "the next trial");
        gate.succeeded();
        assert!(!gate.is_open());
        assert!(gate.admit().unwrap().is_none());
        assert_eq!(gate.failures.load(Ordering::Relaxed), 0);
        assert_eq!(gate.refused_open.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_success_resets_the_count_of_consecutive_failures() {
        let gate = Gate::new(Limits {
            breaker_failures: 2,
            ..Limits::default()
        });
        gate.failed(false);
        gate.succeeded();
        gate.failed(false);
        assert!(!gate.is_open());
        gate.failed(false);
        assert!(gate.is_open());
    }

    #[test]
    fn the_wait_queue_is_bounded_and_places_are_given_back() {
        let gate = Gate::new(Limits {
            wait_queue: 2,
            ..Limits::default()
        });
        let a = Waiting::enter(&gate).unwrap();
        let _b = Waiting::enter(&gate).unwrap();
        assert!(matches!(
            Waiting::enter(&gate),
            Err(GetError::QueueFull { queue: 2 })
        ));
        drop(a);
        let _c = Waiting::enter(&gate).unwrap();
        assert_eq!(gate.waiting.load(Ordering::Relaxed), 2);
        assert_eq!(gate.refused_queue.load(Ordering::Relaxed), 1);
    }
}
