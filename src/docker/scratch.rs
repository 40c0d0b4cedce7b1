//! A throw-away container that runs one script and is removed: the restore
//! check restores an instance's latest backup in one, away from its members.

use std::collections::HashMap;

use anyhow::Context;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, LogsOptions, WaitContainerOptions};
use futures::StreamExt;

use super::exec::ExecOutput;

/// What a scratch container is made of.
pub struct Scratch<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub labels: HashMap<String, String>,
    /// `host:container[:ro]` mounts.
    pub binds: Vec<String>,
    /// Docker network mode: `none` (posix repository, nothing to reach) or
    /// `host` (an S3 repository, reached like the members reach it).
    pub network: &'a str,
    pub memory_mb: u64,
    /// Run by `sh -c` as `user`, with no capabilities, like a member.
    pub script: &'a str,
    /// The image's postgres (`super::member_owner`).
    pub user: super::Owner,
}

/// Runs the script to its end; the container is removed whatever happens.
pub async fn run(docker: &Docker, s: &Scratch<'_>) -> anyhow::Result<ExecOutput> {
    // A leftover of an earlier check that died with its agent.
    super::remove(docker, s.name).await?;
    let mut host = HostConfig {
        // PostgreSQL listens on a socket inside; the network is the repository's.
        network_mode: Some(s.network.to_string()),
        init: Some(true),
        binds: Some(s.binds.clone()),
        memory: Some((s.memory_mb * 1024 * 1024) as i64),
        ..Default::default()
    };
    super::least_privilege(&mut host);
    let body = ContainerCreateBody {
        image: Some(s.image.to_string()),
        labels: Some(s.labels.clone()),
        entrypoint: Some(vec!["sh".into(), "-c".into(), s.script.to_string()]),
        user: Some(s.user.user_spec()),
        host_config: Some(host),
        ..Default::default()
    };
    let opts = CreateContainerOptions { name: Some(s.name.to_string()), platform: String::new() };
    docker.create_container(Some(opts), body).await.with_context(|| format!("docker create {}", s.name))?;
    let res = run_created(docker, s.name).await;
    super::remove(docker, s.name).await?;
    res
}

async fn run_created(docker: &Docker, name: &str) -> anyhow::Result<ExecOutput> {
    super::start(docker, name).await?;
    let mut wait = docker.wait_container(name, Some(WaitContainerOptions { condition: "not-running".into() }));
    let code = match wait.next().await {
        Some(Ok(r)) => r.status_code,
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
        Some(Err(e)) => return Err(e).with_context(|| format!("docker wait {name}")),
        None => -1,
    };
    let mut out = ExecOutput { code, ..Default::default() };
    let opts = LogsOptions { stdout: true, stderr: true, tail: "200".into(), ..Default::default() };
    let mut logs = docker.logs(name, Some(opts));
    while let Some(chunk) = logs.next().await {
        match chunk.with_context(|| format!("docker logs {name}"))? {
            LogOutput::StdOut { message } => out.stdout.push_str(&String::from_utf8_lossy(&message)),
            LogOutput::StdErr { message } => out.stderr.push_str(&String::from_utf8_lossy(&message)),
            _ => {}
        }
    }
    Ok(out)
}
