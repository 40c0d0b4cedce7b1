//! Revokes the lease of a key (a Patroni leader lock) the moment it has
//! expired, instead of when etcd next sweeps.
//!
//! etcd 3.4 looks for expired leases every 500 ms (not configurable), so a dead
//! leader's lock outlives its TTL by up to half a second, and failover waits.
//! Revoking a lease that has expired changes nothing else: etcd refuses to
//! renew an expired lease (a keepalive after expiry waits for the revoke and
//! gets "not found"), so the revoke only runs the sweep early.
//!
//! The expiry must never be guessed early. `LeaseTimeToLive` answers whole
//! seconds, truncated: a reading of 0 received at `t` says the remaining time
//! was under a second when etcd computed it (before `t`), so the lease expires
//! before `t + 1 s`. A lease that is kept alive reads high; this follows it
//! slowly then, and every [`FAST_POLL`] once it reads 1 s, so the first 0 is
//! seen within that of the lease crossing 1 s. Before revoking it reads again:
//! a renewal since then reads at least `granted − 1`, and aborts.
//! Several agents may follow the same key; a second revoke finds nothing.

use std::time::{Duration, Instant};

use etcd_client::Client;

/// How often a lease that reads 1 s is read again.
pub const FAST_POLL: Duration = Duration::from_millis(25);
/// The longest wait between two reads, whatever the TTL (a new leader may have
/// taken the key with another lease meanwhile).
const SLOWEST_POLL: Duration = Duration::from_secs(5);
/// How long to wait while there is no key, or no lease on it.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Each request's own limit, so a hung etcd does not hold a fast poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What to do after a reading of the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read the key and its lease again after this long.
    PollAfter(Duration),
    /// The lease has expired by then at the latest: read it once more then, and revoke.
    ConfirmAt(Instant),
}

/// Follows one lease's remaining time from `LeaseTimeToLive` readings (the
/// logic, without etcd; [`run`] drives it).
#[derive(Debug, Default)]
pub struct ExpiryTracker {
    lease: i64,
    expires_before: Option<Instant>,
}

impl ExpiryTracker {
    /// A reading of `lease`: `ttl` whole seconds remaining (etcd truncates; −1
    /// when it is gone), of `granted` seconds, answered at `at`.
    pub fn reading(&mut self, lease: i64, ttl: i64, granted: i64, at: Instant) -> Next {
        if lease != self.lease {
            *self = Self { lease, expires_before: None };
        }
        // A renewal within the confirming read's second must read ≥ 1: only
        // leases of 2 s and more can be told apart from expired ones.
        if granted < 2 || ttl < 0 {
            self.expires_before = None;
            return Next::PollAfter(IDLE_POLL);
        }
        match ttl {
            0 => Next::ConfirmAt(*self.expires_before.get_or_insert(at + Duration::from_secs(1))),
            1 => {
                self.expires_before = None;
                Next::PollAfter(FAST_POLL)
            }
            // Remaining ≥ ttl s: after ttl − 1 s it still reads 1 at least.
            t => {
                self.expires_before = None;
                Next::PollAfter(Duration::from_secs((t - 1) as u64).min(SLOWEST_POLL))
            }
        }
    }

    /// The lease last read on the key (0 before any).
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The read just before revoking: revoke only if it has not been renewed
    /// (a renewal within the last second reads at least `granted − 1 ≥ 1`).
    pub fn confirmed(&mut self, lease: i64, ttl: i64) -> bool {
        let expired = lease == self.lease && ttl <= 0 && self.expires_before.is_some();
        self.expires_before = None;
        expired
    }
}

/// Follows `key` until the task is dropped (errors are retried every second):
/// whenever the lease on it expires, revokes it at once and calls `on_revoke`.
pub async fn run(mut client: Client, key: String, on_revoke: impl Fn(i64)) {
    let mut tracker = ExpiryTracker::default();
    let mut close = false;
    loop {
        let next = match step(&mut client, &key, close, &mut tracker).await {
            Ok(next) => next,
            Err(e) => {
                tracing::debug!(%key, error = %format!("{e:#}"), "reading the lease of a leader key");
                Next::PollAfter(IDLE_POLL)
            }
        };
        close = next == Next::PollAfter(FAST_POLL);
        match next {
            Next::PollAfter(d) => tokio::time::sleep(d).await,
            Next::ConfirmAt(at) => {
                tokio::time::sleep_until(at.into()).await;
                let lease = tracker.lease();
                match revoke_if_expired(&mut client, lease, &mut tracker).await {
                    Ok(true) => {
                        tracing::info!(%key, lease = format!("{lease:x}"), "revoked an expired leader lease");
                        on_revoke(lease);
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(%key, error = %format!("{e:#}"), "revoking an expired lease"),
                }
            }
        }
    }
}

/// One reading. While the lease reads 1 s (`close`) only its TTL is read, one
/// request per [`FAST_POLL`]; otherwise the key first, for the lease now on it.
async fn step(client: &mut Client, key: &str, close: bool, tracker: &mut ExpiryTracker) -> anyhow::Result<Next> {
    let lease = if close {
        tracker.lease()
    } else {
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.get(key, None)).await??;
        match resp.kvs().first().map(|kv| kv.lease()) {
            Some(lease) if lease != 0 => lease,
            _ => return Ok(Next::PollAfter(IDLE_POLL)),
        }
    };
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_time_to_live(lease, None)).await??;
    Ok(tracker.reading(lease, resp.ttl(), resp.granted_ttl(), Instant::now()))
}

async fn revoke_if_expired(client: &mut Client, lease: i64, tracker: &mut ExpiryTracker) -> anyhow::Result<bool> {
    let ttl = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_time_to_live(lease, None)).await??.ttl();
    if !tracker.confirmed(lease, ttl) {
        return Ok(false);
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(lease)).await? {
        Ok(_) => Ok(true),
        // Swept by etcd, or revoked by another agent, meanwhile.
        Err(e) if e.to_string().contains("lease not found") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// What etcd answers at `t` for a lease expiring at `expiry`: whole seconds, truncated toward zero.
    fn etcd_ttl(expiry: Instant, t: Instant) -> i64 {
        if expiry >= t { (expiry - t).as_secs() as i64 } else { -((t - expiry).as_secs() as i64) }
    }

    #[test]
    fn a_lease_kept_alive_is_read_slowly_and_never_revoked() {
        let (mut tr, t) = (ExpiryTracker::default(), Instant::now());
        assert_eq!(tr.reading(7, 9, 10, t), Next::PollAfter(SLOWEST_POLL));
        assert_eq!(tr.reading(7, 4, 10, t), Next::PollAfter(3 * S));
        assert_eq!(tr.reading(7, 2, 10, t), Next::PollAfter(S));
        assert_eq!(tr.reading(7, 1, 10, t), Next::PollAfter(FAST_POLL));
        assert!(!tr.confirmed(7, 0), "no reading of 0 came first");
    }

    #[test]
    fn the_first_zero_sets_the_revoke_a_second_later_and_a_renewal_aborts_it() {
        let (mut tr, t) = (ExpiryTracker::default(), Instant::now());
        assert_eq!(tr.reading(7, 0, 10, t), Next::ConfirmAt(t + S));
        assert_eq!(tr.reading(7, 0, 10, t + S / 2), Next::ConfirmAt(t + S), "a later 0 says nothing new");
        assert!(!tr.confirmed(7, 9), "renewed meanwhile");
        assert_eq!(tr.reading(7, 0, 10, t + 3 * S), Next::ConfirmAt(t + 4 * S));
        assert!(!tr.confirmed(8, 0), "another lease");
        assert_eq!(tr.reading(7, 0, 10, t + 5 * S), Next::ConfirmAt(t + 6 * S));
        assert!(tr.confirmed(7, 0));
        assert!(!tr.confirmed(7, 0), "confirmed once per reading of 0");
    }

    #[test]
    fn a_new_lease_on_the_key_starts_afresh() {
        let (mut tr, t) = (ExpiryTracker::default(), Instant::now());
        tr.reading(7, 0, 10, t);
        assert_eq!(tr.reading(8, 0, 10, t + S / 2), Next::ConfirmAt(t + S / 2 + S));
        assert!(!tr.confirmed(7, 0));
    }

    #[test]
    fn gone_and_short_leases_are_left_to_etcd() {
        let (mut tr, t) = (ExpiryTracker::default(), Instant::now());
        assert_eq!(tr.reading(7, -1, 10, t), Next::PollAfter(IDLE_POLL));
        assert_eq!(tr.reading(7, 0, 1, t), Next::PollAfter(IDLE_POLL));
        assert!(!tr.confirmed(7, 0));
    }

    /// Followed on its own schedule, a lease that stops being renewed is
    /// revoked never before it expires, and at most a fast poll (plus the
    /// round trip) after: for expiries at every 10 ms of a second and round
    /// trips of 0 to 20 ms.
    #[test]
    fn the_revoke_is_never_early_and_at_most_a_fast_poll_late() {
        let start = Instant::now();
        for ms in (0..1000).step_by(10) {
            for rtt in [Duration::ZERO, Duration::from_millis(1), Duration::from_millis(20)] {
                let expiry = start + 10 * S + Duration::from_millis(ms);
                let mut tr = ExpiryTracker::default();
                let mut t = start;
                let revoke_at = loop {
                    // etcd computes the TTL half-way through the round trip; the answer comes back at t + rtt.
                    let ttl = etcd_ttl(expiry, t + rtt / 2);
                    t += rtt;
                    match tr.reading(7, ttl, 10, t) {
                        Next::PollAfter(d) => t += d,
                        Next::ConfirmAt(at) => {
                            let ttl = etcd_ttl(expiry, at + rtt / 2);
                            assert!(tr.confirmed(7, ttl), "expiry +{ms} ms, rtt {rtt:?}: not confirmed ({ttl})");
                            break at + rtt;
                        }
                    }
                };
                assert!(revoke_at >= expiry, "expiry +{ms} ms, rtt {rtt:?}: revoked early");
                let late = revoke_at - expiry;
                assert!(late <= FAST_POLL + 3 * rtt, "expiry +{ms} ms, rtt {rtt:?}: {late:?} late");
            }
        }
    }
}
