//! Preflight: what `check` reports and `serve` and reload refuse to start on — every route's
//! templates rendered against the sample events (bundled plus `samples/*.json` beside the config),
//! and the warnings about a risky but valid setup (an admin listener open to the network).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::compiled::Compiled;
use crate::config::{Config, RouteConfig};
use crate::event::Event;
use crate::store::ConsoleStore;
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
    /// Likely mistakes that do not make the config invalid (a URL placeholder that no sample
    /// fills: real events may carry it), each naming the route and the samples.
    pub warnings: Vec<String>,
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

/// Renders every route the samples reach (and every other route once) and reports what failed.
pub fn render_samples(rt: &Compiled, now: i64) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let samples = sample_events(&rt.config.dir)?;
    let mut exercised = HashSet::new();
    // Every step is rendered (earlier answers unknown: `steps.*` reads as empty), so each
    // template and URL is exercised whatever branch a real delivery takes. A step's `schema` is
    // checked where the sample alone decides the body: the step applies and reads no answers.
    let render_one = |route: &RouteConfig, event: &Event, name: &str, report: &mut Report| {
        let ctx = TemplateContext::new(event, &route.vars, "check").at(now);
        for (i, step) in route.steps.iter().enumerate() {
            let file = step.template.as_ref().map(|t| t.display().to_string()).unwrap_or_else(|| route.name.clone());
            let what = if route.is_multi_step() { format!(" step {}", step.name) } else { String::new() };
            let validate =
                !rt.templates.reads_answers(route, i) && rt.templates.step_applies(route, i, &ctx).unwrap_or(true);
            match rt.templates.render_step_with(route, i, &ctx, validate) {
                Ok(_) => report.rendered += 1,
                Err(e @ crate::templates::RenderError::EmptyInUrl { .. }) => {
                    let text = rt.config.secrets.mask(&e.to_string());
                    report
                        .warnings
                        .push(format!("{text}: a real event without this value would fail the delivery (with {name})"));
                }
                Err(e) => {
                    // The first line says what is wrong; the rest shows where (in this sample's render).
                    let text = rt.config.secrets.mask(&e.to_string());
                    let (head, rest) = text.split_once('\n').map_or((text.as_str(), ""), |(h, r)| (h, r));
                    report.problems.push(format!("{file}: {head}{what} (with {name})\n{rest}"));
                }
            }
        }
    };
    for (name, sample) in &samples {
        let event = rt.event_from_json(sample.clone(), now)?;
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
    check_api_items(rt, &mut report, now);
    report.problems = merge_by_sample(std::mem::take(&mut report.problems));
    report.warnings = merge_by_sample(std::mem::take(&mut report.warnings));
    // A route no sample reaches is still rendered once, so its template is exercised.
    for route in rt.config.routes.iter().filter(|r| !exercised.contains(&r.name)) {
        if let Some((name, sample)) = samples.first() {
            report.notes.push(format!("no sample event matches route {}; rendered against {name}", route.name));
            let event = rt.event_from_json(sample.clone(), now)?;
            render_one(route, &event, name, &mut report);
        }
    }
    Ok(report)
}

/// Each reconciliation template, rendered against an item holding only an id and a date where
/// the list's `id` and `date` say: it must give an event carrying that id where `match` looks (else
/// no recovered event could ever be recognised); the routes that event would take are noted.
fn check_api_items(rt: &Compiled, report: &mut Report, now: i64) {
    for (source, api) in rt.config.sources.iter().filter_map(|(n, s)| Some((n, s.api.as_ref()?))) {
        for list in &api.lists {
            let at = format!("sources.{source}.api.{}", list.name);
            let mut item = serde_json::Value::Object(Default::default());
            set_pointer(&mut item, &list.id, serde_json::json!("CHECK-1"));
            set_pointer(&mut item, &list.date, serde_json::json!(crate::event::rfc3339(now)));
            let ctx = serde_json::json!({
                "item": item, "item_id": "CHECK-1", "item_date": crate::event::rfc3339(now),
                "list": list.name, "type": list.kind, "source": source,
            });
            match rt.templates.render_api_item(source, &list.name, &ctx) {
                Err(e) => report.problems.push(format!("{at}: {e} (with an item holding only an id and a date)")),
                Ok(data) if list.matched_id(&data).as_deref() != Some("CHECK-1") => report.problems.push(format!(
                    "{at}: the template's event does not carry the item id at any of {} (match): a recovered event \
                     could not be recognised, and its webhook would be delivered a second time",
                    list.matches.join(", ")
                )),
                Ok(data) => {
                    report.rendered += 1;
                    let Some(src) = rt.config.source(source) else { continue };
                    let Ok(map) = serde_json::from_value(data) else { continue };
                    let mut event = Event::from_plaintext(source, map, None, &src.event_field, &src.id_field, now);
                    event.kind = list.kind.clone();
                    let routes = rt.routes.matching(&rt.config, &rt.templates, &event).routes;
                    let to = if routes.is_empty() { "no route".to_string() } else { routes.join(", ") };
                    report.notes.push(format!("{at}: a recovered {} goes to {to}", list.kind));
                }
            }
        }
    }
}

/// Writes `value` at a JSON pointer, making the objects on the way.
fn set_pointer(root: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    let mut at = root;
    let parts: Vec<String> = pointer.split('/').skip(1).map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
    for (i, part) in parts.iter().enumerate() {
        if !at.is_object() {
            *at = serde_json::Value::Object(Default::default());
        }
        let Some(obj) = at.as_object_mut() else { return };
        if i + 1 == parts.len() {
            obj.insert(part.clone(), value);
            return;
        }
        at = obj.entry(part.clone()).or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
}

/// One problem repeated over several samples is said once, naming them: `… (with bundled sample
/// #0, #3 and 7 more)`.
fn merge_by_sample(problems: Vec<String>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut samples: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    let mut excerpts: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for p in problems {
        let (first, excerpt) = p.split_once('\n').map_or((p.as_str(), ""), |(f, e)| (f, e));
        let (what, sample) = match first.rsplit_once(" (with ") {
            Some((what, rest)) => (what.to_string(), rest.trim_end_matches(')').to_string()),
            None => (first.to_string(), String::new()),
        };
        if !samples.contains_key(&what) {
            order.push(what.clone());
            excerpts.insert(what.clone(), excerpt.to_string());
        }
        samples.entry(what).or_default().push(sample);
    }
    order
        .into_iter()
        .map(|what| {
            let list: Vec<String> =
                samples.remove(&what).unwrap_or_default().into_iter().filter(|s| !s.is_empty()).collect();
            let excerpt = excerpts.remove(&what).filter(|e| !e.trim().is_empty()).map(|e| format!("\n{e}"));
            let head = match list.len() {
                0 => what,
                1..=3 => format!("{what} (with {})", list.join(", ")),
                n => format!("{what} (with {} and {} more)", list[..3].join(", "), n - 3),
            };
            format!("{head}{}", excerpt.unwrap_or_default())
        })
        .collect()
}

/// The event types the config's store has seen, for `check`'s warnings: nothing (and a note)
/// when the store cannot be read; a SQLite file that does not exist yet is not created.
pub async fn seen_types(config: &Config) -> (Vec<crate::store::TypeSeen>, Option<String>) {
    if let crate::config::StoreBackend::Sqlite { path } = &config.store.backend {
        if !path.exists() {
            return (Vec::new(), None);
        }
    }
    let read = async {
        let store = crate::store::Store::open(&config.store).await?;
        store.event_types().await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok(types)) => (types, None),
        Ok(Err(e)) => (
            Vec::new(),
            Some(format!(
                "the store could not be read ({}): event types are checked against the samples only",
                crate::telemetry::Chain(&e)
            )),
        ),
        Err(_) => (
            Vec::new(),
            Some("the store did not answer in 10 s: event types are checked against the samples only".into()),
        ),
    }
}

/// `check`'s data-loss warnings ([`crate::lint`]) for `rt`, knowing the samples and `seen`.
pub fn lint(rt: &Compiled, seen: &[crate::store::TypeSeen]) -> anyhow::Result<Vec<String>> {
    let samples = sample_events(&rt.config.dir)?;
    let known = crate::lint::Known::new(rt, &samples, seen);
    let text = std::fs::read_to_string(&rt.config.path).unwrap_or_default();
    let exported: Vec<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
    Ok(crate::lint::lint(rt, &text, &known, &exported))
}

/// A loaded configuration that also renders every sample (received at `now`, Unix ms): what
/// `serve` and reload accept.
pub fn load(path: &Path, now: i64) -> Result<Compiled, Vec<String>> {
    let rt = Compiled::load(path)?;
    let report = render_samples(&rt, now).map_err(|e| vec![format!("{e:#}")])?;
    if report.problems.is_empty() {
        Ok(rt)
    } else {
        let mut problems = report.problems;
        problems.push(format!("{}: refused: `lbx-relay check` reports the same problems", path.display()));
        Err(problems)
    }
}

/// What the relay will do, one line per source and route, logged at start: where each source
/// listens and which events each route sends to which host.
pub fn summary(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (name, source) in &config.sources {
        let token = if source.path_token.is_some() { "/<path_token>" } else { "" };
        out.push(format!("source {name}: POST /hooks/{name}{token}, {} key(s)", source.secret_keys.len()));
        if let Some(api) = &source.api {
            let lists: Vec<String> = api.lists.iter().map(|l| format!("{} ({})", l.path, l.kind)).collect();
            out.push(format!(
                "source {name}: reconciled with {} every {} over {}: {}",
                reqwest::Url::parse(&api.url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default(),
                humantime::format_duration(api.every),
                humantime::format_duration(api.lookback),
                lists.join(", ")
            ));
        }
    }
    for route in &config.routes {
        let mut hosts: Vec<String> = route
            .steps
            .iter()
            .map(|s| {
                if crate::config::templated_authority(&s.url) {
                    "(a host from the event)".to_string()
                } else {
                    let base: String = s.url.split("{{").next().unwrap_or_default().to_string();
                    reqwest::Url::parse(&base)
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_string))
                        .unwrap_or_else(|| "(templated)".to_string())
                }
            })
            .collect();
        hosts.dedup();
        out.push(format!("route {}: {} → {}", route.name, route.events.join(", "), hosts.join(", ")));
    }
    out
}

/// Values that look like a placeholder left in a config rather than a real credential.
const PLACEHOLDERS: &[&str] = &["changeme", "change-me", "change_me", "xxx", "todo", "your-", "your_", "replace", "<"];

/// Risky but valid settings, said by `check` and logged at start.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(file) = &config.server.env_file {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            out.push(format!(
                "server.env_file {} can be read by other users of this machine and may hold secrets: chmod 600 it",
                file.display()
            ));
        }
    }
    if config.server.admin_token.is_none() {
        out.push(
            "server.admin_token is not set: the admin API and the dashboard's data are disabled; set \
             LBX_ADMIN_TOKEN (16+ characters) and admin_token = \"${LBX_ADMIN_TOKEN}\""
                .to_string(),
        );
    }
    for route in &config.routes {
        let mut seen = std::collections::BTreeSet::new();
        for step in &route.steps {
            for h in step.headers.iter().filter(|h| crate::secrets::is_credential_header(&h.name)) {
                use secrecy::ExposeSecret;
                let value = h.value.expose_secret();
                let credential = value.rsplit(' ').next().unwrap_or(value).trim().to_ascii_lowercase();
                let problem = if credential.is_empty() {
                    "is empty (its variable is not set?)"
                } else if PLACEHOLDERS
                    .iter()
                    .any(|p| credential.starts_with(p) || credential == p.trim_end_matches(['-', '_']))
                {
                    "looks like a placeholder"
                } else {
                    continue;
                };
                if seen.insert(h.name.to_ascii_lowercase()) {
                    out.push(format!(
                        "route {}: header {} {problem}: the CRM will refuse every request",
                        route.name, h.name
                    ));
                }
            }
        }
    }
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
