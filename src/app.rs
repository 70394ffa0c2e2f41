//! `Application::build` wires one configuration into a running relay: the store, the live
//! [`Runtime`], the public and admin listeners (bound before anything is served, port 0 allowed)
//! and the delivery workers; `run_until_stopped` serves until a shutdown future resolves, then
//! drains in order: stop accepting, finish in-flight deliveries, stop the admin listener.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dedup::Dedup;
use crate::delivery::limits::Gates;
use crate::delivery::oauth::Tokens;
use crate::delivery::send::HttpSender;
use crate::delivery::worker;
use crate::housekeeping::{self, Silence};
use crate::http;
use crate::runtime::Runtime;
use crate::store::Store;

/// State shared by the HTTP handlers and the workers.
pub struct Relay {
    pub store: Store,
    runtime: ArcSwap<Runtime>,
    pub dedup: Dedup,
    /// Wakes idle workers when new deliveries were committed.
    pub wake: Notify,
    pub sender: HttpSender,
    pub silence: Silence,
    /// Per-route rate limits, concurrency and pauses.
    pub gates: Gates,
    /// OAuth access tokens of the routes that use them.
    pub tokens: Tokens,
    /// Slows down repeated wrong admin tokens.
    pub auth_failures: http::AuthThrottle,
    /// Says "the quarantine is full" once a minute at most.
    pub quarantine_full_log: crate::telemetry::LogLimiter,
    /// Whether event writes fail now (disk full), for `/readyz`.
    pub write_health: crate::store::WriteHealth,
}

impl Relay {
    pub fn new(runtime: Runtime, store: Store) -> Relay {
        Relay {
            store,
            runtime: ArcSwap::from_pointee(runtime),
            dedup: Dedup::default(),
            wake: Notify::new(),
            sender: HttpSender::new(),
            silence: Silence::default(),
            gates: Gates::default(),
            tokens: Tokens::default(),
            auth_failures: http::AuthThrottle::default(),
            quarantine_full_log: crate::telemetry::LogLimiter::every(std::time::Duration::from_secs(60)),
            write_health: crate::store::WriteHealth::default(),
        }
    }

    /// The configuration in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Puts a new configuration in force; work already started keeps the old one.
    pub fn replace_runtime(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
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
    /// Validates everything, opens the store and binds both listeners. Fails before serving
    /// anything if the config, a template or the store is not right.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let runtime = Runtime::build(config).map_err(|problems| anyhow::anyhow!(problems.join("\n")))?;
        let store = Store::open(&runtime.config.store).await.context("opening the store")?;
        let listen = runtime.config.server.listen.clone();
        let admin_listen = runtime.config.server.admin_listen.clone();
        let relay = Arc::new(Relay::new(runtime, store));
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

    /// Serves until `shutdown` resolves, then drains gracefully.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application { relay, public, admin, public_addr, admin_addr } = self;
        tracing::info!(%public_addr, %admin_addr, "lbx-relay listening");
        let public_handle = public.handle();
        let admin_handle = admin.handle();
        let mut public_task = tokio::spawn(public);
        let admin_task = tokio::spawn(admin);
        let stop = CancellationToken::new();
        let workers = tokio::spawn(worker::run(relay.clone(), stop.clone()));
        let upkeep = tokio::spawn(housekeeping::run(relay.clone(), stop.clone()));
        let watcher = {
            let (relay, stop) = (relay.clone(), stop.clone());
            tokio::spawn(async move {
                let woken = relay.clone();
                relay.store.watch_for_work(move || woken.wake.notify_one(), stop).await;
            })
        };

        let result = tokio::select! {
            _ = shutdown => Ok(()),
            r = &mut public_task => Err(anyhow::anyhow!("the public listener stopped: {:?}", r)),
        };
        tracing::info!("shutting down: no new requests, finishing in-flight deliveries");
        public_handle.stop(true).await;
        stop.cancel();
        let _ = workers.await;
        let _ = upkeep.await;
        let _ = watcher.await;
        admin_handle.stop(true).await;
        let _ = admin_task.await;
        tracing::info!("stopped");
        result
    }
}
