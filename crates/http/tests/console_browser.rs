//! The console in a real browser: headless Chromium from Debian's `chromium` package, driven
//! through Debian's `chromedriver` over WebDriver (fantoccini). It signs in, does each page's
//! primary action with the page's own forms, and checks the effect through the API.
//!
//! CI installs both packages; elsewhere, without them, the test says so and passes. Set
//! `CONSOLE_SCREENSHOTS_DIR` to keep the screenshots (docs/console.md shows them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use orgbase_http::{HttpSettings, Services, app};
use orgbase_testkit::{Api, TestDb, spawn_app};
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

#[tokio::test]
async fn an_admin_works_through_the_console_in_chromium() {
    let Some(driver) = driver().await else {
        return;
    };
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
    assert!(link.contains("/v1/invitations/"), "{link}");
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
    b.close().await.unwrap();
}
