//! The OSB v2.17 endpoints of `pgcell broker`.

use std::collections::HashMap;
use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, delete, dev::Payload, get, patch, put, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Authorized;
use super::osb::{OsbError, parse_json, read_body};
use crate::broker::catalog::{self, parse_parameters};
use crate::broker::engine::Broker;
use crate::broker::model::{self, Binding, InstanceSpec, OpKind, OpState, Operation};
use crate::broker::sql;
use crate::etcd::{keys, store};
use crate::names;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get_catalog)
        .service(provision)
        .service(fetch_instance)
        .service(update)
        .service(deprovision)
        .service(last_operation)
        .service(bind)
        .service(fetch_binding)
        .service(unbind);
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

fn require_async(q: &Query) -> Result<(), OsbError> {
    if q.get("accepts_incomplete").map(String::as_str) == Some("true") {
        Ok(())
    } else {
        Err(OsbError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this service plan requires client support for asynchronous service operations",
        )
        .code("AsyncRequired"))
    }
}

fn internal(e: anyhow::Error) -> OsbError {
    OsbError::internal(format!("{e:#}"))
}

fn concurrency() -> OsbError {
    OsbError::new(StatusCode::UNPROCESSABLE_ENTITY, "another operation on this instance is in progress")
        .code("ConcurrencyError")
}

fn accepted(op: &Operation) -> HttpResponse {
    HttpResponse::Accepted().json(json!({ "operation": op.id }))
}

#[get("/v2/catalog")]
async fn get_catalog(_: Authorized, _: ApiVersion) -> HttpResponse {
    HttpResponse::Ok().json(catalog::catalog())
}

#[derive(Deserialize)]
struct ProvisionBody {
    service_id: String,
    plan_id: String,
    #[serde(default)]
    organization_guid: Option<String>,
    #[serde(default)]
    space_guid: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[allow(dead_code)]
    #[serde(default)]
    context: Option<Value>,
}

#[put("/v2/service_instances/{id}")]
async fn provision(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    id: web::Path<String>,
    q: Query,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    check_id("instance", &id)?;
    let body: ProvisionBody = parse_json(&read_body(payload).await?)?;
    require_async(&q)?;
    catalog::plan(&body.service_id, &body.plan_id)
        .ok_or_else(|| OsbError::bad_request("unknown service_id/plan_id pair; see the catalog"))?;
    let parameters = parse_parameters(body.parameters.as_ref()).map_err(OsbError::bad_request)?;
    let spec = InstanceSpec {
        service_id: body.service_id,
        plan_id: body.plan_id,
        parameters,
        organization_guid: body.organization_guid,
        space_guid: body.space_guid,
    };
    let mut etcd = b.etcd.clone();
    let op = Operation::new(OpKind::Provision, "accepted: placing members");
    if !model::create(&mut etcd, &id, &spec, &op).await.map_err(internal)? {
        let (existing, cur) = model::load(&mut etcd, &id).await.map_err(internal)?;
        return match (existing, cur) {
            (Some(s), Some(cur)) if s == spec && cur.kind == OpKind::Provision && cur.state == OpState::InProgress => {
                Ok(accepted(&cur))
            }
            (Some(s), Some(cur)) if s == spec && cur.kind != OpKind::Deprovision => {
                Ok(HttpResponse::Ok().json(json!({})))
            }
            _ => Err(OsbError::new(StatusCode::CONFLICT, "an instance with this id exists with other attributes")),
        };
    }
    tracing::info!(instance = %id, plan = %spec.plan_id, "provisioning");
    let op = b.drive(&id).await.map_err(internal)?.unwrap_or(op);
    Ok(accepted(&op))
}

#[get("/v2/service_instances/{id}")]
async fn fetch_instance(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    id: web::Path<String>,
) -> Result<HttpResponse, OsbError> {
    check_id("instance", &id)?;
    let (spec, op) = model::load(&mut b.etcd.clone(), &id).await.map_err(internal)?;
    match (spec, op) {
        (Some(_), Some(op)) if op.kind == OpKind::Provision && op.state != OpState::Succeeded => {
            Err(OsbError::new(StatusCode::NOT_FOUND, "the instance is being provisioned"))
        }
        (Some(_), Some(op)) if op.kind == OpKind::Update && op.state == OpState::InProgress => Err(concurrency()),
        (Some(s), _) => {
            let params = serde_json::to_value(&s.parameters).unwrap_or_default();
            Ok(HttpResponse::Ok().json(json!({"service_id": s.service_id, "plan_id": s.plan_id, "parameters": params})))
        }
        _ => Err(OsbError::new(StatusCode::NOT_FOUND, "no such instance")),
    }
}

#[derive(Deserialize)]
struct UpdateBody {
    service_id: String,
    #[serde(default)]
    plan_id: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

#[patch("/v2/service_instances/{id}")]
async fn update(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    id: web::Path<String>,
    q: Query,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    check_id("instance", &id)?;
    let body: UpdateBody = parse_json(&read_body(payload).await?)?;
    require_async(&q)?;
    let mut etcd = b.etcd.clone();
    let (Some(spec), Some(cur)) = model::load(&mut etcd, &id).await.map_err(internal)? else {
        return Err(OsbError::new(StatusCode::NOT_FOUND, "no such instance"));
    };
    if body.service_id != spec.service_id {
        return Err(OsbError::bad_request("service_id does not match the instance's"));
    }
    let plan_id = body.plan_id.unwrap_or_else(|| spec.plan_id.clone());
    catalog::plan(&spec.service_id, &plan_id)
        .ok_or_else(|| OsbError::bad_request("unknown plan_id for this service"))?;
    let parameters = match body.parameters.as_ref() {
        Some(p) => parse_parameters(Some(p)).map_err(OsbError::bad_request)?,
        None => spec.parameters.clone(),
    };
    if cur.state == OpState::InProgress || cur.kind == OpKind::Deprovision {
        return Err(concurrency());
    }
    let next_spec = InstanceSpec { plan_id, parameters, ..spec.clone() };
    if next_spec == spec && cur.state == OpState::Succeeded {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    tracing::info!(instance = %id, plan = %next_spec.plan_id, "updating");
    start(&b, &id, &cur, Operation::new(OpKind::Update, "accepted: updating"), Some(&next_spec)).await
}

/// Begins `op` if `cur` is still the instance's last operation, drives it once, answers 202.
async fn start(
    b: &Broker,
    id: &str,
    cur: &Operation,
    op: Operation,
    spec: Option<&InstanceSpec>,
) -> Result<HttpResponse, OsbError> {
    if !model::begin(&mut b.etcd.clone(), id, cur, &op, spec).await.map_err(internal)? {
        return Err(concurrency());
    }
    let op = b.drive(id).await.map_err(internal)?.unwrap_or(op);
    Ok(accepted(&op))
}

#[delete("/v2/service_instances/{id}")]
async fn deprovision(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    id: web::Path<String>,
    q: Query,
) -> Result<HttpResponse, OsbError> {
    check_id("instance", &id)?;
    let (Some(service_id), Some(plan_id)) = (q.get("service_id"), q.get("plan_id")) else {
        return Err(OsbError::bad_request("service_id and plan_id query parameters are required"));
    };
    require_async(&q)?;
    let mut etcd = b.etcd.clone();
    let (Some(spec), Some(cur)) = model::load(&mut etcd, &id).await.map_err(internal)? else {
        return Err(OsbError::new(StatusCode::GONE, "no such instance"));
    };
    if *service_id != spec.service_id || catalog::plan(service_id, plan_id).is_none() {
        return Err(OsbError::bad_request("service_id/plan_id do not match the instance"));
    }
    if cur.kind == OpKind::Deprovision && cur.state == OpState::InProgress {
        return Ok(accepted(&cur));
    }
    if cur.state == OpState::InProgress {
        return Err(concurrency());
    }
    tracing::info!(instance = %id, "deprovisioning");
    start(&b, &id, &cur, Operation::new(OpKind::Deprovision, "accepted: removing members"), None).await
}

#[get("/v2/service_instances/{id}/last_operation")]
async fn last_operation(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    id: web::Path<String>,
    q: Query,
) -> Result<HttpResponse, OsbError> {
    check_id("instance", &id)?;
    match b.drive(&id).await.map_err(internal)? {
        None => Err(OsbError::new(StatusCode::GONE, "no such instance (deleted)")),
        Some(op) if q.get("operation").is_some_and(|o| *o != op.id) => {
            Err(OsbError::bad_request(format!("unknown operation; the instance's last operation is {}", op.id)))
        }
        Some(op) if op.kind == OpKind::Deprovision && op.state == OpState::Succeeded => {
            Err(OsbError::new(StatusCode::GONE, "deleted"))
        }
        Some(op) => Ok(HttpResponse::Ok().json(json!({"state": op.state, "description": op.description}))),
    }
}

#[derive(Deserialize)]
struct BindBody {
    service_id: String,
    plan_id: String,
    #[serde(default)]
    parameters: Option<Value>,
}

async fn credentials(b: &Broker, id: &str, binding: &Binding) -> Result<Value, OsbError> {
    let (host, port) = b.endpoint(id).await.map_err(internal)?;
    let (u, p, db) = (&binding.username, &binding.password, sql::DATABASE);
    Ok(json!({
        "uri": format!("postgres://{u}:{p}@{host}:{port}/{db}"),
        "jdbcUrl": format!("jdbc:postgresql://{host}:{port}/{db}?user={u}&password={p}"),
        "hostname": host,
        "port": port,
        "name": db,
        "username": u,
        "password": p,
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
    let body: BindBody = parse_json(&read_body(payload).await?)?;
    if body.parameters.as_ref().and_then(Value::as_object).is_some_and(|p| !p.is_empty())
        || body.parameters.as_ref().is_some_and(|p| !p.is_object() && !p.is_null())
    {
        return Err(OsbError::bad_request("bindings take no parameters"));
    }
    let spec = ready_instance(&b, &id).await?;
    if body.service_id != spec.service_id || body.plan_id != spec.plan_id {
        return Err(OsbError::bad_request("service_id/plan_id do not match the instance"));
    }
    let mut etcd = b.etcd.clone();
    let key = keys::binding(&id, &bid);
    if let Some((existing, _)) = store::get_json::<Binding>(&mut etcd, &key).await.map_err(internal)? {
        return Ok(HttpResponse::Ok().json(json!({ "credentials": credentials(&b, &id, &existing).await? })));
    }
    let binding = Binding::new(&bid);
    let (host, port) = b.endpoint(&id).await.map_err(internal)?;
    let secrets = store::ensure_secrets(&mut etcd, &id).await.map_err(internal)?;
    sql::create_binding_role(&host, port, &secrets.superuser, &binding.username, &binding.password)
        .await
        .map_err(internal)?;
    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::create_revision(key.as_str(), etcd_client::CompareOp::Equal, 0)])
        .and_then([etcd_client::TxnOp::put(
            key.as_str(),
            serde_json::to_vec(&binding).map_err(|e| internal(e.into()))?,
            None,
        )]);
    if !etcd.txn(txn).await.map_err(|e| internal(e.into()))?.succeeded() {
        return Err(OsbError::new(StatusCode::CONFLICT, "a binding with this id was created meanwhile"));
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
) -> Result<HttpResponse, OsbError> {
    let (id, bid) = path.into_inner();
    check_id("instance", &id)?;
    check_id("binding", &bid)?;
    match store::get_json::<Binding>(&mut b.etcd.clone(), &keys::binding(&id, &bid)).await.map_err(internal)? {
        Some((binding, _)) => {
            Ok(HttpResponse::Ok().json(json!({ "credentials": credentials(&b, &id, &binding).await? })))
        }
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
    if q.get("service_id").is_none() || q.get("plan_id").is_none() {
        return Err(OsbError::bad_request("service_id and plan_id query parameters are required"));
    }
    let mut etcd = b.etcd.clone();
    let key = keys::binding(&id, &bid);
    let Some((binding, _)) = store::get_json::<Binding>(&mut etcd, &key).await.map_err(internal)? else {
        return Err(OsbError::new(StatusCode::GONE, "no such binding"));
    };
    let spec = ready_instance(&b, &id).await?;
    if q.get("service_id") != Some(&spec.service_id) || q.get("plan_id") != Some(&spec.plan_id) {
        return Err(OsbError::bad_request("service_id/plan_id do not match the instance"));
    }
    let (host, port) = b.endpoint(&id).await.map_err(internal)?;
    let secrets = store::ensure_secrets(&mut etcd, &id).await.map_err(internal)?;
    sql::drop_binding_role(&host, port, &secrets.superuser, &binding.username).await.map_err(internal)?;
    etcd.delete(key, None).await.map_err(|e| internal(e.into()))?;
    tracing::info!(instance = %id, binding = %bid, "unbound: role dropped, its objects kept by the owner");
    Ok(HttpResponse::Ok().json(json!({})))
}
