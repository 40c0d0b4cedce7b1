//! A test deployment: etcd, cells, routers, brokers; all removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use super::*;

/// Member port blocks below the ephemeral range, distinct per process and call.
fn port_block() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let base = 20000 + ((std::process::id() as u16 % 40) * 250) + n * 20;
    (base, base + 19)
}

/// A deployment: etcd and some cells, cleaned up on drop.
pub struct Deployment {
    pub id: String,
    pub etcd: Etcd,
    pub cells: Vec<Cell>,
    pub routers: Vec<Daemon>,
    /// Broker processes.
    pub brokers: Vec<Daemon>,
    pub router_ports: (u16, u16),
    pub tmp: tempfile::TempDir,
}

pub const ROUTER_PASSWORD: &str = "router-test-password";
pub const BROKER_PASSWORD: &str = "broker-test-password";

/// A `pgcell router` or `pgcell broker` process.
pub struct Daemon {
    pub name: String,
    /// The address its router ports listen on.
    pub host: String,
    pub http: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn routes(&self) -> serde_json::Value {
        http::call("GET", &self.url("/debug/routes"), Some(("admin", ROUTER_PASSWORD)), None).await.body
    }
}

impl Deployment {
    pub async fn start(cells: usize) -> Self {
        Self::start_with_etcd(cells, 1).await
    }

    /// A deployment on an etcd cluster of `members`; every daemon gets every endpoint.
    pub async fn start_with_etcd(cells: usize, members: usize) -> Self {
        Self::start_on(Etcd::cluster(members), cells).await
    }

    /// A deployment on a locked-down etcd (TLS with client certificates, auth
    /// on): every cell, router and broker connects as its own user.
    pub async fn start_secure(cells: usize, members: usize) -> Self {
        let mut d = Self::start_on(Etcd::cluster_tls(members), 0).await;
        let names: Vec<String> = (0..cells).map(|i| format!("{}-c{i}", d.id)).collect();
        d.etcd.enable_auth(pgcell_bin(), &names);
        for name in &names {
            d.add_cell(name).await;
        }
        d
    }

    async fn start_on(etcd: Etcd, cells: usize) -> Self {
        let id = format!("t{}-{}", std::process::id(), free_port());
        let tmp = tempfile::tempdir().unwrap();
        let router_ports = port_block();
        let mut d = Self { id, etcd, cells: vec![], routers: vec![], brokers: vec![], router_ports, tmp };
        for i in 0..cells {
            d.add_cell(&format!("{}-c{i}", d.id)).await;
        }
        d
    }

    pub async fn add_cell(&mut self, name: &str) -> usize {
        self.add_cell_with_env(name, &[]).await
    }

    /// A cell with extra environment (e.g. `DOCKER_HOST`).
    pub async fn add_cell_with_env(&mut self, name: &str, extra: &[(&str, String)]) -> usize {
        let api_port = free_port();
        let ports = port_block();
        let data_root = self.tmp.path().join(name);
        let backup_repo = self.tmp.path().join("backups");
        let etcd = self.etcd.endpoints();
        let cell_env = CellEnv {
            name,
            deployment: &self.id,
            api_port,
            ports,
            router_ports: self.router_ports,
            data_root: &data_root,
            backup_repo: &backup_repo,
            etcd: &etcd,
        };
        let env: Vec<(String, String)> = cell_env
            .vars()
            .into_iter()
            .chain([
                ("PGCELL_IMAGE", image().to_string()),
                ("PGCELL_LOG", "info,pgcell=debug".to_string()),
                ("PGCELL_ARCHIVE_TIMEOUT_SECS", "10".to_string()),
                ("PGCELL_BACKUP_REFRESH_SECS", "3".to_string()),
            ])
            .chain(self.etcd.access_env(&format!("pgcell-cell-{name}")))
            .chain(extra.iter().cloned())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut cell = Cell {
            name: name.into(),
            api: format!("http://127.0.0.1:{api_port}"),
            ports,
            data_root,
            child: None,
            env,
            log: self.tmp.path().join(format!("{name}.log")),
        };
        cell.spawn();
        let health = cell.url("/healthz");
        wait_for("cell agent health", Duration::from_secs(15), || {
            let h = health.clone();
            async move { reqwest::get(&h).await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        self.cells.push(cell);
        self.cells.len() - 1
    }

    /// Starts `pgcell <subcommand>` with `env`, its HTTP side on a free port; waits for its health.
    async fn spawn_daemon(&self, name: &str, subcommand: &str, host: &str, env: &[(&str, String)]) -> Daemon {
        let http_port = free_port();
        let log = self.tmp.path().join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(pgcell_bin())
            .arg(subcommand)
            .env("PGCELL_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
            .env("PGCELL_BROKER_LISTEN", format!("127.0.0.1:{http_port}"))
            .env("PGCELL_ETCD_ENDPOINTS", self.etcd.endpoints())
            .env("PGCELL_LOG", "info,pgcell=debug")
            .envs(self.etcd.access_env(&format!("pgcell-{subcommand}")))
            // Last, so a daemon can be given e.g. its own way to etcd.
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let daemon = Daemon {
            name: name.into(),
            http: format!("http://127.0.0.1:{http_port}"),
            host: host.into(),
            child: Some(child),
            log,
        };
        let health = daemon.url("/healthz");
        wait_for(&format!("{name} health"), Duration::from_secs(15), || {
            let h = health.clone();
            async move { reqwest::get(&h).await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        daemon
    }

    /// Starts a router; router i listens on 127.0.0.(i+1), so several share the ports.
    pub async fn start_router(&mut self, name: &str, grace_ms: u64) -> usize {
        self.start_router_with_env(name, grace_ms, &[]).await
    }

    pub async fn start_router_with_env(&mut self, name: &str, grace_ms: u64, extra: &[(&str, String)]) -> usize {
        let host = format!("127.0.0.{}", self.routers.len() + 1);
        let mut env = vec![
            ("PGCELL_ROUTER_NAME", name.to_string()),
            ("PGCELL_PASSWORD", ROUTER_PASSWORD.to_string()),
            ("PGCELL_GRACE_MS", grace_ms.to_string()),
            ("PGCELL_LISTEN_HOST", host.clone()),
            ("PGCELL_ADVERTISE_HOST", host.clone()),
        ];
        env.extend(extra.iter().cloned());
        let router = self.spawn_daemon(name, "router", &host, &env).await;
        self.routers.push(router);
        self.routers.len() - 1
    }

    /// Starts a broker process; returns its base URL.
    pub async fn start_broker(&mut self, name: &str) -> String {
        self.start_broker_with_env(name, &[]).await
    }

    /// A broker with extra environment (e.g. `PGCELL_REPLACE_AFTER_SECS`).
    pub async fn start_broker_with_env(&mut self, name: &str, extra: &[(&str, String)]) -> String {
        let mut env = vec![
            ("PGCELL_BROKER_NAME", name.to_string()),
            ("PGCELL_PASSWORD", BROKER_PASSWORD.to_string()),
            ("PGCELL_ROUTER_PORT_RANGE", format!("{}-{}", self.router_ports.0, self.router_ports.1)),
        ];
        env.extend(extra.iter().cloned());
        let broker = self.spawn_daemon(name, "broker", "127.0.0.1", &env).await;
        let url = broker.http.clone();
        self.brokers.push(broker);
        url
    }

    /// One of an instance's own keys (`secrets`, `router_port`): a broker's
    /// instance keeps them under `instances/`, a seed instance under `seed/`.
    async fn instance_value(&self, id: &str, leaf: &str) -> Vec<u8> {
        let mut c = self.etcd.client().await;
        for root in ["instances", "seed"] {
            let resp = c.get(format!("/pgcell/{root}/{id}/{leaf}"), None).await.unwrap();
            if let Some(kv) = resp.kvs().first() {
                return kv.value().to_vec();
            }
        }
        panic!("instance {id} has no {leaf}")
    }

    /// The router port of an instance, from etcd.
    pub async fn router_port(&self, id: &str) -> u16 {
        String::from_utf8(self.instance_value(id, "router_port").await).unwrap().parse().unwrap()
    }

    /// The member Patroni names leader of instance `id`.
    pub async fn leader(&self, id: &str) -> Option<String> {
        let mut c = self.etcd.client().await;
        let resp = c.get(format!("/service/cf-{id}/leader"), None).await.ok()?;
        resp.kvs().first().map(|kv| kv.value_str().unwrap().to_string())
    }

    /// The cell index holding member `member` of instance `id`.
    pub fn cell_of(&self, id: &str, member: &str) -> usize {
        self.cells.iter().position(|c| format!("cf-{id}-{}", c.name) == member).expect("member of a cell")
    }

    /// The instance's secrets, as JSON.
    pub async fn secrets(&self, id: &str) -> serde_json::Value {
        serde_json::from_slice(&self.instance_value(id, "secrets").await).unwrap()
    }

    /// `pgcell <args>` against this deployment's etcd.
    pub fn pgcell(&self, args: &[&str]) -> String {
        let out = Command::new(pgcell_bin())
            .args(args)
            .env("PGCELL_ETCD_ENDPOINTS", self.etcd.endpoints())
            .envs(self.etcd.access_env("root"))
            .output()
            .unwrap();
        assert!(out.status.success(), "pgcell {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Names of this deployment's containers (running or not).
    pub fn containers(&self) -> Vec<String> {
        docker_names(&format!("label=org.pgcell.deployment={}", self.id))
    }

    /// The PostgreSQL port of instance `id`'s member on cell `cell`, from its placement.
    pub async fn member_port(&self, id: &str, cell: usize) -> u16 {
        let mut c = self.etcd.client().await;
        let key = format!("/pgcell/placements/{}/{id}", self.cells[cell].name);
        let resp = c.get(key.as_str(), None).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(resp.kvs().first().expect(&key).value()).unwrap();
        v["pg_port"].as_u64().unwrap() as u16
    }

    /// The superuser URL of a member port of instance `id`.
    pub async fn superuser_url(&self, id: &str, port: u16) -> String {
        let v = self.secrets(id).await;
        format!("postgres://postgres:{}@127.0.0.1:{port}/postgres", v["superuser"].as_str().unwrap())
    }

    pub fn logs(&self) -> String {
        let cells = self.cells.iter().map(|c| format!("--- {} ---\n{}", c.name, c.log()));
        let routers = self.routers.iter().chain(&self.brokers).map(|r| format!("--- {} ---\n{}", r.name, r.log()));
        cells.chain(routers).collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for c in &mut self.cells {
            c.kill_agent();
        }
        for r in self.routers.iter_mut().chain(self.brokers.iter_mut()) {
            r.kill();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            // Patroni's side of the story, before the containers go.
            for c in self.containers() {
                if let Ok(out) = Command::new("docker").args(["logs", "--tail", "150", &c]).output() {
                    eprintln!("--- {c} (last 150 lines) ---\n{}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
        let ids = docker_ids(&format!("label=org.pgcell.deployment={}", self.id));
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
        }
    }
}
