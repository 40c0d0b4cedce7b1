//! Test harness: real etcd, real cell agents (the `pgcell` binary), real Docker.
//! Everything a test starts is stopped and removed in `Drop`, even when it fails:
//! processes by PID, containers by their deployment label, data in a temp dir.
#![allow(dead_code)]

pub mod backup;
pub mod http;
pub mod inproc;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const SEED_SERVICE: &str = "0f5c1670-6dc3-11e5-bc08-6c4008a663f0";
pub const SEED_PLAN: &str = "1545e30e-6dc3-11e5-826a-6c4008a663f0";

pub fn pgcell_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgcell")
}

/// The member image of this checkout's recipe (built if missing): tests run
/// against the image their own tree describes, not whatever `:latest` is.
pub fn image() -> &'static str {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/image/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("deploy/image/build.sh runs");
        assert!(out.status.success(), "the member image could not be built");
        String::from_utf8_lossy(&out.stdout).lines().last().expect("build.sh prints the tag").trim().to_string()
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Member port blocks below the ephemeral range, distinct per process and call.
fn port_block() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let base = 20000 + ((std::process::id() as u16 % 40) * 250) + n * 20;
    (base, base + 19)
}

pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    peer: u16,
    dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("127.0.0.1:{client}");
        let mut etcd = Self { child: None, endpoint, peer, dir };
        etcd.spawn();
        etcd
    }

    /// Sends a signal to etcd (`STOP` freezes it, `CONT` thaws it).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("etcd running").id().to_string();
        assert!(Command::new("kill").args([&format!("-{sig}"), &pid]).status().unwrap().success());
    }

    /// Stops etcd (SIGKILL); its data stays for `resume`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    fn spawn(&mut self) {
        let peer = self.peer;
        let client_url = format!("http://{}", self.endpoint);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--data-dir", &self.dir.path().join("data").display().to_string()])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd must be installed (scripts/setup.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&self.endpoint).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([&self.endpoint], None).await.unwrap()
    }

    /// Every key and value under `/` (for "nothing changed" checks).
    pub async fn dump(&self, prefix: &str) -> Vec<(String, String)> {
        let mut c = self.client().await;
        let resp = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
        resp.kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap_or("").to_string()))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Cell {
    pub name: String,
    pub api: String,
    pub ports: (u16, u16),
    pub data_root: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Cell {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(pgcell_bin())
            .arg("cell")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent process only (SIGKILL); its containers keep running.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Loses the whole cell at once: the agent and every container, SIGKILL.
    pub fn kill_cell(&mut self) {
        self.kill_agent();
        let ids = docker_ids(&format!("label=org.pgcell.cell={}", self.name));
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["kill"]).args(&ids).output();
        }
    }

    /// SIGTERM to the agent (a planned stop); waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "agent did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the agent again (after a kill or a stop).
    /// Waits for the agent to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn start_agent(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        self.spawn();
    }

    pub fn restart_agent(&mut self) {
        self.kill_agent();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
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
        let id = format!("t{}-{}", std::process::id(), free_port());
        let tmp = tempfile::tempdir().unwrap();
        let etcd = Etcd::start();
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
        let env: Vec<(String, String)> = [
            ("PGCELL_CELL_NAME", name.to_string()),
            ("PGCELL_DEPLOYMENT", self.id.clone()),
            ("PGCELL_API_LISTEN", format!("127.0.0.1:{api_port}")),
            ("PGCELL_PORT_RANGE", format!("{}-{}", ports.0, ports.1)),
            ("PGCELL_DATA_ROOT", data_root.display().to_string()),
            ("PGCELL_ETCD_ENDPOINTS", self.etcd.endpoint.clone()),
            ("PGCELL_MEMORY_MB", "512".to_string()),
            ("PGCELL_IMAGE", image().to_string()),
            ("PGCELL_ROUTER_PORT_RANGE", format!("{}-{}", self.router_ports.0, self.router_ports.1)),
            ("PGCELL_LOG", "info,pgcell=debug".to_string()),
            // One repository for the deployment's cells: the shared filesystem of a fleet.
            ("PGCELL_BACKUP_REPO_PATH", self.tmp.path().join("backups").display().to_string()),
            ("PGCELL_ARCHIVE_TIMEOUT_SECS", "10".to_string()),
            ("PGCELL_BACKUP_REFRESH_SECS", "3".to_string()),
        ]
        .into_iter()
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
            .env("PGCELL_ETCD_ENDPOINTS", &self.etcd.endpoint)
            .env("PGCELL_LOG", "info,pgcell=debug")
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
        let env = [
            ("PGCELL_BROKER_NAME", name.to_string()),
            ("PGCELL_PASSWORD", BROKER_PASSWORD.to_string()),
            ("PGCELL_ROUTER_PORT_RANGE", format!("{}-{}", self.router_ports.0, self.router_ports.1)),
        ];
        let broker = self.spawn_daemon(name, "broker", "127.0.0.1", &env).await;
        let url = broker.http.clone();
        self.brokers.push(broker);
        url
    }

    /// The router port of an instance, from etcd.
    pub async fn router_port(&self, id: &str) -> u16 {
        let mut c = self.etcd.client().await;
        let resp = c.get(format!("/pgcell/instances/{id}/router_port"), None).await.unwrap();
        resp.kvs()[0].value_str().unwrap().parse().unwrap()
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
        let mut c = self.etcd.client().await;
        let resp = c.get(format!("/pgcell/instances/{id}/secrets"), None).await.unwrap();
        serde_json::from_slice(resp.kvs()[0].value()).unwrap()
    }

    /// `pgcell <args>` against this deployment's etcd.
    pub fn pgcell(&self, args: &[&str]) -> String {
        let out =
            Command::new(pgcell_bin()).args(args).env("PGCELL_ETCD_ENDPOINTS", &self.etcd.endpoint).output().unwrap();
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
        let mut c = self.etcd.client().await;
        let resp = c.get(format!("/pgcell/instances/{id}/secrets"), None).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(resp.kvs()[0].value()).unwrap();
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
        let ids = docker_ids(&format!("label=org.pgcell.deployment={}", self.id));
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn docker_ps(filter: &str, format: &str) -> Vec<String> {
    let out = Command::new("docker").args(["ps", "-a", "--filter", filter, "--format", format]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

pub fn docker_names(filter: &str) -> Vec<String> {
    let mut v = docker_ps(filter, "{{.Names}}");
    v.sort();
    v
}

pub fn docker_ids(filter: &str) -> Vec<String> {
    docker_ps(filter, "{{.ID}}")
}

/// A `psql` session held open: statements go to its stdin; dropping the
/// stdin ends it.
pub fn psql_session(url: &str) -> (std::process::Child, std::process::ChildStdin) {
    let mut held = Command::new("psql")
        .args([url, "-X", "-tA", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = held.stdin.take().unwrap();
    (held, stdin)
}

/// `psql -tA` with a URL; `Err` carries psql's stderr.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

pub fn dir_is_empty_or_missing(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(true)
}

pub fn seed_body() -> String {
    format!(
        r#"{{"service_id":"{SEED_SERVICE}","plan_id":"{SEED_PLAN}","organization_guid":"org","space_guid":"space"}}"#
    )
}

/// The seed's walkthrough: PUT instance `id` on each cell in turn; returns once
/// the first cell's member leads and every other member streams.
pub async fn seed_cluster(d: &Deployment, id: &str, cells: &[usize]) {
    for (i, &c) in cells.iter().enumerate() {
        let cell = &d.cells[c];
        let r =
            http::call("PUT", &cell.url(&format!("/v2/service_instances/{id}")), http::SEED_AUTH, Some(&seed_body()))
                .await;
        assert_eq!(r.status, 201, "{}", r.text);
        if i == 0 {
            let url = d.superuser_url(id, d.member_port(id, c).await).await;
            wait_for("the first member accepting writes", Duration::from_secs(60), || {
                let url = url.clone();
                async move {
                    psql(&url, "select 1")
                        .ok()
                        .filter(|_| psql(&url, "select pg_is_in_recovery()").ok() == Some("f".into()))
                }
            })
            .await;
        }
    }
    let leader = d.superuser_url(id, d.member_port(id, cells[0]).await).await;
    let want = cells.len() - 1;
    wait_for("every replica streaming", Duration::from_secs(120), || {
        let url = leader.clone();
        async move {
            let n: usize =
                psql(&url, "select count(*) from pg_stat_replication where state = 'streaming'").ok()?.parse().ok()?;
            (n == want).then_some(())
        }
    })
    .await;
    if want > 0 {
        // Synchronous mode: only the standby Patroni names in `/sync` may be promoted.
        wait_for("a synchronous standby", Duration::from_secs(90), || async {
            let mut c = d.etcd.client().await;
            let resp = c.get(format!("/service/cf-{id}/sync"), None).await.ok()?;
            let v: serde_json::Value = serde_json::from_slice(resp.kvs().first()?.value()).ok()?;
            v["sync_standby"].as_str().map(|_| ())
        })
        .await;
    }
}

/// A TCP proxy to etcd (socat, in its own process group), so one client or
/// one cell alone can be cut off from etcd and reconnected.
pub struct EtcdLink {
    pub port: u16,
    target: String,
    child: Option<std::process::Child>,
}

impl EtcdLink {
    pub fn new(target: &str) -> Self {
        let mut link = Self { port: free_port(), target: target.into(), child: None };
        link.up();
        link
    }

    pub fn up(&mut self) {
        let child = Command::new("setsid")
            .args([
                "socat",
                &format!("TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork", self.port),
                &format!("TCP:{}", self.target),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat (scripts/setup.sh installs it)");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(5), "socat did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cuts every connection through the link, and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).output();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdLink {
    fn drop(&mut self) {
        self.cut();
    }
}
