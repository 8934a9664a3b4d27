//! The single route table, used by `startup` and by the tests.

pub mod admin_sessions;
pub mod admin_users;
pub mod health;
pub mod openai;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(openai::list_models)
        .service(openai::chat_completions)
        .service(admin_users::get_user)
        .service(admin_sessions::session_stats)
        .route("/ws", web::get().to(crate::ws::connection::handshake));
}
