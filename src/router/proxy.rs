//! The data path: plain tokio. Each router port accepts, looks its route up in
//! the shared table, waits while the new primary is still promoting, connects
//! to it and copies bytes both ways until either side closes or the primary
//! changes (then the connection is cut, so no client keeps talking to a
//! demoted primary).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::gate::Target;

/// One router port: its instance and what it does with connections now.
pub struct PortState {
    pub instance: String,
    pub target: watch::Sender<Target>,
}

/// A router port in the table: its state, and its listener, which ends with
/// the entry. Both outlive the table actor, so a restarted actor finds the
/// ports still served.
pub struct PortEntry {
    pub state: Arc<PortState>,
    listener: tokio::task::AbortHandle,
}

impl PortEntry {
    pub fn new(state: PortState, listener: tokio::task::AbortHandle) -> Self {
        Self { state: Arc::new(state), listener }
    }

    /// False once its listener has ended (it only ends on a panic or an abort).
    pub fn is_serving(&self) -> bool {
        !self.listener.is_finished()
    }
}

impl Drop for PortEntry {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::ops::Deref for PortEntry {
    type Target = PortState;

    fn deref(&self) -> &PortState {
        &self.state
    }
}

/// Router port → its entry; read by every accepted connection, written by the table actor.
pub type Table = Arc<DashMap<u16, PortEntry>>;

/// Counters for `/metrics`.
#[derive(Default, Debug, Serialize)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub active: AtomicU64,
    pub cut_on_switch: AtomicU64,
    pub bytes_to_primary: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub switches: AtomicU64,
    /// Connections that waited for a promoting primary.
    pub held: AtomicU64,
    /// Promotions not confirmed within the hold: the lock holder got connections anyway.
    pub holds_expired: AtomicU64,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Per direction: enough for PostgreSQL's 8 KiB messages without holding much per idle connection.
const BUF: usize = 8 * 1024;

/// Low latency (no Nagle), and dead peers noticed in tens of seconds, not hours.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&ka);
    #[cfg(target_os = "linux")]
    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(60)));
}

/// Accepts on one router port until the task is aborted.
pub async fn serve_port(listener: TcpListener, port: u16, table: Table, stats: Arc<Stats>) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = table.get(&port).map(|s| Arc::clone(&s.state));
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            match state {
                Some(state) => forward(client, state, stats).await,
                None => {
                    stats.refused.fetch_add(1, Relaxed);
                }
            }
        });
    }
}

async fn forward(mut client: TcpStream, state: Arc<PortState>, stats: Arc<Stats>) {
    let mut rx = state.target.subscribe();
    let Some(target) = released(&mut rx, &stats).await else {
        // No running primary: refuse at once rather than leave the client hanging.
        stats.refused.fetch_add(1, Relaxed);
        return;
    };
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(instance = %state.instance, %target, error = %e, "primary refused");
            stats.refused.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            stats.refused.fetch_add(1, Relaxed);
            return;
        }
    };
    tune(&client);
    tune(&upstream);
    stats.accepted.fetch_add(1, Relaxed);
    stats.active.fetch_add(1, Relaxed);
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF);
    let switched = async {
        loop {
            if rx.changed().await.is_err() || rx.borrow_and_update().addr() != Some(target.as_str()) {
                return;
            }
        }
    };
    tokio::select! {
        res = copy => {
            if let Ok((up, down)) = res {
                stats.bytes_to_primary.fetch_add(up, Relaxed);
                stats.bytes_to_client.fetch_add(down, Relaxed);
            }
        }
        () = switched => {
            stats.cut_on_switch.fetch_add(1, Relaxed);
            tracing::debug!(instance = %state.instance, %target, "primary changed; connection cut");
        }
    }
    stats.active.fetch_sub(1, Relaxed);
}

/// Where a new connection goes: at once when the route is ready, after the
/// hold when the primary is promoting (the client just waits for the server's
/// first answer meanwhile), `None` to refuse.
async fn released(rx: &mut watch::Receiver<Target>, stats: &Stats) -> Option<String> {
    let mut counted = false;
    loop {
        let target = rx.borrow_and_update().clone();
        let (addr, until) = match target {
            Target::Refuse => return None,
            Target::Ready { addr } => return Some(addr),
            Target::Hold { addr, until } => (addr, until),
        };
        if !std::mem::replace(&mut counted, true) {
            stats.held.fetch_add(1, Relaxed);
        }
        // The table actor opens the gate at `until` too; this bound also holds if it is stuck.
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return None },
            () = tokio::time::sleep_until(until.into()) => return Some(addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn hold(ms: u64) -> Target {
        Target::Hold { addr: "b:1".into(), until: Instant::now() + Duration::from_millis(ms) }
    }

    #[tokio::test]
    async fn a_held_connection_goes_when_the_route_is_ready() {
        let (tx, mut rx) = watch::channel(hold(10_000));
        let stats = Stats::default();
        let t0 = Instant::now();
        let wait = tokio::spawn(async move { (released(&mut rx, &stats).await, stats.held.load(Relaxed)) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(Target::Ready { addr: "b:1".into() });
        assert_eq!(wait.await.unwrap(), (Some("b:1".into()), 1));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_data_path_bounds_the_hold_by_itself() {
        // The table actor is stuck: nothing is ever published again.
        let (_tx, mut rx) = watch::channel(hold(100));
        let t0 = Instant::now();
        assert_eq!(released(&mut rx, &Stats::default()).await, Some("b:1".into()));
        assert!(t0.elapsed() >= Duration::from_millis(100) && t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_held_connection_is_refused_when_the_leader_goes() {
        let (tx, mut rx) = watch::channel(hold(10_000));
        let wait = tokio::spawn(async move { released(&mut rx, &Stats::default()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send_replace(Target::Refuse);
        assert_eq!(wait.await.unwrap(), None);
        let (tx, mut rx) = watch::channel(hold(10_000));
        drop(tx);
        assert_eq!(released(&mut rx, &Stats::default()).await, None, "the port is gone");
    }
}
