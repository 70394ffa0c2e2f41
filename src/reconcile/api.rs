//! The Learnybox REST API v2 as reconciliation reads it: an access token from `oauth/token/`
//! (`X-API-Key` and `grant_type=access_token`), renewed with the refresh token when a request is
//! answered 498; list pages (`?limit=&offset=`) whose items are under `data`; 429 and 5xx retried
//! with backoff; never more requests than the source's `rate_limit`; answers read up to a bound.

use std::collections::VecDeque;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::{ApiConfig, RateLimit};

/// The most of one list page read (500 transactions are a few hundred KiB).
const PAGE_LIMIT: usize = 32 << 20;
/// The most of a token or error answer read.
const SMALL_LIMIT: usize = 64 << 10;
/// Tries of one request that meets 429 or 5xx (or cannot connect) before the run fails.
const TRIES: u32 = 5;
/// Longest wait between two tries, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest a token is trusted, whatever `expires_in` says (a 498 renews it sooner anyway).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Learnybox's answer to an expired or invalid access token.
const TOKEN_EXPIRED: u16 = 498;

/// Why a page could not be read. Texts carry no secret: tokens and the key are masked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("Learnybox's API is unreachable: {0}")]
    Unreachable(String),
    #[error("Learnybox's API answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Refused { status: u16, message: Option<String> },
    #[error("Learnybox's API refused the API key or token ({status}{}); check the key and its rights (docs/reconcile.md)", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Auth { status: u16, message: Option<String> },
    #[error("Learnybox's API answered {status} {tries} times in a row{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    GaveUp { status: u16, tries: u32, message: Option<String> },
    #[error("Learnybox's answer is not what was expected: {0}")]
    BadAnswer(String),
}

#[derive(Default)]
struct Token {
    access: Option<SecretString>,
    refresh: Option<SecretString>,
    /// Tokio instant after which the access token is fetched again.
    until: Option<tokio::time::Instant>,
}

/// A client of one source's API, kept across runs (its token and its request window with it).
pub struct LearnyboxApi {
    client: reqwest::Client,
    base: String,
    key: SecretString,
    timeout: Duration,
    rate: RateLimit,
    /// Send times (ms since `epoch`) of the latest requests, for `rate`.
    sent: Mutex<VecDeque<i64>>,
    epoch: tokio::time::Instant,
    token: Mutex<Token>,
    /// "Now" for the dates of `Retry-After` answers.
    clock: crate::clock::Clock,
}

impl std::fmt::Debug for LearnyboxApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnyboxApi").field("base", &self.base).finish_non_exhaustive()
    }
}

impl LearnyboxApi {
    pub fn new(api: &ApiConfig, clock: crate::clock::Clock) -> anyhow::Result<LearnyboxApi> {
        Ok(LearnyboxApi {
            client: crate::proxy::client_builder().redirect(reqwest::redirect::Policy::none()).build()?,
            base: api.url.clone(),
            key: api.key.clone(),
            timeout: api.timeout,
            rate: api.rate_limit,
            sent: Mutex::default(),
            epoch: tokio::time::Instant::now(),
            token: Mutex::default(),
            clock,
        })
    }

    /// Whether this client was made for these settings (else a new one is made).
    pub fn serves(&self, api: &ApiConfig) -> bool {
        self.base == api.url
            && self.key.expose_secret() == api.key.expose_secret()
            && self.rate == api.rate_limit
            && self.timeout == api.timeout
    }

    /// `text` with the tokens this client holds and the key replaced by `***`.
    pub async fn mask(&self, text: String) -> String {
        let token = self.token.lock().await;
        let mut out = text;
        for s in [token.access.as_ref(), token.refresh.as_ref(), Some(&self.key)].into_iter().flatten() {
            let s = s.expose_secret();
            if s.len() >= 4 && out.contains(s) {
                out = out.replace(s, "***");
            }
        }
        out
    }

    /// Waits for a place in the source's request window.
    async fn turn(&self) {
        let now = self.epoch.elapsed().as_millis() as i64;
        let at = match crate::rate_window::reserve(&mut *self.sent.lock().await, self.rate, now, i64::MAX) {
            crate::rate_window::Reservation::At(at) | crate::rate_window::Reservation::Full(at) => at,
        };
        if at > now {
            tokio::time::sleep(Duration::from_millis((at - now) as u64)).await;
        }
    }

    /// One page of `path`: the items under `data` (an empty list at the end).
    pub async fn page(
        &self,
        path: &str,
        params: &[(String, String)],
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, ApiError> {
        let mut url = reqwest::Url::parse(&format!("{}{}", self.base, path))
            .map_err(|e| ApiError::BadAnswer(format!("the list URL is not valid: {e}")))?;
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string())
            .append_pair("offset", &offset.to_string())
            .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut renewed = 0;
        let mut tries = 0;
        loop {
            let bearer = self.access_token().await?;
            self.turn().await;
            let sent = self
                .client
                .get(url.clone())
                .timeout(self.timeout)
                .header("Accept", "application/json")
                .bearer_auth(bearer.expose_secret())
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    tries += 1;
                    if tries >= TRIES {
                        return Err(ApiError::Unreachable(crate::telemetry::Chain(&e.without_url()).to_string()));
                    }
                    tokio::time::sleep(backoff(tries, None)).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if status == TOKEN_EXPIRED {
                renewed += 1;
                if renewed > 2 {
                    let message = message_of(&read(resp, SMALL_LIMIT).await.unwrap_or_default());
                    return Err(ApiError::Auth { status, message: self.masked(message).await });
                }
                self.renew(&bearer).await?;
                continue;
            }
            if status == 429 || (500..=599).contains(&status) {
                tries += 1;
                let wait = crate::delivery::retry::requested_wait(resp.headers(), self.clock.now_ms());
                let message = message_of(&read(resp, SMALL_LIMIT).await.unwrap_or_default());
                if tries >= TRIES {
                    return Err(ApiError::GaveUp { status, tries, message: self.masked(message).await });
                }
                tracing::info!(status, tries, "Learnybox's API asked to slow down or failed; trying again");
                tokio::time::sleep(backoff(tries, wait)).await;
                continue;
            }
            if !(200..300).contains(&status) {
                let message = self.masked(message_of(&read(resp, SMALL_LIMIT).await.unwrap_or_default())).await;
                return Err(if matches!(status, 401 | 403) {
                    ApiError::Auth { status, message }
                } else {
                    ApiError::Refused { status, message }
                });
            }
            let body = read(resp, PAGE_LIMIT).await?;
            let answer: Value =
                serde_json::from_slice(&body).map_err(|e| ApiError::BadAnswer(format!("a page is not JSON ({e})")))?;
            return match answer.get("data") {
                Some(Value::Array(items)) => Ok(items.clone()),
                // Some APIs answer an empty list as an empty object, or null.
                Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Object(o)) if o.is_empty() => Ok(Vec::new()),
                Some(_) => Err(ApiError::BadAnswer("`data` is not a list".into())),
                None => Err(ApiError::BadAnswer("the page has no `data`".into())),
            };
        }
    }

    async fn masked(&self, text: Option<String>) -> Option<String> {
        match text {
            Some(t) => Some(self.mask(t).await),
            None => None,
        }
    }

    /// The access token in force, fetched with the key when there is none (or it has expired).
    async fn access_token(&self) -> Result<SecretString, ApiError> {
        let mut token = self.token.lock().await;
        if let (Some(access), Some(until)) = (&token.access, token.until) {
            if tokio::time::Instant::now() < until {
                return Ok(access.clone());
            }
        }
        let form = [("grant_type", "access_token")];
        self.fetch_token(&mut token, &form, true).await
    }

    /// After a 498 for `refused`: the refresh token's grant, else a new token from the key.
    async fn renew(&self, refused: &SecretString) -> Result<(), ApiError> {
        let mut token = self.token.lock().await;
        if token.access.as_ref().is_some_and(|a| a.expose_secret() != refused.expose_secret()) {
            return Ok(()); // renewed meanwhile
        }
        token.access = None;
        if let Some(refresh) = token.refresh.clone() {
            let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.expose_secret())];
            match self.fetch_token(&mut token, &form, false).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::info!(error = %e, "refreshing the Learnybox token failed; asking a new one with the key")
                }
            }
        }
        self.fetch_token(&mut token, &[("grant_type", "access_token")], true).await.map(|_| ())
    }

    async fn fetch_token(
        &self,
        token: &mut Token,
        form: &[(&str, &str)],
        with_key: bool,
    ) -> Result<SecretString, ApiError> {
        let body = serde_urlencoded::to_string(form).unwrap_or_default();
        let mut tries = 0;
        let resp = loop {
            self.turn().await;
            let mut req = self
                .client
                .post(format!("{}oauth/token/", self.base))
                .timeout(self.timeout)
                .header("Accept", "application/json")
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body.clone());
            if with_key {
                req = req.header("X-API-Key", self.key.expose_secret());
            }
            match req.send().await {
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    tries += 1;
                    let status = r.status().as_u16();
                    if tries >= TRIES {
                        let message = message_of(&read(r, SMALL_LIMIT).await.unwrap_or_default());
                        return Err(ApiError::GaveUp { status, tries, message: self.masked(message).await });
                    }
                    let wait = crate::delivery::retry::requested_wait(r.headers(), self.clock.now_ms());
                    tokio::time::sleep(backoff(tries, wait)).await;
                }
                Ok(r) => break r,
                Err(e) => {
                    tries += 1;
                    if tries >= TRIES {
                        return Err(ApiError::Unreachable(crate::telemetry::Chain(&e.without_url()).to_string()));
                    }
                    tokio::time::sleep(backoff(tries, None)).await;
                }
            }
        };
        let status = resp.status().as_u16();
        let text = read(resp, SMALL_LIMIT).await?;
        if !(200..300).contains(&status) {
            let message = self.masked(message_of(&text)).await;
            return Err(ApiError::Auth { status, message });
        }
        let answer: Value =
            serde_json::from_slice(&text).map_err(|_| ApiError::BadAnswer("the token answer is not JSON".into()))?;
        let data = answer.get("data").unwrap_or(&answer);
        let access = data
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::BadAnswer("the token answer has no data.access_token".into()))?;
        let lifetime = data
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())))
            .map_or(Duration::from_secs(1800), |s| Duration::from_secs(s).min(MAX_TOKEN_LIFETIME));
        // Renewed a little early; a 498 renews it anyway.
        let trusted = lifetime.saturating_sub(Duration::from_secs(30)).max(lifetime / 2);
        token.access = Some(SecretString::from(access.to_string()));
        token.until = Some(tokio::time::Instant::now() + trusted);
        if let Some(refresh) = data.get("refresh_token").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            token.refresh = Some(SecretString::from(refresh.to_string()));
        }
        tracing::debug!(lifetime_s = lifetime.as_secs(), "Learnybox access token fetched");
        Ok(SecretString::from(access.to_string()))
    }
}

/// The wait before try `tries + 1`: what the API asked (at most a minute), else 1 s, 2 s, 4 s…
fn backoff(tries: u32, asked: Option<Duration>) -> Duration {
    asked.unwrap_or_else(|| Duration::from_secs(1u64 << tries.saturating_sub(1).min(5))).min(MAX_BACKOFF)
}

/// The `message` of a Learnybox answer, cut short.
fn message_of(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let m = v.get("message").and_then(Value::as_str)?;
    Some(crate::telemetry::mask_emails_in(&m.chars().take(200).collect::<String>()))
}

/// The body, up to `limit` bytes; a longer one is an error (a page cut short would lose items).
async fn read(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > limit {
                    return Err(ApiError::BadAnswer(format!(
                        "an answer is larger than {} MiB; lower page_size",
                        limit >> 20
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(bytes),
            Err(e) => {
                return Err(ApiError::Unreachable(format!(
                    "the answer broke off: {}",
                    crate::telemetry::Chain(&e.without_url())
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rate: &str) -> ApiConfig {
        let text = format!(
            "[sources.s]\nsecret_keys = [\"k\"]\n[sources.s.api]\nurl = \"https://a.learnybox.com/api/v2\"\n\
             key = \"secret-key\"\nrate_limit = {rate:?}\n[sources.s.api.transactions]\n"
        );
        let config = crate::config::Config::from_toml(&text, std::path::Path::new("routes.toml"), &|_| None).unwrap();
        config.source("s").unwrap().api.clone().unwrap()
    }

    // Paused time: the waits are tokio's, so the test measures them without sleeping.
    #[tokio::test(start_paused = true)]
    async fn requests_never_exceed_the_configured_rate() {
        let api = LearnyboxApi::new(&config("2/1s"), crate::clock::Clock::tokio(0)).unwrap();
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        for _ in 0..7 {
            api.turn().await;
            at.push(start.elapsed().as_millis());
        }
        assert_eq!(at, [0, 0, 1000, 1000, 2000, 2000, 3000]);
        // Any window of one second holds at most two.
        for w in at.windows(3) {
            assert!(w[2] - w[0] >= 1000, "{at:?}");
        }
    }

    #[test]
    fn the_base_url_gets_its_slash_and_the_key_is_kept_secret() {
        let c = config("60/1m");
        assert_eq!(c.url, "https://a.learnybox.com/api/v2/");
        assert!(!format!("{c:?}").contains("secret-key"));
    }

    #[test]
    fn backoff_grows_and_is_capped_whatever_is_asked() {
        assert_eq!(backoff(1, None), Duration::from_secs(1));
        assert_eq!(backoff(3, None), Duration::from_secs(4));
        assert_eq!(backoff(50, None), Duration::from_secs(32));
        assert_eq!(backoff(1, Some(Duration::from_secs(6 * 3600))), MAX_BACKOFF);
        assert_eq!(backoff(1, Some(Duration::ZERO)), Duration::ZERO);
    }

    #[test]
    fn an_error_message_is_cut_and_its_addresses_masked() {
        let long = format!("{{\"message\": \"ann@example.org {}\"}}", "x".repeat(500));
        let m = message_of(long.as_bytes()).unwrap();
        assert!(!m.contains("ann@example.org"), "{m}");
        assert!(m.len() < 260);
        assert_eq!(message_of(b"not json"), None);
        assert_eq!(message_of(b"{\"message\": 5}"), None);
    }
}
