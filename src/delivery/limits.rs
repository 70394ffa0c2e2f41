//! Per-route pacing in this process: `rate_limit` (a sliding window: never more than COUNT
//! requests in any WINDOW), `concurrency` (a semaphore), and pauses a CRM asked for (429 with
//! `Retry-After`, or rate-limit headers saying nothing is left). A delivery that would wait longer
//! than [`MAX_WAIT`] is handed back to the queue instead of holding a worker.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clock::Clock;
use crate::config::{RateLimit, RouteConfig};
use crate::rate_window::{reserve, Reservation};
use crate::store::SharedRateWindows;

/// Longest a claimed delivery waits in a worker for its route's turn.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT_MS: i64 = MAX_WAIT.as_millis() as i64;

/// The gates of every route that has a limit, or was paused, by route name.
#[derive(Debug)]
pub struct Gates {
    by_route: Mutex<HashMap<String, Arc<Gate>>>,
    clock: Clock,
    /// Where rate windows live when replicas share a store (PostgreSQL); `None`: in this process.
    shared: Option<SharedRateWindows>,
}

/// A route's `rate_limit` window: here, or in the store for every replica (decided once).
#[derive(Debug)]
enum Window {
    Local(RateLimit, Mutex<VecDeque<i64>>),
    Shared(RateLimit, SharedRateWindows),
}

#[derive(Debug)]
pub struct Gate {
    route: String,
    spec: (Option<RateLimit>, Option<usize>),
    /// Send times handed out (past and reserved, Unix ms), at most `count` of them, oldest first.
    window: Option<Window>,
    slots: Option<Arc<Semaphore>>,
    /// Unix ms before which nothing is sent on this route (a CRM asked for it).
    paused_until: AtomicI64,
    clock: Clock,
}

/// What a worker does with a claimed delivery.
#[derive(Debug)]
pub enum Admission {
    /// Send now; hold the permit (if any) until the request is done.
    Go(Option<OwnedSemaphorePermit>),
    /// Give it back to the queue, due at this time (Unix ms).
    Later(i64),
}

impl Gates {
    /// Gates reading time from `clock` (tests drive it with tokio's paused time), whose rate
    /// windows live in `shared` when replicas share the store.
    pub fn new(shared: Option<SharedRateWindows>, clock: Clock) -> Gates {
        Gates { by_route: Mutex::default(), clock, shared }
    }

    /// The gate of `route`, made anew when its limits changed (after a reload). A route without
    /// `concurrency` gets `budget` slots, so one slow CRM cannot hold every worker.
    pub fn gate(&self, route: &RouteConfig, budget: Option<usize>) -> Arc<Gate> {
        let spec = (route.rate_limit, route.concurrency.or(budget));
        let mut map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = map.get(&route.name).filter(|g| g.spec == spec) {
            return g.clone();
        }
        let paused = map.get(&route.name).map(|g| g.paused_until.load(Ordering::Relaxed)).unwrap_or(0);
        let gate = Arc::new(Gate {
            route: route.name.clone(),
            spec,
            window: route.rate_limit.map(|r| match &self.shared {
                Some(shared) => Window::Shared(r, shared.clone()),
                None => Window::Local(r, Mutex::new(VecDeque::with_capacity(r.count as usize))),
            }),
            slots: spec.1.map(|n| Arc::new(Semaphore::new(n))),
            paused_until: AtomicI64::new(paused),
            clock: self.clock.clone(),
        });
        map.insert(route.name.clone(), gate.clone());
        gate
    }

    /// Whether `route` is paused or has every concurrency slot taken now.
    pub fn is_closed(&self, route: &str) -> bool {
        let now = self.clock.now_ms();
        let map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        map.get(route).is_some_and(|g| {
            g.paused_until.load(Ordering::Relaxed) > now || g.slots.as_ref().is_some_and(|s| s.available_permits() == 0)
        })
    }

    /// Lifts `route`'s pause (an operator retried one of its deliveries: they want it tried now).
    pub fn unpause(&self, route: &str) {
        let map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = map.get(route) {
            g.paused_until.store(0, Ordering::Relaxed);
        }
    }

    /// Lifts every pause (a reload: the operator may have fixed what the CRM refused).
    pub fn unpause_all(&self) {
        let map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        for g in map.values() {
            g.paused_until.store(0, Ordering::Relaxed);
        }
    }

    /// When `route`'s pause (a 429 or a `throttle_on` answer) ends, if it is paused now (Unix ms).
    pub fn paused_until(&self, route: &str) -> Option<i64> {
        let now = self.clock.now_ms();
        let map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        map.get(route).map(|g| g.paused_until.load(Ordering::Relaxed)).filter(|until| *until > now)
    }

    /// Routes whose deliveries should not be claimed now: paused, or all their slots in use.
    pub fn closed_routes(&self) -> Vec<String> {
        let now = self.clock.now_ms();
        let map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, g)| {
                g.paused_until.load(Ordering::Relaxed) > now
                    || g.slots.as_ref().is_some_and(|s| s.available_permits() == 0)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

impl Gate {
    /// Waits (at most [`MAX_WAIT`]) for this route's turn. On a store shared by replicas the rate
    /// window lives in the store, so the limit holds for all of them together.
    pub async fn admit(&self) -> Admission {
        let paused = self.paused_until.load(Ordering::Relaxed);
        let now = self.clock.now_ms();
        if paused > now + MAX_WAIT.as_millis() as i64 {
            return Admission::Later(paused);
        }
        if paused > now {
            self.clock.sleep_until(paused).await;
        }
        let permit = match &self.slots {
            None => None,
            Some(slots) => match tokio::time::timeout(MAX_WAIT, slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => Some(p),
                _ => return Admission::Later(self.clock.now_ms() + 250 + rand::random::<u64>() as i64 % 250),
            },
        };
        if let Err(at) = self.rate_turn().await {
            return Admission::Later(at);
        }
        Admission::Go(permit)
    }

    /// Waits (at most [`MAX_WAIT`]) for a place in the route's rate window; `Err(at)` when the next
    /// place is further away than that (the route is then closed to claims until shortly before).
    /// [`Gate::admit`] takes one for a delivery's first request; a multi-step route takes one more
    /// for each further request, so the window counts requests, as the CRM does.
    pub async fn rate_turn(&self) -> Result<(), i64> {
        let now = self.clock.now_ms();
        let reserved = match &self.window {
            None => return Ok(()),
            Some(Window::Local(rate, sent)) => {
                reserve(&mut sent.lock().unwrap_or_else(|p| p.into_inner()), *rate, now, MAX_WAIT_MS)
            }
            Some(Window::Shared(rate, shared)) => match shared.reserve(&self.route, *rate, now, MAX_WAIT_MS).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(route = %self.route, error = %crate::telemetry::Chain(&e), "shared rate window unavailable; trying again shortly");
                    return Err(now + 1000);
                }
            },
        };
        match reserved {
            Reservation::At(slot) => {
                self.clock.sleep_until(slot).await;
                Ok(())
            }
            Reservation::Full(free_at) => {
                // Due when the window has room again; meanwhile nobody claims for this route.
                self.pause_until(free_at - MAX_WAIT_MS);
                Err(free_at)
            }
        }
    }

    /// Nothing is sent on this route before `at` (Unix ms); a later pause wins.
    pub fn pause_until(&self, at: i64) {
        self.paused_until.fetch_max(at, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(rate: Option<&str>, concurrency: Option<usize>) -> RouteConfig {
        let toml = format!(
            "[sources.s]\nsecret_keys=[\"k\"]\n[[routes]]\nname=\"r\"\nevents=[\"*\"]\ntemplate=\"t.hbs\"\nurl=\"http://x.test/\"\n{}{}",
            rate.map(|r| format!("rate_limit=\"{r}\"\n")).unwrap_or_default(),
            concurrency.map(|c| format!("concurrency={c}\n")).unwrap_or_default(),
        );
        crate::config::Config::from_toml(&toml, std::path::Path::new("/x/routes.toml"), &|_| None)
            .unwrap()
            .routes
            .remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn admitted_requests_keep_to_the_rate_and_the_rest_is_handed_back() {
        // Paused time: every wait is driven, so the places are exact, not "no earlier than".
        let gates = Gates::new(None, Clock::tokio(1_000_000));
        let gate = gates.gate(&route(Some("2/400ms"), None), None);
        let start = tokio::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let gate = gate.clone();
            set.spawn(async move {
                match gate.admit().await {
                    Admission::Go(_) => Ok(start.elapsed().as_millis() as u64),
                    Admission::Later(at) => Err(at),
                }
            });
        }
        let mut sent = Vec::new();
        let mut later = Vec::new();
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(ms) => sent.push(ms),
                Err(at) => later.push(at),
            }
        }
        sent.sort_unstable();
        later.sort_unstable();
        // Two per 400 ms window. At 0 ms six places are within MAX_WAIT (1 s); the seventh is
        // refused and closes the route until 200 ms, when the window's next place (1,200 ms) is
        // within reach: the tasks that waited out the pause take it, the others are refused.
        assert_eq!(sent, vec![0, 0, 400, 400, 800, 800, 1200, 1200]);
        // Handed back, each due when the window has room for it.
        assert_eq!(later, vec![1_001_200, 1_001_600, 1_001_600, 1_001_600]);
    }

    #[tokio::test]
    async fn a_full_route_is_closed_to_claims_until_a_slot_frees() {
        let gates = Gates::new(None, Clock::manual(1_000_000));
        let gate = gates.gate(&route(None, Some(1)), None);
        let Admission::Go(permit) = gate.admit().await else { panic!("first one goes") };
        assert_eq!(gates.closed_routes(), vec!["r".to_string()]);
        drop(permit);
        assert!(gates.closed_routes().is_empty());
    }

    #[tokio::test]
    async fn a_pause_hands_deliveries_back_until_it_ends() {
        let clock = Clock::manual(1_000_000);
        let gates = Gates::new(None, clock.clone());
        let gate = gates.gate(&route(None, None), None);
        let until = clock.now_ms() + 60_000;
        gate.pause_until(until);
        assert!(matches!(gate.admit().await, Admission::Later(at) if at == until));
        assert_eq!(gates.closed_routes(), vec!["r".to_string()]);
        // Changing the limits keeps the pause.
        let gate = gates.gate(&route(Some("1/s"), None), None);
        assert!(matches!(gate.admit().await, Admission::Later(at) if at == until));
    }
}
