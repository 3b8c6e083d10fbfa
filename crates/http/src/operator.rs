//! Instance operators' API: every organization and account, with what running the instance
//! needs and no tenant row. The database checks that the session is an operator's
//! (`orgbase.operator_of`); being one gives no access to any organization's data.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use orgbase_db::request::plain;
use serde::Deserialize;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Bearer, JsonBody, json_text};
use crate::orgs::first_json;

/// Every organization (closed ones too): id, slug, name, region, compliance flags, member
/// count, created and closed times. Instance operators only.
#[utoipa::path(get, path = "/v1/operator/orgs", tag = "operator",
    responses((status = 200, description = "`{\"items\": [...]}`", body = Object),
              (status = 401, body = Problem),
              (status = 403, description = "Not an instance operator", body = Problem)))]
pub async fn orgs(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<Response, ApiError> {
    let rows = plain(
        &state.pool,
        "SELECT jsonb_build_object('items', orgbase.operator_orgs($1))::text",
        &[&&caller.cred_hash[..]],
    )
    .await?;
    Ok(json_text(StatusCode::OK, first_json(&rows)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccountsPage {
    /// The `next_before` of the previous page.
    pub before: Option<Uuid>,
    /// 1 to 500 (default 100).
    pub limit: Option<i32>,
}

/// Every account, newest first: id, email, name, status, MFA, operator flag. Instance
/// operators only.
#[utoipa::path(get, path = "/v1/operator/accounts", tag = "operator", params(AccountsPage),
    responses((status = 200, description = "`{\"items\": [...], \"next_before\": ...}`", body = Object),
              (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, description = "Not an instance operator", body = Problem)))]
pub async fn accounts(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    page: Result<Query<AccountsPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(crate::extract::query_error("limit", "must be 1 to 500"));
    }
    let rows = plain(
        &state.pool,
        "SELECT orgbase.operator_accounts($1, $2, $3)::text",
        &[&&caller.cred_hash[..], &page.before, &limit],
    )
    .await?;
    let mut items: Vec<serde_json::Value> =
        serde_json::from_str(&first_json(&rows)?).map_err(ApiError::internal)?;
    for item in items.iter_mut() {
        if let Some(m) = item.as_object_mut() {
            state.fields.open_account_json(m, "id")?;
        }
    }
    let next = (items.len() == limit as usize)
        .then(|| items.last().map(|i| i["id"].clone()))
        .flatten()
        .unwrap_or(serde_json::Value::Null);
    let body = serde_json::json!({ "items": items, "next_before": next });
    Ok(json_text(StatusCode::OK, body.to_string()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountStatus {
    /// `suspended` (sessions end at once, no sign-in; data and memberships stay) or `active`.
    pub status: String,
}

/// Suspend or reactivate an account. Audited with the operator, address and user agent. An
/// operator cannot change their own account's state. Instance operators only.
#[utoipa::path(post, path = "/v1/operator/accounts/{id}/status", tag = "operator",
    request_body = AccountStatus, params(("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 401, body = Problem),
              (status = 403, description = "Not an instance operator, or one's own account", body = Problem),
              (status = 404, body = Problem),
              (status = 409, description = "The account is neither active nor suspended", body = Problem),
              (status = 422, body = Problem)))]
pub async fn set_status(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    JsonBody(body): JsonBody<AccountStatus>,
) -> Result<Response, ApiError> {
    if !matches!(body.status.as_str(), "active" | "suspended") {
        return Err(ApiError::field("status", "must be active or suspended"));
    }
    let (ip, ua) = crate::identity::client_meta(&headers, caller.ip);
    let rows = plain(
        &state.pool,
        "SELECT orgbase.operator_set_status($1, $2, $3, $4, $5)::text",
        &[&&caller.cred_hash[..], &id, &body.status, &ip, &ua],
    )
    .await?;
    Ok(json_text(StatusCode::OK, first_json(&rows)?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgStatus {
    /// true: close the organization (nobody reaches it; its data stays until retention or
    /// erasure removes it); false: reopen it.
    pub closed: bool,
}

/// Close or reopen an organization. Audited with the operator, address and user agent.
/// Instance operators only.
#[utoipa::path(post, path = "/v1/operator/orgs/{id}/status", tag = "operator",
    request_body = OrgStatus, params(("id" = Uuid, Path)),
    responses((status = 200, description = "`{\"id\", \"closed\", \"changed\"}`", body = Object),
              (status = 401, body = Problem),
              (status = 403, description = "Not an instance operator", body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn set_org_status(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    JsonBody(body): JsonBody<OrgStatus>,
) -> Result<Response, ApiError> {
    let (ip, ua) = crate::identity::client_meta(&headers, caller.ip);
    let rows = plain(
        &state.pool,
        "SELECT orgbase.operator_set_org_status($1, $2, $3, $4, $5)::text",
        &[&&caller.cred_hash[..], &id, &body.closed, &ip, &ua],
    )
    .await?;
    Ok(json_text(StatusCode::OK, first_json(&rows)?))
}

/// The schema migrations applied to the database, newest first, and the newest this binary
/// carries. Instance operators only.
#[utoipa::path(get, path = "/v1/operator/migrations", tag = "operator",
    responses((status = 200, description = "`{\"items\": [...], \"database\": n, \"binary\": n}`", body = Object),
              (status = 401, body = Problem),
              (status = 403, description = "Not an instance operator", body = Problem)))]
pub async fn migrations(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<Response, ApiError> {
    let rows = plain(
        &state.pool,
        "SELECT orgbase.operator_migrations($1)::text",
        &[&&caller.cred_hash[..]],
    )
    .await?;
    let items: serde_json::Value =
        serde_json::from_str(&first_json(&rows)?).map_err(ApiError::internal)?;
    let database = items[0]["version"].as_i64().unwrap_or(0);
    let body = serde_json::json!({
        "items": items,
        "database": database,
        "binary": state.latest_migration,
        "pending": (state.latest_migration - database).max(0),
    });
    Ok(json_text(StatusCode::OK, body.to_string()))
}

/// Refuse anyone but an instance operator (the database decides, as for the other routes).
async fn operator_only(state: &AppState, caller: &orgbase_db::Caller) -> Result<(), ApiError> {
    plain(
        &state.pool,
        "SELECT orgbase.operator_of($1)",
        &[&&caller.cred_hash[..]],
    )
    .await?;
    Ok(())
}

/// Keys listed by name in the key-status answer (the rest are counted).
const KEYS_LISTED: usize = 100;

/// The key store: how many data keys (per person, per organization), live and destroyed, and
/// which are due for rotation (current version older than `keys.rotation_days`). Key material
/// never leaves the store. Instance operators only.
#[utoipa::path(get, path = "/v1/operator/keys", tag = "operator",
    responses((status = 200, description = "Counts, the rotation age, and the keys due (at most 100 by name)", body = Object),
              (status = 401, body = Problem),
              (status = 403, description = "Not an instance operator", body = Problem),
              (status = 503, description = "This server has no key store", body = Problem)))]
pub async fn keys(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<Response, ApiError> {
    operator_only(&state, &caller).await?;
    let Some(keys) = state.fields.keys().cloned() else {
        return Err(ApiError::Unavailable(
            "this server has no key store: field encryption is not set up".into(),
        ));
    };
    let max_age = keys.config().rotation_max_age();
    let now = chrono::Utc::now();
    let list = tokio::task::spawn_blocking(move || keys.store().list())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let mut counts = std::collections::BTreeMap::<&str, [u64; 3]>::new();
    let mut due = Vec::new();
    let mut oldest: Option<chrono::Duration> = None;
    for k in &list {
        let c = counts.entry(k.key.scope.as_str()).or_default();
        if k.destroyed.is_some() {
            c[1] += 1;
            continue;
        }
        c[0] += 1;
        if let Some(age) = k.age(now) {
            oldest = Some(oldest.map_or(age, |o| o.max(age)));
        }
        if k.rotation_due(max_age, now) {
            c[2] += 1;
            if due.len() < KEYS_LISTED {
                due.push(serde_json::json!({
                    "key": k.key.to_string(),
                    "version": k.current.map(|v| v.0),
                    "created_at": k.current_created_at(),
                }));
            }
        }
    }
    let by_scope: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(scope, [live, destroyed, due])| {
            (
                scope.to_string(),
                serde_json::json!({ "live": live, "destroyed": destroyed, "rotation_due": due }),
            )
        })
        .collect();
    let body = serde_json::json!({
        "keys": by_scope,
        "rotation_days": max_age.as_secs() / 86_400,
        "oldest_current_days": oldest.map(|d| d.num_days()),
        "due": due,
    });
    Ok(json_text(StatusCode::OK, body.to_string()))
}

fn backup_ops(state: &AppState) -> Result<&orgbase_backup::service::BackupService, ApiError> {
    state
        .backups
        .as_deref()
        .ok_or_else(|| ApiError::Unavailable("this server process does not take backups".into()))
}

/// The backups in the store, newest first, each with the result of its last verification
/// (`orgbase backup verify`) and last restore drill (`--restore`). Instance operators only.
#[utoipa::path(get, path = "/v1/operator/backups", tag = "operator",
    responses((status = 200, description = "`{\"items\": [...], \"store\", \"schedule\", \"running\"}`", body = Object),
              (status = 401, body = Problem),
              (status = 403, description = "Not an instance operator", body = Problem),
              (status = 503, description = "The store cannot be read", body = Problem)))]
pub async fn backups(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<Response, ApiError> {
    operator_only(&state, &caller).await?;
    let body = backup_ops(&state)?
        .list()
        .await
        .map_err(|e| ApiError::Unavailable(format!("the backup store cannot be read: {e}")))?;
    Ok(json_text(StatusCode::OK, body.to_string()))
}

/// Start a logical backup now (tier `manual`, never pruned), in the background; it appears in
/// the list when done. One at a time: 409 while one is running. Audited. Instance operators
/// only.
#[utoipa::path(post, path = "/v1/operator/backups", tag = "operator",
    responses((status = 202, description = "Started", body = Object),
              (status = 401, body = Problem),
              (status = 403, description = "Not an instance operator", body = Problem),
              (status = 409, description = "A backup is running", body = Problem),
              (status = 503, body = Problem)))]
pub async fn start_backup(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operator_only(&state, &caller).await?;
    let started = backup_ops(&state)?.start().map_err(ApiError::Conflict)?;
    let (ip, ua) = crate::identity::client_meta(&headers, caller.ip);
    plain(
        &state.pool,
        "SELECT orgbase.operator_audit($1, 'backup.start', $2::text::jsonb, $3, $4)",
        &[&&caller.cred_hash[..], &started.to_string(), &ip, &ua],
    )
    .await?;
    Ok(json_text(StatusCode::ACCEPTED, started.to_string()))
}
