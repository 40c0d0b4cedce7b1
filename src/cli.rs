//! The command line: one binary, a subcommand per daemon or tool.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, CellConfig};
use crate::ops::say;

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
    /// Run the Open Service Broker (v2.17): places clusters across cells, hands out per-binding credentials
    Broker {
        /// TOML configuration file (every key optional but password; PGCELL_* variables override it)
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Switch every leader on a cell over to a healthy replica elsewhere (before a planned stop)
    Drain {
        /// The cell's name
        cell: String,
    },
    /// List the cells with their state, members and leaders; `retire` empties one
    Cells {
        #[command(subcommand)]
        action: Option<CellsAction>,
    },
    /// Print each cluster's leader: `cf-1 postgres:// <host> <port> postgres`
    Leaders,
    /// Print each cluster's members: `cf-1 master/running/<host> replica/running/<host> `
    States,
    /// List backups (type, size, duration) and the recoverable window, of every instance or one
    Backups {
        /// Only this instance
        instance: Option<String>,
    },
    /// Ask for a backup of an instance now (taken on its current leader); waits for it unless --no-wait
    Backup {
        instance: String,
        /// full, diff or incr
        #[arg(long, default_value = "full")]
        r#type: String,
        /// Return once asked, without waiting for the backup
        #[arg(long)]
        no_wait: bool,
    },
    /// Set up etcd's roles and users (broker, routers, each cell) and turn authentication on.
    /// Runs as root: PGCELL_ETCD_USERNAME=root, PGCELL_ETCD_PASSWORD (on an etcd without
    /// authentication yet, root is created with that password). The users' passwords come
    /// from PGCELL_ETCD_BROKER_PASSWORD, PGCELL_ETCD_ROUTER_PASSWORD and, per cell,
    /// PGCELL_ETCD_CELL_PASSWORD_<NAME> (upper case, '-' as '_'). TLS: PGCELL_ETCD_CA_FILE etc.
    EtcdRoles {
        #[command(subcommand)]
        action: EtcdRolesAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum EtcdRolesAction {
    /// Create or update the roles and users (idempotent), then enable authentication
    Apply {
        /// A cell to set up (repeat for each cell); its user is pgcell-cell-<NAME>
        #[arg(long = "cell", value_name = "NAME")]
        cells: Vec<String>,
    },
    /// Print each role's key ranges, without touching etcd
    Show {
        /// Also show the role of this cell
        #[arg(long = "cell", value_name = "NAME", default_value = "<name>")]
        cell: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CellsAction {
    /// Empty a cell for good (a VM being deleted): re-place each of its members
    /// on other cells, move its leaders away, wait until every cluster is fully
    /// redundant again, then report the cell empty. Refused when the other
    /// cells lack the capacity. Needs a running broker (its healer does the work).
    Retire {
        /// The cell's name
        cell: String,
        /// Give up waiting after this many seconds (the retirement goes on)
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGCELL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs in files and journals stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
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
            actix::System::new().block_on(crate::daemon::cell::run(cfg))
        }
        Command::Router { config } => {
            let mut cfg = config::RouterConfig::load(config.as_deref())?;
            if let Some(flag) = cli.etcd.as_deref() {
                cfg.etcd_endpoints = config::split_endpoints(flag);
            }
            actix::System::new().block_on(crate::daemon::router::run(cfg))
        }
        Command::Broker { config } => {
            let mut cfg = config::BrokerConfig::load(config.as_deref())?;
            if let Some(flag) = cli.etcd.as_deref() {
                cfg.etcd_endpoints = config::split_endpoints(flag);
            }
            actix::System::new().block_on(crate::daemon::broker::run(cfg))
        }
        Command::EtcdRoles { action: EtcdRolesAction::Show { cell } } => {
            for (user, grants) in [
                (crate::etcd::roles::BROKER_USER.to_string(), crate::etcd::roles::broker()),
                (crate::etcd::roles::ROUTER_USER.to_string(), crate::etcd::roles::router()),
                (crate::etcd::roles::cell_user(&cell), crate::etcd::roles::cell(&cell)),
            ] {
                say(format_args!("{user}:"));
                crate::etcd::roles::table(&grants).iter().for_each(|l| say(format_args!("  {l}")));
            }
            Ok(())
        }
        tool => {
            let endpoints = etcd_endpoints(cli.etcd.as_deref(), vec!["127.0.0.1:2379".into()]);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(run_tool(tool, &endpoints))
        }
    }
}

async fn run_tool(tool: Command, endpoints: &[String]) -> anyhow::Result<()> {
    let access = config::EtcdAccess::from_env()?;
    if let Command::EtcdRoles { action: EtcdRolesAction::Apply { cells } } = &tool {
        let users = crate::ops::etcd_roles::plan(cells, &|k| std::env::var(k).ok())?;
        return crate::ops::etcd_roles::apply(endpoints, &access, &users).await;
    }
    let mut client = crate::etcd::connect(endpoints, &access).await?;
    let lines = match tool {
        Command::Leaders => crate::ops::leaders(&crate::ops::read_clusters(&mut client).await?),
        Command::States => crate::ops::states(&crate::ops::read_clusters(&mut client).await?),
        Command::Cells { action: None } => {
            let (rows, degraded) = crate::ops::read_cells(&mut client).await?;
            let mut lines = crate::ops::cells_table(&rows);
            lines.extend(degraded);
            lines
        }
        Command::Cells { action: Some(CellsAction::Retire { cell, timeout }) } => {
            anyhow::ensure!(crate::names::is_safe(&cell), "{cell:?} is not a cell name (see `pgcell cells`)");
            return crate::ops::retire::retire(&mut client, &cell, std::time::Duration::from_secs(timeout)).await;
        }
        Command::Backups { instance } => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
            crate::ops::backups::backups_table(
                &crate::ops::backups::read_backups(&mut client, instance.as_deref()).await?,
                now,
            )
        }
        Command::Backup { instance, r#type, no_wait } => {
            let id = crate::ops::backups::request_backup(&mut client, &instance, &r#type).await?;
            if no_wait {
                say(format_args!("backup of {instance} requested ({id})"));
                return Ok(());
            }
            // The leader's cell answers within its refresh interval, then backs up.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
            loop {
                let states = crate::ops::backups::read_backups(&mut client, Some(&instance)).await?;
                if let Some(s) = states.iter().find(|s| s.done_request.as_deref() == Some(id.as_str())) {
                    let run = s.last_run.clone().unwrap_or_default();
                    anyhow::ensure!(run.ok, "backup of {instance} failed: {}", run.error.unwrap_or_default());
                    say(format_args!("backup of {instance} done: {} in {:.1} s", run.kind, run.secs));
                    return Ok(());
                }
                anyhow::ensure!(std::time::Instant::now() < deadline, "no answer to the backup request within an hour");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        Command::Drain { cell } => {
            anyhow::ensure!(crate::names::is_safe(&cell), "{cell:?} is not a cell name (see `pgcell cells`)");
            let outcomes = crate::cell::drain::drain(&mut client, &cell).await?;
            let left = outcomes
                .iter()
                .filter(|(_, o)| {
                    !matches!(o, crate::cell::drain::Outcome::SwitchedTo(_) | crate::cell::drain::Outcome::NotLeader)
                })
                .count();
            for (scope, outcome) in &outcomes {
                say(format_args!("{scope}: {outcome}"));
            }
            anyhow::ensure!(left == 0, "{left} cluster(s) still lead on {cell}: see above");
            return Ok(());
        }
        Command::Cell { .. } | Command::Router { .. } | Command::Broker { .. } | Command::EtcdRoles { .. } => {
            anyhow::bail!("daemons are started by run(), not as tools")
        }
    };
    for line in lines {
        say(line);
    }
    Ok(())
}
