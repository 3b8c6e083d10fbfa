//! The HTTP access log: one row per request in `orgbase.access_log` (method, matched
//! route, status, latency, actor, organization), written in batches by a background task so a
//! request never waits for its log line. A full queue drops lines and counts them
//! (`orgbase_access_log_dropped_total`) rather than slowing requests down. At shutdown the
//! server waits for the writer ([`Drain`]) before it closes the pool.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orgbase_db::Pool;
use orgbase_db::observe::{Kind, Label};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Request extension filled by the request layer with the verified (organization, user).
#[derive(Debug, Clone, Default)]
pub struct Seen(pub Arc<OnceLock<(Uuid, Uuid)>>);

/// One request, as logged.
#[derive(Debug)]
pub struct Line {
    pub at: DateTime<Utc>,
    pub seen: Option<(Uuid, Uuid)>,
    pub method: String,
    pub route: String,
    pub status: u16,
    pub latency_ms: f32,
    pub request_id: String,
    pub ip: Option<IpAddr>,
}

/// Queue capacity: lines beyond it are dropped and counted.
const QUEUE: usize = 65_536;
/// Lines per INSERT.
const BATCH: usize = 4096;

/// The sending side, cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Line>,
    metrics: Arc<Metrics>,
}

/// The access-log writer's task, for waiting until it has written what is queued: the server
/// keeps a clone of [`crate::Services::access_drain`] and, once it has stopped serving, calls
/// [`Drain::wait`] before it closes the pool, so lines of the last requests are not lost.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>);

impl Drain {
    /// Waits for the writer to finish, up to `limit`. The writer finishes once every
    /// [`AccessLog`] is dropped, that is once the application and its connections are gone.
    /// True when it finished (or none was started); false when `limit` passed first.
    pub async fn wait(&self, limit: Duration) -> bool {
        let task = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(task) = task else {
            return true;
        };
        tokio::time::timeout(limit, task).await.is_ok()
    }
}

impl AccessLog {
    /// Start the writer on the current runtime. It stops (after writing what is queued) when
    /// every `AccessLog` is dropped; `drain` waits for that.
    pub fn start(pool: Pool, metrics: Arc<Metrics>, drain: &Drain) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(writer(pool, rx, metrics.clone()));
        *drain.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Self { tx, metrics }
    }

    pub fn record(&self, line: Line) {
        if self.tx.try_send(line).is_ok() {
            self.metrics.access_log_queue.inc();
        } else {
            self.metrics.access_log_dropped.inc();
        }
    }
}

async fn writer(pool: Pool, mut rx: mpsc::Receiver<Line>, metrics: Arc<Metrics>) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut buf, BATCH).await == 0 {
            return;
        }
        // Let a batch build up under load instead of one INSERT per request.
        if buf.len() < BATCH {
            tokio::time::sleep(Duration::from_millis(200)).await;
            while buf.len() < BATCH {
                match rx.try_recv() {
                    Ok(l) => buf.push(l),
                    Err(_) => break,
                }
            }
        }
        let n = buf.len() as u64;
        metrics.access_log_queue.dec_by(n as i64);
        let started = Instant::now();
        match write(&pool, &buf).await {
            Ok(()) => {
                metrics.access_log_written.inc_by(n);
                metrics
                    .queries
                    .observe(Label::of(Kind::AccessLogWrite), started.elapsed());
            }
            Err(e) => {
                metrics.access_log_dropped.inc_by(n);
                tracing::warn!(error = %e, lines = n, "access log: batch not written");
            }
        }
        buf.clear();
    }
}

async fn write(pool: &Pool, lines: &[Line]) -> Result<(), String> {
    let client = pool.get_background().await.map_err(|e| e.to_string())?;
    let stmt = client
        .prepare_cached(
            "SELECT orgbase.log_access($1::timestamptz[], $2::uuid[], $3::uuid[], $4::text[], \
             $5::text[], $6::int2[], $7::float4[], $8::text[], $9::inet[])",
        )
        .await
        .map_err(|e| e.to_string())?;
    let at: Vec<DateTime<Utc>> = lines.iter().map(|l| l.at).collect();
    let org: Vec<Option<Uuid>> = lines.iter().map(|l| l.seen.map(|s| s.0)).collect();
    let user: Vec<Option<Uuid>> = lines.iter().map(|l| l.seen.map(|s| s.1)).collect();
    let method: Vec<&str> = lines.iter().map(|l| l.method.as_str()).collect();
    let route: Vec<&str> = lines.iter().map(|l| l.route.as_str()).collect();
    let status: Vec<i16> = lines
        .iter()
        .map(|l| i16::try_from(l.status).unwrap_or(i16::MAX))
        .collect();
    let latency: Vec<f32> = lines.iter().map(|l| l.latency_ms).collect();
    let rid: Vec<&str> = lines.iter().map(|l| l.request_id.as_str()).collect();
    let ip: Vec<Option<IpAddr>> = lines.iter().map(|l| l.ip).collect();
    client
        .execute(
            &stmt,
            &[
                &at as &(dyn tokio_postgres::types::ToSql + Sync),
                &org,
                &user,
                &method,
                &route,
                &status,
                &latency,
                &rid,
                &ip,
            ],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
