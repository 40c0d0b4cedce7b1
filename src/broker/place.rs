//! Choosing cells for new members: distinct cells, most free capacity first,
//! spread across zones when cells have zones.

use std::collections::BTreeSet;

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
}
