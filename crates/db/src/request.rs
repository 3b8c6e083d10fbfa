//! The request transaction: BEGIN, the tenant context (`orgbase.begin_request`, which
//! authenticates the credential itself), the request's statements and COMMIT, pipelined on one
//! connection so that a single-statement request costs one round trip.

use std::net::IpAddr;

use deadpool_postgres::{Object, Pool};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use uuid::Uuid;

/// Who is asking: the SHA-256 of the bearer credential, the client address (API keys may be
/// limited to addresses), and for the audit trail the request id and user agent.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub cred_hash: [u8; 32],
    pub ip: Option<IpAddr>,
    pub request_id: Option<String>,
    pub user_agent: Option<String>,
    /// Filled with the verified organization and user once the context is established, for
    /// the access log.
    pub seen: Option<std::sync::Arc<std::sync::OnceLock<(Uuid, Uuid)>>>,
}

impl Caller {
    fn saw(&self, org_ref: &str, ctx: &Context) {
        if let Some(slot) = &self.seen {
            let _ = slot.set((ctx.org_id, ctx.user_id));
        }
        hints::remember(&self.cred_hash, org_ref, ctx);
    }

    /// The (organization, user) this credential was, in organization `org_ref`, when a request
    /// last verified it (at most [`hints::TTL`] ago). Only a hint for preparing a write ahead
    /// of its transaction — encrypting values for the right organization and person, filling
    /// `org_id`/`created_by` — never a permission: the database verifies the context again in
    /// that transaction, and its policies reject a row whose organization or creator differs.
    pub fn context_hint(&self, org_ref: &str) -> Option<(Uuid, Uuid)> {
        hints::get(&self.cred_hash, org_ref)
    }

    /// Drop the hint: the database refused a write prepared with it.
    pub fn forget_context_hint(&self, org_ref: &str) {
        hints::forget(&self.cred_hash, org_ref);
    }
}

/// Recently verified (credential, organization) → (organization id, user id), per process.
mod hints {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use uuid::Uuid;

    use super::Context;

    /// How long a verified context is used as a hint.
    pub const TTL: Duration = Duration::from_secs(10);
    /// Entries kept at most; the map is emptied when it is full (hints are cheap to relearn).
    const CAPACITY: usize = 10_000;

    type Key = ([u8; 32], String);
    type Map = HashMap<Key, (Uuid, Uuid, Instant)>;

    fn map() -> &'static Mutex<Map> {
        static MAP: OnceLock<Mutex<Map>> = OnceLock::new();
        MAP.get_or_init(|| Mutex::new(HashMap::new()))
    }

    fn lock() -> std::sync::MutexGuard<'static, Map> {
        map().lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(cred: &[u8; 32], org_ref: &str) -> Option<(Uuid, Uuid)> {
        let m = lock();
        let (o, u, at) = m.get(&(*cred, org_ref.to_string()))?;
        (at.elapsed() < TTL).then_some((*o, *u))
    }

    pub fn remember(cred: &[u8; 32], org_ref: &str, ctx: &Context) {
        let mut m = lock();
        let key = (*cred, org_ref.to_string());
        if let Some((o, u, at)) = m.get(&key)
            && *o == ctx.org_id
            && *u == ctx.user_id
            && at.elapsed() < TTL / 2
        {
            return;
        }
        if m.len() >= CAPACITY {
            m.clear();
        }
        m.insert(key, (ctx.org_id, ctx.user_id, Instant::now()));
    }

    pub fn forget(cred: &[u8; 32], org_ref: &str) {
        lock().remove(&(*cred, org_ref.to_string()));
    }
}

/// The verified tenant context of a request transaction.
#[derive(Debug, Clone)]
pub struct Context {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub org_role: String,
    pub app_roles: String,
}

impl Context {
    pub fn is_admin(&self) -> bool {
        matches!(self.org_role.as_str(), "owner" | "admin")
    }
}

/// Why a request failed, in the terms the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ReqError {
    #[error("invalid or expired credentials")]
    Unauthenticated,
    #[error("no such organization, or you are not a member")]
    NotMember,
    #[error("this organization requires multi-factor authentication")]
    MfaRequired,
    #[error("this API key may not be used from this address")]
    IpNotAllowed,
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    /// Input the database refused: field (when known) and message.
    #[error("{1}")]
    Invalid(Option<String>, String),
    #[error("the database did not answer in time")]
    Timeout,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(tokio_postgres::Error),
    /// PHI columns need a session that passed multi-factor authentication.
    #[error(
        "this table holds health data (PHI): sign in with multi-factor authentication to use it"
    )]
    PhiNeedsMfa,
    /// The key store failed (I/O): nothing was written.
    #[error("key store unavailable: {0}")]
    Keys(String),
    /// A stored ciphertext does not decrypt for its place: moved, altered, or under a key
    /// version that is gone.
    #[error("a stored value cannot be decrypted: {0}")]
    Undecryptable(String),
}

impl From<tokio_postgres::Error> for ReqError {
    fn from(e: tokio_postgres::Error) -> Self {
        classify(e)
    }
}

/// Map a PostgreSQL error to what the client should hear. The orgbase functions say what went
/// wrong in the HINT; constraint violations name the constraint or column.
pub fn classify(e: tokio_postgres::Error) -> ReqError {
    let Some(db) = e.as_db_error() else {
        return if e.is_closed() {
            ReqError::Unavailable("connection closed".into())
        } else {
            ReqError::Db(e)
        };
    };
    match db.hint() {
        Some("orgbase_unauthenticated") => return ReqError::Unauthenticated,
        Some("orgbase_not_member") => return ReqError::NotMember,
        Some("orgbase_mfa_required") => return ReqError::MfaRequired,
        Some("orgbase_ip_not_allowed") => return ReqError::IpNotAllowed,
        Some("orgbase_email_taken") | Some("orgbase_slug_taken") | Some("orgbase_mfa_enabled") => {
            return ReqError::Conflict(db.message().to_string());
        }
        Some("orgbase_last_owner") | Some("orgbase_hold_released") => {
            return ReqError::Conflict(db.message().to_string());
        }
        Some("orgbase_no_invitation") | Some("orgbase_not_found") => return ReqError::NotFound,
        Some("orgbase_forbidden") => return ReqError::Forbidden(db.message().to_string()),
        Some("orgbase_bad_proof")
        | Some("orgbase_no_context")
        | Some("orgbase_bad_context")
        | Some("orgbase_context_twice") => return ReqError::Db(e),
        _ => {}
    }
    let code = db.code();
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        ReqError::Forbidden("your role does not allow this".into())
    } else if *code == SqlState::UNIQUE_VIOLATION {
        ReqError::Conflict(format!(
            "a row with these values already exists ({})",
            db.constraint().unwrap_or("unique")
        ))
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
        ReqError::Invalid(
            constraint_field(db.constraint()),
            "refers to a row that does not exist in this organization".into(),
        )
    } else if *code == SqlState::CHECK_VIOLATION {
        ReqError::Invalid(
            constraint_field(db.constraint()),
            format!(
                "value not allowed (constraint {})",
                db.constraint().unwrap_or("check")
            ),
        )
    } else if *code == SqlState::NOT_NULL_VIOLATION {
        ReqError::Invalid(db.column().map(str::to_string), "is required".into())
    } else if code.code().starts_with("22") {
        // data exceptions: bad uuid/date/number text, out of range, bad JSON
        ReqError::Invalid(None, db.message().to_string())
    } else if *code == SqlState::QUERY_CANCELED {
        ReqError::Timeout
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
    {
        ReqError::Conflict("a concurrent change got in the way; retry".into())
    } else {
        ReqError::Db(e)
    }
}

/// `tasks_assignee_id_fkey` → `assignee_id`; `notes_title_check` → `title` (best effort).
fn constraint_field(constraint: Option<&str>) -> Option<String> {
    let c = constraint?;
    let stem = c
        .strip_suffix("_fkey")
        .or_else(|| c.strip_suffix("_check"))?;
    let (_, rest) = stem.split_once('_')?;
    let rest = rest.strip_prefix("org_id_").unwrap_or(rest);
    Some(rest.to_string())
}

/// A pooled connection that is thrown away, not returned to the pool, if the request is
/// dropped halfway through a transaction.
struct Conn {
    obj: Option<Object>,
    clean: bool,
}

impl Conn {
    async fn get(pool: &Pool) -> Result<Self, ReqError> {
        let obj = pool
            .get()
            .await
            .map_err(|e| ReqError::Unavailable(e.to_string()))?;
        Ok(Self {
            obj: Some(obj),
            clean: false,
        })
    }

    fn client(&self) -> Result<&deadpool_postgres::ClientWrapper, ReqError> {
        self.obj
            .as_deref()
            .ok_or_else(|| ReqError::Unavailable("connection gone".into()))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.clean
            && let Some(obj) = self.obj.take()
        {
            // Possibly mid-transaction: close the connection instead of reusing it.
            drop(Object::take(obj));
        }
    }
}

const BEGIN_REQUEST: &str =
    "SELECT org_id, user_id, org_role, app_roles FROM orgbase.begin_request($1, $2, $3, $4, $5)";

async fn statements(
    client: &deadpool_postgres::ClientWrapper,
    sql: &str,
) -> Result<(Statement, Statement, Statement, Statement), ReqError> {
    let (b, c, q, e) = tokio::join!(
        client.prepare_cached("BEGIN"),
        client.prepare_cached(BEGIN_REQUEST),
        client.prepare_cached(sql),
        client.prepare_cached("COMMIT"),
    );
    Ok((b?, c?, q?, e?))
}

fn context(row: &Row) -> Context {
    Context {
        org_id: row.get(0),
        user_id: row.get(1),
        org_role: row.get(2),
        app_roles: row.get(3),
    }
}

/// One statement in the caller's organization: BEGIN, context, statement, COMMIT in one round
/// trip. Errors of the context come first (an unauthenticated caller is told so, not that the
/// statement failed).
pub async fn one(
    pool: &Pool,
    caller: &Caller,
    org_ref: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Context, Vec<Row>), ReqError> {
    let mut conn = Conn::get(pool).await?;
    let client = conn.client()?;
    let (begin, ctx, stmt, commit) = statements(client, sql).await?;
    let cred: &[u8] = &caller.cred_hash;
    let ctx_params: [&(dyn ToSql + Sync); 5] = [
        &cred,
        &org_ref,
        &caller.ip,
        &caller.request_id,
        &caller.user_agent,
    ];
    let (b, c, q, e) = tokio::join!(
        client.execute(&begin, &[]),
        client.query_one(&ctx, &ctx_params),
        client.query(&stmt, params),
        client.execute(&commit, &[]),
    );
    // All four ran: the connection is idle again (COMMIT of a failed transaction rolls back),
    // unless it broke, which the pool notices when it is next handed out.
    conn.clean = true;
    b?;
    let c = context(&c?);
    caller.saw(org_ref, &c);
    let rows = q?;
    e?;
    Ok((c, rows))
}

/// Several statements in the caller's organization: BEGIN + context pipelined, then `f` with
/// the connection, then COMMIT (ROLLBACK when `f` fails).
pub async fn many<T>(
    pool: &Pool,
    caller: &Caller,
    org_ref: &str,
    f: impl AsyncFnOnce(&Client, &Context) -> Result<T, ReqError>,
) -> Result<T, ReqError> {
    let mut conn = Conn::get(pool).await?;
    let client = conn.client()?;
    let (begin, ctx) = tokio::join!(
        client.prepare_cached("BEGIN"),
        client.prepare_cached(BEGIN_REQUEST)
    );
    let (begin, ctx) = (begin?, ctx?);
    let cred: &[u8] = &caller.cred_hash;
    let ctx_params: [&(dyn ToSql + Sync); 5] = [
        &cred,
        &org_ref,
        &caller.ip,
        &caller.request_id,
        &caller.user_agent,
    ];
    let (b, c) = tokio::join!(
        client.execute(&begin, &[]),
        client.query_one(&ctx, &ctx_params),
    );
    b?;
    let outcome = match c {
        Ok(row) => {
            let ctx = context(&row);
            caller.saw(org_ref, &ctx);
            f(client, &ctx).await
        }
        Err(e) => Err(classify(e)),
    };
    match outcome {
        Ok(v) => {
            client.batch_execute("COMMIT").await?;
            conn.clean = true;
            Ok(v)
        }
        Err(e) => {
            client.batch_execute("ROLLBACK").await?;
            conn.clean = true;
            Err(e)
        }
    }
}

/// A statement outside any organization (sign-up, login, …): autocommit, one round trip once
/// the statement is prepared.
pub async fn plain(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, ReqError> {
    let mut conn = Conn::get(pool).await?;
    let client = conn.client()?;
    let stmt = client.prepare_cached(sql).await?;
    let rows = client.query(&stmt, params).await?;
    conn.clean = true;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_names_give_fields() {
        assert_eq!(
            constraint_field(Some("tasks_org_id_assignee_id_fkey")).as_deref(),
            Some("assignee_id")
        );
        assert_eq!(
            constraint_field(Some("notes_title_check")).as_deref(),
            Some("title")
        );
        assert_eq!(constraint_field(Some("weird")), None);
    }
}
