//! The catalog of tenant tables the generic API serves (`orgbase.tenant_tables` plus
//! PostgreSQL's own catalog), and the SQL it runs on them. Identifiers only ever come from the
//! catalog (quoted); values are always bound parameters.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_postgres::GenericClient;

use crate::DbError;

/// Columns every tenant table has and the API manages itself.
pub const SYSTEM_COLUMNS: [&str; 6] = [
    "org_id",
    "created_at",
    "updated_at",
    "deleted_at",
    "created_by",
    "updated_by",
];

/// How a column's JSON value is checked before it reaches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Uuid,
    Integer,
    Number,
    Boolean,
    Json,
    Date,
    Timestamp,
    TextArray,
    Other,
}

impl Kind {
    fn of(type_name: &str) -> Self {
        match type_name {
            "text" | "character varying" | "citext" | "name" => Kind::Text,
            "uuid" => Kind::Uuid,
            "smallint" | "integer" | "bigint" => Kind::Integer,
            "numeric" | "real" | "double precision" => Kind::Number,
            "boolean" => Kind::Boolean,
            "json" | "jsonb" => Kind::Json,
            "date" => Kind::Date,
            "timestamp with time zone" | "timestamp without time zone" => Kind::Timestamp,
            "text[]" | "character varying[]" => Kind::TextArray,
            t if t.starts_with("character varying(") => Kind::Text,
            t if t.starts_with("numeric(") => Kind::Number,
            _ => Kind::Other,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// `format_type()` of the column: used in casts.
    pub sql_type: String,
    pub kind: Kind,
    pub not_null: bool,
    pub has_default: bool,
    /// Second column of an index that starts with org_id (or the id): may be filtered and
    /// sorted on.
    pub indexed: bool,
    /// Classification: public, internal (the default), confidential, pii or phi.
    pub class: String,
    /// Declared length limits in characters (`orgbase.classify`), checked by the server on the
    /// plaintext: an encrypted column's own CHECKs see only ciphertext.
    pub min_length: Option<i32>,
    pub max_length: Option<i32>,
    /// The values a CHECK of the form `col IN ('a', 'b', …)` allows, so that a value outside
    /// them is refused by name before SQL (and the OpenAPI document lists them).
    pub allowed: Option<Vec<String>>,
}

/// The values of `CHECK ((col = ANY (ARRAY['a'::text, 'b'::text])))`, PostgreSQL's rendering of
/// `col IN ('a', 'b')`; `None` for any other constraint.
fn allowed_values(def: &str, column: &str) -> Option<Vec<String>> {
    let quoted = quote_ident(column);
    let inner = def.strip_prefix("CHECK ((")?.strip_suffix(")))")?;
    let list = inner
        .strip_prefix(&format!("{column} = ANY (ARRAY["))
        .or_else(|| inner.strip_prefix(&format!("{quoted} = ANY (ARRAY[")))?
        .strip_suffix(']')?;
    list.split(", ")
        .map(|item| {
            let text = item.strip_suffix("::text").unwrap_or(item);
            let v = text.strip_prefix('\'')?.strip_suffix('\'')?;
            (!v.contains('\'')).then(|| v.to_string())
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Table {
    /// The name in URLs: the table's name, schema-qualified only when ambiguous.
    pub name: String,
    /// `"schema"."table"`, quoted.
    pub qualified: String,
    /// `schema.table` as ciphertexts of its values are bound to it (`qualified` without
    /// quotes, `crate::fields`), kept so that decrypting a value does not compute it again.
    pub aad_name: String,
    /// How reads select its rows, worked out on first use (`crate::records`).
    pub(crate) shape: std::sync::OnceLock<crate::records::Shape>,
    pub app: String,
    pub columns: Vec<Column>,
    /// Holds a phi column: every read is recorded in orgbase.read_access_log.
    pub phi: bool,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Columns a client may set on create (`id` included) and on update (`id` excluded).
    pub fn writable(&self, name: &str, creating: bool) -> bool {
        !SYSTEM_COLUMNS.contains(&name) && (creating || name != "id") && self.column(name).is_some()
    }
}

/// All tenant tables, by URL name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: BTreeMap<String, Arc<Table>>,
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Catalog {
    /// Read the catalog (any role that may read `orgbase.tenant_tables`).
    pub async fn load(client: &impl GenericClient) -> Result<Self, DbError> {
        let rows = client
            .query(
                "SELECT t.table_name::oid, n.nspname::text, c.relname::text, t.app,
                        count(*) OVER (PARTITION BY c.relname) AS same_name
                   FROM orgbase.tenant_tables t
                   JOIN pg_class c ON c.oid = t.table_name
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  ORDER BY n.nspname, c.relname",
                &[],
            )
            .await?;
        let mut tables = BTreeMap::new();
        for r in rows {
            let oid: u32 = r.get(0);
            let schema: String = r.get(1);
            let rel: String = r.get(2);
            let app: String = r.get(3);
            let same: i64 = r.get(4);
            let cols = client
                .query(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                            a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                            EXISTS (SELECT 1 FROM pg_index i
                                     WHERE i.indrelid = a.attrelid
                                       AND ((i.indkey[0] = (SELECT attnum FROM pg_attribute
                                                              WHERE attrelid = a.attrelid AND attname = 'org_id')
                                             AND i.indkey[1] = a.attnum)
                                            OR a.attname IN ('id', 'created_at'))),
                            coalesce(cc.class, 'internal'), cc.min_length, cc.max_length
                       FROM pg_attribute a
                       LEFT JOIN orgbase.column_classes cc
                         ON cc.table_name = a.attrelid::regclass AND cc.column_name = a.attname
                      WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                      ORDER BY a.attnum",
                    &[&oid],
                )
                .await?;
            let checks = client
                .query(
                    "SELECT a.attname::text, pg_get_constraintdef(c.oid)
                       FROM pg_constraint c
                       JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                      WHERE c.conrelid = $1 AND c.contype = 'c' AND cardinality(c.conkey) = 1",
                    &[&oid],
                )
                .await?;
            let allowed = |name: &str| {
                checks
                    .iter()
                    .filter(|r| r.get::<_, String>(0) == name)
                    .find_map(|r| allowed_values(&r.get::<_, String>(1), name))
            };
            let columns = cols
                .iter()
                .map(|c| {
                    let sql_type: String = c.get(1);
                    let name: String = c.get(0);
                    Column {
                        allowed: allowed(&name),
                        name,
                        kind: Kind::of(&sql_type),
                        sql_type,
                        not_null: c.get(2),
                        has_default: c.get(3),
                        indexed: c.get(4),
                        class: c.get(5),
                        min_length: c.get(6),
                        max_length: c.get(7),
                    }
                })
                .collect::<Vec<_>>();
            let name = if same > 1 {
                format!("{schema}.{rel}")
            } else {
                rel.clone()
            };
            let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&rel));
            tables.insert(
                name.clone(),
                Arc::new(Table {
                    name,
                    aad_name: qualified.replace('"', ""),
                    shape: Default::default(),
                    qualified,
                    app,
                    phi: columns.iter().any(|c| c.class == "phi"),
                    columns,
                }),
            );
        }
        Ok(Self { tables })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Table>> {
        self.tables.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::allowed_values;

    #[test]
    fn the_values_of_an_in_list_check_are_read_and_nothing_else() {
        let def = "CHECK ((status = ANY (ARRAY['todo'::text, 'in_progress'::text, 'done'::text])))";
        assert_eq!(
            allowed_values(def, "status"),
            Some(vec!["todo".into(), "in_progress".into(), "done".into()])
        );
        assert_eq!(allowed_values(def, "priority"), None);
        assert_eq!(
            allowed_values("CHECK ((length(title) <= 500))", "title"),
            None
        );
        assert_eq!(
            allowed_values(
                "CHECK ((status = ANY (ARRAY['a'::text, upper('b'::text)])))",
                "status"
            ),
            None
        );
    }
}
