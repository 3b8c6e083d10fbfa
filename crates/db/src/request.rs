//! The request transaction: BEGIN, the tenant context (`orgbase.open_request`, which
//! authenticates the credential itself, or `orgbase.resume_request` with a ticket from an
//! earlier request), the request's statements and COMMIT, pipelined on one connection so that a
//! single-statement request costs one round trip. A single statement that resumes from a ticket
//! is sent alone and opens its context itself ([`OneSql`]).

use std::net::IpAddr;
use std::time::Instant;

use deadpool_postgres::Object;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use uuid::Uuid;

use crate::observe::{Kind, Label};
use crate::pool::{GetError, Pool};

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
    fn saw(&self, ctx: &Context) {
        if let Some(slot) = &self.seen {
            let _ = slot.set((ctx.org_id, ctx.user_id));
        }
    }

    /// The (organization, user) this credential was, in organization `org_ref`, when a request
    /// last verified it (within the life of its ticket, at most 10 s). Only a hint for preparing
    /// a write ahead of its transaction — encrypting values for the right organization and
    /// person, filling `org_id`/`created_by` — never a permission: the database establishes the
    /// context again in that transaction, and its policies reject a row whose organization or
    /// creator differs.
    pub fn context_hint(&self, org_ref: &str) -> Option<(Uuid, Uuid)> {
        tickets::get(&self.cred_hash, org_ref, self.ip).map(|t| (t.ctx.org_id, t.ctx.user_id))
    }

    /// Drop what the server remembers of this credential in `org_ref`: the database refused a
    /// write prepared with it.
    pub fn forget_context_hint(&self, org_ref: &str) {
        tickets::forget(&self.cred_hash, org_ref, self.ip);
    }
}

/// Request tickets (migration 0009, docs/security.md): `orgbase.open_request` authenticates a
/// credential and returns, with the context, a ticket the database signed; the next requests
/// of that credential in that organization, from that address, open their transaction with
/// `orgbase.resume_request` and the ticket, which the database checks (MAC, expiry, identity
/// epoch) instead of authenticating again. Kept per process, in memory only.
mod tickets {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use uuid::Uuid;

    use super::Context;

    /// The longest the database makes a ticket valid; the server drops it a little earlier.
    const LIFE: Duration = Duration::from_secs(9);
    /// Entries kept at most; the map is emptied when it is full (tickets are cheap to renew).
    const CAPACITY: usize = 10_000;

    #[derive(Debug)]
    pub struct Ticket {
        pub ctx: Context,
        pub key_id: Option<Uuid>,
        pub ticket: String,
        at: Instant,
    }

    type Key = ([u8; 32], String, Option<IpAddr>);
    type Map = HashMap<Key, Arc<Ticket>>;

    fn lock() -> std::sync::MutexGuard<'static, Map> {
        static MAP: OnceLock<Mutex<Map>> = OnceLock::new();
        MAP.get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(cred: &[u8; 32], org_ref: &str, ip: Option<IpAddr>) -> Option<Arc<Ticket>> {
        let m = lock();
        let t = m.get(&(*cred, org_ref.to_string(), ip))?;
        (t.at.elapsed() < LIFE).then(|| t.clone())
    }

    pub fn keep(
        cred: &[u8; 32],
        org_ref: &str,
        ip: Option<IpAddr>,
        ctx: Context,
        key_id: Option<Uuid>,
        ticket: String,
    ) {
        let mut m = lock();
        if m.len() >= CAPACITY {
            m.clear();
        }
        let t = Ticket {
            ctx,
            key_id,
            ticket,
            at: Instant::now(),
        };
        m.insert((*cred, org_ref.to_string(), ip), Arc::new(t));
    }

    pub fn forget(cred: &[u8; 32], org_ref: &str, ip: Option<IpAddr>) {
        lock().remove(&(*cred, org_ref.to_string(), ip));
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
    /// The database's disk is full: nothing was written; reads go on.
    #[error("the database's disk is full; nothing was written")]
    StorageFull,
    /// No connection: refused at once (breaker open, wait queue full; then with a
    /// `retry_after`), or the pool failed.
    #[error("{0}")]
    Pool(#[from] GetError),
    #[error("database error: {0}")]
    Db(tokio_postgres::Error),
    /// The organization's privacy budget for this period cannot pay for the query.
    #[error("{0}")]
    BudgetExhausted(String),
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
    /// A row could not be rendered as JSON by the server (`crate::json`).
    #[error("a row cannot be rendered as JSON: {0}")]
    Render(#[from] crate::json::RenderError),
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
        // The connection broke (the server died or restarted under the request): the database
        // went away, which the client hears as 503, never as a server error.
        let io = std::error::Error::source(&e).is_some_and(|c| c.is::<std::io::Error>());
        return if e.is_closed() || io {
            ReqError::Unavailable("the connection to the database was lost".into())
        } else {
            ReqError::Db(e)
        };
    };
    let class = &db.code().code()[..2];
    if class == "08" || class == "57" && *db.code() != SqlState::QUERY_CANCELED {
        // Connection exceptions and operator intervention: the server is shutting down, crashed
        // and is recovering, or is starting up.
        return ReqError::Unavailable(format!("the database is not available: {}", db.message()));
    }
    if *db.code() == SqlState::DISK_FULL {
        return ReqError::StorageFull;
    }
    match db.hint() {
        Some("orgbase_unauthenticated") => return ReqError::Unauthenticated,
        Some("orgbase_not_member") => return ReqError::NotMember,
        Some("orgbase_mfa_required") => return ReqError::MfaRequired,
        Some("orgbase_ip_not_allowed") => return ReqError::IpNotAllowed,
        Some("orgbase_email_taken") | Some("orgbase_slug_taken") | Some("orgbase_mfa_enabled") => {
            return ReqError::Conflict(db.message().to_string());
        }
        Some("orgbase_last_owner")
        | Some("orgbase_hold_released")
        | Some("orgbase_erasure_underway")
        | Some("orgbase_account_state") => {
            return ReqError::Conflict(db.message().to_string());
        }
        Some("orgbase_no_invitation") | Some("orgbase_not_found") => return ReqError::NotFound,
        Some("orgbase_inactive_member") => {
            return ReqError::Invalid(
                db.column().map(str::to_string),
                "is not an active member of this organization".into(),
            );
        }
        Some("orgbase_forbidden")
        | Some("orgbase_not_operator")
        | Some("orgbase_signup_closed") => return ReqError::Forbidden(db.message().to_string()),
        Some("orgbase_budget_exhausted") => {
            return ReqError::BudgetExhausted(db.message().to_string());
        }
        Some("orgbase_bad_epsilon") => {
            return ReqError::Invalid(Some("epsilon".into()), db.message().to_string());
        }
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
        // Data exceptions: bad uuid/date/number text, out of range, bad JSON. The server checks
        // values before they reach SQL; what gets through is named without PostgreSQL's text,
        // which would quote the input back and show how the statement was built.
        ReqError::Invalid(
            db.column().map(str::to_string),
            "a value has the wrong type or is out of range".into(),
        )
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
        let obj = pool.get().await?;
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

const OPEN_REQUEST: &str = "SELECT org_id, user_id, org_role, app_roles, key_id, ticket \
     FROM orgbase.open_request($1, $2, $3, $4, $5)";
/// Checks the ticket and sets the context it names; answers nothing (the ticket holds the
/// context).
const RESUME_REQUEST: &str =
    "SELECT orgbase.resume_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

fn context(row: &Row) -> Context {
    Context {
        org_id: row.get(0),
        user_id: row.get(1),
        org_role: row.get(2),
        app_roles: row.get(3),
    }
}

/// The ticket was refused (expired, from an earlier identity epoch): open the context anew.
fn stale(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.hint() == Some("orgbase_stale_ticket"))
}

/// The first five arguments of `open_request` and `resume_request`: who asks, where, from where.
fn request_args<'a>(
    cred: &'a &'a [u8],
    org_ref: &'a &'a str,
    caller: &'a Caller,
) -> [&'a (dyn ToSql + Sync); 5] {
    [
        cred,
        org_ref,
        &caller.ip,
        &caller.request_id,
        &caller.user_agent,
    ]
}

/// The other six arguments of `resume_request`: the ticket and the context it names.
fn ticket_args(t: &tickets::Ticket) -> [&(dyn ToSql + Sync); 6] {
    [
        &t.ctx.org_id,
        &t.ctx.user_id,
        &t.ctx.org_role,
        &t.ctx.app_roles,
        &t.key_id,
        &t.ticket,
    ]
}

/// How a request transaction establishes its context.
enum Opening {
    /// Authenticate the credential (`open_request`) and keep the ticket it returns.
    Open,
    /// Resume from a ticket (`resume_request`).
    Resume(std::sync::Arc<tickets::Ticket>),
}

impl Opening {
    fn of(caller: &Caller, org_ref: &str) -> Self {
        match tickets::get(&caller.cred_hash, org_ref, caller.ip) {
            Some(t) => Opening::Resume(t),
            None => Opening::Open,
        }
    }

    /// Run the context statement (already prepared as `stmt`) on `client`.
    async fn query(
        &self,
        client: &Client,
        stmt: &Statement,
        caller: &Caller,
        org_ref: &str,
    ) -> Result<Row, tokio_postgres::Error> {
        let cred: &[u8] = &caller.cred_hash;
        let mut params = request_args(&cred, &org_ref, caller).to_vec();
        if let Opening::Resume(t) = self {
            params.extend_from_slice(&ticket_args(t));
        }
        client.query_one(stmt, &params).await
    }

    fn sql(&self) -> &'static str {
        match self {
            Opening::Open => OPEN_REQUEST,
            Opening::Resume(_) => RESUME_REQUEST,
        }
    }

    /// The context established: an opened one from the row `open_request` returned (and
    /// remembered with its ticket), a resumed one the ticket's, which `resume_request` checked.
    fn established(&self, row: &Row, caller: &Caller, org_ref: &str) -> Context {
        let ctx = match self {
            Opening::Open => {
                let ctx = context(row);
                tickets::keep(
                    &caller.cred_hash,
                    org_ref,
                    caller.ip,
                    ctx.clone(),
                    row.get(4),
                    row.get(5),
                );
                ctx
            }
            Opening::Resume(t) => t.ctx.clone(),
        };
        caller.saw(&ctx);
        ctx
    }
}

/// The SQL of a single-statement request, and where in it one more condition may stand.
///
/// A statement with such a place runs, when the request resumes from a ticket, as one
/// autocommit statement that opens its own context: the condition is
/// `(SELECT orgbase.resume_request(…)) IS NOT NULL`. It mentions no row, so PostgreSQL evaluates
/// it once, as the one-time filter of a Result node above the statement's scan, before the scan
/// starts and with it the policies' sub-selects that check the context (lazily evaluated
/// InitPlans). Should a plan ever evaluate a policy first, the check finds no context and the
/// statement fails (`orgbase_no_context`); it never runs without one. One statement instead of
/// BEGIN, context, statement and COMMIT saves the server three responses and PostgreSQL three
/// protocol cycles, each of which ends in a flush (docs/performance.md). Without a ticket, or
/// without a place, the request pipelines BEGIN, `open_request`, the statement (with `true` in
/// the place) and COMMIT.
#[derive(Debug, Clone, Copy)]
pub struct OneSql<'a> {
    head: &'a str,
    tail: Option<&'a str>,
}

impl<'a> OneSql<'a> {
    /// `head`, a boolean condition, `tail`: `head` ends with `WHERE` or `AND`, or anything else
    /// a condition may follow.
    pub fn with_condition(head: &'a str, tail: &'a str) -> Self {
        Self {
            head,
            tail: Some(tail),
        }
    }

    /// The statement as it runs in a transaction whose context is already open: `true` in
    /// the place of the condition.
    pub fn plain(&self) -> std::borrow::Cow<'a, str> {
        self.text("true")
    }

    /// The statement with `cond` in its place, or as it is.
    fn text(&self, cond: &str) -> std::borrow::Cow<'a, str> {
        match self.tail {
            Some(tail) => format!("{}{cond}{tail}", self.head).into(),
            None => self.head.into(),
        }
    }
}

impl<'a> From<&'a str> for OneSql<'a> {
    fn from(sql: &'a str) -> Self {
        Self {
            head: sql,
            tail: None,
        }
    }
}

impl<'a> From<&'a String> for OneSql<'a> {
    fn from(sql: &'a String) -> Self {
        sql.as_str().into()
    }
}

/// One statement in the caller's organization, in one round trip: with a ticket and a place
/// for the context (see [`OneSql`]) the statement alone, otherwise BEGIN, context, statement,
/// COMMIT. Errors of the context come first (an unauthenticated caller is told so, not that the
/// statement failed). With a ticket whose epoch has passed, the transaction changed nothing
/// (the context failed first) and runs again with a full authentication.
pub async fn one<'a>(
    pool: &Pool,
    caller: &Caller,
    org_ref: &str,
    sql: impl Into<OneSql<'a>>,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Context, Vec<Row>), ReqError> {
    one_as(pool, Label::ORG, caller, org_ref, sql, params).await
}

/// [`one`], its time recorded under `label` (see [`crate::observe`]).
pub async fn one_as<'a>(
    pool: &Pool,
    label: Label<'_>,
    caller: &Caller,
    org_ref: &str,
    sql: impl Into<OneSql<'a>>,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Context, Vec<Row>), ReqError> {
    let sql = sql.into();
    let opening = Opening::of(caller, org_ref);
    let step = Step { pool, label };
    if let Opening::Resume(t) = &opening {
        let outcome = if sql.tail.is_some() {
            resumed_in_statement(step, caller, org_ref, sql, params, t).await
        } else {
            one_with(step, caller, org_ref, &sql.plain(), params, &opening).await
        };
        match outcome {
            Err(Retry::Stale) => tickets::forget(&caller.cred_hash, org_ref, caller.ip),
            Err(Retry::No(e)) => return Err(e),
            Ok(v) => return Ok(v),
        }
    }
    one_with(step, caller, org_ref, &sql.plain(), params, &Opening::Open)
        .await
        .map_err(Retry::into_error)
}

/// The pool a request step runs on and the label its time is recorded under.
#[derive(Clone, Copy)]
struct Step<'a> {
    pool: &'a Pool,
    label: Label<'a>,
}

impl Step<'_> {
    /// Record the step that held its connection since `started`, in organization `org`.
    fn done(&self, started: Instant, org: &dyn std::fmt::Display) {
        self.pool.metrics().record(self.label, started, Some(org));
    }
}

/// The statement alone, its context opened by its own condition from ticket `t`.
async fn resumed_in_statement(
    step: Step<'_>,
    caller: &Caller,
    org_ref: &str,
    sql: OneSql<'_>,
    params: &[&(dyn ToSql + Sync)],
    t: &tickets::Ticket,
) -> Result<(Context, Vec<Row>), Retry> {
    let n = params.len();
    let args: Vec<String> = (n + 1..=n + 11).map(|i| format!("${i}")).collect();
    let text = sql.text(&format!(
        "(SELECT orgbase.resume_request({})) IS NOT NULL",
        args.join(", ")
    ));
    let cred: &[u8] = &caller.cred_hash;
    let mut all: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(n + 11);
    all.extend_from_slice(params);
    all.extend_from_slice(&request_args(&cred, &org_ref, caller));
    all.extend_from_slice(&ticket_args(t));
    let mut conn = Conn::get(step.pool).await?;
    let started = Instant::now();
    let client = conn.client()?;
    let stmt = client.prepare_cached(&text).await?;
    let rows = client.query(&stmt, &all).await;
    // An autocommit statement: the connection is idle again, whatever the outcome.
    conn.clean = true;
    step.done(started, &t.ctx.org_id);
    let rows = match rows {
        Err(e) if stale(&e) => return Err(Retry::Stale),
        r => r?,
    };
    caller.saw(&t.ctx);
    Ok((t.ctx.clone(), rows))
}

enum Retry {
    Stale,
    No(ReqError),
}

impl Retry {
    fn into_error(self) -> ReqError {
        match self {
            Retry::Stale => ReqError::Unavailable("the request context could not be opened".into()),
            Retry::No(e) => e,
        }
    }
}

impl<E: Into<ReqError>> From<E> for Retry {
    fn from(e: E) -> Self {
        Retry::No(e.into())
    }
}

async fn one_with(
    step: Step<'_>,
    caller: &Caller,
    org_ref: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    opening: &Opening,
) -> Result<(Context, Vec<Row>), Retry> {
    let mut conn = Conn::get(step.pool).await?;
    let started = Instant::now();
    let client = conn.client()?;
    let (begin, ctx, stmt, commit) = tokio::join!(
        client.prepare_cached("BEGIN"),
        client.prepare_cached(opening.sql()),
        client.prepare_cached(sql),
        client.prepare_cached("COMMIT"),
    );
    let (begin, ctx, stmt, commit) = (begin?, ctx?, stmt?, commit?);
    let (b, c, q, e) = tokio::join!(
        client.execute(&begin, &[]),
        opening.query(client, &ctx, caller, org_ref),
        client.query(&stmt, params),
        client.execute(&commit, &[]),
    );
    // All four ran: the connection is idle again (COMMIT of a failed transaction rolls back),
    // unless it broke, which the pool notices when it is next handed out.
    conn.clean = true;
    match (&c, opening) {
        (_, Opening::Resume(t)) => step.done(started, &t.ctx.org_id),
        (Ok(row), Opening::Open) => step.done(started, &row.get::<_, Uuid>(0)),
        (Err(_), Opening::Open) => step.done(started, &org_ref),
    }
    b?;
    let row = match c {
        Err(e) if stale(&e) => return Err(Retry::Stale),
        c => c?,
    };
    let c = opening.established(&row, caller, org_ref);
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
    many_as(pool, Label::ORG, caller, org_ref, f).await
}

/// [`many`], the whole transaction's time recorded under `label` and its opening step (BEGIN
/// and the context) under `context_open`.
pub async fn many_as<T>(
    pool: &Pool,
    label: Label<'_>,
    caller: &Caller,
    org_ref: &str,
    f: impl AsyncFnOnce(&Client, &Context) -> Result<T, ReqError>,
) -> Result<T, ReqError> {
    let mut conn = Conn::get(pool).await?;
    let started = Instant::now();
    let client = conn.client()?;
    let mut opening = Opening::of(caller, org_ref);
    let begin = client.prepare_cached("BEGIN").await?;
    let row = loop {
        let ctx = client.prepare_cached(opening.sql()).await?;
        let (b, c) = tokio::join!(
            client.execute(&begin, &[]),
            opening.query(client, &ctx, caller, org_ref),
        );
        b?;
        match c {
            Err(e) if stale(&e) && matches!(opening, Opening::Resume(_)) => {
                client.batch_execute("ROLLBACK").await?;
                tickets::forget(&caller.cred_hash, org_ref, caller.ip);
                opening = Opening::Open;
            }
            c => break c,
        }
    };
    let opened = Step {
        pool,
        label: Label::of(Kind::ContextOpen),
    };
    let (outcome, org) = match row {
        Ok(row) => {
            let ctx = opening.established(&row, caller, org_ref);
            opened.done(started, &ctx.org_id);
            (f(client, &ctx).await, Some(ctx.org_id))
        }
        Err(e) => (Err(classify(e)), None),
    };
    let end = match outcome {
        Ok(_) => client.batch_execute("COMMIT").await,
        Err(_) => client.batch_execute("ROLLBACK").await,
    };
    let step = Step { pool, label };
    match org {
        Some(id) => step.done(started, &id),
        None => step.done(started, &org_ref),
    }
    end?;
    conn.clean = true;
    outcome
}

/// A statement outside any organization (sign-up, login, …): autocommit, one round trip once
/// the statement is prepared.
pub async fn plain(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, ReqError> {
    let mut conn = Conn::get(pool).await?;
    let started = Instant::now();
    let client = conn.client()?;
    let stmt = client.prepare_cached(sql).await?;
    let rows = client.query(&stmt, params).await;
    pool.metrics().record(Label::ACCOUNT, started, None);
    let rows = rows?;
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
