//! pgcell on this machine, for real: etcd, three cells, a router and a broker,
//! then the seed's walkthrough through the broker: provision an HA instance,
//! bind, write through the router, lose the leader's cell, watch the failover,
//! bring the cell back and watch it rejoin; a summary at the end.
//!
//! `cargo run --example local-cluster [-- --keep-running --endpoints-file F --short]`
//! (after `scripts/setup.sh`, which installs etcd and builds the image).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[path = "../tests/common/etcd.rs"]
mod etcd;
#[path = "../tests/common/kit.rs"]
mod kit;
mod support;
use support::{build_pgcell, free_port, wait_http};

const BROKER_USER: &str = "broker";
const CELL_PORTS: [(u16, u16); 3] = [(30000, 30099), (30100, 30199), (30200, 30299)];
const ROUTER_PORTS: (u16, u16) = (40000, 40999);
/// How long a daemon may take to answer its health check.
const STARTUP: Duration = Duration::from_secs(15);

struct Args {
    keep_running: bool,
    endpoints_file: Option<PathBuf>,
    short: bool,
    etcd: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { keep_running: false, endpoints_file: None, short: false, etcd: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--keep-running" => a.keep_running = true,
            "--short" => a.short = true,
            "--endpoints-file" => a.endpoints_file = Some(it.next().context("--endpoints-file needs a path")?.into()),
            "--etcd" => a.etcd = Some(it.next().context("--etcd needs endpoints")?),
            "-h" | "--help" => {
                println!(
                    "local-cluster: run pgcell locally (etcd, 3 cells, router, broker) and walk through it\n\n\
                     --keep-running         leave it running (Ctrl-C stops and removes everything)\n\
                     --endpoints-file PATH  with --keep-running: write the endpoints as JSON there\n\
                     --short                a shorter walkthrough (no rejoin wait)\n\
                     --etcd ENDPOINTS       use this etcd instead of starting one"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(a)
}

/// Everything the demo started; stopped and removed on drop, even on error or Ctrl-C.
struct Deployment {
    id: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// etcd client endpoints, comma-separated (as `PGCELL_ETCD_ENDPOINTS` takes them).
    etcd: String,
    /// The etcd this demo started (stopped when it is dropped, after everything else).
    etcd_cluster: Option<etcd::Etcd>,
    cells: Vec<(String, u16, Option<Child>)>,
    others: Vec<Child>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let children = self.cells.iter_mut().filter_map(|c| c.2.as_mut()).chain(self.others.iter_mut());
        for c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // etcd last: nothing must lose its registration while still running.
        self.etcd_cluster.take();
        kit::docker_remove_deployment(&self.id);
        say(&format!("stopped everything and removed {} (containers, data)", self.dir.path().display()));
    }
}

fn tail(lines: &[&str], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn say(s: &str) {
    println!("==> {s}");
}

impl Deployment {
    fn spawn(&self, name: &str, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        Command::new(&self.bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PGCELL_ETCD_ENDPOINTS", &self.etcd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))
    }

    fn start_cell(&mut self, i: usize) -> anyhow::Result<()> {
        let (name, api, _) = &self.cells[i];
        let data_root = self.dir.path().join(name);
        let backup_repo = self.dir.path().join("backups");
        let env = kit::CellEnv {
            name,
            deployment: &self.id,
            api_port: *api,
            ports: CELL_PORTS[i],
            router_ports: ROUTER_PORTS,
            data_root: &data_root,
            backup_repo: &backup_repo,
            etcd: &self.etcd,
        }
        .vars();
        let child = self.spawn(&name.clone(), &["cell"], &env)?;
        self.cells[i].2 = Some(child);
        Ok(())
    }

    /// A lost cell: its agent and its containers killed at once.
    fn kill_cell(&mut self, i: usize) {
        if let Some(mut c) = self.cells[i].2.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kit::docker_kill_cell(&self.cells[i].0);
    }

    /// What a user needs to see why the walkthrough stopped, before everything
    /// is removed: the cluster as pgcell sees it, the end of every daemon's log
    /// and of every member's (Patroni and PostgreSQL).
    fn diagnose(&self) {
        eprintln!("==> pgcell states:\n{}", self.pgcell(&["states"]).trim_end());
        eprintln!("==> pgcell leaders:\n{}", self.pgcell(&["leaders"]).trim_end());
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let problems: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            eprintln!("==> last warnings and errors in {}:\n{}", log.display(), tail(&problems, 10));
        }
        for name in kit::docker_ps(&format!("label=org.pgcell.deployment={}", self.id), "{{.Names}}") {
            eprintln!("==> last lines of container {name}:\n{}", kit::docker_logs(&name, &["--tail", "30"]).trim_end());
        }
    }

    fn pgcell(&self, args: &[&str]) -> String {
        Command::new(&self.bin)
            .args(args)
            .env("PGCELL_ETCD_ENDPOINTS", &self.etcd)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

async fn osb(method: &str, url: &str, password: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .request(method.parse()?, url)
        .basic_auth(BROKER_USER, Some(password))
        .header("X-Broker-API-Version", "2.17");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let bin = build_pgcell(say)?;
    let image_ok =
        Command::new("docker").args(["image", "inspect", "pgcell/postgres:latest"]).output()?.status.success();
    if !image_ok {
        say("building the PostgreSQL image (about 2 minutes)");
        anyhow::ensure!(Command::new("deploy/image/build.sh").status()?.success(), "image build failed");
    }
    let dir = tempfile::Builder::new().prefix("pgcell-local-").tempdir()?;
    let id = format!("local-{}", std::process::id());
    let mut d = Deployment { id, dir, bin, etcd: String::new(), etcd_cluster: None, cells: vec![], others: vec![] };

    // etcd
    match &args.etcd {
        Some(e) => d.etcd = e.clone(),
        None => {
            // Three members, as in production: any one can restart without Patroni noticing.
            let cluster = etcd::Etcd::cluster(3);
            d.etcd = cluster.endpoints();
            d.etcd_cluster = Some(cluster);
            say(&format!("etcd (3 members) on {}", d.etcd));
        }
    }

    // cells, router, broker
    for i in 0..3 {
        d.cells.push((format!("cell-{}", i + 1), free_port()?, None));
        d.start_cell(i)?;
    }
    for (name, api, _) in &d.cells {
        wait_http(&format!("http://127.0.0.1:{api}/healthz"), name, STARTUP).await?;
        say(&format!("{name} up: per-cell API http://127.0.0.1:{api}"));
    }
    let router_http = free_port()?;
    let router_password = pgcell::secret::random_password(24);
    let router = d.spawn(
        "router",
        &["router"],
        &[("PGCELL_HTTP_LISTEN", format!("127.0.0.1:{router_http}")), ("PGCELL_PASSWORD", router_password.clone())],
    )?;
    d.others.push(router);
    wait_http(&format!("http://127.0.0.1:{router_http}/healthz"), "router", STARTUP).await?;
    say(&format!("router up: instance ports {}-{} on 127.0.0.1", ROUTER_PORTS.0, ROUTER_PORTS.1));
    let broker_port = free_port()?;
    let broker_password = pgcell::secret::random_password(24);
    let broker = d.spawn(
        "broker",
        &["broker"],
        &[
            ("PGCELL_BROKER_LISTEN", format!("127.0.0.1:{broker_port}")),
            ("PGCELL_PASSWORD", broker_password.clone()),
            ("PGCELL_ROUTER_PORT_RANGE", format!("{}-{}", ROUTER_PORTS.0, ROUTER_PORTS.1)),
        ],
    )?;
    d.others.push(broker);
    let broker_url = format!("http://127.0.0.1:{broker_port}");
    wait_http(&format!("{broker_url}/healthz"), "broker", STARTUP).await?;
    say(&format!("broker up: {broker_url} (user {BROKER_USER})"));

    if args.keep_running {
        let endpoints = json!({
            "broker": {"url": broker_url, "username": BROKER_USER, "password": broker_password},
            "etcd": d.etcd.split(',').collect::<Vec<_>>(),
            "cells": d.cells.iter().map(|(n, api, _)| json!({"name": n, "api_url": format!("http://127.0.0.1:{api}")})).collect::<Vec<_>>(),
            "routers": [{"host": "127.0.0.1", "http": format!("http://127.0.0.1:{router_http}"), "username": "admin", "password": router_password}],
            "directory": d.dir.path(),
        });
        if let Some(path) = &args.endpoints_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&endpoints)?)?;
            std::fs::rename(&tmp, path)?;
            say(&format!("endpoints written to {}", path.display()));
        } else {
            println!("{}", serde_json::to_string_pretty(&endpoints)?);
        }
        say("running; Ctrl-C stops everything and removes its containers");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return Ok(());
    }
    let result = walkthrough(&mut d, &broker_url, &broker_password, args.short).await;
    if result.is_err() {
        d.diagnose();
    }
    result
}

async fn walkthrough(d: &mut Deployment, broker: &str, password: &str, short: bool) -> anyhow::Result<()> {
    let catalog = osb("GET", &format!("{broker}/v2/catalog"), password, None).await?.1;
    let plan = catalog["services"][0]["plans"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "ha-2"))
        .context("no ha-2 plan")?;
    let (service_id, plan_id) = (catalog["services"][0]["id"].clone(), plan["id"].clone());
    let inst = format!("{broker}/v2/service_instances/demo");

    say("provisioning instance `demo` (plan ha-2: two members on distinct cells)");
    let t0 = Instant::now();
    let body = json!({"service_id": service_id, "plan_id": plan_id, "organization_guid": "org", "space_guid": "space"});
    let (status, _) = osb("PUT", &format!("{inst}?accepts_incomplete=true"), password, Some(body)).await?;
    anyhow::ensure!(status == 202, "provision answered {status}");
    let mut last = String::new();
    loop {
        let (_, op) = osb("GET", &format!("{inst}/last_operation"), password, None).await?;
        let desc = op["description"].as_str().unwrap_or("").to_string();
        if desc != last {
            println!("    {:5.1}s  {}: {desc}", t0.elapsed().as_secs_f64(), op["state"].as_str().unwrap_or("?"));
            last = desc;
        }
        match op["state"].as_str() {
            Some("succeeded") => break,
            Some("failed") => bail!("provisioning failed: {last}"),
            _ if t0.elapsed() > Duration::from_secs(180) => bail!("provisioning took over 3 minutes"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let provisioned = t0.elapsed();

    say("binding: a role of its own, credentials pointing at the router");
    let (status, bind) = osb(
        "PUT",
        &format!("{inst}/service_bindings/app1"),
        password,
        Some(json!({"service_id": service_id, "plan_id": plan_id})),
    )
    .await?;
    anyhow::ensure!(status == 201, "bind answered {status}");
    let c = &bind["credentials"];
    // TLS is on by default: the app keeps `ca_cert` in a file for libpq's sslrootcert.
    let ca_file = d.dir.path().join("binding-ca.crt");
    std::fs::write(&ca_file, c["ca_cert"].as_str().context("no ca_cert")?)?;
    let uri = format!("{}&sslrootcert={}", c["uri"].as_str().context("no uri")?, ca_file.display());
    println!(
        "    hostname {}  port {}  name {}  username {}  password <hidden>  sslmode {}",
        c["hostname"], c["port"], c["name"], c["username"], c["sslmode"]
    );
    let tls = kit::psql(&uri, "set role none; select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(tls.ends_with('t'), "the session through the router is not on TLS: {tls}");
    println!("    psql sslmode=verify-full sslrootcert=<ca_cert> through the router: TLS, certificate verified");

    say("writing through the router");
    kit::psql(&uri, "create table demo(id int primary key, at timestamptz default now())")
        .map_err(anyhow::Error::msg)?;
    let mut acked: usize = 0;
    for i in 1..=if short { 10 } else { 100 } {
        kit::psql(&uri, &format!("insert into demo(id) values ({i})")).map_err(anyhow::Error::msg)?;
        acked += 1;
    }
    println!("    {acked} rows written");
    println!("    pgcell leaders:  {}", d.pgcell(&["leaders"]).trim());
    println!("    pgcell states:   {}", d.pgcell(&["states"]).trim());

    let leader = d.pgcell(&["leaders"]);
    let leader_port: u16 = leader.split_whitespace().nth(3).and_then(|p| p.parse().ok()).context("no leader")?;
    let idx =
        CELL_PORTS.iter().position(|(a, b)| (*a..=*b).contains(&leader_port)).context("leader on no known cell")?;
    let lost = d.cells[idx].0.clone();
    say(&format!("losing the leader's cell {lost}: its agent and containers killed"));
    d.kill_cell(idx);
    let t1 = Instant::now();
    let mut n = acked;
    loop {
        n += 1;
        if kit::psql(&uri, &format!("insert into demo(id) values ({n})")).is_ok() {
            acked += 1;
            break;
        }
        println!("    {:5.1}s  {}", t1.elapsed().as_secs_f64(), d.pgcell(&["states"]).trim());
        anyhow::ensure!(t1.elapsed() < Duration::from_secs(60), "no failover within a minute");
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let failover = t1.elapsed();
    println!("    first write on the new primary after {:.1}s", failover.as_secs_f64());
    println!("    pgcell leaders:  {}", d.pgcell(&["leaders"]).trim());

    say(&format!("starting {lost} again"));
    d.start_cell(idx)?;
    let t2 = Instant::now();
    let rejoin = if short {
        None
    } else {
        loop {
            let states = d.pgcell(&["states"]);
            if states.matches("/running/").count() == 2 && states.contains("replica/running") {
                println!("    {}", states.trim());
                break Some(t2.elapsed());
            }
            anyhow::ensure!(
                t2.elapsed() < Duration::from_secs(120),
                "the member did not rejoin within 2 minutes: {states}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let rows: usize = kit::psql(&uri, "select count(*) from demo").map_err(anyhow::Error::msg)?.parse()?;

    println!();
    println!("summary");
    println!(
        "  {:<44} {:>10}",
        "provision ha-2 to usable through the router",
        format!("{:.1} s", provisioned.as_secs_f64())
    );
    println!("  {:<44} {:>10}", "leader's cell lost to first write", format!("{:.1} s", failover.as_secs_f64()));
    match rejoin {
        Some(r) => {
            println!("  {:<44} {:>10}", "cell back to member running as replica", format!("{:.1} s", r.as_secs_f64()))
        }
        None => println!("  {:<44} {:>10}", "cell back to member running as replica", "skipped"),
    }
    println!("  {:<44} {:>10}", "writes acknowledged", acked);
    println!("  {:<44} {:>10}", "rows on the primary", rows);
    println!("  {:<44} {:>10}", "acknowledged writes lost", acked.saturating_sub(rows));
    anyhow::ensure!(rows >= acked, "acknowledged writes were lost");
    Ok(())
}
