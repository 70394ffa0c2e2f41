//! Per-route pacing in this process: `rate_limit` (a sliding window: never more than COUNT
//! requests in any WINDOW), `concurrency` (a semaphore), and pauses a CRM asked for (429 with
//! `Retry-After`, or rate-limit headers saying nothing is left). A delivery that would wait longer
//! than [`MAX_WAIT`] is handed back to the queue instead of holding a worker.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{RateLimit, RouteConfig};
use crate::event::now_ms;

/// Longest a claimed delivery waits in a worker for its route's turn.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// The gates of every route that has a limit, or was paused, by route name.
#[derive(Debug, Default)]
pub struct Gates {
    by_route: Mutex<HashMap<String, Arc<Gate>>>,
}

#[derive(Debug)]
pub struct Gate {
    spec: (Option<RateLimit>, Option<usize>),
    /// Send times handed out (past and reserved), at most `count` of them, oldest first.
    window: Option<(RateLimit, Mutex<VecDeque<Instant>>)>,
    slots: Option<Arc<Semaphore>>,
    /// Unix ms before which nothing is sent on this route (a CRM asked for it).
    paused_until: AtomicI64,
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
    /// The gate of `route`, made anew when its limits changed (after a reload).
    pub fn gate(&self, route: &RouteConfig) -> Arc<Gate> {
        let spec = (route.rate_limit, route.concurrency);
        let mut map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = map.get(&route.name).filter(|g| g.spec == spec) {
            return g.clone();
        }
        let paused = map.get(&route.name).map(|g| g.paused_until.load(Ordering::Relaxed)).unwrap_or(0);
        let gate = Arc::new(Gate {
            spec,
            window: route.rate_limit.map(|r| (r, Mutex::new(VecDeque::with_capacity(r.count as usize)))),
            slots: route.concurrency.map(|n| Arc::new(Semaphore::new(n))),
            paused_until: AtomicI64::new(paused),
        });
        map.insert(route.name.clone(), gate.clone());
        gate
    }

    /// Routes whose deliveries should not be claimed now: paused, or all their slots in use.
    pub fn closed_routes(&self) -> Vec<String> {
        let now = now_ms();
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
    /// Waits (at most [`MAX_WAIT`]) for this route's turn.
    pub async fn admit(&self) -> Admission {
        let paused = self.paused_until.load(Ordering::Relaxed);
        let now = now_ms();
        if paused > now + MAX_WAIT.as_millis() as i64 {
            return Admission::Later(paused);
        }
        if paused > now {
            tokio::time::sleep(Duration::from_millis((paused - now) as u64)).await;
        }
        let permit = match &self.slots {
            None => None,
            Some(slots) => match tokio::time::timeout(MAX_WAIT, slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => Some(p),
                _ => return Admission::Later(now_ms() + 250 + rand::random::<u64>() as i64 % 250),
            },
        };
        if let Some((rate, sent)) = &self.window {
            let now = Instant::now();
            let slot = {
                let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                let slot = match sent.front() {
                    Some(oldest) if sent.len() >= rate.count as usize => (*oldest + rate.window).max(now),
                    _ => now,
                };
                if slot.duration_since(now) > MAX_WAIT {
                    None
                } else {
                    if sent.len() >= rate.count as usize {
                        sent.pop_front();
                    }
                    sent.push_back(slot);
                    Some(slot)
                }
            };
            match slot {
                Some(slot) => tokio::time::sleep_until(slot).await,
                None => {
                    // Due when the window has room again; meanwhile nobody claims for this route.
                    let wait = self.next_free_in(*rate);
                    let at = now_ms() + wait.as_millis() as i64;
                    self.pause_until(at - MAX_WAIT.as_millis() as i64);
                    return Admission::Later(at);
                }
            }
        }
        Admission::Go(permit)
    }

    fn next_free_in(&self, rate: RateLimit) -> Duration {
        let Some((_, sent)) = &self.window else { return Duration::ZERO };
        let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.front().map(|oldest| (*oldest + rate.window).saturating_duration_since(Instant::now())).unwrap_or_default()
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
    async fn never_more_than_count_in_any_window() {
        let gates = Gates::default();
        let gate = gates.gate(&route(Some("3/1s"), None));
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let gate = gate.clone();
            set.spawn(async move {
                match gate.admit().await {
                    Admission::Go(_) => Some(start.elapsed()),
                    Admission::Later(_) => None,
                }
            });
        }
        let mut sent: Vec<Duration> = Vec::new();
        let mut later = 0;
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Some(d) => sent.push(d),
                None => later += 1,
            }
        }
        sent.sort();
        // 3 at once, then each waits for room in the window; what would wait over MAX_WAIT is handed back.
        assert!(sent[..3].iter().all(|d| *d < Duration::from_millis(10)), "{sent:?}");
        for w in sent.windows(4) {
            assert!(w[3] - w[0] >= Duration::from_secs(1), "4 sends within one window: {sent:?}");
        }
        assert!(sent.iter().all(|d| *d <= Duration::from_secs(2)), "nobody waited over MAX_WAIT: {sent:?}");
        assert!(later >= 1 && sent.len() + later == 8, "{sent:?} {later}");
    }

    #[tokio::test]
    async fn a_full_route_is_closed_to_claims_until_a_slot_frees() {
        let gates = Gates::default();
        let gate = gates.gate(&route(None, Some(1)));
        let Admission::Go(permit) = gate.admit().await else { panic!("first one goes") };
        assert_eq!(gates.closed_routes(), vec!["r".to_string()]);
        drop(permit);
        assert!(gates.closed_routes().is_empty());
    }

    #[tokio::test]
    async fn a_pause_hands_deliveries_back_until_it_ends() {
        let gates = Gates::default();
        let gate = gates.gate(&route(None, None));
        let until = now_ms() + 60_000;
        gate.pause_until(until);
        assert!(matches!(gate.admit().await, Admission::Later(at) if at == until));
        assert_eq!(gates.closed_routes(), vec!["r".to_string()]);
        // Changing the limits keeps the pause.
        let gate = gates.gate(&route(Some("1/s"), None));
        assert!(matches!(gate.admit().await, Admission::Later(at) if at == until));
    }
}
