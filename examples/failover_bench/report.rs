//! The benchmark's report: markdown for `docs/`, and the same aligned for a terminal.

use std::process::Command;
use std::time::Duration;

use super::{Args, Outcome, Scenario, Trial};

pub fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

struct Row {
    scenario: &'static str,
    metric: &'static str,
    target: Option<f64>,
    values: Vec<f64>,
    reference: &'static str,
}

impl Row {
    fn pass(&self) -> Option<bool> {
        let t = self.target?;
        Some(!self.values.is_empty() && self.values.iter().all(|v| *v <= t))
    }
    fn cells(&self) -> [String; 7] {
        let (p, m) = if self.values.is_empty() {
            ("-".into(), "-".into())
        } else {
            (format!("{:.2}", p50(&self.values)), format!("{:.2}", self.values.iter().copied().fold(0.0, f64::max)))
        };
        [
            format!("{} / {}", self.scenario, self.metric),
            self.target.map(|t| format!("≤ {t:.0} s")).unwrap_or_else(|| "-".into()),
            p,
            m,
            self.values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(" "),
            match self.pass() {
                Some(true) => "PASS".into(),
                Some(false) => "FAIL".into(),
                None => "info".into(),
            },
            self.reference.into(),
        ]
    }
}

fn rows(outcomes: &[Outcome]) -> Vec<Row> {
    let mut rows = vec![];
    for o in outcomes {
        let vals = |f: fn(&Trial) -> Option<f64>| o.trials.iter().filter_map(f).collect::<Vec<_>>();
        match o.scenario {
            Scenario::Hard => {
                rows.push(Row {
                    scenario: "hard cell loss",
                    metric: "kill → first write on the new primary (s)",
                    target: Some(11.0),
                    values: vals(|t| t.first_write),
                    reference: "Patroni alone, kill -9: 9.5–10.3 s",
                });
                rows.push(Row {
                    scenario: "hard cell loss",
                    metric: "agent restart → old member streaming (s)",
                    target: Some(30.0),
                    values: vals(|t| t.rejoin),
                    reference: "Patroni alone: pg_rewind rejoin 9–11 s",
                });
            }
            Scenario::Crash => {
                rows.push(Row {
                    scenario: "leader container crash",
                    metric: "kill → first write on the new primary (s)",
                    target: Some(3.0),
                    values: vals(|t| t.first_write),
                    reference: "Patroni alone, kill -9: 9.5–10.3 s",
                });
                rows.push(Row {
                    scenario: "leader container crash",
                    metric: "kill → old member streaming again (s)",
                    target: None,
                    values: vals(|t| t.rejoin),
                    reference: "Patroni alone: pg_rewind rejoin 9–11 s",
                });
            }
            Scenario::Drain => {
                rows.push(Row {
                    scenario: "planned drain",
                    metric: "longest pause between acknowledged writes (s)",
                    target: Some(3.0),
                    values: vals(|t| t.longest_pause),
                    reference: "Patroni alone, SIGTERM: 2.0–2.8 s",
                });
                rows.push(Row {
                    scenario: "planned drain",
                    metric: "drain start → first write on the new primary (s)",
                    target: None,
                    values: vals(|t| t.first_write),
                    reference: "Patroni alone, SIGTERM: 2.0–2.8 s",
                });
                rows.push(Row {
                    scenario: "planned drain",
                    metric: "drain start → old member streaming again (s)",
                    target: None,
                    values: vals(|t| t.rejoin),
                    reference: "-",
                });
            }
        }
    }
    rows
}

pub fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn report(outcomes: &[Outcome], args: &Args, started: &str, elapsed: Duration) -> (String, bool) {
    let rows = rows(outcomes);
    let header = ["scenario / metric", "target", "p50", "max", "trials", "verdict", "Patroni reference"];
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let machine = format!(
        "{} cores ({}), {} MB RAM, kernel {}, Docker {}; load average at the end {}",
        sh("nproc"),
        cpu.trim(),
        sh("free -m | awk '/^Mem:/{print $2}'"),
        sh("uname -r"),
        sh("docker version --format '{{.Server.Version}}'"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
    );
    let mut md = String::new();
    md.push_str("# Failover benchmark: latest run\n\n");
    let argv: Vec<String> = std::env::args().skip(1).collect();
    md.push_str(&format!(
        "Written by `cargo run {}--example failover_bench -- {}`; see `docs/bench-failover.md`.\n\n",
        if cfg!(debug_assertions) { "" } else { "--release " },
        argv.join(" ")
    ));
    md.push_str(&format!("- started {started}, took {:.0} s\n", elapsed.as_secs_f64()));
    md.push_str(&format!("- machine: {machine}; other work may have run concurrently\n"));
    md.push_str("- Patroni 3.0.2, etcd 3.4, ttl 10, loop_wait 1, retry_timeout 3, synchronous_mode on, 2 members\n");
    let reaper = if args.no_revoke { "off (etcd's 500 ms sweep ends it)" } else { "on" };
    md.push_str(&format!("- expired leader leases revoked by the cells: {reaper}\n\n"));
    md.push_str(&format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len())));
    let mut ok = true;
    for r in &rows {
        md.push_str(&format!("| {} |\n", r.cells().join(" | ")));
        ok &= r.pass() != Some(false);
    }
    md.push_str("\nDurability (writer through the router, every acknowledged id read back afterwards):\n\n");
    md.push_str("| scenario | trials | acknowledged | lost | failed attempts |\n|---|---|---|---|---|\n");
    for o in outcomes {
        let acked: usize = o.trials.iter().map(|t| t.acked).sum();
        let lost: usize = o.trials.iter().map(|t| t.lost).sum();
        let failed: u64 = o.trials.iter().map(|t| t.failed_attempts).sum();
        ok &= lost == 0;
        md.push_str(&format!("| {} | {} | {acked} | {lost} | {failed} |\n", o.scenario.title(), o.trials.len()));
    }
    md.push_str("\nWhere the time goes (seconds after the fault or the drain's start, p50 / max; from etcd sampled every 50 ms):\n\n");
    md.push_str(
        "| scenario | old lock gone | new leader key | its member key says master | `pgcell drain` exited | first write |\n\
         |---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let col = |f: fn(&Trial) -> Option<f64>| {
            let v: Vec<f64> = o.trials.iter().filter_map(f).collect();
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2} / {:.2}", p50(&v), v.iter().copied().fold(0.0, f64::max))
            }
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            o.scenario.title(),
            col(|t| t.timeline.lock_gone),
            col(|t| t.timeline.new_leader),
            col(|t| t.timeline.new_primary),
            col(|t| t.drain_exit),
            col(|t| t.first_write),
        ));
    }
    if outcomes.iter().any(|o| o.trials.iter().any(|t| t.sessions.is_some())) {
        let rows: Vec<(&str, usize, super::sessions::Counts)> = outcomes
            .iter()
            .map(|o| {
                let mut sum = super::sessions::Counts::default();
                for c in o.trials.iter().filter_map(|t| t.sessions) {
                    sum += c;
                }
                (o.scenario.title(), o.trials.len(), sum)
            })
            .collect();
        let wait = args.promote_wait_ms.map_or_else(|| "default".to_string(), |ms| ms.to_string());
        let (table, sessions_ok) = super::sessions::table(&rows, &wait);
        md.push_str(&table);
        ok &= sessions_ok;
    }
    let errors: Vec<String> =
        outcomes.iter().filter_map(|o| o.error.as_ref().map(|e| format!("- {}: {e}\n", o.scenario.title()))).collect();
    if !errors.is_empty() {
        ok = false;
        md.push_str("\nErrors (the scenario stopped there):\n\n");
        md.extend(errors);
    }
    for o in outcomes {
        ok &= o.trials.len() >= args.trials;
    }
    md.push_str(&format!("\nOverall: {}\n", if ok { "PASS" } else { "FAIL" }));
    (md, ok)
}

pub fn print_table(md: &str) {
    // The markdown, with tables aligned for a terminal.
    let mut table: Vec<Vec<String>> = vec![];
    let flush = |table: &mut Vec<Vec<String>>| {
        if table.is_empty() {
            return;
        }
        let ncol = table.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..ncol)
            .map(|i| table.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
            .collect();
        for r in table.iter() {
            let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
            println!("  {}", line.join("  ").trim_end());
        }
        table.clear();
    };
    for line in md.lines() {
        if line.starts_with('|') {
            if line.starts_with("|---") {
                continue;
            }
            table.push(line.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect());
        } else {
            flush(&mut table);
            println!("{line}");
        }
    }
    flush(&mut table);
}
