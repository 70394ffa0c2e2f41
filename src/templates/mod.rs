//! Handlebars rendering of route requests: every route's body, URL and `when` condition compiled
//! once per config load; `.json.hbs` bodies escape values as JSON strings (never HTML) and must
//! parse as JSON; URL templates percent-encode what they insert; `omit_empty` pruning and `schema`
//! validation of rendered bodies (`body`); the helper set users rely on (`helpers`); escaping
//! (`escape`).

use std::collections::BTreeMap;

use handlebars::Handlebars;
use serde::Serialize;
use serde_json::Value;

mod body;
mod escape;
mod helpers;

use body::{check_schema, load_schema};
pub use body::{prune_empty, SchemaError};
pub use escape::{has_dot_segment, json_escape, url_escape};
use helpers::register_helpers;

use crate::config::{Config, HeaderSpec, RouteConfig};
use crate::event::{rfc3339, Event};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{file}: {message}")]
    Compile { file: String, message: String },
    #[error("route {route}: {what}: {message}")]
    Render { route: String, what: &'static str, message: String },
    #[error("route {route}: the body rendered from {file} is not valid JSON: {message}\n{excerpt}")]
    NotJson { route: String, file: String, message: String, line: usize, column: usize, excerpt: String },
    #[error("route {route}: the body does not match the schema {file}: {problems}")]
    Schema { route: String, file: String, problems: String },
    #[error("route {route}: the rendered URL {url:?} is not a valid http(s) URL")]
    BadUrl { route: String, url: String },
    #[error(
        "route {route}: a value inserted in the URL path is \".\" or \"..\", which would remove a path \
         segment and send the request to another resource; not sent"
    )]
    DotSegment { route: String },
    #[error(
        "route {route}{step}: {expression} in the URL rendered empty, which would send the request to \
         another resource; not sent",
        step = step.as_deref().map(|s| format!(" step {s}")).unwrap_or_default()
    )]
    EmptyInUrl { route: String, step: Option<String>, expression: String },
    #[error("route {0} is not configured")]
    UnknownRoute(String),
}

/// The data a template sees.
#[derive(Serialize, Clone)]
pub struct TemplateContext<'a> {
    pub event: &'a str,
    /// The Learnybox event id (or `sha256:…` of the plaintext when it carries none): the dedup key.
    pub id: &'a str,
    /// The same, under a name that cannot be mistaken for the relay's own id.
    pub learnybox_id: &'a str,
    /// The relay's id for the stored event (the `id` of `/api/events`), not Learnybox's.
    pub relay_event_id: &'a str,
    pub source: &'a str,
    pub received_at: String,
    pub data: &'a Value,
    pub vars: &'a BTreeMap<String, Value>,
    /// The delivery being rendered (empty outside a delivery, e.g. in `when`).
    pub delivery_id: &'a str,
    /// Earlier steps' answers of a multi-step route: `steps.NAME.status`, `steps.NAME.body`.
    pub steps: &'a Value,
    /// A preview of a step that would not be sent (check, render): `required` lets a missing
    /// value through instead of failing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub preview: bool,
    /// What `{{now}}` gives: when the request is rendered ([`TemplateContext::at`]), or when the
    /// event was received for what is not a request (`when` conditions, ingest's checks).
    rendered_at: i64,
}

pub(super) fn rfc3339_seconds(ms: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

static NO_STEPS: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| Value::Object(Default::default()));

impl<'a> TemplateContext<'a> {
    pub fn new(event: &'a Event, vars: &'a BTreeMap<String, Value>, delivery_id: &'a str) -> Self {
        TemplateContext {
            event: &event.kind,
            id: &event.key,
            learnybox_id: &event.key,
            relay_event_id: &event.id,
            source: &event.source,
            received_at: rfc3339(event.received_at),
            data: &event.data,
            vars,
            delivery_id,
            steps: &NO_STEPS,
            preview: false,
            rendered_at: event.received_at,
        }
    }

    /// The same context rendered at `now` (Unix ms), what `{{now}}` gives.
    pub fn at(mut self, now: i64) -> Self {
        self.rendered_at = now;
        self
    }

    /// The same context with earlier steps' answers.
    pub fn with_steps(mut self, steps: &'a Value) -> Self {
        self.steps = steps;
        self
    }

    /// What a template sees: the JSON this context serializes to, built field by field (cloning
    /// the event's data takes 0.7 of the instructions of serializing it into a new value), and
    /// built once for all the parts of a request.
    fn handlebars(&self) -> handlebars::Context {
        self.handlebars_with(self.data.clone())
    }

    /// [`TemplateContext::handlebars`] with `data` moved in as the event's data.
    fn handlebars_with(&self, data: Value) -> handlebars::Context {
        let text = |s: &str| Value::String(s.to_string());
        let mut root = serde_json::Map::new();
        root.insert("event".into(), text(self.event));
        root.insert("id".into(), text(self.id));
        root.insert("learnybox_id".into(), text(self.learnybox_id));
        root.insert("relay_event_id".into(), text(self.relay_event_id));
        root.insert("source".into(), text(self.source));
        root.insert("received_at".into(), text(&self.received_at));
        root.insert("data".into(), data);
        root.insert("vars".into(), Value::Object(self.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
        root.insert("delivery_id".into(), text(self.delivery_id));
        root.insert("steps".into(), self.steps.clone());
        if self.preview {
            root.insert("preview".into(), Value::Bool(true));
        }
        root.insert("rendered_at".into(), Value::from(self.rendered_at));
        handlebars::Context::from(Value::Object(root))
    }
}

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct RenderedRequest {
    pub method: reqwest::Method,
    pub url: String,
    /// `url`, parsed: what is sent (a URL without placeholders is parsed once, at compile).
    pub target: reqwest::Url,
    pub headers: Vec<HeaderSpec>,
    pub body: String,
}

/// Compiled templates of one configuration.
pub struct Templates {
    /// `.json.hbs` bodies: values escaped as JSON string content.
    json: Handlebars<'static>,
    /// Other bodies and `when` conditions: no escaping.
    plain: Handlebars<'static>,
    /// URLs: values percent-encoded.
    url: Handlebars<'static>,
    /// Body keys of `.json.hbs` templates → their file, for messages.
    json_bodies: BTreeMap<String, String>,
    /// Body keys → the compiled `schema` the body must satisfy, and its file.
    schemas: BTreeMap<String, (jsonschema::Validator, String)>,
    /// Body keys of steps whose body or URL reads earlier answers (`steps.…`).
    reads_answers: std::collections::BTreeSet<String>,
    /// URL keys → the URL's top-level placeholders (as written) and the key each is compiled
    /// under alone, so one that renders empty is caught by name.
    url_parts: BTreeMap<String, Vec<(String, String)>>,
    /// URL keys → URLs without placeholders, parsed once (parsing them for every request was
    /// 2.8 % of the relay's CPU).
    static_urls: BTreeMap<String, reqwest::Url>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").field("json_bodies", &self.json_bodies.len()).finish()
    }
}

fn registry(escape: fn(&str) -> String) -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.register_escape_fn(escape);
    register_helpers(&mut h);
    h
}

fn body_key(route: &str, step: usize) -> String {
    format!("{route}#{step}#body")
}
fn step_when_key(route: &str, step: usize) -> String {
    format!("{route}#{step}#when")
}
fn url_key(route: &str, step: usize) -> String {
    format!("{route}#{step}#url")
}

/// Renders template `name` of `route` from `registry`; an error names the route and `what` (the
/// part: `when`, `body`, `url`, …).
fn render_part(
    registry: &Handlebars<'_>,
    route: &RouteConfig,
    name: &str,
    what: &'static str,
    ctx: &handlebars::Context,
) -> Result<String, RenderError> {
    registry.render_with_context(name, ctx).map_err(|e| RenderError::Render {
        route: route.name.clone(),
        what,
        message: template_error_message(&e),
    })
}

fn when_key(route: &str) -> String {
    format!("{route}#when")
}
fn api_item_key(source: &str, list: &str) -> String {
    format!("api#{source}#{list}")
}
fn bundled_file(list: &str) -> &'static str {
    match list {
        "contacts" => "contact-from-api.json.hbs",
        _ => "transaction-from-api.json.hbs",
    }
}
fn order_key(route: &str) -> String {
    format!("{route}#order")
}

impl Templates {
    /// Compiles every route's body, URL and condition; collects every problem.
    pub fn compile(config: &Config) -> Result<Templates, Vec<RenderError>> {
        let mut t = Templates {
            json: registry(json_escape),
            plain: registry(handlebars::no_escape),
            url: registry(url_escape),
            json_bodies: BTreeMap::new(),
            schemas: BTreeMap::new(),
            reads_answers: Default::default(),
            url_parts: BTreeMap::new(),
            static_urls: BTreeMap::new(),
        };
        let mut errors = Vec::new();
        for route in &config.routes {
            if let Err(e) = t.add_route(route) {
                errors.push(e);
            }
        }
        for (source, api) in config.sources.iter().filter_map(|(n, s)| Some((n, s.api.as_ref()?))) {
            for list in &api.lists {
                if let Err(e) = t.add_api_item(source, list) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    fn add_route(&mut self, route: &RouteConfig) -> Result<(), RenderError> {
        for (i, step) in route.steps.iter().enumerate() {
            let what = if route.is_multi_step() {
                format!("route {} step {}", route.name, step.name)
            } else {
                format!("route {}", route.name)
            };
            if let Some(template) = &step.template {
                let file = template.display().to_string();
                let source = std::fs::read_to_string(template).map_err(|e| RenderError::Compile {
                    file: file.clone(),
                    message: format!("cannot read template: {e}"),
                })?;
                let is_json = file.ends_with(".json.hbs");
                let registry = if is_json { &mut self.json } else { &mut self.plain };
                registry.register_template_string(&body_key(&route.name, i), &source).map_err(|e| {
                    RenderError::Compile { file: file.clone(), message: compile_error_message(&e, &source) }
                })?;
                if is_json {
                    self.json_bodies.insert(body_key(&route.name, i), file);
                }
                if source.contains("steps.") {
                    self.reads_answers.insert(body_key(&route.name, i));
                }
            }
            if let Some(schema) = &step.schema {
                let file = schema.display().to_string();
                let validator = load_schema(schema).map_err(|e| RenderError::Compile {
                    file: file.clone(),
                    message: crate::telemetry::Chain(&e).to_string(),
                })?;
                self.schemas.insert(body_key(&route.name, i), (validator, file));
            }
            self.url.register_template_string(&url_key(&route.name, i), &step.url).map_err(|e| {
                RenderError::Compile { file: format!("{what} url"), message: template_error_message(&e) }
            })?;
            if step.url.contains("steps.") {
                self.reads_answers.insert(body_key(&route.name, i));
            }
            let mut parts = Vec::new();
            for (k, expression) in top_level_placeholders(&step.url).into_iter().enumerate() {
                let key = format!("{}#{k}", url_key(&route.name, i));
                if self.url.register_template_string(&key, &expression).is_ok() {
                    parts.push((expression, key));
                }
            }
            self.url_parts.insert(url_key(&route.name, i), parts);
            if !step.url.contains("{{") {
                if let Ok(parsed) = reqwest::Url::parse(step.url.trim()) {
                    self.static_urls.insert(url_key(&route.name, i), parsed);
                }
            }
            if let Some(when) = &step.when {
                self.plain.register_template_string(&step_when_key(&route.name, i), when).map_err(|e| {
                    RenderError::Compile { file: format!("{what} when"), message: template_error_message(&e) }
                })?;
            }
        }
        if let Some(order_by) = &route.order_by {
            self.plain.register_template_string(&order_key(&route.name), order_by).map_err(|e| {
                RenderError::Compile {
                    file: format!("route {} order_by", route.name),
                    message: template_error_message(&e),
                }
            })?;
        }
        if let Some(when) = &route.when {
            self.plain.register_template_string(&when_key(&route.name), when).map_err(|e| RenderError::Compile {
                file: format!("route {} when", route.name),
                message: template_error_message(&e),
            })?;
        }
        Ok(())
    }

    /// Compiles the template that turns an item of `list` (Learnybox's API) into an event body.
    fn add_api_item(&mut self, source: &str, list: &crate::config::ApiList) -> Result<(), RenderError> {
        let (file, text) = match &list.template {
            Some(path) => {
                let file = format!("{} (sources.{source}.api.{}.template)", path.display(), list.name);
                let text = std::fs::read_to_string(path).map_err(|e| RenderError::Compile {
                    file: file.clone(),
                    message: format!("cannot read template: {e}"),
                })?;
                (file, text)
            }
            None => (
                format!("(bundled) templates/learnybox/{}", bundled_file(&list.name)),
                crate::config::bundled_template(&list.name).to_string(),
            ),
        };
        self.json
            .register_template_string(&api_item_key(source, &list.name), &text)
            .map_err(|e| RenderError::Compile { file: file.clone(), message: compile_error_message(&e, &text) })?;
        self.json_bodies.insert(api_item_key(source, &list.name), file);
        Ok(())
    }

    /// Renders an API item of `source`'s `list` into an event body (a JSON object). `ctx` holds
    /// `item`, `item_id`, `item_date`, `list`, `type`, `source`.
    pub fn render_api_item(&self, source: &str, list: &str, ctx: &Value) -> Result<Value, String> {
        let key = api_item_key(source, list);
        let file = self.json_bodies.get(&key).ok_or_else(|| format!("no template for list {list}"))?;
        let text = self.json.render(&key, ctx).map_err(|e| format!("{file}: {}", template_error_message(&e)))?;
        match serde_json::from_str::<Value>(&text) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(format!("{file}: the rendered event is not a JSON object")),
            Err(e) => Err(format!(
                "{file}: the rendered event is not valid JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            )),
        }
    }

    /// Whether `route`'s `when` condition holds (true when it has none). Output that is empty,
    /// `false`, `0`, `no` or `null` (trimmed, any case) means false.
    pub fn condition_holds(&self, route: &RouteConfig, ctx: &TemplateContext<'_>) -> Result<bool, RenderError> {
        if route.when.is_none() {
            return Ok(true);
        }
        let out = render_part(&self.plain, route, &when_key(&route.name), "when", &ctx.handlebars())?;
        Ok(truthy(&out))
    }

    /// The ordering key of `route` for the event in `ctx` (`order_by`), trimmed; `None` when the
    /// route has none or it renders empty.
    pub fn ordering_key(&self, route: &RouteConfig, ctx: &TemplateContext<'_>) -> Result<Option<String>, RenderError> {
        if route.order_by.is_none() {
            return Ok(None);
        }
        let out = render_part(&self.plain, route, &order_key(&route.name), "order_by", &ctx.handlebars())?;
        let key = out.trim();
        Ok((!key.is_empty()).then(|| key.to_string()))
    }

    /// Whether step `i` of `route` is to be sent (true when it has no `when`), with the same
    /// reading of the output as [`Templates::condition_holds`].
    pub fn step_applies(&self, route: &RouteConfig, i: usize, ctx: &TemplateContext<'_>) -> Result<bool, RenderError> {
        if route.steps.get(i).is_none_or(|s| s.when.is_none()) {
            return Ok(true);
        }
        let out = render_part(&self.plain, route, &step_when_key(&route.name, i), "step when", &ctx.handlebars())?;
        Ok(truthy(&out))
    }

    /// Whether the body of step `i` of `route` reads earlier answers (`steps.…`): `check`, which has
    /// no answers, renders it but leaves its JSON and schema checks to send time and `render --answers`.
    pub fn reads_answers(&self, route: &RouteConfig, i: usize) -> bool {
        self.reads_answers.contains(&body_key(&route.name, i))
    }

    /// The request of a plain route (the first step of a multi-step one) for the event in `ctx`.
    pub fn render(&self, route: &RouteConfig, ctx: &TemplateContext<'_>) -> Result<RenderedRequest, RenderError> {
        self.render_step(route, 0, ctx)
    }

    /// The request step `i` of `route` sends for the event (and earlier answers) in `ctx`, its body
    /// checked against the step's `schema`.
    pub fn render_step(
        &self,
        route: &RouteConfig,
        i: usize,
        ctx: &TemplateContext<'_>,
    ) -> Result<RenderedRequest, RenderError> {
        self.render_step_with(route, i, ctx, true)
    }

    /// [`Templates::render_step`]; without `validate`, the body is shown as rendered, neither parsed
    /// nor checked against its schema (previews of a step that would be skipped, or whose earlier
    /// answers are unknown).
    pub fn render_step_with(
        &self,
        route: &RouteConfig,
        i: usize,
        ctx: &TemplateContext<'_>,
        validate: bool,
    ) -> Result<RenderedRequest, RenderError> {
        let hb =
            if validate { ctx.handlebars() } else { TemplateContext { preview: true, ..ctx.clone() }.handlebars() };
        self.render_prepared(route, i, &hb, validate)
    }

    /// [`Templates::render`] with the event's data moved into the template context instead of
    /// copied (`ctx.data` is not read): for a delivery that renders its one request once.
    pub fn render_taking(
        &self,
        route: &RouteConfig,
        ctx: &TemplateContext<'_>,
        data: Value,
    ) -> Result<RenderedRequest, RenderError> {
        self.render_prepared(route, 0, &ctx.handlebars_with(data), true)
    }

    /// Renders step `i` of `route` in the template context `ctx` (see [`Templates::render_step_with`]).
    fn render_prepared(
        &self,
        route: &RouteConfig,
        i: usize,
        ctx: &handlebars::Context,
        validate: bool,
    ) -> Result<RenderedRequest, RenderError> {
        let step = route.steps.get(i).ok_or_else(|| RenderError::UnknownRoute(route.name.clone()))?;
        if !self.url.has_template(&url_key(&route.name, i)) {
            return Err(RenderError::UnknownRoute(route.name.clone()));
        }
        let key = body_key(&route.name, i);
        let json_file = self.json_bodies.get(&key);
        let body = if step.template.is_none() {
            String::new()
        } else {
            let registry = if json_file.is_some() { &self.json } else { &self.plain };
            let body = render_part(registry, route, &key, "body", ctx)?;
            let schema = self.schemas.get(&key).filter(|_| validate);
            match json_file {
                // A preview of a step that would be skipped, or whose answers are unknown, may
                // well not be JSON yet: shown as rendered.
                Some(_) if !validate => body,
                Some(file) if step.omit_empty || schema.is_some() => {
                    let mut value =
                        serde_json::from_str::<Value>(&body).map_err(|e| not_json(route, file, &e, &body))?;
                    if step.omit_empty {
                        prune_empty(&mut value);
                    }
                    if let Some((validator, schema_file)) = schema {
                        check_schema(route, step, validator, schema_file, &value)?;
                    }
                    if step.omit_empty {
                        value.to_string()
                    } else {
                        body
                    }
                }
                Some(file) => {
                    serde_json::from_str::<serde::de::IgnoredAny>(&body)
                        .map_err(|e| not_json(route, file, &e, &body))?;
                    body
                }
                None => {
                    if let Some((validator, schema_file)) = schema {
                        let value = serde_json::from_str::<Value>(&body).map_err(|e| RenderError::Schema {
                            route: route.name.clone(),
                            file: schema_file.clone(),
                            problems: format!("the body is not JSON: {e}"),
                        })?;
                        check_schema(route, step, validator, schema_file, &value)?;
                    }
                    body
                }
            }
        };
        // A URL without placeholders was validated with the config; only templated ones are
        // rendered and checked per request.
        let (url, target) = if step.url.contains("{{") {
            let url = render_part(&self.url, route, &url_key(&route.name, i), "url", ctx)?;
            // A preview (`validate` off) shows what it can; a real request never has a hole.
            if validate {
                for (expression, key) in self.url_parts.get(&url_key(&route.name, i)).into_iter().flatten() {
                    let blank =
                        |out: String| percent_encoding::percent_decode_str(&out).decode_utf8_lossy().trim().is_empty();
                    if self.url.render_with_context(key, ctx).is_ok_and(blank) {
                        return Err(RenderError::EmptyInUrl {
                            route: route.name.clone(),
                            step: route.is_multi_step().then(|| step.name.clone()),
                            expression: expression.clone(),
                        });
                    }
                }
            }
            match reqwest::Url::parse(url.trim()) {
                Ok(_) if has_dot_segment(url.trim()) => {
                    return Err(RenderError::DotSegment { route: route.name.clone() })
                }
                Ok(u) if matches!(u.scheme(), "http" | "https") => (url, u),
                _ => return Err(RenderError::BadUrl { route: route.name.clone(), url }),
            }
        } else {
            match self.static_urls.get(&url_key(&route.name, i)) {
                Some(parsed) => (step.url.clone(), parsed.clone()),
                // Checked with the config: only a route compiled without that check gets here.
                None => return Err(RenderError::BadUrl { route: route.name.clone(), url: step.url.clone() }),
            }
        };
        let mut headers = step.headers.clone();
        if json_file.is_some() && !headers.iter().any(|h| h.name.eq_ignore_ascii_case("content-type")) {
            headers.push(HeaderSpec {
                name: "Content-Type".into(),
                value: "application/json".to_string().into(),
                from_env: false,
            });
        }
        Ok(RenderedRequest { method: step.method.clone(), url: url.trim().to_string(), target, headers, body })
    }
}

fn not_json(route: &RouteConfig, file: &str, e: &serde_json::Error, body: &str) -> RenderError {
    let (line, column) = (e.line(), e.column());
    let text: String = body.lines().nth(line.saturating_sub(1)).unwrap_or_default().chars().take(160).collect();
    let gutter = line.to_string().len();
    RenderError::NotJson {
        route: route.name.clone(),
        file: file.to_string(),
        message: e.to_string(),
        line,
        column,
        excerpt: format!("  {line} | {text}\n  {:gutter$} | {}^", "", " ".repeat(column.saturating_sub(1).min(160))),
    }
}

/// Empty, `false`, `0`, `no` and `null` (trimmed, any case) are false; anything else is true.
fn truthy(out: &str) -> bool {
    let v = out.trim().to_ascii_lowercase();
    !matches!(v.as_str(), "" | "false" | "0" | "no" | "null")
}

/// A template that does not compile, as a reader wants it: where, why in a few words, and the
/// line with a caret under the spot, on lines of their own.
fn compile_error_message(e: &handlebars::TemplateError, source: &str) -> String {
    let reason = e.reason().to_string();
    // The parser's reason ends with every token it would have accepted: not worth reading.
    let reason = reason.split(": expected ").next().unwrap_or(&reason).trim().to_string();
    let Some((line, column)) = e.pos() else { return reason };
    let text = source.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    let gutter = line.to_string().len();
    format!(
        "line {line}, column {column}: {reason}\n  {line} | {text}\n  {:gutter$} | {}^",
        "",
        " ".repeat(column.saturating_sub(1))
    )
}

/// The placeholders of a URL template that stand outside any block (`{{x}}`, `{{{x}}}`,
/// `{{lower x}}`), as written: each must render something.
fn top_level_placeholders(template: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut depth = 0usize;
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let triple = rest[start..].starts_with("{{{");
        let close = if triple { "}}}" } else { "}}" };
        let Some(len) = rest[start..].find(close) else { break };
        let end = start + len + close.len();
        let token = &rest[start..end];
        let inner = token.trim_start_matches('{').trim_end_matches('}').trim_matches('~').trim();
        match inner.chars().next() {
            Some('#') => depth += 1,
            Some('/') => depth = depth.saturating_sub(1),
            Some('!' | '>' | '^') | None => {}
            _ if inner == "else" || inner.starts_with("else ") => {}
            _ if depth == 0 => found.push(token.to_string()),
            _ => {}
        }
        rest = &rest[end..];
    }
    found
}

fn template_error_message(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn setup(template_name: &str, body: &str, extra: &str) -> (tempfile::TempDir, Config, Templates) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(template_name), body).unwrap();
        let text = format!(
            r#"
[sources.lbx]
secret_keys = ["x"]
[[routes]]
name = "r"
events = ["*"]
template = "{template_name}"
url = "https://crm.test/lists/{{{{vars.list}}}}/{{{{data.email}}}}"
vars = {{ list = "a b" }}
{extra}
"#
        );
        let config = Config::from_toml(&text, &dir.path().join("routes.toml"), &|_| None).unwrap();
        let t = Templates::compile(&config).unwrap();
        (dir, config, t)
    }

    #[test]
    fn the_context_templates_see_is_the_serialized_template_context() {
        let e = event(serde_json::json!({"email": "a@b.fr", "n": 1.5, "list": [1, {"x": null}]}));
        let vars: BTreeMap<String, Value> = [("list".to_string(), serde_json::json!("a b"))].into();
        let steps = serde_json::json!({"search": {"status": 200, "body": {"id": 7}}});
        for preview in [false, true] {
            let ctx = TemplateContext { preview, ..TemplateContext::new(&e, &vars, "d1").at(1_700_000_000_123) }
                .with_steps(&steps);
            assert_eq!(ctx.handlebars().data(), &serde_json::to_value(&ctx).unwrap(), "preview {preview}");
        }
    }

    fn event(data: Value) -> Event {
        Event {
            id: "e1".into(),
            source: "lbx".into(),
            kind: "contact.created".into(),
            key: "k1".into(),
            received_at: 0,
            data,
        }
    }

    #[test]
    fn hostile_strings_come_out_exact_in_json_templates() {
        let (_d, c, t) =
            setup("t.json.hbs", r#"{"name": "{{data.name}}", "n": {{data.n}}, "raw": {{json data.tags}}}"#, "");
        let hostile = "Jean \"JJ\" O'Connor \\ <script>alert(1)</script>\n\t 李小龍 🎉 & é";
        let e = event(serde_json::json!({"name": hostile, "n": 97, "tags": ["a", "b\"c"], "email": "x@y.z"}));
        let vars = &c.routes[0].vars;
        let req = t.render(&c.routes[0], &TemplateContext::new(&e, vars, "d1")).unwrap();
        let parsed: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(parsed["name"], hostile);
        assert_eq!(parsed["n"], 97);
        assert_eq!(parsed["raw"], serde_json::json!(["a", "b\"c"]));
        assert!(req.headers.iter().any(|h| h.name == "Content-Type"));
    }

    /// A delivery renders with its event's data moved in: the request is the one `render` makes
    /// (body, templated URL, headers), and a render error is the same error.
    #[test]
    fn rendering_with_the_data_moved_in_makes_the_same_request() {
        let (_d, c, t) = setup("t.json.hbs", r#"{"name": "{{data.name}}", "at": "{{received_at}}"}"#, "");
        let data = serde_json::json!({"name": "Zoé \"Z\"", "email": "z@ex.fr"});
        let mut e = event(data.clone());
        let vars = &c.routes[0].vars;
        let copied = t.render(&c.routes[0], &TemplateContext::new(&e, vars, "d1").at(5)).unwrap();
        let taken = std::mem::take(&mut e.data);
        let moved = t.render_taking(&c.routes[0], &TemplateContext::new(&e, vars, "d1").at(5), taken).unwrap();
        assert_eq!(moved.body, copied.body);
        assert_eq!(moved.url, "https://crm.test/lists/a%20b/z%40ex.fr");
        let names = |r: &RenderedRequest| r.headers.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&moved), names(&copied));
        assert_eq!((moved.url, moved.target), (copied.url, copied.target));
        // Without the address the URL has a hole: refused, whichever way the data came in.
        let e = event(serde_json::json!({"name": "x"}));
        let copied = t.render(&c.routes[0], &TemplateContext::new(&e, vars, "d1")).unwrap_err().to_string();
        let moved = t
            .render_taking(&c.routes[0], &TemplateContext::new(&e, vars, "d1"), e.data.clone())
            .unwrap_err()
            .to_string();
        assert_eq!(moved, copied);
        assert!(moved.contains("data.email"), "{moved}");
    }

    #[test]
    fn the_learnybox_id_and_the_relays_id_have_names_that_cannot_be_confused() {
        let (_d, c, t) =
            setup("t.json.hbs", r#"{"id": "{{id}}", "lb": "{{learnybox_id}}", "relay": "{{relay_event_id}}"}"#, "");
        let e = event(serde_json::json!({"email": "x@y.z"}));
        let req = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap();
        let v: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(v, serde_json::json!({"id": "k1", "lb": "k1", "relay": "e1"}));
    }

    #[test]
    fn url_values_are_percent_encoded() {
        let (_d, c, t) = setup("t.json.hbs", "{}", "");
        let e = event(serde_json::json!({"email": "a+b@x.fr/../"}));
        let req = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap();
        assert_eq!(req.url, "https://crm.test/lists/a%20b/a%2Bb%40x.fr%2F..%2F");
        assert_eq!(req.target.as_str(), req.url, "what is sent is what is shown");
    }

    #[test]
    fn a_url_without_placeholders_is_sent_as_written_from_its_compiled_parse() {
        let static_route = "[[routes]]\nname = \"s\"\nevents = [\"*\"]\ntemplate = \"t.json.hbs\"\n\
                            url = \"https://crm.test/v1/contacts?list=7&x=%20\"";
        let (_d, c, t) = setup("t.json.hbs", "{}", static_route);
        let e = event(serde_json::json!({}));
        for _ in 0..2 {
            let req = t.render(&c.routes[1], &TemplateContext::new(&e, &c.routes[1].vars, "d")).unwrap();
            assert_eq!(req.url, "https://crm.test/v1/contacts?list=7&x=%20");
            assert_eq!(req.target.as_str(), req.url);
        }
    }

    #[test]
    fn a_dot_or_dot_dot_value_in_the_path_is_refused_not_resolved_away() {
        for value in [".", ".."] {
            let (_d, c, t) = setup("t.json.hbs", "{}", "");
            let e = event(serde_json::json!({"email": value}));
            let err = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap_err();
            assert!(matches!(err, RenderError::DotSegment { .. }), "{value}: {err}");
        }
        assert!(!has_dot_segment("https://crm.test/a/b?x=..&y=."));
        assert!(!has_dot_segment("https://crm.test/a/..b/c."));
        assert!(has_dot_segment("https://crm.test/a/../b"));
        assert!(has_dot_segment("https://crm.test/a/%2E%2e/b"));
    }

    #[test]
    fn helpers_behave_as_documented() {
        let body = r#"{"c": "{{coalesce data.none data.empty data.prenom}}", "d": "{{default data.none "fallback"}}",
            "l": "{{lower data.email}}", "u": "{{upper data.prenom}}", "t": "{{trim data.pad}}",
            "m": "{{md5 (lower data.email)}}", "j": "{{join (split data.csv ",") "|"}}", "now": "{{now}}"}"#;
        let (_d, c, t) = setup("t.json.hbs", body, "");
        let e = event(
            serde_json::json!({"empty": "", "prenom": "Zoë", "email": "AMELIE@Example.FR", "pad": "  x ", "csv": "a, b,c"}),
        );
        let ctx = TemplateContext::new(&e, &c.routes[0].vars, "d").at(1_700_000_000_000);
        let req = t.render(&c.routes[0], &ctx).unwrap();
        let v: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(v["c"], "Zoë");
        assert_eq!(v["d"], "fallback");
        assert_eq!(v["l"], "amelie@example.fr");
        assert_eq!(v["u"], "ZOË");
        assert_eq!(v["t"], "x");
        assert_eq!(v["m"], hex::encode(<md5::Md5 as md5::Digest>::digest(b"amelie@example.fr")));
        assert_eq!(v["j"], "a|b|c");
        assert_eq!(v["now"], "2023-11-14T22:13:20Z", "the rendering time, by the relay's clock");
        let unset = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap();
        let v: Value = serde_json::from_str(&unset.body).unwrap();
        assert_eq!(v["now"], rfc3339_seconds(e.received_at), "outside a delivery: when the event was received");
    }

    #[test]
    fn a_body_that_is_not_json_is_a_render_error_with_a_position() {
        let (_d, c, t) = setup("t.json.hbs", "{\"a\": {{data.missing}} }", "");
        let e = event(serde_json::json!({"email": "x"}));
        let err = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap_err();
        assert!(matches!(err, RenderError::NotJson { line: 1, .. }), "{err}");
    }

    #[test]
    fn when_conditions_select_events() {
        let (_d, c, t) = setup("t.hbs", "plain {{data.email}}", "when = \"{{#if data.email}}true{{/if}}\"");
        let with = event(serde_json::json!({"email": "x@y"}));
        let without = event(serde_json::json!({}));
        let vars = &c.routes[0].vars;
        assert!(t.condition_holds(&c.routes[0], &TemplateContext::new(&with, vars, "")).unwrap());
        assert!(!t.condition_holds(&c.routes[0], &TemplateContext::new(&without, vars, "")).unwrap());
    }

    #[test]
    fn omit_empty_leaves_out_blank_values_at_any_depth() {
        let mut v = serde_json::json!({
            "a": "", "b": " ", "c": null, "d": "x", "n": 0, "f": false,
            "o": {"p": "", "q": [null, "", {"r": null, "s": "t"}]},
            "emptied": [null, ""], "kept": [], "obj": {}
        });
        prune_empty(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"d": "x", "n": 0, "f": false, "o": {"q": [{"s": "t"}]}, "kept": [], "obj": {}})
        );
    }

    #[test]
    fn a_placeholder_that_renders_empty_in_the_url_is_a_render_error_naming_it() {
        let (_d, c, t) = setup("t.json.hbs", "{}", "");
        let route = &c.routes[0];
        for data in [serde_json::json!({}), serde_json::json!({"email": ""}), serde_json::json!({"email": "  "})] {
            let e = event(data.clone());
            let err = t.render(route, &TemplateContext::new(&e, &route.vars, "d")).unwrap_err();
            assert!(
                matches!(&err, RenderError::EmptyInUrl { expression, .. } if expression == "{{data.email}}"),
                "{data}: {err}"
            );
            assert!(err.to_string().contains("route r: {{data.email}} in the URL rendered empty"), "{err}");
            // A preview still shows what it can.
            assert!(t.render_step_with(route, 0, &TemplateContext::new(&e, &route.vars, "d"), false).is_ok());
        }
        let e = event(serde_json::json!({"email": "a@b.c"}));
        assert!(t.render(route, &TemplateContext::new(&e, &route.vars, "d")).is_ok());
    }

    #[test]
    fn required_names_the_missing_setting_and_passes_a_value_through() {
        let (_d, c, t) = setup(
            "t.json.hbs",
            r#"{"list": {{required vars.list "set LIST_ID"}}, "n": "{{required data.name "x"}}"}"#,
            "",
        );
        let route = &c.routes[0];
        let e = event(serde_json::json!({"email": "a@b.c", "name": "Zoë \"Z\""}));
        let req = t.render(route, &TemplateContext::new(&e, &route.vars, "d"));
        // vars.list is "a b": not JSON as a bare value, so this body is refused; the name is escaped.
        assert!(req.is_err());
        let mut vars = route.vars.clone();
        vars.insert("list".into(), serde_json::json!(""));
        let err = t.render(route, &TemplateContext::new(&e, &vars, "d")).unwrap_err().to_string();
        assert!(err.contains("vars.list is required: set LIST_ID"), "{err}");
        vars.insert("list".into(), serde_json::json!("12"));
        let req = t.render(route, &TemplateContext::new(&e, &vars, "d")).unwrap();
        let v: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!((v["list"].as_i64(), v["n"].as_str()), (Some(12), Some("Zoë \"Z\"")));
    }

    #[test]
    fn only_placeholders_outside_blocks_must_render_something() {
        assert_eq!(
            top_level_placeholders(
                "https://x.test/a/{{id}}/{{{raw}}}?q={{lower (trim e)}}{{#if p}}&p={{p}}{{/if}}{{~x~}}"
            ),
            ["{{id}}", "{{{raw}}}", "{{lower (trim e)}}", "{{~x~}}"]
        );
        assert_eq!(
            top_level_placeholders("https://x.test/{{#each a}}{{this}}{{else}}{{/each}}{{! note }}"),
            Vec::<String>::new()
        );
        assert_eq!(top_level_placeholders("https://x.test/{{unclosed"), Vec::<String>::new());
    }

    #[test]
    fn escaping_helpers_guard_slack_markup_and_spreadsheet_formulas() {
        let body = r#"{"s": "{{slack_escape data.name}}", "f": "{{sheet_safe data.formula}}", "p": "{{sheet_safe data.plain}}",
            "w": "{{words data.none data.first " " data.last}}", "e": "{{words data.none}}", "d": "{{date data.at}}",
            "x": "{{date data.plain}}", "names": {{json (pluck data.items "name")}}}"#;
        let (_d, c, t) = setup("t.json.hbs", body, "");
        let e = event(
            serde_json::json!({"email": "a@b.c", "name": "A&B <!channel> <mailto:x|y>", "formula": "=HYPERLINK(\"x\")",
            "plain": "Zoë", "first": " Jean ", "last": "O'Connor", "at": "2026-11-27T09:00:13+01:00",
            "items": [{"name": "a"}, {"id": 2}, {"name": "b"}]}),
        );
        let req = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap();
        let v: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(v["s"], "A&amp;B &lt;!channel&gt; &lt;mailto:x|y&gt;");
        assert_eq!(v["f"], "'=HYPERLINK(\"x\")");
        assert_eq!(v["p"], "Zoë");
        assert_eq!((v["w"].as_str(), v["e"].as_str()), (Some("Jean O'Connor"), Some("")));
        assert_eq!((v["d"].as_str(), v["x"].as_str()), (Some("2026-11-27"), Some("")));
        assert_eq!(v["names"], serde_json::json!(["a", "b"]));
        for risky in ["+1", "-1", "@SUM(A1)", "\tx"] {
            let e = event(serde_json::json!({"email": "a@b.c", "formula": risky}));
            let req = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap();
            let v: Value = serde_json::from_str(&req.body).unwrap();
            assert!(v["f"].as_str().unwrap().starts_with('\''), "{risky}: {}", v["f"]);
        }
    }

    #[test]
    fn a_body_that_breaks_its_schema_names_the_field_and_omit_empty_runs_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t.json.hbs"),
            r#"{"email": "{{data.email}}", "amount": {{json data.amount}}, "phone": "{{data.phone}}"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("s.json"),
            r#"{"type": "object", "required": ["email"], "properties": {"amount": {"type": "string"}, "phone": {"type": "string", "minLength": 3}}}"#,
        )
        .unwrap();
        let text = "[sources.lbx]\nsecret_keys=[\"x\"]\n[[routes]]\nname=\"r\"\nevents=[\"*\"]\ntemplate=\"t.json.hbs\"\nschema=\"s.json\"\nomit_empty=true\nurl=\"https://x.test\"\n";
        let c = Config::from_toml(text, &dir.path().join("routes.toml"), &|_| None).unwrap();
        let t = Templates::compile(&c).unwrap();
        let e = event(serde_json::json!({"email": "a@b.c", "amount": 97.5, "phone": ""}));
        let err = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap_err().to_string();
        assert!(err.contains("/amount") && err.contains("s.json"), "{err}");
        assert!(!err.contains("/phone"), "the empty phone was left out before the check: {err}");
        let e = event(serde_json::json!({"email": "a@b.c", "amount": "97.5"}));
        let req = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap();
        assert_eq!(req.body, r#"{"amount":"97.5","email":"a@b.c"}"#);
    }

    #[test]
    fn a_template_syntax_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json.hbs"), "{{#if x}}").unwrap();
        let text = "[sources.lbx]\nsecret_keys=[\"x\"]\n[[routes]]\nname=\"r\"\nevents=[\"*\"]\ntemplate=\"bad.json.hbs\"\nurl=\"https://x.test\"\n";
        let c = Config::from_toml(text, &dir.path().join("routes.toml"), &|_| None).unwrap();
        let errs = Templates::compile(&c).unwrap_err();
        assert!(errs[0].to_string().contains("bad.json.hbs"), "{}", errs[0]);
    }
}
