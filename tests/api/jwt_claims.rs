//! JWT claims beyond `sub`/`exp`/`role`: `aud` and `iss` (checked only when configured),
//! `nbf` (honoured), `iat` and unknown claims (ignored).

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Backend, TEST_SECRET};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn sign(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("encode")
}

#[actix_web::test]
async fn identity_provider_claims_are_accepted_when_no_audience_is_configured() {
    let app = spawn_app().await;
    let exp = now() + 600;
    for claims in [
        json!({"sub": "alice", "exp": exp, "aud": "https://api.example"}),
        json!({"sub": "alice", "exp": exp, "aud": ["a", "b"], "iss": "https://idp.example/"}),
        json!({"sub": "alice", "exp": exp, "iat": now(), "azp": "web", "scope": "openid"}),
    ] {
        let (status, body) = app.get("/v1/models", Some(&sign(claims.clone()))).await;
        assert_eq!(status, 200, "{claims}: {body}");
    }
}

#[actix_web::test]
async fn token_not_valid_before_a_future_nbf_gets_401() {
    let app = spawn_app().await;
    let token = sign(json!({"sub": "alice", "exp": now() + 3600, "nbf": now() + 600}));
    let (status, body) = app.get("/v1/models", Some(&token)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let token = sign(json!({"sub": "alice", "exp": now() + 3600, "nbf": now() - 5}));
    let (status, body) = app.get("/v1/models", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
}

#[actix_web::test]
async fn configured_audience_and_issuer_are_required_and_must_match() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.auth.jwt_audience = Some("chatgate".into());
        s.auth.jwt_issuer = Some("https://idp.example/".into());
    })
    .await;
    let exp = now() + 600;
    let iss = "https://idp.example/";
    let cases = [
        (
            json!({"sub": "alice", "exp": exp, "aud": "chatgate", "iss": iss}),
            200,
        ),
        (
            json!({"sub": "alice", "exp": exp, "aud": ["x", "chatgate"], "iss": iss}),
            200,
        ),
        (json!({"sub": "alice", "exp": exp, "iss": iss}), 401),
        (
            json!({"sub": "alice", "exp": exp, "aud": "other", "iss": iss}),
            401,
        ),
        (json!({"sub": "alice", "exp": exp, "aud": "chatgate"}), 401),
        (
            json!({"sub": "alice", "exp": exp, "aud": "chatgate", "iss": "https://evil/"}),
            401,
        ),
    ];
    for (claims, expected) in cases {
        let (status, body) = app.get("/v1/models", Some(&sign(claims.clone()))).await;
        assert_eq!(status, expected, "{claims}: {body}");
        if expected == 401 {
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }
}
