//! The console in a real browser: headless Chromium from Debian's `chromium` package, driven
//! through Debian's `chromedriver` over WebDriver (fantoccini). It signs in, does each page's
//! primary action with the page's own forms, and checks the effect through the API.
//!
//! CI installs both packages; elsewhere, without them, the test says so and passes. Set
//! `CONSOLE_SCREENSHOTS_DIR` to keep the screenshots (docs/console.md shows them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use orgbase_http::{HttpSettings, Services, app};
use orgbase_testkit::{Api, TestDb, spawn_app, temp_dir};
use reqwest::Method;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Option<Driver> {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium and chromium-driver (.ci/run installs them)"
        );
        eprintln!(
            "skipped: {CHROMIUM} or {CHROMEDRIVER} not found (apt-get install chromium chromium-driver)"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while reqwest::get(format!("{url}/status")).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(Driver { child, url })
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,860"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

struct Shots(PathBuf);

impl Shots {
    fn new() -> Self {
        let dir = std::env::var_os("CONSOLE_SCREENSHOTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("orgbase-console-screenshots"));
        std::fs::create_dir_all(&dir).unwrap();
        Shots(dir)
    }

    async fn take(&self, b: &Client, name: &str) {
        let png = b.screenshot().await.unwrap();
        std::fs::write(self.0.join(format!("{name}.png")), png).unwrap();
    }
}

/// The element `css`, once it is on the page (htmx swaps pages in after a click).
async fn element(b: &Client, css: &str) -> fantoccini::elements::Element {
    match b
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!(
            "{css}: {e}\nat {}:\n{}",
            b.current_url().await.unwrap(),
            b.source().await.unwrap_or_default()
        ),
    }
}

async fn fill(b: &Client, css: &str, text: &str) {
    let e = element(b, css).await;
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

async fn click(b: &Client, css: &str) {
    element(b, css).await.click().await.unwrap();
}

async fn text_of(b: &Client, css: &str) -> String {
    element(b, css).await.text().await.unwrap()
}

/// Wait until the page's URL path contains `part`.
async fn at(b: &Client, part: &str) {
    let started = Instant::now();
    loop {
        let url = b.current_url().await.unwrap();
        if url.as_str().contains(part) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still at {url}, not {part}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// orgbase's API and console over `db`, with a key store and a backup store under `dir`.
async fn server(db: &TestDb, dir: &Path) -> String {
    let mut services = Services::load(db.pool(), &db.admin().await).await.unwrap();
    support::with_stores(&mut services, db, dir).await;
    let settings = HttpSettings {
        request_timeout: Duration::from_secs(20),
        body_limit_bytes: 64 * 1024,
        access_log: false,
        trusted_proxies: Vec::new(),
        cors_origins: Vec::new(),
        slo: Default::default(),
        signup: Default::default(),
    };
    spawn_app(app(
        services,
        orgbase_db::Migrator::embedded("t").latest(),
        &settings,
    ))
    .await
}

#[tokio::test]
async fn an_admin_works_through_the_console_in_chromium() {
    let Some(driver) = driver().await else {
        return;
    };
    let db = TestDb::migrated().await;
    let dir = temp_dir("orgbase-console-browser-");
    let base = server(&db, &dir).await;
    let api = Api::new(base.clone());
    let (owner_id, owner) = api.user("owner@acme.example").await;
    api.ok(
        Method::POST,
        "/v1/orgs",
        &owner,
        Some(json!({"name": "Acme", "slug": "acme"})),
    )
    .await;
    for t in ["Quarterly plan", "Customer call notes", "Hiring loop"] {
        api.ok(
            Method::POST,
            "/v1/orgs/acme/notes",
            &owner,
            Some(json!({"title": t, "body": "…"})),
        )
        .await;
    }
    let shots = Shots::new();
    let b = browser(&driver).await;

    // Signed out, a page asks to sign in and brings the person back.
    b.goto(&format!("{base}/console/orgs/acme/api-keys"))
        .await
        .unwrap();
    fill(&b, "#email", "owner@acme.example").await;
    fill(&b, "#password", "password-1234").await;
    shots.take(&b, "sign-in").await;
    click(&b, "#sign-in").await;
    at(&b, "/console/orgs/acme/api-keys").await;

    // API keys: create one with a scope; the page shows it once; the API has it.
    fill(&b, "#key-name", "ci deploys").await;
    click(&b, "input[value='notes:read']").await;
    click(&b, "#create-key").await;
    let key = text_of(&b, "#new-key").await;
    assert!(key.starts_with("obk_"), "{key}");
    shots.take(&b, "api-keys").await;
    let keys = api
        .ok(Method::GET, "/v1/orgs/acme/api-keys", &owner, None)
        .await;
    let made = &keys["items"][0];
    assert_eq!(made["name"], "ci deploys");
    assert_eq!(made["scopes"], json!(["notes:read"]));
    // The key works, with its scope and no more.
    let (s, _) = api
        .call(Method::GET, "/v1/orgs/acme/notes", Some(&key), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/orgs/acme/notes",
            Some(&key),
            Some(json!({"title": "x"})),
        )
        .await;
    assert_eq!(s, 403);

    // The audit trail shows the key's creation with the person and their address; the chain
    // verifies from the page.
    b.goto(&format!("{base}/console/orgs/acme/audit?table=api_keys"))
        .await
        .unwrap();
    let trail = text_of(&b, "#audit").await;
    assert!(trail.contains("insert"), "{trail}");
    assert!(trail.contains(&owner_id), "{trail}");
    assert!(trail.contains("127.0.0.1"), "{trail}");
    click(&b, "#verify").await;
    let status = text_of(&b, "#chain-status").await;
    assert!(status.contains("The chain verifies"), "{status}");
    shots.take(&b, "audit").await;
    let v = api
        .ok(Method::GET, "/v1/orgs/acme/audit/verify", &owner, None)
        .await;
    assert_eq!(v["ok"], true, "{v}");
    let entries = api
        .ok(
            Method::GET,
            "/v1/orgs/acme/audit?table=api_keys",
            &owner,
            None,
        )
        .await;
    let e = &entries["items"][0];
    assert_eq!(e["actor_user"], owner_id.as_str());
    assert_eq!(e["ip"], "127.0.0.1");
    assert!(
        e["user_agent"].as_str().unwrap_or("").contains("Chrome"),
        "the browser's user agent is recorded: {e}"
    );

    // The table browser: the rows, then a new one through its form.
    b.goto(&format!("{base}/console/orgs/acme/tables/notes"))
        .await
        .unwrap();
    let rows = text_of(&b, "#rows").await;
    assert!(rows.contains("Customer call notes"), "{rows}");
    shots.take(&b, "table-browser").await;
    click(&b, "#new-row").await;
    fill(&b, "#c-title", "Written in the console").await;
    fill(&b, "#c-body", "with a body").await;
    click(&b, "#save").await;
    let record = text_of(&b, "#record").await;
    assert!(record.contains("Written in the console"), "{record}");
    let notes = api
        .ok(
            Method::GET,
            "/v1/orgs/acme/notes?sort=-created_at&limit=1",
            &owner,
            None,
        )
        .await;
    assert_eq!(notes["items"][0]["title"], "Written in the console");
    assert_eq!(notes["items"][0]["created_by"], owner_id.as_str());
    // Edit it.
    fill(&b, "#c-title", "Edited in the console").await;
    click(&b, "#save").await;
    at(&b, "done=saved").await;
    let id = notes["items"][0]["id"].as_str().unwrap();
    let note = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/acme/notes/{id}"),
            &owner,
            None,
        )
        .await;
    assert_eq!(note["title"], "Edited in the console");

    // Members: invite someone; the page shows the link; the API lists the invitation.
    b.goto(&format!("{base}/console/orgs/acme/members"))
        .await
        .unwrap();
    fill(&b, "#invite-email", "new.hire@acme.example").await;
    click(&b, "#invite").await;
    let link = element(&b, "#invitation-link")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        link.starts_with(&format!("{base}/console/invitations/obi_")),
        "{link}"
    );
    shots.take(&b, "members").await;
    let invitations = api
        .ok(Method::GET, "/v1/orgs/acme/invitations", &owner, None)
        .await;
    assert_eq!(invitations["items"][0]["email"], "new.hire@acme.example");

    // Sign out: the session ends.
    click(&b, "#sign-out").await;
    at(&b, "/console/login").await;
    b.goto(&format!("{base}/console/orgs/acme/members"))
        .await
        .unwrap();
    let h = text_of(&b, "h1").await;
    assert_eq!(h, "Sign in");

    // The invited person opens the link, creates their account from the sign-in page, and
    // accepts: they are a member.
    b.goto(&link).await.unwrap();
    click(&b, "#sign-up-link").await;
    fill(&b, "#su-email", "new.hire@acme.example").await;
    fill(&b, "#su-name", "Nia Hire").await;
    fill(&b, "#su-password", "password-1234").await;
    click(&b, "#sign-up").await;
    click(&b, "#accept-invitation").await;
    at(&b, "/console/orgs/acme?done=invitation-accepted").await;
    let members = api
        .ok(Method::GET, "/v1/orgs/acme/members", &owner, None)
        .await;
    let hire = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == "new.hire@acme.example")
        .expect("the invited person is a member");
    assert_eq!(hire["role"], "member");
    let hire_id = hire["user_id"].as_str().unwrap().to_string();
    click(&b, "#sign-out").await;
    at(&b, "/console/login").await;
    fill(&b, "#email", "owner@acme.example").await;
    fill(&b, "#password", "password-1234").await;
    click(&b, "#sign-in").await;
    element(&b, "#signed-in-as").await;

    // Teams: create one, add the new member.
    b.goto(&format!("{base}/console/orgs/acme/teams"))
        .await
        .unwrap();
    fill(&b, "#team-name", "Support").await;
    click(&b, "#create-team").await;
    at(&b, "done=team-created").await;
    element(&b, "#teams select[name=user]")
        .await
        .select_by_value(&hire_id)
        .await
        .unwrap();
    click(&b, "#teams form[action$='/members'] button").await;
    at(&b, "done=team-member-added").await;
    shots.take(&b, "teams").await;
    let teams = api
        .ok(Method::GET, "/v1/orgs/acme/teams", &owner, None)
        .await;
    assert_eq!(teams["items"][0]["name"], "Support");
    assert_eq!(teams["items"][0]["members"], json!([hire_id]));

    // Roles and access: the new member becomes an editor of notes; a custom role is made and
    // granted.
    b.goto(&format!("{base}/console/orgs/acme/access"))
        .await
        .unwrap();
    element(
        &b,
        "select[aria-label='notes role of new.hire@acme.example']",
    )
    .await
    .select_by_value("editor")
    .await
    .unwrap();
    click(&b, &format!("#apps-{hire_id} button")).await;
    at(&b, "done=apps-saved").await;
    fill(&b, "#role-name", "Auditor").await;
    click(&b, "input[value='notes:viewer']").await;
    click(&b, "#create-role").await;
    at(&b, "done=role-created").await;
    element(&b, "#custom-roles select[name=user]")
        .await
        .select_by_value(&hire_id)
        .await
        .unwrap();
    click(&b, "#custom-roles form[action$='/grant'] button").await;
    at(&b, "done=role-granted").await;
    shots.take(&b, "access").await;
    let member = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/acme/members/{hire_id}"),
            &owner,
            None,
        )
        .await;
    assert_eq!(member["apps"]["notes"], "editor", "{member}");
    let roles = api
        .ok(Method::GET, "/v1/orgs/acme/roles", &owner, None)
        .await;
    assert_eq!(roles["items"][0]["name"], "Auditor");
    assert_eq!(roles["items"][0]["permissions"], json!(["notes:viewer"]));
    assert_eq!(roles["items"][0]["members"][0]["user_id"], hire_id.as_str());

    // GDPR requests: an export, and an erasure cancelled in its grace period.
    b.goto(&format!("{base}/console/orgs/acme/privacy"))
        .await
        .unwrap();
    element(&b, "#export-user")
        .await
        .select_by_value(&hire_id)
        .await
        .unwrap();
    click(&b, "#request-export").await;
    at(&b, "done=export-requested").await;
    element(&b, "#erase-user")
        .await
        .select_by_value(&hire_id)
        .await
        .unwrap();
    click(&b, "input[name=confirm]").await;
    click(&b, "#request-erasure").await;
    at(&b, "done=erasure-requested").await;
    shots.take(&b, "gdpr-requests").await;
    click(&b, "#gdpr-requests form[action$='/cancel'] button").await;
    at(&b, "done=erasure-cancelled").await;
    let requests = api
        .ok(Method::GET, "/v1/orgs/acme/gdpr-requests", &owner, None)
        .await;
    let kinds: Vec<(String, String)> = requests["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["subject"], hire_id.as_str());
            (
                r["kind"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("export".into(), "requested".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("erase".into(), "cancelled".into())),
        "{kinds:?}"
    );

    // Consent: a decision recorded for the member.
    b.goto(&format!("{base}/console/orgs/acme/consents"))
        .await
        .unwrap();
    element(&b, "#consent-subject")
        .await
        .select_by_value(&hire_id)
        .await
        .unwrap();
    fill(&b, "#consent-purpose", "marketing_email").await;
    click(&b, "#record-consent").await;
    at(&b, "done=consent-recorded").await;
    let shown = text_of(&b, "#consents").await;
    assert!(shown.contains("marketing_email"), "{shown}");
    let consents = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/acme/consents?subject={hire_id}"),
            &owner,
            None,
        )
        .await;
    assert_eq!(consents["current"][0]["purpose"], "marketing_email");
    assert_eq!(consents["current"][0]["granted"], true);
    assert_eq!(consents["current"][0]["source"], "ui");

    // Retention: a shorter period for sessions; a legal hold placed and released.
    b.goto(&format!("{base}/console/orgs/acme/retention"))
        .await
        .unwrap();
    fill(&b, "input[name='keep.sessions']", "30d").await;
    click(&b, "#save-retention").await;
    at(&b, "done=retention-saved").await;
    fill(&b, "#hold-reason", "Case 42: preserve everything").await;
    click(&b, "#place-hold").await;
    at(&b, "done=hold-placed").await;
    shots.take(&b, "retention").await;
    let policies = api
        .ok(Method::GET, "/v1/orgs/acme/retention", &owner, None)
        .await;
    let sessions = policies["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["data_type"] == "sessions")
        .unwrap();
    assert_eq!(sessions["policy"], "30d", "{sessions}");
    let holds = api
        .ok(Method::GET, "/v1/orgs/acme/legal-holds", &owner, None)
        .await;
    assert_eq!(holds["items"][0]["active"], true);
    click(&b, "#legal-holds form button").await;
    b.accept_alert().await.unwrap();
    at(&b, "done=hold-released").await;
    let holds = api
        .ok(Method::GET, "/v1/orgs/acme/legal-holds", &owner, None)
        .await;
    assert_eq!(holds["items"][0]["active"], false);
    b.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_operator_works_through_the_console_in_chromium() {
    let Some(driver) = driver().await else {
        return;
    };
    let db = TestDb::migrated().await;
    let dir = temp_dir("orgbase-console-operator-");
    let base = server(&db, &dir).await;
    let api = Api::new(base.clone());
    let (op_id, op) = api.user("ops@example.com").await;
    db.admin()
        .await
        .execute(
            "INSERT INTO orgbase.instance_admins (user_id, granted_by) VALUES ($1::text::uuid, 'test')",
            &[&op_id],
        )
        .await
        .unwrap();
    let (_, customer) = api.user("owner@globex.example").await;
    api.ok(
        Method::POST,
        "/v1/orgs",
        &customer,
        Some(json!({"name": "Globex", "slug": "globex"})),
    )
    .await;
    let shots = Shots::new();
    let b = browser(&driver).await;
    b.goto(&format!("{base}/console/operator/orgs"))
        .await
        .unwrap();
    fill(&b, "#email", "ops@example.com").await;
    fill(&b, "#password", "password-1234").await;
    click(&b, "#sign-in").await;
    at(&b, "/console/operator/orgs").await;

    // Create an organization in a region, with compliance flags: the operator is its owner.
    fill(&b, "#op-org-name", "Initech EU").await;
    fill(&b, "#op-org-slug", "initech-eu").await;
    element(&b, "#op-org-region")
        .await
        .select_by_value("eu-central")
        .await
        .unwrap();
    click(&b, "input[name=compliance][value=gdpr]").await;
    click(&b, "input[name=compliance][value=hipaa]").await;
    click(&b, "#op-create-org").await;
    at(&b, "/console/orgs/initech-eu/members?done=org-created").await;
    let org = api.ok(Method::GET, "/v1/orgs/initech-eu", &op, None).await;
    assert_eq!(org["region"], "eu-central");
    assert_eq!(org["compliance"], json!(["gdpr", "hipaa"]));

    // Close another organization: its owner reaches nothing; reopen it.
    b.goto(&format!("{base}/console/operator/orgs"))
        .await
        .unwrap();
    shots.take(&b, "operator-orgs").await;
    click(&b, "button[aria-label='close globex']").await;
    b.accept_alert().await.unwrap();
    at(&b, "done=org-closed").await;
    let (s, _) = api
        .call(Method::GET, "/v1/orgs/globex", Some(&customer), None)
        .await;
    assert_eq!(s, 404);
    click(&b, "button[aria-label='reopen globex']").await;
    at(&b, "done=org-reopened").await;
    let (s, _) = api
        .call(Method::GET, "/v1/orgs/globex", Some(&customer), None)
        .await;
    assert_eq!(s, 200);

    // Back up now: the backup is listed once done.
    b.goto(&format!("{base}/console/operator/backups"))
        .await
        .unwrap();
    assert_eq!(text_of(&b, "#last-verify").await, "never");
    click(&b, "#start-backup").await;
    at(&b, "done=backup-started").await;
    let started = Instant::now();
    loop {
        let v = api.ok(Method::GET, "/v1/operator/backups", &op, None).await;
        if v["running"] == false && !v["items"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.goto(&format!("{base}/console/operator/backups"))
        .await
        .unwrap();
    let listed = text_of(&b, "#backups").await;
    assert!(listed.contains("manual"), "{listed}");
    shots.take(&b, "operator-backups").await;

    // Keys, migrations, health.
    b.goto(&format!("{base}/console/operator/keys"))
        .await
        .unwrap();
    let counts = text_of(&b, "#key-counts").await;
    assert!(counts.contains("Live"), "{counts}");
    b.goto(&format!("{base}/console/operator/migrations"))
        .await
        .unwrap();
    let state = text_of(&b, "#migration-state").await;
    assert!(state.contains("Up to date."), "{state}");
    b.goto(&format!("{base}/console/operator/health"))
        .await
        .unwrap();
    let ready = text_of(&b, "#readiness").await;
    assert!(ready.starts_with("ready"), "{ready}");
    shots.take(&b, "operator-health").await;

    // Accounts: suspend the customer (their session ends at once), then reactivate them.
    b.goto(&format!("{base}/console/operator/accounts"))
        .await
        .unwrap();
    click(&b, "button[aria-label='suspend owner@globex.example']").await;
    b.accept_alert().await.unwrap();
    at(&b, "done=status-changed").await;
    let (s, _) = api.call(Method::GET, "/v1/me", Some(&customer), None).await;
    assert_eq!(s, 401);
    let login = json!({"email": "owner@globex.example", "password": "password-1234"});
    let (s, _) = api
        .call(Method::POST, "/v1/auth/login", None, Some(login.clone()))
        .await;
    assert_eq!(s, 401, "a suspended account does not sign in");
    click(&b, "button[aria-label='reactivate owner@globex.example']").await;
    element(&b, "button[aria-label='suspend owner@globex.example']").await;
    let (s, _) = api
        .call(Method::POST, "/v1/auth/login", None, Some(login))
        .await;
    assert_eq!(s, 200);
    b.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
