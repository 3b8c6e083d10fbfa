//! The web console at `/console`: server-rendered pages (askama) for organization owners and
//! admins and for instance operators.
//!
//! The console holds no data path of its own. Every page and action is a call of the JSON API,
//! made in-process with the signed-in person's session token (from the session cookie), the
//! client's address and user agent: the same handlers, the same database-enforced tenant
//! context, the same validation and the same audit entries as a client of the API gets. A page
//! shows what the API answered that person, nothing more.
//!
//! Every route is declared in [`routes`] with the permission it needs ([`Perm`]); the router
//! is built from that table, and the route × role test walks it.

mod admin;
mod assets;
mod operator;
mod pages;

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{RequestPartsExt, Router};
use serde_json::Value;
use tower::ServiceExt;

use crate::AppState;

/// The session cookie: the API session token, readable by no script (HttpOnly), sent on
/// same-site requests only (SameSite=Strict), over TLS only when the console is behind TLS.
pub const COOKIE: &str = "orgbase_console";

/// What a route needs of the person asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Anyone (the sign-in page, the assets).
    Public,
    /// A signed-in account.
    SignedIn,
    /// A member of the organization in the path, any role (what they then see and may do is
    /// what the API allows them).
    Member,
    /// An owner or admin of the organization in the path.
    Admin,
    /// An instance operator (`orgbase admin create`).
    Operator,
}

/// One console route: method, path under `/console`, permission, what it is for.
#[derive(Debug, Clone, Copy)]
pub struct RouteInfo {
    pub method: &'static str,
    pub path: &'static str,
    pub perm: Perm,
    pub about: &'static str,
}

type Handler = MethodRouter<Console>;

/// Every console route. The router is built from this table and nothing else.
#[rustfmt::skip]
fn table() -> Vec<(RouteInfo, Handler)> {
    use axum::routing::{get, post};
    use admin::*;
    use operator::*;
    use pages::*;
    let r = |method, path, perm, about, handler: Handler| {
        (
            RouteInfo {
                method,
                path,
                perm,
                about,
            },
            handler,
        )
    };
    vec![
        r("GET", "/", Perm::SignedIn, "organizations of the signed-in person", get(home)),
        r("POST", "/orgs", Perm::SignedIn, "create an organization", post(create_org)),
        r("GET", "/login", Perm::Public, "the sign-in form", get(login_form)),
        r("POST", "/login", Perm::Public, "sign in", post(login)),
        r("POST", "/logout", Perm::SignedIn, "sign out", post(logout)),
        r("GET", "/assets/{file}", Perm::Public, "stylesheet and scripts", get(assets::serve)),
        r("GET", "/orgs/{org}", Perm::Member, "an organization's overview", get(org_home)),
        r("GET", "/orgs/{org}/members", Perm::Admin, "members and invitations", get(members)),
        r("POST", "/orgs/{org}/members/{user}/role", Perm::Admin, "change a member's role", post(member_role)),
        r("POST", "/orgs/{org}/members/{user}/remove", Perm::Admin, "remove a member", post(member_remove)),
        r("POST", "/orgs/{org}/invitations", Perm::Admin, "invite someone", post(invite)),
        r("POST", "/orgs/{org}/invitations/{id}/revoke", Perm::Admin, "revoke an invitation", post(revoke_invitation)),
        r("GET", "/orgs/{org}/api-keys", Perm::Admin, "API keys", get(api_keys)),
        r("POST", "/orgs/{org}/api-keys", Perm::Admin, "create an API key", post(create_api_key)),
        r("POST", "/orgs/{org}/api-keys/{id}/revoke", Perm::Admin, "revoke an API key", post(revoke_api_key)),
        r("GET", "/orgs/{org}/audit", Perm::Admin, "the audit trail", get(audit)),
        r("POST", "/orgs/{org}/audit/verify", Perm::Admin, "verify the audit chain now", post(audit_verify)),
        r("GET", "/orgs/{org}/audit/export", Perm::Admin, "export audit entries as CSV or JSON", get(audit_export)),
        r("GET", "/orgs/{org}/tables", Perm::Member, "the tenant tables", get(tables)),
        r("GET", "/orgs/{org}/tables/{table}", Perm::Member, "a table's rows", get(table_rows)),
        r("POST", "/orgs/{org}/tables/{table}", Perm::Member, "create a row", post(create_row)),
        r("GET", "/orgs/{org}/tables/{table}/new", Perm::Member, "the form for a new row", get(new_row)),
        r("GET", "/orgs/{org}/tables/{table}/{id}", Perm::Member, "one row, with its edit form", get(row)),
        r("POST", "/orgs/{org}/tables/{table}/{id}", Perm::Member, "update a row", post(update_row)),
        r("POST", "/orgs/{org}/tables/{table}/{id}/delete", Perm::Member, "soft-delete a row", post(delete_row)),
        r("POST", "/orgs/{org}/tables/{table}/{id}/restore", Perm::Member, "restore a soft-deleted row", post(restore_row)),
        r("GET", "/signup", Perm::Public, "the sign-up form", get(signup_form)),
        r("POST", "/signup", Perm::Public, "create an account and sign in", post(signup)),
        r("GET", "/invitations/{token}", Perm::SignedIn, "an invitation, to accept", get(invitation)),
        r("POST", "/invitations/{token}/accept", Perm::SignedIn, "accept an invitation", post(accept_invitation)),
        r("GET", "/orgs/{org}/teams", Perm::Member, "teams and their members", get(teams)),
        r("POST", "/orgs/{org}/teams", Perm::Member, "create a team", post(create_team)),
        r("POST", "/orgs/{org}/teams/{team}/delete", Perm::Member, "delete a team", post(delete_team)),
        r("POST", "/orgs/{org}/teams/{team}/members", Perm::Member, "add a member to a team", post(add_team_member)),
        r("POST", "/orgs/{org}/teams/{team}/members/{user}/remove", Perm::Member, "remove a member from a team", post(remove_team_member)),
        r("GET", "/orgs/{org}/access", Perm::Admin, "app roles and custom roles, as a matrix", get(access)),
        r("POST", "/orgs/{org}/access/{user}", Perm::Admin, "set a member's app roles", post(save_apps)),
        r("POST", "/orgs/{org}/roles", Perm::Admin, "create a custom role", post(create_role)),
        r("POST", "/orgs/{org}/roles/{role}/grant", Perm::Admin, "grant a custom role", post(grant_role)),
        r("POST", "/orgs/{org}/roles/{role}/revoke/{user}", Perm::Admin, "take a custom role away", post(revoke_role)),
        r("GET", "/orgs/{org}/privacy", Perm::Admin, "GDPR requests", get(privacy)),
        r("POST", "/orgs/{org}/privacy/export", Perm::Admin, "request an export of a member's data", post(gdpr_export)),
        r("POST", "/orgs/{org}/privacy/erase", Perm::Admin, "request the erasure of a member's data", post(gdpr_erase)),
        r("POST", "/orgs/{org}/privacy/{id}/cancel", Perm::Admin, "cancel an erasure in its grace period", post(cancel_erasure)),
        r("GET", "/orgs/{org}/privacy/{id}/download", Perm::Admin, "download a finished export", get(download_export)),
        r("GET", "/orgs/{org}/consents", Perm::Admin, "consent records", get(consents)),
        r("POST", "/orgs/{org}/consents", Perm::Admin, "record a consent decision", post(record_consent)),
        r("GET", "/orgs/{org}/retention", Perm::Admin, "retention policies and legal holds", get(retention)),
        r("POST", "/orgs/{org}/retention", Perm::Admin, "replace the retention policies", post(save_retention)),
        r("POST", "/orgs/{org}/legal-holds", Perm::Admin, "place a legal hold", post(place_hold)),
        r("POST", "/orgs/{org}/legal-holds/{id}/release", Perm::Admin, "release a legal hold", post(release_hold)),
        r("GET", "/operator/orgs", Perm::Operator, "every organization", get(operator_orgs)),
        r("POST", "/operator/orgs", Perm::Operator, "create an organization", post(operator_create_org)),
        r("POST", "/operator/orgs/{id}/status", Perm::Operator, "close or reopen an organization", post(operator_org_status)),
        r("GET", "/operator/backups", Perm::Operator, "backups with their last verification and restore drill", get(operator_backups)),
        r("POST", "/operator/backups", Perm::Operator, "start a backup now", post(operator_start_backup)),
        r("GET", "/operator/keys", Perm::Operator, "the key store: counts and rotations due", get(operator_keys)),
        r("GET", "/operator/migrations", Perm::Operator, "the schema migrations", get(operator_migrations)),
        r("GET", "/operator/health", Perm::Operator, "readiness and the latency objectives", get(operator_health)),
        r("GET", "/operator/accounts", Perm::Operator, "every account", get(operator_accounts)),
        r("POST", "/operator/accounts/{id}/status", Perm::Operator, "suspend or reactivate an account", post(operator_account_status)),
    ]
}

/// The console's routes as declared: method, path under `/console`, permission.
pub fn routes() -> Vec<RouteInfo> {
    table().into_iter().map(|(i, _)| i).collect()
}

/// What console handlers share: the API they call and the application state.
#[derive(Clone, Debug)]
pub struct Console(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    api: Router,
    state: AppState,
}

impl std::ops::Deref for Console {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.0.state
    }
}

/// The console router (to nest at `/console`) over `api`, the API router with its state.
pub fn router(api: Router, state: AppState, settings: &crate::HttpSettings) -> Router {
    let console = Console(Arc::new(Inner { api, state }));
    let mut router: Router<Console> = Router::new();
    for (info, handler) in table() {
        let guarded = handler.route_layer(axum::middleware::from_fn_with_state(
            (console.clone(), info.perm),
            guard,
        ));
        router = router.route(info.path, guarded);
    }
    router
        .route_layer(axum::middleware::from_fn(crate::middleware::matched_route))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(
            settings.request_timeout,
            crate::middleware::timeout,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.body_limit_bytes,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            settings.body_limit_bytes,
        ))
        .layer(axum::middleware::from_fn(protect))
        .with_state(console)
}

/// Outer layer of every console response: cross-origin unsafe requests refused before any
/// handler runs, and the security headers (a Content-Security-Policy with no inline script or
/// style and no eval, no framing, no sniffing, no caching of pages).
async fn protect(req: Request, next: Next) -> Response {
    let mut resp = if cross_origin(&req) {
        pages::refused(
            StatusCode::FORBIDDEN,
            "This request came from another site and was refused.",
        )
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// An unsafe request (anything but GET, HEAD, OPTIONS) that a browser says comes from another
/// origin. The rule of Go's `http.CrossOriginProtection`: `Sec-Fetch-Site` when the browser
/// sends it (same-origin or a user's own navigation pass), else `Origin` against `Host`;
/// a request with neither is not from a browser page and passes (the cookie is SameSite=Strict
/// besides, so a cross-site browser request carries no session).
fn cross_origin(req: &Request) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let authority = origin.split_once("://").map(|(_, a)| a);
    authority.is_none() || authority != host
}

/// The signed-in person, as `GET /v1/me` answered for the session cookie's token.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub token: String,
    pub me: Value,
}

impl Session {
    pub fn operator(&self) -> bool {
        self.me["operator"].as_bool().unwrap_or(false)
    }

    /// The caller's organization matching `org` (an id or a slug), with its role.
    pub fn org(&self, org: &str) -> Option<&Value> {
        self.me["organizations"]
            .as_array()?
            .iter()
            .find(|o| o["id"].as_str() == Some(org) || o["slug"].as_str() == Some(org))
    }
}

/// Who is asking, for the API calls a handler makes: the session (when signed in), the
/// client's address and user agent, the request id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ctx {
    pub session: Option<Session>,
    ip: Option<IpAddr>,
    user_agent: Option<HeaderValue>,
    request_id: Option<crate::middleware::RequestId>,
    seen: Option<crate::access::Seen>,
    /// Served to a client behind TLS (a trusted proxy said `X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl Ctx {
    fn of(parts: &Parts, state: &AppState) -> Self {
        let ip = parts
            .extensions
            .get::<crate::extract::ClientAddr>()
            .and_then(|c| c.0);
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let via_proxy =
            peer.is_some_and(|p| crate::extract::is_trusted_proxy(p, &state.trusted_proxies));
        let tls = via_proxy
            && parts
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        Self {
            session: parts.extensions.get::<Session>().cloned(),
            ip,
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
            request_id: parts
                .extensions
                .get::<crate::middleware::RequestId>()
                .cloned(),
            seen: parts.extensions.get::<crate::access::Seen>().cloned(),
            tls,
        }
    }

    /// `GET /v1/me` of the signed-in person (`null` when signed out).
    pub fn me(&self) -> &Value {
        static NULL: Value = Value::Null;
        self.session.as_ref().map_or(&NULL, |s| &s.me)
    }
}

impl axum::extract::FromRequestParts<Console> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Self::Rejection> {
        Ok(Ctx::of(parts, c))
    }
}

/// What the API answered an in-process call.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The `items` of a list answer.
    pub fn items(&self) -> Vec<Value> {
        match self.json() {
            Value::Object(mut o) => match o.remove("items") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// What went wrong, as the problem document says it: its detail, or its title.
    pub fn problem(&self) -> String {
        let v = self.json();
        let mut text = v["detail"]
            .as_str()
            .or_else(|| v["title"].as_str())
            .unwrap_or("the request failed")
            .to_string();
        if let Some(errors) = v["errors"].as_array().filter(|e| !e.is_empty()) {
            text = errors
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["field"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
        text
    }
}

/// Largest API answer a console page reads (a page of rows is far smaller).
const ANSWER_LIMIT: usize = 16 * 1024 * 1024;

impl Console {
    /// Call the API in-process as `ctx`: `path` with its query string, an optional JSON body,
    /// extra headers (If-Match). The API sees the session token as a bearer credential, the
    /// client's address and user agent, the request id: exactly what a client of the API would
    /// present, so the same rules apply and the same audit entries are written.
    pub(crate) async fn call(
        &self,
        ctx: &Ctx,
        method: Method,
        path: &str,
        body: Option<&Value>,
        extra: &[(header::HeaderName, String)],
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(s) = &ctx.session {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", s.token));
        }
        if let Some(ua) = &ctx.user_agent {
            req = req.header(header::USER_AGENT, ua.clone());
        }
        for (name, value) in extra {
            req = req.header(name, value.as_str());
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let Ok(mut req) = req.body(body) else {
            return Answer::failed(StatusCode::BAD_REQUEST, "the request could not be built");
        };
        let ext = req.extensions_mut();
        ext.insert(crate::extract::ClientAddr(ctx.ip));
        if let Some(id) = &ctx.request_id {
            ext.insert(id.clone());
        }
        if let Some(seen) = &ctx.seen {
            ext.insert(seen.clone());
        }
        let resp = match self.0.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, body) = resp.into_parts();
        match axum::body::to_bytes(body, ANSWER_LIMIT).await {
            Ok(body) => Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            },
            Err(_) => Answer::failed(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the answer was too large to show",
            ),
        }
    }

    /// [`Console::call`] without extra headers.
    pub(crate) async fn send(
        &self,
        ctx: &Ctx,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        self.call(ctx, method, path, body, &[]).await
    }

    pub(crate) async fn get(&self, ctx: &Ctx, path: &str) -> Answer {
        self.call(ctx, Method::GET, path, None, &[]).await
    }

    /// `GET` that a page cannot do without: the answer, or the page that says why it failed.
    pub(crate) async fn get_ok(&self, ctx: &Ctx, path: &str) -> Result<Answer, Response> {
        let a = self.get(ctx, path).await;
        if a.ok() {
            Ok(a)
        } else {
            Err(pages::refused(a.status, &a.problem()))
        }
    }
}

impl Answer {
    fn failed(status: StatusCode, detail: &str) -> Self {
        Answer {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(serde_json::json!({ "detail": detail }).to_string()),
        }
    }
}

/// The session token in the request's cookie, when it has the shape of one.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|t| {
            t.starts_with(orgbase_db::auth::SESSION_PREFIX)
                && t.len() <= 256
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// The value of `Set-Cookie` that signs in with `token` (or, `None`, signs out).
pub(crate) fn set_cookie(token: Option<&str>, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    match token {
        Some(t) => format!("{COOKIE}={t}; Path=/console; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Route layer: the route's permission, checked against the session cookie before the handler
/// runs. Signed out: 403 with the sign-in form. Not a member of the path's organization, or
/// not in the role the route needs: 403, and nothing of the organization is shown.
async fn guard(
    State((console, perm)): State<(Console, Perm)>,
    mut req: Request,
    next: Next,
) -> Response {
    if perm == Perm::Public {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let org = parts
        .extract::<axum::extract::RawPathParams>()
        .await
        .ok()
        .and_then(|p| {
            p.iter()
                .find(|(k, _)| *k == "org")
                .map(|(_, v)| v.to_string())
        });
    let mut ctx = Ctx::of(&parts, &console);
    let Some(token) = cookie_token(&parts.headers) else {
        return pages::sign_in_first(&parts);
    };
    ctx.session = Some(Session {
        token: token.clone(),
        me: Value::Null,
    });
    let me = console.get(&ctx, "/v1/me").await;
    if me.status == StatusCode::UNAUTHORIZED {
        return pages::sign_in_first(&parts);
    }
    if !me.ok() {
        return pages::refused(me.status, &me.problem());
    }
    let session = Session {
        token,
        me: me.json(),
    };
    let allowed = match perm {
        Perm::Public | Perm::SignedIn => true,
        Perm::Operator => session.operator(),
        Perm::Member | Perm::Admin => {
            let role = org
                .as_deref()
                .and_then(|o| session.org(o))
                .and_then(|o| o["role"].as_str());
            match (perm, role) {
                (_, None) => false,
                (Perm::Admin, Some(r)) => matches!(r, "owner" | "admin"),
                _ => true,
            }
        }
    };
    if !allowed {
        return pages::refused(
            StatusCode::FORBIDDEN,
            match perm {
                Perm::Operator => "Only instance operators may open this page.",
                Perm::Admin => {
                    "Only owners and admins of this organization may open this page (or it is not yours)."
                }
                _ => "You are not a member of this organization.",
            },
        );
    }
    parts.extensions.insert(session);
    req = Request::from_parts(parts, body);
    next.run(req).await
}

/// A response that sends the browser to `to` (after a form was handled: reloading the page does
/// not post it again).
pub(crate) fn see_other(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/console")),
        )],
    )
        .into_response()
}

/// Percent-encoding of a path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_string())
        .unwrap_or_default()
}
