//! HTTP: the per-cell broker API, `/healthz` and `/debug/`. Every endpoint but
//! `/healthz` requires basic auth, checked in constant time.

pub mod auth;
pub mod cell_api;
pub mod osb;

use actix_web::{HttpResponse, get};

/// Liveness, without auth (for load balancers and monit).
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}
