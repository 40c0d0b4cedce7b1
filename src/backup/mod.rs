//! Backups of every instance: what the cell of an instance's leader does when
//! ([`state`], plain), how it does it ([`run`]: `docker exec` of pgBackRest in
//! the leader's container, the result published to etcd), and which restore
//! targets a stanza can honour ([`target`], plain). See docs/backups.md.

pub mod run;
pub mod state;
pub mod target;
