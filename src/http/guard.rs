//! The one middleware in front of every route: verifies a presented token once (handlers'
//! extractors reuse it), limits each admin's requests to `/admin/*` and `/metrics`, and limits
//! failed token attempts per client address so tokens cannot be guessed cheaply.

use std::sync::Arc;

use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};

use crate::actors::rate_limiter::{Admission, Check, RateLimiter};
pub use crate::app_state::GuardLimiters;
use crate::auth::{token_from_request, JwtKeys, Role};
use crate::error::AppError;
use crate::http::client_addr::client_label;

/// Whether the request goes to a route under the admin limit. Decided on the route the router
/// will pick: its pattern, looked up with the percent-decoded path the router matches on, so
/// `/%61dmin/users` counts like `/admin/users`. The dashboard page itself (`/admin`) needs no
/// token.
fn is_admin_route(req: &ServiceRequest) -> bool {
    let routed_path = req.match_info().as_str();
    match req.request().resource_map().match_pattern(routed_path) {
        Some(pattern) => pattern == "/metrics" || pattern.starts_with("/admin/"),
        None => false,
    }
}

async fn check(
    limiter: &Addr<RateLimiter>,
    key: Arc<str>,
    name: &'static str,
) -> Result<Admission, AppError> {
    limiter
        .send(Check { key })
        .await
        .map_err(|e| AppError::unavailable_mailbox(name, e))
}

pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let (Some(keys), Some(limiters)) = (
        req.app_data::<web::Data<JwtKeys>>().cloned(),
        req.app_data::<web::Data<GuardLimiters>>().cloned(),
    ) else {
        return next.call(req).await;
    };
    let Some(token) = token_from_request(req.request()) else {
        return next.call(req).await;
    };
    match keys.verify(&token) {
        Ok(identity) => {
            if identity.role == Role::Admin && is_admin_route(&req) {
                let key: Arc<str> = Arc::from(identity.user.as_str());
                if let Admission::Limited { retry_after } =
                    check(&limiters.admins, key, "admin_rate_limiter").await?
                {
                    log::warn!(
                        "event=admin_rate_limited sub={} path={}",
                        identity.user,
                        req.path()
                    );
                    return Err(AppError::RateLimited {
                        message: "too many admin requests; slow down".into(),
                        retry_after,
                    }
                    .into());
                }
            }
            req.extensions_mut().insert(identity);
        }
        Err(_) => {
            // Only failures count, so a client with a valid token is never held back by
            // someone else's guessing from the same address (e.g. behind one proxy).
            let client = client_label(req.request());
            if let Admission::Limited { retry_after } = check(
                &limiters.auth_failures,
                Arc::from(client.as_str()),
                "auth_failure_limiter",
            )
            .await?
            {
                log::warn!("event=auth_failures_limited client={client}");
                return Err(AppError::RateLimited {
                    message: "too many failed authentication attempts from this address".into(),
                    retry_after,
                }
                .into());
            }
            // The handler's extractor reports the precise 401.
        }
    }
    next.call(req).await
}
