//! JWT (HS256) identities. Tokens are verified without touching the database: the user row is
//! created by the first chat or WebSocket handshake, where the database is consulted anyway.

use std::future::{ready, Ready};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::UserId;
use crate::error::AppError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Admin,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub role: Role,
}

/// Who made a request, as proven by a valid token.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: UserId,
    pub role: Role,
}

/// Signing and verification keys derived once from the secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

/// Seconds a token's `nbf` may lie ahead of our clock: an identity provider whose clock runs
/// a moment ahead must not see its fresh tokens refused. `exp` gets no such grace.
pub const NBF_LEEWAY_SECS: u64 = 5;

impl JwtKeys {
    /// Keys that accept any `aud` and `iss`.
    pub fn new(secret: &[u8]) -> JwtKeys {
        JwtKeys::expecting(secret, None, None)
    }

    /// Keys that, for each of `audience` and `issuer` that is set (and not empty), accept only
    /// tokens carrying it; when unset, that claim is ignored whatever it holds.
    pub fn expecting(secret: &[u8], audience: Option<&str>, issuer: Option<&str>) -> JwtKeys {
        let audience = audience.filter(|a| !a.is_empty());
        let issuer = issuer.filter(|i| !i.is_empty());
        let mut validation = Validation::new(Algorithm::HS256);
        let mut required = vec!["exp", "sub"];
        // Expiry is honoured to the second: the library subtracts the leeway from `now` and
        // the same amount from `exp`, which cancels out, while `nbf` keeps the leeway.
        validation.leeway = NBF_LEEWAY_SECS;
        validation.reject_tokens_expiring_in_less_than = NBF_LEEWAY_SECS;
        validation.validate_nbf = true;
        // Unchecked, the library refuses every token that carries an `aud` at all.
        validation.validate_aud = audience.is_some();
        if let Some(audience) = audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn mint(&self, sub: &str, role: Role, ttl_secs: u64) -> Result<String, AppError> {
        let claims = Claims {
            sub: sub.to_string(),
            exp: unix_now_secs().saturating_add(ttl_secs),
            role,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AppError::internal)
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AppError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match err.kind() {
                    ErrorKind::ExpiredSignature => "token expired".to_string(),
                    ErrorKind::ImmatureSignature => "token not valid yet (nbf)".to_string(),
                    ErrorKind::InvalidSignature => "token signature does not match".to_string(),
                    ErrorKind::InvalidAudience => "token audience (aud) does not match".to_string(),
                    ErrorKind::InvalidIssuer => "token issuer (iss) does not match".to_string(),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        format!("token lacks the required claim `{claim}`")
                    }
                    _ => "token is malformed or missing required claims".to_string(),
                };
                AppError::Unauthorized(why)
            })?;
        let user = UserId::parse(&data.claims.sub)
            .map_err(|err| AppError::Unauthorized(format!("token claim sub: {err}")))?;
        Ok(Identity {
            user,
            role: data.claims.role,
        })
    }
}

fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The raw token from `Authorization: Bearer …` or, failing that, the `token` query parameter
/// (browsers cannot set headers on a WebSocket handshake).
pub fn token_from_request(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            return Some(token.trim().to_string());
        }
        return None;
    }
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().token)
        .filter(|t| !t.is_empty())
}

pub fn authenticate(req: &HttpRequest) -> Result<Identity, AppError> {
    // Verified once by the guard middleware for this request.
    if let Some(identity) = req.extensions().get::<Identity>() {
        return Ok(identity.clone());
    }
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .ok_or_else(|| AppError::internal("JwtKeys missing from app data"))?;
    let token = token_from_request(req).ok_or_else(|| {
        AppError::Unauthorized(
            "missing token: send `Authorization: Bearer <jwt>` or the `token` query parameter"
                .into(),
        )
    })?;
    keys.verify(&token)
}

/// Extractor for any authenticated caller (user or admin).
pub struct UserIdentity(pub Identity);

/// Extractor that additionally requires `role = admin`.
pub struct AdminIdentity(pub Identity);

impl FromRequest for UserIdentity {
    type Error = AppError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).map(UserIdentity))
    }
}

impl FromRequest for AdminIdentity {
    type Error = AppError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).and_then(|identity| match identity.role {
            Role::Admin => Ok(AdminIdentity(identity)),
            Role::User => Err(AppError::Forbidden(
                "this endpoint needs a token with role admin".into(),
            )),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use actix_web::test::TestRequest;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    #[test]
    fn minted_token_verifies_with_role() {
        let keys = JwtKeys::new(SECRET);
        let token = keys.mint("alice", Role::Admin, 60).expect("mint");
        let identity = keys.verify(&token).expect("verify");
        assert_eq!(identity.user.as_str(), "alice");
        assert_eq!(identity.role, Role::Admin);
    }

    #[test]
    fn other_secret_and_expired_are_unauthorized() {
        let keys = JwtKeys::new(SECRET);
        let other = JwtKeys::new(b"another-secret-another-secret-another");
        let token = other.mint("alice", Role::User, 60).expect("mint");
        assert_eq!(
            keys.verify(&token).map(|_| ()).unwrap_err().code(),
            ErrorCode::Unauthorized
        );

        let claims = Claims {
            sub: "alice".into(),
            exp: unix_now_secs() - 5,
            role: Role::User,
        };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding)
            .expect("encode");
        let err = keys.verify(&expired).map(|_| ()).unwrap_err();
        assert_eq!(err.to_string(), "token expired");
    }

    fn sign(keys: &JwtKeys, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding)
            .expect("encode")
    }

    fn refusal(keys: &JwtKeys, claims: serde_json::Value) -> Option<String> {
        keys.verify(&sign(keys, claims))
            .err()
            .map(|err| err.to_string())
    }

    #[test]
    fn aud_iss_iat_and_unknown_claims_are_ignored_when_not_configured() {
        let keys = JwtKeys::new(SECRET);
        let exp = unix_now_secs() + 60;
        for claims in [
            serde_json::json!({"sub": "alice", "exp": exp, "aud": "some-api"}),
            serde_json::json!({"sub": "alice", "exp": exp, "aud": ["a", "b"], "iss": "idp"}),
            serde_json::json!({"sub": "alice", "exp": exp, "iat": exp + 999, "scope": "x y"}),
        ] {
            assert_eq!(refusal(&keys, claims.clone()), None, "{claims}");
        }
    }

    #[test]
    fn configured_audience_and_issuer_must_match() {
        let keys = JwtKeys::expecting(SECRET, Some("chatgate"), Some("https://idp.test/"));
        let exp = unix_now_secs() + 60;
        let iss = "https://idp.test/";
        let cases = [
            (
                serde_json::json!({"sub": "a", "exp": exp, "aud": "chatgate", "iss": iss}),
                None,
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "aud": ["other", "chatgate"], "iss": iss}),
                None,
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "iss": iss}),
                Some("token lacks the required claim `aud`"),
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "aud": "other", "iss": iss}),
                Some("token audience (aud) does not match"),
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "aud": ["x", "y"], "iss": iss}),
                Some("token audience (aud) does not match"),
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "aud": "chatgate"}),
                Some("token lacks the required claim `iss`"),
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "aud": "chatgate", "iss": "evil"}),
                Some("token issuer (iss) does not match"),
            ),
        ];
        for (claims, expected) in cases {
            assert_eq!(
                refusal(&keys, claims.clone()).as_deref(),
                expected,
                "{claims}"
            );
        }
    }

    #[test]
    fn empty_audience_and_issuer_settings_are_ignored() {
        let keys = JwtKeys::expecting(SECRET, Some(""), Some(""));
        let claims = serde_json::json!({"sub": "a", "exp": unix_now_secs() + 60, "aud": "x"});
        assert_eq!(refusal(&keys, claims), None);
    }

    #[test]
    fn nbf_in_the_future_is_refused_beyond_a_small_leeway() {
        let keys = JwtKeys::new(SECRET);
        let now = unix_now_secs();
        let claims = |nbf: u64| serde_json::json!({"sub": "a", "exp": now + 600, "nbf": nbf});
        assert_eq!(refusal(&keys, claims(now)), None);
        assert_eq!(refusal(&keys, claims(now + 2)), None, "within the leeway");
        assert_eq!(
            refusal(&keys, claims(now + NBF_LEEWAY_SECS + 60)).as_deref(),
            Some("token not valid yet (nbf)")
        );
        let garbage = serde_json::json!({"sub": "a", "exp": now + 600, "nbf": "soon"});
        assert!(refusal(&keys, garbage).is_some());
    }

    #[test]
    fn expiry_has_no_leeway() {
        let keys = JwtKeys::new(SECRET);
        let claims = serde_json::json!({"sub": "a", "exp": unix_now_secs() - 2});
        assert_eq!(refusal(&keys, claims).as_deref(), Some("token expired"));
    }

    #[test]
    fn sub_longer_than_128_is_rejected() {
        let keys = JwtKeys::new(SECRET);
        let token = keys.mint(&"x".repeat(129), Role::User, 60).expect("mint");
        assert!(keys.verify(&token).is_err());
    }

    #[test]
    fn bearer_header_wins_over_query() {
        let req = TestRequest::default()
            .uri("/ws?token=fromquery")
            .insert_header((header::AUTHORIZATION, "Bearer fromheader"))
            .to_http_request();
        assert_eq!(token_from_request(&req).as_deref(), Some("fromheader"));
        let req = TestRequest::default()
            .uri("/ws?token=fromquery")
            .to_http_request();
        assert_eq!(token_from_request(&req).as_deref(), Some("fromquery"));
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Basic abc"))
            .to_http_request();
        assert_eq!(token_from_request(&req), None);
    }
}
