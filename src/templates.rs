//! Handlebars rendering of route requests: every route's body, URL and `when` condition compiled
//! once per config load; `.json.hbs` bodies escape values as JSON strings (never HTML) and must
//! parse as JSON; URL templates percent-encode what they insert; the helper set users rely on.

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
    #[error(
        "route {route}: the body rendered from {file} is not valid JSON: {message} (line {line}, column {column})"
    )]
    NotJson { route: String, file: String, message: String, line: usize, column: usize },
    #[error("route {route}: the rendered URL {url:?} is not a valid http(s) URL")]
    BadUrl { route: String, url: String },
    #[error("route {0} is not configured")]
    UnknownRoute(String),
}

/// The data a template sees.
#[derive(Serialize)]
pub struct TemplateContext<'a> {
    pub event: &'a str,
    pub id: &'a str,
    pub source: &'a str,
    pub received_at: String,
    pub data: &'a Value,
    pub vars: &'a BTreeMap<String, String>,
    /// The delivery being rendered (empty outside a delivery, e.g. in `when`).
    pub delivery_id: &'a str,
    /// Earlier steps' answers of a multi-step route: `steps.NAME.status`, `steps.NAME.body`.
    pub steps: &'a Value,
}

static NO_STEPS: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| Value::Object(Default::default()));

impl<'a> TemplateContext<'a> {
    pub fn new(event: &'a Event, vars: &'a BTreeMap<String, String>, delivery_id: &'a str) -> Self {
        TemplateContext {
            event: &event.kind,
            id: &event.key,
            source: &event.source,
            received_at: rfc3339(event.received_at),
            data: &event.data,
            vars,
            delivery_id,
            steps: &NO_STEPS,
        }
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
        };
        let mut errors = Vec::new();
        for route in &config.routes {
            if let Err(e) = t.add_route(route) {
                errors.push(e);
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
                registry
                    .register_template_string(&body_key(&route.name, i), &source)
                    .map_err(|e| RenderError::Compile { file: file.clone(), message: template_error_message(&e) })?;
                if is_json {
                    self.json_bodies.insert(body_key(&route.name, i), file);
                }
            }
            self.url.register_template_string(&url_key(&route.name, i), &step.url).map_err(|e| {
                RenderError::Compile { file: format!("{what} url"), message: template_error_message(&e) }
            })?;
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

    /// The request of a plain route (the first step of a multi-step one) for the event in `ctx`.
    pub fn render(&self, route: &RouteConfig, ctx: &TemplateContext<'_>) -> Result<RenderedRequest, RenderError> {
        self.render_step(route, 0, ctx)
    }

    /// The request step `i` of `route` sends for the event (and earlier answers) in `ctx`.
    pub fn render_step(
        &self,
        route: &RouteConfig,
        i: usize,
        ctx: &TemplateContext<'_>,
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
            let body = registry.render(&key, ctx).map_err(|e| RenderError::Render {
                route: route.name.clone(),
                what: "body",
                message: template_error_message(&e),
            })?;
            if let Some(file) = json_file {
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
                    return Err(RenderError::NotJson {
                        route: route.name.clone(),
                        file: file.clone(),
                        message: e.to_string(),
                        line: e.line(),
                        column: e.column(),
                    });
                }
            }
            body
        };
        // A URL without placeholders was validated with the config; only templated ones are
        // rendered and checked per request.
        let url = if step.url.contains("{{") {
            let url = self.url.render(&url_key(&route.name, i), ctx).map_err(|e| RenderError::Render {
                route: route.name.clone(),
                what: "url",
                message: template_error_message(&e),
            })?;
            match reqwest::Url::parse(url.trim()) {
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

/// Empty, `false`, `0`, `no` and `null` (trimmed, any case) are false; anything else is true.
fn truthy(out: &str) -> bool {
    let v = out.trim().to_ascii_lowercase();
    !matches!(v.as_str(), "" | "false" | "0" | "no" | "null")
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
handlebars_helper!(now: | | humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());

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

fn register_helpers(h: &mut Handlebars<'static>) {
    h.register_helper("json", Box::new(json_helper));
    h.register_helper("coalesce", Box::new(coalesce));
    h.register_helper("default", Box::new(default_helper));
    h.register_helper("lower", Box::new(lower));
    h.register_helper("upper", Box::new(upper));
    h.register_helper("trim", Box::new(trim));
    h.register_helper("md5", Box::new(md5_helper));
    h.register_helper("split", Box::new(split));
    h.register_helper("join", Box::new(join));
    h.register_helper("now", Box::new(now));
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
    fn url_values_are_percent_encoded() {
        let (_d, c, t) = setup("t.json.hbs", "{}", "");
        let e = event(serde_json::json!({"email": "a+b@x.fr/../"}));
        let req = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap();
        assert_eq!(req.url, "https://crm.test/lists/a%20b/a%2Bb%40x.fr%2F..%2F");
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
        let req = t.render(&c.routes[0], &TemplateContext::new(&e, &c.routes[0].vars, "d")).unwrap();
        let v: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(v["c"], "Zoë");
        assert_eq!(v["d"], "fallback");
        assert_eq!(v["l"], "amelie@example.fr");
        assert_eq!(v["u"], "ZOË");
        assert_eq!(v["t"], "x");
        assert_eq!(v["m"], hex::encode(<md5::Md5 as md5::Digest>::digest(b"amelie@example.fr")));
        assert_eq!(v["j"], "a|b|c");
        assert!(v["now"].as_str().unwrap().starts_with("20"));
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
    fn a_template_syntax_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json.hbs"), "{{#if x}}").unwrap();
        let text = "[sources.lbx]\nsecret_keys=[\"x\"]\n[[routes]]\nname=\"r\"\nevents=[\"*\"]\ntemplate=\"bad.json.hbs\"\nurl=\"https://x.test\"\n";
        let c = Config::from_toml(text, &dir.path().join("routes.toml"), &|_| None).unwrap();
        let errs = Templates::compile(&c).unwrap_err();
        assert!(errs[0].to_string().contains("bad.json.hbs"), "{}", errs[0]);
    }
}
