//! The fleet's capacity, read at one revision, and the reservation of member
//! slots against that read in one transaction.
//!
//! A cell's capacity is its slots (`min(capacity, ports / 2)`); a slot is
//! held by `/pgcell/ports/<cell>/<slot>` from placement until the member's
//! purge is done, so a member being removed still counts. A reservation
//! commits only if nothing was added to any chosen cell since the read and
//! no chosen cell re-registered: the free counts the placement was chosen on
//! are still true when it commits, so no cell ever goes over capacity, and
//! several members of one instance are reserved all together or not at all.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::keys;
use super::store::{CellPorts, CellRecord, Placement};
use crate::config::parse_port_range;
use crate::metrics::Sample;

/// One registered cell and the slots held on it.
#[derive(Clone, Debug)]
pub struct CellUsage {
    pub record: CellRecord,
    /// Revision of the record read: a cell that re-registers (capacity may
    /// have changed) or leaves meanwhile makes a reservation on it fail.
    pub record_rev: i64,
    /// `None` when the cell registered a port range that does not parse: it takes nothing.
    pub ports: Option<CellPorts>,
    /// Slots held, members being purged included.
    pub used: BTreeSet<u32>,
}

impl CellUsage {
    pub fn total(&self) -> u32 {
        self.ports.as_ref().map_or(0, |p| p.slots)
    }

    /// Slots held may exceed a capacity lowered since: never negative.
    pub fn free(&self) -> u32 {
        self.total().saturating_sub(self.used.len() as u32)
    }

    /// The lowest slot not held.
    fn free_slot(&self) -> Option<u32> {
        (0..self.total()).find(|s| !self.used.contains(s))
    }
}

/// Every registered cell's usage, and slots held on cells that are not registered (lost).
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    pub cells: Vec<CellUsage>,
    pub unregistered: BTreeMap<String, usize>,
    /// Revision of the slot read: a reservation fails if a chosen cell got a slot after it.
    pub rev: i64,
}

impl Fleet {
    pub fn cell(&self, name: &str) -> Option<&CellUsage> {
        self.cells.iter().find(|c| c.record.name == name)
    }

    pub fn total(&self) -> u32 {
        self.cells.iter().map(CellUsage::total).sum()
    }

    pub fn free(&self) -> u32 {
        self.cells.iter().map(CellUsage::free).sum()
    }

    /// Gauges of the fleet's capacity (what `/metrics` of the broker shows).
    pub fn samples(&self) -> (Vec<Sample>, Vec<(&'static str, &'static str)>) {
        let mut samples: Vec<Sample> = vec![
            ("pgcell_fleet_cells", vec![], self.cells.len() as u64),
            ("pgcell_fleet_slots", vec![], u64::from(self.total())),
            ("pgcell_fleet_slots_free", vec![], u64::from(self.free())),
        ];
        for c in &self.cells {
            let cell = || vec![("cell", c.record.name.clone())];
            samples.push(("pgcell_cell_slots", cell(), u64::from(c.total())));
            samples.push(("pgcell_cell_slots_used", cell(), c.used.len() as u64));
        }
        let kinds = [
            "pgcell_fleet_cells",
            "pgcell_fleet_slots",
            "pgcell_fleet_slots_free",
            "pgcell_cell_slots",
            "pgcell_cell_slots_used",
        ];
        (samples, kinds.iter().map(|k| (*k, "gauge")).collect())
    }
}

/// Reads the registered cells, then the slots held (the revision a reservation compares against).
pub async fn read(client: &mut Client) -> anyhow::Result<Fleet> {
    let opts = || Some(GetOptions::new().with_prefix());
    let resp = client.get(keys::cells(), opts()).await.context("etcd get cells")?;
    let mut cells: Vec<CellUsage> = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let record: CellRecord = match serde_json::from_slice(kv.value()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping a cell record that does not parse");
                    return None;
                }
            };
            let ports = parse_port_range(&record.port_range).ok().map(|r| CellPorts::new(&record.name, r, record.capacity));
            Some(CellUsage { record, record_rev: kv.mod_revision(), ports, used: BTreeSet::new() })
        })
        .collect();
    let resp = client.get(keys::port_slots(), opts().map(|o| o.with_keys_only())).await.context("etcd get slots")?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
    let mut unregistered = BTreeMap::<String, usize>::new();
    for kv in resp.kvs() {
        let Some((cell, slot)) = std::str::from_utf8(kv.key()).ok().and_then(keys::port_slot_of) else { continue };
        match cells.iter_mut().find(|c| c.record.name == cell) {
            Some(c) => {
                c.used.insert(slot);
            }
            None => *unregistered.entry(cell.to_string()).or_default() += 1,
        }
    }
    Ok(Fleet { cells, unregistered, rev })
}

/// Reserves a slot for each wanted member (`cell` and instance set; slot and
/// ports filled in here) against `fleet`, all in one transaction. `Ok(None)`:
/// the fleet changed since it was read (another placement won a chosen cell,
/// or a cell re-registered); read again and choose again. Each member's `env`
/// (`keys::member_env`) is written with its placement.
pub async fn reserve(
    client: &mut Client,
    fleet: &Fleet,
    wants: Vec<Placement>,
    env: &[u8],
) -> anyhow::Result<Option<Vec<Placement>>> {
    let mut compares = vec![];
    let mut puts = vec![];
    let mut placed = vec![];
    let cells: BTreeSet<&str> = wants.iter().map(|w| w.cell.as_str()).collect();
    anyhow::ensure!(cells.len() == wants.len(), "members of one reservation must be on distinct cells");
    for mut want in wants {
        let cell = fleet.cell(&want.cell).with_context(|| format!("cell {} is not in the fleet read", want.cell))?;
        let ports = cell.ports.as_ref().with_context(|| format!("cell {} has no usable port range", want.cell))?;
        let slot = cell.free_slot().with_context(|| format!("cell {} has no free slot", want.cell))?;
        (want.pg_port, want.api_port) = ports.ports(slot);
        want.slot = slot;
        let key = keys::placement(&want.cell, &want.instance_id);
        let slot_key = keys::port_slot(&want.cell, slot);
        compares.extend([
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Compare::create_revision(slot_key.as_str(), CompareOp::Equal, 0),
            Compare::mod_revision(keys::cell(&want.cell), CompareOp::Equal, cell.record_rev),
            // Every slot key of the cell is as old as the read: none was taken since.
            Compare::mod_revision(keys::cell_ports(&want.cell), CompareOp::Less, fleet.rev + 1).with_prefix(),
        ]);
        puts.extend([
            TxnOp::put(key.as_str(), serde_json::to_vec(&want)?, None),
            TxnOp::put(slot_key.as_str(), want.member.as_str(), None),
            TxnOp::put(keys::member_env(&want.cell, &want.instance_id), env, None),
        ]);
        placed.push(want);
    }
    let txn = Txn::new().when(compares).and_then(puts);
    let ok = client.txn(txn).await.context("etcd txn (reserve members)")?.succeeded();
    Ok(ok.then_some(placed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_gauges() {
        let record = CellRecord {
            name: "a".into(),
            deployment: "d".into(),
            advertise_host: "h".into(),
            api_url: String::new(),
            port_range: "30000-30009".into(),
            capacity: 32,
            zone: String::new(),
        };
        let a = CellUsage {
            ports: Some(CellPorts::new("a", (30000, 30009), 32)),
            record,
            record_rev: 3,
            used: [0, 3].into(),
        };
        assert_eq!(a.free_slot(), Some(1));
        let fleet = Fleet { cells: vec![a], ..Fleet::default() };
        let (samples, kinds) = fleet.samples();
        let text = crate::metrics::render(&samples, &kinds);
        for line in [
            "pgcell_fleet_cells 1",
            "pgcell_fleet_slots 5",
            "pgcell_fleet_slots_free 3",
            "pgcell_cell_slots{cell=\"a\"} 5",
            "pgcell_cell_slots_used{cell=\"a\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
