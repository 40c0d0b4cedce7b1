//! Prometheus text format, and the process-wide counters every daemon shares.

use std::fmt::Write;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dashmap::DashMap;

/// Counters of events, across the process.
#[derive(Default)]
pub struct Counters {
    pub watch_reconnects: AtomicU64,
    pub docker_reconnects: AtomicU64,
    pub actor_restarts: AtomicU64,
    pub failovers_seen: AtomicU64,
    pub containers_died: AtomicU64,
    pub leader_locks_ended: AtomicU64,
    pub replacements_started: AtomicU64,
    pub replacements_finished: AtomicU64,
    /// Members of cells that are gone that cannot be replaced now (a gauge).
    pub heal_stuck: AtomicU64,
    /// Member reservations lost to a concurrent one (then chosen again).
    pub placement_races: AtomicU64,
    /// Operations failed because the fleet had no room for their members.
    pub placement_shortages: AtomicU64,
    /// (endpoint, status) → requests.
    pub requests: DashMap<(String, u16), u64>,
}

pub static COUNTERS: LazyLock<Counters> = LazyLock::new(Counters::default);

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// A sample: metric name, labels, value.
pub type Sample = (&'static str, Vec<(&'static str, String)>, u64);

/// Renders samples (grouped by name, in the order given) in Prometheus text format.
pub fn render(samples: &[Sample], kinds: &[(&'static str, &'static str)]) -> String {
    let mut out = String::new();
    for (name, kind) in kinds {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (n, labels, v) in samples.iter().filter(|s| s.0 == *name) {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{n} {v}");
            } else {
                let _ = writeln!(out, "{n}{{{}}} {v}", labels.join(","));
            }
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The shared counters as samples.
pub fn counter_samples() -> (Vec<Sample>, Vec<(&'static str, &'static str)>) {
    let c = &*COUNTERS;
    let mut samples: Vec<Sample> = vec![
        ("pgcell_watch_reconnects_total", vec![], c.watch_reconnects.load(Relaxed)),
        ("pgcell_docker_event_reconnects_total", vec![], c.docker_reconnects.load(Relaxed)),
        ("pgcell_actor_restarts_total", vec![], c.actor_restarts.load(Relaxed)),
        ("pgcell_failovers_seen_total", vec![], c.failovers_seen.load(Relaxed)),
        ("pgcell_containers_died_total", vec![], c.containers_died.load(Relaxed)),
        ("pgcell_leader_locks_ended_total", vec![], c.leader_locks_ended.load(Relaxed)),
        ("pgcell_replacements_started_total", vec![], c.replacements_started.load(Relaxed)),
        ("pgcell_replacements_finished_total", vec![], c.replacements_finished.load(Relaxed)),
        ("pgcell_members_unreplaceable", vec![], c.heal_stuck.load(Relaxed)),
        ("pgcell_placement_races_total", vec![], c.placement_races.load(Relaxed)),
        ("pgcell_placement_shortages_total", vec![], c.placement_shortages.load(Relaxed)),
    ];
    let mut reqs: Vec<_> = c.requests.iter().map(|e| (e.key().clone(), *e.value())).collect();
    reqs.sort();
    for ((endpoint, status), n) in reqs {
        samples.push(("pgcell_http_requests_total", vec![("endpoint", endpoint), ("status", status.to_string())], n));
    }
    let kinds = vec![
        ("pgcell_watch_reconnects_total", "counter"),
        ("pgcell_docker_event_reconnects_total", "counter"),
        ("pgcell_actor_restarts_total", "counter"),
        ("pgcell_failovers_seen_total", "counter"),
        ("pgcell_containers_died_total", "counter"),
        ("pgcell_leader_locks_ended_total", "counter"),
        ("pgcell_replacements_started_total", "counter"),
        ("pgcell_replacements_finished_total", "counter"),
        ("pgcell_members_unreplaceable", "gauge"),
        ("pgcell_placement_races_total", "counter"),
        ("pgcell_placement_shortages_total", "counter"),
        ("pgcell_http_requests_total", "counter"),
    ];
    (samples, kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let samples = vec![
            ("a_total", vec![], 3),
            ("b", vec![("state", "run\"ning".to_string())], 2),
            ("b", vec![("state", "exited".to_string())], 0),
        ];
        let text = render(&samples, &[("a_total", "counter"), ("b", "gauge")]);
        assert_eq!(
            text,
            "# TYPE a_total counter\na_total 3\n# TYPE b gauge\nb{state=\"run\\\"ning\"} 2\nb{state=\"exited\"} 0\n"
        );
    }
}
