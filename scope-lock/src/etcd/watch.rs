//! Being told when lease holders go: [`HolderGone`], a future that
//! resolves once a holder's liveness key is deleted (its lease revoked or
//! expired) or holds another lease, fed by one etcd watch on `P/live/`
//! per store, however many holders are watched.
//!
//! # Why nothing is missed
//!
//! The store's watcher is one task on the store's runtime. It owns every
//! watched holder, each with the revision `since` at which it last read
//! the holder's key alive, and applies an event of the key only if it is
//! newer than `since`. Events arrive in revision order and the task does
//! one thing at a time, so:
//!
//! - a holder watched while the watch stream is open is read (one request)
//!   before the task looks at the stream again; every change after that
//!   read is an event the stream has not yet handed over;
//! - when there is no stream (the first holder, or the stream failed),
//!   the task reads every watched key in one request at revision `R` and
//!   opens the watch from `R + 1`, so again every later change is an
//!   event it will see; a stream etcd cancels (its start revision was
//!   compacted) is opened again the same way.
//!
//! A deleted key is matched against the lease it held (the event's
//! previous value), so the delete of an earlier holder that used the same
//! id does not end a later one's watch. When etcd cannot be asked, the
//! task retries with backoff and resolves nothing: as for
//! [`LeaseLiveness`](crate::LeaseLiveness), a holder nobody can ask about
//! is presumed alive.
//!
//! The watch is closed while no holder is watched, so a store that
//! watches nothing costs etcd nothing.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{Client, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, WatchOptions};
use etcd_client::{WatchStream, Watcher};
use tokio::sync::{mpsc, oneshot};

use crate::etcd::layout::Keys;

/// Holders read with one transaction of single-key reads; more are read
/// with one range over every liveness key instead.
const MAX_POINT_READS: usize = 64;

/// A command to the store's watcher task.
enum Command {
    /// Tell `gone` once `holder`'s key is gone or holds another lease.
    Watch {
        id: u64,
        holder: u32,
        lease: Option<u64>,
        gone: oneshot::Sender<()>,
    },
    /// The future of watch `id` was dropped.
    Forget { id: u64 },
}

/// The handle the store keeps on its watcher task, which it starts at the
/// first watch.
#[derive(Debug)]
pub(crate) struct LivenessWatcher {
    commands: mpsc::UnboundedSender<Command>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Watch { id, holder, .. } => write!(f, "Watch({id}, holder {holder})"),
            Command::Forget { id } => write!(f, "Forget({id})"),
        }
    }
}

impl LivenessWatcher {
    /// Starts the task on `runtime`; it ends when this handle and every
    /// [`HolderGone`] are dropped.
    pub(crate) fn start(
        runtime: &tokio::runtime::Runtime,
        client: Client,
        keys: Keys,
    ) -> LivenessWatcher {
        let (commands, received) = mpsc::unbounded_channel();
        runtime.spawn(Task::new(client, keys).run(received));
        LivenessWatcher {
            commands,
            next_id: AtomicU64::new(0),
        }
    }

    /// A future that resolves once `holder`'s key is gone or, when
    /// `lease` is given, holds another lease.
    pub(crate) fn watch(&self, holder: u32, lease: Option<u64>) -> HolderGone {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (gone, told) = oneshot::channel();
        // A send fails only once the task ended (the store's runtime shut
        // down): the future then never resolves, as for a holder nobody
        // can ask about.
        let _ = self.commands.send(Command::Watch {
            id,
            holder,
            lease,
            gone,
        });
        HolderGone {
            id,
            told,
            done: false,
            commands: self.commands.clone(),
        }
    }
}

/// Resolves once a lease holder is gone: its liveness key deleted (the
/// lease revoked or expired) or holding another lease than the one
/// watched (at once if it already is). Made by
/// [`LeaseLiveness::watch_gone`](crate::LeaseLiveness::watch_gone).
///
/// While etcd cannot be asked it stays pending: a holder nobody can ask
/// about is presumed alive. Dropping it stops the watch. It may be polled
/// from any runtime; the watching runs on the store's.
#[derive(Debug)]
#[must_use = "a HolderGone does nothing unless awaited"]
pub struct HolderGone {
    id: u64,
    told: oneshot::Receiver<()>,
    done: bool,
    commands: mpsc::UnboundedSender<Command>,
}

impl Future for HolderGone {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        match Pin::new(&mut self.told).poll(cx) {
            Poll::Ready(Ok(())) => {
                self.done = true;
                Poll::Ready(())
            }
            // The task ended without telling (the store was dropped):
            // nobody can say the holder is gone.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for HolderGone {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commands.send(Command::Forget { id: self.id });
        }
    }
}

/// One watched holder.
struct Entry {
    lease: Option<u64>,
    /// The revision at which its key was last read alive.
    since: i64,
    gone: oneshot::Sender<()>,
}

/// The watcher task's state.
struct Task {
    client: Client,
    keys: Keys,
    /// By holder id, then by watch id.
    holders: HashMap<u32, HashMap<u64, Entry>>,
    /// Holder of each watch id, for `Forget`.
    ids: HashMap<u64, u32>,
    /// Open while any holder is watched.
    stream: Option<(Watcher, WatchStream)>,
    /// Consecutive failures to open the stream, for the backoff.
    failures: u32,
}

impl Task {
    fn new(client: Client, keys: Keys) -> Task {
        Task {
            client,
            keys,
            holders: HashMap::new(),
            ids: HashMap::new(),
            stream: None,
            failures: 0,
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            if self.ids.is_empty() {
                self.stream = None;
            } else if self.stream.is_none() {
                self.open().await;
            }
            let retry = backoff(self.failures);
            let waiting = self.stream.is_none() && !self.ids.is_empty();
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    let mut batch = vec![command];
                    while let Ok(more) = commands.try_recv() {
                        batch.push(more);
                    }
                    self.handle(batch).await;
                }
                message = next_message(&mut self.stream) => self.on_message(message),
                () = tokio::time::sleep(retry), if waiting => {}
            }
        }
    }

    /// Applies a batch of commands: forgets, then reads the new holders'
    /// keys (if the stream is open; else the next open reads them).
    async fn handle(&mut self, batch: Vec<Command>) {
        let mut new = Vec::new();
        for command in batch {
            match command {
                Command::Watch {
                    id,
                    holder,
                    lease,
                    gone,
                } => {
                    self.ids.insert(id, holder);
                    self.holders.entry(holder).or_default().insert(
                        id,
                        Entry {
                            lease,
                            since: 0,
                            gone,
                        },
                    );
                    new.push(holder);
                }
                Command::Forget { id } => self.forget(id),
            }
        }
        new.retain(|holder| self.holders.contains_key(holder));
        if new.is_empty() || self.stream.is_none() {
            return;
        }
        new.sort_unstable();
        new.dedup();
        match self.read(&new).await {
            Ok((revision, live)) => self.settle(&new, revision, &live),
            // Opened again, which reads every watched key.
            Err(_) => self.stream = None,
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(holder) = self.ids.remove(&id) {
            if let Some(entries) = self.holders.get_mut(&holder) {
                entries.remove(&id);
                if entries.is_empty() {
                    self.holders.remove(&holder);
                }
            }
        }
    }

    /// Reads every watched key, then opens the watch from just after that
    /// read. On failure the stream stays closed and the loop retries.
    async fn open(&mut self) {
        let holders: Vec<u32> = self.holders.keys().copied().collect();
        let opened = async {
            let (revision, live) = self.read(&holders).await?;
            self.settle(&holders, revision, &live);
            let options = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_start_revision(revision + 1);
            self.client
                .watch(self.keys.live.clone(), Some(options))
                .await
        };
        match opened.await {
            Ok(stream) => {
                self.stream = Some(stream);
                self.failures = 0;
            }
            Err(_) => self.failures = self.failures.saturating_add(1),
        }
    }

    /// The lease each of `holders` holds now (absent: its key is gone), and
    /// the revision of that read: one request.
    async fn read(
        &mut self,
        holders: &[u32],
    ) -> Result<(i64, HashMap<u32, u64>), etcd_client::Error> {
        let mut live = HashMap::new();
        if holders.len() > MAX_POINT_READS {
            let options = GetOptions::new().with_prefix();
            let response = self
                .client
                .get(self.keys.live.clone(), Some(options))
                .await?;
            for kv in response.kvs() {
                if let Some((holder, lease)) = self.parse(kv) {
                    live.insert(holder, lease);
                }
            }
            return Ok((response.header().map_or(0, |h| h.revision()), live));
        }
        let reads: Vec<TxnOp> = holders
            .iter()
            .map(|&holder| TxnOp::get(self.keys.liveness(holder), None))
            .collect();
        let response = self.client.txn(Txn::new().and_then(reads)).await?;
        for answer in response.op_responses() {
            if let TxnOpResponse::Get(get) = answer {
                for kv in get.kvs() {
                    if let Some((holder, lease)) = self.parse(kv) {
                        live.insert(holder, lease);
                    }
                }
            }
        }
        Ok((response.header().map_or(0, |h| h.revision()), live))
    }

    /// The holder id and lease of a liveness key; `None` for a key that is
    /// not one (left alone: only a holder's own deletion ends its watch).
    fn parse(&self, kv: &KeyValue) -> Option<(u32, u64)> {
        let holder = kv.key().strip_prefix(self.keys.live.as_bytes())?;
        let holder = std::str::from_utf8(holder).ok()?.parse().ok()?;
        let lease = std::str::from_utf8(kv.value()).ok()?.parse().ok()?;
        Some((holder, lease))
    }

    /// After a read of `holders` at `revision`: tells the watches whose
    /// holder is gone, and records the others alive as of `revision`.
    fn settle(&mut self, holders: &[u32], revision: i64, live: &HashMap<u32, u64>) {
        for holder in holders {
            let current = live.get(holder).copied();
            self.resolve(*holder, |entry| {
                let gone = match (current, entry.lease) {
                    (None, _) => true,
                    (Some(now), Some(watched)) => now != watched,
                    (Some(_), None) => false,
                };
                if !gone {
                    entry.since = entry.since.max(revision);
                }
                gone
            });
        }
    }

    fn on_message(
        &mut self,
        message: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    ) {
        let response = match message {
            Ok(Some(response)) => response,
            // The stream ended or failed: open it again (reading every
            // watched key).
            Ok(None) => {
                self.stream = None;
                return;
            }
            Err(_) => {
                self.stream = None;
                self.failures = self.failures.saturating_add(1);
                return;
            }
        };
        if response.canceled() || response.compact_revision() > 0 {
            self.stream = None;
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(holder) = kv
                .key()
                .strip_prefix(self.keys.live.as_bytes())
                .and_then(|id| std::str::from_utf8(id).ok()?.parse::<u32>().ok())
            else {
                continue;
            };
            let revision = kv.mod_revision();
            // A deleted key's value is empty and its version 0 (read
            // instead of `Event::event_type`, which panics on a type it
            // does not know).
            let deleted = kv.version() == 0;
            let value = |kv: &KeyValue| std::str::from_utf8(kv.value()).ok()?.parse::<u64>().ok();
            let before = event.prev_kv().and_then(value);
            let after = if deleted { None } else { value(kv) };
            self.resolve(holder, |entry| {
                if revision <= entry.since {
                    return false;
                }
                match (deleted, entry.lease) {
                    // Deleted: gone, unless it is known to have held
                    // another lease than the watched one.
                    (true, Some(watched)) => before.is_none_or(|b| b == watched),
                    (true, None) => true,
                    (false, Some(watched)) => after != Some(watched),
                    (false, None) => false,
                }
            });
        }
    }

    /// Tells (and drops) every watch of `holder` for which `gone` says so.
    fn resolve(&mut self, holder: u32, mut gone: impl FnMut(&mut Entry) -> bool) {
        let Some(entries) = self.holders.get_mut(&holder) else {
            return;
        };
        let ended: Vec<u64> = entries
            .iter_mut()
            .filter_map(|(id, entry)| gone(entry).then_some(*id))
            .collect();
        for id in ended {
            if let Some(entry) = entries.remove(&id) {
                let _ = entry.gone.send(());
            }
            self.ids.remove(&id);
        }
        if entries.is_empty() {
            self.holders.remove(&holder);
        }
    }
}

/// The next message of the stream; pending forever while there is none.
async fn next_message(
    stream: &mut Option<(Watcher, WatchStream)>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match stream {
        Some((_, stream)) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// 100 ms doubling to 5 s between attempts to open the stream.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5))
}
