//! Operational endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` when the check passed.
    pub status: &'static str,
    /// The orgbase version.
    pub version: &'static str,
}

/// Liveness: the process is up and answering. Does not touch the database.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: orgbase_core::VERSION,
    })
}

/// Readiness: the database is reachable as the runtime role and migrated to this binary's version.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = Health),
        (status = 503, description = "Database unreachable or not migrated", body = crate::error::Problem,
         content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    orgbase_db::database::readiness(&state.pool, state.latest_migration)
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(Json(Health {
        status: "ok",
        version: orgbase_core::VERSION,
    }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .encode()
        .map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(resp)
}

/// This OpenAPI 3.1 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    let mut resp = state.openapi.as_ref().clone().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
