//! SPEC R24 at the API: a full wait queue and an open circuit breaker refuse a request at once
//! with 503, a stable problem type and `Retry-After`, and nothing is written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::{Duration, Instant};

use orgbase_db::Pool;
use orgbase_db::pool::Limits;
use orgbase_http::{HttpSettings, Services, app};
use orgbase_testkit::{Api, TestDb, occupy, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

async fn start(db: &TestDb, pool: Pool) -> Api {
    let admin = db.admin().await;
    let services = Services::load(pool, &admin).await.unwrap();
    let settings = HttpSettings {
        request_timeout: Duration::from_secs(30),
        body_limit_bytes: 64 * 1024,
        access_log: false,
        trusted_proxies: Vec::new(),
        cors_origins: Vec::new(),
        slo: Default::default(),
        signup: Default::default(),
    };
    let latest = orgbase_db::Migrator::embedded("t").latest();
    Api::new(spawn_app(app(services, latest, &settings)).await)
}

/// A refused request: 503 problem+json of `kind`, with `Retry-After`; (its seconds, the body).
async fn refused(resp: reqwest::Response, kind: &str) -> (u64, Value) {
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["type"],
        format!("urn:orgbase:problem:{kind}"),
        "{body}"
    );
    (retry, body)
}

async fn metrics(api: &Api) -> String {
    let r = api.http.get(format!("{}/metrics", api.base)).send().await;
    r.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn a_full_wait_queue_refuses_a_write_at_once_and_nothing_is_written() {
    let db = TestDb::migrated().await;
    let pool = db.pool_with(
        1,
        Limits {
            wait_queue: 1,
            ..Limits::default()
        },
    );
    let api = start(&db, pool.clone()).await;
    let (_, alice) = api.user("alice@a.example").await;
    api.ok(
        Method::POST,
        "/v1/orgs",
        &alice,
        Some(json!({"name": "Acme", "slug": "acme"})),
    )
    .await;

    // The one connection is busy and one request already waits for it.
    let (held, waiter) = occupy(&pool).await;
    let t = Instant::now();
    let resp = api
        .http
        .post(format!("{}/v1/orgs/acme/notes", api.base))
        .bearer_auth(&alice)
        .json(&json!({"title": "refused", "body": "not written"}))
        .send()
        .await
        .unwrap();
    let (retry, body) = refused(resp, "overloaded").await;
    assert!(t.elapsed() < Duration::from_secs(2), "refused, not queued");
    assert_eq!(retry, 1);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("1 requests are already waiting"),
        "{body}"
    );
    assert!(
        metrics(&api)
            .await
            .contains("orgbase_db_pool_refused_requests_total{reason=\"queue_full\"} 1"),
    );

    drop(held);
    waiter.await.unwrap().unwrap();
    let page = api
        .ok(Method::GET, "/v1/orgs/acme/notes", &alice, None)
        .await;
    assert_eq!(page["items"], json!([]), "the refused note was not written");
    api.ok(
        Method::POST,
        "/v1/orgs/acme/notes",
        &alice,
        Some(json!({"title": "accepted", "body": "written"})),
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_database_opens_the_breaker_and_requests_are_refused_at_once() {
    let db = TestDb::migrated().await;
    // A real session, from a server whose database answers.
    let up = start(&db, db.pool()).await;
    let (_, alice) = up.user("alice@a.example").await;
    up.ok(
        Method::POST,
        "/v1/orgs",
        &alice,
        Some(json!({"name": "Acme", "slug": "acme"})),
    )
    .await;

    // A second server over the same catalog whose pool points at a port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(closed)
        .user("orgbase_runtime")
        .password("unused")
        .dbname(&db.name);
    let pool = Pool::build(config, 4, Duration::from_secs(5), Limits::default()).unwrap();
    let down = start(&db, pool).await;

    let note = || {
        down.http
            .post(format!("{}/v1/orgs/acme/notes", down.base))
            .bearer_auth(&alice)
            .json(&json!({"title": "t", "body": "b"}))
            .send()
    };
    // Ten failed connects (SPEC R24): each answered 503 unavailable, naming the cause.
    for _ in 0..10 {
        let (_, body) = refused(note().await.unwrap(), "unavailable").await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("could not connect to the database"),
            "{body}"
        );
    }
    // Then the breaker is open: refused without trying, with when to come back.
    let (retry, body) = refused(note().await.unwrap(), "database-unavailable").await;
    assert_eq!(retry, 1, "the first backoff is 1 s");
    assert!(
        body["detail"].as_str().unwrap().contains("retrying in 1s"),
        "{body}"
    );
    let r = reqwest::get(format!("{}/readyz", down.base)).await.unwrap();
    assert_eq!(r.status(), 503, "not ready while the breaker is open");
    let text = metrics(&down).await;
    assert!(text.contains("orgbase_db_circuit_open 1"), "{text}");
    assert!(
        text.contains("orgbase_db_pool_refused_requests_total{reason=\"circuit_open\"} 2"),
        "the note and the readiness check: {text}"
    );

    let page = up
        .ok(Method::GET, "/v1/orgs/acme/notes", &alice, None)
        .await;
    assert_eq!(page["items"], json!([]), "nothing was written");
}
