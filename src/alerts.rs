//! `[alerts]`: notifications to a webhook (Slack-compatible `{"text"}` or generic JSON) when a
//! delivery becomes a dead letter, a route's failure rate over a window crosses a threshold, a
//! source is silent past its `alert_after`, or the quarantine receives bodies. Signals are grouped
//! per check interval and each alert key is said at most once per `repeat_after` (no flood during
//! an outage); conditions that clear (failure rate, silence) send a recovery message.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{AlertFormat, AlertsConfig};
use crate::housekeeping::Upkeep;
use crate::signals::{Signal, Signals};

/// Notifications suppressed by `repeat_after` (counted, then said with the next message).
pub const ALERTS_SUPPRESSED: &str = "lbx_alerts_suppressed_total";
/// Notifications sent, by kind and state.
pub const ALERTS_SENT: &str = "lbx_alerts_sent_total";

/// Text from a CRM or an event as an alert may carry it: e-mail addresses masked, one line, at
/// most 300 characters.
pub fn outside_text(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = crate::telemetry::mask_emails_in(&one_line);
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// Where an alert sends the operator: the dashboard view (`dashboard_url#/view`) when it is set,
/// else the API call that does the same.
fn go_to(cfg: &AlertsConfig, view: &str, api: &str) -> String {
    match &cfg.dashboard_url {
        Some(url) => format!("{}#/{view}", url.trim_end_matches('#')),
        None => api.to_string(),
    }
}

/// The English or the French text, as `[alerts] lang` says.
fn say(cfg: &AlertsConfig, en: String, fr: String) -> String {
    match cfg.lang {
        crate::config::Lang::En => en,
        crate::config::Lang::Fr => fr,
    }
}

/// The field-absent alert in French.
fn drift_text_fr(route: &str, path: &str, streak: u64, nearest: Option<&str>) -> String {
    let carry = nearest.map(|n| format!(" ; les vrais événements portent {n}")).unwrap_or_default();
    format!(
        "route {route} : {path} absent des {streak} derniers événements{carry}. Ce que Learnybox envoie diffère de \
         ce que lit le modèle : corrigez le modèle (un vrai événement est visible dans le tableau de bord), \
         rechargez, rejouez"
    )
}

/// What each alert key last said; the signals come from [`Signals`].
#[derive(Debug, Default)]
pub struct Alerts {
    signals: Arc<Signals>,
    state: Mutex<HashMap<String, KeyState>>,
}

#[derive(Debug, Default, Clone)]
struct KeyState {
    /// When it last sent a "firing" message (Unix ms).
    last_sent: Option<i64>,
    /// Occurrences not said yet because of `repeat_after`.
    suppressed: u64,
    /// A condition (failure rate, silence) is in alert.
    firing: bool,
}

/// One message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: &'static str,
    pub key: String,
    /// `firing` or `resolved`.
    pub state: &'static str,
    pub text: String,
}

impl Alerts {
    /// Alerts on what is recorded in `signals`.
    pub fn new(signals: Arc<Signals>) -> Alerts {
        Alerts { signals, state: Mutex::default() }
    }

    /// Where what happened is recorded (tests record there directly).
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Whether `key` may fire now; counts a suppression when not.
    fn may_fire(&self, key: &str, now: i64, repeat_after: Duration, occurrences: u64) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = state.entry(key.to_string()).or_default();
        let due = st.last_sent.is_none_or(|at| now - at >= repeat_after.as_millis() as i64);
        if due {
            let earlier = std::mem::take(&mut st.suppressed);
            st.last_sent = Some(now);
            Some(earlier)
        } else {
            st.suppressed += occurrences;
            metrics::counter!(ALERTS_SUPPRESSED, "key" => key.to_string()).increment(occurrences);
            None
        }
    }

    /// A condition's state: `Some(notice state)` when it changed (firing or resolved).
    fn condition(&self, key: &str, firing: bool, now: i64, repeat_after: Duration) -> Option<&'static str> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = state.entry(key.to_string()).or_default();
        match (st.firing, firing) {
            (false, true) => {
                st.firing = true;
                st.last_sent = Some(now);
                Some("firing")
            }
            (true, true) if st.last_sent.is_none_or(|at| now - at >= repeat_after.as_millis() as i64) => {
                st.last_sent = Some(now);
                Some("firing")
            }
            (true, false) => {
                st.firing = false;
                Some("resolved")
            }
            _ => None,
        }
    }

    /// What to say now: grouped signals, failure rates and silent sources.
    pub async fn evaluate(&self, upkeep: &Upkeep, cfg: &AlertsConfig, now: i64) -> Vec<Notice> {
        let signals = self.signals.take();
        let mut notices = Vec::new();
        let mut dead: BTreeMap<String, (u64, Option<String>, String)> = BTreeMap::new();
        let mut quarantined: BTreeMap<String, (u64, String)> = BTreeMap::new();
        let mut absent: Vec<(String, String, u64, Option<String>)> = Vec::new();
        let mut reconciled: Vec<(String, u64, Vec<String>, String, String)> = Vec::new();
        let mut reconcile_failed: BTreeMap<String, String> = BTreeMap::new();
        for s in signals {
            match s {
                Signal::DeadLetter { route, error, delivery_id } => {
                    let e = dead.entry(route).or_default();
                    e.0 += 1;
                    e.1 = error.or(e.1.take());
                    e.2 = delivery_id;
                }
                Signal::Quarantined { source, reason } => {
                    let e = quarantined.entry(source).or_default();
                    e.0 += 1;
                    e.1 = reason;
                }
                Signal::FieldAbsent { route, path, streak, nearest } => absent.push((route, path, streak, nearest)),
                Signal::Reconciled { source, recovered, kinds, first, last } => {
                    reconciled.push((source, recovered, kinds, first, last))
                }
                Signal::ReconcileFailed { source, error } => {
                    reconcile_failed.insert(source, error);
                }
            }
        }
        // Said every time: each one is news (sales no webhook brought).
        for (source, n, kinds, first, last) in reconciled {
            let (kinds, first, last) = (kinds.join(", "), outside_text(&first), outside_text(&last));
            let see = go_to(cfg, "reconcile", "GET /api/reconcile");
            notices.push(Notice {
                kind: "reconciled",
                key: format!("reconciled:{source}"),
                state: "firing",
                text: say(
                    cfg,
                    format!(
                        "{n} {kinds} from {first} to {last} (UTC) were never received by webhook from source \
                         {source}; recovered from Learnybox's API and queued for delivery. Check that the webhook \
                         is still active in Learnybox. Details: {see}"
                    ),
                    format!(
                        "{n} {kinds} du {first} au {last} (UTC) n'ont jamais été reçus par webhook de la source \
                         {source} ; récupérés par l'API de Learnybox et mis en file pour livraison. Vérifiez que le \
                         webhook est toujours actif dans Learnybox. Détails : {see}"
                    ),
                ),
            });
        }
        for (source, error) in reconcile_failed {
            let key = format!("reconcile_failed:{source}");
            if self.may_fire(&key, now, cfg.repeat_after, 1).is_some() {
                let (error, see) = (outside_text(&error), go_to(cfg, "reconcile", "GET /api/reconcile"));
                notices.push(Notice {
                    kind: "reconcile_failed",
                    key,
                    state: "firing",
                    text: say(
                        cfg,
                        format!(
                            "reconciliation of source {source} did not check everything: {error}. Sales missed by \
                             webhook may not be recovered until this is fixed ({see})"
                        ),
                        format!(
                            "la réconciliation de la source {source} n'a pas tout vérifié : {error}. Des ventes \
                             manquées par webhook pourraient ne pas être récupérées tant que ce n'est pas corrigé ({see})"
                        ),
                    ),
                });
            }
        }
        for (route, (n, error, delivery_id)) in dead {
            let key = format!("dead_letter:{route}");
            if let Some(earlier) = self.may_fire(&key, now, cfg.repeat_after, n) {
                let error = error.map(|e| outside_text(&e));
                let view = format!("deliveries?status=failed&route={}", crate::templates::url_escape(&route));
                let see = go_to(cfg, &view, &format!("POST /api/deliveries/retry?route={route}"));
                let text = say(
                    cfg,
                    format!(
                        "{n} delivery(ies) to route {route} failed for good{}.{} Latest: delivery {delivery_id}. Fix \
                         the cause, then replay: {see}",
                        if earlier > 0 { format!(" ({earlier} more since the last alert)") } else { String::new() },
                        error.as_ref().map(|e| format!(" Last error: {e}")).unwrap_or_default(),
                    ),
                    format!(
                        "{n} livraison(s) vers la route {route} ont échoué définitivement{}.{} Dernière : livraison \
                         {delivery_id}. Corrigez la cause, puis rejouez : {see}",
                        if earlier > 0 {
                            format!(" ({earlier} de plus depuis la dernière alerte)")
                        } else {
                            String::new()
                        },
                        error.as_ref().map(|e| format!(" Dernière erreur : {e}")).unwrap_or_default(),
                    ),
                );
                notices.push(Notice { kind: "dead_letter", key, state: "firing", text });
            }
        }
        for (route, path, streak, nearest) in absent {
            let key = format!("field_absent:{route}:{path}");
            if self.may_fire(&key, now, cfg.repeat_after, 1).is_some() {
                let see = go_to(cfg, "", "");
                let link = if see.is_empty() { String::new() } else { format!(" {see}") };
                notices.push(Notice {
                    kind: "field_absent",
                    key,
                    state: "firing",
                    text: say(
                        cfg,
                        crate::coverage::drift_text(&route, &path, streak, nearest.as_deref()),
                        drift_text_fr(&route, &path, streak, nearest.as_deref()),
                    ) + &link,
                });
            }
        }
        for (source, (n, reason)) in quarantined {
            let key = format!("quarantine:{source}");
            if let Some(earlier) = self.may_fire(&key, now, cfg.repeat_after, n) {
                let see = go_to(cfg, "quarantine", "POST /api/quarantine/reprocess");
                let text = say(
                    cfg,
                    format!(
                        "{n} body(ies) from source {source} could not be decrypted and were quarantined{}: {reason}. \
                         A wrong or rotated secret key? Fix it, reload, then reprocess: {see}",
                        if earlier > 0 { format!(" ({earlier} more since the last alert)") } else { String::new() },
                    ),
                    format!(
                        "{n} corps de la source {source} n'ont pas pu être déchiffrés et sont en quarantaine{} : \
                         {reason}. Clé secrète fausse ou changée ? Corrigez-la, rechargez, puis retraitez : {see}",
                        if earlier > 0 {
                            format!(" ({earlier} de plus depuis la dernière alerte)")
                        } else {
                            String::new()
                        },
                    ),
                );
                notices.push(Notice { kind: "quarantine", key, state: "firing", text });
            }
        }
        if let Some(threshold) = cfg.failure_rate {
            let since = now - cfg.window.as_millis() as i64;
            // Counted by the database over the window (no attempt list is read).
            if let Ok(counts) = upkeep.store.route_attempts(since, since, since).await {
                let counts: BTreeMap<String, crate::store::triage::RouteAttempts> =
                    counts.into_iter().map(|r| (r.route.clone(), r)).collect();
                for route in upkeep.runtime.load().config.routes.iter().map(|r| r.name.clone()) {
                    let c = counts.get(&route).cloned().unwrap_or_default();
                    let (failed, all) = (c.failed, c.settled);
                    let rate = if all == 0 { 0.0 } else { failed as f64 / all as f64 };
                    let firing = all >= cfg.min_attempts && rate >= threshold;
                    let key = format!("failure_rate:{route}");
                    if let Some(state) = self.condition(&key, firing, now, cfg.repeat_after) {
                        let window = humantime::format_duration(cfg.window);
                        let (pct, at) = (rate * 100.0, threshold * 100.0);
                        let view = format!("deliveries?route={}", crate::templates::url_escape(&route));
                        let see = go_to(cfg, &view, "");
                        let link = if see.is_empty() { String::new() } else { format!(" {see}") };
                        let text = if state == "firing" {
                            let last = upkeep
                                .store
                                .last_failure_error(&route, since)
                                .await
                                .ok()
                                .flatten()
                                .map(|e| outside_text(&e));
                            say(
                                cfg,
                                format!(
                                    "route {route}: {failed} of {all} attempts failed over the last {window} \
                                     ({pct:.0} %, alert at {at:.0} %).{}{link}",
                                    last.as_ref().map(|e| format!(" Last error: {e}")).unwrap_or_default()
                                ),
                                format!(
                                    "route {route} : {failed} tentatives sur {all} ont échoué sur les dernières \
                                     {window} ({pct:.0} %, alerte à {at:.0} %).{}{link}",
                                    last.as_ref().map(|e| format!(" Dernière erreur : {e}")).unwrap_or_default()
                                ),
                            )
                        } else {
                            say(
                                cfg,
                                format!(
                                    "route {route} recovered: {pct:.0} % of attempts failed over the last {window}"
                                ),
                                format!(
                                    "route {route} rétablie : {pct:.0} % des tentatives ont échoué sur les dernières \
                                     {window}"
                                ),
                            )
                        };
                        notices.push(Notice { kind: "failure_rate", key, state, text });
                    }
                }
            }
        }
        let rt = upkeep.runtime.load();
        let silent = upkeep.silence.check(&rt, now);
        for source in rt.config.sources.keys() {
            let key = format!("silent:{source}");
            let firing = silent.contains(source);
            if let Some(state) = self.condition(&key, firing, now, cfg.repeat_after) {
                let text = if state == "firing" {
                    say(
                        cfg,
                        format!(
                            "no webhook from source {source} for longer than its alert_after: check that the \
                             Learnybox webhook is still active (Learnybox turns off webhooks that keep failing)"
                        ),
                        format!(
                            "aucun webhook de la source {source} depuis plus que son alert_after : vérifiez que le \
                             webhook est toujours actif dans Learnybox (Learnybox désactive les webhooks qui \
                             échouent sans cesse)"
                        ),
                    )
                } else {
                    say(
                        cfg,
                        format!("source {source}: webhooks are arriving again"),
                        format!("source {source} : les webhooks arrivent de nouveau"),
                    )
                };
                notices.push(Notice { kind: "silent_source", key, state, text });
            }
        }
        notices
    }
}

/// Why a notice did not reach the alert URL.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("the alert URL does not answer")]
    Unreachable(#[source] reqwest::Error),
    #[error("the alert URL answered {0}")]
    Answered(reqwest::StatusCode),
}

/// Posts one notice, said at `now` (Unix ms); the error says why it was not delivered.
pub async fn post_notice(
    client: &reqwest::Client,
    cfg: &AlertsConfig,
    notice: &Notice,
    now: i64,
) -> Result<(), AlertError> {
    let text = if notice.state == "resolved" {
        format!("✅ lbx-relay: {}", notice.text)
    } else {
        format!("⚠️ lbx-relay: {}", notice.text)
    };
    let body = match cfg.format {
        // Slack reads `<…>` as links and mentions (`<!channel>`) and `&` as an entity: a CRM's
        // text (or a route name) is shown as written, never acted on.
        AlertFormat::Slack => json!({ "text": text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;") }),
        AlertFormat::Json => json!({
            "source": "lbx-relay", "kind": notice.kind, "key": notice.key, "state": notice.state,
            "text": notice.text, "at": crate::event::rfc3339(now),
        }),
    };
    let resp = client
        .post(cfg.url.expose_secret())
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await
        .map_err(|e| AlertError::Unreachable(e.without_url()))?;
    if resp.status().is_success() {
        metrics::counter!(ALERTS_SENT, "kind" => notice.kind, "state" => notice.state).increment(1);
        Ok(())
    } else {
        Err(AlertError::Answered(resp.status()))
    }
}

/// Checks every `check_every` and sends what there is to say, until `stop`.
pub async fn run(upkeep: Upkeep, alerts: std::sync::Arc<Alerts>, client: reqwest::Client, stop: CancellationToken) {
    loop {
        let cfg = upkeep.runtime.load().config.alerts.clone();
        let every = cfg.as_ref().map(|c| c.check_every).unwrap_or(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let Some(cfg) = cfg else { continue };
        for notice in alerts.evaluate(&upkeep, &cfg, upkeep.clock.now_ms()).await {
            if let Err(e) = post_notice(&client, &cfg, &notice, upkeep.clock.now_ms()).await {
                let error = crate::telemetry::Chain(&e).to_string();
                tracing::warn!(kind = notice.kind, error = %upkeep.runtime.load().config.secrets.mask(&error), "alert not sent");
            }
        }
    }
}
