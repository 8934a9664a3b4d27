//! The single route table, used by `startup` and by the tests.

pub mod admin_origins;
pub mod admin_sessions;
pub mod admin_usage;
pub mod admin_users;
pub mod dashboard;
pub mod guard;
pub mod health;
pub mod metrics;
pub mod openai;
pub mod pagination;
pub mod prometheus;
pub mod usage_history;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(dashboard::routes);
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(openai::list_models)
        .service(admin_users::list_users)
        .service(openai::chat_completions)
        .service(admin_users::get_user)
        .service(admin_users::put_user)
        .service(admin_sessions::session_stats)
        .service(admin_sessions::list_sessions)
        .service(admin_sessions::end_session)
        .service(admin_origins::get_origins)
        .service(admin_origins::put_origins)
        .service(usage_history::usage_history)
        .service(admin_usage::start_collection)
        .service(admin_usage::list_runs)
        .service(metrics::admin_metrics)
        .service(metrics::prometheus)
        .route(
            "/admin/ws",
            web::get().to(crate::ws::connection::admin_feed_handshake),
        )
        .route("/ws", web::get().to(crate::ws::connection::handshake));
}
