//! `send-test --follow`: what became of an event just sent, read through the admin API —
//! delivered or failed per route with the CRM's answer, still pending, a duplicate, stored with no
//! route, or quarantined with the reason.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::{DEFAULT_EVENT_FIELDS, DEFAULT_ID_FIELDS};
use crate::event::Event;

/// Where the admin API is and how long to wait for the deliveries to settle.
pub struct Follow {
    pub admin_url: String,
    pub token: SecretString,
    pub timeout: Duration,
}

/// The report on one event: lines to print, and whether every matched route delivered.
#[derive(Debug, Default)]
pub struct Fate {
    pub lines: Vec<String>,
    pub delivered: bool,
    pub outcome: Outcome,
}

/// What became of one event, for `send-test --samples`' summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every matched route delivered.
    #[default]
    Delivered,
    /// A route failed (dead letter).
    Failed,
    /// Still pending when --follow stopped waiting.
    Pending,
    /// Stored, but no route takes its type.
    NoRoute,
    /// Its id was already stored: not delivered again.
    Duplicate,
    /// The relay could not decrypt it.
    Quarantined,
}

/// The Learnybox id the relay will key `plaintext` on (with the default id fields).
pub fn learnybox_id(plaintext: &[u8]) -> Option<String> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(plaintext) else { return None };
    let fields = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Some(
        Event::from_plaintext("send-test", map, None, &fields(DEFAULT_EVENT_FIELDS), &fields(DEFAULT_ID_FIELDS), 0).key,
    )
}

/// Gives the event a new id so a repeated test is not a duplicate: `<id>-test-<random>`.
pub fn fresh_id(plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(plaintext) else {
        bail!("--fresh-id needs the event to be a JSON object")
    };
    let suffix = &crate::event::new_id().replace('-', "")[20..];
    let id = match map.get("id") {
        Some(Value::String(s)) => format!("{s}-test-{suffix}"),
        Some(Value::Number(n)) => format!("{n}-test-{suffix}"),
        _ => format!("send-test-{suffix}"),
    };
    map.insert("id".into(), Value::String(id));
    Ok(Value::Object(map).to_string().into_bytes())
}

impl Follow {
    async fn get(&self, client: &reqwest::Client, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.admin_url.trim_end_matches('/'));
        let resp = client
            .get(&url)
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| anyhow!("the admin API at {} does not answer: {e}", self.admin_url))?;
        match resp.status().as_u16() {
            200 => Ok(resp.json().await?),
            401 => bail!("the admin API refused the token (--admin-token or LBX_ADMIN_TOKEN)"),
            403 => bail!("the admin API is disabled: set server.admin_token (LBX_ADMIN_TOKEN) on the relay"),
            s => bail!("the admin API answered {s} to {path}"),
        }
    }

    /// The relay id of the newest stored event keyed `id`, before sending: if it is still the
    /// newest afterwards, the send was a duplicate.
    pub async fn newest(&self, client: &reqwest::Client, id: &str) -> anyhow::Result<Option<String>> {
        let found = self.get(client, &format!("/api/events?order=desc&limit=1&id={}", urlencode(id))).await?;
        Ok(found["items"].get(0).and_then(|i| i["id"].as_str()).map(str::to_string))
    }

    /// Waits for the event keyed `id`, sent at `sent_at` (Unix ms) when the newest stored one was
    /// `before`, to settle, and says what became of it.
    pub async fn fate(
        &self,
        client: &reqwest::Client,
        id: &str,
        before: Option<&str>,
        sent_at: i64,
    ) -> anyhow::Result<Fate> {
        let started = Instant::now();
        let query = format!("/api/events?order=desc&limit=1&id={}", urlencode(id));
        loop {
            let found = self.get(client, &query).await?;
            if let Some(item) = found["items"].get(0) {
                let received = item["received_at"].as_str().unwrap_or_default();
                // The hook answered after its commit: a new event would be here already.
                if before.is_some() && item["id"].as_str() == before {
                    return Ok(Fate {
                        lines: vec![format!(
                            "duplicate: an event with id {id} was stored at {received}; it is not delivered again \
                             (use --fresh-id to test again)"
                        )],
                        delivered: false,
                        outcome: Outcome::Duplicate,
                    });
                }
                let relay_id = item["id"].as_str().unwrap_or_default();
                let detail = self.get(client, &format!("/api/events/{relay_id}")).await?;
                if let Some(fate) = self.settled(&detail, started.elapsed() >= self.timeout) {
                    return Ok(fate);
                }
            } else if started.elapsed() >= Duration::from_secs(2) {
                if let Some(reason) = self.quarantined_since(client, sent_at).await? {
                    return Ok(Fate {
                        lines: vec![format!("quarantined: {reason} (wrong secret key or envelope?)")],
                        delivered: false,
                        outcome: Outcome::Quarantined,
                    });
                }
                if started.elapsed() >= self.timeout {
                    bail!("no event with id {id} reached the store within {:?}", self.timeout);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The report once no delivery is pending (or `give_up`), else `None` to wait more.
    fn settled(&self, detail: &Value, give_up: bool) -> Option<Fate> {
        let deliveries = detail["deliveries"].as_array().cloned().unwrap_or_default();
        let kind = detail["event"].as_str().unwrap_or("?");
        if deliveries.is_empty() {
            return Some(Fate {
                lines: vec![format!("stored, but no route takes {kind} events: nothing will be delivered")],
                delivered: false,
                outcome: Outcome::NoRoute,
            });
        }
        let pending = deliveries.iter().any(|d| d["status"] == "pending");
        if pending && !give_up {
            return None;
        }
        let mut fate = Fate { delivered: true, ..Fate::default() };
        fate.lines.push(format!("stored as {kind} ({} route(s))", deliveries.len()));
        for d in &deliveries {
            let route = d["route"].as_str().unwrap_or("?");
            let attempts = d["attempts"].as_u64().unwrap_or(0);
            let answer = match (d["last_status"].as_u64(), d["last_error"].as_str()) {
                (_, Some(e)) => e.to_string(),
                (Some(s), None) => format!("HTTP {s}"),
                (None, None) => "no answer yet".into(),
            };
            let line = match d["status"].as_str() {
                Some("delivered") => format!("  {route}: delivered ({answer}) after {attempts} attempt(s)"),
                Some("failed") => {
                    fate.delivered = false;
                    fate.outcome = Outcome::Failed;
                    format!("  {route}: FAILED after {attempts} attempt(s): {answer}")
                }
                _ => {
                    fate.delivered = false;
                    if fate.outcome == Outcome::Delivered {
                        fate.outcome = Outcome::Pending;
                    }
                    let next = d["next_attempt_at"].as_str().unwrap_or("soon");
                    format!("  {route}: still pending after {attempts} attempt(s): {answer}; next attempt {next}")
                }
            };
            fate.lines.push(line);
        }
        Some(fate)
    }

    async fn quarantined_since(&self, client: &reqwest::Client, sent_at: i64) -> anyhow::Result<Option<String>> {
        let mut after: Option<i64> = None;
        let mut newest = None;
        loop {
            let path = match after {
                Some(a) => format!("/api/quarantine?limit=500&after={a}"),
                None => "/api/quarantine?limit=500".to_string(),
            };
            let page = self.get(client, &path).await?;
            for item in page["items"].as_array().into_iter().flatten() {
                let at = item["received_at"].as_str().unwrap_or_default();
                let at = crate::event::parse_time(at).unwrap_or(0);
                if at >= sent_at - 1_000 {
                    newest = item["reason"].as_str().map(str::to_string);
                }
            }
            match page["next"].as_i64() {
                Some(n) => after = Some(n),
                None => return Ok(newest),
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
