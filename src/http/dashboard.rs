//! `GET /admin`: the live dashboard. One static page (HTML, CSS, JS) compiled into the binary,
//! so it works on an offline network and always matches the server it comes from. The page
//! itself needs no token: it gets its data over `/admin/ws` with the admin token the operator
//! gives it, and its actions call the admin HTTP API with that token.

use actix_web::http::header;
use actix_web::{get, HttpResponse};

const PAGE: &str = include_str!("../../assets/admin.html");
const SCRIPT: &str = include_str!("../../assets/admin.js");
const STYLE: &str = include_str!("../../assets/admin.css");

/// Only our own files run or load; inline script and style are refused, so injected markup
/// cannot execute. `ws: wss:` because older browsers do not count the page's own WebSocket
/// URL as `'self'`; the empty `data:` favicon keeps browsers from asking for `/favicon.ico`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        // A new binary may ship a new page; never let a browser mix old and new files.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}

/// The dashboard page; it asks the operator for an admin token and connects to `/admin/ws`.
#[utoipa::path(
    tag = "dashboard",
    responses((status = 200, description = "The page", content_type = "text/html", body = String))
)]
#[get("/admin")]
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// The root has no API of its own; a person who opens the bare address wants the dashboard.
/// 302, not 308: browsers cache a permanent redirect, and `/` may serve something else later.
#[utoipa::path(
    tag = "dashboard",
    responses((status = 302, description = "Redirect to the dashboard (`Location: /admin`)"))
)]
#[get("/")]
pub async fn root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/admin"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The dashboard's script (the page's CSP allows no inline script).
#[utoipa::path(
    tag = "dashboard",
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String))
)]
#[get("/admin/dashboard.js")]
pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The dashboard's style sheet.
#[utoipa::path(
    tag = "dashboard",
    responses((status = 200, description = "The style sheet", content_type = "text/css", body = String))
)]
#[get("/admin/dashboard.css")]
pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}
