//! The queue the delivery workers take work from: claims, leases, hand-backs and settlements, and
//! the OAuth refresh tokens they keep.

use crate::store::*;

/// The queue the delivery workers take work from: claims, leases, hand-backs and settlements, and
/// the OAuth refresh tokens they keep.
pub trait QueueStore {
    /// Leases up to `limit` deliveries due at `now` (Unix ms) for `lease`, none of `skip_routes`
    /// (paused by their rate limit or concurrency), and of ordered routes only the oldest pending
    /// delivery per key. `now` is passed in, so a test moves time instead of waiting for it.
    fn claim(
        &self,
        limit: usize,
        lease: Duration,
        skip_routes: Vec<String>,
        now: i64,
    ) -> impl std::future::Future<Output = Result<Vec<Claimed>, StoreError>> + Send;

    /// Keeps the answers of a multi-step delivery's finished steps as soon as each step is done,
    /// so a crash mid-attempt does not repeat them. `false` when the lease was lost.
    fn save_steps_state(
        &self,
        delivery_id: &str,
        lease_token: &str,
        state: String,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send;

    /// Keeps a claimed delivery reserved until `until` (Unix ms) while its attempt runs; `false`
    /// when the lease was lost.
    fn extend_lease(
        &self,
        delivery_id: &str,
        lease_token: &str,
        until: i64,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send;

    /// Gives a claimed delivery back, due at `at` (Unix ms), without counting an attempt.
    fn defer(
        &self,
        delivery_id: String,
        lease_token: String,
        at: i64,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send;

    /// Records an attempt and the delivery's next state; `false` when the lease was lost.
    fn settle(&self, settlement: Settlement) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send;

    /// When the next pending delivery becomes due (Unix ms), if any.
    fn next_due(&self) -> impl std::future::Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// The newest refresh token stored for an OAuth app (`OAuthConfig::cache_key`).
    fn oauth_refresh_token(
        &self,
        key: &str,
    ) -> impl std::future::Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Keeps a rotated refresh token, so a restart does not fall back to a revoked one.
    fn save_oauth_refresh_token(
        &self,
        key: &str,
        token: &str,
        now: i64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl QueueStore for Store {
    async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        skip_routes: Vec<String>,
        now: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut claimed = dispatch!(self, s => s.claim(limit, lease, skip_routes, now).await)?;
        if self.cipher.is_some() {
            let mut readable = Vec::with_capacity(claimed.len());
            for mut c in claimed {
                let opened = self
                    .open_text(PAYLOAD, std::mem::take(&mut c.event.payload))
                    .and_then(|p| Ok((p, self.open_opt(STEPS, c.steps_state.take())?)));
                match opened {
                    Ok((payload, steps)) => {
                        c.event.payload = payload;
                        c.steps_state = steps;
                        readable.push(c);
                    }
                    // One unreadable event does not hold up the others: it becomes a dead letter
                    // that says why, and a replay once the key is back in place delivers it.
                    Err(e) => {
                        let error = format!("the stored event cannot be opened with the configured keys: {e}");
                        tracing::error!(delivery = %c.delivery_id, %error, "delivery failed");
                        self.settle(Settlement {
                            delivery_id: c.delivery_id.clone(),
                            lease_token: c.lease_token.clone(),
                            attempt: AttemptRecord {
                                started_at: now,
                                duration_ms: 0,
                                status: None,
                                error: Some(error),
                                detail: None,
                            },
                            next: Next::Failed,
                            steps_state: None,
                            keyed: c.keyed,
                            settled_at: now,
                        })
                        .await?;
                    }
                }
            }
            claimed = readable;
        }
        Ok(claimed)
    }

    async fn save_steps_state(&self, delivery_id: &str, lease_token: &str, state: String) -> Result<bool, StoreError> {
        let state = self.seal(STEPS, state);
        dispatch!(self, s => s.save_steps_state(delivery_id.to_string(), lease_token.to_string(), state).await)
    }

    async fn extend_lease(&self, delivery_id: &str, lease_token: &str, until: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.extend_lease(delivery_id.to_string(), lease_token.to_string(), until).await)
    }

    async fn defer(&self, delivery_id: String, lease_token: String, at: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.defer(delivery_id, lease_token, at).await)
    }

    async fn settle(&self, mut settlement: Settlement) -> Result<bool, StoreError> {
        if let Some(c) = &self.cipher {
            settlement.steps_state = settlement.steps_state.map(|v| c.seal_text(STEPS, &v));
            // A CRM's error text can quote the contact.
            settlement.attempt.error = settlement.attempt.error.map(|v| c.seal_text(ERROR, &v));
            settlement.attempt.detail = settlement.attempt.detail.map(|v| c.seal_text(DETAIL, &v));
        }
        dispatch!(self, s => s.settle(settlement).await)
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.next_due().await)
    }

    async fn oauth_refresh_token(&self, key: &str) -> Result<Option<String>, StoreError> {
        let token = dispatch!(self, s => s.oauth_refresh_token(key.to_string()).await)?;
        self.open_opt(REFRESH, token)
    }

    async fn save_oauth_refresh_token(&self, key: &str, token: &str, now: i64) -> Result<(), StoreError> {
        let token = self.seal(REFRESH, token.to_string());
        dispatch!(self, s => s.save_oauth_refresh_token(key.to_string(), token, now).await)
    }
}
