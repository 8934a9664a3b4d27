//! The single route table, used by `startup` and by the tests, and the same list's OpenAPI
//! document (see `openapi` for why both come from one list).

pub mod active_user;
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

use actix_web::dev::ResourceDef;
use actix_web::{web, HttpRequest};

use crate::error::AppError;

/// Expands one list of handlers into the route table (`configure`) and the OpenAPI paths of
/// exactly those handlers (`Routes`). Each handler has an actix route macro (its method and
/// path, written once) and a `#[utoipa::path]` annotation (its documentation); a handler
/// without the annotation does not compile here.
macro_rules! routes {
    ($($($segment:ident)::+),+ $(,)?) => {
        pub fn configure(cfg: &mut web::ServiceConfig) {
            $( cfg.service($($segment)::+); )+
            cfg.app_data(web::Data::new(AllowedMethods::of_routes()))
                .default_service(web::to(fallback));
        }

        /// The operations `configure` registers, one per handler in the list.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($($segment)::+),+))]
        pub struct Routes;
    };
}

routes! {
    dashboard::root,
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

/// The methods each path of the route table serves, read from the document of the same list
/// (`Routes`), so a new handler is listed in `Allow` without another copy of its method.
pub struct AllowedMethods(Vec<(ResourceDef, String)>);

impl AllowedMethods {
    pub fn of_routes() -> AllowedMethods {
        use utoipa::OpenApi;
        let doc = Routes::openapi();
        let entries = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let methods: Vec<&str> = [
                    ("GET", &item.get),
                    ("PUT", &item.put),
                    ("POST", &item.post),
                    ("DELETE", &item.delete),
                    ("OPTIONS", &item.options),
                    ("HEAD", &item.head),
                    ("PATCH", &item.patch),
                    ("TRACE", &item.trace),
                ]
                .into_iter()
                .filter(|(_, operation)| operation.is_some())
                .map(|(method, _)| method)
                .collect();
                (ResourceDef::new(path.as_str()), methods.join(", "))
            })
            .collect();
        AllowedMethods(entries)
    }

    /// The `Allow` value for `path` (percent-decoded, as the router matches), if it is a route.
    pub fn for_path(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(def, _)| def.is_match(path))
            .map(|(_, allow)| allow.as_str())
    }
}

/// No route took the request: 405 with `Allow` for a known path asked with another method,
/// else 404.
async fn fallback(
    req: HttpRequest,
    allowed: web::Data<AllowedMethods>,
) -> Result<actix_web::HttpResponse, AppError> {
    match allowed.for_path(req.match_info().as_str()) {
        Some(allow) => Err(AppError::MethodNotAllowed {
            message: format!(
                "{} does not serve {}; it serves {allow}",
                req.path(),
                req.method()
            ),
            allow: allow.to_string(),
        }),
        None => Err(AppError::NotFound(format!(
            "no route for {} {}",
            req.method(),
            req.path()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_methods_come_from_the_route_list() {
        let allowed = AllowedMethods::of_routes();
        assert_eq!(allowed.for_path("/admin/users/bob"), Some("GET, PUT"));
        assert_eq!(allowed.for_path("/v1/chat/completions"), Some("POST"));
        assert_eq!(allowed.for_path("/healthz"), Some("GET"));
        assert_eq!(allowed.for_path("/admin/users/bob/x"), None);
        assert_eq!(allowed.for_path("/nope"), None);
    }
}
