use chatgate::auth::{JwtKeys, Role};

use crate::helpers::{spawn_app, TEST_SECRET};

fn assert_unauthorized(status: u16, body: &serde_json::Value) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[actix_web::test]
async fn token_minted_by_the_cli_is_accepted() {
    let app = spawn_app().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args(["token", "--sub", "alice", "--ttl", "600"])
        .env("CHATGATE_JWT_SECRET", TEST_SECRET)
        .env_remove("CHATGATE_CONFIG")
        .output()
        .expect("run chatgate token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let (status, body) = app.get("/v1/models", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["id"], "echo");

    let admin = std::process::Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args(["token", "--sub", "root", "--role", "admin"])
        .env("CHATGATE_JWT_SECRET", TEST_SECRET)
        .env_remove("CHATGATE_CONFIG")
        .output()
        .expect("run chatgate token");
    let admin = String::from_utf8(admin.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let (status, body) = app.get("/admin/users/nobody", Some(&admin)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

#[actix_web::test]
async fn bad_tokens_get_401_with_the_json_body() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/models", None).await;
    assert_unauthorized(status, &body);

    let foreign = JwtKeys::new(b"some-other-secret-some-other-secret-42")
        .mint("alice", Role::User, 600)
        .expect("mint");
    let (status, body) = app.get("/v1/models", Some(&foreign)).await;
    assert_unauthorized(status, &body);

    let expired = expired_token();
    let (status, body) = app.get("/v1/models", Some(&expired)).await;
    assert_unauthorized(status, &body);
    assert_eq!(body["error"]["message"], "token expired");

    let (status, body) = app.get("/v1/models", Some("not.a.jwt")).await;
    assert_unauthorized(status, &body);
}

fn expired_token() -> String {
    #[derive(serde::Serialize)]
    struct Claims {
        sub: &'static str,
        exp: u64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: "alice",
            exp: now - 10,
        },
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("encode")
}

#[actix_web::test]
async fn user_token_on_an_admin_route_gets_403() {
    let app = spawn_app().await;
    let (status, body) = app
        .get("/admin/users/alice", Some(&app.user_token("alice")))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = app
        .get("/admin/users/alice", Some(&app.admin_token("root")))
        .await;
    assert_eq!(status, 404);
}
