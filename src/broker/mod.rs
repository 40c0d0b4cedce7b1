//! The Open Service Broker (v2.17): stateless, everything in etcd. Requests
//! write the desired state (spec, operation); every broker daemon's [`driver`]
//! moves every operation in progress forward in the background, one [`engine`]
//! step at a time under an etcd lock, so any broker can finish what another
//! began and nothing waits for a poll.

pub mod catalog;
pub mod driver;
pub mod engine;
pub mod heal;
pub mod healer;
pub mod model;
pub mod place;
pub mod sql;
