//! HTTP: the per-cell broker API, `/healthz` and `/debug/`. Every endpoint but
//! `/healthz` requires basic auth, checked in constant time; HTTPS when a
//! certificate is configured ([`tls`]).

pub mod auth;
pub mod broker;
pub mod cell_api;
pub mod osb;
pub mod tls;

use actix_web::{HttpResponse, get};

use osb::OsbError;

/// Liveness, without auth (for load balancers and monit).
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Unknown paths and methods get an OSB error body too.
pub async fn not_found() -> Result<HttpResponse, OsbError> {
    Err(OsbError::new(actix_web::http::StatusCode::NOT_FOUND, "no such endpoint"))
}
