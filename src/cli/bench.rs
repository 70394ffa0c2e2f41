//! `lbx-relay bench` and `baseline-server`: the load tool, present only with the `bench` feature.

use std::process::ExitCode;

#[cfg(not(feature = "bench"))]
use anyhow::bail;
#[cfg(feature = "bench")]
use secrecy::ExposeSecret;

use super::BenchArgs;

/// Said by `bench` and `baseline-server` in a build without the load tool.
#[cfg(not(feature = "bench"))]
const NO_BENCH: &str =
    "this build has no load tool: build it with `cargo build --release --features bench` (or `cargo run --release --features bench -- bench …`)";

#[cfg(not(feature = "bench"))]
pub(super) async fn bench(_: BenchArgs) -> anyhow::Result<ExitCode> {
    bail!(NO_BENCH)
}

#[cfg(not(feature = "bench"))]
pub(super) async fn baseline_server(_: &str) -> anyhow::Result<ExitCode> {
    bail!(NO_BENCH)
}

#[cfg(feature = "bench")]
pub(super) async fn baseline_server(listen: &str) -> anyhow::Result<ExitCode> {
    crate::bench::baseline_server(listen).await.map(|()| ExitCode::SUCCESS)
}

#[cfg(feature = "bench")]
pub(super) async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let secret = if args.url.is_some() { Some(args.secret.get()?.expose_secret().to_string()) } else { None };
    let opts = crate::bench::BenchOptions {
        url: args.url,
        secret,
        events: args.events,
        concurrency: args.concurrency,
        rate: args.rate,
        duration: args.duration,
        threads: args.threads,
        size: args.size,
        relay_log: args.relay_log,
        workers: args.workers,
        drain_timeout: args.drain_timeout,
        baseline: args.baseline,
        sink_listen: args.sink_listen,
        pid: args.pid,
        replicas: args.replicas,
        store_url: args.store_url,
        sync: args.sync,
    };
    let report = crate::bench::run(&opts).await?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::bench::table(&report));
    }
    Ok(if report.errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
