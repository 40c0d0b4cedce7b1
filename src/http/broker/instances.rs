//! Catalog and service instances: provision, fetch, update, deprovision, and
//! polling their last operation (which only reads).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, patch, put, web};
use serde_json::json;

use super::fields::{self, optional_query, required_query};
use super::{
    ApiVersion, Query, check_id, concurrency, internal, no_maintenance_info, opt_field, read_checked, require_async,
    str_field,
};
use crate::broker::catalog::{self, parse_parameters, parse_update};
use crate::broker::engine::Broker;
use crate::broker::model::{self, InstanceSpec, OpKind, OpState, Operation};
use crate::http::auth::Authorized;
use crate::http::osb::OsbError;

fn accepted(op: &Operation) -> HttpResponse {
    HttpResponse::Accepted().json(json!({ "operation": op.id }))
}

#[get("/v2/catalog")]
async fn get_catalog(_: Authorized, _: ApiVersion) -> HttpResponse {
    HttpResponse::Ok().json(catalog::catalog())
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
    let body = read_checked(payload, fields::PROVISION).await?;
    require_async(&q)?;
    no_maintenance_info(&body)?;
    let (service_id, plan_id) = (str_field(&body, "service_id"), str_field(&body, "plan_id"));
    let (Some(service_id), Some(plan_id)) = (service_id, plan_id) else {
        return Err(OsbError::bad_request("service_id and plan_id are required"));
    };
    catalog::plan(&service_id, &plan_id)
        .ok_or_else(|| OsbError::bad_request("unknown service_id/plan_id pair; see the catalog"))?;
    let parameters = parse_parameters(opt_field(&body, "parameters").as_ref()).map_err(OsbError::bad_request)?;
    let mut etcd = b.etcd.clone();
    let restore = match &parameters.restore {
        None => None,
        Some(req) => Some(
            crate::backup::resolve_restore(&mut etcd, &id, req)
                .await
                .map_err(internal)?
                .map_err(OsbError::bad_request)?,
        ),
    };
    let spec = InstanceSpec {
        service_id,
        plan_id,
        parameters,
        organization_guid: str_field(&body, "organization_guid"),
        space_guid: str_field(&body, "space_guid"),
    };
    let op = Operation::new(OpKind::Provision, "accepted: placing members");
    if !model::create(&mut etcd, &id, &spec, &op, restore.as_ref()).await.map_err(internal)? {
        let (existing, cur) = model::load(&mut etcd, &id).await.map_err(internal)?;
        return match (existing, cur) {
            (Some(s), Some(cur)) if s == spec && cur.kind == OpKind::Provision && cur.state == OpState::InProgress => {
                Ok(accepted(&cur))
            }
            (Some(s), Some(cur)) if s == spec && cur.kind != OpKind::Deprovision => {
                Ok(HttpResponse::Ok().json(json!({})))
            }
            // No instance, yet not created: the id still names kept backups.
            (None, _) => Err(OsbError::new(
                StatusCode::CONFLICT,
                "this instance id still has backups (a deprovisioned instance's, kept for restores until their \
                 retention ends; `pgcell backups` lists them): provision under another id, with \
                 parameters.restore naming this one to get its data back",
            )),
            _ => Err(OsbError::new(StatusCode::CONFLICT, "an instance with this id exists with other attributes")),
        };
    }
    tracing::info!(instance = %id, plan = %spec.plan_id, "provisioning");
    b.wake.notify_one();
    Ok(accepted(&op))
}

#[get("/v2/service_instances/{id}")]
async fn fetch_instance(
    _: Authorized,
    _: ApiVersion,
    b: web::Data<Broker>,
    id: web::Path<String>,
    q: Query,
) -> Result<HttpResponse, OsbError> {
    check_id("instance", &id)?;
    optional_query(&q, "service_id")?;
    optional_query(&q, "plan_id")?;
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
    let body = read_checked(payload, fields::UPDATE).await?;
    require_async(&q)?;
    no_maintenance_info(&body)?;
    let mut etcd = b.etcd.clone();
    let (Some(spec), Some(cur)) = model::load(&mut etcd, &id).await.map_err(internal)? else {
        return Err(OsbError::new(StatusCode::NOT_FOUND, "no such instance"));
    };
    if str_field(&body, "service_id").as_deref() != Some(spec.service_id.as_str()) {
        return Err(OsbError::bad_request("service_id does not match the instance's"));
    }
    let plan_id = str_field(&body, "plan_id").unwrap_or_else(|| spec.plan_id.clone());
    catalog::plan(&spec.service_id, &plan_id)
        .ok_or_else(|| OsbError::bad_request("unknown plan_id for this service"))?;
    let (parameters, backup) = match opt_field(&body, "parameters") {
        Some(p) => parse_update(&p).map_err(OsbError::bad_request)?,
        None => (None, None),
    };
    if parameters
        .as_ref()
        .is_some_and(|p| p.archive_timeout.is_some() && p.archive_timeout != spec.parameters.archive_timeout)
    {
        return Err(OsbError::bad_request(
            "archive_timeout is set when provisioning; it cannot be changed by an update",
        ));
    }
    if parameters
        .as_ref()
        .is_some_and(|p| p.require_tls.is_some() && p.tls_required() != spec.parameters.tls_required())
    {
        return Err(OsbError::bad_request(
            "require_tls is fixed at provisioning; it cannot be changed by an update (provision a new instance)",
        ));
    }
    // An update keeps what the instance was restored from (it names its origin),
    // its archive timeout and whether it requires TLS.
    let parameters = parameters.map_or_else(
        || spec.parameters.clone(),
        |p| catalog::Parameters {
            restore: spec.parameters.restore.clone(),
            archive_timeout: spec.parameters.archive_timeout,
            require_tls: spec.parameters.require_tls,
            ..p
        },
    );
    let changes = plan_id != spec.plan_id || parameters != spec.parameters;
    if cur.kind == OpKind::Deprovision || (changes && cur.state == OpState::InProgress) {
        return Err(concurrency());
    }
    if let Some(kind) = backup {
        // An action, not a state: asked of the leader's cell at once, answered
        // in `pgcell backups` (and the instance's backup state).
        crate::backup::request(&mut etcd, &id, kind).await.map_err(internal)?;
        tracing::info!(instance = %id, kind, "backup requested");
        if !changes {
            return Ok(HttpResponse::Ok().json(json!({})));
        }
    }
    let next_spec = InstanceSpec { plan_id, parameters, ..spec.clone() };
    if next_spec == spec && cur.state == OpState::Succeeded {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    tracing::info!(instance = %id, plan = %next_spec.plan_id, "updating");
    start(&b, &id, &cur, Operation::new(OpKind::Update, "accepted: updating"), Some(&next_spec)).await
}

/// Begins `op` if `cur` is still the instance's last operation; the driver takes it from there.
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
    b.wake.notify_one();
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
    let service_id = required_query(&q, "service_id")?;
    let plan_id = required_query(&q, "plan_id")?;
    require_async(&q)?;
    let mut etcd = b.etcd.clone();
    let (Some(spec), Some(cur)) = model::load(&mut etcd, &id).await.map_err(internal)? else {
        return Err(OsbError::new(StatusCode::GONE, "no such instance"));
    };
    if service_id != spec.service_id || catalog::plan(service_id, plan_id).is_none() {
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
    optional_query(&q, "service_id")?;
    optional_query(&q, "plan_id")?;
    // The operation asked about is not checked against the last one: the spec
    // allows a 400 but requires none, and some platforms send placeholders.
    optional_query(&q, "operation")?;
    let mut etcd = b.etcd.clone();
    let (_, op) = model::load(&mut etcd, &id).await.map_err(internal)?;
    let Some(op) = op else {
        // Deprovisioned (remembered for a day): the platform forgets it on 410.
        return if model::was_deleted(&mut etcd, &id).await.map_err(internal)? {
            Err(OsbError::new(StatusCode::GONE, "deleted"))
        } else {
            Err(OsbError::new(StatusCode::NOT_FOUND, "no such instance"))
        };
    };
    Ok(HttpResponse::Ok().json(json!({"state": op.state, "description": op.description})))
}
