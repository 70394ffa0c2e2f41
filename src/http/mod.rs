//! The two actix-web servers: the public one (`POST /hooks/{source}`, `/healthz`) and the admin
//! one (`/readyz`, `/metrics`, `/api/*`). The public one is given the ingest context and nothing
//! else; the admin one the wired [`Relay`]; both share the [`Edge`].

mod admin;
mod error;
pub mod per_ip;
pub mod public;
mod throttle;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};

pub use error::ApiError;
pub use throttle::AuthThrottle;

use crate::ingest::IngestContext;
use crate::relay::Relay;

/// What the HTTP edge itself keeps, shared by both listeners: wrong admin tokens per address,
/// requests to unknown sources (shown by the admin API), requests in progress per address.
pub struct Edge {
    pub(crate) auth_failures: AuthThrottle,
    pub(crate) unknown_hooks: public::UnknownHooks,
    pub(crate) per_ip: Arc<per_ip::InFlight>,
    /// Says "an address is over its cap" once a minute at most.
    pub(crate) per_ip_log: crate::telemetry::LogLimiter,
}

impl Default for Edge {
    fn default() -> Self {
        Edge {
            auth_failures: AuthThrottle::default(),
            unknown_hooks: public::UnknownHooks::default(),
            per_ip: Arc::default(),
            per_ip_log: crate::telemetry::LogLimiter::every(std::time::Duration::from_secs(60)),
        }
    }
}

/// The public listener faces the internet: a sender gets `header_timeout` for its request head
/// and `body_timeout` for its body, which must also arrive at `min_body_rate` (then 408); at most
/// `max_connections` are open at once and one address may have `max_connections_per_ip` requests
/// in progress (then 429), so slow senders cannot hold every file descriptor.
pub fn public_server(
    ingest: Arc<IngestContext>,
    edge: Arc<Edge>,
    listener: TcpListener,
) -> std::io::Result<actix_web::dev::Server> {
    let server = ingest.runtime.load().config.server.clone();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let (data, edge) = (web::Data::from(ingest), web::Data::from(edge));
    Ok(HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(per_ip::cap))
            .app_data(data.clone())
            .app_data(edge.clone())
            .configure(public::routes)
    })
    .workers(workers)
    .max_connections(server.max_connections.div_ceil(workers).max(1))
    .client_request_timeout(server.header_timeout)
    .client_disconnect_timeout(std::time::Duration::from_secs(1))
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(30)
    .run())
}

/// The admin listener serves the whole [`Relay`] (and what the public one counted, from `edge`).
pub fn admin_server(
    relay: Arc<Relay>,
    edge: Arc<Edge>,
    listener: TcpListener,
) -> std::io::Result<actix_web::dev::Server> {
    let (data, edge) = (web::Data::from(relay), web::Data::from(edge));
    // Nothing the admin listener answers (events, contacts, errors) may be kept by a browser or proxy.
    let no_store = || actix_web::middleware::DefaultHeaders::new().add(("Cache-Control", "no-store"));
    // Bound to loopback, it answers only requests addressed to loopback: a web page whose domain
    // is made to resolve to 127.0.0.1 (DNS rebinding) gets nothing from it.
    let loopback_only = listener.local_addr()?.ip().is_loopback();
    Ok(HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::Condition::new(loopback_only, actix_web::middleware::from_fn(loopback_host)))
            .wrap(no_store())
            .app_data(data.clone())
            .app_data(edge.clone())
            .configure(admin::routes)
    })
    .listen(listener)?
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .run())
}

/// Refuses (421) a request whose `Host` is not a loopback name or address.
async fn loopback_host(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    actix_web::dev::ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    let host = req.headers().get(actix_web::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if !is_loopback_host(host) {
        let shown = crate::telemetry::log_safe(host).into_owned();
        let resp = actix_web::ResponseError::error_response(&ApiError::WrongHost(shown));
        return Ok(req.into_response(resp).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, port)| if port.parse::<u16>().is_ok() { h } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn healthz() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}
