//! Differentially private aggregates over a tenant table, and the organization's privacy
//! budget (docs/analytics.md).
//!
//! A query runs in one request transaction: the charge (`orgbase.privacy_charge`, which checks
//! who may spend the budget and locks the period's spend), the exact figures under the caller's
//! own tenant context, then the noise, then COMMIT. The ε is reserved before any noise is drawn;
//! a query that fails rolls back and so costs nothing, and a server that dies before COMMIT
//! leaves neither an answer nor a charge.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orgbase_analytics::{Aggregate, Plan, epsilon_micro, epsilon_of};
use orgbase_db::analytics::{self as store, Budget, Figures, encrypted_class};
use orgbase_db::catalog::{Column, Kind as ColumnKind, Table};
use orgbase_db::observe::{Kind, Label};
use orgbase_db::request::{self, Context, ReqError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Bearer, JsonBody, json_text};

/// ε as a number, or as the string `"NaN"`, `"Infinity"`, … (which are refused by name).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Epsilon {
    Number(f64),
    Text(String),
}

/// A differentially private aggregate.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    /// A tenant table (its name in URLs: `notes`, `tasks`, …).
    pub table: String,
    /// `count`, `sum` or `mean`.
    pub aggregate: String,
    /// The numeric column summed or averaged (not for `count`). Encrypted columns cannot be
    /// aggregated: the database holds only their ciphertext.
    #[serde(default)]
    pub column: Option<String>,
    /// `[lower, upper]`: every value is clamped into them before it counts (sum and mean). Fix
    /// them from what the column can hold, never from the data.
    #[serde(default)]
    #[schema(value_type = Option<Vec<f64>>)]
    pub bounds: Option<(f64, f64)>,
    /// The most rows of one person that count (1 to 1000, default 1); the person is the
    /// member who created the row. A larger bound keeps more data and needs more noise.
    #[serde(default)]
    pub contributions: Option<u32>,
    /// A column to group by, over the public `keys`.
    #[serde(default)]
    pub group_by: Option<String>,
    /// The group keys (1 to 1000, as text), decided without looking at the data: every key is
    /// answered, with noise, whether or not any row has it, and rows with other values are
    /// left out.
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// Only rows whose columns equal these values (compared as text), at most 10.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filters: Option<BTreeMap<String, Value>>,
    /// The privacy loss to spend on this query: greater than 0, a whole number of millionths,
    /// at most the per-query limit; charged against the organization's budget.
    #[schema(value_type = f64)]
    pub epsilon: Epsilon,
}

/// One answer of a differentially private query.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnalyticsAnswer {
    /// The ledger entry this query was charged under.
    pub charge_id: Uuid,
    pub table: String,
    pub aggregate: String,
    pub column: Option<String>,
    /// The noisy value, without a group-by.
    pub value: Option<f64>,
    /// The noisy value of each key, in the order asked, with a group-by.
    #[schema(value_type = Option<Vec<Object>>)]
    pub groups: Option<Vec<Value>>,
    pub epsilon_spent: f64,
    pub budget: Budget,
    /// How the noise was drawn: each part's ε, L1 sensitivity and Laplace scale.
    #[schema(value_type = Object)]
    pub mechanism: Value,
}

fn field(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(name, message)
}

/// A column that may be read in plaintext by a query.
fn plain_column<'a>(table: &'a Table, name: &str, what: &str) -> Result<&'a Column, ApiError> {
    let column = table
        .column(name)
        .ok_or_else(|| field(what, format!("{} has no column {name:?}", table.name)))?;
    if encrypted_class(&column.class) {
        return Err(field(
            what,
            format!(
                "{name} is {} and encrypted: the database holds only its ciphertext",
                column.class
            ),
        ));
    }
    Ok(column)
}

/// The scalar text a filter value is compared with.
fn filter_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Everything a query needs before it touches the database, checked: the plan of its noise,
/// the figures to compute, and the query as the ledger records it.
#[derive(Debug)]
pub struct Checked<'a> {
    pub plan: Plan,
    pub figures: Figures<'a>,
    pub record: Value,
}

/// Check a query against its table (422 naming the field for anything wrong).
pub fn check<'a>(q: &AnalyticsQuery, table: &'a Table) -> Result<Checked<'a>, ApiError> {
    let aggregate = Aggregate::parse(&q.aggregate)
        .ok_or_else(|| field("aggregate", "one of count, sum, mean"))?;
    let epsilon = match &q.epsilon {
        Epsilon::Number(e) => *e,
        Epsilon::Text(t) => t
            .parse::<f64>()
            .map_err(|_| field("epsilon", "must be a number"))?,
    };
    let micro = epsilon_micro(epsilon).map_err(|e| field(e.field, e.message))?;
    let column = match (&q.column, aggregate.needs_column()) {
        (None, true) => return Err(field("column", "a sum or mean needs a numeric column")),
        (Some(_), false) => return Err(field("column", "a count has no column: leave it out")),
        (None, false) => None,
        (Some(name), true) => {
            let c = plain_column(table, name, "column")?;
            if !matches!(c.kind, ColumnKind::Integer | ColumnKind::Number) {
                return Err(field("column", format!("{name} is not numeric")));
            }
            Some(c)
        }
    };
    let plan = Plan::new(aggregate, q.bounds, q.contributions.unwrap_or(1), micro)
        .map_err(|e| field(e.field, e.message))?;
    let (group_by, keys) = match (&q.group_by, &q.keys) {
        (None, None) => (None, Vec::new()),
        (None, Some(_)) => return Err(field("keys", "keys need a group_by column")),
        (Some(_), None) => {
            return Err(field(
                "keys",
                "a group-by needs its public key set: the keys to answer, decided without the data",
            ));
        }
        (Some(name), Some(keys)) => {
            let c = plain_column(table, name, "group_by")?;
            if matches!(
                c.kind,
                ColumnKind::Json | ColumnKind::TextArray | ColumnKind::Other
            ) {
                return Err(field("group_by", format!("{name} cannot be grouped by")));
            }
            let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
            if keys.is_empty()
                || keys.len() > orgbase_analytics::MAX_GROUPS
                || unique.len() != keys.len()
                || keys.iter().any(|k| k.len() > 200)
            {
                return Err(field(
                    "keys",
                    "1 to 1000 distinct keys of at most 200 bytes each",
                ));
            }
            (Some(c), keys.clone())
        }
    };
    let mut filters = Vec::new();
    for (name, value) in q.filters.iter().flatten() {
        let c = plain_column(table, name, &format!("filters.{name}"))?;
        let text = filter_text(value).ok_or_else(|| {
            field(
                &format!("filters.{name}"),
                "must be a string, number or boolean",
            )
        })?;
        filters.push((c, text));
    }
    if filters.len() > 10 {
        return Err(field("filters", "at most 10"));
    }
    let record = json!({
        "table": table.name,
        "aggregate": q.aggregate,
        "column": q.column,
        "bounds": q.bounds,
        "contributions": plan.contributions,
        "group_by": q.group_by,
        "keys": keys,
        "filters": q.filters,
        "epsilon": epsilon_of(micro),
    });
    Ok(Checked {
        figures: Figures {
            table,
            column,
            bounds: plan.bounds,
            group_by,
            keys,
            filters,
            contributions: plan.contributions,
        },
        plan,
        record,
    })
}

/// Answer a count, sum or mean over a tenant table with differential privacy.
///
/// For the organization's owners and admins, and API keys with the `analytics` scope made by
/// one of them (which also need read access to the table's app). The ε asked for is charged to
/// the organization's privacy budget before any noise is drawn, in the same transaction as the
/// figures; a refused or failed query costs nothing. When the budget cannot pay: 422
/// `privacy-budget-exhausted`. Each person (the member who created a row) contributes at most
/// `contributions` rows, and every value is clamped into `bounds`; the noise is Laplace
/// (discrete over counts) with scale sensitivity/ε, drawn by OpenDP. A mean spends half its ε
/// on the sum and half on the count.
#[utoipa::path(post, path = "/v1/orgs/{org}/analytics/query", tag = "analytics",
    request_body = AnalyticsQuery,
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, body = AnalyticsAnswer),
              (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem),
              (status = 422, description = "Invalid query (`validation`) or the budget cannot pay (`privacy-budget-exhausted`)", body = Problem),
              (status = 501, description = "Built without differential privacy (`not-built`)", body = Problem)))]
pub async fn query(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<AnalyticsQuery>,
) -> Result<Response, ApiError> {
    if !orgbase_analytics::ENABLED {
        return Err(ApiError::NotBuilt(
            "this orgbase was built without differential privacy: build it with the `dp` \
             feature (on by default)"
                .into(),
        ));
    }
    if state.catalog().get(&body.table).is_none() {
        state.reload_catalog().await?;
    }
    let catalog = state.catalog();
    let table = catalog.get(&body.table).ok_or_else(|| {
        field(
            "table",
            format!("no tenant table is called {:?}", body.table),
        )
    })?;
    let checked = check(&body, &table)?;
    let answer = request::many_as(
        &state.pool,
        Label::on(Kind::Analytics, &table.name),
        &caller,
        &org,
        async |c: &Client, ctx: &Context| answer(c, ctx, &table, &body, &checked).await,
    )
    .await?;
    Ok(json_text(
        StatusCode::OK,
        format!("{}\n", serde_json::to_string(&answer).unwrap_or_default()),
    ))
}

async fn answer(
    c: &Client,
    ctx: &Context,
    table: &Table,
    body: &AnalyticsQuery,
    checked: &Checked<'_>,
) -> Result<AnalyticsAnswer, ReqError> {
    let charge = store::charge(c, checked.plan.micro, &checked.record).await?;
    let level: i32 = c
        .query_one("SELECT orgbase.ctx_app_level($1)", &[&table.app])
        .await?
        .get(0);
    if level < 1 {
        return Err(ReqError::Forbidden(format!(
            "this credential cannot read the {} app's rows: an API key needs a scope such as {}:read beside analytics",
            table.app, table.app
        )));
    }
    let exact = store::figures(c, ctx.org_id, &checked.figures).await?;
    let mut noise = orgbase_analytics::noise().map_err(|e| ReqError::Unavailable(e.to_string()))?;
    let released = orgbase_analytics::release(&checked.plan, &exact, noise.as_mut())
        .map_err(|e| ReqError::Unavailable(e.to_string()))?;
    let budget = store::budget(c).await?;
    let (value, groups) = if checked.figures.group_by.is_some() {
        let groups = checked
            .figures
            .keys
            .iter()
            .zip(&released.values)
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        (None, Some(groups))
    } else {
        (released.values.first().copied(), None)
    };
    Ok(AnalyticsAnswer {
        charge_id: charge.id,
        table: table.name.clone(),
        aggregate: body.aggregate.clone(),
        column: body.column.clone(),
        value,
        groups,
        epsilon_spent: checked.plan.epsilon(),
        budget,
        mechanism: json!({
            "name": "laplace (OpenDP)",
            "contributions": checked.plan.contributions,
            "bounds": checked.plan.bounds,
            "parts": released.parts,
        }),
    })
}

/// The organization's privacy budget in the current period: ε budget, spent and left.
///
/// For owners, admins and API keys with the `analytics` scope.
#[utoipa::path(get, path = "/v1/orgs/{org}/analytics/budget", tag = "analytics",
    params(("org" = String, Path, description = "Organization id or slug")),
    responses((status = 200, body = Budget), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn budget(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let budget = request::many(&state.pool, &caller, &org, async |c: &Client, _| {
        store::budget(c).await
    })
    .await?;
    Ok(json_text(
        StatusCode::OK,
        format!("{}\n", serde_json::to_string(&budget).unwrap_or_default()),
    ))
}

/// The privacy-budget ledger: every answered query, newest first, with its ε, who asked and
/// the query as it was asked.
///
/// For owners, admins and API keys with the `analytics` scope. Query: `limit` (1–500, default
/// 100), `cursor` (the `next_cursor` of the previous page).
#[utoipa::path(get, path = "/v1/orgs/{org}/analytics/charges", tag = "analytics",
    params(("org" = String, Path, description = "Organization id or slug"),
           ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "`{\"items\": [...], \"next_cursor\": ...}`", body = Object),
              (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn charges(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    Path(org): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut limit: i32 = 100;
    let mut cursor: Option<Uuid> = None;
    for (k, v) in crate::extract::query_pairs(raw)? {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse::<i32>()
                    .ok()
                    .filter(|l| (1..=500).contains(l))
                    .ok_or_else(|| crate::extract::query_error("limit", "must be 1 to 500"))?;
            }
            "cursor" => {
                cursor = Some(Uuid::parse_str(&v).map_err(|_| {
                    crate::extract::query_error("cursor", "use the next_cursor of a page")
                })?);
            }
            other => {
                return Err(crate::extract::query_error(
                    other,
                    "unknown; use limit or cursor",
                ));
            }
        }
    }
    let text: String = request::many(&state.pool, &caller, &org, async |c: &Client, _| {
        let row = c
            .query_one(
                "WITH page AS (SELECT * FROM orgbase.privacy_charges_page($1, $2 + 1))
                 SELECT json_build_object(
                     'items', coalesce((SELECT json_agg(json_build_object(
                                  'id', p.id, 'epsilon', p.micro / 1e6, 'epsilon_micro', p.micro,
                                  'at', p.at, 'actor', p.actor, 'key_id', p.key_id,
                                  'period_start', p.period_start, 'query', p.query)
                                  ORDER BY p.at DESC, p.id DESC)
                                  FROM (SELECT * FROM page ORDER BY at DESC, id DESC LIMIT $2) p), '[]'),
                     'next_cursor', CASE WHEN (SELECT count(*) FROM page) > $2
                                         THEN (SELECT id FROM (SELECT * FROM page ORDER BY at DESC, id DESC LIMIT $2) l
                                                ORDER BY at, id LIMIT 1) END)::text",
                &[&cursor, &limit],
            )
            .await?;
        Ok(row.get(0))
    })
    .await?;
    Ok(json_text(StatusCode::OK, format!("{text}\n")).into_response())
}
