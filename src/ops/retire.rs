//! `pgcell cells retire <cell>`: asks the healer (in every broker) to empty a
//! cell, after checking the other cells can take its members, then follows it
//! until the cell holds nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::broker::heal::{self, Heal};
use crate::broker::healer::read_fleet;
use crate::etcd::{Client, keys, store};
use crate::patroni::view::Health;

pub async fn retire(client: &mut Client, cell: &str, timeout: Duration) -> anyhow::Result<()> {
    let (mut fleet, _) = read_fleet(client).await?;
    let held: Vec<&store::Placement> =
        fleet.placements.iter().map(|(p, _)| p).filter(|p| p.cell == cell && !p.purge).collect();
    let members: Vec<String> = held.iter().map(|p| p.member.clone()).collect();
    let scopes: BTreeSet<String> = held.iter().map(|p| p.scope.clone()).collect();
    anyhow::ensure!(
        fleet.live.contains_key(cell) || !members.is_empty(),
        "no cell {cell:?}: it has no lease and no member (see `pgcell cells`)"
    );
    // The healer's own decision, with this cell retiring: every member must find a cell.
    fleet.retiring.insert(cell.to_string());
    let refused: Vec<String> = heal::plan(&fleet, 0, 0)
        .into_iter()
        .filter_map(|h| match h {
            Heal::Stuck { old, why } if old.cell == cell => Some(why),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        refused.is_empty(),
        "refused: the other cells cannot take every member of {cell} (nothing was changed):\n  {}",
        refused.join("\n  ")
    );
    client.put(keys::retiring(cell), "", None).await.context("etcd put (retiring)")?;
    super::say(format_args!("{cell}: retiring; {} member(s) to move: {}", members.len(), members.join(" ")));
    let start = Instant::now();
    let mut last = BTreeSet::new();
    let mut last_waiting = vec![];
    loop {
        let left: BTreeSet<String> = store::list_json::<store::Placement>(client, &keys::cell_placements(cell))
            .await?
            .into_iter()
            .map(|p| if p.purge { format!("{} (purging)", p.member) } else { p.member })
            .collect();
        if left != last {
            let replaced: Vec<heal::Replacement> = store::list_json(client, &keys::replacements()).await?;
            let moving: Vec<String> = replaced
                .iter()
                .filter(|r| r.old_cell == cell)
                .map(|r| format!("{} -> {} on {}", r.old_member, r.new_member, r.new_cell))
                .collect();
            super::say(format_args!(
                "[{:>5.1}s] {cell}: {} member(s) left{}",
                start.elapsed().as_secs_f64(),
                left.len(),
                if moving.is_empty() { String::new() } else { format!("; moving: {}", moving.join(", ")) }
            ));
            last = left.clone();
        }
        // The healer purges a member once its replacement streams; Patroni names the
        // new synchronous standby a loop later. "Fully redundant" waits for that.
        if left.is_empty() {
            let waiting = not_redundant(client, &scopes).await?;
            if waiting.is_empty() {
                super::say(format_args!(
                    "{cell}: empty; every cluster it held is fully redundant elsewhere. It can be stopped for good."
                ));
                return Ok(());
            }
            if waiting != last_waiting {
                super::say(format_args!(
                    "[{:>5.1}s] {cell}: empty; waiting for {}",
                    start.elapsed().as_secs_f64(),
                    waiting.join(", ")
                ));
                last_waiting = waiting;
            }
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "{cell}: still {} member(s){} after {} s; the retirement goes on (is a broker running? see its log)",
            left.len(),
            if last_waiting.is_empty() { String::new() } else { format!(", waiting for {}", last_waiting.join(", ")) },
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The clusters among `scopes` that could not fail over now, each with why
/// (`cf-x: no_sync_standby`). One deleted meanwhile (no placement left) is not waited for.
async fn not_redundant(client: &mut Client, scopes: &BTreeSet<String>) -> anyhow::Result<Vec<String>> {
    let views = super::read_clusters(client).await?;
    Ok(scopes
        .iter()
        .filter_map(|s| views.get(s).filter(|v| v.expected_members.is_some()).map(|v| (s, v.health())))
        .filter(|(_, h)| *h != Health::Healthy)
        .map(|(s, h)| format!("{s}: {}", h.as_str()))
        .collect())
}
