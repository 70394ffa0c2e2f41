//! What would lose data quietly although the config is valid, said by `check` (and logged by
//! `serve`) as warnings with the file's line and a suggestion: an `events` entry no known event
//! type matches, a template path no sample or stored event has, a `when` no sample satisfies or
//! that reads an empty variable, and an exported variable one edit away from one the config reads.
//! "Known" is the bundled samples plus every event this relay's store has received.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::config::RouteConfig;
use crate::runtime::Runtime;
use crate::store::TypeSeen;

/// The events the config is checked against: the samples and the payloads the store has seen.
#[derive(Debug, Default)]
pub struct Known {
    /// Every event type known.
    pub types: BTreeSet<String>,
    /// (event type, whole decrypted JSON) of every sample and of the newest stored event per type.
    pub payloads: Vec<(String, Value)>,
}

impl Known {
    /// The samples (`(label, JSON)`, as `check` reads them) and the stored types, as the first
    /// source of `rt` would make events of them.
    pub fn new(rt: &Runtime, samples: &[(String, Value)], seen: &[TypeSeen]) -> Known {
        let mut known = Known::default();
        for (_, sample) in samples {
            if let Ok(event) = crate::preflight::event_from_json(rt, sample.clone()) {
                known.types.insert(event.kind.clone());
                known.payloads.push((event.kind, event.data));
            }
        }
        for t in seen {
            known.types.insert(t.kind.clone());
            if let Some(p) = t.recent_payload.as_deref().and_then(|p| serde_json::from_str(p).ok()) {
                known.payloads.push((t.kind.clone(), p));
            }
        }
        known
    }

    /// The payloads of the event types `route` takes.
    fn for_route<'a>(&'a self, route: &'a RouteConfig) -> impl Iterator<Item = &'a Value> + 'a {
        self.payloads.iter().filter(|(kind, _)| crate::routing::matches_any(&route.events, kind)).map(|(_, v)| v)
    }
}

/// Every warning for `rt` (whose file's text is `text`), given what is known and the variables
/// the environment exports.
pub fn lint(rt: &Runtime, text: &str, known: &Known, exported: &[String]) -> Vec<String> {
    let shown = rt.config.path.display().to_string();
    let at = |key: &str| match crate::config::line_of(text, key) {
        Some(line) => format!("{shown}:{line}: {key}"),
        None => format!("{shown}: {key}"),
    };
    let mut out = Vec::new();
    for (i, route) in rt.config.routes.iter().enumerate() {
        let key = format!("routes[{i}] ({})", route.name);
        events_known(route, known, &mut |m| out.push(format!("{}: {m}", at(&format!("{key}.events")))));
        paths_known(route, known, &mut |m| out.push(format!("{}: {m}", at(&key))));
        condition_satisfiable(rt, route, known, &mut |m| out.push(format!("{}: {m}", at(&format!("{key}.when")))));
    }
    let read: BTreeMap<String, Option<String>> = crate::init::variables(text);
    for name in exported {
        if read.contains_key(name) || name.len() < 5 {
            continue;
        }
        if let Some(meant) = crate::suggest::closest(name, read.keys().map(String::as_str)) {
            let fallback = match read.get(meant) {
                Some(Some(default)) => format!(", so its default {default:?} is used"),
                Some(None) | None => String::new(),
            };
            out.push(format!(
                "{shown}: the environment exports {name}, which the config does not read; it reads {meant}{fallback} \
                 — a typo in the variable's name?"
            ));
        }
    }
    out
}

/// An `events` entry that matches no known event type would route nothing.
fn events_known(route: &RouteConfig, known: &Known, warn: &mut dyn FnMut(String)) {
    for glob in &route.events {
        if glob == "*" || known.types.iter().any(|t| crate::routing::matches_any(std::slice::from_ref(glob), t)) {
            continue;
        }
        let hint = crate::suggest::hint(glob, known.types.iter().map(String::as_str));
        warn(format!(
            "{glob:?} matches no known event type{hint}: no sample and no event received so far has it, so \
             this route may never send anything (`lbx-relay types` lists the types that really arrive)"
        ));
    }
}

/// The names a template can start a path with.
const ROOTS: &[&str] = &[
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
fn route_sources(route: &RouteConfig) -> Vec<(String, String)> {
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

/// A template path under `data.` that no payload of the route's event types has, or a dotted path
/// that starts with no name of the template context (`{{contact.prenom}}`).
fn paths_known(route: &RouteConfig, known: &Known, warn: &mut dyn FnMut(String)) {
    let payloads: Vec<&Value> = known.for_route(route).collect();
    let sources = route_sources(route);
    let mut said = BTreeSet::new();
    let takes = |kind: &str| crate::routing::matches_any(&route.events, kind);
    for (where_, text) in &sources {
        let (groups, optional) = expressions(text, &takes);
        for group in groups {
            for stray in &group.unrooted {
                if said.insert(stray.clone()) {
                    let hint = match stray.split('.').next() {
                        Some(first) if first != "data" => format!(" (did you mean `data.data.{stray}`?)"),
                        _ => String::new(),
                    };
                    warn(format!(
                        "{where_}: `{stray}` is not in the template context (it starts with event, id, data, vars, \
                         steps, …), so it always renders empty{hint}"
                    ));
                }
            }
            if payloads.is_empty() || group.data.is_empty() || group.data.iter().any(|p| optional.contains(p)) {
                continue;
            }
            if group.data.iter().any(|p| payloads.iter().any(|v| resolve(v, p).is_some())) {
                continue;
            }
            let first = &group.data[0];
            if !said.insert(first.clone()) {
                continue;
            }
            let alternatives = if group.data.len() > 1 { " nor its alternatives" } else { "" };
            warn(format!(
                "{where_}: `{first}`{alternatives} is in no sample and no received event of this route's types, \
                 so it always renders empty{}",
                closest_path(first, &payloads)
            ));
        }
    }
}

/// A `when` that no sample satisfies (of those the route's `events` take), or that reads a `vars`
/// value that is empty (its variable unset).
fn condition_satisfiable(rt: &Runtime, route: &RouteConfig, known: &Known, warn: &mut dyn FnMut(String)) {
    let Some(when) = &route.when else { return };
    for (name, value) in &route.vars {
        if value.as_str().is_some_and(|v| v.trim().is_empty()) && when.contains(&format!("vars.{name}")) {
            warn(format!(
                "the condition reads vars.{name}, which is empty (its variable is not set?): the route sends nothing"
            ));
        }
    }
    let mut taken = 0;
    for (kind, data) in known.payloads.iter().filter(|(k, _)| crate::routing::matches_any(&route.events, k)) {
        let Value::Object(map) = data.clone() else { continue };
        let (source, cfg) = match rt.config.sources.iter().next() {
            Some(s) => s,
            None => return,
        };
        let event = crate::event::Event::from_plaintext(source, map, None, &cfg.event_field, &cfg.id_field, 0);
        if &event.kind != kind {
            continue;
        }
        taken += 1;
        let ctx = crate::templates::TemplateContext::new(&event, &route.vars, "");
        if rt.templates.condition_holds(route, &ctx).unwrap_or(false) {
            return;
        }
    }
    if taken > 0 {
        warn(format!(
            "no sample or received event of this route's types ({taken} of them) satisfies its `when`: the \
             route would send none of them"
        ));
    }
}

/// The paths of one `{{…}}`: those under `data.` (any one present is enough: `coalesce a b`), and
/// dotted ones that start with no context name.
#[derive(Debug, Default, PartialEq)]
struct Expression {
    data: Vec<String>,
    unrooted: Vec<String>,
}

/// The expressions of a template, each with its paths, and the paths used as an `#if` / `#unless`
/// condition (optional by design: not judged). Paths inside `#each` / `#with` blocks that are
/// relative to the block's item are not judged, nor anything inside an `{{#if (eq event "x")}}`
/// branch for an event type `takes` says the route never gets.
fn expressions(template: &str, takes: &dyn Fn(&str) -> bool) -> (Vec<Expression>, BTreeSet<String>) {
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
fn event_literal(condition: &str) -> Option<&str> {
    let at = condition.find("eq event ")?;
    let rest = condition[at + "eq event ".len()..].trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &rest[1..];
    Some(&rest[..rest.find(quote)?])
}

/// The words of an expression: helper names and paths, without string literals or parentheses.
fn words(expr: &str) -> Vec<&str> {
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
enum Nearby {
    Path(String),
    Keys { parent: String, keys: Vec<String> },
}

fn nearby(path: &str, payloads: &[&Value]) -> Option<Nearby> {
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
fn closest_path(path: &str, payloads: &[&Value]) -> String {
    match nearby(path, payloads) {
        Some(Nearby::Path(p)) => format!(" (did you mean `{p}`?)"),
        Some(Nearby::Keys { parent, keys }) => {
            let list: Vec<&str> = keys.iter().take(12).map(String::as_str).collect();
            format!("; `{parent}` has: {}", list.join(", "))
        }
        None => String::new(),
    }
}

fn collect_paths(v: &Value, at: &str, out: &mut BTreeSet<String>, depth: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_group_alternatives_and_skip_what_is_relative() {
        let t = r#"{"a": "{{coalesce data.data.contact.prenom data.data.contact.fname}}",
            "b": "{{contact.prenom}}", "c": {{json (default data.data.x "y")}},
            "d": "{{#each data.data.transaction.products}}{{name}} {{item.price}}{{/each}}",
            "e": "{{lookup vars.tag_ids data.data.tag.name}}", "f": "{{steps.search.body.id}} {{@index}}",
            {{! data.in.a.comment }} "g": "{{#if (eq event "x")}}{{../data.data.y}}{{/if}}"}"#;
        let (e, optional) = expressions(t, &|_| true);
        assert_eq!(e[0].data, ["data.data.contact.prenom", "data.data.contact.fname"]);
        assert_eq!(e[1].unrooted, ["contact.prenom"]);
        assert_eq!(e[2].data, ["data.data.x"]);
        assert_eq!(e[3].data, ["data.data.transaction.products"]);
        assert!(e.iter().all(|x| !x.unrooted.contains(&"item.price".to_string())), "relative inside #each");
        assert_eq!(e[4].data, ["data.data.tag.name"]);
        assert!(e.iter().all(|x| !x.data.iter().any(|p| p.contains("comment"))));
        assert_eq!(e.last().unwrap().data, ["data.data.y"]);
        assert!(optional.contains("event"));
    }

    #[test]
    fn a_branch_for_an_event_the_route_never_gets_and_if_conditions_are_not_judged() {
        let t = r#"{{#if (eq event "contact.tag_added")}}{{data.data.tag.id}}{{else}}{{data.data.other}}{{/if}}
                   {{#if data.data.opt}}{{data.data.opt}}{{/if}}"#;
        let (e, optional) = expressions(t, &|kind| kind != "contact.tag_added");
        let data: Vec<&str> = e.iter().flat_map(|x| x.data.iter().map(String::as_str)).collect();
        assert_eq!(data, ["data.data.other", "data.data.opt"], "the tag branch is dead for this route");
        assert!(optional.contains("data.data.opt"));
        let (e, _) = expressions(t, &|_| true);
        assert_eq!(e[0].data, ["data.data.tag.id"]);
        assert_eq!(event_literal(r#" (eq event "a.b")"#), Some("a.b"));
        assert_eq!(event_literal(" (eq event vars.x)"), None);
    }

    #[test]
    fn paths_resolve_through_objects_and_arrays_and_the_closest_is_named() {
        let v = serde_json::json!({"data": {"contact": {"first_name": "A", "email": "a@b.c", "x": null},
                                             "items": [{"id": 1}]}});
        assert!(resolve(&v, "data.data.contact.first_name").is_some());
        assert!(resolve(&v, "data.data.items.[0].id").is_some());
        assert!(resolve(&v, "data.data.items.0.id").is_some());
        assert!(resolve(&v, "data.data.contact.x").is_none(), "null is absent");
        assert!(resolve(&v, "data.data.contact.prenom").is_none());
        assert_eq!(
            closest_path("data.data.contact.first_nam", &[&v]),
            " (did you mean `data.data.contact.first_name`?)"
        );
        assert_eq!(closest_path("data.data.contact.prenom", &[&v]), "; `data.data.contact` has: email, first_name, x");
    }
}
