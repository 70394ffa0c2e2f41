//! `lbx-relay reconcile`: a reconciliation run with Learnybox's API from the command line.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context};

use crate::clock::Clock;
use crate::compiled::Compiled;

/// `lbx-relay reconcile`: the same runs as the relay's schedule, on the store the config names;
/// the events it creates are delivered by the running relay (or by the next one started).
/// Ctrl-C interrupts the run, which the relay resumes.
pub(super) async fn reconcile(
    path: &Path,
    since: Option<&str>,
    dry_run: bool,
    source: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let since = since.map(crate::reconcile::parse_since).transpose().map_err(|e| anyhow!(e))?;
    let rt = Compiled::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
    let store = crate::store::Store::open(&rt.config.store).await.context("opening the store")?;
    let relay = crate::relay::Relay::new(rt, store, Clock::system());
    let sources = crate::reconcile::sources(&relay.ingest, source)?;
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: the run stops after this page and the relay resumes it");
                stop.cancel();
            }
        });
    }
    let opts = crate::reconcile::RunOptions { since, dry_run, trigger: "cli" };
    let mut reports = Vec::new();
    for source in sources {
        reports
            .push(crate::reconcile::run_source(&relay.ingest, &relay.reconcile_clients, &source, &opts, &stop).await?);
    }
    let ok = reports.iter().all(|r| !r.busy && r.state == crate::store::reconcile::RunState::Done);
    if json {
        out!("{}", serde_json::to_string_pretty(&serde_json::json!({ "reports": reports }))?);
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    for r in &reports {
        if r.busy {
            let started = r.run.as_ref().map(|x| crate::event::rfc3339(x.started_at)).unwrap_or_default();
            out!("{}: a reconciliation is under way (started {started}); nothing done, try again later", r.source);
            continue;
        }
        let verb = if r.dry_run { "would create" } else { "recovered" };
        out!(
            "{}: {} item(s) in the window: {} received by webhook, {} {verb}, {} missing ({})",
            r.source,
            r.listed,
            r.received,
            r.recovered.len(),
            r.missing.len(),
            r.state.as_str()
        );
        for p in &r.recovered {
            out!(
                "  {verb} {} {} {} dated {}{}",
                p.kind,
                p.list,
                p.item_id,
                p.item_date,
                p.contact.as_deref().map(|c| format!(" contact {c}")).unwrap_or_default()
            );
            if let Some(event) = &p.event {
                let text = serde_json::to_string(event).unwrap_or_default();
                out!("    event: {}", crate::telemetry::mask_emails_in(&text));
            }
        }
        for m in &r.missing {
            out!("  missing {} {}: {}", m.list, m.item_id, m.reason);
        }
        for (list, fields) in &r.item_fields {
            out!("  fields of a {list} item: {}", fields.join(", "));
        }
        if let Some(e) = &r.error {
            out!("  {e}");
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
