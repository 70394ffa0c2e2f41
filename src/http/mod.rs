//! The two actix-web servers: the public one (`POST /hooks/{source}`, `/healthz`) and the admin
//! one (`/readyz`, `/metrics`, `/api/*`). Handlers are thin: they call `ingest` and the store.

mod admin;
mod error;
pub mod public;
mod throttle;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};

pub use error::ApiError;
pub use throttle::AuthThrottle;

use crate::app::Relay;

/// The public listener faces the internet: a sender gets `header_timeout` for its request head
/// and `body_timeout` for its body (then 408), and at most `max_connections` are open at once, so
/// slow senders cannot hold every file descriptor.
pub fn public_server(relay: Arc<Relay>, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
    let server = relay.runtime().config.server.clone();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let data = web::Data::from(relay);
    Ok(HttpServer::new(move || App::new().app_data(data.clone()).configure(public::routes))
        .workers(workers)
        .max_connections(server.max_connections.div_ceil(workers).max(1))
        .client_request_timeout(server.header_timeout)
        .client_disconnect_timeout(std::time::Duration::from_secs(1))
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(30)
        .run())
}

pub fn admin_server(relay: Arc<Relay>, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(relay);
    // Nothing the admin listener answers (events, contacts, errors) may be kept by a browser or proxy.
    let no_store = || actix_web::middleware::DefaultHeaders::new().add(("Cache-Control", "no-store"));
    Ok(HttpServer::new(move || App::new().wrap(no_store()).app_data(data.clone()).configure(admin::routes))
        .listen(listener)?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(5)
        .run())
}

async fn healthz() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}
