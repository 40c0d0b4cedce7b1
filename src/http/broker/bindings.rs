//! Bindings: one PostgreSQL role each, created and dropped synchronously.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, put, web};
use serde_json::{Value, json};

use super::fields::{self, optional_query, required_query};
use super::{ApiVersion, Query, check_id, concurrency, internal, opt_field, read_checked, str_field};
use crate::broker::engine::Broker;
use crate::broker::model::{self, BindRequest, Binding, InstanceSpec, OpKind, OpState};
use crate::broker::sql;
use crate::etcd::store;
use crate::http::auth::Authorized;
use crate::http::osb::OsbError;

async fn credentials(b: &Broker, id: &str, binding: &Binding) -> Result<Value, OsbError> {
    let (host, port) = b.endpoint(id).await.map_err(internal)?;
    let (u, p, db) = (&binding.username, &binding.password, sql::DATABASE);
    let ca = sql::fleet_ca_pem().ok_or_else(|| internal(anyhow::anyhow!("the broker has not loaded the fleet CA")))?;
    // verify-full: the instance's certificate names the router's host, and
    // the app checks it against `ca_cert` (docs/app-developer-guide.md).
    Ok(json!({
        "uri": format!("postgres://{u}:{p}@{host}:{port}/{db}?sslmode=verify-full"),
        "jdbcUrl": format!("jdbc:postgresql://{host}:{port}/{db}?user={u}&password={p}&ssl=true&sslmode=verify-full"),
        "hostname": host,
        "port": port,
        "name": db,
        "username": u,
        "password": p,
        "sslmode": "verify-full",
        "ca_cert": ca,
    }))
}

/// The instance, ready for bindings: provisioned, no operation in progress.
async fn ready_instance(b: &Broker, id: &str) -> Result<InstanceSpec, OsbError> {
    let (spec, op) = model::load(&mut b.etcd.clone(), id).await.map_err(internal)?;
    let (Some(spec), Some(op)) = (spec, op) else {
        return Err(OsbError::new(StatusCode::NOT_FOUND, "no such instance"));
    };
    if op.state == OpState::InProgress {
        return Err(concurrency());
    }
    if op.kind == OpKind::Provision && op.state == OpState::Failed {
        return Err(OsbError::new(StatusCode::UNPROCESSABLE_ENTITY, "the instance failed to provision; delete it"));
    }
    Ok(spec)
}

/// `{}` and an absent object mean the same: a retry may send either.
fn non_empty(v: Option<Value>) -> Option<Value> {
    v.filter(|v| v.as_object().is_none_or(|o| !o.is_empty()))
}

/// An existing binding asked for again: the same attributes get the same
/// credentials (200), other attributes are a conflict (409).
async fn existing(b: &Broker, id: &str, found: &Binding, asked: &BindRequest) -> Result<HttpResponse, OsbError> {
    // Records from before attributes were kept match any request.
    if found.request != *asked && !found.request.service_id.is_empty() {
        return Err(OsbError::new(StatusCode::CONFLICT, "a binding with this id exists with other attributes"));
    }
    Ok(HttpResponse::Ok().json(json!({ "credentials": credentials(b, id, found).await? })))
}

#[put("/v2/service_instances/{id}/service_bindings/{bid}")]
async fn bind(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    let (id, bid) = path.into_inner();
    check_id("instance", &id)?;
    check_id("binding", &bid)?;
    let body = read_checked(payload, fields::BIND).await?;
    let asked = BindRequest {
        service_id: str_field(&body, "service_id").unwrap_or_default(),
        plan_id: str_field(&body, "plan_id").unwrap_or_default(),
        app_guid: str_field(&body, "app_guid"),
        bind_resource: non_empty(opt_field(&body, "bind_resource")),
        parameters: non_empty(opt_field(&body, "parameters")),
    };
    let spec = ready_instance(&b, &id).await?;
    let mut etcd = b.etcd.clone();
    if let Some(found) = model::load_binding(&mut etcd, &id, &bid).await.map_err(internal)? {
        return existing(&b, &id, &found, &asked).await;
    }
    if asked.parameters.is_some() {
        return Err(OsbError::bad_request("bindings take no parameters"));
    }
    if asked.service_id != spec.service_id || asked.plan_id != spec.plan_id {
        return Err(OsbError::bad_request("service_id/plan_id do not match the instance"));
    }
    let binding = Binding::new(&bid, asked.clone());
    let (host, port) = b.endpoint(&id).await.map_err(internal)?;
    let secrets = store::ensure_secrets(&mut etcd, &id).await.map_err(internal)?;
    sql::create_binding_role(&host, port, &secrets.superuser, &binding.username, &binding.password)
        .await
        .map_err(internal)?;
    if !model::create_binding(&mut etcd, &id, &binding).await.map_err(internal)? {
        // The same id bound meanwhile (a retry racing the first request).
        let found = model::load_binding(&mut etcd, &id, &bid).await.map_err(internal)?;
        return match found {
            Some(found) => existing(&b, &id, &found, &asked).await,
            None => Err(concurrency()),
        };
    }
    tracing::info!(instance = %id, binding = %bid, role = %binding.username, "bound");
    Ok(HttpResponse::Created().json(json!({ "credentials": credentials(&b, &id, &binding).await? })))
}

#[get("/v2/service_instances/{id}/service_bindings/{bid}")]
async fn fetch_binding(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    path: web::Path<(String, String)>,
    q: Query,
) -> Result<HttpResponse, OsbError> {
    let (id, bid) = path.into_inner();
    check_id("instance", &id)?;
    check_id("binding", &bid)?;
    optional_query(&q, "service_id")?;
    optional_query(&q, "plan_id")?;
    match model::load_binding(&mut b.etcd.clone(), &id, &bid).await.map_err(internal)? {
        Some(binding) => {
            let mut body = json!({ "credentials": credentials(&b, &id, &binding).await? });
            if let Some(p) = &binding.request.parameters {
                body["parameters"] = p.clone();
            }
            Ok(HttpResponse::Ok().json(body))
        }
        None => Err(OsbError::new(StatusCode::NOT_FOUND, "no such binding")),
    }
}

/// Bindings are synchronous, so no binding operation is ever in progress: an
/// existing binding's last operation is its creation, which succeeded.
#[get("/v2/service_instances/{id}/service_bindings/{bid}/last_operation")]
async fn binding_last_operation(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    path: web::Path<(String, String)>,
    q: Query,
) -> Result<HttpResponse, OsbError> {
    let (id, bid) = path.into_inner();
    check_id("instance", &id)?;
    check_id("binding", &bid)?;
    optional_query(&q, "service_id")?;
    optional_query(&q, "plan_id")?;
    optional_query(&q, "operation")?;
    match model::load_binding(&mut b.etcd.clone(), &id, &bid).await.map_err(internal)? {
        Some(_) => Ok(HttpResponse::Ok()
            .json(json!({"state": "succeeded", "description": "bound (bindings are created synchronously)"}))),
        None => Err(OsbError::new(StatusCode::NOT_FOUND, "no such binding")),
    }
}

#[delete("/v2/service_instances/{id}/service_bindings/{bid}")]
async fn unbind(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    path: web::Path<(String, String)>,
    q: Query,
) -> Result<HttpResponse, OsbError> {
    let (id, bid) = path.into_inner();
    check_id("instance", &id)?;
    check_id("binding", &bid)?;
    let service_id = required_query(&q, "service_id")?;
    let plan_id = required_query(&q, "plan_id")?;
    let mut etcd = b.etcd.clone();
    let Some(binding) = model::load_binding(&mut etcd, &id, &bid).await.map_err(internal)? else {
        return Err(OsbError::new(StatusCode::GONE, "no such binding"));
    };
    let spec = ready_instance(&b, &id).await?;
    if service_id != spec.service_id || plan_id != spec.plan_id {
        return Err(OsbError::bad_request("service_id/plan_id do not match the instance"));
    }
    let (host, port) = b.endpoint(&id).await.map_err(internal)?;
    let secrets = store::ensure_secrets(&mut etcd, &id).await.map_err(internal)?;
    sql::drop_binding_role(&host, port, &secrets.superuser, &binding.username).await.map_err(internal)?;
    model::delete_binding(&mut etcd, &id, &bid).await.map_err(internal)?;
    tracing::info!(instance = %id, binding = %bid, "unbound: role dropped, its objects kept by the owner");
    Ok(HttpResponse::Ok().json(json!({})))
}
