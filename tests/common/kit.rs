//! What tests and examples both need to run a fleet and look at it, in one
//! place: `tests/common` re-exports it and the examples include this file
//! (`#[path]`). Plain std, no panics: callers decide what a failure means.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The seed's provision body (service and plan of the 2015 walkthrough).
pub fn seed_body() -> String {
    format!(
        r#"{{"service_id":"{}","plan_id":"{}","organization_guid":"org","space_guid":"space"}}"#,
        pgcell::broker::catalog::SEED_SERVICE_ID,
        pgcell::broker::catalog::SEED_PLAN_ID
    )
}

/// `psql -tA` with a URL, as a user runs it; `Err` carries psql's stderr.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `docker ps -a` with a filter, one line per container in `format`.
pub fn docker_ps(filter: &str, format: &str) -> Vec<String> {
    Command::new("docker")
        .args(["ps", "-a", "--filter", filter, "--format", format])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect())
        .unwrap_or_default()
}

/// What a container wrote, stdout and stderr (Patroni and PostgreSQL log to
/// both); `args` go before the name (`["-t", "--since", "…"]`).
pub fn docker_logs(container: &str, args: &[&str]) -> String {
    let out = Command::new("docker").arg("logs").args(args).arg(container).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Kills the running containers of a cell (a lost cell: its containers die with it).
pub fn docker_kill_cell(cell: &str) {
    let ids: Vec<String> = docker_ps(&format!("label=org.pgcell.cell={cell}"), "{{.ID}} {{.State}}")
        .into_iter()
        .filter(|l| l.ends_with(" running"))
        .filter_map(|l| l.split(' ').next().map(String::from))
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker").arg("kill").args(&ids).output();
    }
}

/// Removes every container of a deployment (by its label), with their volumes.
pub fn docker_remove_deployment(id: &str) {
    let ids = docker_ps(&format!("label=org.pgcell.deployment={id}"), "{{.ID}}");
    if !ids.is_empty() {
        let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
    }
}

/// How a cell agent of a local fleet is started: its `PGCELL_*` environment.
pub struct CellEnv<'a> {
    pub name: &'a str,
    pub deployment: &'a str,
    pub api_port: u16,
    pub ports: (u16, u16),
    pub router_ports: (u16, u16),
    pub data_root: &'a Path,
    /// The deployment's backup repository, shared by its cells: its own, so a
    /// new instance never finds the stanza of an earlier deployment's instance
    /// of the same id (its replicas would restore another cluster's data).
    pub backup_repo: &'a Path,
    pub etcd: &'a str,
}

impl CellEnv<'_> {
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGCELL_CELL_NAME", self.name.to_string()),
            ("PGCELL_DEPLOYMENT", self.deployment.to_string()),
            ("PGCELL_API_LISTEN", format!("127.0.0.1:{}", self.api_port)),
            ("PGCELL_ADVERTISE_HOST", "127.0.0.1".to_string()),
            ("PGCELL_PORT_RANGE", format!("{}-{}", self.ports.0, self.ports.1)),
            ("PGCELL_ROUTER_PORT_RANGE", format!("{}-{}", self.router_ports.0, self.router_ports.1)),
            ("PGCELL_DATA_ROOT", self.data_root.display().to_string()),
            ("PGCELL_BACKUP_REPO_PATH", self.backup_repo.display().to_string()),
            ("PGCELL_ETCD_ENDPOINTS", self.etcd.to_string()),
            ("PGCELL_MEMORY_MB", "512".to_string()),
        ]
    }
}
