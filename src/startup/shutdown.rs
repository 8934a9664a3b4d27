//! The graceful shutdown sequence, all within one deadline.

use std::time::Duration;

use actix_web::dev::ServerHandle;

use crate::actors::connections::{CloseAllConnections, GetConnectionCount};
use crate::actors::db_flusher::Shutdown;
use crate::actors::live_feed::{CloseSubscribers, GetFeedStats};
use crate::actors::metrics::GetMetricsSnapshot;
use crate::actors::quota_leases::ReleaseAll;
use crate::actors::session_registry::WriteSessionsNow;
use crate::actors::socket_watchdog::{CloseTarget, ExpectClose};
use crate::app_state::AppState;

/// The part of the shutdown deadline kept for the final flush: a quarter, at most 2 s.
fn flush_reserve(deadline: Duration) -> Duration {
    (deadline / 4).min(Duration::from_secs(2))
}

/// Room left between ending the last replies and actix dropping the connections, for their
/// 503 answers to be written.
const LAST_ANSWERS_MARGIN: Duration = Duration::from_millis(500);

/// When, after shutdown starts, replies still running (whole HTTP replies, which may finish
/// on their own until then) are ended with `unavailable`, and sockets that did not close are
/// cut: before actix's drain ends, so the answers still reach their clients.
fn last_call(deadline_secs: u64) -> Duration {
    let drain = Duration::from_secs(http_drain_secs(deadline_secs));
    drain - LAST_ANSWERS_MARGIN.min(drain / 2)
}

/// Whole seconds actix may drain connections for: the deadline less the flush reserve.
pub(super) fn http_drain_secs(deadline_secs: u64) -> u64 {
    let deadline = Duration::from_secs(deadline_secs);
    (deadline - flush_reserve(deadline)).as_secs()
}

/// Stop accepting; end every streamed reply with `unavailable` and close every WebSocket with
/// 1001, all at once; let in-flight HTTP requests finish until the last call, when whole
/// replies still running end with 503 `unavailable` and sockets still open are cut; then
/// write everything buffered. All within `deadline`: the final flush keeps a reserve of it,
/// and whatever is still open when its phase runs out is named in a warning and left behind.
pub(super) async fn shutdown(state: &AppState, handle: ServerHandle, deadline: Duration) {
    let start = tokio::time::Instant::now();
    let until = start + deadline;
    let close_until = until - flush_reserve(deadline);
    let last_call_at = start + last_call(deadline.as_secs());
    handle.pause().await;
    // Graceful stop starts now, alongside the WebSocket closes: actix lets open connections
    // finish for at most its own drain timeout (set from the same budget at build time), so a
    // socket stuck behind a client that stopped reading cannot stretch shutdown.
    let http_stopped = handle.stop(true);
    state.pipeline.begin_shutdown();
    let (chats, feeds) = futures_util::future::join(
        state.connections.send(CloseAllConnections {
            code: 1001,
            reason: "server shutting down".into(),
        }),
        state.live_feed.send(CloseSubscribers {
            code: 1001,
            reason: "server shutting down".into(),
        }),
    )
    .await;
    let told = chats.unwrap_or(0) + feeds.unwrap_or(0);
    log::info!("event=shutdown_closing_websockets connections={told}");
    // A socket frozen on a client that stopped reading cannot close itself: cut it in time
    // for its session's end to be written with the rest.
    state.watchdog.do_send(ExpectClose {
        target: CloseTarget::All,
        within: last_call_at.saturating_duration_since(tokio::time::Instant::now()),
    });
    let mut whole_replies_running = true;
    loop {
        if whole_replies_running && tokio::time::Instant::now() >= last_call_at {
            state.pipeline.end_all_replies();
            whole_replies_running = false;
        }
        let open = open_sockets(state).await;
        let replies = state.pipeline.in_flight();
        if open == 0 && replies == 0 {
            break;
        }
        if tokio::time::Instant::now() >= close_until {
            // A client that stopped reading can freeze its connection; actix drops it when
            // its drain timeout runs out.
            log::warn!("event=shutdown_deadline_passed what=websockets open={open} replies_in_flight={replies}");
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    let http_left = close_until.saturating_duration_since(tokio::time::Instant::now());
    if tokio::time::timeout(http_left, http_stopped).await.is_err() {
        log::warn!("event=shutdown_deadline_passed what=http_connections");
    }
    // Records of the replies just ended pass through the aggregator, and the ends of sessions
    // through the registry; a round trip to each guarantees their rows reached the flusher's
    // mailbox ahead of its final flush. (A socket detaches its session as it stops, before
    // it leaves the connection count the loop above waited on.) In cluster mode the registry
    // answers once the detached sessions are in Redis, resumable on the other instances.
    let _ = futures_util::future::join(
        state.metrics.send(GetMetricsSnapshot { recent_limit: 0 }),
        state.registry.send(WriteSessionsNow {
            within: Duration::from_secs(1),
        }),
    )
    .await;
    let flush_left = until
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_millis(100));
    // Alongside the final flush: settle consumed quota units and hand free ones back, so
    // other instances may use them.
    let quota_release = tokio::time::timeout(flush_left, state.quota.send(ReleaseAll));
    let quota_release = actix_web::rt::spawn(quota_release);
    match tokio::time::timeout(flush_left, state.flusher.send(Shutdown)).await {
        Ok(Ok(Ok(()))) => log::info!(
            "event=shutdown_flushed elapsed_ms={}",
            start.elapsed().as_millis()
        ),
        Ok(Ok(Err(err))) => log::error!("event=shutdown_flush_failed error={err}"),
        Ok(Err(err)) => log::error!("event=shutdown_flush_failed error={err}"),
        Err(_) => log::warn!("event=shutdown_deadline_passed what=final_flush"),
    }
    match quota_release.await {
        Ok(Ok(Ok(Ok(())))) => log::info!("event=shutdown_quota_released"),
        Ok(Ok(Ok(Err(err)))) => log::warn!("event=shutdown_quota_release_failed error={err}"),
        Ok(Ok(Err(err))) => log::warn!("event=shutdown_quota_release_failed error={err}"),
        Ok(Err(_)) => log::warn!("event=shutdown_deadline_passed what=quota_release"),
        Err(err) => log::warn!("event=shutdown_quota_release_failed error={err}"),
    }
}

/// Chat connections and feed subscribers still open (none when their actors are gone).
async fn open_sockets(state: &AppState) -> usize {
    let (chats, feeds) = futures_util::future::join(
        state.connections.send(GetConnectionCount),
        state.live_feed.send(GetFeedStats),
    )
    .await;
    chats.unwrap_or(0) + feeds.map_or(0, |stats| stats.subscribers)
}
