//! The admin console at `/console/`: static files embedded in the binary (no Node.js needed to
//! build or run it), served with a strict Content-Security-Policy. It is a client of the public
//! API only, signed in with a bearer token it keeps in `sessionStorage`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use include_dir::{include_dir, Dir};

use crate::error::ApiError;

static ASSETS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/console");

/// Scripts and images from this origin only; no inline script; nothing may frame the console.
/// The preview's `srcdoc` iframe inherits this policy (and is sandboxed without scripts): mail
/// HTML styles itself inline, so inline styles are allowed, never inline script.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'; object-src 'none'";

/// `/console` (no slash) goes to `/console/`, where relative asset paths resolve.
pub async fn redirect() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/console/"))
        .finish()
}

/// `/console/{path}`: an embedded file, `index.html` for the bare folder.
pub async fn asset(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = req.match_info().query("path");
    let path = if path.is_empty() { "index.html" } else { path };
    let file = ASSETS
        .get_file(path)
        .filter(|_| !path.contains(".."))
        .ok_or_else(|| ApiError::NotFound(format!("the console has no file {path}")))?;
    Ok(HttpResponse::Ok()
        .content_type(content_type(path))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        // The page is small; a new binary must never be paired with an old cached script.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(file.contents()))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Registers the console's routes (outside the API document: they are not API endpoints).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(redirect))
        .route("/console/{path:.*}", web::get().to(asset));
}
