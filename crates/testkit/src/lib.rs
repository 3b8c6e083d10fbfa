//! Test harness: one real PostgreSQL cluster per test process (initdb into a temp dir, Unix
//! socket only), a migrated template database, and a fresh database per test created from it
//! with `CREATE DATABASE … TEMPLATE` (about 0.1 s). No mocks.
//!
//! The cluster stops and its directory is removed by the cluster watchdog once the test process
//! exits, however it exits. Logs are silent unless `TEST_LOG` is set (e.g. `TEST_LOG=debug`).
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // a harness that cannot start should stop loudly

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use orgbase_core::Config;
use orgbase_db::{BinSearch, Cluster, Migrator, Pool, RunningCluster, Target};

pub mod s3;

const TEMPLATE: &str = "orgbase_template";

struct Shared {
    target: Target,
    bin_dir: PathBuf,
    _cluster: RunningCluster,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn init_logging() {
    if let Ok(level) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(level)
            .with_test_writer()
            .try_init();
    }
}

/// The migrations of releases before the baseline (`legacy-migrations/`), to build a database
/// the way an earlier orgbase did. Their down scripts are not kept.
pub fn legacy_migrator() -> Migrator {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("legacy-migrations");
    let mut migrations = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(stem) = file.strip_suffix(".up.sql") else {
            continue;
        };
        let (num, name) = stem.split_once('_').unwrap();
        migrations.push(orgbase_db::migrate::Migration {
            version: num.parse().unwrap(),
            name: name.to_string(),
            up: std::fs::read_to_string(&path).unwrap(),
            down: String::new(),
        });
    }
    assert_eq!(migrations.len(), 17, "{}", dir.display());
    Migrator::new(migrations, "an earlier orgbase")
}

/// A test configuration whose data directory is a fresh temp dir.
pub fn config() -> Config {
    Config {
        data_dir: temp_dir("orgbase-test-"),
        ..Config::default()
    }
}

/// A temp directory PostgreSQL's OS user can enter (tempfile makes them 0700). Not removed on
/// drop: whoever owns it removes it.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating a temp dir")
        .keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        init_logging();
        let config = config();
        let mut cluster =
            Cluster::open(&config.data_dir, &config.embedded, &BinSearch::system(None))
                .expect("opening the test cluster");
        cluster.set_ephemeral();
        let bin_dir = cluster.bin_dir().to_path_buf();
        let running = cluster.start().expect("starting the test cluster");
        let target = Target::embedded(&running, &config).expect("test cluster target");
        // Async setup on a runtime of its own: callers may be inside another runtime.
        let target = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let admin = target.admin_to("postgres").await.expect("admin connection");
                admin
                    .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
                    .await
                    .expect("create template");
                let mut template = target.with_database(TEMPLATE);
                template
                    .migrate_up(&Migrator::embedded("orgbase-testkit"))
                    .await
                    .expect("migrating the template");
                template
                    .ensure_runtime_login()
                    .await
                    .expect("runtime login");
                template
            })
        })
        .join()
        .expect("template setup thread");
        Shared {
            target,
            bin_dir,
            _cluster: running,
        }
    })
}

/// The PostgreSQL binaries the test cluster uses (for pg_dump, psql).
pub fn bin_dir() -> PathBuf {
    shared().bin_dir.clone()
}

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDb {
    pub target: Target,
    pub name: String,
}

impl TestDb {
    /// A fresh database, already migrated (copied from the template).
    pub async fn migrated() -> Self {
        Self::create(Some(TEMPLATE)).await
    }

    /// A fresh, empty database (copied from `template0`), for migration tests.
    pub async fn empty() -> Self {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> Self {
        let shared = shared();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = shared.target.admin_to("postgres").await.expect("admin");
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name} TEMPLATE template0"),
        };
        admin
            .batch_execute(&sql)
            .await
            .expect("create test database");
        if let Some(t) = template {
            // CREATE DATABASE … TEMPLATE copies the schema but not the database's own ACL, which
            // migration 0001 set on the template (no TEMP/CREATE for PUBLIC): carry it over.
            let copied = admin
                .execute(
                    "UPDATE pg_database SET datacl = (SELECT datacl FROM pg_database WHERE datname = $1)
                      WHERE datname = $2",
                    &[&t, &name],
                )
                .await
                .expect("copy database ACL");
            assert_eq!(copied, 1);
        }
        Self {
            target: shared.target.with_database(&name),
            name,
        }
    }

    pub async fn admin(&self) -> tokio_postgres::Client {
        self.target.admin().await.expect("admin connection")
    }

    pub fn pool(&self) -> Pool {
        self.pool_with(4, orgbase_db::pool::Limits::default())
    }

    /// A runtime pool of `max_size` connections behind `limits`.
    pub fn pool_with(&self, max_size: usize, limits: orgbase_db::pool::Limits) -> Pool {
        self.target.runtime_pool(max_size, limits).expect("pool")
    }

    /// The backup role's connection to this database. The role belongs to the whole test
    /// cluster, so its password is set once per test process, under a lock, in a secrets
    /// directory the process's tests share: concurrent tests do not change it under each other.
    pub async fn backup_login(&self) -> tokio_postgres::Config {
        static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        static SECRETS: OnceLock<PathBuf> = OnceLock::new();
        let dir = SECRETS.get_or_init(|| temp_dir("orgbase-test-secrets-"));
        let _held = LOCK.lock().await;
        self.target
            .backup_login(dir)
            .await
            .expect("the backup role's login")
    }

    /// Connection parameters as libpq environment variables, for pg_dump/psql.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        orgbase_db::database::libpq_env(self.target.admin_config())
    }
}

/// A request still waiting for a pool connection; it lets the connection go once it has one.
pub type Queued = tokio::task::JoinHandle<Result<(), orgbase_db::pool::GetError>>;

/// Fills a one-connection `pool`: holds its connection and queues one request behind it. Drop
/// the connection to let the queued request through.
pub async fn occupy(pool: &Pool) -> (orgbase_db::pool::Object, Queued) {
    let held = pool.get().await.expect("the pool's connection");
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    let t = std::time::Instant::now();
    while pool.status().waiting < 1 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "the request never queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (held, queued)
}

/// Serve `app` on 127.0.0.1:0 in the background; returns the base URL.
pub async fn spawn_app(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    format!("http://{addr}")
}

/// A small HTTP client for API tests: every error answer must be problem+json.
#[derive(Debug)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                resp.headers()["content-type"],
                "application/problem+json",
                "{path}"
            );
        }
        let json = resp
            .headers()
            .get("content-type")
            .is_some_and(|ct| ct.to_str().unwrap_or("").contains("json"));
        let text = resp.text().await.unwrap();
        assert!(
            !json || text.is_empty() || text.ends_with('\n'),
            "{path}: a JSON body without its trailing newline"
        );
        let v = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, v)
    }

    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (s, v) = self.call(method.clone(), path, Some(token), body).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
        status: u16,
        kind: &str,
    ) -> serde_json::Value {
        let (s, v) = self.call(method.clone(), path, token, body).await;
        assert_eq!(s.as_u16(), status, "{method} {path}: {v}");
        assert_eq!(
            v["type"],
            format!("urn:orgbase:problem:{kind}"),
            "{method} {path}: {v}"
        );
        v
    }

    /// How a person joins an organization: `admin` (a session of one of its owners or admins)
    /// invites `email` as `role`, and `member` (that person's session) accepts.
    pub async fn join(&self, org: &str, admin: &str, email: &str, member: &str, role: &str) {
        let inv = self
            .ok(
                reqwest::Method::POST,
                &format!("/v1/orgs/{org}/invitations"),
                admin,
                Some(serde_json::json!({"email": email, "role": role})),
            )
            .await;
        let token = inv["token"].as_str().unwrap();
        self.ok(
            reqwest::Method::POST,
            &format!("/v1/invitations/{token}/accept"),
            member,
            None,
        )
        .await;
    }

    /// Sign up and log in: (user id, session token).
    pub async fn user(&self, email: &str) -> (String, String) {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/auth/signup",
                None,
                Some(
                    serde_json::json!({"email": email, "password": "password-1234", "name": email}),
                ),
            )
            .await;
        assert_eq!(s, reqwest::StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/auth/login",
                None,
                Some(serde_json::json!({"email": email, "password": "password-1234"})),
            )
            .await;
        assert_eq!(s, reqwest::StatusCode::OK, "{v}");
        (id, v["token"].as_str().unwrap().to_string())
    }
}
