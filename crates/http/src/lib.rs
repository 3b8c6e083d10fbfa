//! The HTTP API: axum routes, middleware, the problem+json error type, metrics and the OpenAPI
//! document. Handlers never touch the pool directly except through the db crate's services.

pub mod error;
pub mod health;
pub mod metrics;
pub mod middleware;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use orgbase_core::Config;
use orgbase_db::Pool;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, Problem};
pub use metrics::Metrics;

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    /// The newest migration this binary carries; `/readyz` wants the database at it.
    pub latest_migration: i64,
    openapi: Arc<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orgbase",
        description = "Multi-tenant, compliance-grade data layer on PostgreSQL. Errors are \
                       RFC 9457 problem+json documents with a stable `type`.",
        license(name = "Apache-2.0")
    ),
    tags((name = "operations", description = "Health, readiness, metrics and this document")),
    components(schemas(Problem))
)]
struct ApiDoc;

/// Every route with its OpenAPI description: the router and the document cannot disagree.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi))
}

/// The OpenAPI document of this binary.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = routes().split_for_parts();
    doc.info.version = orgbase_core::VERSION.to_string();
    doc
}

/// Settings the router needs from the configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
}

impl From<&Config> for HttpSettings {
    fn from(c: &Config) -> Self {
        Self {
            request_timeout: c.server.request_timeout(),
            body_limit_bytes: c.server.body_limit_bytes,
        }
    }
}

/// Build the application.
pub fn app(pool: Pool, latest_migration: i64, settings: &HttpSettings) -> Router {
    let (router, mut doc) = routes().split_for_parts();
    doc.info.version = orgbase_core::VERSION.to_string();
    let state = AppState {
        pool,
        metrics: Arc::new(Metrics::new()),
        latest_migration,
        openapi: Arc::new(doc.to_json().unwrap_or_else(|_| "{}".into())),
    };
    router
        .route_layer(axum::middleware::from_fn(middleware::matched_route))
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(
            settings.request_timeout,
            middleware::timeout,
        ))
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(RequestBodyLimitLayer::new(settings.body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::observe,
        ))
        .with_state(state)
}

/// Serve until `shutdown` resolves, then stop accepting, give in-flight requests `grace` to
/// finish, and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut rx_grace = rx.clone();
    tokio::select! {
        r = server => r,
        _ = async move {
            let _ = rx_grace.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the shutdown grace period");
            Ok(())
        }
    }
}
