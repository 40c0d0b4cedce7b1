//! The seed's per-cell broker API: `PUT /v2/service_instances/<id>` on a cell
//! creates that cell's member of cluster `cf-<id>`; the same PUT on another
//! cell adds a member there; `DELETE` removes this cell's member and its data.

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, post, put, web};
use serde::Deserialize;
use serde_json::json;

use super::auth::Authorized;
use super::osb::{OsbError, parse_json, read_body};
use crate::actors::cell::{CellActor, EnsureMember, FailChild, GetActors, GetMemberRoles, PurgeMember};
use crate::actors::{ActorKind, ActorState};
use crate::cell::env::MemberEnv;
use crate::cell::member::CellDeps;
use crate::etcd::store::{self, CellPorts, PlaceError, Placed, Placement};
use crate::etcd::{Client, keys};
use crate::names;

/// The seed's service and plan: one member of the cluster on the cell asked.
pub use crate::broker::catalog::{SEED_PLAN_ID, SEED_SERVICE_ID};

pub struct CellApi {
    pub cell: Addr<CellActor>,
    pub deps: CellDeps,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(catalog)
        .service(provision)
        .service(deprovision)
        .service(debug_actors)
        .service(fail_actor)
        .service(metrics);
}

#[get("/v2/catalog")]
async fn catalog(_: Authorized) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "services": [{
            "id": SEED_SERVICE_ID,
            "name": "pgcell-postgresql",
            "description": "PostgreSQL 15 kept highly available by Patroni: one member on this cell",
            "bindable": true,
            "plan_updateable": false,
            "tags": ["postgresql", "patroni"],
            "plans": [{
                "id": SEED_PLAN_ID,
                "name": "member",
                "description": "A member of cluster cf-<instance id> on this cell; PUT on other cells adds replicas",
                "free": true,
            }],
        }],
    }))
}

#[derive(Deserialize)]
struct ProvisionBody {
    service_id: String,
    plan_id: String,
    #[allow(dead_code)]
    #[serde(default)]
    organization_guid: Option<String>,
    #[allow(dead_code)]
    #[serde(default)]
    space_guid: Option<String>,
}

fn check_id(id: &str) -> Result<(), OsbError> {
    if names::is_safe(id) {
        Ok(())
    } else {
        Err(OsbError::bad_request(
            "instance id must be 1-63 letters, digits, '-' or '_', starting with a letter or digit",
        ))
    }
}

fn check_ids(service_id: Option<&str>, plan_id: Option<&str>) -> Result<(), OsbError> {
    if service_id.is_some_and(|s| s != SEED_SERVICE_ID) {
        return Err(OsbError::bad_request(format!("unknown service_id; this cell offers {SEED_SERVICE_ID}")));
    }
    if plan_id.is_some_and(|p| p != SEED_PLAN_ID) {
        return Err(OsbError::bad_request(format!("unknown plan_id; this cell offers {SEED_PLAN_ID}")));
    }
    Ok(())
}

#[put("/v2/service_instances/{id}")]
async fn provision(
    _: Authorized,
    api: web::Data<CellApi>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    check_id(&id)?;
    let body: ProvisionBody = parse_json(&read_body(payload).await?)?;
    check_ids(Some(&body.service_id), Some(&body.plan_id))?;

    let cfg = &api.deps.cfg;
    let mut etcd: Client = api.deps.etcd.clone();
    let want = Placement {
        instance_id: id.clone(),
        scope: names::scope(&id),
        member: names::member(&id, &cfg.name),
        cell: cfg.name.clone(),
        slot: 0,
        pg_port: 0,
        api_port: 0,
        service_id: body.service_id,
        plan_id: body.plan_id,
        memory_mb: cfg.memory_mb,
        purge: false,
    };
    let ports = CellPorts::new(&cfg.name, cfg.ports().map_err(OsbError::internal)?, cfg.capacity);
    // A seed instance's passwords are shared by its cells under `seed/<id>/`;
    // members of a broker's instance are the broker's to place.
    let seed = etcd.get(keys::seed_secrets(&id), None).await.map_err(OsbError::internal)?.count() > 0;
    let elsewhere = store::instance_cells(&mut etcd, &id).await.map_err(OsbError::internal)?;
    if !seed && !elsewhere.is_empty() {
        return Err(OsbError::new(
            StatusCode::CONFLICT,
            format!(
                "instance {id} is a broker's instance (members on {}); change it through the broker",
                elsewhere.join(", ")
            ),
        ));
    }
    let secrets = store::ensure_secrets_at(&mut etcd, &keys::seed_secrets(&id))
        .await
        .map_err(|e| OsbError::internal(format!("{e:#}")))?;
    let env = MemberEnv::seed(secrets).to_bytes().map_err(OsbError::internal)?;
    let placed = match store::place_member(&mut etcd, &ports, want.clone(), &env).await {
        Ok(p) => p,
        Err(PlaceError::NoCapacity(cell)) => {
            return Err(OsbError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("cell {cell} is full: no member slot left; use another cell"),
            ));
        }
        Err(PlaceError::Etcd(e)) => return Err(OsbError::internal(format!("{e:#}"))),
    };
    let (placement, status) = match placed {
        Placed::Exists(p) if p.service_id == want.service_id && p.plan_id == want.plan_id => (p, StatusCode::OK),
        Placed::Exists(_) => {
            return Err(OsbError::new(StatusCode::CONFLICT, "instance exists here with another service or plan"));
        }
        Placed::Created(p) => (p, StatusCode::CREATED),
    };
    let router_range = crate::config::parse_port_range(&cfg.router_port_range).map_err(OsbError::internal)?;
    let router_port = store::ensure_router_port_at(&mut etcd, &keys::seed_router_port(&id), &id, router_range)
        .await
        .map_err(|e| OsbError::internal(format!("{e:#}")))?;
    tracing::info!(instance = %id, member = %placement.member, pg_port = placement.pg_port, router_port, "member placed");
    api.cell.send(EnsureMember(placement)).await.map_err(OsbError::internal)?.map_err(OsbError::internal)?;
    Ok(HttpResponse::build(status).json(json!({})))
}

#[derive(Deserialize)]
struct DeprovisionQuery {
    service_id: Option<String>,
    plan_id: Option<String>,
}

#[delete("/v2/service_instances/{id}")]
async fn deprovision(
    _: Authorized,
    api: web::Data<CellApi>,
    id: web::Path<String>,
    query: web::Query<DeprovisionQuery>,
) -> Result<HttpResponse, OsbError> {
    check_id(&id)?;
    check_ids(query.service_id.as_deref(), query.plan_id.as_deref())?;
    let cfg = &api.deps.cfg;
    let mut etcd = api.deps.etcd.clone();
    let key = keys::placement(&cfg.name, &id);
    let Some((placement, rev)) = store::get_json::<Placement>(&mut etcd, &key).await.map_err(OsbError::internal)?
    else {
        return Err(OsbError::new(StatusCode::GONE, format!("instance {id} has no member on this cell")));
    };
    // One intent path, as the broker's: mark the member for purge, let the cell
    // remove container, data and keys (again after a crash), wait for it.
    let already = placement.purge;
    let marked = Placement { purge: true, ..placement };
    if !already && !store::update_placement(&mut etcd, &marked, rev).await.map_err(OsbError::internal)?.done() {
        return Err(OsbError::new(StatusCode::UNPROCESSABLE_ENTITY, "instance changed meanwhile; try again")
            .code("ConcurrencyError"));
    }
    api.cell.do_send(PurgeMember(marked.clone()));
    let deadline = std::time::Instant::now() + PURGE_WAIT;
    while store::get_json::<Placement>(&mut etcd, &key).await.map_err(OsbError::internal)?.is_some() {
        if std::time::Instant::now() > deadline {
            return Err(OsbError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("member {} is still being removed; it goes on; DELETE again to check", marked.member),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tracing::info!(instance = %id, member = %marked.member, "member removed with its data");
    Ok(HttpResponse::Ok().json(json!({})))
}

/// How long a per-cell DELETE waits for the cell to remove its member.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[get("/debug/actors")]
async fn debug_actors(_: Authorized, api: web::Data<CellApi>) -> Result<HttpResponse, OsbError> {
    let actors = api.cell.send(GetActors).await.map_err(OsbError::internal)?;
    Ok(HttpResponse::Ok().json(actors))
}

/// Fault injection: the named actor panics, and its supervisor starts it again.
/// Exists only with `failpoints` on; otherwise it is an unknown endpoint.
#[post("/debug/actors/{kind}/{id}/fail")]
async fn fail_actor(
    _: Authorized,
    api: web::Data<CellApi>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OsbError> {
    if !api.deps.cfg.failpoints {
        return super::not_found().await;
    }
    let (kind, id) = path.into_inner();
    let kind = ActorKind::parse(&kind).ok_or_else(|| {
        OsbError::new(StatusCode::NOT_FOUND, format!("no actor kind {kind:?}: cell, container or cluster"))
    })?;
    api.cell
        .send(FailChild { kind, id })
        .await
        .map_err(OsbError::internal)?
        .map_err(|e| OsbError::new(StatusCode::NOT_FOUND, e))?;
    Ok(HttpResponse::Accepted().json(json!({})))
}

#[get("/metrics")]
async fn metrics(_: Authorized, api: web::Data<CellApi>) -> Result<HttpResponse, OsbError> {
    use crate::metrics::{counter_samples, render};
    let actors = api.cell.send(GetActors).await.map_err(OsbError::internal)?;
    let roles = api.cell.send(GetMemberRoles).await.map_err(OsbError::internal)?;
    let (mut samples, mut kinds) = counter_samples();
    let mut by_state = std::collections::BTreeMap::<ActorState, u64>::new();
    for a in actors.iter().filter(|a| a.kind == ActorKind::Container) {
        *by_state.entry(a.state).or_default() += 1;
    }
    for (state, n) in by_state {
        let state = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        samples.push(("pgcell_cell_containers", vec![("state", state)], n));
    }
    let mut by_role = std::collections::BTreeMap::<String, u64>::new();
    for (_, role) in roles {
        *by_role.entry(role).or_default() += 1;
    }
    for (role, n) in by_role {
        samples.push(("pgcell_cell_clusters", vec![("role", role)], n));
    }
    kinds.push(("pgcell_cell_containers", "gauge"));
    kinds.push(("pgcell_cell_clusters", "gauge"));
    let (health, health_kinds) = crate::metrics::HEALTH.samples(std::time::Instant::now());
    samples.extend(health);
    kinds.extend(health_kinds);
    // Backups of the instances this cell publishes for (it holds, or held last, their leader).
    let cell = &api.deps.cfg.name;
    let states: Vec<crate::backup::state::BackupState> =
        crate::etcd::store::list_json(&mut api.deps.etcd.clone(), &crate::etcd::keys::backups())
            .await
            .map_err(OsbError::internal)?;
    let ours: Vec<_> = states.into_iter().filter(|s| s.member == crate::names::member(&s.instance, cell)).collect();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let (b_samples, b_kinds) = crate::backup::state::metric_samples(&ours, now);
    samples.extend(b_samples);
    kinds.extend(b_kinds);
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(render(&samples, &kinds)))
}
