//! The HTTP server: middleware, extractor configs, the route table and socket options.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};

use super::shutdown::http_drain_secs;
use crate::app_state::AppState;
use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::error::AppError;
use crate::http::client_addr::{client_label, TrustedProxies};
use crate::http::{self, guard};

pub(super) fn build_server(
    listener: TcpListener,
    state: web::Data<AppState>,
    jwt: JwtKeys,
    settings: &Settings,
) -> anyhow::Result<Server> {
    let jwt = web::Data::new(jwt);
    let guard = web::Data::new(state.guard.clone());
    let trusted_proxies = web::Data::new(TrustedProxies::new(&settings.server.trusted_proxies));
    let max_body = settings.server.max_frame_bytes;
    let shutdown_secs = settings.server.shutdown_timeout_secs;
    let server = HttpServer::new(move || {
        App::new()
            // Registered first, so it runs inside the access log: refusals are logged too.
            .wrap(middleware::from_fn(guard::guard))
            .wrap(
                // Path only: query strings carry tokens, and headers carry secrets.
                // An upgraded (101) request's time is the WebSocket's lifetime, not latency.
                // `client` is the address per-address limits count (see `client_addr`).
                middleware::Logger::new(
                    "event=http client=%{CLIENT}xi peer=%a method=%{METHOD}xi path=%U \
                     status=%s bytes=%b %{MS}xo=%D",
                )
                .custom_request_replace("CLIENT", |req| client_label(req.request()))
                .custom_request_replace("METHOD", |req| req.method().to_string())
                .custom_response_replace("MS", |res| {
                    let upgraded = res.status() == actix_web::http::StatusCode::SWITCHING_PROTOCOLS;
                    (if upgraded { "lifetime_ms" } else { "ms" }).to_string()
                })
                .log_target("chatgate::access"),
            )
            .app_data(state.clone())
            .app_data(jwt.clone())
            .app_data(guard.clone())
            .app_data(trusted_proxies.clone())
            .app_data(json_config(max_body))
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(query_config())
            .app_data(path_config())
            .configure(http::configure)
    })
    .on_connect(on_connect)
    .disable_signals()
    // A client that closes its connection mid-request is gone: its handler and response
    // stream are dropped at once, which stops the chat and its upstream call, instead of
    // streaming on until a write fails.
    .h1_allow_half_closed(false)
    .shutdown_timeout(http_drain_secs(shutdown_secs))
    .listen(listener)?
    .run();
    Ok(server)
}

/// Kernel send buffer per connection. Linux otherwise grows it up to `tcp_wmem` max (often
/// 4 MiB) for a client that stops reading, which pins memory per stalled socket before any of
/// our own backpressure (the WebSocket backlog limits) can see it. Chat frames are small, so
/// this costs nothing in throughput.
const SOCKET_SEND_BUFFER_BYTES: usize = 128 * 1024;

/// Caps the send buffer and notes the socket's descriptor, so a WebSocket whose client stops
/// reading can be shut down from outside its (then frozen) actor.
fn on_connect(connection: &dyn std::any::Any, extensions: &mut actix_web::dev::Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(err) =
            socket2::SockRef::from(stream).set_send_buffer_size(SOCKET_SEND_BUFFER_BYTES)
        {
            log::debug!("event=socket_option_failed option=SO_SNDBUF error={err}");
        }
        use std::os::fd::AsRawFd;
        extensions.insert(crate::ws::transport::ConnectionFd(stream.as_raw_fd()));
    }
}

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _req| {
            use actix_web::error::JsonPayloadError;
            let app_err = match &err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    AppError::TooLarge(format!("request body is larger than {limit} bytes"))
                }
                JsonPayloadError::ContentType => {
                    AppError::BadRequest("Content-Type must be application/json".into())
                }
                other => AppError::BadRequest(format!("invalid JSON body: {other}")),
            };
            app_err.into()
        })
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _req| AppError::BadRequest(format!("invalid query: {err}")).into())
}

fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|err, _req| AppError::BadRequest(format!("invalid path: {err}")).into())
}
