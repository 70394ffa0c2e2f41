//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the bearer-protected `/api/*`
//! (deliveries listing with filters and cursor paging, single and bulk retry).

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::app::Relay;
use crate::store::{DeliveryFilter, DELIVERY_STATUSES};
use crate::telemetry::{metrics, QUEUE_DEPTH};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(super::healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(prometheus))
        .route("/api/deliveries", web::get().to(list_deliveries))
        .route("/api/deliveries/retry", web::post().to(retry_many))
        .route("/api/deliveries/{id}/retry", web::post().to(retry_one));
}

/// Proof that the request carried the admin bearer token (compared in constant time).
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(authorize(req))
    }
}

fn authorize(req: &HttpRequest) -> Result<Admin, ApiError> {
    let relay = req.app_data::<web::Data<Relay>>().ok_or(ApiError::Unavailable)?;
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

async fn readyz(relay: web::Data<Relay>) -> Result<HttpResponse, ApiError> {
    relay.store.ping().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

async fn prometheus(relay: web::Data<Relay>) -> HttpResponse {
    if let Ok(depth) = relay.store.queue_depth().await {
        ::metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(metrics().render())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    route: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

const MAX_PAGE: u32 = 500;

fn check_status(status: Option<&str>) -> Result<(), ApiError> {
    match status {
        Some(s) if !DELIVERY_STATUSES.contains(&s) => {
            Err(ApiError::BadRequest(format!("status must be one of {}", DELIVERY_STATUSES.join(", "))))
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
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let items =
        relay.store.list_deliveries(DeliveryFilter { status: q.status, route: q.route, after: q.after, limit }).await?;
    let next = if items.len() == limit as usize { items.last().map(|d| d.id.clone()) } else { None };
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "next": next })))
}

async fn retry_one(_: Admin, relay: web::Data<Relay>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    if !relay.store.retry_delivery(&id).await? {
        return Err(ApiError::NotFound);
    }
    relay.wake.notify_one();
    Ok(HttpResponse::Ok().json(serde_json::json!({"retried": 1})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkQuery {
    status: Option<String>,
    route: Option<String>,
}

async fn retry_many(_: Admin, relay: web::Data<Relay>, q: web::Query<BulkQuery>) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let status = q.status.unwrap_or_else(|| "failed".into());
    check_status(Some(&status))?;
    let n = relay.store.retry_deliveries(&status, q.route.as_deref()).await?;
    relay.wake.notify_one();
    Ok(HttpResponse::Ok().json(serde_json::json!({"retried": n})))
}
