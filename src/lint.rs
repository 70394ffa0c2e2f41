//! What would lose data quietly although the config is valid, said by `check` (and logged by
//! `serve`) as warnings with the file's line and a suggestion: an `events` entry no known event
//! type matches, a template path no sample or stored event has, a `when` no sample satisfies or
//! that reads an empty variable, and an exported variable one edit away from one the config reads.
//! "Known" is the bundled samples plus every event this relay's store has received.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::compiled::Compiled;
use crate::config::RouteConfig;
use crate::fields::{closest_path, expressions, resolve, route_sources};
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
    pub fn new(rt: &Compiled, samples: &[(String, Value)], seen: &[TypeSeen]) -> Known {
        let mut known = Known::default();
        for (_, sample) in samples {
            // Only the type and the data of a sample are read here, not when it was received.
            if let Ok(event) = rt.event_from_json(sample.clone(), 0) {
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
pub fn lint(rt: &Compiled, text: &str, known: &Known, exported: &[String]) -> Vec<String> {
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
fn condition_satisfiable(rt: &Compiled, route: &RouteConfig, known: &Known, warn: &mut dyn FnMut(String)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::*;

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
