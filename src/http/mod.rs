//! The two actix-web servers: the public one (`POST /hooks/{source}`, `/healthz`) and the admin
//! one (`/readyz`, `/metrics`, `/api/*`). Handlers are thin: they call `ingest` and the store.

mod admin;
mod error;
mod public;
mod throttle;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};

pub use error::ApiError;
pub use throttle::AuthThrottle;

use crate::app::Relay;

pub fn public_server(relay: Arc<Relay>, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(relay);
    Ok(HttpServer::new(move || App::new().app_data(data.clone()).configure(public::routes))
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(30)
        .run())
}

pub fn admin_server(relay: Arc<Relay>, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(relay);
    Ok(HttpServer::new(move || App::new().app_data(data.clone()).configure(admin::routes))
        .listen(listener)?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(5)
        .run())
}

async fn healthz() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}
