//! `Application::build` wires one configuration into a running relay: the store, the live
//! [`Compiled`], the public and admin listeners (bound before anything is served, port 0 allowed)
//! and the delivery workers; `run_until_stopped` serves until a shutdown future resolves, then
//! drains in order: stop accepting, finish in-flight deliveries, stop the admin listener.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::Context;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::compiled::Compiled;
use crate::delivery::worker;
use crate::housekeeping;
use crate::http;
use crate::relay::Relay;
use crate::store::Store;
use crate::store::UpkeepStore;

pub struct Application {
    relay: Arc<Relay>,
    public: actix_web::dev::Server,
    admin: actix_web::dev::Server,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl Application {
    /// Opens the store and binds both listeners for a configuration already compiled (and
    /// checked) into a [`Compiled`]. Fails before serving anything if the store is not right.
    pub async fn build(runtime: Compiled) -> anyhow::Result<Application> {
        Application::build_with_clock(runtime, Clock::system()).await
    }

    /// The same, with the relay reading "now" from `clock`.
    pub async fn build_with_clock(runtime: Compiled, clock: Clock) -> anyhow::Result<Application> {
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
        let edge = Arc::new(http::Edge::default());
        let public = http::public_server(relay.ingest.clone(), edge.clone(), public_listener)?;
        let admin = http::admin_server(relay.clone(), edge, admin_listener)?;
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
        // The listeners' threads start below, on this thread (`serve`'s own), so they keep its
        // CPU priority; the runtime's threads, where deliveries run, go `[delivery] nice` below it.
        let nice = relay.runtime().config.delivery.nice;
        if let Some(at) = crate::delivery::priority::lower_deliveries(nice).filter(|_| nice > 0) {
            tracing::info!(nice = at, "deliveries run at a lower CPU priority than the listener");
        }
        let public_handle = public.handle();
        let admin_handle = admin.handle();
        let (public, admin) = (started_here(public), started_here(admin));
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

/// Polls `server` once on the calling thread, which starts its worker threads there (they inherit
/// its CPU priority); the future returned serves on, or gives what the server ended with if it
/// ended at once (it must not be polled again then).
fn started_here(mut server: actix_web::dev::Server) -> impl Future<Output = std::io::Result<()>> {
    let ended = (&mut server).now_or_never();
    async move {
        match ended {
            Some(result) => result,
            None => server.await,
        }
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
