//! `GET /openapi.json`: a valid OpenAPI 3 document whose operations are exactly the routes the
//! server registers, each of them really routed.

use std::collections::BTreeSet;

use actix_web::http::Method;
use chatgate::http::openapi::registered_routes;

use crate::helpers::{spawn_app, TestApp};

/// Every endpoint CONTRACT.md names.
const CONTRACT_ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/admin/metrics"),
    ("GET", "/admin/sessions"),
    ("GET", "/admin/sessions/stats"),
    ("DELETE", "/admin/sessions/{id}"),
    ("GET", "/admin/users"),
    ("GET", "/admin/users/{id}"),
    ("PUT", "/admin/users/{id}"),
    ("GET", "/admin/usage/history"),
    ("POST", "/admin/usage/collect"),
    ("GET", "/admin/usage/collect/runs"),
    ("GET", "/admin/origins"),
    ("PUT", "/admin/origins"),
    ("GET", "/admin/ws"),
    ("GET", "/admin"),
    ("GET", "/ws"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/openapi.json"),
];

async fn fetch_spec(app: &TestApp) -> oas3::Spec {
    let mut resp = app
        .client()
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body = resp.body().limit(4 * 1024 * 1024).await.expect("body");
    let text = std::str::from_utf8(&body).expect("utf-8");
    oas3::from_json(text).unwrap_or_else(|err| panic!("not an OpenAPI 3.1 document: {err}"))
}

fn operations(spec: &oas3::Spec) -> BTreeSet<(String, String)> {
    spec.operations()
        .map(|(path, method, _)| (method.as_str().to_string(), path))
        .collect()
}

#[actix_web::test]
async fn openapi_json_is_valid_openapi_3_and_lists_every_registered_route() {
    let app = spawn_app().await;
    let spec = fetch_spec(&app).await;

    assert!(spec.openapi.starts_with("3."), "version {}", spec.openapi);
    // The parser's own check: a version it understands (3.1.x).
    spec.validate_version().expect("supported OpenAPI version");

    let documented = operations(&spec);
    assert_eq!(
        documented,
        registered_routes(),
        "the document and the route table differ"
    );
    for (method, path) in CONTRACT_ROUTES {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} (CONTRACT.md) is not documented"
        );
    }

    // Every operation names the error body, and every response resolves (no dangling $ref).
    for (path, method, op) in spec.operations() {
        let responses = op.responses(&spec);
        assert!(!responses.is_empty(), "{method} {path}: no responses");
        assert_eq!(
            responses.len(),
            op.responses.as_ref().map_or(0, |r| r.len()),
            "{method} {path}: a response does not resolve"
        );
    }
    let error_body = spec
        .components
        .as_ref()
        .and_then(|c| c.schemas.get("ErrorBody"))
        .expect("ErrorBody schema");
    assert!(error_body.resolve(&spec).is_ok(), "ErrorBody resolves");
}

/// Documented routes exist: each operation, asked without a token, is routed to its handler
/// (200, 401 or 403; WebSocket handshakes refuse before upgrading), never the 404 fallback.
#[actix_web::test]
async fn every_documented_operation_is_routed() {
    let app = spawn_app().await;
    let spec = fetch_spec(&app).await;
    let mut probed = 0;
    for (method, path) in operations(&spec) {
        let concrete = path.replace("{id}", "probe-id");
        assert!(!concrete.contains('{'), "unfilled parameter in {path}");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let resp = app
            .client()
            .request(method.clone(), app.url(&concrete))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        assert!(
            matches!(status, 200 | 401 | 403),
            "{method} {path} answered {status} without a token"
        );
        probed += 1;
    }
    assert_eq!(probed, registered_routes().len());
}
