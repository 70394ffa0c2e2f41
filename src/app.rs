//! `Application::build` wires one configuration into a running relay: the store, the live
//! [`Runtime`], the public and admin listeners (bound before anything is served, port 0 allowed)
//! and the delivery workers; `run_until_stopped` serves until a shutdown future resolves, then
//! drains in order: stop accepting, finish in-flight deliveries, stop the admin listener.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::alerts::Alerts;
use crate::clock::Clock;
use crate::delivery::{worker, DeliveryContext};
use crate::housekeeping::{self, Silence, Upkeep};
use crate::http;
use crate::ingest::IngestContext;
use crate::runtime::{LiveRuntime, Runtime};
use crate::store::Store;

/// The running relay: each part's context, wired together here and nowhere else, plus what only
/// the HTTP edge uses. Ingest, delivery and upkeep each see only their own context.
pub struct Relay {
    pub store: Store,
    runtime: LiveRuntime,
    /// Decrypt, dedup, route, store, hand over.
    pub ingest: Arc<IngestContext>,
    /// Claim, send, settle.
    pub delivery: Arc<DeliveryContext>,
    /// Silence checks, gauges, the retention purge and `[alerts]`.
    pub upkeep: Upkeep,
    /// Signals for `[alerts]`.
    pub alerts: Arc<Alerts>,
    /// Slows down repeated wrong admin tokens.
    pub auth_failures: http::AuthThrottle,
    /// Requests to hook URLs of sources that are not configured.
    pub unknown_hooks: http::public::UnknownHooks,
    /// Clients of Learnybox's API (reconciliation), shared by the schedule and the admin API.
    pub reconcile_clients: Arc<crate::reconcile::Clients>,
    /// Sealed values the configured keys do not open, found at start (`/readyz` says them).
    pub key_problems: Vec<String>,
    /// Requests in progress per client address on the public listener.
    pub per_ip: Arc<http::per_ip::InFlight>,
    /// Says "an address is over its cap" once a minute at most.
    pub per_ip_log: crate::telemetry::LogLimiter,
}

impl Relay {
    /// Wires the parts for `runtime` on `store`; every part reads "now" from `clock` (the system's
    /// in production; tests drive retry and lease times with a manual one).
    pub fn new(runtime: Runtime, store: Store, clock: Clock) -> Relay {
        let runtime = LiveRuntime::new(runtime);
        let alerts = Arc::new(Alerts::default());
        let silence = Arc::new(Silence::new(clock.now_ms()));
        let delivery = Arc::new(DeliveryContext::new(store.clone(), runtime.clone(), alerts.clone(), clock.clone()));
        let coverage = Arc::new(crate::coverage::Coverage::default());
        let ingest = Arc::new(IngestContext::new(delivery.clone(), silence.clone(), coverage.clone()));
        let upkeep = Upkeep { store: store.clone(), runtime: runtime.clone(), silence, clock, coverage };
        Relay {
            store,
            runtime,
            ingest,
            delivery,
            upkeep,
            alerts,
            auth_failures: http::AuthThrottle::default(),
            unknown_hooks: Default::default(),
            reconcile_clients: Default::default(),
            key_problems: Vec::new(),
            per_ip: Default::default(),
            per_ip_log: crate::telemetry::LogLimiter::every(std::time::Duration::from_secs(60)),
        }
    }

    /// The configuration in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load()
    }

    /// Puts a new configuration in force; work already started keeps the old one.
    pub fn replace_runtime(&self, runtime: Runtime) {
        self.runtime.replace(runtime);
    }

    /// Re-reads the config file in force (`POST /api/reload`, SIGHUP) and puts it in force, or
    /// keeps the running one and returns every problem. A config `check` would reject is refused.
    pub fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let old = self.runtime();
        let path = old.config.path.clone();
        let rt = crate::preflight::load(&path).inspect_err(|problems| {
            tracing::error!(config = %path.display(), problems = %problems.join("; "), "reload refused; the running configuration is kept");
        })?;
        let mut needs_restart = Vec::new();
        if rt.config.server.listen != old.config.server.listen {
            needs_restart.push("server.listen");
        }
        if rt.config.server.admin_listen != old.config.server.admin_listen {
            needs_restart.push("server.admin_listen");
        }
        if rt.config.store.backend != old.config.store.backend {
            needs_restart.push("store.url");
        }
        if !needs_restart.is_empty() {
            tracing::warn!(
                settings = %needs_restart.join(", "),
                "changed settings take effect at the next restart; the running ones are kept until then"
            );
        }
        let routes = rt.config.routes.len();
        self.replace_runtime(rt);
        // A reload is the operator's "try again now": pauses held by a CRM's answer are lifted.
        self.delivery.gates.unpause_all();
        tracing::info!(config = %path.display(), routes, "configuration reloaded");
        Ok(Reloaded { routes, needs_restart })
    }
}

/// What a reload put in force.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    pub routes: usize,
    /// Changed settings that only a restart applies (listen addresses, the store).
    pub needs_restart: Vec<&'static str>,
}

pub struct Application {
    relay: Arc<Relay>,
    public: actix_web::dev::Server,
    admin: actix_web::dev::Server,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl Application {
    /// Opens the store and binds both listeners for a configuration already compiled (and
    /// checked) into a [`Runtime`]. Fails before serving anything if the store is not right.
    pub async fn build(runtime: Runtime) -> anyhow::Result<Application> {
        Application::build_with_clock(runtime, Clock::system()).await
    }

    /// The same, with the relay reading "now" from `clock`.
    pub async fn build_with_clock(runtime: Runtime, clock: Clock) -> anyhow::Result<Application> {
        let store = Store::open(&runtime.config.store).await.context("opening the store")?;
        let listen = runtime.config.server.listen.clone();
        let admin_listen = runtime.config.server.admin_listen.clone();
        // Values sealed with a key that is no longer configured: said now, and by /readyz, while
        // the relay serves what it can (those rows show as unreadable, their deliveries fail).
        let key_problems = store.key_check().await.context("checking the store's encryption keys")?;
        for p in &key_problems {
            tracing::error!(problem = %p, "a stored value does not open with the configured keys: add the key it was sealed with to [store] previous_encryption_keys");
        }
        let mut relay = Relay::new(runtime, store, clock);
        relay.key_problems = key_problems;
        let relay = Arc::new(relay);
        crate::telemetry::metrics();

        let public_listener = TcpListener::bind(&listen).with_context(|| format!("binding server.listen {listen}"))?;
        let admin_listener =
            TcpListener::bind(&admin_listen).with_context(|| format!("binding server.admin_listen {admin_listen}"))?;
        let public_addr = public_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let public = http::public_server(relay.clone(), public_listener)?;
        let admin = http::admin_server(relay.clone(), admin_listener)?;
        Ok(Application { relay, public, admin, public_addr, admin_addr })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn relay(&self) -> Arc<Relay> {
        self.relay.clone()
    }

    /// Serves until `shutdown` resolves, then drains gracefully. If a listener or a background
    /// task (delivery workers, housekeeping, the work watcher) ends or panics before that, the
    /// relay drains the rest and returns the error: a relay that accepts but never delivers must
    /// not keep running, so the process exits non-zero and its supervisor restarts it.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application { relay, public, admin, public_addr, admin_addr } = self;
        tracing::info!(%public_addr, %admin_addr, "lbx-relay listening");
        let public_handle = public.handle();
        let admin_handle = admin.handle();
        let stop = CancellationToken::new();
        let mut tasks = Supervised::default();
        tasks.spawn("the public listener", async move {
            public.await.map_err(|e| anyhow::anyhow!(e))?;
            anyhow::bail!("it stopped")
        });
        tasks.spawn("the admin listener", async move {
            admin.await.map_err(|e| anyhow::anyhow!(e))?;
            anyhow::bail!("it stopped")
        });
        tasks.spawn_until("the delivery workers", &stop, worker::run(relay.delivery.clone(), stop.clone()));
        tasks.spawn_until("housekeeping", &stop, housekeeping::run(relay.upkeep.clone(), stop.clone()));
        let client = relay.delivery.sender.client().clone();
        tasks.spawn_until(
            "alerts",
            &stop,
            crate::alerts::run(relay.upkeep.clone(), relay.alerts.clone(), client, stop.clone()),
        );
        tasks.spawn_until(
            "reconciliation",
            &stop,
            crate::reconcile::schedule(relay.ingest.clone(), relay.reconcile_clients.clone(), stop.clone()),
        );
        {
            let (delivery, stop2) = (relay.delivery.clone(), stop.clone());
            tasks.spawn_until("the work watcher", &stop, async move {
                let woken = delivery.clone();
                delivery.store.watch_for_work(move || woken.wake.notify_one(), stop2).await;
            });
        }

        let result = tokio::select! {
            _ = shutdown => Ok(()),
            died = tasks.first_death() => {
                tracing::error!(error = %died, "a part of the relay stopped; shutting down so a supervisor restarts it");
                Err(died)
            }
        };
        tracing::info!("shutting down: no new requests, finishing in-flight deliveries");
        public_handle.stop(true).await;
        stop.cancel();
        admin_handle.stop(true).await;
        tasks.drain().await;
        tracing::info!("stopped");
        result
    }
}

/// The relay's long-running tasks, each named, so the first one to end early is reported.
#[derive(Default)]
pub struct Supervised {
    set: tokio::task::JoinSet<(&'static str, anyhow::Result<()>)>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Supervised {
    /// Runs `task`; it is expected to run until the relay stops, so any end is a death.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        let handle = self.set.spawn(async move { (name, task.await) });
        self.names.insert(handle.id(), name);
    }

    /// Runs `task`, which returns when `stop` is cancelled; returning before that is a death.
    pub fn spawn_until(
        &mut self,
        name: &'static str,
        stop: &CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let stop = stop.clone();
        self.spawn(name, async move {
            task.await;
            if stop.is_cancelled() {
                Ok(())
            } else {
                anyhow::bail!("it returned")
            }
        });
    }

    /// Resolves with the first task that ends with an error or panics (never, if none does).
    pub async fn first_death(&mut self) -> anyhow::Error {
        loop {
            match self.set.join_next_with_id().await {
                Some(Ok((_, (_, Ok(()))))) => continue,
                Some(Ok((_, (name, Err(e))))) => return anyhow::anyhow!("{name} stopped: {e:#}"),
                Some(Err(e)) => {
                    let name = self.names.get(&e.id()).copied().unwrap_or("a task");
                    let how = if e.is_panic() { "panicked" } else { "was cancelled" };
                    return anyhow::anyhow!("{name} {how}");
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Waits for every task still running to end.
    pub async fn drain(&mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Paused time: the last check waits an hour of tokio time, which passes at once when nothing
    // else can run, instead of waiting on the wall clock to show that nothing is reported.
    #[tokio::test(start_paused = true)]
    async fn a_background_task_that_panics_or_returns_early_is_reported_by_name() {
        let stop = CancellationToken::new();
        let mut tasks = Supervised::default();
        tasks.spawn_until("the delivery workers", &stop, async { panic!("boom") });
        let died = tasks.first_death().await;
        assert_eq!(died.to_string(), "the delivery workers panicked");

        let mut tasks = Supervised::default();
        tasks.spawn_until("housekeeping", &stop, async {});
        assert_eq!(tasks.first_death().await.to_string(), "housekeeping stopped: it returned");

        // A task that ends because the relay is stopping is not a death.
        let mut tasks = Supervised::default();
        stop.cancel();
        tasks.spawn_until("housekeeping", &stop, async {});
        let waited = tokio::time::timeout(std::time::Duration::from_secs(3600), tasks.first_death()).await;
        assert!(waited.is_err(), "no death reported");
    }
}
