//! The console's pages and actions. Each is a call of the JSON API as the signed-in person
//! (`Console::call`), rendered; an action that the API refuses shows the API's reason, with the
//! API's status.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Answer, Console, Ctx, assets, enc, see_other, set_cookie};

/// What every page's frame shows: who is signed in, their organizations (the switcher), the
/// current one and what of it they may administer, and the flash messages.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    pub title: String,
    pub email: String,
    pub operator: bool,
    pub orgs: Vec<OrgLink>,
    pub current: Option<OrgLink>,
    pub ok: String,
    pub bad: String,
    pub htmx: &'static str,
    pub htmx_sri: String,
    pub js_sri: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct OrgLink {
    pub slug: String,
    pub name: String,
    pub role: String,
    pub current: bool,
    pub admin: bool,
}

/// A timestamp of the API (RFC 3339) as people read it, to the second in UTC; anything else as
/// [`text`] shows it.
pub(super) fn when(v: &Value) -> String {
    match v.as_str().map(chrono::DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        _ => text(v),
    }
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Layout {
    pub(super) fn new(ctx: &Ctx, title: impl Into<String>, org: Option<&str>) -> Self {
        let me = ctx.me();
        let orgs: Vec<OrgLink> = me["organizations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|o| {
                        let role = text(&o["role"]);
                        let id = text(&o["id"]);
                        let slug = text(&o["slug"]);
                        OrgLink {
                            current: org.is_some_and(|r| r == id || r == slug),
                            admin: matches!(role.as_str(), "owner" | "admin"),
                            slug,
                            name: text(&o["name"]),
                            role,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Layout {
            title: title.into(),
            email: text(&me["email"]),
            operator: me["operator"].as_bool().unwrap_or(false),
            current: orgs.iter().find(|o| o.current).cloned(),
            orgs,
            htmx: assets::HTMX,
            htmx_sri: assets::integrity(assets::HTMX),
            js_sri: assets::integrity("console.js"),
            ..Default::default()
        }
    }

    pub(super) fn with(mut self, ok: impl Into<String>, bad: impl Into<String>) -> Self {
        self.ok = ok.into();
        self.bad = bad.into();
        self
    }
}

/// Render `page` as HTML with `status`.
pub(super) fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => {
            let mut resp = (status, body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "console: a page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct Message {
    layout: Layout,
    heading: String,
    signin: bool,
    next: String,
    /// `?next=…` (and the invitation) for the sign-up link of the sign-in form.
    signup_query: String,
}

/// A page that says why a request was refused (or failed), with `status`.
pub(crate) fn refused(status: StatusCode, why: &str) -> Response {
    let layout = Layout::new(&Ctx::default(), "Refused", None).with("", why);
    let heading = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        s if s.is_server_error() => "Something went wrong",
        _ => "Refused",
    };
    html(
        status,
        &Message {
            layout,
            heading: heading.into(),
            signin: false,
            next: String::new(),
            signup_query: String::new(),
        },
    )
}

/// 403 with the sign-in form, which brings the person back to this page.
pub(crate) fn sign_in_first(parts: &Parts) -> Response {
    // The URI as the client sent it: inside the console's router the `/console` prefix is gone.
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(&parts.uri, |o| &o.0);
    let next = if parts.method == Method::GET {
        uri.path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    sign_in_page(StatusCode::FORBIDDEN, "Sign in to continue.", next)
}

pub(super) fn sign_in_page(status: StatusCode, why: &str, next: String) -> Response {
    html(
        status,
        &Message {
            layout: Layout::new(&Ctx::default(), "Sign in", None).with("", why),
            heading: "Sign in".into(),
            signin: true,
            signup_query: if next.is_empty() {
                String::new()
            } else {
                format!("?next={}", enc(&next))
            },
            next,
        },
    )
}

pub(crate) async fn not_found() -> Response {
    refused(StatusCode::NOT_FOUND, "There is no such page.")
}

/// A form body's fields, in order (a field may repeat: checkboxes).
pub(super) struct FormData(pub(super) Vec<(String, String)>);

impl FormData {
    pub(super) fn parse(body: &Bytes) -> Self {
        FormData(serde_urlencoded::from_bytes(body).unwrap_or_default())
    }

    pub(super) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    pub(super) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Where to go after signing in: a console page of this server, nothing else.
fn safe_next(next: &str) -> &str {
    if next.starts_with("/console/")
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && !next.starts_with("/console/login")
        && !next.starts_with("/console/signup")
    {
        next
    } else {
        "/console"
    }
}

pub(crate) async fn login_form(RawQuery(q): RawQuery) -> Response {
    let next = query_value(&q, "next");
    sign_in_page(StatusCode::OK, "", safe_next(&next).to_string())
}

/// Sign in through `POST /v1/auth/login`: the session it makes is the cookie's.
pub(crate) async fn login(State(c): State<Console>, ctx: Ctx, body: Bytes) -> Response {
    let form = FormData::parse(&body);
    let totp = form.get("totp").trim();
    let mut req = json!({ "email": form.get("email"), "password": form.get("password") });
    if !totp.is_empty() {
        req["totp"] = totp.into();
    }
    let a = c
        .send(&ctx, Method::POST, "/v1/auth/login", Some(&req))
        .await;
    let next = safe_next(form.get("next")).to_string();
    if !a.ok() {
        let why = if a.json()["type"]
            .as_str()
            .is_some_and(|t| t.ends_with(":mfa-required"))
        {
            "Enter the current code of your authenticator app.".to_string()
        } else {
            a.problem()
        };
        return sign_in_page(a.status, &why, next);
    }
    signed_in(&a, &next, ctx.tls)
}

/// To `next` with the session of a successful `POST /v1/auth/login` as the cookie.
fn signed_in(login: &Answer, next: &str, tls: bool) -> Response {
    let token = login.json()["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut resp = see_other(next);
    if let Ok(v) = HeaderValue::from_str(&set_cookie(Some(&token), tls)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Template)]
#[template(path = "console/signup.html")]
struct SignUp {
    layout: Layout,
    open: bool,
    why: String,
    next: String,
    next_query: String,
    invitation: String,
}

/// The invitation token in a `next` that leads to an invitation's page.
fn invitation_in(next: &str) -> String {
    next.strip_prefix("/console/invitations/")
        .filter(|t| t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .unwrap_or("")
        .to_string()
}

fn sign_up_page(c: &Console, status: StatusCode, why: &str, next: &str) -> Response {
    use orgbase_core::config::SignupMode;
    let invitation = invitation_in(next);
    let (open, closed_why) = match c.signup {
        SignupMode::Open => (true, ""),
        SignupMode::InviteOnly if !invitation.is_empty() => (true, ""),
        SignupMode::InviteOnly => (
            false,
            "Accounts on this server are created by invitation only: open the link of your invitation.",
        ),
        SignupMode::Closed => (
            false,
            "Accounts on this server are created by its operators; ask one of them.",
        ),
    };
    html(
        status,
        &SignUp {
            layout: Layout::new(&Ctx::default(), "Create an account", None).with("", why),
            open,
            why: closed_why.into(),
            next: next.to_string(),
            next_query: enc(next),
            invitation,
        },
    )
}

pub(crate) async fn signup_form(State(c): State<Console>, RawQuery(q): RawQuery) -> Response {
    let next = query_value(&q, "next");
    sign_up_page(&c, StatusCode::OK, "", safe_next(&next))
}

/// Create the account (`POST /v1/auth/signup`, with the invitation when the person came from
/// one), then sign in with it.
pub(crate) async fn signup(State(c): State<Console>, ctx: Ctx, body: Bytes) -> Response {
    let form = FormData::parse(&body);
    let next = safe_next(form.get("next")).to_string();
    let mut req = json!({
        "email": form.get("email"),
        "password": form.get("password"),
        "name": form.get("name").trim(),
    });
    let invitation = form.get("invitation");
    if !invitation.is_empty() {
        req["invitation"] = invitation.into();
    }
    let a = c
        .send(&ctx, Method::POST, "/v1/auth/signup", Some(&req))
        .await;
    if !a.ok() {
        return sign_up_page(&c, a.status, &a.problem(), &next);
    }
    let creds = json!({ "email": form.get("email"), "password": form.get("password") });
    let login = c
        .send(&ctx, Method::POST, "/v1/auth/login", Some(&creds))
        .await;
    if !login.ok() {
        return sign_in_page(login.status, &login.problem(), next);
    }
    signed_in(&login, &next, ctx.tls)
}

#[derive(Template)]
#[template(path = "console/invitation.html")]
struct Invitation {
    layout: Layout,
    token: String,
}

pub(crate) async fn invitation(ctx: Ctx, Path(token): Path<String>) -> Response {
    if invitation_in(&format!("/console/invitations/{token}")).is_empty() {
        return refused(StatusCode::NOT_FOUND, "This is not an invitation link.");
    }
    html(
        StatusCode::OK,
        &Invitation {
            layout: Layout::new(&ctx, "Join an organization", None),
            token,
        },
    )
}

/// Accept with the signed-in account (`POST /v1/invitations/{token}/accept`), then to the
/// organization joined.
pub(crate) async fn accept_invitation(
    State(c): State<Console>,
    ctx: Ctx,
    Path(token): Path<String>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/invitations/{}/accept", enc(&token)),
            None,
        )
        .await;
    if !a.ok() {
        return refused(a.status, &a.problem());
    }
    let org = a.json();
    let to = text(&org["slug"]);
    see_other(&format!(
        "/console/orgs/{}?done=invitation-accepted",
        enc(&to)
    ))
}

/// Sign out: the session ends in the database (`POST /v1/auth/logout`), and the cookie goes.
pub(crate) async fn logout(State(c): State<Console>, ctx: Ctx) -> Response {
    let _ = c.send(&ctx, Method::POST, "/v1/auth/logout", None).await;
    let mut resp = see_other("/console/login");
    if let Ok(v) = HeaderValue::from_str(&set_cookie(None, ctx.tls)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `?done=…` after a redirect: a fixed message per code (never text from the URL).
pub(super) fn done(q: &Option<String>) -> &'static str {
    let code = query_value(q, "done");
    match code.as_str() {
        "org-created" => "Organization created.",
        "role-changed" => "Role changed.",
        "member-removed" => "Member removed.",
        "invitation-revoked" => "Invitation revoked.",
        "key-revoked" => "API key revoked.",
        "created" => "Row created.",
        "saved" => "Saved.",
        "restored" => "Row restored.",
        "status-changed" => "Account state changed.",
        "team-created" => "Team created.",
        "team-deleted" => "Team deleted.",
        "team-member-added" => "Added to the team.",
        "team-member-removed" => "Removed from the team.",
        "apps-saved" => "App roles saved.",
        "role-created" => "Role created.",
        "role-granted" => "Role granted.",
        "role-revoked" => "Role taken away.",
        "export-requested" => "Export requested: the server prepares it within a minute or so.",
        "erasure-requested" => {
            "Erasure requested: the member's access ended; the erasure is carried out after the grace period."
        }
        "erasure-cancelled" => {
            "Erasure cancelled: the membership is back, the rows come back within a minute or so."
        }
        "consent-recorded" => "Consent decision recorded.",
        "retention-saved" => "Retention policies saved.",
        "hold-placed" => "Legal hold placed.",
        "hold-released" => "Legal hold released.",
        "invitation-accepted" => "Invitation accepted: welcome.",
        "org-closed" => "Organization closed: nobody reaches it until it is reopened.",
        "org-reopened" => "Organization reopened.",
        "backup-started" => "Backup started: it is listed here when it is done.",
        _ => "",
    }
}

pub(super) fn query_value(q: &Option<String>, name: &str) -> String {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q.as_deref().unwrap_or(""))
        .ok()
        .and_then(|p| p.into_iter().find(|(k, _)| k == name).map(|(_, v)| v))
        .unwrap_or_default()
}

#[derive(Template)]
#[template(path = "console/home.html")]
struct Home {
    layout: Layout,
}

pub(crate) async fn home(ctx: Ctx, RawQuery(q): RawQuery) -> Response {
    let layout = Layout::new(&ctx, "Organizations", None).with(done(&q), "");
    html(StatusCode::OK, &Home { layout })
}

pub(crate) async fn create_org(State(c): State<Console>, ctx: Ctx, body: Bytes) -> Response {
    let form = FormData::parse(&body);
    let slug = form.get("slug").trim().to_string();
    let req = json!({ "name": form.get("name"), "slug": slug });
    let a = c.send(&ctx, Method::POST, "/v1/orgs", Some(&req)).await;
    if !a.ok() {
        let layout = Layout::new(&ctx, "Organizations", None).with("", a.problem());
        return html(a.status, &Home { layout });
    }
    see_other(&format!("/console/orgs/{}?done=org-created", enc(&slug)))
}

#[derive(Template)]
#[template(path = "console/org.html")]
struct OrgPage {
    layout: Layout,
    id: String,
    slug: String,
    name: String,
    region: String,
    compliance: String,
    role: String,
}

pub(crate) async fn org_home(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let a = match c.get_ok(&ctx, &format!("/v1/orgs/{}", enc(&org))).await {
        Ok(a) => a,
        Err(page) => return page,
    };
    let o = a.json();
    let layout = Layout::new(&ctx, text(&o["name"]), Some(&org)).with(done(&q), "");
    let role = layout
        .current
        .as_ref()
        .map(|c| c.role.clone())
        .unwrap_or_default();
    html(
        StatusCode::OK,
        &OrgPage {
            layout,
            id: text(&o["id"]),
            slug: text(&o["slug"]),
            name: text(&o["name"]),
            region: text(&o["region"]),
            compliance: o["compliance"]
                .as_array()
                .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            role,
        },
    )
}

// Members and invitations ------------------------------------------------------------------

const ORG_ROLES: [&str; 4] = ["owner", "admin", "manager", "member"];

struct MemberRow {
    id: String,
    email: String,
    name: String,
    apps: String,
    options: Vec<(&'static str, bool)>,
}

struct InvitationRow {
    id: String,
    email: String,
    role: String,
    expires_at: String,
}

#[derive(Template)]
#[template(path = "console/members.html")]
struct Members {
    layout: Layout,
    org: String,
    members: Vec<MemberRow>,
    invitations: Vec<InvitationRow>,
    invited: String,
}

async fn members_page(
    c: &Console,
    ctx: &Ctx,
    org: &str,
    layout: Layout,
    status: StatusCode,
    invited: String,
) -> Response {
    let m = match c
        .get_ok(ctx, &format!("/v1/orgs/{}/members", enc(org)))
        .await
    {
        Ok(a) => a,
        Err(page) => return page,
    };
    let i = c
        .get(ctx, &format!("/v1/orgs/{}/invitations", enc(org)))
        .await;
    let members = m
        .items()
        .iter()
        .map(|v| {
            let role = text(&v["role"]);
            MemberRow {
                id: text(&v["user_id"]),
                email: text(&v["email"]),
                name: text(&v["name"]),
                apps: v["apps"]
                    .as_object()
                    .map(|a| {
                        a.iter()
                            .map(|(k, r)| format!("{k}: {}", text(r)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                options: ORG_ROLES.iter().map(|r| (*r, *r == role)).collect(),
            }
        })
        .collect();
    let invitations = i
        .items()
        .iter()
        .filter(|v| v["accepted_at"].is_null() && v["revoked_at"].is_null())
        .map(|v| InvitationRow {
            id: text(&v["id"]),
            email: text(&v["email"]),
            role: text(&v["role"]),
            expires_at: text(&v["expires_at"]),
        })
        .collect();
    html(
        status,
        &Members {
            layout,
            org: org.to_string(),
            members,
            invitations,
            invited,
        },
    )
}

pub(crate) async fn members(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let layout = Layout::new(&ctx, "Members", Some(&org)).with(done(&q), "");
    members_page(&c, &ctx, &org, layout, StatusCode::OK, String::new()).await
}

/// After an action on the members page: back to it with `done`, or the page again with the
/// API's reason and status.
async fn members_after(c: &Console, ctx: &Ctx, org: &str, a: Answer, done: &str) -> Response {
    if a.ok() {
        return see_other(&format!("/console/orgs/{}/members?done={done}", enc(org)));
    }
    let layout = Layout::new(ctx, "Members", Some(org)).with("", a.problem());
    members_page(c, ctx, org, layout, a.status, String::new()).await
}

pub(crate) async fn member_role(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, user)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let a = c
        .send(
            &ctx,
            Method::PATCH,
            &format!("/v1/orgs/{}/members/{}", enc(&org), enc(&user)),
            Some(&json!({ "role": form.get("role") })),
        )
        .await;
    members_after(&c, &ctx, &org, a, "role-changed").await
}

pub(crate) async fn member_remove(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, user)): Path<(String, String)>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::DELETE,
            &format!("/v1/orgs/{}/members/{}", enc(&org), enc(&user)),
            None,
        )
        .await;
    members_after(&c, &ctx, &org, a, "member-removed").await
}

pub(crate) async fn invite(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/invitations", enc(&org)),
            Some(&json!({ "email": form.get("email"), "role": form.get("role") })),
        )
        .await;
    if !a.ok() {
        return members_after(&c, &ctx, &org, a, "").await;
    }
    let token = text(&a.json()["token"]);
    let layout = Layout::new(&ctx, "Members", Some(&org)).with("Invitation created.", "");
    let origin = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("{}://{h}", if ctx.tls { "https" } else { "http" }))
        .unwrap_or_default();
    let link = format!("{origin}/console/invitations/{token}");
    members_page(&c, &ctx, &org, layout, StatusCode::OK, link).await
}

pub(crate) async fn revoke_invitation(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, id)): Path<(String, String)>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::DELETE,
            &format!("/v1/orgs/{}/invitations/{}", enc(&org), enc(&id)),
            None,
        )
        .await;
    members_after(&c, &ctx, &org, a, "invitation-revoked").await
}

// API keys ---------------------------------------------------------------------------------

struct KeyRow {
    id: String,
    name: String,
    prefix: String,
    scopes: String,
    ip_allow: String,
    expires_at: String,
    last_used_at: String,
    created_at: String,
    revoked_at: String,
}

#[derive(Template)]
#[template(path = "console/api_keys.html")]
struct ApiKeys {
    layout: Layout,
    org: String,
    keys: Vec<KeyRow>,
    created: String,
    scope_choices: Vec<String>,
}

pub(super) fn joined(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

async fn api_keys_page(
    c: &Console,
    ctx: &Ctx,
    org: &str,
    layout: Layout,
    status: StatusCode,
    created: String,
) -> Response {
    let a = match c
        .get_ok(ctx, &format!("/v1/orgs/{}/api-keys", enc(org)))
        .await
    {
        Ok(a) => a,
        Err(page) => return page,
    };
    let keys = a
        .items()
        .iter()
        .map(|k| KeyRow {
            id: text(&k["id"]),
            name: text(&k["name"]),
            prefix: text(&k["prefix"]),
            scopes: joined(&k["scopes"]),
            ip_allow: joined(&k["ip_allow"]),
            expires_at: text(&k["expires_at"]),
            last_used_at: text(&k["last_used_at"]),
            created_at: text(&k["created_at"]),
            revoked_at: text(&k["revoked_at"]),
        })
        .collect();
    let mut scope_choices = vec!["admin".to_string(), "analytics".to_string()];
    for app in ["*".to_string()].into_iter().chain(super::admin::apps(c)) {
        for level in ["read", "write", "admin"] {
            scope_choices.push(format!("{app}:{level}"));
        }
    }
    html(
        status,
        &ApiKeys {
            layout,
            org: org.to_string(),
            keys,
            created,
            scope_choices,
        },
    )
}

pub(crate) async fn api_keys(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let layout = Layout::new(&ctx, "API keys", Some(&org)).with(done(&q), "");
    api_keys_page(&c, &ctx, &org, layout, StatusCode::OK, String::new()).await
}

/// Create a key through `POST /v1/orgs/{org}/api-keys`; the page shows it once.
pub(crate) async fn create_api_key(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let mut req = json!({
        "name": form.get("name"),
        "scopes": form.all("scopes"),
        "ip_allow": form
            .get("ip_allow")
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>(),
    });
    let expires = form.get("expires_at").trim();
    if !expires.is_empty() {
        req["expires_at"] = expires.into();
    }
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/api-keys", enc(&org)),
            Some(&req),
        )
        .await;
    if !a.ok() {
        let layout = Layout::new(&ctx, "API keys", Some(&org)).with("", a.problem());
        return api_keys_page(&c, &ctx, &org, layout, a.status, String::new()).await;
    }
    let key = text(&a.json()["key"]);
    let layout = Layout::new(&ctx, "API keys", Some(&org)).with("API key created.", "");
    api_keys_page(&c, &ctx, &org, layout, StatusCode::OK, key).await
}

pub(crate) async fn revoke_api_key(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, id)): Path<(String, String)>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::DELETE,
            &format!("/v1/orgs/{}/api-keys/{}", enc(&org), enc(&id)),
            None,
        )
        .await;
    if !a.ok() {
        let layout = Layout::new(&ctx, "API keys", Some(&org)).with("", a.problem());
        return api_keys_page(&c, &ctx, &org, layout, a.status, String::new()).await;
    }
    see_other(&format!(
        "/console/orgs/{}/api-keys?done=key-revoked",
        enc(&org)
    ))
}

// The audit trail --------------------------------------------------------------------------

/// The audit filters the console passes to the API, by name.
const AUDIT_FILTERS: [&str; 6] = ["actor", "table", "record", "action", "from", "to"];

#[derive(Default)]
struct AuditFilters {
    actor: String,
    table: String,
    record: String,
    action: String,
    from: String,
    to: String,
}

impl AuditFilters {
    fn parse(q: &Option<String>) -> Self {
        let v = |n| query_value(q, n);
        AuditFilters {
            actor: v("actor"),
            table: v("table"),
            record: v("record"),
            action: v("action"),
            from: v("from"),
            to: v("to"),
        }
    }

    fn values(&self) -> [&str; 6] {
        [
            &self.actor,
            &self.table,
            &self.record,
            &self.action,
            &self.from,
            &self.to,
        ]
    }

    /// `&actor=…&table=…` of the filters that are set.
    fn query(&self) -> String {
        AUDIT_FILTERS
            .iter()
            .zip(self.values())
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| format!("&{k}={}", enc(v.trim())))
            .collect()
    }
}

struct AuditRow {
    seq: String,
    at: String,
    actor: String,
    action: String,
    table: String,
    record: String,
    ip: String,
    user_agent: String,
}

fn actor_of(e: &Value) -> String {
    match (e["actor_user"].as_str(), e["actor_key"].as_str()) {
        (Some(u), Some(k)) => format!("{u} (key {k})"),
        (Some(u), None) => u.to_string(),
        (None, Some(k)) => format!("key {k}"),
        (None, None) => text(&e["actor_kind"]),
    }
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct Audit {
    layout: Layout,
    org: String,
    f: AuditFilters,
    filter_query: String,
    entries: Vec<AuditRow>,
    next: String,
    verified: String,
}

async fn audit_page(
    c: &Console,
    ctx: &Ctx,
    org: &str,
    q: &Option<String>,
    verified: String,
) -> Response {
    let f = AuditFilters::parse(q);
    let cursor = query_value(q, "cursor");
    let mut path = format!("/v1/orgs/{}/audit?limit=50{}", enc(org), f.query());
    if !cursor.is_empty() {
        path.push_str(&format!("&cursor={}", enc(&cursor)));
    }
    let a = c.get(ctx, &path).await;
    let mut layout = Layout::new(ctx, "Audit trail", Some(org));
    let status = if a.ok() {
        StatusCode::OK
    } else if a.status == StatusCode::BAD_REQUEST || a.status == StatusCode::UNPROCESSABLE_ENTITY {
        // A filter the API did not take: the page, with its reason.
        layout.bad = a.problem();
        a.status
    } else {
        return refused(a.status, &a.problem());
    };
    let body = a.json();
    let entries = body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| AuditRow {
            seq: text(&e["seq"]),
            at: text(&e["at"]),
            actor: actor_of(e),
            action: text(&e["action"]),
            table: text(&e["table_name"]),
            record: text(&e["record_id"]),
            ip: text(&e["ip"]),
            user_agent: text(&e["user_agent"]),
        })
        .collect();
    html(
        status,
        &Audit {
            layout,
            org: org.to_string(),
            filter_query: f.query(),
            f,
            entries,
            next: text(&body["next_cursor"]),
            verified,
        },
    )
}

pub(crate) async fn audit(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    audit_page(&c, &ctx, &org, &q, String::new()).await
}

/// Verify the organization's chain now (`GET /v1/orgs/{org}/audit/verify`) and say the result.
pub(crate) async fn audit_verify(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
) -> Response {
    let a = match c
        .get_ok(&ctx, &format!("/v1/orgs/{}/audit/verify", enc(&org)))
        .await
    {
        Ok(a) => a,
        Err(page) => return page,
    };
    let v = a.json();
    let verified = if v["ok"].as_bool() == Some(true) {
        format!(
            "The chain verifies: {} sealed entries and {} signed checkpoints checked; {} entries \
             not sealed yet (the server seals new entries within about a second).",
            text(&v["entries"]),
            text(&v["checkpoints_checked"]),
            text(&v["unsealed"])
        )
    } else {
        format!("The chain does NOT verify: {}", v)
    };
    audit_page(&c, &ctx, &org, &None, verified).await
}

/// At most this many entries in one export (pages of 200 from the API).
const EXPORT_LIMIT: usize = 20_000;

/// The filtered entries as a CSV (the default) or JSON (`format=json`) download, newest first, fetched page by page from the
/// API as the signed-in admin (so the export is itself what the API allows them).
pub(crate) async fn audit_export(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let mut format = query_value(&q, "format");
    if format.is_empty() {
        format = "csv".into();
    }
    if !matches!(format.as_str(), "csv" | "json") {
        return refused(StatusCode::BAD_REQUEST, "format must be csv or json");
    }
    let f = AuditFilters::parse(&q);
    let mut entries: Vec<Value> = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut path = format!("/v1/orgs/{}/audit?limit=200{}", enc(&org), f.query());
        if !cursor.is_empty() {
            path.push_str(&format!("&cursor={}", enc(&cursor)));
        }
        let a = c.get(&ctx, &path).await;
        if !a.ok() {
            return refused(a.status, &a.problem());
        }
        let body = a.json();
        entries.extend(body["items"].as_array().cloned().unwrap_or_default());
        cursor = text(&body["next_cursor"]);
        if cursor.is_empty() || entries.len() >= EXPORT_LIMIT {
            break;
        }
    }
    entries.truncate(EXPORT_LIMIT);
    let (content_type, body) = if format == "json" {
        (
            "application/json",
            serde_json::to_string_pretty(&entries).unwrap_or_default(),
        )
    } else {
        ("text/csv; charset=utf-8", audit_csv(&entries))
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"audit-{}.{format}\"",
        org.replace(|ch: char| !ch.is_ascii_alphanumeric() && ch != '-', "_")
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

const CSV_COLUMNS: [&str; 14] = [
    "id",
    "seq",
    "at",
    "actor_kind",
    "actor_user",
    "actor_key",
    "action",
    "table_name",
    "record_id",
    "ip",
    "user_agent",
    "request_id",
    "old",
    "new",
];

fn audit_csv(entries: &[Value]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(CSV_COLUMNS);
    for e in entries {
        let _ = w.write_record(CSV_COLUMNS.iter().map(|c| text(&e[*c])));
    }
    w.into_inner()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// The table browser ------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/tables.html")]
struct Tables {
    layout: Layout,
    org: String,
    tables: Vec<(String, String, String)>,
}

pub(crate) async fn tables(
    State(c): State<Console>,
    ctx: Ctx,
    Path(org): Path<String>,
) -> Response {
    let tables = c
        .catalog()
        .tables
        .values()
        .map(|t| {
            (
                t.name.clone(),
                t.app.clone(),
                t.columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
        .collect();
    let layout = Layout::new(&ctx, "Tables", Some(&org));
    html(
        StatusCode::OK,
        &Tables {
            layout,
            org,
            tables,
        },
    )
}

const FILTER_OPS: [(&str, &str); 5] = [
    ("eq", "="),
    ("lt", "<"),
    ("lte", "≤"),
    ("gt", ">"),
    ("gte", "≥"),
];

#[derive(Template)]
#[template(path = "console/rows.html")]
struct Rows {
    layout: Layout,
    org: String,
    table: String,
    columns: Vec<String>,
    rows: Vec<(String, Vec<String>)>,
    next: String,
    filterable: Vec<String>,
    ops: Vec<(&'static str, &'static str)>,
    sorts: Vec<(String, String)>,
    f_col: String,
    f_op: String,
    f_val: String,
    sort: String,
    deleted: String,
}

/// Longest value shown in a cell of the row list (the row's page shows it whole).
const CELL_CHARS: usize = 120;

fn cell(v: &Value) -> String {
    let t = text(v);
    if t.chars().count() > CELL_CHARS {
        let mut s: String = t.chars().take(CELL_CHARS).collect();
        s.push('…');
        s
    } else {
        t
    }
}

/// One page of a table's rows (`GET /v1/orgs/{org}/{table}`, keyset pages), with the sort and
/// filters the API offers: on indexed columns that are not encrypted.
pub(crate) async fn table_rows(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let Some(t) = c.catalog().get(&name) else {
        return not_found().await;
    };
    let f_col = query_value(&q, "f_col");
    let f_op = query_value(&q, "f_op");
    let f_val = query_value(&q, "f_val");
    let sort = query_value(&q, "sort");
    let cursor = query_value(&q, "cursor");
    // The API's own query: sort, cursor, one filter `col=v` or `col.op=v`.
    let mut api_q: Vec<(String, String)> = Vec::new();
    if !sort.is_empty() {
        api_q.push(("sort".into(), sort.clone()));
    }
    if !cursor.is_empty() {
        api_q.push(("cursor".into(), cursor));
    }
    if !f_col.is_empty() && !f_val.is_empty() {
        let key = match f_op.as_str() {
            "" | "eq" => f_col.clone(),
            op => format!("{f_col}.{op}"),
        };
        api_q.push((key, f_val.clone()));
    }
    let api_qs = serde_urlencoded::to_string(&api_q).unwrap_or_default();
    let a = c
        .get(
            &ctx,
            &format!("/v1/orgs/{}/{}?{api_qs}", enc(&org), enc(&name)),
        )
        .await;
    let mut layout = Layout::new(&ctx, t.name.clone(), Some(&org)).with(done(&q), "");
    let status = if a.ok() {
        StatusCode::OK
    } else if matches!(a.status.as_u16(), 400 | 422) {
        layout.bad = a.problem();
        a.status
    } else {
        return refused(a.status, &a.problem());
    };
    let body = a.json();
    let columns: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
    let rows = body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                text(&r["id"]),
                columns.iter().map(|c| cell(&r[c.as_str()])).collect(),
            )
        })
        .collect();
    let next = match body["next_cursor"].as_str() {
        Some(cur) => {
            let mut keep = vec![("cursor".to_string(), cur.to_string())];
            for k in ["sort", "f_col", "f_op", "f_val"] {
                let v = query_value(&q, k);
                if !v.is_empty() {
                    keep.push((k.into(), v));
                }
            }
            serde_urlencoded::to_string(keep).unwrap_or_default()
        }
        None => String::new(),
    };
    let usable: Vec<&orgbase_db::catalog::Column> = t
        .columns
        .iter()
        .filter(|c| c.indexed && !orgbase_db::fields::is_sealed(c))
        .collect();
    let mut sorts = vec![(String::new(), "newest first".to_string())];
    for col in usable.iter().filter(|c| c.not_null) {
        sorts.push((col.name.clone(), format!("{} ↑", col.name)));
        sorts.push((format!("-{}", col.name), format!("{} ↓", col.name)));
    }
    html(
        status,
        &Rows {
            layout,
            org,
            table: t.name.clone(),
            columns,
            rows,
            next,
            filterable: usable.iter().map(|c| c.name.clone()).collect(),
            ops: FILTER_OPS.to_vec(),
            sorts,
            f_col,
            f_op,
            f_val,
            sort,
            deleted: query_value(&q, "deleted"),
        },
    )
}

struct Field {
    name: String,
    hint: String,
    value: String,
    long: bool,
}

#[derive(Template)]
#[template(path = "console/row.html")]
struct RowPage {
    layout: Layout,
    org: String,
    table: String,
    id: String,
    etag: String,
    action: String,
    shown: Vec<(String, String)>,
    fields: Vec<Field>,
}

fn form_fields(t: &orgbase_db::catalog::Table, row: &Value, creating: bool) -> Vec<Field> {
    use orgbase_db::catalog::Kind;
    t.columns
        .iter()
        .filter(|c| t.writable(&c.name, creating))
        .map(|c| {
            let kind = match c.kind {
                Kind::Json | Kind::TextArray => "JSON",
                Kind::Integer => "integer",
                Kind::Number => "number",
                Kind::Boolean => "true or false",
                Kind::Uuid => "UUID",
                Kind::Date => "date",
                Kind::Timestamp => "RFC 3339 time",
                _ => "text",
            };
            let mut hint = format!("{kind}, {}", c.class);
            if let Some(a) = &c.allowed {
                hint.push_str(&format!("; one of {}", a.join(", ")));
            }
            if !c.not_null {
                hint.push_str("; empty: none");
            }
            let v = &row[c.name.as_str()];
            let value = match (c.kind, v) {
                (_, Value::Null) => String::new(),
                (Kind::Json | Kind::TextArray, v) => v.to_string(),
                (_, v) => text(v),
            };
            Field {
                name: c.name.clone(),
                hint,
                long: matches!(c.kind, Kind::Json | Kind::Text)
                    && c.max_length.is_none_or(|m| m > 200),
                value,
            }
        })
        .collect()
}

/// The JSON body of a create or update from the form: each writable column's text turned into
/// the JSON type the API expects. A value that is not of its type is sent as text, for the API
/// to refuse by name.
fn form_body(t: &orgbase_db::catalog::Table, form: &FormData, creating: bool) -> Value {
    use orgbase_db::catalog::Kind;
    let mut body = serde_json::Map::new();
    for c in t.columns.iter().filter(|c| t.writable(&c.name, creating)) {
        let Some((_, raw)) = form.0.iter().find(|(k, _)| *k == c.name) else {
            continue;
        };
        let v = if raw.is_empty() {
            if creating {
                continue;
            }
            Value::Null
        } else {
            match c.kind {
                Kind::Integer | Kind::Number | Kind::Boolean | Kind::Json | Kind::TextArray => {
                    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()))
                }
                _ => Value::String(raw.clone()),
            }
        };
        body.insert(c.name.clone(), v);
    }
    Value::Object(body)
}

pub(crate) async fn new_row(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, name)): Path<(String, String)>,
) -> Response {
    let Some(t) = c.catalog().get(&name) else {
        return not_found().await;
    };
    let layout = Layout::new(&ctx, format!("New {}", t.name), Some(&org));
    html(
        StatusCode::OK,
        &RowPage {
            layout,
            action: format!("/console/orgs/{}/tables/{}", enc(&org), enc(&t.name)),
            org,
            table: t.name.clone(),
            id: String::new(),
            etag: String::new(),
            shown: Vec::new(),
            fields: form_fields(&t, &Value::Null, true),
        },
    )
}

pub(crate) async fn create_row(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(t) = c.catalog().get(&name) else {
        return not_found().await;
    };
    let form = FormData::parse(&body);
    let req = form_body(&t, &form, true);
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/{}", enc(&org), enc(&name)),
            Some(&req),
        )
        .await;
    if !a.ok() {
        let layout = Layout::new(&ctx, format!("New {}", t.name), Some(&org)).with("", a.problem());
        return html(
            a.status,
            &RowPage {
                layout,
                action: format!("/console/orgs/{}/tables/{}", enc(&org), enc(&t.name)),
                org,
                table: t.name.clone(),
                id: String::new(),
                etag: String::new(),
                shown: Vec::new(),
                fields: form_fields(&t, &req, true),
            },
        );
    }
    let id = text(&a.json()["id"]);
    see_other(&format!(
        "/console/orgs/{}/tables/{}/{}?done=created",
        enc(&org),
        enc(&name),
        enc(&id)
    ))
}

async fn row_page(
    c: &Console,
    ctx: &Ctx,
    (org, name, id): (&str, &str, &str),
    ok: &str,
    failed: Option<(StatusCode, String, Value)>,
) -> Response {
    let Some(t) = c.catalog().get(name) else {
        return not_found().await;
    };
    let a = c
        .get(
            ctx,
            &format!("/v1/orgs/{}/{}/{}", enc(org), enc(name), enc(id)),
        )
        .await;
    if !a.ok() {
        return refused(a.status, &a.problem());
    }
    let row = a.json();
    let etag = a
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let shown = row
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    let (status, bad, values) = match failed {
        Some((s, why, sent)) => (s, why, sent),
        None => (StatusCode::OK, String::new(), row.clone()),
    };
    let layout = Layout::new(ctx, t.name.clone(), Some(org)).with(ok, bad);
    html(
        status,
        &RowPage {
            layout,
            action: format!(
                "/console/orgs/{}/tables/{}/{}",
                enc(org),
                enc(name),
                enc(id)
            ),
            org: org.to_string(),
            table: t.name.clone(),
            id: id.to_string(),
            etag,
            shown,
            fields: form_fields(&t, &values, false),
        },
    )
}

pub(crate) async fn row(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, name, id)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    row_page(&c, &ctx, (&org, &name, &id), done(&q), None).await
}

/// Save the form through `PATCH` with the ETag the form was rendered with: a row changed by
/// someone else meanwhile is refused (412) rather than overwritten.
pub(crate) async fn update_row(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, name, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let Some(t) = c.catalog().get(&name) else {
        return not_found().await;
    };
    let form = FormData::parse(&body);
    let req = form_body(&t, &form, false);
    let a = c
        .call(
            &ctx,
            Method::PATCH,
            &format!("/v1/orgs/{}/{}/{}", enc(&org), enc(&name), enc(&id)),
            Some(&req),
            &[(header::IF_MATCH, form.get("_etag").to_string())],
        )
        .await;
    if !a.ok() {
        return row_page(
            &c,
            &ctx,
            (&org, &name, &id),
            "",
            Some((a.status, a.problem(), req)),
        )
        .await;
    }
    see_other(&format!(
        "/console/orgs/{}/tables/{}/{}?done=saved",
        enc(&org),
        enc(&name),
        enc(&id)
    ))
}

pub(crate) async fn delete_row(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, name, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let etag = form.get("_etag");
    let extra: Vec<(header::HeaderName, String)> = if etag.is_empty() {
        Vec::new()
    } else {
        vec![(header::IF_MATCH, etag.to_string())]
    };
    let a = c
        .call(
            &ctx,
            Method::DELETE,
            &format!("/v1/orgs/{}/{}/{}", enc(&org), enc(&name), enc(&id)),
            None,
            &extra,
        )
        .await;
    if !a.ok() {
        return row_page(
            &c,
            &ctx,
            (&org, &name, &id),
            "",
            Some((a.status, a.problem(), Value::Null)),
        )
        .await;
    }
    see_other(&format!(
        "/console/orgs/{}/tables/{}?deleted={}",
        enc(&org),
        enc(&name),
        enc(&id)
    ))
}

pub(crate) async fn restore_row(
    State(c): State<Console>,
    ctx: Ctx,
    Path((org, name, id)): Path<(String, String, String)>,
) -> Response {
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/orgs/{}/{}/{}/restore", enc(&org), enc(&name), enc(&id)),
            None,
        )
        .await;
    if !a.ok() {
        return refused(a.status, &a.problem());
    }
    see_other(&format!(
        "/console/orgs/{}/tables/{}/{}?done=restored",
        enc(&org),
        enc(&name),
        enc(&id)
    ))
}

// Instance operators -----------------------------------------------------------------------

struct OperatorAccount {
    id: String,
    email: String,
    name: String,
    status: String,
    mfa: String,
    operator: String,
    created_at: String,
}

#[derive(Template)]
#[template(path = "console/operator_accounts.html")]
struct OperatorAccounts {
    layout: Layout,
    accounts: Vec<OperatorAccount>,
    next: String,
}

async fn operator_accounts_page(
    c: &Console,
    ctx: &Ctx,
    before: &str,
    layout: Layout,
    status: StatusCode,
) -> Response {
    let mut path = "/v1/operator/accounts?limit=100".to_string();
    if !before.is_empty() {
        path.push_str(&format!("&before={}", enc(before)));
    }
    let a = c.get(ctx, &path).await;
    if !a.ok() {
        return refused(a.status, &a.problem());
    }
    let body = a.json();
    let yes_no = |v: &Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
        .to_string()
    };
    let accounts = body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|u| OperatorAccount {
            id: text(&u["id"]),
            email: text(&u["email"]),
            name: text(&u["name"]),
            status: text(&u["status"]),
            mfa: yes_no(&u["mfa_enabled"]),
            operator: yes_no(&u["operator"]),
            created_at: text(&u["created_at"]),
        })
        .collect();
    html(
        status,
        &OperatorAccounts {
            layout,
            accounts,
            next: text(&body["next_before"]),
        },
    )
}

pub(crate) async fn operator_accounts(
    State(c): State<Console>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> Response {
    let layout = Layout::new(&ctx, "Accounts", None).with(done(&q), "");
    let before = query_value(&q, "before");
    operator_accounts_page(&c, &ctx, &before, layout, StatusCode::OK).await
}

pub(crate) async fn operator_account_status(
    State(c): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let a = c
        .send(
            &ctx,
            Method::POST,
            &format!("/v1/operator/accounts/{}/status", enc(&id)),
            Some(&json!({ "status": form.get("status") })),
        )
        .await;
    if !a.ok() {
        let layout = Layout::new(&ctx, "Accounts", None).with("", a.problem());
        return operator_accounts_page(&c, &ctx, "", layout, a.status).await;
    }
    see_other("/console/operator/accounts?done=status-changed")
}
