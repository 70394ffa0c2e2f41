//! `lbx-relay check`: every problem of a configuration, the sample renders and the data-loss
//! warnings.

use std::path::Path;
use std::process::ExitCode;

use crate::clock::Clock;
use crate::compiled::Compiled;
use crate::preflight;

pub(super) async fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let rt = match Compiled::load(path) {
        Ok(rt) => rt,
        Err(problems) => {
            for p in problems {
                out!("{p}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    for w in preflight::warnings(&rt.config) {
        out!("warning: {w}");
    }
    let report = preflight::render_samples(&rt, Clock::system().now_ms())?;
    for note in &report.notes {
        out!("note: {note}");
    }
    for w in &report.warnings {
        out!("warning: {w}");
    }
    let (seen, note) = preflight::seen_types(&rt.config).await;
    if let Some(note) = note {
        out!("note: {note}");
    }
    for w in preflight::lint(&rt, &seen)? {
        out!("warning: {w}");
    }
    let (problems, rendered) = (report.problems, report.rendered);
    if problems.is_empty() {
        out!(
            "{}: OK — {} source(s), {} route(s), {} sample render(s)",
            path.display(),
            rt.config.sources.len(),
            rt.config.routes.len(),
            rendered
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in problems {
            out!("{p}");
        }
        Ok(ExitCode::FAILURE)
    }
}
