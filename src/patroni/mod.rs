//! Patroni: the configuration pgcell renders for each member, and the view of a
//! cluster read from what Patroni writes under `/service/<scope>/`.

pub mod config;
pub mod etcd3;
pub mod ssl;
pub mod view;

pub use view::{ClusterView, Health, MemberStatus};
pub mod rest;

use crate::etcd::{Client, keys, store};

/// Reads one cluster's view from etcd.
pub async fn read_view(client: &mut Client, scope: &str) -> anyhow::Result<ClusterView> {
    let prefix = keys::patroni_scope(scope);
    let (kvs, _) = store::get_prefix(client, &prefix).await?;
    let mut view = ClusterView::new(scope);
    for (k, v) in &kvs {
        view.apply(&k[prefix.len()..], Some(v));
    }
    Ok(view)
}
