//! The harness: etcd, the router under test, stand-in servers, and a guard
//! that kills what it started.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::{Client, Txn, TxnOp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::support::{build_pgcell, free_port, wait_every};
use super::{LOOPBACK, PASSWORD, progress};

/// Kills the processes it holds by PID (router first, then etcd) and, on an
/// external etcd, deletes the keys this run wrote.
pub(crate) struct Guard {
    pub(crate) children: Vec<(&'static str, Child)>,
    pub(crate) external_etcd: Option<String>,
    /// Client and peer port of the etcd this run started.
    pub(crate) etcd_ports: Option<(u16, u16)>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        while let Some((what, mut child)) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
            progress(format!("stopped {what} (pid {})", child.id()));
        }
        if let Some(endpoint) = &self.external_etcd {
            for p in &self.prefixes {
                let _ = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", endpoint, "del", "--prefix", p])
                    .stdout(Stdio::null())
                    .status();
            }
        }
    }
}

pub(crate) struct Harness {
    pub(crate) guard: Guard,
    pub(crate) etcd: Client,
    pub(crate) router_pid: u32,
    pub(crate) router_http: String,
    pub(crate) http: reqwest::Client,
    /// Every instance id of this run starts with it.
    pub(crate) id_prefix: String,
}

pub(crate) fn is_loopback(endpoint: &str) -> bool {
    let hostport = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    host == LOOPBACK || host == "localhost"
}

pub(crate) async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_every(what, timeout, Duration::from_millis(50), f).await
}

impl Harness {
    pub(crate) async fn start(mode: &str) -> anyhow::Result<Self> {
        Self::start_with(mode, &[]).await
    }

    /// Starts etcd and a router with `env` added to the router's environment.
    pub(crate) async fn start_with(mode: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("pgcell-router-bench").tempdir()?;
        let id_prefix = format!("rb{}-{mode}-", std::process::id());
        let mut guard = Guard {
            children: vec![],
            external_etcd: None,
            etcd_ports: None,
            prefixes: vec![format!("/pgcell/instances/{id_prefix}"), format!("/service/cf-{id_prefix}")],
            dir,
        };
        let endpoint = match std::env::var("PGCELL_ETCD_ENDPOINTS") {
            Ok(e) if !e.trim().is_empty() => {
                let first = e.split(',').next().unwrap_or_default().trim().to_string();
                ensure!(
                    e.split(',').all(|x| is_loopback(x.trim())),
                    "PGCELL_ETCD_ENDPOINTS={e}: this benchmark talks to 127.0.0.1 only"
                );
                guard.external_etcd = Some(e.clone());
                first
            }
            _ => start_etcd(&mut guard)?,
        };
        let etcd = Client::connect([endpoint.as_str()], None).await.context("connecting to etcd")?;

        let http_port = free_port()?;
        let log = guard.dir.path().join("router.log");
        let f = std::fs::File::create(&log)?;
        let child = Command::new(build_pgcell(|m| progress(m))?)
            .arg("router")
            .env("PGCELL_ROUTER_NAME", format!("bench-{}-{mode}", std::process::id()))
            .env("PGCELL_HTTP_LISTEN", format!("{LOOPBACK}:{http_port}"))
            .env("PGCELL_PASSWORD", PASSWORD)
            .env("PGCELL_LISTEN_HOST", LOOPBACK)
            .env("PGCELL_ADVERTISE_HOST", LOOPBACK)
            .env("PGCELL_ETCD_ENDPOINTS", guard.external_etcd.clone().unwrap_or_else(|| endpoint.clone()))
            .env("PGCELL_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("starting pgcell router")?;
        let router_pid = child.id();
        guard.children.push(("router", child));
        let h = Self {
            guard,
            etcd,
            router_pid,
            router_http: format!("http://{LOOPBACK}:{http_port}"),
            http: reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?,
            id_prefix,
        };
        let health = format!("{}/healthz", h.router_http);
        let started = wait_until("router health", Duration::from_secs(15), || {
            let req = h.http.get(&health);
            async move { req.send().await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        if let Err(e) = started {
            bail!("{e}; router log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        progress(format!("router pid {router_pid} on etcd {endpoint}"));
        Ok(h)
    }

    pub(crate) fn id(&self, n: usize) -> String {
        format!("{}{n}", self.id_prefix)
    }

    /// The router's resident set (VmRSS), KiB.
    pub(crate) fn router_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.router_pid))
            .context("reading the router's /proc status (did it exit?)")?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }

    /// Routes of this run's instances that have a primary.
    pub(crate) async fn routes_with_primary(&self) -> anyhow::Result<usize> {
        let url = format!("{}/debug/routes", self.router_http);
        let routes: Vec<serde_json::Value> =
            self.http.get(url).basic_auth("admin", Some(PASSWORD)).send().await?.error_for_status()?.json().await?;
        Ok(routes
            .iter()
            .filter(|r| r["instance"].as_str().is_some_and(|i| i.starts_with(&self.id_prefix)))
            .filter(|r| !r["primary"].is_null())
            .count())
    }

    pub(crate) async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let url = format!("{}/metrics", self.router_http);
        let text = self.http.get(url).basic_auth("admin", Some(PASSWORD)).send().await?.text().await?;
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name)).context("no such metric")?;
        Ok(line.split_whitespace().nth(1).context("metric value")?.parse()?)
    }

    /// Puts an instance's keys (router port, members, leader) in one transaction.
    pub(crate) fn instance_ops(&self, id: &str, router_port: u16, members: &[(&str, u16)], leader: &str) -> Vec<TxnOp> {
        let mut ops = vec![TxnOp::put(format!("/pgcell/instances/{id}/router_port"), router_port.to_string(), None)];
        for (name, port) in members {
            ops.push(TxnOp::put(format!("/service/cf-{id}/members/{name}"), member_json(*port), None));
        }
        ops.push(TxnOp::put(format!("/service/cf-{id}/leader"), leader, None));
        ops
    }

    pub(crate) async fn put_ops(&mut self, ops: Vec<TxnOp>) -> anyhow::Result<()> {
        self.etcd.txn(Txn::new().and_then(ops)).await.context("etcd txn")?;
        Ok(())
    }

    /// Deletes this run's keys (the guard does it too, on an external etcd).
    pub(crate) async fn remove_keys(&mut self) {
        for p in self.guard.prefixes.clone() {
            let _ = self.etcd.delete(p, Some(etcd_client::DeleteOptions::new().with_prefix())).await;
        }
    }
}

pub(crate) fn start_etcd(guard: &mut Guard) -> anyhow::Result<String> {
    let (client, peer) = (free_port()?, free_port()?);
    guard.etcd_ports = Some((client, peer));
    spawn_etcd(guard, client, peer)
}

/// Starts etcd on these ports and the guard's data dir (again, after `outage` killed it).
pub(crate) fn spawn_etcd(guard: &mut Guard, client: u16, peer: u16) -> anyhow::Result<String> {
    let endpoint = format!("{LOOPBACK}:{client}");
    let client_url = format!("http://{endpoint}");
    let peer_url = format!("http://{LOOPBACK}:{peer}");
    let path = guard.dir.path().join("etcd.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let child = Command::new("etcd")
        .args(["--data-dir", &guard.dir.path().join("etcd").display().to_string()])
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting etcd (is it installed? scripts/setup.sh)")?;
    guard.children.push(("etcd", child));
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(&endpoint).is_err() {
        ensure!(Instant::now() < deadline, "etcd did not start on {endpoint}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(endpoint)
}

pub(crate) fn member_json(port: u16) -> String {
    format!(
        r#"{{"conn_url":"postgres://{LOOPBACK}:{port}/postgres","api_url":"http://{LOOPBACK}:{port}/patroni","state":"running","role":"master","version":"3.0.2"}}"#
    )
}

/// A stand-in for PostgreSQL: writes `tag` on accept, then holds the connection until the peer closes.
pub(crate) async fn tag_server(tag: u8) -> anyhow::Result<u16> {
    let listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let mut s = match listener.accept().await {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                if s.write_all(&[tag]).await.is_ok() {
                    let mut buf = [0u8; 64];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    Ok(port)
}

/// Connects to a router port and reads the first byte: which server the route reached.
pub(crate) async fn probe(port: u16) -> anyhow::Result<(TcpStream, u8)> {
    let t = Duration::from_secs(2);
    let mut s = tokio::time::timeout(t, TcpStream::connect((LOOPBACK, port))).await.context("connect timeout")??;
    let mut b = [0u8; 1];
    tokio::time::timeout(t, s.read_exact(&mut b)).await.context("read timeout")??;
    Ok((s, b[0]))
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
