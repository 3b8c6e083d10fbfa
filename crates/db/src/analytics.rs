//! Anonymized analytics (docs/analytics.md), the database side: the k-anonymous dataset in the
//! `analytics` schema, the exact figures a differentially private query adds noise to, and the
//! privacy-budget ledger (migration 0012).
//!
//! The dataset is rebuilt table by table by the administrator (who reads every organization's
//! rows): each column goes in as its rule says ([`Rule`]), rows of people whose erasure was asked
//! for stay out, and rows whose combination of quasi-identifiers is shared by fewer than k rows
//! are suppressed. What each refresh achieved is kept in `orgbase.analytics_refreshes`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use futures_util::TryStreamExt as _;
use rand::SeedableRng as _;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::catalog::{Catalog, Column, Kind, Table, quote_ident};
use crate::request::ReqError;

/// What of a column enters the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "rule", rename_all = "lowercase")]
pub enum Rule {
    Drop,
    /// As it is: a quasi-identifier.
    Keep,
    /// Truncated to its month: a quasi-identifier.
    Month,
    /// Its range, of the width given or by order of magnitude: a quasi-identifier.
    Range {
        width: Option<f64>,
    },
    /// The number times a random factor within 1 ± fraction: a measure.
    Perturb {
        fraction: f64,
    },
}

/// The default fraction of `perturb`.
pub const DEFAULT_PERTURBATION: f64 = 0.05;

impl Rule {
    /// `drop`, `keep`, `month`, `range`, `range:<width>`, `perturb`, `perturb:<fraction>`.
    pub fn parse(s: &str) -> Option<Self> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a.parse::<f64>().ok()?)),
            None => (s, None),
        };
        match (name, arg) {
            ("drop", None) => Some(Rule::Drop),
            ("keep", None) => Some(Rule::Keep),
            ("month", None) => Some(Rule::Month),
            ("range", w) if w.is_none_or(|w| w > 0.0 && w.is_finite()) => {
                Some(Rule::Range { width: w })
            }
            ("perturb", f) if f.is_none_or(|f| f > 0.0 && f < 1.0) => Some(Rule::Perturb {
                fraction: f.unwrap_or(DEFAULT_PERTURBATION),
            }),
            _ => None,
        }
    }

    pub fn is_quasi_identifier(self) -> bool {
        matches!(self, Rule::Keep | Rule::Month | Rule::Range { .. })
    }

    /// How the rule reads in reports.
    pub fn label(self) -> String {
        match self {
            Rule::Drop => "drop".into(),
            Rule::Keep => "keep".into(),
            Rule::Month => "month".into(),
            Rule::Range { width: None } => "range".into(),
            Rule::Range { width: Some(w) } => format!("range:{w}"),
            Rule::Perturb { fraction } => format!("perturb:{fraction}"),
        }
    }
}

/// Whether a class's values are encrypted in the database (never in the dataset, never
/// aggregated).
pub fn encrypted_class(class: &str) -> bool {
    matches!(class, "confidential" | "pii" | "phi")
}

/// The rule of `column`: encrypted classes and direct identifiers are always dropped; else the
/// declared rule (`orgbase.analytics_rule`), else one from the column's type.
pub fn rule_for(column: &Column, declared: Option<&str>) -> Rule {
    if encrypted_class(&column.class) {
        return Rule::Drop;
    }
    match column.name.as_str() {
        "org_id" => return Rule::Keep,
        "id" | "created_by" | "updated_by" | "updated_at" | "deleted_at" => return Rule::Drop,
        "created_at" => return Rule::Month,
        _ => {}
    }
    if let Some(rule) = declared.and_then(Rule::parse) {
        return rule;
    }
    match column.kind {
        Kind::Date | Kind::Timestamp => Rule::Month,
        Kind::Integer | Kind::Number => Rule::Range { width: None },
        Kind::Boolean => Rule::Keep,
        // An IN-list is a category; other text is free text (dropped), as are references
        // (uuid), documents and arrays.
        Kind::Text if column.allowed.is_some() => Rule::Keep,
        _ => Rule::Drop,
    }
}

/// The declared rules of every column, by table (`schema.table`) and column.
async fn declared_rules(
    client: &impl GenericClient,
) -> Result<BTreeMap<(String, String), String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, cc.column_name::text, cc.analytics
               FROM orgbase.column_classes cc
               JOIN pg_class c ON c.oid = cc.table_name
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE cc.analytics IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// The SQL expression of `rule` over column `c` of the source row `t`.
fn expression(rule: Rule, column: &Column) -> Option<String> {
    let c = format!("t.{}", quote_ident(&column.name));
    let n = format!("{c}::numeric");
    Some(match rule {
        Rule::Drop => return None,
        Rule::Keep => c,
        Rule::Month => format!("date_trunc('month', {c})::date"),
        Rule::Range { width: Some(w) } => format!(
            "CASE WHEN {c} IS NULL THEN NULL ELSE '[' || trim_scale(floor({n} / {w}) * {w})::text \
             || ', ' || trim_scale((floor({n} / {w}) + 1) * {w})::text || ')' END"
        ),
        Rule::Range { width: None } => format!(
            "CASE WHEN {c} IS NULL THEN NULL WHEN {c} = 0 THEN '0' \
             WHEN {c} > 0 THEN '[' || trim_scale(power(10::numeric, floor(log(abs({n}))))) || ', ' \
                  || trim_scale(power(10::numeric, floor(log(abs({n}))) + 1)) || ')' \
             ELSE '(-' || trim_scale(power(10::numeric, floor(log(abs({n}))) + 1)) || ', -' \
                  || trim_scale(power(10::numeric, floor(log(abs({n}))))) || ']' END"
        ),
        Rule::Perturb { fraction } => {
            format!("round({n} * (1 + (random() * 2 - 1) * {fraction})::numeric, 6)")
        }
    })
}

/// The name of a table's dataset in the `analytics` schema: its URL name, a schema prefix
/// joined with `__`.
pub fn dataset_name(table: &Table) -> String {
    table.name.replace('.', "__")
}

/// What one table's refresh achieved.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    /// `analytics.<name>`.
    pub dataset: String,
    pub source_rows: i64,
    pub kept_rows: i64,
    pub suppressed_rows: i64,
    pub k_required: i32,
    /// The smallest equivalence class kept; `None` when no row was kept.
    pub k_achieved: Option<i64>,
    pub quasi_identifiers: Vec<String>,
    /// Every column of the table and its rule.
    pub columns: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Catalog(#[from] crate::DbError),
    #[error("k must be at least 2 (got {0})")]
    BadK(i32),
    #[error("no tenant table is called {0:?}")]
    NoSuchTable(String),
    #[error("another refresh of the analytics dataset is running; try again when it ends")]
    Busy,
}

/// The row filter every dataset and every refresh shares: live rows of people whose erasure
/// nobody asked for.
const LIVE_AND_NOT_ERASED: &str = "t.deleted_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM orgbase.gdpr_requests g
                        WHERE g.kind = 'erase' AND g.status IN ('requested', 'pending', 'done')
                          AND g.subject = t.created_by
                          AND (g.org_id IS NULL OR g.org_id = t.org_id))";

/// Rebuild the dataset of every tenant table (or only `only`, by URL name) with equivalence
/// classes of at least `k` rows, as the administrator. `progress` hears of each table as it is
/// done. One refresh at a time (an advisory lock): [`AnalyticsError::Busy`] otherwise.
pub async fn refresh(
    client: &mut Client,
    k: i32,
    only: Option<&str>,
    mut progress: impl FnMut(&TableReport),
) -> Result<Vec<TableReport>, AnalyticsError> {
    if k < 2 {
        return Err(AnalyticsError::BadK(k));
    }
    let catalog = Catalog::load(&*client).await?;
    if let Some(name) = only
        && catalog.get(name).is_none()
    {
        return Err(AnalyticsError::NoSuchTable(name.to_string()));
    }
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('orgbase.analytics'))",
            &[],
        )
        .await?
        .get(0);
    if !locked {
        return Err(AnalyticsError::Busy);
    }
    let result = refresh_locked(client, &catalog, k, only, &mut progress).await;
    client
        .execute(
            "SELECT pg_advisory_unlock(hashtext('orgbase.analytics'))",
            &[],
        )
        .await?;
    result
}

async fn refresh_locked(
    client: &mut Client,
    catalog: &Catalog,
    k: i32,
    only: Option<&str>,
    progress: &mut impl FnMut(&TableReport),
) -> Result<Vec<TableReport>, AnalyticsError> {
    let declared = declared_rules(&*client).await?;
    let mut reports = Vec::new();
    for table in catalog.tables.values() {
        if only.is_some_and(|o| o != table.name) {
            continue;
        }
        let report = refresh_table(client, table, &declared, k).await?;
        progress(&report);
        reports.push(report);
    }
    Ok(reports)
}

async fn refresh_table(
    client: &mut Client,
    table: &Table,
    declared: &BTreeMap<(String, String), String>,
    k: i32,
) -> Result<TableReport, AnalyticsError> {
    let mut columns = BTreeMap::new();
    let mut select = Vec::new();
    let mut qis = Vec::new();
    for column in &table.columns {
        let rule = rule_for(
            column,
            declared
                .get(&(table.aad_name.clone(), column.name.clone()))
                .map(String::as_str),
        );
        columns.insert(column.name.clone(), rule.label());
        if let Some(expr) = expression(rule, column) {
            let name = quote_ident(&column.name);
            select.push(format!("{expr} AS {name}"));
            if rule.is_quasi_identifier() {
                qis.push(column.name.clone());
            }
        }
    }
    let dataset = dataset_name(table);
    let target = format!("analytics.{}", quote_ident(&dataset));
    let fresh = format!("analytics.{}", quote_ident(&format!("{dataset}__refresh")));
    let partition = if qis.is_empty() {
        "NULL::int".to_string()
    } else {
        qis.iter()
            .map(|q| quote_ident(q))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kept: Vec<String> = table
        .columns
        .iter()
        .filter(|c| columns.get(&c.name).is_some_and(|r| r != "drop"))
        .map(|c| quote_ident(&c.name))
        .collect();
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL TIME ZONE 'UTC'").await?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE analytics_source ON COMMIT DROP AS
         SELECT {select} FROM {source} t WHERE {live}",
        select = select.join(", "),
        source = table.qualified,
        live = LIVE_AND_NOT_ERASED,
    ))
    .await?;
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS {fresh};
         CREATE TABLE {fresh} AS
         SELECT {kept} FROM (SELECT s.*, count(*) OVER (PARTITION BY {partition}) AS class_size
                               FROM analytics_source s) c
          WHERE c.class_size >= {k};",
        kept = kept.join(", "),
    ))
    .await?;
    let counts = tx
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM analytics_source),
                        (SELECT count(*) FROM {fresh}),
                        (SELECT min(n) FROM (SELECT count(*) AS n FROM {fresh} GROUP BY {partition}) g)"
            ),
            &[],
        )
        .await?;
    let report = TableReport {
        table: table.name.clone(),
        dataset: format!("analytics.{dataset}"),
        source_rows: counts.get(0),
        kept_rows: counts.get(1),
        suppressed_rows: counts.get::<_, i64>(0) - counts.get::<_, i64>(1),
        k_required: k,
        k_achieved: counts.get(2),
        quasi_identifiers: qis,
        columns,
    };
    let mut comment = format!(
        "orgbase: k-anonymous copy of {} (k = {k}), refreshed ",
        table.aad_name
    );
    let _ = write!(
        comment,
        "{}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ")
    );
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS {target};
         ALTER TABLE {fresh} RENAME TO {name};
         ALTER TABLE {target} OWNER TO orgbase_owner;
         REVOKE ALL ON {target} FROM PUBLIC;
         GRANT SELECT ON {target} TO orgbase_readonly, orgbase_backup;
         COMMENT ON TABLE {target} IS '{comment}';",
        name = quote_ident(&dataset),
        comment = comment.replace('\'', "''"),
    ))
    .await?;
    let columns_json = serde_json::to_value(&report.columns).unwrap_or_default();
    tx.execute(
        "INSERT INTO orgbase.analytics_refreshes
             (table_name, dataset, source_rows, kept_rows, suppressed_rows, k_required,
              k_achieved, quasi_identifiers, columns)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &report.table,
            &report.dataset,
            &report.source_rows,
            &report.kept_rows,
            &report.suppressed_rows,
            &report.k_required,
            &report.k_achieved,
            &report.quasi_identifiers,
            &columns_json,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(report)
}

// Differentially private queries --------------------------------------------------------------

/// A query's rows: which table, which column's values, grouped by what over which public keys,
/// filtered how, with at most `contributions` rows per person and values clamped to `bounds`.
#[derive(Debug, Clone)]
pub struct Figures<'a> {
    pub table: &'a Table,
    /// The column summed (sums and means).
    pub column: Option<&'a Column>,
    pub bounds: Option<(f64, f64)>,
    pub group_by: Option<&'a Column>,
    /// The public key set of the group-by; rows with another value are left out.
    pub keys: Vec<String>,
    /// Column = value, compared as text.
    pub filters: Vec<(&'a Column, String)>,
    pub contributions: u32,
}

/// The exact figures of each group in the order of `keys` (one group without a group-by), over
/// the live rows of `org` that the connection may read: the caller's own context on a request
/// (row-level security applies), the administrator's for an operator.
pub async fn figures(
    client: &impl GenericClient,
    org: Uuid,
    f: &Figures<'_>,
) -> Result<Vec<orgbase_analytics::Exact>, tokio_postgres::Error> {
    let group = match f.group_by {
        Some(c) => format!("array_position($4, t.{}::text)", quote_ident(&c.name)),
        None => "1".into(),
    };
    let value = match f.column {
        Some(c) => format!(
            "least(greatest(t.{}::float8, $2), $3)",
            quote_ident(&c.name)
        ),
        None => "0::float8".into(),
    };
    let (lo, hi) = f.bounds.unwrap_or((0.0, 0.0));
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&org, &lo, &hi, &f.keys];
    let mut filter = String::new();
    if let Some(c) = f.column {
        let _ = write!(filter, " AND t.{} IS NOT NULL", quote_ident(&c.name));
    }
    if let Some(c) = f.group_by {
        let _ = write!(filter, " AND t.{}::text = ANY ($4)", quote_ident(&c.name));
    }
    for (column, value) in &f.filters {
        params.push(value);
        let _ = write!(
            filter,
            " AND t.{}::text = ${}",
            quote_ident(&column.name),
            params.len()
        );
    }
    // Every row's person, group (1-based, in the order of the keys) and clamped value, in one
    // pass; the contribution bound is applied as they stream in, without sorting them.
    let sql = format!(
        "SELECT t.created_by, {group}::int4, {value}
           FROM {table} t
          WHERE t.org_id = $1 AND t.deleted_at IS NULL{filter}",
        table = f.table.qualified,
    );
    use tokio_postgres::types::Type;
    let mut types = vec![Type::UUID, Type::FLOAT8, Type::FLOAT8, Type::TEXT_ARRAY];
    types.resize(params.len(), Type::TEXT);
    let stmt = client.prepare_typed(&sql, &types).await?;
    let groups = if f.group_by.is_some() {
        f.keys.len()
    } else {
        1
    };
    let mut bounded =
        orgbase_analytics::Bounded::new(f.contributions, groups, rand::rngs::StdRng::from_os_rng());
    let rows = client.query_raw(&stmt, params).await?;
    futures_util::pin_mut!(rows);
    while let Some(r) = rows.try_next().await? {
        let person: Option<Uuid> = r.get(0);
        let group: Option<i32> = r.get(1);
        let Some(group) = group.and_then(|g| usize::try_from(g - 1).ok()) else {
            continue;
        };
        bounded.add(person.map(|p| p.as_u128()), group, r.get(2));
    }
    Ok(bounded.exact())
}

/// A charge against an organization's privacy budget.
#[derive(Debug, Clone, Serialize)]
pub struct Charge {
    pub id: Uuid,
    pub spent_micro: i64,
    pub budget_micro: i64,
    pub period: String,
}

fn charge_of(r: &tokio_postgres::Row) -> Charge {
    Charge {
        id: r.get(0),
        spent_micro: r.get(1),
        budget_micro: r.get(2),
        period: r.get(3),
    }
}

/// Charge the request's organization `micro` millionths of ε for `query`, in the request's
/// transaction (refunded by its rollback). Refused when the budget would be exceeded
/// ([`ReqError::BudgetExhausted`]), the caller may not spend it, or ε is over the per-query limit.
pub async fn charge(
    client: &Client,
    micro: i64,
    query: &serde_json::Value,
) -> Result<Charge, ReqError> {
    let row = client
        .query_one(
            "SELECT charge_id, spent_micro, budget_micro, period FROM orgbase.privacy_charge($1, $2)",
            &[&micro, query],
        )
        .await?;
    Ok(charge_of(&row))
}

/// [`charge`] by an operator (`orgbase analytics query`), as the administrator.
pub async fn charge_as_operator(
    client: &impl GenericClient,
    org: Uuid,
    micro: i64,
    query: &serde_json::Value,
) -> Result<Charge, ReqError> {
    let row = client
        .query_one(
            "SELECT charge_id, spent_micro, budget_micro, period
               FROM orgbase.privacy_charge_for($1, NULL, NULL, $2, $3)",
            &[&org, &micro, query],
        )
        .await?;
    Ok(charge_of(&row))
}

/// An organization's budget in its current period.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Budget {
    /// The budget of one period, in ε.
    pub epsilon: f64,
    pub spent: f64,
    pub left: f64,
    /// `none` (one budget for ever), `day`, `month` or `year`.
    pub period: String,
    /// When the current period began (RFC 3339).
    pub period_start: String,
    /// The most a single query may spend.
    pub max_query_epsilon: f64,
    /// Queries answered in this period.
    pub charges: i64,
    /// The same amounts in millionths of ε, as the ledger keeps them.
    pub budget_micro: i64,
    pub spent_micro: i64,
}

impl Budget {
    fn of(
        budget: i64,
        period: String,
        start: chrono::DateTime<chrono::Utc>,
        spent: i64,
        max: i64,
        charges: i64,
    ) -> Self {
        use orgbase_analytics::epsilon_of;
        Self {
            epsilon: epsilon_of(budget),
            spent: epsilon_of(spent),
            left: epsilon_of((budget - spent).max(0)),
            period,
            period_start: start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            max_query_epsilon: epsilon_of(max),
            charges,
            budget_micro: budget,
            spent_micro: spent,
        }
    }
}

/// The budget of the request's organization (owners, admins and analytics keys).
pub async fn budget(client: &Client) -> Result<Budget, ReqError> {
    let r = client
        .query_one(
            "SELECT budget_micro, period, period_start, spent_micro, max_query_micro, charges
               FROM orgbase.privacy_budget()",
            &[],
        )
        .await?;
    Ok(Budget::of(
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
    ))
}

/// The organization an id or slug names (as the administrator).
pub async fn org_of(
    client: &impl GenericClient,
    org_ref: &str,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT orgbase.org_of_ref($1)", &[&org_ref])
        .await?
        .get(0))
}

/// An organization's budget, as the administrator.
pub async fn budget_as_operator(
    client: &impl GenericClient,
    org: Uuid,
) -> Result<Budget, tokio_postgres::Error> {
    let r = client
        .query_one(
            "SELECT b.budget_micro, b.period, b.period_start, b.spent_micro, b.max_query_micro,
                    (SELECT count(*) FROM orgbase.privacy_charges pc
                      WHERE pc.org_id = $1 AND pc.period_start = b.period_start)
               FROM orgbase.privacy_budget_of($1) b",
            &[&org],
        )
        .await?;
    Ok(Budget::of(
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
    ))
}

/// Set an organization's own budget and period (audited: the change is on its chain).
pub async fn set_budget(
    client: &impl GenericClient,
    org: Uuid,
    micro: i64,
    period: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO orgbase.privacy_budgets (org_id, budget_micro, period) VALUES ($1, $2, $3)
             ON CONFLICT (org_id) DO UPDATE
                SET budget_micro = EXCLUDED.budget_micro, period = EXCLUDED.period, updated_at = now()",
            &[&org, &micro, &period],
        )
        .await?;
    Ok(())
}

/// The instance defaults (`[analytics]`), written by the server at start.
pub async fn set_defaults(
    client: &impl GenericClient,
    budget_micro: i64,
    period: &str,
    max_query_micro: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE orgbase.privacy_settings
                SET default_budget_micro = $1, default_period = $2, max_query_micro = $3
              WHERE id = 1",
            &[&budget_micro, &period, &max_query_micro],
        )
        .await?;
    Ok(())
}

/// The budget periods.
pub const PERIODS: [&str; 4] = ["none", "day", "month", "year"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_refuse() {
        assert_eq!(Rule::parse("month"), Some(Rule::Month));
        assert_eq!(Rule::parse("range"), Some(Rule::Range { width: None }));
        assert_eq!(
            Rule::parse("range:10"),
            Some(Rule::Range { width: Some(10.0) })
        );
        assert_eq!(
            Rule::parse("perturb"),
            Some(Rule::Perturb { fraction: 0.05 })
        );
        assert_eq!(
            Rule::parse("perturb:0.1"),
            Some(Rule::Perturb { fraction: 0.1 })
        );
        for bad in ["", "range:0", "range:-1", "perturb:1.5", "keep:1", "fuzz"] {
            assert_eq!(Rule::parse(bad), None, "{bad}");
        }
    }
}
