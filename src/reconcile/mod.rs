//! Reconciliation with Learnybox's own API: every `every` (and on `lbx-relay reconcile`), list the
//! API's items of the lookback, match each against the events received (by its id, per source and
//! event type), and turn each missing one into an event through its template — marked
//! `origin = reconcile`, deduplicated, routed and delivered like a webhook. What each item became
//! is kept per day (`GET /api/reconcile`), counted (`lbx_reconcile_items_total`) and alerted.

pub mod api;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{ApiConfig, ApiList};
use crate::event::{new_id, rfc3339, Event};
use crate::ingest::{IngestContext, IngestError, Outcome, Provenance};
use crate::store::reconcile::{Begun, ItemOutcome, ItemVerdict, Run, RunState};
use crate::store::StoreError;
use crate::telemetry::{mask_email, RECONCILE_ITEMS, RECONCILE_RUNS};
use api::{ApiError, LearnyboxApi};

/// Events received this long before the lookback still count as received (clocks and time zones
/// of item dates are not exact).
const MATCH_MARGIN_MS: i64 = 3600 * 1000;
/// A run whose heartbeat is older than this was left by a stopped process and is taken over.
const STALE_RUN: Duration = Duration::from_secs(10 * 60);
/// How often the schedule looks for a due run at most.
const TICK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("source {0:?} has no [sources.{0}.api]: reconciliation is off for it")]
    NotConfigured(String),
    #[error("no source has [sources.NAME.api]: reconciliation is off (see docs/reconcile.md)")]
    NothingConfigured,
    #[error("the store could not be read or written")]
    Store(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error(
        "since {since} reaches past store.retention ({retention}) less one hour: events received that long ago may \
         have been purged, and their items would be recovered a second time"
    )]
    TooFarBack { since: String, retention: String },
}

impl From<IngestError> for ReconcileError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Unavailable(e) => ReconcileError::Store(e),
            IngestError::UnknownSource(s) => ReconcileError::NotConfigured(s),
        }
    }
}

/// How a run is asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Overrides the source's `lookback`.
    pub since: Option<Duration>,
    /// List what would be created; change nothing.
    pub dry_run: bool,
    /// `schedule`, `cli` or `api`.
    pub trigger: &'static str,
}

/// An event a dry run would create (or a real run created).
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub list: String,
    pub item_id: String,
    pub item_date: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The contact's address, masked.
    pub contact: Option<String>,
    /// The event body the routes would receive (dry run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
}

/// An item that cannot become an event, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub list: String,
    pub item_id: String,
    pub reason: String,
}

/// What one run of one source did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub source: String,
    pub dry_run: bool,
    /// The run's record (absent for a dry run).
    pub run: Option<Run>,
    /// Another run of the source was under way: nothing was done.
    pub busy: bool,
    pub listed: u64,
    pub received: u64,
    pub recovered: Vec<Planned>,
    pub missing: Vec<Problem>,
    /// Field names of the first item of each list (no values): what real items look like.
    pub item_fields: HashMap<String, Vec<String>>,
    pub state: RunState,
    pub error: Option<String>,
}

/// Clients of the sources' APIs, kept across runs.
#[derive(Default)]
pub struct Clients(tokio::sync::Mutex<HashMap<String, Arc<LearnyboxApi>>>);

impl Clients {
    async fn for_source(
        &self,
        source: &str,
        api: &ApiConfig,
        clock: &crate::clock::Clock,
    ) -> Result<Arc<LearnyboxApi>, ReconcileError> {
        let mut map = self.0.lock().await;
        if let Some(c) = map.get(source).filter(|c| c.serves(api)) {
            return Ok(c.clone());
        }
        let c = Arc::new(LearnyboxApi::new(api, clock.clone()).map_err(|e| ReconcileError::Client(e.to_string()))?);
        map.insert(source.to_string(), c.clone());
        Ok(c)
    }
}

/// The sources with `[sources.NAME.api]`, or the one named.
pub fn sources(ctx: &IngestContext, only: Option<&str>) -> Result<Vec<String>, ReconcileError> {
    let rt = ctx.runtime.load();
    let all: Vec<String> = rt.config.sources.iter().filter(|(_, s)| s.api.is_some()).map(|(n, _)| n.clone()).collect();
    match only {
        Some(name) if all.iter().any(|s| s == name) => Ok(vec![name.to_string()]),
        Some(name) => Err(ReconcileError::NotConfigured(name.to_string())),
        None if all.is_empty() => Err(ReconcileError::NothingConfigured),
        None => Ok(all),
    }
}

/// `--since` / `?since=`: a duration back from now, at least a minute, at most a year.
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("since {text:?} is not a duration like \"24h\" or \"7days\": {e}"))?;
    if d < Duration::from_secs(60) || d > Duration::from_secs(366 * 86_400) {
        return Err(format!("since {text:?} must be between 1m and 366days"));
    }
    Ok(d)
}

/// Where a run goes on: the list (by position) and the offset in it.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
struct Cursor {
    list: usize,
    offset: u64,
}

/// Runs one reconciliation of `source` (or resumes its interrupted one), until done or `stop`.
pub async fn run_source(
    ctx: &IngestContext,
    clients: &Clients,
    source: &str,
    opts: &RunOptions,
    stop: &CancellationToken,
) -> Result<RunReport, ReconcileError> {
    let rt = ctx.runtime.load();
    let api = rt
        .config
        .source(source)
        .and_then(|s| s.api.clone())
        .ok_or_else(|| ReconcileError::NotConfigured(source.to_string()))?;
    let client = clients.for_source(source, &api, &ctx.clock).await?;
    let now = ctx.clock.now_ms();
    let lookback = opts.since.unwrap_or(api.lookback);
    if lookback + Duration::from_secs(3600) > rt.config.store.retention {
        return Err(ReconcileError::TooFarBack {
            since: humantime::format_duration(lookback).to_string(),
            retention: humantime::format_duration(rt.config.store.retention).to_string(),
        });
    }
    let mut run = Run {
        id: new_id(),
        source: source.to_string(),
        trigger: opts.trigger.to_string(),
        started_at: now,
        heartbeat: now,
        finished_at: None,
        since: now.saturating_sub(lookback.as_millis() as i64),
        until: now.saturating_sub(api.grace.as_millis() as i64),
        state: RunState::Running,
        error: None,
        listed: 0,
        received: 0,
        recovered: 0,
        missing: 0,
        cursor: None,
    };
    let mut report = RunReport {
        source: source.to_string(),
        dry_run: opts.dry_run,
        run: None,
        busy: false,
        listed: 0,
        received: 0,
        recovered: Vec::new(),
        missing: Vec::new(),
        item_fields: HashMap::new(),
        state: RunState::Running,
        error: None,
    };
    if !opts.dry_run {
        match ctx.store.reconcile_begin(run.clone(), now - STALE_RUN.as_millis() as i64).await? {
            Begun::Started(r) => run = r,
            Begun::Resumed(r) => {
                tracing::info!(source, run = %r.id, "resuming an interrupted reconciliation");
                run = r;
            }
            Begun::Busy(r) => {
                report.busy = true;
                report.state = r.state;
                report.run = Some(r);
                return Ok(report);
            }
        }
    }
    let mut cursor: Cursor = run.cursor.as_deref().and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
    let received = received_items(ctx, source, &api, run.since.saturating_sub(MATCH_MARGIN_MS)).await?;
    let mut received = received;
    let window = rt.config.source(source).map(|s| s.dedup_window).unwrap_or(Duration::from_secs(86_400));
    // A recovered item's key outlives every later run that could list it again.
    let dedup_for = window.max(api.lookback + api.every + Duration::from_secs(3600));
    let params: Vec<Vec<(String, String)>> = api.lists.iter().map(|l| query_params(l, run.since, run.until)).collect();

    let mut partial = false;
    'lists: while let Some(list) = api.lists.get(cursor.list) {
        let mut pages = 0;
        loop {
            if stop.is_cancelled() {
                run.state = RunState::Interrupted;
                break 'lists;
            }
            if pages >= api.max_pages {
                partial = true;
                break;
            }
            pages += 1;
            // A shutdown does not wait for a slow page or a backoff: the page is asked again on resume.
            let fetched = tokio::select! {
                biased;
                page = client.page(&list.path, &params[cursor.list], api.page_size, cursor.offset) => page,
                _ = stop.cancelled() => {
                    run.state = RunState::Interrupted;
                    break 'lists;
                }
            };
            let items = match fetched {
                Ok(items) => items,
                Err(e) => {
                    fail(&mut run, &client, &e).await;
                    break 'lists;
                }
            };
            if items.is_empty() {
                break;
            }
            if let Some(Value::Object(first)) = items.first() {
                report.item_fields.entry(list.name.clone()).or_insert_with(|| first.keys().cloned().collect());
            }
            let mut verdicts = Vec::new();
            let mut all_older = true;
            for item in &items {
                let judged = judge(ctx, &rt, source, list, item, &run, &received, opts.dry_run, dedup_for).await?;
                let Some(j) = judged else { continue };
                all_older &= j.older;
                let Some(v) = j.verdict else { continue };
                run.listed += 1;
                metrics::counter!(RECONCILE_ITEMS, "source" => source.to_string(), "outcome" => v.outcome.as_str())
                    .increment(1);
                match v.outcome {
                    ItemOutcome::Received => run.received += 1,
                    ItemOutcome::Recovered => {
                        run.recovered += 1;
                        if let Some(p) = j.planned {
                            if let Some(id) = &v.event_id {
                                received.insert((list.kind.clone(), v.item_id.clone()), (id.clone(), true));
                            }
                            report.recovered.push(p);
                        }
                    }
                    ItemOutcome::Missing => {
                        run.missing += 1;
                        report.missing.push(Problem {
                            list: list.name.clone(),
                            item_id: v.item_id.clone(),
                            reason: v.reason.clone().unwrap_or_default(),
                        });
                    }
                }
                verdicts.push(v);
            }
            cursor.offset += items.len() as u64;
            if !opts.dry_run {
                ctx.store.reconcile_save_items(verdicts).await?;
                run.cursor = serde_json::to_string(&cursor).ok();
                run.heartbeat = ctx.clock.now_ms();
                ctx.store.reconcile_progress(&run).await?;
            }
            if list.newest_first && all_older {
                break;
            }
        }
        cursor = Cursor { list: cursor.list + 1, offset: 0 };
    }
    if run.state == RunState::Running {
        run.state = if partial { RunState::Partial } else { RunState::Done };
        if partial {
            run.error = Some(format!(
                "the page budget (max_pages = {}) ran out before the end of a list: older items were not checked; \
                 raise max_pages or narrow the list with params",
                api.max_pages
            ));
        }
    }
    if run.state != RunState::Interrupted {
        run.finished_at = Some(ctx.clock.now_ms());
        run.cursor = None;
    } else {
        run.cursor = serde_json::to_string(&cursor).ok();
    }
    run.heartbeat = ctx.clock.now_ms();
    if !opts.dry_run {
        ctx.store.reconcile_progress(&run).await?;
        metrics::counter!(RECONCILE_RUNS, "source" => source.to_string(), "outcome" => run.state.as_str()).increment(1);
        signal(ctx, &run, &report);
    }
    tracing::info!(
        source,
        state = run.state.as_str(),
        listed = run.listed,
        received = run.received,
        recovered = run.recovered,
        missing = run.missing,
        dry_run = opts.dry_run,
        error = run.error.as_deref(),
        "reconciliation"
    );
    report.listed = run.listed;
    report.received = run.received;
    report.state = run.state;
    report.error = run.error.clone();
    report.run = (!opts.dry_run).then_some(run);
    Ok(report)
}

async fn fail(run: &mut Run, client: &LearnyboxApi, e: &ApiError) {
    run.state = RunState::Failed;
    run.error = Some(client.mask(e.to_string()).await);
}

/// Tells `[alerts]` about a run that recovered items or could not finish.
fn signal(ctx: &IngestContext, run: &Run, report: &RunReport) {
    if !report.recovered.is_empty() {
        let mut kinds: Vec<String> = report.recovered.iter().map(|p| p.kind.clone()).collect();
        kinds.sort();
        kinds.dedup();
        let dates: Vec<&str> = report.recovered.iter().map(|p| p.item_date.as_str()).collect();
        ctx.signals.signal(crate::signals::Signal::Reconciled {
            source: run.source.clone(),
            recovered: report.recovered.len() as u64,
            kinds,
            first: dates.iter().min().map(|s| s.to_string()).unwrap_or_default(),
            last: dates.iter().max().map(|s| s.to_string()).unwrap_or_default(),
        });
    }
    if matches!(run.state, RunState::Failed | RunState::Partial) || run.missing > 0 {
        let error = run.error.clone().unwrap_or_else(|| {
            format!("{} item(s) could not become events (mapping or template); see GET /api/reconcile", run.missing)
        });
        ctx.signals.signal(crate::signals::Signal::ReconcileFailed { source: run.source.clone(), error });
    }
}

/// What one item came to.
struct Judged {
    /// Its verdict, when it is in the run's window.
    verdict: Option<ItemVerdict>,
    /// The event created (or that a dry run would create).
    planned: Option<Planned>,
    /// Dated before the window (for `newest_first`).
    older: bool,
}

#[allow(clippy::too_many_arguments)]
async fn judge(
    ctx: &IngestContext,
    rt: &crate::compiled::Compiled,
    source: &str,
    list: &ApiList,
    item: &Value,
    run: &Run,
    received: &HashMap<(String, String), (String, bool)>,
    dry_run: bool,
    dedup_for: Duration,
) -> Result<Option<Judged>, ReconcileError> {
    let now = ctx.clock.now_ms();
    let verdict = |item_id: String, at: i64, outcome: ItemOutcome, reason: Option<String>, event_id: Option<String>| {
        ItemVerdict {
            source: source.to_string(),
            list: list.name.clone(),
            item_id,
            day: day_of(at),
            item_at: at,
            outcome,
            reason,
            event_id,
            checked_at: now,
        }
    };
    let missing = |item_id: String, at: i64, reason: String| Judged {
        verdict: Some(verdict(item_id, at, ItemOutcome::Missing, Some(reason), None)),
        planned: None,
        older: false,
    };
    if !item.is_object() {
        return Ok(Some(missing(
            crate::event::content_key(item),
            now,
            "mapping: the item is not a JSON object".into(),
        )));
    }
    // An item is counted on the day Learnybox dated it, even when it cannot become an event; on
    // the day of the run only when it carries no readable date.
    let dated = item.pointer(&list.date).and_then(|v| item_time(v, list.utc_offset));
    let Some(item_id) = item.pointer(&list.id).and_then(crate::event::scalar) else {
        return Ok(Some(missing(
            crate::event::content_key(item),
            dated.unwrap_or(now),
            format!("mapping: no id at {} (set id = \"/…\" in [..api.{}])", list.id, list.name),
        )));
    };
    let Some(at) = dated else {
        return Ok(Some(missing(
            item_id,
            now,
            format!("mapping: no readable date at {} (set date = \"/…\" in [..api.{}])", list.date, list.name),
        )));
    };
    if at < run.since {
        return Ok(Some(Judged { verdict: None, planned: None, older: true }));
    }
    if at > run.until {
        return Ok(Some(Judged { verdict: None, planned: None, older: false }));
    }
    if let Some((event_id, recovered)) = received.get(&(list.kind.clone(), item_id.clone())) {
        let outcome = if *recovered { ItemOutcome::Recovered } else { ItemOutcome::Received };
        return Ok(Some(Judged {
            verdict: Some(verdict(item_id, at, outcome, None, Some(event_id.clone()))),
            planned: None,
            older: false,
        }));
    }
    let context = json!({
        "item": item, "item_id": item_id, "item_date": rfc3339(at), "list": list.name,
        "type": list.kind, "source": source,
    });
    let data = match rt.templates.render_api_item(source, &list.name, &context) {
        Ok(d) => d,
        Err(e) => return Ok(Some(missing(item_id, at, format!("template: {e}")))),
    };
    if list.matched_id(&data).as_deref() != Some(item_id.as_str()) {
        return Ok(Some(missing(
            item_id,
            at,
            format!(
                "template: the event it makes does not carry the item id at any of {} (match), so a webhook for it \
                 could not be recognised",
                list.matches.join(", ")
            ),
        )));
    }
    let contact = crate::email::contact_in(&data).map(mask_email);
    let mut planned = Planned {
        list: list.name.clone(),
        item_id: item_id.clone(),
        item_date: rfc3339(at),
        kind: list.kind.clone(),
        contact,
        event: None,
    };
    if dry_run {
        planned.event = Some(data);
        return Ok(Some(Judged {
            verdict: Some(verdict(item_id, at, ItemOutcome::Recovered, None, None)),
            planned: Some(planned),
            older: false,
        }));
    }
    let event = Event {
        id: new_id(),
        source: source.to_string(),
        kind: list.kind.clone(),
        key: ApiConfig::recovered_key(&list.name, &item_id),
        received_at: now,
        data,
    };
    let event_id = event.id.clone();
    let outcome =
        crate::ingest::store_event(ctx, rt, event, Provenance { origin: Some("reconcile"), dedup_for, alias: None })
            .await?;
    let (event_id, planned) = match outcome {
        Outcome::Stored { .. } | Outcome::Unrouted { .. } => (Some(event_id), Some(planned)),
        // Recovered by an earlier run (or another process) whose event is no longer found here.
        _ => (None, None),
    };
    Ok(Some(Judged {
        verdict: Some(verdict(item_id, at, ItemOutcome::Recovered, None, event_id)),
        planned,
        older: false,
    }))
}

/// `(type, item id)` → (event id, recovered) for every event of `source` received since `since`
/// that carries an id where a list's `match` says.
async fn received_items(
    ctx: &IngestContext,
    source: &str,
    api: &ApiConfig,
    since: i64,
) -> Result<HashMap<(String, String), (String, bool)>, ReconcileError> {
    let mut found = HashMap::new();
    let mut after = None;
    loop {
        let page = ctx.store.events_since(source, since, after.clone(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.received_at, last.id.clone()));
        for e in &page {
            let lists: Vec<&ApiList> = api.lists.iter().filter(|l| l.kind == e.kind).collect();
            if lists.is_empty() {
                continue;
            }
            let Ok(data) = serde_json::from_str::<Value>(&e.payload) else { continue };
            for l in lists {
                if let Some(id) = l.matched_id(&data) {
                    found.insert((e.kind.clone(), id), (e.id.clone(), e.origin.as_deref() == Some("reconcile")));
                }
            }
        }
    }
    Ok(found)
}

/// `params` of a list with the window's placeholders filled in.
fn query_params(list: &ApiList, since: i64, until: i64) -> Vec<(String, String)> {
    let fmt = |ms: i64, with_time: bool| {
        let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            .to_offset(list.utc_offset);
        let f = if with_time {
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")
        } else {
            time::macros::format_description!("[year]-[month]-[day]")
        };
        t.format(&f).unwrap_or_default()
    };
    list.params
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace("{since}", &fmt(since, true))
                .replace("{until}", &fmt(until, true))
                .replace("{since_date}", &fmt(since, false))
                .replace("{until_date}", &fmt(until, false))
                .replace("{since_unix}", &since.div_euclid(1000).to_string())
                .replace("{until_unix}", &until.div_euclid(1000).to_string());
            (k.clone(), v)
        })
        .collect()
}

/// An item's date in Unix ms: RFC 3339; `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DD` at `offset`; Unix
/// seconds or milliseconds (number or digits).
pub fn item_time(v: &Value, offset: time::UtcOffset) -> Option<i64> {
    let from_number = |n: f64| {
        if !n.is_finite() || n <= 0.0 || n >= 1e14 {
            return None;
        }
        Some(if n > 1e11 { n as i64 } else { (n * 1000.0) as i64 })
    };
    match v {
        Value::Number(n) => from_number(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return from_number(s.parse().ok()?);
            }
            use time::format_description::well_known::Rfc3339;
            if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
                return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
            }
            let full = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
            let iso = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            let day = time::macros::format_description!("[year]-[month]-[day]");
            let t = time::PrimitiveDateTime::parse(s, &full)
                .or_else(|_| time::PrimitiveDateTime::parse(s, &iso))
                .ok()
                .or_else(|| time::Date::parse(s, &day).ok().map(|d| d.midnight()))?;
            i64::try_from(t.assume_offset(offset).unix_timestamp_nanos() / 1_000_000).ok()
        }
        _ => None,
    }
}

/// `YYYY-MM-DD` (UTC) of a time in Unix ms.
pub fn day_of(ms: i64) -> String {
    rfc3339(ms).get(..10).unwrap_or_default().to_string()
}

/// Starts due runs of every source with `[sources.NAME.api]` until `stop`: one every `every`
/// (counted from the last run's start), an interrupted one at once.
pub async fn schedule(ctx: Arc<IngestContext>, clients: Arc<Clients>, stop: CancellationToken) {
    loop {
        let due = due_sources(&ctx).await;
        for source in due {
            if stop.is_cancelled() {
                return;
            }
            let opts = RunOptions { since: None, dry_run: false, trigger: "schedule" };
            if let Err(e) = run_source(&ctx, &clients, &source, &opts, &stop).await {
                tracing::error!(source, error = %crate::telemetry::Chain(&e), "reconciliation could not run");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Sources whose next run is due now.
async fn due_sources(ctx: &IngestContext) -> Vec<String> {
    let rt = ctx.runtime.load();
    let configured: Vec<(String, Duration)> =
        rt.config.sources.iter().filter_map(|(n, s)| Some((n.clone(), s.api.as_ref()?.every))).collect();
    if configured.is_empty() {
        return Vec::new();
    }
    let runs = match ctx.store.reconcile_runs(200).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %crate::telemetry::Chain(&e), "reconciliation: cannot read the last runs");
            return Vec::new();
        }
    };
    let now = ctx.clock.now_ms();
    configured
        .into_iter()
        .filter(|(source, every)| {
            let last = runs.iter().filter(|r| &r.source == source).max_by_key(|r| r.started_at);
            match last {
                None => true,
                Some(r) if r.state == RunState::Interrupted => true,
                Some(r) if r.state == RunState::Running => now - r.heartbeat > STALE_RUN.as_millis() as i64,
                Some(r) => now - r.started_at >= every.as_millis() as i64,
            }
        })
        .map(|(s, _)| s)
        .collect()
}

/// `GET /api/reconcile`: per source and day, the items of Learnybox and what became of them; the
/// latest runs.
pub async fn overview(ctx: &IngestContext, days: u32) -> Result<Value, ReconcileError> {
    let rt = ctx.runtime.load();
    let now = ctx.clock.now_ms();
    let since_day = day_of(now - i64::from(days.saturating_sub(1)) * 86_400_000);
    let counts = ctx.store.reconcile_days(since_day).await?;
    let runs = ctx.store.reconcile_runs(50).await?;
    let mut sources = Vec::new();
    for (name, src) in &rt.config.sources {
        let Some(api) = &src.api else { continue };
        let mut by_day: std::collections::BTreeMap<String, DayRow> = std::collections::BTreeMap::new();
        for c in counts.iter().filter(|c| &c.source == name) {
            let row = by_day.entry(c.day.clone()).or_default();
            row.in_learnybox += c.count;
            match c.outcome {
                ItemOutcome::Received => row.received += c.count,
                ItemOutcome::Recovered => row.recovered += c.count,
                ItemOutcome::Missing => {
                    row.missing += c.count;
                    row.missing_reasons.push(json!({"reason": c.reason, "count": c.count}));
                }
            }
        }
        let days: Vec<Value> = by_day
            .into_iter()
            .rev()
            .map(|(day, r)| {
                json!({"day": day, "in_learnybox": r.in_learnybox, "received": r.received, "recovered": r.recovered,
                       "missing": r.missing, "missing_reasons": r.missing_reasons})
            })
            .collect();
        let source_runs: Vec<&Run> = runs.iter().filter(|r| &r.source == name).collect();
        let last = source_runs.first().map(|r| run_json(r));
        let next = source_runs.first().map(|r| rfc3339(r.started_at + api.every.as_millis() as i64));
        sources.push(json!({
            "source": name,
            "lists": api.lists.iter().map(|l| json!({"name": l.name, "path": l.path, "type": l.kind})).collect::<Vec<_>>(),
            "every": humantime::format_duration(api.every).to_string(),
            "lookback": humantime::format_duration(api.lookback).to_string(),
            "last_run": last,
            "next_run_at": next,
            "days": days,
        }));
    }
    Ok(json!({
        "sources": sources,
        "runs": runs.iter().take(20).map(run_json).collect::<Vec<_>>(),
    }))
}

#[derive(Default)]
struct DayRow {
    in_learnybox: u64,
    received: u64,
    recovered: u64,
    missing: u64,
    missing_reasons: Vec<Value>,
}

/// A run as the API shows it (times in RFC 3339).
pub fn run_json(r: &Run) -> Value {
    json!({
        "id": r.id, "source": r.source, "trigger": r.trigger, "state": r.state,
        "started_at": rfc3339(r.started_at), "finished_at": r.finished_at.map(rfc3339),
        "window": {"since": rfc3339(r.since), "until": rfc3339(r.until)},
        "listed": r.listed, "received": r.received, "recovered": r.recovered, "missing": r.missing,
        "error": r.error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_dates_are_read_in_every_plausible_form_and_hostile_ones_are_refused() {
        let utc = time::UtcOffset::UTC;
        let paris = time::UtcOffset::from_hms(1, 0, 0).unwrap();
        let at = 1_764_968_640_000; // 2025-12-05T21:04:00Z
        assert_eq!(item_time(&json!("2025-12-05T21:04:00Z"), paris), Some(at));
        assert_eq!(item_time(&json!("2025-12-05T22:04:00+01:00"), utc), Some(at));
        assert_eq!(item_time(&json!("2025-12-05 22:04:00"), paris), Some(at), "a naive date is at utc_offset");
        assert_eq!(item_time(&json!("2025-12-05 21:04:00"), utc), Some(at));
        assert_eq!(item_time(&json!("2025-12-05T21:04:00"), utc), Some(at));
        assert_eq!(item_time(&json!("2025-12-05"), utc), Some(at - (21 * 60 + 4) * 60_000));
        assert_eq!(item_time(&json!(1_764_968_640), utc), Some(at));
        assert_eq!(item_time(&json!("1764968640"), utc), Some(at));
        assert_eq!(item_time(&json!(at), utc), Some(at));
        for bad in [
            json!("yesterday"),
            json!("2025-13-45 99:00:00"),
            json!(1e300),
            json!(-5),
            json!("99999999999999999999999"),
            json!(null),
            json!({"date": "2025-12-05"}),
            json!(""),
        ] {
            assert_eq!(item_time(&bad, utc), None, "{bad}");
        }
    }

    #[test]
    fn params_get_the_window_in_the_lists_offset() {
        let list = ApiList {
            name: "transactions".into(),
            path: "transactions/".into(),
            id: "/id".into(),
            date: "/date".into(),
            utc_offset: time::UtcOffset::from_hms(1, 0, 0).unwrap(),
            kind: "transaction.created".into(),
            template: None,
            matches: vec!["/id".into()],
            params: [
                ("date_debut".to_string(), "{since_date}".to_string()),
                ("from".into(), "{since} / {until_unix}".into()),
            ]
            .into_iter()
            .collect(),
            newest_first: false,
        };
        let p = query_params(&list, 1_764_968_640_000, 1_765_000_000_000);
        assert!(p.contains(&("date_debut".into(), "2025-12-05".into())), "{p:?}");
        assert!(p.contains(&("from".into(), "2025-12-05 22:04:00 / 1765000000".into())), "{p:?}");
    }
}
