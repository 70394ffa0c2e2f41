//! `accept()`: one webhook body from decryption to a committed event — decrypt (or quarantine),
//! parse, deduplicate, match routes, then store the event and its deliveries in one transaction.
//! The HTTP handler and the CLI call this same function.

use std::time::Duration;

use crate::app::Relay;
use crate::crypto::{self, Sealed};
use crate::event::{new_id, now_ms, Event};
use crate::runtime::Runtime;
use crate::store::{IngestOutcome, NewEvent, NewQuarantined, QuarantineOutcome, StoreError};
use crate::telemetry::EVENTS_RECEIVED;

/// What happened to an accepted body. The sender sees the same answer for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored { event_id: String, deliveries: usize },
    Unrouted { event_id: String },
    Duplicate,
    Quarantined,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Stored { .. } => "accepted",
            Outcome::Unrouted { .. } => "unrouted",
            Outcome::Duplicate => "duplicate",
            Outcome::Quarantined => "quarantined",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    #[error("the quarantine is full")]
    QuarantineFull,
    #[error("the store could not commit: {0}")]
    Unavailable(#[from] StoreError),
}

/// Headers never kept with a quarantined body.
const DROPPED_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// Decrypts, parses and stores one body received for `source`.
pub async fn accept(
    relay: &Relay,
    source: &str,
    body: &[u8],
    headers: &[(String, String)],
) -> Result<Outcome, IngestError> {
    let rt = relay.runtime();
    let (Some(src), Some(src_cfg), Some(opts)) = (rt.source(source), rt.config.source(source), rt.open_options(source))
    else {
        return Err(IngestError::UnknownSource(source.to_string()));
    };
    let received_at = now_ms();
    let iv_header = headers
        .iter()
        .find(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.starts_with("x-") && k.ends_with("-iv")
        })
        .map(|(_, v)| v.as_str());
    let sealed = Sealed { body, iv_header };
    let result = match crypto::open(&sealed, &src.keyring, &opts, &src.hint) {
        Ok(opened) => {
            let event = Event::from_plaintext(
                source,
                opened.plaintext,
                opened.envelope.as_ref(),
                &src_cfg.event_field,
                &src_cfg.id_field,
                received_at,
            );
            tracing::debug!(
                source,
                variant = opened.variant.name(),
                key_form = opened.key_form.map(|k| k.name()),
                "decrypted"
            );
            accept_event(relay, &rt, event).await
        }
        Err(e) => {
            tracing::warn!(source, reason = %e, bytes = body.len(), "body could not be decrypted; quarantined");
            let kept: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .filter(|(k, _)| !DROPPED_HEADERS.contains(&k.to_ascii_lowercase().as_str()))
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let item = NewQuarantined {
                source: source.to_string(),
                received_at,
                headers: serde_json::Value::Object(kept).to_string(),
                body: body.to_vec(),
                reason: e.to_string(),
            };
            match relay.store.quarantine(item, rt.config.quarantine.max_items).await? {
                QuarantineOutcome::Stored => Ok(Outcome::Quarantined),
                QuarantineOutcome::Full => Err(IngestError::QuarantineFull),
            }
        }
    };
    let label = match &result {
        Ok(o) => o.label(),
        Err(IngestError::QuarantineFull) => "quarantine_full",
        Err(IngestError::Unavailable(_)) => "store_unavailable",
        Err(IngestError::UnknownSource(_)) => "unknown_source",
    };
    metrics::counter!(EVENTS_RECEIVED, "source" => source.to_string(), "outcome" => label).increment(1);
    result
}

/// Deduplicates, routes and stores an already-parsed event.
pub async fn accept_event(relay: &Relay, rt: &Runtime, event: Event) -> Result<Outcome, IngestError> {
    let window = rt.config.source(&event.source).map(|s| s.dedup_window).unwrap_or(Duration::from_secs(86_400));
    if relay.dedup.seen(&event.source, &event.key) {
        tracing::info!(source = %event.source, event = %event.kind, key = %event.key, "duplicate (cache)");
        return Ok(Outcome::Duplicate);
    }
    let matched = rt.routes.matching(&rt.config, &rt.templates, &event);
    for (route, reason) in &matched.skipped {
        tracing::warn!(route = %route, event = %event.kind, %reason, "`when` condition failed; route skipped");
    }
    let deliveries: Vec<(String, String)> = matched.routes.into_iter().map(|r| (new_id(), r)).collect();
    let count = deliveries.len();
    let new = NewEvent {
        id: event.id.clone(),
        source: event.source.clone(),
        key: event.key.clone(),
        kind: event.kind.clone(),
        payload: event.payload(),
        received_at: event.received_at,
        dedup_until: event.received_at + window.as_millis() as i64,
        deliveries,
    };
    let outcome = relay.store.ingest(new).await?;
    relay.dedup.remember(&event.source, &event.key, window);
    match outcome {
        IngestOutcome::Duplicate => {
            tracing::info!(source = %event.source, event = %event.kind, key = %event.key, "duplicate");
            Ok(Outcome::Duplicate)
        }
        IngestOutcome::Stored if count == 0 => {
            tracing::info!(source = %event.source, event = %event.kind, id = %event.id, "stored, no route matched");
            Ok(Outcome::Unrouted { event_id: event.id })
        }
        IngestOutcome::Stored => {
            tracing::info!(source = %event.source, event = %event.kind, id = %event.id, deliveries = count, "accepted");
            relay.wake.notify_one();
            Ok(Outcome::Stored { event_id: event.id, deliveries: count })
        }
    }
}
