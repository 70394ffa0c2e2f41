//! routes.toml → a typed, validated [`Config`]: `${VAR}` interpolation, durations, sizes, relative
//! paths resolved against the config file's directory, and every cross-check that can be made
//! before a port is bound. `serve`, `check` and `POST /api/reload` all go through [`Config::load`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::crypto::{EnvelopeMode, Variant};

/// Event-type pointers tried when a source does not set `event_field`.
pub const DEFAULT_EVENT_FIELDS: &[&str] = &["/event", "/type", "/event_type", "/event_name"];
/// Event-timestamp pointers tried when a source does not set `timestamp_field` (for `max_age`).
pub const DEFAULT_TIMESTAMP_FIELDS: &[&str] = &["/created_at", "/timestamp", "/date", "/time"];
/// Event-id pointers tried when a source does not set `id_field`.
pub const DEFAULT_ID_FIELDS: &[&str] = &["/id", "/event_id", "/uid"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{}", .problems.join("\n"))]
    Invalid { problems: Vec<String> },
}

impl ConfigError {
    /// Every problem as its own line, for `check` and `/api/reload`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems } => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// The directory relative paths resolve against.
    pub dir: PathBuf,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub sources: BTreeMap<String, SourceConfig>,
    pub retry: RetryPolicy,
    pub delivery: DeliveryConfig,
    pub quarantine: QuarantineConfig,
    /// `[alerts]`, when set.
    pub alerts: Option<AlertsConfig>,
    pub routes: Vec<RouteConfig>,
    /// Every secret value of this configuration, to mask in errors, logs and stored rows.
    pub secrets: crate::secrets::Masker,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: String,
    pub admin_token: Option<SecretString>,
    pub max_body: usize,
    /// Log e-mail addresses in clear (masked by default).
    pub log_pii: bool,
    /// Longest a sender may take to send a request's body once its headers are in (else 408).
    pub body_timeout: Duration,
    /// Longest a new connection may take to send its request headers.
    pub header_timeout: Duration,
    /// Open connections the public listener keeps at most; more wait in the kernel's backlog.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// Fully delivered events older than this are purged.
    pub retention: Duration,
    /// PostgreSQL: connections per relay process.
    pub pool_size: usize,
    /// PostgreSQL: how long to wait for a connection (and for a pooled one to be free).
    pub connect_timeout: Duration,
    /// PostgreSQL: longest statement before the server cancels it.
    pub statement_timeout: Duration,
    /// Seals payloads, answers, errors, quarantined bodies and refresh tokens (AES-256-GCM).
    pub encryption_key: Option<SecretString>,
    /// Keys that still open values written before a rotation.
    pub previous_encryption_keys: Vec<SecretString>,
}

#[derive(Debug, Clone)]
pub enum StoreBackend {
    Sqlite { path: PathBuf },
    Postgres { url: SecretString },
}

impl PartialEq for StoreBackend {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (StoreBackend::Sqlite { path: a }, StoreBackend::Sqlite { path: b }) => a == b,
            (StoreBackend::Postgres { url: a }, StoreBackend::Postgres { url: b }) => {
                a.expose_secret() == b.expose_secret()
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub secret_keys: Vec<SecretString>,
    pub envelope: EnvelopeMode,
    pub allow_plaintext: bool,
    pub dedup_window: Duration,
    pub event_field: Vec<String>,
    pub id_field: Vec<String>,
    pub path_token: Option<SecretString>,
    /// Warn (log + metric) when no body arrived for this long.
    pub alert_after: Option<Duration>,
    /// Events whose own timestamp is further than this from their arrival are dropped (a
    /// captured body replayed after the dedup window).
    pub max_age: Option<Duration>,
    /// Where the event's own timestamp is looked for.
    pub timestamp_field: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay before each retry; its length is the number of retries after the first attempt.
    pub schedule: Vec<Duration>,
    /// Whole-request timeout for one attempt.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Deliveries sent concurrently by this process.
    pub workers: usize,
    /// How long a claimed delivery stays reserved beyond its timeout before another worker may
    /// take it over (covers a crash mid-request).
    pub lease: Duration,
    /// Longest sleep of an idle worker; new events wake it at once.
    pub poll_interval: Duration,
}

/// Where and when alerts are sent (`[alerts]`).
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub url: SecretString,
    pub format: AlertFormat,
    /// A route's share of failed attempts over `window` that raises an alert (`None`: off).
    pub failure_rate: Option<f64>,
    pub window: Duration,
    /// Fewer attempts than this in the window never raise the failure-rate alert.
    pub min_attempts: u64,
    /// One alert key is said at most once per this.
    pub repeat_after: Duration,
    pub check_every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertFormat {
    /// `{"text": "…"}` (Slack, Mattermost, Rocket.Chat, Google Chat, Discord's /slack).
    Slack,
    /// `{"source","kind","key","state","text","at"}`.
    Json,
}

#[derive(Debug, Clone)]
pub struct QuarantineConfig {
    pub max_items: u64,
    /// Bodies and headers kept, in bytes (both bounds apply).
    pub max_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub events: Vec<String>,
    pub when: Option<String>,
    /// `vars = { … }`: strings, numbers or tables (e.g. a tag-name → id map), as `{{vars.NAME}}`.
    pub vars: BTreeMap<String, serde_json::Value>,
    pub retry: RetryPolicy,
    /// At most this many requests per window (`rate_limit = "100/10s"`).
    pub rate_limit: Option<RateLimit>,
    /// At most this many requests in flight at once.
    pub concurrency: Option<usize>,
    /// Deliveries sharing the rendered key go out one at a time, in arrival order.
    pub order_by: Option<String>,
    /// The requests one delivery makes, in order: one for a plain route (`url` + `template`), or
    /// the route's `[[routes.steps]]`.
    pub steps: Vec<StepConfig>,
    /// `auth = { type = "oauth2", … }`: a bearer token fetched and refreshed by the relay.
    pub oauth: Option<OAuthConfig>,
    /// `allow_templated_host = true`: a URL may take its host or port from the event. Its requests
    /// then never go to a loopback, private or link-local address unless listed below.
    pub allow_templated_host: bool,
    /// Hosts (names or addresses, as written in the URL) a templated URL may reach even though
    /// they are not public.
    pub allow_private_hosts: Vec<String>,
}

/// OAuth 2.0 for a route: client credentials, or a refresh token when one is given.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// The first refresh token; a rotated one is kept in the store and wins over this.
    pub refresh_token: Option<SecretString>,
    pub scope: Option<String>,
}

impl OAuthConfig {
    /// Routes using the same app at the same server share one token.
    pub fn cache_key(&self) -> String {
        format!("{} {}", self.token_url, self.client_id)
    }
}

/// One request of a route. A plain route has one, named `request`.
#[derive(Debug, Clone)]
pub struct StepConfig {
    pub name: String,
    /// Sent only when this renders true (steps of a multi-step route).
    pub when: Option<String>,
    /// The body template; no body without one.
    pub template: Option<PathBuf>,
    pub url: String,
    pub method: reqwest::Method,
    /// The route's headers, then the step's own (a step's header replaces the route's).
    pub headers: Vec<HeaderSpec>,
    /// Non-2xx statuses that are an answer to branch on (`steps.NAME.status`), not a failure.
    pub accept: Vec<u16>,
    /// Answers that would fail the delivery at once but are worth retrying (`retry_on`).
    pub retry_on: Vec<RetryOn>,
    /// Leave null and blank values out of the JSON body, so an update never clears stored data.
    pub omit_empty: bool,
    /// A JSON Schema the rendered body must satisfy (checked by `check` and before sending).
    pub schema: Option<PathBuf>,
    /// When this step fails, its retry starts again at this earlier step (a search before a create:
    /// a create whose answer was lost must be searched for again, not sent twice).
    pub retry_from: Option<String>,
}

/// `retry_on = [403, { status = 403, body = "REQUEST_LIMIT_EXCEEDED" }]`: an answer with this status
/// (and, when given, this text in its body) is retried on the schedule instead of failing at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    pub status: u16,
    pub body: Option<String>,
}

impl RouteConfig {
    /// The first step: the whole request of a plain route.
    pub fn first(&self) -> &StepConfig {
        &self.steps[0]
    }

    pub fn is_multi_step(&self) -> bool {
        self.steps.len() > 1 || self.steps.first().is_some_and(|s| s.when.is_some())
    }
}

/// `rate_limit = "COUNT/WINDOW"`: at most `count` requests in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub window: Duration,
}

impl RateLimit {
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let (count, window) =
            text.split_once('/').ok_or_else(|| format!("{text:?} is not a rate like \"100/10s\" (COUNT/WINDOW)"))?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("{text:?}: the count must be a whole number above zero"))?;
        let window = window.trim();
        // "5/s" reads as "5/1s".
        let window = if window.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            window.to_string()
        } else {
            format!("1{window}")
        };
        let window = humantime::parse_duration(&window)
            .ok()
            .filter(|w| !w.is_zero())
            .ok_or_else(|| format!("{text:?}: the window must be a duration like \"10s\", \"1m\" or \"s\""))?;
        Ok(RateLimit { count, window })
    }
}

/// One outbound header. Values that came from `${VAR}` are masked by `render`.
#[derive(Debug, Clone)]
pub struct HeaderSpec {
    pub name: String,
    pub value: SecretString,
    pub from_env: bool,
}

impl Config {
    /// Reads, interpolates and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::from_toml(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses `text` as if read from `path`, looking variables up with `env`.
    pub fn from_toml(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        // First pass on the raw text: structure, types and unknown keys, with line numbers.
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: shown.clone(), message: toml_message(&e) })?;
        // Second pass: interpolate every string value, then deserialize again.
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: shown.clone(), message: toml_message(&e) })?;
        let mut unset = Vec::new();
        let mut bad = Vec::new();
        let mut substituted = Vec::new();
        for (key, value) in table.iter_mut() {
            interpolate_value(value, key, env, &mut unset, &mut bad, &mut substituted);
        }
        if !unset.is_empty() || !bad.is_empty() {
            let mut problems: Vec<String> = unset
                .into_iter()
                .map(|(var, at)| match var.strip_prefix("file:") {
                    Some(file) => format!("{shown}: {at}: cannot read the secret file {file}"),
                    None => format!(
                        "{shown}: {at}: environment variable {var} is not set (use ${{{var}:-default}} for a default)"
                    ),
                })
                .collect();
            problems.extend(bad.into_iter().map(|m| format!("{shown}: {m}")));
            return Err(ConfigError::Invalid { problems });
        }
        let interpolated = RawConfig::deserialize(table)
            .map_err(|e| ConfigError::Parse { path: shown.clone(), message: e.to_string() })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut config = validate(interpolated, &raw, path.to_path_buf(), dir).map_err(|e| match e {
            // A problem may quote a value that came from a secret variable (a URL with a key).
            ConfigError::Invalid { problems } => {
                let masker = crate::secrets::Masker::new(substituted.clone());
                ConfigError::Invalid { problems: problems.iter().map(|p| masker.mask(p)).collect() }
            }
            other => other,
        })?;
        config.secrets = crate::secrets::Masker::for_config(&config, substituted);
        Ok(config)
    }

    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.get(name)
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }
}

fn toml_message(e: &toml::de::Error) -> String {
    // toml's Display already carries "TOML parse error at line L, column C" and a caret excerpt.
    e.to_string().trim_end().to_string()
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string below `value`.
fn interpolate_value(
    value: &mut toml::Value,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<(String, String)>,
    bad: &mut Vec<String>,
    substituted: &mut Vec<String>,
) {
    match value {
        toml::Value::String(s) => match interpolate(s, env, substituted) {
            Ok(out) => *s = out,
            Err(Interp::Unset(vars)) => {
                unset.extend(vars.into_iter().map(|v| (v, at.to_string())));
            }
            Err(Interp::Malformed) => bad.push(format!("{at}: unterminated ${{ in a string value")),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{at}[{i}]"), env, unset, bad, substituted);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                interpolate_value(v, &format!("{at}.{k}"), env, unset, bad, substituted);
            }
        }
        _ => {}
    }
}

enum Interp {
    Unset(Vec<String>),
    Malformed,
}

fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>, substituted: &mut Vec<String>) -> Result<String, Interp> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut unset = Vec::new();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(Interp::Malformed)?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if let Some(file) = name.strip_prefix("file:") {
            // A secret mounted as a file (Docker, Kubernetes), read again at every reload.
            match std::fs::read_to_string(file) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\n', '\r']).to_string();
                    out.push_str(&v);
                    substituted.push(v);
                }
                Err(e) => unset.push(format!("file:{file} ({e})")),
            }
            rest = &after[end + 1..];
            continue;
        }
        match (env(name), default) {
            (Some(v), _) => {
                out.push_str(&v);
                if crate::secrets::is_secret_name(name) {
                    substituted.push(v);
                }
            }
            (None, Some(d)) => {
                out.push_str(d);
                if crate::secrets::is_secret_name(name) {
                    substituted.push(d.to_string());
                }
            }
            (None, None) => unset.push(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(Interp::Unset(unset))
    }
}

fn has_var(s: &str) -> bool {
    s.contains("${")
}

// ---- raw, serde-facing shapes ------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    quarantine: RawQuarantine,
    #[serde(default)]
    alerts: Option<RawAlerts>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    url: String,
    #[serde(default = "default_alert_format")]
    format: String,
    #[serde(default = "default_failure_rate")]
    failure_rate: Option<f64>,
    #[serde(default = "default_alert_window")]
    window: String,
    #[serde(default = "default_min_attempts")]
    min_attempts: u64,
    #[serde(default = "default_repeat_after")]
    repeat_after: String,
    #[serde(default = "default_check_every")]
    check_every: String,
}

fn default_alert_format() -> String {
    "slack".into()
}
fn default_failure_rate() -> Option<f64> {
    Some(0.5)
}
fn default_alert_window() -> String {
    "15m".into()
}
fn default_min_attempts() -> u64 {
    5
}
fn default_repeat_after() -> String {
    "1h".into()
}
fn default_check_every() -> String {
    "30s".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    admin_listen: String,
    admin_token: Option<String>,
    max_body: String,
    log_pii: bool,
    body_timeout: String,
    header_timeout: String,
    max_connections: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            admin_token: None,
            max_body: "1MiB".into(),
            log_pii: false,
            body_timeout: "10s".into(),
            header_timeout: "5s".into(),
            max_connections: 512,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    url: String,
    retention: String,
    pool_size: usize,
    connect_timeout: String,
    statement_timeout: String,
    encryption_key: Option<String>,
    previous_encryption_keys: Vec<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            url: "sqlite://relay.db".into(),
            retention: "30days".into(),
            pool_size: 16,
            connect_timeout: "5s".into(),
            statement_timeout: "10s".into(),
            encryption_key: None,
            previous_encryption_keys: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    secret_keys: Vec<String>,
    #[serde(default = "default_envelope")]
    envelope: String,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default = "default_dedup_window")]
    dedup_window: String,
    #[serde(default)]
    event_field: Option<Vec<String>>,
    #[serde(default)]
    id_field: Option<Vec<String>>,
    #[serde(default)]
    path_token: Option<String>,
    #[serde(default)]
    alert_after: Option<String>,
    #[serde(default)]
    max_age: Option<String>,
    #[serde(default)]
    timestamp_field: Option<Vec<String>>,
}

fn default_envelope() -> String {
    "auto".into()
}
fn default_dedup_window() -> String {
    "24h".into()
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    schedule: Option<Vec<String>>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    workers: usize,
    lease: String,
    poll_interval: String,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery { workers: 16, lease: "30s".into(), poll_interval: "1s".into() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQuarantine {
    max_items: u64,
    max_bytes: String,
}

impl Default for RawQuarantine {
    fn default() -> Self {
        RawQuarantine { max_items: 10_000, max_bytes: "100MiB".into() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    events: Vec<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    vars: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    rate_limit: Option<String>,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(default)]
    accept: Vec<u16>,
    #[serde(default)]
    retry_on: Vec<RawRetryOn>,
    #[serde(default)]
    omit_empty: Option<bool>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    allow_templated_host: bool,
    #[serde(default)]
    allow_private_hosts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    template: Option<String>,
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    accept: Vec<u16>,
    #[serde(default)]
    retry_on: Vec<RawRetryOn>,
    #[serde(default)]
    omit_empty: Option<bool>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    retry_from: Option<String>,
}

/// One `retry_on` entry: a bare status, or `{ status, body }`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawRetryOn {
    Status(u16),
    Match {
        status: u16,
        #[serde(default)]
        body: Option<String>,
    },
}

impl RawRetryOn {
    fn resolve(&self) -> RetryOn {
        match self {
            RawRetryOn::Status(status) => RetryOn { status: *status, body: None },
            RawRetryOn::Match { status, body } => {
                RetryOn { status: *status, body: body.clone().filter(|b| !b.is_empty()) }
            }
        }
    }
}

/// `auth = { type = "basic", username = "…", password = "…" }` or `{ type = "bearer", token = "…" }`:
/// turned into an `Authorization` header that `render` always masks.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawAuth {
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        refresh_token: Option<String>,
        #[serde(default)]
        scope: Option<String>,
    },
}

// ---- validation --------------------------------------------------------------------------------

fn validate(raw: RawConfig, uninterpolated: &RawConfig, path: PathBuf, dir: PathBuf) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let mut problems = Vec::new();
    let mut problem = |at: &str, msg: String| problems.push(format!("{shown}: {at}: {msg}"));

    let max_body = match raw.server.max_body.parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() > 0 => usize::try_from(b.as_u64()).unwrap_or(usize::MAX),
        _ => {
            problem("server.max_body", format!("{:?} is not a size like \"1MiB\"", raw.server.max_body));
            1 << 20
        }
    };
    for (key, addr) in [("server.listen", &raw.server.listen), ("server.admin_listen", &raw.server.admin_listen)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            problem(key, format!("{addr:?} is not an address like \"0.0.0.0:8080\""));
        }
    }
    if same_listener(&raw.server.listen, &raw.server.admin_listen) {
        problem(
            "server.admin_listen",
            format!("{:?} is also server.listen: the two listeners need different addresses", raw.server.admin_listen),
        );
    }
    let body_timeout = duration(&raw.server.body_timeout, "server.body_timeout", &mut problem);
    let header_timeout = duration(&raw.server.header_timeout, "server.header_timeout", &mut problem);
    if raw.server.max_connections == 0 {
        problem("server.max_connections", "is 0: nothing could connect; use 1 or more".into());
    }
    let admin_token = raw.server.admin_token.filter(|t| !t.is_empty()).map(SecretString::from);
    if admin_token.as_ref().is_some_and(|t| t.expose_secret().chars().count() < MIN_ADMIN_TOKEN) {
        problem(
            "server.admin_token",
            format!("is shorter than {MIN_ADMIN_TOKEN} characters; use a long random value (openssl rand -hex 24)"),
        );
    }

    let backend = if let Some(rest) = raw.store.url.strip_prefix("sqlite://") {
        let rel = PathBuf::from(rest);
        StoreBackend::Sqlite { path: if rel.is_absolute() { rel } else { dir.join(rel) } }
    } else if raw.store.url.starts_with("postgres://") || raw.store.url.starts_with("postgresql://") {
        StoreBackend::Postgres { url: SecretString::from(raw.store.url.clone()) }
    } else {
        problem("store.url", "must start with sqlite:// or postgres://".into());
        StoreBackend::Sqlite { path: dir.join("relay.db") }
    };
    let store = StoreConfig {
        backend,
        retention: duration(&raw.store.retention, "store.retention", &mut problem),
        pool_size: raw.store.pool_size.max(2),
        connect_timeout: duration(&raw.store.connect_timeout, "store.connect_timeout", &mut problem),
        statement_timeout: duration(&raw.store.statement_timeout, "store.statement_timeout", &mut problem),
        encryption_key: raw.store.encryption_key.filter(|k| !k.trim().is_empty()).map(SecretString::from),
        previous_encryption_keys: raw
            .store
            .previous_encryption_keys
            .into_iter()
            .filter(|k| !k.trim().is_empty())
            .map(SecretString::from)
            .collect(),
    };
    for (i, key) in store.encryption_key.iter().chain(&store.previous_encryption_keys).enumerate() {
        if let Err(e) = crate::store::cipher::parse_key(key.expose_secret()) {
            let at = if i == 0 && store.encryption_key.is_some() {
                "store.encryption_key".to_string()
            } else {
                "store.previous_encryption_keys".to_string()
            };
            problem(&at, e);
        }
    }
    if store.encryption_key.is_none() && !store.previous_encryption_keys.is_empty() {
        problem("store.previous_encryption_keys", "needs store.encryption_key (the key new values use)".into());
    }

    let mut sources = BTreeMap::new();
    if raw.sources.is_empty() {
        problem("sources", "no [sources.NAME] table: nothing could be received".into());
    }
    for (name, s) in raw.sources {
        let at = format!("sources.{name}");
        if !valid_name(&name) {
            problem(&at, "source names may use letters, digits, '-' and '_' only".into());
        }
        let envelope = match s.envelope.as_str() {
            "auto" => EnvelopeMode::Auto,
            other => match Variant::from_name(other) {
                Some(v) => EnvelopeMode::Fixed(v),
                None => {
                    problem(
                        &format!("{at}.envelope"),
                        format!("unknown envelope {other:?}; use \"auto\" or one of {}", Variant::names().join(", ")),
                    );
                    EnvelopeMode::Auto
                }
            },
        };
        if s.secret_keys.iter().all(|k| k.is_empty()) && !s.allow_plaintext {
            problem(
                &format!("{at}.secret_keys"),
                "at least one non-empty secret key is needed (or allow_plaintext = true)".into(),
            );
        }
        let dedup_window = duration(&s.dedup_window, &format!("{at}.dedup_window"), &mut problem);
        let pointers = |given: Option<Vec<String>>,
                        defaults: &[&str],
                        key: &str,
                        problem: &mut dyn FnMut(&str, String)| {
            let list = given.unwrap_or_else(|| defaults.iter().map(|s| s.to_string()).collect());
            for p in &list {
                if !p.starts_with('/') {
                    problem(&format!("{at}.{key}"), format!("{p:?} is not a JSON pointer (it must start with '/')"));
                }
            }
            list
        };
        let alert_after = s.alert_after.as_deref().map(|a| duration(a, &format!("{at}.alert_after"), &mut problem));
        let event_field = pointers(s.event_field, DEFAULT_EVENT_FIELDS, "event_field", &mut problem);
        let id_field = pointers(s.id_field, DEFAULT_ID_FIELDS, "id_field", &mut problem);
        let timestamp_field = pointers(s.timestamp_field, DEFAULT_TIMESTAMP_FIELDS, "timestamp_field", &mut problem);
        let max_age = s.max_age.as_deref().map(|a| duration(a, &format!("{at}.max_age"), &mut problem));
        sources.insert(
            name.clone(),
            SourceConfig {
                name,
                secret_keys: s.secret_keys.into_iter().filter(|k| !k.is_empty()).map(SecretString::from).collect(),
                envelope,
                allow_plaintext: s.allow_plaintext,
                dedup_window,
                event_field,
                id_field,
                path_token: s.path_token.filter(|t| !t.is_empty()).map(SecretString::from),
                alert_after,
                max_age,
                timestamp_field,
            },
        );
    }

    let quarantine = QuarantineConfig {
        max_items: raw.quarantine.max_items,
        max_bytes: match raw.quarantine.max_bytes.parse::<bytesize::ByteSize>() {
            Ok(b) => b.as_u64(),
            Err(_) => {
                problem(
                    "quarantine.max_bytes",
                    format!("{:?} is not a size like \"100MiB\"", raw.quarantine.max_bytes),
                );
                0
            }
        },
    };
    let alerts = raw.alerts.clone().map(|a| {
        if !(a.url.starts_with("https://") || a.url.starts_with("http://")) {
            problem("alerts.url", "must be an http(s) URL (a Slack incoming webhook, or any JSON endpoint)".into());
        }
        let format = match a.format.as_str() {
            "slack" => AlertFormat::Slack,
            "json" => AlertFormat::Json,
            other => {
                problem("alerts.format", format!("{other:?}: use \"slack\" or \"json\""));
                AlertFormat::Slack
            }
        };
        if a.failure_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            problem("alerts.failure_rate", "must be a share between 0 (off) and 1, like 0.5".into());
        }
        AlertsConfig {
            url: SecretString::from(a.url),
            format,
            failure_rate: a.failure_rate.filter(|r| *r > 0.0),
            window: duration(&a.window, "alerts.window", &mut problem),
            min_attempts: a.min_attempts.max(1),
            repeat_after: duration(&a.repeat_after, "alerts.repeat_after", &mut problem),
            check_every: duration(&a.check_every, "alerts.check_every", &mut problem),
        }
    });
    let retry = retry_policy(&raw.retry, None, "retry", &mut problem);
    let delivery = DeliveryConfig {
        workers: if raw.delivery.workers == 0 {
            problem("delivery.workers", "is 0: nothing would ever be delivered; use 1 or more".into());
            1
        } else {
            raw.delivery.workers
        },
        lease: duration(&raw.delivery.lease, "delivery.lease", &mut problem),
        poll_interval: duration(&raw.delivery.poll_interval, "delivery.poll_interval", &mut problem),
    };

    let mut routes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let at = format!("routes[{i}] ({})", r.name);
        if !valid_name(&r.name) {
            problem(&at, "name may use letters, digits, '-', '_' and '.' only".into());
        }
        if !seen.insert(r.name.clone()) {
            problem(&at, "a route with this name already exists".into());
        }
        if r.events.is_empty() {
            problem(&format!("{at}.events"), "list at least one event glob (\"*\" matches every event)".into());
        }
        for g in &r.events {
            if let Err(e) = glob::Pattern::new(g) {
                problem(&format!("{at}.events"), format!("{g:?} is not a valid glob: {e}"));
            }
        }
        let uninterpolated_route = uninterpolated.routes.get(i);
        let raw_headers = uninterpolated_route.map(|u| &u.headers).cloned().unwrap_or_default();
        let mut headers = header_specs(&r.headers, &raw_headers, &at, &mut problem);
        let mut oauth = None;
        if let Some(auth) = &r.auth {
            if headers.iter().any(|h| h.name.eq_ignore_ascii_case("authorization")) {
                problem(&format!("{at}.auth"), "set either auth or an Authorization header, not both".into());
            }
            let value = match auth {
                RawAuth::Basic { username, password } => {
                    use base64::Engine;
                    let pair = zeroize::Zeroizing::new(format!("{username}:{password}"));
                    Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())))
                }
                RawAuth::Bearer { token } => Some(format!("Bearer {token}")),
                RawAuth::Oauth2 { token_url, client_id, client_secret, refresh_token, scope } => {
                    if reqwest::Url::parse(token_url).map(|u| u.scheme().starts_with("http")) != Ok(true) {
                        problem(&format!("{at}.auth.token_url"), format!("{token_url:?} is not an http(s) URL"));
                    }
                    oauth = Some(OAuthConfig {
                        token_url: token_url.clone(),
                        client_id: client_id.clone(),
                        client_secret: SecretString::from(client_secret.clone()),
                        refresh_token: refresh_token.clone().filter(|t| !t.is_empty()).map(SecretString::from),
                        scope: scope.clone().filter(|s| !s.is_empty()),
                    });
                    None
                }
            };
            if let Some(value) = value {
                if reqwest::header::HeaderValue::from_str(&value).is_err() {
                    problem(&format!("{at}.auth"), "the credentials do not make a valid header value".into());
                }
                headers.push(HeaderSpec {
                    name: "Authorization".into(),
                    value: SecretString::from(value),
                    from_env: true,
                });
            }
        }
        let rate_limit = r
            .rate_limit
            .as_deref()
            .and_then(|t| RateLimit::parse(t).map_err(|m| problem(&format!("{at}.rate_limit"), m)).ok());
        if r.concurrency == Some(0) {
            problem(&format!("{at}.concurrency"), "must be at least 1".into());
        }
        let resolve = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                dir.join(p)
            }
        };
        let mut steps = Vec::new();
        if r.steps.is_empty() {
            check_statuses(&r.accept, &format!("{at}.accept"), &mut problem);
            let (Some(url), Some(template)) = (&r.url, &r.template) else {
                problem(&at, "a route needs `url` and `template`, or `[[routes.steps]]`".into());
                continue;
            };
            steps.push(StepConfig {
                name: "request".into(),
                when: None,
                template: Some(resolve(template)),
                url: check_url(url, &format!("{at}.url"), &mut problem),
                method: method(r.method.as_deref(), &format!("{at}.method"), &mut problem),
                headers: headers.clone(),
                accept: r.accept.clone(),
                retry_on: retry_on(&r.retry_on, &[], &format!("{at}.retry_on"), &mut problem),
                omit_empty: r.omit_empty.unwrap_or(false),
                schema: r.schema.as_deref().map(resolve),
                retry_from: None,
            });
        } else {
            for key in [
                ("url", r.url.is_some()),
                ("template", r.template.is_some()),
                ("method", r.method.is_some()),
                ("accept", !r.accept.is_empty()),
                ("schema", r.schema.is_some()),
            ] {
                if key.1 {
                    problem(&format!("{at}.{}", key.0), "set it on each of the route's steps instead".into());
                }
            }
            let mut names = std::collections::HashSet::new();
            for (j, st) in r.steps.iter().enumerate() {
                let sat = format!("{at}.steps[{j}] ({})", st.name);
                if !valid_name(&st.name) || st.name.contains('.') || st.name.contains('-') {
                    problem(
                        &sat,
                        "step names may use letters, digits and '_' only (they are used as steps.NAME)".into(),
                    );
                }
                if !names.insert(st.name.clone()) {
                    problem(&sat, "a step with this name already exists in the route".into());
                }
                check_statuses(&st.accept, &format!("{sat}.accept"), &mut problem);
                let raw_step_headers =
                    uninterpolated_route.and_then(|u| u.steps.get(j)).map(|u| u.headers.clone()).unwrap_or_default();
                let own = header_specs(&st.headers, &raw_step_headers, &sat, &mut problem);
                let mut merged: Vec<HeaderSpec> = headers
                    .iter()
                    .filter(|h| !own.iter().any(|o| o.name.eq_ignore_ascii_case(&h.name)))
                    .cloned()
                    .collect();
                merged.extend(own);
                steps.push(StepConfig {
                    name: st.name.clone(),
                    when: st.when.clone().filter(|w| !w.trim().is_empty()),
                    template: st.template.as_deref().map(resolve),
                    url: check_url(&st.url, &format!("{sat}.url"), &mut problem),
                    method: method(st.method.as_deref(), &format!("{sat}.method"), &mut problem),
                    headers: merged,
                    accept: st.accept.clone(),
                    retry_on: retry_on(&r.retry_on, &st.retry_on, &format!("{sat}.retry_on"), &mut problem),
                    omit_empty: st.omit_empty.or(r.omit_empty).unwrap_or(false),
                    schema: st.schema.as_deref().map(resolve),
                    retry_from: st.retry_from.clone(),
                });
                if let Some(from) = &st.retry_from {
                    if !r.steps[..j].iter().any(|earlier| &earlier.name == from) {
                        problem(&format!("{sat}.retry_from"), format!("{from:?} is not an earlier step of this route"));
                    }
                }
                if st.schema.is_some() && st.template.is_none() {
                    problem(&format!("{sat}.schema"), "a schema checks the body: the step needs a `template`".into());
                }
            }
        }
        for step in &steps {
            if templated_authority(&step.url) && !r.allow_templated_host {
                problem(
                    &at,
                    format!(
                        "step {}: the URL takes its host or port from the event ({}), so a sender could aim \
                         requests at any server; template the path or query instead, or set \
                         allow_templated_host = true (private addresses stay refused unless listed in \
                         allow_private_hosts)",
                        step.name, step.url
                    ),
                );
            }
        }
        let route_retry = match &r.retry {
            Some(o) => retry_policy(o, Some(&retry), &format!("{at}.retry"), &mut problem),
            None => retry.clone(),
        };
        routes.push(RouteConfig {
            name: r.name,
            events: r.events,
            when: r.when.filter(|w| !w.trim().is_empty()),
            steps,
            vars: r.vars,
            retry: route_retry,
            rate_limit,
            concurrency: r.concurrency,
            order_by: r.order_by.filter(|o| !o.trim().is_empty()),
            oauth,
            allow_templated_host: r.allow_templated_host,
            allow_private_hosts: r.allow_private_hosts,
        });
    }

    if !problems.is_empty() {
        return Err(ConfigError::Invalid { problems });
    }
    Ok(Config {
        path,
        dir,
        server: ServerConfig {
            listen: raw.server.listen,
            admin_listen: raw.server.admin_listen,
            admin_token,
            max_body,
            log_pii: raw.server.log_pii,
            body_timeout,
            header_timeout,
            max_connections: raw.server.max_connections,
        },
        store,
        sources,
        retry,
        delivery,
        quarantine,
        alerts,
        routes,
        secrets: crate::secrets::Masker::default(),
    })
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// Whether two listen addresses take the same port on a shared interface (`0.0.0.0:8080` and
/// `127.0.0.1:8080` cannot both be bound). Port 0 (any free port) never clashes.
fn same_listener(a: &str, b: &str) -> bool {
    match (a.parse::<std::net::SocketAddr>(), b.parse::<std::net::SocketAddr>()) {
        (Ok(a), Ok(b)) => {
            a.port() != 0
                && a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        }
        _ => false,
    }
}

fn method(text: Option<&str>, at: &str, problem: &mut dyn FnMut(&str, String)) -> reqwest::Method {
    let text = text.unwrap_or("POST");
    reqwest::Method::from_bytes(text.to_ascii_uppercase().as_bytes()).unwrap_or_else(|_| {
        problem(at, format!("{text:?} is not an HTTP method"));
        reqwest::Method::POST
    })
}

/// The route's `retry_on` entries followed by the step's own.
fn retry_on(
    route: &[RawRetryOn],
    step: &[RawRetryOn],
    at: &str,
    problem: &mut dyn FnMut(&str, String),
) -> Vec<RetryOn> {
    let rules: Vec<RetryOn> = route.iter().chain(step).map(RawRetryOn::resolve).collect();
    check_statuses(&rules.iter().map(|r| r.status).collect::<Vec<_>>(), at, problem);
    if let Some(ok) = rules.iter().find(|r| (200..300).contains(&r.status)) {
        problem(at, format!("{} is a success: only failing answers can be retried", ok.status));
    }
    rules
}

fn check_statuses(statuses: &[u16], at: &str, problem: &mut dyn FnMut(&str, String)) {
    if let Some(bad) = statuses.iter().find(|s| !(100..=599).contains(*s)) {
        problem(at, format!("{bad} is not an HTTP status"));
    }
}

/// Whether the host or port of a URL template can come from the event: a placeholder before the
/// path that reads anything but `vars` (which the config sets).
pub fn templated_authority(url: &str) -> bool {
    let after = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let mut rest = &after[..authority_end];
    while let Some(start) = rest.find("{{") {
        let inner = &rest[start + 2..];
        let end = inner.find("}}").unwrap_or(inner.len());
        if reads_event(&inner[..end]) {
            return true;
        }
        rest = &inner[end.min(inner.len())..];
    }
    // An unclosed block opened before the path (`{{#if …}}/a{{else}}/b{{/if}}`) is checked above.
    false
}

/// Whether a placeholder's expression reads event data (anything but `vars.…` and literals).
fn reads_event(expr: &str) -> bool {
    // Quoted literals say nothing about where a value comes from.
    let mut unquoted = String::new();
    let mut quoted = false;
    for c in expr.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted {
            unquoted.push(c);
        }
    }
    unquoted
        .split(|c: char| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '@' | '[' | ']')))
        .filter(|w| !w.is_empty())
        .any(|w| {
            let root = w.split(['.', '[']).next().unwrap_or_default();
            matches!(root, "data" | "steps" | "event" | "id" | "source" | "received_at" | "this" | "@root" | "lookup")
                || w.starts_with("..")
        })
}

fn check_url(url: &str, at: &str, problem: &mut dyn FnMut(&str, String)) -> String {
    if !url.contains("{{") && reqwest::Url::parse(url).is_err() {
        problem(at, format!("{url:?} is not an absolute http(s) URL"));
    } else if !(url.starts_with("http://") || url.starts_with("https://")) {
        problem(at, "must start with http:// or https://".into());
    }
    url.to_string()
}

/// Header specs from a table; values that came from `${VAR}` (per `uninterpolated`) are masked.
fn header_specs(
    given: &BTreeMap<String, String>,
    uninterpolated: &BTreeMap<String, String>,
    at: &str,
    problem: &mut dyn FnMut(&str, String),
) -> Vec<HeaderSpec> {
    let mut out = Vec::new();
    for (name, value) in given {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problem(&format!("{at}.headers"), format!("{name:?} is not a valid header name"));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            problem(&format!("{at}.headers.{name}"), "the value is not a valid header value".into());
        }
        let from_env = uninterpolated.get(name).is_some_and(|v| has_var(v));
        out.push(HeaderSpec { name: name.clone(), value: SecretString::from(value.clone()), from_env });
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn duration(text: &str, at: &str, problem: &mut dyn FnMut(&str, String)) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) => d,
        Err(e) => {
            problem(at, format!("{text:?} is not a duration like \"90s\", \"5m\" or \"1h\": {e}"));
            Duration::from_secs(1)
        }
    }
}

fn retry_policy(
    raw: &RawRetry,
    base: Option<&RetryPolicy>,
    at: &str,
    problem: &mut dyn FnMut(&str, String),
) -> RetryPolicy {
    let schedule = match &raw.schedule {
        Some(list) => {
            list.iter().enumerate().map(|(i, d)| duration(d, &format!("{at}.schedule[{i}]"), problem)).collect()
        }
        None => base
            .map(|b| b.schedule.clone())
            .unwrap_or_else(|| [60, 300, 600, 3600].into_iter().map(Duration::from_secs).collect()),
    };
    let timeout = match &raw.timeout {
        Some(t) => duration(t, &format!("{at}.timeout"), problem),
        None => base.map(|b| b.timeout).unwrap_or(Duration::from_secs(15)),
    };
    if timeout.is_zero() {
        problem(&format!("{at}.timeout"), "must be greater than zero".into());
    }
    RetryPolicy { schedule, timeout }
}

impl SourceConfig {
    /// Whether `token` (from the URL) opens this source; constant time.
    pub fn token_matches(&self, token: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        match (&self.path_token, token) {
            (None, None) => true,
            (Some(expected), Some(given)) => bool::from(expected.expose_secret().as_bytes().ct_eq(given.as_bytes())),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("k".repeat(32)),
            "TOKEN" => Some("tok".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/lbx/routes.toml"), &env)
    }

    const MINIMAL: &str = r#"
[sources.learnybox]
secret_keys = ["${KEY}"]

[[routes]]
name = "hook"
events = ["*"]
template = "t.json.hbs"
url = "https://example.test/hook"
headers = { "api-key" = "${TOKEN}", "x-static" = "plain" }
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.server.listen, "0.0.0.0:8080");
        assert_eq!(c.server.max_body, 1 << 20);
        let s = c.source("learnybox").unwrap();
        assert_eq!(s.dedup_window, Duration::from_secs(86_400));
        assert_eq!(s.event_field[0], "/event");
        assert_eq!(c.retry.schedule.len(), 4);
        assert_eq!(c.routes[0].first().template, Some(PathBuf::from("/etc/lbx/t.json.hbs")));
        assert!(matches!(&c.store.backend, StoreBackend::Sqlite { path } if path == Path::new("/etc/lbx/relay.db")));
        let h = &c.routes[0].first().headers;
        assert!(h.iter().find(|h| h.name == "api-key").unwrap().from_env);
        assert!(!h.iter().find(|h| h.name == "x-static").unwrap().from_env);
    }

    #[test]
    fn unset_variables_are_each_named() {
        let text =
            MINIMAL.replace("${TOKEN}", "${BREVO_API_KEY}") + "\n[server]\nadmin_token = \"${LBX_ADMIN_TOKEN}\"\n";
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("BREVO_API_KEY"), "{err}");
        assert!(err.contains("LBX_ADMIN_TOKEN"), "{err}");
    }

    #[test]
    fn defaults_fill_unset_variables() {
        let text = MINIMAL.replace("https://example.test/hook", "${HOOK_URL:-https://fallback.test/x}");
        assert_eq!(parse(&text).unwrap().routes[0].first().url, "https://fallback.test/x");
    }

    #[test]
    fn unknown_keys_are_refused_with_a_line_number() {
        let text = MINIMAL.replace("events = [\"*\"]", "events = [\"*\"]\nretries = 3");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("retries"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn bad_durations_and_globs_are_reported_together() {
        let text = MINIMAL.replace("events = [\"*\"]", "events = [\"[oops\"]\nretry = { schedule = [\"soon\"] }");
        let err = parse(&text).unwrap_err().problems();
        assert_eq!(err.len(), 2, "{err:?}");
    }

    #[test]
    fn route_retry_override_keeps_the_default_timeout() {
        let text = MINIMAL.replace("events = [\"*\"]", "events = [\"*\"]\nretry = { schedule = [\"1s\", \"5s\"] }");
        let c = parse(&text).unwrap();
        assert_eq!(c.routes[0].retry.schedule, vec![Duration::from_secs(1), Duration::from_secs(5)]);
        assert_eq!(c.routes[0].retry.timeout, Duration::from_secs(15));
    }

    #[test]
    fn rates_read_count_and_window() {
        assert_eq!(RateLimit::parse("100/10s"), Ok(RateLimit { count: 100, window: Duration::from_secs(10) }));
        assert_eq!(RateLimit::parse("5/s"), Ok(RateLimit { count: 5, window: Duration::from_secs(1) }));
        assert_eq!(RateLimit::parse("1/1m"), Ok(RateLimit { count: 1, window: Duration::from_secs(60) }));
        for bad in ["100", "0/1s", "x/1s", "5/soon", "5/0s"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_becomes_a_masked_authorization_header() {
        let text = MINIMAL.replace(
            "events = [\"*\"]",
            "events = [\"*\"]\nauth = { type = \"basic\", username = \"any\", password = \"${TOKEN}\" }\nrate_limit = \"5/s\"\nconcurrency = 2",
        );
        let c = parse(&text).unwrap();
        let h = c.routes[0].first().headers.iter().find(|h| h.name == "Authorization").unwrap();
        assert_eq!(h.value.expose_secret(), "Basic YW55OnRvaw==");
        assert!(h.from_env);
        assert_eq!(c.routes[0].concurrency, Some(2));
        let bad = MINIMAL.replace("events = [\"*\"]", "events = [\"*\"]\nauth = { type = \"digest\" }");
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn vars_keep_tables_and_numbers_for_templates() {
        let text = MINIMAL.replace(
            "events = [\"*\"]",
            "events = [\"*\"]\nvars = { list = \"${TOKEN}\", tag_ids = { \"VIP client\" = 7 } }",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.routes[0].vars["list"], "tok");
        assert_eq!(c.routes[0].vars["tag_ids"]["VIP client"], 7);
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = parse(MINIMAL).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(&"k".repeat(32)));
        assert!(!dbg.contains("\"tok\""));
    }
}
