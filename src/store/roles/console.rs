//! What the admin API and the console read and change: deliveries, events, attempts, the
//! quarantine, retries.

use crate::store::*;

/// What the admin API and the console read and change: deliveries, events, attempts, the
/// quarantine, retries.
pub trait ConsoleStore {
    fn list_deliveries(
        &self,
        filter: DeliveryFilter,
    ) -> impl std::future::Future<Output = Result<Vec<DeliveryRow>, StoreError>> + Send;

    /// Makes one delivery due at `now` with a fresh schedule, whatever its status: failed
    /// (replay), pending (send now) or delivered (send again, every step anew); `false` when it
    /// does not exist.
    /// The route of delivery `id`, if it exists.
    fn delivery_route(&self, id: &str) -> impl std::future::Future<Output = Result<Option<String>, StoreError>> + Send;

    fn retry_delivery(
        &self,
        id: &str,
        now: i64,
    ) -> impl std::future::Future<Output = Result<Retried, StoreError>> + Send;

    /// Pending deliveries per route.
    fn pending_per_route(&self) -> impl std::future::Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;

    /// Makes every delivery `filter` matches due at `now` with a fresh schedule (delivered ones
    /// send every step again); with `dry_run` only counts them. Returns how many.
    fn retry_matching(
        &self,
        filter: RetryFilter,
        dry_run: bool,
        now: i64,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send;

    /// Stored events matching `filter`, each with its derived status, and how many match.
    fn find_events(
        &self,
        filter: EventFilter,
    ) -> impl std::future::Future<Output = Result<(Vec<StoredEvent>, Matching), StoreError>> + Send;

    /// Stored events, oldest first (or newest first), after the cursor `after` in that order.
    fn list_events(
        &self,
        after: Option<String>,
        limit: u32,
        newest_first: bool,
    ) -> impl std::future::Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send;

    fn event_detail(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<Option<EventDetail>, StoreError>> + Send;

    /// The event types stored, per source (within retention), with their newest payload.
    fn event_types(&self) -> impl std::future::Future<Output = Result<Vec<TypeSeen>, StoreError>> + Send;
}

impl ConsoleStore for Store {
    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        let mut rows = dispatch!(self, s => s.list_deliveries(filter).await)?;
        for r in &mut rows {
            r.last_error = self.read_opt(ERROR, r.last_error.take());
        }
        Ok(rows)
    }

    async fn delivery_route(&self, id: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.delivery_route(id.to_string()).await)
    }

    async fn retry_delivery(&self, id: &str, now: i64) -> Result<Retried, StoreError> {
        dispatch!(self, s => s.retry_one(id.to_string(), now).await)
    }

    async fn pending_per_route(&self) -> Result<Vec<(String, i64)>, StoreError> {
        dispatch!(self, s => s.pending_per_route().await)
    }

    async fn retry_matching(&self, filter: RetryFilter, dry_run: bool, now: i64) -> Result<u64, StoreError> {
        dispatch!(self, s => s.retry_matching(filter, dry_run, now).await)
    }

    async fn find_events(&self, mut filter: EventFilter) -> Result<(Vec<StoredEvent>, Matching), StoreError> {
        let emails = filter.email.take().map(|e| match &self.cipher {
            Some(c) => c.index_values(&e),
            None => vec![e.to_lowercase()],
        });
        // A LIKE pattern's wildcards in the text are taken literally.
        filter.text = filter
            .text
            .take()
            .map(|t| t.trim().to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let sealed = self.cipher.is_some();
        let (mut events, matching) = dispatch!(self, s => s.find_events(filter.clone(), emails.clone(), sealed).await)?;
        for e in &mut events {
            e.payload = self.read_text(PAYLOAD, std::mem::take(&mut e.payload));
        }
        Ok((events, matching))
    }

    async fn list_events(
        &self,
        after: Option<String>,
        limit: u32,
        newest_first: bool,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events = dispatch!(self, s => s.list_events(after, limit, newest_first).await)?;
        for e in &mut events {
            e.payload = self.read_text(PAYLOAD, std::mem::take(&mut e.payload));
        }
        Ok(events)
    }

    async fn event_detail(&self, id: &str) -> Result<Option<EventDetail>, StoreError> {
        let Some(mut d) = dispatch!(self, s => s.event_detail(id).await)? else { return Ok(None) };
        d.event.payload = self.read_text(PAYLOAD, std::mem::take(&mut d.event.payload));
        for r in &mut d.deliveries {
            r.last_error = self.read_opt(ERROR, r.last_error.take());
        }
        for a in &mut d.attempts {
            a.error = self.read_opt(ERROR, a.error.take());
            a.detail = self.open_opt(DETAIL, a.detail.take()).unwrap_or(None);
        }
        Ok(Some(d))
    }

    async fn event_types(&self) -> Result<Vec<TypeSeen>, StoreError> {
        let mut types = dispatch!(self, s => s.event_types().await)?;
        for t in &mut types {
            t.recent_payload = self.read_opt(PAYLOAD, t.recent_payload.take());
        }
        Ok(types)
    }
}
