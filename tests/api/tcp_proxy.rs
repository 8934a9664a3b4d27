//! A TCP proxy the test controls, to cut a database off and bring it back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl TcpProxy {
    /// Listens on a free port and forwards to `target` while up. Runs on its own thread, so
    /// it keeps working whatever the test's runtime does.
    pub fn start(target: SocketAddr) -> TcpProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cut_rx) = watch::channel(0u64);
        let up_flag = up.clone();
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
                    if !up_flag.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut cut_rx = cut_rx.clone();
                    // Only cuts after this connection opened concern it.
                    cut_rx.borrow_and_update();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut_rx.changed() => {}
                        }
                    });
                }
            });
        });
        TcpProxy { addr, up, cut }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
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
