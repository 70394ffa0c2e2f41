//! Wake-ups between replicas: `LISTEN` on a connection of its own (reconnecting with a backoff),
//! and one `NOTIFY` per burst of committed work that other replicas may claim.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{PgStore, CHANNEL};
use crate::store::StoreError;

impl PgStore {
    /// Calls `wake` whenever any replica commits new or retried deliveries, until `stop`.
    /// Reconnects with a backoff when the listening connection drops.
    pub async fn listen(&self, wake: impl Fn() + Send + 'static, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match self.config.connect(self.tls.clone()).await {
                Ok((client, mut connection)) => {
                    backoff = Duration::from_millis(100);
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx).map(|m| m.map(|r| r.ok())));
                    // The connection must be polled for LISTEN to be sent and answered.
                    let sql = format!("LISTEN {CHANNEL}");
                    let listen = client.batch_execute(&sql);
                    tokio::pin!(listen);
                    let mut listening = false;
                    loop {
                        tokio::select! {
                            r = &mut listen, if !listening => {
                                if let Err(e) = r {
                                    tracing::warn!(error = %crate::telemetry::Chain(&StoreError::from(e)), "postgres: LISTEN failed");
                                    break;
                                }
                                listening = true;
                                wake(); // work may have arrived while we were not listening
                            }
                            m = messages.next() => match m {
                                Some(Some(tokio_postgres::AsyncMessage::Notification(_))) => wake(),
                                Some(Some(_)) => {}
                                // An error ends the connection: polling it again would only repeat it.
                                Some(None) | None => break,
                            },
                            _ = stop.cancelled() => return,
                        }
                    }
                    tracing::warn!("postgres: the notification connection closed; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::Chain(&StoreError::from(e)), "postgres: cannot open the notification connection");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Tells the other replicas about new work with one NOTIFY per burst. NOTIFY inside the ingest
/// transaction would serialize every commit on PostgreSQL's notification-queue lock; here commits
/// stay parallel and a burst of ingests costs one notification. Stops with the pool.
pub(super) async fn announcer(pool: Pool, announce: std::sync::Arc<tokio::sync::Notify>) {
    /// Bursts closer than this share one notification.
    const COALESCE: Duration = Duration::from_millis(5);
    loop {
        announce.notified().await;
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(COALESCE).await;
        match pool.get().await {
            Ok(client) => {
                if let Err(e) = client.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await {
                    tracing::debug!(error = %crate::telemetry::Chain(&StoreError::from(e)), "postgres: NOTIFY failed; replicas fall back to polling");
                }
            }
            Err(e) => {
                tracing::debug!(error = %crate::telemetry::Chain(&StoreError::from(e)), "postgres: NOTIFY skipped")
            }
        }
    }
}
