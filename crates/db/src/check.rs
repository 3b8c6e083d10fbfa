//! `orgbase check`: inspect a database's catalog for broken tenant-isolation rules.
//!
//! A *tenant table* is every table registered in `orgbase.tenant_tables` plus every ordinary or
//! partitioned table in a non-system schema that has an `org_id` column, other than orgbase's
//! own identity tables: the second kind catches product tables someone forgot to register.
//! Every query is a fixed catalog query; role names and table sets travel as parameters.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::DbError;
use crate::database::RUNTIME_ROLE;

/// The role that must own every tenant table.
const OWNER_ROLE: &str = "orgbase_owner";

/// orgbase's own tables in the `orgbase` schema (and their partitions) that are not tenant tables even when they have
/// an `org_id` column (members, invitations, api_keys, …): their row-level security is enabled but
/// deliberately not forced, so that orgbase's SECURITY DEFINER functions can authenticate across
/// organizations (docs/security.md); they are checked by the identity tests instead.
const IDENTITY_TABLES: &[&str] = &[
    "users",
    "sessions",
    "organizations",
    "members",
    "app_permissions",
    "invitations",
    "teams",
    "team_members",
    "api_keys",
    "roles",
    "member_roles",
    "context_key",
    // Instance operators: closed to the runtime role, read through functions that check the
    // session (migration 0013).
    "instance_admins",
    "schema_migrations",
    "tenant_tables",
    // The audit trail and access logs: written by SECURITY DEFINER functions, read by
    // organization admins under RLS (docs/audit.md); the logs are partitioned by month.
    "audit_log",
    "audit_heads",
    "access_log",
    "read_access_log",
    // GDPR requests: closed to the runtime role, reached only through SECURITY DEFINER functions
    // that authenticate the caller (docs/erasure.md).
    "gdpr_requests",
    // Consent records, retention policies and legal holds (migration 0007,
    // docs/retention.md): organization-scoped identity tables like members.
    "consents",
    "retention_policies",
    "legal_holds",
    // The privacy-budget ledger (docs/analytics.md): closed to the runtime role, written and
    // read only through SECURITY DEFINER functions that check the caller's context.
    "privacy_budgets",
    "privacy_spend",
    "privacy_charges",
];

/// SQL predicate: the schema `n` is not a system schema.
macro_rules! user_schema {
    ($n:literal) => {
        concat!(
            "(",
            $n,
            ".nspname <> 'information_schema' AND ",
            $n,
            ".nspname NOT LIKE 'pg\\_%')"
        )
    };
}

/// One broken rule: table (or function/view/role) and the rule, with a human message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The object that breaks the rule: `schema.table`, `schema.function(args)`, a role or a
    /// schema name, quoted as SQL identifiers where needed.
    pub object: String,
    /// The rule's stable slug, e.g. `rls-not-forced`.
    pub rule: &'static str,
    pub message: String,
}

impl Finding {
    fn new(object: &str, rule: &'static str, message: String) -> Self {
        Self {
            object: object.to_owned(),
            rule,
            message,
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.rule, self.message)
    }
}

/// Inspect the database `client` is connected to (as administrator) and report every rule
/// broken, sorted by object, then rule, then message. An empty list means the database passes.
pub async fn check(client: &Client) -> Result<Vec<Finding>, DbError> {
    let migrated: bool = client
        .query_one(
            "SELECT to_regclass('orgbase.tenant_tables') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !migrated {
        return Err(DbError::NotMigrated(
            "orgbase.tenant_tables does not exist: the database is not migrated; run \
             `orgbase migrate up`"
                .to_owned(),
        ));
    }

    let mut findings = Vec::new();
    let tenant = tenant_tables(client, &mut findings).await?;
    foreign_keys(client, &tenant, &mut findings).await?;
    security_definer(client, &mut findings).await?;
    views(client, &tenant, &mut findings).await?;
    runtime_role(client, &mut findings).await?;
    findings.sort_by(|a, b| (&a.object, a.rule, &a.message).cmp(&(&b.object, b.rule, &b.message)));
    findings.dedup();
    Ok(findings)
}

/// The per-table rules; returns the oids of all tenant tables.
async fn tenant_tables(client: &Client, out: &mut Vec<Finding>) -> Result<Vec<u32>, DbError> {
    let identity: Vec<&str> = IDENTITY_TABLES.to_vec();
    let rows = client
        .query(
            concat!(
                "WITH registered AS (
                     SELECT table_name::oid AS oid FROM orgbase.tenant_tables
                 ), discovered AS (
                     SELECT c.oid
                       FROM pg_class c
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id'
                                          AND a.attnum > 0 AND NOT a.attisdropped
                      WHERE c.relkind IN ('r', 'p') AND ",
                user_schema!("n"),
                "       AND NOT (n.nspname = 'orgbase' AND c.relname = ANY($1::text[]))
                        -- The anonymized dataset: closed to the runtime role, rebuilt by
                        -- `orgbase analytics refresh` (docs/analytics.md).
                        AND n.nspname <> 'analytics'
                        AND NOT (c.relispartition AND EXISTS (
                                 SELECT 1 FROM pg_class r
                                  WHERE r.oid = pg_partition_root(c.oid)
                                    AND r.relnamespace = 'orgbase'::regnamespace
                                    AND r.relname = ANY($1::text[])))
                 )
                 SELECT c.oid,
                        format('%I.%I', n.nspname, c.relname),
                        c.oid IN (SELECT oid FROM registered),
                        c.relispartition,
                        c.relrowsecurity,
                        c.relforcerowsecurity,
                        pg_get_userbyid(c.relowner)::text,
                        a.attnum,
                        coalesce(a.attnotnull, false),
                        pk.conkey,
                        (SELECT string_agg(quote_ident(pa.attname), ', ' ORDER BY k.i)
                           FROM unnest(pk.conkey) WITH ORDINALITY k (attnum, i)
                           JOIN pg_attribute pa ON pa.attrelid = c.oid AND pa.attnum = k.attnum),
                        ARRAY(SELECT DISTINCT p.polcmd::text FROM pg_policy p
                               WHERE p.polrelid = c.oid AND p.polpermissive)
                   FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id'
                                           AND a.attnum > 0 AND NOT a.attisdropped
                   LEFT JOIN pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
                  WHERE c.oid IN (SELECT oid FROM registered UNION SELECT oid FROM discovered)"
            ),
            &[&identity],
        )
        .await?;

    let mut oids = Vec::with_capacity(rows.len());
    for row in &rows {
        oids.push(row.get::<_, u32>(0));
        let name: String = row.get(1);
        let name = name.as_str();
        let registered: bool = row.get(2);
        let partition: bool = row.get(3);
        let rls: bool = row.get(4);
        let forced: bool = row.get(5);
        let owner: String = row.get(6);
        let org_attnum: Option<i16> = row.get(7);
        let org_not_null: bool = row.get(8);
        let pk: Option<Vec<i16>> = row.get(9);
        let pk_columns: Option<String> = row.get(10);
        let commands: BTreeSet<String> = row.get::<_, Vec<String>>(11).into_iter().collect();

        // A partition is served through its parent, which is what gets registered.
        if !registered && !partition {
            out.push(Finding::new(
                name,
                "unregistered",
                "has an org_id column but is not registered in orgbase.tenant_tables; make it \
                 a tenant table with orgbase.make_tenant_table()"
                    .to_owned(),
            ));
        }
        if !rls {
            out.push(Finding::new(
                name,
                "rls-disabled",
                "row-level security is not enabled (ALTER TABLE … ENABLE ROW LEVEL SECURITY)"
                    .to_owned(),
            ));
        }
        if !forced {
            out.push(Finding::new(
                name,
                "rls-not-forced",
                "row-level security is not forced, so the table owner bypasses it (ALTER TABLE … \
                 FORCE ROW LEVEL SECURITY)"
                    .to_owned(),
            ));
        }
        if !commands.contains("*") {
            for (code, command) in [
                ("r", "SELECT"),
                ("a", "INSERT"),
                ("w", "UPDATE"),
                ("d", "DELETE"),
            ] {
                if !commands.contains(code) {
                    out.push(Finding::new(
                        name,
                        "missing-policy",
                        format!("no permissive row-level security policy for {command}"),
                    ));
                }
            }
        }
        match org_attnum {
            None => out.push(Finding::new(
                name,
                "org-id-missing",
                "has no org_id column".to_owned(),
            )),
            Some(_) if !org_not_null => out.push(Finding::new(
                name,
                "org-id-nullable",
                "org_id is nullable; it must be NOT NULL".to_owned(),
            )),
            Some(_) => {}
        }
        match (pk, pk_columns) {
            (Some(cols), Some(names)) => {
                if org_attnum.is_none() || cols.first() != org_attnum.as_ref() {
                    let why = if org_attnum.is_some_and(|a| cols.contains(&a)) {
                        "does not start with org_id"
                    } else {
                        "does not include org_id"
                    };
                    out.push(Finding::new(
                        name,
                        "org-id-not-in-primary-key",
                        format!("the primary key ({names}) {why}; it should be (org_id, id)"),
                    ));
                }
            }
            _ => out.push(Finding::new(
                name,
                "org-id-not-in-primary-key",
                "has no primary key; it should be (org_id, id)".to_owned(),
            )),
        }
        if owner != OWNER_ROLE {
            out.push(Finding::new(
                name,
                "owner-not-owner-role",
                format!("owned by {owner}, not {OWNER_ROLE}"),
            ));
        }
    }
    Ok(oids)
}

/// `non-composite-tenant-fk`: a foreign key from a tenant table to a table carrying `org_id`
/// (another tenant table, `orgbase.members`, …) must pair org_id with org_id; one to
/// `orgbase.organizations` must come from org_id.
async fn foreign_keys(
    client: &Client,
    tenant: &[u32],
    out: &mut Vec<Finding>,
) -> Result<(), DbError> {
    let rows = client
        .query(
            "WITH fk AS (
                 SELECT con.oid, con.conname, con.conkey, con.confkey, con.conrelid, con.confrelid,
                        (SELECT a.attnum FROM pg_attribute a
                          WHERE a.attrelid = con.conrelid AND a.attname = 'org_id'
                            AND a.attnum > 0 AND NOT a.attisdropped) AS src_org,
                        (SELECT a.attnum FROM pg_attribute a
                          WHERE a.attrelid = con.confrelid
                            AND a.attname = CASE WHEN con.confrelid = to_regclass('orgbase.organizations')
                                                 THEN 'id' ELSE 'org_id' END
                            AND a.attnum > 0 AND NOT a.attisdropped) AS dst_org
                   FROM pg_constraint con
                  WHERE con.contype = 'f' AND con.conrelid = ANY($1::oid[])
                    AND (con.confrelid = ANY($1::oid[])
                         OR con.confrelid = to_regclass('orgbase.organizations')
                         OR EXISTS (SELECT 1 FROM pg_attribute a
                                     WHERE a.attrelid = con.confrelid AND a.attname = 'org_id'
                                       AND a.attnum > 0 AND NOT a.attisdropped))
             )
             SELECT format('%I.%I', n.nspname, c.relname),
                    quote_ident(fk.conname),
                    pg_get_constraintdef(fk.oid),
                    fk.confrelid = to_regclass('orgbase.organizations')
               FROM fk
               JOIN pg_class c ON c.oid = fk.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT EXISTS (
                        SELECT 1 FROM generate_subscripts(fk.conkey, 1) i
                         WHERE fk.conkey[i] = fk.src_org AND fk.confkey[i] = fk.dst_org)",
            &[&tenant],
        )
        .await?;
    for row in &rows {
        let table: String = row.get(0);
        let constraint: String = row.get(1);
        let def: String = row.get(2);
        let to_organizations: bool = row.get(3);
        let message = if to_organizations {
            format!(
                "foreign key {constraint}, {def}, does not come from org_id, so a row can \
                 point at another organization; reference organizations (id) from org_id only"
            )
        } else {
            format!(
                "foreign key {constraint}, {def}, does not include org_id on both sides, so a \
                 row can reference another organization's row; make it composite, e.g. \
                 FOREIGN KEY (org_id, x_id) REFERENCES t (org_id, id)"
            )
        };
        out.push(Finding::new(&table, "non-composite-tenant-fk", message));
    }
    Ok(())
}

/// `security-definer-search-path`: a SECURITY DEFINER function must pin its search_path.
async fn security_definer(client: &Client, out: &mut Vec<Finding>) -> Result<(), DbError> {
    let rows = client
        .query(
            concat!(
                "SELECT format('%I.%I(%s)', n.nspname, p.proname,
                               pg_get_function_identity_arguments(p.oid))
                   FROM pg_proc p
                   JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE p.prosecdef AND ",
                user_schema!("n"),
                "   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) s
                                     WHERE starts_with(lower(s), 'search_path='))"
            ),
            &[],
        )
        .await?;
    for row in &rows {
        let function: String = row.get(0);
        out.push(Finding::new(
            &function,
            "security-definer-search-path",
            "SECURITY DEFINER without a pinned search_path: a caller's objects can shadow the \
             ones it uses (add SET search_path = pg_catalog, <schema>)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// `view-not-security-invoker`: a view that reads a tenant table, directly or through other
/// views, must be `security_invoker`, or it reads with its owner's rights.
async fn views(client: &Client, tenant: &[u32], out: &mut Vec<Finding>) -> Result<(), DbError> {
    let rows = client
        .query(
            concat!(
                "WITH RECURSIVE edge AS (
                     SELECT DISTINCT r.ev_class AS src, d.refobjid AS dst
                       FROM pg_rewrite r
                       JOIN pg_class v ON v.oid = r.ev_class AND v.relkind = 'v'
                       JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                                       AND d.refclassid = 'pg_class'::regclass
                                       AND d.refobjid <> r.ev_class
                 ), reach (src, dst) AS (
                     SELECT src, dst FROM edge
                     UNION
                     SELECT reach.src, edge.dst FROM reach JOIN edge ON edge.src = reach.dst
                 )
                 SELECT format('%I.%I', n.nspname, v.relname),
                        string_agg(DISTINCT format('%I.%I', tn.nspname, t.relname), ', ')
                   FROM pg_class v
                   JOIN pg_namespace n ON n.oid = v.relnamespace
                   JOIN reach ON reach.src = v.oid AND reach.dst = ANY($1::oid[])
                   JOIN pg_class t ON t.oid = reach.dst
                   JOIN pg_namespace tn ON tn.oid = t.relnamespace
                  WHERE v.relkind = 'v' AND ",
                user_schema!("n"),
                "   AND NOT coalesce((SELECT o.option_value::boolean
                                        FROM pg_options_to_table(v.reloptions) o
                                       WHERE o.option_name = 'security_invoker'), false)
                  GROUP BY 1"
            ),
            &[&tenant],
        )
        .await?;
    for row in &rows {
        let view: String = row.get(0);
        let tables: String = row.get(1);
        out.push(Finding::new(
            &view,
            "view-not-security-invoker",
            format!(
                "reads tenant table(s) {tables} with its owner's rights; create it WITH \
                 (security_invoker = true)"
            ),
        ));
    }
    Ok(())
}

/// `runtime-bypassrls` and `runtime-owns-objects`.
async fn runtime_role(client: &Client, out: &mut Vec<Finding>) -> Result<(), DbError> {
    let role = client
        .query_opt(
            "SELECT r.rolsuper, r.rolbypassrls,
                    ARRAY(SELECT m.rolname::text FROM pg_roles m
                           WHERE m.oid <> r.oid AND (m.rolsuper OR m.rolbypassrls)
                             AND pg_has_role(r.oid, m.oid, 'MEMBER')
                           ORDER BY 1)
               FROM pg_roles r WHERE r.rolname = $1",
            &[&RUNTIME_ROLE],
        )
        .await?;
    // Without the role there is nothing it could bypass or own (and `migrate` would say so).
    let Some(role) = role else {
        return Ok(());
    };
    let superuser: bool = role.get(0);
    let bypassrls: bool = role.get(1);
    let via: Vec<String> = role.get(2);
    if superuser || bypassrls {
        let attribute = if superuser { "SUPERUSER" } else { "BYPASSRLS" };
        out.push(Finding::new(
            RUNTIME_ROLE,
            "runtime-bypassrls",
            format!("the runtime role has {attribute}: row-level security does not apply to it"),
        ));
    }
    if !via.is_empty() {
        out.push(Finding::new(
            RUNTIME_ROLE,
            "runtime-bypassrls",
            format!(
                "the runtime role is a member of {}, which bypass(es) row-level security, and \
                 can SET ROLE to it",
                via.join(", ")
            ),
        ));
    }

    let rows = client
        .query(
            concat!(
                "WITH rt AS (SELECT oid FROM pg_roles WHERE rolname = $1)
                 SELECT format('%I.%I', n.nspname, c.relname),
                        CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
                                       WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                       WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table'
                                       WHEN 'c' THEN 'composite type' ELSE 'relation' END
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relowner = (SELECT oid FROM rt)
                    AND c.relkind NOT IN ('i', 'I', 't') AND ",
                user_schema!("n"),
                " UNION ALL
                 SELECT format('%I.%I(%s)', n.nspname, p.proname,
                               pg_get_function_identity_arguments(p.oid)),
                        CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
                                       ELSE 'function' END
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE p.proowner = (SELECT oid FROM rt) AND ",
                user_schema!("n"),
                " UNION ALL
                 SELECT format('%I', n.nspname), 'schema'
                   FROM pg_namespace n
                  WHERE n.nspowner = (SELECT oid FROM rt) AND ",
                user_schema!("n")
            ),
            &[&RUNTIME_ROLE],
        )
        .await?;
    for row in &rows {
        let object: String = row.get(0);
        let kind: String = row.get(1);
        out.push(Finding::new(
            &object,
            "runtime-owns-objects",
            format!(
                "this {kind} is owned by {RUNTIME_ROLE}; the runtime role must own nothing (an \
                 owner can change privileges, policies and row-level security)"
            ),
        ));
    }
    Ok(())
}
