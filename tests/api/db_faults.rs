//! PostgreSQL behind a TCP proxy the test cuts: what clients and operators see while the
//! database is away and right after it comes back (issue 13).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{eventually, spawn_with_settings, test_settings, TestApp};
use crate::tcp_proxy::{postgres_behind_proxy, TcpProxy};

async fn proxied_app() -> (TestApp, TcpProxy) {
    let (database, proxy, url) = postgres_behind_proxy();
    let mut settings = test_settings(&url);
    // The contract's default: the probe must not wait for it.
    settings.database.connection_timeout_ms = 5_000;
    (spawn_with_settings(settings, database).await, proxy)
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn readyz_answers_503_within_a_second_during_an_outage() {
    let (app, proxy) = proxied_app().await;
    assert_eq!(app.get("/readyz", None).await.0, 200);
    proxy.cut();
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = app.get("/readyz", None).await;
        let took = started.elapsed();
        assert_eq!(status, 503, "{body}");
        assert!(took < Duration::from_millis(1_300), "/readyz took {took:?}");
    }
    proxy.restore();
    eventually("/readyz is 200 again", Duration::from_secs(10), || async {
        (app.get("/readyz", None).await.0 == 200).then_some(())
    })
    .await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn a_flapped_connection_is_not_handed_out_again() {
    let (app, proxy) = proxied_app().await;
    let admin = app.admin_token("ops");
    let mut resp = app
        .client()
        .put(app.url("/admin/users/bob"))
        .bearer_auth(&admin)
        .send_json(&json!({"disabled": false, "daily_limit": 7}))
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.body().await);
    for round in 0..3 {
        // Fill the pool with idle connections, then kill them all under the pool's feet.
        let pool = app.db.clone();
        actix_web::web::block(move || {
            let held: Vec<_> = (0..8).map(|_| pool.checkout().expect("checkout")).collect();
            drop(held);
        })
        .await
        .expect("blocking pool");
        proxy.cut();
        proxy.restore();
        let (status, body) = app.get("/admin/users/bob", Some(&admin)).await;
        assert_eq!(status, 200, "round {round}, right after the flap: {body}");
        assert_eq!(body["daily_limit"], 7);
    }
}

/// `GET /readyz` over a plain socket: the status code, or 0 when there is no answer.
fn probe(addr: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The real binary against a database that goes away and comes back: the log says so once
/// each way, in one line, instead of a multi-line error per connection attempt.
#[test]
#[ignore = "needs TEST_POSTGRES_URL"]
fn an_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
    let (_database, proxy, url) = postgres_behind_proxy();
    let dir = tempfile::tempdir().expect("dir");
    let mut child = crate::process::serve_command(dir.path())
        .env("DATABASE_URL", &url)
        .env("CHATGATE_DB_CONNECT_TIMEOUT_MS", "600")
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let next_line = |log: &mut Vec<String>, deadline: Instant| -> Option<String> {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = rx.recv_timeout(left).ok()?;
        log.push(line.clone());
        Some(line)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let line = next_line(&mut log, deadline).expect("server logged its address");
        if let Some(addr) = line.split("listening on http://").nth(1) {
            break addr.trim().to_string();
        }
    };
    assert_eq!(probe(&addr), 200);
    proxy.cut();
    // Several probes, each making the pool try (and fail) to connect, over a few seconds.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(4) {
        assert_eq!(probe(&addr), 503);
    }
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe(&addr) != 200 {
        assert!(Instant::now() < deadline, "never ready again");
    }
    // The end of the outage is logged by the pool's thread; wait for that line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.iter().any(|l| l.contains("event=db_outage_ended")) {
        if next_line(&mut log, deadline).is_none() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(line) = rx.try_recv() {
        log.push(line);
    }
    let started: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("event=db_outage_started"))
        .collect();
    let ended: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("event=db_outage_ended"))
        .collect();
    let all = log.join("\n");
    assert_eq!(started.len(), 1, "{all}");
    assert!(started[0].contains("WARN"), "{all}");
    assert_eq!(ended.len(), 1, "{all}");
    assert!(ended[0].contains("INFO"), "{all}");
    assert!(
        !log.iter()
            .any(|l| l.contains("ERROR") && l.contains("r2d2")),
        "no per-attempt r2d2 errors: {all}"
    );
    assert!(
        !log.iter()
            .any(|l| l.starts_with('\t') || l.starts_with("Is the server")),
        "every log entry is one line: {all}"
    );
}
