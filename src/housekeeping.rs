//! Background upkeep beside the workers: the silence alert (no body from a source for
//! `alert_after`), the gauges, and the retention purge of fully delivered events. [`Upkeep`] is
//! what it (and `[alerts]`) reads: the store, the configuration, the sources' silence, the clock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::compiled::{Compiled, LiveConfig};
use crate::signals::Signals;
use crate::store::Store;
use crate::store::UpkeepStore;
use crate::telemetry::{
    DEAD_LETTERS, OLDEST_PENDING_AGE, QUARANTINE_BYTES, QUARANTINE_SIZE, QUEUE_DEPTH, SOURCE_LAST_EVENT, SOURCE_SILENT,
};

/// How often the summary line is said (and once more at shutdown).
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// How often the purge runs.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// What the background checks read, and nothing more.
#[derive(Clone)]
pub struct Upkeep {
    pub(crate) store: Store,
    pub(crate) runtime: LiveConfig,
    pub(crate) silence: Arc<Silence>,
    pub(crate) clock: Clock,
    /// Field coverage, kept in the store so a restart keeps it.
    pub(crate) coverage: Arc<crate::coverage::Coverage>,
}

/// Which sources are silent, from when each was last heard from ([`Signals`]).
#[derive(Debug)]
pub struct Silence {
    signals: Arc<Signals>,
    alerted: Mutex<HashSet<String>>,
    started_at: i64,
}

impl Silence {
    /// Silence counted from `started_at` (Unix ms) for sources not heard from yet.
    pub fn new(started_at: i64, signals: Arc<Signals>) -> Silence {
        Silence { signals, alerted: Mutex::default(), started_at }
    }

    /// Records that a body arrived for `source` at `at` (Unix ms).
    pub fn heard(&self, source: &str, at: i64) {
        self.signals.heard(source, at);
    }

    /// Sources silent for longer than their `alert_after`, now.
    pub fn check(&self, rt: &Compiled, now: i64) -> Vec<String> {
        let last = self.signals.last_heard();
        let mut silent = Vec::new();
        for (name, src) in &rt.config.sources {
            let heard = last.get(name).copied();
            if let Some(at) = heard {
                metrics::gauge!(SOURCE_LAST_EVENT, "source" => name.clone()).set(at as f64 / 1000.0);
            }
            let Some(limit) = src.alert_after else { continue };
            // Before the first event, count from start-up.
            let since = heard.unwrap_or(self.started_at);
            let quiet = now - since > limit.as_millis() as i64;
            metrics::gauge!(SOURCE_SILENT, "source" => name.clone()).set(if quiet { 1.0 } else { 0.0 });
            let Ok(mut alerted) = self.alerted.lock() else { continue };
            if quiet {
                silent.push(name.clone());
                if alerted.insert(name.clone()) {
                    tracing::warn!(
                        source = %name,
                        silent_for = %humantime::format_duration(Duration::from_secs(((now - since) / 1000).max(0) as u64)),
                        alert_after = %humantime::format_duration(limit),
                        "no webhook received for longer than alert_after: check that the Learnybox webhook is still active"
                    );
                }
            } else if alerted.remove(name) {
                tracing::info!(source = %name, "webhooks are arriving again");
            }
        }
        silent
    }
}

/// Refreshes the store-derived gauges.
pub async fn refresh_gauges(upkeep: &Upkeep) {
    if let Ok(g) = upkeep.store.gauges().await {
        metrics::gauge!(QUEUE_DEPTH).set(g.queue_depth as f64);
        metrics::gauge!(QUARANTINE_SIZE).set(g.quarantined as f64);
        metrics::gauge!(QUARANTINE_BYTES).set(g.quarantined_bytes as f64);
        metrics::gauge!(DEAD_LETTERS).set(g.failed as f64);
        let age = g.oldest_pending_at.map(|at| ((upkeep.clock.now_ms() - at).max(0)) as f64 / 1000.0).unwrap_or(0.0);
        metrics::gauge!(OLDEST_PENDING_AGE).set(age);
    }
}

/// Deletes fully delivered events older than `store.retention`.
pub async fn purge(upkeep: &Upkeep) -> Result<u64, crate::store::StoreError> {
    let retention = upkeep.runtime.load().config.store.retention;
    let now = upkeep.clock.now_ms();
    let before = now - retention.as_millis() as i64;
    let n = upkeep.store.purge(before, now).await?;
    // Reconciliation's verdicts and runs are kept as long as events.
    upkeep.store.reconcile_purge(before).await?;
    if n > 0 {
        tracing::info!(purged = n, retention = %humantime::format_duration(retention), "purged delivered events");
    }
    Ok(n)
}

/// Runs until `stop`: silence checks and gauges every tick, the purge every hour.
pub async fn run(upkeep: Upkeep, stop: CancellationToken) {
    // Counts kept by the last run first: events counted from now on add to them.
    match upkeep.store.load_coverage().await {
        Ok(rows) => upkeep.coverage.restore(rows),
        Err(e) => tracing::warn!(error = %crate::telemetry::Chain(&e), "could not read the kept field coverage"),
    }
    // Scanning a large store is not worth delaying readiness for.
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = stop.cancelled() => {
            save_coverage(&upkeep).await;
            summary(&upkeep).await;
            return;
        }
    }
    let sources: Vec<String> = upkeep.runtime.load().config.sources.keys().cloned().collect();
    if let Ok(last) = upkeep.store.last_event_per_source(sources).await {
        for (source, at) in last {
            upkeep.silence.heard(&source, at);
        }
    }
    let mut last_purge: Option<tokio::time::Instant> = None;
    let mut last_summary = tokio::time::Instant::now();
    loop {
        if last_summary.elapsed() >= SUMMARY_EVERY {
            summary(&upkeep).await;
            last_summary = tokio::time::Instant::now();
        }
        save_coverage(&upkeep).await;
        let tick = {
            let rt = upkeep.runtime.load();
            let shortest = rt.config.sources.values().filter_map(|s| s.alert_after).min();
            shortest
                .map(|d| d / 4)
                .unwrap_or(Duration::from_secs(30))
                .clamp(Duration::from_millis(20), Duration::from_secs(30))
        };
        upkeep.silence.check(&upkeep.runtime.load(), upkeep.clock.now_ms());
        refresh_gauges(&upkeep).await;
        if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
            if let Err(e) = purge(&upkeep).await {
                tracing::error!(error = %crate::telemetry::Chain(&e), "retention purge failed");
            }
            last_purge = Some(tokio::time::Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => {
                save_coverage(&upkeep).await;
                summary(&upkeep).await;
                return;
            }
        }
    }
}

/// The `info` line of what happened since the last one, with the queue depth.
async fn summary(upkeep: &Upkeep) {
    let depth = upkeep.store.gauges().await.ok().map(|g| g.queue_depth);
    crate::telemetry::SUMMARY.say(depth);
}

/// Writes the field coverage counted since the last save.
pub async fn save_coverage(upkeep: &Upkeep) {
    if let Some(rows) = upkeep.coverage.take_changes() {
        if let Err(e) = upkeep.store.save_coverage(rows).await {
            upkeep.coverage.unsaved();
            tracing::warn!(error = %crate::telemetry::Chain(&e), "could not keep the field coverage; tried again later");
        }
    }
}
