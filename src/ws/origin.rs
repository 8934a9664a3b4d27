//! The origin check both WebSocket handshakes (`/ws`, `/admin/ws`) make before upgrading:
//! a browser sends its page's origin, and a page from elsewhere must not ride on a token the
//! browser holds.

use actix_web::http::header::ORIGIN;
use actix_web::HttpRequest;

use crate::actors::origins::CheckOrigin;
use crate::app_state::AppState;
use crate::domain::UserId;
use crate::error::AppError;

/// Refuses (403) a browser page whose origin may not open WebSockets here, per the `Origins`
/// actor's list; a request without `Origin` or from the server's own origin passes.
pub async fn check_origin(
    req: &HttpRequest,
    state: &AppState,
    user: &UserId,
) -> Result<(), AppError> {
    let origin = req
        .headers()
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let own_origin = {
        let info = req.connection_info();
        format!("{}://{}", info.scheme(), info.host())
    };
    let allowed = state
        .origins
        .send(CheckOrigin {
            origin: origin.clone(),
            own_origin,
        })
        .await
        .map_err(|err| AppError::unavailable_mailbox("origins", err))?;
    if allowed {
        return Ok(());
    }
    log::info!(
        "event=ws_origin_refused path={} user={user} origin={origin:?}",
        req.path()
    );
    Err(AppError::Forbidden(
        "this origin may not open WebSockets here".into(),
    ))
}
