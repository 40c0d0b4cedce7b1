//! The routing mesh: every instance's router port forwards to its current
//! primary. [`table`] decides the routes from etcd; [`proxy`] moves the bytes.

pub mod proxy;
pub mod table;
