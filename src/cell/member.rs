//! Doing things to one member on this cell: its host directory, its Patroni
//! configuration and its container.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;

use super::reconcile::{ContainerStep, container_step};
use crate::config::CellConfig;
use crate::docker::{self, ContainerSpec};
use crate::etcd::{Client, store};
use crate::patroni::config::MemberConfig;

/// What every member operation on a cell needs; cheap to clone.
#[derive(Clone)]
pub struct CellDeps {
    pub cfg: std::sync::Arc<CellConfig>,
    pub docker: bollard::Docker,
    pub etcd: Client,
}

impl CellDeps {
    /// The member's host directory: its data and its Patroni configuration.
    pub fn member_dir(&self, member: &str) -> PathBuf {
        self.cfg.data_root.join(member)
    }

    fn labels(&self, p: &store::Placement) -> HashMap<String, String> {
        HashMap::from([
            (docker::LABEL_MANAGED.into(), "true".into()),
            (docker::LABEL_DEPLOYMENT.into(), self.cfg.deployment.clone()),
            (docker::LABEL_CELL.into(), self.cfg.name.clone()),
            (docker::LABEL_INSTANCE.into(), p.instance_id.clone()),
            (docker::LABEL_SCOPE.into(), p.scope.clone()),
            (docker::LABEL_MEMBER.into(), p.member.clone()),
        ])
    }

    /// Renders the member's Patroni configuration into its directory (mode 0600:
    /// it holds the cluster's passwords).
    pub async fn write_patroni_config(&self, p: &store::Placement) -> anyhow::Result<()> {
        let env = super::env::MemberEnv::read(&mut self.etcd.clone(), &self.cfg.name, &p.instance_id).await?;
        let timing = self.patroni_timing().await;
        // The instance may ask for a shorter archive timeout (broker parameter).
        let backup_cfg = crate::config::BackupConfig {
            archive_timeout_secs: env.archive_timeout.unwrap_or(self.cfg.backup.archive_timeout_secs),
            ..self.cfg.backup.clone()
        };
        let backup = Some(&backup_cfg).filter(|b| b.enabled);
        let rendered = MemberConfig {
            placement: p,
            secrets: &env.secrets,
            etcd_hosts: &self.cfg.etcd_endpoints,
            etcd_proxies: self.cfg.etcd_proxies,
            advertise_host: &self.cfg.advertise_host,
            listen_host: self.cfg.listen_host(),
            timing: &timing,
            synchronous_mode: true,
            backup,
            restore: env.restore.as_ref(),
        }
        .render();
        // Everything the container reads or writes belongs to its (non-root)
        // user; the etcd files take the owner of `pgdata`, so they come after it.
        let owner = self.member_owner().await?;
        let dir = self.member_dir(&p.member);
        super::files::prepare_member_dir(&dir, owner)?;
        let mut rendered = super::etcd_files::with_etcd_access(&self.cfg.etcd_access, &dir, rendered)?;
        crate::patroni::ssl::add_tls(&mut rendered, env.require_tls);
        // After `pgdata` exists: the key takes its owner.
        super::certs::ensure_member_certs(self, &p.member).await?;
        let yml = serde_json::to_string_pretty(&rendered)?;
        super::files::write_member_file(&dir.join("patroni.yml"), yml.as_bytes(), owner)?;
        if let Some(b) = backup {
            let conf = crate::pgbackrest::render_conf(b, &p.instance_id, p.pg_port);
            super::files::write_member_file(&dir.join(crate::pgbackrest::CONF_FILE), conf.as_bytes(), owner)?;
            if !b.is_s3() {
                std::fs::create_dir_all(&b.repo_path)
                    .with_context(|| format!("cannot create the backup repository {}", b.repo_path.display()))?;
                // Only the top: what is below it was written by the member's user already.
                super::files::chown_to_member(&b.repo_path, owner)?;
            }
        }
        Ok(())
    }

    /// Patroni's settings for a new member. Failsafe mode only with an image whose
    /// Patroni carries pgcell's patch: unpatched, a leader cut off from etcd alone
    /// keeps its replicas from taking over for as long as the cut lasts.
    async fn patroni_timing(&self) -> crate::config::PatroniTiming {
        let mut t = self.cfg.patroni.clone();
        if t.failsafe_mode {
            let label = docker::image_label(&self.docker, &self.cfg.image, docker::LABEL_FAILSAFE_PATCH).await;
            if !matches!(label, Ok(Some(_))) {
                let error = label.err().map(|e| format!("{e:#}")).unwrap_or_else(|| "no patch label".into());
                tracing::warn!(image = %self.cfg.image, %error,
                    "the member image lacks pgcell's failsafe patch: new clusters get failsafe_mode off");
                t.failsafe_mode = false;
            }
        }
        t
    }

    /// Makes the member's container exist and run; returns what it did.
    pub async fn ensure_running(&self, p: &store::Placement) -> anyhow::Result<ContainerStep> {
        let name = crate::names::container(&p.member);
        let existing =
            docker::list_cell(&self.docker, &self.cfg.name).await?.into_iter().find(|c| c.member == p.member);
        let step = container_step(existing.as_ref());
        if step == ContainerStep::Nothing {
            return Ok(step);
        }
        self.write_patroni_config(p).await?;
        if step == ContainerStep::Create {
            let spec = ContainerSpec {
                name: name.clone(),
                image: self.cfg.image.clone(),
                labels: self.labels(p),
                member_dir: self.member_dir(&p.member).display().to_string(),
                binds: Some(&self.cfg.backup)
                    .filter(|b| b.enabled)
                    .map(crate::pgbackrest::repo_binds)
                    .unwrap_or_default(),
                memory_mb: p.memory_mb,
                user: self.member_owner().await?,
            };
            docker::create(&self.docker, &spec).await?;
        }
        docker::start(&self.docker, &name).await?;
        Ok(step)
    }

    /// Stops and removes the member's container; its data stays.
    pub async fn remove_container(&self, member: &str) -> anyhow::Result<()> {
        let name = crate::names::container(member);
        docker::stop(&self.docker, &name, 30).await?;
        docker::remove(&self.docker, &name).await
    }

    /// After the member's container died: if Docker confirms nothing of it
    /// runs, ends its leader lock so a replica takes over now instead of after
    /// the ttl. Never for a container that might still run (paused, restarting).
    pub async fn end_lock_if_dead(&self, p: &store::Placement) -> anyhow::Result<bool> {
        let name = crate::names::container(&p.member);
        if !docker::is_dead(&self.docker, &name).await? {
            return Ok(false);
        }
        // Lost: the lock names another member already (a leader elected meanwhile).
        Ok(store::end_leader_lock(&mut self.etcd.clone(), &p.scope, &p.member).await?.done())
    }

    /// Stops the member's container (gracefully: Patroni hands over or shuts down cleanly).
    pub async fn stop_container(&self, member: &str) -> anyhow::Result<()> {
        docker::stop(&self.docker, &crate::names::container(member), 30).await
    }

    /// Forgets a removed member: its data, then its Patroni member key. Only
    /// after its container is gone.
    pub async fn purge(&self, p: &store::Placement) -> anyhow::Result<()> {
        self.purge_data(&p.member)?;
        let key = crate::etcd::keys::patroni_member(&p.scope, &p.member);
        self.etcd.clone().delete(key, None).await.context("etcd delete member key")?;
        Ok(())
    }

    /// Deletes the member's data, only below the configured data root.
    fn purge_data(&self, member: &str) -> anyhow::Result<()> {
        anyhow::ensure!(crate::names::is_safe(member), "refusing to purge {member:?}");
        let dir = self.member_dir(member);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", dir.display()))
            }
            _ => Ok(()),
        }
    }
}
