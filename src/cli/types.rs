//! `lbx-relay types`: the event types the store has received, with a masked example of each.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context};

use crate::compiled::Compiled;

/// `lbx-relay types`: the same report as `GET /api/types`, read from the store the config names.
pub(super) async fn types(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let rt = Compiled::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
    let store = crate::store::Store::open(&rt.config.store).await.context("opening the store")?;
    let report = crate::console::types(&store, &rt.config).await?;
    if json {
        out!("{}", serde_json::to_string_pretty(&serde_json::json!({ "types": report }))?);
        return Ok(ExitCode::SUCCESS);
    }
    if report.is_empty() {
        out!("no event stored yet (events are kept for store.retention once delivered)");
    }
    for t in &report {
        let routes = if t.routes_matched.is_empty() {
            "no route (stored unrouted)".to_string()
        } else {
            format!("routes {}", t.routes_matched.join(", "))
        };
        out!("{} {}: {} event(s), first {}, last {}; {routes}", t.source, t.event, t.count, t.first_seen, t.last_seen);
        if t.routes_now != t.routes_matched {
            let now = if t.routes_now.is_empty() { "none".to_string() } else { t.routes_now.join(", ") };
            out!("  with the configuration in force now: {now}");
        }
        if let Some(p) = &t.recent_payload {
            out!("  recent payload (personal values masked): {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
