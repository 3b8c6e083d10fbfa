//! The served OpenAPI document: what utoipa generates from the route table, finished in one
//! place with what it cannot know.
//!
//! - The generic tenant-table routes (`/v1/orgs/{org}/{table}…`) become one set of paths per
//!   registered table, a product's own included, each with the table's row, create and change
//!   schemas from the catalog (read-only columns marked, declared length limits stated), its
//!   list parameters (`limit`, `cursor`, `sort`, the filters on indexed columns), `If-Match`
//!   and `ETag`.
//! - Error responses are `application/problem+json`, and every operation declares the error
//!   statuses it can answer (401 without credentials, 400/413/415/422 for a body, 404 for a path
//!   with parameters, 503 when the database is not there).
//! - Sign-up, login, refresh, the invitation-free public routes and the operational endpoints need
//!   no credential (`security: []`).

use serde_json::{Map, Value, json};

use orgbase_db::catalog::{Catalog, Column, Kind, SYSTEM_COLUMNS, Table};

/// Operations any client may call without a credential.
const PUBLIC: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/slo"),
    ("post", "/v1/auth/signup"),
    ("post", "/v1/auth/login"),
    ("post", "/v1/auth/refresh"),
    ("post", "/v1/auth/cancel-erasure"),
];

/// Operations that check a password.
const THROTTLED: &[(&str, &str)] = &[
    ("post", "/v1/auth/login"),
    ("post", "/v1/auth/cancel-erasure"),
    ("post", "/v1/me/erase"),
];

/// Operations that never touch the database.
const NO_DATABASE: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
];

const TABLE_PATHS: [&str; 3] = [
    "/v1/orgs/{org}/{table}",
    "/v1/orgs/{org}/{table}/{id}",
    "/v1/orgs/{org}/{table}/{id}/restore",
];

/// Finish `doc` (utoipa's document as JSON) for the tables of `catalog`.
pub fn finish(doc: &mut Value, catalog: &Catalog) {
    per_table_paths(doc, catalog);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if let Some(op) = op.as_object_mut() {
                finish_operation(method, path, op);
            }
        }
    }
}

fn problem() -> Value {
    json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}})
}

fn finish_operation(method: &str, path: &str, op: &mut Map<String, Value>) {
    let public = PUBLIC.contains(&(method, path));
    if public {
        op.insert("security".into(), json!([]));
    }
    let has_body = op.contains_key("requestBody");
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(responses) = responses else {
        return;
    };
    // Errors are problem documents, whatever the generator assumed.
    for (status, response) in responses.iter_mut() {
        if status.parse::<u16>().is_ok_and(|s| s >= 400)
            && let Some(r) = response.as_object_mut()
        {
            r.insert("content".into(), problem());
        }
    }
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_string())
            .or_insert_with(|| json!({"description": description, "content": problem()}));
    };
    if !public {
        add("401", "No credential, or one that is not valid");
    }
    if has_body {
        add("400", "The body is not JSON, or has the same key twice");
        add("413", "The body is larger than the server accepts");
        add("415", "The body is not application/json");
        add(
            "422",
            "A field is missing, unknown, of the wrong type or out of range",
        );
    }
    if matches!(method, "post" | "put" | "patch") && !public {
        add(
            "409",
            "A row with these values exists already, or the change conflicts with another",
        );
    }
    if path.contains('{') {
        add("400", "A path parameter is malformed");
        add(
            "404",
            "No such organization (or not a member), or no such row",
        );
    }
    // Password checks are throttled alike wherever a password is given.
    if THROTTLED.contains(&(method, path)) {
        add(
            "429",
            "Too many failed password checks for the account from this address, or from this address; `Retry-After` says when to try again",
        );
    }
    if !NO_DATABASE.contains(&(method, path)) {
        add(
            "503",
            "The database is unavailable or at capacity; `Retry-After` says when to try again",
        );
    }
}

/// The generic table routes, once per registered table.
fn per_table_paths(doc: &mut Value, catalog: &Catalog) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let templates: Vec<(&str, Value)> = TABLE_PATHS
        .iter()
        .filter_map(|p| paths.remove(*p).map(|item| (*p, item)))
        .collect();
    let mut schemas = Map::new();
    for table in catalog.tables.values() {
        let name = &table.name;
        for (template, item) in &templates {
            let mut item = item.clone();
            if let Some(ops) = item.as_object_mut() {
                for (method, op) in ops.iter_mut() {
                    if let Some(op) = op.as_object_mut() {
                        for_table(table, template, method, op);
                    }
                }
            }
            paths.insert(template.replace("{table}", name), item);
        }
        schemas.insert(format!("row.{name}"), row_schema(table));
        schemas.insert(format!("new.{name}"), write_schema(table, true));
        schemas.insert(format!("change.{name}"), write_schema(table, false));
        schemas.insert(
            format!("page.{name}"),
            json!({
                "type": "object",
                "required": ["items", "next_cursor"],
                "properties": {
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/row.{name}")}},
                    "next_cursor": {"type": ["string", "null"], "description": "Pass as `cursor` for the next page; null on the last"},
                },
            }),
        );
    }
    if let Some(components) = doc
        .as_object_mut()
        .map(|d| d.entry("components").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        let all = components
            .entry("schemas")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(all) = all {
            all.extend(schemas);
        }
    }
}

fn schema_ref(kind: &str, table: &Table) -> Value {
    json!({"$ref": format!("#/components/schemas/{kind}.{}", table.name)})
}

fn json_body(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn etag_header() -> Value {
    json!({"ETag": {"description": "The row's version, for `If-Match`", "schema": {"type": "string"}}})
}

/// One operation of a generic table route, made the table's own.
fn for_table(table: &Table, template: &str, method: &str, op: &mut Map<String, Value>) {
    let name = &table.name;
    if let Some(id) = op.get("operationId").and_then(Value::as_str) {
        let id = format!("{id}_{}", name.replace('.', "_"));
        op.insert("operationId".into(), Value::String(id));
    }
    op.insert("tags".into(), json!(["records"]));
    let mut params: Vec<Value> = op
        .get("parameters")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter(|p| p["name"] != "table")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut responses = match op.remove("responses") {
        Some(Value::Object(r)) => r,
        _ => Map::new(),
    };
    let row = schema_ref("row", table);
    match (template, method) {
        ("/v1/orgs/{org}/{table}", "get") => {
            params.extend(list_parameters(table));
            responses.insert(
                "200".into(),
                json!({"description": format!("A page of {name}, newest first unless `sort` says otherwise"),
                       "content": json_body(schema_ref("page", table))}),
            );
        }
        ("/v1/orgs/{org}/{table}", "post") => {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": json_body(schema_ref("new", table))}),
            );
            responses.insert(
                "201".into(),
                json!({"description": "The row as stored", "headers": etag_header(), "content": json_body(row)}),
            );
        }
        ("/v1/orgs/{org}/{table}/{id}", "get") => {
            responses.insert(
                "200".into(),
                json!({"description": "The row", "headers": etag_header(), "content": json_body(row)}),
            );
        }
        ("/v1/orgs/{org}/{table}/{id}", "patch") => {
            params.push(json!({
                "name": "If-Match", "in": "header", "required": false,
                "description": "The ETag the change is based on: 412 if the row changed since",
                "schema": {"type": "string"},
            }));
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": json_body(schema_ref("change", table))}),
            );
            responses.insert(
                "200".into(),
                json!({"description": "The row as stored", "headers": etag_header(), "content": json_body(row)}),
            );
        }
        ("/v1/orgs/{org}/{table}/{id}/restore", "post") => {
            responses.insert(
                "200".into(),
                json!({"description": "The row, no longer deleted", "content": json_body(row)}),
            );
        }
        _ => {}
    }
    op.insert("responses".into(), Value::Object(responses));
    op.insert("parameters".into(), Value::Array(params));
}

/// `limit`, `cursor`, `sort` and the filters of a table's list.
fn list_parameters(table: &Table) -> Vec<Value> {
    let mut sorts = Vec::new();
    let mut params = vec![
        json!({"name": "limit", "in": "query", "required": false,
               "schema": {"type": "integer", "minimum": 1, "maximum": orgbase_db::records::MAX_LIMIT}}),
        json!({"name": "cursor", "in": "query", "required": false,
               "description": "`next_cursor` of the previous page (bound to the sort)",
               "schema": {"type": "string"}}),
    ];
    for c in &table.columns {
        let sealed = orgbase_db::fields::is_sealed(c);
        let scalar = !matches!(c.kind, Kind::Json | Kind::TextArray | Kind::Other);
        if sealed || !scalar || !c.indexed {
            continue;
        }
        if c.not_null {
            sorts.push(c.name.clone());
            sorts.push(format!("-{}", c.name));
        }
        if c.name == "org_id" {
            continue;
        }
        for op in ["", ".eq", ".lt", ".lte", ".gt", ".gte"] {
            params.push(json!({
                "name": format!("{}{op}", c.name), "in": "query", "required": false,
                "schema": scalar_schema(c),
            }));
        }
    }
    params.push(json!({"name": "sort", "in": "query", "required": false,
                       "description": "A column, `-column` for descending (default `-created_at`)",
                       "schema": {"type": "string", "enum": sorts}}));
    params
}

/// A column's value in JSON, not null.
fn scalar_schema(c: &Column) -> Value {
    let mut s = match c.kind {
        Kind::Text => json!({"type": "string"}),
        Kind::Uuid => json!({"type": "string", "format": "uuid"}),
        Kind::Integer => json!({"type": "integer"}),
        Kind::Number => json!({"type": "number"}),
        Kind::Boolean => json!({"type": "boolean"}),
        Kind::Date => json!({"type": "string", "format": "date"}),
        Kind::Timestamp => json!({"type": "string", "format": "date-time"}),
        Kind::TextArray => json!({"type": "array", "items": {"type": "string"}}),
        Kind::Json | Kind::Other => json!({}),
    };
    if let Some(m) = s.as_object_mut() {
        if let Some(values) = &c.allowed {
            m.insert("enum".into(), json!(values));
        }
        if let Some(lo) = c.min_length {
            m.insert("minLength".into(), lo.into());
        }
        if let Some(hi) = c.max_length {
            m.insert("maxLength".into(), hi.into());
        }
    }
    s
}

/// The same, or null when `nullable`.
fn value_schema(c: &Column, nullable: bool) -> Value {
    let s = scalar_schema(c);
    match (nullable, s.get("type").and_then(Value::as_str)) {
        (true, Some(t)) => {
            let mut s = s.clone();
            s["type"] = json!([t, "null"]);
            if let Some(values) = s.get_mut("enum").and_then(Value::as_array_mut) {
                values.push(Value::Null);
            }
            s
        }
        _ => s,
    }
}

fn describe(c: &Column) -> String {
    let mut d = format!("class {}", c.class);
    if orgbase_db::fields::is_sealed(c) {
        d.push_str("; stored encrypted, null once its key was destroyed (erasure)");
    }
    d
}

/// A row as the API answers it.
fn row_schema(table: &Table) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for c in &table.columns {
        let sealed = orgbase_db::fields::is_sealed(c);
        let mut s = value_schema(c, !c.not_null || sealed);
        if let Some(m) = s.as_object_mut() {
            m.insert("description".into(), describe(c).into());
            if SYSTEM_COLUMNS.contains(&c.name.as_str()) || c.name == "id" {
                m.insert("readOnly".into(), true.into());
            }
            // What was stored before a limit was declared may lie outside it.
            m.remove("minLength");
            m.remove("maxLength");
        }
        props.insert(c.name.clone(), s);
        required.push(c.name.clone());
    }
    json!({"type": "object", "required": required, "properties": props})
}

/// A create (`creating`) or change body: the columns a client may set.
fn write_schema(table: &Table, creating: bool) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for c in &table.columns {
        if !table.writable(&c.name, creating) {
            continue;
        }
        let mut s = value_schema(c, !c.not_null);
        if let Some(m) = s.as_object_mut() {
            m.insert("description".into(), describe(c).into());
        }
        props.insert(c.name.clone(), s);
        if creating && c.not_null && !c.has_default {
            required.push(c.name.clone());
        }
    }
    let mut s = json!({"type": "object", "additionalProperties": false, "properties": props});
    if creating {
        s["required"] = json!(required);
    } else {
        s["minProperties"] = json!(1);
    }
    s
}
