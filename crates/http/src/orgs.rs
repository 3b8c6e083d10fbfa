//! Organizations and what hangs off them: members and their roles, per-app roles, invitations,
//! teams, API keys and custom roles. Every org-scoped statement runs in a request transaction
//! whose tenant context the database authenticated; row-level security on the identity tables
//! limits writes to owners and admins (teams: managers too), whatever SQL runs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orgbase_db::auth::{self, API_KEY_PREFIX, INVITATION_PREFIX};
use orgbase_db::request::{self, plain};
use orgbase_db::{Context, ReqError};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Bearer, JsonBody, json_text};

const SLUG_RULE: &str =
    "2–63 characters: lowercase letters, digits and '-', starting with a letter or digit";

fn valid_slug(s: &str) -> bool {
    (2..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

pub(crate) fn admin_only(ctx: &Context) -> Result<(), ReqError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(ReqError::Forbidden(
            "only organization owners and admins may do this".into(),
        ))
    }
}

/// An owner/admin change of exactly the rows `sql` names: 204 when it touched any, else 404.
async fn admin_change(
    state: &AppState,
    caller: &orgbase_db::Caller,
    org: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<StatusCode, ApiError> {
    request::many(
        &state.pool,
        caller,
        org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            if c.execute(sql, params).await? == 0 {
                Err(ReqError::NotFound)
            } else {
                Ok(StatusCode::NO_CONTENT)
            }
        },
    )
    .await
    .map_err(ApiError::from)
}

/// The first column of the first row, as JSON text.
pub(crate) fn first_json(rows: &[tokio_postgres::Row]) -> Result<String, ReqError> {
    rows.first()
        .map(|r| r.get::<_, String>(0))
        .ok_or(ReqError::NotFound)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrg {
    pub name: String,
    /// URL name, unique: lowercase letters, digits and '-'.
    pub slug: String,
    /// Data residency region, default `us-east`.
    #[serde(default)]
    pub region: Option<String>,
    /// Compliance flags: gdpr, hipaa, soc2, iso27001, pci.
    #[serde(default)]
    pub compliance: Vec<String>,
    /// The organization's settings (`ORG_SETTINGS`): `{"require_mfa": true}` makes members
    /// pass multi-factor authentication. Unknown or ill-typed settings are refused.
    #[serde(default)]
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The settings an organization has, with the JSON type each must have; a setting left out
/// takes its default.
const ORG_SETTINGS: &[(&str, &str)] = &[("require_mfa", "true or false (default false)")];

/// Refuse settings that are unknown or of the wrong type (422 naming `settings.<name>`): a
/// security setting must never be stored in a form that could read as "off".
fn check_settings(settings: &serde_json::Map<String, serde_json::Value>) -> Result<(), ApiError> {
    for (name, value) in settings {
        let field = format!("settings.{name}");
        match ORG_SETTINGS.iter().find(|(known, _)| known == name) {
            Some(("require_mfa", want)) if !value.is_boolean() => {
                return Err(ApiError::field(&field, format!("must be {want}")));
            }
            Some(_) => {}
            None => {
                let known: Vec<&str> = ORG_SETTINGS.iter().map(|(n, _)| *n).collect();
                return Err(ApiError::field(
                    &field,
                    format!("unknown setting; the settings are: {}", known.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// Create an organization; the caller becomes its owner.
#[utoipa::path(post, path = "/v1/orgs", tag = "organizations", request_body = NewOrg,
    responses((status = 201, description = "The organization, with its id", body = Object),
              (status = 409, description = "Slug taken", body = Problem), (status = 422, body = Problem)))]
pub async fn create_org(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    JsonBody(body): JsonBody<NewOrg>,
) -> Result<Response, ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::field("name", "must be 1 to 200 characters"));
    }
    if !valid_slug(&body.slug) {
        return Err(ApiError::field("slug", SLUG_RULE));
    }
    let settings = body.settings.unwrap_or_default();
    check_settings(&settings)?;
    let settings = serde_json::Value::Object(settings);
    let region = body.region.unwrap_or_else(|| "us-east".into());
    let rows = plain(
        &state.pool,
        "SELECT orgbase.create_org($1, $2, $3, $4, $5, $6, $7)::text",
        &[
            &&caller.cred_hash[..],
            &Uuid::now_v7(),
            &name,
            &body.slug,
            &region,
            &body.compliance,
            &settings,
        ],
    )
    .await?;
    Ok(json_text(StatusCode::CREATED, first_json(&rows)?))
}

/// The caller's organizations with their role in each.
#[utoipa::path(get, path = "/v1/orgs", tag = "organizations",
    responses((status = 200, body = Object), (status = 401, body = Problem)))]
pub async fn list_orgs(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<Response, ApiError> {
    let rows = plain(
        &state.pool,
        "SELECT jsonb_build_object('items', orgbase.me($1) -> 'organizations')::text",
        &[&&caller.cred_hash[..]],
    )
    .await?;
    Ok(json_text(StatusCode::OK, first_json(&rows)?))
}

/// One organization (by id or slug) the caller belongs to.
#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "organizations",
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, body = Object), (status = 401, body = Problem),
              (status = 404, description = "No such organization, or not a member", body = Problem)))]
pub async fn get_org(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let (_, rows) = request::one(
        &state.pool,
        &caller,
        &org,
        "SELECT orgbase.org_json(orgbase.ctx_org())::text",
        &[],
    )
    .await?;
    Ok(json_text(StatusCode::OK, first_json(&rows)?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgChange {
    pub name: Option<String>,
    /// Replaces the settings as a whole; the same rules as on creation.
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
    pub compliance: Option<Vec<String>>,
}

/// Change an organization's name, settings or compliance flags (owners and admins).
#[utoipa::path(patch, path = "/v1/orgs/{org}", tag = "organizations", request_body = OrgChange,
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, body = Object), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn update_org(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<OrgChange>,
) -> Result<Response, ApiError> {
    if let Some(n) = &body.name
        && (n.trim().is_empty() || n.chars().count() > 200)
    {
        return Err(ApiError::field("name", "must be 1 to 200 characters"));
    }
    if let Some(s) = &body.settings {
        check_settings(s)?;
    }
    let settings = body.settings.map(serde_json::Value::Object);
    let json = request::many(&state.pool, &caller, &org, async |c: &Client, ctx: &Context| {
        admin_only(ctx)?;
        let rows = c
            .query(
                "UPDATE orgbase.organizations SET name = coalesce($1, name), \
                 settings = coalesce($2, settings), compliance = coalesce($3, compliance), \
                 updated_at = now() WHERE id = orgbase.ctx_org() RETURNING orgbase.org_json(id)::text",
                &[&body.name, &settings, &body.compliance],
            )
            .await?;
        first_json(&rows)
    })
    .await?;
    Ok(json_text(StatusCode::OK, json))
}

// Members ----------------------------------------------------------------------------------

const MEMBER_JSON: &str = "SELECT coalesce(json_agg(json_build_object('user_id', d.user_id, 'email', d.email, \
     'name', d.name, 'role', d.role, 'joined_at', d.joined_at, 'apps', \
     (SELECT coalesce(json_object_agg(p.app, p.role), '{}') FROM orgbase.app_permissions p \
       WHERE p.org_id = orgbase.ctx_org() AND p.user_id = d.user_id))), '[]')::text \
     FROM orgbase.member_directory() d";

/// Members as `MEMBER_JSON` renders them, with their emails and names decrypted
/// (orgbase_db::account), sorted by email.
fn open_members(state: &AppState, json: &str) -> Result<Vec<Value>, ApiError> {
    let mut items: Vec<Value> = serde_json::from_str(json).map_err(ApiError::internal)?;
    for item in items.iter_mut() {
        if let Some(m) = item.as_object_mut() {
            state.fields.open_account_json(m, "user_id")?;
        }
    }
    let key = |v: &Value| v["email"].as_str().unwrap_or_default().to_string();
    items.sort_by_cached_key(key);
    Ok(items)
}

/// The one member of a `MEMBER_JSON … WHERE d.user_id = $1` answer.
fn one_member(state: &AppState, json: &str) -> Result<Value, ApiError> {
    open_members(state, json)?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound)
}

/// Members of the organization, with org role and app roles.
#[utoipa::path(get, path = "/v1/orgs/{org}/members", tag = "members",
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, body = Object), (status = 404, body = Problem)))]
pub async fn list_members(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let (_, rows) = request::one(&state.pool, &caller, &org, MEMBER_JSON, &[]).await?;
    let items = open_members(&state, &first_json(&rows)?)?;
    Ok(Json(json!({ "items": items })).into_response())
}

/// One member.
#[utoipa::path(get, path = "/v1/orgs/{org}/members/{user}", tag = "members",
    params(("org" = String, Path), ("user" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 404, body = Problem)))]
pub async fn get_member(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, user)): Path<(String, Uuid)>,
) -> Result<Response, ApiError> {
    let sql = format!("{MEMBER_JSON} WHERE d.user_id = $1");
    let (_, rows) = request::one(&state.pool, &caller, &org, &sql, &[&user]).await?;
    Ok(Json(one_member(&state, &first_json(&rows)?)?).into_response())
}

fn check_org_role(role: &str) -> Result<(), ApiError> {
    if matches!(role, "owner" | "admin" | "manager" | "member") {
        Ok(())
    } else {
        Err(ApiError::field(
            "role",
            "must be one of owner, admin, manager, member",
        ))
    }
}

/// Add someone to the organization (owners and admins): nobody joins without agreeing, so this
/// sends an invitation, exactly as `POST /v1/orgs/{org}/invitations` does, whether or not an
/// account with that email exists (the answer is the same either way). The person joins when
/// they accept it.
#[utoipa::path(post, path = "/v1/orgs/{org}/members", tag = "members", request_body = NewInvitation,
    params(("org" = String, Path)),
    responses((status = 202, description = "The invitation, with its token (shown once)", body = Object),
              (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn add_member(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<NewInvitation>,
) -> Result<Response, ApiError> {
    let json = invite(&state, &caller, &org, &body).await?;
    Ok(json_text(StatusCode::ACCEPTED, json))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: String,
}

/// Change a member's org role (owners and admins; only owners touch owners; an organization
/// keeps at least one owner).
#[utoipa::path(patch, path = "/v1/orgs/{org}/members/{user}", tag = "members", request_body = RoleChange,
    params(("org" = String, Path), ("user" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "Would leave no owner", body = Problem)))]
pub async fn update_member(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, user)): Path<(String, Uuid)>,
    JsonBody(body): JsonBody<RoleChange>,
) -> Result<StatusCode, ApiError> {
    check_org_role(&body.role)?;
    member_write(
        &state,
        &caller,
        &org,
        "UPDATE orgbase.members SET role = $2, updated_at = now() \
         WHERE org_id = orgbase.ctx_org() AND user_id = $1 AND deleted_at IS NULL RETURNING 1",
        user,
        Some(body.role),
    )
    .await
}

/// Remove a member (owners and admins). Their rows stay, attributed to them.
#[utoipa::path(delete, path = "/v1/orgs/{org}/members/{user}", tag = "members",
    params(("org" = String, Path), ("user" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "Would leave no owner", body = Problem)))]
pub async fn remove_member(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, user)): Path<(String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    member_write(
        &state,
        &caller,
        &org,
        "UPDATE orgbase.members SET deleted_at = now(), updated_at = now() \
         WHERE org_id = orgbase.ctx_org() AND user_id = $1 AND deleted_at IS NULL \
         AND $2::text IS NULL RETURNING 1",
        user,
        None,
    )
    .await
}

async fn member_write(
    state: &AppState,
    caller: &orgbase_db::Caller,
    org: &str,
    sql: &str,
    user: Uuid,
    role: Option<String>,
) -> Result<StatusCode, ApiError> {
    request::many(
        &state.pool,
        caller,
        org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            if c.query(sql, &[&user, &role]).await?.is_empty() {
                let visible = !c
                    .query(
                        "SELECT 1 FROM orgbase.members WHERE org_id = orgbase.ctx_org() \
                     AND user_id = $1 AND deleted_at IS NULL",
                        &[&user],
                    )
                    .await?
                    .is_empty();
                return Err(if visible {
                    ReqError::Forbidden("only owners may change or remove owners".into())
                } else {
                    ReqError::NotFound
                });
            }
            Ok(StatusCode::NO_CONTENT)
        },
    )
    .await
    .map_err(ApiError::from)
}

/// Grant a member a role in an app (admin, editor, viewer). Owners and admins.
#[utoipa::path(put, path = "/v1/orgs/{org}/members/{user}/apps/{app}", tag = "members", request_body = RoleChange,
    params(("org" = String, Path), ("user" = Uuid, Path), ("app" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn set_app_role(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, user, app)): Path<(String, Uuid, String)>,
    JsonBody(body): JsonBody<RoleChange>,
) -> Result<StatusCode, ApiError> {
    if !matches!(body.role.as_str(), "admin" | "editor" | "viewer") {
        return Err(ApiError::field(
            "role",
            "must be one of admin, editor, viewer",
        ));
    }
    if app.is_empty()
        || app.len() > 63
        || !app
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ApiError::field("app", "not an app name"));
    }
    request::many(&state.pool, &caller, &org, async |c: &Client, ctx: &Context| {
        admin_only(ctx)?;
        let member = c
            .query(
                "SELECT 1 FROM orgbase.members WHERE org_id = orgbase.ctx_org() AND user_id = $1 \
                 AND deleted_at IS NULL",
                &[&user],
            )
            .await?;
        if member.is_empty() {
            return Err(ReqError::NotFound);
        }
        c.execute(
            "INSERT INTO orgbase.app_permissions (org_id, user_id, app, role) \
             VALUES (orgbase.ctx_org(), $1, $2, $3) ON CONFLICT (org_id, user_id, app) \
             DO UPDATE SET role = EXCLUDED.role, granted_by = orgbase.ctx_user(), granted_at = now()",
            &[&user, &app, &body.role],
        )
        .await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
    .map_err(ApiError::from)
}

/// Take a member's app role away. Owners and admins.
#[utoipa::path(delete, path = "/v1/orgs/{org}/members/{user}/apps/{app}", tag = "members",
    params(("org" = String, Path), ("user" = Uuid, Path), ("app" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn remove_app_role(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, user, app)): Path<(String, Uuid, String)>,
) -> Result<StatusCode, ApiError> {
    admin_change(
        &state,
        &caller,
        &org,
        "DELETE FROM orgbase.app_permissions WHERE org_id = orgbase.ctx_org() \
                 AND user_id = $1 AND app = $2",
        &[&user, &app],
    )
    .await
}

// Invitations -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    pub email: String,
    /// admin, manager or member.
    pub role: String,
    /// Days until the invitation lapses (1–30, default 7).
    #[serde(default)]
    pub expires_in_days: Option<i32>,
}

/// Invite someone by email (owners and admins). The answer holds the invitation `token` — shown
/// once; the invitee accepts with `POST /v1/invitations/{token}/accept` after signing up with
/// that email.
#[utoipa::path(post, path = "/v1/orgs/{org}/invitations", tag = "members", request_body = NewInvitation,
    params(("org" = String, Path)),
    responses((status = 201, body = Object), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_invitation(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<NewInvitation>,
) -> Result<Response, ApiError> {
    let json = invite(&state, &caller, &org, &body).await?;
    Ok(json_text(StatusCode::CREATED, json))
}

/// Create an invitation; its JSON with the token.
async fn invite(
    state: &AppState,
    caller: &orgbase_db::Caller,
    org: &str,
    body: &NewInvitation,
) -> Result<String, ApiError> {
    if !matches!(body.role.as_str(), "admin" | "manager" | "member") {
        return Err(ApiError::field(
            "role",
            "must be one of admin, manager, member",
        ));
    }
    let days = body.expires_in_days.unwrap_or(7);
    if !(1..=30).contains(&days) {
        return Err(ApiError::field("expires_in_days", "must be 1 to 30"));
    }
    let email = crate::identity::normalize_email(&body.email)?;
    let (token, hash) = auth::new_token(INVITATION_PREFIX)?;
    // The invitee's email is pii: stored under the invitation's own key, matched by blind index.
    let email_hash = state.fields.email_hash(&email)?;
    let id = Uuid::now_v7();
    request::many(
        &state.pool,
        caller,
        org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            let sealed = state.fields.seal_invitation(ctx.org_id, id, &email)?;
            let rows = c
            .query(
                "INSERT INTO orgbase.invitations (org_id, id, email, email_hash, role, token_hash, expires_at) \
                 VALUES (orgbase.ctx_org(), $1, $2, $3, $4, $5, now() + make_interval(days => $6)) \
                 RETURNING json_build_object('id', id, 'email', $7::text, 'role', role, \
                 'expires_at', expires_at, 'token', $8::text)::text",
                &[&id, &sealed, &email_hash, &body.role, &&hash[..], &days, &email, &token],
            )
            .await?;
            first_json(&rows)
        },
    )
    .await
    .map_err(ApiError::from)
}

/// Pending and past invitations (owners and admins).
#[utoipa::path(get, path = "/v1/orgs/{org}/invitations", tag = "members",
    params(("org" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = Problem)))]
pub async fn list_invitations(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let json = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            let json = first_json(
            &c.query(
                "SELECT json_build_object('items', coalesce(json_agg(json_build_object('id', id, \
                 'email', email, 'role', role, 'invited_by', invited_by, 'created_at', created_at, \
                 'expires_at', expires_at, 'accepted_at', accepted_at, 'revoked_at', revoked_at) \
                 ORDER BY created_at DESC), '[]'))::text \
                 FROM orgbase.invitations WHERE org_id = orgbase.ctx_org()",
                &[],
            )
            .await?,
        )?;
            Ok((ctx.org_id, json))
        },
    )
    .await?;
    let (org_id, json) = json;
    let mut list: Value = serde_json::from_str(&json).map_err(ApiError::internal)?;
    if let Some(items) = list["items"].as_array_mut() {
        for item in items.iter_mut() {
            let id = item["id"].as_str().and_then(|s| Uuid::parse_str(s).ok());
            if let (Some(id), Some(Value::String(stored))) = (id, item.get("email")) {
                let plain = state.fields.open_invitation(org_id, id, stored)?;
                item["email"] = plain.map_or(Value::Null, Value::String);
            }
        }
    }
    Ok(Json(list).into_response())
}

/// Revoke an invitation (owners and admins).
#[utoipa::path(delete, path = "/v1/orgs/{org}/invitations/{id}", tag = "members",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_invitation(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, id)): Path<(String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    admin_change(
        &state,
        &caller,
        &org,
        "UPDATE orgbase.invitations SET revoked_at = now() WHERE org_id = orgbase.ctx_org() \
                 AND id = $1 AND revoked_at IS NULL AND accepted_at IS NULL",
        &[&id],
    )
    .await
}

/// Accept an invitation with the account it was sent to.
#[utoipa::path(post, path = "/v1/invitations/{token}/accept", tag = "members",
    params(("token" = String, Path, description = "The invitation token")),
    responses((status = 200, description = "The organization joined", body = Object),
              (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let invitation = auth::token_hash(&token);
    let rows = plain(
        &state.pool,
        "SELECT orgbase.accept_invitation($1, $2)::text",
        &[&&caller.cred_hash[..], &&invitation[..]],
    )
    .await?;
    Ok(json_text(StatusCode::OK, first_json(&rows)?))
}

// Teams -------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

const TEAM_JSON: &str = "json_build_object('id', t.id, 'name', t.name, 'description', t.description, \
     'created_at', t.created_at, 'members', (SELECT coalesce(json_agg(tm.user_id ORDER BY tm.added_at), '[]') \
     FROM orgbase.team_members tm WHERE tm.org_id = t.org_id AND tm.team_id = t.id))";

/// Teams of the organization with their members.
#[utoipa::path(get, path = "/v1/orgs/{org}/teams", tag = "teams", params(("org" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Problem)))]
pub async fn list_teams(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let sql = format!(
        "SELECT json_build_object('items', coalesce(json_agg({TEAM_JSON} ORDER BY t.name), '[]'))::text \
         FROM orgbase.teams t"
    );
    let (_, rows) = request::one(&state.pool, &caller, &org, &sql, &[]).await?;
    Ok(json_text(StatusCode::OK, first_json(&rows)?))
}

/// Create a team (owners, admins, managers).
#[utoipa::path(post, path = "/v1/orgs/{org}/teams", tag = "teams", request_body = NewTeam,
    params(("org" = String, Path)),
    responses((status = 201, body = Object), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create_team(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<NewTeam>,
) -> Result<Response, ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::field("name", "must be 1 to 200 characters"));
    }
    let sql = "WITH t AS (INSERT INTO orgbase.teams (org_id, id, name, description) \
         VALUES (orgbase.ctx_org(), $1, $2, $3) RETURNING *) \
         SELECT json_build_object('id', t.id, 'name', t.name, 'description', t.description, \
         'created_at', t.created_at, 'members', '[]'::json)::text FROM t";
    let (_, rows) = request::one(
        &state.pool,
        &caller,
        &org,
        sql,
        &[&Uuid::now_v7(), &name, &body.description],
    )
    .await?;
    Ok(json_text(StatusCode::CREATED, first_json(&rows)?))
}

/// Delete a team (owners, admins, managers).
#[utoipa::path(delete, path = "/v1/orgs/{org}/teams/{team}", tag = "teams",
    params(("org" = String, Path), ("team" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_team(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, team)): Path<(String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let (_, rows) = request::one(
        &state.pool,
        &caller,
        &org,
        "DELETE FROM orgbase.teams WHERE org_id = orgbase.ctx_org() AND id = $1 RETURNING 1",
        &[&team],
    )
    .await?;
    if rows.is_empty() {
        Err(ApiError::NotFound)
    } else {
        Ok(StatusCode::NO_CONTENT)
    }
}

/// Add a member to a team (owners, admins, managers).
#[utoipa::path(put, path = "/v1/orgs/{org}/teams/{team}/members/{user}", tag = "teams",
    params(("org" = String, Path), ("team" = Uuid, Path), ("user" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn add_team_member(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, team, user)): Path<(String, Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    request::one(
        &state.pool,
        &caller,
        &org,
        "INSERT INTO orgbase.team_members (org_id, team_id, user_id) VALUES (orgbase.ctx_org(), $1, $2) \
         ON CONFLICT DO NOTHING",
        &[&team, &user],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a member from a team (owners, admins, managers).
#[utoipa::path(delete, path = "/v1/orgs/{org}/teams/{team}/members/{user}", tag = "teams",
    params(("org" = String, Path), ("team" = Uuid, Path), ("user" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn remove_team_member(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, team, user)): Path<(String, Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let (_, rows) = request::one(
        &state.pool,
        &caller,
        &org,
        "DELETE FROM orgbase.team_members WHERE org_id = orgbase.ctx_org() AND team_id = $1 \
         AND user_id = $2 RETURNING 1",
        &[&team, &user],
    )
    .await?;
    if rows.is_empty() {
        Err(ApiError::NotFound)
    } else {
        Ok(StatusCode::NO_CONTENT)
    }
}

// API keys ----------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    pub name: String,
    /// `<app>:read|write|admin` (at most viewer, editor or admin in that app),
    /// `*:read|write|admin` (the same in every app) or `admin` (organization administration
    /// with the creator's role, and no app data by itself) or `analytics` (spending the
    /// organization's privacy budget on differentially private queries, for a key made by an
    /// owner or admin; the key also needs read access to the tables it queries). An app no
    /// scope names is closed to the key. A key never has more rights than its creator, and a key creates keys only with
    /// scopes its own cover.
    pub scopes: Vec<String>,
    /// CIDRs the key may be used from; empty: anywhere.
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// RFC 3339 expiry; none: until revoked.
    #[serde(default)]
    pub expires_at: Option<String>,
}

const API_KEY_JSON: &str = "json_build_object('id', k.id, 'name', k.name, 'prefix', k.prefix, \
     'user_id', k.user_id, 'scopes', k.scopes, 'ip_allow', k.ip_allow, 'expires_at', k.expires_at, \
     'last_used_at', k.last_used_at, 'created_at', k.created_at, 'revoked_at', k.revoked_at)";

/// Create an API key acting as the caller, narrowed to its scopes (owners and admins). The
/// answer holds the `key` — shown once, stored only as a hash.
#[utoipa::path(post, path = "/v1/orgs/{org}/api-keys", tag = "api-keys", request_body = NewApiKey,
    params(("org" = String, Path)),
    responses((status = 201, body = Object), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_api_key(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<NewApiKey>,
) -> Result<Response, ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::field("name", "must be 1 to 200 characters"));
    }
    let scope_ok = |s: &str| {
        s == "admin"
            || s == "analytics"
            || s.split_once(':').is_some_and(|(app, level)| {
                matches!(level, "read" | "write" | "admin")
                    && (app == "*"
                        || (!app.is_empty()
                            && app.len() <= 63
                            && app.bytes().all(|b| {
                                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
                            })))
            })
    };
    if body.scopes.is_empty() || body.scopes.len() > 64 || !body.scopes.iter().all(|s| scope_ok(s))
    {
        return Err(ApiError::field(
            "scopes",
            "1 to 64 of `<app>:read|write|admin`, `*:read|write|admin`, `admin`, `analytics`",
        ));
    }
    let mut cidrs = Vec::new();
    for c in &body.ip_allow {
        let ok = match c.split_once('/') {
            Some((ip, bits)) => {
                ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
            }
            None => c.parse::<std::net::IpAddr>().is_ok(),
        };
        if !ok {
            return Err(ApiError::field(
                "ip_allow",
                format!("{c:?} is not an address or CIDR"),
            ));
        }
        cidrs.push(c.clone());
    }
    if let Some(e) = &body.expires_at {
        match chrono::DateTime::parse_from_rfc3339(e) {
            Err(_) => {
                return Err(ApiError::field(
                    "expires_at",
                    "must be an RFC 3339 timestamp",
                ));
            }
            Ok(t) if t <= chrono::Utc::now() => {
                return Err(ApiError::field("expires_at", "must be in the future"));
            }
            Ok(_) => {}
        }
    }
    let (key, hash) = auth::new_token(API_KEY_PREFIX)?;
    let prefix: String = key.chars().take(12).collect();
    let sql = format!(
        "WITH k AS (INSERT INTO orgbase.api_keys (org_id, id, name, prefix, key_hash, scopes, ip_allow, expires_at) \
         VALUES (orgbase.ctx_org(), $1, $2, $3, $4, $5, $6::text[]::cidr[], $7::text::timestamptz) \
         RETURNING id, name, prefix, user_id, scopes, ip_allow, expires_at, last_used_at, created_at, revoked_at) \
         SELECT ({API_KEY_JSON}::jsonb || jsonb_build_object('key', $8::text))::text FROM k"
    );
    let json = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            first_json(
                &c.query(
                    &sql,
                    &[
                        &Uuid::now_v7(),
                        &name,
                        &prefix,
                        &&hash[..],
                        &body.scopes,
                        &cidrs,
                        &body.expires_at,
                        &key,
                    ],
                )
                .await?,
            )
        },
    )
    .await?;
    Ok(json_text(StatusCode::CREATED, json))
}

/// API keys of the organization, without their secrets (owners and admins).
#[utoipa::path(get, path = "/v1/orgs/{org}/api-keys", tag = "api-keys", params(("org" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = Problem)))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let sql = format!(
        "SELECT json_build_object('items', coalesce(json_agg({API_KEY_JSON} ORDER BY k.created_at DESC), '[]'))::text \
         FROM orgbase.api_keys k WHERE k.org_id = orgbase.ctx_org()"
    );
    let json = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            first_json(&c.query(&sql, &[]).await?)
        },
    )
    .await?;
    Ok(json_text(StatusCode::OK, json))
}

/// Revoke an API key (owners and admins); it stops working at once.
#[utoipa::path(delete, path = "/v1/orgs/{org}/api-keys/{id}", tag = "api-keys",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, id)): Path<(String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    admin_change(
        &state,
        &caller,
        &org,
        "UPDATE orgbase.api_keys SET revoked_at = now() WHERE org_id = orgbase.ctx_org() \
                 AND id = $1 AND revoked_at IS NULL",
        &[&id],
    )
    .await
}

// Custom roles ------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    pub name: String,
    /// Named permissions `<app>:viewer|editor|admin`; members granted the role get them.
    pub permissions: Vec<String>,
}

/// Custom roles of the organization.
#[utoipa::path(get, path = "/v1/orgs/{org}/roles", tag = "members", params(("org" = String, Path)),
    responses((status = 200, body = Object)))]
pub async fn list_roles(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let (_, rows) = request::one(
        &state.pool,
        &caller,
        &org,
        "SELECT json_build_object('items', coalesce(json_agg(json_build_object('id', r.id, 'name', r.name, \
         'permissions', r.permissions, 'created_at', r.created_at, 'created_by', r.created_by, \
         'members', (SELECT coalesce(json_agg(json_build_object('user_id', mr.user_id, 'granted_by', \
         mr.granted_by, 'granted_at', mr.granted_at)), '[]') FROM orgbase.member_roles mr \
         WHERE mr.org_id = r.org_id AND mr.role_id = r.id)) ORDER BY r.name), '[]'))::text \
         FROM orgbase.roles r",
        &[],
    )
    .await?;
    Ok(json_text(StatusCode::OK, first_json(&rows)?))
}

/// Create a custom role (owners and admins).
#[utoipa::path(post, path = "/v1/orgs/{org}/roles", tag = "members", request_body = NewRole,
    params(("org" = String, Path)),
    responses((status = 201, body = Object), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_role(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<NewRole>,
) -> Result<Response, ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::field("name", "must be 1 to 100 characters"));
    }
    let perm_ok = |p: &str| {
        p.split_once(':').is_some_and(|(app, level)| {
            matches!(level, "viewer" | "editor" | "admin")
                && !app.is_empty()
                && app
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
    };
    if !body.permissions.iter().all(|p| perm_ok(p)) {
        return Err(ApiError::field(
            "permissions",
            "each must be `<app>:viewer|editor|admin`",
        ));
    }
    let json = request::many(&state.pool, &caller, &org, async |c: &Client, ctx: &Context| {
        admin_only(ctx)?;
        first_json(
            &c.query(
                "INSERT INTO orgbase.roles (org_id, id, name, permissions) VALUES (orgbase.ctx_org(), $1, $2, $3) \
                 RETURNING json_build_object('id', id, 'name', name, 'permissions', permissions, \
                 'created_at', created_at, 'created_by', created_by)::text",
                &[&Uuid::now_v7(), &name, &body.permissions],
            )
            .await?,
        )
    })
    .await?;
    Ok(json_text(StatusCode::CREATED, json))
}

/// Grant a custom role to a member (owners and admins).
#[utoipa::path(put, path = "/v1/orgs/{org}/members/{user}/roles/{role}", tag = "members",
    params(("org" = String, Path), ("user" = Uuid, Path), ("role" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn grant_role(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, user, role)): Path<(String, Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    request::many(&state.pool, &caller, &org, async |c: &Client, ctx: &Context| {
        admin_only(ctx)?;
        c.execute(
            "INSERT INTO orgbase.member_roles (org_id, user_id, role_id) VALUES (orgbase.ctx_org(), $1, $2) \
             ON CONFLICT DO NOTHING",
            &[&user, &role],
        )
        .await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
    .map_err(ApiError::from)
}

/// Take a custom role away from a member (owners and admins).
#[utoipa::path(delete, path = "/v1/orgs/{org}/members/{user}/roles/{role}", tag = "members",
    params(("org" = String, Path), ("user" = Uuid, Path), ("role" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_role(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, user, role)): Path<(String, Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    admin_change(
        &state,
        &caller,
        &org,
        "DELETE FROM orgbase.member_roles WHERE org_id = orgbase.ctx_org() AND user_id = $1 \
                 AND role_id = $2",
        &[&user, &role],
    )
    .await
}
