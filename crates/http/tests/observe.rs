//! What `/metrics` and the log say about requests: label sets stay bounded however many ids
//! requests carry, and a slow statement is logged with the request's route, request id and
//! organization (and not at all when the slow-query log is off).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use orgbase_http::{HttpSettings, Services, app};
use orgbase_testkit::{Api, TestDb, spawn_app};
use reqwest::Method;
use serde_json::json;

fn settings() -> HttpSettings {
    HttpSettings {
        request_timeout: Duration::from_secs(20),
        body_limit_bytes: 64 * 1024,
        access_log: true,
        trusted_proxies: Vec::new(),
        cors_origins: Vec::new(),
        slo: Default::default(),
        signup: Default::default(),
    }
}

async fn server(db: &TestDb) -> (Api, orgbase_db::Pool) {
    let admin = db.admin().await;
    let pool = db.pool();
    let services = Services::load(pool.clone(), &admin).await.unwrap();
    let base = spawn_app(app(
        services,
        orgbase_db::Migrator::embedded("t").latest(),
        &settings(),
    ))
    .await;
    (Api::new(base), pool)
}

async fn scrape(api: &Api) -> String {
    api.http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sample lines of orgbase's own metrics.
fn series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("orgbase_"))
        .collect()
}

#[tokio::test]
async fn a_thousand_note_ids_add_no_series() {
    let db = TestDb::migrated().await;
    let (api, _pool) = server(&db).await;
    let (_, token) = api.user("ids@example.com").await;
    api.ok(
        Method::POST,
        "/v1/orgs",
        &token,
        Some(json!({"name": "Ids", "slug": "ids"})),
    )
    .await;
    let note = api
        .ok(
            Method::POST,
            "/v1/orgs/ids/notes",
            &token,
            Some(json!({"title": "t"})),
        )
        .await;
    let id = note["id"].as_str().unwrap().to_string();
    // One request of each shape first: every series these requests can make exists.
    let ids: Vec<String> = (0..1000)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let hit = |path: String| {
        let api = &api;
        let token = &token;
        async move { api.call(Method::GET, &path, Some(token), None).await.0 }
    };
    assert_eq!(hit(format!("/v1/orgs/ids/notes/{id}")).await, 200);
    assert_eq!(hit(format!("/v1/orgs/ids/notes/{}", ids[0])).await, 404);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The first scrape makes the series of /metrics itself.
    scrape(&api).await;
    let before = scrape(&api).await;

    let statuses: Vec<u16> = futures_util::stream::iter(ids.iter().skip(1))
        .map(|i| hit(format!("/v1/orgs/ids/notes/{i}")))
        .buffer_unordered(8)
        .map(|s| s.as_u16())
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = scrape(&api).await;

    let names = |m: &str| -> std::collections::BTreeSet<String> {
        series(m)
            .iter()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    let (before, after_names) = (names(&before), names(&after));
    let new: Vec<_> = after_names.difference(&before).collect();
    let gone: Vec<_> = before.difference(&after_names).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "1,000 ids changed the series on /metrics: new {new:?}, gone {gone:?}"
    );
    for i in ids.iter().chain([&id]) {
        assert!(!after.contains(i.as_str()), "an id in /metrics: {i}");
    }
    // They were counted, under the route template.
    assert!(
        after.lines().any(|l| l
            == "orgbase_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/orgs/{org}/{table}/{id}\",status=\"404\"} 1000"),
        "{after}"
    );
}

/// A `Write` into a shared buffer, for a log subscriber in a test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The server runs on this test's one thread, so the subscriber set here sees its events. At
/// level `warn` the request's span is off: the line names the request by itself.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_statement_is_logged_with_route_request_id_and_organization() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDb::migrated().await;
    let (api, pool) = server(&db).await;
    let (_, token) = api.user("slow@example.com").await;
    let org = api
        .ok(
            Method::POST,
            "/v1/orgs",
            &token,
            Some(json!({"name": "Slow", "slug": "slow"})),
        )
        .await;
    let org_id = org["id"].as_str().unwrap().to_string();
    pool.metrics()
        .set_slow_threshold(Some(Duration::from_millis(150)));

    // A list that waits for a lock another session holds for 400 ms.
    let blocked_list = |request_id: &'static str| {
        let api = &api;
        let token = &token;
        let db = &db;
        async move {
            let mut admin = db.admin().await;
            let tx = admin.transaction().await.unwrap();
            tx.batch_execute("LOCK TABLE orgbase.notes IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            let list = async {
                let r = api
                    .http
                    .get(format!("{}/v1/orgs/slow/notes", api.base))
                    .bearer_auth(token)
                    .header("x-request-id", request_id)
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            };
            let release = async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                tx.commit().await.unwrap();
            };
            let (status, ()) = tokio::join!(list, release);
            assert_eq!(status, 200);
        }
    };
    blocked_list("slow-list-1").await;
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("slow query") && l.contains("slow-list-1"))
        .unwrap_or_else(|| panic!("no slow-query line for the request in:\n{text}"));
    for part in [
        "request_id=slow-list-1",
        "route=/v1/orgs/{org}/{table}",
        "kind=\"list\"",
        "table=\"notes\"",
        &format!("org_id={org_id}"),
        "elapsed_ms=",
    ] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    let metrics = scrape(&api).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("orgbase_db_slow_queries_total{kind=\"list\"} ")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );

    // Off: the same wait is not logged.
    pool.metrics().set_slow_threshold(None);
    blocked_list("slow-list-2").await;
    let text = log.text();
    assert!(
        !text
            .lines()
            .any(|l| l.contains("slow-list-2") && l.contains("slow query")),
        "{text}"
    );
}
