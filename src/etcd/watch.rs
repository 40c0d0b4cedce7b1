//! A prefix watch that never ends by itself: a full read first, then a watch
//! from the next revision; after an error it resumes from the last revision
//! seen (a full re-read when that revision was compacted), with backoff. A
//! watch that falls silent is probed with a progress request and replaced when
//! the probe goes unanswered.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use futures::channel::mpsc;

use super::store::get_prefix;
use crate::backoff::Backoff;

#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// Everything under the prefix: sent first, and again after a compaction.
    Snapshot {
        kvs: Vec<(String, Vec<u8>)>,
        revision: i64,
    },
    Put {
        key: String,
        value: Vec<u8>,
        revision: i64,
    },
    Delete {
        key: String,
        revision: i64,
    },
    /// The watch is established (first time, or again after an interruption).
    Live,
    /// The watch broke and is being resumed (events are not lost: it resumes at the revision).
    Interrupted {
        error: String,
    },
}

/// Retries of a broken watch back off to this (plus jitter), no further: a
/// retry is one cheap request, and routing must resume within a second of
/// etcd coming back.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Silence longer than this is probed with a progress request.
const PROBE_AFTER: Duration = Duration::from_secs(5);

/// Starts watching `prefix`; the task ends when the receiver is dropped.
pub fn watch_prefix(client: Client, prefix: String) -> mpsc::UnboundedReceiver<WatchEvent> {
    let (tx, rx) = mpsc::unbounded();
    tokio::spawn(run(client, prefix, tx));
    rx
}

async fn run(mut client: Client, prefix: String, tx: mpsc::UnboundedSender<WatchEvent>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), MAX_RETRY_DELAY);
    let mut next_rev: Option<i64> = None;
    while !tx.is_closed() {
        let error = match watch_once(&mut client, &prefix, &mut next_rev, &tx, &mut backoff).await {
            Ok(()) => "watch stream ended".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if tx.is_closed() {
            return;
        }
        tracing::warn!(%prefix, %error, "etcd watch interrupted; resuming");
        crate::metrics::inc(&crate::metrics::COUNTERS.watch_reconnects);
        let _ = tx.unbounded_send(WatchEvent::Interrupted { error });
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn watch_once(
    client: &mut Client,
    prefix: &str,
    next_rev: &mut Option<i64>,
    tx: &mpsc::UnboundedSender<WatchEvent>,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let start = match *next_rev {
        Some(r) => r,
        None => {
            let (kvs, revision) = get_prefix(client, prefix).await?;
            if tx.unbounded_send(WatchEvent::Snapshot { kvs, revision }).is_err() {
                return Ok(());
            }
            *next_rev = Some(revision + 1);
            revision + 1
        }
    };
    let opts = WatchOptions::new().with_prefix().with_start_revision(start).with_progress_notify();
    let (mut requests, mut responses) = client.watch(prefix, Some(opts)).await?.split();
    let mut probed = false;
    loop {
        let msg = match tokio::time::timeout(PROBE_AFTER, responses.message()).await {
            Err(_) if probed => anyhow::bail!("watch silent after a progress request"),
            Err(_) => {
                requests.request_progress().await?;
                probed = true;
                continue;
            }
            Ok(msg) => msg?,
        };
        let Some(resp) = msg else { return Ok(()) };
        probed = false;
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                // Our revision was compacted away: only a full re-read is correct now.
                *next_rev = None;
            }
            anyhow::bail!("watch canceled: {}", resp.cancel_reason());
        }
        if resp.created() {
            backoff.reset();
            if tx.unbounded_send(WatchEvent::Live).is_err() {
                return Ok(());
            }
        }
        // A progress notification says everything up to its revision was sent;
        // the `created` response says nothing about the events still to come.
        if !resp.created()
            && resp.events().is_empty()
            && let Some(h) = resp.header()
        {
            *next_rev = Some((*next_rev).unwrap_or(0).max(h.revision() + 1));
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let revision = kv.mod_revision();
            *next_rev = Some(revision + 1);
            let event = match ev.event_type() {
                EventType::Put => WatchEvent::Put { key, value: kv.value().to_vec(), revision },
                EventType::Delete => WatchEvent::Delete { key, revision },
            };
            if tx.unbounded_send(event).is_err() {
                return Ok(());
            }
        }
    }
}
