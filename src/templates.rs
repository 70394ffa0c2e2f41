//! Handlebars rendering of route requests: every route's body, URL and `when` condition compiled
//! once per config load; `.json.hbs` bodies escape values as JSON strings (never HTML) and must
//! parse as JSON; URL templates percent-encode what they insert; `omit_empty` pruning and `schema`
//! validation of rendered bodies; the helper set users rely on.

use std::collections::BTreeMap;

use handlebars::{
    handlebars_helper, Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde::Serialize;
use serde_json::Value;

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
    rendered_at: String,
}

/// `{{now}}`: the context's rendering time, RFC 3339 to the second (read from the root context,
/// so it is the same inside `#each` blocks and usable as a subexpression).
struct Now;

impl handlebars::HelperDef for Now {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        _: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<handlebars::ScopedJson<'rc>, handlebars::RenderError> {
        Ok(handlebars::ScopedJson::Derived(ctx.data().get("rendered_at").cloned().unwrap_or(Value::Null)))
    }
}

fn rfc3339_seconds(ms: i64) -> String {
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
            rendered_at: rfc3339_seconds(event.received_at),
        }
    }

    /// The same context rendered at `now` (Unix ms), what `{{now}}` gives.
    pub fn at(mut self, now: i64) -> Self {
        self.rendered_at = rfc3339_seconds(now);
        self
    }

    /// The same context with earlier steps' answers.
    pub fn with_steps(mut self, steps: &'a Value) -> Self {
        self.steps = steps;
        self
    }
}

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct RenderedRequest {
    pub method: reqwest::Method,
    pub url: String,
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

/// Escapes a value for the inside of a JSON string literal.
pub fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_string()
}

/// Escapes a value for a URL path segment or query value.
pub fn url_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
        .replace("%2E", ".")
        .replace("%5F", "_")
        .replace("%7E", "~")
}

/// Whether the path of `url` has a `.` or `..` segment, written plainly or percent-encoded: URL
/// parsers (WHATWG, reqwest's) resolve both away, so `/contacts/{{email}}/sub` with an e-mail of
/// `..` would go out as `/sub`.
pub fn has_dot_segment(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let Some((_, path)) = after_scheme.split_once('/') else { return false };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
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
        let out = self.plain.render(&when_key(&route.name), ctx).map_err(|e| RenderError::Render {
            route: route.name.clone(),
            what: "when",
            message: template_error_message(&e),
        })?;
        Ok(truthy(&out))
    }

    /// The ordering key of `route` for the event in `ctx` (`order_by`), trimmed; `None` when the
    /// route has none or it renders empty.
    pub fn ordering_key(&self, route: &RouteConfig, ctx: &TemplateContext<'_>) -> Result<Option<String>, RenderError> {
        if route.order_by.is_none() {
            return Ok(None);
        }
        let out = self.plain.render(&order_key(&route.name), ctx).map_err(|e| RenderError::Render {
            route: route.name.clone(),
            what: "order_by",
            message: template_error_message(&e),
        })?;
        let key = out.trim();
        Ok((!key.is_empty()).then(|| key.to_string()))
    }

    /// Whether step `i` of `route` is to be sent (true when it has no `when`), with the same
    /// reading of the output as [`Templates::condition_holds`].
    pub fn step_applies(&self, route: &RouteConfig, i: usize, ctx: &TemplateContext<'_>) -> Result<bool, RenderError> {
        if route.steps.get(i).is_none_or(|s| s.when.is_none()) {
            return Ok(true);
        }
        let out = self.plain.render(&step_when_key(&route.name, i), ctx).map_err(|e| RenderError::Render {
            route: route.name.clone(),
            what: "step when",
            message: template_error_message(&e),
        })?;
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
        let step = route.steps.get(i).ok_or_else(|| RenderError::UnknownRoute(route.name.clone()))?;
        let previewed;
        let ctx = if validate {
            ctx
        } else {
            previewed = TemplateContext { preview: true, ..ctx.clone() };
            &previewed
        };
        if !self.url.has_template(&url_key(&route.name, i)) {
            return Err(RenderError::UnknownRoute(route.name.clone()));
        }
        let key = body_key(&route.name, i);
        let json_file = self.json_bodies.get(&key);
        let body = if step.template.is_none() {
            String::new()
        } else {
            let registry = if json_file.is_some() { &self.json } else { &self.plain };
            let body = registry.render(&key, ctx).map_err(|e| RenderError::Render {
                route: route.name.clone(),
                what: "body",
                message: template_error_message(&e),
            })?;
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
        let url = if step.url.contains("{{") {
            let url = self.url.render(&url_key(&route.name, i), ctx).map_err(|e| RenderError::Render {
                route: route.name.clone(),
                what: "url",
                message: template_error_message(&e),
            })?;
            // A preview (`validate` off) shows what it can; a real request never has a hole.
            if validate {
                for (expression, key) in self.url_parts.get(&url_key(&route.name, i)).into_iter().flatten() {
                    let blank =
                        |out: String| percent_encoding::percent_decode_str(&out).decode_utf8_lossy().trim().is_empty();
                    if self.url.render(key, ctx).is_ok_and(blank) {
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
                Ok(u) if matches!(u.scheme(), "http" | "https") => url,
                _ => return Err(RenderError::BadUrl { route: route.name.clone(), url }),
            }
        } else {
            step.url.clone()
        };
        let mut headers = step.headers.clone();
        if json_file.is_some() && !headers.iter().any(|h| h.name.eq_ignore_ascii_case("content-type")) {
            headers.push(HeaderSpec {
                name: "Content-Type".into(),
                value: "application/json".to_string().into(),
                from_env: false,
            });
        }
        Ok(RenderedRequest { method: step.method.clone(), url: url.trim().to_string(), headers, body })
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

/// Why a step's `schema` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read the schema")]
    Read(#[source] std::io::Error),
    #[error("the schema is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("not a valid JSON Schema: {0}")]
    Invalid(String),
}

/// Reads and compiles a JSON Schema file (its `$schema`, else draft 2020-12; formats are
/// annotations, as the draft says). References to other files or URLs are not fetched.
fn load_schema(path: &std::path::Path) -> Result<jsonschema::Validator, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(SchemaError::Read)?;
    let value: Value = serde_json::from_str(&text).map_err(SchemaError::NotJson)?;
    // The validator's error borrows the schema: its text is what can be kept.
    jsonschema::validator_for(&value).map_err(|e| SchemaError::Invalid(e.to_string()))
}

/// At most this many violations are named in one message.
const SCHEMA_PROBLEMS_SHOWN: usize = 3;

fn check_schema(
    route: &RouteConfig,
    step: &crate::config::StepConfig,
    validator: &jsonschema::Validator,
    file: &str,
    body: &Value,
) -> Result<(), RenderError> {
    let mut problems: Vec<String> = validator
        .iter_errors(body)
        .take(SCHEMA_PROBLEMS_SHOWN + 1)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "the body".to_string() } else { at };
            format!("{at}: {e}")
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    if problems.len() > SCHEMA_PROBLEMS_SHOWN {
        problems.truncate(SCHEMA_PROBLEMS_SHOWN);
        problems.push("…".into());
    }
    let route = if route.is_multi_step() { format!("{} step {}", route.name, step.name) } else { route.name.clone() };
    Err(RenderError::Schema { route, file: file.to_string(), problems: problems.join("; ") })
}

/// `omit_empty`: removes every object member whose value is null or a blank string, and every such
/// array element, at any depth, so a sparse event never sends a value that would clear the CRM's.
/// An array left empty by that is removed too; arrays and objects empty as rendered stay (they can
/// be required, e.g. HubSpot's `associations: []`).
pub fn prune_empty(value: &mut Value) {
    /// Prunes below `v`; true when `v` itself is to go.
    fn prune(v: &mut Value) -> bool {
        match v {
            Value::Null => true,
            Value::String(s) => s.trim().is_empty(),
            Value::Array(items) => {
                let before = items.len();
                items.retain_mut(|i| !prune(i));
                before > 0 && items.is_empty()
            }
            Value::Object(map) => {
                map.retain(|_, v| !prune(v));
                false
            }
            _ => false,
        }
    }
    prune(value);
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

// ---- helpers ---------------------------------------------------------------------------------

/// The text a value stands for in string helpers: strings as is, null as empty, others as JSON.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

handlebars_helper!(coalesce: |*args| {
    args.iter().find(|v| !is_empty(v)).map(|v| (*v).clone()).unwrap_or(Value::Null)
});
handlebars_helper!(default_helper: |v: Json, fallback: Json| {
    if is_empty(v) { fallback.clone() } else { v.clone() }
});
handlebars_helper!(lower: |v: Json| as_text(v).to_lowercase());
handlebars_helper!(upper: |v: Json| as_text(v).to_uppercase());
handlebars_helper!(trim: |v: Json| as_text(v).trim().to_string());
handlebars_helper!(md5_helper: |v: Json| {
    use ::md5::{Digest, Md5};
    hex::encode(Md5::digest(as_text(v).as_bytes()))
});
handlebars_helper!(split: |v: Json, sep: str| {
    let text = as_text(v);
    if text.is_empty() {
        Value::Array(vec![])
    } else {
        Value::Array(text.split(sep).map(|s| Value::String(s.trim().to_string())).collect())
    }
});
handlebars_helper!(join: |v: Json, sep: str| {
    match v {
        Value::Array(items) => items.iter().map(as_text).collect::<Vec<_>>().join(sep),
        other => as_text(other),
    }
});
// `{{replace s "." "_"}}`: every occurrence of the second argument replaced by the third.
handlebars_helper!(replace: |v: Json, from: str, to: str| {
    let text = as_text(v);
    if from.is_empty() { text } else { text.replace(from, to) }
});
// `{{words a b c}}`: the non-empty arguments, trimmed, joined by single spaces (a full name that is
// empty, not " ", when both parts are missing).
handlebars_helper!(words: |*args| {
    args.iter().map(|v| as_text(v).trim().to_string()).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
});
// `{{date value}}`: the `YYYY-MM-DD` at the start of an RFC 3339 / ISO 8601 date, else empty.
handlebars_helper!(date: |v: Json| {
    let text = as_text(v);
    let day = text.trim().get(..10).unwrap_or_default();
    let b = day.as_bytes();
    let ok = b.len() == 10 && b[4] == b'-' && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if ok { day.to_string() } else { String::new() }
});
// `{{pluck items "name"}}`: the `name` of every object in `items`, as an array (missing ones left out).
handlebars_helper!(pluck: |items: Json, field: str| {
    match items {
        Value::Array(list) => Value::Array(list.iter().filter_map(|i| i.get(field)).filter(|v| !v.is_null()).cloned().collect()),
        _ => Value::Array(vec![]),
    }
});
// `{{slack_escape s}}`: Slack's control characters `&`, `<`, `>` as entities, so contact data is
// shown as typed and never read as a link, mention or command.
handlebars_helper!(slack_escape: |v: Json| {
    as_text(v).replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
});
// `{{sheet_safe s}}`: a value a spreadsheet shows as text, never runs as a formula: one starting
// with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'` (OWASP's CSV-injection rule).
handlebars_helper!(sheet_safe: |v: Json| {
    let text = as_text(v);
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text }
});

/// `{{json value}}` writes the value as JSON, unescaped, so it can stand as a JSON value.
fn json_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let text = serde_json::to_string(&value).map_err(|e| RenderErrorReason::Other(e.to_string()))?;
    out.write(&text)?;
    Ok(())
}

/// `{{required value "what to set"}}` gives the value (escaped like any value), or fails the
/// render with the message when it is missing or blank: a setting a connector cannot do without
/// is named instead of sent empty.
struct Required;

impl handlebars::HelperDef for Required {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<handlebars::ScopedJson<'rc>, handlebars::RenderError> {
        let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
        let preview = ctx.data().get("preview") == Some(&Value::Bool(true));
        if is_empty(&value) && !preview {
            let what = h.param(1).and_then(|p| p.value().as_str().map(str::to_string)).unwrap_or_default();
            let name = h.param(0).and_then(|p| p.relative_path().cloned()).unwrap_or_else(|| "a value".into());
            return Err(RenderErrorReason::Other(format!("{name} is required: {what}")).into());
        }
        Ok(handlebars::ScopedJson::Derived(value))
    }
}

fn register_helpers(h: &mut Handlebars<'static>) {
    h.register_helper("json", Box::new(json_helper));
    h.register_helper("required", Box::new(Required));
    h.register_helper("coalesce", Box::new(coalesce));
    h.register_helper("default", Box::new(default_helper));
    h.register_helper("lower", Box::new(lower));
    h.register_helper("upper", Box::new(upper));
    h.register_helper("trim", Box::new(trim));
    h.register_helper("md5", Box::new(md5_helper));
    h.register_helper("split", Box::new(split));
    h.register_helper("join", Box::new(join));
    h.register_helper("replace", Box::new(replace));
    h.register_helper("now", Box::new(Now));
    h.register_helper("words", Box::new(words));
    h.register_helper("date", Box::new(date));
    h.register_helper("pluck", Box::new(pluck));
    h.register_helper("slack_escape", Box::new(slack_escape));
    h.register_helper("sheet_safe", Box::new(sheet_safe));
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
