//! Wake-ups: a `LISTEN` connection turns the outbox trigger's notifications into claims.

use std::sync::Arc;

use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{PgPool, RelayStats, NOTIFY_CHANNEL};
use crate::backoff::Backoff;

/// Keeps a `LISTEN` connection (taken out of the pool) and turns notifications into wake-ups;
/// reconnects with back-off. Wakes once after every (re)connect, for rows committed meanwhile.
/// Every wait selects on `token`, so cancelling it (shutdown, or the relay's drop guard) ends
/// the task at once and drops the connection.
pub(super) async fn listen(
    pool: PgPool,
    wake: Arc<Notify>,
    token: CancellationToken,
    backoff: Backoff,
    stats: Arc<watch::Sender<RelayStats>>,
) {
    let set_listening = |on: bool| stats.send_modify(|s| s.listening = on);
    let mut attempt = 0u32;
    while !token.is_cancelled() {
        let conn = tokio::select! {
            () = token.cancelled() => return,
            conn = pool.get() => conn,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, "outbox relay: no connection for LISTEN; retrying");
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(backoff.delay(attempt)) => continue,
                }
            }
        };
        // Never hand a listening connection back to the pool.
        let mut conn = Object::take(conn);
        let listened = tokio::select! {
            () = token.cancelled() => return,
            r = diesel::sql_query(format!("LISTEN {NOTIFY_CHANNEL}")).execute(&mut conn) => r,
        };
        if let Err(e) = listened {
            attempt += 1;
            tracing::warn!(error = %e, "outbox relay: LISTEN failed; retrying");
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(backoff.delay(attempt)) => continue,
            }
        }
        attempt = 0;
        set_listening(true);
        wake.notify_one();
        let mut notifications = std::pin::pin!(conn.notifications_stream());
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                item = notifications.next() => match item {
                    Some(Ok(_)) => wake.notify_one(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "outbox relay: LISTEN connection failed; reconnecting");
                        break;
                    }
                    None => break,
                },
            }
        }
        set_listening(false);
        attempt += 1;
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(backoff.delay(attempt)) => {}
        }
    }
}
