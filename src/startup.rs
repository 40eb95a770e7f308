//! Composition: `Application::build` wires configuration, state, routes, middleware and the
//! dispatcher together; what `mailroom serve` and the tests both start.

use std::net::TcpListener;
use std::sync::Arc;

use actix_cors::Cors;
use actix_web::dev::{Server, Service, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{Condition, ErrorHandlerResponse, ErrorHandlers};
use actix_web::HttpMessage;
use actix_web::{web, App, HttpServer, ResponseError};
use anyhow::Context;
use secrecy::SecretString;
use tokio::sync::watch;
use tracing_actix_web::TracingLogger;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::JwtVerifier;
use crate::config::{Config, CorsOrigins};
use crate::delivery::Dispatcher;
use crate::error::{ApiError, PROBLEM_JSON};
use crate::extract;
pub use crate::mail::install_crypto_provider;
use crate::notifications::intake::Intake;
use crate::routes::{self, RouteTable};
use crate::secrets;
use crate::settings::templates::CatalogCache;
pub use crate::state::AppState;
use crate::state::Hooks;

/// The webhook sender for `state`'s database, keys and address policy.
pub fn webhook_sender(state: &AppState) -> crate::webhooks::sender::Sender {
    crate::webhooks::sender::Sender {
        db: state.db.clone(),
        cipher: state.cipher.clone(),
        policy: state.mail.policy.clone(),
        config: state.config.delivery.clone(),
    }
}

/// The delivery dispatcher for `state`'s database, keys, mail policy and signals.
pub fn dispatcher(state: &AppState) -> Dispatcher {
    Dispatcher::new(
        state.db.clone(),
        state.cipher.clone(),
        state.mail.clone(),
        state.config.delivery.clone(),
        state.signals.clone(),
    )
}

/// The HS256 secret and verifier; generates the secret file on first start when nothing is set.
pub fn jwt_verifier(config: &Config) -> anyhow::Result<(JwtVerifier, Option<SecretString>)> {
    let (secret, created) = secrets::load_or_create_jwt_secret(config)?;
    if created {
        let path = secrets::jwt_secret_path(config);
        eprintln!(
            "mailroom: no MAILROOM_JWT_SECRET or MAILROOM_JWT_PUBLIC_KEY_FILE was set, so a secret was generated in {} (mode 0600).\n\
             mailroom: mint a token with:  {} token --sub admin --scope 'settings:read settings:write smtp:test notifications:send notifications:read' --ttl 1h",
            path.display(),
            own_command()
        );
    }
    let mut verifier = JwtVerifier::new(
        secret.as_ref(),
        config.jwt_public_key_file.as_deref(),
        config.jwt_issuer.clone(),
        config.jwt_audience.clone(),
    )?;
    if let Some(url) = &config.jwt_jwks_url {
        // Keys are fetched under the same address policy as every other outgoing request.
        let policy = crate::outbound::policy::HostPolicy {
            allowed_hosts: config.smtp_allowed_hosts.clone(),
        };
        crate::outbound::check_url(&policy, url)
            .map_err(|e| anyhow::anyhow!("MAILROOM_JWT_JWKS_URL: {e}"))?;
        verifier = verifier.with_jwks(crate::auth::jwks::Jwks::new(url.clone(), policy));
    }
    Ok((verifier, secret))
}

/// How the user can run this same binary again: `mailroom` when that name on PATH is this file,
/// `cargo run -q --` when it is a cargo build run from its project, else the full path.
fn own_command() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "mailroom".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .filter_map(|dir| std::fs::canonicalize(dir.join("mailroom")).ok())
            .any(|found| found == exe)
    });
    if on_path {
        return "mailroom".into();
    }
    let in_project = std::path::Path::new("Cargo.toml").is_file();
    let dir = exe.parent().and_then(|d| d.file_name()).and_then(|d| d.to_str());
    match dir {
        Some("debug") if in_project => "cargo run -q --".into(),
        Some("release") if in_project => "cargo run -q --release --".into(),
        _ => exe.display().to_string(),
    }
}

pub struct Application {
    port: u16,
    server: Server,
    pub state: web::Data<AppState>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (verifier, _) = jwt_verifier(&config)?;
        let listener = TcpListener::bind(config.bind)
            .with_context(|| format!("MAILROOM_BIND: cannot listen on {}", config.bind))?;
        let port = listener.local_addr()?.port();
        crate::metrics::handle();
        let state = web::Data::new(AppState::build(config, hooks()).await?);
        let services = Services {
            intake: web::Data::new(Intake::start(state.db.clone())),
            catalog: web::Data::new(CatalogCache::default()),
        };
        let server = run(listener, state.clone(), web::Data::new(verifier), services)?;
        Ok(Self { port, server, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves HTTP and, when delivery is enabled, runs the dispatcher beside it. On SIGINT or
    /// SIGTERM (or when the server is stopped through its handle) both stop together: HTTP finishes
    /// the requests in progress and the dispatcher the sends in flight, each within the shutdown
    /// grace, so the process exits within about that time whatever the SMTP servers do.
    /// Serves until SIGINT or SIGTERM (or a stop through the server handle), then stops HTTP and
    /// delivery together. The shutdown grace bounds all of it: requests, sends in flight and the
    /// release of their claims; whatever still runs after it is dropped (its leases run out, and
    /// its mail is sent again).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let stop = Arc::new(stop);
        let grace = self.state.config.delivery.shutdown_grace;
        let delivery = self.state.config.delivery.enabled;
        let webhooks = delivery.then(|| tokio::spawn(webhook_sender(&self.state).run(stopped.clone())));
        let dispatcher = delivery.then(|| tokio::spawn(dispatcher(&self.state).run(stopped)));
        let handle = self.server.handle();
        let on_signal = stop.clone();
        let signalled_at = Arc::new(std::sync::OnceLock::new());
        let signalled = signalled_at.clone();
        let signals = tokio::spawn(async move {
            shutdown_signal().await;
            let _ = signalled.set(tokio::time::Instant::now());
            tracing::info!("stopping: finishing requests and deliveries in flight");
            let _ = on_signal.send(true);
            handle.stop(true).await;
        });
        let result = self.server.await;
        signals.abort();
        let _ = stop.send(true);
        let deadline = signalled_at
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now)
            + grace;
        let workers = async {
            if let Some(handle) = dispatcher {
                let _ = handle.await;
            }
            if let Some(handle) = webhooks {
                let _ = handle.await;
            }
        };
        if tokio::time::timeout_at(deadline, workers).await.is_err() {
            tracing::warn!(
                ?grace,
                "the shutdown grace is over: stopping with delivery still winding down"
            );
        }
        result
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}

fn cors(origins: &CorsOrigins) -> Cors {
    let cors = Cors::default()
        .allowed_methods(["GET", "PUT", "PATCH", "POST", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
        ])
        .max_age(3600);
    match origins {
        CorsOrigins::Any => cors.allow_any_origin().send_wildcard(),
        CorsOrigins::List(list) => list.iter().fold(cors, |c, o| c.allowed_origin(o)),
    }
}

/// Rewrites any error response that is not yet problem+json (from actix itself or a middleware)
/// so that clients see one error shape everywhere.
fn problem_safety_net<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    if status.as_u16() == 400 {
        // Our handlers answer problem+json; a bare 400 with an Origin is actix-cors refusing it.
        if let Some(origin) = res.request().headers().get(header::ORIGIN) {
            tracing::warn!(
                origin = %String::from_utf8_lossy(origin.as_bytes()),
                method = %res.request().method(),
                path = %res.request().path(),
                "CORS request rejected: the origin is not in MAILROOM_CORS_ORIGINS (or asked for a method or header not allowed)"
            );
        }
    }
    let error = match status.as_u16() {
        400 => ApiError::BadRequest {
            code: "bad_request",
            detail: "the request was rejected (for a browser, check that its origin is allowed by MAILROOM_CORS_ORIGINS)".into(),
        },
        404 => ApiError::NotFound(format!("no resource at {}", res.request().path())),
        413 => ApiError::PayloadTooLarge {
            limit: extract::body_limit(res.request().path()),
        },
        415 => ApiError::UnsupportedMediaType("unsupported content type".into()),
        _ if status.is_server_error() => ApiError::Internal(anyhow::anyhow!("unhandled {status} response")),
        _ => ApiError::BadRequest {
            code: "bad_request",
            detail: status.canonical_reason().unwrap_or("request rejected").to_string(),
        },
    };
    let mut problem = error.error_response();
    *problem.status_mut() = status;
    for (name, value) in res.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let (req, _) = res.into_parts();
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, problem).map_into_right_body(),
    ))
}

/// How features react to each other's changes.
fn hooks() -> Hooks {
    Hooks {
        // Mail deferred under the old SMTP settings is due at once under the new ones, and the
        // failures the old settings caused stop counting towards its attempt limit.
        smtp_replaced: Box::new(|conn, now| Ok(crate::store::queue::make_queued_due(conn, now, true)?)),
    }
}

/// Services of the features, shared by their handlers as app data of their own.
struct Services {
    intake: web::Data<Intake>,
    catalog: web::Data<CatalogCache>,
}

fn run(
    listener: TcpListener,
    state: web::Data<AppState>,
    verifier: web::Data<JwtVerifier>,
    services: Services,
) -> anyhow::Result<Server> {
    let spec = crate::openapi::document();
    let route_table = web::Data::new(RouteTable::from_openapi(&spec));
    let cors_enabled = state.config.cors_origins != CorsOrigins::List(Vec::new());
    let origins = state.config.cors_origins.clone();
    let grace_secs = state.config.delivery.shutdown_grace.as_secs();
    let body_timeout = state.config.body_timeout;
    let server = HttpServer::new(move || {
        App::new()
            // Innermost: every extractor reads the body through the deadline.
            .wrap_fn(move |mut req, srv| {
                let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
                    || req.headers().contains_key(header::TRANSFER_ENCODING);
                if has_body {
                    let body = req.take_payload();
                    let timed = Box::pin(extract::Deadline::new(body, body_timeout));
                    req.set_payload(actix_web::dev::Payload::Stream { payload: timed });
                }
                srv.call(req)
            })
            // HEAD is GET without the body (RFC 9110), for every GET route.
            .wrap_fn(|mut req, srv| {
                let head = req.method() == actix_web::http::Method::HEAD;
                if head {
                    req.head_mut().method = actix_web::http::Method::GET;
                }
                let answer = srv.call(req);
                async move {
                    let res = answer.await?;
                    Ok(if head {
                        res.map_body(|_, _| actix_web::body::BoxBody::new(()))
                    } else {
                        res.map_into_boxed_body()
                    })
                }
            })
            .wrap(Condition::new(cors_enabled, cors(&origins)))
            .wrap(ErrorHandlers::new().default_handler(problem_safety_net))
            .wrap(TracingLogger::default())
            .app_data(state.clone())
            .app_data(verifier.clone())
            .app_data(services.intake.clone())
            .app_data(services.catalog.clone())
            .app_data(route_table.clone())
            .app_data(extract::json_config())
            .app_data(extract::payload_config())
            .app_data(extract::query_config())
            .app_data(extract::path_config())
            .into_utoipa_app()
            .openapi(crate::openapi::base())
            .configure(routes::api)
            .openapi_service(|_| {
                SwaggerUi::new("/docs/{_:.*}").external_url_unchecked("/openapi.json", spec.clone())
            })
            .into_app()
            .route("/docs", web::get().to(routes::docs_redirect))
            .configure(crate::console::routes)
            .default_service(web::to(routes::fallback))
    })
    .listen(listener)?
    // Signals are handled in `run_until_stopped`, so that HTTP and delivery stop together.
    .disable_signals()
    .shutdown_timeout(grace_secs)
    .run();
    Ok(server)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
