//! The web console over real HTTP and a real database: the route × role matrix generated from
//! the console's own route table, and attacks — another organization's ids in URLs and forms,
//! cross-origin posts, the Content-Security-Policy on every page, values a person may not read.
//! The browser suite (tests/console_browser.rs) drives the same pages in Chromium.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::PathBuf;
use std::time::Duration;

mod support;

use orgbase_http::console::{self, Perm};
use orgbase_http::{HttpSettings, Services, app};
use orgbase_testkit::{Api, TestDb, spawn_app};
use reqwest::{Method, StatusCode, redirect};
use serde_json::json;

struct World {
    db: TestDb,
    /// The key store and the backup store (removed with the world).
    dir: PathBuf,
    /// Field encryption over that key store (a second server over the same database needs it).
    fields: orgbase_db::fields::Fields,
    api: Api,
    /// A client that does not follow redirects: a handled form answers 303.
    http: reqwest::Client,
    /// (name, user id, session token) by role in org A; "operator" belongs to no organization.
    people: Vec<(&'static str, String, String)>,
    b_owner: (String, String),
    a_note: String,
    b_note: String,
    b_member: String,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn world_with(settings: HttpSettings) -> World {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let mut services = Services::load(db.pool(), &admin).await.unwrap();
    // A key store (field encryption, the operators' key page) and a backup store of their own.
    let dir = orgbase_testkit::temp_dir("orgbase-console-");
    let fields = support::with_stores(&mut services, &db, &dir).await;
    let base = spawn_app(app(
        services,
        orgbase_db::Migrator::embedded("t").latest(),
        &settings,
    ))
    .await;
    let api = Api::new(base);
    let owner = api.user("owner@a.example").await;
    let b_owner = api.user("owner@b.example").await;
    api.ok(
        Method::POST,
        "/v1/orgs",
        &owner.1,
        Some(json!({"name": "Org A", "slug": "org-a"})),
    )
    .await;
    api.ok(
        Method::POST,
        "/v1/orgs",
        &b_owner.1,
        Some(json!({"name": "Org B secret name", "slug": "org-b"})),
    )
    .await;
    let mut people = vec![("owner", owner.0.clone(), owner.1.clone())];
    for (role, org_role, app_role) in [
        ("admin", "admin", None),
        ("manager", "manager", None),
        ("member", "member", Some("editor")),
        ("viewer", "member", Some("viewer")),
    ] {
        let email = format!("{role}@a.example");
        let (id, token) = api.user(&email).await;
        api.join("org-a", &owner.1, &email, &token, org_role).await;
        if let Some(r) = app_role {
            api.ok(
                Method::PUT,
                &format!("/v1/orgs/org-a/members/{id}/apps/notes"),
                &owner.1,
                Some(json!({"role": r})),
            )
            .await;
        }
        people.push((role, id, token));
    }
    let op = api.user("operator@example.com").await;
    admin
        .execute(
            "INSERT INTO orgbase.instance_admins (user_id, granted_by) VALUES ($1::text::uuid, 'cli')",
            &[&op.0],
        )
        .await
        .unwrap();
    people.push(("operator", op.0, op.1));
    let b_member_acct = api.user("member@b.example").await;
    api.join(
        "org-b",
        &b_owner.1,
        "member@b.example",
        &b_member_acct.1,
        "member",
    )
    .await;
    let a_note = api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/notes",
            &owner.1,
            Some(json!({"title": "A's note", "body": "a body"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_note = api
        .ok(
            Method::POST,
            "/v1/orgs/org-b/notes",
            &b_owner.1,
            Some(json!({"title": "B's secret title", "body": "B's secret body"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    World {
        db,
        dir,
        fields,
        http: reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .build()
            .unwrap(),
        api,
        people,
        b_owner,
        a_note,
        b_note,
        b_member: b_member_acct.0,
    }
}

fn settings() -> HttpSettings {
    HttpSettings {
        request_timeout: Duration::from_secs(20),
        body_limit_bytes: 64 * 1024,
        access_log: false,
        trusted_proxies: Vec::new(),
        cors_origins: Vec::new(),
        slo: Default::default(),
        signup: Default::default(),
    }
}

async fn world() -> World {
    world_with(settings()).await
}

struct Page {
    status: StatusCode,
    csp: Option<String>,
    html: bool,
    body: String,
}

impl World {
    fn token(&self, role: &str) -> Option<&str> {
        self.people
            .iter()
            .find(|(r, _, _)| *r == role)
            .map(|(_, _, t)| t.as_str())
    }

    async fn console(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/console{path}", self.api.base));
        if let Some(t) = token {
            req = req.header("cookie", format!("{}={t}", console::COOKIE));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if method == Method::POST {
            req = req.form(form);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let csp = resp
            .headers()
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_string());
        let html = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/html"));
        Page {
            status,
            csp,
            html,
            body: resp.text().await.unwrap(),
        }
    }
}

/// What a role gets of a route: by its declared permission and what the API allows behind it.
#[derive(Debug, PartialEq)]
enum Expect {
    Allowed,
    Forbidden,
    /// The row exists but not for this role: the API's 404, as for another organization's.
    Hidden,
    /// A write the role may not make, to a row that exists nowhere: 403 or 404, as the API
    /// finds first (either way nothing is written and nothing is shown).
    Refused,
}

fn expected(perm: Perm, method: &str, path: &str, role: &str) -> Expect {
    let in_org = matches!(role, "owner" | "admin" | "manager" | "member" | "viewer");
    let by_perm = match perm {
        Perm::Public => true,
        Perm::SignedIn => role != "signed-out",
        Perm::Member => in_org,
        Perm::Admin => matches!(role, "owner" | "admin"),
        Perm::Operator => role == "operator",
    };
    // Behind the console, the API: an app's viewer, and a manager with no role in the app, read
    // its tables and write none.
    let table_route = path.starts_with("/orgs/{org}/tables/");
    let writes = method == "POST";
    // Teams: owners, admins and managers change them; members read them.
    let team_write = path.starts_with("/orgs/{org}/teams") && writes;
    let api_refuses = (matches!(role, "viewer" | "manager") && table_route && writes)
        || (matches!(role, "viewer" | "member") && team_write);
    let by_api = !api_refuses;
    // The download of a GDPR request that exists nowhere (the world has none).
    if by_perm && path.ends_with("/download") {
        return Expect::Hidden;
    }
    // A manager without a role in the app sees its rows of their own teams only: the owner's
    // note is not among them.
    if by_perm && role == "manager" && method == "GET" && path == "/orgs/{org}/tables/{table}/{id}"
    {
        return Expect::Hidden;
    }
    let one_row = path.starts_with("/orgs/{org}/tables/{table}/{id}");
    if by_perm && !by_api && (one_row || team_write) {
        return Expect::Refused;
    }
    if by_perm && by_api {
        Expect::Allowed
    } else {
        Expect::Forbidden
    }
}

/// The path of a route with this world's ids: pages get real ones (they must render); actions
/// get ids that exist nowhere, so that a permitted action changes nothing of the fixtures.
fn concrete(w: &World, method: &str, path: &str) -> String {
    let nowhere = "01900000-0000-7000-8000-000000000000";
    let id = if method == "GET" {
        w.a_note.as_str()
    } else {
        nowhere
    };
    let path = if path == "/" { "" } else { path };
    path.replace("{org}", "org-a")
        .replace("{user}", nowhere)
        .replace("{team}", nowhere)
        .replace("{role}", nowhere)
        .replace("{token}", "obi_NoSuchInvitation")
        .replace("{table}", "notes")
        .replace("{id}", id)
        .replace("{file}", "console.css")
}

const ROLES: [&str; 7] = [
    "owner",
    "admin",
    "manager",
    "member",
    "viewer",
    "operator",
    "signed-out",
];

#[tokio::test]
async fn every_route_answers_each_role_as_its_permission_says() {
    let w = world().await;
    let routes = console::routes();
    assert!(routes.len() >= 25, "the console's route table");
    let mut checked = 0;
    for route in &routes {
        for role in ROLES {
            // Signing out ends the session: a session of its own.
            let fresh;
            let token = if route.path == "/logout" && role != "signed-out" {
                let email = match role {
                    "operator" => "operator@example.com".to_string(),
                    r => format!("{r}@a.example"),
                };
                let (_, v) = w
                    .api
                    .call(
                        Method::POST,
                        "/v1/auth/login",
                        None,
                        Some(json!({"email": email, "password": "password-1234"})),
                    )
                    .await;
                fresh = v["token"].as_str().unwrap().to_string();
                Some(fresh.as_str())
            } else {
                w.token(role)
            };
            let method = Method::from_bytes(route.method.as_bytes()).unwrap();
            let path = concrete(&w, route.method, route.path);
            // A valid row, so that what decides is the role, not the body.
            let form: &[(&str, &str)] = match route.path {
                "/orgs/{org}/tables/{table}" => &[("title", "from the matrix")],
                "/orgs/{org}/teams" => &[("name", "from the matrix")],
                _ => &[],
            };
            let page = w.console(method, &path, token, form, &[]).await;
            let expect = expected(route.perm, route.method, route.path, role);
            let what = format!("{} {path} as {role}: {}", route.method, page.status);
            if expect == Expect::Hidden {
                assert_eq!(page.status, StatusCode::NOT_FOUND, "{what}: {}", page.body);
            } else if expect == Expect::Refused {
                assert!(
                    matches!(page.status.as_u16(), 403 | 404),
                    "{what}: {}",
                    page.body
                );
            } else if expect == Expect::Allowed {
                assert_ne!(page.status, StatusCode::FORBIDDEN, "{what}: {}", page.body);
                assert!(page.status.as_u16() < 500, "{what}: {}", page.body);
                if route.method == "GET" && route.path != "/login" {
                    assert_eq!(page.status, StatusCode::OK, "{what}: {}", page.body);
                }
            } else {
                assert_eq!(page.status, StatusCode::FORBIDDEN, "{what}: {}", page.body);
            }
            // Every page, refusals included, carries the policy.
            let csp = page.csp.unwrap_or_else(|| panic!("{what}: no CSP"));
            assert_eq!(csp, console::CSP, "{what}");
            if page.html {
                assert!(
                    !page.body.contains("<script>") && !page.body.contains(" style="),
                    "{what}: inline script or style"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * ROLES.len());
    // The policy itself: no inline code, no eval, no framing.
    for bad in ["unsafe-inline", "unsafe-eval", "*"] {
        assert!(!console::CSP.contains(bad), "{bad}");
    }
    assert!(console::CSP.contains("frame-ancestors 'none'"));
}

#[tokio::test]
async fn another_organizations_ids_change_and_show_nothing() {
    let w = world().await;
    let owner = w.token("owner");
    // B's pages, by slug, as A's owner: refused, and nothing of B in the answer.
    for path in [
        "/orgs/org-b",
        "/orgs/org-b/members",
        "/orgs/org-b/api-keys",
        "/orgs/org-b/audit",
        "/orgs/org-b/audit/export?format=json",
        "/orgs/org-b/tables/notes",
        format!("/orgs/org-b/tables/notes/{}", w.b_note).as_str(),
        "/orgs/org-b/teams",
        "/orgs/org-b/access",
        "/orgs/org-b/privacy",
        "/orgs/org-b/consents",
        "/orgs/org-b/retention",
    ] {
        let page = w.console(Method::GET, path, owner, &[], &[]).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
        for secret in ["Org B secret name", "B's secret", "member@b.example"] {
            assert!(!page.body.contains(secret), "{path} shows {secret}");
        }
    }
    // B's row through A's URL: the API finds no such row in A.
    let page = w
        .console(
            Method::GET,
            &format!("/orgs/org-a/tables/notes/{}", w.b_note),
            owner,
            &[],
            &[],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(!page.body.contains("B's secret"));
    // B's team, custom role, legal hold, and erasure and export requests.
    let b = &w.b_owner.1;
    let b_member = w.b_member.clone();
    let b_team = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-b/teams",
            b,
            Some(json!({"name": "B team"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_role = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-b/roles",
            b,
            Some(json!({"name": "B role", "permissions": ["notes:viewer"]})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_hold = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-b/legal-holds",
            b,
            Some(json!({"reason": "B's matter"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_erase = w
        .api
        .ok(
            Method::POST,
            &format!("/v1/orgs/org-b/members/{b_member}/erase"),
            b,
            None,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_export = w
        .api
        .ok(
            Method::POST,
            &format!("/v1/orgs/org-b/members/{b_member}/export"),
            b,
            None,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = w
        .console(
            Method::GET,
            &format!("/orgs/org-a/privacy/{b_export}/download"),
            owner,
            &[],
            &[],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    for (path, form) in [
        (format!("/orgs/org-a/teams/{b_team}/delete"), vec![]),
        (
            format!("/orgs/org-a/teams/{b_team}/members"),
            vec![("user", b_member.as_str())],
        ),
        (
            format!("/orgs/org-a/access/{b_member}"),
            vec![("app.notes", "admin")],
        ),
        (
            format!("/orgs/org-a/roles/{b_role}/grant"),
            vec![("user", b_member.as_str())],
        ),
        (format!("/orgs/org-a/privacy/{b_erase}/cancel"), vec![]),
        (
            "/orgs/org-a/privacy/erase".to_string(),
            vec![("user", b_member.as_str()), ("confirm", "yes")],
        ),
        (format!("/orgs/org-a/legal-holds/{b_hold}/release"), vec![]),
        (
            "/orgs/org-a/consents".to_string(),
            vec![
                ("subject", b_member.as_str()),
                ("purpose", "defaced"),
                ("decision", "granted"),
            ],
        ),
    ] {
        let page = w.console(Method::POST, &path, owner, &form, &[]).await;
        assert!(
            page.status.is_client_error(),
            "{path}: {} {}",
            page.status,
            page.body
        );
        assert!(
            !page.body.contains("B team") && !page.body.contains("B's matter"),
            "{path}"
        );
    }
    let teams = w.api.ok(Method::GET, "/v1/orgs/org-b/teams", b, None).await;
    assert_eq!(teams["items"][0]["members"], json!([]));
    let roles = w.api.ok(Method::GET, "/v1/orgs/org-b/roles", b, None).await;
    assert_eq!(roles["items"][0]["members"], json!([]));
    let holds = w
        .api
        .ok(Method::GET, "/v1/orgs/org-b/legal-holds", b, None)
        .await;
    assert_eq!(holds["items"][0]["active"], true);
    let reqs = w
        .api
        .ok(Method::GET, "/v1/orgs/org-b/gdpr-requests", b, None)
        .await;
    assert!(
        reqs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "requested"),
        "{reqs}"
    );
    let consents = w
        .api
        .ok(Method::GET, "/v1/orgs/org-b/consents?subject=all", b, None)
        .await;
    assert_eq!(consents["items"], json!([]));
    let a_reqs = w
        .api
        .ok(
            Method::GET,
            "/v1/orgs/org-a/gdpr-requests",
            owner.unwrap(),
            None,
        )
        .await;
    assert_eq!(
        a_reqs["items"],
        json!([]),
        "no request about B's member in A"
    );

    // Actions with B's ids through A's URLs: nothing changes in B.
    for (path, form) in [
        (format!("/orgs/org-a/members/{b_member}/remove"), vec![]),
        (
            format!("/orgs/org-a/members/{b_member}/role"),
            vec![("role", "owner")],
        ),
        (
            format!("/orgs/org-a/tables/notes/{}", w.b_note),
            vec![("title", "defaced"), ("_etag", "\"1\"")],
        ),
        (
            format!("/orgs/org-a/tables/notes/{}/delete", w.b_note),
            vec![],
        ),
    ] {
        let page = w.console(Method::POST, &path, owner, &form, &[]).await;
        assert!(
            page.status.is_client_error(),
            "{path}: {} {}",
            page.status,
            page.body
        );
    }
    let members = w
        .api
        .ok(Method::GET, "/v1/orgs/org-b/members", &w.b_owner.1, None)
        .await;
    let m = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == b_member.as_str())
        .expect("B's member is still there");
    assert_eq!(m["role"], "member");
    let note = w
        .api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-b/notes/{}", w.b_note),
            &w.b_owner.1,
            None,
        )
        .await;
    assert_eq!(note["title"], "B's secret title");
}

#[tokio::test]
async fn cross_origin_posts_are_refused_and_change_nothing() {
    let w = world().await;
    let owner = w.token("owner");
    let form = [("name", "planted"), ("scopes", "notes:read")];
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
    ] {
        let page = w
            .console(Method::POST, "/orgs/org-a/api-keys", owner, &form, &headers)
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(page.csp.as_deref(), Some(console::CSP));
    }
    let keys = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/api-keys", owner.unwrap(), None)
        .await;
    assert_eq!(keys["items"].as_array().unwrap().len(), 0, "{keys}");
    // The same form from the console's own origin goes through, and shows the key once.
    let base = w.api.base.clone();
    let host = base.trim_start_matches("http://");
    for headers in [
        vec![("sec-fetch-site", "same-origin")],
        vec![("origin", base.as_str()), ("host", host)],
    ] {
        let page = w
            .console(Method::POST, "/orgs/org-a/api-keys", owner, &form, &headers)
            .await;
        assert_eq!(page.status, StatusCode::OK, "{headers:?}: {}", page.body);
        assert!(page.body.contains("obk_"), "the new key is shown");
    }
    // Cookie-less: a signed-out post is refused without touching the API.
    let page = w
        .console(Method::POST, "/orgs/org-a/api-keys", None, &form, &[])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn values_a_person_may_not_read_never_reach_their_page() {
    let w = world().await;
    let admin = w.db.admin().await;
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
    tokio::time::sleep(Duration::from_millis(1100)).await; // the catalog reloads once a second
    let owner = w.token("owner").unwrap();
    let e = w
        .api
        .ok(Method::POST, "/v1/auth/mfa/totp/enroll", owner, None)
        .await;
    let secret = totp_rs::Secret::Encoded(e["secret"].as_str().unwrap().to_string())
        .to_bytes()
        .unwrap();
    let totp = orgbase_db::auth::totp(&secret, "owner@a.example").unwrap();
    w.api
        .ok(
            Method::POST,
            "/v1/auth/mfa/totp/verify",
            owner,
            Some(json!({"code": totp.generate_current().unwrap()})),
        )
        .await;
    // A session that passed MFA (a fresh login with the code).
    let (_, s) = w
        .api
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(
                json!({"email": "owner@a.example", "password": "password-1234",
                        "totp": totp.generate_current().unwrap()}),
            ),
        )
        .await;
    let mfa = s["token"].as_str().unwrap().to_string();
    let p = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/patients",
            &mfa,
            Some(json!({"name": "P", "diagnosis": "diagnosis-xyzzy"})),
        )
        .await;
    let pid = p["id"].as_str().unwrap();
    // With MFA the owner sees it; the table's list and the row's page.
    let page = w
        .console(
            Method::GET,
            "/orgs/org-a/tables/patients",
            Some(&mfa),
            &[],
            &[],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("diagnosis-xyzzy"));
    // Without MFA (the admin's session, and the manager with no role in the app): refused, and
    // the value is nowhere in the page.
    for role in ["admin", "manager", "viewer"] {
        for path in [
            "/orgs/org-a/tables/patients".to_string(),
            format!("/orgs/org-a/tables/patients/{pid}"),
        ] {
            let page = w.console(Method::GET, &path, w.token(role), &[], &[]).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{role} {path}");
            assert!(!page.body.contains("diagnosis-xyzzy"), "{role} {path}");
        }
    }
    // The audit export as the owner holds the entry, never to a member.
    let page = w
        .console(
            Method::GET,
            "/orgs/org-a/audit/export?format=csv",
            w.token("member"),
            &[],
            &[],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn signing_in_sets_a_strict_http_only_cookie_and_signing_out_ends_the_session() {
    let w = world().await;
    let resp = w
        .http
        .post(format!("{}/console/login", w.api.base))
        .form(&[
            ("email", "admin@a.example"),
            ("password", "password-1234"),
            ("next", "/console/orgs/org-a/members"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/console/orgs/org-a/members");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let token = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let page = w
        .console(Method::GET, "/orgs/org-a/members", Some(&token), &[], &[])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("member@a.example"));
    // A redirect elsewhere is not followed.
    for next in ["https://evil.example/", "//evil.example/", "/v1/me"] {
        let resp = w
            .http
            .post(format!("{}/console/login", w.api.base))
            .form(&[
                ("email", "admin@a.example"),
                ("password", "password-1234"),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["location"], "/console", "{next}");
    }
    // Wrong password: the form again, 401, no cookie.
    let resp = w
        .http
        .post(format!("{}/console/login", w.api.base))
        .form(&[("email", "admin@a.example"), ("password", "wrong-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());
    // Sign out: the session is over for the API too.
    let page = w
        .console(Method::POST, "/logout", Some(&token), &[], &[])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let (s, _) = w.api.call(Method::GET, "/v1/me", Some(&token), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let page = w
        .console(Method::GET, "/orgs/org-a/members", Some(&token), &[], &[])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("Sign in"));
    // …whose form brings the person back to the page.
    assert!(
        page.body
            .contains(r#"name="next" value="/console/orgs/org-a/members""#),
        "{}",
        page.body
    );
    // Behind a trusted proxy that terminates TLS, the cookie is Secure.
    let mut s = settings();
    s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let w = world_with(s).await;
    let resp = w
        .http
        .post(format!("{}/console/login", w.api.base))
        .header("x-forwarded-proto", "https")
        .form(&[("email", "admin@a.example"), ("password", "password-1234")])
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test]
async fn the_embedded_assets_stay_small_and_scripts_load_with_integrity() {
    let total: usize = console_sizes().iter().map(|(_, gz)| gz).sum();
    assert!(total < 300 * 1024, "{total} bytes gzipped");
    let w = world().await;
    let page = w.console(Method::GET, "", w.token("owner"), &[], &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let scripts: Vec<&str> = page
        .body
        .match_indices("<script ")
        .map(|(i, _)| &page.body[i..])
        .collect();
    assert_eq!(scripts.len(), 2);
    for s in scripts {
        let tag = &s[..s.find('>').unwrap()];
        assert!(tag.contains("integrity=\"sha384-"), "{tag}");
    }
    assert!(page.body.contains("\"allowEval\":false"));
}

/// Each embedded file's gzipped size (`gzip -9 -c`).
fn console_sizes() -> Vec<(String, usize)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !(name.ends_with(".js") || name.ends_with(".css")) {
            continue;
        }
        let gz = std::process::Command::new("gzip")
            .args(["-9", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(gz.status.success());
        out.push((name, gz.stdout.len()));
    }
    assert!(out.len() >= 3, "{out:?}");
    out
}

#[tokio::test]
async fn sign_up_follows_the_server_setting() {
    use orgbase_core::config::SignupMode;
    let w = world().await;
    let owner = w.token("owner").unwrap();
    let inv = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/invitations",
            owner,
            Some(json!({"email": "invited@a.example", "role": "member"})),
        )
        .await;
    let token = inv["token"].as_str().unwrap().to_string();
    let revoked = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/org-a/invitations",
            owner,
            Some(json!({"email": "revoked@a.example", "role": "member"})),
        )
        .await;
    w.api
        .ok(
            Method::DELETE,
            &format!(
                "/v1/orgs/org-a/invitations/{}",
                revoked["id"].as_str().unwrap()
            ),
            owner,
            None,
        )
        .await;
    // A second server over the same database, with another setting.
    let serve = |mode| {
        let db = &w.db;
        let fields = &w.fields;
        async move {
            let mut services = Services::load(db.pool(), &db.admin().await).await.unwrap();
            services.fields = fields.clone();
            let mut s = settings();
            s.signup = mode;
            Api::new(
                spawn_app(app(
                    services,
                    orgbase_db::Migrator::embedded("t").latest(),
                    &s,
                ))
                .await,
            )
        }
    };
    let signup = |email: &str, invitation: Option<&str>| {
        let mut body = json!({"email": email, "password": "password-1234"});
        if let Some(t) = invitation {
            body["invitation"] = t.into();
        }
        body
    };
    let invite_only = serve(SignupMode::InviteOnly).await;
    for (email, invitation) in [
        ("stranger@a.example", None),
        ("stranger@a.example", Some(token.as_str())),
        ("revoked@a.example", revoked["token"].as_str()),
        ("invited@a.example", Some("obi_not-a-token")),
    ] {
        invite_only
            .expect(
                Method::POST,
                "/v1/auth/signup",
                None,
                Some(signup(email, invitation)),
                403,
                "signup-closed",
            )
            .await;
    }
    let (s, v) = invite_only
        .call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(signup("invited@a.example", Some(&token))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let closed = serve(SignupMode::Closed).await;
    closed
        .expect(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(signup("late@a.example", Some(&token))),
            403,
            "signup-closed",
        )
        .await;
    // Nothing of the refused sign-ups was stored.
    let admin = w.db.admin().await;
    let n: i64 = admin
        .query_one("SELECT count(*) FROM orgbase.users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 9, "the world's eight accounts and the invited one");
}

#[tokio::test]
async fn bad_input_to_the_operator_api_and_console_forms_is_refused_and_changes_nothing() {
    let w = world().await;
    let op = w.token("operator");
    let owner = w.token("owner");
    let (_, member_id, _) = w.people.iter().find(|(r, _, _)| *r == "member").unwrap();
    let (_, op_id, _) = w.people.iter().find(|(r, _, _)| *r == "operator").unwrap();
    let status = |id: &str| format!("/v1/operator/accounts/{id}/status");
    for (path, body, code, kind) in [
        (
            status(member_id),
            json!({"status": "deleted"}),
            422,
            "validation",
        ),
        (
            status(member_id),
            json!({"state": "suspended"}),
            422,
            "validation",
        ),
        (
            status(op_id),
            json!({"status": "suspended"}),
            403,
            "forbidden",
        ),
        (
            status("01900000-0000-7000-8000-000000000000"),
            json!({"status": "suspended"}),
            404,
            "not-found",
        ),
    ] {
        w.api
            .expect(Method::POST, &path, op, Some(body), code, kind)
            .await;
    }
    // Not an operator: refused, whoever they are in an organization.
    w.api
        .expect(
            Method::POST,
            &status(member_id),
            owner,
            Some(json!({"status": "suspended"})),
            403,
            "forbidden",
        )
        .await;
    for q in ["limit=0", "limit=501", "before=nope", "colour=red"] {
        w.api
            .expect(
                Method::GET,
                &format!("/v1/operator/accounts?{q}"),
                op,
                None,
                400,
                "bad-request",
            )
            .await;
    }
    // Nobody was suspended, and the member still works.
    let (s, _) = w
        .api
        .call(Method::GET, "/v1/me", w.token("member"), None)
        .await;
    assert_eq!(s, StatusCode::OK);

    // A console form with a bad value: the page again with the API's reason, and no key made.
    let page = w
        .console(
            Method::POST,
            "/orgs/org-a/api-keys",
            owner,
            &[
                ("name", "bad expiry"),
                ("scopes", "notes:read"),
                ("expires_at", "tomorrow"),
            ],
            &[],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.body
    );
    assert!(page.body.contains("expires_at"), "{}", page.body);
    let page = w
        .console(
            Method::POST,
            "/orgs/org-a/api-keys",
            owner,
            &[("name", "no such scope"), ("scopes", "notes:everything")],
            &[],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.body
    );
    let keys = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/api-keys", owner.unwrap(), None)
        .await;
    assert_eq!(keys["items"].as_array().unwrap().len(), 0, "{keys}");
    // A row whose title is missing: refused by name, nothing written.
    let before = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/notes", owner.unwrap(), None)
        .await["items"]
        .as_array()
        .unwrap()
        .len();
    let page = w
        .console(
            Method::POST,
            "/orgs/org-a/tables/notes",
            owner,
            &[("body", "no title")],
            &[],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.body
    );
    assert!(page.body.contains("title"), "{}", page.body);
    let after = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/notes", owner.unwrap(), None)
        .await["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
}

#[tokio::test]
async fn operators_close_organizations_and_see_migrations_keys_and_backups() {
    let w = world().await;
    let op = w.token("operator").unwrap();
    let owner = w.token("owner");
    let b_id = w
        .api
        .ok(Method::GET, "/v1/orgs/org-b", &w.b_owner.1, None)
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let org_status = format!("/v1/operator/orgs/{b_id}/status");
    // Nobody but an operator: an organization's owner gets 403 on each.
    for (method, path) in [
        (Method::GET, "/v1/operator/migrations"),
        (Method::GET, "/v1/operator/keys"),
        (Method::GET, "/v1/operator/backups"),
        (Method::POST, "/v1/operator/backups"),
        (Method::POST, org_status.as_str()),
    ] {
        let body =
            (method == Method::POST && path.ends_with("/status")).then(|| json!({"closed": true}));
        w.api
            .expect(method, path, owner, body, 403, "forbidden")
            .await;
    }
    let (s, _) = w
        .api
        .call(Method::GET, "/v1/orgs/org-b", Some(&w.b_owner.1), None)
        .await;
    assert_eq!(s, StatusCode::OK, "org B is still open");

    // Migrations: the database is at this binary's newest.
    let latest = orgbase_db::Migrator::embedded("t").latest();
    let m = w
        .api
        .ok(Method::GET, "/v1/operator/migrations", op, None)
        .await;
    assert_eq!(m["database"], latest);
    assert_eq!(m["binary"], latest);
    assert_eq!(m["pending"], 0);
    assert_eq!(m["items"][0]["version"], latest);
    assert_eq!(m["items"].as_array().unwrap().len() as i64, latest);

    // Keys: the notes' encrypted fields made data keys; none is due for rotation yet.
    let k = w.api.ok(Method::GET, "/v1/operator/keys", op, None).await;
    let live: u64 = k["keys"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["live"].as_u64().unwrap())
        .sum();
    assert!(live >= 1, "{k}");
    assert_eq!(k["rotation_days"], 90, "{k}");
    assert_eq!(k["due"], json!([]), "{k}");
    assert!(!k.to_string().contains("wrapped"), "no key material: {k}");

    // Backups: started now, one at a time, listed when done; audited.
    let empty = w
        .api
        .ok(Method::GET, "/v1/operator/backups", op, None)
        .await;
    assert_eq!(empty["items"], json!([]));
    assert_eq!(empty["last_verify"], serde_json::Value::Null);
    let (s, started) = w
        .api
        .call(Method::POST, "/v1/operator/backups", Some(op), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    w.api
        .expect(
            Method::POST,
            "/v1/operator/backups",
            Some(op),
            None,
            409,
            "conflict",
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let listed = loop {
        let v = w
            .api
            .ok(Method::GET, "/v1/operator/backups", op, None)
            .await;
        if v["running"] == false && !v["items"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no backup after 2 minutes: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let b = &listed["items"][0];
    assert_eq!(b["kind"], "dump");
    assert_eq!(b["tier"], "manual");
    assert_eq!(b["schema_version"], latest);
    assert!(b["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        b["last_verify"],
        serde_json::Value::Null,
        "not verified yet"
    );
    let admin = w.db.admin().await;
    let (_, op_id, _) = w.people.iter().find(|(r, _, _)| *r == "operator").unwrap();
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.audit_log WHERE action = 'backup.start' \
             AND actor_user = $1::text::uuid",
            &[op_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the refused second start wrote nothing");

    // Closing an organization: nobody reaches it, its data stays; reopening brings it back.
    for (body, code, kind) in [
        (json!({"closed": "yes"}), 422, "validation"),
        (json!({}), 422, "validation"),
    ] {
        w.api
            .expect(Method::POST, &org_status, Some(op), Some(body), code, kind)
            .await;
    }
    w.api
        .expect(
            Method::POST,
            "/v1/operator/orgs/01900000-0000-7000-8000-000000000000/status",
            Some(op),
            Some(json!({"closed": true})),
            404,
            "not-found",
        )
        .await;
    let closed = w
        .api
        .ok(Method::POST, &org_status, op, Some(json!({"closed": true})))
        .await;
    assert_eq!(closed["changed"], true);
    for org in ["org-b", b_id.as_str()] {
        let (s, _) = w
            .api
            .call(
                Method::GET,
                &format!("/v1/orgs/{org}/notes/{}", w.b_note),
                Some(&w.b_owner.1),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{org}");
    }
    let orgs = w.api.ok(Method::GET, "/v1/operator/orgs", op, None).await;
    let b = orgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["slug"] == "org-b")
        .unwrap();
    assert!(b["closed_at"].is_string(), "{b}");
    let again = w
        .api
        .ok(Method::POST, &org_status, op, Some(json!({"closed": true})))
        .await;
    assert_eq!(again["changed"], false);
    w.api
        .ok(
            Method::POST,
            &org_status,
            op,
            Some(json!({"closed": false})),
        )
        .await;
    let note = w
        .api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-b/notes/{}", w.b_note),
            &w.b_owner.1,
            None,
        )
        .await;
    assert_eq!(note["title"], "B's secret title");
    let actions: Vec<String> = admin
        .query(
            "SELECT action FROM orgbase.audit_log WHERE actor_user = $1::text::uuid \
             AND action LIKE 'org.%' ORDER BY id",
            &[op_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions, ["org.close", "org.reopen"]);

    // The console's operator pages show the same.
    let page = w
        .console(Method::GET, "/operator/backups", Some(op), &[], &[])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains(listed["items"][0]["id"].as_str().unwrap())
    );
    let page = w
        .console(Method::GET, "/operator/migrations", Some(op), &[], &[])
        .await;
    assert!(page.body.contains("Up to date."), "{}", page.body);
    let page = w
        .console(Method::GET, "/operator/health", Some(op), &[], &[])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("ready (orgbase"), "{}", page.body);
}

#[tokio::test]
async fn bad_input_to_the_new_console_forms_is_refused_by_name_and_writes_nothing() {
    let w = world().await;
    let owner = w.token("owner");
    let op = w.token("operator");
    let (_, member_id, _) = w.people.iter().find(|(r, _, _)| *r == "member").unwrap();
    for (path, form, token, code, says) in [
        (
            format!("/orgs/org-a/access/{member_id}"),
            vec![("app.notes", "superuser")],
            owner,
            422,
            "notes: the role must be viewer, editor or admin",
        ),
        (
            format!("/orgs/org-a/access/{member_id}"),
            vec![("app.nosuchapp", "viewer")],
            owner,
            422,
            "nosuchapp: no such app",
        ),
        (
            "/orgs/org-a/privacy/erase".to_string(),
            vec![("user", member_id.as_str())],
            owner,
            422,
            "Tick the box to confirm the erasure",
        ),
        (
            "/orgs/org-a/consents".to_string(),
            vec![("purpose", "newsletter"), ("decision", "maybe")],
            owner,
            422,
            "Choose whether consent was given or withdrawn.",
        ),
        (
            "/orgs/org-a/retention".to_string(),
            vec![("keep.sessions", "forever")],
            owner,
            422,
            "policies.sessions",
        ),
        (
            "/orgs/org-a/legal-holds".to_string(),
            vec![("reason", "")],
            owner,
            422,
            "reason",
        ),
        (
            format!(
                "/operator/orgs/{}/status",
                "01900000-0000-7000-8000-000000000000"
            ),
            vec![("closed", "maybe")],
            op,
            422,
            "closed must be yes or no",
        ),
    ] {
        let page = w.console(Method::POST, &path, token, &form, &[]).await;
        assert_eq!(page.status.as_u16(), code, "{path}: {}", page.body);
        assert!(page.body.contains(says), "{path}: {}", page.body);
        assert_eq!(page.csp.as_deref(), Some(console::CSP), "{path}");
    }
    // Nothing was written: the member's app role, the requests, the consents, the policies, the
    // holds are as the world made them.
    let o = owner.unwrap();
    let m = w
        .api
        .ok(
            Method::GET,
            &format!("/v1/orgs/org-a/members/{member_id}"),
            o,
            None,
        )
        .await;
    assert_eq!(m["apps"]["notes"], "editor");
    let reqs = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/gdpr-requests", o, None)
        .await;
    assert_eq!(reqs["items"], json!([]));
    let consents = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/consents?subject=all", o, None)
        .await;
    assert_eq!(consents["items"], json!([]));
    let policies = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/retention", o, None)
        .await;
    assert!(
        policies["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["policy"].is_null()),
        "{policies}"
    );
    let holds = w
        .api
        .ok(Method::GET, "/v1/orgs/org-a/legal-holds", o, None)
        .await;
    assert_eq!(holds["items"], json!([]));
}
