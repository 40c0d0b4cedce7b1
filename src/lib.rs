//! pgcell: high-availability PostgreSQL clusters on a fleet of cells.
//!
//! Layout (see `docs/architecture.md` for the keys in etcd):
//!
//! - [`config`]: TOML configuration with `PGCELL_*` environment overrides.
//! - [`names`]: what an instance, a scope, a member and a container are called.
//! - [`etcd`]: the key layout under `/pgcell/`, transactions (secrets, port slots,
//!   placements) and a prefix watcher that resumes after etcd restarts.
//! - [`docker`]: the Docker Engine through bollard: member containers and their labels.
//! - [`patroni`]: rendering Patroni's configuration and reading what Patroni writes
//!   under `/service/<scope>/`.
//! - [`broker`]: the Open Service Broker: catalog, placement, operations, SQL for bindings.
//! - [`cell`]: plain logic of a cell (reconciling desired members with containers).
//! - [`actors`]: the actix actors, thin shells over the plain structs above.
//! - [`http`]: the per-cell broker API, health and the OSB error body.
//! - [`router`]: the routing mesh: the table from etcd, the data path in plain tokio.
//! - [`ops`]: operator tools (`pgcell leaders`, `pgcell states`).
#![forbid(unsafe_code)]

pub mod actors;
pub mod backoff;
pub mod broker;
pub mod cell;
pub mod cli;
pub mod config;
pub mod docker;
pub mod etcd;
pub mod http;
pub mod names;
pub mod ops;
pub mod patroni;
pub mod router;
pub mod secret;
