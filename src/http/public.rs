//! The public listener: `POST /hooks/{source}` (and `/hooks/{source}/{token}` for sources with a
//! `path_token`), `GET /healthz`. Every body that is taken in — stored, duplicate or quarantined —
//! gets the same 200 answer, so the sender learns nothing about decryption.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::ApiError;
use super::Edge;
use crate::ingest::{self, IngestContext, IngestError};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(super::healthz))
        .route("/hooks/{source}", web::post().to(hook))
        // A trailing slash is the same endpoint (a URL pasted with one must not lose events).
        .route("/hooks/{source}/", web::post().to(hook))
        .route("/hooks/{source}/{token}", web::post().to(hook_with_token))
        .route("/hooks/{source}/{token}/", web::post().to(hook_with_token))
        .route("/hooks/{source}", web::route().to(not_post))
        .route("/hooks/{source}/", web::route().to(not_post))
        .route("/hooks/{source}/{token}", web::route().to(not_post));
}

/// Requests to a source that is not configured: counted (`lbx_hooks_unknown_total`, no per-path
/// label), logged at warn at most once a minute with the closest configured source, and shown by
/// `/api/stats` (and so the dashboard), since Learnybox gives up after four retries and may turn
/// the webhook off.
pub struct UnknownHooks {
    count: std::sync::atomic::AtomicU64,
    last: std::sync::Mutex<Option<UnknownHook>>,
    log: crate::telemetry::LogLimiter,
}

/// The latest request to an unknown source.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnknownHook {
    /// The source named in the URL, cut and escaped like any logged value.
    pub source: String,
    pub at: String,
    pub did_you_mean: Option<String>,
}

impl Default for UnknownHooks {
    fn default() -> Self {
        UnknownHooks {
            count: Default::default(),
            last: Default::default(),
            log: crate::telemetry::LogLimiter::every(std::time::Duration::from_secs(60)),
        }
    }
}

impl UnknownHooks {
    fn record(&self, source: &str, configured: &[&str], now_ms: i64) {
        use std::sync::atomic::Ordering;
        self.count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::HOOKS_UNKNOWN).increment(1);
        let did_you_mean = crate::suggest::closest(source, configured.iter().copied()).map(str::to_string);
        let shown = crate::telemetry::log_safe(source).into_owned();
        if self.log.should_log(now_ms) {
            tracing::warn!(
                source = %shown,
                did_you_mean = %did_you_mean.as_deref().unwrap_or("-"),
                configured = %configured.join(", "),
                "POST /hooks/{{source}} for a source that is not configured: answered 404, nothing stored \
                 (Learnybox retries four times, then gives up); check the webhook URL in Learnybox"
            );
        }
        let last = UnknownHook { source: shown, at: crate::event::rfc3339(now_ms), did_you_mean };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(last);
    }

    /// How many requests named an unknown source since start, and the latest.
    pub fn summary(&self) -> (u64, Option<UnknownHook>) {
        let n = self.count.load(std::sync::atomic::Ordering::Relaxed);
        (n, self.last.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Any other method on a hook URL (someone opening it in a browser): 405 with what to do instead.
async fn not_post() -> HttpResponse {
    HttpResponse::MethodNotAllowed().insert_header(("Allow", "POST")).json(serde_json::json!({
        "error": "this is a webhook URL: Learnybox sends events here with POST. To test it, run \
                  `lbx-relay send-test` (see the README's go-live step)",
    }))
}

async fn hook(
    ingest: web::Data<IngestContext>,
    edge: web::Data<Edge>,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive(&ingest, &edge, &path.into_inner(), None, &req, body).await
}

async fn hook_with_token(
    ingest: web::Data<IngestContext>,
    edge: web::Data<Edge>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (source, token) = path.into_inner();
    receive(&ingest, &edge, &source, Some(&token), &req, body).await
}

async fn receive(
    ingest: &IngestContext,
    edge: &Edge,
    source: &str,
    token: Option<&str>,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let rt = ingest.runtime.load();
    let Some(src) = rt.config.source(source) else {
        let configured: Vec<&str> = rt.config.sources.keys().map(String::as_str).collect();
        edge.unknown_hooks.record(source, &configured, ingest.clock.now_ms());
        return Err(ApiError::NotFound);
    };
    if !src.token_matches(token) {
        return Err(ApiError::NotFound);
    }
    let (limit, body_timeout, min_rate) =
        (rt.config.server.max_body, rt.config.server.body_timeout, rt.config.server.min_body_rate);
    drop(rt);
    let body = tokio::time::timeout(body_timeout, read_limited(req, body, limit, min_rate))
        .await
        .map_err(|_| ApiError::BodyTimeout(body_timeout))??;
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    match ingest::accept(ingest, source, &body, &headers).await {
        Ok(_) => Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))),
        Err(IngestError::UnknownSource(_)) => Err(ApiError::NotFound),
        Err(IngestError::Unavailable(e)) => {
            tracing::error!(source, error = %crate::telemetry::Chain(&e), "event not stored; answered 503 so the sender retries");
            Err(ApiError::NotStored)
        }
    }
}

/// Reads the body, refusing it with 413 as soon as it is known to exceed `limit`, and with 408 when,
/// after its first second, it arrives slower than `min_rate` bytes a second on average (a trickle
/// that would hold the connection until `body_timeout`).
async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    min_rate: u64,
) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(limit));
    let started = tokio::time::Instant::now();
    loop {
        // The next chunk must come before the average would fall under `min_rate`.
        let next = payload.next();
        let chunk = if min_rate == 0 {
            next.await
        } else {
            let due = std::time::Duration::from_secs(1)
                + std::time::Duration::from_secs_f64((body.len() as f64 + 1.0) / min_rate as f64);
            let deadline = started + due;
            match tokio::time::timeout_at(deadline, next).await {
                Ok(c) => c,
                Err(_) => return Err(ApiError::SlowBody(min_rate)),
            }
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
