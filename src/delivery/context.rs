//! `DeliveryContext`: what the delivery side of the relay shares and nothing else — the store,
//! the configuration in force, the HTTP sender, the routes' gates and OAuth tokens, the hand-off
//! queue and wake-up from ingest, the alert signals, and the clock every decision reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::handoff::Handoff;
use super::limits::Gates;
use super::oauth::Tokens;
use super::send::HttpSender;
use super::steps::SendContext;
use crate::clock::Clock;
use crate::compiled::{Compiled, LiveConfig};
use crate::signals::Signals;
use crate::store::Store;

pub struct DeliveryContext {
    pub(crate) store: Store,
    pub(crate) runtime: LiveConfig,
    pub(crate) sender: HttpSender,
    /// Per-route rate limits, concurrency and pauses.
    pub(crate) gates: Gates,
    /// OAuth access tokens of the routes that use them.
    pub(crate) tokens: Tokens,
    /// New deliveries passed to the local workers without a claim.
    pub(crate) handoff: Handoff,
    /// Wakes idle workers when new deliveries were committed or released for a retry.
    pub(crate) wake: Notify,
    /// Where dead letters are recorded for `[alerts]`.
    pub(crate) signals: Arc<Signals>,
    /// "Now" for claims, retry times, pauses and leases.
    pub(crate) clock: Clock,
}

impl DeliveryContext {
    pub fn new(store: Store, runtime: LiveConfig, signals: Arc<Signals>, clock: Clock) -> DeliveryContext {
        DeliveryContext {
            gates: Gates::new(store.shared_rate_windows(), clock.clone()),
            store,
            runtime,
            sender: HttpSender::new(clock.clone()),
            tokens: Tokens::new(clock.clone()),
            handoff: Handoff::default(),
            wake: Notify::new(),
            signals,
            clock,
        }
    }

    /// The configuration in force now.
    pub fn runtime(&self) -> Arc<Compiled> {
        self.runtime.load()
    }

    /// What the step runner needs to send a delivery.
    pub fn send_context(&self) -> SendContext<'_> {
        SendContext { store: &self.store, sender: &self.sender, tokens: &self.tokens }
    }

    /// How long a claim is reserved: the longest attempt a route can make (each request's timeout
    /// and its wait for the rate window, for every step) plus the configured margin.
    pub fn lease(&self) -> Duration {
        let rt = self.runtime();
        let longest = rt
            .config
            .routes
            .iter()
            .map(|r| (r.retry.timeout + super::limits::MAX_WAIT) * r.steps.len().max(1) as u32)
            .max()
            .unwrap_or(Duration::from_secs(15));
        longest + rt.config.delivery.lease
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// What ingest holds of the delivery side: a producer into its queue. It hands committed
/// deliveries to idle local workers (places reserved before the commit), or wakes them; it sees
/// nothing else of delivery.
#[derive(Clone)]
pub struct Producer(Arc<DeliveryContext>);

impl Producer {
    pub fn new(delivery: Arc<DeliveryContext>) -> Producer {
        Producer(delivery)
    }

    /// Whether deliveries of `route` may be handed over now (its gate is not closed by a pause,
    /// its rate or its concurrency).
    pub fn is_open(&self, route: &str) -> bool {
        !self.0.gates.is_closed(route)
    }

    /// Places in idle local workers, up to `wanted`.
    pub fn reserve(&self, wanted: usize) -> Vec<super::handoff::Place> {
        self.0.handoff.reserve(wanted)
    }

    /// Until when (Unix ms) a delivery handed over at `now` is leased to the worker taking it.
    pub fn lease_until(&self, now: i64) -> i64 {
        now + self.0.lease().as_millis() as i64
    }

    /// Wakes an idle worker: deliveries were committed that no place was reserved for.
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }
}
