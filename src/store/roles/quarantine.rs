//! The quarantine as a list: what ingest reprocesses, the console shows and erasure removes.

use crate::store::*;

/// The quarantine as a list: what ingest reprocesses, the console shows and erasure removes.
pub trait QuarantineStore {
    fn list_quarantine(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> impl std::future::Future<Output = Result<Vec<Quarantined>, StoreError>> + Send;

    fn delete_quarantined(&self, id: i64) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    fn update_quarantine_reason(
        &self,
        id: i64,
        reason: String,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl QuarantineStore for Store {
    async fn list_quarantine(&self, after: Option<i64>, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        let mut items = dispatch!(self, s => s.list_quarantine(after, limit).await)?;
        if let Some(c) = &self.cipher {
            for q in &mut items {
                // A body is what a sender sent: one that looks sealed but does not open (planted
                // before encryption was turned on) is kept as it came, not mistaken for ours.
                if let Ok(body) = c.open(QBODY, &q.body) {
                    q.body = body;
                }
                q.headers = self.read_text(QHEADERS, std::mem::take(&mut q.headers));
            }
        }
        Ok(items)
    }

    async fn delete_quarantined(&self, id: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete_quarantined(id).await)
    }

    async fn update_quarantine_reason(&self, id: i64, reason: String) -> Result<(), StoreError> {
        dispatch!(self, s => s.update_quarantine_reason(id, reason).await)
    }
}
