//! The store's types: what ingest writes (`NewEvent`, `NewDelivery`, `NewQuarantined`), what the
//! queue hands out and takes back (`Claimed`, `Settlement`, `AttemptRecord`, `Next`), what the
//! console lists (`StoredEvent`, `DeliveryRow`, `AttemptRow`, `EventDetail`, filters), and what
//! upkeep and erasure read (`Gauges`, `Counts`, `Forgotten`). Times are Unix ms; the HTTP layer
//! formats them.

use serde::Serialize;

/// An event and the deliveries it fans out to, written together or not at all.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub source: String,
    pub key: String,
    pub kind: String,
    pub payload: String,
    pub received_at: i64,
    /// The contact's e-mail, lower-cased, when the event names one (indexed, for `forget`).
    pub email: Option<String>,
    /// The dedup key is honoured until then (Unix ms).
    pub dedup_until: i64,
    /// One per matched route; empty → the event is stored as `unrouted`.
    pub deliveries: Vec<NewDelivery>,
    /// Where it came from: `None` for a webhook, `Some("reconcile")` for an event recovered from
    /// Learnybox's API.
    pub origin: Option<&'static str>,
    /// A second dedup key that is only checked: a live one makes this a duplicate (a webhook for
    /// a transaction that reconciliation has already recovered).
    pub alias: Option<String>,
    /// With encryption: keyed hashes of every other address the payload names (set by the store).
    pub contacts: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub route: String,
    /// Deliveries of one route sharing this key go out one at a time, in arrival order.
    pub order_key: Option<String>,
    /// Leased from the start, because it is handed straight to a local worker once committed.
    pub lease: Option<Lease>,
}

/// A lease taken when the delivery is stored.
#[derive(Debug, Clone)]
pub struct Lease {
    pub token: String,
    /// Unix ms.
    pub until: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    Stored,
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct NewQuarantined {
    pub source: String,
    pub received_at: i64,
    pub headers: String,
    pub body: Vec<u8>,
    pub reason: String,
}

impl NewQuarantined {
    /// The bytes it takes against `quarantine.max_bytes` (body and headers).
    pub fn size(&self) -> usize {
        self.body.len() + self.headers.len()
    }
}

/// Both bounds of the quarantine; a body that would cross either is not kept.
#[derive(Debug, Clone, Copy)]
pub struct QuarantineLimits {
    pub max_items: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineOutcome {
    Stored,
    Full,
}

/// A stored event as workers and the API see it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub id: String,
    pub source: String,
    pub key: String,
    pub kind: String,
    pub status: String,
    #[serde(skip)]
    pub payload: String,
    pub received_at: i64,
}

/// A delivery a worker holds under lease.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: String,
    pub route: String,
    pub lease_token: String,
    /// Attempts since creation or the last manual retry (the schedule position).
    pub tries: u32,
    pub attempts: u32,
    pub event: StoredEvent,
    /// Answers of the steps already done (multi-step routes), as JSON.
    pub steps_state: Option<String>,
    /// It has an ordering key (`order_by`).
    pub keyed: bool,
    /// The event's data as ingest parsed it, when ingest handed the delivery over (then
    /// `event.payload` is left empty); `None` when claimed from the store.
    pub data: Option<std::sync::Arc<serde_json::Value>>,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: i64,
    pub duration_ms: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The requests as sent and the answers as received (JSON, secrets masked, bodies capped).
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Try again at this time (Unix ms); the attempt used a step of the schedule.
    RetryAt(i64),
    /// The CRM asked to slow down (429): try again at this time without using a step of the
    /// schedule, so rate limiting never turns into a permanent failure.
    ThrottledUntil(i64),
    Failed,
}

impl Next {
    /// The outcome recorded for the attempt that led here.
    pub fn outcome(self) -> AttemptOutcome {
        match self {
            Next::Delivered => AttemptOutcome::Delivered,
            Next::RetryAt(_) => AttemptOutcome::Retry,
            Next::ThrottledUntil(_) => AttemptOutcome::Throttled,
            Next::Failed => AttemptOutcome::Failed,
        }
    }

    pub fn label(self) -> &'static str {
        self.outcome().as_str()
    }

    /// (status, next_attempt_at, schedule steps used) as the stores record them.
    pub fn columns(self) -> (DeliveryStatus, Option<i64>, i32) {
        match self {
            Next::Delivered => (DeliveryStatus::Delivered, None, 1),
            Next::RetryAt(at) => (DeliveryStatus::Pending, Some(at), 1),
            Next::ThrottledUntil(at) => (DeliveryStatus::Pending, Some(at), 0),
            Next::Failed => (DeliveryStatus::Failed, None, 1),
        }
    }
}

/// What one attempt came to, as recorded in `attempts.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; another try is scheduled (a step of the schedule used).
    Retry,
    /// The CRM answered 429; tried again later without using a step.
    Throttled,
    /// Failed for good: a dead letter.
    Failed,
    /// Another worker or replica had taken the delivery over when this attempt was recorded.
    LeaseLost,
    /// A label this version does not know (written by a newer replica): counted nowhere.
    Other,
}

impl AttemptOutcome {
    const KNOWN: [AttemptOutcome; 5] = [
        AttemptOutcome::Delivered,
        AttemptOutcome::Retry,
        AttemptOutcome::Throttled,
        AttemptOutcome::Failed,
        AttemptOutcome::LeaseLost,
    ];

    /// As stored and as the admin API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Throttled => "throttled",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::LeaseLost => "lease_lost",
            AttemptOutcome::Other => "other",
        }
    }

    /// The stored label read back.
    pub fn parse(text: &str) -> AttemptOutcome {
        AttemptOutcome::KNOWN.into_iter().find(|o| o.as_str() == text).unwrap_or(AttemptOutcome::Other)
    }

    /// Whether it counts in a success or failure rate: the CRM answered and the attempt was
    /// settled (throttling and lost leases do not count).
    pub fn is_settled(self) -> bool {
        matches!(self, AttemptOutcome::Delivered | AttemptOutcome::Retry | AttemptOutcome::Failed)
    }

    /// A settled attempt that did not deliver.
    pub fn is_failure(self) -> bool {
        matches!(self, AttemptOutcome::Retry | AttemptOutcome::Failed)
    }
}

/// Where a delivery stands: the `status` column of `deliveries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or leased to a worker making it).
    Pending,
    Delivered,
    /// A dead letter: listed until replayed.
    Failed,
}

/// A status compares equal to its name as stored and shown (`"pending"`, `"failed"`, …).
impl PartialEq<&str> for DeliveryStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<&str> for AttemptOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for DeliveryStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for AttemptOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] = [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Failed];

    /// As stored and as the admin API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone)]
pub struct Settlement {
    pub delivery_id: String,
    pub lease_token: String,
    pub attempt: AttemptRecord,
    pub next: Next,
    /// Answers of the steps done so far, kept so a retry resumes after them.
    pub steps_state: Option<String>,
    /// The delivery has an ordering key: a retry parks the deliveries queued behind it.
    pub keyed: bool,
    /// When the attempt was decided (Unix ms): the delivery's `updated_at`.
    pub settled_at: i64,
}

impl Settlement {
    /// Whether the attempt is kept on its delivery's row (`ok_*`, migration 9) rather than as a
    /// row of `attempts`: the attempt that delivers.
    pub fn kept_on_row(&self) -> bool {
        self.next == Next::Delivered
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeliveryRow {
    pub id: String,
    pub event_id: String,
    pub route: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::event::shown_as_rfc3339::option::serialize")]
    pub next_attempt_at: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub route: Option<String>,
    pub after: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub delivery_id: String,
    pub attempt: u32,
    #[serde(serialize_with = "crate::event::shown_as_rfc3339::serialize")]
    pub started_at: i64,
    pub duration_ms: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
    /// The attempt's requests and answers (JSON), when recorded.
    #[serde(skip)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EventDetail {
    pub event: StoredEvent,
    /// `None` for a webhook, `Some("reconcile")` for an event recovered from Learnybox's API.
    pub origin: Option<String>,
    pub deliveries: Vec<DeliveryRow>,
    pub attempts: Vec<AttemptRow>,
}

/// The contact's name fields the console's search looks at (`data.contact.…`), by prefix.
pub const NAME_FIELDS: &[&str] =
    &["nom", "prenom", "fname", "lname", "first_name", "last_name", "firstname", "lastname", "name"];

/// Which stored events to list (`GET /api/events`); every field narrows, none is required.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// A glob on the event type (`transaction.*`).
    pub kind: Option<String>,
    /// The derived status: `delivered`, `failed`, `pending` or `unrouted`.
    pub status: Option<String>,
    /// Events with a delivery to this route.
    pub route: Option<String>,
    /// The contact's e-mail (any case), matched through the contact index.
    pub email: Option<String>,
    /// The sender's event id (Learnybox's).
    pub key: Option<String>,
    /// Free text, any case, as a prefix: of the type (`contact` finds `contact.*`), of the
    /// contact's e-mail, or of one of its name fields ([`NAME_FIELDS`]). With `encryption_key`
    /// set, payloads and addresses are sealed: only the type is searched.
    pub text: Option<String>,
    /// Received at or after / before (Unix ms).
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Cursor: the relay id of the last item of the previous page.
    pub after: Option<String>,
    pub limit: u32,
    pub newest_first: bool,
}

/// Which deliveries a bulk retry takes; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct RetryFilter {
    pub status: Option<String>,
    pub route: Option<String>,
    /// A glob on the event type.
    pub kind: Option<String>,
    /// Events received at or after / before (Unix ms).
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// How many events match a filter: exact up to [`COUNT_CAP`], else "at least".
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Matching {
    pub total: u64,
    pub exact: bool,
}

/// Counting stops here (a count over millions of rows is not worth its time on a console).
pub const COUNT_CAP: u64 = 10_000;

pub const EVENT_STATUSES: &[&str] = &["delivered", "failed", "pending", "unrouted"];

/// What erasing a contact removed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Forgotten {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
    pub quarantined: u64,
}

/// A stored event that may name a contact, as the backend found it (before the whole-address check).
#[derive(Debug, Clone)]
pub struct ContactCandidate {
    pub id: String,
    pub kind: String,
    pub received_at: i64,
    pub payload: String,
    /// The Learnybox event id.
    pub key: String,
    /// Its contact index holds the address: no need to read the payload.
    pub indexed: bool,
    pub deliveries: u64,
    pub attempts: u64,
}

/// An event type as it really arrived: how often, when, where it went, and its newest payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSeen {
    pub source: String,
    pub kind: String,
    pub count: u64,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Routes its deliveries went to; empty: it matched none (stored `unrouted`).
    pub routes: Vec<String>,
    /// The newest event's payload (decrypted), as stored.
    pub recent_payload: Option<String>,
}

/// What a retry of one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// Due now, with a fresh schedule.
    Yes,
    /// An attempt holds it (leased): left to that attempt, whose settlement would overwrite a retry.
    InFlight,
    /// No such delivery.
    Missing,
}

/// A stored event of a contact, as erasure lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContactEvent {
    pub id: String,
    /// The Learnybox event id.
    pub learnybox_id: String,
    #[serde(rename = "event")]
    pub kind: String,
    pub received_at: i64,
    pub deliveries: u64,
    pub attempts: u64,
}

/// A body that could not be turned into an event.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub id: i64,
    pub source: String,
    pub received_at: i64,
    /// JSON object of the request headers (credentials dropped).
    pub headers: String,
    pub body: Vec<u8>,
    pub reason: String,
}

impl Quarantined {
    /// The kept request headers as (name, value) pairs, as `ingest::open_event` takes them.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&self.headers)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub queue_depth: i64,
    pub quarantined: i64,
    /// Bytes the quarantine holds (bodies and headers).
    pub quarantined_bytes: i64,
    /// Deliveries in `failed` (dead letters).
    pub failed: i64,
    /// When the oldest pending delivery was created (Unix ms).
    pub oldest_pending_at: Option<i64>,
}

/// How one field fared on a route's real events.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub present: u64,
    pub empty: u64,
    pub absent: u64,
    /// Absent in this many of the route's latest events in a row.
    pub absent_streak: u64,
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    #[test]
    fn attempt_outcomes_read_back_as_written_and_an_unknown_label_counts_nowhere() {
        for o in AttemptOutcome::KNOWN {
            assert_eq!(AttemptOutcome::parse(o.as_str()), o);
        }
        for next in [Next::Delivered, Next::RetryAt(1), Next::ThrottledUntil(1), Next::Failed] {
            assert_eq!(AttemptOutcome::parse(next.label()), next.outcome());
        }
        // A label written by a newer replica during a rolling upgrade.
        let newer = AttemptOutcome::parse("skipped");
        assert_eq!(newer, AttemptOutcome::Other);
        assert!(!newer.is_settled() && !newer.is_failure());
        assert!(AttemptOutcome::Retry.is_failure() && AttemptOutcome::Retry.is_settled());
        assert!(!AttemptOutcome::Throttled.is_settled(), "throttling is not a failure of the CRM");
        assert!(!AttemptOutcome::LeaseLost.is_settled());
    }
}
