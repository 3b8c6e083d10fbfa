//! `GET /v1/slo`: the SLO report of `orgbase slo report`, for an operator's dashboard or probe.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{RawQuery, State};
use orgbase_db::slo::{self, Report, Since};

use crate::AppState;
use crate::error::ApiError;

/// How long an answer is served again for the same window (the report reads the access log,
/// which is large; one computation at a time, at most this often).
const FRESH: Duration = Duration::from_secs(15);

/// The last answer, by the `since` it was asked with.
#[derive(Debug, Default)]
pub struct Cache(tokio::sync::Mutex<Option<(String, Instant, Report)>>);

/// Latency percentiles (P50/P95/P99) of reads (GET, HEAD) and writes over a window of the
/// access log, against the configured targets, with the five slowest routes (route templates).
///
/// `since`: the window's start, a duration back from now (`90s`, `30m`, `24h`, `7d`, `2w`) or
/// an RFC 3339 time; default `24h`. Aggregates only (no organization, person or path appears),
/// and like `/metrics` it needs no credential: keep it on the operators' network. An answer is
/// reused for 15 seconds.
#[utoipa::path(get, operation_id = "slo_report", path = "/v1/slo", tag = "operations",
    params(("since" = Option<String>, Query, description = "Window start: 90s, 30m, 24h, 7d, 2w or an RFC 3339 time (default 24h)")),
    responses((status = 200, description = "The report; `met` is false when a target is missed", body = Report),
              (status = 400, description = "`since` is not a duration or a time in the past", body = crate::error::Problem),
              (status = 503, description = "The database is not reachable", body = crate::error::Problem)))]
pub async fn report(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Report>, ApiError> {
    let mut since = "24h".to_string();
    for (k, v) in crate::extract::query_pairs(raw)? {
        match k.as_str() {
            "since" => since = v,
            other => return Err(crate::extract::query_error(other, "unknown; use since")),
        }
    }
    let parsed: Since = since
        .parse()
        .map_err(|e: String| crate::extract::query_error("since", e))?;
    let mut cache = state.slo_cache.0.lock().await;
    if let Some((key, at, report)) = cache.as_ref()
        && *key == since
        && at.elapsed() < FRESH
    {
        return Ok(Json(report.clone()));
    }
    let until = chrono::Utc::now();
    let start = parsed
        .start(until)
        .map_err(|e| crate::extract::query_error("since", e))?;
    let client = state
        .pool
        .get()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let report = slo::report(&client, start, until, &state.slo_targets).await?;
    *cache = Some((since, Instant::now(), report.clone()));
    Ok(Json(report))
}
