//! Logs and metrics: the tracing subscriber (human or JSON lines) and the Prometheus recorder
//! behind `/metrics`, with the metric names SPEC.md promises.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

pub const EVENTS_RECEIVED: &str = "lbx_events_received_total";
pub const DELIVERIES: &str = "lbx_deliveries_total";
pub const DELIVERY_DURATION: &str = "lbx_delivery_duration_seconds";
pub const QUEUE_DEPTH: &str = "lbx_queue_depth";
pub const DELIVERY_ATTEMPTS: &str = "lbx_delivery_attempts_total";
pub const QUARANTINE_SIZE: &str = "lbx_quarantine_size";
pub const QUARANTINE_BYTES: &str = "lbx_quarantine_bytes";
pub const OLDEST_PENDING_AGE: &str = "lbx_oldest_pending_age_seconds";
pub const SOURCE_SILENT: &str = "lbx_source_silent";
pub const SOURCE_LAST_EVENT: &str = "lbx_source_last_event_timestamp_seconds";
pub const DEAD_LETTERS: &str = "lbx_dead_letters";
pub const DEFERRED: &str = "lbx_deliveries_deferred_total";
pub const HOOKS_UNKNOWN: &str = "lbx_hooks_unknown_total";
pub const RECONCILE_ITEMS: &str = "lbx_reconcile_items_total";
pub const PER_IP_REFUSED: &str = "lbx_hooks_refused_per_ip_total";
pub const STORE_BATCH: &str = "lbx_store_batch_seconds";
pub const STORE_BATCH_JOBS: &str = "lbx_store_batch_jobs";
pub const STORE_WAIT: &str = "lbx_store_wait_seconds";
pub const RECONCILE_RUNS: &str = "lbx_reconcile_runs_total";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

use tracing_subscriber::field::MakeExt;

/// Longest a logged field value is; longer ones are cut and marked.
pub const MAX_LOGGED_FIELD: usize = 512;

/// Installs the global tracing subscriber; `RUST_LOG` overrides the default `info` level. The
/// template engine's own logs stay at `warn` whatever `RUST_LOG` says: at debug it prints the data
/// it renders (e-mails, names).
pub fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,actix_server=warn"))
        .add_directive("handlebars=warn".parse().expect("a static directive parses"));
    // Colours only on a terminal: journald, files and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        // Values from senders and CRMs (event types, errors) may hold newlines or escape codes: the
        // text format escapes them so they cannot forge a log line or drive a terminal.
        LogFormat::Pretty => builder
            .compact()
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                    let raw = format!("{value:?}");
                    let text = log_safe(&raw);
                    if field.name() == "message" {
                        write!(w, "{text}")
                    } else {
                        write!(w, "{}={text}", field.name())
                    }
                })
                .delimited(" "),
            )
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// At most [`MAX_LOGGED_FIELD`] bytes of a sender's value (an event type, an id), cut on a
/// character boundary, for fields logged in every format.
pub fn capped(value: &str) -> &str {
    if value.len() <= MAX_LOGGED_FIELD {
        return value;
    }
    let mut end = MAX_LOGGED_FIELD;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// A value as one log line can hold it: control characters escaped (`\n`, `\u{1b}`), at most
/// [`MAX_LOGGED_FIELD`] characters.
pub fn log_safe(value: &str) -> std::borrow::Cow<'_, str> {
    // Nearly every value is short and plain: no copy then.
    if value.len() <= MAX_LOGGED_FIELD && !value.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(MAX_LOGGED_FIELD + 16));
    for (i, c) in value.chars().enumerate() {
        if i == MAX_LOGGED_FIELD {
            out.push_str("…(cut)");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(DELIVERY_DURATION.to_string()),
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )
            .expect("static bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(STORE_BATCH.to_string()),
                &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
            )
            .expect("static bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(STORE_WAIT.to_string()),
                &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
            )
            .expect("static bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(STORE_BATCH_JOBS.to_string()),
                &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1024.0],
            )
            .expect("static bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist (a host program); ours still renders what it records.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(EVENTS_RECEIVED, "Webhook requests received, by source and outcome");
    metrics::describe_counter!(HOOKS_UNKNOWN, "Webhook requests to a source that is not configured (answered 404)");
    metrics::describe_counter!(DELIVERIES, "Delivery attempts, by route and outcome");
    metrics::describe_histogram!(DELIVERY_DURATION, metrics::Unit::Seconds, "Duration of delivery attempts");
    metrics::describe_gauge!(QUEUE_DEPTH, "Deliveries waiting to be sent");
    metrics::describe_counter!(
        DELIVERY_ATTEMPTS,
        "Delivery attempts by route and answer class (2xx, 4xx, 5xx, network, render)"
    );
    metrics::describe_gauge!(QUARANTINE_SIZE, "Bodies in the quarantine");
    metrics::describe_gauge!(QUARANTINE_BYTES, metrics::Unit::Bytes, "Bytes the quarantine holds");
    metrics::describe_gauge!(OLDEST_PENDING_AGE, "Age of the oldest pending delivery");
    metrics::describe_gauge!(SOURCE_SILENT, "1 when a source has been silent longer than its alert_after");
    metrics::describe_gauge!(SOURCE_LAST_EVENT, "When the last body arrived for a source (Unix seconds)");
    metrics::describe_gauge!(DEAD_LETTERS, "Deliveries that failed for good, waiting for a replay");
    metrics::describe_counter!(
        RECONCILE_ITEMS,
        "Items of Learnybox's API checked by reconciliation, by source and outcome (received, recovered, missing)"
    );
    metrics::describe_counter!(RECONCILE_RUNS, "Reconciliation runs, by source and outcome");
    metrics::describe_histogram!(
        STORE_BATCH,
        metrics::Unit::Seconds,
        "SQLite: one group transaction of the writer, from BEGIN to the end of COMMIT (its fsync)"
    );
    metrics::describe_histogram!(STORE_BATCH_JOBS, "SQLite: operations folded into one group transaction");
    metrics::describe_histogram!(
        STORE_WAIT,
        metrics::Unit::Seconds,
        "SQLite: how long an operation waited for the writer before it ran"
    );
    metrics::describe_counter!(
        PER_IP_REFUSED,
        "Webhook requests answered 429 because their address had max_connections_per_ip in progress"
    );
    metrics::describe_counter!(
        DEFERRED,
        "Deliveries handed back to the queue by their route's rate limit, concurrency or pause"
    );
}

/// What happened since the last summary line: counted by ingest and delivery, said at `info`
/// once a minute (and at shutdown) by housekeeping, instead of a line per event.
#[derive(Debug)]
pub struct Summary {
    events_in: std::sync::atomic::AtomicU64,
    duplicates: std::sync::atomic::AtomicU64,
    quarantined: std::sync::atomic::AtomicU64,
    delivered: std::sync::atomic::AtomicU64,
    retried: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

/// One thing the summary counts.
#[derive(Debug, Clone, Copy)]
pub enum Counted {
    EventIn,
    Duplicate,
    Quarantined,
    Delivered,
    Retried,
    Failed,
}

/// The process's counts since the last summary line.
pub static SUMMARY: Summary = Summary {
    events_in: std::sync::atomic::AtomicU64::new(0),
    duplicates: std::sync::atomic::AtomicU64::new(0),
    quarantined: std::sync::atomic::AtomicU64::new(0),
    delivered: std::sync::atomic::AtomicU64::new(0),
    retried: std::sync::atomic::AtomicU64::new(0),
    failed: std::sync::atomic::AtomicU64::new(0),
};

impl Summary {
    pub fn count(&self, what: Counted) {
        let counter = match what {
            Counted::EventIn => &self.events_in,
            Counted::Duplicate => &self.duplicates,
            Counted::Quarantined => &self.quarantined,
            Counted::Delivered => &self.delivered,
            Counted::Retried => &self.retried,
            Counted::Failed => &self.failed,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Logs the counts since the last call (when there are any, or work is queued) and restarts them.
    pub fn say(&self, queue_depth: Option<i64>) {
        use std::sync::atomic::Ordering::Relaxed;
        let [events_in, duplicates, quarantined, delivered, retried, failed] =
            [&self.events_in, &self.duplicates, &self.quarantined, &self.delivered, &self.retried, &self.failed]
                .map(|c| c.swap(0, Relaxed));
        if events_in + duplicates + quarantined + delivered + retried + failed > 0 || queue_depth.unwrap_or(0) > 0 {
            tracing::info!(
                events_in,
                duplicates,
                quarantined,
                delivered,
                retried,
                failed,
                queue_depth,
                "summary since the last one (per-event lines are at debug)"
            );
        }
    }
}

/// Lets one log line through per interval, so a condition that repeats on every request (a full
/// quarantine during a flood) is said without flooding the log.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: i64,
    next_at: std::sync::atomic::AtomicI64,
}

impl LogLimiter {
    pub const fn every(interval: std::time::Duration) -> LogLimiter {
        LogLimiter { interval_ms: interval.as_millis() as i64, next_at: std::sync::atomic::AtomicI64::new(i64::MIN) }
    }

    /// True at most once per interval (times in Unix ms).
    pub fn should_log(&self, now: i64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let next = self.next_at.load(Relaxed);
        now >= next && self.next_at.compare_exchange(next, now + self.interval_ms, Relaxed, Relaxed).is_ok()
    }
}

/// Masks an e-mail address for logs: `ca***@example.fr`.
/// Shows an error with every cause below it, `outer: inner: innermost`, for log lines and
/// answers: error types keep their source instead of copying its text into their own message.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

/// `text` with every word that holds an `@` masked as [`mask_email`] does (an address in free text:
/// a CRM's error, a note in an event).
pub fn mask_emails_in(text: &str) -> String {
    if !text.contains('@') {
        return text.to_string();
    }
    text.split(' ').map(|w| if w.contains('@') { mask_email(w) } else { w.to_string() }).collect::<Vec<_>>().join(" ")
}

pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let keep: String = local.chars().take(2).collect();
            format!("{keep}***@{domain}")
        }
        None => "***".into(),
    }
}
