//! `spawn_app()` and the fake CRM shared by the integration tests.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use lbx_relay::app::Application;
use lbx_relay::config::Config;
use lbx_relay::crypto::{self, KeyForm, Variant};
use lbx_relay::relay::Relay;

pub const SECRET: &str = "fCRUwnAmjwESpfv8YsPwFaCIQe0nXLkY";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// One request the fake CRM received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived by the relay's clock (Unix ms), for a CRM of a driven relay.
    pub clock_ms: Option<i64>,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// What the fake CRM answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("CRM got a body that is not JSON ({e}): {}", self.body))
    }
}

/// A whole scripted answer: status, headers, body.
type FullAnswer = (u16, Vec<(String, String)>, String);

#[derive(Default)]
struct CrmState {
    /// Statuses to answer, in order; then 200.
    script: Mutex<VecDeque<u16>>,
    /// Answer this when the script is empty (default 200).
    fallback: Mutex<Option<u16>>,
    received: Mutex<Vec<Received>>,
    /// How long to wait before answering.
    delay: Mutex<Duration>,
    /// Answer 500 to every n-th request (0: never).
    fail_every: std::sync::atomic::AtomicUsize,
    /// `Retry-After` value sent with 429 answers.
    retry_after: Mutex<Option<String>>,
    /// Wait a random time up to `delay` instead of exactly `delay`.
    jitter: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    /// Headers sent with every answer.
    answer_headers: Mutex<Vec<(String, String)>>,
    /// Whole answers (status, headers, body) to give to the next requests, before `script`.
    full_script: Mutex<VecDeque<FullAnswer>>,
    /// The relay's clock, when it is driven: each request notes its time by it.
    clock: Mutex<Option<lbx_relay::clock::Clock>>,
}

/// A loopback HTTP server standing in for a CRM.
#[derive(Clone)]
pub struct FakeCrm {
    pub url: String,
    state: Arc<CrmState>,
}

impl FakeCrm {
    pub async fn start() -> FakeCrm {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        FakeCrm::start_on(listener).await
    }

    pub async fn start_on(listener: std::net::TcpListener) -> FakeCrm {
        let state = Arc::new(CrmState::default());
        let url = serve_loopback(listener, state.clone(), crm_handler);
        FakeCrm { url, state }
    }

    /// Notes each request's arrival by `clock` too (a driven relay's).
    pub fn use_clock(&self, clock: &lbx_relay::clock::Clock) {
        *self.state.clock.lock().unwrap() = Some(clock.clone());
    }

    /// Answer these statuses to the next requests, then 200 (or the fallback).
    pub fn respond_with(&self, statuses: &[u16]) {
        self.state.script.lock().unwrap().extend(statuses.iter().copied());
    }

    pub fn always(&self, status: u16) {
        *self.state.fallback.lock().unwrap() = Some(status);
    }

    pub fn fail_every(&self, n: usize) {
        self.state.fail_every.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// Waits a random time up to `d` before each answer.
    pub fn jitter(&self, d: Duration) {
        self.delay(d);
        self.state.jitter.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends `Retry-After: value` with every 429.
    pub fn retry_after(&self, value: &str) {
        *self.state.retry_after.lock().unwrap() = Some(value.to_string());
    }

    /// Answers the next request with exactly this status, these headers and this body (queued
    /// before the statuses of `respond_with`).
    pub fn respond_full(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.state.full_script.lock().unwrap().push_back((status, headers, body.to_string()));
    }

    /// Sends `name: value` with every answer (a CRM's rate-limit headers, say).
    pub fn answer_header(&self, name: &str, value: &str) {
        self.state.answer_headers.lock().unwrap().push((name.to_string(), value.to_string()));
    }

    /// Most requests it was answering at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }
}

/// Serves `handler` (for every path) with `state` on `listener`, in the background; returns the base
/// URL. The stand-ins for CRMs, vendor APIs and token servers are built on it.
pub fn serve_loopback<T, F, Args>(listener: std::net::TcpListener, state: Arc<T>, handler: F) -> String
where
    T: Send + Sync + 'static,
    F: actix_web::Handler<Args> + Clone + Send + 'static,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let url = format!("http://{}", listener.local_addr().unwrap());
    let data = web::Data::from(state);
    let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(handler.clone())))
        .listen(listener)
        .unwrap()
        .workers(1)
        .disable_signals()
        .run();
    tokio::spawn(server);
    url
}

async fn crm_handler(state: web::Data<CrmState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let full = state.full_script.lock().unwrap().pop_front();
    let status = {
        let mut received = state.received.lock().unwrap();
        let every = state.fail_every.load(std::sync::atomic::Ordering::Relaxed);
        let scripted = full.as_ref().map(|f| f.0).or_else(|| state.script.lock().unwrap().pop_front());
        let status = scripted
            .or_else(|| (every > 0 && (received.len() + 1) % every == 0).then_some(500))
            .or(*state.fallback.lock().unwrap())
            .unwrap_or(200);
        received.push(Received {
            clock_ms: state.clock.lock().unwrap().as_ref().map(|c| c.now_ms()),
            method: req.method().to_string(),
            path: req.uri().to_string(),
            headers: req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
            status,
        });
        status
    };
    use std::sync::atomic::Ordering::SeqCst;
    let now = state.in_flight.fetch_add(1, SeqCst) + 1;
    state.max_in_flight.fetch_max(now, SeqCst);
    let mut delay = *state.delay.lock().unwrap();
    if state.jitter.load(SeqCst) {
        delay = delay.mul_f64(rand::random::<f64>());
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    state.in_flight.fetch_sub(1, SeqCst);
    let mut answer = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    if status == 429 {
        if let Some(ra) = state.retry_after.lock().unwrap().clone() {
            answer.insert_header(("Retry-After", ra));
        }
    }
    for (name, value) in state.answer_headers.lock().unwrap().iter() {
        answer.insert_header((name.as_str(), value.as_str()));
    }
    if let Some((_, headers, body)) = full {
        for (name, value) in &headers {
            answer.insert_header((name.as_str(), value.as_str()));
        }
        return answer.body(body);
    }
    answer.json(serde_json::json!({"status": status}))
}

/// Knobs of the generated routes.toml.
#[derive(Clone)]
pub struct TestConfig {
    pub schedule: Vec<&'static str>,
    pub max_body: &'static str,
    pub quarantine_max: u64,
    /// Extra sources beyond `learnybox`: (name, secret).
    pub sources: Vec<(String, String)>,
    /// The body template of the `crm` route.
    pub template: &'static str,
    /// Events the `crm` route takes.
    pub events: &'static str,
    /// `path_token` of the `learnybox` source.
    pub path_token: Option<&'static str>,
    /// Secret of the `learnybox` source.
    pub secret: &'static str,
    /// Extra lines for the `learnybox` source table.
    pub source_extra: &'static str,
    pub retention: &'static str,
    /// `[store] url`; SQLite in the test directory when `None`.
    pub store_url: Option<String>,
    /// Extra lines for the `crm` route (rate_limit, concurrency, order_by, …).
    pub route_extra: String,
    /// `[[routes.steps]]` tables making `crm` a multi-step route (`{crm}` stands for the CRM's URL).
    pub steps: Option<String>,
    /// Extra lines for the `[server]` table.
    pub server_extra: String,
    /// Extra lines for the `[store]` table.
    pub store_extra: String,
    /// Extra lines for the `[delivery]` table.
    pub delivery_extra: String,
    /// The relay's clock; the system's when `None`.
    pub clock: Option<lbx_relay::clock::Clock>,
}

pub const FORWARD_TEMPLATE: &str = r#"{"source": "{{source}}", "event": "{{event}}", "id": "{{id}}",
 "prenom": "{{data.data.contact.prenom}}", "nom": "{{data.data.contact.nom}}", "data": {{json data}}}"#;

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            schedule: vec!["50ms", "100ms"],
            max_body: "1MiB",
            quarantine_max: 1000,
            sources: vec![],
            template: FORWARD_TEMPLATE,
            events: r#"["*"]"#,
            path_token: None,
            secret: SECRET,
            source_extra: "",
            retention: "30days",
            store_url: None,
            route_extra: String::new(),
            steps: None,
            server_extra: String::new(),
            store_extra: String::new(),
            delivery_extra: String::new(),
            clock: None,
        }
    }
}

impl TestConfig {
    pub fn toml(&self, crm_url: &str, public: &str, admin: &str) -> String {
        let schedule: Vec<String> = self.schedule.iter().map(|s| format!("{s:?}")).collect();
        let mut text = format!(
            r#"
[server]
listen = "{public}"
admin_listen = "{admin}"
admin_token = "{ADMIN_TOKEN}"
max_body = "{max_body}"
{server_extra}

[store]
url = "{store_url}"
retention = "{retention}"
{store_extra}

[quarantine]
max_items = {quarantine_max}

[sources.learnybox]
secret_keys = ["{secret}"]
{token}
{source_extra}

[retry]
schedule = [{schedule}]
timeout = "2s"

[delivery]
workers = 8
lease = "500ms"
poll_interval = "20ms"
{delivery_extra}

[[routes]]
name = "crm"
events = {events}
{request}
headers = {{ "api-key" = "${{TEST_CRM_KEY:-crm-secret-key}}" }}
{route_extra}
{steps}
"#,
            request = if self.steps.is_some() {
                String::new()
            } else {
                format!("template = \"crm.json.hbs\"\nurl = \"{crm_url}/contacts\"")
            },
            steps = self.steps.as_deref().unwrap_or("").replace("{crm}", crm_url),
            route_extra = self.route_extra,
            max_body = self.max_body,
            server_extra = self.server_extra,
            store_extra = self.store_extra,
            delivery_extra = self.delivery_extra,
            quarantine_max = self.quarantine_max,
            schedule = schedule.join(", "),
            events = self.events,
            token = self.path_token.map(|t| format!("path_token = {t:?}")).unwrap_or_default(),
            secret = self.secret,
            source_extra = self.source_extra,
            retention = self.retention,
            store_url = self.store_url.as_deref().unwrap_or("sqlite://relay.db"),
        );
        for (name, secret) in &self.sources {
            text.push_str(&format!("\n[sources.{name}]\nsecret_keys = [{secret:?}]\n"));
        }
        text
    }
}

pub struct TestApp {
    pub public: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
    pub relay: Arc<Relay>,
    pub crm: FakeCrm,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestConfig::default()).await
}

pub async fn spawn_app_with(cfg: TestConfig) -> TestApp {
    let crm = FakeCrm::start().await;
    let dir = tempfile::tempdir().unwrap();
    start_in(dir, crm, &cfg).await
}

/// Writes the test config and template into `dir` and compiles them.
fn runtime_in(dir: &Path, crm: &FakeCrm, cfg: &TestConfig) -> lbx_relay::compiled::Compiled {
    std::fs::write(dir.join("crm.json.hbs"), cfg.template).unwrap();
    let path = dir.join("routes.toml");
    std::fs::write(&path, cfg.toml(&crm.url, "127.0.0.1:0", "127.0.0.1:0")).unwrap();
    // Variables come from nothing the calling shell exports: the test config names its defaults.
    let text = std::fs::read_to_string(&path).unwrap();
    let config = Config::from_toml(&text, &path, &|_| None).expect("test config is valid");
    lbx_relay::compiled::Compiled::build(config).expect("test config compiles")
}

/// Starts a relay on the config and database in `dir` (used to restart on the same file).
pub async fn start_in(dir: tempfile::TempDir, crm: FakeCrm, cfg: &TestConfig) -> TestApp {
    let runtime = runtime_in(dir.path(), &crm, cfg);
    let clock = cfg.clock.clone().unwrap_or_else(lbx_relay::clock::Clock::system);
    let app = Application::build_with_clock(runtime, clock).await.expect("app builds");
    let public = format!("http://{}", app.public_addr());
    let admin = format!("http://{}", app.admin_addr());
    let relay = app.relay();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp { public, admin, dir, relay, crm, client: client(), stop: Some(stop), task: Some(task) }
}

/// A relay whose clock moves only when the test says, with no listener and no worker pool
/// running: bodies go in through `ingest::accept` and each delivery round is one
/// `worker::run_once`, so retry and pause times are checked to the millisecond, without waiting.
pub struct DrivenRelay {
    pub relay: Arc<Relay>,
    pub clock: lbx_relay::clock::Clock,
    pub crm: FakeCrm,
    pub dir: tempfile::TempDir,
}

/// Where a driven relay's clock starts (2023-11-14, Unix ms).
pub const DRIVEN_START_MS: i64 = 1_700_000_000_000;

pub async fn driven_relay(cfg: TestConfig) -> DrivenRelay {
    let crm = FakeCrm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime_in(dir.path(), &crm, &cfg);
    let store = lbx_relay::store::Store::open(&runtime.config.store).await.expect("store opens");
    let clock = lbx_relay::clock::Clock::manual(DRIVEN_START_MS);
    crm.use_clock(&clock);
    let relay = Arc::new(Relay::new(runtime, store, clock.clone()));
    DrivenRelay { relay, clock, crm, dir }
}

impl DrivenRelay {
    /// Encrypts `event` with the test secret and runs it through ingest, as the handler does.
    pub async fn accept(&self, event: &serde_json::Value) -> lbx_relay::ingest::Outcome {
        let sealed = seal(event, SECRET);
        lbx_relay::ingest::accept(&self.relay.ingest, "learnybox", sealed.body.as_bytes(), &sealed.headers)
            .await
            .expect("stored")
    }

    /// One delivery round at the clock's time: how many deliveries were attempted.
    pub async fn round(&self) -> usize {
        lbx_relay::delivery::worker::run_once(&self.relay.delivery).await
    }

    /// Runs delivery rounds until `done`, moving the clock `step_ms` forward whenever a round is
    /// waiting (a gate waits on the relay's clock for a rate window or a pause) and between
    /// rounds; fails past `max_ms` of driven time. Time is driven, never waited for: the short
    /// real pauses only let the round's requests reach the CRM on loopback.
    pub async fn drive(&self, step_ms: i64, max_ms: i64, done: impl Fn(&Self) -> bool) {
        let start = self.clock.now_ms();
        while !done(self) {
            assert!(self.clock.now_ms() - start <= max_ms, "not done after {max_ms} ms of driven time");
            let delivery = self.relay.delivery.clone();
            let mut round = tokio::spawn(async move { lbx_relay::delivery::worker::run_once(&delivery).await });
            loop {
                tokio::select! {
                    r = &mut round => { r.unwrap(); break }
                    _ = tokio::time::sleep(Duration::from_millis(2)) => self.advance_ms(step_ms),
                }
            }
            self.advance_ms(step_ms);
        }
    }

    /// When each request of every attempt was sent, by the relay's clock (Unix ms), in order:
    /// what the relay recorded, not when the CRM saw it.
    pub fn sent_times(&self) -> Vec<i64> {
        let conn = rusqlite::Connection::open(self.dir.path().join("relay.db")).unwrap();
        let mut stmt = conn.prepare("SELECT detail FROM attempt_log WHERE detail IS NOT NULL").unwrap();
        let details: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        let mut times: Vec<i64> = details
            .iter()
            .flat_map(|d| serde_json::from_str::<Vec<serde_json::Value>>(d).unwrap())
            .map(|x| {
                let at = humantime::parse_rfc3339(x["sent_at"].as_str().expect("each request says when it was sent"));
                at.unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
            })
            .collect();
        times.sort();
        times
    }

    /// Moves the relay's clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: i64) {
        self.clock.advance(Duration::from_millis(ms as u64));
    }

    /// Milliseconds since the clock started.
    pub fn elapsed_ms(&self) -> i64 {
        self.clock.now_ms() - DRIVEN_START_MS
    }

    /// Reads a number from the SQLite file, as an operator with sqlite3 would.
    pub fn count(&self, sql: &str) -> i64 {
        count_in(&self.dir.path().join("relay.db"), sql)
    }
}

impl TestApp {
    /// Stops the relay gracefully and hands back its directory and CRM (for a restart).
    pub async fn stop(mut self) -> (tempfile::TempDir, FakeCrm) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        let TestApp { dir, crm, .. } = self;
        (dir, crm)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("relay.db")
    }

    pub async fn post_hook(&self, body: impl Into<String>, headers: &[(String, String)]) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/hooks/learnybox", self.public))
            .header("Content-Type", "application/json")
            .body(body.into());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send().await.unwrap()
    }

    /// Encrypts `event` with the test secret (fresh IV) and posts it.
    pub async fn post_event(&self, event: &serde_json::Value) -> reqwest::Response {
        let sealed = seal(event, SECRET);
        self.post_hook(sealed.body, &sealed.headers).await
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()
    }

    pub async fn admin_post(&self, path: &str) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()
    }

    pub async fn deliveries(&self, query: &str) -> Vec<serde_json::Value> {
        let resp = self.admin_get(&format!("/api/deliveries?{query}")).await;
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        v["items"].as_array().unwrap().clone()
    }

    /// Reads a number from the SQLite file, as an operator with sqlite3 would.
    pub fn count(&self, sql: &str) -> i64 {
        count_in(&self.db_path(), sql)
    }
}

pub fn count_in(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

pub fn seal(event: &serde_json::Value, secret: &str) -> crypto::SealedBody {
    crypto::seal(event.to_string().as_bytes(), secret, Variant::JsonDataIv, KeyForm::Raw, crypto::random_iv()).unwrap()
}

/// The sample events shipped with the shared vectors.
pub fn sample_events() -> Vec<serde_json::Value> {
    serde_json::from_str(lbx_relay::cli::SAMPLE_EVENTS).unwrap()
}

/// Polls `check` every 10 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// The test's own HTTP client: it talks to loopback servers only, so it ignores the proxy
/// variables of the caller's shell.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A port that was free a moment ago (for configs handed to a separate process).
/// A port for a relay process to listen on: free now, never handed to another test of this run,
/// and below the kernel's ephemeral range. A port picked with `bind(0)` and released comes from
/// that range, where the kernel hands ports to every other `bind(0)` and outgoing connection of
/// the suite, so one could take it before the spawned relay binds it (the relay then exits, or a
/// test talks to somebody else's server).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 15_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().clamp(LOW + 1_000, 32_768);
    let span = high - LOW;
    // Runs of the suite started together (or one right after another) begin at different places.
    let start = (std::process::id() * 7_919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left in {LOW}..{high}");
        let port = (LOW + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range (32768 by default).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Two different free ports (see `free_port`).
pub fn two_free_ports() -> (u16, u16) {
    (free_port(), free_port())
}

/// Writes routes.toml and the template for a relay process run from the built binary; returns
/// (public, admin) addresses.
pub fn write_process_config(dir: &Path, cfg: &TestConfig, crm_url: &str) -> (String, String) {
    let (p, a) = two_free_ports();
    let (public, admin) = (format!("127.0.0.1:{p}"), format!("127.0.0.1:{a}"));
    std::fs::write(dir.join("crm.json.hbs"), cfg.template).unwrap();
    std::fs::write(dir.join("routes.toml"), cfg.toml(crm_url, &public, &admin)).unwrap();
    (public, admin)
}

/// Starts `lbx-relay serve` on the config in `dir`, with `extra` arguments before `serve`.
/// `lbx-relay serve` on the config in `dir`, with no variable from the calling shell (`RUST_LOG`,
/// `LBX_CONFIG`, … would change what it does).
pub fn start_process(dir: &Path, extra: &[&str], stderr: std::process::Stdio) -> std::process::Child {
    start_process_with(dir, extra, stderr, &[])
}

/// The same, with these variables (and no other) in its environment.
pub fn start_process_with(
    dir: &Path,
    extra: &[&str],
    stderr: std::process::Stdio,
    envs: &[(&str, &str)],
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_lbx-relay"))
        .env_clear()
        .envs(envs.iter().copied())
        .args(extra)
        .args(["serve", "-c"])
        .arg(dir.join("routes.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

pub async fn wait_ready(admin: &str) {
    let client = client();
    let url = format!("http://{admin}/readyz");
    wait_until(Duration::from_secs(10), "relay ready", || {
        let client = client.clone();
        let url = url.clone();
        async move { client.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
}

/// Runs the built binary with `args` and exactly the variables `envs` (none from the calling
/// shell, which may export the examples' variables); returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lbx-relay"));
    cmd.env_clear()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh schema on the test PostgreSQL (`LBX_TEST_POSTGRES_URL`), or `None` (and a note that
/// the test was skipped) when the variable is not set or empty.
pub async fn pg_schema(test: &str) -> Option<PgSchema> {
    let Some(base) = std::env::var("LBX_TEST_POSTGRES_URL").ok().filter(|v| !v.trim().is_empty()) else {
        // Written past the test harness's capture so the skip is visible in the run's output.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped {test}: LBX_TEST_POSTGRES_URL is not set");
        return None;
    };
    let name = format!("lbx_test_{}", uuid_simple());
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.expect("test postgres reachable");
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE SCHEMA {name}")).await.unwrap();
    Some(PgSchema { base, name, client })
}

pub struct PgSchema {
    pub base: String,
    pub name: String,
    pub client: tokio_postgres::Client,
}

impl PgSchema {
    /// The store URL whose connections use this schema.
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.base, self.name)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let sql = sql.replace("FROM ", &format!("FROM {}.", self.name));
        self.client.query_one(&sql, &[]).await.unwrap().get(0)
    }

    pub async fn drop(self) {
        let _ = self.client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name)).await;
    }
}

fn uuid_simple() -> String {
    lbx_relay::event::new_id().replace('-', "")
}

/// Now by the system clock (Unix ms), for tests that stand in for the outside world.
pub fn now_ms() -> i64 {
    lbx_relay::clock::Clock::system().now_ms()
}

/// `[store]` as a test wants it: the given backend, an hour of retention, small pools.
pub fn store_config(backend: lbx_relay::config::StoreBackend) -> lbx_relay::config::StoreConfig {
    lbx_relay::config::StoreConfig {
        backend,
        retention: Duration::from_secs(3600),
        pool_size: 8,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(10),
        encryption_key: None,
        previous_encryption_keys: Vec::new(),
        sync: Default::default(),
    }
}

#[test]
fn relay_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
    assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    let low = ephemeral_low();
    if low >= 16_000 {
        assert!(ports.iter().all(|&p| u32::from(p) < low), "{ports:?} reach the ephemeral range from {low}");
    }
    assert!(ports.iter().all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()), "{ports:?}");
}

/// Reads one whole HTTP/1.1 request from `stream` into `buf` (its head, then the body its
/// `Content-Length` announces) and drops it from `buf`, keeping what came after it; `false` once
/// the peer has closed the connection (or it failed). For loopback CRMs that speak raw TCP.
pub async fn read_http_request(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    use tokio::io::AsyncReadExt;
    let body_at = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..body_at]).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap_or(0));
    while buf.len() < body_at + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..body_at + length);
    true
}
