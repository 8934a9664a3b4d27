//! Promises held under abuse (issue 13): the admin limit however a path is spelled, disabled
//! users on every user endpoint, a quick `/readyz`, and 405 for a known path's other methods.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::ws_client::{connect_with, ConnectOptions};

async fn status_of(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> u16 {
    let client = app.client();
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, app.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("request").status().as_u16()
}

#[actix_web::test]
async fn admin_limit_counts_every_spelling_of_an_admin_path() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.admin_rate_limit = 3).await;
    let admin = app.admin_token("ops");
    // Each of these reaches an admin handler, so each one uses up one of the three requests.
    for path in ["/%61dmin/users", "/admin/%75sers", "/%6Detrics"] {
        let (status, body) = app.get(path, Some(&admin)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for path in [
        "/admin/users",
        "/%61dmin/users",
        "/%61dmin/metrics",
        "/%6Detrics",
        "/metrics",
    ] {
        let (status, body) = app.get(path, Some(&admin)).await;
        assert_eq!(status, 429, "{path} after the limit: {body}");
        assert_eq!(body["error"]["code"], "rate_limited", "{path}");
    }
    // Spellings the router does not resolve to an admin route are never served either.
    for path in [
        "//admin/users",
        "/./admin/users",
        "/admin//users",
        "/admin/./users",
    ] {
        let status = status_of(&app, "GET", path, Some(&admin)).await;
        assert!(
            status == 429 || status == 404,
            "{path} answered {status} past the admin limit"
        );
    }
}

async fn disable(app: &TestApp, user: &str) {
    let admin = app.admin_token("ops");
    let mut resp = app
        .client()
        .put(app.url(&format!("/admin/users/{user}")))
        .bearer_auth(&admin)
        .send_json(&json!({"disabled": true}))
        .await
        .expect("put user");
    let body = resp.body().await.expect("body");
    assert_eq!(resp.status().as_u16(), 200, "{body:?}");
}

#[actix_web::test]
async fn disabled_user_gets_403_on_every_user_endpoint() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    disable(&app, "mallory").await;
    let token = app.user_token("mallory");

    let (status, body) = app.get("/v1/models", Some(&token)).await;
    assert_eq!(status, 403, "/v1/models: {body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let mut resp = app
        .client()
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .send_json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
        .await
        .expect("request");
    let body: Value = serde_json::from_slice(&resp.body().await.expect("body")).expect("json");
    assert_eq!(resp.status().as_u16(), 403, "/v1/chat/completions: {body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let refused = connect_with(
        &app,
        ConnectOptions {
            token: Some(&token),
            ..Default::default()
        },
    )
    .await
    .err();
    assert_eq!(refused, Some(403), "/ws handshake");

    // Everyone else is served as before.
    let other = app.user_token("alice");
    let (status, body) = app.get("/v1/models", Some(&other)).await;
    assert_eq!(status, 200, "{body}");
}

#[actix_web::test]
async fn readyz_answers_503_within_a_second_when_no_connection_comes() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.database.pool_max_size = 1;
        s.database.connection_timeout_ms = 5_000;
    })
    .await;
    let (status, _) = app.get("/readyz", None).await;
    assert_eq!(status, 200);
    // The pool's only connection is busy elsewhere: the database cannot answer the probe.
    let pool = app.db.clone();
    let held = actix_web::web::block(move || pool.checkout())
        .await
        .expect("blocking pool")
        .expect("the one connection");
    let started = Instant::now();
    let (status, body) = app.get("/readyz", None).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(took < Duration::from_millis(1_300), "/readyz took {took:?}");
    drop(held);
    let (status, _) = app.get("/readyz", None).await;
    assert_eq!(status, 200, "ready again once the connection is back");
}

#[actix_web::test]
async fn known_path_with_another_method_gets_405_with_allow() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let admin = app.admin_token("ops");
    let cases: [(&str, &str, &[&str]); 5] = [
        ("DELETE", "/admin/users", &["GET"]),
        ("POST", "/admin/users/bob", &["GET", "PUT"]),
        ("GET", "/v1/chat/completions", &["POST"]),
        ("POST", "/healthz", &["GET"]),
        ("PUT", "/admin/usage/collect", &["POST"]),
    ];
    for (method, path, allowed) in cases {
        let client = app.client();
        let mut resp = client
            .request(
                awc::http::Method::from_bytes(method.as_bytes()).expect("method"),
                app.url(path),
            )
            .bearer_auth(&admin)
            .send()
            .await
            .expect("request");
        let body: Value =
            serde_json::from_slice(&resp.body().await.expect("body")).unwrap_or(Value::Null);
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}: {body}");
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}"
        );
        let allow = resp
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        listed.sort_unstable();
        assert_eq!(listed, allowed, "Allow of {path}");
    }
    // Unknown paths stay 404.
    let (status, body) = app.get("/admin/nope", Some(&admin)).await;
    assert_eq!(status, 404, "{body}");
}
