//! The public listener: `POST /hooks/{source}` (and `/hooks/{source}/{token}` for sources with a
//! `path_token`), `GET /healthz`. Every body that is taken in — stored, duplicate or quarantined —
//! gets the same 200 answer, so the sender learns nothing about decryption.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::ApiError;
use crate::app::Relay;
use crate::ingest::{self, IngestError};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(super::healthz))
        .route("/hooks/{source}", web::post().to(hook))
        .route("/hooks/{source}/{token}", web::post().to(hook_with_token))
        .route("/hooks/{source}", web::route().to(not_post))
        .route("/hooks/{source}/{token}", web::route().to(not_post));
}

/// Any other method on a hook URL (someone opening it in a browser): 405 with what to do instead.
async fn not_post() -> HttpResponse {
    HttpResponse::MethodNotAllowed().insert_header(("Allow", "POST")).json(serde_json::json!({
        "error": "this is a webhook URL: Learnybox sends events here with POST. To test it, run \
                  `lbx-relay send-test` (see the README's go-live step)",
    }))
}

async fn hook(
    relay: web::Data<Relay>,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive(&relay, &path.into_inner(), None, &req, body).await
}

async fn hook_with_token(
    relay: web::Data<Relay>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (source, token) = path.into_inner();
    receive(&relay, &source, Some(&token), &req, body).await
}

async fn receive(
    relay: &Relay,
    source: &str,
    token: Option<&str>,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let rt = relay.runtime();
    let Some(src) = rt.config.source(source) else { return Err(ApiError::NotFound) };
    if !src.token_matches(token) {
        return Err(ApiError::NotFound);
    }
    let (limit, body_timeout) = (rt.config.server.max_body, rt.config.server.body_timeout);
    drop(rt);
    let body = tokio::time::timeout(body_timeout, read_limited(req, body, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout(body_timeout))??;
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    match ingest::accept(&relay.ingest, source, &body, &headers).await {
        Ok(_) => Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))),
        Err(IngestError::UnknownSource(_)) => Err(ApiError::NotFound),
        Err(IngestError::Unavailable(e)) => {
            tracing::error!(source, error = %crate::telemetry::Chain(&e), "event not stored; answered 503 so the sender retries");
            Err(ApiError::Unavailable)
        }
    }
}

/// Reads the body, refusing it with 413 as soon as it is known to exceed `limit`.
async fn read_limited(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
