//! `ApiError`: every error an HTTP handler can answer with, mapped exhaustively to a status and a
//! JSON body `{"error": "..."}` that never carries internal details (those go to the logs).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("the body exceeds server.max_body ({0} bytes)")]
    PayloadTooLarge(usize),
    /// A webhook the store did not take (the handler has logged why, with its source): the
    /// sender retries.
    #[error("the event was not stored; retry later")]
    NotStored,
    /// The store failed on an admin request: the cause is logged once, when answering.
    #[error("the store is unavailable; retry later")]
    Store(#[source] crate::store::StoreError),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error(
        "an attempt of this delivery is in flight: it was not retried (its result would replace the retry); \
         look again once it settles"
    )]
    InFlight,
    #[error("too many wrong tokens from this address; try again in {}s", .0.as_secs().max(1))]
    TooManyAttempts(std::time::Duration),
    #[error("this admin listener answers only to its own address (Host {0:?} is not it)")]
    WrongHost(String),
    #[error("the admin API is disabled: set server.admin_token")]
    AdminDisabled,
    #[error("{0}")]
    BadRequest(String),
    #[error("the body was not received within server.body_timeout ({})", humantime::format_duration(*.0))]
    BodyTimeout(std::time::Duration),
    #[error("the body arrives slower than server.min_body_rate ({0} bytes a second)")]
    SlowBody(u64),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotStored | ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InFlight => StatusCode::CONFLICT,
            ApiError::WrongHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::AdminDisabled => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout(_) | ApiError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized) {
            resp.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if matches!(self, ApiError::BodyTimeout(_) | ApiError::SlowBody(_)) {
            resp.force_close();
        }
        if let ApiError::Store(e) = self {
            tracing::error!(error = %crate::telemetry::Chain(e), "store error");
        }
        if let ApiError::TooManyAttempts(wait) = self {
            resp.insert_header(("Retry-After", wait.as_secs().max(1).to_string()));
        }
        if matches!(self, ApiError::NotStored | ApiError::Store(_)) {
            resp.insert_header(("Retry-After", "5"));
        }
        resp.json(serde_json::json!({ "error": self.to_string() }))
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Store(e)
    }
}
