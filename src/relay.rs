//! `Relay`: one configuration's parts wired together — the store, the configuration in force,
//! the ingest, delivery and upkeep contexts, alerts and reconciliation clients — and what changes
//! them as a whole (reload). `app` builds one and serves it; the admin API reads it.

use std::sync::Arc;

use crate::alerts::Alerts;
use crate::clock::Clock;
use crate::compiled::{Compiled, LiveConfig};
use crate::delivery::DeliveryContext;
use crate::housekeeping::{Silence, Upkeep};
use crate::ingest::IngestContext;
use crate::signals::Signals;
use crate::store::Store;

/// The running relay: each part's context, wired together here and nowhere else. Ingest sees its
/// own context (with a producer into delivery's queue), delivery and upkeep theirs; the admin API
/// is served from the whole.
pub struct Relay {
    pub store: Store,
    runtime: LiveConfig,
    /// Decrypt, dedup, route, store, hand over.
    pub ingest: Arc<IngestContext>,
    /// Claim, send, settle.
    pub delivery: Arc<DeliveryContext>,
    /// Silence checks, gauges, the retention purge and `[alerts]`.
    pub(crate) upkeep: Upkeep,
    /// Signals for `[alerts]`.
    pub(crate) alerts: Arc<Alerts>,
    /// Clients of Learnybox's API (reconciliation), shared by the schedule and the admin API.
    pub(crate) reconcile_clients: Arc<crate::reconcile::Clients>,
    /// Sealed values the configured keys do not open, found at start (`/readyz` says them).
    pub(crate) key_problems: Vec<String>,
}

impl Relay {
    /// Wires the parts for `runtime` on `store`; every part reads "now" from `clock` (the system's
    /// in production; tests drive retry and lease times with a manual one).
    pub fn new(runtime: Compiled, store: Store, clock: Clock) -> Relay {
        let runtime = LiveConfig::new(runtime);
        let signals = Arc::new(Signals::default());
        let alerts = Arc::new(Alerts::new(signals.clone()));
        let silence = Arc::new(Silence::new(clock.now_ms(), signals.clone()));
        let delivery = Arc::new(DeliveryContext::new(store.clone(), runtime.clone(), signals, clock.clone()));
        let coverage = Arc::new(crate::coverage::Coverage::default());
        let ingest = Arc::new(IngestContext::new(delivery.clone(), coverage.clone()));
        let upkeep = Upkeep { store: store.clone(), runtime: runtime.clone(), silence, clock, coverage };
        Relay {
            store,
            runtime,
            ingest,
            delivery,
            upkeep,
            alerts,
            reconcile_clients: Default::default(),
            key_problems: Vec::new(),
        }
    }

    /// The configuration in force now.
    pub fn runtime(&self) -> Arc<Compiled> {
        self.runtime.load()
    }

    /// Puts a new configuration in force; work already started keeps the old one.
    pub fn replace_runtime(&self, runtime: Compiled) {
        self.runtime.replace(runtime);
    }

    /// Re-reads the config file in force (`POST /api/reload`, SIGHUP) and puts it in force, or
    /// keeps the running one and returns every problem. A config `check` would reject is refused.
    pub fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let old = self.runtime();
        let path = old.config.path.clone();
        let rt = crate::preflight::load(&path, self.delivery.clock.now_ms()).inspect_err(|problems| {
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
        // The number of workers sizes the permits the delivery loop took when it started.
        if rt.config.delivery.workers != old.config.delivery.workers {
            needs_restart.push("delivery.workers");
        }
        if rt.config.delivery.nice != old.config.delivery.nice {
            needs_restart.push("delivery.nice");
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
