//! What ingest writes: an event with its deliveries, or a body that did not decrypt.

use crate::store::*;

/// What ingest writes: an event with its deliveries, or a body that did not decrypt.
pub trait IngestStore {
    /// Stores the event and its deliveries in one transaction unless its dedup key is live.
    fn ingest(&self, event: NewEvent) -> impl std::future::Future<Output = Result<IngestOutcome, StoreError>> + Send;

    /// Keeps an undecryptable body unless that would cross a bound (then `Full`, nothing written).
    fn quarantine(
        &self,
        item: NewQuarantined,
        limits: QuarantineLimits,
    ) -> impl std::future::Future<Output = Result<QuarantineOutcome, StoreError>> + Send;
}

impl IngestStore for Store {
    async fn ingest(&self, mut event: NewEvent) -> Result<IngestOutcome, StoreError> {
        if let Some(c) = &self.cipher {
            // Every address the payload names is indexed (erasure cannot read sealed payloads),
            // and an ordering key (usually the e-mail) is kept as a keyed hash, never in clear.
            let main = event.email.clone();
            let others: Vec<String> = serde_json::from_str::<serde_json::Value>(&event.payload)
                .map(|v| crate::email::Email::all_in_json(&v))
                .unwrap_or_default()
                .into_iter()
                .filter(|e| main.as_deref() != Some(e.as_str()))
                .filter_map(|e| c.index_values(e.as_str()).into_iter().next())
                .collect();
            event.contacts = (!others.is_empty()).then(|| others.join(" "));
            event.payload = c.seal_text(PAYLOAD, &event.payload);
            event.email = event.email.and_then(|e| c.index_values(&e).into_iter().next());
            for d in &mut event.deliveries {
                d.order_key = d.order_key.take().map(|k| c.order_value(&k));
            }
        }
        dispatch!(self, s => s.ingest(event).await)
    }

    async fn quarantine(
        &self,
        mut item: NewQuarantined,
        limits: QuarantineLimits,
    ) -> Result<QuarantineOutcome, StoreError> {
        if let Some(c) = &self.cipher {
            item.body = c.seal(QBODY, &item.body).into_bytes();
            item.headers = c.seal_text(QHEADERS, &item.headers);
        }
        dispatch!(self, s => s.quarantine(item, limits).await)
    }
}
