//! The admin listener: `/healthz`, `/readyz`, `/metrics`, the dashboard (`/`, a static page that
//! works through the API), and the bearer-protected `/api/*`: stats, events and deliveries with
//! cursor paging, single and bulk retry, the quarantine and its reprocessing, config reload and the
//! retention purge.

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use base64::Engine;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::ApiError;
use super::Edge;
use crate::event::rfc3339;
use crate::housekeeping;
use crate::ingest::{self, IngestError};
use crate::relay::Relay;
use crate::store::{ConsoleStore, QuarantineStore, UpkeepStore};
use crate::store::{DeliveryFilter, DeliveryStatus};
use crate::telemetry::metrics;
use crate::telemetry::Chain;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(super::healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(prometheus))
        .route("/", web::get().to(dashboard_page))
        .route("/dashboard.js", web::get().to(dashboard_script))
        .route("/dashboard.css", web::get().to(dashboard_style))
        .route("/api/stats", web::get().to(stats))
        .route("/api/events", web::get().to(list_events))
        .route("/api/events/{id}", web::get().to(get_event))
        .route("/api/deliveries", web::get().to(list_deliveries))
        .route("/api/deliveries/retry", web::post().to(retry_many))
        .route("/api/deliveries/triage", web::get().to(triage))
        .route("/api/deliveries/{id}", web::get().to(get_delivery))
        .route("/api/deliveries/{id}/retry", web::post().to(retry_one))
        .route("/api/quarantine", web::get().to(list_quarantine))
        .route("/api/quarantine/reprocess", web::post().to(reprocess))
        .route("/api/quarantine", web::delete().to(quarantine_drop_all))
        .route("/api/quarantine/{id}", web::get().to(quarantine_item))
        .route("/api/quarantine/{id}", web::delete().to(quarantine_drop))
        .route("/api/quarantine/{id}/reprocess", web::post().to(quarantine_reprocess_one))
        .route("/api/reload", web::post().to(reload))
        .route("/api/routes", web::get().to(routes_health))
        .route("/api/types", web::get().to(event_types))
        .route("/api/stats/series", web::get().to(stats_series))
        .route("/api/contacts/{email}", web::delete().to(forget_contact))
        .route("/api/reconcile", web::get().to(reconcile_overview))
        .route("/api/reconcile", web::post().to(reconcile_now))
        .route("/api/purge", web::post().to(purge));
}

/// Proof that the request carried the admin bearer token (compared in constant time).
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let now = std::time::Instant::now();
        let ip = req.peer_addr().map(|a| a.ip()).unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let edge = req.app_data::<web::Data<Edge>>().cloned();
        // Past its budget an address is refused before its token is even compared.
        if let Some(Err(wait)) = edge.as_ref().map(|e| e.auth_failures.check(ip, now)) {
            return Box::pin(async move { Err(ApiError::TooManyAttempts(wait)) });
        }
        let result = authorize(req);
        let delay = match (&result, &edge) {
            (Err(ApiError::Unauthorized), Some(edge)) => {
                if let Some(n) = edge.auth_failures.should_say(now) {
                    tracing::warn!(client = %ip, wrong_tokens = n, "wrong admin tokens (said once a minute at most)");
                }
                edge.auth_failures.failed(ip, now)
            }
            _ => std::time::Duration::ZERO,
        };
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            result
        })
    }
}

fn authorize(req: &HttpRequest) -> Result<Admin, ApiError> {
    let relay = req.app_data::<web::Data<Relay>>().ok_or(ApiError::Unauthorized)?;
    let rt = relay.runtime();
    let Some(expected) = &rt.config.server.admin_token else { return Err(ApiError::AdminDisabled) };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(expected.expose_secret().as_bytes().ct_eq(given.trim().as_bytes())) {
        Ok(Admin)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Ready when the store commits a write now: not while the disk is full or the file is gone.
async fn readyz(relay: web::Data<Relay>) -> HttpResponse {
    let check = match relay.ingest.write_health.failing() {
        Some(last) => match relay.store.ping(crate::store::WriteHealth::PROBE_BYTES, relay.delivery.now_ms()).await {
            Ok(()) => {
                relay.ingest.write_health.succeeded();
                Ok(())
            }
            Err(e) => Err(format!("events cannot be stored: {} (last event write: {last})", Chain(&e))),
        },
        None => relay.store.ping(0, relay.delivery.now_ms()).await.map_err(|e| Chain(&e).to_string()),
    };
    let check = check.and_then(|()| match relay.key_problems.first() {
        Some(_) => Err(format!(
            "stored values do not open with the configured keys (add the key they were sealed with to [store] \
             previous_encryption_keys, then restart): {}",
            relay.key_problems.join("; ")
        )),
        None => Ok(()),
    });
    match check {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Err(e) => {
            tracing::error!(error = %e, "not ready: the store cannot commit");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .json(json!({"status": "not ready", "error": e}))
        }
    }
}

async fn prometheus(relay: web::Data<Relay>) -> HttpResponse {
    housekeeping::refresh_gauges(&relay.upkeep).await;
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(metrics().render())
}

/// The dashboard loads only its own script and style, and talks only to this listener.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn static_file(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Content-Security-Policy", DASHBOARD_CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Cache-Control", "no-cache"))
        .body(body)
}

async fn dashboard_page() -> HttpResponse {
    static_file("text/html; charset=utf-8", include_str!("../../assets/dashboard/index.html"))
}

async fn dashboard_script() -> HttpResponse {
    static_file("text/javascript; charset=utf-8", include_str!("../../assets/dashboard/dashboard.js"))
}

async fn dashboard_style() -> HttpResponse {
    static_file("text/css; charset=utf-8", include_str!("../../assets/dashboard/dashboard.css"))
}

async fn stats(_: Admin, relay: web::Data<Relay>, edge: web::Data<Edge>) -> Result<HttpResponse, ApiError> {
    let g = relay.store.gauges().await?;
    let rt = relay.runtime();
    let (unknown_count, unknown_last) = edge.unknown_hooks.summary();
    Ok(HttpResponse::Ok().json(json!({
        "queue_depth": g.queue_depth,
        "failed": g.failed,
        "quarantined": g.quarantined,
        "quarantined_bytes": g.quarantined_bytes,
        "oldest_pending_at": g.oldest_pending_at.map(rfc3339),
        "routes": rt.config.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        "sources": rt.config.sources.keys().collect::<Vec<_>>(),
        "unknown_hooks": {"count": unknown_count, "last": unknown_last},
    })))
}

const MAX_PAGE: u32 = 500;

fn page_size(limit: Option<u32>) -> u32 {
    limit.unwrap_or(50).clamp(1, MAX_PAGE)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    limit: Option<u32>,
    after: Option<String>,
    /// `asc` (default: oldest first) or `desc` (newest first).
    order: Option<String>,
    /// A glob on the event type.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// The derived status: delivered, failed, pending, unrouted.
    status: Option<String>,
    route: Option<String>,
    /// The contact's e-mail (case does not matter).
    email: Option<String>,
    /// The Learnybox event id.
    id: Option<String>,
    /// Free text, any case: a type prefix, an e-mail prefix, a name.
    q: Option<String>,
    /// RFC 3339 times or Unix milliseconds.
    since: Option<String>,
    until: Option<String>,
}

/// A time given as a duration back from `now` (`24h`, at most a year), RFC 3339 or Unix ms.
fn time_or_ago(name: &str, value: Option<String>, now: i64) -> Result<Option<i64>, ApiError> {
    let Some(v) = value.filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    match humantime::parse_duration(v.trim()) {
        Ok(ago) if ago <= std::time::Duration::from_secs(366 * 86_400) => Ok(Some(now - ago.as_millis() as i64)),
        Ok(_) => Err(ApiError::BadRequest(format!("{name}: at most a year back"))),
        Err(_) => time_param(name, Some(v)),
    }
}

/// A time given as RFC 3339 (`2026-11-29T10:00:00Z`) or Unix milliseconds.
fn time_param(name: &str, value: Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(v) = value.filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    if let Ok(ms) = v.trim().parse::<i64>() {
        // Year 0 to 9999: anything else is a typo, and could overflow what is computed from it.
        if !(0..=253_402_300_799_999).contains(&ms) {
            return Err(ApiError::BadRequest(format!("{name}: {ms} is not a time (Unix ms from 1970 to 9999)")));
        }
        return Ok(Some(ms));
    }
    crate::event::parse_time(v.trim())
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest(format!("{name} must be an RFC 3339 time or Unix milliseconds")))
}

async fn list_events(_: Admin, relay: web::Data<Relay>, q: web::Query<EventsQuery>) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let limit = page_size(q.limit);
    let newest_first = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(ApiError::BadRequest("order must be asc or desc".into())),
    };
    if let Some(s) = q.status.as_deref().filter(|s| !crate::store::EVENT_STATUSES.contains(s)) {
        return Err(ApiError::BadRequest(format!(
            "status {s:?}: use one of {}",
            crate::store::EVENT_STATUSES.join(", ")
        )));
    }
    let nonempty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let filter = crate::store::EventFilter {
        kind: nonempty(q.kind),
        status: nonempty(q.status),
        route: nonempty(q.route),
        email: nonempty(q.email).map(|e| e.trim().to_string()),
        key: nonempty(q.id),
        text: nonempty(q.q),
        since: time_param("since", q.since)?,
        until: time_param("until", q.until)?,
        after: q.after,
        limit,
        newest_first,
    };
    let (events, matching) = relay.store.find_events(filter).await?;
    let next = if events.len() == limit as usize { events.last().map(|e| e.id.clone()) } else { None };
    let items: Vec<Value> = events
        .iter()
        .map(|e| {
            let data: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
            let email = crate::email::contact_in(&data);
            let unreadable = data.get(crate::store::UNREADABLE).is_some();
            json!({"id": e.id, "source": e.source, "learnybox_id": e.key, "event_key": e.key, "type": e.kind,
                   "event": e.kind, "email": email, "status": e.status, "received_at": rfc3339(e.received_at),
                   "unreadable": unreadable})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "items": items, "next": next, "total": matching.total, "total_exact": matching.exact,
    })))
}

async fn get_event(_: Admin, relay: web::Data<Relay>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let Some(d) = relay.store.event_detail(&id).await? else { return Err(ApiError::NotFound) };
    let deliveries: Vec<Value> = d
        .deliveries
        .iter()
        .map(|del| {
            let mut v = serde_json::to_value(del).unwrap_or(Value::Null);
            let mine: Vec<&crate::store::AttemptRow> = d.attempts.iter().filter(|a| a.delivery_id == del.id).collect();
            let attempts: Vec<Value> = mine
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let mut row = serde_json::to_value(a).unwrap_or(Value::Null);
                    // Each request as sent (credentials masked) and the CRM's answer (first 8 KiB).
                    row["exchanges"] = a
                        .detail
                        .as_deref()
                        .and_then(|t| serde_json::from_str(t).ok())
                        .unwrap_or(Value::Array(Vec::new()));
                    // When the next attempt was made, or (the last one) is due: SPEC's "next attempt".
                    row["next_attempt_at"] = match mine.get(i + 1) {
                        Some(next) => rfc3339(next.started_at).into(),
                        None if del.status == DeliveryStatus::Pending => del.next_attempt_at.map(rfc3339).into(),
                        None => Value::Null,
                    };
                    row
                })
                .collect();
            v["attempt_log"] = Value::Array(attempts);
            v
        })
        .collect();
    let e = &d.event;
    // The same derived status as the list shows.
    let status = if d.deliveries.is_empty() {
        "unrouted"
    } else if d.deliveries.iter().any(|x| x.status == DeliveryStatus::Failed) {
        "failed"
    } else if d.deliveries.iter().any(|x| x.status == DeliveryStatus::Pending) {
        "pending"
    } else {
        "delivered"
    };
    Ok(HttpResponse::Ok().json(json!({
        "id": e.id, "source": e.source, "event_key": e.key, "event": e.kind, "status": status,
        "received_at": rfc3339(e.received_at), "origin": d.origin.as_deref().unwrap_or("webhook"),
        "data": serde_json::from_str::<Value>(&e.payload).unwrap_or(Value::Null),
        "deliveries": deliveries,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    route: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

fn check_status(status: Option<&str>) -> Result<(), ApiError> {
    match status {
        Some(s) if DeliveryStatus::parse(s).is_none() => {
            let all: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
            Err(ApiError::BadRequest(format!("status must be one of {}", all.join(", "))))
        }
        _ => Ok(()),
    }
}

async fn list_deliveries(
    _: Admin,
    relay: web::Data<Relay>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    check_status(q.status.as_deref())?;
    let limit = page_size(q.limit);
    let items =
        relay.store.list_deliveries(DeliveryFilter { status: q.status, route: q.route, after: q.after, limit }).await?;
    let next = if items.len() == limit as usize { items.last().map(|d| d.id.clone()) } else { None };
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next": next })))
}

/// `GET /api/deliveries/{id}`: which event a delivery belongs to (the dashboard opens it there).
async fn get_delivery(_: Admin, relay: web::Data<Relay>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let Some(event_id) = relay.store.delivery_event(&id).await? else { return Err(ApiError::NotFound) };
    Ok(HttpResponse::Ok().json(json!({"id": id.into_inner(), "event_id": event_id})))
}

async fn retry_one(_: Admin, relay: web::Data<Relay>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let Some(route) = relay.store.delivery_route(&id).await? else { return Err(ApiError::NotFound) };
    match relay.store.retry_delivery(&id, relay.delivery.now_ms()).await? {
        crate::store::Retried::Yes => {}
        crate::store::Retried::Missing => return Err(ApiError::NotFound),
        crate::store::Retried::InFlight => return Err(ApiError::InFlight),
    }
    // A pause (429, throttle_on) would hold it back: the operator asked for it now.
    relay.delivery.gates.unpause(&route);
    relay.delivery.wake.notify_one();
    Ok(HttpResponse::Ok().json(json!({"retried": 1})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BulkQuery {
    /// `failed` (default), `pending`, `delivered` or `any`.
    status: Option<String>,
    route: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Only count (and preview) what would be retried.
    dry_run: Option<bool>,
    /// These deliveries, whatever their status (at most 1000; no filter with them).
    ids: Option<Vec<String>>,
}

/// Deliveries one bulk replay may name.
const MAX_IDS: usize = 1000;

/// `POST /api/deliveries/retry`: the filter as query parameters or a JSON body (the body wins).
/// A body that is present but not a valid filter (`{"dry-run": true}`) is a 400 naming the key —
/// never "no filter", which would replay every failed delivery.
async fn retry_many(
    _: Admin,
    relay: web::Data<Relay>,
    q: web::Query<BulkQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let b: BulkQuery = if body.iter().all(u8::is_ascii_whitespace) {
        BulkQuery::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not a retry filter: {e}; nothing was retried")))?
    };
    let dry_run = b.dry_run.or(q.dry_run).unwrap_or(false);
    if let Some(ids) = b.ids {
        let filtered =
            [&b.status, &b.route, &b.kind, &b.since, &b.until, &q.status, &q.route, &q.kind, &q.since, &q.until]
                .iter()
                .any(|v| v.is_some());
        if filtered {
            return Err(ApiError::BadRequest("ids and a filter cannot be combined; nothing was retried".into()));
        }
        if ids.is_empty() || ids.len() > MAX_IDS {
            return Err(ApiError::BadRequest(format!("ids: give 1 to {MAX_IDS} delivery ids; nothing was retried")));
        }
        return retry_ids(&relay, ids, dry_run).await;
    }
    let status = b.status.or(q.status).unwrap_or_else(|| "failed".into());
    let status = match status.as_str() {
        "any" => None,
        s => {
            check_status(Some(s))?;
            Some(status)
        }
    };
    let route = b.route.or(q.route).filter(|r| !r.is_empty());
    if let Some(r) = &route {
        let rt = relay.runtime();
        if rt.config.route(r).is_none() {
            let names: Vec<&str> = rt.config.routes.iter().map(|r| r.name.as_str()).collect();
            let hint = crate::suggest::hint(r, names.iter().copied());
            return Err(ApiError::BadRequest(format!(
                "route {r:?} is not configured{hint}; routes: {}; nothing was retried",
                names.join(", ")
            )));
        }
    }
    let filter = crate::store::RetryFilter {
        status,
        route,
        kind: b.kind.or(q.kind).filter(|k| !k.is_empty()),
        since: time_param("since", b.since.or(q.since))?,
        until: time_param("until", b.until.or(q.until))?,
    };
    let preview_filter = filter.status.clone().map(|status| crate::store::triage::TriageFilter {
        status: Some(status),
        route: filter.route.clone(),
        kind: filter.kind.clone(),
        since: filter.since,
        until: filter.until,
        limit: 100,
        ..Default::default()
    });
    let n = relay.store.retry_matching(filter, dry_run, relay.delivery.now_ms()).await?;
    if dry_run {
        // Which ones, not only how many: the first 100 (with `status = "any"`, the count only).
        let preview = match preview_filter {
            Some(f) => Some(relay.store.triage(f).await?.0),
            None => None,
        };
        return Ok(HttpResponse::Ok().json(json!({"dry_run": true, "would_retry": n, "preview": preview})));
    }
    relay.delivery.wake.notify_one();
    Ok(HttpResponse::Ok().json(json!({"retried": n})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineQuery {
    limit: Option<u32>,
    after: Option<i64>,
}

async fn list_quarantine(
    _: Admin,
    relay: web::Data<Relay>,
    q: web::Query<QuarantineQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_size(q.limit);
    let rows = relay.store.list_quarantine(q.after, limit).await?;
    let next = if rows.len() == limit as usize { rows.last().map(|r| r.id) } else { None };
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "source": r.source, "received_at": rfc3339(r.received_at), "reason": r.reason,
                "headers": serde_json::from_str::<Value>(&r.headers).unwrap_or(Value::Null),
                "size": r.body.len(),
                "body_base64": base64::engine::general_purpose::STANDARD.encode(&r.body),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next": next })))
}

/// One quarantined body, or 404.
async fn quarantined(relay: &Relay, id: i64) -> Result<crate::store::Quarantined, ApiError> {
    let rows = relay.store.list_quarantine(Some(id.saturating_sub(1)), 1).await?;
    rows.into_iter().find(|r| r.id == id).ok_or(ApiError::NotFound)
}

/// `GET /api/quarantine/{id}`: one body with its headers and, when it is text, the text.
async fn quarantine_item(_: Admin, relay: web::Data<Relay>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let r = quarantined(&relay, id.into_inner()).await?;
    let text = std::str::from_utf8(&r.body).ok().map(|t| t.chars().take(65_536).collect::<String>());
    Ok(HttpResponse::Ok().json(json!({
        "id": r.id, "source": r.source, "received_at": rfc3339(r.received_at), "reason": r.reason,
        "headers": serde_json::from_str::<Value>(&r.headers).unwrap_or(Value::Null),
        "size": r.body.len(), "body_text": text,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&r.body),
    })))
}

/// `DELETE /api/quarantine/{id}`: drops one body.
async fn quarantine_drop(_: Admin, relay: web::Data<Relay>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let r = quarantined(&relay, id.into_inner()).await?;
    relay.store.delete_quarantined(r.id).await?;
    Ok(HttpResponse::Ok().json(json!({"dropped": 1})))
}

/// `DELETE /api/quarantine`: drops every body (after the cause is fixed and what could open has).
async fn quarantine_drop_all(_: Admin, relay: web::Data<Relay>) -> Result<HttpResponse, ApiError> {
    let mut dropped = 0u64;
    loop {
        let page = relay.store.list_quarantine(None, 200).await?;
        if page.is_empty() {
            break;
        }
        for r in page {
            relay.store.delete_quarantined(r.id).await?;
            dropped += 1;
        }
    }
    Ok(HttpResponse::Ok().json(json!({"dropped": dropped})))
}

/// `POST /api/quarantine/{id}/reprocess`: one body tried again with the keys in force.
async fn quarantine_reprocess_one(
    _: Admin,
    relay: web::Data<Relay>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let r = quarantined(&relay, id.into_inner()).await?;
    let rt = relay.runtime();
    let outcome = match ingest::reprocess_item(&relay.ingest, &rt, &r).await {
        Ok(o) => o,
        Err(IngestError::Unavailable(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::BadRequest(e.to_string())),
    };
    Ok(HttpResponse::Ok().json(match outcome {
        ingest::Reprocessed1::Stored => json!({"outcome": "reprocessed"}),
        ingest::Reprocessed1::Duplicate => json!({"outcome": "duplicate"}),
        ingest::Reprocessed1::Still(reason) => json!({"outcome": "still_quarantined", "reason": reason}),
    }))
}

async fn reprocess(_: Admin, relay: web::Data<Relay>) -> Result<HttpResponse, ApiError> {
    match ingest::reprocess_quarantine(&relay.ingest).await {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(IngestError::Unavailable(e)) => Err(e.into()),
        Err(e) => Err(ApiError::BadRequest(e.to_string())),
    }
}

/// Each route's success rate over 1 h and 24 h, last success, last failure and its error, queue.
async fn routes_health(_: Admin, relay: web::Data<Relay>) -> Result<HttpResponse, ApiError> {
    let names: Vec<String> = relay.runtime().config.routes.iter().map(|r| r.name.clone()).collect();
    let now = relay.delivery.now_ms();
    let health = crate::console::route_health(&relay.store, &names, now).await?;
    // Health per delivery (what reached the CRM in the end), apart from attempts (retries count there).
    let (per_1h, per_24h) = relay.store.delivery_counts(now - 3_600_000, now - 24 * 3_600_000).await?;
    let mut routes = serde_json::to_value(health).unwrap_or_else(|_| json!([]));
    let rt = relay.runtime();
    for r in routes.as_array_mut().into_iter().flatten() {
        let name = r["route"].as_str().unwrap_or_default().to_string();
        for (key, rate_key, counts) in
            [("deliveries_1h", "delivered_rate_1h", &per_1h), ("deliveries_24h", "delivered_rate_24h", &per_24h)]
        {
            let c = counts.get(&name).cloned().unwrap_or_default();
            let settled = c.delivered + c.failed;
            r[rate_key] = (settled > 0).then(|| c.delivered as f64 / settled as f64).into();
            r[key] = serde_json::to_value(c).unwrap_or_default();
        }
        // A route held by a 429 or a `throttle_on` answer: sending resumes then, by itself.
        r["paused_until"] = relay.delivery.gates.paused_until(&name).map(rfc3339).into();
        r["fields"] = crate::console::field_coverage(&rt, &name, &relay.ingest.coverage).into();
    }
    Ok(HttpResponse::Ok().json(json!({ "routes": routes })))
}

/// A bulk replay of named deliveries: each is made due now, as `POST /api/deliveries/{id}/retry`.
async fn retry_ids(relay: &Relay, ids: Vec<String>, dry_run: bool) -> Result<HttpResponse, ApiError> {
    let (mut retried, mut in_flight, mut missing) = (0u64, Vec::new(), Vec::new());
    let mut routes = std::collections::BTreeSet::new();
    for id in ids {
        let Some(route) = relay.store.delivery_route(&id).await? else {
            missing.push(id);
            continue;
        };
        if dry_run {
            retried += 1;
            continue;
        }
        match relay.store.retry_delivery(&id, relay.delivery.now_ms()).await? {
            crate::store::Retried::Yes => {
                retried += 1;
                routes.insert(route);
            }
            crate::store::Retried::Missing => missing.push(id),
            crate::store::Retried::InFlight => in_flight.push(id),
        }
    }
    if dry_run {
        return Ok(HttpResponse::Ok().json(json!({"dry_run": true, "would_retry": retried, "missing": missing})));
    }
    for route in &routes {
        relay.delivery.gates.unpause(route);
    }
    relay.delivery.wake.notify_one();
    Ok(HttpResponse::Ok().json(json!({"retried": retried, "in_flight": in_flight, "missing": missing})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriageQuery {
    /// `failed` (default), `pending` or `delivered`.
    status: Option<String>,
    route: Option<String>,
    /// A glob, or a prefix (`contact`).
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Text of the last error (any case).
    error: Option<String>,
    /// The event's arrival: RFC 3339, Unix ms, or a duration back from now (`24h`).
    since: Option<String>,
    until: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/deliveries/triage`: deliveries (failed by default) newest first, with the event's
/// type, contact and times, filtered by route, type, error text and time window.
async fn triage(_: Admin, relay: web::Data<Relay>, q: web::Query<TriageQuery>) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let status = q.status.filter(|s| !s.is_empty()).unwrap_or_else(|| "failed".into());
    check_status(Some(&status))?;
    let now = relay.delivery.now_ms();
    let when = |name: &str, v: Option<String>| time_or_ago(name, v, now);
    let filter = crate::store::triage::TriageFilter {
        status: Some(status),
        route: q.route.filter(|r| !r.is_empty()),
        kind: q.kind.filter(|k| !k.is_empty()),
        error: q.error.filter(|e| !e.trim().is_empty()),
        since: when("since", q.since)?,
        until: when("until", q.until)?,
        after: q.after.filter(|a| !a.is_empty()),
        limit: page_size(q.limit),
    };
    let (items, next) = relay.store.triage(filter).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileQuery {
    /// Days shown, newest first (14 by default, at most 400).
    days: Option<u32>,
}

/// Per source and day: items in Learnybox, received by webhook, recovered, still missing; runs.
async fn reconcile_overview(
    _: Admin,
    relay: web::Data<Relay>,
    q: web::Query<ReconcileQuery>,
) -> Result<HttpResponse, ApiError> {
    let days = q.days.unwrap_or(14);
    if !(1..=400).contains(&days) {
        return Err(ApiError::BadRequest("days must be between 1 and 400".into()));
    }
    let view = crate::reconcile::overview(&relay.ingest, days).await.map_err(reconcile_error)?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileRunQuery {
    source: Option<String>,
    /// A duration (`24h`) instead of the source's lookback.
    since: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// Runs a reconciliation now (what `lbx-relay reconcile` does); 409 when one is under way.
async fn reconcile_now(
    _: Admin,
    relay: web::Data<Relay>,
    q: web::Query<ReconcileRunQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let since = q.since.as_deref().map(crate::reconcile::parse_since).transpose().map_err(ApiError::BadRequest)?;
    let sources = crate::reconcile::sources(&relay.ingest, q.source.as_deref()).map_err(reconcile_error)?;
    let opts = crate::reconcile::RunOptions { since, dry_run: q.dry_run, trigger: "api" };
    let mut reports = Vec::new();
    let stop = tokio_util::sync::CancellationToken::new();
    for source in sources {
        let report = crate::reconcile::run_source(&relay.ingest, &relay.reconcile_clients, &source, &opts, &stop)
            .await
            .map_err(reconcile_error)?;
        reports.push(report);
    }
    let status = if reports.iter().any(|r| r.busy) {
        actix_web::http::StatusCode::CONFLICT
    } else {
        actix_web::http::StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(json!({ "reports": reports })))
}

fn reconcile_error(e: crate::reconcile::ReconcileError) -> ApiError {
    match e {
        crate::reconcile::ReconcileError::Store(e) => ApiError::Store(e),
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// Event types as they really arrive, per source (`lbx-relay types` prints the same).
async fn event_types(_: Admin, relay: web::Data<Relay>) -> Result<HttpResponse, ApiError> {
    let rt = relay.runtime();
    let types = crate::console::types(&relay.store, &rt.config).await?;
    Ok(HttpResponse::Ok().json(json!({ "types": types })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    /// RFC 3339, Unix ms, or a duration before now (`24h`, the default).
    since: Option<String>,
    /// Bucket length (`1h` by default; at least `1m`).
    step: Option<String>,
}

/// Per route and time bucket: delivered, failed and retried attempts, latency p50/p95.
async fn stats_series(_: Admin, relay: web::Data<Relay>, q: web::Query<SeriesQuery>) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let now = relay.delivery.now_ms();
    // Every value is range-checked before any arithmetic: no parameter can overflow a sum.
    const YEAR_MS: i64 = 366 * 24 * 3_600_000;
    let since = time_or_ago("since", q.since, now)?.unwrap_or(now - 24 * 3_600_000);
    if !(now - YEAR_MS..=now).contains(&since) {
        return Err(ApiError::BadRequest("since must be within the last year, and not in the future".into()));
    }
    let step = match q.step.as_deref() {
        None => 3_600_000,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d.as_millis() <= YEAR_MS as u128 => d.as_millis() as i64,
            _ => return Err(ApiError::BadRequest("step must be a duration like 5m or 1h, at most a year".into())),
        },
    };
    if step < 60_000 || (now - since) / step > 2_000 {
        return Err(ApiError::BadRequest("step must be at least 1m and give at most 2,000 buckets".into()));
    }
    let names: Vec<String> = relay.runtime().config.routes.iter().map(|r| r.name.clone()).collect();
    let series = crate::console::series(&relay.store, &names, since, step, now).await?;
    Ok(HttpResponse::Ok().json(json!({
        "since": rfc3339(since), "step_ms": step, "routes": series,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgetQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Erases a contact: every stored event, delivery, attempt and quarantined body naming it as a
/// whole address; `?dry_run=true` lists them and changes nothing.
async fn forget_contact(
    _: Admin,
    relay: web::Data<Relay>,
    email: web::Path<String>,
    q: web::Query<ForgetQuery>,
) -> Result<HttpResponse, ApiError> {
    let rt = relay.runtime();
    let email = crate::erasure::parse(&email).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let outcome = if q.dry_run {
        crate::erasure::plan(&relay.store, &rt, &email).await.map(|plan| {
            let events: Vec<_> = plan
                .events
                .iter()
                .map(|e| {
                    json!({"id": e.id, "learnybox_id": e.learnybox_id, "event": e.kind,
                    "received_at": rfc3339(e.received_at),
                    "deliveries": e.deliveries, "attempts": e.attempts})
                })
                .collect();
            json!({"status": "dry_run", "would_remove": plan.counts(), "events": events,
                "quarantined": plan.quarantined})
        })
    } else {
        crate::erasure::forget(&relay.store, &rt, &email)
            .await
            .map(|report| json!({"status": "erased", "removed": report}))
    };
    match outcome {
        Ok(body) => Ok(HttpResponse::Ok().json(body)),
        Err(crate::erasure::ForgetError::NotAnEmail(e)) => {
            Err(ApiError::BadRequest(format!("not an e-mail address: {e}")))
        }
        Err(crate::erasure::ForgetError::Store(e)) => Err(e.into()),
    }
}

async fn reload(_: Admin, relay: web::Data<Relay>) -> HttpResponse {
    match relay.reload() {
        Ok(done) => HttpResponse::Ok().json(json!({
            "status": "reloaded",
            "routes": done.routes,
            "needs_restart": done.needs_restart,
        })),
        Err(problems) => HttpResponse::UnprocessableEntity().json(json!({
            "error": "the new configuration was refused; the running one is kept",
            "problems": problems,
        })),
    }
}

async fn purge(_: Admin, relay: web::Data<Relay>) -> Result<HttpResponse, ApiError> {
    let n = housekeeping::purge(&relay.upkeep).await?;
    Ok(HttpResponse::Ok().json(json!({"purged": n})))
}
