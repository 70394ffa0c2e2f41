//! routes.toml → a typed, validated [`Config`]: `${VAR}` interpolation, durations, sizes, relative
//! paths resolved against the config file's directory, and every cross-check that can be made
//! before a port is bound. `serve`, `check` and `POST /api/reload` all go through [`Config::load`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::crypto::{EnvelopeMode, Variant};

mod api;
mod interpolate;
mod lines;
mod raw;
mod validate;

pub use api::{bundled_template, ApiConfig, ApiList};
use interpolate::{interpolate_value, toml_message};
pub use lines::line_of;
use raw::RawConfig;
use validate::validate;
pub use validate::{templated_authority, MIN_ADMIN_TOKEN};

/// The KEY=VALUE lines of an env file (comments, blank lines, `export`, quotes as in `.env` files),
/// at most 64 KiB.
fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > 64 * 1024 {
        return Err(format!("{} bytes; an env file holds at most 64 KiB", meta.len()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut vars = BTreeMap::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        // The error names the line, never its content (it may hold a secret).
        let (k, v) = item.map_err(|e| match e {
            dotenvy::Error::LineParse(line, _) => {
                let n = text.lines().position(|l| l.contains(line.trim())).map_or(0, |i| i + 1);
                format!("line {n} is not KEY=VALUE")
            }
            other => other.to_string(),
        })?;
        vars.insert(k, v);
    }
    Ok(vars)
}

/// `FILE: KEY: message` → `FILE:LINE: KEY: message` when KEY is found in the file's text.
fn with_line(text: &str, shown: &str, problem: &str) -> String {
    let Some(rest) = problem.strip_prefix(shown).and_then(|r| r.strip_prefix(": ")) else {
        return problem.to_string();
    };
    let at = rest.split(": ").next().unwrap_or_default();
    match lines::line_of(text, at) {
        Some(line) => format!("{shown}:{line}: {rest}"),
        None => problem.to_string(),
    }
}

/// Event-type pointers tried when a source does not set `event_field`.
pub const DEFAULT_EVENT_FIELDS: &[&str] = &["/event", "/type", "/event_type", "/event_name"];
/// Event-timestamp pointers tried when a source does not set `timestamp_field` (for `max_age`).
pub const DEFAULT_TIMESTAMP_FIELDS: &[&str] = &["/created_at", "/timestamp", "/date", "/time"];
/// Event-id pointers tried when a source does not set `id_field`.
pub const DEFAULT_ID_FIELDS: &[&str] = &["/id", "/event_id", "/uid"];

/// A field absent from this many of a route's latest events in a row is said (log, alert):
/// `[alerts] field_absent_after`'s default.
pub const DEFAULT_FIELD_ABSENT_AFTER: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{path}: cannot read the config file: {source} (`lbx-relay init [--connector NAME] DIR` writes a working \
         one; give its path with -c or LBX_CONFIG)"
    )]
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
    /// Requests one client address may have in progress on the public listener (0: no cap);
    /// more are answered 429 at once, so one slow sender cannot hold every connection.
    pub max_connections_per_ip: usize,
    /// Addresses the per-address cap does not apply to (a reverse proxy or load tool on this host).
    pub per_ip_exempt: Vec<std::net::IpAddr>,
    /// Bytes per second a body must arrive at, on average, after its first second (else 408).
    pub min_body_rate: u64,
    /// `env_file`, resolved against the config's directory: read again at every reload.
    pub env_file: Option<PathBuf>,
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
    /// How durable an acknowledged event is on SQLite (`[store] sync`).
    pub sync: SyncMode,
}

/// `[store] sync`: what SQLite does before an event is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `synchronous = FULL`: fsync before every 200; an acknowledged event survives a power loss.
    #[default]
    Full,
    /// `synchronous = NORMAL` in WAL: survives a crash of the relay; the last commits may be lost
    /// on a power loss or an OS crash.
    Normal,
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
    /// With `max_age`: an event without a readable timestamp is taken in (`undated = "accept"`)
    /// instead of dropped like a stale one.
    pub accept_undated: bool,
    /// `[sources.NAME.api]`: reconciliation with Learnybox's API (off when absent).
    pub api: Option<ApiConfig>,
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
    /// How many steps (0–19) below the listener's and the store writer's the delivery threads'
    /// CPU priority is (`nice`): a burst is acknowledged first, deliveries catch up after it.
    /// 10 by default with SQLite, 0 with PostgreSQL.
    pub nice: u8,
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
    /// A field a route reads that was absent in this many of its latest events in a row alerts
    /// (0: off).
    pub field_absent_after: u64,
    /// The language of the messages.
    pub lang: Lang,
    /// The dashboard's address as the operator opens it (`https://relay.example.com:9090/`): each
    /// alert links to the matching view.
    pub dashboard_url: Option<String>,
}

/// A language the relay speaks to people (alerts; the dashboard follows the browser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    En,
    Fr,
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
    /// How long a `throttle_on` answer pauses the route when it names no reset time.
    pub throttle_pause: Duration,
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
    /// Non-2xx answers (a status, and text its body must contain when given) that are an answer
    /// to branch on (`steps.NAME.status`), not a failure.
    pub accept: Vec<AnswerMatch>,
    /// Answers that would fail the delivery at once but are worth retrying (`retry_on`).
    pub retry_on: Vec<AnswerMatch>,
    /// What counts as success when it is not "any 2xx" (`success = { status, body, location }`).
    pub success: Option<Success>,
    /// Answers that mean "quota used up" like a 429 (`throttle_on`): the route pauses, no try is
    /// used up.
    pub throttle_on: Vec<AnswerMatch>,
    /// Leave null and blank values out of the JSON body, so an update never clears stored data.
    pub omit_empty: bool,
    /// A JSON Schema the rendered body must satisfy (checked by `check` and before sending).
    pub schema: Option<PathBuf>,
    /// When this step fails, its retry starts again at this earlier step (a search before a create:
    /// a create whose answer was lost must be searched for again, not sent twice).
    pub retry_from: Option<String>,
}

/// An entry of `accept`, `retry_on` or `throttle_on`: `403`, or
/// `{ status = 403, body = "REQUEST_LIMIT_EXCEEDED" }` — an answer with this status and, when
/// given, this text in its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerMatch {
    pub status: u16,
    pub body: Option<String>,
}

/// The former name of [`AnswerMatch`], from when only `retry_on` took body texts.
pub type RetryOn = AnswerMatch;

impl AnswerMatch {
    /// Whether an answer with `status` and `body` (what was read of it) matches.
    pub fn matches(&self, status: u16, body: Option<&str>) -> bool {
        self.status == status && self.body.as_deref().is_none_or(|needle| body.is_some_and(|b| b.contains(needle)))
    }
}

/// `success = { status = [200, 302], body = "\"ok\":true", location = "script.googleusercontent.com" }`:
/// what a successful answer looks like, checked in the answer instead of assumed from the status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Success {
    /// The statuses that count (instead of any 2xx); a 3xx listed here is a success (its
    /// `Location` checked against `location`).
    pub status: Vec<u16>,
    /// Text a non-redirect answer's body must contain.
    pub body: Option<String>,
    /// The host (or a parent domain of it) the `Location` of a 3xx answer must point to.
    pub location: Option<String>,
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

/// Why a `rate_limit` is not a rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    #[error("{0:?} is not a rate like \"100/10s\" (COUNT/WINDOW)")]
    NotARate(String),
    #[error("{0:?}: the count must be a whole number above zero")]
    Count(String),
    #[error("{0:?}: the window must be a duration like \"10s\", \"1m\" or \"s\"")]
    Window(String),
}

impl RateLimit {
    pub fn parse(text: &str) -> Result<RateLimit, RateLimitError> {
        let (count, window) = text.split_once('/').ok_or_else(|| RateLimitError::NotARate(text.to_string()))?;
        let count: u32 =
            count.trim().parse().ok().filter(|c| *c > 0).ok_or_else(|| RateLimitError::Count(text.to_string()))?;
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
            .ok_or_else(|| RateLimitError::Window(text.to_string()))?;
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

impl HeaderSpec {
    /// What may be shown of the value (an attempt's record, `render`): `***` for a value taken
    /// from the environment or a header that can carry a credential, else the value.
    pub fn shown(&self) -> String {
        if self.from_env || crate::secrets::is_credential_header(&self.name) {
            "***".to_string()
        } else {
            secrecy::ExposeSecret::expose_secret(&self.value).to_string()
        }
    }
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
        // `[server] env_file`: consulted after the environment, read again at every load, so a
        // reload sees a secret added to it (a running process cannot see variables exported later).
        let env_file = match raw.server.env_file.as_deref().filter(|f| !f.trim().is_empty()) {
            None => None,
            Some(file) => {
                let at = if Path::new(file).is_absolute() {
                    PathBuf::from(file)
                } else {
                    path.parent().unwrap_or(Path::new(".")).join(file)
                };
                match read_env_file(&at) {
                    Ok(vars) => Some((at, vars)),
                    Err(e) => {
                        let problem = format!("{shown}: server.env_file: cannot read {}: {e}", at.display());
                        return Err(ConfigError::Invalid { problems: vec![with_line(text, &shown, &problem)] });
                    }
                }
            }
        };
        let from_file = |name: &str| env_file.as_ref().and_then(|(_, vars)| vars.get(name).cloned());
        let lookup = |name: &str| env(name).or_else(|| from_file(name));
        let env: &dyn Fn(&str) -> Option<String> = &lookup;
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
                        "{shown}: {at}: environment variable {var} is not set{} (use ${{{var}:-default}} for a \
                         default; a running relay sees only the environment it was started with: put it in \
                         [server] env_file to pick it up on reload, or restart)",
                        match &env_file {
                            Some((file, _)) => format!(", nor in the env_file {}", file.display()),
                            None => String::new(),
                        }
                    ),
                })
                .collect();
            problems.extend(bad.into_iter().map(|m| format!("{shown}: {m}")));
            let problems = problems.iter().map(|p| with_line(text, &shown, p)).collect();
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
                ConfigError::Invalid {
                    problems: problems.iter().map(|p| masker.mask(&with_line(text, &shown, p))).collect(),
                }
            }
            other => other,
        })?;
        config.secrets = masker_for(&config, substituted);
        Ok(config)
    }

    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.get(name)
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// Every secret of `config` plus `interpolated` (the values secret-named `${VAR}`s gave it).
pub(crate) fn masker_for(config: &Config, interpolated: Vec<String>) -> crate::secrets::Masker {
    let mut values = interpolated;
    let mut add = |s: &secrecy::SecretString| values.push(secrecy::ExposeSecret::expose_secret(s).to_string());
    if let Some(t) = &config.server.admin_token {
        add(t);
    }
    for source in config.sources.values() {
        source.secret_keys.iter().for_each(&mut add);
        if let Some(t) = &source.path_token {
            add(t);
        }
        if let Some(api) = &source.api {
            add(&api.key);
        }
    }
    for route in &config.routes {
        if let Some(o) = &route.oauth {
            add(&o.client_secret);
            if let Some(t) = &o.refresh_token {
                add(t);
            }
        }
        for step in &route.steps {
            for h in step.headers.iter().filter(|h| crate::secrets::is_credential_header(&h.name)) {
                let value = secrecy::ExposeSecret::expose_secret(&h.value);
                // `Bearer abc…`, `Basic …`: the credential is the last word.
                add(&value.rsplit(' ').next().unwrap_or(value).to_string().into());
            }
        }
    }
    crate::secrets::Masker::new(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_shows_its_value_unless_it_came_from_the_environment_or_can_carry_a_credential() {
        let h = |name: &str, value: &str, from_env: bool| HeaderSpec {
            name: name.into(),
            value: value.to_string().into(),
            from_env,
        };
        assert_eq!(h("Accept", "application/json", false).shown(), "application/json");
        assert_eq!(h("Accept", "application/json", true).shown(), "***", "from the environment");
        assert_eq!(h("Authorization", "Bearer typed-in-the-file", false).shown(), "***");
        assert_eq!(h("X-Api-Key", "typed-in-the-file", false).shown(), "***");
        assert_eq!(h("X-Requested-With", "lbx-relay", false).shown(), "lbx-relay", "not a credential name");
    }

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
