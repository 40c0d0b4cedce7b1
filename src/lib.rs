//! pgcell: high-availability PostgreSQL clusters on a fleet of cells.
//!
//! Layers, lowest first; a module imports only from its own layer's lower
//! entries or lower layers (`tests/layers.rs` checks it; `docs/architecture.md`
//! draws it):
//!
//! 1. leaves: [`names`], [`backoff`], [`secret`], [`tls`] (crypto provider, certificates), [`metrics`] (every layer counts), [`config`].
//! 2. adapters: [`etcd`] (key layout, transactions, watches), [`pgbackrest`]
//!    (its configuration, commands and `info`), [`patroni`] (its configuration
//!    and what it writes in etcd), [`docker`] (member containers, `exec`).
//! 3. logic, plain structs and async steps, no actors or HTTP: [`cell`]
//!    (reconcile, drain, member files), [`router`] (routing table, data path),
//!    [`backup`] (what a leader's cell backs up when, restore targets and
//!    windows), [`broker`] (catalog, model, placement, engine, background driver).
//! 4. [`actors`]: actix shells over the logic.
//! 5. [`http`]: the per-cell API, the OSB endpoints, auth, the OSB error body.
//! 6. [`daemon`]: wiring of `pgcell cell`, `router`, `broker` (actors + HTTP).
//! 7. [`ops`] (operator tools) and [`cli`].
#![forbid(unsafe_code)]

pub mod actors;
pub mod backoff;
pub mod backup;
pub mod broker;
pub mod cell;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod etcd;
pub mod http;
pub mod metrics;
pub mod names;
pub mod ops;
pub mod patroni;
pub mod pgbackrest;
pub mod router;
pub mod secret;
pub mod tls;
