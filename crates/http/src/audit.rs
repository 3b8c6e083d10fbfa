//! The audit trail over HTTP: organization admins query their organization's entries and check
//! its hash chain (docs/audit.md).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use orgbase_db::request::{self, Context, ReqError};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Bearer, json_text};
use crate::orgs::admin_only;

/// The filters of an audit query, checked.
#[derive(Debug, Default)]
struct Filters {
    actor: Option<Uuid>,
    table: Option<String>,
    record: Option<String>,
    action: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    cursor: Option<i64>,
    limit: i64,
}

fn bad(field: &str, message: impl std::fmt::Display) -> ApiError {
    crate::extract::query_error(field, message)
}

fn time(field: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| bad(field, format!("{v:?} is not an RFC 3339 time")))
}

impl Filters {
    fn parse(raw: Option<String>) -> Result<Self, ApiError> {
        let pairs = crate::extract::query_pairs(raw)?;
        let mut f = Filters {
            limit: 50,
            ..Default::default()
        };
        for (k, v) in pairs {
            match k.as_str() {
                "actor" => {
                    f.actor = Some(
                        Uuid::parse_str(&v).map_err(|_| bad("actor", "not a user id (UUID)"))?,
                    );
                }
                "table" => f.table = Some(v),
                "record" => f.record = Some(v),
                "action" => f.action = Some(v),
                "from" => f.from = Some(time("from", &v)?),
                "to" => f.to = Some(time("to", &v)?),
                "cursor" => {
                    f.cursor = Some(
                        v.parse::<i64>()
                            .ok()
                            .filter(|c| *c > 0)
                            .ok_or_else(|| bad("cursor", "use the next_cursor of a page"))?,
                    );
                }
                "limit" => {
                    f.limit = v
                        .parse::<i64>()
                        .ok()
                        .filter(|l| (1..=200).contains(l))
                        .ok_or_else(|| bad("limit", "must be 1 to 200"))?;
                }
                other => {
                    return Err(bad(
                        other,
                        "unknown; use actor, table, record, action, from, to, cursor or limit",
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// Audit entries of the organization, newest first. Owners and admins only.
///
/// Query: `actor` (user id), `table` (`notes` or `orgbase.notes`), `record` (row id), `action`
/// (`insert`, `update`, `delete`, `soft_delete`, `restore`), `from` / `to` (RFC 3339, `to`
/// exclusive), `limit` (1–200, default 50), `cursor` (from `next_cursor`). Each entry carries
/// its chain position (`seq`, null until sealed, within about a second).
#[utoipa::path(get, operation_id = "list_audit_entries", path = "/v1/orgs/{org}/audit", tag = "audit",
    params(("org" = String, Path, description = "Organization id or slug"),
           ("actor" = Option<Uuid>, Query), ("table" = Option<String>, Query),
           ("record" = Option<String>, Query), ("action" = Option<String>, Query),
           ("from" = Option<String>, Query), ("to" = Option<String>, Query),
           ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "`{\"items\": [...], \"next_cursor\": ...}`", body = Object),
              (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let f = Filters::parse(raw)?;
    let body = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            let row = c
                .query_one(
                    "WITH page AS (
                         SELECT a.id, a.seq, a.at, a.actor_kind, a.actor_user, a.actor_key,
                                a.action, a.table_name, a.record_id, a.old, a.new,
                                host(a.ip) AS ip, a.user_agent, a.request_id, a.redacted_at
                           FROM orgbase.audit_log a
                          WHERE a.org_id = $1
                            AND ($2::uuid IS NULL OR a.actor_user = $2)
                            AND ($3::text IS NULL OR a.table_name = $3
                                 OR a.table_name = 'orgbase.' || $3)
                            AND ($4::text IS NULL OR a.record_id = $4)
                            AND ($5::text IS NULL OR a.action = $5)
                            AND ($6::timestamptz IS NULL OR a.at >= $6)
                            AND ($7::timestamptz IS NULL OR a.at < $7)
                            AND ($8::int8 IS NULL OR a.id < $8)
                          ORDER BY a.id DESC
                          LIMIT $9)
                     SELECT coalesce(jsonb_agg(to_jsonb(page) ORDER BY page.id DESC), '[]')::text,
                            count(*), min(page.id)
                       FROM page",
                    &[
                        &ctx.org_id,
                        &f.actor,
                        &f.table,
                        &f.record,
                        &f.action,
                        &f.from,
                        &f.to,
                        &f.cursor,
                        &f.limit,
                    ],
                )
                .await?;
            let items: String = row.get(0);
            // Encrypted values shown decrypted where their key exists, as the export shows them.
            let items = match serde_json::from_str::<serde_json::Value>(&items) {
                Ok(mut list) => {
                    let catalog = state.catalog();
                    for entry in list.as_array_mut().into_iter().flatten() {
                        orgbase_db::gdpr::open_audit_values(
                            &state.fields,
                            &catalog,
                            entry,
                            "table_name",
                        );
                    }
                    list.to_string()
                }
                Err(_) => items,
            };
            let n: i64 = row.get(1);
            let last: Option<i64> = row.get(2);
            let next = match last {
                Some(id) if n == f.limit => format!("\"{id}\""),
                _ => "null".into(),
            };
            Ok::<_, ReqError>(format!("{{\"items\":{items},\"next_cursor\":{next}}}"))
        },
    )
    .await?;
    Ok(json_text(StatusCode::OK, body))
}

/// Recompute the organization's hash chain and compare it with the server's signed checkpoints.
/// Owners and admins only. `ok` is false when an entry was altered, deleted, inserted or
/// reordered; `problem` names the first such entry.
#[utoipa::path(get, path = "/v1/orgs/{org}/audit/verify", tag = "audit",
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, description = "`{\"ok\", \"entries\", \"unsealed\", \"head_seq\", \"checkpoints_checked\", \"problem\"}`", body = Object),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn verify(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let (checkpoints, checkpoint_error) = match state.checkpoints.as_deref() {
        Some((dir, key)) => match orgbase_db::audit::load_checkpoints(dir, Some(key)) {
            Ok(c) => (c, None),
            Err(e) => (vec![], Some(e)),
        },
        None => (vec![], None),
    };
    let report = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            let reports = orgbase_db::audit::verify(c, Some(ctx.org_id), &checkpoints, |_| {})
                .await
                .map_err(|e| ReqError::Unavailable(e.to_string()))?;
            Ok::<_, ReqError>((ctx.org_id, reports.into_iter().next()))
        },
    )
    .await?;
    let (org_id, chain) = report;
    let mut body = match chain {
        Some(r) => serde_json::to_value(&r).map_err(|e| ApiError::Internal(Box::new(e)))?,
        None => serde_json::json!({"org_id": org_id, "entries": 0, "unsealed": 0, "redacted": 0,
                                    "head_seq": 0, "checkpoints_checked": 0, "problem": null}),
    };
    let ok = body.get("problem").is_some_and(|p| p.is_null()) && checkpoint_error.is_none();
    if let Some(map) = body.as_object_mut() {
        map.insert("ok".into(), ok.into());
        if let Some(e) = checkpoint_error {
            map.insert("checkpoint_error".into(), e.into());
        }
    }
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}
