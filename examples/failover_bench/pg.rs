//! PostgreSQL from the benchmark: one-off queries, and the writer through the router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use super::LOOPBACK;

/// Pause between two acknowledged inserts of the writer (about 100/s).
const WRITER_PACE: Duration = Duration::from_millis(10);
/// Pause after a failed insert or connection attempt.
const WRITER_RETRY: Duration = Duration::from_millis(20);

pub fn pg_config(port: u16, password: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(LOOPBACK)
        .port(port)
        .user("postgres")
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1));
    c
}

/// One statement on a fresh connection (at most 5 s); rows of text columns.
pub async fn query(port: u16, password: &str, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let fut = async {
        let (client, conn) = pg_config(port, password).connect(NoTls).await?;
        tokio::spawn(conn);
        let msgs = client.simple_query(sql).await?;
        Ok::<_, anyhow::Error>(
            msgs.into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect()),
                    _ => None,
                })
                .collect(),
        )
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.context("query timed out")?
}

pub async fn scalar(port: u16, password: &str, sql: &str) -> anyhow::Result<String> {
    let rows = query(port, password, sql).await?;
    rows.first().and_then(|r| r.first().cloned().flatten()).context("no value")
}

pub struct Ack {
    pub id: i64,
    pub at: Instant,
    pub port: i32,
}

#[derive(Default)]
pub struct WriterLog {
    pub acks: Vec<Ack>,
    pub failures: u64,
}

/// A writer through the router: one connection, reconnecting after any error;
/// records every insert the server acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriterLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(router_port: u16, password: &str, trial: i32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let cfg = pg_config(router_port, password);
        let task = tokio::spawn({
            let (stop, log) = (stop.clone(), log.clone());
            async move {
                let mut client: Option<tokio_postgres::Client> = None;
                let mut id: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let c = match client.take() {
                        Some(c) => c,
                        None => match tokio::time::timeout(Duration::from_secs(2), cfg.connect(NoTls)).await {
                            Ok(Ok((c, conn))) => {
                                tokio::spawn(conn);
                                c
                            }
                            _ => {
                                log.lock().unwrap().failures += 1;
                                tokio::time::sleep(WRITER_RETRY).await;
                                continue;
                            }
                        },
                    };
                    id += 1;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&trial, &id];
                    let insert = c.query_one(
                        "insert into bench(trial, id) values ($1, $2) returning inet_server_port()",
                        &params,
                    );
                    match tokio::time::timeout(Duration::from_secs(5), insert).await {
                        Ok(Ok(row)) => {
                            let ack = Ack { id, at: Instant::now(), port: row.get(0) };
                            log.lock().unwrap().acks.push(ack);
                            client = Some(c);
                            tokio::time::sleep(WRITER_PACE).await;
                        }
                        _ => {
                            log.lock().unwrap().failures += 1;
                            tokio::time::sleep(WRITER_RETRY).await;
                        }
                    }
                }
            }
        });
        Self { stop, log, task }
    }

    /// The first write acknowledged after `after` by a server other than `old_port`:
    /// (time since `after`, that server's port).
    pub fn first_ack_elsewhere(&self, after: Instant, old_port: u16) -> Option<(Duration, u16)> {
        let log = self.log.lock().unwrap();
        let a = log.acks.iter().find(|a| a.at > after && a.port != i32::from(old_port))?;
        Some((a.at - after, u16::try_from(a.port).ok()?))
    }

    pub async fn finish(mut self) -> anyhow::Result<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task).await?;
        let mut log = self.log.lock().unwrap();
        Ok(std::mem::take(&mut *log))
    }
}

impl Drop for Writer {
    /// A trial that fails half-way stops its writer too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
