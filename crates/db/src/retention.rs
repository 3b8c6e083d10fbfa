//! Retention (docs/retention.md): what each organization's policies make due, deleted unless a
//! legal hold covers it, with an audit entry per organization and data type. Shared by
//! `orgbase retention run`, `orgbase purge` and the server's daily job. Runs as administrator
//! (not subject to row-level security), like migrations.
//!
//! A dry run executes exactly the same statements and rolls them back, so what it reports is
//! what a real run would do at that moment.

use orgbase_core::retention::{DataType, Keep};
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::DbError;

/// The nil organization: account-level data (sessions) and its audit chain.
const ACCOUNTS: Uuid = Uuid::nil();

/// `EXISTS` a legal hold, not released, on organization `org` as a whole or on `subject`: the
/// set-based twin of `orgbase.on_legal_hold(org, subject)` (same predicate, per row).
fn held(org: &str, subject: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM orgbase.legal_holds h WHERE h.org_id = {org} \
         AND h.released_at IS NULL AND (h.subject_id IS NULL OR h.subject_id = {subject}))"
    )
}

/// An interval expression as three columns (months, days, microseconds), for
/// [`Keep::from_interval`].
pub fn interval_parts(expr: &str) -> String {
    format!(
        "(extract(year FROM {expr}) * 12 + extract(month FROM {expr}))::int4, \
         extract(day FROM {expr})::int4, \
         ((extract(hour FROM {expr}) * 3600 + extract(minute FROM {expr}) * 60 \
           + extract(second FROM {expr})) * 1000000)::int8"
    )
}

fn keep_at(row: &tokio_postgres::Row, i: usize) -> Keep {
    Keep::from_interval(row.get(i), row.get(i + 1), row.get(i + 2))
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only this organization (account-level sessions and the shared access-log partitions are
    /// then left alone).
    pub org: Option<Uuid>,
    pub dry_run: bool,
}

/// One organization's (or the account level's) outcome for one data type.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Line {
    /// `None`: not tied to one organization (sessions, access-log partitions, notes).
    pub org: Option<Uuid>,
    pub slug: Option<String>,
    pub data_type: &'static str,
    /// The keep period applied, e.g. `90d`; for whole-class steps the longest applied.
    pub keep: Option<String>,
    /// Deleted (dry run: would be deleted).
    pub deleted: u64,
    /// Due, but kept because of a legal hold.
    pub held: u64,
    /// Anything else to say: partitions dropped, why a type is not enforced, errors.
    pub note: Option<String>,
}

impl Line {
    /// A line not tied to one organization.
    fn general(data_type: DataType, keep: Option<String>, c: Counts, note: String) -> Self {
        Self {
            org: None,
            slug: None,
            data_type: data_type.as_str(),
            keep,
            deleted: c.deleted,
            held: c.held,
            note: Some(note),
        }
    }
}

/// Per-organization counts of one deletion statement.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    deleted: u64,
    held: u64,
}

fn add(into: &mut Vec<(Uuid, Counts)>, org: Uuid, c: Counts) {
    match into.iter_mut().find(|(o, _)| *o == org) {
        Some((_, t)) => {
            t.deleted += c.deleted;
            t.held += c.held;
        }
        None => into.push((org, c)),
    }
}

/// Rows of `(org_id, deleted, held)` → counts.
fn counts(rows: &[tokio_postgres::Row]) -> Vec<(Uuid, Counts)> {
    let mut out = Vec::new();
    for r in rows {
        let c = Counts {
            deleted: r.get::<_, i64>(1).max(0) as u64,
            held: r.get::<_, i64>(2).max(0) as u64,
        };
        add(&mut out, r.get(0), c);
    }
    out
}

/// One audit entry per organization and data type for what retention deleted, and one for what
/// a legal hold kept (`retention.delete`, `retention.held`).
async fn audit(
    tx: &Transaction<'_>,
    data_type: DataType,
    per_org: &[(Uuid, Counts)],
    how: &serde_json::Value,
) -> Result<(), DbError> {
    for (org, c) in per_org {
        for (action, n) in [("retention.delete", c.deleted), ("retention.held", c.held)] {
            if n > 0 {
                let mut detail = how.clone();
                if let Some(m) = detail.as_object_mut() {
                    m.insert("rows".into(), n.into());
                }
                tx.execute(
                    "SELECT orgbase.retention_event($1, $2, $3, $4)",
                    &[org, &action, &data_type.as_str(), &detail],
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn finish(tx: Transaction<'_>, dry_run: bool) -> Result<(), DbError> {
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

/// Tenant tables, children before parents (a table referencing another comes first), so that a
/// parent's rows go after the rows that point at them.
pub async fn tables_children_first(client: &Client) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT t.table_name::oid, t.table_name::text FROM orgbase.tenant_tables t ORDER BY 2",
            &[],
        )
        .await?;
    let tables: Vec<(u32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let edges = client
        .query(
            "SELECT conrelid::oid, confrelid::oid FROM pg_constraint WHERE contype = 'f' \
             AND conrelid IN (SELECT table_name FROM orgbase.tenant_tables) \
             AND confrelid IN (SELECT table_name FROM orgbase.tenant_tables) AND conrelid <> confrelid",
            &[],
        )
        .await?;
    let edges: Vec<(u32, u32)> = edges.iter().map(|r| (r.get(0), r.get(1))).collect();
    // Kahn's algorithm on "child before parent".
    let mut order = Vec::new();
    let mut left = tables;
    while !left.is_empty() {
        let before = left.len();
        let mut next = Vec::new();
        for (oid, name) in &left {
            // A table is ready when no remaining table references it.
            let referenced = edges
                .iter()
                .any(|(child, parent)| parent == oid && left.iter().any(|(o, _)| o == child));
            if referenced {
                next.push((*oid, name.clone()));
            } else {
                order.push(name.clone());
            }
        }
        left = next;
        if left.len() == before {
            // a cycle: take the rest as they are
            order.extend(left.drain(..).map(|(_, n)| n));
        }
    }
    Ok(order)
}

/// What happened in one tenant table.
#[derive(Debug, Clone)]
pub struct TableOutcome {
    pub table: String,
    /// Per organization: rows deleted (or due, in a dry run) and rows kept by a legal hold.
    pub per_org: Vec<(Uuid, u64, u64)>,
    /// The table's rows were kept because deleting them failed (e.g. still referenced by live
    /// rows of another table): the database's message.
    pub kept: Option<String>,
}

/// Hard-delete soft-deleted rows of every tenant table whose `deleted_at` is older than the
/// organization's `soft_deleted` keep period — or than `older_than_days` for every organization
/// when given (`orgbase purge`) — except rows under a legal hold (an org-wide hold, or one on
/// the row's `created_by`). One transaction; a table whose rows cannot go (still referenced) is
/// skipped with its reason. `on_table` is called before each table.
pub async fn purge_soft_deleted(
    client: &mut Client,
    org: Option<Uuid>,
    older_than_days: Option<i32>,
    dry_run: bool,
    mut on_table: impl FnMut(&str),
) -> Result<Vec<TableOutcome>, DbError> {
    let tables = tables_children_first(client).await?;
    let tx = client.transaction().await?;
    let mut out = Vec::with_capacity(tables.len());
    let mut total: Vec<(Uuid, Counts)> = Vec::new();
    for t in &tables {
        on_table(t);
        let sql = format!(
            "WITH plan AS (
                 SELECT o.id AS org_id,
                        coalesce(make_interval(days => $2::int4),
                                 orgbase.retention_keep(o.id, 'soft_deleted')) AS keep
                   FROM orgbase.organizations o WHERE $1::uuid IS NULL OR o.id = $1
             ), due AS (
                 SELECT x.org_id, x.id, {held} AS held
                   FROM {t} x JOIN plan p ON p.org_id = x.org_id
                  WHERE x.deleted_at < now() - p.keep
             ), gone AS (
                 DELETE FROM {t} x USING due
                  WHERE NOT due.held AND x.org_id = due.org_id AND x.id = due.id
             )
             SELECT org_id, count(*) FILTER (WHERE NOT held), count(*) FILTER (WHERE held)
               FROM due GROUP BY org_id",
            held = held("x.org_id", "x.created_by"),
        );
        tx.batch_execute("SAVEPOINT retention_table").await?;
        match tx.query(&sql, &[&org, &older_than_days]).await {
            Ok(rows) => {
                tx.batch_execute("RELEASE SAVEPOINT retention_table")
                    .await?;
                let c = counts(&rows);
                for (o, n) in &c {
                    add(&mut total, *o, *n);
                }
                out.push(TableOutcome {
                    table: t.clone(),
                    per_org: c.iter().map(|(o, n)| (*o, n.deleted, n.held)).collect(),
                    kept: None,
                });
            }
            Err(e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT retention_table")
                    .await?;
                let msg = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                out.push(TableOutcome {
                    table: t.clone(),
                    per_org: Vec::new(),
                    kept: Some(msg),
                });
            }
        }
    }
    let how = match older_than_days {
        Some(d) => serde_json::json!({"keep": format!("{d}d"), "by": "purge"}),
        None => serde_json::json!({"keep": "policy", "by": "retention"}),
    };
    audit(&tx, DataType::SoftDeleted, &total, &how).await?;
    finish(tx, dry_run).await?;
    Ok(out)
}

/// Sessions that ended (expired, idle too long, or logged out) longer ago than the longest
/// `sessions` keep period of the organizations their user belongs to (24 h by default), unless
/// the user is under a legal hold in any of them. Account-level: counted on the account chain.
async fn sessions(client: &mut Client, dry_run: bool) -> Result<Counts, DbError> {
    let tx = client.transaction().await?;
    let sql = format!(
        "WITH due AS (
             SELECT s.id, {held} AS held
               FROM orgbase.sessions s
              WHERE least(s.expires_at, s.last_seen_at + s.idle_timeout,
                          coalesce(s.revoked_at, 'infinity'))
                    < now() - coalesce((SELECT max(orgbase.retention_keep(m.org_id, 'sessions'))
                                          FROM orgbase.members m WHERE m.user_id = s.user_id),
                                       orgbase.retention_default('sessions', false))
         ), gone AS (
             DELETE FROM orgbase.sessions x USING due WHERE NOT due.held AND x.id = due.id
         )
         SELECT $1::uuid, count(*) FILTER (WHERE NOT held), count(*) FILTER (WHERE held) FROM due",
        held = "EXISTS (SELECT 1 FROM orgbase.legal_holds h
                         WHERE h.released_at IS NULL
                           AND (h.subject_id = s.user_id
                                OR (h.subject_id IS NULL AND EXISTS (
                                        SELECT 1 FROM orgbase.members m
                                         WHERE m.org_id = h.org_id AND m.user_id = s.user_id))))",
    );
    let rows = tx.query(&sql, &[&ACCOUNTS]).await?;
    let c = counts(&rows);
    audit(
        &tx,
        DataType::Sessions,
        &c,
        &serde_json::json!({"keep": "policy", "by": "retention"}),
    )
    .await?;
    finish(tx, dry_run).await?;
    Ok(c.first().map(|(_, n)| *n).unwrap_or_default())
}

/// `accounts`: a person's consent history in an organization is kept for the `accounts` period
/// after their membership ended (7 years by default, seed 000: "Active + 7 years post-deletion
/// request"), then deleted, unless they or the organization are under a legal hold.
async fn accounts(
    client: &mut Client,
    org: Option<Uuid>,
    dry_run: bool,
) -> Result<Vec<(Uuid, Counts)>, DbError> {
    let tx = client.transaction().await?;
    let sql = format!(
        "WITH due AS (
             SELECT c.org_id, c.id, {held} AS held
               FROM orgbase.consents c
               JOIN orgbase.members m ON m.org_id = c.org_id AND m.user_id = c.subject_id
              WHERE ($1::uuid IS NULL OR c.org_id = $1)
                AND m.deleted_at < now() - orgbase.retention_keep(c.org_id, 'accounts')
         ), gone AS (
             DELETE FROM orgbase.consents x USING due
              WHERE NOT due.held AND x.org_id = due.org_id AND x.id = due.id
         )
         SELECT org_id, count(*) FILTER (WHERE NOT held), count(*) FILTER (WHERE held)
           FROM due GROUP BY org_id",
        held = held("c.org_id", "c.subject_id"),
    );
    let rows = tx.query(&sql, &[&org]).await?;
    let c = counts(&rows);
    audit(
        &tx,
        DataType::Accounts,
        &c,
        &serde_json::json!({"keep": "policy", "by": "retention"}),
    )
    .await?;
    finish(tx, dry_run).await?;
    Ok(c)
}

/// The access-log partitions (shared by all organizations of a retention class, HIPAA or not):
/// kept for the longest `access_log` period of any organization in the class, and not dropped
/// at all while any organization of the class has a legal hold. Creates the coming months'
/// partitions too. Returns the longest periods in months (standard, HIPAA) and
/// `orgbase.maintain_logs`'s lines.
pub async fn maintain_logs(
    client: &mut Client,
    dry_run: bool,
) -> Result<((i32, i32), Vec<String>), DbError> {
    /// A held class keeps everything (100 years).
    const HELD_MONTHS: i32 = 1200;
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            "WITH k AS (
                 SELECT 'hipaa' = ANY (o.compliance) AS hipaa,
                        orgbase.retention_keep(o.id, 'access_log') AS keep,
                        EXISTS (SELECT 1 FROM orgbase.legal_holds h
                                 WHERE h.org_id = o.id AND h.released_at IS NULL) AS held
                   FROM orgbase.organizations o
             ), m AS (
                 SELECT hipaa, held,
                        (extract(year FROM keep) * 12 + extract(month FROM keep))::int4
                        + ceil((extract(day FROM keep) + extract(hour FROM keep) / 24.0) / 30.0)::int4
                          AS months
                   FROM k
             )
             SELECT coalesce(max(months) FILTER (WHERE NOT hipaa), 12),
                    coalesce(max(months) FILTER (WHERE hipaa), 72),
                    coalesce(bool_or(held) FILTER (WHERE NOT hipaa), false),
                    coalesce(bool_or(held) FILTER (WHERE hipaa), false)
               FROM m",
            &[],
        )
        .await?;
    let std = if row.get(2) { HELD_MONTHS } else { row.get(0) };
    let hipaa = if row.get(3) { HELD_MONTHS } else { row.get(1) };
    let lines: Vec<String> = tx
        .query(
            "SELECT * FROM orgbase.maintain_logs(now(), $1, $2)",
            &[&std, &hipaa],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    finish(tx, dry_run).await?;
    Ok(((std, hipaa), lines))
}

/// How many progress steps [`run`] reports (one per tenant table plus one per other step).
pub async fn steps(client: &Client) -> Result<u64, DbError> {
    let n: i64 = client
        .query_one("SELECT count(*) FROM orgbase.tenant_tables", &[])
        .await?
        .get(0);
    Ok(n.max(0) as u64 + 4)
}

/// Resolve `--org` (id or slug) to an organization id.
pub async fn resolve_org(client: &Client, org: &str) -> Result<Option<Uuid>, DbError> {
    let id = Uuid::parse_str(org).ok();
    Ok(client
        .query_opt(
            "SELECT id FROM orgbase.organizations WHERE id = $1 OR slug = $2",
            &[&id, &org],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Every data type, every organization (or one): delete what is due, keep what a legal hold
/// covers, and say what happened, one line per organization and data type that had something
/// due, plus one line per type that is not tied to an organization or not enforced here.
/// `progress` is called once per step (see [`steps`]) with what is being done.
pub async fn run(
    client: &mut Client,
    opts: &Options,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Line>, DbError> {
    let orgs = client
        .query(
            &format!(
                "SELECT o.id, o.slug, {}, {} FROM orgbase.organizations o
                  WHERE $1::uuid IS NULL OR o.id = $1 ORDER BY o.slug",
                interval_parts("orgbase.retention_keep(o.id, 'soft_deleted')"),
                interval_parts("orgbase.retention_keep(o.id, 'accounts')"),
            ),
            &[&opts.org],
        )
        .await?;
    let orgs: Vec<(Uuid, String, Keep, Keep)> = orgs
        .iter()
        .map(|r| (r.get(0), r.get(1), keep_at(r, 2), keep_at(r, 5)))
        .collect();
    let per_org_lines = |data_type: DataType, per_org: &[(Uuid, Counts)], out: &mut Vec<Line>| {
        for (o, slug, soft, acct) in &orgs {
            let c = per_org
                .iter()
                .find(|(id, _)| id == o)
                .map(|(_, c)| *c)
                .unwrap_or_default();
            if c.deleted == 0 && c.held == 0 {
                continue;
            }
            let keep = match data_type {
                DataType::Accounts => acct,
                _ => soft,
            };
            out.push(Line {
                org: Some(*o),
                slug: Some(slug.clone()),
                data_type: data_type.as_str(),
                keep: Some(keep.to_string()),
                deleted: c.deleted,
                held: c.held,
                note: None,
            });
        }
    };
    let mut out = Vec::new();

    progress("sessions");
    if opts.org.is_none() {
        let c = sessions(client, opts.dry_run).await?;
        out.push(Line::general(
            DataType::Sessions,
            None,
            c,
            "account-level: ended longer ago than the longest policy of the user's organizations"
                .into(),
        ));
    }

    let mut kept_tables = Vec::new();
    let tables = purge_soft_deleted(client, opts.org, None, opts.dry_run, |t| progress(t)).await?;
    let mut soft: Vec<(Uuid, Counts)> = Vec::new();
    for t in tables {
        for (o, deleted, held) in t.per_org {
            add(&mut soft, o, Counts { deleted, held });
        }
        if let Some(why) = t.kept {
            kept_tables.push(format!("{}: {why}", t.table));
        }
    }
    per_org_lines(DataType::SoftDeleted, &soft, &mut out);
    for why in kept_tables {
        out.push(Line::general(
            DataType::SoftDeleted,
            None,
            Counts::default(),
            format!("kept {why} (rows still referenced by live rows)"),
        ));
    }

    progress("accounts");
    let acct = accounts(client, opts.org, opts.dry_run).await?;
    per_org_lines(DataType::Accounts, &acct, &mut out);

    progress("access_log");
    if opts.org.is_none() {
        let ((std, hipaa), lines) = maintain_logs(client, opts.dry_run).await?;
        let dropped = lines.iter().filter(|l| l.starts_with("dropped")).count() as u64;
        let note = if lines.is_empty() {
            "monthly partitions: nothing to drop (standard/HIPAA months kept shown)".into()
        } else {
            format!("monthly partitions: {}", lines.join(", "))
        };
        let dropped = Counts {
            deleted: dropped,
            held: 0,
        };
        out.push(Line::general(
            DataType::AccessLog,
            Some(format!("{std}mo/{hipaa}mo")),
            dropped,
            note,
        ));
    }

    progress("audit, exports, backups");
    // Exports are files, not rows: `gdpr::prune_exports` removes archives older than
    // `privacy.export_keep_days`, called by `orgbase erase run` and the server's privacy worker.
    // Organizations' `exports` policies are not applied. Applying them would mean deleting
    // exports older than `retention_keep(org, 'exports')` here, per organization, skipping
    // subjects under hold (`held("e.org_id", "e.subject_id")`), like `accounts` above.
    for (t, note) in [
        (
            DataType::Audit,
            "kept: chain anchoring not built (deleting entries would break the hash chain)",
        ),
        (
            DataType::Exports,
            "not per organization: export archives expire after privacy.export_keep_days",
        ),
        (
            DataType::Backups,
            "not per organization: `orgbase backup prune` applies the backup tiers",
        ),
    ] {
        out.push(Line::general(t, None, Counts::default(), note.into()));
    }
    Ok(out)
}
