//! GDPR requests (docs/erasure.md): the worker that turns the rows of `orgbase.gdpr_requests` into
//! export archives and erasures. It runs as administrator (tenant row-level security does not
//! apply), from `orgbase erase run` / `orgbase export run` and from the server.
//!
//! Erasure of a person, in one organization (an admin's request) or in all of theirs (their own):
//! 1. at once: their rows soft-deleted, their membership (or, for their own request, their
//!    account and sessions) disabled → `pending`;
//! 2. at `due_at` (or at once with `--now`): their rows hard-deleted (rows that others' rows
//!    still refer to are kept, their encrypted values shredded with the key), memberships
//!    removed, the account anonymized (own request), audit entries about the account redacted
//!    (the chain keeps verifying), the data keys destroyed, an audit entry recording the shred,
//!    and a signed certificate of deletion → `done`.
//!
//! Until step 2 begins the person may cancel their own erasure (the account comes back at
//! once, in the database); the worker's next pass then puts back the rows step 1 deleted. Each
//! step locks the request row and checks it was not cancelled meanwhile.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use orgbase_keys::{Keys, Tombstone};
use serde_json::{Map, Value, json};
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::catalog::{Catalog, Table};
use crate::fields::{Fields, subject_key};

/// The organization id of the account-level audit chain.
const ACCOUNT_CHAIN: Uuid = Uuid::nil();

#[derive(Debug, thiserror::Error)]
pub enum GdprError {
    #[error("database: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Catalog(#[from] crate::DbError),
    #[error("keys: {0}")]
    Keys(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The request cannot proceed as asked (legal hold, last owner): it stays open.
    #[error("{0}")]
    Refused(String),
    /// Another process (the server's worker, another `erase run`) is carrying out requests.
    #[error("another orgbase process is carrying out GDPR requests right now; try again shortly")]
    Busy,
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GdprError {
    let context = context.into();
    move |source| GdprError::Io { context, source }
}

/// What the worker needs: the key store (for decryption in exports, destruction in erasures and
/// the certificate's signature) and where archives and certificates go.
#[derive(Debug)]
pub struct Worker<'a> {
    pub keys: &'a Keys,
    pub fields: &'a Fields,
    pub dir: &'a Path,
}

/// One request the worker moved along.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub id: Uuid,
    pub kind: String,
    pub subject: Uuid,
    pub org_id: Option<Uuid>,
    /// The status it reached: pending, done, cancelled (rows put back), or still
    /// requested/pending with `error`.
    pub status: String,
    pub detail: Value,
    pub error: Option<String>,
}

struct Request {
    id: Uuid,
    kind: String,
    subject: Uuid,
    org_id: Option<Uuid>,
    status: String,
}

/// Processes every open request that is due: exports, the soft phase of new erasures, and the
/// hard phase of erasures whose grace period ended (all of them with `now`). `only` limits the
/// run to one request. A failure of one request is recorded on it and does not stop the others.
pub async fn run(
    client: &mut Client,
    worker: &Worker<'_>,
    now: bool,
    only: Option<Uuid>,
) -> Result<Vec<Outcome>, GdprError> {
    // One worker at a time: a request is carried out in several transactions.
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock(hashtext('orgbase.gdpr'))", &[])
        .await?
        .get(0);
    if !locked {
        return Err(GdprError::Busy);
    }
    let result = run_locked(client, worker, now, only).await;
    client
        .execute("SELECT pg_advisory_unlock(hashtext('orgbase.gdpr'))", &[])
        .await?;
    result
}

async fn run_locked(
    client: &mut Client,
    worker: &Worker<'_>,
    now: bool,
    only: Option<Uuid>,
) -> Result<Vec<Outcome>, GdprError> {
    let rows = client
        .query(
            "SELECT id, kind, subject, org_id, status FROM orgbase.gdpr_requests
              WHERE ((status IN ('requested', 'pending')
                      AND (status = 'requested' OR due_at <= now() OR $1))
                     OR (status = 'cancelled' AND soft_deleted_at IS NOT NULL))
                AND ($2::uuid IS NULL OR id = $2)
              ORDER BY requested_at",
            &[&now, &only],
        )
        .await?;
    let requests: Vec<Request> = rows
        .iter()
        .map(|r| Request {
            id: r.get(0),
            kind: r.get(1),
            subject: r.get(2),
            org_id: r.get(3),
            status: r.get(4),
        })
        .collect();
    let mut out = Vec::new();
    for req in requests {
        let result = match (req.kind.as_str(), req.status.as_str()) {
            ("export", _) => export(client, worker, &req).await,
            (_, "cancelled") => restore(client, &req).await,
            _ => erase(client, worker, &req, now).await,
        };
        let outcome = match result {
            Ok((status, detail)) => Outcome {
                id: req.id,
                kind: req.kind,
                subject: req.subject,
                org_id: req.org_id,
                status,
                detail,
                error: None,
            },
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(request = %req.id, kind = %req.kind, error = %message, "GDPR request not completed");
                client
                    .execute(
                        "UPDATE orgbase.gdpr_requests SET error = $2 WHERE id = $1",
                        &[&req.id, &message],
                    )
                    .await?;
                Outcome {
                    id: req.id,
                    kind: req.kind,
                    subject: req.subject,
                    org_id: req.org_id,
                    status: req.status,
                    detail: Value::Null,
                    error: Some(message),
                }
            }
        };
        out.push(outcome);
    }
    Ok(out)
}

/// The organizations a request covers: the one of an admin's request, or every organization
/// the person is or was a member of.
async fn scope(client: &impl GenericClient, req: &Request) -> Result<Vec<Uuid>, GdprError> {
    if let Some(org) = req.org_id {
        return Ok(vec![org]);
    }
    let rows = client
        .query(
            "SELECT DISTINCT org_id FROM orgbase.members WHERE user_id = $1 ORDER BY 1",
            &[&req.subject],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A legal hold on any of the organizations, or on the person there, stops an erasure. The
/// holds come with the retention work; without them there is nothing to check.
async fn legal_hold(
    client: &impl GenericClient,
    orgs: &[Uuid],
    subject: Uuid,
) -> Result<Option<Uuid>, GdprError> {
    let has = client
        .query_one(
            "SELECT to_regprocedure('orgbase.on_legal_hold(uuid,uuid)') IS NOT NULL",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    if !has {
        return Ok(None);
    }
    for org in orgs {
        let held: bool = client
            .query_one("SELECT orgbase.on_legal_hold($1, $2)", &[org, &subject])
            .await?
            .get(0);
        if held {
            return Ok(Some(*org));
        }
    }
    Ok(None)
}

async fn erase(
    client: &mut Client,
    worker: &Worker<'_>,
    req: &Request,
    now: bool,
) -> Result<(String, Value), GdprError> {
    let orgs = scope(&*client, req).await?;
    if let Some(org) = legal_hold(&*client, &orgs, req.subject).await? {
        return Err(GdprError::Refused(format!(
            "organization {org} has a legal hold on this person's data: erasure waits until it is released"
        )));
    }
    let catalog = Catalog::load(&*client).await?;
    if req.status == "requested" {
        if !soft_delete(client, &catalog, req, &orgs).await? {
            return Ok(cancelled());
        }
        let due: bool = client
            .query_one(
                "SELECT due_at <= now() OR $2 FROM orgbase.gdpr_requests WHERE id = $1",
                &[&req.id, &now],
            )
            .await?
            .get(0);
        if !due {
            return Ok(("pending".into(), json!({ "organizations": orgs })));
        }
    }
    hard_delete(client, worker, &catalog, req, &orgs).await
}

/// What a request cancelled under the worker's feet reached.
fn cancelled() -> (String, Value) {
    ("cancelled".into(), json!({ "cancelled": true }))
}

/// Locks the request in `tx` (a cancellation locks it too) and tells whether it is still `want`.
async fn still(
    tx: &tokio_postgres::Transaction<'_>,
    req: &Request,
    want: &str,
) -> Result<bool, GdprError> {
    let status: Option<String> = tx
        .query_opt(
            "SELECT status FROM orgbase.gdpr_requests WHERE id = $1 FOR UPDATE",
            &[&req.id],
        )
        .await?
        .map(|r| r.get(0));
    Ok(status.as_deref() == Some(want))
}

/// The soft phase of an erasure; false when the person cancelled it first (nothing done).
async fn soft_delete(
    client: &mut Client,
    catalog: &Catalog,
    req: &Request,
    orgs: &[Uuid],
) -> Result<bool, GdprError> {
    let tx = client.transaction().await?;
    if !still(&tx, req, "requested").await? {
        return Ok(false);
    }
    for t in catalog.tables.values() {
        tx.execute(
            &format!(
                "UPDATE {} SET deleted_at = now() WHERE org_id = ANY($1) AND created_by = $2 AND deleted_at IS NULL",
                t.qualified
            ),
            &[&orgs, &req.subject],
        )
        .await?;
    }
    if req.org_id.is_some() {
        tx.execute(
            "UPDATE orgbase.members SET deleted_at = now() WHERE org_id = ANY($1) AND user_id = $2 AND deleted_at IS NULL",
            &[&orgs, &req.subject],
        )
        .await?;
    } else {
        tx.execute(
            "UPDATE orgbase.sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
            &[&req.subject],
        )
        .await?;
        tx.execute(
            "UPDATE orgbase.users SET status = 'inactive', deleted_at = coalesce(deleted_at, now()) WHERE id = $1",
            &[&req.subject],
        )
        .await?;
    }
    // One transaction, one now(): every row this touched carries this time, which is how a
    // cancellation finds them again.
    tx.execute(
        "UPDATE orgbase.gdpr_requests SET status = 'pending', error = NULL, soft_deleted_at = now()
          WHERE id = $1",
        &[&req.id],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// After the person cancelled their erasure (only their own request can be cancelled): put back
/// the rows its soft phase deleted, and only those — the ones stamped with its time. The
/// account itself came back with the cancellation.
async fn restore(client: &mut Client, req: &Request) -> Result<(String, Value), GdprError> {
    let catalog = Catalog::load(&*client).await?;
    let orgs = scope(&*client, req).await?;
    let tx = client.transaction().await?;
    let at: Option<chrono::DateTime<chrono::Utc>> = tx
        .query_opt(
            "SELECT soft_deleted_at FROM orgbase.gdpr_requests
              WHERE id = $1 AND status = 'cancelled' FOR UPDATE",
            &[&req.id],
        )
        .await?
        .and_then(|r| r.get(0));
    let Some(at) = at else {
        return Ok(cancelled());
    };
    let mut restored = Map::new();
    for t in catalog.tables.values() {
        let n = tx
            .execute(
                &format!(
                    "UPDATE {} SET deleted_at = NULL
                      WHERE org_id = ANY($1) AND created_by = $2 AND deleted_at = $3",
                    t.qualified
                ),
                &[&orgs, &req.subject, &at],
            )
            .await?;
        if n > 0 {
            restored.insert(t.name.clone(), json!(n));
        }
    }
    tx.execute(
        "UPDATE orgbase.gdpr_requests SET soft_deleted_at = NULL WHERE id = $1",
        &[&req.id],
    )
    .await?;
    tx.commit().await?;
    Ok(("cancelled".into(), json!({ "restored": restored })))
}

/// Deletes the person's rows table by table; a table whose delete hits a reference from
/// another row is tried again after the others, then row by row, keeping only rows others still
/// refer to. Returns (deleted, kept) per table.
async fn delete_rows(
    tx: &tokio_postgres::Transaction<'_>,
    catalog: &Catalog,
    orgs: &[Uuid],
    subject: Uuid,
) -> Result<BTreeMap<String, (u64, u64)>, GdprError> {
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut todo: Vec<&Table> = catalog.tables.values().map(|t| t.as_ref()).collect();
    for _pass in 0..todo.len().max(1) {
        let mut failed = Vec::new();
        for t in todo {
            tx.batch_execute("SAVEPOINT erase_table").await?;
            let sql = format!(
                "DELETE FROM {} WHERE org_id = ANY($1) AND created_by = $2",
                t.qualified
            );
            match tx.execute(&sql, &[&orgs, &subject]).await {
                Ok(n) => {
                    tx.batch_execute("RELEASE SAVEPOINT erase_table").await?;
                    counts.entry(t.name.clone()).or_default().0 += n;
                }
                Err(e) if is_fk(&e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT erase_table")
                        .await?;
                    failed.push(t);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let progress = failed.len() < catalog.tables.len();
        todo = failed;
        if todo.is_empty() || !progress {
            break;
        }
    }
    // What is left is referenced by rows of other people: delete what can go, row by row.
    for t in todo {
        let ids = tx
            .query(
                &format!(
                    "SELECT org_id, id FROM {} WHERE org_id = ANY($1) AND created_by = $2",
                    t.qualified
                ),
                &[&orgs, &subject],
            )
            .await?;
        let del = format!("DELETE FROM {} WHERE org_id = $1 AND id = $2", t.qualified);
        for r in ids {
            let (org, id): (Uuid, Uuid) = (r.get(0), r.get(1));
            tx.batch_execute("SAVEPOINT erase_row").await?;
            let entry = counts.entry(t.name.clone()).or_default();
            match tx.execute(&del, &[&org, &id]).await {
                Ok(n) => {
                    tx.batch_execute("RELEASE SAVEPOINT erase_row").await?;
                    entry.0 += n;
                }
                Err(e) if is_fk(&e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT erase_row").await?;
                    entry.1 += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(counts)
}

fn is_fk(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
}

async fn hard_delete(
    client: &mut Client,
    worker: &Worker<'_>,
    catalog: &Catalog,
    req: &Request,
    orgs: &[Uuid],
) -> Result<(String, Value), GdprError> {
    let pseudonym = worker.keys.pseudonymizer().pseudonym(req.subject);
    let tx = client.transaction().await?;
    if !still(&tx, req, "pending").await? {
        return Ok(cancelled());
    }
    let rows = delete_rows(&tx, catalog, orgs, req.subject).await?;
    for sql in [
        "DELETE FROM orgbase.api_keys WHERE org_id = ANY($1) AND user_id = $2",
        "DELETE FROM orgbase.team_members WHERE org_id = ANY($1) AND user_id = $2",
        "DELETE FROM orgbase.member_roles WHERE org_id = ANY($1) AND user_id = $2",
        "DELETE FROM orgbase.app_permissions WHERE org_id = ANY($1) AND user_id = $2",
    ] {
        tx.execute(sql, &[&orgs, &req.subject]).await?;
    }
    // Memberships go, unless rows of others still refer to them (then they stay, disabled).
    // An organization keeps an owner; one left without members is closed.
    let mut members_kept = 0u64;
    let mut orgs_closed = Vec::new();
    for org in orgs {
        let r = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE role = 'owner'), count(*) FROM orgbase.members
                  WHERE org_id = $1 AND user_id <> $2 AND deleted_at IS NULL",
                &[org, &req.subject],
            )
            .await?;
        let (owners, others): (i64, i64) = (r.get(0), r.get(1));
        if others == 0 {
            tx.execute(
                "UPDATE orgbase.organizations SET deleted_at = coalesce(deleted_at, now()) WHERE id = $1",
                &[org],
            )
            .await?;
            orgs_closed.push(*org);
        } else if owners == 0 {
            return Err(GdprError::Refused(format!(
                "the person is the last owner of organization {org}, which has other members: transfer ownership first"
            )));
        }
        tx.batch_execute("SAVEPOINT erase_member").await?;
        match tx
            .execute(
                "DELETE FROM orgbase.members WHERE org_id = $1 AND user_id = $2",
                &[org, &req.subject],
            )
            .await
        {
            Ok(_) => tx.batch_execute("RELEASE SAVEPOINT erase_member").await?,
            Err(e) if is_fk(&e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT erase_member")
                    .await?;
                tx.execute(
                    "UPDATE orgbase.members SET deleted_at = coalesce(deleted_at, now()) WHERE org_id = $1 AND user_id = $2",
                    &[org, &req.subject],
                )
                .await?;
                members_kept += 1;
            }
            Err(e) => {
                if let Some(db) = e.as_db_error()
                    && db.hint() == Some("orgbase_last_owner")
                {
                    return Err(GdprError::Refused(format!(
                        "the person is the last owner of organization {org}: transfer ownership first"
                    )));
                }
                return Err(e.into());
            }
        }
    }
    let own = req.org_id.is_none();
    let short = pseudonym
        .rsplit(':')
        .next()
        .map(|h| h.chars().take(16).collect::<String>())
        .unwrap_or_default();
    let anonymous = format!("erased-{short}{}", crate::account::ERASED_DOMAIN);
    let anonymous_hash = worker
        .fields
        .email_hash(&anonymous)
        .map_err(|e| GdprError::Keys(e.to_string()))?;
    // Invitations sent to the person (accepted by them, or to their address) — in every
    // organization for their own request: anonymized, and their keys destroyed below.
    let email_hash: Option<Vec<u8>> = tx
        .query_opt(
            "SELECT email_hash FROM orgbase.users WHERE id = $1",
            &[&req.subject],
        )
        .await?
        .and_then(|r| r.get(0));
    let invitations: Vec<(Uuid, Uuid)> = tx
        .query(
            "UPDATE orgbase.invitations SET email = $5, email_hash = $6
              WHERE (accepted_by = $1 OR email_hash = $2) AND ($3 OR org_id = ANY($4))
              RETURNING org_id, id",
            &[
                &req.subject,
                &email_hash,
                &own,
                &orgs,
                &anonymous,
                &anonymous_hash,
            ],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if own {
        tx.execute(
            "DELETE FROM orgbase.sessions WHERE user_id = $1",
            &[&req.subject],
        )
        .await?;
        // The anonymized account keeps no email or name, and no blind index of the real email.
        tx.execute(
            "UPDATE orgbase.users SET email = $2, email_hash = $3, name = '', password_hash = NULL,
                    totp_secret = NULL, status = 'inactive', deleted_at = coalesce(deleted_at, now())
              WHERE id = $1",
            &[&req.subject, &anonymous, &anonymous_hash],
        )
        .await?;
    }
    tx.commit().await?;

    let mut redacted = 0;
    if own {
        redacted += redact(client, crate::account::USERS, &[req.subject.to_string()]).await?;
    }
    let invitation_ids: Vec<String> = invitations.iter().map(|(_, id)| id.to_string()).collect();
    redacted += redact(client, crate::account::INVITATIONS, &invitation_ids).await?;

    // Destroy the keys: from here on every copy of the person's encrypted values is noise —
    // with their own request, their account's email and name too (the account key).
    let mut doomed: Vec<_> = orgs
        .iter()
        .map(|org| subject_key(*org, req.subject))
        .collect();
    if own {
        doomed.push(crate::account::account_key(req.subject));
    }
    doomed.extend(
        invitations
            .iter()
            .map(|(org, id)| crate::account::invitation_key(*org, *id)),
    );
    let mut tombstones: Vec<Tombstone> = Vec::new();
    for key in doomed {
        tombstones.push(
            worker
                .keys
                .store()
                .destroy(key)
                .map_err(|e| GdprError::Keys(e.to_string()))?,
        );
    }
    let keys: Vec<String> = tombstones.iter().map(|t| t.key_id.to_string()).collect();
    let detail = json!({
        "request": req.id,
        "subject": pseudonym,
        "organizations": orgs,
        "rows": rows.iter().map(|(t, (d, k))| (t.clone(), json!({"deleted": d, "kept_shredded": k}))).collect::<Map<String, Value>>(),
        "memberships_kept_disabled": members_kept,
        "organizations_closed": orgs_closed,
        "audit_entries_redacted": redacted,
        "invitations_anonymized": invitations.len(),
        "keys_destroyed": keys,
    });
    let chain = req.org_id.unwrap_or(ACCOUNT_CHAIN);
    let entry: i64 = client
        .query_one(
            "INSERT INTO orgbase.audit_log (org_id, actor_kind, action, table_name, record_id, new)
             VALUES ($1, 'system', 'gdpr.erase.shred', 'orgbase.gdpr_requests', $2, $3)
             RETURNING id",
            &[&chain, &req.id.to_string(), &detail],
        )
        .await?
        .get(0);
    let stores = vec![
        "database".to_string(),
        "audit".to_string(),
        "backups".to_string(),
    ];
    let certificate = worker
        .keys
        .certify_deletion(req.subject, stores, &tombstones, format!("audit:{entry}"))
        .map_err(|e| GdprError::Keys(e.to_string()))?;
    let text = certificate
        .to_json()
        .map_err(|e| GdprError::Keys(e.to_string()))?;
    let dir = worker.dir.join("certificates");
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let file = dir.join(format!("{}.json", req.id));
    write_private(&file, text.as_bytes())?;
    let cert: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let result = json!({
        "certificate": cert,
        "certificate_file": file.display().to_string(),
        "audit_entry": entry,
        "detail": detail,
    });
    client
        .execute(
            "UPDATE orgbase.gdpr_requests SET status = 'done', completed_at = now(), result = $2, error = NULL
              WHERE id = $1",
            &[&req.id, &result],
        )
        .await?;
    Ok(("done".into(), result))
}

/// Seals the audit log (redaction needs sealed entries: the chain covers their digest), then
/// clears the values of the entries about rows `ids` of `table` (the person's account, the
/// invitations sent to them).
async fn redact(client: &mut Client, table: &str, ids: &[String]) -> Result<u64, GdprError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let about = "table_name = $1 AND record_id = ANY($2)";
    for _ in 0..100 {
        crate::audit::seal_all(client).await?;
        let open: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM orgbase.audit_log WHERE {about} AND seq IS NULL"),
                &[&table, &ids],
            )
            .await?
            .get(0);
        if open == 0 {
            break;
        }
        // The server's sealer holds the lock: it seals them in a moment.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let n = client
        .execute(
            &format!(
                "UPDATE orgbase.audit_log SET old = NULL, new = NULL, redacted_at = now()
                  WHERE {about} AND redacted_at IS NULL AND values_digest IS NOT NULL
                    AND (old IS NOT NULL OR new IS NOT NULL)"
            ),
            &[&table, &ids],
        )
        .await?;
    Ok(n)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), GdprError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}

// Export ------------------------------------------------------------------------------------

/// One file of the archive.
struct Part {
    name: String,
    bytes: Vec<u8>,
}

fn json_part(name: &str, v: &Value) -> Part {
    Part {
        name: name.to_string(),
        bytes: serde_json::to_vec_pretty(v).unwrap_or_default(),
    }
}

/// Rows (JSON objects) as CSV: one column per key seen, nested values as JSON text.
fn csv_part(name: &str, rows: &[Value]) -> Result<Part, GdprError> {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        if let Some(m) = r.as_object() {
            for k in m.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| GdprError::Io {
        context: format!("writing {name}"),
        source: std::io::Error::other(e),
    };
    w.write_record(&cols).map_err(csv_err)?;
    for r in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| match r.get(c) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            })
            .collect();
        w.write_record(&cells).map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| GdprError::Io {
        context: format!("writing {name}"),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(Part {
        name: name.to_string(),
        bytes,
    })
}

async fn rows_json(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Value>, GdprError> {
    Ok(client
        .query(sql, params)
        .await?
        .iter()
        .map(|r| r.get::<_, Value>(0))
        .collect())
}

async fn export(
    client: &mut Client,
    worker: &Worker<'_>,
    req: &Request,
) -> Result<(String, Value), GdprError> {
    let orgs = scope(&*client, req).await?;
    let catalog = Catalog::load(&*client).await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut parts = Vec::new();
    let mut profile = rows_json(
        &tx,
        "SELECT to_jsonb(u) - 'password_hash' - 'totp_secret' - 'email_hash' FROM orgbase.users u WHERE u.id = $1",
        &[&req.subject],
    )
    .await?;
    for p in profile.iter_mut().filter_map(Value::as_object_mut) {
        worker
            .fields
            .open_account_json(p, "id")
            .map_err(|e| GdprError::Keys(e.to_string()))?;
    }
    parts.push(json_part(
        "profile.json",
        profile.first().unwrap_or(&Value::Null),
    ));
    let memberships = rows_json(
        &tx,
        "SELECT jsonb_build_object('org_id', m.org_id, 'organization', o.name, 'slug', o.slug,
                                   'role', m.role, 'joined_at', m.created_at, 'left_at', m.deleted_at)
           FROM orgbase.members m JOIN orgbase.organizations o ON o.id = m.org_id
          WHERE m.user_id = $1 AND m.org_id = ANY($2) ORDER BY o.slug",
        &[&req.subject, &orgs],
    )
    .await?;
    parts.push(json_part(
        "memberships.json",
        &Value::Array(memberships.clone()),
    ));
    parts.push(csv_part("memberships.csv", &memberships)?);
    let mut counts = Map::new();
    for t in catalog.tables.values() {
        let mut rows = rows_json(
            &tx,
            &format!(
                "SELECT to_jsonb(t) FROM {} t WHERE t.org_id = ANY($1) AND t.created_by = $2 ORDER BY t.org_id, t.created_at, t.id",
                t.qualified
            ),
            &[&orgs, &req.subject],
        )
        .await?;
        if rows.is_empty() {
            continue;
        }
        for r in rows.iter_mut() {
            if let Some(m) = r.as_object_mut() {
                worker
                    .fields
                    .open_map(t, m)
                    .map_err(|e| GdprError::Keys(e.to_string()))?;
            }
        }
        counts.insert(t.name.clone(), json!(rows.len()));
        let stem = format!("data/{}", t.name.replace('.', "_"));
        parts.push(json_part(
            &format!("{stem}.json"),
            &Value::Array(rows.clone()),
        ));
        parts.push(csv_part(&format!("{stem}.csv"), &rows)?);
    }
    // Audit entries about the person: their account's own entries, and what they did — with the
    // values only where the row is theirs (an entry about someone else's row keeps its metadata).
    let account_scope: Option<Uuid> = req.org_id.is_none().then_some(ACCOUNT_CHAIN);
    let mut audit = rows_json(
        &tx,
        "SELECT jsonb_build_object('id', a.id, 'org_id', a.org_id, 'at', a.at, 'actor_kind', a.actor_kind,
                                   'actor_user', a.actor_user, 'action', a.action, 'table', a.table_name,
                                   'record_id', a.record_id, 'ip', a.ip, 'user_agent', a.user_agent,
                                   'request_id', a.request_id, 'redacted_at', a.redacted_at,
                                   'old', CASE WHEN mine THEN a.old END, 'new', CASE WHEN mine THEN a.new END)
           FROM orgbase.audit_log a,
                LATERAL (SELECT (a.table_name = 'orgbase.users' AND a.record_id = $1::uuid::text)
                             OR coalesce(a.new ->> 'created_by', a.old ->> 'created_by') = $1::uuid::text
                             OR coalesce(a.new ->> 'user_id', a.old ->> 'user_id') = $1::uuid::text AS mine) m
          WHERE (a.org_id = ANY($2) OR a.org_id = $3)
            AND (a.actor_user = $1 OR mine)
          ORDER BY a.id",
        &[&req.subject, &orgs, &account_scope],
    )
    .await?;
    tx.commit().await?;
    for e in audit.iter_mut() {
        open_audit_values(worker.fields, &catalog, e, "table");
    }
    counts.insert("audit".into(), json!(audit.len()));
    parts.push(json_part("audit.json", &Value::Array(audit.clone())));
    parts.push(csv_part("audit.csv", &audit)?);

    let dir = worker.dir.join("exports");
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let file = dir.join(format!("{}.zip", req.id));
    let (sha256, bytes, manifest) = write_zip(&file, req, &orgs, parts)?;
    let result = json!({
        "file": file.file_name().map(|f| f.to_string_lossy().to_string()),
        "sha256": sha256,
        "bytes": bytes,
        "records": counts,
        "manifest": manifest,
    });
    client
        .execute(
            "UPDATE orgbase.gdpr_requests SET status = 'done', completed_at = now(), result = $2, error = NULL
              WHERE id = $1",
            &[&req.id, &result],
        )
        .await?;
    Ok(("done".into(), result))
}

/// Decrypts the old/new values of an audit entry (its table named by `table_key`) about a row
/// of a tenant table or an account, where the key still exists. The GDPR export and the audit
/// API show the same values. Tables with health data (PHI) keep theirs encrypted: the audit
/// API does not ask for the multi-factor authentication their reads need.
pub fn open_audit_values(fields: &Fields, catalog: &Catalog, entry: &mut Value, table_key: &str) {
    let Some(name) = entry
        .get(table_key)
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return;
    };
    if name == crate::account::USERS {
        // The account's own entries: its email and name, under the account key.
        for side in ["old", "new"] {
            if let Some(m) = entry.get_mut(side).and_then(Value::as_object_mut) {
                let mut copy = m.clone();
                if fields.open_account_json(&mut copy, "id").is_ok() {
                    *m = copy;
                }
            }
        }
        return;
    }
    let Some(table) = catalog
        .tables
        .values()
        .find(|t| t.qualified.replace('"', "") == name)
        .filter(|t| !t.phi)
    else {
        return;
    };
    for side in ["old", "new"] {
        if let Some(m) = entry.get_mut(side).and_then(Value::as_object_mut) {
            // An entry whose key is gone or which does not decrypt keeps its ciphertext.
            let mut copy = m.clone();
            if fields.open_map(table, &mut copy).is_ok() {
                *m = copy;
            }
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// Writes the archive: every part plus `manifest.json` listing each file's size and SHA-256.
/// Returns the archive's SHA-256, its size and the manifest.
fn write_zip(
    file: &Path,
    req: &Request,
    orgs: &[Uuid],
    parts: Vec<Part>,
) -> Result<(String, u64, Value), GdprError> {
    let manifest = json!({
        "format": "orgbase.export.v1",
        "request": req.id,
        "subject": req.subject,
        "organizations": orgs,
        "generated_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "files": parts.iter().map(|p| json!({"name": p.name, "bytes": p.bytes.len(), "sha256": sha256_hex(&p.bytes)})).collect::<Vec<_>>(),
    });
    let tmp = file.with_extension("zip.tmp");
    let zip_err = |e: zip::result::ZipError| GdprError::Io {
        context: format!("writing {}", tmp.display()),
        source: std::io::Error::other(e),
    };
    {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(format!("creating {}", tmp.display())))?;
        let mut zip = zip::ZipWriter::new(f);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o600);
        let manifest_part = json_part("manifest.json", &manifest);
        for p in std::iter::once(&manifest_part).chain(parts.iter()) {
            zip.start_file(p.name.as_str(), options).map_err(zip_err)?;
            zip.write_all(&p.bytes)
                .map_err(io(format!("writing {}", tmp.display())))?;
        }
        let f = zip.finish().map_err(zip_err)?;
        f.sync_all()
            .map_err(io(format!("syncing {}", tmp.display())))?;
    }
    std::fs::rename(&tmp, file).map_err(io(format!("renaming to {}", file.display())))?;
    let bytes = std::fs::read(file).map_err(io(format!("reading {}", file.display())))?;
    Ok((sha256_hex(&bytes), bytes.len() as u64, manifest))
}

/// The archive of a finished export request, by the file name recorded in its result.
pub fn export_path(dir: &Path, result: &Value) -> Option<PathBuf> {
    let name = result.get("file")?.as_str()?;
    // Only a plain file name of ours: never a path from the database.
    if name.contains('/') || name.contains("..") || !name.ends_with(".zip") {
        return None;
    }
    Some(dir.join("exports").join(name))
}

/// Removes export archives older than `keep` (their requests stay, marked expired in result).
pub fn prune_exports(dir: &Path, keep: std::time::Duration) -> Result<u64, GdprError> {
    let dir = dir.join("exports");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > keep);
        if old {
            std::fs::remove_file(e.path())
                .map_err(io(format!("removing {}", e.path().display())))?;
            removed += 1;
        }
    }
    Ok(removed)
}
