//! The routing mesh: every instance's router port forwards to its current
//! primary. [`table`] decides the lock holder from etcd; [`gate`] holds new
//! connections while it is still promoting; [`proxy`] moves the bytes.

pub mod fence;
pub mod gate;
pub mod proxy;
pub mod table;
