//! `serve` keeps the embedded PostgreSQL it started alive: when the postmaster exits (a crash, the
//! kernel's OOM killer, `kill -9`), requests are refused at once with 503 and `Retry-After`,
//! `/readyz` names the cause, PostgreSQL is started again (crash recovery replays the WAL, so
//! every acknowledged write is there) with a growing pause between tries, and the request pool
//! starts over with fresh connections. Too many restarts in a short time mean something a
//! restart cannot fix (a full disk, a corrupt data directory, a bad setting): then `serve`
//! stops with an error naming the PostgreSQL log, for systemd or Kubernetes to take over.
//! The background workers (audit sealer, access-log writer, retention, backups) retry on their
//! own schedule and need no restart: their next run after the restart succeeds.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orgbase_db::cluster::{PostmasterExit, RunningCluster, wait_for_exit};
use orgbase_db::pool::Pool;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// The pause before the first restart try; it doubles per failed try up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Restarts of the embedded PostgreSQL, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct SupervisionMetrics {
    restarts: Counter,
    down_seconds: Counter<f64, AtomicU64>,
    last_exit: Gauge,
}

impl SupervisionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "postgres_restarts",
            "Times serve restarted the embedded PostgreSQL after it died",
            self.restarts.clone(),
        );
        registry.register(
            "postgres_down_seconds",
            "Seconds the embedded PostgreSQL was down before serve had it back",
            self.down_seconds.clone(),
        );
        registry.register(
            "postgres_last_exit_status",
            "How the embedded PostgreSQL last died: its exit status, 128 + the signal that killed it, or -1 when unknown (0: never died)",
            self.last_exit.clone(),
        );
    }
}

/// When to give up: more than `limit` restarts within `window`.
#[derive(Debug, Clone, Copy)]
pub struct RestartLimit {
    pub limit: u32,
    pub window: Duration,
}

/// The restarts within the window, and whether one more is allowed.
#[derive(Debug)]
struct CrashLoop {
    limit: RestartLimit,
    restarts: VecDeque<Instant>,
}

impl CrashLoop {
    fn new(limit: RestartLimit) -> Self {
        Self {
            limit,
            restarts: VecDeque::new(),
        }
    }

    /// Record a restart try at `now`; false when it would be one too many.
    fn allow(&mut self, now: Instant) -> bool {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.limit.window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() as u32 >= self.limit.limit {
            return false;
        }
        self.restarts.push_back(now);
        true
    }
}

/// The supervisor of a running embedded cluster. `stop` ends the supervision and stops
/// PostgreSQL; `failed` resolves when it gave up.
pub struct Supervisor {
    cluster: Arc<Mutex<Option<RunningCluster>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Supervisor {
    pub fn start(
        cluster: RunningCluster,
        pool: Pool,
        metrics: SupervisionMetrics,
        limit: RestartLimit,
    ) -> Self {
        let log = cluster.layout().log_file.clone();
        let cluster = Arc::new(Mutex::new(Some(cluster)));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(
            cluster.clone(),
            pool,
            metrics,
            CrashLoop::new(limit),
            log,
            stopped,
        ));
        Self {
            cluster,
            stop,
            task,
        }
    }

    /// Resolves with the reason when the supervisor gave up (it never resolves otherwise).
    pub async fn failed(&mut self) -> anyhow::Error {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => std::future::pending().await,
            Err(e) => anyhow::anyhow!("the PostgreSQL supervisor failed: {e}"),
        }
    }

    /// End the supervision and stop PostgreSQL (fast shutdown).
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.abort();
        let cluster = lock(&self.cluster).take();
        if let Some(c) = cluster {
            tokio::task::spawn_blocking(move || c.stop()).await??;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn supervise(
    cluster: Arc<Mutex<Option<RunningCluster>>>,
    pool: Pool,
    metrics: SupervisionMetrics,
    mut crash_loop: CrashLoop,
    log: PathBuf,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let Some(pid) = lock(&cluster)
            .as_ref()
            .and_then(RunningCluster::postmaster_pid)
        else {
            anyhow::bail!(
                "the embedded PostgreSQL has no postmaster.pid; see {}",
                log.display()
            );
        };
        let exit = tokio::select! {
            exit = tokio::task::spawn_blocking(move || wait_for_exit(pid)) => exit?,
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        };
        if *stopped.borrow() {
            return Ok(());
        }
        let down_since = Instant::now();
        let cause = format!("the embedded PostgreSQL {exit}; restarting it");
        tracing::error!(pid, status = %exit, log = %log.display(), "embedded PostgreSQL died; restarting it");
        metrics.last_exit.set(exit.code());
        pool.set_down(cause);
        restart(&cluster, &mut crash_loop, exit, &log, &mut stopped).await?;
        pool.set_up();
        let down = down_since.elapsed();
        metrics.restarts.inc();
        metrics.down_seconds.inc_by(down.as_secs_f64());
        tracing::info!(
            down_secs = down.as_secs_f64(),
            "embedded PostgreSQL is back after crash recovery; serving again"
        );
    }
}

/// Start PostgreSQL again, pausing 1 s, 2 s, 4 s … 30 s before each try, until it runs or the
/// crash-loop limit is reached.
async fn restart(
    cluster: &Arc<Mutex<Option<RunningCluster>>>,
    crash_loop: &mut CrashLoop,
    exit: PostmasterExit,
    log: &std::path::Path,
    stopped: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut pause = FIRST_BACKOFF;
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
        if !crash_loop.allow(Instant::now()) {
            anyhow::bail!(
                "the embedded PostgreSQL {exit} and was restarted {} times within {} s: giving up \
                 (embedded.restart_limit). Read {} for the cause",
                crash_loop.limit.limit,
                crash_loop.limit.window.as_secs(),
                log.display()
            );
        }
        let c = cluster.clone();
        let tried = tokio::task::spawn_blocking(move || match lock(&c).as_mut() {
            Some(running) => running.restart(),
            None => Ok(()),
        })
        .await?;
        match tried {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, retry_in_secs = (pause * 2).min(MAX_BACKOFF).as_secs(), "restarting the embedded PostgreSQL failed");
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crash_loop_limit_counts_restarts_within_the_window() {
        let mut c = CrashLoop::new(RestartLimit {
            limit: 2,
            window: Duration::from_secs(10),
        });
        let t = Instant::now();
        assert!(c.allow(t));
        assert!(c.allow(t + Duration::from_secs(1)));
        assert!(!c.allow(t + Duration::from_secs(2)), "a third within 10 s");
        // The first one leaves the window: one more is allowed.
        assert!(c.allow(t + Duration::from_secs(10)));
        let mut never = CrashLoop::new(RestartLimit {
            limit: 0,
            window: Duration::from_secs(10),
        });
        assert!(!never.allow(t));
    }
}
