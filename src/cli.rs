//! The command line: one binary, a subcommand per daemon or tool.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, CellConfig};

#[derive(Parser, Debug)]
#[command(
    name = "pgcell",
    version,
    about = "High-availability PostgreSQL on a fleet of cells (Patroni + etcd + Docker)"
)]
pub struct Cli {
    /// etcd endpoints, comma-separated (default: PGCELL_ETCD_ENDPOINTS, then the config file, then 127.0.0.1:2379)
    #[arg(long, global = true, value_name = "ENDPOINTS")]
    pub etcd: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a cell agent: runs this cell's PostgreSQL members in Docker and serves the per-cell broker API
    Cell {
        /// TOML configuration file (every key optional; PGCELL_* variables override it)
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run a router: one port per instance, forwarded to its current primary
    Router {
        /// TOML configuration file (every key optional; PGCELL_* variables override it)
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print each cluster's leader: `cf-1 postgres:// <host> <port> postgres`
    Leaders,
    /// Print each cluster's members: `cf-1 master/running/<host> replica/running/<host> `
    States,
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGCELL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Endpoints from `--etcd`, else the environment, else `fallback`.
fn etcd_endpoints(flag: Option<&str>, fallback: Vec<String>) -> Vec<String> {
    match flag.map(String::from).or_else(|| std::env::var(config::ETCD_ENV).ok()) {
        Some(s) => config::split_endpoints(&s),
        None => fallback,
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Cell { config } => {
            let mut cfg = CellConfig::load(config.as_deref())?;
            if let Some(flag) = cli.etcd.as_deref() {
                cfg.etcd_endpoints = config::split_endpoints(flag);
                cfg.validate()?;
            }
            actix::System::new().block_on(crate::cell::daemon::run(cfg))
        }
        Command::Router { config } => {
            let mut cfg = config::RouterConfig::load(config.as_deref())?;
            if let Some(flag) = cli.etcd.as_deref() {
                cfg.etcd_endpoints = config::split_endpoints(flag);
            }
            actix::System::new().block_on(crate::router::daemon::run(cfg))
        }
        Command::Leaders | Command::States => {
            let endpoints = etcd_endpoints(cli.etcd.as_deref(), vec!["127.0.0.1:2379".into()]);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let lines = rt.block_on(async {
                let mut client = crate::etcd::connect(&endpoints).await?;
                let clusters = crate::ops::read_clusters(&mut client).await?;
                anyhow::Ok(match cli.command {
                    Command::Leaders => crate::ops::leaders(&clusters),
                    _ => crate::ops::states(&clusters),
                })
            })?;
            for line in lines {
                println!("{line}");
            }
            Ok(())
        }
    }
}
