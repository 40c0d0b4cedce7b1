//! The Docker Engine, through bollard: member containers, found again by their labels.

use std::collections::HashMap;

use anyhow::Context;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, EventMessage, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures::Stream;

pub mod exec;
pub mod scratch;
pub mod user;

pub use user::{Owner, member_owner};

pub const LABEL_MANAGED: &str = "org.pgcell.managed";
pub const LABEL_DEPLOYMENT: &str = "org.pgcell.deployment";
pub const LABEL_CELL: &str = "org.pgcell.cell";
pub const LABEL_INSTANCE: &str = "org.pgcell.instance";
pub const LABEL_SCOPE: &str = "org.pgcell.scope";
pub const LABEL_MEMBER: &str = "org.pgcell.member";
/// On the member image when its Patroni carries pgcell's failsafe patch
/// (deploy/image/patch-patroni.py): failsafe mode is safe only then.
pub const LABEL_FAILSAFE_PATCH: &str = "org.pgcell.patroni-failsafe";

/// Connects to the local engine and negotiates the API version: bollard speaks
/// a newer API than the engines found on cells.
pub async fn connect() -> anyhow::Result<Docker> {
    let docker = Docker::connect_with_local_defaults().context("cannot connect to the Docker Engine")?;
    docker
        .negotiate_version()
        .await
        .context("the Docker Engine does not answer (is dockerd running? is /var/run/docker.sock readable?)")
}

/// A member container as Docker reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberContainer {
    pub id: String,
    pub name: String,
    pub member: String,
    pub instance: String,
    pub running: bool,
}

#[cfg(test)]
impl MemberContainer {
    /// Instance `id`'s member container on cell `cell`: for tests.
    pub fn sample(id: &str, cell: &str, running: bool) -> Self {
        let member = crate::names::member(id, cell);
        Self { id: "x".into(), name: crate::names::container(&member), member, instance: id.into(), running }
    }
}

/// What a member container is made of.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// Host directory mounted at the Patroni mount point.
    pub member_dir: String,
    /// More `host:container[:ro]` mounts (the backup repository, its CA file).
    pub binds: Vec<String>,
    pub memory_mb: u64,
    /// The image's postgres: the container never runs as root.
    pub user: Owner,
}

/// No capability at all (PostgreSQL, Patroni and pgBackRest need none as
/// their own user) and no way to gain one (setuid binaries stay inert).
pub fn least_privilege(host: &mut HostConfig) {
    host.cap_drop = Some(vec!["ALL".into()]);
    host.security_opt = Some(vec!["no-new-privileges".into()]);
}

fn label_filter(cell: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{LABEL_CELL}={cell}"), format!("{LABEL_MANAGED}=true")])])
}

pub fn is_not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

/// Every member container of a cell, running or not.
pub async fn list_cell(docker: &Docker, cell: &str) -> anyhow::Result<Vec<MemberContainer>> {
    let opts = ListContainersOptions { all: true, filters: Some(label_filter(cell)), ..Default::default() };
    let list = docker.list_containers(Some(opts)).await.context("docker list containers")?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            Some(MemberContainer {
                id: c.id?,
                name: c.names?.first()?.trim_start_matches('/').to_string(),
                member: labels.get(LABEL_MEMBER)?.clone(),
                instance: labels.get(LABEL_INSTANCE)?.clone(),
                running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
            })
        })
        .collect())
}

pub async fn create(docker: &Docker, spec: &ContainerSpec) -> anyhow::Result<()> {
    let mut host_config = HostConfig {
        // Host networking: members listen on their allocated host ports, with
        // no NAT on the data path (docs/decisions.md).
        network_mode: Some("host".into()),
        // An init as PID 1 reaps orphans: Patroni detaches the postmaster, and
        // without a reaper a stopped postmaster stays a zombie and Patroni waits
        // on it forever (seen on every demotion).
        init: Some(true),
        binds: Some(
            std::iter::once(format!("{}:{}", spec.member_dir, crate::patroni::config::MOUNT))
                .chain(spec.binds.iter().cloned())
                .collect(),
        ),
        memory: Some((spec.memory_mb * 1024 * 1024) as i64),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([("max-size".into(), "10m".into()), ("max-file".into(), "3".into())])),
        }),
        ..Default::default()
    };
    least_privilege(&mut host_config);
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(spec.user.user_spec()),
        labels: Some(spec.labels.clone()),
        host_config: Some(host_config),
        stop_timeout: Some(30),
        ..Default::default()
    };
    let opts = CreateContainerOptions { name: Some(spec.name.clone()), platform: String::new() };
    docker
        .create_container(Some(opts), body)
        .await
        .with_context(|| format!("docker create {} (image {})", spec.name, spec.image))?;
    Ok(())
}

/// A label of a local image (`None` when the image has no such label).
pub async fn image_label(docker: &Docker, image: &str, label: &str) -> anyhow::Result<Option<String>> {
    let inspect = docker.inspect_image(image).await.with_context(|| format!("inspect image {image}"))?;
    Ok(inspect.config.and_then(|c| c.labels).and_then(|mut l| l.remove(label)))
}

pub async fn start(docker: &Docker, name: &str) -> anyhow::Result<()> {
    docker.start_container(name, None).await.with_context(|| format!("docker start {name}"))
}

/// Stops gracefully (Patroni shuts PostgreSQL down cleanly), waiting up to `timeout_secs`.
pub async fn stop(docker: &Docker, name: &str, timeout_secs: i32) -> anyhow::Result<()> {
    let opts = StopContainerOptions { t: Some(timeout_secs), signal: None };
    match docker.stop_container(name, Some(opts)).await {
        Err(e) if !is_not_found(&e) => Err(e).with_context(|| format!("docker stop {name}")),
        _ => Ok(()),
    }
}

/// Removes a container, stopped or not; a container already gone, or being
/// removed already (409 "removal ... already in progress"), is fine.
pub async fn remove(docker: &Docker, name: &str) -> anyhow::Result<()> {
    let opts = RemoveContainerOptions { force: true, v: true, link: false };
    match docker.remove_container(name, Some(opts)).await {
        Err(e) if !is_not_found(&e) && !is_removal_in_progress(&e) => {
            Err(e).with_context(|| format!("docker rm {name}"))
        }
        _ => Ok(()),
    }
}

fn is_removal_in_progress(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 409, message } if message.contains("already in progress"))
}

/// Start and die events of this cell's member containers.
pub fn events(docker: &Docker, cell: &str) -> impl Stream<Item = Result<EventMessage, DockerError>> + use<> {
    let mut filters = label_filter(cell);
    filters.insert("type".into(), vec!["container".into()]);
    filters.insert("event".into(), vec!["start".into(), "die".into(), "destroy".into()]);
    docker.events(Some(EventsOptions { filters: Some(filters), ..Default::default() }))
}

/// The member label and action of a container event.
pub fn event_member(ev: &EventMessage) -> Option<(String, String)> {
    let actor = ev.actor.as_ref()?;
    let member = actor.attributes.as_ref()?.get(LABEL_MEMBER)?.clone();
    Some((member, ev.action.clone()?))
}

/// Whether nothing of the container runs any more: not running, not paused,
/// no process. When a container's first process exits the kernel kills every
/// process of its PID namespace, so PostgreSQL in it is dead too.
pub async fn is_dead(docker: &Docker, name: &str) -> anyhow::Result<bool> {
    match docker.inspect_container(name, None).await {
        Ok(c) => {
            let s = c.state.unwrap_or_default();
            Ok(s.running != Some(true)
                && s.paused != Some(true)
                && s.restarting != Some(true)
                && s.pid.unwrap_or(0) == 0)
        }
        Err(e) if is_not_found(&e) => Ok(true),
        Err(e) => Err(e).with_context(|| format!("docker inspect {name}")),
    }
}
