//! `lbx-relay send-test`: an event (or the samples) encrypted like Learnybox and posted to a relay.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, Context};

use super::crypt::seal_input;
use super::{read_input, SecretArg};
use crate::clock::Clock;
use crate::compiled::Compiled;
use crate::preflight::SAMPLE_EVENTS;

/// What `send-test` sends.
pub(super) struct SendInput<'a> {
    pub(super) samples: bool,
    pub(super) event_file: Option<&'a str>,
    pub(super) fresh_id: bool,
}

pub(super) async fn send_test(
    secret: &SecretArg,
    url: &str,
    envelope: &str,
    key_form: &str,
    input: SendInput<'_>,
    follow: Option<&crate::follow::Follow>,
) -> anyhow::Result<ExitCode> {
    let secret = secret.get()?;
    let mut events: Vec<Vec<u8>> = if input.samples {
        let all: Vec<serde_json::Value> = serde_json::from_str(SAMPLE_EVENTS)?;
        all.iter().map(|v| v.to_string().into_bytes()).collect()
    } else {
        vec![read_input(input.event_file.unwrap_or("-"))?]
    };
    if input.fresh_id {
        events = events.iter().map(|e| crate::follow::fresh_id(e)).collect::<anyhow::Result<_>>()?;
    }
    let client = crate::proxy::client_builder().build()?;
    let mut all_ok = true;
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    for plaintext in events {
        let id = crate::follow::learnybox_id(&plaintext);
        let before = match (follow, &id) {
            (Some(f), Some(id)) => f.newest(&client, id).await?,
            _ => None,
        };
        let sent_at = Clock::system().now_ms();
        let kind = serde_json::from_slice::<serde_json::Value>(&plaintext)
            .ok()
            .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| "event".into());
        let sealed = seal_input(&secret, envelope, key_form, &plaintext)?;
        let mut req = client.post(url).header("Content-Type", "application/json").body(sealed.body);
        for (k, v) in &sealed.headers {
            req = req.header(k, v);
        }
        let started = Instant::now();
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        let elapsed = started.elapsed();
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        all_ok &= status.is_success();
        out!("{kind}: {} in {:.1} ms: {}", status, elapsed.as_secs_f64() * 1000.0, body.trim());
        if let (Some(follow), true) = (follow, status.is_success()) {
            let id = id.as_deref().ok_or_else(|| anyhow!("the event is not a JSON object"))?;
            let fate = follow.fate(&client, id, before.as_deref(), sent_at).await?;
            for line in &fate.lines {
                out!("  {line}");
            }
            use crate::follow::Outcome;
            let label = match fate.outcome {
                Outcome::Delivered => "delivered",
                Outcome::Failed => "failed",
                Outcome::Pending => "still pending",
                Outcome::NoRoute => "no route",
                Outcome::Duplicate => "duplicate",
                Outcome::Quarantined => "quarantined",
            };
            *tally.entry(label).or_default() += 1;
            // With --samples, a type no route takes or a sample already sent is not a failure:
            // what matters is that every sample a route took was delivered.
            all_ok &=
                fate.delivered || (input.samples && matches!(fate.outcome, Outcome::NoRoute | Outcome::Duplicate));
        } else if !status.is_success() {
            *tally.entry("refused by the relay").or_default() += 1;
        }
    }
    if input.samples && follow.is_some() {
        let parts: Vec<String> =
            ["delivered", "failed", "still pending", "no route", "duplicate", "quarantined", "refused by the relay"]
                .iter()
                .map(|k| format!("{} {k}", tally.get(k).copied().unwrap_or(0)))
                .collect();
        out!("samples: {}", parts.join(", "));
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Why `send-test --samples` should not go ahead without `--yes`: the samples reach a relay
/// elsewhere, or a route of `config` delivers them to a CRM that is not on this machine (they are
/// real requests: test contacts would be written there). `None` when every place is loopback.
pub(super) fn samples_leave_this_machine(url: &str, config: &Path) -> Option<String> {
    let loopback = |host: &str| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    let n = serde_json::from_str::<Vec<serde_json::Value>>(SAMPLE_EVENTS).map(|v| v.len()).unwrap_or(0);
    let relay_host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
    if !loopback(&relay_host) {
        return Some(format!(
            "--samples sends {n} test events (test contacts such as camille.durand@example.fr) to the relay at \
             {relay_host}, which delivers them to its CRMs like real ones. Run again with --yes to go ahead."
        ));
    }
    let rt = match Compiled::load(config) {
        Ok(rt) => rt,
        Err(_) => {
            return Some(format!(
                "--samples sends {n} test events that the relay delivers like real ones, and the config {} \
                 could not be read to see where its routes send them (give it with -c). Run again with --yes \
                 to go ahead.",
                config.display()
            ))
        }
    };
    let mut remote = std::collections::BTreeSet::new();
    for route in &rt.config.routes {
        for step in &route.steps {
            let base = step.url.split("{{").next().unwrap_or_default();
            let host = reqwest::Url::parse(base).ok().and_then(|u| u.host_str().map(str::to_string));
            match host {
                Some(h) if loopback(&h) => {}
                Some(h) => {
                    remote.insert(format!("{} ({h})", route.name));
                }
                None => {
                    remote.insert(format!("{} (a templated host)", route.name));
                }
            }
        }
    }
    if remote.is_empty() {
        return None;
    }
    let list: Vec<String> = remote.into_iter().collect();
    Some(format!(
        "--samples sends {n} test events that the relay delivers like real ones: routes {} will write test \
         contacts (camille.durand@example.fr, zoe.lefevre@example.com, …) and test sales into those CRMs. Run \
         again with --yes to go ahead, or point the routes at a test account.",
        list.join(", ")
    ))
}
