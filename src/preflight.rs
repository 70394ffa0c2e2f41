//! Preflight: what `check` reports and `serve` and reload refuse to start on — every route's
//! templates rendered against the sample events (bundled plus `samples/*.json` beside the config),
//! and the warnings about a risky but valid setup (an admin listener open to the network).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use crate::config::{Config, RouteConfig};
use crate::event::{now_ms, Event};
use crate::runtime::Runtime;
use crate::templates::TemplateContext;

/// The sample events bundled with the binary (one per known Learnybox event kind).
pub const SAMPLE_EVENTS: &str = include_str!("../assets/learnybox-events.json");

/// What the sample renders found.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests rendered without a problem.
    pub rendered: usize,
    /// Each a line naming the file, the route (and step) and the sample: the config is refused.
    pub problems: Vec<String>,
    /// Facts worth knowing that do not make the config wrong.
    pub notes: Vec<String>,
}

/// Sample events: the bundled ones plus every `*.json` in `samples/` beside the config.
pub fn sample_events(config_dir: &Path) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let bundled: Vec<serde_json::Value> = serde_json::from_str(SAMPLE_EVENTS).context("bundled samples")?;
    let mut out: Vec<(String, serde_json::Value)> =
        bundled.into_iter().enumerate().map(|(i, v)| (format!("bundled sample #{i}"), v)).collect();
    let dir = config_dir.join("samples");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))?;
            out.push((p.display().to_string(), v));
        }
    }
    Ok(out)
}

/// An event as the first source of `rt` would make it from a decrypted `value`.
pub fn event_from_json(rt: &Runtime, value: serde_json::Value) -> anyhow::Result<Event> {
    let serde_json::Value::Object(map) = value else { bail!("an event must be a JSON object") };
    let (name, src) = rt.config.sources.iter().next().ok_or_else(|| anyhow!("the config has no source"))?;
    Ok(Event::from_plaintext(name, map, None, &src.event_field, &src.id_field, now_ms()))
}

/// Renders every route the samples reach (and every other route once) and reports what failed.
pub fn render_samples(rt: &Runtime) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let samples = sample_events(&rt.config.dir)?;
    let mut exercised = HashSet::new();
    // Every step is rendered (earlier answers unknown: `steps.*` reads as empty), so each
    // template and URL is exercised whatever branch a real delivery takes. A step's `schema` is
    // checked where the sample alone decides the body: the step applies and reads no answers.
    let render_one = |route: &RouteConfig, event: &Event, name: &str, report: &mut Report| {
        let ctx = TemplateContext::new(event, &route.vars, "check");
        for (i, step) in route.steps.iter().enumerate() {
            let file = step.template.as_ref().map(|t| t.display().to_string()).unwrap_or_else(|| route.name.clone());
            let what = if route.is_multi_step() { format!(" step {}", step.name) } else { String::new() };
            let validate =
                !rt.templates.reads_answers(route, i) && rt.templates.step_applies(route, i, &ctx).unwrap_or(true);
            match rt.templates.render_step_with(route, i, &ctx, validate) {
                Ok(_) => report.rendered += 1,
                Err(e) => report.problems.push(rt.config.secrets.mask(&format!("{file}: {e}{what} (with {name})"))),
            }
        }
    };
    for (name, sample) in &samples {
        let event = event_from_json(rt, sample.clone())?;
        let matched = rt.routes.matching(&rt.config, &rt.templates, &event);
        for (route, reason) in matched.skipped {
            report.problems.push(format!("route {route}: `when` failed: {reason} (with {name})"));
        }
        for route_name in matched.routes {
            let Some(route) = rt.config.route(&route_name) else { continue };
            exercised.insert(route_name.clone());
            render_one(route, &event, name, &mut report);
        }
    }
    // A route no sample reaches is still rendered once, so its template is exercised.
    for route in rt.config.routes.iter().filter(|r| !exercised.contains(&r.name)) {
        if let Some((name, sample)) = samples.first() {
            report.notes.push(format!("no sample event matches route {}; rendered against {name}", route.name));
            let event = event_from_json(rt, sample.clone())?;
            render_one(route, &event, name, &mut report);
        }
    }
    Ok(report)
}

/// A loaded configuration that also renders every sample: what `serve` and reload accept.
pub fn load(path: &Path) -> Result<Runtime, Vec<String>> {
    let rt = Runtime::load(path)?;
    let report = render_samples(&rt).map_err(|e| vec![format!("{e:#}")])?;
    if report.problems.is_empty() {
        Ok(rt)
    } else {
        let mut problems = report.problems;
        problems.push(format!("{}: refused: `lbx-relay check` reports the same problems", path.display()));
        Err(problems)
    }
}

/// Risky but valid settings, said by `check` and logged at start.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let admin_public = config.server.admin_listen.parse::<std::net::SocketAddr>().is_ok_and(|a| !a.ip().is_loopback());
    if admin_public && config.server.admin_token.is_none() {
        out.push(format!(
            "server.admin_listen {} is reachable from the network and no admin_token is set: /metrics and \
             /readyz are open to anyone there and the admin API is disabled; set LBX_ADMIN_TOKEN (and \
             admin_token = \"${{LBX_ADMIN_TOKEN}}\") or listen on 127.0.0.1",
            config.server.admin_listen
        ));
    }
    out
}
