//! Accounts and sessions: sign-up, login (password, then TOTP when enabled), refresh, logout,
//! the caller's profile, and TOTP enrolment.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orgbase_db::auth::{self, REFRESH_PREFIX, SESSION_PREFIX};
use orgbase_db::request::plain;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Bearer, ClientIp, JsonBody};
use orgbase_core::config::SignupMode;

/// A session ends after this long without use…
pub const SESSION_IDLE: &str = "24 hours";
/// …and at the latest this long after login (refreshing keeps the absolute expiry).
pub const SESSION_LIFETIME: &str = "7 days";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Signup {
    /// Unique, case-insensitive.
    pub email: String,
    /// 8 to 1024 characters.
    pub password: String,
    #[serde(default)]
    pub name: String,
    /// The token of a pending invitation to this email: required when the server's sign-up is
    /// by invitation only (`server.signup = "invite-only"`), ignored otherwise.
    #[serde(default)]
    pub invitation: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub email: String,
    pub password: String,
    /// The current TOTP code; required when the account has MFA enabled.
    #[serde(default)]
    pub totp: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Session {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Trade for a new token pair at `/v1/auth/refresh`.
    pub refresh_token: String,
    /// Absolute expiry (RFC 3339); the token also lapses after 24 h unused.
    pub expires_at: String,
    pub user_id: Uuid,
    /// Whether this session passed multi-factor authentication.
    pub mfa_passed: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    pub refresh_token: String,
}

/// The address in lower case ([`orgbase_db::account::normalize_email`]), or 422 naming `email`.
pub(crate) fn normalize_email(email: &str) -> Result<String, ApiError> {
    orgbase_db::account::normalize_email(email)
        .ok_or_else(|| ApiError::field("email", "not a valid email address"))
}

pub(crate) fn client_meta(
    headers: &HeaderMap,
    bearer_ip: Option<std::net::IpAddr>,
) -> (Option<std::net::IpAddr>, Option<String>) {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(512).collect());
    (bearer_ip, ua)
}

/// Create an account. Answers the user (without a session: log in next). Whether anyone may
/// is the server's setting: open to all, by invitation only (with the invitation's token), or
/// closed (403 `signup-closed`).
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = Signup,
    responses((status = 201, body = User), (status = 409, description = "Email taken", body = crate::error::Problem),
              (status = 403, description = "Sign-up is closed, or by invitation and no pending invitation to this email came with it (`signup-closed`)", body = crate::error::Problem),
              (status = 422, description = "Invalid email or password", body = crate::error::Problem)))]
pub async fn signup(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Signup>,
) -> Result<Response, ApiError> {
    let invitation = match state.signup {
        SignupMode::Closed => {
            return Err(ApiError::SignupClosed(
                "sign-up is closed on this server: an operator creates accounts".into(),
            ));
        }
        SignupMode::InviteOnly => Some(
            body.invitation
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.len() <= 256)
                .map(auth::token_hash)
                .ok_or_else(|| {
                    ApiError::SignupClosed(
                        "sign-up is by invitation: send `invitation`, the token of a pending \
                         invitation to this email"
                            .into(),
                    )
                })?,
        ),
        SignupMode::Open => None,
    };
    let email = normalize_email(&body.email)?;
    if !orgbase_db::account::PASSWORD_CHARS.contains(&body.password.chars().count()) {
        return Err(ApiError::field("password", "must be 8 to 1024 characters"));
    }
    let name = body.name.trim().to_string();
    if name.chars().count() > 200 {
        return Err(ApiError::field("name", "must be at most 200 characters"));
    }
    let hash = auth::hash_password(body.password).await?;
    let id = Uuid::now_v7();
    // The database sees the email's blind index and the values sealed under the new account's
    // key (orgbase_db::account).
    let email_hash = state.fields.email_hash(&email)?;
    let sealed_email = state.fields.seal_account(id, "email", &email)?;
    let sealed_name = state.fields.seal_account(id, "name", &name)?;
    match invitation {
        None => {
            plain(
                &state.pool,
                "SELECT orgbase.signup($1, $2, $3, $4, $5)",
                &[&id, &email_hash, &sealed_email, &sealed_name, &hash],
            )
            .await?
        }
        Some(invitation) => plain(
            &state.pool,
            "SELECT orgbase.signup_invited($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &email_hash,
                &sealed_email,
                &sealed_name,
                &hash,
                &&invitation[..],
            ],
        )
        .await
        .map_err(|e| match e {
            orgbase_db::ReqError::Forbidden(m) => ApiError::SignupClosed(m),
            e => e.into(),
        })?,
    };
    Ok((StatusCode::CREATED, Json(User { id, email, name })).into_response())
}

async fn new_session(
    state: &AppState,
    user_id: Uuid,
    mfa_passed: bool,
    ip: Option<std::net::IpAddr>,
    ua: Option<String>,
) -> Result<Session, ApiError> {
    let (token, token_hash) = auth::new_token(SESSION_PREFIX)?;
    let (refresh, refresh_hash) = auth::new_token(REFRESH_PREFIX)?;
    let msg = format!(
        "{user_id}|{}|{}|{mfa_passed}",
        hex::encode(token_hash),
        hex::encode(refresh_hash)
    );
    let (issued_at, proof) = state.key()?.proof("session", &msg);
    let rows = plain(
        &state.pool,
        "SELECT to_char(orgbase.create_session($1, $2, $3, $4, $5, $6, $7, $8::text::interval, \
         $9::text::interval, $10, $11) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
        &[
            &Uuid::now_v7(),
            &user_id,
            &&token_hash[..],
            &&refresh_hash[..],
            &ip,
            &ua,
            &mfa_passed,
            &SESSION_IDLE,
            &SESSION_LIFETIME,
            &issued_at,
            &proof,
        ],
    )
    .await?;
    let expires_at = rows.first().map(|r| r.get(0)).unwrap_or_default();
    Ok(Session {
        token,
        refresh_token: refresh,
        expires_at,
        user_id,
        mfa_passed,
    })
}

/// An account's secrets, as the lookups answer them.
pub(crate) struct Secrets {
    pub password_hash: Option<String>,
    pub totp_enabled: bool,
    pub totp_secret: Option<Vec<u8>>,
}

impl Secrets {
    /// Columns `i`, `i+1`, `i+2` of a lookup's row: password hash, TOTP enabled, TOTP secret.
    pub(crate) fn from_row(row: &tokio_postgres::Row, i: usize) -> Self {
        Self {
            password_hash: row.get(i),
            totp_enabled: row.get(i + 1),
            totp_secret: row.get(i + 2),
        }
    }
}

/// Why a password check failed.
pub(crate) enum Failed {
    /// Answer this error as it is: too many failures for the account or the address (it says
    /// when to try again), or an internal failure.
    Error(ApiError),
    /// Wrong password (or no such account).
    Password,
    /// The account has TOTP and the current code is missing or wrong.
    Totp,
}

impl Failed {
    /// The answer to a failed check; `wrong` says what a wrong password means on this route.
    pub(crate) fn into_error(self, wrong: ApiError) -> ApiError {
        match self {
            Failed::Error(e) => e,
            Failed::Password => wrong,
            Failed::Totp => ApiError::TotpCodeNeeded,
        }
    }
}

/// Check `password`, then the current TOTP code when the account has one, against `secrets`
/// (`None`: no such account, which takes the same time as a wrong password). Throttled per
/// account (`email_hash`) and per address; each failure is counted and audited as a failed
/// login. Answers whether MFA was passed.
pub(crate) async fn check_secrets(
    state: &AppState,
    email_hash: &[u8],
    (ip, ua): (Option<std::net::IpAddr>, &Option<String>),
    secrets: Option<&Secrets>,
    password: String,
    totp: Option<&str>,
) -> Result<bool, Failed> {
    if let Err(wait) = state
        .login_throttle
        .check(email_hash, ip, std::time::Instant::now())
    {
        return Err(Failed::Error(ApiError::Throttled {
            retry_after_secs: orgbase_db::pool::retry_after_secs(wait),
        }));
    }
    let hash = secrets.and_then(|s| s.password_hash.clone());
    let ok = auth::verify_password(password, hash)
        .await
        .map_err(|e| Failed::Error(e.into()))?;
    let Some(secrets) = secrets.filter(|_| ok) else {
        login_failed(state, email_hash, ip, ua, "password").await;
        return Err(Failed::Password);
    };
    if !secrets.totp_enabled {
        return Ok(false);
    }
    let Some(code) = totp else {
        return Err(Failed::Totp);
    };
    let secret = secrets.totp_secret.clone().unwrap_or_default();
    let valid = auth::totp(&secret, "")
        .map_err(|e| Failed::Error(e.into()))?
        .check_current(code.trim())
        .unwrap_or(false);
    if !valid {
        login_failed(state, email_hash, ip, ua, "totp").await;
        return Err(Failed::Totp);
    }
    Ok(true)
}

/// Log in with email and password (and `totp` when MFA is enabled). Wrong email and wrong
/// password are indistinguishable, in answer and in time.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Login,
    responses((status = 200, body = Session),
              (status = 401, description = "Wrong email or password", body = crate::error::Problem),
              (status = 403, description = "TOTP code required or wrong (`mfa-required`)", body = crate::error::Problem)))]
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client): ClientIp,
    JsonBody(body): JsonBody<Login>,
) -> Result<Json<Session>, ApiError> {
    let email = body.email.trim().to_lowercase();
    let email_hash = state.fields.email_hash(&email)?;
    let (ip, ua) = client_meta(&headers, client);
    let (issued_at, proof) = state.key()?.proof("login", &hex::encode(&email_hash));
    let rows = plain(
        &state.pool,
        "SELECT user_id, status, password_hash, totp_enabled, totp_secret \
         FROM orgbase.login_lookup($1, $2, $3)",
        &[&email_hash, &issued_at, &proof],
    )
    .await?;
    let row = rows.first();
    let secrets = row.map(|r| Secrets::from_row(r, 2));
    let mfa_passed = check_secrets(
        &state,
        &email_hash,
        (ip, &ua),
        secrets.as_ref(),
        body.password,
        body.totp.as_deref(),
    )
    .await
    .map_err(|f| f.into_error(ApiError::Unauthorized("wrong email or password".into())))?;
    let Some(row) = row else {
        return Err(ApiError::Unauthorized("wrong email or password".into()));
    };
    let status: String = row.get(1);
    if status != "active" {
        login_failed(&state, &email_hash, ip, &ua, "status").await;
        return Err(ApiError::Unauthorized(format!("this account is {status}")));
    }
    state.login_throttle.succeeded(&email_hash, ip);
    Ok(Json(
        new_session(&state, row.get(0), mfa_passed, ip, ua).await?,
    ))
}

/// Cancel the erasure of your own account during its grace period, with your email and
/// password (and `totp` when MFA is enabled): asking for erasure ended your sessions, so this
/// takes the credentials of a login. The account can sign in again at once; the rows the
/// erasure soft-deleted come back at the worker's next pass (within seconds in `serve`).
/// Sessions stay ended: log in again. Answers the request, `status` `cancelled`.
#[utoipa::path(post, path = "/v1/auth/cancel-erasure", tag = "privacy", request_body = Login,
    responses((status = 200, description = "The cancelled erasure request", body = Object),
              (status = 401, description = "Wrong email or password, or no erasure of this account is open", body = crate::error::Problem),
              (status = 403, description = "TOTP code required or wrong (`mfa-required`)", body = crate::error::Problem),
              (status = 409, description = "The erasure is being carried out: too late to cancel", body = crate::error::Problem)))]
pub async fn cancel_erasure(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client): ClientIp,
    JsonBody(body): JsonBody<Login>,
) -> Result<Response, ApiError> {
    let email = body.email.trim().to_lowercase();
    let email_hash = state.fields.email_hash(&email)?;
    let (ip, ua) = client_meta(&headers, client);
    let key = state.key()?;
    let (issued_at, proof) = key.proof("erasure-lookup", &hex::encode(&email_hash));
    let rows = plain(
        &state.pool,
        "SELECT user_id, password_hash, totp_enabled, totp_secret \
         FROM orgbase.erasure_lookup($1, $2, $3)",
        &[&email_hash, &issued_at, &proof],
    )
    .await?;
    let row = rows.first();
    let secrets = row.map(|r| Secrets::from_row(r, 1));
    // An account without an open erasure answers like a wrong password: this route tells
    // nobody which accounts are being erased.
    check_secrets(
        &state,
        &email_hash,
        (ip, &ua),
        secrets.as_ref(),
        body.password,
        body.totp.as_deref(),
    )
    .await
    .map_err(|f| {
        f.into_error(ApiError::Unauthorized(
            "wrong email or password, or no erasure of this account is open".into(),
        ))
    })?;
    let Some(row) = row else {
        return Err(ApiError::Unauthorized(
            "wrong email or password, or no erasure of this account is open".into(),
        ));
    };
    state.login_throttle.succeeded(&email_hash, ip);
    let user_id: Uuid = row.get(0);
    let (issued_at, proof) = key.proof("erase-cancel", &user_id.to_string());
    let rows = plain(
        &state.pool,
        "SELECT orgbase.gdpr_cancel_self($1, $2, $3)::text",
        &[&user_id, &issued_at, &proof],
    )
    .await?;
    let body: String = rows.first().map(|r| r.get(0)).ok_or(ApiError::NotFound)?;
    Ok(crate::extract::json_text(StatusCode::OK, body))
}

/// Record a failed login in the audit trail (account chain): by the blind index of the email
/// tried, never the email. A failure to record it is logged, not answered: the client hears
/// about its login, not about the audit log.
async fn login_failed(
    state: &AppState,
    email_hash: &[u8],
    ip: Option<std::net::IpAddr>,
    ua: &Option<String>,
    reason: &str,
) {
    state
        .login_throttle
        .failed(email_hash, ip, std::time::Instant::now());
    let Ok(key) = state.key() else { return };
    let (issued_at, proof) = key.proof("login-failed", &hex::encode(email_hash));
    if let Err(e) = plain(
        &state.pool,
        "SELECT orgbase.login_failed($1, $2, $3, $4, $5)",
        &[&email_hash, &ip, &ua, &issued_at, &proof],
    )
    .await
    {
        tracing::warn!(error = %e, reason, "could not record a failed login");
    }
}

/// Trade a refresh token for a new token pair. The old pair stops working; the absolute expiry
/// of the session stays.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = Refresh,
    responses((status = 200, body = Session), (status = 401, body = crate::error::Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client): ClientIp,
    JsonBody(body): JsonBody<Refresh>,
) -> Result<Json<Session>, ApiError> {
    let old = auth::token_hash(body.refresh_token.trim());
    let (token, token_hash) = auth::new_token(SESSION_PREFIX)?;
    let (refresh, refresh_hash) = auth::new_token(REFRESH_PREFIX)?;
    let (ip, ua) = client_meta(&headers, client);
    let rows = plain(
        &state.pool,
        "SELECT to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
         user_id, mfa_passed FROM orgbase.refresh_session($1, $2, $3, $4, $5, $6)",
        &[
            &&old[..],
            &Uuid::now_v7(),
            &&token_hash[..],
            &&refresh_hash[..],
            &ip,
            &ua,
        ],
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| ApiError::Unauthorized("invalid refresh token".into()))?;
    Ok(Json(Session {
        token,
        refresh_token: refresh,
        expires_at: row.get(0),
        user_id: row.get(1),
        mfa_passed: row.get(2),
    }))
}

/// End the current session (its token and refresh token stop working).
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = crate::error::Problem)))]
pub async fn logout(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<StatusCode, ApiError> {
    let rows = plain(
        &state.pool,
        "SELECT orgbase.logout($1)",
        &[&&caller.cred_hash[..]],
    )
    .await?;
    if rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Unauthorized("no such session".into()))
    }
}

/// The caller's account and organizations, and whether the account is an instance operator
/// (`operator`).
#[utoipa::path(get, path = "/v1/me", tag = "auth",
    responses((status = 200, description = "Account, MFA state, operator flag and organizations with roles", body = Object),
              (status = 401, body = crate::error::Problem)))]
pub async fn me(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<Response, ApiError> {
    let rows = plain(
        &state.pool,
        "SELECT orgbase.me($1)::text, orgbase.is_operator($1)",
        &[&&caller.cred_hash[..]],
    )
    .await?;
    let body: String = rows.first().map(|r| r.get(0)).unwrap_or_default();
    let mut me: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&body).map_err(ApiError::internal)?;
    let operator: bool = rows.first().map(|r| r.get(1)).unwrap_or(false);
    me.insert("operator".into(), operator.into());
    state.fields.open_account_json(&mut me, "id")?;
    Ok(Json(me).into_response())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TotpEnrollment {
    /// Base32 secret for authenticator apps.
    pub secret: String,
    /// `otpauth://` URL (QR code content).
    pub otpauth_url: String,
}

/// Start TOTP enrolment: a new secret for the caller's account (not active until verified).
#[utoipa::path(post, path = "/v1/auth/mfa/totp/enroll", tag = "auth",
    responses((status = 200, body = TotpEnrollment), (status = 401, body = crate::error::Problem),
              (status = 409, description = "MFA already enabled", body = crate::error::Problem)))]
pub async fn totp_enroll(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
) -> Result<Json<TotpEnrollment>, ApiError> {
    let secret = auth::random_bytes::<20>()?;
    let rows = plain(
        &state.pool,
        "SELECT user_id, email FROM orgbase.totp_enroll($1, $2)",
        &[&&caller.cred_hash[..], &&secret[..]],
    )
    .await?;
    let email = match rows.first() {
        Some(r) => state
            .fields
            .open_account(r.get(0), "email", r.get(1))?
            .unwrap_or_default(),
        None => String::new(),
    };
    let totp = auth::totp(&secret, &email)?;
    Ok(Json(TotpEnrollment {
        secret: totp.get_secret_base32(),
        otpauth_url: totp.get_url(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    /// The 6-digit code from the authenticator app.
    pub code: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MfaState {
    pub mfa_enabled: bool,
    pub mfa_passed: bool,
}

/// Verify a TOTP code: completes enrolment, and marks the current session as having passed MFA.
#[utoipa::path(post, path = "/v1/auth/mfa/totp/verify", tag = "auth", request_body = TotpCode,
    responses((status = 200, body = MfaState), (status = 401, body = crate::error::Problem),
              (status = 422, description = "Wrong or expired code", body = crate::error::Problem)))]
pub async fn totp_verify(
    State(state): State<AppState>,
    Bearer(caller): Bearer,
    JsonBody(body): JsonBody<TotpCode>,
) -> Result<Json<MfaState>, ApiError> {
    let hash_hex = hex::encode(caller.cred_hash);
    let (issued_at, proof) = state.key()?.proof("totp", &hash_hex);
    let rows = plain(
        &state.pool,
        "SELECT orgbase.totp_secret($1, $2, $3)",
        &[&&caller.cred_hash[..], &issued_at, &proof],
    )
    .await?;
    let secret: Option<Vec<u8>> = rows.first().and_then(|r| r.get(0));
    let secret = secret.ok_or_else(|| {
        ApiError::Conflict("no TOTP enrolment: POST /v1/auth/mfa/totp/enroll first".into())
    })?;
    let totp = auth::totp(&secret, "account")?;
    if !totp.check_current(body.code.trim()).unwrap_or(false) {
        return Err(ApiError::field("code", "incorrect or expired code"));
    }
    let (issued_at, proof) = state.key()?.proof("totp-ok", &hash_hex);
    plain(
        &state.pool,
        "SELECT orgbase.totp_confirm($1, $2, $3)",
        &[&&caller.cred_hash[..], &issued_at, &proof],
    )
    .await?;
    Ok(Json(MfaState {
        mfa_enabled: true,
        mfa_passed: true,
    }))
}
