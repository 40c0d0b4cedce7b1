//! Patroni: the configuration pgcell renders for each member, and the view of a
//! cluster read from what Patroni writes under `/service/<scope>/`.

pub mod config;
pub mod view;

pub use view::{ClusterView, MemberStatus};
pub mod rest;
