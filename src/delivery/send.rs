//! One outbound HTTP request with reqwest: the rendered request plus `Idempotency-Key` and
//! `User-Agent`, bounded by the route's timeout, turned into an [`AttemptResult`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::attempt::{Answer, AttemptResult, Exchange, Recorded, SentRequest, Verdict};
use super::retry::{classify_status, quota_exhausted, requested_wait};
use crate::templates::RenderedRequest;

pub const USER_AGENT: &str = concat!("lbx-relay/", env!("CARGO_PKG_VERSION"));

/// How much of a CRM's error answer is kept in `last_error`.
const ERROR_BODY_LIMIT: usize = 300;
/// How much of a failing answer's body is kept for `retry_on` body rules.
pub const FAILED_BODY_KEPT: usize = 64 * 1024;
/// The most of an answer body read for a step that branches on it; the rest is never read.
pub const ANSWER_BODY_LIMIT: usize = 1024 * 1024;

/// How much of a request's and an answer's body an attempt's record keeps.
pub const RECORDED_BODY: usize = 8 * 1024;

/// The record of `req`, sent at `sent_at` with `idempotency_key`, and of its answer or error.
pub fn exchange(
    req: &RenderedRequest,
    sent_at: i64,
    idempotency_key: &str,
    answer: Option<(u16, BTreeMap<String, String>, &str)>,
    error: Option<&str>,
) -> Recorded {
    let mut headers = BTreeMap::new();
    headers.insert("Idempotency-Key".to_string(), idempotency_key.to_string());
    for h in &req.headers {
        headers.insert(h.name.clone(), h.shown());
    }
    let response =
        answer.map(|(status, headers, body)| Answer { body: cut(body, RECORDED_BODY).to_string(), headers, status });
    Recorded::Sent(Exchange {
        error: error.map(str::to_string),
        request: SentRequest {
            body: cut(&req.body, RECORDED_BODY).to_string(),
            headers,
            method: req.method.as_str().to_string(),
            url: req.url.clone(),
        },
        response,
        sent_at: crate::event::rfc3339(sent_at),
        step: None,
    })
}

/// An answer's headers as recorded: credential-looking ones (`Set-Cookie`, tokens) left out.
fn recorded_headers(headers: &reqwest::header::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(k, _)| !crate::secrets::is_credential_header(k.as_str()))
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

/// At most `limit` bytes of `s`, cut on a character boundary.
fn cut(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Clone, Debug)]
pub struct HttpSender {
    client: reqwest::Client,
    /// Reset headers that name a time are read against it.
    clock: crate::clock::Clock,
    /// For routes whose URL takes its host from the event: resolves to public addresses only.
    public_only: reqwest::Client,
}

impl HttpSender {
    pub fn new(clock: crate::clock::Clock) -> HttpSender {
        // No cap on idle connections per host: every connection a worker opened stays for the
        // next delivery (until 90 s idle, reqwest's default); there are never more of them than
        // requests were once in flight. A cap of 64 made a relay with more workers close
        // connections after each burst and open them again for the next (a TLS handshake each).
        let builder =
            || crate::proxy::client_builder().user_agent(USER_AGENT).redirect(reqwest::redirect::Policy::none());
        let client = builder().build().expect("a reqwest client with static settings always builds");
        // Never through a proxy: the proxy would resolve the host, past the resolver's filter.
        let public_only = builder()
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(super::guard::PublicOnly))
            .build()
            .expect("a reqwest client with static settings always builds");
        HttpSender { client, clock, public_only }
    }

    /// The HTTP client, for requests that are not deliveries (OAuth token requests).
    /// "Now" by the relay's clock (Unix ms).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `req` (with its `Idempotency-Key`) through the client `reach` calls for, within
    /// `timeout`; `keep_body` keeps the whole answer (a later step reads it).
    pub async fn request(
        &self,
        req: &RenderedRequest,
        timeout: Duration,
        idempotency_key: &str,
        keep_body: bool,
        reach: super::guard::Reach,
    ) -> AttemptResult {
        let started = Instant::now();
        let client = match reach {
            super::guard::Reach::Listed => &self.client,
            super::guard::Reach::PublicOnly => &self.public_only,
        };
        // A try whose connection was closed before any answer, sent again once at once.
        let mut closed: Option<Recorded> = None;
        let (resp, sent_at) = loop {
            let sent_at = self.clock.now_ms();
            // The second try gets what the first left of the route's timeout.
            let left = timeout.saturating_sub(started.elapsed());
            let mut builder = client
                .request(req.method.clone(), req.target.clone())
                .timeout(left)
                .header("Idempotency-Key", idempotency_key)
                .body(req.body.clone());
            for h in &req.headers {
                builder = builder.header(h.name.as_str(), h.value.expose_secret());
            }
            match builder.send().await {
                Ok(resp) => break (resp, sent_at),
                Err(e) if closed.is_none() && closed_before_answer(&e) && !left.is_zero() => {
                    let reason = format!(
                        "request failed: {}; sent again at once on a new connection (the CRM closed a kept-alive \
                         connection as the request went out: it did not take it)",
                        error_chain(&e.without_url())
                    );
                    tracing::debug!(url = %req.url, %reason, "connection closed before any answer");
                    closed = Some(exchange(req, sent_at, idempotency_key, None, Some(&reason)));
                    continue;
                }
                Err(e) => {
                    let (verdict, reason) = no_answer(e, timeout);
                    let mut r = AttemptResult::without_answer(verdict, started.elapsed());
                    r.exchanges.extend(closed);
                    r.exchanges.push(exchange(req, sent_at, idempotency_key, None, Some(&reason)));
                    return r;
                }
            }
        };
        let status = resp.status().as_u16();
        let retry_after = requested_wait(resp.headers(), self.clock.now_ms());
        let pause = if status == 429 || quota_exhausted(resp.headers()) { retry_after } else { None };
        let verdict = classify_status(status, retry_after);
        let delivered = matches!(verdict, Verdict::Delivered);
        // Taken before the body is read (which consumes the answer), without copying the map.
        let answer_headers = recorded_headers(resp.headers());
        let location =
            resp.headers().get(reqwest::header::LOCATION).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let limit = match (keep_body, delivered) {
            (true, _) => ANSWER_BODY_LIMIT,
            (false, false) => FAILED_BODY_KEPT,
            (false, true) => RECORDED_BODY,
        };
        let read = read_prefix(resp, limit).await;
        let recorded = exchange(req, sent_at, idempotency_key, Some((status, answer_headers, &read)), None);
        let body = if keep_body || !delivered { Some(read) } else { None };
        let error = if delivered {
            None
        } else {
            let snippet: String = body.as_deref().unwrap_or_default().chars().take(ERROR_BODY_LIMIT).collect();
            Some(if snippet.trim().is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {}", snippet.trim())
            })
        };
        AttemptResult {
            status: Some(status),
            verdict,
            duration: started.elapsed(),
            error,
            pause,
            body,
            exchanges: closed.into_iter().chain([recorded]).collect(),
            requested_wait: retry_after,
            location,
            throttled: status == 429,
        }
    }
}

/// What a request that got no answer comes to, and why: refused by the resolver (failed: no
/// retry will change that), or a timeout or a network error (retried on the schedule).
fn no_answer(e: reqwest::Error, timeout: Duration) -> (Verdict, String) {
    if e.is_timeout() {
        let reason = format!("timed out after {}", humantime::format_duration(timeout));
        (Verdict::Retry { reason: reason.clone(), retry_after: None }, reason)
    } else if e.is_connect() && error_chain(&e).contains(super::guard::REFUSED) {
        let reason = format!("connection refused by the relay: {}", error_chain(&e.without_url()));
        (Verdict::Fail { reason: reason.clone() }, reason)
    } else {
        let what = if e.is_connect() { "connection failed" } else { "request failed" };
        let reason = format!("{what}: {}", error_chain(&e.without_url()));
        (Verdict::Retry { reason: reason.clone(), retry_after: None }, reason)
    }
}

/// Whether a request failed because its connection was closed (or reset) before any answer came:
/// what a CRM does to a kept-alive connection it times out just as the relay reuses it. Neither a
/// timeout (the CRM may be working on it) nor a refused connection (never sent) is one.
fn closed_before_answer(e: &reqwest::Error) -> bool {
    if e.is_timeout() || e.is_connect() {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message) {
            return true;
        }
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Reads at most `limit` bytes of an answer's body, chunk by chunk, and drops the rest unread (a
/// CRM answering 400 MiB costs no more memory than `limit`). Invalid UTF-8 is replaced.
pub(crate) async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderSpec;
    use serde_json::json;

    fn request(body: String) -> RenderedRequest {
        let url = "https://crm.example/v1/contacts?x=1".to_string();
        RenderedRequest {
            method: reqwest::Method::POST,
            target: reqwest::Url::parse(&url).unwrap(),
            url,
            headers: vec![
                HeaderSpec { name: "X-Plain".into(), value: "shown".to_string().into(), from_env: false },
                HeaderSpec { name: "Authorization".into(), value: "Bearer s3cr3t".to_string().into(), from_env: false },
                HeaderSpec { name: "X-From-Env".into(), value: "env-value".to_string().into(), from_env: true },
            ],
            body,
        }
    }

    /// The record's JSON is what the console and stored attempts have always had: the same keys,
    /// in the same order, with credentials masked and bodies cut at a character boundary.
    #[test]
    fn an_exchange_is_recorded_as_the_console_reads_it() {
        // 'é' is two bytes: the cut falls inside the last one and must step back.
        let long = format!("{}é", "a".repeat(RECORDED_BODY - 1));
        let answer_headers = BTreeMap::from([("content-type".to_string(), "application/json".to_string())]);
        let x = exchange(&request(long.clone()), 0, "d-1", Some((201, answer_headers, "{\"id\":7}")), None);
        let text = serde_json::to_string(&x).unwrap();
        let expected = json!({
            "request": {
                "method": "POST",
                "url": "https://crm.example/v1/contacts?x=1",
                "headers": {"Idempotency-Key": "d-1", "X-Plain": "shown", "Authorization": "***", "X-From-Env": "***"},
                "body": "a".repeat(RECORDED_BODY - 1),
            },
            "sent_at": "1970-01-01T00:00:00.000Z",
            "response": {"status": 201, "headers": {"content-type": "application/json"}, "body": "{\"id\":7}"},
            "error": null,
        });
        assert_eq!(text, serde_json::to_string(&expected).unwrap());
        assert!(!text.contains("s3cr3t") && !text.contains("env-value"), "{text}");

        // No answer: `response` is null and the error is said; a step is named when one is set.
        let mut x = exchange(&request("{}".into()), 0, "d-1.create", None, Some("timed out after 10s"));
        x.set_step("create");
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
        assert_eq!(v["response"], serde_json::Value::Null);
        assert_eq!(v["error"], "timed out after 10s");
        assert_eq!(v["step"], "create");
        assert_eq!(v["request"]["headers"]["Idempotency-Key"], "d-1.create");

        // An entry kept as JSON by an earlier attempt is written back as it was, with its step.
        let mut kept = Recorded::Kept(json!({"request": {"url": "u"}, "error": "e"}));
        kept.set_step("search");
        assert_eq!(serde_json::to_string(&kept).unwrap(), r#"{"error":"e","request":{"url":"u"},"step":"search"}"#);
        let mut odd = Recorded::Kept(json!("not an object"));
        odd.set_step("search");
        assert_eq!(serde_json::to_string(&odd).unwrap(), r#""not an object""#);
    }
}
