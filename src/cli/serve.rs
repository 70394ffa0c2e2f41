//! `lbx-relay serve`: load and check the configuration, build the relay, serve until
//! SIGINT/SIGTERM.

use std::path::Path;
use std::process::ExitCode;

use anyhow::anyhow;

use crate::app::Application;
use crate::clock::Clock;
use crate::preflight;
use crate::store::ConsoleStore;

pub(super) async fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let runtime = preflight::load(path, Clock::system().now_ms()).map_err(|p| anyhow!("{}", p.join("\n")))?;
    for line in preflight::summary(&runtime.config) {
        tracing::info!("{line}");
    }
    for w in preflight::warnings(&runtime.config) {
        tracing::warn!("{w}");
    }
    let app = Application::build(runtime).await?;
    let relay = app.relay();
    // What `check` would warn about that loses data (typos in `events`, template paths no event
    // has), against the samples and what this store has received.
    match relay.store.event_types().await {
        Ok(seen) => {
            for w in preflight::lint(&relay.runtime(), &seen).unwrap_or_default() {
                tracing::warn!("{w}");
            }
        }
        Err(e) => {
            tracing::warn!(error = %crate::telemetry::Chain(&e), "could not read the event types seen; `check` lists its warnings")
        }
    }
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = relay.reload();
        }
    });
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
