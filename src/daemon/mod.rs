//! Daemon wiring: the one layer that imports both the actors and the HTTP
//! servers. Each `run` builds a daemon from its configuration; each `serve`
//! takes an already-bound listener, so tests can bind port 0 and run a daemon
//! in-process.

pub mod broker;
pub mod cell;
pub mod router;
