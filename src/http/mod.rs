//! The single route table, used by `startup` and by the tests, and the same list's OpenAPI
//! document (see `openapi` for why both come from one list).

pub mod admin_origins;
pub mod admin_sessions;
pub mod admin_usage;
pub mod admin_users;
pub mod client_addr;
pub mod dashboard;
pub mod guard;
pub mod health;
pub mod metrics;
pub mod metrics_render;
pub mod openai;
pub mod openapi;
pub mod pagination;
pub mod prometheus;
pub mod usage_history;

use actix_web::web;

/// Expands one list of handlers into the route table (`configure`) and the OpenAPI paths of
/// exactly those handlers (`Routes`). Each handler has an actix route macro (its method and
/// path, written once) and a `#[utoipa::path]` annotation (its documentation); a handler
/// without the annotation does not compile here.
macro_rules! routes {
    ($($($segment:ident)::+),+ $(,)?) => {
        pub fn configure(cfg: &mut web::ServiceConfig) {
            $( cfg.service($($segment)::+); )+
        }

        /// The operations `configure` registers, one per handler in the list.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($($segment)::+),+))]
        pub struct Routes;
    };
}

routes! {
    dashboard::page,
    dashboard::script,
    dashboard::style,
    health::healthz,
    health::readyz,
    openapi::openapi_json,
    openai::list_models,
    admin_users::list_users,
    openai::chat_completions,
    admin_users::get_user,
    admin_users::put_user,
    admin_sessions::session_stats,
    admin_sessions::list_sessions,
    admin_sessions::end_session,
    admin_origins::get_origins,
    admin_origins::put_origins,
    usage_history::usage_history,
    admin_usage::start_collection,
    admin_usage::list_runs,
    metrics::admin_metrics,
    metrics::prometheus,
    crate::ws::admin_feed::admin_feed_handshake,
    crate::ws::chat::handshake::handshake,
}
