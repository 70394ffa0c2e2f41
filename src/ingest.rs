//! `accept()`: one webhook body from decryption to a committed event — decrypt (or quarantine),
//! parse, deduplicate, match routes, then store the event and its deliveries in one transaction.
//! The HTTP handler and quarantine reprocessing go through `accept`; reconciliation, which has
//! its events already decrypted, through `store_event`.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::compiled::{Compiled, LiveConfig};
use crate::crypto::{self, DecryptError, Sealed};
use crate::dedup::Dedup;
use crate::delivery::handoff::{Handover, Place};
use crate::delivery::{DeliveryContext, Producer};
use crate::event::{new_id, Event};
use crate::signals::{Signal, Signals};
use crate::store::{
    Claimed, IngestOutcome, Lease, NewDelivery, NewEvent, NewQuarantined, QuarantineLimits, QuarantineOutcome, Store,
    StoreError, StoredEvent, WriteHealth,
};
use crate::store::{IngestStore, QuarantineStore};
use crate::telemetry::LogLimiter;
use crate::telemetry::{capped, mask_email, Counted, EVENTS_RECEIVED, SUMMARY};
use crate::templates::TemplateContext;

/// What ingest shares with the rest of the relay, and nothing more.
pub struct IngestContext {
    pub(crate) store: Store,
    pub(crate) runtime: LiveConfig,
    pub(crate) dedup: Dedup,
    /// Whether event writes fail now (disk full), for `/readyz`.
    pub(crate) write_health: WriteHealth,
    /// Says "the quarantine is full" once a minute at most.
    pub(crate) quarantine_full_log: LogLimiter,
    /// Where quarantined bodies, fields gone absent and arrivals per source are recorded for
    /// `[alerts]` and the silence check.
    pub(crate) signals: Arc<Signals>,
    /// Where stored deliveries go: handed to idle workers, or the workers are woken.
    pub(crate) queue: Producer,
    /// "Now" for arrival times and hand-off leases (the delivery side's clock).
    pub(crate) clock: Clock,
    /// Field coverage of each route on the events it takes.
    pub(crate) coverage: Arc<crate::coverage::Coverage>,
}

impl IngestContext {
    pub fn new(delivery: Arc<DeliveryContext>, coverage: Arc<crate::coverage::Coverage>) -> IngestContext {
        IngestContext {
            store: delivery.store.clone(),
            runtime: delivery.runtime.clone(),
            dedup: Dedup::default(),
            write_health: WriteHealth::default(),
            quarantine_full_log: LogLimiter::every(Duration::from_secs(60)),
            signals: delivery.signals.clone(),
            clock: delivery.clock.clone(),
            coverage,
            queue: Producer::new(delivery),
        }
    }
}

/// A delivery to pass to a worker once its event has committed.
struct Handed {
    place: Place,
    delivery_id: String,
    route: String,
    lease: Lease,
}

impl Handed {
    /// Passes it to the workers (its event has committed), with the event's data as parsed here.
    fn pass_on(self, event: &Event, data: std::sync::Arc<serde_json::Value>) {
        let Handed { place, delivery_id, route, lease } = self;
        let claimed = Claimed {
            delivery_id,
            route,
            lease_token: lease.token,
            tries: 0,
            attempts: 0,
            event: StoredEvent {
                id: event.id.clone(),
                source: event.source.clone(),
                key: event.key.clone(),
                kind: event.kind.clone(),
                status: "routed".into(),
                payload: String::new(),
                received_at: event.received_at,
            },
            steps_state: None,
            keyed: false,
            data: Some(data),
        };
        place.send(Handover { claimed, lease_until: lease.until });
    }
}

/// Leases the deliveries the local workers have room for (unordered ones, of routes open now),
/// to be handed to them straight after the commit instead of being found again by a claim.
fn hand_over(ctx: &IngestContext, deliveries: &mut [NewDelivery]) -> Vec<Handed> {
    let open: Vec<bool> = deliveries.iter().map(|d| d.order_key.is_none() && ctx.queue.is_open(&d.route)).collect();
    let mut places = ctx.queue.reserve(open.iter().filter(|o| **o).count());
    if places.is_empty() {
        return Vec::new();
    }
    let lease = Lease { token: new_id(), until: ctx.queue.lease_until(ctx.clock.now_ms()) };
    let mut handed = Vec::with_capacity(places.len());
    for (d, _) in deliveries.iter_mut().zip(open).filter(|(_, open)| *open) {
        let Some(place) = places.pop() else { break };
        d.lease = Some(lease.clone());
        handed.push(Handed { place, delivery_id: d.id.clone(), route: d.route.clone(), lease: lease.clone() });
    }
    handed
}

/// What happened to an accepted body. The sender sees the same answer for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored {
        event_id: String,
        deliveries: usize,
    },
    Unrouted {
        event_id: String,
    },
    Duplicate,
    Quarantined,
    /// Undecryptable, and the quarantine is at a bound: not kept (answered alike, counted, logged).
    QuarantineDropped,
    /// Its own timestamp is further than the source's `max_age` from now: a replayed capture.
    Stale,
    /// No readable timestamp while the source sets `max_age` (and not `undated = "accept"`).
    Undated,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Stored { .. } => "accepted",
            Outcome::Unrouted { .. } => "unrouted",
            Outcome::Duplicate => "duplicate",
            Outcome::Quarantined => "quarantined",
            Outcome::QuarantineDropped => "quarantine_full",
            Outcome::Stale => "stale",
            Outcome::Undated => "undated",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    #[error("the store could not commit")]
    Unavailable(#[from] StoreError),
}

/// The contact's e-mail address, where Learnybox events usually carry it.
pub fn contact_email(event: &Event) -> Option<&str> {
    crate::email::contact_in(&event.data)
}

/// The value of an `X-…-Iv` header, if any.
pub fn iv_header(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.starts_with("x-") && k.ends_with("-iv")
        })
        .map(|(_, v)| v.as_str())
}

/// Decrypts and parses a body for `source` with the keys of `rt`.
pub fn open_event(
    rt: &Compiled,
    source: &str,
    body: &[u8],
    headers: &[(String, String)],
    received_at: i64,
) -> Result<Result<Event, DecryptError>, IngestError> {
    let (Some(src), Some(cfg), Some(opts)) = (rt.source(source), rt.config.source(source), rt.open_options(source))
    else {
        return Err(IngestError::UnknownSource(source.to_string()));
    };
    let sealed = Sealed { body, iv_header: iv_header(headers) };
    Ok(crypto::open(&sealed, &src.keyring, &opts, &src.hint).map(|opened| {
        tracing::debug!(
            source,
            variant = opened.variant.name(),
            key_form = opened.key_form.map(|k| k.name()),
            "decrypted"
        );
        Event::from_plaintext(
            source,
            opened.plaintext,
            opened.envelope.as_ref(),
            &cfg.event_field,
            &cfg.id_field,
            received_at,
        )
    }))
}

/// Decrypts, parses and stores one body received for `source`.
pub async fn accept(
    ctx: &IngestContext,
    source: &str,
    body: &[u8],
    headers: &[(String, String)],
) -> Result<Outcome, IngestError> {
    let rt = ctx.runtime.load();
    let received_at = ctx.clock.now_ms();
    let result = match open_event(&rt, source, body, headers, received_at)? {
        Ok(event) => match age(&rt, &event) {
            Age::Undated => {
                tracing::warn!(
                    source,
                    event = capped(&event.kind),
                    key = capped(&event.key),
                    "event without a readable timestamp and the source sets max_age: dropped as a possible \
                     replay (set undated = \"accept\" on the source, or timestamp_field, if real events have none)"
                );
                Ok(Outcome::Undated)
            }
            Age::Stale(off) => {
                tracing::warn!(
                    source,
                    event = capped(&event.kind),
                    key = capped(&event.key),
                    off_by_s = off / 1000,
                    "event timestamp outside max_age (a replayed body?); dropped"
                );
                Ok(Outcome::Stale)
            }
            Age::Fresh => accept_event(ctx, &rt, event).await,
        },
        Err(e) => {
            tracing::warn!(source, reason = %e, bytes = body.len(), "body could not be decrypted; quarantined");
            let kept: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .filter(|(k, _)| !crate::secrets::is_credential_header(k))
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            ctx.signals.signal(Signal::Quarantined { source: source.to_string(), reason: e.to_string() });
            let item = NewQuarantined {
                source: source.to_string(),
                received_at,
                headers: serde_json::Value::Object(kept).to_string(),
                body: body.to_vec(),
                reason: e.to_string(),
            };
            let limits = QuarantineLimits {
                max_items: rt.config.quarantine.max_items,
                max_bytes: rt.config.quarantine.max_bytes,
            };
            match ctx.store.quarantine(item, limits).await? {
                QuarantineOutcome::Stored => Ok(Outcome::Quarantined),
                QuarantineOutcome::Full => {
                    // Answered like every other body: a different status would tell a sender which
                    // bodies decrypt. Counted in lbx_events_received_total{outcome="quarantine_full"}.
                    if ctx.quarantine_full_log.should_log(received_at) {
                        tracing::error!(
                            source,
                            max_items = limits.max_items,
                            max_bytes = limits.max_bytes,
                            "the quarantine is full: undecryptable bodies are dropped (answered 200 like every \
                             body); fix the source's secret, then reprocess or purge the quarantine"
                        );
                    }
                    Ok(Outcome::QuarantineDropped)
                }
            }
        }
    };
    ctx.signals.heard(source, received_at);
    match &result {
        Err(IngestError::Unavailable(e)) => ctx.write_health.failed(e),
        Ok(_) => ctx.write_health.succeeded(),
        Err(IngestError::UnknownSource(_)) => {}
    }
    match &result {
        Ok(Outcome::Stored { .. } | Outcome::Unrouted { .. }) => SUMMARY.count(Counted::EventIn),
        Ok(Outcome::Duplicate) => SUMMARY.count(Counted::Duplicate),
        Ok(Outcome::Quarantined | Outcome::QuarantineDropped) => SUMMARY.count(Counted::Quarantined),
        _ => {}
    }
    let label = match &result {
        Ok(o) => o.label(),
        Err(IngestError::Unavailable(_)) => "store_unavailable",
        Err(IngestError::UnknownSource(_)) => "unknown_source",
    };
    metrics::counter!(EVENTS_RECEIVED, "source" => source.to_string(), "outcome" => label).increment(1);
    result
}

/// What the source's `max_age` makes of an event.
enum Age {
    /// Taken in: no `max_age`, or its timestamp is within it.
    Fresh,
    /// Its own timestamp is this many ms from its arrival, beyond `max_age`.
    Stale(i64),
    /// No readable timestamp, and the source does not say `undated = "accept"`.
    Undated,
}

fn age(rt: &Compiled, event: &Event) -> Age {
    let Some(src) = rt.config.source(&event.source) else { return Age::Fresh };
    let Some(max_age) = src.max_age.map(|a| a.as_millis() as i64) else { return Age::Fresh };
    let Some(at) = crate::event::timestamp_ms(&event.data, &src.timestamp_field) else {
        return if src.accept_undated { Age::Fresh } else { Age::Undated };
    };
    let off = event.received_at.saturating_sub(at).saturating_abs();
    if off > max_age {
        Age::Stale(off)
    } else {
        Age::Fresh
    }
}

/// Counts the fields each route that took this stored event reads; a field absent from a route's
/// latest N events is logged and alerted.
fn observe_fields(ctx: &IngestContext, rt: &Compiled, routes: &[String], data: &serde_json::Value) {
    let after = rt.config.alerts.as_ref().map_or(crate::config::DEFAULT_FIELD_ABSENT_AFTER, |a| a.field_absent_after);
    for route in routes {
        let Some(fields) = rt.fields.get(route) else { continue };
        for d in ctx.coverage.observe(route, fields, data, after) {
            tracing::warn!("{}", crate::coverage::drift_text(&d.route, &d.path, d.streak, d.nearest.as_deref()));
            ctx.signals.signal(Signal::FieldAbsent {
                route: d.route,
                path: d.path,
                streak: d.streak,
                nearest: d.nearest,
            });
        }
    }
}

/// Deduplicates, routes and stores an already-parsed event that came by webhook. When the
/// source reconciles with Learnybox's API, a webhook for an item reconciliation has already
/// recovered is a duplicate.
pub async fn accept_event(ctx: &IngestContext, rt: &Compiled, event: Event) -> Result<Outcome, IngestError> {
    let src = rt.config.source(&event.source);
    let window = src.map(|s| s.dedup_window).unwrap_or(Duration::from_secs(86_400));
    let alias = src.and_then(|s| s.api.as_ref()).and_then(|api| api.alias_of(&event.kind, &event.data));
    store_event(ctx, rt, event, Provenance { origin: None, dedup_for: window, alias }).await
}

/// Where a stored event came from, and how long its key keeps copies out.
pub struct Provenance {
    /// `None` for a webhook; `Some("reconcile")` for an event recovered from Learnybox's API.
    pub origin: Option<&'static str>,
    /// How long the event's key makes copies duplicates.
    pub dedup_for: Duration,
    /// A key that, when live, makes this event a duplicate (see `NewEvent::alias`).
    pub alias: Option<String>,
}

/// Deduplicates, routes and stores an event (webhook or recovered).
pub async fn store_event(
    ctx: &IngestContext,
    rt: &Compiled,
    mut event: Event,
    provenance: Provenance,
) -> Result<Outcome, IngestError> {
    let window = provenance.dedup_for;
    let now = event.received_at;
    if ctx.dedup.seen(&event.source, &event.key, now)
        || provenance.alias.as_ref().is_some_and(|alias| ctx.dedup.seen(&event.source, alias, now))
    {
        tracing::debug!(source = %event.source, event = capped(&event.kind), key = capped(&event.key), "duplicate (cache)");
        return Ok(Outcome::Duplicate);
    }
    let matched = rt.routes.matching(&rt.config, &rt.templates, &event);
    for (route, reason) in &matched.skipped {
        tracing::warn!(route = %route, event = capped(&event.kind), %reason, "`when` condition failed; route skipped");
    }
    let mut deliveries: Vec<NewDelivery> = matched
        .routes
        .into_iter()
        .map(|route| {
            let order_key = rt.config.route(&route).filter(|r| r.order_by.is_some()).and_then(|r| {
                let vars = TemplateContext::new(&event, &r.vars, "");
                rt.templates
                    .ordering_key(r, &vars)
                    .inspect_err(
                        |e| tracing::warn!(route = %route, error = %e, "order_by failed to render; sent unordered"),
                    )
                    .ok()
                    .flatten()
            });
            NewDelivery { id: new_id(), route, order_key, lease: None }
        })
        .collect();
    let count = deliveries.len();
    let routed: Vec<String> = deliveries.iter().map(|d| d.route.clone()).collect();
    let contact = contact_email(&event);
    let email = contact.map(str::to_lowercase);
    let payload = event.payload();
    let handed = hand_over(ctx, &mut deliveries);
    let new = NewEvent {
        id: event.id.clone(),
        source: event.source.clone(),
        key: event.key.clone(),
        kind: event.kind.clone(),
        payload,
        received_at: event.received_at,
        email,
        dedup_until: event.received_at.saturating_add(window.as_millis() as i64),
        deliveries,
        origin: provenance.origin,
        alias: provenance.alias,
        contacts: None,
    };
    let outcome = ctx.store.ingest(new).await?;
    ctx.dedup.remember(&event.source, &event.key, window, now);
    // Only for the debug lines below: built when they are written.
    let shown = |email: &str| if rt.config.server.log_pii { email.to_string() } else { mask_email(email) };
    match outcome {
        IngestOutcome::Duplicate => {
            tracing::debug!(source = %event.source, event = capped(&event.kind), key = capped(&event.key), "duplicate");
            Ok(Outcome::Duplicate)
        }
        IngestOutcome::Stored if count == 0 => {
            tracing::debug!(source = %event.source, event = capped(&event.kind), id = %event.id, contact = contact.map(shown), "stored, no route matched");
            Ok(Outcome::Unrouted { event_id: event.id })
        }
        IngestOutcome::Stored => {
            tracing::debug!(source = %event.source, event = capped(&event.kind), id = %event.id, contact = contact.map(shown), deliveries = count, "accepted");
            observe_fields(ctx, rt, &routed, &event.data);
            let all_handed = handed.len() == count;
            if !handed.is_empty() {
                // The last one takes this reference: a worker alone with the data uses it uncopied.
                let data = std::sync::Arc::new(std::mem::take(&mut event.data));
                let mut handed = handed;
                let last = handed.pop();
                for h in handed {
                    h.pass_on(&event, data.clone());
                }
                if let Some(h) = last {
                    h.pass_on(&event, data);
                }
            }
            if !all_handed {
                ctx.queue.wake();
            }
            Ok(Outcome::Stored { event_id: event.id, deliveries: count })
        }
    }
}

/// What became of one quarantined body tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reprocessed1 {
    /// It opened and is now an event (it left the quarantine).
    Stored,
    /// It opened into an event already stored (it left the quarantine).
    Duplicate,
    /// It still does not open, for this reason.
    Still(String),
}

/// Tries one quarantined body again with the keys in force now.
pub async fn reprocess_item(
    ctx: &IngestContext,
    rt: &Compiled,
    item: &crate::store::Quarantined,
) -> Result<Reprocessed1, IngestError> {
    let opened = match open_event(rt, &item.source, &item.body, &item.header_pairs(), item.received_at) {
        Ok(r) => r,
        Err(IngestError::UnknownSource(_)) => Err(DecryptError::NoEnvelope),
        Err(e) => return Err(e),
    };
    match opened {
        Ok(event) => {
            let outcome = accept_event(ctx, rt, event).await?;
            ctx.store.delete_quarantined(item.id).await?;
            Ok(if outcome == Outcome::Duplicate { Reprocessed1::Duplicate } else { Reprocessed1::Stored })
        }
        Err(e) => {
            if e.to_string() != item.reason {
                ctx.store.update_quarantine_reason(item.id, e.to_string()).await?;
            }
            Ok(Reprocessed1::Still(e.to_string()))
        }
    }
}

/// What reprocessing the quarantine did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Reprocessed {
    pub reprocessed: u64,
    pub duplicates: u64,
    pub still_quarantined: u64,
}

/// Tries every quarantined body again with the keys in force now; what opens becomes a normal
/// event (dedup and routing included) and leaves the quarantine.
pub async fn reprocess_quarantine(ctx: &IngestContext) -> Result<Reprocessed, IngestError> {
    let rt = ctx.runtime.load();
    let mut report = Reprocessed::default();
    let mut after = None;
    loop {
        let page = ctx.store.list_quarantine(after, 200).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for item in page {
            match reprocess_item(ctx, &rt, &item).await? {
                Reprocessed1::Stored => report.reprocessed += 1,
                Reprocessed1::Duplicate => report.duplicates += 1,
                Reprocessed1::Still(_) => report.still_quarantined += 1,
            }
        }
    }
    tracing::info!(
        reprocessed = report.reprocessed,
        duplicates = report.duplicates,
        still = report.still_quarantined,
        "quarantine reprocessed"
    );
    Ok(report)
}
