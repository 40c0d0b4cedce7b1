//! The deployment (etcd, cell agents, the router), removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail, ensure};

use super::{ID, LOOPBACK, SCOPE, progress};

pub struct Cell {
    pub name: String,
    pub api_port: u16,
    pub ports: (u16, u16),
    pub child: Option<Child>,
}

pub struct Bench {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub etcd: String,
    /// The etcd this bench started (the test kit's), stopped last.
    pub etcd_cluster: Option<super::etcd::Etcd>,
    pub cells: Vec<Cell>,
    pub router_ports: (u16, u16),
    pub router: Option<Child>,
    /// The router's HTTP port (metrics).
    pub router_http: u16,
    /// Set once the run went wrong: the logs' tails are printed on drop.
    pub failed: bool,
    /// The cells revoke an expired leader lease at once (`false`: etcd's sweep does).
    pub revoke_expired: bool,
}

impl Drop for Bench {
    fn drop(&mut self) {
        // Agents first, so none restarts a container; then the router.
        for c in &mut self.cells {
            if let Some(mut ch) = c.child.take() {
                let _ = ch.kill();
                let _ = ch.wait();
            }
        }
        if let Some(mut ch) = self.router.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        super::kit::docker_remove_deployment(&self.id);
        self.etcd_cluster.take();
        if self.failed {
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("--- {} (last 40 lines) ---", p.display());
                    for l in &lines[lines.len().saturating_sub(40)..] {
                        eprintln!("{l}");
                    }
                }
            }
        }
        progress(format!("cleaned up deployment {} ({} removed)", self.id, self.dir.path().display()));
    }
}

pub fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind((LOOPBACK, p)).is_ok()
}

/// A block of `n` ports that nobody listens on, below the ephemeral range
/// (Linux: from 32768; the sessions of `--sessions` use thousands of ephemeral
/// ports, and a restarted agent once found its API port taken by one) and
/// below the tests' blocks (20000 up), apart from the blocks already taken.
pub fn free_block(n: u16, taken: &mut Vec<(u16, u16)>) -> anyhow::Result<(u16, u16)> {
    let seed = (std::process::id() % 97) as u16;
    for k in 0..300u16 {
        let base = 10000 + ((seed * 37 + k * 41) % 300) * 32;
        let block = (base, base + n - 1);
        if taken.iter().any(|t| block.0 <= t.1 && t.0 <= block.1) {
            continue;
        }
        if (block.0..=block.1).all(port_free) {
            taken.push(block);
            return Ok(block);
        }
    }
    bail!("no free block of {n} ports")
}

impl Bench {
    pub fn log_file(&self, name: &str) -> anyhow::Result<(std::fs::File, std::fs::File)> {
        let f =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(format!("{name}.log")))?;
        Ok((f.try_clone()?, f))
    }

    pub fn start_cell(&mut self, i: usize) -> anyhow::Result<()> {
        let c = &self.cells[i];
        let (out, err) = self.log_file(&c.name)?;
        let data_root = self.dir.path().join(&c.name);
        let backup_repo = self.dir.path().join("backups");
        let env = super::kit::CellEnv {
            name: &c.name,
            deployment: &self.id,
            api_port: c.api_port,
            ports: c.ports,
            router_ports: self.router_ports,
            data_root: &data_root,
            backup_repo: &backup_repo,
            etcd: &self.etcd,
        }
        .vars();
        let child = Command::new(&self.bin)
            .arg("cell")
            .envs(env)
            .env("PGCELL_LOG", "info")
            .env("PGCELL_REVOKE_EXPIRED_LEADER_LEASES", self.revoke_expired.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start cell {}", c.name))?;
        self.cells[i].child = Some(child);
        Ok(())
    }

    /// The whole cell lost at once: agent SIGKILL, then `docker kill` of its containers.
    pub fn kill_cell(&mut self, i: usize) {
        if let Some(mut c) = self.cells[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        super::kit::docker_kill_cell(&self.cells[i].name);
    }

    pub fn member(&self, i: usize) -> String {
        format!("{SCOPE}-{}", self.cells[i].name)
    }

    pub fn cell_of(&self, member: &str) -> anyhow::Result<usize> {
        (0..self.cells.len()).find(|&i| self.member(i) == member).with_context(|| format!("{member} is on no cell"))
    }

    pub async fn etcd_client(&self) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([&self.etcd], None).await?)
    }

    pub async fn etcd_get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut c = self.etcd_client().await?;
        let r = c.get(key, None).await?;
        Ok(r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    pub async fn etcd_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut c = self.etcd_client().await?;
        let r = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                (String::from_utf8_lossy(kv.key()).into_owned(), String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect())
    }

    pub async fn put_member(&self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://{LOOPBACK}:{}/v2/service_instances/{ID}", self.cells[i].api_port);
        let r = reqwest::Client::new()
            .put(&url)
            .basic_auth("containers", Some("containers"))
            .header("content-type", "application/json")
            .body(super::kit::seed_body())
            .send()
            .await?;
        let status = r.status().as_u16();
        ensure!(status == 201, "PUT {url}: {status} {}", r.text().await.unwrap_or_default());
        Ok(())
    }
}
