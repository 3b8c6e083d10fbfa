//! GDPR requests over HTTP (docs/erasure.md): a person asks for an export or
//! the erasure of their own data (every organization), an organization's owners and admins ask
//! for a member's (that organization only). The server's worker carries them out; the request
//! is tracked in `orgbase.gdpr_requests` and its archive downloaded here.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orgbase_db::request::{self, Context, plain};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Bearer, ClientIp, JsonBody, json_text};
use crate::identity::{Secrets, check_secrets};

/// The erasure grace period as a PostgreSQL interval literal.
fn grace_interval(state: &AppState) -> String {
    format!("{} seconds", state.privacy.erasure_grace.as_secs())
}

async fn self_request(
    state: &AppState,
    caller: &orgbase_db::Caller,
    kind: &str,
) -> Result<Response, ApiError> {
    let rows = plain(
        &state.pool,
        "SELECT orgbase.gdpr_request_self($1, $2, $3::text::interval)::text",
        &[&&caller.cred_hash[..], &kind, &grace_interval(state)],
    )
    .await?;
    let body = rows.first().map(|r| r.get(0)).ok_or(ApiError::NotFound)?;
    Ok(json_text(StatusCode::ACCEPTED, body))
}

/// Ask for an export of all your data, in every organization: a zip of JSON and CSV files with a
/// manifest of SHA-256 hashes. Answers the request (`status` `requested`, then `done` with
/// `result.sha256`); download it from `/v1/me/gdpr-requests/{id}/download`.
#[utoipa::path(post, path = "/v1/me/export", tag = "privacy",
    responses((status = 202, description = "The export request", body = Object),
              (status = 401, body = Problem)))]
pub async fn export_me(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<Response, ApiError> {
    self_request(&state, &caller, "export").await
}

/// Your password again, to confirm the erasure of your account.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmErasure {
    pub password: String,
    /// The current TOTP code; required when the account has MFA enabled.
    #[serde(default)]
    pub totp: Option<String>,
}

/// Ask for the erasure of your account and all your data, in every organization, confirmed
/// with your password (and `totp` when MFA is enabled): a session token alone is not enough.
/// At once: your rows are soft-deleted, your sessions end and you cannot sign in. During the
/// grace period (`privacy.erasure_grace_days`, 90 by default) you can change your mind with
/// `POST /v1/auth/cancel-erasure`. After it the rows are deleted, your account anonymized and
/// your data keys destroyed (crypto-shredding: copies in audit entries and backups become
/// unreadable); the request's `result` then holds a signed certificate of deletion. A second
/// request while one is open answers the open one.
#[utoipa::path(post, path = "/v1/me/erase", tag = "privacy", request_body = ConfirmErasure,
    responses((status = 202, description = "The erasure request", body = Object),
              (status = 401, body = Problem),
              (status = 403, description = "Wrong password (`reauthentication-failed`), or the TOTP code missing or wrong (`mfa-required`)", body = Problem),
              (status = 409, description = "The last owner of an organization with other members: transfer ownership first", body = Problem)))]
pub async fn erase_me(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ClientIp(client): ClientIp,
    Bearer(caller): Bearer,
    JsonBody(body): JsonBody<ConfirmErasure>,
) -> Result<Response, ApiError> {
    let key = state.key()?;
    let cred = hex::encode(&caller.cred_hash[..]);
    let (issued_at, proof) = key.proof("reauth", &cred);
    let rows = plain(
        &state.pool,
        "SELECT user_id, email_hash, password_hash, totp_enabled, totp_secret \
         FROM orgbase.reauth_lookup($1, $2, $3)",
        &[&&caller.cred_hash[..], &issued_at, &proof],
    )
    .await?;
    let row = rows.first().ok_or(ApiError::Unauthorized(
        "a session is needed to ask for the erasure of your account".into(),
    ))?;
    let email_hash: Vec<u8> = row.get(1);
    let (ip, ua) = crate::identity::client_meta(&headers, client);
    let secrets = Secrets::from_row(row, 2);
    check_secrets(
        &state,
        &email_hash,
        (ip, &ua),
        Some(&secrets),
        body.password,
        body.totp.as_deref(),
    )
    .await
    .map_err(|f| f.into_error(ApiError::ReauthenticationFailed))?;
    state.login_throttle.succeeded(&email_hash, ip);
    let (issued_at, proof) = key.proof("erase", &cred);
    let rows = plain(
        &state.pool,
        "SELECT orgbase.gdpr_erase_self($1, $2::text::interval, $3, $4)::text",
        &[
            &&caller.cred_hash[..],
            &grace_interval(&state),
            &issued_at,
            &proof,
        ],
    )
    .await?;
    let body = rows.first().map(|r| r.get(0)).ok_or(ApiError::NotFound)?;
    Ok(json_text(StatusCode::ACCEPTED, body))
}

/// Your own GDPR requests, newest first.
#[utoipa::path(get, path = "/v1/me/gdpr-requests", tag = "privacy",
    responses((status = 200, description = "`{\"items\": [...]}`", body = Object),
              (status = 401, body = Problem)))]
pub async fn list_mine(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<Response, ApiError> {
    let rows = plain(
        &state.pool,
        "SELECT coalesce(jsonb_agg(r), '[]')::text FROM orgbase.gdpr_requests_of($1) r",
        &[&&caller.cred_hash[..]],
    )
    .await?;
    let items: String = rows
        .first()
        .map(|r| r.get(0))
        .unwrap_or_else(|| "[]".into());
    Ok(json_text(StatusCode::OK, format!("{{\"items\":{items}}}")))
}

async fn mine(
    state: &AppState,
    caller: &orgbase_db::Caller,
    id: Uuid,
) -> Result<serde_json::Value, ApiError> {
    let rows = plain(
        &state.pool,
        "SELECT r FROM orgbase.gdpr_requests_of($1, $2) r",
        &[&&caller.cred_hash[..], &id],
    )
    .await?;
    rows.first().map(|r| r.get(0)).ok_or(ApiError::NotFound)
}

/// One of your GDPR requests.
#[utoipa::path(get, path = "/v1/me/gdpr-requests/{id}", tag = "privacy",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_mine(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let r = mine(&state, &caller, id).await?;
    Ok(json_text(StatusCode::OK, r.to_string()))
}

/// Download the archive of one of your finished export requests (`application/zip`).
#[utoipa::path(get, path = "/v1/me/gdpr-requests/{id}/download", tag = "privacy",
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "The zip archive", content_type = "application/zip"),
              (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "Not finished yet, or not an export", body = Problem)))]
pub async fn download_mine(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let r = mine(&state, &caller, id).await?;
    archive(&state, &r).await
}

/// The request's archive as a download.
async fn archive(state: &AppState, r: &serde_json::Value) -> Result<Response, ApiError> {
    if r.get("kind").and_then(|v| v.as_str()) != Some("export") {
        return Err(ApiError::Conflict("this request is not an export".into()));
    }
    if r.get("status").and_then(|v| v.as_str()) != Some("done") {
        return Err(ApiError::Conflict(
            "the export is not finished yet; try again shortly".into(),
        ));
    }
    let path = r
        .get("result")
        .and_then(|res| orgbase_db::gdpr::export_path(&state.privacy.dir, res))
        .ok_or(ApiError::NotFound)?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            ApiError::Conflict("the archive expired; ask for a new export".into())
        }
        _ => ApiError::internal(e),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut resp = (StatusCode::OK, Body::from(bytes)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"orgbase-export-{name}\""))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

async fn member_request(
    state: &AppState,
    caller: &orgbase_db::Caller,
    org: &str,
    user: Uuid,
    kind: &'static str,
) -> Result<Response, ApiError> {
    let grace = grace_interval(state);
    let body = request::many(&state.pool, caller, org, async |c: &Client, _: &Context| {
        let row = c
            .query_one(
                "SELECT orgbase.gdpr_request_member($1, $2, $3::text::interval)::text",
                &[&kind, &user, &grace],
            )
            .await?;
        Ok(row.get::<_, String>(0))
    })
    .await?;
    Ok(json_text(StatusCode::ACCEPTED, body))
}

/// Export a member's data in this organization (owners and admins).
#[utoipa::path(post, path = "/v1/orgs/{org}/members/{user}/export", tag = "privacy",
    params(("org" = String, Path, description = "Organization id or slug"), ("user" = Uuid, Path)),
    responses((status = 202, description = "The export request", body = Object),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn export_member(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, user)): Path<(String, Uuid)>,
) -> Result<Response, ApiError> {
    member_request(&state, &caller, &org, user, "export").await
}

/// Erase a member's data in this organization (owners and admins; only owners erase owners):
/// their membership ends and their rows are soft-deleted at once; after the grace period the
/// rows are deleted and their data key in this organization destroyed, with a certificate.
/// Their account and their data in other organizations stay.
#[utoipa::path(post, path = "/v1/orgs/{org}/members/{user}/erase", tag = "privacy",
    params(("org" = String, Path, description = "Organization id or slug"), ("user" = Uuid, Path)),
    responses((status = 202, description = "The erasure request", body = Object),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn erase_member(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, user)): Path<(String, Uuid)>,
) -> Result<Response, ApiError> {
    member_request(&state, &caller, &org, user, "erase").await
}

async fn in_org(
    state: &AppState,
    caller: &orgbase_db::Caller,
    org: &str,
    id: Option<Uuid>,
) -> Result<Vec<serde_json::Value>, ApiError> {
    Ok(
        request::many(&state.pool, caller, org, async |c: &Client, _: &Context| {
            let rows = c
                .query("SELECT r FROM orgbase.gdpr_requests_in_org($1) r", &[&id])
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await?,
    )
}

/// The organization's GDPR requests, newest first (owners and admins).
#[utoipa::path(get, path = "/v1/orgs/{org}/gdpr-requests", tag = "privacy",
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, description = "`{\"items\": [...]}`", body = Object),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_org(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let items = in_org(&state, &caller, &org, None).await?;
    Ok(json_text(
        StatusCode::OK,
        serde_json::json!({ "items": items }).to_string(),
    ))
}

/// One of the organization's GDPR requests (owners and admins).
#[utoipa::path(get, operation_id = "get_org_gdpr_request", path = "/v1/orgs/{org}/gdpr-requests/{id}", tag = "privacy",
    params(("org" = String, Path, description = "Organization id or slug"), ("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_org(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, id)): Path<(String, Uuid)>,
) -> Result<Response, ApiError> {
    let r = in_org(&state, &caller, &org, Some(id)).await?;
    let r = r.into_iter().next().ok_or(ApiError::NotFound)?;
    Ok(json_text(StatusCode::OK, r.to_string()))
}

/// Download the archive of one of the organization's finished export requests.
#[utoipa::path(get, path = "/v1/orgs/{org}/gdpr-requests/{id}/download", tag = "privacy",
    params(("org" = String, Path, description = "Organization id or slug"), ("id" = Uuid, Path)),
    responses((status = 200, description = "The zip archive", content_type = "application/zip"),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn download_org(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, id)): Path<(String, Uuid)>,
) -> Result<Response, ApiError> {
    let r = in_org(&state, &caller, &org, Some(id)).await?;
    let r = r.into_iter().next().ok_or(ApiError::NotFound)?;
    archive(&state, &r).await
}

/// Cancel an erasure of a member during its grace period (owners and admins; only owners for an
/// owner's). The membership comes back at once, the rows the erasure soft-deleted at the
/// worker's next pass. Once the erasure is carried out (`done`), or it ended otherwise: 409.
#[utoipa::path(post, path = "/v1/orgs/{org}/gdpr-requests/{id}/cancel", tag = "privacy",
    params(("org" = String, Path, description = "Organization id or slug"), ("id" = Uuid, Path)),
    responses((status = 200, description = "The request, `cancelled`", body = Object),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn cancel_org(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, id)): Path<(String, Uuid)>,
) -> Result<Response, ApiError> {
    let body = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, _: &Context| {
            let row = c
                .query_one("SELECT orgbase.gdpr_cancel_member($1)::text", &[&id])
                .await?;
            Ok(row.get::<_, String>(0))
        },
    )
    .await?;
    Ok(json_text(StatusCode::OK, body))
}
