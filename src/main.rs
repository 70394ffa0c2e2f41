//! The `lbx-relay` binary: parse the command line, start logging, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lbx_relay::cli::Cli::parse();
    lbx_relay::telemetry::init_logs(cli.log_format);
    lbx_relay::cli::run(cli)
}
