//! The command line: `serve`, `check`, `decrypt`, `encrypt`, `render`, `send-test`. Each command is
//! a thin call into the same library functions the server uses.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::app::Application;
use crate::crypto::{self, Hint, KeyForm, Keyring, OpenOptions, Sealed, Variant};

use crate::runtime::Runtime;
use crate::telemetry::LogFormat;
use crate::templates::TemplateContext;

pub use crate::preflight::SAMPLE_EVENTS;

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
use crate::clock::Clock;
use crate::preflight;

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
        /// Print {"method","url","headers","body"} as JSON (for a multi-step route, {"steps": [...]}).
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
    /// (for bench) A bare actix-web server answering 200: the ceiling any HTTP ingest can reach here.
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        listen: String,
    },
    /// Write a working routes.toml (and the templates and contracts it names) into DIR, then
    /// print the variables to set.
    Init {
        /// One of the shipped connectors (brevo, hubspot, pipedrive, …); the default setup if absent.
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
    /// Send for this long: with --rate, rate × duration events; without, stop after it or -n events.
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

fn read_input(file: &str) -> anyhow::Result<Vec<u8>> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("reading stdin")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("reading {file}"))
    }
}

async fn serve(path: &Path) -> anyhow::Result<ExitCode> {
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

async fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let rt = match Runtime::load(path) {
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

fn init(dir: &Path, connector: Option<&str>) -> anyhow::Result<ExitCode> {
    let written = crate::init::init(dir, connector)?;
    for f in &written.files {
        out!("wrote {}", f.display());
    }
    out!();
    out!("Set these variables (in the environment, or a file read with ${{file:/path}}):");
    for (name, default) in &written.variables {
        match default {
            None if name == "LBX_ADMIN_TOKEN" => out!("  {name}   (required; make one: openssl rand -hex 24)"),
            None => out!("  {name}   (required)"),
            Some(d) if d.is_empty() => out!("  {name}   (optional)"),
            Some(d) => out!("  {name}   (optional, default {d})"),
        }
    }
    let config = written.files[0].display();
    out!();
    out!("Then: lbx-relay check -c {config} && lbx-relay serve -c {config}");
    Ok(ExitCode::SUCCESS)
}

async fn alert_test(path: &Path) -> anyhow::Result<ExitCode> {
    let rt = Runtime::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
    let Some(cfg) = &rt.config.alerts else { bail!("{}: no [alerts] section: nothing to test", path.display()) };
    let notice = crate::alerts::Notice {
        kind: "test",
        key: "test".into(),
        state: "firing",
        text: "a test notification (lbx-relay alert-test): alerts reach this channel".into(),
    };
    crate::alerts::post_notice(&crate::proxy::client_builder().build()?, cfg, &notice, Clock::system().now_ms())
        .await
        .map_err(|e| anyhow!(rt.config.secrets.mask(&crate::telemetry::Chain(&e).to_string())))?;
    out!("test alert sent");
    Ok(ExitCode::SUCCESS)
}

/// The same erasure as `DELETE /api/contacts/{email}`, on the store the config names (SQLite can
/// be open in a running relay at the same time).
async fn forget(path: &Path, email: &str, dry_run: bool) -> anyhow::Result<ExitCode> {
    let email = crate::erasure::parse(email)?;
    let rt = Runtime::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
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

/// `lbx-relay reconcile`: the same runs as the relay's schedule, on the store the config names;
/// the events it creates are delivered by the running relay (or by the next one started).
/// Ctrl-C interrupts the run, which the relay resumes.
async fn reconcile(
    path: &Path,
    since: Option<&str>,
    dry_run: bool,
    source: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let since = since.map(crate::reconcile::parse_since).transpose().map_err(|e| anyhow!(e))?;
    let rt = Runtime::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
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

/// `lbx-relay types`: the same report as `GET /api/types`, read from the store the config names.
async fn types(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let rt = Runtime::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
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

fn decrypt(secret: &SecretArg, iv: Option<&str>, file: &str) -> anyhow::Result<ExitCode> {
    let body = read_input(file)?;
    let keys = Keyring::new(&[secret.get()?]);
    let opts = OpenOptions { mode: crypto::EnvelopeMode::Auto, allow_plaintext: false };
    let opened = crypto::open(&Sealed { body: &body, iv_header: iv }, &keys, &opts, &Hint::default())
        .map_err(|e| anyhow!("could not decrypt: {e}"))?;
    eprintln!("envelope: {}  key form: {}", opened.variant.name(), opened.key_form.map(KeyForm::name).unwrap_or("-"));
    out!("{}", serde_json::to_string_pretty(&opened.plaintext)?);
    Ok(ExitCode::SUCCESS)
}

fn seal_input(
    secret: &SecretString,
    envelope: &str,
    key_form: &str,
    plaintext: &[u8],
) -> anyhow::Result<crypto::SealedBody> {
    let variant = Variant::from_name(envelope)
        .ok_or_else(|| anyhow!("unknown envelope {envelope:?}; one of {}", Variant::names().join(", ")))?;
    let form = KeyForm::from_name(key_form)
        .ok_or_else(|| anyhow!("unknown key form {key_form:?}; one of raw, hex64, base64, sha256"))?;
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(plaintext)
        .context("the input must be a JSON object")?;
    Ok(crypto::seal(plaintext, secret.expose_secret(), variant, form, crypto::random_iv())?)
}

fn encrypt(secret: &SecretArg, envelope: &str, key_form: &str, file: &str) -> anyhow::Result<ExitCode> {
    let sealed = seal_input(&secret.get()?, envelope, key_form, &read_input(file)?)?;
    for (k, v) in &sealed.headers {
        eprintln!("header: {k}: {v}");
    }
    out!("{}", sealed.body);
    Ok(ExitCode::SUCCESS)
}

fn render(
    path: &Path,
    route_name: &str,
    event_file: &str,
    answers: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let rt = Runtime::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
    let route = rt.config.route(route_name).ok_or_else(|| {
        let names: Vec<&str> = rt.config.routes.iter().map(|r| r.name.as_str()).collect();
        anyhow!("no route named {route_name:?}; routes: {}", names.join(", "))
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&read_input(event_file)?).with_context(|| format!("{event_file}: not valid JSON"))?;
    let event = rt.event_from_json(value, Clock::system().now_ms())?;
    let have_answers = answers.is_some();
    let answers: serde_json::Value = match answers {
        Some(file) => serde_json::from_slice(&std::fs::read(file).with_context(|| format!("reading {file}"))?)
            .with_context(|| format!("{file}: not valid JSON"))?,
        None => serde_json::json!({}),
    };
    if !crate::routing::matches_any(&route.events, &event.kind) {
        eprintln!(
            "note: route {} takes events {:?}; this event is {:?}, so it would not be sent to it",
            route.name, route.events, event.kind
        );
    }
    let ctx = TemplateContext::new(&event, &route.vars, "render-preview").with_steps(&answers).at(event.received_at);
    if !rt.templates.condition_holds(route, &ctx)? {
        eprintln!("note: the route's `when` condition is false for this event; it would not be sent");
    }
    if let Some(key) = rt.templates.ordering_key(route, &ctx)? {
        eprintln!("order key: {key} (deliveries with this key go out one at a time, in arrival order)");
    }
    let mut shown = Vec::new();
    // Secrets from the environment never reach the terminal, in the request or in an error.
    let mask = |text: &str| rt.config.secrets.mask(text);
    for (i, step) in route.steps.iter().enumerate() {
        let applies = rt.templates.step_applies(route, i, &ctx)?;
        // Without --answers, a step that reads an earlier answer is shown as it would start, not
        // checked: its ids come from answers this preview does not have.
        let waiting = !have_answers && i > 0 && rt.templates.reads_answers(route, i);
        let mut req = rt
            .templates
            .render_step_with(route, i, &ctx, applies && !waiting)
            .map_err(|e| anyhow!(mask(&e.to_string())))?;
        req.url = mask(&req.url);
        req.body = mask(&req.body);
        if route.oauth.is_some() {
            req.headers.push(crate::config::HeaderSpec {
                name: "Authorization".into(),
                value: "Bearer (OAuth token, fetched at send time)".to_string().into(),
                from_env: true,
            });
        }
        let headers: serde_json::Map<String, serde_json::Value> =
            req.headers.iter().map(|h| (h.name.clone(), serde_json::Value::String(h.shown()))).collect();
        let body = if req.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str::<serde_json::Value>(&req.body).unwrap_or(serde_json::Value::String(req.body.clone()))
        };
        let mut one =
            serde_json::json!({"method": req.method.as_str(), "url": req.url, "headers": headers, "body": body});
        if route.is_multi_step() {
            one["step"] = step.name.clone().into();
            one["sent"] = applies.into();
            if waiting {
                one["waits_for_answers"] = true.into();
            }
        }
        if json {
            shown.push(one);
            continue;
        }
        if route.is_multi_step() {
            let note = match (applies, waiting) {
                (_, true) => "  (waits for the earlier steps' answers: pass --answers to see it whole)",
                (true, false) => "",
                (false, false) => "  (skipped: its `when` is false with these answers)",
            };
            out!("# step {}{note}", step.name);
        }
        out!("{} {}", req.method, req.url);
        for (k, v) in &headers {
            out!("{k}: {}", v.as_str().unwrap_or_default());
        }
        out!();
        out!("{}", req.body);
        if route.is_multi_step() {
            out!();
        }
    }
    if json {
        let out = if route.is_multi_step() { serde_json::json!({ "steps": shown }) } else { shown.remove(0) };
        out!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// What `send-test` sends.
struct SendInput<'a> {
    samples: bool,
    event_file: Option<&'a str>,
    fresh_id: bool,
}

async fn send_test(
    secret: &SecretArg,
    url: &str,
    envelope: &str,
    key_form: &str,
    input: SendInput<'_>,
    follow: Option<&crate::follow::Follow>,
) -> anyhow::Result<ExitCode> {
    let secret = secret.get()?;
    let mut events: Vec<Vec<u8>> = if input.samples {
        let all: Vec<serde_json::Value> = serde_json::from_str(SAMPLE_EVENTS)?;
        all.iter().map(|v| v.to_string().into_bytes()).collect()
    } else {
        vec![read_input(input.event_file.unwrap_or("-"))?]
    };
    if input.fresh_id {
        events = events.iter().map(|e| crate::follow::fresh_id(e)).collect::<anyhow::Result<_>>()?;
    }
    let client = crate::proxy::client_builder().build()?;
    let mut all_ok = true;
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    for plaintext in events {
        let id = crate::follow::learnybox_id(&plaintext);
        let before = match (follow, &id) {
            (Some(f), Some(id)) => f.newest(&client, id).await?,
            _ => None,
        };
        let sent_at = Clock::system().now_ms();
        let kind = serde_json::from_slice::<serde_json::Value>(&plaintext)
            .ok()
            .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| "event".into());
        let sealed = seal_input(&secret, envelope, key_form, &plaintext)?;
        let mut req = client.post(url).header("Content-Type", "application/json").body(sealed.body);
        for (k, v) in &sealed.headers {
            req = req.header(k, v);
        }
        let started = Instant::now();
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        let elapsed = started.elapsed();
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        all_ok &= status.is_success();
        out!("{kind}: {} in {:.1} ms: {}", status, elapsed.as_secs_f64() * 1000.0, body.trim());
        if let (Some(follow), true) = (follow, status.is_success()) {
            let id = id.as_deref().ok_or_else(|| anyhow!("the event is not a JSON object"))?;
            let fate = follow.fate(&client, id, before.as_deref(), sent_at).await?;
            for line in &fate.lines {
                out!("  {line}");
            }
            use crate::follow::Outcome;
            let label = match fate.outcome {
                Outcome::Delivered => "delivered",
                Outcome::Failed => "failed",
                Outcome::Pending => "still pending",
                Outcome::NoRoute => "no route",
                Outcome::Duplicate => "duplicate",
                Outcome::Quarantined => "quarantined",
            };
            *tally.entry(label).or_default() += 1;
            // With --samples, a type no route takes or a sample already sent is not a failure:
            // what matters is that every sample a route took was delivered.
            all_ok &=
                fate.delivered || (input.samples && matches!(fate.outcome, Outcome::NoRoute | Outcome::Duplicate));
        } else if !status.is_success() {
            *tally.entry("refused by the relay").or_default() += 1;
        }
    }
    if input.samples && follow.is_some() {
        let parts: Vec<String> =
            ["delivered", "failed", "still pending", "no route", "duplicate", "quarantined", "refused by the relay"]
                .iter()
                .map(|k| format!("{} {k}", tally.get(k).copied().unwrap_or(0)))
                .collect();
        out!("samples: {}", parts.join(", "));
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Why `send-test --samples` should not go ahead without `--yes`: the samples reach a relay
/// elsewhere, or a route of `config` delivers them to a CRM that is not on this machine (they are
/// real requests: test contacts would be written there). `None` when every place is loopback.
fn samples_leave_this_machine(url: &str, config: &Path) -> Option<String> {
    let loopback = |host: &str| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    let n = serde_json::from_str::<Vec<serde_json::Value>>(SAMPLE_EVENTS).map(|v| v.len()).unwrap_or(0);
    let relay_host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
    if !loopback(&relay_host) {
        return Some(format!(
            "--samples sends {n} test events (test contacts such as camille.durand@example.fr) to the relay at \
             {relay_host}, which delivers them to its CRMs like real ones. Run again with --yes to go ahead."
        ));
    }
    let rt = match Runtime::load(config) {
        Ok(rt) => rt,
        Err(_) => {
            return Some(format!(
                "--samples sends {n} test events that the relay delivers like real ones, and the config {} \
                 could not be read to see where its routes send them (give it with -c). Run again with --yes \
                 to go ahead.",
                config.display()
            ))
        }
    };
    let mut remote = std::collections::BTreeSet::new();
    for route in &rt.config.routes {
        for step in &route.steps {
            let base = step.url.split("{{").next().unwrap_or_default();
            let host = reqwest::Url::parse(base).ok().and_then(|u| u.host_str().map(str::to_string));
            match host {
                Some(h) if loopback(&h) => {}
                Some(h) => {
                    remote.insert(format!("{} ({h})", route.name));
                }
                None => {
                    remote.insert(format!("{} (a templated host)", route.name));
                }
            }
        }
    }
    if remote.is_empty() {
        return None;
    }
    let list: Vec<String> = remote.into_iter().collect();
    Some(format!(
        "--samples sends {n} test events that the relay delivers like real ones: routes {} will write test \
         contacts (camille.durand@example.fr, zoe.lefevre@example.com, …) and test sales into those CRMs. Run \
         again with --yes to go ahead, or point the routes at a test account.",
        list.join(", ")
    ))
}

/// Said by `bench` and `baseline-server` in a build without the load tool.
#[cfg(not(feature = "bench"))]
const NO_BENCH: &str =
    "this build has no load tool: build it with `cargo build --release --features bench` (or `cargo run --release --features bench -- bench …`)";

#[cfg(not(feature = "bench"))]
async fn bench(_: BenchArgs) -> anyhow::Result<ExitCode> {
    bail!(NO_BENCH)
}

#[cfg(not(feature = "bench"))]
async fn baseline_server(_: &str) -> anyhow::Result<ExitCode> {
    bail!(NO_BENCH)
}

#[cfg(feature = "bench")]
async fn baseline_server(listen: &str) -> anyhow::Result<ExitCode> {
    crate::bench::baseline_server(listen).await.map(|()| ExitCode::SUCCESS)
}

#[cfg(feature = "bench")]
async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
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
