//! The single route table, used by `startup` and by the tests.

pub mod admin_sessions;
pub mod admin_users;
pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod openai;
pub mod prometheus;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(dashboard::routes);
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(openai::list_models)
        .service(admin_users::get_user)
        .service(admin_sessions::session_stats)
        .service(metrics::admin_metrics)
        .service(metrics::prometheus)
        .route(
            "/admin/ws",
            web::get().to(crate::ws::connection::admin_feed_handshake),
        )
        .route("/ws", web::get().to(crate::ws::connection::handshake));
}
