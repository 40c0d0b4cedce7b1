//! Prometheus text format, and the process-wide counters every daemon shares.

use std::fmt::Write;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

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
    /// Expired leader leases revoked before etcd's own sweep.
    pub expired_leases_revoked: AtomicU64,
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

/// Upper bounds (ms) of the buckets of `pgcell_sync_standby_gap_ms`.
const GAP_BUCKETS_MS: [u64; 9] = [250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000];

/// Health of the clusters this process follows, and how long their windows without a
/// synchronous standby lasted: while one is open the cluster has no failover candidate.
#[derive(Default)]
pub struct ClusterHealth {
    /// scope → (health, since when it has had no synchronous standby).
    current: DashMap<String, (&'static str, Option<Instant>)>,
    /// Closed windows: count per bucket (the last one is +Inf), sum, count.
    gaps: std::sync::Mutex<([u64; GAP_BUCKETS_MS.len() + 1], u64, u64)>,
}

pub static HEALTH: LazyLock<ClusterHealth> = LazyLock::new(ClusterHealth::default);

impl ClusterHealth {
    /// Records a cluster's health (`state`, e.g. `healthy`); `no_sync` opens,
    /// or keeps open, its window without a synchronous standby, and its end
    /// closes (and measures) it.
    pub fn observe(&self, scope: &str, state: &'static str, no_sync: bool, now: Instant) {
        let since = self.current.get(scope).and_then(|e| e.1);
        let since = match (no_sync, since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
            (false, Some(t)) => {
                self.close_gap(scope, now.duration_since(t).as_millis() as u64);
                None
            }
            (false, None) => None,
        };
        self.current.insert(scope.to_string(), (state, since));
    }

    /// The cluster is no longer followed here.
    pub fn forget(&self, scope: &str) {
        self.current.remove(scope);
    }

    fn close_gap(&self, scope: &str, ms: u64) {
        tracing::info!(scope, gap_ms = ms, "synchronous standby named again");
        let mut g = self.gaps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = GAP_BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(GAP_BUCKETS_MS.len());
        g.0[i] += 1;
        g.1 += ms;
        g.2 += 1;
    }

    /// `pgcell_cluster_health{scope,state}`, `pgcell_sync_standby_gap_open_ms{scope}` and
    /// the `pgcell_sync_standby_gap_ms` histogram.
    pub fn samples(&self, now: Instant) -> (Vec<Sample>, Vec<(&'static str, &'static str)>) {
        let mut rows: Vec<_> = self.current.iter().map(|e| (e.key().clone(), e.value().0, e.value().1)).collect();
        rows.sort();
        let mut samples: Vec<Sample> = vec![];
        for (scope, state, since) in &rows {
            samples.push(("pgcell_cluster_health", vec![("scope", scope.clone()), ("state", state.to_string())], 1));
            let open = since.map_or(0, |t| now.duration_since(t).as_millis() as u64);
            samples.push(("pgcell_sync_standby_gap_open_ms", vec![("scope", scope.clone())], open));
        }
        let g = *self.gaps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut cumulative = 0;
        for (i, n) in g.0.iter().enumerate() {
            cumulative += n;
            let le = GAP_BUCKETS_MS.get(i).map_or("+Inf".to_string(), u64::to_string);
            samples.push(("pgcell_sync_standby_gap_ms_bucket", vec![("le", le)], cumulative));
        }
        samples.push(("pgcell_sync_standby_gap_ms_sum", vec![], g.1));
        samples.push(("pgcell_sync_standby_gap_ms_count", vec![], g.2));
        let kinds = vec![
            ("pgcell_cluster_health", "gauge"),
            ("pgcell_sync_standby_gap_open_ms", "gauge"),
            ("pgcell_sync_standby_gap_ms", "histogram"),
        ];
        (samples, kinds)
    }
}

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
        let histogram_part = |n: &str| {
            *kind == "histogram" && n.strip_prefix(name).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
        };
        for (n, labels, v) in samples.iter().filter(|s| s.0 == *name || histogram_part(s.0)) {
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
        ("pgcell_expired_leases_revoked_total", vec![], c.expired_leases_revoked.load(Relaxed)),
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
        ("pgcell_expired_leases_revoked_total", "counter"),
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

    #[test]
    fn windows_without_a_sync_standby_are_measured() {
        let h = ClusterHealth::default();
        let (healthy, no_sync) = (("healthy", false), ("no_sync_standby", true));
        let t0 = Instant::now();
        h.observe("cf-1", healthy.0, healthy.1, t0);
        h.observe("cf-1", no_sync.0, no_sync.1, t0);
        h.observe("cf-1", no_sync.0, no_sync.1, t0 + std::time::Duration::from_millis(700));
        let (s, k) = h.samples(t0 + std::time::Duration::from_millis(900));
        let text = render(&s, &k);
        assert!(text.contains("pgcell_cluster_health{scope=\"cf-1\",state=\"no_sync_standby\"} 1"), "{text}");
        assert!(text.contains("pgcell_sync_standby_gap_open_ms{scope=\"cf-1\"} 900"), "{text}");
        h.observe("cf-1", healthy.0, healthy.1, t0 + std::time::Duration::from_millis(1500));
        let (s, k) = h.samples(t0 + std::time::Duration::from_millis(1600));
        let text = render(&s, &k);
        assert!(text.contains("# TYPE pgcell_sync_standby_gap_ms histogram\n"), "{text}");
        assert!(text.contains("pgcell_sync_standby_gap_ms_bucket{le=\"1000\"} 0\n"), "{text}");
        assert!(text.contains("pgcell_sync_standby_gap_ms_bucket{le=\"2000\"} 1\n"), "{text}");
        assert!(text.contains("pgcell_sync_standby_gap_ms_bucket{le=\"+Inf\"} 1\n"), "{text}");
        assert!(text.contains("pgcell_sync_standby_gap_ms_sum 1500\npgcell_sync_standby_gap_ms_count 1\n"), "{text}");
        assert!(text.contains("pgcell_sync_standby_gap_open_ms{scope=\"cf-1\"} 0"), "{text}");
        h.forget("cf-1");
        assert!(!render(&h.samples(t0).0, &h.samples(t0).1).contains("cf-1"));
    }
}
