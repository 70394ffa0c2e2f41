//! `RouteTable`: which routes an event goes to — event-type globs, then the optional `when`
//! condition rendered against the event.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::event::Event;
use crate::templates::{TemplateContext, Templates};

#[derive(Debug)]
struct CompiledRoute {
    name: String,
    patterns: Vec<glob::Pattern>,
}

#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<CompiledRoute>,
}

/// Globs match the whole event type; `*` matches any run of characters, dots included.
const MATCH: glob::MatchOptions =
    glob::MatchOptions { case_sensitive: true, require_literal_separator: false, require_literal_leading_dot: false };

/// Whether an event type matches any of a route's globs (for `render`'s note).
pub fn matches_any(globs: &[String], kind: &str) -> bool {
    globs.iter().filter_map(|g| glob::Pattern::new(g).ok()).any(|p| p.matches_with(kind, MATCH))
}

impl RouteTable {
    /// Compiles the globs of every route (config validation already refused bad ones).
    pub fn new(config: &Config) -> RouteTable {
        let routes = config
            .routes
            .iter()
            .map(|r| CompiledRoute {
                name: r.name.clone(),
                patterns: r.events.iter().filter_map(|g| glob::Pattern::new(g).ok()).collect(),
            })
            .collect();
        RouteTable { routes }
    }

    /// Names of the routes `event` goes to, in config order. A `when` that fails to render counts
    /// as not matching (and is reported in `skipped`), so a bad condition never loses the event:
    /// it is stored either way and can be replayed.
    pub fn matching(&self, config: &Config, templates: &Templates, event: &Event) -> Matched {
        let mut matched = Matched::default();
        let empty = BTreeMap::new();
        for r in &self.routes {
            if !r.patterns.iter().any(|p| p.matches_with(&event.kind, MATCH)) {
                continue;
            }
            let Some(route) = config.route(&r.name) else { continue };
            let ctx = TemplateContext::new(event, if route.vars.is_empty() { &empty } else { &route.vars }, "");
            match templates.condition_holds(route, &ctx) {
                Ok(true) => matched.routes.push(r.name.clone()),
                Ok(false) => {}
                Err(e) => matched.skipped.push((r.name.clone(), e.to_string())),
            }
        }
        matched
    }
}

#[derive(Debug, Default)]
pub struct Matched {
    pub routes: Vec<String>,
    /// Routes whose `when` could not be evaluated, with the reason.
    pub skipped: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn globs_and_conditions_pick_routes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.hbs"), "x").unwrap();
        let text = r#"
[sources.lbx]
secret_keys = ["x"]
[[routes]]
name = "contacts"
events = ["contact.*", "user.created"]
template = "t.hbs"
url = "https://a.test"
[[routes]]
name = "big-sales"
events = ["transaction.*"]
when = "{{#if (eq data.amount 0)}}false{{else}}true{{/if}}"
template = "t.hbs"
url = "https://a.test"
[[routes]]
name = "all"
events = ["*"]
template = "t.hbs"
url = "https://a.test"
"#;
        let config = Config::from_toml(text, &dir.path().join(Path::new("routes.toml")), &|_| None).unwrap();
        let templates = Templates::compile(&config).unwrap();
        let table = RouteTable::new(&config);
        let ev = |kind: &str, data: serde_json::Value| Event {
            id: "1".into(),
            source: "lbx".into(),
            kind: kind.into(),
            key: "k".into(),
            received_at: 0,
            data,
        };
        let names = |e: &Event| table.matching(&config, &templates, e).routes;
        assert_eq!(names(&ev("contact.tag_added", serde_json::json!({}))), ["contacts", "all"]);
        assert_eq!(names(&ev("user.created", serde_json::json!({}))), ["contacts", "all"]);
        assert_eq!(names(&ev("transaction.created", serde_json::json!({"amount": 5}))), ["big-sales", "all"]);
        assert_eq!(names(&ev("transaction.created", serde_json::json!({"amount": 0}))), ["all"]);
        assert_eq!(names(&ev("unknown", serde_json::json!({}))), ["all"]);
    }
}
