//! Consent records, retention policies and legal holds over real HTTP and a real database
//! (SPEC R19, R20): who may do what, another organization's ids, bad input that writes nothing,
//! and the audit trail of every change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::Duration;

use orgbase_http::{HttpSettings, Services, app};
use orgbase_testkit::{Api, TestDb, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

/// Org A (owner, member), org B (owner).
struct World {
    _db: TestDb,
    api: Api,
    a_owner: (String, String),
    a_member: (String, String),
    b_owner: (String, String),
}

async fn world() -> World {
    let db = TestDb::migrated().await;
    let services = Services::load(db.pool(), &db.admin().await).await.unwrap();
    let settings = HttpSettings {
        request_timeout: Duration::from_secs(20),
        body_limit_bytes: 64 * 1024,
        access_log: false,
        trusted_proxies: Vec::new(),
        cors_origins: Vec::new(),
        slo: Default::default(),
        signup: Default::default(),
    };
    let base = spawn_app(app(
        services,
        orgbase_db::Migrator::embedded("t").latest(),
        &settings,
    ))
    .await;
    let api = Api::new(base);
    let a_owner = api.user("owner@a.example").await;
    let a_member = api.user("member@a.example").await;
    let b_owner = api.user("owner@b.example").await;
    for (token, slug) in [(&a_owner.1, "org-a"), (&b_owner.1, "org-b")] {
        api.ok(
            Method::POST,
            "/v1/orgs",
            token,
            Some(json!({"name": slug, "slug": slug})),
        )
        .await;
    }
    api.join(
        "org-a",
        &a_owner.1,
        "member@a.example",
        &a_member.1,
        "member",
    )
    .await;
    World {
        _db: db,
        api,
        a_owner,
        a_member,
        b_owner,
    }
}

#[tokio::test]
async fn consents_keep_their_history_and_stay_in_their_organization() {
    let w = world().await;
    let api = &w.api;
    let me = &w.a_member;
    let r = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/consents",
            &me.1,
            Some(json!({"purpose": "marketing_email", "granted": true, "source": "ui"})),
        )
        .await;
    assert_eq!(
        (r["granted"].as_bool(), r["subject"].as_str()),
        (Some(true), Some(me.0.as_str()))
    );
    api.ok(
        Method::POST,
        "/v1/orgs/org-a/consents",
        &me.1,
        Some(json!({"purpose": "marketing_email", "granted": false})),
    )
    .await;
    api.ok(
        Method::POST,
        "/v1/orgs/org-a/consents",
        &me.1,
        Some(json!({"purpose": "analytics", "granted": true})),
    )
    .await;
    let mine = api
        .ok(Method::GET, "/v1/orgs/org-a/consents", &me.1, None)
        .await;
    let history: Vec<(&str, &str)> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["purpose"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("analytics", "granted"),
            ("marketing_email", "withdrawn"),
            ("marketing_email", "granted")
        ]
    );
    let current: Vec<(&str, bool)> = mine["current"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["purpose"].as_str().unwrap(),
                c["granted"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(current, [("analytics", true), ("marketing_email", false)]);
    // Pages.
    let page = api
        .ok(Method::GET, "/v1/orgs/org-a/consents?limit=2", &me.1, None)
        .await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-a/consents?limit=2&cursor={cursor}"),
            &me.1,
            None,
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);

    // Admins read everyone's; members only their own.
    let all = api
        .ok(
            Method::GET,
            "/v1/orgs/org-a/consents?subject=all",
            &w.a_owner.1,
            None,
        )
        .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    let theirs = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-a/consents?subject={}", me.0),
            &w.a_owner.1,
            None,
        )
        .await;
    assert_eq!(theirs["current"].as_array().unwrap().len(), 2);
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/consents?subject=all",
        Some(&me.1),
        None,
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::GET,
        &format!("/v1/orgs/org-a/consents?subject={}", w.a_owner.0),
        Some(&me.1),
        None,
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/consents",
        Some(&me.1),
        Some(json!({"purpose": "analytics", "granted": true, "subject": w.a_owner.0})),
        403,
        "forbidden",
    )
    .await;

    // Another organization's owner: org A is not found, by slug or id; naming org A's member
    // in org B's own request finds nothing and writes nothing.
    let org_a = api
        .ok(Method::GET, "/v1/orgs/org-a", &w.a_owner.1, None)
        .await;
    let org_a_id = org_a["id"].as_str().unwrap();
    for path in [
        "/v1/orgs/org-a/consents?subject=all".to_string(),
        format!("/v1/orgs/{org_a_id}/consents?subject=all"),
    ] {
        api.expect(
            Method::GET,
            &path,
            Some(&w.b_owner.1),
            None,
            404,
            "not-found",
        )
        .await;
    }
    api.expect(
        Method::POST,
        &format!("/v1/orgs/{org_a_id}/consents"),
        Some(&w.b_owner.1),
        Some(json!({"purpose": "analytics", "granted": true})),
        404,
        "not-found",
    )
    .await;
    let none = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-b/consents?subject={}", me.0),
            &w.b_owner.1,
            None,
        )
        .await;
    assert_eq!(none["items"], json!([]));
    api.expect(
        Method::POST,
        "/v1/orgs/org-b/consents",
        Some(&w.b_owner.1),
        Some(json!({"purpose": "analytics", "granted": true, "subject": me.0})),
        422,
        "validation",
    )
    .await;

    // Bad input: named, nothing written.
    for body in [
        json!({"purpose": "Marketing!", "granted": true}),
        json!({"purpose": "analytics", "granted": true, "source": "fax"}),
        json!({"purpose": "analytics", "granted": "yes"}),
        json!({"purpose": "analytics"}),
        json!({"purpose": "analytics", "granted": true, "extra": 1}),
    ] {
        api.expect(
            Method::POST,
            "/v1/orgs/org-a/consents",
            Some(&me.1),
            Some(body),
            422,
            "validation",
        )
        .await;
    }
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/consents?subject=bob",
        Some(&me.1),
        None,
        400,
        "bad-request",
    )
    .await;
    let all = api
        .ok(
            Method::GET,
            "/v1/orgs/org-a/consents?subject=all",
            &w.a_owner.1,
            None,
        )
        .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    // Every record is in the audit trail.
    let audit = api
        .ok(
            Method::GET,
            "/v1/orgs/org-a/audit?table=consents",
            &w.a_owner.1,
            None,
        )
        .await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn retention_policies_are_validated_whole_and_bad_input_writes_nothing() {
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    let got = api
        .ok(Method::GET, "/v1/orgs/org-a/retention", owner, None)
        .await;
    let keep = |v: &Value, t: &str| -> (Value, Value) {
        let item = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["data_type"] == t)
            .unwrap();
        (item["policy"].clone(), item["keep"].clone())
    };
    assert_eq!(got["items"].as_array().unwrap().len(), 7);
    assert_eq!(keep(&got, "sessions"), (Value::Null, json!("24h")));
    assert_eq!(keep(&got, "soft_deleted"), (Value::Null, json!("90d")));
    assert_eq!(keep(&got, "audit"), (Value::Null, json!("1y")));
    assert_eq!(keep(&got, "accounts"), (Value::Null, json!("7y")));

    let bad = api
        .expect(
            Method::PUT,
            "/v1/orgs/org-a/retention",
            Some(owner),
            Some(json!({"policies": {"sessions": "48h", "logs": "1y", "soft_deleted": "forever", "exports": "0d"}})),
            422,
            "validation",
        )
        .await;
    let fields: Vec<&str> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["policies.exports", "policies.logs", "policies.soft_deleted"]
    );
    // Below the legal minimum for audit: refused, and the valid entry beside it is not written.
    api.expect(
        Method::PUT,
        "/v1/orgs/org-a/retention",
        Some(owner),
        Some(json!({"policies": {"sessions": "48h", "audit": "6mo"}})),
        422,
        "validation",
    )
    .await;
    for body in [
        json!({"policies": []}),
        json!({"policy": {}}),
        json!({"policies": {"sessions": 48}}),
    ] {
        api.expect(
            Method::PUT,
            "/v1/orgs/org-a/retention",
            Some(owner),
            Some(body),
            422,
            "validation",
        )
        .await;
    }
    assert_eq!(
        api.ok(Method::GET, "/v1/orgs/org-a/retention", owner, None)
            .await,
        got
    );

    // Members may not see or change policies; another organization cannot reach them.
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/retention",
        Some(&w.a_member.1),
        None,
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::PUT,
        "/v1/orgs/org-a/retention",
        Some(&w.a_member.1),
        Some(json!({"policies": {"sessions": "48h"}})),
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/retention",
        Some(&w.b_owner.1),
        None,
        404,
        "not-found",
    )
    .await;

    let set = api
        .ok(
            Method::PUT,
            "/v1/orgs/org-a/retention",
            owner,
            Some(json!({"policies": {"sessions": "48h", "audit": "2y", "soft_deleted": "30d"}})),
        )
        .await;
    assert_eq!(keep(&set, "sessions"), (json!("48h"), json!("48h")));
    assert_eq!(keep(&set, "audit"), (json!("2y"), json!("2y")));
    // PUT is the whole set: what is left out goes back to its default.
    let set = api
        .ok(
            Method::PUT,
            "/v1/orgs/org-a/retention",
            owner,
            Some(json!({"policies": {"audit": "2y"}})),
        )
        .await;
    assert_eq!(keep(&set, "sessions"), (Value::Null, json!("24h")));
    // Org B still has only defaults.
    let b = api
        .ok(Method::GET, "/v1/orgs/org-b/retention", &w.b_owner.1, None)
        .await;
    assert_eq!(keep(&b, "audit"), (Value::Null, json!("1y")));
    // Audited: three inserts, then two deletes; the unchanged audit row is not rewritten.
    let audit = api
        .ok(
            Method::GET,
            "/v1/orgs/org-a/audit?table=retention_policies",
            owner,
            None,
        )
        .await;
    let mut actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort();
    assert_eq!(actions, ["delete", "delete", "insert", "insert", "insert"]);
}

#[tokio::test]
async fn legal_holds_are_placed_and_released_by_admins_and_audited() {
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    let h = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/legal-holds",
            owner,
            Some(json!({"reason": "Case 2026-17", "subject": w.a_member.0})),
        )
        .await;
    let id = h["id"].as_str().unwrap().to_string();
    assert_eq!(
        (h["active"].as_bool(), h["subject"].as_str()),
        (Some(true), Some(w.a_member.0.as_str()))
    );
    api.ok(
        Method::POST,
        "/v1/orgs/org-a/legal-holds",
        owner,
        Some(json!({"reason": "Audit by regulator"})),
    )
    .await;
    let list = api
        .ok(Method::GET, "/v1/orgs/org-a/legal-holds", owner, None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Members cannot see, place or release holds; another organization cannot find them.
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/legal-holds",
        Some(&w.a_member.1),
        None,
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/legal-holds",
        Some(&w.a_member.1),
        Some(json!({"reason": "x"})),
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::POST,
        &format!("/v1/orgs/org-a/legal-holds/{id}/release"),
        Some(&w.a_member.1),
        None,
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::POST,
        &format!("/v1/orgs/org-b/legal-holds/{id}/release"),
        Some(&w.b_owner.1),
        None,
        404,
        "not-found",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/orgs/org-b/legal-holds",
        Some(&w.b_owner.1),
        Some(json!({"reason": "x", "subject": w.a_member.0})),
        422,
        "validation",
    )
    .await;
    for body in [
        json!({"reason": ""}),
        json!({"reason": "x".repeat(2001)}),
        json!({"reason": "x", "subject": "nobody"}),
    ] {
        api.expect(
            Method::POST,
            "/v1/orgs/org-a/legal-holds",
            Some(owner),
            Some(body),
            422,
            "validation",
        )
        .await;
    }
    let b = api
        .ok(
            Method::GET,
            "/v1/orgs/org-b/legal-holds",
            &w.b_owner.1,
            None,
        )
        .await;
    assert_eq!(b["items"], json!([]));

    let released = api
        .ok(
            Method::POST,
            &format!("/v1/orgs/org-a/legal-holds/{id}/release"),
            owner,
            None,
        )
        .await;
    assert_eq!(released["active"], json!(false));
    assert_eq!(released["released_by"].as_str(), Some(w.a_owner.0.as_str()));
    api.expect(
        Method::POST,
        &format!("/v1/orgs/org-a/legal-holds/{id}/release"),
        Some(owner),
        None,
        409,
        "conflict",
    )
    .await;
    let audit = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-a/audit?table=legal_holds&record={id}"),
            owner,
            None,
        )
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["update", "insert"]);
    assert_eq!(
        audit["items"][0]["actor_user"].as_str(),
        Some(w.a_owner.0.as_str())
    );
}
