//! The `lbx-relay` binary: parse the command line, start logging, hand over to the library.

use clap::Parser;

/// mimalloc instead of glibc's malloc: every event allocates and frees across threads (listener,
/// writer, delivery), where glibc spent 12-18 % of the relay's CPU (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = lbx_relay::cli::Cli::parse();
    lbx_relay::telemetry::init_logs(cli.log_format);
    lbx_relay::cli::run(cli)
}
