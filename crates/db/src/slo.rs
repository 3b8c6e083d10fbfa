//! The SLO report: latency percentiles of reads and writes over a window of the access log,
//! against targets, with the slowest routes (`orgbase slo report`, `GET /v1/slo`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::DbError;

/// What `--since` / `?since=` accept, for error messages.
pub const SINCE_FORMS: &str = "a duration back from now (90s, 30m, 24h, 7d, 2w) or an RFC 3339 \
                               time in the past (2026-12-01T00:00:00Z)";

/// Where a report's window starts, as given: a duration back from now or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(DateTime<Utc>),
}

impl std::str::FromStr for Since {
    type Err = String;

    /// `90s`, `30m`, `24h`, `7d`, `2w` (a positive whole number and one unit) or an RFC 3339
    /// time.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a window start: use {SINCE_FORMS}");
        let s = s.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(Since::At(t.with_timezone(&Utc)));
        }
        let unit = s.chars().last().ok_or_else(bad)?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let digits = &s[..s.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        // At most ten years back: enough for any log, and far from overflowing a timestamp.
        match n.checked_mul(secs) {
            Some(0) | None => Err(bad()),
            Some(total) if total > 10 * 366 * 86_400 => Err(bad()),
            Some(total) => Ok(Since::Ago(Duration::from_secs(total))),
        }
    }
}

impl Since {
    /// The window's start for a report ending at `until`; a time not before `until` is refused.
    pub fn start(&self, until: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        let start = match self {
            Since::Ago(d) => until - chrono::Duration::from_std(*d).map_err(|e| e.to_string())?,
            Since::At(t) => *t,
        };
        if start >= until {
            return Err(format!(
                "the window starts at {} which is not in the past: use {SINCE_FORMS}",
                start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        Ok(start)
    }
}

/// Latency targets in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub read_p95_ms: u32,
    pub read_p99_ms: u32,
    pub write_p95_ms: u32,
    pub write_p99_ms: u32,
}

impl Default for Targets {
    /// The defaults of the `[slo]` configuration.
    fn default() -> Self {
        Self::from(&orgbase_core::config::SloConfig::default())
    }
}

impl From<&orgbase_core::config::SloConfig> for Targets {
    fn from(c: &orgbase_core::config::SloConfig) -> Self {
        Self {
            read_p95_ms: c.read_p95_ms,
            read_p99_ms: c.read_p99_ms,
            write_p95_ms: c.write_p95_ms,
            write_p99_ms: c.write_p99_ms,
        }
    }
}

/// Requests of a class (read or write), or of one route of a class, and their latency.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Latency {
    /// `read` (GET and HEAD) or `write` (the other methods).
    pub class: String,
    /// For a route: its method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// For a route: its template (`/v1/orgs/{org}/{table}/{id}`), never a path with ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub requests: i64,
    /// Requests answered with a 5xx status.
    pub server_errors: i64,
    /// Latency percentiles in milliseconds (nearest rank); absent without requests.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One target and how the window did against it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub class: String,
    /// `p95` or `p99`.
    pub percentile: String,
    pub target_ms: u32,
    /// Absent when the window has no requests of the class (the target is then met).
    pub actual_ms: Option<f64>,
    /// The percentile is below the target.
    pub met: bool,
}

/// The report of one window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Every target met.
    pub met: bool,
    pub checks: Vec<Check>,
    /// `read` then `write`.
    pub classes: Vec<Latency>,
    /// The five routes with the highest 95th percentile.
    pub worst_routes: Vec<Latency>,
}

/// Routes listed as the worst.
pub const WORST: usize = 5;

/// The report of `[since, until)` from the access log, over `client` (the runtime role may:
/// it reads aggregates through `orgbase.request_latencies`).
pub async fn report(
    client: &tokio_postgres::Client,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    targets: &Targets,
) -> Result<Report, DbError> {
    let rows = client
        .query(
            "SELECT class, method, route, requests, server_errors, p50_ms, p95_ms, p99_ms \
             FROM orgbase.request_latencies($1, $2)",
            &[&since, &until],
        )
        .await?;
    let ms = |v: Option<f32>| v.map(|v| round3(f64::from(v)));
    let all: Vec<Latency> = rows
        .iter()
        .map(|r| Latency {
            class: r.get(0),
            method: r.get(1),
            route: r.get(2),
            requests: r.get(3),
            server_errors: r.get(4),
            p50_ms: ms(r.get(5)),
            p95_ms: ms(r.get(6)),
            p99_ms: ms(r.get(7)),
        })
        .collect();
    Ok(assemble(since, until, all, targets))
}

/// A real's value as PostgreSQL prints it, near enough: three decimals.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn assemble(
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    all: Vec<Latency>,
    targets: &Targets,
) -> Report {
    let (mut routes, totals): (Vec<_>, Vec<_>) = all.into_iter().partition(|l| l.route.is_some());
    let classes: Vec<Latency> = ["read", "write"]
        .iter()
        .map(|class| {
            totals
                .iter()
                .find(|l| l.class == *class)
                .cloned()
                .unwrap_or_else(|| Latency {
                    class: (*class).to_string(),
                    method: None,
                    route: None,
                    requests: 0,
                    server_errors: 0,
                    p50_ms: None,
                    p95_ms: None,
                    p99_ms: None,
                })
        })
        .collect();
    let wanted = [
        ("read", "p95", targets.read_p95_ms),
        ("read", "p99", targets.read_p99_ms),
        ("write", "p95", targets.write_p95_ms),
        ("write", "p99", targets.write_p99_ms),
    ];
    let checks: Vec<Check> = wanted
        .iter()
        .map(|&(class, percentile, target_ms)| {
            let figures = classes.iter().find(|l| l.class == class);
            let actual_ms = figures.and_then(|l| match percentile {
                "p95" => l.p95_ms,
                _ => l.p99_ms,
            });
            Check {
                class: class.to_string(),
                percentile: percentile.to_string(),
                target_ms,
                actual_ms,
                met: actual_ms.is_none_or(|a| a < f64::from(target_ms)),
            }
        })
        .collect();
    routes.sort_by(|a, b| {
        b.p95_ms
            .partial_cmp(&a.p95_ms)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| b.requests.cmp(&a.requests))
            .then_with(|| a.route.cmp(&b.route))
    });
    routes.truncate(WORST);
    Report {
        since,
        until,
        met: checks.iter().all(|c| c.met),
        checks,
        classes,
        worst_routes: routes,
    }
}

impl Report {
    /// The report for people: the window, the classes, each target with its verdict, the worst
    /// routes, and the overall verdict last.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let t = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "SLO report: requests from {} to {}",
            t(self.since),
            t(self.until)
        );
        let _ = writeln!(
            out,
            "{:<7}{:>10}{:>8}{:>10}{:>10}{:>10}",
            "class", "requests", "5xx", "p50 ms", "p95 ms", "p99 ms"
        );
        for l in &self.classes {
            let _ = writeln!(
                out,
                "{:<7}{:>10}{:>8}{:>10}{:>10}{:>10}",
                l.class,
                l.requests,
                l.server_errors,
                f(l.p50_ms),
                f(l.p95_ms),
                f(l.p99_ms)
            );
        }
        let _ = writeln!(out, "targets:");
        for c in &self.checks {
            let verdict = match (c.met, c.actual_ms) {
                (true, None) => "met (no requests)",
                (true, Some(_)) => "met",
                (false, _) => "MISSED",
            };
            let _ = writeln!(
                out,
                "  {} {} < {} ms: {} ms  {verdict}",
                c.class,
                c.percentile,
                c.target_ms,
                f(c.actual_ms)
            );
        }
        if !self.worst_routes.is_empty() {
            let _ = writeln!(out, "slowest routes (by p95):");
            for l in &self.worst_routes {
                let _ = writeln!(
                    out,
                    "  {:<7}{:<48}{:>8} req {:>5} 5xx  p95 {} ms  p99 {} ms",
                    l.method.as_deref().unwrap_or(""),
                    l.route.as_deref().unwrap_or(""),
                    l.requests,
                    l.server_errors,
                    f(l.p95_ms),
                    f(l.p99_ms)
                );
            }
        }
        let missed = self.checks.iter().filter(|c| !c.met).count();
        if missed == 0 {
            let _ = writeln!(out, "every target met");
        } else {
            let _ = writeln!(out, "{missed} target(s) missed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_times() {
        assert_eq!("90s".parse(), Ok(Since::Ago(Duration::from_secs(90))));
        assert_eq!("30m".parse(), Ok(Since::Ago(Duration::from_secs(1800))));
        assert_eq!("24h".parse(), Ok(Since::Ago(Duration::from_secs(86_400))));
        assert_eq!(
            "2w".parse(),
            Ok(Since::Ago(Duration::from_secs(14 * 86_400)))
        );
        assert!(matches!(
            "2026-12-01T00:00:00Z".parse::<Since>(),
            Ok(Since::At(_))
        ));
        for bad in [
            "",
            "h",
            "0h",
            "-3h",
            "3",
            "3x",
            "1.5h",
            "24 h",
            "99999999999999999w",
            "yesterday",
        ] {
            let e = bad.parse::<Since>().unwrap_err();
            assert!(e.contains("90s, 30m, 24h, 7d, 2w"), "{bad}: {e}");
        }
        let now = Utc::now();
        assert!(
            Since::At(now + chrono::Duration::hours(1))
                .start(now)
                .is_err()
        );
    }
}
