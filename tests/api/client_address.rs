//! The failed-authentication limit counts per client address: behind a trusted proxy that is
//! the right-most `X-Forwarded-For` entry the proxy did not add itself; from anyone else the
//! header is ignored and the TCP peer counts.

use crate::helpers::{spawn_app_with, Backend, TestApp};

const LIMIT: u32 = 3;

/// `GET /v1/models` with a token that fails verification, as a client behind `forwarded_for`.
async fn bad_attempt(app: &TestApp, forwarded_for: &str) -> (u16, Option<String>) {
    attempt(app, "not.a.valid-token", forwarded_for).await
}

async fn attempt(app: &TestApp, token: &str, forwarded_for: &str) -> (u16, Option<String>) {
    let resp = app
        .client()
        .get(app.url("/v1/models"))
        .bearer_auth(token)
        .insert_header(("X-Forwarded-For", forwarded_for))
        .send()
        .await
        .expect("request");
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (resp.status().as_u16(), retry_after)
}

#[actix_web::test]
async fn clients_behind_a_trusted_proxy_get_separate_failure_buckets() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.auth_failure_limit = LIMIT;
        s.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let a = "203.0.113.7";
    for _ in 0..LIMIT {
        assert_eq!(bad_attempt(&app, a).await.0, 401);
    }
    let (status, retry_after) = bad_attempt(&app, a).await;
    assert_eq!(status, 429, "client {a} is past the limit");
    let retry_after: u64 = retry_after
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry_after >= 1);

    // Whatever a client writes to the left is not believed: the proxy appended the real one.
    assert_eq!(
        bad_attempt(&app, &format!("198.51.100.1, {a}")).await.0,
        429
    );

    // Another client behind the same proxy still gets its own 401s.
    let b = "198.51.100.9";
    assert_eq!(bad_attempt(&app, b).await.0, 401);
    assert_eq!(bad_attempt(&app, &format!("{a}, {b}")).await.0, 401);

    // A valid token from the limited address is never held back.
    let token = app.user_token("alice");
    assert_eq!(attempt(&app, &token, a).await.0, 200);
}

#[actix_web::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.auth_failure_limit = LIMIT;
        s.server.trusted_proxies = vec!["10.9.8.0/24".parse().expect("cidr")];
    })
    .await;
    for i in 0..LIMIT {
        let (status, _) = bad_attempt(&app, &format!("192.0.2.{i}")).await;
        assert_eq!(status, 401);
    }
    let (status, retry_after) = bad_attempt(&app, "192.0.2.200").await;
    assert_eq!(
        status, 429,
        "every attempt came from the same untrusted peer, whatever its X-Forwarded-For said"
    );
    assert!(retry_after.is_some());
    let token = app.user_token("alice");
    assert_eq!(attempt(&app, &token, "192.0.2.200").await.0, 200);
}
