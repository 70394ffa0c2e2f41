//! Erasure (GDPR art. 17): `lbx-relay forget EMAIL` and `DELETE /api/contacts/{email}` remove
//! every stored event of a contact with its deliveries and attempts, and every quarantined body
//! that names the address (in clear, or once decrypted with the keys in force).

use crate::ingest;
use crate::runtime::Runtime;
use crate::store::{Forgotten, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("{0:?} is not an e-mail address")]
    NotAnEmail(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Erases every stored trace of `email` (compared without regard to case); returns the counts.
pub async fn forget(store: &Store, rt: &Runtime, email: &str) -> Result<Forgotten, ForgetError> {
    let email = email.trim().to_lowercase();
    if email.len() < 3 || !email.contains('@') {
        return Err(ForgetError::NotAnEmail(email));
    }
    let mut report = store.forget_contact(&email).await?;
    let mut after = None;
    loop {
        let page = store.list_quarantine(after, 200).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for item in page {
            let names_contact = String::from_utf8_lossy(&item.body).to_lowercase().contains(&email)
                || item.headers.to_lowercase().contains(&email)
                || opened_names(rt, &item, &email);
            if names_contact {
                store.delete_quarantined(item.id).await?;
                report.quarantined += 1;
            }
        }
    }
    tracing::info!(
        events = report.events,
        deliveries = report.deliveries,
        attempts = report.attempts,
        quarantined = report.quarantined,
        contact = %crate::telemetry::mask_email(&email),
        "contact erased"
    );
    Ok(report)
}

/// Whether a quarantined body decrypts, with the keys in force now, to a payload naming `email`.
fn opened_names(rt: &Runtime, item: &crate::store::Quarantined, email: &str) -> bool {
    matches!(
        ingest::open_event(rt, &item.source, &item.body, &item.header_pairs(), item.received_at),
        Ok(Ok(event)) if event.payload().to_lowercase().contains(email)
    )
}
