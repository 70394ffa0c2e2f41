//! One outbound HTTP request with reqwest: the rendered request plus `Idempotency-Key` and
//! `User-Agent`, bounded by the route's timeout, turned into an [`AttemptResult`].

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::retry::{classify_status, quota_exhausted, requested_wait, Verdict};
use crate::templates::RenderedRequest;

pub const USER_AGENT: &str = concat!("lbx-relay/", env!("CARGO_PKG_VERSION"));

/// How much of a CRM's error answer is kept in `last_error`.
const ERROR_BODY_LIMIT: usize = 300;

#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub status: Option<u16>,
    pub verdict: Verdict,
    pub duration: Duration,
    /// What went wrong, for `last_error` (the URL is never included: it may hold a token).
    pub error: Option<String>,
    /// The CRM said its quota is used up: nothing more on this route for this long.
    pub pause: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct HttpSender {
    client: reqwest::Client,
}

impl HttpSender {
    pub fn new() -> HttpSender {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .build()
            .expect("a reqwest client with static settings always builds");
        HttpSender { client }
    }

    pub async fn send(&self, req: &RenderedRequest, timeout: Duration, idempotency_key: &str) -> AttemptResult {
        let started = Instant::now();
        let mut builder = self
            .client
            .request(req.method.clone(), &req.url)
            .timeout(timeout)
            .header("Idempotency-Key", idempotency_key)
            .body(req.body.clone());
        for h in &req.headers {
            builder = builder.header(h.name.as_str(), h.value.expose_secret());
        }
        match builder.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = requested_wait(resp.headers());
                let pause = if status == 429 || quota_exhausted(resp.headers()) { retry_after } else { None };
                let verdict = classify_status(status, retry_after);
                let error = if matches!(verdict, Verdict::Delivered) {
                    None
                } else {
                    let body = resp.text().await.unwrap_or_default();
                    let snippet: String = body.chars().take(ERROR_BODY_LIMIT).collect();
                    Some(if snippet.trim().is_empty() {
                        format!("HTTP {status}")
                    } else {
                        format!("HTTP {status}: {}", snippet.trim())
                    })
                };
                AttemptResult { status: Some(status), verdict, duration: started.elapsed(), error, pause }
            }
            Err(e) => {
                let reason = if e.is_timeout() {
                    format!("timed out after {}", humantime::format_duration(timeout))
                } else if e.is_connect() {
                    format!("connection failed: {}", error_chain(&e.without_url()))
                } else {
                    format!("request failed: {}", error_chain(&e.without_url()))
                };
                AttemptResult {
                    status: None,
                    verdict: Verdict::Retry { reason: reason.clone(), retry_after: None },
                    duration: started.elapsed(),
                    error: Some(reason),
                    pause: None,
                }
            }
        }
    }
}

impl Default for HttpSender {
    fn default() -> Self {
        HttpSender::new()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
