//! The API error type: one enum, one `match` to status and a stable problem `type`
//! (RFC 9457 problem+json). Internal causes are logged, never returned.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem document as sent to clients.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `urn:orgbase:problem:not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short human summary of the kind of problem.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request id (also in the `x-request-id` response header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For validation problems: what is wrong with which field or query parameter.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

/// The `field` of a problem with the body as a whole (not JSON, not an object, nothing to
/// change): a name no column can have, so that it never reads as a column called `body`.
pub const WHOLE_BODY: &str = "(body)";

/// One invalid input field.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// Body field or query parameter name.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid input")]
    Validation(Vec<FieldProblem>),
    #[error("authentication required: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Sign-up refused by the server's setting (closed, or by invitation and none given).
    #[error("sign-up refused: {0}")]
    SignupClosed(String),
    #[error("multi-factor authentication required")]
    MfaRequired,
    /// Login of an account with TOTP: the current code is missing or wrong.
    #[error("the account's current TOTP code is needed")]
    TotpCodeNeeded,
    /// The password given to confirm an irreversible step (erasing the account) is wrong.
    #[error("the password does not match")]
    ReauthenticationFailed,
    #[error("multi-factor authentication required for health data")]
    PhiNeedsMfa,
    /// A stored value did not decrypt for its row (moved, altered, or its key version gone).
    #[error("a stored value cannot be decrypted: {0}")]
    Undecryptable(String),
    #[error("address not allowed for this API key")]
    IpNotAllowed,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("too many requests")]
    TooManyRequests,
    /// Too many failed password checks (logins, confirmations) for this account from this
    /// address, or from this address: try again after the wait.
    #[error("too many failed password checks")]
    Throttled { retry_after_secs: u64 },
    #[error("request timed out")]
    Timeout,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The database's disk is full: writes are refused until space is freed.
    #[error("insufficient storage")]
    InsufficientStorage,
    /// The request was refused before it started: every database connection busy
    /// and the wait queue full (`overloaded`), or the database unreachable and the circuit
    /// breaker open. `Retry-After` says when to try again.
    #[error("refused: {detail}")]
    Refused {
        detail: String,
        retry_after_secs: u64,
        overloaded: bool,
    },
    /// The organization's privacy budget for this period cannot pay for the query.
    #[error("privacy budget exhausted: {0}")]
    BudgetExhausted(String),
    /// A capability this build does not have (built without its feature).
    #[error("not available in this build: {0}")]
    NotBuilt(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A status produced by a lower layer (e.g. an extractor) that has no variant of its own.
    #[error("{0}")]
    Status(StatusCode),
}

impl ApiError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(e))
    }

    /// Status, stable problem slug and title.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::InvalidJson(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-json",
                "The request body is not valid JSON",
            ),
            ApiError::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid input",
            ),
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::SignupClosed(_) => (
                StatusCode::FORBIDDEN,
                "signup-closed",
                "Sign-up is not open",
            ),
            ApiError::MfaRequired => (
                StatusCode::FORBIDDEN,
                "mfa-required",
                "Multi-factor authentication required",
            ),
            ApiError::PhiNeedsMfa | ApiError::TotpCodeNeeded => (
                StatusCode::FORBIDDEN,
                "mfa-required",
                "Multi-factor authentication required",
            ),
            ApiError::ReauthenticationFailed => (
                StatusCode::FORBIDDEN,
                "reauthentication-failed",
                "Re-authentication failed",
            ),
            ApiError::Undecryptable(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "undecryptable",
                "A stored value cannot be decrypted",
            ),
            ApiError::IpNotAllowed => (
                StatusCode::FORBIDDEN,
                "ip-not-allowed",
                "Address not allowed for this API key",
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            ApiError::TooManyRequests | ApiError::Throttled { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            ApiError::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "The request took too long",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::InsufficientStorage => (
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient-storage",
                "Insufficient storage",
            ),
            ApiError::Refused {
                overloaded: true, ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Server at capacity",
            ),
            ApiError::Refused { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database-unavailable",
                "Database unavailable",
            ),
            ApiError::BudgetExhausted(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "privacy-budget-exhausted",
                "Privacy budget exhausted",
            ),
            ApiError::NotBuilt(_) => (
                StatusCode::NOT_IMPLEMENTED,
                "not-built",
                "Not available in this build",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
            ApiError::Status(s) => (*s, status_slug(*s), "Error"),
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            ApiError::UnsupportedMediaType(d)
            | ApiError::BadRequest(d)
            | ApiError::InvalidJson(d)
            | ApiError::Unauthorized(d)
            | ApiError::Forbidden(d)
            | ApiError::SignupClosed(d)
            | ApiError::Conflict(d)
            | ApiError::PreconditionFailed(d)
            | ApiError::Unavailable(d)
            | ApiError::BudgetExhausted(d)
            | ApiError::NotBuilt(d)
            | ApiError::Refused { detail: d, .. } => Some(d.clone()),
            ApiError::Validation(errors) => Some(
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            ApiError::MfaRequired => Some(
                "this organization requires multi-factor authentication: verify a TOTP code \
                 (POST /v1/auth/mfa/totp/verify) or log in with one"
                    .into(),
            ),
            ApiError::TotpCodeNeeded => Some(
                "this account uses multi-factor authentication: send the current code of its \
                 authenticator app as `totp`, beside the password"
                    .into(),
            ),
            ApiError::PhiNeedsMfa => Some(
                "this table holds health data (PHI): use a session that passed multi-factor \
                 authentication (API keys cannot read PHI)"
                    .into(),
            ),
            ApiError::Undecryptable(d) => Some(d.clone()),
            ApiError::ReauthenticationFailed => Some(
                "the password does not match: erasing the account needs the password of the \
                 signed-in account"
                    .into(),
            ),
            ApiError::IpNotAllowed => Some("this API key may not be used from this address".into()),
            ApiError::PayloadTooLarge => {
                Some("the request body exceeds the configured limit".into())
            }
            ApiError::Timeout => Some("the server did not finish the request in time".into()),
            ApiError::Throttled { retry_after_secs } => Some(format!(
                "too many failed password checks for this account from this address (or from this \
                 address): try again in {retry_after_secs} s"
            )),
            ApiError::InsufficientStorage => Some(
                "the database's disk is full: nothing was written; reads go on, and writes resume \
                 once space is freed"
                    .into(),
            ),
            _ => None,
        }
    }

    pub fn to_problem(&self, request_id: Option<String>) -> Problem {
        let (status, slug, title) = self.parts();
        let title = match self {
            ApiError::Status(s) => s.canonical_reason().unwrap_or(title),
            _ => title,
        };
        Problem {
            kind: format!("urn:orgbase:problem:{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: self.detail(),
            request_id,
            errors: match self {
                ApiError::Validation(e) => e.clone(),
                _ => Vec::new(),
            },
        }
    }
}

fn status_slug(s: StatusCode) -> &'static str {
    match s.as_u16() {
        400 => "bad-request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        408 => "request-timeout",
        409 => "conflict",
        413 => "payload-too-large",
        415 => "unsupported-media-type",
        422 => "unprocessable",
        429 => "too-many-requests",
        503 => "unavailable",
        500..=599 => "internal",
        _ => "error",
    }
}

impl ApiError {
    /// One invalid field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldProblem {
            field: field.to_string(),
            message: message.into(),
        }])
    }
}

impl From<Vec<orgbase_db::records::FieldError>> for ApiError {
    fn from(errors: Vec<orgbase_db::records::FieldError>) -> Self {
        ApiError::Validation(
            errors
                .into_iter()
                .map(|e| FieldProblem {
                    field: e.field,
                    message: e.message,
                })
                .collect(),
        )
    }
}

impl From<orgbase_db::ReqError> for ApiError {
    fn from(e: orgbase_db::ReqError) -> Self {
        use orgbase_db::ReqError as R;
        match e {
            R::Unauthenticated => {
                ApiError::Unauthorized("invalid, expired or revoked credentials".into())
            }
            R::NotMember | R::NotFound => ApiError::NotFound,
            R::MfaRequired => ApiError::MfaRequired,
            R::IpNotAllowed => ApiError::IpNotAllowed,
            R::Forbidden(m) => ApiError::Forbidden(m),
            R::Conflict(m) => ApiError::Conflict(m),
            R::PreconditionFailed(m) => ApiError::PreconditionFailed(m),
            R::Invalid(field, message) => ApiError::Validation(vec![FieldProblem {
                field: field.unwrap_or_else(|| WHOLE_BODY.into()),
                message,
            }]),
            R::Timeout => ApiError::Timeout,
            R::Unavailable(m) => ApiError::Unavailable(m),
            R::StorageFull => ApiError::InsufficientStorage,
            R::Pool(e) => match e.retry_after() {
                Some(wait) => ApiError::Refused {
                    detail: e.to_string(),
                    retry_after_secs: orgbase_db::pool::retry_after_secs(wait),
                    overloaded: matches!(e, orgbase_db::pool::GetError::QueueFull { .. }),
                },
                None => ApiError::Unavailable(e.to_string()),
            },
            R::Db(e) => ApiError::internal(e),
            R::PhiNeedsMfa => ApiError::PhiNeedsMfa,
            R::BudgetExhausted(m) => ApiError::BudgetExhausted(m),
            R::Keys(m) => ApiError::Unavailable(m),
            R::Undecryptable(m) => ApiError::Undecryptable(m),
            R::Render(e) => ApiError::internal(e),
        }
    }
}

impl From<orgbase_db::DbError> for ApiError {
    fn from(e: orgbase_db::DbError) -> Self {
        ApiError::internal(e)
    }
}

impl From<StatusCode> for ApiError {
    fn from(s: StatusCode) -> Self {
        match s {
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            other => ApiError::Status(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = %cause, cause = ?cause, "internal error");
        }
        let problem = self.to_problem(None);
        let retry_after = match &self {
            ApiError::Timeout | ApiError::Unavailable(_) => Some(1),
            ApiError::Refused {
                retry_after_secs, ..
            }
            | ApiError::Throttled { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        let mut resp = problem_response(&problem, retry_after);
        if matches!(self, ApiError::Unauthorized(_)) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"orgbase\""),
            );
        }
        resp
    }
}

/// Render a problem document, with a `Retry-After` of `retry_after` seconds when given; the
/// request-id middleware fills in `request_id` on the way out.
pub fn problem_response(problem: &Problem, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping_is_stable() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::NotFound, 404, "urn:orgbase:problem:not-found"),
            (
                ApiError::MethodNotAllowed,
                405,
                "urn:orgbase:problem:method-not-allowed",
            ),
            (
                ApiError::PayloadTooLarge,
                413,
                "urn:orgbase:problem:payload-too-large",
            ),
            (
                ApiError::UnsupportedMediaType("x".into()),
                415,
                "urn:orgbase:problem:unsupported-media-type",
            ),
            (
                ApiError::BadRequest("x".into()),
                400,
                "urn:orgbase:problem:bad-request",
            ),
            (ApiError::Timeout, 503, "urn:orgbase:problem:timeout"),
            (
                ApiError::Unavailable("db".into()),
                503,
                "urn:orgbase:problem:unavailable",
            ),
            (
                ApiError::Refused {
                    detail: "queue".into(),
                    retry_after_secs: 1,
                    overloaded: true,
                },
                503,
                "urn:orgbase:problem:overloaded",
            ),
            (
                ApiError::Refused {
                    detail: "breaker".into(),
                    retry_after_secs: 4,
                    overloaded: false,
                },
                503,
                "urn:orgbase:problem:database-unavailable",
            ),
            (
                ApiError::internal(std::io::Error::other("secret cause")),
                500,
                "urn:orgbase:problem:internal",
            ),
            (
                ApiError::Status(StatusCode::REQUEST_TIMEOUT),
                408,
                "urn:orgbase:problem:request-timeout",
            ),
        ];
        for (err, status, kind) in cases {
            let p = err.to_problem(None);
            assert_eq!(p.status, status, "{err:?}");
            assert_eq!(p.kind, kind, "{err:?}");
            assert!(!p.detail.unwrap_or_default().contains("secret cause"));
        }
    }

    #[test]
    fn statuses_map_to_variants() {
        assert!(matches!(
            ApiError::from(StatusCode::NOT_FOUND),
            ApiError::NotFound
        ));
        assert!(matches!(
            ApiError::from(StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::PayloadTooLarge
        ));
    }
}
