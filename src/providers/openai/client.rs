//! The HTTP clients that reach upstreams. awc clients are `!Send` (they pool connections in
//! `Rc`s), so each worker thread keeps its own, one per connect timeout in use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Once;
use std::time::Duration;

use awc::http::header;

thread_local! {
    static CLIENTS: RefCell<HashMap<Duration, awc::Client>> = RefCell::new(HashMap::new());
}

/// Installs ring as the process-wide rustls provider. rustls panics when it has to pick one
/// itself and finds none or several (say, once another dependency enables aws-lc), so this
/// runs before any TLS configuration is built.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if rustls::crypto::ring::default_provider()
            .install_default()
            .is_err()
        {
            log::debug!("event=tls_provider_preinstalled");
        }
    });
}

/// This thread's client for upstreams with this connect timeout.
pub fn for_current_thread(connect_timeout: Duration) -> awc::Client {
    CLIENTS.with(|clients| {
        clients
            .borrow_mut()
            .entry(connect_timeout)
            .or_insert_with(|| build(connect_timeout))
            .clone()
    })
}

fn build(connect_timeout: Duration) -> awc::Client {
    install_crypto_provider();
    // HTTP/1.1 only: every reply in flight has its own connection, so dropping a reply
    // closes exactly that connection and the upstream sees the cancellation at once.
    let connector = awc::Connector::new()
        .max_http_version(awc::http::Version::HTTP_11)
        .timeout(connect_timeout)
        .handshake_timeout(connect_timeout)
        // Concurrency is bounded by rate limits and quotas, not by a hidden queue here.
        .limit(0);
    awc::Client::builder()
        .connector(connector)
        // Deadlines are chatgate's own (first byte, whole reply); awc's would cut streams.
        .disable_timeout()
        .add_default_header((
            header::USER_AGENT,
            concat!("chatgate/", env!("CARGO_PKG_VERSION")),
        ))
        .finish()
}
