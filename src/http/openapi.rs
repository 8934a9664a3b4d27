//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole HTTP API, generated from the code.
//!
//! Why it cannot drift from what the server routes:
//! - One list, in `http/mod.rs` (`routes!`), expands into both `configure` (the route table)
//!   and `Routes`, whose `#[openapi(paths(...))]` names the same handlers. A route is
//!   registered only by being on that list, and then it is in the document.
//! - Every handler on the list must carry `#[utoipa::path]`, or `paths(...)` fails to compile
//!   (it needs the `__path_<handler>` type the annotation generates).
//! - A handler's method and path are written once, in its actix route macro
//!   (`#[get("/admin/users/{id}")]`). The annotation sets neither: utoipa's `actix_extras`
//!   reads both from that macro, and path parameters and `web::Query` fields from the
//!   handler's extractors (`IntoParams`), so the document shows what actix registers.
//! - Response bodies name the types the handlers serialize (`ToSchema` on those very types),
//!   so a changed field changes the document.
//!
//! `startup` adds no route of its own (only the 404 default service), so nothing is routed
//! around the list. `tests/api/openapi.rs` checks the result from outside: the served document
//! parses as OpenAPI 3, its operations equal `registered_routes()`, and every one of them is
//! routed (not 404).

use std::collections::BTreeSet;

use actix_web::{get, HttpResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::error::{ErrorBody, ErrorCode, ErrorDetail};

/// Security scheme of `Authorization: Bearer <JWT>` (named in the handlers' `security(...)`).
pub const BEARER: &str = "bearer_jwt";
/// Security scheme of the `token` query parameter, for browsers' WebSocket handshakes.
pub const QUERY_TOKEN: &str = "token_query";

/// What every document shares: title and version (from Cargo), tags, security schemes, and
/// the error body that every endpoint answers with.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatgate",
        description = "Real-time LLM chat gateway: WebSocket and OpenAI-compatible chat, \
            admin HTTP API. Every error is `{\"error\":{\"code\",\"message\"}}` with the \
            codes of `ErrorCode`; 429 responses carry `Retry-After` (whole seconds)."
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Liveness and readiness, no token"),
        (name = "chat", description = "Chat over WebSocket and the OpenAI-compatible API (user token)"),
        (name = "admin", description = "Admin API (admin token, rate limited per admin)"),
        (name = "dashboard", description = "The live admin dashboard page and its files, no token"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT (`sub`, `exp`, `role` = `user` | `admin`); admin routes \
                         need `role` = `admin`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            QUERY_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same JWT as a query parameter: browsers cannot set headers on a \
                 WebSocket handshake",
            ))),
        );
    }
}

/// The whole document: the registered operations plus what every document shares.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi().merge_from(super::Routes::openapi())
}

/// `(METHOD, path)` of every operation `http::configure` registers, from the same list.
pub fn registered_routes() -> BTreeSet<(String, String)> {
    operations(&super::Routes::openapi())
}

/// `(METHOD, path)` of every operation in a document.
pub fn operations(doc: &utoipa::openapi::OpenApi) -> BTreeSet<(String, String)> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut found = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        // Through JSON, so a method utoipa adds later is not missed silently: an unknown
        // key fails the test that compares this set with the served document.
        let item = serde_json::to_value(item).unwrap_or_default();
        for method in METHODS {
            if item.get(method).is_some() {
                found.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    found
}

/// Refusals any route that takes a user token can answer with.
#[derive(IntoResponses)]
pub enum UserRefusals {
    /// `unauthorized`: no token, or an invalid or expired one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`: the user is disabled.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `rate_limited`: too many failed token attempts from this address.
    #[response(
        status = 429,
        headers(("Retry-After" = u64, description = "Seconds to wait, at least 1"))
    )]
    RateLimited(ErrorBody),
    /// `internal`: the server log has the details.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `unavailable`: the database or an internal actor is not answering; try again.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Refusals of a chat: admission (rate limit, quota), the model, and the upstream.
#[derive(IntoResponses)]
pub enum ChatRefusals {
    /// `bad_request` (malformed request) or `unsupported_model` (a model this gateway does
    /// not serve).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `unauthorized`: no token, or an invalid or expired one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`: the user is disabled.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `too_large`: the body is over `CHATGATE_MAX_FRAME_BYTES`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `rate_limited` (the user's chat limit, or failed token attempts from this address),
    /// `quota_exceeded` (the daily quota) or `upstream_rate_limited`. `quota_exceeded` also
    /// carries the quota receipt, with `x-chatgate-quota-used` equal to the limit.
    #[response(
        status = 429,
        headers(
            ("Retry-After" = u64, description = "Seconds to wait, at least 1"),
            ("x-chatgate-quota-used" = i64, description = "`quota_exceeded` only: units used or held today (the limit)"),
            ("x-chatgate-quota-limit" = i64, description = "`quota_exceeded` only: the user's daily limit"),
            ("x-chatgate-quota-reset" = String, description = "`quota_exceeded` only: when the quota resets, RFC 3339 UTC (the next 00:00 UTC)")
        )
    )]
    RateLimited(ErrorBody),
    /// `internal`: the server log has the details.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `upstream_error`: the model's provider failed.
    #[response(status = 502)]
    UpstreamError(ErrorBody),
    /// `unavailable`: shutting down, or an internal actor or the database is not answering.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// `upstream_timeout`: no complete reply within the stream timeout.
    #[response(status = 504)]
    UpstreamTimeout(ErrorBody),
}

/// Lives with the error body so the WebSocket handshakes (below `http`) can name it too.
pub use crate::error::AdminRefusals;

/// This document, generated from the code at each request (it is small and rarely asked for).
#[utoipa::path(
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this server",
            content_type = "application/json", body = Object)
    )
)]
#[get("/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_exactly_the_registered_routes() {
        let doc = document();
        assert_eq!(operations(&doc), registered_routes());
        assert!(registered_routes().contains(&("GET".into(), "/openapi.json".into())));
    }

    #[test]
    fn every_reference_resolves() {
        let doc = serde_json::to_value(document()).expect("json");
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }
    }

    fn collect_refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
