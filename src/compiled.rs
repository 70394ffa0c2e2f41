//! `Compiled`: one loaded configuration with everything derived from it — compiled templates, the
//! route table and each source's keyring. Built by `serve`, `check` and reload alike; swapped
//! whole on reload (`LiveConfig`) so in-flight work keeps the configuration it started with.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::crypto::{Hint, Keyring, OpenOptions};
use crate::routing::RouteTable;
use crate::templates::Templates;

#[derive(Debug)]
pub struct SourceKeys {
    pub keyring: Keyring,
    pub hint: Hint,
}

#[derive(Debug)]
pub struct Compiled {
    pub config: Config,
    pub templates: Templates,
    pub routes: RouteTable,
    /// The fields each route reads from events, by route name (field coverage counts them).
    pub fields: BTreeMap<String, Vec<crate::fields::Field>>,
    /// Route → the paths of its fields that the bundled samples have: worked out once per
    /// configuration, on first use (see `console::field_coverage`).
    pub fields_in_samples: std::sync::OnceLock<BTreeMap<String, std::collections::BTreeSet<String>>>,
    sources: BTreeMap<String, SourceKeys>,
}

impl Compiled {
    /// Reads the file and builds everything; every problem found is returned, one per line.
    pub fn load(path: &Path) -> Result<Compiled, Vec<String>> {
        let config = Config::load(path).map_err(|e: ConfigError| e.problems())?;
        Compiled::build(config)
    }

    pub fn build(config: Config) -> Result<Compiled, Vec<String>> {
        let templates =
            Templates::compile(&config).map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let routes = RouteTable::new(&config);
        let sources = config
            .sources
            .iter()
            .map(|(name, s)| {
                (name.clone(), SourceKeys { keyring: Keyring::new(&s.secret_keys), hint: Hint::default() })
            })
            .collect();
        let fields = config.routes.iter().map(|r| (r.name.clone(), crate::fields::route_fields(r))).collect();
        Ok(Compiled { config, templates, routes, fields, fields_in_samples: Default::default(), sources })
    }

    pub fn source(&self, name: &str) -> Option<&SourceKeys> {
        self.sources.get(name)
    }

    /// An event as the first source would make it from a decrypted `value`, received at `now`
    /// (Unix ms): how `check`, `render` and the console read the bundled samples.
    pub fn event_from_json(&self, value: serde_json::Value, now: i64) -> anyhow::Result<crate::event::Event> {
        let serde_json::Value::Object(map) = value else { anyhow::bail!("an event must be a JSON object") };
        let (name, src) =
            self.config.sources.iter().next().ok_or_else(|| anyhow::anyhow!("the config has no source"))?;
        Ok(crate::event::Event::from_plaintext(name, map, None, &src.event_field, &src.id_field, now))
    }

    pub fn open_options(&self, source: &str) -> Option<OpenOptions> {
        self.config.source(source).map(|s| OpenOptions { mode: s.envelope, allow_plaintext: s.allow_plaintext })
    }
}

/// The runtime in force, shared by the parts of a running relay and replaced whole on reload:
/// each `load` is a snapshot that work already started keeps.
#[derive(Clone)]
pub struct LiveConfig(std::sync::Arc<arc_swap::ArcSwap<Compiled>>);

impl LiveConfig {
    pub fn new(runtime: Compiled) -> LiveConfig {
        LiveConfig(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(runtime)))
    }

    /// The configuration in force now.
    pub fn load(&self) -> std::sync::Arc<Compiled> {
        self.0.load_full()
    }

    /// Puts a new configuration in force for every part that shares this handle.
    pub fn replace(&self, runtime: Compiled) {
        self.0.store(std::sync::Arc::new(runtime));
    }
}
