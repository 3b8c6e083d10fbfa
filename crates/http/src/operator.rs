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
