//! What erasing a contact needs: their events, found by whole address, then deleted and scrubbed.

use crate::store::*;

/// What erasing a contact needs: their events, found by whole address, then deleted and scrubbed.
pub trait ErasureStore {
    /// Every stored event that names `email` as a whole address (never a substring): by the
    /// contact index (a keyed hash under every configured key when encrypted), or, in a payload
    /// the store can read, as any string value. Oldest first.
    fn contact_events(
        &self,
        email: &Email,
    ) -> impl std::future::Future<Output = Result<Vec<ContactEvent>, StoreError>> + Send;

    /// Deletes these events with their deliveries and attempts.
    fn delete_events(
        &self,
        ids: Vec<String>,
    ) -> impl std::future::Future<Output = Result<Forgotten, StoreError>> + Send;

    /// After an erasure: SQLite moves its WAL into the file and truncates it, so no copy of the
    /// erased rows stays in the WAL (deleted content is zeroed in the file: `secure_delete`).
    /// PostgreSQL: the rows are gone from every query at once; their dead versions stay in the
    /// table's pages until VACUUM reuses them (docs/security.md).
    fn scrub(&self) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl ErasureStore for Store {
    async fn contact_events(&self, email: &Email) -> Result<Vec<ContactEvent>, StoreError> {
        let index = match &self.cipher {
            Some(c) => c.index_values(email.as_str()),
            None => vec![email.as_str().to_string()],
        };
        let candidates = dispatch!(self, s => s.contact_candidates(ascii_needle(email), index).await)?;
        let mut found = Vec::new();
        for c in candidates {
            let names = c.indexed || {
                let payload = self.read_text(PAYLOAD, c.payload);
                email.is_in_payload(&payload)
            };
            if names {
                found.push(ContactEvent {
                    id: c.id,
                    learnybox_id: c.key,
                    kind: c.kind,
                    received_at: c.received_at,
                    deliveries: c.deliveries,
                    attempts: c.attempts,
                });
            }
        }
        Ok(found)
    }

    async fn delete_events(&self, ids: Vec<String>) -> Result<Forgotten, StoreError> {
        if ids.is_empty() {
            return Ok(Forgotten::default());
        }
        dispatch!(self, s => s.delete_events(ids).await)
    }

    async fn scrub(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.truncate_wal().await,
            Backend::Postgres(_) => Ok(()),
        }
    }
}
