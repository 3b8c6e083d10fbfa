//! The floor server of the tenant-notes workload (../../../shared/bench/README.md).
//!
//!     orgbase-bench-floor --listen 127.0.0.1:18090 --fixtures DIR   (libpq environment: PGHOST …)
//!
//! Connects as the libpq environment says (bench/run: the role bench_app on the database
//! bench_ref of bench/reference.sql), gives every bench_users row a token, writes DIR/users.tsv
//! and DIR/notes.tsv for wrk, and serves:
//!   GET  /orgs/{org}/notes?limit=20   R1, the newest notes of the caller's organization
//!   GET  /orgs/{org}/notes/{id}       R2, one note
//!   POST /orgs/{org}/notes            W1, {"title", "body"}
//! Each request: the token looked up in a static map, the path's org compared with the token's,
//! then BEGIN, set_config('app.org_id', …, true), the statement, COMMIT — statements prepared
//! once per connection, row-level security of bench_ref's policies.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const COLUMNS: &str =
    "org_id, id, title, body, tags, created_at, updated_at, deleted_at, created_by, updated_by";

#[derive(Clone, Copy)]
struct Caller {
    org: Uuid,
    user: Uuid,
}

struct App {
    pool: Pool,
    tokens: HashMap<String, Caller>,
}

#[derive(Serialize)]
struct Note {
    org_id: Uuid,
    id: Uuid,
    title: String,
    body: String,
    tags: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    created_by: Uuid,
    updated_by: Uuid,
}

impl From<&tokio_postgres::Row> for Note {
    fn from(r: &tokio_postgres::Row) -> Self {
        Note {
            org_id: r.get(0),
            id: r.get(1),
            title: r.get(2),
            body: r.get(3),
            tags: r.get(4),
            created_at: r.get(5),
            updated_at: r.get(6),
            deleted_at: r.get(7),
            created_by: r.get(8),
            updated_by: r.get(9),
        }
    }
}

enum Error {
    Unauthorized,
    NotFound,
    BadRequest,
    Db(String),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Unauthorized => StatusCode::UNAUTHORIZED.into_response(),
            Error::NotFound => StatusCode::NOT_FOUND.into_response(),
            Error::BadRequest => StatusCode::BAD_REQUEST.into_response(),
            Error::Db(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        }
    }
}

impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error::Db(e.to_string())
    }
}

fn caller(app: &App, headers: &HeaderMap, org: Uuid) -> Result<Caller, Error> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Error::Unauthorized)?;
    let c = *app.tokens.get(token).ok_or(Error::Unauthorized)?;
    if c.org != org {
        return Err(Error::NotFound);
    }
    Ok(c)
}

/// BEGIN, and the organization's context for the policies of this transaction.
async fn begin(
    conn: &mut deadpool_postgres::Client,
    org: Uuid,
) -> Result<deadpool_postgres::Transaction<'_>, Error> {
    let tx = conn.transaction().await?;
    let ctx = tx
        .prepare_cached("SELECT set_config('app.org_id', $1, true)")
        .await?;
    tx.execute(&ctx, &[&org.to_string()]).await?;
    Ok(tx)
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    State(app): State<Arc<App>>,
    Path(org): Path<Uuid>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<Note>>, Error> {
    let c = caller(&app, &headers, org)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let mut conn = app.pool.get().await?;
    let tx = begin(&mut conn, c.org).await?;
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM notes WHERE org_id = $1 AND deleted_at IS NULL \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .await?;
    let rows = tx.query(&stmt, &[&c.org, &limit]).await?;
    tx.commit().await?;
    Ok(Json(rows.iter().map(Note::from).collect()))
}

async fn one(
    State(app): State<Arc<App>>,
    Path((org, id)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
) -> Result<Json<Note>, Error> {
    let c = caller(&app, &headers, org)?;
    let mut conn = app.pool.get().await?;
    let tx = begin(&mut conn, c.org).await?;
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM notes WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL"
        ))
        .await?;
    let row = tx.query_opt(&stmt, &[&c.org, &id]).await?;
    tx.commit().await?;
    row.map(|r| Json(Note::from(&r))).ok_or(Error::NotFound)
}

#[derive(Deserialize)]
struct NewNote {
    title: String,
    #[serde(default)]
    body: String,
}

async fn create(
    State(app): State<Arc<App>>,
    Path(org): Path<Uuid>,
    headers: HeaderMap,
    Json(n): Json<NewNote>,
) -> Result<(StatusCode, Json<Note>), Error> {
    let c = caller(&app, &headers, org)?;
    if n.title.is_empty() || n.title.len() > 500 || n.body.len() > 100_000 {
        return Err(Error::BadRequest);
    }
    let mut conn = app.pool.get().await?;
    let tx = begin(&mut conn, c.org).await?;
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO notes (org_id, title, body, created_by, updated_by) \
             VALUES ($1, $2, $3, $4, $4) RETURNING {COLUMNS}"
        ))
        .await?;
    let row = tx
        .query_one(&stmt, &[&c.org, &n.title, &n.body, &c.user])
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(Note::from(&row))))
}

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:18090".into());
    let fixtures = arg("--fixtures").ok_or("--fixtures DIR is required")?;
    let pool_size: usize = arg("--pool").map(|p| p.parse()).transpose()?.unwrap_or(20);
    // Everything else from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE).
    let mut pg = tokio_postgres::Config::new();
    let env = |k: &str| std::env::var(k).ok();
    pg.host(env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into()));
    pg.port(
        env("PGPORT")
            .map(|p| p.parse())
            .transpose()?
            .unwrap_or(5432),
    );
    pg.user(env("PGUSER").unwrap_or_else(|| "bench_app".into()));
    if let Some(p) = env("PGPASSWORD") {
        pg.password(p);
    }
    pg.dbname(env("PGDATABASE").unwrap_or_else(|| "bench_ref".into()));
    let mgr = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr).max_size(pool_size).build()?;

    // The static token map, and the fixtures wrk reads.
    let client = pool.get().await?;
    let users = client
        .query(
            "SELECT o.id, u.id, u.org_n, u.n FROM bench_users u JOIN bench_orgs o ON o.n = u.org_n \
             ORDER BY u.org_n, u.n",
            &[],
        )
        .await?;
    let mut tokens = HashMap::new();
    let mut users_tsv = std::fs::File::create(format!("{fixtures}/users.tsv"))?;
    for r in &users {
        let (org, user): (Uuid, Uuid) = (r.get(0), r.get(1));
        let token = format!("floor-{}-{}", r.get::<_, i32>(2), r.get::<_, i32>(3));
        writeln!(users_tsv, "{token}\t{org}\t{user}")?;
        tokens.insert(token, Caller { org, user });
    }
    let mut notes_tsv = std::fs::File::create(format!("{fixtures}/notes.tsv"))?;
    for r in client
        .query("SELECT org_id, id FROM bench_notes ORDER BY org_n, n", &[])
        .await?
    {
        writeln!(
            notes_tsv,
            "{}\t{}",
            r.get::<_, Uuid>(0),
            r.get::<_, Uuid>(1)
        )?;
    }
    drop(client);

    let app = Arc::new(App { pool, tokens });
    let router = Router::new()
        .route("/orgs/{org}/notes", get(list).post(create))
        .route("/orgs/{org}/notes/{id}", get(one))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("floor server on http://{listen}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
