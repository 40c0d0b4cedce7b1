//! Router micro-benchmarks against a real `pgcell router` process, with
//! synthetic Patroni keys in etcd and small in-process TCP servers standing in
//! for PostgreSQL (each writes one identifying byte on accept, then holds the
//! connection open).
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example router_bench -- switch [SWITCHES]   # route switch latency, p99 <= 50 ms
//! cargo run --release --example router_bench -- rss [INSTANCES]      # router RSS with 1000 routes, <= 64 MiB
//! cargo run --release --example router_bench -- conns [N]            # KiB per idle proxied connection, <= 40 KiB
//! cargo run --release --example router_bench -- all                   # the three above
//! cargo run --release --example router_bench -- hop [BLOCKS]         # added round-trip latency, router vs haproxy
//! cargo run --release --example router_bench -- outage [ROUNDS]      # etcd back -> routing again, <= 1 s
//! ```
//!
//! Each mode starts its own etcd (temp dir, free ports), or uses
//! `PGCELL_ETCD_ENDPOINTS` (loopback only) and then removes the keys it wrote,
//! and its own router: the pgcell binary of the same profile (built if needed), or `PGCELL_BIN`.
//! Everything it starts is killed by PID when it ends, also on error or Ctrl-C.
//! It talks to 127.0.0.1 only. Results go to stdout, progress to stderr; the exit
//! status is 1 when a target is missed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::{Client, Txn, TxnOp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod outage;
#[path = "../support/mod.rs"]
mod support;
use support::{build_pgcell, free_port, wait_every};

const LOOPBACK: &str = "127.0.0.1";
const PASSWORD: &str = "router-bench-password";
const SWITCH_P99_MS: f64 = 50.0;
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const CONN_LIMIT_KIB: f64 = 40.0;

fn progress(msg: impl std::fmt::Display) {
    eprintln!("router_bench: {msg}");
}

/// One benchmark's result line and whether it met its target.
struct Outcome {
    line: String,
    pass: bool,
}

impl Outcome {
    fn print(&self) {
        println!("{}  {}", if self.pass { "PASS" } else { "FAIL" }, self.line);
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("all");
    let n: Option<usize> = match args.get(1).map(|s| s.parse()) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => fail(&format!("the count {:?} is not a positive number", args[1])),
    };
    let run = async {
        match mode {
            "switch" => Ok(vec![switch(n.unwrap_or(200)).await?]),
            "rss" => Ok(vec![rss(n.unwrap_or(1000)).await?]),
            "conns" => Ok(vec![conns(n.unwrap_or(2000)).await?]),
            "hop" => Ok(vec![hop(n.unwrap_or(15)).await?]),
            "outage" => Ok(vec![outage::outage(n.unwrap_or(20)).await?]),
            "all" => {
                let mut v = vec![switch(200).await?];
                v.push(rss(1000).await?);
                v.push(conns(2000).await?);
                Ok(v)
            }
            other => Err(anyhow::anyhow!("unknown mode {other:?}: use switch, rss, conns, all, hop or outage")),
        }
    };
    // Ctrl-C drops the running benchmark, so its guard kills what it started.
    let res: anyhow::Result<Vec<Outcome>> = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match res {
        Ok(outcomes) => {
            println!("router_bench {mode}: {}", summary_header());
            for o in &outcomes {
                o.print();
            }
            if outcomes.iter().any(|o| !o.pass) {
                std::process::exit(1);
            }
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("router_bench: FAILED: {msg}");
    std::process::exit(2);
}

fn summary_header() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores")
}

// ---------------------------------------------------------------------------
// The harness: etcd, the router, and a guard that kills them.

/// Kills the processes it holds by PID (router first, then etcd) and, on an
/// external etcd, deletes the keys this run wrote.
struct Guard {
    children: Vec<(&'static str, Child)>,
    external_etcd: Option<String>,
    /// Client and peer port of the etcd this run started.
    etcd_ports: Option<(u16, u16)>,
    prefixes: Vec<String>,
    dir: tempfile::TempDir,
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

struct Harness {
    guard: Guard,
    etcd: Client,
    router_pid: u32,
    router_http: String,
    http: reqwest::Client,
    /// Every instance id of this run starts with it.
    id_prefix: String,
}

fn is_loopback(endpoint: &str) -> bool {
    let hostport = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    host == LOOPBACK || host == "localhost"
}

async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_every(what, timeout, Duration::from_millis(50), f).await
}

impl Harness {
    async fn start(mode: &str) -> anyhow::Result<Self> {
        Self::start_with(mode, &[]).await
    }

    /// Starts etcd and a router with `env` added to the router's environment.
    async fn start_with(mode: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
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

    fn id(&self, n: usize) -> String {
        format!("{}{n}", self.id_prefix)
    }

    /// The router's resident set (VmRSS), KiB.
    fn router_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.router_pid))
            .context("reading the router's /proc status (did it exit?)")?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }

    /// Routes of this run's instances that have a primary.
    async fn routes_with_primary(&self) -> anyhow::Result<usize> {
        let url = format!("{}/debug/routes", self.router_http);
        let routes: Vec<serde_json::Value> =
            self.http.get(url).basic_auth("admin", Some(PASSWORD)).send().await?.error_for_status()?.json().await?;
        Ok(routes
            .iter()
            .filter(|r| r["instance"].as_str().is_some_and(|i| i.starts_with(&self.id_prefix)))
            .filter(|r| !r["primary"].is_null())
            .count())
    }

    async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let url = format!("{}/metrics", self.router_http);
        let text = self.http.get(url).basic_auth("admin", Some(PASSWORD)).send().await?.text().await?;
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name)).context("no such metric")?;
        Ok(line.split_whitespace().nth(1).context("metric value")?.parse()?)
    }

    /// Puts an instance's keys (router port, members, leader) in one transaction.
    fn instance_ops(&self, id: &str, router_port: u16, members: &[(&str, u16)], leader: &str) -> Vec<TxnOp> {
        let mut ops = vec![TxnOp::put(format!("/pgcell/instances/{id}/router_port"), router_port.to_string(), None)];
        for (name, port) in members {
            ops.push(TxnOp::put(format!("/service/cf-{id}/members/{name}"), member_json(*port), None));
        }
        ops.push(TxnOp::put(format!("/service/cf-{id}/leader"), leader, None));
        ops
    }

    async fn put_ops(&mut self, ops: Vec<TxnOp>) -> anyhow::Result<()> {
        self.etcd.txn(Txn::new().and_then(ops)).await.context("etcd txn")?;
        Ok(())
    }

    /// Deletes this run's keys (the guard does it too, on an external etcd).
    async fn remove_keys(&mut self) {
        for p in self.guard.prefixes.clone() {
            let _ = self.etcd.delete(p, Some(etcd_client::DeleteOptions::new().with_prefix())).await;
        }
    }
}

fn start_etcd(guard: &mut Guard) -> anyhow::Result<String> {
    let (client, peer) = (free_port()?, free_port()?);
    guard.etcd_ports = Some((client, peer));
    spawn_etcd(guard, client, peer)
}

/// Starts etcd on these ports and the guard's data dir (again, after `outage` killed it).
fn spawn_etcd(guard: &mut Guard, client: u16, peer: u16) -> anyhow::Result<String> {
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

fn member_json(port: u16) -> String {
    format!(
        r#"{{"conn_url":"postgres://{LOOPBACK}:{port}/postgres","api_url":"http://{LOOPBACK}:{port}/patroni","state":"running","role":"master","version":"3.0.2"}}"#
    )
}

/// A stand-in for PostgreSQL: writes `tag` on accept, then holds the connection until the peer closes.
async fn tag_server(tag: u8) -> anyhow::Result<u16> {
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
async fn probe(port: u16) -> anyhow::Result<(TcpStream, u8)> {
    let t = Duration::from_secs(2);
    let mut s = tokio::time::timeout(t, TcpStream::connect((LOOPBACK, port))).await.context("connect timeout")??;
    let mut b = [0u8; 1];
    tokio::time::timeout(t, s.read_exact(&mut b)).await.context("read timeout")??;
    Ok((s, b[0]))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// switch: how soon after the leader key changes do new connections reach the new primary?

async fn switch(switches: usize) -> anyhow::Result<Outcome> {
    progress(format!("switch: {switches} leader changes"));
    let mut h = Harness::start("switch").await?;
    let (a, b) = (tag_server(b'A').await?, tag_server(b'B').await?);
    let port = free_port()?;
    let id = h.id(0);
    let ops = h.instance_ops(&id, port, &[("a", a), ("b", b)], "a");
    h.put_ops(ops).await?;
    wait_until("the route to A", Duration::from_secs(15), || async {
        probe(port).await.ok().filter(|(_, t)| *t == b'A')
    })
    .await?;

    let leader_key = format!("/service/cf-{id}/leader");
    let mut lat = Vec::with_capacity(switches);
    let mut attempts = 0usize;
    let mut cut = 0usize;
    for i in 0..switches {
        let (name, tag) = if i % 2 == 0 { ("b", b'B') } else { ("a", b'A') };
        // A connection held to the old primary across the switch: it must be cut.
        let (mut held, _) = probe(port).await?;
        h.etcd.put(leader_key.as_str(), name, None).await?;
        let t0 = Instant::now();
        loop {
            attempts += 1;
            if let Ok((_, got)) = probe(port).await
                && got == tag
            {
                break;
            }
            ensure!(t0.elapsed() < Duration::from_secs(5), "switch {i}: still not routed to {name} after 5 s");
        }
        lat.push(t0.elapsed());
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(1), held.read(&mut buf)).await {
            cut += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.remove_keys().await;
    lat.sort();
    let (p50, p99, max) = (percentile(&lat, 50.0), percentile(&lat, 99.0), lat[lat.len() - 1]);
    Ok(Outcome {
        pass: ms(p99) <= SWITCH_P99_MS && cut == switches,
        line: format!(
            "switch: {switches} leader changes, put returned -> new connection reaches the new primary: \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({:.1} connection attempts per switch); \
             held connections cut {cut}/{switches} (target p99 <= {SWITCH_P99_MS} ms, every held connection cut)",
            ms(p50),
            ms(p99),
            ms(max),
            attempts as f64 / switches as f64
        ),
    })
}

// ---------------------------------------------------------------------------
// rss: the router's resident memory with many instances.

/// `n` consecutive ports from 42000 up that can be bound now.
fn free_port_range(n: usize) -> anyhow::Result<u16> {
    let mut base: u32 = 42000;
    while base + n as u32 <= 61000 {
        match (base..base + n as u32).find(|p| std::net::TcpListener::bind((LOOPBACK, *p as u16)).is_err()) {
            Some(busy) => base = busy + 1,
            None => return Ok(base as u16),
        }
    }
    bail!("no {n} consecutive free ports between 42000 and 61000")
}

async fn rss(instances: usize) -> anyhow::Result<Outcome> {
    progress(format!("rss: {instances} instances"));
    let mut h = Harness::start("rss").await?;
    let server = tag_server(b'S').await?;
    let base = free_port_range(instances)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = h.router_rss_kib()?;
    // Cost of one Patroni key update (as every member writes on each loop) with one instance...
    let ops = h.instance_ops(&h.id(0), base, &[("m", server)], "m");
    h.put_ops(ops).await?;
    wait_until("the first route", Duration::from_secs(15), || async {
        h.routes_with_primary().await.ok().filter(|n| *n == 1)
    })
    .await?;
    let cpu_one = update_cpu(&mut h, 1, server, UPDATES).await?;
    let t0 = Instant::now();
    // etcd takes at most 128 operations per transaction: 42 instances of 3 keys.
    let mut ops = vec![];
    for i in 1..instances {
        let id = h.id(i);
        ops.extend(h.instance_ops(&id, base + i as u16, &[("m", server)], "m"));
        if ops.len() >= 126 || i + 1 == instances {
            h.put_ops(std::mem::take(&mut ops)).await?;
        }
    }
    let put_took = t0.elapsed();
    let ready = wait_until("every route with a primary", Duration::from_secs(60), || async {
        h.routes_with_primary().await.ok().filter(|n| *n == instances)
    })
    .await;
    ready.with_context(|| {
        format!("router log:\n{}", std::fs::read_to_string(h.guard.dir.path().join("router.log")).unwrap_or_default())
    })?;
    let ready_after = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = h.router_rss_kib()?;
    // Every port listens and forwards (checked after the measurement).
    let mut ok = 0;
    for i in 0..instances {
        if matches!(probe(base + i as u16).await, Ok((_, b'S'))) {
            ok += 1;
        }
    }
    let after_probe = h.router_rss_kib()?;
    // ... and with every instance.
    let cpu_all = update_cpu(&mut h, instances, server, UPDATES).await?;
    h.remove_keys().await;
    Ok(Outcome {
        pass: rss <= RSS_LIMIT_KIB && ok == instances,
        line: format!(
            "rss: {instances} instances (ports {base}-{}): router VmRSS {:.1} MiB ({rss} KiB; {:.1} MiB with no instance), \
             all routed {:.2} s after the first put (puts took {:.2} s); {ok}/{instances} ports forward; \
             VmRSS after one connection per port {:.1} MiB (target <= {} MiB); \
             router CPU per Patroni member-key update: {cpu_one:.0} us with 1 instance, {cpu_all:.0} us with {instances} \
             (= {:.0}% of a core at one update per instance per second)",
            base as usize + instances - 1,
            rss as f64 / 1024.0,
            idle as f64 / 1024.0,
            ready_after.as_secs_f64(),
            put_took.as_secs_f64(),
            after_probe as f64 / 1024.0,
            RSS_LIMIT_KIB / 1024,
            cpu_all * instances as f64 / 1e4
        ),
    })
}

const UPDATES: usize = 1000;

/// The router's CPU time (user + system), in microseconds.
fn router_cpu_us(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 * 1e6 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Rewrites one member key `updates` times (its xlog_location moving, as Patroni does),
/// spread over the first `instances` instances; returns the router's CPU microseconds per update.
async fn update_cpu(h: &mut Harness, instances: usize, server: u16, updates: usize) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = router_cpu_us(h.router_pid)?;
    for u in 0..updates {
        let id = h.id(u % instances);
        let value = member_json(server).replace(r#""version""#, &format!(r#""xlog_location":{u},"version""#));
        h.etcd.put(format!("/service/cf-{id}/members/m"), value, None).await?;
    }
    // Let the router drain its watch.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((router_cpu_us(h.router_pid)? - before) / updates as f64)
}

// ---------------------------------------------------------------------------
// conns: the router's memory per idle proxied connection.

fn open_files_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).context("no open files limit")?;
    let soft = line.split_whitespace().nth(3).context("open files limit")?;
    Ok(if soft == "unlimited" { u64::MAX } else { soft.parse()? })
}

async fn conns(n: usize) -> anyhow::Result<Outcome> {
    progress(format!("conns: {n} idle connections"));
    // This process holds both ends it owns (client + server side), the router holds two per connection.
    let need = 2 * n as u64 + 256;
    let limit = open_files_limit()?;
    ensure!(
        limit >= need,
        "open files limit (ulimit -n) is {limit}; {n} connections need at least {need}: run `ulimit -n {need}` first"
    );
    let mut h = Harness::start("conns").await?;
    let server = tag_server(b'C').await?;
    let port = free_port()?;
    let id = h.id(0);
    let ops = h.instance_ops(&id, port, &[("m", server)], "m");
    h.put_ops(ops).await?;
    wait_until("the route", Duration::from_secs(15), || async { probe(port).await.ok().filter(|(_, t)| *t == b'C') })
        .await?;
    // Warm-up: the first connections on each data thread allocate once.
    let warm: Vec<_> = futures_join(64, port).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = h.router_rss_kib()?;
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let (s, tag) = probe(port).await.with_context(|| format!("connection {i}"))?;
        ensure!(tag == b'C', "connection {i} reached the wrong server");
        held.push(s);
    }
    let open_took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let active = h.metric("pgcell_router_connections_active").await?;
    let after = h.router_rss_kib()?;
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let closed = h.router_rss_kib()?;
    // More open/close cycles: memory the allocator kept is reused, not grown (no leak).
    let mut cycles = vec![format!("{after}/{closed}")];
    for _ in 0..3 {
        let mut again = Vec::with_capacity(n);
        for i in 0..n {
            again.push(probe(port).await.with_context(|| format!("connection {i} of a later cycle"))?.0);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let open = h.router_rss_kib()?;
        drop(again);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cycles.push(format!("{open}/{}", h.router_rss_kib()?));
    }
    h.remove_keys().await;
    let per_conn = after.saturating_sub(before) as f64 / n as f64;
    Ok(Outcome {
        pass: per_conn <= CONN_LIMIT_KIB && active as usize == n,
        line: format!(
            "conns: {n} idle proxied connections (opened in {:.2} s, router reports {active} active): \
             VmRSS {before} KiB -> {after} KiB = {per_conn:.1} KiB per connection (target <= {CONN_LIMIT_KIB} KiB); \
             VmRSS open/closed over {} open-close cycles: {} KiB",
            open_took.as_secs_f64(),
            cycles.len(),
            cycles.join(", ")
        ),
    })
}

/// Opens `n` connections through `port` at once and reads each one's byte.
async fn futures_join(n: usize, port: u16) -> anyhow::Result<Vec<TcpStream>> {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(probe(port))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??.0);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// hop: the round-trip latency one proxy hop adds, router against haproxy, with
// no PostgreSQL (and its noise) behind it: one connection each, 64-byte
// ping-pongs with an echo server, in interleaved blocks. Informative: no target.

/// Writes `tag` on accept, then echoes.
async fn echo_server(tag: u8) -> anyhow::Result<u16> {
    let listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                if s.write_all(&[tag]).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

fn start_haproxy(guard: &mut Guard, target: u16) -> anyhow::Result<u16> {
    let port = free_port()?;
    let cfg = guard.dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 3s\n    timeout client 1h\n    \
             timeout server 1h\nlisten bench\n    bind {LOOPBACK}:{port}\n    server s {LOOPBACK}:{target}\n"
        ),
    )?;
    let log = std::fs::File::create(guard.dir.path().join("haproxy.log"))?;
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting haproxy (is it installed? scripts/setup.sh)")?;
    guard.children.push(("haproxy", child));
    Ok(port)
}

async fn hop(blocks: usize) -> anyhow::Result<Outcome> {
    const ROUND_TRIPS: usize = 2000;
    progress(format!("hop: {blocks} blocks of {ROUND_TRIPS} round trips per target"));
    let mut h = Harness::start("hop").await?;
    let echo = echo_server(b'E').await?;
    let router = free_port()?;
    let id = h.id(0);
    let ops = h.instance_ops(&id, router, &[("m", echo)], "m");
    h.put_ops(ops).await?;
    wait_until("the route", Duration::from_secs(15), || async { probe(router).await.ok().filter(|(_, t)| *t == b'E') })
        .await?;
    let haproxy = start_haproxy(&mut h.guard, echo)?;
    wait_until("haproxy", Duration::from_secs(15), || async { probe(haproxy).await.ok().filter(|(_, t)| *t == b'E') })
        .await?;
    let targets = [("direct", echo), ("router", router), ("haproxy", haproxy)];
    let mut conns = vec![];
    for (name, port) in targets {
        let (s, _) = probe(port).await.with_context(|| format!("connecting via {name}"))?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    let mut means: Vec<Vec<f64>> = vec![vec![]; targets.len()];
    let cpu0 = router_cpu_us(h.router_pid)?;
    let mut router_trips = 0usize;
    let (ping, mut pong) = ([7u8; 64], [0u8; 64]);
    for b in 0..blocks {
        for k in 0..targets.len() {
            let t = (b + k) % targets.len();
            let s = &mut conns[t];
            let start = Instant::now();
            for _ in 0..ROUND_TRIPS {
                s.write_all(&ping).await?;
                s.read_exact(&mut pong).await?;
            }
            means[t].push(start.elapsed().as_secs_f64() * 1e6 / ROUND_TRIPS as f64);
            if t == 1 {
                router_trips += ROUND_TRIPS;
            }
        }
    }
    let router_cpu = (router_cpu_us(h.router_pid)? - cpu0) / router_trips as f64;
    h.remove_keys().await;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = means.iter_mut().map(median).collect();
    Ok(Outcome {
        pass: true,
        line: format!(
            "hop: 64-byte round trips, median of {blocks} interleaved blocks of {ROUND_TRIPS}: direct {:.1} us, \
             router {:.1} us (+{:.1}), haproxy {:.1} us (+{:.1}); router CPU {router_cpu:.1} us per round trip \
             (informative, no target)",
            m[0],
            m[1],
            m[1] - m[0],
            m[2],
            m[2] - m[0]
        ),
    })
}
