//! Erasure (GDPR art. 17): `lbx-relay forget EMAIL [--dry-run]` and
//! `DELETE /api/contacts/{email}[?dry_run=true]` find every stored event that names the contact as
//! a whole address (never a substring: erasing `ann@example.org` leaves `joann@example.org`), and
//! every quarantined body that does (in clear, or once decrypted with the keys in force); the dry
//! run lists them, the erasure removes them with their deliveries and attempts.

use serde::Serialize;

use crate::compiled::Compiled;
use crate::email::{Email, EmailError};
use crate::ingest;
use crate::store::ErasureStore;
use crate::store::QuarantineStore;
use crate::store::{ContactEvent, Forgotten, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("not an e-mail address: {0}")]
    NotAnEmail(#[from] EmailError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an erasure of one contact removes.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The stored events that name the contact, oldest first, with their counts of deliveries
    /// and attempts.
    pub events: Vec<ContactEvent>,
    /// Ids of the quarantined bodies that name the contact.
    pub quarantined: Vec<i64>,
}

impl Plan {
    /// The counts the erasure will report.
    pub fn counts(&self) -> Forgotten {
        Forgotten {
            events: self.events.len() as u64,
            deliveries: self.events.iter().map(|e| e.deliveries).sum(),
            attempts: self.events.iter().map(|e| e.attempts).sum(),
            quarantined: self.quarantined.len() as u64,
        }
    }
}

/// Parses the address an operator gave (anything but `local@domain` is refused).
pub fn parse(email: &str) -> Result<Email, ForgetError> {
    Ok(Email::parse(email)?)
}

/// Everything stored that names `email` (nothing is changed).
pub async fn plan(store: &Store, rt: &Compiled, email: &Email) -> Result<Plan, ForgetError> {
    let events = store.contact_events(email).await?;
    let mut quarantined = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_quarantine(after, 200).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for item in page {
            let names_contact = email.is_in_text(&String::from_utf8_lossy(&item.body))
                || email.is_in_text(&item.headers)
                || opened_names(rt, &item, email);
            if names_contact {
                quarantined.push(item.id);
            }
        }
    }
    Ok(Plan { events, quarantined })
}

/// Erases every stored trace of `email`; returns the counts of what was removed.
pub async fn forget(store: &Store, rt: &Compiled, email: &Email) -> Result<Forgotten, ForgetError> {
    let plan = plan(store, rt, email).await?;
    let mut report = store.delete_events(plan.events.into_iter().map(|e| e.id).collect()).await?;
    for id in plan.quarantined {
        store.delete_quarantined(id).await?;
        report.quarantined += 1;
    }
    if report.events + report.quarantined > 0 {
        // Erased means gone from the file and its WAL too, not only from the queries.
        store.scrub().await?;
    }
    tracing::info!(
        events = report.events,
        deliveries = report.deliveries,
        attempts = report.attempts,
        quarantined = report.quarantined,
        contact = %crate::telemetry::mask_email(email.as_str()),
        "contact erased"
    );
    Ok(report)
}

/// Whether a quarantined body decrypts, with the keys in force now, to a payload naming `email`.
fn opened_names(rt: &Compiled, item: &crate::store::Quarantined, email: &Email) -> bool {
    matches!(
        ingest::open_event(rt, &item.source, &item.body, &item.header_pairs(), item.received_at),
        Ok(Ok(event)) if email.is_in_json(&event.data)
    )
}
