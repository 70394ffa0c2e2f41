//! `lbx-relay render`: the request(s) a route would send for an event, credentials masked.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context};

use super::read_input;
use crate::clock::Clock;
use crate::compiled::Compiled;
use crate::templates::TemplateContext;

pub(super) fn render(
    path: &Path,
    route_name: &str,
    event_file: &str,
    answers: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let rt = Compiled::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
    let route = rt.config.route(route_name).ok_or_else(|| {
        let names: Vec<&str> = rt.config.routes.iter().map(|r| r.name.as_str()).collect();
        anyhow!("no route named {route_name:?}; routes: {}", names.join(", "))
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&read_input(event_file)?).with_context(|| format!("{event_file}: not valid JSON"))?;
    let event = rt.event_from_json(value, Clock::system().now_ms())?;
    let have_answers = answers.is_some();
    let answers: serde_json::Value = match answers {
        Some(file) => serde_json::from_slice(&std::fs::read(file).with_context(|| format!("reading {file}"))?)
            .with_context(|| format!("{file}: not valid JSON"))?,
        None => serde_json::json!({}),
    };
    if !crate::routing::matches_any(&route.events, &event.kind) {
        eprintln!(
            "note: route {} takes events {:?}; this event is {:?}, so it would not be sent to it",
            route.name, route.events, event.kind
        );
    }
    let ctx = TemplateContext::new(&event, &route.vars, "render-preview").with_steps(&answers).at(event.received_at);
    if !rt.templates.condition_holds(route, &ctx)? {
        eprintln!("note: the route's `when` condition is false for this event; it would not be sent");
    }
    if let Some(key) = rt.templates.ordering_key(route, &ctx)? {
        eprintln!("order key: {key} (deliveries with this key go out one at a time, in arrival order)");
    }
    let mut shown = Vec::new();
    // Secrets from the environment never reach the terminal, in the request or in an error.
    let mask = |text: &str| rt.config.secrets.mask(text);
    for (i, step) in route.steps.iter().enumerate() {
        let applies = rt.templates.step_applies(route, i, &ctx)?;
        // Without --answers, a step that reads an earlier answer is shown as it would start, not
        // checked: its ids come from answers this preview does not have.
        let waiting = !have_answers && i > 0 && rt.templates.reads_answers(route, i);
        let mut req = rt
            .templates
            .render_step_with(route, i, &ctx, applies && !waiting)
            .map_err(|e| anyhow!(mask(&e.to_string())))?;
        req.url = mask(&req.url);
        req.body = mask(&req.body);
        if route.oauth.is_some() {
            req.headers.push(crate::config::HeaderSpec {
                name: "Authorization".into(),
                value: "Bearer (OAuth token, fetched at send time)".to_string().into(),
                from_env: true,
            });
        }
        let headers: serde_json::Map<String, serde_json::Value> =
            req.headers.iter().map(|h| (h.name.clone(), serde_json::Value::String(h.shown()))).collect();
        let body = if req.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str::<serde_json::Value>(&req.body).unwrap_or(serde_json::Value::String(req.body.clone()))
        };
        let mut one =
            serde_json::json!({"method": req.method.as_str(), "url": req.url, "headers": headers, "body": body});
        if route.is_multi_step() {
            one["step"] = step.name.clone().into();
            one["sent"] = applies.into();
            if waiting {
                one["waits_for_answers"] = true.into();
            }
        }
        if json {
            shown.push(one);
            continue;
        }
        if route.is_multi_step() {
            let note = match (applies, waiting) {
                (_, true) => "  (waits for the earlier steps' answers: pass --answers to see it whole)",
                (true, false) => "",
                (false, false) => "  (skipped: its `when` is false with these answers)",
            };
            out!("# step {}{note}", step.name);
        }
        out!("{} {}", req.method, req.url);
        for (k, v) in &headers {
            out!("{k}: {}", v.as_str().unwrap_or_default());
        }
        out!();
        out!("{}", req.body);
        if route.is_multi_step() {
            out!();
        }
    }
    if json {
        let out = if route.is_multi_step() { serde_json::json!({ "steps": shown }) } else { shown.remove(0) };
        out!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
