//! The OSB v2.17 endpoints of `pgcell broker`. Every route checks basic auth,
//! then `X-Broker-API-Version`, then the ids and the body's fields, and only
//! then looks anything up. Handlers start operations and read state; the
//! broker's background driver does the work.

mod bindings;
mod fields;
mod instances;

use std::collections::HashMap;
use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use serde_json::Value;

use super::osb::{OsbError, parse_json, read_body};
use crate::names;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(instances::get_catalog)
        .service(instances::provision)
        .service(instances::fetch_instance)
        .service(instances::update)
        .service(instances::deprovision)
        .service(instances::last_operation)
        .service(bindings::bind)
        .service(bindings::fetch_binding)
        .service(bindings::unbind)
        .service(bindings::binding_last_operation);
}

/// Proof that `X-Broker-API-Version` is 2.13 or newer (412 otherwise).
pub struct ApiVersion;

impl FromRequest for ApiVersion {
    type Error = OsbError;
    type Future = Ready<Result<Self, OsbError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let v = req.headers().get("x-broker-api-version").and_then(|v| v.to_str().ok());
        let ok =
            v.and_then(|v| v.split_once('.')).and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        ready(match ok {
            Some((major, minor)) if major == 2 && minor >= 13 => Ok(ApiVersion),
            _ => Err(OsbError::new(
                StatusCode::PRECONDITION_FAILED,
                format!("X-Broker-API-Version must be 2.13 or newer (got {})", v.unwrap_or("none")),
            )),
        })
    }
}

type Query = web::Query<HashMap<String, String>>;

fn check_id(kind: &str, id: &str) -> Result<(), OsbError> {
    if names::is_safe(id) {
        Ok(())
    } else {
        Err(OsbError::bad_request(format!(
            "{kind} id must be 1-63 letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

/// `accepts_incomplete`: a boolean if present; async operations need it `true` (422 otherwise).
fn require_async(q: &Query) -> Result<(), OsbError> {
    match q.get("accepts_incomplete").map(String::as_str) {
        Some("true") => Ok(()),
        None | Some("false") => Err(OsbError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this service plan requires client support for asynchronous service operations",
        )
        .code("AsyncRequired")),
        Some(v) => Err(OsbError::bad_request(format!("accepts_incomplete must be true or false, not {v:?}"))),
    }
}

fn internal(e: anyhow::Error) -> OsbError {
    OsbError::internal(format!("{e:#}"))
}

fn concurrency() -> OsbError {
    OsbError::new(StatusCode::UNPROCESSABLE_ENTITY, "another operation on this instance is in progress")
        .code("ConcurrencyError")
}

/// Reads the body as JSON and checks its fields against the spec's list.
async fn read_checked(payload: web::Payload, spec: &[fields::Field]) -> Result<Value, OsbError> {
    let body: Value = parse_json(&read_body(payload).await?)?;
    fields::check(&body, spec)?;
    Ok(body)
}

/// A string field already checked by [`fields::check`].
fn str_field(body: &Value, name: &str) -> Option<String> {
    body.get(name).and_then(Value::as_str).map(String::from)
}

/// An optional field already checked, `null` as absent.
fn opt_field(body: &Value, name: &str) -> Option<Value> {
    body.get(name).filter(|v| !v.is_null()).cloned()
}

/// Our plans declare no `maintenance_info`; a request that names a version asks for one we do not have.
fn no_maintenance_info(body: &Value) -> Result<(), OsbError> {
    if body.pointer("/maintenance_info/version").is_some() {
        return Err(OsbError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the plan declares no maintenance_info; fetch the catalog again",
        )
        .code("MaintenanceInfoConflict"));
    }
    Ok(())
}
