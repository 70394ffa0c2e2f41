//! Field coverage on real traffic: for every route, how many of the real events it took had each
//! field its templates read present, empty or absent — counted at ingest, bounded (the fields come
//! from the config), kept in the store so a restart keeps them, shown by `GET /api/routes`, and
//! alerted when a field was absent in every one of a route's last N events: the payload drifted
//! from what the templates expect.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde_json::Value;

use crate::fields::Field;

pub use crate::config::DEFAULT_FIELD_ABSENT_AFTER as DEFAULT_ALERT_AFTER;

pub use crate::store::Counts;

/// A field just found absent in the `streak` latest events of `route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub route: String,
    pub path: String,
    pub streak: u64,
    /// Where the latest event has something like it (`data.data.contact.first_name`), if anywhere.
    pub nearest: Option<String>,
}

/// The counts of every (route, field path), shared by ingest, the admin API and upkeep.
#[derive(Debug, Default)]
pub struct Coverage {
    /// Route → field path → counts: looked up by `&str`, so counting allocates nothing once a
    /// field has been seen.
    counts: Mutex<BTreeMap<String, BTreeMap<String, Counts>>>,
    /// Changed since the last save.
    dirty: AtomicBool,
}

/// Whether a value counts as empty: null, a blank string, an empty array or object.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

impl Coverage {
    /// Counts one event `route` took against its `fields`; returns the fields whose absent streak
    /// just reached `alert_after` (0: never).
    pub fn observe(&self, route: &str, fields: &[Field], data: &Value, alert_after: u64) -> Vec<Drift> {
        let mut drifts = Vec::new();
        if fields.is_empty() {
            return drifts;
        }
        let mut all = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if !all.contains_key(route) {
            all.insert(route.to_string(), BTreeMap::new());
        }
        let Some(counts) = all.get_mut(route) else { return drifts };
        for f in fields {
            // Present when the path or an alternative has a value; empty when one exists, blank.
            let (mut present, mut seen_empty) = (false, false);
            for v in std::iter::once(&f.path).chain(&f.alternatives).filter_map(|p| crate::fields::resolve(data, p)) {
                if is_empty(v) {
                    seen_empty = true;
                } else {
                    present = true;
                    break;
                }
            }
            if !counts.contains_key(&f.path) {
                counts.insert(f.path.clone(), Counts::default());
            }
            let Some(c) = counts.get_mut(&f.path) else { continue };
            if present {
                c.present += 1;
                c.absent_streak = 0;
            } else if seen_empty {
                c.empty += 1;
                c.absent_streak = 0;
            } else {
                c.absent += 1;
                c.absent_streak += 1;
                if alert_after > 0 && c.absent_streak == alert_after {
                    drifts.push(Drift {
                        route: route.to_string(),
                        path: f.path.clone(),
                        streak: c.absent_streak,
                        nearest: crate::fields::nearest(&f.path, data),
                    });
                }
            }
        }
        self.dirty.store(true, Ordering::Relaxed);
        drifts
    }

    /// The counts of `route`'s fields, by path.
    pub fn of_route(&self, route: &str) -> BTreeMap<String, Counts> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(route).cloned().unwrap_or_default()
    }

    /// Everything, when it changed since the last call (for the store), else `None`.
    pub fn take_changes(&self) -> Option<Vec<(String, String, Counts)>> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return None;
        }
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            counts
                .iter()
                .flat_map(|(r, fields)| fields.iter().map(move |(p, c)| (r.clone(), p.clone(), c.clone())))
                .collect(),
        )
    }

    /// Marks the counts as not saved (a save failed): the next save writes them.
    pub fn unsaved(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Adds counts kept by an earlier run (at start); a streak counted since start wins.
    pub fn restore(&self, rows: Vec<(String, String, Counts)>) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (route, path, kept) in rows {
            let c = counts.entry(route).or_default().entry(path).or_default();
            let fresh = c.present + c.empty + c.absent > 0;
            c.present += kept.present;
            c.empty += kept.empty;
            c.absent += kept.absent;
            if !fresh {
                c.absent_streak = kept.absent_streak;
            }
        }
    }
}

/// What the field-absent alert (and its log line) says.
pub fn drift_text(route: &str, path: &str, streak: u64, nearest: Option<&str>) -> String {
    let carry = nearest.map(|n| format!("; the real events carry {n}")).unwrap_or_default();
    format!(
        "route {route}: {path} absent in {streak} of the last {streak} events{carry}. Learnybox's payload differs \
         from what the template reads: fix the template (GET /api/types shows a real payload), reload, replay"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(path: &str, alternatives: &[&str]) -> Field {
        Field { path: path.into(), alternatives: alternatives.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn present_empty_absent_and_a_streak_that_alerts_once() {
        let c = Coverage::default();
        let fields = [field("data.data.contact.prenom", &["data.data.contact.fname"])];
        let with = |v: Value| serde_json::json!({"data": {"contact": v}});
        assert!(c.observe("r", &fields, &with(serde_json::json!({"prenom": "A"})), 3).is_empty());
        assert!(c.observe("r", &fields, &with(serde_json::json!({"fname": "B"})), 3).is_empty(), "an alternative");
        assert!(c.observe("r", &fields, &with(serde_json::json!({"prenom": " "})), 3).is_empty());
        let real = with(serde_json::json!({"first_name": "Zoé", "email": "z@x.y"}));
        assert!(c.observe("r", &fields, &real, 3).is_empty());
        assert!(c.observe("r", &fields, &real, 3).is_empty());
        let drift = c.observe("r", &fields, &real, 3);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].nearest.as_deref(), Some("data.data.contact.{email, first_name}"));
        assert!(c.observe("r", &fields, &real, 3).is_empty(), "said once per streak");
        let counts = &c.of_route("r")["data.data.contact.prenom"];
        assert_eq!(*counts, Counts { present: 2, empty: 1, absent: 4, absent_streak: 4 });
        // Kept and restored: the counts add up, the fresher streak stays.
        let saved = c.take_changes().unwrap();
        assert!(c.take_changes().is_none(), "nothing changed since");
        let again = Coverage::default();
        again.restore(saved.clone());
        again.restore(saved);
        assert_eq!(again.of_route("r")["data.data.contact.prenom"].absent, 8);
    }
}
