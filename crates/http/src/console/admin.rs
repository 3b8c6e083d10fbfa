//! Organization pages beyond members and keys: teams, app roles and custom roles as a
//! permission matrix, GDPR requests, consent records, retention policies and legal holds. As
//! everywhere in the console, each page and action is a call of the JSON API as the signed-in
//! person; what the API refuses, the page shows with the API's reason and status.

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::pages::{FormData, Layout, done, html, query_value, refused, text, when};
use super::{Answer, Console, Ctx, enc, see_other};

/// What a page says above its content, and the status it answers with.
struct Said {
    ok: &'static str,
    bad: String,
    status: StatusCode,
}

impl Said {
    fn done(q: &Option<String>) -> Self {
        Said {
            ok: done(q),
            bad: String::new(),
            status: StatusCode::OK,
        }
    }

    /// The API refused: its reason, its status.
    fn refused(a: &Answer) -> Self {
        Said {
            ok: "",
            bad: a.problem(),
            status: a.status,
        }
    }

    /// The form was refused before any call: nothing was sent to the API.
    fn invalid(why: impl Into<String>) -> Self {
        Said {
            ok: "",
            bad: why.into(),
            status: StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn layout(&self, ctx: &Ctx, title: &str, org: &str) -> Layout {
        Layout::new(ctx, title, Some(org)).with(self.ok, self.bad.clone())
    }
}

/// A member as the members list answers: id, email (or name), org role, app roles.
#[derive(Clone)]
pub(super) struct Person {
    pub id: String,
    pub label: String,
    pub role: String,
    pub apps: BTreeMap<String, String>,
}

/// The organization's members, as the signed-in person may list them.
async fn people(c: &Console, ctx: &Ctx, org: &str) -> Result<Vec<Person>, Response> {
    let a = c
        .get_ok(ctx, &format!("/v1/orgs/{}/members", enc(org)))
        .await?;
    Ok(a.items()
        .iter()
        .map(|m| {
            let email = text(&m["email"]);
            Person {
                id: text(&m["user_id"]),
                label: if email.is_empty() {
                    text(&m["name"])
                } else {
                    email
                },
                role: text(&m["role"]),
                apps: m["apps"]
                    .as_object()
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// The label of a user id among `people`, or the id itself (someone no longer a member).
fn who(people: &[Person], id: &str) -> String {
    people
        .iter()
        .find(|p| p.id == id)
        .map_or_else(|| id.to_string(), |p| p.label.clone())
}

/// The apps of the registered tenant tables, sorted.
pub(super) fn apps(c: &Console) -> Vec<String> {
    let mut apps: Vec<String> = c.catalog().tables.values().map(|t| t.app.clone()).collect();
    apps.sort();
    apps.dedup();
    apps
}

/// The organization pages whose actions come back to them.
#[derive(Clone, Copy)]
enum Page {
    Teams,
    Access,
    Privacy,
    Consents,
    Retention,
}

impl Page {
    fn path(self) -> &'static str {
        match self {
            Page::Teams => "teams",
            Page::Access => "access",
            Page::Privacy => "privacy",
            Page::Consents => "consents",
            Page::Retention => "retention",
        }
    }

    async fn render(self, c: &Console, ctx: &Ctx, org: &str, said: Said) -> Response {
        match self {
            Page::Teams => teams_page(c, ctx, org, said).await,
            Page::Access => access_page(c, ctx, org, said).await,
            Page::Privacy => privacy_page(c, ctx, org, said).await,
            Page::Consents => consents_page(c, ctx, org, &None, said).await,
            Page::Retention => retention_page(c, ctx, org, said).await,
        }
    }
}

/// After an action: back to `page` with a `done` code, or the page again with the API's reason
/// and status.
async fn after(c: &Console, ctx: &Ctx, org: &str, page: Page, code: &str, a: Answer) -> Response {
    if a.ok() {
        see_other(&format!(
            "/console/orgs/{}/{}?done={code}",
            enc(org),
            page.path()
        ))
    } else {
        page.render(c, ctx, org, Said::refused(&a)).await
    }
}

// Teams ------------------------------------------------------------------------------------

struct TeamRow {
    id: String,
    name: String,
    description: String,
    members: Vec<(String, String)>,
    others: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "console/teams.html")]
struct Teams {
    layout: Layout,
    org: String,
    teams: Vec<TeamRow>,
}

async fn teams_page(c: &Console, ctx: &Ctx, org: &str, said: Said) -> Response {
    let t = match c.get_ok(ctx, &format!("/v1/orgs/{}/teams", enc(org))).await {
        Ok(a) => a,
        Err(page) => return page,
    };
    let people = match people(c, ctx, org).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let teams = t
        .items()
        .iter()
        .map(|team| {
            let ids: Vec<String> = team["members"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            TeamRow {
                id: text(&team["id"]),
                name: text(&team["name"]),
                description: text(&team["description"]),
                members: ids
                    .iter()
                    .map(|id| (id.clone(), who(&people, id)))
                    .collect(),
                others: people
                    .iter()
                    .filter(|p| !ids.contains(&p.id))
                    .map(|p| (p.id.clone(), p.label.clone()))
                    .collect(),
            }
        })
        .collect();
    html(
        said.status,
        &Teams {
            layout: said.layout(ctx, "Teams", org),
            org: org.to_string(),
            teams,
        },
    )
}

pub(crate) async fn teams(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    teams_page(&c, &ctx, &org, Said::done(&q)).await
}

pub(crate) async fn create_team(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let req = json!({ "name": form.get("name"), "description": form.get("description") });
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/teams", enc(&org)),
            Some(&req),
        )
        .await;
    after(&c, &ctx, &org, Page::Teams, "team-created", a).await
}

pub(crate) async fn delete_team(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, team)): Path<(String, String)>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::DELETE,
            &format!("/v1/orgs/{}/teams/{}", enc(&org), enc(&team)),
            None,
        )
        .await;
    after(&c, &ctx, &org, Page::Teams, "team-deleted", a).await
}

pub(crate) async fn add_team_member(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, team)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let a = c
        .send(
            &ctx,
            Method::PUT,
            &format!(
                "/v1/orgs/{}/teams/{}/members/{}",
                enc(&org),
                enc(&team),
                enc(form.get("user"))
            ),
            None,
        )
        .await;
    after(&c, &ctx, &org, Page::Teams, "team-member-added", a).await
}

pub(crate) async fn remove_team_member(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, team, user)): Path<(String, String, String)>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::DELETE,
            &format!(
                "/v1/orgs/{}/teams/{}/members/{}",
                enc(&org),
                enc(&team),
                enc(&user)
            ),
            None,
        )
        .await;
    after(&c, &ctx, &org, Page::Teams, "team-member-removed", a).await
}

// Access: app roles and custom roles -----------------------------------------------------------

/// The levels of an app role, weakest first.
const APP_LEVELS: [&str; 3] = ["viewer", "editor", "admin"];

struct MatrixRow {
    id: String,
    label: String,
    role: String,
    /// An owner or admin: admin of every app by their organization role.
    implicit: bool,
    /// Per app: (app, the levels to choose from, the current one selected; "" is none).
    cells: Vec<(String, Vec<(&'static str, bool)>)>,
}

struct RoleRow {
    id: String,
    name: String,
    /// Per app and level, in the order of the header: whether the role grants it.
    grants: Vec<bool>,
    members: Vec<(String, String)>,
    others: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "console/access.html")]
struct Access {
    layout: Layout,
    org: String,
    apps: Vec<String>,
    /// (app, level) for the custom-role columns.
    columns: Vec<(String, &'static str)>,
    matrix: Vec<MatrixRow>,
    roles: Vec<RoleRow>,
}

async fn access_page(c: &Console, ctx: &Ctx, org: &str, said: Said) -> Response {
    let people = match people(c, ctx, org).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let r = match c.get_ok(ctx, &format!("/v1/orgs/{}/roles", enc(org))).await {
        Ok(a) => a,
        Err(page) => return page,
    };
    let apps = apps(c);
    let columns: Vec<(String, &'static str)> = apps
        .iter()
        .flat_map(|a| APP_LEVELS.iter().map(move |l| (a.clone(), *l)))
        .collect();
    let matrix = people
        .iter()
        .map(|p| MatrixRow {
            id: p.id.clone(),
            label: p.label.clone(),
            role: p.role.clone(),
            implicit: matches!(p.role.as_str(), "owner" | "admin"),
            cells: apps
                .iter()
                .map(|app| {
                    let current = p.apps.get(app).map(String::as_str).unwrap_or("");
                    let choices = [""]
                        .into_iter()
                        .chain(APP_LEVELS)
                        .map(|l| (l, l == current))
                        .collect();
                    (app.clone(), choices)
                })
                .collect(),
        })
        .collect();
    let roles = r
        .items()
        .iter()
        .map(|role| {
            let perms: Vec<String> = role["permissions"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            let granted: Vec<String> = role["members"]
                .as_array()
                .map(|a| a.iter().map(|m| text(&m["user_id"])).collect())
                .unwrap_or_default();
            RoleRow {
                id: text(&role["id"]),
                name: text(&role["name"]),
                grants: columns
                    .iter()
                    .map(|(a, l)| perms.contains(&format!("{a}:{l}")))
                    .collect(),
                members: granted
                    .iter()
                    .map(|id| (id.clone(), who(&people, id)))
                    .collect(),
                others: people
                    .iter()
                    .filter(|p| !granted.contains(&p.id))
                    .map(|p| (p.id.clone(), p.label.clone()))
                    .collect(),
            }
        })
        .collect();
    html(
        said.status,
        &Access {
            layout: said.layout(ctx, "Roles and access", org),
            org: org.to_string(),
            apps,
            columns,
            matrix,
            roles,
        },
    )
}

pub(crate) async fn access(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    access_page(&c, &ctx, &org, Said::done(&q)).await
}

/// One member's row of the matrix: each app's level (`app.<name>` = viewer, editor, admin, or
/// empty for none). The whole row is checked before anything is sent; then only the apps that
/// changed are set or removed, one API call each.
pub(crate) async fn save_apps(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, user)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let known = apps(&c);
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (k, v) in &form.0 {
        let Some(app) = k.strip_prefix("app.") else {
            continue;
        };
        if !known.iter().any(|a| a == app) {
            return access_page(&c, &ctx, &org, Said::invalid(format!("{app}: no such app"))).await;
        }
        if !v.is_empty() && !APP_LEVELS.contains(&v.as_str()) {
            return access_page(
                &c,
                &ctx,
                &org,
                Said::invalid(format!("{app}: the role must be viewer, editor or admin")),
            )
            .await;
        }
        wanted.push((app.to_string(), v.clone()));
    }
    let people = match people(&c, &ctx, &org).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let Some(person) = people.iter().find(|p| p.id == user) else {
        return refused(StatusCode::NOT_FOUND, "There is no such member.");
    };
    for (app, level) in wanted {
        let current = person.apps.get(&app).map(String::as_str).unwrap_or("");
        if current == level {
            continue;
        }
        let path = format!(
            "/v1/orgs/{}/members/{}/apps/{}",
            enc(&org),
            enc(&user),
            enc(&app)
        );
        let a = if level.is_empty() {
            c.send(&ctx, Method::DELETE, &path, None).await
        } else {
            c.send(&ctx, Method::PUT, &path, Some(&json!({ "role": level })))
                .await
        };
        if !a.ok() {
            return access_page(&c, &ctx, &org, Said::refused(&a)).await;
        }
    }
    see_other(&format!(
        "/console/orgs/{}/access?done=apps-saved",
        enc(&org)
    ))
}

pub(crate) async fn create_role(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let req = json!({ "name": form.get("name"), "permissions": form.all("permissions") });
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/roles", enc(&org)),
            Some(&req),
        )
        .await;
    after(&c, &ctx, &org, Page::Access, "role-created", a).await
}

pub(crate) async fn grant_role(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, role)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let a = c
        .send(
            &ctx,
            Method::PUT,
            &format!(
                "/v1/orgs/{}/members/{}/roles/{}",
                enc(&org),
                enc(form.get("user")),
                enc(&role)
            ),
            None,
        )
        .await;
    after(&c, &ctx, &org, Page::Access, "role-granted", a).await
}

pub(crate) async fn revoke_role(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, role, user)): Path<(String, String, String)>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::DELETE,
            &format!(
                "/v1/orgs/{}/members/{}/roles/{}",
                enc(&org),
                enc(&user),
                enc(&role)
            ),
            None,
        )
        .await;
    after(&c, &ctx, &org, Page::Access, "role-revoked", a).await
}

// GDPR requests ----------------------------------------------------------------------------

struct RequestRow {
    id: String,
    kind: String,
    subject: String,
    status: String,
    requested_by: String,
    requested_at: String,
    due_at: String,
    completed_at: String,
    /// What came of it: the archive's hash, the certificate's signature, the error.
    outcome: String,
    download: bool,
    cancel: bool,
}

#[derive(Template)]
#[template(path = "console/privacy.html")]
struct Privacy {
    layout: Layout,
    org: String,
    requests: Vec<RequestRow>,
    people: Vec<(String, String)>,
}

async fn privacy_page(c: &Console, ctx: &Ctx, org: &str, said: Said) -> Response {
    let r = match c
        .get_ok(ctx, &format!("/v1/orgs/{}/gdpr-requests", enc(org)))
        .await
    {
        Ok(a) => a,
        Err(page) => return page,
    };
    let people = match people(c, ctx, org).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let requests = r
        .items()
        .iter()
        .map(|g| {
            let kind = text(&g["kind"]);
            let status = text(&g["status"]);
            let res = &g["result"];
            let outcome = if !g["error"].is_null() {
                format!("error: {}", text(&g["error"]))
            } else if let Some(sha) = res["sha256"].as_str() {
                format!("archive sha256 {sha}")
            } else if let Some(sig) = res["certificate"]["signature"].as_str() {
                format!(
                    "certificate of deletion, signature {}…",
                    sig.chars().take(16).collect::<String>()
                )
            } else {
                String::new()
            };
            RequestRow {
                id: text(&g["id"]),
                subject: who(&people, &text(&g["subject"])),
                requested_by: who(&people, &text(&g["requested_by"])),
                requested_at: when(&g["requested_at"]),
                due_at: when(&g["due_at"]),
                completed_at: when(&g["completed_at"]),
                download: kind == "export" && status == "done",
                cancel: kind == "erase" && matches!(status.as_str(), "requested" | "pending"),
                outcome,
                kind,
                status,
            }
        })
        .collect();
    html(
        said.status,
        &Privacy {
            layout: said.layout(ctx, "GDPR requests", org),
            org: org.to_string(),
            requests,
            people: people.into_iter().map(|p| (p.id, p.label)).collect(),
        },
    )
}

pub(crate) async fn privacy(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    privacy_page(&c, &ctx, &org, Said::done(&q)).await
}

/// Ask for an export of a member's data in this organization.
pub(crate) async fn gdpr_export(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    body: Bytes,
) -> Response {
    gdpr_request(c, ctx, org, "export", body).await
}

/// Ask for the erasure of a member's data in this organization (with the confirmation box
/// ticked).
pub(crate) async fn gdpr_erase(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    body: Bytes,
) -> Response {
    gdpr_request(c, ctx, org, "erase", body).await
}

async fn gdpr_request(c: Console, ctx: Ctx, org: String, kind: &str, body: Bytes) -> Response {
    let form = FormData::parse(&body);
    let code = match kind {
        "export" => "export-requested",
        _ if form.get("confirm") == "yes" => "erasure-requested",
        _ => {
            return privacy_page(
                &c,
                &ctx,
                &org,
                Said::invalid(
                    "Tick the box to confirm the erasure: it ends the member's access at once.",
                ),
            )
            .await;
        }
    };
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!(
                "/v1/orgs/{}/members/{}/{kind}",
                enc(&org),
                enc(form.get("user"))
            ),
            None,
        )
        .await;
    after(&c, &ctx, &org, Page::Privacy, code, a).await
}

pub(crate) async fn cancel_erasure(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, id)): Path<(String, String)>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/gdpr-requests/{}/cancel", enc(&org), enc(&id)),
            None,
        )
        .await;
    after(&c, &ctx, &org, Page::Privacy, "erasure-cancelled", a).await
}

/// The archive of a finished export, as the API serves it to this admin.
pub(crate) async fn download_export(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, id)): Path<(String, String)>,
) -> Response {
    let a = c
        .get(
            &ctx,
            &format!("/v1/orgs/{}/gdpr-requests/{}/download", enc(&org), enc(&id)),
        )
        .await;
    if !a.ok() {
        return refused(a.status, &a.problem());
    }
    let mut resp = (StatusCode::OK, a.body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Some(d) = a.headers.get(header::CONTENT_DISPOSITION) {
        h.insert(header::CONTENT_DISPOSITION, d.clone());
    }
    resp
}

// Consent ----------------------------------------------------------------------------------

struct ConsentRow {
    subject: String,
    purpose: String,
    status: String,
    at: String,
    source: String,
    recorded_by: String,
}

#[derive(Template)]
#[template(path = "console/consents.html")]
struct Consents {
    layout: Layout,
    org: String,
    purpose: String,
    subject: String,
    consents: Vec<ConsentRow>,
    next: String,
    people: Vec<(String, String)>,
}

async fn consents_page(
    c: &Console,
    ctx: &Ctx,
    org: &str,
    q: &Option<String>,
    said: Said,
) -> Response {
    let purpose = query_value(q, "purpose");
    let subject = query_value(q, "subject");
    let cursor = query_value(q, "cursor");
    let mut path = format!(
        "/v1/orgs/{}/consents?limit=100&subject={}",
        enc(org),
        if subject.is_empty() {
            "all".to_string()
        } else {
            enc(&subject)
        }
    );
    for (k, v) in [("purpose", &purpose), ("cursor", &cursor)] {
        if !v.trim().is_empty() {
            path.push_str(&format!("&{k}={}", enc(v.trim())));
        }
    }
    let a = c.get(ctx, &path).await;
    let mut said = said;
    if !a.ok() {
        if a.status != StatusCode::BAD_REQUEST {
            return refused(a.status, &a.problem());
        }
        said = Said::refused(&a);
    }
    let people = match people(c, ctx, org).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let body = a.json();
    let consents = body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| ConsentRow {
            subject: who(&people, &text(&r["subject"])),
            purpose: text(&r["purpose"]),
            status: text(&r["status"]),
            at: when(&r["at"]),
            source: text(&r["source"]),
            recorded_by: who(&people, &text(&r["recorded_by"])),
        })
        .collect();
    html(
        said.status,
        &Consents {
            layout: said.layout(ctx, "Consent records", org),
            org: org.to_string(),
            purpose,
            subject,
            consents,
            next: text(&body["next_cursor"]),
            people: people.into_iter().map(|p| (p.id, p.label)).collect(),
        },
    )
}

pub(crate) async fn consents(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    consents_page(&c, &ctx, &org, &q, Said::done(&q)).await
}

pub(crate) async fn record_consent(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let granted = match form.get("decision") {
        "granted" => true,
        "withdrawn" => false,
        _ => {
            return consents_page(
                &c,
                &ctx,
                &org,
                &None,
                Said::invalid("Choose whether consent was given or withdrawn."),
            )
            .await;
        }
    };
    let mut req =
        json!({ "purpose": form.get("purpose").trim(), "granted": granted, "source": "ui" });
    let subject = form.get("subject");
    if !subject.is_empty() {
        req["subject"] = subject.into();
    }
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/consents", enc(&org)),
            Some(&req),
        )
        .await;
    after(&c, &ctx, &org, Page::Consents, "consent-recorded", a).await
}

// Retention and legal holds ----------------------------------------------------------------

struct PolicyRow {
    data_type: String,
    policy: String,
    default: String,
    keep: String,
}

struct HoldRow {
    id: String,
    subject: String,
    reason: String,
    placed_by: String,
    placed_at: String,
    released_at: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "console/retention.html")]
struct Retention {
    layout: Layout,
    org: String,
    policies: Vec<PolicyRow>,
    holds: Vec<HoldRow>,
    people: Vec<(String, String)>,
}

async fn retention_page(c: &Console, ctx: &Ctx, org: &str, said: Said) -> Response {
    let p = match c
        .get_ok(ctx, &format!("/v1/orgs/{}/retention", enc(org)))
        .await
    {
        Ok(a) => a,
        Err(page) => return page,
    };
    let h = match c
        .get_ok(ctx, &format!("/v1/orgs/{}/legal-holds", enc(org)))
        .await
    {
        Ok(a) => a,
        Err(page) => return page,
    };
    let people = match people(c, ctx, org).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let policies = p
        .items()
        .iter()
        .map(|r| PolicyRow {
            data_type: text(&r["data_type"]),
            policy: text(&r["policy"]),
            default: text(&r["default"]),
            keep: text(&r["keep"]),
        })
        .collect();
    let holds = h
        .items()
        .iter()
        .map(|r| HoldRow {
            id: text(&r["id"]),
            subject: if r["subject"].is_null() {
                "the whole organization".into()
            } else {
                who(&people, &text(&r["subject"]))
            },
            reason: text(&r["reason"]),
            placed_by: who(&people, &text(&r["placed_by"])),
            placed_at: when(&r["placed_at"]),
            released_at: when(&r["released_at"]),
            active: r["active"].as_bool().unwrap_or(false),
        })
        .collect();
    html(
        said.status,
        &Retention {
            layout: said.layout(ctx, "Retention and legal holds", org),
            org: org.to_string(),
            policies,
            holds,
            people: people.into_iter().map(|p| (p.id, p.label)).collect(),
        },
    )
}

pub(crate) async fn retention(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    retention_page(&c, &ctx, &org, Said::done(&q)).await
}

/// The policies form: `keep.<data type>` = a period, or empty for the default. The API takes
/// the complete set or nothing.
pub(crate) async fn save_retention(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let policies: serde_json::Map<String, Value> = form
        .0
        .iter()
        .filter_map(|(k, v)| {
            let t = k.strip_prefix("keep.")?;
            let v = v.trim();
            (!v.is_empty()).then(|| (t.to_string(), Value::from(v)))
        })
        .collect();
    let a = c
        .send(
            &ctx,
            Method::PUT,
            &format!("/v1/orgs/{}/retention", enc(&org)),
            Some(&json!({ "policies": policies })),
        )
        .await;
    after(&c, &ctx, &org, Page::Retention, "retention-saved", a).await
}

pub(crate) async fn place_hold(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let mut req = json!({ "reason": form.get("reason") });
    let subject = form.get("subject");
    if !subject.is_empty() {
        req["subject"] = subject.into();
    }
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/legal-holds", enc(&org)),
            Some(&req),
        )
        .await;
    after(&c, &ctx, &org, Page::Retention, "hold-placed", a).await
}

pub(crate) async fn release_hold(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, id)): Path<(String, String)>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/legal-holds/{}/release", enc(&org), enc(&id)),
            None,
        )
        .await;
    after(&c, &ctx, &org, Page::Retention, "hold-released", a).await
}
