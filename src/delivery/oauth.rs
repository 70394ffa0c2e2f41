//! OAuth 2.0 access tokens for routes with `auth = { type = "oauth2", … }`: fetched from the token
//! endpoint (client credentials, or the refresh-token grant when a refresh token is configured),
//! cached per app, refreshed a minute before they expire and once when the CRM answers 401. A
//! rotated refresh token is written to the store and read back before each refresh, so a restart
//! or another replica uses the newest one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::OAuthConfig;
use crate::store::QueueStore;
use crate::store::Store;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

/// Token endpoint answers longer than this are cut in error messages.
const ERROR_BODY_LIMIT: usize = 200;
/// Refresh this long before the announced expiry.
const EARLY: Duration = Duration::from_secs(60);
/// How long to trust a token whose answer gave no `expires_in` (a 401 refreshes it sooner).
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// The most of a token server's answer read (a token answer is a few hundred bytes).
const TOKEN_ANSWER_LIMIT: usize = 64 * 1024;
/// Longest a token is trusted, whatever `expires_in` says (a 401 refreshes it sooner anyway).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Tokens of every OAuth app in use, one slot per app; a slot's lock makes refreshes single-flight.
#[derive(Debug)]
pub struct Tokens {
    slots: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    /// When a token is due for refresh is read from this clock.
    clock: Clock,
    /// Tokens fetched (access and rotated refresh tokens), newest last: a CRM that echoes its
    /// request puts them in its answer, and nothing recorded may hold them.
    issued: std::sync::Mutex<std::collections::VecDeque<SecretString>>,
}

/// Tokens remembered for masking (a few per app, over refreshes).
const ISSUED_KEPT: usize = 64;

#[derive(Debug, Default)]
struct Slot {
    /// The token and when to refresh it (Unix ms).
    access: Option<(SecretString, i64)>,
    /// The newest refresh token known to this process.
    refresh: Option<SecretString>,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// Why no access token could be had; the route's attempt fails with this and is retried.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("reading the stored refresh token")]
    Store(#[source] crate::store::StoreError),
    #[error("token endpoint unreachable")]
    Unreachable(#[source] reqwest::Error),
    #[error("token endpoint answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the token endpoint's answer has no access_token")]
    NoAccessToken,
}

impl Tokens {
    /// An empty cache whose tokens expire by `clock`.
    pub fn new(clock: Clock) -> Tokens {
        Tokens { slots: Mutex::default(), clock, issued: Default::default() }
    }

    /// `text` with every token this cache fetched replaced by `***` (no copy when there is none).
    pub fn mask(&self, mut text: String) -> String {
        let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        for t in issued.iter().map(|t| t.expose_secret()).filter(|t| t.len() >= 8) {
            if text.contains(t) {
                text = text.replace(t, "***");
            }
        }
        text
    }

    fn remember(&self, token: &str) {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if issued.len() >= ISSUED_KEPT {
            issued.pop_front();
        }
        issued.push_back(SecretString::from(token.to_string()));
    }

    /// A valid access token for `cfg`. `rejected` is a token the CRM just refused (401): unless
    /// another request already replaced it, a new one is fetched.
    pub async fn bearer(
        &self,
        cfg: &OAuthConfig,
        store: &Store,
        client: &reqwest::Client,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, OAuthError> {
        let key = cfg.cache_key();
        let slot = self.slots.lock().await.entry(key.clone()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some((token, refresh_at)) = &slot.access {
            let refused = rejected.is_some_and(|r| r.expose_secret() == token.expose_secret());
            if !refused && self.clock.now_ms() < *refresh_at {
                return Ok(token.clone());
            }
        }
        // Read the store every time: another replica may have rotated the token since.
        if cfg.refresh_token.is_some() {
            match store.oauth_refresh_token(&key).await {
                Ok(Some(stored)) => slot.refresh = Some(SecretString::from(stored)),
                Ok(None) if slot.refresh.is_none() => slot.refresh = cfg.refresh_token.clone(),
                Ok(None) => {}
                Err(e) => return Err(OAuthError::Store(e)),
            }
        }
        let mut form: Vec<(&str, &str)> =
            vec![("client_id", cfg.client_id.as_str()), ("client_secret", cfg.client_secret.expose_secret())];
        match &slot.refresh {
            Some(rt) => form.extend([("grant_type", "refresh_token"), ("refresh_token", rt.expose_secret())]),
            None => form.push(("grant_type", "client_credentials")),
        }
        if let Some(scope) = &cfg.scope {
            form.push(("scope", scope));
        }
        // A form of plain string pairs always encodes.
        let body = serde_urlencoded::to_string(&form).unwrap_or_default();
        let resp = client
            .post(&cfg.token_url)
            .timeout(TOKEN_TIMEOUT)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| OAuthError::Unreachable(e.without_url()))?;
        let status = resp.status();
        // Bounded like a CRM's answer: a token server answering 400 MiB costs 64 KiB.
        let text = super::send::read_prefix(resp, TOKEN_ANSWER_LIMIT).await;
        if !status.is_success() {
            let snippet: String = text.chars().take(ERROR_BODY_LIMIT).collect();
            return Err(OAuthError::Refused { status: status.as_u16(), body: snippet.trim().to_string() });
        }
        let answer: TokenAnswer = serde_json::from_str(&text).map_err(|_| OAuthError::NoAccessToken)?;
        let lifetime = answer
            .expires_in
            .as_ref()
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .map(|secs| Duration::from_secs(secs.min(MAX_LIFETIME.as_secs())));
        let trusted_for = match lifetime {
            Some(l) if l > EARLY * 2 => l - EARLY,
            Some(l) => l / 2,
            None => UNKNOWN_LIFETIME,
        };
        let refresh_at = self.clock.now_ms() + trusted_for.as_millis() as i64;
        self.remember(&answer.access_token);
        if let Some(new) = answer.refresh_token.filter(|t| !t.is_empty()) {
            self.remember(&new);
            let rotated = slot.refresh.as_ref().is_none_or(|old| old.expose_secret() != new);
            if rotated && slot.refresh.is_some() {
                if let Err(e) = store.save_oauth_refresh_token(&key, &new, self.clock.now_ms()).await {
                    tracing::error!(token_url = %cfg.token_url, error = %crate::telemetry::Chain(&e), "could not store the rotated refresh token; it is kept in memory only");
                }
                tracing::info!(token_url = %cfg.token_url, "refresh token rotated and stored");
            }
            if slot.refresh.is_some() {
                slot.refresh = Some(SecretString::from(new));
            }
        }
        tracing::info!(token_url = %cfg.token_url, lifetime_s = lifetime.map(|l| l.as_secs()), "access token fetched");
        let token = SecretString::from(answer.access_token);
        slot.access = Some((token.clone(), refresh_at));
        Ok(token)
    }
}
