//! The Open Service Broker (v2.17): stateless, everything in etcd. Requests
//! write the desired state (spec, placements, operation); [`engine`] drives an
//! operation forward whenever anyone asks for it, so any broker can finish
//! what another began.

pub mod catalog;
pub mod daemon;
pub mod engine;
pub mod model;
pub mod place;
pub mod sql;
