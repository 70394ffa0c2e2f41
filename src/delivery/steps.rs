//! Running a route's requests for one delivery: a plain route sends one; a multi-step route sends
//! its steps in order, each seeing earlier answers as `steps.NAME.status` / `steps.NAME.body`
//! (and `steps.NAME.location`, the `Location` of a redirect, with its path — no leading `/` — and
//! query alone in `steps.NAME.location_path`),
//! skipping those whose `when` is false, and resuming after the steps a previous attempt finished.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::attempt::{AttemptResult, Recorded, Verdict};
use super::limits::Gate;
use super::oauth::Tokens;
use super::retry::judge;
use super::send::HttpSender;
use crate::config::{HeaderSpec, RouteConfig};
use crate::event::Event;
use crate::store::QueueStore;
use crate::store::Store;
use crate::templates::{RenderedRequest, TemplateContext, Templates};

/// What sending a delivery needs from the relay, and nothing more: the store (progress of
/// multi-step routes, rotated OAuth refresh tokens), the HTTP sender and the OAuth token cache.
#[derive(Clone, Copy)]
pub struct SendContext<'a> {
    pub store: &'a Store,
    pub sender: &'a HttpSender,
    pub tokens: &'a Tokens,
}

/// Answers bigger than this are not kept for later steps (the step still counts as done).
const MAX_KEPT_BODY: usize = 256 * 1024;

/// The result of one attempt at a delivery: the last request's result, and every answer so far.
#[derive(Debug)]
pub struct StepsResult {
    pub result: AttemptResult,
    /// `None` for a plain route; the answers of finished steps otherwise.
    pub state: Option<String>,
    /// The route's rate window had no room for a further step: hand the delivery back until then
    /// (the finished steps are stored; no attempt is counted).
    pub deferred: Option<i64>,
}

/// One claimed delivery, as the step runner needs it.
pub struct AttemptInput<'a> {
    pub route: &'a RouteConfig,
    /// Taken: a plain route moves its data into the template context.
    pub event: &'a mut Event,
    pub delivery_id: &'a str,
    pub lease_token: &'a str,
    /// Answers of the steps finished by earlier attempts.
    pub state: Option<&'a str>,
    /// The route's pacing (a further rate place is taken before each step after the first).
    pub gate: Option<&'a Gate>,
    /// Masks the configuration's secrets and the OAuth tokens in what is kept of sent requests.
    pub mask: &'a (dyn Fn(&str) -> String + Sync),
}

/// The key, in a multi-step delivery's kept state, of the requests sent by attempts handed back
/// between steps (no step name can contain `-`): they belong in the record of the attempt that
/// next settles, so the console shows every request the CRM received.
const SENT: &str = "lbx-sent";

/// Sends what the delivery's route sends for its event, starting after the steps already recorded.
pub async fn run(cx: SendContext<'_>, templates: &Templates, input: AttemptInput<'_>) -> StepsResult {
    let AttemptInput { route, event, delivery_id, lease_token, state, gate, mask } = input;
    if !route.is_multi_step() {
        // Rendered once: the event's data is moved into the template context, not copied.
        let data = std::mem::take(&mut event.data);
        let ctx = TemplateContext::new(event, &route.vars, delivery_id).at(cx.sender.now_ms());
        let mut result = match templates.render_taking(route, &ctx, data) {
            Err(e) => render_failure(e.to_string(), Duration::ZERO),
            Ok(req) => send(cx, route, req, delivery_id, reads_body(route.first())).await,
        };
        if judge(route.first(), route.throttle_pause, &mut result) {
            result.verdict = Verdict::Delivered;
            result.error = None;
        }
        result.body = None;
        return StepsResult { result, state: None, deferred: None };
    }
    let mut kept = state.and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok()).unwrap_or_default();
    // Every request this attempt makes, in order, for its record, after those of attempts handed
    // back since the last one recorded.
    let mut log: Vec<Recorded> = match kept.remove(SENT) {
        Some(Value::Array(sent)) => sent.into_iter().map(Recorded::Kept).collect(),
        Some(other) => vec![Recorded::Kept(other)],
        None => Vec::new(),
    };
    let mut done = Value::Object(kept);
    let mut total = Duration::ZERO;
    let mut last: Option<AttemptResult> = None;
    // The delivery's admission took the rate place of its first request.
    let mut first_request = true;
    for (i, step) in route.steps.iter().enumerate() {
        if done.get(&step.name).is_some() {
            continue;
        }
        let ctx = TemplateContext::new(event, &route.vars, delivery_id).with_steps(&done).at(cx.sender.now_ms());
        let applies = match templates.step_applies(route, i, &ctx) {
            Ok(a) => a,
            Err(e) => return failed_step(&step.name, render_failure(e.to_string(), total), done, log),
        };
        if !applies {
            set(&mut done, &step.name, json!({ "skipped": true }));
            continue;
        }
        let req = match templates.render_step(route, i, &ctx) {
            Ok(r) => r,
            Err(e) => return failed_step(&step.name, render_failure(e.to_string(), total), done, log),
        };
        if !first_request {
            if let Some(Err(at)) = match gate {
                Some(g) => Some(g.rate_turn().await),
                None => None,
            } {
                let result = last.unwrap_or_else(|| render_failure("deferred".into(), total));
                // Kept with the finished steps' answers, for the attempt that next settles.
                let sent = mask(&serde_json::to_string(&log).unwrap_or_default());
                let mut state = done.clone();
                set(&mut state, SENT, serde_json::from_str(&sent).unwrap_or(Value::String(sent)));
                let state = state.to_string();
                if let Err(e) = cx.store.save_steps_state(delivery_id, lease_token, state.clone()).await {
                    tracing::warn!(delivery = %delivery_id, error = %crate::telemetry::Chain(&e), "could not keep the requests sent before handing the delivery back");
                }
                return StepsResult { result, state: Some(state), deferred: Some(at) };
            }
        }
        first_request = false;
        // One key per step, stable across retries of the delivery.
        let key = format!("{delivery_id}.{}", step.name);
        let mut r = send(cx, route, req, &key, true).await;
        for mut x in r.exchanges.drain(..) {
            x.set_step(&step.name);
            log.push(x);
        }
        total += r.duration;
        r.duration = total;
        let accepted = judge(step, route.throttle_pause, &mut r);
        if !matches!(r.verdict, Verdict::Delivered) && !accepted {
            r.body = None;
            if let Some(from) = &step.retry_from {
                forget_from(&mut done, route, from);
            }
            return failed_step(&step.name, r, done, log);
        }
        let body = r.body.take().unwrap_or_default();
        let body = if body.len() > MAX_KEPT_BODY {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or(Value::String(body))
        };
        let mut answer = json!({ "status": r.status, "body": body });
        if let Some(location) = r.location.take() {
            // The path (without its leading '/') and query alone, so a next step can read it on a
            // host the config names: `https://host/{{{steps.NAME.location_path}}}`.
            if let Ok(url) = reqwest::Url::parse(location.trim()) {
                let path = url.path().trim_start_matches('/');
                let path = match url.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                };
                answer["location_path"] = path.into();
            }
            answer["location"] = location.into();
        }
        set(&mut done, &step.name, answer);
        // Kept at once (not only when the attempt settles): a crash before the next steps finish
        // must not repeat this one.
        if i + 1 < route.steps.len() {
            if let Err(e) = cx.store.save_steps_state(delivery_id, lease_token, done.to_string()).await {
                tracing::warn!(delivery = %delivery_id, step = %step.name, error = %crate::telemetry::Chain(&e), "could not record the step's answer yet");
            }
        }
        r.verdict = Verdict::Delivered;
        r.error = None;
        last = Some(r);
    }
    let result = last.unwrap_or_else(|| {
        let mut nothing = AttemptResult::without_answer(Verdict::Delivered, total);
        nothing.error = Some("no step applied to this event".into());
        nothing
    });
    let mut result = result;
    result.exchanges = log;
    StepsResult { result, state: Some(done.to_string()), deferred: None }
}

/// Whether a plain route's answer body must be read whatever its status (`success.body` checks it).
fn reads_body(step: &crate::config::StepConfig) -> bool {
    step.success.as_ref().is_some_and(|s| s.body.is_some())
}

/// Sends one request, with the route's OAuth token when it has one; a 401 gets one retry with a
/// fresh token.
async fn send(
    cx: SendContext<'_>,
    route: &RouteConfig,
    mut req: RenderedRequest,
    key: &str,
    keep_body: bool,
) -> AttemptResult {
    let timeout = route.retry.timeout;
    let reach = if route.allow_templated_host {
        match super::guard::check(&req.url, &route.allow_private_hosts) {
            Ok(reach) => reach,
            Err(e) => return AttemptResult::without_answer(Verdict::Fail { reason: e.to_string() }, Duration::ZERO),
        }
    } else {
        super::guard::Reach::Listed
    };
    let Some(oauth) = &route.oauth else {
        return cx.sender.request(&req, timeout, key, keep_body, reach).await;
    };
    let client = cx.sender.client();
    let mut rejected = None;
    // The 401's exchange, kept for the attempt's record when the request is sent again.
    let mut earlier: Vec<Recorded> = Vec::new();
    let mut spent = Duration::ZERO;
    loop {
        let token = match cx.tokens.bearer(oauth, cx.store, client, rejected.as_ref()).await {
            Ok(t) => t,
            Err(e) => {
                let verdict =
                    Verdict::Retry { reason: format!("oauth: {}", crate::telemetry::Chain(&e)), retry_after: None };
                return AttemptResult::without_answer(verdict, spent);
            }
        };
        req.headers.retain(|h| !h.name.eq_ignore_ascii_case("authorization"));
        use secrecy::ExposeSecret;
        req.headers.push(HeaderSpec {
            name: "Authorization".into(),
            value: format!("Bearer {}", token.expose_secret()).into(),
            from_env: true,
        });
        let mut r = cx.sender.request(&req, timeout, key, keep_body, reach).await;
        r.exchanges.splice(0..0, earlier.drain(..));
        spent += r.duration;
        r.duration = spent;
        if r.status == Some(401) && rejected.is_none() {
            tracing::info!(route = %route.name, "401 from the CRM: refreshing the OAuth token once");
            earlier = std::mem::take(&mut r.exchanges);
            rejected = Some(token);
            continue;
        }
        return r;
    }
}

/// `retry_from`: drops the answers of step `from` and every later one, so the retry asks again
/// (a lost answer to a create is then found by the search instead of creating twice).
fn forget_from(done: &mut Value, route: &RouteConfig, from: &str) {
    let Some(start) = route.steps.iter().position(|s| s.name == from) else { return };
    if let Value::Object(map) = done {
        for step in &route.steps[start..] {
            map.remove(&step.name);
        }
    }
}

/// Records a step's answer; `done` is always an object (built so in `run`).
fn set(done: &mut Value, name: &str, answer: Value) {
    if let Value::Object(map) = done {
        map.insert(name.to_string(), answer);
    }
}

fn render_failure(message: String, duration: Duration) -> AttemptResult {
    AttemptResult::without_answer(Verdict::Fail { reason: format!("render error: {message}") }, duration)
}

/// The attempt stops at `step`; what finished before it is kept for the retry.
fn failed_step(step: &str, mut r: AttemptResult, done: Value, log: Vec<Recorded>) -> StepsResult {
    r.exchanges = log;
    r.error = r.error.map(|e| format!("step {step}: {e}"));
    r.verdict = match r.verdict {
        Verdict::Retry { reason, retry_after } => {
            Verdict::Retry { reason: format!("step {step}: {reason}"), retry_after }
        }
        Verdict::Fail { reason } => Verdict::Fail { reason: format!("step {step}: {reason}") },
        Verdict::Delivered => Verdict::Delivered,
    };
    StepsResult { result: r, state: Some(done.to_string()), deferred: None }
}
