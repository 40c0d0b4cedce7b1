//! `--sessions`: besides the writer, a new session is opened through the
//! router every 20 ms during each trial, as applications that connect per
//! request do. Each session asks `pg_is_in_recovery()` and writes one row: a
//! session that reaches the new lock holder before its promotion has ended
//! finds it in recovery, and its write fails "read-only" (issue #17). The
//! router's promotion gate (`promote_wait_ms`) should make that count 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

/// How often a session is opened.
pub const EVERY: Duration = Duration::from_millis(20);
/// A session waits this long for its connection (longer than the router's hold).
const CONNECT_PATIENCE: Duration = Duration::from_secs(15);

/// What the sessions of one trial met.
#[derive(Default, Clone, Copy, Debug)]
pub struct Counts {
    pub opened: u64,
    /// Got a connection and an answer to its first query.
    pub connected: u64,
    /// Of those, on a member in recovery.
    pub in_recovery: u64,
    /// Writes refused "read-only" (SQLSTATE 25006) on a member out of recovery.
    pub read_only: u64,
    /// Other failed writes (cut when the route moved, and the like).
    pub write_failed: u64,
    pub wrote: u64,
    /// Sessions the router held while the lock holder promoted (from its metrics).
    pub held: u64,
    /// Holds that ran out before Patroni confirmed the promotion (from its metrics).
    pub holds_expired: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.opened += o.opened;
        self.connected += o.connected;
        self.in_recovery += o.in_recovery;
        self.read_only += o.read_only;
        self.write_failed += o.write_failed;
        self.wrote += o.wrote;
        self.held += o.held;
        self.holds_expired += o.holds_expired;
    }
}

enum Outcome {
    NoConnection,
    InRecovery,
    ReadOnly,
    WriteFailed,
    Wrote,
}

async fn session(cfg: tokio_postgres::Config, trial: i32, id: i64) -> Outcome {
    let Ok(Ok((client, conn))) = tokio::time::timeout(CONNECT_PATIENCE, cfg.connect(NoTls)).await else {
        return Outcome::NoConnection;
    };
    tokio::spawn(conn);
    let Ok(row) = client.query_one("select pg_is_in_recovery()", &[]).await else {
        return Outcome::NoConnection;
    };
    if row.get::<_, bool>(0) {
        return Outcome::InRecovery;
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&trial, &id];
    match client.execute("insert into bench_sessions(trial, id) values ($1, $2)", &params).await {
        Ok(_) => Outcome::Wrote,
        Err(e) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => Outcome::ReadOnly,
        Err(_) => Outcome::WriteFailed,
    }
}

/// Opens sessions until `finish`.
pub struct Opener {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Counts>,
}

impl Opener {
    pub fn start(mut cfg: tokio_postgres::Config, trial: i32) -> Self {
        cfg.connect_timeout(CONNECT_PATIENCE);
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let counts = Arc::new(Mutex::new(Counts::default()));
                let mut sessions = tokio::task::JoinSet::new();
                let mut tick = tokio::time::interval(EVERY);
                let mut id = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    id += 1;
                    let (cfg, counts) = (cfg.clone(), counts.clone());
                    sessions.spawn(async move {
                        let outcome = session(cfg, trial, id).await;
                        let mut c = counts.lock().unwrap();
                        c.opened += 1;
                        c.connected += u64::from(!matches!(outcome, Outcome::NoConnection));
                        match outcome {
                            Outcome::NoConnection => {}
                            Outcome::InRecovery => c.in_recovery += 1,
                            Outcome::ReadOnly => c.read_only += 1,
                            Outcome::WriteFailed => c.write_failed += 1,
                            Outcome::Wrote => c.wrote += 1,
                        }
                    });
                }
                while sessions.join_next().await.is_some() {}
                *counts.lock().unwrap()
            }
        });
        Self { stop, task }
    }

    pub async fn finish(mut self) -> anyhow::Result<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        Ok((&mut self.task).await?)
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The router's counter `name` from its `/metrics`.
pub async fn router_counter(http_port: u16, password: &str, name: &str) -> anyhow::Result<u64> {
    let text = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{http_port}/metrics"))
        .basic_auth("admin", Some(password))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    Ok(text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0))
}

/// The markdown table of the sessions, per scenario.
pub fn table(rows: &[(&str, usize, Counts)], promote_wait: &str) -> (String, bool) {
    let mut md = format!(
        "\nSessions opened through the router every {} ms during each trial (router `promote_wait_ms` = {promote_wait}); \
         target: none on a member in recovery:\n\n",
        EVERY.as_millis()
    );
    md.push_str(
        "| scenario | trials | opened | connected | in recovery | writes refused read-only | other failed writes | wrote | held by the router | holds expired |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut ok = true;
    for (title, trials, c) in rows {
        ok &= c.in_recovery == 0 && c.read_only == 0;
        md.push_str(&format!(
            "| {title} | {trials} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.opened, c.connected, c.in_recovery, c.read_only, c.write_failed, c.wrote, c.held, c.holds_expired
        ));
    }
    (md, ok)
}
