//! `lbx-relay init [--connector NAME] [DIR]`: writes a working routes.toml (the default one, or a
//! connector's example) with the templates and contracts it names, paths that work where they are
//! written, and says which variables to set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// The connectors `--connector` knows (the examples' names).
pub fn connectors() -> Vec<&'static str> {
    embedded::FILES.iter().filter_map(|(p, _)| p.strip_prefix("examples/")?.strip_suffix(".toml")).collect()
}

fn file(path: &str) -> Option<&'static str> {
    embedded::FILES.iter().find(|(p, _)| *p == path).map(|(_, c)| *c)
}

/// What `init` wrote and what to set.
#[derive(Debug)]
pub struct Written {
    pub files: Vec<PathBuf>,
    /// Variable → its default, if the config gives one.
    pub variables: BTreeMap<String, Option<String>>,
}

/// Writes the setup into `dir` (created if needed); refuses to overwrite a routes.toml.
pub fn init(dir: &Path, connector: Option<&str>) -> anyhow::Result<Written> {
    let (source, config) = match connector {
        None => ("routes.toml".to_string(), file("routes.toml").context("the default config is embedded")?),
        Some(name) => {
            let path = format!("examples/{name}.toml");
            match file(&path) {
                Some(c) => (path, c),
                None => bail!("no connector named {name:?}; known: {}", connectors().join(", ")),
            }
        }
    };
    let target = dir.join("routes.toml");
    if target.exists() {
        bail!("{} exists already: nothing written (move it away, or init another directory)", target.display());
    }
    // Examples name their files from examples/ ("../templates/…"); the written config sits beside them.
    // Its own comments name it where it was shipped; here it is routes.toml.
    let config = if source.starts_with("examples/") {
        config.replace("\"../", "\"").replace(&source, "routes.toml")
    } else {
        config.to_string()
    };
    let doc = connector.map(|name| (format!("{name}.md"), file(&format!("docs/connectors/{name}.md"))));
    let config = ready_for_production(&config, connector);
    let mut written = Vec::new();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for referenced in referenced_files(&config) {
        let content =
            file(&referenced).with_context(|| format!("{source} names {referenced}, which is not shipped"))?;
        let path = dir.join(&referenced);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    if let Some((name, Some(content))) = &doc {
        let path = dir.join(name);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    std::fs::write(&target, &config).with_context(|| format!("writing {}", target.display()))?;
    written.insert(0, target);
    Ok(Written { files: written, variables: variables(&config) })
}

/// The shipped config made ready for production where it is written: the admin token required
/// (the dashboard and `send-test --follow` need it), a silence alert on the source, a commented
/// `[alerts]` section, and the connector doc named where `init` copies it.
fn ready_for_production(config: &str, connector: Option<&str>) -> String {
    let mut out = String::with_capacity(config.len() + 1024);
    let mut in_source = false;
    for line in config.lines() {
        if line.trim_start().starts_with("admin_token = ") {
            out.push_str(
                "admin_token = \"${LBX_ADMIN_TOKEN}\"           # required: the dashboard, the admin API and send-test --follow\n\
                 #   need it; make one with: openssl rand -hex 24\n",
            );
            continue;
        }
        if let Some(name) = connector {
            if line.contains(&format!("docs/connectors/{name}.md")) {
                out.push_str(
                    &line.replace(&format!("docs/connectors/{name}.md"), &format!("{name}.md (beside this file)")),
                );
                out.push('\n');
                continue;
            }
        }
        if line.starts_with('[') {
            in_source = line.starts_with("[sources.");
        }
        out.push_str(line);
        out.push('\n');
        if in_source && line.trim_start().starts_with("secret_keys") && !config.contains("alert_after") {
            out.push_str(
                "alert_after = \"6h\"                              # a warning (and lbx_source_silent = 1, and an alert with\n\
                 #   [alerts]) when no webhook arrived for this long: a webhook switched off in Learnybox shows\n",
            );
        }
    }
    if !config.contains("[alerts]") {
        out.push_str(
            "\n# Alerts to a chat channel (Slack, Google Chat, Teams or any JSON endpoint) when deliveries fail,\n\
             # a source goes silent or the quarantine fills. Uncomment, set LBX_ALERT_WEBHOOK_URL, then try it\n\
             # with: lbx-relay alert-test -c routes.toml\n\
             # [alerts]\n\
             # url = \"${LBX_ALERT_WEBHOOK_URL}\"\n\
             # format = \"slack\"                 # {\"text\"}; \"json\" for any other endpoint\n\
             # failure_rate = 0.5               # a route failing this share of attempts over `window` alerts\n\
             # window = \"15m\"\n\
             # repeat_after = \"1h\"\n",
        );
    }
    out
}

/// The `templates/…` and `contracts/…` files a config names, once each.
fn referenced_files(config: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in config.split('"').skip(1).step_by(2) {
        if (part.starts_with("templates/") || part.starts_with("contracts/")) && !out.iter().any(|o| o == part) {
            out.push(part.to_string());
        }
    }
    out
}

/// Every `${VAR}` and `${VAR:-default}` a config reads.
pub fn variables(config: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    // Lines that are comments are not read (a commented `[alerts]` section names its variables).
    for line in config.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else { break };
            let expr = &after[..end];
            if !expr.starts_with("file:") {
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d.to_string())),
                    None => (expr, None),
                };
                out.entry(name.to_string()).or_insert(default);
            }
            rest = &after[end + 1..];
        }
    }
    out
}
