//! The serde shapes of routes.toml, exactly as written (strings for durations and sizes, every
//! table optional): parsed twice, before and after `${VAR}` interpolation, then validated.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::RetryOn;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    pub(super) retry: RawRetry,
    #[serde(default)]
    pub(super) delivery: RawDelivery,
    #[serde(default)]
    pub(super) quarantine: RawQuarantine,
    #[serde(default)]
    pub(super) alerts: Option<RawAlerts>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub(super) url: String,
    #[serde(default = "default_alert_format")]
    pub(super) format: String,
    #[serde(default = "default_failure_rate")]
    pub(super) failure_rate: Option<f64>,
    #[serde(default = "default_alert_window")]
    pub(super) window: String,
    #[serde(default = "default_min_attempts")]
    pub(super) min_attempts: u64,
    #[serde(default = "default_repeat_after")]
    pub(super) repeat_after: String,
    #[serde(default = "default_check_every")]
    pub(super) check_every: String,
    #[serde(default = "default_field_absent_after")]
    pub(super) field_absent_after: u64,
    #[serde(default)]
    pub(super) lang: Option<String>,
    #[serde(default)]
    pub(super) dashboard_url: Option<String>,
}

pub(super) fn default_field_absent_after() -> u64 {
    super::DEFAULT_FIELD_ABSENT_AFTER
}

pub(super) fn default_alert_format() -> String {
    "slack".into()
}
pub(super) fn default_failure_rate() -> Option<f64> {
    Some(0.5)
}
pub(super) fn default_alert_window() -> String {
    "15m".into()
}
pub(super) fn default_min_attempts() -> u64 {
    5
}
pub(super) fn default_repeat_after() -> String {
    "1h".into()
}
pub(super) fn default_check_every() -> String {
    "30s".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) admin_listen: String,
    pub(super) admin_token: Option<String>,
    pub(super) max_body: String,
    pub(super) log_pii: bool,
    pub(super) body_timeout: String,
    pub(super) header_timeout: String,
    pub(super) max_connections: usize,
    pub(super) max_connections_per_ip: usize,
    pub(super) per_ip_exempt: Vec<String>,
    pub(super) min_body_rate: String,
    /// KEY=VALUE lines consulted for `${VAR}` after the environment (read again on every reload).
    pub(super) env_file: Option<String>,
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
            max_connections_per_ip: 64,
            per_ip_exempt: vec!["127.0.0.1".into(), "::1".into()],
            min_body_rate: "1KiB".into(),
            env_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    pub(super) url: String,
    pub(super) retention: String,
    pub(super) pool_size: usize,
    pub(super) connect_timeout: String,
    pub(super) statement_timeout: String,
    pub(super) encryption_key: Option<String>,
    pub(super) previous_encryption_keys: Vec<String>,
    pub(super) sync: String,
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
            sync: "full".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    #[serde(default)]
    pub(super) secret_keys: Vec<String>,
    #[serde(default = "default_envelope")]
    pub(super) envelope: String,
    #[serde(default)]
    pub(super) allow_plaintext: bool,
    #[serde(default = "default_dedup_window")]
    pub(super) dedup_window: String,
    #[serde(default)]
    pub(super) event_field: Option<Vec<String>>,
    #[serde(default)]
    pub(super) id_field: Option<Vec<String>>,
    #[serde(default)]
    pub(super) path_token: Option<String>,
    #[serde(default)]
    pub(super) alert_after: Option<String>,
    #[serde(default)]
    pub(super) max_age: Option<String>,
    #[serde(default)]
    pub(super) timestamp_field: Option<Vec<String>>,
    /// With `max_age`: what an event whose timestamp is missing or unreadable gets, `refuse` (the
    /// default) or `accept`.
    #[serde(default)]
    pub(super) undated: Option<String>,
    /// `[sources.NAME.api]`: reconciliation with Learnybox's API.
    #[serde(default)]
    pub(super) api: Option<super::api::RawApi>,
}

pub(super) fn default_envelope() -> String {
    "auto".into()
}
pub(super) fn default_dedup_window() -> String {
    "24h".into()
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) schedule: Option<Vec<String>>,
    pub(super) timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDelivery {
    pub(super) workers: usize,
    pub(super) lease: String,
    pub(super) poll_interval: String,
    pub(super) nice: Option<i64>,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery { workers: 16, lease: "30s".into(), poll_interval: "1s".into(), nice: None }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawQuarantine {
    pub(super) max_items: u64,
    pub(super) max_bytes: String,
}

impl Default for RawQuarantine {
    fn default() -> Self {
        RawQuarantine { max_items: 10_000, max_bytes: "100MiB".into() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: String,
    pub(super) events: Vec<String>,
    #[serde(default)]
    pub(super) when: Option<String>,
    #[serde(default)]
    pub(super) template: Option<String>,
    #[serde(default)]
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) method: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) vars: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub(super) retry: Option<RawRetry>,
    #[serde(default)]
    pub(super) auth: Option<RawAuth>,
    #[serde(default)]
    pub(super) rate_limit: Option<String>,
    #[serde(default)]
    pub(super) concurrency: Option<usize>,
    #[serde(default)]
    pub(super) order_by: Option<String>,
    #[serde(default)]
    pub(super) steps: Vec<RawStep>,
    #[serde(default)]
    pub(super) accept: Vec<RawRetryOn>,
    #[serde(default)]
    pub(super) retry_on: Vec<RawRetryOn>,
    #[serde(default)]
    pub(super) success: Option<RawSuccess>,
    #[serde(default)]
    pub(super) throttle_on: Vec<RawRetryOn>,
    #[serde(default)]
    pub(super) throttle_pause: Option<String>,
    #[serde(default)]
    pub(super) omit_empty: Option<bool>,
    #[serde(default)]
    pub(super) schema: Option<String>,
    #[serde(default)]
    pub(super) allow_templated_host: bool,
    #[serde(default)]
    pub(super) allow_private_hosts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    pub(super) name: String,
    #[serde(default)]
    pub(super) when: Option<String>,
    #[serde(default)]
    pub(super) template: Option<String>,
    pub(super) url: String,
    #[serde(default)]
    pub(super) method: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) accept: Vec<RawRetryOn>,
    #[serde(default)]
    pub(super) retry_on: Vec<RawRetryOn>,
    #[serde(default)]
    pub(super) success: Option<RawSuccess>,
    #[serde(default)]
    pub(super) throttle_on: Vec<RawRetryOn>,
    #[serde(default)]
    pub(super) omit_empty: Option<bool>,
    #[serde(default)]
    pub(super) schema: Option<String>,
    #[serde(default)]
    pub(super) retry_from: Option<String>,
}

/// `success = { status = [...], body = "...", location = "..." }`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSuccess {
    #[serde(default)]
    pub(super) status: Vec<u16>,
    #[serde(default)]
    pub(super) body: Option<String>,
    #[serde(default)]
    pub(super) location: Option<String>,
}

/// One `accept`, `retry_on` or `throttle_on` entry: a bare status, or `{ status, body }` (a
/// misspelt key in the table is an error naming it).
#[derive(Clone)]
pub(super) enum RawRetryOn {
    Status(u16),
    Match(RawMatch),
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    status: u16,
    #[serde(default)]
    body: Option<String>,
}

impl<'de> Deserialize<'de> for RawRetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = RawRetryOn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an HTTP status (403) or a table { status = 403, body = \"text\" }")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawRetryOn, E> {
                u16::try_from(v).map(RawRetryOn::Status).map_err(|_| E::custom(format!("{v} is not an HTTP status")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawRetryOn, E> {
                u16::try_from(v).map(RawRetryOn::Status).map_err(|_| E::custom(format!("{v} is not an HTTP status")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawRetryOn, A::Error> {
                RawMatch::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawRetryOn::Match)
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

impl RawRetryOn {
    pub(super) fn resolve(&self) -> RetryOn {
        match self {
            RawRetryOn::Status(status) => RetryOn { status: *status, body: None },
            RawRetryOn::Match(RawMatch { status, body }) => {
                RetryOn { status: *status, body: body.clone().filter(|b| !b.is_empty()) }
            }
        }
    }
}

/// `auth = { type = "basic", username = "…", password = "…" }` or `{ type = "bearer", token = "…" }`:
/// turned into an `Authorization` header that `render` always masks.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawAuth {
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
