//! The worker pool: takes the deliveries ingest hands over and claims other due ones under a
//! lease (at most `delivery.workers` in flight), renders each route's template at send time,
//! sends, and settles the result in the store.
//! `run_once` is one round: it claims what is due now, attempts it all, settles it, and returns
//! how many it attempted (tests drive a relay's deliveries with it).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::OptionFuture;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempt::Verdict;
use super::handoff::Handover;
use super::limits::{Admission, Gate};
use super::retry::{next_delay, throttle_delay};
use super::steps;
use super::DeliveryContext;
use crate::compiled::Compiled;
use crate::event::Event;
use crate::store::QueueStore;
use crate::store::{AttemptRecord, Claimed, Next, Settlement};
use crate::telemetry::{DEFERRED, DELIVERIES, DELIVERY_ATTEMPTS, DELIVERY_DURATION};

/// How often held-back deliveries are looked at again when nothing else wakes the workers.
const HELD_BACK_RECHECK: Duration = Duration::from_millis(200);

/// Most workers one route may hold when it sets no `concurrency`: half of them when there are
/// other routes, so a CRM that hangs until the timeout slows only its own route.
pub fn route_budget(config: &crate::config::Config) -> Option<usize> {
    (config.routes.len() > 1).then(|| (config.delivery.workers / 2).max(1))
}

/// Runs until `stop` is cancelled, then lets in-flight deliveries finish (each is bounded by its
/// route's timeout) before returning. Deliveries claimed ahead from the store go first, then those
/// ingest hands over. A claim looks for deliveries in the store when ingest left some there, when
/// a due time comes, or at the poll interval; it runs beside the workers, not between them, and
/// takes ahead up to a pool's worth, so the wait for its commit never leaves a worker idle.
pub async fn run(ctx: Arc<DeliveryContext>, stop: CancellationToken) {
    let workers = ctx.runtime().config.delivery.workers;
    let permits = Arc::new(Semaphore::new(workers));
    let mut handed = ctx.handoff.open(permits.clone());
    let mut in_flight = JoinSet::new();
    // A delivery that waited for a worker (passed over by ingest, or claimed ahead) has its lease
    // renewed first when it ran low, and nothing is sent when it was lost.
    let spawn = |in_flight: &mut JoinSet<()>, h: Handover, permit: tokio::sync::OwnedSemaphorePermit| {
        let renew = h.renew_first(ctx.now_ms(), ctx.lease().as_millis() as i64);
        let ctx = ctx.clone();
        in_flight.spawn(async move {
            if renew && !renewed(&ctx, &h.claimed).await {
                return;
            }
            attempt_and_settle(&ctx, h.claimed, permit).await
        });
    };
    // Claimed from the store and waiting for a worker, oldest first; at most a pool's worth.
    let mut ahead: std::collections::VecDeque<Handover> = std::collections::VecDeque::new();
    let mut said_ahead = 0;
    let mut claiming: Option<tokio::task::JoinHandle<ClaimAhead>> = None;
    // Look in the store at start: deliveries may be waiting from before.
    let mut claim_now = true;
    let mut look_again: Option<tokio::time::Instant> = None;
    let mut after_a_finish = false;
    while !stop.is_cancelled() {
        while in_flight.try_join_next().is_some() {}
        while let Ok(permit) = permits.clone().try_acquire_owned() {
            match next_waiting(&mut ahead, &mut handed) {
                Some(h) => spawn(&mut in_flight, h, permit),
                None => break,
            }
        }
        if ahead.len() != said_ahead {
            said_ahead = ahead.len();
            ctx.handoff.claimed_ahead(said_ahead);
        }
        // Claims come in batches of at least half a pool: one for every delivery started would
        // be a store operation each.
        if claim_now && claiming.is_none() && ahead.len() <= workers / 2 {
            claim_now = false;
            claiming = Some(tokio::spawn(claim_ahead(ctx.clone(), workers - ahead.len())));
        }
        let poll = ctx.runtime().config.delivery.poll_interval;
        let until = look_again.unwrap_or_else(|| tokio::time::Instant::now() + poll);
        let idle = permits.available_permits() > 0;
        tokio::select! {
            biased;
            _ = stop.cancelled() => {}
            Some(claimed) = OptionFuture::from(claiming.as_mut()), if claiming.is_some() => {
                claiming = None;
                match claimed {
                    Ok(ClaimAhead::Claimed(claimed)) => {
                        // There may be more: claim again as soon as there is room.
                        claim_now = true;
                        ahead.extend(claimed);
                    }
                    Ok(ClaimAhead::Nothing { next }) => {
                        let now = ctx.now_ms();
                        // Due deliveries that cannot be claimed now (their key's head is in flight,
                        // their route is paced): look again when a delivery finishes or shortly,
                        // never in a spin.
                        let held_back = next.is_some_and(|at| at <= now);
                        after_a_finish = held_back;
                        let wait = match next {
                            _ if held_back => HELD_BACK_RECHECK,
                            Some(at) => Duration::from_millis((at - now) as u64).min(poll),
                            None => poll,
                        };
                        let at = tokio::time::Instant::now() + wait;
                        look_again = Some(look_again.map_or(at, |l| l.min(at)));
                    }
                    Ok(ClaimAhead::Failed) | Err(_) => {
                        look_again = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            Some(h) = handed.recv(), if idle && ahead.is_empty() => {
                if let Ok(permit) = permits.clone().acquire_owned().await {
                    spawn(&mut in_flight, h, permit);
                }
            }
            // Every worker busy (or one finished since the look above, with deliveries claimed
            // ahead waiting): the first free worker takes the next delivery.
            Ok(permit) = permits.clone().acquire_owned(), if !idle || !ahead.is_empty() => {
                if let Some(h) = next_waiting(&mut ahead, &mut handed) {
                    spawn(&mut in_flight, h, permit);
                }
            }
            _ = ctx.wake.notified() => claim_now = true,
            _ = tokio::time::sleep_until(until) => {
                claim_now = true;
                look_again = None;
            }
            Some(_) = in_flight.join_next(), if after_a_finish && !in_flight.is_empty() => {
                claim_now = true;
                after_a_finish = false;
            }
        }
    }
    // Nothing more is handed over; what was (leased, not started), and what was claimed ahead,
    // goes back to the queue now rather than when its lease expires.
    ctx.handoff.close();
    handed.close();
    if let Some(claim) = claiming {
        if let Ok(ClaimAhead::Claimed(claimed)) = claim.await {
            ahead.extend(claimed);
        }
    }
    let mut back = ahead;
    while let Some(h) = handed.recv().await {
        back.push_back(h);
    }
    for Handover { claimed: c, .. } in back {
        if let Err(e) = ctx.store.defer(c.delivery_id.clone(), c.lease_token, ctx.now_ms()).await {
            tracing::warn!(delivery = %c.delivery_id, error = %crate::telemetry::Chain(&e), "could not hand a delivery back; its lease will expire");
        }
    }
    let n = in_flight.len();
    if n > 0 {
        tracing::info!(in_flight = n, "waiting for in-flight deliveries to finish");
    }
    while in_flight.join_next().await.is_some() {}
}

/// The next delivery waiting for a worker: the oldest claimed ahead, else one ingest passed over.
fn next_waiting(
    ahead: &mut std::collections::VecDeque<Handover>,
    handed: &mut tokio::sync::mpsc::Receiver<Handover>,
) -> Option<Handover> {
    ahead.pop_front().or_else(|| handed.try_recv().ok())
}

/// What a claim ahead found.
enum ClaimAhead {
    /// Deliveries now leased to this pool, oldest first.
    Claimed(Vec<Handover>),
    /// None claimable now; when the next one is due, if any.
    Nothing { next: Option<i64> },
    /// The store refused (logged); try again shortly.
    Failed,
}

/// Claims up to `limit` due deliveries, each with the end of its lease.
async fn claim_ahead(ctx: Arc<DeliveryContext>, limit: usize) -> ClaimAhead {
    let now = ctx.now_ms();
    let lease_until = now + ctx.lease().as_millis() as i64;
    match ctx.store.claim(limit, ctx.lease(), ctx.gates.closed_routes(), now).await {
        Ok(claimed) if claimed.is_empty() => ClaimAhead::Nothing { next: ctx.store.next_due().await.ok().flatten() },
        Ok(claimed) => {
            ClaimAhead::Claimed(claimed.into_iter().map(|claimed| Handover { claimed, lease_until }).collect())
        }
        Err(e) => {
            tracing::error!(error = %crate::telemetry::Chain(&e), "claiming deliveries failed; retrying shortly");
            ClaimAhead::Failed
        }
    }
}

/// One delivery on a worker of the pool: its attempt, then its settle.
async fn attempt_and_settle(ctx: &DeliveryContext, c: Claimed, permit: tokio::sync::OwnedSemaphorePermit) {
    super::priority::enter();
    // The permit bounds outbound requests; recording the result need not hold it.
    let outcome = attempt(ctx, c).await;
    drop(permit);
    finish(ctx, outcome).await;
}

/// Renews the lease of a delivery that waited for a worker; `false` (nothing may be sent) when the
/// lease was lost or could not be renewed.
async fn renewed(ctx: &DeliveryContext, c: &Claimed) -> bool {
    match extend_lease(ctx, &c.delivery_id, &c.lease_token).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(delivery = %c.delivery_id, "the lease ran out while the delivery waited for a worker; whoever holds it now sends it");
            false
        }
        Err(e) => {
            tracing::warn!(delivery = %c.delivery_id, error = %crate::telemetry::Chain(&e), "could not renew the lease of a delivery that waited for a worker; it is sent once the lease expires");
            false
        }
    }
}

/// Claims and processes every delivery due now, concurrently; returns how many were attempted.
pub async fn run_once(ctx: &Arc<DeliveryContext>) -> usize {
    let workers = ctx.runtime().config.delivery.workers;
    let Ok(claimed) = ctx.store.claim(workers, ctx.lease(), ctx.gates.closed_routes(), ctx.now_ms()).await else {
        return 0;
    };
    let n = claimed.len();
    let mut set = JoinSet::new();
    for c in claimed {
        let ctx = ctx.clone();
        set.spawn(async move { process(&ctx, c).await });
    }
    while set.join_next().await.is_some() {}
    n
}

/// One attempt of one claimed delivery, settled in the store.
async fn process(ctx: &DeliveryContext, c: Claimed) {
    let outcome = attempt(ctx, c).await;
    finish(ctx, outcome).await;
}

/// What became of a claimed delivery.
enum Finish {
    /// It was attempted: record the attempt.
    Attempted(Settlement),
    /// Its route had no room (rate limit, concurrency, pause): back to the queue, no attempt.
    Deferred { delivery_id: String, lease_token: String, at: i64 },
}

async fn finish(ctx: &DeliveryContext, outcome: Finish) {
    match outcome {
        Finish::Attempted(s) => settle(ctx, s).await,
        Finish::Deferred { delivery_id, lease_token, at } => {
            if let Err(e) = ctx.store.defer(delivery_id.clone(), lease_token, at).await {
                tracing::warn!(delivery = %delivery_id, error = %crate::telemetry::Chain(&e), "could not hand a paced delivery back; its lease will expire");
            }
        }
    }
}

/// One claimed delivery's attempt ([`attempt_steps`]), with a panic anywhere in it caught and
/// recorded as a failed attempt that names it: the delivery becomes a dead letter (alerted,
/// replayable) instead of staying leased and being sent again at every lease expiry.
async fn attempt(ctx: &DeliveryContext, c: Claimed) -> Finish {
    let held = (c.delivery_id.clone(), c.lease_token.clone(), c.route.clone(), c.keyed, c.steps_state.clone());
    let started_at = ctx.now_ms();
    // Boxed: the steps' state (a whole HTTP exchange) is over 16 KB; unboxed, every spawned
    // delivery copied it into a box and then into its task (1.8 % of the relay's CPU, once now).
    let what = match caught(Box::pin(attempt_steps(ctx, c))).await {
        Ok(done) => return done,
        Err(what) => what,
    };
    let (delivery_id, lease_token, route, keyed, steps_state) = held;
    let error = ctx.runtime().config.secrets.mask(&format!(
        "internal error during the attempt ({what}); the request may have reached the CRM: check it before replaying"
    ));
    tracing::error!(delivery = %delivery_id, route = %route, error = %error, "a delivery attempt panicked; recorded as failed");
    metrics::counter!(DELIVERIES, "route" => route.clone(), "outcome" => Next::Failed.label()).increment(1);
    ctx.signals.signal(crate::signals::Signal::DeadLetter {
        route,
        error: Some(error.clone()),
        delivery_id: delivery_id.clone(),
    });
    let now = ctx.now_ms();
    Finish::Attempted(Settlement {
        delivery_id,
        lease_token,
        attempt: AttemptRecord {
            started_at,
            duration_ms: (now - started_at).max(0),
            status: None,
            error: Some(error),
            detail: None,
        },
        next: Next::Failed,
        steps_state,
        keyed,
        settled_at: now,
    })
}

/// Runs `work`; a panic inside it comes back as `Err` with the panic's message.
async fn caught<F: std::future::Future>(work: F) -> Result<F::Output, String> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(work).catch_unwind().await.map_err(|panic| panic_message(panic.as_ref()))
}

/// The text a panic carried (`panic!` with a literal or a formatted message), or a placeholder.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Waits for the route's turn, renders and sends one claimed delivery; returns what to record.
/// Four steps: admit (the route's pacing), send (its requests), decide what comes next, record.
async fn attempt_steps(ctx: &DeliveryContext, mut c: Claimed) -> Finish {
    let rt = ctx.runtime();
    let gate = rt.config.route(&c.route).map(|route| ctx.gates.gate(route, route_budget(&rt.config)));
    let _permit = match admit(gate.as_deref()).await {
        Ok(permit) => permit,
        Err(at) => return deferred(c, at, "route paced; handed back to the queue"),
    };
    let started_at = ctx.now_ms();
    let data = c.data.take();
    let ran = match send(ctx, &rt, &c, data, gate.as_deref()).await {
        Ok(ran) => ran,
        Err(at) => return deferred(c, at, "rate window full between steps; handed back"),
    };
    let next = decide_next(&ran, c.tries, gate.as_deref(), ctx.now_ms());
    Finish::Attempted(record(ctx, &rt, c, ran, next, started_at))
}

/// The route's turn: a concurrency slot (held for the attempt) or the time to try again.
async fn admit(gate: Option<&Gate>) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, i64> {
    match gate {
        None => Ok(None),
        Some(gate) => match gate.admit().await {
            Admission::Go(permit) => Ok(permit),
            Admission::Later(at) => Err(at),
        },
    }
}

fn deferred(c: Claimed, at: i64, why: &'static str) -> Finish {
    tracing::debug!(delivery = %c.delivery_id, route = %c.route, "{why}");
    metrics::counter!(DEFERRED, "route" => c.route.clone()).increment(1);
    Finish::Deferred { delivery_id: c.delivery_id, lease_token: c.lease_token, at }
}

/// What one attempt's requests came to.
struct Ran {
    verdict: Verdict,
    status: Option<u16>,
    error: Option<String>,
    duration: Duration,
    schedule: Vec<Duration>,
    steps_state: Option<String>,
    exchanges: Vec<super::attempt::Recorded>,
    /// A 429 or a `throttle_on` answer.
    throttled: bool,
}

/// Sends the route's requests for the delivery's event, holding its lease; `Err(at)` when the
/// route's rate window filled between steps (handed back, no attempt counted).
async fn send(
    ctx: &DeliveryContext,
    rt: &Compiled,
    c: &Claimed,
    data: Option<std::sync::Arc<serde_json::Value>>,
    gate: Option<&Gate>,
) -> Result<Ran, i64> {
    let Some(route) = rt.config.route(&c.route) else {
        let reason = format!("route {} is no longer configured", c.route);
        return Ok(Ran {
            verdict: Verdict::Fail { reason: reason.clone() },
            status: None,
            error: Some(reason),
            duration: Duration::ZERO,
            schedule: Vec::new(),
            steps_state: c.steps_state.clone(),
            exchanges: Vec::new(),
            throttled: false,
        });
    };
    let data = match data {
        // Copied only when other deliveries of the event share it.
        Some(data) => std::sync::Arc::try_unwrap(data).unwrap_or_else(|shared| shared.as_ref().clone()),
        None => serde_json::from_str(&c.event.payload).unwrap_or(serde_json::Value::Null),
    };
    let mut event = Event {
        id: c.event.id.clone(),
        source: c.event.source.clone(),
        kind: c.event.kind.clone(),
        key: c.event.key.clone(),
        received_at: c.event.received_at,
        data,
    };
    let mask = |text: &str| ctx.tokens.mask(rt.config.secrets.mask(text));
    let input = steps::AttemptInput {
        route,
        event: &mut event,
        delivery_id: &c.delivery_id,
        lease_token: &c.lease_token,
        state: c.steps_state.as_deref(),
        gate,
        mask: &mask,
    };
    // Pinned here and lent: the steps' state (4.7 KB) lives once in this future, not also in
    // holding_lease's (moving it there kept two copies, and every spawned delivery copied both).
    let attempt = std::pin::pin!(steps::run(ctx.send_context(), &rt.templates, input));
    let out = holding_lease(ctx, &c.delivery_id, &c.lease_token, attempt).await;
    if let Some(at) = out.deferred {
        return Err(at);
    }
    let r = out.result;
    if let (Some(pause), Some(gate)) = (r.pause, gate) {
        gate.pause_until(ctx.now_ms() + pause.as_millis() as i64);
    }
    Ok(Ran {
        verdict: r.verdict,
        status: r.status,
        error: r.error,
        duration: r.duration,
        schedule: route.retry.schedule.clone(),
        steps_state: out.state,
        exchanges: r.exchanges,
        throttled: r.throttled,
    })
}

/// Delivered, failed for good, or when (counted from `now`) to try again; a 429 also pauses the
/// route.
fn decide_next(ran: &Ran, tries: u32, gate: Option<&Gate>, now: i64) -> Next {
    match &ran.verdict {
        Verdict::Delivered => Next::Delivered,
        Verdict::Fail { .. } => Next::Failed,
        // Rate limited (a 429 or a `throttle_on` answer): wait as asked, but never give up because
        // of it.
        Verdict::Retry { retry_after, .. } if ran.throttled => {
            let at = now + throttle_delay(&ran.schedule, tries, *retry_after).as_millis() as i64;
            if let Some(gate) = gate {
                gate.pause_until(at);
            }
            Next::ThrottledUntil(at)
        }
        Verdict::Retry { retry_after, .. } => match next_delay(&ran.schedule, tries + 1, *retry_after) {
            Some(d) => Next::RetryAt(now + d.as_millis() as i64),
            None => Next::Failed,
        },
    }
}

/// Counts, logs and alerts on the attempt, and builds its settlement (secrets masked).
fn record(ctx: &DeliveryContext, rt: &Compiled, c: Claimed, ran: Ran, next: Next, started_at: i64) -> Settlement {
    let Ran { verdict, status, error, duration, steps_state, exchanges, .. } = ran;
    metrics::counter!(DELIVERIES, "route" => c.route.clone(), "outcome" => next.label()).increment(1);
    metrics::histogram!(DELIVERY_DURATION, "route" => c.route.clone()).record(duration.as_secs_f64());
    let class = match status {
        Some(s) if (200..300).contains(&s) => "2xx",
        Some(s) if (400..500).contains(&s) => "4xx",
        Some(s) if s >= 500 => "5xx",
        Some(_) => "other",
        None if duration.is_zero() => "render",
        None => "network",
    };
    metrics::counter!(DELIVERY_ATTEMPTS, "route" => c.route.clone(), "class" => class).increment(1);
    // A CRM or token server may echo what it was sent: no known secret is logged or stored.
    // …nor any OAuth token the relay fetched (a CRM echoing its request headers).
    let secrets = &rt.config.secrets;
    let mask = |text: String| ctx.tokens.mask(secrets.mask_owned(text));
    let error = error.map(mask);
    if next == Next::Failed {
        ctx.signals.signal(crate::signals::Signal::DeadLetter {
            route: c.route.clone(),
            error: error.clone(),
            delivery_id: c.delivery_id.clone(),
        });
    }
    // Serializing owned strings, maps and `Value`s cannot fail.
    let detail = (!exchanges.is_empty()).then(|| serde_json::to_string(&exchanges).unwrap_or_default()).map(mask);
    let reason = match verdict {
        Verdict::Delivered => None,
        Verdict::Retry { reason, .. } | Verdict::Fail { reason } => Some(mask(reason)),
    };
    // A delivered attempt is said at debug (the summary counts it); a retry at info, a failure
    // for good at warn.
    macro_rules! attempt_line {
        ($level:ident) => {
            tracing::$level!(
                delivery = %c.delivery_id,
                event_id = %c.event.id,
                event = crate::telemetry::capped(&c.event.kind),
                route = %c.route,
                attempt = c.attempts + 1,
                status = status,
                duration_ms = duration.as_millis() as u64,
                outcome = next.label(),
                reason = reason,
                "delivery attempt"
            )
        };
    }
    use crate::telemetry::{Counted, SUMMARY};
    match next {
        Next::Delivered => {
            SUMMARY.count(Counted::Delivered);
            attempt_line!(debug)
        }
        Next::Failed => {
            SUMMARY.count(Counted::Failed);
            attempt_line!(warn)
        }
        Next::RetryAt(_) | Next::ThrottledUntil(_) => {
            SUMMARY.count(Counted::Retried);
            attempt_line!(info)
        }
    }
    Settlement {
        delivery_id: c.delivery_id,
        lease_token: c.lease_token,
        attempt: AttemptRecord { started_at, duration_ms: duration.as_millis() as i64, status, error, detail },
        next,
        steps_state,
        keyed: c.keyed,
        settled_at: ctx.now_ms(),
    }
}

/// Runs `attempt` while renewing the delivery's lease every third of its length, so an attempt
/// longer than the lease (a slow token fetch, a 401 re-send, many steps) is never taken over and
/// sent again by another worker or replica.
async fn holding_lease<F: std::future::Future>(
    ctx: &DeliveryContext,
    delivery_id: &str,
    lease_token: &str,
    mut attempt: std::pin::Pin<&mut F>,
) -> F::Output {
    let lease = ctx.lease();
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
    loop {
        tokio::select! {
            out = &mut attempt => return out,
            _ = renew.tick() => {
                match extend_lease(ctx, delivery_id, lease_token).await {
                    Ok(true) => tracing::debug!(delivery = %delivery_id, "lease renewed while the attempt runs"),
                    Ok(false) => tracing::warn!(delivery = %delivery_id, "the lease was lost while the attempt ran"),
                    Err(e) => tracing::warn!(delivery = %delivery_id, error = %crate::telemetry::Chain(&e), "could not renew the lease"),
                }
            }
        }
    }
}

/// Extends the delivery's lease to a whole lease from now; `Ok(false)` when it is no longer ours.
async fn extend_lease(
    ctx: &DeliveryContext,
    delivery_id: &str,
    lease_token: &str,
) -> Result<bool, crate::store::StoreError> {
    let until = ctx.now_ms() + ctx.lease().as_millis() as i64;
    // Boxed: a renewal is rare, and its state (2.3 KB) would otherwise be carried by every
    // delivery's future.
    Box::pin(ctx.store.extend_lease(delivery_id, lease_token, until)).await
}

/// Records an attempt; the lease keeps anyone else off the delivery until this commits.
async fn settle(ctx: &DeliveryContext, settlement: Settlement) {
    let id = settlement.delivery_id.clone();
    match ctx.store.settle(settlement).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(delivery = %id, "lease was lost before settling; the newer state stands"),
        Err(e) => {
            tracing::error!(delivery = %id, error = %crate::telemetry::Chain(&e), "could not record the attempt; it will be retried when the lease expires")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_inside_an_attempt_comes_back_as_its_message() {
        assert_eq!(caught(async { 7 }).await, Ok(7));
        let formatted = caught(async {
            let secs = f64::MAX;
            let d = Duration::from_secs_f64(secs);
            d.as_millis()
        });
        let err = formatted.await.unwrap_err();
        assert!(err.contains("cannot convert float seconds to Duration"), "{err}");
        let literal: Result<(), String> = caught(async { panic!("boom") }).await;
        assert_eq!(literal, Err("boom".to_string()));
        let other: Result<(), String> = caught(async { std::panic::panic_any(42_u8) }).await;
        assert_eq!(other, Err("a panic without a message".to_string()));
    }
}
