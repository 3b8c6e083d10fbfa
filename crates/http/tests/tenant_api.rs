//! The isolation suite (SPEC R1–R10): two organizations × roles over real HTTP and a real
//! database, attacking every route with another org's ids, forged headers, stale and revoked
//! credentials, out-of-scope API keys and SQL injected into the request transaction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::Duration;

use orgbase_http::{HttpSettings, Services, app};
use orgbase_testkit::{Api, TestDb, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct World {
    db: TestDb,
    api: Api,
    a_owner: (String, String),
    a_editor: (String, String),
    a_viewer: (String, String),
    a_member: (String, String),
    b_owner: (String, String),
    org_b_id: String,
    a_note: String,
    b_note: String,
    b_project: String,
}

async fn world() -> World {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let services = Services::load(db.pool(), &admin).await.unwrap();
    let settings = HttpSettings {
        request_timeout: Duration::from_secs(20),
        body_limit_bytes: 64 * 1024,
        access_log: true,
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
    let a_editor = api.user("editor@a.example").await;
    let a_viewer = api.user("viewer@a.example").await;
    let a_member = api.user("member@a.example").await;
    let b_owner = api.user("owner@b.example").await;
    api.ok(
        Method::POST,
        "/v1/orgs",
        &a_owner.1,
        Some(json!({"name": "A", "slug": "org-a"})),
    )
    .await;
    let b = api
        .ok(
            Method::POST,
            "/v1/orgs",
            &b_owner.1,
            Some(json!({"name": "B", "slug": "org-b"})),
        )
        .await;
    for ((uid, token), email, app_role) in [
        (&a_editor, "editor@a.example", Some("editor")),
        (&a_viewer, "viewer@a.example", Some("viewer")),
        (&a_member, "member@a.example", None),
    ] {
        api.join("org-a", &a_owner.1, email, token, "member").await;
        if let Some(r) = app_role {
            api.ok(
                Method::PUT,
                &format!("/v1/orgs/org-a/members/{uid}/apps/notes"),
                &a_owner.1,
                Some(json!({"role": r})),
            )
            .await;
        }
    }
    let a_note = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/notes",
            &a_owner.1,
            Some(json!({"title": "a-secret", "body": "x"})),
        )
        .await;
    let b_note = api
        .ok(
            Method::POST,
            "/v1/orgs/org-b/notes",
            &b_owner.1,
            Some(json!({"title": "b-secret", "body": "y"})),
        )
        .await;
    let b_project = api
        .ok(
            Method::POST,
            "/v1/orgs/org-b/projects",
            &b_owner.1,
            Some(json!({"name": "B project"})),
        )
        .await;
    World {
        db,
        api,
        a_owner,
        a_editor,
        a_viewer,
        a_member,
        b_owner,
        org_b_id: b["id"].as_str().unwrap().to_string(),
        a_note: a_note["id"].as_str().unwrap().to_string(),
        b_note: b_note["id"].as_str().unwrap().to_string(),
        b_project: b_project["id"].as_str().unwrap().to_string(),
    }
}

#[tokio::test]
async fn another_orgs_data_is_unreachable_on_every_route() {
    let w = world().await;
    let t = &w.a_owner.1;
    let (b_note, b_user) = (&w.b_note, &w.b_owner.0);
    for org in ["org-b", w.org_b_id.as_str()] {
        for (m, path, body) in [
            (Method::GET, format!("/v1/orgs/{org}"), None),
            (
                Method::PATCH,
                format!("/v1/orgs/{org}"),
                Some(json!({"name": "pwned"})),
            ),
            (Method::GET, format!("/v1/orgs/{org}/notes"), None),
            (
                Method::POST,
                format!("/v1/orgs/{org}/notes"),
                Some(json!({"title": "x"})),
            ),
            (Method::GET, format!("/v1/orgs/{org}/notes/{b_note}"), None),
            (
                Method::PATCH,
                format!("/v1/orgs/{org}/notes/{b_note}"),
                Some(json!({"title": "x"})),
            ),
            (
                Method::DELETE,
                format!("/v1/orgs/{org}/notes/{b_note}"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/orgs/{org}/notes/{b_note}/restore"),
                None,
            ),
            (Method::GET, format!("/v1/orgs/{org}/members"), None),
            (
                Method::POST,
                format!("/v1/orgs/{org}/members"),
                Some(json!({"email": "owner@a.example", "role": "admin"})),
            ),
            (
                Method::GET,
                format!("/v1/orgs/{org}/members/{b_user}"),
                None,
            ),
            (
                Method::PATCH,
                format!("/v1/orgs/{org}/members/{b_user}"),
                Some(json!({"role": "member"})),
            ),
            (
                Method::DELETE,
                format!("/v1/orgs/{org}/members/{b_user}"),
                None,
            ),
            (
                Method::PUT,
                format!("/v1/orgs/{org}/members/{b_user}/apps/notes"),
                Some(json!({"role": "admin"})),
            ),
            (Method::GET, format!("/v1/orgs/{org}/invitations"), None),
            (
                Method::POST,
                format!("/v1/orgs/{org}/invitations"),
                Some(json!({"email": "x@a.example", "role": "admin"})),
            ),
            (Method::GET, format!("/v1/orgs/{org}/teams"), None),
            (
                Method::POST,
                format!("/v1/orgs/{org}/teams"),
                Some(json!({"name": "t"})),
            ),
            (Method::GET, format!("/v1/orgs/{org}/api-keys"), None),
            (
                Method::POST,
                format!("/v1/orgs/{org}/api-keys"),
                Some(json!({"name": "k", "scopes": ["*:admin"]})),
            ),
            (Method::GET, format!("/v1/orgs/{org}/roles"), None),
            (Method::GET, format!("/v1/orgs/{org}/projects"), None),
        ] {
            w.api
                .expect(m, &path, Some(t), body, 404, "not-found")
                .await;
        }
    }
    // Another org's ids inside one's own org: not found, and writes refuse them.
    w.api
        .expect(
            Method::GET,
            &format!("/v1/orgs/org-a/notes/{b_note}"),
            Some(t),
            None,
            404,
            "not-found",
        )
        .await;
    w.api
        .expect(
            Method::PATCH,
            &format!("/v1/orgs/org-a/notes/{b_note}"),
            Some(t),
            Some(json!({"title": "x"})),
            404,
            "not-found",
        )
        .await;
    w.api
        .expect(
            Method::DELETE,
            &format!("/v1/orgs/org-a/notes/{b_note}"),
            Some(t),
            None,
            404,
            "not-found",
        )
        .await;
    w.api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/notes",
            Some(t),
            Some(json!({"title": "x", "org_id": w.org_b_id})),
            422,
            "validation",
        )
        .await;
    w.api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/notes",
            Some(t),
            Some(json!({"title": "x", "created_by": b_user})),
            422,
            "validation",
        )
        .await;
    let project_b = &w.b_project;
    w.api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/tasks",
            Some(t),
            Some(json!({"title": "x", "project_id": project_b})),
            422,
            "validation",
        )
        .await;
    let pa = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/projects",
            t,
            Some(json!({"name": "A project"})),
        )
        .await;
    let pa = pa["id"].as_str().unwrap();
    let v = w
        .api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/tasks",
            Some(t),
            Some(json!({"title": "x", "project_id": pa, "assignee_id": b_user})),
            422,
            "validation",
        )
        .await;
    assert_eq!(v["errors"][0]["field"], "assignee_id", "{v}");
    w.api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/tasks",
            t,
            Some(json!({"title": "x", "project_id": pa, "assignee_id": w.a_editor.0})),
        )
        .await;
    // A forged org header changes nothing; the path decides, and the database checks membership.
    let resp = w
        .api
        .http
        .get(format!("{}/v1/orgs/org-a/notes", w.api.base))
        .bearer_auth(t)
        .header("x-org-id", &w.org_b_id)
        .header("x-user-id", b_user)
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let titles: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, vec!["a-secret"]);
    // B still has exactly its own note, unchanged.
    let b = w
        .api
        .ok(Method::GET, "/v1/orgs/org-b/notes", &w.b_owner.1, None)
        .await;
    assert_eq!(b["items"].as_array().unwrap().len(), 1);
    assert_eq!(b["items"][0]["title"], "b-secret");
    let org = w
        .api
        .ok(Method::GET, "/v1/orgs/org-b", &w.b_owner.1, None)
        .await;
    assert_eq!(org["name"], "B");
}

#[tokio::test]
async fn the_role_matrix_is_enforced_over_http() {
    let w = world().await;
    let note = &w.a_note;
    // viewer: reads, cannot write
    let v = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/notes", &w.a_viewer.1, None)
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    w.api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/notes",
            Some(&w.a_viewer.1),
            Some(json!({"title": "v"})),
            403,
            "forbidden",
        )
        .await;
    w.api
        .expect(
            Method::PATCH,
            &format!("/v1/orgs/org-a/notes/{note}"),
            Some(&w.a_viewer.1),
            Some(json!({"title": "v"})),
            404,
            "not-found",
        )
        .await;
    // editor: writes others' rows, cannot delete them
    w.api
        .ok(
            Method::PATCH,
            &format!("/v1/orgs/org-a/notes/{note}"),
            &w.a_editor.1,
            Some(json!({"title": "edited"})),
        )
        .await;
    w.api
        .expect(
            Method::DELETE,
            &format!("/v1/orgs/org-a/notes/{note}"),
            Some(&w.a_editor.1),
            None,
            403,
            "forbidden",
        )
        .await;
    let own = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/notes",
            &w.a_editor.1,
            Some(json!({"title": "mine"})),
        )
        .await;
    w.api
        .ok(
            Method::DELETE,
            &format!("/v1/orgs/org-a/notes/{}", own["id"].as_str().unwrap()),
            &w.a_editor.1,
            None,
        )
        .await;
    // member without an app role: sees nothing, writes nothing, no admin routes
    let v = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/notes", &w.a_member.1, None)
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
    w.api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/notes",
            Some(&w.a_member.1),
            Some(json!({"title": "m"})),
            403,
            "forbidden",
        )
        .await;
    let m = &w.a_member.1;
    for (method, path, body) in [
        (
            Method::PATCH,
            "/v1/orgs/org-a".to_string(),
            Some(json!({"name": "x"})),
        ),
        (
            Method::POST,
            "/v1/orgs/org-a/members".into(),
            Some(json!({"email": "owner@b.example", "role": "admin"})),
        ),
        (
            Method::PATCH,
            format!("/v1/orgs/org-a/members/{}", w.a_viewer.0),
            Some(json!({"role": "admin"})),
        ),
        (
            Method::DELETE,
            format!("/v1/orgs/org-a/members/{}", w.a_viewer.0),
            None,
        ),
        (
            Method::PUT,
            format!("/v1/orgs/org-a/members/{}/apps/notes", w.a_member.0),
            Some(json!({"role": "admin"})),
        ),
        (Method::GET, "/v1/orgs/org-a/invitations".into(), None),
        (
            Method::POST,
            "/v1/orgs/org-a/invitations".into(),
            Some(json!({"email": "x@y.example", "role": "admin"})),
        ),
        (Method::GET, "/v1/orgs/org-a/api-keys".into(), None),
        (
            Method::POST,
            "/v1/orgs/org-a/api-keys".into(),
            Some(json!({"name": "k", "scopes": ["*:admin"]})),
        ),
        (
            Method::POST,
            "/v1/orgs/org-a/roles".into(),
            Some(json!({"name": "r", "permissions": ["notes:admin"]})),
        ),
    ] {
        w.api
            .expect(method, &path, Some(m), body, 403, "forbidden")
            .await;
    }
    w.api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/teams",
            Some(m),
            Some(json!({"name": "t"})),
            403,
            "forbidden",
        )
        .await;
    // a custom role grants app rights
    let role = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/roles",
            &w.a_owner.1,
            Some(json!({"name": "writers", "permissions": ["notes:editor"]})),
        )
        .await;
    w.api
        .ok(
            Method::PUT,
            &format!(
                "/v1/orgs/org-a/members/{}/roles/{}",
                w.a_member.0,
                role["id"].as_str().unwrap()
            ),
            &w.a_owner.1,
            None,
        )
        .await;
    w.api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/notes",
            m,
            Some(json!({"title": "now I can"})),
        )
        .await;
    // admins cannot make owners; the last owner cannot leave
    w.api
        .ok(
            Method::PATCH,
            &format!("/v1/orgs/org-a/members/{}", w.a_editor.0),
            &w.a_owner.1,
            Some(json!({"role": "admin"})),
        )
        .await;
    w.api
        .expect(
            Method::PATCH,
            &format!("/v1/orgs/org-a/members/{}", w.a_viewer.0),
            Some(&w.a_editor.1),
            Some(json!({"role": "owner"})),
            403,
            "forbidden",
        )
        .await;
    w.api
        .expect(
            Method::PATCH,
            &format!("/v1/orgs/org-a/members/{}", w.a_owner.0),
            Some(&w.a_editor.1),
            Some(json!({"role": "member"})),
            403,
            "forbidden",
        )
        .await;
    w.api
        .expect(
            Method::DELETE,
            &format!("/v1/orgs/org-a/members/{}", w.a_owner.0),
            Some(&w.a_owner.1),
            None,
            409,
            "conflict",
        )
        .await;
    // a removed member loses access at once
    w.api
        .ok(
            Method::DELETE,
            &format!("/v1/orgs/org-a/members/{}", w.a_viewer.0),
            &w.a_owner.1,
            None,
        )
        .await;
    w.api
        .expect(
            Method::GET,
            "/v1/orgs/org-a/notes",
            Some(&w.a_viewer.1),
            None,
            404,
            "not-found",
        )
        .await;
}

#[tokio::test]
async fn credentials_are_checked_by_the_database() {
    let w = world().await;
    let api = &w.api;
    let (s, _) = api
        .call(Method::GET, "/v1/orgs/org-a/notes", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let resp = api
        .http
        .get(format!("{}/v1/me", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"orgbase\""
    );
    let resp = api
        .http
        .get(format!("{}/v1/me", api.base))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    for bad in ["obs_0000", "not-a-token", &format!("{}x", w.a_owner.1)] {
        api.expect(
            Method::GET,
            "/v1/orgs/org-a/notes",
            Some(bad),
            None,
            401,
            "unauthorized",
        )
        .await;
        api.expect(Method::GET, "/v1/me", Some(bad), None, 401, "unauthorized")
            .await;
    }
    // wrong password and unknown email look the same
    let a = api
        .expect(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "owner@a.example", "password": "nope-nope"})),
            401,
            "unauthorized",
        )
        .await;
    let b = api
        .expect(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "nobody@a.example", "password": "nope-nope"})),
            401,
            "unauthorized",
        )
        .await;
    assert_eq!(a["detail"], b["detail"]);
    // refresh rotates: the old pair dies
    let login = api
        .ok(
            Method::POST,
            "/v1/auth/login",
            "",
            Some(json!({"email": "editor@a.example", "password": "password-1234"})),
        )
        .await;
    let (tok, refresh) = (
        login["token"].as_str().unwrap(),
        login["refresh_token"].as_str().unwrap(),
    );
    let fresh = api
        .ok(
            Method::POST,
            "/v1/auth/refresh",
            "",
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    api.expect(Method::GET, "/v1/me", Some(tok), None, 401, "unauthorized")
        .await;
    api.expect(
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh})),
        401,
        "unauthorized",
    )
    .await;
    // Reusing the spent refresh token above revoked the whole family: the session it was
    // rotated into is gone too, and so is that session's own refresh token. Other logins of the
    // same person are other families and keep working; the reuse is audited.
    let new_tok = fresh["token"].as_str().unwrap();
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/notes",
        Some(new_tok),
        None,
        401,
        "unauthorized",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": fresh["refresh_token"]})),
        401,
        "unauthorized",
    )
    .await;
    api.ok(Method::GET, "/v1/orgs/org-a/notes", &w.a_editor.1, None)
        .await;
    let reuses: i64 =
        w.db.admin()
            .await
            .query_one(
                "SELECT count(*) FROM orgbase.audit_log WHERE action = 'session.refresh_reuse' \
             AND (new ->> 'revoked')::int = 1",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(reuses, 1);
    // logout revokes
    let login = api
        .ok(
            Method::POST,
            "/v1/auth/login",
            "",
            Some(json!({"email": "editor@a.example", "password": "password-1234"})),
        )
        .await;
    let new_tok = login["token"].as_str().unwrap();
    api.ok(Method::POST, "/v1/auth/logout", new_tok, None).await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/notes",
        Some(new_tok),
        None,
        401,
        "unauthorized",
    )
    .await;
    // an expired or idle session, and a suspended user
    let admin = w.db.admin().await;
    admin.batch_execute("UPDATE orgbase.sessions SET expires_at = now() - interval '1 second' WHERE user_id = (SELECT id FROM orgbase.users WHERE email = 'viewer@a.example')").await.unwrap();
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/notes",
        Some(&w.a_viewer.1),
        None,
        401,
        "unauthorized",
    )
    .await;
    admin.batch_execute("UPDATE orgbase.sessions SET last_seen_at = now() - interval '25 hours' WHERE user_id = (SELECT id FROM orgbase.users WHERE email = 'member@a.example')").await.unwrap();
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/notes",
        Some(&w.a_member.1),
        None,
        401,
        "unauthorized",
    )
    .await;
    admin
        .batch_execute(
            "UPDATE orgbase.users SET status = 'suspended' WHERE email = 'owner@b.example'",
        )
        .await
        .unwrap();
    api.expect(
        Method::GET,
        "/v1/orgs/org-b/notes",
        Some(&w.b_owner.1),
        None,
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn api_keys_are_scoped_to_org_scopes_and_addresses() {
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    let read = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/api-keys",
            owner,
            Some(json!({"name": "reader", "scopes": ["notes:read"]})),
        )
        .await;
    let key = read["key"].as_str().unwrap();
    assert!(key.starts_with("obk_"));
    let listed = api
        .ok(Method::GET, "/v1/orgs/org-a/api-keys", owner, None)
        .await;
    assert!(!listed.to_string().contains(key), "keys are shown once");
    let v = api.ok(Method::GET, "/v1/orgs/org-a/notes", key, None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/notes",
        Some(key),
        Some(json!({"title": "k"})),
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/projects/00000000-0000-0000-0000-000000000000",
        Some(key),
        None,
        404,
        "not-found",
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-b/notes",
        Some(key),
        None,
        404,
        "not-found",
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/api-keys",
        Some(key),
        None,
        403,
        "forbidden",
    )
    .await;
    let fenced = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/api-keys",
            owner,
            Some(json!({"name": "fenced", "scopes": ["*:write"], "ip_allow": ["10.0.0.0/8"]})),
        )
        .await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/notes",
        fenced["key"].as_str(),
        None,
        403,
        "ip-not-allowed",
    )
    .await;
    let local = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/api-keys",
            owner,
            Some(json!({"name": "local", "scopes": ["*:write"], "ip_allow": ["127.0.0.1/32"]})),
        )
        .await;
    api.ok(
        Method::POST,
        "/v1/orgs/org-a/notes",
        local["key"].as_str().unwrap(),
        Some(json!({"title": "by key"})),
    )
    .await;
    api.ok(
        Method::DELETE,
        &format!("/v1/orgs/org-a/api-keys/{}", read["id"].as_str().unwrap()),
        owner,
        None,
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/notes",
        Some(key),
        None,
        401,
        "unauthorized",
    )
    .await;
    // A key cannot be created already expired; one that expires stops working.
    let refused = api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/api-keys",
            Some(owner),
            Some(
                json!({"name": "old", "scopes": ["*:read"], "expires_at": "2001-01-01T00:00:00Z"}),
            ),
            422,
            "validation",
        )
        .await;
    assert_eq!(refused["errors"][0]["field"], "expires_at", "{refused}");
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let expired = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/api-keys",
            owner,
            Some(json!({"name": "old", "scopes": ["*:read"], "expires_at": soon})),
        )
        .await;
    w.db.admin()
        .await
        .execute(
            "UPDATE orgbase.api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
            &[&uuid::Uuid::parse_str(expired["id"].as_str().unwrap()).unwrap()],
        )
        .await
        .unwrap();
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/notes",
        expired["key"].as_str(),
        None,
        401,
        "unauthorized",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/api-keys",
        Some(owner),
        Some(json!({"name": "bad", "scopes": ["notes:everything"]})),
        422,
        "validation",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/api-keys",
        Some(owner),
        Some(json!({"name": "bad", "scopes": ["*:read"], "ip_allow": ["nope"]})),
        422,
        "validation",
    )
    .await;
}

/// X-Forwarded-For is believed only from `server.trusted_proxies`: a client that forges it
/// gets nothing from it, and behind a trusted proxy the client is the address the proxy
/// appended, not one the client prepended. The address decides API keys' allow-lists and is
/// what the audit trail records.
#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let w = world().await;
    let owner = &w.a_owner.1;
    let fenced = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/api-keys",
            owner,
            Some(json!({"name": "office", "scopes": ["*:write"], "ip_allow": ["10.0.0.0/8"]})),
        )
        .await;
    let key = fenced["key"].as_str().unwrap();
    let admin = w.db.admin().await;
    let count = "SELECT count(*) FROM orgbase.notes";
    let before: i64 = admin.query_one(count, &[]).await.unwrap().get(0);
    let services = Services::load(w.db.pool(), &admin).await.unwrap();
    let behind_proxy = spawn_app(app(
        services,
        orgbase_db::Migrator::embedded("t").latest(),
        &HttpSettings {
            request_timeout: Duration::from_secs(20),
            body_limit_bytes: 64 * 1024,
            access_log: true,
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            cors_origins: Vec::new(),
            slo: Default::default(),
            signup: Default::default(),
        },
    ))
    .await;
    let http = reqwest::Client::new();
    let create = |base: &str, forwarded: &str, title: &str| {
        http.post(format!("{base}/v1/orgs/org-a/notes"))
            .bearer_auth(key)
            .header("x-forwarded-for", forwarded)
            .json(&json!({"title": title}))
            .send()
    };
    // Straight to orgbase, which trusts no proxy: the forged header is ignored.
    let resp = create(&w.api.base, "10.1.2.3", "forged").await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["type"].as_str().unwrap().ends_with("ip-not-allowed"),
        "{body}"
    );
    // Behind the trusted proxy, a client's own entry in front of the proxy's is ignored too.
    let resp = create(&behind_proxy, "10.1.2.3, 192.0.2.7", "prepended")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // The address the proxy appended is the client's.
    let resp = create(&behind_proxy, "198.51.100.1, 10.1.2.3", "from the office")
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{:?}",
        resp.text().await
    );
    let note: Value = resp.json().await.unwrap();
    let ip: String = admin
        .query_one(
            "SELECT host(ip) FROM orgbase.audit_log WHERE record_id = $1 AND action = 'insert'",
            &[&note["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ip, "10.1.2.3");
    let notes: i64 = admin.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!(notes, before + 1, "only the office's note was written");
}

/// SQL run as the runtime role inside a request transaction (what an injection could do)
/// cannot move the transaction to another organization or mint credentials.
#[tokio::test]
async fn injected_sql_in_a_request_cannot_switch_org_or_mint_sessions() {
    let w = world().await;
    let pool = w.db.pool();
    let caller = orgbase_db::Caller {
        cred_hash: orgbase_db::auth::token_hash(&w.a_owner.1),
        ..Default::default()
    };
    let b_org = w.org_b_id.clone();
    let b_hash = orgbase_db::auth::token_hash(&w.b_owner.1);
    for injected in [
        format!("SELECT set_config('orgbase.org_id', '{b_org}', true)"),
        format!("SET LOCAL orgbase.org_id = '{b_org}'"),
        format!("SET orgbase.org_id = '{b_org}'"),
    ] {
        let r = orgbase_db::request::many(
            &pool,
            &caller,
            "org-a",
            async |c: &tokio_postgres::Client, _: &orgbase_db::Context| {
                c.batch_execute(&injected).await?;
                let rows = c.query("SELECT title FROM orgbase.notes", &[]).await?;
                Ok(rows
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>())
            },
        )
        .await;
        match r {
            Err(orgbase_db::ReqError::Db(e)) => {
                assert_eq!(
                    e.as_db_error().unwrap().hint(),
                    Some("orgbase_bad_context"),
                    "{injected}"
                );
            }
            other => panic!("{injected}: {other:?}"),
        }
    }
    // A second begin_request (even with a stolen token) is refused.
    let r = orgbase_db::request::many(
        &pool,
        &caller,
        "org-a",
        async |c: &tokio_postgres::Client, _: &orgbase_db::Context| {
            c.query(
                "SELECT * FROM orgbase.begin_request($1, 'org-b')",
                &[&&b_hash[..]],
            )
            .await?;
            Ok(())
        },
    )
    .await;
    assert!(
        matches!(&r, Err(orgbase_db::ReqError::Db(e)) if e.as_db_error().unwrap().hint() == Some("orgbase_context_twice")),
        "{r:?}"
    );
    // Identity functions that need the server key refuse the runtime role without it.
    let client = pool.get().await.unwrap();
    let uid = uuid::Uuid::parse_str(&w.b_owner.0).unwrap();
    for (sql, params) in [
        (
            "SELECT orgbase.create_session(gen_random_uuid(), $1, $2, $2, NULL, NULL, true, '1 day', '1 day', extract(epoch FROM now())::bigint, '\\x00')",
            vec![
                &uid as &(dyn tokio_postgres::types::ToSql + Sync),
                &&[7u8; 32][..],
            ],
        ),
        (
            "SELECT * FROM orgbase.login_lookup(sha256('owner@b.example'), extract(epoch FROM now())::bigint, $1)",
            vec![&&[0u8; 32][..]],
        ),
        (
            "SELECT orgbase.totp_confirm($1, extract(epoch FROM now())::bigint, '\\x00')",
            vec![&&b_hash[..]],
        ),
    ] {
        let e = client.query(sql, &params).await.unwrap_err();
        assert_eq!(
            e.as_db_error().unwrap().hint(),
            Some("orgbase_bad_proof"),
            "{sql}"
        );
    }
    for sql in [
        "SELECT token_hash FROM orgbase.sessions",
        "SELECT key_hash FROM orgbase.api_keys",
        "SELECT token_hash FROM orgbase.invitations",
        "SELECT * FROM orgbase.context_key",
    ] {
        let e = client.query(sql, &[]).await.unwrap_err();
        assert!(
            e.as_db_error()
                .unwrap()
                .message()
                .contains("permission denied"),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let w = world().await;
    let api = &w.api;
    let t = &w.a_owner.1;
    let url = format!("{}/v1/orgs/org-a/notes", api.base);
    let count = |v: &Value| v["items"].as_array().unwrap().len();
    let before = count(&api.ok(Method::GET, "/v1/orgs/org-a/notes", t, None).await);
    let send = |body: &'static str, ct: &'static str| {
        api.http
            .post(&url)
            .bearer_auth(t)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = send("{\"title\":", "application/json").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["type"],
        "urn:orgbase:problem:invalid-json"
    );
    let r = send("{\"title\":\"x\"}", "text/plain").await.unwrap();
    assert_eq!(r.status(), 415);
    let big = "x".repeat(70 * 1024);
    let r = api
        .http
        .post(&url)
        .bearer_auth(t)
        .json(&json!({"title": "x", "body": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    for body in [
        json!([1, 2]),
        json!({"title": 5}),
        json!({"title": "x", "nope": 1}),
        json!({"body": "no title"}),
        json!({"title": "x", "tags": "notalist"}),
        json!({"title": ""}),
        json!({"title": null}),
        json!({"title": "x", "id": "not-a-uuid"}),
    ] {
        api.expect(
            Method::POST,
            "/v1/orgs/org-a/notes",
            Some(t),
            Some(body),
            422,
            "validation",
        )
        .await;
    }
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/notes/not-a-uuid",
        Some(t),
        None,
        400,
        "bad-request",
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/no_such_table",
        Some(t),
        None,
        404,
        "not-found",
    )
    .await;
    for q in [
        "limit=0",
        "limit=500",
        "limit=abc",
        "cursor=garbage",
        "sort=body",
        "body=x",
        "nonsense=1",
        "created_at.gte=yesterday",
        "id=nope",
    ] {
        api.expect(
            Method::GET,
            &format!("/v1/orgs/org-a/notes?{q}"),
            Some(t),
            None,
            422,
            "validation",
        )
        .await;
    }
    api.expect(
        Method::POST,
        "/v1/orgs",
        Some(t),
        Some(json!({"name": "x", "slug": "Bad Slug"})),
        422,
        "validation",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/orgs",
        Some(t),
        Some(json!({"name": "x", "slug": "org-b"})),
        409,
        "conflict",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/auth/signup",
        None,
        Some(json!({"email": "owner@a.example", "password": "password-1234"})),
        409,
        "conflict",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/auth/signup",
        None,
        Some(json!({"email": "bad", "password": "password-1234"})),
        422,
        "validation",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/auth/signup",
        None,
        Some(json!({"email": "ok@x.example", "password": "short"})),
        422,
        "validation",
    )
    .await;
    api.expect(
        Method::PATCH,
        &format!("/v1/orgs/org-a/notes/{}", w.a_note),
        Some(t),
        Some(json!({"org_id": w.org_b_id})),
        422,
        "validation",
    )
    .await;
    assert_eq!(
        count(&api.ok(Method::GET, "/v1/orgs/org-a/notes", t, None).await),
        before
    );
}

/// Field `field` of every item of list `path` (which has a `?`), page after page by cursor.
async fn every_page(api: &Api, path: &str, token: &str, field: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut next = path.to_string();
    loop {
        let page = api.ok(Method::GET, &next, token, None).await;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n[field].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => next = format!("{path}&cursor={c}"),
            None => return seen,
        }
    }
}

#[tokio::test]
async fn pages_filters_versions_and_soft_delete() {
    let w = world().await;
    let api = &w.api;
    let t = &w.a_owner.1;
    for i in 0..6 {
        api.ok(
            Method::POST,
            "/v1/orgs/org-a/notes",
            t,
            Some(json!({"title": format!("n{i}")})),
        )
        .await;
    }
    let seen = every_page(api, "/v1/orgs/org-a/notes?limit=3", t, "title").await;
    assert_eq!(seen, ["n5", "n4", "n3", "n2", "n1", "n0", "a-secret"]);
    let asc = api
        .ok(
            Method::GET,
            "/v1/orgs/org-a/notes?sort=created_at&limit=1",
            t,
            None,
        )
        .await;
    assert_eq!(asc["items"][0]["title"], "a-secret");
    let p = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/projects",
            t,
            Some(json!({"name": "P"})),
        )
        .await;
    let pid = p["id"].as_str().unwrap();
    for (title, status) in [("t1", "todo"), ("t2", "done"), ("t3", "done")] {
        api.ok(Method::POST, "/v1/orgs/org-a/tasks", t, Some(json!({"title": title, "project_id": pid, "status": status, "due_date": "2030-01-31"}))).await;
    }
    let done = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-a/tasks?status=done&project_id={pid}"),
            t,
            None,
        )
        .await;
    assert_eq!(done["items"].as_array().unwrap().len(), 2);
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/tasks",
        Some(t),
        Some(json!({"title": "x", "project_id": pid, "status": "someday"})),
        422,
        "validation",
    )
    .await;
    // optimistic concurrency
    let note = &w.a_note;
    let resp = api
        .http
        .get(format!("{}/v1/orgs/org-a/notes/{note}", api.base))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    let patch = |tag: String| {
        api.http
            .patch(format!("{}/v1/orgs/org-a/notes/{note}", api.base))
            .bearer_auth(t)
            .header("if-match", tag)
            .json(&json!({"body": "v2"}))
            .send()
    };
    assert_eq!(patch(etag.clone()).await.unwrap().status(), 200);
    let stale = patch(etag).await.unwrap();
    assert_eq!(stale.status(), 412);
    assert_eq!(
        stale.json::<Value>().await.unwrap()["type"],
        "urn:orgbase:problem:precondition-failed"
    );
    // soft delete and restore
    api.ok(
        Method::DELETE,
        &format!("/v1/orgs/org-a/notes/{note}"),
        t,
        None,
    )
    .await;
    api.expect(
        Method::GET,
        &format!("/v1/orgs/org-a/notes/{note}"),
        Some(t),
        None,
        404,
        "not-found",
    )
    .await;
    api.expect(
        Method::DELETE,
        &format!("/v1/orgs/org-a/notes/{note}"),
        Some(t),
        None,
        404,
        "not-found",
    )
    .await;
    let back = api
        .ok(
            Method::POST,
            &format!("/v1/orgs/org-a/notes/{note}/restore"),
            t,
            None,
        )
        .await;
    assert_eq!(back["body"], "v2");
}

#[tokio::test]
async fn invitations_teams_and_totp() {
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    let inv = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/invitations",
            owner,
            Some(json!({"email": "Carol@Example.com", "role": "manager"})),
        )
        .await;
    let token = inv["token"].as_str().unwrap();
    let (_, carol) = api.user("carol@example.com").await;
    let (_, dave) = api.user("dave@example.com").await;
    api.expect(
        Method::POST,
        &format!("/v1/invitations/{token}/accept"),
        Some(&dave),
        None,
        404,
        "not-found",
    )
    .await;
    let org = api
        .ok(
            Method::POST,
            &format!("/v1/invitations/{token}/accept"),
            &carol,
            None,
        )
        .await;
    assert_eq!(org["slug"], "org-a");
    api.expect(
        Method::POST,
        &format!("/v1/invitations/{token}/accept"),
        Some(&carol),
        None,
        404,
        "not-found",
    )
    .await;
    // a manager runs teams
    let team = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/teams",
            &carol,
            Some(json!({"name": "Core"})),
        )
        .await;
    let tid = team["id"].as_str().unwrap();
    api.ok(
        Method::PUT,
        &format!("/v1/orgs/org-a/teams/{tid}/members/{}", w.a_editor.0),
        &carol,
        None,
    )
    .await;
    api.expect(
        Method::PUT,
        &format!("/v1/orgs/org-a/teams/{tid}/members/{}", w.b_owner.0),
        Some(&carol),
        None,
        422,
        "validation",
    )
    .await;
    let teams = api
        .ok(Method::GET, "/v1/orgs/org-a/teams", &w.a_member.1, None)
        .await;
    assert_eq!(teams["items"][0]["members"].as_array().unwrap().len(), 1);
    // TOTP
    let e = api
        .ok(Method::POST, "/v1/auth/mfa/totp/enroll", &carol, None)
        .await;
    let secret = totp_rs::Secret::Encoded(e["secret"].as_str().unwrap().to_string())
        .to_bytes()
        .unwrap();
    let totp = orgbase_db::auth::totp(&secret, "carol@example.com").unwrap();
    api.expect(
        Method::POST,
        "/v1/auth/mfa/totp/verify",
        Some(&carol),
        Some(json!({"code": "000000x"})),
        422,
        "validation",
    )
    .await;
    let v = api
        .ok(
            Method::POST,
            "/v1/auth/mfa/totp/verify",
            &carol,
            Some(json!({"code": totp.generate_current().unwrap()})),
        )
        .await;
    assert_eq!(v["mfa_passed"], true);
    api.expect(
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({"email": "carol@example.com", "password": "password-1234"})),
        403,
        "mfa-required",
    )
    .await;
    let s = api.ok(Method::POST, "/v1/auth/login", "", Some(json!({"email": "carol@example.com", "password": "password-1234", "totp": totp.generate_current().unwrap()}))).await;
    assert_eq!(s["mfa_passed"], true);
    // an organization that requires MFA refuses sessions without it
    api.ok(
        Method::PATCH,
        "/v1/orgs/org-a",
        owner,
        Some(json!({"settings": {"require_mfa": true}})),
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/notes",
        Some(&w.a_editor.1),
        None,
        403,
        "mfa-required",
    )
    .await;
    api.ok(
        Method::GET,
        "/v1/orgs/org-a/notes",
        s["token"].as_str().unwrap(),
        None,
    )
    .await;
}

/// The audit API: admins of the organization only, its own entries only, filters, cursor
/// pages, chain verification; login events on the account chain; the access log and the PHI
/// read-access log.
#[tokio::test]
async fn audit_trail_over_http_and_access_logs() {
    let w = world().await;
    let api = &w.api;
    let (owner_id, owner) = (&w.a_owner.0, &w.a_owner.1);
    let note = w.a_note.clone();
    api.ok(
        Method::PATCH,
        &format!("/v1/orgs/org-a/notes/{note}"),
        owner,
        Some(json!({"title": "renamed"})),
    )
    .await;

    // Admins only; other organizations' admins see nothing of org A.
    for t in [&w.a_editor.1, &w.a_viewer.1, &w.a_member.1] {
        api.expect(
            Method::GET,
            "/v1/orgs/org-a/audit",
            Some(t),
            None,
            403,
            "forbidden",
        )
        .await;
        api.expect(
            Method::GET,
            "/v1/orgs/org-a/audit/verify",
            Some(t),
            None,
            403,
            "forbidden",
        )
        .await;
    }
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/audit",
        Some(&w.b_owner.1),
        None,
        404,
        "not-found",
    )
    .await;
    let b = api
        .ok(
            Method::GET,
            "/v1/orgs/org-b/audit?limit=200",
            &w.b_owner.1,
            None,
        )
        .await;
    assert!(
        !b.to_string().contains(&note) && !b.to_string().contains("a-secret"),
        "{b}"
    );

    // The note's history, newest first, with actor, values and request metadata.
    let h = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-a/audit?table=notes&record={note}"),
            owner,
            None,
        )
        .await;
    let items = h["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{h}");
    assert_eq!(items[0]["action"], "update");
    assert_eq!(items[0]["old"]["title"], "a-secret");
    assert_eq!(items[0]["new"]["title"], "renamed");
    assert_eq!(items[1]["action"], "insert");
    assert_eq!(items[0]["actor_user"], owner_id.as_str());
    assert_eq!(items[0]["ip"], "127.0.0.1");
    assert!(
        items[0]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    // Cursor pages cover everything once.
    let mut seen = vec![];
    let mut path = "/v1/orgs/org-a/audit?limit=3".to_string();
    loop {
        let page = api.ok(Method::GET, &path, owner, None).await;
        for i in page["items"].as_array().unwrap() {
            seen.push(i["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/orgs/org-a/audit?limit=3&cursor={c}"),
            None => break,
        }
    }
    let all = api
        .ok(Method::GET, "/v1/orgs/org-a/audit?limit=200", owner, None)
        .await;
    assert_eq!(seen.len(), all["items"].as_array().unwrap().len());
    assert!(seen.windows(2).all(|p| p[0] > p[1]));
    let filtered = api
        .ok(
            Method::GET,
            &format!(
                "/v1/orgs/org-a/audit?action=insert&actor={owner_id}&from=2000-01-01T00:00:00Z"
            ),
            owner,
            None,
        )
        .await;
    assert!(
        filtered["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"] == "insert")
    );
    for bad in [
        "limit=0",
        "limit=x",
        "actor=nope",
        "from=yesterday",
        "cursor=-1",
        "colour=red",
    ] {
        api.expect(
            Method::GET,
            &format!("/v1/orgs/org-a/audit?{bad}"),
            Some(owner),
            None,
            400,
            "bad-request",
        )
        .await;
    }

    // Verification: unsealed entries are counted; once sealed the chain verifies.
    let v = api
        .ok(Method::GET, "/v1/orgs/org-a/audit/verify", owner, None)
        .await;
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["unsealed"].as_u64().unwrap() > 0, "{v}");
    let mut o = w.db.admin().await;
    o.batch_execute("SET ROLE orgbase_owner").await.unwrap();
    orgbase_db::audit::seal_all(&mut o).await.unwrap();
    let v = api
        .ok(Method::GET, "/v1/orgs/org-a/audit/verify", owner, None)
        .await;
    assert_eq!(
        (v["ok"].clone(), v["unsealed"].clone()),
        (json!(true), json!(0)),
        "{v}"
    );
    assert!(v["entries"].as_u64().unwrap() >= 8, "{v}");
    o.batch_execute(
        "ALTER TABLE orgbase.audit_log DISABLE TRIGGER USER;
         UPDATE orgbase.audit_log SET new = '{}' WHERE action = 'update' AND table_name = 'orgbase.notes';
         ALTER TABLE orgbase.audit_log ENABLE TRIGGER USER;",
    )
    .await
    .unwrap();
    let v = api
        .ok(Method::GET, "/v1/orgs/org-a/audit/verify", owner, None)
        .await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["problem"]["kind"], "altered", "{v}");

    // Logins, failed and successful, on the account chain.
    api.expect(
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({"email": "owner@a.example", "password": "wrong-password"})),
        401,
        "unauthorized",
    )
    .await;
    let admin = w.db.admin().await;
    let events: Vec<String> = admin
        .query(
            "SELECT action FROM orgbase.audit_log WHERE org_id = '00000000-0000-0000-0000-000000000000'
               AND actor_user = $1::text::uuid ORDER BY id",
            &[owner_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(events.contains(&"login.success".to_string()), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("login.failure"));

    // The access log: every request with its route template, status and actor (written in
    // batches within a fraction of a second).
    let mut logged = 0i64;
    for _ in 0..50 {
        logged = admin
            .query_one(
                "SELECT count(*) FROM orgbase.access_log
                  WHERE route = '/v1/orgs/{org}/audit' AND status = 403 AND org_id IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if logged >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logged, 3);

    // A product table with a phi column: every read is logged, in the read's transaction.
    admin
        .batch_execute(
            "SET ROLE orgbase_owner;
             CREATE TABLE orgbase.patients (name text NOT NULL, diagnosis text);
             SELECT orgbase.make_tenant_table('orgbase.patients', 'notes');
             SELECT orgbase.classify('orgbase.patients', 'diagnosis', 'phi');
             RESET ROLE;",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // catalog reload interval
    // PHI needs a session that passed MFA
    let e = api
        .ok(Method::POST, "/v1/auth/mfa/totp/enroll", owner, None)
        .await;
    let secret = totp_rs::Secret::Encoded(e["secret"].as_str().unwrap().to_string())
        .to_bytes()
        .unwrap();
    let totp = orgbase_db::auth::totp(&secret, "owner@a.example").unwrap();
    api.ok(
        Method::POST,
        "/v1/auth/mfa/totp/verify",
        owner,
        Some(json!({"code": totp.generate_current().unwrap()})),
    )
    .await;
    let p = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/patients",
            owner,
            Some(json!({"name": "P", "diagnosis": "flu"})),
        )
        .await;
    let pid = p["id"].as_str().unwrap();
    api.ok(
        Method::GET,
        &format!("/v1/orgs/org-a/patients/{pid}"),
        owner,
        None,
    )
    .await;
    api.ok(Method::GET, "/v1/orgs/org-a/patients", owner, None)
        .await;
    let reads: Vec<(String, Vec<uuid::Uuid>)> = admin
        .query(
            "SELECT table_name, record_ids FROM orgbase.read_access_log ORDER BY at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let pid = uuid::Uuid::parse_str(pid).unwrap();
    assert_eq!(
        reads,
        vec![
            ("orgbase.patients".to_string(), vec![pid]),
            ("orgbase.patients".to_string(), vec![pid])
        ]
    );
    // Notes are not phi: not logged.
    api.ok(Method::GET, "/v1/orgs/org-a/notes", owner, None)
        .await;
    let n: i64 = admin
        .query_one("SELECT count(*) FROM orgbase.read_access_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// A create is prepared (encrypted, owner columns filled) from the context a recent request
/// verified, and sent in one round trip. The database checks it again: a caller whose role or
/// membership changed since is refused as if nothing had been cached, and nothing is written.
#[tokio::test]
async fn a_write_prepared_from_a_stale_context_is_refused() {
    let w = world().await;
    let admin = w.db.admin().await;
    let notes_titled = async |t: &str| -> i64 {
        admin
            .query_one("SELECT count(*) FROM orgbase.notes WHERE title = $1", &[&t])
            .await
            .unwrap()
            .get(0)
    };
    // The editor's context is now known to the server; this write takes the one-round-trip path.
    let first = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/notes",
            &w.a_editor.1,
            Some(json!({"title": "hinted", "body": "b"})),
        )
        .await;
    assert_eq!(first["created_by"], w.a_editor.0.as_str());
    assert_eq!(first["updated_by"], w.a_editor.0.as_str());
    assert_eq!(first["body"], "b");
    // Downgraded to viewer: the next write is refused.
    w.api
        .ok(
            Method::PUT,
            &format!("/v1/orgs/org-a/members/{}/apps/notes", w.a_editor.0),
            &w.a_owner.1,
            Some(json!({"role": "viewer"})),
        )
        .await;
    w.api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/notes",
            Some(&w.a_editor.1),
            Some(json!({"title": "after-downgrade", "body": "b"})),
            403,
            "forbidden",
        )
        .await;
    assert_eq!(notes_titled("after-downgrade").await, 0);
    // Editor again, one more write to refresh the server's context, then removed from the
    // organization: not a member any more.
    w.api
        .ok(
            Method::PUT,
            &format!("/v1/orgs/org-a/members/{}/apps/notes", w.a_editor.0),
            &w.a_owner.1,
            Some(json!({"role": "editor"})),
        )
        .await;
    w.api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/notes",
            &w.a_editor.1,
            Some(json!({"title": "hinted-again", "body": "b"})),
        )
        .await;
    w.api
        .ok(
            Method::DELETE,
            &format!("/v1/orgs/org-a/members/{}", w.a_editor.0),
            &w.a_owner.1,
            None,
        )
        .await;
    w.api
        .expect(
            Method::POST,
            "/v1/orgs/org-a/notes",
            Some(&w.a_editor.1),
            Some(json!({"title": "after-removal", "body": "b"})),
            404,
            "not-found",
        )
        .await;
    assert_eq!(notes_titled("after-removal").await, 0);
    assert_eq!(notes_titled("hinted").await, 1);
}

/// Reads render rows in the server (`orgbase_db::json`) when every column has a type it
/// renders, and with `row_to_json` otherwise; writes answer with `row_to_json`. A record must
/// read back exactly as its write answered it, on both paths: every built-in table, and a
/// product table with a `numeric` column (the `row_to_json` path), with edge values.
#[tokio::test]
async fn reads_answer_exactly_what_writes_answered() {
    let w = world().await;
    let api = &w.api;
    let t = &w.a_owner.1;
    let admin = w.db.admin().await;
    admin
        .batch_execute(
            "SET ROLE orgbase_owner;
             CREATE TABLE orgbase.readings (label text NOT NULL, value numeric, at timestamptz,
                                            flags text[]);
             SELECT orgbase.make_tenant_table('orgbase.readings', 'notes');
             RESET ROLE;",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // catalog reload interval
    let project = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/projects",
            t,
            Some(json!({"name": "P \"q\" \\ é", "settings": {"b": [1, 2.50], "a": null}})),
        )
        .await;
    let pid = project["id"].as_str().unwrap().to_string();
    let note = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/notes",
            t,
            Some(json!({"title": "line\nbreak\t\u{1}", "body": "", "tags": ["x", "", "ü"]})),
        )
        .await;
    let task = json!({"title": "T", "project_id": pid, "due_date": "0044-03-15",
                      "metadata": {"k": "v\"w"}, "priority": "high"});
    let reading = json!({"label": "r", "value": 1.50, "at": "2026-12-05T07:49:39.7+00:00",
                         "flags": ["a", "b"]});
    let mut cases = vec![("notes", note), ("projects", project)];
    for (table, body) in [("tasks", task), ("readings", reading)] {
        let created = api
            .ok(
                Method::POST,
                &format!("/v1/orgs/org-a/{table}"),
                t,
                Some(body),
            )
            .await;
        cases.push((table, created));
    }
    for (table, created) in cases {
        let id = created["id"].as_str().unwrap();
        let got = api
            .ok(
                Method::GET,
                &format!("/v1/orgs/org-a/{table}/{id}"),
                t,
                None,
            )
            .await;
        assert_eq!(got, created, "{table}: read by id");
        let page = api
            .ok(
                Method::GET,
                &format!("/v1/orgs/org-a/{table}?limit=200"),
                t,
                None,
            )
            .await;
        let listed = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{table}: {id} not listed"));
        assert_eq!(listed, &created, "{table}: listed");
    }
    // Cursors of the row_to_json path carry the sort value as PostgreSQL's text; those of the
    // server's rendering (notes, `pages_filters_versions_and_soft_delete`) as its JSON.
    api.ok(
        Method::POST,
        "/v1/orgs/org-a/readings",
        t,
        Some(json!({"label": "s", "value": -2})),
    )
    .await;
    let labels = every_page(api, "/v1/orgs/org-a/readings?limit=1", t, "label").await;
    assert_eq!(labels, ["s", "r"]);
}

// API key scopes --------------------------------------------------------------------------------

/// What one credential of the scope matrix may do with one app's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    List,
    GetOwn,
    GetOther,
    Create,
    UpdateOwn,
    UpdateOther,
    DeleteOwn,
    DeleteOther,
    RestoreOwn,
    RestoreOther,
}

const OPS: [Op; 10] = [
    Op::List,
    Op::GetOwn,
    Op::GetOther,
    Op::Create,
    Op::UpdateOwn,
    Op::UpdateOther,
    Op::DeleteOwn,
    Op::DeleteOther,
    Op::RestoreOwn,
    Op::RestoreOther,
];

/// Every credential of the matrix: a person's own session (`None`) or an API key with one scope.
/// `billing:write` names an app that does not exist (a key that names none of these apps).
const CREDENTIALS: [Option<&str>; 12] = [
    None,
    Some("notes:read"),
    Some("notes:write"),
    Some("notes:admin"),
    Some("projects:read"),
    Some("projects:write"),
    Some("projects:admin"),
    Some("*:read"),
    Some("*:write"),
    Some("*:admin"),
    Some("admin"),
    Some("billing:write"),
];

/// (app, table, body of a new row, body of a change).
const APPS: [(&str, &str, &str); 2] = [
    ("notes", "notes", "title"),
    ("projects", "projects", "name"),
];

/// The creators' levels in each app once the matrix is set up (0 none … 3 admin): owners and
/// admins are admins of every app; the manager is a notes editor and a projects viewer, the
/// member a notes viewer.
fn creator_level(role: &str, app: &str) -> u8 {
    match (role, app) {
        ("owner" | "admin", _) => 3,
        ("manager", "notes") => 2,
        ("manager", "projects") | ("member", "notes") => 1,
        _ => 0,
    }
}

/// The scope grammar of docs/api.md, written again here as the test's model: `<app>:<level>`
/// and `*:<level>` give at most that level; `admin` and other apps' scopes give none.
fn scope_level(scope: &str, app: &str) -> u8 {
    match scope.split_once(':') {
        Some((a, level)) if a == app || a == "*" => match level {
            "read" => 1,
            "write" => 2,
            "admin" => 3,
            _ => 0,
        },
        _ => 0,
    }
}

/// Whether the role matrix lets `cred` of a creator with `role` do `op` in `app`: a key's level
/// is the lower of its creator's and its scope's, and its rights over its creator's own rows go
/// as far as its scope (a session's go all the way).
fn allowed(role: &str, cred: Option<&str>, app: &str, op: Op) -> bool {
    let creator = creator_level(role, app);
    let (level, own) = match cred {
        None => (creator, 3),
        Some(s) => (creator.min(scope_level(s, app)), scope_level(s, app)),
    };
    match op {
        Op::List | Op::GetOwn => level >= 1 || own >= 1,
        Op::GetOther => level >= 1,
        Op::Create | Op::UpdateOther => level >= 2,
        Op::UpdateOwn => level >= 2 || own >= 2,
        Op::DeleteOwn | Op::RestoreOwn => level >= 3 || own >= 2,
        Op::DeleteOther | Op::RestoreOther => level >= 3,
    }
}

/// The rows one credential is tried on in one app: its creator's and another admin's, live and
/// soft-deleted.
struct Rows {
    own_live: String,
    own_dead: String,
    other_live: String,
    other_dead: String,
}

/// Every creator role × credential (session, each app × read/write/admin, `*`, org-level
/// `admin`, another app's scope) × app × operation, compared with the table `allowed` computes
/// from the scope grammar. Keys are made while their creators are admins; the manager and the
/// member are then demoted, which narrows their keys too. A refused change must change nothing.
#[tokio::test]
async fn api_keys_do_only_what_their_scopes_allow() {
    let w = world().await;
    let api = &w.api;
    let admin_db = w.db.admin().await;
    let org = "scopes";
    let owner = api.user("owner@scopes.example").await;
    let people = [
        ("admin", api.user("admin@scopes.example").await),
        ("manager", api.user("manager@scopes.example").await),
        ("member", api.user("member@scopes.example").await),
    ];
    let author = api.user("author@scopes.example").await;
    api.ok(
        Method::POST,
        "/v1/orgs",
        &owner.1,
        Some(json!({"name": "Scopes", "slug": org})),
    )
    .await;
    for (role, (_, token)) in &people {
        api.join(
            org,
            &owner.1,
            &format!("{role}@scopes.example"),
            token,
            "admin",
        )
        .await;
    }
    api.join(org, &owner.1, "author@scopes.example", &author.1, "admin")
        .await;
    let creators: Vec<(&str, &(String, String))> = std::iter::once(("owner", &owner))
        .chain(people.iter().map(|(r, p)| (*r, p)))
        .collect();

    let new_row = async |token: &str, table: &str, field: &str, dead: bool| -> String {
        let row = api
            .ok(
                Method::POST,
                &format!("/v1/orgs/{org}/{table}"),
                token,
                Some(json!({ field: "row" })),
            )
            .await;
        let id = row["id"].as_str().unwrap().to_string();
        if dead {
            api.ok(
                Method::DELETE,
                &format!("/v1/orgs/{org}/{table}/{id}"),
                token,
                None,
            )
            .await;
        }
        id
    };
    // (creator role, credential) → (token, rows per app)
    let mut cases = Vec::new();
    for (role, (_, session)) in &creators {
        for cred in CREDENTIALS {
            let token = match cred {
                None => session.clone(),
                Some(scope) => api
                    .ok(
                        Method::POST,
                        &format!("/v1/orgs/{org}/api-keys"),
                        session,
                        Some(json!({"name": scope, "scopes": [scope]})),
                    )
                    .await["key"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            };
            let mut rows = Vec::new();
            for (_, table, field) in APPS {
                rows.push(Rows {
                    own_live: new_row(session, table, field, false).await,
                    own_dead: new_row(session, table, field, true).await,
                    other_live: new_row(&author.1, table, field, false).await,
                    other_dead: new_row(&author.1, table, field, true).await,
                });
            }
            cases.push((*role, cred, token, rows));
        }
    }
    // The final roles: the manager and the member demoted, with their app roles.
    for (role, apps) in [
        ("manager", vec![("notes", "editor"), ("projects", "viewer")]),
        ("member", vec![("notes", "viewer")]),
    ] {
        let uid = &creators.iter().find(|(r, _)| *r == role).unwrap().1.0;
        api.ok(
            Method::PATCH,
            &format!("/v1/orgs/{org}/members/{uid}"),
            &owner.1,
            Some(json!({ "role": role })),
        )
        .await;
        for (app, app_role) in apps {
            api.ok(
                Method::PUT,
                &format!("/v1/orgs/{org}/members/{uid}/apps/{app}"),
                &owner.1,
                Some(json!({ "role": app_role })),
            )
            .await;
        }
    }

    let state = async |table: &str, id: &str| -> (String, Option<String>) {
        let r = admin_db
            .query_one(
                &format!(
                    "SELECT updated_at::text, deleted_at::text FROM orgbase.{table} WHERE id = $1"
                ),
                &[&uuid::Uuid::parse_str(id).unwrap()],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let mut wrong = Vec::new();
    let mut tried = 0;
    for (role, cred, token, rows) in &cases {
        for ((app, table, field), rows) in APPS.iter().zip(rows) {
            for op in OPS {
                tried += 1;
                let expect = allowed(role, *cred, app, op);
                let base = format!("/v1/orgs/{org}/{table}");
                let (method, path, body, row) = match op {
                    Op::List => (Method::GET, format!("{base}?limit=100"), None, None),
                    Op::GetOwn => (Method::GET, format!("{base}/{}", rows.own_live), None, None),
                    Op::GetOther => (
                        Method::GET,
                        format!("{base}/{}", rows.other_live),
                        None,
                        None,
                    ),
                    Op::Create => (
                        Method::POST,
                        base.clone(),
                        Some(json!({ *field: "new" })),
                        None,
                    ),
                    Op::UpdateOwn | Op::UpdateOther => {
                        let id = if op == Op::UpdateOwn {
                            &rows.own_live
                        } else {
                            &rows.other_live
                        };
                        (
                            Method::PATCH,
                            format!("{base}/{id}"),
                            Some(json!({ *field: "changed" })),
                            Some(id),
                        )
                    }
                    Op::DeleteOwn | Op::DeleteOther => {
                        let id = if op == Op::DeleteOwn {
                            &rows.own_live
                        } else {
                            &rows.other_live
                        };
                        (Method::DELETE, format!("{base}/{id}"), None, Some(id))
                    }
                    Op::RestoreOwn | Op::RestoreOther => {
                        let id = if op == Op::RestoreOwn {
                            &rows.own_dead
                        } else {
                            &rows.other_dead
                        };
                        (Method::POST, format!("{base}/{id}/restore"), None, Some(id))
                    }
                };
                let before = match row {
                    Some(id) => Some(state(table, id).await),
                    None => None,
                };
                let got = if op == Op::List {
                    // Listing is never refused; what it shows is the check.
                    let seen = every_page(api, &path, token, "id").await;
                    let own = seen.contains(&rows.own_live);
                    let other = seen.contains(&rows.other_live);
                    let model_other = allowed(role, *cred, app, Op::GetOther);
                    if own != expect || other != model_other {
                        wrong.push(format!(
                            "{role} {cred:?} {app} list: own row shown {own}, other row shown {other}"
                        ));
                    }
                    continue;
                } else {
                    api.call(method, &path, Some(token), body).await
                };
                let (status, answer) = got;
                let ok = status.is_success();
                let refused = matches!(status.as_u16(), 403 | 404);
                let changed = match (row, before) {
                    (Some(id), Some(b)) => Some(state(table, id).await != b),
                    _ => None,
                };
                if ok != expect || (!ok && !refused) || changed.is_some_and(|c| c != expect) {
                    wrong.push(format!(
                        "{role} {cred:?} {app} {op:?}: expected {}, got {status} (row changed: {changed:?}) {answer}",
                        if expect { "allowed" } else { "refused" }
                    ));
                }
            }
        }
    }
    assert_eq!(tried, 4 * 12 * 2 * 10);
    assert!(
        wrong.is_empty(),
        "{} of {tried} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// A key may create keys only with scopes its own cover; without the `admin` scope it creates
/// none, whoever made it.
#[tokio::test]
async fn a_key_cannot_create_a_key_with_more_rights() {
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    let key = async |token: &str, scopes: Value| -> (u16, Value) {
        let (s, v) = api
            .call(
                Method::POST,
                "/v1/orgs/org-a/api-keys",
                Some(token),
                Some(json!({"name": "k", "scopes": scopes})),
            )
            .await;
        (s.as_u16(), v)
    };
    let (s, admin_key) = key(owner, json!(["admin", "notes:read"])).await;
    assert_eq!(s, 201, "{admin_key}");
    let admin_key = admin_key["key"].as_str().unwrap();
    for (scopes, status) in [
        (json!(["notes:read"]), 201),
        (json!(["admin"]), 201),
        (json!(["admin", "notes:read"]), 201),
        (json!(["notes:write"]), 403),
        (json!(["notes:admin"]), 403),
        (json!(["projects:read"]), 403),
        (json!(["*:read"]), 403),
        (json!(["*:admin"]), 403),
    ] {
        let (s, v) = key(admin_key, scopes.clone()).await;
        assert_eq!(s, status, "{scopes}: {v}");
    }
    // `*:write` covers every app's read and write, not `*:admin` or org administration.
    let (_, wide) = key(owner, json!(["admin", "*:write"])).await;
    let wide = wide["key"].as_str().unwrap();
    for (scopes, status) in [
        (json!(["projects:write", "notes:read"]), 201),
        (json!(["*:read"]), 201),
        (json!(["*:write"]), 201),
        (json!(["notes:admin"]), 403),
        (json!(["*:admin"]), 403),
    ] {
        let (s, v) = key(wide, scopes.clone()).await;
        assert_eq!(s, status, "{scopes}: {v}");
    }
    // Without `admin` a key is an ordinary member: no keys, no members, no settings.
    let (_, all_apps) = key(owner, json!(["*:admin"])).await;
    let all_apps = all_apps["key"].as_str().unwrap();
    let (s, v) = key(all_apps, json!(["notes:read"])).await;
    assert_eq!(s, 403, "{v}");
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/api-keys",
        Some(all_apps),
        None,
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::PATCH,
        "/v1/orgs/org-a",
        Some(all_apps),
        Some(json!({"name": "renamed by a key"})),
        403,
        "forbidden",
    )
    .await;
    // And `admin` alone reads no app data.
    let (_, org_admin) = key(owner, json!(["admin"])).await;
    let page = api
        .ok(
            Method::GET,
            "/v1/orgs/org-a/notes",
            org_admin["key"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(page["items"], json!([]), "{page}");
}

/// Nobody joins an organization without accepting: adding a person sends an invitation, with
/// the same answer whether or not the address has an account, and the database refuses the
/// runtime role any other way in (an insert, or an update bringing back a removed member).
#[tokio::test]
async fn joining_an_organization_takes_the_persons_consent() {
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    let members = async || {
        api.ok(Method::GET, "/v1/orgs/org-a/members", owner, None)
            .await["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let before = members().await;
    let mut shapes = Vec::new();
    let mut known_token = String::new();
    for email in ["owner@b.example", "nobody@nowhere.example"] {
        let (s, v) = api
            .call(
                Method::POST,
                "/v1/orgs/org-a/members",
                Some(owner),
                Some(json!({"email": email, "role": "member"})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{email}: {v}");
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        shapes.push(keys);
        if email == "owner@b.example" {
            known_token = v["token"].as_str().unwrap().to_string();
        }
    }
    assert_eq!(
        shapes[0], shapes[1],
        "known and unknown addresses answer alike"
    );
    assert_eq!(members().await, before, "nobody was enrolled");
    // The person agrees: now a member.
    api.ok(
        Method::POST,
        &format!("/v1/invitations/{known_token}/accept"),
        &w.b_owner.1,
        None,
    )
    .await;
    assert!(members().await.contains(&w.b_owner.0));

    // In the database: the runtime role inserts no member and revives no removed one.
    api.ok(
        Method::DELETE,
        &format!("/v1/orgs/org-a/members/{}", w.a_viewer.0),
        owner,
        None,
    )
    .await;
    let pool = w.db.pool();
    let caller = orgbase_db::Caller {
        cred_hash: orgbase_db::auth::token_hash(owner),
        ..Default::default()
    };
    let stranger = api.user("stranger@c.example").await.0;
    for (sql, who) in [
        (
            "INSERT INTO orgbase.members (org_id, user_id, role) VALUES (orgbase.ctx_org(), $1, 'member')",
            &stranger,
        ),
        (
            "UPDATE orgbase.members SET deleted_at = NULL WHERE org_id = orgbase.ctx_org() AND user_id = $1",
            &w.a_viewer.0,
        ),
    ] {
        let who = uuid::Uuid::parse_str(who).unwrap();
        let r = orgbase_db::request::many(
            &pool,
            &caller,
            "org-a",
            async |c: &tokio_postgres::Client, _: &orgbase_db::Context| {
                Ok(c.execute(sql, &[&who]).await?)
            },
        )
        .await;
        assert!(
            matches!(r, Err(orgbase_db::ReqError::Forbidden(_))),
            "{sql}: {r:?}"
        );
    }
    let now = members().await;
    assert!(
        !now.contains(&stranger) && !now.contains(&w.a_viewer.0),
        "{now:?}"
    );
}

/// A removed member keeps the rows they made, but nothing new is assigned to them.
#[tokio::test]
async fn tasks_are_assigned_to_active_members_only() {
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    let project = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/projects",
            owner,
            Some(json!({"name": "P"})),
        )
        .await;
    let pid = project["id"].as_str().unwrap();
    let task = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/tasks",
            owner,
            Some(json!({"project_id": pid, "title": "T", "assignee_id": w.a_editor.0})),
        )
        .await;
    let tid = task["id"].as_str().unwrap();
    // A value outside a column's IN-list is refused by name, with the values it may have.
    let v = api
        .expect(
            Method::PATCH,
            &format!("/v1/orgs/org-a/tasks/{tid}"),
            Some(owner),
            Some(json!({"status": "finished"})),
            422,
            "validation",
        )
        .await;
    assert_eq!(v["errors"][0]["field"], "status", "{v}");
    assert_eq!(
        v["errors"][0]["message"],
        "must be one of todo, in_progress, review, done, cancelled"
    );
    api.ok(
        Method::DELETE,
        &format!("/v1/orgs/org-a/members/{}", w.a_viewer.0),
        owner,
        None,
    )
    .await;
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/v1/orgs/org-a/tasks/{tid}"),
            json!({"assignee_id": w.a_viewer.0}),
        ),
        (
            Method::POST,
            "/v1/orgs/org-a/tasks".to_string(),
            json!({"project_id": pid, "title": "U", "assignee_id": w.a_viewer.0}),
        ),
    ] {
        let v = api
            .expect(method, &path, Some(owner), Some(body), 422, "validation")
            .await;
        assert_eq!(v["errors"][0]["field"], "assignee_id", "{v}");
        assert_eq!(
            v["errors"][0]["message"],
            "is not an active member of this organization"
        );
    }
    let task = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-a/tasks/{tid}"),
            owner,
            None,
        )
        .await;
    assert_eq!(task["assignee_id"], w.a_editor.0.as_str());
    // Other changes to a task whose assignee left still work.
    api.ok(
        Method::DELETE,
        &format!("/v1/orgs/org-a/members/{}", w.a_editor.0),
        owner,
        None,
    )
    .await;
    api.ok(
        Method::PATCH,
        &format!("/v1/orgs/org-a/tasks/{tid}"),
        owner,
        Some(json!({"title": "renamed"})),
    )
    .await;
}

/// A crafted cursor is refused by name before it reaches SQL, and two credentials are refused.
#[tokio::test]
async fn crafted_cursors_and_doubled_credentials_are_refused() {
    use base64::Engine;
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    for cursor in [
        b64(json!([
            "created_at",
            "not a time",
            "00000000-0000-0000-0000-000000000000"
        ])),
        b64(json!([
            "created_at",
            "2026-13-45T99:00:00Z",
            "00000000-0000-0000-0000-000000000000"
        ])),
        b64(json!([
            "created_at",
            "'); DROP TABLE x; --",
            "00000000-0000-0000-0000-000000000000"
        ])),
    ] {
        let v = api
            .expect(
                Method::GET,
                &format!("/v1/orgs/org-a/notes?cursor={cursor}"),
                Some(owner),
                None,
                422,
                "validation",
            )
            .await;
        assert_eq!(v["errors"][0]["field"], "cursor", "{v}");
        assert!(!v.to_string().contains("syntax"), "{v}");
    }
    // A cursor the API issued pages on in its own order only.
    api.ok(
        Method::POST,
        "/v1/orgs/org-a/notes",
        owner,
        Some(json!({"title": "second"})),
    )
    .await;
    let page = api
        .ok(Method::GET, "/v1/orgs/org-a/notes?limit=1", owner, None)
        .await;
    let c = page["next_cursor"].as_str().unwrap();
    api.ok(
        Method::GET,
        &format!("/v1/orgs/org-a/notes?limit=1&cursor={c}"),
        owner,
        None,
    )
    .await;
    let v = api
        .expect(
            Method::GET,
            &format!("/v1/orgs/org-a/notes?limit=1&sort=created_at&cursor={c}"),
            Some(owner),
            None,
            422,
            "validation",
        )
        .await;
    assert_eq!(
        v["errors"][0]["message"],
        "this cursor belongs to another sort order"
    );

    let resp = api
        .http
        .get(format!("{}/v1/orgs/org-a/notes", api.base))
        .header("authorization", format!("Bearer {owner}"))
        .header("authorization", format!("Bearer {}", w.b_owner.1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "urn:orgbase:problem:bad-request", "{v}");
}

/// An encrypted column's declared limits hold for the plaintext: PostgreSQL sees only
/// ciphertext, so the server checks them before it encrypts, on create and on change.
#[tokio::test]
async fn limits_of_encrypted_columns_are_enforced_on_the_plaintext() {
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    for title in [String::new(), "t".repeat(501)] {
        let v = api
            .expect(
                Method::POST,
                "/v1/orgs/org-a/notes",
                Some(owner),
                Some(json!({ "title": title })),
                422,
                "validation",
            )
            .await;
        assert_eq!(v["errors"][0]["field"], "title", "{v}");
        assert_eq!(
            v["errors"][0]["message"],
            "must be 1 to 500 characters long"
        );
        let v = api
            .expect(
                Method::PATCH,
                &format!("/v1/orgs/org-a/notes/{}", w.a_note),
                Some(owner),
                Some(json!({ "title": title })),
                422,
                "validation",
            )
            .await;
        assert_eq!(v["errors"][0]["field"], "title", "{v}");
    }
    // 500 characters of two bytes each are 500 characters.
    api.ok(
        Method::POST,
        "/v1/orgs/org-a/notes",
        owner,
        Some(json!({ "title": "é".repeat(500) })),
    )
    .await;
    let stored: i64 = w
        .db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM orgbase.notes WHERE org_id = (SELECT id FROM orgbase.organizations WHERE slug = 'org-a')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 2, "only the note within the limits was written");
}

/// Input that two readers could read differently, or that a security check could read as "off",
/// is refused and stored nowhere: duplicate keys, ill-typed or unknown organization settings, an
/// address with a NUL in it.
#[tokio::test]
async fn ambiguous_input_is_refused() {
    let w = world().await;
    let api = &w.api;
    let owner = &w.a_owner.1;
    let raw = async |path: &str, body: &str| {
        let r = api
            .http
            .post(format!("{}{path}", api.base))
            .bearer_auth(owner)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let (s, v) = raw(
        "/v1/orgs/org-a/notes",
        r#"{"title":"shown","title":"stored"}"#,
    )
    .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (400, Some("urn:orgbase:problem:invalid-json")),
        "{v}"
    );
    let (s, v) = raw(
        "/v1/orgs",
        r#"{"name":"X","slug":"dupes","settings":{"require_mfa":true,"require_mfa":false}}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");

    let mut bad: Vec<(Value, &str)> = [
        json!("yes"),
        json!(1),
        json!([]),
        json!({"a": 1}),
        json!("maybe"),
        json!(null),
    ]
    .into_iter()
    .map(|v| (json!({"require_mfa": v}), "settings.require_mfa"))
    .collect();
    bad.push((json!({"requre_mfa": true}), "settings.requre_mfa"));
    for (settings, field) in bad {
        let v = api
            .expect(
                Method::PATCH,
                "/v1/orgs/org-a",
                Some(owner),
                Some(json!({ "settings": settings })),
                422,
                "validation",
            )
            .await;
        assert_eq!(v["errors"][0]["field"], field, "{v}");
    }
    api.expect(
        Method::POST,
        "/v1/orgs",
        Some(owner),
        Some(json!({"name": "Y", "slug": "typed", "settings": {"require_mfa": "no"}})),
        422,
        "validation",
    )
    .await;
    let org = api.ok(Method::GET, "/v1/orgs/org-a", owner, None).await;
    assert_eq!(org["settings"], json!({}), "nothing was stored: {org}");
    // The database holds the type too, whoever writes.
    let refused = w
        .db
        .admin()
        .await
        .execute(
            "UPDATE orgbase.organizations SET settings = '{\"require_mfa\": \"false\"}' WHERE slug = 'org-a'",
            &[],
        )
        .await;
    assert!(refused.is_err(), "an ill-typed setting reached the table");
    api.ok(
        Method::PATCH,
        "/v1/orgs/org-a",
        owner,
        Some(json!({"settings": {"require_mfa": false}})),
    )
    .await;

    // A NUL character cannot be stored in PostgreSQL's text: refused in any body, and in a
    // query; a control character in an address is not an address.
    for body in [
        json!({"email": "nul\u{0}@a.example", "password": "password-1234"}),
        json!({"email": "a@b.example", "password": "pass\u{0}word-1234"}),
    ] {
        api.expect(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(body),
            400,
            "invalid-json",
        )
        .await;
    }
    let v = api
        .expect(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": "bell\u{7}@a.example", "password": "password-1234"})),
            422,
            "validation",
        )
        .await;
    assert_eq!(v["errors"][0]["field"], "email", "{v}");
    for path in [
        "/v1/orgs/org-a/notes?id=%00",
        "/v1/orgs/org-a/audit?record=a%00b",
    ] {
        let (s, v) = api.call(Method::GET, path, Some(owner), None).await;
        assert!(matches!(s.as_u16(), 400 | 422), "{path}: {s} {v}");
        assert!(v.to_string().contains("NUL"), "{path}: {v}");
    }
}

/// Password guessing is slowed: after five failures in a row for one account from one address
/// the next try waits (429 with `Retry-After`, before any password is checked), and the wait is
/// short, so the person gets back in.
#[tokio::test]
async fn failed_logins_are_throttled_briefly() {
    let w = world().await;
    let api = &w.api;
    let login = async |password: &str| {
        let r = api
            .http
            .post(format!("{}/v1/auth/login", api.base))
            .json(&json!({"email": "viewer@a.example", "password": password}))
            .send()
            .await
            .unwrap();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), retry)
    };
    for _ in 0..5 {
        assert_eq!(login("wrong password").await.0, 401);
    }
    assert_eq!(login("password-1234").await, (429, Some("1".to_string())));
    // Another account from the same address is not affected.
    api.ok(
        Method::POST,
        "/v1/auth/login",
        "",
        Some(json!({"email": "editor@a.example", "password": "password-1234"})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(login("password-1234").await.0, 200);
}
