//! Which payload fields a route reads and where a path stands in a payload: the fields of a
//! route's templates, URLs and conditions (field coverage counts them, `check` judges them), a
//! path's value in an event, and the nearest existing path to one an event lacks.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::RouteConfig;

/// The names a template can start a path with.
pub(crate) const ROOTS: &[&str] = &[
    "event",
    "id",
    "learnybox_id",
    "relay_event_id",
    "source",
    "received_at",
    "data",
    "vars",
    "delivery_id",
    "steps",
    "preview",
    "this",
];

/// A field a route reads from the event: its first path and the alternatives in the same `{{…}}`
/// (`coalesce a b c`: present when any is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub path: String,
    pub alternatives: Vec<String>,
}

/// The fields `route` reads (templates, URLs, conditions), each once: what field coverage counts.
/// `#if` conditions (optional by design) and branches for event types the route never gets are
/// left out.
pub fn route_fields(route: &RouteConfig) -> Vec<Field> {
    let takes = |kind: &str| crate::routing::matches_any(&route.events, kind);
    let mut out: Vec<Field> = Vec::new();
    for (_, text) in route_sources(route) {
        let (groups, optional) = expressions(&text, &takes);
        for g in groups {
            if g.data.is_empty() || g.data.iter().any(|p| optional.contains(p)) {
                continue;
            }
            if out.iter().any(|f| f.path == g.data[0]) {
                continue;
            }
            out.push(Field { path: g.data[0].clone(), alternatives: g.data[1..].to_vec() });
        }
    }
    out.truncate(200);
    out
}

/// (where, text) of every template, URL and condition of `route`.
pub(crate) fn route_sources(route: &RouteConfig) -> Vec<(String, String)> {
    let mut sources: Vec<(String, String)> = Vec::new();
    if let Some(when) = &route.when {
        sources.push(("when".into(), when.clone()));
    }
    for step in &route.steps {
        let what = if route.is_multi_step() { format!("step {} ", step.name) } else { String::new() };
        if let Some(t) = &step.template {
            if let Ok(text) = std::fs::read_to_string(t) {
                let file = t.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                sources.push((format!("{what}template {file}"), text));
            }
        }
        sources.push((format!("{what}url"), step.url.clone()));
        if let Some(w) = &step.when {
            sources.push((format!("{what}when"), w.clone()));
        }
    }
    sources
}

/// The paths of one `{{…}}`: those under `data.` (any one present is enough: `coalesce a b`), and
/// dotted ones that start with no context name.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Expression {
    pub(crate) data: Vec<String>,
    pub(crate) unrooted: Vec<String>,
}

/// The expressions of a template, each with its paths, and the paths used as an `#if` / `#unless`
/// condition (optional by design: not judged). Paths inside `#each` / `#with` blocks that are
/// relative to the block's item are not judged, nor anything inside an `{{#if (eq event "x")}}`
/// branch for an event type `takes` says the route never gets.
pub(crate) fn expressions(template: &str, takes: &dyn Fn(&str) -> bool) -> (Vec<Expression>, BTreeSet<String>) {
    let mut out = Vec::new();
    let mut optional = BTreeSet::new();
    let mut relative_depth = 0usize;
    // One entry per open #if / #unless: whether its current branch can never render.
    let mut branches: Vec<(bool, bool)> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let triple = rest[start..].starts_with("{{{");
        let close = if triple { "}}}" } else { "}}" };
        let Some(len) = rest[start..].find(close) else { break };
        let inner = rest[start..start + len].trim_start_matches('{').trim_matches('~').trim();
        rest = &rest[start + len + close.len()..];
        if inner.starts_with('!') || inner.starts_with('>') {
            continue;
        }
        if let Some(closing) = inner.strip_prefix('/') {
            match closing.trim() {
                "each" | "with" => relative_depth = relative_depth.saturating_sub(1),
                "if" | "unless" => {
                    branches.pop();
                }
                _ => {}
            }
            continue;
        }
        if inner == "else" || inner.starts_with("else ") {
            if let Some((dead, on_event)) = branches.last_mut() {
                if *on_event {
                    *dead = !*dead;
                }
            }
            continue;
        }
        let (block, body) = match inner.strip_prefix('#') {
            Some(b) => {
                let name = b.split_whitespace().next().unwrap_or_default();
                (Some(name), b.trim_start_matches(name))
            }
            None => (None, inner.strip_prefix('^').unwrap_or(inner)),
        };
        let dead_here = branches.iter().any(|(dead, _)| *dead);
        if matches!(block, Some("if" | "unless")) {
            let event = event_literal(body);
            let dead = block == Some("if") && event.is_some_and(|lit| !takes(lit));
            branches.push((dead, event.is_some()));
            for word in words(body) {
                optional.insert(word.trim_start_matches("../").to_string());
            }
            continue;
        }
        if dead_here {
            if matches!(block, Some("each" | "with")) {
                relative_depth += 1;
            }
            continue;
        }
        let mut e = Expression::default();
        for word in words(body) {
            let path = word.trim_start_matches("../");
            let first = path.split(['.', '[']).next().unwrap_or_default();
            if path.starts_with("data.") {
                e.data.push(path.to_string());
            } else if path.contains('.')
                && relative_depth == 0
                && !ROOTS.contains(&first)
                && !first.starts_with('@')
                && !first.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '-')
            {
                e.unrooted.push(path.to_string());
            }
        }
        if matches!(block, Some("each" | "with")) {
            relative_depth += 1;
        }
        if !e.data.is_empty() || !e.unrooted.is_empty() {
            out.push(e);
        }
    }
    (out, optional)
}

/// `x` of a condition `(eq event "x")`.
pub(crate) fn event_literal(condition: &str) -> Option<&str> {
    let at = condition.find("eq event ")?;
    let rest = condition[at + "eq event ".len()..].trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &rest[1..];
    Some(&rest[..rest.find(quote)?])
}

/// The words of an expression: helper names and paths, without string literals or parentheses.
pub(crate) fn words(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() || c == b'(' || c == b')' || c == b'=' {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_whitespace() || matches!(bytes[i], b'(' | b')' | b'"' | b'\'')) {
            i += 1;
        }
        // A hash argument `key=value` keeps its value.
        let word = &expr[start..i];
        out.push(word.rsplit('=').next().unwrap_or(word));
    }
    out
}

/// The value at template path `data.a.b` (`data` is the whole decrypted JSON), if any and not null.
pub fn resolve<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = data;
    for seg in path.strip_prefix("data")?.split('.').filter(|s| !s.is_empty()) {
        let seg = seg.trim_start_matches('[').trim_end_matches(']');
        cur = match cur {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!cur.is_null()).then_some(cur)
}

/// What stands near a path the payloads lack: a path a typo away, else the keys its parent has.
pub(crate) enum Nearby {
    Path(String),
    Keys { parent: String, keys: Vec<String> },
}

pub(crate) fn nearby(path: &str, payloads: &[&Value]) -> Option<Nearby> {
    let mut all = BTreeSet::new();
    for v in payloads {
        collect_paths(v, "data", &mut all, 0);
    }
    if let Some(found) = crate::suggest::closest(path, all.iter().map(String::as_str)) {
        return Some(Nearby::Path(found.to_string()));
    }
    // Same parent, a key of the same kind: `prenom` ↔ `first_name` are not a typo apart.
    let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("data");
    let keys: Vec<String> = all
        .iter()
        .filter_map(|p| p.strip_prefix(parent)?.strip_prefix('.'))
        .filter(|rest| !rest.contains('.'))
        .map(str::to_string)
        .collect();
    (!keys.is_empty()).then(|| Nearby::Keys { parent: parent.to_string(), keys })
}

/// The path in `data` closest to `path` (a typo away), else the keys its parent has
/// (`data.data.contact.{email, first_name}`), for field coverage's alert.
pub fn nearest(path: &str, data: &Value) -> Option<String> {
    nearby(path, &[data]).map(|n| match n {
        Nearby::Path(p) => p,
        Nearby::Keys { parent, keys } => format!("{parent}.{{{}}}", keys.join(", ")),
    })
}

/// " (did you mean `data.x.y`?)" for the closest existing path, or the keys beside it, for `check`.
pub(crate) fn closest_path(path: &str, payloads: &[&Value]) -> String {
    match nearby(path, payloads) {
        Some(Nearby::Path(p)) => format!(" (did you mean `{p}`?)"),
        Some(Nearby::Keys { parent, keys }) => {
            let list: Vec<&str> = keys.iter().take(12).map(String::as_str).collect();
            format!("; `{parent}` has: {}", list.join(", "))
        }
        None => String::new(),
    }
}

pub(crate) fn collect_paths(v: &Value, at: &str, out: &mut BTreeSet<String>, depth: usize) {
    if depth > 8 {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{at}.{k}");
                out.insert(p.clone());
                collect_paths(child, &p, out, depth + 1);
            }
        }
        Value::Array(items) => {
            if let Some(first) = items.first() {
                collect_paths(first, &format!("{at}.[0]"), out, depth + 1);
            }
        }
        _ => {}
    }
}
