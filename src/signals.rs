//! What the flow tells those who watch it: ingest, delivery and reconciliation record here what
//! happened (a dead letter, a quarantined body, a field gone absent, a reconciliation's result)
//! and when each source was last heard from; `alerts` and `housekeeping` read it. Neither side
//! imports the other.

use std::collections::HashMap;
use std::sync::Mutex;

/// Signals kept at most between two checks; more are dropped (the counts in metrics stay exact).
const KEPT: usize = 10_000;

/// Something that happened, for the next check.
#[derive(Debug, Clone)]
pub enum Signal {
    DeadLetter {
        route: String,
        error: Option<String>,
        /// The delivery, so the alert points at one to open (`GET /api/events/…` lists it).
        delivery_id: String,
    },
    Quarantined {
        source: String,
        reason: String,
    },
    /// A field a route reads was absent in its `streak` latest events.
    FieldAbsent {
        route: String,
        path: String,
        streak: u64,
        nearest: Option<String>,
    },
    /// A reconciliation run created events for items no webhook brought.
    Reconciled {
        source: String,
        recovered: u64,
        kinds: Vec<String>,
        /// The earliest and latest item dates (RFC 3339).
        first: String,
        last: String,
    },
    /// A reconciliation run failed, stopped at its page budget, or met items it cannot map.
    ReconcileFailed {
        source: String,
        error: String,
    },
}

/// What happened since the last check, and when each source was last heard from.
#[derive(Debug, Default)]
pub struct Signals {
    pending: Mutex<Vec<Signal>>,
    heard: Mutex<HashMap<String, i64>>,
}

impl Signals {
    /// Records `s` for the next check.
    pub fn signal(&self, s: Signal) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < KEPT {
            p.push(s);
        }
    }

    /// Everything recorded since the last call.
    pub fn take(&self) -> Vec<Signal> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records that a body arrived for `source` at `at` (Unix ms).
    pub fn heard(&self, source: &str, at: i64) {
        let mut last = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let e = last.entry(source.to_string()).or_insert(at);
        *e = (*e).max(at);
    }

    /// When each source was last heard from (Unix ms).
    pub fn last_heard(&self) -> HashMap<String, i64> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
