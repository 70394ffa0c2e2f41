//! `lbx-relay forget`: a contact's data erased from the store the config names (or the plan, dry
//! run).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context};

use crate::compiled::Compiled;

/// The same erasure as `DELETE /api/contacts/{email}`, on the store the config names (SQLite can
/// be open in a running relay at the same time).
pub(super) async fn forget(path: &Path, email: &str, dry_run: bool) -> anyhow::Result<ExitCode> {
    let email = crate::erasure::parse(email)?;
    let rt = Compiled::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
    let store = crate::store::Store::open(&rt.config.store).await.context("opening the store")?;
    if dry_run {
        let plan = crate::erasure::plan(&store, &rt, &email).await?;
        let n = plan.counts();
        out!(
            "would erase {email}: {} event(s), {} delivery(ies), {} attempt(s), {} quarantined body(ies)",
            n.events,
            n.deliveries,
            n.attempts,
            n.quarantined
        );
        for e in &plan.events {
            out!(
                "  event {} (Learnybox id {}) {} received {}",
                e.id,
                e.learnybox_id,
                e.kind,
                crate::event::rfc3339(e.received_at)
            );
        }
        for id in &plan.quarantined {
            out!("  quarantined body #{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = crate::erasure::forget(&store, &rt, &email).await?;
    out!(
        "erased {email}: {} event(s), {} delivery(ies), {} attempt(s), {} quarantined body(ies)",
        report.events,
        report.deliveries,
        report.attempts,
        report.quarantined
    );
    Ok(ExitCode::SUCCESS)
}
