//! Cross-cutting request handling: request ids, latency metrics by matched route, timeouts,
//! and turning every error status into problem+json.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::{ApiError, PROBLEM_JSON};

pub const REQUEST_ID: &str = "x-request-id";

/// The id of the current request, in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The route a request matched, copied into response extensions for the outer layers.
#[derive(Debug, Clone)]
struct Route(String);

fn acceptable_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    .then(|| s.to_string())
}

/// Outermost layer: assign a request id (keeping a sane incoming one), time the request, record
/// the latency histogram, make error responses problem+json, log the outcome.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(acceptable_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let seen = crate::access::Seen::default();
    req.extensions_mut().insert(seen.clone());
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let ip = crate::extract::client_ip(peer, req.headers(), &state.trusted_proxies);
    req.extensions_mut().insert(crate::extract::ClientAddr(ip));
    let at = chrono::Utc::now();
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = tracing::field::Empty);
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let route = resp
        .extensions()
        .get::<Route>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".to_string());
    span.record("route", route.as_str());
    let status = resp.status();
    // The console's pages (HTML) say what went wrong themselves; everything else errs in
    // problem+json.
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"text/html"));
    if (status.is_client_error() || status.is_server_error())
        && !html
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|ct| ct != PROBLEM_JSON)
    {
        resp = ApiError::from(status).into_response();
    }
    if (status.is_client_error() || status.is_server_error()) && !html {
        resp = with_request_id_in_problem(resp, &id).await;
    }
    resp = json_ends_with_newline(resp).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let elapsed = started.elapsed();
    state
        .metrics
        .http_duration
        .get_or_create(&crate::metrics::HttpLabels {
            method: method.to_string(),
            route: route.clone(),
            status: status.as_u16(),
        })
        .observe(elapsed.as_secs_f64());
    tracing::info!(parent: &span, status = status.as_u16(), latency_ms = %format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0), "request");
    if let Some(log) = &state.access {
        log.record(crate::access::Line {
            at,
            seen: seen.0.get().copied(),
            method: method.to_string(),
            route,
            status: status.as_u16(),
            latency_ms: (elapsed.as_secs_f64() * 1000.0) as f32,
            request_id: id,
            ip,
        });
    }
    resp
}

/// Problem bodies are small: add the request id so a client can quote it.
async fn with_request_id_in_problem(resp: Response, id: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert(
                "request_id".into(),
                serde_json::Value::String(id.to_string()),
            );
            serde_json::to_vec(&map).unwrap_or_else(|_| bytes.to_vec())
        }
        _ => bytes.to_vec(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// JSON bodies end with a newline, as a terminal (and `curl`) reader expects. Only whole bodies
/// (every JSON answer is built in memory) are touched; a streamed body passes as it is.
async fn json_ends_with_newline(resp: Response) -> Response {
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct == PROBLEM_JSON);
    let size = axum::body::HttpBody::size_hint(resp.body()).exact();
    let (Some(n), true) = (size, json) else {
        return resp;
    };
    if n == 0 {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, n as usize).await else {
        return Response::from_parts(parts, Body::empty());
    };
    if bytes.ends_with(b"\n") {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let mut body = Vec::with_capacity(bytes.len() + 1);
    body.extend_from_slice(&bytes);
    body.push(b'\n');
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Route layer (runs only for matched routes): publish the matched route template, to the
/// outer layers and to the request's log span.
pub async fn matched_route(path: MatchedPath, req: Request, next: Next) -> Response {
    let route = path.as_str().to_string();
    // Known from here on: what the handler logs names its route, and the slow-query log its
    // route and request id.
    tracing::Span::current().record("route", route.as_str());
    let tag = orgbase_db::observe::RequestTag {
        route: route.clone(),
        request_id: req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
    };
    let mut resp = orgbase_db::observe::tagged(tag, next.run(req)).await;
    resp.extensions_mut().insert(Route(route));
    resp
}

/// Answer 503 problem+json when a handler runs past the configured timeout.
pub async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout.into_response(),
    }
}
