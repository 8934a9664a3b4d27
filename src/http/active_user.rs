//! The one disabled-user check for user endpoints that do not pass through chat admission
//! (which refuses disabled users in the same statement that takes the quota unit).

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

use crate::app_state::AppState;
use crate::auth::{authenticate, Identity};
use crate::db::queries::users;
use crate::db::DbPool;
use crate::domain::UserId;
use crate::error::AppError;

/// Extractor for an authenticated caller whose user is not disabled (403 `forbidden` if it
/// is). Costs one primary-key read on the blocking pool.
pub struct ActiveUser(pub Identity);

impl FromRequest for ActiveUser {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, AppError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let identity = authenticate(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let identity = identity?;
            let state =
                state.ok_or_else(|| AppError::internal("AppState missing from app data"))?;
            refuse_disabled(&state.db, &identity.user).await?;
            Ok(ActiveUser(identity))
        })
    }
}

/// `forbidden` when `user` has a row saying it is disabled. A user without a row yet is not
/// disabled: rows are created on first use with `disabled = false`.
pub async fn refuse_disabled(db: &DbPool, user: &UserId) -> Result<(), AppError> {
    let key = user.as_str().to_string();
    let row = db.run(move |conn| users::find_user(conn, &key)).await?;
    if row.is_some_and(|row| row.disabled) {
        return Err(AppError::Forbidden("this user is disabled".into()));
    }
    Ok(())
}
