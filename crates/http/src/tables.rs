//! The generic tenant data API: one set of handlers for every registered tenant table (the
//! built-in apps' and a product's own), driven by the catalog.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orgbase_db::catalog::Table;
use orgbase_db::records::{self, ListQuery, Record};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Bearer, JsonBody, json_text};

async fn table(state: &AppState, name: &str) -> Result<Arc<Table>, ApiError> {
    if let Some(t) = state.catalog().get(name) {
        return Ok(t);
    }
    // A table registered since start (a migration applied by another process): reload once.
    state.reload_catalog().await?;
    state.catalog().get(name).ok_or_else(|| ApiError::NotFound)
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("{id:?} is not a UUID")))
}

fn with_etag(status: StatusCode, rec: Record) -> Response {
    let mut resp = json_text(status, rec.json);
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", rec.etag)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|s| s.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest("If-Match must be an ETag this API issued".into()))
}

fn query_pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or_default();
    serde_urlencoded::from_str::<Vec<(String, String)>>(&raw)
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))
}

/// List rows of a table in the organization, newest first by default.
///
/// Query: `limit` (1–200, default 50), `sort` (`col` or `-col`, indexed non-null columns),
/// `cursor` (from `next_cursor`), filters `col=value` or `col.lt|lte|gt|gte=value` on indexed
/// columns. Soft-deleted rows are not listed.
#[utoipa::path(get, operation_id = "list_rows", path = "/v1/orgs/{org}/{table}", tag = "records",
    params(("org" = String, Path, description = "Organization id or slug"),
           ("table" = String, Path, description = "Tenant table, e.g. notes, projects, tasks")),
    responses((status = 200, description = "`{\"items\": [...], \"next_cursor\": ...}`", body = Object),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 422, description = "Bad limit, sort, filter or cursor", body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let t = table(&state, &name).await?;
    let q = ListQuery::parse(&t, &query_pairs(raw)?)?;
    let page = records::list(&state.pool, &caller, &org, &t, &state.fields, &q).await?;
    let cursor = match page.next_cursor {
        Some(c) => format!("\"{c}\""),
        None => "null".into(),
    };
    Ok(json_text(
        StatusCode::OK,
        format!("{{\"items\":{},\"next_cursor\":{cursor}}}", page.items),
    ))
}

/// One row by id. The `ETag` header is its version, for `If-Match` on PATCH.
#[utoipa::path(get, operation_id = "get_row", path = "/v1/orgs/{org}/{table}/{id}", tag = "records",
    params(("org" = String, Path), ("table" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, name, id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let t = table(&state, &name).await?;
    let id = parse_id(&id)?;
    let rec = records::get(&state.pool, &caller, &org, &t, &state.fields, id).await?;
    Ok(with_etag(StatusCode::OK, rec))
}

/// Create a row. The body holds the table's own columns (unknown fields are refused; org,
/// timestamps and authorship are set by the server); `id` is optional. Answers the row.
#[utoipa::path(post, operation_id = "create_row", path = "/v1/orgs/{org}/{table}", tag = "records", request_body = Object,
    params(("org" = String, Path), ("table" = String, Path)),
    responses((status = 201, body = Object), (status = 400, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let t = table(&state, &name).await?;
    let body = object(body)?;
    records::validate(&t, &body, true)?;
    let rec = records::create(&state.pool, &caller, &org, &t, &state.fields, body).await?;
    Ok(with_etag(StatusCode::CREATED, rec))
}

fn object(v: Value) -> Result<Map<String, Value>, ApiError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::field(
            crate::error::WHOLE_BODY,
            "must be a JSON object",
        )),
    }
}

/// Change some columns of a row. With `If-Match: <ETag>` the change applies only if the row is
/// unchanged since it was read (else 412).
#[utoipa::path(patch, operation_id = "update_row", path = "/v1/orgs/{org}/{table}/{id}", tag = "records", request_body = Object,
    params(("org" = String, Path), ("table" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 412, description = "Changed since read", body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let t = table(&state, &name).await?;
    let id = parse_id(&id)?;
    let expected = if_match(&headers)?;
    let body = object(body)?;
    records::validate(&t, &body, false)?;
    let rec = records::update(
        &state.pool,
        &caller,
        &org,
        &t,
        &state.fields,
        id,
        records::Patch {
            body,
            if_match: expected,
        },
    )
    .await?;
    Ok(with_etag(StatusCode::OK, rec))
}

/// Soft-delete a row (own rows, or app admins). `orgbase purge` removes it after the grace
/// period; until then `POST …/{id}/restore` brings it back.
#[utoipa::path(delete, operation_id = "delete_row", path = "/v1/orgs/{org}/{table}/{id}", tag = "records",
    params(("org" = String, Path), ("table" = String, Path), ("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, name, id)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let t = table(&state, &name).await?;
    let id = parse_id(&id)?;
    records::delete(&state.pool, &caller, &org, &t, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Undo a soft delete.
#[utoipa::path(post, operation_id = "restore_row", path = "/v1/orgs/{org}/{table}/{id}/restore", tag = "records",
    params(("org" = String, Path), ("table" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 404, body = Problem)))]
pub async fn restore(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, name, id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let t = table(&state, &name).await?;
    let id = parse_id(&id)?;
    let rec = records::restore(&state.pool, &caller, &org, &t, &state.fields, id).await?;
    Ok(with_etag(StatusCode::OK, rec).into_response())
}
