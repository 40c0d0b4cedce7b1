//! Choosing cells for new members: distinct cells, most free capacity first,
//! spread across zones when cells have zones. Plain functions: the engine
//! reads the fleet, chooses here, and reserves the choice in one etcd
//! transaction; a lost transaction reads again and chooses again.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::etcd::fleet::Fleet;

#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub zone: String,
    pub free: u32,
}

/// Picks `n` cells for new members of an instance that already has members
/// on `taken` (cell names) in `zones_used`. Returns fewer when not enough cells fit.
pub fn choose(cells: &[Candidate], taken: &BTreeSet<String>, zones_used: &BTreeSet<String>, n: usize) -> Vec<String> {
    let mut zones = zones_used.clone();
    let mut pool: Vec<&Candidate> = cells.iter().filter(|c| c.free > 0 && !taken.contains(&c.name)).collect();
    let mut out = vec![];
    while out.len() < n {
        // A new zone beats more capacity; then more capacity; then the name, for a stable order.
        let best = pool
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| {
                let new_zone = |c: &Candidate| c.zone.is_empty() || !zones.contains(&c.zone);
                (new_zone(a), a.free, std::cmp::Reverse(&a.name)).cmp(&(
                    new_zone(b),
                    b.free,
                    std::cmp::Reverse(&b.name),
                ))
            })
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        let c = pool.swap_remove(i);
        zones.insert(c.zone.clone());
        out.push(c.name.clone());
    }
    out
}

/// The registered cells as candidates, with the capacity left after every
/// reservation committed before the fleet was read.
pub fn candidates(fleet: &Fleet) -> Vec<Candidate> {
    fleet
        .cells
        .iter()
        .map(|c| Candidate { name: c.record.name.clone(), zone: c.record.zone.clone(), free: c.free() })
        .collect()
}

/// Why `need` more members of a plan of `members` do not fit: what is
/// missing, and what the fleet has (the fullest cells last, at most a dozen named).
pub fn shortage(cells: &[Candidate], taken: &BTreeSet<String>, members: usize, need: usize) -> String {
    let usable: Vec<&Candidate> = cells.iter().filter(|c| c.free > 0 && !taken.contains(&c.name)).collect();
    let free: u32 = cells.iter().map(|c| c.free).sum();
    let mut by_free: Vec<&Candidate> = cells.iter().collect();
    by_free.sort_by_key(|c| (std::cmp::Reverse(c.free), c.name.clone()));
    let mut listed: Vec<String> = by_free.iter().take(12).map(|c| format!("{} {} free", c.name, c.free)).collect();
    if by_free.len() > 12 {
        listed.push(format!("{} more", by_free.len() - 12));
    }
    let already = if taken.is_empty() { String::new() } else { format!(" (besides the {} it has)", taken.len()) };
    format!(
        "not enough cells: the plan needs {members} members on distinct cells; {need} more needed{already}, \
         {} cell(s) with free capacity: {} short; fleet of {} cell(s), {free} free slot(s){}",
        usable.len(),
        need - usable.len().min(need),
        cells.len(),
        if listed.is_empty() { String::new() } else { format!(" ({})", listed.join(", ")) },
    )
}

/// Attempts at one placement before the step gives up and is retried later.
pub const MAX_ATTEMPTS: u32 = 32;

/// Wait before attempt `attempt + 1` after a lost reservation: 5 ms doubling up
/// to 160 ms, spread by `r` (uniform in 0..1) over half to one and a half
/// times that, so the losers of one race do not all meet again in the next.
pub fn retry_delay(attempt: u32, r: f64) -> Duration {
    let base = Duration::from_millis(5).saturating_mul(1 << attempt.min(5));
    base.mul_f64(0.5 + r.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, zone: &str, free: u32) -> Candidate {
        Candidate { name: name.into(), zone: zone.into(), free }
    }

    #[test]
    fn most_free_first_and_distinct() {
        let cells = [c("a", "", 1), c("b", "", 5), c("c", "", 3), c("d", "", 0)];
        assert_eq!(choose(&cells, &BTreeSet::new(), &BTreeSet::new(), 2), ["b", "c"]);
        let taken = ["b".to_string()].into();
        assert_eq!(choose(&cells, &taken, &BTreeSet::new(), 5), ["c", "a"], "never a taken or full cell");
    }

    #[test]
    fn zones_spread_before_capacity() {
        let cells = [c("a1", "z1", 9), c("a2", "z1", 8), c("b1", "z2", 1), c("c1", "z3", 2)];
        assert_eq!(choose(&cells, &BTreeSet::new(), &BTreeSet::new(), 3), ["a1", "c1", "b1"]);
        let used = ["z3".to_string()].into();
        assert_eq!(choose(&cells, &BTreeSet::new(), &used, 2), ["a1", "b1"]);
    }

    #[test]
    fn a_shortage_says_what_is_missing() {
        let cells = [c("a", "", 0), c("b", "", 1), c("c", "", 0)];
        let m = shortage(&cells, &BTreeSet::new(), 2, 2);
        assert!(m.starts_with("not enough cells: the plan needs 2 members on distinct cells; 2 more needed"), "{m}");
        assert!(m.contains("1 cell(s) with free capacity: 1 short; fleet of 3 cell(s), 1 free slot(s)"), "{m}");
        assert!(m.ends_with("(b 1 free, a 0 free, c 0 free)"), "{m}");
        let taken = ["b".to_string()].into();
        let m = shortage(&cells, &taken, 3, 1);
        assert!(m.contains("1 more needed (besides the 1 it has), 0 cell(s) with free capacity: 1 short"), "{m}");
        assert!(shortage(&[], &BTreeSet::new(), 1, 1).ends_with("fleet of 0 cell(s), 0 free slot(s)"));
    }

    #[test]
    fn retries_spread_and_stay_bounded() {
        assert_eq!(retry_delay(0, 0.0), Duration::from_micros(2500));
        assert_eq!(retry_delay(0, 1.0), Duration::from_micros(7500));
        assert_eq!(retry_delay(3, 0.5), Duration::from_millis(40));
        assert_eq!(retry_delay(40, 1.0), Duration::from_millis(240));
        let worst: Duration = (0..MAX_ATTEMPTS).map(|a| retry_delay(a, 1.0)).sum();
        assert!(worst < Duration::from_secs(8), "{worst:?}");
    }

    #[test]
    fn candidates_are_the_capacity_left() {
        use crate::etcd::fleet::CellUsage;
        use crate::etcd::store::{CellPorts, CellRecord};
        let cell = |name: &str, capacity: u32, used: &[u32]| CellUsage {
            record: CellRecord {
                name: name.into(),
                deployment: "d".into(),
                advertise_host: "h".into(),
                api_url: String::new(),
                port_range: "30000-30019".into(),
                capacity,
                zone: "z".into(),
            },
            record_rev: 1,
            ports: Some(CellPorts::new(name, (30000, 30019), capacity)),
            used: used.iter().copied().collect(),
        };
        // A capacity lowered under what is held counts as full, not negative.
        let fleet =
            Fleet { cells: vec![cell("a", 4, &[0, 2]), cell("b", 32, &[]), cell("c", 1, &[0, 5])], ..Fleet::default() };
        let free: Vec<u32> = candidates(&fleet).iter().map(|c| c.free).collect();
        assert_eq!(free, [2, 10, 0], "b is bounded by its 10 port slots");
        assert_eq!((fleet.total(), fleet.free()), (15, 12));
    }
}
