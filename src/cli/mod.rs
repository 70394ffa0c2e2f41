//! The command line: the arguments (clap) and `run`, which hands each command to its own file here.
//! Each command calls the same library functions the server uses.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use crate::telemetry::LogFormat;

pub use crate::preflight::SAMPLE_EVENTS;
pub use serve::shutdown_signal;

/// Prints a line on stdout; when the reader has gone (`lbx-relay decrypt … | head`) the command
/// ends quietly with success instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod alert_test;
mod bench;
mod check;
mod crypt;
mod forget;
mod init;
mod reconcile;
mod render;
mod send_test;
mod serve;
mod types;

use alert_test::alert_test;
use bench::{baseline_server, bench};
use check::check;
use crypt::{decrypt, encrypt};
use forget::forget;
use init::init;
use reconcile::reconcile;
use render::render;
use send_test::{samples_leave_this_machine, send_test, SendInput};
use serve::serve;
use types::types;

#[derive(Parser, Debug)]
#[command(name = "lbx-relay", version, about = "Relay encrypted Learnybox webhooks to CRMs, durably")]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// Path of routes.toml.
    #[arg(short = 'c', long = "config", env = "LBX_CONFIG", default_value = "routes.toml")]
    pub config: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct SecretArg {
    /// The Learnybox secret key (prefer --secret-env: the command line is visible to other users).
    #[arg(long, conflicts_with = "secret_env")]
    pub secret: Option<String>,
    /// Read the secret from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub secret_env: Option<String>,
}

impl SecretArg {
    fn get(&self) -> anyhow::Result<SecretString> {
        match (&self.secret, &self.secret_env) {
            (Some(s), _) => Ok(SecretString::from(s.clone())),
            (None, Some(var)) => std::env::var(var).map(SecretString::from).map_err(|_| {
                // What was given may be the secret itself (`--secret-env $KEY`): never repeat it.
                let is_a_name = !var.is_empty()
                    && var.len() <= 64
                    && var.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if is_a_name {
                    anyhow!("environment variable {var} is not set")
                } else {
                    anyhow!(
                        "--secret-env takes the NAME of a variable (--secret-env LEARNYBOX_SECRET_KEY), not its \
                         value; what was given is not a variable name, and is not repeated here"
                    )
                }
            }),
            (None, None) => bail!("give the secret with --secret or --secret-env VAR"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay.
    Serve(ConfigArg),
    /// Validate the config, compile every template and render every route against sample events.
    Check(ConfigArg),
    /// Decrypt a body (FILE or - for stdin) and print the JSON and the detected envelope.
    Decrypt {
        #[command(flatten)]
        secret: SecretArg,
        /// Value of the X-*-Iv header, for bodies whose IV travels in a header.
        #[arg(long)]
        iv: Option<String>,
        #[arg(default_value = "-")]
        file: String,
    },
    /// Encrypt a JSON event (FILE or -) into a body as a PHP sender would.
    Encrypt {
        #[command(flatten)]
        secret: SecretArg,
        /// Envelope variant to produce.
        #[arg(long, default_value = "json-data-iv")]
        envelope: String,
        /// How the secret becomes the key: raw, hex64, base64, sha256.
        #[arg(long, default_value = "raw")]
        key_form: String,
        #[arg(default_value = "-")]
        file: String,
    },
    /// Print the request a route would send for an event (secrets from ${VAR} masked).
    Render {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        route: String,
        /// Print {"method","url","headers","body"} as JSON (for a multi-step route, {"steps":
        /// [...]}).
        #[arg(long)]
        json: bool,
        /// Multi-step routes: a JSON file of earlier steps' answers, e.g.
        /// {"search": {"status": 200, "body": {...}}}, to see which branch is taken.
        #[arg(long)]
        answers: Option<String>,
        event_file: String,
    },
    /// Load-test a relay: unique encrypted events, ack latency, delivery latency, memory.
    Bench(BenchArgs),
    /// (for bench) A bare actix-web server answering 200: the ceiling any HTTP ingest can reach
    /// here.
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        listen: String,
    },
    /// Write a working routes.toml (and the templates and contracts it names) into DIR, then
    /// print the variables to set.
    Init {
        /// One of the shipped connectors (brevo, hubspot, pipedrive, …); the default setup if
        /// absent.
        #[arg(long)]
        connector: Option<String>,
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// The event types the store has seen, per source: count, first and last seen, the routes they
    /// matched (or none), and one recent payload with personal values masked.
    Types {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the report as JSON (as GET /api/types answers).
        #[arg(long)]
        json: bool,
    },
    /// Compare Learnybox's API with the events received and deliver the missing ones
    /// (`[sources.NAME.api]`): each missing item becomes an event marked origin = reconcile.
    Reconcile {
        #[command(flatten)]
        config: ConfigArg,
        /// How far back to look (a duration like 24h); the source's lookback when absent.
        #[arg(long)]
        since: Option<String>,
        /// List the events that would be created (and the items that cannot be), change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this source (every source with [sources.NAME.api] when absent).
        #[arg(long)]
        source: Option<String>,
        /// Print the reports as JSON (as POST /api/reconcile answers).
        #[arg(long)]
        json: bool,
    },
    /// Send one test notification through `[alerts]`, to see it arrive.
    AlertTest {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Erase a contact (GDPR art. 17): every stored event, delivery, attempt and quarantined body
    /// naming this e-mail address. Prints what was removed.
    Forget {
        #[command(flatten)]
        config: ConfigArg,
        /// The contact's e-mail address (case does not matter; the whole address, never a part).
        email: String,
        /// List what would be erased and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Encrypt an event and POST it like Learnybox would; print the answer and timing.
    SendTest {
        #[command(flatten)]
        secret: SecretArg,
        #[arg(long, default_value = "http://127.0.0.1:8080/hooks/learnybox")]
        url: String,
        #[arg(long, default_value = "json-data-iv")]
        envelope: String,
        /// How the secret becomes the key: raw, hex64, base64, sha256.
        #[arg(long, default_value = "raw")]
        key_form: String,
        /// Send one bundled sample of every known event type instead of EVENT_FILE. The relay
        /// delivers them like real events: unless every route of the config (-c) sends to this
        /// machine, it asks for --yes first.
        #[arg(long, conflicts_with = "event_file")]
        samples: bool,
        /// Go ahead with --samples although its test contacts will be written to real CRMs.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        config: ConfigArg,
        /// Then report what became of each event (through the admin API): delivered or failed
        /// per route with the CRM's answer, duplicate, no route, or quarantined. Exit 0 only when
        /// every matched route delivered.
        #[arg(long)]
        follow: bool,
        /// The relay's admin listener, for --follow.
        #[arg(long, env = "LBX_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
        admin_url: String,
        /// The admin token, for --follow (prefer the LBX_ADMIN_TOKEN variable).
        #[arg(long, env = "LBX_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// How long --follow waits for the deliveries to settle.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Give each event a new id, so a repeated test is not dropped as a duplicate.
        #[arg(long)]
        fresh_id: bool,
        #[arg(required_unless_present = "samples")]
        event_file: Option<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Target a running relay's hook URL instead of starting one (needs the source's secret).
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub secret: SecretArg,
    /// Unique events to send.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    pub events: usize,
    /// Connections sending at once.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub concurrency: usize,
    /// Total requests per second (default: as fast as the concurrency allows).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Send for this long: with --rate, rate × duration events; without, stop after it or -n
    /// events.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Threads of the load generator (like wrk's -t).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Approximate encrypted body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// RUST_LOG of the started relay.
    #[arg(long, default_value = "info")]
    pub relay_log: String,
    /// Delivery workers of the started relay.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also measure a bare actix-web handler under the same load, as the ceiling.
    #[arg(long)]
    pub baseline: bool,
    /// With --url: run the sink on this address too (POST /sink with {"n": …}) to measure delivery.
    #[arg(long, requires = "url")]
    pub sink_listen: Option<String>,
    /// With --url: report the memory of this process.
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// Start this many relays on one shared store (needs --store-url postgres://…).
    #[arg(long, default_value_t = 1, conflicts_with = "url")]
    pub replicas: usize,
    /// Store of the started relays (default: SQLite in a temporary directory).
    #[arg(long, conflicts_with = "url")]
    pub store_url: Option<String>,
    /// How long to wait for the sink to receive every accepted event.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// `[store] sync` of the started relays (SQLite): `full` (fsync before every 200) or `normal`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    pub sync: String,
}

/// Runs the parsed command; errors are printed here, once.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(c) => serve(&c.config).await,
            Command::Check(c) => check(&c.config).await,
            Command::Decrypt { secret, iv, file } => decrypt(&secret, iv.as_deref(), &file),
            Command::Encrypt { secret, envelope, key_form, file } => encrypt(&secret, &envelope, &key_form, &file),
            Command::Render { config, route, json, answers, event_file } => {
                render(&config.config, &route, &event_file, answers.as_deref(), json)
            }
            Command::Bench(args) => bench(args).await,
            Command::Forget { config, email, dry_run } => forget(&config.config, &email, dry_run).await,
            Command::AlertTest { config } => alert_test(&config.config).await,
            Command::Types { config, json } => types(&config.config, json).await,
            Command::Reconcile { config, since, dry_run, source, json } => {
                reconcile(&config.config, since.as_deref(), dry_run, source.as_deref(), json).await
            }
            Command::Init { connector, dir } => init(&dir, connector.as_deref()),
            Command::BaselineServer { listen } => baseline_server(&listen).await,
            Command::SendTest {
                secret,
                url,
                envelope,
                key_form,
                samples,
                yes,
                config,
                follow,
                admin_url,
                admin_token,
                timeout,
                fresh_id,
                event_file,
            } => {
                if samples && !yes {
                    if let Some(why) = samples_leave_this_machine(&url, &config.config) {
                        eprintln!("{why}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
                let follow = match (follow, admin_token) {
                    (false, _) => None,
                    (true, Some(token)) => {
                        Some(crate::follow::Follow { admin_url, token: SecretString::from(token), timeout })
                    }
                    (true, None) => Err(anyhow!("--follow needs the admin token: --admin-token or LBX_ADMIN_TOKEN"))?,
                };
                let input = SendInput { samples, event_file: event_file.as_deref(), fresh_id };
                send_test(&secret, &url, &envelope, &key_form, input, follow.as_ref()).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn read_input(file: &str) -> anyhow::Result<Vec<u8>> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("reading stdin")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("reading {file}"))
    }
}
