//! The helpers a template can call (`json`, `required`, `coalesce`, `default`, `lower`, `now`, …),
//! registered on every registry.

use handlebars::{
    handlebars_helper, Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde_json::Value;

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
        // Formatted only here: most templates never ask for it.
        let at = ctx.data().get("rendered_at").and_then(Value::as_i64);
        Ok(handlebars::ScopedJson::Derived(at.map_or(Value::Null, |ms| super::rfc3339_seconds(ms).into())))
    }
}

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

pub(super) fn register_helpers(h: &mut Handlebars<'static>) {
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
