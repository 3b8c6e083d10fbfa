//! The HTTP API: axum routes, middleware, the problem+json error type, metrics and the OpenAPI
//! document. Handlers never touch the pool directly except through the db crate's services.

pub mod access;
pub mod analytics;
pub mod audit;
pub mod consent;
pub mod console;
pub mod contract;
pub mod error;
pub mod extract;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod middleware;
pub mod operator;
pub mod orgs;
pub mod privacy;
pub mod slo;
pub mod tables;
pub mod throttle;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use orgbase_core::Config;
use orgbase_db::Pool;
use orgbase_db::auth::ServerKey;
use orgbase_db::catalog::Catalog;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, Problem};
pub use metrics::Metrics;

/// What the handlers work with: the runtime pool, the server key (read with the
/// administrative connection at start) and the catalog of tenant tables.
#[derive(Debug, Clone)]
pub struct Services {
    pub pool: Pool,
    /// `None` while the database is not migrated (readiness says so; identity routes answer 503).
    pub key: Option<ServerKey>,
    pub catalog: Catalog,
    /// Shared with the server's background jobs (sealer, backups), which report through it.
    pub metrics: Arc<Metrics>,
    /// Where the signed audit checkpoints are, and the key that signs them, for
    /// `GET /v1/orgs/{org}/audit/verify`.
    pub checkpoints: Option<(std::path::PathBuf, String)>,
    /// Field encryption and the email blind index (docs/keys.md); encryption is disabled unless
    /// the server opened a key store.
    pub fields: orgbase_db::fields::Fields,
    /// Where export archives are written, and how long an erasure waits (GDPR requests).
    pub privacy: Privacy,
    /// Waits for the access-log writer: keep a clone before [`app`] and call
    /// [`access::Drain::wait`] after [`serve`] returns, before closing the pool.
    pub access_drain: access::Drain,
    /// The backups of the server process (`orgbase serve` sets it): what the operators' backup
    /// routes list and start. `None`: those routes answer 503.
    pub backups: Option<Arc<orgbase_backup::service::BackupService>>,
}

/// GDPR request settings the API needs.
#[derive(Debug, Clone)]
pub struct Privacy {
    pub dir: std::path::PathBuf,
    pub erasure_grace: std::time::Duration,
}

impl Default for Privacy {
    fn default() -> Self {
        Self {
            dir: std::path::PathBuf::from("./orgbase-data/privacy"),
            erasure_grace: std::time::Duration::from_secs(90 * 86_400),
        }
    }
}

impl Services {
    /// Read the server key over `admin` and the catalog over the runtime pool.
    pub async fn load(
        pool: Pool,
        admin: &tokio_postgres::Client,
    ) -> Result<Self, orgbase_db::DbError> {
        let metrics = Arc::new(Metrics::new(&pool));
        let migrated = admin
            .query_one("SELECT to_regclass('orgbase.context_key') IS NOT NULL", &[])
            .await?
            .get::<_, bool>(0);
        if !migrated {
            return Ok(Self {
                pool,
                key: None,
                catalog: Catalog::default(),
                metrics,
                checkpoints: None,
                fields: orgbase_db::fields::Fields::disabled(),
                privacy: Privacy::default(),
                access_drain: access::Drain::default(),
                backups: None,
            });
        }
        let key = ServerKey::load(admin).await?;
        let catalog = Catalog::load(admin).await?;
        // Without a key store (the caller may set `fields` to one): nothing is encrypted, and
        // the email blind index is keyed from the server key (see its doc).
        let fields = orgbase_db::fields::Fields::disabled()
            .with_blind_index(Arc::new(key.fallback_blind_index()));
        Ok(Self {
            pool,
            key: Some(key),
            catalog,
            metrics,
            checkpoints: None,
            fields,
            privacy: Privacy::default(),
            access_drain: access::Drain::default(),
            backups: None,
        })
    }
}

/// Shared state of every handler: one pointer, since axum clones it for every handler and
/// middleware a request passes through.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Shared {
    pub pool: Pool,
    key: Option<Arc<ServerKey>>,
    pub metrics: Arc<Metrics>,
    /// The newest migration this binary carries; `/readyz` wants the database at it.
    pub latest_migration: i64,
    catalog: Arc<RwLock<(Arc<Catalog>, Option<Instant>)>>,
    openapi: Arc<String>,
    access: Option<access::AccessLog>,
    checkpoints: Option<Arc<(std::path::PathBuf, String)>>,
    pub fields: Arc<orgbase_db::fields::Fields>,
    pub privacy: Arc<Privacy>,
    /// `server.trusted_proxies`: peers whose X-Forwarded-For is believed.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Failed logins by account and address, and by address.
    pub login_throttle: throttle::LoginThrottle,
    /// The latency targets `/v1/slo` reports against, and its last answer.
    slo_targets: orgbase_db::slo::Targets,
    slo_cache: slo::Cache,
    /// `server.signup`: who may create an account.
    pub signup: orgbase_core::config::SignupMode,
    /// The server process's backups (operators' backup routes).
    pub backups: Option<Arc<orgbase_backup::service::BackupService>>,
}

impl AppState {
    /// The server key, or 503 while the database is not migrated.
    pub fn key(&self) -> Result<&ServerKey, ApiError> {
        self.key.as_deref().ok_or_else(|| {
            ApiError::Unavailable("the database is not migrated: run `orgbase migrate up`".into())
        })
    }

    /// The tenant tables as last loaded.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().map(|g| g.0.clone()).unwrap_or_default()
    }

    /// Reload the catalog, at most once a second (unknown table names must not become a way
    /// to load the database).
    pub async fn reload_catalog(&self) -> Result<(), ApiError> {
        let due = self
            .catalog
            .read()
            .map(|g| g.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)))
            .unwrap_or(false);
        if !due {
            return Ok(());
        }
        if let Ok(mut g) = self.catalog.write() {
            g.1 = Some(Instant::now());
        }
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let fresh = Catalog::load(&**client).await?;
        if let Ok(mut g) = self.catalog.write() {
            g.0 = Arc::new(fresh);
        }
        Ok(())
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orgbase",
        description = "Multi-tenant, compliance-grade data layer on PostgreSQL. Errors are \
                       RFC 9457 problem+json documents with a stable `type`.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "operations", description = "Health, readiness, metrics and this document"),
        (name = "auth", description = "Accounts, sessions and multi-factor authentication"),
        (name = "organizations", description = "Organizations (by id or slug in paths)"),
        (name = "members", description = "Members, org roles, app roles, custom roles, invitations"),
        (name = "teams", description = "Teams within an organization"),
        (name = "api-keys", description = "Organization API keys (Bearer credentials with scopes)"),
        (name = "audit", description = "The organization's tamper-evident audit trail"),
        (name = "privacy", description = "GDPR: export and erasure of a person's data, with certificates of deletion"),
        (name = "consent", description = "Consent records, retention policies and legal holds"),
        (name = "analytics", description = "Differentially private aggregates and the organization's privacy budget"),
        (name = "operator", description = "Instance operators: every organization and account, no tenant data"),
        (name = "records", description = "The generic API over every tenant table (notes, projects, tasks, …)"),
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(Problem))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token (`obs_…`, from /v1/auth/login) or an API key (`obk_…`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route with its OpenAPI description: the router and the document cannot disagree.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi))
        .routes(routes!(slo::report))
        .routes(routes!(identity::signup))
        .routes(routes!(identity::login))
        .routes(routes!(identity::refresh))
        .routes(routes!(identity::logout))
        .routes(routes!(identity::me))
        .routes(routes!(identity::totp_enroll))
        .routes(routes!(identity::totp_verify))
        .routes(routes!(orgs::create_org, orgs::list_orgs))
        .routes(routes!(orgs::get_org, orgs::update_org))
        .routes(routes!(orgs::list_members, orgs::add_member))
        .routes(routes!(
            orgs::get_member,
            orgs::update_member,
            orgs::remove_member
        ))
        .routes(routes!(orgs::set_app_role, orgs::remove_app_role))
        .routes(routes!(orgs::grant_role, orgs::revoke_role))
        .routes(routes!(orgs::list_roles, orgs::create_role))
        .routes(routes!(orgs::create_invitation, orgs::list_invitations))
        .routes(routes!(orgs::revoke_invitation))
        .routes(routes!(orgs::accept_invitation))
        .routes(routes!(orgs::list_teams, orgs::create_team))
        .routes(routes!(orgs::delete_team))
        .routes(routes!(orgs::add_team_member, orgs::remove_team_member))
        .routes(routes!(orgs::create_api_key, orgs::list_api_keys))
        .routes(routes!(orgs::revoke_api_key))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(privacy::export_me))
        .routes(routes!(privacy::erase_me))
        .routes(routes!(identity::cancel_erasure))
        .routes(routes!(privacy::list_mine))
        .routes(routes!(privacy::get_mine))
        .routes(routes!(privacy::download_mine))
        .routes(routes!(privacy::export_member))
        .routes(routes!(privacy::erase_member))
        .routes(routes!(privacy::list_org))
        .routes(routes!(privacy::get_org))
        .routes(routes!(privacy::download_org))
        .routes(routes!(privacy::cancel_org))
        .routes(routes!(consent::list_consents, consent::record_consent))
        .routes(routes!(consent::get_retention, consent::put_retention))
        .routes(routes!(consent::list_holds, consent::place_hold))
        .routes(routes!(consent::release_hold))
        .routes(routes!(analytics::query))
        .routes(routes!(analytics::budget))
        .routes(routes!(analytics::charges))
        .routes(routes!(operator::orgs))
        .routes(routes!(operator::accounts))
        .routes(routes!(operator::set_status))
        .routes(routes!(operator::set_org_status))
        .routes(routes!(operator::migrations))
        .routes(routes!(operator::keys))
        .routes(routes!(operator::backups, operator::start_backup))
        .routes(routes!(tables::list, tables::create))
        .routes(routes!(tables::get, tables::update, tables::delete))
        .routes(routes!(tables::restore))
}

/// The OpenAPI document of this binary for the tenant tables of `catalog` (what
/// `/v1/openapi.json` serves).
pub fn openapi(catalog: &Catalog) -> serde_json::Value {
    let (_, doc) = routes().split_for_parts();
    document(doc, catalog)
}

fn document(mut doc: utoipa::openapi::OpenApi, catalog: &Catalog) -> serde_json::Value {
    doc.info.version = orgbase_core::VERSION.to_string();
    let mut json = serde_json::to_value(&doc).unwrap_or_default();
    contract::finish(&mut json, catalog);
    json
}

/// Settings the router needs from the configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    /// Write every request to orgbase.access_log.
    pub access_log: bool,
    /// Reverse proxies whose X-Forwarded-For names the client ([`extract::client_ip`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins whose browser pages may call the API (`server.cors_origins`); empty: none.
    pub cors_origins: Vec<String>,
    /// The latency targets of `/v1/slo` (`[slo]`).
    pub slo: orgbase_db::slo::Targets,
    /// `server.signup`: who may create an account.
    pub signup: orgbase_core::config::SignupMode,
}

impl From<&Config> for HttpSettings {
    fn from(c: &Config) -> Self {
        Self {
            request_timeout: c.server.request_timeout(),
            body_limit_bytes: c.server.body_limit_bytes,
            access_log: c.audit.access_log,
            trusted_proxies: c.server.trusted_proxies(),
            cors_origins: c.server.cors_origins.clone(),
            slo: orgbase_db::slo::Targets::from(&c.slo),
            signup: c.server.signup,
        }
    }
}

/// Build the application. Background jobs (sealer, backups) report through
/// `services.metrics`, which `/metrics` serves.
pub fn app(services: Services, latest_migration: i64, settings: &HttpSettings) -> Router {
    let (router, doc) = routes().split_for_parts();
    let doc = document(doc, &services.catalog);
    let access = (settings.access_log && services.key.is_some()).then(|| {
        access::AccessLog::start(
            services.pool.clone(),
            services.metrics.clone(),
            &services.access_drain,
        )
    });
    let state = AppState(Arc::new(Shared {
        access,
        checkpoints: services.checkpoints.map(Arc::new),
        fields: Arc::new(services.fields),
        privacy: Arc::new(services.privacy),
        pool: services.pool,
        key: services.key.map(Arc::new),
        metrics: services.metrics,
        latest_migration,
        catalog: Arc::new(RwLock::new((Arc::new(services.catalog), None))),
        openapi: Arc::new(doc.to_string()),
        trusted_proxies: settings.trusted_proxies.clone(),
        login_throttle: throttle::LoginThrottle::default(),
        slo_targets: settings.slo,
        slo_cache: slo::Cache::default(),
        signup: settings.signup,
        backups: services.backups,
    }));
    let api = router
        .route_layer(axum::middleware::from_fn(middleware::matched_route))
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(
            settings.request_timeout,
            middleware::timeout,
        ))
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(RequestBodyLimitLayer::new(settings.body_limit_bytes))
        .with_state(state.clone());
    // The console calls the API in-process (console::Console::call), past the outermost layer:
    // a console request is observed and logged once, as the console route it is.
    let console = console::router(api.clone(), state.clone(), settings);
    let router = api
        .nest("/console", console)
        // The console's home is `/console`; with a trailing slash, the same.
        .route(
            "/console/",
            axum::routing::get(|| async { console::see_other("/console") }),
        )
        .layer(axum::middleware::from_fn_with_state(
            state,
            middleware::observe,
        ));
    match cors(&settings.cors_origins) {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// Browser pages of these origins may call the API: a preflight (`OPTIONS`) answers with the
/// methods and headers the API uses, and responses expose `ETag`, `Retry-After` and the
/// request id. No origins: no CORS headers at all (the browser refuses cross-origin calls).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let request_id = HeaderName::from_static("x-request-id");
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                request_id.clone(),
            ])
            .expose_headers([header::ETAG, header::RETRY_AFTER, request_id])
            .max_age(Duration::from_secs(600)),
    )
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
