//! `lbx-relay bench`: a capacity test to run before a launch. It starts a relay process on a
//! temporary SQLite store (or targets one with `--url`), runs its own loopback sink as the CRM,
//! sends N unique encrypted events at a chosen concurrency or rate, and reports accepted/s, ack
//! latency percentiles, end-to-end delivery latency, the backlog over time, errors and the relay's
//! memory. The load itself comes from [`generator`], a lean client on threads of its own.

pub mod generator;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;

use generator::{histogram, Progress};

use crate::crypto::{self, KeyForm, Variant};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Target an already running relay (no sink, no RSS) instead of starting one.
    pub url: Option<String>,
    pub secret: Option<String>,
    pub events: usize,
    pub concurrency: usize,
    /// Requests per second in total; `None` sends as fast as the concurrency allows.
    pub rate: Option<u64>,
    /// Send for this long (with `rate`: `rate × duration` events; without: at most `events`).
    pub duration: Option<Duration>,
    /// Threads of the load generator.
    pub threads: usize,
    /// Approximate size of the encrypted body in bytes.
    pub size: usize,
    /// Log level of the started relay (`RUST_LOG`).
    pub relay_log: String,
    /// Delivery workers of the started relay.
    pub workers: usize,
    /// How long to wait for the sink to receive everything.
    pub drain_timeout: Duration,
    /// Also measure a bare actix-web handler answering 200 under the same load (the ceiling).
    pub baseline: bool,
    /// With `url`: also run the sink here (`POST /sink`, JSON with the event's `n`).
    pub sink_listen: Option<String>,
    /// With `url`: the process whose memory to report.
    pub pid: Option<u32>,
    /// Relay processes to start on one shared store (needs `store_url`).
    pub replicas: usize,
    /// The store of the started relays (default: SQLite in a temporary directory).
    pub store_url: Option<String>,
    /// `[store] sync` of the started relays: `full` or `normal`.
    pub sync: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    /// What sent the load.
    pub generator: String,
    /// The same load against a bare actix-web handler, when asked for.
    pub baseline: Option<Baseline>,
    pub events: usize,
    /// Requests written (fewer than `events` when `duration` without `rate` ran out first).
    pub sent: usize,
    pub concurrency: usize,
    /// The offered rate, when one was set.
    pub rate: Option<u64>,
    pub replicas: usize,
    pub body_bytes: usize,
    pub accepted: usize,
    pub errors: usize,
    pub ingest_seconds: f64,
    pub accepted_per_second: f64,
    pub ack_latency: Latency,
    /// Events the sink received (self-contained mode).
    pub delivered: Option<usize>,
    /// From the first request to the last delivery.
    pub end_to_end_seconds: Option<f64>,
    pub delivered_per_second: Option<f64>,
    /// Deliveries that reached the sink while ingest was still running, per second of ingest.
    pub delivered_during_ingest_per_second: Option<f64>,
    pub delivery_latency: Option<Latency>,
    /// Once a second: accepted, delivered and the backlog between them.
    pub series: Vec<Sample>,
    pub relay_rss_idle_mb: Option<f64>,
    pub relay_rss_peak_mb: Option<f64>,
    pub relay_startup_ms: Option<f64>,
    /// CPU (user + system) the relay processes used from the first request to the last delivery
    /// (or the end of ingest when nothing is delivered), all replicas together.
    pub relay_cpu_seconds: Option<f64>,
    /// That CPU time per accepted event, in microseconds.
    pub relay_cpu_us_per_event: Option<f64>,
    /// The bench process's own CPU (generator, sink) over the same span: on a shared machine, what
    /// the relay could not use.
    pub bench_cpu_seconds: Option<f64>,
    /// The SQLite writer of the started relay, from its `/metrics` at the end: where an ack
    /// tail that is not the writer's shows (absent with `--url`, and for PostgreSQL).
    pub relay_writer: Option<WriterTimes>,
    /// The whole machine over the same span (Linux: `/proc/stat`): whether its cores were full,
    /// with everything on it counted (a PostgreSQL server, other programs) and what the
    /// hypervisor took. A tail at a steady rate on a machine with no idle time is its scheduler's.
    pub machine_cpu: Option<MachineCpu>,
}

/// Shares of the machine's CPU time over a span, from two readings of `/proc/stat`'s `cpu` line.
#[derive(Debug, Default, Serialize, Clone, Copy, PartialEq)]
pub struct MachineCpu {
    pub cores: usize,
    /// Running anything: user, nice, system, interrupts.
    pub busy_share: f64,
    /// Waiting for the disk with nothing else to run.
    pub iowait_share: f64,
    /// Taken by the hypervisor for other guests: time the machine wanted and did not get.
    pub steal_share: f64,
}

/// The first eight counters of `/proc/stat`'s aggregate `cpu` line (user nice system idle iowait
/// irq softirq steal, in clock ticks; the guest times after them are already inside user and
/// nice); `None` when the line is not there or its counters are not numbers.
fn cpu_ticks(stat: &str) -> Option<[u64; 8]> {
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let mut fields = line.split_whitespace().skip(1).map(|f| f.parse::<u64>().ok());
    let mut ticks = [0u64; 8];
    for t in &mut ticks {
        *t = fields.next()??;
    }
    Some(ticks)
}

impl MachineCpu {
    /// The shares between two readings of `/proc/stat`; `None` when either cannot be read or no
    /// time passed between them. (Guest time is already inside user time: not added again.)
    pub fn between(before: &str, after: &str) -> Option<MachineCpu> {
        let (a, b) = (cpu_ticks(before)?, cpu_ticks(after)?);
        // In f64: counters near u64::MAX (a hostile or broken file) must not overflow a sum.
        let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| y.saturating_sub(*x) as f64).collect();
        let total: f64 = d.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let share = |n: f64| n / total;
        let cores = after.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
        Some(MachineCpu {
            cores,
            busy_share: share(d[0] + d[1] + d[2] + d[5] + d[6]),
            iowait_share: share(d[4]),
            steal_share: share(d[7]),
        })
    }
}

fn proc_stat() -> Option<String> {
    std::fs::read_to_string("/proc/stat").ok()
}

/// The writer's histograms (`lbx_store_batch_seconds`, `lbx_store_wait_seconds`), read as the
/// upper bounds, in ms, of the buckets holding the 99th percentile and the slowest observation
/// (`null`: above the largest bucket, 1 s).
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct WriterTimes {
    /// Transactions the writer committed (group commits).
    pub batches: u64,
    /// Operations they carried (ingests, settles, leases, …).
    pub operations: u64,
    pub batch_p99_le_ms: Option<f64>,
    pub batch_max_le_ms: Option<f64>,
    /// From an operation's hand-off to the writer to its start there.
    pub wait_p99_le_ms: Option<f64>,
    pub wait_max_le_ms: Option<f64>,
}

impl WriterTimes {
    /// From a Prometheus text exposition; `None` when it has no writer histogram (PostgreSQL).
    pub fn from_metrics(text: &str) -> Option<WriterTimes> {
        let batch = Buckets::read(text, crate::telemetry::STORE_BATCH)?;
        let wait = Buckets::read(text, crate::telemetry::STORE_WAIT)?;
        Some(WriterTimes {
            batches: batch.count(),
            operations: wait.count(),
            batch_p99_le_ms: batch.le_ms(0.99),
            batch_max_le_ms: batch.le_ms(1.0),
            wait_p99_le_ms: wait.le_ms(0.99),
            wait_max_le_ms: wait.le_ms(1.0),
        })
    }
}

/// A histogram's cumulative buckets: (upper bound in seconds, count at or below it).
struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    fn read(text: &str, name: &str) -> Option<Buckets> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, u64)> = text
            .lines()
            .filter_map(|line| {
                let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets.last().is_some_and(|b| b.1 > 0).then_some(Buckets(buckets))
    }

    fn count(&self) -> u64 {
        self.0.last().map_or(0, |b| b.1)
    }

    /// The upper bound (ms) of the first bucket holding `share` of the observations.
    fn le_ms(&self, share: f64) -> Option<f64> {
        let need = (self.count() as f64 * share).ceil() as u64;
        let le = self.0.iter().find(|b| b.1 >= need)?.0;
        le.is_finite().then_some(le * 1e3)
    }
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Sample {
    pub second: u64,
    pub accepted: usize,
    pub delivered: usize,
    pub backlog: usize,
    /// The slowest ack of the requests sent in this second, in ms (where a stall shows).
    pub ack_max_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Baseline {
    pub requests_per_second: f64,
    pub ack_latency: Latency,
}

/// The ceiling: a bare actix-web server answering 200 to any POST after reading the body, with
/// the same worker count as the relay's public listener. Run in its own process by `bench`.
pub async fn baseline_server(listen: &str) -> anyhow::Result<()> {
    async fn ok(_body: web::Bytes) -> HttpResponse {
        HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
    }
    HttpServer::new(|| App::new().default_service(web::to(ok))).bind(listen)?.run().await?;
    Ok(())
}

/// When the sink received the events, on the drive's clock.
struct Deliveries {
    /// Request sent → sink received, µs.
    latency: Histogram<u64>,
    /// The last arrival, µs after the first request.
    last_us: u64,
    /// Arrivals before the last request was answered.
    during: usize,
}

impl Deliveries {
    /// `sent_at` and `arrived` are µs on the bench's clock, which starts before the relay, the
    /// event preparation and the baseline; the drive (the first request) starts at `drive_start_us`
    /// on it and lasts `ingest`. Spans are counted from the drive's start, not the clock's.
    fn measure(sent_at: &[AtomicU64], arrived: &[AtomicU64], drive_start_us: u64, ingest: Duration) -> Deliveries {
        let mut out = Deliveries { latency: histogram(), last_us: 0, during: 0 };
        let ingest_end_us = drive_start_us + ingest.as_micros() as u64;
        for (sent, arrived) in sent_at.iter().zip(arrived) {
            let (s, a) = (sent.load(Ordering::Relaxed), arrived.load(Ordering::Relaxed));
            if s > 0 && a > 0 {
                let _ = out.latency.record(a.saturating_sub(s).max(1));
                out.last_us = out.last_us.max(a.saturating_sub(drive_start_us));
                out.during += usize::from(a <= ingest_end_us);
            }
        }
        out
    }
}

fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

/// Events being delivered: when the sink got each (µs since the generator's start).
struct Timeline {
    start: Instant,
    arrived: Vec<AtomicU64>,
    received: AtomicUsize,
}

impl Timeline {
    fn new(progress: &Progress) -> Timeline {
        Timeline {
            start: progress.start,
            arrived: progress.sent_at.iter().map(|_| AtomicU64::new(0)).collect(),
            received: AtomicUsize::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

#[derive(serde::Deserialize)]
struct SinkBody {
    n: usize,
}

async fn sink(timeline: web::Data<Timeline>, body: web::Bytes) -> HttpResponse {
    if let Ok(b) = serde_json::from_slice::<SinkBody>(&body) {
        if let Some(slot) = timeline.arrived.get(b.n) {
            if slot.compare_exchange(0, timeline.now_us().max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                timeline.received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    HttpResponse::Ok().finish()
}

/// Serves `POST /sink` on `listener`, recording arrivals in `timeline`; returns its base URL.
fn start_sink(listener: std::net::TcpListener, timeline: &Arc<Timeline>) -> anyhow::Result<String> {
    let url = format!("http://{}", listener.local_addr()?);
    let data = web::Data::from(timeline.clone());
    let server = HttpServer::new(move || App::new().app_data(data.clone()).route("/sink", web::post().to(sink)))
        .listen(listener)?
        .workers(1)
        .disable_signals()
        .run();
    tokio::spawn(server);
    Ok(url)
}

/// Resident memory of a process, current and peak, in MiB (Linux).
fn rss_mb(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used so far, in seconds (Linux: `/proc/<pid>/stat`,
/// in clock ticks of `USER_HZ`, which is 100 on every architecture the relay builds for).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// The CPU time of all these processes together; `None` when one cannot be read.
fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

const BENCH_SECRET: &str = "bench-secret-bench-secret-bench!";

fn plaintext(n: usize, size: usize) -> Vec<u8> {
    let base = plaintext_with(n, String::new()).len();
    // Base64 grows the ciphertext by 4/3 and the envelope adds ~40 bytes: aim the body at `size`.
    let pad = "x".repeat((size.saturating_sub(40) * 3 / 4).saturating_sub(base + 16));
    plaintext_with(n, pad)
}

fn plaintext_with(n: usize, pad: String) -> Vec<u8> {
    serde_json::json!({
        "event": "contact.subscribed",
        "id": format!("bench-{n}-{}", std::process::id()),
        "n": n,
        "data": {"contact": {"email": format!("bench{n}@example.test"), "prenom": "Camille", "nom": "Durand"}},
        "pad": pad,
    })
    .to_string()
    .into_bytes()
}

struct RelayProcess {
    child: std::process::Child,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

/// Two different free addresses (both held while the second is picked).
fn two_free_addrs() -> anyhow::Result<(String, String)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.to_string(), b.local_addr()?.to_string()))
}

fn write_config(
    dir: &Path,
    sink_url: &str,
    public: &str,
    admin: &str,
    workers: usize,
    store_url: &str,
    sync: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::write(
        dir.join("sink.json.hbs"),
        // Valid JSON for events without `n` too: `serve` refuses a config whose samples `check` rejects.
        r#"{"n": {{#if data.n}}{{data.n}}{{else}}0{{/if}}, "event": "{{event}}", "email": "{{data.data.contact.email}}"}"#,
    )?;
    let config = format!(
        r#"[server]
listen = "{public}"
admin_listen = "{admin}"
max_body = "1MiB"
[store]
url = "{store_url}"
sync = "{sync}"
[sources.bench]
secret_keys = ["{BENCH_SECRET}"]
[delivery]
workers = {workers}
[[routes]]
name = "sink"
events = ["*"]
template = "sink.json.hbs"
url = "{sink_url}/sink"
"#
    );
    let path = dir.join("routes.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

async fn wait_ready(client: &reqwest::Client, admin: &str, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if client.get(format!("http://{admin}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("the relay did not become ready within {limit:?}")
}

/// How many events a run sends: `rate × duration` when both are set, else `events`.
pub fn planned_events(opts: &BenchOptions) -> usize {
    match (opts.rate, opts.duration) {
        (Some(rate), Some(d)) => ((rate as f64) * d.as_secs_f64()).ceil() as usize,
        _ => opts.events,
    }
}

/// Runs the benchmark and returns its report.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let events = planned_events(opts);
    if events == 0 || opts.concurrency == 0 || opts.threads == 0 {
        bail!("--events, --concurrency and --threads must be at least 1");
    }
    if opts.rate == Some(0) {
        bail!("--rate must be at least 1");
    }
    let progress = Arc::new(Progress::new(events));
    let timeline = Arc::new(Timeline::new(&progress));
    let client = crate::proxy::client_builder().timeout(Duration::from_secs(30)).build()?;
    let mut report = BenchReport {
        generator: format!("lean HTTP/1.1 client, {} threads, pre-built requests", opts.threads),
        events,
        concurrency: opts.concurrency,
        rate: opts.rate,
        ..BenchReport::default()
    };

    let (targets, secret, relays) = match &opts.url {
        Some(url) => {
            let secret = opts.secret.clone().context("--url needs --secret or --secret-env")?;
            if let Some(addr) = &opts.sink_listen {
                start_sink(std::net::TcpListener::bind(addr)?, &timeline)?;
            }
            (vec![url.clone()], secret, Vec::new())
        }
        None => {
            if opts.replicas > 1 && opts.store_url.is_none() {
                bail!("--replicas above 1 need a shared --store-url postgres://…");
            }
            let sink_url = start_sink(std::net::TcpListener::bind("127.0.0.1:0")?, &timeline)?;
            let store_url = opts.store_url.clone().unwrap_or_else(|| "sqlite://relay.db".into());
            let mut targets = Vec::new();
            let mut relays = Vec::new();
            for _ in 0..opts.replicas.max(1) {
                // The ports are free when picked, not reserved: a relay that lost one to another
                // program exits on start, and is started again on two new ports.
                let mut tries = 0;
                let (relay, public) = loop {
                    let dir = tempfile::tempdir()?;
                    let (public, admin) = two_free_addrs()?;
                    let config =
                        write_config(dir.path(), &sink_url, &public, &admin, opts.workers, &store_url, &opts.sync)?;
                    let started = Instant::now();
                    let child = std::process::Command::new(std::env::current_exe()?)
                        .args(["serve", "-c"])
                        .arg(&config)
                        .env("RUST_LOG", &opts.relay_log)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .context("starting the relay")?;
                    let mut relay = RelayProcess { child, admin: admin.clone(), _dir: dir };
                    let ready = wait_ready(&client, &admin, Duration::from_secs(10)).await;
                    let exited = relay.child.try_wait()?;
                    tries += 1;
                    match (ready, exited) {
                        (Ok(_), None) => {
                            report.relay_startup_ms.get_or_insert(started.elapsed().as_secs_f64() * 1000.0);
                            break (relay, public);
                        }
                        (_, Some(status)) if tries < 3 => {
                            eprintln!("bench: the relay exited on start ({status}); starting it on other ports");
                        }
                        (_, Some(status)) => bail!("the relay exited on start ({status}), three times"),
                        (Err(e), None) => return Err(e),
                    }
                };
                targets.push(format!("http://{public}/hooks/bench"));
                relays.push(relay);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            report.relay_rss_idle_mb = rss_mb(relays[0].child.id()).map(|(rss, _)| rss);
            (targets, BENCH_SECRET.to_string(), relays)
        }
    };
    report.replicas = targets.len();
    let (addrs, path, host) = resolve(&targets)?;
    // Encrypt everything up front: the load generator should measure the relay, not itself.
    let size = opts.size;
    let bodies: Vec<String> = tokio::task::spawn_blocking({
        let secret = secret.clone();
        move || {
            (0..events)
                .map(|n| {
                    crypto::seal(&plaintext(n, size), &secret, Variant::JsonDataIv, KeyForm::Raw, crypto::random_iv())
                        .map(|s| s.body)
                })
                .collect::<Result<Vec<_>, _>>()
        }
    })
    .await??;
    report.body_bytes = bodies.first().map(String::len).unwrap_or(0);
    let requests: Arc<Vec<Vec<u8>>> =
        Arc::new(bodies.iter().map(|b| generator::post(&path, &host, b.as_bytes())).collect());
    drop(bodies);
    if opts.baseline {
        report.baseline = Some(measure_baseline(opts, &client, &requests).await?);
    }

    let pid = relays.first().map(|r| r.child.id()).or(opts.pid);
    if relays.is_empty() {
        report.relay_rss_idle_mb = pid.and_then(rss_mb).map(|(rss, _)| rss);
    }
    let pids: Vec<u32> =
        if relays.is_empty() { opts.pid.into_iter().collect() } else { relays.iter().map(|r| r.child.id()).collect() };
    let cpu_before = cpu_of(&pids);
    let own_cpu_before = cpu_seconds(std::process::id());
    let machine_before = proc_stat();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The drive's start (the first request) on the bench's clock: spans and seconds count from here.
    let drive_start_us = progress.now_us();
    let sampler = {
        let (peak, sampling, progress, timeline) = (peak.clone(), sampling.clone(), progress.clone(), timeline.clone());
        tokio::spawn(async move {
            let mut series = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0u64;
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some((_, hwm)) = pid.and_then(rss_mb) {
                    peak.fetch_max((hwm * 1024.0) as u64, Ordering::Relaxed);
                }
                if n % 10 == 0 {
                    let accepted = progress.accepted.load(Ordering::Relaxed);
                    let delivered = timeline.received.load(Ordering::Relaxed);
                    let backlog = accepted.saturating_sub(delivered);
                    series.push(Sample { second: n / 10, accepted, delivered, backlog, ack_max_ms: 0.0 });
                }
                n += 1;
            }
            series
        })
    };
    let outcome = drive(opts, &addrs, requests, progress.clone()).await?;
    let ingest = outcome.elapsed;
    report.sent = outcome.sent;
    report.accepted = progress.accepted.load(Ordering::Relaxed);
    report.errors = progress.errors.load(Ordering::Relaxed);
    report.ingest_seconds = ingest.as_secs_f64();
    report.accepted_per_second = report.accepted as f64 / ingest.as_secs_f64();
    report.ack_latency = latency(&outcome.ack);

    if !relays.is_empty() || opts.sink_listen.is_some() {
        let deadline = Instant::now() + opts.drain_timeout;
        while timeline.received.load(Ordering::Relaxed) < report.accepted && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let span = Deliveries::measure(&progress.sent_at, &timeline.arrived, drive_start_us, ingest);
        let delivered = timeline.received.load(Ordering::Relaxed);
        report.delivered = Some(delivered);
        report.end_to_end_seconds = Some(span.last_us as f64 / 1e6);
        report.delivered_per_second = Some(delivered as f64 / (span.last_us as f64 / 1e6).max(1e-9));
        report.delivered_during_ingest_per_second = Some(span.during as f64 / ingest.as_secs_f64().max(1e-9));
        report.delivery_latency = Some(latency(&span.latency));
    }
    if let (Some(before), Some(after)) = (own_cpu_before, cpu_seconds(std::process::id())) {
        report.bench_cpu_seconds = Some(after - before);
    }
    if let (Some(before), Some(after)) = (machine_before, proc_stat()) {
        report.machine_cpu = MachineCpu::between(&before, &after);
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_of(&pids)) {
        report.relay_cpu_seconds = Some(after - before);
        report.relay_cpu_us_per_event = Some((after - before) * 1e6 / (report.accepted.max(1) as f64));
    }
    sampling.store(false, Ordering::Relaxed);
    report.series = sampler.await?;
    for (sent, ack) in progress.sent_at.iter().zip(&progress.ack_us) {
        let (s, a) = (sent.load(Ordering::Relaxed), ack.load(Ordering::Relaxed));
        if s == 0 || a == 0 {
            continue; // not sent, or not answered
        }
        if let Some(sample) = report.series.get_mut((s.saturating_sub(drive_start_us) / 1_000_000) as usize) {
            sample.ack_max_ms = sample.ack_max_ms.max(a as f64 / 1e3);
        }
    }
    if let Some(pid) = pid {
        let hwm = rss_mb(pid).map(|(_, h)| h).unwrap_or(0.0);
        report.relay_rss_peak_mb = Some(hwm.max(peak.load(Ordering::Relaxed) as f64 / 1024.0));
    }
    if let Some(relay) = relays.first() {
        let metrics = client.get(format!("http://{}/metrics", relay.admin)).send().await;
        if let Ok(text) = async { metrics?.error_for_status()?.text().await }.await {
            report.relay_writer = WriterTimes::from_metrics(&text);
        }
    }
    drop(relays);
    Ok(report)
}

/// The socket addresses, path and `Host` of the hook URLs (one path for all: the replicas' are alike).
fn resolve(targets: &[String]) -> anyhow::Result<(Vec<std::net::SocketAddr>, String, String)> {
    let mut addrs = Vec::new();
    let (mut path, mut host) = (String::new(), String::new());
    for target in targets {
        let url = reqwest::Url::parse(target).with_context(|| format!("{target}: not a URL"))?;
        if url.scheme() != "http" {
            bail!("{target}: the load generator speaks plain HTTP/1.1 only");
        }
        let addr = url
            .socket_addrs(|| Some(80))?
            .into_iter()
            .next()
            .with_context(|| format!("{target}: the host does not resolve"))?;
        addrs.push(addr);
        path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        host = url
            .host_str()
            .map(|h| match url.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
            .unwrap_or_default();
    }
    Ok((addrs, path, host))
}

/// Runs the generator off the async runtime, with a progress bar on it.
async fn drive(
    opts: &BenchOptions,
    addrs: &[std::net::SocketAddr],
    requests: Arc<Vec<Vec<u8>>>,
    progress: Arc<Progress>,
) -> anyhow::Result<generator::Totals> {
    let bar = indicatif::ProgressBar::new(requests.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} answered  {per_sec}  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let load = generator::Load {
        addrs: addrs.to_vec(),
        requests,
        connections: opts.concurrency,
        threads: opts.threads,
        rate: opts.rate.map(|r| r as f64),
        duration: opts.duration,
    };
    let watched = progress.clone();
    let mut running = tokio::task::spawn_blocking(move || generator::run(load, watched));
    let outcome = loop {
        tokio::select! {
            done = &mut running => break done??,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                let answered = progress.accepted.load(Ordering::Relaxed) + progress.errors.load(Ordering::Relaxed);
                bar.set_position(answered as u64);
            }
        }
    };
    bar.finish_and_clear();
    Ok(outcome)
}

/// Runs the same load against a bare actix-web process.
async fn measure_baseline(
    opts: &BenchOptions,
    client: &reqwest::Client,
    requests: &Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<Baseline> {
    let addr = free_addr()?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["baseline-server", "--listen", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the baseline server")?;
    let _guard = KillOnDrop(child);
    let started = Instant::now();
    while client.post(format!("http://{addr}/")).body("{}").send().await.is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the baseline server did not start");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let progress = Arc::new(Progress::new(requests.len()));
    let outcome = drive(opts, &[addr.parse()?], requests.clone(), progress.clone()).await?;
    let accepted = progress.accepted.load(Ordering::Relaxed);
    Ok(Baseline {
        requests_per_second: accepted as f64 / outcome.elapsed.as_secs_f64(),
        ack_latency: latency(&outcome.ack),
    })
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The report as a table for people.
pub fn table(r: &BenchReport) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<28} {v}\n"));
    row("load generator", r.generator.clone());
    let offered = r.rate.map(|rate| format!(", offered {rate}/s")).unwrap_or_default();
    row(
        "events",
        format!("{} × {} bytes at concurrency {}{offered} ({} sent)", r.events, r.body_bytes, r.concurrency, r.sent),
    );
    if r.replicas > 1 {
        row("relay replicas", format!("{} (requests spread round-robin)", r.replicas));
    }
    if let Some(b) = &r.baseline {
        let l = &b.ack_latency;
        row("bare actix-web ceiling", format!("{:.0} req/s, p99 {:.2} ms", b.requests_per_second, l.p99_ms));
    }
    row("accepted (200)", format!("{} ({} errors)", r.accepted, r.errors));
    let share = r
        .baseline
        .as_ref()
        .map(|b| format!(" ({:.0} % of the ceiling)", 100.0 * r.accepted_per_second / b.requests_per_second));
    row(
        "ingest",
        format!("{:.0} events/s over {:.2} s{}", r.accepted_per_second, r.ingest_seconds, share.unwrap_or_default()),
    );
    let l = &r.ack_latency;
    row(
        "ack latency",
        format!("p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms", l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
    );
    if let (Some(d), Some(t), Some(rate)) = (r.delivered, r.end_to_end_seconds, r.delivered_per_second) {
        row("delivered to the sink", format!("{d} in {t:.2} s ({rate:.0} events/s end to end)"));
    }
    if let (Some(during), true) = (r.delivered_during_ingest_per_second, r.accepted_per_second > 0.0) {
        let share = 100.0 * during / r.accepted_per_second;
        row("delivered while ingesting", format!("{during:.0} events/s ({share:.0} % of the ingest rate)"));
    }
    if let Some(l) = &r.delivery_latency {
        row(
            "delivery latency",
            format!("p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms", l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
        );
    }
    if r.delivered.is_some() && !r.series.is_empty() {
        let peak = r.series.iter().map(|s| s.backlog).max().unwrap_or(0);
        let points: Vec<String> = r.series.iter().take(30).map(|s| s.backlog.to_string()).collect();
        row("backlog each second", format!("{} (peak {peak})", points.join(" ")));
    }
    if let Some(ms) = r.relay_startup_ms {
        row("relay start-up to ready", format!("{ms:.0} ms"));
    }
    if let (Some(idle), Some(peak)) = (r.relay_rss_idle_mb, r.relay_rss_peak_mb) {
        row("relay RSS", format!("idle {idle:.1} MB, peak {peak:.1} MB"));
    }
    if let (Some(cpu), Some(per)) = (r.relay_cpu_seconds, r.relay_cpu_us_per_event) {
        row("relay CPU (user + system)", format!("{cpu:.2} s, {per:.0} µs per accepted event"));
    }
    if let Some(m) = r.machine_cpu {
        row(
            "machine CPU",
            format!(
                "{:.0} % busy of {} cores (iowait {:.0} %, stolen by the hypervisor {:.0} %)",
                100.0 * m.busy_share,
                m.cores,
                100.0 * m.iowait_share,
                100.0 * m.steal_share
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Deliveries, MachineCpu, WriterTimes};
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    /// The bench's clock starts long before the first request (the relay starts, events are
    /// encrypted, the baseline runs): 5 s here. Ingest lasts 2 s from there; one event is
    /// delivered during it, one 1 s after it, one is never delivered.
    #[test]
    fn end_to_end_counts_from_the_first_request_not_from_the_bench_start() {
        let at = |v: &[u64]| v.iter().map(|&x| AtomicU64::new(x)).collect::<Vec<_>>();
        let sent = at(&[5_000_100, 6_000_000, 6_900_000]);
        let arrived = at(&[5_000_600, 8_000_000, 0]);
        let d = Deliveries::measure(&sent, &arrived, 5_000_000, Duration::from_secs(2));
        assert_eq!(d.last_us, 3_000_000, "the last delivery, 3 s after the first request");
        assert_eq!(d.during, 1, "only the first arrived before the last ack");
        assert_eq!(d.latency.len(), 2);
        assert_eq!(d.latency.min(), 500);
        // An arrival exactly at the end of ingest counts as during; nothing before the clock's
        // start (a sink slot set by a stray request) underflows.
        let d = Deliveries::measure(&at(&[1, 2]), &at(&[7_000_000, 3]), 5_000_000, Duration::from_secs(2));
        assert_eq!((d.last_us, d.during), (2_000_000, 2));
    }

    const STAT_BEFORE: &str = "cpu  1000 100 300 5000 50 0 40 10 0 0
cpu0 500 50 150 2500 25 0 20 5 0 0
cpu1 500 50 150 2500 25 0 20 5 0 0
intr 12345
ctxt 999
";
    const STAT_AFTER: &str = "cpu  1600 200 500 5600 150 0 100 50 7 0
cpu0 800 100 250 2800 75 0 50 25 3 0
cpu1 800 100 250 2800 75 0 50 25 4 0
intr 22345
ctxt 1999
";

    /// 1,700 ticks passed: 600 user + 100 nice + 200 system + 60 softirq busy, 600 idle, 100
    /// iowait, 40 stolen; guest time (inside user) is not counted twice.
    #[test]
    fn the_machine_cpu_is_read_as_shares_of_the_span() {
        let m = MachineCpu::between(STAT_BEFORE, STAT_AFTER).unwrap();
        assert_eq!(m.cores, 2);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(m.busy_share, 960.0 / 1700.0), "{m:?}");
        assert!(close(m.iowait_share, 100.0 / 1700.0), "{m:?}");
        assert!(close(m.steal_share, 40.0 / 1700.0), "{m:?}");
    }

    #[test]
    fn a_proc_stat_that_cannot_be_read_gives_nothing_and_never_panics() {
        // No aggregate line: `cpu0` is not `cpu`, nor is `cpuX`.
        assert_eq!(MachineCpu::between("cpu0 1 2 3 4 5 6 7 8\n", "cpu0 2 3 4 5 6 7 8 9\n"), None);
        assert_eq!(MachineCpu::between("cpux 1 2 3 4 5 6 7 8\n", "cpux 2 3 4 5 6 7 8 9\n"), None);
        // Too few counters, or not numbers.
        assert_eq!(MachineCpu::between("cpu 1 2 3\n", "cpu 2 3 4\n"), None);
        assert_eq!(MachineCpu::between("cpu a b c d e f g h\n", STAT_AFTER), None);
        assert_eq!(MachineCpu::between("cpu -1 2 3 4 5 6 7 8\n", STAT_AFTER), None);
        assert_eq!(MachineCpu::between("", ""), None);
        // No time passed, or counters that went backwards: nothing to say.
        assert_eq!(MachineCpu::between(STAT_AFTER, STAT_AFTER), None);
        assert_eq!(MachineCpu::between(STAT_AFTER, STAT_BEFORE), None);
        // Counters at the top of u64: no overflow.
        let max = u64::MAX;
        let huge = format!("cpu {max} {max} {max} {max} {max} {max} {max} {max} 0 0\n");
        let m = MachineCpu::between("cpu 0 0 0 0 0 0 0 0 0 0\n", &huge).unwrap();
        assert!((m.busy_share - 5.0 / 8.0).abs() < 1e-9, "{m:?}");
        assert_eq!(m.cores, 0, "no per-core lines");
    }

    const METRICS: &str = r#"# TYPE lbx_store_batch_seconds histogram
lbx_store_batch_seconds_bucket{le="0.0005"} 90
lbx_store_batch_seconds_bucket{le="0.001"} 99
lbx_store_batch_seconds_bucket{le="0.005"} 100
lbx_store_batch_seconds_bucket{le="+Inf"} 100
lbx_store_batch_seconds_sum 0.05
lbx_store_batch_seconds_count 100
lbx_store_wait_seconds_bucket{le="0.001"} 150
lbx_store_wait_seconds_bucket{le="1"} 199
lbx_store_wait_seconds_bucket{le="+Inf"} 200
lbx_store_wait_seconds_count 200
"#;

    #[test]
    fn the_writer_histograms_are_read_as_bucket_bounds() {
        let times = WriterTimes::from_metrics(METRICS).unwrap();
        assert_eq!(times.batches, 100);
        assert_eq!(times.operations, 200);
        assert_eq!(times.batch_p99_le_ms, Some(1.0), "99 of 100 at or below 1 ms");
        assert_eq!(times.batch_max_le_ms, Some(5.0));
        assert_eq!(times.wait_p99_le_ms, Some(1000.0), "199 of 200 needs the 1 s bucket");
        assert_eq!(times.wait_max_le_ms, None, "the slowest is above the largest bound");
    }

    #[test]
    fn metrics_without_the_writer_histograms_give_nothing() {
        assert_eq!(WriterTimes::from_metrics(""), None);
        assert_eq!(WriterTimes::from_metrics("lbx_store_batch_seconds_bucket{le=\"0.001\"} 3\n"), None, "no wait");
        let near_miss = METRICS.replace("lbx_store_wait_seconds_bucket", "lbx_store_wait_secondsbucket");
        assert_eq!(WriterTimes::from_metrics(&near_miss), None);
        let garbage = METRICS.replace("} 150", "} 1e999x");
        let times = WriterTimes::from_metrics(&garbage).unwrap();
        assert_eq!(times.operations, 200, "an unreadable line is skipped, not a panic");
        let empty = "lbx_store_batch_seconds_bucket{le=\"+Inf\"} 0\nlbx_store_wait_seconds_bucket{le=\"+Inf\"} 0\n";
        assert_eq!(WriterTimes::from_metrics(empty), None, "a writer that never ran says nothing");
    }
}
