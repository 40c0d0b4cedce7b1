//! Plain logic of a cell: what to do to make Docker match the placements.

pub mod certs;
pub mod drain;
pub mod env;
pub mod etcd_files;
pub mod files;
pub mod machine;
pub mod member;
pub mod reconcile;
