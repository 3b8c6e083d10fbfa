//! Consent records, retention policies and legal holds over HTTP (docs/retention.md). Every
//! statement runs in the request transaction; row-level security on the tables (migration 0008)
//! limits what each role can read and write, whatever SQL runs.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orgbase_core::retention::{CONSENT_SOURCES, DataType, Keep, valid_purpose};
use orgbase_db::request::{self, Context, ReqError};
use orgbase_db::retention::interval_parts;
use serde::Deserialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, FieldProblem, Problem};
use crate::extract::{Bearer, JsonBody, json_text};
use crate::orgs::admin_only;

fn bad(field: &str, message: impl std::fmt::Display) -> ApiError {
    crate::extract::query_error(field, message)
}

// Consent ------------------------------------------------------------------------------------

const CONSENT_JSON: &str = "json_build_object('id', c.id, 'subject', c.subject_id, \
     'purpose', c.purpose, 'granted', c.status = 'granted', 'status', c.status, 'at', c.at, \
     'source', c.source, 'recorded_by', c.recorded_by)";

/// Whose consent records a listing is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Me,
    One(Uuid),
    All,
}

#[derive(Debug)]
struct ConsentQuery {
    subject: Subject,
    purpose: Option<String>,
    cursor: Option<Uuid>,
    limit: i64,
}

impl ConsentQuery {
    fn parse(raw: Option<String>) -> Result<Self, ApiError> {
        let pairs = crate::extract::query_pairs(raw)?;
        let mut q = ConsentQuery {
            subject: Subject::Me,
            purpose: None,
            cursor: None,
            limit: 100,
        };
        for (k, v) in pairs {
            match k.as_str() {
                "subject" if v == "all" => q.subject = Subject::All,
                "subject" => {
                    q.subject = Subject::One(
                        Uuid::parse_str(&v)
                            .map_err(|_| bad("subject", "a user id (UUID) or `all`"))?,
                    );
                }
                "purpose" if valid_purpose(&v) => q.purpose = Some(v),
                "purpose" => return Err(bad("purpose", "not a purpose name")),
                "cursor" => {
                    q.cursor = Some(
                        Uuid::parse_str(&v)
                            .map_err(|_| bad("cursor", "use the next_cursor of a page"))?,
                    );
                }
                "limit" => {
                    q.limit = v
                        .parse::<i64>()
                        .ok()
                        .filter(|l| (1..=500).contains(l))
                        .ok_or_else(|| bad("limit", "must be 1 to 500"))?;
                }
                other => {
                    return Err(bad(other, "unknown; use subject, purpose, cursor or limit"));
                }
            }
        }
        Ok(q)
    }
}

/// Consent records in the organization, newest first, and the current state per purpose.
///
/// By default the caller's own records. Owners and admins may ask for one member's
/// (`subject=<user id>`) or everyone's (`subject=all`). Query: `purpose`, `limit` (1–500,
/// default 100), `cursor` (from `next_cursor`). `current` (one entry per purpose, the newest
/// decision) is given when the listing is about one person.
#[utoipa::path(get, path = "/v1/orgs/{org}/consents", tag = "consent",
    params(("org" = String, Path, description = "Organization id or slug"),
           ("subject" = Option<String>, Query, description = "A user id, or `all` (admins)"),
           ("purpose" = Option<String>, Query), ("limit" = Option<i64>, Query),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "`{\"items\": [...], \"current\": [...], \"next_cursor\": ...}`", body = Object),
              (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_consents(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = ConsentQuery::parse(raw)?;
    let body = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            let subject = match q.subject {
                Subject::Me => Some(ctx.user_id),
                Subject::One(u) if u == ctx.user_id => Some(u),
                Subject::One(u) => {
                    admin_only(ctx)?;
                    Some(u)
                }
                Subject::All => {
                    admin_only(ctx)?;
                    None
                }
            };
            let row = c
                .query_one(
                    &format!(
                        "WITH page AS (
                             SELECT c.* FROM orgbase.consents c
                              WHERE c.org_id = $1
                                AND ($2::uuid IS NULL OR c.subject_id = $2)
                                AND ($3::text IS NULL OR c.purpose = $3)
                                AND ($4::uuid IS NULL OR (c.at, c.id) < (
                                     SELECT k.at, k.id FROM orgbase.consents k
                                      WHERE k.org_id = $1 AND k.id = $4))
                              ORDER BY c.at DESC, c.id DESC
                              LIMIT $5
                         ), cur AS (
                             SELECT DISTINCT ON (c.purpose) c.*
                               FROM orgbase.consents c
                              WHERE c.org_id = $1 AND c.subject_id = $2
                                AND ($3::text IS NULL OR c.purpose = $3)
                              ORDER BY c.purpose, c.at DESC, c.id DESC
                         )
                         SELECT json_build_object(
                                    'items', coalesce((SELECT json_agg({CONSENT_JSON} ORDER BY c.at DESC, c.id DESC)
                                                         FROM page c), '[]'),
                                    'current', CASE WHEN $2::uuid IS NULL THEN NULL ELSE
                                               coalesce((SELECT json_agg({CONSENT_JSON} ORDER BY c.purpose)
                                                           FROM cur c), '[]') END,
                                    'next_cursor', CASE WHEN (SELECT count(*) FROM page) = $5
                                                        THEN (SELECT p.id FROM page p
                                                               ORDER BY p.at, p.id LIMIT 1) END)::text"
                    ),
                    &[&ctx.org_id, &subject, &q.purpose, &q.cursor, &q.limit],
                )
                .await?;
            Ok::<_, ReqError>(row.get::<_, String>(0))
        },
    )
    .await?;
    Ok(json_text(StatusCode::OK, body))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConsent {
    /// What the consent is for: lowercase letters, digits and `_ . : -` (e.g. `marketing_email`).
    pub purpose: String,
    /// true: consent given; false: consent withdrawn.
    pub granted: bool,
    /// Where the decision was made: `api` (default), `ui` or `import`.
    #[serde(default)]
    pub source: Option<String>,
    /// The member the decision is about (owners and admins recording for someone else, e.g. an
    /// import); default the caller.
    #[serde(default)]
    pub subject: Option<Uuid>,
}

/// Record a consent decision (grant or withdrawal) for a purpose. History is kept: a withdrawal
/// is a new record, never a change of the old one. Members record their own; owners and admins
/// may record one for any member of the organization. Audited.
#[utoipa::path(post, path = "/v1/orgs/{org}/consents", tag = "consent", request_body = NewConsent,
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 201, description = "The record", body = Object),
              (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn record_consent(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<NewConsent>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    if !valid_purpose(&body.purpose) {
        errors.push(FieldProblem {
            field: "purpose".into(),
            message: "1–100 characters: lowercase letters, digits and _ . : -, starting with a \
                      letter"
                .into(),
        });
    }
    let source = body.source.unwrap_or_else(|| "api".into());
    if !CONSENT_SOURCES.contains(&source.as_str()) {
        errors.push(FieldProblem {
            field: "source".into(),
            message: format!("one of {}", CONSENT_SOURCES.join(", ")),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let status = if body.granted { "granted" } else { "withdrawn" };
    let json = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            let subject = body.subject.unwrap_or(ctx.user_id);
            if subject != ctx.user_id {
                admin_only(ctx)?;
            }
            let row = c
                .query_one(
                    &format!(
                        "WITH c AS (INSERT INTO orgbase.consents (org_id, id, subject_id, purpose, status, source)
                                    VALUES ($1, $2, $3, $4, $5, $6) RETURNING *)
                         SELECT {CONSENT_JSON}::text FROM c"
                    ),
                    &[&ctx.org_id, &Uuid::now_v7(), &subject, &body.purpose, &status, &source],
                )
                .await?;
            Ok::<_, ReqError>(row.get::<_, String>(0))
        },
    )
    .await?;
    Ok(json_text(StatusCode::CREATED, json))
}

// Retention policies ---------------------------------------------------------------------------

/// Every data type with its policy, default and the period in force, as JSON.
async fn policies_json(c: &Client, org: Uuid) -> Result<serde_json::Value, ReqError> {
    let types: Vec<&str> = DataType::ALL.iter().map(|t| t.as_str()).collect();
    let rows = c
        .query(
            &format!(
                "SELECT t.data_type, p.keep IS NOT NULL, p.updated_at, p.updated_by,
                        {}, {}, {}
                   FROM unnest($2::text[]) WITH ORDINALITY AS t (data_type, n)
                   CROSS JOIN (SELECT coalesce('hipaa' = ANY (o.compliance), false) AS hipaa
                                 FROM orgbase.organizations o WHERE o.id = $1) h
                   LEFT JOIN orgbase.retention_policies p
                          ON p.org_id = $1 AND p.data_type = t.data_type
                  ORDER BY t.n",
                interval_parts("coalesce(p.keep, interval '0')"),
                interval_parts("orgbase.retention_default(t.data_type, h.hipaa)"),
                interval_parts("orgbase.retention_keep($1, t.data_type)"),
            ),
            &[&org, &types],
        )
        .await?;
    let keep = |r: &tokio_postgres::Row, i: usize| {
        Keep::from_interval(r.get(i), r.get(i + 1), r.get(i + 2)).to_string()
    };
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let has_policy: bool = r.get(1);
            serde_json::json!({
                "data_type": r.get::<_, String>(0),
                "policy": if has_policy { Some(keep(r, 4)) } else { None },
                "default": keep(r, 7),
                "keep": keep(r, 10),
                "updated_at": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(2),
                "updated_by": r.get::<_, Option<Uuid>>(3),
            })
        })
        .collect();
    Ok(serde_json::json!({ "items": items }))
}

/// The organization's retention policies: for every data type its own policy (or null), the
/// default, and the period in force (`keep`). Owners and admins only.
///
/// Data types: `sessions`, `soft_deleted`, `accounts`, `audit`, `access_log`, `exports`,
/// `backups` (docs/retention.md). Periods are written `24h`, `90d`, `2w`, `18mo`, `6y`.
#[utoipa::path(get, path = "/v1/orgs/{org}/retention", tag = "consent",
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, description = "`{\"items\": [{\"data_type\", \"policy\", \"default\", \"keep\", …}]}`", body = Object),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_retention(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let body = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            policies_json(c, ctx.org_id).await
        },
    )
    .await?;
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicies {
    /// Data type → keep period (`24h`, `90d`, `2w`, `18mo`, `6y`; 1 hour to 100 years). The
    /// complete set: a type left out goes back to its default.
    #[schema(value_type = Object)]
    pub policies: BTreeMap<String, String>,
}

/// Replace the organization's retention policies (owners and admins). Types left out go back
/// to their defaults. `audit` and `access_log` cannot be set below their defaults (1 year; 6
/// years for HIPAA organizations). Any invalid entry: 422 naming each, nothing written.
/// Changes are audited.
#[utoipa::path(put, path = "/v1/orgs/{org}/retention", tag = "consent", request_body = RetentionPolicies,
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, description = "The policies now in force, as GET returns them", body = Object),
              (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn put_retention(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<RetentionPolicies>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let mut parsed: Vec<(DataType, Keep)> = Vec::new();
    for (name, keep) in &body.policies {
        let field = format!("policies.{name}");
        let Some(t) = DataType::parse(name) else {
            errors.push(FieldProblem {
                field,
                message: format!(
                    "unknown data type; use one of {}",
                    DataType::ALL.map(|t| t.as_str()).join(", ")
                ),
            });
            continue;
        };
        match Keep::parse(keep) {
            Ok(k) => parsed.push((t, k)),
            Err(message) => errors.push(FieldProblem { field, message }),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let types: Vec<&str> = parsed.iter().map(|(t, _)| t.as_str()).collect();
    let keeps: Vec<String> = parsed.iter().map(|(_, k)| k.sql()).collect();
    let outcome = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            // Floors: audit and access_log never shorter than their defaults.
            let short = c
                .query(
                    "SELECT x.t FROM unnest($2::text[], $3::text[]) AS x (t, k),
                            (SELECT coalesce('hipaa' = ANY (o.compliance), false) AS hipaa
                               FROM orgbase.organizations o WHERE o.id = $1) h
                      WHERE x.t IN ('audit', 'access_log')
                        AND x.k::interval < orgbase.retention_default(x.t, h.hipaa)",
                    &[&ctx.org_id, &types, &keeps],
                )
                .await?;
            if !short.is_empty() {
                return Ok(Err(short
                    .iter()
                    .map(|r| {
                        let t: String = r.get(0);
                        FieldProblem {
                            field: format!("policies.{t}"),
                            message: "shorter than the legal minimum for this organization \
                                      (1y; 6y when HIPAA-flagged)"
                                .into(),
                        }
                    })
                    .collect::<Vec<_>>()));
            }
            c.execute(
                "DELETE FROM orgbase.retention_policies
                  WHERE org_id = $1 AND NOT data_type = ANY ($2::text[])",
                &[&ctx.org_id, &types],
            )
            .await?;
            c.execute(
                "INSERT INTO orgbase.retention_policies (org_id, data_type, keep)
                 SELECT $1, x.t, x.k::interval FROM unnest($2::text[], $3::text[]) AS x (t, k)
                 ON CONFLICT (org_id, data_type) DO UPDATE SET keep = EXCLUDED.keep
                  WHERE retention_policies.keep IS DISTINCT FROM EXCLUDED.keep",
                &[&ctx.org_id, &types, &keeps],
            )
            .await?;
            Ok(Ok(policies_json(c, ctx.org_id).await?))
        },
    );
    // Floors are checked before anything is written.
    match outcome.await {
        Ok(Ok(body)) => Ok((StatusCode::OK, axum::Json(body)).into_response()),
        Ok(Err(errors)) => Err(ApiError::Validation(errors)),
        Err(e) => Err(e.into()),
    }
}

// Legal holds ----------------------------------------------------------------------------------

const HOLD_JSON: &str = "json_build_object('id', h.id, 'subject', h.subject_id, \
     'reason', h.reason, 'placed_by', h.placed_by, 'placed_at', h.placed_at, \
     'released_by', h.released_by, 'released_at', h.released_at, 'active', h.released_at IS NULL)";

/// The organization's legal holds, active first, then newest first. Owners and admins only.
#[utoipa::path(get, path = "/v1/orgs/{org}/legal-holds", tag = "consent",
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, description = "`{\"items\": [...]}`", body = Object),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_holds(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let sql = format!(
        "SELECT json_build_object('items', coalesce(json_agg({HOLD_JSON} \
         ORDER BY h.released_at IS NOT NULL, h.placed_at DESC, h.id DESC), '[]'))::text \
         FROM orgbase.legal_holds h WHERE h.org_id = $1"
    );
    let json = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            Ok::<_, ReqError>(c.query_one(&sql, &[&ctx.org_id]).await?.get::<_, String>(0))
        },
    )
    .await?;
    Ok(json_text(StatusCode::OK, json))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewHold {
    /// Why (case, matter, request): 1–2000 characters.
    pub reason: String,
    /// A member of the organization to hold; absent: the whole organization.
    #[serde(default)]
    pub subject: Option<Uuid>,
}

/// Place a legal hold on the organization or on one member: while active, retention deletes
/// nothing it covers (and the erasure flow asks `orgbase.on_legal_hold`). Owners and admins.
/// Audited.
#[utoipa::path(post, path = "/v1/orgs/{org}/legal-holds", tag = "consent", request_body = NewHold,
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 201, description = "The hold", body = Object),
              (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn place_hold(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<NewHold>,
) -> Result<Response, ApiError> {
    let reason = body.reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > 2000 {
        return Err(ApiError::field("reason", "must be 1 to 2000 characters"));
    }
    let sql = format!(
        "WITH h AS (INSERT INTO orgbase.legal_holds (org_id, id, subject_id, reason) \
         VALUES ($1, $2, $3, $4) RETURNING *) SELECT {HOLD_JSON}::text FROM h"
    );
    let json = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            let row = c
                .query_one(
                    &sql,
                    &[&ctx.org_id, &Uuid::now_v7(), &body.subject, &reason],
                )
                .await?;
            Ok::<_, ReqError>(row.get::<_, String>(0))
        },
    )
    .await?;
    Ok(json_text(StatusCode::CREATED, json))
}

/// Release a legal hold (owners and admins). A hold is released once: 409 when it already is.
/// Audited.
#[utoipa::path(post, path = "/v1/orgs/{org}/legal-holds/{id}/release", tag = "consent",
    params(("org" = String, Path, description = "Organization id or slug"), ("id" = Uuid, Path)),
    responses((status = 200, description = "The released hold", body = Object),
              (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn release_hold(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path((org, id)): Path<(String, Uuid)>,
) -> Result<Response, ApiError> {
    let sql = format!(
        "WITH h AS (UPDATE orgbase.legal_holds SET released_at = now(), \
         released_by = orgbase.ctx_user() WHERE org_id = $1 AND id = $2 RETURNING *) \
         SELECT {HOLD_JSON}::text FROM h"
    );
    let json = request::many(
        &state.pool,
        &caller,
        &org,
        async |c: &Client, ctx: &Context| {
            admin_only(ctx)?;
            let rows = c.query(&sql, &[&ctx.org_id, &id]).await?;
            rows.first()
                .map(|r| r.get::<_, String>(0))
                .ok_or(ReqError::NotFound)
        },
    )
    .await?;
    Ok(json_text(StatusCode::OK, json))
}
