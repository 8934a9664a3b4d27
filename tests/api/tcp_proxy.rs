//! A TCP proxy the test controls, to cut a database (or Redis) off and bring it back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
const UP: u8 = 0;
/// Closes every open connection, refuses new ones: the server is gone and says so (RST/EOF).
const CUT: u8 = 1;
/// Keeps every socket open but forwards nothing, and accepts new ones the same way: a network
/// that silently drops packets, or a host that vanished without closing its sockets. Only a
/// client's own timeouts can tell.
const STALLED: u8 = 2;

pub struct TcpProxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    fault: watch::Sender<u64>,
}

impl TcpProxy {
    /// Listens on a free port and forwards to `target` while up. Runs on its own thread, so
    /// it keeps working whatever the test's runtime does.
    pub fn start(target: SocketAddr) -> TcpProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(UP));
        let (fault, fault_rx) = watch::channel(0u64);
        let accept_mode = mode.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    match accept_mode.load(Ordering::SeqCst) {
                        CUT => {
                            drop(client);
                            continue;
                        }
                        STALLED => {
                            tokio::spawn(hold(client));
                            continue;
                        }
                        _ => {}
                    }
                    let mut fault_rx = fault_rx.clone();
                    // Only faults after this connection opened concern it.
                    fault_rx.borrow_and_update();
                    let mode = accept_mode.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = fault_rx.changed() => {
                                if mode.load(Ordering::SeqCst) == STALLED {
                                    drop(server);
                                    hold(client).await;
                                }
                            }
                        }
                    });
                }
            });
        });
        TcpProxy { addr, mode, fault }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        self.fault.send_modify(|n| *n += 1);
    }

    /// Stops forwarding without closing anything: open connections stay half-open for good
    /// (also after [`restore`](Self::restore)), and new ones are accepted and never answered.
    pub fn stall(&self) {
        self.mode.store(STALLED, Ordering::SeqCst);
        self.fault.send_modify(|n| *n += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.mode.store(UP, Ordering::SeqCst);
    }
}

/// Keeps a client's socket open and swallows what it sends, answering nothing, until the
/// client closes it.
async fn hold(mut client: TcpStream) {
    let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
}

/// A fresh PostgreSQL schema reached through a [`TcpProxy`] the test can cut: the database,
/// the proxy, and the URL that goes through it. Panics without `TEST_POSTGRES_URL`.
pub fn postgres_behind_proxy() -> (crate::helpers::TestDatabase, TcpProxy, String) {
    let base = crate::helpers::require_postgres();
    let database = crate::helpers::TestDatabase::new(crate::helpers::Backend::Postgres);
    let target: std::net::SocketAddr = "127.0.0.1:5432".parse().expect("addr");
    let proxy = TcpProxy::start(target);
    let via_proxy = database
        .url
        .replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1);
    assert_ne!(
        via_proxy, database.url,
        "TEST_POSTGRES_URL must point at 127.0.0.1:5432: {base}"
    );
    (database, proxy, via_proxy)
}

/// `TEST_REDIS_URL`'s server reached through a [`TcpProxy`] the test can cut: the proxy and
/// the URL that goes through it (same database index and credentials). Panics without
/// `TEST_REDIS_URL`.
pub fn redis_behind_proxy() -> (TcpProxy, String) {
    let base = crate::cluster_support::require_redis();
    let client = redis::Client::open(base.as_str()).expect("TEST_REDIS_URL is a Redis URL");
    let redis::ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr().clone() else {
        panic!("TEST_REDIS_URL must be a plain redis://host:port URL: {base}");
    };
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}:{port} of TEST_REDIS_URL"));
    let proxy = TcpProxy::start(target);
    let via_proxy = base.replacen(&format!("{host}:{port}"), &proxy.addr.to_string(), 1);
    assert_ne!(
        via_proxy, base,
        "TEST_REDIS_URL must name its port (redis://{host}:{port}): {base}"
    );
    (proxy, via_proxy)
}
