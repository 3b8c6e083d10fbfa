//! The SLO report on a seeded access log: its percentiles are the nearest-rank percentiles of
//! the seeded latencies (computed here independently), only the API's own requests in the
//! window count, and the verdict follows the targets. Run as the runtime role, which cannot
//! read the access log itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use chrono::{DateTime, Duration, Utc};
use orgbase_db::slo::{self, Targets};
use orgbase_testkit::TestDb;

struct Line {
    at: DateTime<Utc>,
    method: &'static str,
    route: &'static str,
    status: i16,
    latency_ms: f32,
}

/// The nearest-rank percentile (the smallest value with at least `p` of the values at or
/// below it), as `percentile_disc` defines it.
fn nearest_rank(values: &[f32], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p * v.len() as f64).ceil() as usize).max(1);
    f64::from(v[rank - 1])
}

async fn seed(c: &tokio_postgres::Client, lines: &[Line]) {
    let at: Vec<DateTime<Utc>> = lines.iter().map(|l| l.at).collect();
    let none: Vec<Option<uuid::Uuid>> = lines.iter().map(|_| None).collect();
    let method: Vec<&str> = lines.iter().map(|l| l.method).collect();
    let route: Vec<&str> = lines.iter().map(|l| l.route).collect();
    let status: Vec<i16> = lines.iter().map(|l| l.status).collect();
    let latency: Vec<f32> = lines.iter().map(|l| l.latency_ms).collect();
    let rid: Vec<String> = (0..lines.len()).map(|i| format!("r{i}")).collect();
    let ip: Vec<Option<std::net::IpAddr>> = lines.iter().map(|_| None).collect();
    c.execute(
        "SELECT orgbase.log_access($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &at, &none, &none, &method, &route, &status, &latency, &rid, &ip,
        ],
    )
    .await
    .unwrap();
}

const LIST: &str = "/v1/orgs/{org}/notes";
const GET: &str = "/v1/orgs/{org}/notes/{id}";

#[tokio::test]
async fn report_percentiles_match_the_seeded_latencies() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let now = Utc::now();
    let recent = |i: i64| now - Duration::seconds(60 + i);
    let mut lines = Vec::new();
    // Reads: a list route with latencies 0.5 … 100 ms, a get route with a scrambled spread.
    let list: Vec<f32> = (1..=200).map(|i| i as f32 * 0.5).collect();
    let get: Vec<f32> = (0..101).map(|i| ((i * 37) % 101) as f32 + 0.25).collect();
    for (i, &l) in list.iter().enumerate() {
        lines.push(Line {
            at: recent(i as i64),
            method: "GET",
            route: LIST,
            status: 200,
            latency_ms: l,
        });
    }
    for (i, &l) in get.iter().enumerate() {
        lines.push(Line {
            at: recent(i as i64),
            method: "GET",
            route: GET,
            status: if i < 3 { 500 } else { 200 },
            latency_ms: l,
        });
    }
    // Writes: creates 1.5 … 75 ms, of which five were refused with 503.
    let create: Vec<f32> = (1..=50).map(|i| i as f32 * 1.5).collect();
    for (i, &l) in create.iter().enumerate() {
        lines.push(Line {
            at: recent(i as i64),
            method: "POST",
            route: LIST,
            status: if i % 10 == 0 { 503 } else { 201 },
            latency_ms: l,
        });
    }
    // Not counted: outside the window, preflights, unmatched paths, operational endpoints.
    let slow = 9_999.0;
    for (at, method, route) in [
        (now - Duration::hours(2), "GET", LIST),
        (now - Duration::hours(2), "POST", LIST),
        (recent(1), "OPTIONS", LIST),
        (recent(1), "GET", "unmatched"),
        (recent(1), "GET", "/metrics"),
        (recent(1), "GET", "/v1/openapi.json"),
        (recent(1), "GET", "/v1/slo"),
        (now + Duration::hours(1), "GET", LIST),
    ] {
        lines.push(Line {
            at,
            method,
            route,
            status: 200,
            latency_ms: slow,
        });
    }
    seed(&admin, &lines).await;

    let pool = db.pool();
    let client = pool.get().await.unwrap();
    let generous = Targets {
        read_p95_ms: 1000,
        read_p99_ms: 1000,
        write_p95_ms: 1000,
        write_p99_ms: 1000,
    };
    let r = slo::report(&client, now - Duration::hours(1), now, &generous)
        .await
        .unwrap();
    assert!(r.met, "{}", r.render());

    let reads: Vec<f32> = list.iter().chain(&get).copied().collect();
    let expect = |l: &slo::Latency, values: &[f32], errors: i64| {
        assert_eq!(l.requests, values.len() as i64, "{l:?}");
        assert_eq!(l.server_errors, errors, "{l:?}");
        assert_eq!(l.p50_ms, Some(nearest_rank(values, 0.50)), "{l:?}");
        assert_eq!(l.p95_ms, Some(nearest_rank(values, 0.95)), "{l:?}");
        assert_eq!(l.p99_ms, Some(nearest_rank(values, 0.99)), "{l:?}");
    };
    assert_eq!(r.classes.len(), 2);
    assert_eq!(r.classes[0].class, "read");
    expect(&r.classes[0], &reads, 3);
    assert_eq!(r.classes[1].class, "write");
    expect(&r.classes[1], &create, 5);
    // Worst routes: by p95, with their method and template.
    let routes: Vec<(&str, &str)> = r
        .worst_routes
        .iter()
        .map(|l| (l.method.as_deref().unwrap(), l.route.as_deref().unwrap()))
        .collect();
    assert_eq!(routes, [("GET", GET), ("GET", LIST), ("POST", LIST)]);
    expect(&r.worst_routes[0], &get, 3);
    expect(&r.worst_routes[1], &list, 0);
    // Figures worked out by hand, so the reference computation is checked too.
    assert_eq!(r.classes[1].p95_ms, Some(72.0));
    assert_eq!(r.worst_routes[1].p99_ms, Some(99.0));

    // Tight targets: each check follows its own percentile.
    let tight = Targets {
        read_p95_ms: 100,
        read_p99_ms: 95,
        write_p95_ms: 50,
        write_p99_ms: 250,
    };
    let r = slo::report(&client, now - Duration::hours(1), now, &tight)
        .await
        .unwrap();
    let verdicts: Vec<(&str, &str, bool)> = r
        .checks
        .iter()
        .map(|c| (c.class.as_str(), c.percentile.as_str(), c.met))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("read", "p95", true),
            ("read", "p99", false),
            ("write", "p95", false),
            ("write", "p99", true),
        ],
        "{}",
        r.render()
    );
    assert!(!r.met);
    assert!(r.render().contains("2 target(s) missed"), "{}", r.render());

    // A window without requests meets every target and says so.
    let r = slo::report(
        &client,
        now - Duration::days(30),
        now - Duration::days(29),
        &tight,
    )
    .await
    .unwrap();
    assert!(r.met);
    assert!(
        r.classes
            .iter()
            .all(|l| l.requests == 0 && l.p95_ms.is_none())
    );
    assert!(r.worst_routes.is_empty());
    assert!(r.render().contains("met (no requests)"), "{}", r.render());
}
