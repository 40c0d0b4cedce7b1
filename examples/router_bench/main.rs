//! Router micro-benchmarks against a real `pgcell router` process, with
//! synthetic Patroni keys in etcd and small in-process TCP servers standing in
//! for PostgreSQL (each writes one identifying byte on accept, then holds the
//! connection open).
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example router_bench -- switch [SWITCHES]   # route switch latency, p99 <= 50 ms
//! cargo run --release --example router_bench -- rss [INSTANCES]      # router RSS with 1000 routes, <= 64 MiB
//! cargo run --release --example router_bench -- conns [N]            # KiB per idle proxied connection, <= 40 KiB
//! cargo run --release --example router_bench -- all                   # the three above
//! cargo run --release --example router_bench -- hop [BLOCKS]         # added round-trip latency, router vs haproxy
//! cargo run --release --example router_bench -- outage [ROUNDS]      # etcd back -> routing again, <= 1 s
//! ```
//!
//! Each mode starts its own etcd (temp dir, free ports), or uses
//! `PGCELL_ETCD_ENDPOINTS` (loopback only) and then removes the keys it wrote,
//! and its own router: the pgcell binary of the same profile (built if needed), or `PGCELL_BIN`.
//! Everything it starts is killed by PID when it ends, also on error or Ctrl-C.
//! It talks to 127.0.0.1 only. Results go to stdout, progress to stderr; the exit
//! status is 1 when a target is missed.

mod conns;
mod harness;
mod hop;
mod outage;
mod rss;
#[path = "../support/mod.rs"]
mod support;
mod switch;

const LOOPBACK: &str = "127.0.0.1";
const PASSWORD: &str = "router-bench-password";
const SWITCH_P99_MS: f64 = 50.0;
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const CONN_LIMIT_KIB: f64 = 40.0;

fn progress(msg: impl std::fmt::Display) {
    eprintln!("router_bench: {msg}");
}

/// One benchmark's result line and whether it met its target.
struct Outcome {
    line: String,
    pass: bool,
}

impl Outcome {
    fn print(&self) {
        println!("{}  {}", if self.pass { "PASS" } else { "FAIL" }, self.line);
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("all");
    let n: Option<usize> = match args.get(1).map(|s| s.parse()) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => fail(&format!("the count {:?} is not a positive number", args[1])),
    };
    let run = async {
        match mode {
            "switch" => Ok(vec![switch::switch(n.unwrap_or(200)).await?]),
            "rss" => Ok(vec![rss::rss(n.unwrap_or(1000)).await?]),
            "conns" => Ok(vec![conns::conns(n.unwrap_or(2000)).await?]),
            "hop" => Ok(vec![hop::hop(n.unwrap_or(15)).await?]),
            "outage" => Ok(vec![outage::outage(n.unwrap_or(20)).await?]),
            "all" => {
                let mut v = vec![switch::switch(200).await?];
                v.push(rss::rss(1000).await?);
                v.push(conns::conns(2000).await?);
                Ok(v)
            }
            other => Err(anyhow::anyhow!("unknown mode {other:?}: use switch, rss, conns, all, hop or outage")),
        }
    };
    // Ctrl-C drops the running benchmark, so its guard kills what it started.
    let res: anyhow::Result<Vec<Outcome>> = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match res {
        Ok(outcomes) => {
            println!("router_bench {mode}: {}", summary_header());
            for o in &outcomes {
                o.print();
            }
            if outcomes.iter().any(|o| !o.pass) {
                std::process::exit(1);
            }
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("router_bench: FAILED: {msg}");
    std::process::exit(2);
}

fn summary_header() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores")
}
