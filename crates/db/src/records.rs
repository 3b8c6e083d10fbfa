//! The generic record operations over tenant tables: list (cursor pages, filters on indexed
//! columns, sort), get, create, update (optimistic concurrency), soft delete, restore. Rows are
//! rendered to JSON by PostgreSQL (`row_to_json`) and passed through as text; sealed text
//! columns are read apart and added once decrypted.

use crate::pool::Pool;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::catalog::{Column, Kind, Table, quote_ident};
use crate::fields::{Fields, is_sealed};
use crate::observe::{Kind as Stmt, Label};
use crate::request::{self, Caller, Context, OneSql, ReqError};

pub const MAX_LIMIT: i64 = 200;
pub const DEFAULT_LIMIT: i64 = 50;

/// The version of a row for `ETag`/`If-Match`: `updated_at` in microseconds.
const ETAG: &str = "(extract(epoch FROM t.updated_at) * 1000000)::bigint";

/// A problem with one input field (query parameter or body field).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Op {
    fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Lt => "<",
            Op::Lte => "<=",
            Op::Gt => ">",
            Op::Gte => ">=",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub limit: i64,
    pub sort: String,
    pub descending: bool,
    /// (sort value as text, id) of the last row of the previous page.
    pub after: Option<(String, Uuid)>,
    pub filters: Vec<(String, Op, String)>,
}

/// A page: the rows as a JSON array (text) and the cursor of the next page.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: String,
    pub next_cursor: Option<String>,
}

/// A row as JSON text with its version.
#[derive(Debug, Clone)]
pub struct Record {
    pub json: String,
    pub etag: i64,
}

fn check_scalar(kind: Kind, field: &str, v: &str) -> Result<(), FieldError> {
    let ok = match kind {
        Kind::Text => true,
        Kind::Uuid => Uuid::parse_str(v).is_ok(),
        Kind::Integer => v.parse::<i64>().is_ok(),
        Kind::Number => v.parse::<f64>().is_ok_and(f64::is_finite),
        Kind::Boolean => matches!(v, "true" | "false"),
        Kind::Date => chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok(),
        Kind::Timestamp => chrono::DateTime::parse_from_rfc3339(v).is_ok(),
        Kind::Json | Kind::TextArray | Kind::Other => {
            return Err(field_err(field, "cannot filter or sort on this column"));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(field_err(
            field,
            format!("not a valid {kind:?} value").to_lowercase(),
        ))
    }
}

impl ListQuery {
    /// The sort as a cursor records it: the column, `-` first when descending. A cursor
    /// continues only the order it came from.
    fn sort_key(&self) -> String {
        if self.descending {
            format!("-{}", self.sort)
        } else {
            self.sort.clone()
        }
    }

    /// Parse `limit`, `sort` (`col` or `-col`), `cursor`, and filters `col=v`, `col.gte=v`
    /// (`lt`, `lte`, `gt`, `gte`) on indexed columns.
    pub fn parse(table: &Table, pairs: &[(String, String)]) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut q = ListQuery {
            limit: DEFAULT_LIMIT,
            sort: "created_at".into(),
            descending: true,
            after: None,
            filters: Vec::new(),
        };
        let mut cursor = None;
        for (k, v) in pairs {
            // PostgreSQL text holds no NUL: say so here rather than fail in SQL.
            if k.contains('\0') || v.contains('\0') {
                errors.push(field_err(k, "must not contain a NUL character"));
                continue;
            }
            match k.as_str() {
                "limit" => match v.parse::<i64>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = n,
                    _ => errors.push(field_err(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    )),
                },
                "sort" => {
                    let (desc, col) = match v.strip_prefix('-') {
                        Some(c) => (true, c),
                        None => (false, v.as_str()),
                    };
                    match table.column(col) {
                        Some(c) if is_sealed(c) => errors.push(field_err(
                            "sort",
                            format!("cannot sort by {col:?}: its values are encrypted"),
                        )),
                        Some(c) if c.indexed && c.not_null && c.kind != Kind::Json => {
                            q.sort = col.to_string();
                            q.descending = desc;
                        }
                        _ => errors.push(field_err(
                            "sort",
                            format!("cannot sort by {col:?}: sort by an indexed, non-null column"),
                        )),
                    }
                }
                "cursor" => cursor = Some(v.clone()),
                _ => {
                    let (col, op) = match k.rsplit_once('.') {
                        Some((c, "lt")) => (c, Op::Lt),
                        Some((c, "lte")) => (c, Op::Lte),
                        Some((c, "gt")) => (c, Op::Gt),
                        Some((c, "gte")) => (c, Op::Gte),
                        Some((c, "eq")) => (c, Op::Eq),
                        _ => (k.as_str(), Op::Eq),
                    };
                    match table.column(col) {
                        Some(c) if is_sealed(c) => {
                            errors.push(field_err(k, "cannot filter on an encrypted column"))
                        }
                        Some(c) if c.indexed && col != "org_id" => {
                            match check_scalar(c.kind, k, v) {
                                Ok(()) => q.filters.push((col.to_string(), op, v.clone())),
                                Err(e) => errors.push(e),
                            }
                        }
                        Some(_) => {
                            errors.push(field_err(k, "filters are allowed on indexed columns only"))
                        }
                        None => errors.push(field_err(k, "unknown query parameter")),
                    }
                }
            }
        }
        if let Some(c) = cursor {
            match decode_cursor(&c) {
                Some((sort, value, id)) if sort == q.sort_key() => {
                    // The value goes into SQL as the sort column's type: check it here, so that a
                    // crafted cursor gets this answer and never the database's.
                    if table
                        .column(&q.sort)
                        .is_some_and(|c| cursor_value_ok(c.kind, &value))
                    {
                        q.after = Some((value, id));
                    } else {
                        errors.push(field_err("cursor", "not a cursor this API issued"));
                    }
                }
                Some(_) => errors.push(field_err(
                    "cursor",
                    "this cursor belongs to another sort order",
                )),
                None => errors.push(field_err("cursor", "not a cursor this API issued")),
            }
        }
        if errors.is_empty() {
            Ok(q)
        } else {
            Err(errors)
        }
    }
}

/// Whether a cursor's sort value reads as the sort column's type: as the JSON of the row writes
/// it, or, for a timestamp, as PostgreSQL's text (`2026-01-01 00:00:00.5+00`, the form of
/// tables whose rows PostgreSQL renders).
fn cursor_value_ok(kind: Kind, v: &str) -> bool {
    check_scalar(kind, "cursor", v).is_ok()
        || (kind == Kind::Timestamp
            && chrono::DateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f%#z").is_ok())
}

fn encode_cursor(sort: &str, value: &str, id: Uuid) -> String {
    let v = serde_json::json!([sort, value, id]);
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The text of column `i` of `r` for a cursor, from its JSON (`Shape::cursor_column`): a JSON
/// string's contents, or a number or boolean as written.
fn cursor_value(r: &Row, i: usize) -> Result<String, ReqError> {
    let mut out = Vec::new();
    crate::json::write_column(&mut out, r, i)?;
    Ok(match serde_json::from_slice(&out) {
        Ok(Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(e) => return Err(render_error(r, i, e)),
    })
}

/// The server wrote JSON it cannot read back (a bug, not bad data): named after column `i`.
fn render_error(r: &Row, i: usize, e: impl std::fmt::Display) -> ReqError {
    crate::json::RenderError {
        column: r.columns()[i].name().to_owned(),
        reason: e.to_string(),
    }
    .into()
}

fn decode_cursor(s: &str) -> Option<(String, String, Uuid)> {
    let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
    let (sort, value, id): (String, String, Uuid) = serde_json::from_slice(&raw).ok()?;
    Some((sort, value, id))
}

/// How a read selects its rows. The row's JSON comes first in the select list: the columns
/// themselves, which the server renders as `row_to_json` would ([`crate::json`]), or, for a
/// table with a column of a type the server does not render, `row_to_json` of the row followed
/// by `org_id` and `id`. For a table with sealed text columns, those columns come apart, as
/// stored text after the statement's own columns, so that their ciphertext is neither escaped
/// into the JSON by PostgreSQL nor parsed back out of it by the server
/// ([`Fields::write_apart`]).
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// The select list's first columns.
    json: String,
    /// When the server renders the JSON: the name and the key (`"name":`) of each of those
    /// columns.
    keys: Option<Vec<(String, String)>>,
    /// Where `org_id` and `id` are among the first columns.
    org_at: usize,
    id_at: usize,
    /// After the table in FROM: the lateral row of `row_to_json`, or nothing.
    lateral: String,
    /// The sealed text columns, for the end of the select list: `, t."col"::text, …`.
    apart: String,
}

impl Shape {
    /// The shape of `table`'s reads, worked out once per catalog load.
    fn of(table: &Table) -> &Shape {
        table.shape.get_or_init(|| Shape::new(table))
    }

    fn new(table: &Table) -> Shape {
        let apart: Vec<&str> = Fields::apart(table).map(|c| c.name.as_str()).collect();
        let others: Vec<&Column> = table
            .columns
            .iter()
            .filter(|c| !apart.contains(&c.name.as_str()))
            .collect();
        let apart_sql: String = apart
            .iter()
            .map(|c| format!(", t.{}::text", quote_ident(c)))
            .collect();
        let selected = || -> Vec<String> {
            others
                .iter()
                .map(|c| format!("t.{}", quote_ident(&c.name)))
                .collect()
        };
        let at = |name: &str| others.iter().position(|c| c.name == name);
        // Sealed values other than text (JSON) stay in the row, where `Fields::open` finds them.
        if let (Some(org_at), Some(id_at)) = (at("org_id"), at("id"))
            && others
                .iter()
                .all(|c| crate::json::renders(&c.sql_type) && !is_sealed(c))
        {
            return Shape {
                json: selected().join(", "),
                keys: Some(
                    others
                        .iter()
                        .map(|c| {
                            let key = format!("{}:", Value::String(c.name.clone()));
                            (c.name.clone(), key)
                        })
                        .collect(),
                ),
                org_at,
                id_at,
                lateral: String::new(),
                apart: apart_sql,
            };
        }
        let (json, lateral) = if apart.is_empty() {
            ("row_to_json(t)::text", String::new())
        } else {
            // A lateral sub-select without FROM is flattened by the planner into a row of
            // `t`'s columns that keeps their names.
            (
                "row_to_json(x)::text",
                format!(", LATERAL (SELECT {}) x", selected().join(", ")),
            )
        };
        Shape {
            json: format!("{json}, t.org_id, t.id"),
            keys: None,
            org_at: 1,
            id_at: 2,
            lateral,
            apart: apart_sql,
        }
    }

    /// How many select-list columns come first (the row's JSON, `org_id` and `id`).
    fn width(&self) -> usize {
        self.keys.as_ref().map_or(3, Vec::len)
    }

    /// The row's id.
    fn id(&self, r: &Row) -> Uuid {
        r.get(self.id_at)
    }

    /// Where column `c` is among the JSON's columns, when the server renders them and a
    /// cursor can take the value from them: for a type whose JSON text PostgreSQL reads back
    /// as the same value (`$n::text::type`).
    fn cursor_column(&self, c: &Column) -> Option<usize> {
        let exact = matches!(
            c.kind,
            Kind::Timestamp | Kind::Date | Kind::Uuid | Kind::Text | Kind::Integer | Kind::Boolean
        );
        let keys = self.keys.as_ref().filter(|_| exact)?;
        keys.iter().position(|(name, _)| *name == c.name)
    }

    /// Row `r` as the API's JSON, decrypted; `at` is the index of the first sealed column.
    fn render(
        &self,
        fields: &Fields,
        table: &Table,
        r: &Row,
        at: usize,
    ) -> Result<String, ReqError> {
        let apart = || -> Vec<Option<&str>> { (at..r.len()).map(|i| r.get(i)).collect() };
        let (org, id) = (r.get(self.org_at), self.id(r));
        let Some(keys) = &self.keys else {
            let json: &str = r.get(0);
            if self.apart.is_empty() {
                return Ok(fields.open(table, json)?.into_owned());
            }
            return fields.open_apart(table, json, org, id, &apart());
        };
        let mut out = Vec::with_capacity(1024);
        out.push(b'{');
        for (i, (_, key)) in keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key.as_bytes());
            crate::json::write_column(&mut out, r, i)?;
        }
        if !self.apart.is_empty() {
            fields.write_apart(table, &mut out, org, id, &apart())?;
        }
        out.push(b'}');
        // Valid UTF-8: keys and values written from `str`s.
        String::from_utf8(out).map_err(|e| render_error(r, 0, e))
    }
}

fn params_ref(p: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// `GET /v1/orgs/{org}/{table}`.
pub async fn list(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    table: &Table,
    fields: &Fields,
    q: &ListQuery,
) -> Result<Page, ReqError> {
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut wheres = vec!["t.deleted_at IS NULL".to_string()];
    for (col, op, value) in &q.filters {
        let c = table.column(col).ok_or(ReqError::NotFound)?;
        params.push(Box::new(value.clone()));
        wheres.push(format!(
            "t.{} {} ${}::text::{}",
            quote_ident(col),
            op.sql(),
            params.len(),
            c.sql_type
        ));
    }
    let sort = table.column(&q.sort).ok_or(ReqError::NotFound)?;
    let sort_col = quote_ident(&q.sort);
    if let Some((value, id)) = &q.after {
        params.push(Box::new(value.clone()));
        params.push(Box::new(*id));
        wheres.push(format!(
            "(t.{sort_col}, t.id) {} (${}::text::{}, ${})",
            if q.descending { "<" } else { ">" },
            params.len() - 1,
            sort.sql_type,
            params.len()
        ));
    }
    // The limit is written into the statement, not bound: with `LIMIT $n` PostgreSQL finds a
    // plan for the actual value cheaper than the generic one and plans the statement again on
    // every request (a tenth of R1's database time). It is a validated integer (1..=200).
    let dir = if q.descending { "DESC" } else { "ASC" };
    let shape = Shape::of(table);
    // Columns: the row's JSON with `org_id` and `id` (`w` of them), the sort value as text
    // unless those columns hold it (`from_json`), the sealed columns from `at`.
    let w = shape.width();
    let from_json = shape.cursor_column(sort);
    let (sort_text, at) = match from_json {
        Some(_) => (String::new(), w),
        None => (format!(", t.{sort_col}::text"), w + 1),
    };
    let head = format!(
        "SELECT {}{sort_text}{} FROM {} t{} WHERE {} AND ",
        shape.json,
        shape.apart,
        table.qualified,
        shape.lateral,
        wheres.join(" AND "),
    );
    let tail = format!(
        " ORDER BY t.{sort_col} {dir}, t.id {dir} LIMIT {}",
        q.limit + 1
    );
    let rows = read(
        pool,
        Stmt::List,
        caller,
        org,
        table,
        OneSql::with_condition(&head, &tail),
        &params_ref(&params),
        |rows| {
            rows.iter()
                .take(q.limit as usize)
                .map(|r| shape.id(r))
                .collect()
        },
    )
    .await?;
    let more = rows.len() as i64 > q.limit;
    let page = &rows[..rows.len().min(q.limit as usize)];
    let mut items = String::from("[");
    for (i, r) in page.iter().enumerate() {
        if i > 0 {
            items.push(',');
        }
        items.push_str(&shape.render(fields, table, r, at)?);
    }
    items.push(']');
    let next_cursor = match (more, page.last()) {
        (true, Some(r)) => {
            let value = match from_json {
                Some(i) => cursor_value(r, i)?,
                None => r.get(w),
            };
            Some(encode_cursor(&q.sort_key(), &value, shape.id(r)))
        }
        _ => None,
    };
    Ok(Page { items, next_cursor })
}

fn record(rows: &[tokio_postgres::Row]) -> Result<Record, ReqError> {
    let r = rows.first().ok_or(ReqError::NotFound)?;
    Ok(Record {
        json: r.get(0),
        etag: r.get(1),
    })
}

/// A record with its classified values decrypted.
fn opened(fields: &Fields, table: &Table, mut rec: Record) -> Result<Record, ReqError> {
    if let std::borrow::Cow::Owned(json) = fields.open(table, &rec.json)? {
        rec.json = json;
    }
    Ok(rec)
}

/// PHI needs a session that passed MFA (API keys never do).
async fn phi_gate(client: &Client, caller: &Caller, table: &Table) -> Result<(), ReqError> {
    if !table.phi {
        return Ok(());
    }
    let cred: &[u8] = &caller.cred_hash;
    let row = client
        .query_one("SELECT orgbase.session_mfa($1)", &[&cred])
        .await?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(ReqError::PhiNeedsMfa)
    }
}

/// `GET /v1/orgs/{org}/{table}/{id}`.
pub async fn get(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    table: &Table,
    fields: &Fields,
    id: Uuid,
) -> Result<Record, ReqError> {
    let shape = Shape::of(table);
    let head = format!(
        "SELECT {}, {ETAG}{} FROM {} t{} WHERE t.id = $1 AND t.deleted_at IS NULL AND ",
        shape.json, shape.apart, table.qualified, shape.lateral
    );
    let sql = OneSql::with_condition(&head, "");
    let rows = read(pool, Stmt::Get, caller, org, table, sql, &[&id], |_| {
        vec![id]
    })
    .await?;
    let r = rows.first().ok_or(ReqError::NotFound)?;
    // Columns: the row's JSON with `org_id` and `id` (`width` of them), the version, the
    // sealed columns.
    let w = shape.width();
    Ok(Record {
        json: shape.render(fields, table, r, w + 1)?,
        etag: r.get(w),
    })
}

/// A read: one pipelined statement, or for a table with phi columns the statement and the
/// read-access log entry of the rows it returned, in one transaction.
#[allow(clippy::too_many_arguments)]
async fn read(
    pool: &Pool,
    op: Stmt,
    caller: &Caller,
    org: &str,
    table: &Table,
    sql: OneSql<'_>,
    params: &[&(dyn ToSql + Sync)],
    ids: impl FnOnce(&[Row]) -> Vec<Uuid>,
) -> Result<Vec<Row>, ReqError> {
    let label = Label::on(op, &table.name);
    if !table.phi {
        return Ok(request::one_as(pool, label, caller, org, sql, params)
            .await?
            .1);
    }
    request::many_as(pool, label, caller, org, async |c: &Client, _| {
        phi_gate(c, caller, table).await?;
        let rows = c.query(sql.plain().as_ref(), params).await?;
        let ids = ids(&rows);
        if !ids.is_empty() {
            c.execute(
                "SELECT orgbase.log_read($1, $2)",
                &[&table.qualified.replace('"', ""), &ids],
            )
            .await?;
        }
        Ok(rows)
    })
    .await
}

fn check_value(table: &Table, field: &str, v: &Value) -> Result<(), FieldError> {
    let Some(c) = table.column(field) else {
        return Err(field_err(field, "unknown field"));
    };
    if v.is_null() {
        return if c.not_null {
            Err(field_err(field, "must not be null"))
        } else {
            Ok(())
        };
    }
    let ok = match c.kind {
        Kind::Text => v.is_string(),
        Kind::Uuid => v.as_str().is_some_and(|s| Uuid::parse_str(s).is_ok()),
        Kind::Integer => v.is_i64() || v.is_u64(),
        Kind::Number => v.is_number(),
        Kind::Boolean => v.is_boolean(),
        Kind::Date => v
            .as_str()
            .is_some_and(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()),
        Kind::Timestamp => v
            .as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
        Kind::TextArray => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        Kind::Json | Kind::Other => true,
    };
    if let (true, Some(text)) = (ok, v.as_str()) {
        if let Some(allowed) = &c.allowed
            && !allowed.iter().any(|a| a == text)
        {
            return Err(field_err(
                field,
                format!("must be one of {}", allowed.join(", ")),
            ));
        }
        let chars = text.chars().count();
        let short = c.min_length.is_some_and(|m| chars < m as usize);
        let long = c.max_length.is_some_and(|m| chars > m as usize);
        if short || long {
            return Err(field_err(
                field,
                match (c.min_length, c.max_length) {
                    (Some(lo), Some(hi)) => format!("must be {lo} to {hi} characters long"),
                    (Some(lo), None) => format!("must be at least {lo} characters long"),
                    (_, Some(hi)) => format!("must be at most {hi} characters long"),
                    (None, None) => unreachable!("no limit, no finding"),
                },
            ));
        }
    }
    if ok {
        Ok(())
    } else {
        let want = match c.kind {
            Kind::Text => "a string",
            Kind::Uuid => "a UUID string",
            Kind::Integer => "an integer",
            Kind::Number => "a number",
            Kind::Boolean => "true or false",
            Kind::Date => "a date (YYYY-MM-DD)",
            Kind::Timestamp => "an RFC 3339 timestamp",
            Kind::TextArray => "an array of strings",
            Kind::Json | Kind::Other => "a value",
        };
        Err(field_err(field, format!("must be {want}")))
    }
}

/// Validate a create/update body against the table: unknown or read-only fields, JSON types,
/// required fields on create.
pub fn validate(
    table: &Table,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    for (k, v) in body {
        if table.column(k).is_some() && !table.writable(k, creating) {
            errors.push(field_err(k, "is read-only"));
        } else if let Err(e) = check_value(table, k, v) {
            errors.push(e);
        }
    }
    if creating {
        for c in &table.columns {
            if c.not_null
                && !c.has_default
                && table.writable(&c.name, true)
                && !body.contains_key(&c.name)
            {
                errors.push(field_err(&c.name, "is required"));
            }
        }
    } else if body.is_empty() {
        errors.push(field_err("(body)", "no fields to change"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `POST /v1/orgs/{org}/{table}` with a validated body.
pub async fn create(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    table: &Table,
    fields: &Fields,
    mut body: Map<String, Value>,
) -> Result<Record, ReqError> {
    // The row id is chosen here: encrypted values are bound to it.
    let id = match body.get("id").and_then(Value::as_str).map(Uuid::parse_str) {
        Some(Ok(id)) => id,
        Some(Err(_)) => {
            return Err(ReqError::Invalid(
                Some("id".into()),
                "must be a UUID".into(),
            ));
        }
        None => {
            let id = Uuid::now_v7();
            body.insert("id".into(), Value::String(id.to_string()));
            id
        }
    };
    // One round trip when a recent request verified who this caller is in this organization:
    // the row is prepared (encrypted, owner columns filled) for that organization and user and
    // sent with BEGIN and the context. The database checks both against the verified context
    // (insert policy); if it refuses, the hint was stale and the request takes the long way.
    let label = Label::on(Stmt::Create, &table.name);
    if !table.phi
        && let Some((org_id, user_id)) = caller.context_hint(org)
    {
        let mut row = body.clone();
        owned_by(&mut row, org_id, user_id);
        if fields.seals(table, &row) {
            fields.seal(table, org_id, id, Some(user_id), &mut row)?;
        }
        let (head, tail) = insert_sql(table, &row);
        let sql = OneSql::with_condition(&head, &tail);
        match request::one_as(pool, label, caller, org, sql, &[&Value::Object(row)]).await {
            Ok((_, rows)) => return opened(fields, table, record(&rows)?),
            Err(ReqError::Forbidden(_)) => caller.forget_context_hint(org),
            Err(e) => return Err(e),
        }
    }
    if !table.phi && !fields.seals(table, &body) {
        // Nothing to prepare: the column defaults take the owner from the context.
        let (head, tail) = insert_sql(table, &body);
        let sql = OneSql::with_condition(&head, &tail);
        let rows = request::one_as(pool, label, caller, org, sql, &[&Value::Object(body)])
            .await?
            .1;
        return opened(fields, table, record(&rows)?);
    }
    // Encryption needs the verified organization and user: context first, then the insert.
    let rec = request::many_as(
        pool,
        label,
        caller,
        org,
        async |c: &Client, ctx: &Context| {
            phi_gate(c, caller, table).await?;
            owned_by(&mut body, ctx.org_id, ctx.user_id);
            if fields.seals(table, &body) {
                fields.seal(table, ctx.org_id, id, Some(ctx.user_id), &mut body)?;
            }
            let (head, tail) = insert_sql(table, &body);
            let sql = OneSql::with_condition(&head, &tail).plain();
            record(&c.query(sql.as_ref(), &[&Value::Object(body)]).await?)
        },
    )
    .await?;
    opened(fields, table, rec)
}

/// The organization and owner columns of a new row, as the context says (the insert policy
/// checks them; sending them saves the column defaults a context check each).
fn owned_by(body: &mut Map<String, Value>, org_id: Uuid, user_id: Uuid) {
    let user = Value::String(user_id.to_string());
    body.insert("org_id".into(), Value::String(org_id.to_string()));
    body.insert("created_by".into(), user.clone());
    body.insert("updated_by".into(), user);
}

/// The INSERT of `body`'s columns from `$1`, as the head and tail around the place of a
/// condition ([`OneSql::with_condition`]).
fn insert_sql(table: &Table, body: &Map<String, Value>) -> (String, String) {
    let cols: Vec<String> = body.keys().map(|k| quote_ident(k)).collect();
    let cols = cols.join(", ");
    (
        format!(
            "INSERT INTO {q} AS t ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{q}, $1) WHERE ",
            q = table.qualified
        ),
        format!(" RETURNING row_to_json(t)::text, {ETAG}"),
    )
}

/// A validated update body and the version the client last saw (`If-Match`).
#[derive(Debug, Clone)]
pub struct Patch {
    pub body: Map<String, Value>,
    pub if_match: Option<i64>,
}

/// `PATCH /v1/orgs/{org}/{table}/{id}` with a validated body; `if_match` is the version the
/// client last saw.
pub async fn update(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    table: &Table,
    fields: &Fields,
    id: Uuid,
    patch: Patch,
) -> Result<Record, ReqError> {
    let Patch { mut body, if_match } = patch;
    let sets: Vec<String> = body
        .keys()
        .map(|k| format!("{0} = r.{0}", quote_ident(k)))
        .collect();
    let q = &table.qualified;
    let sql = format!(
        "UPDATE {q} AS t SET {} FROM jsonb_populate_record(NULL::{q}, $1) AS r \
         WHERE t.id = $2 AND t.deleted_at IS NULL AND ($3::bigint IS NULL OR {ETAG} = $3) \
         RETURNING row_to_json(t)::text, {ETAG}",
        sets.join(", ")
    );
    let exists = format!("SELECT 1 FROM {q} t WHERE t.id = $1 AND t.deleted_at IS NULL");
    let subject =
        format!("SELECT t.created_by FROM {q} t WHERE t.id = $1 AND t.deleted_at IS NULL");
    let rec = request::many_as(
        pool,
        Label::on(Stmt::Update, &table.name),
        caller,
        org,
        async |client: &tokio_postgres::Client, ctx: &Context| {
            phi_gate(client, caller, table).await?;
            if fields.seals(table, &body) {
                // Values are encrypted under the key of the row's creator, not the editor.
                let row = client.query_opt(&subject, &[&id]).await?;
                let creator: Uuid = row.ok_or(ReqError::NotFound)?.get(0);
                fields.seal(table, ctx.org_id, id, Some(creator), &mut body)?;
            }
            let body = Value::Object(body);
            let rows = client.query(&sql, &[&body, &id, &if_match]).await?;
            if rows.is_empty()
                && if_match.is_some()
                && !client.query(&exists, &[&id]).await?.is_empty()
            {
                return Err(ReqError::PreconditionFailed(
                    "the row changed since you read it (If-Match does not match its ETag)".into(),
                ));
            }
            record(&rows)
        },
    )
    .await?;
    opened(fields, table, rec)
}

/// `DELETE /v1/orgs/{org}/{table}/{id}`: soft delete (purged after the grace period).
pub async fn delete(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    table: &Table,
    id: Uuid,
) -> Result<(), ReqError> {
    let head = format!(
        "UPDATE {} AS t SET deleted_at = now() WHERE t.id = $1 AND t.deleted_at IS NULL AND ",
        table.qualified
    );
    let sql = OneSql::with_condition(&head, " RETURNING t.id");
    let rows = by_id(pool, Stmt::Delete, caller, org, table, sql, id).await?;
    if rows.is_empty() {
        Err(ReqError::NotFound)
    } else {
        Ok(())
    }
}

/// `POST /v1/orgs/{org}/{table}/{id}/restore`: undo a soft delete.
pub async fn restore(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    table: &Table,
    fields: &Fields,
    id: Uuid,
) -> Result<Record, ReqError> {
    let head = format!(
        "UPDATE {} AS t SET deleted_at = NULL WHERE t.id = $1 AND t.deleted_at IS NOT NULL AND ",
        table.qualified
    );
    let tail = format!(" RETURNING row_to_json(t)::text, {ETAG}");
    let sql = OneSql::with_condition(&head, &tail);
    let rows = by_id(pool, Stmt::Restore, caller, org, table, sql, id).await?;
    opened(fields, table, record(&rows)?)
}

/// A write of one row by id: one statement, or for a table with phi columns the MFA check and
/// the statement in one transaction.
async fn by_id(
    pool: &Pool,
    op: Stmt,
    caller: &Caller,
    org: &str,
    table: &Table,
    sql: OneSql<'_>,
    id: Uuid,
) -> Result<Vec<Row>, ReqError> {
    let label = Label::on(op, &table.name);
    if !table.phi {
        return Ok(request::one_as(pool, label, caller, org, sql, &[&id])
            .await?
            .1);
    }
    request::many_as(pool, label, caller, org, async |c: &Client, _| {
        phi_gate(c, caller, table).await?;
        Ok(c.query(sql.plain().as_ref(), &[&id]).await?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7();
        let c = encode_cursor("created_at", "2026-01-01 00:00:00+00", id);
        assert_eq!(
            decode_cursor(&c),
            Some(("created_at".into(), "2026-01-01 00:00:00+00".into(), id))
        );
        assert_eq!(decode_cursor("not a cursor"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("[1,2]")), None);
    }
}
