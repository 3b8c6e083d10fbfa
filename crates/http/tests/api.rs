//! The HTTP skeleton, in-process on port 0 over a real database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::Duration;

use orgbase_http::{HttpSettings, app};
use orgbase_testkit::{TestDb, spawn_app};
use reqwest::StatusCode;
use serde_json::Value;

fn settings() -> HttpSettings {
    HttpSettings {
        request_timeout: Duration::from_secs(10),
        body_limit_bytes: 64 * 1024,
        access_log: true,
        trusted_proxies: Vec::new(),
        cors_origins: Vec::new(),
        slo: Default::default(),
        signup: Default::default(),
    }
}

async fn start(db: &TestDb) -> String {
    let latest = orgbase_db::Migrator::embedded("t").latest();
    let admin = db.admin().await;
    let services = orgbase_http::Services::load(db.pool(), &admin)
        .await
        .unwrap();
    spawn_app(app(services, latest, &settings())).await
}

async fn problem(resp: reqwest::Response, status: StatusCode, kind: &str) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "{:?}",
        resp.headers()
    );
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], kind, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(body["request_id"], id.as_str(), "{body}");
    body
}

#[tokio::test]
async fn health_and_readiness() {
    let db = TestDb::migrated().await;
    let base = start(&db).await;
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn readiness_fails_on_an_unmigrated_database() {
    let db = TestDb::empty().await;
    let base = start(&db).await;
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let body = problem(
        r,
        StatusCode::SERVICE_UNAVAILABLE,
        "urn:orgbase:problem:unavailable",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("not migrated"),
        "{body}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let db = TestDb::migrated().await;
    let base = start(&db).await;
    let c = reqwest::Client::new();
    let r = c.get(format!("{base}/no/such/route")).send().await.unwrap();
    problem(r, StatusCode::NOT_FOUND, "urn:orgbase:problem:not-found").await;
    let r = c.delete(format!("{base}/healthz")).send().await.unwrap();
    problem(
        r,
        StatusCode::METHOD_NOT_ALLOWED,
        "urn:orgbase:problem:method-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn oversized_bodies_are_413_problems() {
    let db = TestDb::migrated().await;
    let base = start(&db).await;
    let c = reqwest::Client::new();
    let big = vec![b'x'; 65 * 1024];
    let r = c
        .post(format!("{base}/healthz"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    problem(
        r,
        StatusCode::PAYLOAD_TOO_LARGE,
        "urn:orgbase:problem:payload-too-large",
    )
    .await;
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
    let db = TestDb::migrated().await;
    let base = start(&db).await;
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{base}/healthz"))
        .header("x-request-id", "abc-123_x.y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123_x.y");
    let forged = "a".repeat(65);
    for bad in [forged.as_str(), "has space", "semi;colon"] {
        let r = c
            .get(format!("{base}/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
}

#[tokio::test]
async fn metrics_label_by_matched_route_never_raw_path() {
    let db = TestDb::migrated().await;
    let base = start(&db).await;
    reqwest::get(format!("{base}/healthz")).await.unwrap();
    reqwest::get(format!("{base}/secret-raw-path-123"))
        .await
        .unwrap();
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#"orgbase_http_request_duration_seconds_count{method="GET",route="/healthz",status="200"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(!text.contains("secret-raw-path"), "{text}");
    assert!(text.contains("orgbase_db_pool_connections"), "{text}");
}

#[tokio::test]
async fn every_documented_route_exists_and_every_route_is_documented() {
    let db = TestDb::migrated().await;
    let base = start(&db).await;
    let doc: Value = reqwest::get(format!("{base}/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in paths {
        for (method, _) in ops.as_object().unwrap() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            let r = reqwest::Client::new()
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{base}{path}"),
                )
                .send()
                .await
                .unwrap();
            assert!(
                r.status() != 404 && r.status() != 405,
                "{method} {path} is documented but answers {}",
                r.status()
            );
        }
    }
    documented.sort();
    // The generic table routes are documented once per tenant table.
    let mut expected: Vec<String> = Vec::new();
    for table in [
        "attachments",
        "note_tags",
        "notes",
        "projects",
        "tags",
        "tasks",
    ] {
        for route in [
            "GET /v1/orgs/{org}/{table}",
            "POST /v1/orgs/{org}/{table}",
            "GET /v1/orgs/{org}/{table}/{id}",
            "PATCH /v1/orgs/{org}/{table}/{id}",
            "DELETE /v1/orgs/{org}/{table}/{id}",
            "POST /v1/orgs/{org}/{table}/{id}/restore",
        ] {
            expected.push(route.replace("{table}", table));
        }
    }
    // The router is built from the same `routes!` list as the document (utoipa-axum), so this is
    // the full route table; a route added without documentation fails to compile into it.
    expected.extend(
        [
            "DELETE /v1/orgs/{org}/api-keys/{id}",
            "DELETE /v1/orgs/{org}/invitations/{id}",
            "DELETE /v1/orgs/{org}/members/{user}",
            "DELETE /v1/orgs/{org}/members/{user}/apps/{app}",
            "DELETE /v1/orgs/{org}/members/{user}/roles/{role}",
            "DELETE /v1/orgs/{org}/teams/{team}",
            "DELETE /v1/orgs/{org}/teams/{team}/members/{user}",
            "GET /healthz",
            "GET /metrics",
            "GET /readyz",
            "GET /v1/me",
            "GET /v1/me/gdpr-requests",
            "GET /v1/me/gdpr-requests/{id}",
            "GET /v1/me/gdpr-requests/{id}/download",
            "GET /v1/openapi.json",
            "GET /v1/operator/accounts",
            "GET /v1/operator/backups",
            "GET /v1/operator/keys",
            "GET /v1/operator/migrations",
            "GET /v1/operator/orgs",
            "GET /v1/slo",
            "GET /v1/orgs",
            "GET /v1/orgs/{org}",
            "GET /v1/orgs/{org}/analytics/budget",
            "GET /v1/orgs/{org}/analytics/charges",
            "GET /v1/orgs/{org}/api-keys",
            "GET /v1/orgs/{org}/audit",
            "GET /v1/orgs/{org}/audit/verify",
            "GET /v1/orgs/{org}/consents",
            "GET /v1/orgs/{org}/gdpr-requests",
            "GET /v1/orgs/{org}/gdpr-requests/{id}",
            "GET /v1/orgs/{org}/gdpr-requests/{id}/download",
            "GET /v1/orgs/{org}/invitations",
            "GET /v1/orgs/{org}/legal-holds",
            "GET /v1/orgs/{org}/members",
            "GET /v1/orgs/{org}/members/{user}",
            "GET /v1/orgs/{org}/retention",
            "GET /v1/orgs/{org}/roles",
            "GET /v1/orgs/{org}/teams",
            "PATCH /v1/orgs/{org}",
            "PATCH /v1/orgs/{org}/members/{user}",
            "POST /v1/auth/cancel-erasure",
            "POST /v1/auth/login",
            "POST /v1/auth/logout",
            "POST /v1/auth/mfa/totp/enroll",
            "POST /v1/auth/mfa/totp/verify",
            "POST /v1/auth/refresh",
            "POST /v1/auth/signup",
            "POST /v1/invitations/{token}/accept",
            "POST /v1/me/erase",
            "POST /v1/me/export",
            "POST /v1/operator/accounts/{id}/status",
            "POST /v1/operator/backups",
            "POST /v1/operator/orgs/{id}/status",
            "POST /v1/orgs",
            "POST /v1/orgs/{org}/analytics/query",
            "POST /v1/orgs/{org}/api-keys",
            "POST /v1/orgs/{org}/consents",
            "POST /v1/orgs/{org}/gdpr-requests/{id}/cancel",
            "POST /v1/orgs/{org}/invitations",
            "POST /v1/orgs/{org}/legal-holds",
            "POST /v1/orgs/{org}/legal-holds/{id}/release",
            "POST /v1/orgs/{org}/members",
            "POST /v1/orgs/{org}/members/{user}/erase",
            "POST /v1/orgs/{org}/members/{user}/export",
            "POST /v1/orgs/{org}/roles",
            "POST /v1/orgs/{org}/teams",
            "PUT /v1/orgs/{org}/members/{user}/apps/{app}",
            "PUT /v1/orgs/{org}/members/{user}/roles/{role}",
            "PUT /v1/orgs/{org}/retention",
            "PUT /v1/orgs/{org}/teams/{team}/members/{user}",
        ]
        .map(String::from),
    );
    expected.sort();
    assert_eq!(documented, expected);
}

/// What a client generator or a contract tester relies on: unique operation ids, problem+json
/// for every error, no credential asked of the public routes, and each tenant table's own
/// schemas, with read-only columns and the declared limits of encrypted columns.
#[tokio::test]
async fn the_openapi_document_states_the_contract() {
    let db = TestDb::migrated().await;
    let base = start(&db).await;
    let doc: Value = reqwest::get(format!("{base}/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids = std::collections::BTreeMap::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            if let Some(other) = ids.insert(id.clone(), format!("{method} {path}")) {
                panic!("operationId {id} of {method} {path} is also {other}'s");
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.parse::<u16>().unwrap() >= 400 {
                    let types: Vec<&String> =
                        response["content"].as_object().unwrap().keys().collect();
                    assert_eq!(
                        types,
                        ["application/problem+json"],
                        "{method} {path} {status}"
                    );
                }
            }
            let public = matches!(
                (method.as_str(), path.as_str()),
                (
                    "get",
                    "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json" | "/v1/slo"
                ) | (
                    "post",
                    "/v1/auth/signup"
                        | "/v1/auth/login"
                        | "/v1/auth/refresh"
                        | "/v1/auth/cancel-erasure"
                )
            );
            assert_eq!(
                op.get("security") == Some(&serde_json::json!([])),
                public,
                "{method} {path}"
            );
            if !public {
                assert!(
                    op["responses"].get("401").is_some(),
                    "{method} {path} declares no 401"
                );
            }
        }
    }
    let schemas = &doc["components"]["schemas"];
    let title = &schemas["new.notes"]["properties"]["title"];
    assert_eq!(
        (title["minLength"].as_i64(), title["maxLength"].as_i64()),
        (Some(1), Some(500)),
        "{title}"
    );
    assert_eq!(schemas["new.notes"]["additionalProperties"], false);
    assert!(
        schemas["new.notes"]["properties"].get("org_id").is_none(),
        "org_id is not writable"
    );
    assert_eq!(
        schemas["row.notes"]["properties"]["org_id"]["readOnly"],
        true
    );
    assert_eq!(schemas["change.tasks"]["minProperties"], 1);
    let list = &doc["paths"]["/v1/orgs/{org}/tasks"]["get"]["parameters"];
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for want in [
        "org",
        "limit",
        "cursor",
        "sort",
        "status",
        "assignee_id.gte",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let patch = &doc["paths"]["/v1/orgs/{org}/notes/{id}"]["patch"];
    assert!(
        patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "If-Match")
    );
    assert!(patch["responses"]["200"]["headers"].get("ETag").is_some());
}

#[tokio::test]
async fn slow_handlers_time_out_as_problems() {
    use axum::routing::get;
    let slow = axum::Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_millis(50),
            orgbase_http::middleware::timeout,
        ));
    let base = spawn_app(slow).await;
    let r = reqwest::get(format!("{base}/slow")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "urn:orgbase:problem:timeout");
}

/// The access-log lines of the last requests before a shutdown are written: the server stops
/// serving, the application is dropped, and `Services::access_drain` waits for the writer,
/// which would otherwise still be batching when the pool closes.
#[tokio::test]
async fn access_log_lines_of_the_last_requests_survive_a_shutdown() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let services = orgbase_http::Services::load(db.pool(), &admin)
        .await
        .unwrap();
    let drain = services.access_drain.clone();
    let router = app(
        services,
        orgbase_db::Migrator::embedded("t").latest(),
        &settings(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(orgbase_http::serve(
        listener,
        router,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r = http
            .get(format!("{base}/v1/no-such-route"))
            .header("x-request-id", "last-before-shutdown")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    drop(http);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        drain.wait(Duration::from_secs(10)).await,
        "the writer did not finish"
    );
    // The pool may close now; the lines are in.
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.access_log WHERE request_id = 'last-before-shutdown'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

/// Browsers of the configured origins may call the API (a preflight answers, responses carry
/// the allow-origin header); other origins get no CORS headers; with none configured, none.
#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let db = TestDb::migrated().await;
    let latest = orgbase_db::Migrator::embedded("t").latest();
    let admin = db.admin().await;
    let services = orgbase_http::Services::load(db.pool(), &admin)
        .await
        .unwrap();
    let mut with_cors = settings();
    with_cors.cors_origins = vec!["https://app.example.com".into()];
    let base = spawn_app(app(services, latest, &with_cors)).await;
    let c = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, format!("{base}/v1/orgs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let r = preflight("https://app.example.com").await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let methods = r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        methods.contains("POST") && methods.contains("PATCH"),
        "{methods}"
    );
    let r = preflight("https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = c
        .get(format!("{base}/healthz"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let expose = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        expose.contains("etag") && expose.contains("x-request-id"),
        "{expose}"
    );
    // Without configured origins there are no CORS headers.
    let plain = start(&db).await;
    let r = c
        .get(format!("{plain}/healthz"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
