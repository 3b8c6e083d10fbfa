//! Instance operators' pages: organizations (create, close, reopen), backups (their last
//! verification and restore drill, a backup started now), the key store, the schema
//! migrations, and health with the latency objectives. Each is a call of the operators' API as
//! the signed-in operator, as everywhere in the console.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::pages::{FormData, Layout, done, html, joined, text, when};
use super::{Answer, Console, Ctx, enc, see_other};

/// The regions an organization may be placed in.
const REGIONS: [&str; 14] = [
    "us-east",
    "eu-central",
    "uk-south",
    "canada-central",
    "australia-east",
    "singapore",
    "japan-east",
    "india-central",
    "brazil-south",
    "south-africa",
    "korea-central",
    "hong-kong",
    "new-zealand",
    "israel",
];

/// The compliance flags an organization may carry.
const COMPLIANCE: [&str; 5] = ["gdpr", "hipaa", "soc2", "iso27001", "pci"];

struct OperatorOrg {
    id: String,
    name: String,
    slug: String,
    region: String,
    compliance: String,
    members: String,
    created_at: String,
    closed_at: String,
}

#[derive(Template)]
#[template(path = "console/operator_orgs.html")]
struct OperatorOrgs {
    layout: Layout,
    orgs: Vec<OperatorOrg>,
    regions: &'static [&'static str],
    compliance: &'static [&'static str],
}

async fn orgs_page(c: &Console, ctx: &Ctx, layout: Layout, status: StatusCode) -> Response {
    let a = match c.get_ok(ctx, "/v1/operator/orgs").await {
        Ok(a) => a,
        Err(page) => return page,
    };
    let orgs = a
        .items()
        .iter()
        .map(|o| OperatorOrg {
            id: text(&o["id"]),
            name: text(&o["name"]),
            slug: text(&o["slug"]),
            region: text(&o["region"]),
            compliance: joined(&o["compliance"]),
            members: text(&o["members"]),
            created_at: when(&o["created_at"]),
            closed_at: when(&o["closed_at"]),
        })
        .collect();
    html(
        status,
        &OperatorOrgs {
            layout,
            orgs,
            regions: &REGIONS,
            compliance: &COMPLIANCE,
        },
    )
}

pub(crate) async fn operator_orgs(
    State(c): State<Console>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> Response {
    let layout = Layout::new(&ctx, "All organizations", None).with(done(&q), "");
    orgs_page(&c, &ctx, layout, StatusCode::OK).await
}

fn refused_here(ctx: &Ctx, a: &Answer) -> Layout {
    Layout::new(ctx, "All organizations", None).with("", a.problem())
}

/// Create an organization with its region and compliance flags. The operator who creates it is
/// its first owner (nobody is made a member without agreeing): invite the customer's people,
/// make one of them owner, and leave.
pub(crate) async fn operator_create_org(
    State(c): State<Console>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let slug = form.get("slug").trim().to_string();
    let req = json!({
        "name": form.get("name"),
        "slug": slug,
        "region": form.get("region"),
        "compliance": form.all("compliance"),
    });
    let a = c.send(&ctx, Method::POST, "/v1/orgs", Some(&req)).await;
    if !a.ok() {
        return orgs_page(&c, &ctx, refused_here(&ctx, &a), a.status).await;
    }
    see_other(&format!(
        "/console/orgs/{}/members?done=org-created",
        enc(&slug)
    ))
}

/// Close (`closed` = yes) or reopen an organization.
pub(crate) async fn operator_org_status(
    State(c): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let closed = match form.get("closed") {
        "yes" => true,
        "no" => false,
        _ => {
            let layout =
                Layout::new(&ctx, "All organizations", None).with("", "closed must be yes or no");
            return orgs_page(&c, &ctx, layout, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    };
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/operator/orgs/{}/status", enc(&id)),
            Some(&json!({ "closed": closed })),
        )
        .await;
    if !a.ok() {
        return orgs_page(&c, &ctx, refused_here(&ctx, &a), a.status).await;
    }
    see_other(if closed {
        "/console/operator/orgs?done=org-closed"
    } else {
        "/console/operator/orgs?done=org-reopened"
    })
}

// Backups ----------------------------------------------------------------------------------

struct BackupRow {
    id: String,
    kind: String,
    tier: String,
    finished_at: String,
    size: String,
    seconds: String,
    key: String,
    verify: String,
    verify_ok: bool,
    restore: String,
    restore_ok: bool,
}

#[derive(Template)]
#[template(path = "console/operator_backups.html")]
struct Backups {
    layout: Layout,
    store: String,
    schedule: bool,
    running: bool,
    last_verify: String,
    last_restore: String,
    backups: Vec<BackupRow>,
}

/// "passed at … (backup): detail" / "FAILED at …: detail" / "never", and whether it passed; the
/// backup's id only where the check is not already on its row (`with_id`).
fn check_text(c: &Value, with_id: bool) -> (String, bool) {
    if c.is_null() {
        return ("never".into(), false);
    }
    let ok = c["ok"].as_bool().unwrap_or(false);
    let what = if ok { "passed" } else { "FAILED" };
    let on = if with_id {
        format!(" ({})", text(&c["backup_id"]))
    } else {
        String::new()
    };
    (
        format!("{what} {}{on}: {}", when(&c["at"]), text(&c["detail"])),
        ok,
    )
}

fn mb(v: &Value) -> String {
    format!("{:.1} MB", v.as_f64().unwrap_or(0.0) / 1e6)
}

async fn backups_page(c: &Console, ctx: &Ctx, layout: Layout, status: StatusCode) -> Response {
    let a = match c.get_ok(ctx, "/v1/operator/backups").await {
        Ok(a) => a,
        Err(page) => return page,
    };
    let v = a.json();
    let backups = v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let (verify, verify_ok) = check_text(&m["last_verify"], false);
            let (restore, restore_ok) = check_text(&m["last_restore"], false);
            BackupRow {
                id: text(&m["id"]),
                kind: text(&m["kind"]),
                tier: text(&m["tier"]),
                finished_at: when(&m["finished_at"]),
                size: mb(&m["stored_bytes"]),
                seconds: format!("{:.1}", m["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0),
                key: text(&m["key"]),
                verify,
                verify_ok,
                restore,
                restore_ok,
            }
        })
        .collect();
    html(
        status,
        &Backups {
            layout,
            store: text(&v["store"]),
            schedule: v["schedule"].as_bool().unwrap_or(false),
            running: v["running"].as_bool().unwrap_or(false),
            last_verify: check_text(&v["last_verify"], true).0,
            last_restore: check_text(&v["last_restore"], true).0,
            backups,
        },
    )
}

pub(crate) async fn operator_backups(
    State(c): State<Console>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> Response {
    let layout = Layout::new(&ctx, "Backups", None).with(done(&q), "");
    backups_page(&c, &ctx, layout, StatusCode::OK).await
}

pub(crate) async fn operator_start_backup(State(c): State<Console>, ctx: Ctx) -> Response {
    let a = c
        .send(&ctx, Method::POST, "/v1/operator/backups", None)
        .await;
    if !a.ok() {
        let layout = Layout::new(&ctx, "Backups", None).with("", a.problem());
        return backups_page(&c, &ctx, layout, a.status).await;
    }
    see_other("/console/operator/backups?done=backup-started")
}

// Keys, migrations, health -------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/operator_keys.html")]
struct Keys {
    layout: Layout,
    scopes: Vec<(String, String, String, String)>,
    rotation_days: String,
    oldest: String,
    due: Vec<(String, String, String)>,
}

pub(crate) async fn operator_keys(State(c): State<Console>, ctx: Ctx) -> Response {
    let a = match c.get_ok(&ctx, "/v1/operator/keys").await {
        Ok(a) => a,
        Err(page) => return page,
    };
    let v = a.json();
    let scopes = v["keys"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(scope, n)| {
                    (
                        scope.clone(),
                        text(&n["live"]),
                        text(&n["destroyed"]),
                        text(&n["rotation_due"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let due = v["due"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| (text(&k["key"]), text(&k["version"]), when(&k["created_at"])))
        .collect();
    html(
        StatusCode::OK,
        &Keys {
            layout: Layout::new(&ctx, "Keys", None),
            scopes,
            rotation_days: text(&v["rotation_days"]),
            oldest: text(&v["oldest_current_days"]),
            due,
        },
    )
}

#[derive(Template)]
#[template(path = "console/operator_migrations.html")]
struct Migrations {
    layout: Layout,
    database: String,
    binary: String,
    pending: i64,
    items: Vec<(String, String, String, String, String)>,
}

pub(crate) async fn operator_migrations(State(c): State<Console>, ctx: Ctx) -> Response {
    let a = match c.get_ok(&ctx, "/v1/operator/migrations").await {
        Ok(a) => a,
        Err(page) => return page,
    };
    let v = a.json();
    let items = v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                text(&m["version"]),
                text(&m["description"]),
                when(&m["applied_at"]),
                text(&m["applied_by"]),
                text(&m["duration_ms"]),
            )
        })
        .collect();
    html(
        StatusCode::OK,
        &Migrations {
            layout: Layout::new(&ctx, "Schema migrations", None),
            database: text(&v["database"]),
            binary: text(&v["binary"]),
            pending: v["pending"].as_i64().unwrap_or(0),
            items,
        },
    )
}

struct LatencyRow {
    what: String,
    requests: String,
    errors: String,
    p50: String,
    p95: String,
    p99: String,
}

#[derive(Template)]
#[template(path = "console/operator_health.html")]
struct Health {
    layout: Layout,
    ready: String,
    ready_ok: bool,
    since: String,
    met: bool,
    checks: Vec<(String, String, String, String, bool)>,
    classes: Vec<LatencyRow>,
    worst: Vec<LatencyRow>,
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.1} ms"))
}

fn latency(l: &Value) -> LatencyRow {
    let what = match (l["method"].as_str(), l["route"].as_str()) {
        (Some(m), Some(r)) => format!("{m} {r}"),
        _ => text(&l["class"]),
    };
    LatencyRow {
        what,
        requests: text(&l["requests"]),
        errors: text(&l["server_errors"]),
        p50: ms(&l["p50_ms"]),
        p95: ms(&l["p95_ms"]),
        p99: ms(&l["p99_ms"]),
    }
}

/// Readiness (`/readyz`) and the latency objectives over a window (`/v1/slo`, `since`
/// default 24h).
pub(crate) async fn operator_health(
    State(c): State<Console>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> Response {
    let mut since = super::pages::query_value(&q, "since");
    if since.is_empty() {
        since = "24h".into();
    }
    let ready = c.get(&ctx, "/readyz").await;
    let ready_text = if ready.ok() {
        format!("ready (orgbase {})", text(&ready.json()["version"]))
    } else {
        format!("NOT ready: {}", ready.problem())
    };
    let slo = c.get(&ctx, &format!("/v1/slo?since={}", enc(&since))).await;
    let mut layout = Layout::new(&ctx, "Health", None);
    let status = if slo.ok() {
        StatusCode::OK
    } else {
        layout.bad = slo.problem();
        slo.status
    };
    let v = slo.json();
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    html(
        status,
        &Health {
            layout,
            ready: ready_text,
            ready_ok: ready.ok(),
            since,
            met: v["met"].as_bool().unwrap_or(false),
            checks: list("checks")
                .iter()
                .map(|c| {
                    (
                        text(&c["class"]),
                        text(&c["percentile"]),
                        format!("{} ms", text(&c["target_ms"])),
                        ms(&c["actual_ms"]),
                        c["met"].as_bool().unwrap_or(false),
                    )
                })
                .collect(),
            classes: list("classes").iter().map(latency).collect(),
            worst: list("worst_routes").iter().map(latency).collect(),
        },
    )
}
